//! The key bundles a client trusts: every one verified against the identity's trust bundle
//! (PROTOCOL.md §3), whoever supplied it — the application or the hub's directory.
//!
//! The trust bundle is the latest one the client's identity has: a renewal may adopt the
//! intermediates of an intermediate CA rollover ([`KeyBundleCache::replace_trust`]), after
//! which bundles signed by the new intermediate verify, and held bundles whose signer the new
//! trust bundle dropped are forgotten (the directory serves them re-signed).
//!
//! The cache also remembers when each principal's bundles were last refreshed — answered by
//! the directory, or given by the application — so that a principal sealed for alone (a
//! direct message, a request, a reply) is looked up again once that is older than the
//! directory TTL ([`KeyBundleCache::refresh_due`]): a principal that enrolled again with new
//! keys is not sealed for under its old ones for as long as they stay valid.

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

/// How long after a directory lookup of a principal a delivery naming an epoch of it the
/// cache lacks does not look it up again: a peer naming epochs that don't exist costs the
/// receiver one lookup a second, not one a frame.
const LOOKUP_AGAIN_MS: u64 = 1_000;

/// Most principals whose last lookup is remembered.
const MAX_LOOKUPS_KEPT: usize = 4096;

/// Most principals whose bundles are kept: past it, those whose bundles have all expired go,
/// and if none has, all (each is looked up again when next needed).
const MAX_PRINCIPALS_KEPT: usize = if cfg!(test) { 8 } else { 16_384 };

/// Verified key bundles by principal and epoch, and the trust bundle they verified against.
#[derive(Debug)]
pub(crate) struct KeyBundleCache {
    /// One lock for both: a bundle is verified and kept under the same trust bundle, never
    /// kept after a [`KeyBundleCache::replace_trust`] it was not checked against.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    trust: TrustBundle,
    bundles: HashMap<Principal, Vec<VerifiedKeyBundle>>,
    /// When each principal was last looked up in the directory.
    looked_up: HashMap<Principal, u64>,
    /// When each principal's bundles were last refreshed: looked up, given by the
    /// application, or a refresh begun.
    refreshed: HashMap<Principal, u64>,
}

// === impl KeyBundleCache ===

impl KeyBundleCache {
    pub(crate) fn new(trust: TrustBundle) -> Self {
        Self {
            state: Mutex::new(State {
                trust,
                bundles: HashMap::new(),
                looked_up: HashMap::new(),
                refreshed: HashMap::new(),
            }),
        }
    }

    /// Verifies from now on against `trust` (a renewal adopted new intermediates), and
    /// forgets held bundles that no longer verify against it at `now_ms`.
    pub(crate) fn replace_trust(&self, trust: TrustBundle, now_ms: u64) {
        let mut state = self.lock();
        if state.trust.to_pem() == trust.to_pem() {
            return;
        }
        for held in state.bundles.values_mut() {
            held.retain(|b| {
                KeyBundleIn::from_wire(b.to_wire().clone())
                    .and_then(|b| b.verify(&trust, now_ms))
                    .is_ok()
            });
        }
        state.bundles.retain(|_, held| !held.is_empty());
        state.trust = trust;
    }

    /// Verifies `bundle` against the trust bundle at `now_ms` and keeps it.
    pub(crate) fn trust(
        &self,
        bundle: wire::KeyBundle,
        now_ms: u64,
    ) -> Result<VerifiedKeyBundle, Error> {
        let principal = bundle.principal.clone();
        let mut state = self.lock();
        let verified = KeyBundleIn::from_wire(bundle)
            .and_then(|b| b.verify(&state.trust, now_ms))
            .map_err(|e| {
                let who = Principal::parse(&principal)
                    .map_or_else(|_| "a principal".to_owned(), |p| format!("`{p}`"));
                Error::new(
                    ErrorKind::Crypto,
                    format!("the key bundle of {who} does not verify: {e}"),
                )
                .with_source(e)
            })?;
        state.insert(verified.clone(), now_ms);
        state.refreshed(verified.principal(), now_ms);
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
            .bundles
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
            .bundles
            .get(principal)?
            .iter()
            .rev()
            .find(|b| b.is_valid_at(now_ms))
            .cloned()
    }

