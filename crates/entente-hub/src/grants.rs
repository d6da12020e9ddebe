//! Time-bound grants and just-in-time elevation over mutual TLS: `Grant`, `ListGrants`,
//! `RequestGrant` and `Approve`, authorized by the hub's Cedar policies rather than by
//! [`HubConfig::admins`](crate::HubConfig::admins).
//!
//! | RPC | who may | Cedar |
//! |---|---|---|
//! | `Grant{principal, name, duration_ms or not_after_ms, reason}` | a principal permitted to grant to `principal` | `grant` on the receiver (`Agent` or `Human`) |
//! | `RequestGrant{name, duration_ms, reason}` | any authenticated principal, for itself only (the request names no one else) | none: the approvals gate it |
//! | `Approve{statement, signature}` | a principal permitted to approve for the requester; the requester itself only to reject (withdraw) | `approve` on the requester |
//! | `RevokeGrant{id, reason}` | a principal permitted to revoke the holder's grants | `revoke` on the holder |
//! | `ListGrants{principal}` | anyone: its own grants and requests, and others' where permitted | `admin` on the holder or requester (for requests, `approve` also shows them) |
//!
//! Separation of duties is the grant book's, whatever the policies say: nobody grants to
//! itself, the requester never approves its own request, and an approver approves once.
//! An approval is a statement signed with the approver's message key (PROTOCOL.md §11); the
//! hub checks that its approver is the connection's principal and verifies it against the
//! approver's CA-signed key bundle — the latest in the hub's registry, or, for a principal
//! the registry never saw (an identity issued directly by the CA), the bundle sent along,
//! verified against the trust bundle.
//!
//! A request and each approval keep the serials of the certificates their connection held
//! ([`rpc::credentials`]): an approval counts only while neither its approver nor any of
//! those is revoked (nor the approver quarantined or no longer permitted), and a request asked
//! with a certificate revoked since is approved no more.
//!
//! Every change goes through [`Authz::change_grants`](crate::authz::Authz): all or nothing,
//! stored before it is put in force, the policy epoch bumped when grants change. Refusals
//! are statuses that say what went wrong; no reason text or secret goes to a counter.

use std::collections::HashMap;
use std::time::SystemTime;

use entente_audit::{GrantStage, Outcome as AuditOutcome};
use entente_crypto::{ApprovalError, ApprovalIn, KeyBundleIn, ObjectKind, Verdict};
use entente_policy::{
    Action, ApprovalRecord, Grant, GrantEnd, GrantError, GrantId, GrantRequest as BookRequest,
    GrantedBy, NewGrant, NewRequest, Outcome, RequestId, RequestState, Resource, Subject,
};
use entente_types::Principal;
use entente_wire::{
    ApprovalInfo, ApproveRequest, ApproveResponse, GrantInfo, GrantRequest, GrantRequestInfo,
    GrantResponse, KeyBundle, ListGrantsRequest, ListGrantsResponse, RequestGrantRequest,
    RequestGrantResponse, RevokeGrantRequest, RevokeGrantResponse,
};
use tonic::Status;

use crate::grant_state::{GrantChangeError, grant_event};
use crate::held::{self, HoldError};
use crate::renew::Caller;
use crate::router::Router;
use crate::rpc::{self, RpcError, Services};
use crate::stats;

/// The gRPC path of giving a grant directly, served over mutual TLS.
pub const GRANT_PATH: &str = "/entente.v1.Grants/Grant";

/// The gRPC path of listing grants and requests, served over mutual TLS.
pub const LIST_GRANTS_PATH: &str = "/entente.v1.Grants/ListGrants";

/// The gRPC path of requesting a grant just in time, served over mutual TLS.
pub const REQUEST_GRANT_PATH: &str = "/entente.v1.Grants/RequestGrant";

/// The gRPC path of ending a grant before its time, served over mutual TLS.
pub const REVOKE_GRANT_PATH: &str = "/entente.v1.Grants/RevokeGrant";

