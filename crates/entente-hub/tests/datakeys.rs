//! Data keys through a real hub on 127.0.0.1:0: a durable channel taken out of the
//! configuration for a while keeps the data keys its entries are sealed under (the hub rotates
//! on time meanwhile and retires none), and its consumer reads them once it is configured
//! again; and no data key rotates while the audit log is failed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use entente_client::{Client, ClientOptions, Identity};
use entente_hub::{AuditConfig, Hub, HubConfig, HubHandle, StreamConfig};
use entente_store::EmbeddedStore;
use entente_testkit::TestCa;
use entente_types::ChannelPattern;
use futures_util::StreamExt as _;
use tempfile::TempDir;

/// What the hub keeps across its starts: its CA, registry and streams directory.
struct Kept {
    dir: TempDir,
    ca: TestCa,
    store: Arc<EmbeddedStore>,
}

impl Kept {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path().join("registry.redb")).unwrap());
        Self {
            dir,
            ca: TestCa::new().unwrap(),
            store,
        }
    }

    /// A hub with `streams` configured, rotating its data key every second.
    async fn start(&self, streams: Vec<StreamConfig>) -> HubHandle {
        self.start_with(streams, |_| {}).await
    }

    /// [`start`](Self::start), its configuration changed by `change`.
    async fn start_with(
        &self,
        streams: Vec<StreamConfig>,
        change: impl FnOnce(&mut HubConfig),
    ) -> HubHandle {
        let mut config = HubConfig {
            policies: vec![(
                "test.cedar".to_owned(),
                entente_testkit::SHOP_ORDERS.to_owned(),
            )],
            streams,
            streams_dir: Some(self.dir.path().join("streams")),
            data_key_rotation: Duration::from_secs(1),
            ..HubConfig::default()
        };
        change(&mut config);
        Hub::start(config, self.ca.ca().clone(), self.store.clone())
            .await
            .unwrap()
    }
}

fn stream(name: &str, channels: &str) -> StreamConfig {
    StreamConfig::new(name, ChannelPattern::parse(channels).unwrap())
}

/// `orders` and, when `archive`, the durable channel `archive` capturing `orders.us`.
fn streams(archive: bool) -> Vec<StreamConfig> {
    let mut streams = vec![stream("orders", "orders.eu")];
    if archive {
        streams.push(stream("archive", "orders.us"));
    }
    streams
}

async fn connect(hub: &HubHandle, identity: Identity) -> Client {
    Client::connect(identity, hub.local_addr(), ClientOptions::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_durable_channel_configured_again_opens_what_it_kept_while_it_was_not() {
    let kept = Kept::new();
    let hub = kept.start(streams(true)).await;
    let alice_id = entente_testkit::enroll(&hub, "shop", "alice")
        .await
        .unwrap();
    let alice = connect(&hub, alice_id.clone()).await;
    drop(alice.subscribe_durable("orders.us", "alice").await.unwrap());
    alice.close().await;
    let bob_id = entente_testkit::enroll(&hub, "shop", "bob").await.unwrap();
    let bob = connect(&hub, bob_id).await;
    for i in 0..2 {
        bob.publish("orders.us", format!("kept {i}")).await.unwrap();
    }
    bob.close().await;
    hub.shutdown().await.unwrap();

    // `archive` is taken out of the configuration: the hub rotates on time, and retires no
    // version while the channel's entries are kept in the streams directory.
    let hub = kept.start(streams(false)).await;
    let keys = hub.data_keys();
    let (oldest, current) = (keys.status()[0].version, keys.current_version());
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    while keys.current_version() < current + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation on time: {:?}",
            keys.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys.status()[0].version, oldest, "{:?}", keys.status());
    hub.shutdown().await.unwrap();

    // Configured again: what it kept opens, and its consumer reads it.
    let hub = kept.start(streams(true)).await;
    let alice = connect(&hub, alice_id).await;
    let mut kept_for_her = alice.subscribe_durable("orders.us", "alice").await.unwrap();
    for i in 0..2 {
        let message = tokio::time::timeout(Duration::from_secs(10), kept_for_her.next())
            .await
            .expect("a kept entry delivered in time")
            .expect("the subscription is open")
            .expect("a verified message");
        assert_eq!(message.payload, format!("kept {i}").into_bytes());
        alice.ack(&message).await.unwrap();
    }
    drop(kept_for_her);
    alice.close().await;
    hub.shutdown().await.unwrap();
}

/// A hub whose audit log failed makes no data key on time: nothing it would do unrecorded.
#[tokio::test]
async fn no_data_key_rotates_on_time_while_the_audit_log_is_failed() {
    let kept = Kept::new();
    let audit = kept.dir.path().join("audit");
    let hub = kept
        .start_with(streams(false), |c| {
            c.audit = Some(AuditConfig::new(audit.clone()))
        })
        .await;
    let keys = hub.data_keys();
    let first = keys.current_version();
    // On time while the log is whole.
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    while keys.current_version() == first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rotation on time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The log's records file is gone: the next record fails the log (a rotation asked now is
    // made, and answered as not recorded).
    std::fs::remove_file(audit.join("records")).unwrap();
    let refused = hub.rotate_data_key().await.unwrap_err().to_string();
    assert!(refused.contains("audit"), "{refused}");
    // A round under way as it failed may end (however long a loaded machine makes it); then
    // nothing changes for three rotation intervals, where a hub rotating on time would have
    // rotated three times.
    let mut settled = None;
    for _ in 0..10 {
        let seen = (keys.current_version(), keys.status());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        if (keys.current_version(), keys.status()) == seen {
            settled = Some(seen);
            break;
        }
    }
    assert!(settled.is_some(), "still rotating: {:?}", keys.status());
    let stopped = hub.shutdown().await.unwrap_err().to_string();
    assert!(stopped.contains("audit log"), "{stopped}");
}
