//! `entente bench`: pub→sub of sealed messages through a real hub over loopback mutual TLS.
//!
//! A hub starts in-process on a temporary data directory (as `entente demo` does), two agents
//! enroll over the network, and two [`Client`]s — each on its own mTLS connection — drive the
//! SDK's normal path: the publisher [`Client::enqueue`]s every message without waiting for its
//! ack (the SDK seals them into signed batches), the subscriber opens and verifies each one.
//! Each payload starts with its send time and sequence number; the subscriber measures
//! publish-to-deliver latency and checks that every message arrived exactly once.
//!
//! Without `--rate` the publisher runs flat out: the figures are the saturated throughput, and
//! the latency is mostly time spent in the queues of a saturated pipeline. With `--rate` it
//! publishes on a fixed schedule (open loop), which measures latency below saturation.
//!
//! With `--compare-authorization` it runs the same workload in rounds, each with the hub's
//! policy decisions on (as deployed) and off (`HubConfig::danger`, which skips the policy
//! engine), on fresh hubs and in alternating order, and reports the throughput of each and
//! the ratio of the medians: what authorization costs on the hot path. `--compare-audit`
//! does the same with the hub's audit log on (as deployed) and off (`HubConfig::audit`
//! unset).
//!
//! `--subscribers N` fans every message out to N subscribers, each on its own connection;
//! `--publishers N` has N publishers, each on its own connection, publish `--messages` each
//! (every subscriber receives every publisher's messages; a payload's number is
//! `publisher × messages + sequence`). With `--compare-nats` it runs the same workload
//! through nats-server (the Debian package), plain and with TLS, in the same invocation, and
//! reports the ratios. Every run reports the CPU seconds per million deliveries and the peak
//! memory over its window ([`crate::commands::usage`]). Request/reply is in
//! [`crate::commands::bench_rpc`], the whole suite in [`crate::commands::bench_suite`].
//!
//! Figures come from one process on one machine: the hub, both clients and the crypto share
//! the cores. See `docs/BENCHMARKS.md`.

use std::{
    process::ExitCode,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use entente_client::{Client, ClientOptions, ErrorKind, SessionTransport, Subscription};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use entente_hub::{StreamConfig, StreamSync};
use entente_types::ChannelPattern;

use crate::commands::attack::{self, Attacked, Attackers};
use crate::commands::nats::{self, Nats, NatsServer};
use crate::commands::scratch::ScratchHub;
use crate::commands::usage::{Cost, Meter};

const TRUST_DOMAIN: &str = "bench.entente.local";
const CHANNEL: &str = "demo.bench";
/// Send time (ns since the start) and sequence number at the head of every payload.
const HEADER: usize = 16;
/// How long the subscriber waits for the next message before declaring the rest lost.
const IDLE: Duration = Duration::from_secs(10);

/// Whether the benchmarks' SDK clients run their sessions over HTTP/2 (`--http2`).
static HTTP2: AtomicBool = AtomicBool::new(false);

/// Makes every SDK client of this process's benchmarks run its session over HTTP/2.
pub(crate) fn use_http2_sessions() {
    HTTP2.store(true, Ordering::Relaxed);
}

/// `--round-trip-batch-min`, 0 for the SDK's default.
static ROUND_TRIP_BATCH_MIN: AtomicUsize = AtomicUsize::new(0);

/// Sets the least round-trip limit of the measured SDK clients of this process's benchmarks
/// (their `round_trip_batch_min`).
pub(crate) fn use_round_trip_batch_min(limit: usize) {
    ROUND_TRIP_BATCH_MIN.store(limit, Ordering::Relaxed);
}

/// The options the benchmarks' SDK clients connect with: the defaults (framed sessions), with
/// HTTP/2 sessions under `--http2` and the limit of `--round-trip-batch-min`.
pub(crate) fn client_options() -> ClientOptions {
    let mut options = ClientOptions::default();
    match ROUND_TRIP_BATCH_MIN.load(Ordering::Relaxed) {
        0 => {}
        limit => options = options.round_trip_batch_min(limit),
    }
    if HTTP2.load(Ordering::Relaxed) {
        options.session_transport(SessionTransport::Http2)
    } else {
        options
    }
}

/// What one run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    /// Messages each publisher published.
    messages: u64,
    /// Publishers, each on its own connection.
    publishers: usize,
    /// Subscribers, each receiving every message of every publisher; delivery figures count
    /// every copy.
    subscribers: usize,
    /// Offered rate in messages per second; 0 for as fast as the publisher can.
    rate: u64,
    payload_bytes: usize,
    sent: u64,
    acked: u64,
    pub(crate) publish_errors: u64,
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) rejected: u64,
    pub(crate) lost: u64,
    seconds: f64,
    /// When the last message was queued by the publishers (the rest of the run is draining).
    publish_seconds: f64,
    pub(crate) msgs_per_sec: f64,
    mb_per_sec: f64,
    pub(crate) latency_us: Latency,
    /// CPU and memory over the run, per million deliveries.
    pub(crate) cost: Cost,
    batches_sent: u64,
    hub_delivery_failures: u64,
    hub_slow_consumer_disconnects: u64,
    /// Policy decisions the hub made (allowed and denied); 0 with authorization off.
    hub_policy_decisions: u64,
    /// Records the hub's audit log made durable; 0 with the audit log off.
    hub_audit_records: u64,
}

