//! The on-disk formats (docs/AUDIT.md §5) and the one verification pass shared by
//! [`AuditLog::open`](crate::AuditLog::open) and [`verify_export`](crate::verify_export).
//!
//! - `records`: frames `u32(len) ‖ record ‖ raw(check)`, `check` the first 8 bytes of the
//!   record hash.
//! - `tree`: frames `u8(type) ‖ u32(len) ‖ body ‖ raw(check)`, type `L` (a leaf) or `C` (a
//!   signed checkpoint), `check` the first 8 bytes of `SHA-256(type ‖ u32(len) ‖ body)`.
//! - `audit.meta`: three lines of text: the format, the origin, the HMAC key ID.

use std::io::{self, Read};

use crate::{
    AuditError, AuditKeyId, Checkpoint, CheckpointIn, Hash, Leaf, MerkleTree, Record, Verifier,
    merkle::{leaf_hash, root_of},
    note::MAX_NOTE_LEN,
    record::MAX_RECORD_LEN,
};

pub(crate) const META_FILE: &str = "audit.meta";
pub(crate) const RECORDS_FILE: &str = "records";
pub(crate) const TREE_FILE: &str = "tree";

pub(crate) const LEAF_FRAME: u8 = b'L';
pub(crate) const CHECKPOINT_FRAME: u8 = b'C';

const META_FORMAT: &str = "entente-audit-log v1";
const MAX_META_LEN: usize = 4096;
const CHECK_LEN: usize = 8;

/// What `audit.meta` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) origin: String,
    pub(crate) hmac_key: AuditKeyId,
}

