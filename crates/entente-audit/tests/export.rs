#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Exports and offline verification: every kind of tampering is caught, at its position.

mod common;

use std::path::{Path, PathBuf};

use common::{Export, create, decision, verifier};
use entente_audit::{
    AuditError, Checkpoint, CheckpointError, Ed25519Signer, Hash, Leaf, NoteError, NoteSigner,
    Record, verify_export, verify_inclusion,
};

/// 30 records in leaves of 10, exported; returns the export's path and the records.
fn exported(tmp: &Path) -> (PathBuf, Vec<Record>, Vec<Checkpoint>) {
    let mut log = create(&tmp.join("audit"), 10);
    let records: Vec<Record> = (0..30).map(decision).collect();
    log.append_all(&records).unwrap();
    // A pending record is not exported.
    log.append(&decision(30)).unwrap();
    let path = tmp.join("audit.export");
    log.export(&path).unwrap();
    (path, records, log.checkpoints().to_vec())
}

fn verify(path: &Path) -> Result<entente_audit::VerifiedLog, AuditError> {
    verify_export(path, &verifier())
}

#[test]
fn an_untouched_export_verifies_and_proves_its_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, records, checkpoints) = exported(tmp.path());
    let log = verify(&path).unwrap();
    assert_eq!(log.size(), 3);
    assert_eq!(log.record_count(), 30);
    assert_eq!(log.origin(), common::ORIGIN);
    assert_eq!(log.hmac_key(), common::key().id());
    assert_eq!(log.checkpoints(), &checkpoints[..]);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(log.find_record(r).unwrap(), Some(i as u64));
        let proof = log.record_proof(i as u64, 3).unwrap();
        verify_inclusion(r, &proof, &checkpoints[3]).unwrap();
    }
    assert_eq!(log.find_record(&decision(30)).unwrap(), None);
    for old in &checkpoints {
        log.check_against(old).unwrap();
    }
}

/// Rewrites the export with `change` applied and returns what verification says.
fn tampered(path: &Path, change: impl FnOnce(&mut Export)) -> AuditError {
    let mut export = Export::read(path);
    change(&mut export);
    let out = path.with_extension("tampered");
    export.write(&out);
    verify(&out).expect_err("tampering was not caught")
}

fn leaf_mismatch(err: &AuditError, leaf: u64) -> bool {
    matches!(err, AuditError::LeafMismatch { leaf: l, .. } if *l == leaf)
}

#[test]
fn changed_dropped_reordered_and_inserted_records_are_caught_at_their_leaf() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, _) = exported(tmp.path());

    let changed = tampered(&path, |e| {
        let mut r = Record::from_bytes(&e.records[13]).unwrap();
        r.time_ms += 1;
        e.records[13] = r.to_bytes().unwrap();
    });
    assert!(leaf_mismatch(&changed, 1), "{changed}");
    assert_eq!(
        changed.to_string(),
        "records 10..20 do not match leaf 1: a record in that range was changed, dropped, \
         inserted or reordered"
    );

    let dropped = tampered(&path, |e| {
        e.records.remove(13);
    });
    assert!(leaf_mismatch(&dropped, 1), "{dropped}");

    let reordered = tampered(&path, |e| e.records.swap(13, 14));
    assert!(leaf_mismatch(&reordered, 1), "{reordered}");

    let inserted = tampered(&path, |e| {
        e.records.insert(25, decision(99).to_bytes().unwrap());
    });
    assert!(leaf_mismatch(&inserted, 2), "{inserted}");

    let appended = tampered(&path, |e| e.records.push(decision(99).to_bytes().unwrap()));
    assert!(
        matches!(appended, AuditError::UnsealedRecord { index: 30 }),
        "{appended}"
    );

    let truncated = tampered(&path, |e| {
        e.records.truncate(28);
    });
    assert!(
        matches!(
            truncated,
            AuditError::RecordsMissing {
                leaf: 2,
                available: 28,
                ..
            }
        ),
        "{truncated}"
    );
}

#[test]
fn a_flipped_byte_without_a_fixed_frame_names_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, _) = exported(tmp.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let export = Export::read(&path);
    let frame = 4 + export.records[0].len() + 8;
    let start = export.head.len() + 8;
    bytes[start + 17 * frame + 30] ^= 0x20;
    let out = path.with_extension("flipped");
    std::fs::write(&out, bytes).unwrap();
    let err = verify(&out).unwrap_err();
    assert!(
        matches!(err, AuditError::RecordCorrupt { index: 17, .. }),
        "{err}"
    );
}

