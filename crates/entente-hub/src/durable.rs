//! Durable channels (docs/DURABLE.md): streams that keep what is published on them until every
//! durable consumer has acknowledged it, encrypted again at rest.
//!
//! - [`Streams`]: the hub's configured streams, each capturing the channels of its pattern,
//!   and the latest sender key of each (sender, channel, epoch) routed, so that every stored
//!   entry opens on its own.
//! - A stream's writer thread takes the entries publishes submit (a [`Committer`]), seals each
//!   under the current data key (the stream's name and the entry's sequence as associated
//!   data), appends them with one `fdatasync`, and once a second purges what every consumer
//!   acknowledged or what is older than the stream's `max_age`, and writes the consumers'
//!   states. A publish is answered only once its entries are durable.
//! - A [`Consumer`] is named, owned by the principal that created it, and held by one session
//!   at a time; its delivery task sends kept entries in order, at most [`MAX_IN_FLIGHT`]
//!   unacknowledged, redelivers what stays unacknowledged past `ack_wait`, and moves an entry
//!   delivered `max_deliver` times to the stream's dead-letter log.
//!
//! Entry (before sealing): `u16(len) ‖ channel ‖ the Deliver body` (fields 2 and 3: sender
//! keys, then signed batches).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut as _, Bytes, BytesMut};
use entente_store::stream::{StreamLog, StreamOptions};
use entente_types::{Channel, ChannelPattern, Principal, namespace};
use tokio::sync::{Notify, oneshot, watch};

use crate::HubError;
use crate::audit::Auditor;
use crate::authz::{self, Carry, DeliveryGate};
use crate::codec::Outbound;
use crate::commit::{Admission, Committer, Failed};
use crate::control::{CloseReason, ConnectionControl};
use crate::datakeys::DataKeys;
use crate::queue::OutboundTx;
use crate::stats::{self, Stats};

/// Most entries delivered to one consumer and not yet acknowledged.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// How far past its floor (its oldest entry not done) a consumer is sent new entries: what
/// it acknowledged above the floor is kept entry by entry, in memory and in its state file,
/// so one entry left unacknowledged does not let that set grow with the stream.
const MAX_AHEAD: u64 = 65_536;

/// How often a stream purges what is done and writes its consumers' states.
const TICK: Duration = Duration::from_secs(1);

/// Most entries of the streams directory not configured looked at when data keys are retired:
/// past it, what they keep can't be told, and no data key is retired.
const MAX_UNCONFIGURED_DIRS: usize = 1024;

/// The longest durable consumer state read at start (its `done` line names at most
/// [`MAX_AHEAD`] sequences of up to 20 digits).
const MAX_CONSUMER_STATE_LEN: u64 = 4 << 20;

/// A stream's oldest dead-letter key version when one of its dead letters could not be read
/// at start: no version is below it, so no data key is retired until the hub restarts.
const DEAD_UNREAD: u32 = 0;

/// Entries queued for a stream's writer beyond which publishers wait.
const MAX_BACKLOG: usize = 16_384;

/// Field numbers of `Deliver` (PROTOCOL.md): sender keys, sequence, attempt.
const SENDER_KEYS_TAG: u32 = 2;
/// Most sender keys remembered for durable entries, and most bytes they take: past either,
/// the memory is cleared (an entry whose batches need a key forgotten then is stored without
/// it, and its envelopes are refused by the consumer as of an unknown epoch).
const MAX_REMEMBERED_KEYS: usize = 65_536;
const MAX_REMEMBERED_KEY_BYTES: usize = 256 << 20;
/// One sender's share of the remembered keys: past it, that sender's alone are forgotten.
const MAX_REMEMBERED_KEYS_PER_SENDER: usize = 1024;
const MAX_REMEMBERED_KEY_BYTES_PER_SENDER: usize = 16 << 20;
const SEQUENCE_TAG: u32 = 4;
const ATTEMPT_TAG: u32 = 5;
/// The most a delivery adds to its entry: its sequence and its attempt, a one-byte key and a
/// varint each.
pub(crate) const DELIVERY_SUFFIX_LEN: usize = 2 * (1 + 10);

/// A durable channel's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// The stream's name: 1 to 64 of `a-z`, `0-9`, `-`, `_`; its directory's name.
    pub name: String,
    /// The channels it captures.
    pub channels: ChannelPattern,
    /// Most entries kept; a publish beyond is refused `FULL`. Default 1 000 000.
    pub max_messages: u64,
    /// Most bytes kept (stored frames); a publish beyond is refused `FULL`. Default 1 GiB.
    pub max_bytes: u64,
    /// Entries older than this are dropped, acknowledged or not. Default 7 days.
    pub max_age: Duration,
    /// How long a delivery may stay unacknowledged before it is delivered again. Default 30 s.
    pub ack_wait: Duration,
    /// Deliveries of one entry to one consumer before it goes to the dead-letter log.
    /// Default 5.
    pub max_deliver: u32,
    /// When entries reach the disk. Default [`StreamSync::Always`].
    pub sync: StreamSync,
}

/// When a durable channel's entries reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamSync {
    /// Each group of appends is `fdatasync`ed before its publishes are acknowledged: an
    /// acknowledged publish survives any crash.
    Always,
    /// Appends are written at once (to the operating system) and `fdatasync`ed at this
    /// interval: an acknowledged publish survives a crash of the hub, and a crash of the
    /// machine once the interval has passed. JetStream's file storage does this, every two
    /// minutes by default.
    Every(Duration),
}

impl StreamConfig {
    /// A stream named `name` capturing `channels`, with the defaults.
    pub fn new(name: impl Into<String>, channels: ChannelPattern) -> Self {
        Self {
            name: name.into(),
            channels,
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            sync: StreamSync::Always,
        }
    }
}

/// How long a stream's writer waits for entries: until its next tick, or its next sync if
/// that comes first (a sync interval under the tick is kept too).
fn writer_wait(sync: StreamSync, since_tick: Duration, since_sync: Duration) -> Duration {
    let tick = TICK.saturating_sub(since_tick);
    match sync {
        StreamSync::Always => tick,
        StreamSync::Every(every) => tick.min(every.saturating_sub(since_sync)),
    }
}

/// Queues the entries of one publish, each for its stream, all or none, and between deciding
/// and queuing runs `then`, which may refuse too: each stream's limits are checked against all
/// the publish's entries for it, under the locks of all their queues at once (taken in the
/// streams' address order, which every caller keeps). Returns each entry's stream and ticket.
pub(crate) fn submit_all<E: From<DurableError>>(
    entries: Vec<(Arc<Stream>, Vec<u8>)>,
    then: impl FnOnce() -> Result<(), E>,
) -> Result<Vec<(Arc<Stream>, u64)>, E> {
    let mut streams: Vec<Arc<Stream>> = entries.iter().map(|(s, _)| s.clone()).collect();
    streams.sort_unstable_by_key(Arc::as_ptr);
    streams.dedup_by(|a, b| Arc::ptr_eq(a, b));
    // Each stream with its queue locked, and what this publish adds to it so far.
    let mut taking = Vec::with_capacity(streams.len());
    for stream in &streams {
        taking.push((stream, stream.admission()?, 0, 0));
    }
    let mut sizes = Vec::with_capacity(entries.len());
    for (stream, entry) in &entries {
        let (_, admission, count, bytes) = taking
            .iter_mut()
            .find(|(s, ..)| Arc::ptr_eq(s, stream))
            .ok_or_else(|| DurableError::Unavailable(stream.config.name.clone()))?;
        let size = stored_size(entry);
        let (queued, queued_bytes) = admission.queued();
        stream.admit(queued + *count, queued_bytes + *bytes, size)?;
        *count += 1;
        *bytes += size;
        sizes.push(size);
    }
    then()?;
    let mut stored = Vec::with_capacity(entries.len());
    for ((stream, entry), size) in entries.into_iter().zip(sizes) {
        let Some((_, admission, ..)) = taking.iter_mut().find(|(s, ..)| Arc::ptr_eq(s, &stream))
        else {
            continue;
        };
        let ticket = admission.push(entry, size);
        stored.push((stream, ticket));
    }
    Ok(stored)
}

/// What an entry weighs against a stream's byte limit: its sealed frame in the log.
fn stored_size(entry: &[u8]) -> u64 {
    entry.len() as u64
        + entente_store::stream::FRAME_OVERHEAD
        + crate::datakeys::SEAL_OVERHEAD as u64
}

/// Why a durable publish or subscription was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DurableError {
    /// The stream holds as much as it may.
    #[error(
        "the durable channel `{stream}` is full ({what}): nothing was stored or routed; try \
         again once its consumers catch up"
    )]
    Full {
        /// The stream.
        stream: String,
        /// Which limit, with its value.
        what: String,
    },
    /// The stream's writer failed; it takes nothing until the hub restarts.
    #[error(
        "the durable channel `{0}` is unavailable: the hub refuses to take what it can't store"
    )]
    Unavailable(String),
    /// No stream captures the pattern of a durable subscription.
    #[error("no durable channel captures `{0}`")]
    NoStream(String),
    /// The consumer's name breaks the rules.
    #[error("a durable consumer's name is 1 to 64 of `a-z`, `0-9`, `-`, `_`")]
    BadName,
    /// The consumer was made for another pattern.
    #[error("{0}")]
    NotYours(String),
    /// What was to be stored could not be: said why.
    #[error("{0}")]
    Unstorable(String),
    /// The consumer belongs to another principal (named in the audit record of the refusal,
    /// not to the caller).
    #[error("the durable consumer `{name}` is another principal's: choose another name")]
    Others {
        /// The consumer.
        name: String,
        /// Its owner.
        owner: String,
    },
    /// Another session holds the consumer.
    #[error("the durable consumer `{0}` is held by another session")]
    InUse(String),
    /// A new consumer would pass the stream's bound, or its owner's there.
    #[error(
        "the durable channel `{stream}` keeps at most {max} consumers{whose}: use one it \
         keeps already"
    )]
    TooManyConsumers {
        /// The stream.
        stream: String,
        /// The bound.
        max: usize,
        /// ` of one principal`, or nothing for the stream's own bound.
        whose: &'static str,
    },
}

/// The most consumers a stream keeps (each is kept, and holds retention back, until its
/// entries are done), and the most one principal makes there.
pub(crate) const MAX_CONSUMERS: usize = 1024;
/// See [`MAX_CONSUMERS`].
pub(crate) const MAX_CONSUMERS_PER_OWNER: usize = 16;

/// The hub's streams.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    streams: Vec<Arc<Stream>>,
    /// Where streams are kept (`streams_dir`), configured ones or not.
    dir: Option<PathBuf>,
    /// The latest sender key (encoded `SenderKey`) of each (sender, channel, epoch) routed.
    sender_keys: Mutex<RememberedKeys>,
}

/// A remembered key's sender, channel and epoch.
type KeyId = (String, String, u64);

/// Sender keys remembered for durable entries, and the bytes they take, in all and by sender;
/// the least recently remembered go first.
#[derive(Debug, Default)]
struct RememberedKeys {
    /// Each key, with when it was last remembered (`clock`).
    keys: HashMap<KeyId, (Bytes, u64)>,
    /// Every key by when it was last remembered, oldest first.
    order: BTreeMap<u64, KeyId>,
    bytes: usize,
    /// Each sender's keys by when they were last remembered, and their bytes.
    shares: HashMap<String, (BTreeMap<u64, KeyId>, usize)>,
    clock: u64,
}

impl RememberedKeys {
    /// Remembers `key` as the newest; then the sender's oldest go while its share is passed,
    /// and the oldest of all while the whole is (the newest always stays).
    fn remember(&mut self, id: KeyId, key: Bytes) {
        self.forget(&id);
        self.clock += 1;
        let (len, at, sender) = (key.len(), self.clock, id.0.clone());
        self.keys.insert(id.clone(), (key, at));
        self.order.insert(at, id.clone());
        self.bytes = self.bytes.saturating_add(len);
        let share = self.shares.entry(sender.clone()).or_default();
        share.0.insert(at, id);
        share.1 = share.1.saturating_add(len);
        while let Some((keys, bytes)) = self.shares.get(&sender)
            && keys.len() > 1
            && (keys.len() > MAX_REMEMBERED_KEYS_PER_SENDER
                || *bytes > MAX_REMEMBERED_KEY_BYTES_PER_SENDER)
        {
            let Some((_, oldest)) = keys.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.forget(&oldest);
        }
        while self.keys.len() > 1
            && (self.keys.len() > MAX_REMEMBERED_KEYS || self.bytes > MAX_REMEMBERED_KEY_BYTES)
        {
            let Some((_, oldest)) = self.order.first_key_value() else {
                break;
            };
            let oldest = oldest.clone();
            self.forget(&oldest);
        }
    }

    fn forget(&mut self, id: &KeyId) {
        let Some((key, at)) = self.keys.remove(id) else {
            return;
        };
        self.order.remove(&at);
        self.bytes = self.bytes.saturating_sub(key.len());
        if let Some(share) = self.shares.get_mut(&id.0) {
            share.0.remove(&at);
            share.1 = share.1.saturating_sub(key.len());
            if share.0.is_empty() {
                self.shares.remove(&id.0);
            }
        }
    }

    fn get(&self, id: &KeyId) -> Option<&Bytes> {
        self.keys.get(id).map(|(key, _)| key)
    }
}

/// The stream capturing a channel, and the entry for it or why there is none.
pub(crate) type CheckedEntry = (Arc<Stream>, Result<Vec<u8>, EntryError>);