/// The gRPC path of approving or rejecting a request, served over mutual TLS.
pub const APPROVE_PATH: &str = "/entente.v1.Grants/Approve";

/// Serves one `Grant` request, counting it.
pub(crate) async fn grant<R>(
    services: &Services<R>,
    caller: &Caller,
    request: GrantRequest,
    now: SystemTime,
) -> Result<GrantResponse, RpcError> {
    counted(services, grant_inner(services, caller, request, now).await)
}

/// Serves one `ListGrants` request, counting it.
pub(crate) fn list<R>(
    services: &Services<R>,
    caller: &Caller,
    request: ListGrantsRequest,
    now: SystemTime,
) -> Result<ListGrantsResponse, RpcError> {
    counted(services, list_inner(services, caller, request, now))
}

/// Serves one `RequestGrant` request, counting it.
pub(crate) async fn request<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RequestGrantRequest,
    now: SystemTime,
) -> Result<RequestGrantResponse, RpcError> {
    counted(
        services,
        request_inner(services, caller, request, now).await,
    )
}

/// Serves one `Approve` request, counting it: of a grant request, or (statement kind
/// `envelope`) of a message held for approval ([`held::approve`]).
pub(crate) async fn approve<R: Router>(
    services: &Services<R>,
    caller: &Caller,
    request: ApproveRequest,
    now: SystemTime,
) -> Result<ApproveResponse, ApproveError> {
    let envelope = request
        .statement
        .as_ref()
        .is_some_and(|s| s.kind == ObjectKind::Envelope.as_str());
    if envelope {
        let result = held::approve(services, caller, request, now).await;
        match &result {
            Ok(_) => stats::bump(&services.stats.grant_actions),
            Err(_) => stats::bump(&services.stats.grant_refusals),
        }
        return result;
    }
    counted(
        services,
        approve_inner(services, caller, request, now).await,
    )
    .map_err(ApproveError::Rpc)
}

/// Why an `Approve` was refused.
#[derive(Debug)]
pub(crate) enum ApproveError {
    /// Refused as any RPC.
    Rpc(RpcError),
    /// Refused by the held messages ([`crate::held`]).
    Hold(HoldError),
}

impl ApproveError {
    /// The gRPC status of the refusal.
    pub(crate) fn status(&self) -> Status {
        match self {
            ApproveError::Rpc(e) => e.status(),
            ApproveError::Hold(e) => e.status(),
        }
    }
}

impl std::fmt::Display for ApproveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApproveError::Rpc(e) => e.fmt(f),
            ApproveError::Hold(e) => e.fmt(f),
        }
    }
}

impl rpc::Refusal for ApproveError {
    fn outcome(&self) -> entente_audit::Outcome {
        match self {
            ApproveError::Rpc(e) => e.outcome(),
            ApproveError::Hold(HoldError::Store) => entente_audit::Outcome::Failed,
            ApproveError::Hold(_) => entente_audit::Outcome::Denied,
        }
    }

    fn unaudited(e: crate::audit::AuditUnavailable) -> Self {
        ApproveError::Rpc(RpcError::Unaudited(e))
    }
}

impl From<RpcError> for ApproveError {
    fn from(e: RpcError) -> Self {
        ApproveError::Rpc(e)
    }
}

impl From<HoldError> for ApproveError {
    fn from(e: HoldError) -> Self {
        ApproveError::Hold(e)
    }
}

/// Serves one `RevokeGrant` request, counting it.
pub(crate) async fn revoke_grant<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RevokeGrantRequest,
    now: SystemTime,
) -> Result<RevokeGrantResponse, RpcError> {
    counted(
        services,
        revoke_grant_inner(services, caller, request, now).await,
    )
}

