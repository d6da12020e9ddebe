//! `entente bench --suite [ROUNDS]`: every workload of the performance comparison in one
//! run, through Entente and through nats-server, and two tables (throughput; latency).
//!
//! | id | workload | compared with |
//! |---|---|---|
//! | a | 1 publisher → 1 subscriber, 256 B | nats, nats+TLS |
//! | a-half | (a), each side offered half of what it carried in (a) | nats, nats+TLS |
//! | b | 1 → 10, 256 B | nats, nats+TLS |
//! | c | 10 → 10, 256 B (every subscriber gets every publisher's messages) | nats, nats+TLS |
//! | d1, d64 | request/reply, 1 and 64 requests in flight, 256 B | nats, nats+TLS |
//! | e, e-always | durable publish, 256 B, synced every 2 min and always | JetStream file storage |
//! | f1k, f16k | 1 → 1 with 1 KiB and 16 KiB payloads | nats, nats+TLS |
//!
//! Each round runs every workload once on each side, who goes first rotating from round to
//! round, on nats-servers started afresh for each workload; the table has the medians over the
//! rounds (lost: the sum, peak memory: the largest). Throughput counts deliveries for pub/sub
//! (a message to ten subscribers is ten), requests answered for request/reply, acknowledged
//! publishes for durable publish; CPU seconds are per million of those. What CPU and memory
//! measure is in [`usage`](crate::commands::usage) and docs/BENCHMARKS.md. The run fails if
//! Entente lost, duplicated or failed anything.
//!
//! (a-half) measures the latency target, p99 under 1 ms at half the maximum throughput: each
//! side's publisher is paced ([`bench::due`]) at half the deliveries per second that side
//! reached in the same round's (a).

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use entente_hub::StreamSync;

use crate::commands::bench::{self, JS_SYNC, NatsPair, PubSub, Rates, median};
use crate::commands::bench_rpc::{self, Rpc};
use crate::commands::floor::{self, Floor};
use crate::commands::usage::Cost;

/// Payload of every workload but (f).
const PAYLOAD: usize = 256;
/// Messages under one signature when a publisher runs flat out (the SDK's `batch_max`).
const BATCH: usize = 256;
/// The longest a half-load run may be paced to last, in seconds.
const HALF_LOAD_MAX_SECONDS: u64 = 600;

/// One workload of the suite.
#[derive(Debug, Clone, Copy)]
enum Shape {
    PubSub(PubSub),
    /// Pub/sub with each side's publishers offered half of what they carried in the pub/sub
    /// workload run just before it in the same round.
    HalfLoad(PubSub),
    Rpc(Rpc),
    Durable {
        messages: u64,
        payload: usize,
        sync: StreamSync,
    },
}

/// What one side of one run measured, in the suite's terms.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Side {
    /// Deliveries, requests answered or acknowledged publishes per second.
    per_sec: f64,
    /// Messages each publisher was offered per second; 0 when it ran as fast as it could.
    offered_per_sec: u64,
    /// `per_sec` in megabytes of payload per second.
    mb_per_sec: f64,
    /// Latency percentiles in microseconds: publish to delivery, or the round trip; 0 for
    /// durable publish (not measured per message).
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// Messages or requests lost (for Entente: also duplicated, refused or failed).
    lost: u64,
    cpu_seconds_per_million: f64,
    /// The kernel's part of `cpu_seconds_per_million` (system calls, the network stack).
    kernel_seconds_per_million: f64,
    /// Entente's whole process, nats-server alone.
    peak_rss_bytes: u64,
}

/// One round of one workload.
#[derive(Debug, serde::Serialize)]
struct Sides {
    entente: Side,
    nats: Side,
    /// Absent where the comparison is JetStream.
    nats_tls: Option<Side>,
}

/// One workload's line of the table, with its rounds.
#[derive(Debug, serde::Serialize)]
struct Line {
    id: &'static str,
    name: String,
    /// What `per_sec` counts.
    unit: &'static str,
    /// What `nats` is: core nats-server, or JetStream file storage.
    compared_with: &'static str,
    /// Messages per publisher, or requests.
    messages: u64,
    payload_bytes: usize,
    rounds: Vec<Sides>,
    /// Medians over the rounds; `lost` summed, `peak_rss_bytes` the largest.
    entente: Side,
    nats: Side,
    nats_tls: Option<Side>,
    ratio_to_nats: f64,
    ratio_to_nats_tls: Option<f64>,
}

