//! Durable channels through a real hub on 127.0.0.1:0 and the SDK: what is published while a
//! durable consumer is away is kept (encrypted at rest) and delivered when it comes back,
//! unacknowledged entries come again and end in the dead-letter log, a full channel refuses
//! publishers, and everything survives a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::future::Future as _;
use std::path::Path;
use std::time::Duration;

use entente_audit::Event;
use entente_client::danger::danger_publish_raw;
use entente_client::{ClientOptions, ErrorKind, Message, RefusalCode, Subscription};
use entente_hub::{AuditConfig, StreamConfig};
use entente_testkit::{TestHub, now_ms, sealer};
use entente_types::ChannelPattern;
use entente_wire::{Publish, QuarantineRequest};
use futures_util::StreamExt as _;
use tempfile::TempDir;

const POLICIES: &str = entente_testkit::SHOP_ORDERS;

fn orders(change: impl FnOnce(&mut StreamConfig)) -> StreamConfig {
    let mut config = StreamConfig::new("orders", ChannelPattern::parse("orders.>").unwrap());
    change(&mut config);
    config
}

async fn start(dir: &TempDir, stream: StreamConfig) -> TestHub {
    start_with(dir, stream, |_| {}).await
}

/// [`start`] with the `orders` stream and an audit log, both in `dir`.
async fn start_audited(dir: &TempDir) -> TestHub {
    let streams = dir.path().join("streams");
    TestHub::builder()
        .policies(POLICIES)
        .audited(&dir.path().join("audit"))
        .config(move |c| {
            c.streams = vec![orders(|_| {})];
            c.streams_dir = Some(streams);
        })
        .start()
        .await
        .unwrap()
}

/// [`start`], the hub's configuration then changed by `change`.
async fn start_with(
    dir: &TempDir,
    stream: StreamConfig,
    change: impl FnOnce(&mut entente_hub::HubConfig) + Send + 'static,
) -> TestHub {
    let streams = dir.path().join("streams");
    TestHub::builder()
        .policies(POLICIES)
        .config(move |c| {
            c.streams = vec![stream];
            c.streams_dir = Some(streams);
            change(c);
        })
        .start()
        .await
        .unwrap()
}

async fn next(subscription: &mut Subscription) -> Message {
    tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
        .expect("a verified message")
}

/// Alice, enrolled, makes her consumer `alice` on `orders.>` and leaves: her identity.
async fn leaves_a_consumer(hub: &TestHub) -> entente_client::Identity {
    let alice_id = hub.enroll("shop", "alice").await.unwrap();
    let alice = hub.connect(alice_id.clone()).await.unwrap();
    drop(alice.subscribe_durable("orders.>", "alice").await.unwrap());
    alice.close().await;
    alice_id
}

async fn nothing_within(subscription: &mut Subscription, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, subscription.next()).await {
        panic!("expected nothing, got {item:?}");
    }
}

fn contains(root: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn a_durable_consumer_reads_what_was_published_while_it_was_away_once_acknowledged() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|_| {})).await;
    let alice_id = hub.enroll("shop", "alice").await.unwrap();
    let alice = hub.connect(alice_id.clone()).await.unwrap();
    // The first subscription makes the consumer; then alice goes away.
    let first = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    drop(first);
    alice.close().await;

    // Bob seals for the channel's members, alice among them while she is away.
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    for i in 0..5 {
        bob.publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    assert_eq!(hub.stats().durable_stored, 5);

    // Stored encrypted at rest: neither the channel nor the sender is readable on disk.
    let streams = dir.path().join("streams");
    assert!(!contains(&streams, b"orders.eu"));
    assert!(!contains(&streams, b"agent/shop/bob"));

    let alice = hub.connect(alice_id.clone()).await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    let mut sequences = Vec::new();
    for i in 0..5 {
        let m = next(&mut orders).await;
        assert_eq!(m.payload, format!("order {i}").into_bytes());
        let durable = m.durable.unwrap();
        assert_eq!(durable.attempt, 1);
        sequences.push(durable.sequence);
        alice.ack(&m).await.unwrap();
    }
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    // Published now: delivered live through the consumer.
    bob.publish("orders.us", "order 5").await.unwrap();
    let m = next(&mut orders).await;
    assert_eq!(m.payload, b"order 5");
    alice.ack(&m).await.unwrap();
    // A round trip after the acknowledgement: the hub has taken it when this is answered.
    drop(alice.subscribe("orders.round-trip").await.unwrap());
    drop(orders);
    alice.close().await;

    // Everything was acknowledged: nothing comes again, and the stream lets it go.
    let alice = hub.connect(alice_id).await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    nothing_within(&mut orders, Duration::from_millis(1500)).await;
}

