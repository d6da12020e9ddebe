//! Certificate renewal against a real hub on 127.0.0.1:0 whose CA issues four-second
//! certificates: clients renew at half-life over their connection and stay up, write renewals
//! to their identity directory, and without renewal (or when the hub refuses it) are closed
//! with `UNAUTHENTICATED` once the certificate expires.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use entente_ca::{Ca, CaOptions, Revocations, VerifiedRevocationList};
use entente_client::{
    Client, ClientOptions, Error, ErrorKind, Identity, SessionTransport, Subscription,
};
use entente_crypto::{KeyBundleBody, MessageKeys};
use entente_hub::{Hub, HubConfig, HubHandle};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_store::{AgentRecord, EmbeddedStore, Store};
use entente_types::{AgentId, Principal, TrustDomain};
use support::{SHOP_POLICIES, TD, message, next, now_ms, options};
use tempfile::TempDir;
use zeroize::Zeroizing;

/// The lifetime of every certificate the test CA issues (besides a minute of backdating).
const TTL: Duration = Duration::from_secs(4);

/// A hub like `support::TestHub` (segment `shop` may use `orders.>`), whose CA issues
/// certificates valid for [`TTL`] — to agents, to renewals and to the hub itself.
struct ShortHub {
    ca: Arc<Ca>,
    hub: HubHandle,
    store: Arc<EmbeddedStore>,
    tmp: TempDir,
}

impl ShortHub {
    async fn start() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let keystore = LocalKeyStore::create(
            &tmp.path().join("keystore"),
            &Unlock::passphrase("renewal tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let td = TrustDomain::new(TD).unwrap();
        let options = CaOptions {
            svid_ttl: TTL,
            ..CaOptions::default()
        };
        let started = SystemTime::now() - Duration::from_secs(24 * 3600);
        let ca = Arc::new(Ca::init(Arc::new(keystore), &td, options, started).unwrap());
        let store = Arc::new(EmbeddedStore::open(tmp.path().join("registry.redb")).unwrap());
        let config = HubConfig {
            policies: vec![("shop.cedar".to_owned(), SHOP_POLICIES.to_owned())],
            ..HubConfig::default()
        };
        let hub = Hub::start(config, ca.clone(), store.clone()).await.unwrap();
        Self {
            ca,
            hub,
            store,
            tmp,
        }
    }

    /// A new agent of segment `shop` with a fresh certificate, its key bundle registered.
    async fn agent(&self, name: &str) -> Identity {
        self.agent_until(name, now_ms() + 3_600_000).await
    }

    /// [`agent`](Self::agent), its key bundle valid until `not_after_ms`.
    async fn agent_until(&self, name: &str, not_after_ms: u64) -> Identity {
        let td = TrustDomain::new(TD).unwrap();
        let principal = Principal::from(AgentId::new(&td, "shop", name).unwrap());
        let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&tls)
            .unwrap();
        let svid = self
            .ca
            .issue_svid(csr.der(), &principal, SystemTime::now())
            .unwrap();
        let keys = MessageKeys::generate().unwrap();
        let now = now_ms();
        let bundle = self
            .ca
            .sign_key_bundle(KeyBundleBody {
                principal: principal.clone(),
                ed25519_public: keys.ed25519_public(),
                x25519_public: keys.x25519_public(),
                epoch: 1,
                not_before_ms: now - 60_000,
                not_after_ms,
            })
            .unwrap();
        self.store
            .put_key_bundle(bundle.principal.as_str(), 1, &entente_wire::encode(&bundle))
            .await
            .unwrap();
        Identity::new(
            principal,
            svid.chain_der,
            Zeroizing::new(tls.serialize_der()),
            keys,
            bundle,
            self.ca.trust_bundle().clone(),
            SystemTime::now(),
        )
        .unwrap()
    }

    async fn connect(&self, identity: Identity, renew: bool) -> Client {
        self.connect_with(identity, options().renew(renew)).await
    }

    async fn connect_with(&self, identity: Identity, options: ClientOptions) -> Client {
        Client::connect(identity, self.hub.local_addr(), options)
            .await
            .unwrap()
    }
}

