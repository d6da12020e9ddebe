//! The hub's audit trail: every authorization decision and every security-relevant act
//! becomes a record of the tamper-evident log ([`entente_audit`], docs/AUDIT.md).
//!
//! One thread writes the log. Callers submit records (a cheap push under a lock) and get a
//! *ticket*, the number of records submitted so far; the thread takes everything queued,
//! appends it with one write and one `fdatasync` (group commit), and publishes how many
//! records are durable. Under load, commits are spaced [`AuditConfig::commit_interval`]
//! apart, so that each `fdatasync` serves what arrived meanwhile. A caller that must not
//! answer before its record is durable waits for its ticket ([`Auditor::durable`]). Pending
//! records are sealed into a leaf, with a signed checkpoint, every
//! [`AuditConfig::seal_interval`] (and whenever `seal_after` are pending).
//!
//! **Fail closed.** When a write, an `fdatasync` or a seal fails, the log refuses every
//! later write until the hub restarts (reopening verifies what is durable), and so does the
//! auditor: every submit fails, every wait for a record not yet durable fails, and the
//! operations behind them are refused with a clear status ([`AuditUnavailable`]).
//!
//! Keys: the checkpoint key is the Ed25519 key [`AUDIT_SIGNING_KEY`] of the CA's key store
//! (signing happens inside the store); the log's HMAC key is generated once, wrapped with the
//! key store's AES-256-GCM key-encryption key [`AUDIT_KEK`], and kept wrapped in the hub's
//! store (config key `audit_hmac_key`). Neither leaves the hub in clear.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use entente_audit::{
    AuditError, AuditKey, AuditLog, AuditOptions, Event, FieldMac, Hash, MAX_FIELD_LEN, NoteError,
    NoteSigner, Outcome, Record, Text, VerifierKey,
};
use entente_keystore::{KeyAlgorithm, KeyName, KeyStore, KeyStoreError};

use crate::HubError;
use crate::audit_rpc::{self, Exports};
use crate::commit::Committer;
use crate::registry::Registry;
use crate::stats::{self, Stats};

/// The name of the checkpoint signing key (Ed25519) in the CA's key store.
pub const AUDIT_SIGNING_KEY: &str = "audit-checkpoint";

/// The name of the key-encryption key (AES-256-GCM) that wraps the log's HMAC key.
pub const AUDIT_KEK: &str = "audit-kek";

/// The longest [`AuditConfig::commit_interval`]: an answer waits at most this much more.
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The start of the hub store's config key that marks a directory where a log was made (the
/// directory follows a `:`).
const LOG_MADE_CONFIG: &str = "audit_log_made";

/// The hub store's config key of the wrapped HMAC key.
const HMAC_KEY_CONFIG: &str = "audit_hmac_key";

/// The hub store's config key of the checkpoint key's name in the key store, once rotated
/// ([`AUDIT_SIGNING_KEY`] before).
const SIGNING_KEY_CONFIG: &str = "audit_signing_key";

/// The hub store's config key of the earlier checkpoint keys (verifier keys, one a line),
/// trusted when the log is opened.
const TRUSTED_KEYS_CONFIG: &str = "audit_trusted_keys";

/// The associated data the HMAC key is wrapped with.
const HMAC_KEY_AAD: &[u8] = b"entente/v1/audit-hmac-key\0";

/// Where and how the hub keeps its audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The log directory; created (with the keys) at the first start.
    pub dir: PathBuf,
    /// How often pending records are sealed into a leaf and a checkpoint signed. Default 1 s.
    pub seal_interval: Duration,
    /// Seal as soon as this many records are pending (1 to 65 536). Default 1000.
    pub seal_after: u32,
    /// The least time from one group commit to the next (at most 1 s, and at most
    /// `seal_interval`: a seal may come this much late). Records that arrive
    /// sooner wait for the next commit this long after the previous one, which they share;
    /// a record arriving later than that is committed at once. Under load this bounds the
    /// `fdatasync`s per second, each of which costs the machine CPU, at the price of at most
    /// this much more before an answer that waits for the disk. The wait ends early at a
    /// close or with more than `max_backlog` records queued. Default 2 ms; zero commits
    /// whenever anything is queued.
    pub commit_interval: Duration,
    /// Records queued for the writer beyond which publishers wait before routing more.
    /// Default 65 536.
    pub max_backlog: usize,
}

