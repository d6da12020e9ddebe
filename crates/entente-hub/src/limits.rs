//! Rate limits (GCRA, through `governor`): per agent, over all its connections, in messages
//! and in bytes per second, in subscribe and unsubscribe frames per second and in unary calls
//! per second; and per channel class, in messages per second.
//!
//! A publish is checked whole, before anything else is done with it: the agent's message
//! limit, then its byte limit, then the limit of each channel class its batches go to. The
//! first limit it would exceed refuses all of it (`RATE_LIMITED`, with the time after which
//! the same publish would pass). What a publish took of the limits checked before the one that
//! refused it stays taken: refused attempts cost the agent as sent ones do, so a flood does not
//! get cheaper by being refused.
//!
//! Each agent's buckets outlive its connections (reconnecting does not refill them); buckets
//! that are full again are dropped by [`Limiters::purge`].
//!
//! Policies set rates too: a permit's `@rate` caps, per agent, what that permit allows
//! ([`PolicyRates`], docs/POLICY.md "Rates"). Those are checked after the decision, each
//! determining permit's in turn.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use entente_policy::{PolicyId, PolicyRate, PolicySet};
use entente_types::{Channel, ChannelPattern, Principal};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A rate: so many per second on average, with bursts of up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The sustained rate, per second (at least 1, at most [`Rate::MAX_PER_SECOND`]).
    pub per_second: u32,
    /// The most taken at once after a quiet period (at least 1). A publish larger than this
    /// never passes.
    pub burst: u32,
}

/// A rate for the channels a pattern matches, all of them together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRate {
    /// The channel class, e.g. `tasks.>`.
    pub pattern: ChannelPattern,
    /// Messages per second into the class, from every agent together.
    pub rate: Rate,
}

/// The hub's rate limits (docs/THREAT_MODEL.md, abuse). `None` is no limit of that kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Messages (envelopes) each agent may publish, over all its connections. Default
    /// 100 000/s, bursts of 200 000.
    pub agent_messages: Option<Rate>,
    /// Bytes of ciphertext each agent may publish, over all its connections. Default
    /// 64 MiB/s, bursts of 128 MiB.
    pub agent_bytes: Option<Rate>,
    /// Subscribe and unsubscribe frames each agent may send, over all its connections: each
    /// one is a policy decision and a change of the router. Default 1 000/s, bursts of 2 000.
    pub agent_subscriptions: Option<Rate>,
    /// Unary calls each agent may make (directory lookups, renewals, grants, approvals,
    /// administration: every RPC but the session), over all its connections. Default
    /// 1 000/s, bursts of 2 000.
    pub agent_calls: Option<Rate>,
    /// Messages per second into channel classes; a channel counts against the first class
    /// whose pattern matches it. Default none.
    pub channels: Vec<ChannelRate>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            agent_messages: Some(Rate {
                per_second: 100_000,
                burst: 200_000,
            }),
            agent_bytes: Some(Rate {
                per_second: 64 << 20,
                burst: 128 << 20,
            }),
            agent_subscriptions: Some(Rate {
                per_second: 1_000,
                burst: 2_000,
            }),
            agent_calls: Some(Rate {
                per_second: 1_000,
                burst: 2_000,
            }),
            channels: Vec::new(),
        }
    }
}

/// Which limit a publish, subscribe, unsubscribe or call hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// [`RateLimits::agent_messages`].
    AgentMessages,
    /// [`RateLimits::agent_bytes`].
    AgentBytes,
    /// A [`ChannelRate`].
    ChannelMessages,
    /// [`RateLimits::agent_subscriptions`].
    AgentSubscriptions,
    /// [`RateLimits::agent_calls`].
    AgentCalls,
    /// The rate an agent throttled for its risk score is held to
    /// ([`AnomalyConfig::throttled`](crate::AnomalyConfig::throttled)).
    AnomalyThrottle,
    /// A permit's `@rate` (`PolicyRates`); the hit's scope is the policy's ID.
    PolicyRate,
}

