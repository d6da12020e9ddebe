//! The Prometheus metrics endpoint (`HubConfig::metrics_listen`): `GET /metrics` over plain
//! HTTP/1.1, in the text exposition format 0.0.4.
//!
//! What it shows is counts, gauges and latencies, never a principal, a channel name, a key or a
//! reason: traffic is counted by channel class (`pubsub`, `request`, `reply`, `direct`), limit
//! hits by limit, decisions by result. Keep it on loopback (the default address) or behind a
//! scraper that authenticates: the counters tell how busy the hub is.

use std::convert::Infallible;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::limits::Limit;

/// Scrapes served at once; more wait for their turn in the accept queue.
const MAX_SCRAPERS: usize = 16;
/// Time a scraper has to send its request's head, and to finish its connection.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel classes traffic is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Publish/subscribe.
    PubSub = 0,
    /// Requests (envelopes with a `reply_to`).
    Request = 1,
    /// Replies, on `_reply` channels.
    Reply = 2,
    /// Direct messages, on `_direct` channels.
    Direct = 3,
}

impl Class {
    pub(crate) const ALL: [Class; 4] = [Class::PubSub, Class::Request, Class::Reply, Class::Direct];

    fn name(self) -> &'static str {
        match self {
            Self::PubSub => "pubsub",
            Self::Request => "request",
            Self::Reply => "reply",
            Self::Direct => "direct",
        }
    }
}

/// Every limit counted, in a fixed order.
const LIMITS: [&str; 11] = [
    "agent-messages",
    "agent-bytes",
    "channel-messages",
    "agent-subscriptions",
    "agent-calls",
    "anomaly-throttle",
    "policy-rate",
    "connections",
    "connections-per-agent",
    "unauthenticated",
    "unauthenticated-per-source",
];

