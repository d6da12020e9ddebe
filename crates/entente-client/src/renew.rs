//! Certificate renewal: over the live connection, at half-life, with a fresh TLS key.
//!
//! A [`Credential`] holds the identity a client currently uses. The renewal task waits until
//! the certificate's half-life ([`renew_wait`]), generates a fresh P-256 key and CSR, asks the
//! hub's `Renew` over the connection, checks the answer with [`Identity::renewed_with`] and
//! puts it in use; the hub has moved the connection's credential expiry already, so the
//! session stays up.
//!
//! The answer also carries the hub's trust bundle and this principal's key bundle as the hub
//! serves it: that is how an intermediate CA rollover reaches connected agents. The trust
//! bundle's intermediates are adopted if a root the identity already trusts signed them (the
//! hub never changes the roots), and the key bundle is taken if it verifies and carries the
//! same keys and epoch; the new chain is verified against the adopted trust bundle. The key
//! bundle cache then verifies against the adopted trust bundle
//! ([`KeyBundleCache::replace_trust`]), so peers' bundles signed by a new intermediate verify.
//! A refused trust bundle or key bundle keeps the current one and is reported as a failure of
//! the renewal ([`Credential::failure`]), though the new certificate is in use.
//!
//! Then the task writes the renewal to the identity directory, if there is one
//! ([`Identity::save_renewal`]: the certificate and key as one step, and the trust bundle and
//! key bundle if they changed), so that a restarted agent loads what was adopted.
//!
//! A failure is retried with jittered exponential backoff ([`retry_wait`]), always before the
//! certificate expires, until it has expired: the hub then closes the session, and the task
//! ends with the session. When to renew is decided by pure functions of the certificate's
//! validity and the current time, tested without a hub.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use entente_wire::{RenewRequest, RenewResponse};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::bundles::KeyBundleCache;
use crate::client::now_ms;
use crate::enroll::TlsKeyRequest;
use crate::stats::{self, Stats};
use crate::transport::Transport;
use crate::{Error, ErrorKind, Identity, IdentityError, Renewed};

/// The first retry after a failed renewal comes after about this long (jittered ±25%)...
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// ...and the delay doubles with each failure, up to this.
const RETRY_MAX: Duration = Duration::from_secs(5 * 60);
/// No wait is shorter: a certificate about to expire is not asked about in a busy loop.
const MIN_WAIT: Duration = Duration::from_millis(250);

/// The identity a client currently uses, and why its latest renewal failed.
#[derive(Debug)]
pub(crate) struct Credential {
    current: Mutex<Arc<Identity>>,
    failure: Mutex<Option<Error>>,
}

// === impl Credential ===

impl Credential {
    pub(crate) fn new(identity: Arc<Identity>) -> Self {
        Self {
            current: Mutex::new(identity),
            failure: Mutex::new(None),
        }
    }

    /// The identity in use: the latest renewed one.
    pub(crate) fn current(&self) -> Arc<Identity> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the latest renewal failed, unless one succeeded since.
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(Error::duplicate)
    }

    fn replace(&self, identity: Arc<Identity>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = identity;
    }

    fn set_failure(&self, failure: Option<Error>) {
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = failure;
    }
}

