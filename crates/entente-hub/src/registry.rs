//! The hub's view of its [`Store`]: the trait with its futures boxed, so that the hub's shared
//! state, its handle and its connection tasks are not generic over the store type.
//!
//! [`Hub::start`](crate::Hub::start) is generic over `S: Store`; it wraps the store once in a
//! [`Registry`] (one boxed future per store call, which is nothing next to a durable write).
//! Only the calls the hub makes are here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use entente_store::{AgentRecord, Store, StoreError, TokenRecord};

/// A boxed, `Send` future borrowing for `'a`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A stored blob with its version or epoch.
pub(crate) type Versioned = Option<(u64, Vec<u8>)>;

/// Records by key, as `Store::held` lists them.
type Records = Vec<(String, Vec<u8>)>;

/// The store, type-erased.
#[derive(Clone)]
pub(crate) struct Registry(Arc<dyn DynStore>);

/// [`Store`] with boxed futures (object safe).
trait DynStore: Send + Sync + 'static {
    fn put_agent<'a>(&'a self, record: &'a AgentRecord) -> BoxFuture<'a, Result<(), StoreError>>;
    fn agent<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentRecord>, StoreError>>;
    fn agents(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>>;
    fn put_key_bundle<'a>(
        &'a self,
        principal: &'a str,
        epoch: u64,
        bundle: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn latest_key_bundle<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>>;
    fn put_token<'a>(
        &'a self,
        token: &'a TokenRecord,
        max: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn redeem_token<'a>(
        &'a self,
        hash: &'a [u8; 32],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<TokenRecord, StoreError>>;
    fn purge_tokens(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>>;
    fn put_revocations<'a>(
        &'a self,
        version: u64,
        list: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn revocations(&self) -> BoxFuture<'_, Result<Versioned, StoreError>>;
    fn put_grants<'a>(
        &'a self,
        version: u64,
        book: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn grants(&self) -> BoxFuture<'_, Result<Versioned, StoreError>>;
    fn put_config<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn config<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    fn put_held<'a>(
        &'a self,
        id: &'a str,
        record: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn delete_held<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn held(&self) -> BoxFuture<'_, Result<Records, StoreError>>;
}

// === impl Registry ===

impl Registry {
    pub(crate) fn new<S: Store>(store: Arc<S>) -> Self {
        Self(Arc::new(Erased(store)))
    }

    pub(crate) fn put_agent<'a>(
        &'a self,
        record: &'a AgentRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_agent(record)
    }

    pub(crate) fn agent<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentRecord>, StoreError>> {
        self.0.agent(principal)
    }

    pub(crate) fn agents(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        self.0.agents()
    }

    pub(crate) fn put_key_bundle<'a>(
        &'a self,
        principal: &'a str,
        epoch: u64,
        bundle: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_key_bundle(principal, epoch, bundle)
    }

    pub(crate) fn latest_key_bundle<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        self.0.latest_key_bundle(principal)
    }

    pub(crate) fn put_token<'a>(
        &'a self,
        token: &'a TokenRecord,
        max: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_token(token, max)
    }

    pub(crate) fn redeem_token<'a>(
        &'a self,
        hash: &'a [u8; 32],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<TokenRecord, StoreError>> {
        self.0.redeem_token(hash, now_ms)
    }

    pub(crate) fn purge_tokens(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.0.purge_tokens(now_ms)
    }

    pub(crate) fn put_revocations<'a>(
        &'a self,
        version: u64,
        list: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_revocations(version, list)
    }

    pub(crate) fn revocations(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        self.0.revocations()
    }

    pub(crate) fn put_grants<'a>(
        &'a self,
        version: u64,
        book: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_grants(version, book)
    }

    pub(crate) fn grants(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        self.0.grants()
    }

    pub(crate) fn put_config<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_config(key, value)
    }

    pub(crate) fn config<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.0.config(key)
    }

    pub(crate) fn put_held<'a>(
        &'a self,
        id: &'a str,
        record: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.put_held(id, record)
    }

    pub(crate) fn delete_held<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.delete_held(id)
    }

    pub(crate) fn held(&self) -> BoxFuture<'_, Result<Records, StoreError>> {
        self.0.held()
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registry")
    }
}

// === impl Erased ===

/// A concrete store behind [`DynStore`].
struct Erased<S>(Arc<S>);

impl<S: Store> DynStore for Erased<S> {
    fn put_agent<'a>(&'a self, record: &'a AgentRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_agent(record))
    }

    fn agent<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<Option<AgentRecord>, StoreError>> {
        Box::pin(self.0.agent(principal))
    }

    fn put_key_bundle<'a>(
        &'a self,
        principal: &'a str,
        epoch: u64,
        bundle: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_key_bundle(principal, epoch, bundle))
    }

    fn latest_key_bundle<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<Versioned, StoreError>> {
        Box::pin(self.0.latest_key_bundle(principal))
    }

    fn put_token<'a>(
        &'a self,
        token: &'a TokenRecord,
        max: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_token(token, max))
    }

    fn redeem_token<'a>(
        &'a self,
        hash: &'a [u8; 32],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<TokenRecord, StoreError>> {
        Box::pin(self.0.redeem_token(hash, now_ms))
    }

    fn purge_tokens(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(self.0.purge_tokens(now_ms))
    }

    fn put_revocations<'a>(
        &'a self,
        version: u64,
        list: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_revocations(version, list))
    }

    fn revocations(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        Box::pin(self.0.revocations())
    }

    fn agents(&self) -> BoxFuture<'_, Result<Vec<AgentRecord>, StoreError>> {
        Box::pin(self.0.agents())
    }

    fn put_grants<'a>(
        &'a self,
        version: u64,
        book: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_grants(version, book))
    }

    fn grants(&self) -> BoxFuture<'_, Result<Versioned, StoreError>> {
        Box::pin(self.0.grants())
    }

    fn put_config<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_config(key, value))
    }

    fn config<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.0.config(key))
    }

    fn put_held<'a>(
        &'a self,
        id: &'a str,
        record: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.0.put_held(id, record))
    }

    fn delete_held<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.0.delete_held(id))
    }

    fn held(&self) -> BoxFuture<'_, Result<Records, StoreError>> {
        Box::pin(self.0.held())
    }
}
