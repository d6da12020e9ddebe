//! Loading policies: every kind of bad input is refused with a clear error, and the running
//! set and epoch stay as they were.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_policy::{BASE_POLICIES, Effect, Engine, LoadError, PolicySet, Problem};

const GOOD: &str = r#"
@id("research-publishes")
permit (principal in Segment::"research", action == Action::"publish",
        resource in Namespace::"research");
"#;

fn problems(result: Result<PolicySet, LoadError>) -> (LoadError, Vec<Problem>) {
    let error = result.expect_err("should be refused");
    let problems = error.problems().to_vec();
    assert!(!problems.is_empty(), "{error}");
    (error, problems)
}

#[test]
fn good_policies_load_with_ids_and_locations() {
    let set = PolicySet::builder()
        .source("research.cedar", GOOD)
        .source(
            "misc.cedar",
            "\n\n  forbid (principal, action, resource) when { context.risk > 90 };\n",
        )
        .build()
        .unwrap();
    assert_eq!(set.len(), 2);
    let research = set.policy("research-publishes").unwrap();
    assert_eq!(
        (research.source.as_str(), research.line, research.column),
        ("research.cedar", 2, 1)
    );
    assert_eq!(research.effect, Effect::Permit);
    let unnamed = set.policy("misc.cedar#0").unwrap();
    assert_eq!((unnamed.line, unnamed.column), (3, 3));
    assert_eq!(unnamed.effect, Effect::Forbid);
    assert!(unnamed.text.starts_with("forbid"));
}

#[test]
fn the_base_policies_load() {
    let set = PolicySet::parse("base", BASE_POLICIES).unwrap();
    assert!(set.policy("entente.direct-within-segment").is_some());
}

#[test]
fn malformed_syntax_is_a_syntax_error_with_its_location() {
    let text = "permit (principal is Agent, action, resource is Channel);\n\npermit (principal action, resource);\n";
    let (error, problems) = problems(PolicySet::parse("bad.cedar", text));
    assert!(matches!(error, LoadError::Syntax(_)), "{error}");
    let first = &problems[0];
    assert_eq!(first.source, "bad.cedar");
    assert_eq!(first.location.map(|(line, _)| line), Some(3), "{first}");
    assert!(
        error
            .to_string()
            .starts_with("policy syntax error: bad.cedar:3:"),
        "{error}"
    );
}

#[test]
fn an_unknown_entity_type_is_invalid() {
    let text = r#"@id("p") permit (principal == User::"alice", action, resource);"#;
    let (error, problems) = problems(PolicySet::parse("p.cedar", text));
    assert!(matches!(error, LoadError::Invalid(_)), "{error}");
    assert_eq!(problems[0].policy.as_deref(), Some("p"));
    assert_eq!(problems[0].location, Some((1, 31)), "{}", problems[0]);
    assert!(problems[0].message.contains("User"), "{}", problems[0]);
}

#[test]
fn an_unknown_attribute_is_invalid() {
    let text = "permit (principal is Agent, action, resource is Channel)\n  when { principal.clearance > 3 };";
    let (error, problems) = problems(PolicySet::parse("p.cedar", text));
    assert!(matches!(error, LoadError::Invalid(_)), "{error}");
    assert_eq!(problems[0].policy.as_deref(), Some("p.cedar#0"));
    assert_eq!(
        problems[0].location.map(|(line, _)| line),
        Some(2),
        "{}",
        problems[0]
    );
    assert!(problems[0].message.contains("clearance"), "{}", problems[0]);
}

#[test]
fn an_unknown_action_is_invalid() {
    let text = r#"permit (principal is Agent, action == Action::"delete", resource);"#;
    let (error, problems) = problems(PolicySet::parse("p.cedar", text));
    assert!(matches!(error, LoadError::Invalid(_)), "{error}");
    assert!(problems[0].message.contains("delete"), "{}", problems[0]);
}

#[test]
fn an_action_on_a_resource_it_does_not_take_is_invalid() {
    // `publish` applies to channels only; cedar reports an impossible policy as a warning,
    // which Entente refuses like an error.
    let text = r#"permit (principal is Agent, action == Action::"publish", resource is Agent);"#;
    let (error, problems) = problems(PolicySet::parse("p.cedar", text));
    assert!(matches!(error, LoadError::Invalid(_)), "{error}");
    assert_eq!(problems[0].policy.as_deref(), Some("p.cedar#0"));
}

