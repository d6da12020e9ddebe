//! The unary services (Enroll, Renew, Directory, the administrators' CreateToken, Revoke,
//! LoadPolicies, ShowPolicies and CheckPolicy, and Grant, ListGrants, RequestGrant and
//! Approve): what they share, why they refuse, and the one mapping from a refusal to the gRPC
//! status the peer sees.
//!
//! Statuses are coarse and leak nothing internal: a store or CA failure says only that the
//! registry or the CA is unavailable. The handlers live in [`crate::enroll`],
//! [`crate::renew`], [`crate::directory`], [`crate::admin`], [`crate::policies`] and
//! [`crate::grants`].

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use entente_audit::{Admin, Event, Outcome};
use entente_ca::{IssueError, VerifiedRevocationList};
use entente_policy::{Action, GrantError, Resource, Subject};
use entente_store::{AgentRecord, StoreError};
use entente_types::Principal;
use entente_wire::Limits;
use tonic::{Request, Response, Status};

use crate::audit::{self, AuditUnavailable};
use crate::authz::Authz;
use crate::connections::Connections;
use crate::control::CloseReason;
use crate::registry::Registry;
use crate::renew::Caller;
use crate::stats::Stats;
use crate::verifier::RevocationState;

/// The gRPC path of enrollment, served only under the enrollment server name.
pub const ENROLL_PATH: &str = "/entente.v1.Enroll/Enroll";

/// The gRPC path of certificate renewal, served over mutual TLS.
pub const RENEW_PATH: &str = "/entente.v1.Hub/Renew";

/// The gRPC path of the key-bundle directory, served over mutual TLS.
pub const DIRECTORY_PATH: &str = "/entente.v1.Hub/Directory";

/// How many certificate serials an agent record keeps, newest last.
pub(crate) const MAX_RECORDED_SERIALS: usize = 256;

/// The most unary calls running at once in all (each on a task of its own, holding one of
/// its connection's [`Caller::calls`](crate::renew::Caller) too).
pub(crate) const MAX_CALL_TASKS: u32 = 1 << 20;

/// What the unary services need from the hub.
#[derive(Debug)]
pub(crate) struct Services<R> {
    /// The CA in use, which an intermediate rollover replaces.
    pub(crate) ca: crate::rollover::CaState,
    /// A permit of each unary call running ([`MAX_CALL_TASKS`]): the hub's stop waits for
    /// them all before it closes the audit log.
    pub(crate) call_tasks: Arc<tokio::sync::Semaphore>,
    /// The key store of the audit checkpoint keys ([`HubConfig::key_stores`](crate::HubConfig)).
    pub(crate) audit_keystore: Arc<dyn entente_keystore::KeyStore>,
    pub(crate) registry: Registry,
    pub(crate) revocations: Arc<RevocationState>,
    pub(crate) connections: Arc<Connections>,
    pub(crate) router: Arc<R>,
    pub(crate) authz: Arc<Authz>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) limits: Limits,
    pub(crate) key_bundle_ttl: Duration,
    /// Most join tokens stored ([`HubConfig::max_join_tokens`](crate::HubConfig)).
    pub(crate) max_join_tokens: u64,
    /// When expired join tokens are purged next, in Unix ms (at most once a minute, as
    /// tokens are created; and whenever the store holds as many as it may).
    pub(crate) next_token_purge_ms: std::sync::atomic::AtomicU64,
    /// Serializes read-modify-write of agent records on this hub (enrollment and renewal).
    pub(crate) agents: tokio::sync::Mutex<()>,
    /// The break-glass administrators ([`HubConfig::admins`](crate::HubConfig::admins)): they
    /// may do every administrative act whatever the policies say.
    pub(crate) admins: HashSet<Principal>,
    /// Serializes revocation, local and remote: read the list in force, store the next one,
    /// put it in force ([`crate::admin::put_in_force`]).
    pub(crate) revoking: tokio::sync::Mutex<()>,
    /// The durable channels: their consumers' owners are members of what they read.
    pub(crate) streams: Arc<crate::durable::Streams>,
    /// The data keys, for the keys RPC.
    pub(crate) data_keys: Arc<crate::datakeys::DataKeys>,
    /// Risk scores and the quarantined agents.
    pub(crate) anomaly: Arc<crate::anomaly::Anomaly>,
    /// Where quarantines are announced.
    pub(crate) notifier: crate::notify::Notifier,
    /// Refused enrollments, as the audit log records them.
    pub(crate) enroll_refusals: Arc<crate::enroll::Refusals>,
    /// The rate limits, of which unary calls are checked against the agents' call limit.
    pub(crate) limiters: Arc<crate::limits::Limiters>,
    /// The runs of refused calls, recorded at most once a second per agent and limit.
    pub(crate) call_hits: crate::calls::CallHits,
    /// The runs of sessions' refusals by a rate limit, recorded as [`Self::call_hits`].
    pub(crate) limit_runs: Arc<crate::calls::LimitRuns>,
    /// The runs of connections refused by a connection limit, recorded as calls' are.
    pub(crate) connection_hits: crate::calls::ConnectionHits,
    /// The connections not yet authenticated, and the runs of those refused.
    pub(crate) unauthenticated: Arc<crate::unauth::Unauthenticated>,
}