async fn revoke_grant_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RevokeGrantRequest,
    now: SystemTime,
) -> Result<RevokeGrantResponse, RpcError> {
    rpc::open(caller)?;
    let id: GrantId = request
        .id
        .parse()
        .map_err(|e| RpcError::BadRequest(format!("`id`: {e}")))?;
    if request.reason.trim().is_empty() {
        return Err(RpcError::BadRequest(
            "give a reason for ending the grant".into(),
        ));
    }
    let now_ms = rpc::unix_ms(now);
    let holder = services
        .authz
        .grants()
        .book()
        .grant_record(id)
        .map(|g| g.principal.clone())
        .ok_or(RpcError::Grant(GrantError::UnknownGrantRecord(id)))?;
    // Not naming the holder: a caller not permitted to end the grant is not told whose it is
    // (`ListGrants` shows others' grants only to those who may see them).
    let what = format!("ending grant {id}");
    permit(services, caller, Action::Revoke, &holder, now_ms, &what)
        .map_err(|e| untold(e, &what))?;
    let grant = services
        .authz
        .change_grants(&services.registry, |book, _| book.revoke(id))
        .await
        .map_err(change_error)?;
    record(
        services,
        caller,
        &grant,
        GrantStage::Revoked,
        &request.reason,
    );
    Ok(RevokeGrantResponse {
        grant: Some(grant_info(&grant)),
    })
}

// === Grant ===

async fn grant_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: GrantRequest,
    now: SystemTime,
) -> Result<GrantResponse, RpcError> {
    rpc::open(caller)?;
    let principal = principal_of(services, "principal", &request.principal)?;
    let end = match (request.duration_ms, request.not_after_ms) {
        (0, 0) => {
            return Err(RpcError::BadRequest(
                "give the grant a `duration_ms` or a `not_after_ms`".into(),
            ));
        }
        (duration, 0) => GrantEnd::After(duration),
        (0, at) => GrantEnd::At(at),
        _ => {
            return Err(RpcError::BadRequest(
                "give `duration_ms` or `not_after_ms`, not both".into(),
            ));
        }
    };
    let now_ms = rpc::unix_ms(now);
    permit(
        services,
        caller,
        Action::Grant,
        &principal,
        now_ms,
        &format!("granting to `{principal}`"),
    )?;
    let reason = request.reason.clone();
    let new = NewGrant {
        name: request.name,
        principal,
        granter: caller.principal.clone(),
        end,
        reason: request.reason,
    };
    let grant = services
        .authz
        .change_grants(&services.registry, |book, policies| {
            book.grant(policies, new, now_ms)
        })
        .await
        .map_err(change_error)?;
    record(services, caller, &grant, GrantStage::Given, &reason);
    Ok(GrantResponse {
        grant: Some(grant_info(&grant)),
    })
}

// === RequestGrant ===

async fn request_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: RequestGrantRequest,
    now: SystemTime,
) -> Result<RequestGrantResponse, RpcError> {
    rpc::open(caller)?;
    let now_ms = rpc::unix_ms(now);
    let new = NewRequest {
        requester: caller.principal.clone(),
        name: request.name,
        duration_ms: request.duration_ms,
        reason: request.reason,
        // A revocation of any voids the request.
        credentials: rpc::credentials(services, caller, "request")?,
    };
    let request = services
        .authz
        .change_grants(&services.registry, |book, policies| {
            book.request(policies, new, now_ms)
        })
        .await
        .map_err(change_error)?;
    let auditor = services.authz.auditor();
    let event = grant_event(
        request.id.to_string(),
        GrantStage::Requested,
        request.requester.as_str(),
        &request.name,
        request.expires_at_ms,
        auditor.mac(&request.reason),
    );
    // Answered once durable, by the RPC's own record; a failed log fails that.
    let _ = auditor.submit(caller.principal.as_str(), AuditOutcome::Success, event);
    Ok(RequestGrantResponse {
        request: Some(request_info(&request, now_ms)),
    })
}

// === Approve ===

