//! The grant RPCs of a real hub on 127.0.0.1:0, spoken raw: signed approval statements and
//! what the hub does with replayed, forged, misaddressed and mismatched ones; the statuses of
//! refusals; humans enrolled with their own tokens; a store that fails (the change is
//! refused, nothing changes, and a grant still ends on time); a stored book that does not load.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use entente_crypto::{ApprovalStatement, GrantRequestBody, ObjectKind, Verdict};
use entente_hub::{
    GRANT_PATH, Hub, HubConfig, HubError, HubHandle, LIST_GRANTS_PATH, REQUEST_GRANT_PATH,
    RefusalCode,
};
use entente_store::Store;
use entente_types::{HumanId, Principal};
use entente_wire::{
    ApproveRequest, GrantInfo, GrantRequest, GrantRequestInfo, GrantResponse, ListGrantsRequest,
    ListGrantsResponse, RequestGrantRequest, RequestGrantResponse, server_frame,
};
use support::{
    Agent, Enrollment, FlakyStore, SessionExt, TestCa, ack, approve, enroll, enroll_raw, now_ms,
    refused, signed, sources,
};
use tonic::{Code, Status};

/// Segment `ops` reads `orders.>` while holding `orders-read` (two approvals, so only through
/// a request) or `orders-peek` (one); humans grant, approve and see everything.
const POLICIES: &str = r#"
    @id("orders-read")
    @grant("orders-read")
    @approvals("2")
    @max_duration("1h")
    @cross_segment
    permit (principal in Segment::"ops", action == Action::"subscribe",
            resource in Namespace::"orders")
    when { context.grants.contains("orders-read") };

    @id("orders-peek")
    @grant("orders-peek")
    @max_duration("1h")
    @cross_segment
    permit (principal in Segment::"ops", action == Action::"subscribe",
            resource in Namespace::"orders")
    when { context.grants.contains("orders-peek") };

    @id("humans-grant")
    permit (principal is Human, action in [Action::"grant", Action::"approve", Action::"admin"],
            resource);
"#;

fn config() -> HubConfig {
    HubConfig {
        policies: sources(POLICIES),
        ..HubConfig::default()
    }
}

/// Enrolls the human `name` with a join token, as a human enrolls.
async fn human(hub: &HubHandle, name: &str) -> Agent {
    let id = HumanId::new(hub.trust_bundle().trust_domain(), name).unwrap();
    let token = hub
        .create_token(id, Duration::from_secs(600))
        .await
        .unwrap();
    let enrollment = Enrollment::new();
    let response = enroll_raw(hub, enrollment.request(token.as_str()))
        .await
        .unwrap();
    enrollment.into_agent(&response, hub.trust_bundle())
}

async fn request_grant(
    hub: &HubHandle,
    who: &Agent,
    name: &str,
) -> Result<GrantRequestInfo, Status> {
    let client = who.connect(hub).await;
    let response: RequestGrantResponse = client
        .unary(
            REQUEST_GRANT_PATH,
            RequestGrantRequest {
                name: name.into(),
                duration_ms: 60_000,
                reason: "INC-1: look at the orders".into(),
            },
        )
        .await?;
    Ok(response.request.unwrap())
}

/// `by` quarantines `who` (an administrator's act).
async fn quarantine(hub: &HubHandle, by: &Agent, who: &Agent) -> entente_wire::QuarantineResponse {
    by.connect(hub)
        .await
        .unary(
            entente_hub::QUARANTINE_PATH,
            entente_wire::QuarantineRequest {
                impose: who.principal.to_string(),
                release: String::new(),
                reason: "seen scanning".into(),
            },
        )
        .await
        .unwrap()
}

async fn grant(
    hub: &HubHandle,
    granter: &Agent,
    to: &Principal,
    duration_ms: u64,
) -> Result<GrantInfo, Status> {
    grant_named(hub, granter, to, "orders-peek", duration_ms).await
}

async fn grant_named(
    hub: &HubHandle,
    granter: &Agent,
    to: &Principal,
    name: &str,
    duration_ms: u64,
) -> Result<GrantInfo, Status> {
    let client = granter.connect(hub).await;
    let response: GrantResponse = client
        .unary(
            GRANT_PATH,
            GrantRequest {
                principal: to.to_string(),
                name: name.into(),
                duration_ms,
                not_after_ms: 0,
                reason: "INC-2".into(),
            },
        )
        .await?;
    Ok(response.grant.unwrap())
}

