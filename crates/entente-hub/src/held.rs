//! Messages held for approval on high-stakes channels (PROTOCOL.md §12, docs/POLICY.md
//! "Holding messages for approval").
//!
//! A publish that the running policies deny only by `@hold` forbids, and would allow with
//! them lifted, is not routed: the hub keeps its one signed envelope here, still sealed, and
//! answers the publisher with an `Ack` that lists it as held. Approvers see the sender, the
//! channel, the size, the times, the sender's stated purpose and the signed batch (to hash the
//! envelope themselves), never the payload. Each signed approval (PROTOCOL.md §11, kind
//! `envelope`) is checked against the envelope's hash; after each, the publish is decided
//! again with the approvals in the context: allowed, the message is routed to the channel's
//! subscribers of that moment; still held by `@hold` forbids, it waits; denied otherwise (the
//! policies changed), it is rejected. A rejection by any permitted approver, or by the sender
//! (a withdrawal), ends it; so does its expiry.
//!
//! Bounded: at most [`MAX_PENDING`] messages wait at once, [`MAX_PENDING_PER_SENDER`] per
//! sender, each at most [`MAX_HOLD`]; decided ones are kept [`KEEP_DECIDED`] so that the
//! sender can see what became of them, at most [`MAX_KEPT`]. Holds live in the hub's memory:
//! a restart ends them, and their senders must publish again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use entente_crypto::{ApprovalIn, Verdict, VerifiedApproval};
use entente_policy::{Action, Resource, Subject};
use entente_types::{Channel, Principal};
use entente_wire::{
    ApprovalInfo, ApproveRequest, ApproveResponse, HeldMessage, ListHeldRequest, ListHeldResponse,
    SignedBatch,
};
use tonic::Status;

use crate::authz::Denied;
use crate::grants::{self, ApproveError};
use crate::renew::Caller;
use crate::router::Router;
use crate::rpc::{self, RpcError, Services};
use crate::stats;

/// The gRPC path of listing held messages, served over mutual TLS.
pub const LIST_HELD_PATH: &str = "/entente.v1.Holds/ListHeld";

/// At most this many messages wait for approval in one hub.
pub const MAX_PENDING: usize = 1024;

/// At most this many messages of one sender wait for approval.
pub const MAX_PENDING_PER_SENDER: usize = 64;

/// The longest a message waits for approval (less if its envelope expires sooner).
pub const MAX_HOLD: Duration = Duration::from_secs(60 * 60);

/// How long a decided or expired hold stays visible.
pub const KEEP_DECIDED: Duration = Duration::from_secs(60 * 60);

/// At most this many decided holds are kept.
pub const MAX_KEPT: usize = 1024;

/// A statement may be signed at most this long before the message was received (clock skew).
const SKEW_MS: u64 = 60_000;

/// Why a hold or an approval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HoldError {
    /// Too many messages wait.
    #[error("{0}")]
    Full(String),
    /// No such held message (never held, or forgotten).
    #[error("no held message `{0}`")]
    Unknown(String),
    /// The message was decided or expired.
    #[error("held message `{id}` is {state}")]
    Decided {
        /// Its ID.
        id: String,
        /// What it is now.
        state: &'static str,
    },
    /// The statement names another envelope, or the same one changed.
    #[error(
        "the statement's hash is not that of held message `{0}`: hash the envelope you were shown"
    )]
    WrongHash(String),
    /// The sender approving its own message.
    #[error("`{0}` sent this message and cannot approve it (separation of duties)")]
    OwnMessage(String),
    /// The same statement, or a second approval by the same approver.
    #[error("{0}")]
    Replayed(String),
    /// The statement is dated before the message was received.
    #[error("the statement is signed before the message was received")]
    TooOld,
}

/// What an approval did.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Still held: more approvals are needed.
    Pending {
        /// Distinct approvals so far.
        approvals: u32,
    },
    /// Allowed: route `body` on `channel` now.
    Released {
        /// Distinct approvals.
        approvals: u32,
        /// The channel.
        channel: Channel,
        /// The `Deliver` body to route.
        body: Bytes,
    },
    /// Rejected (by an approver, by the sender, or because the policies now deny it).
    Rejected,
}

