//! The grant book: direct grants, just-in-time requests with M-of-N signed approvals,
//! expiry as time passes, and the encoding for the store. Every rule, and every bad input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use entente_crypto::{
    ApprovalError, ApprovalIn, ApprovalStatement, MessageKeys, ObjectKind, Verdict,
    VerifiedApproval,
};
use entente_policy::{
    Action, ActiveGrant, ApprovalRecord, BookDecodeError, Facts, Grant, GrantBook, GrantEnd,
    GrantError, GrantId, GrantLimits, GrantRequest, GrantedBy, MAX_BOOK_LEN, MAX_CREDENTIALS,
    MAX_REASON_LEN, MAX_SERIAL_LEN, NewGrant, NewRequest, Outcome, PolicySet, RequestId,
    RequestState, Resource, Subject,
};
use entente_types::{Channel, Principal};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000;
const MINUTE: u64 = 60_000;
const HOUR: u64 = 60 * MINUTE;

const POLICIES: &str = r#"
@id("demo-read")
@grant("demo-read")
permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
  when { context.grants.contains("demo-read") };

@id("payments-write")
@grant("payments-write")
@approvals("2")
@max_duration("1h")
permit (principal, action == Action::"publish", resource in Namespace::"payments")
  when { context.grants.contains("payments-write") };

@id("logs-write")
@grant("logs-write")
@max_duration("1h")
permit (principal, action == Action::"publish", resource in Namespace::"logs")
  when { context.grants.contains("logs-write") };
"#;

fn policies() -> PolicySet {
    PolicySet::parse("grants.cedar", POLICIES).unwrap()
}

/// A principal and its message keys.
struct Party {
    id: Principal,
    keys: MessageKeys,
}

impl Party {
    fn new(id: &str) -> Self {
        Self {
            id: Principal::parse(id).unwrap(),
            keys: MessageKeys::generate().unwrap(),
        }
    }

    fn statement(&self, request: &GrantRequest, verdict: Verdict, at: u64) -> ApprovalStatement {
        ApprovalStatement {
            verdict,
            kind: ObjectKind::GrantRequest,
            object_id: request.id.to_string(),
            object_hash: request.hash(),
            approver: self.id.clone(),
            key_epoch: 1,
            signed_at_ms: at,
        }
    }

    /// Signs `statement` and verifies it with this party's key, as the hub would.
    fn verified(&self, statement: ApprovalStatement, now: u64) -> VerifiedApproval {
        ApprovalIn::from(statement.sign(&self.keys).unwrap())
            .verify_with_key(&self.id, &self.keys.ed25519_public(), now)
            .unwrap()
    }

    fn approves(&self, request: &GrantRequest, at: u64) -> VerifiedApproval {
        self.verified(self.statement(request, Verdict::Approve, at), at)
    }

    fn rejects(&self, request: &GrantRequest, at: u64) -> VerifiedApproval {
        self.verified(self.statement(request, Verdict::Reject, at), at)
    }
}

struct World {
    policies: PolicySet,
    book: GrantBook,
    alice: Party,
    ann: Party,
    bob: Party,
    cat: Party,
}

fn world() -> World {
    World {
        policies: policies(),
        book: GrantBook::default(),
        alice: Party::new("spiffe://acme.internal/agent/demo/alice"),
        ann: Party::new("spiffe://acme.internal/human/ann"),
        bob: Party::new("spiffe://acme.internal/human/bob"),
        cat: Party::new("spiffe://acme.internal/human/cat"),
    }
}

impl World {
    /// Ann grants alice `name` until `end`, at `now`.
    fn grant(&mut self, name: &str, end: GrantEnd, now: u64) -> Result<Grant, GrantError> {
        let grant = new_grant(self, name, end);
        self.book.grant(&self.policies, grant, now)
    }

    /// Alice requests `name` for `duration_ms`, at `now`.
    fn request(
        &mut self,
        name: &str,
        duration_ms: u64,
        now: u64,
    ) -> Result<GrantRequest, GrantError> {
        let request = new_request(self, name, duration_ms);
        self.book.request(&self.policies, request, now)
    }
}

fn new_grant(w: &World, name: &str, end: GrantEnd) -> NewGrant {
    NewGrant {
        name: name.to_owned(),
        principal: w.alice.id.clone(),
        granter: w.ann.id.clone(),
        end,
        reason: "INC-42: read the demo logs".to_owned(),
    }
}

fn new_request(w: &World, name: &str, duration_ms: u64) -> NewRequest {
    NewRequest {
        requester: w.alice.id.clone(),
        name: name.to_owned(),
        duration_ms,
        reason: "deploy the payments fix".to_owned(),
        credentials: vec![vec![0x5a; 16]],
    }
}

fn active_names(book: &GrantBook, who: &Principal, now: u64) -> Vec<String> {
    book.active_for(who, now)
        .into_iter()
        .map(|g| g.id)
        .collect()
}

// === a new policy set ===

/// Grants given under one set conform to the next: a grant whose definition is gone, or given
/// for longer than the new `@max_duration` allows, ends; the others stay as they were.
#[test]
fn a_new_policy_set_ends_the_grants_it_no_longer_allows() {
    let mut w = world();
    let kept = w
        .grant("demo-read", GrantEnd::After(2 * HOUR), NOW)
        .unwrap();
    let long = w.grant("logs-write", GrantEnd::After(HOUR), NOW).unwrap();
    assert!(
        w.book.conform(&w.policies).is_empty(),
        "the same set ends nothing"
    );
    let revision = w.book.revision();
    // `logs-write` now lasts at most 30 minutes; `payments-write` and the rest are gone.
    let next = PolicySet::parse(
        "next.cedar",
        r#"
@id("demo-read")
@grant("demo-read")
permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
  when { context.grants.contains("demo-read") };

@id("logs-write")
@grant("logs-write")
@max_duration("30m")
permit (principal, action == Action::"publish", resource in Namespace::"logs")
  when { context.grants.contains("logs-write") };
"#,
    )
    .unwrap();
    let ended = w.book.conform(&next);
    assert_eq!(ended, [long]);
    assert!(w.book.revision() > revision);
    assert_eq!(
        active_names(&w.book, &w.alice.id, NOW + MINUTE),
        ["demo-read"]
    );
    // Given by one, a grant that now needs two approvals ends.
    let two = PolicySet::parse(
        "two.cedar",
        r#"
@id("demo-read")
@grant("demo-read")
@approvals("2")
permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
  when { context.grants.contains("demo-read") };
"#,
    )
    .unwrap();
    let mut copy = w.book.clone();
    assert_eq!(copy.conform(&two), std::slice::from_ref(&kept));
    // Without its definition, a grant ends too.
    let bare = PolicySet::parse(
        "bare.cedar",
        "forbid (principal, action, resource in Namespace::\"x\");",
    )
    .unwrap();
    assert_eq!(w.book.conform(&bare), [kept]);
    assert!(active_names(&w.book, &w.alice.id, NOW + MINUTE).is_empty());
}

