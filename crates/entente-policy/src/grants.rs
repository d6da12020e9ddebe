//! Time-bound grants and just-in-time requests: the [`GrantBook`].
//!
//! A *grant* is a named entitlement that policies test with `context.grants.contains("name")`.
//! Names are defined by the policies that consume them (`@grant("name")`, see
//! [`GrantDefinition`]), so nothing meaningless can be granted. A principal holds a grant from
//! `not_before_ms` (inclusive) to `not_after_ms` (exclusive); it gets one either **directly**,
//! from a granter ([`GrantBook::grant`]), or through a **just-in-time request**
//! ([`GrantBook::request`]) that becomes a grant when M distinct principals other than the
//! requester approve it with signed statements ([`GrantBook::decide`]); one rejection ends it.
//!
//! The book does no I/O and reads no clock: every operation takes `now_ms`. It refuses bad
//! input with a [`GrantError`] and never panics; every collection in it is bounded
//! ([`GrantLimits`]). [`GrantBook::encode`] and [`GrantBook::decode`] turn it into versioned,
//! bounded bytes for the store. Every change increments [`GrantBook::revision`], the version
//! to store it under.
//!
//! Whoever applies a change to the book also bumps the policy epoch
//! ([`Engine::bump_epoch`](crate::Engine::bump_epoch)), so that no cached decision outlives a
//! grant given, revoked or expired.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use entente_crypto::{GrantRequestBody, ObjectKind, Verdict, VerifiedApproval};
use entente_types::Principal;

use crate::approvals::{self, ApprovalRecord};
use crate::decision::PolicyId;
use crate::policies::PolicySet;
use crate::request::ActiveGrant;

/// Approvals a just-in-time request needs when its definition has no `@approvals`.
pub const DEFAULT_APPROVALS: u32 = 1;
/// The most approvals `@approvals` may ask for.
pub const MAX_APPROVALS: u32 = 16;
/// The longest a grant may last when its definition has no `@max_duration`: 8 hours.
pub const DEFAULT_MAX_DURATION_MS: u64 = 8 * HOUR_MS;
/// The ceiling of `@max_duration`: 7 days.
pub const MAX_GRANT_DURATION_MS: u64 = 7 * DAY_MS;
/// The longest grant name, in bytes.
pub const MAX_GRANT_NAME_LEN: usize = 64;
/// The longest reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// The largest encoded book [`GrantBook::decode`] reads.
pub const MAX_BOOK_LEN: usize = 64 << 20;
/// The encoding version [`GrantBook::encode`] writes and [`GrantBook::decode`] reads.
pub const BOOK_VERSION: u32 = 1;
/// The most certificate serials kept of what one principal acted with on a request
/// ([`NewRequest::credentials`], [`ApprovalRecord::credentials`]).
pub const MAX_CREDENTIALS: usize = 32;
/// The longest certificate serial kept, in bytes (RFC 5280 allows 20 octets; its DER form may
/// add a sign octet).
pub const MAX_SERIAL_LEN: usize = 32;

/// The most grants a book holds, whatever its limits say.
pub const HARD_MAX_GRANTS: usize = 16_384;
/// The most requests (pending, decided or lapsed) a book keeps, whatever its limits say.
pub const HARD_MAX_REQUESTS: usize = 4_096;
/// Closed requests a requester keeps in the book per request it may have pending
/// ([`GrantBook::max_closed_per_principal`]).
const CLOSED_PER_PENDING: usize = 4;

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

// === public types ===

/// A grant name as the policies define it: which approvals a request needs and the longest
/// it may be given for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantDefinition {
    /// The name policies test with `context.grants.contains("…")`.
    pub name: String,
    /// M: the distinct approvals a just-in-time request needs (`@approvals`, default 1).
    pub approvals: u32,
    /// The longest a grant may be given or requested for (`@max_duration`, default 8 h).
    pub max_duration_ms: u64,
    /// The policies that declare it, in load order.
    pub policies: Vec<PolicyId>,
}

/// The ID of a grant record: `g-<n>`, unique within a book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(u64);

/// The ID of a just-in-time request: `r-<n>`, unique within a book. It is the `object_id` of
/// the approval statements about the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// A grant a principal holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The record's ID.
    pub id: GrantId,
    /// The grant's name.
    pub name: String,
    /// Who holds it.
    pub principal: Principal,
    /// When it starts counting, Unix milliseconds (inclusive).
    pub not_before_ms: u64,
    /// When it stops counting, Unix milliseconds (exclusive).
    pub not_after_ms: u64,
    /// Why it was given.
    pub reason: String,
    /// Who gave it.
    pub granted_by: GrantedBy,
}

/// Where a grant came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantedBy {
    /// Given directly by this principal.
    Granter(Principal),
    /// The outcome of a just-in-time request, approved by these principals.
    Request {
        /// The request.
        request: RequestId,
        /// Its approvers, in the order their approvals came.
        approvers: Vec<Principal>,
    },
}

/// A just-in-time request, pending or decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRequest {
    /// Its ID.
    pub id: RequestId,
    /// Who asks, and will hold the grant.
    pub requester: Principal,
    /// The grant's name.
    pub name: String,
    /// How long the grant lasts once approved.
    pub duration_ms: u64,
    /// Why, in the requester's words.
    pub reason: String,
    /// When it was made, Unix milliseconds.
    pub created_at_ms: u64,
    /// When it lapses if not decided (exclusive), Unix milliseconds.
    pub expires_at_ms: u64,
    /// M, from the grant's definition when the request was made. A definition that asks for
    /// more by the time of an approval raises it.
    pub required: u32,
    /// The signed approvals and rejection received, in order.
    pub approvals: Vec<ApprovalRecord>,
    /// Where it stands.
    pub state: RequestState,
    /// The certificate serials the requester asked with ([`NewRequest::credentials`]); not
    /// part of [`hash`](Self::hash).
    pub credentials: Vec<Vec<u8>>,
}

/// Where a just-in-time request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Approved: the grant it became.
    Granted {
        /// The grant.
        grant: GrantId,
        /// When, Unix milliseconds.
        at_ms: u64,
    },
    /// Rejected.
    Rejected {
        /// By whom.
        by: Principal,
        /// When, Unix milliseconds.
        at_ms: u64,
    },
    /// Lapsed without enough approvals.
    Expired,
}

/// A direct grant to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGrant {
    /// The grant's name; a policy must define it.
    pub name: String,
    /// Who receives it.
    pub principal: Principal,
    /// Who gives it (authorized by the caller); never the receiver.
    pub granter: Principal,
    /// When it ends.
    pub end: GrantEnd,
    /// Why: 1 to [`MAX_REASON_LEN`] bytes, no control characters.
    pub reason: String,
}

/// When a grant given now ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantEnd {
    /// This many milliseconds from now (`--for 15m`).
    After(u64),
    /// At this Unix time in milliseconds (`--until …`), which must be in the future.
    At(u64),
}

/// A just-in-time request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// Who asks; the grant will be theirs.
    pub requester: Principal,
    /// The grant's name; a policy must define it.
    pub name: String,
    /// How long the grant should last once approved.
    pub duration_ms: u64,
    /// Why: 1 to [`MAX_REASON_LEN`] bytes, no control characters.
    pub reason: String,
    /// The serials of the certificates the requester asks with (its connection's, as the hub
    /// knows them): at most [`MAX_CREDENTIALS`] of 1 to [`MAX_SERIAL_LEN`] bytes each; empty
    /// when not known. A hub approves nothing of a request one of them is revoked since.
    pub credentials: Vec<Vec<u8>>,
}

