//! A real hub on `127.0.0.1:0` over `entente-testkit` — its test CA (a real CA over a local key
//! store in a temporary directory) and an `EmbeddedStore` in a temporary directory — whose
//! agents enroll over the network as any agent does, or get an identity straight from the CA
//! that the hub's registry never saw.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::sync::Arc;
use std::time::Duration;

use entente_ca::{Ca, CaOptions};
use entente_client::{Client, ClientOptions, Error, Identity, Message, Subscription};
use entente_crypto::VerifiedKeyBundle;
use entente_hub::{Hub, HubConfig, HubHandle};
use entente_store::EmbeddedStore;
use entente_testkit::TestCa;
use entente_types::Principal;
use tempfile::TempDir;
use tokio_stream::StreamExt;

pub const TD: &str = entente_testkit::TRUST_DOMAIN;

/// The tests' policies: segment `shop` may publish, subscribe and send requests under
/// `orders.>` (namespace `orders` belongs to segment `orders`: a `@cross_segment` permit
/// names it), and send requests to its agents' direct channels (direct messages within the
/// segment are the base policies').
pub const SHOP_POLICIES: &str = r#"
    @id("shop-orders")
    @cross_segment
    permit (principal in Segment::"shop",
            action in [Action::"publish", Action::"subscribe", Action::"request"],
            resource in Namespace::"orders");

    @id("shop-direct-requests")
    permit (principal in Segment::"shop", action == Action::"request",
            resource in Namespace::"_direct.shop");
"#;

/// How long a test waits for any one item before failing.
pub const WAIT: Duration = entente_testkit::WAIT;

pub fn now_ms() -> u64 {
    entente_testkit::now_ms()
}

/// A hub whose policies ([`SHOP_POLICIES`]) let segment `shop` publish, subscribe and send
/// requests under `orders.>` (and nothing else: `payments.>` is denied).
pub struct TestHub {
    pub ca: Arc<Ca>,
    pub hub: HubHandle,
    pub store: Arc<EmbeddedStore>,
    kit: Arc<TestCa>,
    _dir: TempDir,
}

/// An identity with the parts tests need after `Identity` is moved into a client.
pub struct Agent {
    pub identity: Identity,
    pub principal: Principal,
    pub bundle: VerifiedKeyBundle,
}

impl TestHub {
    pub async fn start() -> Self {
        Self::start_with(CaOptions::default(), |_| {}).await
    }

    /// A hub whose CA has `options` (e.g. a short `svid_ttl`) and whose configuration `change`
    /// edits after the `shop` policies are in.
    pub async fn start_with(options: CaOptions, change: impl FnOnce(&mut HubConfig)) -> Self {
        let kit = Arc::new(TestCa::with_options(options).unwrap());
        let mut config = HubConfig {
            policies: vec![("shop.cedar".to_owned(), SHOP_POLICIES.to_owned())],
            ..HubConfig::default()
        };
        change(&mut config);
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path().join("registry.redb")).unwrap());
        let hub = Hub::start(config, kit.ca().clone(), store.clone())
            .await
            .unwrap();
        Self {
            ca: kit.ca().clone(),
            hub,
            store,
            kit,
            _dir: dir,
        }
    }

    /// The test CA, to issue identities at any time or sign revocation lists.
    pub fn test_ca(&self) -> &TestCa {
        &self.kit
    }

    /// A new agent of `segment`, enrolled over the network with a join token as any agent
    /// enrolls: the hub knows its key bundle.
    pub async fn agent(&self, segment: &str, name: &str) -> Agent {
        Self::parts(
            entente_testkit::enroll(&self.hub, segment, name)
                .await
                .unwrap(),
        )
    }

    /// A new agent whose key bundle the hub's directory does not know: its certificate comes
    /// straight from the CA.
    pub fn unregistered_agent(&self, segment: &str, name: &str) -> Agent {
        let principal = self.kit.principal(segment, name).unwrap();
        Self::parts(self.kit.identity(&principal).unwrap())
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
        self.kit.revoke(&self.hub, principal).await.unwrap()
    }

    fn parts(identity: Identity) -> Agent {
        Agent {
            principal: identity.principal().clone(),
            bundle: identity.key_bundle().clone(),
            identity,
        }
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