/// The upper bounds of the latency histograms' buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets: lock-free, cumulative only when rendered.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative), and one past the last bound.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        if let Some(b) = self.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The histogram as it is now. Its count is its buckets' sum, so that the two agree
    /// even while observations are being made.
    pub(crate) fn read(&self) -> HistogramPoint {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramPoint {
            bounds: &BUCKETS,
            count: counts.iter().sum(),
            counts,
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// Traffic counters by class, limit hits by limit, and the latency of publishes.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    messages: [AtomicU64; 4],
    bytes: [AtomicU64; 4],
    limit_hits: [AtomicU64; LIMITS.len()],
    /// From a publish frame's arrival to its answer queued (routed, recorded, stored).
    pub(crate) publish: Histogram,
}

impl Traffic {
    /// Counts `messages` envelopes of `bytes` bytes of ciphertext routed in `class`.
    pub(crate) fn routed(&self, class: Class, messages: u64, bytes: u64) {
        if let Some(m) = self.messages.get(class as usize) {
            m.fetch_add(messages, Ordering::Relaxed);
        }
        if let Some(b) = self.bytes.get(class as usize) {
            b.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Counts a hit of the limit named `limit` (`Limit::as_str`, or a connection limit's).
    pub(crate) fn limit_hit(&self, limit: &str) {
        if let Some(i) = LIMITS.iter().position(|l| *l == limit)
            && let Some(c) = self.limit_hits.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a rate limit's hit.
    pub(crate) fn rate_limited(&self, limit: Limit) {
        self.limit_hit(limit.as_str());
    }
}

/// What the endpoint shows besides the counters: values read when scraped.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Live mutual-TLS connections.
    pub(crate) connections: usize,
    /// Connections not yet authenticated (in their TLS handshake, or enrolling).
    pub(crate) unauthenticated: usize,
    /// Subscriptions in the router.
    pub(crate) subscriptions: usize,
    /// Frames and bytes waiting in the outbound queues of subscribed sessions: in all, and the
    /// fullest queue's.
    pub(crate) queued_frames: (usize, usize),
    pub(crate) queued_bytes: (usize, usize),
    /// The hub's counters.
    pub(crate) stats: crate::HubStats,
    /// Seconds since the current data key was made, if there is one.
    pub(crate) data_key_age: Option<f64>,
    /// Seconds until each intermediate CA expires, by role.
    pub(crate) intermediates: Vec<(String, f64)>,
    /// Seconds until the hub's own certificate expires.
    pub(crate) hub_certificate_expiry: Option<f64>,
}

/// A label: its name and value.
pub(crate) type Label = (&'static str, String);

/// One metric and its points: what both the endpoint (Prometheus text) and the OTLP export
/// ([`crate::otlp`]) show.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Family {
    /// Its name, as the endpoint gives it (`entente_…`, counters ending in `_total`).
    pub(crate) name: &'static str,
    /// What it counts or measures.
    pub(crate) help: &'static str,
    /// Its points.
    pub(crate) points: Points,
}

/// The points of a [`Family`], by kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Points {
    /// Counts since the hub started, each with at most one label.
    Counter(Vec<(Option<Label>, u64)>),
    /// Values read now, each with at most one label.
    Gauge(Vec<(Option<Label>, f64)>),
    /// A latency histogram.
    Histogram(HistogramPoint),
}

/// A histogram read now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramPoint {
    /// The buckets' upper bounds, in seconds.
    pub(crate) bounds: &'static [f64],
    /// Observations per bucket (not cumulative), one more than `bounds`: the last is above
    /// every bound.
    pub(crate) counts: Vec<u64>,
    /// The sum of the observations, in seconds.
    pub(crate) sum: f64,
    /// How many observations.
    pub(crate) count: u64,
}

/// Every metric of `snapshot` and `traffic`, in the endpoint's order.
pub(crate) fn families(snapshot: &Snapshot, traffic: &Traffic) -> Vec<Family> {
    let s = &snapshot.stats;
    let mut out = Vec::with_capacity(32);
    let mut counter = |name, help, points: Vec<(Option<Label>, u64)>| {
        out.push(Family {
            name,
            help,
            points: Points::Counter(points),
        });
    };
    let one = |n: u64| vec![(None, n)];
    let by = |key: &'static str, points: &[(&str, u64)]| -> Vec<(Option<Label>, u64)> {
        points
            .iter()
            .map(|(value, n)| (Some((key, (*value).to_owned())), *n))
            .collect()
    };
    let load =
        |counters: &[AtomicU64], i: usize| counters.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
    let by_class = |counters: &[AtomicU64]| -> Vec<(Option<Label>, u64)> {
        Class::ALL
            .into_iter()
            .map(|class| {
                (
                    Some(("class", class.name().to_owned())),
                    load(counters, class as usize),
                )
            })
            .collect()
    };
    counter(
        "entente_connections_opened_total",
        "Mutual-TLS connections served since start.",
        one(s.connections),
    );
    counter(
        "entente_handshakes_failed_total",
        "TLS handshakes refused or failed.",
        one(s.handshakes_failed),
    );
    counter(
        "entente_messages_total",
        "Envelopes routed, by channel class.",
        by_class(&traffic.messages),
    );
    counter(
        "entente_bytes_total",
        "Ciphertext bytes routed, by channel class.",
        by_class(&traffic.bytes),
    );
    counter(
        "entente_decisions_total",
        "Policy decisions, by result.",
        by(
            "result",
            &[("allow", s.policy_allows), ("deny", s.policy_denials)],
        ),
    );
    counter(
        "entente_denials_total",
        "Requests refused by authorization (policies, structural rules, reply grants).",
        one(s.denials),
    );
    counter(
        "entente_limit_hits_total",
        "Refusals by a limit, by limit.",
        LIMITS
            .iter()
            .enumerate()
            .map(|(i, limit)| {
                (
                    Some(("limit", (*limit).to_owned())),
                    load(&traffic.limit_hits, i),
                )
            })
            .collect(),
    );
    counter(
        "entente_refusals_total",
        "Frames and publishes refused as hostile or broken, by reason.",
        by(
            "reason",
            &[
                ("malformed", s.malformed_frames),
                ("forged-sender", s.forged_senders),
                ("replay", s.replays),
            ],
        ),
    );
    counter(
        "entente_disconnects_total",
        "Connections the hub closed, by reason.",
        by(
            "reason",
            &[
                ("slow-consumer", s.slow_consumer_disconnects),
                ("revoked", s.revoked_disconnects),
                ("expired", s.expired_disconnects),
                ("idle", s.idle_disconnects),
                ("quarantined", s.quarantined_disconnects),
            ],
        ),
    );
    counter(
        "entente_quarantines_total",
        "Agents quarantined, by the anomaly detector or an administrator.",
        one(s.quarantines),
    );
    counter(
        "entente_quarantined_connections_refused_total",
        "Connections refused after the handshake because their agent is quarantined.",
        one(s.quarantined_refusals),
    );
    counter(
        "entente_throttles_total",
        "Times an agent's risk score made the hub throttle it.",
        one(s.throttled_agents),
    );
    counter(
        "entente_webhook_notices_total",
        "Quarantine notices to the webhook, by result.",
        by(
            "result",
            &[("sent", s.webhook_sent), ("failed", s.webhook_failures)],
        ),
    );
    counter(
        "entente_otlp_exports_total",
        "Metric exports to the OpenTelemetry collector, by result.",
        by(
            "result",
            &[("sent", s.otlp_exports), ("failed", s.otlp_failures)],
        ),
    );
    counter(
        "entente_delivery_failures_total",
        "Deliveries that failed (the publisher was told).",
        one(s.delivery_failures),
    );
    counter(
        "entente_audit_records_total",
        "Records submitted to the audit log.",
        one(s.audit_records),
    );
    counter(
        "entente_audit_commits_total",
        "Group commits of the audit log that made records durable.",
        one(s.audit_commits),
    );
    counter(
        "entente_audit_failures_total",
        "Audit log failures.",
        one(s.audit_failures),
    );

    let mut gauge = |name, help, value: f64| {
        out.push(Family {
            name,
            help,
            points: Points::Gauge(vec![(None, value)]),
        });
    };
    gauge(
        "entente_connections",
        "Live mutual-TLS connections.",
        snapshot.connections as f64,
    );
    gauge(
        "entente_connections_unauthenticated",
        "Connections in their TLS handshake or enrolling.",
        snapshot.unauthenticated as f64,
    );
    gauge(
        "entente_subscriptions",
        "Subscriptions held by sessions.",
        snapshot.subscriptions as f64,
    );
    gauge(
        "entente_queued_frames",
        "Frames waiting in subscribed sessions' outbound queues.",
        snapshot.queued_frames.0 as f64,
    );
    gauge(
        "entente_queued_frames_max",
        "Frames waiting in the fullest outbound queue.",
        snapshot.queued_frames.1 as f64,
    );
    gauge(
        "entente_queued_bytes",
        "Bytes of deliveries waiting in subscribed sessions' outbound queues.",
        snapshot.queued_bytes.0 as f64,
    );
    gauge(
        "entente_queued_bytes_max",
        "Bytes of deliveries waiting in the fullest outbound queue.",
        snapshot.queued_bytes.1 as f64,
    );
    if let Some(age) = snapshot.data_key_age {
        gauge(
            "entente_data_key_age_seconds",
            "Age of the data key in use.",
            age,
        );
    }
    if let Some(seconds) = snapshot.hub_certificate_expiry {
        gauge(
            "entente_hub_certificate_expiry_seconds",
            "Seconds until the hub's own certificate expires.",
            seconds,
        );
    }
    if !snapshot.intermediates.is_empty() {
        out.push(Family {
            name: "entente_intermediate_ca_expiry_seconds",
            help: "Seconds until each intermediate CA expires, by role.",
            points: Points::Gauge(
                snapshot
                    .intermediates
                    .iter()
                    .map(|(role, seconds)| (Some(("role", role.clone())), *seconds))
                    .collect(),
            ),
        });
    }
    out.push(Family {
        name: "entente_publish_seconds",
        help: "Time from a publish's arrival to its answer.",
        points: Points::Histogram(traffic.publish.read()),
    });
    out
}

/// `families` in the text exposition format 0.0.4.
pub(crate) fn text(families: &[Family]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in families {
        let name = family.name;
        let kind = match family.points {
            Points::Counter(_) => "counter",
            Points::Gauge(_) => "gauge",
            Points::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        match &family.points {
            Points::Counter(points) => {
                for (label, n) in points {
                    sample(&mut out, name, label.as_ref(), n);
                }
            }
            Points::Gauge(points) => {
                for (label, value) in points {
                    sample(&mut out, name, label.as_ref(), value);
                }
            }
            Points::Histogram(h) => {
                let mut cumulative = 0u64;
                for (bound, count) in h.bounds.iter().zip(&h.counts) {
                    cumulative += count;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                cumulative += h.counts.get(h.bounds.len()).copied().unwrap_or(0);
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                let _ = writeln!(out, "{name}_sum {}", h.sum);
                let _ = writeln!(out, "{name}_count {}", h.count);
            }
        }
    }
    out
}

fn sample(out: &mut String, name: &str, label: Option<&Label>, value: impl fmt::Display) {
    match label {
        None => {
            let _ = writeln!(out, "{name} {value}");
        }
        Some((key, label)) => {
            let _ = writeln!(out, "{name}{{{key}=\"{label}\"}} {value}");
        }
    }
}

/// Seconds from `now` to `at` (negative once past).
pub(crate) fn seconds_until(at: SystemTime, now: SystemTime) -> f64 {
    match at.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    }
}

/// Serves `GET /metrics` on `listener` until shutdown, with what `scrape` renders; anything
/// else is `404`, a method other than `GET` (or `HEAD`) `405`.
pub(crate) async fn serve<F>(listener: TcpListener, scrape: F, mut shutdown: watch::Receiver<bool>)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let scrape = Arc::new(scrape);
    let scrapers = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok((tcp, _)) = accepted else {
            // Out of descriptors, say: wait a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = scrapers.clone().acquire_owned().await else {
            return;
        };
        let scrape = scrape.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let scrape = scrape.clone();
                async move { Ok::<_, Infallible>(answer(&request, || scrape())) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(16 * 1024);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

fn answer(
    request: &hyper::Request<Incoming>,
    scrape: impl FnOnce() -> String,
) -> hyper::Response<Full<Bytes>> {
    let status = if request.uri().path() != "/metrics" {
        hyper::StatusCode::NOT_FOUND
    } else if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
        hyper::StatusCode::METHOD_NOT_ALLOWED
    } else {
        hyper::StatusCode::OK
    };
    let body = if status == hyper::StatusCode::OK {
        scrape()
    } else {
        format!("{status}\n")
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let content_type = if status == hyper::StatusCode::OK {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// The address a metrics listener is bound to, for `entente hub start` to print.
pub(crate) fn bound(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_rate_limit_has_a_counter() {
        let all = [
            Limit::AgentMessages,
            Limit::AgentBytes,
            Limit::ChannelMessages,
            Limit::AgentSubscriptions,
            Limit::AgentCalls,
            Limit::AnomalyThrottle,
            Limit::PolicyRate,
        ];
        for limit in all {
            // A new limit fails to compile here until it is listed above.
            match limit {
                Limit::AgentMessages
                | Limit::AgentBytes
                | Limit::ChannelMessages
                | Limit::AgentSubscriptions
                | Limit::AgentCalls
                | Limit::AnomalyThrottle
                | Limit::PolicyRate => {}
            }
            assert!(LIMITS.contains(&limit.as_str()), "{limit}");
            let traffic = Traffic::default();
            traffic.rate_limited(limit);
            let i = LIMITS.iter().position(|l| *l == limit.as_str()).unwrap();
            assert_eq!(
                traffic.limit_hits.get(i).unwrap().load(Ordering::Relaxed),
                1
            );
        }
    }

    #[test]
    fn the_histogram_is_cumulative_with_a_sum_and_a_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_secs(10));
        let out = text(&[Family {
            name: "x",
            help: "help",
            points: Points::Histogram(h.read()),
        }]);
        assert!(
            out.starts_with("# HELP x help\n# TYPE x histogram\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 10.00075\n"), "{out}");
    }

    #[test]
    fn traffic_and_limits_are_counted_by_class_and_name() {
        let traffic = Traffic::default();
        traffic.routed(Class::Reply, 2, 600);
        traffic.rate_limited(Limit::AgentBytes);
        traffic.limit_hit("connections-per-agent");
        traffic.limit_hit("no such limit");
        let out = text(&families(&Snapshot::default(), &traffic));
        assert!(
            out.contains("entente_messages_total{class=\"reply\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("entente_bytes_total{class=\"reply\"} 600\n"),
            "{out}"
        );
        assert!(
            out.contains("entente_messages_total{class=\"pubsub\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("entente_limit_hits_total{limit=\"agent-bytes\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("entente_limit_hits_total{limit=\"connections-per-agent\"} 1\n"));
        // Every sample line belongs to a declared metric.
        let declared: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                declared.iter().any(|d| name == *d
                    || name
                        .strip_prefix(d)
                        .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))),
                "{line}"
            );
        }
    }
}
