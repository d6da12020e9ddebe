//! The attackers of `entente bench --compare-attack`: they run against the bench's hub while
//! it measures an honest publisher and subscriber, so that the honest throughput can be
//! compared with a round without them (docs/BENCHMARKS.md, docs/THREAT_MODEL.md).
//!
//! - two flooders, two connections each, publishing as fast as they can, far over their rate
//!   limit ([`AGENT_RATE`] in the attacked round);
//! - a replayer sending one batch again and again (until the hub quarantines it);
//! - a prober subscribing to another segment's channels (until the hub quarantines it);
//! - [`STALLED`] connections that never start a TLS handshake (slowloris);
//! - a client opening a connection and sending garbage every 10 ms.
//!
//! The attackers run in the bench's process: the CPU they use themselves is part of what the
//! honest agents lose on this machine.

use std::time::Duration;

use anyhow::{Context as _, Result};
use entente_client::danger::danger_publish_raw;
use entente_client::{Client, ClientOptions, ErrorKind, Identity};
use entente_crypto::{Sealer, SealerOptions};
use entente_hub::Rate;
use entente_types::Channel;
use entente_wire::Publish;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::commands::demo::now_ms;
use crate::commands::scratch::ScratchHub;

/// Every agent's rate limit in the rounds of `--compare-attack` (bursts of twice that): the
/// honest publisher is offered less, the flooders try far more.
pub(crate) const AGENT_RATE: Rate = Rate {
    per_second: 5_000,
    burst: 10_000,
};

/// The offered rate of the honest publisher when `--rate` is not given.
pub(crate) const HONEST_RATE: u64 = 4_000;

/// How many connections stall without a handshake.
const STALLED: usize = 200;

/// What the attackers did and what became of it.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct Attacked {
    pub(crate) flood_published: u64,
    pub(crate) flood_refused: u64,
    pub(crate) replays_refused: u64,
    pub(crate) probes_refused: u64,
    pub(crate) stalled_connections: u64,
    pub(crate) garbage_connections: u64,
    /// Agents the hub quarantined meanwhile.
    pub(crate) quarantined: u64,
}

/// The running attackers.
pub(crate) struct Attackers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Attacked>>,
    stalled: Vec<TcpStream>,
}

impl std::fmt::Debug for Attackers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attackers")
            .field("tasks", &self.tasks.len())
            .field("stalled", &self.stalled.len())
            .finish()
    }
}

impl Attackers {
    /// Enrolls the attackers on `scratch` and lets them loose.
    pub(crate) async fn start(scratch: &ScratchHub) -> Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        for name in ["flooder-1", "flooder-2"] {
            let (identity, client) = agent(scratch, name).await?;
            let second = Client::connect(identity, scratch.addr(), ClientOptions::default())
                .await
                .context("connecting a flooder again")?;
            for client in [client, second] {
                tasks.push(tokio::spawn(flood(client, stopped.clone())));
            }
        }
        let (identity, client) = agent(scratch, "replayer").await?;
        tasks.push(tokio::spawn(replay(identity, client, stopped.clone())));
        let (_, client) = agent(scratch, "prober").await?;
        tasks.push(tokio::spawn(probe(client, stopped.clone())));
        tasks.push(tokio::spawn(garbage(scratch.addr(), stopped)));
        let mut stalled = Vec::with_capacity(STALLED);
        for _ in 0..STALLED {
            stalled.push(TcpStream::connect(scratch.addr()).await?);
        }
        Ok(Self {
            stop,
            tasks,
            stalled,
        })
    }

    /// Stops the attackers; what they did, with what the hub made of it.
    pub(crate) async fn stop(self, scratch: &ScratchHub) -> Attacked {
        let _ = self.stop.send(true);
        let mut total = Attacked {
            stalled_connections: self.stalled.len() as u64,
            ..Attacked::default()
        };
        for task in self.tasks {
            if let Ok(one) = task.await {
                total.flood_published += one.flood_published;
                total.flood_refused += one.flood_refused;
                total.replays_refused += one.replays_refused;
                total.probes_refused += one.probes_refused;
                total.garbage_connections += one.garbage_connections;
            }
        }
        total.quarantined = scratch.hub.stats().quarantines;
        total
    }
}

