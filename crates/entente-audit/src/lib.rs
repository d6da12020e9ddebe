//! Entente's tamper-evident audit log (docs/AUDIT.md).
//!
//! - [`Record`]: one canonical record type for decisions, enrollments, renewals, grants,
//!   approvals, revocations, quarantines, admin actions and delivered batches, with a
//!   deterministic, versioned encoding and a bounded decoder.
//! - [`AuditKey`]: the per-log HMAC-SHA256 key; sensitive fields enter records only as their
//!   MAC ([`Text::Mac`]), and [`AuditKey::matches`] checks a plaintext against one.
//! - [`merkle`]: RFC 9162 trees, inclusion and consistency proofs and their verification.
//! - [`note`] and [`Checkpoint`]: C2SP signed notes and `tlog-checkpoint`s with Ed25519 keys,
//!   signed through the [`NoteSigner`] trait, checked against a [`Verifier`] of several keys.
//! - [`AuditLog`]: the crash-safe, append-only log directory. Records are appended (each
//!   write `fdatasync`ed before it returns) and sealed in batches: a batch is one leaf of the
//!   log's tree, and every seal signs a checkpoint. Opening verifies everything; a failed write
//!   leaves the state unchanged and the log refusing writes (fail closed).
//! - [`verify_export`]: offline verification of an exported log, with [`RecordProof`]s for
//!   single records.
//!
//! ```
//! use entente_audit::{
//!     AuditKey, AuditLog, AuditOptions, Decision, Ed25519Signer, Event, NoteSigner, Outcome,
//!     Record, Verifier, verify_export, verify_inclusion,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tmp = tempfile::tempdir()?;
//! # let dir = tmp.path().join("audit");
//! let signer = Ed25519Signer::generate("hub-1.acme.internal/audit")?;
//! let verifier = Verifier::new(signer.verifier_key().clone());
//! let key = AuditKey::generate()?;
//! let mut log = AuditLog::create(&dir, Box::new(signer), key, AuditOptions::default())?;
//!
//! let record = Record {
//!     time_ms: 1_760_000_000_000,
//!     hub: "hub-1".into(),
//!     actor: "spiffe://acme.internal/agent/ops/alice".into(),
//!     event: Event::Decision(Decision {
//!         principal: "spiffe://acme.internal/agent/ops/alice".into(),
//!         action: "publish".into(),
//!         resource: "orders.eu.created".into(),
//!         allowed: true,
//!         policies: vec!["ops-namespace".into()],
//!         reason: log.key().protect("matched ops-namespace"),
//!         policy_epoch: 7,
//!     }),
//!     outcome: Outcome::Success,
//! };
//! let at = log.append(&record)?;
//! let checkpoint = log.seal()?;
//! let proof = log.record_proof(at.index, checkpoint.size())?;
//! verify_inclusion(&record, &proof, &checkpoint)?;
//!
//! log.export(tmp.path().join("audit.export"))?;
//! let verified = verify_export(tmp.path().join("audit.export"), &verifier)?;
//! assert_eq!(verified.find(&at.hash), Some(at.index));
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod checkpoint;
mod codec;
mod error;
mod export;
mod key;
mod leaf;
mod log;
pub mod merkle;
pub mod note;
mod record;
mod store;

pub use checkpoint::{Checkpoint, CheckpointError, CheckpointIn, verify_consistency};
pub use error::AuditError;
pub use export::{EXPORT_MAGIC, VerifiedLog, verify_export};
pub use key::{AuditKey, AuditKeyError, AuditKeyId, FIELD_LABEL, KEY_ID_LABEL};
pub use leaf::{LEAF_LABEL, LEAF_LEN, Leaf, MAX_LEAF_RECORDS};
pub use log::{
    AuditLog, AuditOptions, MAX_READ, RecordProof, RecordRef, Recovery, verify_inclusion,
};
pub use merkle::{ConsistencyProof, Hash, InclusionProof, MerkleTree, ProofError};
pub use note::{Ed25519Signer, NoteError, NoteSigner, Verifier, VerifierKey};
pub use record::{
    Admin, Approval, Decision, DeliveredBatch, Enrollment, Event, FieldMac, Grant, GrantStage,
    Kind, LimitHit, MAX_FIELD_LEN, MAX_POLICIES, MAX_RECORD_LEN, Outcome, Quarantine,
    QuarantineAction, RECORD_VERSION, Record, RecordError, Renewal, Revocation, Text, Verdict,
};