impl AuditConfig {
    /// The defaults, with the log in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            seal_interval: Duration::from_secs(1),
            seal_after: 1000,
            commit_interval: Duration::from_millis(2),
            max_backlog: 65_536,
        }
    }
}

/// A record could not be made durable, so the operation it records is refused. The hub
/// accepts nothing it must record until it is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the audit log is unavailable: the hub refuses what it cannot record (the operator must \
     restart it)"
)]
pub(crate) struct AuditUnavailable;

/// The hub's handle on its audit log; cheap to clone. [`Auditor::off`] records nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Auditor(Option<Arc<Inner>>);

/// An [`Auditor`] that does not keep the log open: for what may outlive the hub.
#[derive(Debug, Clone, Default)]
pub(crate) struct WeakAuditor(Option<std::sync::Weak<Inner>>);

impl WeakAuditor {
    /// The auditor, while the log is open.
    pub(crate) fn upgrade(&self) -> Option<Auditor> {
        self.0.as_ref()?.upgrade().map(|inner| Auditor(Some(inner)))
    }
}

#[derive(Debug)]
struct Inner {
    /// The `hub` field of every record.
    hub: String,
    /// The log's HMAC key, for protected fields.
    key: AuditKey,
    /// Records on their way to the writer.
    queue: Committer<Record>,
    log: Arc<Mutex<AuditLog>>,
    seal_interval: Duration,
    commit_interval: Duration,
    stats: Arc<Stats>,
    /// The latest export served over RPC, and where exports are written.
    exports: Arc<Exports>,
    export_dir: PathBuf,
    /// Held through a rotation of the checkpoint key: two at once would each trust only the
    /// key before both, and the checkpoints one of them signed would not verify at the next
    /// start.
    rotating: tokio::sync::Mutex<()>,
}

/// The writer thread; joined at shutdown.
#[derive(Debug)]
pub(crate) struct AuditWriter(Option<JoinHandle<bool>>);

// === impl Auditor ===

impl Auditor {
    /// An auditor that records nothing (no [`AuditConfig`]).
    pub(crate) fn off() -> Self {
        Self(None)
    }

