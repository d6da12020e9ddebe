//! The server: accept loop, TLS, HTTP/2, gRPC routing by path, and the operator's handle.
//!
//! `TcpListener` → [`tls_stream::accept`] (pick the TLS configuration by SNI) → handshake under a
//! timeout → re-check the client's SVID and register the connection → hyper's HTTP/2 server,
//! whose service routes by path:
//!
//! - on a mutual-TLS connection: [`SESSION_PATH`] to a session, [`RENEW_PATH`],
//!   [`DIRECTORY_PATH`], [`CREATE_TOKEN_PATH`], [`REVOKE_PATH`], [`LOAD_POLICIES_PATH`],
//!   [`SHOW_POLICIES_PATH`] and [`CHECK_POLICY_PATH`] to their unary services (all but the
//!   first two for listed administrators, or as the policies permit), [`GRANT_PATH`],
//!   [`LIST_GRANTS_PATH`], [`REQUEST_GRANT_PATH`], [`REVOKE_GRANT_PATH`] and [`APPROVE_PATH`]
//!   to the grant services (authorized by the policies), [`LIST_HELD_PATH`] to the held
//!   messages, anything else (enrollment included) `UNIMPLEMENTED`;
//! - on an enrollment connection: [`ENROLL_PATH`] only, anything else `UNIMPLEMENTED`.
//!
//! The connection's verified principal is captured by the service; nothing the client sends
//! can change it.
//!
//! The store is type-erased once at [`Hub::start`] ([`Registry`]), so that [`HubHandle`] and
//! the connection tasks are not generic over it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use entente_ca::{Ca, JoinToken, TrustBundle, VerifiedRevocationList, VerifiedSvid};
use entente_store::Store;
use entente_types::Principal;
use entente_wire::{
    ApproveRequest, Bounded, ClientFrame, CreateTokenRequest, GrantRequest, KeysRequest, Limits,
    LoadPoliciesRequest, QuarantineRequest, RequestGrantRequest, RevokeGrantRequest, RevokeRequest,
};
use futures_util::Stream;
use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tonic::body::Body;
use tonic::server::Grpc;
use tonic::{Request, Response, Status, Streaming};

use crate::admin::{self, CREATE_TOKEN_PATH, REVOKE_PATH};
use crate::anomaly::Anomaly;
use crate::audit::{AuditWriter, Auditor, StartingAudit};
use crate::audit_rpc::{self, AUDIT_EXPORT_PATH, AUDIT_PROOF_PATH, AUDIT_RECORDS_PATH};
use crate::authz::{Authz, LoadPoliciesError, PolicyOrigin, RunningPolicies};
use crate::codec::{BoundedCodec, Outbound, SessionCodec};
use crate::connections::{Caps, ConnectionLimit, Connections, Credentials};
use crate::control::{self, CloseReason, ConnectionControl};
use crate::datakeys::{self, DataKeys};
use crate::durable::{StreamWriters, Streams};
use crate::framed;
use crate::grants::{
    APPROVE_PATH, GRANT_PATH, LIST_GRANTS_PATH, REQUEST_GRANT_PATH, REVOKE_GRANT_PATH,
};
use crate::held::{self, LIST_HELD_PATH};
use crate::keys::{self, KEYS_PATH};
use crate::limits::Limiters;
use crate::metrics;
use crate::notify::Notifier;
use crate::policies::{CHECK_POLICY_PATH, LOAD_POLICIES_PATH, SHOW_POLICIES_PATH};
use crate::quarantine::{self, QUARANTINE_PATH};
use crate::queue::{OutboundRx, OutboundTx};
use crate::registry::Registry;
use crate::renew::Caller;
use crate::replay::ReplayGuard;
use crate::rollover::{self, CaState};
use crate::router::{LocalRouter, SessionId};
use crate::rpc::{self, DIRECTORY_PATH, ENROLL_PATH, RENEW_PATH, RpcError, Services, Unary};
use crate::session::{self, Session, SessionContext};
use crate::stats::{self, HubStats, Stats};
use crate::tls::{self, HubCertResolver, Listener, TlsConfigs};
use crate::tls_stream::{self, Refused, TlsStream};
use crate::unauth::{Pending, Refusal};
use crate::verifier::{RevocationState, SvidClientVerifier};
use crate::{HubConfig, HubError, directory, enroll, grant_state, grants, policies, renew};

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

/// How long a connection refused at the handshake is kept to deliver its alert.
const REFUSED_LINGER: Duration = Duration::from_secs(1);

/// How much a client refused at the handshake may still send (and have discarded).
const REFUSED_DRAIN_BYTES: usize = 64 * 1024;

/// How long a connection refused by a connection limit is kept, answering every request
/// `RESOURCE_EXHAUSTED` with the reason, before it is closed.
const LIMITED_LIFETIME: Duration = Duration::from_secs(5);

/// How often the hub pings each connection, and how long it waits for the answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the hub's stop waits for the unary calls still running before it closes the
/// audit log.
const CALLS_AT_STOP: Duration = Duration::from_secs(10);

/// TCP keepalive probes sent within [`KEEPALIVE_TIMEOUT`] before a framed connection's peer is
/// taken for gone.
const KEEPALIVE_PROBES: u32 = 4;

/// How often the rate limits' buckets that are full again are dropped.
const LIMITS_PURGE: Duration = Duration::from_secs(60);

/// Starts hubs.
#[derive(Debug)]
pub struct Hub;

/// A running hub. Dropping it shuts the hub down without waiting; prefer
/// [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct HubHandle {
    local_addr: SocketAddr,
    /// Where the metrics endpoint listens, if it is on.
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept: Option<JoinHandle<()>>,
    renew: JoinHandle<()>,
    /// Expires grants on time ([`grant_state::expire_loop`]).
    expire: JoinHandle<()>,
    /// Rotates the data key on time ([`datakeys::rotate_loop`]).
    rotate: JoinHandle<()>,
    /// Takes the steps of intermediate CA rollovers when due.
    rollover: JoinHandle<()>,
    /// Pushes the metrics to an OpenTelemetry collector, if configured: told to stop once the
    /// connections are closed, and its last export waited for.
    otlp: Option<(tokio::sync::oneshot::Sender<()>, JoinHandle<()>)>,
    data_keys: Arc<DataKeys>,
    /// The durable channels' writer threads, closed and joined at shutdown.
    stream_writers: Option<StreamWriters>,
    /// The audit log's writer thread, closed and joined last.
    audit_writer: Option<AuditWriter>,
}

/// State shared by the accept loop, connections and the handle.
#[derive(Debug)]
struct Shared {
    config: HubConfig,
    /// The hub's own certificate in use.
    resolver: Arc<HubCertResolver>,
    trust: TrustBundle,
    tls: TlsConfigs,
    verifier: Arc<SvidClientVerifier>,
    revocations: Arc<RevocationState>,
    context: SessionContext<LocalRouter>,
    services: Arc<Services<LocalRouter>>,
    replay: ReplayGuard,
    stats: Arc<Stats>,
    connections: Arc<Connections>,
    next_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

// === impl Hub ===

impl Hub {
    /// Issues the hub's certificate with `ca`, puts the revocation list kept in `store` (if
    /// any) in force, binds `config.listen` and starts serving.
    ///
    /// The hub keeps join tokens, agent records, key bundles, the revocation list and the
    /// policy sources in `store`. The policy set is the stored one if the store holds one
    /// ([`HubError::StoredPolicies`] if it no longer loads), else `config.policies` (then
    /// stored; [`HubError::InitialPolicies`] if they do not load), always with the base
    /// policies. It is generic over the store here only: the store is type-erased inside, so
    /// [`HubHandle`] is one type whatever the backend.
    pub async fn start<S: Store>(
        config: HubConfig,
        ca: Arc<Ca>,
        store: Arc<S>,
    ) -> Result<HubHandle, HubError> {
        config.check(ca.trust_domain().as_str(), ca.options().svid_ttl)?;
        let registry = Registry::new(store);
        let provider = tls::provider();
        // The CA as a rollover left it, if one began.
        let ca_state = CaState::open(ca, &registry, &config.limits, config.ca_rollover).await?;
        let ca = ca_state.current();
        let trust = ca.trust_bundle().clone();
        let hub = Principal::from(
            crate::hub_id(trust.trust_domain())
                .map_err(|e| HubError::Certificate(e.to_string()))?,
        );
        let (key, not_after) = tls::issue_hub_cert(&ca, &hub, &provider, SystemTime::now())?;
        let resolver = Arc::new(HubCertResolver::new(key, not_after));
        let revocations = Arc::new(RevocationState::default());
        if let Some((_, bytes)) = registry.revocations().await? {
            let list =
                VerifiedRevocationList::decode(&bytes, &config.limits, &trust, SystemTime::now())
                    .map_err(|e| HubError::StoredRevocations(e.to_string()))?;
            revocations.replace(list)?;
        }
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
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| HubError::Bind { addr, source })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(metrics::bound);

