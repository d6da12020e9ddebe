//! Hub-side replay windows on envelope headers (PROTOCOL.md §7).
//!
//! Per (sender, channel, epoch) the hub keeps an [`entente_crypto::ReplayWindow`] of the
//! envelopes' `seq`. A publish is checked as a whole: if any envelope was seen before (also
//! twice within the publish) or is too old, the whole publish is refused and nothing is
//! recorded; otherwise every envelope is recorded. Sender and channel come from a batch whose
//! sender was already bound to the connection's identity, so one sender can't disturb another's
//! windows.
//!
//! Memory is bounded: per (sender, channel) the newest [`MAX_EPOCHS`] epochs are kept, and an
//! epoch older than those (or than any evicted one) is refused as a replay; per sender at most
//! [`MAX_CHANNELS`] channels are tracked, and [`EPOCHS_PER_CHANNEL`] epochs per channel on
//! average, the least recently used channels evicted first, an eighth at a time (a replay on an
//! evicted channel then reaches receivers, whose own windows refuse it). Each session of a
//! sender seals a channel under an epoch of its own: the epochs kept per channel leave room for
//! a service running many sessions under one identity, each rotating now and then, without one
//! session's new epoch pushing out another's current one.
//! Reply channels (`_reply.…`) are tracked apart, at most [`MAX_REPLY_CHANNELS`] of them: a
//! responder answers each request on a new one, and its replies must not push the windows of
//! its other channels out. Windows are shared by every connection of the same principal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use entente_crypto::{ReplayError, ReplayWindow};
use entente_types::{Channel, Principal};

/// Epochs tracked per (sender, channel): room for the current epochs of as many sessions of one
/// sender publishing on one channel at once, with their last rotations.
pub(crate) const MAX_EPOCHS: usize = 64;
/// Epochs tracked per channel on average, over all of a sender's channels: a sender's windows
/// (of channels outside reply namespaces, and apart those of reply channels) hold at most this
/// many times the most channels they track ([`MAX_CHANNELS`], [`MAX_REPLY_CHANNELS`]).
pub(crate) const EPOCHS_PER_CHANNEL: usize = 4;
/// Channels tracked per sender, reply channels aside.
pub(crate) const MAX_CHANNELS: usize = 1024;
/// Reply channels tracked per sender. A reply channel takes one batch per reply grant, so a
/// replayed reply finds no grant, unless the requester asked on that channel again: then its
/// window here refuses it while kept, and the requester's own window always does.
pub(crate) const MAX_REPLY_CHANNELS: usize = 256;

/// The replay windows of every sender, each behind its own lock.
#[derive(Debug, Default)]
pub(crate) struct ReplayGuard {
    senders: Mutex<HashMap<Principal, Arc<Mutex<SenderWindows>>>>,
}

/// The windows of one sender.
#[derive(Debug)]
pub(crate) struct SenderWindows {
    channels: Pool,
    replies: Pool,
    clock: u64,
}

/// The windows of a bounded number of channels and of epochs in all, the least recently used
/// channels evicted first.
#[derive(Debug)]
struct Pool {
    windows: HashMap<Channel, ChannelWindows>,
    max: usize,
    /// Epochs tracked over all channels.
    epochs: usize,
}

#[derive(Debug, Default)]
struct ChannelWindows {
    /// Epochs below this were evicted and are refused.
    floor: u64,
    /// At most [`MAX_EPOCHS`], oldest first: most channels have one (a `BTreeMap` would
    /// allocate room for eleven of these 144-byte windows per channel). Only ever replaced
    /// one by one until the channel is evicted, so its capacity stays within twice its length.
    epochs: Vec<(u64, ReplayWindow)>,
    last_used: u64,
}

/// One envelope header to check: channel, sender-key epoch, sequence number.
pub(crate) type Header<'a> = (&'a Channel, u64, u64);