    /// Opens (or creates, with its keys) the log of `config` and starts its writer.
    pub(crate) async fn open(
        config: &AuditConfig,
        hub: &str,
        keystore: &Arc<dyn KeyStore>,
        registry: &Registry,
        stats: Arc<Stats>,
    ) -> Result<(Self, AuditWriter), HubError> {
        if config.seal_interval.is_zero() || config.max_backlog == 0 {
            return Err(HubError::Config(
                "audit.seal_interval and audit.max_backlog must not be zero",
            ));
        }
        if config.commit_interval > MAX_COMMIT_INTERVAL
            || config.commit_interval > config.seal_interval
        {
            return Err(HubError::Config(
                "audit.commit_interval must be at most 1 s and at most audit.seal_interval",
            ));
        }
        let origin = format!("{hub}/audit");
        let exists = config.dir.join("audit.meta").exists();
        // Whether this hub made a log (a marker stored once it did): one log per hub, wherever
        // it is configured and however its path is spelled. Markers of earlier versions
        // named the directory as it was spelled.
        let spelled = format!("{LOG_MADE_CONFIG}:{}", config.dir.display());
        let marked = registry.config(LOG_MADE_CONFIG).await?.is_some();
        let kept_one = marked || registry.config(&spelled).await?.is_some();
        let key = hmac_key(keystore, registry, exists).await?;
        let signing_key = match registry.config(SIGNING_KEY_CONFIG).await? {
            Some(name) => String::from_utf8(name).map_err(|_| {
                HubError::Audit("the stored checkpoint key name is not UTF-8".into())
            })?,
            None => AUDIT_SIGNING_KEY.to_owned(),
        };
        let signer = KeyStoreSigner::open(keystore.clone(), &signing_key, &origin)?;
        let options = AuditOptions {
            seal_after: config.seal_after,
            trusted_keys: trusted_keys(registry).await?,
            // A hub seals every second while it is busy; it reads only the latest.
            keep_checkpoints: false,
            ..AuditOptions::default()
        };
        let dir = config.dir.clone();
        let key_copy = AuditKey::from_bytes(key.to_bytes().as_slice())
            .map_err(|e| HubError::Audit(e.to_string()))?;
        let log = tokio::task::spawn_blocking(move || {
            if exists {
                AuditLog::open(&dir, Box::new(signer), key_copy, options)
            } else {
                if let Some(parent) = dir.parent() {
                    std::os::unix::fs::DirBuilderExt::mode(
                        std::fs::DirBuilder::new().recursive(true),
                        0o700,
                    )
                    .create(parent)
                    .map_err(|e| AuditError::Io {
                        op: "create",
                        path: parent.to_path_buf(),
                        source: e,
                    })?;
                }
                AuditLog::create(&dir, Box::new(signer), key_copy, options)
            }
        })
        .await
        .map_err(|_| HubError::Audit("opening the log panicked".into()))?
        .map_err(|e| HubError::Audit(e.to_string()))?;
        if !marked {
            registry.put_config(LOG_MADE_CONFIG, b"1").await?;
        }
        let recovery = log.recovery().cloned();
        // Records in the log but in no leaf: a crash's last ones (a clean stop seals all),
        // or records someone with write access to the directory added. Sealed from now on
        // like the rest, so said in the log first.
        let pending = log.pending();
        let first_pending = log.record_count().saturating_sub(pending);
        let inner = Arc::new(Inner {
            hub: hub.to_owned(),
            key,
            queue: Committer::new(config.max_backlog),
            log: Arc::new(Mutex::new(log)),
            seal_interval: config.seal_interval,
            commit_interval: config.commit_interval,
            stats,
            exports: Arc::default(),
            export_dir: audit_rpc::export_dir(&config.dir),
            rotating: tokio::sync::Mutex::new(()),
        });
        let writer = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("entente-audit".into())
                .spawn(move || inner.run())
                .map_err(|e| HubError::Audit(format!("starting the writer: {e}")))?
        };
        let auditor = Self(Some(inner));
        if kept_one && !exists {
            // Not quietly: a log gone (deleted, its volume not mounted) is said at its place,
            // as the new log's first record, and loudly in the hub's log.
            tracing::error!(
                dir = %config.dir.display(),
                "the audit log is missing where this hub made one: a new log starts"
            );
            let event = Event::Admin(entente_audit::Admin {
                operation: clear("audit-log-missing"),
                target: clear(&config.dir.display().to_string()),
                detail: clear(
                    "this hub made an audit log (its store says so) that is not in this \
                     directory: this new log starts without it",
                ),
            });
            auditor
                .record(HUB_ACTOR, Outcome::Failed, event)
                .await
                .map_err(|e| HubError::Audit(e.to_string()))?;
        }
        if let Some(recovery) = recovery {
            // A crash's torn tail, or damage that reads as one: said in the log itself, with
            // where the bytes cut off were kept.
            let kept: Vec<String> = recovery
                .kept
                .iter()
                .map(|(path, bytes)| format!("{} ({bytes} bytes)", path.display()))
                .collect();
            tracing::warn!(
                dir = %config.dir.display(),
                records_cut_at = ?recovery.records_torn_at,
                tree_cut_at = ?recovery.tree_torn_at,
                unsigned_leaves = recovery.unsigned_leaves,
                kept = %kept.join(", "),
                "the audit log ended in an incomplete write, cut off at open"
            );
            let at = |offset: Option<u64>| offset.map_or("-".to_owned(), |o| o.to_string());
            let event = Event::Admin(entente_audit::Admin {
                operation: clear("audit-log-repaired"),
                target: clear(&config.dir.display().to_string()),
                detail: clear(&format!(
                    "cut at open: records from offset {}, tree from offset {}, {} leaves \
                     without their checkpoint; kept: {}",
                    at(recovery.records_torn_at),
                    at(recovery.tree_torn_at),
                    recovery.unsigned_leaves,
                    kept.join(", ")
                )),
            });
            auditor
                .record(HUB_ACTOR, Outcome::Failed, event)
                .await
                .map_err(|e| HubError::Audit(e.to_string()))?;
        }
        if pending > 0 {
            let last = first_pending.saturating_add(pending - 1);
            tracing::warn!(
                dir = %config.dir.display(),
                first = first_pending,
                last,
                "the audit log held records no leaf sealed: left by a crash, or added by \
                 someone with access to its directory; sealed now, recorded as such"
            );
            let event = Event::Admin(entente_audit::Admin {
                operation: clear("audit-log-pending-at-open"),
                target: clear(&config.dir.display().to_string()),
                detail: clear(&format!(
                    "records {first_pending} to {last} were in the log unsealed when it \
                     opened: a crash's last records, or records someone with write access to \
                     its directory added; sealed from now on like the rest"
                )),
            });
            auditor
                .record(HUB_ACTOR, Outcome::Failed, event)
                .await
                .map_err(|e| HubError::Audit(e.to_string()))?;
        }
        Ok((auditor, AuditWriter(Some(writer))))
    }

    /// A handle that does not keep the log open.
    pub(crate) fn downgrade(&self) -> WeakAuditor {
        WeakAuditor(self.0.as_ref().map(Arc::downgrade))
    }

    /// Whether records are kept.
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Seals `log` (this auditor's, locked by the caller) now, for a proof or an export: a
    /// seal that fails fails the auditor at once, as the writer's own do, so that nothing is
    /// done meanwhile that could not be recorded.
    pub(crate) fn seal(&self, log: &mut AuditLog) -> Result<entente_audit::Checkpoint, AuditError> {
        let sealed = log.seal();
        if sealed.is_err()
            && let Some(inner) = &self.0
        {
            inner.fail();
        }
        sealed
    }

    /// The log, for reads and proofs; `None` when auditing is off.
    pub(crate) fn log(&self) -> Option<&Arc<Mutex<AuditLog>>> {
        self.0.as_ref().map(|inner| &inner.log)
    }

    /// The exports served over RPC, and their directory; `None` when auditing is off.
    pub(crate) fn exports(&self) -> Option<(Arc<Exports>, PathBuf)> {
        self.0
            .as_ref()
            .map(|inner| (inner.exports.clone(), inner.export_dir.clone()))
    }

    /// The HMAC of `value` under the log's key, for a field that must not be in clear (a
    /// free-text reason); `None` when auditing is off.
    pub(crate) fn mac(&self, value: &str) -> Option<FieldMac> {
        self.0.as_ref().map(|inner| inner.key.mac(value))
    }

    /// Queues a record of `event` by `actor` and returns its ticket (0 when auditing is off).
    /// Fails once the log has failed.
    pub(crate) fn submit(
        &self,
        actor: &str,
        outcome: Outcome,
        event: Event,
    ) -> Result<u64, AuditUnavailable> {
        let Some(inner) = &self.0 else {
            return Ok(0);
        };
        inner
            .queue
            .submit(inner.record(now_ms(), bounded(actor), outcome, event))
            .map_err(|_| AuditUnavailable)
    }

    /// Queues records of `events` by `actor`, all or none. Fails once the log has failed
    /// (unless there is nothing to queue).
    pub(crate) fn submit_all(
        &self,
        actor: &str,
        outcome: Outcome,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<(), AuditUnavailable> {
        let Some(inner) = &self.0 else {
            return Ok(());
        };
        let (time_ms, actor) = (now_ms(), bounded(actor));
        let records: Vec<Record> = events
            .into_iter()
            .map(|event| inner.record(time_ms, actor.clone(), outcome, event))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        let mut admission = inner.queue.admission().map_err(|_| AuditUnavailable)?;
        for record in records {
            admission.push(record, 0);
        }
        Ok(())
    }

    /// The ticket of everything submitted so far (0 when auditing is off).
    pub(crate) fn ticket(&self) -> u64 {
        self.0.as_ref().map_or(0, |inner| inner.queue.ticket())
    }

    /// Waits until the records up to `ticket` are durable.
    pub(crate) async fn durable(&self, ticket: u64) -> Result<(), AuditUnavailable> {
        match &self.0 {
            Some(inner) => inner
                .queue
                .durable(ticket)
                .await
                .map_err(|_| AuditUnavailable),
            None => Ok(()),
        }
    }

    /// Submits a record and waits until it is durable: for acts answered only once recorded.
    pub(crate) async fn record(
        &self,
        actor: &str,
        outcome: Outcome,
        event: Event,
    ) -> Result<(), AuditUnavailable> {
        let ticket = self.submit(actor, outcome, event)?;
        self.durable(ticket).await
    }

    /// Fails if the log has failed: checked before an act that is recorded after it happens,
    /// so that a hub whose log is gone does not act at all.
    pub(crate) fn check(&self) -> Result<(), AuditUnavailable> {
        match &self.0 {
            Some(inner) => inner.queue.check().map_err(|_| AuditUnavailable),
            None => Ok(()),
        }
    }

    /// Waits while more than [`AuditConfig::max_backlog`] records wait for the writer: what
    /// keeps a flood of traffic from growing the queue without bound.
    pub(crate) async fn room(&self) {
        if let Some(inner) = &self.0 {
            inner.queue.room().await;
        }
    }

    /// Rotates the checkpoint key (`entente keys rotate audit`): a new Ed25519 key is made in
    /// the key store; the rotation is recorded (naming both keys) and sealed under the old
    /// key; the store is told to trust the old key and sign with the new one; then every
    /// later checkpoint is signed with the new key. Returns the new verifier key.
    pub(crate) async fn rotate_key(
        &self,
        keystore: &Arc<dyn KeyStore>,
        registry: &Registry,
    ) -> Result<String, HubError> {
        let Some(inner) = &self.0 else {
            return Err(HubError::Audit("this hub keeps no audit log".into()));
        };
        let _rotating = inner.rotating.lock().await;
        let (origin, old) = {
            let log = inner.lock_log();
            let old = log
                .verifier()
                .keys()
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            (log.origin().to_owned(), old)
        };
        let name = format!("{AUDIT_SIGNING_KEY}-{}", now_ms());
        let signer = KeyStoreSigner::open(keystore.clone(), &name, &origin)?;
        let new = signer.verifier_key().to_string();
        let event = Event::Admin(entente_audit::Admin {
            operation: clear("rotate-audit-key"),
            target: clear(&new),
            detail: clear(&format!("after {old}")),
        });
        self.record(HUB_ACTOR, Outcome::Success, event)
            .await
            .map_err(|e| HubError::Audit(e.to_string()))?;
        // Stored before the switch: a crash in between restarts with the new key signing and
        // the old one trusted, which verifies everything.
        let mut trusted = trusted_keys(registry).await?;
        let old_key = VerifierKey::parse(&old).map_err(|e| HubError::Audit(e.to_string()))?;
        trusted.push(old_key);
        let text: String = trusted.iter().map(|k| format!("{k}\n")).collect();
        registry
            .put_config(TRUSTED_KEYS_CONFIG, text.as_bytes())
            .await?;
        registry
            .put_config(SIGNING_KEY_CONFIG, name.as_bytes())
            .await?;
        let log = inner.log.clone();
        tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .rotate_signer(Box::new(signer))
        })
        .await
        .map_err(|_| HubError::Audit("rotating the checkpoint key panicked".into()))?
        .map_err(|e| {
            inner.queue.fail();
            HubError::Audit(e.to_string())
        })?;
        Ok(new)
    }

    /// Stops taking records; the writer writes what is queued, seals and ends.
    pub(crate) fn close(&self) {
        if let Some(inner) = &self.0 {
            inner.queue.close();
        }
    }
}

