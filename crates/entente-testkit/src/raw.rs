//! Below the SDK: a TLS probe, a gRPC client that sends whatever bytes it is given, and a
//! framed session connection ([`Framed`]) that does the same.
//!
//! The SDK never sends a malformed frame, a frame over the size limit, or a call to a method
//! the hub does not serve; tests of how a hub treats those need a client that does. [`Client`]
//! is tonic's gRPC client over hyper's HTTP/2 client over tokio-rustls, with a codec that sends
//! raw bytes and decodes the hub's `ServerFrame`s through the bounded decoder. [`probe`] only
//! does a handshake, to see who gets in and which TLS alert the others get.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! use entente_testkit::{TestHub, raw};
//!
//! let hub = TestHub::start().await?;
//! let alice = hub.identity_without_enrollment("shop", "alice")?;
//! let config = raw::client_config(&alice, hub.trust())?;
//! let client = raw::Client::connect(hub.addr(), config, &hub.server_name()).await?;
//!
//! // A frame whose first field claims four gigabytes: the stream ends, the hub serves on.
//! let mut session = client.session().await?;
//! session.send_raw(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]).await?;
//! assert_eq!(session.status().await.code(), tonic::Code::InvalidArgument);
//! entente_testkit::eventually("the frame is counted", || hub.stats().malformed_frames == 1).await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{Context as _, Result};
use bytes::{BufMut, Bytes};
use entente_ca::TrustBundle;
use entente_client::Identity;
use entente_hub::codec::{BoundedCodec, BoundedDecoder};
use entente_hub::framed::{self, FrameReader};
use entente_wire::{Bounded, ClientFrame, Limits, ServerFrame, SessionEnd, server_frame};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rustls::ClientConfig;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::{Status, Streaming};

use crate::WAIT;

/// How [`probe`] failed: where the connection ended, with what error.
///
/// Its text names the stage and the TLS or I/O error, e.g. `handshake: received fatal alert:
/// CertificateRequired`; tests match on that.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProbeError {
    /// The TCP connection failed.
    Connect(std::io::Error),
    /// The server name is not a valid DNS name.
    ServerName(String),
    /// The TLS handshake failed (on this side, or by an alert from the hub).
    Handshake(std::io::Error),
    /// Sending the HTTP/2 preface failed.
    Write(std::io::Error),
    /// Reading the hub's first bytes failed.
    Read(std::io::Error),
    /// The hub closed the connection without sending anything.
    Closed,
    /// The hub sent nothing within [`WAIT`].
    Timeout,
}

/// An HTTP/2 connection to a hub, mutual TLS or not, on which to open gRPC streams and make
/// unary calls with arbitrary messages.
#[derive(Debug)]
pub struct Client {
    send: SendRequest<Body>,
    origin: http::Uri,
}

/// One gRPC stream (normally a session): raw bytes out, bounded-decoded `ServerFrame`s in.
pub struct Session {
    tx: mpsc::Sender<Bytes>,
    rx: Streaming<ServerFrame>,
}

/// Connects with `config`, sends the HTTP/2 preface and waits for the hub's first bytes.
/// `Ok` means the hub accepted the connection.
pub async fn probe(
    addr: SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> Result<(), ProbeError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| ProbeError::ServerName(server_name.to_owned()))?;
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(ProbeError::Handshake)?;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    tls.write_all(preface).await.map_err(ProbeError::Write)?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err(ProbeError::Closed),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(ProbeError::Read(e)),
        Err(_) => Err(ProbeError::Timeout),
    }
}

/// A mutual-TLS client configuration presenting `identity`'s certificate and verifying the
/// hub against `trust` (TLS 1.3, as the SDK connects).
pub fn client_config(identity: &Identity, trust: &TrustBundle) -> Result<ClientConfig> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.tls_key_pkcs8().to_vec()));
    entente_hub::client_tls::client_config(trust, identity.chain().to_vec(), key)
        .context("building a mutual-TLS client configuration")
}

/// A client configuration with no client certificate, verifying the hub against `trust`
/// (TLS 1.3, as the SDK enrolls).
pub fn anonymous_config(trust: &TrustBundle) -> Result<ClientConfig> {
    entente_hub::client_tls::enroll_client_config(trust)
        .context("building a client configuration without a certificate")
}