/// Why a unary request was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcError {
    /// The join token is not `ent_` and 64 lowercase hex digits.
    #[error("malformed join token")]
    MalformedToken,
    /// No such join token (never issued, or purged after expiry).
    #[error("unknown join token")]
    UnknownToken,
    /// An administrator asked to revoke its own principal or certificate.
    #[error("an administrator cannot revoke itself")]
    SelfRevocation,
    /// The revocation list changed between reading it and storing the next one.
    #[error("the revocation list changed meanwhile")]
    Conflict,
    /// The join token was redeemed before.
    #[error("join token already used")]
    UsedToken,
    /// The join token has expired.
    #[error("join token expired")]
    ExpiredToken,
    /// A message public key is not 32 bytes.
    #[error("`{0}` must be 32 bytes")]
    BadKey(&'static str),
    /// The CSR is unusable.
    #[error("bad csr: {0}")]
    BadCsr(String),
    /// The join token names an agent this hub does not enroll (reserved segment, other trust
    /// domain, not an agent ID).
    #[error("the join token names an agent this hub does not enroll")]
    NotEnrollable,
    /// The principal is revoked.
    #[error("the principal is revoked")]
    Revoked,
    /// The agent is suspended.
    #[error("the agent is suspended")]
    Suspended,
    /// The agent is quarantined.
    #[error("the agent is quarantined")]
    Quarantined,
    /// The connection the request came on was closed.
    #[error("the connection is closed")]
    Closed(CloseReason),
    /// A request field is malformed or the request is inconsistent.
    #[error("{0}")]
    BadRequest(String),
    /// Authorization denies it.
    #[error("{0}")]
    Denied(String),
    /// The grant book refused a grant, request, approval or rejection (nothing changed).
    #[error("{0}")]
    Grant(GrantError),
    /// The grant book could not be stored; the change was not made.
    #[error("storing the grant book: {0}")]
    GrantStore(StoreError),
    /// The request cannot be served in the present state (say, no key bundle to verify an
    /// approval against).
    #[error("{0}")]
    Precondition(String),
    /// A policy set was refused: each problem, in words (the running set is unchanged).
    #[error("invalid policies: {}", .0.join("; "))]
    InvalidPolicies(Vec<String>),
    /// The answer would exceed a bound.
    #[error("{0}")]
    TooMany(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored value does not decode.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    /// The CA could not issue or sign (its keys, its validity, our bug).
    #[error("ca: {0}")]
    Ca(String),
    /// The CA could not sign a revocation list (its keys, its validity, our bug).
    #[error("ca signing the revocation list: {0}")]
    CaSign(String),
    /// Something failed after the join token was spent; the token stays used.
    #[error("{0} (after the join token was spent)")]
    AfterRedeem(Box<RpcError>),
    /// The act could not be recorded in the audit log, so it is refused.
    #[error("{0}")]
    Unaudited(AuditUnavailable),
    /// The audit log could not be read or sealed.
    #[error("audit log: {0}")]
    Audit(String),
    /// A key could not be rotated (the key store, the hub's store or the audit log failed;
    /// the detail, which may name files, stays in the hub).
    #[error("rotating a key: {0}")]
    Keys(String),
}

// === impl RpcError ===

impl RpcError {
    /// The one mapping from a refusal to the status the peer sees.
    pub(crate) fn status(&self) -> Status {
        match self {
            Self::MalformedToken => Status::invalid_argument(
                "malformed join token: expected `ent_` and 64 lowercase hex digits",
            ),
            Self::UnknownToken => Status::unauthenticated("join token unknown"),
            Self::UsedToken => Status::unauthenticated("join token already used"),
            Self::ExpiredToken => Status::unauthenticated("join token expired"),
            Self::BadKey(field) => Status::invalid_argument(format!("`{field}` must be 32 bytes")),
            Self::BadCsr(reason) => Status::invalid_argument(format!("bad csr: {reason}")),
            Self::NotEnrollable => {
                Status::permission_denied("the join token names an agent this hub does not enroll")
            }
            Self::Revoked => Status::permission_denied("the principal is revoked"),
            Self::Suspended => Status::permission_denied("the agent is suspended"),
            Self::Quarantined => Status::permission_denied(crate::control::QUARANTINED),
            Self::Closed(reason) => reason.status(),
            Self::BadRequest(reason) => Status::invalid_argument(reason.clone()),
            Self::Denied(reason) => Status::permission_denied(reason.clone()),
            Self::InvalidPolicies(problems) => {
                Status::invalid_argument(crate::policies::problems_message(problems))
            }
            Self::TooMany(reason) => Status::resource_exhausted(reason.clone()),
            Self::Grant(e) => grant_status(e),
            Self::GrantStore(StoreError::StaleVersion { .. }) => Status::aborted(
                "the grant book changed meanwhile: nothing changed, send the request again",
            ),
            Self::GrantStore(_) => {
                Status::unavailable("the grant book could not be stored: nothing changed")
            }
            Self::Precondition(reason) => Status::failed_precondition(reason.clone()),
            Self::Store(StoreError::Corrupt { .. } | StoreError::FormatVersion { .. })
            | Self::Corrupt(_) => Status::internal("the registry holds a corrupt record"),
            Self::Store(_) => Status::unavailable("the registry is unavailable"),
            Self::Ca(_) => Status::unavailable("the ca could not issue the credential"),
            Self::CaSign(_) => Status::unavailable("the ca could not sign the revocation list"),
            Self::SelfRevocation => Status::failed_precondition(
                "an administrator cannot revoke itself, nor an intermediate its own connection \
                 was made through: another administrator must (or reconnect first, with a \
                 certificate of the active intermediate)",
            ),
            Self::Conflict => {
                Status::aborted("the revocation list changed meanwhile: send the request again")
            }
            Self::Unaudited(e) => Status::unavailable(e.to_string()),
            Self::Audit(_) => Status::unavailable("the audit log is unavailable"),
            Self::Keys(_) => {
                Status::unavailable("the key store or the audit log is unavailable: see the hub")
            }
            Self::AfterRedeem(inner) => {
                let status = inner.status();
                Status::new(
                    status.code(),
                    format!(
                        "{}; the join token is spent: ask the operator for a new one",
                        status.message()
                    ),
                )
            }
        }
    }

    /// A failure after the join token was spent.
    pub(crate) fn after_redeem(self) -> Self {
        Self::AfterRedeem(Box::new(self))
    }
}

/// Serves an act that is recorded: refused at once while the audit log is failed, otherwise
/// done, then recorded (an `admin` record of `operation` on `target` by `actor`, with the
/// outcome and, for a refusal, its reason in detail) and answered only once the record is
/// durable. An act whose record can't be made durable is answered `UNAVAILABLE`.
pub(crate) async fn audited<R, T, E: Refusal>(
    services: &Services<R>,
    actor: &str,
    operation: &str,
    target: String,
    act: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    audited_with(services, actor, operation, target, act, |_| String::new()).await
}

/// [`audited`], the record of a success detailed by `detail` (what it made, naming no
/// secret).
pub(crate) async fn audited_with<R, T, E: Refusal>(
    services: &Services<R>,
    actor: &str,
    operation: &str,
    target: String,
    act: impl Future<Output = Result<T, E>>,
    detail: impl FnOnce(&T) -> String,
) -> Result<T, E> {
    let auditor = services.authz.auditor();
    if !auditor.is_on() {
        return act.await;
    }
    auditor.check().map_err(E::unaudited)?;
    let result = act.await;
    let (outcome, detail) = match &result {
        Ok(done) => (Outcome::Success, detail(done)),
        Err(e) => (e.outcome(), e.to_string()),
    };
    let event = Event::Admin(Admin {
        operation: audit::clear(operation),
        target: audit::clear(&target),
        detail: audit::clear(&detail),
    });
    auditor
        .record(actor, outcome, event)
        .await
        .map_err(E::unaudited)?;
    result
}

/// A refusal of a recorded act, as the audit log sees it.
pub(crate) trait Refusal: std::fmt::Display {
    /// The hub's own failure ([`Outcome::Failed`]), or a refusal of the request.
    fn outcome(&self) -> Outcome;

    /// The refusal of an act that could not be recorded.
    fn unaudited(e: AuditUnavailable) -> Self;
}

impl Refusal for RpcError {
    fn outcome(&self) -> Outcome {
        match self {
            Self::Store(_)
            | Self::GrantStore(_)
            | Self::Corrupt(_)
            | Self::Ca(_)
            | Self::CaSign(_)
            | Self::Audit(_)
            | Self::Keys(_)
            | Self::Unaudited(_) => Outcome::Failed,
            Self::AfterRedeem(inner) => inner.outcome(),
            _ => Outcome::Denied,
        }
    }

    fn unaudited(e: AuditUnavailable) -> Self {
        Self::Unaudited(e)
    }
}

/// The status of a refusal of the grant book: what the caller asked is wrong
/// (`INVALID_ARGUMENT`), not permitted by the book's rules (`PERMISSION_DENIED`: granting to
/// oneself, approving one's own request), unknown (`NOT_FOUND`), no longer possible
/// (`FAILED_PRECONDITION`: expired or decided, approved twice), a replay (`ALREADY_EXISTS`),
/// or over a limit (`RESOURCE_EXHAUSTED`). The message is the book's, which names no secret.
fn grant_status(error: &GrantError) -> Status {
    let message = error.to_string();
    match error {
        GrantError::SelfGrant(_)
        | GrantError::SelfApproval { .. }
        | GrantError::NeedsApprovals { .. } => {
            Status::permission_denied(format!("{message} (separation of duties)"))
        }
        GrantError::UnknownRequest(_) | GrantError::UnknownGrantRecord(_) => {
            Status::not_found(message)
        }
        GrantError::RequestExpired(_)
        | GrantError::NotStanding { .. }
        | GrantError::AlreadyGranted(_)
        | GrantError::AlreadyRejected(_)
        | GrantError::AlreadyApproved { .. }
        | GrantError::DuplicateRequest { .. } => Status::failed_precondition(message),
        GrantError::Replayed(_) => Status::already_exists(message),
        GrantError::TooManyGrants(_)
        | GrantError::TooManyGrantsFor { .. }
        | GrantError::TooManyRequests(_)
        | GrantError::TooManyRequestsFor { .. }
        | GrantError::TooManyRequestsIn { .. }
        | GrantError::ApprovalsFull(_) => Status::resource_exhausted(message),
        _ => Status::invalid_argument(message),
    }
}

/// What an [`IssueError`] means for the peer: its CSR, or our CA.
pub(crate) fn issue_error(error: IssueError) -> RpcError {
    match error {
        IssueError::MalformedCsr
        | IssueError::BadCsrSignature
        | IssueError::UnsupportedKey
        | IssueError::UnsupportedSignatureAlgorithm => RpcError::BadCsr(error.to_string()),
        other => RpcError::Ca(other.to_string()),
    }
}

// === the tonic adapter ===

/// A unary gRPC service from a function of the decoded request.
pub(crate) struct Unary<F>(pub(crate) F);

impl<F, Fut, Req, Resp> tower_service::Service<Request<Req>> for Unary<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Resp>, Status>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Req>) -> Self::Future {
        let answer = (self.0)(request.into_inner());
        Box::pin(async move { answer.await.map(Response::new) })
    }
}

