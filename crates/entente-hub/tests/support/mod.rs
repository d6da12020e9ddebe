//! The hub tests' support, over `entente-testkit`: its test CA (a real CA over a local key
//! store in a temporary directory) and its raw gRPC client (raw bytes out, `ServerFrame`s in
//! through the bounded decoder). Here: agents whose TLS key and message keys stay at hand so
//! that tests can seal, sign and open frames by hand, a hub on `127.0.0.1:0` over an
//! `EmbeddedStore` in a temporary directory, enrollment by raw request, and helpers on raw
//! sessions that fail the test instead of returning errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use entente_ca::{Ca, CaOptions, IssuedSvid, TrustBundle};
use entente_client::Identity;
use entente_crypto::{
    KeyBundleIn, MessageKeys, Opener, OpenerOptions, Sealer, SealerOptions, SenderKeyIn,
    SignedBatchIn, VerifiedKeyBundle,
};
use entente_hub::{Hub, HubConfig, HubHandle, RefusalCode};
use entente_store::{AgentRecord, EmbeddedStore, Store, StoreError, TokenRecord};
use entente_types::{AgentId, Channel, Principal, TrustDomain};
use entente_wire::{
    Ack, ClientFrame, EnrollRequest, EnrollResponse, Limits, Publish, SenderKey, SignedBatch,
    Subscribe, client_frame, server_frame,
};
use prost::Message as _;
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tonic::Status;

pub use entente_testkit::raw::{Client, Framed, Session};

pub const TD: &str = entente_testkit::TRUST_DOMAIN;

pub fn unix_ms(t: SystemTime) -> u64 {
    entente_testkit::unix_ms(t)
}

/// The time now in Unix milliseconds, never before a sealer made here started: a sealer
/// refuses to seal before its epoch began.
pub fn now_ms() -> u64 {
    entente_testkit::now_ms().max(LAST_SEALER.load(Ordering::Relaxed))
}

/// When the last sealer made here started.
static LAST_SEALER: AtomicU64 = AtomicU64::new(0);