// === direct grants ===
// === direct grants ===

#[test]
fn a_direct_grant_opens_its_policy_until_it_ends() {
    let mut w = world();
    let grant = w
        .grant("demo-read", GrantEnd::After(15 * MINUTE), NOW)
        .unwrap();
    assert_eq!(grant.id.to_string(), "g-1");
    assert_eq!(
        (grant.not_before_ms, grant.not_after_ms),
        (NOW, NOW + 15 * MINUTE)
    );
    assert_eq!(grant.granted_by, GrantedBy::Granter(w.ann.id.clone()));
    assert_eq!(w.book.revision(), 1);

    let active = w.book.active_for(&w.alice.id, NOW);
    assert_eq!(
        active,
        [ActiveGrant {
            id: "demo-read".to_owned(),
            not_after_ms: NOW + 15 * MINUTE
        }]
    );
    assert!(w.book.active_for(&w.bob.id, NOW).is_empty());

    // The policy it is defined by now allows, and stops when it ends.
    let subject = Subject::new(w.alice.id.clone(), Vec::<String>::new());
    let channel = Channel::parse("demo.logs").unwrap();
    let decide = |book: &GrantBook, at: u64| {
        let facts = Facts {
            grants: book.active_for(&w.alice.id, at),
            ..Facts::default()
        };
        w.policies
            .decide(
                &subject,
                Action::Subscribe,
                &Resource::Channel(&channel),
                &facts,
                at,
            )
            .allowed
    };
    assert!(decide(&w.book, NOW));
    assert!(decide(&w.book, NOW + 15 * MINUTE - 1));
    assert!(!decide(&w.book, NOW + 15 * MINUTE));
}

#[test]
fn a_direct_grant_until_a_time() {
    let mut w = world();
    let grant = w.grant("demo-read", GrantEnd::At(NOW + HOUR), NOW).unwrap();
    assert_eq!(grant.not_after_ms, NOW + HOUR);
}

#[test]
fn direct_grant_bad_inputs() {
    let w = world();
    let p = policies();
    let mut book = GrantBook::default();
    let mut check = |new: NewGrant, want: GrantError| {
        let err = book.grant(&p, new, NOW).unwrap_err();
        assert_eq!(err, want);
        assert!(!err.to_string().is_empty());
    };
    check(
        new_grant(&w, "nobody-defines-this", GrantEnd::After(MINUTE)),
        GrantError::UnknownGrant("nobody-defines-this".to_owned()),
    );
    check(
        new_grant(&w, "bad name", GrantEnd::After(MINUTE)),
        GrantError::InvalidName("bad name".to_owned()),
    );
    check(
        new_grant(&w, "demo-read", GrantEnd::After(0)),
        GrantError::ZeroDuration,
    );
    check(
        new_grant(&w, "demo-read", GrantEnd::After(8 * HOUR + 1)),
        GrantError::TooLong {
            name: "demo-read".to_owned(),
            requested_ms: 8 * HOUR + 1,
            max_ms: 8 * HOUR,
        },
    );
    check(
        new_grant(&w, "payments-write", GrantEnd::At(NOW + HOUR + 1)),
        GrantError::TooLong {
            name: "payments-write".to_owned(),
            requested_ms: HOUR + 1,
            max_ms: HOUR,
        },
    );
    for end in [NOW, NOW - 1, 0] {
        check(
            new_grant(&w, "demo-read", GrantEnd::At(end)),
            GrantError::AlreadyEnded {
                not_after_ms: end,
                now_ms: NOW,
            },
        );
    }
    let mut g = new_grant(&w, "demo-read", GrantEnd::After(MINUTE));
    g.reason = String::new();
    check(g.clone(), GrantError::EmptyReason);
    g.reason = " \t".to_owned();
    check(g.clone(), GrantError::ReasonControl);
    g.reason = "INC-7 \u{202e}ylno daer".to_owned();
    check(g.clone(), GrantError::ReasonControl);
    g.reason = "   ".to_owned();
    check(g.clone(), GrantError::EmptyReason);
    g.reason = "x".repeat(MAX_REASON_LEN + 1);
    check(
        g.clone(),
        GrantError::ReasonTooLong {
            len: MAX_REASON_LEN + 1,
            max: MAX_REASON_LEN,
        },
    );
    g.reason = "ok".to_owned();
    g.granter = g.principal.clone();
    check(g, GrantError::SelfGrant(w.alice.id.as_str().to_owned()));
    // One granter is one approval: a grant that needs two is never given directly.
    check(
        new_grant(&w, "payments-write", GrantEnd::After(HOUR)),
        GrantError::NeedsApprovals {
            name: "payments-write".to_owned(),
            approvals: 2,
        },
    );
    // Nothing was given, and nothing counted as a change.
    assert_eq!(book.grants().count(), 0);
    assert_eq!(book.revision(), 0);
    // The maximum itself is fine.
    book.grant(&p, new_grant(&w, "logs-write", GrantEnd::After(HOUR)), NOW)
        .unwrap();
}

#[test]
fn grants_per_principal_are_bounded() {
    let mut w = world();
    w.book = GrantBook::new(GrantLimits {
        max_grants_per_principal: 2,
        max_grants: 3,
        ..GrantLimits::default()
    });
    for _ in 0..2 {
        w.grant("demo-read", GrantEnd::After(MINUTE), NOW).unwrap();
    }
    let err = w
        .grant("demo-read", GrantEnd::After(MINUTE), NOW)
        .unwrap_err();
    assert!(
        matches!(err, GrantError::TooManyGrantsFor { max: 2, .. }),
        "{err}"
    );
    let mut other = new_grant(&w, "demo-read", GrantEnd::After(MINUTE));
    other.principal = w.cat.id.clone();
    w.book.grant(&w.policies, other.clone(), NOW).unwrap();
    assert_eq!(
        w.book.grant(&w.policies, other.clone(), NOW).unwrap_err(),
        GrantError::TooManyGrants(3)
    );
    // Ended grants do not count, even before `expire`.
    w.book.grant(&w.policies, other, NOW + MINUTE).unwrap();
}

#[test]
fn two_grants_of_one_name_show_once_with_the_later_end() {
    let mut w = world();
    w.grant("demo-read", GrantEnd::After(HOUR), NOW).unwrap();
    w.grant("demo-read", GrantEnd::After(MINUTE), NOW).unwrap();
    let active = w.book.active_for(&w.alice.id, NOW);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].not_after_ms, NOW + HOUR);
}

