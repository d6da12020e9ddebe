//! Authorization by Cedar policies through a real hub on 127.0.0.1:0: what policies permit,
//! segments, forbids, live policy loads ending subscriptions, refused loads, the stored set
//! across restarts, and the administrators' policy RPCs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::time::SystemTime;

use entente_hub::{
    CHECK_POLICY_PATH, Hub, HubConfig, HubError, LOAD_POLICIES_PATH, PolicyOrigin, RefusalCode,
    SHOW_POLICIES_PATH,
};
use entente_store::Store as _;
use entente_types::{HumanId, Principal};
use entente_wire::{
    CheckPolicyRequest, CheckPolicyResponse, LoadPoliciesRequest, LoadPoliciesResponse,
    PolicySource, ShowPoliciesRequest, ShowPoliciesResponse, server_frame,
};
use support::{
    Agent, SHOP, SessionExt, TestCa, ack, config, now_ms, sources, start, start_with_store,
};
use tonic::Code;

/// A publish of one message by `agent` on `channel`, sealed for `agent` alone (what it carries
/// does not matter here): the answer's kind.
async fn publish(
    session: &mut support::Session,
    agent: &Agent,
    id: u64,
    channel: &str,
) -> server_frame::Kind {
    let (mut sealer, key) = agent.sealer(channel, &[&agent.bundle]);
    let batch = sealer.seal_batch(&[b"x"], None, now_ms()).unwrap();
    session.publish(id, vec![key], vec![batch]).await
}

