//! The key bundles a client trusts: every one verified against the identity's trust bundle
//! (PROTOCOL.md §3), whoever supplied it — the application or the hub's directory.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use entente_ca::TrustBundle;
use entente_crypto::{KeyBundleIn, VerifiedKeyBundle};
use entente_types::Principal;
use entente_wire as wire;

use crate::{Error, ErrorKind};

/// Bundles kept per principal: the newest few epochs, so that batches signed just before a
/// key change still verify.
const EPOCHS_KEPT: usize = 4;

/// Verified key bundles by principal and epoch.
#[derive(Debug)]
pub(crate) struct KeyBundleCache {
    trust: TrustBundle,
    bundles: Mutex<HashMap<Principal, Vec<VerifiedKeyBundle>>>,
}

impl KeyBundleCache {
    pub(crate) fn new(trust: TrustBundle) -> Self {
        Self {
            trust,
            bundles: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies `bundle` against the trust bundle at `now_ms` and keeps it.
    pub(crate) fn trust(
        &self,
        bundle: wire::KeyBundle,
        now_ms: u64,
    ) -> Result<VerifiedKeyBundle, Error> {
        let principal = bundle.principal.clone();
        let verified = KeyBundleIn::from_wire(bundle)
            .and_then(|b| b.verify(&self.trust, now_ms))
            .map_err(|e| {
                let who = Principal::parse(&principal)
                    .map_or_else(|_| "a principal".to_owned(), |p| format!("`{p}`"));
                Error::new(
                    ErrorKind::Crypto,
                    format!("the key bundle of {who} does not verify: {e}"),
                )
                .with_source(e)
            })?;
        self.insert(verified.clone());
        Ok(verified)
    }

    /// Admits a bundle verified elsewhere: kept as is if this cache already holds the same
    /// bundle, verified again against this client's trust bundle otherwise (a
    /// [`VerifiedKeyBundle`] may have been verified against another CA).
    pub(crate) fn admit(
        &self,
        bundle: &VerifiedKeyBundle,
        now_ms: u64,
    ) -> Result<VerifiedKeyBundle, Error> {
        let known = self
            .lock()
            .get(bundle.principal())
            .is_some_and(|held| held.iter().any(|b| b.to_wire() == bundle.to_wire()));
        if known && bundle.is_valid_at(now_ms) {
            return Ok(bundle.clone());
        }
        self.trust(bundle.to_wire().clone(), now_ms)
    }

    /// The newest bundle of `principal` valid at `now_ms`.
    pub(crate) fn latest(&self, principal: &Principal, now_ms: u64) -> Option<VerifiedKeyBundle> {
        self.lock()
            .get(principal)?
            .iter()
            .rev()
            .find(|b| b.is_valid_at(now_ms))
            .cloned()
    }

    /// The bundle of `principal` for key epoch `epoch`, if held and valid at `now_ms`.
    pub(crate) fn epoch(
        &self,
        principal: &Principal,
        epoch: u64,
        now_ms: u64,
    ) -> Option<VerifiedKeyBundle> {
        self.lock()
            .get(principal)?
            .iter()
            .find(|b| b.epoch() == epoch && b.is_valid_at(now_ms))
            .cloned()
    }

    fn insert(&self, bundle: VerifiedKeyBundle) {
        let mut bundles = self.lock();
        let held = bundles.entry(bundle.principal().clone()).or_default();
        // One bundle per epoch: a re-signed bundle for an epoch replaces the old one.
        held.retain(|b| b.epoch() != bundle.epoch());
        held.push(bundle);
        held.sort_by_key(VerifiedKeyBundle::epoch);
        let excess = held.len().saturating_sub(EPOCHS_KEPT);
        held.drain(..excess);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Principal, Vec<VerifiedKeyBundle>>> {
        self.bundles.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
