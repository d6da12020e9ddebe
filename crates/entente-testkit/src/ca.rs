//! A CA for tests: a root and an intermediate over a local key store in a temporary directory,
//! and identities it issues directly.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use entente_ca::{Ca, CaOptions, Revocations, TrustBundle, VerifiedRevocationList};
use entente_client::Identity;
use entente_crypto::{KeyBundleBody, MessageKeys};
use entente_hub::HubHandle;
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_types::{AgentId, HumanId, Principal, TrustDomain};
use tempfile::TempDir;
use zeroize::Zeroizing;

use crate::unix_ms;

/// The trust domain of a [`TestCa`] (and so of a [`TestHub`](crate::TestHub)) unless told
/// otherwise.
pub const TRUST_DOMAIN: &str = "example.org";

/// How far back a test CA's validity starts, so that certificates can be issued in the past.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long the key bundles of identities issued directly are valid, from their issue time.
const KEY_BUNDLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How far a key bundle's validity is backdated, as the hub does at enrollment.
const KEY_BUNDLE_SKEW: Duration = Duration::from_secs(60);

/// A root and an intermediate CA whose keys live in a local key store in a temporary directory
/// (deleted when the `TestCa` drops). Its validity starts a day ago, so that certificates can be
/// issued in the past ([`TestCa::identity_at`]).
///
/// ```
/// use std::time::{Duration, SystemTime};
///
/// # fn main() -> anyhow::Result<()> {
/// let ca = entente_testkit::TestCa::new()?;
/// let alice = ca.principal("shop", "alice")?;
/// let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 3600);
/// let expired = ca.identity_at(&alice, two_hours_ago)?;
/// assert!(expired.not_after() < SystemTime::now());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TestCa {
    ca: Arc<Ca>,
    /// Revocations by this CA, one at a time: each builds on the list in force.
    revoking: tokio::sync::Mutex<()>,
    _dir: TempDir,
}

// === impl TestCa ===

impl TestCa {
    /// A CA for [`TRUST_DOMAIN`] with the default [`CaOptions`] (one-hour certificates).
    pub fn new() -> Result<Self> {
        Self::with_options(CaOptions::default())
    }

    /// A CA for [`TRUST_DOMAIN`] with `options` (e.g. a short `svid_ttl`).
    pub fn with_options(options: CaOptions) -> Result<Self> {
        Self::with_trust_domain(TRUST_DOMAIN, options)
    }

    /// A CA for `trust_domain` with `options`.
    pub fn with_trust_domain(trust_domain: &str, options: CaOptions) -> Result<Self> {
        let trust_domain = TrustDomain::new(trust_domain)
            .with_context(|| format!("`{trust_domain}` is not a trust domain"))?;
        let dir = tempfile::tempdir().context("creating the CA's temporary directory")?;
        let keystore = LocalKeyStore::create(
            &dir.path().join("keystore"),
            &Unlock::passphrase("entente test CA"),
            // The directory is deleted with the CA: a slow key derivation protects nothing.
            Argon2Params::danger_fast_for_tests(),
        )
        .context("creating the CA's key store")?;
        let started = SystemTime::now()
            .checked_sub(BACKDATE)
            .context("the clock is out of range")?;
        let ca = Ca::init(Arc::new(keystore), &trust_domain, options, started)
            .context("creating the CA")?;
        Ok(Self {
            ca: Arc::new(ca),
            revoking: tokio::sync::Mutex::new(()),
            _dir: dir,
        })
    }

    /// The CA, to hand to [`Hub::start`](entente_hub::Hub::start) or to sign with.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The trust bundle: what agents get out of band to verify the hub and each other.
    pub fn trust(&self) -> &TrustBundle {
        self.ca.trust_bundle()
    }

    /// The CA's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// The agent `segment/name` of this trust domain.
    pub fn agent_id(&self, segment: &str, name: &str) -> Result<AgentId> {
        AgentId::new(self.trust_domain(), segment, name)
            .with_context(|| format!("`{segment}/{name}` is not an agent name"))
    }

    /// The agent `segment/name` of this trust domain, as a principal.
    pub fn principal(&self, segment: &str, name: &str) -> Result<Principal> {
        self.agent_id(segment, name).map(Principal::from)
    }

    /// The human `name` of this trust domain, as a principal.
    pub fn human(&self, name: &str) -> Result<Principal> {
        HumanId::new(self.trust_domain(), name)
            .map(Principal::from)
            .with_context(|| format!("`{name}` is not a human name"))
    }

    /// An identity for `principal` issued now, directly by the CA: no join token, no hub, and
    /// nothing in any registry.
    pub fn identity(&self, principal: &Principal) -> Result<Identity> {
        self.identity_at(principal, SystemTime::now())
    }

