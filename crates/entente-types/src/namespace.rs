//! The system channels that belong to one principal: its direct channel and its reply
//! namespace (PROTOCOL.md §9).
//!
//! | principal | direct channel | reply namespace |
//! |---|---|---|
//! | agent `spiffe://TD/agent/S/N` | `_direct.S.N` | `_reply.S.N.<token>…` |
//! | human `spiffe://TD/human/N` | `_direct.human:N` | `_reply.human:N.<token>…` |
//!
//! A human's owner token `human:N` can't be confused with an agent's: agent segments and names
//! never contain `:`. The trust domain is not part of the name: a hub serves one trust domain.
//!
//! Only the owner may subscribe to these channels. Who may publish to a direct channel is the
//! hub's authorization; a reply namespace can be published to only under a reply grant, which
//! the hub issues when it routes a request carrying `reply_to`.
//!
//! ```
//! use entente_types::{namespace, Channel, Principal};
//!
//! let alice = Principal::parse("spiffe://example.org/agent/shop/alice")?;
//! assert_eq!(namespace::direct_channel(&alice).as_str(), "_direct.shop.alice");
//! let reply = namespace::reply_channel(&alice, "r1f3")?;
//! assert_eq!(reply.as_str(), "_reply.shop.alice.r1f3");
//! assert!(namespace::is_reply_channel_of(&alice, &reply));
//! assert_eq!(namespace::reply_pattern(&alice).as_str(), "_reply.shop.alice.>");
//!
//! let ops = Principal::parse("spiffe://example.org/human/ops")?;
//! assert_eq!(namespace::direct_channel(&ops).as_str(), "_direct.human:ops");
//! assert!(!namespace::is_reply_channel_of(&ops, &reply));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;

use crate::channel::{MAX_CHANNEL_LEN, is_plain_token};
use crate::{Channel, ChannelError, ChannelPattern, Principal};

/// First token of a direct channel.
pub const DIRECT_PREFIX: &str = "_direct";
/// First token of a reply namespace.
pub const REPLY_PREFIX: &str = "_reply";
/// How a human's owner token starts: `human:<name>`.
pub const HUMAN_OWNER_PREFIX: &str = "human:";

/// The principal's direct channel: `_direct.S.N`, or `_direct.human:N`.
pub fn direct_channel(principal: &Principal) -> Channel {
    with_owned_name(DIRECT_PREFIX, principal, None, Channel::from_valid)
}

/// The pattern covering the principal's reply namespace: `_reply.S.N.>`, or
/// `_reply.human:N.>`.
pub fn reply_pattern(principal: &Principal) -> ChannelPattern {
    ChannelPattern::from_valid(owned_name(REPLY_PREFIX, principal, Some(">")))
}

/// A channel of the principal's reply namespace: `_reply.S.N.<token>`. `token` must be one
/// channel token (letters, digits, `_`, `:`, `-`).
pub fn reply_channel(principal: &Principal, token: &str) -> Result<Channel, ChannelError> {
    if token.contains('.') {
        return Err(ChannelError::InvalidChar { ch: '.' });
    }
    with_owned_name(REPLY_PREFIX, principal, Some(token), Channel::parse)
}

/// A principal's reply namespace with its root's name put together once: a requester draws
/// a reply channel under it for every request, and only the token is then looked at.
///
/// ```
/// use entente_types::{namespace::{self, ReplyNamespace}, Principal};
///
/// let alice = Principal::parse("spiffe://example.org/agent/shop/alice")?;
/// let replies = ReplyNamespace::of(&alice);
/// assert_eq!(replies.channel("r1f3")?, namespace::reply_channel(&alice, "r1f3")?);
/// assert!(replies.channel("r1.f3").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyNamespace {
    /// The root and a dot: `_reply.S.N.` or `_reply.human:N.`.
    prefix: String,
}

impl ReplyNamespace {
    /// The reply namespace of `principal`.
    pub fn of(principal: &Principal) -> Self {
        Self {
            prefix: owned_name(REPLY_PREFIX, principal, Some("")),
        }
    }

