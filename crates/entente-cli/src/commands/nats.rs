//! Just enough of NATS to measure it beside Entente in one run: start `nats-server` (the
//! Debian package) on a free loopback port — with JetStream file storage, or plain, or with
//! TLS under a CA made for the run — and drive it: a JetStream stream published to with
//! acknowledgements, pipelined; core pub→sub flat out, from one or several publishers to one
//! or several subscribers; or request/reply with a number of requests in flight. Each run
//! measures the CPU and memory nats-server and its clients used ([`Meter`]). The text protocol is the one NATS
//! documents (`INFO`, `CONNECT`, `PUB`, `SUB`, `MSG`, `PING`/`PONG`; with TLS, the handshake
//! follows the server's `INFO`); JetStream's API is requests to `$JS.API.*` subjects with JSON
//! bodies.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use rustls_pki_types::ServerName;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite,
    AsyncWriteExt as _, BufReader,
};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::commands::bench;
use crate::commands::usage::{Meter, Usage};

/// The longest line of the protocol we accept (an `INFO` line is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;
/// The largest message payload we accept: nats-server's default `max_payload` (1 MiB).
const MAX_PAYLOAD: usize = 1 << 20;

/// A `nats-server` child, killed on drop.
pub(crate) struct NatsServer {
    child: Child,
    addr: String,
}

/// The files of a server certificate for `127.0.0.1` (`nats-server --tlscert/--tlskey`).
pub(crate) struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
}

/// A client TLS configuration trusting only the CA [`tls_setup`] made.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: tokio_rustls::TlsConnector,
}

/// Makes a CA and a server certificate for `127.0.0.1` (ECDSA P-256), writes the server's
/// certificate and key to `dir`, and returns them with a client configuration trusting the CA.
pub(crate) fn tls_setup(dir: &Path) -> Result<(TlsFiles, TlsClient)> {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = params.signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))?;
    let files = TlsFiles {
        cert: dir.join("nats-server.pem"),
        key: dir.join("nats-server.key"),
    };
    std::fs::write(&files.cert, cert.pem()).context("writing the nats certificate")?;
    std::fs::write(&files.key, key.serialize_pem()).context("writing the nats key")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok((
        files,
        TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        },
    ))
}

impl NatsServer {
    /// Starts `nats-server` with JetStream, its storage in `store`, on a free loopback port.
    pub(crate) async fn start(store: &Path) -> Result<Self> {
        let store = store
            .to_str()
            .context("the JetStream directory is not UTF-8")?;
        Self::spawn(&["-js", "-sd", store]).await
    }

    /// Starts `nats-server` without JetStream on a free loopback port, with TLS if given.
    pub(crate) async fn start_core(tls: Option<&TlsFiles>) -> Result<Self> {
        match tls {
            None => Self::spawn(&[]).await,
            Some(files) => {
                let cert = files.cert.to_str().context("a path that is not UTF-8")?;
                let key = files.key.to_str().context("a path that is not UTF-8")?;
                Self::spawn(&["--tls", "--tlscert", cert, "--tlskey", key]).await
            }
        }
    }

    async fn spawn(args: &[&str]) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        // Debian installs it in /usr/sbin, which a user's PATH may lack.
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(program)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting `nats-server` (Debian package `nats-server`)")?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {addr} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self { child, addr })
    }

    /// Its address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Its process id, to measure what it uses; 0 once it exited.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Stops it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The reading half of a connection, plain or TLS.
type Reader = BufReader<Box<dyn AsyncRead + Unpin + Send>>;

/// One NATS connection.
pub(crate) struct Nats {
    reader: Reader,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
    next_sid: u64,
}

/// A message received on a subscription.
struct Msg {
    /// Where to answer, if the publisher asked for an answer.
    reply_to: Option<String>,
    payload: Vec<u8>,
}

impl Nats {
    /// Connects and completes the handshake (`INFO`, `CONNECT`, `PING`/`PONG`).
    pub(crate) async fn connect(addr: &str) -> Result<Self> {
        Self::open(addr, None).await
    }