// === impl Inner ===

impl Inner {
    /// A record of this hub: `event` by `actor` (bounded already) at `time_ms`.
    fn record(&self, time_ms: u64, actor: String, outcome: Outcome, event: Event) -> Record {
        Record {
            time_ms,
            hub: self.hub.clone(),
            actor,
            event,
            outcome,
        }
    }

    fn lock_log(&self) -> MutexGuard<'_, AuditLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The writer: group commit, periodic seals, fail closed.
    /// Returns whether the log ended whole: every record taken was written and the last
    /// seal made.
    fn run(&self) -> bool {
        let mut last_seal = Instant::now();
        let mut last_commit: Option<Instant> = None;
        loop {
            // Records arriving soon after a commit share the next one, `commit_interval`
            // after it (sooner at a close or with a full backlog); after a quiet spell the
            // next is at once.
            let held = last_commit
                .and_then(|at| at.checked_add(self.commit_interval))
                .is_some_and(|next| self.queue.pause_until(next));
            let wait = self.seal_interval.saturating_sub(last_seal.elapsed());
            let (records, closed) = self.queue.take(wait);
            let mut ok = true;
            if !records.is_empty() {
                ok = self.append(&records);
                last_commit = Some(Instant::now());
                if held {
                    stats::bump(&self.stats.audit_commits_held);
                }
            }
            if ok && (closed || last_seal.elapsed() >= self.seal_interval) {
                ok = self.seal();
                last_seal = Instant::now();
            }
            if !ok || closed {
                // Failed elsewhere too (a key rotation that failed the queue)?
                return ok && self.queue.check().is_ok();
            }
        }
    }