        let stats = Arc::new(Stats::default());
        // Checked before anything starts: a bad address, certificate or header stops the hub.
        let otlp_exporter = config
            .otlp
            .as_ref()
            .map(|otlp| {
                crate::otlp::Exporter::new(otlp, &format!("{hub}@{local_addr}"), stats.clone())
            })
            .transpose()?;
        let audit_keystore = config
            .key_stores
            .audit
            .clone()
            .unwrap_or_else(|| ca.keystore().clone());
        let (auditor, audit_writer) = match &config.audit {
            Some(audit) => {
                Auditor::open(
                    audit,
                    trust.trust_domain().as_str(),
                    &audit_keystore,
                    &registry,
                    stats.clone(),
                )
                .await?
            }
            None => (Auditor::off(), AuditWriter::none()),
        };
        // Closed and joined if the start fails from here on.
        let audit_writer = StartingAudit::new(&auditor, audit_writer);
        let data_keys = Arc::new(
            DataKeys::load(
                config
                    .key_stores
                    .data
                    .clone()
                    .unwrap_or_else(|| ca.keystore().clone()),
                &registry,
                rpc::unix_ms(SystemTime::now()),
            )
            .await?,
        );
        config.anomaly.check().map_err(HubError::Config)?;
        let anomaly = Arc::new(Anomaly::new(config.anomaly));
        quarantine::restore(&anomaly, &registry, &config.limits).await?;
        let authz = Arc::new(
            Authz::start(
                &registry,
                &config.policies,
                config.replace_stored_policies,
                config.limits,
                config.grant_limits.clone(),
                stats.clone(),
            )
            .await?
            .with_danger(config.danger)
            .with_auditor(auditor)
            .with_anomaly(anomaly.clone()),
        );
        // The stored grants under the set the hub starts with (another, from the files).
        authz.conform_grants(&registry).await;
        let notifier = Notifier::start(config.quarantine_webhook.as_ref(), stats.clone())?;
        let opened = Streams::open(
            &config.streams,
            config.streams_dir.as_deref(),
            &data_keys,
            &stats,
            authz.auditor(),
        );
        // What opening the streams recorded (a repair made at open) is on disk before the hub
        // starts, or stops for a stream that failed: never only queued when it exits.
        let recorded = authz.auditor().durable(authz.auditor().ticket()).await;
        let (streams, stream_writers) = opened?;
        if recorded.is_err() {
            streams.close();
            stream_writers.join().await;
            return Err(HubError::Audit(
                "recording what opening the durable channels did".into(),
            ));
        }
        let streams = Arc::new(streams);
        let caps = Caps {
            total: config.max_connections,
            per_agent: config.max_connections_per_agent,
        };
        let connections = Arc::new(Connections::new(revocations.clone(), stats.clone(), caps));
        let context = SessionContext {
            router: Arc::new(LocalRouter::new(config.slow_consumer_timeout)),
            authz,
            stats: stats.clone(),
            grants: Arc::default(),
            limits: config.limits,
            max_subscriptions: config.max_subscriptions,
            streams: streams.clone(),
            limiters: Arc::new(
                Limiters::new(&config.rate_limits).with_throttle(config.anomaly.throttled),
            ),
            anomaly: anomaly.clone(),
            limit_runs: Arc::default(),
            slow_consumer_timeout: config.slow_consumer_timeout,
        };
        let services = Arc::new(Services {
            ca: ca_state,
            call_tasks: Arc::new(tokio::sync::Semaphore::new(rpc::MAX_CALL_TASKS as usize)),
            audit_keystore,
            registry,
            revocations: revocations.clone(),
            connections: connections.clone(),
            router: context.router.clone(),
            authz: context.authz.clone(),
            stats: stats.clone(),
            limits: config.limits,
            key_bundle_ttl: config.key_bundle_ttl,
            max_join_tokens: u64::try_from(config.max_join_tokens).unwrap_or(u64::MAX),
            next_token_purge_ms: std::sync::atomic::AtomicU64::new(0),
            agents: tokio::sync::Mutex::new(()),
            admins: config.admins.iter().cloned().collect::<HashSet<_>>(),
            revoking: tokio::sync::Mutex::new(()),
            streams: streams.clone(),
            data_keys: data_keys.clone(),
            anomaly,
            notifier,
            enroll_refusals: Arc::default(),
            limiters: context.limiters.clone(),
            call_hits: crate::calls::CallHits::default(),
            limit_runs: context.limit_runs.clone(),
            connection_hits: crate::calls::ConnectionHits::default(),
            unauthenticated: Arc::new(crate::unauth::Unauthenticated::new(
                config.max_unauthenticated,
                config.max_unauthenticated_per_source,
            )),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            config,
            resolver: resolver.clone(),
            trust,
            tls,
            verifier,
            revocations,
            context,
            services,
            replay: ReplayGuard::default(),
            stats,
            connections,
            next_id: AtomicU64::new(1),
            shutdown: shutdown_rx.clone(),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), shutdown_rx.clone()));
        if let Some(listener) = metrics_listener {
            // The endpoint holds the hub weakly: it never keeps a stopped hub alive.
            let weak = Arc::downgrade(&shared);
            let scrape = move || weak.upgrade().map(|s| s.metrics()).unwrap_or_default();
            tokio::spawn(metrics::serve(listener, scrape, shutdown_rx.clone()));
        }
        // Held weakly too; `shutdown` waits for the last export, made while the hub is whole.
        let otlp = otlp_exporter.map(|exporter| {
            let weak = Arc::downgrade(&shared);
            let scrape = move || {
                weak.upgrade()
                    .map(|s| s.metric_families())
                    .unwrap_or_default()
            };
            let (stop, stopped) = tokio::sync::oneshot::channel();
            (stop, tokio::spawn(exporter.run(scrape, stopped)))
        });
        tokio::spawn(purge_loop(shared.services.clone(), shutdown_rx.clone()));
        let expire = tokio::spawn(grant_state::expire_loop(
            shared.context.authz.clone(),
            shared.services.registry.clone(),
            shutdown_rx.clone(),
        ));
        let rotate = tokio::spawn(datakeys::rotate_loop(
            data_keys.clone(),
            shared.services.registry.clone(),
            shared.context.authz.auditor().clone(),
            shared.config.data_key_rotation,
            // The oldest version an entry kept in a durable channel names.
            move |keys: &DataKeys| streams.oldest_key_version(keys),
            shutdown_rx.clone(),
        ));
        tokio::spawn(quarantine::watch_loop(
            shared.services.clone(),
            shutdown_rx.clone(),
        ));
        let rollover = tokio::spawn(rollover::rollover_loop(
            shared.services.clone(),
            shutdown_rx.clone(),
        ));
        let renew = tokio::spawn(renew_loop(
            shared.services.clone(),
            hub,
            resolver,
            not_after,
            shutdown_rx,
        ));
        tracing::info!(
            listen = %local_addr,
            trust_domain = %ca.trust_domain(),
            metrics = %metrics_addr.map_or_else(|| "off".to_owned(), |a| a.to_string()),
            "hub serving"
        );
        Ok(HubHandle {
            local_addr,
            metrics_addr,
            shared,
            shutdown,
            accept: Some(accept),
            renew,
            expire,
            rotate,
            rollover,
            otlp,
            data_keys,
            stream_writers: Some(stream_writers),
            audit_writer: Some(audit_writer.started()),
        })
    }
}