/// A backlog larger than the subscription's buffer, and the subscribe's `Ack` held up (by the
/// audit log's group commits, behind the answers to publishes being stored): the hub delivers
/// none of the backlog before the `Ack`, so the subscription reads all of it as it takes it.
/// Deliveries ahead of the `Ack` would come before the client could hand the subscription
/// out, and past what its buffer holds they would be dropped (with an error saying so).
#[tokio::test]
async fn a_backlog_larger_than_the_subscriptions_buffer_is_read_once_subscribed() {
    let dir = TempDir::new().unwrap();
    let streams = dir.path().join("streams");
    // Audited, group commits 200 ms apart under load: an answer waits up to that long.
    let audit = AuditConfig {
        commit_interval: Duration::from_millis(200),
        ..AuditConfig::new(dir.path().join("audit"))
    };
    let hub = TestHub::builder()
        .policies(POLICIES)
        .config(move |c| {
            c.audit = Some(audit);
            c.streams = vec![orders(|_| {})];
            c.streams_dir = Some(streams);
        })
        .start()
        .await
        .unwrap();
    let alice_id = leaves_a_consumer(&hub).await;
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    for i in 0..8 {
        bob.publish("orders.eu", vec![i; 1024]).await.unwrap();
    }

    // Room for one message.
    let options = ClientOptions::new().subscription_queue_bytes(1024);
    let alice = hub.connect_with(alice_id, options).await.unwrap();
    // Publishes of alice's own just before: the subscribe's answer comes after theirs, once
    // they are stored.
    let mut stored = Vec::new();
    for i in 8..16 {
        stored.push(alice.enqueue("orders.us", vec![i; 1024]).await.unwrap());
    }
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    for i in 0..16 {
        let m = next(&mut orders).await;
        assert_eq!(m.payload, vec![i; 1024]);
        alice.ack(&m).await.unwrap();
    }
    for ack in stored {
        ack.await.unwrap();
    }
}

#[tokio::test]
async fn unacknowledged_entries_come_again_then_go_to_the_dead_letter_log() {
    // Long enough for an acknowledgement to reach the hub in time on a slow machine.
    const ACK_WAIT: Duration = Duration::from_secs(4);
    let dir = TempDir::new().unwrap();
    let hub = start(
        &dir,
        orders(|c| {
            c.ack_wait = ACK_WAIT;
            c.max_deliver = 2;
        }),
    )
    .await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let mut orders = alice.subscribe_durable("orders.eu", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    // Bob's key bundle fetched before: the acknowledgement of `handled` is not late by the
    // lookup of it (`ack_wait` runs from the delivery).
    alice.key_bundle(bob.principal()).await.unwrap();
    bob.publish("orders.eu", "unhandled").await.unwrap();
    bob.publish("orders.eu", "handled").await.unwrap();

    let first = next(&mut orders).await;
    let second = next(&mut orders).await;
    assert_eq!(second.payload, b"handled");
    alice.ack(&second).await.unwrap();
    // Not acknowledged within `ack_wait`: delivered again, through a window of its own.
    let again = next(&mut orders).await;
    assert_eq!(again.payload, first.payload);
    assert_eq!(again.durable.unwrap().attempt, 2);
    assert_eq!(
        again.durable.unwrap().sequence,
        first.durable.unwrap().sequence
    );
    // After `max_deliver` deliveries it goes to the dead-letter log instead (`ack_wait` after
    // the last), with no delivery before or after.
    let deadline = tokio::time::Instant::now() + ACK_WAIT + entente_testkit::WAIT;
    while hub.stats().durable_dead_letters == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing went to the dead-letter log"
        );
        nothing_within(&mut orders, Duration::from_millis(50)).await;
    }
    nothing_within(&mut orders, Duration::from_secs(1)).await;
    assert_eq!(hub.stats().durable_dead_letters, 1);
    let err = alice
        .subscribe_durable("orders.eu", "alice")
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal_code(),
        Some(RefusalCode::DuplicateSubscription),
        "{err}"
    );
}

/// A durable entry's envelopes expire as any message does: a consumer away past their
/// sender's message lifetime gets them as refusals saying so (shown to the application, not
/// acknowledged), and the entry goes to the dead-letter log after `max_deliver` deliveries.
#[tokio::test]
async fn a_consumer_away_past_the_messages_lifetime_gets_them_refused_as_expired() {
    let dir = TempDir::new().unwrap();
    let hub = start(
        &dir,
        orders(|c| {
            c.ack_wait = Duration::from_secs(3);
            c.max_deliver = 2;
        }),
    )
    .await;
    let alice_id = leaves_a_consumer(&hub).await;
    let bob_id = hub.enroll("shop", "bob").await.unwrap();
    let options = ClientOptions::new().message_ttl(Duration::from_millis(300));
    let bob = hub.connect_with(bob_id, options).await.unwrap();
    bob.publish("orders.eu", "soon stale").await.unwrap();
    assert_eq!(hub.stats().durable_stored, 1);
    tokio::time::sleep(Duration::from_millis(600)).await;

    let alice = hub.connect(alice_id).await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    // One refusal per delivery: the first, and the one `ack_wait` after it.
    for _ in 0..2 {
        let item = tokio::time::timeout(entente_testkit::WAIT, orders.next())
            .await
            .expect("a delivery in time")
            .expect("the subscription is open");
        let refused = item.unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Rejected, "{refused}");
        assert!(refused.to_string().contains("expired"), "{refused}");
    }
    // Then it goes to the dead-letter log (`ack_wait` after the last), and comes no more.
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    while hub.stats().durable_dead_letters == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        nothing_within(&mut orders, Duration::from_millis(50)).await;
    }
    nothing_within(&mut orders, Duration::from_secs(1)).await;
}