async fn list(hub: &HubHandle, who: &Agent) -> ListGrantsResponse {
    who.connect(hub)
        .await
        .unary(LIST_GRANTS_PATH, ListGrantsRequest::default())
        .await
        .unwrap()
}

/// `approver`'s signed statement about `request` as shown, with `verdict`.
fn statement(approver: &Agent, request: &GrantRequestInfo, verdict: Verdict) -> ApproveRequest {
    let hash = GrantRequestBody {
        id: &request.id,
        requester: &request.requester,
        name: &request.name,
        duration_ms: request.duration_ms,
        reason: &request.reason,
        created_at_ms: request.created_at_ms,
        expires_at_ms: request.expires_at_ms,
    }
    .hash();
    signed(
        approver,
        ApprovalStatement {
            verdict,
            kind: ObjectKind::GrantRequest,
            object_id: request.id.clone(),
            object_hash: hash,
            approver: approver.principal.clone(),
            key_epoch: approver.bundle.epoch(),
            signed_at_ms: now_ms(),
        },
    )
}

#[tokio::test]
async fn statements_are_checked_signed_bound_and_never_replayed() {
    let ca = TestCa::new();
    let hub = Hub::start(config(), ca.ca.clone(), ca.store())
        .await
        .unwrap();
    let eve = enroll(&hub, "ops", "eve").await;
    let ann = human(&hub, "ann").await;
    let bob = human(&hub, "bob").await;
    let request = request_grant(&hub, &eve, "orders-read").await.unwrap();
    assert_eq!((request.state.as_str(), request.required), ("pending", 2));

    // A statement signed with another key than the approver's.
    let mut forged = statement(&ann, &request, Verdict::Approve);
    forged.signature = {
        let s = forged.statement.clone().unwrap();
        ApprovalStatement {
            verdict: Verdict::Approve,
            kind: ObjectKind::GrantRequest,
            object_id: s.object_id,
            object_hash: s.object_hash.try_into().unwrap(),
            approver: ann.principal.clone(),
            key_epoch: s.key_epoch,
            signed_at_ms: s.signed_at_ms,
        }
        .sign(&bob.keys)
        .unwrap()
        .signature()
        .to_vec()
    };
    refused(
        approve(&hub, &ann, forged).await,
        Code::PermissionDenied,
        "does not verify",
    );
    // Ann's genuine statement, sent over bob's connection: not the caller's.
    refused(
        approve(&hub, &bob, statement(&ann, &request, Verdict::Approve)).await,
        Code::PermissionDenied,
        "not as the caller",
    );
    // A statement about the request as it never was (another reason): the hash differs.
    let altered = GrantRequestInfo {
        reason: "something else".into(),
        ..request.clone()
    };
    refused(
        approve(&hub, &ann, statement(&ann, &altered, Verdict::Approve)).await,
        Code::InvalidArgument,
        "saw another request",
    );
    // About a request that does not exist.
    let unknown = GrantRequestInfo {
        id: "r-42".into(),
        ..request.clone()
    };
    refused(
        approve(&hub, &ann, statement(&ann, &unknown, Verdict::Approve)).await,
        Code::NotFound,
        "unknown request r-42",
    );
    // The requester approving itself: separation of duties, whatever the policies say.
    refused(
        approve(&hub, &eve, statement(&eve, &request, Verdict::Approve)).await,
        Code::PermissionDenied,
        "cannot approve its own request",
    );

    // Ann approves; the same statement again is a replay; a new one by her counts once.
    let first = statement(&ann, &request, Verdict::Approve);
    let pending = approve(&hub, &ann, first.clone()).await.unwrap();
    assert_eq!(
        (
            pending.outcome.as_str(),
            pending.approvals,
            pending.required
        ),
        ("pending", 1, 2)
    );
    refused(
        approve(&hub, &ann, first.clone()).await,
        Code::AlreadyExists,
        "replayed statement",
    );
    refused(
        approve(&hub, &ann, statement(&ann, &request, Verdict::Approve)).await,
        Code::FailedPrecondition,
        "already approved by",
    );
    let granted = approve(&hub, &bob, statement(&bob, &request, Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(granted.outcome, "granted");
    let grant = granted.grant.unwrap();
    assert_eq!(grant.principal, eve.principal.as_str());
    assert_eq!(
        grant.approvers,
        [ann.principal.to_string(), bob.principal.to_string()]
    );
    // Replayed after the decision, and decided: both refused.
    refused(
        approve(&hub, &ann, first).await,
        Code::AlreadyExists,
        "replayed statement",
    );
    refused(
        approve(&hub, &ann, statement(&ann, &request, Verdict::Reject)).await,
        Code::FailedPrecondition,
        "already granted",
    );
    let mut session = eve.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.>").await, ack(1));
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn approvers_need_a_permit_a_key_bundle_and_a_well_formed_statement() {
    let ca = TestCa::new();
    let hub = Hub::start(config(), ca.ca.clone(), ca.store())
        .await
        .unwrap();
    let eve = enroll(&hub, "ops", "eve").await;
    let mallory = enroll(&hub, "ops", "mallory").await;
    let request = request_grant(&hub, &eve, "orders-read").await.unwrap();

    // An agent without an `approve` permit.
    refused(
        approve(
            &hub,
            &mallory,
            statement(&mallory, &request, Verdict::Approve),
        )
        .await,
        Code::PermissionDenied,
        "is denied",
    );
    // A human the registry never saw, who sends no bundle.
    let stranger = ca.identity(
        Principal::from(HumanId::new(&ca.td, "stranger").unwrap()),
        SystemTime::now(),
    );
    let mut bare = statement(&stranger, &request, Verdict::Approve);
    bare.key_bundle = None;
    refused(
        approve(&hub, &stranger, bare).await,
        Code::FailedPrecondition,
        "knows no key bundle",
    );
    // With its CA-signed bundle it may.
    let pending = approve(
        &hub,
        &stranger,
        statement(&stranger, &request, Verdict::Approve),
    )
    .await
    .unwrap();
    assert_eq!(pending.outcome, "pending");
    // Malformed statements.
    let mut bad = statement(&stranger, &request, Verdict::Approve);
    bad.statement.as_mut().unwrap().verdict = "perhaps".into();
    refused(
        approve(&hub, &stranger, bad).await,
        Code::InvalidArgument,
        "verdict",
    );
    let mut missing = statement(&stranger, &request, Verdict::Approve);
    missing.statement = None;
    refused(
        approve(&hub, &stranger, missing).await,
        Code::InvalidArgument,
        "`statement` is missing",
    );
    let mut short = statement(&stranger, &request, Verdict::Approve);
    short.signature.truncate(10);
    refused(
        approve(&hub, &stranger, short).await,
        Code::InvalidArgument,
        "malformed",
    );
    // Grants and requests: bad names, a principal of another trust domain, no end.
    let ann = human(&hub, "ann").await;
    refused(
        request_grant(&hub, &eve, "nope").await,
        Code::InvalidArgument,
        "unknown grant `nope`",
    );
    let foreign = Principal::parse("spiffe://elsewhere.org/agent/ops/eve").unwrap();
    refused(
        grant(&hub, &ann, &foreign, 1_000).await,
        Code::InvalidArgument,
        "trust domain",
    );
    refused(
        grant(&hub, &ann, &eve.principal, 0).await,
        Code::InvalidArgument,
        "duration_ms",
    );
    refused(
        grant(&hub, &mallory, &eve.principal, 1_000).await,
        Code::PermissionDenied,
        "granting to",
    );
    // Everyone sees their own; the human everything.
    assert_eq!(list(&hub, &eve).await.requests.len(), 1);
    assert_eq!(list(&hub, &mallory).await.requests.len(), 0);
    assert_eq!(list(&hub, &ann).await.requests.len(), 1);
    let stats = hub.stats();
    assert!(stats.grant_refusals >= 9, "{stats:?}");
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_store_failure_refuses_the_change_and_a_grant_still_ends_on_time() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FlakyStore::new(dir.path()));
    let hub = Hub::start(config(), ca.ca.clone(), store.clone())
        .await
        .unwrap();
    let eve = enroll(&hub, "ops", "eve").await;
    let ann = human(&hub, "ann").await;

    store.fail.store(true, Ordering::SeqCst);
    let epoch = hub.policy_epoch();
    refused(
        grant(&hub, &ann, &eve.principal, 60_000).await,
        Code::Unavailable,
        "could not be stored: nothing changed",
    );
    refused(
        request_grant(&hub, &eve, "orders-read").await,
        Code::Unavailable,
        "nothing changed",
    );
    assert_eq!(hub.grant_book().revision(), 0);
    assert_eq!(hub.policy_epoch(), epoch);
    assert!(list(&hub, &ann).await.grants.is_empty());
    let mut session = eve.session(&hub).await;
    assert_eq!(
        support::refusal(session.subscribe(1, "orders.>").await).1,
        RefusalCode::Denied
    );

    // The store is back: a short grant (long enough for a loaded machine to subscribe under
    // it) opens the subscription...
    store.fail.store(false, Ordering::SeqCst);
    grant(&hub, &ann, &eve.principal, 3_000).await.unwrap();
    assert!(hub.policy_epoch() > epoch);
    assert_eq!(session.subscribe(2, "orders.>").await, ack(2));
    // ...and, though the store fails again, ends it on time: the hub bumps the epoch anyway.
    store.fail.store(true, Ordering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(10), session.next_kind())
        .await
        .unwrap();
    match ended {
        server_frame::Kind::SubscriptionEnded(e) => {
            assert_eq!(e.subscription_id, 2);
            assert_eq!(RefusalCode::from_u32(e.code), Some(RefusalCode::Denied));
        }
        other => panic!("expected the subscription to end, got {other:?}"),
    }
    support::eventually("a failed store is counted", || {
        hub.stats().grant_store_failures >= 3
    })
    .await;
    // Once the store is back, the ended grant leaves the book.
    store.fail.store(false, Ordering::SeqCst);
    support::eventually("the ended grant is expired", || {
        hub.grant_book().grants().next().is_none()
    })
    .await;
    hub.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_stored_book_that_does_not_decode_is_a_start_error() {
    let ca = TestCa::new();
    let store = ca.store();
    store.put_grants(3, b"{\"version\":9}").await.unwrap();
    let err = Hub::start(config(), ca.ca.clone(), store)
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::StoredGrants(_)), "{err}");
    assert!(err.to_string().contains("grant book"), "{err}");
}

/// An approval counts only while its approver stands: revoked or quarantined since, it is
/// kept in the request's history but no longer counts towards the M.
#[tokio::test]
async fn approvals_of_approvers_cut_off_since_no_longer_count() {
    let ca = TestCa::new();
    let hub = Hub::start(config(), ca.ca.clone(), ca.store())
        .await
        .unwrap();
    let eve = enroll(&hub, "ops", "eve").await;
    let (ann, bob) = (human(&hub, "ann").await, human(&hub, "bob").await);
    let (carl, dan) = (human(&hub, "carl").await, human(&hub, "dan").await);
    let request = request_grant(&hub, &eve, "orders-read").await.unwrap();
    let approved = |who: &Agent| statement(who, &request, Verdict::Approve);
    let answer = approve(&hub, &ann, approved(&ann)).await.unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));

    // Ann revoked: bob's approval is the only one that counts.
    let mut revocations = entente_ca::Revocations::new();
    revocations.revoke_principal(&ann.principal);
    let now = SystemTime::now();
    let list = ca.ca.sign_revocations(&revocations, now).unwrap();
    let verified = entente_ca::VerifiedRevocationList::verify(list, ca.trust(), now).unwrap();
    hub.revoke(verified).await.unwrap();
    let answer = approve(&hub, &bob, approved(&bob)).await.unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));

    // Bob quarantined: carl's is the only one that counts.
    assert_eq!(quarantine(&hub, &dan, &bob).await.quarantined.len(), 1);
    let answer = approve(&hub, &carl, approved(&carl)).await.unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));

    let answer = approve(&hub, &dan, approved(&dan)).await.unwrap();
    assert_eq!(answer.outcome, "granted");
    assert_eq!(
        answer.grant.unwrap().approvers,
        [carl.principal.to_string(), dan.principal.to_string()]
    );

    // A quarantined requester's request is not approved while it is.
    let fay = enroll(&hub, "ops", "fay").await;
    let request = request_grant(&hub, &fay, "orders-read").await.unwrap();
    quarantine(&hub, &dan, &fay).await;
    refused(
        approve(&hub, &carl, statement(&carl, &request, Verdict::Approve)).await,
        Code::FailedPrecondition,
        "is quarantined",
    );
    hub.shutdown().await.unwrap();
}

