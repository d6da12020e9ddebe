//! Sessions through a real hub on 127.0.0.1:0: sealed pub/sub, own namespaces, backpressure,
//! live revocation and shutdown. Bad frames, forged senders, replays and the policies'
//! refusals are in `entente-testkit`'s `tests/bad_input.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::time::Duration;

use entente_ca::{Revocations, VerifiedRevocationList};
use entente_hub::{HubConfig, RefusalCode};
use entente_wire::{Unsubscribe, client_frame, server_frame};
use support::{
    SessionExt, TestCa, ack, config, eventually, frame, now_ms, open_delivery, probe, refusal,
    start,
};
use tonic::Code;

#[tokio::test]
async fn two_agents_exchange_a_sealed_message_through_the_hub() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");

    let mut alice_session = alice.session(&hub).await;
    assert_eq!(alice_session.subscribe(1, "orders.*").await, ack(1));

    let mut bob_session = bob.session(&hub).await;
    let (mut sealer, sender_key) = bob.sealer("orders.eu", &[&alice.bundle]);
    let batch = sealer
        .seal_batch(&[b"two espressos", b"one croissant"], None, now_ms())
        .unwrap();
    assert_eq!(
        bob_session.publish(10, vec![sender_key], vec![batch]).await,
        ack(10)
    );

    let kind = alice_session.next_kind().await;
    match &kind {
        server_frame::Kind::Deliver(d) => assert_eq!(d.subscription_id, 1),
        other => panic!("expected a delivery, got {other:?}"),
    }
    let payloads = open_delivery(&alice, &bob, kind);
    assert_eq!(
        payloads,
        [b"two espressos".to_vec(), b"one croissant".to_vec()]
    );

    // Alice unsubscribes; the next publish reaches nobody and is still acknowledged.
    alice_session
        .send(frame(client_frame::Kind::Unsubscribe(Unsubscribe {
            subscription_id: 1,
        })))
        .await
        .unwrap();
    assert_eq!(alice_session.next_kind().await, ack(1));
    let batch = sealer.seal_batch(&[b"more"], None, now_ms()).unwrap();
    assert_eq!(bob_session.publish(11, vec![], vec![batch]).await, ack(11));

    let stats = hub.stats();
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.delivery_failures, 0);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_the_owner_may_subscribe_to_its_reply_and_direct_namespaces() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let mut alice = ca.agent("shop", "alice").session(&hub).await;
    assert_eq!(
        refusal(alice.subscribe(1, "_reply.shop.bob.>").await),
        (1, RefusalCode::Denied)
    );
    assert_eq!(
        refusal(alice.subscribe(2, "_direct.shop.bob").await),
        (2, RefusalCode::Denied)
    );
    assert_eq!(
        refusal(alice.subscribe(3, "_reply.>").await),
        (3, RefusalCode::Denied)
    );
    assert_eq!(alice.subscribe(4, "_reply.shop.alice.>").await, ack(4));
    assert_eq!(alice.subscribe(5, "_direct.shop.alice").await, ack(5));
    assert_eq!(hub.stats().denials, 3);
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_the_publisher_gets_delivery_failed() {
    slow_consumer(HubConfig {
        queue_capacity: 2,
        slow_consumer_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
}

/// The same with a queue bounded in bytes only: 1024 frames would hold 256 MiB of these
/// batches, the byte bound holds one.
#[tokio::test]
async fn a_queue_bounded_in_bytes_disconnects_a_slow_consumer_as_one_bounded_in_frames() {
    slow_consumer(HubConfig {
        queue_capacity: 1024,
        queue_bytes: 64 * 1024,
        slow_consumer_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
}

async fn slow_consumer(config: HubConfig) {
    let ca = TestCa::new();
    let hub = start(&ca, config).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");

    // Alice subscribes, then never reads: HTTP/2 windows and her queue fill up.
    let mut slow = alice.session(&hub).await;
    assert_eq!(slow.subscribe(1, "orders.eu").await, ack(1));
    // A healthy subscriber keeps receiving throughout.
    let mut healthy = ca.agent("shop", "carol").session(&hub).await;
    assert_eq!(healthy.subscribe(1, "orders.eu").await, ack(1));

    let mut publisher = bob.session(&hub).await;
    let (mut sealer, _) = bob.sealer("orders.eu", &[]);
    let payload = vec![7u8; 256 * 1024];
    let mut failure = None;
    for id in 0..400 {
        let batch = sealer.seal_batch(&[&payload], None, now_ms()).unwrap();
        let answer = publisher.publish(id, vec![], vec![batch]).await;
        assert!(matches!(
            healthy.next_kind().await,
            server_frame::Kind::Deliver(_)
        ));
        match answer {
            server_frame::Kind::Ack(_) => {}
            server_frame::Kind::Refusal(r) => {
                failure = Some(r);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let failure = failure.expect("the publisher was told about the failed delivery");
    assert_eq!(
        RefusalCode::from_u32(failure.code),
        Some(RefusalCode::DeliveryFailed)
    );
    assert!(failure.reason.contains("1 of 2"), "{}", failure.reason);
    assert_eq!(hub.stats().slow_consumer_disconnects, 1);
    assert!(hub.stats().delivery_failures >= 1);

    // The slow consumer's connection is closed: reading on, it finds the end, not silence.
    let status = slow.status().await;
    assert_ne!(status.code(), Code::Ok);
    eventually("the slow connection is gone", || hub.connections() == 2).await;

    // The publisher and the healthy subscriber carry on.
    let batch = sealer.seal_batch(&[b"after"], None, now_ms()).unwrap();
    assert!(matches!(
        publisher.publish(1000, vec![], vec![batch]).await,
        server_frame::Kind::Ack(_)
    ));
    assert!(matches!(
        healthy.next_kind().await,
        server_frame::Kind::Deliver(_)
    ));
}

#[tokio::test]
async fn revocation_closes_live_connections_and_refuses_reconnects() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let mut alice_session = alice.session(&hub).await;
    assert_eq!(alice_session.subscribe(1, "orders.eu").await, ack(1));
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(bob_session.subscribe(1, "orders.eu").await, ack(1));

    // Revoke Alice by principal.
    let mut revocations = Revocations::new();
    revocations.revoke_principal(&alice.principal);
    let now = std::time::SystemTime::now();
    let list = ca.ca.sign_revocations(&revocations, now).unwrap();
    let list = VerifiedRevocationList::verify(list, ca.trust(), now).unwrap();
    assert_eq!(hub.revoke(list.clone()).await.unwrap(), 1);

    let status = alice_session.status().await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    eventually("alice's connection is gone", || hub.connections() == 1).await;
    assert_eq!(hub.stats().revoked_disconnects, 1);

    // Reconnecting with the same certificate is refused at the handshake.
    let name = format!("hub.{}", support::TD);
    let err = probe(hub.local_addr(), alice.client_config(ca.trust()), &name)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateRevoked"), "{err}");

    // A stale list is refused; a newer one revoking Bob's certificate by serial closes him too.
    assert!(hub.revoke(list).await.is_err());
    revocations.revoke_serial(&bob.svid.serial).unwrap();
    let list = ca.ca.sign_revocations(&revocations, now).unwrap();
    let list = VerifiedRevocationList::verify(list, ca.trust(), now).unwrap();
    assert_eq!(hub.revoke(list).await.unwrap(), 1);
    assert_eq!(bob_session.status().await.code(), Code::PermissionDenied);
    assert_eq!(hub.stats().revoked_disconnects, 2);
}

#[tokio::test]
async fn shutdown_ends_sessions_with_unavailable() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let mut session = ca.agent("shop", "alice").session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));
    let addr = hub.local_addr();
    hub.shutdown().await.unwrap();
    assert_eq!(session.status().await.code(), Code::Unavailable);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
