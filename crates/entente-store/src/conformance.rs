//! The conformance suite: checks every [`Store`] backend must pass, written against a generic
//! `S: Store` so each backend's tests call the same functions.
//!
//! Each check takes a fresh, empty store and panics on failure, like an assertion. The checks
//! that race calls against each other spawn tokio tasks, so they must run inside a tokio runtime
//! (a multi-threaded one, to really race).
//!
//! ```
//! # let tmp = tempfile::tempdir().unwrap();
//! # let rt = tokio::runtime::Builder::new_multi_thread().build().unwrap();
//! # rt.block_on(async {
//! let mut n = 0;
//! entente_store::conformance::run_all(async || {
//!     n += 1;
//!     entente_store::EmbeddedStore::open(tmp.path().join(format!("{n}.redb"))).unwrap()
//! })
//! .await;
//! # });
//! ```
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test code: a failed check panics like an assertion"
)]

use std::sync::Arc;

use crate::{AgentRecord, Store, StoreError, TokenRecord};

/// How many tasks race in the concurrency checks.
pub const RACERS: usize = 8;

/// Runs every check, each on a store made by `fresh`, which must return a new, empty store on
/// every call.
pub async fn run_all<S: Store>(mut fresh: impl AsyncFnMut() -> S) {
    agents_round_trip(&fresh().await).await;
    agents_are_listed_in_order(&fresh().await).await;
    key_bundles_by_epoch(&fresh().await).await;
    latest_key_bundle_stays_within_principal(&fresh().await).await;
    put_token_refuses_duplicates(&fresh().await).await;
    redeem_token_once(&fresh().await).await;
    redeem_unknown_token(&fresh().await).await;
    expired_token_is_refused_and_unchanged(&fresh().await).await;
    used_token_is_reported_used_after_expiry(&fresh().await).await;
    purge_removes_only_expired_tokens(&fresh().await).await;
    tokens_are_bounded_and_the_expired_make_room(&fresh().await).await;
    revocations_only_move_forward(&fresh().await).await;
    grants_only_move_forward(&fresh().await).await;
    grants_and_revocations_are_apart(&fresh().await).await;
    config_round_trip(&fresh().await).await;
    held_messages_are_put_replaced_listed_and_deleted(&fresh().await).await;
    concurrent_redeem_has_one_winner(Arc::new(fresh().await)).await;
    concurrent_put_token_has_one_winner(Arc::new(fresh().await)).await;
    concurrent_revocations_keep_the_highest(Arc::new(fresh().await)).await;
    concurrent_grants_keep_the_highest(Arc::new(fresh().await)).await;
}

/// An agent record with recognisable fields.
pub fn sample_agent(principal: &str) -> AgentRecord {
    AgentRecord {
        principal: principal.to_owned(),
        segment: Some("ops".to_owned()),
        enrolled_at_ms: 1_700_000_000_000,
        certificate_serials: vec![vec![0x01, 0x02, 0xff], vec![0x7f; 20]],
        key_epoch: 1,
        suspended: false,
        renewed_from: Vec::new(),
    }
}

/// An unused token for `agent` with the given hash byte, valid in `[created_ms, expires_ms)`.
pub fn sample_token(hash_byte: u8, created_ms: u64, expires_ms: u64) -> TokenRecord {
    TokenRecord {
        hash: [hash_byte; 32],
        agent: "spiffe://entente.test/agent/ops/deployer".to_owned(),
        created_ms,
        expires_ms,
        used: false,
    }
}

// === agents ===

/// Agents are stored, read back equal, replaced by a second put, and absent when never put.
pub async fn agents_round_trip<S: Store>(store: &S) {
    let principal = "spiffe://entente.test/agent/ops/a";
    assert_eq!(store.agent(principal).await.unwrap(), None);
    assert!(store.agents().await.unwrap().is_empty());

    let mut agent = sample_agent(principal);
    store.put_agent(&agent).await.unwrap();
    assert_eq!(store.agent(principal).await.unwrap(), Some(agent.clone()));

    agent.segment = None;
    agent.key_epoch = 2;
    agent.suspended = true;
    agent.certificate_serials.push(Vec::new());
    store.put_agent(&agent).await.unwrap();
    assert_eq!(store.agent(principal).await.unwrap(), Some(agent.clone()));
    assert_eq!(store.agents().await.unwrap(), vec![agent]);

    // Lookups are exact: no prefix or case folding.
    assert_eq!(
        store
            .agent("spiffe://entente.test/agent/ops")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .agent("SPIFFE://entente.test/agent/ops/a")
            .await
            .unwrap(),
        None
    );
}

