//! A real CA in a temporary key store, agents with X509-SVIDs and message keys, a hub on
//! `127.0.0.1:0` over an `EmbeddedStore` in a temporary directory, and a small gRPC client:
//! tonic's client over hyper's HTTP/2 client over tokio-rustls, with a codec that sends raw
//! bytes (so tests can send malformed frames) and decodes `ServerFrame`s through the bounded
//! decoder, and a unary call for Enroll, Renew and Directory.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use entente_ca::{Ca, CaOptions, IssuedSvid, TrustBundle};
use entente_crypto::{
    KeyBundleBody, KeyBundleIn, MessageKeys, Opener, OpenerOptions, Sealer, SealerOptions,
    VerifiedKeyBundle,
};
use entente_hub::codec::{BoundedCodec, BoundedDecoder};
use entente_hub::{AllowList, AllowRule, Hub, HubConfig, HubHandle, RefusalCode, Who};
use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
use entente_store::EmbeddedStore;
use entente_types::{AgentId, Channel, ChannelPattern, Principal, TrustDomain};
use entente_wire::{
    Ack, Bounded, ClientFrame, EnrollRequest, EnrollResponse, Limits, Publish, SenderKey,
    ServerFrame, SignedBatch, Subscribe, client_frame, server_frame,
};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::{Status, Streaming};

pub const TD: &str = "example.org";

/// How long a test waits for any one frame before failing.
const WAIT: Duration = Duration::from_secs(15);

pub fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

// === CA and agents ===

/// A CA whose validity started a day ago, over a real `LocalKeyStore` in a temporary directory.
/// It also keeps the temporary directories of the stores of the hubs started with it.
pub struct TestCa {
    pub ca: Arc<Ca>,
    pub td: TrustDomain,
    _dir: TempDir,
    store_dirs: Mutex<Vec<TempDir>>,
}

impl TestCa {
    pub fn new() -> Self {
        Self::with_options(CaOptions::default())
    }

    /// A CA with `options` (e.g. a short `svid_ttl`).
    pub fn with_options(options: CaOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keystore = LocalKeyStore::create(
            &dir.path().join("keystore"),
            &Unlock::passphrase("hub tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let td = TrustDomain::new(TD).unwrap();
        let started = SystemTime::now() - Duration::from_secs(24 * 3600);
        let ca = Ca::init(Arc::new(keystore), &td, options, started).unwrap();
        Self {
            ca: Arc::new(ca),
            td,
            _dir: dir,
            store_dirs: Mutex::new(Vec::new()),
        }
    }

    /// A fresh store in a temporary directory that lives as long as this CA.
    pub fn store(&self) -> Arc<EmbeddedStore> {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path().join("registry.redb")).unwrap();
        self.store_dirs.lock().unwrap().push(dir);
        Arc::new(store)
    }

    pub fn trust(&self) -> &TrustBundle {
        self.ca.trust_bundle()
    }

    pub fn principal(&self, segment: &str, name: &str) -> Principal {
        Principal::from(AgentId::new(&self.td, segment, name).unwrap())
    }

    /// An agent with a certificate issued now.
    pub fn agent(&self, segment: &str, name: &str) -> Agent {
        self.agent_issued_at(segment, name, SystemTime::now())
    }

    /// An agent whose certificate was issued at `at` (valid for the CA's SVID TTL, one hour).
    pub fn agent_issued_at(&self, segment: &str, name: &str, at: SystemTime) -> Agent {
        self.identity(self.principal(segment, name), at)
    }

    pub fn identity(&self, principal: Principal, at: SystemTime) -> Agent {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let svid = self.ca.issue_svid(csr.der(), &principal, at).unwrap();

        let keys = Arc::new(MessageKeys::generate().unwrap());
        let now = now_ms();
        let signed = self
            .ca
            .sign_key_bundle(KeyBundleBody {
                principal: principal.clone(),
                ed25519_public: keys.ed25519_public(),
                x25519_public: keys.x25519_public(),
                epoch: 1,
                not_before_ms: now - 60_000,
                not_after_ms: now + 3_600_000,
            })
            .unwrap();
        let bundle = KeyBundleIn::from_wire(signed)
            .unwrap()
            .verify(self.ca.trust_bundle(), now)
            .unwrap();
        Agent {
            principal,
            svid,
            key_der: key.serialize_der(),
            keys,
            bundle,
        }
    }
}

/// An agent's identity: X509-SVID and TLS key, message keys and CA-signed key bundle.
pub struct Agent {
    pub principal: Principal,
    pub svid: IssuedSvid,
    key_der: Vec<u8>,
    pub keys: Arc<MessageKeys>,
    pub bundle: VerifiedKeyBundle,
}

impl Agent {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.svid.chain_der.clone()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    pub fn client_config(&self, trust: &TrustBundle) -> ClientConfig {
        entente_hub::client_tls::client_config(trust, self.chain(), self.key()).unwrap()
    }

