//! One session: the state machine behind one `Session` stream of one authenticated connection.
//!
//! [`Session::handle`] takes a decoded [`ClientFrame`] and answers on the session's outbound
//! queue; it touches no socket, so it is tested with frames and a [`LocalRouter`].
//! [`run`] is the thin adapter between a gRPC stream and the state machine.
//!
//! The semantics it implements are documented in the crate docs ("Session semantics").

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use entente_audit::{DeliveredBatch, Event, Hash, Outcome};
use entente_crypto::{EnvelopeIn, SenderKeyIn, SignedBatchIn};
use entente_policy::Action;
use entente_types::namespace::{self, DIRECT_PREFIX, REPLY_PREFIX};
use entente_types::{Channel, ChannelPattern, MessageId, Principal};
use entente_wire::{
    Ack, ClientFrame, Deliver, Held, Limits, Publish, Refusal, ServerFrame, SignedBatch, Subscribe,
    SubscriptionEnded, Unsubscribe, client_frame, server_frame,
};
use futures_util::FutureExt;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::{Code, Status, Streaming};

use crate::anomaly::{Anomaly, Watch};
use crate::audit::{self, Auditor};
use crate::authz::{self, Authz, DeliveryGate, Denied, Publishing, SessionAuthz};
use crate::codec::{Outbound, max_deliver_len};
use crate::connections::Credentials;
use crate::control::{self, ConnectionControl};
use crate::durable::{self, DurableError, Stream, Streams};
use crate::handoff;
use crate::held::{HoldError, NewHold};
use crate::limits::{Hit, Limiters};
use crate::metrics::Class;
use crate::queue::OutboundTx;
use crate::refusal::RefusalCode;
use crate::replay::{self, Header, SenderWindows};
use crate::reply::{Issued, ReplyGrants, Taken};
use crate::router::{Router, SessionId, Subscriber};
use crate::stats::{self, Stats};

/// Field numbers of `sender_keys` and `batches`, the same in `Publish` and `Deliver`.
const SENDER_KEYS_TAG: u32 = 2;
const BATCHES_TAG: u32 = 3;

/// What a session needs from the hub.
#[derive(Debug)]
pub(crate) struct SessionContext<R> {
    pub(crate) router: Arc<R>,
    pub(crate) authz: Arc<Authz>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) grants: Arc<ReplyGrants>,
    pub(crate) limits: Limits,
    pub(crate) max_subscriptions: usize,
    /// The durable channels.
    pub(crate) streams: Arc<Streams>,
    /// The rate limits' buckets, shared by every session.
    pub(crate) limiters: Arc<Limiters>,
    /// Every agent's traffic counts and risk.
    pub(crate) anomaly: Arc<Anomaly>,
    /// The runs of refusals by the rate limits sessions check, hub-wide, as the audit log
    /// records them ([`crate::calls::LimitRuns`]).
    pub(crate) limit_runs: Arc<crate::calls::LimitRuns>,
    /// How long a delivery waits on a session's full queue before the session is ended
    /// ([`HubConfig::slow_consumer_timeout`](crate::HubConfig::slow_consumer_timeout)).
    pub(crate) slow_consumer_timeout: std::time::Duration,
}

impl<R> Clone for SessionContext<R> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            authz: self.authz.clone(),
            stats: self.stats.clone(),
            grants: self.grants.clone(),
            limits: self.limits,
            max_subscriptions: self.max_subscriptions,
            streams: self.streams.clone(),
            limiters: self.limiters.clone(),
            anomaly: self.anomaly.clone(),
            limit_runs: self.limit_runs.clone(),
            slow_consumer_timeout: self.slow_consumer_timeout,
        }
    }
}

/// The state of one session.
#[derive(Debug)]
pub(crate) struct Session<R: Router> {
    id: SessionId,
    principal: Principal,
    context: SessionContext<R>,
    replay: Arc<Mutex<SenderWindows>>,
    outbound: OutboundTx,
    connection: ConnectionControl,
    /// The certificates the connection acts with, as a held message records them.
    credentials: Credentials,
    /// The session's subscriptions, by ID, with their patterns (decided again when the policy
    /// epoch changes).
    subscriptions: HashMap<u64, ChannelPattern>,
    /// The principal's decision cache.
    authz: SessionAuthz,
    /// What the session's wildcard subscriptions may carry, decided by the router's callers.
    gate: Arc<DeliveryGate>,
    /// The policy epoch this session has decided its subscriptions at.
    epoch: watch::Receiver<u64>,
    /// While auditing is on or channels are durable, every answer (`Ack`, `Refusal`) goes out
    /// through [`forward_answers`] once what it answers is recorded and stored durably.
    answers_wait: bool,
    /// The queue to [`forward_answers`], made with its task at the session's first answer:
    /// an idle session holds neither.
    answers: OnceLock<mpsc::Sender<Answer>>,
    /// The durable consumers this session holds, by subscription (their patterns are in
    /// `subscriptions` too).
    durables: HashMap<u64, durable::Held>,
    /// The principal's traffic counts and risk.
    watch: Arc<Watch>,
    /// What the frame being handled asks (`publish`, `subscribe`, `unsubscribe`), for the
    /// audit records of its refusals.
    asking: &'static str,
}

/// Envelopes and bytes of a publish by channel class ([`Class`] order).
type Traffic = [(u64, u64); 4];

/// An answer waiting for the audit log (up to a ticket) and for durable channels, and who
/// waits for it to be queued for the client.
type Answer = (
    u64,
    Vec<(Arc<Stream>, u64)>,
    server_frame::Kind,
    Option<Start>,
);

/// Told whether an answer went as an `Ack`, once it is queued for the client.
type Start = oneshot::Sender<bool>;

/// How many answers may wait for the audit log before the session waits for room.
const ANSWERS_WAITING: usize = 1024;

/// Most subscriptions one session holds in its own reply namespace (`_reply.<principal>…`).
pub(crate) const MAX_REPLY_SUBSCRIPTIONS: usize = 16;

/// A refusal about to be sent.
#[derive(Debug)]
struct Refused {
    code: RefusalCode,
    reason: String,
    /// `RATE_LIMITED`: when the same publish would pass, in milliseconds.
    retry_after_ms: u64,
    /// Whether the audit log has it already (a policy decision, a limit hit); any other
    /// refusal is recorded when it is sent.
    recorded: bool,
    /// Whether a refusal of its kind counts against the sender's risk ([`Session::refuse`]):
    /// not a reply refused for want of its grant, which the requester controls (a grant is
    /// one batch's, ends with the request's expiry or its requester's session), nor a batch of
    /// replies refused because a durable channel captures one, so that a requester can't get
    /// its responder throttled or quarantined.
    scored: bool,
    /// What the client is told, when it may not learn all that the audit log keeps (`reason`).
    told: Option<String>,
}

/// An entry to store in a durable channel, with its stream.
type DurableEntry = (Arc<Stream>, Vec<u8>);

/// A publish that passed its checks: what to route, and what it asks of the reply grants.
#[derive(Debug)]
struct Checked {
    /// Each channel's encoded `Deliver` body.
    groups: Vec<(Channel, Bytes)>,
    /// Requests: (channel routed on, `reply_to`, latest `expires_at` of its envelopes).
    requests: Vec<(Channel, Channel, u64)>,
    /// Reply channels this publish answers on, one batch (or envelope of a batch of
    /// replies) each.
    replies: Vec<Channel>,
    /// The groups of batches of replies: each reply namespace root with the reply channels
    /// its group is routed on.
    roots: Vec<(Channel, Vec<Channel>)>,
    /// The message to hold for approval instead of routing, if any.
    held: Option<NewHold>,
    /// The audit records of the batches to route (none while auditing is off).
    audited: Vec<DeliveredBatch>,
    /// The entries to store in durable channels, with their streams.
    durable: Vec<DurableEntry>,
    /// The publish's sender keys, `(sender, channel, epoch, encoded)`, for durable entries
    /// that follow (only while channels are durable).
    keys: Vec<(String, String, u64, Bytes)>,
}

/// One channel's share of a publish, encoded as `Deliver` fields 2 and 3 (into `Vec`s, which
/// take protobuf faster than `BytesMut`s: `framed::FrameBuf`).
#[derive(Debug)]
struct Group {
    channel: Channel,
    sender_keys: Vec<u8>,
    batches: Vec<u8>,
    /// How many envelopes of the group are requests (carry `reply_to`).
    requests: u64,
    /// How many envelopes of the group are not requests.
    plain: u64,
    /// Whether the policies hold it for approval ([`crate::held`]).
    held: bool,
}

// === impl Group ===

impl Group {
    fn new(channel: Channel) -> Self {
        Self {
            channel,
            sender_keys: Vec::new(),
            batches: Vec::new(),
            requests: 0,
            plain: 0,
            held: false,
        }
    }
}

// === impl Session ===

impl<R: Router> Session<R> {
    pub(crate) fn new(
        id: SessionId,
        principal: Principal,
        context: SessionContext<R>,
        replay: Arc<Mutex<SenderWindows>>,
        outbound: OutboundTx,
        connection: ConnectionControl,
        credentials: Credentials,
    ) -> Self {
        let subject = SessionAuthz::subject(&principal);
        let authz = SessionAuthz::of(subject.clone());
        let epoch = context.authz.watch();
        let gate = Arc::new(DeliveryGate::new(
            context.authz.clone(),
            subject,
            *epoch.borrow(),
        ));
        let watch = context.anomaly.watch(&principal);
        let answers_wait = context.authz.auditor().is_on() || !context.streams.is_empty();
        Self {
            id,
            principal,
            context,
            replay,
            outbound,
            connection,
            credentials,
            subscriptions: HashMap::new(),
            authz,
            gate,
            epoch,
            answers_wait,
            answers: OnceLock::new(),
            durables: HashMap::new(),
            watch,
            asking: "session",
        }
    }

    /// Handles one frame. An `Err` ends the stream with that status.
    pub(crate) async fn handle(&mut self, frame: ClientFrame) -> Result<(), Status> {
        match frame.kind {
            Some(client_frame::Kind::Publish(publish)) => {
                self.asking = "publish";
                self.publish(publish).await
            }
            Some(client_frame::Kind::Subscribe(subscribe)) => {
                self.asking = "subscribe";
                self.subscribe(subscribe).await
            }
            Some(client_frame::Kind::Unsubscribe(unsubscribe)) => {
                self.asking = "unsubscribe";
                self.unsubscribe(unsubscribe).await
            }
            Some(client_frame::Kind::Credit(_)) => Ok(()),
            Some(client_frame::Kind::DurableAck(ack)) => {
                // Acknowledgements of a subscription that is gone (or never was durable) are
                // moot: its entries are delivered again to the consumer's next holder.
                if let Some(held) = self.durables.get(&ack.subscription_id) {
                    held.consumer.ack(&ack.sequences);
                }
                Ok(())
            }
            None => {
                stats::bump(&self.context.stats.malformed_frames);
                let status = Status::invalid_argument("unknown or empty client frame");
                self.ended_by_frame(&status);
                Err(status)
            }
        }
    }

    /// Records that a frame (malformed, oversized, unknown) ends the stream with `status`,
    /// and counts it against the agent's risk.
    fn ended_by_frame(&self, status: &Status) {
        self.watch.refused();
        self.context.authz.record_refusal(
            &self.principal,
            "session",
            "Session",
            &format!("a frame ended the stream: {}", status.message()),
        );
    }

    /// Ends subscription `id`: a durable consumer is released, a live subscription leaves
    /// the router.
    fn end_subscription(&mut self, id: u64) {
        match self.durables.remove(&id) {
            Some(held) => held.release(),
            None => {
                self.context.router.unsubscribe(self.id, id);
            }
        }
    }

    /// Removes the session's subscriptions from the router.
    pub(crate) fn finish(&mut self) {
        for (_, held) in self.durables.drain() {
            held.release();
        }
        self.context.router.remove_session(self.id);
        self.context.grants.forget_session(self.id);
        self.subscriptions.clear();
    }

