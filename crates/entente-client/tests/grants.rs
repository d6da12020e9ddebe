//! Time-bound grants and just-in-time elevation through the SDK, against a real hub on
//! 127.0.0.1:0 (`entente-testkit`): a direct grant opens exactly what its policy says and ends
//! on time with the subscription it opened; requests approved 1 of 1 and 2 of N by humans
//! enrolled with their own tokens; separation of duties; refusals of every kind; grants across
//! a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use entente_client::{ApprovalOutcome, Client, ErrorKind, RefusalCode, Subscription};
use entente_policy::GrantLimits;
use entente_testkit::{TestHub, WAIT, eventually};
use tokio_stream::StreamExt as _;

/// Segment `shop` uses `orders.>`; segment `ops` may read it while holding `orders-read`
/// (one approval, at most an hour) and publish on `payments.>` while holding
/// `payments-write` (two approvals, at most ten minutes); humans grant, approve and see
/// everything.
const POLICIES: &str = r#"
    @id("shop-orders")
    @cross_segment
    permit (principal in Segment::"shop", action in [Action::"publish", Action::"subscribe"],
            resource in Namespace::"orders");

    @id("orders-read")
    @grant("orders-read")
    @max_duration("1h")
    @cross_segment
    permit (principal in Segment::"ops", action == Action::"subscribe",
            resource in Namespace::"orders")
    when { context.grants.contains("orders-read") };

    @id("payments-write")
    @grant("payments-write")
    @approvals("2")
    @max_duration("10m")
    @cross_segment
    permit (principal in Segment::"ops", action == Action::"publish",
            resource in Namespace::"payments")
    when { context.grants.contains("payments-write") };

    @id("humans-grant")
    permit (principal is Human,
            action in [Action::"grant", Action::"approve", Action::"admin", Action::"revoke"],
            resource);
"#;

async fn hub() -> TestHub {
    TestHub::builder().policies(POLICIES).start().await.unwrap()
}

async fn admin(hub: &TestHub) -> Client {
    hub.connect(hub.admin().unwrap()).await.unwrap()
}

