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
//! sender, [`MAX_PENDING_PER_SEGMENT`] per segment, each at most [`MAX_HOLD`]; decided ones are kept [`KEEP_DECIDED`] so that the
//! sender can see what became of them, at most [`MAX_KEPT`] ([`MAX_KEPT_PER_SENDER`] per
//! sender). Every pending hold is in the
//! store (table `held`) before the publisher's `Ack` says it is held, and every approval before
//! its answer: a restart loses none (one that lapsed meanwhile is expired, recorded, as if the
//! hub had run). A store failure refuses the hold (`UNAVAILABLE`) or the
//! approval, and nothing changes. Decided ones are deleted from the store; the hub remembers
//! them, for listing, until it restarts.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use entente_audit::{Approval, Event, Hash, Outcome as AuditOutcome, Verdict as AuditVerdict};
use entente_ca::VerifiedRevocationList;
use entente_crypto::{ApprovalIn, SignedBatchIn, Verdict, VerifiedApproval};
use entente_policy::{Action, Resource, Subject};
use entente_types::{Channel, Principal};
use entente_wire::{
    ApprovalInfo, ApproveRequest, ApproveResponse, Deliver, HeldMessage, Limits, ListHeldRequest,
    ListHeldResponse, SignedBatch, StoredHold,
};
use prost::Message as _;
use tonic::Status;

use crate::HubError;
use crate::audit::{self, Auditor};
use crate::authz::Denied;
use crate::grants::{self, ApproveError};
use crate::registry::Registry;
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

/// At most this many messages of one segment's senders together (all humans: one) wait for
/// approval: one segment can't fill the hold for everyone.
pub const MAX_PENDING_PER_SEGMENT: usize = 256;

/// The longest a message waits for approval (less if its envelope expires sooner).
pub const MAX_HOLD: Duration = Duration::from_secs(60 * 60);

/// How long a decided or expired hold stays visible.
pub const KEEP_DECIDED: Duration = Duration::from_secs(60 * 60);

/// At most this many decided holds are kept.
pub const MAX_KEPT: usize = 1024;

/// At most this many decided holds of one sender are kept (the oldest go first): one sender
/// holding and withdrawing without end can't push everyone else's out of the listing.
pub const MAX_KEPT_PER_SENDER: usize = 64;

/// At most this many bytes of held messages wait in one hub.
pub const MAX_HELD_BYTES: usize = 256 * 1024 * 1024;

/// At most this many bytes of one sender's held messages wait.
pub const MAX_HELD_BYTES_PER_SENDER: usize = 16 * 1024 * 1024;

/// At most this many bytes of one segment's held messages (all humans: one) wait.
pub const MAX_HELD_BYTES_PER_SEGMENT: usize = 64 * 1024 * 1024;

/// A hold keeps at most this many statements (approvals and the one rejection).
pub const MAX_STATEMENTS: usize = entente_wire::MAX_APPROVAL_RECORDS;

/// A statement may be signed at most this long before the message was received (clock skew).
const SKEW_MS: u64 = 60_000;

/// The version of [`StoredHold`] this hub writes and reads.
const STORED_VERSION: u32 = 1;

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
    /// The hold could not be stored: nothing changed. (What the store said stays in the
    /// hub: it may name files.)
    #[error("the hub could not store the held message; nothing changed, try again")]
    Store,
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
        /// The batch in it, for the audit record of its delivery.
        batch: SignedBatch,
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
#[derive(Debug, Clone)]
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
    /// The certificates the sender's connection published it with
    /// ([`Connections::credentials`](crate::connections::Connections::credentials)).
    pub(crate) credentials: Vec<Vec<u8>>,
}

/// The certificates each principal acted on a hold with (its sender publishing it, each
/// approver approving it): a revocation of any voids what it did there.
pub(crate) type Acted = HashMap<Principal, Vec<Vec<u8>>>;

/// The held messages of one hub: in memory, and each pending one in the store.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    book: Mutex<Book>,
    /// Serializes changes: decide on a copy, store, then put in force.
    writing: tokio::sync::Mutex<()>,
    /// Where pending holds are kept ([`Holds::load`]); none in unit tests.
    registry: Option<Registry>,
    /// Where expirations are recorded (decisions on holds are recorded by [`approve`]).
    auditor: Auditor,
}

#[derive(Debug, Default)]
struct Book {
    holds: HashMap<String, Hold>,
    /// IDs in the order received, for listing and forgetting.
    order: VecDeque<String>,
    /// Expired holds whose deletion from the store failed, to try again.
    undeleted: Vec<String>,
    /// The hold being decided (its decision being stored): a listing meanwhile does not
    /// expire it under the decision.
    deciding: Option<String>,
}

#[derive(Debug, Clone)]
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
    /// The certificates the sender and each approver acted with.
    acted: Acted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Released,
    Rejected,
    Expired,
}

