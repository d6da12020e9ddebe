//! Streams: the append-only, crash-safe logs a hub keeps a durable channel's messages in.
//!
//! A [`StreamLog`] is a directory of segment files. Each append writes its entries with one
//! `write` and one `fdatasync` ([`StreamLog::append_all`] is the group commit): when it returns,
//! the entries are on disk. Entries are numbered from 1 by a sequence that never goes back;
//! [`StreamLog::purge_to`] drops the oldest (whole segment files once none of their entries is
//! kept). What an entry holds is the caller's: the hub stores envelopes encrypted again at rest.
//!
//! # Format, version 1
//!
//! ```text
//! <dir>/
//!   stream.meta            "entente-stream v1\nfirst <seq>\n": the first sequence kept
//!   stream.lock            empty: locked (`flock`, exclusive) while a `StreamLog` has it open
//!   <seq, 20 digits>.seg   segments, named by their first sequence
//! ```
//!
//! A segment is a run of frames:
//!
//! ```text
//! frame = u32(len) ‖ u64(seq) ‖ u64(time_ms) ‖ payload (len bytes) ‖ check (8 bytes)
//! check = the first 8 bytes of SHA-256(u32(len) ‖ u64(seq) ‖ u64(time_ms) ‖ payload)
//! ```
//!
//! Integers are big-endian. Sequences are consecutive within and across segments.
//!
//! **One writer per directory.** Opening takes an exclusive `flock` on `stream.lock`, held until
//! the [`StreamLog`] is dropped: a second open of the same directory, by this process or another,
//! is refused ([`StreamError::Locked`]) before it reads or cuts anything. (On a file system
//! without locks the stream opens unlocked.)
//!
//! **Nothing planted is followed.** The directory, made owner-only (0700) when missing, must be
//! owned by this process's user or root and not writable by group or others, as the hub's data
//! directory must; the stream's files are never opened through a symbolic link
//! ([`StreamError::Refused`]). Otherwise whoever could write the directory could plant a link
//! and have the stream cut or overwrite another file.
//!
//! **Opening** reads every frame and checks it. After a crash the last segment may end in an
//! incomplete or unchecked frame that was never reported durable (an append returns only after
//! its `fdatasync`); it is cut off and reported ([`StreamLog::recovery`]). That is a frame
//! running past the end of the file or ending at it, zeros to the end, or a bad frame with no
//! complete, checked frame after it: the file's size may cover a group of frames whose data
//! only partly reached the disk (a header, then zeros). Damage to a frame's length near the end
//! looks the same, so what is cut is first copied beside the segment
//! (`<segment>.cut-<offset>-<n>`, owner-only), and the recovery counts the complete entries the
//! cut bytes still hold (a torn write leaves none after its first bad frame). A bad frame
//! followed by a checked one, a bad frame in any other segment, a gap in the sequence, or a
//! segment whose name disagrees with its first frame is corruption: the stream is refused, never
//! half-loaded ([`StreamError::Corrupt`]).
//!
//! **Fail closed.** If a write fails, the file is cut back to its length before that write (as
//! far as the disk allows) and what was written before it is `fdatasync`ed: appends made with
//! [`StreamLog::append_all_buffered`] were already reported appended, and may have been
//! acknowledged. If an `fdatasync` fails, nothing is cut: what it was to make durable was
//! written, a cut could not be made durable either, and opening checks every frame. Either way
//! the error is returned and the stream refuses every later append and sync until it is
//! reopened.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use rustix::fs::OFlags;
use rustix::io::Errno;

/// The stream format version this build writes and reads.
pub const STREAM_FORMAT: u32 = 1;

/// The largest payload of one entry, in bytes.
pub const MAX_ENTRY_LEN: usize = 64 << 20;

/// Bytes a frame adds to its payload: length, sequence, time, check.
pub const FRAME_OVERHEAD: u64 = 4 + 8 + 8 + 8;

const META_FILE: &str = "stream.meta";
const LOCK_FILE: &str = "stream.lock";
/// `stream.meta` is two short lines; anything longer is not ours.
const MAX_META_LEN: u64 = 4096;
/// A stream directory with any of these bits set is refused: others could add or replace files.
const DIR_FORBIDDEN_MODE: u32 = 0o022;
/// `O_NOFOLLOW`: the open fails (`ELOOP`) if the last component of the path is a symbolic link.
const NOFOLLOW: i32 = OFlags::NOFOLLOW.bits().cast_signed();
const SEGMENT_EXT: &str = "seg";
const HEADER_LEN: usize = 4 + 8 + 8;
const CHECK_LEN: usize = 8;

/// How a stream is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// A new segment is started once the current one holds this many bytes. Default 64 MiB.
    pub segment_bytes: u64,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 64 << 20,
        }
    }
}

/// What went wrong with a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A file operation failed.
    #[error("cannot {op} `{}`: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The stream's files are damaged or inconsistent; nothing was loaded.
    #[error("stream `{}` is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        reason: String,
    },
    /// An earlier write failed; the stream takes no more until reopened.
    #[error("the stream refuses writes after an earlier failure: {0}")]
    Failed(String),
    /// An entry is larger than [`MAX_ENTRY_LEN`].
    #[error("an entry of {0} bytes is larger than the {MAX_ENTRY_LEN} a stream takes")]
    TooLarge(usize),
    /// Another [`StreamLog`], in this process or another, has the directory open.
    #[error(
        "stream `{}` is in use: another writer holds `{}` (one open log per directory)",
        dir.display(),
        dir.join(LOCK_FILE).display()
    )]
    Locked {
        /// The stream's directory.
        dir: PathBuf,
    },
    /// The stream's directory, or a file in it, is not safe to use: nothing was read or
    /// written through it.
    #[error("stream `{}` refused: {reason}", path.display())]
    Refused {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What opening cut off after a crash.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamRecovery {
    /// The segment whose tail was cut, and the offset where it was cut.
    pub cut: Option<(PathBuf, u64)>,
    /// Where the bytes cut off were kept, and how many there were.
    pub kept: Option<(PathBuf, u64)>,
    /// The sequence the first bad frame should have had.
    pub cut_from_seq: u64,
    /// Complete, checked entries found in the cut bytes after the first bad one: none after
    /// a torn write; more says the cut was damage, and the kept copy holds them.
    pub entries_in_cut: u64,
}

/// One entry read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence.
    pub seq: u64,
    /// When it was appended, Unix milliseconds (the caller's clock).
    pub time_ms: u64,
    /// What was appended.
    pub payload: Vec<u8>,
}