// === helpers ===

/// Unix milliseconds of `t` (0 before the epoch, saturating far after).
/// Refuses a caller whose connection is closing.
pub(crate) fn open(caller: &Caller) -> Result<(), RpcError> {
    match caller.control.reason() {
        Some(reason) => Err(RpcError::Closed(reason)),
        None => Ok(()),
    }
}

/// The serials of the certificates the caller acts with
/// ([`Connections::credentials`](crate::connections::Connections::credentials)), kept with
/// what it does (a `what`: a request, an approval) so that a revocation of any of them voids
/// it. Refused when the caller's connection is gone (closed since: by a revocation, maybe).
pub(crate) fn credentials<R>(
    services: &Services<R>,
    caller: &Caller,
    what: &str,
) -> Result<Vec<Vec<u8>>, RpcError> {
    let credentials = services.connections.credentials(caller.connection);
    if credentials.is_empty() {
        open(caller)?;
        return Err(RpcError::Precondition(format!(
            "the connection this {what} came on is gone: send it again"
        )));
    }
    Ok(credentials)
}

/// Whether `principal`, acting with the certificates `serials`, is revoked by `list` (its
/// principal, or any of those serials).
pub(crate) fn revoked_acting(
    list: &VerifiedRevocationList,
    principal: &Principal,
    serials: &[Vec<u8>],
) -> bool {
    list.is_principal_revoked(principal) || serials.iter().any(|s| list.is_serial_revoked(s))
}

