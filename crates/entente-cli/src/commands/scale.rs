//! `entente bench-scale`: many idle mutual-TLS sessions on one hub, and handshakes per second.
//!
//! The hub runs in a process of its own (`entente hub start` on a temporary data directory
//! and a loopback port), so that its memory can be read alone. The bench enrolls `--agents`
//! agents over the network with join tokens from the hub's administrator, reads the hub's
//! resident set (`VmRSS` in `/proc/PID/status`), opens `--connections` SDK [`Client`]s —
//! each its own TCP connection, TLS 1.3 handshake with the agent's certificate and framed
//! session (PROTOCOL.md §9.1), or with `--http2` HTTP/2 connection and session stream; the
//! agents' identities are used in turn, since the hub allows one principal many connections
//! — leaves them idle, and reads the resident set again. The difference over the number of
//! connections is the idle memory per connection.
//!
//! Then it measures handshakes per second on one agent's identity: connect, TLS 1.3 with the
//! client certificate, an HTTP/2 preface, the hub's first frame (the hub has re-checked the
//! certificate and serves the connection), close. Once without resumption (as the SDK
//! connects: no ticket kept, none asked for) and once resuming the tickets the hub issues.
//!
//! The hub's process is killed and its directory deleted on every way out: errors, Ctrl-C
//! and SIGTERM included.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use entente_ca::TrustBundle;
use entente_client::{Client, ClientOptions, Identity, SessionTransport};
use entente_types::AgentId;
use futures_util::StreamExt as _;
use rustls::client::{Resumption, TicketRequest};
use rustls::{ClientConfig, HandshakeKind};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    /// Idle connections to open at once.
    pub(crate) connections: usize,
    /// Agents to enroll; the connections use their identities in turn.
    pub(crate) agents: usize,
    /// Handshakes to time in each mode.
    pub(crate) handshakes: u64,
    /// Handshakes in flight at once.
    pub(crate) concurrency: usize,
    /// How the clients' sessions travel.
    pub(crate) transport: SessionTransport,
}

/// The target for idle memory per connection.
const TARGET_BYTES: u64 = 16 * 1024;
/// Connections being opened at once while the idle connections ramp up.
const OPENING: usize = 64;
/// Enrollments at once.
const ENROLLING: usize = 8;
/// How long the hub is left alone before its memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a join token of the bench lives.
const TOKEN_TTL: Duration = Duration::from_secs(600);
/// How long one handshake may take before the bench gives up on it.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(20);
/// An HTTP/2 client preface and an empty SETTINGS frame: the hub answers with its own
/// SETTINGS once it serves the connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// What a run measured.
#[derive(Debug, serde::Serialize)]
struct Report {
    /// `framed` (length-prefixed session frames) or `http2` (a gRPC stream over HTTP/2).
    transport: &'static str,
    connections: usize,
    agents: usize,
    /// Connections whose session the hub opened.
    connected: usize,
    /// Of those, still open once the hub had been left alone.
    idle: usize,
    connect_seconds: f64,
    connections_per_second: f64,
    hub_pid: u32,
    /// The hub's resident set after enrollment, before the connections.
    hub_rss_before_kib: u64,
    /// With every connection open and idle.
    hub_rss_idle_kib: u64,
    /// After every connection was closed again.
    hub_rss_closed_kib: u64,
    /// `(idle − before) / connections`.
    idle_bytes_per_connection: u64,
    target_bytes_per_connection: u64,
    target_met: bool,
    /// The bench's own resident set with every connection open (the SDK clients).
    client_rss_kib: u64,
    handshakes: Handshakes,
}

#[derive(Debug, serde::Serialize)]
struct Handshakes {
    concurrency: usize,
    /// No ticket kept, none asked for: every handshake in full, as the SDK connects.
    full: Rate,
    /// Each handshake resumes a ticket the hub issued on an earlier one.
    resumed: Rate,
}

