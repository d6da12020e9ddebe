//! Channel names and subscription patterns, with NATS subject semantics.
//!
//! A channel name is a sequence of tokens separated by `.`, such as `team.research.results`.
//! Every token is non-empty and made of `[A-Za-z0-9_:-]`; a name has at most [`MAX_TOKENS`]
//! tokens and [`MAX_CHANNEL_LEN`] bytes. A [`Channel`] is a concrete name that messages are
//! published to. A [`ChannelPattern`] is what a subscription or a policy refers to, and may use
//! two wildcards, each only as a whole token:
//!
//! - `*` matches exactly one token: `a.*` matches `a.b` but neither `a` nor `a.b.c`;
//! - `>` matches one or more trailing tokens and may only be the last token: `a.>` matches `a.b`
//!   and `a.b.c` but not `a`.
//!
//! Literal tokens compare exactly, so matching is case-sensitive. Channels whose first token starts
//! with `_` (such as `_INBOX.x`) are system channels.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest accepted channel name or pattern, in bytes.
pub const MAX_CHANNEL_LEN: usize = 255;

/// Largest accepted number of `.`-separated tokens in a channel name or pattern.
pub const MAX_TOKENS: usize = 16;

/// A concrete channel name, without wildcards, e.g. `team.research.results`.
///
/// Shared rather than owned: a clone, as the hub and the SDK make several of for each message
/// (map keys, routes, reply grants), counts a reference instead of copying the name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

/// A channel pattern that may contain the wildcards `*` and `>`, e.g. `team.*.results`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelPattern {
    pattern: String,
    /// Whether the pattern has no wildcard, i.e. names exactly one channel.
    literal: bool,
}

/// Why a string is not a valid channel name or pattern.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelError {
    /// The input is empty.
    #[error("channel is empty")]
    Empty,
    /// The input is longer than [`MAX_CHANNEL_LEN`].
    #[error("channel is {len} bytes, longer than the maximum of {max}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The maximum allowed length.
        max: usize,
    },
    /// The input has more than [`MAX_TOKENS`] tokens.
    #[error("channel has {count} tokens, more than the maximum of {max}")]
    TooManyTokens {
        /// Number of tokens in the input.
        count: usize,
        /// The maximum allowed number of tokens.
        max: usize,
    },
    /// A token is empty: the input starts or ends with `.`, or has `..`.
    #[error("channel has an empty token (leading, trailing or doubled `.`)")]
    EmptyToken,
    /// A token contains a character outside `[A-Za-z0-9_:-]`.
    #[error(
        "channel contains `{}`; only letters, digits, `_`, `:` and `-` are allowed",
        .ch.escape_debug()
    )]
    InvalidChar {
        /// The first offending character.
        ch: char,
    },
    /// A concrete channel contains a `*` or `>` token.
    #[error("channel contains a wildcard (`*` or `>`); wildcards are only allowed in patterns")]
    WildcardInChannel,
    /// A `>` token is not the last token.
    #[error("channel pattern has `>` before its last token")]
    MisplacedFullWildcard,
    /// A token mixes a wildcard with other characters, e.g. `a*`.
    #[error("channel has a token mixing `*` or `>` with other characters")]
    PartialWildcardToken,
}

// === impl Channel ===

impl Channel {
    /// Parses and validates a concrete channel name.
    pub fn parse(s: &str) -> Result<Self, ChannelError> {
        validate(s, Wildcards::Reject)?;
        Ok(Self(Arc::from(s)))
    }

    /// Same as [`Channel::parse`].
    pub fn new(s: &str) -> Result<Self, ChannelError> {
        Self::parse(s)
    }

    /// Validates a concrete channel name already shared (as decoded from the wire), and makes
    /// it the channel's: no copy.
    pub fn from_shared(name: Arc<str>) -> Result<Self, ChannelError> {
        validate(&name, Wildcards::Reject)?;
        Ok(Self(name))
    }

    /// The name, shared: to send it as is.
    pub fn to_shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// A name this crate built from validated parts (see [`crate::namespace`]).
    pub(crate) fn from_valid(s: &str) -> Self {
        debug_assert!(validate(s, Wildcards::Reject).is_ok(), "{s}");
        Self(Arc::from(s))
    }

    /// The channel name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `.`-separated tokens, first to last.
    pub fn tokens(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.0.split('.')
    }