/// Revoking the certificate an approval was made with (a stolen one, revoked by serial, its
/// principal not revoked) voids that approval; revoking the one a request was made with, the
/// request: it is approved no more, though it may still be rejected.
#[tokio::test]
async fn revoking_the_certificate_a_request_or_an_approval_was_made_with_voids_it() {
    let ca = TestCa::new();
    let hub = Hub::start(config(), ca.ca.clone(), ca.store())
        .await
        .unwrap();
    let (eve, fay) = (
        enroll(&hub, "ops", "eve").await,
        enroll(&hub, "ops", "fay").await,
    );
    let (ann, bob, carl) = (
        human(&hub, "ann").await,
        human(&hub, "bob").await,
        human(&hub, "carl").await,
    );
    let eves = request_grant(&hub, &eve, "orders-read").await.unwrap();
    let fays = request_grant(&hub, &fay, "orders-read").await.unwrap();
    let answer = approve(&hub, &ann, statement(&ann, &eves, Verdict::Approve))
        .await
        .unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));

    // Ann's and fay's certificates are revoked by serial (their principals stay).
    let mut revocations = entente_ca::Revocations::new();
    revocations.revoke_serial(&ann.svid.serial).unwrap();
    revocations.revoke_serial(&fay.svid.serial).unwrap();
    let now = SystemTime::now();
    let list = ca.ca.sign_revocations(&revocations, now).unwrap();
    let verified = entente_ca::VerifiedRevocationList::verify(list, ca.trust(), now).unwrap();
    hub.revoke(verified).await.unwrap();

    // Ann's approval no longer counts: bob's alone does not make the grant.
    let answer = approve(&hub, &bob, statement(&bob, &eves, Verdict::Approve))
        .await
        .unwrap();
    assert_eq!((answer.outcome.as_str(), answer.approvals), ("pending", 1));
    let answer = approve(&hub, &carl, statement(&carl, &eves, Verdict::Approve))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "granted");
    // Fay's request was made with the revoked certificate: approved no more, still rejected.
    refused(
        approve(&hub, &bob, statement(&bob, &fays, Verdict::Approve)).await,
        Code::FailedPrecondition,
        "asked with a certificate revoked since",
    );
    let answer = approve(&hub, &bob, statement(&bob, &fays, Verdict::Reject))
        .await
        .unwrap();
    assert_eq!(answer.outcome, "rejected");
    hub.shutdown().await.unwrap();
}

