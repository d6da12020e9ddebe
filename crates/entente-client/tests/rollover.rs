//! An intermediate CA rollover as an agent sees it: what a renewal answer offers — the hub's
//! trust bundle and the agent's re-signed key bundle — is taken only as far as it checks out
//! against the roots the agent already trusts and the keys it already has; what is taken is
//! written to the identity directory and used by the key-bundle cache. Against real CAs over
//! real key stores, and a real hub on 127.0.0.1:0 for renewal over a live connection and for
//! enrollment during a rollover.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_ca::{Ca, CaOptions, TrustBundle};
use entente_client::{Client, Identity, IdentityError, Renewed};
use entente_crypto::{BundleError, KeyBundleBody, KeyBundleIn, MessageKeys};
use entente_hub::{CaRollover, Hub, HubConfig, HubHandle};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_store::{EmbeddedStore, Store};
use entente_types::{AgentId, Principal, TrustDomain};
use rustls_pki_types::CertificateDer;
use support::{SHOP_POLICIES, TD, options};
use tempfile::TempDir;
use zeroize::Zeroizing;

const HOUR_MS: u64 = 3_600_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A CA of trust domain `td` over a fresh key store in `dir`, started a day ago, issuing
/// certificates valid for `ttl`.
fn new_ca(dir: &Path, td: &str, ttl: Duration) -> Ca {
    let keystore = LocalKeyStore::create(
        dir,
        &Unlock::passphrase("rollover tests"),
        Argon2Params::danger_fast_for_tests(),
    )
    .unwrap();
    let options = CaOptions {
        svid_ttl: ttl,
        ..CaOptions::default()
    };
    let started = SystemTime::now() - Duration::from_secs(24 * 3600);
    Ca::init(
        Arc::new(keystore),
        &TrustDomain::new(td).unwrap(),
        options,
        started,
    )
    .unwrap()
}

fn principal(name: &str) -> Principal {
    Principal::from(AgentId::new(&TrustDomain::new(TD).unwrap(), "shop", name).unwrap())
}

/// A fresh certificate of `principal` from `ca`, with its TLS key.
fn certificate(
    ca: &Ca,
    principal: &Principal,
) -> (Vec<CertificateDer<'static>>, Zeroizing<Vec<u8>>) {
    let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&tls)
        .unwrap();
    let svid = ca
        .issue_svid(csr.der(), principal, SystemTime::now())
        .unwrap();
    (svid.chain_der, Zeroizing::new(tls.serialize_der()))
}

/// The key bundle body of `principal` for `keys`, epoch 1, valid from a minute ago for an hour.
fn body(principal: &Principal, keys: &MessageKeys) -> KeyBundleBody {
    let now = now_ms();
    KeyBundleBody {
        principal: principal.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: 1,
        not_before_ms: now - 60_000,
        not_after_ms: now + HOUR_MS,
    }
}

/// An identity of `name` issued by `ca`, trusting `ca`'s trust bundle.
fn identity(ca: &Ca, name: &str) -> Identity {
    let principal = principal(name);
    let keys = MessageKeys::generate().unwrap();
    let bundle = ca.sign_key_bundle(body(&principal, &keys)).unwrap();
    let (chain, tls_key) = certificate(ca, &principal);
    Identity::new(
        principal,
        chain,
        tls_key,
        keys,
        bundle,
        ca.trust_bundle().clone(),
        SystemTime::now(),
    )
    .unwrap()
}

