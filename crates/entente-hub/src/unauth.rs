//! The bound on connections not yet authenticated: from the TCP accept until the TLS handshake
//! is done and the connection registered (for the mutual-TLS listener; a connection refused
//! after its handshake, while it is told why), or until the connection ends (for enrollment,
//! which never authenticates a client). The mutual-TLS connection limits apply only to
//! registered connections, so without this anyone reaching the port could hold as many
//! handshakes and enrollment connections open as the hub has memory and descriptors.
//!
//! A source ([`HubConfig::max_unauthenticated_per_source`]) past its bound has its new
//! connection closed at once, before any TLS. When the hub's bound is reached
//! ([`HubConfig::max_unauthenticated`]), room is made for a connection from a source that
//! would then hold no more than the source holding the most, at that source's expense (its
//! oldest connection not yet authenticated is closed), so that a few sources can't keep
//! everyone else out: filling the hub takes as many sources as it has room, each holding an
//! equal share. Any other connection is refused. Each refusal or eviction is counted
//! (`connection_limit_hits`, the `unauthenticated` or `unauthenticated-per-source` limit in the
//! metrics) and recorded, one record per limit and source at most once a second with the count
//! of those it stands for (calls' runs, [`crate::calls`]).
//!
//! A source is an IPv4 address, or the /64 an IPv6 address is in (one host commonly holds a
//! whole /64); an IPv4 address mapped into IPv6 is its IPv4 address.
//!
//! [`HubConfig::max_unauthenticated`]: crate::HubConfig::max_unauthenticated
//! [`HubConfig::max_unauthenticated_per_source`]: crate::HubConfig::max_unauthenticated_per_source

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use entente_audit::{Event, LimitHit, Outcome};
use tokio::sync::Notify;

use crate::audit::{self, Auditor};
use crate::calls::Runs;

/// Most sources whose refusals are recorded apart; those of further sources are recorded
/// together, under the scope [`Refusal::OTHER_SOURCES`].
const MAX_RECORDED_SOURCES: usize = 1024;

/// Where a connection comes from, for its source's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    /// The source of a peer at `ip`.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Self(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => Self(v4),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Which bound refused a connection (or closed one to make room), and whose: `None` in the
/// records only, for the sources past [`MAX_RECORDED_SOURCES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The hub holds as many connections not yet authenticated as it may: the source's new
    /// connection was refused, or its oldest closed to make room for another's.
    Hub(Option<Source>),
    /// The source holds as many as it may.
    Source(Option<Source>),
}

impl Refusal {
    /// The scope of the records of sources past [`MAX_RECORDED_SOURCES`].
    const OTHER_SOURCES: &'static str = "(other sources)";

    /// The limit's name in metrics and audit records.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Hub(_) => "unauthenticated",
            Self::Source(_) => "unauthenticated-per-source",
        }
    }

    /// The same limit, for the sources past [`MAX_RECORDED_SOURCES`].
    fn of_other_sources(self) -> Self {
        match self {
            Self::Hub(_) => Self::Hub(None),
            Self::Source(_) => Self::Source(None),
        }
    }

    fn scope(self) -> String {
        match self {
            Self::Hub(Some(source)) | Self::Source(Some(source)) => source.to_string(),
            Self::Hub(None) | Self::Source(None) => Self::OTHER_SOURCES.to_owned(),
        }
    }
}

/// The connections not yet authenticated, in all and by source, and the runs of refusals.
#[derive(Debug)]
pub(crate) struct Unauthenticated {
    max: usize,
    max_per_source: usize,
    held: Mutex<Held>,
    next_id: AtomicU64,
    refusals: Runs<Refusal, ()>,
}

/// Each source's connections, oldest first, each with what tells it it was closed.
#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_source: HashMap<Source, VecDeque<(u64, Arc<Notify>)>>,
}

/// A connection counted as not yet authenticated, until this is dropped (or until the hub
/// closes it to make room: [`evicted`](Self::evicted)).
#[derive(Debug)]
pub(crate) struct Pending {
    gate: Arc<Unauthenticated>,
    source: Source,
    id: u64,
    evicted: Arc<Notify>,
}

