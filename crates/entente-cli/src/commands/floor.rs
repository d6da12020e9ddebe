//! The crypto floor: what the cryptography Entente's design requires costs per message on
//! this machine, measured with the primitives themselves, and the throughput ceiling it sets.
//!
//! Whatever the code around it, every message of a 1 → 1 pub/sub crosses these, each on the
//! machine's shared cores:
//!
//! - the publisher seals the payload (AES-256-GCM) and hashes the envelope (SHA-256 over the
//!   canonical header and the ciphertext) for the batch signature, and signs each batch
//!   (Ed25519 over a digest of the envelope hashes, shared by the batch's messages);
//! - the hub hashes every envelope for the audit record of the batch and folds the hashes into
//!   the batch's Merkle root;
//! - the subscriber hashes the envelope again, and the hashes' digest, to verify the batch
//!   signature (Ed25519, shared), and opens the payload (AES-256-GCM);
//! - both hops are TLS 1.3: every byte on the wire is sealed once and opened once per hop
//!   (AES-256-GCM in 16 KiB records, the suite rustls negotiates first with aws-lc-rs).
//!
//! The envelope hash is timed through [`SignedBatchIn::envelope_hashes`], the function the
//! hub and the subscriber call, on a batch of the real wire format; the rest with aws-lc-rs
//! directly. Nothing here is Entente's own overhead (framing, queues, tasks, allocation): the
//! ceiling is what no implementation of the same design can pass on the same cores.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use entente_audit::{DeliveredBatch, Hash};
use entente_crypto::SignedBatchIn;
use entente_wire as wire;

/// How long each primitive is timed.
const MEASURE: Duration = Duration::from_millis(300);
/// A TLS record's plaintext, at most.
const RECORD: usize = 16 * 1024;
/// Bytes of associated data of an envelope's AEAD (its canonical header).
const HEADER_AAD: usize = 120;
/// Subscribers per message in the suite's fan-out workloads, (b) and (c).
pub(crate) const FANOUT: usize = 10;
/// Requests in flight in the suite's request/reply workload (d64): no batch of requests, nor
/// of replies, holds more.
pub(crate) const REQUESTS_IN_FLIGHT: usize = 64;

/// Requests, or replies, under one signature with [`REQUESTS_IN_FLIGHT`] in flight: as many as
/// the benchmarks' SDK clients put in one batch — half of those in flight, or their
/// `round_trip_batch_min` if more (32 by default, `--round-trip-batch-min`) — no more than are
/// in flight, nor than `batch`.
fn round_trip_batch(batch: usize) -> usize {
    super::bench::client_options()
        .round_trip_batch_min_value()
        .max(REQUESTS_IN_FLIGHT.div_ceil(2))
        .min(REQUESTS_IN_FLIGHT)
        .min(batch)
}

/// What the design's cryptography costs per message, in nanoseconds, by party.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Floor {
    pub(crate) payload_bytes: usize,
    pub(crate) batch: usize,
    /// Bytes each message takes on the wire in a batch (its share of the encoded batch).
    pub(crate) wire_bytes_per_message: f64,
    pub(crate) publisher_ns: f64,
    pub(crate) hub_ns: f64,
    pub(crate) subscriber_ns: f64,
    /// Both TLS hops, sealing and opening, all parties.
    pub(crate) tls_ns: f64,
    pub(crate) total_ns: f64,
    /// Cores the measurement assumes all parties share.
    pub(crate) cores: usize,
    /// `cores` seconds divided by `total_ns`: messages per second with nothing but this
    /// cryptography running.
    pub(crate) ceiling_msgs_per_sec: f64,
    /// Subscribers of each message in the fan-out workloads (1 → N, and N → N).
    pub(crate) fanout: usize,
    /// Deliveries per second to `fanout` subscribers with nothing but this cryptography
    /// running: each delivery costs a subscriber's share and its TLS hop, and a `fanout`-th of
    /// the publisher's, the hub's and the first hop's.
    pub(crate) fanout_ceiling_deliveries_per_sec: f64,
    /// Request/reply, one request in flight: the cryptography on the critical path of one
    /// round trip (each of request and reply sealed, hashed three times, signed alone over its
    /// digest, verified, opened; four TLS hops). No round trip can be shorter.
    pub(crate) request_reply_rtt_floor_ns: f64,
    /// Request/reply with [`REQUESTS_IN_FLIGHT`] in flight: requests share batch signatures
    /// (as many per batch as the SDK puts in one, [`round_trip_batch`]), and so do the replies
    /// to one requester (PROTOCOL.md §5.5). Round trips per second with nothing but this cryptography
    /// running on `cores`.
    pub(crate) request_reply_ceiling_per_sec: f64,
    /// Requests, or replies, under one signature in that ceiling.
    pub(crate) request_reply_shared_by: usize,
    /// The primitives, nanoseconds per operation.
    pub(crate) primitives: Primitives,
}