/// What an approval or rejection did to its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Recorded; more approvals are needed.
    Pending {
        /// Distinct approvals so far.
        approvals: u32,
        /// How many are needed.
        required: u32,
    },
    /// The M-th approval: the grant is active from now.
    Granted(Grant),
    /// Rejected: the request is closed.
    Rejected,
}

/// What [`GrantBook::expire`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Grants that ended and were removed.
    pub grants: Vec<Grant>,
    /// Pending requests that lapsed (kept a while as [`RequestState::Expired`]).
    pub requests: Vec<GrantRequest>,
    /// Old decided or lapsed requests dropped from the book.
    pub forgotten: Vec<RequestId>,
}

/// Bounds on what a book holds. Values above the hard limits ([`HARD_MAX_GRANTS`],
/// [`HARD_MAX_REQUESTS`]) are lowered to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantLimits {
    /// Grants in the book.
    pub max_grants: usize,
    /// Grants one principal holds.
    pub max_grants_per_principal: usize,
    /// Pending requests in the book.
    pub max_pending: usize,
    /// Pending requests of one requester.
    pub max_pending_per_principal: usize,
    /// Pending requests of one segment's agents together (humans count as one segment):
    /// the principals of one segment can't fill the book for everyone.
    pub max_pending_per_segment: usize,
    /// Requests kept in all (pending, and decided or lapsed ones kept for clear errors).
    pub max_requests: usize,
    /// How long a request waits for approvals.
    pub request_ttl_ms: u64,
    /// How long a decided or lapsed request is kept after its expiry, so that a late
    /// approval gets a clear answer.
    pub keep_decided_ms: u64,
}

/// The grants and requests of a hub.
///
/// ```
/// use entente_crypto::{ApprovalIn, ApprovalStatement, MessageKeys, ObjectKind, Verdict};
/// use entente_policy::{GrantBook, NewRequest, Outcome, PolicySet};
/// use entente_types::Principal;
///
/// let policies = PolicySet::parse(
///     "grants.cedar",
///     r#"@grant("demo-read") @max_duration("1h")
///        permit (principal, action == Action::"subscribe", resource in Namespace::"demo")
///        when { context.grants.contains("demo-read") };"#,
/// )?;
/// let alice = Principal::parse("spiffe://example.org/agent/demo/alice")?;
/// let ann = Principal::parse("spiffe://example.org/human/ann")?;
/// let ann_keys = MessageKeys::generate()?;
/// let now = 1_800_000_000_000;
///
/// let mut book = GrantBook::default();
/// let request = book.request(
///     &policies,
///     NewRequest {
///         requester: alice.clone(),
///         name: "demo-read".to_owned(),
///         duration_ms: 15 * 60_000,
///         reason: "INC-42: read the demo logs".to_owned(),
///         credentials: Vec::new(),
///     },
///     now,
/// )?;
///
/// // Ann signs a statement over the request as she was shown it; the hub verifies it.
/// let statement = ApprovalStatement {
///     verdict: Verdict::Approve,
///     kind: ObjectKind::GrantRequest,
///     object_id: request.id.to_string(),
///     object_hash: request.hash(),
///     approver: ann.clone(),
///     key_epoch: 1,
///     signed_at_ms: now + 1_000,
/// };
/// let approval = ApprovalIn::from(statement.sign(&ann_keys)?)
///     .verify_with_key(&ann, &ann_keys.ed25519_public(), now + 1_000)?;
///
/// let Outcome::Granted(grant) = book.decide(&policies, request.id, &approval, now + 1_000)? else {
///     unreachable!("one approval is enough by default")
/// };
/// assert_eq!(grant.not_after_ms, now + 1_000 + 15 * 60_000);
/// assert_eq!(book.active_for(&alice, now + 2_000)[0].id, "demo-read");
/// assert!(book.active_for(&alice, grant.not_after_ms).is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantBook {
    grants: BTreeMap<GrantId, Grant>,
    requests: BTreeMap<RequestId, GrantRequest>,
    next_grant: u64,
    next_request: u64,
    revision: u64,
    limits: GrantLimits,
}

/// Why a grant, request, approval or revocation was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The name is not 1 to 64 bytes of `[A-Za-z0-9._:-]`.
    #[error(
        "grant name `{0}` is invalid: use 1 to {MAX_GRANT_NAME_LEN} characters of [A-Za-z0-9._:-]"
    )]
    InvalidName(String),
    /// No loaded policy declares `@grant("<name>")`.
    #[error("unknown grant `{0}`: no policy declares @grant(\"{0}\")")]
    UnknownGrant(String),
    /// A duration of zero.
    #[error("a grant must last longer than zero")]
    ZeroDuration,
    /// Longer than the definition allows.
    #[error(
        "grant `{name}` for {} exceeds its maximum of {}",
        format_duration(*.requested_ms),
        format_duration(*.max_ms)
    )]
    TooLong {
        /// The grant.
        name: String,
        /// What was asked.
        requested_ms: u64,
        /// `@max_duration`.
        max_ms: u64,
    },
    /// The end is not after now.
    #[error("the grant would end at {not_after_ms}, which is not after now ({now_ms})")]
    AlreadyEnded {
        /// The end asked for.
        not_after_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// An empty (or blank) reason.
    #[error("a reason is required")]
    EmptyReason,
    /// A reason over [`MAX_REASON_LEN`] bytes.
    #[error("the reason is {len} bytes, over the limit of {max}")]
    ReasonTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A reason with control characters (line breaks included) or invisible formatting
    /// characters (bidirectional overrides, zero-width characters).
    #[error("the reason must not contain control or invisible formatting characters")]
    ReasonControl,
    /// The granter and the receiver are the same principal.
    #[error("`{0}` cannot grant to itself")]
    SelfGrant(String),
    /// A grant whose definition asks for more than one approval, given directly: one granter
    /// is one approval.
    #[error(
        "grant `{name}` needs {approvals} approvals: it is given through a request \
         (`RequestGrant`) that many approvers approve, not by one granter"
    )]
    NeedsApprovals {
        /// The grant's name.
        name: String,
        /// The approvals its definition asks for.
        approvals: u32,
    },
    /// The book holds as many grants as it may.
    #[error("too many grants: the limit is {0}")]
    TooManyGrants(usize),
    /// The principal holds as many grants as it may.
    #[error("`{principal}` holds too many grants: the limit is {max}")]
    TooManyGrantsFor {
        /// The principal.
        principal: String,
        /// The limit.
        max: usize,
    },
    /// The book holds as many pending requests (or requests in all) as it may.
    #[error("too many pending requests: the limit is {0}")]
    TooManyRequests(usize),
    /// The requester's segment (humans: all humans) has as many pending requests as it may.
    #[error("segment `{segment}` has too many pending requests: the limit is {max}")]
    TooManyRequestsIn {
        /// The segment (`(humans)` for humans).
        segment: String,
        /// The limit.
        max: usize,
    },
    /// The requester has as many pending requests as it may.
    #[error("`{principal}` has too many pending requests: the limit is {max}")]
    TooManyRequestsFor {
        /// The requester.
        principal: String,
        /// The limit.
        max: usize,
    },
    /// The requester already has a pending request for this grant.
    #[error("`{principal}` already has a pending request for `{name}`: {existing}")]
    DuplicateRequest {
        /// The requester.
        principal: String,
        /// The grant.
        name: String,
        /// The pending request.
        existing: RequestId,
    },
    /// No such grant record.
    #[error("unknown grant record {0}")]
    UnknownGrantRecord(GrantId),
    /// No such request (never made, or expired and forgotten).
    #[error("unknown request {0}")]
    UnknownRequest(RequestId),
    /// The request lapsed before this decision.
    #[error("request {0} has expired")]
    RequestExpired(RequestId),
    /// The request was approved already.
    #[error("request {0} was already granted")]
    AlreadyGranted(RequestId),
    /// The request was rejected already.
    #[error("request {0} was already rejected")]
    AlreadyRejected(RequestId),
    /// The statement is about an envelope, not a grant request.
    #[error("the statement is about an object of kind `{0}`, not a grant request")]
    WrongKind(ObjectKind),
    /// The statement names another request.
    #[error("the statement is about `{statement}`, not request {request}")]
    WrongRequest {
        /// The request it was applied to.
        request: RequestId,
        /// The object the statement names.
        statement: String,
    },
    /// The statement's hash is not the hash of this request: the approver saw another one.
    #[error("the statement's hash does not match request {0}: the approver saw another request")]
    HashMismatch(RequestId),
    /// The statement is dated before the request was made.
    #[error("the statement is dated {signed_at_ms}, before request {request} was made")]
    SignedBeforeRequest {
        /// The request.
        request: RequestId,
        /// Its date.
        signed_at_ms: u64,
    },
    /// The same signed statement was submitted before.
    #[error("replayed statement: this approval of request {0} was submitted before")]
    Replayed(RequestId),
    /// The requester approved its own request.
    #[error("`{approver}` cannot approve its own request {request}")]
    SelfApproval {
        /// The request.
        request: RequestId,
        /// The requester.
        approver: String,
    },
    /// The approver approved this request before.
    #[error("request {request} was already approved by `{approver}`")]
    AlreadyApproved {
        /// The request.
        request: RequestId,
        /// The approver.
        approver: String,
    },
    /// The request holds as many approvals as it may, though fewer count (their approvers
    /// were cut off since): one more that does not make the grant is refused.
    #[error(
        "request {0} holds {MAX_APPROVALS} approvals, as many as it may, though fewer count now: \
         ask for a new one"
    )]
    ApprovalsFull(RequestId),
    /// A hub's check when the approval takes its turn: the request can't be approved now —
    /// its requester quarantined, or revoked (or a certificate it asked with,
    /// [`GrantRequest::credentials`]), or the approver's own certificate revoked since.
    #[error("request {request} can't be approved now: {why}")]
    NotStanding {
        /// The request.
        request: RequestId,
        /// Why, in words.
        why: String,
    },
    /// More certificate serials than [`MAX_CREDENTIALS`], or one empty or over
    /// [`MAX_SERIAL_LEN`] bytes.
    #[error(
        "credentials: at most {MAX_CREDENTIALS} certificate serials of 1 to {MAX_SERIAL_LEN} \
         bytes each"
    )]
    BadCredentials,
}

