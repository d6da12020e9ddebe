//! The hub's TLS: two rustls server configurations chosen by SNI, and the hub's own
//! certificate.
//!
//! - The main configuration requires a client X509-SVID ([`SvidClientVerifier`]).
//! - The enrollment configuration, chosen only when the ClientHello names
//!   [`enroll_server_name`](crate::enroll_server_name), asks for no client certificate; a
//!   connection made with it serves nothing but enrollment.
//!
//! Both are TLS 1.3 only with the aws-lc-rs provider, offer ALPN `h2`, and present the hub's
//! X509-SVID (`spiffe://TD/agent/system/hub`, leaf and intermediate). The hub's TLS key is an
//! in-memory P-256 key made at start (not a CA key); its certificate is re-issued by the CA at
//! half its lifetime and swapped in without a restart.
//!
//! Session resumption (TLS 1.3 PSK with (EC)DHE) is offered on the mutual-TLS configuration
//! only, with stateless tickets ([`BoundTickets`]): the hub keeps no per-session state, and a
//! ticket carries, sealed under a key that never leaves the hub's memory, the client
//! certificate chain of the handshake that made it. A resumed connection skips the client
//! certificate verifier, so three checks stand in for it:
//!
//! - a ticket opens only under the revocation list it was issued under and for at most
//!   [`TICKET_LIFETIME`]: after any revocation every client makes a full handshake, and a
//!   revoked one is refused by the verifier with `certificate_revoked` (but for a ticket
//!   sealed as the revocation came in force: rustls seals it once the client's `Finished` is
//!   read, after the verifier ran; the next check refuses that connection);
//! - whatever the handshake, the server re-verifies the chain the connection carries (the
//!   resumed one included) against the trust bundle, its validity and the revocation list in
//!   force before it serves anything (`serve_mtls`);
//! - a registered connection is closed when a revocation names it, as any other.
//!
//! The enrollment configuration issues no tickets and resumes nothing.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_ca::Ca;
use entente_types::Principal;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, NoServerSessionStorage, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::HubError;
use crate::verifier::{RevocationState, SvidClientVerifier};

/// How long a session ticket may be used to resume, at most.
pub(crate) const TICKET_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// How many tickets a full or resumed mutual-TLS handshake issues when the client does not
/// say (RFC 9149 `ticket_request`); a client asking for fewer (the SDK asks for none) gets what
/// it asks for, up to this.
const TICKETS_PER_HANDSHAKE: usize = 1;

/// The server configurations of a hub.
#[derive(Debug, Clone)]
pub(crate) struct TlsConfigs {
    pub(crate) mtls: Arc<ServerConfig>,
    pub(crate) enroll: Arc<ServerConfig>,
    pub(crate) enroll_name: String,
}

/// Which configuration a connection was accepted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// Mutual TLS: the client presented a verified X509-SVID.
    Mtls,
    /// Enrollment: no client certificate.
    Enroll,
}

/// Serves the hub's current certificate; [`replace`](Self::replace) swaps it.
#[derive(Debug)]
pub(crate) struct HubCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    /// When the certificate in use expires.
    not_after: RwLock<SystemTime>,
}

/// The crypto provider of every hub and client configuration: aws-lc-rs.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// === impl TlsConfigs ===

impl TlsConfigs {
    pub(crate) fn new(
        verifier: Arc<SvidClientVerifier>,
        resolver: Arc<HubCertResolver>,
        enroll_name: String,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, HubError> {
        let tls = |e: rustls::Error| HubError::Tls(e.to_string());
        let tickets = BoundTickets::new(verifier.revocations().clone()).map_err(tls)?;
        let mut mtls = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(resolver.clone());
        // HTTP/2 (gRPC) first: a client offering both gets it; a framed session is asked for
        // alone (PROTOCOL.md §9.1).
        mtls.alpn_protocols = vec![b"h2".to_vec(), crate::framed::ALPN.to_vec()];
        mtls.ticketer = Arc::new(tickets);
        mtls.session_storage = Arc::new(NoServerSessionStorage {});
        mtls.send_tls13_tickets = TICKETS_PER_HANDSHAKE;
        mtls.max_tls13_tickets = TICKETS_PER_HANDSHAKE;
        let mut enroll = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        enroll.alpn_protocols = vec![b"h2".to_vec()];
        // An enrollment connection lives a minute at most (`ENROLL_LIFETIME`): nothing to
        // resume.
        enroll.session_storage = Arc::new(NoServerSessionStorage {});
        enroll.send_tls13_tickets = 0;
        Ok(Self {
            mtls: Arc::new(mtls),
            enroll: Arc::new(enroll),
            enroll_name,
        })
    }

    /// The configuration for a ClientHello naming `server_name`.
    pub(crate) fn select(&self, server_name: Option<&str>) -> (Listener, Arc<ServerConfig>) {
        match server_name {
            Some(name) if name.eq_ignore_ascii_case(&self.enroll_name) => {
                (Listener::Enroll, self.enroll.clone())
            }
            _ => (Listener::Mtls, self.mtls.clone()),
        }
    }
}

// === impl HubCertResolver ===

impl HubCertResolver {
    pub(crate) fn new(key: Arc<CertifiedKey>, not_after: SystemTime) -> Self {
        Self {
            current: RwLock::new(key),
            not_after: RwLock::new(not_after),
        }
    }