    /// An identity for `principal` as the CA would have issued it at `at` (no earlier than a
    /// day ago): an X509-SVID valid from `at` for the CA's `svid_ttl`, fresh message keys and a
    /// key bundle valid from `at` for a day. An identity issued long enough ago holds an
    /// expired certificate; it is checked for consistency at `at`, not now.
    ///
    /// Any principal, the hub's own included (`spiffe://TD/agent/system/hub`): tests of who
    /// may present what need certificates no enrollment would issue.
    pub fn identity_at(&self, principal: &Principal, at: SystemTime) -> Result<Identity> {
        let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .context("generating a TLS key")?;
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&tls)
            .context("making a certificate signing request")?;
        let svid = self
            .ca
            .issue_svid(csr.der(), principal, at)
            .with_context(|| format!("issuing a certificate for `{principal}`"))?;
        let keys = MessageKeys::generate().context("generating message keys")?;
        let bundle = self
            .ca
            .sign_key_bundle(KeyBundleBody {
                principal: principal.clone(),
                ed25519_public: keys.ed25519_public(),
                x25519_public: keys.x25519_public(),
                epoch: 1,
                not_before_ms: unix_ms(at).saturating_sub(millis(KEY_BUNDLE_SKEW)),
                not_after_ms: unix_ms(at).saturating_add(millis(KEY_BUNDLE_TTL)),
            })
            .with_context(|| format!("signing a key bundle for `{principal}`"))?;
        Identity::new(
            principal.clone(),
            svid.chain_der,
            Zeroizing::new(tls.serialize_der()),
            keys,
            bundle,
            self.trust().clone(),
            at,
        )
        .with_context(|| format!("assembling the identity of `{principal}`"))
    }

    /// Signs `revocations` now and verifies the result, as a hub needs it for
    /// [`HubHandle::revoke`](entente_hub::HubHandle::revoke).
    pub fn revocation_list(&self, revocations: &Revocations) -> Result<VerifiedRevocationList> {
        let now = SystemTime::now();
        let list = self
            .ca
            .sign_revocations(revocations, now)
            .context("signing a revocation list")?;
        VerifiedRevocationList::verify(list, self.trust(), now)
            .context("verifying the revocation list just signed")
    }

    /// Revokes every certificate of `principal` on `hub` (a hub of this CA), live: the hub
    /// closes its connections and refuses its handshakes. The new list adds to the one in
    /// force. Returns how many connections were closed (0 if it was revoked already).
    pub async fn revoke(&self, hub: &HubHandle, principal: &Principal) -> Result<usize> {
        self.revoke_with(hub, |revocations| {
            Ok(revocations.revoke_principal(principal))
        })
        .await
        .with_context(|| format!("revoking `{principal}`"))
    }

    /// Revokes the certificate of `identity` (by serial number) on `hub`, live; other
    /// certificates of its principal stay valid. Returns how many connections were closed.
    pub async fn revoke_certificate(&self, hub: &HubHandle, identity: &Identity) -> Result<usize> {
        let serial = certificate_serial(identity)?;
        self.revoke_with(hub, |revocations| Ok(revocations.revoke_serial(&serial)?))
            .await
            .with_context(|| format!("revoking a certificate of `{}`", identity.principal()))
    }

    /// Adds to `hub`'s revocation list in force with `change`, signs the next version and puts
    /// it in force. Nothing is signed if `change` adds nothing.
    async fn revoke_with(
        &self,
        hub: &HubHandle,
        change: impl FnOnce(&mut Revocations) -> Result<bool>,
    ) -> Result<usize> {
        let _one_at_a_time = self.revoking.lock().await;
        let mut revocations = match hub.revocations() {
            None => Revocations::new(),
            Some(list) => {
                let wire = list.to_wire();
                let principals = wire
                    .principals
                    .iter()
                    .map(|p| Principal::parse(p))
                    .collect::<Result<Vec<_>, _>>()
                    .context("reading the revocation list in force")?;
                Revocations::from_parts(wire.version, wire.serials.iter().cloned(), principals)
                    .context("reading the revocation list in force")?
            }
        };
        if !change(&mut revocations)? {
            return Ok(0);
        }
        let list = self.revocation_list(&revocations)?;
        hub.revoke(list)
            .await
            .context("putting the revocation list in force")
    }
}

/// The serial number of `identity`'s certificate (the content bytes of its DER INTEGER), as
/// revocation lists name certificates.
pub fn certificate_serial(identity: &Identity) -> Result<Vec<u8>> {
    // At `not_before` the certificate is valid whatever the time now.
    let verified = identity
        .trust()
        .verify_svid(identity.chain(), identity.not_before(), None)
        .with_context(|| format!("reading the certificate of `{}`", identity.principal()))?;
    Ok(verified.serial().to_vec())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn identities_issued_in_the_past_are_consistent_at_their_issue_time() {
        let ca = TestCa::new().unwrap();
        let alice = ca.principal("shop", "alice").unwrap();
        let at = SystemTime::now() - Duration::from_secs(3 * 3600);
        let old = ca.identity_at(&alice, at).unwrap();
        assert!(old.not_after() < SystemTime::now());
        assert_eq!(old.principal(), &alice);
        let serial = certificate_serial(&old).unwrap();
        assert_eq!(serial.len(), 16);
        assert_ne!(
            serial,
            certificate_serial(&ca.identity(&alice).unwrap()).unwrap()
        );
    }

    #[test]
    fn names_are_checked() {
        let ca = TestCa::with_trust_domain("acme.internal", CaOptions::default()).unwrap();
        assert_eq!(
            ca.human("admin").unwrap().as_str(),
            "spiffe://acme.internal/human/admin"
        );
        assert!(ca.principal("shop", "not a name").is_err());
        assert!(TestCa::with_trust_domain("not a domain", CaOptions::default()).is_err());
    }
}
