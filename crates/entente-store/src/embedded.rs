//! The embedded backend: one redb file, every write a durable ACID transaction.
//!
//! Layout (format version 3, see `docs/STORE.md`):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u64` (`"format_version"` → 3) |
//! | `agents` | principal `&str` | v1 byte + [`AgentRecord`] JSON |
//! | `key_bundles` | (principal `&str`, epoch `u64`) | v1 byte + bundle bytes |
//! | `tokens` | hash `&[u8; 32]` | v1 byte + [`TokenRecord`] JSON |
//! | `revocations` | `"current"` | v1 byte + version `u64` big-endian + list bytes |
//! | `grants` | `"current"` | v1 byte + version `u64` big-endian + book bytes |
//! | `config` | key `&str` | v1 byte + value bytes |
//! | `held` | message ID `&str` | v1 byte + record bytes |
//!
//! All tables and the `meta` entry are created in the first transaction, so a file either is a
//! complete store or holds no tables at all. An older store is migrated at open, in one
//! transaction: version 1 lacks `grants` and `held`, version 2 lacks `held`; the missing tables
//! are created and the version set to 3.
//!
//! The trait methods do their work inline when polled: each is one short transaction over small
//! values, and a write waits for its fsyncs (about half a millisecond here, see `docs/STORE.md`).

use std::fs;
use std::path::{Path, PathBuf};

use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{AgentRecord, Store, StoreError, TokenRecord};

/// The on-disk format version this build reads and writes.
const FORMAT_VERSION: u64 = 3;
/// Older formats, migrated at open: version 2 added the `grants` table, version 3 `held`.
const FORMAT_VERSION_1: u64 = 1;
const FORMAT_VERSION_2: u64 = 2;
/// The first byte of every stored value.
const VALUE_V1: u8 = 1;
/// The value version of an agent record with `renewed_from`: a build from before it reads no
/// such record (it would drop the lineage on its next write, and revoking a serial would
/// then miss what was renewed from it), rather than misread it.
const VALUE_V2: u8 = 2;
/// The key of the format version in `meta`.
const FORMAT_KEY: &str = "format_version";
/// The key of the one value in `revocations` and in `grants`.
const CURRENT_KEY: &str = "current";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const KEY_BUNDLES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("key_bundles");
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocations");
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held");

/// A [`Store`] in one redb database file.
///
/// Every write is its own transaction, committed with two-phase commit and fsync before the call
/// returns. One process at a time may open a file: a second open fails with
/// [`StoreError::Unavailable`].
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
}

impl EmbeddedStore {
    /// The on-disk format version this build reads and writes.
    pub const FORMAT_VERSION: u64 = FORMAT_VERSION;

