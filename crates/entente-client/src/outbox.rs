//! The publishing side as a state machine: messages in, `Publish` frames out. No I/O.
//!
//! One [`Sealer`] per channel. Every frame of a new epoch carries its sender key until the hub
//! has acknowledged one that carried it ([`Outbox::acknowledged`]): frames go out without
//! waiting for the answers to those before, so the first one may be refused (a rate limit)
//! while the next is routed, and a frame without the key would then reach recipients who never
//! got it. A rotation happens when the recipients differ from the epoch's, when the sealer
//! says so ([`Sealer::needs_rotation`]: message count or age), or after [`Outbox::reset`]
//! (the hub refused a frame, so some recipients may lack the key); the sealer is kept and
//! rotated, so that the new epoch's number is above the old one's (PROTOCOL.md §4.3). Once
//! acknowledged, the current key is sent again once per resend interval, for recipients who
//! subscribed after it was first sent.
//!
//! Messages of one channel with the same recipients are sealed together (requests whatever
//! their `reply_to`), up to `batch_max` messages — requests and replies each up to the
//! writer's round-trip limit for their kind ([`RoundTrips`]) — or `batch_max_bytes` payload
//! bytes, as one signed batch (one Ed25519 signature): one `Publish` frame per batch, so that
//! a refusal only fails the messages it carried.
//!
//! A message with a purpose (for the approvers of a channel that holds messages) is sealed
//! alone, in a batch and frame of its own, carrying the purpose.
//!
//! Replies to one requester share one sealer, scoped to the requester's reply namespace root
//! (`_reply.S.N`, PROTOCOL.md §5.4): its epoch's sender key is wrapped once for the requester
//! and carried by every reply (a requester's session may not have seen it, and its inbox skips
//! a key it has already accepted without verifying it again), and every reply channel under
//! the root is sealed under the epoch's one payload key, its channel in its header. So a reply
//! costs a signature and AES-GCM, not an HPKE wrap, a second signature or a key derivation. A
//! requester's sealer is dropped once it has gone unused for [`REPLY_SCOPE_IDLE_MS`], so
//! answering many requesters keeps no state for long; another channel's, once it has gone
//! unused for [`CHANNEL_IDLE_MS`], so that publishing on many channels does not either (its
//! next message starts an epoch numbered by the clock, which has moved past the old one).

use std::collections::HashMap;
use std::sync::Arc;

use entente_crypto::{MessageKeys, SealError, Sealer, SealerOptions, VerifiedKeyBundle};
use entente_hub::MAX_REPLY_WAIT;
use entente_types::{Channel, Principal, namespace};
use entente_wire as wire;

use crate::{Error, ErrorKind};

/// How long a sealer for a requester's reply namespace is kept unused.
pub(crate) const REPLY_SCOPE_IDLE_MS: u64 = 60_000;

/// How long the sealer of any other channel is kept unused.
pub(crate) const CHANNEL_IDLE_MS: u64 = 10 * 60_000;

/// Age of a reply namespace sealer's epoch: the requester holds it until it expires.
const REPLY_EPOCH_MAX_AGE_MS: u64 = 10 * 60_000;

/// The recipients of a channel's sender keys: verified key bundles, the sender's own
/// included (so that its other sessions, and its own subscriptions, can read the channel),
/// one per principal, in a canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipients {
    bundles: Vec<VerifiedKeyBundle>,
}

/// One message waiting to be sealed, with `T` to hand back with its frame (the publisher's
/// waiter).
#[derive(Debug)]
pub(crate) struct Outgoing<T> {
    pub(crate) channel: Channel,
    pub(crate) payload: Vec<u8>,
    pub(crate) recipients: Arc<Recipients>,
    /// Where the recipients should reply, if anywhere (a request).
    pub(crate) reply_to: Option<Channel>,
    /// Why, for approvers: a message with a purpose is sealed and sent alone.
    pub(crate) purpose: Option<String>,
    /// Sealed and sent alone: a reply sent again after the hub refused the batch of replies
    /// it shared.
    pub(crate) alone: bool,
    pub(crate) ticket: T,
}

/// What sealing produced for some messages.
#[derive(Debug)]
pub(crate) enum Sealed<T> {
    /// A frame to send; its `Ack` or `Refusal` answers every ticket.
    Frame {
        /// The channel (a batch of replies: the reply namespace root) the frame is for.
        channel: Channel,
        publish: wire::Publish,
        tickets: Vec<T>,
        /// For a batch of replies, its messages in ticket order, to be sent again one by
        /// one if the hub refuses the batch for one of them; empty otherwise.
        replies: Vec<Outgoing<()>>,
    },
    /// These messages could not be sealed.
    Failed { tickets: Vec<T>, error: Error },
}

/// How the outbox seals.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutboxOptions {
    pub(crate) batch_max: usize,
    /// Most requests, and most replies, in a batch (no more than `batch_max`).
    pub(crate) round_trips: RoundTrips,
    /// Whether replies to one requester may share a batch of replies.
    pub(crate) reply_batches: bool,
    pub(crate) batch_max_bytes: usize,
    pub(crate) sender_key_resend_ms: u64,
    pub(crate) sealer: SealerOptions,
}

/// Most requests, and most replies, that one batch holds: the writer's round-trip limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundTrips {
    pub(crate) requests: usize,
    pub(crate) replies: usize,
}

impl RoundTrips {
    /// The same limit for requests and replies.
    pub(crate) fn both(limit: usize) -> Self {
        Self {
            requests: limit,
            replies: limit,
        }
    }

    /// The limit for messages of `kind`.
    pub(crate) fn of(&self, kind: RoundTrip) -> usize {
        match kind {
            RoundTrip::Request => self.requests,
            RoundTrip::Reply => self.replies,
        }
    }
}

