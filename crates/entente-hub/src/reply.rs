//! Reply grants: the only way into someone's `_reply` namespace.
//!
//! When a session publishes a request — an envelope whose `reply_to` is R, which must lie in
//! the publisher's own reply namespace — the hub grants every principal subscribed to the
//! request's channel (for a direct, its one target) the right to publish **one batch** on R,
//! until the earliest of the envelope's `expires_at` and [`MAX_REPLY_WAIT`] from now. The
//! grant is taken by the reply; a second reply, a reply after expiry, or a reply from anyone
//! else is refused (`DENIED`). A requesting session holds at most [`MAX_REPLY_GRANTS`]
//! outstanding grants (expired ones swept first); beyond, its request is refused
//! (`TOO_MANY_REPLY_GRANTS`). Grants die with the requesting session.
//!
//! A state machine over explicit times: no clock, no I/O.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
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
    /// Grants held per requesting session.
    outstanding: HashMap<SessionId, usize>,
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    requester: SessionId,
    expires_at_ms: u64,
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
            &[(reply_to.clone(), grantees.to_vec(), expires_at_ms)],
            now_ms,
        )
    }

    /// Issues the grants of every request of one publish, `(reply_to, grantees,
    /// expires_at_ms)` each: all of them or, if together they would pass the session's
    /// bound, none (the publish is refused whole, so no grant may outlive it). Returns how
    /// many grants were added.
    pub(crate) fn issue_all(
        &self,
        requester: SessionId,
        requests: &[(Channel, Vec<Principal>, u64)],
        now_ms: u64,
    ) -> Result<usize, TooManyGrants> {
        let live: Vec<(&Channel, &[Principal], u64)> = requests
            .iter()
            .filter_map(|(reply_to, grantees, expires_at_ms)| {
                let until = (*expires_at_ms).min(now_ms.saturating_add(self.max_wait_ms));
                (until > now_ms && !grantees.is_empty()).then_some((
                    reply_to,
                    grantees.as_slice(),
                    until,
                ))
            })
            .collect();
        if live.is_empty() {
            return Ok(0);
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
        let held = |state: &State| state.outstanding.get(&requester).copied().unwrap_or(0);
        if held(&state).saturating_add(new) > self.max_per_session {
            state.sweep(now_ms);
            if held(&state).saturating_add(new) > self.max_per_session {
                return Err(TooManyGrants {
                    max: self.max_per_session,
                });
            }
        }
        let mut added = 0;
        for (reply_to, grantees, until) in live {
            for grantee in grantees {
                let grant = Grant {
                    requester,
                    expires_at_ms: until,
                };
                let old = state
                    .grants
                    .insert((grantee.clone(), reply_to.clone()), grant);
                if let Some(old) = old {
                    state.release(old.requester);
                }
                // A grant this session held already is renewed, not added.
                if old.is_none_or(|old| old.requester != requester) {
                    added += 1;
                }
                *state.outstanding.entry(requester).or_default() += 1;
            }
        }
        Ok(added)
    }

    /// Whether `grantee` holds a live grant on `channel`.
    pub(crate) fn may_reply(&self, grantee: &Principal, channel: &Channel, now_ms: u64) -> bool {
        let state = self.lock();
        state
            .grants
            .get(&(grantee.clone(), channel.clone()))
            .is_some_and(|grant| grant.expires_at_ms > now_ms)
    }

    /// Takes `grantee`'s grant on `channel`: `true` once, if it is live.
    pub(crate) fn take(&self, grantee: &Principal, channel: &Channel, now_ms: u64) -> bool {
        let mut state = self.lock();
        match state.grants.remove(&(grantee.clone(), channel.clone())) {
            Some(grant) => {
                state.release(grant.requester);
                grant.expires_at_ms > now_ms
            }
            None => false,
        }
    }

    /// Drops every grant `requester` holds (its session ended).
    pub(crate) fn forget_session(&self, requester: SessionId) {
        let mut state = self.lock();
        if state.outstanding.remove(&requester).is_some() {
            state.grants.retain(|_, grant| grant.requester != requester);
        }
    }

    /// Outstanding grants of `requester`, expired ones not yet swept included.
    #[cfg(test)]
    pub(crate) fn outstanding(&self, requester: SessionId) -> usize {
        self.lock()
            .outstanding
            .get(&requester)
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl State ===

impl State {
    /// Drops expired grants.
    fn sweep(&mut self, now_ms: u64) {
        let mut released = Vec::new();
        self.grants.retain(|_, grant| {
            let live = grant.expires_at_ms > now_ms;
            if !live {
                released.push(grant.requester);
            }
            live
        });
        for requester in released {
            self.release(requester);
        }
    }

    fn release(&mut self, requester: SessionId) {
        if let Some(count) = self.outstanding.get_mut(&requester) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.outstanding.remove(&requester);
            }
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
    fn the_grants_of_one_publish_are_issued_all_or_none() {
        let grants = ReplyGrants::new(3, Duration::from_secs(60));
        grants
            .issue(1, &c("_reply.shop.alice.r0"), &[p("bob")], NOW + 1_000, NOW)
            .unwrap();
        let requests: Vec<(Channel, Vec<Principal>, u64)> = (1..=3)
            .map(|i| {
                (
                    c(&format!("_reply.shop.alice.r{i}")),
                    vec![p("bob")],
                    NOW + 1_000,
                )
            })
            .collect();
        // Three more would make four: none is issued.
        assert!(grants.issue_all(1, &requests, NOW).is_err());
        assert_eq!(grants.outstanding(1), 1);
        assert!(!grants.may_reply(&p("bob"), &c("_reply.shop.alice.r1"), NOW));
        // Two fit, together.
        assert_eq!(grants.issue_all(1, &requests[..2], NOW), Ok(2));
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
