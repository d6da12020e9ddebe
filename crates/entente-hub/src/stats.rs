//! Counters of what the hub served, refused and dropped.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the hub's counters ([`HubHandle::stats`](crate::HubHandle::stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Connections whose TLS handshake completed.
    pub connections: u64,
    /// Connections refused or dropped during the TLS handshake (bad or missing certificate,
    /// TLS 1.2, timeout, not TLS).
    pub handshakes_failed: u64,
    /// Streams ended for an undecodable, oversized or unknown frame.
    pub malformed_frames: u64,
    /// Publishes refused because a batch or sender key named another sender.
    pub forged_senders: u64,
    /// Publishes refused because an envelope was a replay.
    pub replays: u64,
    /// Publishes, subscriptions and directory lookups by channel refused as `DENIED` (or
    /// `PERMISSION_DENIED`): by the policies, by the structural rules of own namespaces, or
    /// for lack of a reply grant.
    pub denials: u64,
    /// Decisions the policy engine allowed (cached or not): one per subscription, per channel
    /// group of a publish and per action it needs, per directory lookup by channel, and per
    /// subscription decided again after a policy change.
    pub policy_allows: u64,
    /// Decisions the policy engine denied.
    pub policy_denials: u64,
    /// Subscriptions the hub ended because a change of policy (or of what policies depend
    /// on) no longer allows them.
    pub subscriptions_ended: u64,
    /// Deliveries to wildcard subscriptions withheld because a forbid covers the channel
    /// published on, though the subscription's pattern is permitted (not failures: the
    /// directory does not list such subscribers as members).
    pub withheld_deliveries: u64,
    /// Messages held for approval (acknowledged to their publisher as held).
    pub held_messages: u64,
    /// Times a held message could not be stored or deleted (a hold refused, or a released
    /// one left stored as pending).
    pub held_store_failures: u64,
    /// Audit records made durable ([`HubConfig::audit`](crate::HubConfig::audit)).
    pub audit_records: u64,
    /// Group commits of the audit log that made records durable: each one write and one
    /// `fdatasync` of every record queued since the previous one (and a seal's when one
    /// falls due, [`AuditConfig::commit_interval`](crate::AuditConfig::commit_interval)).
    pub audit_commits: u64,
    /// Of those, the commits whose records waited for the commit interval after the commit
    /// before (records arriving soon after a commit share the next one); one after a quiet
    /// spell is made at once.
    pub audit_commits_held: u64,
    /// Times the audit log failed (a write, `fdatasync` or seal); after the first, the hub
    /// refuses everything it would record until restarted.
    pub audit_failures: u64,
    /// Entries stored in durable channels.
    pub durable_stored: u64,
    /// Entries of durable channels delivered to consumers (redeliveries included).
    pub durable_delivered: u64,
    /// Publishes refused because a durable channel was full.
    pub durable_full: u64,
    /// Entries moved to a dead-letter log after too many deliveries.
    pub durable_dead_letters: u64,
    /// Entries dropped for age before every consumer acknowledged them.
    pub durable_expired: u64,
    /// Times a durable channel's storage failed (a write, or an entry that does not open).
    pub durable_failures: u64,
    /// Deliveries that failed (each reported to its publisher as `DELIVERY_FAILED`).
    pub delivery_failures: u64,
    /// Connections closed because their outbound queue stayed full.
    pub slow_consumer_disconnects: u64,
    /// Connections closed because their certificate or principal was revoked.
    pub revoked_disconnects: u64,
    /// Connections closed because their credential expired unrenewed.
    pub expired_disconnects: u64,
    /// Connections closed because their principal was quarantined.
    pub quarantined_disconnects: u64,
    /// Connections refused after the handshake because their principal is quarantined.
    pub quarantined_refusals: u64,
    /// Agents quarantined (by the detector or an administrator).
    pub quarantines: u64,
    /// Times an agent's risk made the hub throttle it.
    pub throttled_agents: u64,
    /// Quarantine notices the webhook accepted.
    pub webhook_sent: u64,
    /// Quarantine notices that could not be queued or sent.
    pub webhook_failures: u64,
    /// Metric exports the OpenTelemetry collector accepted.
    pub otlp_exports: u64,
    /// Metric exports that failed (not sent, or refused).
    pub otlp_failures: u64,
    /// Agents enrolled.
    pub enrollments: u64,
    /// Enrollments refused (bad token, bad request, or a failure after the token was spent).
    pub enroll_refusals: u64,
    /// Certificates renewed.
    pub renewals: u64,
    /// Renewals refused.
    pub renew_refusals: u64,
    /// Administrative requests served: join tokens created, revocations made, policies
    /// loaded, shown and checked by remote administrators (the operator's
    /// [`HubHandle`](crate::HubHandle) calls are not counted).
    pub admin_actions: u64,
    /// Administrative requests refused: callers neither listed administrators nor permitted by the policies, bad requests (invalid
    /// policies among them), an administrator revoking itself, store or CA failures.
    pub admin_refusals: u64,
    /// Grant requests served: grants given, just-in-time requests made, approvals and
    /// rejections recorded, grant lists shown.
    pub grant_actions: u64,
    /// Grant requests refused: not permitted, bad or unknown names and durations, bad or
    /// replayed statements, self-approval, unknown, expired or decided requests, store
    /// failures.
    pub grant_refusals: u64,
    /// Grants that ended and were removed from the book by the hub, with nobody acting.
    pub grants_expired: u64,
    /// Times the grant book could not be stored (the change was refused; an expiry is tried
    /// again).
    pub grant_store_failures: u64,
    /// Publishes refused by a rate limit (`RATE_LIMITED`).
    pub rate_limited: u64,
    /// Connections refused by a connection limit (the hub's or an agent's).
    pub connection_limit_hits: u64,
    /// Connections closed after staying idle past the idle timeout.
    pub idle_disconnects: u64,
}