impl Limit {
    /// The limit's stable name, as audit records and metrics give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AgentMessages => "agent-messages",
            Self::AgentBytes => "agent-bytes",
            Self::ChannelMessages => "channel-messages",
            Self::AgentSubscriptions => "agent-subscriptions",
            Self::AgentCalls => "agent-calls",
            Self::AnomalyThrottle => "anomaly-throttle",
            Self::PolicyRate => "policy-rate",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A publish, subscribe, unsubscribe or call refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) limit: Limit,
    /// The channel class (its pattern) for a channel limit; empty for an agent's.
    pub(crate) scope: String,
    /// When the same request would pass; zero when it never would (larger than the burst).
    pub(crate) retry_after: Duration,
    /// What was asked and what the limit allows, for the refusal's reason.
    pub(crate) reason: String,
}

impl Hit {
    /// [`retry_after`](Self::retry_after) in whole milliseconds.
    pub(crate) fn retry_after_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_millis()).unwrap_or(u64::MAX)
    }

    /// The audit record of `count` refusals of `principal` by this hit's limit, the last of
    /// them this one (logged too, at `warn`).
    pub(crate) fn record(&self, principal: &Principal, count: u64) -> entente_audit::Event {
        tracing::warn!(
            principal = %principal,
            limit = self.limit.as_str(),
            scope = %self.scope,
            count,
            "refused by a rate limit"
        );
        entente_audit::Event::Limit(entente_audit::LimitHit {
            principal: crate::audit::clear(principal.as_str()),
            limit: crate::audit::clear(self.limit.as_str()),
            scope: crate::audit::clear(&self.scope),
            count,
            retry_after_ms: self.retry_after_ms(),
        })
    }
}

type Keyed<C> = RateLimiter<
    Principal,
    DefaultKeyedStateStore<Principal>,
    C,
    NoOpMiddleware<<C as Clock>::Instant>,
>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// What a bucket said: `None` when nothing was asked of it.
type Outcome<C> =
    Result<Result<(), governor::NotUntil<<C as Clock>::Instant>>, governor::InsufficientCapacity>;

/// The live buckets of [`RateLimits`].
pub(crate) struct Limiters<C: Clock = DefaultClock> {
    agent_messages: Option<(Rate, Keyed<C>)>,
    agent_bytes: Option<(Rate, Keyed<C>)>,
    agent_subscriptions: Option<(Rate, Keyed<C>)>,
    agent_calls: Option<(Rate, Keyed<C>)>,
    channels: Vec<(ChannelRate, Direct<C>)>,
    /// What throttled agents may send.
    throttled: Option<(Rate, Keyed<C>)>,
    clock: C,
}

impl<C: Clock> fmt::Debug for Limiters<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiters")
            .field("agent_messages", &self.agent_messages.as_ref().map(|l| l.0))
            .field("agent_bytes", &self.agent_bytes.as_ref().map(|l| l.0))
            .field(
                "agent_subscriptions",
                &self.agent_subscriptions.as_ref().map(|l| l.0),
            )
            .field("agent_calls", &self.agent_calls.as_ref().map(|l| l.0))
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl Rate {
    /// The highest rate a bucket tells apart from none: one a nanosecond.
    pub const MAX_PER_SECOND: u32 = 1_000_000_000;

    /// Refuses a rate or burst of zero, and a rate above [`Rate::MAX_PER_SECOND`] (its
    /// interval would round to nothing, and the bucket let everything through).
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.per_second == 0 || self.burst == 0 {
            return Err("rate limits need a rate and a burst of at least 1");
        }
        if self.per_second > Self::MAX_PER_SECOND {
            return Err("a rate limit is at most 1 000 000 000 a second");
        }
        Ok(())
    }
}