/// What the policies say about a held message with the approvals so far.
#[derive(Debug)]
pub(crate) enum Verdicts {
    /// Allowed: release it.
    Allowed,
    /// Denied by `@hold` forbids alone: keep waiting.
    StillHeld,
    /// Denied otherwise: reject it, for this reason.
    Denied(String),
}

/// A message to hold.
#[derive(Debug)]
pub(crate) struct NewHold {
    /// The envelope's message ID, UUID text.
    pub(crate) id: String,
    pub(crate) sender: Principal,
    pub(crate) channel: Channel,
    /// The encoded `Deliver` body (sender keys and the batch) to route once released.
    pub(crate) body: Bytes,
    pub(crate) batch: SignedBatch,
    /// The envelope's hash (PROTOCOL.md §4.4).
    pub(crate) hash: [u8; 32],
    pub(crate) purpose: String,
    /// Ciphertext bytes.
    pub(crate) size: u32,
    /// The envelope's own expiry.
    pub(crate) envelope_expires_at_ms: u64,
}

/// The held messages of one hub.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    book: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    holds: HashMap<String, Hold>,
    /// IDs in the order received, for listing and forgetting.
    order: VecDeque<String>,
}

#[derive(Debug)]
struct Hold {
    new: NewHold,
    published_at_ms: u64,
    expires_at_ms: u64,
    state: State,
    reason: String,
    decided_at_ms: u64,
    approvals: Vec<ApprovalInfo>,
    approvers: Vec<Principal>,
    /// Digests of the statements applied, so that none is applied twice.
    seen: HashSet<[u8; 32]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Released,
    Rejected,
    Expired,
}

// === RPCs ===

/// Serves one `Approve` whose statement is about an envelope: the sender may reject
/// (withdraw) its own message; anyone else needs `approve` on the channel, and never
/// approves its own message.
pub(crate) async fn approve<R: Router>(
    services: &Services<R>,
    caller: &Caller,
    request: ApproveRequest,
    now: SystemTime,
) -> Result<ApproveResponse, ApproveError> {
    grants::open(caller)?;
    let now_ms = rpc::unix_ms(now);
    let wire = request
        .statement
        .ok_or_else(|| RpcError::BadRequest("`statement` is missing".into()))?;
    let statement = grants::statement_of(wire)?;
    if statement.approver != caller.principal {
        return Err(RpcError::Denied(format!(
            "the statement is signed as `{}`, not as the caller `{}`: approve as yourself",
            statement.approver, caller.principal
        ))
        .into());
    }
    let id = statement.object_id.clone();
    let holds = services.authz.holds();
    let (sender, channel) = holds
        .parties(&id)
        .ok_or_else(|| HoldError::Unknown(id.clone()))?;
    let verdict = statement.verdict;
    if caller.principal == sender {
        if verdict == Verdict::Approve {
            return Err(HoldError::OwnMessage(sender.to_string()).into());
        }
    } else {
        permitted_approver(services, &caller.principal, &channel, now_ms).map_err(
            |Denied(why)| {
                stats::bump(&services.stats.denials);
                RpcError::Denied(format!(
                    "deciding held message `{id}` on `{channel}` is denied: {why}"
                ))
            },
        )?;
    }
    let approval =
        ApprovalIn::new(statement, &request.signature).map_err(grants::approval_error)?;
    let bundle =
        grants::approver_bundle(services, &caller.principal, request.key_bundle, now_ms).await?;
    let approval = approval
        .verify(&bundle, now_ms)
        .map_err(grants::approval_error)?;
    let authz = &services.authz;
    let outcome = holds.decide(&id, &approval, now_ms, |sender, channel, approvers| {
        authz.decide_held(sender, channel, approvers, now_ms)
    })?;
    let response = |outcome: &str, approvals| ApproveResponse {
        outcome: outcome.to_owned(),
        approvals,
        required: 0,
        grant: None,
    };
    Ok(match outcome {
        Outcome::Pending { approvals } => response("pending", approvals),
        Outcome::Released {
            approvals,
            channel,
            body,
        } => {
            let routed = services.router.route(&channel, body).await;
            stats::add(&services.stats.delivery_failures, routed.failed as u64);
            stats::add(&services.stats.withheld_deliveries, routed.withheld as u64);
            response("released", approvals)
        }
        Outcome::Rejected => response("rejected", 0),
    })
}

