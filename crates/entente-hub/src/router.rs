//! Routing: which sessions receive what is published on a channel.
//!
//! Sessions talk to a [`Router`] only, so a router that forwards between hubs (NATS) can replace
//! [`LocalRouter`] without touching session code. What is routed is a pre-encoded `Deliver`
//! body (sender keys and signed batches, exactly as the publisher sent them, encoded once and
//! shared by every subscriber); the hub never decrypts.
//!
//! Backpressure, nothing dropped silently: each session's outbound queue is bounded. Routing
//! first tries every matching queue without waiting; for the full ones it waits, concurrently,
//! up to the slow-consumer timeout. A subscriber still full then is disconnected
//! ([`CloseReason::SlowConsumer`]) and the delivery counts as failed in the [`RouteOutcome`],
//! which the session reports to the publisher.
//!
//! Wildcard subscriptions pass through their session's [`DeliveryGate`] channel by channel: a
//! forbid that covers the channel withholds the delivery (counted in
//! [`RouteOutcome::withheld`], neither delivered nor failed), whatever the pattern's permit.
//!
//! The directory asks the router who is subscribed to a channel
//! ([`Router::subscribers`]): the principals whose subscription patterns match it and may
//! carry it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use entente_types::{Channel, ChannelPattern, Principal};
use futures_util::future::join_all;
use tokio::sync::mpsc::error::TrySendError;

use crate::authz;
pub use crate::authz::DeliveryGate;
use crate::codec::Outbound;
use crate::control::{CloseReason, ConnectionControl};
use crate::queue::OutboundTx;

/// Identifies one session (one gRPC stream) for the life of the hub.
pub type SessionId = u64;

/// Where a session's deliveries go.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The session.
    pub session: SessionId,
    /// The session's principal (its connection's identity).
    pub principal: Principal,
    /// Its outbound queue, bounded in frames and bytes.
    pub outbound: OutboundTx,
    /// Its connection, closed if the queue stays full.
    pub connection: ConnectionControl,
    /// What its wildcard subscriptions may carry.
    pub gate: Arc<DeliveryGate>,
}

/// What became of one routed publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteOutcome {
    /// Deliveries queued.
    pub delivered: usize,
    /// Deliveries that failed (subscriber too slow, or its session closing).
    pub failed: usize,
    /// Subscribers disconnected by this publish as slow consumers.
    pub slow_consumers: usize,
    /// Subscriptions matching the channel that their [`DeliveryGate`] keeps from carrying it
    /// (a forbid on the channel, or a policy change their session has not caught up with):
    /// not delivered, and not a failure.
    pub withheld: usize,
}

/// Routes published channels to subscriptions.
pub trait Router: Send + Sync + 'static {
    /// Adds a subscription of `subscriber` (the session checked authorization and uniqueness).
    fn subscribe(&self, subscriber: &Subscriber, subscription_id: u64, pattern: ChannelPattern);

    /// Removes a subscription; returns whether it existed.
    fn unsubscribe(&self, session: SessionId, subscription_id: u64) -> bool;

    /// Removes every subscription of a session.
    fn remove_session(&self, session: SessionId);

    /// Delivers `body` (encoded `Deliver` fields 2 and 3) to every subscription matching
    /// `channel`, waiting on full queues up to the slow-consumer timeout.
    fn route(&self, channel: &Channel, body: Bytes) -> impl Future<Output = RouteOutcome> + Send;

    /// Delivers `body` once to every subscription matching at least one of `channels` (a
    /// batch of replies, each on its own reply channel), as [`route`](Self::route) does.
    fn route_any(
        &self,
        channels: &[Channel],
        body: Bytes,
    ) -> impl Future<Output = RouteOutcome> + Send;

    /// The principals holding at least one subscription whose pattern matches `channel` and
    /// that may carry it ([`DeliveryGate`]), each once, sorted. A router spanning hubs answers for all of them.
    fn subscribers(&self, channel: &Channel) -> impl Future<Output = Vec<Principal>> + Send;
}

/// Routes between the sessions of this hub.
#[derive(Debug)]
pub struct LocalRouter {
    table: RwLock<Table>,
    slow_consumer_timeout: Duration,
    /// The last reading of the queues and when it was made ([`LocalRouter::queued`]).
    queued: Mutex<Option<(Instant, Queued)>>,
}

/// Frames and bytes waiting in the outbound queues: `((frames in all, most in one queue),
/// (bytes in all, most in one queue))`.
pub type Queued = ((usize, usize), (usize, usize));