// === impl HubHandle ===

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the Prometheus metrics endpoint listens on (`HubConfig::metrics_listen`),
    /// if it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics as the endpoint serves them (the Prometheus text format).
    pub fn metrics(&self) -> String {
        self.shared.metrics()
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        self.shared.stats.snapshot()
    }

    /// The trust bundle the hub started with: its root is what agents anchor in, and never
    /// changes; after an intermediate rollover, [`ca`](Self::ca) has the bundle in force.
    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.shared.trust
    }

    /// The running policy set, its sources and the policy epoch.
    pub fn policies(&self) -> RunningPolicies {
        self.shared.context.authz.running()
    }

    /// The policy epoch: it starts at 1 and goes up with every policy load and every change
    /// decisions may depend on (a revocation; a grant given, approved or ended).
    pub fn policy_epoch(&self) -> u64 {
        self.shared.context.authz.engine().epoch()
    }

    /// Where the policy set the hub started with came from: the store, or
    /// [`HubConfig::policies`].
    pub fn policy_origin(&self) -> PolicyOrigin {
        self.shared.context.authz.origin()
    }

    /// Replaces the running policy set with the base policies and `sources` (`(name, text)`,
    /// Cedar), all or nothing: the set is validated, stored, then put in force, and the new
    /// policy epoch returned. Every session then decides its subscriptions again and ends,
    /// with `SubscriptionEnded` (`DENIED`), those no longer allowed. On any error (invalid
    /// policies, bounds, the store) the running set and the epoch are unchanged. Remote
    /// administrators reach the same code through [`LOAD_POLICIES_PATH`].
    pub async fn load_policies(
        &self,
        sources: Vec<(String, String)>,
    ) -> Result<u64, LoadPoliciesError> {
        let services = &self.shared.services;
        services
            .authz
            .load(&services.registry, sources)
            .await
            .map(|(epoch, _)| epoch)
    }

    /// The grant book in force: every grant (ended ones until the hub expires them, which it
    /// does on time) and every request kept. Give and decide grants through the grant RPCs
    /// ([`GRANT_PATH`], [`REQUEST_GRANT_PATH`], [`APPROVE_PATH`]).
    pub fn grant_book(&self) -> Arc<entente_policy::GrantBook> {
        self.shared.context.authz.grants().book()
    }

    /// How many mTLS connections are open.
    pub fn connections(&self) -> usize {
        self.shared.connections.len()
    }

    /// How many connections are not yet authenticated: in their TLS handshake (or refused
    /// after it, while told why), or on the enrollment listener
    /// ([`HubConfig::max_unauthenticated`]).
    pub fn unauthenticated_connections(&self) -> usize {
        self.shared.services.unauthenticated.len()
    }

    /// Creates a one-time join token for `principal` — an agent
    /// ([`AgentId`](entente_types::AgentId)) or a human ([`HumanId`](entente_types::HumanId)) —
    /// valid for `ttl`, and stores its SHA-256 (never the token). The token is returned once,
    /// to hand to the agent or human.
    ///
    /// Refuses an agent of the reserved segment [`HUB_SEGMENT`](crate::HUB_SEGMENT)
    /// ([`HubError::Token`]), a principal of another trust domain ([`HubError::ForeignAgent`]),
    /// and a zero or unrepresentable `ttl`. Tokens that have expired are purged from the store
    /// on the way. Remote administrators reach the same code through [`CREATE_TOKEN_PATH`],
    /// which also caps `ttl` at [`MAX_TOKEN_TTL`](crate::MAX_TOKEN_TTL).
    pub async fn create_token(
        &self,
        principal: impl Into<Principal>,
        ttl: Duration,
    ) -> Result<JoinToken, HubError> {
        enroll::create_token(
            &self.shared.services,
            principal.into(),
            ttl,
            SystemTime::now(),
        )
        .await
        .map(|issued| issued.token)
    }

    /// The revocation list in force, if any. A list for [`revoke`](Self::revoke) must have a
    /// higher version: build it from this one to add to what is revoked.
    pub fn revocations(&self) -> Option<VerifiedRevocationList> {
        self.shared
            .revocations
            .current()
            .map(std::sync::Arc::unwrap_or_clone)
    }

    /// Stores a revocation list and puts it in force: new handshakes check it, enrollment,
    /// renewal and the directory refuse or omit what it revokes, and every live connection
    /// whose principal or certificate serial (presented or renewed over it) it revokes is
    /// closed at once (its streams end with `PERMISSION_DENIED`), and the policy epoch is
    /// bumped (cached decisions are dropped; sessions decide their subscriptions again).
    /// Returns how many connections were closed.
    ///
    /// A list whose version is not above the one in force (or stored) is refused
    /// ([`HubError::StaleRevocations`]); if the store fails, nothing changes. The list in the
    /// store is put in force again when the hub restarts. `list` replaces the list in force
    /// (it may drop entries, to reinstate); remote administrators ([`REVOKE_PATH`]) only ever
    /// add to it, through the same code.
    pub async fn revoke(&self, list: VerifiedRevocationList) -> Result<usize, HubError> {
        let services = &self.shared.services;
        let revoking = services.revoking.lock().await;
        let closed =
            admin::put_in_force(services, &revoking, list, crate::audit::HUB_ACTOR).await?;
        let auditor = services.authz.auditor();
        auditor
            .durable(auditor.ticket())
            .await
            .map_err(|e| HubError::Audit(e.to_string()))?;
        Ok(closed)
    }

    /// The certificate serials renewed, directly or through others, from any of `serials`
    /// (each agent's record keeps where its renewals came from): what a list revoking a stolen
    /// certificate should revoke with it, or the thief's renewals live on. A revocation through
    /// [`REVOKE_PATH`] adds them by itself; a list given to [`revoke`](Self::revoke) is put in
    /// force as it is.
    pub async fn renewed_from(&self, serials: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, HubError> {
        let records = self.shared.services.registry.agents().await?;
        Ok(rpc::renewed_from(&records, serials))
    }

    /// The hub's data keys ([`datakeys`](crate::datakeys)): their versions, and sealing at
    /// rest.
    pub fn data_keys(&self) -> &DataKeys {
        &self.data_keys
    }

    /// The CA in use: after an intermediate rollover step, another one than the hub started
    /// with.
    pub fn ca(&self) -> Arc<Ca> {
        self.shared.services.ca.current()
    }

    /// Stages a new intermediate CA now, on the operator's account (`entente keys rotate
    /// intermediate`); the hub activates it an overlap later and retires the old one another
    /// overlap after that ([`CaRollover`](crate::CaRollover)). Returns what was staged.
    pub async fn stage_intermediate(&self) -> Result<String, HubError> {
        rollover::take_step(
            &self.shared.services,
            rollover::Step::Stage,
            crate::audit::HUB_ACTOR,
            SystemTime::now(),
        )
        .await
        .map_err(|e| HubError::Ca(e.to_string()))
    }

    /// Makes a new data key now (`entente keys rotate data`), recorded in the audit log as
    /// the operator's; returns its version.
    pub async fn rotate_data_key(&self) -> Result<u32, HubError> {
        let services = &self.shared.services;
        let auditor = services.authz.auditor();
        auditor
            .check()
            .map_err(|e| HubError::Audit(e.to_string()))?;
        let now = rpc::unix_ms(SystemTime::now());
        let version = self.data_keys.rotate(&services.registry, now).await?;
        let event = entente_audit::Event::Admin(entente_audit::Admin {
            operation: crate::audit::clear("rotate-data-key"),
            target: crate::audit::clear(datakeys::DATA_KEK),
            detail: crate::audit::clear(&format!("version {version}")),
        });
        auditor
            .record(
                crate::audit::HUB_ACTOR,
                entente_audit::Outcome::Success,
                event,
            )
            .await
            .map_err(|e| HubError::Audit(e.to_string()))?;
        Ok(version)
    }

    /// Rotates the audit log's checkpoint key ([`AUDIT_SIGNING_KEY`](crate::AUDIT_SIGNING_KEY)
    /// and its successors in its key store), with a record of it in the log signed by
    /// the old key; returns the new verifier key. Auditors trust both from then on.
    pub async fn rotate_audit_key(&self) -> Result<String, HubError> {
        let services = &self.shared.services;
        services
            .authz
            .auditor()
            .rotate_key(&services.audit_keystore, &services.registry)
            .await
    }

    /// The verifier key of the audit log's checkpoints (`<origin>+<key id>+<key>`), if the
    /// hub keeps one ([`HubConfig::audit`]): what `entente audit verify` and auditors trust.
    pub fn audit_verifier_key(&self) -> Option<String> {
        let log = self.shared.context.authz.auditor().log()?;
        let log = log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(log.verifier().keys().first()?.to_string())
    }

    /// Up to `max` records of the audit log from index `from` (fewer at its end), with the
    /// number of records it holds, once every record submitted so far is durable; `None` if
    /// the hub keeps no audit log.
    pub async fn audit_records(
        &self,
        from: u64,
        max: u64,
    ) -> Result<Option<(Vec<entente_audit::Record>, u64)>, HubError> {
        let auditor = self.shared.context.authz.auditor();
        let Some(log) = auditor.log().cloned() else {
            return Ok(None);
        };
        auditor
            .durable(auditor.ticket())
            .await
            .map_err(|e| HubError::Audit(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let log = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = log.record_count();
            let end = from
                .saturating_add(max.min(entente_audit::MAX_READ))
                .min(count);
            let records = log.records(from.min(end)..end)?;
            Ok::<_, entente_audit::AuditError>(Some((records, count)))
        })
        .await
        .map_err(|_| HubError::Audit("reading the log panicked".into()))?
        .map_err(|e| HubError::Audit(e.to_string()))
    }

    /// Seals what the audit log holds (after every record submitted so far is durable) and
    /// writes it to `path` as an export (docs/AUDIT.md §6), for offline verification; returns
    /// the checkpoint it ends with (a signed note). `None` if the hub keeps no audit log.
    pub async fn export_audit(
        &self,
        path: impl Into<std::path::PathBuf>,
    ) -> Result<Option<String>, HubError> {
        let auditor = self.shared.context.authz.auditor();
        let Some(log) = auditor.log().cloned() else {
            return Ok(None);
        };
        auditor
            .durable(auditor.ticket())
            .await
            .map_err(|e| HubError::Audit(e.to_string()))?;
        let path = path.into();
        let auditor = auditor.clone();
        tokio::task::spawn_blocking(move || {
            let mut log = log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let checkpoint = auditor.seal(&mut log)?;
            log.export(&path)?;
            Ok::<_, entente_audit::AuditError>(checkpoint.as_str().to_owned())
        })
        .await
        .map_err(|_| HubError::Audit("exporting the log panicked".into()))?
        .map(Some)
        .map_err(|e| HubError::Audit(e.to_string()))
    }

    /// Stops accepting, closes every connection (`UNAVAILABLE`), and waits for them to end,
    /// and for the audit log and the durable channels to write what they hold.
    ///
    /// # Errors
    ///
    /// [`HubError::Shutdown`] when the audit log or a durable channel had failed (while the
    /// hub ran, or at its last write), or a writer panicked: the hub stopped, but an
    /// operator must know (an exit status, not a line in a log).
    pub async fn shutdown(mut self) -> Result<(), HubError> {
        self.shutdown.send_replace(true);
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        let _ = (&mut self.renew).await;
        let _ = (&mut self.expire).await;
        let _ = (&mut self.rotate).await;
        let _ = (&mut self.rollover).await;
        if let Some((stop, exporter)) = self.otlp.take() {
            let _ = stop.send(());
            let _ = exporter.await;
        }
        // The calls still running (their streams reset, or their connections closed) act and
        // record before the audit log closes; none starts after.
        let tasks = &self.shared.services.call_tasks;
        let all = tasks.acquire_many(rpc::MAX_CALL_TASKS);
        // Held until the semaphore is closed: no call waiting behind takes one meanwhile.
        let held = tokio::time::timeout(CALLS_AT_STOP, all).await;
        if held.is_err() {
            tracing::warn!(
                "calls still running at the hub's stop: what they do after the audit log closes \
                 is refused or unrecorded"
            );
        }
        tasks.close();
        drop(held);
        self.shared.context.streams.close();
        let mut failures = match self.stream_writers.take() {
            Some(writers) => writers.join().await,
            None => Vec::new(),
        };
        let auditor = self.shared.context.authz.auditor();
        self.shared.services.enroll_refusals.flush(auditor);
        // Every connection is gone: no call is refused after this.
        crate::calls::record_due(&self.shared.services, true);
        let services = &self.shared.services;
        services.unauthenticated.record_due(auditor, true);
        auditor.close();
        if let Some(writer) = self.audit_writer.take()
            && let Err(failure) = writer.join().await
        {
            failures.push(failure);
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(HubError::Shutdown(failures))
        }
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        // The writers write what is queued, save or seal, and end on their own.
        self.shared.context.streams.close();
        self.shared.context.authz.auditor().close();
    }
}

