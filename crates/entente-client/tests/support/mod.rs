//! A real hub on `127.0.0.1:0` — a real CA over a `LocalKeyStore` and an `EmbeddedStore`, each
//! in a temporary directory — and identities built in-process: an rcgen CSR issued by the CA,
//! fresh message keys, a CA-signed key bundle (registered in the hub's store, as enrollment
//! does, so that the directory knows it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_ca::{Ca, CaOptions, Revocations, VerifiedRevocationList};
use entente_client::{Client, ClientOptions, Error, Identity, Message, Subscription};
use entente_crypto::{KeyBundleBody, MessageKeys, VerifiedKeyBundle};
use entente_hub::{AllowList, AllowRule, Hub, HubConfig, HubHandle, Who};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_store::{EmbeddedStore, Store};
use entente_types::{AgentId, ChannelPattern, Principal, TrustDomain};
use tempfile::TempDir;
use tokio_stream::StreamExt;
use zeroize::Zeroizing;

pub const TD: &str = "example.org";

/// How long a test waits for any one item before failing.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// A hub whose allow list lets segment `shop` publish and subscribe under `orders.>` (and
/// nothing else: `payments.>` is denied).
pub struct TestHub {
    pub ca: Arc<Ca>,
    pub hub: HubHandle,
    pub store: Arc<EmbeddedStore>,
    revocations: std::sync::Mutex<Revocations>,
    _dirs: Vec<TempDir>,
}

/// An identity with the parts tests need after `Identity` is moved into a client.
pub struct Agent {
    pub identity: Identity,
    pub principal: Principal,
    pub bundle: VerifiedKeyBundle,
}

impl TestHub {
    pub async fn start() -> Self {
        let keys = tempfile::tempdir().unwrap();
        let keystore = LocalKeyStore::create(
            &keys.path().join("keystore"),
            &Unlock::passphrase("client tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let td = TrustDomain::new(TD).unwrap();
        let started = SystemTime::now() - Duration::from_secs(24 * 3600);
        let ca =
            Arc::new(Ca::init(Arc::new(keystore), &td, CaOptions::default(), started).unwrap());
        let data = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(data.path().join("registry.redb")).unwrap());
        let p = |s: &str| ChannelPattern::parse(s).unwrap();
        let config = HubConfig {
            allow: AllowList::new().with(AllowRule {
                who: Who::Segment("shop".into()),
                publish: vec![p("orders.>")],
                subscribe: vec![p("orders.>")],
            }),
            ..HubConfig::default()
        };
        let hub = Hub::start(config, ca.clone(), store.clone()).await.unwrap();
        Self {
            ca,
            hub,
            store,
            revocations: std::sync::Mutex::new(Revocations::new()),
            _dirs: vec![keys, data],
        }
    }

    /// A new agent of `segment`, its key bundle registered with the hub.
    pub async fn agent(&self, segment: &str, name: &str) -> Agent {
        let agent = self.unregistered_agent(segment, name);
        let wire = agent.bundle.to_wire();
        self.store
            .put_key_bundle(&wire.principal, wire.epoch, &entente_wire::encode(wire))
            .await
            .unwrap();
        agent
    }

    /// A new agent whose key bundle the hub's directory does not know.
    pub fn unregistered_agent(&self, segment: &str, name: &str) -> Agent {
        let td = TrustDomain::new(TD).unwrap();
        let principal = Principal::from(AgentId::new(&td, segment, name).unwrap());
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
                not_after_ms: now + 3_600_000,
            })
            .unwrap();
        let identity = Identity::new(
            principal.clone(),
            svid.chain_der.clone(),
            Zeroizing::new(tls.serialize_der()),
            keys,
            bundle,
            self.ca.trust_bundle().clone(),
            SystemTime::now(),
        )
        .unwrap();
        let bundle = identity.key_bundle().clone();
        Agent {
            identity,
            principal,
            bundle,
        }
    }

    pub async fn connect(&self, identity: Identity) -> Client {
        self.connect_with(identity, options()).await
    }

    pub async fn connect_with(&self, identity: Identity, options: ClientOptions) -> Client {
        Client::connect(identity, self.hub.local_addr(), options)
            .await
            .unwrap()
    }

    /// Revokes `principal` on the live hub; returns how many connections it closed.
    pub async fn revoke(&self, principal: &Principal) -> usize {
        let now = SystemTime::now();
        let list = {
            let mut revocations = self.revocations.lock().unwrap();
            revocations.revoke_principal(principal);
            self.ca.sign_revocations(&revocations, now).unwrap()
        };
        let list = VerifiedRevocationList::verify(list, self.ca.trust_bundle(), now).unwrap();
        self.hub.revoke(list).await.unwrap()
    }
}

/// Test options: short timeouts so that a hang fails fast.
pub fn options() -> ClientOptions {
    ClientOptions::new()
        .request_timeout(WAIT)
        .connect_timeout(WAIT)
}

/// The next item of `subscription`, failing the test if none comes in time.
pub async fn next(subscription: &mut Subscription) -> Option<Result<Message, Error>> {
    tokio::time::timeout(WAIT, subscription.next())
        .await
        .expect("no item from the subscription in time")
}

/// The next message, failing the test on an error item or the end of the stream.
pub async fn message(subscription: &mut Subscription) -> Message {
    match next(subscription).await {
        Some(Ok(m)) => m,
        Some(Err(e)) => panic!("expected a message, got an error: {e}"),
        None => panic!("expected a message, the subscription ended"),
    }
}

/// Asserts that nothing arrives on `subscription` for a short while.
pub async fn quiet(subscription: &mut Subscription) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}
