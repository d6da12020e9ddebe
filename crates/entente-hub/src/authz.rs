//! Authorization: the hub's structural rules, in code, in front of the Cedar policy engine
//! ([`entente_policy`]).
//!
//! **Structural rules** (no policy can change them):
//!
//! - A principal may always subscribe to its own direct channel (exactly) and to patterns under
//!   its own reply namespace, and nobody else may subscribe to them: a subscription pattern
//!   whose first token is `_direct` or `_reply` is judged by this rule alone
//!   ([`entente_types::namespace`]).
//! - Publishing into a `_reply` namespace is decided by the hub's reply grants alone (the
//!   session's, [`crate::reply`]); the engine is never asked.
//! - A wildcard first token never matches a system channel (first token starting with `_`):
//!   `>` and `*.x` reach no `_direct…` or `_reply…` channel ([`matches`], used by the router).
//!
//! **Everything else** goes to the engine, default deny: a subscription is
//! [`Action::Subscribe`] on [`Resource::Pattern`]; a publish on a `_direct` channel is
//! [`Action::Direct`], on any other channel [`Action::Publish`]; a publish group that carries
//! a request (an envelope with `reply_to`) is [`Action::Request`] on its channel, and also
//! needs `publish`/`direct` if it carries envelopes that are not requests.
//!
//! One [`Authz`] per hub holds the [`Engine`] (the running set, base policies included, and
//! the policy epoch), the sources the set was built from, the grant book
//! ([`GrantState`]), and a watch of the epoch that every session follows: when the epoch
//! changes, each session decides its subscriptions again and ends those no longer allowed.
//! Each session keeps a [`SessionAuthz`]: its principal's [`DecisionCache`], so that a
//! repeated decision is a hash lookup, allocation-free, and its `Facts` — the grants its
//! principal holds, read from the book again only when the epoch has changed (every grant
//! change bumps it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use entente_audit::{Event, Outcome};
use entente_policy::{
    Action, BASE_POLICIES, CacheOptions, Decision, DecisionCache, Engine, Facts, GrantBook,
    GrantError, GrantLimits, LoadError, PolicySet, Problem, Reason, Resource, Subject,
};
use entente_store::StoreError;
use entente_types::namespace::{self, DIRECT_PREFIX, REPLY_PREFIX};
use entente_types::{Channel, ChannelPattern, Principal};
use entente_wire::{
    Limits, MAX_POLICIES, MAX_POLICY_ID_BYTES, MAX_POLICY_SOURCE_NAME_BYTES, MAX_POLICY_SOURCES,
    MAX_POLICY_TEXT_BYTES, PolicySource, StoredPolicies,
};
use prost::Message as _;
use tokio::sync::watch;

use crate::HubError;
use crate::anomaly::{Anomaly, AnomalyConfig};
use crate::audit::{self, AuditUnavailable, Auditor};
use crate::danger::Danger;
use crate::grant_state::{GrantChangeError, GrantState};
use crate::held::{Holds, Verdicts};
use crate::limits::{Hit, PolicyRates};
use crate::registry::Registry;
use crate::stats::{self, Stats};

/// The source name of the base policies ([`BASE_POLICIES`]), always part of the running set.
/// No loaded source may take it.
pub const BASE_SOURCE: &str = "base";

/// The store's config key of the running set's sources ([`StoredPolicies`]).
pub(crate) const POLICIES_KEY: &str = "policies";

/// The version of [`StoredPolicies`] this hub writes and reads.
const STORED_VERSION: u32 = 1;

/// Why a policy set was not loaded. Whatever the error, the running set and the policy epoch
/// are unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadPoliciesError {
    /// The policies do not parse, do not fit the schema, or break Entente's rules;
    /// [`LoadError::problems`] lists each with its file, line and column.
    #[error("{0}")]
    Invalid(#[from] LoadError),
    /// The set is outside the hub's bounds: too many sources or policies, a source name
    /// empty, too long, repeated or reserved, a text or policy ID too long, or too large to
    /// store and show.
    #[error("{0}")]
    Refused(String),
    /// The new set could not be stored; it was not put in force.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Where the policy set a hub started with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyOrigin {
    /// The set the store held, as last loaded.
    Stored,
    /// [`HubConfig::policies`](crate::HubConfig::policies): the store held none (or
    /// [`HubConfig::replace_stored_policies`](crate::HubConfig::replace_stored_policies) was
    /// set); the hub stored it.
    Initial,
}

/// The running policy set and what it was built from.
#[derive(Debug, Clone)]
pub struct RunningPolicies {
    /// The policy epoch.
    pub epoch: u64,
    /// The loaded sources, `(name, text)`, in load order; the base policies are not among
    /// them.
    pub sources: Vec<(String, String)>,
    /// The validated set: the base policies (source [`BASE_SOURCE`]), then the sources'.
    pub set: Arc<PolicySet>,
}

/// The hub's authorization state: the engine, the running sources, and the epoch watch.
#[derive(Debug)]
pub(crate) struct Authz {
    engine: Engine,
    /// The grant book: what `context.grants` holds for each principal.
    grants: GrantState,
    /// The messages held for approval.
    holds: Holds,
    /// The loaded sources of the running set. Held while a new set is swapped in, so that
    /// a reader sees sources and set of the same load.
    sources: Mutex<Vec<(String, String)>>,
    /// Serializes loads: build, store, swap.
    loading: tokio::sync::Mutex<()>,
    epoch: watch::Sender<u64>,
    origin: PolicyOrigin,
    limits: Limits,
    stats: Arc<Stats>,
    /// [`Danger::skip_policy_decisions`]: no decision is made.
    skip_decisions: bool,
    /// Whether a policy of the running set reads `context.now`: sessions then decide their
    /// subscriptions again every [`TIME_RECHECK`].
    reads_time: AtomicBool,
    /// Whether a policy of the running set reads `context.risk`: a change of any agent's
    /// risk then bumps the epoch ([`crate::quarantine`]).
    reads_risk: AtomicBool,
    /// The risk scores `context.risk` gives.
    anomaly: Arc<Anomaly>,
    /// Where decisions are recorded: each one the engine makes, and each denial.
    auditor: Auditor,
    /// The buckets of the running permits' `@rate`s, replaced with the set.
    rates: RwLock<PolicyRates>,
    /// Whether a running permit has a rate: without one, nothing is charged and the lock is
    /// not taken.
    rated: AtomicBool,
    /// The decisions of the owners of durable consumers the directory lists while they hold
    /// no session ([`member_may_subscribe`](Self::member_may_subscribe)), per owner: at most
    /// [`MAX_MEMBER_CACHES`], all forgotten when full.
    members: Mutex<HashMap<Principal, SessionAuthz>>,
}

/// The most owners of durable consumers whose decisions the directory keeps at once...
const MAX_MEMBER_CACHES: usize = 1024;
/// ...and the most decisions it keeps of each (channels looked up).
const MEMBER_CACHE_CAPACITY: usize = 64;

/// How often a session decides its subscriptions again, uncached, while a running policy
/// reads `context.now`; also the most a cached decision is reused. Conditions on time take
/// effect within this.
pub(crate) const TIME_RECHECK: Duration = Duration::from_secs(30);

/// What the wildcard subscriptions of one session may carry, channel by channel.
///
/// A subscription is decided on its pattern, and a permit that covers the pattern covers every
/// channel the pattern matches. A forbid written for a narrower area does not match the wider
/// pattern, though: `forbid … resource in Namespace::"orders.payroll"` says nothing about
/// `orders.>`. So each channel a wildcard subscription would carry is decided again —
/// `subscribe` on that channel, for the session's principal, with its grants — and a forbid
/// that covers it (or one that fails to evaluate) withholds the delivery. The absence of a
/// permit on the channel does not: the permit on the pattern stands for the channels it
/// matches. The directory leaves out members whose only matching subscriptions are withheld
/// the same way, so senders do not seal to them.
///
/// The gate also closes the moment between a change of policy and the session deciding its
/// subscriptions again (a session busy in a slow publish may take a while): until the session
/// has caught up with the epoch, each delivery also needs the subscription's pattern to be
/// allowed at the new epoch.
///
/// Decisions are cached per channel for the policy epoch (and no longer than the grants they
/// used), like a session's own; a change of policies or grants decides again.
#[derive(Debug)]
pub struct DeliveryGate {
    authz: Arc<Authz>,
    decisions: Mutex<SessionAuthz>,
    /// The policy epoch the session last decided its subscriptions at.
    decided: AtomicU64,
}