/// An entry of several messages is acknowledged to the hub once each of them is: a message
/// acknowledged twice counts once, so the entry comes again while another of its messages is
/// unacknowledged, and once that one is acknowledged too (in the redelivery) it comes no more.
#[tokio::test]
async fn an_entry_is_acknowledged_once_each_of_its_messages_is() {
    const ACK_WAIT: Duration = Duration::from_secs(3);
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|c| c.ack_wait = ACK_WAIT)).await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let mut orders = alice.subscribe_durable("orders.eu", "alice").await.unwrap();
    let bob_id = hub.enroll("shop", "bob").await.unwrap();
    let options = ClientOptions::new().linger(Duration::from_secs(1));
    let bob = hub.connect_with(bob_id, options).await.unwrap();
    // Both in one batch: one stored entry.
    let first = bob.enqueue("orders.eu", "first").await.unwrap();
    let second = bob.enqueue("orders.eu", "second").await.unwrap();
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(hub.stats().durable_stored, 1);

    let one = next(&mut orders).await;
    let two = next(&mut orders).await;
    assert_eq!(one.durable.unwrap().sequence, two.durable.unwrap().sequence);
    alice.ack(&one).await.unwrap();
    alice.ack(&one).await.unwrap();
    // Not done: delivered again, both messages, after `ack_wait`.
    let again = tokio::time::timeout(ACK_WAIT + entente_testkit::WAIT, orders.next())
        .await
        .expect("a redelivery")
        .unwrap()
        .unwrap();
    assert_eq!(again.durable.unwrap().attempt, 2);
    let more = next(&mut orders).await;
    // The one left is acknowledged (from the redelivery): the entry is done.
    let left = if again.payload == b"second" {
        again
    } else {
        more
    };
    assert_eq!(left.payload, b"second");
    alice.ack(&left).await.unwrap();
    nothing_within(&mut orders, ACK_WAIT + Duration::from_secs(1)).await;
}

/// A durable subscription dropped while its agent is over its rate of subscribe and
/// unsubscribe frames is unsubscribed at the hub all the same: the SDK sends the refused
/// unsubscribe again once the limit lets it, so the consumer is let go and can be held again
/// (were it kept, subscribing to it again would be refused as a duplicate for good).
#[tokio::test]
async fn a_subscription_dropped_over_the_rate_limit_is_unsubscribed_all_the_same() {
    let dir = TempDir::new().unwrap();
    let hub = start_with(&dir, orders(|_| {}), |c| {
        c.rate_limits.agent_subscriptions = Some(entente_hub::Rate {
            per_second: 1,
            burst: 2,
        });
    })
    .await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let consumer = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    // The bucket emptied (whatever time went by): the unsubscribe is refused, then sent again.
    let mut kept = Vec::new();
    for i in 0.. {
        match alice.subscribe(&format!("orders.other{i}")).await {
            Ok(subscription) => kept.push(subscription),
            Err(e) => {
                assert_eq!(e.refusal_code(), Some(RefusalCode::RateLimited), "{e}");
                break;
            }
        }
    }
    let before = hub.stats().rate_limited;
    drop(consumer);
    eventually_limited(&hub, before).await;
    // Each subscribe the rate lets through takes a token the unsubscribe sent again needs:
    // tried seldom, so that it gets one.
    let deadline = tokio::time::Instant::now() + 2 * entente_testkit::WAIT;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        match alice.subscribe_durable("orders.>", "alice").await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    e.refusal_code() == Some(RefusalCode::RateLimited)
                        || e.refusal_code() == Some(RefusalCode::DuplicateSubscription),
                    "{e}"
                );
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the consumer is still held: {e}"
                );
            }
        }
    }
}

/// Waits until `hub` has refused more than `before` for a rate limit.
async fn eventually_limited(hub: &TestHub, before: u64) {
    let deadline = tokio::time::Instant::now() + entente_testkit::WAIT;
    while hub.stats().rate_limited <= before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing was refused for a rate limit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_full_channel_refuses_publishers_and_consumers_are_bound_to_their_owner() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|c| c.max_messages = 3)).await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    drop(alice.subscribe_durable("orders.>", "alice").await.unwrap());
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    for i in 0..3 {
        bob.publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    let full = bob.publish("orders.eu", "one too many").await.unwrap_err();
    assert_eq!(full.refusal_code(), Some(RefusalCode::Full), "{full}");
    assert!(
        full.to_string().contains("`orders` is full (3 messages)"),
        "{full}"
    );
    assert_eq!(hub.stats().durable_full, 1);
    // Channels no stream captures are live as ever.
    let live = bob.publish("orders", "not durable").await;
    assert!(live.is_ok() || live.unwrap_err().kind() == ErrorKind::Denied);

    // The consumer is alice's: bob can't read it, and nobody reads what no stream keeps.
    let err = bob
        .subscribe_durable("orders.>", "alice")
        .await
        .unwrap_err();
    assert_eq!(err.refusal_code(), Some(RefusalCode::Denied), "{err}");
    assert!(
        err.to_string()
            .contains("the durable consumer `alice` is another principal's"),
        "{err}"
    );
    // Whose it is stays the audit log's: the refusal names no principal.
    assert!(!err.to_string().contains("spiffe://"), "{err}");
    let err = bob
        .subscribe_durable("payments.>", "bob")
        .await
        .unwrap_err();
    assert!(
        err.refusal_code() == Some(RefusalCode::Denied)
            || err.refusal_code() == Some(RefusalCode::NoStream),
        "{err}"
    );
    let err = alice
        .subscribe_durable("orders.>", "Bad Name")
        .await
        .unwrap_err();
    assert_eq!(err.refusal_code(), Some(RefusalCode::Malformed), "{err}");
}