    async fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), Status> {
        let id = subscribe.subscription_id;
        if let Err(refused) = self.check_subscription_rate() {
            return self.refuse(id, refused).await;
        }
        self.watch.subscribed(Some(&subscribe.pattern));
        if let Err(refused) = self.audit_available().await {
            return self.refuse(id, refused).await;
        }
        if !subscribe.durable.is_empty() {
            return match self.subscribe_durable(&subscribe) {
                Ok(start) => self.ack_then(id, Some(start)).await,
                Err(refused) => self.refuse(id, refused).await,
            };
        }
        match self.check_subscribe(&subscribe) {
            Ok(pattern) => {
                let subscriber = Subscriber {
                    session: self.id,
                    principal: self.principal.clone(),
                    outbound: self.outbound.clone(),
                    connection: self.connection.clone(),
                    gate: self.gate.clone(),
                };
                self.context
                    .router
                    .subscribe(&subscriber, id, pattern.clone());
                self.subscriptions.insert(id, pattern);
                self.ack(id).await
            }
            Err(refused) => self.refuse(id, refused).await,
        }
    }

    /// Takes hold of a durable consumer (made at the first subscription) and makes its
    /// delivery task, which starts once told that the subscription's `Ack` is queued (so
    /// that none of its deliveries comes before it); the pattern is authorized as any
    /// subscription's.
    fn subscribe_durable(&mut self, subscribe: &Subscribe) -> Result<Start, Refused> {
        let pattern = self.check_subscribe(subscribe)?;
        let stream = self
            .context
            .streams
            .for_pattern(&pattern)
            .cloned()
            .ok_or_else(|| DurableError::NoStream(pattern.to_string()))?;
        let consumer = stream.hold(&subscribe.durable, &self.principal, &pattern, self.id)?;
        let id = subscribe.subscription_id;
        let (start, started) = oneshot::channel();
        let outlet = durable::Outlet {
            subscription_id: id,
            outbound: self.outbound.clone(),
            gate: self.gate.clone(),
            connection: self.connection.clone(),
            slow_consumer_timeout: self.context.slow_consumer_timeout,
        };
        let held = stream.deliver(consumer, outlet, started);
        self.durables.insert(id, held);
        self.subscriptions.insert(id, pattern);
        Ok(start)
    }

    fn check_subscribe(&mut self, subscribe: &Subscribe) -> Result<ChannelPattern, Refused> {
        if self.subscriptions.contains_key(&subscribe.subscription_id) {
            return Err(Refused::new(
                RefusalCode::DuplicateSubscription,
                "the subscription id is in use",
            ));
        }
        if self.subscriptions.len() >= self.context.max_subscriptions {
            return Err(Refused::new(
                RefusalCode::TooManySubscriptions,
                format!(
                    "the session holds the maximum of {} subscriptions",
                    self.context.max_subscriptions
                ),
            ));
        }
        let pattern = ChannelPattern::parse(&subscribe.pattern)
            .map_err(|e| Refused::new(RefusalCode::Malformed, e))?;
        let in_replies = |p: &ChannelPattern| p.tokens().next() == Some(REPLY_PREFIX);
        if in_replies(&pattern)
            && self
                .subscriptions
                .values()
                .filter(|p| in_replies(p))
                .count()
                >= MAX_REPLY_SUBSCRIPTIONS
        {
            // Each is matched against every channel of a batch of replies to the namespace:
            // a few serve every use (the SDK holds one).
            return Err(Refused::new(
                RefusalCode::TooManySubscriptions,
                format!(
                    "the session holds the maximum of {MAX_REPLY_SUBSCRIPTIONS} subscriptions \
                     in its reply namespace"
                ),
            ));
        }
        let allowed = match self
            .authz
            .subscribe_allowed(&self.context.authz, &pattern, now_ms())
        {
            Ok(allowed) => allowed,
            Err(denied) => {
                return Err(self.denied(denied, format_args!("subscribing to `{pattern}`")));
            }
        };
        self.context
            .authz
            .charge(&self.principal, &allowed, 1, "subscriptions")
            .map_err(|hit| self.limited(hit))?;
        Ok(pattern)
    }

    /// Decides every subscription again at the current policy epoch, and ends (with
    /// `SubscriptionEnded`) each one no longer allowed.
    pub(crate) async fn redecide(&mut self) -> Result<(), Status> {
        let epoch = *self.epoch.borrow_and_update();
        let now = now_ms();
        let mut ended = Vec::new();
        for (&id, pattern) in &self.subscriptions {
            // Undecidable while the audit log is failed: ended all the same, `UNAVAILABLE`.
            if let Err(denied) = self.authz.subscribe(&self.context.authz, pattern, now) {
                let code = if denied.by_policy() {
                    RefusalCode::Denied
                } else {
                    RefusalCode::Unavailable
                };
                let reason = if denied.by_policy() {
                    format!("the subscription to `{pattern}` is no longer allowed: {denied}")
                } else {
                    format!("the subscription to `{pattern}` can't be decided again: {denied}")
                };
                ended.push((id, code, reason));
            }
        }
        ended.sort_unstable_by_key(|(id, ..)| *id);
        for (id, code, reason) in ended {
            self.subscriptions.remove(&id);
            self.end_subscription(id);
            stats::bump(&self.context.stats.subscriptions_ended);
            let refused = Refused::new(code, reason);
            self.send(server_frame::Kind::SubscriptionEnded(SubscriptionEnded {
                subscription_id: id,
                code: refused.code.as_u32(),
                reason: refused.reason,
            }))
            .await?;
        }
        self.gate.decided_at(epoch);
        Ok(())
    }

    /// Decides every subscription again, afresh, if a running policy reads `context.now`: a
    /// subscription a time window allowed ends within [`authz::TIME_RECHECK`] of its end.
    pub(crate) async fn recheck_time(&mut self) -> Result<(), Status> {
        if !self.context.authz.reads_time() || self.subscriptions.is_empty() {
            return Ok(());
        }
        self.authz.forget();
        self.redecide().await
    }

    async fn unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Result<(), Status> {
        let id = unsubscribe.subscription_id;
        if let Err(refused) = self.check_subscription_rate() {
            return self.refuse(id, refused).await;
        }
        self.watch.subscribed(None);
        if self.subscriptions.remove(&id).is_some() {
            self.end_subscription(id);
            self.ack(id).await
        } else {
            let refused = Refused::new(RefusalCode::UnknownSubscription, "no such subscription");
            self.refuse(id, refused).await
        }
    }

    async fn publish(&mut self, publish: Publish) -> Result<(), Status> {
        let started = Instant::now();
        let answered = self.publish_timed(publish).await;
        self.context
            .stats
            .traffic
            .publish
            .observe(started.elapsed());
        answered
    }

    async fn publish_timed(&mut self, publish: Publish) -> Result<(), Status> {
        let request_id = publish.request_id;
        let mut traffic = Traffic::default();
        let classes = match self.check_limits(&publish, &mut traffic) {
            Ok(classes) => classes,
            Err(hit) => {
                let refused = self.limited(hit);
                return self.refuse(request_id, refused).await;
            }
        };
        if let Err(refused) = self.audit_available().await {
            return self.refuse(request_id, refused).await;
        }
        let checked = match self.check_publish(publish, &classes) {
            Ok(checked) => checked,
            Err(refused) => return self.refuse(request_id, refused).await,
        };
        let (taken, issued) = match self.check_replies_and_requests(&checked).await {
            Ok(changes) => changes,
            Err(refused) => return self.refuse(request_id, refused).await,
        };
        // Refused from here on, before anything is routed or stored, the publish undoes what
        // it did to the reply grants: the ones it took come back (a reply refused with others
        // may be sent again), the ones it issued go.
        let grants = &self.context.grants;
        let mut held = Vec::new();
        if let Some(new) = checked.held {
            let (message_id, channel) = (new.id.clone(), new.channel.to_string());
            match self.context.authz.holds().hold(new, now_ms()).await {
                Ok(expires_at_ms) => {
                    self.record_held(&message_id, &channel, expires_at_ms);
                    stats::bump(&self.context.stats.held_messages);
                    held.push(Held {
                        message_id,
                        channel,
                        expires_at_ms,
                    });
                }
                Err(e) => {
                    let code = match e {
                        HoldError::Store => {
                            stats::bump(&self.context.stats.held_store_failures);
                            RefusalCode::Unavailable
                        }
                        // A message of this ID already held: the sender's again, sealed anew.
                        HoldError::Replayed(_) => {
                            stats::bump(&self.context.stats.replays);
                            RefusalCode::Replay
                        }
                        _ => RefusalCode::TooManyHeld,
                    };
                    grants.undo(taken, issued);
                    return self
                        .refuse(request_id, Refused::new(code, e.to_string()))
                        .await;
                }
            }
        }
        for (stream, _) in &checked.durable {
            stream.room().await;
        }
        // Stored in every durable channel or in none, and recorded as delivered only once the
        // channels take it (a publish with a durable entry holds nothing for approval).
        let auditor = self.context.authz.auditor();
        let audited = checked.audited.into_iter().map(Event::DeliveredBatch);
        let recorded = || {
            auditor
                .submit_all(self.principal.as_str(), Outcome::Success, audited)
                .map_err(|e| Refused::new(RefusalCode::Unavailable, e.to_string()))
        };
        let stored = match durable::submit_all(checked.durable, recorded) {
            Ok(stored) => stored,
            Err(refused) => {
                grants.undo(taken, issued);
                return self.refuse(request_id, refused).await;
            }
        };
        if !checked.keys.is_empty() {
            self.context.streams.remember(checked.keys);
        }
        let groups = checked.groups;
        let mut attempted = 0;
        let mut failed = 0;
        let mut slow = 0;
        let mut withheld = 0;
        for (channel, body) in groups {
            let router = &self.context.router;
            let outcome = match checked.roots.iter().find(|(root, _)| *root == channel) {
                Some((_, replies)) => router.route_any(replies, body).await,
                None => router.route(&channel, body).await,
            };
            attempted += outcome.delivered + outcome.failed;
            failed += outcome.failed;
            slow += outcome.slow_consumers;
            withheld += outcome.withheld;
        }
        let stats = &self.context.stats;
        for (class, (messages, bytes)) in Class::ALL.into_iter().zip(traffic) {
            if messages > 0 {
                stats.traffic.routed(class, messages, bytes);
            }
        }
        stats::add(&stats.withheld_deliveries, withheld as u64);
        stats::add(&stats.delivery_failures, failed as u64);
        stats::add(&stats.slow_consumer_disconnects, slow as u64);
        if failed == 0 {
            self.answer_then(
                server_frame::Kind::Ack(Ack { request_id, held }),
                stored,
                None,
            )
            .await
        } else {
            let reason = format!(
                "{failed} of {attempted} deliveries failed; {slow} slow subscriber(s) disconnected"
            );
            self.refuse(
                request_id,
                Refused::new(RefusalCode::DeliveryFailed, reason),
            )
            .await
        }
    }

    /// Refuses a direct nobody would receive, takes the reply grants a publish answers on,
    /// and grants the recipients of each request one reply (before routing, so that no reply
    /// can overtake its grant). The grants taken are returned, to give back should the
    /// publish be refused before it is routed; refused here, it keeps none.
    async fn check_replies_and_requests(
        &self,
        checked: &Checked,
    ) -> Result<(Taken, Issued), Refused> {
        let now = now_ms();
        let grants = &self.context.grants;
        // Each channel's recipients are looked up once, however many of the publish's
        // requests go there.
        let mut recipients: HashMap<&Channel, Arc<[Principal]>> = HashMap::new();
        for (channel, _) in &checked.groups {
            if channel.tokens().next() == Some(DIRECT_PREFIX) {
                let found = self.context.router.subscribers(channel).await;
                if found.is_empty() {
                    return Err(Refused::new(
                        RefusalCode::NoRecipient,
                        format!("nobody is subscribed to the direct channel `{channel}`"),
                    ));
                }
                recipients.insert(channel, found.into());
            }
        }
        // Every grant of the publish, or none: it is refused whole.
        let mut issues = Vec::with_capacity(checked.requests.len());
        for (channel, reply_to, expires_at_ms) in &checked.requests {
            let grantees = match recipients.get(channel) {
                Some(grantees) => grantees.clone(),
                None => {
                    let found: Arc<[Principal]> =
                        self.context.router.subscribers(channel).await.into();
                    recipients.insert(channel, found.clone());
                    found
                }
            };
            issues.push((reply_to.clone(), grantees, *expires_at_ms));
        }
        // All the publish's grants or none: it is refused whole, and a reply it carried may
        // be sent again.
        let taken = match grants.take_all(&self.principal, &checked.replies, now) {
            Ok(taken) => taken,
            Err(reply) => {
                stats::bump(&self.context.stats.denials);
                return Err(Refused::new(
                    RefusalCode::Denied,
                    format!("the reply grant on `{reply}` was used or has expired"),
                )
                .unscored());
            }
        };
        match grants.issue_all(self.id, &issues, now) {
            Ok(issued) => Ok((taken, issued)),
            Err(e) => {
                grants.undo(taken, Issued::default());
                Err(Refused::new(RefusalCode::TooManyReplyGrants, e))
            }
        }
    }

    /// Checks a publish and encodes each channel's share; refuses all of it on any failure.
    fn check_publish(
        &mut self,
        mut publish: Publish,
        classes: &[(Channel, u64)],
    ) -> Result<Checked, Refused> {
        let purpose = std::mem::take(&mut publish.purpose);
        if publish.sender_keys.is_empty() && publish.batches.is_empty() {
            return Err(Refused::new(RefusalCode::Malformed, "empty publish"));
        }
        let mut groups: Vec<Group> = Vec::new();
        // The sender is bound to the connection's identity before anything else is looked at.
        for sender in publish
            .sender_keys
            .iter()
            .map(|k| &k.sender)
            .chain(publish.batches.iter().map(|b| &b.sender))
        {
            self.check_sender(sender)?;
        }
        let durable_on = !self.context.streams.is_empty();
        let mut keys = Vec::new();
        let mut root_keys = Vec::new();
        for sender_key in publish.sender_keys {
            if let Some(root) = reply_root(&sender_key.channel) {
                // Remembered under the root, for the replies under it a stream may capture.
                if durable_on && self.context.streams.captures_under(&root) {
                    keys.push((
                        sender_key.sender.clone(),
                        sender_key.channel.clone(),
                        sender_key.epoch,
                        Bytes::from(sender_key.encode_to_vec()),
                    ));
                }
                let parsed = SenderKeyIn::from_wire(sender_key).map_err(|e| {
                    Refused::new(RefusalCode::Malformed, format!("sender key: {e}"))
                })?;
                root_keys.push((root, parsed));
                continue;
            }
            // Remembered only for a channel a stream captures (others' keys can't crowd those
            // out).
            if durable_on
                && Channel::parse(&sender_key.channel)
                    .is_ok_and(|c| self.context.streams.for_channel(&c).is_some())
            {
                keys.push((
                    sender_key.sender.clone(),
                    sender_key.channel.clone(),
                    sender_key.epoch,
                    Bytes::from(sender_key.encode_to_vec()),
                ));
            }
            let group = self.group(&mut groups, &sender_key.channel)?;
            prost::encoding::message::encode(SENDER_KEYS_TAG, &sender_key, &mut group.sender_keys);
            SenderKeyIn::from_wire(sender_key)
                .map_err(|e| Refused::new(RefusalCode::Malformed, format!("sender key: {e}")))?;
        }
        let mut batches = Vec::with_capacity(publish.batches.len());
        for batch in publish.batches {
            // A batch of replies names its envelopes' channels, and is on a reply namespace
            // root; no other batch may do either (checked before any grant).
            let group = if batch.envelopes.iter().any(|e| !e.channel.is_empty()) {
                self.replies_group(&mut groups, &batch)?
            } else if batch.channel.starts_with(REPLY_PREFIX)
                && Channel::parse(&batch.channel).is_ok_and(|c| namespace::is_reply_root(&c))
            {
                return Err(Refused::new(
                    RefusalCode::Malformed,
                    format!(
                        "batch: a batch on the reply namespace root `{}` must name each \
                         envelope's reply channel",
                        batch.channel
                    ),
                ));
            } else {
                self.group(&mut groups, &batch.channel)?
            };
            for envelope in &batch.envelopes {
                if envelope.reply_to.is_empty() {
                    group.plain += 1;
                } else {
                    group.requests += 1;
                }
            }
            prost::encoding::message::encode(BATCHES_TAG, &batch, &mut group.batches);
            let batch = SignedBatchIn::from_wire(batch)
                .map_err(|e| Refused::new(RefusalCode::Malformed, format!("batch: {e}")))?;
            batches.push(batch);
        }
        // A responder's sender key for a requester's reply namespace goes with the replies
        // into it (each under its own reply grant), and nowhere else. Copied into every group
        // under its root, it may not make the publish's shares more than twice the frame size
        // limit in all (a large key and many one-reply groups would be a gigabyte).
        let mut room = self
            .context
            .limits
            .max_frame_bytes
            .saturating_mul(2)
            .saturating_sub(
                groups
                    .iter()
                    .map(|g| g.sender_keys.len() + g.batches.len())
                    .sum(),
            );
        for (root, key) in root_keys {
            let mut carried = false;
            let len = prost::encoding::message::encoded_len(SENDER_KEYS_TAG, key.to_wire());
            for group in groups.iter_mut().filter(|g| {
                g.channel == root || namespace::is_reply_channel_under(&root, &g.channel)
            }) {
                room = room.checked_sub(len).ok_or_else(|| {
                    Refused::new(
                        RefusalCode::TooLarge,
                        "the reply sender keys, copied to each reply they go with, would exceed \
                         twice the frame size limit: send fewer replies per publish",
                    )
                })?;
                prost::encoding::message::encode(
                    SENDER_KEYS_TAG,
                    key.to_wire(),
                    &mut group.sender_keys,
                );
                carried = true;
            }
            if !carried {
                return Err(self.deny(format!(
                    "a sender key for the reply namespace `{root}` must come with a reply into it"
                )));
            }
        }
        let (requests, replies) = self.check_reply_fields(&batches, &groups)?;
        let mut roots: Vec<(Channel, Vec<Channel>)> = Vec::new();
        for batch in batches.iter().filter(|b| b.is_replies()) {
            let channels = batch.envelopes().iter().filter_map(EnvelopeIn::channel);
            match roots.iter_mut().find(|(root, _)| root == batch.channel()) {
                Some((_, routed)) => routed.extend(channels.cloned()),
                None => roots.push((batch.channel().clone(), channels.cloned().collect())),
            }
        }
        self.authorize(&mut groups)?;
        // A class's limit is shared by its publishers: taken only by a publish that may go,
        // and before its sequence numbers count as seen (the same publish may come again).
        if let Err(hit) = self
            .context
            .limiters
            .check_channel_classes(classes.iter().map(|(c, n)| (c, *n)))
        {
            return Err(self.limited(hit));
        }
        // Before anything is recorded: a refused held group leaves no trace.
        let held = self.check_held(&mut groups, purpose)?;
        // A hold is stored before the durable channels decide: refused by one of them, the
        // publish would leave its held message behind.
        if held.is_some()
            && durable_on
            && groups
                .iter()
                .any(|g| self.context.streams.for_channel(&g.channel).is_some())
        {
            return Err(self.deny(
                "a publish holding a message for approval can't carry messages for durable \
                 channels: publish those in frames of their own"
                    .to_owned(),
            ));
        }
        let headers: Vec<Header<'_>> = batches
            .iter()
            .flat_map(|batch| {
                let channel = batch.channel();
                // A reply of a batch of replies is numbered on its own channel here, as when
                // it goes alone: each responder session's epochs would otherwise compete for
                // the root's few windows (receivers keep the root's, PROTOCOL.md §7).
                batch
                    .envelopes()
                    .iter()
                    .map(move |e| (e.channel().unwrap_or(channel), e.epoch(), e.seq()))
            })
            .collect();
        if let Err(replay) = replay::check_and_record(&self.replay, &headers) {
            stats::bump(&self.context.stats.replays);
            return Err(Refused::new(RefusalCode::Replay, replay));
        }
        let audited = if self.context.authz.auditor().is_on() {
            batches
                .iter()
                .filter(|batch| groups.iter().any(|g| &g.channel == batch.channel()))
                .map(delivered)
                .collect()
        } else {
            Vec::new()
        };
        let groups: Vec<(Channel, Bytes)> = groups
            .into_iter()
            .map(|group| {
                // Sender keys go with the first batches of an epoch only: most bodies are
                // the batches alone, and need no copy.
                let body = if group.sender_keys.is_empty() {
                    group.batches
                } else {
                    let mut body = group.sender_keys;
                    body.extend_from_slice(&group.batches);
                    body
                };
                if max_deliver_len(body.len()) > self.context.limits.max_frame_bytes {
                    return Err(Refused::new(
                        RefusalCode::TooLarge,
                        "the delivery would exceed the frame size limit",
                    ));
                }
                Ok((group.channel, Bytes::from(body)))
            })
            .collect::<Result<_, _>>()?;
        let durable = if durable_on {
            self.durable_entries(&groups, &batches, &keys)?
        } else {
            Vec::new()
        };
        Ok(Checked {
            groups,
            requests,
            replies,
            roots,
            held,
            audited,
            durable,
            keys,
        })
    }

    /// The entries to store for the groups captured by durable channels: each group's body
    /// with the sender keys its batches need that it does not carry. Refused if an entry,
    /// with those keys, would be a delivery larger, costlier to decode or with more sender keys
    /// than a consumer takes (the keys of earlier publishes are not in the publish's own
    /// bounds).
    fn durable_entries(
        &self,
        groups: &[(Channel, Bytes)],
        batches: &[SignedBatchIn],
        keys: &[(String, String, u64, Bytes)],
    ) -> Result<Vec<DurableEntry>, Refused> {
        groups
            .iter()
            .filter_map(|(channel, body)| {
                let mut epochs: Vec<u64> = batches
                    .iter()
                    .filter(|b| b.channel() == channel)
                    .flat_map(|b| b.envelopes().iter().map(|e| e.epoch()))
                    .collect();
                epochs.sort_unstable();
                epochs.dedup();
                // A reply's key may be its namespace root's (copied into its group).
                let root = namespace::reply_root_name(channel);
                let carried: Vec<u64> = keys
                    .iter()
                    .filter(|k| k.1 == channel.as_str() || Some(k.1.as_str()) == root)
                    .map(|k| k.2)
                    .collect();
                self.durable_entry(channel, &epochs, &carried, body)
            })
            .collect()
    }

    /// The durable entry of a channel group on `channel` with `body`, whose batches are of
    /// `epochs` and which carries the sender keys of `carried`, if a stream captures the
    /// channel: the keys it needs and does not carry put in (remembered from what was routed
    /// before), refused if it would then be a delivery larger, costlier to decode or with more
    /// sender keys than a consumer takes, or if a key it needs is not remembered.
    fn durable_entry(
        &self,
        channel: &Channel,
        epochs: &[u64],
        carried: &[u64],
        body: &[u8],
    ) -> Option<Result<DurableEntry, Refused>> {
        let (stream, entry) = self.context.streams.checked_entry(
            channel,
            self.principal.as_str(),
            epochs,
            carried,
            body,
            &self.context.limits,
        )?;
        Some(match entry {
            Ok(e) => Ok((stream, e)),
            Err(durable::EntryError::TooLarge) => Err(Refused::new(
                RefusalCode::TooLarge,
                format!(
                    "the durable entry for `{channel}` would exceed what a consumer takes in one \
                     delivery, with the sender keys of earlier publishes its batches need: \
                     publish fewer epochs per batch, or their sender keys with them"
                ),
            )),
            Err(durable::EntryError::MissingKey(epoch)) => Err(Refused::new(
                RefusalCode::Unavailable,
                format!(
                    "the sender key of epoch {epoch} on `{channel}`, which its batches need, is \
                     neither in the publish nor known to the hub: stored, the entry would never \
                     open; publish again, sealed anew"
                ),
            )),
        })
    }

    /// Takes the group held for approval out of `groups`, if there is one: it must be one
    /// batch of one envelope, not a request, the only held group of the frame, and come with
    /// a purpose.
    fn check_held(
        &self,
        groups: &mut Vec<Group>,
        purpose: String,
    ) -> Result<Option<NewHold>, Refused> {
        let held: Vec<usize> = (0..groups.len())
            .filter(|&i| groups.get(i).is_some_and(|g| g.held))
            .collect();
        let index = match held.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => {
                return Err(self.deny(
                    "several channels of this publish hold messages for approval: publish one held message per frame".to_owned(),
                ));
            }
        };
        let group = groups.remove(index);
        let channel = group.channel;
        let refuse = |why: &str| {
            Refused::new(
                RefusalCode::Denied,
                format!("`{channel}` holds messages for approval: {why}"),
            )
        };
        if purpose.trim().is_empty() {
            return Err(refuse("state a purpose for the approvers"));
        }
        if purpose.chars().any(entente_types::text::is_deceptive) {
            // Approvers read it in a line of its own: no line breaks, terminal controls, or
            // invisible characters that reorder what they see.
            return Err(refuse(
                "a purpose may not hold control or invisible formatting characters",
            ));
        }
        let deliver: Deliver = entente_wire::decode(&group.batches, &self.context.limits)
            .map_err(|e| Refused::new(RefusalCode::Malformed, format!("batch: {e}")))?;
        let [batch] = <[SignedBatch; 1]>::try_from(deliver.batches)
            .map_err(|_| refuse("publish one message per batch and per frame on it"))?;
        let [envelope] = batch.envelopes.as_slice() else {
            return Err(refuse("publish one message per batch and per frame on it"));
        };
        let id = MessageId::from_slice(envelope.message_id.as_slice())
            .map_err(|e| Refused::new(RefusalCode::Malformed, format!("message id: {e}")))?;
        let mut body = group.sender_keys;
        body.extend_from_slice(&group.batches);
        if max_deliver_len(body.len()) > self.context.limits.max_frame_bytes {
            return Err(Refused::new(
                RefusalCode::TooLarge,
                "the delivery would exceed the frame size limit",
            ));
        }
        // A durable channel capturing it stores it once released: checked now as any entry
        // (a consumer's delivery within the bounds; the sender keys it needs carried or
        // remembered, and put in its body now, so that what is released opens), rather than
        // stored unopenable, or refused, only after its approvals.
        let keys: Deliver = entente_wire::decode(&body, &self.context.limits)
            .map_err(|e| Refused::new(RefusalCode::Malformed, format!("batch: {e}")))?;
        let carried: Vec<u64> = keys.sender_keys.iter().map(|k| k.epoch).collect();
        if let Some(entry) = self.durable_entry(&channel, &[envelope.epoch], &carried, &body) {
            let (_, entry) = entry?;
            let name = 2 + channel.as_str().len();
            body = entry.get(name..).unwrap_or_default().to_vec();
        }
        Ok(Some(NewHold {
            id: id.to_string(),
            sender: self.principal.clone(),
            hash: entente_crypto::envelope_digest(&batch.sender, &batch.channel, envelope),
            size: u32::try_from(envelope.ciphertext.len()).unwrap_or(u32::MAX),
            envelope_expires_at_ms: envelope.expires_at_ms,
            channel,
            body: Bytes::from(body),
            batch,
            purpose,
            credentials: self.credentials.now(),
        }))
    }

    /// A `reply_to` must lie in the sender's own reply namespace; a publish on a reply
    /// channel carries exactly one batch there. Returns the requests (channel, `reply_to`,
    /// latest expiry) and the reply channels.
    #[expect(clippy::type_complexity, reason = "a private pair of lists")]
    fn check_reply_fields(
        &self,
        batches: &[SignedBatchIn],
        groups: &[Group],
    ) -> Result<(Vec<(Channel, Channel, u64)>, Vec<Channel>), Refused> {
        let mut requests: HashMap<(&Channel, &Channel), u64> = HashMap::new();
        let mut replies: Vec<Channel> = Vec::new();
        let mut answered_once: HashSet<&Channel> = HashSet::new();
        for batch in batches {
            let channel = batch.channel();
            // A batch of replies (on a reply namespace root) answers on each envelope's
            // channel, one envelope per grant; any other batch on a reply channel is that
            // channel's one reply batch.
            let answered: Vec<&Channel> = if batch.is_replies() {
                batch
                    .envelopes()
                    .iter()
                    .filter_map(EnvelopeIn::channel)
                    .collect()
            } else if channel.tokens().next() == Some(REPLY_PREFIX) {
                vec![channel]
            } else {
                Vec::new()
            };
            for reply in answered {
                if !answered_once.insert(reply) {
                    return Err(self.deny(format!("a reply grant covers one batch on `{reply}`")));
                }
                replies.push(reply.clone());
            }
            for envelope in batch.envelopes() {
                let Some(reply_to) = envelope.reply_to() else {
                    continue;
                };
                // A reply that asks in turn is routed on its own reply channel.
                let channel = envelope.channel().unwrap_or(channel);
                if !namespace::is_reply_channel_of(&self.principal, reply_to) {
                    return Err(self.deny(format!(
                        "reply_to `{reply_to}` is outside the sender's reply namespace `{}`",
                        namespace::reply_pattern(&self.principal)
                    )));
                }
                let latest = requests.entry((channel, reply_to)).or_default();
                *latest = (*latest).max(envelope.expires_at_ms());
            }
        }
        // (A reply channel's group must hold its batch, not just a sender key, whatever a
        // batch of replies answers on it.)
        if let Some(group) = groups.iter().find(|g| {
            g.channel.tokens().next() == Some(REPLY_PREFIX)
                && !namespace::is_reply_root(&g.channel)
                && (!answered_once.contains(&g.channel) || g.batches.is_empty())
        }) {
            return Err(self.deny(format!(
                "a publish on the reply channel `{}` must carry its reply batch",
                group.channel
            )));
        }
        let requests = requests
            .into_iter()
            .map(|((channel, reply_to), expires)| (channel.clone(), reply_to.clone(), expires))
            .collect();
        Ok((requests, replies))
    }

    /// Asks the policies about each channel group (`_reply` groups are the reply grants'):
    /// `request` for a group carrying a request, `direct` or `publish` for one carrying
    /// anything else. Each decision is made once per group of the frame; what it allows is
    /// charged to its permits' `@rate`s (the requests to the `request` decision, the rest
    /// to the other).
    fn authorize(&mut self, groups: &mut [Group]) -> Result<(), Refused> {
        let now = now_ms();
        for group in groups {
            let channel = &group.channel;
            if channel.tokens().next() == Some(REPLY_PREFIX) {
                continue;
            }
            let request = (group.requests > 0).then_some((Action::Request, group.requests));
            let transport = (group.plain > 0 || group.requests == 0)
                .then(|| (authz::transport_action(channel), group.plain));
            // A request can't wait for approval: on a channel that holds what is published,
            // it is refused rather than let through on its `request` permit.
            if group.requests > 0
                && authz::transport_action(channel) == Action::Publish
                && self.authz.would_hold(&self.context.authz, channel, now)
            {
                return Err(self.deny(format!(
                    "`{channel}` holds messages for approval, and a request can't be held: \
                     publish the message with a purpose instead"
                )));
            }
            for (action, count) in [request, transport].into_iter().flatten() {
                let decided = if action == Action::Publish && group.requests == 0 {
                    // Only plain publishes can be held for approval.
                    self.authz
                        .publish_or_hold(&self.context.authz, channel, now)
                        .map(|(publishing, allowed)| {
                            group.held = publishing == Publishing::Held;
                            allowed
                        })
                } else {
                    self.authz
                        .publish(&self.context.authz, action, channel, now)
                };
                let allowed = match decided {
                    Ok(allowed) => allowed,
                    Err(denied) => {
                        let what = match action {
                            Action::Request => format!("a request on `{channel}`"),
                            Action::Direct => format!("a direct message on `{channel}`"),
                            _ => format!("publishing to `{channel}`"),
                        };
                        return Err(self.denied(denied, what));
                    }
                };
                if let Err(hit) =
                    self.context
                        .authz
                        .charge(&self.principal, &allowed, count, "messages")
                {
                    return Err(self.limited(hit));
                }
            }
        }
        Ok(())
    }

    /// A decision's denial as a frame's refusal (its record made by the decision), `what`
    /// naming the act: `DENIED`, counted, or `UNAVAILABLE` while the audit log is failed.
    fn denied(&self, denied: Denied, what: impl std::fmt::Display) -> Refused {
        let refused = match denied {
            Denied::Policy(why) => {
                stats::bump(&self.context.stats.denials);
                Refused::new(RefusalCode::Denied, format!("{what} is denied: {why}"))
            }
            Denied::Unaudited(e) => Refused::new(RefusalCode::Unavailable, e.to_string()),
        };
        refused.recorded()
    }

    /// Waits while the audit log's writer is behind (what bounds the records a flood of
    /// requests, even refused ones, can queue), and refuses everything while the log is
    /// failed: the hub does nothing it can't record.
    async fn audit_available(&self) -> Result<(), Refused> {
        let auditor = self.context.authz.auditor();
        if !auditor.is_on() {
            return Ok(());
        }
        auditor.room().await;
        // The log is failed: the refusal can't be recorded either.
        auditor
            .check()
            .map_err(|e| Refused::new(RefusalCode::Unavailable, e.to_string()).recorded())
    }

    /// Records that a publish is held for approval (a decision that denies it for now), so
    /// that every held message is in the log from its start.
    fn record_held(&self, message_id: &str, channel: &str, expires_at_ms: u64) {
        let authz = &self.context.authz;
        let event = Event::Decision(entente_audit::Decision {
            principal: audit::clear(self.principal.as_str()),
            action: audit::clear(Action::Publish.name()),
            resource: audit::clear(&format!("Channel::{channel:?}")),
            allowed: false,
            policies: Vec::new(),
            reason: audit::clear(&format!(
                "held for approval as message `{message_id}` until {expires_at_ms} (Unix ms)"
            )),
            policy_epoch: authz.engine().epoch(),
        });
        // Answered once durable, like every answer; a failed log fails that.
        let _ = authz
            .auditor()
            .submit(self.principal.as_str(), Outcome::Denied, event);
    }

    /// Checks a publish against the rate limits (docs/THREAT_MODEL.md, abuse), before anything
    /// else is done with it. Every publish counts as one message at least, so that frames
    /// without envelopes can't flood either.
    fn check_limits(
        &self,
        publish: &Publish,
        traffic: &mut Traffic,
    ) -> Result<Vec<(Channel, u64)>, Hit> {
        let mut messages = 0u64;
        // Sender keys count as bytes too: a publish of keys alone (their recipients a peer's
        // to choose) is no free channel past the byte limit and the anomaly watch.
        let mut bytes = publish
            .sender_keys
            .iter()
            .map(|k| prost::Message::encoded_len(k) as u64)
            .fold(0u64, u64::saturating_add);
        for batch in &publish.batches {
            messages = messages.saturating_add(batch.envelopes.len() as u64);
            let kind = batch.channel.split('.').next();
            for envelope in &batch.envelopes {
                let size = envelope.ciphertext.len() as u64;
                bytes = bytes.saturating_add(size);
                let class = match kind {
                    Some(REPLY_PREFIX) => Class::Reply,
                    Some(DIRECT_PREFIX) => Class::Direct,
                    _ if !envelope.reply_to.is_empty() => Class::Request,
                    _ => Class::PubSub,
                };
                if let Some((m, b)) = traffic.get_mut(class as usize) {
                    *m += 1;
                    *b += size;
                }
            }
        }
        let limiters = &self.context.limiters;
        if self.watch.throttled() {
            limiters.check_throttled(&self.principal, messages.max(1))?;
        }
        // Channels that don't parse are refused later, whole, as malformed.
        // A batch of replies counts on each reply's own channel.
        let channels: Vec<(Channel, u64)> = if limiters.has_channel_classes() {
            let mut channels = Vec::new();
            for b in &publish.batches {
                if b.envelopes.first().is_some_and(|e| !e.channel.is_empty()) {
                    channels.extend(
                        b.envelopes
                            .iter()
                            .filter_map(|e| Some((Channel::parse(&e.channel).ok()?, 1))),
                    );
                } else if let Ok(channel) = Channel::parse(&b.channel) {
                    channels.push((channel, b.envelopes.len() as u64));
                }
            }
            channels
        } else {
            Vec::new()
        };
        // The channel classes once the publish is authorized (`publish_timed`).
        limiters.check_publish(&self.principal, messages.max(1), bytes, std::iter::empty())?;
        self.watch.published(
            messages,
            bytes,
            publish.batches.iter().map(|b| b.channel.as_str()),
        );
        Ok(channels)
    }

    /// The agent's limit of subscribe and unsubscribe frames (and its throttled rate, while
    /// its risk score throttles it), checked first on each.
    fn check_subscription_rate(&mut self) -> Result<(), Refused> {
        let limiters = &self.context.limiters;
        let checked = if self.watch.throttled() {
            limiters.check_throttled(&self.principal, 1)
        } else {
            Ok(())
        };
        checked
            .and_then(|()| limiters.check_subscription(&self.principal))
            .map_err(|hit| self.limited(hit))
    }

    /// The refusal of a publish, subscribe or unsubscribe a limit refused: counted, and
    /// recorded (an agent's run of one limit's refusals on one scope together, hub-wide,
    /// [`crate::calls::LimitRuns`]).
    fn limited(&mut self, hit: Hit) -> Refused {
        self.watch.limited();
        stats::bump(&self.context.stats.rate_limited);
        self.context.stats.traffic.rate_limited(hit.limit);
        let refused = Refused {
            code: RefusalCode::RateLimited,
            reason: bounded(hit.reason.clone()),
            retry_after_ms: hit.retry_after_ms(),
            recorded: true,
            scored: true,
            told: None,
        };
        crate::calls::limited_in_session(
            &self.context.limit_runs,
            self.context.authz.auditor(),
            &self.principal,
            hit,
        );
        refused
    }

    /// A `DENIED` refusal, counted.
    fn deny(&self, reason: String) -> Refused {
        stats::bump(&self.context.stats.denials);
        Refused::new(RefusalCode::Denied, reason)
    }

    /// The group of `channel`, created on first use after parsing (and, for a `_reply`
    /// channel, the reply-grant check; policies are asked once the groups are complete).
    fn group<'g>(
        &self,
        groups: &'g mut Vec<Group>,
        channel: &str,
    ) -> Result<&'g mut Group, Refused> {
        if let Some(index) = groups.iter().position(|g| g.channel.as_str() == channel) {
            return groups
                .get_mut(index)
                .ok_or_else(|| Refused::new(RefusalCode::Malformed, "internal error"));
        }
        let channel = Channel::parse(channel)
            .map_err(|e| Refused::new(RefusalCode::Malformed, format!("channel: {e}")))?;
        if channel.tokens().next() == Some(REPLY_PREFIX) {
            // Only a reply grant opens a `_reply` channel; policies have no say.
            if !self
                .context
                .grants
                .may_reply(&self.principal, &channel, now_ms())
            {
                return Err(self
                    .deny(format!(
                        "no reply grant lets `{}` publish on `{channel}`: only the recipient of \
                         a request may reply, once, before it expires",
                        self.principal
                    ))
                    .unscored());
            }
        }
        groups.push(Group::new(channel));
        groups
            .last_mut()
            .ok_or_else(|| Refused::new(RefusalCode::Malformed, "internal error"))
    }

    /// The group of a batch of replies on a reply namespace root, created on first use: the
    /// root must be one, and every envelope's reply channel under it open to the sender by
    /// a reply grant (the batch's structure is checked when it is parsed).
    fn replies_group<'g>(
        &self,
        groups: &'g mut Vec<Group>,
        batch: &SignedBatch,
    ) -> Result<&'g mut Group, Refused> {
        let root = Channel::parse(&batch.channel)
            .map_err(|e| Refused::new(RefusalCode::Malformed, format!("channel: {e}")))?;
        if !namespace::is_reply_root(&root) {
            return Err(Refused::new(
                RefusalCode::Malformed,
                format!(
                    "batch: envelopes name their channels outside a reply namespace root (`{root}`)"
                ),
            ));
        }
        // The structure first, then what may refuse it, then the grants under one lock.
        let mut channels: Vec<Channel> = Vec::with_capacity(batch.envelopes.len());
        for envelope in &batch.envelopes {
            let channel = Channel::from_shared(envelope.channel.clone().into_shared())
                .ok()
                .filter(|c| namespace::is_reply_channel_under(&root, c))
                .ok_or_else(|| {
                    Refused::new(
                        RefusalCode::Malformed,
                        format!(
                            "batch: an envelope of a batch of replies on `{root}` names no reply \
                             channel under it"
                        ),
                    )
                })?;
            channels.push(channel);
        }
        let streams = &self.context.streams;
        let mut seen = std::collections::HashSet::with_capacity(channels.len());
        for channel in &channels {
            if !seen.insert(channel) {
                return Err(self.deny(format!("a reply grant covers one batch on `{channel}`")));
            }
            // What a durable channel captures is stored per channel: such a reply goes alone.
            // Not the responder's doing (it can't tell which reply channels a stream captures,
            // and the requester decides how many requests its replies answer at once): the
            // refusal does not count against its risk.
            if !streams.is_empty()
                && (streams.for_channel(channel).is_some() || streams.for_channel(&root).is_some())
            {
                return Err(self
                    .deny(format!(
                        "`{channel}` is captured by a durable channel: its reply must be sent \
                         alone, not in a batch of replies"
                    ))
                    .unscored());
            }
        }
        if let Err(channel) =
            self.context
                .grants
                .may_reply_all(&self.principal, &channels, now_ms())
        {
            return Err(self
                .deny(format!(
                    "no reply grant lets `{}` publish on `{channel}`: only the recipient of a \
                     request may reply, once, before it expires",
                    self.principal
                ))
                .unscored());
        }
        if let Some(index) = groups.iter().position(|g| g.channel == root) {
            return groups
                .get_mut(index)
                .ok_or_else(|| Refused::new(RefusalCode::Malformed, "internal error"));
        }
        groups.push(Group::new(root));
        groups
            .last_mut()
            .ok_or_else(|| Refused::new(RefusalCode::Malformed, "internal error"))
    }

    /// A sender field must be the connection's identity, byte for byte (IDs are canonical).
    fn check_sender(&self, sender: &str) -> Result<(), Refused> {
        if sender == self.principal.as_str() {
            return Ok(());
        }
        stats::bump(&self.context.stats.forged_senders);
        let shown: String = sender.chars().take(256).collect();
        Err(Refused::new(
            RefusalCode::ForgedSender,
            format!(
                "sender `{}` is not the connection's identity `{}`",
                shown.escape_debug(),
                self.principal
            ),
        ))
    }

    async fn ack(&self, request_id: u64) -> Result<(), Status> {
        self.ack_then(request_id, None).await
    }

    async fn refuse(&self, request_id: u64, refused: Refused) -> Result<(), Status> {
        if refused.scored
            && matches!(
                refused.code,
                RefusalCode::Denied
                    | RefusalCode::Replay
                    | RefusalCode::Malformed
                    | RefusalCode::ForgedSender
            )
        {
            self.watch.refused();
        }
        if !refused.recorded {
            self.context.authz.record_refusal(
                &self.principal,
                self.asking,
                &format!("Request::\"{request_id}\""),
                &format!("{}: {}", refused.code, refused.reason),
            );
        }
        self.answer(server_frame::Kind::Refusal(Refusal {
            request_id,
            code: refused.code.as_u32(),
            reason: refused.told.unwrap_or(refused.reason),
            retry_after_ms: refused.retry_after_ms,
        }))
        .await
    }

    /// Acknowledges `request_id` as [`ack`](Self::ack) does, and tells `start`, if given, once
    /// the `Ack` is queued for the client, whether it went as an `Ack` (a refusal goes instead
    /// when the audit log failed).
    async fn ack_then(&self, request_id: u64, start: Option<Start>) -> Result<(), Status> {
        let ack = server_frame::Kind::Ack(Ack {
            request_id,
            held: Vec::new(),
        });
        self.answer_then(ack, Vec::new(), start).await
    }

    /// Sends an answer: at once, or, while auditing is on, once everything recorded so far
    /// is durable (in order with the session's other answers).
    async fn answer(&self, kind: server_frame::Kind) -> Result<(), Status> {
        self.answer_then(kind, Vec::new(), None).await
    }

    /// As [`answer`](Self::answer), once the entries `stored` in durable channels are durable
    /// too; `queued` is told, once the answer is queued for the client, whether it went as an
    /// `Ack`.
    async fn answer_then(
        &self,
        kind: server_frame::Kind,
        stored: Vec<(Arc<Stream>, u64)>,
        queued: Option<Start>,
    ) -> Result<(), Status> {
        if !self.answers_wait {
            let acked = matches!(kind, server_frame::Kind::Ack(_));
            self.send(kind).await?;
            if let Some(queued) = queued {
                let _ = queued.send(acked);
            }
            return Ok(());
        }
        let answers = self.answers.get_or_init(|| {
            let (answers, waiting) = mpsc::channel(ANSWERS_WAITING);
            let auditor = self.context.authz.auditor().clone();
            tokio::spawn(forward_answers(auditor, waiting, self.outbound.clone()));
            answers
        });
        let ticket = self.context.authz.auditor().ticket();
        answers
            .send((ticket, stored, kind, queued))
            .await
            .map_err(|_| Status::cancelled("the session's stream is closed"))
    }

    async fn send(&self, kind: server_frame::Kind) -> Result<(), Status> {
        let frame = Outbound::Frame(ServerFrame { kind: Some(kind) });
        self.outbound
            .send(frame)
            .await
            .map_err(|_| Status::cancelled("the session's stream is closed"))
    }
}