/// The code and reason of a refusal; panics on anything else.
fn refused(kind: server_frame::Kind) -> (RefusalCode, String) {
    match kind {
        server_frame::Kind::Refusal(r) => (RefusalCode::from_u32(r.code).unwrap(), r.reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn admin(ca: &TestCa) -> Agent {
    ca.identity(
        Principal::from(HumanId::new(&ca.td, "admin").unwrap()),
        SystemTime::now(),
    )
}

fn with_admin(ca: &TestCa, policies: &str) -> HubConfig {
    HubConfig {
        admins: vec![admin(ca).principal],
        policies: sources(policies),
        ..HubConfig::default()
    }
}

#[tokio::test]
async fn a_publish_and_subscription_policies_permit_go_through_and_are_counted() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let bob = ca.agent("shop", "bob");
    let mut alice_session = alice.session(&hub).await;
    let mut bob_session = bob.session(&hub).await;
    assert_eq!(alice_session.subscribe(1, "orders.*").await, ack(1));
    for id in 2..5 {
        assert_eq!(
            publish(&mut bob_session, &bob, id, "orders.eu").await,
            ack(id)
        );
        assert!(matches!(
            alice_session.next_kind().await,
            server_frame::Kind::Deliver(_)
        ));
    }
    let stats = hub.stats();
    // One subscription and three publishes, each decided once (the cache answers repeats).
    assert_eq!((stats.policy_allows, stats.policy_denials), (4, 0));
    assert_eq!(hub.policy_origin(), PolicyOrigin::Initial);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_cross_segment_publish_is_refused_naming_no_policy() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let eve = ca.agent("lab", "eve");
    let mut session = eve.session(&hub).await;
    let (code, reason) = refused(publish(&mut session, &eve, 1, "orders.eu").await);
    assert_eq!(code, RefusalCode::Denied);
    assert!(reason.contains("no policy permits it"), "{reason}");
    assert!(
        reason.contains("across segments (from segment `lab` to segment `orders`"),
        "{reason}"
    );
    let (code, reason) = refused(session.subscribe(2, "orders.>").await);
    assert_eq!(code, RefusalCode::Denied);
    assert!(
        reason.contains("subscribing to `orders.>` is denied"),
        "{reason}"
    );
    assert_eq!(hub.stats().policy_denials, 2);
    assert_eq!(hub.stats().denials, 2);
}

#[tokio::test]
async fn an_at_cross_segment_permit_opens_exactly_its_channel() {
    let ca = TestCa::new();
    let policies = format!(
        r#"{SHOP}
        @id("lab-reads-results")
        @cross_segment
        permit (principal in Segment::"lab", action in [Action::"subscribe", Action::"publish"],
                resource == Channel::"orders.results");
        "#
    );
    let hub = start(
        &ca,
        HubConfig {
            policies: sources(&policies),
            ..config()
        },
    )
    .await;
    let eve = ca.agent("lab", "eve");
    let mut session = eve.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.results").await, ack(1));
    // Eve's own subscription gets the delivery before her publish is acknowledged.
    assert!(matches!(
        publish(&mut session, &eve, 2, "orders.results").await,
        server_frame::Kind::Deliver(_)
    ));
    assert_eq!(session.next_kind().await, ack(2));
    for (id, channel) in [(3, "orders.results.eu"), (4, "orders.eu"), (5, "orders")] {
        let (code, reason) = refused(publish(&mut session, &eve, id, channel).await);
        assert_eq!(code, RefusalCode::Denied, "{channel}");
        assert!(
            reason.contains("no policy permits it"),
            "{channel}: {reason}"
        );
    }
    for (id, pattern) in [(6, "orders.>"), (7, "orders.*"), (8, ">")] {
        let (code, _) = refused(session.subscribe(id, pattern).await);
        assert_eq!(code, RefusalCode::Denied, "{pattern}");
    }
}

#[tokio::test]
async fn a_forbid_wins_over_a_permit() {
    let ca = TestCa::new();
    let policies = format!(
        r#"{SHOP}
        @id("no-payroll")
        forbid (principal, action, resource in Namespace::"orders.payroll");
        "#
    );
    let hub = start(
        &ca,
        HubConfig {
            policies: sources(&policies),
            ..config()
        },
    )
    .await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    assert_eq!(publish(&mut session, &alice, 1, "orders.eu").await, ack(1));
    let (code, reason) = refused(publish(&mut session, &alice, 2, "orders.payroll.march").await);
    assert_eq!(code, RefusalCode::Denied);
    assert!(
        reason.contains("forbidden by policy `no-payroll`"),
        "{reason}"
    );
    let (_, reason) = refused(session.subscribe(3, "orders.payroll.>").await);
    assert!(reason.contains("`no-payroll`"), "{reason}");
}

#[tokio::test]
async fn a_live_policy_load_ends_the_subscriptions_it_no_longer_allows() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu.>").await, ack(1));
    assert_eq!(session.subscribe(2, "orders.us.>").await, ack(2));
    assert_eq!(session.subscribe(3, "_direct.shop.alice").await, ack(3));
    let before = hub.policy_epoch();

    // Only `orders.eu.>` stays open.
    let narrower = r#"
        @id("shop-eu")
        @cross_segment
        permit (principal in Segment::"shop", action in [Action::"publish", Action::"subscribe"],
                resource in Namespace::"orders.eu");
    "#;
    let epoch = hub.load_policies(sources(narrower)).await.unwrap();
    assert!(epoch > before);
    assert_eq!(hub.policy_epoch(), epoch);
    match session.next_kind().await {
        server_frame::Kind::SubscriptionEnded(ended) => {
            assert_eq!(ended.subscription_id, 2);
            assert_eq!(RefusalCode::from_u32(ended.code), Some(RefusalCode::Denied));
            assert!(
                ended.reason.contains("`orders.us.>` is no longer allowed"),
                "{}",
                ended.reason
            );
            assert!(
                ended.reason.contains("no policy permits it"),
                "{}",
                ended.reason
            );
        }
        other => panic!("expected SubscriptionEnded, got {other:?}"),
    }
    assert_eq!(hub.stats().subscriptions_ended, 1);
    // The other subscriptions go on: a publish reaches `orders.eu.>`, nothing else was ended.
    assert!(matches!(
        publish(&mut session, &alice, 10, "orders.eu.x").await,
        server_frame::Kind::Deliver(d) if d.subscription_id == 1
    ));
    assert_eq!(session.next_kind().await, ack(10));
    let (code, _) = refused(publish(&mut session, &alice, 11, "orders.us.x").await);
    assert_eq!(code, RefusalCode::Denied);
    // The ended ID is free: subscribing again is decided anew (and refused).
    let (code, _) = refused(session.subscribe(2, "orders.us.>").await);
    assert_eq!(code, RefusalCode::Denied);
    assert_eq!(hub.stats().subscriptions_ended, 1);
}

#[tokio::test]
async fn a_revocation_bumps_the_epoch_and_subscriptions_are_decided_again() {
    let ca = TestCa::new();
    let hub = start(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.>").await, ack(1));
    let allows = hub.stats().policy_allows;
    let before = hub.policy_epoch();
    let mut list = entente_ca::Revocations::new();
    list.revoke_principal(&ca.principal("shop", "mallory"));
    let now = SystemTime::now();
    let signed = ca.ca.sign_revocations(&list, now).unwrap();
    let signed = entente_ca::VerifiedRevocationList::verify(signed, ca.trust(), now).unwrap();
    hub.revoke(signed).await.unwrap();
    assert_eq!(hub.policy_epoch(), before + 1);
    // Alice's subscription is decided again at the new epoch and stays.
    support::eventually("the subscription decided again", || {
        hub.stats().policy_allows > allows
    })
    .await;
    assert_eq!(hub.stats().subscriptions_ended, 0);
}

#[tokio::test]
async fn an_invalid_load_changes_nothing() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, config()).await;
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.>").await, ack(1));
    let epoch = hub.policy_epoch();
    let stored = store.config("policies").await.unwrap();

    let bad = sources(
        "permit (principal in Segment::\"shop\", action, resource)\n\
         permit (principal is Agent, action == Action::\"fly\", resource);",
    );
    let err = hub.load_policies(bad).await.unwrap_err();
    let problems = err.problems();
    assert!(!problems.is_empty());
    assert!(
        problems.iter().all(|p| p.starts_with("test.cedar:")),
        "{problems:?}"
    );
    let err = hub
        .load_policies(vec![("base".into(), String::new())])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");

    assert_eq!(hub.policy_epoch(), epoch);
    assert_eq!(store.config("policies").await.unwrap(), stored);
    assert_eq!(hub.policies().sources, sources(SHOP));
    // Behaviour unchanged: the subscription lives, publishing still works.
    assert!(matches!(
        publish(&mut session, &alice, 2, "orders.eu").await,
        server_frame::Kind::Deliver(_)
    ));
    assert_eq!(session.next_kind().await, ack(2));
    assert_eq!(hub.stats().subscriptions_ended, 0);
}

