#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Sealing and opening 256-byte messages in Ed25519-signed batches of 1, 16 and 256.
//!
//! - `seal_sign/<n>`: `Sealer::seal_batch` (AES-256-GCM per envelope, one Ed25519 signature)
//!   and the protobuf encoding the sender puts on the wire.
//! - `open_verify/<n>`: decoding, `Opener::open` (signature check, AES-256-GCM, replay window,
//!   expiry). Each iteration opens a fresh batch sealed outside the timed part, so the replay
//!   window never refuses one.
//! - `single_signed_message/round_trip`: one message sealed, signed, encoded, decoded,
//!   verified and opened.
//!
//! Throughput is in messages: criterion reports elements per second.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{Agent, NOW, TestCa};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use entente_crypto::{
    Opener, Sealer, SealerOptions, SenderKeyIn, SignedBatchIn, VerifiedKeyBundle,
};
use entente_wire as wire;

const PAYLOAD_BYTES: usize = 256;
const BATCH_SIZES: [usize; 3] = [1, 16, 256];

/// Alice, sealing on one channel.
struct Sender {
    sealer: Sealer,
}

/// Bob, holding Alice's sender key and her verified key bundle.
struct Receiver {
    alice: VerifiedKeyBundle,
    opener: Opener,
    limits: wire::Limits,
}

fn fixture() -> (Sender, Receiver) {
    let ca = TestCa::new();
    let alice = Agent::new(&ca, "alice");
    let bob = Agent::new(&ca, "bob");
    // One epoch for the whole run: criterion seals millions of messages at a fixed clock.
    let options = SealerOptions {
        epoch_max_messages: u64::MAX,
        ..SealerOptions::default()
    };
    let (sealer, sender_key) = Sealer::new(
        alice.id.clone(),
        1,
        alice.keys.clone(),
        "orders.eu".parse().unwrap(),
        std::slice::from_ref(&bob.bundle),
        options,
        NOW,
    )
    .unwrap();
    let mut opener = bob.opener();
    let sender_key = SenderKeyIn::from_wire(sender_key).unwrap();
    opener
        .accept_sender_key(&sender_key, &alice.bundle, NOW)
        .unwrap();
    let receiver = Receiver {
        alice: alice.bundle,
        opener,
        limits: wire::Limits::default(),
    };
    (Sender { sealer }, receiver)
}

impl Sender {
    fn seal(&mut self, payloads: &[&[u8]]) -> Vec<u8> {
        wire::encode(&self.sealer.seal_batch(payloads, None, NOW).unwrap())
    }
}

impl Receiver {
    fn open(&mut self, bytes: &[u8], expected: usize) {
        let batch = SignedBatchIn::decode(bytes, &self.limits).unwrap();
        let opened = self.opener.open(batch, &self.alice, NOW).unwrap();
        assert_eq!(opened.delivered.len(), expected);
        black_box(opened);
    }
}

fn seal_sign(c: &mut Criterion) {
    let payload = [0x5a; PAYLOAD_BYTES];
    let mut group = c.benchmark_group("seal_sign");
    for n in BATCH_SIZES {
        let (mut alice, _) = fixture();
        let payloads = vec![&payload[..]; n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| alice.seal(black_box(&payloads)));
        });
    }
    group.finish();
}

fn open_verify(c: &mut Criterion) {
    let payload = [0x5a; PAYLOAD_BYTES];
    let mut group = c.benchmark_group("open_verify");
    for n in BATCH_SIZES {
        let (mut alice, mut bob) = fixture();
        let payloads = vec![&payload[..]; n];
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            // Inputs are sealed and opened in order, so sequence numbers only grow.
            b.iter_batched(
                || alice.seal(&payloads),
                |bytes| bob.open(&bytes, n),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn single_signed_message(c: &mut Criterion) {
    let payload = [0x5a; PAYLOAD_BYTES];
    let mut group = c.benchmark_group("single_signed_message");
    group.throughput(Throughput::Elements(1));
    let (mut alice, mut bob) = fixture();
    group.bench_function("round_trip", |b| {
        b.iter(|| {
            let bytes = alice.seal(&[black_box(&payload[..])]);
            bob.open(&bytes, 1);
        });
    });
    group.finish();
}

/// The primitives' own cost on this machine: the floor under the per-message figures.
fn primitives(c: &mut Criterion) {
    use aws_lc_rs::{aead, digest, signature};
    let mut group = c.benchmark_group("primitives");
    group.throughput(Throughput::Elements(1));
    let input = [0x42u8; 400];
    group.bench_function("sha256_400B", |b| {
        b.iter(|| digest::digest(&digest::SHA256, black_box(&input)))
    });
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &[7; 32]).unwrap());
    let mut sealed = vec![0x5au8; PAYLOAD_BYTES];
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key([0; 12]),
        aead::Aad::from(&[1u8; 120][..]),
        &mut sealed,
    )
    .unwrap();
    group.bench_function("aes256gcm_open_256B", |b| {
        b.iter_batched_ref(
            || sealed.clone(),
            |buf| {
                key.open_in_place(
                    aead::Nonce::assume_unique_for_key([0; 12]),
                    aead::Aad::from(&[1u8; 120][..]),
                    buf,
                )
                .map(|p| p.len())
                .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let pair = signature::Ed25519KeyPair::generate().unwrap();
    let msg = [9u8; 100];
    let sig = signature::KeyPair::public_key(&pair);
    let public = signature::UnparsedPublicKey::new(&signature::ED25519, sig.as_ref().to_vec());
    let signed = pair.sign(&msg);
    group.bench_function("ed25519_verify", |b| {
        b.iter(|| public.verify(black_box(&msg), signed.as_ref()).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    seal_sign,
    open_verify,
    single_signed_message,
    primitives
);
criterion_main!(benches);