    /// What [`reply_channel`] makes of this namespace's principal and `token`, the same
    /// channel or the same error.
    pub fn channel(&self, token: &str) -> Result<Channel, ChannelError> {
        let len = self.prefix.len() + token.len();
        let mut name = [0u8; MAX_CHANNEL_LEN];
        if is_plain_token(token)
            && let Some((start, end)) = name
                .get_mut(..len)
                .and_then(|whole| whole.split_at_mut_checked(self.prefix.len()))
        {
            start.copy_from_slice(self.prefix.as_bytes());
            end.copy_from_slice(token.as_bytes());
            // Both parts are ASCII: a token's characters and the prefix's (a valid name's).
            if let Some(Ok(name)) = name.get(..len).map(std::str::from_utf8) {
                return Ok(Channel::from_valid(name));
            }
        }
        // Anything else is what the whole name's checks make of it.
        if token.contains('.') {
            return Err(ChannelError::InvalidChar { ch: '.' });
        }
        Channel::parse(&format!("{}{token}", self.prefix))
    }
}

/// The root of the principal's reply namespace, `_reply.S.N` or `_reply.human:N`: not a reply
/// channel itself, but what a responder's reply sender key is scoped to (PROTOCOL.md §5.4).
pub fn reply_root(principal: &Principal) -> Channel {
    with_owned_name(REPLY_PREFIX, principal, None, Channel::from_valid)
}

/// The root of the reply namespace `channel` lies in (`_reply.S.N.t` → `_reply.S.N`,
/// `_reply.human:N.t` → `_reply.human:N`); `None` unless `channel` is a reply channel, with at
/// least one token after its owner's.
pub fn reply_root_of(channel: &Channel) -> Option<Channel> {
    reply_root_name(channel).map(Channel::from_valid)
}

/// Whether `channel` is a reply channel: in some principal's reply namespace, with at least
/// one token after its owner's (`reply_root_of(channel)` is `Some`), without building the root.
pub fn is_reply_channel(channel: &Channel) -> bool {
    reply_root_name(channel).is_some()
}

/// Whether `channel` is a reply channel under `root` (`reply_root_of(channel)` is `root`),
/// without building the root.
pub fn is_reply_channel_under(root: &Channel, channel: &Channel) -> bool {
    reply_root_name(channel) == Some(root.as_str())
}

/// The name of [`reply_root_of`]: the start of `channel`'s own name, without building the
/// root. One scan of the owner's tokens: the SDK and the hub ask this several times for each
/// reply.
pub fn reply_root_name(channel: &Channel) -> Option<&str> {
    let name = channel.as_str();
    let owner = after_prefix(name, REPLY_PREFIX)?;
    let owner_tokens = if owner.starts_with(HUMAN_OWNER_PREFIX) {
        1
    } else {
        2
    };
    // The root ends at the dot after its last owner token: a token follows it (tokens are
    // never empty).
    let (end, _) = owner.match_indices('.').nth(owner_tokens - 1)?;
    name.get(..name.len() - owner.len() + end)
}

/// What follows `prefix.` at the start of `name`, if it starts so.
fn after_prefix<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?.strip_prefix('.')
}

/// Whether `channel` is the root of some principal's reply namespace: `_reply.S.N` (two
/// owner tokens, neither starting `human:`) or `_reply.human:N`.
pub fn is_reply_root(channel: &Channel) -> bool {
    let tokens: Vec<&str> = channel.tokens().collect();
    match tokens.as_slice() {
        [REPLY_PREFIX, human] => human.starts_with(HUMAN_OWNER_PREFIX),
        [REPLY_PREFIX, segment, _name] => !segment.starts_with(HUMAN_OWNER_PREFIX),
        _ => false,
    }
}

/// Whether `channel` is the principal's direct channel.
pub fn is_direct_channel_of(principal: &Principal, channel: &Channel) -> bool {
    after_prefix(channel.as_str(), DIRECT_PREFIX)
        .is_some_and(|rest| owned_by(principal, rest, false))
}

/// Whether `channel` lies in the principal's reply namespace (at least one token after the
/// owner's).
pub fn is_reply_channel_of(principal: &Principal, channel: &Channel) -> bool {
    after_prefix(channel.as_str(), REPLY_PREFIX).is_some_and(|rest| owned_by(principal, rest, true))
}