    /// Opens the store at `path`, creating it (mode 0600) if the file does not exist.
    ///
    /// An existing file is opened only if it is a complete store of a known format: a file that
    /// is not a redb database, a database without Entente's `meta` entry or with a missing table
    /// fails with [`StoreError::Corrupt`], one of another format version with
    /// [`StoreError::FormatVersion`]. A complete version 1 store is migrated to version 2. The
    /// file's mode is set to 0600 on every open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file_err = |e: std::io::Error| {
            StoreError::Unavailable(format!("cannot open `{}`: {e}", path.display()))
        };
        // Create the file ourselves so that it never exists with a wider mode.
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            options.mode(0o600);
            options.open(&path).map_err(file_err)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(file_err)?;
        }
        #[cfg(not(unix))]
        options.open(&path).map_err(file_err)?;

        // `create` initializes an empty file and opens an existing database.
        let db = Database::create(&path).map_err(|e| open_error(&path, e))?;
        let store = Self { db, path };
        store.init_or_check()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the database, reporting any error that dropping it would ignore.
    pub fn close(self) -> Result<(), StoreError> {
        self.db.close().map_err(engine_error)
    }

    // === synchronous operations behind the trait ===

    fn put_agent_now(&self, record: &AgentRecord) -> Result<(), StoreError> {
        let mut value = encode_json(|| agent_what(&record.principal), record)?;
        if !record.renewed_from.is_empty()
            && let Some(version) = value.first_mut()
        {
            *version = VALUE_V2;
        }
        self.write(|tx| {
            tx.open_table(AGENTS)
                .map_err(engine_error)?
                .insert(record.principal.as_str(), value.as_slice())
                .map_err(engine_error)?;
            Ok(())
        })
    }

    fn agent_now(&self, principal: &str) -> Result<Option<AgentRecord>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(AGENTS).map_err(engine_error)?;
        let Some(value) = table.get(principal).map_err(engine_error)? else {
            return Ok(None);
        };
        decode_agent(principal, value.value()).map(Some)
    }

    fn agents_now(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(AGENTS).map_err(engine_error)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(engine_error)? {
            let (key, value) = entry.map_err(engine_error)?;
            out.push(decode_agent(key.value(), value.value())?);
        }
        Ok(out)
    }

    fn put_key_bundle_now(
        &self,
        principal: &str,
        epoch: u64,
        bundle: &[u8],
    ) -> Result<(), StoreError> {
        let value = encode_blob(bundle);
        self.write(|tx| {
            tx.open_table(KEY_BUNDLES)
                .map_err(engine_error)?
                .insert((principal, epoch), value.as_slice())
                .map_err(engine_error)?;
            Ok(())
        })
    }

    fn key_bundle_now(&self, principal: &str, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(KEY_BUNDLES).map_err(engine_error)?;
        let Some(value) = table.get((principal, epoch)).map_err(engine_error)? else {
            return Ok(None);
        };
        decode_blob(|| bundle_what(principal, epoch), value.value()).map(Some)
    }

    fn latest_key_bundle_now(&self, principal: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(KEY_BUNDLES).map_err(engine_error)?;
        let mut range = table
            .range((principal, 0)..=(principal, u64::MAX))
            .map_err(engine_error)?;
        let Some(entry) = range.next_back() else {
            return Ok(None);
        };
        let (key, value) = entry.map_err(engine_error)?;
        let (_, epoch) = key.value();
        let bundle = decode_blob(|| bundle_what(principal, epoch), value.value())?;
        Ok(Some((epoch, bundle)))
    }

    fn put_token_now(&self, token: &TokenRecord, max: u64) -> Result<(), StoreError> {
        let value = encode_json(token_what, token)?;
        self.write(|tx| {
            let mut table = tx.open_table(TOKENS).map_err(engine_error)?;
            if table.get(&token.hash).map_err(engine_error)?.is_some() {
                return Err(StoreError::AlreadyExists { what: "join token" });
            }
            // Full: the expired make room, if any (an error aborts their deletion too).
            if table.len().map_err(engine_error)? >= max
                && (purge_expired(&mut table, token.created_ms)? == 0
                    || table.len().map_err(engine_error)? >= max)
            {
                return Err(StoreError::Full {
                    what: "join tokens",
                    max,
                });
            }
            table
                .insert(&token.hash, value.as_slice())
                .map_err(engine_error)?;
            Ok(())
        })
    }

    fn redeem_token_now(&self, hash: &[u8; 32], now_ms: u64) -> Result<TokenRecord, StoreError> {
        // Most attempts that need no credential name no token (a guess, a flood): answered from
        // a read transaction, which waits for no writer and holds none up.
        {
            let tx = self.read()?;
            let table = tx.open_table(TOKENS).map_err(engine_error)?;
            if table.get(hash).map_err(engine_error)?.is_none() {
                return Err(StoreError::TokenUnknown);
            }
        }
        // redb runs one write transaction at a time, so the read, the checks and the write below
        // are one atomic step; an error drops (aborts) the transaction and changes nothing.
        self.write(|tx| {
            let mut table = tx.open_table(TOKENS).map_err(engine_error)?;
            let mut token = {
                let Some(value) = table.get(hash).map_err(engine_error)? else {
                    return Err(StoreError::TokenUnknown);
                };
                decode_token(hash, value.value())?
            };
            if token.used {
                return Err(StoreError::TokenUsed);
            }
            if now_ms >= token.expires_ms {
                return Err(StoreError::TokenExpired);
            }
            token.used = true;
            let value = encode_json(token_what, &token)?;
            table.insert(hash, value.as_slice()).map_err(engine_error)?;
            Ok(token)
        })
    }

    fn purge_tokens_now(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(TOKENS).map_err(engine_error)?;
            purge_expired(&mut table, now_ms)
        })
    }

    fn put_revocations_now(&self, version: u64, list: &[u8]) -> Result<(), StoreError> {
        self.put_versioned(REVOCATIONS, revocations_what, version, list)
    }

    fn revocations_now(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.versioned(REVOCATIONS, revocations_what)
    }

    fn put_grants_now(&self, version: u64, book: &[u8]) -> Result<(), StoreError> {
        self.put_versioned(GRANTS, grants_what, version, book)
    }

    fn grants_now(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.versioned(GRANTS, grants_what)
    }

    /// Replaces the one value of `table` if `version` is above the stored one (or none is
    /// stored), in one write transaction.
    fn put_versioned(
        &self,
        table: TableDefinition<&str, &[u8]>,
        what: fn() -> String,
        version: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let mut value = Vec::with_capacity(9 + bytes.len());
        value.push(VALUE_V1);
        value.extend_from_slice(&version.to_be_bytes());
        value.extend_from_slice(bytes);
        self.write(|tx| {
            let mut table = tx.open_table(table).map_err(engine_error)?;
            let stored = match table.get(CURRENT_KEY).map_err(engine_error)? {
                Some(current) => Some(decode_versioned(what, current.value())?.0),
                None => None,
            };
            if let Some(stored) = stored
                && version <= stored
            {
                return Err(StoreError::StaleVersion {
                    stored,
                    offered: version,
                });
            }
            table
                .insert(CURRENT_KEY, value.as_slice())
                .map_err(engine_error)?;
            Ok(())
        })
    }

    fn versioned(
        &self,
        table: TableDefinition<&str, &[u8]>,
        what: fn() -> String,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(table).map_err(engine_error)?;
        let Some(value) = table.get(CURRENT_KEY).map_err(engine_error)? else {
            return Ok(None);
        };
        decode_versioned(what, value.value()).map(Some)
    }

    fn put_config_now(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let value = encode_blob(value);
        self.write(|tx| {
            tx.open_table(CONFIG)
                .map_err(engine_error)?
                .insert(key, value.as_slice())
                .map_err(engine_error)?;
            Ok(())
        })
    }

    fn put_held_now(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        let value = encode_blob(record);
        self.write(|tx| {
            tx.open_table(HELD)
                .map_err(engine_error)?
                .insert(id, value.as_slice())
                .map_err(engine_error)?;
            Ok(())
        })
    }

    fn delete_held_now(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| {
            let removed = tx
                .open_table(HELD)
                .map_err(engine_error)?
                .remove(id)
                .map_err(engine_error)?
                .is_some();
            Ok(removed)
        })
    }

    fn held_now(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(HELD).map_err(engine_error)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(engine_error)? {
            let (key, value) = entry.map_err(engine_error)?;
            let id = key.value();
            let record = decode_blob(
                || format!("held message `{}`", id.escape_debug()),
                value.value(),
            )?;
            out.push((id.to_owned(), record));
        }
        Ok(out)
    }

    /// [`Store::config`] without a future: for a tool that reads the store before any async
    /// runtime runs (the hub's CA state, when the CLI opens a data directory).
    pub fn config_now(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CONFIG).map_err(engine_error)?;
        let Some(value) = table.get(key).map_err(engine_error)? else {
            return Ok(None);
        };
        decode_blob(
            || format!("config entry `{}`", key.escape_debug()),
            value.value(),
        )
        .map(Some)
    }

    // === transactions ===

    /// Runs `f` in one write transaction and commits it durably if `f` succeeds; an error from
    /// `f` drops the transaction, which aborts it.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.db.begin_write().map_err(engine_error)?;
        // Durability::Immediate (fsync before commit returns) is redb's default; two-phase commit
        // adds a second fsync so that a crash can never expose a half-written commit slot, even
        // against an adversary choosing what is written (see `docs/STORE.md`).
        tx.set_two_phase_commit(true);
        let out = f(&tx)?;
        tx.commit().map_err(engine_error)?;
        Ok(out)
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(engine_error)
    }

    /// Initializes a database with no tables; checks the format and tables of any other.
    fn init_or_check(&self) -> Result<(), StoreError> {
        let tx = self.read()?;
        let names: Vec<String> = tx
            .list_tables()
            .map_err(engine_error)?
            .map(|t| t.name().to_owned())
            .collect();
        if names.is_empty() {
            drop(tx);
            return self.write(|tx| {
                tx.open_table(META)
                    .map_err(engine_error)?
                    .insert(FORMAT_KEY, FORMAT_VERSION)
                    .map_err(engine_error)?;
                tx.open_table(AGENTS).map_err(engine_error)?;
                tx.open_table(KEY_BUNDLES).map_err(engine_error)?;
                tx.open_table(TOKENS).map_err(engine_error)?;
                tx.open_table(REVOCATIONS).map_err(engine_error)?;
                tx.open_table(CONFIG).map_err(engine_error)?;
                tx.open_table(GRANTS).map_err(engine_error)?;
                tx.open_table(HELD).map_err(engine_error)?;
                Ok(())
            });
        }

        let not_a_store = |reason: String| StoreError::Corrupt {
            what: format!("database file `{}`", self.path.display()),
            reason,
        };
        if !names.iter().any(|n| n == META.name()) {
            return Err(not_a_store(
                "not an Entente store (no `meta` table)".to_owned(),
            ));
        }
        let found = tx
            .open_table(META)
            .map_err(engine_error)?
            .get(FORMAT_KEY)
            .map_err(engine_error)?
            .map(|v| v.value())
            .ok_or_else(|| not_a_store("no format version in `meta`".to_owned()))?;
        if ![FORMAT_VERSION, FORMAT_VERSION_2, FORMAT_VERSION_1].contains(&found) {
            return Err(StoreError::FormatVersion {
                found,
                supported: FORMAT_VERSION,
            });
        }
        // Every table must be there with the expected types.
        let missing = |e: redb::TableError| not_a_store(redb::Error::from(e).to_string());
        tx.open_table(AGENTS).map_err(missing)?;
        tx.open_table(KEY_BUNDLES).map_err(missing)?;
        tx.open_table(TOKENS).map_err(missing)?;
        tx.open_table(REVOCATIONS).map_err(missing)?;
        tx.open_table(CONFIG).map_err(missing)?;
        if found != FORMAT_VERSION_1 {
            tx.open_table(GRANTS).map_err(missing)?;
        }
        if found == FORMAT_VERSION {
            tx.open_table(HELD).map_err(missing)?;
            return Ok(());
        }
        drop(tx);
        self.migrate(found)
    }

    /// Version 1 or 2 → 3: adds the tables the version lacks (`grants` for version 1, `held`
    /// for both), in one transaction with the version change, so a crash leaves a complete
    /// store of either version.
    fn migrate(&self, from: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut meta = tx.open_table(META).map_err(engine_error)?;
            // Checked again inside the write transaction: another open may have migrated it.
            let found = meta
                .get(FORMAT_KEY)
                .map_err(engine_error)?
                .map(|v| v.value());
            if found == Some(FORMAT_VERSION) {
                return Ok(());
            }
            let names: Vec<String> = tx
                .list_tables()
                .map_err(engine_error)?
                .map(|t| t.name().to_owned())
                .collect();
            let newer: &[&str] = if from == FORMAT_VERSION_1 {
                &["grants", "held"]
            } else {
                &["held"]
            };
            if let Some(table) = newer.iter().find(|t| names.iter().any(|n| n == *t)) {
                return Err(StoreError::Corrupt {
                    what: format!("database file `{}`", self.path.display()),
                    reason: format!("a version {from} store with a `{table}` table"),
                });
            }
            tx.open_table(GRANTS).map_err(engine_error)?;
            tx.open_table(HELD).map_err(engine_error)?;
            meta.insert(FORMAT_KEY, FORMAT_VERSION)
                .map_err(engine_error)?;
            Ok(())
        })
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