/// Serves one `ListHeld`: the caller's own held messages, and those on channels it may
/// approve for.
pub(crate) fn list<R>(
    services: &Services<R>,
    caller: &Caller,
    _request: ListHeldRequest,
    now: SystemTime,
) -> Result<ListHeldResponse, RpcError> {
    grants::open(caller)?;
    let now_ms = rpc::unix_ms(now);
    let mut approver_of: HashMap<Channel, bool> = HashMap::new();
    let held = services.authz.holds().list(now_ms, |sender, channel| {
        *sender == caller.principal
            || *approver_of.entry(channel.clone()).or_insert_with(|| {
                permitted_approver(services, &caller.principal, channel, now_ms).is_ok()
            })
    });
    stats::bump(&services.stats.grant_actions);
    Ok(ListHeldResponse { held })
}

/// Whether `approver` may decide messages held on `channel`: `approve` on the channel.
fn permitted_approver<R>(
    services: &Services<R>,
    approver: &Principal,
    channel: &Channel,
    now_ms: u64,
) -> Result<(), Denied> {
    let subject = Subject::new(approver.clone(), Vec::<String>::new());
    services.authz.decide(
        &subject,
        Action::Approve,
        &Resource::Channel(channel),
        now_ms,
    )
}

// === impl Holds ===

impl Holds {
    /// Holds `new`, received at `now_ms`; returns when the hold lapses.
    pub(crate) fn hold(&self, new: NewHold, now_ms: u64) -> Result<u64, HoldError> {
        let mut book = self.lock();
        book.expire(now_ms);
        let pending = book.pending().count();
        if pending >= MAX_PENDING {
            return Err(HoldError::Full(format!(
                "{MAX_PENDING} messages already wait for approval in this hub"
            )));
        }
        let mine = book
            .pending()
            .filter(|h| h.new.sender == new.sender)
            .count();
        if mine >= MAX_PENDING_PER_SENDER {
            return Err(HoldError::Full(format!(
                "{MAX_PENDING_PER_SENDER} messages of `{}` already wait for approval",
                new.sender
            )));
        }
        if book.holds.contains_key(&new.id) {
            return Err(HoldError::Replayed(format!(
                "a message `{}` is already held",
                new.id
            )));
        }
        let hold_ms = u64::try_from(MAX_HOLD.as_millis()).unwrap_or(u64::MAX);
        let expires_at_ms = new
            .envelope_expires_at_ms
            .min(now_ms.saturating_add(hold_ms));
        let id = new.id.clone();
        book.order.push_back(id.clone());
        book.holds.insert(
            id,
            Hold {
                new,
                published_at_ms: now_ms,
                expires_at_ms,
                state: State::Pending,
                reason: String::new(),
                decided_at_ms: 0,
                approvals: Vec::new(),
                approvers: Vec::new(),
                seen: HashSet::new(),
            },
        );
        Ok(expires_at_ms)
    }

    /// The sender and channel of held message `id`, if it is held (pending or not).
    pub(crate) fn parties(&self, id: &str) -> Option<(Principal, Channel)> {
        let book = self.lock();
        book.holds
            .get(id)
            .map(|h| (h.new.sender.clone(), h.new.channel.clone()))
    }