/// How long a reading of the queues serves: scrapes and exports, however many and however
/// often, walk the routing table under its lock (which a subscribe then waits for, and every
/// publish behind it) at most once a second.
const QUEUED_FRESH: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Table {
    /// Subscriptions to literal patterns, by channel name.
    literal: HashMap<String, Vec<Entry>>,
    /// Subscriptions with wildcards, by the literal tokens before their first wildcard
    /// (`a.b` for `a.b.*.c`, `_reply.shop.alice` for `_reply.shop.alice.>`, the empty string
    /// for `*.x` or `>`), each then matched one by one. A channel's candidates are those filed
    /// under its own leading tokens, whatever the others hold: every session that makes
    /// requests holds a wildcard subscription to its own reply namespace.
    wildcard: HashMap<String, Vec<Entry>>,
    /// How many wildcard subscriptions are filed under a prefix of each length in tokens:
    /// which of a channel's leading tokens are worth looking up.
    depths: BTreeMap<usize, usize>,
    /// Each session's subscriptions, by id with their patterns: where its entries are filed,
    /// so that unsubscribing and ending a session look only where its own are (with whatever
    /// else is filed there), not at every subscription.
    sessions: HashMap<SessionId, Vec<(u64, ChannelPattern)>>,
}

#[derive(Debug, Clone)]
struct Entry {
    subscription_id: u64,
    pattern: ChannelPattern,
    subscriber: Subscriber,
}

// === impl LocalRouter ===

impl LocalRouter {
    /// A router that waits up to `slow_consumer_timeout` on a full queue.
    pub fn new(slow_consumer_timeout: Duration) -> Self {
        Self {
            table: RwLock::new(Table::default()),
            slow_consumer_timeout,
            queued: Mutex::new(None),
        }
    }

    /// Frames and bytes waiting in the outbound queues of the sessions holding subscriptions,
    /// as read at most a second ago.
    pub fn queued(&self) -> Queued {
        let mut last = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, queued)) = *last
            && at.elapsed() < QUEUED_FRESH
        {
            return queued;
        }
        let queued = self.read_queued();
        *last = Some((Instant::now(), queued));
        queued
    }

    /// Frames and bytes waiting in the outbound queues, read now.
    fn read_queued(&self) -> Queued {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut seen = std::collections::HashSet::new();
        let (mut frames, mut bytes) = ((0, 0), (0, 0));
        let entries = table
            .literal
            .values()
            .flatten()
            .chain(table.wildcard.values().flatten());
        for entry in entries {
            if !seen.insert(entry.subscriber.session) {
                continue;
            }
            let (f, b) = entry.subscriber.outbound.queued();
            frames = (frames.0 + f, frames.1.max(f));
            bytes = (bytes.0 + b, bytes.1.max(b));
        }
        (frames, bytes)
    }

    /// How many subscriptions are registered.
    pub fn subscriptions(&self) -> usize {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let count =
            |entries: &HashMap<String, Vec<Entry>>| entries.values().map(Vec::len).sum::<usize>();
        count(&table.literal) + count(&table.wildcard)
    }

    /// Queues `body` for each of `targets`, waiting on full queues up to the slow-consumer
    /// timeout.
    async fn deliver(
        &self,
        targets: Vec<(u64, Subscriber)>,
        withheld: usize,
        body: Bytes,
    ) -> RouteOutcome {
        let mut outcome = RouteOutcome {
            withheld,
            ..RouteOutcome::default()
        };
        let mut waiting = Vec::new();
        for (subscription_id, subscriber) in targets {
            if subscriber.connection.is_closed() {
                outcome.failed += 1;
                continue;
            }
            let frame = Outbound::deliver(subscription_id, body.clone());
            match subscriber.outbound.try_send(frame) {
                Ok(()) => outcome.delivered += 1,
                Err(TrySendError::Full(frame)) => waiting.push((subscriber, frame)),
                Err(TrySendError::Closed(_)) => outcome.failed += 1,
            }
        }
        if waiting.is_empty() {
            return outcome;
        }
        let timeout = self.slow_consumer_timeout;
        let waits = waiting.into_iter().map(|(subscriber, frame)| async move {
            match tokio::time::timeout(timeout, subscriber.outbound.send(frame)).await {
                Ok(Ok(())) => Delivery::Queued,
                Ok(Err(_)) => Delivery::Closed,
                Err(_) if subscriber.connection.close(CloseReason::SlowConsumer) => {
                    Delivery::Disconnected
                }
                Err(_) => Delivery::Closed,
            }
        });
        for delivery in join_all(waits).await {
            match delivery {
                Delivery::Queued => outcome.delivered += 1,
                Delivery::Closed => outcome.failed += 1,
                Delivery::Disconnected => {
                    outcome.failed += 1;
                    outcome.slow_consumers += 1;
                }
            }
        }
        outcome
    }

    /// The subscriptions matching `channel` that may carry it, and how many may not.
    fn targets(&self, channel: &Channel) -> (Vec<(u64, Subscriber)>, usize) {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let literal = table.literal.get(channel.as_str()).into_iter().flatten();
        let mut targets = Vec::new();
        let mut withheld = 0;
        // The clock is read once, and only if a gate has to decide.
        let mut now_ms = None;
        for entry in literal.chain(table.wildcard_matching(channel)) {
            let now = || *now_ms.get_or_insert_with(unix_ms);
            if entry.subscriber.gate.carries(&entry.pattern, channel, now) {
                targets.push((entry.subscription_id, entry.subscriber.clone()));
            } else {
                withheld += 1;
            }
        }
        (targets, withheld)
    }
}

