//! OpenTelemetry export (optional, [`OtlpExport`]): the hub pushes its metrics — the very
//! families the Prometheus endpoint shows ([`crate::metrics`]) — to a collector with OTLP/HTTP
//! (protobuf, `POST <endpoint>/v1/metrics`), every [`OtlpExport::interval`] and once more when
//! it stops.
//!
//! Counters go as cumulative monotonic sums (named without Prometheus' `_total`), gauges as
//! gauges, the publish latency as an explicit-bucket histogram; units are `s` and `By` where
//! the name ends so, none otherwise. The resource is `service.name = "entente-hub"`,
//! `service.version`, and `service.instance.id` (the hub's SPIFFE ID `@` its listening
//! address). As on the endpoint, no principal, channel or reason is ever an attribute.
//!
//! The last export is made when [`HubHandle::shutdown`](crate::HubHandle::shutdown) has closed
//! the connections, and waited for at most [`TIMEOUT`]; an export under way when the hub
//! stops is abandoned for it.
//!
//! The messages are the OpenTelemetry project's own (`opentelemetry-proto`), encoded with
//! prost; the transport is the hub's HTTP client ([`crate::post`]). Each export carries every
//! total since the hub started, so a failed one is not retried: the next carries what it would
//! have. Failures are counted (`entente_otlp_exports_total{result="failed"}`) and logged once
//! per run of failures, with the collector's address shown as scheme, host and port only; the
//! configured headers (an API key, say) are never logged or shown.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;
use tokio::sync::oneshot;

use crate::HubError;
use crate::metrics::{Family, Label, Points};
use crate::post::Endpoint;
use crate::stats::{self, Stats};

/// The shortest interval between exports.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The interval between exports unless configured.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Most headers an export may carry.
pub const MAX_HEADERS: usize = 16;
/// The longest an export may take, connection and answer included.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
/// The OTLP/HTTP path of metrics.
const METRICS_PATH: &str = "/v1/metrics";

/// Where and how the hub pushes its metrics with OTLP/HTTP.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpExport {
    /// The collector's OTLP/HTTP address: a base such as `http://127.0.0.1:4318` (metrics go
    /// to `/v1/metrics` under it), or a full URL ending in `/v1/metrics`. `https://` needs
    /// [`roots_pem`](Self::roots_pem).
    pub endpoint: String,
    /// For `https`: the PEM certificates the collector's certificate must chain to.
    pub roots_pem: Option<Vec<u8>>,
    /// Headers sent with every export, e.g. `("authorization", "Bearer …")`; at most
    /// [`MAX_HEADERS`]. Never logged or shown.
    pub headers: Vec<(String, String)>,
    /// How often to export; at least [`MIN_INTERVAL`]. Default [`DEFAULT_INTERVAL`].
    pub interval: Duration,
}

impl OtlpExport {
    /// An export to `endpoint` every [`DEFAULT_INTERVAL`], no headers, no roots.
    pub fn to(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            roots_pem: None,
            headers: Vec::new(),
            interval: DEFAULT_INTERVAL,
        }
    }
}

impl fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("OtlpExport")
            .field("endpoint", &crate::post::redacted(&self.endpoint))
            .field("roots_pem", &self.roots_pem.as_ref().map(Vec::len))
            .field("headers", &names)
            .field("interval", &self.interval)
            .finish()
    }
}

/// A checked [`OtlpExport`], ready to run.
pub(crate) struct Exporter {
    endpoint: Endpoint,
    headers: Vec<(String, String)>,
    interval: Duration,
    resource: Resource,
    /// When the hub started, in Unix nanoseconds: the start of every cumulative point.
    started_ns: u64,
    stats: Arc<Stats>,
}

// === impl Exporter ===

