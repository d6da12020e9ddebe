//! The bound on connections not yet authenticated: from the TCP accept until the TLS handshake
//! is done (for the mutual-TLS listener) or the connection ends (for enrollment, which never
//! authenticates a client). The mutual-TLS connection limits apply only after a handshake, so
//! without this anyone reaching the port could hold as many handshakes and enrollment
//! connections open as the hub has memory and descriptors.
//!
//! A connection past either bound, the hub's ([`HubConfig::max_unauthenticated`]) or its
//! source's ([`HubConfig::max_unauthenticated_per_source`]), is closed at once, before any TLS:
//! counted (`connection_limit_hits`, the `unauthenticated` or `unauthenticated-per-source`
//! limit in the metrics) and recorded, one record per limit and source at most once a second
//! with the count of the refusals it stands for (calls' runs, [`crate::calls`]).
//!
//! A source is an IPv4 address, or the /64 an IPv6 address is in (one host commonly holds a
//! whole /64); an IPv4 address mapped into IPv6 is its IPv4 address.
//!
//! [`HubConfig::max_unauthenticated`]: crate::HubConfig::max_unauthenticated
//! [`HubConfig::max_unauthenticated_per_source`]: crate::HubConfig::max_unauthenticated_per_source

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use entente_audit::{Event, LimitHit, Outcome};

use crate::audit::{self, Auditor};
use crate::calls::Runs;

/// Most sources whose refusals are recorded apart; those of further sources are recorded
/// together, as from [`Refusal::OTHER_SOURCES`].
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

/// Which bound refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The hub holds as many connections not yet authenticated as it may.
    Hub,
    /// Their source holds as many as it may (`None`: one of the sources past
    /// [`MAX_RECORDED_SOURCES`], in the records only).
    Source(Option<Source>),
}

impl Refusal {
    /// The scope of the records of sources past [`MAX_RECORDED_SOURCES`].
    const OTHER_SOURCES: &'static str = "(other sources)";

    /// The limit's name in metrics and audit records.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Hub => "unauthenticated",
            Self::Source(_) => "unauthenticated-per-source",
        }
    }

    fn scope(self) -> String {
        match self {
            Self::Hub => String::new(),
            Self::Source(Some(source)) => source.to_string(),
            Self::Source(None) => Self::OTHER_SOURCES.to_owned(),
        }
    }
}

/// The connections not yet authenticated, in all and by source, and the runs of refusals.
#[derive(Debug)]
pub(crate) struct Unauthenticated {
    max: usize,
    max_per_source: usize,
    held: Mutex<Held>,
    refusals: Runs<Refusal, ()>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_source: HashMap<Source, usize>,
}

/// A connection counted as not yet authenticated, until this is dropped.
#[derive(Debug)]
pub(crate) struct Pending {
    gate: Arc<Unauthenticated>,
    source: Option<Source>,
}

impl Unauthenticated {
    pub(crate) fn new(max: usize, max_per_source: usize) -> Self {
        Self {
            max,
            max_per_source,
            held: Mutex::default(),
            refusals: Runs::default(),
        }
    }

    /// Counts a connection from `peer` (`None`: its address is not known, counted in all
    /// only), unless a bound refuses it.
    pub(crate) fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Pending, Refusal> {
        let source = peer.map(Source::of);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.total >= self.max {
            return Err(Refusal::Hub);
        }
        if let Some(source) = source {
            let from_source = held.by_source.entry(source).or_insert(0);
            if *from_source >= self.max_per_source {
                return Err(Refusal::Source(Some(source)));
            }
            *from_source += 1;
        }
        held.total += 1;
        Ok(Pending {
            gate: Arc::clone(self),
            source,
        })
    }

    /// Counts `refusal` and records it, if a record of its run is due.
    pub(crate) fn refused(&self, auditor: &Auditor, refusal: Refusal, now: Instant) {
        let overflow = || Refusal::Source(None);
        if let Some(((), count)) =
            self.refusals
                .hit(refusal, overflow, MAX_RECORDED_SOURCES, (), now)
        {
            record(auditor, refusal, count);
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
        let from_source = held.by_source.get(&source).copied().unwrap_or(0);
        (held.total, from_source)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut held = self
            .gate
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.total = held.total.saturating_sub(1);
        if let Some(source) = self.source
            && let Some(from_source) = held.by_source.get_mut(&source)
        {
            *from_source = from_source.saturating_sub(1);
            if *from_source == 0 {
                held.by_source.remove(&source);
            }
        }
    }
}

fn record(auditor: &Auditor, refusal: Refusal, count: u64) {
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
    fn each_source_and_the_hub_hold_at_most_their_bound_until_connections_go() {
        let gate = Arc::new(Unauthenticated::new(5, 2));
        let (a, b) = (ip("192.0.2.1"), ip("2001:db8::1"));
        let a1 = gate.admit(Some(a)).unwrap();
        let _a2 = gate.admit(Some(a)).unwrap();
        assert_eq!(
            gate.admit(Some(a)).unwrap_err(),
            Refusal::Source(Some(Source::of(a)))
        );
        // Another host of the same /64 is the same source; another source is not.
        let _b1 = gate.admit(Some(b)).unwrap();
        let _b2 = gate.admit(Some(ip("2001:db8::2"))).unwrap();
        assert!(gate.admit(Some(ip("2001:db8::3"))).is_err());
        let _unknown = gate.admit(None).unwrap();
        assert_eq!(
            gate.admit(Some(ip("198.51.100.1"))).unwrap_err(),
            Refusal::Hub
        );
        assert_eq!(gate.held(Source::of(a)), (5, 2));
        // One gone, its source may connect again.
        drop(a1);
        assert_eq!(gate.held(Source::of(a)), (4, 1));
        let _a3 = gate.admit(Some(a)).unwrap();
        assert_eq!(gate.held(Source::of(a)), (5, 2));
    }

    #[test]
    fn a_source_with_nothing_held_is_forgotten() {
        let gate = Arc::new(Unauthenticated::new(5, 2));
        let pending = gate.admit(Some(ip("192.0.2.1"))).unwrap();
        drop(pending);
        let held = gate.held.lock().unwrap();
        assert_eq!(held.total, 0);
        assert!(held.by_source.is_empty());
    }
}