    /// Whether this is a system channel: its first token starts with `_`.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('_')
    }
}

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, ChannelError> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for Channel {
    type Error = ChannelError;

    fn try_from(s: &str) -> Result<Self, ChannelError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Channel {
    type Error = ChannelError;

    fn try_from(s: String) -> Result<Self, ChannelError> {
        validate(&s, Wildcards::Reject)?;
        Ok(Self(Arc::from(s)))
    }
}

/// A channel compares, orders and hashes as its name does, so maps keyed by channels can be
/// looked up by name.
impl std::borrow::Borrow<str> for Channel {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl ChannelPattern ===

impl ChannelPattern {
    /// A pattern this crate built from validated parts (see [`crate::namespace`]).
    pub(crate) fn from_valid(s: String) -> Self {
        let literal = validate(&s, Wildcards::Allow);
        debug_assert!(literal.is_ok(), "{s}");
        Self {
            literal: literal.unwrap_or(false),
            pattern: s,
        }
    }

    /// Parses and validates a channel pattern.
    pub fn parse(s: &str) -> Result<Self, ChannelError> {
        let literal = validate(s, Wildcards::Allow)?;
        Ok(Self {
            pattern: s.to_owned(),
            literal,
        })
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has no wildcard, so it matches exactly one channel.
    pub fn is_literal(&self) -> bool {
        self.literal
    }

    /// Whether a subscription to this pattern is delivered `channel`'s messages: it
    /// [`matches`](Self::matches), and a pattern beginning with a wildcard (`>`, `*.x`) takes
    /// no system channel (no one's `_direct` or `_reply` messages reach a catch-all). The rule
    /// the hub routes by and a receiver checks what it is delivered against.
    pub fn routes(&self, channel: &Channel) -> bool {
        let wildcard_first = matches!(self.tokens().next(), Some(FULL_WILDCARD | SINGLE_WILDCARD));
        !(wildcard_first && channel.is_system()) && self.matches(channel)
    }

    /// Whether `channel` matches this pattern. Does not allocate.
    pub fn matches(&self, channel: &Channel) -> bool {
        if self.literal {
            return self.pattern == channel.as_str();
        }
        let mut names = channel.0.split('.');
        for token in self.pattern.split('.') {
            match token {
                // Validation guarantees `>` is the last token.
                FULL_WILDCARD => return names.next().is_some(),
                SINGLE_WILDCARD => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if names.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }

    /// The `.`-separated tokens, first to last, wildcards included.
    pub fn tokens(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.pattern.split('.')
    }
}

impl From<Channel> for ChannelPattern {
    fn from(channel: Channel) -> Self {
        Self {
            pattern: channel.as_str().to_owned(),
            literal: true,
        }
    }
}

impl FromStr for ChannelPattern {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, ChannelError> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for ChannelPattern {
    type Error = ChannelError;

    fn try_from(s: &str) -> Result<Self, ChannelError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ChannelPattern {
    type Error = ChannelError;

    fn try_from(pattern: String) -> Result<Self, ChannelError> {
        let literal = validate(&pattern, Wildcards::Allow)?;
        Ok(Self { pattern, literal })
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ChannelPattern")
            .field(&self.pattern)
            .finish()
    }
}

// === helpers ===

const SINGLE_WILDCARD: &str = "*";
const FULL_WILDCARD: &str = ">";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wildcards {
    Allow,
    Reject,
}

/// Validates a channel name or pattern and returns whether it is literal (has no wildcard).
fn validate(s: &str, wildcards: Wildcards) -> Result<bool, ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong {
            len: s.len(),
            max: MAX_CHANNEL_LEN,
        });
    }
    if is_plain_literal(s) {
        return Ok(true);
    }
    validate_tokens(s, wildcards)
}

/// [`validate`] token by token, for what is not a plain literal name: finds the error.
fn validate_tokens(s: &str, wildcards: Wildcards) -> Result<bool, ChannelError> {
    let count = s.split('.').count();
    if count > MAX_TOKENS {
        return Err(ChannelError::TooManyTokens {
            count,
            max: MAX_TOKENS,
        });
    }
    let mut literal = true;
    let mut tokens = s.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() {
            return Err(ChannelError::EmptyToken);
        }
        if token == SINGLE_WILDCARD || token == FULL_WILDCARD {
            if wildcards == Wildcards::Reject {
                return Err(ChannelError::WildcardInChannel);
            }
            if token == FULL_WILDCARD && tokens.peek().is_some() {
                return Err(ChannelError::MisplacedFullWildcard);
            }
            literal = false;
            continue;
        }
        if token.contains(['*', '>']) {
            return Err(ChannelError::PartialWildcardToken);
        }
        if let Some(ch) = token.chars().find(|&ch| !is_token_char(ch)) {
            return Err(ChannelError::InvalidChar { ch });
        }
    }
    Ok(literal)
}

fn is_token_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '_' | ':' | '-')
}

/// [`BYTE_CLASS`] of a byte that may not be in a name (or starts a wildcard).
const OTHER: u8 = 0;
/// [`BYTE_CLASS`] of a token character.
const TOKEN_CHAR: u8 = 1;
/// [`BYTE_CLASS`] of the separator `.`.
const SEPARATOR: u8 = 2;

/// Each byte's class, looked up rather than compared: names are checked wherever they arrive
/// (every request's `reply_to` at the hub and at its receiver), a byte at a time.
static BYTE_CLASS: [u8; 256] = {
    let mut classes = [OTHER; 256];
    let mut byte = 0;
    while byte < classes.len() {
        // `byte` < 256: the cast is exact.
        let ch = byte as u8;
        #[expect(
            clippy::indexing_slicing,
            reason = "a constant: an index out of bounds fails the build"
        )]
        if ch == b'.' {
            classes[byte] = SEPARATOR;
        } else if ch.is_ascii_alphanumeric() || matches!(ch, b'_' | b':' | b'-') {
            classes[byte] = TOKEN_CHAR;
        }
        byte += 1;
    }
    classes
};

