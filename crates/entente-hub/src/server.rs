//! The server: accept loop, TLS, HTTP/2, gRPC routing by path, and the operator's handle.
//!
//! `TcpListener` → `LazyConfigAcceptor` (pick the TLS configuration by SNI) → handshake under a
//! timeout → re-check the client's SVID and register the connection → hyper's HTTP/2 server,
//! whose service routes by path: [`SESSION_PATH`] to the session, anything else `UNIMPLEMENTED`.
//! The connection's verified principal is captured by the service; nothing the client sends
//! can change it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use entente_ca::{Ca, TrustBundle, VerifiedRevocationList};
use entente_types::Principal;
use entente_wire::ClientFrame;
use futures_util::Stream;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::LazyConfigAcceptor;
use tonic::body::Body;
use tonic::server::Grpc;
use tonic::{Request, Response, Status, Streaming};

use crate::allow::AllowList;
use crate::codec::{Outbound, SessionCodec};
use crate::control::{self, CloseReason, ConnectionControl};
use crate::replay::ReplayGuard;
use crate::router::{LocalRouter, SessionId};
use crate::session::{self, Session, SessionContext};
use crate::stats::{self, HubStats, Stats};
use crate::tls::{self, HubCertResolver, Listener, TlsConfigs};
use crate::verifier::{RevocationState, SvidClientVerifier};
use crate::{HubConfig, HubError};

/// The gRPC path of the session stream.
pub const SESSION_PATH: &str = "/entente.v1.Hub/Session";

/// How long a closed connection may take to flush its final statuses before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long shutdown waits for connections before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Retry delay when renewing the hub's certificate fails.
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// How long an enrollment connection may stay open.
const ENROLL_LIFETIME: Duration = Duration::from_secs(60);

/// Starts hubs.
#[derive(Debug)]
pub struct Hub;

/// A running hub. Dropping it shuts the hub down without waiting; prefer
/// [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct HubHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    renew: JoinHandle<()>,
}

/// State shared by the accept loop, connections and the handle.
#[derive(Debug)]
struct Shared {
    config: HubConfig,
    trust: TrustBundle,
    tls: TlsConfigs,
    verifier: Arc<SvidClientVerifier>,
    revocations: Arc<RevocationState>,
    context: SessionContext<LocalRouter>,
    replay: ReplayGuard,
    stats: Arc<Stats>,
    connections: Mutex<HashMap<u64, LiveConnection>>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// What the hub knows of a live mTLS connection.
#[derive(Debug)]
struct LiveConnection {
    principal: Principal,
    serial: Vec<u8>,
    control: ConnectionControl,
}

// === impl Hub ===

impl Hub {
    /// Issues the hub's certificate with `ca`, binds `config.listen` and starts serving.
    pub async fn start(config: HubConfig, ca: Arc<Ca>) -> Result<HubHandle, HubError> {
        config.check()?;
        let provider = tls::provider();
        let trust = ca.trust_bundle().clone();
        let hub = Principal::from(
            crate::hub_id(trust.trust_domain())
                .map_err(|e| HubError::Certificate(e.to_string()))?,
        );
        let (key, not_after) = tls::issue_hub_cert(&ca, &hub, &provider, SystemTime::now())?;
        let resolver = Arc::new(HubCertResolver::new(key));
        let revocations = Arc::new(RevocationState::default());
        let verifier = Arc::new(SvidClientVerifier::new(
            trust.clone(),
            revocations.clone(),
            hub.clone(),
            provider.clone(),
        )?);
        let tls = TlsConfigs::new(
            verifier.clone(),
            resolver.clone(),
            crate::enroll_server_name(trust.trust_domain()),
            provider.clone(),
        )?;

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| HubError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: config.listen,
            source,
        })?;

        let stats = Arc::new(Stats::default());
        let context = SessionContext {
            router: Arc::new(LocalRouter::new(config.slow_consumer_timeout)),
            allow: Arc::new(config.allow.clone()),
            stats: stats.clone(),
            limits: config.limits,
            max_subscriptions: config.max_subscriptions,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            trust,
            tls,
            verifier,
            revocations,
            context,
            replay: ReplayGuard::default(),
            stats,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx.clone()));
        let renew = tokio::spawn(renew_loop(ca, hub, resolver, not_after, shutdown_rx));
        Ok(HubHandle {
            local_addr,
            shared,
            shutdown,
            accept: Some(accept),
            renew,
        })
    }
}