    /// Connects, with TLS after the server's `INFO` if `tls` is given, and completes the
    /// handshake.
    pub(crate) async fn open(addr: &str, tls: Option<&TlsClient>) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to nats at {addr}"))?;
        stream.set_nodelay(true)?;
        let mut plain = BufReader::new(stream);
        let info = read_line(&mut plain).await?;
        if !info.starts_with("INFO ") {
            bail!("nats said {info:?} instead of INFO");
        }
        if !plain.buffer().is_empty() {
            bail!("nats sent more than INFO before the client spoke");
        }
        let stream = plain.into_inner();
        let (read, writer): (
            Box<dyn AsyncRead + Unpin + Send>,
            Box<dyn AsyncWrite + Unpin + Send>,
        ) = match tls {
            None => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Some(tls) => {
                let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
                let stream = tls
                    .connector
                    .connect(name, stream)
                    .await
                    .context("the TLS handshake with nats")?;
                let (read, write) = tokio::io::split(stream);
                (Box::new(read), Box::new(write))
            }
        };
        let mut nats = Self {
            reader: BufReader::with_capacity(1 << 16, read),
            writer,
            next_sid: 1,
        };
        let connect = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"tls_required\":{}}}\r\n",
            tls.is_some()
        );
        nats.writer.write_all(connect.as_bytes()).await?;
        nats.writer.write_all(b"PING\r\n").await?;
        loop {
            let line = nats.line().await?;
            match line.as_str() {
                "PONG" => return Ok(nats),
                "+OK" => {}
                other => bail!("nats refused the connection: {other}"),
            }
        }
    }

    /// Creates a JetStream stream `name` of `subjects` with file storage.
    pub(crate) async fn create_stream(&mut self, name: &str, subjects: &str) -> Result<()> {
        let config = serde_json::json!({
            "name": name,
            "subjects": [subjects],
            "storage": "file",
            "retention": "limits",
            "num_replicas": 1,
        });
        let reply = self
            .request(
                &format!("$JS.API.STREAM.CREATE.{name}"),
                config.to_string().as_bytes(),
            )
            .await?;
        let reply: serde_json::Value =
            serde_json::from_slice(&reply).context("JetStream's answer to STREAM.CREATE")?;
        if let Some(error) = reply.get("error") {
            bail!("JetStream refused the stream: {error}");
        }
        Ok(())
    }

    /// Publishes `count` messages of `payload` to `subject`, each acknowledged by JetStream,
    /// with at most `window` unacknowledged; returns the time until the last acknowledgement.
    pub(crate) async fn publish_acked(
        mut self,
        subject: &str,
        payload: &[u8],
        count: u64,
        window: u64,
    ) -> Result<Duration> {
        let sid = self.subscribe("_INBOX.bench.*").await?;
        let Self {
            mut reader,
            mut writer,
            ..
        } = self;
        let (room_tx, mut room_rx) = tokio::sync::mpsc::channel::<()>(window as usize);
        for _ in 0..window {
            room_tx.send(()).await?;
        }
        let start = Instant::now();
        let acks = tokio::spawn(async move {
            let mut acked = 0u64;
            while acked < count {
                let msg = next_msg(&mut reader, sid).await?;
                if msg.payload.windows(7).any(|w| w == b"\"error\"") {
                    bail!(
                        "JetStream refused a publish: {}",
                        String::from_utf8_lossy(&msg.payload)
                    );
                }
                acked += 1;
                let _ = room_tx.try_send(());
            }
            Ok::<_, anyhow::Error>(())
        });
        let mut buf = Vec::with_capacity(64 * 1024);
        for i in 0..count {
            room_rx
                .recv()
                .await
                .ok_or_else(|| anyhow!("the acknowledgement reader stopped"))?;
            buf.extend_from_slice(
                format!("PUB {subject} _INBOX.bench.{i} {}\r\n", payload.len()).as_bytes(),
            );
            buf.extend_from_slice(payload);
            buf.extend_from_slice(b"\r\n");
            // Write what is ready as one segment once nothing more may be sent now.
            if room_rx.is_empty() || buf.len() >= 32 * 1024 {
                writer.write_all(&buf).await?;
                buf.clear();
            }
        }
        if !buf.is_empty() {
            writer.write_all(&buf).await?;
        }
        acks.await.context("the acknowledgement reader")??;
        Ok(start.elapsed())
    }

    // --- helpers ---

    /// Sends `PING` and waits for the `PONG`: everything sent before has been processed.
    async fn ping(&mut self) -> Result<()> {
        self.writer.write_all(b"PING\r\n").await?;
        // Over TLS, what was written may wait in the stream's buffer until flushed.
        self.writer.flush().await?;
        loop {
            let line = self.line().await?;
            match line.as_str() {
                "PONG" => return Ok(()),
                "PING" => self.writer.write_all(b"PONG\r\n").await?,
                other if other.starts_with("-ERR") => bail!("nats error: {other}"),
                _ => {}
            }
        }
    }

    async fn subscribe(&mut self, subject: &str) -> Result<u64> {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.writer
            .write_all(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await?;
        Ok(sid)
    }

    async fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let sid = self.subscribe("_INBOX.request.*").await?;
        let mut frame =
            format!("PUB {subject} _INBOX.request.1 {}\r\n", payload.len()).into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.writer.write_all(&frame).await?;
        let msg = tokio::time::timeout(Duration::from_secs(10), next_msg(&mut self.reader, sid))
            .await
            .context("no answer from nats within 10 s")??;
        self.writer
            .write_all(format!("UNSUB {sid}\r\n").as_bytes())
            .await?;
        Ok(msg.payload)
    }

    async fn line(&mut self) -> Result<String> {
        read_line(&mut self.reader).await
    }
}