/// Whether a publish goes through or waits for approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Publishing {
    /// Route it.
    Allowed,
    /// Hold it for approval ([`crate::held`]).
    Held,
}

/// What a session's request was allowed by: the engine's decision (`None` when no policy
/// was asked: a structural rule, or decisions skipped), to charge to the `@rate`s of its
/// permits ([`Authz::charge`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Allowed(Option<Arc<Decision>>);

/// A denial: by the policies or a structural rule, or of everything while the audit log is
/// failed. Made only when a request is denied.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Denied {
    /// What decided it, in words (`no policy permits it`, `forbidden by policy `x``, …).
    #[error("{0}")]
    Policy(String),
    /// Nothing is decided while the audit log is failed: not a denial of this principal (an
    /// RPC answers `UNAVAILABLE`, a frame's refusal is `UNAVAILABLE`, and neither counts
    /// against the principal's risk).
    #[error(transparent)]
    Unaudited(AuditUnavailable),
}

/// Whether a decision was made by the engine now (recorded yet or not) or came from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    /// Made now, not recorded yet.
    Fresh,
    /// Made now, and recorded already (a session's, [`SessionAuthz::decision`]).
    Recorded,
    /// From a session's cache.
    Cached,
}

/// One session's authorizer: its principal's decision cache.
#[derive(Debug)]
pub(crate) struct SessionAuthz {
    cache: DecisionCache,
    facts: Facts,
    /// The policy epoch `facts` were read at: a grant change bumps the epoch, and the facts
    /// are read again at the next decision.
    facts_epoch: u64,
}

// === impl Denied ===

impl Denied {
    /// As an RPC's refusal, `what` naming the act: `what is denied: why`
    /// (`PERMISSION_DENIED`), or the audit log's failure (`UNAVAILABLE`).
    pub(crate) fn rpc(self, what: impl std::fmt::Display) -> crate::rpc::RpcError {
        match self {
            Self::Policy(why) => crate::rpc::RpcError::Denied(format!("{what} is denied: {why}")),
            Self::Unaudited(e) => crate::rpc::RpcError::Unaudited(e),
        }
    }

    /// Whether the policies (or a structural rule) denied it: a denial to count, and held
    /// against the principal.
    pub(crate) fn by_policy(&self) -> bool {
        matches!(self, Self::Policy(_))
    }
}

// === impl Authz ===

impl Authz {
    /// The authorization state a hub starts with: the stored set if the store holds one
    /// (a stored set that no longer loads is an error), otherwise `initial`, which is then
    /// stored. `replace_stored` runs (and stores) `initial` whatever the store holds. The
    /// grant book is the stored one (one that does not decode is an error), or an empty one.
    pub(crate) async fn start(
        registry: &Registry,
        initial: &[(String, String)],
        replace_stored: bool,
        limits: Limits,
        grant_limits: GrantLimits,
        stats: Arc<Stats>,
    ) -> Result<Self, HubError> {
        let stored = if replace_stored {
            None
        } else {
            registry.config(POLICIES_KEY).await?
        };
        let (sources, set, origin) = match stored {
            Some(bytes) => {
                let sources = decode_stored(&bytes, &limits)
                    .map_err(|e| HubError::StoredPolicies(e.to_string()))?;
                let set = build(&sources, &limits)
                    .map_err(|e| HubError::StoredPolicies(problems_text(&e)))?;
                (sources, set, PolicyOrigin::Stored)
            }
            None => {
                let set = build(initial, &limits)
                    .map_err(|e| HubError::InitialPolicies(problems_text(&e)))?;
                registry
                    .put_config(POLICIES_KEY, &encode_stored(initial))
                    .await?;
                (initial.to_vec(), set, PolicyOrigin::Initial)
            }
        };
        let time = reads_time(&set);
        let set_risk = reads_context(&set, "risk");
        let rates = PolicyRates::of(&set, &PolicyRates::default());
        let engine = Engine::starting_at(set, next_epoch_floor(registry).await?);
        let grants = GrantState::load(registry, grant_limits).await?;
        let holds = Holds::load(registry, &limits).await?;
        let (epoch, _) = watch::channel(engine.epoch());
        Ok(Self {
            engine,
            grants,
            holds,
            sources: Mutex::new(sources),
            loading: tokio::sync::Mutex::new(()),
            epoch,
            origin,
            limits,
            stats,
            skip_decisions: false,
            reads_time: AtomicBool::new(time),
            reads_risk: AtomicBool::new(set_risk),
            anomaly: Arc::new(Anomaly::new(AnomalyConfig::default())),
            auditor: Auditor::off(),
            rated: AtomicBool::new(!rates.is_empty()),
            rates: RwLock::new(rates),
            members: Mutex::default(),
        })
    }

    /// Whether [`Danger::skip_policy_decisions`] lets `action` through undecided: traffic
    /// only, never an administrative act.
    fn skips(&self, action: Action) -> bool {
        self.skip_decisions
            && matches!(
                action,
                Action::Publish | Action::Subscribe | Action::Direct | Action::Request
            )
    }

    /// Applies the settings of `danger` that concern authorization.
    pub(crate) fn with_danger(mut self, danger: Danger) -> Self {
        self.skip_decisions = danger.skip_policy_decisions;
        self
    }

    /// Records decisions (and the acts the unary services record) in `auditor`.
    pub(crate) fn with_auditor(mut self, auditor: Auditor) -> Self {
        self.holds.set_auditor(auditor.clone());
        self.auditor = auditor;
        self
    }

    /// Where decisions and acts are recorded.
    pub(crate) fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    /// Whether a running policy reads `context.now`.
    pub(crate) fn reads_time(&self) -> bool {
        self.reads_time.load(Ordering::Relaxed)
    }

    /// Whether a running policy reads `context.risk`.
    pub(crate) fn reads_risk(&self) -> bool {
        self.reads_risk.load(Ordering::Relaxed)
    }

    /// Takes the risk scores `context.risk` gives from `anomaly`.
    pub(crate) fn with_anomaly(mut self, anomaly: Arc<Anomaly>) -> Self {
        self.anomaly = anomaly;
        self
    }

    /// The engine.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The messages held for approval.
    pub(crate) fn holds(&self) -> &Holds {
        &self.holds
    }

    /// What the policies say about `sender` publishing on `channel` with `approvers`'
    /// approvals (a held message): allowed, still held by `@hold` forbids alone, or denied.
    /// Uncached: approvals are facts of this one message.
    pub(crate) fn decide_held(
        &self,
        sender: &Principal,
        channel: &Channel,
        approvers: &[Principal],
        now_ms: u64,
    ) -> Verdicts {
        let subject = Subject::new(sender.clone(), Vec::<String>::new());
        let resource = Resource::Channel(channel);
        let facts = Facts {
            approvals: u32::try_from(approvers.len()).unwrap_or(u32::MAX),
            approvers: approvers.iter().map(ToString::to_string).collect(),
            ..self.facts_for(sender, now_ms)
        };
        let decision = self
            .engine
            .decide(&subject, Action::Publish, &resource, &facts, now_ms);
        self.record(&subject, Action::Publish, &resource, &decision);
        if decision.allowed {
            Verdicts::Allowed
        } else if self.engine.policies().holds(&decision) {
            Verdicts::StillHeld
        } else {
            Verdicts::Denied(denial(&self.engine, &subject, &resource, &decision))
        }
    }