/// Nanoseconds per operation of each primitive, at the sizes the floor uses.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Primitives {
    pub(crate) aes_gcm_seal_payload: f64,
    pub(crate) aes_gcm_open_payload: f64,
    pub(crate) envelope_hash: f64,
    /// One envelope's share of the SHA-256 over a batch's envelope hashes (PROTOCOL.md §4.4).
    pub(crate) batch_digest_per_envelope: f64,
    pub(crate) merkle_root_per_envelope: f64,
    pub(crate) ed25519_sign: f64,
    pub(crate) ed25519_verify: f64,
    pub(crate) tls_record_seal_per_byte: f64,
    pub(crate) tls_record_open_per_byte: f64,
}

/// Measures the floor for `payload`-byte messages in batches of `batch`.
pub(crate) fn measure(payload: usize, batch: usize) -> Result<Floor> {
    let batch = batch.max(1);
    let rng = SystemRandom::new();
    let key = aead_key(&rng)?;

    // AES-256-GCM over one payload, with a header as associated data.
    let header = vec![0x5Au8; HEADER_AAD];
    let plain = vec![0xA5u8; payload];
    let mut counter = 0u64;
    let aes_gcm_seal_payload = per_op(|| {
        let mut buffer = plain.clone();
        counter += 1;
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(&header), &mut buffer)
            .map_err(|_| anyhow!("AES-256-GCM seal failed"))?;
        black_box(buffer);
        black_box(&tag);
        Ok(())
    })?;
    let mut sealed = plain.clone();
    let tag = key
        .seal_in_place_separate_tag(nonce(0), Aad::from(&header), &mut sealed)
        .map_err(|_| anyhow!("AES-256-GCM seal failed"))?;
    sealed.extend_from_slice(tag.as_ref());
    let aes_gcm_open_payload = per_op(|| {
        let mut buffer = sealed.clone();
        let opened = key
            .open_in_place(nonce(0), Aad::from(&header), &mut buffer)
            .map_err(|_| anyhow!("AES-256-GCM open failed"))?;
        black_box(opened.len());
        Ok(())
    })?;

    // The envelope hash and the audit root, on a batch in the real wire format.
    let wire_batch = batch_of(&rng, payload, batch)?;
    let wire_bytes = wire::encode(&wire_batch).len();
    let batch_in = SignedBatchIn::from_wire(wire_batch).context("the sample batch")?;
    let envelope_hash = per_op(|| {
        black_box(batch_in.envelope_hashes());
        Ok(())
    })? / batch as f64;
    let hashes: Vec<Hash> = batch_in.envelope_hashes().into_iter().map(Hash).collect();
    let hash_list: Vec<u8> = hashes.iter().flat_map(|h| h.0).collect();
    let batch_digest_per_envelope = per_op(|| {
        black_box(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &hash_list,
        ));
        Ok(())
    })? / batch as f64;
    let merkle_root_per_envelope = per_op(|| {
        black_box(DeliveredBatch::envelopes_root(&hashes));
        Ok(())
    })? / batch as f64;

    // Ed25519 over the batch signing input: label, sender, channel, epoch, count and the
    // hashes' digest, ~125 bytes whatever the batch's length.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow!("Ed25519 key"))?;
    let signer = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow!("Ed25519"))?;
    let input = [0x42u8; 125];
    let ed25519_sign = per_op(|| {
        black_box(signer.sign(&input));
        Ok(())
    })?;
    let signature = signer.sign(&input);
    let public = UnparsedPublicKey::new(&ED25519, signer.public_key().as_ref().to_vec());
    let ed25519_verify = per_op(|| {
        public
            .verify(&input, signature.as_ref())
            .map_err(|_| anyhow!("Ed25519 verify failed"))
    })?;

    // TLS 1.3 records: AES-256-GCM over 16 KiB with the 5-byte record header as AAD.
    let record = vec![0x17u8; RECORD];
    let record_header = [0x17u8, 0x03, 0x03, 0x40, 0x11];
    let tls_record_seal = per_op(|| {
        let mut buffer = record.clone();
        counter += 1;
        let tag = key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(record_header), &mut buffer)
            .map_err(|_| anyhow!("AES-256-GCM seal failed"))?;
        black_box(buffer);
        black_box(&tag);
        Ok(())
    })?;
    let mut sealed_record = record.clone();
    let tag = key
        .seal_in_place_separate_tag(nonce(1), Aad::from(record_header), &mut sealed_record)
        .map_err(|_| anyhow!("AES-256-GCM seal failed"))?;
    sealed_record.extend_from_slice(tag.as_ref());
    let tls_record_open = per_op(|| {
        let mut buffer = sealed_record.clone();
        let opened = key
            .open_in_place(nonce(1), Aad::from(record_header), &mut buffer)
            .map_err(|_| anyhow!("AES-256-GCM open failed"))?;
        black_box(opened.len());
        Ok(())
    })?;
    let primitives = Primitives {
        aes_gcm_seal_payload,
        aes_gcm_open_payload,
        envelope_hash,
        batch_digest_per_envelope,
        merkle_root_per_envelope,
        ed25519_sign,
        ed25519_verify,
        tls_record_seal_per_byte: tls_record_seal / RECORD as f64,
        tls_record_open_per_byte: tls_record_open / RECORD as f64,
    };
    Ok(Floor::from_primitives(
        payload,
        batch,
        wire_bytes as f64 / batch as f64,
        primitives,
        std::thread::available_parallelism().map_or(1, usize::from),
    ))
}