/// Why a publish was refused as a replay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReplayRefusal {
    /// The window refused a sequence number.
    #[error("channel `{channel}` epoch {epoch}: {error}")]
    Window {
        channel: String,
        epoch: u64,
        error: ReplayError,
    },
    /// The same envelope occurs twice in the publish.
    #[error("channel `{channel}` epoch {epoch}: sequence number {seq} occurs twice")]
    Repeated {
        channel: String,
        epoch: u64,
        seq: u64,
    },
    /// The epoch is older than the epochs tracked.
    #[error("channel `{channel}`: epoch {epoch} is older than the epochs tracked")]
    StaleEpoch { channel: String, epoch: u64 },
}

// === impl ReplayGuard ===

impl ReplayGuard {
    /// The windows of `sender`, created on first use.
    pub(crate) fn sender(&self, sender: &Principal) -> Arc<Mutex<SenderWindows>> {
        self.senders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(sender.clone())
            .or_default()
            .clone()
    }
}

/// Checks and records `headers` under `windows`' lock.
pub(crate) fn check_and_record(
    windows: &Mutex<SenderWindows>,
    headers: &[Header<'_>],
) -> Result<(), ReplayRefusal> {
    windows
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .check_and_record(headers)
}

// === impl SenderWindows ===

impl Default for SenderWindows {
    fn default() -> Self {
        Self {
            channels: Pool::new(MAX_CHANNELS),
            replies: Pool::new(MAX_REPLY_CHANNELS),
            clock: 0,
        }
    }
}

impl SenderWindows {
    /// Refuses the whole set if any header is a replay; records all of them otherwise.
    pub(crate) fn check_and_record(&mut self, headers: &[Header<'_>]) -> Result<(), ReplayRefusal> {
        // The usual publish: one channel, one epoch, sequence numbers rising. Nothing in it
        // can repeat, and one window decides it all.
        let rising = headers
            .windows(2)
            .all(|pair| matches!(pair, [a, b] if a.2 < b.2));
        if let Some(&(channel, epoch, _)) = headers.first()
            && rising
            && headers.iter().all(|&(c, e, _)| e == epoch && c == channel)
        {
            if let Some(window) = self.pool(channel).window(channel, epoch)? {
                for &(_, _, seq) in headers {
                    window.check(seq).map_err(|error| ReplayRefusal::Window {
                        channel: channel.to_string(),
                        epoch,
                        error,
                    })?;
                }
            }
            self.clock += 1;
            let seqs = headers.iter().map(|&(_, _, seq)| seq);
            let clock = self.clock;
            self.pool_mut(channel).record(channel, epoch, seqs, clock);
            return Ok(());
        }
        // Sequence numbers rising through the set (a batch of replies, each on a channel of
        // its own) can't repeat in it; others are looked for twice.
        let mut seen = HashSet::with_capacity(if rising { 0 } else { headers.len() });
        for &(channel, epoch, seq) in headers {
            if !rising && !seen.insert((channel, epoch, seq)) {
                return Err(ReplayRefusal::Repeated {
                    channel: channel.to_string(),
                    epoch,
                    seq,
                });
            }
            self.check(channel, epoch, seq)?;
        }
        for &(channel, epoch, seq) in headers {
            self.clock += 1;
            let clock = self.clock;
            self.pool_mut(channel)
                .record(channel, epoch, std::iter::once(seq), clock);
        }
        Ok(())
    }

    /// Where `channel`'s windows are kept.
    fn pool(&self, channel: &Channel) -> &Pool {
        if is_reply(channel.as_str()) {
            &self.replies
        } else {
            &self.channels
        }
    }

    fn pool_mut(&mut self, channel: &Channel) -> &mut Pool {
        if is_reply(channel.as_str()) {
            &mut self.replies
        } else {
            &mut self.channels
        }
    }

    fn check(&self, channel: &Channel, epoch: u64, seq: u64) -> Result<(), ReplayRefusal> {
        match self.pool(channel).window(channel, epoch)? {
            Some(window) => window.check(seq).map_err(|error| ReplayRefusal::Window {
                channel: channel.to_string(),
                epoch,
                error,
            }),
            None => Ok(()),
        }
    }
}

/// Whether `channel` lies in a reply namespace.
fn is_reply(channel: &str) -> bool {
    channel
        .strip_prefix(entente_types::namespace::REPLY_PREFIX)
        .is_some_and(|rest| rest.starts_with('.'))
}

// === impl Pool ===

impl Pool {
    fn new(max: usize) -> Self {
        Self {
            windows: HashMap::new(),
            max,
            epochs: 0,
        }
    }

    /// The window tracking `epoch` of `channel`: `None` if none does yet (every sequence
    /// number is new), an error if the epoch is older than those tracked.
    fn window(
        &self,
        channel: &Channel,
        epoch: u64,
    ) -> Result<Option<&ReplayWindow>, ReplayRefusal> {
        let Some(windows) = self.windows.get(channel) else {
            return Ok(None);
        };
        let stale = || ReplayRefusal::StaleEpoch {
            channel: channel.to_string(),
            epoch,
        };
        if epoch < windows.floor {
            return Err(stale());
        }
        match windows.epochs.iter().find(|(e, _)| *e == epoch) {
            Some((_, window)) => Ok(Some(window)),
            None if windows.epochs.len() >= MAX_EPOCHS
                && windows.epochs.first().is_some_and(|&(min, _)| epoch < min) =>
            {
                Err(stale())
            }
            None => Ok(None),
        }
    }

    /// Records `seqs` of `epoch` on `channel` (checked before), used at `clock`.
    fn record(
        &mut self,
        channel: &Channel,
        epoch: u64,
        seqs: impl Iterator<Item = u64>,
        clock: u64,
    ) {
        let max_epochs = self.max.saturating_mul(EPOCHS_PER_CHANNEL);
        // Looked up here only near a bound: the entry below is the usual publish's one lookup.
        if self.windows.len() >= self.max || self.epochs >= max_epochs {
            let known = self.windows.get(channel);
            if self.windows.len() >= self.max && known.is_none() {
                // The least recently used eighth at once: a sender using a new channel per
                // message (a responder, one per reply) costs one pass over them per eighth of
                // new ones, not one per channel.
                self.evict_least_recently_used((self.max / 8).max(1));
            } else if self.epochs >= max_epochs
                && !known.is_some_and(|w| w.epochs.iter().any(|&(e, _)| e == epoch))
            {
                // A new epoch past the epochs' bound: the least recently used channels go, an
                // eighth of them at a time, until there is room.
                while self.epochs >= max_epochs {
                    self.evict_least_recently_used((self.windows.len() / 8).max(1));
                }
            }
        }
        // A new channel's key is the name the publish shares, not a copy of it.
        let windows = self
            .windows
            .entry(channel.clone())
            .or_insert_with(|| ChannelWindows {
                // Room for one epoch: most channels never see a second.
                epochs: Vec::with_capacity(1),
                ..ChannelWindows::default()
            });
        windows.last_used = clock;
        let at = match windows.epochs.binary_search_by_key(&epoch, |&(e, _)| e) {
            Ok(at) => at,
            Err(mut at) => {
                // The oldest goes before the new one comes: the vector never outgrows
                // MAX_EPOCHS (nor, once grown, a capacity of MAX_EPOCHS).
                if windows.epochs.len() >= MAX_EPOCHS && at > 0 {
                    let (oldest, _) = windows.epochs.remove(0);
                    windows.floor = windows.floor.max(oldest.saturating_add(1));
                    at -= 1;
                } else {
                    self.epochs += 1;
                }
                windows.epochs.insert(at, (epoch, ReplayWindow::default()));
                at
            }
        };
        if let Some((_, window)) = windows.epochs.get_mut(at) {
            for seq in seqs {
                window.accept(seq);
            }
        }
        while windows.epochs.len() > MAX_EPOCHS {
            let (oldest, _) = windows.epochs.remove(0);
            windows.floor = windows.floor.max(oldest.saturating_add(1));
            self.epochs -= 1;
        }
    }

    /// Evicts the `count` least recently used channels (or all, if there are fewer).
    fn evict_least_recently_used(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        if count >= self.windows.len() {
            self.windows.clear();
            self.epochs = 0;
            return;
        }
        let mut uses: Vec<u64> = self.windows.values().map(|w| w.last_used).collect();
        // Uses are distinct (the sender's clock ticks once per record), so exactly `count` are
        // at or below.
        let (_, &mut newest_evicted, _) = uses.select_nth_unstable(count - 1);
        let mut evicted = 0;
        self.windows.retain(|_, w| {
            let keep = w.last_used > newest_evicted;
            if !keep {
                evicted += w.epochs.len();
            }
            keep
        });
        self.epochs -= evicted;
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

    use super::*;

    fn c(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    #[test]
    fn a_replay_refuses_the_whole_set_and_records_nothing() {
        let mut w = SenderWindows::default();
        w.check_and_record(&[(&c("a"), 1, 0), (&c("a"), 1, 1)])
            .unwrap();
        let err = w
            .check_and_record(&[(&c("a"), 1, 2), (&c("a"), 1, 1)])
            .unwrap_err();
        assert!(matches!(
            err,
            ReplayRefusal::Window {
                error: ReplayError::Duplicate(1),
                ..
            }
        ));
        // 2 was not recorded by the refused set.
        w.check_and_record(&[(&c("a"), 1, 2)]).unwrap();
        // Other channels and epochs have their own windows.
        w.check_and_record(&[(&c("b"), 1, 0), (&c("a"), 2, 0)])
            .unwrap();
    }

    #[test]
    fn a_rising_run_of_one_channel_and_epoch_is_checked_whole_against_its_window() {
        let mut w = SenderWindows::default();
        w.check_and_record(&[(&c("a"), 1, 0), (&c("a"), 1, 1), (&c("a"), 1, 2)])
            .unwrap();
        // Rising, one channel and epoch, but 2 was seen: refused whole, 3 not recorded.
        assert!(matches!(
            w.check_and_record(&[(&c("a"), 1, 2), (&c("a"), 1, 3)]),
            Err(ReplayRefusal::Window {
                error: ReplayError::Duplicate(2),
                ..
            })
        ));
        w.check_and_record(&[(&c("a"), 1, 3), (&c("a"), 1, 4)])
            .unwrap();
        // The same numbers out of order take the general path and meet the same window.
        assert!(matches!(
            w.check_and_record(&[(&c("a"), 1, 6), (&c("a"), 1, 4)]),
            Err(ReplayRefusal::Window {
                error: ReplayError::Duplicate(4),
                ..
            })
        ));
        w.check_and_record(&[(&c("a"), 1, 6), (&c("a"), 1, 5)])
            .unwrap();
    }

    /// A batch of replies: rising numbers, each on a channel of its own. Each channel's
    /// window decides, and a refusal records none of the set.
    #[test]
    fn a_rising_run_over_several_channels_meets_each_channels_window() {
        let mut w = SenderWindows::default();
        let (r1, r2, r3) = (
            c("_reply.shop.alice.r1"),
            c("_reply.shop.alice.r2"),
            c("_reply.shop.alice.r3"),
        );
        w.check_and_record(&[(&r1, 1, 0), (&r2, 1, 1)]).unwrap();
        w.check_and_record(&[(&r3, 1, 2), (&r1, 1, 3)]).unwrap();
        assert!(matches!(
            w.check_and_record(&[(&r2, 1, 2), (&r1, 1, 3)]),
            Err(ReplayRefusal::Window {
                error: ReplayError::Duplicate(3),
                ..
            })
        ));
        // r2's 2 went with the refused set: it is new still.
        w.check_and_record(&[(&r2, 1, 2)]).unwrap();
        assert_eq!(w.replies.windows.len(), 3);
    }

    #[test]
    fn duplicates_within_one_set_are_refused() {
        let mut w = SenderWindows::default();
        assert!(matches!(
            w.check_and_record(&[(&c("a"), 1, 5), (&c("a"), 1, 5)]),
            Err(ReplayRefusal::Repeated { seq: 5, .. })
        ));
        w.check_and_record(&[(&c("a"), 1, 5)]).unwrap();
    }

    #[test]
    fn old_epochs_are_evicted_and_then_refused() {
        let mut w = SenderWindows::default();
        for epoch in 10..10 + MAX_EPOCHS as u64 + 1 {
            w.check_and_record(&[(&c("a"), epoch, 0)]).unwrap();
        }
        // Epoch 10 was evicted: refused rather than given a fresh window.
        assert!(matches!(
            w.check_and_record(&[(&c("a"), 10, 1)]),
            Err(ReplayRefusal::StaleEpoch { epoch: 10, .. })
        ));
        assert!(matches!(
            w.check_and_record(&[(&c("a"), 3, 0)]),
            Err(ReplayRefusal::StaleEpoch { .. })
        ));
        w.check_and_record(&[(&c("a"), 11, 1)]).unwrap();

        // Epochs first seen out of order: the oldest goes first, not the first seen. One
        // older than every epoch tracked is refused before any was evicted.
        let mut w = SenderWindows::default();
        let last = 10 + MAX_EPOCHS as u64 - 1;
        for epoch in [12, 10, 11].into_iter().chain(13..=last) {
            w.check_and_record(&[(&c("b"), epoch, 0)]).unwrap();
        }
        assert!(matches!(
            w.check_and_record(&[(&c("b"), 9, 0)]),
            Err(ReplayRefusal::StaleEpoch { epoch: 9, .. })
        ));
        w.check_and_record(&[(&c("b"), last + 1, 0)]).unwrap();
        assert!(matches!(
            w.check_and_record(&[(&c("b"), 10, 1)]),
            Err(ReplayRefusal::StaleEpoch { epoch: 10, .. })
        ));
        for epoch in 11..=last + 1 {
            assert!(matches!(
                w.check_and_record(&[(&c("b"), epoch, 0)]),
                Err(ReplayRefusal::Window { .. })
            ));
        }
        w.check_and_record(&[(&c("b"), 11, 1)]).unwrap();
        // The oldest went before the newest came: the windows never took room for more.
        let kept = &w.channels.windows["b"].epochs;
        assert_eq!(
            kept.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            (11..=last + 1).collect::<Vec<_>>()
        );
        assert!(kept.capacity() <= MAX_EPOCHS, "{}", kept.capacity());
        assert_eq!(w.channels.epochs, MAX_EPOCHS);
    }

    /// Sessions of one sender each seal a channel under an epoch of their own, and one that
    /// was refused rotates to a new one: many of them publishing at once, in turn, each
    /// rotating now and then, are all accepted (no session's new epoch pushes out another's
    /// current one), and a replay in any of their epochs is still refused.
    #[test]
    fn many_sessions_of_one_sender_keep_their_epochs_on_one_channel() {
        const SESSIONS: u64 = 24;
        let mut w = SenderWindows::default();
        let mut current: Vec<u64> = (0..SESSIONS).map(|s| 1000 + s).collect();
        for round in 0..8u64 {
            for (session, epoch) in current.iter_mut().enumerate() {
                // A third of the sessions rotate every other round.
                if round % 2 == 1 && session % 3 == 0 {
                    *epoch += 100 * round;
                }
                w.check_and_record(&[(&c("quotes"), *epoch, round)])
                    .unwrap_or_else(|e| panic!("session {session} round {round}: {e}"));
            }
        }
        for &epoch in &current {
            assert!(matches!(
                w.check_and_record(&[(&c("quotes"), epoch, 7)]),
                Err(ReplayRefusal::Window { .. })
            ));
        }
    }

    /// The epochs of all of a sender's channels are bounded together: a sender holding many
    /// epochs on each of many channels has its least recently used channels evicted to make
    /// room for a new epoch, and the count stays the sum of what each channel holds.
    #[test]
    fn the_epochs_of_all_channels_are_bounded_together() {
        let bound = MAX_CHANNELS * EPOCHS_PER_CHANNEL;
        let per = MAX_EPOCHS as u64;
        let mut w = SenderWindows::default();
        let channels = bound / MAX_EPOCHS;
        for i in 0..channels {
            for epoch in 1..=per {
                w.check_and_record(&[(&c(&format!("c{i}")), epoch, 0)])
                    .unwrap();
            }
        }
        assert_eq!(w.channels.epochs, bound);
        assert_eq!(w.channels.windows.len(), channels);
        // c0 used again: now the most recently used.
        w.check_and_record(&[(&c("c0"), per, 1)]).unwrap();
        // One epoch more, on a channel already tracked: the least recently used eighth goes.
        w.check_and_record(&[(&c("c1"), per + 1, 0)]).unwrap();
        let sum: usize = w.channels.windows.values().map(|x| x.epochs.len()).sum();
        assert_eq!(w.channels.epochs, sum);
        assert!(w.channels.epochs < bound, "{}", w.channels.epochs);
        assert!(w.channels.windows.contains_key("c0"));
        assert!(!w.channels.windows.contains_key("c2"));
        // An evicted channel starts afresh (its receivers' windows refuse a replay).
        w.check_and_record(&[(&c("c2"), 1, 0)]).unwrap();
        // Known epochs of a channel kept need no room.
        let before = w.channels.epochs;
        w.check_and_record(&[(&c("c0"), per, 2)]).unwrap();
        assert_eq!(w.channels.epochs, before);
    }

    #[test]
    fn channels_are_bounded_and_the_least_recently_used_go_first() {
        let mut w = SenderWindows::default();
        for i in 0..MAX_CHANNELS {
            w.check_and_record(&[(&c(&format!("c{i}")), 1, 0)]).unwrap();
        }
        assert_eq!(w.channels.windows.len(), MAX_CHANNELS);
        // c0 used again: now the most recently used.
        w.check_and_record(&[(&c("c0"), 1, 1)]).unwrap();
        w.check_and_record(&[(&c("new"), 1, 0)]).unwrap();
        // An eighth went at once, the oldest: c1 ..= c128, not c0.
        assert_eq!(
            w.channels.windows.len(),
            MAX_CHANNELS - MAX_CHANNELS / 8 + 1
        );
        assert!(w.channels.windows.contains_key("c0"));
        assert!(w.channels.windows.contains_key("new"));
        for i in 1..=MAX_CHANNELS / 8 {
            assert!(
                !w.channels.windows.contains_key(format!("c{i}").as_str()),
                "c{i}"
            );
        }
        assert!(
            w.channels
                .windows
                .contains_key(format!("c{}", MAX_CHANNELS / 8 + 1).as_str())
        );
        // c0's window survived: its sequence numbers are still refused.
        assert!(w.check_and_record(&[(&c("c0"), 1, 1)]).is_err());
        for i in 0..10 * MAX_CHANNELS {
            w.check_and_record(&[(&c(&format!("d{i}")), 1, 0)]).unwrap();
            assert!(w.channels.windows.len() <= MAX_CHANNELS);
        }
    }

    /// Reply channels are tracked apart: a responder's replies, each on a new reply channel,
    /// never push its other channels' windows out, and their own stay bounded.
    #[test]
    fn reply_channels_do_not_push_other_channels_windows_out() {
        let mut w = SenderWindows::default();
        w.check_and_record(&[(&c("orders.eu"), 1, 0)]).unwrap();
        let reply = |i: usize| format!("_reply.shop.alice.r{i}");
        for i in 0..4 * MAX_CHANNELS {
            w.check_and_record(&[(&c(&reply(i)), 1, 0)]).unwrap();
            assert!(w.replies.windows.len() <= MAX_REPLY_CHANNELS);
        }
        assert_eq!(w.channels.windows.len(), 1);
        assert!(
            w.check_and_record(&[(&c("orders.eu"), 1, 0)]).is_err(),
            "still refused as a replay"
        );
        // The latest reply channels keep their windows; a channel named like one but outside
        // the reply namespace is another channel's.
        assert!(
            w.check_and_record(&[(&c(&reply(4 * MAX_CHANNELS - 1)), 1, 0)])
                .is_err()
        );
        w.check_and_record(&[(&c("_replyx.r1"), 1, 0)]).unwrap();
        assert_eq!(w.channels.windows.len(), 2);
    }
}
