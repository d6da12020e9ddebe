//! The receiving side of one subscription as a state machine: a `Deliver` in, messages and
//! rejections out. No I/O: the sender's key bundles are looked up by the caller beforehand.
//!
//! Each subscription has its own [`Opener`], so that two subscriptions matching one channel
//! (the hub delivers each its own copy) each open their copy under their own replay window.
//!
//! What a subscription takes is bounded by what it asked for, not by what the hub sends: a
//! message on a channel its pattern does not match is refused, and so, on a live subscription,
//! is one issued longer before the subscription began than the clock skew allowed (a fresh
//! replay window can't tell a replay of it; the hub routes a live subscription what is
//! published after it, and messages held for approval released since, which this refuses when
//! they were sealed that long before).

use std::collections::HashSet;
use std::sync::Arc;

use entente_crypto::{
    MessageKeys, OpenError, Opener, OpenerOptions, SenderKeyIn, SignedBatchIn, VerifiedEnvelope,
    VerifiedKeyBundle,
};
use entente_types::{Channel, ChannelPattern, MessageId, Principal, namespace};
use entente_wire as wire;

use crate::{Error, ErrorKind};

/// Remembered signatures of accepted sender keys, and epochs not addressed to us, before
/// the sets are cleared (a cleared entry only costs a verification again).
const MAX_REMEMBERED: usize = 4096;

/// A message that was signed by its sender, sealed for this client, and passed the replay
/// window and expiry checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// Who sent it: authenticated by its signature and the sender's CA-signed key bundle.
    pub sender: Principal,
    /// The channel it was published to.
    pub channel: Channel,
    /// The plaintext.
    pub payload: Vec<u8>,
    /// Its unique ID (a UUIDv7, which sorts by creation time).
    pub message_id: MessageId,
    /// Where the sender wants replies, if anywhere.
    pub reply_to: Option<Channel>,
    /// Where a message of a durable subscription was stored, and which delivery this is:
    /// acknowledge it with [`Client::ack`](crate::Client::ack). `None` for live subscriptions.
    pub durable: Option<DurableDelivery>,
}

/// A message's place in a durable channel ([`Client::subscribe_durable`](crate::Client::subscribe_durable)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableDelivery {
    /// The subscription it came on.
    pub subscription: u64,
    /// The stored entry's sequence in its channel (all messages of one publish batch share
    /// it).
    pub sequence: u64,
    /// 1 for the first delivery, then 2, 3, … for each redelivery.
    pub attempt: u32,
}

/// What opening one `Deliver` produced, in the order of the frame.
#[derive(Debug, Default)]
pub(crate) struct Opened {
    pub(crate) items: Vec<Result<Message, Error>>,
    pub(crate) received: u64,
    pub(crate) rejected: u64,
    pub(crate) batches: u64,
    pub(crate) keys_accepted: u64,
    pub(crate) keys_rejected: u64,
}

/// One subscription's opener.
#[derive(Debug)]
pub(crate) struct Inbox {
    opener: Opener,
    /// What the subscription asked for: other channels' messages are refused (replies are
    /// sorted by the caller, a batch of replies reaching every subscription of one of them).
    pattern: ChannelPattern,
    /// Messages issued before this (the subscription's start less the clock skew allowed, for
    /// a live subscription) are refused as replays; 0 for a durable one.
    issued_from_ms: u64,
    /// Signatures of sender keys already accepted: resends are skipped without verifying.
    accepted: HashSet<Vec<u8>>,
    /// (sender, channel, epoch) of sender keys that did not name us, to explain why their
    /// envelopes can't be opened.
    not_for_us: HashSet<(String, String, u64)>,
}

impl Inbox {
    /// The inbox of a subscription to `pattern`; `live_since_ms`, for a live subscription, is
    /// when it began (by this client's clock).
    pub(crate) fn new(
        me: Principal,
        key_epoch: u64,
        keys: Arc<MessageKeys>,
        pattern: ChannelPattern,
        live_since_ms: Option<u64>,
    ) -> Self {
        let options = OpenerOptions::default();
        let issued_from_ms =
            live_since_ms.map_or(0, |t| t.saturating_sub(options.max_clock_skew_ms));
        Self {
            opener: Opener::new(me, key_epoch, keys, options),
            pattern,
            issued_from_ms,
            accepted: HashSet::new(),
            not_for_us: HashSet::new(),
        }
    }