    /// Applies a verified statement about held message `id` by `approval.approver()`:
    /// separation of duties, replays and the hash first; then, for an approval, `decide`
    /// (the sender, the channel, the approvers so far) says whether it is released.
    pub(crate) fn decide(
        &self,
        id: &str,
        approval: &VerifiedApproval,
        now_ms: u64,
        decide: impl FnOnce(&Principal, &Channel, &[Principal]) -> Verdicts,
    ) -> Result<Outcome, HoldError> {
        let mut book = self.lock();
        book.expire(now_ms);
        let hold = book
            .holds
            .get_mut(id)
            .ok_or_else(|| HoldError::Unknown(id.to_owned()))?;
        if hold.state != State::Pending {
            return Err(HoldError::Decided {
                id: id.to_owned(),
                state: hold.state.name(),
            });
        }
        let statement = approval.statement();
        if statement.object_hash != hold.new.hash {
            return Err(HoldError::WrongHash(id.to_owned()));
        }
        if statement.signed_at_ms.saturating_add(SKEW_MS) < hold.published_at_ms {
            return Err(HoldError::TooOld);
        }
        if hold.seen.contains(approval.digest()) {
            return Err(HoldError::Replayed(
                "this statement was applied before".to_owned(),
            ));
        }
        let approver = approval.approver();
        let info = ApprovalInfo {
            approver: approver.to_string(),
            verdict: approval.verdict().as_str().to_owned(),
            signed_at_ms: statement.signed_at_ms,
        };
        match approval.verdict() {
            Verdict::Reject => {
                hold.seen.insert(*approval.digest());
                hold.approvals.push(info);
                hold.end(State::Rejected, format!("rejected by `{approver}`"), now_ms);
                Ok(Outcome::Rejected)
            }
            Verdict::Approve => {
                if *approver == hold.new.sender {
                    return Err(HoldError::OwnMessage(approver.to_string()));
                }
                if hold.approvers.contains(approver) {
                    return Err(HoldError::Replayed(format!(
                        "`{approver}` approved this message before; an approver counts once"
                    )));
                }
                hold.seen.insert(*approval.digest());
                hold.approvals.push(info);
                hold.approvers.push(approver.clone());
                let approvals = u32::try_from(hold.approvers.len()).unwrap_or(u32::MAX);
                match decide(&hold.new.sender, &hold.new.channel, &hold.approvers) {
                    Verdicts::Allowed => {
                        hold.end(State::Released, String::new(), now_ms);
                        Ok(Outcome::Released {
                            approvals,
                            channel: hold.new.channel.clone(),
                            body: hold.new.body.clone(),
                        })
                    }
                    Verdicts::StillHeld => Ok(Outcome::Pending { approvals }),
                    Verdicts::Denied(why) => {
                        hold.end(
                            State::Rejected,
                            format!("the policies no longer allow it: {why}"),
                            now_ms,
                        );
                        Ok(Outcome::Rejected)
                    }
                }
            }
        }
    }

    /// The held messages (pending and recently decided) for which `visible` says yes, in the
    /// order received.
    pub(crate) fn list(
        &self,
        now_ms: u64,
        mut visible: impl FnMut(&Principal, &Channel) -> bool,
    ) -> Vec<HeldMessage> {
        let mut book = self.lock();
        book.expire(now_ms);
        book.order
            .iter()
            .filter_map(|id| book.holds.get(id))
            .filter(|h| visible(&h.new.sender, &h.new.channel))
            .map(Hold::info)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Book ===

impl Book {
    fn pending(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values().filter(|h| h.state == State::Pending)
    }

    /// Expires pending holds past their time, and forgets decided ones kept long enough (or
    /// beyond [`MAX_KEPT`], oldest first).
    fn expire(&mut self, now_ms: u64) {
        for hold in self.holds.values_mut() {
            if hold.state == State::Pending && now_ms >= hold.expires_at_ms {
                hold.end(
                    State::Expired,
                    "no decision before it expired".to_owned(),
                    hold.expires_at_ms,
                );
            }
        }
        let keep_ms = u64::try_from(KEEP_DECIDED.as_millis()).unwrap_or(u64::MAX);
        let mut decided = self
            .holds
            .values()
            .filter(|h| h.state != State::Pending)
            .count();
        let holds = &mut self.holds;
        self.order.retain(|id| {
            let Some(hold) = holds.get(id) else {
                return false;
            };
            let stale = hold.state != State::Pending
                && (now_ms >= hold.decided_at_ms.saturating_add(keep_ms) || decided > MAX_KEPT);
            if stale {
                decided -= 1;
                holds.remove(id);
            }
            !stale
        });
    }
}

// === impl Hold ===

impl Hold {
    fn end(&mut self, state: State, reason: String, at_ms: u64) {
        self.state = state;
        self.reason = reason;
        self.decided_at_ms = at_ms;
    }

    fn info(&self) -> HeldMessage {
        HeldMessage {
            message_id: self.new.id.clone(),
            sender: self.new.sender.to_string(),
            channel: self.new.channel.to_string(),
            size: self.new.size,
            published_at_ms: self.published_at_ms,
            expires_at_ms: self.expires_at_ms,
            purpose: self.new.purpose.clone(),
            batch: Some(self.new.batch.clone()),
            state: self.state.name().to_owned(),
            approvals: self.approvals.clone(),
            reason: self.reason.clone(),
        }
    }
}

// === impl State ===

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Released => "released",
            State::Rejected => "rejected",
            State::Expired => "expired",
        }
    }
}