/// Whether `token` is one token: non-empty, of token characters only.
pub(crate) fn is_plain_token(token: &str) -> bool {
    !token.is_empty()
        && token
            .bytes()
            .all(|byte| BYTE_CLASS.get(usize::from(byte)) == Some(&TOKEN_CHAR))
}

/// The usual name, in one pass over its bytes without a branch per byte: non-empty tokens of
/// token characters, at most [`MAX_TOKENS`] of them. `false` leaves the verdict (and the
/// error) to [`validate`]'s token-by-token checks.
fn is_plain_literal(s: &str) -> bool {
    let mut dots = 0usize;
    let mut other = false;
    let mut empty_token = false;
    let mut previous = SEPARATOR;
    for &byte in s.as_bytes() {
        let class = BYTE_CLASS.get(usize::from(byte)).copied().unwrap_or(OTHER);
        other |= class == OTHER;
        empty_token |= class == SEPARATOR && previous == SEPARATOR;
        dots += usize::from(class == SEPARATOR);
        previous = class;
    }
    !other && !empty_token && previous != SEPARATOR && dots < MAX_TOKENS
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use proptest::prelude::*;

    use super::*;

    fn ch(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    fn pat(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    fn channel_err(s: &str) -> ChannelError {
        Channel::parse(s).unwrap_err()
    }

    fn pattern_err(s: &str) -> ChannelError {
        ChannelPattern::parse(s).unwrap_err()
    }

    // --- accepted ---

    #[test]
    fn accepts_channels() {
        for s in [
            "a",
            "team.research.results",
            "A-z_0:9",
            "_INBOX.abc123",
            "agent:research:bot.tasks",
        ] {
            let c = ch(s);
            assert_eq!(c.as_str(), s);
            assert_eq!(c.to_string(), s);
            assert_eq!(s.parse::<Channel>().unwrap(), c);
            assert_eq!(Channel::new(s).unwrap(), c);
            assert_eq!(Channel::try_from(s.to_owned()).unwrap(), c);
        }
    }

    #[test]
    fn a_clone_shares_the_name() {
        let c = ch("team.research.results");
        let copy = c.clone();
        assert!(std::ptr::eq(c.as_str(), copy.as_str()));
        assert_eq!(copy, c);
    }

    #[test]
    fn accepts_patterns() {
        for s in ["a", "*", ">", "a.*", "a.>", "*.b", "*.*.>", "a.*.c.>"] {
            assert_eq!(pat(s).as_str(), s);
            assert_eq!(ChannelPattern::try_from(s.to_owned()).unwrap().as_str(), s);
        }
    }

    #[test]
    fn tokens_split_on_dots() {
        assert_eq!(ch("a.b.c").tokens().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(pat("a.*.>").tokens().collect::<Vec<_>>(), ["a", "*", ">"]);
        assert_eq!(ch("a.b.c").tokens().next_back(), Some("c"));
    }

    #[test]
    fn system_channels() {
        assert!(ch("_INBOX.x").is_system());
        assert!(ch("_x").is_system());
        assert!(!ch("inbox._x").is_system());
        assert!(!ch("a").is_system());
    }

    #[test]
    fn literal_patterns() {
        assert!(pat("a.b").is_literal());
        assert!(!pat("a.*").is_literal());
        assert!(!pat(">").is_literal());
        assert!(ChannelPattern::from(ch("a.b")).is_literal());
        assert_eq!(ChannelPattern::from(ch("a.b")), pat("a.b"));
    }

    #[test]
    fn accepts_limits() {
        let longest = "a".repeat(MAX_CHANNEL_LEN);
        assert!(Channel::parse(&longest).is_ok());
        let most_tokens = vec!["a"; MAX_TOKENS].join(".");
        assert!(Channel::parse(&most_tokens).is_ok());
    }

    // --- rejected, one rule each ---

    #[test]
    fn rejects_empty() {
        assert_eq!(channel_err(""), ChannelError::Empty);
        assert_eq!(pattern_err(""), ChannelError::Empty);
    }

    #[test]
    fn rejects_too_long() {
        let s = "a".repeat(MAX_CHANNEL_LEN + 1);
        let expected = ChannelError::TooLong {
            len: MAX_CHANNEL_LEN + 1,
            max: MAX_CHANNEL_LEN,
        };
        assert_eq!(channel_err(&s), expected);
        assert_eq!(pattern_err(&s), expected);
    }

    #[test]
    fn rejects_too_many_tokens() {
        let s = vec!["a"; MAX_TOKENS + 1].join(".");
        let expected = ChannelError::TooManyTokens {
            count: MAX_TOKENS + 1,
            max: MAX_TOKENS,
        };
        assert_eq!(channel_err(&s), expected);
        assert_eq!(pattern_err(&s), expected);
    }

    #[test]
    fn rejects_empty_token() {
        for s in [".", ".a", "a.", "a..b"] {
            assert_eq!(channel_err(s), ChannelError::EmptyToken, "{s}");
            assert_eq!(pattern_err(s), ChannelError::EmptyToken, "{s}");
        }
    }

    #[test]
    fn rejects_invalid_char() {
        for (s, c) in [
            ("a b", ' '),
            ("a/b", '/'),
            ("$SYS.x", '$'),
            ("a.é", 'é'),
            ("a\tb", '\t'),
        ] {
            assert_eq!(channel_err(s), ChannelError::InvalidChar { ch: c }, "{s}");
            assert_eq!(pattern_err(s), ChannelError::InvalidChar { ch: c }, "{s}");
        }
    }

    #[test]
    fn rejects_wildcard_in_channel() {
        for s in ["*", ">", "a.*", "a.>", "*.b"] {
            assert_eq!(channel_err(s), ChannelError::WildcardInChannel, "{s}");
        }
    }

    #[test]
    fn rejects_misplaced_full_wildcard() {
        for s in [">.a", "a.>.b", ">.>"] {
            assert_eq!(pattern_err(s), ChannelError::MisplacedFullWildcard, "{s}");
        }
    }

    #[test]
    fn rejects_partial_wildcard_token() {
        for s in ["a*", "a.b*", "*a", "a>", "a.>b", "**", ">>", "*>"] {
            assert_eq!(pattern_err(s), ChannelError::PartialWildcardToken, "{s}");
            assert_eq!(channel_err(s), ChannelError::PartialWildcardToken, "{s}");
        }
    }

    #[test]
    fn error_messages_escape_input() {
        assert_eq!(
            channel_err("a\nb").to_string(),
            "channel contains `\\n`; only letters, digits, `_`, `:` and `-` are allowed"
        );
    }

    // --- matching ---

    #[test]
    fn wildcard_matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "b", false),
            ("a", "A", false),
            ("a", "a.b", false),
            ("a.b", "a", false),
            ("a.b", "a.b", true),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("a.*", "b.b", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("a.>", "b.c", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.b", "a.b", true),
            ("*.b", "x.b", true),
            ("*.b", "a.c", false),
            ("*.b", "b", false),
            ("*.b", "a.b.c", false),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
            ("*.>", "a", false),
            ("*.>", "a.b", true),
            ("*.>", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*.>", "a.b.c.d", true),
            ("a.*.>", "a.b", false),
            ("ab.>", "a.b", false),
            ("a.b", "ab", false),
        ];
        for &(p, c, expected) in table {
            assert_eq!(pat(p).matches(&ch(c)), expected, "`{p}` vs `{c}`");
            assert_eq!(pat(p).routes(&ch(c)), expected, "`{p}` vs `{c}`");
        }
    }

    /// A pattern beginning with a wildcard matches system channels but is not routed them.
    #[test]
    fn a_wildcard_first_pattern_is_routed_no_system_channel() {
        for (p, c, routes) in [
            (">", "_direct.shop.alice", false),
            ("*.>", "_reply.shop.alice.r1", false),
            ("*.shop.alice", "_direct.shop.alice", false),
            ("_direct.>", "_direct.shop.alice", true),
            ("_reply.shop.alice.>", "_reply.shop.alice.r1", true),
            ("_direct.shop.alice", "_direct.shop.alice", true),
            (">", "orders.eu", true),
        ] {
            assert!(pat(p).matches(&ch(c)), "`{p}` vs `{c}`");
            assert_eq!(pat(p).routes(&ch(c)), routes, "`{p}` vs `{c}`");
        }
    }

    /// A shared name is checked as `parse` checks it, and kept, not copied.
    #[test]
    fn a_shared_name_is_checked_and_kept() {
        let name: Arc<str> = Arc::from("_reply.shop.alice.r1");
        let channel = Channel::from_shared(name.clone()).unwrap();
        assert!(Arc::ptr_eq(&channel.to_shared(), &name));
        assert_eq!(channel, Channel::parse("_reply.shop.alice.r1").unwrap());
        for bad in ["", "a..b", "a.*", "a.>", "a b", "é"] {
            assert_eq!(
                Channel::from_shared(Arc::from(bad)).unwrap_err(),
                Channel::parse(bad).unwrap_err(),
                "{bad:?}"
            );
        }
    }

    /// The byte table says what the character checks say, for every byte, and the one-pass
    /// check agrees with the token-by-token one on a name holding any ASCII character.
    #[test]
    fn every_byte_is_classed_as_the_character_checks_class_it() {
        for byte in 0..=u8::MAX {
            let expected = if byte == b'.' {
                SEPARATOR
            } else if is_token_char(char::from(byte)) {
                TOKEN_CHAR
            } else {
                OTHER
            };
            assert_eq!(BYTE_CLASS[usize::from(byte)], expected, "byte {byte:#04x}");
        }
        for ch in (0..=0x7f_u8).map(char::from) {
            let name = format!("a{ch}b");
            assert_eq!(
                is_plain_literal(&name),
                validate_tokens(&name, Wildcards::Reject) == Ok(true),
                "{name:?}"
            );
        }
    }

    // --- properties ---

    fn channel_string() -> impl Strategy<Value = String> {
        proptest::collection::vec("[A-Za-z0-9_:-]{1,12}", 1..=MAX_TOKENS)
            .prop_map(|tokens| tokens.join("."))
    }

    proptest! {
        #[test]
        fn the_one_pass_check_accepts_exactly_the_plain_literal_names(
            s in "[a._*>:é -]{1,12}",
            near_limit in proptest::bool::ANY,
        ) {
            // Also names at and over the token limit.
            let s = if near_limit { format!("{}{s}", "t.".repeat(MAX_TOKENS - 2)) } else { s };
            prop_assert_eq!(
                is_plain_literal(&s),
                validate_tokens(&s, Wildcards::Reject) == Ok(true)
            );
            prop_assert_eq!(
                is_plain_literal(&s),
                validate_tokens(&s, Wildcards::Allow) == Ok(true)
            );
        }

        #[test]
        fn channel_round_trip(s in channel_string()) {
            let c = Channel::parse(&s).unwrap();
            prop_assert_eq!(c.as_str(), s.as_str());
            prop_assert_eq!(Channel::parse(&c.to_string()).unwrap(), c);
        }

        #[test]
        fn literal_pattern_matches_exactly_its_channel(a in channel_string(), b in channel_string()) {
            let (a, b) = (Channel::parse(&a).unwrap(), Channel::parse(&b).unwrap());
            let p = ChannelPattern::from(a.clone());
            prop_assert!(p.matches(&a));
            prop_assert_eq!(p.matches(&b), a == b);
            let parsed = ChannelPattern::parse(a.as_str()).unwrap();
            prop_assert!(parsed.is_literal());
            prop_assert_eq!(parsed.matches(&b), a == b);
        }

        #[test]
        fn wildcards_match_by_token_count(s in channel_string()) {
            let c = Channel::parse(&s).unwrap();
            let n = c.tokens().count();
            prop_assert!(ChannelPattern::parse(">").unwrap().matches(&c));
            let stars = vec!["*"; n].join(".");
            prop_assert!(ChannelPattern::parse(&stars).unwrap().matches(&c));
            if n < MAX_TOKENS {
                let more = format!("{stars}.*");
                prop_assert!(!ChannelPattern::parse(&more).unwrap().matches(&c));
                let tail = format!("{s}.>");
                prop_assert!(!ChannelPattern::parse(&tail).unwrap().matches(&c));
            }
            let first = c.tokens().next().unwrap();
            if n > 1 {
                let head = format!("{first}.>");
                prop_assert!(ChannelPattern::parse(&head).unwrap().matches(&c));
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,64}") {
            let _ = Channel::parse(&s);
            let _ = ChannelPattern::parse(&s);
        }
    }
}