/// The next `MSG` for `sid`, answering `PING`s and skipping what else comes.
async fn next_msg(reader: &mut Reader, sid: u64) -> Result<Msg> {
    loop {
        let line = read_line(reader).await?;
        if line == "PING" {
            // The writer half is elsewhere; nats tolerates a missed PONG for two intervals,
            // longer than any run here.
            continue;
        }
        if let Some(error) = line.strip_prefix("-ERR") {
            bail!("nats error:{error}");
        }
        let Some(rest) = line.strip_prefix("MSG ") else {
            continue;
        };
        let parts: Vec<&str> = rest.split_whitespace().collect();
        let (msg_sid, reply_to, size) = match parts.as_slice() {
            [_, sid, size] => (sid.parse::<u64>()?, None, size.parse::<usize>()?),
            [_, sid, reply, size] => (
                sid.parse::<u64>()?,
                Some((*reply).to_owned()),
                size.parse::<usize>()?,
            ),
            _ => bail!("a malformed MSG line: {line:?}"),
        };
        if size > MAX_PAYLOAD {
            bail!("a MSG of {size} bytes");
        }
        let mut payload = vec![0; size + 2];
        reader.read_exact(&mut payload).await?;
        payload.truncate(size);
        if msg_sid == sid {
            return Ok(Msg { reply_to, payload });
        }
    }
}

async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<String> {
    let mut line = Vec::new();
    let n = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        bail!("nats closed the connection");
    }
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).context("a line from nats that is not UTF-8")
}

// === core pub→sub ===

/// What one core-NATS pub→sub run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PubSubRun {
    /// Messages published, all publishers together.
    pub(crate) sent: u64,
    /// Messages received once, all subscribers together.
    pub(crate) delivered: u64,
    /// Messages received again.
    pub(crate) duplicates: u64,
    pub(crate) lost: u64,
    /// Subscriber connections the server closed (slow consumers).
    pub(crate) disconnected: u64,
    pub(crate) seconds: f64,
    /// Publish-to-delivery latency of every delivered message, in microseconds, sorted.
    #[serde(skip)]
    pub(crate) latencies_us: Vec<u64>,
    /// What nats-server used over the run.
    pub(crate) server: Usage,
    /// What this process (the clients) used over the run.
    pub(crate) client: Usage,
}

