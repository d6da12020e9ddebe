//! The conformance suite against [`EmbeddedStore`], and what only the embedded backend has: a
//! file that must survive reopening, refuse garbage and keep its mode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use entente_store::conformance::{self, sample_agent, sample_token};
use entente_store::{EmbeddedStore, Store, StoreError};
use redb::{ReadableDatabase, TableDefinition};
use tempfile::TempDir;

/// A fresh store in its own temporary directory (kept alive by the returned guard).
fn fresh() -> (TempDir, EmbeddedStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(tmp.path().join("registry.redb")).unwrap();
    (tmp, store)
}

fn db_path(tmp: &TempDir) -> PathBuf {
    tmp.path().join("registry.redb")
}

// === conformance ===

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $check() {
            let (_tmp, store) = fresh();
            conformance::$check(&store).await;
        }
    )*};
}

conformance!(
    agents_round_trip,
    agents_are_listed_in_order,
    key_bundles_by_epoch,
    latest_key_bundle_stays_within_principal,
    put_token_refuses_duplicates,
    redeem_token_once,
    redeem_unknown_token,
    expired_token_is_refused_and_unchanged,
    used_token_is_reported_used_after_expiry,
    purge_removes_only_expired_tokens,
    revocations_only_move_forward,
    grants_only_move_forward,
    grants_and_revocations_are_apart,
    config_round_trip,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_redeem_has_one_winner() {
    // Repeated: a race that is lost only sometimes must still be caught.
    for _ in 0..20 {
        let (_tmp, store) = fresh();
        conformance::concurrent_redeem_has_one_winner(Arc::new(store)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_put_token_has_one_winner() {
    for _ in 0..10 {
        let (_tmp, store) = fresh();
        conformance::concurrent_put_token_has_one_winner(Arc::new(store)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_revocations_keep_the_highest() {
    for _ in 0..10 {
        let (_tmp, store) = fresh();
        conformance::concurrent_revocations_keep_the_highest(Arc::new(store)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_keep_the_highest() {
    for _ in 0..10 {
        let (_tmp, store) = fresh();
        conformance::concurrent_grants_keep_the_highest(Arc::new(store)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = 0;
    conformance::run_all(async || {
        n += 1;
        EmbeddedStore::open(tmp.path().join(format!("{n}.redb"))).unwrap()
    })
    .await;
}

// === the file ===

#[tokio::test]
async fn data_survives_close_and_reopen() {
    let (tmp, store) = fresh();
    let agent = sample_agent("spiffe://entente.test/agent/ops/a");
    store.put_agent(&agent).await.unwrap();
    store
        .put_key_bundle(&agent.principal, 4, b"kb4")
        .await
        .unwrap();
    store
        .put_token(&sample_token(1, 0, 100), u64::MAX)
        .await
        .unwrap();
    store
        .put_token(&sample_token(2, 0, 100), u64::MAX)
        .await
        .unwrap();
    store.redeem_token(&[2; 32], 10).await.unwrap();
    store.put_revocations(3, b"crl").await.unwrap();
    store.put_grants(9, b"book").await.unwrap();
    store.put_config("k", b"v").await.unwrap();
    store.close().unwrap();

    let store = EmbeddedStore::open(db_path(&tmp)).unwrap();
    assert_eq!(store.agents().await.unwrap(), vec![agent.clone()]);
    assert_eq!(
        store.latest_key_bundle(&agent.principal).await.unwrap(),
        Some((4, b"kb4".to_vec()))
    );
    assert!(matches!(
        store.redeem_token(&[2; 32], 10).await,
        Err(StoreError::TokenUsed)
    ));
    assert!(store.redeem_token(&[1; 32], 10).await.unwrap().used);
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((3, b"crl".to_vec()))
    );
    assert_eq!(store.grants().await.unwrap(), Some((9, b"book".to_vec())));
    assert_eq!(store.config("k").await.unwrap(), Some(b"v".to_vec()));
}

#[tokio::test]
async fn data_survives_drop_without_close() {
    let (tmp, store) = fresh();
    store.put_config("k", b"v").await.unwrap();
    drop(store);
    let store = EmbeddedStore::open(db_path(&tmp)).unwrap();
    assert_eq!(store.config("k").await.unwrap(), Some(b"v".to_vec()));
}

#[test]
fn file_is_private() {
    let (tmp, store) = fresh();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(store.path()), 0o600);
    store.close().unwrap();

    // A wider mode (say, after a restore from backup) is narrowed again on open.
    fs::set_permissions(db_path(&tmp), fs::Permissions::from_mode(0o644)).unwrap();
    let store = EmbeddedStore::open(db_path(&tmp)).unwrap();
    assert_eq!(mode(store.path()), 0o600);
}

#[test]
fn garbage_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = db_path(&tmp);
    for garbage in [&b"not a database"[..], &[0x5a; 8192][..]] {
        fs::write(&path, garbage).unwrap();
        let err = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what.contains("registry.redb")),
            "{err:?}"
        );
        // Refused, not repaired or overwritten.
        assert_eq!(fs::read(&path).unwrap(), garbage);
    }
}

#[test]
fn truncated_file_is_refused() {
    let (tmp, store) = fresh();
    store.close().unwrap();
    let path = db_path(&tmp);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        EmbeddedStore::open(&path),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn empty_file_becomes_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let path = db_path(&tmp);
    fs::write(&path, b"").unwrap();
    EmbeddedStore::open(&path).unwrap().close().unwrap();
    EmbeddedStore::open(&path).unwrap();
}

#[test]
fn second_open_is_unavailable() {
    let (tmp, _store) = fresh();
    let err = EmbeddedStore::open(db_path(&tmp)).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}

#[test]
fn missing_directory_is_unavailable() {
    let tmp = tempfile::tempdir().unwrap();
    let err = EmbeddedStore::open(tmp.path().join("no/such/dir/registry.redb")).unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(msg) if msg.contains("registry.redb")),
        "{err:?}"
    );
}

// === foreign and future databases, written with redb directly ===

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const TOKENS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("tokens");
const KEY_BUNDLES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("key_bundles");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocations");
const CONFIG: TableDefinition<&str, &[u8]> = TableDefinition::new("config");
const GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("grants");
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held");

#[test]
fn foreign_redb_database_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = db_path(&tmp);
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(AGENTS)
            .unwrap()
            .insert("x", &b"y"[..])
            .unwrap();
        tx.commit().unwrap();
    }
    let err = EmbeddedStore::open(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { reason, .. } if reason.contains("meta")),
        "{err:?}"
    );
}

#[test]
fn unknown_format_version_is_refused() {
    let (tmp, store) = fresh();
    store.close().unwrap();
    {
        let db = redb::Database::open(db_path(&tmp)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("format_version", 4)
            .unwrap();
        tx.commit().unwrap();
    }
    let err = EmbeddedStore::open(db_path(&tmp)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::FormatVersion {
                found: 4,
                supported: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(EmbeddedStore::FORMAT_VERSION, 3);
}

/// A version 1 store made by hand (the tables of version 1, no `grants`, no `held`) is migrated
/// at open, once; a version 1 store that already has a `grants` table is not a store we wrote.
#[tokio::test]
async fn a_version_1_store_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let path = db_path(&tmp);
    write_version_1(&path, false);
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.config("k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(store.grants().await.unwrap(), None);
    assert!(store.held().await.unwrap().is_empty());
    store.put_grants(1, b"book").await.unwrap();
    store.close().unwrap();
    assert_eq!(format_version(&path), 3);
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((1, b"book".to_vec())));
    store.close().unwrap();

    let path = tmp.path().join("odd.redb");
    write_version_1(&path, true);
    assert!(matches!(
        EmbeddedStore::open(&path),
        Err(StoreError::Corrupt { reason, .. }) if reason.contains("grants")
    ));
    assert_eq!(format_version(&path), 1);
}

/// A version 2 store made by hand (no `held`) is migrated at open, keeping its grants; one that
/// already has a `held` table is not a store we wrote.
#[tokio::test]
async fn a_version_2_store_is_migrated() {
    let tmp = tempfile::tempdir().unwrap();
    let path = db_path(&tmp);
    write_version_2(&path, false);
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((7, b"book".to_vec())));
    assert!(store.held().await.unwrap().is_empty());
    store.put_held("m-1", b"held").await.unwrap();
    store.close().unwrap();
    assert_eq!(format_version(&path), 3);
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store.held().await.unwrap(),
        [("m-1".to_owned(), b"held".to_vec())]
    );
    store.close().unwrap();

    let path = tmp.path().join("odd.redb");
    write_version_2(&path, true);
    assert!(matches!(
        EmbeddedStore::open(&path),
        Err(StoreError::Corrupt { reason, .. }) if reason.contains("held")
    ));
    assert_eq!(format_version(&path), 2);
}

fn write_version_2(path: &Path, with_held: bool) {
    write_version_1(path, false);
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert("format_version", 2)
        .unwrap();
    let mut version = 7u64.to_be_bytes().to_vec();
    version.insert(0, 1);
    version.extend_from_slice(b"book");
    tx.open_table(GRANTS)
        .unwrap()
        .insert("current", version.as_slice())
        .unwrap();
    if with_held {
        tx.open_table(HELD).unwrap();
    }
    tx.commit().unwrap();
}

#[test]
fn a_version_2_store_without_grants_is_refused() {
    let (tmp, store) = fresh();
    store.close().unwrap();
    {
        let db = redb::Database::open(db_path(&tmp)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(GRANTS).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        EmbeddedStore::open(db_path(&tmp)),
        Err(StoreError::Corrupt { .. })
    ));
}

fn write_version_1(path: &Path, with_grants: bool) {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert("format_version", 1)
        .unwrap();
    tx.open_table(AGENTS).unwrap();
    tx.open_table(KEY_BUNDLES).unwrap();
    tx.open_table(TOKENS).unwrap();
    tx.open_table(REVOCATIONS).unwrap();
    tx.open_table(CONFIG)
        .unwrap()
        .insert("k", &b"\x01v"[..])
        .unwrap();
    if with_grants {
        tx.open_table(GRANTS).unwrap();
    }
    tx.commit().unwrap();
}

fn format_version(path: &Path) -> u64 {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let meta = tx.open_table(META).unwrap();
    meta.get("format_version").unwrap().unwrap().value()
}

#[test]
fn missing_table_is_refused() {
    let (tmp, store) = fresh();
    store.close().unwrap();
    {
        let db = redb::Database::open(db_path(&tmp)).unwrap();
        let tx = db.begin_write().unwrap();
        tx.delete_table(TOKENS).unwrap();
        tx.commit().unwrap();
    }
    assert!(matches!(
        EmbeddedStore::open(db_path(&tmp)),
        Err(StoreError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn undecodable_values_are_corrupt() {
    let (tmp, store) = fresh();
    store.close().unwrap();
    {
        let db = redb::Database::open(db_path(&tmp)).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut agents = tx.open_table(AGENTS).unwrap();
            agents.insert("bad-json", &b"\x01{not json"[..]).unwrap();
            agents.insert("bad-version", &b"\x09{}"[..]).unwrap();
            // A well-formed record stored under another principal.
            let moved = serde_json::to_vec(&sample_agent("someone-else")).unwrap();
            agents
                .insert("moved", [&[1u8][..], &moved].concat().as_slice())
                .unwrap();
            tx.open_table(TOKENS)
                .unwrap()
                .insert(&[9; 32], &b"\x01[]"[..])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let store = EmbeddedStore::open(db_path(&tmp)).unwrap();
    for principal in ["bad-json", "bad-version", "moved"] {
        let err = store.agent(principal).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt { what, .. } if what.contains(principal)),
            "{err:?}"
        );
    }
    assert!(matches!(
        store.agents().await,
        Err(StoreError::Corrupt { .. })
    ));
    // A corrupt token is never redeemed, and purge refuses rather than guessing.
    assert!(matches!(
        store.redeem_token(&[9; 32], 0).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(
        store.purge_tokens(u64::MAX).await,
        Err(StoreError::Corrupt { .. })
    ));
    // The messages do not leak the token hash.
    let msg = store
        .redeem_token(&[9; 32], 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("0909"), "{msg}");
}