impl LocalRouter {
    /// The subscriptions matching at least one of `channels` (distinct) that may carry one of
    /// them, each once, and how many match but may carry none. (One delivery carries every
    /// channel's envelope: a batch of replies is one signed whole, for one principal's own
    /// reply namespace, which the gates judge by the structural rule alone.)
    fn targets_any(&self, channels: &[Channel]) -> (Vec<(u64, Subscriber)>, usize) {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut targets = Vec::new();
        let mut withheld = 0;
        let mut now_ms = None;
        // A literal subscription matches one channel, found under its name.
        for channel in channels {
            for entry in table.literal.get(channel.as_str()).into_iter().flatten() {
                let now = || *now_ms.get_or_insert_with(unix_ms);
                if entry.subscriber.gate.carries(&entry.pattern, channel, now) {
                    targets.push((entry.subscription_id, entry.subscriber.clone()));
                } else {
                    withheld += 1;
                }
            }
        }
        // A wildcard subscription may match several: each counts once, carried if it may
        // carry any of those it matches. Found by address, not by a search of those matched
        // so far: the channels are one principal's reply channels, which only its own sessions
        // may subscribe to, but that principal may hold many such subscriptions, and a search
        // would cost their square per channel under the table's lock.
        let mut matched: Vec<(&Entry, bool)> = Vec::new();
        let mut index: HashMap<*const Entry, usize> = HashMap::new();
        for channel in channels {
            for entry in table.wildcard_matching(channel) {
                let at = *index.entry(std::ptr::from_ref(entry)).or_insert_with(|| {
                    matched.push((entry, false));
                    matched.len() - 1
                });
                let Some((_, carried)) = matched.get_mut(at) else {
                    continue;
                };
                let now = || *now_ms.get_or_insert_with(unix_ms);
                if !*carried && entry.subscriber.gate.carries(&entry.pattern, channel, now) {
                    *carried = true;
                }
            }
        }
        for (entry, carried) in matched {
            if carried {
                targets.push((entry.subscription_id, entry.subscriber.clone()));
            } else {
                withheld += 1;
            }
        }
        (targets, withheld)
    }
}

impl Table {
    /// The wildcard entries whose pattern matches `channel`: only those filed under one of
    /// its leading tokens are looked at.
    fn wildcard_matching<'t>(
        &'t self,
        channel: &'t Channel,
    ) -> impl Iterator<Item = &'t Entry> + 't {
        // Patterns filed under no token begin with a wildcard, which never matches a system
        // channel (`authz::matches`): not even looked at for one.
        let system = channel.is_system();
        self.depths
            .keys()
            .filter(move |&&depth| depth > 0 || !system)
            .filter_map(|&depth| leading_tokens(channel, depth))
            .filter_map(|prefix| self.wildcard.get(prefix))
            .flatten()
            .filter(|entry| authz::matches(&entry.pattern, channel))
    }

    fn add(&mut self, entry: Entry) {
        self.sessions
            .entry(entry.subscriber.session)
            .or_default()
            .push((entry.subscription_id, entry.pattern.clone()));
        if entry.pattern.is_literal() {
            self.literal
                .entry(entry.pattern.as_str().to_owned())
                .or_default()
                .push(entry);
            return;
        }
        let (prefix, depth) = literal_prefix(&entry.pattern);
        *self.depths.entry(depth).or_default() += 1;
        self.wildcard
            .entry(prefix.to_owned())
            .or_default()
            .push(entry);
    }

    /// Removes the entries `gone` picks among those filed where `pattern` is filed; how many
    /// it removed.
    fn remove_filed(&mut self, pattern: &ChannelPattern, gone: impl Fn(&Entry) -> bool) -> usize {
        let (entries, key, depth) = match filed_under(pattern) {
            (true, name) => (&mut self.literal, name, None),
            (false, prefix) => (&mut self.wildcard, prefix, Some(literal_prefix(pattern).1)),
        };
        let Some(filed) = entries.get_mut(key) else {
            return 0;
        };
        let before = filed.len();
        filed.retain(|entry| !gone(entry));
        let removed = before - filed.len();
        if filed.is_empty() {
            entries.remove(key);
        }
        if let Some(depth) = depth.filter(|_| removed > 0) {
            let left = self.depths.get_mut(&depth).map(|n| {
                *n = n.saturating_sub(removed);
                *n
            });
            if left == Some(0) {
                self.depths.remove(&depth);
            }
        }
        removed
    }
}

/// Where a subscription to `pattern` is filed: whether among the literal ones, and its key.
fn filed_under(pattern: &ChannelPattern) -> (bool, &str) {
    if pattern.is_literal() {
        (true, pattern.as_str())
    } else {
        (false, literal_prefix(pattern).0)
    }
}