async fn approve_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: ApproveRequest,
    now: SystemTime,
) -> Result<ApproveResponse, RpcError> {
    rpc::open(caller)?;
    let now_ms = rpc::unix_ms(now);
    let statement = callers_statement(caller, request.statement)?;
    if statement.kind != ObjectKind::GrantRequest {
        return Err(RpcError::Grant(GrantError::WrongKind(statement.kind)));
    }
    let id: RequestId = statement
        .object_id
        .parse()
        .map_err(|e| RpcError::BadRequest(format!("`object_id`: {e}")))?;
    let verdict = statement.verdict;
    let approval = ApprovalIn::new(statement, &request.signature).map_err(approval_error)?;
    let bundle = approver_bundle(services, &caller.principal, request.key_bundle, now_ms).await?;
    let approval = approval.verify(&bundle, now_ms).map_err(approval_error)?;

    let requester = services
        .authz
        .grants()
        .book()
        .request_record(id)
        .map(|r| r.requester.clone())
        .ok_or(RpcError::Grant(GrantError::UnknownRequest(id)))?;
    // The requester may withdraw its own request; approving it the book refuses (separation
    // of duties), whatever the policies say. Anyone else needs `approve` on the requester.
    if requester != caller.principal {
        // Not naming the requester, as a refused `RevokeGrant` names no holder.
        let what = match verdict {
            Verdict::Approve => format!("approving request {id}"),
            Verdict::Reject => format!("rejecting request {id}"),
        };
        permit(services, caller, Action::Approve, &requester, now_ms, &what)
            .map_err(|e| untold(e, &what))?;
    }
    // The certificates this approval is made with: a revocation of any voids it.
    let credentials = rpc::credentials(services, caller, "approval")?;
    let requester_resource = Resource::principal(&requester);
    let outcome = services
        .authz
        .change_grants(&services.registry, |book, policies| {
            // The list in force at the change's turn (it may have waited for others).
            let revocations = services.revocations.current();
            let revoked = |principal: &Principal, serials: &[Vec<u8>]| {
                revocations
                    .as_ref()
                    .is_some_and(|list| rpc::revoked_acting(list, principal, serials))
            };
            // At the change's turn: nothing of a quarantined requester, nor asked with a
            // certificate revoked since, is approved (it may be rejected); nor with an
            // approver's own certificate revoked since.
            let cut = |why: String| Err(GrantError::NotStanding { request: id, why });
            if verdict == Verdict::Approve {
                if services.anomaly.quarantined(&requester).is_some() {
                    return cut(format!("`{requester}` is quarantined"));
                }
                if book
                    .request_record(id)
                    .is_some_and(|r| revoked(&r.requester, &r.credentials))
                {
                    return cut(
                        "it was asked with a certificate revoked since (its requester may ask \
                         again)"
                            .into(),
                    );
                }
            }
            if revoked(&caller.principal, &credentials) {
                return cut("this approval was made with a certificate revoked since".into());
            }
            // Its approver judged as the earlier ones are (the requester withdrawing its own
            // request needs no permit).
            if requester != caller.principal {
                if services.anomaly.quarantined(&caller.principal).is_some() {
                    return cut(format!("`{}` is quarantined", caller.principal));
                }
                let approver = Subject::new(caller.principal.clone(), Vec::<String>::new());
                if !services.authz.allows_unrecorded(
                    &approver,
                    Action::Approve,
                    &requester_resource,
                    now_ms,
                ) {
                    return cut("its approver is no longer permitted to approve it".into());
                }
            }
            // Earlier approvals count only while they stand: their approvers not revoked (nor
            // a certificate they approved with), not quarantined, still permitted to approve
            // the requester.
            let standing = |a: &ApprovalRecord| {
                !revoked(&a.approver, &a.credentials)
                    && services.anomaly.quarantined(&a.approver).is_none()
                    && services
                        .authz
                        .decide(
                            &Subject::new(a.approver.clone(), Vec::<String>::new()),
                            Action::Approve,
                            &requester_resource,
                            now_ms,
                        )
                        .is_ok()
            };
            book.decide_standing(policies, id, &approval, credentials, now_ms, standing)
        })
        .await
        .map_err(change_error)?;
    Ok(match outcome {
        Outcome::Pending {
            approvals,
            required,
        } => ApproveResponse {
            outcome: "pending".into(),
            approvals,
            required,
            grant: None,
        },
        Outcome::Granted(grant) => {
            record(
                services,
                caller,
                &grant,
                GrantStage::Approved,
                &grant.reason,
            );
            let approvers = match &grant.granted_by {
                GrantedBy::Request { approvers, .. } => approvers.len(),
                GrantedBy::Granter(_) => 0,
            };
            let approvals = u32::try_from(approvers).unwrap_or(u32::MAX);
            ApproveResponse {
                outcome: "granted".into(),
                approvals,
                required: approvals,
                grant: Some(grant_info(&grant)),
            }
        }
        Outcome::Rejected => {
            let event = grant_event(
                id.to_string(),
                GrantStage::Rejected,
                requester.as_str(),
                "",
                now_ms,
                None,
            );
            let _ = services.authz.auditor().submit(
                caller.principal.as_str(),
                AuditOutcome::Success,
                event,
            );
            ApproveResponse {
                outcome: "rejected".into(),
                approvals: 0,
                required: 0,
                grant: None,
            }
        }
    })
}

