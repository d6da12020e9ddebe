//! What the fuzz targets share: a fixed set of keys and a trust bundle built once per
//! process, and the receiving paths they drive.
//!
//! The message keys and the key-signing CA key are those of `test-vectors/key-bundle.json` and
//! `test-vectors/batch-signature.json`, so the committed seeds (written by `examples/seeds.rs`)
//! verify and open in every run: they are signed by these keys and sealed to them. The root
//! CA key, which signs the intermediate certificate, is fixed too, so that certificates a seed
//! carries chain to the fixture's root in every run.
#![forbid(unsafe_code)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::Ed25519KeyPair;
use entente_ca::{TrustBundle, VerifiedRevocationList};
use entente_crypto::{
    EcdsaAuthority, KeyBundleBody, KeyBundleIn, MessageKeys, Opener, OpenerOptions, SenderKeyIn,
    SignedBatchIn, VerifiedKeyBundle, sender_key_signing_input, signer_id,
};
use entente_types::Principal;
use entente_wire::{self as wire, Bounded};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    PublicKeyData, SanType, SigningKey,
};
use rustls_pki_types::CertificateDer;

/// The time every target runs at, Unix milliseconds (`open_at_ms` of batch-signature.json).
pub const NOW_MS: u64 = 1_800_000_005_000;

/// The trust domain of every principal of the fixture.
pub const TRUST_DOMAIN: &str = "acme.internal";

/// The channel the seeds are sealed on.
pub const CHANNEL: &str = "orders.eu";

/// Start of the key bundles' validity (as in the test vectors).
pub const BUNDLE_NOT_BEFORE_MS: u64 = 1_799_913_600_000;

/// End of the key bundles' validity.
pub const BUNDLE_NOT_AFTER_MS: u64 = 1_800_086_400_000;

/// The root CA key, PKCS#8: an ECDSA P-256 key drawn for this fixture.
const ROOT_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420fbf069619e3684abbfd33e61806654abd9126a63c4a985cca060605fa5a45bcfa14403420004fd16b628c096de9cd68b93a4aa2d0b65d0385aaaefb7871fd86f3e5648cd917910d6d0558c80d31fd3927e6ea16bdf6619645653bdf2d30140d7786356f4e359";

/// The intermediate CA key, PKCS#8: the ECDSA P-256 key of RFC 6979 §A.2.5, which signs the
/// key bundles of the test vectors.
const INTERMEDIATE_PKCS8: &str = "308187020100301306072a8648ce3d020106082a8648ce3d030107046d306b0201010420c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721a1440342000460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb67903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299";

/// The sender of the seeds: principal and message keys (Ed25519 seed, X25519 secret).
const ALICE: (&str, &str) = (
    "spiffe://acme.internal/agent/ops/alice",
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
);

/// The recipient of the seeds.
const BOB: (&str, &str) = (
    "spiffe://acme.internal/agent/ops/bob",
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f",
);

/// Keys and a trust bundle, built once per process by [`fixture`].
#[derive(Debug)]
pub struct Fixture {
    /// The root CA and the intermediate, both with fixed keys.
    pub trust: TrustBundle,
    /// The intermediate's key alone, vouching for any trust domain.
    pub any_domain: EcdsaAuthority,
    /// The intermediate CA: signs key bundles, revocation lists and SVIDs.
    pub intermediate: Intermediate,
    /// A revocation list signed by the intermediate: one serial and one principal, neither
    /// of the fixture's agents.
    pub revocations: VerifiedRevocationList,
    /// The sender.
    pub alice: Agent,
    /// The recipient.
    pub bob: Agent,
}

/// The intermediate CA of the fixture.
#[derive(Debug)]
pub struct Intermediate {
    /// Its key (fixed).
    pub key: rcgen::KeyPair,
    /// SHA-256 of its SubjectPublicKeyInfo: what key bundles and revocation lists name.
    pub signer: [u8; 32],
    /// Its certificate.
    pub cert: CertificateDer<'static>,
    /// The parameters its certificate was made from, to issue certificates under it.
    pub params: CertificateParams,
}