/// What kind of round-trip message a message is ([`round_trip`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoundTrip {
    /// It asks for a reply (a `reply_to`), on any channel but a reply channel.
    Request,
    /// It answers, on a reply channel (asking back or not).
    Reply,
}

/// The sealers of one client.
#[derive(Debug)]
pub(crate) struct Outbox {
    me: Principal,
    key_epoch: u64,
    keys: Arc<MessageKeys>,
    options: OutboxOptions,
    /// Sealers by channel, or by reply namespace root for replies.
    channels: HashMap<Channel, ChannelState>,
    /// When idle sealers were last dropped.
    purged_ms: u64,
}

#[derive(Debug)]
struct ChannelState {
    sealer: Sealer,
    recipients: Arc<Recipients>,
    sender_key: wire::SenderKey,
    key_sent_ms: u64,
    /// Whether the hub acknowledged a frame carrying `sender_key`: until then, every frame
    /// carries it.
    key_acked: bool,
    /// The hub refused a frame ([`Outbox::reset`]): the next message starts a new epoch.
    rotate: bool,
    used_ms: u64,
}

// === impl Recipients ===

impl Recipients {
    /// `others` plus `own`, one bundle per principal (the newest epoch), sorted by principal.
    pub(crate) fn new(own: &VerifiedKeyBundle, others: Vec<VerifiedKeyBundle>) -> Self {
        let mut bundles = others;
        bundles.push(own.clone());
        Self::exactly(bundles)
    }

    /// Exactly `bundles` (one per principal, the newest epoch, sorted), without the sender:
    /// for direct messages and replies.
    pub(crate) fn exactly(mut bundles: Vec<VerifiedKeyBundle>) -> Self {
        bundles.sort_by(|a, b| {
            a.principal()
                .as_str()
                .cmp(b.principal().as_str())
                .then(b.epoch().cmp(&a.epoch()))
        });
        bundles.dedup_by(|later, earlier| later.principal() == earlier.principal());
        Self { bundles }
    }

    /// The bundles.
    pub(crate) fn bundles(&self) -> &[VerifiedKeyBundle] {
        &self.bundles
    }
}

// === impl Outbox ===

impl Outbox {
    pub(crate) fn new(
        me: Principal,
        key_epoch: u64,
        keys: Arc<MessageKeys>,
        options: OutboxOptions,
    ) -> Self {
        Self {
            me,
            key_epoch,
            keys,
            options,
            channels: HashMap::new(),
            purged_ms: 0,
        }
    }

    /// Makes the next message of `channel` (for a reply channel, of its requester's reply
    /// namespace) start a new epoch with a new sender key, numbered above the current one.
    pub(crate) fn reset(&mut self, channel: &Channel) {
        if let Some(state) = self.state_mut(channel) {
            state.rotate = true;
        }
    }

    /// The hub acknowledged a frame on `channel` (for a reply channel, of its requester's
    /// reply namespace) that carried the sender key of `epoch`: if that is still the current
    /// epoch, its key goes out again only once per resend interval.
    pub(crate) fn acknowledged(&mut self, channel: &Channel, epoch: u64) {
        if let Some(state) = self.state_mut(channel)
            && state.sender_key.epoch == epoch
        {
            state.key_acked = true;
        }
    }

    /// The state of the sealer of `channel`, or of its reply namespace root.
    fn state_mut(&mut self, channel: &Channel) -> Option<&mut ChannelState> {
        match namespace::reply_root_of(channel) {
            Some(root) => self.channels.get_mut(&root),
            None => self.channels.get_mut(channel),
        }
    }

    /// Seals `messages` into frames, in order within each channel. `next_id` draws request IDs.
    #[cfg(test)]
    pub(crate) fn seal<T>(
        &mut self,
        messages: Vec<Outgoing<T>>,
        now_ms: u64,
        next_id: &mut impl FnMut() -> u64,
    ) -> Vec<Sealed<T>> {
        let mut out = Vec::new();
        for run in self.runs(messages) {
            out.push(self.seal_run(run, now_ms, next_id));
        }
        out
    }

    /// Sets the most requests, and replies, in one batch, from the next [`runs`](Self::runs)
    /// on.
    pub(crate) fn set_round_trips(&mut self, limits: RoundTrips) {
        self.options.round_trips = RoundTrips {
            requests: limits.requests.max(1),
            replies: limits.replies.max(1),
        };
    }

    /// `messages` split into runs to seal as one batch each, in the order to send them: the
    /// writer seals and sends one before sealing the next, so that the hub can start on the
    /// first while the rest are sealed.
    pub(crate) fn runs<T>(&self, messages: Vec<Outgoing<T>>) -> Vec<Vec<Outgoing<T>>> {
        runs(messages, &self.options)
    }