#[tokio::test]
async fn entries_and_consumers_survive_a_restart() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|_| {})).await;
    let alice_id = hub.enroll("shop", "alice").await.unwrap();
    let alice = hub.connect(alice_id.clone()).await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    for i in 0..4 {
        bob.publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    // Two handled before the hub stops; the consumer's state is written within a second.
    for _ in 0..2 {
        let m = next(&mut orders).await;
        alice.ack(&m).await.unwrap();
    }
    drop(alice.subscribe("orders.round-trip").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(orders);
    alice.close().await;
    bob.close().await;
    let hub = hub.restart().await.unwrap();

    let alice = hub.connect(alice_id).await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    for i in 2..4 {
        let m = next(&mut orders).await;
        assert_eq!(m.payload, format!("order {i}").into_bytes());
        alice.ack(&m).await.unwrap();
    }
    nothing_within(&mut orders, Duration::from_millis(800)).await;
}

/// Loads policies under which the shop still publishes on `orders` but only bob reads it.
async fn only_bob_reads(hub: &TestHub) {
    let bob_id = hub.agent_id("shop", "bob").unwrap();
    hub.load_policies(&format!(
        r#"
        @id("shop-publishes")
        @cross_segment
        permit (principal in Segment::"shop", action == Action::"publish",
                resource in Namespace::"orders");
        @id("bob-reads")
        @cross_segment
        permit (principal == Agent::"{bob_id}", action == Action::"subscribe",
                resource in Namespace::"orders");
        "#
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn an_offline_consumer_whose_owner_may_no_longer_subscribe_is_not_sealed_to() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|_| {})).await;
    let alice_id = leaves_a_consumer(&hub).await;

    // Only bob may read `orders` now: the directory stops listing alice's consumer.
    only_bob_reads(&hub).await;
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    bob.publish("orders.eu", "not for alice").await.unwrap();

    // Allowed again, alice gets the entry, but it was not sealed to her: she can't open it.
    hub.load_policies(POLICIES).await.unwrap();
    reads_only_what_is_sealed_to_her_now(&hub, alice_id).await;
}

/// The directory decides an offline consumer's owner as a session of its own would: from a
/// cache, once per policy epoch, not once (and a record) per lookup.
#[tokio::test]
async fn lookups_in_a_loop_decide_an_offline_owner_once() {
    let dir = TempDir::new().unwrap();
    let hub = start_audited(&dir).await;
    let alice = leaves_a_consumer(&hub).await.principal().to_string();
    // Every publish looks the members up again.
    let options = ClientOptions::new().directory_ttl(Duration::ZERO);
    let bob = hub.enroll("shop", "bob").await.unwrap();
    let bob = hub.connect_with(bob, options).await.unwrap();
    for i in 0..5 {
        bob.publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    let decided = async |allowed: bool| {
        hub.audit_records()
            .await
            .unwrap()
            .iter()
            .filter(|r| {
                matches!(&r.event, Event::Decision(d)
                    if d.principal.as_clear() == Some(alice.as_str())
                        && d.action.as_clear() == Some("subscribe")
                        && d.resource.as_clear() == Some("Channel::\"orders.eu\"")
                        && d.allowed == allowed)
            })
            .count()
    };
    assert_eq!(decided(true).await, 1);

    // Denied now: decided once again, and not recorded as her refusal at each lookup (she
    // asked nothing).
    only_bob_reads(&hub).await;
    for i in 0..5 {
        bob.publish("orders.eu", format!("later {i}"))
            .await
            .unwrap();
    }
    assert_eq!(decided(false).await, 1);
}

/// Alice's consumer `alice` on `orders.>`, read again after an entry was published while the
/// directory left her out: that entry reaches her but does not open (`Rejected`); what is
/// published now is sealed to her again.
async fn reads_only_what_is_sealed_to_her_now(hub: &TestHub, alice_id: entente_client::Identity) {
    let alice = hub.connect(alice_id).await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(10), orders.next())
        .await
        .unwrap()
        .unwrap();
    let err = item.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Rejected, "{err}");
    let carol = hub.connect_agent("shop", "carol").await.unwrap();
    carol.publish("orders.eu", "for alice").await.unwrap();
    let m = next(&mut orders).await;
    assert_eq!(m.payload, b"for alice");
}

/// A quarantined agent's offline consumer is not sealed to (its keys may be a thief's): what
/// is published meanwhile it can't open once released.
#[tokio::test]
async fn an_offline_consumer_whose_owner_is_quarantined_is_not_sealed_to() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|_| {})).await;
    let alice_id = leaves_a_consumer(&hub).await;
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    let quarantine = |impose: &str, release: &str| QuarantineRequest {
        impose: impose.to_owned(),
        release: release.to_owned(),
        reason: "INC-9".to_owned(),
    };
    let alice_principal = alice_id.principal().to_string();
    admin
        .quarantine(quarantine(&alice_principal, ""))
        .await
        .unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    bob.publish("orders.eu", "not for alice").await.unwrap();

    admin
        .quarantine(quarantine("", &alice_principal))
        .await
        .unwrap();
    reads_only_what_is_sealed_to_her_now(&hub, alice_id).await;
}

