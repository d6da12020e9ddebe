//! Pins format version 1: a store written once by a version 1 build and committed as
//! `tests/fixtures/store-v1.redb` must keep opening with the same contents, migrated to the
//! current version (version 2 added the grant book, version 3 the held messages). The fixture
//! is frozen: this build writes version 3 only (`format_v3.rs` pins that one), so it is never
//! regenerated.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{check_common, copy_of};
use entente_store::{EmbeddedStore, Store};

#[tokio::test]
async fn committed_store_opens_with_its_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let path = copy_of(1, &tmp);
    let store = EmbeddedStore::open(&path).unwrap();
    check_common(&store).await;
    // Migrated: no grant book and no held message yet, and both can be stored.
    assert_eq!(store.grants().await.unwrap(), None);
    assert!(store.held().await.unwrap().is_empty());
    store.put_grants(1, b"book").await.unwrap();
    store.put_held("m-1", b"held").await.unwrap();
    // And the old file takes new writes.
    store
        .put_config("hub.listen", b"0.0.0.0:7222")
        .await
        .unwrap();
    store.close().unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    assert_eq!(
        store.config("hub.listen").await.unwrap(),
        Some(b"0.0.0.0:7222".to_vec())
    );
    assert_eq!(store.grants().await.unwrap(), Some((1, b"book".to_vec())));
    assert_eq!(store.held().await.unwrap().len(), 1);
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((7, b"revocation-list-7".to_vec()))
    );
}