    /// Seals one run of [`runs`](Self::runs): messages of one channel and one recipient set,
    /// within the batch limits.
    pub(crate) fn seal_run<T>(
        &mut self,
        run: Vec<Outgoing<T>>,
        now_ms: u64,
        next_id: &mut impl FnMut() -> u64,
    ) -> Sealed<T> {
        let Some(first) = run.first() else {
            return Sealed::Failed {
                tickets: Vec::new(),
                error: Error::new(ErrorKind::Protocol, "an empty batch"),
            };
        };
        let channel = first.channel.clone();
        // Replies are sealed by their requester's sealer; other channels by their own.
        let root = namespace::reply_root_of(&channel);
        let scope = root.as_ref().unwrap_or(&channel);
        let recipients = first.recipients.clone();
        let purpose = first.purpose.clone().unwrap_or_default();
        // Replies to one requester written together go as one batch of replies on its reply
        // namespace root, under one signature (PROTOCOL.md §5.5); a lone reply, or replies on
        // one channel, as a batch on that channel.
        let replies = root.is_some() && run.iter().any(|m| m.channel != channel);
        let mut messages = Vec::with_capacity(run.len());
        let mut tickets = Vec::with_capacity(run.len());
        for m in run {
            messages.push((m.channel, m.payload, m.reply_to));
            tickets.push(m.ticket);
        }
        let mut sealed = self.seal_batch(scope, &channel, replies, &recipients, &messages, now_ms);
        // A message held for approval may be released long after, or alone of its epoch (the
        // frames before it rejected): it carries the sender key with it, always. So does a
        // reply, for whichever session of the requester asked.
        if (!purpose.is_empty() || root.is_some())
            && let Ok((sender_key @ None, _)) = &mut sealed
        {
            *sender_key = self.channels.get(scope).map(|c| c.sender_key.clone());
        }
        self.purge_idle(now_ms);
        let (channel, replies) = if replies {
            let again = messages
                .into_iter()
                .map(|(channel, payload, reply_to)| Outgoing {
                    channel,
                    payload,
                    recipients: recipients.clone(),
                    reply_to,
                    purpose: None,
                    alone: true,
                    ticket: (),
                })
                .collect();
            (scope.clone(), again)
        } else {
            (channel, Vec::new())
        };
        match sealed {
            Ok((sender_key, batch)) => Sealed::Frame {
                channel,
                publish: wire::Publish {
                    request_id: next_id(),
                    sender_keys: sender_key.into_iter().collect(),
                    batches: vec![batch],
                    purpose,
                },
                tickets,
                replies,
            },
            Err(error) => Sealed::Failed { tickets, error },
        }
    }

    /// Seals `messages` (channel, payload and `reply_to` each) as one signed batch on
    /// `channel` with the sealer of `scope` (the channel, or the reply namespace root above
    /// it), or, if `replies`, as a batch of replies on `scope`, a reply namespace root, each
    /// on its own channel.
    fn seal_batch(
        &mut self,
        scope: &Channel,
        channel: &Channel,
        replies: bool,
        recipients: &Arc<Recipients>,
        messages: &[(Channel, Vec<u8>, Option<Channel>)],
        now_ms: u64,
    ) -> Result<(Option<wire::SenderKey>, wire::SignedBatch), Error> {
        let seal = |sealer: &mut Sealer| {
            if replies {
                sealer.seal_replies(
                    messages
                        .iter()
                        .map(|(on, payload, reply_to)| (on, payload.as_slice(), reply_to.as_ref())),
                    now_ms,
                )
            } else {
                sealer.seal_batch_on(
                    channel,
                    messages
                        .iter()
                        .map(|(_, payload, reply_to)| (payload.as_slice(), reply_to.as_ref())),
                    now_ms,
                )
            }
        };
        let sender_key = self.prepare(scope, recipients, now_ms)?;
        let state = self
            .channels
            .get_mut(scope)
            .ok_or_else(|| Error::new(ErrorKind::Crypto, "no sealer for the channel"))?;
        state.used_ms = now_ms;
        match seal(&mut state.sealer) {
            Ok(batch) => Ok((sender_key, batch)),
            // The epoch ran out inside this batch: start a new one and seal it all there.
            Err(SealError::EpochExhausted) => {
                let sender_key = state
                    .sealer
                    .rotate(recipients.bundles(), now_ms)
                    .map_err(|e| seal_error(channel, e))?;
                state.sender_key = sender_key.clone();
                state.key_sent_ms = now_ms;
                state.key_acked = false;
                let batch = seal(&mut state.sealer).map_err(|e| seal_error(channel, e))?;
                Ok((Some(sender_key), batch))
            }
            Err(e) => Err(seal_error(channel, e)),
        }
    }

    /// Makes sure `channel` has a sealer for `recipients` and returns the sender key to send
    /// with the next batch, if any: a new epoch's, or the current one's while the hub has
    /// acknowledged no frame carrying it (a frame sealed meanwhile may be refused, or its
    /// sealing may fail) or once the resend interval has passed.
    fn prepare(
        &mut self,
        channel: &Channel,
        recipients: &Arc<Recipients>,
        now_ms: u64,
    ) -> Result<Option<wire::SenderKey>, Error> {
        let resend = self.options.sender_key_resend_ms;
        if let Some(state) = self.channels.get_mut(channel) {
            let same = Arc::ptr_eq(&state.recipients, recipients)
                || state.recipients.as_ref() == recipients.as_ref();
            if same && !state.rotate && !state.sealer.needs_rotation(now_ms) {
                if !state.key_acked || now_ms.saturating_sub(state.key_sent_ms) >= resend {
                    state.key_sent_ms = now_ms;
                    return Ok(Some(state.sender_key.clone()));
                }
                return Ok(None);
            }
            let sender_key = state
                .sealer
                .rotate(recipients.bundles(), now_ms)
                .map_err(|e| seal_error(channel, e))?;
            state.recipients = recipients.clone();
            state.sender_key = sender_key.clone();
            state.key_sent_ms = now_ms;
            state.key_acked = false;
            state.rotate = false;
            return Ok(Some(sender_key));
        }
        let (sealer, sender_key) = Sealer::new(
            self.me.clone(),
            self.key_epoch,
            self.keys.clone(),
            channel.clone(),
            recipients.bundles(),
            self.sealer_options(channel),
            now_ms,
        )
        .map_err(|e| seal_error(channel, e))?;
        self.channels.insert(
            channel.clone(),
            ChannelState {
                sealer,
                recipients: recipients.clone(),
                sender_key: sender_key.clone(),
                key_sent_ms: now_ms,
                key_acked: false,
                rotate: false,
                used_ms: now_ms,
            },
        );
        Ok(Some(sender_key))
    }
}

