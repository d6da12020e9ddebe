//! Pins format version 2: a store written once by a version 2 build and committed as
//! `tests/fixtures/store-v2.redb` must keep opening with the same contents, migrated to the
//! current version (version 3 added the held messages). The fixture is frozen: this build
//! writes version 3 only (`format_v3.rs` pins that one), so it is never regenerated.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{BOOK, check_common, copy_of};
use entente_store::{EmbeddedStore, Store, StoreError};

#[tokio::test]
async fn committed_store_opens_with_its_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let path = copy_of(2, &tmp);
    let store = EmbeddedStore::open(&path).unwrap();
    check_common(&store).await;
    assert_eq!(store.grants().await.unwrap(), Some((12, BOOK.to_vec())));
    // Migrated: no held message yet, and one can be stored.
    assert!(store.held().await.unwrap().is_empty());
    store.put_held("m-1", b"held").await.unwrap();
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
    assert_eq!(store.held().await.unwrap().len(), 1);
}
