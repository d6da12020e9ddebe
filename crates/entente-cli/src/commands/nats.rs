//! Just enough of NATS to measure it beside Entente in one run: start `nats-server` (the
//! Debian package) on a free loopback port — with JetStream file storage, or plain, or with
//! TLS under a CA made for the run — and drive it: a JetStream stream published to with
//! acknowledgements, pipelined; or core pub→sub flat out. The text protocol is the one NATS
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

/// The longest line of the protocol we accept (an `INFO` line is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

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
        let (msg_sid, size) = match parts.as_slice() {
            [_, sid, size] | [_, sid, _, size] => (sid.parse::<u64>()?, size.parse::<usize>()?),
            _ => bail!("a malformed MSG line: {line:?}"),
        };
        if size > MAX_LINE {
            bail!("a MSG of {size} bytes");
        }
        let mut payload = vec![0; size + 2];
        reader.read_exact(&mut payload).await?;
        payload.truncate(size);
        if msg_sid == sid {
            return Ok(Msg { payload });
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

/// What one core-NATS pub→sub run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct PubSubRun {
    pub(crate) sent: u64,
    pub(crate) delivered: u64,
    pub(crate) lost: u64,
    /// Subscriber connections the server closed (slow consumers).
    pub(crate) disconnected: u64,
    pub(crate) seconds: f64,
    /// Publish-to-delivery latency of every delivered message, in microseconds, sorted.
    #[serde(skip)]
    pub(crate) latencies_us: Vec<u64>,
}

/// Publishes `count` messages of `payload_len` bytes to `subject` on one connection, flat out,
/// while `subscribers` other connections subscribed to it receive them; each payload starts
/// with its send time (ns since the start) and sequence number, as Entente's bench does.
/// Messages a subscriber does not receive within `idle` of its previous one are counted lost
/// (core NATS drops what a slow consumer can't take).
pub(crate) async fn pubsub(
    addr: &str,
    tls: Option<&TlsClient>,
    subject: &str,
    (count, payload_len, subscribers): (u64, usize, usize),
    idle: Duration,
) -> Result<PubSubRun> {
    let mut readers = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut subscriber = Nats::open(addr, tls).await?;
        let sid = subscriber.subscribe(subject).await?;
        subscriber.ping().await?;
        readers.push((subscriber, sid));
    }
    let mut publisher = Nats::open(addr, tls).await?;
    let start = Instant::now();
    let receivers: Vec<_> = readers
        .into_iter()
        .map(|(subscriber, sid)| tokio::spawn(receive(subscriber, sid, count, start, idle)))
        .collect();
    let mut payload = vec![0xA5u8; payload_len.max(16)];
    let mut buf = Vec::with_capacity(64 * 1024);
    let head = format!("PUB {subject} {}\r\n", payload.len());
    for seq in 0..count {
        let at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if let Some(h) = payload.get_mut(..16) {
            let (time, number) = h.split_at_mut(8);
            time.copy_from_slice(&at.to_be_bytes());
            number.copy_from_slice(&seq.to_be_bytes());
        }
        buf.extend_from_slice(head.as_bytes());
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(b"\r\n");
        if buf.len() >= 32 * 1024 {
            publisher.writer.write_all(&buf).await?;
            buf.clear();
        }
    }
    publisher.writer.write_all(&buf).await?;
    publisher.ping().await?;
    let mut latencies = Vec::new();
    let mut last = start;
    let mut disconnected = 0;
    for receiver in receivers {
        let (one, at, closed) = receiver.await.context("a subscriber task")??;
        latencies.extend(one);
        last = last.max(at);
        disconnected += u64::from(closed);
    }
    latencies.sort_unstable();
    let delivered = latencies.len() as u64;
    let expected = count.saturating_mul(subscribers as u64);
    Ok(PubSubRun {
        sent: count,
        delivered,
        lost: expected.saturating_sub(delivered),
        disconnected,
        seconds: last.duration_since(start).as_secs_f64(),
        latencies_us: latencies,
    })
}

/// One subscriber's side of [`pubsub`]: the latency of each message received, in
/// microseconds, when the last one arrived, and whether the server closed the connection.
async fn receive(
    subscriber: Nats,
    sid: u64,
    count: u64,
    start: Instant,
    idle: Duration,
) -> Result<(Vec<u64>, Instant, bool)> {
    // The writing half stays open to the end: closing it would end the connection.
    let Nats {
        mut reader,
        writer: _writer,
        ..
    } = subscriber;
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut last = start;
    while (latencies.len() as u64) < count {
        let msg = match tokio::time::timeout(idle, next_msg(&mut reader, sid)).await {
            Ok(Ok(msg)) => msg,
            // The server closes a consumer too slow for it: the rest is lost.
            Ok(Err(_)) => return Ok((latencies, last, true)),
            Err(_) => break,
        };
        last = Instant::now();
        let sent_ns = msg
            .payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        let now_ns = u64::try_from(last.duration_since(start).as_nanos()).unwrap_or(u64::MAX);
        latencies.push(now_ns.saturating_sub(sent_ns) / 1000);
    }
    Ok((latencies, last, false))
}