/// `agents()` lists every agent once, sorted by principal.
pub async fn agents_are_listed_in_order<S: Store>(store: &S) {
    let names = [
        "spiffe://t/agent/b/x",
        "spiffe://t/agent/a/y",
        "spiffe://t/agent/a/x",
    ];
    for name in names {
        store.put_agent(&sample_agent(name)).await.unwrap();
    }
    // A second put of the same principal does not add a row.
    store.put_agent(&sample_agent(names[0])).await.unwrap();
    let listed: Vec<String> = store
        .agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.principal)
        .collect();
    assert_eq!(
        listed,
        [
            "spiffe://t/agent/a/x",
            "spiffe://t/agent/a/y",
            "spiffe://t/agent/b/x"
        ]
    );
}

// === key bundles ===

/// Bundles are kept per epoch; the latest is the highest epoch, whatever the insertion order.
pub async fn key_bundles_by_epoch<S: Store>(store: &S) {
    let p = "spiffe://entente.test/agent/ops/a";
    assert_eq!(store.latest_key_bundle(p).await.unwrap(), None);
    assert_eq!(store.key_bundle(p, 1).await.unwrap(), None);

    store.put_key_bundle(p, 1, b"bundle-1").await.unwrap();
    store.put_key_bundle(p, 3, b"bundle-3").await.unwrap();
    store.put_key_bundle(p, 2, b"bundle-2").await.unwrap();
    assert_eq!(
        store.key_bundle(p, 2).await.unwrap(),
        Some(b"bundle-2".to_vec())
    );
    assert_eq!(store.key_bundle(p, 4).await.unwrap(), None);
    assert_eq!(
        store.latest_key_bundle(p).await.unwrap(),
        Some((3, b"bundle-3".to_vec()))
    );

    // A put for an existing epoch replaces it.
    store.put_key_bundle(p, 3, b"bundle-3b").await.unwrap();
    assert_eq!(
        store.key_bundle(p, 3).await.unwrap(),
        Some(b"bundle-3b".to_vec())
    );

    // The extremes of the epoch range, and empty and binary bundles.
    store.put_key_bundle(p, 0, b"").await.unwrap();
    assert_eq!(store.key_bundle(p, 0).await.unwrap(), Some(Vec::new()));
    let binary: Vec<u8> = (0..=255).collect();
    store.put_key_bundle(p, u64::MAX, &binary).await.unwrap();
    assert_eq!(
        store.latest_key_bundle(p).await.unwrap(),
        Some((u64::MAX, binary))
    );
}

/// The latest bundle of one principal never comes from another, even one whose name extends it.
pub async fn latest_key_bundle_stays_within_principal<S: Store>(store: &S) {
    let a = "spiffe://entente.test/agent/ops/a";
    let ab = "spiffe://entente.test/agent/ops/ab";
    let b = "spiffe://entente.test/agent/ops/b";
    store.put_key_bundle(ab, 9, b"ab-9").await.unwrap();
    store.put_key_bundle(b, 7, b"b-7").await.unwrap();
    assert_eq!(store.latest_key_bundle(a).await.unwrap(), None);
    store.put_key_bundle(a, 2, b"a-2").await.unwrap();
    assert_eq!(
        store.latest_key_bundle(a).await.unwrap(),
        Some((2, b"a-2".to_vec()))
    );
    assert_eq!(
        store.latest_key_bundle(ab).await.unwrap(),
        Some((9, b"ab-9".to_vec()))
    );
    assert_eq!(store.key_bundle(a, 9).await.unwrap(), None);
    assert_eq!(store.latest_key_bundle("").await.unwrap(), None);
}

// === join tokens ===