#[test]
fn altered_forged_and_removed_leaves_and_checkpoints_are_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, checkpoints) = exported(tmp.path());
    // The tree frames: C0 L0 C1 L1 C2 L2 C3.

    let leaf_altered = tampered(&path, |e| {
        let mut leaf = Leaf::from_bytes(&e.tree[3].1).unwrap();
        leaf.records_root = Hash::of(b"forged");
        e.tree[3].1 = leaf.to_bytes();
    });
    assert!(leaf_mismatch(&leaf_altered, 1), "{leaf_altered}");

    // A checkpoint whose root line was changed: its signature fails.
    let altered = tampered(&path, |e| {
        let text = String::from_utf8(e.tree[4].1.clone()).unwrap();
        let root = text.lines().nth(2).unwrap().to_owned();
        let other = text.replacen(&root, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 1);
        e.tree[4].1 = other.into_bytes();
    });
    assert!(
        matches!(
            altered,
            AuditError::BadCheckpoint {
                size: 2,
                source: CheckpointError::Note(NoteError::BadSignature { .. })
            }
        ),
        "{altered}"
    );

    // A checkpoint signed by another key under the log's name, over a forged root.
    let forger = Ed25519Signer::generate(common::ORIGIN).unwrap();
    let forged = tampered(&path, |e| {
        let cp = Checkpoint::sign(2, Hash::of(b"forged"), &forger).unwrap();
        e.tree[4].1 = cp.as_str().as_bytes().to_vec();
    });
    assert!(
        matches!(
            forged,
            AuditError::BadCheckpoint {
                size: 2,
                source: CheckpointError::Note(NoteError::UnknownKey)
            }
        ),
        "{forged}"
    );

    // A genuine checkpoint moved to another position.
    let moved = tampered(&path, |e| {
        e.tree[4].1 = checkpoints[1].as_str().as_bytes().to_vec();
    });
    assert!(
        matches!(
            moved,
            AuditError::SizeMismatch {
                size: 2,
                claimed: 1
            }
        ),
        "{moved}"
    );

    let removed = tampered(&path, |e| {
        e.tree.remove(4);
    });
    assert!(
        matches!(removed, AuditError::MissingCheckpoint { size: 2 }),
        "{removed}"
    );

    let leaf_removed = tampered(&path, |e| {
        e.tree.remove(3);
        e.tree.remove(3);
    });
    assert!(
        matches!(
            leaf_removed,
            AuditError::LeafOutOfOrder {
                leaf: 1,
                expected: 10,
                found: 20
            }
        ),
        "{leaf_removed}"
    );

    // The wrong verifier refuses the very first checkpoint.
    let other = Ed25519Signer::generate(common::ORIGIN).unwrap();
    let err = verify_export(
        &path,
        &entente_audit::Verifier::new(other.verifier_key().clone()),
    )
    .unwrap_err();
    assert!(
        matches!(err, AuditError::BadCheckpoint { size: 0, .. }),
        "{err}"
    );
}

#[test]
fn a_rolled_back_or_rewritten_log_is_caught_against_a_known_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, checkpoints) = exported(tmp.path());
    let latest = checkpoints.last().unwrap();

    // Cut back to two leaves: consistent on its own, but shorter than what was published.
    let mut export = Export::read(&path);
    export.records.truncate(20);
    export.tree.truncate(5);
    let cut = path.with_extension("cut");
    export.write(&cut);
    let log = verify(&cut).unwrap();
    assert_eq!(log.size(), 2);
    assert!(matches!(
        log.check_against(latest),
        Err(AuditError::RolledBack { known: 3, have: 2 })
    ));

    // Rewritten by someone holding the key: checks against the old checkpoint fail.
    let dir = tmp.path().join("fork");
    let mut fork = create(&dir, 10);
    fork.append_all(&(100..130).map(decision).collect::<Vec<_>>())
        .unwrap();
    let forked = tmp.path().join("fork.export");
    fork.export(&forked).unwrap();
    let log = verify(&forked).unwrap();
    assert!(matches!(
        log.check_against(latest),
        Err(AuditError::Forked { size: 3 })
    ));
}

#[test]
fn garbage_exports_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _, _) = exported(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    let out = tmp.path().join("garbage");
    for cut in [0, 10, 30, 60, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&out, &bytes[..cut]).unwrap();
        assert!(verify(&out).is_err(), "cut at {cut}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    std::fs::write(&out, &longer).unwrap();
    assert!(matches!(verify(&out), Err(AuditError::Corrupt { .. })));
}
