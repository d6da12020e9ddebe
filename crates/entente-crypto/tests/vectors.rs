#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Test vectors in `test-vectors/*.json`: key bundles (PROTOCOL.md §3), envelopes (§4), batch
//! signatures (§4.4), sender keys (§5) and batches of replies (§5.5), and the RFC 9180 vectors
//! of our HPKE suite.
//!
//! [`build`] makes every vector from fixed inputs and `regenerate_vectors` (ignored) writes
//! them. The checks read the files and recompute each output twice: with this crate, and with
//! [`spec`], an independent encoding of the protocol written from its text, so that a change to
//! either one is caught. Two values are random in real use: the HPKE ephemeral key is fixed
//! here by `ikm_e`, as in RFC 9180's own vectors, while ECDSA signatures stay random, so key
//! bundle signatures are verified rather than compared.

mod common;

use std::collections::HashMap;

use aws_lc_rs::{
    aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey},
    encoding::AsDer,
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, ED25519, EcdsaKeyPair,
        Ed25519KeyPair, KeyPair, UnparsedPublicKey,
    },
};
use common::vectors::{Hex, read_vector, write};
use common::{Agent, DAY, NOW, TestCa};
use entente_crypto::{
    BundleError, EcdsaAuthority, KeyBundleBody, KeyBundleIn, MessageKeys, OpenError, Opener,
    OpenerOptions, ReplayError, SenderKeyIn, SignedBatchIn, TAG_LEN, VerifiedKeyBundle,
    batch_signing_input, danger, envelope_aad, sender_key_signing_input, signer_id,
};
use entente_types::{MessageId, Principal};
use entente_wire as wire;
use hpke::{
    Deserializable, Kem, OpModeR, OpModeS, Serializable,
    aead::{Aead, AesGcm256},
    kdf::{HkdfSha256, Kdf},
    kem::X25519HkdfSha256,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

// Relative to the package root, where cargo runs tests: a path fixed at compile time would go
// stale when a build directory is shared between checkouts.
const KEY_BUNDLE: &str = "../../test-vectors/key-bundle.json";
const ENVELOPE: &str = "../../test-vectors/envelope.json";
const BATCH: &str = "../../test-vectors/batch-signature.json";
const REPLIES: &str = "../../test-vectors/reply-batch.json";
const HPKE_RFC9180: &str = "../../test-vectors/hpke-rfc9180-base-x25519-sha256-aes256gcm.json";

// === fixed inputs ===

/// The P-256 key of RFC 6979 §A.2.5, a published test key.
const CA_PRIVATE: &str = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721";
const CA_PUBLIC: &str = concat!(
    "04",
    "60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6",
    "7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
);
const ALICE: &str = "spiffe://acme.internal/agent/ops/alice";
const BOB: &str = "spiffe://acme.internal/agent/ops/bob";
const CHANNEL: &str = "orders.eu";
/// Bob's reply namespace root, which Alice's batch of replies is on.
const BOB_ROOT: &str = "_reply.ops.bob";
/// Both agents' key-bundle epoch (as in `common::Agent`).
const KEY_EPOCH: u64 = 1;
/// The sender-key epoch: a `Sealer` started at `NOW` numbers its first epoch `NOW`.
const EPOCH: u64 = NOW;
const MESSAGE_TTL_MS: u64 = 10 * 60 * 1000;
/// A `Sealer`'s default: epoch lifetime plus message lifetime.
const SENDER_KEY_EXPIRES_MS: u64 = NOW + 60 * 60 * 1000 + MESSAGE_TTL_MS;
const OPEN_AT_MS: u64 = NOW + 5_000;

/// 64 bytes: Ed25519 seed, then X25519 secret (`MessageKeys::to_secret_bytes`).
fn alice_secret() -> [u8; 64] {
    counting(0x00)
}

fn bob_secret() -> [u8; 64] {
    counting(0x40)
}

fn epoch_secret() -> [u8; 32] {
    counting(0x80)
}

/// Input keying material of the HPKE ephemeral key wrapping the epoch secret to Bob.
fn ikm_e() -> [u8; 32] {
    counting(0xc0)
}

fn counting<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

/// The envelopes of `envelope.json`, sealed in this order by Alice on `orders.eu`.
fn envelope_inputs() -> Vec<(&'static str, u64, &'static str, Vec<u8>)> {
    vec![
        (
            "first envelope of the epoch: seq 0, so the nonce is the IV",
            0,
            "",
            b"hello, bob".to_vec(),
        ),
        (
            "seq 1 with a reply_to channel",
            1,
            "_reply.ops.alice",
            b"which orders shipped today?".to_vec(),
        ),
        (
            "empty payload: the ciphertext is the 16-byte tag alone",
            2,
            "",
            Vec::new(),
        ),
        (
            "256-byte payload 00..ff at seq 300, which changes two bytes of the nonce",
            300,
            "",
            (0..=255).collect(),
        ),
    ]
}

// === vectors ===

/// `key-bundle.json`.
#[derive(Debug, Serialize, Deserialize)]
struct KeyBundleVector {
    description: String,
    ca: CaKey,
    subject: Party,
    signing_input: Hex,
    signature: Hex,
    verify_at_ms: u64,
    tampered: Vec<Tampered>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CaKey {
    description: String,
    pkcs8: Hex,
    /// Uncompressed SEC1 point.
    public_key: Hex,
    spki_der: Hex,
    /// SHA-256 of `spki_der`.
    signer: Hex,
}

/// An agent: its message keys and its CA-signed key bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Party {
    principal: String,
    message_keys_secret: Hex,
    ed25519_public: Hex,
    x25519_public: Hex,
    epoch: u64,
    not_before_ms: u64,
    not_after_ms: u64,
    /// The `KeyBundle` protobuf.
    bundle: Hex,
}

#[derive(Debug, Serialize, Deserialize)]
struct Tampered {
    description: String,
    offset: usize,
    encoded: Hex,
    /// `BundleError`, as `Debug` prints it.
    error: String,
}

/// `envelope.json`.
#[derive(Debug, Serialize, Deserialize)]
struct EnvelopeVector {
    description: String,
    sender: String,
    channel: String,
    epoch: u64,
    epoch_secret: Hex,
    payload_key: Hex,
    payload_iv: Hex,
    envelopes: Vec<EnvelopeCase>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EnvelopeCase {
    description: String,
    seq: u64,
    message_id: Hex,
    issued_at_ms: u64,
    expires_at_ms: u64,
    reply_to: String,
    payload: Hex,
    nonce: Hex,
    aad: Hex,
    ciphertext: Hex,
    /// The `Envelope` protobuf.
    encoded: Hex,
}

impl EnvelopeCase {
    fn header(&self, epoch: u64) -> wire::Envelope {
        wire::Envelope {
            epoch,
            seq: self.seq,
            message_id: entente_wire::IdBytes::new(&self.message_id),
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
            reply_to: self.reply_to.as_str().into(),
            ciphertext: Vec::new(),
            channel: Default::default(),
        }
    }

    fn sealed(&self, epoch: u64) -> wire::Envelope {
        wire::Envelope {
            ciphertext: self.ciphertext.to_vec(),
            ..self.header(epoch)
        }
    }
}

/// `batch-signature.json`.
#[derive(Debug, Serialize, Deserialize)]
struct BatchVector {
    description: String,
    ca_public_key: Hex,
    ca_signer: Hex,
    sender: Party,
    recipient: Party,
    channel: String,
    epoch: u64,
    epoch_secret: Hex,
    open_at_ms: u64,
    sender_key: SenderKeyVector,
    batch: BatchCase,
}

#[derive(Debug, Serialize, Deserialize)]
struct SenderKeyVector {
    description: String,
    issued_at_ms: u64,
    expires_at_ms: u64,
    ikm_e: Hex,
    hpke_info: Hex,
    hpke_aad: Hex,
    enc: Hex,
    wrapped_secret: Hex,
    signing_input: Hex,
    signature: Hex,
    /// The `SenderKey` protobuf.
    encoded: Hex,
}

#[derive(Debug, Serialize, Deserialize)]
struct BatchCase {
    description: String,
    payloads: Vec<Hex>,
    envelope_hashes: Vec<Hex>,
    /// SHA-256 over the envelope hashes, in order: what the signing input ends with.
    envelope_hashes_digest: Hex,
    signing_input: Hex,
    signature: Hex,
    /// The `SignedBatch` protobuf.
    encoded: Hex,
}

/// `reply-batch.json`.
#[derive(Debug, Serialize, Deserialize)]
struct ReplyBatchVector {
    description: String,
    ca_public_key: Hex,
    ca_signer: Hex,
    sender: Party,
    recipient: Party,
    root: String,
    epoch: u64,
    epoch_secret: Hex,
    /// The root's payload key and IV, which seal every reply under it.
    payload_key: Hex,
    payload_iv: Hex,
    open_at_ms: u64,
    sender_key: SenderKeyVector,
    replies: Vec<ReplyCase>,
    batch: BatchCase,
}

/// One envelope of a batch of replies, on its own reply channel.
#[derive(Debug, Serialize, Deserialize)]
struct ReplyCase {
    channel: String,
    envelope: EnvelopeCase,
}

impl ReplyCase {
    fn sealed(&self, epoch: u64) -> wire::Envelope {
        wire::Envelope {
            channel: self.channel.as_str().into(),
            ..self.envelope.sealed(epoch)
        }
    }
}

/// The RFC 9180 vector file (CFRG format).
#[derive(Debug, Deserialize)]
struct Rfc9180 {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    info: Hex,
    #[serde(rename = "ikmR")]
    ikm_r: Hex,
    #[serde(rename = "ikmE")]
    ikm_e: Hex,
    #[serde(rename = "skRm")]
    sk_rm: Hex,
    #[serde(rename = "skEm")]
    sk_em: Hex,
    #[serde(rename = "pkRm")]
    pk_rm: Hex,
    #[serde(rename = "pkEm")]
    pk_em: Hex,
    enc: Hex,
    base_nonce: Hex,
    encryptions: Vec<Rfc9180Encryption>,
    exports: Vec<Rfc9180Export>,
}

#[derive(Debug, Deserialize)]
struct Rfc9180Encryption {
    aad: Hex,
    ct: Hex,
    nonce: Hex,
    pt: Hex,
}

#[derive(Debug, Deserialize)]
struct Rfc9180Export {
    exporter_context: Hex,
    #[serde(rename = "L")]
    len: usize,
    exported_value: Hex,
}

// === generation ===

struct Vectors {
    key_bundle: KeyBundleVector,
    envelope: EnvelopeVector,
    batch: BatchVector,
    replies: ReplyBatchVector,
}

#[test]
#[ignore = "regenerates test-vectors/*.json"]
fn regenerate_vectors() {
    // Bundles that did not change keep their stored signatures, so regenerating without a
    // change rewrites the same bytes.
    let stored = stored_signatures().unwrap_or_default();
    let ca = fixed_ca();
    let rng = SystemRandom::new();
    let vectors = build(&mut |input| {
        stored
            .get(input)
            .cloned()
            .unwrap_or_else(|| ca.sign(&rng, input).unwrap().as_ref().to_vec())
    });
    write(KEY_BUNDLE, &vectors.key_bundle);
    write(ENVELOPE, &vectors.envelope);
    write(BATCH, &vectors.batch);
    write(REPLIES, &vectors.replies);
}

/// Builds every vector; `sign` makes the CA's ECDSA signatures.
fn build(sign: &mut dyn FnMut(&[u8]) -> Vec<u8>) -> Vectors {
    let ca = fixed_ca();
    let spki = ca.public_key().as_der().unwrap();
    let signer = signer_id(spki.as_ref());
    let ca_key = CaKey {
        description: "the CA key signing key bundles: the ECDSA P-256 key of RFC 6979 §A.2.5; \
                      signer = SHA-256(spki_der)"
            .into(),
        pkcs8: Hex::of(ca.to_pkcs8v1().unwrap()),
        public_key: Hex::of(ca.public_key()),
        spki_der: Hex::of(spki.as_ref()),
        signer: Hex::of(signer),
    };
    let alice = party(ALICE, &alice_secret(), signer, sign);
    let bob = party(BOB, &bob_secret(), signer, sign);
    let envelope = envelope_vector();
    Vectors {
        key_bundle: key_bundle_vector(ca_key.clone(), alice.clone()),
        replies: reply_batch_vector(&ca_key, alice.clone(), bob.clone()),
        batch: batch_vector(&ca_key, alice, bob, &envelope),
        envelope,
    }
}

fn fixed_ca() -> EcdsaKeyPair {
    EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &hex::decode(CA_PRIVATE).unwrap(),
        &hex::decode(CA_PUBLIC).unwrap(),
    )
    .unwrap()
}

fn party(
    principal: &str,
    secret: &[u8; 64],
    signer: [u8; 32],
    sign: &mut dyn FnMut(&[u8]) -> Vec<u8>,
) -> Party {
    let keys = MessageKeys::from_secret_bytes(secret).unwrap();
    let body = KeyBundleBody {
        principal: Principal::parse(principal).unwrap(),
        ed25519_public: keys.ed25519_public(),
        x25519_public: keys.x25519_public(),
        epoch: KEY_EPOCH,
        not_before_ms: NOW - DAY,
        not_after_ms: NOW + DAY,
    };
    let bundle = body
        .clone()
        .sign(signer, |input| Ok::<_, ()>(sign(input)))
        .unwrap();
    Party {
        principal: principal.to_owned(),
        message_keys_secret: Hex::of(secret),
        ed25519_public: Hex::of(body.ed25519_public),
        x25519_public: Hex::of(body.x25519_public),
        epoch: body.epoch,
        not_before_ms: body.not_before_ms,
        not_after_ms: body.not_after_ms,
        bundle: Hex::of(wire::encode(&bundle)),
    }
}

fn key_bundle_vector(ca: CaKey, subject: Party) -> KeyBundleVector {
    let bundle: wire::KeyBundle = wire::decode(&subject.bundle, &limits()).unwrap();
    let signing_input = KeyBundleIn::from_wire(bundle.clone())
        .unwrap()
        .body()
        .signing_input(&ca.signer);
    let encoded = &subject.bundle;
    let x25519_at = find(encoded, &subject.x25519_public);
    let principal_at = find(encoded, subject.principal.as_bytes()) + subject.principal.len() - 1;
    let signer_at = find(encoded, &ca.signer);
    let signature_at = encoded.len() - 1;
    let tampered = [
        (
            "first byte of x25519_public xor 0x01",
            x25519_at,
            0x01,
            "BadSignature",
        ),
        (
            "principal `…/alice` changed to `…/alicd`",
            principal_at,
            0x01,
            "BadSignature",
        ),
        (
            "last byte of the signature xor 0x01",
            signature_at,
            0x01,
            "BadSignature",
        ),
        (
            "first byte of signer xor 0x80",
            signer_at,
            0x80,
            "UnknownSigner",
        ),
    ]
    .into_iter()
    .map(|(description, offset, xor, error)| {
        let mut bytes = encoded.to_vec();
        bytes[offset] ^= xor;
        Tampered {
            description: description.into(),
            offset,
            encoded: Hex(bytes),
            error: error.into(),
        }
    })
    .collect();
    KeyBundleVector {
        description: "A CA-signed key bundle (PROTOCOL.md §3). signing_input is \
                      KeyBundleBody::signing_input, compared byte for byte. ECDSA signatures \
                      are randomized: check by decoding `subject.bundle` and verifying it with \
                      the CA public key at verify_at_ms. Each `tampered` entry changes one byte \
                      of the bundle and must fail with `error`."
            .into(),
        ca,
        subject,
        signing_input: Hex(signing_input),
        signature: Hex(bundle.signature),
        verify_at_ms: NOW,
        tampered,
    }
}

fn envelope_vector() -> EnvelopeVector {
    let secret = epoch_secret();
    let (key, iv) = danger::danger_payload_key_and_iv(&secret, ALICE, CHANNEL, EPOCH).unwrap();
    let envelopes = envelope_inputs()
        .into_iter()
        .enumerate()
        .map(|(i, (description, seq, reply_to, payload))| {
            let issued_at_ms = NOW + 1_000 * (i as u64 + 1);
            let id = MessageId::from_parts(issued_at_ms, counting(0x10 * (i as u8 + 1)));
            let mut e = wire::Envelope {
                epoch: EPOCH,
                seq,
                message_id: (*id.as_bytes()).into(),
                issued_at_ms,
                expires_at_ms: issued_at_ms + MESSAGE_TTL_MS,
                reply_to: reply_to.into(),
                ciphertext: Vec::new(),
                channel: Default::default(),
            };
            let aad = envelope_aad(ALICE, CHANNEL, &e);
            danger::danger_seal_with_secret(&secret, ALICE, CHANNEL, CHANNEL, &mut e, &payload)
                .unwrap();
            EnvelopeCase {
                description: description.into(),
                seq,
                message_id: Hex(e.message_id.as_slice().to_vec()),
                issued_at_ms,
                expires_at_ms: e.expires_at_ms,
                reply_to: e.reply_to.to_string(),
                payload: Hex(payload),
                nonce: Hex::of(spec::nonce(&iv, seq)),
                aad: Hex(aad),
                ciphertext: Hex(e.ciphertext.clone()),
                encoded: Hex(wire::encode(&e)),
            }
        })
        .collect();
    EnvelopeVector {
        description: "Envelopes sealed under one sender-key epoch (PROTOCOL.md §4). payload_key \
                      and payload_iv come from epoch_secret by HKDF-SHA256 (§4.1); each \
                      envelope's aad is its canonical header (§4.2) and its ciphertext is \
                      AES-256-GCM(payload_key, nonce = payload_iv xor seq, aad, payload), tag \
                      appended. Everything is deterministic: compare byte for byte."
            .into(),
        sender: ALICE.into(),
        channel: CHANNEL.into(),
        epoch: EPOCH,
        epoch_secret: Hex::of(secret),
        payload_key: Hex::of(key),
        payload_iv: Hex::of(iv),
        envelopes,
    }
}

fn batch_vector(ca: &CaKey, sender: Party, recipient: Party, env: &EnvelopeVector) -> BatchVector {
    let secret = epoch_secret();
    let sender_key_vector = sender_key_vector(
        &sender,
        &recipient,
        CHANNEL,
        "Alice's epoch secret wrapped to Bob (PROTOCOL.md §5): HPKE base mode, \
         DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, with hpke_info and \
         hpke_aad as given; the ephemeral key is DeriveKeyPair(ikm_e), so enc and \
         wrapped_secret are reproducible. signing_input (§5.3) is signed with \
         Alice's Ed25519 key. Check by re-sealing, and by accepting `encoded` with \
         Bob's keys.",
    );

    let keys = MessageKeys::from_secret_bytes(&sender.message_keys_secret).unwrap();
    let mut batch = wire::SignedBatch {
        sender: sender.principal.clone(),
        channel: CHANNEL.into(),
        key_epoch: sender.epoch,
        envelopes: env.envelopes.iter().map(|c| c.sealed(env.epoch)).collect(),
        signature: Vec::new(),
    };
    danger::danger_sign_batch(&keys, &mut batch);
    let batch_case = BatchCase {
        description: "The envelopes of envelope.json in one batch signed by Alice \
                      (PROTOCOL.md §4.4): each envelope's hash is SHA-256(aad || u32 length || \
                      ciphertext) (envelope_hashes); signing_input ends with one SHA-256 over \
                      them, in order (envelope_hashes_digest). Ed25519 is deterministic: \
                      compare the signature byte for byte."
            .into(),
        payloads: env.envelopes.iter().map(|c| c.payload.clone()).collect(),
        envelope_hashes: batch
            .envelopes
            .iter()
            .map(|e| Hex::of(spec::envelope_hash(&batch.sender, &batch.channel, e)))
            .collect(),
        envelope_hashes_digest: Hex::of(spec::hashes_digest(&batch)),
        signing_input: Hex(batch_signing_input(&batch)),
        signature: Hex(batch.signature.clone()),
        encoded: Hex(wire::encode(&batch)),
    };

    BatchVector {
        description: "A signed batch and the sender key that opens it, end to end: Bob accepts \
                      sender_key with Alice's bundle (verified with the CA key), then opens \
                      batch at open_at_ms and reads payloads. Bundles as in key-bundle.json \
                      (PROTOCOL.md §3), sender key §5, batch signature §4.4."
            .into(),
        ca_public_key: ca.public_key.clone(),
        ca_signer: ca.signer.clone(),
        sender,
        recipient,
        channel: CHANNEL.into(),
        epoch: EPOCH,
        epoch_secret: Hex::of(secret),
        open_at_ms: OPEN_AT_MS,
        sender_key: sender_key_vector,
        batch: batch_case,
    }
}

/// Alice's sender key of epoch [`EPOCH`] for `channel`, wrapped to the recipient, as a vector.
fn sender_key_vector(
    sender: &Party,
    recipient: &Party,
    channel: &str,
    description: &str,
) -> SenderKeyVector {
    let sender_key = SenderKeySpec {
        sender_secret: &sender.message_keys_secret,
        sender: &sender.principal,
        channel,
        epoch: EPOCH,
        issued_at_ms: NOW,
        expires_at_ms: SENDER_KEY_EXPIRES_MS,
        key_epoch: sender.epoch,
        epoch_secret: &epoch_secret(),
        recipient: &recipient.principal,
        recipient_key_epoch: recipient.epoch,
        recipient_x25519: &recipient.x25519_public,
        ikm_e: &ikm_e(),
    }
    .seal();
    let wrapped = &sender_key.recipients[0];
    SenderKeyVector {
        description: description.into(),
        issued_at_ms: sender_key.issued_at_ms,
        expires_at_ms: sender_key.expires_at_ms,
        ikm_e: Hex::of(ikm_e()),
        hpke_info: Hex(spec::hpke_info(&sender.principal, channel, EPOCH)),
        hpke_aad: Hex(spec::wrap_aad(&recipient.principal, recipient.epoch)),
        enc: Hex(wrapped.enc.clone()),
        wrapped_secret: Hex(wrapped.ciphertext.clone()),
        signing_input: Hex(sender_key_signing_input(&sender_key)),
        signature: Hex(sender_key.signature.clone()),
        encoded: Hex(wire::encode(&sender_key)),
    }
}

/// Alice's replies to three of Bob's requests, as one batch of replies on his reply namespace
/// root (PROTOCOL.md §5.5).
fn reply_batch_vector(ca: &CaKey, sender: Party, recipient: Party) -> ReplyBatchVector {
    let secret = epoch_secret();
    let sender_key = sender_key_vector(
        &sender,
        &recipient,
        BOB_ROOT,
        "Alice's sender key for Bob's reply namespace root (PROTOCOL.md §5.4), wrapped to \
         Bob as in batch-signature.json; its epoch's payload key (the root's) seals every \
         reply channel under the root.",
    );
    let inputs: [(&str, &str, &str, &[u8]); 3] = [
        (
            "a reply on its reply channel",
            "_reply.ops.bob.k7Qx",
            "",
            b"42 orders shipped",
        ),
        (
            "a reply on another reply channel that asks back (reply_to in Alice's namespace)",
            "_reply.ops.bob.m2Zp",
            "_reply.ops.alice.q1",
            b"which region?",
        ),
        (
            "an empty reply on a third channel",
            "_reply.ops.bob.k7Qy",
            "",
            b"",
        ),
    ];
    let (key, iv) = danger::danger_payload_key_and_iv(&secret, ALICE, BOB_ROOT, EPOCH).unwrap();
    let replies: Vec<ReplyCase> = inputs
        .into_iter()
        .enumerate()
        .map(|(i, (description, channel, reply_to, payload))| {
            let seq = i as u64;
            let issued_at_ms = NOW + 1_000 * (seq + 1);
            let id = MessageId::from_parts(issued_at_ms, counting(0x40 + 0x10 * i as u8));
            let mut e = wire::Envelope {
                epoch: EPOCH,
                seq,
                message_id: (*id.as_bytes()).into(),
                issued_at_ms,
                expires_at_ms: issued_at_ms + MESSAGE_TTL_MS,
                reply_to: reply_to.into(),
                ciphertext: Vec::new(),
                channel: channel.into(),
            };
            let aad = envelope_aad(ALICE, channel, &e);
            danger::danger_seal_with_secret(&secret, ALICE, BOB_ROOT, channel, &mut e, payload)
                .unwrap();
            ReplyCase {
                channel: channel.into(),
                envelope: EnvelopeCase {
                    description: description.into(),
                    seq,
                    message_id: Hex(e.message_id.as_slice().to_vec()),
                    issued_at_ms,
                    expires_at_ms: e.expires_at_ms,
                    reply_to: e.reply_to.to_string(),
                    payload: Hex::of(payload),
                    nonce: Hex::of(spec::nonce(&iv, seq)),
                    aad: Hex(aad),
                    ciphertext: Hex(e.ciphertext.clone()),
                    encoded: Hex(wire::encode(&e)),
                },
            }
        })
        .collect();

    let keys = MessageKeys::from_secret_bytes(&sender.message_keys_secret).unwrap();
    let mut batch = wire::SignedBatch {
        sender: sender.principal.clone(),
        channel: BOB_ROOT.into(),
        key_epoch: sender.epoch,
        envelopes: replies.iter().map(|r| r.sealed(EPOCH)).collect(),
        signature: Vec::new(),
    };
    danger::danger_sign_batch(&keys, &mut batch);
    let batch_case = BatchCase {
        description: "The replies in one batch signed by Alice (PROTOCOL.md §5.5): the batch's \
                      channel is the root, which the signing input names; each envelope names \
                      its reply channel (field 8), which its aad and so its envelope hash name."
            .into(),
        payloads: replies.iter().map(|r| r.envelope.payload.clone()).collect(),
        envelope_hashes: batch
            .envelopes
            .iter()
            .map(|e| Hex::of(spec::envelope_hash(&batch.sender, &e.channel, e)))
            .collect(),
        envelope_hashes_digest: Hex::of(spec::hashes_digest(&batch)),
        signing_input: Hex(batch_signing_input(&batch)),
        signature: Hex(batch.signature.clone()),
        encoded: Hex(wire::encode(&batch)),
    };
    ReplyBatchVector {
        description: "A batch of replies and the sender key that opens it (PROTOCOL.md §5.5): \
                      Bob accepts sender_key with Alice's bundle, then opens batch at \
                      open_at_ms and reads each reply on its channel. payload_key and \
                      payload_iv come from epoch_secret with the root in the HKDF context \
                      (§4.1) and seal every reply, each with its own channel in its aad \
                      (§5.4)."
            .into(),
        ca_public_key: ca.public_key.clone(),
        ca_signer: ca.signer.clone(),
        sender,
        recipient,
        root: BOB_ROOT.into(),
        epoch: EPOCH,
        epoch_secret: Hex::of(secret),
        payload_key: Hex::of(key),
        payload_iv: Hex::of(iv),
        open_at_ms: OPEN_AT_MS,
        sender_key,
        replies,
        batch: batch_case,
    }
}

/// A sender key with one recipient, built from the protocol text alone (PROTOCOL.md §5), with
/// the HPKE ephemeral key derived from `ikm_e`.
struct SenderKeySpec<'a> {
    /// The sender's `MessageKeys` secret bytes; the first 32 are the Ed25519 seed.
    sender_secret: &'a [u8],
    sender: &'a str,
    channel: &'a str,
    epoch: u64,
    issued_at_ms: u64,
    expires_at_ms: u64,
    key_epoch: u64,
    epoch_secret: &'a [u8],
    recipient: &'a str,
    recipient_key_epoch: u64,
    recipient_x25519: &'a [u8],
    ikm_e: &'a [u8],
}

