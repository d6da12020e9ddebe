//! Clients whose session is framed (PROTOCOL.md §9.1, the SDK's default) against a real hub
//! on 127.0.0.1:0: they exchange sealed messages and requests with HTTP/2 clients, make their calls on an
//! HTTP/2 connection opened when one is needed (and again after the hub closed it idle), are
//! refused at connect with the hub's reason, refuse a server that does not serve framed
//! sessions, and close both connections when they close.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use entente_ca::CaOptions;
use entente_client::{Client, ClientOptions, ErrorKind, SessionTransport};
use entente_testkit::TestCa;
use entente_types::Principal;
use rustls_pki_types::PrivateKeyDer;
use support::{TestHub, WAIT, message, next, options};
use tokio_stream::StreamExt;

fn framed() -> ClientOptions {
    options().session_transport(SessionTransport::Framed)
}

fn http2() -> ClientOptions {
    options().session_transport(SessionTransport::Http2)
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    entente_testkit::eventually(what, check).await.unwrap();
}

#[tokio::test]
async fn framed_and_http2_clients_exchange_messages_and_requests() {
    let hub = TestHub::start().await;
    let (alice, bob, carol) = (
        hub.agent("shop", "alice").await,
        hub.agent("shop", "bob").await,
        hub.agent("shop", "carol").await,
    );
    let alice_id = alice.principal.clone();
    let alice = hub.connect_with(alice.identity, framed()).await;
    // A framed client that has made no call holds one connection.
    assert_eq!(hub.hub.connections(), 1);
    let mut orders = alice.subscribe("orders.*").await.unwrap();
    let bob = hub.connect_with(bob.identity, http2()).await;
    let carol = hub.connect_with(carol.identity, framed()).await;

    // Bob (HTTP/2) and Carol (framed) publish; the recipients come from the directory, which
    // Carol asks over an HTTP/2 connection of her own, and Alice verifies both senders'
    // bundles from it too.
    bob.publish("orders.eu", "from bob").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"from bob");
    carol.publish("orders.us", "from carol").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"from carol");
    // Alice and Carol each hold a session connection and a calls connection; Bob one.
    assert_eq!(hub.hub.connections(), 5);

    // Request/reply between a framed server and an HTTP/2 requester, and back.
    let mut requests = alice.serve_direct().await.unwrap();
    let serving = tokio::spawn(async move {
        for _ in 0..2 {
            let request = tokio::time::timeout(WAIT, requests.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let answer = format!("re: {}", String::from_utf8_lossy(&request.message.payload));
            request.responder.reply(answer).await.unwrap();
        }
    });
    let reply = bob.request(&alice_id, "one", WAIT).await.unwrap();
    assert_eq!(reply.payload, b"re: one");
    let reply = carol.request(&alice_id, "two", WAIT).await.unwrap();
    assert_eq!(reply.payload, b"re: two");
    serving.await.unwrap();

    // A denied subscription and a denied publish are refusals, and the session goes on.
    let e = carol.subscribe("payments.>").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    let e = carol.publish("payments.eu", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    carol.publish("orders.eu", "still here").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"still here");

    // Closing closes both of a framed client's connections.
    carol.close().await;
    eventually("carol's connections are gone", || {
        hub.hub.connections() == 3
    })
    .await;
    assert!(carol.is_closed());
    let e = carol.subscribe("orders.eu").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert_eq!(hub.hub.stats().malformed_frames, 0);
}

#[tokio::test]
async fn the_calls_connection_is_opened_again_after_the_hub_closed_it_idle() {
    let hub = TestHub::start_with(CaOptions::default(), |c| {
        // Long enough that a connection just opened is not cut before its first request.
        c.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let alice = hub.agent("shop", "alice").await;
    // Every publish asks the directory for the channel's members.
    let options = framed().directory_ttl(Duration::ZERO);
    let alice = hub.connect_with(alice.identity, options).await;
    // Connections whose handshake completed so far (enrollment's, the session's).
    let opened = hub.hub.stats().connections;
    let mut orders = alice.subscribe("orders.eu").await.unwrap();
    alice.publish("orders.eu", "first").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"first");
    assert_eq!(hub.hub.stats().connections, opened + 1);
    // The calls connection goes idle and the hub closes it; the framed session stays.
    eventually("the idle calls connection is closed", || {
        hub.hub.connections() == 1
    })
    .await;
    assert!(hub.hub.stats().idle_disconnects >= 1);
    assert!(!alice.is_closed());
    // The next call opens a new one.
    alice.publish("orders.eu", "after idle").await.unwrap();
    assert_eq!(message(&mut orders).await.payload, b"after idle");
    assert_eq!(hub.hub.stats().connections, opened + 2);
}

#[tokio::test]
async fn a_framed_client_is_refused_at_connect_with_the_hubs_reason() {
    let hub = TestHub::start_with(CaOptions::default(), |c| {
        c.max_connections_per_agent = 1;
    })
    .await;
    let alice = hub.agent("shop", "alice").await;
    let alice_id = alice.principal.clone();
    let first = hub.connect_with(alice.identity.clone(), framed()).await;
    let mut orders = first.subscribe("orders.eu").await.unwrap();

    // Over the per-agent limit: the SessionEnd's reason is the connect's error.
    let e = Client::connect(alice.identity.clone(), hub.hub.local_addr(), framed())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Limited, "{e}");
    assert!(e.to_string().contains("RESOURCE_EXHAUSTED"), "{e}");
    assert!(e.to_string().contains("already has 1 connection"), "{e}");

    // Revoked: the live session ends saying why, and connecting again is refused at the
    // handshake with the TLS alert.
    assert_eq!(hub.revoke(&alice_id).await, 1);
    let e = match next(&mut orders).await {
        Some(Err(e)) => e,
        other => panic!("expected the session's end, got {other:?}"),
    };
    assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
    assert!(e.to_string().contains("PERMISSION_DENIED"), "{e}");
    assert!(first.is_closed());
    let e = Client::connect(alice.identity, hub.hub.local_addr(), framed())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
}

#[tokio::test]
async fn a_framed_client_refuses_a_hub_that_does_not_serve_framed_sessions() {
    use tokio::io::AsyncReadExt as _;

    // A server with a certificate for the hub's own ID, so the client trusts it, that chooses
    // no application protocol (as a hub serving HTTP/2 to clients without ALPN would).
    let ca = TestCa::new().unwrap();
    let hub_id = entente_hub::hub_id(ca.trust_domain()).unwrap();
    let hub_identity = ca.identity(&Principal::from(hub_id)).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            hub_identity.chain().to_vec(),
            PrivateKeyDer::Pkcs8(hub_identity.tls_key_pkcs8().to_vec().into()),
        )
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = tokio_rustls::TlsAcceptor::from(Arc::new(server))
            .accept(tcp)
            .await
            .expect("the handshake completes");
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        // The client leaves on its own, having sent nothing.
        let mut sent = Vec::new();
        let _ = tls.read_to_end(&mut sent).await;
        assert!(sent.is_empty(), "the client sent {} bytes", sent.len());
    });

    let alice = ca
        .identity(&ca.principal("shop", "alice").unwrap())
        .unwrap();
    let e = Client::connect(alice, addr, framed()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(
        e.to_string()
            .contains("does not serve framed sessions: connect over HTTP/2"),
        "{e}"
    );
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}