/// Each of `publishers` connections publishes `count` messages of `payload_len` bytes to `subject`,
/// at `rate` messages per second on an open loop as Entente's bench paces its own ([`bench::due`];
/// 0: flat out), while `subscribers` other connections subscribed to it receive them all; each
/// payload starts with its send time (ns since the start) and its number (`publisher * count +
/// sequence`), as Entente's bench does. Messages a subscriber does not receive within `idle` of its
/// previous one are counted lost (core NATS drops what a slow consumer can't take).
pub(crate) async fn pubsub(
    server: &NatsServer,
    tls: Option<&TlsClient>,
    subject: &str,
    (count, payload_len, publishers, subscribers): (u64, usize, usize, usize),
    rate: u64,
    idle: Duration,
) -> Result<PubSubRun> {
    let addr = server.addr();
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut subscriber = Nats::open(addr, tls).await?;
        let sid = subscriber.subscribe(subject).await?;
        subscriber.ping().await?;
        readers.push((subscriber, sid));
    }
    let mut writers = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        writers.push(Nats::open(addr, tls).await?);
    }
    let total = count.saturating_mul(publishers as u64);
    let meter = Meter::start(&[server.pid(), std::process::id()]);
    let start = Instant::now();
    let receivers: Vec<_> = readers
        .into_iter()
        .map(|(subscriber, sid)| tokio::spawn(receive(subscriber, sid, total, start, idle)))
        .collect();
    let senders: Vec<_> = writers
        .into_iter()
        .zip(0u64..)
        .map(|(publisher, index)| {
            let subject = subject.to_owned();
            tokio::spawn(async move {
                publish(
                    publisher,
                    &subject,
                    index * count,
                    count,
                    payload_len,
                    (rate, start),
                )
                .await
            })
        })
        .collect();
    for sender in senders {
        sender.await.context("a publisher task")??;
    }
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    let mut last = start;
    let mut disconnected = 0;
    for receiver in receivers {
        let one = receiver.await.context("a subscriber task")??;
        latencies.extend(one.latencies_us);
        duplicates += one.duplicates;
        last = last.max(one.last);
        disconnected += u64::from(one.closed);
    }
    let (server_usage, client_usage) = split_usage(meter.stop());
    latencies.sort_unstable();
    let delivered = latencies.len() as u64;
    let expected = total.saturating_mul(subscribers as u64);
    Ok(PubSubRun {
        sent: total,
        delivered,
        duplicates,
        lost: expected.saturating_sub(delivered),
        disconnected,
        seconds: last.duration_since(start).as_secs_f64(),
        latencies_us: latencies,
        server: server_usage,
        client: client_usage,
    })
}

/// One publisher's side of [`pubsub`]: messages `first..first + count`, in 32 KiB writes,
/// paced at `rate` (0: flat out; what is due is written and flushed before each wait), then
/// a `PING` so that the server has taken them all.
async fn publish(
    mut publisher: Nats,
    subject: &str,
    first: u64,
    count: u64,
    payload_len: usize,
    (rate, start): (u64, Instant),
) -> Result<()> {
    let mut payload = vec![0xA5u8; payload_len.max(16)];
    let mut buf = Vec::with_capacity(64 * 1024);
    let head = format!("PUB {subject} {}\r\n", payload.len());
    for number in first..first + count {
        if let Some(due) = bench::due(start, number - first, rate) {
            publisher.writer.write_all(&buf).await?;
            buf.clear();
            publisher.writer.flush().await?;
            tokio::time::sleep_until(due.into()).await;
        }
        stamp(&mut payload, start, number);
        buf.extend_from_slice(head.as_bytes());
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(b"\r\n");
        if buf.len() >= 32 * 1024 {
            publisher.writer.write_all(&buf).await?;
            buf.clear();
        }
    }
    publisher.writer.write_all(&buf).await?;
    publisher.ping().await
}