impl SenderKeySpec<'_> {
    fn seal(&self) -> wire::SenderKey {
        let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(self.recipient_x25519).unwrap();
        let (enc, ciphertext) =
            hpke::single_shot_seal::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
                &OpModeS::Base,
                &pk,
                &spec::hpke_info(self.sender, self.channel, self.epoch),
                self.epoch_secret,
                &spec::wrap_aad(self.recipient, self.recipient_key_epoch),
                &mut FixedRng::new(self.ikm_e),
            )
            .unwrap();
        let mut sender_key = wire::SenderKey {
            version: 1,
            sender: self.sender.into(),
            channel: self.channel.into(),
            epoch: self.epoch,
            issued_at_ms: self.issued_at_ms,
            expires_at_ms: self.expires_at_ms,
            key_epoch: self.key_epoch,
            recipients: vec![wire::WrappedKey {
                recipient: self.recipient.into(),
                recipient_key_epoch: self.recipient_key_epoch,
                enc: enc.to_bytes().to_vec(),
                ciphertext,
            }],
            signature: Vec::new(),
        };
        let signing = Ed25519KeyPair::from_seed_unchecked(&self.sender_secret[..32]).unwrap();
        sender_key.signature = signing
            .sign(&spec::sender_key_input(&sender_key))
            .as_ref()
            .to_vec();
        sender_key
    }
}

