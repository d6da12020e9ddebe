//! Anomaly detection: each agent's normal traffic, learned online, and a risk score from how
//! far the agent strays from it (docs/ANOMALY.md).
//!
//! Every agent's traffic is counted over all its connections in windows of
//! [`AnomalyConfig::window`]: messages, bytes, distinct channels, channels it never used before
//! (a reply channel counts as its requester's reply namespace, so answering new requesters is
//! not "new channels"; a direct channel names its recipient, so new peers are new channels),
//! refused requests (policy denials, replays, malformed frames), rate-limit refusals, and the
//! hour of day. At the end of each window its counts are scored against the agent's baseline:
//!
//! | signal | counts once | points |
//! |---|---|---|
//! | refusals above the agent's usual | from the first window | `10·log2(1+excess)`, at most 70 |
//! | rate-limit refusals | from the first window | `5·log2(1+hits)`, at most 20 |
//! | channels never used before (once 256 are remembered: channels not remembered, beyond the usual and 3 deviations) | after the warm-up | `6·log2(1+new)` (`6·log2(1+excess)`), at most 30 |
//! | messages, bytes or distinct channels at least 4× the usual and 3 deviations above it | after the warm-up | `10·log2(ratio)` of the largest, at most 60 |
//! | active at an hour of the day (UTC) never seen in a day or more of history | after the warm-up | 10 |
//!
//! The baseline (an exponentially weighted mean and variance of each count, the channels used,
//! the hours active) learns from the active windows that scored under [`LEARN_BELOW`]: a
//! deviation does not teach the baseline to accept it. The agent's risk, 0 to 100, is half its
//! risk after the previous window plus the window's score: one odd window raises it, a
//! sustained deviation drives it up within a few windows, and quiet windows let it fall. An
//! agent reaching the quarantine threshold is quarantined only if it was already throttled
//! when the window began (when throttling is on): the response escalates a window at a time.
//!
//! What the hub does with the risk (policies read it as `context.risk`; thresholds throttle,
//! then quarantine) is [`crate::quarantine`]'s. Nothing here does I/O: the counts are taken on
//! the sessions' paths and [`Anomaly::tick`] closes the windows with the time it is given.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use entente_types::Principal;
use entente_types::namespace::REPLY_PREFIX;

use crate::limits::Rate;

/// How the hub learns each agent's traffic and what it does about deviations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnomalyConfig {
    /// How long a window is: traffic is counted per window and scored at its end. Default
    /// 10 s.
    pub window: Duration,
    /// How many active windows an agent's baseline learns from before deviations from it
    /// count (refusals and rate-limit refusals count from the start). Default 30.
    pub warmup: u32,
    /// The risk at which an agent is throttled to [`throttled`](Self::throttled), until its
    /// risk falls below half of it; `None`: never. Default 60.
    pub throttle_at: Option<u8>,
    /// The risk at which an agent is quarantined; `None`: never. Default 85.
    pub quarantine_at: Option<u8>,
    /// What a throttled agent may send per second, over all its connections: envelopes
    /// published (at least one per publish), subscribes and unsubscribes, together. Default
    /// 10/s, bursts of 20.
    pub throttled: Rate,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            warmup: 30,
            throttle_at: Some(60),
            quarantine_at: Some(85),
            throttled: Rate {
                per_second: 10,
                burst: 20,
            },
        }
    }
}

impl AnomalyConfig {
    /// Refuses settings that can't work.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.window < Duration::from_millis(10) || self.window > Duration::from_secs(3600) {
            return Err("anomaly.window must be 10 ms to 1 hour");
        }
        if self.warmup == 0 {
            return Err("anomaly.warmup must be at least one window");
        }
        let risk = |at: Option<u8>| at.is_none_or(|at| (1..=100).contains(&at));
        if !risk(self.throttle_at) || !risk(self.quarantine_at) {
            return Err("anomaly.throttle_at and anomaly.quarantine_at are risks from 1 to 100");
        }
        if self.throttle_at.is_some_and(|at| at < 2) {
            // A throttle lifts below half its threshold: at 1, never.
            return Err("anomaly.throttle_at must be at least 2");
        }
        if let (Some(throttle), Some(quarantine)) = (self.throttle_at, self.quarantine_at)
            && throttle > quarantine
        {
            return Err("anomaly.throttle_at must not be above anomaly.quarantine_at");
        }
        if self.throttled.per_second == 0 || self.throttled.burst == 0 {
            return Err("anomaly.throttled needs a rate and a burst of at least 1");
        }
        if self.throttled.per_second > crate::Rate::MAX_PER_SECOND {
            return Err("anomaly.throttled is at most 1 000 000 000 a second");
        }
        Ok(())
    }
}