/// Why encoded book bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BookDecodeError {
    /// More than [`MAX_BOOK_LEN`] bytes.
    #[error("encoded grant book is {len} bytes, over the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON of the expected shape.
    #[error("encoded grant book is malformed: {0}")]
    Malformed(String),
    /// A version this build does not read.
    #[error("grant book version {found} is not supported (this build reads version {supported})")]
    Version {
        /// The version found.
        found: u64,
        /// The version read.
        supported: u32,
    },
    /// A record breaks the book's rules.
    #[error("encoded grant book is invalid: {0}")]
    Invalid(String),
}

/// Why a duration like `1h30m` did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid duration `{0}`: write a number and a unit (ms, s, m, h, d), largest unit first, e.g. `15m` or `1h30m`"
)]
pub struct DurationError(String);

// === impl GrantBook ===

impl GrantBook {
    /// An empty book.
    pub fn new(limits: GrantLimits) -> Self {
        Self {
            grants: BTreeMap::new(),
            requests: BTreeMap::new(),
            next_grant: 1,
            next_request: 1,
            revision: 0,
            limits: limits.clamped(),
        }
    }

    /// Incremented by every change: the version to store the book under.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The limits in force.
    pub fn limits(&self) -> &GrantLimits {
        &self.limits
    }

    /// Every grant record, by ID (expired ones stay until [`GrantBook::expire`]).
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// One grant record.
    pub fn grant_record(&self, id: GrantId) -> Option<&Grant> {
        self.grants.get(&id)
    }

    /// Every request kept, by ID.
    pub fn requests(&self) -> impl Iterator<Item = &GrantRequest> {
        self.requests.values()
    }

    /// One request.
    pub fn request_record(&self, id: RequestId) -> Option<&GrantRequest> {
        self.requests.get(&id)
    }

    /// The requests awaiting decision at `now_ms`.
    pub fn pending(&self, now_ms: u64) -> impl Iterator<Item = &GrantRequest> {
        self.requests
            .values()
            .filter(move |r| r.is_pending_at(now_ms))
    }

    /// The grants `principal` holds at `now_ms`, one per name with the latest end, sorted by
    /// name: the `Facts::grants` of its decisions. Never an expired one.
    pub fn active_for(&self, principal: &Principal, now_ms: u64) -> Vec<ActiveGrant> {
        let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
        for grant in self.grants.values() {
            if &grant.principal == principal && grant.is_active_at(now_ms) {
                let end = by_name.entry(&grant.name).or_insert(0);
                *end = (*end).max(grant.not_after_ms);
            }
        }
        by_name
            .into_iter()
            .map(|(name, not_after_ms)| ActiveGrant {
                id: name.to_owned(),
                not_after_ms,
            })
            .collect()
    }

    /// Gives a grant directly, active from `now_ms`.
    pub fn grant(
        &mut self,
        policies: &PolicySet,
        new: NewGrant,
        now_ms: u64,
    ) -> Result<Grant, GrantError> {
        let definition = definition(policies, &new.name)?;
        check_reason(&new.reason)?;
        if new.granter == new.principal {
            return Err(GrantError::SelfGrant(new.principal.as_str().to_owned()));
        }
        let not_after_ms = match new.end {
            GrantEnd::After(duration_ms) => {
                check_duration(definition, duration_ms)?;
                end_after(now_ms, duration_ms)?
            }
            GrantEnd::At(not_after_ms) => {
                if not_after_ms <= now_ms {
                    return Err(GrantError::AlreadyEnded {
                        not_after_ms,
                        now_ms,
                    });
                }
                check_duration(definition, not_after_ms - now_ms)?;
                not_after_ms
            }
        };
        if definition.approvals > 1 {
            return Err(GrantError::NeedsApprovals {
                name: new.name,
                approvals: definition.approvals,
            });
        }
        self.check_room_for_grant(&new.principal, now_ms)?;
        let grant = Grant {
            id: GrantId(self.next_grant),
            name: new.name,
            principal: new.principal,
            not_before_ms: now_ms,
            not_after_ms,
            reason: new.reason,
            granted_by: GrantedBy::Granter(new.granter),
        };
        self.insert_grant(grant.clone());
        Ok(grant)
    }