/// An agent of the fixture: fixed message keys and a key bundle verified at [`NOW_MS`].
#[derive(Debug)]
pub struct Agent {
    /// Its identity.
    pub principal: Principal,
    /// Its message keys.
    pub keys: Arc<MessageKeys>,
    /// The Ed25519 half of [`Agent::keys`] again, to sign sender keys with.
    pub signing: Ed25519KeyPair,
    /// Its key bundle (epoch 1), signed by the intermediate.
    pub bundle: VerifiedKeyBundle,
}

/// Why the fixture could not be built: never, with these constants, short of a broken
/// dependency.
#[derive(Debug)]
pub struct FixtureError(pub String);

impl std::fmt::Display for FixtureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the fuzz fixture: {}", self.0)
    }
}

impl std::error::Error for FixtureError {}

/// The fixture, built on first use.
#[expect(
    clippy::expect_used,
    reason = "fixed keys and certificates: if they can't be built, no target can run"
)]
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build().expect("the fuzz fixture builds"))
}

/// [`NOW_MS`] as a time.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(NOW_MS)
}

/// The parameters of a CA certificate of [`TRUST_DOMAIN`], valid 2020 to 2099.
pub fn ca_params(common_name: &str, constraints: BasicConstraints) -> CertificateParams {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, TRUST_DOMAIN);
    name.push(DnType::CommonName, common_name);
    let mut params = CertificateParams::default();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    params.distinguished_name = name;
    params.subject_alt_names = spiffe_san(&format!("spiffe://{TRUST_DOMAIN}"));
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A URI SAN, or none if `uri` is not IA5.
pub fn spiffe_san(uri: &str) -> Vec<SanType> {
    rcgen::string::Ia5String::try_from(uri)
        .map(SanType::URI)
        .into_iter()
        .collect()
}

// === impl Fixture ===

impl Fixture {
    /// The verified bundle of `sender` if it is one of the fixture's agents.
    pub fn bundle_of(&self, sender: &str) -> Option<&VerifiedKeyBundle> {
        self.agent(sender).map(|agent| &agent.bundle)
    }

    /// The fixture's agent named `principal`.
    pub fn agent(&self, principal: &str) -> Option<&Agent> {
        [&self.alice, &self.bob]
            .into_iter()
            .find(|agent| agent.principal.as_str() == principal)
    }

    /// What a receiving agent (Bob) does with a `Deliver`: accepts each sender key with the
    /// bundle of the sender it names, then verifies and opens each batch the same way, then
    /// opens it again (every envelope a replay now). Errors are expected; panics are bugs.
    ///
    /// Returns how many envelopes the first opening of each batch delivered.
    pub fn receive(
        &self,
        sender_keys: Vec<wire::SenderKey>,
        batches: Vec<wire::SignedBatch>,
    ) -> usize {
        let mut delivered = 0;
        let mut opener = Opener::new(
            self.bob.principal.clone(),
            self.bob.bundle.epoch(),
            Arc::clone(&self.bob.keys),
            OpenerOptions::default(),
        );
        for sender_key in sender_keys {
            let Ok(sender_key) = SenderKeyIn::from_wire(sender_key) else {
                continue;
            };
            let bundle = self.bundle_or_alice(sender_key.sender().as_str());
            let _ = opener.accept_sender_key(&sender_key, bundle, NOW_MS);
        }
        for batch in batches {
            let Ok(batch) = SignedBatchIn::from_wire(batch) else {
                continue;
            };
            let bundle = self.bundle_or_alice(batch.sender().as_str());
            let _ = batch.verify_signature(bundle, NOW_MS);
            if let Ok(opened) = opener.open(batch.clone(), bundle, NOW_MS) {
                delivered += opened.delivered.len();
                for envelope in &opened.delivered {
                    let _ = (envelope.message_id(), envelope.reply_to());
                    let _ = envelope.payload().len();
                }
            }
            let _ = opener.open(batch, bundle, NOW_MS);
        }
        opener.purge_expired(NOW_MS);
        opener.forget_sender(&self.alice.principal);
        delivered
    }

    /// Signs again every sender key and batch that names one of the fixture's agents as
    /// sender, with that agent's key, so that whatever was changed in them passes the
    /// signature check and reaches what comes after it.
    pub fn sign_again(
        &self,
        sender_keys: &mut [wire::SenderKey],
        batches: &mut [wire::SignedBatch],
    ) {
        for sender_key in sender_keys {
            if let Some(agent) = self.agent(&sender_key.sender) {
                let input = sender_key_signing_input(sender_key);
                sender_key.signature = agent.signing.sign(&input).as_ref().to_vec();
            }
        }
        for batch in batches {
            if let Some(agent) = self.agent(&batch.sender) {
                entente_crypto::danger::danger_sign_batch(&agent.keys, batch);
            }
        }
    }

