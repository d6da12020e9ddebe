#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Test vectors: the RFC 9162 proofs of the Certificate Transparency reference tests, and
//! `test-vectors/audit.json`, which pins the record encoding, leaf hashes, the tree root and a
//! signed checkpoint.
//!
//! [`build`] makes `audit.json` from fixed inputs and `regenerate_vectors` (ignored) writes it;
//! the checks read the file, compare it with [`build`] and recompute each value from the bytes
//! in the file, so a change to the format or to the file is caught.

mod common;

use entente_audit::{
    Admin, Approval, AuditKey, Checkpoint, ConsistencyProof, Decision, DeliveredBatch,
    Ed25519Signer, Event, Grant, GrantStage, Hash, InclusionProof, Leaf, MerkleTree, NoteSigner,
    Outcome, Record, Verdict, Verifier, VerifierKey,
    merkle::{leaf_hash, root_of},
};
use serde::{Deserialize, Serialize};

const AUDIT: &str = "../../test-vectors/audit.json";

// === RFC 9162 ===

// From transparency-dev/merkle, proof/verify_test.go (Apache-2.0, Copyright 2017 Google LLC),
// which carries the Certificate Transparency reference vectors: eight leaves, the root of each
// prefix, and inclusion and consistency proofs between them.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];
/// (leaf index, 1-based as in the source, tree size, path).
const INCLUSION: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        3,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        2,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];
const CONSISTENCY: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn h(s: &str) -> Hash {
    Hash::from_hex(s).unwrap()
}

fn ct_tree() -> MerkleTree {
    MerkleTree::from_leaves(LEAVES.iter().map(|l| leaf_hash(&hex::decode(l).unwrap())))
}

