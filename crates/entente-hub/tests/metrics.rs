//! The Prometheus metrics endpoint of a real hub on 127.0.0.1:0, scraped over HTTP: traffic by
//! channel class, decisions, limit hits, connections, queue depths, the publish latency
//! histogram, key and certificate ages; no principal or channel name in it; other paths `404`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::time::Duration;

use entente_hub::Rate;
use entente_testkit::TestHub;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const POLICIES: &str = entente_testkit::SHOP_ORDERS;

/// `GET path` with HTTP/1.1: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample line `name` (with its labels) in `page`.
fn value(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{name}` in:\n{page}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_endpoint_counts_traffic_decisions_and_limits_and_names_nobody() {
    let hub = TestHub::builder()
        .policies(POLICIES)
        .config(|c| {
            c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
            c.rate_limits.agent_messages = Some(Rate {
                per_second: 1,
                burst: 5,
            });
        })
        .start()
        .await
        .unwrap();
    let addr = hub.hub().metrics_addr().expect("metrics on");
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let mut orders = bob.subscribe("orders.>").await.unwrap();
    // Five at once, and one more a second: publishing until refused (a loaded machine may
    // take more than a second over the first five).
    let mut sent = 0u32;
    let limited = loop {
        match alice.publish("orders.eu", format!("order {sent}")).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 50, "never limited");
    };
    assert!(sent >= 5, "{sent}");
    assert!(limited.retry_after().is_some(), "{limited}");
    for _ in 0..sent {
        orders.next().await.unwrap().unwrap();
    }
    let denied = alice.subscribe("payroll.>").await.unwrap_err();
    assert_eq!(denied.kind(), entente_client::ErrorKind::Denied);

    let (status, page) = get(addr, "/metrics").await;
    assert!(status.ends_with("200 OK"), "{status}");
    // Each client's framed session, and the connection it made its directory lookups on.
    assert_eq!(value(&page, "entente_connections"), 4.0);
    assert!(value(&page, "entente_subscriptions") >= 1.0);
    let sent = f64::from(sent);
    assert_eq!(
        value(&page, "entente_messages_total{class=\"pubsub\"}"),
        sent
    );
    assert!(value(&page, "entente_bytes_total{class=\"pubsub\"}") >= sent * 16.0);
    assert_eq!(value(&page, "entente_messages_total{class=\"reply\"}"), 0.0);
    assert_eq!(
        value(&page, "entente_limit_hits_total{limit=\"agent-messages\"}"),
        1.0
    );
    assert!(value(&page, "entente_decisions_total{result=\"allow\"}") >= 1.0);
    assert!(value(&page, "entente_decisions_total{result=\"deny\"}") >= 1.0);
    // Every publish answered, the refused one among them.
    assert_eq!(value(&page, "entente_publish_seconds_count"), sent + 1.0);
    assert_eq!(
        value(&page, "entente_publish_seconds_bucket{le=\"+Inf\"}"),
        sent + 1.0
    );
    assert!(value(&page, "entente_queued_frames") >= 0.0);
    assert!(value(&page, "entente_hub_certificate_expiry_seconds") > 0.0);
    assert!(
        value(
            &page,
            "entente_intermediate_ca_expiry_seconds{role=\"active\"}"
        ) > 0.0
    );
    // Counts only: no principal, no channel.
    for secret in ["alice", "bob", "orders", "spiffe://"] {
        assert!(!page.contains(secret), "`{secret}` in:\n{page}");
    }
    // The handle renders the same page.
    assert!(
        hub.hub()
            .metrics()
            .contains("entente_publish_seconds_bucket")
    );

    let (status, _) = get(addr, "/secrets").await;
    assert!(status.ends_with("404 Not Found"), "{status}");
    // Garbage gets an answer or a close, and the endpoint keeps serving.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0xff; 4096]).await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut sink)).await;
    let (status, _) = get(addr, "/metrics").await;
    assert!(status.ends_with("200 OK"), "{status}");
}

#[tokio::test]
async fn without_an_address_there_is_no_endpoint() {
    let hub = TestHub::start().await.unwrap();
    assert_eq!(hub.hub().metrics_addr(), None);
    assert!(hub.hub().metrics().contains("entente_connections 0"));
}