/// Why a publish's group can't be a durable entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EntryError {
    /// With the sender keys it needs, more than a consumer takes in one delivery.
    TooLarge,
    /// Its batches need the sender key of this epoch, which the publish does not carry and
    /// the hub does not remember (never routed, or forgotten): stored, it would never open.
    MissingKey(u64),
}

/// One stream.
#[derive(Debug)]
pub(crate) struct Stream {
    config: StreamConfig,
    dir: PathBuf,
    log: Arc<Mutex<StreamLog>>,
    dead: Arc<Mutex<StreamLog>>,
    keys: Arc<DataKeys>,
    queue: Committer<Vec<u8>>,
    /// What the log keeps, for admission without taking its lock.
    kept_entries: AtomicU64,
    kept_bytes: AtomicU64,
    /// The next sequence the log hands out: consumers wait for it to move.
    appended: watch::Sender<u64>,
    /// The log's first sequence, read by deliveries without the log's lock (which the writer
    /// holds through its syncs).
    first: AtomicU64,
    /// The oldest data-key version a dead letter was sealed under (`u32::MAX`: none). Dead
    /// letters die in any order, so the first one kept says nothing of the others; this only
    /// goes down while the hub runs, and is found again at start.
    dead_oldest: AtomicU32,
    consumers: Mutex<BTreeMap<String, Arc<Consumer>>>,
    stats: Arc<Stats>,
    auditor: Auditor,
}

/// A durable consumer.
#[derive(Debug)]
pub(crate) struct Consumer {
    name: String,
    owner: Principal,
    pattern: ChannelPattern,
    state: Mutex<ConsumerState>,
    /// Wakes the delivery task: acknowledgements, detaching.
    wake: Notify,
    /// The session holding it, if any.
    holder: Mutex<Option<u64>>,
}

#[derive(Debug, Default)]
struct ConsumerState {
    /// Every entry below is done (acknowledged, dead-lettered, purged or not for it).
    floor: u64,
    /// Entries at or above the floor that are done.
    done: BTreeSet<u64>,
    /// Deliveries so far of entries not done.
    attempts: BTreeMap<u64, u32>,
    /// Entries delivered and awaiting acknowledgement, with their redelivery time.
    in_flight: BTreeMap<u64, Instant>,
    /// The next entry never delivered in this run.
    next: u64,
    /// Changed since last written.
    dirty: bool,
    /// Since when no session has held it (since it was loaded, or since its last holder let
    /// go); `None` while held.
    idle_since: Option<Instant>,
    /// Goes up each time a holder lets go: a delivery task of an earlier holding (being
    /// aborted, but maybe running on another worker) leaves the state alone.
    generation: u64,
    /// Entries being moved to the dead-letter log, whichever holding started the move: one
    /// move at a time per entry.
    moving: BTreeSet<u64>,
}

/// A consumer held by a session: its delivery task ends when this drops.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) consumer: Arc<Consumer>,
    task: tokio::task::JoinHandle<()>,
}

