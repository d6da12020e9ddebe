//! SPIFFE IDs and the Entente principals built on them.
//!
//! A [`SpiffeId`] follows the [SPIFFE ID standard]: the scheme is exactly `spiffe://`
//! (lowercase), the trust domain is 1 to 255 bytes of `[a-z0-9._-]` (uppercase is rejected, not
//! folded) with no port and no user info, and the optional path is a sequence of `/`-separated
//! segments, each non-empty, not `.` or `..`, and made of `[a-zA-Z0-9._-]`. There is no trailing
//! slash, no query, no fragment and no percent-encoding, and the whole ID is at most 2048 bytes.
//! Since every accepted ID is already in its only valid form, parsing never normalizes: the string
//! you parse is the string you get back.
//!
//! Entente principals narrow this down:
//!
//! - an [`AgentId`] is `spiffe://<trust domain>/agent/<segment>/<name>`;
//! - a [`HumanId`] is `spiffe://<trust domain>/human/<name>`.
//!
//! Entente is stricter than SPIFFE for the segment and the name: each is 1 to 64 bytes of
//! `[a-zA-Z0-9_-]`. Dots are excluded so that a segment or a name can be embedded as a single token
//! in a [`Channel`](crate::Channel) name.
//!
//! [SPIFFE ID standard]: https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest accepted SPIFFE ID, in bytes (SPIFFE ID standard, section 2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// Longest accepted trust domain, in bytes (SPIFFE ID standard, section 2.3).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Longest accepted agent segment, agent name or human name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A SPIFFE trust domain such as `example.org`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

/// A validated SPIFFE ID such as `spiffe://example.org/payments/web`.
///
/// `Display` prints the ID exactly as parsed, which is its canonical form. Shared rather than
/// owned, as [`Channel`](crate::Channel) is: a clone counts a reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: Arc<str>,
    /// Byte offset where the path starts (equal to `id.len()` when there is no path).
    path_start: usize,
}

/// An agent's identity: `spiffe://<trust domain>/agent/<segment>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentId(SpiffeId);

/// A human's identity: `spiffe://<trust domain>/human/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HumanId(SpiffeId);

/// Anyone who can hold an Entente identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Principal {
    /// An AI agent.
    Agent(AgentId),
    /// A human.
    Human(HumanId),
}

/// Which part of an agent or human ID an [`IdError::InvalidName`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NamePart {
    /// The `<segment>` of `/agent/<segment>/<name>`.
    AgentSegment,
    /// The `<name>` of `/agent/<segment>/<name>`.
    AgentName,
    /// The `<name>` of `/human/<name>`.
    HumanName,
}