/// A durable channel keeps what it captures per channel, so the hub refuses a batch of
/// replies (PROTOCOL.md §5.5) whose reply channels one captures, `DENIED`, before taking any
/// grant; the SDK sends each reply again alone, and every request is answered.
#[tokio::test]
async fn replies_a_durable_channel_captures_are_refused_as_a_batch_and_go_alone() {
    let dir = TempDir::new().unwrap();
    let replies = StreamConfig::new("replies", ChannelPattern::parse("_reply.>").unwrap());
    let hub = start(&dir, replies).await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let bob_id = bob.principal().clone();
    let mut requests = bob.serve_direct().await.unwrap();
    let asked: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|word| {
            let (alice, bob_id) = (alice.clone(), bob_id.clone());
            tokio::spawn(async move { alice.request(&bob_id, word, Duration::from_secs(10)).await })
        })
        .collect();
    let mut take = async || {
        tokio::time::timeout(Duration::from_secs(10), requests.next())
            .await
            .expect("a request in time")
            .expect("the stream is open")
            .expect("a verified request")
    };
    let (r1, r2) = (take().await, take().await);
    let before = bob.stats();
    let upper = |r: &entente_client::Request| r.message.payload.to_ascii_uppercase();
    let (u1, u2) = (upper(&r1), upper(&r2));
    let (a, b) = tokio::join!(r1.responder.reply(u1), r2.responder.reply(u2));
    a.unwrap();
    b.unwrap();
    for (asked, word) in asked.into_iter().zip(["A", "B"]) {
        assert_eq!(asked.await.unwrap().unwrap().payload, word.as_bytes());
    }
    let after = bob.stats();
    // The batch of both, refused; then each reply alone.
    assert_eq!(after.replies_resent - before.replies_resent, 2);
    assert_eq!(after.batches_sent - before.batches_sent, 3);
    assert_eq!(after.publish_refused, 0);
    // Each reply, alone, was kept by the durable channel.
    assert_eq!(hub.stats().durable_stored, 2);
}

/// A publish with groups for two durable channels is stored in both or in neither: when one
/// is full, the other keeps nothing of it, and the audit log records no delivery of it. The
/// publish's own entries for one channel count together against its limits.
#[tokio::test]
async fn a_publish_one_full_channel_refuses_is_stored_nowhere_and_recorded_as_no_delivery() {
    let dir = TempDir::new().unwrap();
    let eu = StreamConfig::new("eu", ChannelPattern::parse("orders.eu").unwrap());
    let mut us = StreamConfig::new("us", ChannelPattern::parse("orders.us.>").unwrap());
    us.max_messages = 2;
    let streams = dir.path().join("streams");
    let hub = TestHub::builder()
        .policies(POLICIES)
        .audited(&dir.path().join("audit"))
        .config(move |c| {
            c.streams = vec![eu, us];
            c.streams_dir = Some(streams);
        })
        .start()
        .await
        .unwrap();
    let bob_id = hub.enroll("shop", "bob").await.unwrap();
    let bob = hub.connect(bob_id.clone()).await.unwrap();
    bob.publish("orders.us.west", "half fills us")
        .await
        .unwrap();
    assert_eq!(hub.stats().durable_stored, 1);

    // One frame, `orders.eu` first: `eu` has room, `us` has room for one of the two. Each
    // batch with its sender key (without, an entry would not open: refused `UNAVAILABLE`).
    let (mut sender_keys, mut batches) = (Vec::new(), Vec::new());
    for (channel, payload) in [
        ("orders.eu", &b"eu part"[..]),
        ("orders.us.east", b"us part"),
        ("orders.us.north", b"another us part"),
    ] {
        let (mut sealer, key) = sealer(&bob_id, channel).unwrap();
        batches.push(sealer.seal_batch(&[payload], None, now_ms()).unwrap());
        sender_keys.push(key);
    }
    let publish = Publish {
        request_id: 1_000_000,
        sender_keys,
        batches,
        purpose: String::new(),
    };
    let full = danger_publish_raw(&bob, publish).await.unwrap_err();
    assert_eq!(full.refusal_code(), Some(RefusalCode::Full), "{full}");
    assert!(
        full.to_string().contains("`us` is full (2 messages)"),
        "{full}"
    );
    assert_eq!(hub.stats().durable_full, 1);

    // The next publish on `orders.eu` is the second entry stored, not the third.
    bob.publish("orders.eu", "after").await.unwrap();
    assert_eq!(hub.stats().durable_stored, 2);
    let records = hub.audit_records().await.unwrap();
    let delivered: Vec<&str> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::DeliveredBatch(b) => b.channel.as_clear(),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, ["orders.us.west", "orders.eu"]);
}

/// A stored entry carries the sender keys of earlier publishes that its batches need: a
/// publish whose entry would, with them, be a delivery larger than the limits is refused
/// before anything is built or stored, so that no consumer is sent what it can't take.
#[tokio::test]
async fn a_publish_whose_entry_would_outgrow_a_delivery_with_remembered_keys_is_refused() {
    const LIMIT: usize = 8 * 1024;
    // Larger than a delivery may be.
    let publish = outgrow(|limits| limits.max_frame_bytes = LIMIT).await;
    assert!(
        publish.0 < LIMIT && publish.0 + publish.1 > LIMIT,
        "{publish:?}"
    );
    // Costlier to decode than a delivery may be: each recipient of a sender key is an element.
    outgrow(|limits| limits.max_decoded_overhead = 40 * entente_wire::DECODED_ELEMENT_COST).await;
}