/// One granter is one approval: a grant whose definition asks for two is given only through a
/// request that two approve (separation of duties), never directly.
#[tokio::test]
async fn a_grant_that_needs_approvals_is_not_given_directly() {
    let ca = TestCa::new();
    let hub = Hub::start(config(), ca.ca.clone(), ca.store())
        .await
        .unwrap();
    let eve = enroll(&hub, "ops", "eve").await;
    let ann = human(&hub, "ann").await;
    refused(
        grant_named(&hub, &ann, &eve.principal, "orders-read", 60_000).await,
        Code::PermissionDenied,
        "needs 2 approvals",
    );
    assert!(list(&hub, &eve).await.grants.is_empty());
    // One approval: given directly.
    grant(&hub, &ann, &eve.principal, 60_000).await.unwrap();
    hub.shutdown().await.unwrap();
}

/// A policy load ends the grants the new set no longer allows as given (`orders-peek` now
/// lasts at most 15 minutes: one given for 45 ends), and live sessions lose what they opened.
#[tokio::test]
async fn a_policy_load_ends_the_grants_it_no_longer_allows() {
    let ca = TestCa::new();
    let hub = Hub::start(config(), ca.ca.clone(), ca.store())
        .await
        .unwrap();
    let eve = enroll(&hub, "ops", "eve").await;
    let ann = human(&hub, "ann").await;
    grant(&hub, &ann, &eve.principal, 45 * 60_000)
        .await
        .unwrap();
    let mut session = eve.session(&hub).await;
    assert_eq!(session.subscribe(1, "orders.eu").await, ack(1));
    assert_eq!(list(&hub, &eve).await.grants.len(), 1);

    let shorter = POLICIES.replace(
        "@grant(\"orders-peek\")\n    @max_duration(\"1h\")",
        "@grant(\"orders-peek\")\n    @max_duration(\"15m\")",
    );
    assert_ne!(shorter, POLICIES);
    hub.load_policies(sources(&shorter)).await.unwrap();
    assert!(list(&hub, &eve).await.grants.is_empty());
    // The subscription it opened is ended, and a new one refused.
    match session.next_kind().await {
        server_frame::Kind::SubscriptionEnded(ended) => assert_eq!(ended.subscription_id, 1),
        other => panic!("{other:?}"),
    }
    let (_, code) = support::refusal(session.subscribe(2, "orders.eu").await);
    assert_eq!(code, RefusalCode::Denied);
    hub.shutdown().await.unwrap();
}