impl Meta {
    pub(crate) fn to_text(&self) -> String {
        format!(
            "{META_FORMAT}\norigin {}\nhmac-key {}\n",
            self.origin, self.hmac_key
        )
    }

    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, AuditError> {
        let bad = |why: &str| AuditError::Meta(why.to_owned());
        if bytes.len() > MAX_META_LEN {
            return Err(bad("longer than 4096 bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text
            .strip_suffix('\n')
            .ok_or_else(|| bad("no final newline"))?
            .split('\n');
        if lines.next() != Some(META_FORMAT) {
            return Err(bad("unknown format (expected `entente-audit-log v1`)"));
        }
        let origin = lines
            .next()
            .and_then(|l| l.strip_prefix("origin "))
            .ok_or_else(|| bad("no origin line"))?;
        crate::note::check_key_name(origin).map_err(|_| bad("invalid origin"))?;
        let key = lines
            .next()
            .and_then(|l| l.strip_prefix("hmac-key "))
            .and_then(AuditKeyId::from_hex)
            .ok_or_else(|| bad("no valid hmac-key line"))?;
        if lines.next().is_some() {
            return Err(bad("unexpected lines"));
        }
        Ok(Self {
            origin: origin.to_owned(),
            hmac_key: key,
        })
    }
}

/// `u32(len) ‖ record ‖ first 8 bytes of its hash`, appended to `out`.
pub(crate) fn push_record_frame(out: &mut Vec<u8>, record: &[u8], hash: &Hash) {
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(record);
    out.extend_from_slice(hash.0.get(..CHECK_LEN).unwrap_or_default());
}

/// A tree frame, appended to `out`.
pub(crate) fn push_tree_frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let start = out.len();
    out.push(kind);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(body);
    let check = Hash::of(out.get(start..).unwrap_or_default());
    out.extend_from_slice(check.0.get(..CHECK_LEN).unwrap_or_default());
}

/// One entry of the tree file.
#[derive(Debug)]
pub(crate) enum TreeEntry {
    Leaf(Leaf),
    Checkpoint(String),
}

/// The tree file, parsed frame by frame.
#[derive(Debug)]
pub(crate) struct TreeFrames {
    /// Each entry with the offsets where its frame starts and ends.
    pub(crate) entries: Vec<(u64, u64, TreeEntry)>,
    /// Where an incomplete final frame starts, if the file ends in one.
    pub(crate) torn_at: Option<u64>,
}

/// Parses every frame of a tree file.
pub(crate) fn read_tree(mut r: impl Read, file: &'static str) -> Result<TreeFrames, AuditError> {
    let mut entries = Vec::new();
    let mut offset = 0u64;
    let corrupt = |offset, reason: &str| AuditError::Corrupt {
        file,
        offset,
        reason: reason.to_owned(),
    };
    loop {
        let mut head = [0u8; 5];
        match read_full(&mut r, &mut head).map_err(|e| AuditError::io("read", file, e))? {
            0 => break,
            5 => {}
            _ => {
                return Ok(TreeFrames {
                    entries,
                    torn_at: Some(offset),
                });
            }
        }
        let [kind, l0, l1, l2, l3] = head;
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        let torn = TreeFrames {
            entries: Vec::new(),
            torn_at: Some(offset),
        };
        let max = match kind {
            LEAF_FRAME => crate::leaf::LEAF_LEN,
            CHECKPOINT_FRAME => MAX_NOTE_LEN,
            // Zeros to the end: space a power loss left allocated, never written.
            _ if zeros_to_end(&head, &mut r).map_err(|e| AuditError::io("read", file, e))? => {
                return Ok(TreeFrames { entries, ..torn });
            }
            _ => return Err(corrupt(offset, "unknown frame type")),
        };
        if len > max || (kind == LEAF_FRAME && len != max) {
            return Err(corrupt(offset, "frame length out of range"));
        }
        let mut rest = vec![0u8; len + CHECK_LEN];
        if read_full(&mut r, &mut rest).map_err(|e| AuditError::io("read", file, e))? != rest.len()
        {
            return Ok(TreeFrames {
                entries,
                torn_at: Some(offset),
            });
        }
        let (body, check) = rest.split_at(len);
        let mut framed = Vec::with_capacity(5 + len);
        framed.extend_from_slice(&head);
        framed.extend_from_slice(body);
        if Hash::of(&framed).0.get(..CHECK_LEN) != Some(check) {
            // A frame's start that reached the disk, its end not (zeros from within it to the
            // file's end): torn.
            if zero_ended(&rest)
                && zeros_to_end(&[], &mut r).map_err(|e| AuditError::io("read", file, e))?
            {
                return Ok(TreeFrames { entries, ..torn });
            }
            return Err(corrupt(offset, "check value mismatch"));
        }
        let end = offset + (5 + len + CHECK_LEN) as u64;
        let entry = if kind == LEAF_FRAME {
            TreeEntry::Leaf(
                Leaf::from_bytes(body).map_err(|e| corrupt(offset, &format!("bad leaf: {e}")))?,
            )
        } else {
            TreeEntry::Checkpoint(
                String::from_utf8(body.to_vec())
                    .map_err(|_| corrupt(offset, "checkpoint is not UTF-8"))?,
            )
        };
        entries.push((offset, end, entry));
        offset = end;
    }
    Ok(TreeFrames {
        entries,
        torn_at: None,
    })
}

/// One record frame read from a records stream.
enum NextRecord {
    Record { hash: Hash, len: u64 },
    End,
    Torn,
}

/// Reads record frames one by one, checking each.
pub(crate) struct RecordReader<R> {
    r: R,
    file: &'static str,
    offset: u64,
    index: u64,
}

impl<R: Read> RecordReader<R> {
    pub(crate) fn new(r: R, file: &'static str) -> Self {
        Self {
            r,
            file,
            offset: 0,
            index: 0,
        }
    }

    fn next(&mut self) -> Result<NextRecord, AuditError> {
        let io = |e| AuditError::io("read", self.file, e);
        let mut len = [0u8; 4];
        match read_full(&mut self.r, &mut len).map_err(io)? {
            0 => return Ok(NextRecord::End),
            4 => {}
            _ => return Ok(NextRecord::Torn),
        }
        let len_bytes = len;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 && zeros_to_end(&len_bytes, &mut self.r).map_err(io)? {
            // Zeros to the end: space a power loss left allocated, never written.
            return Ok(NextRecord::Torn);
        }
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(AuditError::Corrupt {
                file: self.file,
                offset: self.offset,
                reason: format!("record frame length {len} out of range"),
            });
        }
        let mut rest = vec![0u8; len + CHECK_LEN];
        if read_full(&mut self.r, &mut rest).map_err(|e| AuditError::io("read", self.file, e))?
            != rest.len()
        {
            return Ok(NextRecord::Torn);
        }
        let check = rest.split_off(len);
        let hash = leaf_hash(&rest);
        let corrupt = |reason: String| AuditError::RecordCorrupt {
            index: self.index,
            offset: self.offset,
            reason,
        };
        if hash.0.get(..CHECK_LEN) != Some(check.as_slice()) {
            // A record's start that reached the disk, its end not (zeros from within it to the
            // file's end): torn.
            if zero_ended(&check)
                && zeros_to_end(&[], &mut self.r)
                    .map_err(|e| AuditError::io("read", self.file, e))?
            {
                return Ok(NextRecord::Torn);
            }
            return Err(corrupt("check value mismatch".into()));
        }
        Record::from_bytes(&rest).map_err(|e| corrupt(e.to_string()))?;
        Ok(NextRecord::Record {
            hash,
            len: (4 + len + CHECK_LEN) as u64,
        })
    }
}

/// How a scan treats a log's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Opening a log: an incomplete final write, or leaves after the last checkpoint, are a
    /// crash's leftovers, cut off when `repair` is set; records after the last leaf are pending.
    Open { repair: bool },
    /// Verifying an export: it must be complete and hold sealed records only.
    Export,
}