// === impl Store ===

impl Store for EmbeddedStore {
    async fn put_agent(&self, record: &AgentRecord) -> Result<(), StoreError> {
        self.put_agent_now(record)
    }

    async fn agent(&self, principal: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.agent_now(principal)
    }

    async fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.agents_now()
    }

    async fn put_key_bundle(
        &self,
        principal: &str,
        epoch: u64,
        bundle: &[u8],
    ) -> Result<(), StoreError> {
        self.put_key_bundle_now(principal, epoch, bundle)
    }

    async fn key_bundle(&self, principal: &str, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.key_bundle_now(principal, epoch)
    }

    async fn latest_key_bundle(
        &self,
        principal: &str,
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.latest_key_bundle_now(principal)
    }

    async fn put_token(&self, token: &TokenRecord, max: u64) -> Result<(), StoreError> {
        self.put_token_now(token, max)
    }

    async fn redeem_token(&self, hash: &[u8; 32], now_ms: u64) -> Result<TokenRecord, StoreError> {
        self.redeem_token_now(hash, now_ms)
    }

    async fn purge_tokens(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.purge_tokens_now(now_ms)
    }

    async fn put_revocations(&self, version: u64, list: &[u8]) -> Result<(), StoreError> {
        self.put_revocations_now(version, list)
    }

    async fn revocations(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.revocations_now()
    }

    async fn put_grants(&self, version: u64, book: &[u8]) -> Result<(), StoreError> {
        self.put_grants_now(version, book)
    }

    async fn grants(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.grants_now()
    }

    async fn put_held(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        self.put_held_now(id, record)
    }

    async fn delete_held(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_held_now(id)
    }

    async fn held(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.held_now()
    }

    async fn put_config(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.put_config_now(key, value)
    }

    async fn config(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.config_now(key)
    }
}

