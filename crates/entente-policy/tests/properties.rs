//! Properties: slicing never changes a decision, and the cache answers what the engine would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_policy::{
    Action, ActiveGrant, CacheOptions, Decision, DecisionCache, Engine, Facts, PolicySet, Resource,
    Subject,
};
use entente_types::{Channel, ChannelPattern, Principal};
use proptest::prelude::*;

const POLICIES: &str = r#"
@id("seg-a") permit (principal in Segment::"a", action in [Action::"publish", Action::"subscribe"], resource in Namespace::"a");
@id("seg-b") permit (principal in Segment::"b", action, resource in Namespace::"b");
@id("agent-c1") permit (principal == Agent::"spiffe://example.org/agent/c/n1", action == Action::"publish", resource == Channel::"c.x");
@id("role-reader") permit (principal in Role::"reader", action == Action::"subscribe", resource is Channel) when { resource.namespace == "c" };
@id("bridge") @cross_segment permit (principal in Segment::"a", action == Action::"publish", resource in Namespace::"b.inbox");
@id("bridge-shared") @cross_segment permit (principal, action == Action::"subscribe", resource == Channel::"shared.news");
@id("wide") permit (principal is Agent, action == Action::"request", resource);
@id("like") permit (principal is Human, action == Action::"reply", resource is Channel) when { resource.name like "*.x" };
@id("no-secret") forbid (principal, action, resource in Namespace::"a.secret");
@id("risky") forbid (principal, action, resource) when { context.risk > 70 };
@id("granted") permit (principal, action == Action::"reply", resource in Namespace::"a") when { context.grants.contains("g1") };
@id("direct") permit (principal is Agent, action == Action::"direct", resource is Channel) when { resource.segment == principal.segment };
"#;

fn build(slicing: bool) -> PolicySet {
    PolicySet::builder()
        .source("p", POLICIES)
        .namespace_owner("shared", "b")
        .slicing(slicing)
        .build()
        .unwrap()
}

fn subject(kind: u8, segment: &str, name: &str, reader: bool) -> Subject {
    let id = if kind == 0 {
        format!("spiffe://example.org/human/{name}")
    } else {
        format!("spiffe://example.org/agent/{segment}/{name}")
    };
    let roles: &[&str] = if reader { &["reader"] } else { &[] };
    Subject::new(Principal::parse(&id).unwrap(), roles.iter().copied())
}

fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a", "b", "c", "shared", "x", "inbox", "secret", "news", "_direct", "n1",
    ])
}

fn name() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..5).prop_map(|tokens| tokens.join("."))
}

fn pattern() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c", "x", "*", "shared", "news"]),
        1..4,
    )
    .prop_flat_map(|tokens| {
        let base = tokens.join(".");
        prop::bool::ANY.prop_map(move |tail| {
            if tail {
                format!("{base}.>")
            } else {
                base.clone()
            }
        })
    })
}

fn comparable(d: &Decision) -> (bool, entente_policy::Reason, Vec<String>, bool) {
    (
        d.allowed,
        d.reason,
        d.policies.iter().map(ToString::to_string).collect(),
        d.cross_segment,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn slicing_never_changes_a_decision(
        kind in 0u8..3,
        segment in prop::sample::select(vec!["a", "b", "c"]),
        who in prop::sample::select(vec!["n1", "n2"]),
        reader in any::<bool>(),
        action in prop::sample::select(Action::ALL.to_vec()),
        channel in name(),
        sub in pattern(),
        risk in 0u8..100,
    ) {
        let sliced = build(true);
        let flat = build(false);
        let subject = subject(kind, segment, who, reader);
        let facts = Facts { risk, ..Facts::default() };
        let channel = Channel::parse(&channel).unwrap();
        let sub = ChannelPattern::parse(&sub).unwrap();
        for resource in [Resource::Channel(&channel), Resource::Pattern(&sub), Resource::Segment(segment)] {
            let a = sliced.decide(&subject, action, &resource, &facts, 1_000);
            let b = flat.decide(&subject, action, &resource, &facts, 1_000);
            prop_assert_eq!(comparable(&a), comparable(&b), "{} {}", action, resource);
        }
    }

    #[test]
    fn the_cache_answers_what_the_engine_would(
        requests in prop::collection::vec(
            (
                prop::sample::select(vec![Action::Publish, Action::Reply, Action::Reply, Action::Request]),
                prop_oneof![3 => token().prop_map(|t| format!("a.{t}")), 1 => name()],
                0u8..6,
                0u64..700,
            ),
            1..40,
        ),
        reader in any::<bool>(),
        grant_end in 0u64..8000,
    ) {
        let engine = Engine::new(build(true));
        let subject = subject(1, "a", "n1", reader);
        let options = CacheOptions { capacity: 8, ttl_ms: 1_000 };
        let mut cache = DecisionCache::new(subject.clone(), options);
        let mut now = 0;
        let mut risk = 0;
        for (action, channel, step, dt) in requests {
            now += dt;
            // A change of facts is reported by bumping the epoch.
            if step == 0 {
                risk = (risk + 40) % 100;
                engine.bump_epoch();
            }
            // Grants end by themselves: no bump needed.
            let grants = vec![ActiveGrant { id: "g1".to_owned(), not_after_ms: grant_end }];
            let facts = Facts { risk, grants, ..Facts::default() };
            let channel = Channel::parse(&channel).unwrap();
            let resource = Resource::Channel(&channel);
            let cached = cache.decide(&engine, action, &resource, &facts, now);
            let fresh = engine.decide(&subject, action, &resource, &facts, now);
            prop_assert_eq!(&*cached, &fresh);
        }
    }
}
