//! Just enough of NATS to measure JetStream beside Entente in one run: start `nats-server`
//! (the Debian package) on a free loopback port with JetStream file storage, create a stream,
//! and publish to it with acknowledgements, pipelined. The text protocol is the one NATS
//! documents (`CONNECT`, `PUB`, `SUB`, `MSG`, `PING`/`PONG`); JetStream's API is requests to
//! `$JS.API.*` subjects with JSON bodies.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};

/// The longest line of the protocol we accept (an `INFO` line is a few hundred bytes).
const MAX_LINE: usize = 64 * 1024;

/// A `nats-server` child, killed on drop.
pub(crate) struct NatsServer {
    child: Child,
    addr: String,
}

impl NatsServer {
    /// Starts `nats-server` with JetStream, its storage in `store`, on a free loopback port.
    pub(crate) async fn start(store: &Path) -> Result<Self> {
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
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
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

/// One NATS connection.
pub(crate) struct Nats {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_sid: u64,
}

/// A message received on a subscription.
struct Msg {
    payload: Vec<u8>,
}

impl Nats {
    /// Connects and completes the handshake (`INFO`, `CONNECT`, `PING`/`PONG`).
    pub(crate) async fn connect(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to nats at {addr}"))?;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let mut nats = Self {
            reader: BufReader::with_capacity(1 << 16, read),
            writer,
            next_sid: 1,
        };
        let info = nats.line().await?;
        if !info.starts_with("INFO ") {
            bail!("nats said {info:?} instead of INFO");
        }
        nats.writer
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n",
            )
            .await?;
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
async fn next_msg(reader: &mut BufReader<OwnedReadHalf>, sid: u64) -> Result<Msg> {
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

async fn read_line(reader: &mut BufReader<OwnedReadHalf>) -> Result<String> {
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