/// Hands out fixed bytes as "randomness": HPKE draws the 32-byte ikm of its ephemeral key from
/// the RNG and nothing else, so `FixedRng::new(ikm_e)` makes the ephemeral key
/// DeriveKeyPair(ikm_e), as in RFC 9180's vectors.
struct FixedRng {
    bytes: Vec<u8>,
    used: usize,
}

impl FixedRng {
    fn new(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.to_vec(),
            used: 0,
        }
    }
}

impl hpke::rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        hpke::rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        hpke::rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        let end = self.used + dst.len();
        dst.copy_from_slice(&self.bytes[self.used..end]);
        self.used = end;
    }
}

impl hpke::rand_core::CryptoRng for FixedRng {}

// === key-bundle.json ===

#[test]
fn key_bundle_vector_signing_input_and_signature() {
    let v: KeyBundleVector = read(KEY_BUNDLE);
    check_ca(&v.ca);
    let s = &v.subject;
    check_keys(s);
    let body = body_of(s);
    assert_eq!(body.signing_input(&v.ca.signer), &*v.signing_input);
    assert_eq!(spec::key_bundle_input(s, &v.ca.signer), &*v.signing_input);

    // The stored signature verifies over the signing input with the bare CA key…
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &*v.ca.public_key)
        .verify(&v.signing_input, &v.signature)
        .unwrap();
    // …and the encoded bundle verifies against an authority holding that key.
    let authority = authority(&v.ca.public_key, &v.ca.signer);
    let bundle = KeyBundleIn::decode(&s.bundle, &limits()).unwrap();
    assert_eq!(bundle.body(), &body);
    let verified = bundle.clone().verify(&authority, v.verify_at_ms).unwrap();
    assert_eq!(wire::encode(verified.to_wire()), &*s.bundle);
    // The fields plus the stored signature encode to exactly the stored protobuf.
    let signer: [u8; 32] = v.ca.signer.to_vec().try_into().unwrap();
    let rebuilt = body
        .sign(signer, |_| Ok::<_, ()>(v.signature.to_vec()))
        .unwrap();
    assert_eq!(wire::encode(&rebuilt), &*s.bundle);

    // Validity is inclusive at both ends.
    for at in [s.not_before_ms, s.not_after_ms] {
        bundle.clone().verify(&authority, at).unwrap();
    }
    let err = bundle.clone().verify(&authority, s.not_before_ms - 1);
    assert_eq!(err.unwrap_err(), BundleError::NotYetValid);
    let err = bundle.verify(&authority, s.not_after_ms + 1);
    assert_eq!(err.unwrap_err(), BundleError::Expired);
}