// === impl Shared ===

impl Shared {
    /// Registers a connection unless a connection limit refuses it, then re-checks it
    /// against the list in force and the shutdown flag, so that a revocation or shutdown
    /// racing with the handshake is never missed. Returns whether the connection may be
    /// served.
    fn register(
        &self,
        id: u64,
        principal: Principal,
        svid: &VerifiedSvid,
        control: &ConnectionControl,
    ) -> Result<bool, ConnectionLimit> {
        let open = self.connections.register(
            id,
            principal,
            svid.serial().to_vec(),
            svid.issuer_serials().to_vec(),
            control.clone(),
        )?;
        if *self.shutdown.borrow() {
            control.close(CloseReason::Shutdown);
        }
        Ok(open && !control.is_closed())
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The metrics endpoint's page, read now.
    fn metrics(&self) -> String {
        metrics::text(&self.metric_families())
    }

    /// Counts and records a connection refused, or closed to make room, before it was
    /// authenticated ([`crate::unauth`]).
    fn refused_unauthenticated(&self, refusal: Refusal) {
        stats::bump(&self.stats.connection_limit_hits);
        self.stats.traffic.limit_hit(refusal.name());
        let auditor = self.context.authz.auditor();
        self.services
            .unauthenticated
            .refused(auditor, refusal, Instant::now());
    }

    /// Every metric, read now: what the endpoint and the OpenTelemetry export show.
    fn metric_families(&self) -> Vec<metrics::Family> {
        let now = SystemTime::now();
        let since = |ms: u64| {
            let made = std::time::UNIX_EPOCH + Duration::from_millis(ms);
            -metrics::seconds_until(made, now)
        };
        let data_key_age = self
            .services
            .data_keys
            .status()
            .into_iter()
            .find(|k| k.current)
            .map(|k| since(k.created_ms));
        let (intermediates, _, _) = self.services.ca.status();
        let intermediates = intermediates
            .iter()
            .map(|i| (i.role.clone(), -since(i.not_after_ms)))
            .collect();
        let (queued_frames, queued_bytes) = self.context.router.queued();
        let snapshot = metrics::Snapshot {
            connections: self.connections.len(),
            unauthenticated: self.services.unauthenticated.len(),
            subscriptions: self.context.router.subscriptions(),
            queued_frames,
            queued_bytes,
            stats: self.stats.snapshot(),
            data_key_age,
            intermediates,
            hub_certificate_expiry: Some(metrics::seconds_until(self.resolver.not_after(), now)),
        };
        metrics::families(&snapshot, &self.stats.traffic)
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
                Ok((tcp, peer)) => match shared.services.unauthenticated.admit(peer.ip()) {
                    Ok((pending, evicted)) => {
                        if let Some(source) = evicted {
                            shared.refused_unauthenticated(Refusal::Hub(Some(source)));
                        }
                        let _ = tcp.set_nodelay(true);
                        tasks.spawn(serve_tcp(shared.clone(), tcp, pending));
                    }
                    // Closed at once: nothing but the count and the record is kept.
                    Err(refusal) => {
                        drop(tcp);
                        shared.refused_unauthenticated(refusal);
                    }
                },
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            // Reap finished connection tasks as we go.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    shared.connections.close_all(CloseReason::Shutdown);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tasks.abort_all();
    }
}

/// Re-issues the hub's certificate at half its remaining lifetime.
async fn renew_loop<R: Send + Sync + 'static>(
    services: Arc<Services<R>>,
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
            // A new intermediate signs: the hub's certificate comes from it at once.
            () = services.ca.activated() => {}
        }
        // Signing goes through the key store, which may do file I/O.
        let issued = {
            let (ca, hub) = (services.ca.current(), hub.clone());
            tokio::task::spawn_blocking(move || {
                tls::issue_hub_cert(&ca, &hub, &tls::provider(), SystemTime::now())
            })
            .await
        };
        match issued {
            Ok(Ok((key, expires))) => {
                resolver.replace(key, expires);
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

/// `pending` counts the connection as not yet authenticated until it is registered (an
/// enrollment connection's, until it ends); closed to make room for another
/// ([`Pending::evicted`]) before then, it ends.
async fn serve_tcp(shared: Arc<Shared>, tcp: TcpStream, pending: Pending) {
    // A connection task's future is as large as its largest state, for as long as it lives:
    // the handshake and the rare paths (refusals, enrollment, limits) are boxed so that an
    // idle agent's connection holds only what serving it takes (docs/BENCHMARKS.md, Scale).
    let accepted = tokio::select! {
        accepted = Box::pin(accept(&shared, tcp)) => accepted,
        () = pending.evicted() => return,
    };
    let Some((listener, stream)) = accepted else {
        return;
    };
    match listener {
        Listener::Enroll => {
            pending
                .until_evicted(Box::pin(serve_enroll(&shared, stream)))
                .await;
        }
        Listener::Mtls => match serve_mtls(shared, stream, pending) {
            Some(Either::Left(framed)) => framed.await,
            Some(Either::Right(other)) => other.await,
            None => {}
        },
    }
}

/// The TLS handshake of a connection, within the handshake timeout: the listener its server
/// name chose and the stream, or `None` once a refused handshake is closed.
async fn accept(shared: &Shared, tcp: TcpStream) -> Option<(Listener, TlsStream)> {
    let peer = tcp.peer_addr().ok();
    // Formatted only if the event is logged.
    let shown =
        |peer: Option<SocketAddr>| peer.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let handshake = tls_stream::accept(tcp, |server_name| shared.tls.select(server_name));
    // Refused handshakes are counted; their log events are debug-level, so that a flood of
    // them does not become a flood of log lines.
    match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
        Ok(Ok(accepted)) => Some(accepted),
        Ok(Err(Refused { error, tcp })) => {
            stats::bump(&shared.stats.handshakes_failed);
            tracing::debug!(peer = %shown(peer), %error, "TLS handshake refused");
            if let Some(tcp) = tcp {
                close_after_alert(tcp).await;
            }
            None
        }
        Err(_) => {
            stats::bump(&shared.stats.handshakes_failed);
            tracing::debug!(peer = %shown(peer), "TLS handshake timed out");
            None
        }
    }
}

/// Closes a connection whose handshake was refused so that the client reads the TLS alert
/// (say, `certificate_revoked`) that explains it. A TLS 1.3 client sends its first request
/// before it learns the verdict on its certificate; closing a socket with that request unread
/// resets the connection, and the reset can destroy the alert before the client reads it. So:
/// send FIN after the alert, and read (and discard) what the client had in flight, for at most
/// [`REFUSED_LINGER`] and [`REFUSED_DRAIN_BYTES`].
async fn close_after_alert(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    if tcp.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = REFUSED_DRAIN_BYTES;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_LINGER, drain).await;
}