    /// Makes a just-in-time request, pending from `now_ms` for the book's request TTL. The
    /// hub sends approvers the request and they sign statements over its
    /// [`GrantRequest::hash`].
    pub fn request(
        &mut self,
        policies: &PolicySet,
        new: NewRequest,
        now_ms: u64,
    ) -> Result<GrantRequest, GrantError> {
        let definition = definition(policies, &new.name)?;
        check_reason(&new.reason)?;
        check_duration(definition, new.duration_ms)?;
        check_credentials(&new.credentials)?;
        let mut pending = 0;
        let mut mine = 0;
        let segment = new.requester.share_group();
        let mut ours = 0;
        for request in self.pending(now_ms) {
            pending += 1;
            if request.requester.share_group() == segment {
                ours += 1;
            }
            if request.requester == new.requester {
                mine += 1;
                if request.name == new.name {
                    return Err(GrantError::DuplicateRequest {
                        principal: new.requester.as_str().to_owned(),
                        name: new.name,
                        existing: request.id,
                    });
                }
            }
        }
        if pending >= self.limits.max_pending {
            return Err(GrantError::TooManyRequests(self.limits.max_pending));
        }
        if mine >= self.limits.max_pending_per_principal {
            return Err(GrantError::TooManyRequestsFor {
                principal: new.requester.as_str().to_owned(),
                max: self.limits.max_pending_per_principal,
            });
        }
        if ours >= self.limits.max_pending_per_segment {
            return Err(GrantError::TooManyRequestsIn {
                segment: segment.to_owned(),
                max: self.limits.max_pending_per_segment,
            });
        }
        // A requester's closed requests are kept up to a few times as many as it may have
        // pending, its own oldest going first: one that asks and withdraws without end neither
        // grows the book (each change of which is stored whole) nor pushes others' out.
        let closed: Vec<(u64, RequestId)> = self
            .requests
            .values()
            .filter(|r| r.requester == new.requester && !r.is_pending_at(now_ms))
            .map(|r| (r.expires_at_ms, r.id))
            .collect();
        if closed.len() >= self.max_closed_per_principal()
            && let Some(&(_, oldest)) = closed.iter().min()
        {
            self.requests.remove(&oldest);
        }
        if self.requests.len() >= self.limits.max_requests && !self.forget_oldest_closed(now_ms) {
            return Err(GrantError::TooManyRequests(self.limits.max_requests));
        }
        let request = GrantRequest {
            id: RequestId(self.next_request),
            requester: new.requester,
            name: new.name,
            duration_ms: new.duration_ms,
            reason: new.reason,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.limits.request_ttl_ms),
            required: definition.approvals,
            approvals: Vec::new(),
            state: RequestState::Pending,
            credentials: new.credentials,
        };
        self.next_request = self.next_request.saturating_add(1);
        self.requests.insert(request.id, request.clone());
        self.touch();
        Ok(request)
    }

    /// Applies a verified approval or rejection to request `id`.
    ///
    /// The statement must be about this grant request (kind, ID, and the hash of the request
    /// as stored), dated no earlier than the request, by a principal other than the
    /// requester who has not approved it yet, and not submitted before; the request must be
    /// pending and not expired. A rejection closes the request. An approval is recorded;
    /// the M-th distinct one (M from the definition, raised if the policies now ask for
    /// more) makes the grant, active from `now_ms` for the requested duration. The grant's
    /// definition must still exist and allow that duration.
    pub fn decide(
        &mut self,
        policies: &PolicySet,
        id: RequestId,
        approval: &VerifiedApproval,
        now_ms: u64,
    ) -> Result<Outcome, GrantError> {
        self.decide_standing(policies, id, approval, Vec::new(), now_ms, |_| true)
    }

    /// [`decide`](Self::decide) of an approval made with the certificates `credentials` (kept
    /// with it, as [`NewRequest::credentials`] are), where an earlier approval counts only if
    /// `standing` says it still may (its approver neither revoked nor quarantined, nor a
    /// certificate it approved with revoked, and still permitted to approve): an approver cut
    /// off since its approval no longer counts towards the M. The approval being decided is
    /// the caller's to check. Approvals that no longer count stay in the request's history;
    /// the grant names the approvers that counted.
    pub fn decide_standing(
        &mut self,
        policies: &PolicySet,
        id: RequestId,
        approval: &VerifiedApproval,
        credentials: Vec<Vec<u8>>,
        now_ms: u64,
        standing: impl Fn(&ApprovalRecord) -> bool,
    ) -> Result<Outcome, GrantError> {
        check_credentials(&credentials)?;
        let request = self
            .requests
            .get(&id)
            .ok_or(GrantError::UnknownRequest(id))?;
        approvals::admit(request, approval, now_ms)?;
        let record = ApprovalRecord::from_verified(approval, credentials, now_ms);
        if approval.verdict() == Verdict::Reject {
            let request = self
                .requests
                .get_mut(&id)
                .ok_or(GrantError::UnknownRequest(id))?;
            request.approvals.push(record);
            request.state = RequestState::Rejected {
                by: approval.approver().clone(),
                at_ms: now_ms,
            };
            self.touch();
            return Ok(Outcome::Rejected);
        }

        let definition = definition(policies, &request.name)?;
        check_duration(definition, request.duration_ms)?;
        let required = request.required.max(definition.approvals);
        let counted = |a: &ApprovalRecord| a.verdict == Verdict::Approve && standing(a);
        let earlier = request.approvals.iter().filter(|a| counted(a)).count();
        let approvals = u32::try_from(earlier).unwrap_or(u32::MAX).saturating_add(1);
        if approvals < required {
            // Approvals that stopped counting stay in the history: bounded, with room for the
            // last one, which makes the grant or rejects (what the stored book allows).
            if request.approvals.len() >= MAX_APPROVALS as usize {
                return Err(GrantError::ApprovalsFull(id));
            }
            let request = self
                .requests
                .get_mut(&id)
                .ok_or(GrantError::UnknownRequest(id))?;
            request.approvals.push(record);
            self.touch();
            return Ok(Outcome::Pending {
                approvals,
                required,
            });
        }

        let not_after_ms = end_after(now_ms, request.duration_ms)?;
        let mut approvers: Vec<Principal> = request
            .approvals
            .iter()
            .filter(|a| counted(a))
            .map(|a| a.approver.clone())
            .collect();
        approvers.push(approval.approver().clone());
        // An approver that stands again counts again, so more than the M may: the grant
        // names the M last.
        let extra = approvers.len().saturating_sub(required as usize);
        approvers.drain(..extra);
        self.check_room_for_grant(&request.requester, now_ms)?;
        let grant_id = GrantId(self.next_grant);
        let request = self
            .requests
            .get_mut(&id)
            .ok_or(GrantError::UnknownRequest(id))?;
        request.approvals.push(record);
        request.state = RequestState::Granted {
            grant: grant_id,
            at_ms: now_ms,
        };
        let grant = Grant {
            id: grant_id,
            name: request.name.clone(),
            principal: request.requester.clone(),
            not_before_ms: now_ms,
            not_after_ms,
            reason: request.reason.clone(),
            granted_by: GrantedBy::Request {
                request: id,
                approvers,
            },
        };
        self.insert_grant(grant.clone());
        Ok(Outcome::Granted(grant))
    }

    /// Ends a grant now: removes it and returns it.
    pub fn revoke(&mut self, id: GrantId) -> Result<Grant, GrantError> {
        let grant = self
            .grants
            .remove(&id)
            .ok_or(GrantError::UnknownGrantRecord(id))?;
        self.touch();
        Ok(grant)
    }

    /// Ends the grants `policies` no longer allow as given: those whose name no policy of the
    /// set defines any more, those given for longer than its definition's `@max_duration`
    /// now allows, and those given with fewer approvals than its `@approvals` now asks (a
    /// direct grant counts one). Their holders may ask again, under the rules in force.
    /// Returns them.
    pub fn conform(&mut self, policies: &PolicySet) -> Vec<Grant> {
        let mut ended = Vec::new();
        self.grants.retain(|_, grant| {
            let approvals = match &grant.granted_by {
                GrantedBy::Granter(_) => 1,
                GrantedBy::Request { approvers, .. } => approvers.len(),
            };
            let allowed = policies
                .grant_definition(&grant.name)
                .is_some_and(|definition| {
                    grant.not_after_ms.saturating_sub(grant.not_before_ms)
                        <= definition.max_duration_ms
                        && u64::try_from(approvals).unwrap_or(u64::MAX)
                            >= u64::from(definition.approvals)
                });
            if !allowed {
                ended.push(grant.clone());
            }
            allowed
        });
        if !ended.is_empty() {
            self.touch();
        }
        ended
    }

    /// Removes the grants that ended by `now_ms`, marks lapsed pending requests expired, and
    /// forgets decided or lapsed requests kept longer than `keep_decided_ms` after their
    /// expiry. Says what changed, so that the caller can bump the policy epoch (if grants
    /// ended), audit, and store the book (if anything changed).
    pub fn expire(&mut self, now_ms: u64) -> Expired {
        let mut out = Expired::default();
        self.grants.retain(|_, grant| {
            let ended = grant.not_after_ms <= now_ms;
            if ended {
                out.grants.push(grant.clone());
            }
            !ended
        });
        let keep_ms = self.limits.keep_decided_ms;
        self.requests.retain(|id, request| {
            if request.state == RequestState::Pending && now_ms >= request.expires_at_ms {
                request.state = RequestState::Expired;
                out.requests.push(request.clone());
            }
            let forget = request.state != RequestState::Pending
                && now_ms >= request.expires_at_ms.saturating_add(keep_ms);
            if forget {
                out.forgotten.push(*id);
            }
            !forget
        });
        if !out.is_empty() {
            self.touch();
        }
        out
    }

    /// When [`GrantBook::expire`] next has something to do: the earliest end of a grant,
    /// expiry of a pending request, or time to forget a closed one. `None` for an empty book.
    pub fn next_change_ms(&self) -> Option<u64> {
        let keep_ms = self.limits.keep_decided_ms;
        let grants = self.grants.values().map(|g| g.not_after_ms);
        let requests = self.requests.values().map(|r| match r.state {
            RequestState::Pending => r.expires_at_ms,
            _ => r.expires_at_ms.saturating_add(keep_ms),
        });
        grants.chain(requests).min()
    }

    /// The book as versioned JSON (docs/POLICY.md), for the store.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Reads a book written by [`GrantBook::encode`], refusing more than
    /// [`MAX_BOOK_LEN`] bytes, unknown versions, and any record that breaks the book's
    /// rules. `limits` apply to later operations; a stored book over them still loads (up to
    /// the hard limits).
    pub fn decode(bytes: &[u8], limits: GrantLimits) -> Result<Self, BookDecodeError> {
        codec::decode(bytes, limits.clamped())
    }

    // --- helpers ---

    fn touch(&mut self) {
        self.revision = self.revision.saturating_add(1);
    }

    fn insert_grant(&mut self, grant: Grant) {
        self.next_grant = self.next_grant.max(grant.id.0).saturating_add(1);
        self.grants.insert(grant.id, grant);
        self.touch();
    }

    /// Whether one more grant fits, counting only grants still active (ended ones are about
    /// to be expired).
    fn check_room_for_grant(&self, principal: &Principal, now_ms: u64) -> Result<(), GrantError> {
        let live = self.grants.values().filter(|g| g.not_after_ms > now_ms);
        let (mut all, mut mine) = (0, 0);
        for grant in live {
            all += 1;
            if &grant.principal == principal {
                mine += 1;
            }
        }
        if all >= self.limits.max_grants {
            return Err(GrantError::TooManyGrants(self.limits.max_grants));
        }
        // Ended grants wait for `expire`; whoever never calls it still has a bound.
        if self.grants.len() >= HARD_MAX_GRANTS {
            return Err(GrantError::TooManyGrants(HARD_MAX_GRANTS));
        }
        if mine >= self.limits.max_grants_per_principal {
            return Err(GrantError::TooManyGrantsFor {
                principal: principal.as_str().to_owned(),
                max: self.limits.max_grants_per_principal,
            });
        }
        Ok(())
    }

    /// How many closed requests of one requester the book keeps: four times as many as it may
    /// have pending.
    pub fn max_closed_per_principal(&self) -> usize {
        self.limits
            .max_pending_per_principal
            .saturating_mul(CLOSED_PER_PENDING)
            .max(1)
    }

    /// Drops the closed (decided or lapsed) request that expires first, to make room.
    fn forget_oldest_closed(&mut self, now_ms: u64) -> bool {
        let oldest = self
            .requests
            .values()
            .filter(|r| !r.is_pending_at(now_ms))
            .min_by_key(|r| (r.expires_at_ms, r.id))
            .map(|r| r.id);
        oldest.is_some_and(|id| self.requests.remove(&id).is_some())
    }
}