    /// Appends `records` durably and reports them; on failure fails the queue. Returns
    /// whether it succeeded.
    fn append(&self, records: &[Record]) -> bool {
        let mut log = self.lock_log();
        let before = log.record_count();
        let result = log.append_all(records);
        // A seal that fails after the records were written leaves them durable (pending).
        let written = log.record_count().saturating_sub(before);
        drop(log);
        stats::add(&self.stats.audit_records, written);
        if written > 0 {
            stats::bump(&self.stats.audit_commits);
        }
        self.queue.committed(written, || {});
        if result.is_err() {
            self.fail();
        }
        result.is_ok()
    }

    fn seal(&self) -> bool {
        let result = self.lock_log().seal();
        if result.is_err() {
            self.fail();
        }
        result.is_ok()
    }

    fn fail(&self) {
        tracing::error!("the audit log failed: everything it would record is refused");
        stats::bump(&self.stats.audit_failures);
        self.queue.fail();
    }
}

// === impl AuditWriter ===

impl AuditWriter {
    /// A writer that never ran (auditing off).
    pub(crate) fn none() -> Self {
        Self(None)
    }

    /// Waits for the writer to end (after [`Auditor::close`]); says how the log failed if
    /// it did (at any time, or at its last seal).
    pub(crate) async fn join(mut self) -> Result<(), String> {
        let Some(handle) = self.0.take() else {
            return Ok(());
        };
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) => Err("the audit log failed: what it would have recorded since \
                                  was refused, and its last records may be unsealed"
                .to_owned()),
            _ => Err("the audit log's writer panicked".to_owned()),
        }
    }
}