impl RateLimits {
    /// Refuses a rate of zero or above [`Rate::MAX_PER_SECOND`].
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        self.agent_messages
            .iter()
            .chain(&self.agent_bytes)
            .chain(&self.agent_subscriptions)
            .chain(&self.agent_calls)
            .chain(self.channels.iter().map(|c| &c.rate))
            .try_for_each(Rate::check)
    }
}

impl Limiters<DefaultClock> {
    pub(crate) fn new(limits: &RateLimits) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiters<C> {
    pub(crate) fn with_clock(limits: &RateLimits, clock: C) -> Self {
        let keyed = |rate: &Rate| {
            let limiter = RateLimiter::new(
                quota(*rate),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            );
            (*rate, limiter)
        };
        Self {
            agent_messages: limits.agent_messages.as_ref().map(keyed),
            agent_bytes: limits.agent_bytes.as_ref().map(keyed),
            agent_subscriptions: limits.agent_subscriptions.as_ref().map(keyed),
            agent_calls: limits.agent_calls.as_ref().map(keyed),
            channels: limits
                .channels
                .iter()
                .map(|c| {
                    let limiter =
                        RateLimiter::new(quota(c.rate), InMemoryState::default(), clock.clone());
                    (c.clone(), limiter)
                })
                .collect(),
            throttled: None,
            clock,
        }
    }

    /// Holds throttled agents to `rate` ([`check_throttled`](Self::check_throttled)).
    pub(crate) fn with_throttle(mut self, rate: Rate) -> Self {
        let limiter = RateLimiter::new(
            quota(rate),
            DefaultKeyedStateStore::default(),
            self.clock.clone(),
        );
        self.throttled = Some((rate, limiter));
        self
    }

    /// Checks (and takes from) the throttled rate of `agent` (an agent its risk score
    /// throttles), for `n` messages or frames.
    pub(crate) fn check_throttled(&self, agent: &Principal, n: u64) -> Result<(), Hit> {
        let Some((rate, limiter)) = &self.throttled else {
            return Ok(());
        };
        let outcome = amount(n).map(|n| limiter.check_key_n(agent, n));
        self.verdict(
            outcome,
            Limit::AnomalyThrottle,
            "",
            *rate,
            n,
            "messages, frames and calls",
        )
    }

    /// Checks (and takes from) the limits for a publish by `agent` of `messages` envelopes
    /// and `bytes` of ciphertext, sent to `channels` (each with its envelope count).
    pub(crate) fn check_publish<'c>(
        &self,
        agent: &Principal,
        messages: u64,
        bytes: u64,
        channels: impl IntoIterator<Item = (&'c Channel, u64)>,
    ) -> Result<(), Hit> {
        if let Some((rate, limiter)) = &self.agent_messages {
            let outcome = amount(messages).map(|n| limiter.check_key_n(agent, n));
            self.verdict(
                outcome,
                Limit::AgentMessages,
                "",
                *rate,
                messages,
                "messages",
            )?;
        }
        if let Some((rate, limiter)) = &self.agent_bytes {
            let outcome = amount(bytes).map(|n| limiter.check_key_n(agent, n));
            self.verdict(outcome, Limit::AgentBytes, "", *rate, bytes, "bytes")?;
        }
        self.check_channel_classes(channels)
    }

    /// Checks (and takes from) the limits of the channel classes `channels` fall in (each
    /// with its envelope count). Shared by every publisher: a session checks them only once
    /// its publish is authorized, so that one may not drain a class it may not publish to.
    pub(crate) fn check_channel_classes<'c>(
        &self,
        channels: impl IntoIterator<Item = (&'c Channel, u64)>,
    ) -> Result<(), Hit> {
        if self.channels.is_empty() {
            return Ok(());
        }
        // Envelopes per channel class, in the order of the classes.
        let mut per_class = vec![0u64; self.channels.len()];
        for (channel, count) in channels {
            let class = self
                .channels
                .iter()
                .position(|(c, _)| c.pattern.matches(channel));
            if let Some(total) = class.and_then(|class| per_class.get_mut(class)) {
                *total = total.saturating_add(count);
            }
        }
        for ((class, limiter), count) in self.channels.iter().zip(per_class) {
            if count == 0 {
                continue;
            }
            let outcome = amount(count).map(|n| limiter.check_n(n));
            let scope = class.pattern.as_str();
            self.verdict(
                outcome,
                Limit::ChannelMessages,
                scope,
                class.rate,
                count,
                "messages",
            )?;
        }
        Ok(())
    }

    /// Checks (and takes from) `agent`'s limit of subscribe and unsubscribe frames, for one.
    pub(crate) fn check_subscription(&self, agent: &Principal) -> Result<(), Hit> {
        let Some((rate, limiter)) = &self.agent_subscriptions else {
            return Ok(());
        };
        let outcome = amount(1).map(|n| limiter.check_key_n(agent, n));
        self.verdict(
            outcome,
            Limit::AgentSubscriptions,
            "",
            *rate,
            1,
            "subscribe/unsubscribe frame(s)",
        )
    }

    /// Checks (and takes from) `agent`'s limit of unary calls, for one; and its throttled
    /// rate first when `throttled` (its risk score throttles it).
    pub(crate) fn check_call(&self, agent: &Principal, throttled: bool) -> Result<(), Hit> {
        if throttled {
            self.check_throttled(agent, 1)?;
        }
        let Some((rate, limiter)) = &self.agent_calls else {
            return Ok(());
        };
        let outcome = amount(1).map(|n| limiter.check_key_n(agent, n));
        self.verdict(outcome, Limit::AgentCalls, "", *rate, 1, "call(s)")
    }

    /// Whether any channel class is limited (else a publish's channels need not be read).
    pub(crate) fn has_channel_classes(&self) -> bool {
        !self.channels.is_empty()
    }

    /// Drops the agents' buckets that are full again (as good as new).
    pub(crate) fn purge(&self) {
        let keyed = self
            .agent_messages
            .iter()
            .chain(&self.agent_bytes)
            .chain(&self.agent_subscriptions)
            .chain(&self.agent_calls)
            .chain(&self.throttled);
        for (_, limiter) in keyed {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn verdict(
        &self,
        outcome: Option<Outcome<C>>,
        limit: Limit,
        scope: &str,
        rate: Rate,
        asked: u64,
        unit: &str,
    ) -> Result<(), Hit> {
        verdict(&self.clock, outcome, limit, scope, asked, unit, || {
            format!("{} {unit}/s, bursts of {}", rate.per_second, rate.burst)
        })
    }
}

/// The buckets of the running policies' `@rate`s: one per (permit, agent).
///
/// A request is charged to every determining permit that has a rate, in the order of the
/// decision's policies, and refused by the first that is empty: a rate only ever restricts,
/// even when another permit also allows the request. What the permits charged before the one
/// that refused took stays taken, as with [`Limiters`].
pub(crate) struct PolicyRates<C: Clock = DefaultClock> {
    rates: HashMap<PolicyId, (PolicyRate, Arc<Keyed<C>>)>,
    clock: C,
}

impl<C: Clock> fmt::Debug for PolicyRates<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyRates")
            .field("rated", &self.rates.len())
            .finish()
    }
}

impl Default for PolicyRates<DefaultClock> {
    fn default() -> Self {
        Self::empty(DefaultClock::default())
    }
}

impl<C: Clock + Clone> PolicyRates<C> {
    /// No rates, on `clock`.
    pub(crate) fn empty(clock: C) -> Self {
        Self {
            rates: HashMap::new(),
            clock,
        }
    }

