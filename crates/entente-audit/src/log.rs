//! [`AuditLog`]: the log directory, with one writer.
//!
//! Every append is written and `fdatasync`ed before it is reported durable. A write that fails
//! is undone as far as the disk allows, the in-memory state does not advance, and the log then
//! refuses every write ([`AuditError::Failed`]) until it is reopened: after a failed `fsync` the
//! kernel may already have dropped the dirty pages, so only a fresh, fully verified read of the
//! files says what is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::ops::Range;
use std::os::unix::fs::{DirBuilderExt as _, FileExt, MetadataExt, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use crate::{
    AuditError, AuditKey, Checkpoint, ConsistencyProof, Hash, InclusionProof, Leaf, MerkleTree,
    NoteSigner, ProofError, Record, Verifier, VerifierKey,
    leaf::MAX_LEAF_RECORDS,
    merkle::{leaf_hash, root_of},
    store::{
        self, CHECKPOINT_FRAME, LEAF_FRAME, META_FILE, Meta, Mode, RECORDS_FILE, TREE_FILE,
        push_record_frame, push_tree_frame,
    },
};

/// The most records [`AuditLog::records`] returns at once.
pub const MAX_READ: u64 = 65_536;

/// How a log is run.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Seal pending records into a leaf (and sign a checkpoint) as soon as this many are
    /// pending. 1 to 65 536; default 1000.
    pub seal_after: u32,
    /// At open, cut off an incomplete final write (a crash during an append or a seal that was
    /// never reported durable) instead of refusing the log. Default true.
    pub repair_torn_tail: bool,
    /// Keys that signed earlier checkpoints of this log, before a key rotation. The signer's
    /// own key is always trusted.
    pub trusted_keys: Vec<VerifierKey>,
    /// Keep every checkpoint in memory ([`AuditLog::checkpoints`]); without, only the latest
    /// (a log sealed every second makes ~85 000 a day, ~40 MB; each is still checked at open
    /// and stays in the files and exports). Default true.
    pub keep_checkpoints: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            seal_after: 1000,
            repair_torn_tail: true,
            trusted_keys: Vec::new(),
            keep_checkpoints: true,
        }
    }
}

/// Where an appended record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef {
    /// Its index in the log, from 0.
    pub index: u64,
    /// Its hash ([`Record::hash`]).
    pub hash: Hash,
}

/// What `open` cut off after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The offset in `records` where an incomplete record frame started.
    pub records_torn_at: Option<u64>,
    /// The offset in `tree` where an incomplete frame started.
    pub tree_torn_at: Option<u64>,
    /// Leaves written without their checkpoint, dropped (their records are pending again).
    pub unsigned_leaves: u64,
    /// The bytes cut off, each file's kept beside the log before it was cut: where, and how
    /// many. Nothing is thrown away: a crash leaves only bytes no append or seal reported
    /// durable, but damage to a length field near a file's end looks the same.
    pub kept: Vec<(PathBuf, u64)>,
}

/// The proof that one record is in the log at a given tree size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordProof {
    /// The record's index.
    pub index: u64,
    /// The index of the leaf that seals it.
    pub leaf_index: u64,
    /// That leaf.
    pub leaf: Leaf,
    /// The record's path in the leaf's tree of records.
    pub record_path: InclusionProof,
    /// The leaf's path in the log's tree.
    pub log_path: InclusionProof,
}

impl RecordProof {
    /// Checks that the record with hash `record` is at `self.index` in the log of
    /// `checkpoint`.
    pub fn verify(&self, record: &Hash, checkpoint: &Checkpoint) -> Result<(), ProofError> {
        let within = self.index.wrapping_sub(self.leaf.first_record);
        if !self.leaf.records().contains(&self.index)
            || self.record_path.index != within
            || self.record_path.size != u64::from(self.leaf.count)
        {
            return Err(ProofError::IndexOutOfRange {
                index: self.index,
                size: self.leaf.records().end,
            });
        }
        self.record_path.verify(record, &self.leaf.records_root)?;
        if self.log_path.index != self.leaf_index {
            return Err(ProofError::IndexOutOfRange {
                index: self.leaf_index,
                size: self.log_path.size,
            });
        }
        checkpoint.verify_inclusion(&self.leaf.hash(), &self.log_path)
    }
}