/// Active windows scoring under this teach the baseline.
pub(crate) const LEARN_BELOW: u32 = 20;

/// The most distinct channels a window tells apart (more count as new, unremembered).
const MAX_WINDOW_CHANNELS: usize = 256;

/// The most channels an agent's baseline remembers (later ones stay "new").
const MAX_KNOWN_CHANNELS: usize = 256;

/// The weight of the newest window in a baseline once it has this many windows' history.
const MIN_WEIGHT: f64 = 0.05;

/// How long history must be before an hour never active counts.
const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// An agent with no session and no traffic for this long is forgotten, baseline and all.
const FORGET_AFTER_MS: u64 = DAY_MS;

/// Every agent's counts and baseline, their risks, and the quarantined agents.
#[derive(Debug)]
pub(crate) struct Anomaly {
    config: AnomalyConfig,
    hasher: RandomState,
    agents: Mutex<HashMap<Principal, Arc<Watch>>>,
    quarantined: RwLock<HashMap<Principal, Quarantined>>,
    /// Held while the quarantine list is changed and stored ([`crate::quarantine`]); holds
    /// the agents quarantined here whose quarantine the store has not kept yet (tried again
    /// at every window).
    pub(crate) storing: tokio::sync::Mutex<Vec<Principal>>,
}

/// A quarantined agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Quarantined {
    pub(crate) principal: Principal,
    pub(crate) since_ms: u64,
    pub(crate) risk: u8,
    /// What the detector saw, or the administrator's reason.
    pub(crate) evidence: String,
    /// `hub`, or the administrator's SPIFFE ID.
    pub(crate) by: String,
}

/// One agent's counts, baseline and risk, shared by its sessions.
#[derive(Debug)]
pub(crate) struct Watch {
    counts: Mutex<Counts>,
    risk: AtomicU8,
    throttled: AtomicBool,
    hasher: RandomState,
}

/// What closing an agent's window changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) principal: Principal,
    pub(crate) risk_before: u8,
    pub(crate) risk: u8,
    /// The window's deviations, in words (empty when there were none).
    pub(crate) evidence: String,
    /// `Some(true)` when the agent became throttled, `Some(false)` when it no longer is.
    pub(crate) throttled: Option<bool>,
    /// Whether the risk reached the quarantine threshold.
    pub(crate) quarantine: bool,
}

#[derive(Debug, Default)]
struct Counts {
    window: Window,
    baseline: Baseline,
    last_active_ms: u64,
}

/// The current window's counts.
#[derive(Debug, Default)]
struct Window {
    messages: u64,
    bytes: u64,
    /// Publishes, subscribes and unsubscribes.
    frames: u64,
    channels: HashSet<u64>,
    /// Distinct channels past [`MAX_WINDOW_CHANNELS`] (an upper bound).
    channels_over: u64,
    /// Channels the baseline does not know.
    new: HashSet<u64>,
    new_over: u64,
    refusals: u64,
    limit_hits: u64,
}

impl Window {
    /// Whether anything was counted.
    fn active(&self) -> bool {
        self.frames > 0 || self.refusals > 0 || self.limit_hits > 0
    }
}

/// What an agent's traffic usually is.
#[derive(Debug, Default)]
struct Baseline {
    /// Active windows learned from.
    windows: u32,
    messages: Ewma,
    bytes: Ewma,
    channels: Ewma,
    refusals: Ewma,
    /// Channels a window used that the baseline did not remember.
    new: Ewma,
    known: HashSet<u64>,
    /// Bit `h`: active during hour `h` of the day (UTC).
    hours: u32,
    /// When the first window was learned, Unix ms.
    since_ms: u64,
}

