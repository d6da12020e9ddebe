//! The rate limit of an agent's unary calls (every RPC but the session:
//! [`RateLimits::agent_calls`](crate::RateLimits::agent_calls), and the throttled rate while
//! its risk score throttles it, [`crate::anomaly`]).
//!
//! A call is checked before its request is read. A refused one is answered
//! `RESOURCE_EXHAUSTED`, saying when the same call would pass (also as
//! `grpc-retry-pushback-ms`), counted as a limit hit (metrics, and the agent's risk), and
//! recorded as a session records its own: a run of one limit's refusals of one agent in one
//! record, at most once a second, with their count; what a run left unrecorded is recorded
//! by [`record_due`] within a second, or at shutdown.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use entente_audit::Outcome;
use entente_types::Principal;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::anomaly::Watch;
use crate::audit::Auditor;
use crate::limits::{Hit, Limit};
use crate::rpc::Services;
use crate::stats;

/// The least time between two records of one agent's refusals by one limit.
pub(crate) const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// How long an agent's run is remembered once recorded with nothing left to record.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The runs of refused calls, by agent and limit.
pub(crate) type CallHits = Runs<(Principal, Limit), Hit>;

/// The runs of refusals by the limits sessions check, hub-wide, by agent, limit and scope
/// (the channel or class a channel limit or a permit's `@rate` is on): not per session, so
/// that an agent opening sessions one after the other, or alternating limits, gets a record
/// of a run at most once a second all the same.
pub(crate) type LimitRuns = Runs<(Principal, Limit, String), Hit>;