#[tokio::test]
async fn the_stored_set_survives_a_restart_and_wins_over_the_initial_one() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, config()).await;
    let lab = r#"
        @id("lab-traffic")
        permit (principal in Segment::"lab", action in [Action::"publish", Action::"subscribe"],
                resource in Namespace::"lab");
    "#;
    assert_eq!(hub.policy_epoch(), 1);
    hub.load_policies(sources(lab)).await.unwrap();
    let last = hub.policy_epoch();
    hub.shutdown().await.unwrap();

    // The config still says SHOP; the store's LAB set runs, at epochs no earlier run used.
    let hub = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    assert!(
        hub.policy_epoch() > last,
        "{} after {last}",
        hub.policy_epoch()
    );
    assert_eq!(hub.policy_epoch(), 1 + (1 << 20));
    assert_eq!(hub.policy_origin(), PolicyOrigin::Stored);
    assert_eq!(hub.policies().sources, sources(lab));
    let ids: Vec<String> = hub
        .policies()
        .set
        .policies()
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "entente.direct-within-segment",
            "entente.request-within-segment",
            "lab-traffic"
        ]
    );
    let eve = ca.agent("lab", "eve");
    let mut session = eve.session(&hub).await;
    assert_eq!(session.subscribe(1, "lab.>").await, ack(1));
    let alice = ca.agent("shop", "alice");
    let mut session = alice.session(&hub).await;
    let (code, _) = refused(session.subscribe(1, "orders.>").await);
    assert_eq!(code, RefusalCode::Denied);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stored_set_that_no_longer_loads_is_a_start_error_until_replaced() {
    let ca = TestCa::new();
    let (hub, store) = start_with_store(&ca, config()).await;
    hub.shutdown().await.unwrap();
    // What an older hub might have stored, under a schema this one no longer has.
    let stale = entente_wire::encode(&entente_wire::StoredPolicies {
        version: 1,
        sources: vec![PolicySource {
            name: "old.cedar".into(),
            text: "permit (principal is Agent, action == Action::\"teleport\", resource);".into(),
        }],
    });
    store.put_config("policies", &stale).await.unwrap();
    let err = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::StoredPolicies(_)), "{err}");
    assert!(err.to_string().contains("old.cedar:1:"), "{err}");
    store.put_config("policies", b"\xff\xff").await.unwrap();
    let err = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::StoredPolicies(_)), "{err}");

    // The way out: run (and store) the configured set instead.
    let replacing = HubConfig {
        replace_stored_policies: true,
        ..config()
    };
    let hub = Hub::start(replacing, ca.ca.clone(), store.clone())
        .await
        .unwrap();
    assert_eq!(hub.policy_origin(), PolicyOrigin::Initial);
    hub.shutdown().await.unwrap();
    let hub = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    assert_eq!(hub.policy_origin(), PolicyOrigin::Stored);
    assert_eq!(hub.policies().sources, sources(SHOP));

    // An invalid initial set is a start error too.
    let bad = HubConfig {
        policies: sources("permit ("),
        ..HubConfig::default()
    };
    let err = Hub::start(bad, ca.ca.clone(), ca.store())
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::InitialPolicies(_)), "{err}");
    assert!(err.to_string().contains("test.cedar:1:"), "{err}");
}