impl Exporter {
    /// Checks `config` (its address, certificates, headers and interval) for a hub known as
    /// `instance`.
    pub(crate) fn new(
        config: &OtlpExport,
        instance: &str,
        stats: Arc<Stats>,
    ) -> Result<Self, HubError> {
        let url = if config
            .endpoint
            .trim_end_matches('/')
            .ends_with(METRICS_PATH)
        {
            config.endpoint.clone()
        } else {
            format!("{}{METRICS_PATH}", config.endpoint.trim_end_matches('/'))
        };
        let endpoint = Endpoint::parse(
            &url,
            config.roots_pem.as_deref(),
            "the OpenTelemetry collector",
        )
        .map_err(HubError::Otlp)?;
        if config.interval < MIN_INTERVAL {
            return Err(HubError::Otlp(format!(
                "the OpenTelemetry export interval must be at least {} ms",
                MIN_INTERVAL.as_millis()
            )));
        }
        if !config.headers.is_empty() && endpoint.in_clear_off_host() {
            // Headers carry credentials (API keys): never in clear across a network.
            return Err(HubError::Otlp(format!(
                "the OpenTelemetry collector `{}` is plain http on another host, and the export's \
                 headers (credentials) would cross the network in clear: use https with the \
                 collector's certificates, or a collector on this host",
                endpoint.shown()
            )));
        }
        if config.headers.len() > MAX_HEADERS {
            return Err(HubError::Otlp(format!(
                "at most {MAX_HEADERS} headers go with an OpenTelemetry export"
            )));
        }
        for (i, (name, value)) in config.headers.iter().enumerate() {
            let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && http::HeaderValue::from_str(value).is_ok();
            if !valid {
                // A mistyped entry may carry its secret in the name: say where it is only.
                return Err(HubError::Otlp(format!(
                    "OpenTelemetry export header {} of {} is not a valid HTTP header (its name or value)",
                    i + 1,
                    config.headers.len()
                )));
            }
        }
        Ok(Self {
            endpoint,
            headers: config.headers.clone(),
            interval: config.interval,
            resource: Resource {
                attributes: vec![
                    text("service.name", "entente-hub"),
                    text("service.version", env!("CARGO_PKG_VERSION")),
                    text("service.instance.id", instance),
                ],
                ..Resource::default()
            },
            started_ns: unix_ns(SystemTime::now()),
            stats,
        })
    }

    /// Exports what `scrape` reads every interval until `stop` is sent (or dropped), then
    /// once more. An export under way when `stop` comes is abandoned for the last one.
    pub(crate) async fn run<F>(self, scrape: F, mut stop: oneshot::Receiver<()>)
    where
        F: Fn() -> Vec<Family> + Send + Sync + 'static,
    {
        let mut failing = false;
        loop {
            let stopped = tokio::select! {
                () = tokio::time::sleep(self.interval) => {
                    let families = scrape();
                    if families.is_empty() {
                        // The hub is gone.
                        return;
                    }
                    tokio::select! {
                        () = self.export(&families, &mut failing) => false,
                        _ = &mut stop => true,
                    }
                }
                _ = &mut stop => true,
            };
            if stopped {
                let families = scrape();
                if !families.is_empty() {
                    self.export(&families, &mut failing).await;
                }
                return;
            }
        }
    }