/// The literal tokens of `pattern` before its first wildcard, and how many they are.
fn literal_prefix(pattern: &ChannelPattern) -> (&str, usize) {
    let (mut end, mut depth) = (0, 0);
    for token in pattern.tokens() {
        if token == "*" || token == ">" {
            break;
        }
        end += token.len() + usize::from(depth > 0);
        depth += 1;
    }
    (pattern.as_str().get(..end).unwrap_or_default(), depth)
}

/// The first `depth` tokens of `channel`, if more follow them (a pattern with a wildcard
/// after those tokens matches only a channel with more).
fn leading_tokens(channel: &Channel, depth: usize) -> Option<&str> {
    let name = channel.as_str();
    if depth == 0 {
        return Some("");
    }
    name.match_indices('.')
        .nth(depth - 1)
        .and_then(|(at, _)| name.get(..at))
}

/// The time now, Unix milliseconds.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Router for LocalRouter {
    fn subscribe(&self, subscriber: &Subscriber, subscription_id: u64, pattern: ChannelPattern) {
        let entry = Entry {
            subscription_id,
            pattern,
            subscriber: subscriber.clone(),
        };
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        table.add(entry);
    }

    fn unsubscribe(&self, session: SessionId, subscription_id: u64) -> bool {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let Some(own) = table.sessions.get_mut(&session) else {
            return false;
        };
        let gone: Vec<ChannelPattern> = own
            .extract_if(.., |(id, _)| *id == subscription_id)
            .map(|(_, pattern)| pattern)
            .collect();
        if own.is_empty() {
            table.sessions.remove(&session);
        }
        let is_it =
            |e: &Entry| e.subscriber.session == session && e.subscription_id == subscription_id;
        let mut removed = 0;
        for pattern in &gone {
            removed += table.remove_filed(pattern, is_it);
        }
        removed > 0
    }

    fn remove_session(&self, session: SessionId) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        let own = table.sessions.remove(&session).unwrap_or_default();
        // One look at each place its entries are filed, whatever number of them are there.
        let mut looked = std::collections::HashSet::new();
        for (_, pattern) in &own {
            if looked.insert(filed_under(pattern)) {
                table.remove_filed(pattern, |e| e.subscriber.session == session);
            }
        }
    }

    async fn route(&self, channel: &Channel, body: Bytes) -> RouteOutcome {
        let (targets, withheld) = self.targets(channel);
        self.deliver(targets, withheld, body).await
    }

    async fn route_any(&self, channels: &[Channel], body: Bytes) -> RouteOutcome {
        let (targets, withheld) = self.targets_any(channels);
        self.deliver(targets, withheld, body).await
    }

    async fn subscribers(&self, channel: &Channel) -> Vec<Principal> {
        let (targets, _) = self.targets(channel);
        let mut principals: Vec<Principal> = targets
            .into_iter()
            .filter(|(_, subscriber)| !subscriber.connection.is_closed())
            .map(|(_, subscriber)| subscriber.principal)
            .collect();
        principals.sort_unstable();
        principals.dedup();
        principals
    }
}

enum Delivery {
    Queued,
    Closed,
    Disconnected,
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;
    use crate::authz::{Authz, SessionAuthz};
    use crate::queue::OutboundRx;

    /// Nobody may subscribe to `orders.payroll.>`. (The router does not decide patterns:
    /// sessions do before subscribing. Gates only withhold what a forbid covers.)
    const POLICIES: &str = r#"
        @id("no-payroll")
        forbid (principal, action == Action::"subscribe",
                resource in Namespace::"orders.payroll");
    "#;

    fn subscriber(session: SessionId, capacity: usize) -> (Subscriber, OutboundRx) {
        subscriber_of(
            &Arc::new(Authz::with_policies(POLICIES, Arc::default())),
            session,
            capacity,
        )
    }

    fn subscriber_of(
        authz: &Arc<Authz>,
        session: SessionId,
        capacity: usize,
    ) -> (Subscriber, OutboundRx) {
        let (tx, rx) = OutboundTx::channel(capacity, 1 << 20);
        let principal = principal(&format!("agent{session}"));
        (
            Subscriber {
                session,
                gate: Arc::new(DeliveryGate::new(
                    authz.clone(),
                    SessionAuthz::subject(&principal),
                    authz.engine().epoch(),
                )),
                principal,
                outbound: tx,
                connection: ConnectionControl::new(),
            },
            rx,
        )
    }

    fn principal(name: &str) -> Principal {
        Principal::parse(&format!("spiffe://example.org/agent/shop/{name}")).unwrap()
    }

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    fn c(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    fn ids(rx: &mut OutboundRx) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(frame) = rx.try_recv() {
            match frame {
                Outbound::Deliver {
                    subscription_id, ..
                } => out.push(subscription_id),
                Outbound::Frame(_) => panic!("unexpected frame"),
            }
        }
        out
    }

