//! The connections to the hub: TCP, TLS 1.3 with the agent's X509-SVID (verifying the hub's
//! SVID, [`entente_hub::client_tls`]), then either one HTTP/2 connection (hyper) carrying the
//! session and every call through tonic's gRPC client with the bounded codec, or a framed
//! session connection (PROTOCOL.md §9.1) with the calls on an HTTP/2 connection opened when
//! one is needed ([`SessionTransport`]). gRPC statuses and connection failures become
//! [`Error`]s here, in one place.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use entente_hub::client_tls;
use entente_hub::codec::BoundedCodec;
use entente_hub::framed::{self, FrameReader};
use entente_wire::{
    ClientFrame, DirectoryRequest, DirectoryResponse, Limits, ServerFrame, server_frame,
};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf, ReadHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::client::Grpc;
use tonic::{Code, Status, Streaming};

use crate::renew::Credential;
use crate::{Error, ErrorKind, Identity, SessionTransport};

/// The gRPC path of the directory of key bundles.
pub(crate) const DIRECTORY_PATH: &str = "/entente.v1.Hub/Directory";

/// Client frames gathered into one write on a framed session.
const WRITE_GATHER: usize = 32 * 1024;

/// A framed session's write buffer larger than this is given back while nothing waits.
const WRITE_KEEP: usize = 64 * 1024;

/// How long a framed session's writer may take to send what was queued and close the
/// connection once the session is over.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// TCP keepalive probes sent within [`Keepalive::timeout`] before the hub is taken for gone
/// (as the hub probes its framed clients).
const KEEPALIVE_PROBES: u32 = 4;

/// How a connection checks that the hub is still there ([`ClientOptions::keepalive`]).
///
/// [`ClientOptions::keepalive`]: crate::ClientOptions::keepalive
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Keepalive {
    /// Silence before the first TCP keepalive probe, and between HTTP/2 pings.
    pub(crate) interval: Duration,
    /// How long the probes, or the answer to a ping, may take.
    pub(crate) timeout: Duration,
}

/// The connections to the hub: the session's, and the one calls go on.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    calls: Calls,
    /// The first TLS error seen on the session's connection.
    alert: TlsAlert,
    limits: Limits,
}

/// Where calls go.
#[derive(Debug, Clone)]
enum Calls {
    /// On the session's own HTTP/2 connection.
    Session(H2Connection),
    /// On an HTTP/2 connection of their own, opened when a call needs one (the session is a
    /// framed one).
    OnDemand(Arc<OnDemand>),
}

/// One HTTP/2 connection to the hub, to open gRPC calls on.
#[derive(Debug, Clone)]
struct H2Connection {
    send: SendRequest<Body>,
    origin: http::Uri,
    alert: TlsAlert,
}

/// The HTTP/2 connection for the calls of a client whose session is framed: opened at the
/// first call with the certificate then in use, opened again once the hub has closed it
/// (idle), closed with the session.
#[derive(Debug)]
struct OnDemand {
    peer: SocketAddr,
    credential: Arc<Credential>,
    keepalive: Option<Keepalive>,
    /// The connection, with the task driving it. Held across a dial, so that calls made
    /// meanwhile wait for the one connection.
    open: tokio::sync::Mutex<Option<(H2Connection, JoinHandle<()>)>>,
    /// The session is over: no connection is opened any more.
    closed: AtomicBool,
}

/// The session's frames from the hub.
#[derive(Debug)]
pub(crate) enum SessionStream {
    Http2(Box<Streaming<ServerFrame>>),
    Framed(FrameReader<ReadHalf<Watched<TlsStream<TcpStream>>>, ServerFrame>),
}

/// The task that carries the session's connection: HTTP/2's connection task, or a framed
/// session's writer.
#[derive(Debug)]
pub(crate) struct Driver {
    task: JoinHandle<()>,
    /// A framed session's writer, which ends by itself once the session's outbound frames
    /// end: it gets [`CLOSE_GRACE`] to send them and close the connection cleanly.
    graceful: bool,
}

/// The first TLS error seen on the connection. HTTP/2 keeps only the text of I/O errors, so
/// the TLS layer's own error (a refused certificate arrives as an alert after the client's
/// side of the TLS 1.3 handshake is done) is caught on its way up, by [`Watched`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsAlert(Arc<Mutex<Option<rustls::Error>>>);