// === impl HoldError ===

impl HoldError {
    /// The gRPC status of the refusal.
    pub(crate) fn status(&self) -> Status {
        let message = self.to_string();
        match self {
            HoldError::Full(_) => Status::resource_exhausted(message),
            HoldError::Unknown(_) => Status::not_found(message),
            HoldError::Decided { .. } => Status::failed_precondition(message),
            HoldError::WrongHash(_) | HoldError::TooOld => Status::invalid_argument(message),
            HoldError::OwnMessage(_) => Status::permission_denied(message),
            HoldError::Replayed(_) => Status::already_exists(message),
        }
    }
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

    const NOW: u64 = 1_760_000_000_000;

    fn new(sender: &str, n: usize, expires_at_ms: u64) -> NewHold {
        NewHold {
            id: format!("{sender}-{n}"),
            sender: Principal::parse(&format!("spiffe://example.org/agent/shop/{sender}")).unwrap(),
            channel: Channel::parse("pay.wire").unwrap(),
            body: Bytes::new(),
            batch: SignedBatch::default(),
            hash: [0; 32],
            purpose: "why".into(),
            size: 1,
            envelope_expires_at_ms: expires_at_ms,
        }
    }

    #[test]
    fn holds_are_bounded_per_sender_and_expire() {
        let holds = Holds::default();
        let far = NOW + 10 * 3_600_000;
        for n in 0..MAX_PENDING_PER_SENDER {
            // At most an hour, whatever the envelope says.
            assert_eq!(
                holds.hold(new("alice", n, far), NOW).unwrap(),
                NOW + 3_600_000
            );
        }
        let full = holds.hold(new("alice", 999, far), NOW).unwrap_err();
        assert!(matches!(full, HoldError::Full(_)), "{full}");
        assert_eq!(full.status().code(), tonic::Code::ResourceExhausted);
        assert!(holds.hold(new("bob", 0, NOW + 1000), NOW).is_ok());
        let again = holds.hold(new("bob", 0, NOW + 1000), NOW).unwrap_err();
        assert!(matches!(again, HoldError::Replayed(_)), "{again}");

        // Bob's envelope expires first; expired holds stay listed, then are forgotten.
        let states = |at| {
            holds
                .list(at, |_, _| true)
                .into_iter()
                .map(|h| h.state)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            states(NOW + 999).last().map(String::as_str),
            Some("pending")
        );
        let later = states(NOW + 1000);
        assert_eq!(later.last().map(String::as_str), Some("expired"));
        assert_eq!(later.len(), MAX_PENDING_PER_SENDER + 1);
        // Alice may hold again once hers expire, and expired ones go after an hour.
        assert_eq!(states(NOW + 3_600_000 + 1000).len(), MAX_PENDING_PER_SENDER);
        assert!(holds.hold(new("alice", 1000, far), NOW + 3_600_000).is_ok());
        assert_eq!(states(NOW + 2 * 3_600_000 + 1).len(), 1);
    }
}
