//! Interim authorization: an allow list of publish and subscribe patterns per agent or segment,
//! until Cedar policies replace it.
//!
//! Rules:
//!
//! - **Default deny.** A publish or subscription is allowed only if a rule grants it.
//! - A rule applies to one agent ([`Who::Agent`]), to the agents of one segment
//!   ([`Who::Segment`]: a rule for segment X grants only principals of segment X), or to every
//!   principal ([`Who::Any`]). Nothing is granted across segments implicitly: traffic between
//!   segments needs a rule that lists it.
//! - A publish to channel C is allowed if a rule's `publish` pattern matches C.
//! - A subscription to pattern P is allowed if a rule's `subscribe` pattern *covers* P: every
//!   channel P matches, the rule's pattern matches too.
//! - **System channels** (first token starting with `_`) are never matched by a wildcard in the
//!   first token: `>` and `*.x` match no `_direct…` or `_reply…` channel, in rules and in
//!   subscriptions alike. A rule or subscription reaches a system channel only by naming its
//!   first token literally.
//! - **Own namespaces** ([`entente_types::namespace`]). A principal may always subscribe to its
//!   direct channel (`_direct.S.N` for agent `S/N`, `_direct.human:N` for human `N`; exactly)
//!   and to patterns under its reply namespace (`_reply.S.N.>`, `_reply.human:N.>`), and nobody
//!   else may subscribe to them, whatever the rules say: a subscription pattern whose first
//!   token is `_direct` or `_reply` is judged by this rule alone.
//! - **Direct messages.** An agent may publish to the direct channel `_direct.S.N` of any agent
//!   of its own segment S. Any other direct channel — another segment's agent, a human's
//!   `_direct.human:N`, or a direct from a human — needs a rule granting publish on it (e.g.
//!   `_direct.shop.*` for segment `lab`).
//! - **Replies.** Nobody may publish into a `_reply` namespace by rule: only a reply grant,
//!   which the hub issues when it routes a request (crate docs, "Direct messages and
//!   request/reply"), allows it. `may_publish` denies every `_reply` channel
//!   ([`DenyReason::NeedsReplyGrant`]); the session checks grants first.

use std::fmt;

use entente_types::{AgentId, Channel, ChannelPattern, Principal, namespace};

pub use entente_types::namespace::{DIRECT_PREFIX, REPLY_PREFIX};

/// The hub's allow list. The default is empty: everything but own namespaces is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    /// The rules, in no particular order (any granting rule allows).
    pub rules: Vec<AllowRule>,
}

/// What one principal, segment or everyone may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    /// Whom the rule grants.
    pub who: Who,
    /// Channels they may publish to.
    pub publish: Vec<ChannelPattern>,
    /// Patterns they may subscribe to (and any narrower pattern).
    pub subscribe: Vec<ChannelPattern>,
}

/// Whom a rule grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// One agent.
    Agent(AgentId),
    /// Every agent of a segment.
    Segment(String),
    /// Every principal, agents and humans.
    Any,
}

/// The answer of the allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, and why.
    Deny(DenyReason),
}

/// Why the allow list denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No rule grants it.
    NoRule,
    /// The pattern reaches into another principal's `_direct` or `_reply` namespace.
    OthersNamespace,
    /// A `_reply` channel, which only a reply grant opens to publishing.
    NeedsReplyGrant,
}

// === impl AllowList ===

impl AllowList {
    /// An empty list: deny everything but own namespaces.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule.
    pub fn with(mut self, rule: AllowRule) -> Self {
        self.rules.push(rule);
        self
    }

    /// May `who` publish to `channel`? (Reply grants are not the allow list's: every `_reply`
    /// channel is denied here.)
    pub fn may_publish(&self, who: &Principal, channel: &Channel) -> Decision {
        let mut tokens = channel.tokens();
        match tokens.next() {
            Some(REPLY_PREFIX) => return Decision::Deny(DenyReason::NeedsReplyGrant),
            Some(DIRECT_PREFIX) => {
                if let (Principal::Agent(agent), Some(segment)) =
                    (who, namespace::direct_segment(channel))
                    && agent.segment() == segment
                {
                    return Decision::Allow;
                }
            }
            _ => {}
        }
        let granted = self
            .rules_for(who)
            .flat_map(|rule| &rule.publish)
            .any(|pattern| matches(pattern, channel));
        decide(granted, DenyReason::NoRule)
    }

