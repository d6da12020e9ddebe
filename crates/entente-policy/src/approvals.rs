//! Approvals of just-in-time requests: which verified statements a request admits, and what
//! the book keeps of each.
//!
//! A statement is admitted for request R only if it is about a grant request (its kind), names
//! R (its object ID) and carries the hash of R as the book holds it, so an approval of one
//! request can never count for another, nor for R changed after the approver saw it. Then:
//! the same signed statement twice is a replay; R must be pending and unexpired; the statement
//! may not predate R; the requester may not approve R (separation of duties), though it may
//! reject it, which withdraws it; and each approver approves at most once.

use entente_crypto::{ObjectKind, Verdict, VerifiedApproval, approval::MAX_CLOCK_SKEW_MS};
use entente_types::Principal;

use crate::grants::{GrantError, GrantRequest, RequestState};

/// One signed approval or rejection, as the book keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    /// Who signed.
    pub approver: Principal,
    /// Approve or reject.
    pub verdict: Verdict,
    /// The epoch of the key bundle that signed.
    pub key_epoch: u64,
    /// When the approver signed, by its clock.
    pub signed_at_ms: u64,
    /// When the book received it.
    pub received_at_ms: u64,
    /// The Ed25519 signature, for the audit trail.
    pub signature: [u8; 64],
    /// SHA-256 of the signed statement: its identity, for refusing replays.
    pub digest: [u8; 32],
    /// The serials of the certificates the approver approved with (its connection's, as the
    /// hub knows them); empty when not known (kept before they were).
    pub credentials: Vec<Vec<u8>>,
}

impl ApprovalRecord {
    pub(crate) fn from_verified(
        approval: &VerifiedApproval,
        credentials: Vec<Vec<u8>>,
        now_ms: u64,
    ) -> Self {
        let statement = approval.statement();
        Self {
            approver: statement.approver.clone(),
            verdict: statement.verdict,
            key_epoch: statement.key_epoch,
            signed_at_ms: statement.signed_at_ms,
            received_at_ms: now_ms,
            signature: *approval.signature(),
            digest: *approval.digest(),
            credentials,
        }
    }
}

/// Checks that `approval` may be applied to `request` at `now_ms` (module docs).
pub(crate) fn admit(
    request: &GrantRequest,
    approval: &VerifiedApproval,
    now_ms: u64,
) -> Result<(), GrantError> {
    let statement = approval.statement();
    let id = request.id;
    if statement.kind != ObjectKind::GrantRequest {
        return Err(GrantError::WrongKind(statement.kind));
    }
    if statement.object_id != id.to_string() {
        return Err(GrantError::WrongRequest {
            request: id,
            statement: statement.object_id.clone(),
        });
    }
    if request
        .approvals
        .iter()
        .any(|a| &a.digest == approval.digest())
    {
        return Err(GrantError::Replayed(id));
    }
    match request.state {
        RequestState::Granted { .. } => return Err(GrantError::AlreadyGranted(id)),
        RequestState::Rejected { .. } => return Err(GrantError::AlreadyRejected(id)),
        RequestState::Expired => return Err(GrantError::RequestExpired(id)),
        RequestState::Pending if now_ms >= request.expires_at_ms => {
            return Err(GrantError::RequestExpired(id));
        }
        RequestState::Pending => {}
    }
    if statement.object_hash != request.hash() {
        return Err(GrantError::HashMismatch(id));
    }
    if statement.signed_at_ms.saturating_add(MAX_CLOCK_SKEW_MS) < request.created_at_ms {
        return Err(GrantError::SignedBeforeRequest {
            request: id,
            signed_at_ms: statement.signed_at_ms,
        });
    }
    if statement.verdict == Verdict::Approve {
        if statement.approver == request.requester {
            return Err(GrantError::SelfApproval {
                request: id,
                approver: statement.approver.as_str().to_owned(),
            });
        }
        if request
            .approvals
            .iter()
            .any(|a| a.verdict == Verdict::Approve && a.approver == statement.approver)
        {
            return Err(GrantError::AlreadyApproved {
                request: id,
                approver: statement.approver.as_str().to_owned(),
            });
        }
    }
    Ok(())
}