impl Default for GrantBook {
    fn default() -> Self {
        Self::new(GrantLimits::default())
    }
}

// === impl Grant, GrantRequest ===

impl Grant {
    /// Whether it counts at `now_ms`.
    pub fn is_active_at(&self, now_ms: u64) -> bool {
        self.not_before_ms <= now_ms && now_ms < self.not_after_ms
    }
}

impl GrantRequest {
    /// Its canonical bytes ([`GrantRequestBody::canonical_bytes`], PROTOCOL.md §11): what
    /// approvers see and hash.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let id = self.id.to_string();
        self.body(&id).canonical_bytes()
    }

    /// SHA-256 of its canonical bytes: what an approval statement about it carries.
    pub fn hash(&self) -> [u8; 32] {
        let id = self.id.to_string();
        self.body(&id).hash()
    }

    fn body<'a>(&'a self, id: &'a str) -> GrantRequestBody<'a> {
        GrantRequestBody {
            id,
            requester: self.requester.as_str(),
            name: &self.name,
            duration_ms: self.duration_ms,
            reason: &self.reason,
            created_at_ms: self.created_at_ms,
            expires_at_ms: self.expires_at_ms,
        }
    }

    /// Whether it awaits decision at `now_ms`.
    pub fn is_pending_at(&self, now_ms: u64) -> bool {
        self.state == RequestState::Pending && now_ms < self.expires_at_ms
    }

    /// Distinct approvals so far.
    pub fn approval_count(&self) -> u32 {
        let n = self
            .approvals
            .iter()
            .filter(|a| a.verdict == Verdict::Approve)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

// === impl GrantId, RequestId ===

impl GrantId {
    /// The record number.
    pub fn number(self) -> u64 {
        self.0
    }
}

impl RequestId {
    /// The request number.
    pub fn number(self) -> u64 {
        self.0
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g-{}", self.0)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r-{}", self.0)
    }
}

impl FromStr for GrantId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, IdParseError> {
        parse_id(s, "g-").map(Self)
    }
}

impl FromStr for RequestId {
    type Err = IdParseError;

    fn from_str(s: &str) -> Result<Self, IdParseError> {
        parse_id(s, "r-").map(Self)
    }
}

/// A grant or request ID that is not `g-<n>` / `r-<n>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ID `{0}`: expected `g-<n>` for a grant or `r-<n>` for a request")]
pub struct IdParseError(String);

fn parse_id(s: &str, prefix: &str) -> Result<u64, IdParseError> {
    let bad = || IdParseError(s.chars().take(32).collect());
    let digits = s.strip_prefix(prefix).ok_or_else(bad)?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return Err(bad());
    }
    digits.parse().map_err(|_| bad())
}

// === impl GrantLimits, Expired ===

impl Default for GrantLimits {
    fn default() -> Self {
        Self {
            max_grants: 4_096,
            max_grants_per_principal: 32,
            max_pending: 1_024,
            max_pending_per_principal: 8,
            max_pending_per_segment: 256,
            max_requests: HARD_MAX_REQUESTS,
            request_ttl_ms: HOUR_MS,
            keep_decided_ms: HOUR_MS,
        }
    }
}