async fn agent(scratch: &ScratchHub, name: &str) -> Result<(Identity, Client)> {
    let (_, token) = scratch.token("demo", name).await?;
    let identity = entente_client::enroll(scratch.addr(), &scratch.trust, token.as_str()).await?;
    let client = Client::connect(identity.clone(), scratch.addr(), ClientOptions::default())
        .await
        .with_context(|| format!("connecting the attacker `{name}`"))?;
    Ok((identity, client))
}

/// Publishes without waiting for each answer (as the SDK's batching allows), up to
/// [`FLOOD_WINDOW`] messages in flight, as long as it is not stopped.
async fn flood(client: Client, stopped: watch::Receiver<bool>) -> Attacked {
    let mut tally = Attacked::default();
    let payload = vec![0u8; 256];
    let mut pending = Vec::with_capacity(FLOOD_WINDOW);
    'flood: while !*stopped.borrow() {
        for _ in 0..FLOOD_WINDOW {
            match client.enqueue("demo.flood", payload.clone()).await {
                Ok(ack) => pending.push(ack),
                Err(_) => break 'flood,
            }
        }
        for ack in pending.drain(..) {
            match ack.await {
                Ok(()) => tally.flood_published += 1,
                Err(e) if e.kind() == ErrorKind::Limited => tally.flood_refused += 1,
                Err(_) => break 'flood,
            }
        }
    }
    tally
}

/// How many messages a flooder has in flight at once.
const FLOOD_WINDOW: usize = 1024;

async fn replay(identity: Identity, client: Client, stopped: watch::Receiver<bool>) -> Attacked {
    let mut tally = Attacked::default();
    let Ok(channel) = Channel::parse("demo.orders") else {
        return tally;
    };
    let Ok((mut sealer, _)) = Sealer::new(
        identity.principal().clone(),
        identity.key_bundle().epoch(),
        identity.message_keys().clone(),
        channel,
        &[],
        SealerOptions::default(),
        now_ms(),
    ) else {
        return tally;
    };
    let Ok(batch) = sealer.seal_batch(&[b"pay 100"], None, now_ms()) else {
        return tally;
    };
    let mut request_id = 0;
    while !*stopped.borrow() {
        request_id += 1;
        let publish = Publish {
            request_id,
            sender_keys: Vec::new(),
            batches: vec![batch.clone()],
            purpose: String::new(),
        };
        match danger_publish_raw(&client, publish).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Refused | ErrorKind::Limited) => {
                tally.replays_refused += 1;
            }
            Err(_) => break,
        }
    }
    tally
}

async fn probe(client: Client, stopped: watch::Receiver<bool>) -> Attacked {
    let mut tally = Attacked::default();
    let mut k = 0u64;
    while !*stopped.borrow() {
        k += 1;
        match client.subscribe(&format!("ops.secrets.s{k}")).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Denied | ErrorKind::Limited) => {
                if e.to_string().contains("quarantined") {
                    break;
                }
                tally.probes_refused += 1;
            }
            Err(_) => break,
        }
    }
    tally
}

async fn garbage(addr: std::net::SocketAddr, mut stopped: watch::Receiver<bool>) -> Attacked {
    let mut tally = Attacked::default();
    while !*stopped.borrow() {
        if let Ok(mut tcp) = TcpStream::connect(addr).await {
            let _ = tcp
                .write_all(b"\x16\x03\x01\xff\xffnot a client hello")
                .await;
            let mut buf = [0u8; 64];
            let _ = tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await;
            tally.garbage_connections += 1;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
            _ = stopped.changed() => break,
        }
    }
    tally
}