    /// Sends one export; counts and (once per run of failures) logs how it went.
    async fn export(&self, families: &[Family], failing: &mut bool) {
        let body = Bytes::from(
            request(
                families,
                &self.resource,
                self.started_ns,
                unix_ns(SystemTime::now()),
            )
            .encode_to_vec(),
        );
        let sent = tokio::time::timeout(
            TIMEOUT,
            self.endpoint
                .post(body, "application/x-protobuf", &self.headers),
        )
        .await;
        let outcome = match sent {
            Ok(Ok(answer)) => Ok(rejected(&answer)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {} s", TIMEOUT.as_secs())),
        };
        match outcome {
            Ok(rejected) => {
                stats::bump(&self.stats.otlp_exports);
                if *failing {
                    *failing = false;
                    tracing::info!(collector = %self.endpoint.shown(), "OpenTelemetry export works again");
                }
                if let Some(why) = rejected {
                    tracing::warn!(collector = %self.endpoint.shown(), %why, "the OpenTelemetry collector rejected part of an export");
                }
            }
            Err(error) => {
                stats::bump(&self.stats.otlp_failures);
                if !*failing {
                    *failing = true;
                    tracing::warn!(
                        collector = %self.endpoint.shown(),
                        %error,
                        "OpenTelemetry export failed; counting further failures until one succeeds"
                    );
                }
            }
        }
    }
}

/// What the collector's answer says it rejected, if anything (an answer that does not decode
/// says nothing: the export was accepted).
fn rejected(answer: &[u8]) -> Option<String> {
    let response = ExportMetricsServiceResponse::decode(answer).ok()?;
    let partial = response.partial_success?;
    (partial.rejected_data_points > 0 || !partial.error_message.is_empty()).then(|| {
        let message: String = partial.error_message.chars().take(200).collect();
        format!(
            "{} data points rejected: {message}",
            partial.rejected_data_points
        )
    })
}

/// `families` as one OTLP export request, cumulative from `started_ns`, read at `now_ns`.
pub(crate) fn request(
    families: &[Family],
    resource: &Resource,
    started_ns: u64,
    now_ns: u64,
) -> ExportMetricsServiceRequest {
    let number = |label: &Option<Label>, value| NumberDataPoint {
        attributes: label.iter().map(|(key, value)| text(key, value)).collect(),
        start_time_unix_nano: started_ns,
        time_unix_nano: now_ns,
        value: Some(value),
        ..NumberDataPoint::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let metrics = families
        .iter()
        .map(|family| {
            let data = match &family.points {
                Points::Counter(points) => metric::Data::Sum(Sum {
                    data_points: points
                        .iter()
                        .map(|(label, n)| {
                            let n = i64::try_from(*n).unwrap_or(i64::MAX);
                            number(label, number_data_point::Value::AsInt(n))
                        })
                        .collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Points::Gauge(points) => metric::Data::Gauge(Gauge {
                    data_points: points
                        .iter()
                        .map(|(label, value)| {
                            number(label, number_data_point::Value::AsDouble(*value))
                        })
                        .collect(),
                }),
                Points::Histogram(h) => metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        start_time_unix_nano: started_ns,
                        time_unix_nano: now_ns,
                        count: h.count,
                        sum: Some(h.sum),
                        bucket_counts: h.counts.clone(),
                        explicit_bounds: h.bounds.to_vec(),
                        ..HistogramDataPoint::default()
                    }],
                    aggregation_temporality: cumulative,
                }),
            };
            Metric {
                name: family
                    .name
                    .strip_suffix("_total")
                    .unwrap_or(family.name)
                    .to_owned(),
                description: family.help.to_owned(),
                unit: unit(family.name).to_owned(),
                data: Some(data),
                ..Metric::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "entente-hub".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// The UCUM unit of a metric, from its name: seconds and bytes where the name ends so, and
/// none otherwise (a count; `1` would make collectors call it a ratio).
fn unit(name: &str) -> &'static str {
    let name = name.strip_suffix("_total").unwrap_or(name);
    if name.ends_with("_seconds") {
        "s"
    } else if name.ends_with("_bytes") {
        "By"
    } else {
        ""
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

    use super::*;
    use crate::metrics::HistogramPoint;

    #[test]
    fn families_become_cumulative_sums_gauges_and_histograms() {
        let families = vec![
            Family {
                name: "entente_messages_total",
                help: "Envelopes routed, by channel class.",
                points: Points::Counter(vec![(Some(("class", "pubsub".to_owned())), 7)]),
            },
            Family {
                name: "entente_connections",
                help: "Live mutual-TLS connections.",
                points: Points::Gauge(vec![(None, 3.0)]),
            },
            Family {
                name: "entente_publish_seconds",
                help: "Time from a publish's arrival to its answer.",
                points: Points::Histogram(HistogramPoint {
                    bounds: &[0.001, 0.01],
                    counts: vec![1, 2, 3],
                    sum: 0.5,
                    count: 6,
                }),
            },
        ];
        let resource = Resource {
            attributes: vec![text("service.name", "entente-hub")],
            ..Resource::default()
        };
        let request = request(&families, &resource, 100, 200);
        // It survives the wire.
        let request = ExportMetricsServiceRequest::decode(&*request.encode_to_vec()).unwrap();
        let scope = &request.resource_metrics[0].scope_metrics[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "entente-hub");
        let [messages, connections, latency] = &scope.metrics[..] else {
            panic!("{:?}", scope.metrics);
        };
        assert_eq!(
            (messages.name.as_str(), messages.unit.as_str()),
            ("entente_messages", "")
        );
        assert_eq!(unit("entente_bytes_total"), "By");
        assert_eq!(unit("entente_queued_bytes_max"), "");
        assert_eq!(unit("entente_data_key_age_seconds"), "s");
        let Some(metric::Data::Sum(sum)) = &messages.data else {
            panic!("{messages:?}");
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &sum.data_points[0];
        assert_eq!(
            (point.start_time_unix_nano, point.time_unix_nano),
            (100, 200)
        );
        assert_eq!(point.value, Some(number_data_point::Value::AsInt(7)));
        assert_eq!(point.attributes, vec![text("class", "pubsub")]);
        let Some(metric::Data::Gauge(gauge)) = &connections.data else {
            panic!("{connections:?}");
        };
        assert_eq!(
            gauge.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
        assert_eq!(latency.unit, "s");
        let Some(metric::Data::Histogram(h)) = &latency.data else {
            panic!("{latency:?}");
        };
        let point = &h.data_points[0];
        assert_eq!(point.bucket_counts, vec![1, 2, 3]);
        assert_eq!(point.explicit_bounds, vec![0.001, 0.01]);
        assert_eq!((point.count, point.sum), (6, Some(0.5)));
    }

    #[test]
    fn a_bad_export_is_refused_when_the_hub_starts_without_showing_secrets() {
        let stats = Arc::new(Stats::default());
        let check = |config: OtlpExport| {
            Exporter::new(&config, "hub", stats.clone())
                .err()
                .map(|e| e.to_string())
        };
        let ok = OtlpExport::to("http://127.0.0.1:4318");
        assert_eq!(check(ok.clone()), None);
        let exporter = Exporter::new(&ok, "hub", stats.clone()).unwrap();
        assert_eq!(exporter.endpoint.shown(), "http://127.0.0.1:4318/…");
        let full = OtlpExport::to("http://127.0.0.1:4318/v1/metrics");
        assert!(Exporter::new(&full, "hub", stats.clone()).is_ok());

        let e = check(OtlpExport::to("ftp://collector/SECRET")).unwrap();
        assert!(
            e.contains("http:// or https://") && !e.contains("SECRET"),
            "{e}"
        );
        let e = check(OtlpExport::to("https://collector:4318")).unwrap();
        assert!(e.contains("certificates"), "{e}");
        let e = check(OtlpExport {
            interval: Duration::from_millis(10),
            ..ok.clone()
        })
        .unwrap();
        assert!(e.contains("at least 100 ms"), "{e}");
        let e = check(OtlpExport {
            headers: vec![
                ("x-tenant".into(), "acme".into()),
                ("authorization".into(), "Bearer SECRET\n".into()),
            ],
            ..ok.clone()
        })
        .unwrap();
        assert!(e.contains("header 2 of 2") && !e.contains("SECRET"), "{e}");
        // A mistyped entry's secret in the name is not shown either.
        let e = check(OtlpExport {
            headers: vec![("x-api-key:SECRET".into(), String::new())],
            ..ok.clone()
        })
        .unwrap();
        assert!(e.contains("header 1 of 1") && !e.contains("SECRET"), "{e}");
        let e = check(OtlpExport {
            headers: vec![("x".into(), "y".into()); MAX_HEADERS + 1],
            ..ok.clone()
        })
        .unwrap();
        assert!(e.contains("at most 16 headers"), "{e}");
        // Headers (credentials) never cross a network in clear: plain http is for this host.
        let secret: Vec<(String, String)> = vec![("authorization".into(), "Bearer SECRET".into())];
        let e = check(OtlpExport {
            headers: secret.clone(),
            ..OtlpExport::to("http://collector.example:4318/SECRET")
        })
        .unwrap();
        assert!(e.contains("in clear") && !e.contains("SECRET"), "{e}");
        for local in [
            "http://localhost:4318",
            "http://[::1]:4318",
            "http://127.0.0.2:4318",
        ] {
            let local = OtlpExport {
                headers: secret.clone(),
                ..OtlpExport::to(local)
            };
            assert_eq!(check(local), None);
        }
        // Without headers, plain http to another host is the operator's choice.
        assert_eq!(check(OtlpExport::to("http://collector.example:4318")), None);

        let shown = format!(
            "{:?}",
            OtlpExport {
                headers: vec![("authorization".into(), "Bearer SECRET".into())],
                ..OtlpExport::to("https://collector/SECRET")
            }
        );
        assert!(
            !shown.contains("SECRET") && shown.contains("authorization"),
            "{shown}"
        );
    }

    #[test]
    fn a_collectors_partial_rejection_is_read_and_anything_else_is_not() {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsPartialSuccess;
        let answer = ExportMetricsServiceResponse {
            partial_success: Some(ExportMetricsPartialSuccess {
                rejected_data_points: 2,
                error_message: "bad".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(rejected(&answer).unwrap(), "2 data points rejected: bad");
        assert_eq!(
            rejected(&ExportMetricsServiceResponse::default().encode_to_vec()),
            None
        );
        assert_eq!(rejected(b"{}"), None);
        assert_eq!(rejected(&[0xff; 10]), None);
    }
}