    /// The grant book.
    pub(crate) fn grants(&self) -> &GrantState {
        &self.grants
    }

    /// The hub's counters.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What decisions about `principal` know at `now_ms`: the grants it holds and its risk
    /// score (no roles or approvals).
    pub(crate) fn facts_for(&self, principal: &Principal, now_ms: u64) -> Facts {
        Facts {
            grants: self.grants.active_for(principal, now_ms),
            risk: self.anomaly.risk(principal),
            ..Facts::default()
        }
    }

    /// Changes the grant book all or nothing ([`GrantState::change`]) with the running
    /// policies, bumping the policy epoch if the grants changed.
    pub(crate) async fn change_grants<T>(
        &self,
        registry: &Registry,
        apply: impl FnOnce(&mut GrantBook, &PolicySet) -> Result<T, GrantError>,
    ) -> Result<T, GrantChangeError> {
        let policies = self.engine.policies();
        self.grants
            .change(
                registry,
                &policies,
                || {
                    self.bump();
                },
                apply,
            )
            .await
    }

    /// Where the set the hub started with came from.
    pub(crate) fn origin(&self) -> PolicyOrigin {
        self.origin
    }

    /// A watch of the policy epoch: it changes with every load and [`bump`](Self::bump).
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Records a change outside the policies that decisions may depend on (a revocation):
    /// cached decisions are dropped, and every session decides its subscriptions again.
    pub(crate) fn bump(&self) -> u64 {
        let epoch = self.engine.bump_epoch();
        self.epoch.send_replace(epoch);
        epoch
    }

    /// Builds a set from the base policies and `sources`, stores the sources, and puts the set
    /// in force; returns the new epoch and how many policies run. All or nothing: on any
    /// error the running set, the stored sources and the epoch are unchanged.
    pub(crate) async fn load(
        &self,
        registry: &Registry,
        sources: Vec<(String, String)>,
    ) -> Result<(u64, usize), LoadPoliciesError> {
        let _loading = self.loading.lock().await;
        // Parsing, validating and slicing take CPU (bounded by the limits): not on a worker
        // that serves sessions.
        let (sources, set) = {
            let limits = self.limits;
            tokio::task::spawn_blocking(move || {
                let set = build(&sources, &limits);
                (sources, set)
            })
            .await
            .map_err(|_| LoadPoliciesError::Refused("the policy loader stopped".into()))?
        };
        let set = set?;
        let count = set.len();
        registry
            .put_config(POLICIES_KEY, &encode_stored(&sources))
            .await?;
        let time = reads_time(&set);
        let risk = reads_context(&set, "risk");
        let epoch = {
            let mut running = self.lock_sources();
            self.reads_time.store(time, Ordering::Relaxed);
            self.reads_risk.store(risk, Ordering::Relaxed);
            self.replace_rates(&set);
            let epoch = self.engine.replace(set);
            *running = sources;
            epoch
        };
        self.epoch.send_replace(epoch);
        self.conform_grants(registry).await;
        Ok((self.engine.epoch(), count))
    }