/// `identity` renewed by `ca`, with `trust_pem` and `key_bundle` offered.
fn renew(
    identity: &Identity,
    ca: &Ca,
    trust_pem: &str,
    key_bundle: Option<entente_wire::KeyBundle>,
) -> Renewed {
    let (chain, tls_key) = certificate(ca, identity.principal());
    let renewed = identity
        .renewed_with(
            chain.clone(),
            tls_key,
            trust_pem,
            key_bundle,
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(
        renewed.identity.chain(),
        chain,
        "the certificate is renewed"
    );
    assert_eq!(renewed.identity.dir(), identity.dir());
    renewed
}

/// `identity`'s key bundle signed again by `ca`.
fn re_signed(ca: &Ca, identity: &Identity) -> entente_wire::KeyBundle {
    ca.sign_key_bundle(identity.key_bundle().body().clone())
        .unwrap()
}

fn verifies(bundle: &entente_wire::KeyBundle, trust: &TrustBundle) -> bool {
    KeyBundleIn::from_wire(bundle.clone())
        .unwrap()
        .verify(trust, now_ms())
        .is_ok()
}

fn assert_trust_refused(renewed: &Renewed, why: &str) {
    match &renewed.trust_refused {
        Some(e @ IdentityError::TrustBundle(reason)) => {
            assert!(reason.contains(why), "{e}");
        }
        other => panic!("expected the trust bundle to be refused, got {other:?}"),
    }
}

// === the identity ===

#[test]
fn a_renewal_adopts_a_staged_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca(&tmp.path().join("keys"), TD, Duration::from_secs(3600));
    let alice = identity(&ca, "alice");
    let staged = ca.stage_intermediate(SystemTime::now()).unwrap();
    assert_eq!(alice.trust().intermediates().len(), 1);

    let renewed = renew(&alice, &staged, &staged.trust_bundle().to_pem(), None);
    assert!(
        renewed.trust_refused.is_none(),
        "{:?}",
        renewed.trust_refused
    );
    assert!(renewed.key_bundle_refused.is_none());
    let trust = renewed.identity.trust();
    assert_eq!(trust.roots(), alice.trust().roots());
    assert_eq!(trust.intermediates(), staged.trust_bundle().intermediates());
    assert_eq!(trust.intermediates().len(), 2);
    assert_eq!(
        renewed.identity.key_bundle(),
        alice.key_bundle(),
        "nothing else offered: the key bundle is kept"
    );

    // What the staged intermediate signs once active verifies against the adopted bundle,
    // and did not against the one the identity had.
    let active = staged.activate_staged().unwrap();
    let bob = identity(&ca, "bob");
    let bobs = re_signed(&active, &bob);
    assert!(!verifies(&bobs, alice.trust()));
    assert!(verifies(&bobs, trust));
}

#[test]
fn a_trust_bundle_under_another_root_is_refused_and_the_certificate_still_renews() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca(&tmp.path().join("keys"), TD, Duration::from_secs(3600));
    let other = new_ca(&tmp.path().join("other"), TD, Duration::from_secs(3600));
    let foreign = new_ca(
        &tmp.path().join("foreign"),
        "other.internal",
        Duration::from_secs(3600),
    );
    let alice = identity(&ca, "alice");
    let before = alice.trust().to_pem();

    // Another CA of the same trust domain: its intermediate is not under our root.
    let renewed = renew(&alice, &ca, &other.trust_bundle().to_pem(), None);
    assert_trust_refused(&renewed, "not signed by a root");
    assert_eq!(renewed.identity.trust().to_pem(), before);
    assert!(renewed.identity.not_after() >= alice.not_after());

    // Its root offered next to ours adds no root, and nothing under it.
    let other_staged = other.stage_intermediate(SystemTime::now()).unwrap();
    let mixed = format!(
        "{}{}",
        ca.trust_bundle().to_pem(),
        other_staged.trust_bundle().to_pem()
    );
    let renewed = renew(&alice, &ca, &mixed, None);
    assert!(renewed.trust_refused.is_none());
    assert_eq!(renewed.identity.trust().to_pem(), before);
    assert_eq!(renewed.identity.trust().roots().len(), 1);

    // Another trust domain, and text that is no trust bundle, are refused too.
    let renewed = renew(&alice, &ca, &foreign.trust_bundle().to_pem(), None);
    assert_trust_refused(&renewed, "trust domain");
    assert_eq!(renewed.identity.trust().to_pem(), before);
    let renewed = renew(&alice, &ca, "not a bundle", None);
    assert_trust_refused(&renewed, "does not parse");
    assert_eq!(renewed.identity.trust().to_pem(), before);

    // The refusal reads well and shows no certificate.
    let text = renewed.trust_refused.unwrap().to_string();
    assert!(
        text.starts_with("the offered trust bundle is not adopted"),
        "{text}"
    );
    assert!(!text.contains("BEGIN"), "{text}");
}