    /// The (sender, key epoch) pairs whose key bundles opening `deliver` needs.
    pub(crate) fn needs(deliver: &wire::Deliver) -> Vec<(String, u64)> {
        let mut needs: Vec<(String, u64)> = deliver
            .sender_keys
            .iter()
            .map(|k| (k.sender.clone(), k.key_epoch))
            .chain(
                deliver
                    .batches
                    .iter()
                    .map(|b| (b.sender.clone(), b.key_epoch)),
            )
            .collect();
        needs.sort();
        needs.dedup();
        needs
    }

    /// Opens `deliver`: sender keys first, then each batch. `bundle` returns the verified key
    /// bundle of a sender for a key epoch, or why there is none.
    ///
    /// Nothing is dropped silently: every envelope becomes a message or an error item, except
    /// sender keys addressed to other recipients, which are only counted (their envelopes'
    /// errors say why they can't be opened).
    pub(crate) fn open(
        &mut self,
        deliver: wire::Deliver,
        bundle: &dyn Fn(&Principal, u64) -> Result<VerifiedKeyBundle, Error>,
        now_ms: u64,
    ) -> Opened {
        let mut opened = Opened::default();
        for sender_key in deliver.sender_keys {
            self.accept_sender_key(sender_key, bundle, now_ms, &mut opened);
        }
        for batch in deliver.batches {
            self.open_batch(batch, bundle, now_ms, &mut opened);
        }
        opened
    }