/// Why a string is not a valid SPIFFE ID, trust domain, or Entente principal.
///
/// Messages never echo more than a short, escaped prefix of the input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// The input is empty.
    #[error("spiffe id is empty")]
    Empty,
    /// The input is longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("spiffe id is {len} bytes, longer than the maximum of {max}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
        /// The maximum allowed length.
        max: usize,
    },
    /// The input does not look like a URI at all.
    #[error("spiffe id does not start with `spiffe://`")]
    MissingScheme,
    /// The input is a URI with a scheme other than exactly `spiffe`.
    #[error("spiffe id scheme must be exactly `spiffe://` (lowercase)")]
    WrongScheme,
    /// The trust domain is empty.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {len} bytes, longer than the maximum of {max}")]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
        /// The maximum allowed length.
        max: usize,
    },
    /// The trust domain contains a character outside `[a-z0-9._-]`.
    #[error(
        "trust domain contains `{}`; only lowercase letters, digits, `.`, `-` and `_` are allowed",
        .ch.escape_debug()
    )]
    InvalidTrustDomainChar {
        /// The first offending character.
        ch: char,
    },
    /// The authority has a port (`:`).
    #[error("trust domain must not have a port (`:`)")]
    HasPort,
    /// The authority has user info (`@`).
    #[error("trust domain must not have user info (`@`)")]
    HasUserInfo,
    /// The ID has a query (`?`).
    #[error("spiffe id must not have a query (`?`)")]
    HasQuery,
    /// The ID has a fragment (`#`).
    #[error("spiffe id must not have a fragment (`#`)")]
    HasFragment,
    /// The path has an empty segment (`//`).
    #[error("spiffe id path has an empty segment (`//`)")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("spiffe id path has a `.` or `..` segment")]
    DotSegment,
    /// The path contains a character outside `[a-zA-Z0-9._-]` (this includes `%`).
    #[error(
        "spiffe id path contains `{}`; only letters, digits, `.`, `-` and `_` are allowed",
        .ch.escape_debug()
    )]
    InvalidPathChar {
        /// The first offending character.
        ch: char,
    },
    /// The path ends with `/`.
    #[error("spiffe id path ends with `/`")]
    TrailingSlash,
    /// The ID is valid but its path is not `/agent/<segment>/<name>`.
    #[error("spiffe id is not an agent id (`spiffe://<trust domain>/agent/<segment>/<name>`)")]
    NotAnAgent,
    /// The ID is valid but its path is not `/human/<name>`.
    #[error("spiffe id is not a human id (`spiffe://<trust domain>/human/<name>`)")]
    NotAHuman,
    /// The ID is valid but is neither an agent nor a human ID.
    #[error("spiffe id is neither an agent id nor a human id")]
    NotAPrincipal,
    /// An agent segment, agent name or human name breaks Entente's stricter naming rule.
    #[error("invalid {part} `{value}`: must be 1 to 64 bytes of letters, digits, `-` or `_`")]
    InvalidName {
        /// Which part of the ID is wrong.
        part: NamePart,
        /// The offending value, escaped and truncated.
        value: String,
    },
}

// === impl TrustDomain ===

impl TrustDomain {
    /// Validates a bare trust domain such as `example.org` (no scheme, no path).
    pub fn new(s: &str) -> Result<Self, IdError> {
        validate_trust_domain(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The trust domain as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl SpiffeId ===

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let path_start = validate_spiffe_id(s)?;
        Ok(Self {
            id: Arc::from(s),
            path_start,
        })
    }

    /// The whole ID, e.g. `spiffe://example.org/payments/web`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.id
            .get(SCHEME.len()..self.path_start)
            .unwrap_or_default()
    }

    /// The path: either empty or `/`-prefixed, e.g. `/payments/web`.
    pub fn path(&self) -> &str {
        self.id.get(self.path_start..).unwrap_or_default()
    }