impl Transport {
    /// Connects to the hub at `addr` as `credential`'s identity and opens the session, whose
    /// frames come from `outbound`. Returns the transport, the session's frames from the hub,
    /// and the task carrying the session's connection.
    pub(crate) async fn connect(
        credential: Arc<Credential>,
        addr: impl ToSocketAddrs,
        limits: Limits,
        kind: SessionTransport,
        keepalive: Option<Keepalive>,
        outbound: mpsc::Receiver<ClientFrame>,
    ) -> Result<(Self, SessionStream, Driver), Error> {
        let (config, server_name) = mtls_config(&credential.current())?;
        match kind {
            SessionTransport::Http2 => {
                let (connection, task) =
                    H2Connection::open(config, server_name, addr, keepalive).await?;
                let transport = Self {
                    alert: connection.alert.clone(),
                    calls: Calls::Session(connection),
                    limits,
                };
                match transport.session(outbound).await {
                    Ok(stream) => Ok((
                        transport,
                        SessionStream::Http2(Box::new(stream)),
                        Driver {
                            task,
                            graceful: false,
                        },
                    )),
                    Err(e) => {
                        task.abort();
                        Err(e)
                    }
                }
            }
            SessionTransport::Framed => {
                Self::connect_framed(
                    credential,
                    config,
                    server_name,
                    addr,
                    keepalive,
                    limits,
                    outbound,
                )
                .await
            }
        }
    }