/// Percentiles of a run's latencies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    /// The 99.9th percentile.
    pub(crate) p999: u64,
    pub(crate) max: u64,
}

impl Latency {
    /// Of `sorted` latencies in nanoseconds.
    pub(crate) fn of_nanos(sorted: &[u64]) -> Self {
        let Self {
            p50,
            p90,
            p99,
            p999,
            max,
        } = Self::of_micros(sorted);
        Self {
            p50: p50 / 1000,
            p90: p90 / 1000,
            p99: p99 / 1000,
            p999: p999 / 1000,
            max: max / 1000,
        }
    }

    /// Of `sorted` latencies in microseconds.
    pub(crate) fn of_micros(sorted: &[u64]) -> Self {
        Self {
            p50: percentile(sorted, 500),
            p90: percentile(sorted, 900),
            p99: percentile(sorted, 990),
            p999: percentile(sorted, 999),
            max: sorted.last().copied().unwrap_or(0),
        }
    }
}

/// What a comparison switches off in half of its runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Switch {
    /// The policy engine (`HubConfig::danger.skip_policy_decisions`).
    Authorization,
    /// The audit log (`HubConfig::audit`).
    Audit,
    /// Not a switch: attackers run against the hub during the measurement
    /// ([`crate::commands::attack`]), on a hub with every agent limited to
    /// [`AGENT_RATE`](crate::commands::attack::AGENT_RATE) and the anomaly detector acting on
    /// windows of a second.
    Attack,
}

/// The rounds of `--compare-authorization` or `--compare-audit`.
#[derive(Debug, serde::Serialize)]
struct Comparison {
    switch: Switch,
    rounds: usize,
    /// Each round with everything on, as a deployed hub runs.
    on: Vec<Report>,
    /// Each round with the switch off.
    off: Vec<Report>,
    on_median_msgs_per_sec: f64,
    off_median_msgs_per_sec: f64,
    /// `on_median_msgs_per_sec / off_median_msgs_per_sec`; for `attack`, the throughput
    /// under attack over the throughput alone.
    ratio: f64,
    /// `attack`: what the attackers of each attacked round did.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attacks: Vec<Attacked>,
}