/// The longest `ack_wait` a durable channel may have.
const MAX_ACK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Whether some channel is routed to both `a` and `b` (as subscriptions are: `*` one token,
/// `>` one or more at the end, and a wildcard first token no system channel).
fn patterns_overlap(a: &ChannelPattern, b: &ChannelPattern) -> bool {
    let (first_a, first_b) = (
        a.tokens().next().unwrap_or_default(),
        b.tokens().next().unwrap_or_default(),
    );
    let wildcard = |t: &str| t == "*" || t == ">";
    if (wildcard(first_a) && first_b.starts_with('_'))
        || (wildcard(first_b) && first_a.starts_with('_'))
    {
        return false;
    }
    let (mut a, mut b) = (a.tokens(), b.tokens());
    loop {
        match (a.next(), b.next()) {
            (None, None) | (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The writer threads, joined at shutdown.
#[derive(Debug, Default)]
pub(crate) struct StreamWriters(Vec<(String, JoinHandle<bool>)>);

/// Opens each of `configs` under `dir` and starts its writer, into `streams` and `writers`
/// ([`Streams::open`]).
fn open_each(
    configs: &[StreamConfig],
    dir: &Path,
    keys: &Arc<DataKeys>,
    stats: &Arc<Stats>,
    auditor: &Auditor,
    streams: &mut Vec<Arc<Stream>>,
    writers: &mut StreamWriters,
) -> Result<(), HubError> {
    let mut names = std::collections::HashSet::new();
    for config in configs {
        if !valid_name(&config.name) || !names.insert(config.name.clone()) {
            return Err(HubError::Config(
                "each durable channel needs a unique name of 1 to 64 of `a-z`, `0-9`, `-`, `_`",
            ));
        }
        if config.max_messages == 0
            || config.max_bytes == 0
            || config.max_deliver == 0
            || config.ack_wait.is_zero()
            || config.max_age.is_zero()
            || config.sync == StreamSync::Every(Duration::ZERO)
        {
            return Err(HubError::Config(
                "a durable channel's limits, `ack_wait`, `max_deliver` and a `sync` interval \
                 must not be zero",
            ));
        }
        if config.ack_wait > MAX_ACK_WAIT {
            return Err(HubError::Config(
                "a durable channel's `ack_wait` must be at most a day",
            ));
        }
        // Each channel is stored in the first stream capturing it: a durable subscription
        // bound to a later one would read nothing while its owner is sealed to.
        if let Some(other) = configs
            .iter()
            .take_while(|c| c.name != config.name)
            .find(|c| patterns_overlap(&c.channels, &config.channels))
        {
            return Err(HubError::Durable(format!(
                "`{}` (`{}`) and `{}` (`{}`) capture some of the same channels: each \
                 channel may be captured by one durable channel only",
                other.name, other.channels, config.name, config.channels
            )));
        }
        let stream = Arc::new(Stream::open(config.clone(), dir, keys, stats, auditor)?);
        let writer = {
            let stream = stream.clone();
            std::thread::Builder::new()
                .name(format!("entente-stream-{}", config.name))
                .spawn(move || stream.run())
                .map_err(|e| HubError::Durable(format!("starting a stream writer: {e}")))?
        };
        writers.0.push((config.name.clone(), writer));
        streams.push(stream);
    }
    Ok(())
}

// === impl Streams ===

impl Streams {
    /// Opens (or creates) each configured stream under `dir`, with its consumers, and starts
    /// their writers.
    pub(crate) fn open(
        configs: &[StreamConfig],
        dir: Option<&Path>,
        keys: &Arc<DataKeys>,
        stats: &Arc<Stats>,
        auditor: &Auditor,
    ) -> Result<(Self, StreamWriters), HubError> {
        let mut streams = Vec::new();
        let mut writers = StreamWriters::default();
        if configs.is_empty() {
            // Streams configured before may be kept there still: their data keys stay.
            let streams = Self {
                dir: dir.map(Path::to_path_buf),
                ..Self::default()
            };
            return Ok((streams, writers));
        }
        let dir = dir.ok_or(HubError::Config(
            "durable channels need `streams_dir`, where they are kept",
        ))?;
        // A stream that fails to open leaves none running: those opened before it end here,
        // their writers joined (each holds its directory's lock).
        if let Err(e) = open_each(
            configs,
            dir,
            keys,
            stats,
            auditor,
            &mut streams,
            &mut writers,
        ) {
            for stream in &streams {
                stream.queue.close();
            }
            for (_, writer) in writers.0 {
                let _ = writer.join();
            }
            return Err(e);
        }
        Ok((
            Self {
                streams,
                dir: Some(dir.to_path_buf()),
                sender_keys: Mutex::default(),
            },
            writers,
        ))
    }

    /// Whether any channel is durable.
    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The stream capturing `channel`, if any (the first configured). Streams match as
    /// subscriptions do ([`authz::matches`]): one whose pattern begins with a wildcard captures
    /// no system channel (no one's directs or replies).
    pub(crate) fn for_channel(&self, channel: &Channel) -> Option<&Arc<Stream>> {
        self.streams
            .iter()
            .find(|s| authz::matches(&s.config.channels, channel))
    }

    /// The stream a durable subscription to `pattern` reads: one whose pattern is `pattern`
    /// or, for a literal channel, captures it.
    pub(crate) fn for_pattern(&self, pattern: &ChannelPattern) -> Option<&Arc<Stream>> {
        self.streams.iter().find(|s| {
            s.config.channels == *pattern
                || (pattern.is_literal()
                    && Channel::parse(pattern.as_str())
                        .is_ok_and(|c| authz::matches(&s.config.channels, &c)))
        })
    }

    /// Remembers the sender keys of a publish that was accepted: `(sender, channel, epoch,
    /// encoded SenderKey)`, each as the newest (a key the SDK sends again each second stays).
    /// Past its share (1024 keys, 16 MiB) a sender's least recently remembered go, not
    /// others'; past the whole (65 536, 256 MiB) the least recently remembered of all.
    pub(crate) fn remember(&self, keys: impl IntoIterator<Item = (String, String, u64, Bytes)>) {
        let mut cache = lock(&self.sender_keys);
        for (sender, channel, epoch, key) in keys {
            cache.remember((sender, channel, epoch), key);
        }
    }

    /// Whether a stream may capture reply channels under the reply namespace `root`.
    pub(crate) fn captures_under(&self, root: &Channel) -> bool {
        self.streams
            .iter()
            .any(|s| matches_some_under(&s.config.channels, root))
    }

    /// The stream capturing `channel`, if one does, and the entry a group on it is stored as
    /// ([`entry`](Self::entry)), checked as the delivery it will be: refused
    /// ([`EntryError::TooLarge`]) if a consumer's delivery of it (with its sequence and
    /// attempt) would pass the frame size, or its decoding budget (the sender keys of earlier
    /// publishes add to the publish's own).
    pub(crate) fn checked_entry(
        &self,
        channel: &Channel,
        sender: &str,
        epochs: &[u64],
        carried: &[u64],
        body: &[u8],
        limits: &entente_wire::Limits,
    ) -> Option<CheckedEntry> {
        let stream = self.for_channel(channel)?.clone();
        // A delivery also carries its sequence and attempt (a key and a varint each), as a
        // `Deliver` inside a `ServerFrame` (the one an element of decoding cost, the
        // top-level frame none).
        let mut budget = *limits;
        budget.max_decoded_overhead = budget
            .max_decoded_overhead
            .saturating_sub(entente_wire::DECODED_ELEMENT_COST);
        let fits = |delivered: &[u8]| {
            crate::codec::max_deliver_len(delivered.len() + DELIVERY_SUFFIX_LEN)
                <= limits.max_frame_bytes
                && <entente_wire::Deliver as entente_wire::Bounded>::scan(delivered, &budget)
                    .is_ok()
        };
        let entry = self
            .entry(
                channel,
                sender,
                epochs,
                carried,
                body,
                limits.max_frame_bytes,
            )
            .and_then(|entry| {
                // What a consumer is sent: the entry after its channel's name.
                let name = 2 + channel.as_str().len();
                if entry.get(name..).is_some_and(fits) {
                    Ok(entry)
                } else {
                    Err(EntryError::TooLarge)
                }
            });
        Some((stream, entry))
    }

    /// The entry to store for a channel group: its channel, the sender keys its batches need
    /// that the group does not carry (from what was routed before), and the group's body;
    /// an error as soon as the keys and the body (what a consumer is sent) exceed
    /// `max_delivered` bytes, or when a key needed is not remembered.
    fn entry(
        &self,
        channel: &Channel,
        sender: &str,
        epochs: &[u64],
        carried: &[u64],
        body: &[u8],
        max_delivered: usize,
    ) -> Result<Vec<u8>, EntryError> {
        let cache = lock(&self.sender_keys);
        let mut entry = Vec::with_capacity(2 + channel.as_str().len() + body.len() + 256);
        let name = channel.as_str().as_bytes();
        entry.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        entry.extend_from_slice(name);
        let mut buf = BytesMut::new();
        // A reply's key may be its reply namespace root's.
        let root = namespace::reply_root_name(channel);
        for epoch in epochs.iter().filter(|e| !carried.contains(e)) {
            let key = cache
                .get(&(sender.to_owned(), channel.as_str().to_owned(), *epoch))
                .or_else(|| {
                    let root = root?.to_owned();
                    cache.get(&(sender.to_owned(), root, *epoch))
                })
                .ok_or(EntryError::MissingKey(*epoch))?;
            if buf
                .len()
                .saturating_add(key.len())
                .saturating_add(body.len())
                > max_delivered
            {
                return Err(EntryError::TooLarge);
            }
            prost::encoding::encode_key(
                SENDER_KEYS_TAG,
                prost::encoding::WireType::LengthDelimited,
                &mut buf,
            );
            prost::encoding::encode_varint(key.len() as u64, &mut buf);
            buf.put_slice(key);
        }
        if buf.len().saturating_add(body.len()) > max_delivered {
            return Err(EntryError::TooLarge);
        }
        entry.extend_from_slice(&buf);
        entry.extend_from_slice(body);
        Ok(entry)
    }

    /// The owners of consumers whose pattern matches `channel`: members of it even while
    /// offline, so that publishers seal to them.
    pub(crate) fn members(&self, channel: &Channel) -> Vec<Principal> {
        let mut members = Vec::new();
        for stream in self
            .streams
            .iter()
            .filter(|s| authz::matches(&s.config.channels, channel))
        {
            for consumer in lock(&stream.consumers).values() {
                if authz::matches(&consumer.pattern, channel) && !members.contains(&consumer.owner)
                {
                    members.push(consumer.owner.clone());
                }
            }
        }
        members
    }

    /// The oldest data-key version an entry or a dead letter kept at rest was sealed under
    /// (the current one if nothing is kept); `None`, said in the hub's log, when that can't be
    /// told, and no data key may then be retired: a stream's first entry can't be read (a
    /// read error is never taken for "nothing kept"), a dead letter could not be read at
    /// start, or the streams directory keeps streams no longer configured (whose entries open
    /// again once they are) or can't be looked through.
    pub(crate) fn oldest_key_version(&self, keys: &DataKeys) -> Option<u32> {
        let mut oldest = keys.current_version();
        for stream in &self.streams {
            // Entries are sealed in order: the first kept is the oldest.
            let log = lock(&stream.log);
            let first = log.first_seq();
            let head = log.read(first);
            drop(log);
            match head {
                Ok(Some(entry)) => {
                    if let Some(version) = DataKeys::version_of(&entry.payload) {
                        oldest = oldest.min(version);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(
                        stream = %stream.config.name,
                        seq = first,
                        error = %e,
                        "a durable channel's first entry can't be read: no data key is retired \
                         this round"
                    );
                    return None;
                }
            }
            let dead = stream.dead_oldest.load(Ordering::Acquire);
            if dead == DEAD_UNREAD {
                tracing::warn!(
                    stream = %stream.config.name,
                    "a durable channel's dead letter could not be read at start: no data key is \
                     retired until the hub restarts"
                );
                return None;
            }
            oldest = oldest.min(dead);
        }
        if let Some(dir) = &self.dir {
            let configured: Vec<&str> = self
                .streams
                .iter()
                .map(|s| s.config.name.as_str())
                .collect();
            match unconfigured_streams(dir, &configured) {
                Ok(found) if found.is_empty() => {}
                Ok(found) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        streams = %found.join(", "),
                        "durable channels no longer configured are kept in the streams \
                         directory: no data key is retired while they are (their entries open \
                         again once configured again); delete a directory to let go of what it \
                         keeps"
                    );
                    return None;
                }
                Err(why) => {
                    tracing::warn!(
                        dir = %dir.display(),
                        %why,
                        "the streams directory can't be looked through for durable channels no \
                         longer configured: no data key is retired this round"
                    );
                    return None;
                }
            }
        }
        Some(oldest)
    }

    /// Stops taking entries; each writer writes what is queued, saves its consumers and ends.
    pub(crate) fn close(&self) {
        for stream in &self.streams {
            stream.queue.close();
        }
    }
}

// === impl StreamWriters ===

impl StreamWriters {
    /// Waits for every writer to end (after [`Streams::close`]); says which streams failed
    /// (at any time, or at their last write or sync).
    pub(crate) async fn join(self) -> Vec<String> {
        let mut failures = Vec::new();
        for (name, writer) in self.0 {
            match tokio::task::spawn_blocking(move || writer.join()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => failures.push(format!(
                    "durable channel `{name}` failed: what it was given since was refused"
                )),
                _ => failures.push(format!("durable channel `{name}`'s writer panicked")),
            }
        }
        failures
    }
}

// === impl Stream ===

impl Stream {
    fn open(
        config: StreamConfig,
        root: &Path,
        keys: &Arc<DataKeys>,
        stats: &Arc<Stats>,
        auditor: &Auditor,
    ) -> Result<Self, HubError> {
        let dir = root.join(&config.name);
        let stream_error = |e: entente_store::stream::StreamError| HubError::Durable(e.to_string());
        // Each log's repair is reported as soon as it is made, before anything else may fail
        // (the hub waits for the records before it starts, or stops).
        let log =
            StreamLog::open(dir.join("entries"), StreamOptions::default()).map_err(stream_error)?;
        report_cut(&config.name, "entries", log.recovery(), auditor)?;
        let dead =
            StreamLog::open(dir.join("dead"), StreamOptions::default()).map_err(stream_error)?;
        report_cut(&config.name, "dead letters", dead.recovery(), auditor)?;
        let consumers = load_consumers(&dir.join("consumers"), (log.first_seq(), log.next_seq()))?;
        let stream = Self {
            kept_entries: AtomicU64::new(log.len()),
            kept_bytes: AtomicU64::new(log.bytes()),
            appended: watch::Sender::new(log.next_seq()),
            first: AtomicU64::new(log.first_seq()),
            dead_oldest: AtomicU32::new(oldest_dead_letter(&dead).unwrap_or_else(|e| {
                tracing::error!(
                    stream = %config.name,
                    error = %e,
                    "a dead letter can't be read at start: no data key is retired until the hub \
                     restarts"
                );
                DEAD_UNREAD
            })),
            log: Arc::new(Mutex::new(log)),
            dead: Arc::new(Mutex::new(dead)),
            keys: keys.clone(),
            queue: Committer::new(MAX_BACKLOG),
            consumers: Mutex::new(consumers),
            stats: stats.clone(),
            auditor: auditor.clone(),
            config,
            dir,
        };
        Ok(stream)
    }

    /// The stream's queue, locked for submits.
    fn admission(&self) -> Result<Admission<'_, Vec<u8>>, DurableError> {
        self.queue
            .admission()
            .map_err(|Failed| DurableError::Unavailable(self.config.name.clone()))
    }

    /// Whether one more entry of `size` bytes fits the stream's limits, with `queued`
    /// entries of `queued_bytes` waiting for the writer or being written.
    fn admit(&self, queued: u64, queued_bytes: u64, size: u64) -> Result<(), DurableError> {
        let (max_messages, max_bytes) = (self.config.max_messages, self.config.max_bytes);
        let kept = self.kept_entries.load(Ordering::Acquire);
        let bytes = self.kept_bytes.load(Ordering::Acquire);
        let what = if kept.saturating_add(queued) >= max_messages {
            format!("{max_messages} messages")
        } else if bytes.saturating_add(queued_bytes).saturating_add(size) > max_bytes {
            format!("{max_bytes} bytes")
        } else {
            return Ok(());
        };
        stats::bump(&self.stats.durable_full);
        Err(DurableError::Full {
            stream: self.config.name.clone(),
            what,
        })
    }

    /// Waits until the entries up to `ticket` are durable.
    pub(crate) async fn durable(&self, ticket: u64) -> Result<(), DurableError> {
        self.queue
            .durable(ticket)
            .await
            .map_err(|_| DurableError::Unavailable(self.config.name.clone()))
    }

    /// Waits while the writer is behind.
    pub(crate) async fn room(&self) {
        self.queue.room().await;
    }

    /// The consumer `name` for `owner` reading `pattern`, made (and saved) if it is new;
    /// held by `session` until [`release`](Self::release).
    pub(crate) fn hold(
        &self,
        name: &str,
        owner: &Principal,
        pattern: &ChannelPattern,
        session: u64,
    ) -> Result<Arc<Consumer>, DurableError> {
        if !valid_name(name) {
            return Err(DurableError::BadName);
        }
        // Under the consumers' lock to the end: an idle consumer is forgotten under it too, so
        // one taken here is never one being forgotten.
        let mut consumers = lock(&self.consumers);
        let consumer = {
            match consumers.get(name) {
                Some(c) => c.clone(),
                None => {
                    let owned = consumers.values().filter(|c| c.owner == *owner).count();
                    let bound = if consumers.len() >= MAX_CONSUMERS {
                        Some((MAX_CONSUMERS, ""))
                    } else if owned >= MAX_CONSUMERS_PER_OWNER {
                        Some((MAX_CONSUMERS_PER_OWNER, " of one principal"))
                    } else {
                        None
                    };
                    if let Some((max, whose)) = bound {
                        return Err(DurableError::TooManyConsumers {
                            stream: self.config.name.clone(),
                            max,
                            whose,
                        });
                    }
                    let first = self.first.load(Ordering::Acquire);
                    let consumer = Arc::new(Consumer::new(name, owner, pattern, first));
                    save_consumer(&self.dir.join("consumers"), &consumer)
                        .map_err(|_| DurableError::Unavailable(self.config.name.clone()))?;
                    consumers.insert(name.to_owned(), consumer.clone());
                    consumer
                }
            }
        };
        if consumer.owner != *owner {
            return Err(DurableError::Others {
                name: name.to_owned(),
                owner: consumer.owner.to_string(),
            });
        }
        if consumer.pattern != *pattern {
            return Err(DurableError::NotYours(format!(
                "the durable consumer `{name}` reads `{}`, not `{pattern}`",
                consumer.pattern
            )));
        }
        let mut holder = lock(&consumer.holder);
        if holder.is_some() {
            return Err(DurableError::InUse(name.to_owned()));
        }
        *holder = Some(session);
        drop(holder);
        drop(consumers);
        lock(&consumer.state).idle_since = None;
        Ok(consumer)
    }

    /// Delivers `consumer`'s entries to a session through `outlet`, once `start` says so (the
    /// subscription's `Ack` is queued before them); nothing if it says otherwise or is
    /// dropped.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        outlet: Outlet,
        start: oneshot::Receiver<bool>,
    ) -> Held {
        let stream = self.clone();
        let delivering = consumer.clone();
        // This holding's generation: the task touches the state only while it is current.
        let generation = lock(&consumer.state).generation;
        let task = tokio::spawn(async move {
            if start.await == Ok(true) {
                let Outlet {
                    subscription_id,
                    outbound,
                    gate,
                    connection,
                    slow_consumer_timeout,
                } = outlet;
                let to = Recipient {
                    subscription_id,
                    outbound,
                    gate,
                    connection,
                    slow_consumer_timeout,
                    generation,
                };
                delivery(stream, delivering, to).await;
            }
        });
        Held { consumer, task }
    }

    /// The writer: seal, append (with one `fdatasync`, or buffered), report; once a second,
    /// purge and save, and sync what is buffered when its interval has passed. Returns
    /// whether it ended whole (closed, everything taken written and synced).
    fn run(&self) -> bool {
        let mut last_tick = Instant::now();
        let mut last_sync = Instant::now();
        loop {
            let wait = writer_wait(self.config.sync, last_tick.elapsed(), last_sync.elapsed());
            let (entries, closed) = self.queue.take(wait);
            if !entries.is_empty() && !self.append(&entries) {
                return false;
            }
            let due = match self.config.sync {
                StreamSync::Always => false,
                StreamSync::Every(every) => closed || last_sync.elapsed() >= every,
            };
            // Synced before the tick, which writes the consumers' states past what it synced.
            if due {
                if lock(&self.log).sync().is_err() {
                    stats::bump(&self.stats.durable_failures);
                    self.queue.fail();
                    return false;
                }
                last_sync = Instant::now();
            }
            if closed || last_tick.elapsed() >= TICK {
                self.tick();
                last_tick = Instant::now();
            }
            if closed {
                // Failed elsewhere too (a dead letter that could not be moved)?
                return self.queue.check().is_ok();
            }
        }
    }

    fn append(&self, entries: &[Vec<u8>]) -> bool {
        let mut log = lock(&self.log);
        let first = log.next_seq();
        let sealed: Result<Vec<Vec<u8>>, _> = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                self.keys
                    .seal(&aad(&self.config.name, first + i as u64), entry)
            })
            .collect();
        let appended = sealed.ok().and_then(|sealed| {
            let refs: Vec<&[u8]> = sealed.iter().map(Vec::as_slice).collect();
            match self.config.sync {
                StreamSync::Always => log.append_all(&refs, now_ms()).ok(),
                StreamSync::Every(_) => log.append_all_buffered(&refs, now_ms()).ok(),
            }
        });
        if appended.is_none() {
            drop(log);
            stats::bump(&self.stats.durable_failures);
            self.queue.fail();
            return false;
        }
        let (kept, kept_bytes) = (log.len(), log.bytes());
        let next = log.next_seq();
        drop(log);
        stats::add(&self.stats.durable_stored, entries.len() as u64);
        // What was written now counts as kept instead of as being written.
        self.queue.committed(entries.len() as u64, || {
            self.kept_entries.store(kept, Ordering::Release);
            self.kept_bytes.store(kept_bytes, Ordering::Release);
        });
        self.appended.send_replace(next);
        true
    }

    /// Purges what every consumer is done with and what is too old, and saves the consumers
    /// that changed. While the audit log is failed, no consumer is forgotten and no dead
    /// letter dropped past the limits: each is recorded, and what the hub would record it
    /// does not do then (AUDIT.md §5).
    fn tick(&self) {
        let max_age_ms = u64::try_from(self.config.max_age.as_millis()).unwrap_or(u64::MAX);
        let audited = self.auditor.check().is_ok();
        if audited {
            self.expire_idle(max_age_ms);
        }
        let consumers: Vec<Arc<Consumer>> = lock(&self.consumers).values().cloned().collect();
        // The floors before the log's lock, never under it: no lock is taken under another
        // here; a floor only rises, so one read early only purges less.
        let floor = consumers.iter().map(|c| lock(&c.state).floor).min();
        let mut log = lock(&self.log);
        let too_old = log.first_since(now_ms().saturating_sub(max_age_ms));
        let done = floor.unwrap_or(log.first_seq());
        let purge = too_old.max(if consumers.is_empty() {
            log.first_seq()
        } else {
            done
        });
        if purge > log.first_seq() {
            let dropped_unread = too_old.saturating_sub(done.max(log.first_seq()));
            if log.purge_to(purge).is_ok() {
                stats::add(&self.stats.durable_expired, dropped_unread);
                self.kept_entries.store(log.len(), Ordering::Release);
                self.kept_bytes.store(log.bytes(), Ordering::Release);
            }
        }
        let first = log.first_seq();
        self.first.store(first, Ordering::Release);
        drop(log);
        // Dead letters are kept as long as entries are, no longer, and no more of them than
        // the stream's limits allow (limits lowered since they were moved).
        let dropped = {
            let mut dead = lock(&self.dead);
            let too_old = dead.first_since(now_ms().saturating_sub(max_age_ms));
            if too_old > dead.first_seq() && dead.purge_to(too_old).is_err() {
                stats::bump(&self.stats.durable_failures);
            }
            if audited {
                self.bound_dead(&mut dead)
            } else {
                None
            }
        };
        if let Some(dropped) = dropped {
            self.record_dead_dropped(dropped);
        }
        // The changed states, as they are now; then what they passed is synced, then they are
        // written: a floor never reaches the disk ahead of its entries (buffered appends,
        // `sync` at an interval), or after a crash sequences under it would be handed out
        // again and skipped as done.
        let changed: Vec<(Arc<Consumer>, String)> = consumers
            .into_iter()
            .filter_map(|consumer| {
                let mut state = lock(&consumer.state);
                state.advance_to(first);
                let text =
                    std::mem::take(&mut state.dirty).then(|| consumer_text(&consumer, &state));
                drop(state);
                text.map(|text| (consumer, text))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        let dir = self.dir.join("consumers");
        let synced = lock(&self.log).sync().is_ok();
        for (consumer, text) in changed {
            if !synced || write_consumer(&dir, &consumer.name, &text).is_err() {
                // Kept dirty: written at the next tick. Acknowledgements lost in a crash
                // meanwhile are delivered again (at least once).
                lock(&consumer.state).dirty = true;
            }
        }
        if !synced {
            stats::bump(&self.stats.durable_failures);
        }
    }

    /// Forgets the consumers no session has held for the stream's `max_age`: everything they
    /// had not read is gone by age, so a consumer made again by that name starts where this one
    /// would have (the stream's first entry), and the bound on consumers is not held by ones
    /// left behind.
    fn expire_idle(&self, max_age_ms: u64) {
        let now = Instant::now();
        let max_age = Duration::from_millis(max_age_ms);
        let mut consumers = lock(&self.consumers);
        let idle: Vec<String> = consumers
            .values()
            .filter(|c| {
                lock(&c.holder).is_none()
                    && lock(&c.state)
                        .idle_since
                        .is_some_and(|since| now.saturating_duration_since(since) >= max_age)
            })
            .map(|c| c.name.clone())
            .collect();
        let dir = self.dir.join("consumers");
        for name in idle {
            match std::fs::remove_file(dir.join(format!("{name}.state"))) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => continue,
            }
            let Some(consumer) = consumers.remove(&name) else {
                continue;
            };
            // What it had not read is kept no longer for it: said, with where it stood.
            let floor = lock(&consumer.state).floor;
            let _ = hub_record(
                &self.auditor,
                entente_audit::Outcome::Success,
                "durable-consumer-forgotten",
                &format!("{}/{name}", self.config.name),
                &format!(
                    "owner `{}`: held by no session for the stream's max_age; it had read up \
                     to sequence {floor}",
                    consumer.owner
                ),
            );
        }
    }

    /// Drops the oldest dead letters past the stream's own limits (`max_messages`,
    /// `max_bytes`; each consumer that never acknowledges moves its own copy of every entry
    /// here, and the disk is not theirs to fill): the sequences dropped, if any.
    fn bound_dead(&self, dead: &mut StreamLog) -> Option<(u64, u64)> {
        // The newest is kept whatever its size: the letter just moved, which its record says
        // was moved.
        let keep = dead
            .first_within(self.config.max_messages, self.config.max_bytes)
            .min(dead.next_seq().saturating_sub(1));
        let first = dead.first_seq();
        if keep <= first {
            return None;
        }
        if dead.purge_to(keep).is_err() {
            stats::bump(&self.stats.durable_failures);
            return None;
        }
        Some((first, keep - 1))
    }

    /// Records (and logs) that dead letters `from` to `to` were dropped to keep the
    /// dead-letter log within the stream's limits.
    fn record_dead_dropped(&self, (from, to): (u64, u64)) {
        tracing::warn!(
            stream = %self.config.name,
            from,
            to,
            "dead letters dropped, the oldest first: the dead-letter log is at the stream's limits"
        );
        let _ = hub_record(
            &self.auditor,
            entente_audit::Outcome::Success,
            "dead-letters-dropped",
            &self.config.name,
            &format!(
                "dead letters {from} to {to}, the oldest: past the stream's limits of {} \
                 messages, {} bytes",
                self.config.max_messages, self.config.max_bytes
            ),
        );
    }

    /// Reads and opens entry `seq`: its channel and `Deliver` body. `None` if it is gone.
    fn read(&self, seq: u64) -> Result<Option<(Channel, Bytes)>, String> {
        let entry = match lock(&self.log).read(seq) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let plain = self
            .keys
            .open(&aad(&self.config.name, seq), &entry.payload)
            .map_err(|e| format!("entry {seq}: {e}"))?;
        let (len, rest) = plain.split_at_checked(2).ok_or("a truncated entry")?;
        let len = usize::from(u16::from_be_bytes([
            len.first().copied().unwrap_or_default(),
            len.get(1).copied().unwrap_or_default(),
        ]));
        let (channel, body) = rest.split_at_checked(len).ok_or("a truncated entry")?;
        let channel = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| Channel::parse(c).ok())
            .ok_or("an entry with a bad channel")?;
        Ok(Some((channel, Bytes::copy_from_slice(body))))
    }

    /// Moves entry `seq` (as stored, sealed, with its sequence) to the dead-letter log and
    /// records it. `false` if it stays the consumer's, tried again: the audit log is failed
    /// (the move would go unrecorded), it could not be read (until reads failed `max_deliver`
    /// more times: then it is recorded as lost, `dead-letter-unreadable`), or the dead-letter
    /// log failed (the stream then fails: it takes nothing more until the hub restarts). One
    /// already purged is gone: nothing to move.
    fn dead_letter(&self, seq: u64, consumer: &str, attempts: u32) -> bool {
        if self.auditor.check().is_err() {
            return false;
        }
        let read = lock(&self.log).read(seq);
        let (operation, detail) = match read {
            Ok(Some(entry)) => {
                let mut payload = seq.to_be_bytes().to_vec();
                payload.extend_from_slice(&entry.payload);
                if let Some(version) = DataKeys::version_of(&entry.payload) {
                    self.dead_oldest.fetch_min(version, Ordering::AcqRel);
                }
                let mut dead = lock(&self.dead);
                if dead.append_all(&[&payload], now_ms()).is_ok() {
                    stats::bump(&self.stats.durable_dead_letters);
                    // Recorded before the lock goes: a drop of this letter (by the next move,
                    // or the tick) is recorded after its move.
                    let detail = format!("not acknowledged after {attempts} deliveries");
                    self.record_letter(seq, consumer, "dead-letter", &detail);
                    let dropped = self.bound_dead(&mut dead);
                    drop(dead);
                    if let Some(dropped) = dropped {
                        self.record_dead_dropped(dropped);
                    }
                    return true;
                }
                drop(dead);
                // The dead-letter log takes nothing more until the hub restarts: the stream
                // fails with it, visibly (publishers refused `UNAVAILABLE`), rather than keep
                // entries pending that can never move.
                stats::bump(&self.stats.durable_failures);
                self.queue.fail();
                tracing::error!(
                    stream = %self.config.name,
                    seq,
                    "the dead-letter log failed: the durable channel takes nothing more"
                );
                return false;
            }
            Ok(None) => return true,
            Err(_) if attempts < self.config.max_deliver.saturating_mul(2) => {
                // A read that fails now may not fail again: tried again after `ack_wait`.
                stats::bump(&self.stats.durable_failures);
                return false;
            }
            Err(e) => {
                // As many reads failed past `max_deliver` as deliveries were allowed: what
                // can't be read is recorded as lost, and the consumer moves on.
                stats::bump(&self.stats.durable_failures);
                tracing::error!(
                    stream = %self.config.name,
                    seq,
                    error = %e,
                    "an entry due for the dead-letter log can't be read: recorded as lost"
                );
                (
                    "dead-letter-unreadable",
                    format!("after {attempts} deliveries, it can't be read: {e}"),
                )
            }
        };
        self.record_letter(seq, consumer, operation, &detail);
        true
    }

    /// Records what became of entry `seq` of `consumer`: moved to the dead-letter log, or
    /// lost there.
    fn record_letter(&self, seq: u64, consumer: &str, operation: &str, detail: &str) {
        let _ = hub_record(
            &self.auditor,
            entente_audit::Outcome::Failed,
            operation,
            &format!("{}#{seq} for consumer `{consumer}`", self.config.name),
            detail,
        );
    }
}