/// Checks that `record` is at `proof.index` in the log of `checkpoint`.
pub fn verify_inclusion(
    record: &Record,
    proof: &RecordProof,
    checkpoint: &Checkpoint,
) -> Result<(), AuditError> {
    Ok(proof.verify(&record.hash()?, checkpoint)?)
}

/// An open audit log. One writer per directory (the records file is locked).
pub struct AuditLog {
    dir: PathBuf,
    meta: Meta,
    signer: Box<dyn NoteSigner>,
    key: AuditKey,
    options: AuditOptions,
    verifier: Verifier,
    records_file: File,
    records_len: u64,
    tree_file: File,
    tree_len: u64,
    offsets: Vec<u64>,
    pending: Vec<Hash>,
    leaves: Vec<Leaf>,
    tree: MerkleTree,
    checkpoints: Vec<Checkpoint>,
    latest: Checkpoint,
    failed: Option<String>,
    recovery: Option<Recovery>,
}

impl AuditLog {
    /// Creates a log in `dir`, which must not exist or be empty. Its origin is the signer's key
    /// name; it starts with a signed checkpoint of the empty tree. The directory appears
    /// complete or not at all (it is built beside `dir` and renamed into place).
    pub fn create(
        dir: impl AsRef<Path>,
        signer: Box<dyn NoteSigner>,
        key: AuditKey,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let dir = dir.as_ref();
        check_options(&options)?;
        if let Ok(mut entries) = fs::read_dir(dir)
            && entries.next().is_some()
        {
            return Err(AuditError::Exists { path: dir.into() });
        }
        let name = dir
            .file_name()
            .ok_or(AuditError::Options("the log directory needs a name"))?;
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut staging_name = std::ffi::OsString::from(".");
        staging_name.push(name);
        staging_name.push(".creating");
        let staging = parent.join(staging_name);
        match fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io("remove", &staging, e)),
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&staging)
            .map_err(|e| AuditError::io("create", &staging, e))?;

        let meta = Meta {
            origin: signer.verifier_key().name().to_owned(),
            hmac_key: key.id(),
        };
        let empty = Checkpoint::sign(0, crate::merkle::empty_root(), signer.as_ref())
            .map_err(sign_error)?;
        let mut tree = Vec::new();
        push_tree_frame(&mut tree, CHECKPOINT_FRAME, empty.as_str().as_bytes());
        for (file, bytes) in [
            (RECORDS_FILE, &[][..]),
            (TREE_FILE, &tree[..]),
            (META_FILE, meta.to_text().as_bytes()),
        ] {
            let path = staging.join(file);
            let mut f = private_file(&path).map_err(|e| AuditError::io("create", &path, e))?;
            f.write_all(bytes)
                .and_then(|()| f.sync_all())
                .map_err(|e| AuditError::io("write", &path, e))?;
        }
        sync_dir(&staging)?;
        fs::rename(&staging, dir).map_err(|e| AuditError::io("rename into place", dir, e))?;
        sync_dir(&parent)?;
        Self::open(dir, signer, key, options)
    }

    /// Opens the log in `dir` and verifies all of it: every record decoded and rehashed,
    /// every leaf rebuilt from its records, every checkpoint's signature checked (against the
    /// signer's key and `options.trusted_keys`) and its root recomputed. A corrupted or
    /// truncated log is refused with an error naming the position; an incomplete final write
    /// is cut off (see [`AuditOptions::repair_torn_tail`] and [`AuditLog::recovery`]).
    pub fn open(
        dir: impl AsRef<Path>,
        signer: Box<dyn NoteSigner>,
        key: AuditKey,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let dir = dir.as_ref().to_path_buf();
        check_options(&options)?;
        let meta_path = dir.join(META_FILE);
        let meta_file = match File::open(&meta_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AuditError::NotFound { path: dir });
            }
            Err(e) => return Err(AuditError::io("open", &meta_path, e)),
        };
        let mut meta_bytes = Vec::new();
        meta_file
            .take(4097)
            .read_to_end(&mut meta_bytes)
            .map_err(|e| AuditError::io("read", &meta_path, e))?;
        let meta = Meta::parse(&meta_bytes)?;
        if meta.hmac_key != key.id() {
            return Err(AuditError::WrongKey {
                expected: meta.hmac_key,
                given: key.id(),
            });
        }
        let signer_name = signer.verifier_key().name();
        if signer_name != meta.origin {
            return Err(AuditError::SignerMismatch {
                signer: signer_name.to_owned(),
                origin: meta.origin,
            });
        }
        let mut verifier = Verifier::new(signer.verifier_key().clone());
        for k in &options.trusted_keys {
            verifier.add(k.clone());
        }

        let records_path = dir.join(RECORDS_FILE);
        let tree_path = dir.join(TREE_FILE);
        let records_file = open_rw(&records_path)?;
        if let Err(e) = records_file.try_lock() {
            return Err(match e {
                fs::TryLockError::WouldBlock => AuditError::Locked { path: dir },
                fs::TryLockError::Error(e) => AuditError::io("lock", &records_path, e),
            });
        }
        let tree_file = open_rw(&tree_path)?;

        let frames = store::read_tree(BufReader::new(&tree_file), TREE_FILE)?;
        let scanned = store::scan(
            &meta,
            &verifier,
            frames,
            BufReader::with_capacity(1 << 20, &records_file),
            (RECORDS_FILE, TREE_FILE),
            Mode::Open {
                repair: options.repair_torn_tail,
            },
            false,
        )?;
        let recovery = if scanned.cut == store::Cut::default() {
            None
        } else {
            // Only what no append or seal ever reported durable is cut: an incomplete final
            // frame, and leaves whose checkpoint was not written. A damaged length field near
            // the end looks the same, so what is cut is first kept beside the log.
            let mut kept = Vec::new();
            for (file, path, end, name) in [
                (
                    &records_file,
                    &records_path,
                    scanned.records_end,
                    RECORDS_FILE,
                ),
                (&tree_file, &tree_path, scanned.tree_end, TREE_FILE),
            ] {
                let len = file
                    .metadata()
                    .map_err(|e| AuditError::io("stat", path, e))?
                    .len();
                if len > end {
                    kept.push((keep_cut(&dir, name, file, end..len)?, len - end));
                }
            }
            if !kept.is_empty() {
                sync_dir(&dir)?;
            }
            records_file
                .set_len(scanned.records_end)
                .and_then(|()| records_file.sync_all())
                .map_err(|e| AuditError::io("truncate", &records_path, e))?;
            tree_file
                .set_len(scanned.tree_end)
                .and_then(|()| tree_file.sync_all())
                .map_err(|e| AuditError::io("truncate", &tree_path, e))?;
            Some(Recovery {
                records_torn_at: scanned.cut.records_torn_at,
                tree_torn_at: scanned.cut.tree_torn_at,
                unsigned_leaves: scanned.cut.unsigned_leaves,
                kept,
            })
        };
        let latest = scanned
            .checkpoints
            .last()
            .cloned()
            .ok_or(AuditError::MissingCheckpoint { size: 0 })?;
        let keep_checkpoints = options.keep_checkpoints;
        Ok(Self {
            dir,
            meta,
            signer,
            key,
            options,
            verifier,
            records_file,
            records_len: scanned.records_end,
            tree_file,
            tree_len: scanned.tree_end,
            offsets: scanned.offsets,
            pending: scanned.pending,
            leaves: scanned.leaves,
            tree: scanned.tree,
            checkpoints: if keep_checkpoints {
                scanned.checkpoints
            } else {
                Vec::new()
            },
            latest,
            failed: None,
            recovery,
        })
    }

    /// Appends one record durably; seals a leaf when `seal_after` records are pending.
    pub fn append(&mut self, record: &Record) -> Result<RecordRef, AuditError> {
        let refs = self.append_all(std::slice::from_ref(record))?;
        refs.into_iter()
            .next()
            .ok_or(AuditError::Failed("no record appended".into()))
    }

    /// Appends records with one write and one `fdatasync` (group commit), then seals as many
    /// leaves as are due. Either every record is appended or none is.
    ///
    /// If a seal fails after the records were made durable, the records stay (pending) and the
    /// error is returned: a record can exist for an operation that was then refused, never the
    /// reverse.
    pub fn append_all(&mut self, records: &[Record]) -> Result<Vec<RecordRef>, AuditError> {
        self.writable()?;
        let mut buf = Vec::with_capacity(records.len() * 256);
        let mut added = Vec::with_capacity(records.len());
        for record in records {
            let bytes = record.to_bytes()?;
            let hash = leaf_hash(&bytes);
            let offset = self.records_len + buf.len() as u64;
            push_record_frame(&mut buf, &bytes, &hash);
            added.push((offset, hash));
        }
        self.write_records(&buf)?;
        self.records_len += buf.len() as u64;
        let first = self.offsets.len() as u64;
        let mut refs = Vec::with_capacity(added.len());
        for (i, (offset, hash)) in added.into_iter().enumerate() {
            self.offsets.push(offset);
            self.pending.push(hash);
            refs.push(RecordRef {
                index: first + i as u64,
                hash,
            });
        }
        if self.pending.len() >= self.options.seal_after as usize {
            self.seal_leaves(true)?;
        }
        Ok(refs)
    }

    /// Seals every pending record into leaves (of at most `seal_after` records) and returns the
    /// latest checkpoint. With nothing pending it returns the current checkpoint.
    pub fn seal(&mut self) -> Result<Checkpoint, AuditError> {
        self.writable()?;
        if !self.pending.is_empty() {
            self.seal_leaves(false)?;
        }
        Ok(self.latest.clone())
    }

    /// Rotates the checkpoint key: seals what is pending under the current key, then signs
    /// every later checkpoint with `signer`, whose key must have the log's origin as its name.
    /// The old key stays trusted (this log's [`verifier`](Self::verifier) lists the new key
    /// first, then the earlier ones); reopen the log with the old keys in
    /// [`AuditOptions::trusted_keys`]. Returns the checkpoint the old key signed last.
    pub fn rotate_signer(&mut self, signer: Box<dyn NoteSigner>) -> Result<Checkpoint, AuditError> {
        self.writable()?;
        let name = signer.verifier_key().name();
        if name != self.meta.origin {
            return Err(AuditError::SignerMismatch {
                signer: name.to_owned(),
                origin: self.meta.origin.clone(),
            });
        }
        let last = self.seal()?;
        let mut verifier = Verifier::new(signer.verifier_key().clone());
        for key in self.verifier.keys() {
            verifier.add(key.clone());
        }
        self.verifier = verifier;
        self.signer = signer;
        Ok(last)
    }

    /// The latest checkpoint.
    pub fn checkpoint(&self) -> &Checkpoint {
        &self.latest
    }

    /// Every checkpoint, oldest first; none without [`AuditOptions::keep_checkpoints`] (the
    /// latest is [`checkpoint`](Self::checkpoint)).
    pub fn checkpoints(&self) -> &[Checkpoint] {
        &self.checkpoints
    }

    /// The log's origin (its checkpoint key's name).
    pub fn origin(&self) -> &str {
        &self.meta.origin
    }

    /// The verifier this log checks its checkpoints with.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The log's HMAC key.
    pub fn key(&self) -> &AuditKey {
        &self.key
    }

    /// The tree size: the number of leaves, all checkpointed.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// How many records the log holds, sealed or pending.
    pub fn record_count(&self) -> u64 {
        self.offsets.len() as u64
    }

    /// How many records are not yet sealed into a leaf.
    pub fn pending(&self) -> u64 {
        self.pending.len() as u64
    }

    /// What `open` cut off after a crash, if anything.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// Leaf `index`.
    pub fn leaf(&self, index: u64) -> Option<Leaf> {
        self.leaves.get(usize::try_from(index).ok()?).copied()
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

    /// The proof that record `index` is in the tree of `tree_size` leaves.
    pub fn record_proof(&self, index: u64, tree_size: u64) -> Result<RecordProof, AuditError> {
        record_proof(&self.leaves, &self.tree, index, tree_size, |leaf| {
            leaf.records()
                .map(|i| self.read_record(i).map(|(bytes, _)| leaf_hash(&bytes)))
                .collect()
        })
    }

    /// Records `range` (at most [`MAX_READ`] of them), read back and checked.
    pub fn records(&self, range: Range<u64>) -> Result<Vec<Record>, AuditError> {
        if range.end > self.record_count() {
            return Err(AuditError::NoSuchRecord {
                index: range.end.saturating_sub(1),
                count: self.record_count(),
            });
        }
        if range.end.saturating_sub(range.start) > MAX_READ {
            return Err(AuditError::Options("at most 65536 records per read"));
        }
        range.map(|i| self.read_record(i).map(|(_, r)| r)).collect()
    }

    /// Writes the whole sealed log — metadata, sealed records, leaves and checkpoints — to one
    /// file (docs/AUDIT.md §6), atomically. Pending records are not exported: [`seal`] first.
    ///
    /// [`seal`]: Self::seal
    pub fn export(&self, path: impl AsRef<Path>) -> Result<(), AuditError> {
        let path = path.as_ref();
        let sealed = self.offsets.len() - self.pending.len();
        let records_end = self
            .offsets
            .get(sealed)
            .copied()
            .unwrap_or(self.records_len);
        let mut tmp_name = path.as_os_str().to_os_string();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let io = |op, e| AuditError::io(op, path, e);
        let mut out = std::io::BufWriter::new(private_file(&tmp).map_err(|e| io("create", e))?);
        let meta = self.meta.to_text();
        let mut head = Vec::new();
        head.extend_from_slice(crate::export::EXPORT_MAGIC.as_bytes());
        head.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        head.extend_from_slice(meta.as_bytes());
        head.extend_from_slice(&records_end.to_be_bytes());
        out.write_all(&head).map_err(|e| io("write", e))?;
        copy_range(&self.records_file, 0..records_end, &mut out).map_err(|e| io("write", e))?;
        out.write_all(&self.tree_len.to_be_bytes())
            .map_err(|e| io("write", e))?;
        copy_range(&self.tree_file, 0..self.tree_len, &mut out).map_err(|e| io("write", e))?;
        let file = out.into_inner().map_err(|e| io("write", e.into_error()))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        fs::rename(&tmp, path).map_err(|e| io("rename", e))?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(())
    }

    // === internals ===

    fn writable(&self) -> Result<(), AuditError> {
        match &self.failed {
            Some(why) => Err(AuditError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Seals pending records into leaves of `seal_after` records (and, unless `only_full`, a
    /// last smaller one): one write and one `fdatasync` for all the leaves and their
    /// checkpoints. On failure nothing in memory changes.
    fn seal_leaves(&mut self, only_full: bool) -> Result<(), AuditError> {
        let max = self.options.seal_after as usize;
        let old_size = self.tree.size();
        let mut buf = Vec::new();
        let mut made = Vec::new();
        let mut sealed = 0usize;
        let first_pending = (self.offsets.len() - self.pending.len()) as u64;
        while sealed < self.pending.len() {
            let n = max.min(self.pending.len() - sealed);
            if only_full && n < max {
                break;
            }
            let hashes = self.pending.get(sealed..sealed + n).unwrap_or_default();
            let leaf = Leaf {
                first_record: first_pending + sealed as u64,
                count: n as u32,
                records_root: root_of(hashes),
            };
            self.tree.push(leaf.hash());
            let size = self.tree.size();
            let checkpoint = self
                .tree
                .root(size)
                .map_err(AuditError::from)
                .and_then(|root| {
                    Checkpoint::sign(size, root, self.signer.as_ref()).map_err(sign_error)
                });
            let checkpoint = match checkpoint {
                Ok(c) => c,
                Err(e) => {
                    self.tree.truncate(old_size);
                    return Err(e);
                }
            };
            push_tree_frame(&mut buf, LEAF_FRAME, &leaf.to_bytes());
            push_tree_frame(&mut buf, CHECKPOINT_FRAME, checkpoint.as_str().as_bytes());
            made.push((leaf, checkpoint));
            sealed += n;
        }
        if let Err(e) = self.write_tree(&buf) {
            self.tree.truncate(old_size);
            return Err(e);
        }
        self.tree_len += buf.len() as u64;
        for (leaf, checkpoint) in made {
            self.leaves.push(leaf);
            if self.options.keep_checkpoints {
                self.checkpoints.push(checkpoint.clone());
            }
            self.latest = checkpoint;
        }
        self.pending.drain(..sealed);
        Ok(())
    }

    fn write_records(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        self.still_in_place(RECORDS_FILE)?;
        let result = write_durably(&mut self.records_file, self.records_len, buf);
        self.fail_on(result, RECORDS_FILE)
    }

    fn write_tree(&mut self, buf: &[u8]) -> Result<(), AuditError> {
        self.still_in_place(TREE_FILE)?;
        let result = write_durably(&mut self.tree_file, self.tree_len, buf);
        self.fail_on(result, TREE_FILE)
    }

    /// Checks that the file's path still names the file this log has open (one `stat`), and
    /// that the file is as long as the log wrote it, so appends never go to a file that was
    /// deleted or replaced under the log, nor after bytes something else wrote to it (the
    /// offsets in memory would then name those bytes as records).
    fn still_in_place(&mut self, name: &str) -> Result<(), AuditError> {
        let path = self.dir.join(name);
        let (file, written) = if name == RECORDS_FILE {
            (&self.records_file, self.records_len)
        } else {
            (&self.tree_file, self.tree_len)
        };
        let (same, len) = match (fs::symlink_metadata(&path), file.metadata()) {
            (Ok(on_disk), Ok(open)) => (
                on_disk.dev() == open.dev() && on_disk.ino() == open.ino(),
                open.len(),
            ),
            _ => (false, 0),
        };
        if !same {
            self.failed = Some(format!("`{name}` was removed or replaced"));
            Err(AuditError::Replaced { path })
        } else if len != written {
            self.failed = Some(format!(
                "`{name}` is {len} bytes while the log wrote {written}"
            ));
            Err(AuditError::Resized { path, len, written })
        } else {
            Ok(())
        }
    }

    fn fail_on(&mut self, result: std::io::Result<()>, file: &str) -> Result<(), AuditError> {
        result.map_err(|e| {
            self.failed = Some(format!("appending to `{file}` failed: {e}"));
            AuditError::io("append to", self.dir.join(file), e)
        })
    }

    fn read_record(&self, index: u64) -> Result<(Vec<u8>, Record), AuditError> {
        let offset = usize::try_from(index)
            .ok()
            .and_then(|i| self.offsets.get(i))
            .copied()
            .ok_or(AuditError::NoSuchRecord {
                index,
                count: self.record_count(),
            })?;
        let path = || self.dir.join(RECORDS_FILE);
        let mut len = [0u8; 4];
        self.records_file
            .read_exact_at(&mut len, offset)
            .map_err(|e| AuditError::io("read", path(), e))?;
        let len = u32::from_be_bytes(len) as usize;
        let corrupt = |reason: String| AuditError::RecordCorrupt {
            index,
            offset,
            reason,
        };
        if len > crate::record::MAX_RECORD_LEN {
            return Err(corrupt("frame length out of range".into()));
        }
        let mut buf = vec![0u8; len + 8];
        self.records_file
            .read_exact_at(&mut buf, offset + 4)
            .map_err(|e| AuditError::io("read", path(), e))?;
        let check = buf.split_off(len);
        let hash = leaf_hash(&buf);
        if hash.0.get(..8) != Some(check.as_slice()) {
            return Err(corrupt("check value mismatch".into()));
        }
        let record = Record::from_bytes(&buf).map_err(|e| corrupt(e.to_string()))?;
        Ok((buf, record))
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("origin", &self.meta.origin)
            .field("size", &self.tree.size())
            .field("records", &self.offsets.len())
            .field("pending", &self.pending.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// A record proof from a log's leaves and tree; `hashes` gives the record hashes of a leaf.
pub(crate) fn record_proof(
    leaves: &[Leaf],
    tree: &MerkleTree,
    index: u64,
    tree_size: u64,
    hashes: impl FnOnce(&Leaf) -> Result<Vec<Hash>, AuditError>,
) -> Result<RecordProof, AuditError> {
    if tree_size > tree.size() {
        return Err(ProofError::BadSizes {
            old: tree_size,
            new: tree.size(),
        }
        .into());
    }
    let leaf_index = leaves.partition_point(|l| l.first_record <= index);
    let found = leaf_index
        .checked_sub(1)
        .and_then(|i| leaves.get(i).map(|l| (i, *l)))
        .filter(|(i, l)| l.records().contains(&index) && (*i as u64) < tree_size);
    let Some((leaf_index, leaf)) = found else {
        return Err(AuditError::NotSealed {
            index,
            size: tree_size,
        });
    };
    let hashes = hashes(&leaf)?;
    let record_path = MerkleTree::from_leaves(hashes)
        .inclusion_proof(index - leaf.first_record, u64::from(leaf.count))?;
    let log_path = tree.inclusion_proof(leaf_index as u64, tree_size)?;
    Ok(RecordProof {
        index,
        leaf_index: leaf_index as u64,
        leaf,
        record_path,
        log_path,
    })
}

fn check_options(options: &AuditOptions) -> Result<(), AuditError> {
    if options.seal_after == 0 || options.seal_after > MAX_LEAF_RECORDS {
        return Err(AuditError::Options("seal_after must be 1 to 65536"));
    }
    Ok(())
}

fn sign_error(e: crate::CheckpointError) -> AuditError {
    match e {
        crate::CheckpointError::Note(e) => AuditError::Sign(e),
        crate::CheckpointError::Body(why) => AuditError::Sign(crate::NoteError::Malformed(why)),
    }
}

/// Creates (or truncates) `path` for writing, owner-only (0600) if it is new.
fn private_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn open_rw(path: &Path) -> Result<File, AuditError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| AuditError::io("open", path, e))
}

/// Appends `buf` and syncs it. On failure, cuts the file back to `len` (as far as the disk
/// allows) so no partial frame stays behind.
fn write_durably(file: &mut File, len: u64, buf: &[u8]) -> std::io::Result<()> {
    let result = file.write_all(buf).and_then(|()| file.sync_data());
    if result.is_err() {
        let _ = file.set_len(len).and_then(|()| file.sync_data());
    }
    result
}

fn copy_range(file: &File, range: Range<u64>, out: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(buf.len() as u64) as usize;
        let chunk = buf.get_mut(..n).unwrap_or_default();
        file.read_exact_at(chunk, at)?;
        out.write_all(chunk)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies `range` of `file` to a new file `<name>.cut-<start>-<n>` in `dir` (owner-only, synced)
/// and returns its path.
fn keep_cut(dir: &Path, name: &str, file: &File, range: Range<u64>) -> Result<PathBuf, AuditError> {
    for n in 0u32..1000 {
        let path = dir.join(format!("{name}.cut-{}-{n}", range.start));
        let mut out = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(AuditError::io("create", &path, e)),
        };
        copy_range(file, range, &mut out)
            .and_then(|()| out.sync_all())
            .map_err(|e| AuditError::io("keep what is cut", &path, e))?;
        return Ok(path);
    }
    Err(AuditError::io(
        "create",
        dir,
        std::io::Error::new(std::io::ErrorKind::AlreadyExists, "too many kept cuts"),
    ))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("sync", dir, e))
}