pub(crate) fn run(
    messages: u64,
    payload: usize,
    rate: u64,
    (publishers, subscribers): (usize, usize),
    compare: Option<(Switch, usize)>,
    json: bool,
) -> Result<ExitCode> {
    if payload < HEADER {
        bail!("`--payload` must be at least {HEADER} bytes (send time and sequence number)");
    }
    if messages == 0 {
        bail!("`--messages` must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    if let Some((switch, rounds)) = compare {
        return self::compare(
            &runtime,
            switch,
            rounds,
            (messages, payload, rate, publishers, subscribers),
            json,
        );
    }
    let shape = PubSub {
        messages,
        payload,
        publishers,
        subscribers,
    };
    let report = runtime.block_on(bench(shape, rate, None))?;
    if json {
        super::print_json(&report);
    } else {
        let l = &report.latency_us;
        let offered = if report.rate == 0 {
            "as fast as possible".to_owned()
        } else {
            format!("offered at {} msgs/s", report.rate)
        };
        let fan_in = if report.publishers > 1 {
            format!(" from each of {} publishers", report.publishers)
        } else {
            String::new()
        };
        let fan_out = if report.subscribers > 1 {
            format!(" to {} subscribers each", report.subscribers)
        } else {
            String::new()
        };
        outln!(
            "{} messages of {} B{fan_in}{fan_out} through the hub (loopback mTLS), {offered}, \
             in {:.2} s",
            report.messages,
            report.payload_bytes,
            report.seconds
        );
        outln!(
            "  throughput  {:.0} msgs/s, {:.1} MB/s of payload ({} signed batches)",
            report.msgs_per_sec,
            report.mb_per_sec,
            report.batches_sent
        );
        outln!(
            "  latency     p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs (publish to \
             delivery)",
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max
        );
        outln!(
            "  delivered   {} (of {} sent, to each subscriber), {} lost, {} duplicates, {} rejected, \
             {} publish errors",
            report.delivered,
            report.sent,
            report.lost,
            report.duplicates,
            report.rejected,
            report.publish_errors
        );
        outln!(
            "  cost        {:.2} CPU s ({:.2} per million deliveries), peak RSS {} (hub and \
             clients, one process)",
            report.cost.cpu_seconds,
            report.cost.cpu_seconds_per_million,
            mebibytes(report.cost.peak_rss_bytes)
        );
    }
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `--compare-authorization` or `--compare-audit`: `rounds` rounds of on then off.
fn compare(
    runtime: &tokio::runtime::Runtime,
    switch: Switch,
    rounds: usize,
    (messages, payload, rate, publishers, subscribers): (u64, usize, u64, usize, usize),
    json: bool,
) -> Result<ExitCode> {
    let name = match switch {
        Switch::Authorization => "authorization",
        Switch::Audit => "audit",
        Switch::Attack => "attack",
    };
    // An attack round is the "off" one: the honest agents alone are the "on" ones.
    let (label_on, label_off) = match switch {
        Switch::Attack => ("alone", "under attack"),
        _ => ("on", "off"),
    };
    let mut attacks = Vec::new();
    if rounds == 0 {
        bail!("`--compare-{name}` needs at least 1 round");
    }
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate which goes first, so that drift in the machine's load favours neither.
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        for skip in order {
            let shape = PubSub {
                messages,
                payload,
                publishers,
                subscribers,
            };
            let (report, attacked) =
                runtime.block_on(bench_with(shape, rate, skip.then_some(switch)))?;
            if !json {
                outln!(
                    "round {round}, {}: {:.0} msgs/s, p50 {} µs, p99 {} µs, {} lost",
                    if skip { label_off } else { label_on },
                    report.msgs_per_sec,
                    report.latency_us.p50,
                    report.latency_us.p99,
                    report.lost
                );
                if let Some(a) = &attacked {
                    outln!(
                        "  attackers: flood {} published, {} refused; {} replays refused; {} \
                         probes refused; {} stalled and {} garbage connections; {} agent(s) \
                         quarantined",
                        a.flood_published,
                        a.flood_refused,
                        a.replays_refused,
                        a.probes_refused,
                        a.stalled_connections,
                        a.garbage_connections,
                        a.quarantined
                    );
                }
            }
            attacks.extend(attacked);
            if skip { &mut off } else { &mut on }.push(report);
        }
    }
    let on_median = median(on.iter().map(|r| r.msgs_per_sec));
    let off_median = median(off.iter().map(|r| r.msgs_per_sec));
    let comparison = Comparison {
        switch,
        rounds,
        on_median_msgs_per_sec: on_median,
        off_median_msgs_per_sec: off_median,
        ratio: match switch {
            Switch::Attack if on_median > 0.0 => off_median / on_median,
            _ if off_median > 0.0 => on_median / off_median,
            _ => 0.0,
        },
        on,
        off,
        attacks,
    };
    if json {
        super::print_json(&comparison);
    } else {
        let ratio_of = match switch {
            Switch::Attack => "under attack/alone",
            _ => "on/off",
        };
        outln!(
            "median: {name} {label_on} {:.0} msgs/s, {label_off} {:.0} msgs/s: {ratio_of} = {:.3}",
            comparison.on_median_msgs_per_sec,
            comparison.off_median_msgs_per_sec,
            comparison.ratio
        );
    }
    let clean = comparison
        .on
        .iter()
        .chain(&comparison.off)
        .all(Report::clean);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub(crate) fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match (
        values.get(n / 2),
        n.checked_sub(1).and_then(|i| values.get(i / 2)),
    ) {
        (Some(high), Some(low)) if n.is_multiple_of(2) => (high + low) / 2.0,
        (Some(middle), _) => *middle,
        _ => 0.0,
    }
}

/// `bytes` in MiB, for people.
pub(crate) fn mebibytes(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

impl Report {
    /// Every message arrived once, nothing was refused or failed.
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.rejected == 0 && self.publish_errors == 0
    }
}

/// One run on a fresh scratch hub, with `off` switched off: the policy engine (the hub's
/// [`entente_hub::danger::Danger`] switch `skip_policy_decisions`) or the audit log.
pub(crate) async fn bench(shape: PubSub, rate: u64, off: Option<Switch>) -> Result<Report> {
    bench_with(shape, rate, off).await.map(|(report, _)| report)
}

/// [`bench()`], and with [`Switch::Attack`] what the attackers did.
async fn bench_with(
    shape: PubSub,
    rate: u64,
    off: Option<Switch>,
) -> Result<(Report, Option<Attacked>)> {
    let PubSub {
        messages,
        payload,
        publishers,
        subscribers,
    } = shape;
    let (publishers, subscribers) = (publishers.max(1), subscribers.max(1));
    let scratch = ScratchHub::start_for_bench(TRUST_DOMAIN, |config| match off {
        Some(Switch::Authorization) => config.danger.skip_policy_decisions = true,
        Some(Switch::Audit) => config.audit = None,
        Some(Switch::Attack) => {
            config.rate_limits.agent_messages = Some(attack::AGENT_RATE);
            // Every agent and attacker connects from one address here: with the bound per
            // source, the stalled connections would keep the garbage sender out of TLS.
            config.max_unauthenticated_per_source = config.max_unauthenticated;
            config.anomaly = entente_hub::AnomalyConfig {
                window: Duration::from_secs(1),
                ..entente_hub::AnomalyConfig::default()
            };
        }
        None => {}
    })
    .await?;
    let addr = scratch.addr();
    let mut clients = Vec::new();
    let names = (1..=publishers)
        .map(|i| format!("publisher-{i}"))
        .chain((1..=subscribers).map(|i| format!("subscriber-{i}")));
    for name in names {
        let (_, token) = scratch.token("demo", &name).await?;
        let identity = entente_client::enroll(addr, &scratch.trust, token.as_str()).await?;
        clients.push(Client::connect(identity, addr, client_options()).await?);
    }
    let (senders, receivers) = clients.split_at(publishers);
    let mut subscriptions = Vec::with_capacity(receivers.len());
    for subscriber in receivers {
        subscriptions.push(subscriber.subscribe(CHANNEL).await?);
    }
    // Warm up: the directory lookups and the first sender keys are not part of the measure.
    for publisher in senders {
        publisher.publish(CHANNEL, vec![0u8; payload]).await?;
    }
    for subscription in &mut subscriptions {
        for _ in senders {
            match tokio::time::timeout(IDLE, subscription.next()).await {
                Ok(Some(Ok(_))) => {}
                other => bail!("a warm-up message did not arrive: {other:?}"),
            }
        }
    }

    let attackers = match off {
        Some(Switch::Attack) => Some(Attackers::start(&scratch).await?),
        _ => None,
    };
    let total = messages.saturating_mul(publishers as u64);
    let meter = Meter::start(&[std::process::id()]);
    let start = Instant::now();
    let receiving: Vec<_> = subscriptions
        .into_iter()
        .map(|subscription| tokio::spawn(receive(subscription, total, start)))
        .collect();
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<entente_client::PublishAck>();
    let acker = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(ack) = acks_rx.recv().await {
            match ack.await {
                Ok(()) => ok += 1,
                Err(_) => failed += 1,
            }
        }
        (ok, failed)
    });
    let publishing: Vec<_> = senders
        .iter()
        .zip(0u64..)
        .map(|(publisher, index)| {
            let (publisher, acks) = (publisher.clone(), acks_tx.clone());
            let first = index * messages;
            tokio::spawn(async move {
                publish(
                    &publisher,
                    first..first + messages,
                    payload,
                    rate,
                    start,
                    acks,
                )
                .await
            })
        })
        .collect();
    drop(acks_tx);
    let (mut sent, mut publish_errors) = (0u64, 0u64);
    for one in publishing {
        let (ok, failed) = one.await.context("a publisher task failed")??;
        sent += ok;
        publish_errors += failed;
    }
    let enqueued = start.elapsed();
    let mut received = Received::default();
    for receiver in receiving {
        let one = receiver.await.context("a subscriber task failed")?;
        received.delivered += one.delivered;
        received.duplicates += one.duplicates;
        received.rejected += one.rejected;
        received.latencies_ns.extend(one.latencies_ns);
    }
    let elapsed = start.elapsed();
    let usage = meter.stop().first().copied().unwrap_or_default();
    let (acked, ack_errors) = acker.await.context("the ack task failed")?;
    let batches_sent = senders.iter().map(|p| p.stats().batches_sent).sum();
    let attacked = match attackers {
        Some(attackers) => Some(attackers.stop(&scratch).await),
        None => None,
    };
    let hub_stats = scratch.hub.stats();
    for client in &clients {
        client.close().await;
    }
    scratch.shutdown().await?;

    let mut latencies = received.latencies_ns;
    latencies.sort_unstable();
    let seconds = elapsed.as_secs_f64();
    let delivered = received.delivered;
    let expected = total.saturating_mul(subscribers as u64);
    let report = Report {
        messages,
        publishers,
        subscribers,
        rate,
        payload_bytes: payload,
        sent,
        acked,
        publish_errors: publish_errors + ack_errors,
        delivered,
        duplicates: received.duplicates,
        rejected: received.rejected,
        lost: expected.saturating_sub(delivered),
        seconds,
        publish_seconds: enqueued.as_secs_f64(),
        msgs_per_sec: delivered as f64 / seconds,
        mb_per_sec: (delivered as f64 * payload as f64) / seconds / 1e6,
        latency_us: Latency::of_nanos(&latencies),
        cost: Cost::in_process(usage, delivered),
        batches_sent,
        hub_delivery_failures: hub_stats.delivery_failures,
        hub_slow_consumer_disconnects: hub_stats.slow_consumer_disconnects,
        hub_policy_decisions: hub_stats.policy_allows + hub_stats.policy_denials,
        hub_audit_records: hub_stats.audit_records,
    };
    Ok((report, attacked))
}