    /// Whether the directory may have the bundle of `principal` for key epoch `epoch` that
    /// this cache lacks: it serves each principal's latest bundle only, so not when a bundle
    /// of that epoch or a later one is held, nor within [`LOOKUP_AGAIN_MS`] of the last
    /// lookup of the principal.
    pub(crate) fn worth_looking_up(&self, principal: &Principal, epoch: u64, now_ms: u64) -> bool {
        let state = self.lock();
        let newer_held = state.bundles.get(principal).is_some_and(|held| {
            held.iter()
                .any(|b| b.epoch() >= epoch && b.is_valid_at(now_ms))
        });
        let recent = state
            .looked_up
            .get(principal)
            .is_some_and(|at| now_ms.saturating_sub(*at) < LOOKUP_AGAIN_MS);
        !newer_held && !recent
    }

    /// Notes that `principals` were looked up in the directory at `now_ms`.
    pub(crate) fn looked_up(&self, principals: &[Principal], now_ms: u64) {
        self.tried(principals, now_ms, true);
    }

    /// Notes that a lookup of `principals` failed at `now_ms` (the call refused, timed out,
    /// or the hub has no directory): not tried again within [`LOOKUP_AGAIN_MS`] either, so
    /// that a peer naming key epochs that don't exist costs at most a lookup a second
    /// whatever becomes of it; nothing is taken as refreshed.
    pub(crate) fn lookup_failed(&self, principals: &[Principal], now_ms: u64) {
        self.tried(principals, now_ms, false);
    }

    fn tried(&self, principals: &[Principal], now_ms: u64, answered: bool) {
        let mut state = self.lock();
        if state.looked_up.len().saturating_add(principals.len()) > MAX_LOOKUPS_KEPT {
            state
                .looked_up
                .retain(|_, at| now_ms.saturating_sub(*at) < LOOKUP_AGAIN_MS);
            if state.looked_up.len().saturating_add(principals.len()) > MAX_LOOKUPS_KEPT {
                state.looked_up.clear();
            }
        }
        for principal in principals {
            state.looked_up.insert(principal.clone(), now_ms);
            if answered {
                state.refreshed(principal, now_ms);
            }
        }
    }

    /// Whether the bundles held for `principal` are due to be refreshed from the directory at
    /// `now_ms`: none was refreshed within `ttl_ms`. If so, it counts as refreshed from now,
    /// so that whoever asks meanwhile keeps using what is held rather than asking too.
    pub(crate) fn refresh_due(&self, principal: &Principal, now_ms: u64, ttl_ms: u64) -> bool {
        let mut state = self.lock();
        let fresh = state
            .refreshed
            .get(principal)
            .is_some_and(|at| now_ms.saturating_sub(*at) < ttl_ms);
        if !fresh {
            state.refreshed(principal, now_ms);
        }
        !fresh
    }