/// Submits the record of `grant` at `stage` by the caller, with the HMAC of `reason`; the RPC
/// is answered once it is durable (by its own record: a failed log fails that).
fn record<R>(
    services: &Services<R>,
    caller: &Caller,
    grant: &Grant,
    stage: GrantStage,
    reason: &str,
) {
    let auditor = services.authz.auditor();
    let event = grant_event(
        grant.id.to_string(),
        stage,
        grant.principal.as_str(),
        &grant.name,
        grant.not_after_ms,
        auditor.mac(reason),
    );
    let _ = auditor.submit(caller.principal.as_str(), AuditOutcome::Success, event);
}

/// The statement of an `Approve`, parsed, which must be signed as the caller.
pub(crate) fn callers_statement(
    caller: &Caller,
    wire: Option<entente_wire::ApprovalStatement>,
) -> Result<entente_crypto::ApprovalStatement, RpcError> {
    let wire = wire.ok_or_else(|| RpcError::BadRequest("`statement` is missing".into()))?;
    let statement = statement_of(wire)?;
    if statement.approver != caller.principal {
        return Err(RpcError::Denied(format!(
            "the statement is signed as `{}`, not as the caller `{}`: approve as yourself",
            statement.approver, caller.principal
        )));
    }
    Ok(statement)
}

/// The statement of an `Approve`, parsed.
fn statement_of(
    wire: entente_wire::ApprovalStatement,
) -> Result<entente_crypto::ApprovalStatement, RpcError> {
    let bad = |field: &str, why: String| RpcError::BadRequest(format!("`{field}`: {why}"));
    let verdict = match wire.verdict.as_str() {
        "approve" => Verdict::Approve,
        "reject" => Verdict::Reject,
        other => {
            return Err(bad(
                "verdict",
                format!(
                    "`{}` is neither `approve` nor `reject`",
                    other.escape_debug()
                ),
            ));
        }
    };
    let kind = match wire.kind.as_str() {
        "grant-request" => ObjectKind::GrantRequest,
        "envelope" => ObjectKind::Envelope,
        other => {
            return Err(bad(
                "kind",
                format!("`{}` is not an object kind", other.escape_debug()),
            ));
        }
    };
    let object_hash: [u8; 32] = wire
        .object_hash
        .as_slice()
        .try_into()
        .map_err(|_| bad("object_hash", "must be 32 bytes".into()))?;
    let approver = Principal::parse(&wire.approver).map_err(|e| bad("approver", e.to_string()))?;
    Ok(entente_crypto::ApprovalStatement {
        verdict,
        kind,
        object_id: wire.object_id,
        object_hash,
        approver,
        key_epoch: wire.key_epoch,
        signed_at_ms: wire.signed_at_ms,
    })
}