#[test]
fn a_type_error_in_a_condition_is_invalid() {
    let text = r#"permit (principal is Agent, action, resource is Channel) when { context.risk == "high" };"#;
    let (error, _) = problems(PolicySet::parse("p.cedar", text));
    assert!(matches!(error, LoadError::Invalid(_)), "{error}");
}

#[test]
fn duplicate_ids_are_refused() {
    let (error, problems) = problems(
        PolicySet::builder()
            .source("a.cedar", GOOD)
            .source("b.cedar", GOOD)
            .build(),
    );
    assert!(matches!(error, LoadError::Rules(_)), "{error}");
    assert_eq!(problems[0].source, "b.cedar");
    assert!(problems[0].message.contains("a.cedar:2"), "{}", problems[0]);
}

/// An annotation the loader does not read is refused, with the known one it may stand for:
/// misspelled, `@approvals` would be the default of one and a two-person rule a one-person
/// one; a flag given a value (`@cross_segment("false")`) would still be on.
#[test]
fn unknown_annotations_and_flags_with_values_are_refused() {
    let permit = "permit (principal in Segment::\"finance\", action == Action::\"publish\", \
                  resource in Namespace::\"payments\") \
                  when { context.grants.contains(\"payments-write\") };";
    for (annotation, says) in [
        ("@approval(\"3\")", "did you mean `@approvals`?"),
        ("@max_duraton(\"15m\")", "did you mean `@max_duration`?"),
        ("@Rate(\"10/s\")", "did you mean `@rate`?"),
        (
            "@description(\"payments\")",
            "unknown annotation `@description`",
        ),
        (
            "@cross_segment(\"false\")",
            "`@cross_segment` takes no value",
        ),
        ("@hold(\"no\")", "`@hold` takes no value"),
    ] {
        let text = format!("@id(\"pay\")\n@grant(\"payments-write\")\n{annotation}\n{permit}\n");
        let (error, problems) = problems(PolicySet::parse("pay.cedar", &text));
        assert!(
            matches!(error, LoadError::Rules(_)),
            "{annotation}: {error}"
        );
        assert_eq!(problems.len(), 1, "{annotation}: {error}");
        assert_eq!(problems[0].policy.as_deref(), Some("pay"));
        assert_eq!(problems[0].location, Some((1, 1)));
        assert!(problems[0].message.contains(says), "{annotation}: {error}");
    }
    // Spelled right, the same policy loads.
    let text = format!("@id(\"pay\")\n@grant(\"payments-write\")\n@approvals(\"3\")\n{permit}\n");
    let set = PolicySet::parse("pay.cedar", &text).unwrap();
    assert_eq!(set.grant_definition("payments-write").unwrap().approvals, 3);
}

#[test]
fn ids_and_source_names_with_control_or_invisible_characters_are_refused() {
    // A line break, a terminal escape, a bidirectional override: each in an `@id`.
    for (escaped, code) in [
        ("\\n", "U+000A"),
        ("\\u{1b}", "U+001B"),
        ("\\u{202e}", "U+202E"),
    ] {
        let text = format!(
            "@id(\"ok{escaped}forged\")\npermit (principal in Segment::\"research\", \
             action == Action::\"publish\", resource in Namespace::\"research\");\n"
        );
        let (error, problems) = problems(PolicySet::parse("ids.cedar", &text));
        assert!(matches!(error, LoadError::Rules(_)), "{error}");
        assert_eq!(problems.len(), 1, "{error}");
        assert_eq!(problems[0].source, "ids.cedar");
        assert_eq!(problems[0].location, Some((1, 1)));
        assert_eq!(
            problems[0].policy.as_deref(),
            Some(format!("ok{escaped}forged").as_str())
        );
        assert!(problems[0].message.contains("policy ID"), "{error}");
        assert!(problems[0].message.contains(code), "{error}");
        assert!(
            !error
                .to_string()
                .chars()
                .any(entente_types::text::is_deceptive),
            "{error:?}"
        );
    }
    for name in ["a\nb.cedar", "\u{1b}[2Kb.cedar", "evil\u{202e}radec.txt"] {
        let (error, problems) = problems(
            PolicySet::builder()
                .source("good.cedar", GOOD)
                .source(name, "forbid (principal, action, resource);")
                .build(),
        );
        assert!(matches!(error, LoadError::Rules(_)), "{error}");
        assert_eq!(problems.len(), 1, "{error}");
        assert_eq!(problems[0].source, name.escape_debug().to_string());
        assert!(problems[0].message.contains("source name"), "{error}");
        assert!(
            !error
                .to_string()
                .chars()
                .any(entente_types::text::is_deceptive),
            "{error:?}"
        );
    }
}

