//! The SDK's one error type: a small kind to match on, a sentence to show, and the underlying
//! error (if any) as [`std::error::Error::source`].

use std::fmt;
use std::time::Duration;

use entente_hub::RefusalCode;

/// What went wrong, coarsely: what a caller matches on to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The hub could not be reached (TCP, HTTP/2), or the session could not be opened.
    Connect,
    /// The TLS handshake failed, or the hub refused our certificate (revoked, expired, from
    /// another CA).
    Tls,
    /// The hub's authorization refused it (`Refusal` code `DENIED`, or a gRPC
    /// `PERMISSION_DENIED` answer to a unary call), ended a subscription it no longer
    /// allows (`SubscriptionEnded` with code `DENIED`), or refused the session at connect
    /// (`PERMISSION_DENIED`, e.g. a quarantined agent).
    Denied,
    /// The hub refused it with another code ([`Error::refusal_code`] says which).
    Refused,
    /// A limit of the hub refused it: a rate limit (`Refusal` code `RATE_LIMITED`, or a
    /// unary call's `RESOURCE_EXHAUSTED` under the agent's call limit; [`Error::retry_after`]
    /// says when the same publish or call would pass; a call's `RESOURCE_EXHAUSTED` that no
    /// wait changes is [`Refused`](Self::Refused)), or a connection limit (too many
    /// connections of this identity, or of the hub, when the session opened).
    /// Nothing was sent. As an item of a subscription: the SDK's own bound, messages
    /// delivered before the hub acknowledged the subscription past what its queue holds were
    /// dropped ([`ClientStats::early_dropped`](crate::ClientStats::early_dropped)).
    Limited,
    /// An incoming envelope, batch or sender key did not verify or open (bad signature,
    /// not a recipient, replay, expired, unknown sender key, …). Its plaintext is never shown.
    Rejected,
    /// No answer within the configured time.
    Timeout,
    /// The session is over: closed by the hub (revoked, certificate expired, shutdown; the
    /// gRPC status is in the message) or by this client.
    Closed,
    /// The hub sent something the SDK did not expect.
    Protocol,
    /// Sealing failed, or a key bundle did not verify against the trust bundle.
    Crypto,
    /// The caller passed something unusable: a malformed channel or pattern, an oversized
    /// payload.
    InvalidInput,
    /// The hub does not offer a service the call needs (it answered `UNIMPLEMENTED`), such as
    /// the directory of key bundles.
    Unsupported,
    /// A local file could not be written, such as a renewed certificate to the identity
    /// directory.
    Io,
}

/// An SDK error: [`Error::kind`] to match on, a lowercase message, and the cause as `source`.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    refusal: Option<(u32, String)>,
    retry_after: Option<Duration>,
    details: Vec<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

// === impl ErrorKind ===

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Denied => "denied",
            Self::Refused => "refused",
            Self::Limited => "limited",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
            Self::Crypto => "crypto",
            Self::InvalidInput => "invalid input",
            Self::Unsupported => "unsupported",
            Self::Io => "i/o",
        })
    }
}

// === impl Error ===

