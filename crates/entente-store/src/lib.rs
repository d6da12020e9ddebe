//! The hub's registry: what it must remember across restarts.
//!
//! A [`Store`] holds six kinds of state:
//! - agents ([`AgentRecord`]), keyed by principal;
//! - key bundles, opaque encoded protobuf bytes keyed by (principal, epoch);
//! - join tokens ([`TokenRecord`]), keyed by the SHA-256 hash of the token, redeemed atomically
//!   at most once;
//! - the revocation list, one opaque blob with a version that only goes up;
//! - the grant book (time-bound grants and pending just-in-time requests), one opaque blob with
//!   a version that only goes up;
//! - config entries, opaque bytes by name.
//!
//! Backends:
//! - [`EmbeddedStore`]: one [redb](https://www.redb.org) file in the hub's data directory, every
//!   write a durable (fsynced) ACID transaction. Chosen over fjall by measurement; see
//!   `docs/STORE.md`.
//! - NATS JetStream KV (cluster), later, behind the same trait.
//!
//! Every backend must pass the same suite, the `conformance` module (feature `conformance`).
//!
//! ```
//! use entente_store::{EmbeddedStore, Store, StoreError, TokenRecord};
//!
//! # fn main() -> Result<(), StoreError> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # rt.block_on(async {
//! let store = EmbeddedStore::open(tmp.path().join("registry.redb"))?;
//!
//! let token = TokenRecord {
//!     hash: [7; 32],
//!     agent: "spiffe://example.org/agent/ops/deployer".to_owned(),
//!     created_ms: 1_000,
//!     expires_ms: 61_000,
//!     used: false,
//! };
//! store.put_token(&token, 1_000).await?;
//!
//! let redeemed = store.redeem_token(&[7; 32], 2_000).await?;
//! assert!(redeemed.used);
//! assert!(matches!(
//!     store.redeem_token(&[7; 32], 3_000).await,
//!     Err(StoreError::TokenUsed)
//! ));
//! # Ok(())
//! # })
//! # }
//! ```

#![forbid(unsafe_code)]

mod embedded;
mod error;
mod record;
pub mod stream;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::future::Future;

pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use record::{AgentRecord, TokenRecord};

/// Durable storage for the hub's registry.
///
/// Methods are asynchronous so that a networked backend (NATS JetStream) can implement the trait;
/// the futures are `Send` so that callers can hold them across `tokio::spawn`. Each method is one
/// atomic operation: when its future resolves `Ok`, the change is durable (on disk, or acknowledged
/// by the cluster), and a failed call changes nothing.
///
/// Writes named `put_*` insert or replace, except [`put_token`](Store::put_token),
/// [`put_revocations`](Store::put_revocations) and [`put_grants`](Store::put_grants), which
/// refuse as documented.
pub trait Store: Send + Sync + 'static {
    // === agents ===

    /// Inserts or replaces the agent record keyed by `record.principal`.
    fn put_agent(
        &self,
        record: &AgentRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The agent record for `principal`, if any.
    fn agent(
        &self,
        principal: &str,
    ) -> impl Future<Output = Result<Option<AgentRecord>, StoreError>> + Send;

    /// Every agent record, sorted by principal (bytewise).
    fn agents(&self) -> impl Future<Output = Result<Vec<AgentRecord>, StoreError>> + Send;

    // === key bundles ===

    /// Inserts or replaces the encoded key bundle of `principal` for `epoch`.
    fn put_key_bundle(
        &self,
        principal: &str,
        epoch: u64,
        bundle: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The encoded key bundle of `principal` for `epoch`, if any.
    fn key_bundle(
        &self,
        principal: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// The key bundle of `principal` with the highest epoch, with that epoch.
    fn latest_key_bundle(
        &self,
        principal: &str,
    ) -> impl Future<Output = Result<Option<(u64, Vec<u8>)>, StoreError>> + Send;

    // === join tokens ===

    /// Stores a new join token; fails with [`StoreError::AlreadyExists`] (and changes nothing)
    /// if a token with the same hash is stored, used or not.
    ///
    /// At most `max` tokens are stored, used or not: with `max` or more stored, those expired
    /// at the new token's creation (`expires_ms <= created_ms`) are deleted first, in the same
    /// atomic step, and if `max` or more are left the new one is refused with
    /// [`StoreError::Full`] (and nothing changes, the expired ones staying too).
    fn put_token(
        &self,
        token: &TokenRecord,
        max: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Redeems the token whose hash is `hash`, atomically: of any number of concurrent calls for
    /// one token, at most one succeeds.
    ///
    /// Fails with [`StoreError::TokenUnknown`] if no such token is stored,
    /// [`StoreError::TokenUsed`] if it was redeemed before, and [`StoreError::TokenExpired`] if
    /// `now_ms >= expires_ms`; a failed redemption leaves the token as it was. Otherwise the token
    /// is marked used and returned as stored after the change (`used == true`).
    fn redeem_token(
        &self,
        hash: &[u8; 32],
        now_ms: u64,
    ) -> impl Future<Output = Result<TokenRecord, StoreError>> + Send;

    /// Deletes every token that has expired at `now_ms` (`expires_ms <= now_ms`), used or not,
    /// and returns how many it deleted. Used tokens that have not expired are kept, so a replay
    /// still reports [`StoreError::TokenUsed`].
    fn purge_tokens(&self, now_ms: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    // === revocations ===

    /// Replaces the encoded revocation list with `list` at `version`.
    ///
    /// Refuses with [`StoreError::StaleVersion`] (and changes nothing) unless `version` is greater
    /// than the stored version; when none is stored, any version is accepted.
    fn put_revocations(
        &self,
        version: u64,
        list: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The stored revocation list and its version, if any.
    fn revocations(
        &self,
    ) -> impl Future<Output = Result<Option<(u64, Vec<u8>)>, StoreError>> + Send;

    // === grants ===

    /// Replaces the encoded grant book with `book` at `version` (the book's revision).
    ///
    /// Refuses with [`StoreError::StaleVersion`] (and changes nothing) unless `version` is greater
    /// than the stored version; when none is stored, any version is accepted. The whole book is
    /// one value, so a crash leaves either the old book or the new one.
    fn put_grants(
        &self,
        version: u64,
        book: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The stored grant book and its version, if any.
    fn grants(&self) -> impl Future<Output = Result<Option<(u64, Vec<u8>)>, StoreError>> + Send;

    // === held messages ===

    /// Stores held message `id` (UTF-8, at most 128 bytes): a new one, or a new state of one,
    /// replacing what was stored under `id`.
    fn put_held(
        &self,
        id: &str,
        record: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes held message `id`; returns whether it was stored.
    fn delete_held(&self, id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every held message stored, `(id, record)`, by ID.
    fn held(&self) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>, StoreError>> + Send;

    // === config ===

    /// Inserts or replaces the config entry `key`.
    fn put_config(
        &self,
        key: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The config entry `key`, if any.
    fn config(&self, key: &str)
    -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
}