#[test]
fn a_returned_key_bundle_with_other_keys_is_not_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca(&tmp.path().join("keys"), TD, Duration::from_secs(3600));
    let alice = identity(&ca, "alice");
    let own = alice.key_bundle().body().clone();
    let other_keys = MessageKeys::generate().unwrap();

    let offers = [
        (
            "an ed25519 key not its own",
            KeyBundleBody {
                ed25519_public: other_keys.ed25519_public(),
                ..own.clone()
            },
        ),
        (
            "an x25519 key not its own",
            KeyBundleBody {
                x25519_public: other_keys.x25519_public(),
                ..own.clone()
            },
        ),
        (
            "another epoch",
            KeyBundleBody {
                epoch: 2,
                ..own.clone()
            },
        ),
        (
            "another principal",
            KeyBundleBody {
                principal: principal("bob"),
                ..own.clone()
            },
        ),
    ];
    for (what, body) in offers {
        let offered = ca.sign_key_bundle(body).unwrap();
        assert!(
            verifies(&offered, alice.trust()),
            "{what}: signed by the CA"
        );
        let renewed = renew(&alice, &ca, &ca.trust_bundle().to_pem(), Some(offered));
        assert!(
            matches!(
                renewed.key_bundle_refused,
                Some(IdentityError::KeyBundle(_))
            ),
            "{what}: {:?}",
            renewed.key_bundle_refused
        );
        assert_eq!(renewed.identity.key_bundle(), alice.key_bundle(), "{what}");
        assert!(renewed.trust_refused.is_none(), "{what}");
    }

    // The same keys, but not signed by the CA.
    let mut forged = re_signed(&ca, &alice);
    forged.signature[10] ^= 1;
    let renewed = renew(&alice, &ca, "", Some(forged));
    assert!(renewed.key_bundle_refused.is_some());
    assert_eq!(renewed.identity.key_bundle(), alice.key_bundle());
}

#[test]
fn a_key_bundle_re_signed_by_the_new_intermediate_is_taken_with_its_trust_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca(&tmp.path().join("keys"), TD, Duration::from_secs(3600));
    let alice = identity(&ca, "alice");
    let active = ca
        .stage_intermediate(SystemTime::now())
        .unwrap()
        .activate_staged()
        .unwrap();
    let resigned = re_signed(&active, &alice);
    assert_eq!(resigned.signer, active.signer_id().to_vec());
    assert_ne!(&resigned, alice.key_bundle().to_wire());

    // Without the trust bundle that lists its signer, it does not verify: not taken.
    let renewed = renew(&alice, &active, "", Some(resigned.clone()));
    assert!(renewed.key_bundle_refused.is_some());
    assert_eq!(renewed.identity.key_bundle(), alice.key_bundle());

    // With it, it is.
    let renewed = renew(
        &alice,
        &active,
        &active.trust_bundle().to_pem(),
        Some(resigned.clone()),
    );
    assert!(renewed.trust_refused.is_none());
    assert!(renewed.key_bundle_refused.is_none());
    assert_eq!(renewed.identity.key_bundle().to_wire(), &resigned);
    assert_eq!(
        renewed.identity.trust().intermediates(),
        active.trust_bundle().intermediates()
    );

    // Once the old intermediate is retired, the bundle the hub offers drops it: adopted with
    // the re-signed key bundle, refused without one (the key bundle kept would not verify).
    let (retired, _) = active.retire_previous().unwrap();
    let renewed = renew(
        &alice,
        &retired,
        &retired.trust_bundle().to_pem(),
        Some(resigned.clone()),
    );
    assert!(renewed.trust_refused.is_none());
    assert_eq!(renewed.identity.trust().intermediates().len(), 1);
    assert_eq!(renewed.identity.key_bundle().to_wire(), &resigned);
    let renewed = renew(&alice, &retired, &retired.trust_bundle().to_pem(), None);
    assert_trust_refused(&renewed, "drops the intermediate that signed");
    assert_eq!(renewed.identity.trust().to_pem(), alice.trust().to_pem());
    assert_eq!(renewed.identity.key_bundle(), alice.key_bundle());
}

#[test]
fn a_saved_renewal_reloads_with_the_adopted_trust_bundle_and_key_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = new_ca(&tmp.path().join("keys"), TD, Duration::from_secs(3600));
    let dir = tmp.path().join("alice");
    identity(&ca, "alice").save(&dir).unwrap();
    let alice = Identity::load(&dir, SystemTime::now()).unwrap();
    let active = ca
        .stage_intermediate(SystemTime::now())
        .unwrap()
        .activate_staged()
        .unwrap();
    let (retired, _) = active.retire_previous().unwrap();
    let resigned = re_signed(&retired, &alice);

    // The retired intermediate is gone from the offered bundle: the hardest case for the
    // order of the writes, which must not leave the old key bundle with the new trust bundle.
    let renewed = renew(
        &alice,
        &retired,
        &retired.trust_bundle().to_pem(),
        Some(resigned.clone()),
    );
    assert!(renewed.trust_refused.is_none() && renewed.key_bundle_refused.is_none());
    let renewed = renewed.identity;
    renewed.save_renewal(renewed.dir().unwrap()).unwrap();

    let again = Identity::load(&dir, SystemTime::now()).unwrap();
    assert_eq!(again.trust().to_pem(), retired.trust_bundle().to_pem());
    assert_ne!(again.trust().to_pem(), alice.trust().to_pem());
    assert_eq!(again.key_bundle().to_wire(), &resigned);
    assert_eq!(again.chain(), renewed.chain());
    assert_eq!(again.tls_key_pkcs8(), renewed.tls_key_pkcs8());
    assert_eq!(
        again.message_keys().ed25519_public(),
        alice.message_keys().ed25519_public()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        retired.trust_bundle().to_pem()
    );
    assert!(!dir.join("tls-key.next.pem").exists());

    // A renewal that changes neither rewrites neither (a replaced file is a new inode).
    let inode = |file: &str| std::fs::metadata(dir.join(file)).unwrap().ino();
    let (trust_inode, bundle_inode, chain_inode) =
        (inode("ca.pem"), inode("key-bundle.pb"), inode("chain.pem"));
    let (chain, tls_key) = certificate(&retired, again.principal());
    let plain = again.renewed(chain, tls_key, SystemTime::now()).unwrap();
    plain.save_renewal(&dir).unwrap();
    assert_eq!(inode("ca.pem"), trust_inode);
    assert_eq!(inode("key-bundle.pb"), bundle_inode);
    assert_ne!(inode("chain.pem"), chain_inode);
    assert_eq!(
        Identity::load(&dir, SystemTime::now()).unwrap().chain(),
        plain.chain()
    );
}