/// One publisher's messages `numbers` (its index times `--messages` and on, so that each
/// number names a publisher and its sequence), each stamped with its send time, queued
/// without waiting for their acks, which go to `acks`. Returns how many were queued and how
/// many failed.
async fn publish(
    publisher: &Client,
    numbers: std::ops::Range<u64>,
    payload: usize,
    rate: u64,
    start: Instant,
    acks: mpsc::UnboundedSender<entente_client::PublishAck>,
) -> Result<(u64, u64)> {
    let (mut sent, mut errors) = (0u64, 0u64);
    let first = numbers.start;
    let mut buffer = vec![0xA5u8; payload];
    for number in numbers {
        if let Some(due) = due(start, number - first, rate) {
            tokio::time::sleep_until(due.into()).await;
        }
        let at = nanos(start.elapsed());
        if let Some(head) = buffer.get_mut(..HEADER) {
            let (time, seq) = head.split_at_mut(8);
            time.copy_from_slice(&at.to_be_bytes());
            seq.copy_from_slice(&number.to_be_bytes());
        }
        match publisher.enqueue(CHANNEL, buffer.clone()).await {
            Ok(ack) => {
                sent += 1;
                if acks.send(ack).is_err() {
                    bail!("the ack task ended early");
                }
            }
            Err(_) => errors += 1,
        }
    }
    Ok((sent, errors))
}