impl Outbox {
    /// Drops the reply namespace sealers unused for [`REPLY_SCOPE_IDLE_MS`] and the others
    /// unused for [`CHANNEL_IDLE_MS`], at most once per [`REPLY_SCOPE_IDLE_MS`].
    fn purge_idle(&mut self, now_ms: u64) {
        if now_ms.saturating_sub(self.purged_ms) < REPLY_SCOPE_IDLE_MS {
            return;
        }
        self.purged_ms = now_ms;
        self.channels.retain(|channel, state| {
            let idle = if namespace::is_reply_root(channel) {
                REPLY_SCOPE_IDLE_MS
            } else {
                CHANNEL_IDLE_MS
            };
            now_ms.saturating_sub(state.used_ms) < idle
        });
    }

    /// The sealer options of `scope`. A reply's envelopes live no longer than the hub lets a
    /// reply wait ([`MAX_REPLY_WAIT`]), and a requester's epoch no longer than
    /// [`REPLY_EPOCH_MAX_AGE_MS`].
    fn sealer_options(&self, scope: &Channel) -> SealerOptions {
        let mut options = self.options.sealer;
        if namespace::is_reply_root(scope) {
            let wait = u64::try_from(MAX_REPLY_WAIT.as_millis()).unwrap_or(u64::MAX);
            options.message_ttl_ms = options.message_ttl_ms.min(wait);
            options.epoch_max_age_ms = options.epoch_max_age_ms.min(REPLY_EPOCH_MAX_AGE_MS);
        }
        options
    }
}

/// Splits messages into runs to seal as one batch each: grouped by channel, replies by their
/// requester's reply namespace root (in order of first appearance, order kept within a
/// group), then cut where the recipients change, a message has a purpose, or a batch limit is
/// reached. `reply_to` is each envelope's own, so requests with different reply channels share
/// a batch and its signature, and so do replies to one requester.
fn runs<T>(messages: Vec<Outgoing<T>>, options: &OutboxOptions) -> Vec<Vec<Outgoing<T>>> {
    // Each group with whether it is one of replies (its root the start of its channels' names).
    let mut by_channel: Vec<(bool, Vec<Outgoing<T>>)> = Vec::new();
    for m in messages {
        let root = if options.reply_batches {
            namespace::reply_root_name(&m.channel)
        } else {
            None
        };
        let replies = root.is_some();
        // Most often the group of the message before: look there first.
        let group = by_channel.iter().rposition(|(r, group)| {
            group.first().is_some_and(|first| match root {
                Some(root) => *r && namespace::reply_root_name(&first.channel) == Some(root),
                None => !*r && first.channel == m.channel,
            })
        });
        match group.and_then(|at| by_channel.get_mut(at)) {
            Some((_, group)) => group.push(m),
            None => by_channel.push((replies, vec![m])),
        }
    }
    let mut runs = Vec::new();
    for (replies, group) in by_channel {
        let mut run: Vec<Outgoing<T>> = Vec::new();
        let mut bytes = 0usize;
        for m in group {
            let limit = round_trip(&m).map_or(options.batch_max, |kind| {
                options.round_trips.of(kind).min(options.batch_max)
            });
            // A run of replies is either on one channel (a batch there) or on as many
            // channels as messages (a batch of replies: the hub grants each channel one).
            let shape = || {
                let on_first =
                    |r: &Outgoing<T>| run.first().is_some_and(|f| f.channel == r.channel);
                run.len() < 2
                    || run.iter().all(|r| r.channel == m.channel)
                    || (!run.iter().all(on_first) && run.iter().all(|r| r.channel != m.channel))
            };
            let fits = run.first().is_some_and(|first| {
                // `reply_to` is each envelope's own: requests with different reply channels
                // share a batch.
                (Arc::ptr_eq(&first.recipients, &m.recipients)
                    || first.recipients.as_ref() == m.recipients.as_ref())
                    && first.purpose.is_none()
                    && m.purpose.is_none()
                    && !first.alone
                    && !m.alone
                    && run.len() < limit
                    && bytes.saturating_add(m.payload.len()) <= options.batch_max_bytes
                    && (!replies || shape())
            });
            if !fits && !run.is_empty() {
                runs.push(std::mem::take(&mut run));
                bytes = 0;
            }
            bytes = bytes.saturating_add(m.payload.len());
            run.push(m);
        }
        if !run.is_empty() {
            runs.push(run);
        }
    }
    runs
}

/// Whether `m` is a reply (on a reply channel, even one that asks back with a `reply_to`) or
/// a request (a `reply_to`), whose batches [`OutboxOptions::round_trips`] limits; `None` for
/// a publish.
pub(crate) fn round_trip<T>(m: &Outgoing<T>) -> Option<RoundTrip> {
    if namespace::is_reply_channel(&m.channel) {
        Some(RoundTrip::Reply)
    } else if m.reply_to.is_some() {
        Some(RoundTrip::Request)
    } else {
        None
    }
}