/// The reply namespace root (`_reply.S.N`) a sender key's channel names, if it names one.
fn reply_root(channel: &str) -> Option<Channel> {
    if !channel.starts_with(REPLY_PREFIX) {
        return None;
    }
    Channel::parse(channel)
        .ok()
        .filter(namespace::is_reply_root)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// === impl Refused ===

impl From<DurableError> for Refused {
    fn from(e: DurableError) -> Self {
        // The owner of a consumer is the audit log's to know, not whoever tries its name.
        if let DurableError::Others { name, owner } = &e {
            let recorded = format!("the durable consumer `{name}` belongs to `{owner}`");
            return Self::new(RefusalCode::Denied, recorded).told(e.to_string());
        }
        let code = match e {
            DurableError::Full { .. } => RefusalCode::Full,
            DurableError::NoStream(_) => RefusalCode::NoStream,
            DurableError::BadName => RefusalCode::Malformed,
            DurableError::NotYours(_) | DurableError::Others { .. } => RefusalCode::Denied,
            DurableError::InUse(_) => RefusalCode::DuplicateSubscription,
            DurableError::TooManyConsumers { .. } => RefusalCode::TooManySubscriptions,
            DurableError::Unavailable(_) | DurableError::Unstorable(_) => RefusalCode::Unavailable,
        };
        Self::new(code, e.to_string())
    }
}

impl Refused {
    fn new(code: RefusalCode, reason: impl ToString) -> Self {
        Self {
            code,
            reason: bounded(reason.to_string()),
            retry_after_ms: 0,
            recorded: false,
            scored: true,
            told: None,
        }
    }

    /// A refusal whose client is told `told`, the audit log its whole reason.
    fn told(mut self, told: String) -> Self {
        self.told = Some(bounded(told));
        self
    }

    /// A refusal that does not count against the sender's risk (a reply without its grant, a
    /// batch of replies a durable channel captures).
    fn unscored(mut self) -> Self {
        self.scored = false;
        self
    }

    /// A refusal the audit log has already.
    fn recorded(mut self) -> Self {
        self.recorded = true;
        self
    }
}

/// Cuts a reason to the wire limit, at a character boundary.
pub(crate) fn bounded(mut reason: String) -> String {
    if reason.len() > entente_wire::MAX_REASON_BYTES {
        let mut end = entente_wire::MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

// === the stream adapter ===

/// Sends each answer once the records up to its ticket are durable. An `Ack` whose records
/// could not be made durable becomes an `UNAVAILABLE` refusal; nothing waits forever, since a
/// failed log fails every wait.
async fn forward_answers(
    auditor: Auditor,
    mut waiting: mpsc::Receiver<Answer>,
    outbound: OutboundTx,
) {
    while let Some((ticket, stored, kind, queued)) = waiting.recv().await {
        let mut failed = auditor.durable(ticket).await.err().map(|e| {
            format!("{e}; what this request sent may have been delivered, but is not recorded")
        });
        for (stream, entries) in stored {
            if let Err(e) = stream.durable(entries).await {
                failed.get_or_insert_with(|| {
                    format!(
                        "{e}; what this request sent may have been delivered, but is not stored"
                    )
                });
            }
        }
        let kind = match (failed, kind) {
            (Some(reason), server_frame::Kind::Ack(ack)) => server_frame::Kind::Refusal(Refusal {
                request_id: ack.request_id,
                code: RefusalCode::Unavailable.as_u32(),
                reason,
                retry_after_ms: 0,
            }),
            (_, kind) => kind,
        };
        let acked = matches!(kind, server_frame::Kind::Ack(_));
        let frame = Outbound::Frame(ServerFrame { kind: Some(kind) });
        if outbound.send(frame).await.is_err() {
            return;
        }
        if let Some(queued) = queued {
            // Whoever waited may be gone (its session ended).
            let _ = queued.send(acked);
        }
    }
}

/// The audit record of a batch about to be routed: its sender, channel, size and the root
/// over its envelopes' hashes (docs/AUDIT.md §2, delivered batches).
pub(crate) fn delivered(batch: &SignedBatchIn) -> DeliveredBatch {
    let hashes: Vec<Hash> = batch.envelope_hashes().into_iter().map(Hash).collect();
    DeliveredBatch {
        sender: audit::clear(batch.sender().as_str()),
        channel: audit::clear(batch.channel().as_str()),
        count: u32::try_from(hashes.len()).unwrap_or(u32::MAX),
        bytes: batch
            .envelopes()
            .iter()
            .map(|e| e.ciphertext_len() as u64)
            .sum(),
        envelopes_root: DeliveredBatch::envelopes_root(&hashes),
    }
}

/// Drives `session` from the inbound stream until the client ends it, the stream fails, or the
/// connection is closed. A status in `end` ends the response stream (after what is queued).
/// Whenever the policy epoch changes, the session decides its subscriptions again, also after
/// the client is done sending.
/// A session's inbound frames: a gRPC stream (HTTP/2), or a framed connection's
/// ([`crate::framed`]).
pub(crate) trait Inbound: Send {
    /// The next frame; `None` when the client is done sending; a status ends the session.
    fn message(&mut self) -> impl Future<Output = Result<Option<ClientFrame>, Status>> + Send;
}

impl Inbound for Streaming<ClientFrame> {
    fn message(&mut self) -> impl Future<Output = Result<Option<ClientFrame>, Status>> + Send {
        Streaming::message(self)
    }
}

/// Runs a session until it ends: its inbound frames, the policy epoch, the clock and the
/// connection's close. A plain function returning the task's future, so that the session is
/// kept once in it (an `async fn` keeps its arguments twice: docs/BENCHMARKS.md, Scale).
#[allow(clippy::manual_async_fn)] // the point: 3 096 -> 1 984 bytes per session task
pub(crate) fn run<R: Router>(
    mut session: Session<R>,
    mut inbound: impl Inbound,
    end: watch::Sender<Option<Status>>,
) -> impl Future<Output = ()> + Send {
    async move {
        /// What woke the session.
        enum Event {
            Closed,
            /// The policy epoch changed (`false`: the hub dropped the watch, stop watching).
            Epoch(bool),
            Inbound(Result<Option<ClientFrame>, Status>),
            /// The client is done sending and the session's outbound stream is gone.
            Gone,
            /// Time to decide the subscriptions again, if a running policy reads the time.
            Clock,
        }
        let mut closed = session.connection.watch();
        let mut watching = true;
        let mut sending = true;
        let mut clock = tokio::time::interval_at(
            tokio::time::Instant::now() + authz::TIME_RECHECK,
            authz::TIME_RECHECK,
        );
        clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A frame that was already there when the one before it was handled (boxed: the
        // task of an idle session holds only the pointer).
        let mut arrived: Option<Box<Result<Option<ClientFrame>, Status>>> = None;
        loop {
            if arrived.is_some() {
                handoff::pass_on().await;
            }
            let event = tokio::select! {
                biased;
                _ = control::closed(&mut closed) => Event::Closed,
                changed = session.epoch.changed(), if watching => Event::Epoch(changed.is_ok()),
                next = handoff::take(&mut arrived), if arrived.is_some() => Event::Inbound(*next),
                next = inbound.message(), if sending && arrived.is_none() => Event::Inbound(next),
                // The client is done sending; its subscriptions live until it goes away.
                () = session.outbound.closed(), if !sending => Event::Gone,
                _ = clock.tick() => Event::Clock,
            };
            let outcome = match event {
                Event::Closed | Event::Gone => break,
                Event::Epoch(false) => {
                    watching = false;
                    Ok(())
                }
                Event::Epoch(true) => session.redecide().await,
                Event::Clock => session.recheck_time().await,
                Event::Inbound(Ok(Some(frame))) => {
                    // Boxed: handling a frame takes a future of ~3 KiB, which an idle session
                    // need not hold (docs/BENCHMARKS.md, Scale).
                    let handled = tokio::select! {
                        biased;
                        _ = control::closed(&mut closed) => break,
                        handled = Box::pin(session.handle(frame)) => handled,
                    };
                    // The frame's deliveries woke the connection writers they go to. If the
                    // next frame is already here, this session passes them on (above): the
                    // last one woken runs now (the others are already queued ahead of the
                    // session), and the session is left to the other worker, rather than
                    // the writers waiting behind it. When it is not, the next `select!` polls
                    // the inbound again with this task's waker.
                    if handled.is_ok() {
                        arrived = inbound.message().now_or_never().map(Box::new);
                    }
                    handled
                }
                Event::Inbound(Ok(None)) => {
                    sending = false;
                    Ok(())
                }
                Event::Inbound(Err(status)) => {
                    if matches!(
                        status.code(),
                        Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted
                    ) {
                        stats::bump(&session.context.stats.malformed_frames);
                        session.ended_by_frame(&status);
                    }
                    Err(status)
                }
            };
            if let Err(status) = outcome {
                end.send_replace(Some(status));
                break;
            }
        }
        session.finish();
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

    use std::time::Duration;

    use entente_crypto::{MessageKeys, Sealer, SealerOptions};
    use entente_types::{AgentId, TrustDomain};
    use entente_wire::{Deliver, SenderKey, SignedBatch};

    use super::*;
    use crate::replay::ReplayGuard;
    use crate::router::LocalRouter;

    const NOW: u64 = 1_760_000_000_000;

    /// Trying another's durable consumer by its name tells the caller it is another's, not
    /// whose: the audit record of the refusal names the owner.
    #[test]
    fn a_durable_consumer_of_another_is_refused_without_naming_its_owner() {
        let owner = "spiffe://example.org/agent/shop/alice";
        let refused = Refused::from(DurableError::Others {
            name: "billing".into(),
            owner: owner.into(),
        });
        assert_eq!(refused.code, RefusalCode::Denied);
        assert!(refused.reason.contains(owner), "{}", refused.reason);
        let told = refused.told.unwrap();
        assert!(!told.contains(owner), "{told}");
        assert!(told.contains("`billing` is another principal's"), "{told}");
    }

    struct Hub {
        context: SessionContext<LocalRouter>,
        replay: ReplayGuard,
        next: SessionId,
    }

    struct Client {
        session: Session<LocalRouter>,
        rx: crate::queue::OutboundRx,
        principal: Principal,
    }

    fn agent(segment: &str, name: &str) -> Principal {
        let td = TrustDomain::new("example.org").unwrap();
        Principal::from(AgentId::new(&td, segment, name).unwrap())
    }

    fn hub(policies: &str) -> Hub {
        let stats = Arc::new(Stats::default());
        Hub {
            context: SessionContext {
                router: Arc::new(LocalRouter::new(Duration::from_millis(100))),
                authz: Arc::new(Authz::with_policies(policies, stats.clone())),
                stats,
                grants: Arc::new(ReplyGrants::new(2, Duration::from_secs(60))),
                limits: Limits::default(),
                max_subscriptions: 3,
                streams: Arc::default(),
                limiters: Arc::new(Limiters::new(&crate::RateLimits::default())),
                anomaly: Arc::new(Anomaly::new(crate::AnomalyConfig::default())),
                limit_runs: Arc::default(),
                slow_consumer_timeout: Duration::from_millis(100),
            },
            replay: ReplayGuard::default(),
            next: 0,
        }
    }

    /// Segment `shop` may publish and subscribe under `orders.>`, which belongs to segment
    /// `orders` (and, by the base policies, send direct messages within the segment). The
    /// testkit's `SHOP_ORDERS`, written again: a unit test can't use the testkit without
    /// linking a second copy of this crate.
    const SHOP: &str = r#"
        @id("shop-orders")
        @cross_segment
        permit (principal in Segment::"shop",
                action in [Action::"publish", Action::"subscribe"],
                resource in Namespace::"orders");
    "#;

    /// Segment `shop` may send requests on `orders.>`.
    const SHOP_REQUESTS: &str = r#"
        @id("shop-requests")
        @cross_segment
        permit (principal in Segment::"shop", action == Action::"request",
                resource in Namespace::"orders");
    "#;

    impl Hub {
        fn connect(&mut self, principal: Principal) -> Client {
            self.next += 1;
            let (tx, rx) = OutboundTx::channel(16, 1 << 20);
            Client {
                session: Session::new(
                    self.next,
                    principal.clone(),
                    self.context.clone(),
                    self.replay.sender(&principal),
                    tx,
                    ConnectionControl::new(),
                    Credentials::default(),
                ),
                rx,
                principal,
            }
        }
    }

    impl Client {
        async fn send(&mut self, kind: client_frame::Kind) -> Result<(), Status> {
            self.session.handle(ClientFrame { kind: Some(kind) }).await
        }

        async fn subscribe(&mut self, id: u64, pattern: &str) -> server_frame::Kind {
            self.send(client_frame::Kind::Subscribe(Subscribe {
                subscription_id: id,
                pattern: pattern.into(),
                durable: String::new(),
            }))
            .await
            .unwrap();
            self.next()
        }

        async fn publish(&mut self, id: u64, batches: Vec<SignedBatch>) -> server_frame::Kind {
            self.publish_with_keys(id, vec![], batches).await
        }

        async fn publish_with_keys(
            &mut self,
            id: u64,
            sender_keys: Vec<SenderKey>,
            batches: Vec<SignedBatch>,
        ) -> server_frame::Kind {
            self.send(client_frame::Kind::Publish(Publish {
                request_id: id,
                sender_keys,
                batches,
                purpose: String::new(),
            }))
            .await
            .unwrap();
            self.next()
        }

        fn next(&mut self) -> server_frame::Kind {
            match self.rx.try_recv().unwrap() {
                Outbound::Frame(frame) => frame.kind.unwrap(),
                Outbound::Deliver {
                    subscription_id,
                    body,
                    ..
                } => {
                    let mut bytes = Vec::new();
                    crate::codec::encode_deliver(subscription_id, &body, &mut bytes);
                    let frame: ServerFrame =
                        entente_wire::decode(&bytes, &Limits::default()).unwrap();
                    frame.kind.unwrap()
                }
            }
        }

        fn sealer(&self, channel: &str) -> Sealer {
            self.sealer_at(channel, NOW)
        }

        fn sealer_at(&self, channel: &str, now: u64) -> Sealer {
            self.sealer_and_key(channel, now).0
        }

        /// A sealer of this client's for `channel`, with its sender key (for no recipient).
        fn sealer_and_key(&self, channel: &str, now: u64) -> (Sealer, SenderKey) {
            Sealer::new(
                self.principal.clone(),
                1,
                Arc::new(MessageKeys::generate().unwrap()),
                Channel::parse(channel).unwrap(),
                &[],
                SealerOptions::default(),
                now,
            )
            .unwrap()
        }
    }

    /// `n` wrapped keys for made-up recipients (the hub does not check them), 150 bytes each.
    fn made_up_recipients(n: usize) -> Vec<entente_wire::WrappedKey> {
        (0..n)
            .map(|i| entente_wire::WrappedKey {
                recipient: format!("spiffe://example.org/agent/shop/{i:0>40}"),
                recipient_key_epoch: 1,
                enc: vec![7; 32],
                ciphertext: vec![7; 48],
            })
            .collect()
    }

    fn refusal(kind: server_frame::Kind) -> (u64, Option<RefusalCode>) {
        match kind {
            server_frame::Kind::Refusal(r) => (r.request_id, RefusalCode::from_u32(r.code)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn ack(id: u64) -> server_frame::Kind {
        server_frame::Kind::Ack(Ack {
            request_id: id,
            held: Vec::new(),
        })
    }

    #[tokio::test]
    async fn publish_reaches_matching_subscribers_then_acks() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "orders.*").await, ack(1));
        assert_eq!(alice.subscribe(2, "orders.eu").await, ack(2));

        let mut sealer = bob.sealer("orders.eu");
        let batch = sealer.seal_batch(&[b"hi"], None, NOW).unwrap();
        assert_eq!(bob.publish(7, vec![batch.clone()]).await, ack(7));
        let mut got = vec![alice.next(), alice.next()];
        got.sort_by_key(|k| match k {
            server_frame::Kind::Deliver(d) => d.subscription_id,
            _ => 0,
        });
        for (kind, id) in got.into_iter().zip([1, 2]) {
            assert_eq!(
                kind,
                server_frame::Kind::Deliver(Deliver {
                    subscription_id: id,
                    sender_keys: vec![],
                    batches: vec![batch.clone()],
                    ..Deliver::default()
                })
            );
        }
        assert_eq!(hub.context.stats.snapshot().denials, 0);
    }

    #[tokio::test]
    async fn the_queue_to_the_audit_log_is_made_at_the_first_answer() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        // As when auditing is on: answers wait for the log, through a queue of their own.
        alice.session.answers_wait = true;
        assert!(
            alice.session.answers.get().is_none(),
            "an idle session has none"
        );
        alice
            .send(client_frame::Kind::Subscribe(Subscribe {
                subscription_id: 1,
                pattern: "orders.*".into(),
                durable: String::new(),
            }))
            .await
            .unwrap();
        assert!(alice.session.answers.get().is_some());
        let Some(Outbound::Frame(frame)) = alice.rx.recv().await else {
            panic!("no answer");
        };
        assert_eq!(frame.kind.unwrap(), ack(1));
    }

    #[tokio::test]
    async fn subscription_refusals() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut eve = hub.connect(agent("lab", "eve"));
        assert_eq!(
            refusal(eve.subscribe(1, "orders.>").await),
            (1, Some(RefusalCode::Denied))
        );
        assert_eq!(
            refusal(alice.subscribe(2, "_reply.shop.bob.>").await),
            (2, Some(RefusalCode::Denied))
        );
        assert_eq!(alice.subscribe(3, "_reply.shop.alice.>").await, ack(3));
        assert_eq!(
            refusal(alice.subscribe(3, "orders.x").await),
            (3, Some(RefusalCode::DuplicateSubscription))
        );
        assert_eq!(
            refusal(alice.subscribe(4, "bad..pattern").await),
            (4, Some(RefusalCode::Malformed))
        );
        assert_eq!(alice.subscribe(5, "orders.a").await, ack(5));
        assert_eq!(alice.subscribe(6, "orders.b").await, ack(6));
        assert_eq!(
            refusal(alice.subscribe(7, "orders.c").await),
            (7, Some(RefusalCode::TooManySubscriptions))
        );
        alice
            .send(client_frame::Kind::Unsubscribe(Unsubscribe {
                subscription_id: 5,
            }))
            .await
            .unwrap();
        assert_eq!(alice.next(), ack(5));
        alice
            .send(client_frame::Kind::Unsubscribe(Unsubscribe {
                subscription_id: 5,
            }))
            .await
            .unwrap();
        assert_eq!(
            refusal(alice.next()),
            (5, Some(RefusalCode::UnknownSubscription))
        );
        assert_eq!(hub.context.stats.snapshot().denials, 2);
    }

    #[tokio::test]
    async fn a_session_holds_a_few_subscriptions_in_its_reply_namespace() {
        let mut hub = hub(SHOP);
        hub.context.max_subscriptions = 1024;
        let mut alice = hub.connect(agent("shop", "alice"));
        for id in 1..=MAX_REPLY_SUBSCRIPTIONS as u64 {
            assert_eq!(alice.subscribe(id, "_reply.shop.alice.>").await, ack(id));
        }
        let (id, code) = refusal(alice.subscribe(100, "_reply.shop.alice.t1").await);
        assert_eq!((id, code), (100, Some(RefusalCode::TooManySubscriptions)));
        // Others are not counted against it.
        assert_eq!(alice.subscribe(101, "orders.a").await, ack(101));
    }

    #[tokio::test]
    async fn forged_denied_replayed_and_malformed_publishes_are_refused_whole() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "orders.>").await, ack(1));

        let mut bobs = bob.sealer("orders.eu");
        let bobs_batch = bobs.seal_batch(&[b"x"], None, NOW).unwrap();
        let mut alices = alice.sealer("orders.eu");
        let alices_batch = alices.seal_batch(&[b"y"], None, NOW).unwrap();

        // Alice relays Bob's batch: forged.
        assert_eq!(
            refusal(alice.publish(1, vec![bobs_batch.clone()]).await),
            (1, Some(RefusalCode::ForgedSender))
        );
        // Bob publishes his own batch with a forged one: all refused, nothing delivered.
        assert_eq!(
            refusal(bob.publish(2, vec![bobs_batch.clone(), alices_batch]).await),
            (2, Some(RefusalCode::ForgedSender))
        );
        assert!(alice.rx.try_recv().is_err());
        assert_eq!(bob.publish(3, vec![bobs_batch.clone()]).await, ack(3));
        assert!(matches!(alice.next(), server_frame::Kind::Deliver(_)));
        // The same batch again is a replay, on any connection of Bob.
        assert_eq!(
            refusal(bob.publish(4, vec![bobs_batch.clone()]).await),
            (4, Some(RefusalCode::Replay))
        );
        let mut bob2 = hub.connect(agent("shop", "bob"));
        assert_eq!(
            refusal(bob2.publish(5, vec![bobs_batch]).await),
            (5, Some(RefusalCode::Replay))
        );
        // A channel no policy opens.
        let mut secret = bob.sealer("secret.x");
        let batch = secret.seal_batch(&[b"z"], None, NOW).unwrap();
        assert_eq!(
            refusal(bob.publish(6, vec![batch]).await),
            (6, Some(RefusalCode::Denied))
        );
        // Malformed: a bad signature length.
        let mut bad = bobs.seal_batch(&[b"w"], None, NOW).unwrap();
        bad.signature.truncate(10);
        assert_eq!(
            refusal(bob.publish(7, vec![bad]).await),
            (7, Some(RefusalCode::Malformed))
        );
        assert_eq!(
            refusal(bob.publish(8, vec![]).await),
            (8, Some(RefusalCode::Malformed))
        );
        assert!(alice.rx.try_recv().is_err());

        let stats = hub.context.stats.snapshot();
        assert_eq!(stats.forged_senders, 2);
        assert_eq!(stats.replays, 2);
        assert_eq!(stats.denials, 1);
    }

    #[tokio::test]
    async fn an_unknown_frame_ends_the_stream() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let status = alice
            .session
            .handle(ClientFrame { kind: None })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(hub.context.stats.snapshot().malformed_frames, 1);
    }

    #[tokio::test]
    async fn a_full_subscriber_is_disconnected_and_the_publisher_told() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "orders.eu").await, ack(1));
        let mut sealer = bob.sealer("orders.eu");
        // Alice never reads: her queue of 16 fills, then the publisher waits and gives up.
        let mut refused = None;
        for id in 0..40 {
            let batch = sealer.seal_batch(&[b"m"], None, NOW).unwrap();
            if let server_frame::Kind::Refusal(r) = bob.publish(id, vec![batch]).await {
                refused = Some(r);
                break;
            }
        }
        let refused = refused.expect("a refusal");
        assert_eq!(
            RefusalCode::from_u32(refused.code),
            Some(RefusalCode::DeliveryFailed)
        );
        assert!(refused.reason.contains("1 of 1"), "{}", refused.reason);
        assert_eq!(
            alice.session.connection.reason(),
            Some(crate::CloseReason::SlowConsumer)
        );
        let stats = hub.context.stats.snapshot();
        assert_eq!(stats.slow_consumer_disconnects, 1);
        assert_eq!(stats.delivery_failures, 1);
    }

    fn is_deliver(kind: &server_frame::Kind) -> bool {
        matches!(kind, server_frame::Kind::Deliver(_))
    }

    #[tokio::test]
    async fn a_request_grants_its_target_one_reply() {
        let mut hub = hub(SHOP_REQUESTS);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        let mut carol = hub.connect(agent("shop", "carol"));
        assert_eq!(alice.subscribe(1, "_reply.shop.alice.>").await, ack(1));
        assert_eq!(bob.subscribe(1, "_direct.shop.bob").await, ack(1));
        let now = now_ms();
        let reply_to = Channel::parse("_reply.shop.alice.r1").unwrap();

        // Nobody may publish into Alice's reply namespace before she asks.
        let mut bobs = bob.sealer_at("_reply.shop.alice.r1", now);
        let early = bobs.seal_batch(&[b"early"], None, now).unwrap();
        assert_eq!(
            refusal(bob.publish(2, vec![early]).await),
            (2, Some(RefusalCode::Denied))
        );

        let mut direct = alice.sealer_at("_direct.shop.bob", now);
        let request = direct.seal_batch(&[b"ping"], Some(&reply_to), now).unwrap();
        assert_eq!(alice.publish(2, vec![request]).await, ack(2));
        assert!(is_deliver(&bob.next()));

        // Carol did not receive the request: she may not answer it.
        let mut carols = carol.sealer_at("_reply.shop.alice.r1", now);
        let forged = carols.seal_batch(&[b"me"], None, now).unwrap();
        assert_eq!(
            refusal(carol.publish(3, vec![forged]).await),
            (3, Some(RefusalCode::Denied))
        );
        // Bob answers, once.
        let reply = bobs.seal_batch(&[b"pong"], None, now).unwrap();
        assert_eq!(bob.publish(4, vec![reply]).await, ack(4));
        assert!(is_deliver(&alice.next()));
        let again = bobs.seal_batch(&[b"pong again"], None, now).unwrap();
        assert_eq!(
            refusal(bob.publish(5, vec![again]).await),
            (5, Some(RefusalCode::Denied))
        );
        assert!(alice.rx.try_recv().is_err());
        assert_eq!(hub.context.stats.snapshot().denials, 3);
        // Replies refused for want of a grant are the requester's doing (a grant used, ended):
        // they don't count against the responder's risk, as a denied publish does.
        hub.context.anomaly.tick(now + 60_000);
        assert_eq!(hub.context.anomaly.risk(&bob.principal), 0);
        assert_eq!(hub.context.anomaly.risk(&carol.principal), 0);
        let mut outside = carol.sealer_at("elsewhere.x", now);
        let denied = outside.seal_batch(&[b"x"], None, now).unwrap();
        assert_eq!(
            refusal(carol.publish(6, vec![denied]).await),
            (6, Some(RefusalCode::Denied))
        );
        hub.context.anomaly.tick(now + 120_000);
        assert!(hub.context.anomaly.risk(&carol.principal) > 0);
    }

    /// Requests to two targets in one publish: each target may answer only its own.
    #[tokio::test]
    async fn requests_to_several_targets_in_one_publish_grant_each_its_own_reply() {
        let mut hub = hub(SHOP_REQUESTS);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        let mut carol = hub.connect(agent("shop", "carol"));
        assert_eq!(alice.subscribe(1, "_reply.shop.alice.>").await, ack(1));
        assert_eq!(bob.subscribe(1, "_direct.shop.bob").await, ack(1));
        assert_eq!(carol.subscribe(1, "_direct.shop.carol").await, ack(1));
        let now = now_ms();
        let (r1, r2) = (
            Channel::parse("_reply.shop.alice.r1").unwrap(),
            Channel::parse("_reply.shop.alice.r2").unwrap(),
        );
        let mut to_bob = alice.sealer_at("_direct.shop.bob", now);
        let mut to_carol = alice.sealer_at("_direct.shop.carol", now);
        let requests = vec![
            to_bob.seal_batch(&[b"ping"], Some(&r1), now).unwrap(),
            to_carol.seal_batch(&[b"ping"], Some(&r2), now).unwrap(),
            to_bob.seal_batch(&[b"ping"], Some(&r1), now).unwrap(),
        ];
        assert_eq!(alice.publish(2, requests).await, ack(2));
        assert!(is_deliver(&bob.next()));
        assert!(is_deliver(&carol.next()));

        let (mut bob_r1, mut bob_r2) = (
            bob.sealer_at("_reply.shop.alice.r1", now),
            bob.sealer_at("_reply.shop.alice.r2", now),
        );
        let (mut carol_r1, mut carol_r2) = (
            carol.sealer_at("_reply.shop.alice.r1", now),
            carol.sealer_at("_reply.shop.alice.r2", now),
        );
        let wrong = bob_r2.seal_batch(&[b"pong"], None, now).unwrap();
        assert_eq!(
            refusal(bob.publish(2, vec![wrong]).await),
            (2, Some(RefusalCode::Denied))
        );
        let wrong = carol_r1.seal_batch(&[b"pong"], None, now).unwrap();
        assert_eq!(
            refusal(carol.publish(2, vec![wrong]).await),
            (2, Some(RefusalCode::Denied))
        );
        let right = bob_r1.seal_batch(&[b"pong"], None, now).unwrap();
        assert_eq!(bob.publish(3, vec![right]).await, ack(3));
        let right = carol_r2.seal_batch(&[b"pong"], None, now).unwrap();
        assert_eq!(carol.publish(3, vec![right]).await, ack(3));
    }

    #[tokio::test]
    async fn a_batch_of_replies_takes_every_grant_it_answers_or_none() {
        let mut hub = hub(SHOP_REQUESTS);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "_reply.shop.alice.>").await, ack(1));
        assert_eq!(alice.subscribe(2, "_direct.shop.alice").await, ack(2));
        assert_eq!(bob.subscribe(1, "_direct.shop.bob").await, ack(1));
        let now = now_ms();
        let (mut bobs, key) = bob.sealer_and_key("_reply.shop.alice", now);
        let mut requests = alice.sealer_at("_direct.shop.bob", now);
        let reply = |t: &str| Channel::parse(&format!("_reply.shop.alice.{t}")).unwrap();
        // (The test hub lets a session wait for two replies at most.)
        for token in ["r1", "r2"] {
            let request = requests
                .seal_batch(&[b"ping"], Some(&reply(token)), now)
                .unwrap();
            assert_eq!(alice.publish(10, vec![request]).await, ack(10));
            assert!(is_deliver(&bob.next()));
        }
        let (r1, r2, r3, r9) = (reply("r1"), reply("r2"), reply("r3"), reply("r9"));
        let batch_of = |sealer: &mut Sealer, on: &[&Channel]| {
            sealer
                .seal_replies(on.iter().map(|c| (*c, &b"pong"[..], None)), now)
                .unwrap()
        };

        // One reply without a grant (r9) refuses the batch, and takes no grant.
        let refused = batch_of(&mut bobs, &[&r1, &r9]);
        let answer = bob
            .publish_with_keys(2, vec![key.clone()], vec![refused])
            .await;
        assert_eq!(refusal(answer), (2, Some(RefusalCode::Denied)));
        // Two replies on one channel in one publish: refused, no grant taken.
        let twice = vec![batch_of(&mut bobs, &[&r1]), batch_of(&mut bobs, &[&r1])];
        let answer = bob.publish_with_keys(3, vec![key.clone()], twice).await;
        assert_eq!(refusal(answer), (3, Some(RefusalCode::Denied)));
        let answer = bob
            .publish_with_keys(3, vec![key.clone()], vec![batch_of(&mut bobs, &[&r1, &r1])])
            .await;
        assert_eq!(refusal(answer), (3, Some(RefusalCode::Denied)));
        // A batch on the root whose envelopes name no channel: malformed, not a grant matter.
        let unnamed = bobs.seal_batch(&[b"pong"], None, now).unwrap();
        assert_eq!(unnamed.channel, "_reply.shop.alice");
        let answer = bob
            .publish_with_keys(3, vec![key.clone()], vec![unnamed])
            .await;
        assert_eq!(refusal(answer), (3, Some(RefusalCode::Malformed)));
        // An envelope on a channel outside the root: malformed.
        let mut outside = batch_of(&mut bobs, &[&r1, &r2]);
        outside.envelopes[1].channel = "_reply.shop.carol.r2".into();
        let answer = bob
            .publish_with_keys(3, vec![key.clone()], vec![outside])
            .await;
        assert_eq!(refusal(answer), (3, Some(RefusalCode::Malformed)));
        // Refused after its grants were taken (its requests would pass Bob's bound of
        // outstanding grants): the grants come back.
        let mut asks = bob.sealer_at("_direct.shop.alice", now);
        let (q1, q2, q3) = (
            Channel::parse("_reply.shop.bob.q1").unwrap(),
            Channel::parse("_reply.shop.bob.q2").unwrap(),
            Channel::parse("_reply.shop.bob.q3").unwrap(),
        );
        let three = asks
            .seal_batch_each(
                [(&b"?"[..], Some(&q1)), (b"?", Some(&q2)), (b"?", Some(&q3))].into_iter(),
                now,
            )
            .unwrap();
        let answer = bob
            .publish_with_keys(
                3,
                vec![key.clone()],
                vec![batch_of(&mut bobs, &[&r1, &r2]), three],
            )
            .await;
        assert_eq!(refusal(answer), (3, Some(RefusalCode::TooManyReplyGrants)));
        assert!(alice.rx.try_recv().is_err());

        // Granted: delivered once, whole, with the root's key, to the namespace's subscriber.
        let both = batch_of(&mut bobs, &[&r1, &r2]);
        let answer = bob
            .publish_with_keys(4, vec![key.clone()], vec![both.clone()])
            .await;
        assert_eq!(answer, ack(4));
        match alice.next() {
            server_frame::Kind::Deliver(Deliver {
                sender_keys,
                batches,
                ..
            }) => {
                assert_eq!(sender_keys, std::slice::from_ref(&key));
                assert_eq!(batches, [both]);
            }
            other => panic!("{other:?}"),
        }
        assert!(alice.rx.try_recv().is_err());
        // Each grant answered once: r2 again is refused with r3, whose grant stays.
        let request = requests.seal_batch(&[b"ping"], Some(&r3), now).unwrap();
        assert_eq!(alice.publish(11, vec![request]).await, ack(11));
        assert!(is_deliver(&bob.next()));
        let again = batch_of(&mut bobs, &[&r2, &r3]);
        let answer = bob
            .publish_with_keys(5, vec![key.clone()], vec![again])
            .await;
        assert_eq!(refusal(answer), (5, Some(RefusalCode::Denied)));
        let last = batch_of(&mut bobs, &[&r3]);
        assert_eq!(bob.publish(6, vec![last]).await, ack(6));
        assert!(is_deliver(&alice.next()));
    }

    #[tokio::test]
    async fn a_reply_namespace_sender_key_goes_only_with_a_reply_into_it() {
        let mut hub = hub(SHOP_REQUESTS);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "_reply.shop.alice.>").await, ack(1));
        assert_eq!(alice.subscribe(2, "_direct.shop.alice").await, ack(2));
        assert_eq!(bob.subscribe(1, "_direct.shop.bob").await, ack(1));
        let now = now_ms();
        let (mut bobs, key) = bob.sealer_and_key("_reply.shop.alice", now);

        // Alone, or beside something other than a reply into the namespace: refused.
        let answer = bob.publish_with_keys(2, vec![key.clone()], vec![]).await;
        assert_eq!(refusal(answer), (2, Some(RefusalCode::Denied)));
        let mut direct = bob.sealer_at("_direct.shop.alice", now);
        let plain = direct.seal_batch(&[b"hi"], None, now).unwrap();
        let answer = bob
            .publish_with_keys(3, vec![key.clone()], vec![plain])
            .await;
        assert_eq!(refusal(answer), (3, Some(RefusalCode::Denied)));
        assert!(alice.rx.try_recv().is_err());

        // With the reply it was granted: delivered together.
        let mut requests = alice.sealer_at("_direct.shop.bob", now);
        for token in ["r1", "r2"] {
            let reply_to = Channel::parse(&format!("_reply.shop.alice.{token}")).unwrap();
            let request = requests
                .seal_batch(&[b"ping"], Some(&reply_to), now)
                .unwrap();
            assert_eq!(alice.publish(10, vec![request]).await, ack(10));
            assert!(is_deliver(&bob.next()));
        }
        let r1 = Channel::parse("_reply.shop.alice.r1").unwrap();
        let reply = bobs
            .seal_batch_on(&r1, [(&b"pong"[..], None)].into_iter(), now)
            .unwrap();
        let answer = bob
            .publish_with_keys(4, vec![key.clone()], vec![reply])
            .await;
        assert_eq!(answer, ack(4));
        match alice.next() {
            server_frame::Kind::Deliver(Deliver {
                sender_keys,
                batches,
                ..
            }) => {
                assert_eq!(sender_keys, std::slice::from_ref(&key));
                assert_eq!(batches.len(), 1);
                assert_eq!(batches[0].channel, "_reply.shop.alice.r1");
            }
            other => panic!("{other:?}"),
        }

        // A key for another requester's namespace does not ride along with Alice's reply.
        let (_, carols) = bob.sealer_and_key("_reply.shop.carol", now);
        let r2 = Channel::parse("_reply.shop.alice.r2").unwrap();
        let reply = bobs
            .seal_batch_on(&r2, [(&b"pong"[..], None)].into_iter(), now)
            .unwrap();
        let answer = bob.publish_with_keys(5, vec![carols], vec![reply]).await;
        assert_eq!(refusal(answer), (5, Some(RefusalCode::Denied)));
        // Nor may anyone send a key in someone else's name.
        let (_, forged) = alice.sealer_and_key("_reply.shop.alice", now);
        let reply = bobs
            .seal_batch_on(&r2, [(&b"pong"[..], None)].into_iter(), now)
            .unwrap();
        let answer = bob.publish_with_keys(6, vec![forged], vec![reply]).await;
        assert_eq!(refusal(answer), (6, Some(RefusalCode::ForgedSender)));
        assert!(alice.rx.try_recv().is_err());
    }

    /// A reply namespace's sender key is copied into each reply group under it: many small
    /// replies and one large key may not make the publish's shares a multiple of the frame
    /// size limit.
    #[tokio::test]
    async fn reply_sender_keys_copied_to_many_replies_are_bounded() {
        let mut hub = hub(SHOP_REQUESTS);
        hub.context.limits.max_frame_bytes = 64 * 1024;
        hub.context.grants = Arc::new(ReplyGrants::new(64, Duration::from_secs(60)));
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "_reply.shop.alice.>").await, ack(1));
        assert_eq!(bob.subscribe(1, "_direct.shop.bob").await, ack(1));
        let now = now_ms();
        let mut requests = alice.sealer_at("_direct.shop.bob", now);
        let replies: Vec<Channel> = (0..16)
            .map(|i| Channel::parse(&format!("_reply.shop.alice.r{i}")).unwrap())
            .collect();
        for (i, reply_to) in (10..).zip(&replies) {
            let request = requests
                .seal_batch(&[b"ping"], Some(reply_to), now)
                .unwrap();
            assert_eq!(alice.publish(i, vec![request]).await, ack(i));
            assert!(is_deliver(&bob.next()));
        }
        // A key of ~9 KiB (its recipients are not the hub's to check).
        let (mut bobs, mut key) = bob.sealer_and_key("_reply.shop.alice", now);
        key.recipients = made_up_recipients(64);
        let mut seal = |channels: &[Channel]| -> Vec<SignedBatch> {
            channels
                .iter()
                .map(|c| {
                    bobs.seal_batch_on(c, [(&b"pong"[..], None)].into_iter(), now)
                        .unwrap()
                })
                .collect()
        };
        // Sixteen copies: 144 KiB, over twice the limit, though each share is far below it.
        let all = seal(&replies);
        let answer = bob.publish_with_keys(2, vec![key.clone()], all).await;
        assert_eq!(refusal(answer), (2, Some(RefusalCode::TooLarge)));
        assert!(alice.rx.try_recv().is_err());
        // Four copies fit.
        let some = seal(replies.get(..4).unwrap());
        let answer = bob.publish_with_keys(3, vec![key], some).await;
        assert_eq!(answer, ack(3));
    }

    #[tokio::test]
    async fn subscribe_and_unsubscribe_frames_count_against_their_own_rate() {
        let mut hub = hub(SHOP);
        hub.context.limiters = subscriptions_limited(2);
        let mut alice = hub.connect(agent("shop", "alice"));
        assert_eq!(alice.subscribe(1, "orders.eu").await, ack(1));
        alice
            .send(client_frame::Kind::Unsubscribe(Unsubscribe {
                subscription_id: 1,
            }))
            .await
            .unwrap();
        assert_eq!(alice.next(), ack(1));
        for kind in [
            client_frame::Kind::Subscribe(Subscribe {
                subscription_id: 2,
                pattern: "orders.eu".into(),
                durable: String::new(),
            }),
            client_frame::Kind::Unsubscribe(Unsubscribe { subscription_id: 2 }),
        ] {
            alice.send(kind).await.unwrap();
            match alice.next() {
                server_frame::Kind::Refusal(r) => {
                    assert_eq!(r.request_id, 2);
                    assert_eq!(
                        RefusalCode::from_u32(r.code),
                        Some(RefusalCode::RateLimited)
                    );
                    assert!(r.retry_after_ms > 0, "{r:?}");
                    assert!(r.reason.contains("agent-subscriptions"), "{}", r.reason);
                }
                other => panic!("{other:?}"),
            }
        }
        // Refused, so not subscribed; and another agent has its own bucket.
        assert_eq!(hub.context.router.subscriptions(), 0);
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(bob.subscribe(1, "orders.eu").await, ack(1));
        assert_eq!(hub.context.stats.snapshot().rate_limited, 2);
    }

    /// Limiters of subscribe and unsubscribe frames alone: one a second, bursts of `burst`.
    fn subscriptions_limited(burst: u32) -> Arc<Limiters> {
        Arc::new(Limiters::new(&crate::RateLimits {
            agent_messages: None,
            agent_bytes: None,
            agent_subscriptions: Some(crate::Rate {
                per_second: 1,
                burst,
            }),
            agent_calls: None,
            channels: Vec::new(),
        }))
    }

    /// Refusals by one limit are grouped into runs per agent, limit and scope across the
    /// agent's sessions: a new session (or another stream) starts no run of its own, so
    /// opening sessions one after the other records no more than one session would.
    #[tokio::test]
    async fn limit_refusals_of_one_agent_are_one_run_across_its_sessions() {
        let mut hub = hub(SHOP);
        hub.context.limiters = subscriptions_limited(1);
        let mut first = hub.connect(agent("shop", "alice"));
        assert_eq!(first.subscribe(1, "orders.eu").await, ack(1));
        assert_eq!(
            refusal(first.subscribe(2, "orders.us").await),
            (2, Some(RefusalCode::RateLimited))
        );
        let mut second = hub.connect(agent("shop", "alice"));
        for id in 3..6 {
            assert_eq!(
                refusal(second.subscribe(id, "orders.us").await),
                (id, Some(RefusalCode::RateLimited))
            );
        }
        // The first refusal was recorded at once; the other three wait together for the
        // run's next record (within a second), whichever session they came from.
        let due = hub.context.limit_runs.due(Instant::now(), true);
        let [((who, limit, scope), _, count)] = due.as_slice() else {
            panic!("{due:?}");
        };
        assert_eq!(
            (who, *limit, scope.as_str(), *count),
            (
                &agent("shop", "alice"),
                crate::limits::Limit::AgentSubscriptions,
                "",
                3
            )
        );
    }

    #[tokio::test]
    async fn frames_without_envelopes_count_against_the_message_rate() {
        let mut hub = hub(SHOP);
        hub.context.limiters = Arc::new(Limiters::new(&crate::RateLimits {
            agent_messages: Some(crate::Rate {
                per_second: 1,
                burst: 3,
            }),
            agent_bytes: None,
            agent_subscriptions: None,
            agent_calls: None,
            channels: Vec::new(),
        }));
        let mut alice = hub.connect(agent("shop", "alice"));
        let (_, key) = alice.sealer_and_key("orders.eu", now_ms());
        // A frame with no envelope at all, and one with a sender key alone: each costs one.
        let answer = alice.publish_with_keys(1, vec![], vec![]).await;
        assert_eq!(refusal(answer), (1, Some(RefusalCode::Malformed)));
        for id in 2..=3 {
            let answer = alice.publish_with_keys(id, vec![key.clone()], vec![]).await;
            assert_eq!(answer, ack(id));
        }
        match alice.publish_with_keys(4, vec![key.clone()], vec![]).await {
            server_frame::Kind::Refusal(r) => {
                assert_eq!(
                    RefusalCode::from_u32(r.code),
                    Some(RefusalCode::RateLimited)
                );
                assert!(r.retry_after_ms > 0 && r.retry_after_ms <= 1_000, "{r:?}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(hub.context.stats.snapshot().rate_limited, 1);
    }

    /// Sender keys count against the byte rate: keys alone (recipients a peer chooses) are no
    /// way past it.
    #[tokio::test]
    async fn sender_keys_count_against_the_byte_rate() {
        let mut hub = hub(SHOP);
        hub.context.limiters = Arc::new(Limiters::new(&crate::RateLimits {
            agent_messages: None,
            agent_bytes: Some(crate::Rate {
                per_second: 1,
                burst: 16 * 1024,
            }),
            agent_subscriptions: None,
            agent_calls: None,
            channels: Vec::new(),
        }));
        let mut alice = hub.connect(agent("shop", "alice"));
        let (_, mut key) = alice.sealer_and_key("orders.eu", now_ms());
        let answer = alice.publish_with_keys(1, vec![key.clone()], vec![]).await;
        assert_eq!(answer, ack(1));
        key.recipients = made_up_recipients(256);
        let answer = alice.publish_with_keys(2, vec![key], vec![]).await;
        assert_eq!(refusal(answer), (2, Some(RefusalCode::RateLimited)));
    }

    #[tokio::test]
    async fn request_and_direct_refusals() {
        let mut hub = hub(SHOP_REQUESTS);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        let mut eve = hub.connect(agent("lab", "eve"));
        assert_eq!(bob.subscribe(1, "_direct.shop.bob").await, ack(1));
        let now = now_ms();
        let mut direct = alice.sealer_at("_direct.shop.bob", now);

        // A reply_to in someone else's namespace, or outside any.
        for (id, other) in [(10, "_reply.shop.bob.r1"), (11, "orders.eu")] {
            let other = Channel::parse(other).unwrap();
            let batch = direct.seal_batch(&[b"x"], Some(&other), now).unwrap();
            assert_eq!(
                refusal(alice.publish(id, vec![batch]).await),
                (id, Some(RefusalCode::Denied))
            );
        }
        // A direct to nobody.
        let mut nobody = alice.sealer_at("_direct.shop.carol", now);
        let batch = nobody.seal_batch(&[b"x"], None, now).unwrap();
        assert_eq!(
            refusal(alice.publish(12, vec![batch]).await),
            (12, Some(RefusalCode::NoRecipient))
        );
        // Across segments, without a rule.
        let mut cross = eve.sealer_at("_direct.shop.bob", now);
        let batch = cross.seal_batch(&[b"x"], None, now).unwrap();
        assert_eq!(
            refusal(eve.publish(13, vec![batch]).await),
            (13, Some(RefusalCode::Denied))
        );
        // At most two outstanding requests here (the test hub's bound).
        for id in 0..3u64 {
            let reply_to = Channel::parse(&format!("_reply.shop.alice.r{id}")).unwrap();
            let batch = direct.seal_batch(&[b"q"], Some(&reply_to), now).unwrap();
            let answer = alice.publish(20 + id, vec![batch]).await;
            if id < 2 {
                assert_eq!(answer, ack(20 + id));
                assert!(is_deliver(&bob.next()));
            } else {
                assert_eq!(refusal(answer), (22, Some(RefusalCode::TooManyReplyGrants)));
            }
        }
        assert!(bob.rx.try_recv().is_err());
        // Bob may answer r0 but not twice in one publish; the grants end with Alice's session.
        let mut bobs = bob.sealer_at("_reply.shop.alice.r0", now);
        let one = bobs.seal_batch(&[b"a"], None, now).unwrap();
        let two = bobs.seal_batch(&[b"b"], None, now).unwrap();
        assert_eq!(
            refusal(bob.publish(30, vec![one, two]).await),
            (30, Some(RefusalCode::Denied))
        );
        alice.session.finish();
        let late = bobs.seal_batch(&[b"c"], None, now).unwrap();
        assert_eq!(
            refusal(bob.publish(31, vec![late]).await),
            (31, Some(RefusalCode::Denied))
        );
    }

    #[tokio::test]
    async fn a_request_needs_a_request_permit_and_a_direct_the_direct_one() {
        // SHOP: publish and subscribe on `orders.>`, no request permit there; the base
        // policies permit directs and requests within the segment.
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(bob.subscribe(1, "orders.eu").await, ack(1));
        assert_eq!(bob.subscribe(2, "_direct.shop.bob").await, ack(2));
        let now = now_ms();
        let reply_to = Channel::parse("_reply.shop.alice.r1").unwrap();
        let mut orders = alice.sealer_at("orders.eu", now);
        let request = orders.seal_batch(&[b"ping"], Some(&reply_to), now).unwrap();
        match bob_refusal(alice.publish(2, vec![request]).await) {
            (RefusalCode::Denied, reason) => {
                assert!(
                    reason.starts_with("a request on `orders.eu` is denied: no policy permits it"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(bob.rx.try_recv().is_err());
        let plain = orders.seal_batch(&[b"hello"], None, now).unwrap();
        assert_eq!(alice.publish(3, vec![plain]).await, ack(3));
        assert!(is_deliver(&bob.next()));

        // A request to an agent of the same segment: the base policy permits it.
        let mut direct = alice.sealer_at("_direct.shop.bob", now);
        let reply_to = Channel::parse("_reply.shop.alice.r2").unwrap();
        let request = direct.seal_batch(&[b"ping"], Some(&reply_to), now).unwrap();
        assert_eq!(alice.publish(4, vec![request]).await, ack(4));
        assert!(is_deliver(&bob.next()));

        // With a request permit on `orders.>`: a request alone passes; mixed with plain
        // envelopes on the same channel, both actions are needed (and permitted).
        let mut hub2 = self::hub(&format!("{SHOP}{SHOP_REQUESTS}"));
        let mut alice = hub2.connect(agent("shop", "alice"));
        let mut bob = hub2.connect(agent("shop", "bob"));
        assert_eq!(bob.subscribe(1, "orders.eu").await, ack(1));
        let mut orders = alice.sealer_at("orders.eu", now);
        let reply_to = Channel::parse("_reply.shop.alice.r3").unwrap();
        let both = [
            orders.seal_batch(&[b"ping"], Some(&reply_to), now).unwrap(),
            orders.seal_batch(&[b"fyi"], None, now).unwrap(),
        ];
        assert_eq!(alice.publish(4, both.to_vec()).await, ack(4));
        let stats = hub2.context.stats.snapshot();
        // bob's subscription and the publish's two actions: three decisions.
        assert_eq!((stats.policy_allows, stats.policy_denials), (3, 0));
    }

    fn bob_refusal(kind: server_frame::Kind) -> (RefusalCode, String) {
        match kind {
            server_frame::Kind::Refusal(r) => (RefusalCode::from_u32(r.code).unwrap(), r.reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_policy_change_ends_the_subscriptions_it_no_longer_allows() {
        let mut hub = hub(SHOP);
        let mut alice = hub.connect(agent("shop", "alice"));
        let mut bob = hub.connect(agent("shop", "bob"));
        assert_eq!(alice.subscribe(1, "orders.>").await, ack(1));
        assert_eq!(alice.subscribe(2, "_direct.shop.alice").await, ack(2));
        assert_eq!(alice.subscribe(3, "orders.eu").await, ack(3));

        // Nothing changed: deciding again ends nothing.
        alice.session.redecide().await.unwrap();
        assert!(alice.rx.try_recv().is_err());

        hub.context.authz.replace_for_tests(
            r#"@cross_segment
               permit (principal, action == Action::"subscribe", resource == Channel::"orders.eu");"#,
        );
        alice.session.redecide().await.unwrap();
        match alice.next() {
            server_frame::Kind::SubscriptionEnded(ended) => {
                assert_eq!(ended.subscription_id, 1);
                assert_eq!(RefusalCode::from_u32(ended.code), Some(RefusalCode::Denied));
                assert!(
                    ended.reason.contains("`orders.>` is no longer allowed"),
                    "{}",
                    ended.reason
                );
            }
            other => panic!("expected SubscriptionEnded, got {other:?}"),
        }
        assert!(alice.rx.try_recv().is_err());
        assert_eq!(hub.context.stats.snapshot().subscriptions_ended, 1);
        // The router no longer delivers to it, even once policies allow it again; `orders.eu`
        // still gets its delivery.
        hub.context.authz.replace_for_tests(SHOP);
        let mut sealer = bob.sealer("orders.eu");
        let batch = sealer.seal_batch(&[b"x"], None, NOW).unwrap();
        assert_eq!(bob.publish(9, vec![batch]).await, ack(9));
        match alice.next() {
            server_frame::Kind::Deliver(d) => assert_eq!(d.subscription_id, 3),
            other => panic!("{other:?}"),
        }
        assert!(alice.rx.try_recv().is_err());
        // Its ID is free again.
        assert_eq!(alice.subscribe(1, "orders.>").await, ack(1));
    }

    #[tokio::test]
    async fn a_time_window_ends_its_subscriptions_at_the_next_recheck() {
        assert!(!hub(SHOP).context.authz.reads_time());
        let until_s = now_ms() / 1000 + 2;
        let mut hub = hub(&format!(
            r#"@cross_segment
               permit (principal in Segment::"shop", action == Action::"subscribe",
                       resource in Namespace::"orders")
               when {{ context.now < {until_s} }};"#
        ));
        assert!(hub.context.authz.reads_time());
        let mut alice = hub.connect(agent("shop", "alice"));
        assert_eq!(alice.subscribe(1, "orders.>").await, ack(1));
        alice.session.recheck_time().await.unwrap();
        assert!(alice.rx.try_recv().is_err());

        // The window closes; the policy epoch does not change, the next recheck ends it.
        let left_ms = (until_s * 1000 + 20).saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(left_ms)).await;
        let epoch = hub.context.authz.engine().epoch();
        alice.session.recheck_time().await.unwrap();
        match alice.next() {
            server_frame::Kind::SubscriptionEnded(ended) => {
                assert_eq!(ended.subscription_id, 1);
                assert!(
                    ended.reason.contains("no policy permits"),
                    "{}",
                    ended.reason
                );
            }
            other => panic!("expected SubscriptionEnded, got {other:?}"),
        }
        assert_eq!(hub.context.authz.engine().epoch(), epoch);
    }

    #[test]
    fn reasons_are_bounded_at_char_boundaries() {
        let long = "é".repeat(2000);
        let cut = bounded(long);
        assert!(cut.len() <= entente_wire::MAX_REASON_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
