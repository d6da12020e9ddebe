//! Bad input against a real hub on 127.0.0.1:0, one test per case, each checking the three
//! things the hub promises: the bad input is refused where it should be (at the handshake, by
//! ending that one stream with a status, or by a refusal), it is counted in the hub's stats,
//! and the hub goes on serving everyone else.
//!
//! - Refused at the handshake: no client certificate, a certificate from another CA, an
//!   expired certificate, a revoked certificate, a TLS 1.2-only client.
//! - That stream ended with a status: an unknown gRPC path, an oversized frame, a malformed
//!   frame.
//! - Refused and counted: a forged sender, a replayed batch, a subscription (or publish) no
//!   policy permits.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use entente_client::danger::danger_publish_raw;
use entente_client::{Client, ErrorKind, RefusalCode};
use entente_hub::client_tls::HubServerVerifier;
use entente_testkit::{TestCa, TestHub, WAIT, eventually, now_ms, raw, sealer};
use entente_wire::{
    Ack, ClientFrame, Publish, SenderKey, SignedBatch, Subscribe, client_frame, server_frame,
};
use tokio_stream::StreamExt;
use tonic::Code;

/// Segment `shop` may publish and subscribe under `orders.>`.
const SHOP: &str = entente_testkit::SHOP_ORDERS;

/// A hub whose policies let segment `shop` publish and subscribe under `orders.>`.
async fn shop_hub() -> TestHub {
    TestHub::builder().policies(SHOP).start().await.unwrap()
}

/// Probes the hub with `config` on its usual name; the error's text, or "accepted".
async fn probe(hub: &TestHub, config: rustls::ClientConfig) -> String {
    match raw::probe(hub.addr(), config, &hub.server_name()).await {
        Ok(()) => "accepted".to_owned(),
        Err(e) => e.to_string(),
    }
}

/// Waits until the hub has counted `n` refused handshakes.
async fn handshakes_failed(hub: &TestHub, n: u64) {
    eventually("the refused handshakes are counted", || {
        hub.stats().handshakes_failed == n
    })
    .await
    .unwrap();
}

/// Checks that the hub still serves an honest client: a newly enrolled agent connects,
/// subscribes and receives what another publishes.
async fn still_serves(hub: &TestHub) {
    let receiver = hub.enroll("shop", "honest-receiver").await.unwrap();
    let receiver = hub.connect(receiver).await.unwrap();
    let mut orders = receiver.subscribe("orders.check").await.unwrap();
    let sender = hub.enroll("shop", "honest-sender").await.unwrap();
    let sender = hub.connect(sender).await.unwrap();
    sender.publish("orders.check", "still here").await.unwrap();
    let message = tokio::time::timeout(WAIT, orders.next())
        .await
        .expect("a message in time")
        .expect("the subscription is open")
        .unwrap();
    assert_eq!(message.payload, b"still here");
}

fn publish(request_id: u64, sender_keys: Vec<SenderKey>, batches: Vec<SignedBatch>) -> Publish {
    Publish {
        request_id,
        sender_keys,
        batches,
        purpose: String::new(),
    }
}

/// Sends a publish as given over `client`'s connection; the hub's refusal code, if any.
async fn publish_raw(client: &Client, publish: Publish) -> Option<RefusalCode> {
    match danger_publish_raw(client, publish).await {
        Ok(()) => None,
        Err(e) => Some(
            e.refusal_code()
                .unwrap_or_else(|| panic!("not a refusal: {e}")),
        ),
    }
}

/// Subscribes on a raw session and returns the hub's answer.
async fn raw_subscribe(session: &mut raw::Session, id: u64, pattern: &str) -> server_frame::Kind {
    let subscribe = client_frame::Kind::Subscribe(Subscribe {
        subscription_id: id,
        pattern: pattern.into(),
        durable: String::new(),
    });
    session
        .send(ClientFrame {
            kind: Some(subscribe),
        })
        .await
        .unwrap();
    session.next().await.unwrap().unwrap().kind.unwrap()
}

fn ack(request_id: u64) -> server_frame::Kind {
    server_frame::Kind::Ack(Ack {
        request_id,
        held: Vec::new(),
    })
}

/// A raw mutual-TLS connection of a newly enrolled agent of `shop`.
async fn raw_client(hub: &TestHub, name: &str) -> raw::Client {
    let identity = hub.enroll("shop", name).await.unwrap();
    let config = raw::client_config(&identity, hub.trust()).unwrap();
    raw::Client::connect(hub.addr(), config, &hub.server_name())
        .await
        .unwrap()
}

// === refused at the handshake ===

