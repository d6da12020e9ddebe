//! Messages held for approval through the SDK, against a real hub on 127.0.0.1:0
//! (`entente-testkit`): a publish with a purpose on a high-stakes channel is held, approvers
//! see it sealed and approve it with statements bound to its envelope's hash, and the
//! subscriber reads it once the second approval releases it; the sender never approves its
//! own; a rejection means it is never delivered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use entente_client::{ApprovalOutcome, ErrorKind};
use entente_testkit::TestHub;
use tokio_stream::StreamExt as _;

/// Segment `shop` uses `orders.>`; wires (`orders.wire.>`) wait for two approvals by humans.
const POLICIES: &str = r#"
    @id("shop-orders")
    @cross_segment
    permit (principal in Segment::"shop", action in [Action::"publish", Action::"subscribe"],
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

#[tokio::test]
async fn a_held_message_is_delivered_after_two_approvals_and_never_after_a_rejection() {
    let hub = TestHub::builder().policies(POLICIES).start().await.unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let (ops1, ops2) = (
        hub.connect_human("ops1").await.unwrap(),
        hub.connect_human("ops2").await.unwrap(),
    );
    let mut wires = bob.subscribe("orders.>").await.unwrap();

    // A channel that holds nothing routes at once.
    assert_eq!(
        alice
            .publish_with_purpose("orders.eu", "an order", "restock")
            .await
            .unwrap(),
        None
    );
    let first = wires.next().await.unwrap().unwrap();
    assert_eq!(first.payload, b"an order");

    let held = alice
        .publish_with_purpose("orders.wire.eu", "pay 10k to ACME", "invoice 42")
        .await
        .unwrap()
        .expect("held for approval");
    assert_eq!(held.channel, "orders.wire.eu");
    let empty = alice
        .publish_with_purpose("orders.wire.eu", "x", " ")
        .await
        .unwrap_err();
    assert_eq!(empty.kind(), ErrorKind::InvalidInput, "{empty}");

    // The approvers see it, sealed, with its purpose.
    let shown = ops1.held().await.unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].purpose, "invoice 42");
    assert_eq!(shown[0].sender, alice.principal().to_string());

    let own = alice.approve(&held.message_id).await.unwrap_err();
    assert_eq!(own.kind(), ErrorKind::Denied, "{own}");
    assert_eq!(
        ops1.approve(&held.message_id).await.unwrap(),
        ApprovalOutcome::Pending {
            approvals: 1,
            required: 0
        }
    );
    assert_eq!(
        ops2.approve(&held.message_id).await.unwrap(),
        ApprovalOutcome::Released { approvals: 2 }
    );
    let released = tokio::time::timeout(Duration::from_secs(10), wires.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(released.payload, b"pay 10k to ACME");
    assert_eq!(released.channel.as_str(), "orders.wire.eu");

    // Rejected: never delivered; bob's next message is the later order.
    let held = alice
        .publish_with_purpose("orders.wire.eu", "pay 1M", "urgent")
        .await
        .unwrap()
        .expect("held");
    assert_eq!(
        ops1.reject(&held.message_id).await.unwrap(),
        ApprovalOutcome::Rejected
    );
    let late = ops2.approve(&held.message_id).await.unwrap_err();
    assert_eq!(late.kind(), ErrorKind::Refused, "{late}");
    let state = alice.held().await.unwrap();
    let rejected = state
        .iter()
        .find(|h| h.message_id == held.message_id)
        .unwrap();
    assert_eq!(rejected.state, "rejected");
    alice.publish("orders.eu", "next order").await.unwrap();
    let next = wires.next().await.unwrap().unwrap();
    assert_eq!(next.payload, b"next order");
}

#[tokio::test]
async fn an_approver_refuses_a_held_message_its_sender_did_not_sign() {
    use entente_crypto::{Sealer, SealerOptions};
    use entente_testkit::raw;
    use entente_wire::{ClientFrame, Publish, client_frame, server_frame};

    let hub = TestHub::builder().policies(POLICIES).start().await.unwrap();
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let ops1 = hub.connect_human("ops1").await.unwrap();

    // Alice's connection sends a batch whose signature does not cover its envelope: the hub
    // cannot tell (it holds no keys), approvers can.
    let config = raw::client_config(&alice, hub.trust()).unwrap();
    let raw = raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap();
    let mut session = raw.session().await.unwrap();
    let now = entente_testkit::now_ms();
    let (mut sealer, key) = Sealer::new(
        alice.principal().clone(),
        alice.key_bundle().epoch(),
        alice.message_keys().clone(),
        entente_types::Channel::parse("orders.wire.eu").unwrap(),
        std::slice::from_ref(alice.key_bundle()),
        SealerOptions::default(),
        now,
    )
    .unwrap();
    let mut batch = sealer.seal_batch(&[b"pay mallory"], None, now).unwrap();
    batch.signature[0] ^= 1;
    session
        .send(ClientFrame {
            kind: Some(client_frame::Kind::Publish(Publish {
                request_id: 1,
                sender_keys: vec![key],
                batches: vec![batch],
                purpose: "looks routine".into(),
            })),
        })
        .await
        .unwrap();
    let answer = session.next().await.unwrap().unwrap().kind.unwrap();
    let server_frame::Kind::Ack(acked) = answer else {
        panic!("expected an ack, got {answer:?}");
    };
    let id = &acked.held[0].message_id;

    let refused = ops1.approve(id).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Crypto, "{refused}");
    assert!(refused.to_string().contains("does not verify"), "{refused}");
    // Rejecting it needs no signature check.
    assert_eq!(ops1.reject(id).await.unwrap(), ApprovalOutcome::Rejected);
}

/// An envelope shown naming a channel of its own (only a reply in a batch of replies does,
/// and replies are never held) is refused, not hashed as if on another channel.
#[test]
fn a_held_envelope_naming_its_own_channel_is_refused() {
    let id = entente_client::MessageId::from_parts(1_800_000_000_000, [7; 10]);
    let envelope = entente_wire::Envelope {
        epoch: 1,
        seq: 0,
        message_id: (*id.as_bytes()).into(),
        issued_at_ms: 1_800_000_000_000,
        expires_at_ms: 1_800_000_060_000,
        reply_to: Default::default(),
        ciphertext: vec![9; 32],
        channel: Default::default(),
    };
    let held = |envelope: entente_wire::Envelope| entente_client::HeldMessage {
        message_id: id.to_string(),
        sender: "spiffe://example.org/agent/shop/alice".to_owned(),
        channel: "orders.wire".to_owned(),
        batch: Some(entente_wire::SignedBatch {
            sender: "spiffe://example.org/agent/shop/alice".to_owned(),
            channel: "orders.wire".to_owned(),
            key_epoch: 1,
            envelopes: vec![envelope],
            signature: vec![0; 64],
        }),
        ..entente_client::HeldMessage::default()
    };
    entente_client::held_hash(&held(envelope.clone())).unwrap();
    let renamed = entente_wire::Envelope {
        channel: "orders.wire.x".into(),
        ..envelope
    };
    let err = entente_client::held_hash(&held(renamed)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}