// === impl Consumer ===

impl Consumer {
    fn new(name: &str, owner: &Principal, pattern: &ChannelPattern, first: u64) -> Self {
        Self {
            name: name.to_owned(),
            owner: owner.clone(),
            pattern: pattern.clone(),
            state: Mutex::new(ConsumerState {
                floor: first,
                next: first,
                dirty: true,
                ..ConsumerState::default()
            }),
            wake: Notify::new(),
            holder: Mutex::new(None),
        }
    }

    /// Marks `sequences` acknowledged.
    pub(crate) fn ack(&self, sequences: &[u64]) {
        let mut state = lock(&self.state);
        for &seq in sequences {
            // Whatever was delivered may be acknowledged, also once it is due again.
            if state.in_flight.contains_key(&seq) || state.attempts.contains_key(&seq) {
                state.finish(seq);
            }
        }
        drop(state);
        self.wake.notify_one();
    }
}

// === impl ConsumerState ===

impl ConsumerState {
    /// Whether `seq` is done (below the floor, or acknowledged above it).
    fn is_done(&self, seq: u64) -> bool {
        seq < self.floor || self.done.contains(&seq)
    }

    /// `seq` is done: it advances the floor if it can.
    fn finish(&mut self, seq: u64) {
        self.attempts.remove(&seq);
        self.in_flight.remove(&seq);
        if seq >= self.floor {
            self.done.insert(seq);
        }
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        self.dirty = true;
    }

    /// Everything below `first` is gone from the stream: done.
    fn advance_to(&mut self, first: u64) {
        if first > self.floor {
            self.floor = first;
            self.done = self.done.split_off(&first);
            self.attempts = self.attempts.split_off(&first);
            self.in_flight = self.in_flight.split_off(&first);
            while self.done.remove(&self.floor) {
                self.floor += 1;
            }
            self.dirty = true;
        }
        self.next = self.next.max(self.floor);
    }
}

// === impl Held ===

impl Held {
    /// Ends the delivery task and frees the consumer for another session.
    pub(crate) fn release(self) {
        self.task.abort();
        let mut state = lock(&self.consumer.state);
        // What was in flight is delivered again to the next holder.
        state.in_flight.clear();
        state.next = state.floor;
        state.idle_since = Some(Instant::now());
        state.generation = state.generation.wrapping_add(1);
        drop(state);
        *lock(&self.consumer.holder) = None;
    }
}

// === delivery ===

/// Delivers `consumer`'s entries in order until the session ends or the task is aborted.
async fn delivery(stream: Arc<Stream>, consumer: Arc<Consumer>, to: Recipient) {
    let mut appended = stream.appended.subscribe();
    loop {
        let end = *appended.borrow_and_update();
        let Some((due, fresh, next_deadline)) =
            plan(&stream, &consumer, end, Instant::now(), to.generation)
        else {
            return;
        };
        for seq in due.into_iter().chain(fresh) {
            if !send(&stream, &consumer, &to, seq).await {
                return;
            }
        }
        let busy = {
            let Some(state) = state_of(&consumer, to.generation) else {
                return;
            };
            state.next < (*appended.borrow()).min(ahead_of(&state))
                && state.in_flight.len() < MAX_IN_FLIGHT
        };
        if busy {
            continue;
        }
        let sleep = next_deadline.map_or(TICK, |at| at.saturating_duration_since(Instant::now()));
        tokio::select! {
            () = consumer.wake.notified() => {}
            changed = appended.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(sleep) => {}
            () = to.outbound.closed() => return,
        }
    }
}

/// The oldest data-key version the dead letters of `dead` were sealed under (`u32::MAX`:
/// none); each is its entry's sequence (8 bytes), then the entry as stored. An error if one
/// can't be read: what it was sealed under is not known.
fn oldest_dead_letter(dead: &StreamLog) -> Result<u32, entente_store::stream::StreamError> {
    let mut oldest = u32::MAX;
    for seq in dead.first_seq()..dead.next_seq() {
        if let Some(letter) = dead.read(seq)?
            && let Some(version) = DataKeys::version_of(letter.payload.get(8..).unwrap_or_default())
        {
            oldest = oldest.min(version);
        }
    }
    Ok(oldest)
}