#[test]
fn key_bundle_vector_with_one_byte_changed_fails() {
    let v: KeyBundleVector = read(KEY_BUNDLE);
    let authority = authority(&v.ca.public_key, &v.ca.signer);
    assert!(!v.tampered.is_empty());
    for t in &v.tampered {
        let changed: Vec<_> = (0..t.encoded.len())
            .filter(|&i| t.encoded[i] != v.subject.bundle[i])
            .collect();
        assert_eq!(changed, [t.offset], "{}", t.description);
        let err = KeyBundleIn::decode(&t.encoded, &limits())
            .and_then(|b| b.verify(&authority, v.verify_at_ms))
            .unwrap_err();
        assert_eq!(format!("{err:?}"), t.error, "{}", t.description);
    }
}

// === envelope.json ===

#[test]
fn envelope_vector_key_iv_aad_and_ciphertext() {
    let v: EnvelopeVector = read(ENVELOPE);
    let secret: [u8; 32] = v.epoch_secret.to_vec().try_into().unwrap();
    let (key, iv) =
        danger::danger_payload_key_and_iv(&secret, &v.sender, &v.channel, v.epoch).unwrap();
    assert_eq!(key, &*v.payload_key);
    assert_eq!(iv, &*v.payload_iv);
    assert_eq!(
        spec::payload_key_and_iv(&secret, &v.sender, &v.channel, v.epoch),
        (key, iv)
    );
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());

    assert_eq!(v.envelopes.len(), 4);
    for c in &v.envelopes {
        let what = &c.description;
        let mut e = c.header(v.epoch);
        assert_eq!(envelope_aad(&v.sender, &v.channel, &e), &*c.aad, "{what}");
        assert_eq!(
            spec::envelope_aad(&v.sender, &v.channel, &e),
            &*c.aad,
            "{what}"
        );
        assert_eq!(spec::nonce(&iv, c.seq), &*c.nonce, "{what}");
        let id = MessageId::from_slice(&c.message_id).unwrap();
        assert_eq!(id.unix_millis(), c.issued_at_ms, "{what}");

        danger::danger_seal_with_secret(
            &secret, &v.sender, &v.channel, &v.channel, &mut e, &c.payload,
        )
        .unwrap();
        assert_eq!(e.ciphertext, &*c.ciphertext, "{what}");
        assert_eq!(e.ciphertext.len(), c.payload.len() + TAG_LEN, "{what}");
        assert_eq!(wire::encode(&e), &*c.encoded, "{what}");
        let decoded: wire::Envelope = wire::decode(&c.encoded, &limits()).unwrap();
        assert_eq!(decoded, e, "{what}");

        // Plain AES-256-GCM with the stored key, nonce and aad agrees both ways.
        let nonce = || Nonce::try_assume_unique_for_key(&c.nonce).unwrap();
        let mut sealed = c.payload.to_vec();
        aead.seal_in_place_append_tag(nonce(), Aad::from(&*c.aad), &mut sealed)
            .unwrap();
        assert_eq!(sealed, &*c.ciphertext, "{what}");
        let mut opened = c.ciphertext.to_vec();
        let plain = aead
            .open_in_place(nonce(), Aad::from(&*c.aad), &mut opened)
            .unwrap();
        assert_eq!(plain, &*c.payload, "{what}");
    }
}