    pub(crate) fn replace(&self, key: Arc<CertifiedKey>, not_after: SystemTime) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
        *self
            .not_after
            .write()
            .unwrap_or_else(PoisonError::into_inner) = not_after;
    }

    /// When the certificate in use expires.
    pub(crate) fn not_after(&self) -> SystemTime {
        *self
            .not_after
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ResolvesServerCert for HubCertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

// === impl BoundTickets ===

/// Stateless TLS 1.3 session tickets bound to the revocation list in force and to a lifetime.
///
/// rustls' ticketer (AES-256 and HMAC-SHA256 under random in-memory keys, rotated every six
/// hours) seals `version ‖ issued ‖ session`, where `version` names the revocation list in force
/// when the ticket was made and `issued` is when, in Unix seconds. A ticket opens only if the
/// list in force is still that one and it is younger than [`TICKET_LIFETIME`]; else the client
/// makes a full handshake, through the certificate verifier. Both prefixes are under the
/// ticketer's authentication, so a client cannot change them.
#[derive(Debug)]
pub(crate) struct BoundTickets {
    inner: Arc<dyn ProducesTickets>,
    revocations: Arc<RevocationState>,
}

/// `version ‖ issued`, two big-endian `u64`s.
const TICKET_PREFIX: usize = 16;

impl BoundTickets {
    pub(crate) fn new(revocations: Arc<RevocationState>) -> Result<Self, rustls::Error> {
        Ok(Self {
            inner: rustls::crypto::aws_lc_rs::Ticketer::new()?,
            revocations,
        })
    }

    /// The revocation list in force, as a number: 0 for none, its version + 1 otherwise.
    fn list_in_force(&self) -> u64 {
        self.revocations
            .current()
            .map_or(0, |list| list.version().saturating_add(1))
    }

    /// Opens `cipher` as of `now` (Unix seconds): the session, if the ticket is authentic,
    /// was issued under the list in force and is within its lifetime.
    fn open(&self, cipher: &[u8], now: u64) -> Option<Vec<u8>> {
        let plain = self.inner.decrypt(cipher)?;
        let (prefix, session) = plain.split_at_checked(TICKET_PREFIX)?;
        let (version, issued) = prefix.split_at_checked(8)?;
        let version = u64::from_be_bytes(version.try_into().ok()?);
        let issued = u64::from_be_bytes(issued.try_into().ok()?);
        let fresh = issued <= now && now - issued < TICKET_LIFETIME.as_secs();
        (fresh && version == self.list_in_force()).then(|| session.to_vec())
    }

    fn seal(&self, session: &[u8], now: u64) -> Option<Vec<u8>> {
        let mut plain = Vec::with_capacity(TICKET_PREFIX + session.len());
        plain.extend_from_slice(&self.list_in_force().to_be_bytes());
        plain.extend_from_slice(&now.to_be_bytes());
        plain.extend_from_slice(session);
        self.inner.encrypt(&plain)
    }
}

impl ProducesTickets for BoundTickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        let ours = u32::try_from(TICKET_LIFETIME.as_secs()).unwrap_or(u32::MAX);
        ours.min(self.inner.lifetime())
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain, unix_seconds(SystemTime::now()))
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher, unix_seconds(SystemTime::now()))
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// === hub certificate ===

/// Makes a fresh P-256 key and has the CA issue an X509-SVID for `hub` to it. Returns the key
/// with its chain (leaf, intermediate) and when the certificate expires.
pub(crate) fn issue_hub_cert(
    ca: &Ca,
    hub: &Principal,
    provider: &CryptoProvider,
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, SystemTime), HubError> {
    let cert_error = |e: &dyn std::fmt::Display| HubError::Certificate(e.to_string());
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| cert_error(&e))?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .map_err(|e| cert_error(&e))?;
    let svid = ca
        .issue_svid(csr.der(), hub, now)
        .map_err(|e| cert_error(&e))?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| cert_error(&e))?;
    Ok((
        Arc::new(CertifiedKey::new(svid.chain_der, signing_key)),
        svid.not_after,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn tickets() -> BoundTickets {
        BoundTickets::new(Arc::new(RevocationState::default())).unwrap()
    }

    #[test]
    fn a_ticket_opens_to_its_session_within_its_lifetime() {
        let tickets = tickets();
        let ticket = tickets.seal(b"session", 1_000).unwrap();
        assert_eq!(tickets.open(&ticket, 1_000).unwrap(), b"session");
        let last = 1_000 + TICKET_LIFETIME.as_secs() - 1;
        assert_eq!(tickets.open(&ticket, last).unwrap(), b"session");
    }

    #[test]
    fn an_old_or_future_ticket_does_not_open() {
        let tickets = tickets();
        let ticket = tickets.seal(b"session", 1_000).unwrap();
        assert!(
            tickets
                .open(&ticket, 1_000 + TICKET_LIFETIME.as_secs())
                .is_none()
        );
        assert!(tickets.open(&ticket, 999).is_none());
    }

    #[test]
    fn a_changed_ticket_does_not_open() {
        let tickets = tickets();
        let ticket = tickets.seal(b"session", 1_000).unwrap();
        for i in 0..ticket.len() {
            let mut changed = ticket.clone();
            changed[i] ^= 1;
            assert!(tickets.open(&changed, 1_000).is_none(), "byte {i}");
        }
    }

    #[test]
    fn another_hubs_ticket_does_not_open() {
        let ticket = tickets().seal(b"session", 1_000).unwrap();
        assert!(tickets().open(&ticket, 1_000).is_none());
    }
}