/// The approver's CA-signed key bundle: the latest the registry holds, or else the one sent
/// along, verified against the trust bundle.
pub(crate) async fn approver_bundle<R>(
    services: &Services<R>,
    approver: &Principal,
    presented: Option<KeyBundle>,
    now_ms: u64,
) -> Result<entente_crypto::VerifiedKeyBundle, RpcError> {
    let ca = services.ca.current();
    let trust = ca.trust_bundle();
    if let Some((_, bytes)) = services
        .registry
        .latest_key_bundle(approver.as_str())
        .await?
    {
        let wire: KeyBundle = entente_wire::decode(&bytes, &services.limits)
            .map_err(|e| RpcError::Corrupt(format!("key bundle of `{approver}`: {e}")))?;
        return KeyBundleIn::from_wire(wire)
            .map_err(|e| RpcError::Corrupt(format!("key bundle of `{approver}`: {e}")))?
            .verify(trust, now_ms)
            .map_err(|e| {
                RpcError::Precondition(format!(
                    "the key bundle the hub holds for `{approver}` is not usable ({e}): enroll again"
                ))
            });
    }
    let presented = presented.ok_or_else(|| {
        RpcError::Precondition(format!(
            "the hub knows no key bundle of `{approver}`: send yours with the approval"
        ))
    })?;
    let bundle = KeyBundleIn::from_wire(presented)
        .map_err(|e| RpcError::BadRequest(format!("`key_bundle`: {e}")))?
        .verify(trust, now_ms)
        .map_err(|e| RpcError::Denied(format!("the key bundle sent does not verify: {e}")))?;
    if bundle.principal() != approver {
        return Err(RpcError::Denied(format!(
            "the key bundle sent is `{}`'s, not the approver's",
            bundle.principal()
        )));
    }
    Ok(bundle)
}

// === ListGrants ===

fn list_inner<R>(
    services: &Services<R>,
    caller: &Caller,
    request: ListGrantsRequest,
    now: SystemTime,
) -> Result<ListGrantsResponse, RpcError> {
    rpc::open(caller)?;
    let filter = match request.principal.as_str() {
        "" => None,
        text => Some(principal_of(services, "principal", text)?),
    };
    let now_ms = rpc::unix_ms(now);
    let book = services.authz.grants().book();
    let mut view = View::new(services, caller, now_ms);
    let grants = book
        .grants()
        .filter(|g| g.is_active_at(now_ms))
        .filter(|g| filter.as_ref().is_none_or(|p| *p == g.principal))
        .filter(|g| view.sees(&g.principal, false))
        .map(grant_info)
        .collect();
    let requests = book
        .requests()
        .filter(|r| filter.as_ref().is_none_or(|p| *p == r.requester))
        .filter(|r| view.sees(&r.requester, true))
        .map(|r| request_info(r, now_ms))
        .collect();
    let response = ListGrantsResponse {
        grants,
        requests,
        now_ms,
    };
    if !rpc::fits(&response, &services.limits) {
        return Err(RpcError::TooMany(
            "the grants and requests do not fit in one answer: ask for one principal's".into(),
        ));
    }
    Ok(response)
}

/// What one caller may see of others' grants and requests, decided once per principal.
struct View<'a, R> {
    services: &'a Services<R>,
    subject: Subject,
    now_ms: u64,
    /// `(admin, approve)` decisions by principal.
    decided: HashMap<Principal, (bool, Option<bool>)>,
}

impl<'a, R> View<'a, R> {
    fn new(services: &'a Services<R>, caller: &Caller, now_ms: u64) -> Self {
        Self {
            services,
            subject: Subject::new(caller.principal.clone(), Vec::<String>::new()),
            now_ms,
            decided: HashMap::new(),
        }
    }