impl Error {
    /// An error of `kind` saying `message`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            refusal: None,
            retry_after: None,
            details: Vec::new(),
            source: None,
        }
    }

    /// The same error, of another kind.
    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Attaches lines of detail (each problem of a refused policy set).
    pub(crate) fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }

    /// Attaches the underlying error.
    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// A `Refusal{code, reason}` from the hub about `what` (for example "publish to
    /// `orders.eu`"): kind [`ErrorKind::Denied`] for `DENIED`, [`ErrorKind::Limited`] for
    /// `RATE_LIMITED`, [`ErrorKind::Refused`] otherwise.
    pub(crate) fn refusal(what: &str, code: u32, reason: &str) -> Self {
        Self::coded("refused", what, code, reason)
    }

    /// The same error, telling when to retry (a `RATE_LIMITED` refusal's `retry_after_ms`).
    pub(crate) fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// A `SubscriptionEnded{code, reason}` from the hub about `what` (the subscription): kinds
    /// as for [`refusal`](Self::refusal).
    pub(crate) fn ended(what: &str, code: u32, reason: &str) -> Self {
        Self::coded("ended", what, code, reason)
    }

    fn coded(verb: &str, what: &str, code: u32, reason: &str) -> Self {
        let known = RefusalCode::from_u32(code);
        let kind = match known {
            Some(RefusalCode::Denied) => ErrorKind::Denied,
            Some(RefusalCode::RateLimited) => ErrorKind::Limited,
            _ => ErrorKind::Refused,
        };
        let name = known.map_or_else(|| format!("code {code}"), |c| c.to_string());
        let message = if reason.is_empty() {
            format!("the hub {verb} {what} ({name})")
        } else {
            format!("the hub {verb} {what} ({name}): {reason}")
        };
        Self {
            kind,
            message,
            refusal: Some((code, reason.to_owned())),
            retry_after: None,
            details: Vec::new(),
            source: None,
        }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The hub's refusal code, when the hub refused a publish or subscription, or ended a
    /// subscription.
    pub fn refusal_code(&self) -> Option<RefusalCode> {
        self.refusal
            .as_ref()
            .and_then(|(code, _)| RefusalCode::from_u32(*code))
    }

    /// When the same publish or call would pass, for a rate limit's refusal
    /// ([`ErrorKind::Limited`]);
    /// `Some(Duration::ZERO)` when it never would (it is larger than the limit's burst: send
    /// fewer messages at once). `None` for other errors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The hub's reason for a refusal (or for ending a subscription), as it sent it.
    pub fn refusal_reason(&self) -> Option<&str> {
        self.refusal.as_ref().map(|(_, reason)| reason.as_str())
    }

    /// Lines of detail the hub sent with the error, one per item: each problem of a refused
    /// policy set ([`Client::load_policies`](crate::Client::load_policies)), `file:line:col: …`.
    /// Empty for other errors.
    pub fn details(&self) -> &[String] {
        &self.details
    }

    /// Another error of the same kind and message, without the source (which can't be
    /// cloned): for telling several waiters about one failure.
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            kind: self.kind,
            message: self.message.clone(),
            refusal: self.refusal.clone(),
            retry_after: self.retry_after,
            details: self.details.clone(),
            source: None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_rate_limit_refusal_is_limited_and_says_when_to_retry() {
        let e = Error::refusal(
            "publish to `a`",
            16,
            "1 messages exceed the agent-messages limit",
        )
        .with_retry_after(Duration::from_millis(250));
        assert_eq!(e.kind(), ErrorKind::Limited);
        assert_eq!(e.refusal_code(), Some(RefusalCode::RateLimited));
        assert_eq!(e.retry_after(), Some(Duration::from_millis(250)));
        assert_eq!(
            e.duplicate().retry_after(),
            Some(Duration::from_millis(250))
        );
        assert!(e.to_string().contains("(RATE_LIMITED)"), "{e}");
        assert_eq!(Error::refusal("x", 3, "").retry_after(), None);
    }

    #[test]
    fn refusals_carry_their_code_and_reason() {
        let e = Error::refusal("publish to `payments.eu`", 3, "no policy permits it");
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert_eq!(e.refusal_code(), Some(RefusalCode::Denied));
        assert_eq!(e.refusal_reason(), Some("no policy permits it"));
        assert_eq!(
            e.to_string(),
            "the hub refused publish to `payments.eu` (DENIED): no policy permits it"
        );

        let e = Error::refusal("publish to `a`", 4, "");
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert_eq!(e.refusal_code(), Some(RefusalCode::Replay));
        assert_eq!(e.to_string(), "the hub refused publish to `a` (REPLAY)");

        let e = Error::refusal("publish to `a`", 99, "new");
        assert_eq!(e.kind(), ErrorKind::Refused);
        assert_eq!(e.refusal_code(), None);
        assert!(e.to_string().contains("code 99"));
    }

    #[test]
    fn an_ended_subscription_carries_the_code_and_reason() {
        let e = Error::ended("the subscription to `orders.>`", 3, "no policy permits it");
        assert_eq!(e.kind(), ErrorKind::Denied);
        assert_eq!(e.refusal_code(), Some(RefusalCode::Denied));
        assert_eq!(e.refusal_reason(), Some("no policy permits it"));
        assert_eq!(
            e.to_string(),
            "the hub ended the subscription to `orders.>` (DENIED): no policy permits it"
        );
        assert!(e.details().is_empty());
    }

    #[test]
    fn the_source_is_kept_and_duplicates_drop_it() {
        let io = std::io::Error::other("boom");
        let e = Error::new(ErrorKind::Connect, "cannot reach the hub").with_source(io);
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "boom".to_owned()
        );
        let d = e.duplicate();
        assert_eq!(d.kind(), ErrorKind::Connect);
        assert_eq!(d.to_string(), "cannot reach the hub");
        assert!(std::error::Error::source(&d).is_none());
    }

    #[test]
    fn kinds_display_lowercase() {
        for kind in [
            ErrorKind::Connect,
            ErrorKind::Tls,
            ErrorKind::Denied,
            ErrorKind::Refused,
            ErrorKind::Rejected,
            ErrorKind::Timeout,
            ErrorKind::Closed,
            ErrorKind::Protocol,
            ErrorKind::Crypto,
            ErrorKind::InvalidInput,
            ErrorKind::Unsupported,
            ErrorKind::Io,
        ] {
            let text = kind.to_string();
            assert_eq!(text, text.to_lowercase());
        }
    }
}