/// The most an enrollment request may declare: a join token, a CSR of about 300 bytes and two
/// public keys fit many times over. Anyone may open enrollment connections, so what each of
/// their streams may have the hub buffer stays small (the frame limit would let a peer with no
/// credential hold megabytes per stream).
pub const MAX_ENROLL_REQUEST_BYTES: usize = 16 * 1024;

/// An enrollment connection: no client identity, so [`ENROLL_PATH`] is all it serves; every
/// other request is `UNIMPLEMENTED`. It lives at most [`ENROLL_LIFETIME`], and not past
/// shutdown.
async fn serve_enroll(shared: &Shared, stream: TlsStream) {
    stats::bump(&shared.stats.connections);
    // As a mutual-TLS connection's calls ([`serve`]): each enrollment on a task of its own,
    // holding a permit of the connection's and of the hub's.
    let calls = Arc::new(tokio::sync::Semaphore::new(
        shared.config.max_streams_per_connection as usize,
    ));
    let service = service_fn(|request: http::Request<Incoming>| {
        let services = shared.services.clone();
        let limits = shared.config.limits;
        let calls = calls.clone();
        async move {
            if request.uri().path() != ENROLL_PATH {
                return Ok::<_, Infallible>(
                    Status::unimplemented("only enrollment is served without a certificate")
                        .into_http::<Body>(),
                );
            }
            // Decoded into a buffer of the size its header declares: anyone may send one, so
            // a request may declare no more than an enrollment needs (the answer, with the
            // revocation list, may take the frame limit).
            let max_request = limits.max_frame_bytes.min(MAX_ENROLL_REQUEST_BYTES);
            Ok(
                unary((limits, max_request), request, move |enroll_request| {
                    let services = services.clone();
                    let calls = calls.clone();
                    async move {
                        // A token spent, a certificate issued and stored, then the record: a reset
                        // stream, the connection's end or the hub's stop must not cut it between.
                        let tasks = services.call_tasks.clone();
                        let (Ok(call), Ok(task)) =
                            (calls.acquire_owned().await, tasks.acquire_owned().await)
                        else {
                            return Err(Status::unavailable("the hub is stopping"));
                        };
                        tokio::spawn(async move {
                            let answer =
                                enroll::enroll(&services, enroll_request, SystemTime::now())
                                    .await
                                    .map_err(|e| e.status());
                            drop((call, task));
                            answer
                        })
                        .await
                        .unwrap_or_else(|e| {
                            tracing::error!(error = %e, "an enrollment's task failed");
                            Err(Status::internal("the enrollment failed"))
                        })
                    }
                })
                .await,
            )
        }
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

/// A mutual-TLS connection, once its handshake is done: its chain verified again, registered,
/// then served. A plain function, so that the connection task's future holds only what the
/// serving it chose needs (an `async fn` keeps its arguments for as long as it runs, the TLS
/// stream among them): a framed session's serving inline (small), HTTP/2's and the rare paths'
/// boxed.
///
/// `pending` counts it as not yet authenticated until it is registered, and while a refused
/// one is told why (so that refusals, which no connection limit counts, are bounded by its
/// source's share).
fn serve_mtls(
    shared: Arc<Shared>,
    stream: TlsStream,
    pending: Pending,
) -> Option<Either<impl Future<Output = ()> + Send, Serving>> {
    // The verifier passed the chain during a full handshake; a resumed one carries the chain
    // of the full handshake its ticket came from, and skipped the verifier (`tls`). Verify
    // again, always: to learn the identity, and against the revocation list in force now.
    let chain = stream.peer_certificates().unwrap_or_default();
    let svid = match shared.verifier.verify_chain(chain, SystemTime::now()) {
        Ok(svid) => svid,
        Err(error) => {
            stats::bump(&shared.stats.handshakes_failed);
            // Told why, as a refused handshake's alert would have told it, and closed
            // gracefully (a reset could destroy what it is told).
            let status = Status::unauthenticated(format!("the certificate is refused: {error}"));
            return Some(Either::Right(Box::pin(async move {
                let refusal = refuse_requests(&shared, stream, status);
                pending.until_evicted(refusal).await;
            })));
        }
    };
    stats::bump(&shared.stats.connections);
    let id = shared.next_id();
    // A connection lasts no longer than a certificate the hub issues now would: a leaf of a
    // longer life (minted with a leaked intermediate key) does not outlive a revocation of
    // that intermediate by years; a renewal extends it as any other.
    let longest = SystemTime::now()
        .checked_add(shared.services.ca.current().options().svid_ttl)
        .unwrap_or_else(|| svid.not_after());
    let control = ConnectionControl::expiring_at(svid.not_after().min(longest));
    let principal = svid.principal().clone();
    // A quarantined agent is told so, not counted against the limits it would fill.
    if shared.services.anomaly.quarantined(&principal).is_some() {
        return Some(Either::Right(Box::pin(async move {
            let refusal = serve_quarantined(&shared, &principal, stream);
            pending.until_evicted(refusal).await;
        })));
    }
    let registered = shared.register(id, principal.clone(), &svid, &control);
    let registered = match registered {
        Ok(open) => open,
        Err(limit) => {
            return Some(Either::Right(Box::pin(async move {
                let refusal = serve_limited(&shared, &principal, limit, stream);
                pending.until_evicted(refusal).await;
            })));
        }
    };
    // After registering: a quarantine imposed meanwhile either sees this connection and
    // closes it, or is seen here.
    if shared.services.anomaly.quarantined(&principal).is_some() {
        shared.connections.unregister(id);
        return Some(Either::Right(Box::pin(async move {
            let refusal = serve_quarantined(&shared, &principal, stream);
            pending.until_evicted(refusal).await;
        })));
    }
    if !registered {
        // Revoked while it registered: told so, as a live connection would be.
        shared.connections.unregister(id);
        let status = control.reason().map_or_else(
            || Status::unauthenticated("the connection was closed"),
            CloseReason::status,
        );
        return Some(Either::Right(Box::pin(async move {
            let refusal = refuse_requests(&shared, stream, status);
            pending.until_evicted(refusal).await;
        })));
    }
    // Registered: the mutual-TLS limits take over.
    drop(pending);
    let connection = Connection {
        shared,
        id,
        principal,
        control,
        not_after: svid.not_after(),
    };
    if stream.alpn_protocol() == Some(framed::ALPN) {
        Some(Either::Left(serve_framed(connection, stream)))
    } else {
        Some(Either::Right(Box::pin(serve_h2(connection, stream))))
    }
}

/// Serving a connection, boxed.
type Serving = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A registered mutual-TLS connection being served.
struct Connection {
    shared: Arc<Shared>,
    id: u64,
    principal: Principal,
    control: ConnectionControl,
    /// When its certificate expires.
    not_after: SystemTime,
}

impl Drop for Connection {
    fn drop(&mut self) {
        log_close(&self.control, &self.principal);
        self.shared.connections.unregister(self.id);
    }
}

/// Serves an HTTP/2 connection: gRPC, the session and the unary services ([`route_request`]).
async fn serve_h2(connection: Connection, stream: TlsStream) {
    let Connection {
        ref shared,
        id,
        ref principal,
        ref control,
        not_after,
    } = connection;
    let principal = principal.clone();
    let activity = Arc::new(Activity::new());
    let service = {
        let shared = shared.clone();
        let activity = activity.clone();
        let caller = Caller {
            connection: id,
            principal,
            control: control.clone(),
            calls: Arc::new(tokio::sync::Semaphore::new(
                shared.config.max_streams_per_connection as usize,
            )),
        };
        service_fn(move |request| {
            // Busy while the request is routed (and a session, while it runs).
            let busy = activity.enter();
            let routed = route_request(shared.clone(), caller.clone(), activity.clone(), request);
            async move {
                let response = routed.await;
                drop(busy);
                response
            }
        })
    };
    let builder = h2_builder(&shared.config);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closed = control.watch();
    // The expiry moves when the connection renews; sleep to the time in force, then look
    // again.
    let ended = loop {
        let expires_at = control.expires_at().unwrap_or(not_after);
        let wait = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let idle_timeout = shared.config.idle_timeout;
        let idle_at = activity
            .idle_until(idle_timeout)
            .unwrap_or_else(|| later_by(tokio::time::Instant::now(), idle_timeout));
        tokio::select! {
            _ = connection.as_mut() => break true,
            _ = control::closed(&mut closed) => break false,
            () = tokio::time::sleep_until(idle_at) => {
                let idle = activity
                    .idle_until(idle_timeout)
                    .is_some_and(|at| at <= tokio::time::Instant::now());
                if idle {
                    stats::bump(&shared.stats.idle_disconnects);
                    break false;
                }
            }
            () = tokio::time::sleep(wait) => {
                let expired = control
                    .expires_at()
                    .is_none_or(|at| at <= SystemTime::now());
                if expired {
                    if control.close(CloseReason::CertificateExpired) {
                        stats::bump(&shared.stats.expired_disconnects);
                    }
                    break false;
                }
            }
        }
    };
    if !ended {
        // The streams end with the close reason's status; then GOAWAY, then the socket.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
    }
}

/// Logs why the hub closed a connection, if it did.
fn log_close(control: &ConnectionControl, principal: &Principal) {
    match control.reason() {
        Some(
            reason @ (CloseReason::Revoked | CloseReason::SlowConsumer | CloseReason::Quarantined),
        ) => {
            tracing::warn!(%principal, ?reason, "connection closed");
        }
        Some(reason @ CloseReason::CertificateExpired) => {
            tracing::info!(%principal, ?reason, "connection closed");
        }
        Some(CloseReason::Shutdown) | None => {}
    }
}

/// Serves a framed session connection ([`framed`], PROTOCOL.md §9.1): its session reads frames
/// in a task of its own; this task writes the session's outbound frames, and closes the
/// connection when the certificate expires or the hub closes it (the session's last frame
/// then says why, [`CloseReason::status`]). The kernel's TCP keepalive finds a peer gone
/// without closing, as HTTP/2 pings do on the other connections.
fn serve_framed(connection: Connection, stream: TlsStream) -> impl Future<Output = ()> + Send {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_INTERVAL)
        .with_interval(KEEPALIVE_TIMEOUT / KEEPALIVE_PROBES)
        .with_retries(KEEPALIVE_PROBES);
    let socket = socket2::SockRef::from(stream.tcp());
    let _ = socket.set_tcp_keepalive(&keepalive);
    // Keepalive probes only an idle connection: what the peer never acknowledges (its host
    // gone while the hub writes) breaks it in the same time.
    let _ = socket.set_tcp_user_timeout(Some(KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT));
    let shared = &connection.shared;
    let limits = shared.config.limits;
    let (tx, rx) = OutboundTx::channel(shared.config.queue_capacity, shared.config.queue_bytes);
    let (end_tx, end_rx) = watch::channel(None);
    let principal = connection.principal.clone();
    let session = Session::new(
        shared.next_id(),
        principal.clone(),
        shared.context.clone(),
        shared.replay.sender(&principal),
        tx,
        connection.control.clone(),
        Credentials::of(shared.connections.clone(), connection.id),
    );
    let (read, write) = tokio::io::split(stream);
    let (writer_tx, writer_rx) = tokio::sync::oneshot::channel();
    let inbound = framed::Inbound::new(framed::FrameReader::new(read, limits), writer_rx);
    tokio::spawn(session::run(session, inbound, end_tx));
    let mut ended = end_rx.clone();
    // Once the session is over, what it left queued goes if the peer reads it in time: no
    // publish is left to find a peer that reads nothing more (a slow consumer), and the
    // connection would otherwise stay until its certificate expires.
    let drain = shared.config.slow_consumer_timeout.max(CLOSE_GRACE);
    let outbound = outbound_stream(rx, end_rx, connection.control.watch());
    let writer = framed::write_session(write, outbound, limits, writer_tx);
    async move {
        let Connection {
            ref shared,
            ref control,
            not_after,
            ..
        } = connection;
        tokio::pin!(writer);
        let mut closed = control.watch();
        let grace = loop {
            // The expiry moves when the certificate is renewed: sleep to the time in force,
            // then look again.
            let expires_at = control.expires_at().unwrap_or(not_after);
            let wait = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                () = writer.as_mut() => return,
                _ = control::closed(&mut closed) => break CLOSE_GRACE,
                // Over (or its task gone): the writer sends what is left, then the reason.
                _ = ended.wait_for(Option::is_some) => break drain,
                () = tokio::time::sleep(wait) => {
                    let expired = control.expires_at().is_none_or(|at| at <= SystemTime::now());
                    if expired && control.close(CloseReason::CertificateExpired) {
                        stats::bump(&shared.stats.expired_disconnects);
                    }
                }
            }
        };
        // Closed: the writer sends what was queued before the close, then the reason.
        let _ = tokio::time::timeout(grace, writer).await;
    }
}

/// A connection a connection limit refused: counted (against the agent's risk too, as a limit
/// hit, when it was its own limit) and recorded as a run of the agent's refusals by that limit (the first at once, the rest
/// together at most once a second); every request on it is answered `RESOURCE_EXHAUSTED`
/// with the reason, for at most [`LIMITED_LIFETIME`].
async fn serve_limited(
    shared: &Shared,
    principal: &Principal,
    limit: ConnectionLimit,
    stream: TlsStream,
) {
    stats::bump(&shared.stats.connection_limit_hits);
    shared.stats.traffic.limit_hit(limit.name());
    tracing::debug!(%principal, limit = limit.name(), "connection refused by a limit");
    // The agent's own connections count against its risk, not the hub's being full.
    if matches!(limit, ConnectionLimit::Agent(_)) {
        shared.services.anomaly.watch(principal).limited();
    }
    crate::calls::connection_refused(&shared.services, principal, limit.name());
    refuse_requests(shared, stream, Status::resource_exhausted(limit.reason())).await;
}

/// A connection of a quarantined agent: counted; every request on it is answered
/// `PERMISSION_DENIED` saying so, for at most [`LIMITED_LIFETIME`]. Not audited: the agent
/// was quarantined by a recorded act, and its retries would flood the log.
async fn serve_quarantined(shared: &Shared, principal: &Principal, stream: TlsStream) {
    stats::bump(&shared.stats.quarantined_refusals);
    tracing::debug!(%principal, "connection of a quarantined agent refused");
    refuse_requests(
        shared,
        stream,
        Status::permission_denied(control::QUARANTINED),
    )
    .await;
}

/// Answers every request of `stream` with `status` for at most [`LIMITED_LIFETIME`]; a framed
/// session connection gets a `SessionEnd` with `status` at once, then is closed.
async fn refuse_requests(shared: &Shared, stream: TlsStream, status: Status) {
    if stream.alpn_protocol() == Some(framed::ALPN) {
        let _ = tokio::time::timeout(CLOSE_GRACE, framed::refuse(stream, &status)).await;
        return;
    }
    let service = service_fn(move |_: http::Request<Incoming>| {
        let status = status.clone();
        async move { Ok::<_, Infallible>(status.into_http::<Body>()) }
    });
    let connection = h2_builder(&shared.config).serve_connection(TokioIo::new(stream), service);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = connection => {}
        () = tokio::time::sleep(LIMITED_LIFETIME) => {}
        () = stopped(&mut shutdown) => {}
    }
}

