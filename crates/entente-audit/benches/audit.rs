#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The audit log's costs.
//!
//! - `append/one`: `AuditLog::append` of one decision record (write + `fdatasync`), sealing a
//!   leaf and signing a checkpoint every 1000 records.
//! - `append/group_100`: `append_all` of 100 records per call (one `fdatasync`), same sealing.
//! - `record/encode_hash`: a decision record's canonical encoding and hash, no I/O.
//! - `merkle_1m/*`: inclusion and consistency proofs made and verified in a tree of 2^20
//!   leaves.
//! - `open/verify_100k_records`: `AuditLog::open` of 100 000 records in 100 leaves: every
//!   record decoded and rehashed, every leaf rebuilt, 101 checkpoint signatures verified.
//!
//! Throughput is in records: criterion reports elements per second. The log lives in a
//! temporary directory on the machine's disk, so `append` measures its `fdatasync`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use entente_audit::{
    AuditKey, AuditLog, AuditOptions, Decision, Ed25519Signer, Event, Hash, MerkleTree, Outcome,
    Record, merkle::leaf_hash,
};

fn decision(i: u64) -> Record {
    Record {
        time_ms: 1_760_000_000_000 + i,
        hub: "hub-1".into(),
        actor: "spiffe://acme.internal/agent/ops/alice".into(),
        event: Event::Decision(Decision {
            principal: "spiffe://acme.internal/agent/ops/alice".into(),
            action: "publish".into(),
            resource: "orders.eu.created".into(),
            allowed: true,
            policies: vec!["ops-namespace".into()],
            reason: "permitted by ops-namespace".into(),
            policy_epoch: i,
        }),
        outcome: Outcome::Success,
    }
}

fn new_log(dir: &std::path::Path) -> AuditLog {
    let signer = Ed25519Signer::generate("hub-1.acme.internal/audit").unwrap();
    AuditLog::create(
        dir,
        Box::new(signer),
        AuditKey::generate().unwrap(),
        AuditOptions {
            seal_after: 1000,
            ..AuditOptions::default()
        },
    )
    .unwrap()
}

fn append(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("append");

    let mut log = new_log(&tmp.path().join("one"));
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("one", |b| {
        b.iter(|| {
            i += 1;
            black_box(log.append(&decision(i)).unwrap());
        });
    });

    let mut log = new_log(&tmp.path().join("group"));
    let batch: Vec<Record> = (0..100).map(decision).collect();
    group.throughput(Throughput::Elements(100));
    group.bench_function("group_100", |b| {
        b.iter(|| black_box(log.append_all(&batch).unwrap()));
    });
    group.finish();

    let mut group = c.benchmark_group("record");
    let record = decision(1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_hash", |b| {
        b.iter(|| black_box(leaf_hash(&black_box(&record).to_bytes().unwrap())));
    });
    group.finish();
}

fn merkle(c: &mut Criterion) {
    const SIZE: u64 = 1 << 20;
    let tree = MerkleTree::from_leaves((0..SIZE).map(|i| leaf_hash(&i.to_be_bytes())));
    let root = tree.root(SIZE).unwrap();
    let mut group = c.benchmark_group("merkle_1m");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };

    group.bench_function("inclusion_prove", |b| {
        b.iter(|| black_box(tree.inclusion_proof(next() % SIZE, SIZE).unwrap()));
    });
    let index = 777_777;
    let proof = tree.inclusion_proof(index, SIZE).unwrap();
    let leaf: Hash = tree.leaf(index).unwrap();
    group.bench_function("inclusion_verify", |b| {
        b.iter(|| proof.verify(black_box(&leaf), &root).unwrap());
    });
    group.bench_function("consistency_prove", |b| {
        b.iter(|| {
            black_box(
                tree.consistency_proof(1 + next() % (SIZE - 1), SIZE)
                    .unwrap(),
            )
        });
    });
    let old = 654_321;
    let old_root = tree.root(old).unwrap();
    let proof = tree.consistency_proof(old, SIZE).unwrap();
    group.bench_function("consistency_verify", |b| {
        b.iter(|| proof.verify(black_box(&old_root), &root).unwrap());
    });
    group.bench_function("root_at_old_size", |b| {
        b.iter(|| black_box(tree.root(1 + next() % SIZE).unwrap()));
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    const RECORDS: u64 = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let signer_seed = [7u8; 32];
    let key = AuditKey::generate().unwrap();
    let key_bytes = key.to_bytes();
    let signer =
        || Box::new(Ed25519Signer::from_seed("hub-1.acme.internal/audit", &signer_seed).unwrap());
    let mut log = AuditLog::create(&dir, signer(), key, AuditOptions::default()).unwrap();
    for start in (0..RECORDS).step_by(1000) {
        log.append_all(&(start..start + 1000).map(decision).collect::<Vec<_>>())
            .unwrap();
    }
    drop(log);
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.throughput(Throughput::Elements(RECORDS));
    group.bench_function("verify_100k_records", |b| {
        b.iter(|| {
            let key = AuditKey::from_bytes(key_bytes.as_ref()).unwrap();
            black_box(AuditLog::open(&dir, signer(), key, AuditOptions::default()).unwrap())
        });
    });
    group.finish();
}

criterion_group!(benches, append, merkle, open);
criterion_main!(benches);