/// What a scan found, every part of it verified.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    /// Each record's frame offset.
    pub(crate) offsets: Vec<u64>,
    /// Each record's hash, when asked for.
    pub(crate) hashes: Vec<Hash>,
    /// The hashes of records after the last leaf.
    pub(crate) pending: Vec<Hash>,
    pub(crate) leaves: Vec<Leaf>,
    pub(crate) tree: MerkleTree,
    pub(crate) checkpoints: Vec<Checkpoint>,
    /// The verified length of the records file.
    pub(crate) records_end: u64,
    /// The verified length of the tree file.
    pub(crate) tree_end: u64,
    /// What was cut off (only in [`Mode::Open`] with `repair`).
    pub(crate) cut: Cut,
}

/// What a scan in open mode found after the last complete, checkpointed state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cut {
    pub(crate) records_torn_at: Option<u64>,
    pub(crate) tree_torn_at: Option<u64>,
    pub(crate) unsigned_leaves: u64,
}

/// Verifies a whole log: every record decoded and hashed, every leaf rebuilt from its
/// records, every checkpoint's signature checked and its root recomputed.
pub(crate) fn scan(
    meta: &Meta,
    verifier: &Verifier,
    tree: TreeFrames,
    records: impl Read,
    (records_file, tree_file): (&'static str, &'static str),
    mode: Mode,
    keep_hashes: bool,
) -> Result<Scanned, AuditError> {
    let repair = matches!(mode, Mode::Open { repair: true });
    let mut out = Scanned::default();

    // The committed part of the tree file ends with its last checkpoint.
    let last_checkpoint = tree
        .entries
        .iter()
        .rposition(|(_, _, e)| matches!(e, TreeEntry::Checkpoint(_)));
    let committed = last_checkpoint.map_or(0, |i| i + 1);
    let unsigned = tree.entries.len() - committed;
    if let Some(offset) = tree.torn_at {
        if !repair {
            return Err(AuditError::TornTail {
                file: tree_file,
                offset,
            });
        }
        out.cut.tree_torn_at = Some(offset);
    }
    if unsigned > 0 {
        let size = tree
            .entries
            .iter()
            .take(committed)
            .filter(|(_, _, e)| matches!(e, TreeEntry::Leaf(_)))
            .count() as u64;
        if !repair {
            return Err(AuditError::MissingCheckpoint { size: size + 1 });
        }
        out.cut.unsigned_leaves = unsigned as u64;
    }
    out.tree_end = last_checkpoint
        .and_then(|i| tree.entries.get(i))
        .map_or(0, |(_, end, _)| *end);

    let mut reader = RecordReader::new(records, records_file);
    let mut after_checkpoint = false;
    for (_, _, entry) in tree.entries.into_iter().take(committed) {
        let size = out.tree.size();
        match entry {
            TreeEntry::Leaf(leaf) => {
                if !after_checkpoint {
                    return Err(AuditError::MissingCheckpoint { size });
                }
                after_checkpoint = false;
                let expected = reader.index;
                if leaf.first_record != expected {
                    return Err(AuditError::LeafOutOfOrder {
                        leaf: size,
                        expected,
                        found: leaf.first_record,
                    });
                }
                let mut hashes = Vec::with_capacity(leaf.count as usize);
                for _ in 0..leaf.count {
                    match reader.next()? {
                        NextRecord::Record { hash, len, .. } => {
                            out.offsets.push(reader.offset);
                            reader.offset += len;
                            reader.index += 1;
                            hashes.push(hash);
                        }
                        NextRecord::End | NextRecord::Torn => {
                            return Err(AuditError::RecordsMissing {
                                leaf: size,
                                first: leaf.first_record,
                                end: leaf.records().end,
                                available: reader.index,
                            });
                        }
                    }
                }
                if root_of(&hashes) != leaf.records_root {
                    return Err(AuditError::LeafMismatch {
                        leaf: size,
                        first: leaf.first_record,
                        end: leaf.records().end,
                    });
                }
                if keep_hashes {
                    out.hashes.extend_from_slice(&hashes);
                }
                out.tree.push(leaf.hash());
                out.leaves.push(leaf);
            }
            TreeEntry::Checkpoint(note) => {
                let checkpoint = CheckpointIn::parse(&note)
                    .and_then(|c| c.verify(verifier))
                    .map_err(|source| AuditError::BadCheckpoint { size, source })?;
                if checkpoint.origin() != meta.origin {
                    return Err(AuditError::OriginMismatch {
                        size,
                        expected: meta.origin.clone(),
                        found: checkpoint.origin().to_owned(),
                    });
                }
                if checkpoint.size() != size {
                    return Err(AuditError::SizeMismatch {
                        size,
                        claimed: checkpoint.size(),
                    });
                }
                let computed = out.tree.root(size)?;
                if checkpoint.root() != computed {
                    return Err(AuditError::RootMismatch {
                        size,
                        claimed: checkpoint.root(),
                        computed,
                    });
                }
                out.checkpoints.push(checkpoint);
                after_checkpoint = true;
            }
        }
    }
    if out.checkpoints.is_empty() {
        return Err(AuditError::MissingCheckpoint { size: 0 });
    }

    // Records after the last leaf: pending in a live log, tampering in an export.
    loop {
        match reader.next()? {
            NextRecord::Record { hash, len, .. } => {
                if mode == Mode::Export {
                    return Err(AuditError::UnsealedRecord {
                        index: reader.index,
                    });
                }
                out.offsets.push(reader.offset);
                reader.offset += len;
                reader.index += 1;
                out.pending.push(hash);
            }
            NextRecord::End => break,
            NextRecord::Torn => {
                if !repair {
                    return Err(AuditError::TornTail {
                        file: records_file,
                        offset: reader.offset,
                    });
                }
                out.cut.records_torn_at = Some(reader.offset);
                break;
            }
        }
    }
    out.records_end = reader.offset;
    Ok(out)
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
/// Whether a frame that fails its check ends in zeros: with nothing but zeros after it, what
/// reached the disk is the frame's start, the rest space a power loss left unwritten (blocks
/// reach the disk whole or not at all, wherever a frame ends in them).
fn zero_ended(frame: &[u8]) -> bool {
    frame.last() == Some(&0)
}

/// Whether `read` (the bytes read of the frame in hand) and everything left in `r` are zeros:
/// the tail of a file a power loss extended without writing it. Reads `r` to its end.
fn zeros_to_end(read: &[u8], r: &mut impl Read) -> io::Result<bool> {
    if read.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                if buf.get(..n).is_some_and(|b| b.iter().any(|&x| x != 0)) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while let Some(rest) = buf.get_mut(n..) {
        if rest.is_empty() {
            break;
        }
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