impl Unauthenticated {
    pub(crate) fn new(max: usize, max_per_source: usize) -> Self {
        Self {
            max,
            max_per_source,
            held: Mutex::default(),
            next_id: AtomicU64::new(0),
            refusals: Runs::default(),
        }
    }

    /// Counts a connection from `peer`, unless a bound refuses it; with it, the source whose
    /// oldest connection was closed to make room, if one was.
    pub(crate) fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
    ) -> Result<(Pending, Option<Source>), Refusal> {
        let source = Source::of(peer);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = held.by_source.get(&source).map_or(0, VecDeque::len);
        if from_source >= self.max_per_source {
            return Err(Refusal::Source(Some(source)));
        }
        let mut evicted = None;
        if held.total >= self.max {
            // The source holding the most gives up its oldest, if it holds more than this
            // one would once admitted.
            let heaviest = held
                .by_source
                .iter()
                .max_by_key(|(_, queue)| queue.len())
                .map(|(heavy, queue)| (*heavy, queue.len()));
            let Some((heavy, _)) = heaviest.filter(|(_, count)| *count > from_source + 1) else {
                return Err(Refusal::Hub(Some(source)));
            };
            // It holds two at least: it stays listed.
            if let Some(queue) = held.by_source.get_mut(&heavy)
                && let Some((_, closed)) = queue.pop_front()
            {
                closed.notify_one();
                held.total = held.total.saturating_sub(1);
                evicted = Some(heavy);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = Arc::new(Notify::new());
        held.by_source
            .entry(source)
            .or_default()
            .push_back((id, Arc::clone(&closed)));
        held.total += 1;
        let pending = Pending {
            gate: Arc::clone(self),
            source,
            id,
            evicted: closed,
        };
        Ok((pending, evicted))
    }

    /// Counts `refusal` and records it, if a record of its run is due.
    pub(crate) fn refused(&self, auditor: &Auditor, refusal: Refusal, now: Instant) {
        let overflow = || refusal.of_other_sources();
        if let Some((counted, (), count)) =
            self.refusals
                .hit(refusal, overflow, MAX_RECORDED_SOURCES, (), now)
        {
            record(auditor, counted, count);
        }
    }

    /// Records the refusals left unrecorded once due (all of them, when `all`: at shutdown).
    pub(crate) fn record_due(&self, auditor: &Auditor, all: bool) {
        for (refusal, (), count) in self.refusals.due(Instant::now(), all) {
            record(auditor, refusal, count);
        }
    }

    /// How many connections are held now.
    pub(crate) fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// How many connections are held now, in all and from `source`.
    #[cfg(test)]
    fn held(&self, source: Source) -> (usize, usize) {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = held.by_source.get(&source).map_or(0, VecDeque::len);
        (held.total, from_source)
    }
}

impl Pending {
    /// Resolves once the hub closed this connection to make room for one from a source
    /// holding fewer (it is no longer counted); then it should end.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// Runs `work` for this connection until it ends, or until the connection is evicted.
    pub(crate) async fn until_evicted(self, work: impl Future<Output = ()>) {
        tokio::select! {
            () = work => {}
            () = self.evicted() => {}
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut held = self
            .gate
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = held.by_source.get_mut(&self.source) else {
            return;
        };
        // Not there if evicted: no longer counted.
        let Some(at) = queue.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        queue.remove(at);
        if queue.is_empty() {
            held.by_source.remove(&self.source);
        }
        held.total = held.total.saturating_sub(1);
    }
}

fn record(auditor: &Auditor, refusal: Refusal, count: u64) {
    // At most once a second per limit and source, and for the first of a run: bounded.
    tracing::warn!(
        limit = refusal.name(),
        scope = %refusal.scope(),
        count,
        "connections refused before authentication"
    );
    let event = Event::Limit(LimitHit {
        principal: audit::clear(audit::ANONYMOUS),
        limit: audit::clear(refusal.name()),
        scope: audit::clear(&refusal.scope()),
        count,
        retry_after_ms: 0,
    });
    // A failed log refuses every connection after the handshake anyway.
    let _ = auditor.submit(audit::ANONYMOUS, Outcome::Denied, event);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use futures_util::FutureExt as _;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sources_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(Source::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
        assert_eq!(
            Source::of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            Source::of(ip("2001:db8:1:2::1"))
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::1")),
            Source::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
        );
    }

    #[test]
    fn each_source_holds_at_most_its_bound_until_connections_go() {
        let gate = Arc::new(Unauthenticated::new(10, 2));
        let a = ip("192.0.2.1");
        let (a1, _) = gate.admit(a).unwrap();
        let (_a2, _) = gate.admit(a).unwrap();
        assert_eq!(
            gate.admit(a).unwrap_err(),
            Refusal::Source(Some(Source::of(a)))
        );
        // Another host of the same /64 is the same source.
        let _b1 = gate.admit(ip("2001:db8::1")).unwrap();
        let _b2 = gate.admit(ip("2001:db8::2")).unwrap();
        assert!(gate.admit(ip("2001:db8::3")).is_err());
        assert_eq!(gate.held(Source::of(a)), (4, 2));
        // One gone, its source may connect again.
        drop(a1);
        assert_eq!(gate.held(Source::of(a)), (3, 1));
        let _a3 = gate.admit(a).unwrap();
        assert_eq!(gate.held(Source::of(a)), (4, 2));
    }

    #[test]
    fn a_full_hub_makes_room_at_the_expense_of_the_source_holding_most() {
        let gate = Arc::new(Unauthenticated::new(4, 3));
        let (heavy, light, other) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let (oldest, _) = gate.admit(heavy).unwrap();
        let _heavy = [gate.admit(heavy).unwrap(), gate.admit(heavy).unwrap()];
        let (_light, evicted) = gate.admit(light).unwrap();
        assert_eq!(evicted, None);
        // Full: a newcomer takes the place of the heaviest source's oldest, which is told.
        assert!(oldest.evicted().now_or_never().is_none());
        let (newcomer, evicted) = gate.admit(other).unwrap();
        assert_eq!(evicted, Some(Source::of(heavy)));
        assert!(oldest.evicted().now_or_never().is_some());
        assert_eq!(gate.held(Source::of(heavy)), (4, 2));
        // The evicted one is no longer counted: its end changes nothing.
        drop(oldest);
        assert_eq!(gate.held(Source::of(heavy)), (4, 2));
        // Nobody gives way to a source that would then hold as many as it.
        let refused = |peer: IpAddr| gate.admit(peer).map(|(_, evicted)| evicted).unwrap_err();
        assert_eq!(refused(other), Refusal::Hub(Some(Source::of(other))));
        assert_eq!(refused(heavy), Refusal::Hub(Some(Source::of(heavy))));
        let (_fourth, evicted) = gate.admit(ip("192.0.2.4")).unwrap();
        assert_eq!(evicted, Some(Source::of(heavy)));
        // Each of four sources holds one: the hub is full for a fifth.
        let fifth = ip("192.0.2.5");
        assert_eq!(refused(fifth), Refusal::Hub(Some(Source::of(fifth))));
        drop(newcomer);
        assert_eq!(gate.len(), 3);
    }

    #[test]
    fn what_an_evicted_connection_does_ends() {
        let gate = Arc::new(Unauthenticated::new(2, 2));
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let (first, _) = gate.admit(a).unwrap();
        let (second, _) = gate.admit(a).unwrap();
        // A refusal being told, an enrollment: work that would go on.
        let told = first.until_evicted(std::future::pending());
        let other = second.until_evicted(std::future::pending());
        let (_b, evicted) = gate.admit(b).unwrap();
        assert_eq!(evicted, Some(Source::of(a)));
        assert_eq!(told.now_or_never(), Some(()));
        assert_eq!(other.now_or_never(), None);
    }

    #[test]
    fn a_source_with_nothing_held_is_forgotten() {
        let gate = Arc::new(Unauthenticated::new(5, 2));
        let (pending, _) = gate.admit(ip("192.0.2.1")).unwrap();
        drop(pending);
        let held = gate.held.lock().unwrap();
        assert_eq!(held.total, 0);
        assert!(held.by_source.is_empty());
    }
}