/// A second token with the same hash is refused and the first is unchanged.
pub async fn put_token_refuses_duplicates<S: Store>(store: &S) {
    let token = sample_token(1, 1_000, 2_000);
    store.put_token(&token, u64::MAX).await.unwrap();

    let mut other = sample_token(1, 5_000, 9_000);
    other.agent = "spiffe://entente.test/agent/ops/intruder".to_owned();
    assert!(matches!(
        store.put_token(&other, u64::MAX).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let redeemed = store.redeem_token(&token.hash, 1_500).await.unwrap();
    assert_eq!(
        redeemed,
        TokenRecord {
            used: true,
            ..token.clone()
        }
    );

    // A used token still blocks its hash.
    assert!(matches!(
        store.put_token(&token, u64::MAX).await,
        Err(StoreError::AlreadyExists { .. })
    ));
}

/// A token redeems once, returning the record marked used; the second attempt is refused.
pub async fn redeem_token_once<S: Store>(store: &S) {
    let token = sample_token(2, 1_000, 2_000);
    store.put_token(&token, u64::MAX).await.unwrap();
    // A neighbour that must not be touched.
    store
        .put_token(&sample_token(3, 1_000, 2_000), u64::MAX)
        .await
        .unwrap();

    let redeemed = store.redeem_token(&token.hash, 1_000).await.unwrap();
    assert!(redeemed.used);
    assert_eq!(
        redeemed,
        TokenRecord {
            used: true,
            ..token.clone()
        }
    );
    assert!(matches!(
        store.redeem_token(&token.hash, 1_001).await,
        Err(StoreError::TokenUsed)
    ));
    assert!(store.redeem_token(&[3; 32], 1_999).await.unwrap().used);
}

/// An unknown hash is [`StoreError::TokenUnknown`] and creates nothing.
pub async fn redeem_unknown_token<S: Store>(store: &S) {
    assert!(matches!(
        store.redeem_token(&[4; 32], 0).await,
        Err(StoreError::TokenUnknown)
    ));
    store
        .put_token(&sample_token(5, 0, 10), u64::MAX)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem_token(&[4; 32], 0).await,
        Err(StoreError::TokenUnknown)
    ));
    assert_eq!(store.purge_tokens(u64::MAX).await.unwrap(), 1);
}

/// At and after `expires_ms` a token is [`StoreError::TokenExpired`], and the refusal does not
/// mark it used.
pub async fn expired_token_is_refused_and_unchanged<S: Store>(store: &S) {
    let token = sample_token(6, 1_000, 2_000);
    store.put_token(&token, u64::MAX).await.unwrap();
    assert!(matches!(
        store.redeem_token(&token.hash, 2_000).await,
        Err(StoreError::TokenExpired)
    ));
    assert!(matches!(
        store.redeem_token(&token.hash, u64::MAX).await,
        Err(StoreError::TokenExpired)
    ));
    // Still unused: a redemption with an earlier clock (the one before expiry) succeeds.
    assert!(store.redeem_token(&token.hash, 1_999).await.unwrap().used);
}

/// A used token reports [`StoreError::TokenUsed`] even once it has also expired, and stays used.
pub async fn used_token_is_reported_used_after_expiry<S: Store>(store: &S) {
    let token = sample_token(7, 1_000, 2_000);
    store.put_token(&token, u64::MAX).await.unwrap();
    store.redeem_token(&token.hash, 1_500).await.unwrap();
    assert!(matches!(
        store.redeem_token(&token.hash, 5_000).await,
        Err(StoreError::TokenUsed)
    ));
    assert!(matches!(
        store.redeem_token(&token.hash, 1_500).await,
        Err(StoreError::TokenUsed)
    ));
}