/// The stored envelopes, signed as a batch by fixture keys, open through the real `Opener`.
#[test]
fn envelope_vector_opens_through_the_opener() {
    let v: EnvelopeVector = read(ENVELOPE);
    let ca = TestCa::new();
    let alice_keys = MessageKeys::from_secret_bytes(&alice_secret()).unwrap();
    let alice = Agent::with_keys(&ca, "alice", alice_keys);
    let bob = Agent::new(&ca, "bob");
    assert_eq!(alice.id.as_str(), v.sender);

    let sender_key = SenderKeySpec {
        sender_secret: &alice_secret(),
        sender: &v.sender,
        channel: &v.channel,
        epoch: v.epoch,
        issued_at_ms: NOW,
        expires_at_ms: SENDER_KEY_EXPIRES_MS,
        key_epoch: alice.bundle.epoch(),
        epoch_secret: &v.epoch_secret,
        recipient: bob.id.as_str(),
        recipient_key_epoch: bob.bundle.epoch(),
        recipient_x25519: &bob.bundle.body().x25519_public,
        ikm_e: &ikm_e(),
    }
    .seal();
    let mut batch = wire::SignedBatch {
        sender: v.sender.clone(),
        channel: v.channel.clone(),
        key_epoch: alice.bundle.epoch(),
        envelopes: v.envelopes.iter().map(|c| c.sealed(v.epoch)).collect(),
        signature: Vec::new(),
    };
    danger::danger_sign_batch(&alice.keys, &mut batch);

    let mut opener = bob.opener();
    let sender_key = SenderKeyIn::from_wire(sender_key).unwrap();
    opener
        .accept_sender_key(&sender_key, &alice.bundle, OPEN_AT_MS)
        .unwrap();
    let batch = SignedBatchIn::from_wire(batch).unwrap();
    let opened = opener.open(batch, &alice.bundle, OPEN_AT_MS).unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    assert_eq!(opened.delivered.len(), v.envelopes.len());
    for (got, c) in opened.delivered.iter().zip(&v.envelopes) {
        assert_eq!(got.payload(), &*c.payload, "{}", c.description);
        assert_eq!(got.seq(), c.seq);
        assert_eq!(got.epoch(), v.epoch);
        assert_eq!(got.message_id().as_bytes(), &*c.message_id);
        assert_eq!(got.issued_at_ms(), c.issued_at_ms);
        assert_eq!(got.expires_at_ms(), c.expires_at_ms);
        assert_eq!(got.reply_to().map_or("", |r| r.as_str()), c.reply_to);
    }
}

// === batch-signature.json ===

#[test]
fn batch_vector_signing_input_and_signature() {
    let v: BatchVector = read(BATCH);
    check_keys(&v.sender);
    let b = &v.batch;
    let batch: wire::SignedBatch = wire::decode(&b.encoded, &limits()).unwrap();
    assert_eq!(wire::encode(&batch), &*b.encoded);
    assert_eq!(batch.sender, v.sender.principal);
    assert_eq!(batch.channel, v.channel);
    assert_eq!(batch.key_epoch, v.sender.epoch);

    let hashes: Vec<_> = batch
        .envelopes
        .iter()
        .map(|e| spec::envelope_hash(&batch.sender, &batch.channel, e))
        .collect();
    assert_eq!(hashes.len(), b.envelope_hashes.len());
    for (got, want) in hashes.iter().zip(&b.envelope_hashes) {
        assert_eq!(got, &**want);
    }
    for (envelope, want) in batch.envelopes.iter().zip(&b.envelope_hashes) {
        let digest = entente_crypto::envelope_digest(&batch.sender, &batch.channel, envelope);
        assert_eq!(&digest[..], &**want);
    }
    check_hashes_digest(b);
    assert_eq!(batch_signing_input(&batch), &*b.signing_input);
    assert_eq!(spec::batch_input(&batch), &*b.signing_input);

    // Ed25519 is deterministic: the crate and a bare key from the seed both give the stored
    // signature, and it verifies with the public key of the bundle.
    let keys = MessageKeys::from_secret_bytes(&v.sender.message_keys_secret).unwrap();
    let mut resigned = batch.clone();
    resigned.signature.clear();
    danger::danger_sign_batch(&keys, &mut resigned);
    assert_eq!(resigned.signature, &*b.signature);
    assert_eq!(batch.signature, &*b.signature);
    let seed = Ed25519KeyPair::from_seed_unchecked(&v.sender.message_keys_secret[..32]).unwrap();
    assert_eq!(seed.sign(&b.signing_input).as_ref(), &*b.signature);
    UnparsedPublicKey::new(&ED25519, &*v.sender.ed25519_public)
        .verify(&b.signing_input, &b.signature)
        .unwrap();
}