/// An open stream. One writer per directory; reads may go on beside appends (`&self`).
#[derive(Debug)]
pub struct StreamLog {
    dir: PathBuf,
    options: StreamOptions,
    /// Segments in order; the last is the one appended to.
    segments: Vec<Segment>,
    /// The first sequence kept (everything below was purged).
    first: u64,
    /// The next sequence to hand out.
    next: u64,
    /// Bytes of the entries kept (payloads and frames).
    bytes: u64,
    failed: Option<String>,
    recovery: StreamRecovery,
    /// Appends written but not yet `fdatasync`ed ([`StreamLog::append_all_buffered`]).
    unsynced: bool,
    /// `stream.lock`, locked exclusively; unlocked as it is closed. `None` on a file system
    /// without locks.
    #[expect(dead_code, reason = "held for its lock, never read")]
    lock: Option<File>,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    /// The sequence of its first frame.
    first: u64,
    /// Each frame's offset, in sequence order.
    offsets: Vec<u64>,
    /// Each frame's time, in sequence order.
    times: Vec<u64>,
    len: u64,
}

// === impl StreamLog ===

impl StreamLog {
    /// Opens the stream in `dir`, creating it if the directory holds none; every frame is
    /// checked (module docs).
    pub fn open(dir: impl AsRef<Path>, options: StreamOptions) -> Result<Self, StreamError> {
        let dir = dir.as_ref().to_path_buf();
        private_dir(&dir)?;
        // Before anything is read or cut: another writer may be appending.
        let lock = lock_dir(&dir)?;
        let meta = dir.join(META_FILE);
        let first = match read_meta(&meta)? {
            Some(bytes) => parse_meta(&meta, &bytes)?,
            None => {
                write_meta(&dir, 1)?;
                1
            }
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io("list", &dir, e))? {
            let entry = entry.map_err(|e| io("list", &dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|x| x.to_str()) != Some(SEGMENT_EXT) {
                continue;
            }
            let seq = path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|s| s.len() == 20)
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| corrupt(&path, "a segment name is not 20 digits"))?;
            names.push((seq, path));
        }
        names.sort();
        let mut log = Self {
            dir,
            options,
            segments: Vec::new(),
            first,
            next: first,
            bytes: 0,
            failed: None,
            recovery: StreamRecovery::default(),
            unsynced: false,
            lock,
        };
        let count = names.len();
        for (i, (seq, path)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            let segment = log.load_segment(seq, path, last)?;
            // Segments wholly below the floor were purged but not yet deleted.
            if segment.first + segment.offsets.len() as u64 <= first && !last {
                let _ = fs::remove_file(&segment.path);
                continue;
            }
            if log.segments.is_empty() {
                if segment.first > first && !segment.offsets.is_empty() {
                    return Err(corrupt(
                        &segment.path,
                        &format!("entries {first} to {} are missing", segment.first - 1),
                    ));
                }
                log.next = segment.first;
            } else if segment.first != log.next {
                return Err(corrupt(
                    &segment.path,
                    &format!(
                        "starts at {} where {} was expected",
                        segment.first, log.next
                    ),
                ));
            }
            log.next = segment.first + segment.offsets.len() as u64;
            log.segments.push(segment);
        }
        log.next = log.next.max(first);
        log.bytes = log.kept_bytes();
        Ok(log)
    }

    /// What opening cut off after a crash, if anything.
    pub fn recovery(&self) -> &StreamRecovery {
        &self.recovery
    }

    /// Whether every entry appended is on disk (no buffered append waits for a
    /// [`sync`](Self::sync)).
    pub fn is_synced(&self) -> bool {
        !self.unsynced
    }

    /// The first sequence kept; equal to [`next_seq`](Self::next_seq) when the stream is empty.
    pub fn first_seq(&self) -> u64 {
        self.first
    }

    /// The sequence the next append gets.
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// How many entries are kept.
    pub fn len(&self) -> u64 {
        self.next - self.first
    }

    /// Whether no entry is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the entries kept, frames included.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// When the oldest entry kept was appended, if any.
    pub fn oldest_time_ms(&self) -> Option<u64> {
        self.locate(self.first)
            .and_then(|(segment, index)| segment.times.get(index).copied())
    }

    /// The first kept sequence appended at or after `time_ms` ([`next_seq`](Self::next_seq)
    /// if none is): what to purge below to drop what is older. Times are the appenders'
    /// clocks, taken to go forward.
    pub fn first_since(&self, time_ms: u64) -> u64 {
        for segment in &self.segments {
            let skip =
                usize::try_from(self.first.saturating_sub(segment.first)).unwrap_or(usize::MAX);
            let times = segment.times.get(skip..).unwrap_or_default();
            let at = times.partition_point(|&t| t < time_ms);
            if at < times.len() {
                return segment.first + (skip + at) as u64;
            }
        }
        self.next
    }

    /// The first sequence to keep for what is kept to hold at most `max_entries` entries of
    /// at most `max_bytes` bytes (frames included), the newest: what to purge below to be
    /// within both ([`next_seq`](Self::next_seq) if the newest entry alone is larger).
    pub fn first_within(&self, max_entries: u64, max_bytes: u64) -> u64 {
        let mut low = self.first.max(self.next.saturating_sub(max_entries));
        if self.bytes_from(low) <= max_bytes {
            return low;
        }
        // The bytes from a sequence on only fall as it rises: `low` does not fit, `high` (no
        // entry) does; the first that fits is between.
        let mut high = self.next;
        while low + 1 < high {
            let mid = low + (high - low) / 2;
            if self.bytes_from(mid) <= max_bytes {
                high = mid;
            } else {
                low = mid;
            }
        }
        high
    }

    /// Appends `payloads` at `time_ms` with one write and one `fdatasync`; returns the
    /// sequence of the first. Either all are appended or none is.
    pub fn append_all(&mut self, payloads: &[&[u8]], time_ms: u64) -> Result<u64, StreamError> {
        let first = self.append_all_buffered(payloads, time_ms)?;
        self.sync()?;
        Ok(first)
    }

    /// Appends `payloads` with one write and no `fdatasync`: they are in the operating
    /// system's cache, durable after the next [`sync`](Self::sync) (or a segment roll). A crash
    /// of the process loses nothing; a crash of the machine may lose what was not synced.
    pub fn append_all_buffered(
        &mut self,
        payloads: &[&[u8]],
        time_ms: u64,
    ) -> Result<u64, StreamError> {
        if let Some(why) = &self.failed {
            return Err(StreamError::Failed(why.clone()));
        }
        if let Some(big) = payloads.iter().find(|p| p.len() > MAX_ENTRY_LEN) {
            return Err(StreamError::TooLarge(big.len()));
        }
        let first = self.next;
        if payloads.is_empty() {
            return Ok(first);
        }
        let needs_new = self
            .segments
            .last()
            .is_none_or(|s| s.len >= self.options.segment_bytes);
        if needs_new {
            self.start_segment(first)?;
        }
        let mut buf = Vec::with_capacity(
            payloads
                .iter()
                .map(|p| p.len() + FRAME_OVERHEAD as usize)
                .sum(),
        );
        let mut frames = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads.iter().enumerate() {
            frames.push(buf.len() as u64);
            push_frame(&mut buf, first + i as u64, time_ms, payload);
        }
        let segment = self
            .segments
            .last_mut()
            .ok_or_else(|| StreamError::Failed("no segment to append to".into()))?;
        let start = segment.len;
        let written = segment.file.write_all_at(&buf, start);
        if let Err(e) = written {
            // Whatever part of `buf` went is cut; what was written before it was reported
            // appended (and, buffered, may have been acknowledged): it is made durable now,
            // as no later sync will be.
            let _ = segment.file.set_len(start);
            let mut why = format!("appending to `{}`: {e}", segment.path.display());
            match segment.file.sync_data() {
                Ok(()) => self.unsynced = false,
                Err(e) => why.push_str(&format!("; then syncing what was written before: {e}")),
            }
            self.failed = Some(why.clone());
            return Err(StreamError::Failed(why));
        }
        segment.len += buf.len() as u64;
        segment.offsets.extend(frames.iter().map(|o| start + o));
        segment
            .times
            .extend(std::iter::repeat_n(time_ms, payloads.len()));
        self.next += payloads.len() as u64;
        self.bytes += buf.len() as u64;
        self.unsynced = true;
        Ok(first)
    }

    /// Makes every append so far durable (`fdatasync` of the segment appended to; the segments
    /// before it were synced as it was started). A failure fails the stream: it takes nothing
    /// more until reopened, and nothing is cut (module docs).
    pub fn sync(&mut self) -> Result<(), StreamError> {
        if let Some(why) = &self.failed {
            return Err(StreamError::Failed(why.clone()));
        }
        if !self.unsynced {
            return Ok(());
        }
        if let Some(segment) = self.segments.last()
            && let Err(e) = segment.file.sync_data()
        {
            let why = format!("syncing `{}`: {e}", segment.path.display());
            self.failed = Some(why.clone());
            return Err(StreamError::Failed(why));
        }
        self.unsynced = false;
        Ok(())
    }

    /// The entry `seq`, if it is kept.
    pub fn read(&self, seq: u64) -> Result<Option<Entry>, StreamError> {
        if seq < self.first || seq >= self.next {
            return Ok(None);
        }
        let Some((segment, index)) = self.locate(seq) else {
            return Ok(None);
        };
        let offset = segment.offsets.get(index).copied().unwrap_or_default();
        let mut header = [0u8; HEADER_LEN];
        segment
            .file
            .read_exact_at(&mut header, offset)
            .map_err(|e| io("read", &segment.path, e))?;
        let (len, frame_seq, time_ms) = parse_header(&header);
        if frame_seq != seq || len as usize > MAX_ENTRY_LEN {
            return Err(corrupt(
                &segment.path,
                &format!("the frame of entry {seq} at byte {offset} changed on disk"),
            ));
        }
        let mut rest = vec![0u8; len as usize + CHECK_LEN];
        segment
            .file
            .read_exact_at(&mut rest, offset + HEADER_LEN as u64)
            .map_err(|e| io("read", &segment.path, e))?;
        let (payload, check) = rest.split_at(len as usize);
        if check != frame_check(&header, payload) {
            return Err(corrupt(
                &segment.path,
                &format!("entry {seq} at byte {offset} fails its check"),
            ));
        }
        Ok(Some(Entry {
            seq,
            time_ms,
            payload: payload.to_vec(),
        }))
    }

    /// Drops every entry below `seq` (at most up to the next sequence): the first sequence
    /// kept becomes `seq`, durably; segment files with nothing kept are deleted.
    pub fn purge_to(&mut self, seq: u64) -> Result<(), StreamError> {
        let seq = seq.min(self.next);
        if seq <= self.first {
            return Ok(());
        }
        // The floor never reaches the disk ahead of the entries below it: after a crash the
        // next sequence would be the floor, written after the entries left, in their segment.
        self.sync()?;
        write_meta(&self.dir, seq)?;
        self.first = seq;
        let keep_from = self
            .segments
            .iter()
            .position(|s| s.first + s.offsets.len() as u64 > seq)
            .unwrap_or(self.segments.len().saturating_sub(1));
        for segment in self.segments.drain(..keep_from) {
            let _ = fs::remove_file(&segment.path);
        }
        self.bytes = self.kept_bytes();
        Ok(())
    }

    // --- helpers ---

    fn locate(&self, seq: u64) -> Option<(&Segment, usize)> {
        let i = self
            .segments
            .partition_point(|s| s.first <= seq)
            .checked_sub(1)?;
        let segment = self.segments.get(i)?;
        let index = usize::try_from(seq - segment.first).ok()?;
        (index < segment.offsets.len()).then_some((segment, index))
    }

    fn kept_bytes(&self) -> u64 {
        self.bytes_from(self.first)
    }

    /// Bytes of the entries kept from `seq` on, frames included.
    fn bytes_from(&self, seq: u64) -> u64 {
        let seq = seq.max(self.first);
        let mut bytes = 0;
        for segment in &self.segments {
            let skip = seq.saturating_sub(segment.first);
            let from = usize::try_from(skip).unwrap_or(usize::MAX);
            if let Some(offset) = segment.offsets.get(from) {
                bytes += segment.len - offset;
            }
        }
        bytes
    }

    fn start_segment(&mut self, first: u64) -> Result<(), StreamError> {
        // What the segment being left holds is durable before the next one starts.
        self.sync()?;
        let path = self.dir.join(format!("{first:020}.{SEGMENT_EXT}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(NOFOLLOW)
            .open(&path)
            .map_err(|e| open_error("create", &path, e))?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            path,
            file,
            first,
            offsets: Vec::new(),
            times: Vec::new(),
            len: 0,
        });
        Ok(())
    }

    /// Reads and checks a segment; the last may lose an unchecked tail.
    fn load_segment(
        &mut self,
        first: u64,
        path: PathBuf,
        last: bool,
    ) -> Result<Segment, StreamError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(NOFOLLOW)
            .open(&path)
            .map_err(|e| open_error("open", &path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io("read", &path, e))?;
        let mut offsets = Vec::new();
        let mut times = Vec::new();
        let mut at = 0usize;
        let mut expected = first;
        while at < bytes.len() {
            match check_frame(bytes.get(at..).unwrap_or_default(), expected) {
                Ok((time_ms, frame_len)) => {
                    offsets.push(at as u64);
                    times.push(time_ms);
                    at += frame_len;
                    expected += 1;
                }
                Err(reason) => {
                    let rest = bytes.get(at..).unwrap_or_default();
                    let Some(entries_in_cut) = last.then(|| torn(rest, expected)).flatten() else {
                        return Err(corrupt(
                            &path,
                            &format!("entry {expected} at byte {at}: {reason}"),
                        ));
                    };
                    // Never reported durable (an append returns after its fdatasync), unless
                    // damage looks like a torn write: kept beside the segment before the cut.
                    let kept = keep_cut(&path, at as u64, rest)?;
                    file.set_len(at as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(|e| io("cut the torn tail of", &path, e))?;
                    self.recovery = StreamRecovery {
                        cut: Some((path.clone(), at as u64)),
                        kept: Some((kept, rest.len() as u64)),
                        cut_from_seq: expected,
                        entries_in_cut,
                    };
                    break;
                }
            }
        }
        let len = at as u64;
        Ok(Segment {
            path,
            file,
            first,
            offsets,
            times,
            len,
        })
    }
}