    /// The path segments, e.g. `payments` then `web`; nothing when the path is empty.
    pub fn segments(&self) -> impl Iterator<Item = &str> + Clone {
        self.path().split('/').skip(1)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = IdError;

    fn try_from(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SpiffeId {
    type Error = IdError;

    fn try_from(id: String) -> Result<Self, IdError> {
        let path_start = validate_spiffe_id(&id)?;
        Ok(Self {
            id: Arc::from(id),
            path_start,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&self.id).finish()
    }
}

// === impl AgentId ===

impl AgentId {
    /// Builds `spiffe://<td>/agent/<segment>/<name>`.
    pub fn new(td: &TrustDomain, segment: &str, name: &str) -> Result<Self, IdError> {
        validate_name(NamePart::AgentSegment, segment)?;
        validate_name(NamePart::AgentName, name)?;
        SpiffeId::try_from(format!("{SCHEME}{td}/{AGENT}/{segment}/{name}")).map(Self)
    }

    /// Parses an agent ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Self::try_from(SpiffeId::parse(s)?)
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.0.trust_domain()
    }

    /// The `<segment>` of `/agent/<segment>/<name>`.
    pub fn segment(&self) -> &str {
        self.0.segments().nth(1).unwrap_or_default()
    }

    /// The `<name>` of `/agent/<segment>/<name>`.
    pub fn name(&self) -> &str {
        self.0.segments().nth(2).unwrap_or_default()
    }

    /// The underlying SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.0
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<SpiffeId> for AgentId {
    type Error = IdError;

    fn try_from(id: SpiffeId) -> Result<Self, IdError> {
        {
            let mut segments = id.segments();
            let (Some(AGENT), Some(segment), Some(name), None) = (
                segments.next(),
                segments.next(),
                segments.next(),
                segments.next(),
            ) else {
                return Err(IdError::NotAnAgent);
            };
            validate_name(NamePart::AgentSegment, segment)?;
            validate_name(NamePart::AgentName, name)?;
        }
        Ok(Self(id))
    }
}

impl FromStr for AgentId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

// === impl HumanId ===

impl HumanId {
    /// Builds `spiffe://<td>/human/<name>`.
    pub fn new(td: &TrustDomain, name: &str) -> Result<Self, IdError> {
        validate_name(NamePart::HumanName, name)?;
        SpiffeId::try_from(format!("{SCHEME}{td}/{HUMAN}/{name}")).map(Self)
    }

    /// Parses a human ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Self::try_from(SpiffeId::parse(s)?)
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.0.trust_domain()
    }

    /// The `<name>` of `/human/<name>`.
    pub fn name(&self) -> &str {
        self.0.segments().nth(1).unwrap_or_default()
    }

    /// The underlying SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.0
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl TryFrom<SpiffeId> for HumanId {
    type Error = IdError;

    fn try_from(id: SpiffeId) -> Result<Self, IdError> {
        {
            let mut segments = id.segments();
            let (Some(HUMAN), Some(name), None) =
                (segments.next(), segments.next(), segments.next())
            else {
                return Err(IdError::NotAHuman);
            };
            validate_name(NamePart::HumanName, name)?;
        }
        Ok(Self(id))
    }
}

impl FromStr for HumanId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for HumanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

// === impl Principal ===

impl Principal {
    /// Parses an agent or human ID, telling them apart by the first path segment.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Self::try_from(SpiffeId::parse(s)?)
    }

    /// The underlying SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        match self {
            Self::Agent(agent) => agent.spiffe_id(),
            Self::Human(human) => human.spiffe_id(),
        }
    }

    /// The trust domain, e.g. `example.org`.
    pub fn trust_domain(&self) -> &str {
        self.spiffe_id().trust_domain()
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        self.spiffe_id().as_str()
    }

    /// The group whose shared bounds this principal counts against: an agent's segment,
    /// `(humans)` for every human, which no segment can be named (a segment's principals
    /// together hold at most a share of what a hub keeps for everyone).
    pub fn share_group(&self) -> &str {
        match self {
            Self::Agent(agent) => agent.segment(),
            Self::Human(_) => "(humans)",
        }
    }
}

impl TryFrom<SpiffeId> for Principal {
    type Error = IdError;

    fn try_from(id: SpiffeId) -> Result<Self, IdError> {
        let kind = id.segments().next();
        if kind == Some(AGENT) {
            AgentId::try_from(id).map(Self::Agent)
        } else if kind == Some(HUMAN) {
            HumanId::try_from(id).map(Self::Human)
        } else {
            Err(IdError::NotAPrincipal)
        }
    }
}

impl From<AgentId> for Principal {
    fn from(agent: AgentId) -> Self {
        Self::Agent(agent)
    }
}

impl From<HumanId> for Principal {
    fn from(human: HumanId) -> Self {
        Self::Human(human)
    }
}

impl FromStr for Principal {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.spiffe_id(), f)
    }
}

// === impl NamePart ===

impl fmt::Display for NamePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AgentSegment => "agent segment",
            Self::AgentName => "agent name",
            Self::HumanName => "human name",
        })
    }
}

// === helpers ===

const SCHEME: &str = "spiffe://";
const AGENT: &str = "agent";
const HUMAN: &str = "human";