impl GrantLimits {
    fn clamped(self) -> Self {
        Self {
            max_grants: self.max_grants.min(HARD_MAX_GRANTS),
            max_grants_per_principal: self.max_grants_per_principal.min(HARD_MAX_GRANTS),
            max_pending: self.max_pending.min(HARD_MAX_REQUESTS),
            max_pending_per_principal: self.max_pending_per_principal.min(HARD_MAX_REQUESTS),
            max_pending_per_segment: self.max_pending_per_segment.min(HARD_MAX_REQUESTS),
            max_requests: self.max_requests.min(HARD_MAX_REQUESTS),
            request_ttl_ms: self.request_ttl_ms.clamp(1, MAX_GRANT_DURATION_MS),
            keep_decided_ms: self.keep_decided_ms.min(MAX_GRANT_DURATION_MS),
        }
    }
}

impl Expired {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.requests.is_empty() && self.forgotten.is_empty()
    }
}

// === durations ===

/// Parses a duration: one or more `<number><unit>`, units `d`, `h`, `m`, `s`, `ms`, each at
/// most once and largest first: `15m`, `1h30m`, `7d`, `500ms`.
pub fn parse_duration(s: &str) -> Result<u64, DurationError> {
    const UNITS: [(&str, u64); 5] = [
        ("d", DAY_MS),
        ("h", HOUR_MS),
        ("ms", 1),
        ("m", MINUTE_MS),
        ("s", SECOND_MS),
    ];
    let bad = || DurationError(s.chars().take(32).collect());
    let rank = |unit: &str| match unit {
        "d" => 0,
        "h" => 1,
        "m" => 2,
        "s" => 3,
        _ => 4,
    };
    if s.is_empty() || s.len() > 32 {
        return Err(bad());
    }
    let mut rest = s;
    let mut total: u64 = 0;
    let mut last_rank = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (number, tail) = rest.split_at_checked(digits).ok_or_else(bad)?;
        if number.is_empty() {
            return Err(bad());
        }
        let number: u64 = number.parse().map_err(|_| bad())?;
        let (unit, size) = UNITS
            .iter()
            .find(|(unit, _)| tail.starts_with(unit))
            .ok_or_else(bad)?;
        let r = rank(unit);
        if last_rank.is_some_and(|last| r <= last) {
            return Err(bad());
        }
        last_rank = Some(r);
        total = number
            .checked_mul(*size)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
        rest = tail.get(unit.len()..).ok_or_else(bad)?;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it: `1h30m`, `7d`, `0s`.
pub fn format_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", DAY_MS),
        ("h", HOUR_MS),
        ("m", MINUTE_MS),
        ("s", SECOND_MS),
        ("ms", 1),
    ] {
        let n = rest / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            rest %= size;
        }
    }
    out
}

/// Whether `name` is a valid grant name: 1 to 64 bytes of `[A-Za-z0-9._:-]`.
pub fn is_valid_grant_name(name: &str) -> bool {
    (1..=MAX_GRANT_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

// === helpers ===

fn definition<'p>(policies: &'p PolicySet, name: &str) -> Result<&'p GrantDefinition, GrantError> {
    if !is_valid_grant_name(name) {
        return Err(GrantError::InvalidName(name.chars().take(80).collect()));
    }
    policies
        .grant_definition(name)
        .ok_or_else(|| GrantError::UnknownGrant(name.to_owned()))
}

/// `now_ms + duration_ms`, which must be after now (it is not only at the end of time).
fn end_after(now_ms: u64, duration_ms: u64) -> Result<u64, GrantError> {
    let not_after_ms = now_ms.saturating_add(duration_ms);
    if not_after_ms <= now_ms {
        return Err(GrantError::AlreadyEnded {
            not_after_ms,
            now_ms,
        });
    }
    Ok(not_after_ms)
}

fn check_duration(definition: &GrantDefinition, duration_ms: u64) -> Result<(), GrantError> {
    if duration_ms == 0 {
        return Err(GrantError::ZeroDuration);
    }
    if duration_ms > definition.max_duration_ms {
        return Err(GrantError::TooLong {
            name: definition.name.clone(),
            requested_ms: duration_ms,
            max_ms: definition.max_duration_ms,
        });
    }
    Ok(())
}

/// At most [`MAX_CREDENTIALS`] serials of 1 to [`MAX_SERIAL_LEN`] bytes.
fn check_credentials(credentials: &[Vec<u8>]) -> Result<(), GrantError> {
    if credentials.len() > MAX_CREDENTIALS
        || credentials
            .iter()
            .any(|s| s.is_empty() || s.len() > MAX_SERIAL_LEN)
    {
        return Err(GrantError::BadCredentials);
    }
    Ok(())
}

fn check_reason(reason: &str) -> Result<(), GrantError> {
    if reason.chars().any(entente_types::text::is_deceptive) {
        return Err(GrantError::ReasonControl);
    }
    check_stored_reason(reason)
}

/// What a stored reason must be: the rules of [`check_reason`] as they were when reasons
/// with invisible formatting characters were taken, so that a book stored then still loads
/// (the CLI escapes them when it shows one).
fn check_stored_reason(reason: &str) -> Result<(), GrantError> {
    if reason.len() > MAX_REASON_LEN {
        return Err(GrantError::ReasonTooLong {
            len: reason.len(),
            max: MAX_REASON_LEN,
        });
    }
    if reason.chars().any(char::is_control) {
        return Err(GrantError::ReasonControl);
    }
    if reason.trim().is_empty() {
        return Err(GrantError::EmptyReason);
    }
    Ok(())
}

// === encoding ===

/// The book as JSON: `{"version": 1, "revision", "next_grant", "next_request", "grants": [..],
/// "requests": [..]}`, documented in docs/POLICY.md. Only this module knows the shape.
mod codec {
    use std::collections::{BTreeMap, BTreeSet};

    use entente_crypto::Verdict;
    use entente_types::Principal;
    use serde::{Deserialize, Serialize};

    use super::{
        BOOK_VERSION, BookDecodeError, Grant, GrantBook, GrantError, GrantId, GrantLimits,
        GrantRequest, GrantedBy, HARD_MAX_GRANTS, HARD_MAX_REQUESTS, MAX_APPROVALS, MAX_BOOK_LEN,
        MAX_CREDENTIALS, MAX_GRANT_DURATION_MS, RequestId, RequestState, check_credentials,
        check_stored_reason, is_valid_grant_name,
    };
    use crate::approvals::ApprovalRecord;