#[test]
fn batch_vector_sender_key() {
    let v: BatchVector = read(BATCH);
    check_keys(&v.recipient);
    let s = &v.sender_key;
    let sender_key: wire::SenderKey = wire::decode(&s.encoded, &limits()).unwrap();
    assert_eq!(wire::encode(&sender_key), &*s.encoded);
    assert_eq!(sender_key_signing_input(&sender_key), &*s.signing_input);
    assert_eq!(spec::sender_key_input(&sender_key), &*s.signing_input);
    assert_eq!(sender_key.signature, &*s.signature);
    UnparsedPublicKey::new(&ED25519, &*v.sender.ed25519_public)
        .verify(&s.signing_input, &s.signature)
        .unwrap();

    let [wrapped] = &sender_key.recipients[..] else {
        panic!("one recipient expected");
    };
    assert_eq!(wrapped.recipient, v.recipient.principal);
    assert_eq!(wrapped.recipient_key_epoch, v.recipient.epoch);
    assert_eq!(wrapped.enc, &*s.enc);
    assert_eq!(wrapped.ciphertext, &*s.wrapped_secret);
    let info = spec::hpke_info(&v.sender.principal, &v.channel, v.epoch);
    let aad = spec::wrap_aad(&v.recipient.principal, v.recipient.epoch);
    assert_eq!(info, &*s.hpke_info);
    assert_eq!(aad, &*s.hpke_aad);

    // enc is the public half of DeriveKeyPair(ikm_e), and re-sealing reproduces every byte.
    let (_, pk_e) = X25519HkdfSha256::derive_keypair(&s.ikm_e);
    assert_eq!(pk_e.to_bytes().as_slice(), &*s.enc);
    let resealed = SenderKeySpec {
        sender_secret: &v.sender.message_keys_secret,
        sender: &v.sender.principal,
        channel: &v.channel,
        epoch: v.epoch,
        issued_at_ms: s.issued_at_ms,
        expires_at_ms: s.expires_at_ms,
        key_epoch: v.sender.epoch,
        epoch_secret: &v.epoch_secret,
        recipient: &v.recipient.principal,
        recipient_key_epoch: v.recipient.epoch,
        recipient_x25519: &v.recipient.x25519_public,
        ikm_e: &s.ikm_e,
    }
    .seal();
    assert_eq!(wire::encode(&resealed), &*s.encoded);

    // The recipient's X25519 secret unwraps the epoch secret.
    let sk_r =
        <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&v.recipient.message_keys_secret[32..])
            .unwrap();
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&s.enc).unwrap();
    let secret = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk_r,
        &enc,
        &info,
        &s.wrapped_secret,
        &aad,
    )
    .unwrap();
    assert_eq!(secret, &*v.epoch_secret);
}

#[test]
fn batch_vector_opens_through_the_opener() {
    let v: BatchVector = read(BATCH);
    let authority = authority(&v.ca_public_key, &v.ca_signer);
    let at = v.open_at_ms;
    let alice = verify_party(&v.sender, &authority, at);
    let bob = verify_party(&v.recipient, &authority, at);
    assert_eq!(bob.body().x25519_public, &*v.recipient.x25519_public);

    let keys = MessageKeys::from_secret_bytes(&v.recipient.message_keys_secret).unwrap();
    let me = Principal::parse(&v.recipient.principal).unwrap();
    let mut opener = Opener::new(me, bob.epoch(), keys.into(), OpenerOptions::default());
    let sender_key = SenderKeyIn::decode(&v.sender_key.encoded, &limits()).unwrap();
    assert_eq!(sender_key.epoch(), v.epoch);
    opener.accept_sender_key(&sender_key, &alice, at).unwrap();

    let batch = SignedBatchIn::decode(&v.batch.encoded, &limits()).unwrap();
    let opened = opener.open(batch.clone(), &alice, at).unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    let payloads: Vec<_> = opened.delivered.iter().map(|e| e.payload()).collect();
    let want: Vec<_> = v.batch.payloads.iter().map(|p| &**p).collect();
    assert_eq!(payloads, want);
    for e in &opened.delivered {
        assert_eq!(e.sender().as_str(), v.sender.principal);
        assert_eq!(e.channel().as_str(), v.channel);
    }

    // Opening it again is a replay of every envelope.
    let again = opener.open(batch, &alice, at).unwrap();
    assert!(again.delivered.is_empty());
    assert!(
        again
            .rejected
            .iter()
            .all(|(_, e)| matches!(e, OpenError::Replay(ReplayError::Duplicate(_))))
    );

    // One changed signature byte refuses the whole batch.
    let mut forged: wire::SignedBatch = wire::decode(&v.batch.encoded, &limits()).unwrap();
    forged.signature[0] ^= 1;
    let mut fresh = Opener::new(
        Principal::parse(&v.recipient.principal).unwrap(),
        bob.epoch(),
        MessageKeys::from_secret_bytes(&v.recipient.message_keys_secret)
            .unwrap()
            .into(),
        OpenerOptions::default(),
    );
    fresh.accept_sender_key(&sender_key, &alice, at).unwrap();
    let err = fresh
        .open(SignedBatchIn::from_wire(forged).unwrap(), &alice, at)
        .unwrap_err();
    assert_eq!(err, OpenError::BadBatchSignature);
}

// === reply-batch.json ===

#[test]
fn reply_batch_vector_keys_ciphertexts_and_signature() {
    let v: ReplyBatchVector = read(REPLIES);
    check_keys(&v.sender);
    let secret: [u8; 32] = v.epoch_secret.to_vec().try_into().unwrap();
    let sender = &v.sender.principal;
    let (key, iv) = danger::danger_payload_key_and_iv(&secret, sender, &v.root, v.epoch).unwrap();
    assert_eq!((&key[..], &iv[..]), (&*v.payload_key, &*v.payload_iv));
    assert_eq!(
        spec::payload_key_and_iv(&secret, sender, &v.root, v.epoch),
        (key, iv)
    );
    // One AES-256-GCM key, the root's, opens every reply, each under its own channel's aad;
    // sequence numbers, and so nonces, run across the root's epoch: never the same twice.
    let mut seqs: Vec<u64> = v.replies.iter().map(|r| r.envelope.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), v.replies.len());
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    for r in &v.replies {
        let what = &r.envelope.description;
        let c = &r.envelope;
        assert_eq!(&*c.nonce, spec::nonce(&iv, c.seq), "{what}");
        let mut opened = c.ciphertext.to_vec();
        let plain = aead
            .open_in_place(
                Nonce::try_assume_unique_for_key(&c.nonce).unwrap(),
                Aad::from(&*c.aad),
                &mut opened,
            )
            .unwrap();
        assert_eq!(plain, &*c.payload, "{what}");
        let mut e = r.sealed(v.epoch);
        // The envelope's own channel is its header's, whatever channel the batch is on.
        assert_eq!(
            envelope_aad(sender, &v.root, &e),
            &*r.envelope.aad,
            "{what}"
        );
        assert_eq!(
            spec::envelope_aad(sender, &r.channel, &e),
            &*r.envelope.aad,
            "{what}"
        );
        e.ciphertext.clear();
        danger::danger_seal_with_secret(
            &secret,
            sender,
            &v.root,
            &r.channel,
            &mut e,
            &r.envelope.payload,
        )
        .unwrap();
        assert_eq!(e.ciphertext, &*r.envelope.ciphertext, "{what}");
        assert_eq!(wire::encode(&e), &*r.envelope.encoded, "{what}");
    }

    let b = &v.batch;
    let batch: wire::SignedBatch = wire::decode(&b.encoded, &limits()).unwrap();
    assert_eq!(wire::encode(&batch), &*b.encoded);
    assert_eq!(batch.channel, v.root);
    let named: Vec<&str> = batch.envelopes.iter().map(|e| &*e.channel).collect();
    let want: Vec<&str> = v.replies.iter().map(|r| r.channel.as_str()).collect();
    assert_eq!(named, want);
    for (e, hash) in batch.envelopes.iter().zip(&b.envelope_hashes) {
        assert_eq!(spec::envelope_hash(sender, &e.channel, e), &**hash);
        assert_eq!(entente_crypto::envelope_digest(sender, &v.root, e), &**hash);
    }
    check_hashes_digest(b);
    assert_eq!(batch_signing_input(&batch), &*b.signing_input);
    assert_eq!(spec::batch_input(&batch), &*b.signing_input);
    let keys = MessageKeys::from_secret_bytes(&v.sender.message_keys_secret).unwrap();
    let mut resigned = batch.clone();
    danger::danger_sign_batch(&keys, &mut resigned);
    assert_eq!(resigned.signature, &*b.signature);
    UnparsedPublicKey::new(&ED25519, &*v.sender.ed25519_public)
        .verify(&b.signing_input, &b.signature)
        .unwrap();
    let sender_key: wire::SenderKey = wire::decode(&v.sender_key.encoded, &limits()).unwrap();
    assert_eq!(sender_key.channel, v.root);
    assert_eq!(
        spec::sender_key_input(&sender_key),
        &*v.sender_key.signing_input
    );
}