#[test]
fn revoke_ends_a_grant_now() {
    let mut w = world();
    let grant = w.grant("demo-read", GrantEnd::After(HOUR), NOW).unwrap();
    assert_eq!(w.book.revoke(grant.id).unwrap(), grant);
    assert!(w.book.active_for(&w.alice.id, NOW).is_empty());
    assert_eq!(
        w.book.revoke(grant.id).unwrap_err(),
        GrantError::UnknownGrantRecord(grant.id)
    );
    assert_eq!(
        w.book
            .revoke("g-99".parse::<GrantId>().unwrap())
            .unwrap_err()
            .to_string(),
        "unknown grant record g-99"
    );
}

// === just-in-time requests ===

#[test]
fn one_approval_grants_a_one_of_n_request_from_that_moment() {
    let mut w = world();
    let request = w.request("demo-read", 30 * MINUTE, NOW).unwrap();
    assert_eq!(request.id.to_string(), "r-1");
    assert_eq!(request.state, RequestState::Pending);
    assert_eq!(request.required, 1);
    assert_eq!(request.expires_at_ms, NOW + HOUR);
    // Pending is not granted.
    assert!(w.book.active_for(&w.alice.id, NOW).is_empty());

    let at = NOW + 5 * MINUTE;
    let outcome = w
        .book
        .decide(&w.policies, request.id, &w.ann.approves(&request, at), at)
        .unwrap();
    let Outcome::Granted(grant) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        (grant.not_before_ms, grant.not_after_ms),
        (at, at + 30 * MINUTE)
    );
    assert_eq!(grant.principal, w.alice.id);
    assert_eq!(grant.reason, "deploy the payments fix");
    assert_eq!(
        grant.granted_by,
        GrantedBy::Request {
            request: request.id,
            approvers: vec![w.ann.id.clone()]
        }
    );
    assert_eq!(active_names(&w.book, &w.alice.id, at), ["demo-read"]);
    let stored = w.book.request_record(request.id).unwrap();
    assert_eq!(
        stored.state,
        RequestState::Granted {
            grant: grant.id,
            at_ms: at
        }
    );
    assert_eq!(stored.approvals.len(), 1);
    assert_eq!(stored.approvals[0].received_at_ms, at);
}

#[test]
fn m_of_n_grants_exactly_at_the_m_th_distinct_approval() {
    let mut w = world();
    let request = w.request("payments-write", HOUR, NOW).unwrap();
    assert_eq!(request.required, 2);

    let first = w.ann.approves(&request, NOW + 1);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &first, NOW + 1)
            .unwrap(),
        Outcome::Pending {
            approvals: 1,
            required: 2
        }
    );
    assert!(w.book.active_for(&w.alice.id, NOW + 1).is_empty());

    // A second approval by the same approver, even freshly signed, does not count.
    let again = w.ann.approves(&request, NOW + 2);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &again, NOW + 2)
            .unwrap_err(),
        GrantError::AlreadyApproved {
            request: request.id,
            approver: w.ann.id.as_str().to_owned()
        }
    );
    assert_eq!(
        GrantError::AlreadyApproved {
            request: request.id,
            approver: w.ann.id.as_str().to_owned()
        }
        .to_string(),
        "request r-1 was already approved by `spiffe://acme.internal/human/ann`"
    );
    // Nor does the requester's.
    let own = w.alice.approves(&request, NOW + 2);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &own, NOW + 2)
            .unwrap_err(),
        GrantError::SelfApproval {
            request: request.id,
            approver: w.alice.id.as_str().to_owned()
        }
    );
    assert!(w.book.active_for(&w.alice.id, NOW + 2).is_empty());

    let second = w.bob.approves(&request, NOW + 3);
    let Outcome::Granted(grant) = w
        .book
        .decide(&w.policies, request.id, &second, NOW + 3)
        .unwrap()
    else {
        panic!("two approvals of two should grant")
    };
    assert_eq!(
        grant.granted_by,
        GrantedBy::Request {
            request: request.id,
            approvers: vec![w.ann.id.clone(), w.bob.id.clone()]
        }
    );
    assert_eq!(
        active_names(&w.book, &w.alice.id, NOW + 3),
        ["payments-write"]
    );

    // A third approval finds the request granted.
    let third = w.cat.approves(&request, NOW + 4);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &third, NOW + 4)
            .unwrap_err(),
        GrantError::AlreadyGranted(request.id)
    );
    // Only one grant came of it.
    assert_eq!(w.book.grants().count(), 1);
}

#[test]
fn a_replayed_statement_is_refused() {
    let mut w = world();
    let request = w.request("payments-write", HOUR, NOW).unwrap();
    let approval = w.ann.approves(&request, NOW + 1);
    w.book
        .decide(&w.policies, request.id, &approval, NOW + 1)
        .unwrap();
    let revision = w.book.revision();
    let err = w
        .book
        .decide(&w.policies, request.id, &approval, NOW + 2)
        .unwrap_err();
    assert_eq!(err, GrantError::Replayed(request.id));
    assert!(err.to_string().contains("replayed"), "{err}");
    assert_eq!(w.book.revision(), revision);

    // Still replayed once the request is granted.
    let bob = w.bob.approves(&request, NOW + 3);
    w.book
        .decide(&w.policies, request.id, &bob, NOW + 3)
        .unwrap();
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &bob, NOW + 4)
            .unwrap_err(),
        GrantError::Replayed(request.id)
    );
}

#[test]
fn a_statement_for_another_request_never_counts() {
    let mut w = world();
    let a = w.request("payments-write", HOUR, NOW).unwrap();
    let mut other = new_request(&w, "demo-read", HOUR);
    other.requester = w.cat.id.clone();
    let b = w.book.request(&w.policies, other, NOW).unwrap();

    // Applied to B, an approval of A names A.
    let for_a = w.ann.approves(&a, NOW + 1);
    assert_eq!(
        w.book
            .decide(&w.policies, b.id, &for_a, NOW + 1)
            .unwrap_err(),
        GrantError::WrongRequest {
            request: b.id,
            statement: a.id.to_string()
        }
    );
    // Naming B with A's hash: the approver saw another request.
    let mut statement = w.ann.statement(&a, Verdict::Approve, NOW + 1);
    statement.object_id = b.id.to_string();
    let forged = w.ann.verified(statement, NOW + 1);
    assert_eq!(
        w.book
            .decide(&w.policies, b.id, &forged, NOW + 1)
            .unwrap_err(),
        GrantError::HashMismatch(b.id)
    );
    // Naming B, but about an envelope.
    let mut statement = w.ann.statement(&b, Verdict::Approve, NOW + 1);
    statement.kind = ObjectKind::Envelope;
    let envelope = w.ann.verified(statement, NOW + 1);
    assert_eq!(
        w.book
            .decide(&w.policies, b.id, &envelope, NOW + 1)
            .unwrap_err(),
        GrantError::WrongKind(ObjectKind::Envelope)
    );
    // The request as the approver saw it, with a longer duration than stored: no.
    let mut longer = a.clone();
    longer.duration_ms += 1;
    let stale = w.ann.approves(&longer, NOW + 1);
    assert_eq!(
        w.book
            .decide(&w.policies, a.id, &stale, NOW + 1)
            .unwrap_err(),
        GrantError::HashMismatch(a.id)
    );
    // Nothing was recorded on either.
    for id in [a.id, b.id] {
        assert!(w.book.request_record(id).unwrap().approvals.is_empty());
    }
}