    /// Whether the caller sees `owner`'s grants (or, with `request`, requests): its own, or
    /// with `admin` on `owner`; requests also with `approve`.
    fn sees(&mut self, owner: &Principal, request: bool) -> bool {
        if owner == self.subject.principal() {
            return true;
        }
        // Decided as every other decision is: recorded in the audit log, and denied once it
        // has failed.
        let (authz, subject, now_ms) = (&self.services.authz, &self.subject, self.now_ms);
        let allowed = |action| {
            authz
                .decide(subject, action, &Resource::principal(owner), now_ms)
                .is_ok()
        };
        let entry = self
            .decided
            .entry(owner.clone())
            .or_insert_with(|| (allowed(Action::Admin), None));
        if entry.0 {
            return true;
        }
        request && *entry.1.get_or_insert_with(|| allowed(Action::Approve))
    }
}

// === conversions ===

/// A grant as the wire carries it.
pub(crate) fn grant_info(grant: &Grant) -> GrantInfo {
    let (granter, request, approvers) = match &grant.granted_by {
        GrantedBy::Granter(granter) => (granter.to_string(), String::new(), Vec::new()),
        GrantedBy::Request { request, approvers } => (
            String::new(),
            request.to_string(),
            approvers.iter().map(ToString::to_string).collect(),
        ),
    };
    GrantInfo {
        id: grant.id.to_string(),
        name: grant.name.clone(),
        principal: grant.principal.to_string(),
        not_before_ms: grant.not_before_ms,
        not_after_ms: grant.not_after_ms,
        reason: grant.reason.clone(),
        granter,
        request,
        approvers,
    }
}

/// A request as the wire carries it; a pending request past its expiry is `expired`.
pub(crate) fn request_info(request: &BookRequest, now_ms: u64) -> GrantRequestInfo {
    let (state, grant) = match &request.state {
        RequestState::Pending if now_ms >= request.expires_at_ms => ("expired", String::new()),
        RequestState::Pending => ("pending", String::new()),
        RequestState::Granted { grant, .. } => ("granted", grant.to_string()),
        RequestState::Rejected { .. } => ("rejected", String::new()),
        RequestState::Expired => ("expired", String::new()),
    };
    GrantRequestInfo {
        id: request.id.to_string(),
        requester: request.requester.to_string(),
        name: request.name.clone(),
        duration_ms: request.duration_ms,
        reason: request.reason.clone(),
        created_at_ms: request.created_at_ms,
        expires_at_ms: request.expires_at_ms,
        required: request.required,
        approvals: request
            .approvals
            .iter()
            .map(|a| ApprovalInfo {
                approver: a.approver.to_string(),
                verdict: a.verdict.as_str().to_owned(),
                signed_at_ms: a.signed_at_ms,
            })
            .collect(),
        state: state.to_owned(),
        grant,
    }
}

// === helpers ===

/// Asks the policies whether the caller may do `action` on `target`, with the caller's
/// grants; `what` names the act in a refusal.
fn permit<R>(
    services: &Services<R>,
    caller: &Caller,
    action: Action,
    target: &Principal,
    now_ms: u64,
    what: &str,
) -> Result<(), RpcError> {
    let decided = rpc::decide_for(
        services,
        caller,
        action,
        &Resource::principal(target),
        now_ms,
        what,
    );
    if matches!(decided, Err(RpcError::Denied(_))) {
        stats::bump(&services.stats.denials);
    }
    decided
}

/// A denial of an act on another's grant or request, told without why: the reason names the
/// holder's segment (a rule across segments) or the forbids that protect it, which a caller not
/// permitted is not to learn. The audit record of the decision keeps the reason.
fn untold(error: RpcError, what: &str) -> RpcError {
    match error {
        RpcError::Denied(_) => RpcError::Denied(format!(
            "{what} is denied: the policies do not permit it (the audit log says why)"
        )),
        other => other,
    }
}