/// Whether a mutual-TLS connection is in use (requests being routed, sessions running), and
/// since when it has not been.
#[derive(Debug)]
struct Activity {
    /// Requests and sessions under way, and when the last one ended (or the connection
    /// started).
    state: std::sync::Mutex<(usize, tokio::time::Instant)>,
}

/// One request or session under way on a connection; the connection is idle again once
/// none is left.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            state: std::sync::Mutex::new((0, tokio::time::Instant::now())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, tokio::time::Instant)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn enter(self: &Arc<Self>) -> Busy {
        self.lock().0 += 1;
        Busy(self.clone())
    }

    /// When the connection will have been idle for `timeout` if nothing starts; `None` while
    /// it is in use.
    fn idle_until(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        let (busy, since) = *self.lock();
        (busy == 0).then(|| later_by(since, timeout))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.0 = state.0.saturating_sub(1);
        if state.0 == 0 {
            state.1 = tokio::time::Instant::now();
        }
    }
}

/// Records the refused calls left unrecorded once due (every second; what is left at
/// shutdown, `HubHandle::shutdown` does), and drops the rate limits' buckets (the policies' `@rate`s too) that are full again,
/// every [`LIMITS_PURGE`], until shutdown.
async fn purge_loop(services: Arc<Services<LocalRouter>>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(crate::calls::RECORD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purged = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                crate::calls::record_due(&services, false);
                services.unauthenticated.record_due(services.authz.auditor(), false);
                if purged.elapsed() >= LIMITS_PURGE {
                    services.limiters.purge();
                    services.authz.purge_rates();
                    purged = tokio::time::Instant::now();
                }
            }
            // What is left is recorded by `shutdown`, once no call can come.
            () = stopped(&mut shutdown) => return,
        }
    }
}

