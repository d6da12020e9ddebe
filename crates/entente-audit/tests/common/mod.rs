//! Shared test fixtures: fixed keys, sample records, and an export taken apart and put back
//! together the way a tamperer would, with valid frames.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::path::Path;

use entente_audit::{
    AuditKey, AuditLog, AuditOptions, Decision, Ed25519Signer, Event, Hash, NoteSigner, Outcome,
    Record, Verifier, merkle::leaf_hash,
};

pub const ORIGIN: &str = "hub-1.acme.internal/audit";

pub fn signer() -> Ed25519Signer {
    Ed25519Signer::from_seed(ORIGIN, &[0x42; 32]).unwrap()
}

pub fn verifier() -> Verifier {
    Verifier::new(signer().verifier_key().clone())
}

pub fn key() -> AuditKey {
    AuditKey::from_bytes(&[0x17; 32]).unwrap()
}

pub fn options(seal_after: u32) -> AuditOptions {
    AuditOptions {
        seal_after,
        ..AuditOptions::default()
    }
}

pub fn create(dir: &Path, seal_after: u32) -> AuditLog {
    AuditLog::create(dir, Box::new(signer()), key(), options(seal_after)).unwrap()
}

/// Opens the log at `dir`. A `Locked` answer is asked again for up to a second: the lock is
/// `flock(2)` on the records file, and a test running in parallel that spawns a process
/// (`chattr`) shares every open descriptor with its child between fork and exec, so a log just
/// dropped by this test can look locked for that instant.
pub fn open(dir: &Path, seal_after: u32) -> Result<AuditLog, entente_audit::AuditError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match AuditLog::open(dir, Box::new(signer()), key(), options(seal_after)) {
            Err(entente_audit::AuditError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            result => return result,
        }
    }
}

pub fn decision(i: u64) -> Record {
    let allowed = !i.is_multiple_of(4);
    Record {
        time_ms: 1_760_000_000_000 + i,
        hub: "hub-1".into(),
        actor: "spiffe://acme.internal/agent/ops/alice".into(),
        event: Event::Decision(Decision {
            principal: "spiffe://acme.internal/agent/ops/alice".into(),
            action: "publish".into(),
            resource: format!("orders.eu.{i}").into(),
            allowed,
            policies: vec!["ops-namespace".into()],
            reason: "matched ops-namespace".into(),
            policy_epoch: 3,
        }),
        outcome: if allowed {
            Outcome::Success
        } else {
            Outcome::Denied
        },
    }
}

/// An export file, taken apart.
#[derive(Clone, Debug)]
pub struct Export {
    pub head: Vec<u8>,
    pub records: Vec<Vec<u8>>,
    pub tree: Vec<(u8, Vec<u8>)>,
}

impl Export {
    pub fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let magic = entente_audit::EXPORT_MAGIC.len();
        let meta_len = u32::from_be_bytes(bytes[magic..magic + 4].try_into().unwrap()) as usize;
        let head_end = magic + 4 + meta_len;
        let head = bytes[..head_end].to_vec();
        let rec_len =
            u64::from_be_bytes(bytes[head_end..head_end + 8].try_into().unwrap()) as usize;
        let mut at = head_end + 8;
        let rec_end = at + rec_len;
        let mut records = Vec::new();
        while at < rec_end {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            records.push(bytes[at + 4..at + 4 + len].to_vec());
            at += 4 + len + 8;
        }
        let tree_len = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 8;
        let tree_end = at + tree_len;
        let mut tree = Vec::new();
        while at < tree_end {
            let kind = bytes[at];
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            tree.push((kind, bytes[at + 5..at + 5 + len].to_vec()));
            at += 5 + len + 8;
        }
        Self {
            head,
            records,
            tree,
        }
    }

    pub fn write(&self, path: &Path) {
        let mut recs = Vec::new();
        for r in &self.records {
            recs.extend_from_slice(&(r.len() as u32).to_be_bytes());
            recs.extend_from_slice(r);
            recs.extend_from_slice(&leaf_hash(r).0[..8]);
        }
        let mut tree = Vec::new();
        for (kind, body) in &self.tree {
            let start = tree.len();
            tree.push(*kind);
            tree.extend_from_slice(&(body.len() as u32).to_be_bytes());
            tree.extend_from_slice(body);
            let check = Hash::of(&tree[start..]);
            tree.extend_from_slice(&check.0[..8]);
        }
        let mut out = self.head.clone();
        out.extend_from_slice(&(recs.len() as u64).to_be_bytes());
        out.extend_from_slice(&recs);
        out.extend_from_slice(&(tree.len() as u64).to_be_bytes());
        out.extend_from_slice(&tree);
        std::fs::write(path, out).unwrap();
    }
}