/// `--suite ROUNDS`: every workload, `rounds` times. `messages`, when given, replaces each
/// workload's own count (per publisher; requests for request/reply).
pub(crate) fn run(rounds: usize, messages: Option<u64>, json: bool) -> Result<ExitCode> {
    if rounds == 0 {
        bail!("`--suite` needs at least 1 round");
    }
    if messages == Some(0) {
        bail!("`--messages` must be at least 1");
    }
    let workloads = workloads(messages);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let mut results: Vec<Vec<Sides>> = workloads.iter().map(|_| Vec::new()).collect();
    let mut clean = true;
    for round in 1..=rounds {
        // What each side's publishers carried in this round's last pub/sub run flat out.
        let mut carried: Option<Rates> = None;
        for ((id, name, shape), done) in workloads.iter().zip(&mut results) {
            if !json {
                eprintln!("round {round}/{rounds}: ({id}) {name}");
            }
            let rates = match shape {
                Shape::HalfLoad(half) => {
                    let Some(full) = carried else {
                        bail!("({id}) has no pub/sub workload before it to take half of");
                    };
                    halved(full, half.messages).with_context(|| format!("({id})"))?
                }
                _ => Rates::same(0),
            };
            // Fresh servers for each run, so that nats-server's memory is this workload's.
            let servers = runtime.block_on(NatsPair::start())?;
            let (sides, ok) = run_one(&runtime, &servers, *shape, rates, round)?;
            runtime.block_on(servers.stop());
            if let Shape::PubSub(pubsub) = shape {
                carried = Some(per_publisher(&sides, *pubsub));
            }
            clean &= ok;
            done.push(sides);
        }
    }
    let lines: Vec<Line> = workloads
        .into_iter()
        .zip(results)
        .map(|((id, name, shape), rounds)| line(id, name, shape, rounds))
        .collect();
    // What the design's cryptography alone allows on these cores (see `floor`).
    let floor = floor::measure(PAYLOAD, BATCH).context("measuring the crypto floor")?;
    if json {
        let entente_lost: u64 = lines.iter().map(|l| l.entente.lost).sum();
        super::print_json(&serde_json::json!({
            "rounds": rounds,
            "workloads": lines,
            "entente_lost": entente_lost,
            "clean": clean,
            "crypto_floor": floor,
        }));
    } else {
        print_table(&lines, rounds);
        print_half_load(&lines);
        print_floor(&floor, &lines);
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Half of what each side carried, for a paced run of `messages` per publisher; an error if
/// a side carried so little that the run would take longer than [`HALF_LOAD_MAX_SECONDS`].
fn halved(full: Rates, messages: u64) -> Result<Rates> {
    let rates = Rates {
        entente: full.entente / 2,
        nats: full.nats / 2,
        nats_tls: full.nats_tls / 2,
    };
    let slowest = rates.entente.min(rates.nats).min(rates.nats_tls);
    if slowest == 0 || messages / slowest > HALF_LOAD_MAX_SECONDS {
        bail!(
            "a side carried too little flat out ({} msgs/s per publisher at most) to be offered \
             half of that for {messages} messages within {HALF_LOAD_MAX_SECONDS} s",
            slowest.saturating_mul(2)
        );
    }
    Ok(rates)
}

/// What each side's publishers carried in `sides`, a run of `shape`: its deliveries per
/// second over its subscribers and publishers.
fn per_publisher(sides: &Sides, shape: PubSub) -> Rates {
    let fan = (shape.publishers.max(1) * shape.subscribers.max(1)) as f64;
    let one = |side: &Side| (side.per_sec / fan).round() as u64;
    Rates {
        entente: one(&sides.entente),
        nats: one(&sides.nats),
        nats_tls: sides.nats_tls.as_ref().map_or(0, one),
    }
}

/// The suite's workloads: id, name, shape.
fn workloads(messages: Option<u64>) -> Vec<(&'static str, String, Shape)> {
    let count = |default: u64| messages.unwrap_or(default);
    let pubsub = |messages, payload, publishers, subscribers| {
        Shape::PubSub(PubSub {
            messages,
            payload,
            publishers,
            subscribers,
        })
    };
    let rpc = |requests, inflight| {
        Shape::Rpc(Rpc {
            requests,
            payload: PAYLOAD,
            inflight,
        })
    };
    let durable = |sync| Shape::Durable {
        messages: count(100_000),
        payload: PAYLOAD,
        sync,
    };
    vec![
        (
            "a",
            "pub/sub 1 -> 1, 256 B".to_owned(),
            pubsub(count(200_000), PAYLOAD, 1, 1),
        ),
        (
            "a-half",
            "(a) at half its throughput, paced".to_owned(),
            Shape::HalfLoad(PubSub {
                messages: count(400_000),
                payload: PAYLOAD,
                publishers: 1,
                subscribers: 1,
            }),
        ),
        (
            "b",
            "pub/sub 1 -> 10, 256 B".to_owned(),
            pubsub(count(50_000), PAYLOAD, 1, floor::FANOUT),
        ),
        (
            "c",
            "pub/sub 10 -> 10, 256 B".to_owned(),
            pubsub(count(10_000), PAYLOAD, 10, floor::FANOUT),
        ),
        (
            "d1",
            "request/reply, 1 in flight, 256 B".to_owned(),
            rpc(count(2_000), 1),
        ),
        (
            "d64",
            "request/reply, 64 in flight, 256 B".to_owned(),
            rpc(count(20_000), floor::REQUESTS_IN_FLIGHT),
        ),
        (
            "e",
            "durable publish, sync every 2 min".to_owned(),
            durable(StreamSync::Every(JS_SYNC)),
        ),
        (
            "e-always",
            "durable publish, sync always".to_owned(),
            durable(StreamSync::Always),
        ),
        (
            "f1k",
            "pub/sub 1 -> 1, 1 KiB".to_owned(),
            pubsub(count(100_000), 1024, 1, 1),
        ),
        (
            "f16k",
            "pub/sub 1 -> 1, 16 KiB".to_owned(),
            pubsub(count(20_000), 16 * 1024, 1, 1),
        ),
    ]
}

/// One round of one workload on every side, pub/sub publishers paced at `rates`; and
/// whether Entente's run was clean.
fn run_one(
    runtime: &tokio::runtime::Runtime,
    servers: &NatsPair,
    shape: Shape,
    rates: Rates,
    round: usize,
) -> Result<(Sides, bool)> {
    Ok(match shape {
        Shape::PubSub(shape) | Shape::HalfLoad(shape) => {
            let r = bench::pubsub_round(runtime, servers, shape, rates, round)?;
            let side = |per_sec, offered_per_sec, latency: bench::Latency, lost, cost: Cost| Side {
                per_sec,
                offered_per_sec,
                mb_per_sec: megabytes(per_sec, shape.payload),
                p50_us: latency.p50,
                p99_us: latency.p99,
                p999_us: latency.p999,
                lost,
                cpu_seconds_per_million: cost.cpu_seconds_per_million,
                kernel_seconds_per_million: cost.kernel_seconds_per_million,
                peak_rss_bytes: cost.peak_rss_bytes,
            };
            let (e, p, t) = (&r.entente, &r.nats_plain, &r.nats_tls);
            let entente_lost = e.lost + e.duplicates + e.rejected + e.publish_errors;
            (
                Sides {
                    entente: side(
                        e.msgs_per_sec,
                        rates.entente,
                        e.latency_us,
                        entente_lost,
                        e.cost,
                    ),
                    nats: side(p.msgs_per_sec, rates.nats, p.latency_us, p.lost, p.cost),
                    nats_tls: Some(side(
                        t.msgs_per_sec,
                        rates.nats_tls,
                        t.latency_us,
                        t.lost,
                        t.cost,
                    )),
                },
                e.clean(),
            )
        }
        Shape::Rpc(shape) => {
            let r = bench_rpc::rpc_round(runtime, servers, shape, round)?;
            let side = |one: &bench_rpc::RpcReport| Side {
                per_sec: one.requests_per_sec,
                offered_per_sec: 0,
                mb_per_sec: megabytes(one.requests_per_sec, shape.payload),
                p50_us: one.latency_us.p50,
                p99_us: one.latency_us.p99,
                p999_us: one.latency_us.p999,
                lost: one.lost + one.failed + one.mismatched,
                cpu_seconds_per_million: one.cost.cpu_seconds_per_million,
                kernel_seconds_per_million: one.cost.kernel_seconds_per_million,
                peak_rss_bytes: one.cost.peak_rss_bytes,
            };
            (
                Sides {
                    entente: side(&r.entente),
                    nats: side(&r.nats_plain),
                    nats_tls: Some(side(&r.nats_tls)),
                },
                r.entente.clean(),
            )
        }
        Shape::Durable {
            messages,
            payload,
            sync,
        } => {
            let side = |one: &bench::DurableRun| Side {
                per_sec: one.msgs_per_sec,
                mb_per_sec: megabytes(one.msgs_per_sec, payload),
                cpu_seconds_per_million: one.cost.cpu_seconds_per_million,
                kernel_seconds_per_million: one.cost.kernel_seconds_per_million,
                peak_rss_bytes: one.cost.peak_rss_bytes,
                ..Side::default()
            };
            let entente = || runtime.block_on(bench::durable_publish(messages, payload, sync));
            let jetstream = || runtime.block_on(bench::jetstream_publish(messages, payload));
            // A refused publish fails the run: what returns was all acknowledged.
            let (e, j) = if round.is_multiple_of(2) {
                let j = jetstream()?;
                (entente()?, j)
            } else {
                let e = entente()?;
                (e, jetstream()?)
            };
            (
                Sides {
                    entente: side(&e),
                    nats: side(&j),
                    nats_tls: None,
                },
                true,
            )
        }
    })
}

fn line(id: &'static str, name: String, shape: Shape, rounds: Vec<Sides>) -> Line {
    let summary = |sides: Vec<Side>| Side {
        per_sec: median(sides.iter().map(|s| s.per_sec)),
        offered_per_sec: median(sides.iter().map(|s| s.offered_per_sec as f64)) as u64,
        mb_per_sec: median(sides.iter().map(|s| s.mb_per_sec)),
        p50_us: median(sides.iter().map(|s| s.p50_us as f64)) as u64,
        p99_us: median(sides.iter().map(|s| s.p99_us as f64)) as u64,
        p999_us: median(sides.iter().map(|s| s.p999_us as f64)) as u64,
        lost: sides.iter().map(|s| s.lost).sum(),
        cpu_seconds_per_million: median(sides.iter().map(|s| s.cpu_seconds_per_million)),
        kernel_seconds_per_million: median(sides.iter().map(|s| s.kernel_seconds_per_million)),
        peak_rss_bytes: sides.iter().map(|s| s.peak_rss_bytes).max().unwrap_or(0),
    };
    let entente = summary(rounds.iter().map(|r| r.entente).collect());
    let nats = summary(rounds.iter().map(|r| r.nats).collect());
    let nats_tls = rounds
        .iter()
        .map(|r| r.nats_tls)
        .collect::<Option<Vec<Side>>>()
        .map(summary);
    let ratio = |other: &Side| {
        if other.per_sec > 0.0 {
            entente.per_sec / other.per_sec
        } else {
            0.0
        }
    };
    let (unit, compared_with, messages, payload_bytes) = match shape {
        Shape::PubSub(s) | Shape::HalfLoad(s) => {
            ("deliveries", "nats-server", s.messages, s.payload)
        }
        Shape::Rpc(s) => ("requests", "nats-server", s.requests, s.payload),
        Shape::Durable {
            messages, payload, ..
        } => ("publishes", "JetStream file storage", messages, payload),
    };
    Line {
        id,
        name,
        unit,
        compared_with,
        messages,
        payload_bytes,
        ratio_to_nats: ratio(&nats),
        ratio_to_nats_tls: nats_tls.as_ref().map(ratio),
        rounds,
        entente,
        nats,
        nats_tls,
    }
}

fn print_table(lines: &[Line], rounds: usize) {
    outln!(
        "Medians of {rounds} round{} (lost: sum; peak RSS: largest). Throughput per second: \
         deliveries (pub/sub), requests (request/reply), acknowledged publishes (durable, \
         against JetStream in the nats column). CPU seconds per million, the kernel's part in \
         parentheses.",
        if rounds == 1 { "" } else { "s" }
    );
    outln!(
        "{:<9} {:<35} {:>10} {:>10} {:>10} {:>7} {:>7} {:>24} {:>42} {:>20} {:>11}",
        "workload",
        "",
        "Entente/s",
        "nats/s",
        "nats+TLS/s",
        "E/nats",
        "E/TLS",
        "MB/s: E / nats / TLS",
        "CPU s/M: E / nats / TLS",
        "RSS MiB: E / n / TLS",
        "lost: E/n/T"
    );
    for l in lines {
        let tls = l.nats_tls.unwrap_or_default();
        let dash = |s: String| if l.nats_tls.is_some() { s } else { "-".into() };
        outln!(
            "{:<9} {:<35} {:>10} {:>10} {:>10} {:>7.3} {:>7} {:>24} {:>42} {:>20} {:>11}",
            l.id,
            l.name,
            thousands(l.entente.per_sec),
            thousands(l.nats.per_sec),
            dash(thousands(tls.per_sec)),
            l.ratio_to_nats,
            dash(format!("{:.3}", l.ratio_to_nats_tls.unwrap_or(0.0))),
            format!(
                "{} / {} / {}",
                short(l.entente.mb_per_sec),
                short(l.nats.mb_per_sec),
                dash(short(tls.mb_per_sec))
            ),
            format!(
                "{} / {} / {}",
                cpu(&l.entente),
                cpu(&l.nats),
                dash(cpu(&tls))
            ),
            format!(
                "{} / {} / {}",
                mib(l.entente.peak_rss_bytes),
                mib(l.nats.peak_rss_bytes),
                dash(mib(tls.peak_rss_bytes))
            ),
            format!(
                "{}/{}/{}",
                l.entente.lost,
                l.nats.lost,
                dash(tls.lost.to_string())
            ),
        );
    }
    outln!(
        "Latency p50 / p99 / p99.9 (medians of the rounds): publish to delivery (pub/sub), the \
         round trip (request/reply)."
    );
    outln!(
        "{:<9} {:<35} {:>30} {:>30} {:>30} {:>10}",
        "workload",
        "",
        "Entente",
        "nats",
        "nats+TLS",
        "E/nats p50"
    );
    for l in lines.iter().filter(|l| l.entente.p50_us > 0) {
        let tls = l
            .nats_tls
            .map_or_else(|| "-".to_owned(), |s| percentiles(&s));
        let ratio = if l.nats.p50_us > 0 {
            format!("{:.2}", l.entente.p50_us as f64 / l.nats.p50_us as f64)
        } else {
            "-".to_owned()
        };
        outln!(
            "{:<9} {:<35} {:>30} {:>30} {:>30} {:>10}",
            l.id,
            l.name,
            percentiles(&l.entente),
            percentiles(&l.nats),
            tls,
            ratio
        );
    }
}

/// The latency target of the paced lines: p99 under 1 ms at half the maximum throughput.
fn print_half_load(lines: &[Line]) {
    for l in lines.iter().filter(|l| l.entente.offered_per_sec > 0) {
        let one = |side: &Side| {
            format!(
                "p99 {} at {} offered ({})",
                human_us(side.p99_us),
                thousands(side.offered_per_sec as f64),
                if side.p99_us < 1000 { "met" } else { "not met" }
            )
        };
        let tls = l.nats_tls.as_ref().map_or_else(|| "-".to_owned(), one);
        outln!(
            "Target p99 < 1 ms at half the maximum, ({}): Entente {}; nats {}; nats+TLS {}.",
            l.id,
            one(&l.entente),
            one(&l.nats),
            tls
        );
    }
}

/// A side's CPU seconds per million, the kernel's part in parentheses.
fn cpu(side: &Side) -> String {
    format!(
        "{} ({})",
        short(side.cpu_seconds_per_million),
        short(side.kernel_seconds_per_million)
    )
}

/// A side's latency percentiles, `p50 / p99 / p99.9`.
fn percentiles(side: &Side) -> String {
    format!(
        "{} / {} / {}",
        human_us(side.p50_us),
        human_us(side.p99_us),
        human_us(side.p999_us)
    )
}

/// `per_sec` messages of `payload` bytes, in megabytes per second.
fn megabytes(per_sec: f64, payload: usize) -> f64 {
    per_sec * payload as f64 / 1e6
}

/// `--crypto-floor`: the floor alone, for `payload`-byte messages, with its primitives.
pub(crate) fn floor_only(payload: usize, json: bool) -> Result<ExitCode> {
    let floor = floor::measure(payload, BATCH).context("measuring the crypto floor")?;
    if json {
        super::print_json(&floor);
    } else {
        print_floor(&floor, &[]);
        let p = &floor.primitives;
        outln!(
            "  primitives (ns): AES-256-GCM seal {:.0}, open {:.0} ({} B); envelope hash {:.0}; \
             batch digest per envelope {:.0}; audit root per envelope {:.0}; Ed25519 sign {:.0}, \
             verify {:.0}; TLS record seal {:.2}/B, open {:.2}/B; \
             {:.0} B on the wire per message",
            p.aes_gcm_seal_payload,
            p.aes_gcm_open_payload,
            floor.payload_bytes,
            p.envelope_hash,
            p.batch_digest_per_envelope,
            p.merkle_root_per_envelope,
            p.ed25519_sign,
            p.ed25519_verify,
            p.tls_record_seal_per_byte,
            p.tls_record_open_per_byte,
            floor.wire_bytes_per_message,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The crypto floor, and each workload's nats figure against the ceiling it sets.
fn print_floor(floor: &Floor, lines: &[Line]) {
    outln!(
        "Crypto floor, {} B messages in batches of {} on {} cores (the design's cryptography \
         alone, per message): publisher {:.0} ns, hub {:.0} ns, subscriber {:.0} ns, TLS \
         both hops {:.0} ns; {:.0} ns in all: at most {} msgs/s 1 -> 1, {} deliveries/s to \
         {} subscribers each. Request/reply: a round trip takes at least {:.1} µs; at most {} \
         round trips/s with many in flight.",
        floor.payload_bytes,
        floor.batch,
        floor.cores,
        floor.publisher_ns,
        floor.hub_ns,
        floor.subscriber_ns,
        floor.tls_ns,
        floor.total_ns,
        thousands(floor.ceiling_msgs_per_sec),
        thousands(floor.fanout_ceiling_deliveries_per_sec),
        floor.fanout,
        floor.request_reply_rtt_floor_ns / 1000.0,
        thousands(floor.request_reply_ceiling_per_sec),
    );
    for l in lines {
        let ceiling = match l.id {
            "a" => floor.ceiling_msgs_per_sec,
            "b" | "c" => floor.fanout_ceiling_deliveries_per_sec,
            _ => continue,
        };
        if l.nats.per_sec > 0.0 {
            outln!(
                "  ({}): ceiling / nats = {:.3}, ceiling / nats+TLS = {:.3}",
                l.id,
                ceiling / l.nats.per_sec,
                l.nats_tls.map_or(0.0, |t| ceiling / t.per_sec.max(1.0))
            );
        }
    }
}

/// `1234567.0` as `1235 k`.
fn thousands(per_sec: f64) -> String {
    format!("{:.1} k", per_sec / 1000.0)
}

/// CPU seconds per million or megabytes per second, to three significant digits or so.
fn short(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.0}")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / f64::from(1u32 << 20))
}

/// Microseconds below a millisecond, milliseconds below a second, seconds above.
fn human_us(us: u64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_of_the_issue_is_in_the_suite() {
        let ids: Vec<&str> = workloads(None).iter().map(|w| w.0).collect();
        assert_eq!(
            ids,
            [
                "a", "a-half", "b", "c", "d1", "d64", "e", "e-always", "f1k", "f16k"
            ]
        );
    }

    #[test]
    fn a_message_count_replaces_every_workloads_own() {
        for (_, _, shape) in workloads(Some(7)) {
            let messages = match shape {
                Shape::PubSub(s) | Shape::HalfLoad(s) => s.messages,
                Shape::Rpc(s) => s.requests,
                Shape::Durable { messages, .. } => messages,
            };
            assert_eq!(messages, 7);
        }
    }

    #[test]
    fn a_half_load_is_half_of_each_side_unless_a_side_carried_next_to_nothing() {
        let full = Rates {
            entente: 300_001,
            nats: 1_000_000,
            nats_tls: 700_000,
        };
        assert!(matches!(
            halved(full, 400_000),
            Ok(Rates {
                entente: 150_000,
                nats: 500_000,
                nats_tls: 350_000
            })
        ));
        // Nothing carried, or so little that 400 000 messages would take over ten minutes.
        for entente in [0, 1, 1_300] {
            let half = halved(Rates { entente, ..full }, 400_000);
            assert!(
                half.is_err_and(|e| e.to_string().contains("carried too little")),
                "{entente}"
            );
        }
        assert!(
            halved(
                Rates {
                    entente: 1_400,
                    ..full
                },
                400_000
            )
            .is_ok()
        );
    }

    #[test]
    fn latencies_read_in_their_unit() {
        assert_eq!(human_us(250), "250 µs");
        assert_eq!(human_us(12_345), "12.3 ms");
        assert_eq!(human_us(3_761_200), "3.76 s");
    }
}