    /// Opens a framed session connection, and waits for the hub's first frame: the empty
    /// frame that accepts the session, or the `SessionEnd` (or TLS alert) that refuses it.
    async fn connect_framed(
        credential: Arc<Credential>,
        mut config: rustls::ClientConfig,
        server_name: ServerName<'static>,
        addr: impl ToSocketAddrs,
        keepalive: Option<Keepalive>,
        limits: Limits,
        outbound: mpsc::Receiver<ClientFrame>,
    ) -> Result<(Self, SessionStream, Driver), Error> {
        config.alpn_protocols = vec![framed::ALPN.to_vec()];
        let (tls, at) = tls_connect(config, server_name, addr, keepalive).await?;
        if tls.get_ref().1.alpn_protocol() != Some(framed::ALPN) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("the hub{at} does not serve framed sessions: connect over HTTP/2"),
            ));
        }
        let peer = tls.get_ref().0.peer_addr().map_err(|e| {
            Error::new(
                ErrorKind::Connect,
                format!("the connection to the hub{at} failed: {e}"),
            )
            .with_source(e)
        })?;
        let alert = TlsAlert::default();
        let (read, write) = tokio::io::split(Watched {
            io: tls,
            alert: alert.clone(),
        });
        let mut frames = FrameReader::new(read, limits);
        session_accepted(&mut frames, &alert, &at).await?;
        let task = tokio::spawn(write_frames(write, outbound));
        let transport = Self {
            calls: Calls::OnDemand(Arc::new(OnDemand {
                peer,
                credential,
                keepalive,
                open: tokio::sync::Mutex::default(),
                closed: AtomicBool::new(false),
            })),
            alert,
            limits,
        };
        Ok((
            transport,
            SessionStream::Framed(frames),
            Driver {
                task,
                graceful: true,
            },
        ))
    }

    /// Connects to the hub's enrollment name, without a client certificate, verifying the hub
    /// against `trust`.
    pub(crate) async fn connect_enroll(
        trust: &entente_ca::TrustBundle,
        addr: impl ToSocketAddrs,
        limits: Limits,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let config = client_tls::enroll_client_config(trust).map_err(|e| {
            Error::new(ErrorKind::Tls, format!("tls setup failed: {e}")).with_source(e)
        })?;
        let name = entente_hub::enroll_server_name(trust.trust_domain());
        let server_name = ServerName::try_from(name).map_err(|e| {
            Error::new(ErrorKind::Tls, format!("tls setup failed: {e}")).with_source(e)
        })?;
        // A short exchange under its own timeout: no keepalive.
        let (connection, task) = H2Connection::open(config, server_name, addr, None).await?;
        Ok((
            Self {
                alert: connection.alert.clone(),
                calls: Calls::Session(connection),
                limits,
            },
            task,
        ))
    }

    /// Opens a session stream over HTTP/2 (the calls' connection); frames sent on
    /// `outbound` go to the hub.
    pub(crate) async fn session(
        &self,
        outbound: mpsc::Receiver<ClientFrame>,
    ) -> Result<Streaming<ServerFrame>, Error> {
        let (mut grpc, alert) = self.grpc().await?;
        let response = grpc
            .streaming(
                tonic::Request::new(ReceiverStream::new(outbound)),
                PathAndQuery::from_static(entente_hub::SESSION_PATH),
                BoundedCodec::<ClientFrame, ServerFrame>::new(self.limits),
            )
            .await
            .map_err(|status| alert.refused().unwrap_or_else(|| session_refused(&status)))?;
        Ok(response.into_inner())
    }

    /// Asks the directory for key bundles, within `timeout`.
    pub(crate) async fn directory(
        &self,
        request: DirectoryRequest,
        timeout: Duration,
    ) -> Result<DirectoryResponse, Error> {
        let call = async {
            let (mut grpc, _) = self.grpc().await?;
            grpc.unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(DIRECTORY_PATH),
                BoundedCodec::<DirectoryRequest, DirectoryResponse>::new(self.limits),
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                if status.code() == Code::Unimplemented {
                    Error::new(
                        ErrorKind::Unsupported,
                        "the hub has no directory of key bundles yet (UNIMPLEMENTED): \
                         trust key bundles with `Client::trust_key_bundle`, and name \
                         recipients with `Client::publish_to`",
                    )
                    .with_source(status)
                } else {
                    status_error("the directory lookup", &status).with_source(status)
                }
            })
        };
        // Boxed: a lookup is rare (bundles are cached), and the gRPC call's state would
        // otherwise sit in every send's and reply's future (several KiB, moved at each spawn).
        tokio::time::timeout(timeout, Box::pin(call))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("the directory did not answer within {timeout:?}"),
                )
            })?
    }

    /// One unary call on `path`, within `timeout`; `what` names it in errors.
    pub(crate) async fn unary<Req, Resp>(
        &self,
        path: &'static str,
        request: Req,
        timeout: Duration,
        what: &str,
    ) -> Result<Resp, Error>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: entente_wire::Bounded + Send + 'static,
    {
        let call = async {
            let (mut grpc, alert) = self.grpc().await?;
            grpc.unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                BoundedCodec::<Req, Resp>::new(self.limits),
            )
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| {
                alert
                    .refused()
                    .unwrap_or_else(|| status_error(what, &status).with_source(status))
            })
        };
        tokio::time::timeout(timeout, call).await.map_err(|_| {
            Error::new(
                ErrorKind::Timeout,
                format!("{what}: the hub did not answer within {timeout:?}"),
            )
        })?
    }

    /// The TLS error that broke the session's connection, if one did.
    pub(crate) fn tls_alert(&self) -> Option<rustls::Error> {
        self.alert.seen()
    }

    /// Closes the calls' connection of a framed session, once the session is over: calls
    /// fail from then on, as they do on the session's HTTP/2 connection once it is closed.
    /// Returns at once: a call dialing meanwhile holds the connection until its dial ends.
    pub(crate) fn close_calls(&self) {
        if let Calls::OnDemand(on_demand) = &self.calls {
            on_demand.closed.store(true, Ordering::Release);
            let on_demand = on_demand.clone();
            tokio::spawn(async move {
                if let Some((_, task)) = on_demand.open.lock().await.take() {
                    task.abort();
                }
            });
        }
    }

    /// A gRPC client ready for a call, with the alert of its connection. A connection the hub
    /// closed (idle) before the call is opened again, once.
    async fn grpc(&self) -> Result<(Grpc<Service>, TlsAlert), Error> {
        let mut retried = false;
        loop {
            let connection = match &self.calls {
                Calls::Session(connection) => connection.clone(),
                Calls::OnDemand(on_demand) => on_demand.connection().await?,
            };
            let mut grpc =
                Grpc::with_origin(Service(connection.send.clone()), connection.origin.clone())
                    .max_decoding_message_size(self.limits.max_frame_bytes)
                    .max_encoding_message_size(self.limits.max_frame_bytes);
            match grpc.ready().await {
                Ok(()) => return Ok((grpc, connection.alert)),
                // Closed as the call came: the next connection serves it.
                Err(_) if !retried && matches!(self.calls, Calls::OnDemand(_)) => {
                    retried = true;
                }
                Err(e) => {
                    return Err(connection.alert.refused().unwrap_or_else(|| {
                        Error::new(
                            ErrorKind::Closed,
                            format!("the connection to the hub is closed: {e}"),
                        )
                        .with_source(e)
                    }));
                }
            }
        }
    }
}

// === impl OnDemand ===