    /// Wildcard subscriptions are filed under their leading literal tokens: whatever the
    /// depth of that prefix (none, some, all but the wildcard), a channel reaches exactly the
    /// subscriptions whose pattern matches it, and unsubscribing or ending a session leaves
    /// nothing filed behind.
    #[tokio::test]
    async fn wildcard_subscriptions_are_found_by_their_leading_tokens() {
        let router = LocalRouter::new(Duration::from_millis(50));
        let patterns = [
            ">",
            "*",
            "*.b",
            "a.>",
            "a.*",
            "a.b.>",
            "a.*.c",
            "a.b.*",
            "a.b.c.>",
            "x.*.>",
            "_reply.shop.alice.>",
            "_reply.shop.bob.>",
            "_reply.shop.>",
        ];
        let channels = [
            "a",
            "b",
            "a.b",
            "x.b",
            "a.b.c",
            "a.x.c",
            "a.b.c.d",
            "x.y.z",
            "_reply.shop.alice.t1",
            "_reply.shop.bob.t2.u",
            "_reply.shop.alice",
        ];
        let mut receivers = Vec::new();
        for (session, pattern) in (1..).zip(patterns) {
            let (subscriber, rx) = subscriber(session, 64);
            router.subscribe(&subscriber, session * 10, p(pattern));
            receivers.push(rx);
        }
        let route_each = async |router: &LocalRouter, receivers: &mut [OutboundRx]| {
            for channel in channels {
                let outcome = router.route(&c(channel), Bytes::new()).await;
                let mut got = Vec::new();
                for rx in receivers.iter_mut() {
                    got.extend(ids(rx));
                }
                got.sort_unstable();
                let table = router.table.read().unwrap();
                let mut expected: Vec<u64> = table
                    .wildcard
                    .values()
                    .flatten()
                    .filter(|e| authz::matches(&e.pattern, &c(channel)))
                    .map(|e| e.subscription_id)
                    .collect();
                expected.sort_unstable();
                assert_eq!(got, expected, "{channel}");
                assert_eq!(outcome.delivered, expected.len(), "{channel}");
            }
        };
        route_each(&router, &mut receivers).await;
        // The reply namespaces are each found under their own root.
        let outcome = router.route(&c("_reply.shop.alice.t1"), Bytes::new()).await;
        assert_eq!(outcome.delivered, 2);
        for rx in &mut receivers {
            ids(rx);
        }
        let replies = [c("_reply.shop.alice.t1"), c("_reply.shop.bob.t2")];
        let outcome = router.route_any(&replies, Bytes::new()).await;
        assert_eq!(
            outcome.delivered, 3,
            "alice's, bob's and `_reply.shop.>`, once"
        );
        for rx in &mut receivers {
            ids(rx);
        }

        // Half unsubscribed, the other half's sessions ended: nothing left anywhere.
        for (session, _) in (1..).zip(patterns).step_by(2) {
            assert!(router.unsubscribe(session, session * 10));
        }
        route_each(&router, &mut receivers).await;
        for (session, _) in (1..).zip(patterns).skip(1).step_by(2) {
            router.remove_session(session);
        }
        assert_eq!(router.subscriptions(), 0);
        let table = router.table.read().unwrap();
        assert!(table.wildcard.is_empty() && table.depths.is_empty());
        assert!(table.sessions.is_empty());
    }

    /// The queues are read from the table at most once a second, however often asked (each
    /// reading walks every subscription under the table's lock).
    #[tokio::test]
    async fn the_queues_are_read_at_most_once_a_second() {
        let router = LocalRouter::new(Duration::from_millis(50));
        let (subscriber, _rx) = subscriber(1, 16);
        router.subscribe(&subscriber, 10, p("orders.eu"));
        router
            .route(&c("orders.eu"), Bytes::from_static(b"x"))
            .await;
        let first = router.queued();
        assert_eq!((first.0).0, 1);
        router
            .route(&c("orders.eu"), Bytes::from_static(b"x"))
            .await;
        assert_eq!(router.queued(), first, "read again within the second");
        // Once the reading is old, the next one is fresh.
        if let Some((at, _)) = router.queued.lock().unwrap().as_mut() {
            *at -= QUEUED_FRESH;
        }
        assert_eq!((router.queued().0).0, 2);
    }

    /// The table's indexes agree with what is filed: each session's list names exactly its
    /// entries, each filed where its pattern says, no place empty, and `depths` counts the
    /// wildcard entries by the depth of their prefix.
    fn assert_consistent(router: &LocalRouter) {
        let table = router.table.read().unwrap();
        let mut filed = Vec::new();
        let mut depths = BTreeMap::new();
        let places = [(true, &table.literal), (false, &table.wildcard)];
        for (literal, place) in places {
            for (key, entries) in place {
                assert!(!entries.is_empty(), "`{key}` kept empty");
                for e in entries {
                    assert_eq!(filed_under(&e.pattern), (literal, key.as_str()));
                    if !literal {
                        *depths.entry(literal_prefix(&e.pattern).1).or_insert(0) += 1;
                    }
                    let pattern = e.pattern.as_str().to_owned();
                    filed.push((e.subscriber.session, e.subscription_id, pattern));
                }
            }
        }
        assert_eq!(depths, table.depths);
        let mut listed = Vec::new();
        for (&session, own) in &table.sessions {
            assert!(!own.is_empty(), "session {session} listed with nothing");
            for (id, pattern) in own {
                listed.push((session, *id, pattern.as_str().to_owned()));
            }
        }
        filed.sort_unstable();
        listed.sort_unstable();
        assert_eq!(filed, listed);
    }