/// Renews `credential`'s certificate over `transport` at each half-life until `shutdown` is
/// set or the certificate has expired, and keeps `bundles` verifying against the renewed
/// identity's trust bundle. Each exchange may take `timeout`.
pub(crate) async fn run(
    credential: &Credential,
    bundles: &KeyBundleCache,
    stats: &Stats,
    transport: &Transport,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        let identity = credential.current();
        let now = SystemTime::now();
        let wait = if failures == 0 {
            renew_wait(identity.not_before(), identity.not_after(), now)
        } else {
            retry_wait(failures, identity.not_after(), now, jitter())
        };
        // Expired: the hub closes the session, which ends this task too.
        let Some(wait) = wait else { return };
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(wait) => {}
        }
        if SystemTime::now() >= identity.not_after() {
            return;
        }
        let renewed = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return,
            renewed = renew(&identity, transport, timeout) => renewed,
        };
        match renewed {
            Ok(Renewed {
                identity: renewed,
                trust_refused,
                key_bundle_refused,
                ..
            }) => {
                failures = 0;
                let renewed = Arc::new(renewed);
                credential.replace(renewed.clone());
                bundles.replace_trust(renewed.trust().clone(), now_ms());
                // This client's own bundle, possibly re-signed, replaces the one held.
                let own = bundles.admit(renewed.key_bundle(), now_ms()).err();
                stats::add(&stats.renewals, 1);
                let refused = trust_refused
                    .map(|e| refusal("trust bundle", e))
                    .or_else(|| key_bundle_refused.map(|e| refusal("key bundle", e)));
                let failure = save(renewed).await.err().or(refused).or(own);
                if failure.is_some() {
                    stats::add(&stats.renewal_failures, 1);
                }
                credential.set_failure(failure);
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                stats::add(&stats.renewal_failures, 1);
                credential.set_failure(Some(e));
            }
        }
    }
}

/// How long to wait before renewing a certificate valid from `not_before` to `not_after`, at
/// `now`: until the midpoint of its validity, or — when that has passed (an identity loaded
/// late, or a lifetime short next to the backdating of the certificate's start) — half of what
/// remains; at least [`MIN_WAIT`]. `None` once it has expired.
pub(crate) fn renew_wait(
    not_before: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
) -> Option<Duration> {
    let remaining = not_after
        .duration_since(now)
        .ok()
        .filter(|d| !d.is_zero())?;
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let until_midpoint = not_before
        .checked_add(lifetime / 2)
        .and_then(|midpoint| midpoint.duration_since(now).ok())
        .filter(|d| !d.is_zero());
    Some(until_midpoint.unwrap_or(remaining / 2).max(MIN_WAIT))
}

/// How long to wait before retrying after `failures` failed renewals in a row, at `now`, of a
/// certificate expiring at `not_after`: [`RETRY_FIRST`] doubled per failure up to
/// [`RETRY_MAX`], scaled by 0.75 + `jitter` / 2 (`jitter` in [0, 1)), but at most half of what
/// remains, so that the next attempt comes before expiry; at least [`MIN_WAIT`]. `None` once
/// the certificate has expired.
pub(crate) fn retry_wait(
    failures: u32,
    not_after: SystemTime,
    now: SystemTime,
    jitter: f64,
) -> Option<Duration> {
    let remaining = not_after
        .duration_since(now)
        .ok()
        .filter(|d| !d.is_zero())?;
    let doublings = failures.saturating_sub(1).min(31);
    let backoff = RETRY_FIRST
        .checked_mul(1 << doublings)
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX);
    // In thousandths, with integers: 750 ..= 1250.
    let scale = 750 + (jitter.clamp(0.0, 1.0) * 500.0) as u32;
    let jittered = backoff.checked_mul(scale).unwrap_or(RETRY_MAX) / 1000;
    Some(jittered.min(remaining / 2).max(MIN_WAIT))
}

/// One renewal: a fresh key and CSR, the hub's `Renew` over the connection, and the answer
/// checked with [`Identity::renewed_with`]: the trust bundle and key bundle it offers taken as
/// far as they check out, the chain against the (adopted) trust bundle, principal and new key.
async fn renew(
    identity: &Identity,
    transport: &Transport,
    timeout: Duration,
) -> Result<Renewed, Error> {
    let key = TlsKeyRequest::generate()?;
    let response: RenewResponse = transport
        .unary(
            entente_hub::RENEW_PATH,
            RenewRequest { csr: key.csr },
            timeout,
            "renewing the certificate",
        )
        .await?;
    let chain = response
        .certificate_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    identity
        .renewed_with(
            chain,
            key.pkcs8,
            &response.trust_bundle_pem,
            response.key_bundle,
            SystemTime::now(),
        )
        .map_err(|e| {
            Error::new(
                ErrorKind::Protocol,
                format!("the renewed certificate does not check out: {e}"),
            )
            .with_source(e)
        })
}

