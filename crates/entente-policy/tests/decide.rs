//! Decisions: default deny, determining policies, segments, channel matching, context, and
//! the decision cache.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_policy::{
    Action, ActiveGrant, BASE_POLICIES, CacheOptions, DecisionCache, Engine, Facts, PolicySet,
    Reason, Resource, Subject,
};
use entente_types::{AgentId, Channel, ChannelPattern, Principal};

const NOW: u64 = 1_700_000_000_000;

fn agent(segment: &str, name: &str) -> Subject {
    agent_with_roles(segment, name, &[])
}

fn agent_with_roles(segment: &str, name: &str, roles: &[&str]) -> Subject {
    let id = format!("spiffe://example.org/agent/{segment}/{name}");
    Subject::new(Principal::parse(&id).unwrap(), roles.iter().copied())
}

fn human(name: &str) -> Subject {
    let id = format!("spiffe://example.org/human/{name}");
    Subject::new(Principal::parse(&id).unwrap(), ["operator"])
}

fn c(s: &str) -> Channel {
    Channel::parse(s).unwrap()
}

fn p(s: &str) -> ChannelPattern {
    ChannelPattern::parse(s).unwrap()
}

fn set(text: &str) -> PolicySet {
    PolicySet::parse("test.cedar", text).unwrap()
}

fn ids(decision: &entente_policy::Decision) -> Vec<&str> {
    decision.policies.iter().map(|id| id.as_str()).collect()
}

fn publish(set: &PolicySet, who: &Subject, channel: &str) -> entente_policy::Decision {
    set.decide(
        who,
        Action::Publish,
        &Resource::Channel(&c(channel)),
        &Facts::default(),
        NOW,
    )
}

fn subscribe(set: &PolicySet, who: &Subject, pattern: &str) -> entente_policy::Decision {
    set.decide(
        who,
        Action::Subscribe,
        &Resource::Pattern(&p(pattern)),
        &Facts::default(),
        NOW,
    )
}

#[test]
fn default_deny_names_no_policy() {
    let set = set(
        r#"@id("other") permit (principal is Agent, action == Action::"subscribe", resource);"#,
    );
    let decision = publish(&set, &agent("research", "alice"), "research.results");
    assert!(!decision.allowed);
    assert_eq!(decision.reason, Reason::NoPermit);
    assert!(decision.policies.is_empty());
    let empty = PolicySet::empty();
    assert_eq!(
        publish(&empty, &agent("a", "b"), "a.x").reason,
        Reason::NoPermit
    );
}