/// The HTTP/2 settings of every connection. A peer that stops answering pings (gone without
/// closing) is dropped after [`KEEPALIVE_INTERVAL`] and [`KEEPALIVE_TIMEOUT`].
fn h2_builder(config: &HubConfig) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_header_list_size(16 * 1024)
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEPALIVE_INTERVAL))
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    builder
}

// === gRPC routing ===

/// Routes one request of a mutual-TLS connection by its path.
async fn route_request(
    shared: Arc<Shared>,
    caller: Caller,
    activity: Arc<Activity>,
    request: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let limits = shared.config.limits;
    let (services, now) = (&shared.services, SystemTime::now);
    let response = match request.uri().path() {
        SESSION_PATH => {
            let service = SessionService {
                shared: shared.clone(),
                principal: caller.principal,
                control: caller.control,
                connection: caller.connection,
                activity,
            };
            let mut grpc = Grpc::new(SessionCodec::new(limits))
                .max_decoding_message_size(limits.max_frame_bytes)
                .max_encoding_message_size(limits.max_frame_bytes);
            grpc.streaming(service, request).await
        }
        RENEW_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(renew::recorded(&s, &c, r, now()).await)
            })
            .await
        }
        DIRECTORY_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(directory::directory(&s, &c, r, now()).await)
            })
            .await
        }
        CREATE_TOKEN_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: CreateTokenRequest| async move {
                    let target = r.agent.clone();
                    let act = admin::create_token(&s, &c, r, now());
                    // The token's ID, as the enrollment that uses it records it.
                    let made = |made: &entente_wire::CreateTokenResponse| {
                        JoinToken::parse(&made.token)
                            .map(|token| format!("token {}", enroll::token_id(&token.hash())))
                            .unwrap_or_default()
                    };
                    let actor = c.principal.as_str();
                    status(rpc::audited_with(&s, actor, "create-token", target, act, made).await)
                },
            )
            .await
        }
        LOAD_POLICIES_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: LoadPoliciesRequest| async move {
                    let names: Vec<&str> = r.sources.iter().map(|s| s.name.as_str()).collect();
                    let target = names.join(", ");
                    let act = policies::load(&s, &c, r);
                    status(
                        rpc::audited(&s, c.principal.as_str(), "load-policies", target, act).await,
                    )
                },
            )
            .await
        }
        SHOW_POLICIES_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(policies::show(&s, &c, r))
            })
            .await
        }
        CHECK_POLICY_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(policies::check(&s, &c, r, now()))
            })
            .await
        }
        GRANT_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: GrantRequest| async move {
                    let target = format!("{} {}", r.principal, r.name);
                    let act = grants::grant(&s, &c, r, now());
                    status(rpc::audited(&s, c.principal.as_str(), "grant", target, act).await)
                },
            )
            .await
        }
        LIST_GRANTS_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(grants::list(&s, &c, r, now()))
            })
            .await
        }
        REQUEST_GRANT_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: RequestGrantRequest| async move {
                    let target = r.name.clone();
                    let act = grants::request(&s, &c, r, now());
                    status(
                        rpc::audited(&s, c.principal.as_str(), "request-grant", target, act).await,
                    )
                },
            )
            .await
        }
        REVOKE_GRANT_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: RevokeGrantRequest| async move {
                    let target = r.id.clone();
                    let act = grants::revoke_grant(&s, &c, r, now());
                    status(
                        rpc::audited(&s, c.principal.as_str(), "revoke-grant", target, act).await,
                    )
                },
            )
            .await
        }
        LIST_HELD_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: entente_wire::ListHeldRequest| async move {
                    // One record of the listing, with what it showed: the decisions it took
                    // to filter are not recorded one by one.
                    let target = r.message_id.clone();
                    let act = async { held::list(&s, &c, r, now()) };
                    let shown = |r: &entente_wire::ListHeldResponse| {
                        format!("{} held messages shown", r.held.len())
                    };
                    let actor = c.principal.as_str();
                    status(rpc::audited_with(&s, actor, "list-held", target, act, shown).await)
                },
            )
            .await
        }
        APPROVE_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: ApproveRequest| async move {
                    let target = r
                        .statement
                        .as_ref()
                        .map(|st| format!("{} {} {}", st.verdict, st.kind, st.object_id))
                        .unwrap_or_default();
                    let act = grants::approve(&s, &c, r, now());
                    let approved =
                        rpc::audited(&s, c.principal.as_str(), "approve", target, act).await;
                    approved.map_err(|e| e.status())
                },
            )
            .await
        }
        REVOKE_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: RevokeRequest| async move {
                    let target = admin::revoke_target(&r);
                    let act = admin::revoke(&s, &c, r, now());
                    status(rpc::audited(&s, c.principal.as_str(), "revoke", target, act).await)
                },
            )
            .await
        }
        QUARANTINE_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: QuarantineRequest| async move {
                    // A change is an administrative act, recorded; a list is not.
                    let (operation, target) = match (r.release.is_empty(), r.impose.is_empty()) {
                        (true, true) => {
                            return status(quarantine::quarantine(&s, &c, r, now()).await);
                        }
                        (false, _) => ("quarantine-release", r.release.clone()),
                        (true, false) => ("quarantine-impose", r.impose.clone()),
                    };
                    let act = quarantine::quarantine(&s, &c, r, now());
                    status(rpc::audited(&s, c.principal.as_str(), operation, target, act).await)
                },
            )
            .await
        }
        KEYS_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: KeysRequest| async move {
                    // A rotation is an administrative act, recorded; a status read is not.
                    if r.rotate.is_empty() {
                        return status(keys::keys(&s, &c, r).await);
                    }
                    let target = r.rotate.clone();
                    let act = keys::keys(&s, &c, r);
                    status(rpc::audited(&s, c.principal.as_str(), "rotate-key", target, act).await)
                },
            )
            .await
        }
        AUDIT_RECORDS_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(audit_rpc::records(&s, &c, r).await)
            })
            .await
        }
        AUDIT_EXPORT_PATH => {
            serve(
                services,
                &caller,
                limits,
                request,
                |s, c, r: entente_wire::AuditExportRequest| async move {
                    // A whole copy of the log leaving is recorded as it starts (a listed
                    // administrator's too, whom no policy decision records), of a new
                    // snapshot or one made before, and only once that is on the record may
                    // its reader read on; the chunks that follow are not recorded, a refused
                    // one is.
                    let actor = c.principal.to_string();
                    if r.offset != 0 {
                        let read = match audit_rpc::export(&s, &c, r).await {
                            Ok(chunk) => Ok(chunk),
                            Err(e) => {
                                let refused = std::future::ready(Err(e));
                                rpc::audited(&s, &actor, "audit-export", String::new(), refused)
                                    .await
                            }
                        };
                        return status(read);
                    }
                    let act = audit_rpc::export(&s, &c, r);
                    let started =
                        rpc::audited(&s, &actor, "audit-export", String::new(), act).await;
                    if let Ok(chunk) = &started {
                        audit_rpc::started(&s, chunk.snapshot, actor);
                    }
                    status(started)
                },
            )
            .await
        }
        AUDIT_PROOF_PATH => {
            serve(services, &caller, limits, request, |s, c, r| async move {
                status(audit_rpc::proof(&s, &c, r).await)
            })
            .await
        }
        _ => Status::unimplemented("unknown method").into_http(),
    };
    Ok(response)
}