/// The audit writer of a hub that is starting: if the start fails once the writer runs, its
/// log is closed and the writer joined when this is dropped (what was queued written, the
/// log's lock released for another start); handed over with [`started`](Self::started).
pub(crate) struct StartingAudit {
    auditor: Auditor,
    writer: Option<AuditWriter>,
}

impl StartingAudit {
    pub(crate) fn new(auditor: &Auditor, writer: AuditWriter) -> Self {
        Self {
            auditor: auditor.clone(),
            writer: Some(writer),
        }
    }

    /// The hub started: its writer, now the hub's to close.
    pub(crate) fn started(mut self) -> AuditWriter {
        self.writer.take().unwrap_or_else(AuditWriter::none)
    }
}

impl Drop for StartingAudit {
    fn drop(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            self.auditor.close();
            if let Some(handle) = writer.0.take() {
                // A start that failed: the writer ends once it has written what is queued.
                let _ = handle.join();
            }
        }
    }
}

// === the checkpoint signer ===

/// Signs checkpoints with an Ed25519 key that stays in the key store.
#[derive(Debug)]
struct KeyStoreSigner {
    keystore: Arc<dyn KeyStore>,
    name: KeyName,
    key: VerifierKey,
}

impl KeyStoreSigner {
    /// The signer of [`AUDIT_SIGNING_KEY`], generated in the store if it is not there yet.
    fn open(keystore: Arc<dyn KeyStore>, name: &str, origin: &str) -> Result<Self, HubError> {
        let name = key_name(name)?;
        let public = match keystore.public_key(&name) {
            Ok(public) => public,
            Err(KeyStoreError::KeyNotFound { .. }) => keystore
                .generate(&name, KeyAlgorithm::Ed25519)
                .map_err(keystore_error)?,
            Err(e) => return Err(keystore_error(e)),
        };
        if public.algorithm != KeyAlgorithm::Ed25519 {
            return Err(HubError::Audit(format!(
                "the key store's `{name}` is not an Ed25519 key"
            )));
        }
        let bytes: [u8; 32] = public.bytes.as_slice().try_into().map_err(|_| {
            HubError::Audit(format!(
                "the key store's `{name}` public key is not 32 bytes"
            ))
        })?;
        let key = VerifierKey::ed25519(origin, bytes)
            .map_err(|e| HubError::Audit(format!("the audit log's origin `{origin}`: {e}")))?;
        Ok(Self {
            keystore,
            name,
            key,
        })
    }
}

impl NoteSigner for KeyStoreSigner {
    fn verifier_key(&self) -> &VerifierKey {
        &self.key
    }

    fn sign(&self, msg: &[u8]) -> Result<[u8; 64], NoteError> {
        let signature = self
            .keystore
            .sign(&self.name, msg)
            .map_err(|e| NoteError::Signer(e.to_string()))?;
        signature
            .as_slice()
            .try_into()
            .map_err(|_| NoteError::Signer("the key store's signature is not 64 bytes".into()))
    }
}

