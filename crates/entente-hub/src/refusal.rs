//! Stable numeric codes of `Refusal` frames.
//!
//! The SDK needs these too; they belong in `entente-wire` next to the frames once the protocol
//! document specifies session semantics.

use std::fmt;

/// Why the hub refused a publish, subscribe or unsubscribe (`Refusal.code`), or ended a
/// subscription (`SubscriptionEnded.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum RefusalCode {
    /// A field is malformed: a bad channel or pattern, a sender key or batch whose fields don't
    /// parse, an empty publish.
    Malformed = 1,
    /// A batch or sender key names a sender other than the connection's identity.
    ForgedSender = 2,
    /// Authorization denies it: the policies (the reason names the deciding policies, or says
    /// that none permits it), the structural rules of own namespaces, or the lack of a reply
    /// grant. Also the code of a `SubscriptionEnded` whose subscription is no longer allowed.
    Denied = 3,
    /// An envelope's sequence number was seen before (or is older than the replay window) for
    /// its (sender, channel, epoch). The whole publish is refused.
    Replay = 4,
    /// Some deliveries failed: a subscriber's queue stayed full past the slow-consumer timeout
    /// (that subscriber is disconnected) or its session was closing. The publish reached every
    /// other subscriber, so resending it would be a replay.
    DeliveryFailed = 5,
    /// The subscription ID is already in use on this session.
    DuplicateSubscription = 6,
    /// The session holds as many subscriptions as allowed.
    TooManySubscriptions = 7,
    /// The frame to deliver would exceed the frame size limit.
    TooLarge = 8,
    /// Unsubscribe of an ID that is not subscribed.
    UnknownSubscription = 9,
    /// A request (an envelope with `reply_to`) from a session that already holds the maximum
    /// of outstanding reply grants ([`MAX_REPLY_GRANTS`](crate::MAX_REPLY_GRANTS)). Nothing
    /// was routed; retry once replies arrive or requests expire.
    TooManyReplyGrants = 10,
    /// A direct message to a principal with no session subscribed to its direct channel.
    /// Nothing was routed.
    NoRecipient = 11,
    /// The publish would be held for approval, but too many messages already wait (of the
    /// sender, or in the hub).
    TooManyHeld = 12,
    /// The hub could not store what the publish needed (a message held for approval): nothing
    /// was routed or held; try again.
    Unavailable = 13,
    /// A durable channel holds as much as its limits allow: nothing was stored or routed; try
    /// again once its consumers catch up (docs/DURABLE.md).
    Full = 14,
    /// A durable subscription names a pattern no durable channel captures.
    NoStream = 15,
    /// A rate limit refused the whole publish (the agent's messages or bytes per second, or a
    /// channel class's messages per second): nothing was routed. `Refusal.retry_after_ms`
    /// says when the same publish would pass; zero means it never would (it is larger than
    /// the limit's burst: send fewer at once).
    RateLimited = 16,
}

impl RefusalCode {
    /// The code on the wire.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The code for a wire value, if known.
    pub fn from_u32(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Malformed,
            2 => Self::ForgedSender,
            3 => Self::Denied,
            4 => Self::Replay,
            5 => Self::DeliveryFailed,
            6 => Self::DuplicateSubscription,
            7 => Self::TooManySubscriptions,
            8 => Self::TooLarge,
            9 => Self::UnknownSubscription,
            10 => Self::TooManyReplyGrants,
            11 => Self::NoRecipient,
            12 => Self::TooManyHeld,
            13 => Self::Unavailable,
            14 => Self::Full,
            15 => Self::NoStream,
            16 => Self::RateLimited,
            _ => return None,
        })
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "MALFORMED",
            Self::ForgedSender => "FORGED_SENDER",
            Self::Denied => "DENIED",
            Self::Replay => "REPLAY",
            Self::DeliveryFailed => "DELIVERY_FAILED",
            Self::DuplicateSubscription => "DUPLICATE_SUBSCRIPTION",
            Self::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            Self::TooLarge => "TOO_LARGE",
            Self::UnknownSubscription => "UNKNOWN_SUBSCRIPTION",
            Self::TooManyReplyGrants => "TOO_MANY_REPLY_GRANTS",
            Self::NoRecipient => "NO_RECIPIENT",
            Self::TooManyHeld => "TOO_MANY_HELD",
            Self::Unavailable => "UNAVAILABLE",
            Self::Full => "FULL",
            Self::NoStream => "NO_STREAM",
            Self::RateLimited => "RATE_LIMITED",
        })
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

    #[test]
    fn codes_round_trip() {
        for n in 0..20 {
            if let Some(code) = RefusalCode::from_u32(n) {
                assert_eq!(code.as_u32(), n);
            }
        }
        assert_eq!(RefusalCode::from_u32(0), None);
        assert_eq!(RefusalCode::from_u32(2), Some(RefusalCode::ForgedSender));
    }
}