/// Serves one unary request of the mutual-TLS connection of `caller`: decodes `Req` under
/// `limits` and answers with what `handler` makes of it, given the services and the caller.
/// `at` plus `by`, or as far on as an instant goes (an idle timeout of a century means never).
fn later_by(at: tokio::time::Instant, by: Duration) -> tokio::time::Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(at)
}

async fn serve<Req, Resp, F, Fut>(
    services: &Arc<Services<LocalRouter>>,
    caller: &Caller,
    limits: Limits,
    request: http::Request<Incoming>,
    handler: F,
) -> http::Response<Body>
where
    Req: Bounded + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: Fn(Arc<Services<LocalRouter>>, Caller, Req) -> Fut + Send,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let (services, caller) = (services.clone(), caller.clone());
    // A call denied counts against the caller's risk as a refused frame does (probing the
    // directory, or approvals, grants and holds it may not touch, is probing all the same).
    let watch = services.anomaly.watch(&caller.principal);
    // Limited before the request is read.
    if let Err(status) = crate::calls::check(&services, &caller.principal, &watch) {
        return status.into_http();
    }
    unary((limits, limits.max_frame_bytes), request, move |req| {
        let answer = handler(services.clone(), caller.clone(), req);
        let (calls, tasks) = (caller.calls.clone(), services.call_tasks.clone());
        let watch = watch.clone();
        let auditor = services.authz.auditor().clone();
        async move {
            // A call records (a decision, an act): none is taken while the audit log's backlog
            // is full, as no session frame is, so that calls in a loop can't grow it without
            // bound (reads answer without waiting for their records to be durable).
            auditor.room().await;
            // A task of its own: a caller that resets its stream drops this future, and an act
            // stopped halfway (in force, its record not yet made) would be done unrecorded. It
            // holds a permit of its connection's (a reset stream's call still counts against
            // the streams a connection may have) and of the hub's (its stop waits for it).
            let (Ok(call), Ok(task)) = (calls.acquire_owned().await, tasks.acquire_owned().await)
            else {
                return Err(Status::unavailable("the hub is stopping"));
            };
            let answer = tokio::spawn(async move {
                let answer = answer.await;
                drop((call, task));
                answer
            })
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "a call's task failed");
                Err(Status::internal("the call failed"))
            });
            if answer
                .as_ref()
                .is_err_and(|status| status.code() == tonic::Code::PermissionDenied)
            {
                watch.refused();
            }
            answer
        }
    })
    .await
}

/// An RPC's refusal as the gRPC status the peer sees.
fn status<T>(result: Result<T, RpcError>) -> Result<T, Status> {
    result.map_err(|e| e.status())
}

/// Serves a unary request: decodes `Req` under `limits`, of at most `max_request` bytes,
/// answers with `handler`'s response.
async fn unary<Req, Resp, F, Fut>(
    (limits, max_request): (Limits, usize),
    request: http::Request<Incoming>,
    handler: F,
) -> http::Response<Body>
where
    Req: Bounded + Send + 'static,
    Resp: prost::Message + Send + 'static,
    F: FnMut(Req) -> Fut + Send,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let mut grpc = Grpc::new(BoundedCodec::<Resp, Req>::new(limits))
        .max_decoding_message_size(max_request)
        .max_encoding_message_size(limits.max_frame_bytes);
    grpc.unary(Unary(handler), request).await
}

/// Starts a session for one `Session` stream.
struct SessionService {
    shared: Arc<Shared>,
    principal: Principal,
    control: ConnectionControl,
    /// The connection's ID in [`Connections`].
    connection: u64,
    /// The connection's activity: a running session keeps it busy.
    activity: Arc<Activity>,
}

/// A session's outbound frames, then the status it ended with, if any.
pub(crate) type OutboundStream = Pin<Box<dyn Stream<Item = Result<Outbound, Status>> + Send>>;

impl tower_service::Service<Request<Streaming<ClientFrame>>> for SessionService {
    type Response = Response<OutboundStream>;
    type Error = Status;
    type Future = Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Streaming<ClientFrame>>) -> Self::Future {
        let shared = &self.shared;
        let (tx, rx) = OutboundTx::channel(shared.config.queue_capacity, shared.config.queue_bytes);
        let (end_tx, end_rx) = watch::channel(None);
        let id: SessionId = shared.next_id();
        let session = Session::new(
            id,
            self.principal.clone(),
            shared.context.clone(),
            shared.replay.sender(&self.principal),
            tx,
            self.control.clone(),
            Credentials::of(shared.connections.clone(), self.connection),
        );
        let busy = self.activity.enter();
        let inbound = request.into_inner();
        tokio::spawn(async move {
            session::run(session, inbound, end_tx).await;
            drop(busy);
        });
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
    rx: OutboundRx,
    end: watch::Receiver<Option<Status>>,
    closed: watch::Receiver<Option<CloseReason>>,
) -> OutboundStream {
    struct State {
        rx: OutboundRx,
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
                        // What was queued before a shutdown or the certificate's expiry still
                        // goes, within the connection's close grace (deliveries whose
                        // publishers were told they were delivered); a revoked, quarantined
                        // or slow consumer's queue does not.
                        if matches!(reason, CloseReason::Shutdown | CloseReason::CertificateExpired) {
                            state.draining = Some(reason.status());
                        } else {
                            return Some((Err(reason.status()), None));
                        }
                    }
                    status = ended(&mut state.end) => state.draining = Some(status),
                    frame = state.rx.recv() => match frame {
                        Some(frame) => return Some((Ok(frame), Some(state))),
                        // Every sender is gone: the session has ended, usually because the
                        // connection was closed or with a status. Their watches may not have
                        // woken this task yet (a pending wait resolves on its own notification,
                        // which can come after the session saw the close and dropped its
                        // senders), so read them now rather than end with `OK`.
                        None => {
                            let status = (*state.closed.borrow())
                                .map(CloseReason::status)
                                .or_else(|| (*state.end.borrow()).clone());
                            return status.map(|status| (Err(status), None));
                        }
                    },
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
