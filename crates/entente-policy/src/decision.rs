//! The answer: allowed or not, why, and which policies decided it.

use std::fmt;
use std::sync::Arc;

/// A policy's ID: its `@id("…")` annotation, or `<source>#<n>` for the n-th policy (from 0)
/// of a source without one. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(Arc<str>);

/// The result of one authorization.
///
/// `policies` are the *determining* policies, ready for the audit record: the permits that
/// matched when allowed; the forbids that matched when a forbid denied; the forbids whose
/// evaluation failed when that denied; empty for the default deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why, in one word.
    pub reason: Reason,
    /// The determining policies, sorted.
    pub policies: Vec<PolicyId>,
    /// Policies whose evaluation failed (an erroring permit counts as not matching; an
    /// erroring forbid denies).
    pub errors: Vec<PolicyError>,
    /// Whether the principal is an agent and the resource belongs to another segment (only
    /// `@cross_segment` permits were considered).
    pub cross_segment: bool,
    /// The policy epoch the decision was made at.
    pub epoch: u64,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// At least one permit matched and no forbid did.
    Permit,
    /// A forbid matched.
    Forbid,
    /// No permit matched: the default deny.
    NoPermit,
    /// A forbid could not be evaluated; Entente denies rather than ignore it.
    ForbidFailed,
    /// The request could not be turned into a Cedar request (an internal error): denied.
    BadRequest,
}

/// A policy that failed to evaluate, and the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy (or `-` when the request itself failed).
    pub policy: PolicyId,
    /// What went wrong.
    pub message: String,
}

// === impl PolicyId ===

impl PolicyId {
    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn new(id: &str) -> Self {
        Self(Arc::from(id))
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for PolicyId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// === impl Decision ===

impl Decision {
    /// A deny for a request that could not be evaluated.
    pub(crate) fn bad_request(message: String, cross_segment: bool, epoch: u64) -> Self {
        Self {
            allowed: false,
            reason: Reason::BadRequest,
            policies: Vec::new(),
            errors: vec![PolicyError {
                policy: PolicyId::new("-"),
                message,
            }],
            cross_segment,
            epoch,
        }
    }
}

// === impl Reason ===

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Permit => "permitted",
            Reason::Forbid => "forbidden",
            Reason::NoPermit => "no policy permits it",
            Reason::ForbidFailed => "a forbid policy failed to evaluate",
            Reason::BadRequest => "the request could not be evaluated",
        })
    }
}
