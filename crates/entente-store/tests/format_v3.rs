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

mod common;

use common::{BOOK, check_common, commit_fixture, copy_of, write_common};
use entente_store::{EmbeddedStore, Store, StoreError};

/// Opaque to the store: a held message's ID and record.
const HELD_ID: &str = "01a233f1-9db2-7561-92a0-d78d72426036";
const HELD: &[u8] = b"held-record";

/// Writes the fixture. Run only for a deliberate format change (see the module docs).
#[tokio::test]
#[ignore = "regenerates the store fixture"]
async fn regenerate() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.redb");
    let store = EmbeddedStore::open(&path).unwrap();
    write_common(&store).await;
    store.put_grants(12, BOOK).await.unwrap();
    store.put_held(HELD_ID, HELD).await.unwrap();
    store.close().unwrap();
    commit_fixture(&path, 3);
}

#[tokio::test]
async fn committed_store_opens_with_its_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let path = copy_of(3, &tmp);
    let store = EmbeddedStore::open(&path).unwrap();
    check_common(&store).await;
    assert_eq!(store.grants().await.unwrap(), Some((12, BOOK.to_vec())));
    assert_eq!(
        store.held().await.unwrap(),
        [(HELD_ID.to_owned(), HELD.to_vec())]
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
    assert!(store.delete_held(HELD_ID).await.unwrap());
    store.close().unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((13, b"next".to_vec())));
    assert!(store.held().await.unwrap().is_empty());
}