/// Asks the running policies, uncached and with the caller's grants, whether the caller may
/// do `action` on `resource`; `what` names the act in a refusal.
pub(crate) fn decide_for<R>(
    services: &Services<R>,
    caller: &Caller,
    action: Action,
    resource: &Resource<'_>,
    now_ms: u64,
    what: &str,
) -> Result<(), RpcError> {
    let subject = Subject::new(caller.principal.clone(), Vec::<String>::new());
    services
        .authz
        .decide(&subject, action, resource, now_ms)
        .map_err(|denied| denied.rpc(what))
}

/// Whether a client can take `answer` under `limits`: what its decoder checks, all of it —
/// the size, the decoding cost (an answer of many small elements may fit the frame and not
/// the decoded-overhead budget) and the counts of repeated fields (a short answer may hold
/// more than a client takes).
pub(crate) fn fits<M: entente_wire::Bounded>(answer: &M, limits: &Limits) -> bool {
    answer.encoded_len() <= limits.max_frame_bytes
        && M::scan(&entente_wire::encode(answer), limits).is_ok()
}

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The most renewal links an agent record keeps ([`record_serial`]).
pub(crate) const MAX_LINEAGE: usize = 4 * MAX_RECORDED_SERIALS;

/// Appends `serial` to `record`'s serials, keeping the newest [`MAX_RECORDED_SERIALS`], with
/// the serial of the certificate it was renewed from, if it was. The lineage keeps the links
/// of the serials still listed and of their ancestors, however old (a thief renewing many
/// times must not push the link to the stolen serial out), the newest [`MAX_LINEAGE`] of them.
pub(crate) fn record_serial(
    record: &mut AgentRecord,
    serial: Vec<u8>,
    renewed_from: Option<Vec<u8>>,
) {
    if let Some(from) = renewed_from {
        record.renewed_from.push((serial.clone(), from));
    }
    let serials = &mut record.certificate_serials;
    serials.push(serial);
    let excess = serials.len().saturating_sub(MAX_RECORDED_SERIALS);
    serials.drain(..excess);
    // The serials whose link is needed: those listed, then their parents, up the lineage.
    let keep: Vec<bool> = {
        let mut needed: HashSet<&[u8]> = record
            .certificate_serials
            .iter()
            .map(Vec::as_slice)
            .collect();
        let mut grew = true;
        while grew {
            grew = false;
            // Newest first: a chain is followed up in one pass.
            for (child, parent) in record.renewed_from.iter().rev() {
                if needed.contains(child.as_slice()) && needed.insert(parent.as_slice()) {
                    grew = true;
                }
            }
        }
        record
            .renewed_from
            .iter()
            .map(|(child, _)| needed.contains(child.as_slice()))
            .collect()
    };
    let mut keep = keep.into_iter();
    record.renewed_from.retain(|_| keep.next().unwrap_or(false));
    let excess = record.renewed_from.len().saturating_sub(MAX_LINEAGE);
    record.renewed_from.drain(..excess);
}