#[test]
fn rfc9162_roots_match_the_reference_vectors() {
    let tree = ct_tree();
    for (i, root) in ROOTS.iter().enumerate() {
        assert_eq!(tree.root(i as u64 + 1).unwrap(), h(root), "size {}", i + 1);
    }
    assert_eq!(
        tree.root(0).unwrap(),
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
}

#[test]
fn rfc9162_inclusion_proofs_match_and_corruptions_fail() {
    let tree = ct_tree();
    for (leaf, size, path) in INCLUSION {
        let index = leaf - 1;
        let expected: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        let proof = tree.inclusion_proof(index, size).unwrap();
        assert_eq!(proof.path, expected, "leaf {index} of {size}");
        let root = h(ROOTS[size as usize - 1]);
        let leaf_h = tree.leaf(index).unwrap();
        proof.verify(&leaf_h, &root).unwrap();

        // The probes of the reference tests.
        let bad = |index: u64, size: u64, leaf: Hash, root: Hash, path: Vec<Hash>| {
            InclusionProof { index, size, path }
                .verify(&leaf, &root)
                .is_err()
        };
        let some = h("abacaba000000000000000000000000000000000000000000060061e00123456");
        let empty = h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(bad(
            index.wrapping_sub(1),
            size,
            leaf_h,
            root,
            expected.clone()
        ));
        assert!(bad(index + 1, size, leaf_h, root, expected.clone()));
        assert!(bad(index ^ 2, size, leaf_h, root, expected.clone()));
        assert!(bad(index, size * 2, leaf_h, root, expected.clone()));
        assert!(bad(index, size / 2, leaf_h, root, expected.clone()));
        assert!(bad(index, size, some, root, expected.clone()));
        assert!(bad(index, size, leaf_h, empty, expected.clone()));
        assert!(bad(index, size, leaf_h, some, expected.clone()));
        let mut longer = expected.clone();
        longer.push(root);
        assert!(bad(index, size, leaf_h, root, longer));
        let mut prefixed = vec![root];
        prefixed.extend(expected.iter().copied());
        assert!(bad(index, size, leaf_h, root, prefixed));
        for i in 0..expected.len() {
            let mut flipped = expected.clone();
            flipped[i].0[0] ^= 8;
            assert!(bad(index, size, leaf_h, root, flipped));
        }
        if !expected.is_empty() {
            let mut shorter = expected.clone();
            shorter.pop();
            assert!(bad(index, size, leaf_h, root, shorter));
        }
    }
}

#[test]
fn rfc9162_consistency_proofs_match_and_corruptions_fail() {
    let tree = ct_tree();
    for (old, new, path) in CONSISTENCY {
        let expected: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        let proof = tree.consistency_proof(old, new).unwrap();
        assert_eq!(proof.path, expected, "{old} to {new}");
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        proof.verify(&r1, &r2).unwrap();
        if expected.is_empty() {
            continue;
        }
        let bad = |old: u64, new: u64, r1: Hash, r2: Hash, path: Vec<Hash>| {
            ConsistencyProof { old, new, path }
                .verify(&r1, &r2)
                .is_err()
        };
        assert!(bad(old - 1, new, r1, r2, expected.clone()));
        assert!(bad(old + 1, new, r1, r2, expected.clone()));
        assert!(bad(old ^ 2, new, r1, r2, expected.clone()));
        assert!(bad(old, new * 2, r1, r2, expected.clone()));
        assert!(bad(old, new / 2, r1, r2, expected.clone()));
        assert!(bad(old, new, r2, r1, expected.clone()));
        assert!(bad(old, new, r1, r2, vec![]));
        for extra in [r1, r2] {
            let mut longer = expected.clone();
            longer.push(extra);
            assert!(bad(old, new, r1, r2, longer));
            let mut prefixed = vec![extra];
            prefixed.extend(expected.iter().copied());
            assert!(bad(old, new, r1, r2, prefixed));
        }
        let mut shorter = expected.clone();
        shorter.pop();
        assert!(bad(old, new, r1, r2, shorter));
        for i in 0..expected.len() {
            let mut flipped = expected.clone();
            flipped[i].0[0] ^= 16;
            assert!(bad(old, new, r1, r2, flipped));
        }
    }
}

// === audit.json ===

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct AuditVectors {
    description: String,
    hmac_key: String,
    records: Vec<RecordVector>,
    leaves: Vec<LeafVector>,
    root: String,
    checkpoint: CheckpointVector,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct RecordVector {
    description: String,
    kind: String,
    encoded: String,
    hash: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct LeafVector {
    first_record: u64,
    count: u32,
    records_root: String,
    encoded: String,
    hash: String,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CheckpointVector {
    ed25519_seed: String,
    vkey: String,
    note: String,
}

fn inputs(key: &AuditKey) -> Vec<(&'static str, Record)> {
    let alice = "spiffe://acme.internal/agent/ops/alice";
    let base = |event, outcome| Record {
        time_ms: 1_760_000_000_000,
        hub: "hub-1".into(),
        actor: alice.into(),
        event,
        outcome,
    };
    let envelopes: Vec<Hash> = (0u8..3).map(|i| Hash([i; 32])).collect();
    vec![
        (
            "an allowed publish decision",
            base(
                Event::Decision(Decision {
                    principal: alice.into(),
                    action: "publish".into(),
                    resource: "orders.eu.created".into(),
                    allowed: true,
                    policies: vec!["ops-namespace".into(), "risk-below-50".into()],
                    reason: "permitted by ops-namespace".into(),
                    policy_epoch: 7,
                }),
                Outcome::Success,
            ),
        ),
        (
            "a denied subscribe decision whose reason is HMAC'd",
            base(
                Event::Decision(Decision {
                    principal: alice.into(),
                    action: "subscribe".into(),
                    resource: "payroll.>".into(),
                    allowed: false,
                    policies: vec![],
                    reason: key.protect("no policy permits it"),
                    policy_epoch: 7,
                }),
                Outcome::Denied,
            ),
        ),
        (
            "a requested grant, its free-text reason HMAC'd",
            base(
                Event::Grant(Grant {
                    grant_id: "g-0001".into(),
                    stage: GrantStage::Requested,
                    principal: alice.into(),
                    action: "publish".into(),
                    resource: "payments.refund".into(),
                    not_after_ms: 1_760_003_600_000,
                    reason: Some(key.mac("refund ticket 4711, customer is waiting")),
                }),
                Outcome::Success,
            ),
        ),
        (
            "an approval of a held message",
            Record {
                actor: "spiffe://acme.internal/human/carol".into(),
                ..base(
                    Event::Approval(Approval {
                        message_id: "0190f0a0-0000-7000-8000-000000000001".into(),
                        sender: alice.into(),
                        channel: "payments.refund".into(),
                        verdict: Verdict::Approved,
                        envelope: Hash([0xee; 32]),
                        statement: Some(Hash([0x5a; 32])),
                    }),
                    Outcome::Success,
                )
            },
        ),
        (
            "a delivered batch of three envelopes",
            Record {
                actor: "hub".into(),
                ..base(
                    Event::DeliveredBatch(DeliveredBatch {
                        sender: alice.into(),
                        channel: "orders.eu.created".into(),
                        count: 3,
                        bytes: 768,
                        envelopes_root: DeliveredBatch::envelopes_root(&envelopes),
                    }),
                    Outcome::Success,
                )
            },
        ),
        (
            "an admin action that failed",
            Record {
                actor: "spiffe://acme.internal/human/root".into(),
                ..base(
                    Event::Admin(Admin {
                        operation: "policy.reload".into(),
                        target: "policies/".into(),
                        detail: "validation failed: unknown entity type".into(),
                    }),
                    Outcome::Failed,
                )
            },
        ),
    ]
}

fn build() -> AuditVectors {
    let key = common::key();
    let records = inputs(&key);
    let signer = common::signer();
    let hashes: Vec<Hash> = records.iter().map(|(_, r)| r.hash().unwrap()).collect();
    // Two leaves: records 0..4 and 4..6.
    let leaves: Vec<Leaf> = [(0u64, 4u32), (4, 2)]
        .into_iter()
        .map(|(first, count)| Leaf {
            first_record: first,
            count,
            records_root: root_of(&hashes[first as usize..(first + u64::from(count)) as usize]),
        })
        .collect();
    let tree = MerkleTree::from_leaves(leaves.iter().map(Leaf::hash));
    let root = tree.root(2).unwrap();
    let checkpoint = Checkpoint::sign(2, root, &signer).unwrap();
    AuditVectors {
        description: "Audit records (docs/AUDIT.md §2), leaves (§3) and a checkpoint (§4): \
                      records 0..4 and 4..6 make two leaves; the checkpoint signs the tree of \
                      both. HMAC'd fields use hmac_key; the checkpoint key is the Ed25519 seed."
            .into(),
        hmac_key: hex::encode(key.to_bytes().as_ref()),
        records: records
            .iter()
            .zip(&hashes)
            .map(|((description, r), hash)| RecordVector {
                description: (*description).into(),
                kind: r.kind().to_string(),
                encoded: hex::encode(r.to_bytes().unwrap()),
                hash: hash.to_hex(),
            })
            .collect(),
        leaves: leaves
            .iter()
            .map(|l| LeafVector {
                first_record: l.first_record,
                count: l.count,
                records_root: l.records_root.to_hex(),
                encoded: hex::encode(l.to_bytes()),
                hash: l.hash().to_hex(),
            })
            .collect(),
        root: root.to_hex(),
        checkpoint: CheckpointVector {
            ed25519_seed: hex::encode([0x42; 32]),
            vkey: signer.verifier_key().to_string(),
            note: checkpoint.as_str().to_owned(),
        },
    }
}

#[test]
#[ignore = "writes test-vectors/audit.json"]
fn regenerate_vectors() {
    let json = serde_json::to_string_pretty(&build()).unwrap();
    std::fs::write(AUDIT, json + "\n").unwrap();
}

#[test]
fn audit_vectors_match_the_file() {
    let text = std::fs::read_to_string(AUDIT).unwrap();
    let file: AuditVectors = serde_json::from_str(&text).unwrap();
    assert_eq!(
        file,
        build(),
        "test-vectors/audit.json is stale or the format changed"
    );

    // Recompute everything from the bytes in the file alone.
    let key = AuditKey::from_bytes(&hex::decode(&file.hmac_key).unwrap()).unwrap();
    let mut hashes = Vec::new();
    for v in &file.records {
        let bytes = hex::decode(&v.encoded).unwrap();
        let record = Record::from_bytes(&bytes).unwrap();
        assert_eq!(record.to_bytes().unwrap(), bytes, "{}", v.description);
        assert_eq!(record.kind().to_string(), v.kind);
        let hash = leaf_hash(&bytes);
        assert_eq!(hash.to_hex(), v.hash);
        hashes.push(hash);
    }
    let second = Record::from_bytes(&hex::decode(&file.records[1].encoded).unwrap()).unwrap();
    let Event::Decision(d) = &second.event else {
        panic!("record 1 is a decision");
    };
    assert!(key.field_matches(&d.reason, "no policy permits it"));
    let grant = Record::from_bytes(&hex::decode(&file.records[2].encoded).unwrap()).unwrap();
    let Event::Grant(g) = &grant.event else {
        panic!("record 2 is a grant");
    };
    assert!(key.matches(
        &g.reason.unwrap(),
        "refund ticket 4711, customer is waiting"
    ));

    let mut leaf_hashes = Vec::new();
    for v in &file.leaves {
        let bytes = hex::decode(&v.encoded).unwrap();
        let leaf = Leaf::from_bytes(&bytes).unwrap();
        let range = leaf.records();
        assert_eq!(
            root_of(&hashes[range.start as usize..range.end as usize]).to_hex(),
            v.records_root
        );
        assert_eq!(leaf_hash(&bytes).to_hex(), v.hash);
        leaf_hashes.push(leaf_hash(&bytes));
    }
    assert_eq!(root_of(&leaf_hashes).to_hex(), file.root);

    let vkey = VerifierKey::parse(&file.checkpoint.vkey).unwrap();
    let seed: [u8; 32] = hex::decode(&file.checkpoint.ed25519_seed)
        .unwrap()
        .try_into()
        .unwrap();
    let signer = Ed25519Signer::from_seed(vkey.name(), &seed).unwrap();
    assert_eq!(signer.verifier_key(), &vkey);
    let checkpoint = Checkpoint::parse(&file.checkpoint.note, &Verifier::new(vkey)).unwrap();
    assert_eq!(checkpoint.size(), 2);
    assert_eq!(checkpoint.root().to_hex(), file.root);
}