// === value encoding ===

fn encode_json<T: Serialize>(
    what: impl FnOnce() -> String,
    record: &T,
) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![VALUE_V1];
    serde_json::to_writer(&mut out, record).map_err(|e| StoreError::Corrupt {
        what: what(),
        reason: format!("cannot be encoded: {e}"),
    })?;
    Ok(out)
}

fn decode_json<T: DeserializeOwned>(
    what: impl Fn() -> String,
    value: &[u8],
) -> Result<T, StoreError> {
    let payload = strip_version(&what, value)?;
    serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
        what: what(),
        reason: e.to_string(),
    })
}

fn encode_blob(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + bytes.len());
    out.push(VALUE_V1);
    out.extend_from_slice(bytes);
    out
}

fn decode_blob(what: impl Fn() -> String, value: &[u8]) -> Result<Vec<u8>, StoreError> {
    strip_version(&what, value).map(<[u8]>::to_vec)
}

fn strip_version<'v>(what: &impl Fn() -> String, value: &'v [u8]) -> Result<&'v [u8], StoreError> {
    match value.split_first() {
        Some((&VALUE_V1, payload)) => Ok(payload),
        Some((other, _)) => Err(StoreError::Corrupt {
            what: what(),
            reason: format!("unknown value version {other}"),
        }),
        None => Err(StoreError::Corrupt {
            what: what(),
            reason: "empty value".to_owned(),
        }),
    }
}