/// Whether `principal` is revoked, or a certificate it acted with on a hold (`acted`): a
/// stolen one revoked by serial.
fn revoked_on_hold(list: &VerifiedRevocationList, acted: &Acted, principal: &Principal) -> bool {
    let serials = acted.get(principal).map(Vec::as_slice).unwrap_or_default();
    rpc::revoked_acting(list, principal, serials)
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
    rpc::open(caller)?;
    let now_ms = rpc::unix_ms(now);
    let statement = grants::callers_statement(caller, request.statement)?;
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
        permitted_approver(services, &caller.principal, &channel, now_ms).map_err(|denied| {
            if denied.by_policy() {
                stats::bump(&services.stats.denials);
            }
            denied.rpc(format_args!("deciding held message `{id}` on `{channel}`"))
        })?;
    }
    let approval =
        ApprovalIn::new(statement, &request.signature).map_err(grants::approval_error)?;
    let bundle =
        grants::approver_bundle(services, &caller.principal, request.key_bundle, now_ms).await?;
    let approval = approval
        .verify(&bundle, now_ms)
        .map_err(grants::approval_error)?;
    let authz = &services.authz;
    let quarantined = |p: &Principal| services.anomaly.quarantined(p).is_some();
    let (envelope, statement) = (approval.statement().object_hash, *approval.digest());
    // The certificates this approval is made with: a revocation of any voids it.
    let credentials = rpc::credentials(services, caller, "approval")?;
    let outcome = holds
        // Judged at the time the decision's turn came (`at`): it may have waited for others.
        .decide(&id, &approval, credentials, now_ms, |sender, channel, approvers, acted, at| {
            // The list in force at the decision's turn.
            let revocations = services.revocations.current();
            let revoked = |p: &Principal| {
                revocations
                    .as_ref()
                    .is_some_and(|list| revoked_on_hold(list, acted, p))
            };
            if revoked(sender) {
                return Verdicts::Denied(format!(
                    "its sender `{sender}`, or the certificate it was published with, is revoked"
                ));
            }
            if quarantined(sender) {
                return Verdicts::Denied(format!("its sender `{sender}` is quarantined"));
            }
            // Only approvals of principals still permitted, neither revoked nor quarantined,
            // count.
            let standing: Vec<Principal> = approvers
                .iter()
                .filter(|a| {
                    !revoked(a)
                        && !quarantined(a)
                        && permitted_approver(services, a, channel, at).is_ok()
                })
                .cloned()
                .collect();
            authz.decide_held(sender, channel, &standing, at)
        })
        .await?;
    let response = |outcome: &str, approvals| ApproveResponse {
        outcome: outcome.to_owned(),
        approvals,
        required: 0,
        grant: None,
    };
    // Recorded before anything is routed; the RPC is answered once the records are durable.
    let auditor = authz.auditor();
    let verdict = match &outcome {
        Outcome::Rejected => AuditVerdict::Rejected,
        Outcome::Pending { .. } | Outcome::Released { .. } => AuditVerdict::Approved,
    };
    let event = approval_event(&id, &sender, &channel, verdict, envelope, Some(statement));
    let mut recorded = auditor.submit(caller.principal.as_str(), AuditOutcome::Success, event);
    if let Outcome::Released { batch, .. } = &outcome
        && recorded.is_ok()
        && let Ok(batch) = SignedBatchIn::from_wire(batch.clone())
    {
        let event = Event::DeliveredBatch(crate::session::delivered(&batch));
        recorded = auditor.submit(batch.sender().as_str(), AuditOutcome::Success, event);
    }
    if let Err(e) = recorded {
        // Stored as decided: after a restart it is listed, and never routed. Listed so until
        // then too, not as a release that went.
        if matches!(outcome, Outcome::Released { .. }) {
            holds.note(
                &id,
                "released, but not routed: the audit log failed before the release was recorded",
            );
        }
        return Err(RpcError::Unaudited(e).into());
    }
    Ok(match outcome {
        Outcome::Pending { approvals } => response("pending", approvals),
        Outcome::Released {
            approvals,
            channel,
            body,
            batch,
        } => {
            // Released is released: if its durable channel can't take it, it still reaches
            // the live subscribers, and the approver is told.
            let stored = store_released(services, &channel, &batch, &body).await;
            let routed = services.router.route(&channel, body).await;
            if holds.forget(&id).await.is_err() {
                // Kept in the store as released: listed after a restart, never routed again.
                stats::bump(&services.stats.held_store_failures);
            }
            stats::add(&services.stats.delivery_failures, routed.failed as u64);
            stats::add(&services.stats.withheld_deliveries, routed.withheld as u64);
            stats::add(
                &services.stats.slow_consumer_disconnects,
                routed.slow_consumers as u64,
            );
            if routed.failed > 0 {
                // Its publisher had its `Ack` when it was held: the log says it instead.
                tracing::warn!(
                    held = %id,
                    %channel,
                    failed = routed.failed,
                    delivered = routed.delivered,
                    slow_consumers = routed.slow_consumers,
                    "a released message could not be delivered to every subscriber"
                );
            }
            if let Err(e) = stored {
                return Err(RpcError::Precondition(format!(
                    "held message `{id}` was released to the live subscribers of `{channel}`, \
                     but not stored for its durable consumers: {e}"
                ))
                .into());
            }
            response("released", approvals)
        }
        Outcome::Rejected => response("rejected", 0),
    })
}