// === impl ProbeError ===

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect: {e}"),
            Self::ServerName(name) => write!(f, "`{name}` is not a server name"),
            Self::Handshake(e) => write!(f, "handshake: {e}"),
            Self::Write(e) => write!(f, "write: {e}"),
            Self::Read(e) => write!(f, "read: {e}"),
            Self::Closed => f.write_str("closed"),
            Self::Timeout => f.write_str("timeout"),
        }
    }
}

impl std::error::Error for ProbeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Connect(e) | Self::Handshake(e) | Self::Write(e) | Self::Read(e) => Some(e),
            Self::ServerName(_) | Self::Closed | Self::Timeout => None,
        }
    }
}

// === impl Client ===

impl Client {
    /// Connects to `addr` with `config`, asking for `server_name` (TLS SNI: `hub.TD` for
    /// mutual TLS, `enroll.TD` for enrollment), and starts HTTP/2.
    pub async fn connect(
        addr: SocketAddr,
        config: ClientConfig,
        server_name: &str,
    ) -> Result<Self> {
        let tls = tls_connect(addr, config, server_name).await?;
        Self::over(tls, server_name).await
    }

    /// Starts HTTP/2 over `tls`, a connection made to `server_name` (its handshake inspected
    /// first, say).
    pub async fn over(
        tls: tokio_rustls::client::TlsStream<TcpStream>,
        server_name: &str,
    ) -> Result<Self> {
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .context("http2")?;
        tokio::spawn(connection);
        let origin = http::Uri::try_from(format!("https://{server_name}"))
            .with_context(|| format!("`{server_name}` makes no URI"))?;
        Ok(Self { send, origin })
    }

    /// Opens a stream on `path`, any path: the session's, another service's, or none the hub
    /// serves.
    pub async fn open(&self, path: &'static str) -> Result<Session, Status> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let call = grpc.streaming(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            PathAndQuery::from_static(path),
            RawCodec,
        );
        let response = tokio::time::timeout(WAIT, call).await.map_err(|_| {
            Status::deadline_exceeded("the hub did not answer the stream in time")
        })??;
        Ok(Session {
            tx,
            rx: response.into_inner(),
        })
    }

    /// Opens a session stream ([`SESSION_PATH`](entente_hub::SESSION_PATH)).
    pub async fn session(&self) -> Result<Session, Status> {
        self.open(entente_hub::SESSION_PATH).await
    }

    /// One unary call on `path`; the response is decoded through the bounded decoder.
    pub async fn unary<Req, Resp>(&self, path: &'static str, request: Req) -> Result<Resp, Status>
    where
        Req: Message + Send + Sync + 'static,
        Resp: Bounded + Send + Sync + 'static,
    {
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let call = grpc.unary(
            tonic::Request::new(request),
            PathAndQuery::from_static(path),
            BoundedCodec::<Req, Resp>::new(Limits::default()),
        );
        tokio::time::timeout(WAIT, call)
            .await
            .map_err(|_| Status::deadline_exceeded("the hub did not answer in time"))?
            .map(tonic::Response::into_inner)
    }

    fn grpc(&self) -> tonic::client::Grpc<H2> {
        tonic::client::Grpc::with_origin(H2(self.send.clone()), self.origin.clone())
    }
}

// === impl Session ===

impl Session {
    /// Sends `frame`, encoded as it is.
    pub async fn send(&self, frame: ClientFrame) -> Result<(), Status> {
        self.send_raw(frame.encode_to_vec()).await
    }

    /// Sends `bytes` as one gRPC message, whatever they are.
    pub async fn send_raw(&self, bytes: impl Into<Bytes>) -> Result<(), Status> {
        self.tx
            .send(bytes.into())
            .await
            .map_err(|_| Status::cancelled("the stream's sending side is closed"))
    }