    /// Ends the grants the running set no longer allows as given (`GrantBook::conform`: their
    /// definition gone, given for longer than its `@max_duration` or with fewer approvals than
    /// its `@approvals` now asks), recorded as revoked by the hub. A store that fails leaves them until the next load, and says so.
    pub(crate) async fn conform_grants(&self, registry: &Registry) {
        match self
            .change_grants(registry, |book, policies| Ok(book.conform(policies)))
            .await
        {
            Ok(ended) => {
                for grant in &ended {
                    tracing::info!(
                        grant = %grant.id,
                        principal = %grant.principal,
                        name = %grant.name,
                        "grant ended: the policies no longer allow it as given"
                    );
                    let event = crate::grant_state::grant_event(
                        grant.id.to_string(),
                        entente_audit::GrantStage::Revoked,
                        grant.principal.as_str(),
                        &grant.name,
                        grant.not_after_ms,
                        None,
                    );
                    let _ = self.auditor().submit(
                        crate::audit::HUB_ACTOR,
                        entente_audit::Outcome::Success,
                        event,
                    );
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the grants the policies no longer allow could not be ended; they are at the next load"
            ),
        }
    }

    /// The running set, its sources and its epoch, consistent with one another.
    pub(crate) fn running(&self) -> RunningPolicies {
        let sources = self.lock_sources();
        RunningPolicies {
            epoch: self.engine.epoch(),
            sources: sources.clone(),
            set: self.engine.policies(),
        }
    }

    /// Decides uncached, for a principal without a session (the directory); counts the
    /// decision.
    pub(crate) fn decide(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        now_ms: u64,
    ) -> Result<(), Denied> {
        if self.skips(action) {
            return Ok(());
        }
        let decision = self.engine.decide(
            subject,
            action,
            resource,
            &self.facts_for(subject.principal(), now_ms),
            now_ms,
        );
        self.judge(subject, action, resource, &decision, Made::Fresh)
    }

    /// Whether `owner` — the owner of a durable consumer, holding no session — may subscribe
    /// to `channel` now (the directory lists it as a member if so): decided as a session of
    /// its own would decide it, from a cache kept per owner (for the policy epoch, at most
    /// [`TIME_RECHECK`], never past a grant it used), recorded when the engine decides — not
    /// again when a cached denial leaves it out (the owner asked nothing). Lookups in a loop
    /// cost neither a policy evaluation nor a record per offline owner each. At most
    /// [`MAX_MEMBER_CACHES`] owners' caches of [`MEMBER_CACHE_CAPACITY`] decisions are kept.
    pub(crate) fn member_may_subscribe(
        &self,
        owner: &Principal,
        channel: &Channel,
        now_ms: u64,
    ) -> bool {
        let mut members = self.members.lock().unwrap_or_else(PoisonError::into_inner);
        if members.len() >= MAX_MEMBER_CACHES && !members.contains_key(owner) {
            *members = HashMap::new();
        }
        members
            .entry(owner.clone())
            .or_insert_with(|| {
                SessionAuthz::with_capacity(SessionAuthz::subject(owner), MEMBER_CACHE_CAPACITY)
            })
            .allows(self, Action::Subscribe, &Resource::Channel(channel), now_ms)
    }

    /// Whether the policies allow `action` on `resource` for `subject` now, decided but not
    /// recorded on its own: for what a listing shows, whose one record stands for all the
    /// decisions it took (a listing of held messages decides `approve` on each channel they
    /// are on, and anyone may ask for it).
    pub(crate) fn allows_unrecorded(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        now_ms: u64,
    ) -> bool {
        self.skips(action)
            || self
                .engine
                .decide(
                    subject,
                    action,
                    resource,
                    &self.facts_for(subject.principal(), now_ms),
                    now_ms,
                )
                .allowed
    }

    /// Like [`decide`](Self::decide) for `publish` on `channel`, but a publish the policies
    /// would hold for approval counts as allowed (the directory lists a held channel's members
    /// to its senders: they seal to them).
    pub(crate) fn decide_publish_or_hold(
        &self,
        subject: &Subject,
        channel: &Channel,
        now_ms: u64,
    ) -> Result<Publishing, Denied> {
        if self.skips(Action::Publish) {
            return Ok(Publishing::Allowed);
        }
        let resource = Resource::Channel(channel);
        let facts = self.facts_for(subject.principal(), now_ms);
        let decision = self
            .engine
            .decide(subject, Action::Publish, &resource, &facts, now_ms);
        if !decision.allowed {
            let set = self.engine.policies();
            if set.holds(&decision) && set.allowed_once_approved(subject, &resource, &facts, now_ms)
            {
                self.record(subject, Action::Publish, &resource, &decision);
                self.auditor.check().map_err(Denied::Unaudited)?;
                stats::bump(&self.stats.policy_allows);
                return Ok(Publishing::Held);
            }
        }
        self.judge(subject, Action::Publish, &resource, &decision, Made::Fresh)
            .map(|()| Publishing::Allowed)
    }

    /// Counts `decision`, turns a denial into words, and records it: a decision `made`
    /// fresh now (once: not one recorded already), and a cached denial again, as a refusal.
    /// While the audit log is failed, everything is denied.
    fn judge(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        decision: &Decision,
        made: Made,
    ) -> Result<(), Denied> {
        // Once: a fresh decision recorded already is not recorded again.
        if made == Made::Fresh || (made == Made::Cached && !decision.allowed) {
            self.record(subject, action, resource, decision);
        }
        self.auditor.check().map_err(Denied::Unaudited)?;
        if decision.allowed {
            stats::bump(&self.stats.policy_allows);
            Ok(())
        } else {
            stats::bump(&self.stats.policy_denials);
            Err(Denied::Policy(denial(
                &self.engine,
                subject,
                resource,
                decision,
            )))
        }
    }

    /// Submits the record of a refusal that no policy decided (a structural rule, a forged
    /// sender, a replay, a malformed or oversized frame …): a denied decision naming no
    /// policy, `reason` saying what was refused and why.
    pub(crate) fn record_refusal(
        &self,
        principal: &Principal,
        action: &str,
        resource: &str,
        reason: &str,
    ) {
        if !self.auditor.is_on() {
            return;
        }
        let event = Event::Decision(entente_audit::Decision {
            principal: audit::clear(principal.as_str()),
            action: audit::clear(action),
            resource: audit::clear(resource),
            allowed: false,
            policies: Vec::new(),
            reason: audit::clear(reason),
            policy_epoch: self.engine.epoch(),
        });
        // A failed log refuses everything after it anyway.
        let _ = self
            .auditor
            .submit(principal.as_str(), Outcome::Denied, event);
    }

    /// Submits the record of `decision` (without waiting: what it allows is answered only
    /// once it is durable, see [`crate::audit`]). A failed log is caught by the caller's
    /// [`Auditor::check`].
    fn record(
        &self,
        subject: &Subject,
        action: Action,
        resource: &Resource<'_>,
        decision: &Decision,
    ) {
        if !self.auditor.is_on() {
            return;
        }
        let reason = if decision.allowed {
            decision.reason.to_string()
        } else {
            denial(&self.engine, subject, resource, decision)
        };
        let principal = subject.principal().as_str();
        let event = Event::Decision(entente_audit::Decision {
            principal: audit::clear(principal),
            action: audit::clear(action.name()),
            resource: audit::clear(&resource.to_string()),
            allowed: decision.allowed,
            policies: decision
                .policies
                .iter()
                .take(entente_audit::MAX_POLICIES)
                .map(|id| audit::bounded(id.as_str()))
                .collect(),
            reason: audit::clear(&reason),
            policy_epoch: decision.epoch,
        });
        let outcome = match (decision.allowed, decision.reason) {
            (true, _) => Outcome::Success,
            (false, Reason::BadRequest | Reason::ForbidFailed) => Outcome::Failed,
            (false, _) => Outcome::Denied,
        };
        // A failure shows in `check`, which every caller asks next.
        let _ = self.auditor.submit(principal, outcome, event);
    }

    /// Charges what `allowed` allowed — `n` of `unit` by `principal` — to the `@rate` of
    /// each of its determining permits that has one ([`PolicyRates`]).
    pub(crate) fn charge(
        &self,
        principal: &Principal,
        allowed: &Allowed,
        n: u64,
        unit: &str,
    ) -> Result<(), Hit> {
        let Some(decision) = &allowed.0 else {
            return Ok(());
        };
        if decision.policies.is_empty() || !self.rated.load(Ordering::Relaxed) {
            return Ok(());
        }
        let rates = self.rates.read().unwrap_or_else(PoisonError::into_inner);
        rates.charge(principal, &decision.policies, n, unit)
    }

    /// Drops the `@rate` buckets that are full again.
    pub(crate) fn purge_rates(&self) {
        self.rates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .purge();
    }

    /// Puts the buckets of `set`'s rated permits in place (those of unchanged rates kept).
    fn replace_rates(&self, set: &PolicySet) {
        let mut rates = self.rates.write().unwrap_or_else(PoisonError::into_inner);
        *rates = PolicyRates::of(set, &rates);
        self.rated.store(!rates.is_empty(), Ordering::Relaxed);
    }

    fn lock_sources(&self) -> MutexGuard<'_, Vec<(String, String)>> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl SessionAuthz ===

impl SessionAuthz {
    /// The authorizer of a session of `principal` (no roles yet: the registry holds none).
    #[cfg(test)]
    pub(crate) fn new(principal: &Principal) -> Self {
        Self::of(Self::subject(principal))
    }

    /// The policy subject of `principal`'s sessions: one per session, shared by its
    /// authorizer and its delivery gate.
    pub(crate) fn subject(principal: &Principal) -> Subject {
        Subject::new(principal.clone(), Vec::<String>::new())
    }

    /// The authorizer of a session of `subject`.
    pub(crate) fn of(subject: Subject) -> Self {
        Self::with_capacity(subject, CacheOptions::default().capacity)
    }

    /// An authorizer of `subject` whose cache holds at most `capacity` decisions.
    fn with_capacity(subject: Subject, capacity: usize) -> Self {
        let options = CacheOptions {
            ttl_ms: u64::try_from(TIME_RECHECK.as_millis()).unwrap_or(u64::MAX),
            capacity,
        };
        Self {
            cache: DecisionCache::new(subject, options),
            facts: Facts::default(),
            facts_epoch: 0,
        }
    }

    /// May the session's principal subscribe to `pattern`? Own namespaces by the structural
    /// rule, everything else by the engine.
    pub(crate) fn subscribe(
        &mut self,
        authz: &Authz,
        pattern: &ChannelPattern,
        now_ms: u64,
    ) -> Result<(), Denied> {
        self.subscribe_allowed(authz, pattern, now_ms).map(drop)
    }

    /// Like [`subscribe`](Self::subscribe), for a new subscription: what allowed it, to
    /// charge.
    pub(crate) fn subscribe_allowed(
        &mut self,
        authz: &Authz,
        pattern: &ChannelPattern,
        now_ms: u64,
    ) -> Result<Allowed, Denied> {
        let first = pattern.tokens().next().unwrap_or_default();
        if first == DIRECT_PREFIX || first == REPLY_PREFIX {
            let principal = self.cache.subject().principal();
            return if namespace::is_own_pattern(principal, pattern) {
                Ok(Allowed::default())
            } else {
                let why = "only its owner may subscribe to a `_direct` or `_reply` namespace";
                authz.record_refusal(
                    principal,
                    Action::Subscribe.name(),
                    &Resource::Pattern(pattern).to_string(),
                    why,
                );
                Err(Denied::Policy(why.into()))
            };
        }
        self.decide(
            authz,
            Action::Subscribe,
            &Resource::Pattern(pattern),
            now_ms,
        )
    }

    /// May the session's principal publish (the `publish` action) on `channel`, and if not,
    /// would it be allowed once approved? [`Publishing::Held`] when the running policies deny
    /// it by `@hold` forbids alone and allow it with them lifted. An allowed publish comes
    /// with what allowed it, to charge.
    pub(crate) fn publish_or_hold(
        &mut self,
        authz: &Authz,
        channel: &Channel,
        now_ms: u64,
    ) -> Result<(Publishing, Allowed), Denied> {
        if authz.skips(Action::Publish) {
            return Ok((Publishing::Allowed, Allowed::default()));
        }
        let resource = Resource::Channel(channel);
        let (decision, made) = self.decision(authz, Action::Publish, &resource, now_ms);
        if !decision.allowed {
            let set = authz.engine.policies();
            if set.holds(&decision)
                && set.allowed_once_approved(self.cache.subject(), &resource, &self.facts, now_ms)
            {
                authz.auditor.check().map_err(Denied::Unaudited)?;
                stats::bump(&authz.stats.policy_allows);
                return Ok((Publishing::Held, Allowed::default()));
            }
        }
        authz.judge(
            self.cache.subject(),
            Action::Publish,
            &resource,
            &decision,
            made,
        )?;
        Ok((Publishing::Allowed, Allowed(Some(decision))))
    }

    /// Whether the running policies would hold a publish of the session's principal on
    /// `channel` for approval (uncounted: for refusing what can't be held).
    pub(crate) fn would_hold(&mut self, authz: &Authz, channel: &Channel, now_ms: u64) -> bool {
        if authz.skips(Action::Publish) {
            return false;
        }
        let resource = Resource::Channel(channel);
        let (decision, _) = self.decision(authz, Action::Publish, &resource, now_ms);
        let set = authz.engine.policies();
        !decision.allowed
            && set.holds(&decision)
            && set.allowed_once_approved(self.cache.subject(), &resource, &self.facts, now_ms)
    }

    /// Forgets every cached decision, so that the next ones are made afresh (time has
    /// passed, and a policy reads it).
    pub(crate) fn forget(&mut self) {
        self.cache.clear();
    }

    /// May the session's principal do `action` (publish, direct or request) on `channel`?
    /// `_reply` channels are the reply grants', not this.
    pub(crate) fn publish(
        &mut self,
        authz: &Authz,
        action: Action,
        channel: &Channel,
        now_ms: u64,
    ) -> Result<Allowed, Denied> {
        self.decide(authz, action, &Resource::Channel(channel), now_ms)
    }

    fn decide(
        &mut self,
        authz: &Authz,
        action: Action,
        resource: &Resource<'_>,
        now_ms: u64,
    ) -> Result<Allowed, Denied> {
        if authz.skips(action) {
            return Ok(Allowed::default());
        }
        let (decision, made) = self.decision(authz, action, resource, now_ms);
        authz.judge(self.cache.subject(), action, resource, &decision, made)?;
        Ok(Allowed(Some(decision)))
    }

    /// Whether the principal may do `action` on `resource`, uncounted: a decision made fresh
    /// is recorded, a cached one (a denial too) is not recorded again; nothing is allowed
    /// while the audit log is failed.
    fn allows(
        &mut self,
        authz: &Authz,
        action: Action,
        resource: &Resource<'_>,
        now_ms: u64,
    ) -> bool {
        if authz.skips(action) {
            return true;
        }
        let (decision, _) = self.decision(authz, action, resource, now_ms);
        decision.allowed && authz.auditor.check().is_ok()
    }

    /// The decision, cached or not, uncounted; one made fresh is recorded.
    fn decision(
        &mut self,
        authz: &Authz,
        action: Action,
        resource: &Resource<'_>,
        now_ms: u64,
    ) -> (Arc<Decision>, Made) {
        // The epoch first, then the book: a grant change is swapped in before its bump.
        let epoch = authz.engine.epoch();
        if epoch != self.facts_epoch {
            self.facts = authz.facts_for(self.cache.subject().principal(), now_ms);
            self.facts_epoch = epoch;
        }
        let misses = self.cache.stats().misses;
        let decision = self
            .cache
            .decide(&authz.engine, action, resource, &self.facts, now_ms);
        if self.cache.stats().misses == misses {
            return (decision, Made::Cached);
        }
        authz.record(self.cache.subject(), action, resource, &decision);
        (decision, Made::Recorded)
    }
}

// === impl DeliveryGate ===

impl DeliveryGate {
    /// The gate of a session of `principal` that has decided its subscriptions at policy
    /// epoch `decided`.
    pub(crate) fn new(authz: Arc<Authz>, subject: Subject, decided: u64) -> Self {
        Self {
            decisions: Mutex::new(SessionAuthz::of(subject)),
            decided: AtomicU64::new(decided),
            authz,
        }
    }

    /// Records that the session has decided its subscriptions again at policy epoch `epoch`
    /// (and ended those no longer allowed).
    pub(crate) fn decided_at(&self, epoch: u64) {
        self.decided.store(epoch, Ordering::Release);
    }

    /// Whether a subscription of the session to `pattern` may carry `channel` now: what
    /// follows says yes.
    pub fn carries(
        &self,
        pattern: &ChannelPattern,
        channel: &Channel,
        now_ms: impl FnOnce() -> u64,
    ) -> bool {
        self.may_carry(pattern, channel, now_ms) == Carry::Yes
    }

    /// What a subscription of the session to `pattern` may do with `channel` now:
    ///
    /// - if the policy epoch changed since the session last decided its subscriptions (it
    ///   has not caught up yet), the pattern must still be allowed at the new epoch;
    /// - for a wildcard pattern, no forbid may cover subscribing to `channel` itself, and
    ///   none may fail to evaluate (asked of the policies only when a forbid's action scope
    ///   admits subscribing).
    ///
    /// A literal subscription decided at the current epoch passes with two atomic loads;
    /// otherwise a hash lookup while the epoch and the principal's grants are unchanged.
    ///
    /// `now_ms` (Unix milliseconds) is asked only when a decision is needed.
    pub(crate) fn may_carry(
        &self,
        pattern: &ChannelPattern,
        channel: &Channel,
        now_ms: impl FnOnce() -> u64,
    ) -> Carry {
        let stale = self.authz.engine.epoch() != self.decided.load(Ordering::Acquire);
        if (!stale && pattern.is_literal()) || self.authz.skips(Action::Subscribe) {
            return Carry::Yes;
        }
        let now_ms = now_ms();
        if self.waits_at(pattern, stale, now_ms) {
            return Carry::Wait;
        }
        // Own namespaces are judged by the structural rule alone (docs/POLICY.md): a new reply
        // channel under one's own reply namespace asks the engine nothing.
        let first = pattern.tokens().next().unwrap_or_default();
        if pattern.is_literal() || first == DIRECT_PREFIX || first == REPLY_PREFIX {
            return Carry::Yes;
        }
        // What is asked of each channel is whether a forbid covers it: with no forbid that
        // may apply to subscribing, none does, and nothing is decided (or recorded) per
        // channel. Otherwise a publisher cycling through new channels would have every
        // wildcard subscriber's session decide, and record, each of them.
        if !self.authz.engine.may_forbid(Action::Subscribe) {
            return Carry::Yes;
        }
        let decision = self.subscribe_decision(&Resource::Channel(channel), now_ms);
        if matches!(decision.reason, Reason::Permit | Reason::NoPermit) {
            Carry::Yes
        } else {
            Carry::Skip
        }
    }
}

// === impl DeliveryGate: waiting ===

impl DeliveryGate {
    /// Whether what a subscription of the session to `pattern` carries waits now, whatever
    /// its channel ([`Carry::Wait`]): asked before a durable entry is read, so that one that
    /// waits is not read and opened again each time it is asked.
    pub(crate) fn waits(&self, pattern: &ChannelPattern, now_ms: impl FnOnce() -> u64) -> bool {
        let stale = self.authz.engine.epoch() != self.decided.load(Ordering::Acquire);
        if (!stale && pattern.is_literal()) || self.authz.skips(Action::Subscribe) {
            return false;
        }
        self.waits_at(pattern, stale, now_ms())
    }

    /// [`waits`](Self::waits), past its quick answers: the audit log failed, or the pattern
    /// is no longer allowed at the epoch the session has not caught up with.
    fn waits_at(&self, pattern: &ChannelPattern, stale: bool, now_ms: u64) -> bool {
        if self.authz.auditor.check().is_err() {
            return true;
        }
        // Own namespaces are the structural rule's, which no epoch changes.
        let first = pattern.tokens().next().unwrap_or_default();
        if !stale || first == DIRECT_PREFIX || first == REPLY_PREFIX {
            return false;
        }
        !self
            .subscribe_decision(&Resource::Pattern(pattern), now_ms)
            .allowed
    }

    /// The session's decision (cached, or made and recorded) on a subscription to `resource`.
    fn subscribe_decision(&self, resource: &Resource<'_>, now_ms: u64) -> Arc<Decision> {
        let mut decisions = self
            .decisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        decisions
            .decision(&self.authz, Action::Subscribe, resource, now_ms)
            .0
    }
}

/// What a subscription may do with a message on one of its channels now
/// ([`DeliveryGate::may_carry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carry {
    /// Deliver it.
    Yes,
    /// Not for this subscription: a forbid covers the channel (or fails to evaluate) while
    /// the pattern stays allowed.
    Skip,
    /// Nothing is decided for now: the subscription's pattern is no longer allowed (the
    /// session will end it) or the audit log failed. A live message is not carried; a durable
    /// entry stays the consumer's, for when it may read again.
    Wait,
}

#[cfg(test)]
impl Authz {
    /// An `Authz` running the base policies and `policies` (source `test.cedar`), without a
    /// store; panics if they do not load.
    #[expect(clippy::expect_used, reason = "unit tests only")]
    pub(crate) fn with_policies(policies: &str, stats: Arc<Stats>) -> Self {
        let sources = vec![("test.cedar".to_owned(), policies.to_owned())];
        let set = build(&sources, &Limits::default()).expect("test policies load");
        let time = reads_time(&set);
        let set_risk = reads_context(&set, "risk");
        let rates = PolicyRates::of(&set, &PolicyRates::default());
        let engine = Engine::new(set);
        let (epoch, _) = watch::channel(engine.epoch());
        Self {
            engine,
            grants: GrantState::with_book(GrantBook::default()),
            holds: Holds::default(),
            sources: Mutex::new(sources),
            loading: tokio::sync::Mutex::new(()),
            epoch,
            origin: PolicyOrigin::Initial,
            limits: Limits::default(),
            stats,
            skip_decisions: false,
            reads_time: AtomicBool::new(time),
            reads_risk: AtomicBool::new(set_risk),
            anomaly: Arc::new(Anomaly::new(AnomalyConfig::default())),
            auditor: Auditor::off(),
            rated: AtomicBool::new(!rates.is_empty()),
            rates: RwLock::new(rates),
            members: Mutex::default(),
        }
    }

