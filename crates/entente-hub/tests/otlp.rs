//! The OpenTelemetry export of a real hub on 127.0.0.1:0 (docs/THREAT_MODEL.md, observability):
//! a collector on loopback receives OTLP/HTTP protobuf exports of the hub's metrics — the
//! same counts the Prometheus endpoint shows — with the configured header; an export the
//! collector refuses is counted, and the next one carries every total.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use entente_hub::OtlpExport;
use entente_testkit::{TestHub, WAIT, eventually};
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;
use tokio::sync::mpsc;

/// One export as the collector received it.
struct Received {
    path: String,
    content_type: String,
    authorization: String,
    request: ExportMetricsServiceRequest,
}

/// A collector on 127.0.0.1 speaking OTLP/HTTP: it answers its first export 503 if
/// `refuse_first`, and every other 200 with an empty `ExportMetricsServiceResponse`, handing
/// each accepted export over. Returns its address and the exports.
async fn collector(refuse_first: bool) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let served = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tx, served) = (tx.clone(), served.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let (tx, served) = (tx.clone(), served.clone());
                        async move {
                            let header = |name| {
                                request
                                    .headers()
                                    .get(name)
                                    .map(|v| v.to_str().unwrap().to_owned())
                                    .unwrap_or_default()
                            };
                            let (content_type, authorization) =
                                (header("content-type"), header("authorization"));
                            let path = request.uri().path().to_owned();
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let first = served.fetch_add(1, Ordering::Relaxed) == 0;
                            let (status, answer) = if first && refuse_first {
                                (503, Vec::new())
                            } else {
                                let request = ExportMetricsServiceRequest::decode(body).unwrap();
                                let _ = tx.send(Received {
                                    path,
                                    content_type,
                                    authorization,
                                    request,
                                });
                                (200, ExportMetricsServiceResponse::default().encode_to_vec())
                            };
                            let response = http::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), rx)
}

/// The cumulative sum `name` with attribute `key`=`value` in `export`, if there.
fn sum(export: &ExportMetricsServiceRequest, name: &str, key: &str, value: &str) -> Option<i64> {
    let metrics = &export.resource_metrics[0].scope_metrics[0].metrics;
    let Some(metric::Data::Sum(sum)) = &metrics.iter().find(|m| m.name == name)?.data else {
        panic!("`{name}` is not a sum");
    };
    assert!(sum.is_monotonic);
    sum.data_points.iter().find_map(|p| {
        let matches = p.attributes.iter().any(|a| {
            a.key == key
                && matches!(
                    a.value.as_ref().and_then(|v| v.value.as_ref()),
                    Some(any_value::Value::StringValue(v)) if v == value
                )
        });
        match p.value {
            Some(number_data_point::Value::AsInt(n)) if matches => Some(n),
            _ => None,
        }
    })
}

/// A hub exporting with `otlp`, where `count` messages have gone from one agent to another.
async fn hub_with_traffic(otlp: OtlpExport, count: usize) -> TestHub {
    let hub = TestHub::builder()
        .policies(entente_testkit::SHOP_ORDERS)
        .config(|c| c.otlp = Some(otlp))
        .start()
        .await
        .unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let bob = hub.connect_agent("shop", "bob").await.unwrap();
    let mut orders = bob.subscribe("orders.>").await.unwrap();
    for i in 0..count {
        alice
            .publish("orders.eu", format!("order {i}"))
            .await
            .unwrap();
    }
    for _ in 0..count {
        orders.next().await.unwrap().unwrap();
    }
    hub
}

#[tokio::test]
async fn the_hub_pushes_its_metrics_to_a_collector_and_counts_a_refused_export() {
    let (endpoint, mut exports) = collector(true).await;
    let otlp = OtlpExport {
        headers: vec![("authorization".to_owned(), "Bearer t0ken".to_owned())],
        interval: Duration::from_millis(200),
        ..OtlpExport::to(endpoint)
    };
    let hub = hub_with_traffic(otlp, 25).await;

    // Exports come until one shows the 25 messages; the first was refused and counted.
    let deadline = tokio::time::Instant::now() + WAIT;
    let last = loop {
        let received = tokio::time::timeout_at(deadline, exports.recv())
            .await
            .expect("an export showing the messages")
            .unwrap();
        if sum(&received.request, "entente_messages", "class", "pubsub") == Some(25) {
            break received;
        }
    };
    assert_eq!(last.path, "/v1/metrics");
    assert_eq!(last.content_type, "application/x-protobuf");
    assert_eq!(last.authorization, "Bearer t0ken");
    let resource = last.request.resource_metrics[0].resource.as_ref().unwrap();
    let attribute = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| match &a.value.as_ref()?.value {
                Some(any_value::Value::StringValue(v)) => Some(v.clone()),
                _ => None,
            })
    };
    assert_eq!(attribute("service.name").as_deref(), Some("entente-hub"));
    assert!(
        attribute("service.instance.id")
            .unwrap()
            .starts_with("spiffe://")
    );
    assert_eq!(
        sum(&last.request, "entente_decisions", "result", "allow").map(|n| n > 0),
        Some(true)
    );
    let metrics = &last.request.resource_metrics[0].scope_metrics[0].metrics;
    let latency = metrics
        .iter()
        .find(|m| m.name == "entente_publish_seconds")
        .unwrap();
    let Some(metric::Data::Histogram(h)) = &latency.data else {
        panic!("{latency:?}");
    };
    assert!(h.data_points[0].count >= 25);
    assert_eq!(latency.unit, "s");
    // No principal or channel anywhere in an export.
    let text = format!("{:?}", last.request);
    assert!(
        !text.contains("alice") && !text.contains("orders.eu"),
        "{text}"
    );

    // The collector hands an export over before the hub reads its answer.
    eventually("the accepted exports counted", || {
        hub.stats().otlp_exports >= 2
    })
    .await
    .unwrap();
    assert_eq!(hub.stats().otlp_failures, 1);
    let page = hub.hub().metrics();
    assert!(
        page.contains("entente_otlp_exports_total{result=\"failed\"} 1\n"),
        "{page}"
    );
}

#[tokio::test]
async fn a_stopping_hub_exports_once_more() {
    let (endpoint, mut exports) = collector(false).await;
    // No export comes on time during the test: only the last one.
    let otlp = OtlpExport {
        interval: Duration::from_secs(3600),
        ..OtlpExport::to(format!("{endpoint}/v1/metrics"))
    };
    let hub = hub_with_traffic(otlp, 3).await;
    assert!(exports.try_recv().is_err());
    hub.shutdown().await.unwrap();
    let last = exports
        .try_recv()
        .expect("the last export, made before shutdown returned");
    assert_eq!(last.path, "/v1/metrics");
    assert_eq!(
        sum(&last.request, "entente_messages", "class", "pubsub"),
        Some(3)
    );
}