    /// Connects to `hub` over mTLS and HTTP/2.
    pub async fn connect(&self, hub: &HubHandle) -> Client {
        Client::connect(hub.local_addr(), self.client_config(hub.trust_bundle()))
            .await
            .unwrap()
    }

    /// Connects and opens a session stream.
    pub async fn session(&self, hub: &HubHandle) -> Session {
        self.connect(hub).await.session().await.unwrap()
    }

    pub fn sealer(&self, channel: &str, recipients: &[&VerifiedKeyBundle]) -> (Sealer, SenderKey) {
        let recipients: Vec<VerifiedKeyBundle> = recipients.iter().map(|b| (*b).clone()).collect();
        Sealer::new(
            self.principal.clone(),
            self.bundle.epoch(),
            self.keys.clone(),
            Channel::parse(channel).unwrap(),
            &recipients,
            SealerOptions::default(),
            now_ms(),
        )
        .unwrap()
    }

    pub fn opener(&self) -> Opener {
        Opener::new(
            self.principal.clone(),
            self.bundle.epoch(),
            self.keys.clone(),
            OpenerOptions::default(),
        )
    }
}

// === hub ===

/// The allow list of most tests: segment `shop` may publish and subscribe under `orders.>`.
pub fn shop_allow() -> AllowList {
    let p = |s: &str| ChannelPattern::parse(s).unwrap();
    AllowList::new().with(AllowRule {
        who: Who::Segment("shop".into()),
        publish: vec![p("orders.>")],
        subscribe: vec![p("orders.>")],
    })
}

pub fn config() -> HubConfig {
    HubConfig {
        allow: shop_allow(),
        ..HubConfig::default()
    }
}

pub async fn start(ca: &TestCa, config: HubConfig) -> HubHandle {
    start_with_store(ca, config).await.0
}

/// Starts a hub over a fresh store, and returns the store too.
pub async fn start_with_store(ca: &TestCa, config: HubConfig) -> (HubHandle, Arc<EmbeddedStore>) {
    let store = ca.store();
    let hub = Hub::start(config, ca.ca.clone(), store.clone())
        .await
        .unwrap();
    (hub, store)
}

// === enrollment ===

/// What an agent sends to enroll: its TLS key (for the CSR) and message keys.
pub struct Enrollment {
    pub tls_key: rcgen::KeyPair,
    pub keys: Arc<MessageKeys>,
}

impl Enrollment {
    pub fn new() -> Self {
        Self {
            tls_key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
            keys: Arc::new(MessageKeys::generate().unwrap()),
        }
    }

    pub fn csr(&self) -> Vec<u8> {
        rcgen::CertificateParams::default()
            .serialize_request(&self.tls_key)
            .unwrap()
            .der()
            .to_vec()
    }

    pub fn request(&self, token: &str) -> EnrollRequest {
        EnrollRequest {
            token: token.to_owned(),
            csr: self.csr(),
            ed25519_public: self.keys.ed25519_public().to_vec(),
            x25519_public: self.keys.x25519_public().to_vec(),
        }
    }

    /// The agent these credentials make, checked against `trust` as an agent would.
    pub fn into_agent(self, response: &EnrollResponse, trust: &TrustBundle) -> Agent {
        let chain: Vec<CertificateDer<'static>> = response
            .certificate_chain
            .iter()
            .map(|der| CertificateDer::from(der.clone()))
            .collect();
        let verified = trust.verify_svid(&chain, SystemTime::now(), None).unwrap();
        let bundle = KeyBundleIn::from_wire(response.key_bundle.clone().unwrap())
            .unwrap()
            .verify(trust, now_ms())
            .unwrap();
        assert_eq!(bundle.principal(), verified.principal());
        assert_eq!(bundle.body().ed25519_public, self.keys.ed25519_public());
        assert_eq!(bundle.body().x25519_public, self.keys.x25519_public());
        Agent {
            principal: verified.principal().clone(),
            svid: IssuedSvid {
                cert_der: chain[0].clone(),
                chain_der: chain,
                serial: verified.serial().to_vec(),
                not_after: verified.not_after(),
            },
            key_der: self.tls_key.serialize_der(),
            keys: self.keys,
            bundle,
        }
    }
}

/// A connection to the hub's enrollment name, without a client certificate.
pub async fn enroll_client(hub: &HubHandle) -> Client {
    let name = entente_hub::enroll_server_name(hub.trust_bundle().trust_domain());
    let config = entente_hub::client_tls::enroll_client_config(hub.trust_bundle()).unwrap();
    Client::connect_as(hub.local_addr(), config, &name)
        .await
        .unwrap()
}

/// Sends one enrollment request.
pub async fn enroll_raw(hub: &HubHandle, request: EnrollRequest) -> Result<EnrollResponse, Status> {
    enroll_client(hub)
        .await
        .unary(entente_hub::ENROLL_PATH, request)
        .await
}

/// Creates a token for `segment/name` and enrolls with it, as an agent would.
pub async fn enroll(hub: &HubHandle, segment: &str, name: &str) -> Agent {
    let agent = AgentId::new(hub.trust_bundle().trust_domain(), segment, name).unwrap();
    let token = hub
        .create_token(agent, Duration::from_secs(600))
        .await
        .unwrap();
    let enrollment = Enrollment::new();
    let response = enroll_raw(hub, enrollment.request(token.as_str()))
        .await
        .unwrap();
    enrollment.into_agent(&response, hub.trust_bundle())
}

/// Waits (bounded) until `condition` holds.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// === raw TLS probe ===

/// Connects with `config`, sends the HTTP/2 preface and waits for the hub's first bytes.
/// `Ok` means the hub accepted the connection; `Err` carries the TLS or I/O error.
pub async fn probe(
    addr: SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> Result<(), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    tls.write_all(preface)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("timeout".into()),
    }
}