    /// Unsubscribing and ending a session find the session's own entries through its index:
    /// another session's subscription with the same id and pattern stays, an id unknown or
    /// already gone is not found, and when the last session ends nothing is filed.
    #[tokio::test]
    async fn unsubscribing_and_ending_a_session_remove_its_own_subscriptions_only() {
        let router = LocalRouter::new(Duration::from_millis(50));
        let patterns = ["orders.eu", "orders.*", "orders.>", ">", "_reply.shop.x.>"];
        let mut receivers = Vec::new();
        for session in 1..=3 {
            let (subscriber, rx) = subscriber(session, 64);
            for (id, pattern) in (1..).zip(patterns) {
                router.subscribe(&subscriber, id, p(pattern));
            }
            // Two subscriptions of one session to the same pattern are two entries.
            router.subscribe(&subscriber, 9, p("orders.*"));
            receivers.push(rx);
        }
        assert_eq!(router.subscriptions(), 18);
        let delivered_to = async |router: &LocalRouter, receivers: &mut [OutboundRx]| {
            assert_consistent(router);
            router.route(&c("orders.eu"), Bytes::new()).await;
            receivers
                .iter_mut()
                .map(|rx| ids(rx).len())
                .collect::<Vec<_>>()
        };
        assert_eq!(delivered_to(&router, &mut receivers).await, [5, 5, 5]);

        assert!(router.unsubscribe(1, 2), "session 1's `orders.*`");
        assert!(!router.unsubscribe(1, 2), "already gone");
        assert!(!router.unsubscribe(1, 7), "never there");
        assert!(!router.unsubscribe(4, 1), "no such session");
        assert!(router.unsubscribe(2, 1), "session 2's literal `orders.eu`");
        assert!(router.unsubscribe(2, 4), "session 2's `>`");
        assert_eq!(delivered_to(&router, &mut receivers).await, [4, 3, 5]);

        router.remove_session(3);
        router.remove_session(3);
        assert_eq!(delivered_to(&router, &mut receivers).await, [4, 3, 0]);
        assert_eq!(router.subscriptions(), 9);
        // The reply namespace still reaches the two left.
        let outcome = router.route(&c("_reply.shop.x.t"), Bytes::new()).await;
        assert_eq!(outcome.delivered, 2);

        router.remove_session(1);
        assert_consistent(&router);
        for id in [2, 3, 5, 9] {
            assert!(router.unsubscribe(2, id));
        }
        assert_consistent(&router);
        assert_eq!(router.subscriptions(), 0);
        let table = router.table.read().unwrap();
        assert!(table.literal.is_empty() && table.wildcard.is_empty());
        assert!(table.depths.is_empty() && table.sessions.is_empty());
    }

    #[tokio::test]
    async fn routes_to_literal_and_wildcard_subscriptions() {
        let router = LocalRouter::new(Duration::from_millis(50));
        let (a, mut a_rx) = subscriber(1, 8);
        let (b, mut b_rx) = subscriber(2, 8);
        router.subscribe(&a, 10, p("orders.eu"));
        router.subscribe(&a, 11, p("orders.*"));
        router.subscribe(&b, 20, p("orders.>"));
        router.subscribe(&b, 21, p("other"));
        router.subscribe(&b, 22, p(">"));

        let outcome = router
            .route(&c("orders.eu"), Bytes::from_static(b"x"))
            .await;
        assert_eq!(outcome.delivered, 4);
        assert_eq!(outcome.failed, 0);
        let mut got = ids(&mut a_rx);
        got.sort_unstable();
        assert_eq!(got, [10, 11]);
        let mut got = ids(&mut b_rx);
        got.sort_unstable();
        assert_eq!(got, [20, 22]);

        // `>` does not reach system channels.
        router.subscribe(&a, 12, p("_direct.s.a"));
        let outcome = router.route(&c("_direct.s.a"), Bytes::new()).await;
        assert_eq!(outcome.delivered, 1);
        assert_eq!(ids(&mut a_rx), [12]);
        assert!(ids(&mut b_rx).is_empty());

        assert!(router.unsubscribe(1, 10));
        assert!(!router.unsubscribe(1, 10));
        assert!(router.unsubscribe(2, 22));
        router.remove_session(2);
        assert_eq!(router.subscriptions(), 2);
        let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
        assert_eq!(outcome.delivered, 1);
    }

