//! Messages held for approval, through a real hub on 127.0.0.1:0: a publish that `@hold`
//! forbids deny is acknowledged as held and routed to nobody; approvers list it (sealed),
//! approve it with statements bound to the envelope's hash, and it is delivered once the
//! policies allow it; rejections, withdrawals, separation of duties, replays, wrong hashes and
//! callers without the right are refused or end it, each with its status.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use entente_crypto::{ApprovalStatement, ObjectKind, SealerOptions, Verdict, envelope_digest};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use entente_hub::{Hub, HubConfig, HubError, HubHandle, LIST_HELD_PATH, RefusalCode};
use entente_store::Store as _;
use entente_testkit::WAIT;
use entente_types::{HumanId, Principal};
use entente_wire::{
    ApproveRequest, HeldMessage, ListHeldRequest, ListHeldResponse, Publish, SenderKey,
    SignedBatch, client_frame, server_frame,
};
use support::{
    Agent, FlakyStore, SessionExt, TestCa, ack, approve, frame, now_ms, refusal, refused, signed,
    sources, start, start_with_store,
};
use tonic::Code;

/// Segment `shop` publishes and reads `orders.>`; a wire transfer (`orders.wire.>`) waits for
/// two approvals; humans approve them.
const POLICIES: &str = r#"
    @id("shop-orders")
    @cross_segment
    permit (principal in Segment::"shop",
            action in [Action::"publish", Action::"subscribe"],
            resource in Namespace::"orders");

    @id("wires-need-two")
    @hold
    forbid (principal, action == Action::"publish", resource)
    when { resource == Channel::"orders.wire" || resource in Namespace::"orders.wire" }
    unless { context.approvals >= 2 };

    @id("humans-approve-wires")
    permit (principal is Human, action == Action::"approve", resource)
    when { resource == Channel::"orders.wire" || resource in Namespace::"orders.wire" };
"#;

fn human(ca: &TestCa, name: &str) -> Agent {
    ca.identity(
        Principal::from(HumanId::new(&ca.td, name).unwrap()),
        std::time::SystemTime::now(),
    )
}

async fn publish(
    session: &mut support::Session,
    id: u64,
    sender_keys: Vec<SenderKey>,
    batches: Vec<SignedBatch>,
    purpose: &str,
) -> server_frame::Kind {
    session
        .send(frame(client_frame::Kind::Publish(Publish {
            request_id: id,
            sender_keys,
            batches,
            purpose: purpose.to_owned(),
        })))
        .await
        .unwrap();
    session.next_kind().await
}