#[test]
fn templates_are_refused() {
    let text = r#"permit (principal == ?principal, action, resource);"#;
    let (error, _) = problems(PolicySet::parse("t.cedar", text));
    assert!(matches!(error, LoadError::Rules(_)), "{error}");
    assert!(error.to_string().contains("templates"), "{error}");
}

#[test]
fn cross_segment_must_be_a_permit_naming_its_resource() {
    for text in [
        r#"@cross_segment permit (principal in Segment::"a", action == Action::"publish", resource);"#,
        r#"@cross_segment permit (principal is Agent, action, resource is Channel) when { resource.name like "b.*" };"#,
        r#"@cross_segment forbid (principal, action, resource == Channel::"b.x");"#,
        // Scopes that name every segment's channels at once.
        r#"@cross_segment permit (principal in Segment::"lab", action == Action::"subscribe", resource in Segment::"*");"#,
        r#"@cross_segment permit (principal in Segment::"lab", action == Action::"subscribe", resource == Channel::">");"#,
        r#"@cross_segment permit (principal in Segment::"lab", action == Action::"subscribe", resource == Channel::"*.results");"#,
        r#"@cross_segment permit (principal in Segment::"lab", action == Action::"subscribe", resource is Channel in Segment::"*");"#,
    ] {
        let (error, problems) = problems(PolicySet::parse("x.cedar", text));
        assert!(matches!(error, LoadError::Rules(_)), "{error}");
        assert_eq!(problems[0].location, Some((1, 1)), "{text}");
    }
    // Naming one segment, one namespace or one literal channel is what it is for.
    for scope in [
        r#"resource in Segment::"research""#,
        r#"resource in Namespace::"research.results""#,
        r#"resource == Channel::"research.results""#,
    ] {
        let text = format!(
            r#"@cross_segment permit (principal in Segment::"lab", action == Action::"subscribe", {scope});"#
        );
        assert!(PolicySet::parse("x.cedar", &text).is_ok(), "{text}");
    }
}

#[test]
fn a_permit_open_in_principal_and_resource_is_refused_for_opening_everything_to_humans() {
    for text in [
        r#"permit (principal, action, resource);"#,
        r#"permit (principal, action == Action::"subscribe", resource is Channel);"#,
        r#"permit (principal, action, resource) when { resource.name == "public.news" };"#,
    ] {
        let (error, problems) = problems(PolicySet::parse("x.cedar", text));
        assert!(matches!(error, LoadError::Rules(_)), "{error}");
        assert!(problems[0].message.contains("every human"), "{text}");
        assert_eq!(problems[0].location, Some((1, 1)), "{text}");
    }
    // Naming either side, or forbidding, is fine.
    for text in [
        r#"permit (principal is Agent, action, resource is Channel);"#,
        r#"permit (principal is Human, action == Action::"subscribe", resource is Channel);"#,
        r#"permit (principal in Role::"ops", action, resource is Channel);"#,
        r#"permit (principal, action == Action::"subscribe", resource == Channel::"public.news");"#,
        r#"forbid (principal, action, resource) when { context.risk > 80 };"#,
    ] {
        assert!(PolicySet::parse("x.cedar", text).is_ok(), "{text}");
    }
}

#[test]
fn what_a_policy_reads_is_recorded() {
    let set = PolicySet::parse(
        "x.cedar",
        r#"
        @id("reads") permit (principal in Role::"ops", action, resource in Namespace::"a")
            when { context.risk < 5 && context["now"] > 0 && context has hub && context.risk > 1 };
        @id("plain") permit (principal is Agent, action, resource in Namespace::"a");
        @id("role-in-condition") forbid (principal, action, resource)
            when { principal in Role::"contractor" };
        "#,
    )
    .unwrap();
    let reads = set.policy("reads").unwrap();
    assert_eq!(reads.context_read, ["hub", "now", "risk"]);
    assert!(reads.names_roles);
    let plain = set.policy("plain").unwrap();
    assert!(plain.context_read.is_empty() && !plain.names_roles);
    assert!(set.policy("role-in-condition").unwrap().names_roles);
}

