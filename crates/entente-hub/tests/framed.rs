//! Framed sessions (PROTOCOL.md §9.1) through a real hub on 127.0.0.1:0: the same session as
//! over HTTP/2, length-prefixed frames over mutual TLS, a `SessionEnd` frame saying why the hub
//! ended it, bad frames refused and counted, and the connection gone when the client closes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use bytes::BytesMut;
use entente_ca::{Revocations, VerifiedRevocationList};
use entente_hub::HubConfig;
use entente_hub::framed::encode_frame;
use entente_wire::{Limits, Subscribe, Unsubscribe, client_frame};
use support::{
    Framed, SessionExt, TestCa, ack, config, eventually, frame, now_ms, open_delivery, refusal,
    start,
};
use tonic::Code;

fn code(end: &entente_wire::SessionEnd) -> Code {
    Code::from(i32::try_from(end.code).unwrap())
}

/// The test configuration with outbound queues nothing here fills.
fn roomy() -> HubConfig {
    HubConfig {
        queue_capacity: 1 << 16,
        queue_bytes: 1 << 30,
        ..config()
    }
}

/// `from` publishes one sealed message of 1 MiB on `orders.eu` to `to` for each request ID
/// of `ids`, over `framed`, reading nothing.
async fn publish_megabytes(
    framed: &mut Framed,
    from: &support::Agent,
    to: &[&entente_crypto::VerifiedKeyBundle],
    ids: std::ops::Range<u64>,
) {
    let (mut sealer, key) = from.sealer("orders.eu", to);
    let payload = vec![7u8; 1 << 20];
    let mut keys = vec![key];
    for request_id in ids {
        let batch = sealer.seal_batch(&[&payload], None, now_ms()).unwrap();
        let publish = entente_wire::Publish {
            request_id,
            sender_keys: std::mem::take(&mut keys),
            batches: vec![batch],
            purpose: String::new(),
        };
        framed
            .send(&frame(client_frame::Kind::Publish(publish)))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn framed_and_http2_sessions_exchange_sealed_messages() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let mut alice_framed = alice.framed(&hub).await;
    assert_eq!(alice_framed.subscribe(1, "orders.*").await, ack(1));
    // The same rules as over HTTP/2: someone else's namespace is refused.
    let (id, code) = refusal(alice_framed.subscribe(2, "_direct.shop.bob").await);
    assert_eq!((id, code), (2, entente_hub::RefusalCode::Denied));

    // Bob publishes over HTTP/2; Alice's framed session gets it, and opens it.
    let mut bob_session = bob.session(&hub).await;
    let (mut sealer, sender_key) = bob.sealer("orders.eu", &[&alice.bundle]);
    let batch = sealer
        .seal_batch(&[b"two espressos", b"one croissant"], None, now_ms())
        .unwrap();
    assert_eq!(
        bob_session.publish(10, vec![sender_key], vec![batch]).await,
        ack(10)
    );
    let kind = alice_framed.next_kind().await;
    assert_eq!(
        open_delivery(&alice, &bob, kind),
        [b"two espressos".to_vec(), b"one croissant".to_vec()]
    );

    // Alice publishes over her framed session; Bob gets it over HTTP/2, and Alice her own
    // (her acknowledgement and her delivery may come in either order).
    assert_eq!(bob_session.subscribe(1, "orders.eu").await, ack(1));
    let (mut sealer, sender_key) = alice.sealer("orders.eu", &[&bob.bundle, &alice.bundle]);
    let batch = sealer.seal_batch(&[b"one tea"], None, now_ms()).unwrap();
    alice_framed
        .send(&frame(client_frame::Kind::Publish(entente_wire::Publish {
            request_id: 20,
            sender_keys: vec![sender_key],
            batches: vec![batch],
            purpose: String::new(),
        })))
        .await
        .unwrap();
    let kind = bob_session.next_kind().await;
    assert_eq!(open_delivery(&bob, &alice, kind), [b"one tea".to_vec()]);
    let (first, second) = (
        alice_framed.next_kind().await,
        alice_framed.next_kind().await,
    );
    let (acked, delivered) = if first == ack(20) {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(acked, ack(20));
    assert_eq!(
        open_delivery(&alice, &alice, delivered),
        [b"one tea".to_vec()]
    );

    alice_framed
        .send(&frame(client_frame::Kind::Unsubscribe(Unsubscribe {
            subscription_id: 1,
        })))
        .await
        .unwrap();
    assert_eq!(alice_framed.next_kind().await, ack(1));
    assert_eq!(hub.stats().connections, 2);
    hub.shutdown().await.unwrap();
}

/// A peer that stops reading, then closes its side, holds its connection no longer than the
/// slow-consumer timeout: its session is over, and no publish is left to find it slow.
#[tokio::test]
async fn a_session_whose_peer_reads_nothing_more_is_let_go_once_over() {
    let ca = TestCa::new();
    let hub = start(
        &ca,
        HubConfig {
            // Never full: only the bound on what is left to write lets the connection go.
            slow_consumer_timeout: std::time::Duration::from_secs(1),
            ..roomy()
        },
    )
    .await;
    let alice = ca.agent("shop", "alice");
    let mut framed = alice.framed(&hub).await;
    assert_eq!(framed.subscribe(1, "orders.eu").await, ack(1));
    // Alice publishes to herself far more than the sockets between her and the hub hold
    // (32 MiB), and reads none of it.
    publish_megabytes(&mut framed, &alice, &[&alice.bundle], 10..42).await;
    framed.close_write().await.unwrap();
    eventually("the connection is let go", || hub.connections() == 0).await;
    hub.shutdown().await.unwrap();
}

/// At shutdown what was queued for a session goes before its `SessionEnd`, within the close
/// grace: deliveries whose publisher was told they were delivered are not dropped with the
/// queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_queued_goes_before_the_session_end_at_shutdown() {
    const MESSAGES: u64 = 32;
    let ca = TestCa::new();
    let hub = start(&ca, roomy()).await;
    let (alice, bob) = (ca.agent("shop", "alice"), ca.agent("shop", "bob"));
    let mut bob_framed = bob.framed(&hub).await;
    assert_eq!(bob_framed.subscribe(1, "orders.eu").await, ack(1));
    // More than the sockets between the hub and bob hold (1 MiB each), bob reading none yet.
    let mut alice_framed = alice.framed(&hub).await;
    let to = [&alice.bundle, &bob.bundle];
    publish_megabytes(&mut alice_framed, &alice, &to, 10..10 + MESSAGES).await;
    for request_id in 10..10 + MESSAGES {
        assert_eq!(
            alice_framed.next().await.unwrap().unwrap().kind,
            Some(ack(request_id))
        );
    }
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    let mut delivered = 0;
    let end = loop {
        let frame = bob_framed.next().await.unwrap();
        match frame.and_then(|f| f.kind) {
            Some(entente_wire::server_frame::Kind::Deliver(_)) => delivered += 1,
            Some(entente_wire::server_frame::Kind::SessionEnd(end)) => break end,
            Some(_) => {}
            None => panic!("closed without a SessionEnd after {delivered} deliveries"),
        }
    };
    assert_eq!(code(&end), Code::Unavailable, "{end:?}");
    assert_eq!(delivered, MESSAGES);
    shutdown.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_framed_session_ends_with_the_reason_when_revoked_or_at_shutdown() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let mut alice_framed = alice.framed(&hub).await;
    assert_eq!(alice_framed.subscribe(1, "orders.eu").await, ack(1));
    let mut bob_framed = bob.framed(&hub).await;
    assert_eq!(bob_framed.subscribe(1, "orders.eu").await, ack(1));

    let mut revocations = Revocations::new();
    revocations.revoke_principal(&alice.principal);
    let now = std::time::SystemTime::now();
    let list = ca.ca.sign_revocations(&revocations, now).unwrap();
    let list = VerifiedRevocationList::verify(list, ca.trust(), now).unwrap();
    assert_eq!(hub.revoke(list).await.unwrap(), 1);
    let end = alice_framed.end().await.unwrap();
    assert_eq!(code(&end), Code::PermissionDenied, "{end:?}");
    assert_eq!(end.message, "credential revoked");
    eventually("alice's connection is gone", || hub.connections() == 1).await;
    assert_eq!(hub.stats().revoked_disconnects, 1);

    hub.shutdown().await.unwrap();
    let end = bob_framed.end().await.unwrap();
    assert_eq!(code(&end), Code::Unavailable, "{end:?}");
}

#[tokio::test]
async fn bad_frames_end_a_framed_session_counted_and_the_hub_serves_on() {
    const MAX: usize = 64 * 1024;
    let ca = TestCa::new();
    let hub = start(
        &ca,
        HubConfig {
            limits: Limits {
                max_frame_bytes: MAX,
                ..Limits::default()
            },
            ..config()
        },
    )
    .await;
    let alice = ca.agent("shop", "alice");

    // A length over the limit: refused from the prefix, before anything is read.
    let mut framed = alice.framed(&hub).await;
    let over = u32::try_from(MAX + 1).unwrap().to_be_bytes();
    framed.send_raw(&over).await.unwrap();
    assert_eq!(code(&framed.end().await.unwrap()), Code::OutOfRange);

    // A frame that does not decode, and a frame with no known kind.
    let malformed: [&[u8]; 2] = [
        &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
        &[0x4a, 0x02, 0x01, 0x02],
    ];
    for bytes in malformed {
        let mut framed = alice.framed(&hub).await;
        let mut raw = u32::try_from(bytes.len()).unwrap().to_be_bytes().to_vec();
        raw.extend_from_slice(bytes);
        framed.send_raw(&raw).await.unwrap();
        let end = framed.end().await.unwrap();
        assert_eq!(code(&end), Code::InvalidArgument, "{bytes:?}: {end:?}");
    }
    eventually("the frames are counted", || {
        hub.stats().malformed_frames == 3
    })
    .await;
    eventually("their connections are gone", || hub.connections() == 0).await;

    let mut framed = alice.framed(&hub).await;
    assert_eq!(framed.subscribe(1, "orders.eu").await, ack(1));
}

#[tokio::test]
async fn frames_that_arrive_together_are_each_answered_in_order() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let mut framed = ca.agent("shop", "alice").framed(&hub).await;
    // Four subscriptions in one write, the second refused: the session finds each frame
    // after the first already there when it has handled the one before.
    let mut raw = BytesMut::new();
    for (id, pattern) in [
        (1, "orders.eu"),
        (2, "_direct.shop.bob"),
        (3, "orders.us"),
        (4, "orders.*"),
    ] {
        let subscribe = client_frame::Kind::Subscribe(Subscribe {
            subscription_id: id,
            pattern: pattern.into(),
            durable: String::new(),
        });
        encode_frame(&frame(subscribe), &mut raw);
    }
    // Then a frame that does not decode: it ends the session once those are answered.
    raw.extend_from_slice(&[0, 0, 0, 7, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
    framed.send_raw(&raw).await.unwrap();
    assert_eq!(framed.next_kind().await, ack(1));
    assert_eq!(
        refusal(framed.next_kind().await),
        (2, entente_hub::RefusalCode::Denied)
    );
    assert_eq!(framed.next_kind().await, ack(3));
    assert_eq!(framed.next_kind().await, ack(4));
    assert_eq!(code(&framed.end().await.unwrap()), Code::InvalidArgument);
    assert_eq!(hub.stats().malformed_frames, 1);
}

#[tokio::test]
async fn closing_the_connection_ends_the_framed_session() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let mut framed = ca.agent("shop", "alice").framed(&hub).await;
    assert_eq!(framed.subscribe(1, "orders.eu").await, ack(1));
    assert_eq!(hub.connections(), 1);
    framed.close().await.unwrap();
    eventually("the connection is gone", || hub.connections() == 0).await;
    assert_eq!(hub.stats().malformed_frames, 0);
}

#[tokio::test]
async fn a_client_offering_both_protocols_gets_http2() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let mut config = alice.client_config(hub.trust_bundle());
    config.alpn_protocols = vec![entente_hub::framed::ALPN.to_vec(), b"h2".to_vec()];
    let name = entente_hub::hub_server_name(hub.trust_bundle().trust_domain());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(
            rustls_pki_types::ServerName::try_from(name).unwrap(),
            tokio::net::TcpStream::connect(hub.local_addr())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The enrollment name serves HTTP/2 only.
    assert!(
        Framed::connect(
            hub.local_addr(),
            entente_hub::client_tls::enroll_client_config(hub.trust_bundle()).unwrap(),
            &entente_hub::enroll_server_name(hub.trust_bundle().trust_domain()),
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_framed_connection_over_a_limit_is_told_why_and_closed() {
    let ca = TestCa::new();
    let hub = start(
        &ca,
        HubConfig {
            max_connections_per_agent: 1,
            ..config()
        },
    )
    .await;
    let alice = ca.agent("shop", "alice");
    let mut first = alice.framed(&hub).await;
    assert_eq!(first.subscribe(1, "orders.eu").await, ack(1));
    // Refused: a SessionEnd in place of the empty frame that accepts a session.
    let mut second = alice.framed_unchecked(&hub).await;
    let frame = second.next().await.unwrap().unwrap();
    let Some(entente_wire::server_frame::Kind::SessionEnd(end)) = frame.kind else {
        panic!("expected a SessionEnd first, got {frame:?}");
    };
    assert!(second.next().await.unwrap().is_none());
    assert_eq!(code(&end), Code::ResourceExhausted, "{end:?}");
    assert!(end.message.contains("already has 1 connection"), "{end:?}");
    assert_eq!(hub.stats().connection_limit_hits, 1);
    // The first session is untouched.
    assert_eq!(first.subscribe(2, "orders.us").await, ack(2));
}