// === impl HubHandle ===

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        self.shared.stats.snapshot()
    }

    /// The trust bundle the hub verifies clients against.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.shared.trust
    }

    /// The allow list in force.
    pub fn allow_list(&self) -> &AllowList {
        &self.shared.context.allow
    }

    /// How many mTLS connections are open.
    pub fn connections(&self) -> usize {
        self.shared.lock_connections().len()
    }

    /// Puts a revocation list in force: new handshakes check it, and every live connection
    /// whose principal or certificate serial it revokes is closed at once (its streams end with
    /// `PERMISSION_DENIED`). Returns how many connections were closed. A list whose version is
    /// not above the one in force is refused.
    pub fn revoke(&self, list: VerifiedRevocationList) -> Result<usize, HubError> {
        let list = self.shared.revocations.replace(list)?;
        let closed = self
            .shared
            .lock_connections()
            .values()
            .filter(|c| list.is_revoked(&c.serial, &c.principal))
            .filter(|c| c.control.close(CloseReason::Revoked))
            .count();
        stats::add(&self.shared.stats.revoked_disconnects, closed as u64);
        Ok(closed)
    }

    /// Stops accepting, closes every connection (`UNAVAILABLE`), and waits for them to end.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let _ = (&mut self.renew).await;
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
    }
}

// === impl Shared ===

impl Shared {
    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveConnection>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection, then re-checks it against the list in force and the shutdown
    /// flag, so that a revocation or shutdown racing with the handshake is never missed.
    /// Returns whether the connection may be served.
    fn register(&self, id: u64, connection: LiveConnection) -> bool {
        let control = connection.control.clone();
        let (serial, principal) = (connection.serial.clone(), connection.principal.clone());
        self.lock_connections().insert(id, connection);
        let revoked = self
            .revocations
            .current()
            .is_some_and(|list| list.is_revoked(&serial, &principal));
        if revoked && control.close(CloseReason::Revoked) {
            stats::bump(&self.stats.revoked_disconnects);
        }
        if *self.shutdown.borrow() {
            control.close(CloseReason::Shutdown);
        }
        !control.is_closed()
    }

    fn unregister(&self, id: u64) {
        self.lock_connections().remove(&id);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

// === accept loop ===

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => {
                    let _ = tcp.set_nodelay(true);
                    tasks.spawn(serve_tcp(shared.clone(), tcp));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            // Reap finished connection tasks as we go.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    for connection in shared.lock_connections().values() {
        connection.control.close(CloseReason::Shutdown);
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tasks.abort_all();
    }
}

/// Re-issues the hub's certificate at half its remaining lifetime.
async fn renew_loop(
    ca: Arc<Ca>,
    hub: Principal,
    resolver: Arc<HubCertResolver>,
    mut not_after: SystemTime,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = half_life(not_after);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(wait) => {}
        }
        // Signing goes through the key store, which may do file I/O.
        let issued = {
            let (ca, hub) = (ca.clone(), hub.clone());
            tokio::task::spawn_blocking(move || {
                tls::issue_hub_cert(&ca, &hub, &tls::provider(), SystemTime::now())
            })
            .await
        };
        match issued {
            Ok(Ok((key, expires))) => {
                resolver.replace(key);
                not_after = expires;
                wait = half_life(not_after);
            }
            Ok(Err(_)) | Err(_) => {
                wait = RENEW_RETRY
                    .min(half_life(not_after))
                    .max(Duration::from_secs(1))
            }
        }
    }
}

/// Resolves once shutdown is signalled (or the handle is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}

fn half_life(not_after: SystemTime) -> Duration {
    not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
        / 2
}

// === one connection ===

async fn serve_tcp(shared: Arc<Shared>, tcp: TcpStream) {
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let (listener, config) = shared.tls.select(start.client_hello().server_name());
        let stream = start.into_stream(config).await?;
        Ok::<_, std::io::Error>((listener, stream))
    };
    let (listener, stream) =
        match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
            Ok(Ok(accepted)) => accepted,
            Ok(Err(_)) | Err(_) => {
                stats::bump(&shared.stats.handshakes_failed);
                return;
            }
        };
    match listener {
        Listener::Enroll => serve_enroll(&shared, stream).await,
        Listener::Mtls => serve_mtls(shared, stream).await,
    }
}

/// An enrollment connection: no client identity. Enrollment is not served yet; every request
/// is `UNIMPLEMENTED`. It lives at most [`ENROLL_LIFETIME`], and not past shutdown.
async fn serve_enroll(shared: &Shared, stream: tokio_rustls::server::TlsStream<TcpStream>) {
    stats::bump(&shared.stats.connections);
    let service = service_fn(|_request: http::Request<Incoming>| async {
        Ok::<_, Infallible>(
            Status::unimplemented("enrollment is not served yet").into_http::<Body>(),
        )
    });
    let builder = h2_builder(&shared.config);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = connection => {}
        () = tokio::time::sleep(ENROLL_LIFETIME) => {}
        () = stopped(&mut shutdown) => {}
    }
}