/// The error that ends `subscription`, within `limit`.
async fn ended(subscription: &mut Subscription, limit: Duration) -> entente_client::Error {
    match tokio::time::timeout(limit, subscription.next()).await {
        Ok(Some(Err(e))) => e,
        other => panic!("expected the subscription to end with an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_direct_grant_opens_exactly_its_policy_and_ends_on_time() {
    // The grant's length: long enough for what it opens to be tried within it on a slow
    // machine.
    const LENGTH: Duration = Duration::from_secs(15);
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();

    let before = eve.subscribe("orders.>").await.unwrap_err();
    assert_eq!(before.refusal_code(), Some(RefusalCode::Denied), "{before}");

    let grant = admin
        .grant(
            eve.principal(),
            "orders-read",
            LENGTH,
            "INC-1: read the orders",
        )
        .await
        .unwrap();
    assert_eq!(grant.name, "orders-read");
    assert_eq!(grant.principal, eve.principal().as_str());
    assert_eq!(grant.granter, admin.principal().as_str());
    assert_eq!(
        grant.not_after_ms - grant.not_before_ms,
        u64::try_from(LENGTH.as_millis()).unwrap()
    );

    // What `orders-read` opens: subscribing to `orders.>`. Nothing else.
    let mut orders = eve.subscribe("orders.>").await.unwrap();
    let e = eve.subscribe("payments.>").await.unwrap_err();
    assert_eq!(e.refusal_code(), Some(RefusalCode::Denied), "{e}");
    let eve_bundle = alice.key_bundle(eve.principal()).await.unwrap();
    let e = eve
        .publish_to("orders.eu", "x", std::slice::from_ref(&eve_bundle))
        .await
        .unwrap_err();
    assert_eq!(e.refusal_code(), Some(RefusalCode::Denied), "{e}");
    alice
        .publish_to("orders.eu", "order 7", std::slice::from_ref(&eve_bundle))
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, orders.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(message.payload, b"order 7");

    // The hub's check sees the grant too.
    let check = admin
        .check_policy(eve.principal(), "subscribe", "channel", "orders.>")
        .await
        .unwrap();
    assert!(check.allowed, "{}", check.explanation);
    assert!(
        check.explanation.contains("opened by grant `orders-read`"),
        "{}",
        check.explanation
    );

    // The grant ends, with nobody acting: the subscription it opened ends with DENIED.
    let e = ended(&mut orders, LENGTH + WAIT).await;
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert!(
        e.refusal_reason().unwrap().contains("no longer allowed"),
        "{e}"
    );
    eventually("the grant is expired", || {
        hub.stats().grants_expired == 1 && hub.hub().grant_book().grants().count() == 0
    })
    .await
    .unwrap();
    let again = eve.subscribe("orders.>").await.unwrap_err();
    assert_eq!(again.refusal_code(), Some(RefusalCode::Denied), "{again}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn one_approval_grants_a_request_and_nobody_approves_their_own() {
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();

    let request = eve
        .request_grant("orders-read", Duration::from_secs(60), "INC-2: a look")
        .await
        .unwrap();
    assert_eq!(request.state, "pending");
    assert_eq!(request.required, 1);
    assert_eq!(request.requester, eve.principal().as_str());
    assert!(eve.subscribe("orders.>").await.is_err());

    // Separation of duties: the requester never approves its own request.
    let e = eve.approve(&request.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert!(e.to_string().contains("its own request"), "{e}");

    // Approvers see it pending; the requester sees its own request.
    let listed = admin.grants().await.unwrap();
    assert_eq!(listed.requests.len(), 1);
    assert_eq!(eve.grants().await.unwrap().requests[0].id, request.id);

    let ApprovalOutcome::Granted(grant) = admin.approve(&request.id).await.unwrap() else {
        panic!("one approval is enough");
    };
    assert_eq!(grant.request, request.id);
    assert_eq!(grant.approvers, [admin.principal().as_str()]);
    eve.subscribe("orders.>").await.unwrap();

    // Decided: a second approval (by anyone) is refused.
    let e = admin.approve(&request.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("already granted"), "{e}");
    let stats = hub.stats();
    assert!(stats.grant_actions >= 4, "{stats:?}");
    assert!(stats.grant_refusals >= 2, "{stats:?}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_approvals_by_two_humans_grant_and_the_same_approver_counts_once() {
    let hub = hub().await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();
    let ann = hub.connect_human("ann").await.unwrap();
    let bob = hub.connect_human("bob").await.unwrap();

    let request = eve
        .request_grant(
            "payments-write",
            Duration::from_secs(300),
            "PAY-9: refund a customer",
        )
        .await
        .unwrap();
    assert_eq!(request.required, 2);

    assert_eq!(
        ann.approve(&request.id).await.unwrap(),
        ApprovalOutcome::Pending {
            approvals: 1,
            required: 2
        }
    );
    let e = ann.approve(&request.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("already approved by"), "{e}");
    // Still pending: eve holds nothing.
    let eve_bundle = bob.key_bundle(eve.principal()).await.unwrap();
    assert!(
        eve.publish_to("payments.refunds", "x", std::slice::from_ref(&eve_bundle))
            .await
            .is_err()
    );

    let ApprovalOutcome::Granted(grant) = bob.approve(&request.id).await.unwrap() else {
        panic!("the second approval grants it");
    };
    assert_eq!(
        grant.approvers,
        [ann.principal().as_str(), bob.principal().as_str()]
    );
    eve.publish_to("payments.refunds", "x", std::slice::from_ref(&eve_bundle))
        .await
        .unwrap();
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rejection_closes_a_request_and_the_requester_may_withdraw() {
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();

    let first = eve
        .request_grant("orders-read", Duration::from_secs(60), "INC-3")
        .await
        .unwrap();
    assert_eq!(
        admin.reject(&first.id).await.unwrap(),
        ApprovalOutcome::Rejected
    );
    let e = admin.approve(&first.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("already rejected"), "{e}");

    // A withdrawal: the requester rejects its own request, which no policy needs to permit.
    let second = eve
        .request_grant("orders-read", Duration::from_secs(60), "INC-3 again")
        .await
        .unwrap();
    assert_eq!(
        eve.reject(&second.id).await.unwrap(),
        ApprovalOutcome::Rejected
    );
    let states: Vec<String> = eve
        .grants()
        .await
        .unwrap()
        .requests
        .into_iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, ["rejected", "rejected"]);
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_and_expired_requests_are_refused() {
    let hub = TestHub::builder()
        .policies(POLICIES)
        .config(|c| {
            c.grant_limits = GrantLimits {
                request_ttl_ms: 300,
                ..GrantLimits::default()
            }
        })
        .start()
        .await
        .unwrap();
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();

    let e = admin.approve("r-99").await.unwrap_err();
    assert!(e.to_string().contains("no request `r-99`"), "{e}");

    let request = eve
        .request_grant("orders-read", Duration::from_secs(60), "INC-4")
        .await
        .unwrap();
    assert_eq!(request.expires_at_ms - request.created_at_ms, 300);
    eventually("the request lapses", || {
        hub.hub()
            .grant_book()
            .requests()
            .all(|r| r.state == entente_policy::RequestState::Expired)
    })
    .await
    .unwrap();
    let e = admin.approve(&request.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("has expired"), "{e}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn grants_are_refused_for_unknown_names_long_durations_and_without_a_permit() {
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    let minute = Duration::from_secs(60);

    let e = admin
        .grant(eve.principal(), "root", minute, "why not")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("unknown grant `root`"), "{e}");

    let e = admin
        .grant(
            eve.principal(),
            "payments-write",
            Duration::from_secs(3600),
            "too long",
        )
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("exceeds its maximum of 10m"), "{e}");
    let e = eve
        .request_grant("payments-write", Duration::from_secs(3600), "too long")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");

    let e = admin
        .grant(eve.principal(), "orders-read", minute, "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a reason is required"), "{e}");

    // Alice (an agent) has no `grant` permit, for eve or herself.
    let e = alice
        .grant(eve.principal(), "orders-read", minute, "a favour")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert!(e.to_string().contains("is denied"), "{e}");
    // The admin may grant anyone but itself.
    let e = admin
        .grant(admin.principal(), "orders-read", minute, "myself")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert!(e.to_string().contains("cannot grant to itself"), "{e}");
    // Nor may alice approve for eve.
    let request = eve
        .request_grant("orders-read", minute, "INC-5")
        .await
        .unwrap();
    let e = alice.approve(&request.id).await.unwrap_err();
    assert!(e.to_string().contains("no request"), "{e}");
    assert!(hub.hub().grant_book().grants().next().is_none());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn principals_see_their_own_grants_and_administrators_see_all() {
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();
    let alice = hub.connect_agent("shop", "alice").await.unwrap();
    admin
        .grant(
            eve.principal(),
            "orders-read",
            Duration::from_secs(60),
            "INC-6",
        )
        .await
        .unwrap();
    eve.request_grant("payments-write", Duration::from_secs(60), "PAY-1")
        .await
        .unwrap();

    let all = admin.grants().await.unwrap();
    assert_eq!((all.grants.len(), all.requests.len()), (1, 1));
    let own = eve.grants().await.unwrap();
    assert_eq!((own.grants.len(), own.requests.len()), (1, 1));
    let none = alice.grants().await.unwrap();
    assert_eq!((none.grants.len(), none.requests.len()), (0, 0));
    let of_alice = admin.grants_of(alice.principal()).await.unwrap();
    assert!(of_alice.grants.is_empty());
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn grants_and_requests_survive_a_restart() {
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve_identity = hub.enroll("ops", "eve").await.unwrap();
    let eve = hub.connect(eve_identity.clone()).await.unwrap();
    admin
        .grant(
            eve.principal(),
            "orders-read",
            Duration::from_secs(600),
            "INC-7",
        )
        .await
        .unwrap();
    let request = eve
        .request_grant("payments-write", Duration::from_secs(60), "PAY-2")
        .await
        .unwrap();
    let revision = hub.hub().grant_book().revision();
    admin.close().await;
    eve.close().await;

    let hub = hub.restart().await.unwrap();
    let book = hub.hub().grant_book();
    assert_eq!(book.revision(), revision);
    assert_eq!(book.grants().count(), 1);
    assert_eq!(book.pending(entente_testkit::now_ms()).count(), 1);
    let eve = hub.connect(eve_identity).await.unwrap();
    eve.subscribe("orders.>").await.unwrap();
    let admin = hub.connect(hub.admin().unwrap()).await.unwrap();
    assert_eq!(
        admin.approve(&request.id).await.unwrap(),
        ApprovalOutcome::Pending {
            approvals: 1,
            required: 2
        }
    );
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_grant_ended_early_ends_the_subscription_it_opened() {
    let hub = hub().await;
    let admin = admin(&hub).await;
    let eve = hub.connect_agent("ops", "eve").await.unwrap();
    let dan = hub.connect_agent("ops", "dan").await.unwrap();
    let grant = admin
        .grant(
            eve.principal(),
            "orders-read",
            Duration::from_secs(3600),
            "INC-9",
        )
        .await
        .unwrap();
    let mut orders = eve.subscribe("orders.>").await.unwrap();

    let bad = admin.revoke_grant(&grant.id, " ").await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput, "{bad}");
    let bad = admin.revoke_grant("x-1", "done").await.unwrap_err();
    assert_eq!(bad.kind(), ErrorKind::InvalidInput, "{bad}");
    let denied = dan.revoke_grant(&grant.id, "mine now").await.unwrap_err();
    assert_eq!(denied.kind(), ErrorKind::Denied, "{denied}");
    // Dan is not told whose grant it is, nor why it is denied (which would name its segment).
    assert!(!denied.to_string().contains("eve"), "{denied}");
    assert!(
        denied.to_string().contains("the audit log says why"),
        "{denied}"
    );

    let gone = admin.revoke_grant(&grant.id, "INC-9 closed").await.unwrap();
    assert_eq!(gone.id, grant.id);
    let error = ended(&mut orders, WAIT).await;
    assert_eq!(error.refusal_code(), Some(RefusalCode::Denied), "{error}");
    assert!(admin.grants().await.unwrap().grants.is_empty());
    let again = admin.revoke_grant(&grant.id, "twice").await.unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Refused, "{again}");
}

/// An answer is checked as the client will decode it, by its cost to decode as well as its
/// size: grants too many to list within the decoded-overhead budget are refused with a clear
/// error (ask for one principal's), not sent for the client to fail on.
#[tokio::test]
async fn grants_too_costly_to_decode_in_one_answer_are_refused_clearly() {
    let hub = TestHub::builder()
        .policies(POLICIES)
        .config(|c| c.limits.max_decoded_overhead = 8 * entente_wire::DECODED_ELEMENT_COST)
        .start()
        .await
        .unwrap();
    let admin = admin(&hub).await;
    let mut names = Vec::new();
    // One more than the budget's elements.
    for i in 0..9 {
        let agent = hub.connect_agent("ops", &format!("eve{i}")).await.unwrap();
        admin
            .grant(
                agent.principal(),
                "orders-read",
                Duration::from_secs(600),
                "INC-2: read the orders",
            )
            .await
            .unwrap();
        names.push(agent.principal().clone());
    }
    let e = admin.grants().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("ask for one principal's"), "{e}");
    let one = admin.grants_of(&names[0]).await.unwrap();
    assert_eq!(one.grants.len(), 1);
}