/// What one subscriber of [`pubsub`] saw.
struct Received {
    /// The latency of each message received once, in microseconds.
    latencies_us: Vec<u64>,
    duplicates: u64,
    /// When the last message arrived.
    last: Instant,
    /// Whether the server closed the connection.
    closed: bool,
}

/// One subscriber's side of [`pubsub`]: reads until each of `total` messages arrived once,
/// nothing arrives for `idle`, or the server closes the connection.
async fn receive(
    subscriber: Nats,
    sid: u64,
    total: u64,
    start: Instant,
    idle: Duration,
) -> Result<Received> {
    // The writing half stays open to the end: closing it would end the connection.
    let Nats {
        mut reader,
        writer: _writer,
        ..
    } = subscriber;
    let mut seen = vec![false; usize::try_from(total).unwrap_or(0)];
    let mut out = Received {
        latencies_us: Vec::with_capacity(seen.len()),
        duplicates: 0,
        last: start,
        closed: false,
    };
    while (out.latencies_us.len() as u64) < total {
        let msg = match tokio::time::timeout(idle, next_msg(&mut reader, sid)).await {
            Ok(Ok(msg)) => msg,
            // The server closes a consumer too slow for it: the rest is lost.
            Ok(Err(_)) => {
                out.closed = true;
                break;
            }
            Err(_) => break,
        };
        out.last = Instant::now();
        let (sent_ns, number) = stamped(&msg.payload);
        match usize::try_from(number).ok().and_then(|i| seen.get_mut(i)) {
            Some(slot) if !*slot => {
                *slot = true;
                let now_ns = nanos(out.last.duration_since(start));
                out.latencies_us.push(now_ns.saturating_sub(sent_ns) / 1000);
            }
            _ => out.duplicates += 1,
        }
    }
    Ok(out)
}

// === core request/reply ===

/// What one core-NATS request/reply run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct RequestRun {
    pub(crate) requests: u64,
    /// Requests answered with their own payload.
    pub(crate) answered: u64,
    /// Answers that were not a request's payload, or came twice.
    pub(crate) mismatched: u64,
    pub(crate) seconds: f64,
    /// Round trip of every answered request, in microseconds, sorted.
    #[serde(skip)]
    pub(crate) latencies_us: Vec<u64>,
    /// What nats-server used over the run.
    pub(crate) server: Usage,
    /// What this process (both clients) used over the run.
    pub(crate) client: Usage,
}