/// Writes `dir/name` atomically and owner-only, as a stream writes its `stream.meta`: `dir` is
/// made owner-only (0700) if missing and checked as a stream's directory is (module docs),
/// `.<name>.tmp` is written (0600, never through a symbolic link) and synced, then renamed over
/// `name`, and `dir` synced. For files kept beside a stream, such as the hub's consumer states.
pub fn write_private(dir: impl AsRef<Path>, name: &str, bytes: &[u8]) -> Result<(), StreamError> {
    let dir = dir.as_ref();
    private_dir(dir)?;
    replace_file(dir, name, bytes)
}

// === frames ===

/// Whether the bad bytes `rest` at the end of the last segment, whose first frame should be
/// entry `expected`, look like an append cut short by a crash; if so, the complete, checked
/// entries they still hold after the first bad frame ([`entries_after`]).
///
/// Torn: a frame running past the end of the file or ending exactly at it (whatever follows:
/// a damaged length reads the same, and the entries counted tell it), zeros to the end, or a
/// bad frame with no checked frame after it (the file's size covered a group of frames whose
/// data only partly reached the disk). A bad frame followed by a checked one is corruption.
fn torn(rest: &[u8], expected: u64) -> Option<u64> {
    if rest.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let after = entries_after(rest, expected);
    let Some(header) = rest
        .get(..HEADER_LEN)
        .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
    else {
        return Some(after);
    };
    let (len, _, _) = parse_header(&header);
    let end = HEADER_LEN as u64 + u64::from(len) + CHECK_LEN as u64;
    (end >= rest.len() as u64 || after == 0).then_some(after)
}

