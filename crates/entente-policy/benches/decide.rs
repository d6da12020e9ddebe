#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Authorization decisions.
//!
//! - `cached/hit`: a per-connection cache hit (the hub's hot path).
//! - `miss/<n>`: a cache miss with `n` policies: the decision the hub makes the first time a
//!   connection uses a channel in an epoch.
//! - `uncached/sliced/<n>` and `uncached/flat/<n>`: a decision through the engine with `n`
//!   generated policies, sliced by (action, namespace) or not.
//! - `load/<n>`: parsing, validating and slicing `n` policies.
//!
//! The policies are what a deployment with `n / 10` segments would write: per segment, one
//! permit for its namespace, one forbid on a secret sub-namespace, one `@cross_segment`
//! permit, and seven per-agent permits with a risk condition; plus one global forbid.

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use entente_policy::{
    Action, CacheOptions, DecisionCache, Engine, Facts, PolicySet, Resource, Subject,
};
use entente_types::{Channel, Principal};

const SIZES: [usize; 3] = [10, 100, 1000];
const NOW: u64 = 1_700_000_000_000;

fn policies(n: usize) -> String {
    let segments = (n / 10).max(1);
    let mut text = String::new();
    let mut count = 0;
    let mut push = |text: &mut String, policy: String| {
        if count < n {
            text.push_str(&policy);
            text.push('\n');
            count += 1;
        }
    };
    push(
        &mut text,
        "@id(\"global-risk\") forbid (principal, action, resource) when { context.risk > 90 };"
            .to_owned(),
    );
    for s in 0..segments {
        let next = (s + 1) % segments;
        push(
            &mut text,
            format!(
                "@id(\"seg{s}\") permit (principal in Segment::\"seg{s}\", action in [Action::\"publish\", Action::\"subscribe\"], resource in Namespace::\"seg{s}\");"
            ),
        );
        push(
            &mut text,
            format!(
                "@id(\"seg{s}-secret\") forbid (principal, action, resource in Namespace::\"seg{s}.secret\") unless {{ principal in Role::\"admin\" }};"
            ),
        );
        push(
            &mut text,
            format!(
                "@id(\"seg{s}-bridge\") @cross_segment permit (principal in Segment::\"seg{next}\", action == Action::\"subscribe\", resource == Channel::\"seg{s}.results\");"
            ),
        );
        for k in 0..7 {
            push(
                &mut text,
                format!(
                    "@id(\"seg{s}-agent{k}\") permit (principal == Agent::\"spiffe://example.org/agent/seg{s}/agent{k}\", action == Action::\"publish\", resource == Channel::\"seg{s}.tasks.agent{k}\") when {{ context.risk < 50 }};"
                ),
            );
        }
    }
    let mut padding = 0;
    while count < n {
        let _ = writeln!(
            text,
            "@id(\"pad{padding}\") permit (principal is Agent, action == Action::\"admin\", resource is Segment) when {{ context.approvals > {padding} }};"
        );
        count += 1;
        padding += 1;
    }
    text
}

fn set(n: usize, slicing: bool) -> PolicySet {
    PolicySet::builder()
        .source("bench.cedar", policies(n))
        .slicing(slicing)
        .build()
        .unwrap()
}

fn subject() -> Subject {
    Subject::new(
        Principal::parse("spiffe://example.org/agent/seg0/agent3").unwrap(),
        ["worker"],
    )
}

fn bench(c: &mut Criterion) {
    let channel = Channel::parse("seg0.tasks.agent3").unwrap();
    let resource = Resource::Channel(&channel);
    let facts = Facts {
        risk: 10,
        hub: "hub-1".to_owned(),
        ..Facts::default()
    };

    let engine = Engine::new(set(1000, true));
    let mut cache = DecisionCache::new(subject(), CacheOptions::default());
    assert!(
        cache
            .decide(&engine, Action::Publish, &resource, &facts, NOW)
            .allowed
    );
    c.bench_function("cached/hit", |b| {
        b.iter(|| {
            let decision =
                cache.decide(&engine, Action::Publish, black_box(&resource), &facts, NOW);
            black_box(decision.allowed)
        })
    });

    // A miss through the cache, as the hub's session sees it: the context is reused within
    // the second, the rest is built and evaluated.
    let mut group = c.benchmark_group("miss");
    for n in SIZES {
        let engine = Engine::new(set(n, true));
        let mut cache = DecisionCache::new(subject(), CacheOptions::default());
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                cache.clear();
                let decision =
                    cache.decide(&engine, Action::Publish, black_box(&resource), &facts, NOW);
                black_box(decision.allowed)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("uncached");
    for n in SIZES {
        for (name, slicing) in [("sliced", true), ("flat", false)] {
            let engine = Engine::new(set(n, slicing));
            let subject = subject();
            let decision = engine.decide(&subject, Action::Publish, &resource, &facts, NOW);
            assert!(decision.allowed, "{n} {name}: {decision:?}");
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| {
                    let decision =
                        engine.decide(&subject, Action::Publish, black_box(&resource), &facts, NOW);
                    black_box(decision.allowed)
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    for n in SIZES {
        let text = policies(n);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                PolicySet::parse("bench.cedar", black_box(&text))
                    .unwrap()
                    .len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