#[test]
fn a_statement_dated_before_the_request_is_refused() {
    let mut w = world();
    let request = w.request("demo-read", HOUR, NOW).unwrap();
    let early = w.ann.approves(&request, NOW - 2 * MINUTE);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &early, NOW)
            .unwrap_err(),
        GrantError::SignedBeforeRequest {
            request: request.id,
            signed_at_ms: NOW - 2 * MINUTE
        }
    );
    // Within the clock skew allowance it counts.
    let skewed = w.ann.approves(&request, NOW - 30_000);
    assert!(matches!(
        w.book.decide(&w.policies, request.id, &skewed, NOW),
        Ok(Outcome::Granted(_))
    ));
}

#[test]
fn one_rejection_ends_a_request() {
    let mut w = world();
    let request = w.request("payments-write", HOUR, NOW).unwrap();
    w.book
        .decide(
            &w.policies,
            request.id,
            &w.ann.approves(&request, NOW + 1),
            NOW + 1,
        )
        .unwrap();
    assert_eq!(
        w.book
            .decide(
                &w.policies,
                request.id,
                &w.bob.rejects(&request, NOW + 2),
                NOW + 2
            )
            .unwrap(),
        Outcome::Rejected
    );
    assert_eq!(
        w.book.request_record(request.id).unwrap().state,
        RequestState::Rejected {
            by: w.bob.id.clone(),
            at_ms: NOW + 2
        }
    );
    for late in [
        w.cat.approves(&request, NOW + 3),
        w.cat.rejects(&request, NOW + 3),
    ] {
        assert_eq!(
            w.book
                .decide(&w.policies, request.id, &late, NOW + 3)
                .unwrap_err(),
            GrantError::AlreadyRejected(request.id)
        );
    }
    assert!(w.book.grants().next().is_none());
    assert_eq!(w.book.pending(NOW + 3).count(), 0);
}

#[test]
fn the_requester_may_withdraw_by_rejecting() {
    let mut w = world();
    let request = w.request("demo-read", HOUR, NOW).unwrap();
    assert_eq!(
        w.book
            .decide(
                &w.policies,
                request.id,
                &w.alice.rejects(&request, NOW),
                NOW
            )
            .unwrap(),
        Outcome::Rejected
    );
}

/// A requester asking and withdrawing without end keeps a bounded number of closed requests
/// in the book, its own oldest going first, and the latest stays.
#[test]
fn a_requester_keeps_a_bounded_number_of_closed_requests() {
    let mut w = world();
    let max = w.book.max_closed_per_principal();
    let mut last = None;
    for i in 0..3 * max as u64 {
        let request = w.request("demo-read", HOUR, NOW + i).unwrap();
        let withdraw = w.alice.rejects(&request, NOW + i);
        w.book
            .decide(&w.policies, request.id, &withdraw, NOW + i)
            .unwrap();
        last = Some(request.id);
    }
    let kept: Vec<_> = w.book.requests().map(|r| r.id).collect();
    assert!(kept.len() <= max, "{} kept, at most {max}", kept.len());
    assert!(kept.contains(&last.unwrap()));
}

#[test]
fn deciding_unknown_or_expired_requests_is_an_error() {
    let mut w = world();
    let request = w.request("demo-read", HOUR, NOW).unwrap();
    let unknown: RequestId = "r-7".parse().unwrap();
    let mut statement = w.ann.statement(&request, Verdict::Approve, NOW);
    statement.object_id = "r-7".to_owned();
    let approval = w.ann.verified(statement, NOW);
    assert_eq!(
        w.book
            .decide(&w.policies, unknown, &approval, NOW)
            .unwrap_err(),
        GrantError::UnknownRequest(unknown)
    );

    // Lapsed, before and after `expire` marks it.
    let end = request.expires_at_ms;
    let late = w.ann.approves(&request, end);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &late, end)
            .unwrap_err(),
        GrantError::RequestExpired(request.id)
    );
    let expired = w.book.expire(end);
    assert_eq!(expired.requests.len(), 1);
    assert_eq!(expired.requests[0].state, RequestState::Expired);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &late, end)
            .unwrap_err(),
        GrantError::RequestExpired(request.id)
    );
    // Forgotten an hour later: unknown.
    let forgotten = w.book.expire(end + HOUR);
    assert_eq!(forgotten.forgotten, [request.id]);
    assert_eq!(
        w.book
            .decide(&w.policies, request.id, &late, end + HOUR)
            .unwrap_err(),
        GrantError::UnknownRequest(request.id)
    );
}

#[test]
fn request_bad_inputs_and_bounds() {
    let w = world();
    let mut book = GrantBook::new(GrantLimits {
        max_pending_per_principal: 1,
        max_pending: 2,
        ..GrantLimits::default()
    });
    let p = policies();
    let err = |book: &mut GrantBook, new: NewRequest| book.request(&p, new, NOW).unwrap_err();
    assert_eq!(
        err(&mut book, new_request(&w, "unknown", HOUR)),
        GrantError::UnknownGrant("unknown".to_owned())
    );
    assert_eq!(
        err(&mut book, new_request(&w, "demo-read", 0)),
        GrantError::ZeroDuration
    );
    assert!(matches!(
        err(&mut book, new_request(&w, "payments-write", HOUR + 1)),
        GrantError::TooLong { max_ms: HOUR, .. }
    ));
    let mut blank = new_request(&w, "demo-read", HOUR);
    blank.reason = String::new();
    assert_eq!(err(&mut book, blank), GrantError::EmptyReason);

    let first = book
        .request(&p, new_request(&w, "demo-read", HOUR), NOW)
        .unwrap();
    assert_eq!(
        err(&mut book, new_request(&w, "demo-read", HOUR)),
        GrantError::DuplicateRequest {
            principal: w.alice.id.as_str().to_owned(),
            name: "demo-read".to_owned(),
            existing: first.id
        }
    );
    assert!(matches!(
        err(&mut book, new_request(&w, "payments-write", HOUR)),
        GrantError::TooManyRequestsFor { max: 1, .. }
    ));
    let mut bobs = new_request(&w, "demo-read", HOUR);
    bobs.requester = w.bob.id.clone();
    book.request(&p, bobs, NOW).unwrap();
    let mut cats = new_request(&w, "demo-read", HOUR);
    cats.requester = w.cat.id.clone();
    assert_eq!(err(&mut book, cats.clone()), GrantError::TooManyRequests(2));
    // Lapsed requests free their place.
    book.request(&p, cats, NOW + HOUR).unwrap();
}