/// A publish may carry as many sender keys as a frame holds, and its batches need the keys of
/// earlier publishes too: an entry with more sender keys than a consumer's decoder takes,
/// however short, is refused (stored, every delivery of it ended the consumer's session).
#[tokio::test]
async fn a_publish_whose_entry_would_hold_more_sender_keys_than_a_delivery_is_refused() {
    const ITEMS: usize = 3;
    let epochs = Epochs::start(|limits| limits.max_items_per_frame = ITEMS).await;
    // Three epochs, each published with its key: stored, and their keys remembered.
    let (mut sealers, _) = epochs.publish(ITEMS as u64, &[]).await;
    // A frame's worth of new keys, and a batch of each earlier epoch without its key: the
    // entry would carry twice as many keys as a delivery may.
    let publish = Publish {
        request_id: 2_000,
        sender_keys: (10..10 + ITEMS as u64)
            .map(|i| epochs.sealer(&[], i).1)
            .collect(),
        batches: sealers
            .iter_mut()
            .map(|s| s.seal_batch(&[b"second"], None, now_ms()).unwrap())
            .collect(),
        purpose: String::new(),
    };
    epochs.refused_as_too_large(publish).await;
    assert_eq!(epochs.hub.stats().durable_stored, ITEMS as u64);
}

/// A hub keeping `orders.>` durable under `limits`, and Bob, who publishes on `orders.eu` in
/// epochs of his own making.
struct Epochs {
    hub: TestHub,
    bob_id: entente_client::Identity,
    bob: entente_client::Client,
    start: u64,
    _dir: TempDir,
}

impl Epochs {
    async fn start(limits: impl FnOnce(&mut entente_wire::Limits) + Send + 'static) -> Self {
        let dir = TempDir::new().unwrap();
        let hub = start_with(&dir, orders(|_| {}), |c| limits(&mut c.limits)).await;
        let bob_id = hub.enroll("shop", "bob").await.unwrap();
        let bob = hub.connect(bob_id.clone()).await.unwrap();
        Self {
            hub,
            bob_id,
            bob,
            start: now_ms(),
            _dir: dir,
        }
    }

    /// Bob's sealer of the `i`th epoch on `orders.eu` (epochs rising with `i`, whenever the
    /// sealers are made), for `recipients`, and its sender key.
    fn sealer(
        &self,
        recipients: &[entente_crypto::VerifiedKeyBundle],
        i: u64,
    ) -> (entente_crypto::Sealer, entente_wire::SenderKey) {
        entente_crypto::danger::danger_sealer_on_epoch(
            self.bob_id.principal().clone(),
            self.bob_id.key_bundle().epoch(),
            self.bob_id.message_keys().clone(),
            "orders.eu".parse().unwrap(),
            recipients,
            entente_crypto::SealerOptions::default(),
            now_ms(),
            (self.start + i) << 16,
        )
        .unwrap()
    }

    /// Publishes `n` epochs for `recipients`, one per publish, each with its sender key: all
    /// stored, and the keys remembered. The sealers, and the keys' encoded length in all.
    async fn publish(
        &self,
        n: u64,
        recipients: &[entente_crypto::VerifiedKeyBundle],
    ) -> (Vec<entente_crypto::Sealer>, usize) {
        let mut sealers = Vec::new();
        let mut key_bytes = 0;
        for i in 0..n {
            let (mut sealer, key) = self.sealer(recipients, i);
            key_bytes += prost::Message::encoded_len(&key);
            let publish = Publish {
                request_id: 1_000 + i,
                sender_keys: vec![key],
                batches: vec![sealer.seal_batch(&[b"first"], None, now_ms()).unwrap()],
                purpose: String::new(),
            };
            danger_publish_raw(&self.bob, publish).await.unwrap();
            sealers.push(sealer);
        }
        assert_eq!(self.hub.stats().durable_stored, n);
        (sealers, key_bytes)
    }

    /// Publishes `publish`, which must be refused as an entry too large for a delivery.
    async fn refused_as_too_large(&self, publish: Publish) {
        let refused = danger_publish_raw(&self.bob, publish).await.unwrap_err();
        assert_eq!(
            refused.refusal_code(),
            Some(RefusalCode::TooLarge),
            "{refused}"
        );
        assert!(
            refused
                .to_string()
                .contains("durable entry for `orders.eu`"),
            "{refused}"
        );
    }
}

/// Publishes four epochs' sender keys, then one batch of each epoch without them (refused),
/// then a batch of one epoch (stored), on a hub with `limits`; the length of the refused
/// publish and of the keys it needed.
async fn outgrow(
    limits: impl FnOnce(&mut entente_wire::Limits) + Send + 'static,
) -> (usize, usize) {
    // Within the epochs the hub's replay windows keep of a sender on a channel.
    const EPOCHS: u64 = 4;
    let epochs = Epochs::start(limits).await;
    // One epoch per publish, each with its sender key (large: many recipients): every one is
    // stored.
    let recipients = vec![epochs.bob_id.key_bundle().clone(); 24];
    let (mut sealers, key_bytes) = epochs.publish(EPOCHS, &recipients).await;

    // One batch of each epoch, without their keys: small as a publish, too large as an entry.
    let publish = Publish {
        request_id: 2_000,
        sender_keys: Vec::new(),
        batches: sealers
            .iter_mut()
            .map(|s| s.seal_batch(&[b"second"], None, now_ms()).unwrap())
            .collect(),
        purpose: String::new(),
    };
    let len = prost::Message::encoded_len(&publish);
    epochs.refused_as_too_large(publish).await;
    assert_eq!(epochs.hub.stats().durable_stored, EPOCHS);

    // One fits, and is stored.
    let publish = Publish {
        request_id: 3_000,
        sender_keys: Vec::new(),
        batches: sealers
            .iter_mut()
            .take(1)
            .map(|s| s.seal_batch(&[b"third"], None, now_ms()).unwrap())
            .collect(),
        purpose: String::new(),
    };
    danger_publish_raw(&epochs.bob, publish).await.unwrap();
    assert_eq!(epochs.hub.stats().durable_stored, EPOCHS + 1);
    (len, key_bytes)
}

