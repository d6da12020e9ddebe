//! The errors of the log: misuse by the caller, an unavailable disk or signer, and corruption or
//! tampering, which always names where (record index, leaf index, checkpoint tree size, or
//! file offset).

use std::path::PathBuf;

use crate::{AuditKeyId, CheckpointError, Hash, NoteError, ProofError, RecordError};

/// Everything that can go wrong opening, writing, exporting or verifying an audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    // --- misuse ---
    /// The record breaks the record format (too long, contradictory, empty hub or actor).
    #[error("invalid audit record: {0}")]
    InvalidRecord(#[from] RecordError),
    /// `create` found a log (or other files) in the directory.
    #[error("`{}` already exists and is not empty", path.display())]
    Exists {
        /// The directory.
        path: PathBuf,
    },
    /// `open` found no log in the directory.
    #[error("no audit log at `{}`", path.display())]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
    /// Another writer holds the log.
    #[error("audit log `{}` is open in another writer", path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The HMAC key given is not the one the log was created with.
    #[error("the audit HMAC key {given} is not this log's key {expected}")]
    WrongKey {
        /// The log's key ID.
        expected: AuditKeyId,
        /// The given key's ID.
        given: AuditKeyId,
    },
    /// The signer's key name is not the log's origin.
    #[error("the checkpoint signer is named `{signer}` but the log's origin is `{origin}`")]
    SignerMismatch {
        /// The signer's key name.
        signer: String,
        /// The log's origin.
        origin: String,
    },
    /// An option is out of range.
    #[error("invalid audit log option: {0}")]
    Options(&'static str),
    /// A record index beyond the log.
    #[error("record {index} does not exist (the log has {count})")]
    NoSuchRecord {
        /// The index asked for.
        index: u64,
        /// How many records the log has.
        count: u64,
    },
    /// A record that is not yet sealed into a leaf has no proof.
    #[error("record {index} is not sealed at tree size {size}")]
    NotSealed {
        /// The record.
        index: u64,
        /// The tree size asked for.
        size: u64,
    },
    /// A proof asked for sizes the log does not have.
    #[error(transparent)]
    Proof(#[from] ProofError),

    // --- unavailable dependencies ---
    /// A file operation failed.
    #[error("cannot {op} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A log file was removed or replaced while the log was open; writing on would go to a
    /// file nobody can read back.
    #[error("`{}` was removed or replaced while the audit log was open", path.display())]
    Replaced {
        /// The file.
        path: PathBuf,
    },
    /// A log file grew or shrank while the log was open (something else wrote to it): what
    /// the log holds in memory no longer says where its records are.
    #[error(
        "`{}` is {len} bytes while the audit log wrote {written}: something else changed it",
        path.display()
    )]
    Resized {
        /// The file.
        path: PathBuf,
        /// Its length now.
        len: u64,
        /// What the log wrote to it.
        written: u64,
    },
    /// The checkpoint signer failed.
    #[error("cannot sign the checkpoint: {0}")]
    Sign(NoteError),
    /// An earlier write failed; the log refuses writes until it is reopened (and re-verified).
    #[error("the audit log refuses writes after an earlier failure ({0}); reopen it")]
    Failed(String),

    // --- corruption and tampering ---
    /// The metadata file is not a log's metadata.
    #[error("audit log metadata is invalid: {0}")]
    Meta(String),
    /// A frame of a file is corrupt (bad length, type or check value).
    #[error("{file} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// `records`, `tree` or `export`.
        file: &'static str,
        /// Where the frame starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A file ends in an incomplete write (a crash during an append that was never reported
    /// durable). `open` truncates it unless told not to.
    #[error("{file} ends in an incomplete write at byte {offset}")]
    TornTail {
        /// `records` or `tree`.
        file: &'static str,
        /// Where the incomplete frame starts.
        offset: u64,
    },
    /// A record does not decode, or does not match its frame's check value.
    #[error("record {index} (byte {offset} of the records) is corrupt: {reason}")]
    RecordCorrupt {
        /// The record's index.
        index: u64,
        /// Its frame's offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A leaf does not start where the previous one ended.
    #[error("leaf {leaf} starts at record {found}, expected {expected}")]
    LeafOutOfOrder {
        /// The leaf.
        leaf: u64,
        /// Where it should start.
        expected: u64,
        /// Where it says it starts.
        found: u64,
    },
    /// A leaf seals records that are not there.
    #[error("leaf {leaf} seals records {first}..{end} but only {available} records exist")]
    RecordsMissing {
        /// The leaf.
        leaf: u64,
        /// Its first record.
        first: u64,
        /// One past its last record.
        end: u64,
        /// How many records were found.
        available: u64,
    },
    /// The records do not rebuild a leaf: one of them was changed, dropped, inserted or moved.
    #[error(
        "records {first}..{end} do not match leaf {leaf}: a record in that range was changed, dropped, inserted or reordered"
    )]
    LeafMismatch {
        /// The leaf.
        leaf: u64,
        /// Its first record.
        first: u64,
        /// One past its last record.
        end: u64,
    },
    /// Records follow the last leaf of an export (exports hold sealed records only).
    #[error("record {index} of the export is not sealed in any leaf")]
    UnsealedRecord {
        /// The first such record.
        index: u64,
    },
    /// A leaf is not followed by its checkpoint.
    #[error("no checkpoint for tree size {size}")]
    MissingCheckpoint {
        /// The tree size that has none.
        size: u64,
    },
    /// A checkpoint is malformed or its signature does not verify.
    #[error("checkpoint at tree size {size}: {source}")]
    BadCheckpoint {
        /// The tree size where it stands.
        size: u64,
        /// What is wrong.
        #[source]
        source: CheckpointError,
    },
    /// A checkpoint names another log.
    #[error("checkpoint at tree size {size} is for `{found}`, not `{expected}`")]
    OriginMismatch {
        /// The tree size where it stands.
        size: u64,
        /// The log's origin.
        expected: String,
        /// The checkpoint's origin.
        found: String,
    },
    /// A checkpoint claims another size than the leaves before it.
    #[error("checkpoint at tree size {size} claims size {claimed}")]
    SizeMismatch {
        /// The number of leaves before it.
        size: u64,
        /// The size it claims.
        claimed: u64,
    },
    /// A checkpoint's root is not the root of the leaves.
    #[error("checkpoint at tree size {size} has root {claimed}, the leaves give {computed}")]
    RootMismatch {
        /// The tree size.
        size: u64,
        /// The checkpoint's root.
        claimed: Hash,
        /// The leaves' root.
        computed: Hash,
    },
    /// The log is shorter than a checkpoint known from elsewhere: it was rolled back.
    #[error("the log has {have} leaves, fewer than the {known} of a known checkpoint")]
    RolledBack {
        /// The known checkpoint's size.
        known: u64,
        /// The log's size.
        have: u64,
    },
    /// The log disagrees with a checkpoint known from elsewhere: it was rewritten (forked).
    #[error("the log's root at tree size {size} differs from a known checkpoint's")]
    Forked {
        /// The tree size.
        size: u64,
    },
}

impl AuditError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