    /// The buckets of `set`'s rated permits. A permit `previous` had with the same ID and
    /// rate keeps its buckets: loading policies again does not refill them.
    pub(crate) fn of(set: &PolicySet, previous: &Self) -> Self {
        let rates = set
            .rated()
            .map(|(id, rate)| {
                let limiter = match previous.rates.get(id) {
                    Some((old, limiter)) if *old == rate => limiter.clone(),
                    _ => Arc::new(RateLimiter::new(
                        policy_quota(rate),
                        DefaultKeyedStateStore::default(),
                        previous.clock.clone(),
                    )),
                };
                (id.clone(), (rate, limiter))
            })
            .collect();
        Self {
            rates,
            clock: previous.clock.clone(),
        }
    }

    /// Whether no running permit has a rate (then nothing need be charged).
    pub(crate) fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }

    /// Charges `n` requests (messages, or one subscription) of `agent` to each of `policies`
    /// that has a rate.
    pub(crate) fn charge(
        &self,
        agent: &Principal,
        policies: &[PolicyId],
        n: u64,
        unit: &str,
    ) -> Result<(), Hit> {
        for id in policies {
            let Some((rate, limiter)) = self.rates.get(id) else {
                continue;
            };
            // More than the burst never passes, and is not asked of the bucket (whose
            // arithmetic is bounded by the burst, `PolicyRate::parse`).
            let outcome = if n > u64::from(rate.burst) {
                Some(Err(governor::InsufficientCapacity(rate.burst)))
            } else {
                amount(n).map(|n| limiter.check_key_n(agent, n))
            };
            verdict(
                &self.clock,
                outcome,
                Limit::PolicyRate,
                id.as_str(),
                n,
                unit,
                || rate.to_string(),
            )?;
        }
        Ok(())
    }