/// How many complete, checked frames `rest` holds after its first byte, numbered after
/// `expected`: the entries a cut of `rest` would drop that a torn write can't explain.
fn entries_after(rest: &[u8], expected: u64) -> u64 {
    let mut found = 0;
    let mut at = 1;
    while let Some(header) = rest
        .get(at..at + HEADER_LEN)
        .and_then(|h| <[u8; HEADER_LEN]>::try_from(h).ok())
    {
        let (_, seq, _) = parse_header(&header);
        // Only a sequence that could follow is worth checking (one hash each).
        let plausible = seq > expected && seq - expected <= rest.len() as u64;
        match plausible
            .then(|| check_frame(rest.get(at..).unwrap_or_default(), seq))
            .and_then(Result::ok)
        {
            Some((_, frame_len)) => {
                found += 1;
                at += frame_len;
            }
            None => at += 1,
        }
    }
    found
}

/// Copies `rest`, cut from `segment` at `offset`, to a new file beside it (owner-only,
/// synced with its directory); returns its path.
fn keep_cut(segment: &Path, offset: u64, rest: &[u8]) -> Result<PathBuf, StreamError> {
    let dir = segment.parent().unwrap_or(Path::new("."));
    let name = segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0u32..1000 {
        let path = dir.join(format!("{name}.cut-{offset}-{n}"));
        let mut out = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("create", &path, e)),
        };
        out.write_all(rest)
            .and_then(|()| out.sync_all())
            .map_err(|e| io("keep what is cut in", &path, e))?;
        sync_dir(dir)?;
        return Ok(path);
    }
    Err(io(
        "create",
        dir,
        std::io::Error::new(std::io::ErrorKind::AlreadyExists, "too many kept cuts"),
    ))
}

fn push_frame(buf: &mut Vec<u8>, seq: u64, time_ms: u64, payload: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    buf.extend_from_slice(&seq.to_be_bytes());
    buf.extend_from_slice(&time_ms.to_be_bytes());
    buf.extend_from_slice(payload);
    let check = digest(&SHA256, buf.get(start..).unwrap_or_default());
    buf.extend_from_slice(check.as_ref().get(..CHECK_LEN).unwrap_or_default());
}