fn decode_agent(principal: &str, value: &[u8]) -> Result<AgentRecord, StoreError> {
    let what = || agent_what(principal);
    // Version 2 is version 1's JSON with `renewed_from`: read the same way.
    let record: AgentRecord = match value.split_first() {
        Some((&VALUE_V2, payload)) => {
            serde_json::from_slice(payload).map_err(|e| StoreError::Corrupt {
                what: what(),
                reason: e.to_string(),
            })?
        }
        _ => decode_json(what, value)?,
    };
    if record.principal != principal {
        return Err(StoreError::Corrupt {
            what: what(),
            reason: "record is stored under another principal".to_owned(),
        });
    }
    Ok(record)
}

/// Deletes the tokens of `table` expired at `now_ms` (`expires_ms <= now_ms`), used or not;
/// returns how many.
fn purge_expired(
    table: &mut redb::Table<'_, &'static [u8; 32], &'static [u8]>,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let mut expired = Vec::new();
    for entry in table.iter().map_err(engine_error)? {
        let (key, value) = entry.map_err(engine_error)?;
        let hash = *key.value();
        if decode_token(&hash, value.value())?.expires_ms <= now_ms {
            expired.push(hash);
        }
    }
    for hash in &expired {
        table.remove(hash).map_err(engine_error)?;
    }
    Ok(u64::try_from(expired.len()).unwrap_or(u64::MAX))
}