/// Whether `pattern` stays inside the principal's own `_direct` channel (exactly) or reply
/// namespace (any pattern under it). Wildcards in the owner's tokens never qualify.
pub fn is_own_pattern(principal: &Principal, pattern: &ChannelPattern) -> bool {
    let name = pattern.as_str();
    if let Some(rest) = after_prefix(name, DIRECT_PREFIX) {
        owned_by(principal, rest, false)
    } else if let Some(rest) = after_prefix(name, REPLY_PREFIX) {
        owned_by(principal, rest, true)
    } else {
        false
    }
}

/// The segment of the agent whose direct channel `channel` is (`_direct.S.N` → `S`); `None`
/// for a human's direct channel or any other channel.
pub fn direct_segment(channel: &Channel) -> Option<&str> {
    let mut tokens = channel.tokens();
    let (Some(DIRECT_PREFIX), Some(segment), Some(_name), None) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return None;
    };
    (!segment.contains(':')).then_some(segment)
}

/// `prefix.S.N` for an agent, `prefix.human:N` for a human, then `.last` if given, in a
/// `String` of its own (a pattern keeps it).
fn owned_name(prefix: &str, principal: &Principal, last: Option<&str>) -> String {
    let mut name = String::new();
    write_owned_name(&mut name, prefix, principal, last);
    name
}

thread_local! {
    /// Where [`with_owned_name`] puts a name together: the channel made of it is then the
    /// name's only allocation.
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
}

/// `make` applied to [`owned_name`]'s name, put together in this thread's buffer (in a
/// `String` of its own while the thread is being torn down). `make` must not call this again
/// (none of its callers' functions does). A buffer grown past any channel's length (by a long
/// `last`, which then makes no channel) is not kept.
fn with_owned_name<T>(
    prefix: &str,
    principal: &Principal,
    last: Option<&str>,
    make: impl Fn(&str) -> T,
) -> T {
    NAME.try_with(|cell| {
        let mut name = cell.borrow_mut();
        name.clear();
        write_owned_name(&mut name, prefix, principal, last);
        let made = make(&name);
        if name.capacity() > MAX_CHANNEL_LEN {
            *name = String::new();
        }
        made
    })
    .unwrap_or_else(|_| make(&owned_name(prefix, principal, last)))
}

/// Appends [`owned_name`]'s name to `name`.
fn write_owned_name(name: &mut String, prefix: &str, principal: &Principal, last: Option<&str>) {
    let (first, second) = match principal {
        Principal::Agent(agent) => (agent.segment(), agent.name()),
        Principal::Human(human) => (HUMAN_OWNER_PREFIX, human.name()),
    };
    let last_len = last.map_or(0, |l| l.len() + 1);
    name.reserve(prefix.len() + first.len() + second.len() + 2 + last_len);
    name.push_str(prefix);
    name.push('.');
    name.push_str(first);
    if matches!(principal, Principal::Agent(_)) {
        name.push('.');
    }
    name.push_str(second);
    if let Some(last) = last {
        name.push('.');
        name.push_str(last);
    }
}