fn parse_header(header: &[u8; HEADER_LEN]) -> (u32, u64, u64) {
    let (len, rest) = header.split_at(4);
    let (seq, time) = rest.split_at(8);
    (
        u32::from_be_bytes(len.try_into().unwrap_or_default()),
        u64::from_be_bytes(seq.try_into().unwrap_or_default()),
        u64::from_be_bytes(time.try_into().unwrap_or_default()),
    )
}

fn frame_check(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&SHA256);
    ctx.update(header);
    ctx.update(payload);
    ctx.finish()
        .as_ref()
        .get(..CHECK_LEN)
        .unwrap_or_default()
        .to_vec()
}

/// Checks the frame at the start of `bytes`, which must carry sequence `expected`; returns
/// its time and length.
fn check_frame(bytes: &[u8], expected: u64) -> Result<(u64, usize), String> {
    let header: [u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or("an incomplete frame header")?;
    let (len, seq, time_ms) = parse_header(&header);
    if len as usize > MAX_ENTRY_LEN {
        return Err(format!("a length of {len} bytes"));
    }
    let end = HEADER_LEN + len as usize;
    let payload = bytes.get(HEADER_LEN..end).ok_or("an incomplete payload")?;
    let check = bytes
        .get(end..end + CHECK_LEN)
        .ok_or("an incomplete check")?;
    if check != frame_check(&header, payload) {
        return Err("the check does not match".into());
    }
    if seq != expected {
        return Err(format!("sequence {seq} where {expected} was expected"));
    }
    Ok((time_ms, end + CHECK_LEN))
}

// === metadata ===

fn parse_meta(path: &Path, bytes: &[u8]) -> Result<u64, StreamError> {
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt(path, "not UTF-8"))?;
    let mut lines = text.lines();
    if lines.next() != Some("entente-stream v1") {
        return Err(corrupt(path, "not an entente stream of format version 1"));
    }
    lines
        .next()
        .and_then(|l| l.strip_prefix("first "))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n >= 1)
        .ok_or_else(|| corrupt(path, "no valid `first` line"))
}

/// The bytes of `stream.meta`, or `None` if there is none.
fn read_meta(path: &Path) -> Result<Option<Vec<u8>>, StreamError> {
    read_private(path, MAX_META_LEN)
}

/// The bytes of `path`, a file kept beside a stream (as [`write_private`] writes them), or
/// `None` if there is none: never read through a symbolic link, and refused as corrupt past
/// `max` bytes.
pub fn read_private(path: &Path, max: u64) -> Result<Option<Vec<u8>>, StreamError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error("read", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", path, e))?;
    if bytes.len() as u64 > max {
        return Err(corrupt(path, &format!("longer than {max} bytes")));
    }
    Ok(Some(bytes))
}

/// Writes `stream.meta` atomically.
fn write_meta(dir: &Path, first: u64) -> Result<(), StreamError> {
    replace_file(
        dir,
        META_FILE,
        format!("entente-stream v{STREAM_FORMAT}\nfirst {first}\n").as_bytes(),
    )
}

/// Writes `dir/name` atomically: `.<name>.tmp` (owner-only, never through a symbolic link),
/// synced, renamed over it, the directory synced.
fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StreamError> {
    let path = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(&temp)
        .map_err(|e| open_error("create", &temp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &temp, e))?;
    fs::rename(&temp, &path).map_err(|e| io("rename", &path, e))?;
    sync_dir(dir)
}

/// Takes the exclusive lock of the stream in `dir` (`stream.lock`, made 0600 if missing),
/// without waiting: [`StreamError::Locked`] if another log holds it. `None` where the file
/// system has no locks.
fn lock_dir(dir: &Path) -> Result<Option<File>, StreamError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(NOFOLLOW)
        .open(&path)
        .map_err(|e| open_error("create", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Err(StreamError::Locked {
            dir: dir.to_path_buf(),
        }),
        // A file system without locks: as before there were any.
        Err(fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(io("lock", &path, e)),
    }
}

/// Creates `dir` and its missing parents owner-only (0700), each synced into its parent so
/// that a crash does not lose the new directory; then checks `dir`, made now or before, as
/// [`check_dir`] does.
fn private_dir(dir: &Path) -> Result<(), StreamError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(path);
        at = path.parent();
    }
    for path in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", path, e)),
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    check_dir(dir)
}