/// Purging deletes exactly the tokens expired at `now_ms`, used or not, and counts them.
pub async fn purge_removes_only_expired_tokens<S: Store>(store: &S) {
    assert_eq!(store.purge_tokens(u64::MAX).await.unwrap(), 0);
    store
        .put_token(&sample_token(10, 0, 100), u64::MAX)
        .await
        .unwrap(); // expired, unused
    store
        .put_token(&sample_token(11, 0, 100), u64::MAX)
        .await
        .unwrap(); // expired, used
    store.redeem_token(&[11; 32], 50).await.unwrap();
    store
        .put_token(&sample_token(12, 0, 200), u64::MAX)
        .await
        .unwrap(); // alive, unused
    store
        .put_token(&sample_token(13, 0, 200), u64::MAX)
        .await
        .unwrap(); // alive, used
    store.redeem_token(&[13; 32], 50).await.unwrap();
    store
        .put_token(&sample_token(14, 0, 101), u64::MAX)
        .await
        .unwrap(); // expires just after now

    assert_eq!(store.purge_tokens(100).await.unwrap(), 2);
    assert_eq!(store.purge_tokens(100).await.unwrap(), 0);
    assert!(matches!(
        store.redeem_token(&[10; 32], 50).await,
        Err(StoreError::TokenUnknown)
    ));
    assert!(matches!(
        store.redeem_token(&[11; 32], 50).await,
        Err(StoreError::TokenUnknown)
    ));
    assert!(matches!(
        store.redeem_token(&[13; 32], 100).await,
        Err(StoreError::TokenUsed)
    ));
    assert!(store.redeem_token(&[12; 32], 100).await.unwrap().used);
    assert!(store.redeem_token(&[14; 32], 100).await.unwrap().used);
    // A purged hash can be used for a new token.
    store
        .put_token(&sample_token(10, 300, 400), u64::MAX)
        .await
        .unwrap();
    assert_eq!(store.purge_tokens(u64::MAX).await.unwrap(), 4);
}

/// At most `max` tokens are stored, used or not: past it the expired (at the new token's
/// creation) are deleted to make room, and a token that finds none is refused, changing
/// nothing.
pub async fn tokens_are_bounded_and_the_expired_make_room<S: Store>(store: &S) {
    store.put_token(&sample_token(1, 0, 100), 3).await.unwrap();
    store.put_token(&sample_token(2, 0, 200), 3).await.unwrap();
    store.put_token(&sample_token(3, 0, 200), 3).await.unwrap();
    store.redeem_token(&[3; 32], 50).await.unwrap();
    // Full, none expired at 99: refused, every token kept.
    assert!(matches!(
        store.put_token(&sample_token(4, 99, 300), 3).await,
        Err(StoreError::Full { max: 3, .. })
    ));
    assert!(matches!(
        store.redeem_token(&[4; 32], 99).await,
        Err(StoreError::TokenUnknown)
    ));
    // At 100 the first has expired: it makes room.
    store
        .put_token(&sample_token(4, 100, 300), 3)
        .await
        .unwrap();
    assert!(matches!(
        store.redeem_token(&[1; 32], 50).await,
        Err(StoreError::TokenUnknown)
    ));
    // The used one counts until it expires.
    assert!(matches!(
        store.put_token(&sample_token(5, 150, 300), 3).await,
        Err(StoreError::Full { .. })
    ));
    assert!(matches!(
        store.redeem_token(&[3; 32], 150).await,
        Err(StoreError::TokenUsed)
    ));
    assert!(store.redeem_token(&[2; 32], 150).await.unwrap().used);
    assert!(store.redeem_token(&[4; 32], 150).await.unwrap().used);
    // Under the bound nothing is deleted, expired or not.
    store
        .put_token(&sample_token(6, 1_000, 2_000), 10)
        .await
        .unwrap();
    assert_eq!(store.purge_tokens(1_000).await.unwrap(), 3);
}

// === revocations ===

/// The revocation list is replaced only by a strictly greater version.
pub async fn revocations_only_move_forward<S: Store>(store: &S) {
    assert_eq!(store.revocations().await.unwrap(), None);
    // Any version is accepted first, even 0.
    store.put_revocations(0, b"crl-0").await.unwrap();
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((0, b"crl-0".to_vec()))
    );

    store.put_revocations(5, b"crl-5").await.unwrap();
    for offered in [5, 4, 0] {
        match store.put_revocations(offered, b"stale").await {
            Err(StoreError::StaleVersion { stored, offered: o }) => {
                assert_eq!((stored, o), (5, offered));
            }
            other => panic!("version {offered} after 5: {other:?}"),
        }
    }
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((5, b"crl-5".to_vec()))
    );

    store.put_revocations(6, b"").await.unwrap();
    assert_eq!(store.revocations().await.unwrap(), Some((6, Vec::new())));
    store.put_revocations(u64::MAX, b"last").await.unwrap();
    assert!(matches!(
        store.put_revocations(u64::MAX, b"again").await,
        Err(StoreError::StaleVersion {
            stored: u64::MAX,
            offered: u64::MAX
        })
    ));
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((u64::MAX, b"last".to_vec()))
    );
}