// === the administrators' RPCs ===

#[tokio::test]
async fn the_policy_rpcs_are_for_administrators_only() {
    let ca = TestCa::new();
    let hub = start(&ca, with_admin(&ca, SHOP)).await;
    let alice = ca.agent("shop", "alice").connect(&hub).await;
    let load = alice
        .unary::<_, LoadPoliciesResponse>(
            LOAD_POLICIES_PATH,
            LoadPoliciesRequest { sources: vec![] },
        )
        .await
        .unwrap_err();
    assert_eq!(load.code(), Code::PermissionDenied);
    let show = alice
        .unary::<_, ShowPoliciesResponse>(SHOW_POLICIES_PATH, ShowPoliciesRequest {})
        .await
        .unwrap_err();
    assert_eq!(show.code(), Code::PermissionDenied);
    let check = alice
        .unary::<_, CheckPolicyResponse>(CHECK_POLICY_PATH, CheckPolicyRequest::default())
        .await
        .unwrap_err();
    assert_eq!(check.code(), Code::PermissionDenied);
    assert_eq!(hub.policies().sources, sources(SHOP));
    assert_eq!(hub.stats().admin_refusals, 3);
}

#[tokio::test]
async fn an_administrator_loads_shows_and_checks_policies() {
    let ca = TestCa::new();
    let hub = start(&ca, with_admin(&ca, SHOP)).await;
    let admin = admin(&ca).connect(&hub).await;

    // An invalid set: INVALID_ARGUMENT listing each problem with file:line:col; nothing changes.
    let epoch = hub.policy_epoch();
    let status = admin
        .unary::<_, LoadPoliciesResponse>(
            LOAD_POLICIES_PATH,
            LoadPoliciesRequest {
                sources: vec![
                    PolicySource {
                        name: "a.cedar".into(),
                        text: "permit (principal is Agent, action, resource is Channel);".into(),
                    },
                    PolicySource {
                        name: "b.cedar".into(),
                        text:
                            "\n  permit (principal is Agent, action == Action::\"fly\", resource);"
                                .into(),
                    },
                ],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let lines: Vec<&str> = status.message().lines().collect();
    assert!(lines[0].contains("running set is unchanged"), "{lines:?}");
    assert!(
        lines[1..].iter().any(|l| l.starts_with("b.cedar:2:")),
        "{lines:?}"
    );
    assert_eq!(hub.policy_epoch(), epoch);

    // A valid one.
    let lab = "@id(\"lab-traffic\")\npermit (principal in Segment::\"lab\", action == Action::\"publish\", resource in Namespace::\"lab\");";
    let loaded: LoadPoliciesResponse = admin
        .unary(
            LOAD_POLICIES_PATH,
            LoadPoliciesRequest {
                sources: vec![PolicySource {
                    name: "lab.cedar".into(),
                    text: lab.into(),
                }],
            },
        )
        .await
        .unwrap();
    assert_eq!(loaded.epoch, epoch + 1);
    // The two base policies and the loaded one.
    assert_eq!(loaded.policies, 3);

    let shown: ShowPoliciesResponse = admin
        .unary(SHOW_POLICIES_PATH, ShowPoliciesRequest {})
        .await
        .unwrap();
    assert_eq!(shown.epoch, loaded.epoch);
    let names: Vec<&str> = shown.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["base", "lab.cedar"]);
    assert_eq!(shown.sources[1].text, lab);
    let last = shown.policies.last().unwrap();
    assert_eq!(
        (
            last.id.as_str(),
            last.source.as_str(),
            last.line,
            last.forbid
        ),
        ("lab-traffic", "lab.cedar", 1, false)
    );

    let check = |principal: &str, action: &str, kind: &str, resource: &str| CheckPolicyRequest {
        principal: principal.into(),
        action: action.into(),
        resource_type: kind.into(),
        resource: resource.into(),
    };
    let eve = ca.principal("lab", "eve").to_string();
    let allowed: CheckPolicyResponse = admin
        .unary(
            CHECK_POLICY_PATH,
            check(&eve, "publish", "channel", "lab.results"),
        )
        .await
        .unwrap();
    assert!(allowed.allowed);
    assert_eq!(allowed.policies, ["lab-traffic"]);
    assert!(
        allowed.explanation.starts_with("ALLOW:"),
        "{}",
        allowed.explanation
    );
    assert!(
        allowed.explanation.contains("lab.cedar:1:1"),
        "{}",
        allowed.explanation
    );
    let denied: CheckPolicyResponse = admin
        .unary(
            CHECK_POLICY_PATH,
            check(&eve, "subscribe", "channel", "orders.>"),
        )
        .await
        .unwrap();
    assert!(!denied.allowed && denied.cross_segment && denied.policies.is_empty());
    assert_eq!(denied.reason, "no policy permits it");
    let structural: CheckPolicyResponse = admin
        .unary(
            CHECK_POLICY_PATH,
            check(&eve, "subscribe", "channel", "_direct.lab.eve"),
        )
        .await
        .unwrap();
    assert!(structural.allowed);
    assert!(
        structural.reason.contains("structural rule"),
        "{}",
        structural.reason
    );
    for bad in [
        check("nobody", "publish", "channel", "a"),
        check(&eve, "fly", "channel", "a"),
        check(&eve, "publish", "channel", "a.*"),
        check(&eve, "publish", "segment", "lab"),
        check(&eve, "publish", "queue", "a"),
        check(
            "spiffe://other.org/agent/lab/eve",
            "publish",
            "channel",
            "a",
        ),
    ] {
        let status = admin
            .unary::<_, CheckPolicyResponse>(CHECK_POLICY_PATH, bad.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
    }
}

// === the policy RPCs for principals the config does not list ===

fn human(ca: &TestCa, name: &str) -> Agent {
    ca.identity(
        Principal::from(HumanId::new(&ca.td, name).unwrap()),
        SystemTime::now(),
    )
}

async fn show(client: &support::Client) -> Result<ShowPoliciesResponse, tonic::Status> {
    client
        .unary(SHOW_POLICIES_PATH, ShowPoliciesRequest {})
        .await
}

async fn load(
    client: &support::Client,
    sources: &[(&str, &str)],
) -> Result<LoadPoliciesResponse, tonic::Status> {
    client
        .unary(
            LOAD_POLICIES_PATH,
            LoadPoliciesRequest {
                sources: sources
                    .iter()
                    .map(|(name, text)| PolicySource {
                        name: (*name).into(),
                        text: (*text).into(),
                    })
                    .collect(),
            },
        )
        .await
}

fn check_request(principal: &str, action: &str, kind: &str, resource: &str) -> CheckPolicyRequest {
    CheckPolicyRequest {
        principal: principal.into(),
        action: action.into(),
        resource_type: kind.into(),
        resource: resource.into(),
    }
}

fn assert_denied(result: Result<impl std::fmt::Debug, tonic::Status>, says: &str) {
    let status = result.expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(says), "{says}: {status:?}");
}

/// Ann may administer the hub; bob is forbidden to; carol has no permit.
const HUB_ADMINS: &str = r#"
    @id("ann-administers-the-hub")
    permit (principal == Human::"spiffe://example.org/human/ann",
            action == Action::"admin", resource == Hub::"hub");
    @id("humans-administer-the-hub")
    permit (principal is Human, action == Action::"admin", resource == Hub::"hub")
    when { principal.name == "bob" };
    @id("no-bob")
    forbid (principal == Human::"spiffe://example.org/human/bob",
            action == Action::"admin", resource == Hub::"hub");
"#;

#[tokio::test]
async fn a_principal_permitted_admin_on_the_hub_shows_checks_and_loads_policies() {
    let ca = TestCa::new();
    let policies = format!("{SHOP}\n{HUB_ADMINS}");
    let hub = start(&ca, with_admin(&ca, &policies)).await;
    let ann = human(&ca, "ann").connect(&hub).await;
    let bob = human(&ca, "bob").connect(&hub).await;
    let carol = human(&ca, "carol").connect(&hub).await;

    // Ann: shows, checks (the hub as a resource too, by its type's name in any case), loads.
    let shown = show(&ann).await.unwrap();
    assert_eq!(shown.sources[1].text, policies);
    let ann_id = "spiffe://example.org/human/ann";
    for kind in ["hub", "Hub"] {
        let check: CheckPolicyResponse = ann
            .unary(
                CHECK_POLICY_PATH,
                check_request(ann_id, "admin", kind, "hub"),
            )
            .await
            .unwrap();
        assert!(
            check.allowed && !check.cross_segment,
            "{}",
            check.explanation
        );
        assert_eq!(check.policies, ["ann-administers-the-hub"]);
        assert!(
            check.explanation.contains(r#"admin Hub::"hub""#),
            "{}",
            check.explanation
        );
    }
    let check = ann
        .unary::<_, CheckPolicyResponse>(
            CHECK_POLICY_PATH,
            check_request(ann_id, "admin", "hub", "other"),
        )
        .await
        .unwrap_err();
    assert_eq!(check.code(), Code::InvalidArgument, "{check:?}");
    let bob_check: CheckPolicyResponse = ann
        .unary(
            CHECK_POLICY_PATH,
            check_request("spiffe://example.org/human/bob", "admin", "hub", "hub"),
        )
        .await
        .unwrap();
    assert!(!bob_check.allowed);
    assert_eq!(bob_check.policies, ["no-bob"]);
    let epoch = hub.policy_epoch();
    let loaded = load(&ann, &[("test.cedar", &policies), ("extra.cedar", "")])
        .await
        .unwrap();
    assert_eq!(loaded.epoch, epoch + 1);

    // Bob: a forbid decides, and is named. Carol: no policy permits it.
    assert_denied(
        show(&bob).await,
        "showing the running policies is denied: forbidden by policy `no-bob`",
    );
    assert_denied(
        load(&carol, &[("test.cedar", SHOP)]).await,
        "loading policies is denied: no policy permits it",
    );
    assert_denied(
        carol
            .unary::<_, CheckPolicyResponse>(
                CHECK_POLICY_PATH,
                check_request(ann_id, "admin", "hub", "hub"),
            )
            .await,
        "checking a policy decision is denied: no policy permits it",
    );
    assert_eq!(hub.policy_epoch(), epoch + 1);
    assert_eq!(hub.policies().sources.len(), 2);
    let stats = hub.stats();
    assert_eq!((stats.admin_actions, stats.admin_refusals), (5, 4));
}

#[tokio::test]
async fn an_agent_needs_a_cross_segment_permit_to_administer_the_hub() {
    let ca = TestCa::new();
    let policies = r#"
        @id("ops-administers-its-segment")
        permit (principal in Segment::"ops", action == Action::"admin", resource);
        @id("lead-administers-the-hub")
        @cross_segment
        permit (principal == Agent::"spiffe://example.org/agent/ops/lead",
                action == Action::"admin", resource == Hub::"hub");
    "#;
    let hub = start(&ca, with_admin(&ca, policies)).await;

    // A wide permit of its own segment does not reach the hub, which is in no segment.
    let eve = ca.agent("ops", "eve").connect(&hub).await;
    assert_denied(
        show(&eve).await,
        "no policy permits it across segments (from segment `ops` to no segment",
    );
    // A @cross_segment permit naming the hub does.
    let lead = ca.agent("ops", "lead").connect(&hub).await;
    assert_eq!(show(&lead).await.unwrap().policies.len(), 4);

    // CheckPolicy says the same.
    let root = admin(&ca).connect(&hub).await;
    let check: CheckPolicyResponse = root
        .unary(
            CHECK_POLICY_PATH,
            check_request("spiffe://example.org/agent/ops/eve", "admin", "hub", "hub"),
        )
        .await
        .unwrap();
    assert!(!check.allowed && check.cross_segment);
    assert!(
        check.explanation.contains("the resource in no segment"),
        "{}",
        check.explanation
    );
}

#[tokio::test]
async fn a_load_that_withdraws_a_permit_takes_effect_at_the_next_call() {
    let ca = TestCa::new();
    let policies = format!("{SHOP}\n{HUB_ADMINS}");
    let hub = start(&ca, with_admin(&ca, &policies)).await;
    let ann = human(&ca, "ann").connect(&hub).await;
    show(&ann).await.unwrap();

    // Ann loads a set without her permit: it is in force for her very next call.
    load(&ann, &[("test.cedar", SHOP)]).await.unwrap();
    assert_denied(
        show(&ann).await,
        "showing the running policies is denied: no policy permits it",
    );
    assert_denied(
        load(&ann, &[("test.cedar", &policies)]).await,
        "no policy permits it",
    );

    // Even a set with no policy at all locks out no listed administrator, who puts hers back.
    let root = admin(&ca).connect(&hub).await;
    load(&root, &[]).await.unwrap();
    assert_eq!(show(&root).await.unwrap().sources.len(), 1);
    load(&root, &[("test.cedar", &policies)]).await.unwrap();
    show(&ann).await.unwrap();
}