impl OnDemand {
    /// The open connection, or a new one if there is none or the hub closed it.
    async fn connection(&self) -> Result<H2Connection, Error> {
        let mut open = self.open.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::Closed,
                "the connection to the hub is closed: the session is over",
            ));
        }
        if let Some((connection, _)) = open.as_ref()
            && !connection.send.is_closed()
        {
            return Ok(connection.clone());
        }
        if let Some((_, task)) = open.take() {
            task.abort();
        }
        let (config, server_name) = mtls_config(&self.credential.current())?;
        let (connection, task) =
            H2Connection::open(config, server_name, self.peer, self.keepalive).await?;
        *open = Some((connection.clone(), task));
        Ok(connection)
    }
}

impl Drop for OnDemand {
    fn drop(&mut self) {
        if let Some((_, task)) = self.open.get_mut().take() {
            task.abort();
        }
    }
}

// === impl H2Connection ===

impl H2Connection {
    /// Connects with `config`, then the HTTP/2 handshake; returns the connection with the
    /// task driving it, which pings the hub while streams are open if `keepalive` says so.
    async fn open(
        config: rustls::ClientConfig,
        server_name: ServerName<'static>,
        addr: impl ToSocketAddrs,
        keepalive: Option<Keepalive>,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let origin =
            http::Uri::try_from(format!("https://{}", server_name.to_str())).map_err(|e| {
                Error::new(ErrorKind::InvalidInput, format!("bad hub name: {e}")).with_source(e)
            })?;
        let (tls, at) = tls_connect(config, server_name, addr, keepalive).await?;
        let alert = TlsAlert::default();
        let io = Watched {
            io: tls,
            alert: alert.clone(),
        };
        // One stream until the hub's SETTINGS say how many it serves at once: calls made
        // right after connecting then wait for a stream rather than being refused
        // (`REFUSED_STREAM`) for exceeding a limit not yet known.
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder.initial_max_send_streams(1);
        // A hub that stops answering pings is gone, even while its host answers TCP's probes.
        if let Some(keepalive) = keepalive {
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(keepalive.interval)
                .keep_alive_timeout(keepalive.timeout);
        }
        let (send, connection) = builder.handshake(TokioIo::new(io)).await.map_err(|e| {
            alert.refused().unwrap_or_else(|| {
                Error::new(
                    classify(&e),
                    format!("the http/2 handshake with the hub{at} failed: {e}"),
                )
                .with_source(e)
            })
        })?;
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok((
            Self {
                send,
                origin,
                alert,
            },
            driver,
        ))
    }
}

// === impl SessionStream ===

impl SessionStream {
    /// The next frame from the hub; `None` once the session ended without a status.
    pub(crate) async fn message(&mut self) -> Result<Option<ServerFrame>, Status> {
        match self {
            Self::Http2(stream) => stream.message().await,
            Self::Framed(frames) => frames.next().await.map_err(|e| e.status()),
        }
    }
}

// === impl Driver ===

impl Driver {
    /// Stops the connection's task: at once over HTTP/2; a framed session's writer first gets
    /// [`CLOSE_GRACE`] to send what was queued and close the connection.
    pub(crate) fn stop(self) {
        let Self { mut task, graceful } = self;
        if graceful {
            tokio::spawn(async move {
                if tokio::time::timeout(CLOSE_GRACE, &mut task).await.is_err() {
                    task.abort();
                }
            });
        } else {
            task.abort();
        }
    }
}

/// The mutual-TLS configuration for `identity`, and the hub's name.
fn mtls_config(identity: &Identity) -> Result<(rustls::ClientConfig, ServerName<'static>), Error> {
    let trust = identity.trust();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.tls_key_pkcs8().to_vec()));
    let mut config = client_tls::client_config(trust, identity.chain().to_vec(), key)
        .map_err(|e| Error::new(ErrorKind::Tls, format!("tls setup failed: {e}")).with_source(e))?;
    // A configuration serves one connection, so a ticket could never be used: keep none,
    // and ask the hub to issue none (RFC 9149).
    config.resumption = rustls::client::Resumption::disabled();
    config.send_ticket_request = Some(rustls::client::TicketRequest {
        new_session_count: 0,
        resumption_count: 0,
    });
    let server_name = client_tls::server_name(trust)
        .map_err(|e| Error::new(ErrorKind::Tls, format!("tls setup failed: {e}")).with_source(e))?;
    Ok((config, server_name))
}