// === grants ===

/// The grant book is replaced only by a strictly greater version, and kept byte for byte.
pub async fn grants_only_move_forward<S: Store>(store: &S) {
    assert_eq!(store.grants().await.unwrap(), None);
    // Any version is accepted first, even 0 (an empty book's revision).
    store.put_grants(0, b"{}").await.unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((0, b"{}".to_vec())));

    let book: Vec<u8> = (0..=255).cycle().take(100_000).collect();
    store.put_grants(3, &book).await.unwrap();
    for offered in [3, 2, 0] {
        match store.put_grants(offered, b"stale").await {
            Err(StoreError::StaleVersion { stored, offered: o }) => {
                assert_eq!((stored, o), (3, offered));
            }
            other => panic!("version {offered} after 3: {other:?}"),
        }
    }
    assert_eq!(store.grants().await.unwrap(), Some((3, book)));

    // Versions may skip (a change that failed to persist), but never go back.
    store.put_grants(10, b"").await.unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((10, Vec::new())));
    store.put_grants(u64::MAX, b"last").await.unwrap();
    assert!(matches!(
        store.put_grants(u64::MAX, b"again").await,
        Err(StoreError::StaleVersion {
            stored: u64::MAX,
            offered: u64::MAX
        })
    ));
    assert_eq!(
        store.grants().await.unwrap(),
        Some((u64::MAX, b"last".to_vec()))
    );
}

/// The grant book and the revocation list are separate values with separate versions.
pub async fn grants_and_revocations_are_apart<S: Store>(store: &S) {
    store.put_revocations(5, b"crl").await.unwrap();
    assert_eq!(store.grants().await.unwrap(), None);
    store.put_grants(1, b"book").await.unwrap();
    assert_eq!(
        store.revocations().await.unwrap(),
        Some((5, b"crl".to_vec()))
    );
    assert_eq!(store.grants().await.unwrap(), Some((1, b"book".to_vec())));
    store.put_revocations(6, b"crl-6").await.unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((1, b"book".to_vec())));
    // A config entry named like the value does not touch it either.
    store.put_config("grants", b"other").await.unwrap();
    assert_eq!(store.grants().await.unwrap(), Some((1, b"book".to_vec())));
}

// === config ===

/// Config entries are stored by exact key and replaced by a second put.
pub async fn config_round_trip<S: Store>(store: &S) {
    assert_eq!(store.config("hub.listen").await.unwrap(), None);
    store
        .put_config("hub.listen", b"127.0.0.1:7222")
        .await
        .unwrap();
    store.put_config("hub.listen.tls", b"on").await.unwrap();
    store.put_config("", b"empty key").await.unwrap();
    assert_eq!(
        store.config("hub.listen").await.unwrap(),
        Some(b"127.0.0.1:7222".to_vec())
    );
    store.put_config("hub.listen", b"").await.unwrap();
    assert_eq!(store.config("hub.listen").await.unwrap(), Some(Vec::new()));
    assert_eq!(
        store.config("hub.listen.tls").await.unwrap(),
        Some(b"on".to_vec())
    );
    assert_eq!(store.config("").await.unwrap(), Some(b"empty key".to_vec()));
    assert_eq!(store.config("hub").await.unwrap(), None);
}

// === held messages ===

/// Held messages are stored by ID, replaced by a second put, listed in ID order and deleted
/// once; they are apart from every other table.
pub async fn held_messages_are_put_replaced_listed_and_deleted<S: Store>(store: &S) {
    assert!(store.held().await.unwrap().is_empty());
    store.put_held("b-2", b"second").await.unwrap();
    store.put_held("a-1", b"first").await.unwrap();
    store
        .put_held("b-2", b"second, approved once")
        .await
        .unwrap();
    assert_eq!(
        store.held().await.unwrap(),
        [
            ("a-1".to_owned(), b"first".to_vec()),
            ("b-2".to_owned(), b"second, approved once".to_vec()),
        ]
    );
    assert_eq!(store.config("a-1").await.unwrap(), None);
    assert!(store.delete_held("a-1").await.unwrap());
    assert!(!store.delete_held("a-1").await.unwrap());
    assert!(!store.delete_held("never").await.unwrap());
    assert_eq!(
        store.held().await.unwrap(),
        [("b-2".to_owned(), b"second, approved once".to_vec())]
    );
}

