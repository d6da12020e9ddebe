//! The running policy set behind an atomic swap, and the epoch that versions every input a
//! cached decision depends on.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use crate::decision::Decision;
use crate::policies::{LoadError, PolicySet, PolicySetBuilder};
use crate::request::{Action, Facts, Resource, Subject};

/// Holds the running [`PolicySet`] and the policy epoch. Share it (`Arc<Engine>`) between
/// connections; each connection keeps its own [`DecisionCache`](crate::DecisionCache).
///
/// The epoch starts at 1 and goes up by one on every change that can alter a decision:
/// a new policy set ([`Engine::replace`], [`Engine::load`]), and whatever the caller reports
/// with [`Engine::bump_epoch`] (grants, revocations, quarantine, risk scores). Cached
/// decisions made at an older epoch are not used again. A load that fails leaves both the
/// running set and the epoch as they were.
pub struct Engine {
    current: RwLock<Arc<PolicySet>>,
    epoch: AtomicU64,
    /// The running set's [`PolicySet::may_forbid`], one bit per action of [`Action::ALL`]:
    /// read on every delivery to a wildcard subscription, without the set's lock.
    forbidding: AtomicU16,
}

// === impl Engine ===

impl Engine {
    /// An engine running `policies`, at epoch 1.
    pub fn new(policies: PolicySet) -> Self {
        Self::starting_at(policies, 1)
    }

    /// An engine running `policies`, at epoch `epoch` (a host that keeps epochs unique
    /// across restarts starts each run above the last).
    pub fn starting_at(policies: PolicySet, epoch: u64) -> Self {
        Self {
            forbidding: AtomicU16::new(forbidding(&policies)),
            current: RwLock::new(Arc::new(policies)),
            epoch: AtomicU64::new(epoch),
        }
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The running policy set.
    pub fn policies(&self) -> Arc<PolicySet> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// [`PolicySet::may_forbid`] of the running set, without taking its lock: a set swapped in
    /// is seen here before its epoch is.
    pub fn may_forbid(&self, action: Action) -> bool {
        self.forbidding.load(Ordering::Acquire) & bit(action) != 0
    }

    /// Builds a policy set and, if it is valid, makes it the running one. Returns the new
    /// epoch. On error nothing changes.
    pub fn load(&self, builder: PolicySetBuilder) -> Result<u64, LoadError> {
        let policies = builder.build()?;
        Ok(self.replace(policies))
    }

    /// Makes `policies` (validated by construction) the running set; returns the new epoch.
    pub fn replace(&self, policies: PolicySet) -> u64 {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        self.forbidding
            .store(forbidding(&policies), Ordering::Release);
        *current = Arc::new(policies);
        // Swap first, bump second: whoever reads the new epoch also sees the new set.
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records a change outside the policies that can alter decisions (a grant given or
    /// expired early, a revocation, a quarantine, a risk score): cached decisions are
    /// dropped. Make the change visible first, then bump. Returns the new epoch.
    pub fn bump_epoch(&self) -> u64 {
        let _serialize = self.current.write().unwrap_or_else(PoisonError::into_inner);
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Decides, uncached.
    pub fn decide(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
    ) -> Decision {
        let (epoch, policies) = self.snapshot();
        policies.decide_at(epoch, subject, action, resource, facts, now_ms, None)
    }

    /// Decides, uncached, and explains the decision in words.
    pub fn explain(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
    ) -> String {
        let (epoch, policies) = self.snapshot();
        let decision = policies.decide_at(epoch, subject, action, resource, facts, now_ms, None);
        policies.explain_decision(subject, action, resource, &decision)
    }

    /// The epoch and a set at least as new as that epoch's: the epoch is read first, so a
    /// decision is never labelled with an epoch newer than its policies.
    pub(crate) fn snapshot(&self) -> (u64, Arc<PolicySet>) {
        let epoch = self.epoch();
        (epoch, self.policies())
    }
}

/// `action`'s bit in [`Engine::forbidding`].
fn bit(action: Action) -> u16 {
    Action::ALL
        .iter()
        .position(|&a| a == action)
        .map_or(0, |i| 1 << i)
}

/// The bits of the actions some forbid of `policies` may apply to.
fn forbidding(policies: &PolicySet) -> u16 {
    Action::ALL
        .into_iter()
        .filter(|&a| policies.may_forbid(a))
        .fold(0, |bits, a| bits | bit(a))
}

impl Default for Engine {
    fn default() -> Self {
        Self::new(PolicySet::empty())
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("epoch", &self.epoch())
            .field("policies", &self.policies().len())
            .finish()
    }
}