/// The principals of one segment (humans together) hold at most their share of the pending
/// requests: they can't fill the book for everyone else.
#[test]
fn one_segment_holds_at_most_its_share_of_pending_requests() {
    let w = world();
    let mut book = GrantBook::new(GrantLimits {
        max_pending_per_segment: 2,
        ..GrantLimits::default()
    });
    let p = policies();
    let of = |who: &Party| {
        let mut new = new_request(&w, "demo-read", HOUR);
        new.requester = who.id.clone();
        new
    };
    book.request(&p, of(&w.ann), NOW).unwrap();
    book.request(&p, of(&w.bob), NOW).unwrap();
    assert_eq!(
        book.request(&p, of(&w.cat), NOW).unwrap_err(),
        GrantError::TooManyRequestsIn {
            segment: "(humans)".to_owned(),
            max: 2
        }
    );
    // An agent's segment has a share of its own.
    book.request(&p, of(&w.alice), NOW).unwrap();
}

#[test]
fn closed_requests_make_room_when_the_book_is_full() {
    let mut w = world();
    w.book = GrantBook::new(GrantLimits {
        max_requests: 2,
        ..GrantLimits::default()
    });
    let a = w.request("demo-read", HOUR, NOW).unwrap();
    w.book
        .decide(&w.policies, a.id, &w.ann.rejects(&a, NOW), NOW)
        .unwrap();
    w.request("payments-write", HOUR, NOW).unwrap();
    // Full: the rejected request goes to make room; the pending one stays.
    let mut bobs = new_request(&w, "demo-read", HOUR);
    bobs.requester = w.bob.id.clone();
    w.book.request(&w.policies, bobs.clone(), NOW).unwrap();
    assert!(w.book.request_record(a.id).is_none());
    bobs.requester = w.cat.id.clone();
    assert_eq!(
        w.book.request(&w.policies, bobs, NOW).unwrap_err(),
        GrantError::TooManyRequests(2)
    );
}

#[test]
fn approvals_follow_the_policies_in_force() {
    let mut w = world();
    let request = w.request("demo-read", 2 * HOUR, NOW).unwrap();
    // The policies now ask for two approvals and allow at most one hour.
    let stricter = PolicySet::parse(
        "grants.cedar",
        &POLICIES.replace(
            "@grant(\"demo-read\")",
            "@grant(\"demo-read\") @approvals(\"2\")",
        ),
    )
    .unwrap();
    assert_eq!(
        w.book
            .decide(&stricter, request.id, &w.ann.approves(&request, NOW), NOW)
            .unwrap(),
        Outcome::Pending {
            approvals: 1,
            required: 2
        }
    );
    let shorter = PolicySet::parse(
        "grants.cedar",
        &POLICIES.replace(
            "@grant(\"demo-read\")",
            "@grant(\"demo-read\") @approvals(\"2\") @max_duration(\"1h\")",
        ),
    )
    .unwrap();
    assert!(matches!(
        w.book
            .decide(&shorter, request.id, &w.bob.approves(&request, NOW), NOW)
            .unwrap_err(),
        GrantError::TooLong { max_ms: HOUR, .. }
    ));
    // Without its definition, nothing more can be approved.
    let gone = PolicySet::parse("empty.cedar", "").unwrap();
    assert_eq!(
        w.book
            .decide(&gone, request.id, &w.bob.approves(&request, NOW), NOW)
            .unwrap_err(),
        GrantError::UnknownGrant("demo-read".to_owned())
    );
    // A rejection needs no definition.
    assert_eq!(
        w.book
            .decide(&gone, request.id, &w.bob.rejects(&request, NOW), NOW)
            .unwrap(),
        Outcome::Rejected
    );
}

// === signatures ===

#[test]
fn only_statements_signed_by_the_claimed_approver_verify() {
    let w = world();
    let mut book = GrantBook::default();
    let request = book
        .request(&w.policies, new_request(&w, "demo-read", HOUR), NOW)
        .unwrap();

    // Signed by Bob's key, claiming to be Ann.
    let claims_ann = w.ann.statement(&request, Verdict::Approve, NOW);
    let by_bob = ApprovalIn::from(claims_ann.sign(&w.bob.keys).unwrap());
    assert_eq!(
        by_bob
            .clone()
            .verify_with_key(&w.bob.id, &w.bob.keys.ed25519_public(), NOW)
            .unwrap_err(),
        ApprovalError::SignerMismatch {
            claimed: w.ann.id.as_str().to_owned(),
            signer: w.bob.id.as_str().to_owned()
        }
    );
    assert_eq!(
        by_bob
            .verify_with_key(&w.ann.id, &w.ann.keys.ed25519_public(), NOW)
            .unwrap_err(),
        ApprovalError::BadSignature
    );

    // A flipped signature bit, or a changed field, breaks it.
    let signed = w
        .ann
        .statement(&request, Verdict::Approve, NOW)
        .sign(&w.ann.keys)
        .unwrap();
    let mut signature = *signed.signature();
    signature[0] ^= 1;
    let tampered = ApprovalIn::new(signed.statement().clone(), &signature).unwrap();
    assert_eq!(
        tampered
            .verify_with_key(&w.ann.id, &w.ann.keys.ed25519_public(), NOW)
            .unwrap_err(),
        ApprovalError::BadSignature
    );
    let mut reject = signed.statement().clone();
    reject.verdict = Verdict::Reject;
    assert_eq!(
        ApprovalIn::new(reject, signed.signature())
            .unwrap()
            .verify_with_key(&w.ann.id, &w.ann.keys.ed25519_public(), NOW)
            .unwrap_err(),
        ApprovalError::BadSignature
    );
    assert_eq!(
        ApprovalIn::new(signed.statement().clone(), &signature[..63]).unwrap_err(),
        ApprovalError::SignatureLength(63)
    );
}

// === expiry ===

