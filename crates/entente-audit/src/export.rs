//! Offline verification of an exported log (docs/AUDIT.md §6).
//!
//! ```text
//! export = "entente-audit-export v1\n"
//!          ‖ u32(len) ‖ audit.meta
//!          ‖ u64(len) ‖ the records file, sealed records only
//!          ‖ u64(len) ‖ the tree file
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::{
    AuditError, AuditKeyId, Checkpoint, ConsistencyProof, Hash, InclusionProof, Leaf, MerkleTree,
    Record, RecordProof, Verifier,
    log::record_proof,
    store::{self, Meta, Mode},
};

/// The first line of every export.
pub const EXPORT_MAGIC: &str = "entente-audit-export v1\n";

const RECORDS: &str = "export records";
const TREE: &str = "export tree";

/// An exported log that verified: every checkpoint signed by a trusted key, every leaf rebuilt
/// from its records, every checkpoint's root rebuilt from the leaves.
pub struct VerifiedLog {
    origin: String,
    hmac_key: AuditKeyId,
    leaves: Vec<Leaf>,
    tree: MerkleTree,
    checkpoints: Vec<Checkpoint>,
    hashes: Vec<Hash>,
}

/// Verifies the export at `path` against `verifier` (the log's checkpoint keys, current and
/// earlier). Any tampering — a record changed, dropped, reordered or inserted, a leaf or
/// checkpoint altered, forged or removed — is an error naming its position.
///
/// A log cut back to an earlier state verifies on its own; compare it with a checkpoint kept
/// elsewhere ([`VerifiedLog::check_against`]) to catch that.
pub fn verify_export(
    path: impl AsRef<Path>,
    verifier: &Verifier,
) -> Result<VerifiedLog, AuditError> {
    let path = path.as_ref();
    let io = |e| AuditError::io("read", path, e);
    let corrupt = |offset: u64, reason: &str| AuditError::Corrupt {
        file: "export",
        offset,
        reason: reason.to_owned(),
    };
    let mut file = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
    let total = file.metadata().map_err(io)?.len();

    let mut magic = [0u8; EXPORT_MAGIC.len()];
    file.read_exact(&mut magic)
        .map_err(|_| corrupt(0, "not an audit log export"))?;
    if magic != EXPORT_MAGIC.as_bytes() {
        return Err(corrupt(0, "not an audit log export"));
    }
    let mut pos = magic.len() as u64;
    let meta_len = u64::from(read_u32(&mut file).map_err(|_| corrupt(pos, "truncated"))?);
    if meta_len > 4096 {
        return Err(corrupt(pos, "metadata longer than 4096 bytes"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact(&mut meta)
        .map_err(|_| corrupt(pos, "truncated"))?;
    let meta = Meta::parse(&meta)?;
    pos += 4 + meta_len;
    let records_len = read_u64(&mut file).map_err(|_| corrupt(pos, "truncated"))?;
    let records_at = pos + 8;
    let tree_len_at = records_at
        .checked_add(records_len)
        .filter(|end| *end <= total)
        .ok_or_else(|| corrupt(pos, "records section runs past the end"))?;
    file.seek(SeekFrom::Start(tree_len_at)).map_err(io)?;
    let tree_len = read_u64(&mut file).map_err(|_| corrupt(tree_len_at, "truncated"))?;
    if tree_len_at
        .checked_add(8)
        .and_then(|p| p.checked_add(tree_len))
        != Some(total)
    {
        return Err(corrupt(
            tree_len_at,
            "section lengths do not add up to the file",
        ));
    }
    let frames = store::read_tree(BufReader::new(&mut file), TREE)?;

    let mut records = File::open(path).map_err(|e| AuditError::io("open", path, e))?;
    records.seek(SeekFrom::Start(records_at)).map_err(io)?;
    let scanned = store::scan(
        &meta,
        verifier,
        frames,
        BufReader::with_capacity(1 << 20, records.take(records_len)),
        (RECORDS, TREE),
        Mode::Export,
        true,
    )?;
    Ok(VerifiedLog {
        origin: meta.origin,
        hmac_key: meta.hmac_key,
        leaves: scanned.leaves,
        tree: scanned.tree,
        checkpoints: scanned.checkpoints,
        hashes: scanned.hashes,
    })
}

impl std::fmt::Debug for VerifiedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedLog")
            .field("origin", &self.origin)
            .field("size", &self.tree.size())
            .field("records", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

impl VerifiedLog {
    /// The log's origin.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The ID of the HMAC key its sensitive fields are protected with.
    pub fn hmac_key(&self) -> AuditKeyId {
        self.hmac_key
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// The number of records.
    pub fn record_count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// The latest checkpoint.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoints.last()
    }

    /// The leaves.
    pub fn leaves(&self) -> &[Leaf] {
        &self.leaves
    }

    /// The hash of record `index`.
    pub fn record_hash(&self, index: u64) -> Option<Hash> {
        self.hashes.get(usize::try_from(index).ok()?).copied()
    }

    /// The index of the record with this hash, if the log holds it.
    pub fn find(&self, hash: &Hash) -> Option<u64> {
        self.hashes.iter().position(|h| h == hash).map(|i| i as u64)
    }

    /// The index of `record`, if the log holds it.
    pub fn find_record(&self, record: &Record) -> Result<Option<u64>, AuditError> {
        Ok(self.find(&record.hash()?))
    }

    /// The proof that record `index` is in the tree of `tree_size` leaves.
    pub fn record_proof(&self, index: u64, tree_size: u64) -> Result<RecordProof, AuditError> {
        record_proof(&self.leaves, &self.tree, index, tree_size, |leaf| {
            let range = leaf.records();
            let (start, end) = (
                usize::try_from(range.start).unwrap_or(usize::MAX),
                usize::try_from(range.end).unwrap_or(usize::MAX),
            );
            self.hashes
                .get(start..end)
                .map(<[Hash]>::to_vec)
                .ok_or(AuditError::NoSuchRecord {
                    index,
                    count: self.record_count(),
                })
        })
    }

    /// The proof that leaf `leaf_index` is in the tree of `tree_size` leaves.
    pub fn inclusion_proof(
        &self,
        leaf_index: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, AuditError> {
        Ok(self.tree.inclusion_proof(leaf_index, tree_size)?)
    }

    /// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<ConsistencyProof, AuditError> {
        Ok(self.tree.consistency_proof(old, new)?)
    }

    /// Checks the log against a checkpoint obtained elsewhere (published, witnessed, kept by
    /// an auditor): the log must reach its size and have its root there. Catches a log that
    /// was cut back or rewritten, which verifies on its own.
    pub fn check_against(&self, known: &Checkpoint) -> Result<(), AuditError> {
        if known.origin() != self.origin {
            return Err(AuditError::OriginMismatch {
                size: known.size(),
                expected: self.origin.clone(),
                found: known.origin().to_owned(),
            });
        }
        if known.size() > self.size() {
            return Err(AuditError::RolledBack {
                known: known.size(),
                have: self.size(),
            });
        }
        if self.tree.root(known.size())? != known.root() {
            return Err(AuditError::Forked { size: known.size() });
        }
        Ok(())
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}