/// How many characters of user input an error message may echo.
const ECHO_MAX_CHARS: usize = 64;

/// Validates a whole SPIFFE ID and returns the byte offset where its path starts.
fn validate_spiffe_id(s: &str) -> Result<usize, IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_SPIFFE_ID_LEN {
        return Err(IdError::TooLong {
            len: s.len(),
            max: MAX_SPIFFE_ID_LEN,
        });
    }
    let Some(rest) = s.strip_prefix(SCHEME) else {
        return Err(scheme_error(s));
    };
    if rest.contains('?') {
        return Err(IdError::HasQuery);
    }
    if rest.contains('#') {
        return Err(IdError::HasFragment);
    }
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    validate_trust_domain(authority)?;
    validate_path(path)?;
    Ok(SCHEME.len() + authority.len())
}

/// Tells a URI with the wrong scheme apart from something that is not a URI.
fn scheme_error(s: &str) -> IdError {
    let looks_like_uri = s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    if looks_like_uri {
        IdError::WrongScheme
    } else {
        IdError::MissingScheme
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if td.contains('@') {
        return Err(IdError::HasUserInfo);
    }
    if td.contains(':') {
        return Err(IdError::HasPort);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong {
            len: td.len(),
            max: MAX_TRUST_DOMAIN_LEN,
        });
    }
    match td.chars().find(|&ch| !is_trust_domain_char(ch)) {
        Some(ch) => Err(IdError::InvalidTrustDomainChar { ch }),
        None => Ok(()),
    }
}

/// Validates a path that is either empty or starts with `/`.
fn validate_path(path: &str) -> Result<(), IdError> {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                IdError::TrailingSlash
            } else {
                IdError::EmptySegment
            });
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment);
        }
        if let Some(ch) = segment.chars().find(|&ch| !is_path_char(ch)) {
            return Err(IdError::InvalidPathChar { ch });
        }
    }
    Ok(())
}

fn validate_name(part: NamePart, value: &str) -> Result<(), IdError> {
    let valid = (1..=MAX_NAME_LEN).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(IdError::InvalidName {
            part,
            value: bounded_echo(value),
        })
    }
}

fn is_trust_domain_char(ch: char) -> bool {
    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
}

fn is_path_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')
}