    /// May `who` subscribe to `pattern`?
    pub fn may_subscribe(&self, who: &Principal, pattern: &ChannelPattern) -> Decision {
        let first = pattern.tokens().next().unwrap_or_default();
        if first == DIRECT_PREFIX || first == REPLY_PREFIX {
            return decide(
                namespace::is_own_pattern(who, pattern),
                DenyReason::OthersNamespace,
            );
        }
        let granted = self
            .rules_for(who)
            .flat_map(|rule| &rule.subscribe)
            .any(|rule| covers(rule, pattern));
        decide(granted, DenyReason::NoRule)
    }

    fn rules_for<'a>(&'a self, who: &'a Principal) -> impl Iterator<Item = &'a AllowRule> {
        self.rules.iter().filter(move |rule| rule.who.includes(who))
    }
}

// === impl Who ===

impl Who {
    /// Whether the rule applies to `principal`.
    pub fn includes(&self, principal: &Principal) -> bool {
        match (self, principal) {
            (Who::Any, _) => true,
            (Who::Agent(id), Principal::Agent(agent)) => id == agent,
            (Who::Segment(segment), Principal::Agent(agent)) => agent.segment() == segment,
            (_, Principal::Human(_)) => false,
        }
    }
}

// === impl DenyReason ===

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DenyReason::NoRule => "no allow rule grants it",
            DenyReason::OthersNamespace => {
                "only its owner may subscribe to a `_direct` or `_reply` namespace"
            }
            DenyReason::NeedsReplyGrant => {
                "only the recipient of a request may publish its reply, once, into a `_reply` namespace"
            }
        })
    }
}

// === matching ===

/// Whether `pattern` matches `channel`, where a wildcard first token never matches a system
/// channel. Subscriptions are matched with this too.
pub fn matches(pattern: &ChannelPattern, channel: &Channel) -> bool {
    if channel.is_system() && starts_with_wildcard(pattern) {
        return false;
    }
    pattern.matches(channel)
}

/// Whether every channel `inner` matches is matched by `outer` (both under [`matches()`]).
pub fn covers(outer: &ChannelPattern, inner: &ChannelPattern) -> bool {
    let mut outer_tokens = outer.tokens();
    let mut inner_tokens = inner.tokens();
    let mut first = true;
    loop {
        match (outer_tokens.next(), inner_tokens.next()) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            // `>` covers one or more tokens of anything, but a leading one no system channel.
            (Some(">"), Some(token)) => return !(first && token.starts_with('_')),
            // Only `>` covers `>`.
            (Some(_), Some(">")) => return false,
            (Some("*"), Some(token)) => {
                if first && token.starts_with('_') {
                    return false;
                }
            }
            // A literal covers only the same literal (not `*`).
            (Some(literal), Some(token)) => {
                if literal != token {
                    return false;
                }
            }
        }
        first = false;
    }
}

fn starts_with_wildcard(pattern: &ChannelPattern) -> bool {
    matches!(pattern.tokens().next(), Some("*" | ">"))
}