    /// Signs a key bundle body with the intermediate CA key.
    pub fn sign_bundle(&self, body: KeyBundleBody) -> Result<wire::KeyBundle, FixtureError> {
        body.sign(self.intermediate.signer, |input| {
            self.intermediate.key.sign(input).map_err(error)
        })
    }

    /// A revocation list signed with the intermediate CA key. `serials` and `principals`
    /// are signed as given: sorted or not.
    pub fn sign_revocations(
        &self,
        version: u64,
        serials: Vec<Vec<u8>>,
        principals: Vec<String>,
    ) -> Result<wire::RevocationList, FixtureError> {
        sign_revocations(&self.intermediate, version, serials, principals)
    }

    fn bundle_or_alice(&self, sender: &str) -> &VerifiedKeyBundle {
        self.bundle_of(sender).unwrap_or(&self.alice.bundle)
    }
}

// === the `*In` conversions a hub and a client make of what they decode ===

/// Turns decoded sender keys and batches into their `*In` forms, as the hub does with a
/// publish before it routes (and a client with a delivery before it opens), and reads what
/// routing reads of them.
pub fn inspect_items(sender_keys: Vec<wire::SenderKey>, batches: Vec<wire::SignedBatch>) {
    for sender_key in sender_keys {
        if let Ok(sender_key) = SenderKeyIn::from_wire(sender_key) {
            let _ = (sender_key.channel(), sender_key.epoch());
            let _ = sender_key.recipients().count();
            let _ = wire::encode(sender_key.to_wire());
        }
    }
    for batch in batches {
        if let Ok(batch) = SignedBatchIn::from_wire(batch) {
            let _ = batch.envelope_hashes();
            for envelope in batch.envelopes() {
                let _ = (envelope.message_id(), envelope.reply_to());
                let _ = (envelope.seq(), envelope.ciphertext_len());
            }
            let _ = wire::encode(&batch.to_wire());
        }
    }
}

// === every bounded wire message ===

macro_rules! wire_messages {
    ($($ty:ident),* $(,)?) => {
        /// The name of every message type [`decode_message`] decodes, by index: each type
        /// `entente_wire` decodes with bounds.
        pub const WIRE_MESSAGES: &[&str] = &[$(stringify!($ty)),*];

        const DECODERS: &[fn(&[u8])] = &[$(decode_and_encode::<wire::$ty>),*];
    };
}

wire_messages! {
    KeyBundle, Envelope, SignedBatch, WrappedKey, SenderKey, RevocationList, ClientFrame,
    ServerFrame, Publish, Deliver, Subscribe, EnrollRequest, EnrollResponse, RenewRequest,
    RenewResponse, DirectoryRequest, DirectoryResponse, CreateTokenRequest, CreateTokenResponse,
    RevokeRequest, RevokeResponse, SubscriptionEnded, PolicySource, LoadPoliciesRequest,
    LoadPoliciesResponse, ShowPoliciesRequest, ShowPoliciesResponse, CheckPolicyRequest,
    CheckPolicyResponse, StoredPolicies, GrantInfo, GrantRequestInfo, GrantRequest, GrantResponse,
    ListGrantsRequest, ListGrantsResponse, RequestGrantRequest, RequestGrantResponse,
    ApprovalStatement, ApproveRequest, ApproveResponse, HeldMessage, ListHeldRequest,
    ListHeldResponse, RevokeGrantRequest, RevokeGrantResponse, StoredHold, AuditRecordsRequest,
    AuditRecordsResponse, AuditExportRequest, AuditExportResponse, AuditProofRequest,
    AuditProofResponse, KeysRequest, KeysResponse, StoredCaRollover, QuarantineRequest,
    QuarantinedAgent, QuarantineResponse, StoredQuarantine,
}