fn seal_error(channel: &Channel, e: SealError) -> Error {
    let kind = match e {
        SealError::PayloadTooLarge { .. } | SealError::TooManyRecipients { .. } => {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Crypto,
    };
    Error::new(kind, format!("sealing for `{channel}` failed: {e}")).with_source(e)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use entente_crypto::{EcdsaAuthority, KeyBundleBody, KeyBundleIn};
    use entente_types::{AgentId, TrustDomain};

    use super::*;

    pub(crate) const NOW: u64 = 1_760_000_000_000;

    /// A CA key, as a bare authority, that signs key bundles.
    pub(crate) struct TestCa {
        key: EcdsaKeyPair,
        pub(crate) authority: EcdsaAuthority,
    }

    pub(crate) struct Agent {
        pub(crate) principal: Principal,
        pub(crate) keys: Arc<MessageKeys>,
        pub(crate) bundle: VerifiedKeyBundle,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
            let mut authority = EcdsaAuthority::for_trust_domain("example.org");
            authority.insert([7; 32], key.public_key().as_ref().to_vec(), 0, u64::MAX);
            Self { key, authority }
        }

        pub(crate) fn agent(&self, name: &str) -> Agent {
            let td = TrustDomain::new("example.org").unwrap();
            let principal = Principal::from(AgentId::new(&td, "shop", name).unwrap());
            let keys = Arc::new(MessageKeys::generate().unwrap());
            let wire = KeyBundleBody {
                principal: principal.clone(),
                ed25519_public: keys.ed25519_public(),
                x25519_public: keys.x25519_public(),
                epoch: 1,
                not_before_ms: NOW - 60_000,
                not_after_ms: NOW + 3_600_000,
            }
            .sign([7; 32], |m| {
                self.key
                    .sign(&SystemRandom::new(), m)
                    .map(|s| s.as_ref().to_vec())
            })
            .unwrap();
            let bundle = KeyBundleIn::from_wire(wire)
                .unwrap()
                .verify(&self.authority, NOW)
                .unwrap();
            Agent {
                principal,
                keys,
                bundle,
            }
        }
    }

    pub(crate) fn outbox(agent: &Agent, batch_max: usize, resend_ms: u64) -> Outbox {
        Outbox::new(
            agent.principal.clone(),
            agent.bundle.epoch(),
            agent.keys.clone(),
            OutboxOptions {
                batch_max,
                round_trips: RoundTrips::both(batch_max),
                reply_batches: true,
                batch_max_bytes: 1 << 20,
                sender_key_resend_ms: resend_ms,
                sealer: SealerOptions::default(),
            },
        )
    }

    pub(crate) fn message(
        channel: &str,
        payload: &[u8],
        recipients: &Arc<Recipients>,
        ticket: u32,
    ) -> Outgoing<u32> {
        Outgoing {
            channel: Channel::parse(channel).unwrap(),
            payload: payload.to_vec(),
            recipients: recipients.clone(),
            reply_to: None,
            purpose: None,
            alone: false,
            ticket,
        }
    }

    fn frames(sealed: Vec<Sealed<u32>>) -> Vec<(Channel, wire::Publish, Vec<u32>)> {
        sealed
            .into_iter()
            .map(|s| match s {
                Sealed::Frame {
                    channel,
                    publish,
                    tickets,
                    ..
                } => (channel, publish, tickets),
                Sealed::Failed { error, .. } => panic!("sealing failed: {error}"),
            })
            .collect()
    }

    #[test]
    fn recipients_include_the_sender_once_and_are_canonical() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let a = Recipients::new(
            &alice.bundle,
            vec![bob.bundle.clone(), alice.bundle.clone()],
        );
        let b = Recipients::new(&alice.bundle, vec![bob.bundle.clone()]);
        assert_eq!(a, b);
        assert_eq!(a.bundles().len(), 2);
    }

    #[test]
    fn every_frame_carries_the_sender_key_until_the_hub_acknowledged_one() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let mut outbox = outbox(&alice, 1, 1_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let channel = Channel::parse("orders.eu").unwrap();
        let keys = |out: &[(Channel, wire::Publish, Vec<u32>)]| -> Vec<usize> {
            out.iter().map(|(_, p, _)| p.sender_keys.len()).collect()
        };

        // Frames sealed before any answer all carry the new epoch's key: the first one may be
        // refused (a rate limit) while the next is routed.
        let first = frames(outbox.seal(
            vec![
                message("orders.eu", b"a", &recipients, 1),
                message("orders.eu", b"b", &recipients, 2),
            ],
            NOW,
            &mut next,
        ));
        assert_eq!(keys(&first), [1, 1]);
        assert_eq!(first[0].1.request_id, 1);
        let epoch = first[0].1.sender_keys[0].epoch;
        assert_eq!(first[1].1.sender_keys[0].epoch, epoch);

        // An acknowledgement of another epoch's key changes nothing.
        outbox.acknowledged(&channel, epoch - 1);
        let second = frames(outbox.seal(
            vec![message("orders.eu", b"c", &recipients, 3)],
            NOW + 10,
            &mut next,
        ));
        assert_eq!(keys(&second), [1]);

        // Once the hub acknowledged a frame carrying it, the key goes no more...
        outbox.acknowledged(&channel, epoch);
        let third = frames(outbox.seal(
            vec![message("orders.eu", b"d", &recipients, 4)],
            NOW + 20,
            &mut next,
        ));
        assert_eq!(keys(&third), [0]);
        assert_eq!(third[0].1.batches[0].envelopes[0].epoch, epoch);

        // ...until the resend interval has passed.
        let fourth = frames(outbox.seal(
            vec![message("orders.eu", b"e", &recipients, 5)],
            NOW + 1_020,
            &mut next,
        ));
        assert_eq!(keys(&fourth), [1]);
        assert_eq!(fourth[0].1.sender_keys[0].epoch, epoch);
    }

    #[test]
    fn after_a_failed_seal_the_next_frame_carries_the_key_its_epoch_started_with() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let mut outbox = outbox(&alice, 4, 60_000);
        // The channel's first message starts its epoch, then fails to seal.
        let huge = vec![0u8; wire::Limits::default().max_ciphertext_bytes];
        let sealed = outbox.seal(
            vec![message("orders.eu", &huge, &recipients, 1)],
            NOW,
            &mut || 1,
        );
        assert!(matches!(&sealed[0], Sealed::Failed { .. }));
        let epoch = outbox.channels[&Channel::parse("orders.eu").unwrap()]
            .sender_key
            .epoch;
        let next = frames(outbox.seal(
            vec![message("orders.eu", b"fine", &recipients, 2)],
            NOW + 1,
            &mut || 2,
        ));
        assert_eq!(next[0].1.sender_keys.len(), 1);
        assert_eq!(next[0].1.sender_keys[0].epoch, epoch);
        assert_eq!(next[0].1.batches[0].envelopes[0].epoch, epoch);
    }

    #[test]
    fn a_reset_epoch_is_numbered_above_the_last_even_within_the_same_millisecond() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let to_bob = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let mut outbox = outbox(&alice, 4, 60_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        for channel in ["orders.eu", "_reply.shop.bob.x1"] {
            let first =
                frames(outbox.seal(vec![message(channel, b"1", &to_bob, 1)], NOW, &mut next));
            let before = first[0].1.batches[0].envelopes[0].epoch;
            outbox.reset(&Channel::parse(channel).unwrap());
            let again =
                frames(outbox.seal(vec![message(channel, b"2", &to_bob, 2)], NOW, &mut next));
            let after = &again[0].1;
            assert!(after.batches[0].envelopes[0].epoch > before, "{channel}");
            assert_eq!(
                after.sender_keys[0].epoch,
                after.batches[0].envelopes[0].epoch
            );
            assert_eq!(after.batches[0].envelopes[0].seq, 0, "{channel}");
        }
    }

    #[test]
    fn idle_sealers_are_dropped() {
        let ca = TestCa::new();
        let alice = ca.agent("alice");
        let recipients = Arc::new(Recipients::new(&alice.bundle, Vec::new()));
        let mut outbox = outbox(&alice, 4, 60_000);
        let mut next = || 1;
        for i in 0..100 {
            let channel = format!("metrics.m{i}");
            frames(outbox.seal(
                vec![message(&channel, b"x", &recipients, i)],
                NOW,
                &mut next,
            ));
        }
        assert_eq!(outbox.channels.len(), 100);
        // Kept while in use...
        let soon = NOW + CHANNEL_IDLE_MS - 1;
        frames(outbox.seal(
            vec![message("metrics.m0", b"x", &recipients, 0)],
            soon,
            &mut next,
        ));
        assert_eq!(outbox.channels.len(), 100);
        // ...dropped once unused for long.
        let later = soon + REPLY_SCOPE_IDLE_MS;
        frames(outbox.seal(
            vec![message("metrics.m1", b"x", &recipients, 0)],
            later,
            &mut next,
        ));
        let mut kept: Vec<&str> = outbox.channels.keys().map(Channel::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["metrics.m0", "metrics.m1"]);
    }

    #[test]
    fn messages_with_a_purpose_go_alone_and_always_carry_the_sender_key() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let mut outbox = outbox(&alice, 4, 1_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let with_purpose = |payload: &[u8], ticket| Outgoing {
            purpose: Some("invoice 42".to_owned()),
            ..message("pay.wire", payload, &recipients, ticket)
        };
        let sealed = frames(outbox.seal(
            vec![
                with_purpose(b"a", 1),
                with_purpose(b"b", 2),
                message("pay.wire", b"c", &recipients, 3),
                message("pay.wire", b"d", &recipients, 4),
            ],
            NOW,
            &mut next,
        ));
        // Each message with a purpose is a frame of its own, with the purpose and the key.
        assert_eq!(sealed.len(), 3);
        for (frame, ticket) in sealed.iter().take(2).zip([1, 2]) {
            assert_eq!(frame.2, [ticket]);
            assert_eq!(frame.1.purpose, "invoice 42");
            assert_eq!(frame.1.sender_keys.len(), 1);
            assert_eq!(frame.1.batches[0].envelopes.len(), 1);
        }
        // The rest batch as usual, with the key (the hub has acknowledged none yet).
        assert_eq!(sealed[2].2, [3, 4]);
        assert!(sealed[2].1.purpose.is_empty());
        assert_eq!(sealed[2].1.sender_keys.len(), 1);
    }

    #[test]
    fn a_new_recipient_set_or_a_reset_starts_a_new_epoch() {
        let ca = TestCa::new();
        let (alice, bob, carol) = (ca.agent("alice"), ca.agent("bob"), ca.agent("carol"));
        let with_bob = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let with_carol = Arc::new(Recipients::new(&alice.bundle, vec![carol.bundle.clone()]));
        let mut outbox = outbox(&alice, 4, 60_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let out = frames(outbox.seal(
            vec![
                message("orders.eu", b"1", &with_bob, 1),
                message("orders.eu", b"2", &with_bob, 2),
                message("orders.eu", b"3", &with_carol, 3),
            ],
            NOW,
            &mut next,
        ));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].2, [1, 2]);
        assert_eq!(out[1].2, [3]);
        let (k1, k2) = (&out[0].1.sender_keys[0], &out[1].1.sender_keys[0]);
        assert!(k2.epoch > k1.epoch);
        let names = |k: &wire::SenderKey| {
            k.recipients
                .iter()
                .map(|r| r.recipient.clone())
                .collect::<Vec<_>>()
        };
        assert!(names(k2).contains(&carol.principal.to_string()));
        assert!(!names(k2).contains(&bob.principal.to_string()));

        outbox.reset(&Channel::parse("orders.eu").unwrap());
        let out = frames(outbox.seal(
            vec![message("orders.eu", b"4", &with_carol, 4)],
            NOW + 5,
            &mut next,
        ));
        assert!(out[0].1.sender_keys[0].epoch > k2.epoch);
    }

    #[test]
    fn batches_are_cut_by_count_and_channel_and_keep_order() {
        let ca = TestCa::new();
        let alice = ca.agent("alice");
        let recipients = Arc::new(Recipients::new(&alice.bundle, Vec::new()));
        let mut outbox = outbox(&alice, 3, 60_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let mut messages = Vec::new();
        for i in 0..7 {
            let channel = if i % 4 == 3 { "orders.us" } else { "orders.eu" };
            messages.push(message(channel, &[i as u8], &recipients, i));
        }
        let out = frames(outbox.seal(messages, NOW, &mut next));
        let summary: Vec<(String, Vec<u32>, usize)> = out
            .iter()
            .map(|(c, p, t)| (c.to_string(), t.clone(), p.batches[0].envelopes.len()))
            .collect();
        assert_eq!(
            summary,
            [
                ("orders.eu".to_owned(), vec![0, 1, 2], 3),
                ("orders.eu".to_owned(), vec![4, 5, 6], 3),
                ("orders.us".to_owned(), vec![3], 1),
            ]
        );
        // Sequence numbers continue across batches of one epoch.
        let seqs: Vec<u64> = out[..2]
            .iter()
            .flat_map(|(_, p, _)| p.batches[0].envelopes.iter().map(|e| e.seq))
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn replies_written_together_to_one_requester_share_one_batch_on_its_root() {
        let ca = TestCa::new();
        let (alice, bob, carol) = (ca.agent("alice"), ca.agent("bob"), ca.agent("carol"));
        let to_bob = Arc::new(Recipients::exactly(vec![bob.bundle.clone()]));
        let to_carol = Arc::new(Recipients::exactly(vec![carol.bundle.clone()]));
        let mut outbox = outbox(&alice, 2, 60_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let out = frames(outbox.seal(
            vec![
                message("_reply.shop.bob.x1", b"1", &to_bob, 1),
                message("_reply.shop.carol.y1", b"2", &to_carol, 2),
                message("_reply.shop.bob.x2", b"3", &to_bob, 3),
                message("_reply.shop.bob.x3", b"4", &to_bob, 4),
            ],
            NOW,
            &mut next,
        ));
        // Bob's first two replies share a batch on his root (batch_max is 2), the third goes
        // alone on its channel; Carol's is alone on hers. Each frame carries its root's key.
        let shape: Vec<(&str, Vec<&str>, Vec<u32>)> = out
            .iter()
            .map(|(_, publish, tickets)| {
                let batch = &publish.batches[0];
                let named = batch.envelopes.iter().map(|e| &*e.channel).collect();
                (batch.channel.as_str(), named, tickets.clone())
            })
            .collect();
        assert_eq!(
            shape,
            [
                (
                    "_reply.shop.bob",
                    vec!["_reply.shop.bob.x1", "_reply.shop.bob.x2"],
                    vec![1, 3]
                ),
                ("_reply.shop.bob.x3", vec![""], vec![4]),
                ("_reply.shop.carol.y1", vec![""], vec![2]),
            ]
        );
        for (_, publish, _) in &out {
            assert_eq!(publish.batches.len(), 1);
            assert_eq!(publish.sender_keys.len(), 1);
        }
        assert_eq!(out[0].1.sender_keys[0].channel, "_reply.shop.bob");
        // One epoch for Bob's replies, numbered across the batches.
        let seqs: Vec<u64> = out[..2]
            .iter()
            .flat_map(|(_, p, _)| p.batches[0].envelopes.iter().map(|e| e.seq))
            .collect();
        assert_eq!(seqs, [0, 1, 2]);
        // Two messages on one reply channel never share a batch of replies (the hub grants
        // each channel once): a run on one channel is a batch on that channel.
        let mut wide = super::tests::outbox(&alice, 8, 60_000);
        let shapes = |sealed: Vec<Sealed<u32>>| -> Vec<(String, Vec<String>)> {
            frames(sealed)
                .into_iter()
                .map(|(_, p, _)| {
                    let b = &p.batches[0];
                    let named = b.envelopes.iter().map(|e| e.channel.to_string()).collect();
                    (b.channel.clone(), named)
                })
                .collect()
        };
        let on = |c: &str, t| message(c, b"x", &to_bob, t);
        let got = shapes(wide.seal(
            vec![
                on("_reply.shop.bob.x1", 1),
                on("_reply.shop.bob.x1", 2),
                on("_reply.shop.bob.x2", 3),
                on("_reply.shop.bob.x3", 4),
                on("_reply.shop.bob.x2", 5),
            ],
            NOW,
            &mut next,
        ));
        let (none, x2, x3) = (String::new(), "_reply.shop.bob.x2", "_reply.shop.bob.x3");
        assert_eq!(
            got,
            [
                (
                    "_reply.shop.bob.x1".to_owned(),
                    vec![none.clone(), none.clone()]
                ),
                (
                    "_reply.shop.bob".to_owned(),
                    vec![x2.to_owned(), x3.to_owned()]
                ),
                (x2.to_owned(), vec![none.clone()]),
            ]
        );
        // Turned off, every reply goes on its own channel.
        let mut alone = super::tests::outbox(&alice, 8, 60_000);
        alone.options.reply_batches = false;
        let got = shapes(alone.seal(vec![on("_reply.shop.bob.x1", 1), on(x2, 2)], NOW, &mut next));
        assert_eq!(
            got,
            [
                ("_reply.shop.bob.x1".to_owned(), vec![none.clone()]),
                (x2.to_owned(), vec![none]),
            ]
        );

        // A reset on any reply channel makes the requester's sealer start a new epoch.
        outbox.reset(&out[1].0);
        assert!(outbox.channels[&Channel::parse("_reply.shop.bob").unwrap()].rotate);
    }

    #[test]
    fn requests_share_a_batch_whatever_their_reply_to_and_replies_share_their_requesters_sealer() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let mut outbox = outbox(&alice, 8, 60_000);
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let r1 = Channel::parse("_reply.shop.alice.r1").unwrap();
        let r2 = Channel::parse("_reply.shop.alice.r2").unwrap();
        let mut messages = vec![
            message("_direct.shop.bob", b"1", &recipients, 1),
            message("_direct.shop.bob", b"2", &recipients, 2),
            message("_direct.shop.bob", b"3", &recipients, 3),
        ];
        messages[0].reply_to = Some(r1.clone());
        messages[1].reply_to = Some(r2.clone());
        let out = frames(outbox.seal(messages, NOW, &mut next));
        assert_eq!(out.len(), 1, "one batch, one signature");
        assert_eq!(out[0].2, [1, 2, 3]);
        let reply_tos = |p: &wire::Publish| {
            p.batches[0]
                .envelopes
                .iter()
                .map(|e| e.reply_to.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reply_tos(&out[0].1),
            ["_reply.shop.alice.r1", "_reply.shop.alice.r2", ""]
        );
        assert!(
            outbox
                .channels
                .contains_key(&Channel::parse("_direct.shop.bob").unwrap())
        );

        // A reply: one batch with its sender key, sealed by the requester's sealer.
        let reply = frames(outbox.seal(
            vec![message("_reply.shop.bob.x1", b"r", &recipients, 4)],
            NOW,
            &mut next,
        ));
        assert_eq!(reply[0].1.sender_keys.len(), 1);
        assert_eq!(reply[0].1.batches.len(), 1);
        let key = &reply[0].1.sender_keys[0];
        assert_eq!(key.channel, "_reply.shop.bob");
        assert_eq!(reply[0].1.batches[0].channel, "_reply.shop.bob.x1");
        // The requester holds the epoch for a while, not the envelopes.
        assert!(key.expires_at_ms <= NOW + REPLY_EPOCH_MAX_AGE_MS + 60_000);
        assert!(reply[0].1.batches[0].envelopes[0].expires_at_ms <= NOW + 60_000);
        let root = Channel::parse("_reply.shop.bob").unwrap();
        assert!(outbox.channels.contains_key(&root));
        assert!(
            !outbox
                .channels
                .contains_key(&Channel::parse("_reply.shop.bob.x1").unwrap())
        );

        // The next reply to the same requester: the same epoch, its key carried again.
        let again = frames(outbox.seal(
            vec![message("_reply.shop.bob.x2", b"s", &recipients, 5)],
            NOW + 1,
            &mut next,
        ));
        assert_eq!(&again[0].1.sender_keys[..], std::slice::from_ref(key));
        let envelope = &again[0].1.batches[0].envelopes[0];
        assert_eq!((envelope.epoch, envelope.seq), (key.epoch, 1));

        // A requester not answered for a while is forgotten when others are answered.
        let later = NOW + 1 + REPLY_SCOPE_IDLE_MS;
        frames(outbox.seal(
            vec![message("_reply.shop.carol.y1", b"t", &recipients, 6)],
            later,
            &mut next,
        ));
        assert!(!outbox.channels.contains_key(&root));
        assert!(
            outbox
                .channels
                .contains_key(&Channel::parse("_reply.shop.carol").unwrap())
        );
    }

    #[test]
    fn requests_and_replies_are_cut_at_their_own_batch_limit_and_publishes_are_not() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let to_bob = Arc::new(Recipients::new(&alice.bundle, vec![bob.bundle.clone()]));
        let mut outbox = outbox(&alice, 8, 60_000);
        outbox.set_round_trips(RoundTrips {
            requests: 2,
            replies: 3,
        });
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            ids
        };
        let mut messages = Vec::new();
        // Five publishes, five requests to one channel, five replies to one requester.
        for t in 1..=5 {
            messages.push(message("orders.eu", b"p", &to_bob, t));
        }
        for t in 6..=10 {
            let mut request = message("_direct.shop.bob", b"q", &to_bob, t);
            request.reply_to = Some(Channel::parse(&format!("_reply.shop.alice.r{t}")).unwrap());
            messages.push(request);
        }
        for t in 11..=15 {
            messages.push(message(&format!("_reply.shop.bob.x{t}"), b"r", &to_bob, t));
        }
        let runs: Vec<Vec<u32>> = outbox
            .runs(messages)
            .into_iter()
            .map(|run| run.into_iter().map(|m| m.ticket).collect())
            .collect();
        assert_eq!(
            runs,
            [
                vec![1, 2, 3, 4, 5],
                vec![6, 7],
                vec![8, 9],
                vec![10],
                vec![11, 12, 13],
                vec![14, 15],
            ]
        );
        // Not above `batch_max` either.
        outbox.options.batch_max = 1;
        outbox.set_round_trips(RoundTrips::both(2));
        let mut two = vec![
            message("_direct.shop.bob", b"q", &to_bob, 1),
            message("_direct.shop.bob", b"q", &to_bob, 2),
        ];
        for request in &mut two {
            request.reply_to = Some(Channel::parse("_reply.shop.alice.r").unwrap());
        }
        assert_eq!(frames(outbox.seal(two, NOW, &mut next)).len(), 2);
        let kind = |channel: &str, reply_to: Option<&str>| {
            let mut m = message(channel, b"", &to_bob, 0);
            m.reply_to = reply_to.map(|r| Channel::parse(r).unwrap());
            round_trip(&m)
        };
        assert_eq!(kind("_reply.shop.bob.x1", None), Some(RoundTrip::Reply));
        // A reply that asks back is a reply.
        assert_eq!(
            kind("_reply.shop.bob.x1", Some("_reply.shop.alice.y")),
            Some(RoundTrip::Reply)
        );
        assert_eq!(
            kind("_direct.shop.bob", Some("_reply.shop.alice.y")),
            Some(RoundTrip::Request)
        );
        assert_eq!(kind("_reply.shop.bob", None), None);
        assert_eq!(kind("orders.eu", None), None);
    }

    #[test]
    fn an_oversized_payload_fails_alone() {
        let ca = TestCa::new();
        let alice = ca.agent("alice");
        let recipients = Arc::new(Recipients::new(&alice.bundle, Vec::new()));
        let mut outbox = outbox(&alice, 8, 60_000);
        let huge = vec![0u8; wire::Limits::default().max_ciphertext_bytes];
        let sealed = outbox.seal(
            vec![
                message("orders.eu", b"fine", &recipients, 1),
                message("orders.us", &huge, &recipients, 2),
            ],
            NOW,
            &mut || 1,
        );
        assert!(matches!(&sealed[0], Sealed::Frame { tickets, .. } if tickets == &[1]));
        match &sealed[1] {
            Sealed::Failed { tickets, error } => {
                assert_eq!(tickets, &[2]);
                assert_eq!(error.kind(), ErrorKind::InvalidInput);
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
