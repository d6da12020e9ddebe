//! `entente bench --request-reply INFLIGHT`: request/reply through a real hub, and with
//! `--compare-nats` through nats-server too.
//!
//! Two agents of one segment (the hub's base policies let agents send requests to agents of
//! their own segment) on their own mTLS connections: the responder serves its direct channel
//! ([`Client::serve_direct`]) and answers each request with its payload, the requester keeps
//! `INFLIGHT` requests ([`Client::request`]) outstanding until `--messages` were answered. A
//! round trip is the time from the `request` call to the verified reply; throughput is
//! requests answered per second. Each request and its reply are sealed, signed and
//! authorized like any message, and the hub grants each request one reply.
//!
//! nats-server runs the same shape the way NATS clients do request/reply: a responder
//! subscribed to a subject publishes each message back to its reply subject, and the
//! requester's replies come on one wildcard inbox subscription (`_INBOX.bench.*`).

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use entente_client::{Client, ClientStats, Request};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;

use crate::commands::bench::{
    Latency, NatsPair, exit_code, mebibytes, median, nanos, print_medians,
};
use crate::commands::nats;
use crate::commands::scratch::ScratchHub;
use crate::commands::usage::{Cost, Meter};

const TRUST_DOMAIN: &str = "bench.entente.local";
/// The subject nats-server's responder serves.
const SUBJECT: &str = "bench.rpc";
/// How long a request may wait for its reply.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Send time and sequence number at the head of every request.
const HEADER: usize = 16;

/// The request/reply workload: `requests` of `payload` bytes, `inflight` outstanding.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Rpc {
    pub(crate) requests: u64,
    pub(crate) payload: usize,
    pub(crate) inflight: usize,
}

/// What one request/reply run measured, through Entente or nats-server.
#[derive(Debug, serde::Serialize)]
pub(crate) struct RpcReport {
    requests: u64,
    inflight: usize,
    payload_bytes: usize,
    /// Requests answered with their own payload.
    pub(crate) answered: u64,
    /// Requests that failed (a refusal, a timeout).
    pub(crate) failed: u64,
    /// Replies that did not carry their request's payload, or came twice.
    pub(crate) mismatched: u64,
    /// Requests not answered.
    pub(crate) lost: u64,
    seconds: f64,
    pub(crate) requests_per_sec: f64,
    /// Round trips, request to reply.
    pub(crate) latency_us: Latency,
    /// CPU and memory over the run, per million requests answered.
    pub(crate) cost: Cost,
    /// Entente only: requests and replies per signed batch (each batch is one Ed25519
    /// signature to make and one to verify).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) per_batch: Option<PerBatch>,
}

/// Messages per signed batch, on each side of an Entente run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct PerBatch {
    requests: f64,
    replies: f64,
    /// The clients' `round_trip_batch_min`: the least limit on requests, or replies, per batch
    /// (the SDK allows more with more in flight).
    round_trip_batch_min: usize,
}

/// One round of `--request-reply` with `--compare-nats`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct RpcRound {
    pub(crate) entente: RpcReport,
    pub(crate) nats_plain: RpcReport,
    pub(crate) nats_tls: RpcReport,
}