/// The directories in `dir` that keep a stream's entries or dead letters (`entries/`,
/// `dead/`) and are not `configured`: sealed under data keys too, they open again once
/// configured again. An error saying why when they can't all be looked at (more than
/// [`MAX_UNCONFIGURED_DIRS`] entries not configured, or one that can't be read); nothing if
/// `dir` is not there (made when the first stream is opened).
fn unconfigured_streams(dir: &Path, configured: &[&str]) -> Result<Vec<String>, String> {
    let unreadable = |path: &Path, e: std::io::Error| format!("reading `{}`: {e}", path.display());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(unreadable(dir, e)),
    };
    let (mut looked, mut found) = (0, Vec::new());
    for entry in entries {
        let entry = entry.map_err(|e| unreadable(dir, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|name| configured.contains(&name)) {
            continue;
        }
        looked += 1;
        if looked > MAX_UNCONFIGURED_DIRS {
            return Err(format!(
                "more than {MAX_UNCONFIGURED_DIRS} entries are not configured streams"
            ));
        }
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => continue,
            // A link to nothing keeps nothing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unreadable(&path, e)),
        }
        let mut keeps = false;
        for part in ["entries", "dead"] {
            let part = path.join(part);
            match std::fs::metadata(&part) {
                Ok(meta) => keeps |= meta.is_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(unreadable(&part, e)),
            }
        }
        if keeps {
            found.push(format!("`{}`", name.to_string_lossy().escape_debug()));
        }
    }
    Ok(found)
}

/// Says a cut made at open, in the hub's log and its audit log: a torn write (no entry in the
/// cut) or damage that read as one (entries in it), with where the cut bytes were kept.
fn report_cut(
    stream: &str,
    what: &str,
    recovery: &entente_store::stream::StreamRecovery,
    auditor: &Auditor,
) -> Result<(), HubError> {
    let (Some((segment, offset)), Some((kept, bytes))) = (&recovery.cut, &recovery.kept) else {
        return Ok(());
    };
    let entries = recovery.entries_in_cut;
    let detail = format!(
        "{what}: {} cut at byte {offset} from sequence {}; {bytes} bytes kept in {}; {entries} \
         complete entries in them{}",
        segment.display(),
        recovery.cut_from_seq,
        kept.display(),
        if entries == 0 {
            " (a write a crash cut short)"
        } else {
            " (a bad frame before complete ones: most likely damage; the kept copy holds them)"
        }
    );
    if entries == 0 {
        tracing::warn!(stream, %detail, "a durable channel's torn write was cut at open");
    } else {
        tracing::error!(stream, %detail, "a durable channel was cut at open, losing entries");
    }
    hub_record(
        auditor,
        entente_audit::Outcome::Failed,
        "durable-channel-repaired",
        stream,
        &detail,
    )
    .map_err(|_| HubError::Audit("recording a durable channel's repair".into()))
}

/// Queues an `admin` record of the hub's own act on a durable channel.
fn hub_record(
    auditor: &Auditor,
    outcome: entente_audit::Outcome,
    operation: &str,
    target: &str,
    detail: &str,
) -> Result<(), crate::audit::AuditUnavailable> {
    let event = entente_audit::Event::Admin(entente_audit::Admin {
        operation: crate::audit::clear(operation),
        target: crate::audit::clear(target),
        detail: crate::audit::clear(detail),
    });
    auditor
        .submit(crate::audit::HUB_ACTOR, outcome, event)
        .map(drop)
}

/// What to send `consumer` now, with entries up to `end` appended: redeliveries due at `now`
/// (oldest first), then new entries; and when the next redelivery is due.
fn plan(
    stream: &Stream,
    consumer: &Consumer,
    end: u64,
    now: Instant,
    generation: u64,
) -> Option<(Vec<u64>, Vec<u64>, Option<Instant>)> {
    // Not the log's lock: the writer holds it through its syncs, and this runs on a worker
    // that serves sessions. The first sequence only rises.
    let first = stream.first.load(Ordering::Acquire);
    let mut state = state_of(consumer, generation)?;
    state.advance_to(first);
    let due: Vec<u64> = state
        .in_flight
        .iter()
        .filter(|(_, at)| **at <= now)
        .map(|(seq, _)| *seq)
        .collect();
    let room = MAX_IN_FLIGHT.saturating_sub(state.in_flight.len());
    let mut fresh = Vec::new();
    let end = end.min(ahead_of(&state));
    while fresh.len() < room.min(64) && state.next < end {
        if !state.done.contains(&state.next) {
            fresh.push(state.next);
        }
        state.next += 1;
    }
    let next_deadline = state.in_flight.values().min().copied();
    Some((due, fresh, next_deadline))
}

/// The first entry too far past the consumer's floor to be sent now ([`MAX_AHEAD`]).
fn ahead_of(state: &ConsumerState) -> u64 {
    state.floor.saturating_add(MAX_AHEAD)
}

/// Where a durable consumer's deliveries go: a session.
pub(crate) struct Outlet {
    /// The session's subscription.
    pub(crate) subscription_id: u64,
    /// The session's outbound queue.
    pub(crate) outbound: OutboundTx,
    /// What the session's principal may read now.
    pub(crate) gate: Arc<DeliveryGate>,
    /// The session's connection, closed when the session takes nothing for
    /// `slow_consumer_timeout` (as a live subscriber's is).
    pub(crate) connection: ConnectionControl,
    /// [`HubConfig::slow_consumer_timeout`](crate::HubConfig::slow_consumer_timeout).
    pub(crate) slow_consumer_timeout: Duration,
}

/// Where a holding's deliveries go, and which holding it is.
struct Recipient {
    subscription_id: u64,
    outbound: OutboundTx,
    gate: Arc<DeliveryGate>,
    connection: ConnectionControl,
    slow_consumer_timeout: Duration,
    generation: u64,
}

/// `consumer`'s state, if the holding of `generation` is still the current one: once its
/// holder let go, the state is the next holder's.
fn state_of(consumer: &Consumer, generation: u64) -> Option<MutexGuard<'_, ConsumerState>> {
    let state = lock(&consumer.state);
    (state.generation == generation).then_some(state)
}