/// Whether `rest` (the name after the prefix and its dot) starts with the owner's tokens,
/// followed by nothing (`more` false) or by at least one token (`more` true). Compared as
/// text, token by whole token, without splitting the name.
fn owned_by(principal: &Principal, rest: &str, more: bool) -> bool {
    let after = match principal {
        Principal::Agent(agent) => {
            after_prefix(rest, agent.segment()).and_then(|r| r.strip_prefix(agent.name()))
        }
        Principal::Human(human) => rest
            .strip_prefix(HUMAN_OWNER_PREFIX)
            .and_then(|r| r.strip_prefix(human.name())),
    };
    match after {
        // The owner's last token ends the name.
        Some("") => !more,
        // It ends at a dot, and a token follows (tokens are never empty); anything else means
        // the name's token only starts like the owner's.
        Some(tail) => more && tail.starts_with('.'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn p(s: &str) -> Principal {
        Principal::parse(s).unwrap()
    }

    fn c(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    /// A reply namespace kept makes the channel, or the error, that the principal and the
    /// token make: for agents and humans, tokens of every kind, at and past the length limit.
    #[test]
    fn a_reply_namespace_makes_what_the_principal_makes() {
        for principal in [
            p("spiffe://example.org/agent/shop/alice"),
            p("spiffe://example.org/human/ops"),
        ] {
            let replies = ReplyNamespace::of(&principal);
            let room = MAX_CHANNEL_LEN - reply_root(&principal).as_str().len() - 1;
            let tokens = [
                "r1f3".to_owned(),
                "A-b_c:9".to_owned(),
                String::new(),
                "a.b".to_owned(),
                ".".to_owned(),
                "*".to_owned(),
                ">".to_owned(),
                "a b".to_owned(),
                "é".to_owned(),
                "t".repeat(room),
                "t".repeat(room + 1),
                format!("{}.", "t".repeat(room)),
            ];
            for token in &tokens {
                assert_eq!(
                    replies.channel(token),
                    reply_channel(&principal, token),
                    "{principal} {token:?}"
                );
            }
            assert!(replies.channel(&"t".repeat(room)).is_ok());
            assert!(replies.channel(&"t".repeat(room + 1)).is_err());
        }
    }

    proptest::proptest! {
        #[test]
        fn a_reply_namespace_agrees_on_any_token(token in "[a-z0-9._*> é:-]{0,12}") {
            let alice = p("spiffe://example.org/agent/shop/alice");
            proptest::prop_assert_eq!(
                ReplyNamespace::of(&alice).channel(&token),
                reply_channel(&alice, &token)
            );
        }
    }

    /// A token too long for any channel is refused as before, and the thread's buffer does
    /// not keep the room it took; the next name is built right.
    #[test]
    fn a_long_token_is_refused_and_its_room_not_kept() {
        let alice = p("spiffe://example.org/agent/shop/alice");
        let token = "t".repeat(10_000);
        assert!(matches!(
            reply_channel(&alice, &token),
            Err(ChannelError::TooLong { max: 255, .. })
        ));
        assert!(NAME.with_borrow(String::capacity) <= MAX_CHANNEL_LEN);
        assert_eq!(direct_channel(&alice).as_str(), "_direct.shop.alice");
    }

    fn pat(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    #[test]
    fn agents_and_humans_have_distinct_namespaces() {
        let alice = p("spiffe://td/agent/shop/alice");
        let human = p("spiffe://td/human/shop");
        let agent_named_human = p("spiffe://td/agent/human/shop");
        assert_eq!(direct_channel(&alice).as_str(), "_direct.shop.alice");
        assert_eq!(direct_channel(&human).as_str(), "_direct.human:shop");
        assert_eq!(
            direct_channel(&agent_named_human).as_str(),
            "_direct.human.shop"
        );
        assert!(is_direct_channel_of(&alice, &c("_direct.shop.alice")));
        assert!(!is_direct_channel_of(&alice, &c("_direct.shop.alice.x")));
        assert!(!is_direct_channel_of(&alice, &c("_direct.shop")));
        assert!(is_direct_channel_of(&human, &c("_direct.human:shop")));
        assert!(!is_direct_channel_of(&human, &c("_direct.human.shop")));
        assert!(!is_direct_channel_of(
            &agent_named_human,
            &c("_direct.human:shop")
        ));

        assert!(is_reply_channel_of(&alice, &c("_reply.shop.alice.r1")));
        assert!(is_reply_channel_of(&alice, &c("_reply.shop.alice.r1.x")));
        assert!(!is_reply_channel_of(&alice, &c("_reply.shop.alice")));
        assert!(!is_reply_channel_of(&alice, &c("_reply.shop.alicex.r1")));
        assert!(!is_reply_channel_of(&alice, &c("_direct.shop.alice.r1")));
        assert!(is_reply_channel_of(&human, &c("_reply.human:shop.r1")));
        assert!(!is_reply_channel_of(&human, &c("_reply.human.shop.r1")));
        // Owner tokens are whole tokens: a name that only starts like the owner's is not his.
        assert!(!is_reply_channel_of(&human, &c("_reply.human:shopx.r1")));
        assert!(!is_reply_channel_of(&human, &c("_reply.human:shop")));
        assert!(!is_direct_channel_of(&human, &c("_direct.human:shopx")));
        assert!(!is_direct_channel_of(&alice, &c("_direct.shop.alicex")));
        assert!(!is_direct_channel_of(&alice, &c("_direct.shopx.alice")));
        assert!(!is_reply_channel_of(&alice, &c("_replyx.shop.alice.r1")));
        assert!(!is_direct_channel_of(&alice, &c("_directx.shop.alice")));
        assert_eq!(reply_pattern(&human).as_str(), "_reply.human:shop.>");
        assert_eq!(reply_pattern(&alice).as_str(), "_reply.shop.alice.>");
        let reply = reply_channel(&alice, "r1").unwrap();
        assert_eq!(reply.as_str(), "_reply.shop.alice.r1");
        assert!(is_reply_channel_of(&alice, &reply));
        let reply = reply_channel(&human, "r1").unwrap();
        assert_eq!(reply.as_str(), "_reply.human:shop.r1");
        assert!(is_reply_channel_of(&human, &reply));
        assert!(!is_reply_channel_of(&agent_named_human, &reply));
        assert!(reply_channel(&alice, "a.b").is_err());
        assert!(reply_channel(&alice, "").is_err());
    }

    #[test]
    fn reply_roots() {
        let alice = p("spiffe://td/agent/shop/alice");
        let human = p("spiffe://td/human/ops");
        assert_eq!(reply_root(&alice).as_str(), "_reply.shop.alice");
        assert_eq!(reply_root(&human).as_str(), "_reply.human:ops");
        for (channel, root) in [
            ("_reply.shop.alice.r1", Some("_reply.shop.alice")),
            ("_reply.shop.alice.r1.x", Some("_reply.shop.alice")),
            ("_reply.human:ops.r1", Some("_reply.human:ops")),
            ("_reply.human:ops.r1.x", Some("_reply.human:ops")),
            ("_replyx.shop.alice.r1", None),
            ("_reply.shop.alice", None),
            ("_reply.human:ops", None),
            ("_reply.shop", None),
            ("_direct.shop.alice.r1", None),
            ("orders.shop.alice.r1", None),
        ] {
            let got = reply_root_of(&c(channel));
            assert_eq!(got.as_ref().map(Channel::as_str), root, "{channel}");
            assert_eq!(is_reply_channel(&c(channel)), root.is_some(), "{channel}");
            for other in ["_reply.shop.alice", "_reply.human:ops", "_reply.shop"] {
                assert_eq!(
                    is_reply_channel_under(&c(other), &c(channel)),
                    root == Some(other),
                    "{channel} under {other}"
                );
            }
            if let Some(root) = got {
                assert!(is_reply_root(&root));
                let owner = if root.as_str().contains("human:") {
                    &human
                } else {
                    &alice
                };
                assert_eq!(root, reply_root(owner));
                assert!(is_reply_channel_of(owner, &c(channel)));
            }
        }
        // A root is whole tokens: another owner whose name extends alice's is not under hers.
        let root = c("_reply.shop.alice");
        for other in [
            "_reply.shop.alicex.r1",
            "_reply.shopx.alice.r1",
            "_reply.shop.alice",
        ] {
            assert!(!is_reply_channel_under(&root, &c(other)), "{other}");
        }
        assert!(is_reply_channel_under(&root, &c("_reply.shop.alice.r1")));
        for no in [
            "_reply.shop.alice.r1",
            "_reply.shop",
            "_reply.human:ops.x",
            "_reply.human:x.y.z",
            "_direct.shop.alice",
            "shop.alice",
        ] {
            assert!(!is_reply_root(&c(no)), "{no}");
        }
    }

    #[test]
    fn own_patterns() {
        let alice = p("spiffe://td/agent/shop/alice");
        for yes in [
            "_direct.shop.alice",
            "_reply.shop.alice.>",
            "_reply.shop.alice.*",
            "_reply.shop.alice.r1",
        ] {
            assert!(is_own_pattern(&alice, &pat(yes)), "{yes}");
        }
        for no in [
            "_direct.shop.*",
            "_direct.shop.alice.x",
            "_direct.>",
            "_reply.shop.alice",
            "_reply.shop.*.>",
            "_reply.>",
            "_reply.shop.bob.>",
            "_reply.shop.alicex.>",
            "_reply.shopx.alice.>",
            "_direct.shop.alicex",
            "_directx.shop.alice",
            "orders.x",
        ] {
            assert!(!is_own_pattern(&alice, &pat(no)), "{no}");
        }
    }

    #[test]
    fn direct_segments() {
        assert_eq!(direct_segment(&c("_direct.shop.alice")), Some("shop"));
        assert_eq!(direct_segment(&c("_direct.human:ops")), None);
        assert_eq!(direct_segment(&c("_direct.shop.alice.x")), None);
        assert_eq!(direct_segment(&c("orders.shop.alice")), None);
    }
}