    #[tokio::test]
    async fn a_body_for_several_channels_reaches_each_matching_subscription_once() {
        let authz = Arc::new(Authz::with_policies(POLICIES, Arc::default()));
        let router = LocalRouter::new(Duration::from_millis(50));
        let (a, mut a_rx) = subscriber_of(&authz, 1, 16);
        let (b, mut b_rx) = subscriber_of(&authz, 2, 16);
        router.subscribe(&a, 1, p("orders.>"));
        router.subscribe(&a, 2, p("orders.eu"));
        router.subscribe(&a, 3, p("orders.us"));
        router.subscribe(&b, 4, p("orders.*"));
        router.subscribe(&b, 5, p("other"));

        let channels = [c("orders.eu"), c("orders.us"), c("orders.eu.x")];
        let outcome = router.route_any(&channels, Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (4, 0));
        let mut got = ids(&mut a_rx);
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(ids(&mut b_rx), [4]);

        // A subscription that may carry none of the channels is withheld once; one that may
        // carry any of them gets the body.
        let channels = [c("orders.payroll.x"), c("orders.payroll.y")];
        let outcome = router.route_any(&channels, Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (0, 1));
        let channels = [c("orders.payroll.x"), c("orders.eu.y")];
        let outcome = router.route_any(&channels, Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (1, 0));
        assert_eq!(ids(&mut a_rx), [1]);
        assert!(ids(&mut b_rx).is_empty());
    }

    #[tokio::test]
    async fn subscribers_are_the_principals_of_matching_open_subscriptions() {
        let router = LocalRouter::new(Duration::from_millis(50));
        let (a, _a_rx) = subscriber(1, 8);
        let (a2, _a2_rx) = subscriber(1, 8);
        let (b, _b_rx) = subscriber(2, 8);
        let (other, _other_rx) = subscriber(3, 8);
        let (closed, _closed_rx) = subscriber(4, 8);
        router.subscribe(&a, 1, p("orders.eu"));
        router.subscribe(&a2, 2, p("orders.*"));
        router.subscribe(&b, 1, p("orders.>"));
        router.subscribe(&other, 1, p("other"));
        router.subscribe(&closed, 1, p(">"));
        closed.connection.close(CloseReason::SlowConsumer);
        assert_eq!(
            router.subscribers(&c("orders.eu")).await,
            [principal("agent1"), principal("agent2")]
        );
        assert!(router.subscribers(&c("nothing")).await.is_empty());
        router.remove_session(2);
        assert_eq!(
            router.subscribers(&c("orders.eu")).await,
            [principal("agent1")]
        );
    }