/// A durable channel whose pattern begins with a wildcard captures no system channel, as a
/// subscription never carries one: an archive of `>` keeps no one's directs, and its consumer
/// is sent none (sealed, but with their sender, size and time), whatever the policies let its
/// owner subscribe to.
#[tokio::test]
async fn an_archive_of_everything_keeps_no_ones_directs() {
    const ARCHIVER: &str = r#"
        permit (principal == Human::"spiffe://example.org/human/archivist",
                action == Action::"subscribe", resource);
    "#;
    let dir = TempDir::new().unwrap();
    let streams = dir.path().join("streams");
    let everything = StreamConfig::new("all", ChannelPattern::parse(">").unwrap());
    let hub = TestHub::builder()
        .policies(&format!("{POLICIES}{ARCHIVER}"))
        .config(move |c| {
            c.streams = vec![everything];
            c.streams_dir = Some(streams);
        })
        .start()
        .await
        .unwrap();
    let archiver = hub.connect_human("archivist").await.unwrap();
    let mut all = archiver.subscribe_durable(">", "all").await.unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let mut directs = bob.subscribe_direct().await.unwrap();

    alice
        .direct(bob.principal(), "for bob alone")
        .await
        .unwrap();
    assert_eq!(next(&mut directs).await.payload, b"for bob alone");
    alice.publish("orders.eu", "for the archive").await.unwrap();
    let kept = next(&mut all).await;
    assert_eq!(kept.payload, b"for the archive");
    nothing_within(&mut all, Duration::from_millis(300)).await;
    assert_eq!(hub.stats().durable_stored, 1);
}

/// An entry whose length field was damaged near the end of the last segment reads as a torn
/// write and is cut at start, with the entries after it: not quietly. The cut bytes are kept
/// beside the segment, and the audit log says where, and how many entries they hold.
#[tokio::test]
async fn a_cut_at_start_is_kept_and_recorded() {
    let dir = TempDir::new().unwrap();
    let hub = start_audited(&dir).await;
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    for i in 0..6 {
        bob.publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    bob.close().await;
    let (ca, config, store) = (
        hub.ca().ca().clone(),
        hub.config().clone(),
        hub.store().clone(),
    );
    hub.shutdown().await.unwrap();

    // The fourth entry's length made to run past the end of its segment.
    let entries = dir.path().join("streams/orders/entries");
    let segment = std::fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    for _ in 0..3 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 20 + len + 8;
    }
    bytes[at] = 0x7f;
    std::fs::write(&segment, &bytes).unwrap();

    // A start that fails after the cut (the dead letters' log can't be opened) has recorded
    // it all the same: the next start finds nothing to cut.
    let dead = dir.path().join("streams/orders/dead");
    std::fs::rename(&dead, dir.path().join("dead-aside")).unwrap();
    std::fs::write(&dead, b"not a directory").unwrap();
    let failed = entente_hub::Hub::start(config.clone(), ca.clone(), store.clone()).await;
    assert!(failed.is_err());
    std::fs::remove_file(&dead).unwrap();
    std::fs::rename(dir.path().join("dead-aside"), &dead).unwrap();

    let hub = entente_hub::Hub::start(config, ca, store).await.unwrap();
    let (records, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let repaired: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::Admin(a) if a.operation.as_clear() == Some("durable-channel-repaired") => {
                Some(a.detail.as_clear().unwrap().to_owned())
            }
            _ => None,
        })
        .collect();
    let [detail] = repaired.as_slice() else {
        panic!("{repaired:?}")
    };
    assert!(
        detail.contains(&format!("cut at byte {at} from sequence 4")),
        "{detail}"
    );
    assert!(detail.contains("2 complete entries"), "{detail}");
    let kept = std::fs::read_dir(&entries)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(".cut-"))
        .unwrap();
    assert_eq!(std::fs::read(kept).unwrap(), bytes[at..].to_vec());
    hub.shutdown().await.unwrap();
}