/// Sends entry `seq` to the consumer (or finishes it when it is gone, not for this
/// consumer, or delivered too often); `false` when the session is gone.
async fn send(stream: &Arc<Stream>, consumer: &Arc<Consumer>, to: &Recipient, seq: u64) -> bool {
    let attempt = {
        let Some(mut state) = state_of(consumer, to.generation) else {
            return false;
        };
        // Acknowledged since it was planned (an acknowledgement racing its redelivery): not
        // delivered again, nor counted as a delivery, nor left in flight.
        if state.is_done(seq) {
            state.in_flight.remove(&seq);
            state.attempts.remove(&seq);
            return true;
        }
        let attempts = state.attempts.entry(seq).or_insert(0);
        *attempts += 1;
        let attempt = *attempts;
        state.dirty = true;
        attempt
    };
    // What the state becomes is written only while this holding is current; `false` ends
    // the task otherwise.
    // In flight until `due` (`uncounted`: this attempt taken back), unless it was
    // acknowledged meanwhile: `Some(false)`, done and not in flight.
    let in_flight = |due: Instant, uncounted: bool| {
        state_of(consumer, to.generation).map(|mut state| {
            if uncounted && let Some(attempts) = state.attempts.get_mut(&seq) {
                *attempts = attempts.saturating_sub(1);
            }
            let pending = !state.is_done(seq);
            if pending {
                state.in_flight.insert(seq, due);
            }
            pending
        })
    };
    let retry_later = || in_flight(Instant::now() + stream.config.ack_wait, false).is_some();
    let finish = || {
        state_of(consumer, to.generation)
            .map(|mut state| state.finish(seq))
            .is_some()
    };
    if attempt > stream.config.max_deliver {
        // One move at a time per entry: a holder let go during a move leaves it to finish,
        // and the next holder does not start another (the entry would be moved twice).
        if !lock(&consumer.state).moving.insert(seq) {
            return retry_later();
        }
        // The move and its bookkeeping go together, whatever becomes of this task (a holder
        // let go aborts it while the move goes on).
        let dead_letter = {
            let (stream, consumer) = (stream.clone(), consumer.clone());
            tokio::task::spawn_blocking(move || {
                let moved = stream.dead_letter(seq, &consumer.name, attempt - 1);
                let mut state = lock(&consumer.state);
                state.moving.remove(&seq);
                if moved {
                    // Done for this consumer whoever holds it now: in the dead-letter log.
                    state.finish(seq);
                }
                moved
            })
        };
        let moved = match dead_letter.await {
            Ok(moved) => moved,
            Err(_) => {
                lock(&consumer.state).moving.remove(&seq);
                false
            }
        };
        return if moved {
            lock(&consumer.state).generation == to.generation
        } else {
            retry_later()
        };
    }
    // The consumer may not read now (its subscription is no longer allowed: the session ends
    // it) or the audit log failed: the entry is not the consumer's to skip. It waits, this
    // attempt uncounted, for a holding that may read it, asked again a tick later (the
    // session may keep the subscription after all); asked before it is read, so that waiting
    // reads nothing.
    let wait = || in_flight(Instant::now() + TICK, true).is_some();
    if to.gate.waits(&consumer.pattern, now_ms) {
        return wait();
    }
    let read = {
        let stream = stream.clone();
        tokio::task::spawn_blocking(move || stream.read(seq)).await
    };
    let (channel, body) = match read {
        Ok(Ok(Some(entry))) => entry,
        Ok(Ok(None)) => return finish(),
        Ok(Err(_)) | Err(_) => {
            // An entry that can't be read or opened is no delivery: counted, and tried again
            // after `ack_wait` like one unacknowledged, until it goes to the dead-letter log
            // as stored (a read that failed once may not fail again).
            stats::bump(&stream.stats.durable_failures);
            return retry_later();
        }
    };
    if !authz::matches(&consumer.pattern, &channel) {
        return finish();
    }
    match to.gate.may_carry(&consumer.pattern, &channel, now_ms) {
        Carry::Yes => {}
        Carry::Skip => return finish(),
        // (Changed while it was read.)
        Carry::Wait => return wait(),
    }
    let mut body = BytesMut::from(body.as_ref());
    prost::encoding::encode_key(SEQUENCE_TAG, prost::encoding::WireType::Varint, &mut body);
    prost::encoding::encode_varint(seq, &mut body);
    prost::encoding::encode_key(ATTEMPT_TAG, prost::encoding::WireType::Varint, &mut body);
    prost::encoding::encode_varint(u64::from(attempt), &mut body);
    // In flight from now, unless it was acknowledged while it was read: then not sent (one
    // look at the state, so an acknowledgement can't land between the two).
    match in_flight(Instant::now() + stream.config.ack_wait, false) {
        None => return false,
        Some(false) => return true,
        Some(true) => {}
    }
    let frame = Outbound::deliver(to.subscription_id, body.freeze());
    // A session that takes nothing for as long as a live subscriber may make the router wait
    // ends as a slow live subscriber does: a consumer left unread would hold its stream's
    // entries (and, at the stream's limits, every publisher on it) for as long as its session
    // stays up. What it had in flight goes to its next holder.
    match tokio::time::timeout(to.slow_consumer_timeout, to.outbound.send(frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return false,
        Err(_) => {
            if to.connection.close(CloseReason::SlowConsumer) {
                stats::bump(&stream.stats.slow_consumer_disconnects);
            }
            return false;
        }
    }
    stats::bump(&stream.stats.durable_delivered);
    true
}

/// Whether `pattern` matches some channel of at least one more token under `root`: each of
/// the root's tokens matched in turn (`*` or the token itself; `>` matches the rest), and a
/// token of the pattern left for what follows.
fn matches_some_under(pattern: &ChannelPattern, root: &Channel) -> bool {
    let mut tokens = pattern.tokens();
    for token in root.tokens() {
        match tokens.next() {
            Some(">") => return true,
            Some(t) if t == "*" || t == token => {}
            _ => return false,
        }
    }
    tokens.next().is_some()
}

// === consumers on disk ===

/// Loads the consumers saved in `dir`; a file that does not parse stops the hub.
fn load_consumers(
    dir: &Path,
    (first, next): (u64, u64),
) -> Result<BTreeMap<String, Arc<Consumer>>, HubError> {
    let mut consumers = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(consumers),
        Err(e) => {
            return Err(HubError::Durable(format!(
                "reading `{}`: {e}",
                dir.display()
            )));
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("state") {
            continue;
        }
        // Never through a symbolic link, and bounded: its `done` line names at most
        // `MAX_AHEAD` sequences.
        let bytes = entente_store::stream::read_private(&path, MAX_CONSUMER_STATE_LEN)
            .map_err(|e| HubError::Durable(e.to_string()))?
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let consumer = parse_consumer(&text, first, next).ok_or_else(|| {
            HubError::Durable(format!(
                "the durable consumer state `{}` is corrupt",
                path.display()
            ))
        })?;
        consumers.insert(consumer.name.clone(), Arc::new(consumer));
    }
    Ok(consumers)
}

/// `entente-consumer v1`, then `name`, `owner`, `pattern`, `floor`, `done` (sequences) and
/// `attempts` (`seq:n`) lines.
fn parse_consumer(text: &str, first: u64, next: u64) -> Option<Consumer> {
    let mut lines = text.lines();
    if lines.next()? != "entente-consumer v1" {
        return None;
    }
    let mut field = |name: &str| {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .map(|l| l.trim_start().to_owned())
    };
    let name = field("name")?;
    let owner = Principal::parse(&field("owner")?).ok()?;
    let pattern = ChannelPattern::parse(&field("pattern")?).ok()?;
    let floor: u64 = field("floor")?.parse().ok()?;
    let numbers =
        |s: String| -> Option<Vec<u64>> { s.split_whitespace().map(|n| n.parse().ok()).collect() };
    let done = numbers(field("done")?)?;
    let attempts: Option<BTreeMap<u64, u32>> = field("attempts")?
        .split_whitespace()
        .map(|pair| {
            let (seq, n) = pair.split_once(':')?;
            Some((seq.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    if !valid_name(&name) {
        return None;
    }
    // Nothing stored is past the stream's end (written before the entries reached the disk,
    // by an earlier version): what comes next is delivered.
    let floor = floor.min(next);
    let consumer = Consumer::new(&name, &owner, &pattern, floor);
    {
        let mut state = lock(&consumer.state);
        state.done = done
            .into_iter()
            .filter(|&s| s >= floor && s < next)
            .collect();
        state.attempts = attempts?;
        state.attempts.retain(|&s, _| s < next);
        state.dirty = false;
        state.idle_since = Some(Instant::now());
        state.advance_to(first);
    }
    Some(consumer)
}

/// Writes `consumer`'s state atomically (a temporary file, synced, renamed).
fn save_consumer(dir: &Path, consumer: &Consumer) -> std::io::Result<()> {
    let text = consumer_text(consumer, &lock(&consumer.state));
    write_consumer(dir, &consumer.name, &text)
}

/// `consumer`'s state file, with `state`.
fn consumer_text(consumer: &Consumer, state: &ConsumerState) -> String {
    let mut text = format!(
        "entente-consumer v1\nname {}\nowner {}\npattern {}\nfloor {}\ndone",
        consumer.name, consumer.owner, consumer.pattern, state.floor
    );
    for seq in &state.done {
        let _ = write!(text, " {seq}");
    }
    text.push_str("\nattempts");
    for (seq, n) in &state.attempts {
        let _ = write!(text, " {seq}:{n}");
    }
    text.push('\n');
    text
}

/// Writes the state file `text` of the consumer `name` in `dir`, atomically, as a stream writes
/// its own: `dir` made owner-only if missing and refused if others may write it, the temporary
/// file never opened through a symbolic link ([`entente_store::stream::write_private`]).
fn write_consumer(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    entente_store::stream::write_private(dir, &format!("{name}.state"), text.as_bytes())
        .map_err(|e| std::io::Error::other(e.to_string()))
}

// === helpers ===

/// What an entry is sealed with besides the data key: its stream and sequence.
fn aad(stream: &str, seq: u64) -> Vec<u8> {
    let mut aad = b"entente/v1/stream-entry\0".to_vec();
    aad.extend_from_slice(stream.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&seq.to_be_bytes());
    aad
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    /// A mebibyte, shared by every key below without an allocation.
    static MIB: [u8; 1 << 20] = [7; 1 << 20];

    fn key(epoch: u64, len: usize) -> (String, String, u64, Bytes) {
        key_of("alice", epoch, len)
    }

    fn key_of(sender: &str, epoch: u64, len: usize) -> (String, String, u64, Bytes) {
        (
            sender.to_owned(),
            "orders.eu".to_owned(),
            epoch,
            Bytes::from_static(&MIB[..len]),
        )
    }

    fn held(streams: &Streams) -> (usize, usize) {
        let cache = lock(&streams.sender_keys);
        assert_eq!(cache.order.len(), cache.keys.len());
        let shared: usize = cache.shares.values().map(|(keys, _)| keys.len()).sum();
        assert_eq!(shared, cache.keys.len());
        (cache.keys.len(), cache.bytes)
    }

    fn remembers(streams: &Streams, sender: &str, epoch: u64) -> bool {
        let cache = lock(&streams.sender_keys);
        cache
            .get(&(sender.to_owned(), "orders.eu".to_owned(), epoch))
            .is_some()
    }

    #[test]
    fn remembered_keys_are_bounded_per_sender_and_in_all() {
        let streams = Streams::default();
        streams.remember([key(1, 10), key(1, 30), key(2, 5)]);
        assert_eq!(held(&streams), (2, 35), "a key replaced is counted once");
        // Past its share, a sender's least recently remembered keys go, not another's.
        streams.remember([key_of("bob", 1, 7)]);
        let share = MAX_REMEMBERED_KEY_BYTES_PER_SENDER / MIB.len();
        streams.remember((0..share as u64).map(|e| key(10 + e, MIB.len())));
        assert_eq!(held(&streams), (share + 1, share * MIB.len() + 7));
        assert!(!remembers(&streams, "alice", 1) && remembers(&streams, "bob", 1));
        let count = MAX_REMEMBERED_KEYS_PER_SENDER;
        streams.remember((0..count as u64).map(|e| key_of("carol", e, 1)));
        // A key remembered again is the newest: Carol's first stays, her second goes.
        streams.remember([key_of("carol", 0, 1), key_of("carol", count as u64, 1)]);
        assert!(remembers(&streams, "carol", 0) && !remembers(&streams, "carol", 1));
        assert_eq!(
            held(&streams),
            (share + 1 + count, share * MIB.len() + 7 + count)
        );
        // Past the whole, the least recently remembered of all go.
        let senders = MAX_REMEMBERED_KEY_BYTES / (share * MIB.len());
        for s in 0..senders {
            streams.remember((0..share as u64).map(|e| key_of(&format!("s{s}"), e, MIB.len())));
        }
        let (keys, bytes) = held(&streams);
        assert!(bytes <= MAX_REMEMBERED_KEY_BYTES && keys <= MAX_REMEMBERED_KEYS);
        assert!(!remembers(&streams, "alice", 10) && !remembers(&streams, "bob", 1));
        let last = format!("s{}", senders - 1);
        assert!((0..share as u64).all(|e| remembers(&streams, &last, e)));
    }

    /// A stream `orders` capturing `orders.>`, in a new directory, its writer not started.
    async fn stream() -> (tempfile::TempDir, Arc<Stream>, Arc<DataKeys>) {
        stream_with(StreamSync::Always).await
    }

    /// [`stream`], its appends synced as `sync` says.
    async fn stream_with(sync: StreamSync) -> (tempfile::TempDir, Arc<Stream>, Arc<DataKeys>) {
        stream_configured(|c| c.sync = sync).await
    }

    /// [`stream`], its configuration changed by `change`.
    async fn stream_configured(
        change: impl FnOnce(&mut StreamConfig),
    ) -> (tempfile::TempDir, Arc<Stream>, Arc<DataKeys>) {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) = data_keys(dir.path()).await;
        let mut config = StreamConfig::new("orders", ChannelPattern::parse("orders.>").unwrap());
        change(&mut config);
        let stream = Arc::new(
            Stream::open(
                config,
                &dir.path().join("streams"),
                &keys,
                &Arc::default(),
                &Auditor::off(),
            )
            .unwrap(),
        );
        (dir, stream, keys)
    }

    /// Data keys of a key store and a registry made in `dir`.
    async fn data_keys(dir: &Path) -> (Arc<DataKeys>, crate::registry::Registry) {
        use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
        let keystore = LocalKeyStore::create(
            &dir.join("keys"),
            &Unlock::passphrase("durable tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let store = Arc::new(entente_store::EmbeddedStore::open(dir.join("store.redb")).unwrap());
        let registry = crate::registry::Registry::new(store);
        let keys = Arc::new(
            DataKeys::load(Arc::new(keystore), &registry, 1)
                .await
                .unwrap(),
        );
        (keys, registry)
    }

    /// The stream's writer (its tick) and a consumer's delivery take the log's lock and the
    /// consumer's state's: never one under the other in opposite orders.
    #[tokio::test]
    async fn the_writers_tick_and_a_delivery_never_wait_for_each_other() {
        let (_dir, stream, _) = stream().await;
        let owner = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let consumer = stream.hold("worker", &owner, &pattern, 1).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let ticks = {
            let (stream, done) = (stream.clone(), done.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    stream.tick();
                }
                done.send(()).unwrap();
            })
        };
        let plans = std::thread::spawn(move || {
            for _ in 0..20_000 {
                plan(&stream, &consumer, 0, Instant::now(), 0);
            }
            done.send(()).unwrap();
        });
        for _ in 0..2 {
            finished
                .recv_timeout(Duration::from_secs(60))
                .expect("the tick and the delivery both done: no deadlock");
        }
        ticks.join().unwrap();
        plans.join().unwrap();
    }

    #[test]
    fn a_pattern_matches_some_channel_under_a_root_token_by_token() {
        let root = Channel::parse("_reply.shop.alice").unwrap();
        let under = |p: &str| matches_some_under(&ChannelPattern::parse(p).unwrap(), &root);
        for yes in [
            "_reply.>",
            "_reply.shop.alice.>",
            "_reply.*.*.*",
            "_reply.shop.alice.audit",
            "_reply.*.alice.*.y",
        ] {
            assert!(under(yes), "{yes}");
        }
        for no in [
            "_reply.shop.alice",
            "_reply.shop.bob.>",
            "_reply.*.*",
            "orders.>",
        ] {
            assert!(!under(no), "{no}");
        }
    }

    /// An entry being moved to the dead-letter log (by a holding let go since) is not moved
    /// again by the next holder.
    #[tokio::test]
    async fn an_entry_is_moved_to_the_dead_letter_log_once() {
        let (_dir, stream, _) = stream_configured(|c| c.max_deliver = 1).await;
        assert!(stream.append(&[b"entry".to_vec()]));
        let owner = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let consumer = stream.hold("worker", &owner, &pattern, 1).unwrap();
        let authz = Arc::new(crate::authz::Authz::with_policies("", Arc::default()));
        let subject = crate::authz::SessionAuthz::subject(&owner);
        let (outbound, _rx) = OutboundTx::channel(16, 1 << 20);
        let to = Recipient {
            subscription_id: 1,
            outbound,
            gate: Arc::new(DeliveryGate::new(authz, subject, 0)),
            connection: ConnectionControl::new(),
            slow_consumer_timeout: Duration::from_secs(5),
            generation: 0,
        };
        lock(&consumer.state).attempts.insert(1, 1);
        // Another holding is moving it: this one leaves it in flight.
        lock(&consumer.state).moving.insert(1);
        assert!(send(&stream, &consumer, &to, 1).await);
        assert_eq!(lock(&stream.dead).len(), 0);
        assert!(lock(&consumer.state).in_flight.contains_key(&1));
        // Moved once it is not being moved, and done, even when the task that started the
        // move is stopped under it (its holder let go).
        lock(&consumer.state).moving.clear();
        {
            let mut moving = Box::pin(send(&stream, &consumer, &to, 1));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(std::future::Future::poll(moving.as_mut(), &mut cx).is_pending());
        }
        for _ in 0..100 {
            if !lock(&consumer.state).moving.contains(&1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(lock(&stream.dead).len(), 1);
        let state = lock(&consumer.state);
        assert!(state.floor > 1 && state.moving.is_empty(), "{state:?}");
    }

    /// A session that takes nothing from its queue for the slow-consumer timeout is ended as
    /// a slow live subscriber is (its connection closed, counted), and the entry stays in
    /// flight for the next holder: an unread consumer can't hold its stream's entries for
    /// as long as its session stays up.
    #[tokio::test]
    async fn a_durable_consumer_that_takes_nothing_ends_its_session() {
        let (_dir, stream, _) = stream().await;
        assert!(stream.append(&[stored("orders.eu", b"one"), stored("orders.eu", b"two")]));
        let owner = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let consumer = stream.hold("worker", &owner, &pattern, 1).unwrap();
        let policies = r#"
            @cross_segment
            permit (principal in Segment::"shop", action == Action::"subscribe",
                    resource in Namespace::"orders");
        "#;
        let authz = Arc::new(crate::authz::Authz::with_policies(policies, Arc::default()));
        let subject = crate::authz::SessionAuthz::subject(&owner);
        // Room for one frame, never read.
        let (outbound, _rx) = OutboundTx::channel(1, 1 << 20);
        let connection = ConnectionControl::new();
        let epoch = authz.engine().epoch();
        let to = Recipient {
            subscription_id: 1,
            outbound,
            gate: Arc::new(DeliveryGate::new(authz, subject, epoch)),
            connection: connection.clone(),
            slow_consumer_timeout: Duration::from_millis(100),
            generation: 0,
        };
        assert!(send(&stream, &consumer, &to, 1).await);
        assert!(!send(&stream, &consumer, &to, 2).await);
        assert_eq!(connection.reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(stream.stats.snapshot().slow_consumer_disconnects, 1);
        let state = lock(&consumer.state);
        assert!(
            state.in_flight.contains_key(&1) && state.in_flight.contains_key(&2),
            "{state:?}"
        );
    }

    /// Durable channels whose patterns capture some of the same channels, or with an
    /// `ack_wait` past a day, are refused at start.
    #[tokio::test]
    async fn overlapping_streams_and_an_endless_ack_wait_are_refused() {
        for (a, b, overlap) in [
            ("orders.>", "orders.eu.>", true),
            ("orders.*", "orders.eu", true),
            ("orders.*.x", "orders.eu.*", true),
            ("*.eu", "orders.>", true),
            (">", "a", true),
            ("orders.eu", "orders.eu", true),
            ("orders.>", "orders", false),
            ("orders.*", "orders.eu.x", false),
            ("orders.eu", "orders.us", false),
            ("orders.*.x", "orders.eu.y", false),
            ("a.b", "a.b.c", false),
            (">", "_reply.>", false),
            ("*.>", "_direct.shop.alice", false),
            ("_reply.>", "_reply.shop.>", true),
        ] {
            let (a, b) = (
                ChannelPattern::parse(a).unwrap(),
                ChannelPattern::parse(b).unwrap(),
            );
            assert_eq!(patterns_overlap(&a, &b), overlap, "{a} and {b}");
            assert_eq!(patterns_overlap(&b, &a), overlap, "{b} and {a}");
        }
        let (dir, _, keys) = stream().await;
        let config = |name: &str, pattern: &str| {
            StreamConfig::new(name, ChannelPattern::parse(pattern).unwrap())
        };
        let open = |configs: &[StreamConfig]| {
            Streams::open(
                configs,
                Some(&dir.path().join("more")),
                &keys,
                &Arc::default(),
                &Auditor::off(),
            )
            .map(drop)
        };
        let refused = open(&[config("all", "orders.>"), config("eu", "orders.eu.>")]);
        let refused = refused.unwrap_err().to_string();
        assert!(
            refused.contains("`all` (`orders.>`) and `eu` (`orders.eu.>`)"),
            "{refused}"
        );
        let mut endless = config("eu", "orders.eu.>");
        endless.ack_wait = MAX_ACK_WAIT + Duration::from_secs(1);
        let refused = open(&[endless]).unwrap_err().to_string();
        assert!(
            refused.contains("`ack_wait` must be at most a day"),
            "{refused}"
        );
    }

    /// The dead-letter log keeps no more than the stream's limits: the oldest go first.
    #[tokio::test]
    async fn dead_letters_are_kept_within_the_streams_limits() {
        let entries = [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()];
        // What the last two take as dead letters.
        let (_dir, stream, _) = stream().await;
        assert!(stream.append(&entries));
        assert!(stream.dead_letter(2, "worker", 1) && stream.dead_letter(3, "worker", 1));
        let two = lock(&stream.dead).bytes();
        for (messages, bytes) in [(2, u64::MAX), (u64::MAX, two), (u64::MAX, two + 1)] {
            let (_dir, stream, _) = stream_configured(|c| {
                c.max_messages = messages;
                c.max_bytes = bytes;
            })
            .await;
            // Stored directly: the stream's own admission is not what this is about.
            assert!(stream.append(&entries));
            for seq in 1..=3 {
                assert!(stream.dead_letter(seq, "worker", 1));
            }
            let dead = lock(&stream.dead);
            assert_eq!((dead.first_seq(), dead.len()), (2, 2), "{messages} {bytes}");
            assert_eq!(
                dead.read(3).unwrap().unwrap().payload[..8],
                3u64.to_be_bytes()
            );
        }
        // The letter just moved stays, whatever its size (its record says it was moved).
        let (_dir, stream, _) = stream_configured(|c| c.max_bytes = 1).await;
        assert!(stream.append(&entries));
        for seq in 1..=3 {
            assert!(stream.dead_letter(seq, "worker", 1));
            let dead = lock(&stream.dead);
            assert_eq!((dead.first_seq(), dead.len()), (seq, 1));
        }
    }

    /// An entry stored as [`Streams::entry`] writes it, on `channel`, with `body`.
    fn stored(channel: &str, body: &[u8]) -> Vec<u8> {
        let mut entry = u16::try_from(channel.len()).unwrap().to_be_bytes().to_vec();
        entry.extend_from_slice(channel.as_bytes());
        entry.extend_from_slice(body);
        entry
    }

    /// An entry on a channel a forbid keeps from the consumer is done for it; one its
    /// consumer may not read now (its subscription no longer allowed, the session not caught
    /// up yet) waits for it, the attempt uncounted, and is delivered once it may; one
    /// acknowledged since it was planned is not delivered again.
    #[tokio::test]
    async fn an_entry_waits_while_its_consumer_may_not_read_and_a_forbidden_one_is_done() {
        const ORDERS: &str = r#"
            @cross_segment
            permit (principal in Segment::"shop", action == Action::"subscribe",
                    resource in Namespace::"orders");
            @id("no-payroll")
            forbid (principal, action == Action::"subscribe",
                    resource in Namespace::"orders.payroll");
        "#;
        let (_dir, stream, _) = stream().await;
        assert!(stream.append(&[
            stored("orders.eu", b"order"),
            stored("orders.payroll.x", b"salary")
        ]));
        let owner = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let consumer = stream
            .hold(
                "worker",
                &owner,
                &ChannelPattern::parse("orders.>").unwrap(),
                1,
            )
            .unwrap();
        let authz = Arc::new(crate::authz::Authz::with_policies(ORDERS, Arc::default()));
        let subject = crate::authz::SessionAuthz::subject(&owner);
        let (outbound, mut rx) = OutboundTx::channel(16, 1 << 20);
        let to = Recipient {
            subscription_id: 1,
            outbound,
            gate: Arc::new(DeliveryGate::new(
                authz.clone(),
                subject,
                authz.engine().epoch(),
            )),
            connection: ConnectionControl::new(),
            slow_consumer_timeout: Duration::from_secs(5),
            generation: 0,
        };
        assert!(send(&stream, &consumer, &to, 2).await);
        assert!(rx.try_recv().is_err());
        assert!(lock(&consumer.state).done.contains(&2));

        // The permit is withdrawn, the session not caught up: entry 1 waits, and is asked
        // again a tick later without being read (one that is not there waits the same).
        authz.replace_for_tests("");
        assert!(send(&stream, &consumer, &to, 1).await);
        assert!(rx.try_recv().is_err());
        assert!(send(&stream, &consumer, &to, 99).await);
        {
            let mut state = lock(&consumer.state);
            assert!(!state.is_done(99) && state.in_flight[&99] <= Instant::now() + TICK);
            state.in_flight.remove(&99);
            state.attempts.remove(&99);
        }
        {
            let state = lock(&consumer.state);
            assert_eq!(state.floor, 1);
            assert_eq!(state.attempts.get(&1), Some(&0));
            assert!(state.in_flight.contains_key(&1));
        }
        // Allowed again: delivered, its first attempt.
        authz.replace_for_tests(ORDERS);
        assert!(send(&stream, &consumer, &to, 1).await);
        assert!(rx.try_recv().is_ok());
        assert_eq!(lock(&consumer.state).attempts.get(&1), Some(&1));

        // Acknowledged after its redelivery was planned (and put in flight again by a delivery
        // that raced the acknowledgement): not sent, not counted again, no longer in flight.
        lock(&consumer.state).finish(1);
        lock(&consumer.state).in_flight.insert(1, Instant::now());
        assert!(send(&stream, &consumer, &to, 1).await);
        assert!(rx.try_recv().is_err());
        let state = lock(&consumer.state);
        assert_eq!(state.floor, 3);
        assert!(
            state.attempts.is_empty() && state.in_flight.is_empty(),
            "{state:?}"
        );
    }

    /// A writer wakes for its sync interval when it is shorter than its tick, not only at
    /// the tick.
    #[test]
    fn a_sync_interval_under_the_tick_is_kept() {
        let ms = Duration::from_millis;
        let every = |n| StreamSync::Every(ms(n));
        assert_eq!(writer_wait(StreamSync::Always, ms(300), ms(0)), ms(700));
        assert_eq!(writer_wait(every(100), ms(300), ms(40)), ms(60));
        assert_eq!(writer_wait(every(100), ms(300), ms(150)), ms(0));
        assert_eq!(writer_wait(every(5_000), ms(300), ms(40)), ms(700));
        assert_eq!(writer_wait(every(5_000), ms(1_300), ms(40)), ms(0));
    }

    /// With appends synced at an interval, a consumer's floor is saved only once the entries
    /// under it are on disk; one stored past the stream's end is brought back to it.
    #[tokio::test]
    async fn a_consumers_floor_is_saved_only_behind_synced_entries() {
        let (dir, stream, _) = stream_with(StreamSync::Every(Duration::from_secs(3600))).await;
        let root = dir.path().join("streams");
        let owner = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let consumer = stream.hold("worker", &owner, &pattern, 1).unwrap();
        // Another consumer behind: nothing is purged, which would sync too.
        let _behind = stream.hold("auditor", &owner, &pattern, 2).unwrap();
        assert!(stream.append(&[b"one".to_vec(), b"two".to_vec()]));
        assert!(!lock(&stream.log).is_synced());
        lock(&consumer.state).finish(1);
        stream.tick();
        assert!(
            lock(&stream.log).is_synced(),
            "synced before the floor was saved"
        );
        let saved = std::fs::read_to_string(root.join("orders/consumers/worker.state")).unwrap();
        assert!(saved.contains("floor 2"), "{saved}");

        // A state saved past the end (floor 9 of a stream whose next is 3) starts at the end.
        let text = saved.replace("floor 2", "floor 9");
        let loaded = parse_consumer(&text, 1, 3).unwrap();
        assert_eq!(lock(&loaded.state).floor, 3);
    }

    /// A stream keeps a bounded number of consumers, and one principal a bounded share.
    #[tokio::test]
    async fn consumers_are_bounded_per_stream_and_per_owner() {
        let (_dir, stream, _) = stream().await;
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let agent = |name: &str| {
            Principal::parse(&format!("spiffe://acme.internal/agent/shop/{name}")).unwrap()
        };
        let (alice, bob) = (agent("alice"), agent("bob"));
        for i in 0..MAX_CONSUMERS_PER_OWNER {
            stream.hold(&format!("a{i}"), &alice, &pattern, 1).unwrap();
        }
        let refused = stream.hold("one-more", &alice, &pattern, 1).unwrap_err();
        assert!(
            matches!(
                refused,
                DurableError::TooManyConsumers {
                    max: MAX_CONSUMERS_PER_OWNER,
                    ..
                }
            ),
            "{refused}"
        );
        // Taking one it has is not making one; another principal makes its own.
        assert!(matches!(
            stream.hold("a0", &alice, &pattern, 2),
            Err(DurableError::InUse(_))
        ));
        stream.hold("b0", &bob, &pattern, 1).unwrap();
        for i in 0..MAX_CONSUMERS - MAX_CONSUMERS_PER_OWNER - 1 {
            let owner = agent(&format!("o{}", i / MAX_CONSUMERS_PER_OWNER));
            stream.hold(&format!("c{i}"), &owner, &pattern, 1).unwrap();
        }
        let refused = stream.hold("b1", &bob, &pattern, 1).unwrap_err();
        assert!(
            matches!(
                refused,
                DurableError::TooManyConsumers {
                    max: MAX_CONSUMERS,
                    ..
                }
            ),
            "{refused}"
        );
    }

    /// A consumer is sent nothing `MAX_AHEAD` or more past its floor: one entry left
    /// unacknowledged does not let what is acknowledged above it grow with the stream.
    #[tokio::test]
    async fn a_consumer_is_sent_nothing_too_far_past_its_floor() {
        let (_dir, stream, _) = stream().await;
        let alice = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let consumer = stream.hold("worker", &alice, &pattern, 1).unwrap();
        lock(&consumer.state).next = MAX_AHEAD - 2;
        let end = 2 * MAX_AHEAD;
        let (_, fresh, _) = plan(&stream, &consumer, end, Instant::now(), 0).unwrap();
        assert_eq!(fresh, [MAX_AHEAD - 2, MAX_AHEAD - 1, MAX_AHEAD]);
        let (_, fresh, _) = plan(&stream, &consumer, end, Instant::now(), 0).unwrap();
        assert!(fresh.is_empty());
        // The floor moves: one more.
        lock(&consumer.state).finish(1);
        let (_, fresh, _) = plan(&stream, &consumer, end, Instant::now(), 0).unwrap();
        assert_eq!(fresh, [MAX_AHEAD + 1]);
    }

    /// A delivery task of an earlier holding (aborted, but maybe still running on another
    /// worker) leaves the state alone once its holder let go: what it would have taken is the
    /// next holder's to deliver.
    #[tokio::test]
    async fn a_released_holdings_task_leaves_the_state_alone() {
        let (_dir, stream, _) = stream().await;
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let alice = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let consumer = stream.hold("worker", &alice, &pattern, 1).unwrap();
        let (_, fresh, _) = plan(&stream, &consumer, 5, Instant::now(), 0).unwrap();
        assert_eq!(fresh, [1, 2, 3, 4]);
        // Let go: the next holder starts again from the floor.
        let (outbound, _rx) = OutboundTx::channel(1, 1);
        let authz = Arc::new(crate::authz::Authz::with_policies("", Arc::default()));
        let gate = DeliveryGate::new(
            authz,
            entente_policy::Subject::new(alice, Vec::<String>::new()),
            0,
        );
        let (start, started) = oneshot::channel();
        let outlet = Outlet {
            subscription_id: 1,
            outbound,
            gate: Arc::new(gate),
            connection: ConnectionControl::new(),
            slow_consumer_timeout: Duration::from_secs(5),
        };
        let held = stream.deliver(consumer.clone(), outlet, started);
        drop(start);
        held.release();
        assert!(plan(&stream, &consumer, 9, Instant::now(), 0).is_none());
        assert_eq!(lock(&consumer.state).next, 1, "the stale plan took nothing");
        let (_, fresh, _) = plan(&stream, &consumer, 9, Instant::now(), 1).unwrap();
        assert_eq!(fresh, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// A consumer no session has held for the stream's `max_age` is forgotten (nothing it had
    /// not read is kept by then); one held is kept however long.
    #[tokio::test]
    async fn idle_consumers_are_forgotten_after_max_age() {
        let (dir, stream, _) = stream_configured(|c| c.max_age = Duration::from_millis(1)).await;
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let alice = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let idle = stream.hold("idle", &alice, &pattern, 1).unwrap();
        let _held = stream.hold("held", &alice, &pattern, 2).unwrap();
        *lock(&idle.holder) = None;
        lock(&idle.state).idle_since = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        stream.tick();
        let names: Vec<String> = lock(&stream.consumers).keys().cloned().collect();
        assert_eq!(names, ["held"]);
        let files = dir.path().join("streams/orders/consumers");
        assert!(!files.join("idle.state").exists());
        assert!(files.join("held.state").exists());
        // The name is free again.
        let bob = Principal::parse("spiffe://acme.internal/agent/shop/bob").unwrap();
        stream.hold("idle", &bob, &pattern, 3).unwrap();
    }

    /// While the audit log is failed nothing a record would say is done: no consumer is
    /// forgotten, no entry moved to the dead-letter log, no dead letter dropped past the
    /// limits; each waits for a hub whose log works.
    #[tokio::test]
    async fn nothing_unrecorded_is_done_while_the_audit_log_is_failed() {
        use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
        let dir = tempfile::tempdir().unwrap();
        let (keys, registry) = data_keys(dir.path()).await;
        let keystore: Arc<dyn entente_keystore::KeyStore> = Arc::new(
            LocalKeyStore::create(
                &dir.path().join("audit-keys"),
                &Unlock::passphrase("durable tests"),
                Argon2Params::danger_fast_for_tests(),
            )
            .unwrap(),
        );
        let audit_dir = dir.path().join("audit");
        let (auditor, writer) = Auditor::open(
            &crate::AuditConfig::new(audit_dir.clone()),
            "acme.internal",
            &keystore,
            &registry,
            Arc::default(),
        )
        .await
        .unwrap();
        let mut config = StreamConfig::new("orders", ChannelPattern::parse("orders.>").unwrap());
        config.max_age = Duration::from_secs(10);
        config.max_messages = 1;
        let stream = Arc::new(
            Stream::open(
                config,
                &dir.path().join("streams"),
                &keys,
                &Arc::default(),
                &auditor,
            )
            .unwrap(),
        );
        assert!(stream.append(&[b"one".to_vec(), b"two".to_vec()]));
        let pattern = ChannelPattern::parse("orders.eu").unwrap();
        let alice = Principal::parse("spiffe://acme.internal/agent/shop/alice").unwrap();
        let idle = stream.hold("idle", &alice, &pattern, 1).unwrap();
        *lock(&idle.holder) = None;
        lock(&idle.state).idle_since = Instant::now().checked_sub(Duration::from_secs(20));
        // A dead letter moved while the log works; a second one stored past the limit of one,
        // directly (as a lowered limit leaves them).
        assert!(stream.dead_letter(1, "idle", 5));
        lock(&stream.dead).append_all(&[&[0; 8]], now_ms()).unwrap();

        crate::audit::fail_for_tests(&auditor, &audit_dir).await;
        assert!(!stream.dead_letter(2, "idle", 5));
        stream.tick();
        assert!(lock(&stream.consumers).contains_key("idle"));
        assert_eq!(lock(&stream.dead).len(), 2);
        auditor.close();
        assert!(writer.join().await.is_err());
    }

    /// Dead letters die in any order: the oldest key version among them is found in all of
    /// them, past each one's sequence, not in the first kept.    /// Dead letters die in any order: the oldest key version among them is found in all of
    /// them, past each one's sequence, not in the first kept.
    #[test]
    fn the_oldest_key_of_dead_letters_is_found_in_all_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = StreamLog::open(dir.path(), StreamOptions::default()).unwrap();
        assert_eq!(oldest_dead_letter(&dead).unwrap(), u32::MAX);
        for (seq, version) in [(9u64, 5u32), (3, 2), (12, 7)] {
            let mut letter = seq.to_be_bytes().to_vec();
            letter.extend_from_slice(&version.to_be_bytes());
            letter.extend_from_slice(b"sealed");
            dead.append_all(&[&letter], 1).unwrap();
        }
        assert_eq!(oldest_dead_letter(&dead).unwrap(), 2);
    }

    /// Dead letters are kept as long as entries are, no longer.
    #[tokio::test]
    async fn dead_letters_age_out_with_the_stream() {
        let (_dir, stream, _) = stream_configured(|c| c.max_age = Duration::from_millis(1)).await;
        assert!(stream.append(&[b"entry".to_vec()]));
        assert!(stream.dead_letter(1, "worker", 5));
        assert_eq!(lock(&stream.dead).len(), 1);
        std::thread::sleep(Duration::from_millis(5));
        stream.tick();
        assert_eq!(lock(&stream.dead).len(), 0);
    }

    /// An entry that can't be read when it is due for the dead-letter log is not counted as
    /// moved: it is tried again, then (reads failing `max_deliver` more times) counted as a
    /// failure and recorded as lost, and the consumer moves on.
    #[tokio::test]
    async fn a_dead_letter_that_can_not_be_read_is_not_counted_as_moved() {
        let (_dir, stream, keys) = stream().await;
        assert!(stream.append(&[b"entry".to_vec()]));
        assert!(stream.dead_letter(1, "worker", 5));
        // What a dead letter was sealed under is read past its sequence.
        let streams = Streams {
            streams: vec![stream.clone()],
            ..Streams::default()
        };
        assert_eq!(
            streams.oldest_key_version(&keys),
            Some(keys.current_version())
        );
        assert_eq!(stream.stats.durable_dead_letters.load(Ordering::Relaxed), 1);
        assert!(stream.append(&[b"entry".to_vec()]));
        // The entry's bytes gone from under the log: it can't be read.
        empty_segment(&stream.dir.join("entries"));
        // Tried again while reads may recover, then recorded as lost (not as moved).
        assert!(!stream.dead_letter(2, "worker", 5));
        assert_eq!(stream.stats.durable_failures.load(Ordering::Relaxed), 1);
        assert!(stream.dead_letter(2, "worker", 10));
        assert_eq!(stream.stats.durable_dead_letters.load(Ordering::Relaxed), 1);
        assert_eq!(stream.stats.durable_failures.load(Ordering::Relaxed), 2);
        // An entry purged since is gone: nothing to move, nothing counted.
        assert!(stream.dead_letter(99, "worker", 5));
        assert_eq!(stream.stats.durable_dead_letters.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_entry_stops_at_its_bound() {
        let streams = Streams::default();
        streams.remember([key(1, 100), key(2, 200)]);
        let channel = Channel::parse("orders.eu").unwrap();
        let entry = |epochs: &[u64], carried: &[u64], max| {
            streams.entry(&channel, "alice", epochs, carried, b"body", max)
        };
        // Name (2 + 9 bytes), each key with its tag and length (2 or 3 bytes), the body.
        let whole = entry(&[1, 2], &[], usize::MAX).unwrap();
        assert_eq!(whole.len(), 11 + 102 + 203 + 4);
        assert!(whole.ends_with(b"body"));
        assert_eq!(entry(&[1, 2], &[], 102 + 203 + 4).unwrap(), whole);
        assert_eq!(
            entry(&[1, 2], &[], 102 + 203 + 3),
            Err(EntryError::TooLarge)
        );
        // Carried keys are not added.
        assert_eq!(entry(&[1, 2], &[2], 102 + 4).unwrap().len(), 11 + 102 + 4);
        // A key neither carried nor remembered: the entry would never open.
        assert_eq!(
            entry(&[1, 3], &[], usize::MAX),
            Err(EntryError::MissingKey(3))
        );
        assert!(entry(&[1, 3], &[3], usize::MAX).is_ok());
        // A reply's key is found under its reply namespace root.
        let (sender, _, epoch, key) = key(7, 50);
        streams.remember([(sender, "_reply.shop.bob".to_owned(), epoch, key)]);
        let reply = Channel::parse("_reply.shop.bob.t1").unwrap();
        let entry = streams.entry(&reply, "alice", &[7], &[], b"body", usize::MAX);
        assert_eq!(entry.unwrap().len(), 2 + 18 + 52 + 4);
    }

    /// The segment file of `log` (a stream's `entries/` or `dead/`), emptied under the open
    /// log: its frames can't be read.
    fn empty_segment(log: &Path) {
        let segment = std::fs::read_dir(log)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    /// A stream's first entry that can't be read says nothing of what its entries were sealed
    /// under: no data key may be retired (an error is never "nothing kept"). Nor while a dead
    /// letter could not be read at start.
    #[tokio::test]
    async fn no_data_key_is_retired_while_a_first_entry_or_a_dead_letter_can_not_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, registry) = data_keys(dir.path()).await;
        let config = StreamConfig::new("orders", ChannelPattern::parse("orders.>").unwrap());
        let root = dir.path().join("streams");
        let orders =
            Arc::new(Stream::open(config, &root, &keys, &Arc::default(), &Auditor::off()).unwrap());
        let streams = Streams {
            streams: vec![orders.clone()],
            dir: Some(root),
            ..Streams::default()
        };
        assert!(orders.append(&[b"entry".to_vec()]));
        keys.rotate(&registry, 2).await.unwrap();
        assert_eq!(streams.oldest_key_version(&keys), Some(1));
        empty_segment(&orders.dir.join("entries"));
        assert!(lock(&orders.log).read(1).is_err());
        assert_eq!(streams.oldest_key_version(&keys), None);

        // A dead letter that can't be read at start: not "no dead letter".
        let mut dead = StreamLog::open(dir.path().join("dead"), StreamOptions::default()).unwrap();
        let mut letter = 1u64.to_be_bytes().to_vec();
        letter.extend_from_slice(&1u32.to_be_bytes());
        dead.append_all(&[&letter], 1).unwrap();
        assert_eq!(oldest_dead_letter(&dead).unwrap(), 1);
        empty_segment(&dir.path().join("dead"));
        assert!(oldest_dead_letter(&dead).is_err());
        let (_dir, stream, keys) = stream().await;
        stream.dead_oldest.store(DEAD_UNREAD, Ordering::Release);
        let streams = Streams {
            streams: vec![stream],
            ..Streams::default()
        };
        assert_eq!(streams.oldest_key_version(&keys), None);
    }

    /// Streams kept in the streams directory but no longer configured (commented out for a
    /// while) keep their data keys: their entries open again once they are configured again.
    /// Only directories that keep entries or dead letters count, at most
    /// [`MAX_UNCONFIGURED_DIRS`] of them are looked at, and past that nothing is retired.
    #[tokio::test]
    async fn streams_kept_but_no_longer_configured_keep_their_data_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, registry) = data_keys(dir.path()).await;
        let root = dir.path().join("streams");
        let orders = StreamConfig::new("orders", ChannelPattern::parse("orders.>").unwrap());
        let archive = StreamConfig::new("archive", ChannelPattern::parse("archive.>").unwrap());
        let open = |configs: &[StreamConfig]| {
            Streams::open(
                configs,
                Some(&root),
                &keys,
                &Arc::default(),
                &Auditor::off(),
            )
            .unwrap()
        };
        let (streams, writers) = open(&[orders.clone(), archive]);
        let kept = streams
            .for_channel(&Channel::parse("archive.eu").unwrap())
            .unwrap();
        assert!(kept.append(&[b"entry".to_vec()]));
        keys.rotate(&registry, 2).await.unwrap();
        assert_eq!(streams.oldest_key_version(&keys), Some(1));
        streams.close();
        assert!(writers.join().await.is_empty());
        // Closed, and let go of (its streams' directories are locked while it is held).
        drop(streams);

        // `archive` commented out: its entries are still there, sealed under version 1.
        let (streams, writers) = open(std::slice::from_ref(&orders));
        assert_eq!(streams.oldest_key_version(&keys), None);
        streams.close();
        assert!(writers.join().await.is_empty());
        drop(streams);
        // No durable channel configured at all.
        let (streams, _) = open(&[]);
        assert_eq!(streams.oldest_key_version(&keys), None);

        // Let go of (deleted): retiring goes on. What keeps no entries does not count.
        std::fs::remove_dir_all(root.join("archive")).unwrap();
        std::fs::create_dir(root.join("lost+found")).unwrap();
        std::fs::write(root.join("notes"), b"").unwrap();
        let (streams, writers) = open(std::slice::from_ref(&orders));
        assert_eq!(streams.oldest_key_version(&keys), Some(2));

        // Past the bound of what is looked at, nothing is retired.
        for i in 2..MAX_UNCONFIGURED_DIRS {
            std::fs::create_dir(root.join(format!("empty-{i}"))).unwrap();
        }
        assert_eq!(streams.oldest_key_version(&keys), Some(2));
        std::fs::create_dir(root.join("one-more")).unwrap();
        assert_eq!(streams.oldest_key_version(&keys), None);
        streams.close();
        assert!(writers.join().await.is_empty());
    }

    #[test]
    fn a_consumer_state_is_never_read_through_a_symbolic_link_nor_past_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let consumers = dir.path().join("consumers");
        let text = "entente-consumer v1\nname audit\nowner spiffe://example.org/agent/shop/a\n\
                    pattern orders.>\nfloor 1\ndone\nattempts\n";
        write_consumer(&consumers, "audit", text).unwrap();
        assert_eq!(load_consumers(&consumers, (1, 1)).unwrap().len(), 1);
        // Planted elsewhere and linked: refused, not followed.
        let planted = dir.path().join("planted");
        std::fs::write(&planted, text.replace("audit", "other")).unwrap();
        std::os::unix::fs::symlink(&planted, consumers.join("other.state")).unwrap();
        let err = load_consumers(&consumers, (1, 1)).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        std::fs::remove_file(consumers.join("other.state")).unwrap();
        // A state longer than any a consumer writes: refused, not read whole.
        let long = format!("{text}{}", " ".repeat(MAX_CONSUMER_STATE_LEN as usize));
        std::fs::write(consumers.join("audit.state"), long).unwrap();
        let err = load_consumers(&consumers, (1, 1)).unwrap_err().to_string();
        assert!(err.contains("longer than"), "{err}");
    }
}