async fn serve_mtls(shared: Arc<Shared>, stream: tokio_rustls::server::TlsStream<TcpStream>) {
    // The verifier passed the chain during the handshake; verify again to learn the identity
    // (and with the revocation list in force now).
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    let Ok(svid) = shared.verifier.verify_chain(chain, SystemTime::now()) else {
        stats::bump(&shared.stats.handshakes_failed);
        return;
    };
    stats::bump(&shared.stats.connections);
    let id = shared.next_id();
    let control = ConnectionControl::new();
    let principal = svid.principal().clone();
    let registered = shared.register(
        id,
        LiveConnection {
            principal: principal.clone(),
            serial: svid.serial().to_vec(),
            control: control.clone(),
        },
    );
    if registered {
        let service = {
            let shared = shared.clone();
            let control = control.clone();
            service_fn(move |request| {
                route_request(shared.clone(), principal.clone(), control.clone(), request)
            })
        };
        let builder = h2_builder(&shared.config);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut closed = control.watch();
        let expiry = svid
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let ended = tokio::select! {
            _ = connection.as_mut() => true,
            _ = control::closed(&mut closed) => false,
            () = tokio::time::sleep(expiry) => {
                control.close(CloseReason::CertificateExpired);
                false
            }
        };
        if !ended {
            // The streams end with the close reason's status; then GOAWAY, then the socket.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
    shared.unregister(id);
}

fn h2_builder(config: &HubConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_header_list_size(16 * 1024);
    builder
}

// === gRPC routing ===

async fn route_request(
    shared: Arc<Shared>,
    principal: Principal,
    control: ConnectionControl,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    if request.uri().path() != SESSION_PATH {
        return Ok(Status::unimplemented("unknown method").into_http());
    }
    let limits = shared.config.limits;
    let service = SessionService {
        shared,
        principal,
        control,
    };
    let mut grpc = Grpc::new(SessionCodec::new(limits))
        .max_decoding_message_size(limits.max_frame_bytes)
        .max_encoding_message_size(limits.max_frame_bytes);
    Ok(grpc.streaming(service, request).await)
}

/// Starts a session for one `Session` stream.
struct SessionService {
    shared: Arc<Shared>,
    principal: Principal,
    control: ConnectionControl,
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<Outbound, Status>> + Send>>;

impl tower_service::Service<Request<Streaming<ClientFrame>>> for SessionService {
    type Response = Response<OutboundStream>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<ClientFrame>>) -> Self::Future {
        let shared = &self.shared;
        let (tx, rx) = mpsc::channel(shared.config.queue_capacity);
        let (end_tx, end_rx) = watch::channel(None);
        let id: SessionId = shared.next_id();
        let session = Session::new(
            id,
            self.principal.clone(),
            shared.context.clone(),
            shared.replay.sender(&self.principal),
            tx,
            self.control.clone(),
        );
        tokio::spawn(session::run(session, request.into_inner(), end_tx));
        ready(Ok(Response::new(outbound_stream(
            rx,
            end_rx,
            self.control.watch(),
        ))))
    }
}

/// The response stream of a session: queued frames; then, if the session ended with a status,
/// what is still queued followed by that status; or, if the connection was closed, the close
/// reason's status at once (a slow consumer's queue is not drained).
fn outbound_stream(
    rx: mpsc::Receiver<Outbound>,
    end: watch::Receiver<Option<Status>>,
    closed: watch::Receiver<Option<CloseReason>>,
) -> OutboundStream {
    struct State {
        rx: mpsc::Receiver<Outbound>,
        end: watch::Receiver<Option<Status>>,
        closed: watch::Receiver<Option<CloseReason>>,
        draining: Option<Status>,
    }
    let state = State {
        rx,
        end,
        closed,
        draining: None,
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut state = state?;
            loop {
                if state.draining.is_some() {
                    return match state.rx.try_recv() {
                        Ok(frame) => Some((Ok(frame), Some(state))),
                        Err(_) => state.draining.take().map(|status| (Err(status), None)),
                    };
                }
                tokio::select! {
                    biased;
                    reason = control::closed(&mut state.closed) => {
                        return Some((Err(reason.status()), None));
                    }
                    status = ended(&mut state.end) => state.draining = Some(status),
                    frame = state.rx.recv() => return frame.map(|frame| (Ok(frame), Some(state))),
                }
            }
        },
    ))
}

/// Resolves with the session's end status once there is one.
async fn ended(rx: &mut watch::Receiver<Option<Status>>) -> Status {
    let status = match rx.wait_for(Option::is_some).await {
        Ok(status) => status.clone(),
        Err(_) => None,
    };
    match status {
        Some(status) => status,
        None => std::future::pending().await,
    }
}