#[test]
fn reply_batch_vector_opens_through_the_opener() {
    let v: ReplyBatchVector = read(REPLIES);
    let authority = authority(&v.ca_public_key, &v.ca_signer);
    let at = v.open_at_ms;
    let alice = verify_party(&v.sender, &authority, at);
    let bob = verify_party(&v.recipient, &authority, at);
    let opener = || {
        let keys = MessageKeys::from_secret_bytes(&v.recipient.message_keys_secret).unwrap();
        let me = Principal::parse(&v.recipient.principal).unwrap();
        let mut opener = Opener::new(me, bob.epoch(), keys.into(), OpenerOptions::default());
        let sender_key = SenderKeyIn::decode(&v.sender_key.encoded, &limits()).unwrap();
        opener.accept_sender_key(&sender_key, &alice, at).unwrap();
        opener
    };
    let batch = SignedBatchIn::decode(&v.batch.encoded, &limits()).unwrap();
    assert!(batch.is_replies());
    let opened = opener().open(batch, &alice, at).unwrap();
    assert!(opened.rejected.is_empty(), "{:?}", opened.rejected);
    let got: Vec<(&str, &[u8], &str)> = opened
        .delivered
        .iter()
        .map(|e| {
            let reply_to = e.reply_to().map_or("", |r| r.as_str());
            (e.channel().as_str(), e.payload(), reply_to)
        })
        .collect();
    let want: Vec<(&str, &[u8], &str)> = v
        .replies
        .iter()
        .map(|r| {
            let e = &r.envelope;
            (r.channel.as_str(), &*e.payload, e.reply_to.as_str())
        })
        .collect();
    assert_eq!(got, want);

    // Two envelopes' channels swapped: the signature no longer holds.
    let mut swapped: wire::SignedBatch = wire::decode(&v.batch.encoded, &limits()).unwrap();
    let first = swapped.envelopes[0].channel.clone();
    swapped.envelopes[0].channel = swapped.envelopes[1].channel.clone();
    swapped.envelopes[1].channel = first;
    let err = opener()
        .open(SignedBatchIn::from_wire(swapped).unwrap(), &alice, at)
        .unwrap_err();
    assert_eq!(err, OpenError::BadBatchSignature);
}

/// The files hold exactly what [`build`] makes today, given their CA signatures: change the
/// protocol or the fixed inputs and this fails until the vectors are regenerated.
#[test]
fn stored_vectors_match_their_generator() {
    let signatures = stored_signatures().expect("the stored key bundles are unreadable");
    let built = build(&mut |input| {
        signatures
            .get(input)
            .cloned()
            .expect("a key bundle changed: regenerate the vectors")
    });
    for (path, value) in [
        (KEY_BUNDLE, serde_json::to_value(&built.key_bundle).unwrap()),
        (ENVELOPE, serde_json::to_value(&built.envelope).unwrap()),
        (BATCH, serde_json::to_value(&built.batch).unwrap()),
        (REPLIES, serde_json::to_value(&built.replies).unwrap()),
    ] {
        let stored: serde_json::Value = read(path);
        assert!(
            stored == value,
            "{path} is stale: run `cargo test -p entente-crypto --test vectors -- --ignored`"
        );
    }
}

// === RFC 9180 ===

#[test]
fn hpke_rfc9180_key_derivation() {
    let v: Rfc9180 = read(HPKE_RFC9180);
    assert_eq!(v.mode, 0, "base mode");
    assert_eq!(v.kem_id, X25519HkdfSha256::KEM_ID);
    assert_eq!(v.kdf_id, HkdfSha256::KDF_ID);
    assert_eq!(v.aead_id, AesGcm256::AEAD_ID);
    let (sk_r, pk_r) = X25519HkdfSha256::derive_keypair(&v.ikm_r);
    assert_eq!(sk_r.to_bytes().as_slice(), &*v.sk_rm);
    assert_eq!(pk_r.to_bytes().as_slice(), &*v.pk_rm);
    assert_eq!(X25519HkdfSha256::sk_to_pk(&sk_r), pk_r);
    let (sk_e, pk_e) = X25519HkdfSha256::derive_keypair(&v.ikm_e);
    assert_eq!(sk_e.to_bytes().as_slice(), &*v.sk_em);
    assert_eq!(pk_e.to_bytes().as_slice(), &*v.pk_em);
    assert_eq!(v.enc, v.pk_em);
}

#[test]
fn hpke_rfc9180_open_and_export() {
    let v: Rfc9180 = read(HPKE_RFC9180);
    let sk_r = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&v.sk_rm).unwrap();
    let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&v.enc).unwrap();
    let mut ctx = hpke::setup_receiver::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk_r,
        &enc,
        &v.info,
    )
    .unwrap();
    assert!(!v.encryptions.is_empty());
    for (seq, e) in v.encryptions.iter().enumerate() {
        // The excerpt holds consecutive sequence numbers from 0, so one context opens them all.
        assert_eq!(spec::nonce(&v.base_nonce, seq as u64), &*e.nonce);
        assert_eq!(ctx.open(&e.ct, &e.aad).unwrap(), &*e.pt, "seq {seq}");
    }
    // The first one also opens in one shot.
    let first = &v.encryptions[0];
    let pt = hpke::single_shot_open::<AesGcm256, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk_r,
        &enc,
        &v.info,
        &first.ct,
        &first.aad,
    )
    .unwrap();
    assert_eq!(pt, &*first.pt);

    assert!(!v.exports.is_empty());
    for x in &v.exports {
        let mut out = vec![0u8; x.len];
        ctx.export(&x.exporter_context, &mut out).unwrap();
        assert_eq!(out, &*x.exported_value);
    }
}

/// Sealing with `FixedRng(ikmE)` reproduces RFC 9180's `enc` and ciphertexts: the technique
/// that makes our sender-key vectors deterministic.
#[test]
fn hpke_rfc9180_seal_with_a_fixed_ephemeral_key() {
    let v: Rfc9180 = read(HPKE_RFC9180);
    let pk_r = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(&v.pk_rm).unwrap();
    let (enc, mut ctx) = hpke::setup_sender::<AesGcm256, HkdfSha256, X25519HkdfSha256, _>(
        &OpModeS::Base,
        &pk_r,
        &v.info,
        &mut FixedRng::new(&v.ikm_e),
    )
    .unwrap();
    assert_eq!(enc.to_bytes().as_slice(), &*v.enc);
    for (seq, e) in v.encryptions.iter().enumerate() {
        assert_eq!(ctx.seal(&e.pt, &e.aad).unwrap(), &*e.ct, "seq {seq}");
    }
}

// === helpers ===

fn read<T: DeserializeOwned>(path: &str) -> T {
    read_vector(path, "vectors")
}

fn limits() -> wire::Limits {
    wire::Limits::default()
}

/// The valid CA signatures of the stored key bundles, by signing input; `None` if a file is
/// missing or unreadable.
fn stored_signatures() -> Option<HashMap<Vec<u8>, Vec<u8>>> {
    let parse = |path| std::fs::read_to_string(path).ok();
    let key_bundle: KeyBundleVector = serde_json::from_str(&parse(KEY_BUNDLE)?).ok()?;
    let batch: BatchVector = serde_json::from_str(&parse(BATCH)?).ok()?;
    let ca = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, hex::decode(CA_PUBLIC).ok()?);
    let mut signatures = HashMap::new();
    for bundle in [
        &key_bundle.subject.bundle,
        &batch.sender.bundle,
        &batch.recipient.bundle,
    ] {
        let bundle: wire::KeyBundle = wire::decode(bundle, &limits()).ok()?;
        let input = KeyBundleIn::from_wire(bundle.clone())
            .ok()?
            .body()
            .signing_input(&bundle.signer);
        if ca.verify(&input, &bundle.signature).is_ok() {
            signatures.insert(input, bundle.signature);
        }
    }
    Some(signatures)
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

fn authority(public_key: &[u8], signer: &[u8]) -> EcdsaAuthority {
    let mut authority = EcdsaAuthority::new();
    authority.insert(signer.try_into().unwrap(), public_key.to_vec(), 0, u64::MAX);
    authority
}