// === helpers ===

/// The log's HMAC key: unwrapped from the hub's store, or, for a new log, generated, wrapped
/// with [`AUDIT_KEK`] (created if needed) and stored.
async fn hmac_key(
    keystore: &Arc<dyn KeyStore>,
    registry: &Registry,
    log_exists: bool,
) -> Result<AuditKey, HubError> {
    let kek = key_name(AUDIT_KEK)?;
    if let Some(wrapped) = registry.config(HMAC_KEY_CONFIG).await? {
        let bytes = keystore
            .decrypt(&kek, &wrapped, HMAC_KEY_AAD)
            .map_err(|e| HubError::Audit(format!("unwrapping the audit HMAC key: {e}")))?;
        return AuditKey::from_bytes(&bytes).map_err(|e| HubError::Audit(e.to_string()));
    }
    if log_exists {
        return Err(HubError::Audit(
            "the audit log exists but the hub's store holds no HMAC key for it: restore the \
             store, or move the log aside to start a new one"
                .into(),
        ));
    }
    if !keystore.contains(&kek).map_err(keystore_error)? {
        keystore
            .generate(&kek, KeyAlgorithm::Aes256Gcm)
            .map_err(keystore_error)?;
    }
    let key = AuditKey::generate().map_err(|e| HubError::Audit(e.to_string()))?;
    let wrapped = keystore
        .encrypt(&kek, key.to_bytes().as_slice(), HMAC_KEY_AAD)
        .map_err(keystore_error)?;
    registry.put_config(HMAC_KEY_CONFIG, &wrapped).await?;
    Ok(key)
}

/// The earlier checkpoint keys the store lists.
async fn trusted_keys(registry: &Registry) -> Result<Vec<VerifierKey>, HubError> {
    let Some(text) = registry.config(TRUSTED_KEYS_CONFIG).await? else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8(text)
        .map_err(|_| HubError::Audit("the stored trusted checkpoint keys are not UTF-8".into()))?;
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            VerifierKey::parse(l)
                .map_err(|e| HubError::Audit(format!("a stored trusted checkpoint key: {e}")))
        })
        .collect()
}

fn key_name(name: &str) -> Result<KeyName, HubError> {
    KeyName::new(name).map_err(keystore_error)
}

fn keystore_error(e: KeyStoreError) -> HubError {
    HubError::Audit(format!("key store: {e}"))
}

/// `s` cut to what a record's string field may hold, at a character boundary.
pub(crate) fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD_LEN {
        return s.to_owned();
    }
    let mut end = MAX_FIELD_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

/// The actor of what the hub does by itself (expirations).
pub(crate) const HUB_ACTOR: &str = "hub";

/// The actor of a record of someone not yet identified (an enrollment refused).
pub(crate) const ANONYMOUS: &str = "anonymous";

/// SHA-256 of a certificate's DER, as records name certificates.
pub(crate) fn certificate_hash(der: &[u8]) -> Hash {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    Hash(<[u8; 32]>::try_from(digest.as_ref()).unwrap_or_default())
}

/// When a certificate expires, in Unix milliseconds (0 if it doesn't parse).
pub(crate) fn not_after_ms(der: &[u8]) -> u64 {
    use x509_parser::prelude::{FromDer, X509Certificate};
    X509Certificate::from_der(der).map_or(0, |(_, cert)| {
        u64::try_from(cert.validity().not_after.timestamp())
            .unwrap_or(0)
            .saturating_mul(1000)
    })
}

/// A clear text field, bounded.
pub(crate) fn clear(s: &str) -> Text {
    Text::Clear(bounded(s))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Fails `auditor`'s log, kept in `dir`: its records file is removed, and a record made
/// (which fails the log, as any failed write does).
#[cfg(test)]
pub(crate) async fn fail_for_tests(auditor: &Auditor, dir: &std::path::Path) {
    assert!(std::fs::remove_file(dir.join("records")).is_ok());
    let event = Event::Admin(entente_audit::Admin {
        operation: clear("test"),
        target: clear("test"),
        detail: clear("test"),
    });
    assert!(
        auditor
            .record(HUB_ACTOR, entente_audit::Outcome::Success, event)
            .await
            .is_err()
    );
}