#[derive(Debug, serde::Serialize)]
struct Rate {
    handshakes: u64,
    seconds: f64,
    per_second: f64,
    /// How many the hub resumed.
    resumed: u64,
}

pub(crate) fn run(scale: Scale, json: bool) -> Result<ExitCode> {
    if scale.connections == 0 || scale.agents == 0 || scale.concurrency == 0 {
        bail!("`--connections`, `--agents` and `--concurrency` must be at least 1");
    }
    let agents = scale.agents.min(scale.connections);
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    // Declared after `dir`, so dropped before it: the hub dies before its directory goes.
    let hub = HubProcess::start(dir.path())?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let stop = stop_signal().context("listening for stop signals")?;
        tokio::select! {
            report = measure(&hub, Scale { agents, ..scale }) => report,
            () = stop => Err(anyhow!("interrupted")),
        }
    });
    // The clients go before the hub.
    drop(runtime);
    drop(hub);
    let report = report?;
    if json {
        super::print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

async fn measure(hub: &HubProcess, scale: Scale) -> Result<Report> {
    let trust = TrustBundle::from_pem(
        &std::fs::read_to_string(&hub.ca)
            .with_context(|| format!("reading `{}`", hub.ca.display()))?,
    )?;
    let identities = enroll(hub, &trust, scale.agents).await?;

    tokio::time::sleep(SETTLE).await;
    let before = rss_kib(hub.pid())?;

    let options = ClientOptions::new()
        .renew(false)
        .connect_timeout(Duration::from_secs(120))
        .session_transport(scale.transport);
    let started = Instant::now();
    let opened: Vec<_> =
        futures_util::stream::iter(0..scale.connections)
            .map(|i| {
                let identity = identities
                    .get(i % identities.len())
                    .cloned()
                    .ok_or_else(|| anyhow!("no identity"));
                let options = options.clone();
                async move {
                    Ok::<_, anyhow::Error>(Client::connect(identity?, hub.addr, options).await?)
                }
            })
            .buffer_unordered(OPENING)
            .collect()
            .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    let mut clients = Vec::with_capacity(opened.len());
    let mut first_error = None;
    for result in opened {
        match result {
            Ok(client) => clients.push(client),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        bail!(
            "{} of {} connections opened; the first failure: {e:#}",
            clients.len(),
            scale.connections
        );
    }

    tokio::time::sleep(SETTLE).await;
    let idle_rss = rss_kib(hub.pid())?;
    let client_rss = rss_kib(std::process::id())?;
    let idle = clients.iter().filter(|c| !c.is_closed()).count();
    futures_util::future::join_all(clients.iter().map(Client::close)).await;
    let connected = clients.len();
    drop(clients);
    tokio::time::sleep(SETTLE).await;
    let closed_rss = rss_kib(hub.pid())?;

    let identity = identities
        .first()
        .ok_or_else(|| anyhow!("no agent enrolled"))?;
    let full = handshakes(hub.addr, &trust, identity, false, scale).await?;
    let resumed = handshakes(hub.addr, &trust, identity, true, scale).await?;

    let per_connection = idle_rss.saturating_sub(before).saturating_mul(1024)
        / u64::try_from(scale.connections).unwrap_or(u64::MAX);
    Ok(Report {
        transport: match scale.transport {
            SessionTransport::Http2 => "http2",
            _ => "framed",
        },
        connections: scale.connections,
        agents: scale.agents,
        connected,
        idle,
        connect_seconds,
        connections_per_second: rate(connected as f64, connect_seconds),
        hub_pid: hub.pid(),
        hub_rss_before_kib: before,
        hub_rss_idle_kib: idle_rss,
        hub_rss_closed_kib: closed_rss,
        idle_bytes_per_connection: per_connection,
        target_bytes_per_connection: TARGET_BYTES,
        target_met: per_connection <= TARGET_BYTES,
        client_rss_kib: client_rss,
        handshakes: Handshakes {
            concurrency: scale.concurrency,
            full,
            resumed,
        },
    })
}

/// Enrolls `count` agents `scale/aN` with join tokens from the hub's administrator.
async fn enroll(hub: &HubProcess, trust: &TrustBundle, count: usize) -> Result<Vec<Identity>> {
    let admin = Identity::load(&hub.admin, SystemTime::now())
        .with_context(|| format!("loading the identity in `{}`", hub.admin.display()))?;
    let admin = Client::connect(admin, hub.addr, ClientOptions::new().renew(false))
        .await
        .context("connecting as the hub's administrator")?;
    let enrolled: Vec<Result<Identity>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let admin = &admin;
            async move {
                let agent = AgentId::new(trust.trust_domain(), "scale", &format!("a{i}"))?;
                let (token, _) = admin
                    .create_token(&agent, TOKEN_TTL)
                    .await
                    .with_context(|| format!("creating a join token for `{agent}`"))?;
                entente_client::enroll(hub.addr, trust, &token)
                    .await
                    .with_context(|| format!("enrolling `{agent}`"))
            }
        })
        .buffer_unordered(ENROLLING)
        .collect()
        .await;
    admin.close().await;
    enrolled.into_iter().collect()
}