/// TCP to `addr` (with `keepalive`), then the TLS handshake; returns the stream with
/// ` at ADDR` for errors.
async fn tls_connect(
    config: rustls::ClientConfig,
    server_name: ServerName<'static>,
    addr: impl ToSocketAddrs,
    keepalive: Option<Keepalive>,
) -> Result<(TlsStream<TcpStream>, String), Error> {
    let tcp = dial(addr, keepalive).await?;
    let at = tcp
        .peer_addr()
        .map_or_else(|_| String::new(), |p| format!(" at {p}"));
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| {
            Error::new(
                classify(&e),
                format!("the tls handshake with the hub{at} failed: {e}"),
            )
            .with_source(e)
        })?;
    Ok((tls, at))
}

/// Reads the hub's first frame on a framed session (PROTOCOL.md §9.1): the empty frame that
/// accepts the session, or a `SessionEnd` that refuses it. Anything else, an end of the
/// connection or a frame that does not decode is the connect's error; a TLS alert seen on the
/// connection says why better than the end it caused.
async fn session_accepted<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R, ServerFrame>,
    alert: &TlsAlert,
    at: &str,
) -> Result<(), Error> {
    match frames.next().await {
        Ok(Some(ServerFrame { kind: None })) => Ok(()),
        Ok(Some(ServerFrame {
            kind: Some(server_frame::Kind::SessionEnd(end)),
        })) => Err(session_refused(&end_status(end))),
        Ok(Some(_)) => Err(Error::new(
            ErrorKind::Protocol,
            format!("the hub{at} sent a frame before accepting the session"),
        )),
        Ok(None) => Err(alert.refused().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                format!("the hub{at} closed the connection without a word"),
            )
        })),
        Err(e) => Err(alert.refused().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Connect,
                format!("opening the session with the hub{at} failed: {e}"),
            )
            .with_source(e)
        })),
    }
}

/// The status a framed session's `SessionEnd` carries: what an HTTP/2 session ends with.
pub(crate) fn end_status(end: entente_wire::SessionEnd) -> Status {
    // An unknown code is UNKNOWN (2), as gRPC reads one.
    let code = Code::from(i32::try_from(end.code).unwrap_or(2));
    Status::new(code, end.message)
}

/// The error for a session the hub refused with `status`.
fn session_refused(status: &Status) -> Error {
    // A connection limit answers every request `RESOURCE_EXHAUSTED`.
    let kind = if status.code() == Code::ResourceExhausted {
        ErrorKind::Limited
    } else if status.code() == Code::PermissionDenied {
        ErrorKind::Denied
    } else {
        ErrorKind::Connect
    };
    Error::new(
        kind,
        status_error("opening the session", status).to_string(),
    )
    .with_source(status.clone())
}

/// Writes a framed session's client frames to `io` until they end, then closes the TLS
/// connection. Frames waiting together go out in one write.
async fn write_frames<W: AsyncWrite + Unpin>(mut io: W, mut frames: mpsc::Receiver<ClientFrame>) {
    // A `Vec`, not a `BytesMut`: it encodes protobuf faster (`framed::FrameBuf`).
    let mut buf = Vec::new();
    loop {
        let first = match frames.try_recv() {
            Ok(frame) => frame,
            Err(_) => {
                if buf.capacity() > WRITE_KEEP {
                    buf = Vec::new();
                }
                match frames.recv().await {
                    Some(frame) => frame,
                    None => break,
                }
            }
        };
        framed::encode_frame(&first, &mut buf);
        while buf.len() < WRITE_GATHER {
            match frames.try_recv() {
                Ok(frame) => framed::encode_frame(&frame, &mut buf),
                Err(_) => break,
            }
        }
        if io.write_all(&buf).await.is_err() || io.flush().await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = io.shutdown().await;
}

/// Resolves `addr` and connects to the first address that answers, with TCP keepalive if
/// `keepalive` says so.
async fn dial(addr: impl ToSocketAddrs, keepalive: Option<Keepalive>) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Connect,
                format!("cannot resolve the hub's address: {e}"),
            )
            .with_source(e)
        })?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                if let Some(keepalive) = keepalive {
                    // Best effort, as `nodelay`: a connection without it still works.
                    let socket = socket2::SockRef::from(&tcp);
                    let _ = socket.set_tcp_keepalive(&tcp_keepalive(keepalive));
                    // Keepalive probes only an idle connection: data the hub never acknowledges
                    // (its host gone while the client writes) breaks it in the same time.
                    let _ =
                        socket.set_tcp_user_timeout(Some(keepalive.interval + keepalive.timeout));
                }
                return Ok(tcp);
            }
            Err(e) => last = Some((*addr, e)),
        }
    }
    Err(match last {
        Some((addr, e)) => Error::new(
            ErrorKind::Connect,
            format!("cannot reach the hub at {addr}: {e}"),
        )
        .with_source(e),
        None => Error::new(ErrorKind::Connect, "the hub's address resolved to nothing"),
    })
}