/// The serials of `records` renewed, directly or through others, from any of `serials`:
/// what a revocation of those serials also revokes, so that a stolen certificate renewed
/// before it was revoked does not live on in its renewals.
pub(crate) fn renewed_from(records: &[AgentRecord], serials: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut found: Vec<Vec<u8>> = Vec::new();
    for record in records {
        // From any of them, listed or not (a certificate the CA issued directly, or one
        // dropped from the list since).
        let mut frontier: Vec<&Vec<u8>> = serials.iter().collect();
        while let Some(parent) = frontier.pop() {
            for (child, _) in record
                .renewed_from
                .iter()
                .filter(|(_, from)| from == parent)
            {
                if !found.contains(child) && !serials.contains(child) {
                    found.push(child.clone());
                    frontier.push(child);
                }
            }
        }
    }
    found
}

/// Runs CA work (which signs through the key store, possibly doing file I/O) off the async
/// workers.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| RpcError::Ca(format!("signing task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use tonic::Code;

    use super::*;

    #[test]
    fn token_refusals_are_distinct_and_say_nothing_more() {
        let statuses = [
            RpcError::MalformedToken.status(),
            RpcError::UnknownToken.status(),
            RpcError::UsedToken.status(),
            RpcError::ExpiredToken.status(),
        ];
        assert_eq!(statuses[0].code(), Code::InvalidArgument);
        for status in &statuses[1..] {
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        let mut messages: Vec<&str> = statuses.iter().map(Status::message).collect();
        messages.dedup();
        assert_eq!(messages.len(), 4);
    }

    #[test]
    fn internal_failures_are_coarse() {
        let store = RpcError::Store(StoreError::Unavailable("disk /dev/sda1 failed".into()));
        assert_eq!(store.status().code(), Code::Unavailable);
        assert!(!store.status().message().contains("sda1"));
        let corrupt = RpcError::Store(StoreError::Corrupt {
            what: "agent `x`".into(),
            reason: "bad json".into(),
        });
        assert_eq!(corrupt.status().code(), Code::Internal);
        assert!(!corrupt.status().message().contains("json"));
        let ca = RpcError::Ca("keystore: /secret/path".into()).after_redeem();
        assert_eq!(ca.status().code(), Code::Unavailable);
        assert!(!ca.status().message().contains("secret"));
        assert!(ca.status().message().contains("token is spent"));
    }

    #[test]
    fn admin_refusals_have_their_own_statuses() {
        let denied = RpcError::Denied("loading policies is denied: no policy permits it".into());
        assert_eq!(denied.status().code(), Code::PermissionDenied);
        assert!(denied.status().message().contains("no policy permits it"));
        assert_eq!(
            RpcError::SelfRevocation.status().code(),
            Code::FailedPrecondition
        );
        assert_eq!(RpcError::Conflict.status().code(), Code::Aborted);
        let sign = RpcError::CaSign("keystore: /secret/path".into()).status();
        assert_eq!(sign.code(), Code::Unavailable);
        assert!(!sign.message().contains("secret"));
    }

    #[test]
    fn grant_refusals_have_statuses_that_say_why_and_store_failures_say_nothing_more() {
        use entente_policy::{GrantError, RequestId};
        let id: RequestId = "r-1".parse().unwrap();
        for (error, code) in [
            (GrantError::UnknownGrant("x".into()), Code::InvalidArgument),
            (GrantError::ZeroDuration, Code::InvalidArgument),
            (GrantError::HashMismatch(id), Code::InvalidArgument),
            (
                GrantError::NotStanding {
                    request: id,
                    why: "x".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                GrantError::SelfApproval {
                    request: id,
                    approver: "spiffe://example.org/agent/ops/eve".into(),
                },
                Code::PermissionDenied,
            ),
            (GrantError::SelfGrant("x".into()), Code::PermissionDenied),
            (
                GrantError::NeedsApprovals {
                    name: "x".into(),
                    approvals: 2,
                },
                Code::PermissionDenied,
            ),
            (GrantError::UnknownRequest(id), Code::NotFound),
            (GrantError::RequestExpired(id), Code::FailedPrecondition),
            (GrantError::AlreadyRejected(id), Code::FailedPrecondition),
            (GrantError::Replayed(id), Code::AlreadyExists),
            (GrantError::TooManyGrants(1), Code::ResourceExhausted),
        ] {
            let status = RpcError::Grant(error.clone()).status();
            assert_eq!(status.code(), code, "{error}");
            assert!(
                status.message().starts_with(&error.to_string()),
                "{status:?}"
            );
        }
        let store = RpcError::GrantStore(StoreError::Unavailable("disk /dev/sda1 full".into()));
        assert_eq!(store.status().code(), Code::Unavailable);
        assert!(store.status().message().contains("nothing changed"));
        assert!(!store.status().message().contains("sda1"));
        let stale = RpcError::GrantStore(StoreError::StaleVersion {
            stored: 2,
            offered: 1,
        });
        assert_eq!(stale.status().code(), Code::Aborted);
    }

    fn record() -> AgentRecord {
        AgentRecord {
            principal: "spiffe://example.org/agent/shop/alice".to_owned(),
            segment: Some("shop".to_owned()),
            enrolled_at_ms: 0,
            certificate_serials: Vec::new(),
            key_epoch: 1,
            suspended: false,
            renewed_from: Vec::new(),
        }
    }

    #[test]
    fn serials_keep_the_newest_and_the_lineage_of_their_ancestors() {
        let mut record = record();
        let serial = |n: u32| n.to_be_bytes().to_vec();
        // A chain 0 → 1 → … renewed past what the record lists, and a branch off 0 (1000 →
        // 1001) that falls off the list.
        record_serial(&mut record, serial(0), None);
        record_serial(&mut record, serial(1000), Some(serial(0)));
        record_serial(&mut record, serial(1001), Some(serial(1000)));
        let last = MAX_RECORDED_SERIALS as u32 + 10;
        for n in 1..last {
            record_serial(&mut record, serial(n), Some(serial(n - 1)));
        }
        assert_eq!(record.certificate_serials.len(), MAX_RECORDED_SERIALS);
        assert_eq!(
            record.certificate_serials[0],
            serial(last - MAX_RECORDED_SERIALS as u32)
        );
        // The listed serials' ancestry reaches back to 0: a revocation of the first finds the
        // last; the branch no listed serial descends from is gone.
        assert_eq!(record.renewed_from.len(), last as usize - 1);
        let found = renewed_from(std::slice::from_ref(&record), &[serial(0)]);
        assert!(found.contains(&serial(last - 1)));
        assert!(!found.contains(&serial(1001)));
        // At most MAX_LINEAGE links, the newest.
        for n in last..(MAX_LINEAGE as u32 + 100) {
            record_serial(&mut record, serial(n), Some(serial(n - 1)));
        }
        assert_eq!(record.renewed_from.len(), MAX_LINEAGE);
        assert_eq!(
            record.renewed_from.last().map(|l| l.0.clone()),
            Some(serial(MAX_LINEAGE as u32 + 99))
        );
    }

    #[test]
    fn a_serials_renewals_are_found_through_every_generation_and_no_other() {
        let s = |n: u8| vec![n];
        // 1 enrolled, renewed into 2 and (stolen) 3; 3 renewed into 4, then 5. 6 enrolled
        // anew. Another agent's 7 was renewed from 8, a certificate never listed.
        let mut alice = record();
        record_serial(&mut alice, s(1), None);
        record_serial(&mut alice, s(2), Some(s(1)));
        record_serial(&mut alice, s(3), Some(s(1)));
        record_serial(&mut alice, s(4), Some(s(3)));
        record_serial(&mut alice, s(5), Some(s(4)));
        record_serial(&mut alice, s(6), None);
        let mut bob = record();
        bob.principal = "spiffe://example.org/agent/shop/bob".to_owned();
        record_serial(&mut bob, s(7), Some(s(8)));
        let records = [alice, bob];
        let mut found = renewed_from(&records, &[s(3)]);
        found.sort();
        assert_eq!(found, [s(4), s(5)]);
        let mut found = renewed_from(&records, &[s(1)]);
        found.sort();
        assert_eq!(found, [s(2), s(3), s(4), s(5)]);
        assert!(renewed_from(&records, &[s(6)]).is_empty());
        assert_eq!(renewed_from(&records, &[s(8)]), [s(7)]);
        assert!(renewed_from(&records, &[s(9)]).is_empty());
    }
}
