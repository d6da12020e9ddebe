//! `@rate` and `@burst`: what the loader accepts, what it refuses and where, and what a
//! loaded set says about its rated permits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_policy::{Action, Facts, LoadError, Period, PolicyRate, PolicySet, Resource, Subject};
use entente_types::{Channel, Principal};

const NOW: u64 = 1_700_000_000_000;

const RATED: &str = r#"
    @id("sandbox-publishes")
    @rate("10/s")
    permit (principal in Segment::"sandbox", action == Action::"publish",
            resource in Namespace::"sandbox");
    @id("sandbox-reports")
    @rate("60/min") @burst("5")
    permit (principal in Segment::"sandbox", action == Action::"publish",
            resource == Channel::"sandbox.reports");
    @id("sandbox-listens")
    permit (principal in Segment::"sandbox", action == Action::"subscribe",
            resource in Namespace::"sandbox");
"#;

/// A refused set's problems: where, which policy, what.
type Found = Vec<(Option<(u32, u32)>, Option<String>, String)>;

fn problems(text: &str) -> Found {
    match PolicySet::parse("p.cedar", text) {
        Err(LoadError::Rules(problems)) => problems
            .into_iter()
            .map(|p| (p.location, p.policy, p.message))
            .collect(),
        Err(other) => panic!("expected rule problems, got {other}"),
        Ok(_) => panic!("expected the set to be refused"),
    }
}

#[test]
fn a_set_names_its_rated_permits_and_their_rates() {
    let set = PolicySet::parse("p.cedar", RATED).unwrap();
    let rated: Vec<(String, PolicyRate)> = set
        .rated()
        .map(|(id, rate)| (id.to_string(), rate))
        .collect();
    assert_eq!(
        rated,
        vec![
            (
                "sandbox-publishes".to_owned(),
                PolicyRate {
                    count: 10,
                    period: Period::Second,
                    burst: 10
                }
            ),
            (
                "sandbox-reports".to_owned(),
                PolicyRate {
                    count: 60,
                    period: Period::Minute,
                    burst: 5
                }
            ),
        ]
    );
    assert_eq!(set.policy("sandbox-listens").unwrap().rate, None);

    // Both permits determine a publish on the reports channel: the host charges both.
    let agent = Subject::new(
        Principal::parse("spiffe://example.org/agent/sandbox/a").unwrap(),
        Vec::<String>::new(),
    );
    let reports = Channel::parse("sandbox.reports").unwrap();
    let decision = set.decide(
        &agent,
        Action::Publish,
        &Resource::Channel(&reports),
        &Facts::default(),
        NOW,
    );
    assert!(decision.allowed);
    let ids: Vec<&str> = decision.policies.iter().map(|p| p.as_str()).collect();
    assert_eq!(ids, ["sandbox-publishes", "sandbox-reports"]);
}

#[test]
fn bad_rates_are_refused_with_where_they_are() {
    let found = problems(
        r#"permit (principal, action == Action::"publish", resource in Namespace::"a");
@id("fast")
@rate("fast")
permit (principal, action == Action::"publish", resource in Namespace::"b");
"#,
    );
    assert_eq!(found.len(), 1, "{found:?}");
    let (location, policy, message) = &found[0];
    assert_eq!(*location, Some((2, 1)));
    assert_eq!(policy.as_deref(), Some("fast"));
    assert!(message.contains("`@rate(\"fast\")`"), "{message}");

    for (text, says) in [
        (
            r#"@rate("10/s") forbid (principal, action, resource);"#,
            "a forbid allows nothing to cap",
        ),
        (
            r#"@burst("5") permit (principal, action == Action::"publish", resource in Namespace::"a");"#,
            "`@burst` goes with a `@rate`",
        ),
        (
            r#"@rate("10/s") @burst("0") permit (principal, action == Action::"publish", resource in Namespace::"a");"#,
            "`@burst(\"0\")`",
        ),
        (
            r#"@rate("0/s") permit (principal, action == Action::"publish", resource in Namespace::"a");"#,
            "`@rate(\"0/s\")`",
        ),
        (
            r#"@rate("10/day") permit (principal, action == Action::"publish", resource in Namespace::"a");"#,
            "per `s`, `min` or `h`",
        ),
    ] {
        let found = problems(text);
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert!(found[0].2.contains(says), "{text}: {}", found[0].2);
        assert_eq!(found[0].0, Some((1, 1)), "{text}");
    }
}