/// Fails unless `dir` is a directory that group and others can't write to, owned by this
/// process's user or root, as the hub's data directory must be: whoever else could write it
/// could replace the stream's files, or plant links in their place.
fn check_dir(dir: &Path) -> Result<(), StreamError> {
    let meta = fs::metadata(dir).map_err(|e| io("look at", dir, e))?;
    if !meta.is_dir() {
        return Err(refused(dir, "it is not a directory".into()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & DIR_FORBIDDEN_MODE != 0 {
        return Err(refused(
            dir,
            format!(
                "group or others may write to it (mode {mode:04o}): they could replace its \
                 files; make it owner-only (`chmod 700`)"
            ),
        ));
    }
    let owner = meta.uid();
    let us = rustix::process::geteuid().as_raw();
    if owner != us && owner != 0 {
        return Err(refused(
            dir,
            format!("it is owned by user {owner}, neither this process's user ({us}) nor root"),
        ));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StreamError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> StreamError {
    StreamError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The error of opening `path` for `op`: [`StreamError::Refused`] if it is a symbolic link.
fn open_error(op: &'static str, path: &Path, source: std::io::Error) -> StreamError {
    if source.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
        return refused(
            path,
            "it is a symbolic link, which a stream never follows".into(),
        );
    }
    io(op, path, source)
}

fn refused(path: &Path, reason: String) -> StreamError {
    StreamError::Refused {
        path: path.to_path_buf(),
        reason,
    }
}

fn corrupt(path: &Path, reason: &str) -> StreamError {
    StreamError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;

    fn small() -> StreamOptions {
        StreamOptions { segment_bytes: 200 }
    }

    fn payloads(n: usize, tag: &str) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
    }

    fn append(log: &mut StreamLog, items: &[Vec<u8>], time: u64) -> u64 {
        let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
        log.append_all(&refs, time).unwrap()
    }

    #[test]
    fn entries_are_numbered_read_back_and_survive_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        assert!(log.is_empty());
        assert_eq!(append(&mut log, &payloads(3, "a"), 10), 1);
        for item in payloads(20, "b") {
            append(&mut log, &[item], 20);
        }
        assert_eq!((log.first_seq(), log.next_seq(), log.len()), (1, 24, 23));
        let bytes = log.bytes();
        drop(log);
        let log = StreamLog::open(tmp.path(), small()).unwrap();
        assert_eq!(
            (log.first_seq(), log.next_seq(), log.bytes()),
            (1, 24, bytes)
        );
        assert!(log.segments.len() > 1, "small segments roll over");
        let e = log.read(5).unwrap().unwrap();
        assert_eq!((e.seq, e.time_ms, e.payload), (5, 20, b"b-1".to_vec()));
        assert_eq!(log.read(0).unwrap(), None);
        assert_eq!(log.read(24).unwrap(), None);
        assert_eq!(log.oldest_time_ms(), Some(10));
        assert_eq!(*log.recovery(), StreamRecovery::default());
    }

    fn one_by_one(log: &mut StreamLog, n: usize, tag: &str) {
        for item in payloads(n, tag) {
            append(log, &[item], 1);
        }
    }

    #[test]
    fn the_first_entry_since_a_time_is_found_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        for (i, item) in payloads(20, "t").into_iter().enumerate() {
            append(&mut log, &[item], 100 + i as u64 * 10);
        }
        assert_eq!(log.first_since(0), 1);
        assert_eq!(log.first_since(100), 1);
        assert_eq!(log.first_since(101), 2);
        assert_eq!(log.first_since(250), 16);
        assert_eq!(log.first_since(10_000), log.next_seq());
        log.purge_to(5).unwrap();
        assert_eq!(log.first_since(0), 5);
    }

    #[test]
    fn the_first_entry_to_keep_within_a_count_and_a_size_is_found_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        // Entries of 10 payload bytes (`e-0`.. padded), 38 with their frames; five segments.
        for i in 0..20 {
            append(&mut log, &[format!("e-{i:08}").into_bytes()], 1);
        }
        let frame = 10 + FRAME_OVERHEAD;
        assert!(log.segments.len() > 2);
        assert_eq!(log.bytes(), 20 * frame);
        assert_eq!(log.first_within(u64::MAX, u64::MAX), 1);
        assert_eq!(log.first_within(20, 20 * frame), 1);
        assert_eq!(log.first_within(5, u64::MAX), 16);
        assert_eq!(log.first_within(u64::MAX, 7 * frame), 14);
        assert_eq!(log.first_within(u64::MAX, 7 * frame + 1), 14);
        assert_eq!(log.first_within(u64::MAX, 7 * frame - 1), 15);
        assert_eq!(log.first_within(3, 7 * frame), 18);
        assert_eq!(log.first_within(u64::MAX, frame - 1), 21);
        assert_eq!(log.first_within(0, u64::MAX), 21);
        log.purge_to(log.first_within(u64::MAX, 7 * frame)).unwrap();
        assert_eq!((log.first_seq(), log.bytes()), (14, 7 * frame));
        assert_eq!(log.first_within(10, u64::MAX), 14);
    }

    #[test]
    fn purging_drops_old_entries_and_segments_and_is_durable() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        one_by_one(&mut log, 30, "x");
        let segments = log.segments.len();
        log.purge_to(20).unwrap();
        assert_eq!((log.first_seq(), log.len()), (20, 11));
        assert!(log.segments.len() < segments);
        assert_eq!(log.read(19).unwrap(), None);
        assert_eq!(log.read(20).unwrap().unwrap().payload, b"x-19");
        drop(log);
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        assert_eq!((log.first_seq(), log.next_seq()), (20, 31));
        // Everything purged: the sequence still goes on.
        log.purge_to(u64::MAX).unwrap();
        assert!(log.is_empty());
        assert_eq!(append(&mut log, &payloads(1, "y"), 2), 31);
        drop(log);
        let log = StreamLog::open(tmp.path(), small()).unwrap();
        assert_eq!((log.first_seq(), log.next_seq()), (31, 32));
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_offset_and_nothing_before_it_is_lost() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut log = StreamLog::open(&dir, StreamOptions::default()).unwrap();
        append(&mut log, &payloads(3, "keep"), 1);
        let durable = log.segments[0].len;
        append(&mut log, &payloads(2, "torn"), 2);
        let full = fs::read(&log.segments[0].path).unwrap();
        let path = log.segments[0].path.clone();
        drop(log);
        for cut in durable..full.len() as u64 {
            fs::write(&path, &full[..cut as usize]).unwrap();
            let log = StreamLog::open(&dir, StreamOptions::default()).unwrap();
            assert!(
                log.next_seq() == 4 || log.next_seq() == 5,
                "cut at {cut}: next {}",
                log.next_seq()
            );
            assert_eq!(log.read(3).unwrap().unwrap().payload, b"keep-2");
            if cut > durable && log.next_seq() == 4 {
                assert_eq!(log.recovery().cut, Some((path.clone(), durable)));
            }
        }
    }

    /// A purge's floor never reaches the disk before the entries below it.
    #[test]
    fn a_purge_syncs_buffered_entries_first() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        append(&mut log, &payloads(2, "a"), 1);
        for item in payloads(3, "b") {
            log.append_all_buffered(&[&item], 1).unwrap();
        }
        assert!(!log.is_synced());
        log.purge_to(4).unwrap();
        assert!(log.is_synced());
        assert_eq!((log.first_seq(), log.next_seq()), (4, 6));
    }

    #[test]
    fn buffered_appends_are_read_at_once_and_kept_once_synced() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        for item in payloads(30, "b") {
            log.append_all_buffered(&[&item], 1).unwrap();
        }
        assert!(log.unsynced);
        assert_eq!(log.read(30).unwrap().unwrap().payload, b"b-29");
        log.sync().unwrap();
        assert!(!log.unsynced);
        drop(log);
        let log = StreamLog::open(tmp.path(), small()).unwrap();
        assert_eq!((log.first_seq(), log.next_seq()), (1, 31));
    }

    /// A length field damaged so its frame runs past the end reads as a torn write: the
    /// cut is kept beside the segment, byte for byte and owner-only, and the entries it still
    /// holds are counted, so the report tells damage from a crash.
    #[test]
    fn what_a_cut_drops_is_kept_and_its_entries_counted() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        append(&mut log, &payloads(6, "e"), 1);
        let path = log.segments[0].path.clone();
        let third = log.segments[0].offsets[2] as usize;
        drop(log);
        let mut bytes = fs::read(&path).unwrap();
        bytes[third] = 0x7f;
        fs::write(&path, &bytes).unwrap();

        let log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        assert_eq!(log.next_seq(), 3);
        let recovery = log.recovery().clone();
        assert_eq!(recovery.cut, Some((path.clone(), third as u64)));
        assert_eq!((recovery.cut_from_seq, recovery.entries_in_cut), (3, 3));
        let (kept, len) = recovery.kept.unwrap();
        assert_eq!(len, (bytes.len() - third) as u64);
        assert_eq!(fs::read(&kept).unwrap(), bytes[third..].to_vec());
        let mode = fs::metadata(&kept).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        drop(log);
        // The kept copy is not a segment: the stream opens as cut.
        let log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        assert_eq!(
            (log.next_seq(), log.recovery().clone()),
            (3, StreamRecovery::default())
        );

        // A torn write holds no entry after its first bad one.
        assert_eq!(entries_after(&bytes[third..third + 30], 3), 0);
        assert_eq!(entries_after(&[0; 100], 3), 0);
    }

    #[test]
    fn zeros_after_the_last_frame_are_cut() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        append(&mut log, &payloads(2, "k"), 1);
        let (path, len) = (log.segments[0].path.clone(), log.segments[0].len);
        drop(log);
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, bytes).unwrap();
        let mut log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        assert_eq!(log.recovery().cut, Some((path, len)));
        assert_eq!(append(&mut log, &payloads(1, "after"), 2), 3);
        assert_eq!(log.read(3).unwrap().unwrap().payload, b"after-0");
    }

    #[test]
    fn damage_before_the_tail_is_refused_with_its_place() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut log = StreamLog::open(&dir, StreamOptions::default()).unwrap();
        append(&mut log, &payloads(30, "z"), 1);
        let first = log.segments[0].path.clone();
        drop(log);
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER_LEN + 1] ^= 1;
        fs::write(&first, bytes).unwrap();
        // Damage in the only (so the last) segment, with frames after it, is no torn tail.
        let err = StreamLog::open(&dir, StreamOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("corrupt") && err.contains("entry 1 at byte 0"),
            "{err}"
        );
    }

    /// The file's size may cover a group whose data only partly reached the disk before a
    /// power loss: a frame's header, then zeros. Nothing after the last fdatasync was
    /// acknowledged; such a tail is cut (and kept), wherever the zeros start.
    #[test]
    fn a_group_that_partly_reached_the_disk_is_cut_wherever_its_zeros_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut log = StreamLog::open(&dir, StreamOptions::default()).unwrap();
        append(&mut log, &payloads(3, "keep"), 1);
        let durable = log.segments[0].len as usize;
        append(&mut log, &payloads(3, "lost"), 2);
        let offsets = log.segments[0].offsets.clone();
        let path = log.segments[0].path.clone();
        drop(log);
        let full = fs::read(&path).unwrap();
        for from in durable..full.len() {
            let mut bytes = full[..from].to_vec();
            bytes.resize(full.len(), 0);
            fs::write(&path, &bytes).unwrap();
            let log = StreamLog::open(&dir, StreamOptions::default())
                .unwrap_or_else(|e| panic!("zeros from byte {from}: {e}"));
            // The frames wholly before the zeros stay; the one they start in is cut.
            let ends = [offsets[4], offsets[5], full.len() as u64];
            let whole = ends.iter().filter(|&&end| end as usize <= from).count() as u64;
            assert_eq!(log.next_seq(), 4 + whole, "zeros from byte {from}");
            assert_eq!(log.read(3).unwrap().unwrap().payload, b"keep-2");
            let recovery = log.recovery().clone();
            let at = offsets[3 + whole as usize];
            assert_eq!(recovery.cut, Some((path.clone(), at)), "zeros from {from}");
            assert_eq!(recovery.entries_in_cut, 0);
            let (kept, _) = recovery.kept.unwrap();
            assert_eq!(fs::read(kept).unwrap(), bytes[at as usize..].to_vec());
            drop(log);
            fs::write(&path, &full).unwrap();
        }
    }

    /// A bad frame followed by a checked one is damage, not a torn write, even in the last
    /// group: refused, never cut.
    #[test]
    fn a_bad_frame_followed_by_a_checked_one_is_refused_even_at_the_tail() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut log = StreamLog::open(&dir, StreamOptions::default()).unwrap();
        append(&mut log, &payloads(3, "keep"), 1);
        append(&mut log, &payloads(3, "tail"), 2);
        let offsets = log.segments[0].offsets.clone();
        let path = log.segments[0].path.clone();
        drop(log);
        let full = fs::read(&path).unwrap();
        let (fourth, fifth, sixth) = (
            offsets[3] as usize,
            offsets[4] as usize,
            offsets[5] as usize,
        );
        let mut flipped = full.clone();
        flipped[fourth + HEADER_LEN] ^= 1;
        let mut zeroed = full.clone();
        zeroed[fourth..fifth].fill(0);
        let mut holes = full.clone();
        holes[fourth + HEADER_LEN..fifth].fill(0);
        holes[sixth..].fill(0);
        for (what, bytes) in [
            ("a flipped payload byte", flipped),
            ("a frame of zeros", zeroed),
            ("a payload of zeros, then zeros after the next frame", holes),
        ] {
            fs::write(&path, &bytes).unwrap();
            let err = StreamLog::open(&dir, StreamOptions::default()).unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, StreamError::Corrupt { .. }) && text.contains("entry 4 at byte"),
                "{what}: {text}"
            );
            assert_eq!(fs::read(&path).unwrap(), bytes, "{what}: nothing is cut");
        }
    }

    #[test]
    fn a_second_open_of_a_directory_is_refused_while_the_first_is_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut log = StreamLog::open(&dir, small()).unwrap();
        append(&mut log, &payloads(2, "one"), 1);
        let err = StreamLog::open(&dir, small()).unwrap_err();
        assert!(
            matches!(&err, StreamError::Locked { dir: d } if *d == dir),
            "{err}"
        );
        assert!(err.to_string().contains("in use"), "{err}");
        // The first writer goes on, and the lock goes with it.
        append(&mut log, &payloads(1, "two"), 2);
        drop(log);
        let log = StreamLog::open(&dir, small()).unwrap();
        assert_eq!(log.next_seq(), 4);
    }

    #[test]
    fn a_stream_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        drop(StreamLog::open(&dir, small()).unwrap());
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        for mode in [0o770, 0o702, 0o777] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let err = StreamLog::open(&dir, small()).unwrap_err();
            assert!(
                matches!(&err, StreamError::Refused { path, .. } if *path == dir)
                    && err.to_string().contains(&format!("mode {mode:04o}")),
                "{mode:o}: {err}"
            );
            assert!(write_private(&dir, "x.state", b"x").is_err());
        }
        // Readable by others is no danger to the stream.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        StreamLog::open(&dir, small()).unwrap();
    }

    /// Whoever could write a stream's directory could plant a link where the stream writes,
    /// cuts or truncates a file: every one is refused, and what it leads to is untouched.
    #[test]
    fn a_planted_symbolic_link_is_never_followed() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        let precious = b"precious, not a stream".to_vec();
        let dir = tmp.path().join("s");
        let check = |err: StreamError, link: &Path| {
            assert!(
                matches!(&err, StreamError::Refused { path, .. } if path == link)
                    && err.to_string().contains("symbolic link"),
                "{}: {err}",
                link.display()
            );
            assert_eq!(fs::read(&victim).unwrap(), precious, "{}", link.display());
        };
        let plant = |link: &Path| {
            fs::write(&victim, &precious).unwrap();
            let _ = fs::remove_file(link);
            symlink(&victim, link).unwrap();
        };

        // Read at open: a segment (its "torn tail" would be cut), the metadata, the lock.
        drop(StreamLog::open(&dir, small()).unwrap());
        for name in ["00000000000000000001.seg", META_FILE, LOCK_FILE] {
            let link = dir.join(name);
            let saved = fs::read(&link).ok();
            plant(&link);
            check(StreamLog::open(&dir, small()).unwrap_err(), &link);
            fs::remove_file(&link).unwrap();
            if let Some(saved) = saved {
                fs::write(&link, saved).unwrap();
            }
        }

        // Written later: the next segment (truncated as it starts), the metadata's temporary
        // file (at a purge).
        let mut log = StreamLog::open(&dir, small()).unwrap();
        let link = dir.join("00000000000000000001.seg");
        plant(&link);
        check(log.append_all(&[b"x"], 1).unwrap_err(), &link);
        fs::remove_file(&link).unwrap();
        append(&mut log, &payloads(2, "p"), 1);
        let link = dir.join(".stream.meta.tmp");
        plant(&link);
        check(log.purge_to(2).unwrap_err(), &link);

        // A file written beside a stream (the hub's consumer states).
        let link = dir.join(".c.state.tmp");
        plant(&link);
        check(write_private(&dir, "c.state", b"state").unwrap_err(), &link);
        fs::remove_file(&link).unwrap();
        write_private(&dir, "c.state", b"state").unwrap();
        assert_eq!(fs::read(dir.join("c.state")).unwrap(), b"state");
        assert_eq!(
            fs::metadata(dir.join("c.state")).unwrap().mode() & 0o777,
            0o600
        );
    }

    /// A write that fails leaves what was written before it durable: buffered appends were
    /// reported appended (and acknowledged with `sync = interval`), and no later sync will
    /// come, the stream being failed.
    #[test]
    fn a_failed_write_syncs_what_was_written_before_it() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        for item in payloads(3, "acked") {
            log.append_all_buffered(&[&item], 1).unwrap();
        }
        assert!(!log.is_synced());
        // The segment's file as a descriptor that can't write: the next write fails, as on a
        // failing disk (fdatasync works on it).
        let path = log.segments[0].path.clone();
        let len = log.segments[0].len;
        log.segments[0].file = File::open(&path).unwrap();
        let err = log.append_all_buffered(&[b"refused"], 2).unwrap_err();
        assert!(
            matches!(&err, StreamError::Failed(why) if why.contains("appending")),
            "{err}"
        );
        assert!(
            log.is_synced(),
            "what was written before the failed write is fdatasynced"
        );
        assert_eq!(log.next_seq(), 4);
        assert!(matches!(log.sync(), Err(StreamError::Failed(_))));
        assert!(matches!(
            log.append_all(&[b"more"], 3),
            Err(StreamError::Failed(_))
        ));
        drop(log);
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        let log = StreamLog::open(tmp.path(), StreamOptions::default()).unwrap();
        assert_eq!(log.next_seq(), 4);
        assert_eq!(log.read(3).unwrap().unwrap().payload, b"acked-2");
    }

    #[test]
    fn a_missing_segment_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("s");
        let mut log = StreamLog::open(&dir, small()).unwrap();
        one_by_one(&mut log, 30, "m");
        let middle = log.segments[1].path.clone();
        drop(log);
        fs::remove_file(middle).unwrap();
        let err = StreamLog::open(&dir, small()).unwrap_err().to_string();
        assert!(err.contains("expected"), "{err}");
    }

    #[test]
    fn oversized_entries_are_refused_and_a_failed_stream_takes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = StreamLog::open(tmp.path(), small()).unwrap();
        let big = vec![0u8; MAX_ENTRY_LEN + 1];
        assert!(matches!(
            log.append_all(&[&big], 1),
            Err(StreamError::TooLarge(_))
        ));
        log.failed = Some("the disk went away".into());
        assert!(matches!(
            log.append_all(&[b"x"], 1),
            Err(StreamError::Failed(_))
        ));
    }
}