    fn accept_sender_key(
        &mut self,
        sender_key: wire::SenderKey,
        bundle: &dyn Fn(&Principal, u64) -> Result<VerifiedKeyBundle, Error>,
        now_ms: u64,
        opened: &mut Opened,
    ) {
        if self.accepted.contains(&sender_key.signature) {
            return;
        }
        let signature = sender_key.signature.clone();
        let key_epoch = sender_key.key_epoch;
        let sender_key = match SenderKeyIn::from_wire(sender_key) {
            Ok(k) => k,
            Err(e) => {
                opened.keys_rejected += 1;
                opened.items.push(Err(rejected(
                    format!("a malformed sender key was refused: {e}"),
                    e,
                )));
                return;
            }
        };
        let what = format!(
            "the sender key of `{}` for `{}`",
            sender_key.sender(),
            sender_key.channel()
        );
        let result = bundle(sender_key.sender(), key_epoch).and_then(|b| {
            self.opener
                .accept_sender_key(&sender_key, &b, now_ms)
                .map_err(|e| rejected(format!("{what} was refused: {e}"), e))
        });
        match result {
            Ok(()) => {
                opened.keys_accepted += 1;
                remember(&mut self.accepted, signature);
            }
            Err(e) => {
                opened.keys_rejected += 1;
                let not_for_us = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<OpenError>())
                    .is_some_and(|s| *s == OpenError::NotARecipient);
                if not_for_us {
                    let id = (
                        sender_key.sender().to_string(),
                        sender_key.channel().to_string(),
                        sender_key.epoch(),
                    );
                    remember(&mut self.not_for_us, id);
                } else {
                    opened.items.push(Err(e));
                }
            }
        }
    }

    fn open_batch(
        &mut self,
        batch: wire::SignedBatch,
        bundle: &dyn Fn(&Principal, u64) -> Result<VerifiedKeyBundle, Error>,
        now_ms: u64,
        opened: &mut Opened,
    ) {
        opened.batches += 1;
        let count = batch.envelopes.len();
        let batch = match SignedBatchIn::from_wire(batch) {
            Ok(b) => b,
            Err(e) => {
                opened.rejected += count as u64;
                opened.items.push(Err(rejected(
                    format!("a malformed batch of {count} messages was refused: {e}"),
                    e,
                )));
                return;
            }
        };
        let sender = batch.sender().clone();
        let channel = batch.channel().clone();
        let sender_bundle = match bundle(&sender, batch.key_epoch()) {
            Ok(b) => b,
            Err(e) => {
                opened.rejected += count as u64;
                let message = format!(
                    "{count} messages from `{sender}` on `{channel}` can't be verified: {e}"
                );
                opened
                    .items
                    .push(Err(Error::new(e.kind(), message).with_source(e)));
                return;
            }
        };
        let result = match self.opener.open(batch, &sender_bundle, now_ms) {
            Ok(result) => result,
            Err(e) => {
                opened.rejected += count as u64;
                opened.items.push(Err(rejected(
                    format!(
                        "a batch of {count} messages from `{sender}` on `{channel}` was refused: {e}"
                    ),
                    e,
                )));
                return;
            }
        };
        opened.received += result.delivered.len() as u64;
        opened.rejected += result.rejected.len() as u64;
        let mut delivered = result.delivered.into_iter();
        let mut refused = result.rejected.into_iter().peekable();
        // Whether the subscription asked for the batch's channel, for its envelopes on it (all
        // but the replies of a batch of replies).
        let asked = self.asked_for(&channel);
        for index in 0..count {
            if refused.peek().is_some_and(|(i, _)| *i == index) {
                if let Some((_, e)) = refused.next() {
                    opened
                        .items
                        .push(Err(self.envelope_error(&sender, &channel, index, e)));
                }
            } else if let Some(envelope) = delivered.next() {
                match self.admit(envelope, index, (&channel, asked)) {
                    Ok(m) => opened.items.push(Ok(m)),
                    Err(e) => {
                        opened.received -= 1;
                        opened.rejected += 1;
                        opened.items.push(Err(e));
                    }
                }
            }
        }
    }

    /// Whether the subscription asked for `channel`'s messages (a reply's are sorted by the
    /// caller).
    fn asked_for(&self, channel: &Channel) -> bool {
        namespace::is_reply_channel(channel) || self.pattern.routes(channel)
    }

    /// The message of an envelope that opened, if the subscription asked for it; `batch` is
    /// the batch's channel and whether it was asked for.
    fn admit(
        &self,
        envelope: VerifiedEnvelope,
        index: usize,
        batch: (&Channel, bool),
    ) -> Result<Message, Error> {
        let (sender, channel) = (envelope.sender(), envelope.channel());
        let asked = if channel == batch.0 {
            batch.1
        } else {
            self.asked_for(channel)
        };
        if !asked {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "message {index} of a batch from `{sender}` on `{channel}` was refused: it \
                     was delivered to a subscription to `{}`, which that channel does not match",
                    self.pattern
                ),
            ));
        }
        if envelope.issued_at_ms() < self.issued_from_ms {
            return Err(Error::new(
                ErrorKind::Rejected,
                format!(
                    "message {index} of a batch from `{sender}` on `{channel}` was refused: it \
                     was issued before this subscription began (by more than the clock skew \
                     allowed), so it can't be told from a replay (a message held for approval \
                     and released since is refused too)"
                ),
            ));
        }
        Ok(message(envelope))
    }

    fn envelope_error(
        &self,
        sender: &Principal,
        channel: &Channel,
        index: usize,
        e: OpenError,
    ) -> Error {
        let not_for_us = match &e {
            OpenError::UnknownEpoch(epoch) => {
                self.not_for_us
                    .contains(&(sender.to_string(), channel.to_string(), *epoch))
            }
            _ => false,
        };
        let message = if not_for_us {
            format!(
                "message {index} of a batch from `{sender}` on `{channel}` is not addressed to \
                 this client (not a recipient of its sender key)"
            )
        } else {
            format!("message {index} of a batch from `{sender}` on `{channel}` was refused: {e}")
        };
        rejected(message, e)
    }
}

fn message(envelope: VerifiedEnvelope) -> Message {
    let sender = envelope.sender().clone();
    let channel = envelope.channel().clone();
    let message_id = envelope.message_id();
    let reply_to = envelope.reply_to().cloned();
    Message {
        sender,
        channel,
        payload: envelope.into_payload(),
        message_id,
        reply_to,
        durable: None,
    }
}

fn rejected(message: String, source: OpenError) -> Error {
    Error::new(ErrorKind::Rejected, message).with_source(source)
}

