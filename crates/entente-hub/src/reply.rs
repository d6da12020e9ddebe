//! Reply grants: the only way into someone's `_reply` namespace.
//!
//! When a session publishes a request — an envelope whose `reply_to` is R, which must lie in
//! the publisher's own reply namespace — the hub grants every principal subscribed to the
//! request's channel (for a direct, its one target) the right to publish **one batch** on R,
//! until the earliest of the envelope's `expires_at` and [`MAX_REPLY_WAIT`] from now. The
//! grant is taken by the reply; a second reply, a reply after expiry, or a reply from anyone
//! else is refused (`DENIED`). A requesting session holds at most [`MAX_REPLY_GRANTS`]
//! outstanding grants (expired ones swept first); beyond, its request is refused
//! (`TOO_MANY_REPLY_GRANTS`). Grants die with the requesting session. Each session's grants
//! are indexed by it, so that sweeping or forgetting them touches only its own, never every
//! grant of the hub under the one lock.
//!
//! A state machine over explicit times: no clock, no I/O.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use entente_types::{Channel, Principal};

use crate::router::SessionId;

/// Outstanding reply grants one requesting session may hold.
pub const MAX_REPLY_GRANTS: usize = 1024;
/// The longest a reply grant lives, whatever the request's `expires_at` says.
pub const MAX_REPLY_WAIT: Duration = Duration::from_secs(60);

/// Every session's reply grants.
#[derive(Debug)]
pub(crate) struct ReplyGrants {
    state: Mutex<State>,
    max_per_session: usize,
    max_wait_ms: u64,
}

/// A request was refused: its session holds too many outstanding grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session holds the maximum of {max} outstanding requests awaiting replies")]
pub(crate) struct TooManyGrants {
    pub(crate) max: usize,
}

#[derive(Debug, Default)]
struct State {
    /// By (grantee, reply channel).
    grants: HashMap<(Principal, Channel), Grant>,
    /// The keys of the grants each requesting session holds (a live session has an entry).
    held: HashMap<SessionId, HashSet<(Principal, Channel)>>,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    requester: SessionId,
    expires_at_ms: u64,
}

/// Grants taken by one publish, to give back if it is refused after all.
#[derive(Debug, Default)]
#[must_use = "grants taken for a refused publish go back with `undo`"]
pub(crate) struct Taken(Vec<((Principal, Channel), Grant)>);

/// Grants issued by one publish (with those they replaced), to undo if it is refused after all.
#[derive(Debug, Default)]
#[must_use = "grants issued for a refused publish go with `undo`"]
pub(crate) struct Issued {
    requester: SessionId,
    added: usize,
    grants: Vec<((Principal, Channel), Option<Grant>)>,
}

// === impl ReplyGrants ===

impl Default for ReplyGrants {
    fn default() -> Self {
        Self::new(MAX_REPLY_GRANTS, MAX_REPLY_WAIT)
    }
}