/// What the hub keeps at rest — the audit log, its exports, durable channels and their
/// consumers — is its owner's alone: directories 0700, files 0600, whatever the umask.
#[tokio::test]
async fn what_the_hub_keeps_at_rest_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new().unwrap();
    let (audit, streams) = (dir.path().join("audit"), dir.path().join("streams"));
    let hub = TestHub::builder()
        .policies(POLICIES)
        .audited(&audit)
        .config({
            let streams = streams.clone();
            move |c| {
                c.streams = vec![orders(|_| {})];
                c.streams_dir = Some(streams);
            }
        })
        .start()
        .await
        .unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    bob.publish("orders.eu", "order 1").await.unwrap();
    let m = next(&mut orders).await;
    alice.ack(&m).await.unwrap();
    // An export, kept by the hub beside the log while it is fetched.
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    admin
        .audit_export(dir.path().join("out.export"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    hub.shutdown().await.unwrap();

    let exports = dir.path().join("audit.exports");
    assert!(exports.is_dir());
    let mut seen = 0;
    let mut stack = vec![audit, streams, exports];
    while let Some(path) = stack.pop() {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        if path.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 6, "{seen} files");
}

/// A failed audit log decides nothing: a wildcard consumer's entries due for redelivery then
/// wait (their attempts uncounted) rather than pass as not the consumer's, which would have
/// purged them, never delivered, by the time the operator restarts the hub.
#[tokio::test]
async fn entries_wait_while_the_audit_log_is_failed() {
    let dir = TempDir::new().unwrap();
    let streams = dir.path().join("streams");
    let hub = TestHub::builder()
        .policies(POLICIES)
        .audited(&dir.path().join("audit"))
        .config(move |c| {
            c.streams = vec![orders(|c| {
                c.ack_wait = Duration::from_secs(2);
                c.max_deliver = 3;
            })];
            c.streams_dir = Some(streams);
        })
        .start()
        .await
        .unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let mut orders = alice.subscribe_durable("orders.>", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    // The log must fail before the entry's `max_deliver` deliveries are done: no lookup of
    // bob's key bundle between its delivery and the failure.
    alice.key_bundle(bob.principal()).await.unwrap();
    bob.publish("orders.eu", "pending").await.unwrap();
    let first = next(&mut orders).await;
    let seq = first.durable.unwrap().sequence;

    // The log fails under the running hub (its records file gone: the next write fails).
    std::fs::remove_file(dir.path().join("audit").join("records")).unwrap();
    assert!(bob.publish("orders.eu", "unrecorded").await.is_err());
    // Redeliveries come due several times over (the first `ack_wait` after the delivery, then
    // a second apart while they wait: counted, they would end in the dead-letter log within
    // 4 s), and the consumer's state is saved.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(hub.stats().durable_dead_letters, 0);
    let state = std::fs::read_to_string(
        dir.path()
            .join("streams")
            .join("orders")
            .join("consumers")
            .join("alice.state"),
    )
    .unwrap();
    assert!(
        state.lines().any(|l| l == format!("floor {seq}")),
        "the entry passed as done: {state}"
    );
    // Still pending, its attempts within `max_deliver`.
    let attempts = state
        .lines()
        .find_map(|l| l.strip_prefix("attempts"))
        .unwrap_or_default();
    assert!(
        attempts
            .split_whitespace()
            .any(|a| [1, 2, 3].iter().any(|n| a == format!("{seq}:{n}"))),
        "{state}"
    );
    assert!(hub.shutdown().await.is_err());
}

/// A durable subscribe whose future is dropped after its frame went out (a caller's own
/// timeout, a `select!`) is undone at the hub: the consumer is not left held by a
/// subscription nobody reads.
#[tokio::test]
async fn a_subscribe_dropped_on_its_way_leaves_no_consumer_held() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|_| {})).await;
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    // The consumer made (and let go): what is published now is sealed to Alice too.
    drop(alice.subscribe_durable("orders.eu", "alice").await.unwrap());
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    bob.publish("orders.eu", "kept").await.unwrap();
    {
        let mut subscribing = Box::pin(alice.subscribe_durable("orders.eu", "alice"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Polled once: the subscribe is queued for the hub, its answer not yet in.
        assert!(subscribing.as_mut().poll(&mut cx).is_pending());
    }
    let mut orders = alice.subscribe_durable("orders.eu", "alice").await.unwrap();
    assert_eq!(next(&mut orders).await.payload, b"kept");
}

/// A batch whose sender key is neither in the publish nor remembered (never routed, or
/// forgotten) would be an entry no consumer can open: refused `UNAVAILABLE`, nothing stored.
/// With its key the same batch is stored.
#[tokio::test]
async fn an_entry_whose_sender_key_the_hub_lacks_is_refused() {
    let dir = TempDir::new().unwrap();
    let hub = start(&dir, orders(|_| {})).await;
    let bob_id = hub.enroll("shop", "bob").await.unwrap();
    let bob = hub.connect(bob_id.clone()).await.unwrap();
    let (mut sealer, key) = sealer(&bob_id, "orders.eu").unwrap();
    let batch = sealer.seal_batch(&[b"no key"], None, now_ms()).unwrap();
    let publish = |request_id, sender_keys, batches| Publish {
        request_id,
        sender_keys,
        batches,
        purpose: String::new(),
    };
    let refused = danger_publish_raw(&bob, publish(1_000_000, Vec::new(), vec![batch]))
        .await
        .unwrap_err();
    assert_eq!(
        refused.refusal_code(),
        Some(RefusalCode::Unavailable),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("neither in the publish nor known"),
        "{refused}"
    );
    assert_eq!(hub.stats().durable_stored, 0);
    let batch = sealer
        .seal_batch(&[b"with its key"], None, now_ms())
        .unwrap();
    danger_publish_raw(&bob, publish(1_000_001, vec![key], vec![batch]))
        .await
        .unwrap();
    assert_eq!(hub.stats().durable_stored, 1);
}