/// The error that ends `subscription`'s stream: the session's end.
async fn end_of(subscription: &mut Subscription) -> Error {
    match next(subscription).await {
        Some(Err(e)) => e,
        other => panic!("expected the session's end, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_renew_at_half_life_and_stay_connected_past_three_lifetimes() {
    let hub = ShortHub::start().await;
    let dir = hub.tmp.path().join("alice");
    hub.agent("alice").await.save(&dir).unwrap();
    let alice = Identity::load(&dir, SystemTime::now()).unwrap();
    let first_not_after = alice.not_after();
    // Alice's session is framed: she renews over her calls connection, and the hub extends
    // her framed session with it. Bob's is over HTTP/2, which carries his calls too.
    let framed = options().session_transport(SessionTransport::Framed);
    let alice = hub.connect_with(alice, framed).await;
    // Bob's identity is in memory only.
    let http2 = options().session_transport(SessionTransport::Http2);
    let bob = hub.connect_with(hub.agent("bob").await, http2).await;
    let mut orders = alice.subscribe("orders.>").await.unwrap();

    let until = SystemTime::now() + 3 * TTL + Duration::from_secs(1);
    let mut sent = 0u32;
    while SystemTime::now() < until {
        let text = format!("order {sent}");
        bob.publish("orders.eu", text.clone()).await.unwrap();
        assert_eq!(message(&mut orders).await.payload, text.as_bytes());
        sent += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!alice.is_closed() && !bob.is_closed());
    for client in [&alice, &bob] {
        let stats = client.stats();
        assert!(stats.renewals >= 2, "{stats:?}");
        assert_eq!(
            stats.renewal_failures,
            0,
            "{:?}",
            client.renewal_error().map(|e| e.to_string())
        );
        assert!(client.certificate_not_after() > first_not_after + TTL);
        assert_eq!(
            client.identity().not_after(),
            client.certificate_not_after()
        );
    }

    // The directory holds a renewed certificate: it loads after the first one expired.
    let on_disk = Identity::load(&dir, first_not_after + Duration::from_millis(500)).unwrap();
    assert!(on_disk.not_after() > first_not_after);
    assert_eq!(on_disk.principal(), alice.principal());

    // The renewed credentials connect again; the first ones no longer would.
    let again = hub.connect(alice.identity(), false).await;
    let mut more = again.subscribe("orders.us").await.unwrap();
    bob.publish("orders.us", "one more").await.unwrap();
    assert_eq!(message(&mut more).await.payload, b"one more");
    assert!(Identity::load(&dir, SystemTime::now()).is_ok());
}

/// A key bundle signed again at a renewal (past half its life) is the one an agent seals its
/// own copy of each sender key to: it publishes on past the end of the one it connected with.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_publishes_on_past_the_end_of_the_key_bundle_it_connected_with() {
    let hub = ShortHub::start().await;
    let first_end = now_ms() + 5_000;
    let alice = hub
        .connect(hub.agent_until("alice", first_end).await, true)
        .await;
    let bob = hub.connect(hub.agent("bob").await, true).await;
    let mut orders = bob.subscribe("orders.>").await.unwrap();
    alice.publish("orders.eu", "before").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"before");

    // Signed again at her first renewal (her bundle is past half its life already).
    let deadline = std::time::Instant::now() + 3 * TTL;
    while alice.identity().key_bundle().body().not_after_ms <= first_end {
        assert!(std::time::Instant::now() < deadline, "{:?}", alice.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while now_ms() <= first_end + 200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A channel she has not sealed to yet: a new sender key, sealed to her too.
    alice.publish("orders.us", "after").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"after");
}

#[tokio::test]
async fn without_renewal_the_session_ends_when_the_certificate_expires() {
    let hub = ShortHub::start().await;
    let alice = hub.connect(hub.agent("alice").await, false).await;
    let mut orders = alice.subscribe("orders.>").await.unwrap();
    // The same over HTTP/2, where the stream's status ends the session.
    let http2 = options()
        .renew(false)
        .session_transport(SessionTransport::Http2);
    let bob = hub.connect_with(hub.agent("bob").await, http2).await;
    let mut bob_orders = bob.subscribe("orders.>").await.unwrap();

    let e = end_of(&mut orders).await;
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    let text = e.to_string();
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    assert!(text.contains("expired"), "{text}");
    assert!(text.contains("renewal is off"), "{text}");
    assert!(alice.is_closed());
    assert_eq!(alice.stats().renewals, 0);
    let e = alice.publish("orders.eu", "late").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.to_string().contains("UNAUTHENTICATED"), "{e}");

    let e = end_of(&mut bob_orders).await;
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    let text = e.to_string();
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    assert!(text.contains("renewal is off"), "{text}");
    assert!(bob.is_closed());
}

#[tokio::test]
async fn a_refused_renewal_is_retried_and_counted_until_the_certificate_expires() {
    let hub = ShortHub::start().await;
    let identity = hub.agent("alice").await;
    // A suspended agent keeps its live connection but the hub refuses to renew it.
    hub.store
        .put_agent(&AgentRecord {
            principal: identity.principal().to_string(),
            segment: Some("shop".into()),
            enrolled_at_ms: now_ms(),
            certificate_serials: Vec::new(),
            key_epoch: 1,
            suspended: true,
            renewed_from: Vec::new(),
        })
        .await
        .unwrap();
    let alice = hub.connect(identity, true).await;
    let mut orders = alice.subscribe("orders.>").await.unwrap();

    let e = end_of(&mut orders).await;
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    let text = e.to_string();
    assert!(text.contains("UNAUTHENTICATED"), "{text}");
    assert!(text.contains("the last renewal failed"), "{text}");
    assert!(text.contains("PERMISSION_DENIED"), "{text}");
    let stats = alice.stats();
    assert_eq!(stats.renewals, 0, "{stats:?}");
    assert!(stats.renewal_failures >= 1, "{stats:?}");
    let refused = alice.renewal_error().unwrap();
    assert_eq!(refused.kind(), ErrorKind::Denied, "{refused}");
    assert!(refused.to_string().contains("suspended"), "{refused}");
}

#[tokio::test]
async fn revoking_a_renewing_principal_ends_its_session_and_its_renewed_certificate() {
    let hub = ShortHub::start().await;
    let alice = hub.connect(hub.agent("alice").await, true).await;
    let mut orders = alice.subscribe("orders.>").await.unwrap();
    let deadline = tokio::time::Instant::now() + support::WAIT;
    while alice.stats().renewals == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now = SystemTime::now();
    let mut revocations = Revocations::new();
    revocations.revoke_principal(alice.principal());
    let list = hub.ca.sign_revocations(&revocations, now).unwrap();
    let list = VerifiedRevocationList::verify(list, hub.ca.trust_bundle(), now).unwrap();
    // Her framed session's connection and the one she renewed over.
    assert_eq!(hub.hub.revoke(list).await.unwrap(), 2);

    let e = end_of(&mut orders).await;
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");
    let e = Client::connect(alice.identity(), hub.hub.local_addr(), options())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
}