impl ReplyGrants {
    pub(crate) fn new(max_per_session: usize, max_wait: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            max_per_session,
            max_wait_ms: u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Grants each of `grantees` one reply on `reply_to`, for `requester`'s request expiring
    /// at `expires_at_ms`; all or none. A request already expired grants nothing. Returns
    /// how many grants were added (a grant already held is renewed, not added).
    #[cfg(test)]
    pub(crate) fn issue(
        &self,
        requester: SessionId,
        reply_to: &Channel,
        grantees: &[Principal],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<usize, TooManyGrants> {
        self.issue_all(
            requester,
            &[(reply_to.clone(), Arc::from(grantees), expires_at_ms)],
            now_ms,
        )
        .map(|issued| issued.added)
    }

    /// Issues the grants of every request of one publish, `(reply_to, grantees,
    /// expires_at_ms)` each: all of them or, if together they would pass the session's
    /// bound, none (the publish is refused whole, so no grant may outlive it: a refusal that
    /// comes after undoes them with [`undo`](Self::undo)). Returns what was issued, with how
    /// many grants were added.
    pub(crate) fn issue_all(
        &self,
        requester: SessionId,
        requests: &[(Channel, Arc<[Principal]>, u64)],
        now_ms: u64,
    ) -> Result<Issued, TooManyGrants> {
        let live: Vec<(&Channel, &[Principal], u64)> = requests
            .iter()
            .filter_map(|(reply_to, grantees, expires_at_ms)| {
                let until = (*expires_at_ms).min(now_ms.saturating_add(self.max_wait_ms));
                (until > now_ms && !grantees.is_empty()).then_some((reply_to, &grantees[..], until))
            })
            .collect();
        if live.is_empty() {
            return Ok(Issued::default());
        }
        let mut state = self.lock();
        // Counted generously: a grantee named twice for one channel counts twice here.
        let new: usize = live
            .iter()
            .map(|(reply_to, grantees, _)| {
                grantees
                    .iter()
                    .filter(|g| {
                        state
                            .grants
                            .get(&((*g).clone(), (*reply_to).clone()))
                            .is_none_or(|grant| grant.requester != requester)
                    })
                    .count()
            })
            .sum();
        let held = |state: &State| state.held.get(&requester).map_or(0, HashSet::len);
        if held(&state).saturating_add(new) > self.max_per_session {
            state.sweep(requester, now_ms);
            if held(&state).saturating_add(new) > self.max_per_session {
                return Err(TooManyGrants {
                    max: self.max_per_session,
                });
            }
        }
        let mut issued = Issued {
            requester,
            added: 0,
            grants: Vec::new(),
        };
        for (reply_to, grantees, until) in live {
            for grantee in grantees {
                let grant = Grant {
                    requester,
                    expires_at_ms: until,
                };
                let key = (grantee.clone(), reply_to.clone());
                let old = state.grants.insert(key.clone(), grant);
                if let Some(old) = old {
                    state.release(old.requester, &key);
                }
                // A grant this session held already is renewed, not added.
                if old.is_none_or(|old| old.requester != requester) {
                    issued.added += 1;
                }
                state.held.entry(requester).or_default().insert(key.clone());
                issued.grants.push((key, old));
            }
        }
        Ok(issued)
    }

    /// Undoes what one publish did to the grants, for a publish refused before it routed
    /// anything: the grants it issued go (those they replaced come back), and the grants it
    /// took come back, unless issued again meanwhile or their requester's session ended.
    pub(crate) fn undo(&self, taken: Taken, issued: Issued) {
        if taken.0.is_empty() && issued.grants.is_empty() {
            return;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        for (key, old) in issued.grants.into_iter().rev() {
            if state
                .grants
                .get(&key)
                .is_some_and(|g| g.requester == issued.requester)
            {
                state.grants.remove(&key);
                state.release(issued.requester, &key);
            }
            if let Some(old) = old {
                state.restore(key, old);
            }
        }
        for (key, grant) in taken.0 {
            state.restore(key, grant);
        }
    }

    /// Whether `grantee` holds a live grant on every one of `channels`; the first it lacks
    /// otherwise.
    pub(crate) fn may_reply_all<'c>(
        &self,
        grantee: &Principal,
        channels: &'c [Channel],
        now_ms: u64,
    ) -> Result<(), &'c Channel> {
        let state = self.lock();
        match channels.iter().find(|channel| {
            state
                .grants
                .get(&(grantee.clone(), (*channel).clone()))
                .is_none_or(|grant| grant.expires_at_ms <= now_ms)
        }) {
            Some(missing) => Err(missing),
            None => Ok(()),
        }
    }

    /// Whether `grantee` holds a live grant on `channel`.
    pub(crate) fn may_reply(&self, grantee: &Principal, channel: &Channel, now_ms: u64) -> bool {
        let state = self.lock();
        state
            .grants
            .get(&(grantee.clone(), channel.clone()))
            .is_some_and(|grant| grant.expires_at_ms > now_ms)
    }

    /// Takes `grantee`'s grants on every one of `channels` (one publish's replies), all or
    /// none: if one is missing or expired, it is returned and the others stay. A channel named
    /// twice is missing the second time (a grant covers one batch). What was taken goes back
    /// with [`undo`](Self::undo) if the publish is refused after all.
    pub(crate) fn take_all<'c>(
        &self,
        grantee: &Principal,
        channels: &'c [Channel],
        now_ms: u64,
    ) -> Result<Taken, &'c Channel> {
        let mut state = self.lock();
        let mut taken = Vec::with_capacity(channels.len());
        // Taken as they come (one lookup each), and put back should one be missing.
        for channel in channels {
            let key = (grantee.clone(), channel.clone());
            match state.grants.remove(&key) {
                Some(grant) if grant.expires_at_ms > now_ms => taken.push((key, grant)),
                missing => {
                    if let Some(expired) = missing {
                        state.grants.insert(key, expired);
                    }
                    for (key, grant) in taken {
                        state.grants.insert(key, grant);
                    }
                    return Err(channel);
                }
            }
        }
        for (key, grant) in &taken {
            state.release(grant.requester, key);
        }
        Ok(Taken(taken))
    }

    /// Takes `grantee`'s grant on `channel`: `true` once, if it is live.
    #[cfg(test)]
    pub(crate) fn take(&self, grantee: &Principal, channel: &Channel, now_ms: u64) -> bool {
        let mut state = self.lock();
        let key = (grantee.clone(), channel.clone());
        match state.grants.remove(&key) {
            Some(grant) => {
                state.release(grant.requester, &key);
                grant.expires_at_ms > now_ms
            }
            None => false,
        }
    }

    /// Drops every grant `requester` holds (its session ended).
    pub(crate) fn forget_session(&self, requester: SessionId) {
        let mut state = self.lock();
        for key in state.held.remove(&requester).unwrap_or_default() {
            if state
                .grants
                .get(&key)
                .is_some_and(|grant| grant.requester == requester)
            {
                state.grants.remove(&key);
            }
        }
    }

    /// Outstanding grants of `requester`, expired ones not yet swept included.
    #[cfg(test)]
    pub(crate) fn outstanding(&self, requester: SessionId) -> usize {
        self.lock().held.get(&requester).map_or(0, HashSet::len)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl State ===

impl State {
    /// Drops `requester`'s expired grants.
    fn sweep(&mut self, requester: SessionId, now_ms: u64) {
        let Some(held) = self.held.get_mut(&requester) else {
            return;
        };
        let grants = &mut self.grants;
        held.retain(|key| match grants.get(key) {
            Some(grant) if grant.requester == requester && grant.expires_at_ms <= now_ms => {
                grants.remove(key);
                false
            }
            Some(grant) => grant.requester == requester,
            None => false,
        });
    }

    /// `requester` no longer holds the grant of `key`. Its entry stays (empty) until its
    /// session ends ([`ReplyGrants::forget_session`]): a live session is one with an entry.
    fn release(&mut self, requester: SessionId, key: &(Principal, Channel)) {
        if let Some(held) = self.held.get_mut(&requester) {
            held.remove(key);
        }
    }

    /// Puts back a grant a refused publish took or replaced, if its place is free and its
    /// requester's session is still there.
    fn restore(&mut self, key: (Principal, Channel), grant: Grant) {
        let Some(held) = self.held.get_mut(&grant.requester) else {
            return;
        };
        if let std::collections::hash_map::Entry::Vacant(slot) = self.grants.entry(key.clone()) {
            held.insert(key);
            slot.insert(grant);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const NOW: u64 = 1_760_000_000_000;

    fn p(name: &str) -> Principal {
        Principal::parse(&format!("spiffe://example.org/agent/shop/{name}")).unwrap()
    }

    fn c(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    #[test]
    fn a_grant_is_taken_once_and_only_by_its_grantee() {
        let grants = ReplyGrants::default();
        let r = c("_reply.shop.alice.r1");
        assert_eq!(grants.issue(1, &r, &[p("bob")], NOW + 10_000, NOW), Ok(1));
        assert!(!grants.may_reply(&p("eve"), &r, NOW));
        assert!(!grants.take(&p("eve"), &r, NOW));
        assert!(!grants.may_reply(&p("bob"), &c("_reply.shop.alice.r2"), NOW));
        assert!(grants.may_reply(&p("bob"), &r, NOW));
        assert!(grants.take(&p("bob"), &r, NOW + 1));
        assert!(!grants.may_reply(&p("bob"), &r, NOW + 1));
        assert!(!grants.take(&p("bob"), &r, NOW + 1));
        assert_eq!(grants.outstanding(1), 0);
    }

    #[test]
    fn the_grants_of_a_batch_of_replies_are_taken_all_or_none() {
        let grants = ReplyGrants::default();
        let (r1, r2, r3) = (
            c("_reply.shop.alice.r1"),
            c("_reply.shop.alice.r2"),
            c("_reply.shop.alice.r3"),
        );
        for (r, until) in [(&r1, NOW + 10_000), (&r2, NOW + 10_000), (&r3, NOW + 5)] {
            grants.issue(1, r, &[p("bob")], until, NOW).unwrap();
        }
        let missing = c("_reply.shop.alice.r9");
        let with_missing = [r1.clone(), missing.clone()];
        let bob = p("bob");
        assert_eq!(
            grants.take_all(&bob, &with_missing, NOW).err(),
            Some(&missing)
        );
        assert_eq!(
            grants.may_reply_all(&bob, &with_missing, NOW),
            Err(&missing)
        );
        // r3 has expired by then: nothing is taken, r1 and r2 stay.
        let with_expired = [r1.clone(), r2.clone(), r3.clone()];
        assert_eq!(
            grants.take_all(&bob, &with_expired, NOW + 5).err(),
            Some(&r3)
        );
        assert_eq!(grants.may_reply_all(&bob, &with_expired, NOW + 5), Err(&r3));
        // (The expired grant stays too, until swept: it was live before.)
        assert!(grants.may_reply(&bob, &r3, NOW));
        assert_eq!(grants.outstanding(1), 3);
        // A channel named twice: its one grant can't cover both; nothing is taken.
        assert_eq!(
            grants.take_all(&bob, &[r1.clone(), r1.clone()], NOW).err(),
            Some(&r1)
        );
        assert_eq!(grants.outstanding(1), 3);
        let r1_alone = std::slice::from_ref(&r1);
        assert_eq!(grants.take_all(&p("eve"), r1_alone, NOW).err(), Some(&r1));
        let live = [r1.clone(), r2.clone()];
        assert_eq!(grants.may_reply_all(&bob, &live, NOW + 5), Ok(()));
        let taken = grants.take_all(&bob, &live, NOW + 5).unwrap();
        assert!(!grants.may_reply(&bob, &r1, NOW + 5));
        assert!(!grants.may_reply(&bob, &r2, NOW + 5));
        assert_eq!(grants.take_all(&bob, &live, NOW + 5).err(), Some(&r1));
        assert_eq!(grants.outstanding(1), 1);
        // The publish was refused after all: the grants come back, once.
        grants.undo(taken, Issued::default());
        assert_eq!(grants.outstanding(1), 3);
        assert_eq!(grants.may_reply_all(&bob, &live, NOW + 5), Ok(()));
        let taken = grants.take_all(&bob, &live, NOW + 5).unwrap();
        assert!(grants.take_all(&bob, &[], NOW).is_ok());
        // A grant issued again meanwhile is kept, not overwritten.
        grants
            .issue(2, &r1, std::slice::from_ref(&bob), NOW + 20_000, NOW)
            .unwrap();
        grants.undo(taken, Issued::default());
        assert_eq!((grants.outstanding(1), grants.outstanding(2)), (2, 1));
        // Nor does a grant come back to a requester whose session ended.
        let taken = grants
            .take_all(&bob, std::slice::from_ref(&r2), NOW)
            .unwrap();
        grants.forget_session(1);
        grants.undo(taken, Issued::default());
        assert!(!grants.may_reply(&bob, &r2, NOW));
        assert_eq!(grants.outstanding(1), 0);
    }

    #[test]
    fn the_grants_a_refused_publish_issued_are_undone_and_those_they_replaced_restored() {
        let grants = ReplyGrants::default();
        let (r1, r2) = (c("_reply.shop.alice.r1"), c("_reply.shop.alice.r2"));
        // Session 1 granted Bob a reply on r1; session 2's publish re-grants r1 and grants r2.
        grants
            .issue(1, &r1, &[p("bob")], NOW + 10_000, NOW)
            .unwrap();
        let requests = [
            (r1.clone(), Arc::from([p("bob")]), NOW + 20_000),
            (r2.clone(), Arc::from([p("bob"), p("carol")]), NOW + 20_000),
        ];
        let issued = grants.issue_all(2, &requests, NOW).unwrap();
        assert_eq!(issued.added, 3);
        assert_eq!((grants.outstanding(1), grants.outstanding(2)), (0, 3));
        grants.undo(Taken::default(), issued);
        assert_eq!((grants.outstanding(1), grants.outstanding(2)), (1, 0));
        assert!(grants.may_reply(&p("bob"), &r1, NOW + 9_999));
        assert!(!grants.may_reply(&p("bob"), &r1, NOW + 10_000));
        assert!(!grants.may_reply(&p("bob"), &r2, NOW));
        assert!(!grants.may_reply(&p("carol"), &r2, NOW));
    }

    #[test]
    fn grants_expire_with_the_request_or_the_hub_maximum() {
        let grants = ReplyGrants::new(8, Duration::from_secs(60));
        let r = c("_reply.shop.alice.r1");
        grants.issue(1, &r, &[p("bob")], NOW + 5_000, NOW).unwrap();
        assert!(grants.may_reply(&p("bob"), &r, NOW + 4_999));
        assert!(!grants.may_reply(&p("bob"), &r, NOW + 5_000));
        assert!(!grants.take(&p("bob"), &r, NOW + 5_000));

        // A request valid for an hour still gets 60 s.
        grants
            .issue(1, &r, &[p("bob")], NOW + 3_600_000, NOW)
            .unwrap();
        assert!(grants.may_reply(&p("bob"), &r, NOW + 59_999));
        assert!(!grants.may_reply(&p("bob"), &r, NOW + 60_000));

        // An expired request grants nothing.
        let r2 = c("_reply.shop.alice.r2");
        assert_eq!(grants.issue(1, &r2, &[p("bob")], NOW, NOW), Ok(0));
        assert!(!grants.may_reply(&p("bob"), &r2, NOW));
    }

    #[test]
    fn every_subscriber_of_a_request_gets_its_own_grant() {
        let grants = ReplyGrants::default();
        let r = c("_reply.shop.alice.r1");
        let both = [p("bob"), p("carol")];
        assert_eq!(grants.issue(1, &r, &both, NOW + 10_000, NOW), Ok(2));
        assert!(grants.take(&p("bob"), &r, NOW));
        assert!(grants.take(&p("carol"), &r, NOW));
        assert!(!grants.take(&p("bob"), &r, NOW));
    }

    #[test]
    fn outstanding_grants_are_bounded_per_session_expired_ones_swept() {
        let grants = ReplyGrants::new(3, Duration::from_secs(60));
        for i in 0..3 {
            let r = c(&format!("_reply.shop.alice.r{i}"));
            grants.issue(1, &r, &[p("bob")], NOW + 1_000, NOW).unwrap();
        }
        let r = c("_reply.shop.alice.more");
        assert_eq!(
            grants.issue(1, &r, &[p("bob")], NOW + 1_000, NOW),
            Err(TooManyGrants { max: 3 })
        );
        // Nothing was added.
        assert!(!grants.may_reply(&p("bob"), &r, NOW));
        // Another session has its own allowance.
        assert_eq!(grants.issue(2, &r, &[p("bob")], NOW + 1_000, NOW), Ok(1));
        // Renewing a grant already held does not count twice.
        let r0 = c("_reply.shop.alice.r0");
        assert_eq!(grants.issue(1, &r0, &[p("bob")], NOW + 1_000, NOW), Ok(0));
        assert_eq!(grants.outstanding(1), 3);
        // Once they expire, there is room again.
        assert_eq!(
            grants.issue(1, &r, &[p("bob")], NOW + 9_000, NOW + 1_000),
            Ok(1)
        );
        assert_eq!(grants.outstanding(1), 1);
    }

    #[test]
    fn a_session_sweeps_and_forgets_only_its_own_grants() {
        let grants = ReplyGrants::new(1, Duration::from_secs(60));
        let (a, b) = (c("_reply.shop.alice.a"), c("_reply.shop.alice.b"));
        let carols = c("_reply.shop.carol.a");
        grants.issue(1, &a, &[p("bob")], NOW + 1_000, NOW).unwrap();
        grants
            .issue(2, &carols, &[p("bob")], NOW + 1_000, NOW)
            .unwrap();
        // Session 1, at its bound, sweeps its own expired grant; session 2's stays counted
        // until it sweeps or ends.
        assert_eq!(
            grants.issue(1, &b, &[p("bob")], NOW + 9_000, NOW + 2_000),
            Ok(1)
        );
        assert_eq!((grants.outstanding(1), grants.outstanding(2)), (1, 1));
        assert!(!grants.may_reply(&p("bob"), &a, NOW + 2_000));
        // Ending session 1 drops its grants only.
        grants.forget_session(1);
        assert_eq!((grants.outstanding(1), grants.outstanding(2)), (0, 1));
        assert!(!grants.may_reply(&p("bob"), &b, NOW + 2_000));
        assert!(grants.may_reply(&p("bob"), &carols, NOW));
        // A grant another session took over is not dropped with its first holder.
        grants.issue(3, &b, &[p("bob")], NOW + 9_000, NOW).unwrap();
        grants.issue(4, &b, &[p("bob")], NOW + 9_000, NOW).unwrap();
        grants.forget_session(3);
        assert!(grants.may_reply(&p("bob"), &b, NOW));
        assert_eq!((grants.outstanding(3), grants.outstanding(4)), (0, 1));
    }

    #[test]
    fn the_grants_of_one_publish_are_issued_all_or_none() {
        let grants = ReplyGrants::new(3, Duration::from_secs(60));
        grants
            .issue(1, &c("_reply.shop.alice.r0"), &[p("bob")], NOW + 1_000, NOW)
            .unwrap();
        let requests: Vec<(Channel, Arc<[Principal]>, u64)> = (1..=3)
            .map(|i| {
                (
                    c(&format!("_reply.shop.alice.r{i}")),
                    Arc::from([p("bob")]),
                    NOW + 1_000,
                )
            })
            .collect();
        // Three more would make four: none is issued.
        assert!(grants.issue_all(1, &requests, NOW).is_err());
        assert_eq!(grants.outstanding(1), 1);
        assert!(!grants.may_reply(&p("bob"), &c("_reply.shop.alice.r1"), NOW));
        // Two fit, together.
        assert_eq!(grants.issue_all(1, &requests[..2], NOW).unwrap().added, 2);
        assert_eq!(grants.outstanding(1), 3);
        assert!(grants.may_reply(&p("bob"), &c("_reply.shop.alice.r2"), NOW));
    }

    #[test]
    fn grants_die_with_their_session() {
        let grants = ReplyGrants::default();
        let r = c("_reply.shop.alice.r1");
        grants.issue(1, &r, &[p("bob")], NOW + 10_000, NOW).unwrap();
        grants
            .issue(
                2,
                &c("_reply.shop.alice.r2"),
                &[p("bob")],
                NOW + 10_000,
                NOW,
            )
            .unwrap();
        grants.forget_session(1);
        assert!(!grants.may_reply(&p("bob"), &r, NOW));
        assert_eq!(grants.outstanding(1), 0);
        assert_eq!(grants.outstanding(2), 1);
    }
}