/// `--request-reply INFLIGHT`: one run through Entente, or with `compare` that many rounds
/// through Entente and nats-server, plain and with TLS.
pub(crate) fn run(shape: Rpc, compare: Option<usize>, json: bool) -> Result<ExitCode> {
    if shape.payload < HEADER {
        bail!("`--payload` must be at least {HEADER} bytes (send time and sequence number)");
    }
    if shape.requests == 0 || shape.inflight == 0 {
        bail!("`--messages` and `--request-reply` must be at least 1");
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let Some(rounds) = compare else {
        let report = runtime.block_on(entente(shape))?;
        if json {
            super::print_json(&report);
        } else {
            print_one("Entente", &report);
        }
        return Ok(exit_code(report.clean()));
    };
    if rounds == 0 {
        bail!("`--compare-nats` needs at least 1 round");
    }
    let servers = runtime.block_on(NatsPair::start())?;
    let mut results = Vec::new();
    for round in 1..=rounds {
        let one = rpc_round(&runtime, &servers, shape, round)?;
        if !json {
            outln!("round {round}:");
            print_one("Entente", &one.entente);
            print_one("nats", &one.nats_plain);
            print_one("nats+TLS", &one.nats_tls);
        }
        results.push(one);
    }
    runtime.block_on(servers.stop());
    let medians = (
        median(results.iter().map(|r| r.entente.requests_per_sec)),
        median(results.iter().map(|r| r.nats_plain.requests_per_sec)),
        median(results.iter().map(|r| r.nats_tls.requests_per_sec)),
    );
    let head = serde_json::json!({
        "workload": format!("request/reply, {} in flight", shape.inflight),
        "requests": shape.requests,
        "inflight": shape.inflight,
        "payload_bytes": shape.payload,
    });
    print_medians(json, head, &results, medians, "req")?;
    Ok(exit_code(results.iter().all(|r| r.entente.clean())))
}

/// One round of `shape` through Entente, nats and nats+TLS; who goes first rotates with
/// `round`.
pub(crate) fn rpc_round(
    runtime: &tokio::runtime::Runtime,
    servers: &NatsPair,
    shape: Rpc,
    round: usize,
) -> Result<RpcRound> {
    let nats_run = |tls: bool| {
        let (server, client) = servers.server(tls);
        runtime
            .block_on(nats::request_reply(
                server,
                client,
                SUBJECT,
                (shape.requests, shape.payload, shape.inflight),
                Duration::from_secs(2),
            ))
            .map(|run| nats_report(&run, shape))
    };
    let (mut entente, mut plain, mut secure) = (None, None, None);
    for turn in 0..3 {
        match (round + turn) % 3 {
            0 => entente = Some(runtime.block_on(self::entente(shape))?),
            1 => plain = Some(nats_run(false)?),
            _ => secure = Some(nats_run(true)?),
        }
    }
    let (Some(entente), Some(nats_plain), Some(nats_tls)) = (entente, plain, secure) else {
        bail!("a run of round {round} did not happen");
    };
    Ok(RpcRound {
        entente,
        nats_plain,
        nats_tls,
    })
}

/// One run on a fresh scratch hub.
pub(crate) async fn entente(shape: Rpc) -> Result<RpcReport> {
    let Rpc {
        requests,
        payload,
        inflight,
    } = shape;
    let scratch = ScratchHub::start_for_bench(TRUST_DOMAIN, |_| {}).await?;
    let addr = scratch.addr();
    let mut clients = Vec::new();
    for name in ["requester", "responder"] {
        let (_, token) = scratch.token("demo", name).await?;
        let identity = entente_client::enroll(addr, &scratch.trust, token.as_str()).await?;
        clients
            .push(Client::connect(identity, addr, crate::commands::bench::client_options()).await?);
    }
    let [requester, responder] = clients.as_slice() else {
        bail!("the clients did not connect");
    };
    let target = responder.principal().clone();
    let mut served = responder.serve_direct().await?;
    // Each reply is queued and the next request taken at once, as nats' responder publishes
    // its replies; the hub's acks are awaited alongside, as a server would. A reply that
    // fails or is refused leaves its request unanswered: the requester counts it as failed.
    let answering = tokio::spawn(async move {
        let mut acks = FuturesUnordered::new();
        loop {
            tokio::select! {
                item = served.next() => {
                    let Some(item) = item else { break };
                    let Ok(Request { message, responder, .. }) = item else {
                        continue;
                    };
                    if let Ok(ack) = responder.enqueue_reply(message.payload).await {
                        acks.push(ack);
                    }
                }
                Some(_answer) = acks.next() => {}
            }
        }
    });
    // Warm up: directory lookups, sender keys and the reply subscription are not measured.
    requester
        .request(&target, vec![0u8; payload], TIMEOUT)
        .await
        .context("the warm-up request was not answered")?;

    let next = Arc::new(AtomicU64::new(0));
    let before = (requester.stats(), responder.stats());
    let meter = Meter::start(&[std::process::id()]);
    let start = Instant::now();
    let askers: Vec<_> = (0..inflight)
        .map(|_| {
            let (requester, target, next) = (requester.clone(), target.clone(), Arc::clone(&next));
            tokio::spawn(async move { ask(&requester, &target, &next, requests, payload).await })
        })
        .collect();
    let mut asked = Asked::default();
    for asker in askers {
        let one = asker.await.context("a requester task failed")?;
        asked.failed += one.failed;
        asked.mismatched += one.mismatched;
        asked.round_trips_ns.extend(one.round_trips_ns);
    }
    let elapsed = start.elapsed();
    let usage = meter.stop().first().copied().unwrap_or_default();
    let after = (requester.stats(), responder.stats());
    answering.abort();
    for client in &clients {
        client.close().await;
    }
    scratch.shutdown().await?;

    let mut round_trips = asked.round_trips_ns;
    round_trips.sort_unstable();
    let answered = round_trips.len() as u64;
    let seconds = elapsed.as_secs_f64();
    // In a clean run every request was sent and every answered one had its reply sent (a
    // request that failed waiting for room in the queue would make this a little high).
    let sent = answered + asked.failed + asked.mismatched;
    let per_batch = PerBatch {
        requests: per_batch(sent, &before.0, &after.0),
        replies: per_batch(answered + asked.mismatched, &before.1, &after.1),
        round_trip_batch_min: crate::commands::bench::client_options().round_trip_batch_min_value(),
    };
    Ok(RpcReport {
        requests,
        inflight,
        payload_bytes: payload,
        answered,
        failed: asked.failed,
        mismatched: asked.mismatched,
        lost: requests.saturating_sub(answered),
        seconds,
        requests_per_sec: answered as f64 / seconds,
        latency_us: Latency::of_nanos(&round_trips),
        cost: Cost::in_process(usage, answered),
        per_batch: Some(per_batch),
    })
}

/// `messages` per signed batch a client sent between two snapshots of its counters.
fn per_batch(messages: u64, before: &ClientStats, after: &ClientStats) -> f64 {
    let batches = after.batches_sent.saturating_sub(before.batches_sent);
    if batches == 0 {
        0.0
    } else {
        messages as f64 / batches as f64
    }
}

// === impl RpcReport ===

impl RpcReport {
    /// Every request was answered with its payload.
    pub(crate) fn clean(&self) -> bool {
        self.lost == 0 && self.failed == 0 && self.mismatched == 0
    }
}

/// What one requester task saw.
#[derive(Debug, Default)]
struct Asked {
    failed: u64,
    mismatched: u64,
    round_trips_ns: Vec<u64>,
}

/// Takes request numbers from `next` until `requests` were taken, one request at a time.
async fn ask(
    requester: &Client,
    target: &entente_client::Principal,
    next: &AtomicU64,
    requests: u64,
    payload: usize,
) -> Asked {
    let mut out = Asked::default();
    let start = Instant::now();
    let mut body = vec![0xA5u8; payload];
    loop {
        let number = next.fetch_add(1, Ordering::Relaxed);
        if number >= requests {
            return out;
        }
        if let Some(head) = body.get_mut(..HEADER) {
            let (time, seq) = head.split_at_mut(8);
            time.copy_from_slice(&nanos(start.elapsed()).to_be_bytes());
            seq.copy_from_slice(&number.to_be_bytes());
        }
        let sent = Instant::now();
        match requester.request(target, body.clone(), TIMEOUT).await {
            Ok(reply) if reply.payload == body => out.round_trips_ns.push(nanos(sent.elapsed())),
            Ok(_) => out.mismatched += 1,
            Err(_) => out.failed += 1,
        }
    }
}

fn nats_report(run: &nats::RequestRun, shape: Rpc) -> RpcReport {
    RpcReport {
        requests: run.requests,
        inflight: shape.inflight,
        payload_bytes: shape.payload,
        answered: run.answered,
        failed: 0,
        mismatched: run.mismatched,
        lost: run.requests.saturating_sub(run.answered),
        seconds: run.seconds,
        requests_per_sec: if run.seconds > 0.0 {
            run.answered as f64 / run.seconds
        } else {
            0.0
        },
        latency_us: Latency::of_micros(&run.latencies_us),
        cost: Cost::server_and_clients(run.server, run.client, run.answered),
        per_batch: None,
    }
}

fn print_one(who: &str, r: &RpcReport) {
    outln!(
        "  {who}: {} requests of {} B, {} in flight: {:.0} req/s, round trip p50 {} µs, p99 {} \
         µs, p99.9 {} µs; {} lost, {} failed, {} mismatched; {:.2} CPU s per million, peak RSS {}",
        r.requests,
        r.payload_bytes,
        r.inflight,
        r.requests_per_sec,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.lost,
        r.failed,
        r.mismatched,
        r.cost.cpu_seconds_per_million,
        mebibytes(r.cost.peak_rss_bytes)
    );
    if let Some(per_batch) = r.per_batch {
        outln!(
            "    {:.1} requests and {:.1} replies per signed batch (round_trip_batch_min {})",
            per_batch.requests,
            per_batch.replies,
            per_batch.round_trip_batch_min
        );
    }
}