impl Floor {
    fn from_primitives(
        payload_bytes: usize,
        batch: usize,
        wire_bytes_per_message: f64,
        p: Primitives,
        cores: usize,
    ) -> Self {
        let per_batch = batch.max(1) as f64;
        let signature_share = p.batch_digest_per_envelope;
        let publisher_ns =
            p.aes_gcm_seal_payload + p.envelope_hash + signature_share + p.ed25519_sign / per_batch;
        let hub_ns = p.envelope_hash + p.merkle_root_per_envelope;
        let subscriber_ns = p.envelope_hash
            + signature_share
            + p.ed25519_verify / per_batch
            + p.aes_gcm_open_payload;
        // Two hops (publisher → hub, hub → subscriber), each sealed and opened once.
        let tls_ns = 2.0
            * wire_bytes_per_message
            * (p.tls_record_seal_per_byte + p.tls_record_open_per_byte);
        let total_ns = publisher_ns + hub_ns + subscriber_ns + tls_ns;
        let per_sec = |ns: f64| {
            if ns > 0.0 {
                cores as f64 * 1e9 / ns
            } else {
                0.0
            }
        };
        let ceiling_msgs_per_sec = per_sec(total_ns);
        let fanout = FANOUT;
        let delivery_ns =
            subscriber_ns + tls_ns / 2.0 + (publisher_ns + hub_ns + tls_ns / 2.0) / fanout as f64;
        let fanout_ceiling_deliveries_per_sec = per_sec(delivery_ns);
        // One message's cryptography with its signature shared by `shared` messages.
        let message = |shared: f64| {
            p.aes_gcm_seal_payload
                + 3.0 * p.envelope_hash
                + 2.0 * p.batch_digest_per_envelope
                + p.merkle_root_per_envelope
                + (p.ed25519_sign + p.ed25519_verify) / shared
                + p.aes_gcm_open_payload
                + tls_ns
        };
        let request_reply_rtt_floor_ns = 2.0 * message(1.0);
        let request_reply_shared_by = round_trip_batch(batch);
        let request_reply_ceiling_per_sec = per_sec(2.0 * message(request_reply_shared_by as f64));
        Self {
            payload_bytes,
            batch,
            wire_bytes_per_message,
            publisher_ns,
            hub_ns,
            subscriber_ns,
            tls_ns,
            total_ns,
            cores,
            ceiling_msgs_per_sec,
            fanout,
            fanout_ceiling_deliveries_per_sec,
            request_reply_rtt_floor_ns,
            request_reply_ceiling_per_sec,
            request_reply_shared_by,
            primitives: p,
        }
    }
}

/// Nanoseconds per call of `op`, over [`MEASURE`] after a short warm-up.
fn per_op(mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..16 {
        op()?;
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < MEASURE {
        for _ in 0..16 {
            op()?;
        }
        calls += 16;
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

fn aead_key(rng: &SystemRandom) -> Result<LessSafeKey> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes).map_err(|_| anyhow!("no randomness"))?;
    let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| anyhow!("AES-256-GCM key"))?;
    Ok(LessSafeKey::new(key))
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    if let Some(tail) = bytes.get_mut(4..) {
        tail.copy_from_slice(&counter.to_be_bytes());
    }
    Nonce::assume_unique_for_key(bytes)
}