    /// The next frame: `Ok(None)` when the stream ended with OK, `Err` with its status, or
    /// `DEADLINE_EXCEEDED` if nothing came within [`WAIT`].
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no frame from the hub in time"))?
    }

    /// Reads until the stream ends and returns its status (`OK` for a clean end).
    pub async fn status(&mut self) -> Status {
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            }
        }
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("closed", &self.tx.is_closed())
            .finish_non_exhaustive()
    }
}

// === framed sessions ===

/// A framed session connection (PROTOCOL.md §9.1): length-prefixed frames out, whatever they
/// hold, and the hub's `ServerFrame`s in through the bounded decoder.
#[derive(Debug)]
pub struct Framed {
    write: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    read: FrameReader<tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>, ServerFrame>,
}

impl Framed {
    /// Connects to `addr` with `config` (whose ALPN protocols are replaced by the framed
    /// session's alone), asking for `server_name`; fails unless the hub agreed to a framed
    /// session.
    pub async fn connect(
        addr: SocketAddr,
        mut config: ClientConfig,
        server_name: &str,
    ) -> Result<Self> {
        config.alpn_protocols = vec![framed::ALPN.to_vec()];
        let tls = tls_connect(addr, config, server_name).await?;
        let alpn = tls.get_ref().1.alpn_protocol();
        anyhow::ensure!(
            alpn == Some(framed::ALPN),
            "the hub chose ALPN {:?}",
            alpn.map(String::from_utf8_lossy)
        );
        let (read, write) = tokio::io::split(tls);
        Ok(Self {
            write,
            read: FrameReader::new(read, Limits::default()),
        })
    }

    /// Reads the hub's first frame, and fails unless it is the empty frame that accepts the
    /// session.
    pub async fn accepted(&mut self) -> Result<()> {
        let first = self
            .next()
            .await?
            .context("closed before accepting the session")?;
        anyhow::ensure!(
            first.kind.is_none(),
            "the hub did not accept the session: {first:?}"
        );
        Ok(())
    }

    /// Sends `frame` with its length prefix.
    pub async fn send(&mut self, frame: &ClientFrame) -> std::io::Result<()> {
        let mut bytes = bytes::BytesMut::new();
        framed::encode_frame(frame, &mut bytes);
        self.send_raw(&bytes).await
    }

    /// Sends `bytes` as they are: prefix and frame are the caller's.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await?;
        self.write.flush().await
    }

    /// Closes the sending side (TLS `close_notify`, then TCP FIN); frames may still be read.
    pub async fn close_write(&mut self) -> std::io::Result<()> {
        self.write.shutdown().await
    }

    /// The next frame, `Ok(None)` when the hub closed the connection; an error if nothing
    /// came within [`WAIT`].
    pub async fn next(&mut self) -> Result<Option<ServerFrame>> {
        tokio::time::timeout(WAIT, self.read.next())
            .await
            .context("no frame from the hub in time")?
            .context("reading a frame")
    }

    /// Reads to the session's end and returns its `SessionEnd`; an error if the connection
    /// closes without one. The connection must then close.
    pub async fn end(&mut self) -> Result<SessionEnd> {
        loop {
            let frame = self.next().await?.context("closed without a SessionEnd")?;
            if let Some(server_frame::Kind::SessionEnd(end)) = frame.kind {
                anyhow::ensure!(self.next().await?.is_none(), "a frame after the SessionEnd");
                return Ok(end);
            }
        }
    }

    /// Closes the connection (TLS close_notify, then FIN): the session is over.
    pub async fn close(mut self) -> std::io::Result<()> {
        self.write.shutdown().await
    }
}

// === transport ===

/// TCP, then TLS with `config`, asking for `server_name`.
async fn tls_connect(
    addr: SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let name = ServerName::try_from(server_name.to_owned())
        .with_context(|| format!("`{server_name}` is not a server name"))?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .context("handshake")
}

/// hyper's HTTP/2 client as the tower service tonic's client wants.
#[derive(Clone)]
struct H2(SendRequest<Body>);

impl tower_service::Service<http::Request<Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Incoming>, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Sends raw bytes as messages; decodes `ServerFrame`s through the bounded decoder.
struct RawCodec;

struct RawEncoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ServerFrame;
    type Encoder = RawEncoder;
    type Decoder = BoundedDecoder<ServerFrame>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder::new(Limits::default())
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}
