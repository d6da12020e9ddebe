//! What every committed store fixture holds (`tests/fixtures/store-v*.redb`), each written once
//! by the build of its format version, and the checks every version shares.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code,
    unreachable_pub
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use entente_store::{AgentRecord, EmbeddedStore, Store, StoreError, TokenRecord};
use redb::{ReadableDatabase, TableDefinition};

pub const ALICE: &str = "spiffe://entente.test/agent/ops/alice";
pub const BOB: &str = "spiffe://entente.test/agent/research/bob";
/// Opaque to the store: the bytes of an encoded grant book at revision 12 (versions 2 on).
pub const BOOK: &[u8] = br#"{"version":1,"revision":12}"#;

pub fn agents() -> Vec<AgentRecord> {
    vec![
        AgentRecord {
            principal: ALICE.to_owned(),
            segment: Some("ops".to_owned()),
            enrolled_at_ms: 1_767_225_600_000,
            certificate_serials: vec![vec![0x01, 0x23, 0x45], vec![0xfe; 20]],
            key_epoch: 2,
            suspended: false,
            renewed_from: Vec::new(),
        },
        AgentRecord {
            principal: BOB.to_owned(),
            segment: None,
            enrolled_at_ms: 1_767_225_700_000,
            certificate_serials: vec![],
            key_epoch: 0,
            suspended: true,
            renewed_from: Vec::new(),
        },
    ]
}

pub fn token(byte: u8, used: bool) -> TokenRecord {
    TokenRecord {
        hash: [byte; 32],
        agent: ALICE.to_owned(),
        created_ms: 1_767_225_600_000,
        expires_ms: 1_767_229_200_000,
        used,
    }
}

/// The committed fixture of format `version`.
pub fn fixture(version: u64) -> PathBuf {
    Path::new(&format!("tests/fixtures/store-v{version}.redb")).to_path_buf()
}

/// A copy of the fixture of `version` to open (opening writes to the file, and git does not
/// keep modes), after checking that the fixture says it is of that version.
pub fn copy_of(version: u64, tmp: &tempfile::TempDir) -> PathBuf {
    let path = tmp.path().join("store.redb");
    fs::copy(fixture(version), &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    let meta = tx.open_table(META).unwrap();
    assert_eq!(
        meta.get("format_version").unwrap().map(|v| v.value()),
        Some(version)
    );
    path
}

/// Writes what every version holds: agents, key bundles, tokens (one redeemed), a revocation
/// list and a config entry.
pub async fn write_common(store: &EmbeddedStore) {
    for agent in agents() {
        store.put_agent(&agent).await.unwrap();
    }
    store
        .put_key_bundle(ALICE, 1, b"alice-bundle-1")
        .await
        .unwrap();
    store
        .put_key_bundle(ALICE, 2, b"alice-bundle-2")
        .await
        .unwrap();
    store.put_key_bundle(BOB, 0, &[0, 1, 2, 255]).await.unwrap();
    store
        .put_token(&token(0xaa, false), u64::MAX)
        .await
        .unwrap();
    store
        .put_token(&token(0xbb, false), u64::MAX)
        .await
        .unwrap();
    store
        .redeem_token(&[0xbb; 32], 1_767_225_600_001)
        .await
        .unwrap();
    store
        .put_revocations(7, b"revocation-list-7")
        .await
        .unwrap();
    store
        .put_config("hub.listen", b"127.0.0.1:7222")
        .await
        .unwrap();
}

/// Compacts the store at `path` (so the committed file is small: tens of KiB instead of a
/// preallocated MiB) and copies it to the fixture of `version`.
pub fn commit_fixture(path: &Path, version: u64) {
    let mut db = redb::Database::open(path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    fs::create_dir_all(fixture(version).parent().unwrap()).unwrap();
    fs::copy(path, fixture(version)).unwrap();
}

/// Checks what every version holds, as [`write_common`] wrote it; redeems the unused token.
pub async fn check_common(store: &EmbeddedStore) {
    assert_eq!(store.agents().await.unwrap(), agents());
    assert_eq!(store.agent(BOB).await.unwrap(), Some(agents()[1].clone()));
    assert_eq!(
        store.key_bundle(ALICE, 1).await.unwrap(),
        Some(b"alice-bundle-1".to_vec())
    );
    assert_eq!(
        store.latest_key_bundle(ALICE).await.unwrap(),
        Some((2, b"alice-bundle-2".to_vec()))
    );
    assert_eq!(
        store.latest_key_bundle(BOB).await.unwrap(),
        Some((0, vec![0, 1, 2, 255]))
    );
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((7, b"revocation-list-7".to_vec()))
    );
    assert_eq!(
        store.config("hub.listen").await.unwrap(),
        Some(b"127.0.0.1:7222".to_vec())
    );
    assert!(matches!(
        store.redeem_token(&[0xbb; 32], 1_767_225_600_002).await,
        Err(StoreError::TokenUsed)
    ));
    assert_eq!(
        store
            .redeem_token(&[0xaa; 32], 1_767_225_600_002)
            .await
            .unwrap(),
        token(0xaa, true)
    );
}