/// When a publisher on an open loop at `rate` messages per second (0: flat out) is due to
/// publish its message `seq`, if that is still to come: at `seq / rate` seconds after `start`.
/// Both sides of a comparison pace their publishers with it, waiting with Tokio's timer,
/// whose resolution is a millisecond: each millisecond's messages go out together.
pub(crate) fn due(start: Instant, seq: u64, rate: u64) -> Option<Instant> {
    if rate == 0 {
        return None;
    }
    // Beyond what an `Instant` holds, the message is due now.
    let due = Duration::try_from_secs_f64(seq as f64 / rate as f64)
        .ok()
        .and_then(|after| start.checked_add(after))?;
    (due > Instant::now()).then_some(due)
}

/// What the subscriber saw.
#[derive(Debug, Default)]
struct Received {
    delivered: u64,
    duplicates: u64,
    rejected: u64,
    latencies_ns: Vec<u64>,
}

/// Reads until each of `total` messages (every publisher's) arrived once, or nothing arrives
/// for [`IDLE`].
async fn receive(mut subscription: Subscription, total: u64, start: Instant) -> Received {
    let mut seen = vec![false; usize::try_from(total).unwrap_or(usize::MAX)];
    let mut out = Received {
        latencies_ns: Vec::with_capacity(seen.len()),
        ..Received::default()
    };
    while out.delivered < total {
        let item = match tokio::time::timeout(IDLE, subscription.next()).await {
            Ok(Some(item)) => item,
            Ok(None) | Err(_) => break,
        };
        let message = match item {
            Ok(message) => message,
            Err(e) if e.kind() == ErrorKind::Rejected => {
                out.rejected += 1;
                continue;
            }
            Err(_) => break,
        };
        let now = nanos(start.elapsed());
        let field = |range: std::ops::Range<usize>| {
            message
                .payload
                .get(range)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
        };
        let (Some(sent_at), Some(seq)) = (field(0..8), field(8..16)) else {
            out.rejected += 1;
            continue;
        };
        match usize::try_from(seq).ok().and_then(|i| seen.get_mut(i)) {
            Some(slot) if !*slot => {
                *slot = true;
                out.delivered += 1;
                out.latencies_ns.push(now.saturating_sub(sent_at));
            }
            _ => out.duplicates += 1,
        }
    }
    out
}