#[test]
fn expiry_as_time_advances() {
    let mut w = world();
    assert_eq!(w.book.next_change_ms(), None);
    let short = w
        .grant("demo-read", GrantEnd::After(10 * MINUTE), NOW)
        .unwrap();
    let long = w.grant("logs-write", GrantEnd::After(HOUR), NOW).unwrap();
    let request = w.request("demo-read", HOUR, NOW + MINUTE).unwrap();
    assert_eq!(w.book.next_change_ms(), Some(NOW + 10 * MINUTE));

    // Nothing to do before the first end.
    let revision = w.book.revision();
    assert!(w.book.expire(NOW + 10 * MINUTE - 1).is_empty());
    assert_eq!(w.book.revision(), revision);
    assert_eq!(
        active_names(&w.book, &w.alice.id, NOW + 10 * MINUTE - 1),
        ["demo-read", "logs-write"]
    );

    // At its end the short grant no longer counts, before anyone calls `expire`…
    assert_eq!(
        active_names(&w.book, &w.alice.id, NOW + 10 * MINUTE),
        ["logs-write"]
    );
    // …and `expire` removes it and says so.
    let expired = w.book.expire(NOW + 10 * MINUTE);
    assert_eq!(expired.grants, [short]);
    assert!(expired.requests.is_empty());
    assert!(w.book.revision() > revision);
    assert_eq!(w.book.next_change_ms(), Some(NOW + HOUR));

    // At NOW + 1h the long grant ends; the request lapses a minute later.
    let expired = w.book.expire(NOW + HOUR);
    assert_eq!(expired.grants, [long]);
    assert_eq!(w.book.next_change_ms(), Some(request.expires_at_ms));
    let expired = w.book.expire(request.expires_at_ms);
    assert_eq!(expired.requests.len(), 1);
    assert_eq!(expired.requests[0].id, request.id);
    // The lapsed request is kept an hour for clear errors, then forgotten.
    assert_eq!(w.book.next_change_ms(), Some(request.expires_at_ms + HOUR));
    let expired = w.book.expire(request.expires_at_ms + HOUR);
    assert_eq!(expired.forgotten, [request.id]);
    assert_eq!(w.book.next_change_ms(), None);
    assert!(w.book.active_for(&w.alice.id, u64::MAX).is_empty());
}

#[test]
fn a_clock_going_backwards_does_not_panic() {
    let mut w = world();
    w.grant("demo-read", GrantEnd::After(HOUR), NOW).unwrap();
    assert!(w.book.active_for(&w.alice.id, NOW - 1).is_empty());
    assert!(w.book.expire(0).is_empty());
    w.grant("demo-read", GrantEnd::After(HOUR), u64::MAX - 1)
        .unwrap();
    w.request("demo-read", HOUR, u64::MAX).unwrap();
    // At the end of time, nothing more can be given.
    assert!(matches!(
        w.grant("demo-read", GrantEnd::After(HOUR), u64::MAX),
        Err(GrantError::AlreadyEnded { .. })
    ));
    w.book.expire(u64::MAX);
    // Whatever the clock did, the book still encodes to something it reads back.
    let again = GrantBook::decode(&w.book.encode(), GrantLimits::default()).unwrap();
    assert_eq!(again, w.book);
}

// === encoding ===

/// A book with every kind of record: an active direct grant, a granted, a rejected, a
/// pending (with one approval) and a lapsed request.
fn full_book(w: &World) -> GrantBook {
    let mut book = GrantBook::default();
    let p = &w.policies;
    book.grant(p, new_grant(w, "demo-read", GrantEnd::After(HOUR)), NOW)
        .unwrap();
    let granted = book
        .request(p, new_request(w, "payments-write", HOUR), NOW)
        .unwrap();
    book.decide(p, granted.id, &w.ann.approves(&granted, NOW), NOW)
        .unwrap();
    book.decide(p, granted.id, &w.bob.approves(&granted, NOW), NOW)
        .unwrap();
    let mut bobs = new_request(w, "payments-write", HOUR);
    bobs.requester = w.bob.id.clone();
    let pending = book.request(p, bobs, NOW).unwrap();
    book.decide(p, pending.id, &w.cat.approves(&pending, NOW), NOW)
        .unwrap();
    let mut cats = new_request(w, "demo-read", HOUR);
    cats.requester = w.cat.id.clone();
    let rejected = book.request(p, cats, NOW).unwrap();
    book.decide(p, rejected.id, &w.ann.rejects(&rejected, NOW), NOW)
        .unwrap();
    let mut anns = new_request(w, "demo-read", HOUR);
    anns.requester = w.ann.id.clone();
    book.request(p, anns, NOW - HOUR).unwrap();
    book.expire(NOW);
    book
}

#[test]
fn encode_decode_round_trip() {
    let w = world();
    let book = full_book(&w);
    assert_eq!(book.grants().count(), 2);
    assert_eq!(book.requests().count(), 4);
    let bytes = book.encode();
    let again = GrantBook::decode(&bytes, GrantLimits::default()).unwrap();
    assert_eq!(again, book);
    assert_eq!(again.encode(), bytes);
    assert_eq!(again.revision(), book.revision());

    // Decoded, it carries on: IDs do not repeat, approvals still count, replays still fail.
    let mut again = again;
    let pending = again.pending(NOW).next().unwrap().clone();
    let replay = w.cat.approves(&pending, NOW);
    assert_eq!(
        again
            .decide(&w.policies, pending.id, &replay, NOW + 1)
            .unwrap_err(),
        GrantError::Replayed(pending.id)
    );
    let Outcome::Granted(grant) = again
        .decide(
            &w.policies,
            pending.id,
            &w.ann.approves(&pending, NOW + 1),
            NOW + 1,
        )
        .unwrap()
    else {
        panic!("the second approval should grant")
    };
    assert!(book.grants().all(|g| g.id != grant.id));

    // The empty book too.
    let empty = GrantBook::default();
    assert_eq!(
        GrantBook::decode(&empty.encode(), GrantLimits::default()).unwrap(),
        empty
    );
}

#[test]
fn the_encoding_is_versioned_json() {
    let w = world();
    let bytes = full_book(&w).encode();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["grants"][0]["name"], "demo-read");
    assert_eq!(json["grants"][0]["granted_by"]["kind"], "granter");
    assert_eq!(json["requests"][0]["state"]["kind"], "granted");
    assert_eq!(json["requests"][0]["approvals"][0]["verdict"], "approve");
    assert_eq!(
        json["requests"][0]["approvals"][0]["signature"]
            .as_str()
            .unwrap()
            .len(),
        128
    );
}

#[test]
fn garbage_truncated_and_oversized_bytes_are_refused() {
    let w = world();
    let bytes = full_book(&w).encode();
    let decode = |b: &[u8]| GrantBook::decode(b, GrantLimits::default());

    for garbage in [
        &b""[..],
        b"null",
        b"[]",
        b"{}",
        b"\xff\xfe",
        b"{\"version\":1}",
    ] {
        assert!(
            matches!(decode(garbage), Err(BookDecodeError::Malformed(_))),
            "{garbage:?}"
        );
    }
    for len in 0..bytes.len() {
        assert!(decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
    }
    let oversized = vec![b' '; MAX_BOOK_LEN + 1];
    assert_eq!(
        decode(&oversized).unwrap_err(),
        BookDecodeError::TooLong {
            len: MAX_BOOK_LEN + 1,
            max: MAX_BOOK_LEN
        }
    );
    // Deep nesting is refused by the parser, not the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        decode(deep.as_bytes()),
        Err(BookDecodeError::Malformed(_))
    ));
}