/// Escapes user input and cuts it to [`ECHO_MAX_CHARS`] characters for an error message.
fn bounded_echo(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(ECHO_MAX_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if s.chars().nth(ECHO_MAX_CHARS).is_some() {
        out.push('…');
    }
    out
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

    fn err(s: &str) -> IdError {
        SpiffeId::parse(s).unwrap_err()
    }

    fn td(s: &str) -> TrustDomain {
        TrustDomain::new(s).unwrap()
    }

    // --- accepted SPIFFE IDs ---

    #[test]
    fn accepts_spiffe_standard_examples() {
        for s in [
            "spiffe://trust-domain-name/path",
            "spiffe://staging.example.com/payments/mysql",
            "spiffe://staging.example.com/payments/web-fe",
            "spiffe://k8s-west.example.com/ns/staging/sa/default",
            "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
        ] {
            let id = SpiffeId::parse(s).unwrap();
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn a_clone_shares_the_id() {
        let agent = Principal::parse("spiffe://example.org/agent/shop/alice").unwrap();
        let copy = agent.clone();
        assert!(std::ptr::eq(agent.as_str(), copy.as_str()));
        assert_eq!(copy, agent);
    }

    #[test]
    fn splits_trust_domain_path_and_segments() {
        let id = SpiffeId::parse("spiffe://k8s-west.example.com/ns/staging/sa/default").unwrap();
        assert_eq!(id.trust_domain(), "k8s-west.example.com");
        assert_eq!(id.path(), "/ns/staging/sa/default");
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "staging", "sa", "default"]
        );
    }

    #[test]
    fn accepts_trust_domain_only() {
        let id = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "");
        assert_eq!(id.segments().count(), 0);
    }

    #[test]
    fn accepts_every_allowed_character() {
        let id = SpiffeId::parse("spiffe://az09.-_/azAZ09.-_/..a/.b/a..").unwrap();
        assert_eq!(id.trust_domain(), "az09.-_");
        assert_eq!(id.segments().count(), 4);
    }

    #[test]
    fn accepts_maximum_lengths() {
        let domain = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(SpiffeId::parse(&format!("spiffe://{domain}")).is_ok());
        let path = "b".repeat(MAX_SPIFFE_ID_LEN - "spiffe://a/".len());
        let s = format!("spiffe://a/{path}");
        assert_eq!(s.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&s).is_ok());
    }

    #[test]
    fn conversions_agree() {
        let s = "spiffe://example.org/a/b";
        let parsed = SpiffeId::parse(s).unwrap();
        assert_eq!(s.parse::<SpiffeId>().unwrap(), parsed);
        assert_eq!(SpiffeId::try_from(s).unwrap(), parsed);
        assert_eq!(SpiffeId::try_from(s.to_owned()).unwrap(), parsed);
        assert_eq!(
            format!("{parsed:?}"),
            "SpiffeId(\"spiffe://example.org/a/b\")"
        );
    }

    // --- rejected SPIFFE IDs, one rule each ---

    #[test]
    fn rejects_empty() {
        assert_eq!(err(""), IdError::Empty);
    }

    #[test]
    fn rejects_too_long() {
        let s = format!("spiffe://a/{}", "b".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(
            err(&s),
            IdError::TooLong {
                len: s.len(),
                max: MAX_SPIFFE_ID_LEN
            }
        );
    }

    #[test]
    fn rejects_missing_scheme() {
        assert_eq!(err("example.org/path"), IdError::MissingScheme);
        assert_eq!(err("spiffe:/example.org"), IdError::MissingScheme);
        assert_eq!(err("://example.org"), IdError::MissingScheme);
    }

    #[test]
    fn rejects_wrong_scheme() {
        assert_eq!(err("https://example.org/path"), IdError::WrongScheme);
        assert_eq!(err("SPIFFE://example.org/path"), IdError::WrongScheme);
        assert_eq!(err("Spiffe://example.org"), IdError::WrongScheme);
    }

    #[test]
    fn rejects_empty_trust_domain() {
        assert_eq!(err("spiffe://"), IdError::EmptyTrustDomain);
        assert_eq!(err("spiffe:///path"), IdError::EmptyTrustDomain);
    }

    #[test]
    fn rejects_trust_domain_too_long() {
        let s = format!("spiffe://{}/path", "a".repeat(MAX_TRUST_DOMAIN_LEN + 1));
        assert_eq!(
            err(&s),
            IdError::TrustDomainTooLong {
                len: MAX_TRUST_DOMAIN_LEN + 1,
                max: MAX_TRUST_DOMAIN_LEN
            }
        );
    }

    #[test]
    fn rejects_uppercase_trust_domain() {
        assert_eq!(
            err("spiffe://Example.org/path"),
            IdError::InvalidTrustDomainChar { ch: 'E' }
        );
    }

    #[test]
    fn rejects_invalid_trust_domain_char() {
        for (s, ch) in [
            ("spiffe://exa mple.org", ' '),
            ("spiffe://exa%41mple.org", '%'),
            ("spiffe://exämple.org", 'ä'),
            ("spiffe://a+b", '+'),
        ] {
            assert_eq!(err(s), IdError::InvalidTrustDomainChar { ch }, "{s}");
        }
    }

    #[test]
    fn rejects_port() {
        assert_eq!(err("spiffe://example.org:8080/path"), IdError::HasPort);
        assert_eq!(err("spiffe://example.org:/path"), IdError::HasPort);
    }

    #[test]
    fn rejects_user_info() {
        assert_eq!(err("spiffe://user@example.org/path"), IdError::HasUserInfo);
        assert_eq!(
            err("spiffe://user:password@example.org/path"),
            IdError::HasUserInfo
        );
    }

    #[test]
    fn rejects_query() {
        assert_eq!(err("spiffe://example.org/path?a=b"), IdError::HasQuery);
        assert_eq!(err("spiffe://example.org?a=b"), IdError::HasQuery);
    }

    #[test]
    fn rejects_fragment() {
        assert_eq!(err("spiffe://example.org/path#frag"), IdError::HasFragment);
        assert_eq!(err("spiffe://example.org#frag"), IdError::HasFragment);
    }

    #[test]
    fn rejects_empty_segment() {
        assert_eq!(err("spiffe://example.org//path"), IdError::EmptySegment);
        assert_eq!(err("spiffe://example.org/a//b"), IdError::EmptySegment);
    }

    #[test]
    fn rejects_dot_segments() {
        assert_eq!(err("spiffe://example.org/./path"), IdError::DotSegment);
        assert_eq!(err("spiffe://example.org/a/../b"), IdError::DotSegment);
        assert_eq!(err("spiffe://example.org/a/.."), IdError::DotSegment);
    }

    #[test]
    fn rejects_invalid_path_char() {
        for (s, ch) in [
            ("spiffe://example.org/a b", ' '),
            ("spiffe://example.org/a*b", '*'),
            ("spiffe://example.org/ü", 'ü'),
            ("spiffe://example.org/a\nb", '\n'),
            ("spiffe://example.org/a@b", '@'),
            ("spiffe://example.org/a:b", ':'),
        ] {
            assert_eq!(err(s), IdError::InvalidPathChar { ch }, "{s:?}");
        }
    }

    #[test]
    fn rejects_percent_encoding() {
        assert_eq!(
            err("spiffe://example.org/%41"),
            IdError::InvalidPathChar { ch: '%' }
        );
    }

    #[test]
    fn rejects_trailing_slash() {
        assert_eq!(err("spiffe://example.org/"), IdError::TrailingSlash);
        assert_eq!(err("spiffe://example.org/path/"), IdError::TrailingSlash);
    }

    // --- trust domains ---

    #[test]
    fn trust_domain_accepts_and_displays() {
        let domain = td("example.org");
        assert_eq!(domain.as_str(), "example.org");
        assert_eq!(domain.to_string(), "example.org");
        assert_eq!("example.org".parse::<TrustDomain>().unwrap(), domain);
    }

    #[test]
    fn trust_domain_rejections() {
        assert_eq!(TrustDomain::new(""), Err(IdError::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::new("Example.org"),
            Err(IdError::InvalidTrustDomainChar { ch: 'E' })
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org"),
            Err(IdError::HasPort)
        );
        assert_eq!(
            TrustDomain::new("example.org/path"),
            Err(IdError::InvalidTrustDomainChar { ch: '/' })
        );
        assert_eq!(TrustDomain::new("a@b"), Err(IdError::HasUserInfo));
    }

    // --- agents ---

    #[test]
    fn agent_new_and_accessors() {
        let agent = AgentId::new(&td("example.org"), "research", "summarizer-2").unwrap();
        assert_eq!(
            agent.as_str(),
            "spiffe://example.org/agent/research/summarizer-2"
        );
        assert_eq!(agent.trust_domain(), "example.org");
        assert_eq!(agent.segment(), "research");
        assert_eq!(agent.name(), "summarizer-2");
        assert_eq!(agent.spiffe_id().path(), "/agent/research/summarizer-2");
        assert_eq!(AgentId::parse(agent.as_str()).unwrap(), agent);
        assert_eq!(agent.to_string().parse::<AgentId>().unwrap(), agent);
    }

    #[test]
    fn agent_rejects_other_shapes() {
        for s in [
            "spiffe://example.org",
            "spiffe://example.org/agent",
            "spiffe://example.org/agent/research",
            "spiffe://example.org/agent/research/bot/extra",
            "spiffe://example.org/human/alice",
            "spiffe://example.org/Agent/research/bot",
        ] {
            assert_eq!(AgentId::parse(s), Err(IdError::NotAnAgent), "{s}");
        }
    }

    #[test]
    fn agent_rejects_invalid_spiffe_id() {
        assert_eq!(
            AgentId::parse("spiffe://example.org/agent//bot"),
            Err(IdError::EmptySegment)
        );
    }

    #[test]
    fn agent_rejects_dotted_segment_and_name() {
        assert_eq!(
            AgentId::parse("spiffe://example.org/agent/re.search/bot"),
            Err(IdError::InvalidName {
                part: NamePart::AgentSegment,
                value: "re.search".into()
            })
        );
        assert_eq!(
            AgentId::parse("spiffe://example.org/agent/research/bot.1"),
            Err(IdError::InvalidName {
                part: NamePart::AgentName,
                value: "bot.1".into()
            })
        );
    }

    #[test]
    fn agent_new_rejects_empty_names() {
        let domain = td("example.org");
        assert_eq!(
            AgentId::new(&domain, "", "bot"),
            Err(IdError::InvalidName {
                part: NamePart::AgentSegment,
                value: String::new()
            })
        );
        assert_eq!(
            AgentId::new(&domain, "research", ""),
            Err(IdError::InvalidName {
                part: NamePart::AgentName,
                value: String::new()
            })
        );
    }

    #[test]
    fn agent_new_rejects_bad_characters() {
        let domain = td("example.org");
        for name in ["a/b", "a b", "a.b", "a*b", "a>b", "ä"] {
            assert!(
                matches!(
                    AgentId::new(&domain, "research", name),
                    Err(IdError::InvalidName {
                        part: NamePart::AgentName,
                        ..
                    })
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn agent_name_length_limit() {
        let domain = td("example.org");
        let longest = "n".repeat(MAX_NAME_LEN);
        assert!(AgentId::new(&domain, &longest, &longest).is_ok());
        let too_long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            AgentId::new(&domain, &too_long, "bot"),
            Err(IdError::InvalidName {
                part: NamePart::AgentSegment,
                ..
            })
        ));
    }

    #[test]
    fn invalid_name_echo_is_bounded_and_escaped() {
        let long = "x".repeat(10_000);
        let Err(IdError::InvalidName { value, .. }) = AgentId::new(&td("a"), "s", &long) else {
            panic!("expected InvalidName");
        };
        assert_eq!(value, format!("{}…", "x".repeat(ECHO_MAX_CHARS)));

        let err = AgentId::new(&td("a"), "s", "a\nb").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid agent name `a\\nb`: must be 1 to 64 bytes of letters, digits, `-` or `_`"
        );
    }

    // --- humans ---

    #[test]
    fn human_new_and_accessors() {
        let human = HumanId::new(&td("example.org"), "alice_1").unwrap();
        assert_eq!(human.as_str(), "spiffe://example.org/human/alice_1");
        assert_eq!(human.trust_domain(), "example.org");
        assert_eq!(human.name(), "alice_1");
        assert_eq!(human.spiffe_id().path(), "/human/alice_1");
        assert_eq!(HumanId::parse(human.as_str()).unwrap(), human);
        assert_eq!(human.to_string().parse::<HumanId>().unwrap(), human);
    }

    #[test]
    fn human_rejects_other_shapes() {
        for s in [
            "spiffe://example.org/human",
            "spiffe://example.org/human/alice/extra",
            "spiffe://example.org/agent/research/bot",
        ] {
            assert_eq!(HumanId::parse(s), Err(IdError::NotAHuman), "{s}");
        }
    }

    #[test]
    fn human_rejects_invalid_name() {
        assert_eq!(
            HumanId::parse("spiffe://example.org/human/alice.smith"),
            Err(IdError::InvalidName {
                part: NamePart::HumanName,
                value: "alice.smith".into()
            })
        );
        assert!(matches!(
            HumanId::new(&td("example.org"), ""),
            Err(IdError::InvalidName {
                part: NamePart::HumanName,
                ..
            })
        ));
    }

    // --- principals ---

    #[test]
    fn principal_dispatches_on_first_segment() {
        let agent = Principal::parse("spiffe://example.org/agent/research/bot").unwrap();
        assert!(matches!(agent, Principal::Agent(ref a) if a.name() == "bot"));
        assert_eq!(agent.trust_domain(), "example.org");
        let human = Principal::parse("spiffe://example.org/human/alice").unwrap();
        assert!(matches!(human, Principal::Human(ref h) if h.name() == "alice"));
        assert_eq!(human.as_str(), "spiffe://example.org/human/alice");
        assert_eq!(human.to_string().parse::<Principal>().unwrap(), human);
    }

    #[test]
    fn principal_rejections() {
        assert_eq!(
            Principal::parse("spiffe://example.org/service/web"),
            Err(IdError::NotAPrincipal)
        );
        assert_eq!(
            Principal::parse("spiffe://example.org"),
            Err(IdError::NotAPrincipal)
        );
        assert_eq!(
            Principal::parse("spiffe://example.org/agent/bot"),
            Err(IdError::NotAnAgent)
        );
        assert_eq!(
            Principal::parse("spiffe://example.org/human/a/b"),
            Err(IdError::NotAHuman)
        );
    }

    #[test]
    fn principal_from_typed_ids() {
        let agent = AgentId::new(&td("example.org"), "s", "n").unwrap();
        let principal = Principal::from(agent.clone());
        assert_eq!(principal.spiffe_id(), agent.spiffe_id());
        let spiffe = SpiffeId::parse(agent.as_str()).unwrap();
        assert_eq!(Principal::try_from(spiffe).unwrap(), principal);
    }

    #[test]
    fn error_messages_are_lowercase() {
        for e in [
            err(""),
            err("x"),
            err("https://x"),
            err("spiffe://X"),
            err("spiffe://x/%"),
            err("spiffe://x/"),
        ] {
            let msg = e.to_string();
            assert!(msg.starts_with(|c: char| c.is_ascii_lowercase()), "{msg}");
        }
    }

    // --- properties ---

    fn spiffe_id_string() -> impl Strategy<Value = String> {
        let segment = "[a-zA-Z0-9._-]{1,20}".prop_filter("dot segment", |s| s != "." && s != "..");
        (
            "[a-z0-9._-]{1,40}",
            proptest::collection::vec(segment, 0..8),
        )
            .prop_map(|(domain, segments)| {
                let mut s = format!("spiffe://{domain}");
                for segment in segments {
                    s.push('/');
                    s.push_str(&segment);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn spiffe_id_display_parse_round_trip(s in spiffe_id_string()) {
            let id = SpiffeId::parse(&s).unwrap();
            let again = SpiffeId::parse(&id.to_string()).unwrap();
            prop_assert_eq!(&again, &id);
            prop_assert_eq!(again.as_str(), s.as_str());
            let rebuilt = format!("spiffe://{}{}", id.trust_domain(), id.path());
            prop_assert_eq!(rebuilt, s);
        }

        #[test]
        fn agent_new_parse_round_trip(
            domain in "[a-z0-9._-]{1,40}",
            segment in "[a-zA-Z0-9_-]{1,64}",
            name in "[a-zA-Z0-9_-]{1,64}",
        ) {
            let agent = AgentId::new(&td(&domain), &segment, &name).unwrap();
            let parsed = AgentId::parse(&agent.to_string()).unwrap();
            prop_assert_eq!(parsed.segment(), segment.as_str());
            prop_assert_eq!(parsed.name(), name.as_str());
            prop_assert_eq!(parsed, agent);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = SpiffeId::parse(&s);
            let _ = Principal::parse(&s);
        }
    }
}