/// The value below which `per_mille` thousandths of sorted `values` lie (nearest rank, in
/// integers: no rounding of a fraction moves it a rank); 0 when empty.
pub(crate) fn percentile(sorted: &[u64], per_mille: usize) -> u64 {
    let rank = sorted.len().saturating_mul(per_mille).div_ceil(1000);
    sorted
        .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

// === durable publish against JetStream ===

/// The durable channel of `--compare-jetstream`, and JetStream's stream and subject.
const DURABLE_CHANNEL: &str = "demo.durable.bench";
const JS_STREAM: &str = "bench";
const JS_SUBJECT: &str = "bench.messages";
/// Publishes JetStream has unacknowledged at once in its runs.
const JS_WINDOW: u64 = 1024;
/// JetStream's file storage `fdatasync`s every two minutes by default (nats-server 2.9).
pub(crate) const JS_SYNC: Duration = Duration::from_secs(120);

/// One round of `--compare-jetstream`.
#[derive(Debug, serde::Serialize)]
struct DurableRound {
    /// Entente, entries synced at JetStream's interval: the same fsync policy.
    entente_interval_msgs_per_sec: f64,
    /// Entente, every group of entries `fdatasync`ed before its publishes are acknowledged.
    entente_always_msgs_per_sec: f64,
    /// JetStream, file storage, its default sync.
    jetstream_msgs_per_sec: f64,
}

/// One durable publish run, through Entente or JetStream.
#[derive(Debug, serde::Serialize)]
pub(crate) struct DurableRun {
    /// Publishes, each acknowledged.
    pub(crate) messages: u64,
    pub(crate) seconds: f64,
    pub(crate) msgs_per_sec: f64,
    /// CPU and memory over the run, per million acknowledged publishes.
    pub(crate) cost: Cost,
}

/// `--compare-jetstream ROUNDS`: durable publish throughput through Entente and through
/// nats-server with JetStream file storage, in alternating order.
pub(crate) fn compare_jetstream(
    rounds: usize,
    messages: u64,
    payload: usize,
    json: bool,
) -> Result<ExitCode> {
    if rounds == 0 {
        bail!("`--compare-jetstream` needs at least 1 round");
    }
    if messages == 0 {
        bail!("`--messages` must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let js_first = round % 2 == 0;
        let mut jetstream = 0.0;
        if js_first {
            jetstream = runtime
                .block_on(jetstream_publish(messages, payload))?
                .msgs_per_sec;
        }
        let interval = runtime
            .block_on(durable_publish(
                messages,
                payload,
                StreamSync::Every(JS_SYNC),
            ))?
            .msgs_per_sec;
        let always = runtime
            .block_on(durable_publish(messages, payload, StreamSync::Always))?
            .msgs_per_sec;
        if !js_first {
            jetstream = runtime
                .block_on(jetstream_publish(messages, payload))?
                .msgs_per_sec;
        }
        if !json {
            outln!(
                "round {round}: Entente durable {interval:.0} msgs/s (sync every 2 min), \
                 {always:.0} msgs/s (sync always); JetStream file storage {jetstream:.0} msgs/s"
            );
        }
        results.push(DurableRound {
            entente_interval_msgs_per_sec: interval,
            entente_always_msgs_per_sec: always,
            jetstream_msgs_per_sec: jetstream,
        });
    }
    let interval = median(results.iter().map(|r| r.entente_interval_msgs_per_sec));
    let always = median(results.iter().map(|r| r.entente_always_msgs_per_sec));
    let jetstream = median(results.iter().map(|r| r.jetstream_msgs_per_sec));
    let ratio = if jetstream > 0.0 {
        interval / jetstream
    } else {
        0.0
    };
    if json {
        super::print_json(&serde_json::json!({
            "rounds": results,
            "entente_interval_median": interval,
            "entente_always_median": always,
            "jetstream_median": jetstream,
            "ratio_same_sync": ratio,
            "ratio_always": if jetstream > 0.0 { always / jetstream } else { 0.0 },
        }));
    } else {
        outln!(
            "median: Entente {interval:.0} msgs/s, JetStream {jetstream:.0} msgs/s, same fsync \
             policy: Entente/JetStream = {ratio:.3}; Entente syncing always {always:.0} msgs/s"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Publishes `messages` to a durable channel of a fresh scratch hub (audit and everything
/// on, nobody subscribed) as fast as the SDK goes, until the last acknowledgement.
pub(crate) async fn durable_publish(
    messages: u64,
    payload: usize,
    sync: StreamSync,
) -> Result<DurableRun> {
    let channels = ChannelPattern::parse(DURABLE_CHANNEL)?;
    let scratch = ScratchHub::start_for_bench(TRUST_DOMAIN, move |config| {
        let mut stream = StreamConfig::new("bench", channels);
        stream.max_messages = u64::MAX;
        stream.max_bytes = u64::MAX;
        stream.sync = sync;
        config.streams = vec![stream];
    })
    .await?;
    let addr = scratch.addr();
    let (_, token) = scratch.token("demo", "publisher").await?;
    let identity = entente_client::enroll(addr, &scratch.trust, token.as_str()).await?;
    let publisher = Client::connect(identity, addr, client_options()).await?;
    // Warm up: the directory lookup and the first sender key are not part of the measure.
    publisher
        .publish(DURABLE_CHANNEL, vec![0u8; payload])
        .await?;
    let meter = Meter::start(&[std::process::id()]);
    let start = Instant::now();
    let mut acks = Vec::with_capacity(usize::try_from(messages).unwrap_or(0));
    let body = vec![0xA5u8; payload];
    for _ in 0..messages {
        acks.push(publisher.enqueue(DURABLE_CHANNEL, body.clone()).await?);
    }
    for ack in acks {
        ack.await.context("a durable publish was refused")?;
    }
    let elapsed = start.elapsed();
    let usage = meter.stop().first().copied().unwrap_or_default();
    // Entries are the publishes' batches, stored before each was acknowledged.
    if scratch.hub.stats().durable_stored == 0 {
        bail!("nothing was stored in the durable channel");
    }
    publisher.close().await;
    scratch.shutdown().await?;
    Ok(DurableRun {
        messages,
        seconds: elapsed.as_secs_f64(),
        msgs_per_sec: messages as f64 / elapsed.as_secs_f64(),
        cost: Cost::in_process(usage, messages),
    })
}

/// Publishes `messages` to a JetStream file-storage stream of a fresh nats-server, each
/// acknowledged, at most [`JS_WINDOW`] in flight.
pub(crate) async fn jetstream_publish(messages: u64, payload: usize) -> Result<DurableRun> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let server = NatsServer::start(dir.path()).await?;
    let mut nats = Nats::connect(server.addr()).await?;
    nats.create_stream(JS_STREAM, "bench.>").await?;
    let meter = Meter::start(&[server.pid(), std::process::id()]);
    let elapsed = nats
        .publish_acked(JS_SUBJECT, &vec![0xA5u8; payload], messages, JS_WINDOW)
        .await?;
    let mut usage = meter.stop().into_iter();
    let (server_usage, client_usage) = (
        usage.next().unwrap_or_default(),
        usage.next().unwrap_or_default(),
    );
    server.stop().await;
    Ok(DurableRun {
        messages,
        seconds: elapsed.as_secs_f64(),
        msgs_per_sec: messages as f64 / elapsed.as_secs_f64(),
        cost: Cost::server_and_clients(server_usage, client_usage, messages),
    })
}

// === pub→sub against nats-server ===

/// One core-NATS run as the comparison reports it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct NatsReport {
    /// Offered rate in messages per second per publisher; 0 for as fast as it can.
    rate: u64,
    sent: u64,
    pub(crate) delivered: u64,
    duplicates: u64,
    pub(crate) lost: u64,
    /// Subscriber connections the server closed as slow consumers.
    disconnected: u64,
    seconds: f64,
    pub(crate) msgs_per_sec: f64,
    mb_per_sec: f64,
    pub(crate) latency_us: Latency,
    /// CPU (nats-server and the clients) and nats-server's memory over the run, per million
    /// deliveries.
    pub(crate) cost: Cost,
}

/// One round of `--compare-nats`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct NatsRound {
    pub(crate) entente: Report,
    pub(crate) nats_plain: NatsReport,
    pub(crate) nats_tls: NatsReport,
}

/// nats-server twice, plain and with TLS, each on a free loopback port, for a comparison's
/// rounds.
pub(crate) struct NatsPair {
    plain: NatsServer,
    secure: NatsServer,
    tls: nats::TlsClient,
    /// Holds the TLS server's certificate and key.
    _dir: tempfile::TempDir,
}

impl NatsPair {
    pub(crate) async fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("a temporary directory for nats-server")?;
        let (files, tls) = nats::tls_setup(dir.path())?;
        Ok(Self {
            plain: NatsServer::start_core(None).await?,
            secure: NatsServer::start_core(Some(&files)).await?,
            tls,
            _dir: dir,
        })
    }

    /// The plain server, or the TLS one with the client configuration that trusts it.
    pub(crate) fn server(&self, tls: bool) -> (&NatsServer, Option<&nats::TlsClient>) {
        if tls {
            (&self.secure, Some(&self.tls))
        } else {
            (&self.plain, None)
        }
    }

    pub(crate) async fn stop(self) {
        self.plain.stop().await;
        self.secure.stop().await;
    }
}

/// The pub/sub workload: `publishers` → `subscribers`, `messages` from each publisher.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct PubSub {
    pub(crate) messages: u64,
    pub(crate) payload: usize,
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
}

impl PubSub {
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} publisher{} -> {} subscriber{}",
            self.publishers,
            if self.publishers == 1 { "" } else { "s" },
            self.subscribers,
            if self.subscribers == 1 { "" } else { "s" },
        )
    }
}