// === gRPC client ===

/// An HTTP/2 connection to the hub.
pub struct Client {
    send: SendRequest<Body>,
}

/// One session stream.
pub struct Session {
    tx: mpsc::Sender<Bytes>,
    rx: Streaming<ServerFrame>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, config: ClientConfig) -> Result<Self, String> {
        Self::connect_as(addr, config, &format!("hub.{TD}")).await
    }

    pub async fn connect_as(
        addr: SocketAddr,
        config: ClientConfig,
        server_name: &str,
    ) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("http2: {e}"))?;
        tokio::spawn(connection);
        Ok(Self { send })
    }

    fn grpc(&self) -> tonic::client::Grpc<H2> {
        tonic::client::Grpc::with_origin(
            H2(self.send.clone()),
            http::Uri::from_static("https://hub.example.org"),
        )
    }

    /// Opens a stream on `path` (normally the session).
    pub async fn open(&self, path: &'static str) -> Result<Session, Status> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut grpc = self.grpc();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let response = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                PathAndQuery::from_static(path),
                RawCodec,
            )
            .await?;
        Ok(Session {
            tx,
            rx: response.into_inner(),
        })
    }

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
            .expect("no answer from the hub in time")
            .map(tonic::Response::into_inner)
    }
}

impl Session {
    pub async fn send(&self, frame: ClientFrame) {
        self.send_raw(Bytes::from(frame.encode_to_vec())).await;
    }

    /// Sends bytes as one gRPC message, whatever they are.
    pub async fn send_raw(&self, bytes: Bytes) {
        self.tx.send(bytes).await.unwrap();
    }

    /// The next frame, `Ok(None)` when the stream ended with OK, `Err` with its status.
    pub async fn next(&mut self) -> Result<Option<ServerFrame>, Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("no frame from the hub in time")
    }

    pub async fn next_kind(&mut self) -> server_frame::Kind {
        self.next().await.unwrap().unwrap().kind.unwrap()
    }

    /// Reads until the stream ends and returns its status.
    pub async fn status(&mut self) -> Status {
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            }
        }
    }

    pub async fn subscribe(&mut self, id: u64, pattern: &str) -> server_frame::Kind {
        self.send(frame(client_frame::Kind::Subscribe(Subscribe {
            subscription_id: id,
            pattern: pattern.into(),
        })))
        .await;
        self.next_kind().await
    }

    /// Publishes and returns the answer (the next frame).
    pub async fn publish(
        &mut self,
        id: u64,
        sender_keys: Vec<SenderKey>,
        batches: Vec<SignedBatch>,
    ) -> server_frame::Kind {
        self.send(frame(client_frame::Kind::Publish(Publish {
            request_id: id,
            sender_keys,
            batches,
        })))
        .await;
        self.next_kind().await
    }
}

pub fn frame(kind: client_frame::Kind) -> ClientFrame {
    ClientFrame { kind: Some(kind) }
}

pub fn ack(id: u64) -> server_frame::Kind {
    server_frame::Kind::Ack(Ack { request_id: id })
}

/// The ID and code of a refusal; panics on anything else.
pub fn refusal(kind: server_frame::Kind) -> (u64, RefusalCode) {
    match kind {
        server_frame::Kind::Refusal(r) => (r.request_id, RefusalCode::from_u32(r.code).unwrap()),
        other => panic!("expected a refusal, got {other:?}"),
    }
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
