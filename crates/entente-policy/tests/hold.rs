//! `@hold` forbids: which publishes are held for approval, which are refused, and what the
//! loader accepts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_policy::{Action, Decision, Facts, LoadError, PolicySet, Resource, Subject};
use entente_types::{Channel, Principal};

const NOW: u64 = 1_700_000_000_000;

const PAYMENTS: &str = r#"
    @id("pay-publish")
    permit (principal in Segment::"pay", action == Action::"publish",
            resource in Namespace::"pay");
    @id("wires-need-two")
    @hold
    forbid (principal, action == Action::"publish", resource)
    when { resource == Channel::"pay.wire" || resource in Namespace::"pay.wire" }
    unless { context.approvals >= 2 };
    @id("cfo-for-big")
    @hold
    forbid (principal, action == Action::"publish", resource == Channel::"pay.wire.big")
    unless { context.approvers.contains("spiffe://example.org/human/cfo") };
    @id("no-mallory")
    forbid (principal == Agent::"spiffe://example.org/agent/pay/mallory", action, resource);
"#;

fn agent(name: &str) -> Subject {
    let id = format!("spiffe://example.org/agent/pay/{name}");
    Subject::new(Principal::parse(&id).unwrap(), Vec::<String>::new())
}

fn facts(approvers: &[&str]) -> Facts {
    Facts {
        approvals: u32::try_from(approvers.len()).unwrap(),
        approvers: approvers
            .iter()
            .map(|a| format!("spiffe://example.org/human/{a}"))
            .collect(),
        ..Facts::default()
    }
}

fn decide(set: &PolicySet, who: &Subject, channel: &str, approvers: &[&str]) -> Decision {
    let channel = Channel::parse(channel).unwrap();
    set.decide(
        who,
        Action::Publish,
        &Resource::Channel(&channel),
        &facts(approvers),
        NOW,
    )
}

fn held(set: &PolicySet, who: &Subject, channel: &str) -> bool {
    let decision = decide(set, who, channel, &[]);
    let channel = Channel::parse(channel).unwrap();
    set.holds(&decision)
        && set.allowed_once_approved(who, &Resource::Channel(&channel), &Facts::default(), NOW)
}

#[test]
fn a_hold_forbid_holds_what_a_permit_allows_until_approvals_lift_it() {
    let set = PolicySet::parse("pay.cedar", PAYMENTS).unwrap();
    assert!(set.policy("wires-need-two").unwrap().hold);
    assert!(!set.policy("no-mallory").unwrap().hold);
    let alice = agent("alice");

    // Outside the held namespace: allowed, nothing to hold.
    assert!(decide(&set, &alice, "pay.ledger", &[]).allowed);
    // Inside: denied by the hold forbid alone, and allowed once approved.
    assert!(held(&set, &alice, "pay.wire.eu"));
    assert!(!decide(&set, &alice, "pay.wire.eu", &["ops"]).allowed);
    assert!(decide(&set, &alice, "pay.wire.eu", &["ops", "risk"]).allowed);
    // Two hold forbids: both must be lifted.
    assert!(held(&set, &alice, "pay.wire.big"));
    assert!(!decide(&set, &alice, "pay.wire.big", &["ops", "risk"]).allowed);
    let decision = decide(&set, &alice, "pay.wire.big", &["ops", "cfo"]);
    assert!(decision.allowed, "{decision:?}");

    // A plain forbid among the deciding ones: refused, not held.
    let mallory = agent("mallory");
    assert!(!held(&set, &mallory, "pay.wire.eu"));
    // No permit at all: not held either, whatever approvals would do.
    let eve = Subject::new(
        Principal::parse("spiffe://example.org/agent/lab/eve").unwrap(),
        Vec::<String>::new(),
    );
    let decision = decide(&set, &eve, "pay.wire.eu", &[]);
    assert!(!decision.allowed);
    assert!(!held(&set, &eve, "pay.wire.eu"));
}

#[test]
fn a_set_without_hold_forbids_holds_nothing() {
    let set = PolicySet::parse(
        "x.cedar",
        r#"@id("f") forbid (principal, action == Action::"publish", resource in Namespace::"pay");"#,
    )
    .unwrap();
    let alice = agent("alice");
    let decision = decide(&set, &alice, "pay.x", &[]);
    assert!(!set.holds(&decision));
    let channel = Channel::parse("pay.x").unwrap();
    assert!(!set.allowed_once_approved(
        &alice,
        &Resource::Channel(&channel),
        &Facts::default(),
        NOW
    ));
}

#[test]
fn hold_is_for_publish_forbids_that_read_approvals() {
    for (text, needle) in [
        (
            r#"@hold permit (principal is Agent, action == Action::"publish", resource in Namespace::"pay");"#,
            "for forbids",
        ),
        (
            r#"@hold forbid (principal, action, resource in Namespace::"pay") unless { context.approvals >= 1 };"#,
            "action == Action::\"publish\"",
        ),
        (
            r#"@hold forbid (principal, action in [Action::"publish", Action::"direct"], resource in Namespace::"pay") unless { context.approvals >= 1 };"#,
            "action == Action::\"publish\"",
        ),
        (
            r#"@hold forbid (principal, action == Action::"publish", resource in Namespace::"pay");"#,
            "context.approvals",
        ),
    ] {
        let error = PolicySet::parse("x.cedar", text).unwrap_err();
        assert!(matches!(error, LoadError::Rules(_)), "{error}");
        let problems = error.problems();
        assert!(problems[0].message.contains(needle), "{text}: {problems:?}");
    }
}