/// What each side's publishers are offered, in messages per second per publisher (0: as
/// fast as they can).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    pub(crate) entente: u64,
    pub(crate) nats: u64,
    pub(crate) nats_tls: u64,
}

impl Rates {
    /// Every side offered `rate`.
    pub(crate) fn same(rate: u64) -> Self {
        Self {
            entente: rate,
            nats: rate,
            nats_tls: rate,
        }
    }
}

/// One round of `shape` through Entente, nats and nats+TLS, each side's publishers paced at
/// its `rates`; who goes first rotates with `round`, so that drift in the machine's load
/// favours no one.
pub(crate) fn pubsub_round(
    runtime: &tokio::runtime::Runtime,
    servers: &NatsPair,
    shape: PubSub,
    rates: Rates,
    round: usize,
) -> Result<NatsRound> {
    let nats_run = |tls: bool| {
        let (server, client) = servers.server(tls);
        let rate = if tls { rates.nats_tls } else { rates.nats };
        runtime
            .block_on(nats::pubsub(
                server,
                client,
                CHANNEL,
                (
                    shape.messages,
                    shape.payload,
                    shape.publishers.max(1),
                    shape.subscribers.max(1),
                ),
                rate,
                Duration::from_secs(2),
            ))
            .map(|run| nats_report(&run, shape.payload, rate))
    };
    let (mut entente, mut plain, mut secure) = (None, None, None);
    for turn in 0..3 {
        match (round + turn) % 3 {
            0 => entente = Some(runtime.block_on(bench(shape, rates.entente, None))?),
            1 => plain = Some(nats_run(false)?),
            _ => secure = Some(nats_run(true)?),
        }
    }
    let (Some(entente), Some(nats_plain), Some(nats_tls)) = (entente, plain, secure) else {
        bail!("a run of round {round} did not happen");
    };
    Ok(NatsRound {
        entente,
        nats_plain,
        nats_tls,
    })
}

