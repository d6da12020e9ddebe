//! A connection's decision cache.

use std::collections::HashMap;
use std::sync::Arc;

use crate::decision::{Decision, Reason};
use crate::engine::Engine;
use crate::request::{Action, ContextMemo, Facts, Resource, Subject};

/// How a [`DecisionCache`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOptions {
    /// At most this many entries; when full, the cache is emptied and refills.
    pub capacity: usize,
    /// How long an entry lives at most, in milliseconds. It also ends at the end of the
    /// earliest grant the decision's context held, and at any epoch change.
    pub ttl_ms: u64,
}

/// Hit and miss counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Decisions answered from the cache.
    pub hits: u64,
    /// Decisions that went to the engine.
    pub misses: u64,
}

/// The decisions of one connection's principal, keyed by (action, resource) and valid for
/// one policy epoch. A hit costs a hash of the resource name and no allocation.
///
/// The cache trusts the caller on [`Facts`]: decisions are reused whatever facts the next
/// call passes, until the epoch changes or the entry expires. Whoever changes a fact a
/// policy may read (risk, grants, approvals) bumps the engine's epoch. Requests that carry
/// per-request facts (approvals of a held message) go to [`Engine::decide`] instead.
#[derive(Debug)]
pub struct DecisionCache {
    subject: Subject,
    options: CacheOptions,
    /// One map per (action, resource kind), keyed by the resource name, so that lookups
    /// borrow the name instead of building a key. Empty until the first entry: a connection
    /// that never asks the engine holds none of them (2.4 KiB).
    maps: Vec<HashMap<Box<str>, Entry>>,
    len: usize,
    stats: CacheStats,
    context: ContextMemo,
}

#[derive(Debug)]
struct Entry {
    decision: Arc<Decision>,
    epoch: u64,
    expires_ms: u64,
}

const KINDS: usize = crate::request::RESOURCE_KINDS;

// === impl CacheOptions ===

impl Default for CacheOptions {
    /// 4096 entries, one minute.
    fn default() -> Self {
        Self {
            capacity: 4096,
            ttl_ms: 60_000,
        }
    }
}

// === impl DecisionCache ===

impl DecisionCache {
    /// An empty cache for `subject`.
    pub fn new(subject: Subject, options: CacheOptions) -> Self {
        Self {
            subject,
            options,
            maps: Vec::new(),
            len: 0,
            stats: CacheStats::default(),
            context: ContextMemo::default(),
        }
    }

    /// The cached decision if there is a live one, otherwise the engine's (then cached).
    pub fn decide(
        &mut self,
        engine: &Engine,
        action: Action,
        resource: &Resource<'_>,
        facts: &Facts,
        now_ms: u64,
    ) -> Arc<Decision> {
        let epoch = engine.epoch();
        if let Some(hit) = self.lookup(epoch, action, resource, now_ms) {
            self.stats.hits += 1;
            return hit;
        }
        self.stats.misses += 1;
        let (epoch, policies) = engine.snapshot();
        let decision = Arc::new(policies.decide_at(
            epoch,
            &self.subject,
            action,
            resource,
            facts,
            now_ms,
            Some(&mut self.context),
        ));
        if decision.reason != Reason::BadRequest {
            let expires_ms = now_ms
                .saturating_add(self.options.ttl_ms)
                .min(facts.earliest_grant_end(now_ms).unwrap_or(u64::MAX));
            self.insert(
                action,
                resource,
                Entry {
                    decision: Arc::clone(&decision),
                    epoch,
                    expires_ms,
                },
            );
        }
        decision
    }

    /// The live cached decision for (action, resource) at `epoch` and `now_ms`, if any.
    pub fn lookup(
        &self,
        epoch: u64,
        action: Action,
        resource: &Resource<'_>,
        now_ms: u64,
    ) -> Option<Arc<Decision>> {
        let entry = self
            .maps
            .get(map_index(action, resource))?
            .get(resource.name())?;
        (entry.epoch == epoch && now_ms < entry.expires_ms).then(|| Arc::clone(&entry.decision))
    }

    /// The connection's principal.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// How many entries are held (live or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        for map in &mut self.maps {
            map.clear();
        }
        self.len = 0;
    }

    fn insert(&mut self, action: Action, resource: &Resource<'_>, entry: Entry) {
        let index = map_index(action, resource);
        if self.maps.is_empty() {
            self.maps = (0..Action::ALL.len() * KINDS)
                .map(|_| HashMap::new())
                .collect();
        }
        let present = self
            .maps
            .get(index)
            .is_some_and(|map| map.contains_key(resource.name()));
        if !present && self.len >= self.options.capacity {
            self.clear();
        }
        if let Some(map) = self.maps.get_mut(index)
            && map.insert(Box::from(resource.name()), entry).is_none()
        {
            self.len += 1;
        }
    }
}

fn map_index(action: Action, resource: &Resource<'_>) -> usize {
    action.index() * KINDS + resource.kind()
}
