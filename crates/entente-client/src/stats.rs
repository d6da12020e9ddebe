//! Counters of one client, read with [`Client::stats`](crate::Client::stats).

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of a client's counters since it connected, and of what it waits for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// Messages the hub acknowledged.
    pub published: u64,
    /// Messages the hub refused (their publishes failed with the refusal).
    pub publish_refused: u64,
    /// Signed batches sent (each one Ed25519 signature over up to `batch_max` messages).
    pub batches_sent: u64,
    /// `Publish` frames sent.
    pub publish_frames: u64,
    /// `Publish` frames the hub had not answered twice the request timeout after they were
    /// sent: let go (their waiters, if still there, get an
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) error), and their channels start new
    /// epochs. A late answer to one is ignored.
    pub publishes_unanswered: u64,
    /// Sender keys sent (new epochs, periodic resends, and the one every reply carries).
    pub sender_keys_sent: u64,
    /// Replies sent again, each alone, after the hub refused the batch of replies they shared
    /// because of one of them (its request's grant was used or had expired). Each is then
    /// answered on its own.
    pub replies_resent: u64,
    /// Messages opened and handed to subscriptions.
    pub received: u64,
    /// Signed batches received.
    pub batches_received: u64,
    /// Incoming envelopes refused — by the opener (bad signature, replay, expired, no sender
    /// key, …) or because the sender's key bundle could not be obtained. Each is also an
    /// [`ErrorKind::Rejected`](crate::ErrorKind::Rejected) (or directory) error on its
    /// subscription.
    pub rejected: u64,
    /// Incoming sender keys accepted (new epochs; resends of a known key are not counted).
    pub sender_keys_accepted: u64,
    /// Incoming sender keys refused (not a recipient, bad signature, conflict, …).
    pub sender_keys_rejected: u64,
    /// Verified replies a subscription was not given because its pattern does not match their
    /// channel: a batch of replies (PROTOCOL.md §5.5) reaches every subscription that matches
    /// one of its replies, and each takes its own.
    pub replies_unmatched: u64,
    /// Verified messages in this client's reply namespace that answered no waiting request:
    /// late (after the request timed out) or from a principal other than the request's target.
    pub replies_dropped: u64,
    /// Items (messages, or errors about messages that did not open) delivered to a
    /// subscription before the hub acknowledged it, past what its queue holds
    /// ([`ClientOptions::subscription_queue`](crate::ClientOptions::subscription_queue) and
    /// [`subscription_queue_bytes`](crate::ClientOptions::subscription_queue_bytes)): the
    /// application had no subscription to read them from yet. Dropped; an
    /// [`ErrorKind::Limited`](crate::ErrorKind::Limited) error on the subscription, after
    /// what it kept, says how many. Also what was set aside for a subscription the hub ended
    /// before acknowledging it (its error's details say how many).
    pub early_dropped: u64,
    /// Certificates renewed over the connection and put in use
    /// ([`ClientOptions::renew`](crate::ClientOptions::renew)).
    pub renewals: u64,
    /// Renewal attempts that failed — the hub refused or did not answer, or its certificate
    /// did not check out — and renewed certificates that could not be written to the identity
    /// directory, or whose answer offered a trust bundle or key bundle that was refused (the
    /// renewal itself took effect then).
    /// [`Client::renewal_error`](crate::Client::renewal_error) says why the latest failed.
    pub renewal_failures: u64,
    /// Requests waiting for their reply now (not a counter): each leaves when its reply
    /// arrives or it ends otherwise (timeout, error, the caller dropping it).
    pub awaiting_replies: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) published: AtomicU64,
    pub(crate) publish_refused: AtomicU64,
    pub(crate) batches_sent: AtomicU64,
    pub(crate) publish_frames: AtomicU64,
    pub(crate) publishes_unanswered: AtomicU64,
    pub(crate) sender_keys_sent: AtomicU64,
    pub(crate) replies_resent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) batches_received: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) sender_keys_accepted: AtomicU64,
    pub(crate) sender_keys_rejected: AtomicU64,
    pub(crate) replies_unmatched: AtomicU64,
    pub(crate) replies_dropped: AtomicU64,
    pub(crate) early_dropped: AtomicU64,
    pub(crate) renewals: AtomicU64,
    pub(crate) renewal_failures: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> ClientStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            published: get(&self.published),
            publish_refused: get(&self.publish_refused),
            batches_sent: get(&self.batches_sent),
            publish_frames: get(&self.publish_frames),
            publishes_unanswered: get(&self.publishes_unanswered),
            sender_keys_sent: get(&self.sender_keys_sent),
            replies_resent: get(&self.replies_resent),
            received: get(&self.received),
            batches_received: get(&self.batches_received),
            rejected: get(&self.rejected),
            sender_keys_accepted: get(&self.sender_keys_accepted),
            sender_keys_rejected: get(&self.sender_keys_rejected),
            replies_unmatched: get(&self.replies_unmatched),
            replies_dropped: get(&self.replies_dropped),
            early_dropped: get(&self.early_dropped),
            renewals: get(&self.renewals),
            renewal_failures: get(&self.renewal_failures),
            awaiting_replies: 0,
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