/// An exponentially weighted mean and variance.
#[derive(Debug, Default, Clone, Copy)]
struct Ewma {
    mean: f64,
    var: f64,
}

// === impl Anomaly ===

impl Anomaly {
    pub(crate) fn new(config: AnomalyConfig) -> Self {
        Self {
            config,
            hasher: RandomState::new(),
            agents: Mutex::new(HashMap::new()),
            quarantined: RwLock::default(),
            storing: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// `principal`'s quarantine, if it is quarantined.
    pub(crate) fn quarantined(&self, principal: &Principal) -> Option<Quarantined> {
        self.read_quarantined().get(principal).cloned()
    }

    /// How many agents are quarantined.
    pub(crate) fn quarantine_count(&self) -> usize {
        self.read_quarantined().len()
    }

    /// The quarantined agents, oldest first.
    pub(crate) fn quarantine_list(&self) -> Vec<Quarantined> {
        let mut list: Vec<Quarantined> = self.read_quarantined().values().cloned().collect();
        list.sort_unstable_by(|a, b| (a.since_ms, &a.principal).cmp(&(b.since_ms, &b.principal)));
        list
    }

    /// Quarantines an agent; `false` if it already is (nothing changes).
    pub(crate) fn impose(&self, quarantined: Quarantined) -> bool {
        let mut map = self
            .quarantined
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if map.contains_key(&quarantined.principal) {
            return false;
        }
        map.insert(quarantined.principal.clone(), quarantined);
        true
    }

    /// Lifts `principal`'s quarantine, clearing its risk; returns what was lifted.
    pub(crate) fn release(&self, principal: &Principal) -> Option<Quarantined> {
        let lifted = self
            .quarantined
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(principal)?;
        self.clear(principal);
        Some(lifted)
    }

    fn read_quarantined(&self) -> RwLockReadGuard<'_, HashMap<Principal, Quarantined>> {
        self.quarantined
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> &AnomalyConfig {
        &self.config
    }

    /// The watch of `principal`'s traffic, made on first use.
    pub(crate) fn watch(&self, principal: &Principal) -> Arc<Watch> {
        self.lock()
            .entry(principal.clone())
            .or_insert_with(|| {
                Arc::new(Watch {
                    counts: Mutex::default(),
                    risk: AtomicU8::new(0),
                    throttled: AtomicBool::new(false),
                    hasher: self.hasher.clone(),
                })
            })
            .clone()
    }

    /// `principal`'s risk now (0 for an agent never seen).
    pub(crate) fn risk(&self, principal: &Principal) -> u8 {
        self.lock()
            .get(principal)
            .map_or(0, |watch| watch.risk.load(Ordering::Relaxed))
    }

    /// Clears `principal`'s risk, throttle and current window (a quarantine lifted); its
    /// baseline stays.
    fn clear(&self, principal: &Principal) {
        if let Some(watch) = self.lock().get(principal) {
            let mut counts = watch.lock();
            counts.window = Window::default();
            watch.risk.store(0, Ordering::Relaxed);
            watch.throttled.store(false, Ordering::Relaxed);
        }
    }

    /// Closes every agent's window at `now_ms`, scores it and updates the agent's risk;
    /// returns what changed. Agents idle and unused for a day are forgotten; one whose window
    /// counted something is kept to be scored, held by nothing or not (an agent calling RPCs
    /// without a session holds its watch only for the length of each call).
    pub(crate) fn tick(&self, now_ms: u64) -> Vec<Step> {
        let watches: Vec<(Principal, Arc<Watch>)> = {
            let mut agents = self.lock();
            agents.retain(|_, watch| {
                Arc::strong_count(watch) > 1 || watch.risk() > 0 || {
                    let counts = watch.lock();
                    counts.window.active()
                        || now_ms.saturating_sub(counts.last_active_ms) < FORGET_AFTER_MS
                }
            });
            agents.iter().map(|(p, w)| (p.clone(), w.clone())).collect()
        };
        watches
            .into_iter()
            .filter_map(|(principal, watch)| watch.close(principal, now_ms, &self.config))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Principal, Arc<Watch>>> {
        self.agents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Watch ===

impl Watch {
    /// Counts a publish of `messages` envelopes and `bytes` of ciphertext to `channels`.
    pub(crate) fn published<'c>(
        &self,
        messages: u64,
        bytes: u64,
        channels: impl IntoIterator<Item = &'c str>,
    ) {
        let mut counts = self.lock();
        let counts = &mut *counts;
        let window = &mut counts.window;
        window.frames += 1;
        window.messages = window.messages.saturating_add(messages);
        window.bytes = window.bytes.saturating_add(bytes);
        for channel in channels {
            let hash = self.hasher.hash_one(channel_key(channel));
            window.touch(hash, &counts.baseline.known);
        }
    }

    /// Counts a subscribe to, or unsubscribe from, `pattern` (the pattern counts as a channel).
    pub(crate) fn subscribed(&self, pattern: Option<&str>) {
        let hash = pattern.map(|p| self.hasher.hash_one(channel_key(p)));
        let mut counts = self.lock();
        let counts = &mut *counts;
        counts.window.frames += 1;
        if let Some(hash) = hash {
            counts.window.touch(hash, &counts.baseline.known);
        }
    }

    /// Counts a request refused as denied, replayed or malformed.
    pub(crate) fn refused(&self) {
        let mut counts = self.lock();
        counts.window.refusals = counts.window.refusals.saturating_add(1);
    }

    /// Counts a request refused by a rate limit.
    pub(crate) fn limited(&self) {
        let mut counts = self.lock();
        counts.window.limit_hits = counts.window.limit_hits.saturating_add(1);
    }

    pub(crate) fn risk(&self) -> u8 {
        self.risk.load(Ordering::Relaxed)
    }

    /// Whether the agent is held to the throttled rate.
    pub(crate) fn throttled(&self) -> bool {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Scores the window that ends at `now_ms` and starts the next.
    fn close(&self, principal: Principal, now_ms: u64, config: &AnomalyConfig) -> Option<Step> {
        let mut counts = self.lock();
        let window = std::mem::take(&mut counts.window);
        let before = self.risk();
        let active = window.active();
        if !active && before == 0 {
            return None;
        }
        let (score, evidence) = if active {
            counts.last_active_ms = now_ms;
            let (score, evidence) = counts.baseline.score(&window, config, now_ms);
            if score < LEARN_BELOW || counts.baseline.windows < config.warmup {
                counts.baseline.learn(&window, now_ms);
            }
            (score, evidence)
        } else {
            (0, String::new())
        };
        drop(counts);
        let risk = (u32::from(before) / 2 + score).min(100);
        let risk = u8::try_from(risk).unwrap_or(100);
        self.risk.store(risk, Ordering::Relaxed);
        let was = self.throttled();
        let throttled = config
            .throttle_at
            .is_some_and(|at| risk >= at || (was && risk >= at / 2));
        self.throttled.store(throttled, Ordering::Relaxed);
        // Throttled first, for a window at least: then quarantined.
        let quarantine = config.quarantine_at.is_some_and(|at| risk >= at)
            && (was || config.throttle_at.is_none());
        let step = Step {
            principal,
            risk_before: before,
            risk,
            evidence,
            throttled: (throttled != was).then_some(throttled),
            quarantine,
        };
        (risk != before || step.throttled.is_some() || quarantine).then_some(step)
    }

    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Window ===

impl Window {
    fn touch(&mut self, hash: u64, known: &HashSet<u64>) {
        if self.channels.len() < MAX_WINDOW_CHANNELS {
            if !self.channels.insert(hash) {
                return;
            }
        } else if self.channels.contains(&hash) {
            return;
        } else {
            self.channels_over += 1;
        }
        if !known.contains(&hash) {
            if self.new.len() < MAX_WINDOW_CHANNELS {
                self.new.insert(hash);
            } else {
                self.new_over += 1;
            }
        }
    }

    fn distinct(&self) -> u64 {
        (self.channels.len() as u64).saturating_add(self.channels_over)
    }
}

// === impl Baseline ===

impl Baseline {
    /// The window's score (at most 100) and its deviations in words.
    fn score(&self, window: &Window, config: &AnomalyConfig, now_ms: u64) -> (u32, String) {
        let warm = self.windows >= config.warmup;
        let mut parts: Vec<(u32, String)> = Vec::new();
        let usual = if warm { self.refusals.mean } else { 0.0 };
        let excess = window.refusals as f64 - usual;
        if excess >= 1.0 {
            parts.push((
                points(10.0, excess, 70),
                format!("{} refused requests (usually {usual:.1})", window.refusals),
            ));
        }
        if window.limit_hits > 0 {
            parts.push((
                points(5.0, window.limit_hits as f64, 20),
                format!("{} rate-limit refusals", window.limit_hits),
            ));
        }
        if warm {
            // An agent that has used as many channels as the baseline remembers is judged by
            // how many channels new to the baseline it uses beyond its usual (and 3 deviations
            // above it), not by which: those it uses past the bound would otherwise count as
            // new in every window, and a service of many peers would always be somewhere new.
            let new = (window.new.len() as u64).saturating_add(window.new_over);
            let full = self.known.len() >= MAX_KNOWN_CHANNELS;
            let usual = if full {
                let spread = self.new.var.sqrt().max(0.1 * self.new.mean).max(1.0);
                self.new.mean + 3.0 * spread
            } else {
                0.0
            };
            let excess = new as f64 - usual;
            if excess >= 1.0 {
                let said = if full {
                    format!(
                        "{new} channel(s) not among the {MAX_KNOWN_CHANNELS} remembered \
                         (usually {:.0})",
                        self.new.mean
                    )
                } else {
                    format!("{new} channel(s) never used before")
                };
                parts.push((points(6.0, excess, 30), said));
            }
            let volumes = [
                ("messages", window.messages, self.messages),
                ("bytes", window.bytes, self.bytes),
                ("distinct channels", window.distinct(), self.channels),
            ];
            let mut largest: Option<(u32, String)> = None;
            for (what, count, usual) in volumes {
                let x = count as f64;
                let floor = usual.mean.max(1.0);
                let spread = usual.var.sqrt().max(0.1 * usual.mean).max(1.0);
                if x >= 4.0 * floor && x - usual.mean >= 3.0 * spread {
                    let p = ((10.0 * (x / floor).log2()).round() as u32).min(60);
                    if largest.as_ref().is_none_or(|(q, _)| p > *q) {
                        let said = format!("{count} {what} (usually {:.0})", usual.mean);
                        largest = Some((p, said));
                    }
                }
            }
            parts.extend(largest);
            let hour = hour_of(now_ms);
            if now_ms.saturating_sub(self.since_ms) >= DAY_MS && self.hours & (1 << hour) == 0 {
                parts.push((10, format!("active at {hour:02}:00 UTC, never before")));
            }
        }
        let score = parts.iter().map(|(p, _)| *p).sum::<u32>().min(100);
        let mut evidence = String::new();
        for (p, said) in &parts {
            if !evidence.is_empty() {
                evidence.push_str("; ");
            }
            let _ = write!(evidence, "{said} (+{p})");
        }
        (score, evidence)
    }

    fn learn(&mut self, window: &Window, now_ms: u64) {
        if self.windows == 0 {
            self.since_ms = now_ms;
        }
        self.windows = self.windows.saturating_add(1);
        let weight = (1.0 / f64::from(self.windows)).max(MIN_WEIGHT);
        self.messages.learn(window.messages as f64, weight);
        self.bytes.learn(window.bytes as f64, weight);
        self.channels.learn(window.distinct() as f64, weight);
        self.refusals.learn(window.refusals as f64, weight);
        let new = (window.new.len() as u64).saturating_add(window.new_over);
        self.new.learn(new as f64, weight);
        for hash in &window.new {
            if self.known.len() >= MAX_KNOWN_CHANNELS {
                break;
            }
            self.known.insert(*hash);
        }
        self.hours |= 1 << hour_of(now_ms);
    }
}

impl Ewma {
    fn learn(&mut self, x: f64, weight: f64) {
        let delta = x - self.mean;
        self.mean += weight * delta;
        self.var = (1.0 - weight) * (self.var + weight * delta * delta);
    }
}

/// `k·log2(1+x)`, rounded, at most `cap`.
fn points(k: f64, x: f64, cap: u32) -> u32 {
    ((k * (1.0 + x).log2()).round() as u32).min(cap)
}

fn hour_of(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 3_600_000 % 24).unwrap_or(0)
}

/// What a channel counts as: every reply channel as one (`_reply`), any other as itself. Whom
/// an agent replies to is the requesters' doing (a reply needs a grant a request made), so a
/// service answering requesters it never answered before is nothing new; a direct channel
/// names its recipient, so a new peer is a new channel.
fn channel_key(channel: &str) -> &str {
    match channel.strip_prefix(REPLY_PREFIX) {
        Some(rest) if rest.is_empty() || rest.starts_with('.') => REPLY_PREFIX,
        _ => channel,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const WINDOW_MS: u64 = 10_000;

    fn agent(name: &str) -> Principal {
        Principal::parse(&format!("spiffe://example.org/agent/shop/{name}")).unwrap()
    }

    fn config() -> AnomalyConfig {
        AnomalyConfig {
            warmup: 10,
            ..AnomalyConfig::default()
        }
    }

    /// Deterministic jitter in `0..spread`.
    fn jitter(i: u64, spread: u64) -> u64 {
        (i.wrapping_mul(7919) ^ (i >> 3)) % spread
    }

    /// An agent's ordinary window: 40–60 orders of about 1 KiB to a few channels, and an
    /// answer to a requester now and then.
    fn normal_window(watch: &Watch, i: u64) {
        let messages = 40 + jitter(i, 21);
        for m in 0..messages {
            let channel = ["orders.eu", "orders.us", "stock.query"][(m % 3) as usize];
            watch.published(1, 900 + jitter(i + m, 300), [channel]);
        }
        if i.is_multiple_of(4) {
            watch.published(
                1,
                200,
                [format!("_reply.shop.client{}.r{i}", i % 50).as_str()],
            );
        }
        if i.is_multiple_of(25) {
            // An occasional mistake.
            watch.refused();
        }
    }

    /// Runs `windows` windows through `anomaly` from `*now`, `each` filling each one; returns
    /// every step.
    fn run(anomaly: &Anomaly, now: &mut u64, windows: u64, mut each: impl FnMut(u64)) -> Vec<Step> {
        let mut steps = Vec::new();
        for i in 0..windows {
            each(i);
            *now += WINDOW_MS;
            steps.extend(anomaly.tick(*now));
        }
        steps
    }

    #[test]
    fn a_normal_agent_is_never_throttled_or_quarantined() {
        let anomaly = Anomaly::new(config());
        let alice = anomaly.watch(&agent("alice"));
        let mut now = 1_000 * DAY_MS;
        // A day and a half of ordinary traffic, around the clock.
        let steps = run(&anomaly, &mut now, 13_000, |i| normal_window(&alice, i));
        let worst = steps.iter().map(|s| s.risk).max().unwrap_or(0);
        assert!(worst < 30, "{worst}: {steps:?}");
        assert!(steps.iter().all(|s| !s.quarantine && s.throttled.is_none()));
        assert!(!alice.throttled());
    }

    #[test]
    fn a_service_with_many_peers_and_requesters_is_left_alone() {
        let anomaly = Anomaly::new(config());
        let service = anomaly.watch(&agent("service"));
        let mut now = 1_000 * DAY_MS;
        // Each window it answers 40 of 1000 requesters and writes to 40 of 1000 peers, round
        // the clock: more peers than its baseline remembers, each seen again only now and then.
        let steps = run(&anomaly, &mut now, 13_000, |i| {
            for k in 0..40 {
                let who = (i * 40 + k) % 1000;
                service.published(1, 300, [format!("_reply.shop.client{who}.r{i}").as_str()]);
                service.published(1, 300, [format!("peers.p{who}").as_str()]);
            }
        });
        let worst = steps.iter().map(|s| s.risk).max().unwrap_or(0);
        assert!(worst < 30, "{worst}: {steps:?}");
        assert!(!service.throttled());
    }

    #[test]
    fn an_agent_that_filled_its_baseline_is_still_scored_for_many_new_channels() {
        let anomaly = Anomaly::new(config());
        let agent_ = anomaly.watch(&agent("filler"));
        let mut now = 1_000 * DAY_MS;
        // Its warm-up touches 300 channels: the baseline remembers 256, then is full.
        run(&anomaly, &mut now, 10, |i| {
            normal_window(&agent_, i);
            for k in 0..30 {
                agent_.published(1, 100, [format!("orders.c{}", i * 30 + k).as_str()]);
            }
        });
        // Its usual traffic after: three channels it knows.
        let steps = run(&anomaly, &mut now, 50, |i| normal_window(&agent_, i));
        assert!(steps.iter().all(|s| s.risk < 20), "{steps:?}");
        // Then sixty channels new to it, in one window.
        let steps = run(&anomaly, &mut now, 1, |i| {
            normal_window(&agent_, i);
            for k in 0..60 {
                agent_.published(1, 100, [format!("elsewhere.c{k}").as_str()]);
            }
        });
        let step = &steps[0];
        assert!(
            step.evidence.contains("not among the 256 remembered"),
            "{step:?}"
        );
        assert!(step.risk >= 30, "{step:?}");
    }

    #[test]
    fn a_scanning_agent_is_throttled_then_quarantined() {
        let anomaly = Anomaly::new(config());
        let scanner = anomaly.watch(&agent("scanner"));
        let mut now = 1_000 * DAY_MS;
        run(&anomaly, &mut now, 20, |i| normal_window(&scanner, i));
        assert_eq!(scanner.risk(), 0);
        // It probes other segments' channels, each one refused.
        let steps = run(&anomaly, &mut now, 3, |i| {
            for k in 0..30 {
                let pattern = format!("seg{k}.secrets.w{i}");
                scanner.subscribed(Some(&pattern));
                scanner.refused();
            }
        });
        let first = &steps[0];
        assert_eq!(first.throttled, Some(true), "{steps:?}");
        assert!(!first.quarantine);
        assert!(first.evidence.contains("30 refused requests"), "{first:?}");
        assert!(first.evidence.contains("never used before"), "{first:?}");
        assert!(steps[1].quarantine, "{steps:?}");
        assert!(scanner.throttled());
    }

    #[test]
    fn an_exfiltrating_agent_is_quarantined_and_a_busier_day_is_not() {
        let anomaly = Anomaly::new(config());
        let (thief, busy) = (
            anomaly.watch(&agent("thief")),
            anomaly.watch(&agent("busy")),
        );
        let mut now = 1_000 * DAY_MS;
        run(&anomaly, &mut now, 40, |i| {
            normal_window(&thief, i);
            normal_window(&busy, i);
        });
        // The thief sends 400 messages of 16 KiB out to a channel it never used; the busy
        // agent has twice its usual traffic on its usual channels.
        let steps = run(&anomaly, &mut now, 2, |i| {
            for _ in 0..400 {
                thief.published(1, 16 << 10, ["partners.drop"]);
            }
            normal_window(&busy, i);
            normal_window(&busy, i + 1);
        });
        let thief_steps: Vec<_> = steps
            .iter()
            .filter(|s| s.principal == agent("thief"))
            .collect();
        assert!(thief_steps.iter().any(|s| s.quarantine), "{steps:?}");
        assert!(thief_steps[0].evidence.contains("bytes"), "{steps:?}");
        assert!(
            steps
                .iter()
                .filter(|s| s.principal == agent("busy"))
                .all(|s| !s.quarantine && s.risk < 30),
            "{steps:?}"
        );
    }

    #[test]
    fn refusals_count_before_the_warm_up_and_risk_falls_when_quiet() {
        let anomaly = Anomaly::new(config());
        let eve = anomaly.watch(&agent("eve"));
        let mut now = 0;
        run(&anomaly, &mut now, 1, |_| {
            for _ in 0..31 {
                eve.refused();
            }
        });
        assert_eq!(eve.risk(), 50);
        assert!(!eve.throttled());
        let steps = run(&anomaly, &mut now, 10, |_| {});
        assert_eq!(eve.risk(), 0, "{steps:?}");
        // Quiet agents with no risk have nothing to report.
        assert!(run(&anomaly, &mut now, 3, |_| {}).is_empty());
        // Refused without end (a new agent probing, or one stuck retrying what it may not
        // do): throttled from the first window, quarantined at the next.
        let steps = run(&anomaly, &mut now, 2, |_| {
            for _ in 0..200 {
                eve.refused();
            }
        });
        assert_eq!(steps[0].risk, 70);
        assert_eq!(steps[0].throttled, Some(true));
        assert!(!steps[0].quarantine && steps[1].quarantine, "{steps:?}");
    }

    /// An agent holding no session between its calls (its watch dropped as each call ends)
    /// is scored all the same: a watch whose window counted something is kept to its close.
    #[test]
    fn an_agent_probing_without_a_session_is_scored() {
        let anomaly = Anomaly::new(config());
        let eve = agent("eve");
        let mut now = 1_700_000_000_000;
        let steps = run(&anomaly, &mut now, 2, |_| {
            for _ in 0..200 {
                anomaly.watch(&eve).refused();
            }
        });
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert_eq!(steps[0].throttled, Some(true));
        assert!(steps[1].quarantine, "{steps:?}");
        // Quiet and at no risk any more, it is forgotten (after a day).
        run(&anomaly, &mut now, 10, |_| {});
        assert_eq!(anomaly.risk(&eve), 0);
        now += FORGET_AFTER_MS;
        anomaly.tick(now);
        assert!(anomaly.lock().is_empty());
    }

    #[test]
    fn an_unusual_hour_counts_after_a_day_of_history() {
        let anomaly = Anomaly::new(config());
        let night = anomaly.watch(&agent("night"));
        // Active 09:00 to 17:00 UTC for three days, idle otherwise.
        let mut now = 1_000 * DAY_MS;
        for _ in 0..3 {
            let start = now;
            run(&anomaly, &mut now, 24 * 360, |i| {
                let hour = hour_of(start + i * WINDOW_MS);
                if (9..17).contains(&hour) {
                    normal_window(&night, i);
                }
            });
        }
        assert_eq!(night.risk(), 0);
        // 03:00: ordinary traffic, at an hour never seen.
        let steps = run(&anomaly, &mut now, 3 * 360 + 1, |_| {});
        assert!(steps.is_empty());
        let steps = run(&anomaly, &mut now, 1, |i| normal_window(&night, i));
        assert_eq!(hour_of(now), 3);
        assert!(steps[0].evidence.contains("03:00 UTC"), "{steps:?}");
        assert_eq!(steps[0].risk, 10);
    }

    #[test]
    fn reply_channels_count_as_their_namespace() {
        assert_eq!(channel_key("_reply.shop.client.r1"), "_reply");
        assert_eq!(channel_key("_reply.human:ann.x.y"), "_reply");
        assert_eq!(channel_key("_reply.shop.client"), "_reply");
        assert_eq!(channel_key("_replyx.a.b.c"), "_replyx.a.b.c");
        assert_eq!(channel_key("orders.eu"), "orders.eu");
        assert_eq!(channel_key("_reply"), "_reply");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(AnomalyConfig::default().check().is_ok());
        let bad = [
            AnomalyConfig {
                warmup: 0,
                ..AnomalyConfig::default()
            },
            AnomalyConfig {
                throttle_at: Some(90),
                quarantine_at: Some(80),
                ..AnomalyConfig::default()
            },
            AnomalyConfig {
                quarantine_at: Some(101),
                ..AnomalyConfig::default()
            },
            AnomalyConfig {
                throttle_at: Some(1),
                ..AnomalyConfig::default()
            },
            AnomalyConfig {
                window: Duration::ZERO,
                ..AnomalyConfig::default()
            },
        ];
        for config in bad {
            assert!(config.check().is_err(), "{config:?}");
        }
    }
}