#[tokio::test]
async fn no_client_certificate_is_refused_at_the_handshake() {
    let hub = shop_hub().await;
    // A TLS 1.3 client that trusts the hub but has no certificate, dialing the main name.
    let err = probe(&hub, raw::anonymous_config(hub.trust()).unwrap()).await;
    assert!(err.contains("CertificateRequired"), "{err}");
    handshakes_failed(&hub, 1).await;
    assert_eq!(hub.stats().connections, 0);
    still_serves(&hub).await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake() {
    let hub = shop_hub().await;
    let other = TestCa::new().unwrap(); // same trust domain, other keys
    let mallory = other
        .identity(&other.principal("shop", "alice").unwrap())
        .unwrap();
    // Mallory trusts our hub (so the client side is not what fails) but shows a foreign SVID.
    let err = probe(&hub, raw::client_config(&mallory, hub.trust()).unwrap()).await;
    assert!(
        err.contains("UnknownCA") || err.contains("BadCertificate"),
        "{err}"
    );
    handshakes_failed(&hub, 1).await;
    still_serves(&hub).await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused_at_the_handshake() {
    let hub = shop_hub().await;
    // Issued three hours ago with the default one-hour lifetime.
    let three_hours_ago = SystemTime::now() - Duration::from_secs(3 * 3600);
    let alice = hub.ca().principal("shop", "alice").unwrap();
    let old = hub.ca().identity_at(&alice, three_hours_ago).unwrap();
    assert!(old.not_after() < SystemTime::now());
    let err = probe(&hub, raw::client_config(&old, hub.trust()).unwrap()).await;
    assert!(err.contains("CertificateExpired"), "{err}");
    handshakes_failed(&hub, 1).await;
    still_serves(&hub).await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_at_the_handshake() {
    let hub = shop_hub().await;
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let connected = hub.connect(alice.clone()).await.unwrap();
    assert_eq!(hub.revoke_certificate(&alice).await.unwrap(), 1);
    eventually("the revoked connection is closed", || connected.is_closed())
        .await
        .unwrap();

    let err = probe(&hub, raw::client_config(&alice, hub.trust()).unwrap()).await;
    assert!(err.contains("CertificateRevoked"), "{err}");
    // The SDK sees the same alert.
    let e = hub.connect(alice).await.unwrap_err();
    let e = e.downcast::<entente_client::Error>().unwrap();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    handshakes_failed(&hub, 2).await;
    assert_eq!(hub.stats().revoked_disconnects, 1);

    // Revoked by serial: another certificate of the same principal still gets in.
    let renewed = hub.identity_without_enrollment("shop", "alice").unwrap();
    hub.connect(renewed).await.unwrap();
    still_serves(&hub).await;
}

#[tokio::test]
async fn a_tls12_only_client_is_refused_at_the_handshake() {
    let hub = shop_hub().await;
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let verifier = HubServerVerifier::new(hub.trust().clone()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(alice.tls_key_pkcs8().to_vec().into());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_client_auth_cert(alice.chain().to_vec(), key)
    .unwrap();
    let err = probe(&hub, config).await;
    assert!(
        err.contains("handshake") && err.contains("ProtocolVersion"),
        "{err}"
    );
    handshakes_failed(&hub, 1).await;
    // The same certificate over TLS 1.3 gets in.
    hub.connect(alice).await.unwrap();
    still_serves(&hub).await;
}

// === that stream ended with a status ===

#[tokio::test]
async fn an_unknown_grpc_path_ends_that_stream_and_the_hub_serves_on() {
    let hub = shop_hub().await;
    let client = raw_client(&hub, "alice").await;
    let err = client
        .open("/entente.v1.Hub/Nope")
        .await
        .expect_err("no such method");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    // The same connection serves its session; so does the hub everyone else.
    let mut session = client.session().await.unwrap();
    assert_eq!(raw_subscribe(&mut session, 1, "orders.eu").await, ack(1));
    still_serves(&hub).await;
}

#[tokio::test]
async fn an_oversized_frame_ends_that_stream_and_the_hub_serves_on() {
    const MAX: usize = 64 * 1024;
    let hub = TestHub::builder()
        .policies(SHOP)
        .config(|c| c.limits.max_frame_bytes = MAX)
        .start()
        .await
        .unwrap();
    let client = raw_client(&hub, "alice").await;
    let mut session = client.session().await.unwrap();
    session.send_raw(vec![0u8; MAX + 1]).await.unwrap();
    let status = session.status().await;
    assert!(
        matches!(
            status.code(),
            Code::OutOfRange | Code::InvalidArgument | Code::ResourceExhausted
        ),
        "{status:?}"
    );
    eventually("the frame is counted", || hub.stats().malformed_frames == 1)
        .await
        .unwrap();
    let mut again = client.session().await.unwrap();
    assert_eq!(raw_subscribe(&mut again, 1, "orders.eu").await, ack(1));
    still_serves(&hub).await;
}

#[tokio::test]
async fn a_malformed_frame_ends_that_stream_and_the_hub_serves_on() {
    let hub = shop_hub().await;
    let client = raw_client(&hub, "alice").await;
    let malformed: [(&str, &[u8]); 3] = [
        // Field 1, length-delimited, claiming four gigabytes.
        (
            "a length past the end",
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01],
        ),
        // Field 1 as a varint: the wrong wire type for a known field.
        ("a wrong wire type", &[0x08, 0x01]),
        // Field 9 (unknown), two bytes: decodes to a frame with no kind.
        ("no known kind", &[0x4a, 0x02, 0x01, 0x02]),
    ];
    for (what, bytes) in malformed {
        let mut session = client.session().await.unwrap();
        session.send_raw(bytes.to_vec()).await.unwrap();
        let status = session.status().await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    eventually("the frames are counted", || {
        hub.stats().malformed_frames == 3
    })
    .await
    .unwrap();
    // The same connection and the hub go on.
    let mut fine = client.session().await.unwrap();
    assert_eq!(raw_subscribe(&mut fine, 1, "orders.eu").await, ack(1));
    still_serves(&hub).await;
}

// === refused and counted ===

#[tokio::test]
async fn a_forged_sender_is_refused_and_counted() {
    let hub = shop_hub().await;
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let bob = hub.enroll("shop", "bob").await.unwrap();
    let carol = hub.connect(hub.enroll("shop", "carol").await.unwrap());
    let carol = carol.await.unwrap();
    let mut watched = carol.subscribe("orders.>").await.unwrap();

    // Mallory holds Alice's connection and relays a batch Bob signed, claiming it as Bob's.
    let (mut bobs_sealer, bobs_key) = sealer(&bob, "orders.eu").unwrap();
    let bobs_batch = bobs_sealer
        .seal_batch(&[b"pay 100"], None, now_ms())
        .unwrap();
    let alice_principal = alice.principal().clone();
    let mallory = hub.connect(alice).await.unwrap();
    assert_eq!(
        publish_raw(&mallory, publish(1, vec![], vec![bobs_batch])).await,
        Some(RefusalCode::ForgedSender)
    );
    // A sender key claiming Bob, too.
    assert_eq!(
        publish_raw(&mallory, publish(2, vec![bobs_key], vec![])).await,
        Some(RefusalCode::ForgedSender)
    );
    assert_eq!(hub.stats().forged_senders, 2);

    // Nothing reached Carol: the next thing she gets is Alice's honest message.
    mallory.publish("orders.eu", "hello").await.unwrap();
    let message = tokio::time::timeout(WAIT, watched.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (message.sender, message.payload),
        (alice_principal, b"hello".to_vec())
    );
    still_serves(&hub).await;
}

#[tokio::test]
async fn a_replayed_batch_is_refused_and_counted() {
    let hub = shop_hub().await;
    let alice = hub.enroll("shop", "alice").await.unwrap();
    let (mut sealer, _) = sealer(&alice, "orders.eu").unwrap();
    let batch = sealer.seal_batch(&[b"once"], None, now_ms()).unwrap();

    let first = hub.connect(alice.clone()).await.unwrap();
    assert_eq!(
        publish_raw(&first, publish(1, vec![], vec![batch.clone()])).await,
        None
    );
    assert_eq!(
        publish_raw(&first, publish(2, vec![], vec![batch.clone()])).await,
        Some(RefusalCode::Replay)
    );
    // From a second connection of the same agent as well.
    let second = hub.connect(alice).await.unwrap();
    assert_eq!(
        publish_raw(&second, publish(3, vec![], vec![batch])).await,
        Some(RefusalCode::Replay)
    );
    assert_eq!(hub.stats().replays, 2);
    still_serves(&hub).await;
}

#[tokio::test]
async fn a_subscription_no_policy_permits_is_refused_and_counted() {
    let hub = shop_hub().await;
    let shop = hub.connect(hub.enroll("shop", "alice").await.unwrap());
    let shop = shop.await.unwrap();
    for pattern in ["payroll.>", ">"] {
        let e = shop.subscribe(pattern).await.unwrap_err();
        assert_eq!(
            e.refusal_code(),
            Some(RefusalCode::Denied),
            "{pattern}: {e}"
        );
    }
    // Cross-segment: the shop policy does not reach the lab segment.
    let lab = hub.connect(hub.enroll("lab", "eve").await.unwrap());
    let lab = lab.await.unwrap();
    let e = lab.subscribe("orders.eu").await.unwrap_err();
    assert_eq!(e.refusal_code(), Some(RefusalCode::Denied), "{e}");
    // Publishing where no policy permits it is refused too.
    let e = lab.publish_to("orders.eu", "x", &[]).await.unwrap_err();
    assert_eq!(e.refusal_code(), Some(RefusalCode::Denied), "{e}");
    assert_eq!(hub.stats().denials, 4);
    assert_eq!(hub.stats().policy_denials, 4);

    // Both sessions go on.
    shop.subscribe("orders.eu").await.unwrap();
    lab.subscribe("_direct.lab.eve").await.unwrap();
    still_serves(&hub).await;
}