/// Times `scale.handshakes` handshakes as `identity`, `scale.concurrency` at a time, after as
/// many untimed ones at once (which give the resuming run its first tickets).
async fn handshakes(
    addr: SocketAddr,
    trust: &TrustBundle,
    identity: &Identity,
    resume: bool,
    scale: Scale,
) -> Result<Rate> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.tls_key_pkcs8().to_vec()));
    let mut config = entente_hub::client_tls::client_config(trust, identity.chain().to_vec(), key)?;
    if resume {
        config.resumption = Resumption::in_memory_sessions(256);
    } else {
        config.resumption = Resumption::disabled();
        config.send_ticket_request = Some(TicketRequest {
            new_session_count: 0,
            resumption_count: 0,
        });
    }
    let config = Arc::new(config);
    let name = entente_hub::client_tls::server_name(trust)?;
    // At once, so that each timed worker finds a ticket of its own to resume.
    let warm_up = (0..scale.concurrency).map(|_| handshake(addr, &config, &name));
    for result in futures_util::future::join_all(warm_up).await {
        result?;
    }

    let next = AtomicU64::new(0);
    let resumed = AtomicU64::new(0);
    let started = Instant::now();
    let workers = (0..scale.concurrency).map(|_| async {
        while next.fetch_add(1, Ordering::Relaxed) < scale.handshakes {
            if handshake(addr, &config, &name).await? == HandshakeKind::Resumed {
                resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    for result in futures_util::future::join_all(workers).await {
        result?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Rate {
        handshakes: scale.handshakes,
        seconds,
        per_second: rate(scale.handshakes as f64, seconds),
        resumed: resumed.into_inner(),
    })
}

/// One connection: TLS 1.3 with the client certificate, until the hub serves HTTP/2; then
/// closed. Returns how the handshake went.
async fn handshake(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> Result<HandshakeKind> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await?;
        let kind = tls
            .get_ref()
            .1
            .handshake_kind()
            .unwrap_or(HandshakeKind::Full);
        tls.write_all(PREFACE).await?;
        let mut first = [0u8; 64];
        if tls.read(&mut first).await? == 0 {
            bail!("the hub closed the connection");
        }
        let _ = tls.shutdown().await;
        Ok(kind)
    };
    tokio::time::timeout(HANDSHAKE_LIMIT, attempt)
        .await
        .map_err(|_| anyhow!("a handshake took longer than {HANDSHAKE_LIMIT:?}"))?
        .context("a handshake with the hub failed")
}

fn print_report(r: &Report) {
    outln!(
        "{} idle mutual-TLS sessions ({}, {} agents) on a hub in its own process (pid {})",
        r.connected,
        r.transport,
        r.agents,
        r.hub_pid
    );
    outln!(
        "  opened in {:.1} s ({:.0} connections/s); {} still open after {} s idle",
        r.connect_seconds,
        r.connections_per_second,
        r.idle,
        SETTLE.as_secs()
    );
    outln!(
        "  hub RSS: {} KiB before, {} KiB idle, {} KiB after closing them",
        r.hub_rss_before_kib,
        r.hub_rss_idle_kib,
        r.hub_rss_closed_kib
    );
    outln!(
        "  idle memory per connection: {:.1} KiB (target ≤ {} KiB: {})",
        r.idle_bytes_per_connection as f64 / 1024.0,
        r.target_bytes_per_connection / 1024,
        if r.target_met { "met" } else { "not met" }
    );
    outln!(
        "  the bench's own RSS (the clients): {} KiB",
        r.client_rss_kib
    );
    let h = &r.handshakes;
    outln!("handshakes/s ({} in flight):", h.concurrency);
    for (label, rate) in [("full", &h.full), ("with resumption", &h.resumed)] {
        outln!(
            "  {label:<16} {:>8.0}/s  ({} in {:.2} s, {} resumed)",
            rate.per_second,
            rate.handshakes,
            rate.seconds,
            rate.resumed
        );
    }
}

// === the hub's process ===

/// `entente hub start` on `DIR/hub`, killed (and waited for) on drop.
struct HubProcess {
    child: Child,
    addr: SocketAddr,
    admin: PathBuf,
    ca: PathBuf,
}

impl HubProcess {
    /// Starts the hub and reads where it listens from its first line of output.
    fn start(dir: &Path) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the entente binary")?;
        let log = dir.join("hub.log");
        let stderr = File::create(&log).context("creating the hub's log")?;
        let child = Command::new(exe)
            .args([
                "hub",
                "start",
                "--json",
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(dir.join("hub"))
            // A fresh directory gets a local key store with a random key of its own: no key
            // of this throwaway hub lands in a token or a store the environment names.
            .env_remove("ENTENTE_KEYSTORE_KEY")
            .env_remove("ENTENTE_KEYSTORE_PASSPHRASE")
            .env_remove(entente_keystore::pkcs11::MODULE_ENV)
            .env_remove(entente_keystore::pkcs11::TOKEN_ENV)
            .env_remove(entente_keystore::pkcs11::PIN_ENV)
            .env_remove(crate::keystores::CA_ENV)
            .env_remove(crate::keystores::AUDIT_ENV)
            .env_remove(crate::keystores::DATA_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting the hub's process")?;
        let mut hub = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: PathBuf::new(),
            ca: PathBuf::new(),
        };
        // The hub's first line of JSON (a wrapper may print before it).
        let mut line = String::new();
        if let Some(stdout) = hub.child.stdout.take() {
            let mut stdout = BufReader::new(stdout);
            while !line.starts_with('{') {
                line.clear();
                let read = stdout
                    .read_line(&mut line)
                    .context("reading the hub's first line")?;
                if read == 0 {
                    break;
                }
            }
        }
        let started: serde_json::Value = serde_json::from_str(&line).map_err(|_| {
            let why = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow!("the hub did not start: {}", why.trim())
        })?;
        let field = |name: &str| {
            started
                .get(name)
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| anyhow!("the hub's first line has no `{name}`"))
        };
        hub.addr = field("listening")?
            .parse()
            .context("reading the hub's address")?;
        hub.admin = PathBuf::from(field("admin")?);
        hub.ca = PathBuf::from(field("ca")?);
        Ok(hub)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === helpers ===

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the status of process {pid}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in the status of process {pid}"))
}

fn rate(count: f64, seconds: f64) -> f64 {
    if seconds > 0.0 { count / seconds } else { 0.0 }
}

/// Resolves on the first SIGINT or SIGTERM.
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_resident_set_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }
}