/// Decodes `bytes` as the message type `selector` picks (modulo the number of types) with
/// the default limits, and encodes what decoded again.
pub fn decode_message(selector: u8, bytes: &[u8]) {
    let index = usize::from(selector) % DECODERS.len();
    if let Some(decode) = DECODERS.get(index) {
        decode(bytes);
    }
}

/// The selector of the message type `name` for [`decode_message`].
pub fn message_selector(name: &str) -> Option<u8> {
    WIRE_MESSAGES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

fn decode_and_encode<M: Bounded>(bytes: &[u8]) {
    if let Ok(message) = wire::decode::<M>(bytes, &wire::Limits::default()) {
        let _ = wire::encode(&message);
    }
}

// === building the fixture ===

fn build() -> Result<Fixture, FixtureError> {
    let root_pkcs8 = hex::decode(ROOT_PKCS8).map_err(error)?;
    let root_key = rcgen::KeyPair::try_from(root_pkcs8.as_slice()).map_err(error)?;
    let root_params = ca_params("Fuzz Root CA", BasicConstraints::Unconstrained);
    let root_cert = root_params.self_signed(&root_key).map_err(error)?;

    let pkcs8 = hex::decode(INTERMEDIATE_PKCS8).map_err(error)?;
    let key = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(error)?;
    let mut params = ca_params("Fuzz Intermediate CA", BasicConstraints::Constrained(0));
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &Issuer::new(root_params, &root_key))
        .map_err(error)?;
    let signer = signer_id(&key.subject_public_key_info());
    let trust =
        TrustBundle::new(vec![root_cert.der().clone()], vec![cert.der().clone()]).map_err(error)?;
    let mut any_domain = EcdsaAuthority::new();
    any_domain.insert(signer, key.public_key_raw().to_vec(), 0, u64::MAX);

    let intermediate = Intermediate {
        key,
        signer,
        cert: cert.der().clone(),
        params,
    };
    let alice = agent(&trust, &intermediate, ALICE)?;
    let bob = agent(&trust, &intermediate, BOB)?;
    let list = sign_revocations(
        &intermediate,
        1,
        vec![vec![0x42; 16]],
        vec![format!("spiffe://{TRUST_DOMAIN}/agent/ops/mallory")],
    )?;
    let revocations = VerifiedRevocationList::verify(list, &trust, now()).map_err(error)?;
    Ok(Fixture {
        trust,
        any_domain,
        intermediate,
        revocations,
        alice,
        bob,
    })
}

fn agent(
    trust: &TrustBundle,
    intermediate: &Intermediate,
    (principal, secret): (&str, &str),
) -> Result<Agent, FixtureError> {
    let principal = Principal::parse(principal).map_err(error)?;
    let secret = hex::decode(secret).map_err(error)?;
    let keys = MessageKeys::from_secret_bytes(&secret).map_err(error)?;
    let seed = secret.get(..32).ok_or_else(|| error("short secret"))?;
    let signing = Ed25519KeyPair::from_seed_unchecked(seed).map_err(error)?;
    let body = KeyBundleBody {
        principal: principal.clone(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: 1,
        not_before_ms: BUNDLE_NOT_BEFORE_MS,
        not_after_ms: BUNDLE_NOT_AFTER_MS,
    };
    let signed = body.sign(intermediate.signer, |input| {
        intermediate.key.sign(input).map_err(error)
    })?;
    let bundle = KeyBundleIn::from_wire(signed)
        .and_then(|bundle| bundle.verify(trust, NOW_MS))
        .map_err(error)?;
    Ok(Agent {
        principal,
        keys: Arc::new(keys),
        signing,
        bundle,
    })
}

fn sign_revocations(
    intermediate: &Intermediate,
    version: u64,
    serials: Vec<Vec<u8>>,
    principals: Vec<String>,
) -> Result<wire::RevocationList, FixtureError> {
    let issued_at_ms = NOW_MS - 60_000;
    let signer = intermediate.signer.to_vec();
    let input = entente_crypto::revocation::signing_input(
        version,
        issued_at_ms,
        &serials,
        &principals,
        &signer,
    );
    Ok(wire::RevocationList {
        version,
        issued_at_ms,
        serials,
        principals,
        signer,
        signature: intermediate.key.sign(&input).map_err(error)?,
    })
}

fn error(e: impl std::fmt::Debug) -> FixtureError {
    FixtureError(format!("{e:?}"))
}