    /// The bundle of `principal` for key epoch `epoch`, if held and valid at `now_ms`.
    pub(crate) fn epoch(
        &self,
        principal: &Principal,
        epoch: u64,
        now_ms: u64,
    ) -> Option<VerifiedKeyBundle> {
        self.lock()
            .bundles
            .get(principal)?
            .iter()
            .find(|b| b.epoch() == epoch && b.is_valid_at(now_ms))
            .cloned()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl State ===

impl State {
    /// Notes that `principal`'s bundles were refreshed at `now_ms`. Past
    /// [`MAX_LOOKUPS_KEPT`] principals, all are forgotten: each is refreshed again at its next
    /// use.
    fn refreshed(&mut self, principal: &Principal, now_ms: u64) {
        if self.refreshed.len() >= MAX_LOOKUPS_KEPT && !self.refreshed.contains_key(principal) {
            self.refreshed.clear();
        }
        self.refreshed.insert(principal.clone(), now_ms);
    }

    fn insert(&mut self, bundle: VerifiedKeyBundle, now_ms: u64) {
        if self.bundles.len() >= MAX_PRINCIPALS_KEPT
            && !self.bundles.contains_key(bundle.principal())
        {
            self.bundles
                .retain(|_, held| held.iter().any(|b| b.is_valid_at(now_ms)));
            if self.bundles.len() >= MAX_PRINCIPALS_KEPT {
                self.bundles.clear();
            }
        }
        let held = self.bundles.entry(bundle.principal().clone()).or_default();
        // One bundle per epoch: a re-signed bundle for an epoch replaces the old one.
        held.retain(|b| b.epoch() != bundle.epoch());
        held.push(bundle);
        held.sort_by_key(VerifiedKeyBundle::epoch);
        let excess = held.len().saturating_sub(EPOCHS_KEPT);
        held.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    use entente_ca::{Ca, CaOptions};
    use entente_crypto::KeyBundleBody;
    use entente_keystore::local::{Argon2Params, LocalKeyStore, Unlock};
    use entente_types::{AgentId, TrustDomain};

    use super::*;

    fn now_ms() -> u64 {
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    }

    fn bundle(ca: &Ca, name: &str) -> wire::KeyBundle {
        bundle_for(ca, name, 3_600_000)
    }

    /// A bundle of `name` valid from a minute ago for `ms` from now.
    fn bundle_for(ca: &Ca, name: &str, ms: u64) -> wire::KeyBundle {
        let td = ca.trust_domain();
        let now = now_ms();
        ca.sign_key_bundle(KeyBundleBody {
            principal: Principal::from(AgentId::new(td, "ops", name).unwrap()),
            ed25519_public: [1; 32],
            x25519_public: [2; 32],
            epoch: 1,
            not_before_ms: now - 60_000,
            not_after_ms: now + ms,
        })
        .unwrap()
    }

    /// The principals whose bundles are kept are bounded: past the bound, those whose bundles
    /// all expired go first, and if none has, all.
    #[test]
    fn the_principals_kept_are_bounded() {
        let (_tmp, _td, ca) = test_ca();
        let cache = KeyBundleCache::new(ca.trust_bundle().clone());
        let now = now_ms();
        for i in 0..MAX_PRINCIPALS_KEPT {
            let ms = if i < 3 { 10_000 } else { 3_600_000 };
            cache
                .trust(bundle_for(&ca, &format!("a{i}"), ms), now)
                .unwrap();
        }
        assert_eq!(cache.lock().bundles.len(), MAX_PRINCIPALS_KEPT);
        // A minute on, three have expired: they make room.
        let later = now + 60_000;
        let extra = cache.trust(bundle(&ca, "extra"), later).unwrap();
        assert_eq!(cache.lock().bundles.len(), MAX_PRINCIPALS_KEPT - 2);
        assert!(cache.latest(extra.principal(), later).is_some());
        // Full of valid ones: all go.
        for i in 0..2 {
            cache.trust(bundle(&ca, &format!("b{i}")), later).unwrap();
        }
        assert_eq!(cache.lock().bundles.len(), MAX_PRINCIPALS_KEPT);
        cache.trust(bundle(&ca, "last"), later).unwrap();
        assert_eq!(cache.lock().bundles.len(), 1);
    }

    /// A CA of trust domain `acme.internal`, its keys in a temporary directory.
    fn test_ca() -> (tempfile::TempDir, TrustDomain, Ca) {
        let tmp = tempfile::tempdir().unwrap();
        let keystore = LocalKeyStore::create(
            &tmp.path().join("keys"),
            &Unlock::passphrase("bundle tests"),
            Argon2Params::danger_fast_for_tests(),
        )
        .unwrap();
        let td = TrustDomain::new("acme.internal").unwrap();
        let ca = Ca::init(
            Arc::new(keystore),
            &td,
            CaOptions::default(),
            SystemTime::now(),
        )
        .unwrap();
        (tmp, td, ca)
    }

    #[test]
    fn a_replaced_trust_bundle_verifies_the_new_intermediate_and_forgets_the_retired_one() {
        let (_tmp, _, ca) = test_ca();
        let cache = KeyBundleCache::new(ca.trust_bundle().clone());
        let old = cache.trust(bundle(&ca, "bob"), now_ms()).unwrap();
        let active = ca
            .stage_intermediate(SystemTime::now())
            .unwrap()
            .activate_staged()
            .unwrap();

        // Signed by an intermediate the cache's trust bundle does not list.
        let carol = bundle(&active, "carol");
        let e = cache.trust(carol.clone(), now_ms()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Crypto, "{e}");
        assert!(e.to_string().contains("carol"), "{e}");

        // Once it does, the bundle verifies; what the old intermediate signed is kept.
        cache.replace_trust(active.trust_bundle().clone(), now_ms());
        cache.trust(carol, now_ms()).unwrap();
        assert_eq!(cache.latest(old.principal(), now_ms()), Some(old.clone()));

        // After retirement, bundles the old intermediate signed are forgotten...
        let (retired, _) = active.retire_previous().unwrap();
        cache.replace_trust(retired.trust_bundle().clone(), now_ms());
        assert_eq!(cache.latest(old.principal(), now_ms()), None);
        assert!(cache.trust(old.to_wire().clone(), now_ms()).is_err());
        // ...and admitted again only re-signed.
        let resigned = retired.sign_key_bundle(old.body().clone()).unwrap();
        assert!(cache.admit(&old, now_ms()).is_err());
        cache.trust(resigned.clone(), now_ms()).unwrap();
        assert_eq!(
            cache.epoch(old.principal(), 1, now_ms()).unwrap().to_wire(),
            &resigned
        );
    }

    /// A peer naming key epochs of its own that don't exist (the hub does not check them)
    /// costs a receiver a directory lookup at most once a second, not one per frame.
    #[test]
    fn a_lookup_is_worth_it_only_for_an_epoch_the_directory_may_have() {
        let (_tmp, td, ca) = test_ca();
        let cache = KeyBundleCache::new(ca.trust_bundle().clone());
        let now = now_ms();
        let bob = cache.trust(bundle(&ca, "bob"), now).unwrap();
        let bob = bob.principal();
        // Held (epoch 1), or older than one held: the directory, serving the latest, can't
        // help. A later epoch it may have.
        assert!(!cache.worth_looking_up(bob, 1, now));
        assert!(!cache.worth_looking_up(bob, 0, now));
        assert!(cache.worth_looking_up(bob, 2, now));
        // Once looked up, not again for a second.
        cache.looked_up(std::slice::from_ref(bob), now);
        assert!(!cache.worth_looking_up(bob, 999, now + LOOKUP_AGAIN_MS - 1));
        assert!(cache.worth_looking_up(bob, 999, now + LOOKUP_AGAIN_MS));
        // Nor after a lookup that failed, which refreshes nothing.
        let later = now + LOOKUP_AGAIN_MS;
        cache.lookup_failed(std::slice::from_ref(bob), later);
        assert!(!cache.worth_looking_up(bob, 999, later + LOOKUP_AGAIN_MS - 1));
        assert!(cache.worth_looking_up(bob, 999, later + LOOKUP_AGAIN_MS));
        assert_eq!(cache.lock().refreshed.get(bob), Some(&now));
        // The lookups remembered are bounded.
        let many: Vec<Principal> = (0..MAX_LOOKUPS_KEPT + 1)
            .map(|i| Principal::from(AgentId::new(&td, "ops", &format!("a{i}")).unwrap()))
            .collect();
        cache.looked_up(&many, now);
        assert!(cache.lock().looked_up.len() <= MAX_LOOKUPS_KEPT + 1);
        cache.looked_up(std::slice::from_ref(bob), now);
        assert!(cache.lock().looked_up.len() <= MAX_LOOKUPS_KEPT + 1);
    }

    #[test]
    fn a_principals_bundles_are_refreshed_once_per_ttl() {
        let (_tmp, td, ca) = test_ca();
        let cache = KeyBundleCache::new(ca.trust_bundle().clone());
        let now = now_ms();
        // Given by the application: fresh for the TTL.
        let bob = cache.trust(bundle(&ca, "bob"), now).unwrap();
        let bob = bob.principal();
        assert!(!cache.refresh_due(bob, now + 999, 1_000));
        // Then due once: whoever asks meanwhile uses what is held.
        assert!(cache.refresh_due(bob, now + 1_000, 1_000));
        assert!(!cache.refresh_due(bob, now + 1_001, 1_000));
        // A lookup answered counts too; a principal never refreshed is due.
        cache.looked_up(std::slice::from_ref(bob), now + 5_000);
        assert!(!cache.refresh_due(bob, now + 5_500, 1_000));
        let carol = Principal::from(AgentId::new(&td, "ops", "carol").unwrap());
        assert!(cache.refresh_due(&carol, now, 1_000));
        // Bounded.
        for i in 0..MAX_LOOKUPS_KEPT + 1 {
            let p = Principal::from(AgentId::new(&td, "ops", &format!("a{i}")).unwrap());
            cache.refresh_due(&p, now, 1_000);
        }
        assert!(cache.lock().refreshed.len() <= MAX_LOOKUPS_KEPT);
    }
}