#[test]
fn namespace_owners_are_checked() {
    for (namespace, segment) in [("a.b", "s"), ("", "s"), ("a", "s.t"), ("a", "")] {
        let result = PolicySet::builder()
            .namespace_owner(namespace, segment)
            .build();
        assert!(
            matches!(result, Err(LoadError::Rules(_))),
            "{namespace} {segment}"
        );
    }
}

#[test]
fn a_missing_file_is_a_read_error() {
    let error = PolicySet::builder()
        .file("/nonexistent/entente/policies.cedar")
        .unwrap_err();
    assert!(matches!(error, LoadError::Read { .. }), "{error}");
    assert!(error.to_string().contains("policies.cedar"));
}

#[test]
fn files_load() {
    let dir = std::env::temp_dir().join(format!("entente-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("research.cedar");
    std::fs::write(&path, GOOD).unwrap();
    let set = PolicySet::builder().file(&path).unwrap().build().unwrap();
    assert_eq!(
        set.policy("research-publishes").unwrap().source,
        path.display().to_string()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_failed_load_leaves_the_running_set_and_epoch_unchanged() {
    let engine = Engine::new(PolicySet::parse("good.cedar", GOOD).unwrap());
    assert_eq!(engine.epoch(), 1);
    for bad in [
        "permit (principal, action resource);",
        r#"permit (principal == User::"x", action, resource);"#,
        r#"@cross_segment permit (principal is Agent, action, resource is Channel);"#,
    ] {
        let result = engine.load(PolicySet::builder().source("new.cedar", bad));
        assert!(result.is_err());
        assert_eq!(engine.epoch(), 1);
        let running = engine.policies();
        assert_eq!(running.len(), 1);
        assert!(running.policy("research-publishes").is_some());
    }
    // A good load swaps and bumps.
    let epoch = engine
        .load(PolicySet::builder().source("new.cedar", "forbid (principal, action, resource);"))
        .unwrap();
    assert_eq!(epoch, 2);
    assert_eq!(engine.epoch(), 2);
    assert!(engine.policies().policy("new.cedar#0").is_some());
    // So do other changes.
    assert_eq!(engine.bump_epoch(), 3);
    assert_eq!(engine.replace(PolicySet::empty()), 4);
    assert!(engine.policies().is_empty());
}

#[test]
fn the_hub_is_named_by_admin_policies_only_and_opened_to_agents_only_by_name() {
    // `admin` takes the hub; a @cross_segment permit naming it opens it to agents.
    for text in [
        r#"permit (principal == Human::"spiffe://example.org/human/ann", action == Action::"admin", resource == Hub::"hub");"#,
        r#"permit (principal is Human, action == Action::"admin", resource == Hub::"hub");"#,
        r#"@cross_segment permit (principal in Segment::"ops", action == Action::"admin", resource == Hub::"hub");"#,
        r#"@cross_segment permit (principal in Segment::"ops", action == Action::"admin", resource in Hub::"hub");"#,
        r#"permit (principal == Human::"spiffe://example.org/human/ann", action == Action::"enroll", resource is Human);"#,
    ] {
        assert!(PolicySet::parse("x.cedar", text).is_ok(), "{text}");
    }
    // No other action takes it.
    for text in [
        r#"permit (principal is Human, action == Action::"publish", resource == Hub::"hub");"#,
        r#"permit (principal is Human, action == Action::"enroll", resource == Hub::"hub");"#,
        r#"permit (principal is Human, action == Action::"revoke", resource is Hub);"#,
    ] {
        let (error, _) = problems(PolicySet::parse("x.cedar", text));
        assert!(matches!(error, LoadError::Invalid(_)), "{text}: {error}");
    }
    // A @cross_segment permit must name the hub, not every hub; and the hub is no exception
    // to the rule that a permit must scope its principal or its resource.
    for (text, says) in [
        (
            r#"@cross_segment permit (principal in Segment::"ops", action == Action::"admin", resource is Hub);"#,
            "must name what it opens",
        ),
        (
            r#"permit (principal, action == Action::"admin", resource is Hub);"#,
            "every human",
        ),
    ] {
        let (error, problems) = problems(PolicySet::parse("x.cedar", text));
        assert!(matches!(error, LoadError::Rules(_)), "{text}: {error}");
        assert!(
            problems[0].message.contains(says),
            "{text}: {}",
            problems[0]
        );
    }
}

/// A policy with `n` nested `if`s in its condition.
fn nested_ifs(n: usize) -> String {
    format!(
        "permit (principal in Segment::\"research\", action, resource is Channel) when {{ {}true{} }};",
        "if true then ".repeat(n),
        " else false".repeat(n)
    )
}

#[test]
fn hostile_nesting_is_refused_without_exhausting_the_stack() {
    // Found by the `policy_load` fuzz target: it used to overflow the parser's stack.
    let found = include_str!(
        "../../../fuzz/regressions/policy_load/stack-overflow-nested-parentheses.cedar"
    );
    let (error, found) = problems(PolicySet::parse("found.cedar", found));
    assert!(matches!(error, LoadError::Rules(_)), "{error}");
    assert_eq!(found[0].location, Some((1, 73)), "{error}");
    assert!(
        found[0].message.contains("nested more than 32 deep"),
        "{error}"
    );

    for (text, expected) in [
        (
            format!(
                "permit (principal, action, resource) when {{ {}1]].isEmpty() }};",
                "[".repeat(10_000)
            ),
            "nested more than 32 deep",
        ),
        (
            format!(
                "permit (principal, action, resource) when {{ 1{} == 2 }};",
                " + 1".repeat(200_000)
            ),
            "more than 1024 operators",
        ),
        (
            format!(
                "permit (principal, action, resource) when {{ context{} }};",
                ".a".repeat(100_000)
            ),
            "more than 1024 operators",
        ),
    ] {
        let (error, _) = problems(PolicySet::parse("deep.cedar", &text));
        assert!(matches!(error, LoadError::Rules(_)), "{error}");
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn expressions_are_bounded_in_depth_and_the_deepest_allowed_decides_on_an_ordinary_stack() {
    use entente_policy::{Action, Facts, MAX_EXPRESSION_DEPTH, Resource, Subject};
    use entente_types::{Channel, Principal};

    // Within the scan's bounds (one bracket level, few operators per `if`), but too deep once
    // parsed.
    let (error, problems) = problems(PolicySet::parse(
        "deep.cedar",
        &nested_ifs(MAX_EXPRESSION_DEPTH),
    ));
    assert!(matches!(error, LoadError::Rules(_)), "{error}");
    assert_eq!(problems[0].policy.as_deref(), Some("deep.cedar#0"));
    assert_eq!(problems[0].location, Some((1, 1)));
    assert!(
        problems[0].message.contains("nested more than 32 deep"),
        "{error}"
    );

    // The deepest allowed loads and decides on this thread's stack: 2 MiB for a test thread,
    // as on the hub's runtime.
    let set = PolicySet::parse("deep.cedar", &nested_ifs(MAX_EXPRESSION_DEPTH - 1)).unwrap();
    let alice = Subject::new(
        Principal::parse("spiffe://example.org/agent/research/alice").unwrap(),
        Vec::<String>::new(),
    );
    let channel = Channel::parse("research.results").unwrap();
    let decision = set.decide(
        &alice,
        Action::Publish,
        &Resource::Channel(&channel),
        &Facts::default(),
        1,
    );
    assert!(decision.allowed, "{decision:?}");
}

/// The engine answers `may_forbid` for the set it runs, before and after a swap, as the set
/// itself does.
#[test]
fn the_engine_tells_which_actions_a_forbid_may_apply_to() {
    use entente_policy::Action;
    let permits = r#"@id("p") permit (principal is Agent, action, resource);"#;
    let forbid = r#"
        @id("no-payroll")
        forbid (principal, action == Action::"subscribe", resource in Namespace::"payroll");"#;
    let engine = Engine::new(PolicySet::parse("p", permits).unwrap());
    assert!(!engine.may_forbid(Action::Subscribe));
    engine.replace(PolicySet::parse("p", &format!("{permits}{forbid}")).unwrap());
    assert!(engine.may_forbid(Action::Subscribe));
    assert!(!engine.may_forbid(Action::Publish));
    engine.replace(PolicySet::parse("p", permits).unwrap());
    assert!(!engine.may_forbid(Action::Subscribe));
}