// === concurrency ===

/// [`RACERS`] concurrent redemptions of one token: exactly one succeeds, the rest see
/// [`StoreError::TokenUsed`].
pub async fn concurrent_redeem_has_one_winner<S: Store>(store: Arc<S>) {
    let token = sample_token(20, 0, 1_000);
    store.put_token(&token, u64::MAX).await.unwrap();
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.redeem_token(&[20; 32], 10).await })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(record) => {
                assert_eq!(
                    record,
                    TokenRecord {
                        used: true,
                        ..token.clone()
                    }
                );
                winners += 1;
            }
            Err(StoreError::TokenUsed) => {}
            Err(other) => panic!("unexpected redemption error: {other:?}"),
        }
    }
    assert_eq!(winners, 1);
}

/// [`RACERS`] concurrent `put_token` calls with one hash: exactly one stores its record.
pub async fn concurrent_put_token_has_one_winner<S: Store>(store: Arc<S>) {
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let store = Arc::clone(&store);
            let mut token = sample_token(21, 0, 1_000);
            token.agent = format!("spiffe://entente.test/agent/ops/racer-{i}");
            tokio::spawn(async move { store.put_token(&token, u64::MAX).await.map(|()| token) })
        })
        .collect();
    let mut winner = None;
    for task in tasks {
        match task.await.unwrap() {
            Ok(token) => assert!(winner.replace(token).is_none(), "two puts succeeded"),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(other) => panic!("unexpected put error: {other:?}"),
        }
    }
    let winner = winner.expect("one put succeeds");
    let stored = store.redeem_token(&[21; 32], 1).await.unwrap();
    assert_eq!(stored.agent, winner.agent);
}

/// Versions 1..=[`RACERS`] offered concurrently: the highest always wins, and every refusal names
/// a stored version at least as high as the one it refused.
pub async fn concurrent_revocations_keep_the_highest<S: Store>(store: Arc<S>) {
    concurrent_versions_keep_the_highest(store, Versioned::Revocations).await;
}

/// Versions 1..=[`RACERS`] of the grant book offered concurrently: the highest always wins.
pub async fn concurrent_grants_keep_the_highest<S: Store>(store: Arc<S>) {
    concurrent_versions_keep_the_highest(store, Versioned::Grants).await;
}

/// The versioned values of the store: the revocation list and the grant book.
#[derive(Debug, Clone, Copy)]
enum Versioned {
    Revocations,
    Grants,
}

impl Versioned {
    async fn put<S: Store>(self, store: &S, version: u64, bytes: &[u8]) -> Result<(), StoreError> {
        match self {
            Versioned::Revocations => store.put_revocations(version, bytes).await,
            Versioned::Grants => store.put_grants(version, bytes).await,
        }
    }

    async fn get<S: Store>(self, store: &S) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self {
            Versioned::Revocations => store.revocations().await,
            Versioned::Grants => store.grants().await,
        }
    }
}

async fn concurrent_versions_keep_the_highest<S: Store>(store: Arc<S>, which: Versioned) {
    let tasks: Vec<_> = (1..=RACERS as u64)
        .map(|version| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let bytes = version.to_be_bytes();
                (version, which.put(&*store, version, &bytes).await)
            })
        })
        .collect();
    for task in tasks {
        match task.await.unwrap() {
            (_, Ok(())) => {}
            (version, Err(StoreError::StaleVersion { stored, offered })) => {
                assert_eq!(offered, version);
                assert!(stored >= offered);
            }
            (_, Err(other)) => panic!("unexpected {which:?} error: {other:?}"),
        }
    }
    let top = RACERS as u64;
    assert_eq!(
        which.get(&*store).await.unwrap(),
        Some((top, top.to_be_bytes().to_vec()))
    );
}