// === over a live hub ===

/// The lifetime of the certificates the live hub's CA issues (besides a minute of backdating),
/// and the length of each rollover phase: clients renew about every half of it.
const TTL: Duration = Duration::from_secs(6);

/// A hub that rolls its intermediate over in phases of [`TTL`] once asked to
/// ([`HubHandle::stage_intermediate`]), never by itself.
struct RolloverHub {
    /// The CA the hub started with: what agents were first issued and trust.
    before: Arc<Ca>,
    hub: HubHandle,
    store: Arc<EmbeddedStore>,
    tmp: TempDir,
}

impl RolloverHub {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let before = Arc::new(new_ca(&tmp.path().join("keystore"), TD, TTL));
        let store = Arc::new(EmbeddedStore::open(tmp.path().join("registry.redb")).unwrap());
        let config = HubConfig {
            policies: vec![("shop.cedar".to_owned(), SHOP_POLICIES.to_owned())],
            ca_rollover: CaRollover {
                overlap: TTL,
                lead: Duration::from_secs(3600),
                automatic: false,
            },
            ..HubConfig::default()
        };
        let hub = Hub::start(config, before.clone(), store.clone())
            .await
            .unwrap();
        Self {
            before,
            hub,
            store,
            tmp,
        }
    }

    /// An agent issued by the first CA, its key bundle registered with the hub.
    async fn agent(&self, name: &str) -> Identity {
        let identity = identity(&self.before, name);
        self.store
            .put_key_bundle(
                identity.principal().as_str(),
                1,
                &entente_wire::encode(identity.key_bundle().to_wire()),
            )
            .await
            .unwrap();
        identity
    }

    /// The signer of `principal`'s key bundle as the hub's directory holds it.
    async fn stored_signer(&self, principal: &Principal) -> Vec<u8> {
        let (_, bytes) = self
            .store
            .latest_key_bundle(principal.as_str())
            .await
            .unwrap()
            .unwrap();
        entente_wire::decode::<entente_wire::KeyBundle>(&bytes, &Default::default())
            .unwrap()
            .signer
    }
}