    /// Drops the buckets that are full again.
    pub(crate) fn purge(&self) {
        for (_, limiter) in self.rates.values() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// A bucket's answer as a [`Hit`] (the reason in words, made only for a refusal), or `Ok`.
fn verdict<C: Clock>(
    clock: &C,
    outcome: Option<Outcome<C>>,
    limit: Limit,
    scope: &str,
    asked: u64,
    unit: &str,
    allows: impl FnOnce() -> String,
) -> Result<(), Hit> {
    let named = || {
        let allows = allows();
        if scope.is_empty() {
            format!("the {limit} limit ({allows})")
        } else {
            format!("the {limit} limit of `{scope}` ({allows})")
        }
    };
    let (retry_after, reason) = match outcome {
        // Nothing to count: nothing to limit.
        None | Some(Ok(Ok(()))) => return Ok(()),
        Some(Ok(Err(not_until))) => {
            let wait = not_until.wait_time_from(clock.now());
            // Whole milliseconds, rounded up: retrying after the time given passes.
            let wait = Duration::from_millis(
                u64::try_from(wait.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
            );
            (
                wait,
                format!(
                    "{asked} {unit} exceed {}; retry after {} ms",
                    named(),
                    wait.as_millis()
                ),
            )
        }
        Some(Err(_)) => (
            Duration::ZERO,
            format!(
                "{asked} {unit} at once exceed the burst of {}; send fewer at once",
                named()
            ),
        ),
    };
    Err(Hit {
        limit,
        scope: scope.to_owned(),
        retry_after,
        reason,
    })
}

fn policy_quota(rate: PolicyRate) -> Quota {
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(rate.interval())
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

fn quota(rate: Rate) -> Quota {
    let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

/// `n` as a bucket amount: `None` for zero (nothing to take); above `u32::MAX`, `u32::MAX`
/// (more than any burst, so refused as too large).
fn amount(n: u64) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn agent(name: &str) -> Principal {
        Principal::parse(&format!("spiffe://example.org/agent/demo/{name}")).unwrap()
    }

    fn limits(messages: Rate, channels: Vec<ChannelRate>) -> RateLimits {
        RateLimits {
            agent_messages: Some(messages),
            agent_bytes: Some(Rate {
                per_second: 1000,
                burst: 2000,
            }),
            agent_subscriptions: Some(Rate {
                per_second: 2,
                burst: 3,
            }),
            agent_calls: Some(Rate {
                per_second: 4,
                burst: 5,
            }),
            channels,
        }
    }

    #[test]
    fn subscribe_and_unsubscribe_frames_are_limited_per_agent() {
        let clock = FakeRelativeClock::default();
        let generous = Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        let limiters = Limiters::with_clock(&limits(generous, Vec::new()), clock.clone());
        let (alice, bob) = (agent("alice"), agent("bob"));
        for _ in 0..3 {
            limiters.check_subscription(&alice).unwrap();
        }
        let hit = limiters.check_subscription(&alice).unwrap_err();
        assert_eq!(hit.limit, Limit::AgentSubscriptions);
        assert_eq!(hit.retry_after, Duration::from_millis(500));
        assert!(hit.reason.contains("agent-subscriptions"), "{}", hit.reason);
        limiters.check_subscription(&bob).unwrap();
        // Publishing is a bucket of its own.
        let none: [(&Channel, u64); 0] = [];
        limiters.check_publish(&alice, 1, 1, none).unwrap();
        clock.advance(Duration::from_millis(500));
        limiters.check_subscription(&alice).unwrap();
        // No limit set: nothing is refused.
        let mut off = limits(generous, Vec::new());
        off.agent_subscriptions = None;
        let limiters = Limiters::with_clock(&off, clock);
        for _ in 0..100 {
            limiters.check_subscription(&alice).unwrap();
        }
    }

    #[test]
    fn calls_are_limited_per_agent_and_a_throttled_agent_by_its_throttle_first() {
        let clock = FakeRelativeClock::default();
        let generous = Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        let throttle = Rate {
            per_second: 1,
            burst: 2,
        };
        let limiters = Limiters::with_clock(&limits(generous, Vec::new()), clock.clone())
            .with_throttle(throttle);
        let (alice, bob) = (agent("alice"), agent("bob"));
        for _ in 0..5 {
            limiters.check_call(&alice, false).unwrap();
        }
        let hit = limiters.check_call(&alice, false).unwrap_err();
        assert_eq!(hit.limit, Limit::AgentCalls);
        assert_eq!(hit.retry_after, Duration::from_millis(250));
        assert!(hit.reason.contains("agent-calls"), "{}", hit.reason);
        // Subscriptions are a bucket of their own; so is every other agent.
        limiters.check_subscription(&alice).unwrap();
        limiters.check_call(&bob, false).unwrap();
        // Throttled, Bob is held to the throttled rate, which his calls take from.
        limiters.check_call(&bob, true).unwrap();
        limiters.check_call(&bob, true).unwrap();
        let hit = limiters.check_call(&bob, true).unwrap_err();
        assert_eq!(hit.limit, Limit::AnomalyThrottle);
        clock.advance(Duration::from_secs(1));
        limiters.check_call(&bob, true).unwrap();
        // No limit set: only the throttle refuses.
        let mut off = limits(generous, Vec::new());
        off.agent_calls = None;
        let limiters = Limiters::with_clock(&off, clock);
        for _ in 0..100 {
            limiters.check_call(&alice, false).unwrap();
        }
    }

    #[test]
    fn an_agent_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: 10,
            burst: 20,
        };
        let limiters = Limiters::with_clock(&limits(rate, Vec::new()), clock.clone());
        let (alice, bob) = (agent("alice"), agent("bob"));
        let none: [(&Channel, u64); 0] = [];
        limiters.check_publish(&alice, 20, 20, none).unwrap();
        let hit = limiters.check_publish(&alice, 1, 1, none).unwrap_err();
        assert_eq!(hit.limit, Limit::AgentMessages);
        // One message every 100 ms.
        assert_eq!(hit.retry_after, Duration::from_millis(100));
        assert!(hit.reason.contains("retry after 100 ms"), "{}", hit.reason);
        // Bob has his own bucket.
        limiters.check_publish(&bob, 20, 20, none).unwrap();
        clock.advance(Duration::from_millis(100));
        limiters.check_publish(&alice, 1, 1, none).unwrap();
        // More than the burst never passes.
        let hit = limiters.check_publish(&bob, 21, 1, none).unwrap_err();
        assert_eq!(hit.retry_after, Duration::ZERO);
        assert!(hit.reason.contains("send fewer at once"), "{}", hit.reason);
    }

    #[test]
    fn bytes_are_limited_too() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        let limiters = Limiters::with_clock(&limits(rate, Vec::new()), clock);
        let none: [(&Channel, u64); 0] = [];
        limiters.check_publish(&agent("a"), 1, 2000, none).unwrap();
        let hit = limiters
            .check_publish(&agent("a"), 1, 500, none)
            .unwrap_err();
        assert_eq!(hit.limit, Limit::AgentBytes);
        assert_eq!(hit.retry_after, Duration::from_millis(500));
    }

    #[test]
    fn a_channel_class_is_shared_and_the_first_matching_class_counts() {
        let clock = FakeRelativeClock::default();
        let class = |pattern: &str, per_second| ChannelRate {
            pattern: ChannelPattern::parse(pattern).unwrap(),
            rate: Rate {
                per_second,
                burst: per_second,
            },
        };
        let generous = Rate {
            per_second: 1_000_000,
            burst: 1_000_000,
        };
        let mut limits = limits(generous, vec![class("tasks.>", 5), class(">", 1000)]);
        limits.agent_bytes = None;
        let limiters = Limiters::with_clock(&limits, clock);
        let tasks = Channel::parse("tasks.eu").unwrap();
        let other = Channel::parse("news.eu").unwrap();
        limiters
            .check_publish(&agent("a"), 3, 0, [(&tasks, 3)])
            .unwrap();
        // Another agent shares the class's bucket.
        let hit = limiters
            .check_publish(&agent("b"), 3, 0, [(&tasks, 3), (&other, 0)])
            .unwrap_err();
        assert_eq!(hit.limit, Limit::ChannelMessages);
        assert_eq!(hit.scope, "tasks.>");
        assert!(hit.retry_after > Duration::ZERO);
        // `news.eu` counts against `>` only.
        limiters
            .check_publish(&agent("b"), 500, 0, [(&other, 500)])
            .unwrap();
    }

    #[test]
    fn purged_buckets_are_the_full_ones() {
        let clock = FakeRelativeClock::default();
        let rate = Rate {
            per_second: 10,
            burst: 10,
        };
        let limiters = Limiters::with_clock(&limits(rate, Vec::new()), clock.clone());
        let none: [(&Channel, u64); 0] = [];
        limiters.check_publish(&agent("a"), 10, 1, none).unwrap();
        limiters.purge();
        // Still empty after the purge: the bucket was kept.
        assert!(limiters.check_publish(&agent("a"), 1, 1, none).is_err());
        clock.advance(Duration::from_secs(10));
        limiters.purge();
        let (_, keyed) = limiters.agent_messages.as_ref().unwrap();
        assert!(keyed.is_empty());
    }

    #[test]
    fn every_rated_permit_of_a_decision_is_charged_per_agent_and_reloads_keep_buckets() {
        let clock = FakeRelativeClock::default();
        let set = |text: &str| PolicySet::parse("p.cedar", text).unwrap();
        let first = set(r#"
            @id("wide") @rate("10/s")
            permit (principal, action == Action::"publish", resource in Namespace::"a");
            @id("narrow") @rate("2/s") @burst("1")
            permit (principal, action == Action::"publish", resource == Channel::"a.b");
            @id("free")
            permit (principal, action == Action::"publish", resource in Namespace::"c");
        "#);
        let rates = PolicyRates::of(&first, &PolicyRates::empty(clock.clone()));
        assert!(!rates.is_empty());
        let ids = |names: &[&str]| -> Vec<PolicyId> {
            names
                .iter()
                .map(|n| first.policy(n).unwrap().id.clone())
                .collect()
        };
        let (a, b) = (agent("a"), agent("b"));
        // `narrow` allows one at once, then one every 500 ms, whatever `wide` allows.
        rates
            .charge(&a, &ids(&["narrow", "wide"]), 1, "messages")
            .unwrap();
        let hit = rates
            .charge(&a, &ids(&["narrow", "wide"]), 1, "messages")
            .unwrap_err();
        assert_eq!(
            (hit.limit, hit.scope.as_str()),
            (Limit::PolicyRate, "narrow")
        );
        assert_eq!(hit.retry_after, Duration::from_millis(500));
        assert!(
            hit.reason
                .contains("the policy-rate limit of `narrow` (2/s, bursts of 1)"),
            "{}",
            hit.reason
        );
        // Another agent has its own bucket; a permit without a rate charges nothing.
        rates.charge(&b, &ids(&["narrow"]), 1, "messages").unwrap();
        rates
            .charge(&a, &ids(&["free"]), 1_000, "messages")
            .unwrap();
        let hit = rates
            .charge(&a, &ids(&["wide"]), 11, "messages")
            .unwrap_err();
        assert!(hit.reason.contains("send fewer at once"), "{}", hit.reason);
        assert_eq!(hit.retry_after, Duration::ZERO);

        // Loading again keeps the buckets of unchanged rates; a changed rate starts afresh.
        let second = set(r#"
            @id("wide") @rate("10/s")
            permit (principal, action == Action::"publish", resource in Namespace::"a");
            @id("narrow") @rate("3/s") @burst("1")
            permit (principal, action == Action::"publish", resource == Channel::"a.b");
        "#);
        rates.charge(&a, &ids(&["wide"]), 8, "messages").unwrap();
        let reloaded = PolicyRates::of(&second, &rates);
        assert!(reloaded.charge(&a, &ids(&["wide"]), 2, "messages").is_err());
        reloaded
            .charge(&a, &ids(&["narrow"]), 1, "messages")
            .unwrap();
        // Buckets full again are purged.
        clock.advance(Duration::from_secs(10));
        reloaded.purge();
        assert!(reloaded.rates.values().all(|(_, l)| l.is_empty()));
        assert!(
            PolicyRates::of(
                &set("permit (principal, action, resource in Namespace::\"z\");"),
                &reloaded
            )
            .is_empty()
        );
        // The slowest rate with the largest burst the loader takes: any amount is answered.
        let slow = set(r#"
            @id("slow") @rate("1/h") @burst("744")
            permit (principal, action == Action::"publish", resource in Namespace::"a");
        "#);
        let rates = PolicyRates::of(&slow, &PolicyRates::empty(clock.clone()));
        let slow_id = vec![slow.policy("slow").unwrap().id.clone()];
        for n in [u64::MAX, u64::from(u32::MAX), 745] {
            let hit = rates.charge(&a, &slow_id, n, "messages").unwrap_err();
            assert!(hit.reason.contains("send fewer at once"), "{}", hit.reason);
        }
        rates.charge(&a, &slow_id, 744, "messages").unwrap();
        let hit = rates.charge(&a, &slow_id, 1, "messages").unwrap_err();
        assert_eq!(hit.retry_after, Duration::from_secs(3600));
    }

    #[test]
    fn zero_rates_are_refused() {
        let mut limits = RateLimits::default();
        assert!(limits.check().is_ok());
        limits.agent_bytes = Some(Rate {
            per_second: 0,
            burst: 1,
        });
        assert!(limits.check().is_err());
        // A rate whose interval would round to nothing would let everything through.
        for (per_second, ok) in [
            (Rate::MAX_PER_SECOND, true),
            (Rate::MAX_PER_SECOND + 1, false),
        ] {
            limits.agent_bytes = Some(Rate {
                per_second,
                burst: 1,
            });
            assert_eq!(limits.check().is_ok(), ok, "{per_second}");
        }
    }
}