fn decode_token(hash: &[u8; 32], value: &[u8]) -> Result<TokenRecord, StoreError> {
    let record: TokenRecord = decode_json(token_what, value)?;
    if &record.hash != hash {
        return Err(StoreError::Corrupt {
            what: token_what(),
            reason: "record is stored under another hash".to_owned(),
        });
    }
    Ok(record)
}

/// A versioned value: the value version byte, a `u64` big-endian version, the bytes.
fn decode_versioned(what: fn() -> String, value: &[u8]) -> Result<(u64, Vec<u8>), StoreError> {
    let payload = strip_version(&what, value)?;
    let Some((version, list)) = payload.split_first_chunk::<8>() else {
        return Err(StoreError::Corrupt {
            what: what(),
            reason: "shorter than its version".to_owned(),
        });
    };
    Ok((u64::from_be_bytes(*version), list.to_vec()))
}

fn revocations_what() -> String {
    "revocation list".to_owned()
}

fn grants_what() -> String {
    "grant book".to_owned()
}

fn agent_what(principal: &str) -> String {
    format!("agent `{}`", principal.escape_debug())
}

fn bundle_what(principal: &str, epoch: u64) -> String {
    format!("key bundle `{}` epoch {epoch}", principal.escape_debug())
}

/// Token hashes stay out of messages: they are the lookup key for a secret.
fn token_what() -> String {
    "join token".to_owned()
}

// === engine errors ===

/// Maps an error from opening the file: a file that is not a redb database is corrupt, not
/// unavailable.
fn open_error(path: &Path, err: redb::DatabaseError) -> StoreError {
    if let redb::DatabaseError::Storage(redb::StorageError::Io(io)) = &err
        && matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        )
    {
        return StoreError::Corrupt {
            what: format!("database file `{}`", path.display()),
            reason: io.to_string(),
        };
    }
    match engine_error(err) {
        StoreError::Corrupt { reason, .. } => StoreError::Corrupt {
            what: format!("database file `{}`", path.display()),
            reason,
        },
        other => other,
    }
}