/// An agent or human of this hub's trust domain, not of the reserved segment.
fn principal_of<R>(services: &Services<R>, field: &str, text: &str) -> Result<Principal, RpcError> {
    let principal = Principal::parse(text)
        .map_err(|e| RpcError::BadRequest(format!("`{field}` is not an agent or human id: {e}")))?;
    let trust_domain = services.ca.trust_domain();
    if principal.trust_domain() != trust_domain.as_str() {
        return Err(RpcError::BadRequest(format!(
            "`{field}`: `{principal}` is not in this hub's trust domain `{trust_domain}`"
        )));
    }
    if let Principal::Agent(agent) = &principal
        && agent.segment() == entente_ca::RESERVED_SEGMENT
    {
        return Err(RpcError::BadRequest(format!(
            "`{field}`: segment `{}` is the hub's own",
            entente_ca::RESERVED_SEGMENT
        )));
    }
    Ok(principal)
}

/// What a refused change means for the caller.
fn change_error(error: GrantChangeError) -> RpcError {
    match error {
        GrantChangeError::Refused(e) => RpcError::Grant(e),
        GrantChangeError::Store(e) => RpcError::GrantStore(e),
    }
}

/// What a statement that does not verify means for the caller.
pub(crate) fn approval_error(error: ApprovalError) -> RpcError {
    match error {
        ApprovalError::BadObjectId | ApprovalError::SignatureLength(_) => {
            RpcError::BadRequest(format!("the approval is malformed: {error}"))
        }
        ApprovalError::FromTheFuture { .. } => {
            RpcError::BadRequest(format!("the approval is dated in the future: {error}"))
        }
        other => RpcError::Denied(format!("the approval does not verify: {other}")),
    }
}

/// Counts an answer as a grant action or a refusal; a store failure also as such.
fn counted<T>(services: &Services<impl Sized>, result: Result<T, RpcError>) -> Result<T, RpcError> {
    match &result {
        Ok(_) => stats::bump(&services.stats.grant_actions),
        Err(e) => {
            stats::bump(&services.stats.grant_refusals);
            if matches!(e, RpcError::GrantStore(_)) {
                stats::bump(&services.stats.grant_store_failures);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;

    fn statement() -> entente_wire::ApprovalStatement {
        entente_wire::ApprovalStatement {
            verdict: "approve".into(),
            kind: "grant-request".into(),
            object_id: "r-1".into(),
            object_hash: vec![7; 32],
            approver: "spiffe://example.org/human/admin".into(),
            key_epoch: 1,
            signed_at_ms: 1,
        }
    }

    #[test]
    fn statements_parse_field_by_field() {
        let parsed = statement_of(statement()).unwrap();
        assert_eq!(parsed.verdict, Verdict::Approve);
        assert_eq!(parsed.kind, ObjectKind::GrantRequest);
        assert_eq!(parsed.object_hash, [7; 32]);
        for (bad, field) in [
            (
                entente_wire::ApprovalStatement {
                    verdict: "maybe".into(),
                    ..statement()
                },
                "verdict",
            ),
            (
                entente_wire::ApprovalStatement {
                    kind: "thing".into(),
                    ..statement()
                },
                "kind",
            ),
            (
                entente_wire::ApprovalStatement {
                    object_hash: vec![7; 31],
                    ..statement()
                },
                "object_hash",
            ),
            (
                entente_wire::ApprovalStatement {
                    approver: "admin".into(),
                    ..statement()
                },
                "approver",
            ),
        ] {
            let err = statement_of(bad).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn a_lapsed_pending_request_reads_as_expired() {
        let policies = entente_policy::PolicySet::parse(
            "g.cedar",
            r#"@grant("read") permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
               when { context.grants.contains("read") };"#,
        )
        .unwrap();
        let mut book = entente_policy::GrantBook::default();
        let request = book
            .request(
                &policies,
                NewRequest {
                    requester: Principal::parse("spiffe://example.org/agent/ops/eve").unwrap(),
                    name: "read".into(),
                    duration_ms: 1_000,
                    reason: "INC-1".into(),
                    credentials: Vec::new(),
                },
                10,
            )
            .unwrap();
        assert_eq!(request_info(&request, 11).state, "pending");
        assert_eq!(
            request_info(&request, request.expires_at_ms).state,
            "expired"
        );
    }
}