/// Serves one `ListHeld`: the caller's own held messages, and those on channels it may
/// approve for (decided once per channel, not recorded one by one: the listing's own record,
/// `list-held`, stands for them).
pub(crate) fn list<R>(
    services: &Services<R>,
    caller: &Caller,
    request: ListHeldRequest,
    now: SystemTime,
) -> Result<ListHeldResponse, RpcError> {
    rpc::open(caller)?;
    let now_ms = rpc::unix_ms(now);
    let mut approver_of: HashMap<Channel, bool> = HashMap::new();
    let only = (!request.message_id.is_empty()).then_some(request.message_id.as_str());
    let subject = Subject::new(caller.principal.clone(), Vec::<String>::new());
    let authz = &services.authz;
    let held = authz.holds().list(now_ms, only, |sender, channel| {
        *sender == caller.principal
            || *approver_of.entry(channel.clone()).or_insert_with(|| {
                let resource = Resource::Channel(channel);
                authz.allows_unrecorded(&subject, Action::Approve, &resource, now_ms)
            })
    });
    let response = ListHeldResponse { held };
    if !rpc::fits(&response, &services.limits) {
        return Err(RpcError::TooMany(
            "the held messages do not fit in one answer; ask for one by its ID".into(),
        ));
    }
    stats::bump(&services.stats.grant_actions);
    Ok(response)
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

/// Stores a released message in its durable channel, if one captures it, before it is
/// routed; the approval is answered once it is durable.
async fn store_released<R>(
    services: &Services<R>,
    channel: &Channel,
    batch: &SignedBatch,
    body: &Bytes,
) -> Result<(), crate::durable::DurableError> {
    use crate::durable::{DurableError, EntryError};
    let mut epochs: Vec<u64> = batch.envelopes.iter().map(|e| e.epoch).collect();
    epochs.sort_unstable();
    epochs.dedup();
    // A hold made while a stream captured its channel carries every key it needs (put in
    // when it was held); one made before (a stream configured since, a hold stored by older
    // code) is checked here as any entry: the keys it lacks looked up, its size bounded.
    let carried: Vec<u64> = entente_wire::decode::<Deliver>(body, &services.limits)
        .map(|d| d.sender_keys.iter().map(|k| k.epoch).collect())
        .unwrap_or_default();
    let Some((stream, entry)) = services.streams.checked_entry(
        channel,
        &batch.sender,
        &epochs,
        &carried,
        body,
        &services.limits,
    ) else {
        return Ok(());
    };
    let entry = entry.map_err(|e| {
        DurableError::Unstorable(match e {
            EntryError::TooLarge => {
                "the held message, with the sender keys it needs, is too large to store".into()
            }
            EntryError::MissingKey(epoch) => format!(
                "the sender key of epoch {epoch} it needs is not known to the hub: stored, it \
                 would never open"
            ),
        })
    })?;
    let stored = crate::durable::submit_all(vec![(stream, entry)], || {
        Ok::<(), crate::durable::DurableError>(())
    })?;
    for (stream, ticket) in stored {
        stream.durable(ticket).await?;
    }
    Ok(())
}

/// The audit record of a decision on held message `id`.
fn approval_event(
    id: &str,
    sender: &Principal,
    channel: &Channel,
    verdict: AuditVerdict,
    envelope: [u8; 32],
    statement: Option<[u8; 32]>,
) -> Event {
    Event::Approval(Approval {
        message_id: audit::clear(id),
        sender: audit::clear(sender.as_str()),
        channel: audit::clear(channel.as_str()),
        verdict,
        envelope: Hash(envelope),
        statement: statement.map(Hash),
    })
}

// === impl Holds ===

impl Holds {
    /// The holds in the store. Pending ones that expired meanwhile are loaded as pending: the
    /// first change or listing expires them as it would have, recorded (with the auditor
    /// [`set_auditor`](Self::set_auditor) gives) and listed until an hour after their
    /// expiry. A record that does not decode is an error: the hub does not start without it.
    pub(crate) async fn load(registry: &Registry, limits: &Limits) -> Result<Self, HubError> {
        let now_ms = rpc::unix_ms(SystemTime::now());
        let mut book = Book::default();
        let mut released = Vec::new();
        for (id, bytes) in registry.held().await? {
            let mut hold = Hold::decode(&id, &bytes, limits).map_err(HubError::StoredHeld)?;
            if hold.state == State::Released {
                // Listed for another hour from now, never routed again.
                hold.decided_at_ms = now_ms;
                released.push(id.clone());
            }
            book.order.push_back(id.clone());
            book.holds.insert(id, hold);
        }
        for id in released {
            registry.delete_held(&id).await?;
        }
        // In the order received.
        let mut order: Vec<String> = book.order.drain(..).collect();
        order.sort_by_key(|id| book.holds.get(id).map_or(0, |h| h.published_at_ms));
        book.order = order.into();
        Ok(Self {
            book: Mutex::new(book),
            writing: tokio::sync::Mutex::new(()),
            registry: Some(registry.clone()),
            auditor: Auditor::off(),
        })
    }

    /// Records expirations in `auditor`.
    pub(crate) fn set_auditor(&mut self, auditor: Auditor) {
        self.auditor = auditor;
    }

    /// Holds `new`, received at `now_ms`, stored before it is in force; returns when the hold
    /// lapses.
    pub(crate) async fn hold(&self, new: NewHold, now_ms: u64) -> Result<u64, HoldError> {
        let _writing = self.writing.lock().await;
        self.forget_expired(now_ms).await;
        let hold = {
            let book = self.lock();
            // Before the bounds: a message held already is a replay, whatever room is left.
            if book.holds.contains_key(&new.id) {
                return Err(HoldError::Replayed(format!(
                    "a message `{}` is already held",
                    new.id
                )));
            }
            let pending = book.pending().count();
            if pending >= MAX_PENDING {
                return Err(HoldError::Full(format!(
                    "{MAX_PENDING} messages already wait for approval in this hub"
                )));
            }
            let bytes: usize = book.pending().map(|h| h.new.body.len()).sum();
            let my_bytes: usize = book
                .pending()
                .filter(|h| h.new.sender == new.sender)
                .map(|h| h.new.body.len())
                .sum();
            if bytes.saturating_add(new.body.len()) > MAX_HELD_BYTES {
                return Err(HoldError::Full(format!(
                    "held messages take {bytes} bytes in this hub, at most {MAX_HELD_BYTES}"
                )));
            }
            if my_bytes.saturating_add(new.body.len()) > MAX_HELD_BYTES_PER_SENDER {
                return Err(HoldError::Full(format!(
                    "held messages of `{}` take {my_bytes} bytes, at most {MAX_HELD_BYTES_PER_SENDER}",
                    new.sender
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
            let group = new.sender.share_group();
            let (ours, our_bytes) = book
                .pending()
                .filter(|h| h.new.sender.share_group() == group)
                .fold((0usize, 0usize), |(n, b), h| {
                    (n + 1, b.saturating_add(h.new.body.len()))
                });
            if ours >= MAX_PENDING_PER_SEGMENT
                || our_bytes.saturating_add(new.body.len()) > MAX_HELD_BYTES_PER_SEGMENT
            {
                return Err(HoldError::Full(format!(
                    "messages of segment `{group}` wait for approval up to its share \
                     ({MAX_PENDING_PER_SEGMENT} messages, {MAX_HELD_BYTES_PER_SEGMENT} bytes)"
                )));
            }
            let hold_ms = u64::try_from(MAX_HOLD.as_millis()).unwrap_or(u64::MAX);
            Hold {
                expires_at_ms: new
                    .envelope_expires_at_ms
                    .min(now_ms.saturating_add(hold_ms)),
                published_at_ms: now_ms,
                state: State::Pending,
                reason: String::new(),
                decided_at_ms: 0,
                approvals: Vec::new(),
                approvers: Vec::new(),
                seen: HashSet::new(),
                acted: HashMap::from([(new.sender.clone(), new.credentials.clone())]),
                new,
            }
        };
        self.put(&hold).await?;
        let expires_at_ms = hold.expires_at_ms;
        let mut book = self.lock();
        book.order.push_back(hold.new.id.clone());
        book.holds.insert(hold.new.id.clone(), hold);
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
    /// (the sender, the channel, the approvers so far) says whether it is released. The new
    /// state is stored before it is in force (a pending one is updated, a rejected one deleted;
    /// a released one is deleted by [`forget`](Self::forget) once routed), so a store failure
    /// changes nothing.
    pub(crate) async fn decide(
        &self,
        id: &str,
        approval: &VerifiedApproval,
        credentials: Vec<Vec<u8>>,
        now_ms: u64,
        decide: impl FnOnce(&Principal, &Channel, &[Principal], &Acted, u64) -> Verdicts,
    ) -> Result<Outcome, HoldError> {
        let _writing = self.writing.lock().await;
        // The time once it is this decision's turn (it may have waited for others).
        let now_ms = now_ms.max(rpc::unix_ms(SystemTime::now()));
        self.forget_expired(now_ms).await;
        let mut hold = {
            let mut book = self.lock();
            let hold = book
                .holds
                .get(id)
                .cloned()
                .ok_or_else(|| HoldError::Unknown(id.to_owned()))?;
            book.deciding = Some(id.to_owned());
            hold
        };
        // Cleared however this ends (the caller may stop waiting for it).
        let _deciding = Deciding(self);
        let decided = async {
            let outcome = hold.apply(id, approval, credentials, now_ms, decide)?;
            match &outcome {
                // A released one is stored as released before it is routed: a crash between
                // the two loses that delivery (the sender sees it listed) rather than ever
                // sending it twice.
                Outcome::Pending { .. } | Outcome::Released { .. } => self.put(&hold).await?,
                Outcome::Rejected => self.delete(id).await?,
            }
            Ok(outcome)
        }
        .await;
        if decided.is_ok() {
            self.lock().holds.insert(id.to_owned(), hold);
        }
        decided
    }

    /// Sets the reason decided hold `id` is listed with.
    fn note(&self, id: &str, reason: &str) {
        if let Some(hold) = self.lock().holds.get_mut(id) {
            reason.clone_into(&mut hold.reason);
        }
    }

    /// Deletes released message `id` from the store, once routed. A failure leaves it stored
    /// as released: listed after a restart, never routed again.
    pub(crate) async fn forget(&self, id: &str) -> Result<(), HoldError> {
        let _writing = self.writing.lock().await;
        self.delete(id).await
    }

    /// Stores a pending hold.
    async fn put(&self, hold: &Hold) -> Result<(), HoldError> {
        match &self.registry {
            Some(registry) => registry
                .put_held(&hold.new.id, &hold.encode())
                .await
                .map_err(|_| HoldError::Store),
            None => Ok(()),
        }
    }

    /// Deletes a hold from the store.
    async fn delete(&self, id: &str) -> Result<(), HoldError> {
        match &self.registry {
            Some(registry) => registry
                .delete_held(id)
                .await
                .map(drop)
                .map_err(|_| HoldError::Store),
            None => Ok(()),
        }
    }

    /// The held messages (pending and recently decided) for which `visible` says yes, in the
    /// order received; only `only` if given, then with its signed batch. `visible` runs
    /// outside the book's lock.
    pub(crate) fn list(
        &self,
        now_ms: u64,
        only: Option<&str>,
        mut visible: impl FnMut(&Principal, &Channel) -> bool,
    ) -> Vec<HeldMessage> {
        let candidates: Vec<(String, Principal, Channel)> = {
            let mut book = self.lock();
            let (expired, lapsed) = book.expire(now_ms);
            for event in lapsed {
                let _ = self
                    .auditor
                    .submit(audit::HUB_ACTOR, AuditOutcome::Success, event);
            }
            // Deleted from the store at the next change.
            book.undeleted.extend(expired);
            book.order
                .iter()
                .filter(|id| only.is_none_or(|only| only == id.as_str()))
                .filter_map(|id| book.holds.get(id))
                .map(|h| {
                    (
                        h.new.id.clone(),
                        h.new.sender.clone(),
                        h.new.channel.clone(),
                    )
                })
                .collect()
        };
        let shown: HashSet<String> = candidates
            .into_iter()
            .filter(|(_, sender, channel)| visible(sender, channel))
            .map(|(id, _, _)| id)
            .collect();
        let book = self.lock();
        book.order
            .iter()
            .filter(|id| shown.contains(id.as_str()))
            .filter_map(|id| book.holds.get(id))
            .map(|h| h.info(only.is_some()))
            .collect()
    }

    /// Expires pending holds past their time and deletes them from the store (a failure is
    /// tried again at the next change, and at start).
    async fn forget_expired(&self, now_ms: u64) {
        let (expired, lapsed) = self.lock().expire(now_ms);
        for event in lapsed {
            // A failed log shows in the next act's check.
            let _ = self
                .auditor
                .submit(audit::HUB_ACTOR, AuditOutcome::Success, event);
        }
        let mut failed = Vec::new();
        for id in expired {
            if self.delete(&id).await.is_err() {
                failed.push(id);
            }
        }
        if !failed.is_empty() {
            self.lock().undeleted.extend(failed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears the hold being decided when dropped.
struct Deciding<'a>(&'a Holds);

impl Drop for Deciding<'_> {
    fn drop(&mut self) {
        self.0.lock().deciding = None;
    }
}

// === impl Book ===

impl Book {
    fn pending(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values().filter(|h| h.state == State::Pending)
    }

    /// Expires pending holds past their time, and forgets decided ones kept long enough (or
    /// beyond [`MAX_KEPT`], or their sender's beyond [`MAX_KEPT_PER_SENDER`], oldest first). Returns the IDs to delete from the store: those
    /// expired now, and those whose deletion failed before.
    fn expire(&mut self, now_ms: u64) -> (Vec<String>, Vec<Event>) {
        let mut expired = std::mem::take(&mut self.undeleted);
        let mut lapsed = Vec::new();
        for (id, hold) in &mut self.holds {
            if hold.state == State::Pending
                && now_ms >= hold.expires_at_ms
                && self.deciding.as_ref() != Some(id)
            {
                hold.end(
                    State::Expired,
                    "no decision before it expired".to_owned(),
                    hold.expires_at_ms,
                );
                expired.push(id.clone());
                lapsed.push(approval_event(
                    id,
                    &hold.new.sender,
                    &hold.new.channel,
                    AuditVerdict::Expired,
                    hold.new.hash,
                    None,
                ));
            }
        }
        let keep_ms = u64::try_from(KEEP_DECIDED.as_millis()).unwrap_or(u64::MAX);
        let mut decided = 0;
        let mut of_sender: HashMap<Principal, usize> = HashMap::new();
        for hold in self.holds.values().filter(|h| h.state != State::Pending) {
            decided += 1;
            *of_sender.entry(hold.new.sender.clone()).or_default() += 1;
        }
        let holds = &mut self.holds;
        self.order.retain(|id| {
            let Some(hold) = holds.get(id) else {
                return false;
            };
            if hold.state == State::Pending {
                return true;
            }
            let senders = of_sender.get_mut(&hold.new.sender);
            let stale = now_ms >= hold.decided_at_ms.saturating_add(keep_ms)
                || decided > MAX_KEPT
                || senders.as_ref().is_some_and(|n| **n > MAX_KEPT_PER_SENDER);
            if stale {
                decided -= 1;
                if let Some(n) = senders {
                    *n -= 1;
                }
                holds.remove(id);
            }
            !stale
        });
        (expired, lapsed)
    }
}

// === impl Hold ===

impl Hold {
    /// Applies a verified statement to this (pending) hold; see [`Holds::decide`].
    fn apply(
        &mut self,
        id: &str,
        approval: &VerifiedApproval,
        credentials: Vec<Vec<u8>>,
        now_ms: u64,
        decide: impl FnOnce(&Principal, &Channel, &[Principal], &Acted, u64) -> Verdicts,
    ) -> Result<Outcome, HoldError> {
        if self.state != State::Pending {
            return Err(HoldError::Decided {
                id: id.to_owned(),
                state: self.state.name(),
            });
        }
        if now_ms >= self.expires_at_ms {
            return Err(HoldError::Decided {
                id: id.to_owned(),
                state: State::Expired.name(),
            });
        }
        let statement = approval.statement();
        if statement.object_hash != self.new.hash {
            return Err(HoldError::WrongHash(id.to_owned()));
        }
        if statement.signed_at_ms.saturating_add(SKEW_MS) < self.published_at_ms {
            return Err(HoldError::TooOld);
        }
        if self.seen.contains(approval.digest()) {
            return Err(HoldError::Replayed(
                "this statement was applied before".to_owned(),
            ));
        }
        // Room is always left for the one rejection that ends it.
        if approval.verdict() == Verdict::Approve && self.approvals.len() + 1 >= MAX_STATEMENTS {
            return Err(HoldError::Full(format!(
                "held message `{id}` has the most approvals a hold keeps ({}); reject it, or let it expire",
                MAX_STATEMENTS - 1
            )));
        }
        let approver = approval.approver();
        let info = ApprovalInfo {
            approver: approver.to_string(),
            verdict: approval.verdict().as_str().to_owned(),
            signed_at_ms: statement.signed_at_ms,
        };
        match approval.verdict() {
            Verdict::Reject => {
                self.seen.insert(*approval.digest());
                self.approvals.push(info);
                self.end(State::Rejected, format!("rejected by `{approver}`"), now_ms);
                Ok(Outcome::Rejected)
            }
            Verdict::Approve => {
                if *approver == self.new.sender {
                    return Err(HoldError::OwnMessage(approver.to_string()));
                }
                if self.approvers.contains(approver) {
                    return Err(HoldError::Replayed(format!(
                        "`{approver}` approved this message before; an approver counts once"
                    )));
                }
                self.seen.insert(*approval.digest());
                self.approvals.push(info);
                self.approvers.push(approver.clone());
                self.acted.insert(approver.clone(), credentials);
                let approvals = u32::try_from(self.approvers.len()).unwrap_or(u32::MAX);
                let (sender, channel) = (&self.new.sender, &self.new.channel);
                match decide(sender, channel, &self.approvers, &self.acted, now_ms) {
                    Verdicts::Allowed => {
                        // Taken before `end` drops them.
                        let (body, batch) = (self.new.body.clone(), self.new.batch.clone());
                        self.end(State::Released, String::new(), now_ms);
                        Ok(Outcome::Released {
                            approvals,
                            channel: self.new.channel.clone(),
                            body,
                            batch,
                        })
                    }
                    Verdicts::StillHeld => Ok(Outcome::Pending { approvals }),
                    Verdicts::Denied(why) => {
                        self.end(
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

    /// The stored form of a pending hold.
    fn encode(&self) -> Vec<u8> {
        StoredHold {
            version: STORED_VERSION,
            message_id: self.new.id.clone(),
            sender: self.new.sender.to_string(),
            channel: self.new.channel.to_string(),
            body: self.new.body.to_vec(),
            batch: None,
            hash: self.new.hash.to_vec(),
            purpose: self.new.purpose.clone(),
            size: self.new.size,
            envelope_expires_at_ms: self.new.envelope_expires_at_ms,
            published_at_ms: self.published_at_ms,
            expires_at_ms: self.expires_at_ms,
            approvals: self.approvals.clone(),
            approvers: self.approvers.iter().map(ToString::to_string).collect(),
            seen: self.seen.iter().map(|d| d.to_vec()).collect(),
            state: self.state.name().to_owned(),
            credentials: self
                .acted
                .iter()
                .map(|(principal, serials)| entente_wire::HeldCredentials {
                    principal: principal.to_string(),
                    serials: serials.clone(),
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// A stored hold, checked: stored under its own ID, of this version, with well-formed
    /// principals, channel and digests.
    fn decode(id: &str, bytes: &[u8], limits: &Limits) -> Result<Self, String> {
        let bad = |why: String| format!("held message `{}`: {why}", id.escape_debug());
        // A record is a held body (at most a frame) and its bookkeeping.
        let limits = Limits {
            max_frame_bytes: limits.max_frame_bytes.saturating_mul(2),
            ..*limits
        };
        let stored: StoredHold = entente_wire::decode(bytes, &limits)
            .map_err(|e| bad(format!("does not decode: {e}")))?;
        let state = match stored.state.as_str() {
            "pending" | "" => State::Pending,
            "released" => State::Released,
            other => return Err(bad(format!("state `{}`", other.escape_debug()))),
        };
        let batch = if state == State::Pending {
            let deliver: Deliver = entente_wire::decode(&stored.body, &limits)
                .map_err(|e| bad(format!("its body does not decode: {e}")))?;
            deliver
                .batches
                .into_iter()
                .next()
                .ok_or_else(|| bad("no batch".to_owned()))?
        } else {
            SignedBatch::default()
        };
        if stored.version != STORED_VERSION {
            return Err(bad(format!(
                "version {}; this hub reads version {STORED_VERSION}",
                stored.version
            )));
        }
        if stored.message_id != id {
            return Err(bad("stored under another ID".to_owned()));
        }
        let principal = |text: &str| {
            Principal::parse(text).map_err(|e| bad(format!("`{}`: {e}", text.escape_debug())))
        };
        let digest = |bytes: &[u8]| {
            <[u8; 32]>::try_from(bytes).map_err(|_| bad("a digest is not 32 bytes".to_owned()))
        };
        let approvers = stored
            .approvers
            .iter()
            .map(|a| principal(a))
            .collect::<Result<Vec<_>, _>>()?;
        let seen = stored
            .seen
            .iter()
            .map(|d| digest(d))
            .collect::<Result<HashSet<_>, _>>()?;
        // (A hold stored before credentials were kept has none: only principals then.)
        let acted = stored
            .credentials
            .into_iter()
            .map(|c| Ok((principal(&c.principal)?, c.serials)))
            .collect::<Result<Acted, String>>()?;
        let sender = principal(&stored.sender)?;
        Ok(Self {
            new: NewHold {
                id: stored.message_id,
                credentials: acted.get(&sender).cloned().unwrap_or_default(),
                sender,
                channel: Channel::parse(&stored.channel)
                    .map_err(|e| bad(format!("channel: {e}")))?,
                body: Bytes::from(stored.body),
                batch,
                hash: digest(&stored.hash)?,
                purpose: stored.purpose,
                size: stored.size,
                envelope_expires_at_ms: stored.envelope_expires_at_ms,
            },
            published_at_ms: stored.published_at_ms,
            expires_at_ms: stored.expires_at_ms,
            reason: if state == State::Released {
                "released as the hub stopped: its delivery is not confirmed".to_owned()
            } else {
                String::new()
            },
            state,
            decided_at_ms: 0,
            approvals: stored.approvals,
            approvers,
            seen,
            acted,
        })
    }

    fn end(&mut self, state: State, reason: String, at_ms: u64) {
        self.state = state;
        self.reason = reason;
        self.decided_at_ms = at_ms;
        // Decided: the sealed message is no longer needed.
        self.new.body = Bytes::new();
        self.new.batch = SignedBatch::default();
    }

    fn info(&self, with_batch: bool) -> HeldMessage {
        HeldMessage {
            message_id: self.new.id.clone(),
            sender: self.new.sender.to_string(),
            channel: self.new.channel.to_string(),
            size: self.new.size,
            published_at_ms: self.published_at_ms,
            expires_at_ms: self.expires_at_ms,
            purpose: self.new.purpose.clone(),
            batch: (with_batch && self.state == State::Pending).then(|| self.new.batch.clone()),
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
            HoldError::Store => Status::unavailable(message),
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
            credentials: vec![vec![1, 2, 3]],
        }
    }

    /// The certificates the sender and the approvers acted with are stored with the hold and
    /// read back: a revocation after a restart voids what they did as before it.
    #[tokio::test]
    async fn what_a_hold_was_acted_with_is_stored() {
        let holds = Holds::default();
        holds.hold(new("alice", 0, NOW + 1000), NOW).await.unwrap();
        let mut hold = holds.lock().holds.get("alice-0").unwrap().clone();
        let bob = Principal::parse("spiffe://example.org/agent/shop/bob").unwrap();
        hold.acted.insert(bob.clone(), vec![vec![4, 5], vec![6]]);
        hold.state = State::Released;
        let read = Hold::decode("alice-0", &hold.encode(), &Limits::default()).unwrap();
        assert_eq!(read.acted, hold.acted);
        assert_eq!(read.acted.len(), 2);
        assert_eq!(read.new.credentials, [vec![1, 2, 3]]);
        assert_eq!(read.acted[&bob], [vec![4, 5], vec![6]]);
    }

    #[tokio::test]
    async fn holds_are_bounded_in_bytes_per_sender() {
        let holds = Holds::default();
        let far = NOW + 3_600_000;
        let mib = Bytes::from(vec![0u8; 1 << 20]);
        let sized = |n| NewHold {
            body: mib.clone(),
            ..new("alice", n, far)
        };
        for n in 0..MAX_HELD_BYTES_PER_SENDER >> 20 {
            holds.hold(sized(n), NOW).await.unwrap();
        }
        let full = holds.hold(sized(99), NOW).await.unwrap_err();
        assert!(
            matches!(&full, HoldError::Full(why) if why.contains("bytes")),
            "{full}"
        );
        // Another sender still may.
        let bob = NewHold {
            body: mib.clone(),
            ..new("bob", 0, far)
        };
        assert!(holds.hold(bob, NOW).await.is_ok());
    }

    /// A listing does not expire a hold under a decision being stored (the decision would
    /// then overwrite its expiry: "expired", then "approved" and delivered).
    #[tokio::test]
    async fn a_listing_does_not_expire_a_hold_being_decided() {
        let holds = Holds::default();
        holds.hold(new("alice", 0, NOW + 1000), NOW).await.unwrap();
        let state = |at| {
            let listed = holds.list(at, None, |_, _| true);
            listed.first().map(|h| h.state.clone()).unwrap_or_default()
        };
        holds.lock().deciding = Some("alice-0".to_owned());
        assert_eq!(state(NOW + 2000), "pending");
        holds.lock().deciding = None;
        assert_eq!(state(NOW + 2000), "expired");
    }

    /// Bob's approval of `alice-0`, signed at `start`.
    fn bobs_approval(start: u64) -> VerifiedApproval {
        let keys = entente_crypto::MessageKeys::generate().unwrap();
        let bob = Principal::parse("spiffe://example.org/agent/shop/bob").unwrap();
        let signed = entente_crypto::ApprovalStatement {
            verdict: Verdict::Approve,
            kind: entente_crypto::ObjectKind::Envelope,
            object_id: "alice-0".to_owned(),
            object_hash: [0; 32],
            approver: bob.clone(),
            key_epoch: 1,
            signed_at_ms: start,
        }
        .sign(&keys)
        .unwrap();
        ApprovalIn::new(signed.statement().clone(), signed.signature())
            .unwrap()
            .verify_with_key(&bob, &keys.ed25519_public(), start)
            .unwrap()
    }

    /// A decision is judged when its turn comes: one that waited for another past the hold's
    /// expiry is refused as expired, however early its caller read the time.
    #[tokio::test]
    async fn an_approval_that_waited_past_the_expiry_is_refused() {
        let holds = Holds::default();
        let start = rpc::unix_ms(SystemTime::now());
        holds
            .hold(new("alice", 0, start + 300), start)
            .await
            .unwrap();
        let approval = bobs_approval(start);
        // Another decision is being stored; this one, asked before the expiry, waits.
        let other = holds.writing.lock().await;
        let decided = holds.decide("alice-0", &approval, Vec::new(), start, |_, _, _, _, _| {
            Verdicts::Allowed
        });
        let waited = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(other);
        };
        let (decided, ()) = tokio::join!(decided, waited);
        assert!(
            matches!(&decided, Err(HoldError::Decided { state, .. }) if *state == "expired"),
            "{decided:?}"
        );
    }

    /// The policies and grants that decide a release are asked at the decision's turn too,
    /// not at the time its caller read (a grant that ended meanwhile no longer counts).
    #[tokio::test]
    async fn a_decision_that_waited_asks_the_policies_at_its_turn() {
        let holds = Holds::default();
        let start = rpc::unix_ms(SystemTime::now());
        holds
            .hold(new("alice", 0, start + 60_000), start)
            .await
            .unwrap();
        let approval = bobs_approval(start);
        let other = holds.writing.lock().await;
        let asked_at = std::sync::Mutex::new(0);
        let decided = holds.decide("alice-0", &approval, Vec::new(), start, |_, _, _, _, at| {
            *asked_at.lock().unwrap() = at;
            Verdicts::Allowed
        });
        let waited = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(other);
        };
        let (decided, ()) = tokio::join!(decided, waited);
        assert!(
            matches!(decided, Ok(Outcome::Released { .. })),
            "{decided:?}"
        );
        let at = *asked_at.lock().unwrap();
        assert!(at >= start + 300, "asked at {at}, {} ms after", at - start);
    }

    /// One segment's senders together hold at most its share; another segment still holds.
    #[tokio::test]
    async fn holds_are_bounded_per_segment() {
        let holds = Holds::default();
        let far = NOW + 3_600_000;
        let senders = MAX_PENDING_PER_SEGMENT / MAX_PENDING_PER_SENDER;
        for s in 0..senders {
            for n in 0..MAX_PENDING_PER_SENDER {
                holds
                    .hold(new(&format!("s{s}"), n, far), NOW)
                    .await
                    .unwrap();
            }
        }
        let full = holds.hold(new("late", 0, far), NOW).await.unwrap_err();
        assert!(full.to_string().contains("segment `shop`"), "{full}");
        let other = NewHold {
            sender: Principal::parse("spiffe://example.org/agent/lab/eve").unwrap(),
            ..new("eve", 0, far)
        };
        assert!(holds.hold(other, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn holds_are_bounded_per_sender_and_expire() {
        let holds = Holds::default();
        let far = NOW + 10 * 3_600_000;
        for n in 0..MAX_PENDING_PER_SENDER {
            // At most an hour, whatever the envelope says.
            assert_eq!(
                holds.hold(new("alice", n, far), NOW).await.unwrap(),
                NOW + 3_600_000
            );
        }
        let full = holds.hold(new("alice", 999, far), NOW).await.unwrap_err();
        assert!(matches!(full, HoldError::Full(_)), "{full}");
        assert_eq!(full.status().code(), tonic::Code::ResourceExhausted);
        assert!(holds.hold(new("bob", 0, NOW + 1000), NOW).await.is_ok());
        let again = holds
            .hold(new("bob", 0, NOW + 1000), NOW)
            .await
            .unwrap_err();
        assert!(matches!(again, HoldError::Replayed(_)), "{again}");

        // Bob's envelope expires first; expired holds stay listed, then are forgotten.
        let states = |at| {
            holds
                .list(at, None, |_, _| true)
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
        assert!(
            holds
                .hold(new("alice", 1000, far), NOW + 3_600_000)
                .await
                .is_ok()
        );
        assert_eq!(states(NOW + 2 * 3_600_000 + 1).len(), 1);
    }

    /// One sender holding and withdrawing without end keeps at most its share of decided
    /// holds listed: its oldest go, not everyone else's.
    #[tokio::test]
    async fn one_sender_keeps_at_most_its_share_of_decided_holds() {
        let holds = Holds::default();
        holds.hold(new("bob", 0, NOW + 1000), NOW).await.unwrap();
        for n in 0..MAX_KEPT {
            holds.hold(new("eve", n, NOW + 1000), NOW).await.unwrap();
            // Decided at once (as a withdrawal would): never more than its share pending.
            let mut book = holds.lock();
            let hold = book.holds.get_mut(&format!("eve-{n}")).unwrap();
            hold.end(State::Rejected, "withdrawn".into(), NOW);
        }
        let listed = holds.list(NOW + 1000, None, |_, _| true);
        let eves = listed.iter().filter(|h| h.sender.ends_with("/eve")).count();
        assert_eq!(eves, MAX_KEPT_PER_SENDER);
        // Bob's (expired at NOW + 1000) is still listed, and eve's newest are the ones kept.
        assert!(
            listed.iter().any(|h| h.sender.ends_with("/bob")),
            "{listed:?}"
        );
        assert!(
            listed
                .iter()
                .any(|h| h.message_id == format!("eve-{}", MAX_KEPT - 1))
        );
        assert!(!listed.iter().any(|h| h.message_id == "eve-0"));
    }
}