/// A change to an encoded book, as JSON.
type Change = dyn Fn(&mut serde_json::Value);

#[test]
fn other_versions_and_broken_records_are_refused() {
    let w = world();
    let bytes = full_book(&w).encode();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let decode_with = |change: &Change| {
        let mut value = json.clone();
        change(&mut value);
        GrantBook::decode(&serde_json::to_vec(&value).unwrap(), GrantLimits::default())
    };

    assert_eq!(
        decode_with(&|v| v["version"] = 2.into()).unwrap_err(),
        BookDecodeError::Version {
            found: 2,
            supported: 1
        }
    );
    let malformed: [(&str, &Change); 3] = [
        ("unknown field", &|v| v["extra"] = 1.into()),
        ("wrong type", &|v| v["grants"][0]["id"] = "g-1".into()),
        ("unknown state", &|v| {
            v["requests"][0]["state"]["kind"] = "maybe".into()
        }),
    ];
    for (what, change) in malformed {
        assert!(
            matches!(decode_with(change), Err(BookDecodeError::Malformed(_))),
            "{what}"
        );
    }
    let ann = w.ann.id.as_str().to_owned();
    let alice = w.alice.id.as_str().to_owned();
    let invalid: Vec<(&str, Box<Change>)> = vec![
        (
            "bad principal",
            Box::new(|v| v["grants"][0]["principal"] = "alice".into()),
        ),
        (
            "bad name",
            Box::new(|v| v["grants"][0]["name"] = "a b".into()),
        ),
        (
            "empty window",
            Box::new(|v| v["grants"][0]["not_after_ms"] = v["grants"][0]["not_before_ms"].clone()),
        ),
        (
            "grant ID beyond the counter",
            Box::new(|v| v["grants"][0]["id"] = 999.into()),
        ),
        (
            "duplicate grant",
            Box::new(|v| {
                let first = v["grants"][0].clone();
                v["grants"].as_array_mut().unwrap().push(first);
            }),
        ),
        (
            "self grant",
            Box::new(move |v| v["grants"][0]["granted_by"]["granter"] = alice.clone().into()),
        ),
        (
            "reason with a newline",
            Box::new(|v| v["grants"][0]["reason"] = "a\nb".into()),
        ),
        (
            "repeated approver",
            Box::new(move |v| v["requests"][0]["approvals"][1]["approver"] = ann.clone().into()),
        ),
        (
            "short signature",
            Box::new(|v| v["requests"][0]["approvals"][0]["signature"] = "00".into()),
        ),
        (
            "uppercase hex",
            Box::new(|v| {
                let s = v["requests"][0]["approvals"][0]["digest"]
                    .as_str()
                    .unwrap()
                    .to_uppercase();
                v["requests"][0]["approvals"][0]["digest"] = s.into();
            }),
        ),
        (
            "granted without approvals",
            Box::new(|v| v["requests"][0]["approvals"] = serde_json::json!([])),
        ),
        (
            "zero required",
            Box::new(|v| v["requests"][0]["required"] = 0.into()),
        ),
        ("zero counter", Box::new(|v| v["next_request"] = 0.into())),
        (
            "an empty serial",
            Box::new(|v| v["requests"][0]["credentials"] = serde_json::json!([""])),
        ),
        (
            "a serial over the limit",
            Box::new(|v| {
                v["requests"][0]["credentials"] =
                    serde_json::json!(["ab".repeat(MAX_SERIAL_LEN + 1)])
            }),
        ),
        (
            "too many serials",
            Box::new(|v| {
                v["requests"][0]["credentials"] = serde_json::json!(vec!["ab"; MAX_CREDENTIALS + 1])
            }),
        ),
        (
            "a serial not in hex",
            Box::new(|v| {
                v["requests"][0]["approvals"][0]["credentials"] = serde_json::json!(["zz"])
            }),
        ),
    ];
    for (what, change) in invalid {
        let err = decode_with(&*change).unwrap_err();
        assert!(matches!(err, BookDecodeError::Invalid(_)), "{what}: {err}");
    }
}

// === properties ===

#[derive(Debug, Clone)]
enum Op {
    Grant {
        who: usize,
        name: usize,
        minutes: u64,
    },
    Request {
        who: usize,
        name: usize,
        minutes: u64,
    },
    Approve {
        by: usize,
        request: usize,
    },
    Reject {
        by: usize,
        request: usize,
    },
    Revoke {
        grant: usize,
    },
    Advance {
        minutes: u64,
    },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, 0..3usize, 0..600u64).prop_map(|(who, name, minutes)| Op::Grant {
            who,
            name,
            minutes
        }),
        (0..4usize, 0..3usize, 0..600u64).prop_map(|(who, name, minutes)| Op::Request {
            who,
            name,
            minutes
        }),
        (0..4usize, 0..8usize).prop_map(|(by, request)| Op::Approve { by, request }),
        (0..4usize, 0..8usize).prop_map(|(by, request)| Op::Reject { by, request }),
        (0..8usize).prop_map(|grant| Op::Revoke { grant }),
        (0..120u64).prop_map(|minutes| Op::Advance { minutes }),
        Just(Op::Expire),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever happens: no expired grant is ever active, a grant only ever comes from a
    /// granter other than its holder or from M approvers other than its holder, the revision
    /// moves on every change and only then, and the book survives encoding unchanged.
    #[test]
    fn book_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        let w = world();
        let people = [&w.alice, &w.ann, &w.bob, &w.cat];
        let names = ["demo-read", "payments-write", "nope"];
        let mut book = GrantBook::default();
        let mut now = NOW;
        for op in ops {
            let before = book.clone();
            let result: Result<(), GrantError> = match op {
                Op::Grant { who, name, minutes } => book
                    .grant(&w.policies, NewGrant {
                        name: names[name].to_owned(),
                        principal: people[who].id.clone(),
                        granter: w.ann.id.clone(),
                        end: GrantEnd::After(minutes * MINUTE),
                        reason: "r".to_owned(),
                    }, now)
                    .map(|_| ()),
                Op::Request { who, name, minutes } => book
                    .request(&w.policies, NewRequest {
                        requester: people[who].id.clone(),
                        name: names[name].to_owned(),
                        duration_ms: minutes * MINUTE,
                        reason: "r".to_owned(),
                        credentials: vec![vec![u8::try_from(who).unwrap_or(0) + 1; 16]],
                    }, now)
                    .map(|_| ()),
                Op::Approve { by, request } | Op::Reject { by, request } => {
                    let found = book.requests().nth(request).cloned();
                    match found {
                        None => Ok(()),
                        Some(r) => {
                            let approval = if matches!(op, Op::Approve { .. }) {
                                people[by].approves(&r, now)
                            } else {
                                people[by].rejects(&r, now)
                            };
                            let serial = vec![u8::try_from(by).unwrap_or(0) + 100; 16];
                            book.decide_standing(
                                &w.policies, r.id, &approval, vec![serial], now, |_| true,
                            )
                            .map(|_| ())
                        }
                    }
                }
                Op::Revoke { grant } => {
                    let found = book.grants().nth(grant).map(|g| g.id);
                    match found {
                        None => Ok(()),
                        Some(id) => book.revoke(id).map(|_| ()),
                    }
                }
                Op::Advance { minutes } => {
                    now += minutes * MINUTE;
                    Ok(())
                }
                Op::Expire => {
                    let expired = book.expire(now);
                    prop_assert!(expired.grants.iter().all(|g| g.not_after_ms <= now));
                    Ok(())
                }
            };
            if result.is_err() {
                prop_assert_eq!(&book, &before, "a refused operation changed the book");
            } else if book != before {
                prop_assert!(book.revision() > before.revision());
            } else {
                prop_assert_eq!(book.revision(), before.revision());
            }
            for person in people {
                for active in book.active_for(&person.id, now) {
                    prop_assert!(active.not_after_ms > now);
                }
            }
            for grant in book.grants() {
                match &grant.granted_by {
                    GrantedBy::Granter(granter) => prop_assert_ne!(granter, &grant.principal),
                    GrantedBy::Request { request, approvers } => {
                        let required = w.policies.grant_definition(&grant.name).unwrap().approvals;
                        prop_assert_eq!(approvers.len(), required as usize, "{}", request);
                        prop_assert!(!approvers.contains(&grant.principal));
                    }
                }
            }
            if let Some(next) = book.next_change_ms() {
                prop_assert!(book.grants().all(|g| g.not_after_ms >= next));
            }
            let decoded = GrantBook::decode(&book.encode(), GrantLimits::default()).unwrap();
            prop_assert_eq!(&decoded, &book);
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = GrantBook::decode(&bytes, GrantLimits::default());
    }
}

