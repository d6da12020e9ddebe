//! Grant definitions in policies: `@grant`, `@approvals` and `@max_duration` are collected
//! at load, and every bad use is a rules problem with its location.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_policy::{
    Action, ActiveGrant, DEFAULT_MAX_DURATION_MS, Facts, LoadError, PolicySet, Problem, Resource,
    Subject,
};
use entente_types::{Channel, Principal};

const HOUR: u64 = 3_600_000;

fn rules(result: Result<PolicySet, LoadError>) -> Vec<Problem> {
    match result {
        Err(LoadError::Rules(problems)) => problems,
        Err(other) => panic!("expected a rules error, got {other}"),
        Ok(_) => panic!("should be refused"),
    }
}

fn one_problem(text: &str) -> Problem {
    let problems = rules(PolicySet::parse("g.cedar", text));
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems.into_iter().next().unwrap()
}

fn permit(annotations: &str, name: &str) -> String {
    format!(
        "{annotations}\npermit (principal, action == Action::\"subscribe\", resource in Namespace::\"demo\")\n  when {{ context.grants.contains(\"{name}\") }};\n"
    )
}

#[test]
fn definitions_are_collected_with_defaults() {
    let text = [
        permit("@id(\"a\") @grant(\"demo-read\")", "demo-read"),
        permit(
            "@id(\"b\") @grant(\"payments\") @approvals(\"2\") @max_duration(\"1h30m\")",
            "payments",
        ),
        // A second policy of the same grant, agreeing.
        permit(
            "@id(\"c\") @grant(\"payments\") @approvals(\"2\") @max_duration(\"90m\")",
            "payments",
        ),
        // A forbid lifted by a grant is a use too.
        "@id(\"d\") @grant(\"break-glass\")\nforbid (principal, action, resource in Namespace::\"vault\") unless { context.grants.contains(\"break-glass\") };\n".to_owned(),
    ]
    .concat();
    let set = PolicySet::parse("g.cedar", &text).unwrap();
    let names: Vec<&str> = set.grant_definitions().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["break-glass", "demo-read", "payments"]);

    let demo = set.grant_definition("demo-read").unwrap();
    assert_eq!(demo.approvals, 1);
    assert_eq!(demo.max_duration_ms, DEFAULT_MAX_DURATION_MS);
    assert_eq!(demo.max_duration_ms, 8 * HOUR);
    let payments = set.grant_definition("payments").unwrap();
    assert_eq!(payments.approvals, 2);
    assert_eq!(payments.max_duration_ms, 90 * 60_000);
    let ids: Vec<&str> = payments.policies.iter().map(|p| p.as_str()).collect();
    assert_eq!(ids, ["b", "c"]);
    assert_eq!(set.policy("b").unwrap().grant.as_deref(), Some("payments"));
    assert_eq!(set.policy("a").unwrap().grant.as_deref(), Some("demo-read"));
    assert!(set.grant_definition("nope").is_none());
}

#[test]
fn the_seven_day_ceiling_is_allowed() {
    let set = PolicySet::parse(
        "g.cedar",
        &permit(
            "@grant(\"long\") @max_duration(\"7d\") @approvals(\"16\")",
            "long",
        ),
    )
    .unwrap();
    let long = set.grant_definition("long").unwrap();
    assert_eq!((long.approvals, long.max_duration_ms), (16, 7 * 24 * HOUR));
}

#[test]
fn bad_approvals_are_refused() {
    for value in ["0", "17", "x", "+2", "-1", " 2", "2.0", "", "99999999999"] {
        let p = one_problem(&permit(
            &format!("@grant(\"g\") @approvals(\"{value}\")"),
            "g",
        ));
        assert!(p.message.contains("@approvals"), "{value}: {p}");
        assert_eq!(p.location, Some((1, 1)), "{value}: {p}");
    }
}

#[test]
fn bad_max_durations_are_refused() {
    for value in ["0s", "8d", "7d1ms", "soon", "1", "", "1h1h", "-1h"] {
        let p = one_problem(&permit(
            &format!("@grant(\"g\") @max_duration(\"{value}\")"),
            "g",
        ));
        assert!(p.message.contains("@max_duration"), "{value}: {p}");
        assert!(p.message.contains("7d"), "{value}: {p}");
    }
}

#[test]
fn bad_grant_names_are_refused() {
    for name in ["", "has space", "é", &"x".repeat(65), "a\"b"] {
        let text = format!(
            "@grant(\"{}\")\npermit (principal is Agent, action, resource is Channel);\n",
            name.escape_default()
        );
        let p = one_problem(&text);
        assert!(p.message.contains("grant name"), "{name}: {p}");
    }
}

#[test]
fn approvals_or_max_duration_need_a_grant() {
    for annotation in ["@approvals(\"2\")", "@max_duration(\"1h\")"] {
        let p = one_problem(&permit(annotation, "g"));
        assert!(p.message.contains("add `@grant"), "{p}");
    }
}