    #[tokio::test]
    async fn a_forbid_on_a_channel_withholds_it_from_wider_wildcard_subscriptions() {
        let authz = Arc::new(Authz::with_policies(POLICIES, Arc::default()));
        let router = LocalRouter::new(Duration::from_millis(50));
        let (a, mut a_rx) = subscriber_of(&authz, 1, 16);
        let (b, mut b_rx) = subscriber_of(&authz, 2, 16);
        router.subscribe(&a, 1, p("orders.>"));
        router.subscribe(&a, 2, p("orders.*"));
        router.subscribe(&a, 3, p("orders.*.x"));
        router.subscribe(&a, 4, p(">"));
        router.subscribe(&b, 5, p("orders.eu"));

        let outcome = router.route(&c("orders.payroll.x"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (0, 3));
        let outcome = router.route(&c("orders.payroll.y.z"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (0, 2));
        assert!(ids(&mut a_rx).is_empty());
        assert!(router.subscribers(&c("orders.payroll.x")).await.is_empty());
        // `orders.payroll` itself is not in the namespace `orders.payroll`.
        let outcome = router.route(&c("orders.payroll"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (3, 0));
        assert_eq!(ids(&mut a_rx).len(), 3);

        // Channels no forbid covers still reach every matching subscription.
        let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (4, 0));
        let mut got = ids(&mut a_rx);
        got.sort_unstable();
        assert_eq!(got, [1, 2, 4]);
        assert_eq!(ids(&mut b_rx), [5]);
        assert_eq!(
            router.subscribers(&c("orders.eu.x")).await,
            [principal("agent1")]
        );

        // The gate follows the running policies: without the forbid, payroll flows again.
        let epoch = authz.replace_for_tests(&POLICIES.replace("forbid", "permit"));
        a.gate.decided_at(epoch);
        let outcome = router.route(&c("orders.payroll.x"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (3, 0));
    }

    #[tokio::test]
    async fn until_its_session_catches_up_a_subscription_carries_only_what_the_new_epoch_allows() {
        const ORDERS: &str = r#"
            @cross_segment
            permit (principal in Segment::"shop", action == Action::"subscribe",
                    resource in Namespace::"orders");
        "#;
        let authz = Arc::new(Authz::with_policies(ORDERS, Arc::default()));
        let router = LocalRouter::new(Duration::from_millis(50));
        let (a, mut a_rx) = subscriber_of(&authz, 1, 16);
        router.subscribe(&a, 1, p("orders.eu"));
        router.subscribe(&a, 2, p("orders.*"));
        router.subscribe(&a, 3, p("_direct.shop.agent1"));
        let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (2, 0));

        // The permit is withdrawn; the session has not decided its subscriptions again yet.
        authz.replace_for_tests("");
        let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (0, 2));
        // Its own direct channel is the structural rule's, which no policy changes.
        let outcome = router.route(&c("_direct.shop.agent1"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (1, 0));

        // Back again: allowed at the newest epoch, so carried even before the session catches
        // up; and once it has, the literal subscription needs no decision at all.
        let epoch = authz.replace_for_tests(ORDERS);
        let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (2, 0));
        a.gate.decided_at(epoch);
        let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
        assert_eq!((outcome.delivered, outcome.withheld), (2, 0));
        let mut got = ids(&mut a_rx);
        got.sort_unstable();
        assert_eq!(got, [1, 1, 1, 2, 2, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_disconnects_the_slow_consumer_and_reports_failure() {
        let router = LocalRouter::new(Duration::from_secs(5));
        let (slow, mut slow_rx) = subscriber(1, 1);
        let (fast, mut fast_rx) = subscriber(2, 8);
        router.subscribe(&slow, 1, p("x"));
        router.subscribe(&fast, 2, p("x"));

        let first = router.route(&c("x"), Bytes::new()).await;
        assert_eq!(first.delivered, 2);
        let second = router.route(&c("x"), Bytes::new()).await;
        assert_eq!(
            second,
            RouteOutcome {
                delivered: 1,
                failed: 1,
                slow_consumers: 1,
                withheld: 0,
            }
        );
        assert_eq!(slow.connection.reason(), Some(CloseReason::SlowConsumer));
        // Once closed, deliveries fail at once instead of waiting again.
        let third = router.route(&c("x"), Bytes::new()).await;
        assert_eq!(third.failed, 1);
        assert_eq!(third.slow_consumers, 0);
        assert_eq!(ids(&mut slow_rx).len(), 1);
        assert_eq!(ids(&mut fast_rx).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_that_drains_in_time_is_not_a_slow_consumer() {
        let router = LocalRouter::new(Duration::from_secs(5));
        let (sub, mut rx) = subscriber(1, 1);
        router.subscribe(&sub, 1, p("x"));
        router.route(&c("x"), Bytes::new()).await;
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
                if n == 2 {
                    break;
                }
            }
            n
        });
        let outcome = router.route(&c("x"), Bytes::new()).await;
        assert_eq!(outcome.delivered, 1);
        assert_eq!(reader.await.unwrap(), 2);
        assert!(!sub.connection.is_closed());
    }

    /// What routing costs with many sessions each holding a wildcard subscription to its own
    /// reply namespace, as every requester does: a measurement (release build, `--ignored
    /// --nocapture`; docs/BENCHMARKS.md, "Routing with many agents connected"), which also
    /// checks that each route reaches exactly its one subscription.
    #[tokio::test]
    #[ignore = "a measurement: run in a release build with --nocapture"]
    async fn routing_cost_with_many_reply_subscriptions() {
        let router = LocalRouter::new(Duration::from_millis(50));
        let mut receivers = Vec::new();
        let (orders, mut orders_rx) = subscriber(0, 1 << 16);
        router.subscribe(&orders, 1, p("orders.eu"));
        let rounds = 20_000u32;
        for count in [0u64, 100, 1_000, 10_000] {
            while (receivers.len() as u64) < count {
                let session = receivers.len() as u64 + 1;
                let (s, rx) = subscriber(session, 4);
                router.subscribe(&s, 1, p(&format!("_reply.shop.agent{session}.>")));
                receivers.push(rx);
            }
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                let outcome = router.route(&c("orders.eu"), Bytes::new()).await;
                assert_eq!(outcome.delivered, 1);
                while orders_rx.try_recv().is_ok() {}
            }
            let route = start.elapsed() / rounds;
            let reply = [c("_reply.shop.agent1.t")];
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                let outcome = router.route_any(&reply, Bytes::new()).await;
                assert_eq!(outcome.delivered, usize::from(count > 0));
                if let Some(rx) = receivers.first_mut() {
                    while rx.try_recv().is_ok() {}
                }
            }
            let route_any = start.elapsed() / rounds;
            // One more agent comes and goes: it subscribes and unsubscribes, or subscribes and
            // its session ends.
            let (churn, _churn_rx) = subscriber(u64::MAX, 4);
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                router.subscribe(&churn, 1, p("_reply.shop.churn.>"));
                assert!(router.unsubscribe(u64::MAX, 1));
            }
            let unsubscribe = start.elapsed() / rounds;
            let start = std::time::Instant::now();
            for _ in 0..rounds {
                router.subscribe(&churn, 1, p("_reply.shop.churn.>"));
                router.remove_session(u64::MAX);
            }
            let session_end = start.elapsed() / rounds;
            println!(
                "{count} reply subscriptions: route {route:?}, route_any of one reply \
                 {route_any:?}, subscribe + unsubscribe {unsubscribe:?}, subscribe + session \
                 end {session_end:?}"
            );
        }
    }
}
