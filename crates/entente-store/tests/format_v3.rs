//! Pins the on-disk format, version 3: a store written once and committed as
//! `tests/fixtures/store-v3.redb` must keep opening with the same contents. A failure here means
//! the format changed (a redb major version, a table type, the value encoding): bump
//! `EmbeddedStore::FORMAT_VERSION` and add a migration rather than regenerating. Regenerate only
//! for a deliberate, versioned change with
//! `cargo test -p entente-store --test format_v3 -- --ignored regenerate`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use entente_store::{AgentRecord, EmbeddedStore, Store, StoreError, TokenRecord};
use redb::{ReadableDatabase, TableDefinition};

fn fixture() -> PathBuf {
    Path::new("tests/fixtures/store-v3.redb").to_path_buf()
}

const ALICE: &str = "spiffe://entente.test/agent/ops/alice";
const BOB: &str = "spiffe://entente.test/agent/research/bob";
/// Opaque to the store: the bytes of an encoded grant book at revision 12.
const BOOK: &[u8] = br#"{"version":1,"revision":12}"#;
/// Opaque to the store: a held message's ID and record.
const HELD_ID: &str = "01a233f1-9db2-7561-92a0-d78d72426036";
const HELD: &[u8] = b"held-record";

fn agents() -> Vec<AgentRecord> {
    vec![
        AgentRecord {
            principal: ALICE.to_owned(),
            segment: Some("ops".to_owned()),
            enrolled_at_ms: 1_767_225_600_000,
            certificate_serials: vec![vec![0x01, 0x23, 0x45], vec![0xfe; 20]],
            key_epoch: 2,
            suspended: false,
        },
        AgentRecord {
            principal: BOB.to_owned(),
            segment: None,
            enrolled_at_ms: 1_767_225_700_000,
            certificate_serials: vec![],
            key_epoch: 0,
            suspended: true,
        },
    ]
}

fn token(byte: u8, used: bool) -> TokenRecord {
    TokenRecord {
        hash: [byte; 32],
        agent: ALICE.to_owned(),
        created_ms: 1_767_225_600_000,
        expires_ms: 1_767_229_200_000,
        used,
    }
}

/// Writes the fixture. Run only for a deliberate format change (see the module docs).
#[tokio::test]
#[ignore = "regenerates the store fixture"]
async fn regenerate() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.redb");
    let store = EmbeddedStore::open(&path).unwrap();
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
    store.put_token(&token(0xaa, false)).await.unwrap();
    store.put_token(&token(0xbb, false)).await.unwrap();
    store
        .redeem_token(&[0xbb; 32], 1_767_225_600_001)
        .await
        .unwrap();
    store
        .put_revocations(7, b"revocation-list-7")
        .await
        .unwrap();
    store.put_grants(12, BOOK).await.unwrap();
    store
        .put_config("hub.listen", b"127.0.0.1:7222")
        .await
        .unwrap();
    store.put_held(HELD_ID, HELD).await.unwrap();
    store.close().unwrap();

    // Compact so the committed file is small (tens of KiB instead of a preallocated MiB).
    let mut db = redb::Database::open(&path).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    fs::create_dir_all(fixture().parent().unwrap()).unwrap();
    fs::copy(&path, fixture()).unwrap();
}

#[tokio::test]
async fn committed_store_opens_with_its_contents() {
    // Work on a copy: opening writes to the file, and git does not keep modes.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.redb");
    fs::copy(fixture(), &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();

    // Written as version 3, by the table itself.
    {
        const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        assert_eq!(
            meta.get("format_version").unwrap().map(|v| v.value()),
            Some(3)
        );
    }

    let store = EmbeddedStore::open(&path).unwrap();
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
    assert_eq!(store.grants().await.unwrap(), Some((12, BOOK.to_vec())));
    assert_eq!(
        store.held().await.unwrap(),
        [(HELD_ID.to_owned(), HELD.to_vec())]
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
    // Versions still only move forward, and the file takes new writes.
    assert!(matches!(
        store.put_grants(12, b"stale").await,
        Err(StoreError::StaleVersion {
            stored: 12,
            offered: 12
        })
    ));
    store.put_grants(13, b"next").await.unwrap();
    store.close().unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((13, b"next".to_vec())));
}