/// A signed batch of `count` envelopes of `payload` bytes as a publisher sends it (random
/// ciphertext and signature: only its shape and sizes matter here).
fn batch_of(rng: &SystemRandom, payload: usize, count: usize) -> Result<wire::SignedBatch> {
    let mut envelopes = Vec::with_capacity(count);
    for seq in 0..count as u64 {
        let mut ciphertext = vec![0u8; payload + 16];
        rng.fill(&mut ciphertext)
            .map_err(|_| anyhow!("no randomness"))?;
        let mut message_id = [0u8; 16];
        rng.fill(&mut message_id)
            .map_err(|_| anyhow!("no randomness"))?;
        // A UUIDv7's version and variant bits.
        message_id[6] = (message_id[6] & 0x0F) | 0x70;
        message_id[8] = (message_id[8] & 0x3F) | 0x80;
        envelopes.push(wire::Envelope {
            epoch: 1,
            seq: seq + 1,
            message_id: message_id.into(),
            issued_at_ms: 1_800_000_000_000,
            expires_at_ms: 1_800_000_600_000,
            reply_to: Default::default(),
            ciphertext,
            channel: Default::default(),
        });
    }
    let mut signature = vec![0u8; 64];
    rng.fill(&mut signature)
        .map_err(|_| anyhow!("no randomness"))?;
    Ok(wire::SignedBatch {
        sender: "spiffe://bench.entente.local/agent/demo/publisher".to_owned(),
        channel: "demo.bench".to_owned(),
        key_epoch: 1,
        envelopes,
        signature,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_floor_adds_up_and_sets_a_ceiling() {
        let floor = measure(256, 16).unwrap();
        let sum = floor.publisher_ns + floor.hub_ns + floor.subscriber_ns + floor.tls_ns;
        assert!((floor.total_ns - sum).abs() < 1e-6);
        assert!(floor.total_ns > 0.0);
        assert!(floor.ceiling_msgs_per_sec > 0.0);
        // A 256-byte payload takes at least its ciphertext and tag on the wire.
        assert!(floor.wire_bytes_per_message > 272.0);
        let p = &floor.primitives;
        for ns in [
            p.aes_gcm_seal_payload,
            p.aes_gcm_open_payload,
            p.envelope_hash,
            p.batch_digest_per_envelope,
            p.merkle_root_per_envelope,
            p.ed25519_sign,
            p.ed25519_verify,
            p.tls_record_seal_per_byte,
            p.tls_record_open_per_byte,
        ] {
            assert!(ns > 0.0);
        }
    }

    #[test]
    fn the_ceiling_scales_with_cores_and_signatures_with_the_batch() {
        let p = Primitives {
            aes_gcm_seal_payload: 100.0,
            aes_gcm_open_payload: 100.0,
            envelope_hash: 200.0,
            batch_digest_per_envelope: 10.0,
            merkle_root_per_envelope: 50.0,
            ed25519_sign: 25_600.0,
            ed25519_verify: 51_200.0,
            tls_record_seal_per_byte: 0.25,
            tls_record_open_per_byte: 0.25,
        };
        let one = Floor::from_primitives(256, 256, 400.0, p.clone(), 1);
        // 100 + 200 + 10 + 100 | 200 + 50 | 200 + 10 + 200 + 100 | 2 * 400 * 0.5
        assert_eq!(one.publisher_ns, 410.0);
        assert_eq!(one.hub_ns, 250.0);
        assert_eq!(one.subscriber_ns, 510.0);
        assert_eq!(one.tls_ns, 400.0);
        assert_eq!(one.total_ns, 1570.0);
        // A round trip: two messages, each signed and verified alone:
        // 100 + 3 * 200 + 2 * 10 + 50 + (25 600 + 51 200) + 100 + 400.
        assert_eq!(one.request_reply_rtt_floor_ns, 2.0 * 78_070.0);
        // 64 in flight: requests and replies share their signatures by what the SDK puts in
        // one batch of them, 32 (not 256, nor all 64).
        let shared =
            100.0 + 3.0 * 200.0 + 2.0 * 10.0 + 50.0 + (25_600.0 + 51_200.0) / 32.0 + 100.0 + 400.0;
        let rr = 1e9 / (2.0 * shared);
        assert!((one.request_reply_ceiling_per_sec - rr).abs() < 1e-6);
        // Ten subscribers: 510 + 200 at each, (410 + 250 + 200) / 10 shared.
        let fanout = 1e9 / (510.0 + 200.0 + 86.0);
        assert!((one.fanout_ceiling_deliveries_per_sec - fanout).abs() < 1e-6);
        assert!(one.fanout_ceiling_deliveries_per_sec > one.ceiling_msgs_per_sec);
        let two = Floor::from_primitives(256, 256, 400.0, p, 2);
        assert!((two.ceiling_msgs_per_sec - 2.0 * one.ceiling_msgs_per_sec).abs() < 1e-6);
    }
}