/// Waits until `done` holds, failing the test after `TTL` and [`support::WAIT`].
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TTL + support::WAIT;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn intermediates(trust: &TrustBundle) -> Vec<CertificateDer<'static>> {
    let mut certs = trust.intermediates().to_vec();
    certs.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
    certs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewals_over_a_live_hub_follow_a_whole_rollover() {
    let hub = RolloverHub::start().await;
    let dir = hub.tmp.path().join("alice");
    hub.agent("alice").await.save(&dir).unwrap();
    let bob = hub.agent("bob").await;
    let bob_principal = bob.principal().clone();
    let alice = Identity::load(&dir, SystemTime::now()).unwrap();
    let first_trust = alice.trust().clone();
    let first_body = alice.key_bundle().body().clone();
    let first_signer = hub.before.signer_id().to_vec();
    let alice = Client::connect(alice, hub.hub.local_addr(), options().renew(true))
        .await
        .unwrap();
    let bob = Client::connect(bob, hub.hub.local_addr(), options().renew(true))
        .await
        .unwrap();
    let mut orders = alice.subscribe("orders.>").await.unwrap();

    // Staged: the next renewal brings the new intermediate, under the root Alice had.
    hub.hub.stage_intermediate().await.unwrap();
    let staged = intermediates(hub.hub.ca().trust_bundle());
    assert_eq!(staged.len(), 2);
    until("adopting the staged intermediate", async || {
        intermediates(alice.identity().trust()) == staged
    })
    .await;
    assert_eq!(alice.identity().trust().roots(), first_trust.roots());
    // Written to the identity directory (after it is in use).
    until("saving the adopted trust bundle", async || {
        Identity::load(&dir, SystemTime::now())
            .is_ok_and(|on_disk| intermediates(on_disk.trust()) == staged)
    })
    .await;

    // Active: the hub signs with the new intermediate and signs the stored key bundles again.
    until("activating", async || {
        hub.hub.ca().signer_id().to_vec() != first_signer
            && hub.stored_signer(&bob_principal).await != first_signer
    })
    .await;
    let new_signer = hub.hub.ca().signer_id().to_vec();
    // Bob's bundle now verifies only with what Alice adopted: her cache has it.
    let bobs = alice.key_bundle(&bob_principal).await.unwrap();
    assert_eq!(bobs.to_wire().signer, new_signer);
    let unknown = KeyBundleIn::from_wire(bobs.to_wire().clone())
        .unwrap()
        .verify(&first_trust, now_ms())
        .unwrap_err();
    assert!(matches!(unknown, BundleError::UnknownSigner), "{unknown:?}");
    // Alice's own key bundle comes back re-signed at her next renewal.
    until("taking the re-signed key bundle", async || {
        alice.identity().key_bundle().to_wire().signer == new_signer
    })
    .await;
    // The same keys and epoch; its validity may run on (to the new intermediate's end: a
    // renewal extends a bundle past half its life, and this CA's intermediates are short).
    let body = alice.identity().key_bundle().body().clone();
    assert_eq!(
        (
            &body.principal,
            body.ed25519_public,
            body.x25519_public,
            body.epoch
        ),
        (
            &first_body.principal,
            first_body.ed25519_public,
            first_body.x25519_public,
            first_body.epoch
        )
    );
    assert!(body.not_after_ms >= first_body.not_after_ms);

    // Retired: the old intermediate leaves Alice's trust bundle too.
    until("dropping the retired intermediate", async || {
        alice.identity().trust().intermediates().len() == 1
    })
    .await;
    let current = alice.identity();
    assert_eq!(
        intermediates(current.trust()),
        intermediates(hub.hub.ca().trust_bundle())
    );
    assert_eq!(current.trust().roots(), first_trust.roots());
    until("saving the retirement", async || {
        Identity::load(&dir, SystemTime::now()).is_ok_and(|on_disk| {
            on_disk.trust().to_pem() == alice.identity().trust().to_pem()
                && on_disk.key_bundle().to_wire().signer == new_signer
        })
    })
    .await;

    // Through all of it, no renewal failed and messages flow.
    for client in [&alice, &bob] {
        let stats = client.stats();
        assert!(stats.renewals >= 3, "{stats:?}");
        assert_eq!(
            stats.renewal_failures,
            0,
            "{:?}",
            client.renewal_error().map(|e| e.to_string())
        );
    }
    bob.publish("orders.eu", "after the rollover")
        .await
        .unwrap();
    assert_eq!(
        support::message(&mut orders).await.payload,
        b"after the rollover"
    );
}

#[tokio::test]
async fn enrolling_mid_rollover_adopts_the_staged_intermediate() {
    let hub = RolloverHub::start().await;
    hub.hub.stage_intermediate().await.unwrap();
    let out_of_band = hub.before.trust_bundle().clone();
    assert_eq!(out_of_band.intermediates().len(), 1);
    let token = hub
        .hub
        .create_token(
            AgentId::new(&TrustDomain::new(TD).unwrap(), "shop", "carol").unwrap(),
            Duration::from_secs(600),
        )
        .await
        .unwrap();

    let carol = entente_client::enroll(hub.hub.local_addr(), &out_of_band, token.as_str())
        .await
        .unwrap();
    assert_eq!(carol.trust().roots(), out_of_band.roots());
    assert_eq!(
        intermediates(carol.trust()),
        intermediates(hub.hub.ca().trust_bundle())
    );
    assert_eq!(carol.trust().intermediates().len(), 2);

    // What the staged intermediate will sign once active verifies for Carol already.
    let active = hub.hub.ca().activate_staged().unwrap();
    let dave = identity(&hub.before, "dave");
    assert!(verifies(&re_signed(&active, &dave), carol.trust()));
    assert!(!verifies(&re_signed(&active, &dave), &out_of_band));
}