#[test]
fn an_allow_names_every_matching_permit() {
    let set = set(r#"
        @id("by-segment") permit (principal in Segment::"research", action == Action::"publish", resource in Namespace::"research");
        @id("by-agent") permit (principal == Agent::"spiffe://example.org/agent/research/alice", action, resource == Channel::"research.results");
        @id("elsewhere") permit (principal, action, resource in Namespace::"orders");
    "#);
    let decision = publish(&set, &agent("research", "alice"), "research.results");
    assert!(decision.allowed);
    assert_eq!(decision.reason, Reason::Permit);
    assert_eq!(ids(&decision), ["by-agent", "by-segment"]);
    assert!(!decision.cross_segment);
    assert_eq!(
        ids(&publish(
            &set,
            &agent("research", "bob"),
            "research.results"
        )),
        ["by-segment"]
    );
}

#[test]
fn a_forbid_denies_and_is_named() {
    let set = set(r#"
        @id("open") permit (principal, action, resource in Namespace::"research");
        @id("no-secrets") forbid (principal, action, resource in Namespace::"research.secret");
        @id("no-risky") forbid (principal, action, resource) when { context.risk > 80 };
    "#);
    let alice = agent("research", "alice");
    let decision = publish(&set, &alice, "research.secret.plans");
    assert!(!decision.allowed);
    assert_eq!(decision.reason, Reason::Forbid);
    assert_eq!(ids(&decision), ["no-secrets"]);
    assert!(publish(&set, &alice, "research.public").allowed);
    let risky = Facts {
        risk: 90,
        ..Facts::default()
    };
    let decision = set.decide(
        &alice,
        Action::Publish,
        &Resource::Channel(&c("research.public")),
        &risky,
        NOW,
    );
    assert_eq!(
        (decision.allowed, ids(&decision)),
        (false, vec!["no-risky"])
    );
}

#[test]
fn traffic_across_segments_is_denied_even_by_a_wide_permit() {
    let set = set(r#"@id("everything") permit (principal is Agent, action, resource is Channel);"#);
    let eve = agent("lab", "eve");
    assert!(publish(&set, &eve, "lab.notes").allowed);
    for channel in [
        "research.results",
        "_direct.research.alice",
        "_direct.human:ops",
        "_sys.x",
    ] {
        let decision = publish(&set, &eve, channel);
        assert!(!decision.allowed, "{channel}");
        assert!(decision.cross_segment, "{channel}");
        assert_eq!(decision.reason, Reason::NoPermit);
        assert!(decision.policies.is_empty());
    }
    // Subscriptions spanning namespaces belong to no segment.
    assert!(!subscribe(&set, &eve, ">").allowed);
    assert!(!subscribe(&set, &eve, "*.notes").allowed);
    assert!(subscribe(&set, &eve, "lab.>").allowed);
    // Agents of other segments as resources too.
    let alice = AgentId::parse("spiffe://example.org/agent/research/alice").unwrap();
    let decision = set.decide(
        &eve,
        Action::Admin,
        &Resource::Agent(&alice),
        &Facts::default(),
        NOW,
    );
    assert!(!decision.allowed && decision.cross_segment);
    // The permit is for agents; humans are in no segment, and need permits that name them.
    assert!(!publish(&set, &human("ops"), "research.results").allowed);
}

/// An open action scope does not include the administrative actions: a wide permit lets
/// agents use their segment, not make join tokens for their peers (and become them), revoke
/// them, grant, or approve held messages; a permit that names them does.
#[test]
fn a_wide_permit_grants_no_administrative_action() {
    let wide = set(r#"@id("wide") permit (principal is Agent, action, resource);"#);
    let eve = agent("lab", "eve");
    let peer = AgentId::parse("spiffe://example.org/agent/lab/bob").unwrap();
    assert!(publish(&wide, &eve, "lab.notes").allowed);
    for action in [
        Action::Enroll,
        Action::Grant,
        Action::Approve,
        Action::Revoke,
        Action::Admin,
    ] {
        let on_peer = wide.decide(
            &eve,
            action,
            &Resource::Agent(&peer),
            &Facts::default(),
            NOW,
        );
        assert!(!on_peer.allowed, "{action:?}");
        assert_eq!(on_peer.reason, Reason::NoPermit, "{action:?}");
        // The explanation says why the wide permit did not count.
        let text = wide.explain(
            &eve,
            action,
            &Resource::Agent(&peer),
            &Facts::default(),
            NOW,
        );
        assert!(
            text.contains(&format!(
                "not considered: wide (an open action scope never allows `{action}`"
            )),
            "{text}"
        );
    }
    // Nor is it mentioned where it does not apply.
    let text = wide.explain(
        &eve,
        Action::Subscribe,
        &Resource::Channel(&c("other.x")),
        &Facts::default(),
        NOW,
    );
    assert!(!text.contains("not considered"), "{text}");
    let held = c("lab.wire");
    let approve = |set: &PolicySet| {
        set.decide(
            &eve,
            Action::Approve,
            &Resource::Channel(&held),
            &Facts::default(),
            NOW,
        )
    };
    assert!(!approve(&wide).allowed);
    // Named, they are granted; and sliced or not, the same.
    let named = set(
        r#"@id("approvers") permit (principal is Agent, action in [Action::"approve", Action::"publish"], resource);"#,
    );
    assert!(approve(&named).allowed);
    let unsliced = PolicySet::builder()
        .source(
            "t.cedar",
            r#"permit (principal is Agent, action, resource);"#,
        )
        .slicing(false)
        .build()
        .unwrap();
    assert!(!approve(&unsliced).allowed);
    assert!(publish(&unsliced, &eve, "lab.notes").allowed);
}

#[test]
fn a_cross_segment_permit_opens_a_named_channel() {
    let set = PolicySet::builder()
        .source(
            "bridges.cedar",
            r#"
            @id("a-to-b-results")
            @cross_segment
            permit (principal in Segment::"a", action == Action::"publish", resource == Channel::"shared.results");

            @id("wide") permit (principal is Agent, action, resource is Channel);
            "#,
        )
        .namespace_owner("shared", "b")
        .build()
        .unwrap();
    assert_eq!(set.namespace_owner("shared"), "b");
    let a = agent("a", "x");
    let decision = publish(&set, &a, "shared.results");
    assert!(decision.allowed && decision.cross_segment);
    assert_eq!(ids(&decision), ["a-to-b-results"]);
    // Only that channel, only for segment a, only publish.
    assert!(!publish(&set, &a, "shared.other").allowed);
    assert!(!publish(&set, &agent("c", "y"), "shared.results").allowed);
    assert!(!subscribe(&set, &a, "shared.results").allowed);
    // Segment b's own agents use the ordinary permits.
    assert_eq!(
        ids(&publish(&set, &agent("b", "z"), "shared.other")),
        ["wide"]
    );
}

#[test]
fn a_forbid_applies_across_segments_too() {
    let set = set(r#"
        @id("bridge") @cross_segment permit (principal, action, resource in Namespace::"b");
        @id("stop") forbid (principal in Segment::"a", action, resource == Channel::"b.secret");
    "#);
    assert!(publish(&set, &agent("a", "x"), "b.results").allowed);
    let decision = publish(&set, &agent("a", "x"), "b.secret");
    assert_eq!(
        (decision.reason, ids(&decision)),
        (Reason::Forbid, vec!["stop"])
    );
}

#[test]
fn namespaces_match_like_nats_tail_wildcards() {
    let set = set(r#"@id("eu") permit (principal, action, resource in Namespace::"orders.eu");"#);
    let alice = agent("orders", "alice");
    assert!(publish(&set, &alice, "orders.eu.created").allowed);
    assert!(publish(&set, &alice, "orders.eu.x.y").allowed);
    assert!(!publish(&set, &alice, "orders.eu").allowed);
    assert!(!publish(&set, &alice, "orders.us.created").allowed);
    // A subscription is in a namespace when every channel it matches is.
    assert!(subscribe(&set, &alice, "orders.eu.>").allowed);
    assert!(subscribe(&set, &alice, "orders.eu.*").allowed);
    assert!(!subscribe(&set, &alice, "orders.>").allowed);
    assert!(!subscribe(&set, &alice, "orders.*.created").allowed);
}

#[test]
fn like_matches_names_across_dots() {
    let set = set(
        r#"@id("like") permit (principal is Agent, action, resource is Channel) when { resource.name like "orders.*.created" };"#,
    );
    let alice = agent("orders", "alice");
    assert!(publish(&set, &alice, "orders.eu.created").allowed);
    // Cedar's `*` is not a NATS `*`: it spans dots.
    assert!(publish(&set, &alice, "orders.eu.x.created").allowed);
    assert!(!publish(&set, &alice, "orders.eu.updated").allowed);
}

#[test]
fn roles_and_attributes() {
    let set = set(r#"
        @id("auditors") permit (principal in Role::"auditor", action == Action::"subscribe", resource in Namespace::"research");
        @id("named") permit (principal is Agent, action == Action::"publish", resource is Channel)
            when { principal.name == "alice" && resource.namespace == "research" && !resource.system };
        @id("humans") permit (principal is Human, action == Action::"admin", resource is Segment)
            when { principal in Role::"operator" };
    "#);
    assert!(
        subscribe(
            &set,
            &agent_with_roles("research", "bob", &["auditor"]),
            "research.>"
        )
        .allowed
    );
    assert!(!subscribe(&set, &agent("research", "bob"), "research.>").allowed);
    assert!(publish(&set, &agent("research", "alice"), "research.x").allowed);
    assert!(!publish(&set, &agent("research", "bob"), "research.x").allowed);
    let decision = set.decide(
        &human("ops"),
        Action::Admin,
        &Resource::Segment("research"),
        &Facts::default(),
        NOW,
    );
    assert_eq!(ids(&decision), ["humans"]);
}

#[test]
fn context_grants_and_time() {
    let set = set(r#"
        @id("incident") permit (principal, action == Action::"subscribe", resource in Namespace::"ops")
            when { context.grants.contains("incident-42") };
        @id("until") permit (principal, action == Action::"publish", resource in Namespace::"ops")
            when { context.now < 1700000100 && context.hub == "hub-1" && !context.tls_resumed };
    "#);
    let bob = agent("ops", "bob");
    let pattern = p("ops.>");
    let grant = |not_after_ms| Facts {
        grants: vec![ActiveGrant {
            id: "incident-42".into(),
            not_after_ms,
        }],
        ..Facts::default()
    };
    let sub = |facts: &Facts| {
        set.decide(
            &bob,
            Action::Subscribe,
            &Resource::Pattern(&pattern),
            facts,
            NOW,
        )
        .allowed
    };
    assert!(sub(&grant(NOW + 1)));
    assert!(!sub(&grant(NOW)), "an expired grant is not in the context");
    assert!(!sub(&Facts::default()));
    let facts = Facts {
        hub: "hub-1".into(),
        ..Facts::default()
    };
    let channel = c("ops.alert");
    let at = |now| {
        set.decide(
            &bob,
            Action::Publish,
            &Resource::Channel(&channel),
            &facts,
            now,
        )
        .allowed
    };
    assert!(at(NOW));
    assert!(!at(1_700_000_100_000));
}

#[test]
fn a_forbid_that_fails_to_evaluate_denies() {
    let set = set(r#"
        @id("open") permit (principal is Agent, action, resource is Channel);
        @id("overflows") forbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };
    "#);
    let decision = publish(&set, &agent("a", "x"), "a.b");
    assert!(!decision.allowed);
    assert_eq!(decision.reason, Reason::ForbidFailed);
    assert_eq!(ids(&decision), ["overflows"]);
    assert_eq!(decision.errors.len(), 1);
    assert_eq!(decision.errors[0].policy.as_str(), "overflows");
}

#[test]
fn a_permit_that_fails_to_evaluate_does_not_count() {
    let set = set(r#"
        @id("open") permit (principal is Agent, action, resource is Channel);
        @id("overflows") permit (principal is Agent, action, resource is Channel) when { context.now * 9223372036854775807 > 0 };
    "#);
    let decision = publish(&set, &agent("a", "x"), "a.b");
    assert!(decision.allowed);
    assert_eq!(ids(&decision), ["open"]);
    assert_eq!(decision.errors[0].policy.as_str(), "overflows");
}

#[test]
fn base_policies_allow_directs_within_a_segment_only() {
    let set = set(BASE_POLICIES);
    let alice = agent("shop", "alice");
    let direct = |who: &Subject, channel: &str| {
        set.decide(
            who,
            Action::Direct,
            &Resource::Channel(&c(channel)),
            &Facts::default(),
            NOW,
        )
    };
    let decision = direct(&alice, "_direct.shop.bob");
    assert!(decision.allowed);
    assert_eq!(ids(&decision), ["entente.direct-within-segment"]);
    assert!(!direct(&alice, "_direct.lab.eve").allowed);
    assert!(!direct(&alice, "_direct.human:ops").allowed);
    assert!(!direct(&alice, "shop.orders").allowed);
    assert!(!direct(&human("ops"), "_direct.shop.bob").allowed);
    assert!(!publish(&set, &alice, "_direct.shop.bob").allowed);
}

#[test]
fn slicing_keeps_unpinned_policies_in_every_slice() {
    let text = r#"
        @id("pinned") permit (principal, action == Action::"publish", resource in Namespace::"a");
        @id("any-action") permit (principal, action, resource == Channel::"b.x");
        @id("any-resource") permit (principal is Human, action in [Action::"publish", Action::"request"], resource) when { resource.name == "c.y" };
        @id("global-forbid") forbid (principal, action, resource) when { context.risk > 50 };
    "#;
    for slicing in [true, false] {
        let set = PolicySet::builder()
            .source("s", text)
            .slicing(slicing)
            .build()
            .unwrap();
        let who = Subject::new(
            Principal::parse("spiffe://example.org/human/ops").unwrap(),
            ["x"],
        );
        let decide = |action, channel: &str, risk| {
            let facts = Facts {
                risk,
                ..Facts::default()
            };
            let d = set.decide(&who, action, &Resource::Channel(&c(channel)), &facts, NOW);
            (
                d.allowed,
                d.policies
                    .iter()
                    .map(|id| id.to_string())
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            decide(Action::Publish, "a.1", 0),
            (true, vec!["pinned".to_owned()])
        );
        assert!(!decide(Action::Subscribe, "a.1", 0).0);
        assert_eq!(
            decide(Action::Subscribe, "b.x", 0),
            (true, vec!["any-action".to_owned()])
        );
        assert_eq!(
            decide(Action::Request, "c.y", 0),
            (true, vec!["any-resource".to_owned()])
        );
        assert!(!decide(Action::Direct, "c.y", 0).0);
        assert_eq!(
            decide(Action::Publish, "a.1", 60),
            (false, vec!["global-forbid".to_owned()])
        );
    }
}

#[test]
fn explain_names_the_deciding_policies_and_where_they_are() {
    let set = set(r#"
@id("research-publishes")
permit (principal in Segment::"research", action == Action::"publish", resource in Namespace::"research");
"#);
    let alice = agent("research", "alice");
    let channel = c("research.results");
    let text = set.explain(
        &alice,
        Action::Publish,
        &Resource::Channel(&channel),
        &Facts::default(),
        NOW,
    );
    assert!(text.starts_with("ALLOW: agent `spiffe://example.org/agent/research/alice` publish Channel::\"research.results\""), "{text}");
    assert!(
        text.contains("permitted by:\n    research-publishes (test.cedar:2:1)"),
        "{text}"
    );
    assert!(
        text.contains("resource in Namespace::\"research\""),
        "{text}"
    );

    let text = set.explain(
        &agent("lab", "eve"),
        Action::Publish,
        &Resource::Channel(&channel),
        &Facts::default(),
        NOW,
    );
    assert!(text.starts_with("DENY"), "{text}");
    assert!(
        text.contains("segment `lab`, the resource in segment `research`"),
        "{text}"
    );
    assert!(
        text.contains("no policy permits it (default deny)"),
        "{text}"
    );
}

// === the cache ===

const POLICIES: &str = r#"
    @id("research") permit (principal in Segment::"research", action, resource in Namespace::"research");
    @id("granted") permit (principal, action == Action::"subscribe", resource in Namespace::"research")
        when { context.grants.contains("g1") };
"#;

#[test]
fn a_new_cache_holds_nothing_until_its_first_decision() {
    let engine = Engine::new(set(POLICIES));
    let mut cache = DecisionCache::new(agent("research", "alice"), CacheOptions::default());
    let channel = c("research.results");
    let resource = Resource::Channel(&channel);
    assert!(cache.is_empty());
    assert!(
        cache
            .lookup(engine.epoch(), Action::Publish, &resource, NOW)
            .is_none()
    );
    cache.clear();
    assert!(
        cache
            .decide(&engine, Action::Publish, &resource, &Facts::default(), NOW)
            .allowed
    );
    assert_eq!(cache.len(), 1);
    assert!(
        cache
            .lookup(engine.epoch(), Action::Publish, &resource, NOW)
            .is_some()
    );
    cache.clear();
    assert!(cache.is_empty());
    assert!(
        cache
            .lookup(engine.epoch(), Action::Publish, &resource, NOW)
            .is_none()
    );
}

#[test]
fn cache_hits_misses_and_epochs() {
    let engine = Engine::new(set(POLICIES));
    let mut cache = DecisionCache::new(agent("research", "alice"), CacheOptions::default());
    let channel = c("research.results");
    let resource = Resource::Channel(&channel);
    let first = cache.decide(&engine, Action::Publish, &resource, &Facts::default(), NOW);
    assert!(first.allowed);
    assert_eq!(first.epoch, 1);
    let second = cache.decide(
        &engine,
        Action::Publish,
        &resource,
        &Facts::default(),
        NOW + 1,
    );
    assert!(std::sync::Arc::ptr_eq(&first, &second));
    assert_eq!((cache.stats().hits, cache.stats().misses), (1, 1));
    // Another action or resource is another entry.
    cache.decide(
        &engine,
        Action::Subscribe,
        &resource,
        &Facts::default(),
        NOW,
    );
    assert_eq!(cache.len(), 2);
    // Any change bumps the epoch and the entry is decided again.
    engine.bump_epoch();
    assert!(
        cache
            .lookup(engine.epoch(), Action::Publish, &resource, NOW)
            .is_none()
    );
    let third = cache.decide(&engine, Action::Publish, &resource, &Facts::default(), NOW);
    assert_eq!(third.epoch, 2);
    assert_eq!(cache.stats().misses, 3);
    // A new policy set changes the answer at once.
    engine.replace(PolicySet::empty());
    assert!(
        !cache
            .decide(&engine, Action::Publish, &resource, &Facts::default(), NOW)
            .allowed
    );
}

#[test]
fn cache_entries_expire_at_the_ttl_and_at_the_earliest_grant() {
    let engine = Engine::new(set(POLICIES));
    let options = CacheOptions {
        capacity: 16,
        ttl_ms: 1000,
    };
    let mut cache = DecisionCache::new(agent("lab", "eve"), options);
    let mut cache_research = DecisionCache::new(agent("research", "bob"), options);
    let pattern = p("research.>");
    let resource = Resource::Pattern(&pattern);
    let facts = Facts {
        grants: vec![
            ActiveGrant {
                id: "g1".into(),
                not_after_ms: NOW + 300,
            },
            ActiveGrant {
                id: "g0".into(),
                not_after_ms: NOW - 1,
            },
        ],
        ..Facts::default()
    };
    assert!(
        cache_research
            .decide(&engine, Action::Subscribe, &resource, &facts, NOW)
            .allowed
    );
    assert!(
        cache_research
            .lookup(engine.epoch(), Action::Subscribe, &resource, NOW + 299)
            .is_some()
    );
    assert!(
        cache_research
            .lookup(engine.epoch(), Action::Subscribe, &resource, NOW + 300)
            .is_none()
    );
    // Without grants, the TTL (denies are cached like allows).
    let channel = c("lab.notes");
    let lab = Resource::Channel(&channel);
    cache.decide(&engine, Action::Publish, &lab, &Facts::default(), NOW);
    assert!(
        cache
            .lookup(engine.epoch(), Action::Publish, &lab, NOW + 999)
            .is_some()
    );
    assert!(
        cache
            .lookup(engine.epoch(), Action::Publish, &lab, NOW + 1000)
            .is_none()
    );
}

#[test]
fn a_full_cache_starts_over() {
    let engine = Engine::new(set(POLICIES));
    let options = CacheOptions {
        capacity: 3,
        ttl_ms: 60_000,
    };
    let mut cache = DecisionCache::new(agent("research", "alice"), options);
    let channels: Vec<Channel> = (0..4).map(|i| c(&format!("research.c{i}"))).collect();
    for channel in &channels[..3] {
        cache.decide(
            &engine,
            Action::Publish,
            &Resource::Channel(channel),
            &Facts::default(),
            NOW,
        );
    }
    assert_eq!(cache.len(), 3);
    // Re-deciding a present key does not grow it.
    cache.decide(
        &engine,
        Action::Publish,
        &Resource::Channel(&channels[0]),
        &Facts::default(),
        NOW,
    );
    assert_eq!(cache.len(), 3);
    cache.decide(
        &engine,
        Action::Publish,
        &Resource::Channel(&channels[3]),
        &Facts::default(),
        NOW,
    );
    assert_eq!(cache.len(), 1);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn humans_are_resources_of_grant_approve_and_admin_in_no_segment() {
    let set = set(r#"
        @id("admins-grant")
        permit (principal == Human::"spiffe://example.org/human/admin",
                action in [Action::"grant", Action::"approve", Action::"admin"], resource);
        @id("leads-approve-humans")
        permit (principal in Segment::"ops", action == Action::"approve", resource is Human)
        when { resource.name == "ann" };
        "#);
    let ann = entente_types::HumanId::parse("spiffe://example.org/human/ann").unwrap();
    let bob = entente_types::HumanId::parse("spiffe://example.org/human/bob").unwrap();
    let admin = human("admin");
    for action in [Action::Grant, Action::Approve, Action::Admin] {
        let decision = set.decide(
            &admin,
            action,
            &Resource::Human(&ann),
            &Facts::default(),
            NOW,
        );
        assert!(decision.allowed, "{action}");
        assert_eq!(ids(&decision), ["admins-grant"]);
    }
    // A human is in no segment: an agent acting on one crosses segments, and only a
    // @cross_segment permit could let it.
    let lead = agent("ops", "lead");
    let decision = set.decide(
        &lead,
        Action::Approve,
        &Resource::Human(&ann),
        &Facts::default(),
        NOW,
    );
    assert!(!decision.allowed && decision.cross_segment);
    let cross = set_with_cross(&lead, &ann, &bob);
    assert!(cross.0 && !cross.1);
    // `Resource::principal` picks the entity type.
    let eve = Principal::parse("spiffe://example.org/agent/ops/eve").unwrap();
    assert_eq!(Resource::principal(&eve).type_name(), "Agent");
    let ann = Principal::parse("spiffe://example.org/human/ann").unwrap();
    assert_eq!(Resource::principal(&ann).type_name(), "Human");
}

/// With a `@cross_segment` permit naming ann: (may approve ann, may approve bob).
fn set_with_cross(
    lead: &Subject,
    ann: &entente_types::HumanId,
    bob: &entente_types::HumanId,
) -> (bool, bool) {
    let set = set(r#"
        @cross_segment
        permit (principal in Segment::"ops", action == Action::"approve",
                resource == Human::"spiffe://example.org/human/ann");
        "#);
    let may = |who| {
        set.decide(
            lead,
            Action::Approve,
            &Resource::Human(who),
            &Facts::default(),
            NOW,
        )
        .allowed
    };
    (may(ann), may(bob))
}

#[test]
fn the_hub_is_a_resource_of_admin_in_no_segment() {
    let set = set(r#"
        @id("ann-administers")
        permit (principal == Human::"spiffe://example.org/human/ann",
                action == Action::"admin", resource == Hub::"hub");
        @id("ops-administers-everything")
        permit (principal in Segment::"ops", action == Action::"admin", resource);
        @id("lead-administers-the-hub")
        @cross_segment
        permit (principal == Agent::"spiffe://example.org/agent/ops/lead",
                action == Action::"admin", resource == Hub::"hub");
        "#);
    let hub = Resource::Hub("hub");
    assert_eq!((hub.type_name(), hub.name()), ("Hub", "hub"));
    assert_eq!(hub.to_string(), r#"Hub::"hub""#);
    let admin = |who: &Subject| set.decide(who, Action::Admin, &hub, &Facts::default(), NOW);

    // A human is in no segment, as the hub: a permit naming it decides.
    let decision = admin(&human("ann"));
    assert!(decision.allowed && !decision.cross_segment);
    assert_eq!(ids(&decision), ["ann-administers"]);
    let decision = admin(&human("bob"));
    assert!(!decision.allowed && decision.policies.is_empty());

    // For every agent the hub is in another segment: a wide permit of its segment does not
    // reach it; a @cross_segment permit naming the hub does.
    let decision = admin(&agent("ops", "eve"));
    assert!(!decision.allowed && decision.cross_segment);
    assert_eq!(decision.reason, Reason::NoPermit);
    let decision = admin(&agent("ops", "lead"));
    assert!(decision.allowed && decision.cross_segment);
    assert_eq!(ids(&decision), ["lead-administers-the-hub"]);
    // Nor is an agent of a segment named `hub`: the hub is in no segment.
    assert!(!admin(&agent("hub", "x")).allowed);

    let explained = set.explain(
        &agent("ops", "eve"),
        Action::Admin,
        &hub,
        &Facts::default(),
        NOW,
    );
    assert!(
        explained.contains("the resource in no segment"),
        "{explained}"
    );
}

#[test]
fn the_hub_and_a_segment_of_the_same_name_are_cached_apart() {
    let engine = Engine::new(set(r#"
        @id("bob-administers-segment-hub")
        permit (principal == Human::"spiffe://example.org/human/bob",
                action == Action::"admin", resource == Segment::"hub");
        "#));
    let mut cache = DecisionCache::new(human("bob"), CacheOptions::default());
    let decide = |cache: &mut DecisionCache, resource: &Resource<'_>| {
        cache
            .decide(&engine, Action::Admin, resource, &Facts::default(), NOW)
            .allowed
    };
    assert!(decide(&mut cache, &Resource::Segment("hub")));
    assert!(!decide(&mut cache, &Resource::Hub("hub")));
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.stats().misses, 2);
}

#[test]
fn enroll_and_revoke_apply_to_agents_by_segment_and_to_humans() {
    let set = set(r#"
        @id("ann-enrolls-shop")
        permit (principal == Human::"spiffe://example.org/human/ann",
                action == Action::"enroll", resource in Segment::"shop");
        @id("ann-enrolls-humans")
        permit (principal == Human::"spiffe://example.org/human/ann",
                action == Action::"enroll", resource is Human);
        @id("ann-revokes-bob")
        permit (principal == Human::"spiffe://example.org/human/ann",
                action == Action::"revoke", resource == Agent::"spiffe://example.org/agent/shop/bob");
        "#);
    let ann = human("ann");
    let decide = |action, resource: &Resource<'_>| {
        set.decide(&ann, action, resource, &Facts::default(), NOW)
            .allowed
    };
    let shop = AgentId::parse("spiffe://example.org/agent/shop/alice").unwrap();
    let lab = AgentId::parse("spiffe://example.org/agent/lab/eve").unwrap();
    let bob = AgentId::parse("spiffe://example.org/agent/shop/bob").unwrap();
    let carol = entente_types::HumanId::parse("spiffe://example.org/human/carol").unwrap();
    assert!(decide(Action::Enroll, &Resource::Agent(&shop)));
    assert!(!decide(Action::Enroll, &Resource::Agent(&lab)));
    assert!(decide(Action::Enroll, &Resource::Human(&carol)));
    assert!(decide(Action::Revoke, &Resource::Agent(&bob)));
    assert!(!decide(Action::Revoke, &Resource::Agent(&shop)));
    assert!(!decide(Action::Revoke, &Resource::Human(&carol)));
}