/// TCP keepalive for `keepalive`: the first probe after its interval, then
/// [`KEEPALIVE_PROBES`] within its timeout; the kernel counts in whole seconds, one at least.
fn tcp_keepalive(keepalive: Keepalive) -> socket2::TcpKeepalive {
    let second = Duration::from_secs(1);
    socket2::TcpKeepalive::new()
        .with_time(keepalive.interval.max(second))
        .with_interval((keepalive.timeout / KEEPALIVE_PROBES).max(second))
        .with_retries(KEEPALIVE_PROBES)
}

/// The error for a gRPC status ending `what` (a session or a call). A rate limit's refusal
/// (`RESOURCE_EXHAUSTED` with `grpc-retry-pushback-ms`) is [`ErrorKind::Limited`], the
/// pushback its [`Error::retry_after`]; another `RESOURCE_EXHAUSTED` (an answer too large, a
/// list with no room), which waiting does not change, is [`ErrorKind::Refused`].
pub(crate) fn status_error(what: &str, status: &Status) -> Error {
    let kind = if classify(status) == ErrorKind::Tls {
        ErrorKind::Tls
    } else {
        match status.code() {
            Code::Unimplemented => ErrorKind::Unsupported,
            Code::PermissionDenied | Code::Unauthenticated => ErrorKind::Denied,
            Code::DeadlineExceeded => ErrorKind::Timeout,
            Code::Unavailable | Code::Cancelled | Code::Aborted => ErrorKind::Closed,
            Code::ResourceExhausted if retry_pushback(status).is_some() => ErrorKind::Limited,
            Code::ResourceExhausted => ErrorKind::Refused,
            _ => ErrorKind::Protocol,
        }
    };
    let error = Error::new(kind, format!("{what} failed: {}", status_text(status)));
    match retry_pushback(status) {
        Some(after) if kind == ErrorKind::Limited => error.with_retry_after(after),
        _ => error,
    }
}

/// The `grpc-retry-pushback-ms` of `status`, if it has a well-formed one.
fn retry_pushback(status: &Status) -> Option<Duration> {
    let text = status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?;
    text.parse::<u64>().ok().map(Duration::from_millis)
}

/// `CODE: message`, as the hub meant it (`PERMISSION_DENIED: certificate revoked`).
pub(crate) fn status_text(status: &Status) -> String {
    let code = code_name(status.code());
    if status.message().is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {}", status.message())
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// [`ErrorKind::Tls`] if a TLS error is anywhere in the chain (the hub refuses a client
/// certificate after the client's side of the TLS 1.3 handshake is done, so the refusal
/// surfaces as an alert on the first read), [`ErrorKind::Connect`] otherwise.
fn classify(error: &(dyn std::error::Error + 'static)) -> ErrorKind {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return ErrorKind::Tls;
        }
        // `io::Error::source` skips the wrapped error itself; look at it directly.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && inner.downcast_ref::<rustls::Error>().is_some()
        {
            return ErrorKind::Tls;
        }
        next = e.source();
    }
    ErrorKind::Connect
}

// === impl TlsAlert ===

impl TlsAlert {
    fn record(&self, error: &std::io::Error) {
        if let Some(tls) = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| tls.clone());
        }
    }

    /// The error to report when the hub refused the connection with a TLS alert — after the
    /// client's side of the TLS 1.3 handshake, so the alert, not whatever HTTP/2 or gRPC saw
    /// of the broken connection, says why.
    fn refused(&self) -> Option<Error> {
        self.seen().map(|tls| {
            Error::new(
                ErrorKind::Tls,
                format!("the hub refused the connection: {tls}"),
            )
            .with_source(tls)
        })
    }

    fn seen(&self) -> Option<rustls::Error> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The TLS stream, recording TLS errors in a [`TlsAlert`] as they pass.
#[derive(Debug)]
pub(crate) struct Watched<T> {
    io: T,
    alert: TlsAlert,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Err(e)) = &result {
            this.alert.record(e);
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Err(e)) = &result {
            this.alert.record(e);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Err(e)) = &result {
            this.alert.record(e);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Err(e)) = &result {
            this.alert.record(e);
        }
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// hyper's HTTP/2 client as the tower service tonic's client wants.
#[derive(Debug, Clone)]
struct Service(SendRequest<Body>);