/// The live counters.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) handshakes_failed: AtomicU64,
    pub(crate) malformed_frames: AtomicU64,
    pub(crate) forged_senders: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) denials: AtomicU64,
    pub(crate) policy_allows: AtomicU64,
    pub(crate) policy_denials: AtomicU64,
    pub(crate) subscriptions_ended: AtomicU64,
    pub(crate) withheld_deliveries: AtomicU64,
    pub(crate) held_messages: AtomicU64,
    pub(crate) held_store_failures: AtomicU64,
    pub(crate) audit_records: AtomicU64,
    pub(crate) audit_commits: AtomicU64,
    pub(crate) audit_commits_held: AtomicU64,
    pub(crate) audit_failures: AtomicU64,
    pub(crate) durable_stored: AtomicU64,
    pub(crate) durable_delivered: AtomicU64,
    pub(crate) durable_full: AtomicU64,
    pub(crate) durable_dead_letters: AtomicU64,
    pub(crate) durable_expired: AtomicU64,
    pub(crate) durable_failures: AtomicU64,
    pub(crate) delivery_failures: AtomicU64,
    pub(crate) slow_consumer_disconnects: AtomicU64,
    pub(crate) revoked_disconnects: AtomicU64,
    pub(crate) expired_disconnects: AtomicU64,
    pub(crate) quarantined_disconnects: AtomicU64,
    pub(crate) quarantined_refusals: AtomicU64,
    pub(crate) quarantines: AtomicU64,
    pub(crate) throttled_agents: AtomicU64,
    pub(crate) webhook_sent: AtomicU64,
    pub(crate) webhook_failures: AtomicU64,
    pub(crate) otlp_exports: AtomicU64,
    pub(crate) otlp_failures: AtomicU64,
    pub(crate) enrollments: AtomicU64,
    pub(crate) enroll_refusals: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) renew_refusals: AtomicU64,
    pub(crate) admin_actions: AtomicU64,
    pub(crate) admin_refusals: AtomicU64,
    pub(crate) grant_actions: AtomicU64,
    pub(crate) grant_refusals: AtomicU64,
    pub(crate) grants_expired: AtomicU64,
    pub(crate) grant_store_failures: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) connection_limit_hits: AtomicU64,
    pub(crate) idle_disconnects: AtomicU64,
    /// Traffic by channel class, limit hits by limit, publish latency (the metrics endpoint).
    pub(crate) traffic: crate::metrics::Traffic,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> HubStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HubStats {
            connections: get(&self.connections),
            handshakes_failed: get(&self.handshakes_failed),
            malformed_frames: get(&self.malformed_frames),
            forged_senders: get(&self.forged_senders),
            replays: get(&self.replays),
            denials: get(&self.denials),
            policy_allows: get(&self.policy_allows),
            policy_denials: get(&self.policy_denials),
            subscriptions_ended: get(&self.subscriptions_ended),
            withheld_deliveries: get(&self.withheld_deliveries),
            held_messages: get(&self.held_messages),
            held_store_failures: get(&self.held_store_failures),
            audit_records: get(&self.audit_records),
            audit_commits: get(&self.audit_commits),
            audit_commits_held: get(&self.audit_commits_held),
            audit_failures: get(&self.audit_failures),
            durable_stored: get(&self.durable_stored),
            durable_delivered: get(&self.durable_delivered),
            durable_full: get(&self.durable_full),
            durable_dead_letters: get(&self.durable_dead_letters),
            durable_expired: get(&self.durable_expired),
            durable_failures: get(&self.durable_failures),
            delivery_failures: get(&self.delivery_failures),
            slow_consumer_disconnects: get(&self.slow_consumer_disconnects),
            revoked_disconnects: get(&self.revoked_disconnects),
            expired_disconnects: get(&self.expired_disconnects),
            quarantined_disconnects: get(&self.quarantined_disconnects),
            quarantined_refusals: get(&self.quarantined_refusals),
            quarantines: get(&self.quarantines),
            throttled_agents: get(&self.throttled_agents),
            webhook_sent: get(&self.webhook_sent),
            webhook_failures: get(&self.webhook_failures),
            otlp_exports: get(&self.otlp_exports),
            otlp_failures: get(&self.otlp_failures),
            enrollments: get(&self.enrollments),
            enroll_refusals: get(&self.enroll_refusals),
            renewals: get(&self.renewals),
            renew_refusals: get(&self.renew_refusals),
            admin_actions: get(&self.admin_actions),
            admin_refusals: get(&self.admin_refusals),
            grant_actions: get(&self.grant_actions),
            grant_refusals: get(&self.grant_refusals),
            grants_expired: get(&self.grants_expired),
            grant_store_failures: get(&self.grant_store_failures),
            rate_limited: get(&self.rate_limited),
            connection_limit_hits: get(&self.connection_limit_hits),
            idle_disconnects: get(&self.idle_disconnects),
        }
    }
}

/// Adds `n` to a counter.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}