/// `count` requests of `payload_len` bytes on `subject`, at most `inflight` outstanding, from
/// one connection to a responder on another that answers each with its payload, as NATS
/// clients do it: the requester subscribes to `_INBOX.bench.*` and gives each request a
/// reply subject under it. A request not answered within `idle` of the previous answer ends
/// the run; the rest are counted unanswered.
pub(crate) async fn request_reply(
    server: &NatsServer,
    tls: Option<&TlsClient>,
    subject: &str,
    (count, payload_len, inflight): (u64, usize, usize),
    idle: Duration,
) -> Result<RequestRun> {
    let addr = server.addr();
    let mut responder = Nats::open(addr, tls).await?;
    let served = responder.subscribe(subject).await?;
    responder.ping().await?;
    let mut requester = Nats::open(addr, tls).await?;
    let inbox = requester.subscribe("_INBOX.bench.*").await?;
    requester.ping().await?;
    let inflight = inflight.max(1);
    let meter = Meter::start(&[server.pid(), std::process::id()]);
    let start = Instant::now();
    let answering = tokio::spawn(answer(responder, served));
    let Nats {
        mut reader,
        mut writer,
        ..
    } = requester;
    let (room_tx, mut room_rx) = tokio::sync::mpsc::channel::<()>(inflight);
    for _ in 0..inflight {
        room_tx.send(()).await?;
    }
    let answers = tokio::spawn(async move {
        let mut seen = vec![false; usize::try_from(count).unwrap_or(0)];
        let mut latencies = Vec::with_capacity(seen.len());
        let mut mismatched = 0u64;
        let mut last = start;
        while (latencies.len() as u64) < count {
            let Ok(Ok(msg)) = tokio::time::timeout(idle, next_msg(&mut reader, inbox)).await else {
                break;
            };
            last = Instant::now();
            let (sent_ns, number) = stamped(&msg.payload);
            match usize::try_from(number).ok().and_then(|i| seen.get_mut(i)) {
                Some(slot) if !*slot && msg.payload.len() == payload_len.max(16) => {
                    *slot = true;
                    latencies
                        .push(nanos(last.duration_since(start)).saturating_sub(sent_ns) / 1000);
                }
                _ => mismatched += 1,
            }
            let _ = room_tx.try_send(());
        }
        (latencies, mismatched, last)
    });
    let mut payload = vec![0xA5u8; payload_len.max(16)];
    let mut buf = Vec::with_capacity(64 * 1024);
    for number in 0..count {
        if room_rx.recv().await.is_none() {
            // The answer reader stopped: what is left is unanswered.
            break;
        }
        stamp(&mut payload, start, number);
        buf.extend_from_slice(
            format!("PUB {subject} _INBOX.bench.{number} {}\r\n", payload.len()).as_bytes(),
        );
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(b"\r\n");
        // Write what is ready as one segment once nothing more may be sent now.
        if room_rx.is_empty() || buf.len() >= 32 * 1024 {
            writer.write_all(&buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        writer.write_all(&buf).await?;
    }
    let (mut latencies, mismatched, last) = answers.await.context("the answer reader")?;
    answering.abort();
    let (server_usage, client_usage) = split_usage(meter.stop());
    latencies.sort_unstable();
    Ok(RequestRun {
        requests: count,
        answered: latencies.len() as u64,
        mismatched,
        seconds: last.duration_since(start).as_secs_f64(),
        latencies_us: latencies,
        server: server_usage,
        client: client_usage,
    })
}

/// The responder of [`request_reply`]: answers each request on `sid` with its payload,
/// writing the answers once nothing more is buffered to read.
async fn answer(responder: Nats, sid: u64) -> Result<()> {
    let Nats {
        mut reader,
        mut writer,
        ..
    } = responder;
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let msg = next_msg(&mut reader, sid).await?;
        if let Some(reply_to) = msg.reply_to {
            buf.extend_from_slice(format!("PUB {reply_to} {}\r\n", msg.payload.len()).as_bytes());
            buf.extend_from_slice(&msg.payload);
            buf.extend_from_slice(b"\r\n");
        }
        if reader.buffer().is_empty() || buf.len() >= 32 * 1024 {
            writer.write_all(&buf).await?;
            buf.clear();
        }
    }
}

// --- helpers of the runs ---

/// Writes the send time (ns since `start`) and `number` at the head of `payload`.
fn stamp(payload: &mut [u8], start: Instant, number: u64) {
    if let Some(head) = payload.get_mut(..16) {
        let (time, seq) = head.split_at_mut(8);
        time.copy_from_slice(&nanos(start.elapsed()).to_be_bytes());
        seq.copy_from_slice(&number.to_be_bytes());
    }
}

/// The send time and number [`stamp`] wrote; `u64::MAX` for a number that isn't there.
fn stamped(payload: &[u8]) -> (u64, u64) {
    let field = |range: std::ops::Range<usize>| {
        payload
            .get(range)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    (field(0..8).unwrap_or(0), field(8..16).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The usage of nats-server and of this process, measured in that order.
fn split_usage(usage: Vec<Usage>) -> (Usage, Usage) {
    let mut usage = usage.into_iter();
    (
        usage.next().unwrap_or_default(),
        usage.next().unwrap_or_default(),
    )
}