impl tower_service::Service<http::Request<Body>> for Service {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn statuses_map_to_kinds_with_the_code_name() {
        let e = status_error(
            "the session",
            &Status::permission_denied("certificate revoked"),
        );
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert_eq!(
            e.to_string(),
            "the session failed: PERMISSION_DENIED: certificate revoked"
        );
        assert_eq!(
            status_error("x", &Status::unavailable("")).kind(),
            ErrorKind::Closed
        );
        assert_eq!(
            status_error("x", &Status::unimplemented("")).kind(),
            ErrorKind::Unsupported
        );
        assert_eq!(
            status_error("x", &Status::internal("")).kind(),
            ErrorKind::Protocol
        );
        // A rate limit's refusal says when to try again; a malformed pushback is ignored.
        let mut limited = Status::resource_exhausted("over the agent-calls limit");
        limited
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        let e = status_error("x", &limited);
        assert_eq!(e.kind(), ErrorKind::Limited);
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        // Without one, waiting changes nothing: refused, not limited.
        limited
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "soon".parse().unwrap());
        let e = status_error("x", &limited);
        assert_eq!((e.kind(), e.retry_after()), (ErrorKind::Refused, None));
        let e = status_error("x", &Status::resource_exhausted("too many members"));
        assert_eq!(e.kind(), ErrorKind::Refused);
    }

    /// What [`session_accepted`] makes of `bytes` as the hub's first words on a framed
    /// session; the hub's side stays open unless `close`.
    async fn first_words(bytes: &[u8], close: bool, alert: &TlsAlert) -> Result<(), Error> {
        use tokio::io::AsyncWriteExt as _;

        let (mut hub, client) = tokio::io::duplex(64 * 1024);
        hub.write_all(bytes).await.unwrap();
        let _open = if close {
            drop(hub);
            None
        } else {
            Some(hub)
        };
        let mut frames = FrameReader::new(client, Limits::default());
        tokio::time::timeout(
            Duration::from_secs(10),
            session_accepted(&mut frames, alert, " at 127.0.0.1:1"),
        )
        .await
        .expect("an answer without waiting for more")
    }

    fn frame(kind: Option<server_frame::Kind>) -> Vec<u8> {
        let mut bytes = Vec::new();
        framed::encode_frame(&ServerFrame { kind }, &mut bytes);
        bytes
    }

    fn session_end(code: Code, message: &str) -> Vec<u8> {
        frame(Some(server_frame::Kind::SessionEnd(
            entente_wire::SessionEnd {
                code: code as u32,
                message: message.to_owned(),
            },
        )))
    }

    #[tokio::test]
    async fn a_framed_session_opens_on_the_empty_frame_only() {
        let alert = TlsAlert::default();
        first_words(&frame(None), false, &alert).await.unwrap();
        first_words(&[0; framed::PREFIX_BYTES], true, &alert)
            .await
            .unwrap();

        // Refused, with the hub's reason.
        for (code, kind) in [
            (Code::ResourceExhausted, ErrorKind::Limited),
            (Code::PermissionDenied, ErrorKind::Denied),
            (Code::Unavailable, ErrorKind::Connect),
        ] {
            let e = first_words(&session_end(code, "not now"), false, &alert)
                .await
                .unwrap_err();
            assert_eq!(e.kind(), kind, "{code:?}");
            assert!(e.to_string().contains("opening the session"), "{e}");
            assert!(e.to_string().contains("not now"), "{e}");
        }

        // Anything else first breaks the protocol.
        let ack = frame(Some(server_frame::Kind::Ack(entente_wire::Ack {
            request_id: 1,
            held: Vec::new(),
        })));
        let e = first_words(&ack, false, &alert).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Protocol);
        assert_eq!(
            e.to_string(),
            "the hub at 127.0.0.1:1 sent a frame before accepting the session"
        );

        // No word at all, part of one, or one over the limit.
        let e = first_words(&[], true, &alert).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed);
        assert_eq!(
            e.to_string(),
            "the hub at 127.0.0.1:1 closed the connection without a word"
        );
        let mut torn = frame(None);
        torn.truncate(framed::PREFIX_BYTES - 1);
        let mut cut = session_end(Code::Unavailable, "later");
        cut.truncate(cut.len() - 2);
        let over = u32::try_from(Limits::default().max_frame_bytes + 1)
            .unwrap()
            .to_be_bytes();
        for (bytes, close) in [(&torn[..], true), (&cut[..], true), (&over[..], false)] {
            let e = first_words(bytes, close, &alert).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Connect, "{bytes:?}");
            assert!(
                e.to_string()
                    .starts_with("opening the session with the hub at 127.0.0.1:1 failed: "),
                "{e}"
            );
        }
        let garbage = [0, 0, 0, 2, 0xff, 0xff];
        let e = first_words(&garbage, false, &alert).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    }

    #[tokio::test]
    async fn a_tls_alert_before_the_first_frame_is_the_reason() {
        let alert = TlsAlert::default();
        alert.record(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked),
        ));
        let e = first_words(&[], true, &alert).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tls);
        assert!(e.to_string().contains("CertificateRevoked"), "{e}");
        let e = first_words(&[0, 0], true, &alert).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tls);
    }

    #[tokio::test]
    async fn connections_have_tcp_keepalive_as_asked() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keepalive = Keepalive {
            interval: Duration::from_secs(7),
            timeout: Duration::from_secs(12),
        };
        let tcp = dial(addr, Some(keepalive)).await.unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        // The kernel counts whole seconds: shorter settings are raised to one.
        let short = Keepalive {
            interval: Duration::from_millis(300),
            timeout: Duration::from_millis(400),
        };
        let tcp = dial(addr, Some(short)).await.unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(1)
        );
        // Off when asked.
        let tcp = dial(addr, None).await.unwrap();
        assert!(!socket2::SockRef::from(&tcp).keepalive().unwrap());
        // And the client's options reach the connections.
        let options = crate::ClientOptions::new();
        assert_eq!(
            options.keepalive_settings(),
            Some(Keepalive {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(20),
            })
        );
        assert_eq!(options.keepalive(None).keepalive_settings(), None);
    }

    #[test]
    fn tls_errors_are_found_through_io_errors() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked),
        );
        assert_eq!(classify(&tls), ErrorKind::Tls);
        assert_eq!(
            classify(&std::io::Error::other("refused")),
            ErrorKind::Connect
        );
    }

    /// A server that refuses every client certificate as revoked, the way the hub refuses a
    /// revoked agent: the alert comes after the client's side of the TLS 1.3 handshake.
    #[derive(Debug)]
    struct RefuseAsRevoked(Arc<rustls::crypto::CryptoProvider>);

    impl rustls::server::danger::ClientCertVerifier for RefuseAsRevoked {
        fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
            &[]
        }

        fn verify_client_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ))
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls_pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// The race behind "the connection to the hub is closed: channel closed": the connection
    /// task reads the hub's alert and ends before the session asks whether the connection is
    /// ready. The refusal must still be what the caller sees.
    #[tokio::test]
    async fn a_refusal_read_before_the_first_call_is_reported_as_the_refusal() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let hub = rcgen::generate_simple_self_signed(vec!["hub.test".to_owned()]).unwrap();
        let agent = rcgen::generate_simple_self_signed(vec!["agent.test".to_owned()]).unwrap();
        let key =
            |k: &rcgen::KeyPair| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()));

        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(RefuseAsRevoked(provider.clone())))
            .with_single_cert(vec![hub.cert.der().clone()], key(&hub.signing_key))
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(hub.cert.der().clone()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![agent.cert.der().clone()], key(&agent.signing_key))
            .unwrap();
        client.alpn_protocols = vec![b"h2".to_vec()];

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(tcp);
            let Err((_, mut tcp)) = accept.into_fallible().await else {
                panic!("the server accepted the certificate");
            };
            // As the hub does: FIN after the alert, and read until the client goes.
            tcp.shutdown().await.unwrap();
            let _ = tcp.read_to_end(&mut Vec::new()).await;
        });

        let name = rustls_pki_types::ServerName::try_from("hub.test").unwrap();
        let (connection, driver) = H2Connection::open(client, name, addr, None)
            .await
            .expect("the client's side of the handshake completes");
        let transport = Transport {
            alert: connection.alert.clone(),
            calls: Calls::Session(connection),
            limits: Limits::default(),
        };
        // The connection task ends once it has read the alert.
        driver.await.unwrap();
        let (_outbound, rx) = mpsc::channel(1);
        let e = transport.session(rx).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
        assert_eq!(
            e.to_string(),
            "the hub refused the connection: received fatal alert: CertificateRevoked"
        );
        server.await.unwrap();
    }
}