/// The one mapping from redb's errors: damaged data is [`StoreError::Corrupt`], anything else
/// [`StoreError::Unavailable`] with redb's message.
fn engine_error(err: impl Into<redb::Error>) -> StoreError {
    match err.into() {
        redb::Error::Corrupted(reason) => StoreError::Corrupt {
            what: "database".to_owned(),
            reason,
        },
        redb::Error::UpgradeRequired(version) => StoreError::Corrupt {
            what: "database".to_owned(),
            reason: format!("written in redb file format {version}, which needs an upgrade"),
        },
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableDoesNotExist(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)) => StoreError::Corrupt {
            what: "database".to_owned(),
            reason: e.to_string(),
        },
        redb::Error::DatabaseAlreadyOpen => {
            StoreError::Unavailable("database file is already open".to_owned())
        }
        other => StoreError::Unavailable(other.to_string()),
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

    use super::{decode_blob, decode_versioned, encode_blob, grants_what, revocations_what};
    use crate::StoreError;

    /// An attempt naming no token (a guess, a flood) is answered without the write lock: a
    /// writer holding it (a renewal, a revocation) does not hold the answer up, nor the other
    /// way round.
    #[test]
    fn an_unknown_token_is_answered_without_waiting_for_writers() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            std::sync::Arc::new(super::EmbeddedStore::open(dir.path().join("s.redb")).unwrap());
        let writing = store.db.begin_write().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let asking = store.clone();
        std::thread::spawn(move || {
            let _ = tx.send(asking.redeem_token_now(&[7; 32], 0));
        });
        let answer = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the redemption waited for the writer");
        assert!(
            matches!(answer, Err(StoreError::TokenUnknown)),
            "{answer:?}"
        );
        drop(writing);
    }

    #[test]
    fn blob_round_trip_and_version_byte() {
        assert_eq!(encode_blob(b"abc"), b"\x01abc");
        assert_eq!(decode_blob(String::new, b"\x01abc").unwrap(), b"abc");
        assert_eq!(decode_blob(String::new, b"\x01").unwrap(), b"");
        assert!(matches!(
            decode_blob(|| "x".to_owned(), b"\x02abc"),
            Err(StoreError::Corrupt { what, reason }) if what == "x" && reason.contains("version 2")
        ));
        assert!(matches!(
            decode_blob(String::new, b""),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// An agent record with a renewal lineage is written with value version 2, which a build
    /// from before the lineage refuses rather than drop it; one without stays version 1; both
    /// read back.
    #[test]
    fn an_agent_record_with_a_lineage_is_value_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::EmbeddedStore::open(dir.path().join("s.redb")).unwrap();
        let mut record = crate::AgentRecord {
            principal: "spiffe://example.org/agent/shop/alice".to_owned(),
            segment: Some("shop".to_owned()),
            enrolled_at_ms: 1,
            certificate_serials: vec![vec![0x0a]],
            key_epoch: 1,
            suspended: false,
            renewed_from: Vec::new(),
        };
        let raw = |store: &super::EmbeddedStore| {
            let tx = store.read().unwrap();
            let table = tx.open_table(super::AGENTS).unwrap();
            let value = table.get(record.principal.as_str()).unwrap().unwrap();
            value.value().to_vec()
        };
        store.put_agent_now(&record).unwrap();
        assert_eq!(raw(&store)[0], 1);
        record.certificate_serials.push(vec![0x0b]);
        record.renewed_from = vec![(vec![0x0b], vec![0x0a])];
        store.put_agent_now(&record).unwrap();
        assert_eq!(raw(&store)[0], 2);
        assert_eq!(
            store.agent_now(&record.principal).unwrap(),
            Some(record.clone())
        );
        // What a build from before it does with such a value: refuse it.
        assert!(matches!(
            super::decode_json::<crate::AgentRecord>(String::new, &raw(&store)),
            Err(StoreError::Corrupt { reason, .. }) if reason.contains("version 2")
        ));
    }

    #[test]
    fn versioned_values_need_a_whole_version() {
        assert_eq!(
            decode_versioned(revocations_what, b"\x01\0\0\0\0\0\0\0\x05list").unwrap(),
            (5, b"list".to_vec())
        );
        assert!(matches!(
            decode_versioned(revocations_what, b"\x01\0\0\0\x05"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_versioned(grants_what, b"\x02\0\0\0\0\0\0\0\x05"),
            Err(StoreError::Corrupt { what, .. }) if what == "grant book"
        ));
    }
}