/// The time now in Unix milliseconds, but later than any earlier answer: each sealer made here
/// starts in a millisecond of its own, so that tests starting several for one sender and
/// channel at once never draw one epoch twice (epochs are the time and 16 random bits).
fn distinct_now_ms() -> u64 {
    let mut last = LAST_SEALER.load(Ordering::Relaxed);
    loop {
        let next = entente_testkit::now_ms().max(last + 1);
        match LAST_SEALER.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

// === CA and agents ===

/// A CA whose validity started a day ago (`entente_testkit::TestCa`). It also keeps the
/// temporary directories of the stores of the hubs started with it.
pub struct TestCa {
    pub ca: Arc<Ca>,
    pub td: TrustDomain,
    kit: entente_testkit::TestCa,
    store_dirs: Mutex<Vec<TempDir>>,
}

impl TestCa {
    pub fn new() -> Self {
        Self::with_options(CaOptions::default())
    }

    /// A CA with `options` (e.g. a short `svid_ttl`).
    pub fn with_options(options: CaOptions) -> Self {
        let kit = entente_testkit::TestCa::with_options(options).unwrap();
        Self {
            ca: kit.ca().clone(),
            td: kit.trust_domain().clone(),
            kit,
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
        self.kit.trust()
    }

    pub fn principal(&self, segment: &str, name: &str) -> Principal {
        self.kit.principal(segment, name).unwrap()
    }

    /// An agent with a certificate issued now.
    pub fn agent(&self, segment: &str, name: &str) -> Agent {
        self.agent_issued_at(segment, name, SystemTime::now())
    }

    /// An agent whose certificate was issued at `at` (valid for the CA's SVID TTL, one hour).
    pub fn agent_issued_at(&self, segment: &str, name: &str, at: SystemTime) -> Agent {
        self.identity(self.principal(segment, name), at)
    }

    /// Any principal's credentials, issued at `at` directly by the CA.
    pub fn identity(&self, principal: Principal, at: SystemTime) -> Agent {
        Agent::from_identity(&self.kit.identity_at(&principal, at).unwrap())
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
    fn from_identity(identity: &Identity) -> Self {
        let chain = identity.chain().to_vec();
        Self {
            principal: identity.principal().clone(),
            svid: IssuedSvid {
                cert_der: chain[0].clone(),
                chain_der: chain,
                serial: entente_testkit::certificate_serial(identity).unwrap(),
                not_after: identity.not_after(),
            },
            key_der: identity.tls_key_pkcs8().to_vec(),
            keys: identity.message_keys().clone(),
            bundle: identity.key_bundle().clone(),
        }
    }

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
        let name = entente_hub::hub_server_name(hub.trust_bundle().trust_domain());
        Client::connect(
            hub.local_addr(),
            self.client_config(hub.trust_bundle()),
            &name,
        )
        .await
        .unwrap()
    }

    /// Connects and opens a session stream.
    pub async fn session(&self, hub: &HubHandle) -> Session {
        self.connect(hub).await.session().await.unwrap()
    }

    /// Connects for a framed session (PROTOCOL.md §9.1), and checks that the hub accepted it.
    pub async fn framed(&self, hub: &HubHandle) -> Framed {
        let mut framed = self.framed_unchecked(hub).await;
        framed.accepted().await.unwrap();
        framed
    }

    /// Connects for a framed session, reading nothing yet.
    pub async fn framed_unchecked(&self, hub: &HubHandle) -> Framed {
        let name = entente_hub::hub_server_name(hub.trust_bundle().trust_domain());
        Framed::connect(
            hub.local_addr(),
            self.client_config(hub.trust_bundle()),
            &name,
        )
        .await
        .unwrap()
    }

    pub fn sealer(&self, channel: &str, recipients: &[&VerifiedKeyBundle]) -> (Sealer, SenderKey) {
        self.sealer_with(channel, recipients, SealerOptions::default())
    }

    /// [`sealer`](Self::sealer) with `options` (e.g. a short message lifetime).
    pub fn sealer_with(
        &self,
        channel: &str,
        recipients: &[&VerifiedKeyBundle],
        options: SealerOptions,
    ) -> (Sealer, SenderKey) {
        let recipients: Vec<VerifiedKeyBundle> = recipients.iter().map(|b| (*b).clone()).collect();
        Sealer::new(
            self.principal.clone(),
            self.bundle.epoch(),
            self.keys.clone(),
            Channel::parse(channel).unwrap(),
            &recipients,
            options,
            distinct_now_ms(),
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

/// The policies of most tests: segment `shop` may publish and subscribe under `orders.>` (namespace `orders`
/// belongs to segment `orders`: a `@cross_segment` permit names it).
pub const SHOP: &str = entente_testkit::SHOP_ORDERS;

/// `(name, text)` policy sources of one text, named `test.cedar`.
pub fn sources(text: &str) -> Vec<(String, String)> {
    vec![("test.cedar".to_owned(), text.to_owned())]
}

pub fn config() -> HubConfig {
    HubConfig {
        policies: sources(SHOP),
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
    Client::connect(hub.local_addr(), config, &name)
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
pub async fn eventually(what: &str, condition: impl FnMut() -> bool) {
    entente_testkit::eventually(what, condition)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Connects with `config`, sends the HTTP/2 preface and waits for the hub's first bytes.
/// `Ok` means the hub accepted the connection; `Err` carries the TLS or I/O error.
pub async fn probe(
    addr: SocketAddr,
    config: ClientConfig,
    server_name: &str,
) -> Result<(), String> {
    entente_testkit::raw::probe(addr, config, server_name)
        .await
        .map_err(|e| e.to_string())
}

// === raw sessions ===

/// What tests do on a raw session (HTTP/2 or framed), failing the test on any error.
pub trait SessionExt {
    /// Sends `frame`.
    async fn send_frame(&mut self, frame: ClientFrame);

    /// The kind of the next frame.
    async fn next_kind(&mut self) -> server_frame::Kind;

    /// Subscribes and returns the answer.
    async fn subscribe(&mut self, id: u64, pattern: &str) -> server_frame::Kind {
        self.send_frame(frame(client_frame::Kind::Subscribe(Subscribe {
            subscription_id: id,
            pattern: pattern.into(),
            durable: String::new(),
        })))
        .await;
        self.next_kind().await
    }

    /// Publishes and returns the answer (the next frame).
    async fn publish(
        &mut self,
        id: u64,
        sender_keys: Vec<SenderKey>,
        batches: Vec<SignedBatch>,
    ) -> server_frame::Kind {
        self.send_frame(frame(client_frame::Kind::Publish(Publish {
            request_id: id,
            sender_keys,
            batches,
            purpose: String::new(),
        })))
        .await;
        self.next_kind().await
    }
}

impl SessionExt for Session {
    async fn send_frame(&mut self, frame: ClientFrame) {
        self.send(frame).await.unwrap();
    }

    async fn next_kind(&mut self) -> server_frame::Kind {
        self.next().await.unwrap().unwrap().kind.unwrap()
    }
}

impl SessionExt for Framed {
    async fn send_frame(&mut self, frame: ClientFrame) {
        self.send(&frame).await.unwrap();
    }

    async fn next_kind(&mut self) -> server_frame::Kind {
        self.next().await.unwrap().unwrap().kind.unwrap()
    }
}

/// Opens what `receiver` got in a `Deliver`, verifying against the sender's bundle; every
/// envelope must open, and be the sender's.
pub fn open_delivery(receiver: &Agent, sender: &Agent, kind: server_frame::Kind) -> Vec<Vec<u8>> {
    let server_frame::Kind::Deliver(deliver) = kind else {
        panic!("expected a delivery, got {kind:?}");
    };
    let mut opener = receiver.opener();
    let limits = Limits::default();
    for sender_key in deliver.sender_keys {
        let sender_key = SenderKeyIn::from_wire(sender_key).unwrap();
        opener
            .accept_sender_key(&sender_key, &sender.bundle, now_ms())
            .unwrap();
    }
    let mut payloads = Vec::new();
    for batch in deliver.batches {
        let batch = SignedBatchIn::decode(&batch.encode_to_vec(), &limits).unwrap();
        let opened = opener.open(batch, &sender.bundle, now_ms()).unwrap();
        assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
        for envelope in opened.delivered {
            assert_eq!(envelope.sender(), &sender.principal);
            payloads.push(envelope.into_payload());
        }
    }
    payloads
}

pub fn frame(kind: client_frame::Kind) -> ClientFrame {
    ClientFrame { kind: Some(kind) }
}

pub fn ack(id: u64) -> server_frame::Kind {
    server_frame::Kind::Ack(Ack {
        request_id: id,
        held: Vec::new(),
    })
}

/// The ID and code of a refusal; panics on anything else.
pub fn refusal(kind: server_frame::Kind) -> (u64, RefusalCode) {
    match kind {
        server_frame::Kind::Refusal(r) => (r.request_id, RefusalCode::from_u32(r.code).unwrap()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// === approvals ===

/// Sends `request` to the hub's `Approve` as `caller`.
pub async fn approve(
    hub: &HubHandle,
    caller: &Agent,
    request: entente_wire::ApproveRequest,
) -> Result<entente_wire::ApproveResponse, tonic::Status> {
    caller
        .connect(hub)
        .await
        .unary(entente_hub::APPROVE_PATH, request)
        .await
}

/// Fails the test unless `result` is a refusal with `code` whose message contains `says`.
pub fn refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    says: &str,
) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{says}: {status:?}");
}

/// `statement` signed with `signer`'s message key, as an `Approve` request carrying the
/// signer's key bundle.
pub fn signed(
    signer: &Agent,
    statement: entente_crypto::ApprovalStatement,
) -> entente_wire::ApproveRequest {
    let signed = statement.sign(&signer.keys).unwrap();
    let s = signed.statement();
    entente_wire::ApproveRequest {
        statement: Some(entente_wire::ApprovalStatement {
            verdict: s.verdict.as_str().into(),
            kind: s.kind.as_str().into(),
            object_id: s.object_id.clone(),
            object_hash: s.object_hash.to_vec(),
            approver: s.approver.to_string(),
            key_epoch: s.key_epoch,
            signed_at_ms: s.signed_at_ms,
        }),
        signature: signed.signature().to_vec(),
        key_bundle: Some(signer.bundle.to_wire().clone()),
    }
}

// === a store that fails on demand ===

/// An [`EmbeddedStore`] whose grant and held-message writes fail while `fail` is set: a real
/// store with a switch.
pub struct FlakyStore {
    pub inner: EmbeddedStore,
    pub fail: AtomicBool,
    /// Fail deletions of held messages only.
    pub fail_deletes: AtomicBool,
    /// Fail writes of config values (the policies, the quarantine list …) only.
    pub fail_config: AtomicBool,
}

impl FlakyStore {
    /// A flaky store over a fresh store in `dir`, not failing yet.
    pub fn new(dir: &std::path::Path) -> Self {
        Self {
            inner: EmbeddedStore::open(dir.join("registry.redb")).unwrap(),
            fail: AtomicBool::new(false),
            fail_deletes: AtomicBool::new(false),
            fail_config: AtomicBool::new(false),
        }
    }

    /// The error while failing.
    fn failing(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("the disk is full".into()))
        } else {
            Ok(())
        }
    }
}

impl Store for FlakyStore {
    async fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.inner.put_agent(record).await
    }
    async fn agent(&self, principal: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.inner.agent(principal).await
    }
    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.inner.agents().await
    }
    async fn put_key_bundle(
        &self,
        principal: &str,
        epoch: u64,
        bundle: &[u8],
    ) -> Result<(), StoreError> {
        self.inner.put_key_bundle(principal, epoch, bundle).await
    }
    async fn key_bundle(&self, principal: &str, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.key_bundle(principal, epoch).await
    }
    async fn latest_key_bundle(
        &self,
        principal: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.latest_key_bundle(principal).await
    }
    async fn put_token(&self, token: &TokenRecord, max: u64) -> Result<(), StoreError> {
        self.inner.put_token(token, max).await
    }
    async fn redeem_token(&self, hash: &[u8; 32], now_ms: u64) -> Result<TokenRecord, StoreError> {
        self.inner.redeem_token(hash, now_ms).await
    }
    async fn purge_tokens(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.purge_tokens(now_ms).await
    }
    async fn put_revocations(&self, version: u64, list: &[u8]) -> Result<(), StoreError> {
        self.inner.put_revocations(version, list).await
    }
    async fn revocations(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.revocations().await
    }
    async fn put_grants(&self, version: u64, book: &[u8]) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the disk is full".into()));
        }
        self.inner.put_grants(version, book).await
    }
    async fn grants(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.grants().await
    }
    async fn put_held(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.failing()?;
        self.inner.put_held(id, record).await
    }
    async fn delete_held(&self, id: &str) -> Result<bool, StoreError> {
        self.failing()?;
        if self.fail_deletes.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the disk is read-only".into()));
        }
        self.inner.delete_held(id).await
    }
    async fn held(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.held().await
    }
    async fn put_config(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        if self.fail_config.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("the disk is full".into()));
        }
        self.inner.put_config(key, value).await
    }
    async fn config(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.config(key).await
    }
}