    #[derive(Deserialize)]
    struct Header {
        version: u64,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct BookV1 {
        version: u64,
        revision: u64,
        next_grant: u64,
        next_request: u64,
        grants: Vec<GrantV1>,
        requests: Vec<RequestV1>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct GrantV1 {
        id: u64,
        name: String,
        principal: String,
        not_before_ms: u64,
        not_after_ms: u64,
        reason: String,
        granted_by: GrantedByV1,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    enum GrantedByV1 {
        Granter {
            granter: String,
        },
        Request {
            request: u64,
            approvers: Vec<String>,
        },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RequestV1 {
        id: u64,
        requester: String,
        name: String,
        duration_ms: u64,
        reason: String,
        created_at_ms: u64,
        expires_at_ms: u64,
        required: u32,
        approvals: Vec<ApprovalV1>,
        state: StateV1,
        /// Absent in books stored before credentials were kept, and when none are known.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        credentials: Vec<String>,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
    enum StateV1 {
        Pending,
        Granted { grant: u64, at_ms: u64 },
        Rejected { by: String, at_ms: u64 },
        Expired,
    }

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ApprovalV1 {
        approver: String,
        verdict: String,
        key_epoch: u64,
        signed_at_ms: u64,
        received_at_ms: u64,
        signature: String,
        digest: String,
        /// As [`RequestV1::credentials`].
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        credentials: Vec<String>,
    }

    pub(super) fn encode(book: &GrantBook) -> Vec<u8> {
        let v1 = BookV1 {
            version: u64::from(BOOK_VERSION),
            revision: book.revision,
            next_grant: book.next_grant,
            next_request: book.next_request,
            grants: book.grants.values().map(grant_v1).collect(),
            requests: book.requests.values().map(request_v1).collect(),
        };
        // Serializing plain structs of strings and integers into memory cannot fail.
        serde_json::to_vec(&v1).unwrap_or_default()
    }

    pub(super) fn decode(bytes: &[u8], limits: GrantLimits) -> Result<GrantBook, BookDecodeError> {
        if bytes.len() > MAX_BOOK_LEN {
            return Err(BookDecodeError::TooLong {
                len: bytes.len(),
                max: MAX_BOOK_LEN,
            });
        }
        let malformed = |e: serde_json::Error| BookDecodeError::Malformed(e.to_string());
        let header: Header = serde_json::from_slice(bytes).map_err(malformed)?;
        if header.version != u64::from(BOOK_VERSION) {
            return Err(BookDecodeError::Version {
                found: header.version,
                supported: BOOK_VERSION,
            });
        }
        let v1: BookV1 = serde_json::from_slice(bytes).map_err(malformed)?;
        if v1.grants.len() > HARD_MAX_GRANTS {
            return Err(invalid(format!(
                "{} grants, over the limit of {HARD_MAX_GRANTS}",
                v1.grants.len()
            )));
        }
        if v1.requests.len() > HARD_MAX_REQUESTS {
            return Err(invalid(format!(
                "{} requests, over the limit of {HARD_MAX_REQUESTS}",
                v1.requests.len()
            )));
        }
        if v1.next_grant == 0 || v1.next_request == 0 {
            return Err(invalid("record counters start at 1".to_owned()));
        }
        let mut grants = BTreeMap::new();
        for g in v1.grants {
            let grant = grant_from(g, v1.next_grant, v1.next_request)?;
            let id = grant.id;
            if grants.insert(id, grant).is_some() {
                return Err(invalid(format!("grant {id} appears twice")));
            }
        }
        let mut requests = BTreeMap::new();
        for r in v1.requests {
            let request = request_from(r, v1.next_grant, v1.next_request)?;
            let id = request.id;
            if requests.insert(id, request).is_some() {
                return Err(invalid(format!("request {id} appears twice")));
            }
        }
        Ok(GrantBook {
            grants,
            requests,
            next_grant: v1.next_grant,
            next_request: v1.next_request,
            revision: v1.revision,
            limits,
        })
    }

    // --- to v1 ---

    fn grant_v1(g: &Grant) -> GrantV1 {
        GrantV1 {
            id: g.id.0,
            name: g.name.clone(),
            principal: g.principal.as_str().to_owned(),
            not_before_ms: g.not_before_ms,
            not_after_ms: g.not_after_ms,
            reason: g.reason.clone(),
            granted_by: match &g.granted_by {
                GrantedBy::Granter(p) => GrantedByV1::Granter {
                    granter: p.as_str().to_owned(),
                },
                GrantedBy::Request { request, approvers } => GrantedByV1::Request {
                    request: request.0,
                    approvers: approvers.iter().map(|p| p.as_str().to_owned()).collect(),
                },
            },
        }
    }

    fn request_v1(r: &GrantRequest) -> RequestV1 {
        RequestV1 {
            id: r.id.0,
            requester: r.requester.as_str().to_owned(),
            name: r.name.clone(),
            duration_ms: r.duration_ms,
            reason: r.reason.clone(),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            required: r.required,
            approvals: r
                .approvals
                .iter()
                .map(|a| ApprovalV1 {
                    approver: a.approver.as_str().to_owned(),
                    verdict: a.verdict.as_str().to_owned(),
                    key_epoch: a.key_epoch,
                    signed_at_ms: a.signed_at_ms,
                    received_at_ms: a.received_at_ms,
                    signature: hex(&a.signature),
                    digest: hex(&a.digest),
                    credentials: a.credentials.iter().map(|s| hex(s)).collect(),
                })
                .collect(),
            state: match &r.state {
                RequestState::Pending => StateV1::Pending,
                RequestState::Granted { grant, at_ms } => StateV1::Granted {
                    grant: grant.0,
                    at_ms: *at_ms,
                },
                RequestState::Rejected { by, at_ms } => StateV1::Rejected {
                    by: by.as_str().to_owned(),
                    at_ms: *at_ms,
                },
                RequestState::Expired => StateV1::Expired,
            },
            credentials: r.credentials.iter().map(|s| hex(s)).collect(),
        }
    }

    // --- from v1, checking every rule the book keeps ---

    fn grant_from(
        g: GrantV1,
        next_grant: u64,
        next_request: u64,
    ) -> Result<Grant, BookDecodeError> {
        let what = format!("grant g-{}", g.id);
        let fail = |reason: &str| invalid(format!("{what}: {reason}"));
        if g.id == 0 || g.id >= next_grant {
            return Err(fail("ID out of range"));
        }
        if !is_valid_grant_name(&g.name) {
            return Err(fail("invalid name"));
        }
        let principal = principal(&what, &g.principal)?;
        if g.not_before_ms >= g.not_after_ms
            || g.not_after_ms - g.not_before_ms > MAX_GRANT_DURATION_MS
        {
            return Err(fail("validity period is empty or too long"));
        }
        check_stored_reason(&g.reason).map_err(|e| fail(&e.to_string()))?;
        let granted_by = match g.granted_by {
            GrantedByV1::Granter { granter } => {
                let granter = self::principal(&what, &granter)?;
                if granter == principal {
                    return Err(fail("granted to itself"));
                }
                GrantedBy::Granter(granter)
            }
            GrantedByV1::Request { request, approvers } => {
                if request == 0 || request >= next_request {
                    return Err(fail("request ID out of range"));
                }
                if approvers.is_empty() || approvers.len() > MAX_APPROVALS as usize {
                    return Err(fail("wrong number of approvers"));
                }
                let approvers = approvers
                    .iter()
                    .map(|a| self::principal(&what, a))
                    .collect::<Result<Vec<_>, _>>()?;
                let distinct: BTreeSet<&Principal> = approvers.iter().collect();
                if distinct.len() != approvers.len() || distinct.contains(&principal) {
                    return Err(fail("approvers repeat or include the holder"));
                }
                GrantedBy::Request {
                    request: RequestId(request),
                    approvers,
                }
            }
        };
        Ok(Grant {
            id: GrantId(g.id),
            name: g.name,
            principal,
            not_before_ms: g.not_before_ms,
            not_after_ms: g.not_after_ms,
            reason: g.reason,
            granted_by,
        })
    }

    fn request_from(
        r: RequestV1,
        next_grant: u64,
        next_request: u64,
    ) -> Result<GrantRequest, BookDecodeError> {
        let what = format!("request r-{}", r.id);
        let fail = |reason: &str| invalid(format!("{what}: {reason}"));
        if r.id == 0 || r.id >= next_request {
            return Err(fail("ID out of range"));
        }
        let requester = principal(&what, &r.requester)?;
        if !is_valid_grant_name(&r.name) {
            return Err(fail("invalid name"));
        }
        if r.duration_ms == 0 || r.duration_ms > MAX_GRANT_DURATION_MS {
            return Err(fail("duration out of range"));
        }
        check_stored_reason(&r.reason).map_err(|e| fail(&e.to_string()))?;
        if r.created_at_ms > r.expires_at_ms {
            return Err(fail("expires before it was made"));
        }
        if r.required == 0 || r.required > MAX_APPROVALS {
            return Err(fail("required approvals out of range"));
        }
        if r.approvals.len() > MAX_APPROVALS as usize + 1 {
            return Err(fail("too many approvals"));
        }
        let mut approvals = Vec::with_capacity(r.approvals.len());
        for a in &r.approvals {
            approvals.push(approval_from(&what, a)?);
        }
        let credentials = credentials_from(&what, &r.credentials)?;
        let approvers: Vec<&Principal> = approvals
            .iter()
            .filter(|a| a.verdict == Verdict::Approve)
            .map(|a| &a.approver)
            .collect();
        let distinct: BTreeSet<&Principal> = approvers.iter().copied().collect();
        if distinct.len() != approvers.len() || distinct.contains(&requester) {
            return Err(fail("approvers repeat or include the requester"));
        }
        let digests: BTreeSet<&[u8; 32]> = approvals.iter().map(|a| &a.digest).collect();
        if digests.len() != approvals.len() {
            return Err(fail("a statement is recorded twice"));
        }
        let rejections = approvals
            .iter()
            .filter(|a| a.verdict == Verdict::Reject)
            .count();
        let state = match r.state {
            StateV1::Pending if rejections == 0 => RequestState::Pending,
            StateV1::Expired if rejections == 0 => RequestState::Expired,
            StateV1::Granted { grant, at_ms } if rejections == 0 && !approvers.is_empty() => {
                if grant == 0 || grant >= next_grant {
                    return Err(fail("grant ID out of range"));
                }
                RequestState::Granted {
                    grant: GrantId(grant),
                    at_ms,
                }
            }
            StateV1::Rejected { by, at_ms } if rejections == 1 => {
                let by = principal(&what, &by)?;
                let last = approvals.last().map(|a| (&a.approver, a.verdict));
                if last != Some((&by, Verdict::Reject)) {
                    return Err(fail("the rejection is not the last record"));
                }
                RequestState::Rejected { by, at_ms }
            }
            _ => return Err(fail("state does not match its approvals")),
        };
        Ok(GrantRequest {
            id: RequestId(r.id),
            requester,
            name: r.name,
            duration_ms: r.duration_ms,
            reason: r.reason,
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            required: r.required,
            approvals,
            state,
            credentials,
        })
    }

    fn approval_from(what: &str, a: &ApprovalV1) -> Result<ApprovalRecord, BookDecodeError> {
        let verdict = match a.verdict.as_str() {
            "approve" => Verdict::Approve,
            "reject" => Verdict::Reject,
            _ => return Err(invalid(format!("{what}: unknown verdict"))),
        };
        let bytes = |s: &str| unhex(s).ok_or_else(|| invalid(format!("{what}: bad hex")));
        let signature = bytes(&a.signature)?
            .try_into()
            .map_err(|_| invalid(format!("{what}: signature is not 64 bytes")))?;
        let digest = bytes(&a.digest)?
            .try_into()
            .map_err(|_| invalid(format!("{what}: digest is not 32 bytes")))?;
        Ok(ApprovalRecord {
            approver: principal(what, &a.approver)?,
            verdict,
            key_epoch: a.key_epoch,
            signed_at_ms: a.signed_at_ms,
            received_at_ms: a.received_at_ms,
            signature,
            digest,
            credentials: credentials_from(what, &a.credentials)?,
        })
    }

    fn credentials_from(what: &str, hexes: &[String]) -> Result<Vec<Vec<u8>>, BookDecodeError> {
        let bad = || invalid(format!("{what}: {}", GrantError::BadCredentials));
        if hexes.len() > MAX_CREDENTIALS {
            return Err(bad());
        }
        let credentials = hexes
            .iter()
            .map(|s| unhex(s).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        check_credentials(&credentials).map_err(|_| bad())?;
        Ok(credentials)
    }

    fn principal(what: &str, s: &str) -> Result<Principal, BookDecodeError> {
        Principal::parse(s).map_err(|e| invalid(format!("{what}: {e}")))
    }

    fn invalid(reason: String) -> BookDecodeError {
        BookDecodeError::Invalid(reason)
    }

    fn hex(bytes: &[u8]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            for nibble in [b >> 4, b & 0x0f] {
                out.push(char::from(
                    DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
                ));
            }
        }
        out
    }

    /// Lowercase hex only, as written.
    fn unhex(s: &str) -> Option<Vec<u8>> {
        if !s.len().is_multiple_of(2) {
            return None;
        }
        let value = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        s.as_bytes()
            .chunks_exact(2)
            .map(|pair| match pair {
                [hi, lo] => Some(value(*hi)? << 4 | value(*lo)?),
                _ => None,
            })
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #![allow(clippy::unwrap_used)]

        use super::{hex, unhex};

        #[test]
        fn hex_round_trip() {
            assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
            assert_eq!(unhex("00ab7f").unwrap(), [0x00, 0xab, 0x7f]);
            assert_eq!(unhex(""), Some(Vec::new()));
            for bad in ["0", "0g", "AB", "0 "] {
                assert_eq!(unhex(bad), None, "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations_parse_and_format() {
        for (text, ms) in [
            ("1ms", 1),
            ("30s", 30_000),
            ("15m", 15 * MINUTE_MS),
            ("1h", HOUR_MS),
            ("1h30m", 90 * MINUTE_MS),
            ("7d", 7 * DAY_MS),
            (
                "1d2h3m4s5ms",
                DAY_MS + 2 * HOUR_MS + 3 * MINUTE_MS + 4_000 + 5,
            ),
            ("90m", 90 * MINUTE_MS),
            ("0s", 0),
        ] {
            assert_eq!(parse_duration(text).unwrap(), ms, "{text}");
        }
        for bad in [
            "",
            "1",
            "h",
            "1x",
            "1h1h",
            "30m1h",
            "-1h",
            "+1h",
            "1 h",
            "1H",
            "1.5h",
            "1hh",
            "99999999999999999999d",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for ms in [
            0,
            1,
            999,
            1_000,
            90 * MINUTE_MS,
            7 * DAY_MS,
            DAY_MS + 1,
            u64::MAX,
        ] {
            assert_eq!(parse_duration(&format_duration(ms)).unwrap(), ms, "{ms}");
        }
        assert_eq!(format_duration(90 * MINUTE_MS), "1h30m");
    }

    #[test]
    fn ids_parse_and_display() {
        assert_eq!("g-12".parse::<GrantId>().unwrap(), GrantId(12));
        assert_eq!("r-1".parse::<RequestId>().unwrap().to_string(), "r-1");
        for bad in [
            "g-",
            "r-1",
            "g-01",
            "g-x",
            "g--1",
            "g-1 ",
            "g-99999999999999999999999",
        ] {
            assert!(bad.parse::<GrantId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn reasons() {
        assert_eq!(check_reason(""), Err(GrantError::EmptyReason));
        assert_eq!(check_reason("  "), Err(GrantError::EmptyReason));
        assert_eq!(check_reason("a\nb"), Err(GrantError::ReasonControl));
        assert!(matches!(
            check_reason(&"x".repeat(MAX_REASON_LEN + 1)),
            Err(GrantError::ReasonTooLong { .. })
        ));
        check_reason(&"x".repeat(MAX_REASON_LEN)).unwrap();
        check_reason("incident INC-42: read the logs").unwrap();
        // New reasons refuse invisible formatting; stored ones (taken before) still load.
        assert_eq!(
            check_reason("INC \u{202e}42"),
            Err(GrantError::ReasonControl)
        );
        check_stored_reason("INC \u{202e}42").unwrap();
        assert_eq!(check_stored_reason("a\nb"), Err(GrantError::ReasonControl));
    }
}