/// `--compare-nats`: `rounds` rounds of the same pub/sub workload through Entente
/// (everything on) and through nats-server, plain and with TLS, in rotating order, every
/// side's publishers offered `rate` messages per second (0: flat out); reports each and the
/// ratios of the medians.
pub(crate) fn compare_nats(
    rounds: usize,
    shape: PubSub,
    rate: u64,
    json: bool,
) -> Result<ExitCode> {
    if rounds == 0 {
        bail!("`--compare-nats` needs at least 1 round");
    }
    if shape.messages == 0 || shape.payload < HEADER {
        bail!("`--messages` must be at least 1 and `--payload` at least {HEADER} bytes");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let servers = runtime.block_on(NatsPair::start())?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let NatsRound {
            entente,
            nats_plain,
            nats_tls,
        } = pubsub_round(&runtime, &servers, shape, Rates::same(rate), round)?;
        if !json {
            outln!(
                "round {round}: Entente {:.0} msgs/s (p50 {} µs, {} lost, {:.2} CPU s/M); nats \
                 {:.0} msgs/s (p50 {} µs, {} lost, {:.2} CPU s/M); nats+TLS {:.0} msgs/s (p50 \
                 {} µs, {} lost, {:.2} CPU s/M)",
                entente.msgs_per_sec,
                entente.latency_us.p50,
                entente.lost,
                entente.cost.cpu_seconds_per_million,
                nats_plain.msgs_per_sec,
                nats_plain.latency_us.p50,
                nats_plain.lost,
                nats_plain.cost.cpu_seconds_per_million,
                nats_tls.msgs_per_sec,
                nats_tls.latency_us.p50,
                nats_tls.lost,
                nats_tls.cost.cpu_seconds_per_million,
            );
        }
        results.push(NatsRound {
            entente,
            nats_plain,
            nats_tls,
        });
    }
    runtime.block_on(servers.stop());
    let medians = (
        median(results.iter().map(|r| r.entente.msgs_per_sec)),
        median(results.iter().map(|r| r.nats_plain.msgs_per_sec)),
        median(results.iter().map(|r| r.nats_tls.msgs_per_sec)),
    );
    let head = serde_json::json!({
        "workload": shape.describe(),
        "messages": shape.messages,
        "publishers": shape.publishers,
        "subscribers": shape.subscribers,
        "payload_bytes": shape.payload,
        "rate": rate,
    });
    print_medians(json, head, &results, medians, "msgs")?;
    Ok(exit_code(results.iter().all(|r| r.entente.clean())))
}

/// Prints what a comparison with nats-server found: with `json` one object of `head`'s
/// fields, the rounds, the medians (Entente, nats, nats+TLS) and Entente's ratios to each;
/// else one line, in `unit`s per second.
pub(crate) fn print_medians(
    json: bool,
    head: serde_json::Value,
    rounds: &impl serde::Serialize,
    (entente, plain, secure): (f64, f64, f64),
    unit: &str,
) -> Result<()> {
    let ratio = |other: f64| if other > 0.0 { entente / other } else { 0.0 };
    if json {
        let mut out = head;
        if let Some(fields) = out.as_object_mut() {
            fields.insert("rounds".into(), serde_json::to_value(rounds)?);
            fields.insert("entente_median".into(), entente.into());
            fields.insert("nats_plain_median".into(), plain.into());
            fields.insert("nats_tls_median".into(), secure.into());
            fields.insert("ratio_to_nats_plain".into(), ratio(plain).into());
            fields.insert("ratio_to_nats_tls".into(), ratio(secure).into());
        }
        outln!("{out}");
    } else {
        outln!(
            "median: Entente {entente:.0} {unit}/s, nats {plain:.0} {unit}/s, nats+TLS \
             {secure:.0} {unit}/s: Entente/nats = {:.3}, Entente/nats+TLS = {:.3}",
            ratio(plain),
            ratio(secure)
        );
    }
    Ok(())
}

/// Success if every Entente run was clean.
pub(crate) fn exit_code(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn nats_report(run: &nats::PubSubRun, payload: usize, rate: u64) -> NatsReport {
    let per_sec = |n: f64| {
        if run.seconds > 0.0 {
            n / run.seconds
        } else {
            0.0
        }
    };
    NatsReport {
        rate,
        sent: run.sent,
        delivered: run.delivered,
        duplicates: run.duplicates,
        lost: run.lost,
        disconnected: run.disconnected,
        seconds: run.seconds,
        msgs_per_sec: per_sec(run.delivered as f64),
        mb_per_sec: per_sec(run.delivered as f64 * payload as f64) / 1e6,
        latency_us: Latency::of_micros(&run.latencies_us),
        cost: Cost::server_and_clients(run.server, run.client, run.delivered),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 500), 50);
        assert_eq!(percentile(&values, 990), 99);
        assert_eq!(percentile(&values, 999), 100);
        assert_eq!(percentile(&values, 1000), 100);
        assert_eq!(percentile(&values, 0), 1);
        assert_eq!(percentile(&[], 500), 0);
        assert_eq!(percentile(&[7], 990), 7);
    }

    /// Each percentile is read from its own rank, in either unit.
    #[test]
    fn latencies_take_each_percentile_from_its_rank() {
        let micros: Vec<u64> = (1..=2000).collect();
        let expected = Latency {
            p50: 1000,
            p90: 1800,
            p99: 1980,
            p999: 1998,
            max: 2000,
        };
        assert_eq!(Latency::of_micros(&micros), expected);
        let nanos: Vec<u64> = micros.iter().map(|us| us * 1000 + 999).collect();
        assert_eq!(Latency::of_nanos(&nanos), expected);
        assert_eq!(Latency::of_micros(&[]), Latency::default());
    }

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}