/// The runs of mutual-TLS connections refused by a connection limit, by agent and limit (its
/// name, `connections` or `connections-per-agent`).
pub(crate) type ConnectionHits = Runs<(Principal, &'static str), ()>;

/// The most runs of sessions' refusals told apart by scope; past it, an agent's refusals by
/// a limit on a scope not yet counted are counted together, under the scope `(others)`.
const MAX_LIMIT_RUNS: usize = 65_536;

/// Runs of refusals by key `K` (who was refused by what), each recorded at most once every
/// [`RECORD_INTERVAL`] with the count of the refusals it stands for, and `H`, what the last
/// refusal said.
#[derive(Debug)]
pub(crate) struct Runs<K, H>(Mutex<HashMap<K, Run<H>>>);

impl<K, H> Default for Runs<K, H> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

/// One key's refusals: the last hit, how many are not recorded yet, and when the last record
/// was made.
#[derive(Debug)]
struct Run<H> {
    hit: H,
    unrecorded: u64,
    recorded_at: Option<Instant>,
}

impl<K: Hash + Eq + Clone, H: Clone> Runs<K, H> {
    /// Counts a refusal; the key it was counted under, the hit and the count to record now, if
    /// a record is due. A key not yet counted is counted as `overflow` instead once `max` keys
    /// are (a bound on what refusals from everywhere can make the hub remember).
    pub(crate) fn hit(
        &self,
        key: K,
        overflow: impl FnOnce() -> K,
        max: usize,
        hit: H,
        now: Instant,
    ) -> Option<(K, H, u64)> {
        let mut runs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let key = if runs.len() >= max && !runs.contains_key(&key) {
            overflow()
        } else {
            key
        };
        let run = runs.entry(key.clone()).or_insert_with(|| Run {
            hit: hit.clone(),
            unrecorded: 0,
            recorded_at: None,
        });
        run.hit = hit;
        run.unrecorded = run.unrecorded.saturating_add(1);
        run.take_if_due(now, false)
            .map(|(hit, count)| (key, hit, count))
    }

    /// What is due to be recorded (all that is left, when `all`); runs quiet for a while are
    /// forgotten.
    pub(crate) fn due(&self, now: Instant, all: bool) -> Vec<(K, H, u64)> {
        let mut runs = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due = Vec::new();
        runs.retain(|key, run| {
            if let Some((hit, count)) = run.take_if_due(now, all) {
                due.push((key.clone(), hit, count));
            }
            run.unrecorded > 0
                || run
                    .recorded_at
                    .is_some_and(|at| now.saturating_duration_since(at) < FORGET_AFTER)
        });
        due
    }
}

impl<H: Clone> Run<H> {
    /// The hit and the unrecorded count, if there is one and a record is due (or `now`).
    fn take_if_due(&mut self, now: Instant, now_anyway: bool) -> Option<(H, u64)> {
        let due = self
            .recorded_at
            .is_none_or(|at| now.saturating_duration_since(at) >= RECORD_INTERVAL);
        if self.unrecorded == 0 || !(due || now_anyway) {
            return None;
        }
        self.recorded_at = Some(now);
        Some((self.hit.clone(), std::mem::take(&mut self.unrecorded)))
    }
}

/// Checks a call of `principal` (whose anomaly watch is `watch`) against its limits; a
/// refusal as the status to answer, counted and recorded.
pub(crate) fn check<R>(
    services: &Services<R>,
    principal: &Principal,
    watch: &Watch,
) -> Result<(), Status> {
    let Err(hit) = services.limiters.check_call(principal, watch.throttled()) else {
        return Ok(());
    };
    watch.limited();
    stats::bump(&services.stats.rate_limited);
    services.stats.traffic.rate_limited(hit.limit);
    let retry_after_ms = hit.retry_after_ms();
    let mut status = Status::resource_exhausted(hit.reason.clone());
    if retry_after_ms > 0
        && let Ok(value) = MetadataValue::try_from(retry_after_ms.to_string())
    {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", value);
    }
    let key = (principal.clone(), hit.limit);
    let (fallback, unbounded) = (key.clone(), usize::MAX);
    if let Some((_, hit, count)) =
        services
            .call_hits
            .hit(key, || fallback, unbounded, hit, Instant::now())
    {
        record(services.authz.auditor(), principal, &hit, count);
    }
    Err(status)
}

/// Counts a session's refusal of `principal` by a rate limit (`hit`) in its run, and records
/// the run if a record is due (the first of a run at once).
pub(crate) fn limited_in_session(
    runs: &LimitRuns,
    auditor: &Auditor,
    principal: &Principal,
    hit: Hit,
) {
    let key = (principal.clone(), hit.limit, hit.scope.clone());
    let others = (principal.clone(), hit.limit, "(others)".to_owned());
    let now = Instant::now();
    if let Some(((.., scope), mut hit, count)) = runs.hit(key, || others, MAX_LIMIT_RUNS, hit, now)
    {
        // The run's scope: `(others)` for a run of several past the bound.
        hit.scope = scope;
        record(auditor, principal, &hit, count);
    }
}

/// Records the refusals a run left unrecorded once a record is due (all of them, when
/// `all`: at shutdown), of calls and of sessions.
pub(crate) fn record_due<R>(services: &Services<R>, all: bool) {
    let (now, auditor) = (Instant::now(), services.authz.auditor());
    for ((principal, _), hit, count) in services.call_hits.due(now, all) {
        record(auditor, &principal, &hit, count);
    }
    for ((principal, _, scope), mut hit, count) in services.limit_runs.due(now, all) {
        hit.scope = scope;
        record(auditor, &principal, &hit, count);
    }
    for ((principal, limit), (), count) in services.connection_hits.due(now, all) {
        record_connections(auditor, &principal, limit, count);
    }
}

/// Counts a connection of `principal` refused by connection limit `limit` in its run, and
/// records the run if a record is due (the first of a run at once).
pub(crate) fn connection_refused<R>(
    services: &Services<R>,
    principal: &Principal,
    limit: &'static str,
) {
    let key = (principal.clone(), limit);
    let (fallback, unbounded) = (key.clone(), usize::MAX);
    if let Some((_, (), count)) =
        services
            .connection_hits
            .hit(key, || fallback, unbounded, (), Instant::now())
    {
        record_connections(services.authz.auditor(), principal, limit, count);
    }
}

fn record_connections(auditor: &Auditor, principal: &Principal, limit: &str, count: u64) {
    let event = entente_audit::Event::Limit(entente_audit::LimitHit {
        principal: crate::audit::clear(principal.as_str()),
        limit: crate::audit::clear(limit),
        scope: crate::audit::clear(""),
        count,
        retry_after_ms: 0,
    });
    // A failed log refuses everything after it anyway.
    let _ = auditor.submit(principal.as_str(), Outcome::Denied, event);
}

fn record(auditor: &Auditor, principal: &Principal, hit: &Hit, count: u64) {
    let event = hit.record(principal, count);
    // A failed log refuses everything after it anyway.
    let _ = auditor.submit(principal.as_str(), Outcome::Denied, event);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn hit(limit: Limit) -> Hit {
        Hit {
            limit,
            scope: String::new(),
            retry_after: Duration::from_millis(5),
            reason: "over".to_owned(),
        }
    }

    fn called(hits: &CallHits, who: &Principal, limit: Limit, now: Instant) -> Option<(Hit, u64)> {
        let key = (who.clone(), limit);
        hits.hit(key.clone(), || key, usize::MAX, hit(limit), now)
            .map(|(_, hit, count)| (hit, count))
    }

    #[test]
    fn a_run_of_refusals_is_recorded_at_most_once_a_second_and_nothing_is_lost() {
        let hits = CallHits::default();
        let alice = Principal::parse("spiffe://example.org/agent/shop/alice").unwrap();
        let t0 = Instant::now();
        // The first refusal is recorded at once; the next ones within the second wait.
        assert_eq!(
            called(&hits, &alice, Limit::AgentCalls, t0).map(|h| h.1),
            Some(1)
        );
        for _ in 0..5 {
            assert!(called(&hits, &alice, Limit::AgentCalls, t0).is_none());
        }
        // Another limit is a run of its own.
        assert!(called(&hits, &alice, Limit::AnomalyThrottle, t0).is_some());
        assert!(hits.due(t0, false).is_empty());
        // A second later, what waited is due, with its count, once.
        let later = t0 + RECORD_INTERVAL;
        let due = hits.due(later, false);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].1.limit, due[0].2), (Limit::AgentCalls, 5));
        assert!(hits.due(later, true).is_empty());
        // At shutdown, what is left is recorded whatever the time.
        assert!(called(&hits, &alice, Limit::AgentCalls, later).is_none());
        assert_eq!(hits.due(later, true).first().map(|d| d.2), Some(1));
        // Quiet runs are forgotten.
        assert!(hits.due(later + FORGET_AFTER, false).is_empty());
        assert!(hits.0.lock().unwrap().is_empty());
    }

    #[test]
    fn keys_past_the_bound_are_counted_as_one() {
        let runs = Runs::<u32, ()>::default();
        let t0 = Instant::now();
        // Four keys of their own, then the overflow key: recorded once, the rest wait.
        for key in 0..10 {
            let counted = if key < 4 { key } else { u32::MAX };
            let first = (key < 5).then_some((counted, (), 1));
            assert_eq!(runs.hit(key, || u32::MAX, 4, (), t0), first);
        }
        assert_eq!(runs.0.lock().unwrap().len(), 5);
        // A key already counted is still its own.
        assert!(runs.hit(2, || u32::MAX, 4, (), t0).is_none());
        let mut due = runs.due(t0, true);
        due.sort_unstable();
        assert_eq!(due, vec![(2, (), 1), (u32::MAX, (), 5)]);
    }
}