/// What `who` is shown, each message fetched again by its ID so that it comes with its batch
/// (a list of all leaves batches out).
async fn list(hub: &HubHandle, who: &Agent) -> Vec<HeldMessage> {
    let client = who.connect(hub).await;
    let all: ListHeldResponse = client
        .unary(LIST_HELD_PATH, ListHeldRequest::default())
        .await
        .unwrap();
    let mut shown = Vec::new();
    for held in all.held {
        assert!(held.batch.is_none(), "a list of all leaves batches out");
        let one: ListHeldResponse = client
            .unary(
                LIST_HELD_PATH,
                ListHeldRequest {
                    message_id: held.message_id.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(one.held.len(), 1);
        shown.extend(one.held);
    }
    shown
}

/// `approver`'s statement about `held` as shown: it hashes the envelope itself.
fn statement(approver: &Agent, held: &HeldMessage, verdict: Verdict) -> ApproveRequest {
    let batch = held.batch.as_ref().unwrap();
    let hash = envelope_digest(&batch.sender, &batch.channel, &batch.envelopes[0]);
    signed(
        approver,
        ApprovalStatement {
            verdict,
            kind: ObjectKind::Envelope,
            object_id: held.message_id.clone(),
            object_hash: hash,
            approver: approver.principal.clone(),
            key_epoch: approver.bundle.epoch(),
            signed_at_ms: now_ms(),
        },
    )
}

#[tokio::test]
async fn a_held_message_waits_for_two_approvals_then_reaches_the_channel() {
    let ca = TestCa::new();
    let hub = start(&ca, held_config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let carol = ca.agent("shop", "carol");
    let (ops1, ops2) = (human(&ca, "ops1"), human(&ca, "ops2"));
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.>").await, ack(1));
    let mut alice_session = alice.session(&hub).await;

    // Held: acknowledged as held, routed to nobody.
    let (mut sealer, key) = alice.sealer("orders.wire.eu", &[&bob.bundle]);
    let wire = sealer
        .seal_batch(&[b"pay 10k to ACME"], None, now_ms())
        .unwrap();
    let answer = publish(
        &mut alice_session,
        1,
        vec![key],
        vec![wire.clone()],
        "supplier invoice 42",
    )
    .await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    assert_eq!(acked.held.len(), 1);
    let id = acked.held[0].message_id.clone();
    assert_eq!(acked.held[0].channel, "orders.wire.eu");
    assert_eq!(hub.stats().held_messages, 1);

    // Approvers see it sealed, with its purpose; so does its sender; others do not.
    let shown = list(&hub, &ops1).await;
    assert_eq!(shown.len(), 1);
    let held = &shown[0];
    assert_eq!(
        (
            held.message_id.as_str(),
            held.sender.as_str(),
            held.state.as_str()
        ),
        (id.as_str(), alice.principal.as_str(), "pending")
    );
    assert_eq!(held.purpose, "supplier invoice 42");
    assert_eq!(held.batch.as_ref(), Some(&wire));
    assert_eq!(list(&hub, &alice).await.len(), 1);
    assert!(list(&hub, &carol).await.is_empty());

    // Refusals: the sender approving, an agent without the right, a wrong hash.
    refused(
        approve(&hub, &alice, statement(&alice, held, Verdict::Approve)).await,
        Code::PermissionDenied,
        "separation of duties",
    );
    refused(
        approve(&hub, &carol, statement(&carol, held, Verdict::Approve)).await,
        Code::PermissionDenied,
        "denied",
    );
    let mut other = held.clone();
    other.batch.as_mut().unwrap().envelopes[0].ciphertext[0] ^= 1;
    refused(
        approve(&hub, &ops1, statement(&ops1, &other, Verdict::Approve)).await,
        Code::InvalidArgument,
        "hash",
    );
    // A statement dated well before the message was received is not about it.
    let batch = held.batch.as_ref().unwrap();
    let old = signed(
        &ops1,
        ApprovalStatement {
            verdict: Verdict::Approve,
            kind: ObjectKind::Envelope,
            object_id: held.message_id.clone(),
            object_hash: envelope_digest(&batch.sender, &batch.channel, &batch.envelopes[0]),
            approver: ops1.principal.clone(),
            key_epoch: ops1.bundle.epoch(),
            signed_at_ms: held.published_at_ms - 120_000,
        },
    );
    refused(
        approve(&hub, &ops1, old).await,
        Code::InvalidArgument,
        "before the message was received",
    );

    // One approval: still held. The same statement again, or a second approval by the same
    // approver: refused.
    let first = statement(&ops1, held, Verdict::Approve);
    let answer = approve(&hub, &ops1, first.clone()).await.unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));
    refused(
        approve(&hub, &ops1, first).await,
        Code::AlreadyExists,
        "applied before",
    );
    refused(
        approve(&hub, &ops1, statement(&ops1, held, Verdict::Approve)).await,
        Code::AlreadyExists,
        "counts once",
    );

    // The second: released, and delivered to the channel's subscriber.
    let answer = approve(&hub, &ops2, statement(&ops2, held, Verdict::Approve))
        .await
        .unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("released", 2));
    let server_frame::Kind::Deliver(delivered) = bob_session.next_kind().await else {
        panic!("bob gets the released message");
    };
    assert_eq!(delivered.batches, [wire]);
    refused(
        approve(&hub, &ops2, statement(&ops2, held, Verdict::Reject)).await,
        Code::FailedPrecondition,
        "released",
    );
    assert_eq!(list(&hub, &ops1).await[0].approvals.len(), 2);

    // A second message, rejected: never delivered (bob's next frame is the later order).
    let next = sealer.seal_batch(&[b"pay 1M"], None, now_ms()).unwrap();
    let answer = publish(&mut alice_session, 2, vec![], vec![next], "urgent").await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    let shown = list(&hub, &ops1).await;
    let second = shown
        .iter()
        .find(|h| h.message_id == acked.held[0].message_id)
        .unwrap();
    let answer = approve(&hub, &ops1, statement(&ops1, second, Verdict::Reject))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "rejected");
    let shown = list(&hub, &alice).await;
    let second = shown
        .iter()
        .find(|h| h.message_id == acked.held[0].message_id)
        .unwrap();
    assert_eq!(second.state, "rejected");
    assert!(second.reason.contains("ops1"), "{}", second.reason);

    let (mut orders, key) = alice.sealer("orders.eu", &[&bob.bundle]);
    let order = orders.seal_batch(&[b"an order"], None, now_ms()).unwrap();
    assert_eq!(
        publish(&mut alice_session, 3, vec![key], vec![order.clone()], "").await,
        ack(3)
    );
    let server_frame::Kind::Deliver(delivered) = bob_session.next_kind().await else {
        panic!("bob gets the order");
    };
    assert_eq!(delivered.batches, [order]);

    // Unknown messages.
    let mut unknown = held.clone();
    unknown.message_id = "0190c2a4-0000-7000-8000-000000000000".into();
    refused(
        approve(&hub, &ops1, statement(&ops1, &unknown, Verdict::Approve)).await,
        Code::NotFound,
        "no held message",
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_held_publish_needs_a_purpose_and_one_message_and_the_sender_may_withdraw_it() {
    let ca = TestCa::new();
    let hub = start(&ca, held_config()).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    let (mut sealer, key) = alice.sealer("orders.wire.eu", &[]);

    let one = sealer.seal_batch(&[b"a"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 1, vec![key.clone()], vec![one], "").await;
    assert_eq!(refusal(answer), (1, RefusalCode::Denied));
    // Approvers read a purpose in a line of its own: no line breaks, no terminal controls.
    for purpose in [
        "pay\nspiffe://x on y: fine",
        "pay \u{1b}[2K",
        "pay \u{202e}04 EUR",
    ] {
        let one = sealer.seal_batch(&[b"a"], None, now_ms()).unwrap();
        let answer = publish(&mut session, 1, vec![key.clone()], vec![one], purpose).await;
        let server_frame::Kind::Refusal(refused) = answer else {
            panic!("expected a refusal, got {answer:?}");
        };
        assert!(
            refused.reason.contains("formatting characters"),
            "{}",
            refused.reason
        );
    }

    let two = sealer.seal_batch(&[b"a", b"b"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 2, vec![key.clone()], vec![two], "why").await;
    assert_eq!(refusal(answer), (2, RefusalCode::Denied));
    assert_eq!(hub.stats().held_messages, 0);

    // Two held channels in one frame: refused whole.
    let (mut us, us_key) = alice.sealer("orders.wire.us", &[]);
    let eu_batch = sealer.seal_batch(&[b"eu"], None, now_ms()).unwrap();
    let us_batch = us.seal_batch(&[b"us"], None, now_ms()).unwrap();
    let answer = publish(
        &mut session,
        4,
        vec![key.clone(), us_key],
        vec![eu_batch, us_batch],
        "why",
    )
    .await;
    let server_frame::Kind::Refusal(both) = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert!(
        both.reason.contains("one held message per frame"),
        "{}",
        both.reason
    );
    assert_eq!(hub.stats().held_messages, 0);

    let one = sealer.seal_batch(&[b"c"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 3, vec![key], vec![one], "why").await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    // The sender withdraws it: a rejection by the sender needs no permit.
    let shown = list(&hub, &alice).await;
    assert_eq!(shown[0].message_id, acked.held[0].message_id);
    let answer = approve(&hub, &alice, statement(&alice, &shown[0], Verdict::Reject))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "rejected");
    hub.shutdown().await.unwrap();
}

/// A frame that holds a message for approval and carries one for a durable channel is refused
/// whole: the hold is stored before the durable channels decide, so one of them refusing
/// would leave it behind. Refused before anything is recorded, the same batches each go
/// through in a frame of their own; once approved, the held one is stored in the durable
/// channel that captures it before it is routed.
#[tokio::test]
async fn a_held_message_and_a_durable_one_in_one_frame_are_refused_whole() {
    let ca = TestCa::new();
    let dir = tempfile::TempDir::new().unwrap();
    let stream = |name: &str, pattern: &str| {
        entente_hub::StreamConfig::new(name, entente_types::ChannelPattern::parse(pattern).unwrap())
    };
    let config = HubConfig {
        streams: vec![
            stream("orders", "orders.eu"),
            stream("wires", "orders.wire.>"),
        ],
        streams_dir: Some(dir.path().join("streams")),
        ..held_config()
    };
    let hub = start(&ca, config).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    let (mut wire, wire_key) = alice.sealer("orders.wire.eu", &[]);
    let (mut orders, orders_key) = alice.sealer("orders.eu", &[]);

    let held = wire.seal_batch(&[b"wire"], None, now_ms()).unwrap();
    let kept = orders.seal_batch(&[b"order"], None, now_ms()).unwrap();
    let answer = publish(
        &mut session,
        1,
        vec![wire_key.clone(), orders_key.clone()],
        vec![held.clone(), kept.clone()],
        "why",
    )
    .await;
    let server_frame::Kind::Refusal(both) = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert_eq!(both.code, RefusalCode::Denied.as_u32());
    assert!(both.reason.contains("durable"), "{}", both.reason);
    assert_eq!(hub.stats().held_messages, 0);
    assert_eq!(hub.stats().durable_stored, 0);

    let answer = publish(&mut session, 2, vec![wire_key], vec![held], "why").await;
    assert!(
        matches!(answer, server_frame::Kind::Ack(ref a) if a.held.len() == 1),
        "{answer:?}"
    );
    assert_eq!(hub.stats().durable_stored, 0, "held, not stored yet");
    let answer = publish(&mut session, 3, vec![orders_key], vec![kept], "").await;
    assert!(
        matches!(answer, server_frame::Kind::Ack(ref a) if a.held.is_empty()),
        "{answer:?}"
    );
    assert_eq!(hub.stats().held_messages, 1);
    assert_eq!(hub.stats().durable_stored, 1);
    // A held message on a durable channel whose sender key is neither in the publish nor
    // known to the hub would be stored unopenable once released: refused as it is held.
    let (mut keyless, _) = alice.sealer("orders.wire.eu", &[]);
    let keyless = keyless.seal_batch(&[b"wire"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 4, vec![], vec![keyless], "why").await;
    let server_frame::Kind::Refusal(refused) = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert_eq!(refused.code, RefusalCode::Unavailable.as_u32());
    assert!(
        refused.reason.contains("neither in the publish nor known"),
        "{}",
        refused.reason
    );
    assert_eq!(hub.stats().held_messages, 1);

    let (ops1, ops2) = (human(&ca, "ops1"), human(&ca, "ops2"));
    let shown = list(&hub, &ops1).await;
    approve(&hub, &ops1, statement(&ops1, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    let answer = approve(&hub, &ops2, statement(&ops2, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "released");
    assert_eq!(hub.stats().durable_stored, 2, "stored once released");
    hub.shutdown().await.unwrap();
}

fn held_config() -> HubConfig {
    HubConfig {
        policies: sources(POLICIES),
        ..HubConfig::default()
    }
}

/// [`held_config`] with an audit log kept in `dir`.
fn audited_config(dir: &std::path::Path) -> HubConfig {
    HubConfig {
        audit: Some(entente_hub::AuditConfig::new(dir.join("audit"))),
        ..held_config()
    }
}

/// Alice publishes one wire on `session`: the hold's ID.
async fn hold_one(
    session: &mut support::Session,
    alice: &Agent,
    id: u64,
    payload: &[u8],
) -> String {
    let (mut sealer, key) = alice.sealer("orders.wire.eu", &[]);
    let batch = sealer.seal_batch(&[payload], None, now_ms()).unwrap();
    let answer = publish(session, id, vec![key], vec![batch], "invoice").await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    acked.held[0].message_id.clone()
}

/// An envelope under the message ID of one already held (its sender's, sealed anew: a later
/// sequence number, so the replay windows pass it) is refused as a replay, not as a full
/// book of held messages; nothing more is held.
#[tokio::test]
async fn a_message_id_already_held_is_refused_as_a_replay() {
    let ca = TestCa::new();
    let hub = start(&ca, held_config()).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    let (mut sealer, key) = alice.sealer("orders.wire.eu", &[]);
    let first = sealer.seal_batch(&[b"pay 10k"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 1, vec![key], vec![first.clone()], "invoice").await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    assert_eq!(acked.held.len(), 1);
    let mut again = sealer.seal_batch(&[b"pay 20k"], None, now_ms()).unwrap();
    again.envelopes[0].message_id = first.envelopes[0].message_id.clone();
    entente_crypto::danger::danger_sign_batch(&alice.keys, &mut again);
    let answer = publish(&mut session, 2, vec![], vec![again], "invoice").await;
    assert_eq!(refusal(answer), (2, RefusalCode::Replay));
    assert_eq!(hub.stats().held_messages, 1);
    assert_eq!(hub.stats().replays, 1, "counted as any refused replay");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_held_message_and_its_approvals_survive_a_restart() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, held_config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let (ops1, ops2) = (human(&ca, "ops1"), human(&ca, "ops2"));
    let mut session = alice.session(&hub).await;
    let id = hold_one(&mut session, &alice, 1, b"pay 10k").await;
    let shown = list(&hub, &ops1).await;
    let answer = approve(&hub, &ops1, statement(&ops1, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "pending");
    drop(session);
    hub.shutdown().await.unwrap();

    let hub = Hub::start(held_config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let shown = list(&hub, &ops2).await;
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (shown[0].message_id.as_str(), shown[0].state.as_str()),
        (id.as_str(), "pending")
    );
    assert_eq!(shown[0].approvals.len(), 1);
    // The first approval still counts once, after the restart too.
    refused(
        approve(&hub, &ops1, statement(&ops1, &shown[0], Verdict::Approve)).await,
        Code::AlreadyExists,
        "counts once",
    );
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.>").await, ack(1));
    let answer = approve(&hub, &ops2, statement(&ops2, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "released");
    let server_frame::Kind::Deliver(delivered) = bob_session.next_kind().await else {
        panic!("bob gets the released message");
    };
    assert_eq!(delivered.batches.len(), 1);
    // Released: no longer in the store.
    assert!(store.held().await.unwrap().is_empty());
    hub.shutdown().await.unwrap();
}

/// A message held before a durable channel captured its channel (a stream configured since)
/// is checked when it is released as any entry: one carrying its sender key is stored, one
/// whose key the hub does not know (it went with a message withdrawn since) is released to the
/// live subscribers and the approver told it was not stored, rather than stored unopenable.
#[tokio::test]
async fn a_message_held_before_its_channel_was_durable_is_stored_only_if_it_opens() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, held_config()).await;
    let alice = ca.agent("shop", "alice");
    let (ops1, ops2) = (human(&ca, "ops1"), human(&ca, "ops2"));
    let mut session = alice.session(&hub).await;
    // Two wires of one epoch, its sender key with the first only, which alice withdraws; a
    // third of another epoch, with its key.
    let (mut first, key) = alice.sealer("orders.wire.eu", &[]);
    let (mut other, other_key) = alice.sealer("orders.wire.eu", &[]);
    let mut ids = Vec::new();
    for (id, keys) in [(1, vec![key]), (2, vec![]), (3, vec![other_key])] {
        let sealer = if id < 3 { &mut first } else { &mut other };
        let batch = sealer.seal_batch(&[b"pay"], None, now_ms()).unwrap();
        let answer = publish(&mut session, id, keys, vec![batch], "invoice").await;
        let server_frame::Kind::Ack(acked) = answer else {
            panic!("expected an ack, got {answer:?}");
        };
        ids.push(acked.held[0].message_id.clone());
    }
    let own = list(&hub, &alice).await;
    let withdrawn = own.iter().find(|h| h.message_id == ids[0]).unwrap();
    let answer = approve(&hub, &alice, statement(&alice, withdrawn, Verdict::Reject))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "rejected");
    drop(session);
    hub.shutdown().await.unwrap();

    // Started again with a durable channel capturing the wires.
    let dir = tempfile::TempDir::new().unwrap();
    let config = HubConfig {
        streams: vec![entente_hub::StreamConfig::new(
            "wires",
            entente_types::ChannelPattern::parse("orders.wire.>").unwrap(),
        )],
        streams_dir: Some(dir.path().join("streams")),
        ..held_config()
    };
    let hub = Hub::start(config, ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let shown = list(&hub, &ops1).await;
    let held = |id: &str| shown.iter().find(|h| h.message_id == id).unwrap();
    let approved = |who: &Agent, id: &str| statement(who, held(id), Verdict::Approve);
    approve(&hub, &ops1, approved(&ops1, &ids[1]))
        .await
        .unwrap();
    let refused = approve(&hub, &ops2, approved(&ops2, &ids[1]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("released to the live subscribers")
            && refused.message().contains("is not known to the hub"),
        "{refused:?}"
    );
    assert_eq!(hub.stats().durable_stored, 0);
    approve(&hub, &ops1, approved(&ops1, &ids[2]))
        .await
        .unwrap();
    let answer = approve(&hub, &ops2, approved(&ops2, &ids[2]))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "released");
    assert_eq!(hub.stats().durable_stored, 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_held_message_that_lapses_while_the_hub_is_down_is_recorded_and_listed_as_expired() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let config = audited_config(dir.path());
    let (hub, store) = start_with_store(&ca, config.clone()).await;
    let alice = ca.agent("shop", "alice");
    let ops1 = human(&ca, "ops1");
    let mut session = alice.session(&hub).await;
    // The hold lapses with its envelope.
    const TTL_MS: u64 = 5_000;
    let options = SealerOptions {
        message_ttl_ms: TTL_MS,
        ..SealerOptions::default()
    };
    let (mut sealer, key) = alice.sealer_with("orders.wire.eu", &[], options);
    let sealed_at = now_ms();
    let batch = sealer.seal_batch(&[b"pay"], None, sealed_at).unwrap();
    let answer = publish(&mut session, 1, vec![key], vec![batch], "invoice").await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    let id = acked.held[0].message_id.clone();
    drop(session);
    hub.shutdown().await.unwrap();
    let lapsed = sealed_at + TTL_MS + 100;
    tokio::time::sleep(Duration::from_millis(lapsed.saturating_sub(now_ms()))).await;

    let hub = Hub::start(config, ca.ca.clone(), store).await.unwrap();
    let shown = list(&hub, &ops1).await;
    let states: Vec<(&str, &str)> = shown
        .iter()
        .map(|h| (h.message_id.as_str(), h.state.as_str()))
        .collect();
    assert_eq!(states, [(id.as_str(), "expired")]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (records, _) = hub.audit_records(0, 1000).await.unwrap().unwrap();
        let expired = records.iter().any(|r| {
            matches!(&r.event, entente_audit::Event::Approval(a)
                if a.verdict == entente_audit::Verdict::Expired
                    && a.message_id.as_clear() == Some(id.as_str()))
        });
        if expired {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no expiry record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_store_failure_refuses_the_hold_or_the_approval_and_changes_nothing() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::new(dir.path()));
    let hub = Hub::start(held_config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let alice = ca.agent("shop", "alice");
    let ops1 = human(&ca, "ops1");
    let mut session = alice.session(&hub).await;

    store.fail.store(true, Ordering::SeqCst);
    let (mut sealer, key) = alice.sealer("orders.wire.eu", &[]);
    let batch = sealer.seal_batch(&[b"pay"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 1, vec![key], vec![batch], "invoice").await;
    assert_eq!(refusal(answer), (1, RefusalCode::Unavailable));
    assert!(list(&hub, &ops1).await.is_empty());
    assert_eq!(hub.stats().held_store_failures, 1);

    store.fail.store(false, Ordering::SeqCst);
    let id = hold_one(&mut session, &alice, 2, b"pay again").await;
    let shown = list(&hub, &ops1).await;
    assert_eq!(shown[0].message_id, id);
    let request = statement(&ops1, &shown[0], Verdict::Approve);
    store.fail.store(true, Ordering::SeqCst);
    let status = approve(&hub, &ops1, request.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("could not store"), "{status:?}");
    // What the store said stays in the hub.
    assert!(!status.message().contains("disk"), "{status:?}");
    assert!(list(&hub, &ops1).await[0].approvals.is_empty());
    store.fail.store(false, Ordering::SeqCst);
    let answer = approve(&hub, &ops1, request).await.unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stored_held_message_that_does_not_decode_is_a_start_error() {
    let ca = TestCa::new();
    let store = ca.store();
    store
        .put_held("0190c2a4-0000-7000-8000-000000000000", b"\xff\xff")
        .await
        .unwrap();
    let err = Hub::start(held_config(), ca.ca.clone(), store)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::StoredHeld(_)), "{err}");
    assert!(err.to_string().contains("does not decode"), "{err}");
}

#[tokio::test]
async fn requests_are_never_held_and_the_namespace_channel_itself_is() {
    let ca = TestCa::new();
    let policies = POLICIES.replace(
        r#"action in [Action::"publish", Action::"subscribe"],"#,
        r#"action in [Action::"publish", Action::"subscribe", Action::"request"],"#,
    );
    let hub = start(
        &ca,
        HubConfig {
            policies: sources(&policies),
            ..HubConfig::default()
        },
    )
    .await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;

    // A request on a held channel can't wait for approval: refused, not let through.
    let (mut sealer, key) = alice.sealer("orders.wire.eu", &[]);
    let pattern = entente_types::namespace::reply_pattern(&alice.principal);
    let reply_to =
        entente_types::Channel::parse(&format!("{}.r1", pattern.as_str().trim_end_matches(".>")))
            .unwrap();
    let request = sealer
        .seal_batch(&[b"pay?"], Some(&reply_to), now_ms())
        .unwrap();
    let answer = publish(&mut session, 1, vec![key.clone()], vec![request], "").await;
    let server_frame::Kind::Refusal(refused_request) = answer else {
        panic!("expected a refusal, got {answer:?}");
    };
    assert!(
        refused_request.reason.contains("can't be held"),
        "{}",
        refused_request.reason
    );

    // `orders.wire` itself is held too (the policy names it along with its namespace).
    let (mut exact, key) = alice.sealer("orders.wire", &[]);
    let batch = exact.seal_batch(&[b"pay"], None, now_ms()).unwrap();
    let answer = publish(&mut session, 2, vec![key], vec![batch], "invoice").await;
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    assert_eq!(acked.held.len(), 1);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hold_keeps_a_bounded_number_of_approvals_and_can_still_be_rejected() {
    let ca = TestCa::new();
    // Only the CFO's approval lifts it: everyone else's pile up.
    let policies = POLICIES.replace(
        "unless { context.approvals >= 2 };",
        &format!(
            r#"unless {{ context.approvers.contains("spiffe://{}/human/cfo") }};"#,
            ca.td
        ),
    );
    let hub = start(
        &ca,
        HubConfig {
            policies: sources(&policies),
            ..HubConfig::default()
        },
    )
    .await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    hold_one(&mut session, &alice, 1, b"pay").await;
    let shown = list(&hub, &human(&ca, "ops0")).await;
    for n in 1..entente_hub::MAX_STATEMENTS {
        let ops = human(&ca, &format!("ops{n}"));
        let answer = approve(&hub, &ops, statement(&ops, &shown[0], Verdict::Approve)).await;
        assert_eq!(answer.unwrap().outcome, "pending", "approval {n}");
    }
    let last = human(&ca, "ops-last");
    refused(
        approve(&hub, &last, statement(&last, &shown[0], Verdict::Approve)).await,
        Code::ResourceExhausted,
        "most approvals",
    );
    // It is still listed, and one rejection still ends it.
    assert_eq!(
        list(&hub, &last).await[0].approvals.len(),
        entente_hub::MAX_STATEMENTS - 1
    );
    let answer = approve(&hub, &last, statement(&last, &shown[0], Verdict::Reject))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "rejected");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_released_message_is_never_sent_twice_even_if_its_hub_stops_before_forgetting_it() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::new(dir.path()));
    let hub = Hub::start(held_config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let (ops1, ops2, ops3) = (human(&ca, "ops1"), human(&ca, "ops2"), human(&ca, "ops3"));
    let mut session = alice.session(&hub).await;
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.>").await, ack(1));
    let id = hold_one(&mut session, &alice, 1, b"pay once").await;
    let shown = list(&hub, &ops1).await;
    approve(&hub, &ops1, statement(&ops1, &shown[0], Verdict::Approve))
        .await
        .unwrap();

    // The release is stored, routed, and then its deletion fails (as if the hub stopped).
    store.fail_deletes.store(true, Ordering::SeqCst);
    let answer = approve(&hub, &ops2, statement(&ops2, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "released");
    assert!(matches!(
        bob_session.next_kind().await,
        server_frame::Kind::Deliver(_)
    ));
    assert_eq!(hub.stats().held_store_failures, 1);
    drop((session, bob_session));
    hub.shutdown().await.unwrap();

    // After a restart it is listed as released, and no approval routes it again.
    store.fail_deletes.store(false, Ordering::SeqCst);
    let hub = Hub::start(held_config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let all: ListHeldResponse = ops3
        .connect(&hub)
        .await
        .unary(LIST_HELD_PATH, ListHeldRequest::default())
        .await
        .unwrap();
    assert_eq!(all.held.len(), 1);
    assert_eq!(
        (all.held[0].message_id.as_str(), all.held[0].state.as_str()),
        (id.as_str(), "released")
    );
    assert!(
        all.held[0].reason.contains("not confirmed"),
        "{:?}",
        all.held[0]
    );
    refused(
        approve(&hub, &ops3, statement(&ops3, &shown[0], Verdict::Approve)).await,
        Code::FailedPrecondition,
        "released",
    );
    assert!(store.inner.held().await.unwrap().is_empty());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_approval_by_a_principal_revoked_since_no_longer_counts() {
    let ca = TestCa::new();
    let hub = start(&ca, held_config()).await;
    let alice = ca.agent("shop", "alice");
    let (ops1, ops2, ops3) = (human(&ca, "ops1"), human(&ca, "ops2"), human(&ca, "ops3"));
    let mut session = alice.session(&hub).await;
    hold_one(&mut session, &alice, 1, b"pay").await;
    let shown = list(&hub, &ops1).await;
    let answer = approve(&hub, &ops1, statement(&ops1, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "pending");

    let mut revocations = entente_ca::Revocations::new();
    revocations.revoke_principal(&ops1.principal);
    let now = std::time::SystemTime::now();
    let list_signed = ca.ca.sign_revocations(&revocations, now).unwrap();
    let verified =
        entente_ca::VerifiedRevocationList::verify(list_signed, ca.trust(), now).unwrap();
    hub.revoke(verified).await.unwrap();

    // ops1's approval no longer stands: two approvals recorded, one counts.
    let answer = approve(&hub, &ops2, statement(&ops2, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "pending");
    let answer = approve(&hub, &ops3, statement(&ops3, &shown[0], Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "released");
    hub.shutdown().await.unwrap();
}

/// A listing of held messages is recorded once, with what it showed; the `approve` decisions
/// it takes to filter (one per channel held on, for anyone who asks) are not recorded one by
/// one, so that listing in a loop can't flood the audit log with them.
#[tokio::test]
async fn a_listing_of_held_messages_is_one_record() {
    let ca = TestCa::new();
    let dir = tempfile::TempDir::new().unwrap();
    let config = audited_config(dir.path());
    let hub = start(&ca, config).await;
    let (alice, eve) = (ca.agent("shop", "alice"), ca.agent("lab", "eve"));
    let mut session = alice.session(&hub).await;
    hold_one(&mut session, &alice, 1, b"pay").await;
    for _ in 0..3 {
        assert!(list(&hub, &eve).await.is_empty());
    }
    let (records, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let by_eve: Vec<_> = records
        .iter()
        .filter(|r| r.actor == eve.principal.as_str())
        .collect();
    assert_eq!(by_eve.len(), 3, "{by_eve:?}");
    for record in by_eve {
        let entente_audit::Event::Admin(admin) = &record.event else {
            panic!("{record:?}");
        };
        assert_eq!(admin.operation.as_clear(), Some("list-held"));
        assert_eq!(admin.detail.as_clear(), Some("0 held messages shown"));
    }
    hub.shutdown().await.unwrap();
}

/// A released message's batch is recorded as any routed batch is (`delivered-batch`, by its
/// sender), after the approval that released it.
#[tokio::test]
async fn a_released_message_is_recorded_as_a_delivered_batch() {
    let ca = TestCa::new();
    let dir = tempfile::TempDir::new().unwrap();
    let config = audited_config(dir.path());
    let hub = start(&ca, config).await;
    let alice = ca.agent("shop", "alice");
    let (ops1, ops2) = (human(&ca, "ops1"), human(&ca, "ops2"));
    let mut session = alice.session(&hub).await;
    hold_one(&mut session, &alice, 1, b"pay").await;
    let shown = list(&hub, &ops1).await;
    for ops in [&ops1, &ops2] {
        approve(&hub, ops, statement(ops, &shown[0], Verdict::Approve))
            .await
            .unwrap();
    }
    let (records, _) = hub.audit_records(0, 100_000).await.unwrap().unwrap();
    let delivered: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.event {
            entente_audit::Event::DeliveredBatch(d) => Some((r.actor.as_str(), d)),
            _ => None,
        })
        .collect();
    let [(actor, batch)] = delivered.as_slice() else {
        panic!("{delivered:?}");
    };
    assert_eq!(*actor, alice.principal.as_str());
    assert_eq!(batch.channel.as_clear(), Some("orders.wire.eu"));
    assert_eq!(batch.count, 1);
    hub.shutdown().await.unwrap();
}

/// Revoking the certificate a held message was published with (a stolen one, revoked by
/// serial, its principal not revoked) rejects the message at its next decision; revoking the
/// one an approval was made with voids that approval.
#[tokio::test]
async fn revoking_the_certificate_a_hold_or_an_approval_was_made_with_voids_it() {
    let ca = TestCa::new();
    let hub = start(&ca, held_config()).await;
    let (alice, bob) = (ca.agent("shop", "alice"), ca.agent("shop", "bob"));
    let (ops1, ops2, ops3) = (human(&ca, "ops1"), human(&ca, "ops2"), human(&ca, "ops3"));
    for (who, id) in [(&alice, 1), (&bob, 2)] {
        let mut session = who.session(&hub).await;
        hold_one(&mut session, who, id, b"pay").await;
    }
    let shown = list(&hub, &ops1).await;
    let of = |who: &Agent| {
        shown
            .iter()
            .find(|h| h.sender == who.principal.as_str())
            .unwrap()
    };
    let (alices, bobs) = (of(&alice), of(&bob));
    let answer = approve(&hub, &ops1, statement(&ops1, alices, Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "pending");

    // Bob's and ops1's certificates are revoked by serial (their principals stay).
    let mut revocations = entente_ca::Revocations::new();
    revocations.revoke_serial(&bob.svid.serial).unwrap();
    revocations.revoke_serial(&ops1.svid.serial).unwrap();
    let now = std::time::SystemTime::now();
    let list_signed = ca.ca.sign_revocations(&revocations, now).unwrap();
    let verified =
        entente_ca::VerifiedRevocationList::verify(list_signed, ca.trust(), now).unwrap();
    hub.revoke(verified).await.unwrap();

    // ops1's approval no longer stands: ops2's alone does not release alice's message.
    let approved = |who: &Agent, held| statement(who, held, Verdict::Approve);
    let answer = approve(&hub, &ops2, approved(&ops2, alices)).await.unwrap();
    assert_eq!(answer.outcome, "pending");
    let answer = approve(&hub, &ops3, approved(&ops3, alices)).await.unwrap();
    assert_eq!(answer.outcome, "released");
    // Bob's message was published with the revoked certificate: its next decision rejects it.
    let answer = approve(&hub, &ops2, approved(&ops2, bobs)).await.unwrap();
    assert_eq!(answer.outcome, "rejected");
    let listed = list(&hub, &ops2).await;
    let bobs = listed
        .iter()
        .find(|h| h.sender == bob.principal.as_str())
        .unwrap();
    assert!(
        bobs.reason
            .contains("the certificate it was published with"),
        "{bobs:?}"
    );
    hub.shutdown().await.unwrap();
}

/// A quarantined sender's held message is not released, whatever the approvals; a
/// quarantined approver's approval no longer counts.
#[tokio::test]
async fn quarantine_stops_a_release_and_an_approvers_count() {
    let ca = TestCa::new();
    let root = human(&ca, "root");
    let config = HubConfig {
        admins: vec![root.principal.clone()],
        ..held_config()
    };
    let hub = start(&ca, config).await;
    let (alice, bob) = (ca.agent("shop", "alice"), ca.agent("shop", "bob"));
    let (ops1, ops2, ops3) = (human(&ca, "ops1"), human(&ca, "ops2"), human(&ca, "ops3"));
    let quarantine = |who: &Agent| {
        let (root, who) = (&root, who.principal.to_string());
        let hub = &hub;
        async move {
            let _: entente_wire::QuarantineResponse = root
                .connect(hub)
                .await
                .unary(
                    entente_hub::QUARANTINE_PATH,
                    entente_wire::QuarantineRequest {
                        impose: who,
                        release: String::new(),
                        reason: "seen scanning".into(),
                    },
                )
                .await
                .unwrap();
        }
    };

    // Bob's wire: ops1 approves, then is quarantined; ops2's approval is the one that counts.
    let mut session = bob.session(&hub).await;
    hold_one(&mut session, &bob, 1, b"pay").await;
    drop(session);
    let shown = list(&hub, &ops1).await;
    let approved = |who: &Agent| statement(who, &shown[0], Verdict::Approve);
    let answer = approve(&hub, &ops1, approved(&ops1)).await.unwrap();
    assert_eq!(answer.outcome, "pending");
    quarantine(&ops1).await;
    let answer = approve(&hub, &ops2, approved(&ops2)).await.unwrap();
    assert_eq!(answer.outcome, "pending");
    let answer = approve(&hub, &ops3, approved(&ops3)).await.unwrap();
    assert_eq!(answer.outcome, "released");

    // Alice's wire, alice quarantined since: rejected at the approval that would release it.
    let mut session = alice.session(&hub).await;
    hold_one(&mut session, &alice, 1, b"pay").await;
    drop(session);
    let shown = list(&hub, &ops2).await;
    let pending = shown.iter().find(|h| h.state == "pending").unwrap();
    let approved = |who: &Agent| statement(who, pending, Verdict::Approve);
    quarantine(&alice).await;
    let answer = approve(&hub, &ops2, approved(&ops2)).await.unwrap();
    assert_eq!(answer.outcome, "rejected");
    hub.shutdown().await.unwrap();
}