/// The CA key's PKCS#8, public key, SPKI and signer ID agree.
fn check_ca(ca: &CaKey) {
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &ca.pkcs8).unwrap();
    assert_eq!(key.public_key().as_ref(), &*ca.public_key);
    assert_eq!(key.public_key().as_der().unwrap().as_ref(), &*ca.spki_der);
    assert_eq!(signer_id(&ca.spki_der), &*ca.signer);
    // A fresh signature by the stored key verifies under the stored public key.
    let sig = key.sign(&SystemRandom::new(), b"check").unwrap();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &*ca.public_key)
        .verify(b"check", sig.as_ref())
        .unwrap();
}

/// The public keys are those of the secret bytes.
fn check_keys(p: &Party) {
    let keys = MessageKeys::from_secret_bytes(&p.message_keys_secret).unwrap();
    assert_eq!(keys.ed25519_public(), &*p.ed25519_public);
    assert_eq!(keys.x25519_public(), &*p.x25519_public);
    assert_eq!(&*keys.to_secret_bytes().unwrap(), &*p.message_keys_secret);
    let seed = Ed25519KeyPair::from_seed_unchecked(&p.message_keys_secret[..32]).unwrap();
    assert_eq!(seed.public_key().as_ref(), &*p.ed25519_public);
    let sk = <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&p.message_keys_secret[32..]);
    let pk = X25519HkdfSha256::sk_to_pk(&sk.unwrap());
    assert_eq!(pk.to_bytes().as_slice(), &*p.x25519_public);
}

fn body_of(p: &Party) -> KeyBundleBody {
    KeyBundleBody {
        principal: Principal::parse(&p.principal).unwrap(),
        ed25519_public: p.ed25519_public.to_vec().try_into().unwrap(),
        x25519_public: p.x25519_public.to_vec().try_into().unwrap(),
        epoch: p.epoch,
        not_before_ms: p.not_before_ms,
        not_after_ms: p.not_after_ms,
    }
}

fn verify_party(p: &Party, authority: &EcdsaAuthority, at: u64) -> VerifiedKeyBundle {
    let bundle = KeyBundleIn::decode(&p.bundle, &limits()).unwrap();
    assert_eq!(bundle.body(), &body_of(p));
    bundle.verify(authority, at).unwrap()
}

/// The protocol's byte strings written out again from PROTOCOL.md, sharing no code with the
/// crate's `canon.rs`: a label, one zero byte, then integers big-endian and byte strings as a
/// u32 big-endian length followed by the bytes (§2).
/// A batch case's digest is SHA-256 over its listed envelope hashes, and its signing input
/// ends with it (PROTOCOL.md §4.4).
fn check_hashes_digest(b: &BatchCase) {
    let listed: Vec<u8> = b.envelope_hashes.iter().flat_map(|h| h.to_vec()).collect();
    let want = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &listed);
    assert_eq!(want.as_ref(), &*b.envelope_hashes_digest);
    assert!(b.signing_input.ends_with(&b.envelope_hashes_digest));
}

mod spec {
    use aws_lc_rs::{
        digest::{SHA256, digest},
        hmac,
    };
    use entente_wire as wire;

    struct Canon(Vec<u8>);

    impl Canon {
        fn new(label: &str) -> Self {
            let mut buf = label.as_bytes().to_vec();
            buf.push(0);
            Self(buf)
        }

        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }

        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }

        fn bytes(self, v: &[u8]) -> Self {
            let mut c = self.u32(u32::try_from(v.len()).unwrap());
            c.0.extend_from_slice(v);
            c
        }

        fn str(self, v: &str) -> Self {
            self.bytes(v.as_bytes())
        }

        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
    }

    /// §3: what the CA signs.
    pub(super) fn key_bundle_input(p: &super::Party, signer: &[u8]) -> Vec<u8> {
        Canon::new("entente/v1/key-bundle")
            .u32(1)
            .str(&p.principal)
            .bytes(&p.ed25519_public)
            .bytes(&p.x25519_public)
            .u64(p.epoch)
            .u64(p.not_before_ms)
            .u64(p.not_after_ms)
            .bytes(signer)
            .0
    }

    /// §4.1: HKDF-SHA256 (RFC 5869) with no salt, from HMAC: one block covers 32 and 12 bytes.
    pub(super) fn payload_key_and_iv(
        secret: &[u8],
        sender: &str,
        channel: &str,
        epoch: u64,
    ) -> ([u8; 32], [u8; 12]) {
        let prk = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[0; 32]), secret);
        let prk = hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref());
        let expand = |label: &str| {
            let mut info = Canon::new(label).str(sender).str(channel).u64(epoch).0;
            info.push(1);
            hmac::sign(&prk, &info)
        };
        let key = expand("entente/v1/payload-key");
        let iv = expand("entente/v1/payload-iv");
        (
            key.as_ref().try_into().unwrap(),
            iv.as_ref()[..12].try_into().unwrap(),
        )
    }

    /// §4.1: the IV with the big-endian sequence number xored into its last 8 bytes.
    pub(super) fn nonce(iv: &[u8], seq: u64) -> [u8; 12] {
        let mut nonce: [u8; 12] = iv.try_into().unwrap();
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// §4.2: the envelope header, suite 1.
    pub(super) fn envelope_aad(sender: &str, channel: &str, e: &wire::Envelope) -> Vec<u8> {
        Canon::new("entente/v1/envelope")
            .u8(1)
            .str(sender)
            .str(channel)
            .u64(e.epoch)
            .u64(e.seq)
            .bytes(e.message_id.as_slice())
            .u64(e.issued_at_ms)
            .u64(e.expires_at_ms)
            .str(&e.reply_to)
            .0
    }

    /// §4.4: SHA-256 of the header followed by the length-prefixed ciphertext.
    pub(super) fn envelope_hash(sender: &str, channel: &str, e: &wire::Envelope) -> [u8; 32] {
        let mut input = envelope_aad(sender, channel, e);
        input.extend_from_slice(&u32::try_from(e.ciphertext.len()).unwrap().to_be_bytes());
        input.extend_from_slice(&e.ciphertext);
        digest(&SHA256, &input).as_ref().try_into().unwrap()
    }

    /// §4.4: SHA-256 over the batch's envelope hashes, in order.
    pub(super) fn hashes_digest(b: &wire::SignedBatch) -> [u8; 32] {
        let hashes: Vec<u8> = b
            .envelopes
            .iter()
            // §4.2, §5.5: an envelope of a batch of replies is on the channel it names.
            .flat_map(|e| {
                let channel = if e.channel.is_empty() {
                    b.channel.as_str()
                } else {
                    &e.channel
                };
                envelope_hash(&b.sender, channel, e)
            })
            .collect();
        digest(&SHA256, &hashes).as_ref().try_into().unwrap()
    }

    /// §4.4: what the sender signs for a batch.
    pub(super) fn batch_input(b: &wire::SignedBatch) -> Vec<u8> {
        Canon::new("entente/v1/batch-digest")
            .str(&b.sender)
            .str(&b.channel)
            .u64(b.key_epoch)
            .u32(u32::try_from(b.envelopes.len()).unwrap())
            .raw(&hashes_digest(b))
            .0
    }

    /// §5: the HPKE `info` of a sender-key epoch.
    pub(super) fn hpke_info(sender: &str, channel: &str, epoch: u64) -> Vec<u8> {
        Canon::new("entente/v1/sender-key")
            .str(sender)
            .str(channel)
            .u64(epoch)
            .0
    }

    /// §5: the HPKE `aad` of one wrapped secret.
    pub(super) fn wrap_aad(recipient: &str, recipient_key_epoch: u64) -> Vec<u8> {
        Canon::new("entente/v1/wrap")
            .str(recipient)
            .u64(recipient_key_epoch)
            .0
    }

    /// §5.3: what the sender signs for a sender key.
    pub(super) fn sender_key_input(sk: &wire::SenderKey) -> Vec<u8> {
        let mut c = Canon::new("entente/v1/sender-key")
            .u32(sk.version)
            .str(&sk.sender)
            .str(&sk.channel)
            .u64(sk.epoch)
            .u64(sk.issued_at_ms)
            .u64(sk.expires_at_ms)
            .u64(sk.key_epoch)
            .u32(u32::try_from(sk.recipients.len()).unwrap());
        for r in &sk.recipients {
            c = c
                .str(&r.recipient)
                .u64(r.recipient_key_epoch)
                .bytes(&r.enc)
                .bytes(&r.ciphertext);
        }
        c.0
    }
}