#[test]
fn the_certificates_requests_and_approvals_were_made_with_are_kept_and_judged() {
    let mut w = world();
    let request = w.request("payments-write", HOUR, NOW).unwrap();
    assert_eq!(request.credentials, [vec![0x5a; 16]]);
    let (stolen, kept) = (vec![0xee; 20], vec![0x11; 20]);
    // Judged by the serials it was made with: one of them revoked, it no longer counts.
    let standing = |a: &ApprovalRecord| !a.credentials.contains(&stolen);
    let first = w.ann.approves(&request, NOW + 1);
    let outcome = w
        .book
        .decide_standing(
            &w.policies,
            request.id,
            &first,
            vec![stolen.clone()],
            NOW + 1,
            standing,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Pending {
            approvals: 1,
            required: 2
        }
    );
    let stored = w.book.request_record(request.id).unwrap().approvals[0].clone();
    assert_eq!(stored.credentials, std::slice::from_ref(&stolen));
    let second = w.bob.approves(&request, NOW + 2);
    let outcome = w
        .book
        .decide_standing(
            &w.policies,
            request.id,
            &second,
            vec![kept.clone()],
            NOW + 2,
            standing,
        )
        .unwrap();
    assert_eq!(
        outcome,
        Outcome::Pending {
            approvals: 1,
            required: 2
        },
        "ann's does not count"
    );

    // Kept through the store; a book stored before they were kept loads with none.
    let bytes = w.book.encode();
    let again = GrantBook::decode(&bytes, GrantLimits::default()).unwrap();
    assert_eq!(again, w.book);
    let mut json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    for request in json["requests"].as_array_mut().unwrap() {
        request.as_object_mut().unwrap().remove("credentials");
        for approval in request["approvals"].as_array_mut().unwrap() {
            approval.as_object_mut().unwrap().remove("credentials");
        }
    }
    let old =
        GrantBook::decode(&serde_json::to_vec(&json).unwrap(), GrantLimits::default()).unwrap();
    let old = old.request_record(request.id).unwrap();
    assert!(old.credentials.is_empty() && old.approvals.iter().all(|a| a.credentials.is_empty()));

    // Bounded as the store is.
    let mut many = new_request(&w, "demo-read", HOUR);
    many.credentials = vec![vec![1; 16]; MAX_CREDENTIALS + 1];
    assert_eq!(
        w.book.request(&w.policies, many, NOW).unwrap_err(),
        GrantError::BadCredentials
    );
    let third = w.cat.approves(&request, NOW + 3);
    assert_eq!(
        w.book
            .decide_standing(
                &w.policies,
                request.id,
                &third,
                vec![Vec::new()],
                NOW + 3,
                standing
            )
            .unwrap_err(),
        GrantError::BadCredentials
    );
}

#[test]
fn approvals_that_stopped_counting_are_bounded_and_the_book_still_loads() {
    let mut w = world();
    let request = w.request("payments-write", HOUR, NOW).unwrap();
    let approvers: Vec<Party> = (0..18)
        .map(|i| Party::new(&format!("spiffe://acme.internal/human/h{i}")))
        .collect();
    // Each approver is cut off before the next comes: no approval counts but the newest.
    let cut_off = |_: &ApprovalRecord| false;
    for (i, approver) in approvers.iter().take(16).enumerate() {
        let at = NOW + i as u64 + 1;
        let outcome = w
            .book
            .decide_standing(
                &w.policies,
                request.id,
                &approver.approves(&request, at),
                vec![vec![u8::try_from(i).unwrap(); 20]],
                at,
                cut_off,
            )
            .unwrap();
        assert!(
            matches!(outcome, Outcome::Pending { approvals: 1, .. }),
            "{outcome:?}"
        );
    }
    let seventeenth = approvers[16].approves(&request, NOW + 20);
    assert!(matches!(
        w.book
            .decide_standing(&w.policies, request.id, &seventeenth, Vec::new(), NOW + 20, cut_off),
        Err(GrantError::ApprovalsFull(id)) if id == request.id
    ));
    let again = GrantBook::decode(&w.book.encode(), GrantLimits::default()).unwrap();
    assert_eq!(again.encode(), w.book.encode());

    // They stand again: one more makes the grant, which names as many approvers as it needs.
    let last = approvers[17].approves(&request, NOW + 30);
    let outcome = w
        .book
        .decide_standing(&w.policies, request.id, &last, Vec::new(), NOW + 30, |_| {
            true
        })
        .unwrap();
    let Outcome::Granted(grant) = outcome else {
        panic!("{outcome:?}");
    };
    let GrantedBy::Request {
        approvers: named, ..
    } = &grant.granted_by
    else {
        panic!("{grant:?}");
    };
    assert_eq!(named.len(), 2);
    assert_eq!(named.last(), Some(&approvers[17].id));
    let again = GrantBook::decode(&w.book.encode(), GrantLimits::default()).unwrap();
    assert_eq!(again.encode(), w.book.encode());
}