    /// Replaces the running set with the base policies and `policies`, without a store.
    #[expect(clippy::expect_used, reason = "unit tests only")]
    pub(crate) fn replace_for_tests(&self, policies: &str) -> u64 {
        let sources = vec![("test.cedar".to_owned(), policies.to_owned())];
        let set = build(&sources, &self.limits).expect("test policies load");
        self.reads_time.store(reads_time(&set), Ordering::Relaxed);
        self.reads_risk
            .store(reads_context(&set, "risk"), Ordering::Relaxed);
        self.replace_rates(&set);
        let epoch = self.engine.replace(set);
        self.epoch.send_replace(epoch);
        epoch
    }
}

// === helpers ===

/// The action of a publish on `channel` that is not a request: `direct` on a direct channel,
/// `publish` on any other.
pub(crate) fn transport_action(channel: &Channel) -> Action {
    if channel.tokens().next() == Some(DIRECT_PREFIX) {
        Action::Direct
    } else {
        Action::Publish
    }
}

/// Whether `pattern` matches `channel`, where a wildcard first token never matches a system
/// channel. Routing matches subscriptions with this.
pub(crate) fn matches(pattern: &ChannelPattern, channel: &Channel) -> bool {
    pattern.routes(channel)
}

/// A denial in words: the deciding policies, or the default deny (saying when the request
/// crossed segments), and the epoch.
fn denial(engine: &Engine, subject: &Subject, resource: &Resource<'_>, d: &Decision) -> String {
    let quoted = |ids: &[entente_policy::PolicyId]| {
        ids.iter()
            .map(|id| format!("`{id}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let plural = if d.policies.len() == 1 { "y" } else { "ies" };
    let mut text = match d.reason {
        Reason::Forbid => format!("forbidden by polic{plural} {}", quoted(&d.policies)),
        Reason::ForbidFailed => format!(
            "forbid polic{plural} {} failed to evaluate, which denies",
            quoted(&d.policies)
        ),
        Reason::BadRequest => "the request could not be evaluated".to_owned(),
        Reason::NoPermit | Reason::Permit => "no policy permits it".to_owned(),
    };
    if d.cross_segment {
        let theirs = match resource {
            Resource::Channel(_) | Resource::Pattern(_) => engine
                .policies()
                .namespace_owner(resource.name())
                .to_owned(),
            Resource::Agent(agent) => agent.segment().to_owned(),
            Resource::Human(_) | Resource::Hub(_) => entente_policy::NO_SEGMENT.to_owned(),
            Resource::Segment(segment) => (*segment).to_owned(),
        };
        let theirs = if theirs == entente_policy::NO_SEGMENT {
            "no segment".to_owned()
        } else {
            format!("segment `{theirs}`")
        };
        text.push_str(&format!(
            " across segments (from segment `{}` to {theirs}: only @cross_segment permits apply)",
            subject.segment().unwrap_or_default()
        ));
    }
    text.push_str(&format!(" (policy epoch {})", d.epoch));
    text
}

/// Checks the hub's bounds on `sources`, then builds the set: the base policies first.
fn build(sources: &[(String, String)], limits: &Limits) -> Result<PolicySet, LoadPoliciesError> {
    let refused = |message: String| Err(LoadPoliciesError::Refused(message));
    if sources.len() > MAX_POLICY_SOURCES {
        return refused(format!(
            "{} policy sources: at most {MAX_POLICY_SOURCES}",
            sources.len()
        ));
    }
    for (i, (name, text)) in sources.iter().enumerate() {
        if name.is_empty() || name.len() > MAX_POLICY_SOURCE_NAME_BYTES {
            return refused(format!(
                "policy source #{}: a source name is 1 to {MAX_POLICY_SOURCE_NAME_BYTES} bytes",
                i + 1
            ));
        }
        if name == BASE_SOURCE {
            return refused(format!(
                "the source name `{BASE_SOURCE}` is reserved for the hub's base policies"
            ));
        }
        if sources.iter().take(i).any(|(other, _)| other == name) {
            return refused(format!("two policy sources are named `{name}`"));
        }
        if text.len() > MAX_POLICY_TEXT_BYTES {
            return refused(format!(
                "{name}: {} bytes of policies, at most {MAX_POLICY_TEXT_BYTES}",
                text.len()
            ));
        }
    }
    if encode_stored(sources).len() > limits.max_frame_bytes {
        return refused(format!(
            "the policy sources take more than the frame limit of {} bytes",
            limits.max_frame_bytes
        ));
    }
    let builder = sources.iter().fold(
        PolicySet::builder()
            .max_policies(MAX_POLICIES)
            .source(BASE_SOURCE, BASE_POLICIES),
        |builder, (name, text)| builder.source(name.as_str(), text.as_str()),
    );
    let set = builder.build()?;
    unsupplied(&set)?;
    if set.len() > MAX_POLICIES {
        return refused(format!("{} policies: at most {MAX_POLICIES}", set.len()));
    }
    if let Some(long) = set
        .policies()
        .iter()
        .find(|p| p.id.as_str().len() > MAX_POLICY_ID_BYTES)
    {
        return refused(format!(
            "{}:{}:{}: a policy ID is at most {MAX_POLICY_ID_BYTES} bytes",
            long.source, long.line, long.column
        ));
    }
    Ok(set)
}

/// How many policy epochs one run of the hub may use before its epochs could meet the next
/// run's: each run starts this far above the previous run's start.
const EPOCH_SPAN: u64 = 1 << 20;

/// The store's config key of the epoch the last run started at.
const EPOCH_FLOOR_KEY: &str = "policy_epoch_floor";

/// The epoch this run starts at, stored before it is used: 1 on a fresh store, then
/// [`EPOCH_SPAN`] above the previous run's start, so that a policy epoch (in a denial, in an
/// audit record) names one state of one run.
async fn next_epoch_floor(registry: &Registry) -> Result<u64, HubError> {
    let floor = match registry.config(EPOCH_FLOOR_KEY).await? {
        None => 1,
        Some(bytes) => {
            let stored = <[u8; 8]>::try_from(bytes.as_slice()).map_err(|_| {
                HubError::StoredPolicies("the stored policy epoch floor is not 8 bytes".into())
            })?;
            u64::from_be_bytes(stored).saturating_add(EPOCH_SPAN)
        }
    };
    registry
        .put_config(EPOCH_FLOOR_KEY, &floor.to_be_bytes())
        .await?;
    Ok(floor)
}

/// Whether a policy of `set` reads `context.now`.
fn reads_time(set: &PolicySet) -> bool {
    reads_context(set, "now")
}

/// Whether a policy of `set` reads `context.<attr>`.
fn reads_context(set: &PolicySet, attr: &str) -> bool {
    set.policies()
        .iter()
        .any(|policy| policy.context_read.iter().any(|read| read == attr))
}

/// The `context` attributes the schema declares that this hub does not supply yet, each with
/// the value every decision would see instead.
const UNSUPPLIED_CONTEXT: [(&str, &str); 2] = [
    ("tls_resumed", "false"),
    ("hub", "empty: this hub decides alone"),
];

/// Refuses a set with policies that read facts this hub does not supply: a `context` attribute
/// of [`UNSUPPLIED_CONTEXT`], or a role (the registry gives principals none). Such a policy
/// would decide on a default — a forbid that never fires, a permit that always does — so it
/// is refused with its location rather than run.
fn unsupplied(set: &PolicySet) -> Result<(), LoadError> {
    let mut problems = Vec::new();
    for policy in set.policies() {
        let mut say = |message: String| {
            problems.push(Problem {
                source: policy.source.clone(),
                location: Some((policy.line, policy.column)),
                policy: Some(policy.id.to_string()),
                message,
            });
        };
        for (attr, instead) in UNSUPPLIED_CONTEXT {
            if policy.context_read.iter().any(|read| read == attr) {
                say(format!(
                    "it reads `context.{attr}`, which this hub does not supply yet (it would always be {instead})"
                ));
            }
        }
        if policy.names_roles {
            say("it names a role, and this hub gives principals no roles yet".to_owned());
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Rules(problems))
    }
}

/// The stored form of `sources`.
fn encode_stored(sources: &[(String, String)]) -> Vec<u8> {
    StoredPolicies {
        version: STORED_VERSION,
        sources: sources
            .iter()
            .map(|(name, text)| PolicySource {
                name: name.clone(),
                text: text.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

/// The sources of a stored set, decoded under the hub's bounds.
fn decode_stored(bytes: &[u8], limits: &Limits) -> Result<Vec<(String, String)>, String> {
    let stored: StoredPolicies =
        entente_wire::decode(bytes, limits).map_err(|e| format!("it does not decode: {e}"))?;
    if stored.version != STORED_VERSION {
        return Err(format!(
            "it is of version {}; this hub reads version {STORED_VERSION}",
            stored.version
        ));
    }
    Ok(stored
        .sources
        .into_iter()
        .map(|source| (source.name, source.text))
        .collect())
}

/// Every problem of a refused set, one per line after the error's summary.
pub(crate) fn problems_text(error: &LoadPoliciesError) -> String {
    match error {
        LoadPoliciesError::Invalid(invalid) if !invalid.problems().is_empty() => {
            let mut text = format!("{} problem(s):", invalid.problems().len());
            for problem in invalid.problems() {
                text.push_str(&format!("\n  {problem}"));
            }
            text
        }
        other => other.to_string(),
    }
}

// === impl LoadPoliciesError ===

impl LoadPoliciesError {
    /// Each problem in one line, `file:line:col: …` where known: what the CLI and the
    /// administrators' RPC list.
    pub fn problems(&self) -> Vec<String> {
        match self {
            LoadPoliciesError::Invalid(invalid) if !invalid.problems().is_empty() => {
                invalid.problems().iter().map(ToString::to_string).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use entente_types::{AgentId, HumanId, TrustDomain};

    use super::*;

    const NOW: u64 = 1_760_000_000_000;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn agent(segment: &str, name: &str) -> Principal {
        Principal::from(AgentId::new(&td(), segment, name).unwrap())
    }

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    fn c(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    fn authz(policies: &str) -> Authz {
        Authz::with_policies(policies, Arc::default())
    }

    /// Segment `shop` may use its own namespace, `shop.>`.
    const SHOP: &str = r#"
        @id("shop-traffic")
        permit (principal in Segment::"shop",
                action in [Action::"publish", Action::"subscribe"],
                resource in Namespace::"shop");
    "#;

    fn publish(authz: &Authz, who: &Principal, channel: &str) -> Result<(), Denied> {
        let channel = c(channel);
        SessionAuthz::new(who)
            .publish(authz, transport_action(&channel), &channel, NOW)
            .map(drop)
    }

    fn subscribe(authz: &Authz, who: &Principal, pattern: &str) -> Result<(), Denied> {
        SessionAuthz::new(who).subscribe(authz, &p(pattern), NOW)
    }

    #[test]
    fn no_policies_deny_everything_but_own_namespaces_and_directs_within_a_segment() {
        let authz = authz("");
        let alice = agent("shop", "alice");
        let denied = publish(&authz, &alice, "orders").unwrap_err();
        assert!(
            denied.to_string().starts_with("no policy permits it"),
            "{denied}"
        );
        assert!(subscribe(&authz, &alice, "orders.>").is_err());
        for own in [
            "_direct.shop.alice",
            "_reply.shop.alice.>",
            "_reply.shop.alice.r1",
        ] {
            assert!(subscribe(&authz, &alice, own).is_ok(), "{own}");
        }
        // The base policy: directs within the segment, nothing across.
        assert!(publish(&authz, &alice, "_direct.shop.bob").is_ok());
        let eve = agent("lab", "eve");
        let denied = publish(&authz, &eve, "_direct.shop.bob").unwrap_err();
        assert!(denied.to_string().contains("across segments"), "{denied}");
        assert!(denied.to_string().contains("segment `shop`"), "{denied}");
        let stats = authz.stats.snapshot();
        assert_eq!((stats.policy_allows, stats.policy_denials), (1, 3));
    }

    #[test]
    fn nobody_else_may_subscribe_to_an_agents_namespaces_whatever_policies_say() {
        let authz = authz(
            r#"permit (principal is Agent, action == Action::"subscribe", resource);
               @cross_segment
               permit (principal, action == Action::"subscribe", resource in Namespace::"_reply");
               @cross_segment
               permit (principal, action == Action::"subscribe", resource in Namespace::"_direct");"#,
        );
        let bob = agent("shop", "bob");
        for pattern in [
            "_reply.shop.alice.>",
            "_reply.shop.*.>",
            "_reply.>",
            "_reply.shop.>",
            "_direct.shop.alice",
            "_direct.*.*",
            "_direct.shop.bob.extra",
            "_reply.shop.bob",
        ] {
            let denied = subscribe(&authz, &bob, pattern).unwrap_err();
            assert!(
                denied.to_string().contains("only its owner"),
                "{pattern}: {denied}"
            );
        }
        // `>` never reaches system channels, whoever may subscribe to it.
        assert!(!matches(&p(">"), &c("_reply.shop.alice.x")));
        assert!(!matches(&p("*.shop.alice"), &c("_direct.shop.alice")));
        assert!(matches(&p("_direct.shop.alice"), &c("_direct.shop.alice")));
        assert!(matches(&p(">"), &c("orders.eu")));
    }

    #[test]
    fn humans_own_their_human_namespace_only() {
        let authz = authz("");
        let human = Principal::from(HumanId::new(&td(), "ops").unwrap());
        assert!(subscribe(&authz, &human, "_direct.human.ops").is_err());
        assert!(subscribe(&authz, &human, "_direct.human:ops").is_ok());
        assert!(subscribe(&authz, &human, "_reply.human:ops.>").is_ok());
        assert!(subscribe(&authz, &agent("human", "ops"), "_direct.human:ops").is_err());
    }

    #[test]
    fn segment_policies_grant_their_segment_and_namespace_only() {
        let authz = authz(SHOP);
        let alice = agent("shop", "alice");
        let eve = agent("lab", "eve");
        assert!(publish(&authz, &alice, "shop.eu").is_ok());
        assert!(publish(&authz, &alice, "shop.eu.x").is_ok());
        // `resource in Namespace::"shop"` is NATS `shop.>`: not `shop` itself.
        assert!(publish(&authz, &alice, "shop").is_err());
        let denied = publish(&authz, &eve, "shop.eu").unwrap_err();
        assert!(
            denied
                .to_string()
                .contains("across segments (from segment `lab` to segment `shop`"),
            "{denied}"
        );
        // Subscriptions the namespace covers, and those it does not.
        for yes in ["shop.*", "shop.eu.>", "shop.>", "shop.*.created"] {
            assert!(subscribe(&authz, &alice, yes).is_ok(), "{yes}");
        }
        for no in [">", "*.eu", "shop", "audit.>"] {
            assert!(subscribe(&authz, &alice, no).is_err(), "{no}");
        }
        assert!(subscribe(&authz, &eve, "shop.*").is_err());
        // Another segment's namespace takes a @cross_segment permit, even for a wide one.
        let wide = super::tests::authz(
            r#"permit (principal in Segment::"shop", action, resource is Channel);"#,
        );
        assert!(publish(&wide, &alice, "shop.eu").is_ok());
        assert!(publish(&wide, &alice, "orders.eu").is_err());
    }

    #[test]
    fn a_cross_segment_permit_opens_exactly_its_channel_and_a_forbid_wins() {
        let authz = authz(
            r#"
            @id("lab-reads-results")
            @cross_segment
            permit (principal in Segment::"lab", action == Action::"subscribe",
                    resource == Channel::"orders.results");
            @id("lab-to-bob")
            @cross_segment
            permit (principal in Segment::"lab", action == Action::"direct",
                    resource == Channel::"_direct.orders.bob");
            @id("no-mallory")
            forbid (principal == Agent::"spiffe://example.org/agent/lab/mallory", action, resource);
            "#,
        );
        let eve = agent("lab", "eve");
        assert!(subscribe(&authz, &eve, "orders.results").is_ok());
        assert!(subscribe(&authz, &eve, "orders.results.x").is_err());
        assert!(subscribe(&authz, &eve, "orders.>").is_err());
        assert!(publish(&authz, &eve, "_direct.orders.bob").is_ok());
        assert!(publish(&authz, &eve, "_direct.orders.carol").is_err());
        let mallory = agent("lab", "mallory");
        let denied = subscribe(&authz, &mallory, "orders.results").unwrap_err();
        assert!(
            denied
                .to_string()
                .starts_with("forbidden by policy `no-mallory`"),
            "{denied}"
        );
    }

    #[test]
    fn requests_and_directs_are_their_own_actions() {
        let authz = authz(
            r#"
            @id("shop-requests")
            permit (principal in Segment::"shop", action == Action::"request",
                    resource in Namespace::"_direct.shop");
            "#,
        );
        let alice = agent("shop", "alice");
        let bob = c("_direct.shop.bob");
        let mut session = SessionAuthz::new(&alice);
        assert_eq!(transport_action(&bob), Action::Direct);
        assert_eq!(transport_action(&c("orders.eu")), Action::Publish);
        assert!(session.publish(&authz, Action::Request, &bob, NOW).is_ok());
        assert!(session.publish(&authz, Action::Direct, &bob, NOW).is_ok());
        assert!(
            session
                .publish(&authz, Action::Request, &c("orders.eu"), NOW)
                .is_err()
        );
    }

    #[test]
    fn bounds_and_reserved_names_are_refused_before_cedar() {
        let limits = Limits::default();
        let one = |name: &str, text: &str| vec![(name.to_owned(), text.to_owned())];
        for (sources, needle) in [
            (one("base", ""), "reserved"),
            (one("", ""), "1 to"),
            (one(&"n".repeat(256), ""), "1 to"),
            (
                one("a.cedar", &" ".repeat(MAX_POLICY_TEXT_BYTES + 1)),
                "at most",
            ),
            (
                vec![
                    ("a.cedar".to_owned(), String::new()),
                    ("a.cedar".to_owned(), String::new()),
                ],
                "two policy sources",
            ),
            (
                one(
                    "a.cedar",
                    &format!(
                        "@id(\"{}\") permit (principal is Agent, action, resource is Channel);",
                        "i".repeat(MAX_POLICY_ID_BYTES + 1)
                    ),
                ),
                "policy ID",
            ),
        ] {
            let err = build(&sources, &limits).unwrap_err();
            assert!(matches!(err, LoadPoliciesError::Refused(_)), "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let err = build(&one("bad.cedar", "permit (principal,"), &limits).unwrap_err();
        let problems = err.problems();
        assert!(problems[0].starts_with("bad.cedar:1:"), "{problems:?}");
        assert!(problems_text(&err).contains("\n  bad.cedar:1:"));
    }

    #[test]
    fn policies_reading_facts_the_hub_does_not_supply_are_refused_with_their_place() {
        let limits = Limits::default();
        for (text, needle) in [
            (
                r#"forbid (principal, action, resource) when { context has tls_resumed && context["tls_resumed"] };"#,
                "`context.tls_resumed`",
            ),
            (
                r#"permit (principal is Agent, action, resource is Channel) when { context.hub == "eu" };"#,
                "`context.hub`",
            ),
            (
                r#"forbid (principal in Role::"contractor", action, resource);"#,
                "names a role",
            ),
            (
                r#"permit (principal is Agent, action, resource is Channel) when { principal in Role::"ops" };"#,
                "names a role",
            ),
        ] {
            let sources = vec![("f.cedar".to_owned(), format!("\n  {text}"))];
            let err = build(&sources, &limits).unwrap_err();
            let problems = err.problems();
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert!(problems[0].starts_with("f.cedar:2:3:"), "{problems:?}");
            assert!(problems[0].contains(needle), "{needle}: {problems:?}");
        }
        // What the hub supplies: the time, grants, approvals, whether a request crosses
        // segments, the risk score.
        let supplied = r#"
            permit (principal is Agent, action, resource is Channel)
            when { context.now > 0 && context.grants.contains("g") && context.approvals > 1
                   && context.approvers.contains("x") && !context.cross_segment
                   && context.risk < 50 };"#;
        assert!(build(&[("ok.cedar".to_owned(), supplied.to_owned())], &limits).is_ok());
    }

    #[test]
    fn the_stored_form_round_trips_and_refuses_other_versions() {
        let limits = Limits::default();
        let sources = vec![("a.cedar".to_owned(), SHOP.to_owned())];
        let bytes = encode_stored(&sources);
        assert_eq!(decode_stored(&bytes, &limits).unwrap(), sources);
        let other = StoredPolicies {
            version: 2,
            sources: vec![],
        }
        .encode_to_vec();
        assert!(
            decode_stored(&other, &limits)
                .unwrap_err()
                .contains("version 2")
        );
        assert!(decode_stored(&[0xff, 0xff], &limits).is_err());
    }

    #[tokio::test]
    async fn a_bump_changes_the_epoch_and_wakes_watchers() {
        let authz = authz(SHOP);
        let mut watch = authz.watch();
        let before = authz.engine().epoch();
        assert_eq!(authz.bump(), before + 1);
        watch.changed().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), before + 1);
        assert_eq!(authz.running().epoch, before + 1);
        assert_eq!(authz.running().sources.len(), 1);
    }
}