/// Why a renewal whose certificate is in use did not take the `what` the hub offered.
fn refusal(what: &str, e: IdentityError) -> Error {
    Error::new(
        ErrorKind::Protocol,
        format!("the renewed certificate is in use, but the hub's {what} was refused: {e}"),
    )
    .with_source(e)
}

/// Writes `identity`'s renewal (certificate and key; trust bundle and key bundle if they
/// changed) to its directory, if it has one.
async fn save(identity: Arc<Identity>) -> Result<(), Error> {
    if identity.dir().is_none() {
        return Ok(());
    }
    // File writes with fsync: off the async workers.
    tokio::task::spawn_blocking(move || match identity.dir() {
        Some(dir) => identity.save_renewal(dir),
        None => Ok(()),
    })
    .await
    .map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("writing the renewed certificate did not finish: {e}"),
        )
    })?
    .map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("the renewed certificate is in use but could not be saved: {e}"),
        )
        .with_source(e)
    })
}

/// A number in [0, 1) for jitter; the middle if the system has no randomness to give.
fn jitter() -> f64 {
    let mut bytes = [0u8; 4];
    match SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_be_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_fresh_certificate_renews_at_its_midpoint() {
        // One hour, backdated one minute, just issued.
        let (nb, na) = (at(0), at(3660));
        assert_eq!(renew_wait(nb, na, at(60)), Some(secs(1770.0)));
        // Loaded twenty minutes later: ten minutes to the midpoint.
        assert_eq!(renew_wait(nb, na, at(1230)), Some(secs(600.0)));
    }

    #[test]
    fn past_the_midpoint_it_renews_after_half_of_what_remains() {
        let (nb, na) = (at(0), at(3660));
        assert_eq!(renew_wait(nb, na, at(3060)), Some(secs(300.0)));
        // A four-second certificate backdated a minute is past its midpoint when issued.
        let (nb, na) = (at(0), at(64));
        assert_eq!(renew_wait(nb, na, at(60)), Some(secs(2.0)));
    }

    #[test]
    fn an_expired_certificate_is_not_renewed_and_waits_have_a_floor() {
        let (nb, na) = (at(0), at(64));
        assert_eq!(renew_wait(nb, na, at(64)), None);
        assert_eq!(renew_wait(nb, na, at(100)), None);
        assert_eq!(retry_wait(1, na, at(64), 0.5), None);
        // 100 ms left: no busy loop.
        let almost = at(63) + Duration::from_millis(900);
        assert_eq!(renew_wait(nb, na, almost), Some(MIN_WAIT));
        assert_eq!(retry_wait(1, na, almost, 0.5), Some(MIN_WAIT));
    }

    #[test]
    fn retries_back_off_with_jitter_and_stay_before_expiry() {
        let na = at(100_000);
        let now = at(0);
        assert_eq!(retry_wait(1, na, now, 0.5), Some(secs(1.0)));
        assert_eq!(retry_wait(2, na, now, 0.5), Some(secs(2.0)));
        assert_eq!(retry_wait(4, na, now, 0.5), Some(secs(8.0)));
        assert_eq!(retry_wait(1, na, now, 0.0), Some(secs(0.75)));
        assert_eq!(retry_wait(1, na, now, 0.999_999), Some(secs(1.249)));
        // Bounded, however many failures.
        assert_eq!(retry_wait(20, na, now, 0.5), Some(RETRY_MAX));
        assert_eq!(retry_wait(u32::MAX, na, now, 1.0), Some(secs(375.0)));
        // Never later than half of what remains.
        assert_eq!(retry_wait(20, at(10), now, 0.5), Some(secs(5.0)));
    }

    #[test]
    fn jitter_is_in_range() {
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }
}