#[test]
fn a_grant_its_policy_never_tests_is_refused() {
    let text = "\n\n@id(\"p\")\n@grant(\"demo-read\")\npermit (principal is Agent, action == Action::\"subscribe\", resource)\n  when { context.grants.contains(\"other\") || context.grants.contains(\"demo-reads\") };\n";
    let p = one_problem(text);
    assert_eq!(p.source, "g.cedar");
    assert_eq!(p.location, Some((3, 1)));
    assert_eq!(p.policy.as_deref(), Some("p"));
    assert!(
        p.message
            .contains("never tests `context.grants.contains(\"demo-read\")`"),
        "{p}"
    );
    assert!(
        p.to_string().starts_with("g.cedar:3:1: policy `p`: "),
        "{p}"
    );

    // No condition at all.
    let p = one_problem("@grant(\"g\") permit (principal is Agent, action, resource is Channel);");
    assert!(p.message.contains("never tests"), "{p}");

    // The index form is the same test.
    PolicySet::parse(
        "g.cedar",
        "@grant(\"g\") permit (principal is Agent, action, resource is Channel) when { context[\"grants\"].contains(\"g\") };",
    )
    .unwrap();
}

/// A grant opens every policy that tests its name: one that does without saying so (no
/// `@grant`, or another's) is refused, in another file too; a name no `@grant` defines may
/// still be tested (such a grant is never given).
#[test]
fn a_policy_testing_a_defined_grant_must_carry_it() {
    let defined = permit(
        "@id(\"a\") @grant(\"demo-read\") @approvals(\"2\")",
        "demo-read",
    );
    let admin = "@id(\"sneaky\")\npermit (principal, action == Action::\"admin\", resource == Hub::\"hub\")\n  when { context.grants.contains(\"demo-read\") };\n";
    let problems = rules(
        PolicySet::builder()
            .source("grants.cedar", &defined)
            .source("admin.cedar", admin)
            .build(),
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].source, "admin.cedar");
    assert_eq!(problems[0].policy.as_deref(), Some("sneaky"));
    assert!(
        problems[0]
            .message
            .contains("without `@grant(\"demo-read\")`")
            && problems[0].message.contains("defined by `a`"),
        "{problems:?}"
    );
    // Under another grant's name, the same.
    let other = [
        defined.clone(),
        permit("@id(\"b\") @grant(\"other\")", "other"),
        "@id(\"both\") @grant(\"other\")\npermit (principal, action == Action::\"subscribe\", resource in Namespace::\"x\")\n  when { context.grants.contains(\"other\") || context.grants.contains(\"demo-read\") };\n".to_owned(),
    ]
    .concat();
    assert_eq!(one_problem(&other).policy.as_deref(), Some("both"));
    // Carrying it, it loads; a name nobody defines may be tested.
    let carried = [
        defined,
        permit(
            "@id(\"c\") @grant(\"demo-read\") @approvals(\"2\")",
            "demo-read",
        ),
        permit("@id(\"d\")", "undefined-grant"),
    ]
    .concat();
    let set = PolicySet::parse("g.cedar", &carried).unwrap();
    assert_eq!(set.grant_definition("demo-read").unwrap().policies.len(), 2);
    // Reading the grants any other way, which grants open it could not be shown.
    for condition in [
        "context.grants.containsAny([\"demo-read\"])",
        "context.grants.containsAll([\"demo-read\"])",
        "!context.grants.isEmpty()",
        "context.grants == [\"demo-read\"]",
        "context.grants.contains(resource.name)",
    ] {
        let text = format!(
            "@id(\"p\") @grant(\"demo-read\")\npermit (principal, action == Action::\"subscribe\", resource in Namespace::\"demo\")\n  when {{ context.grants.contains(\"demo-read\") && {condition} }};\n"
        );
        let p = one_problem(&text);
        assert!(
            p.message.contains("reads `context.grants` other than"),
            "{condition}: {p}"
        );
    }
}

#[test]
fn conflicting_definitions_across_files_are_refused() {
    let result = PolicySet::builder()
        .source(
            "a.cedar",
            permit("@id(\"a\") @grant(\"g\") @approvals(\"2\")", "g"),
        )
        .source(
            "b.cedar",
            format!("\n{}", permit("@id(\"b\") @grant(\"g\")", "g")),
        )
        .build();
    let problems = rules(result);
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert_eq!((p.source.as_str(), p.location), ("b.cedar", Some((2, 1))));
    assert!(p.message.contains("a.cedar:1:1"), "{p}");
    assert!(p.message.contains("must agree"), "{p}");

    let problems = rules(
        PolicySet::builder()
            .source(
                "a.cedar",
                permit("@id(\"a\") @grant(\"g\") @max_duration(\"1h\")", "g"),
            )
            .source(
                "b.cedar",
                permit("@id(\"b\") @grant(\"g\") @max_duration(\"2h\")", "g"),
            )
            .build(),
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn explain_names_the_grant_that_opened_a_decision() {
    let set = PolicySet::parse(
        "g.cedar",
        &permit("@id(\"demo\") @grant(\"demo-read\")", "demo-read"),
    )
    .unwrap();
    let subject = Subject::new(
        Principal::parse("spiffe://acme.internal/agent/demo/alice").unwrap(),
        Vec::<String>::new(),
    );
    let channel = Channel::parse("demo.logs").unwrap();
    let now = 1_800_000_000_000;
    let facts = Facts {
        grants: vec![ActiveGrant {
            id: "demo-read".to_owned(),
            not_after_ms: now + HOUR,
        }],
        ..Facts::default()
    };
    let text = set.explain(
        &subject,
        Action::Subscribe,
        &Resource::Channel(&channel),
        &facts,
        now,
    );
    assert!(text.starts_with("ALLOW"), "{text}");
    assert!(
        text.contains("demo (g.cedar:1:1), opened by grant `demo-read`"),
        "{text}"
    );
    let denied = set.explain(
        &subject,
        Action::Subscribe,
        &Resource::Channel(&channel),
        &Facts::default(),
        now,
    );
    assert!(denied.starts_with("DENY"), "{denied}");
}