fn decide(granted: bool, otherwise: DenyReason) -> Decision {
    if granted {
        Decision::Allow
    } else {
        Decision::Deny(otherwise)
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

    use entente_types::{HumanId, TrustDomain};

    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn agent(segment: &str, name: &str) -> Principal {
        Principal::from(AgentId::new(&td(), segment, name).unwrap())
    }

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    fn c(s: &str) -> Channel {
        Channel::parse(s).unwrap()
    }

    fn rule(who: Who, publish: &[&str], subscribe: &[&str]) -> AllowRule {
        AllowRule {
            who,
            publish: publish.iter().map(|s| p(s)).collect(),
            subscribe: subscribe.iter().map(|s| p(s)).collect(),
        }
    }

    #[test]
    fn empty_list_denies_everything_but_own_namespaces() {
        let list = AllowList::new();
        let alice = agent("shop", "alice");
        assert_eq!(
            list.may_publish(&alice, &c("orders")),
            Decision::Deny(DenyReason::NoRule)
        );
        assert_eq!(
            list.may_subscribe(&alice, &p("orders.>")),
            Decision::Deny(DenyReason::NoRule)
        );
        assert_eq!(
            list.may_subscribe(&alice, &p("_direct.shop.alice")),
            Decision::Allow
        );
        assert_eq!(
            list.may_subscribe(&alice, &p("_reply.shop.alice.>")),
            Decision::Allow
        );
        assert_eq!(
            list.may_subscribe(&alice, &p("_reply.shop.alice.r1")),
            Decision::Allow
        );
    }

    #[test]
    fn nobody_else_may_subscribe_to_an_agents_namespace_even_with_a_rule() {
        let list = AllowList::new().with(rule(Who::Any, &[], &[">", "_reply.>", "_direct.>"]));
        let bob = agent("shop", "bob");
        for pattern in [
            "_reply.shop.alice.>",
            "_reply.shop.*.>",
            "_reply.>",
            "_reply.shop.>",
            "_direct.shop.alice",
            "_direct.*.*",
            "_direct.shop.bob.extra",
            "_reply.shop.bob",
        ] {
            assert_eq!(
                list.may_subscribe(&bob, &p(pattern)),
                Decision::Deny(DenyReason::OthersNamespace),
                "{pattern}"
            );
        }
        // `>` is allowed by the rule but never matches system channels.
        assert_eq!(list.may_subscribe(&bob, &p(">")), Decision::Allow);
        assert!(!matches(&p(">"), &c("_reply.shop.alice.x")));
        assert!(!matches(&p("*.shop.alice"), &c("_direct.shop.alice")));
        assert!(matches(&p("_direct.shop.alice"), &c("_direct.shop.alice")));
    }

    #[test]
    fn humans_own_their_human_namespace_only() {
        let list = AllowList::new();
        let human = Principal::from(HumanId::new(&td(), "ops").unwrap());
        // `_direct.human.ops` is the agent `human/ops`'s.
        assert!(matches!(
            list.may_subscribe(&human, &p("_direct.human.ops")),
            Decision::Deny(_)
        ));
        assert_eq!(
            list.may_subscribe(&human, &p("_direct.human:ops")),
            Decision::Allow
        );
        assert_eq!(
            list.may_subscribe(&human, &p("_reply.human:ops.>")),
            Decision::Allow
        );
        assert!(matches!(
            list.may_subscribe(&agent("human", "ops"), &p("_direct.human:ops")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn directs_within_a_segment_are_allowed_across_only_by_rule() {
        let list = AllowList::new();
        let alice = agent("shop", "alice");
        let eve = agent("lab", "eve");
        let human = Principal::from(HumanId::new(&td(), "ops").unwrap());
        assert_eq!(
            list.may_publish(&alice, &c("_direct.shop.bob")),
            Decision::Allow
        );
        assert_eq!(
            list.may_publish(&alice, &c("_direct.shop.alice")),
            Decision::Allow
        );
        for (who, channel) in [
            (&eve, "_direct.shop.bob"),
            (&alice, "_direct.lab.eve"),
            (&alice, "_direct.human:ops"),
            (&human, "_direct.shop.bob"),
            (&alice, "_direct.shop.bob.x"),
        ] {
            assert_eq!(
                list.may_publish(who, &c(channel)),
                Decision::Deny(DenyReason::NoRule),
                "{who} {channel}"
            );
        }
        let list = list.with(rule(Who::Segment("lab".into()), &["_direct.shop.*"], &[]));
        assert_eq!(
            list.may_publish(&eve, &c("_direct.shop.bob")),
            Decision::Allow
        );
    }

    #[test]
    fn reply_namespaces_are_never_granted_by_rule() {
        let list = AllowList::new().with(rule(Who::Any, &["_reply.>", "_reply.shop.alice.x"], &[]));
        let alice = agent("shop", "alice");
        for channel in ["_reply.shop.alice.x", "_reply.shop.bob.x"] {
            assert_eq!(
                list.may_publish(&alice, &c(channel)),
                Decision::Deny(DenyReason::NeedsReplyGrant)
            );
        }
    }

    #[test]
    fn segment_rules_grant_only_their_segment() {
        let list = AllowList::new().with(rule(
            Who::Segment("shop".into()),
            &["orders.*"],
            &["orders.>"],
        ));
        let alice = agent("shop", "alice");
        let eve = agent("lab", "eve");
        assert_eq!(list.may_publish(&alice, &c("orders.eu")), Decision::Allow);
        assert_eq!(
            list.may_publish(&alice, &c("orders.eu.x")),
            Decision::Deny(DenyReason::NoRule)
        );
        assert!(matches!(
            list.may_publish(&eve, &c("orders.eu")),
            Decision::Deny(_)
        ));
        assert_eq!(list.may_subscribe(&alice, &p("orders.*")), Decision::Allow);
        assert!(matches!(
            list.may_subscribe(&eve, &p("orders.*")),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn agent_and_any_rules() {
        let alice = AgentId::new(&td(), "shop", "alice").unwrap();
        let list = AllowList::new()
            .with(rule(Who::Agent(alice.clone()), &["audit.x"], &[]))
            .with(rule(Who::Any, &["public"], &["public"]));
        let alice = Principal::from(alice);
        let bob = agent("shop", "bob");
        assert_eq!(list.may_publish(&alice, &c("audit.x")), Decision::Allow);
        assert!(matches!(
            list.may_publish(&bob, &c("audit.x")),
            Decision::Deny(_)
        ));
        assert_eq!(list.may_publish(&bob, &c("public")), Decision::Allow);
        assert_eq!(list.may_subscribe(&bob, &p("public")), Decision::Allow);
    }

    #[test]
    fn wildcard_rules_do_not_grant_system_channels() {
        let list = AllowList::new().with(rule(Who::Any, &[">", "*.x"], &[">"]));
        let bob = agent("shop", "bob");
        assert_eq!(list.may_publish(&bob, &c("a.b")), Decision::Allow);
        assert!(matches!(
            list.may_publish(&bob, &c("_direct.lab.alice")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            list.may_publish(&bob, &c("_sys.x")),
            Decision::Deny(_)
        ));
        assert!(matches!(
            list.may_subscribe(&bob, &p("_sys.>")),
            Decision::Deny(_)
        ));
        let literal = AllowList::new().with(rule(Who::Any, &["_direct.lab.*"], &["_sys.>"]));
        assert_eq!(
            literal.may_publish(&bob, &c("_direct.lab.alice")),
            Decision::Allow
        );
        assert_eq!(literal.may_subscribe(&bob, &p("_sys.a")), Decision::Allow);
    }

    #[test]
    fn covers_is_pattern_containment() {
        let yes = [
            (">", ">"),
            (">", "a"),
            (">", "*.b.>"),
            ("a.>", "a.b"),
            ("a.>", "a.*.c"),
            ("a.>", "a.>"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("*.b", "x.b"),
            ("a.b", "a.b"),
            ("_s.>", "_s.x"),
            ("a.*", "a._x"),
        ];
        let no = [
            ("a", "b"),
            ("a.b", "a.*"),
            ("a.*", "a.>"),
            ("a.*", "a.b.c"),
            ("a.>", "a"),
            ("a.b.>", "a.*.c"),
            (">", "_s.x"),
            ("*.x", "_s.x"),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
        ];
        for (outer, inner) in yes {
            assert!(covers(&p(outer), &p(inner)), "{outer} should cover {inner}");
        }
        for (outer, inner) in no {
            assert!(
                !covers(&p(outer), &p(inner)),
                "{outer} should not cover {inner}"
            );
        }
    }
}