fn remember<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, item: T) {
    if set.len() >= MAX_REMEMBERED {
        set.clear();
    }
    set.insert(item);
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
    use crate::outbox::tests::{Agent, NOW, TestCa, message as outgoing, outbox};
    use crate::outbox::{Recipients, Sealed};

    fn deliver(sealed: Vec<Sealed<u32>>) -> Vec<wire::Deliver> {
        sealed
            .into_iter()
            .map(|s| match s {
                Sealed::Frame { publish, .. } => wire::Deliver {
                    subscription_id: 1,
                    sender_keys: publish.sender_keys,
                    batches: publish.batches,
                    ..wire::Deliver::default()
                },
                Sealed::Failed { error, .. } => panic!("{error}"),
            })
            .collect()
    }

    fn inbox(agent: &Agent) -> Inbox {
        subscribed(agent, "orders.>", None)
    }

    fn subscribed(agent: &Agent, pattern: &str, live_since_ms: Option<u64>) -> Inbox {
        Inbox::new(
            agent.principal.clone(),
            agent.bundle.epoch(),
            agent.keys.clone(),
            pattern.parse().unwrap(),
            live_since_ms,
        )
    }

    fn lookup(
        known: &[&Agent],
    ) -> impl Fn(&Principal, u64) -> Result<VerifiedKeyBundle, Error> + use<> {
        let bundles: Vec<VerifiedKeyBundle> = known.iter().map(|a| a.bundle.clone()).collect();
        move |p, epoch| {
            bundles
                .iter()
                .find(|b| b.principal() == p && b.epoch() == epoch)
                .cloned()
                .ok_or_else(|| Error::new(ErrorKind::Unsupported, "no directory"))
        }
    }

    #[test]
    fn a_recipient_opens_every_message_in_order() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&bob.bundle, vec![alice.bundle.clone()]));
        let mut out = outbox(&bob, 2, 60_000);
        let messages = (0..5)
            .map(|i| outgoing("orders.eu", &[i], &recipients, u32::from(i)))
            .collect();
        let frames = deliver(out.seal(messages, NOW, &mut || 1));
        assert_eq!(frames.len(), 3);

        let mut inbox = inbox(&alice);
        let lookup = lookup(&[&bob]);
        let mut payloads = Vec::new();
        for frame in frames {
            assert_eq!(Inbox::needs(&frame)[0].0, bob.principal.to_string());
            let opened = inbox.open(frame, &lookup, NOW);
            for item in opened.items {
                let m = item.unwrap();
                assert_eq!(m.sender, bob.principal);
                assert_eq!(m.channel.as_str(), "orders.eu");
                payloads.push(m.payload[0]);
            }
        }
        assert_eq!(payloads, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_non_recipient_gets_rejections_not_plaintext() {
        let ca = TestCa::new();
        let (alice, bob, carol) = (ca.agent("alice"), ca.agent("bob"), ca.agent("carol"));
        let recipients = Arc::new(Recipients::new(&bob.bundle, vec![alice.bundle.clone()]));
        let mut out = outbox(&bob, 8, 60_000);
        let frames = deliver(out.seal(
            vec![
                outgoing("orders.eu", b"secret 1", &recipients, 1),
                outgoing("orders.eu", b"secret 2", &recipients, 2),
            ],
            NOW,
            &mut || 1,
        ));
        let mut inbox = inbox(&carol);
        let opened = inbox.open(frames[0].clone(), &lookup(&[&bob]), NOW);
        assert_eq!(opened.keys_rejected, 1);
        assert_eq!(opened.rejected, 2);
        assert_eq!(opened.items.len(), 2);
        for item in opened.items {
            let e = item.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Rejected);
            assert!(
                e.to_string().contains("not addressed to this client"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_replayed_frame_and_an_unknown_sender_are_rejected() {
        let ca = TestCa::new();
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&bob.bundle, vec![alice.bundle.clone()]));
        let mut out = outbox(&bob, 8, 60_000);
        let frame = deliver(out.seal(
            vec![outgoing("orders.eu", b"once", &recipients, 1)],
            NOW,
            &mut || 1,
        ))
        .remove(0);

        // Without the sender's bundle: the whole batch can't be verified, with the lookup's
        // error kind.
        let mut inbox = inbox(&alice);
        let opened = inbox.open(frame.clone(), &lookup(&[]), NOW);
        assert_eq!(opened.rejected, 1);
        let kinds: Vec<ErrorKind> = opened
            .items
            .iter()
            .map(|i| i.as_ref().unwrap_err().kind())
            .collect();
        assert_eq!(kinds, [ErrorKind::Unsupported, ErrorKind::Unsupported]);

        let opened = inbox.open(frame.clone(), &lookup(&[&bob]), NOW);
        assert_eq!(opened.received, 1);
        assert_eq!(opened.keys_accepted, 1);
        let again = inbox.open(frame, &lookup(&[&bob]), NOW);
        assert_eq!(again.keys_accepted, 0, "a known sender key is skipped");
        assert_eq!(again.rejected, 1);
        let e = again.items.into_iter().next().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(e.to_string().contains("already received"), "{e}");
    }

    /// One frame of two messages from bob to alice, one on each of `channels`, issued at `NOW`.
    fn two_messages(ca: &TestCa, channels: [&str; 2]) -> (Agent, Agent, wire::Deliver) {
        let (alice, bob) = (ca.agent("alice"), ca.agent("bob"));
        let recipients = Arc::new(Recipients::new(&bob.bundle, vec![alice.bundle.clone()]));
        let mut out = outbox(&bob, 8, 60_000);
        let frame = deliver(out.seal(
            vec![
                outgoing(channels[0], b"one", &recipients, 1),
                outgoing(channels[1], b"two", &recipients, 2),
            ],
            NOW,
            &mut || 1,
        ));
        let mut frame = frame.into_iter();
        let mut first = frame.next().unwrap();
        for more in frame {
            first.sender_keys.extend(more.sender_keys);
            first.batches.extend(more.batches);
        }
        (alice, bob, first)
    }

    #[test]
    fn a_message_on_a_channel_the_subscription_did_not_ask_for_is_refused() {
        let ca = TestCa::new();
        let (alice, bob, frame) = two_messages(&ca, ["orders.eu", "payments.eu"]);
        let opened = subscribed(&alice, "orders.>", None).open(frame, &lookup(&[&bob]), NOW);
        assert_eq!((opened.received, opened.rejected), (1, 1));
        let mut items = opened.items.into_iter();
        assert_eq!(items.next().unwrap().unwrap().payload, b"one");
        let e = items.next().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(
            e.to_string().contains("`payments.eu`")
                && e.to_string().contains("does not match")
                && !e.to_string().contains("two"),
            "{e}"
        );
        assert!(items.next().is_none());
    }

    /// A catch-all subscription is not the place of a direct message (nor of a reply): a hub
    /// delivering one there is refused, as the hub itself routes (PROTOCOL.md §7).
    #[test]
    fn a_wildcard_first_subscription_refuses_a_direct_message() {
        let ca = TestCa::new();
        let (alice, bob, frame) = two_messages(&ca, ["orders.eu", "_direct.shop.alice"]);
        let opened = subscribed(&alice, ">", None).open(frame, &lookup(&[&bob]), NOW);
        assert_eq!((opened.received, opened.rejected), (1, 1));
        let mut items = opened.items.into_iter();
        assert_eq!(items.next().unwrap().unwrap().payload, b"one");
        let e = items.next().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected);
        assert!(e.to_string().contains("`_direct.shop.alice`"), "{e}");
    }

    #[test]
    fn a_live_subscription_refuses_what_was_issued_before_it_began_beyond_the_skew() {
        let ca = TestCa::new();
        let (alice, bob, frame) = two_messages(&ca, ["orders.eu", "orders.us"]);
        let skew = OpenerOptions::default().max_clock_skew_ms;
        // Issued at NOW: a subscription begun up to the clock skew later takes them.
        let opened = subscribed(&alice, "orders.>", Some(NOW + skew)).open(
            frame.clone(),
            &lookup(&[&bob]),
            NOW,
        );
        assert_eq!((opened.received, opened.rejected), (2, 0));
        // One begun later can't tell them from a replay.
        let opened = subscribed(&alice, "orders.>", Some(NOW + skew + 1)).open(
            frame.clone(),
            &lookup(&[&bob]),
            NOW,
        );
        assert_eq!((opened.received, opened.rejected), (0, 2));
        for item in opened.items {
            let e = item.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Rejected);
            assert!(
                e.to_string().contains("before this subscription began"),
                "{e}"
            );
        }
        // A durable subscription takes what was stored before it.
        let opened = subscribed(&alice, "orders.>", None).open(frame, &lookup(&[&bob]), NOW);
        assert_eq!((opened.received, opened.rejected), (2, 0));
    }
}
