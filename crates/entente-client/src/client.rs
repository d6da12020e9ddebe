//! [`Client`]: the handle, and the two tasks behind it.
//!
//! One HTTP/2 connection carries one `Session` stream. Two tasks drive it:
//!
//! - the **writer** takes commands from the handles (publishes, subscribe and unsubscribe
//!   frames), seals queued publishes into batches with the [`Outbox`], registers what each
//!   frame waits for, and sends the frames;
//! - the **reader** takes the hub's frames: `Ack`/`Refusal` answer what is waiting, `Deliver`
//!   is opened by the subscription's [`Inbox`] (after fetching missing key bundles) and its
//!   messages and rejections are handed to the subscription.
//!
//! A third task, unless [`ClientOptions::renew`] turned it off, renews the certificate over
//! the connection at half-life ([`crate::renew`]). A renewal may also adopt a new intermediate
//! CA (an intermediate rollover) and this principal's re-signed key bundle: the key bundle
//! cache then verifies against the renewed identity's trust bundle.
//!
//! When the session ends — the hub closes it (revocation, expiry, shutdown), the connection
//! drops, [`Client::close`] is called, or every handle and subscription is dropped — everything
//! waiting fails with [`ErrorKind::Closed`], and every subscription gets that error as its last
//! item (except when this client closed the session: then the streams just end). When the hub
//! ends one subscription (`SubscriptionEnded`: a policy change no longer allows it), that
//! subscription gets an error carrying the hub's code and reason as its last item.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use entente_crypto::{SealerOptions, TAG_LEN, VerifiedKeyBundle};
use entente_hub::handoff;
use entente_types::namespace::{self, ReplyNamespace};
use entente_types::{Channel, ChannelPattern, MessageId, Principal};
use entente_wire::{
    ClientFrame, Deliver, DirectoryRequest, DurableAck, Held, KeyBundle, ServerFrame, Subscribe,
    Unsubscribe, client_frame, server_frame,
};
use futures_util::FutureExt;
use tokio::net::ToSocketAddrs;
use tokio::sync::{mpsc, oneshot, watch};

use crate::bundles::KeyBundleCache;
use crate::inbox::{DurableDelivery, Inbox};
use crate::outbox::{
    self, Outbox, OutboxOptions, Outgoing, Recipients, RoundTrip, RoundTrips, Sealed,
};
use crate::renew::{self, Credential};
use crate::room::{ByteRoom, Taken};
use crate::stats::{self, ClientStats, Stats};
use crate::subscription;
use crate::transport::{Driver, SessionStream, Transport, end_status, status_text};
use crate::{
    ClientOptions, Error, ErrorKind, Identity, Message, RefusalCode, Requests, Subscription,
};

/// A channel's members as the directory listed them, or its refusal, with when; `None` until
/// the directory answered. Locked across a lookup, so that publishes on the channel meanwhile
/// wait for its answer rather than asking again.
type MembersSlot = Arc<tokio::sync::Mutex<Option<(Instant, Members)>>>;

/// A channel's members as the directory listed them, or its refusal.
type Members = Result<Arc<Recipients>, Error>;

/// How long a directory's refusal of a channel is kept.
const DENIAL_KEPT: Duration = Duration::from_secs(1);
/// Past this many channels remembered, those whose answer is stale, then all not being looked
/// up, are forgotten.
const MAX_CHANNELS_KEPT: usize = 1024;
/// Frames the writer may have queued for the HTTP/2 stream.
const OUTBOUND_FRAMES: usize = 64;
/// Most commands room is made for at once when gathering a batch.
const MAX_GATHER: usize = 1024;

/// A connection to an Entente hub, as one principal.
///
/// Cheap to clone: every clone is a handle to the same connection and session. The session
/// ends when [`close`](Self::close) is called, when the hub ends it, or when the last handle
/// and [`Subscription`] are dropped.
///
/// Messages are sealed and signed before they leave and opened and verified when they arrive:
/// the hub routes them without being able to read them. Publishing seals for the channel's
/// recipients — from the hub's directory ([`publish`](Self::publish)) or named by the caller
/// ([`publish_to`](Self::publish_to)) — and batches under load: messages queued together on
/// one channel share one signature.
///
/// Needs a Tokio runtime.
///
/// ```no_run
/// use std::{path::Path, time::SystemTime};
///
/// use entente_client::{Client, ClientOptions, Identity};
/// use tokio_stream::StreamExt;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let identity = Identity::load(Path::new("alice"), SystemTime::now())?;
/// let client = Client::connect(identity, "127.0.0.1:7443", ClientOptions::new()).await?;
///
/// let mut orders = client.subscribe("orders.>").await?;
/// client.publish("orders.eu", "two espressos").await?;
/// while let Some(message) = orders.next().await {
///     match message {
///         Ok(m) => println!("{} on {}: {:?}", m.sender, m.channel, m.payload),
///         // A message that did not verify or open: reported, never shown.
///         Err(e) => eprintln!("{e}"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Names the client's principal and whether its session is closed: none of what it holds
/// (messages set aside or queued for resending, with their plaintexts) is shown.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("principal", self.principal())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// The hub's answer to one queued message ([`Client::enqueue`],
/// [`Responder::enqueue_reply`](crate::Responder::enqueue_reply)): a future that resolves to
/// `Ok(())` on the hub's `Ack`, or to the error (refusal, closed session, timeout).
///
/// Dropping it does not cancel the publish.
#[derive(Debug)]
#[must_use = "a publish is only known to have succeeded once its ack resolves"]
pub struct PublishAck {
    answer: oneshot::Receiver<Result<Vec<Held>, Error>>,
    deadline: tokio::time::Instant,
    /// Armed only if the answer is not there when first polled (and `timed`): most acks of
    /// a batch are answered by then, and need no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether `deadline` is this future's to keep: not when whoever awaits it ends by then
    /// anyway (a request's own timeout), and no timer is armed.
    timed: bool,
    client: Client,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
    transport: Transport,
    /// Recipients of channels, from the directory, with when they were fetched: at most
    /// [`MAX_CHANNELS_KEPT`] beyond those being looked up. A refusal (`DENIED`) is kept a
    /// second: an application publishing on where it may not asks the hub once, not at every
    /// call (each refusal counts against its risk).
    members: Mutex<HashMap<Channel, MembersSlot>>,
    /// Whether the session subscribed to this principal's reply namespace (on the first
    /// request).
    replies: tokio::sync::Mutex<bool>,
    /// Set once it did: later requests look here, not at the lock.
    listening: AtomicBool,
    /// This principal's reply namespace, where each request draws its reply channel.
    reply_namespace: ReplyNamespace,
    /// The last target of a direct message or request, with its channel and recipients: a
    /// requester mostly asks the same target again.
    last_direct: Mutex<Option<Direct>>,
}

/// Where a direct message to one target goes, and who may open it.
#[derive(Debug)]
struct Direct {
    bundle: VerifiedKeyBundle,
    channel: Channel,
    recipients: Arc<Recipients>,
}

/// What the handles and the tasks share.
#[derive(Debug)]
struct Shared {
    /// The identity connected with. Its principal, message keys and key epoch never change;
    /// the certificate in use, the trust bundle and this principal's key bundle (signed again
    /// after an intermediate rollover, or at a renewal past half its life) are `credential`'s
    /// ([`Shared::own_key_bundle`]).
    identity: Arc<Identity>,
    /// Shared with the transport, which opens connections with the certificate in use.
    credential: Arc<Credential>,
    options: ClientOptions,
    bundles: KeyBundleCache,
    stats: Stats,
    state: Mutex<State>,
    next_id: AtomicU64,
    /// Payload bytes the publish queue has room for ([`ClientOptions::publish_queue_bytes`]):
    /// taken by each message queued, given back by the writer once it sent the message;
    /// closed when the writer ends.
    publish_room: Arc<ByteRoom>,
    /// Set to stop both tasks.
    shutdown: watch::Sender<bool>,
    /// Set by the writer when it stopped because the session's connection took no more
    /// frames: the session ended by a failure, not by this client.
    transport_failed: AtomicBool,
    /// Set by the reader once the session is over.
    ended: watch::Sender<bool>,
    /// Replies for the writer to send again, each alone (the hub refused the batch of
    /// replies they shared). Unbounded, but never more than the replies awaiting an answer.
    resend: mpsc::UnboundedSender<Outgoing<PublishWaiter>>,
    /// The writer's commands, for the reader to end a subscription nobody reads any more
    /// (weak: the writer ends once every handle is gone).
    commands: mpsc::WeakSender<Command>,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, Pending>,
    /// When each publish sent stops being waited for, in the order they were sent: past it,
    /// one the hub has not answered is let go ([`State::sweep_unanswered`]).
    publish_deadlines: VecDeque<(Instant, u64)>,
    subscriptions: HashMap<u64, Arc<SubscriptionEntry>>,
    /// Why the session ended, once it has.
    closed: Option<String>,
    /// Channels whose sealer must start a new epoch (the hub refused a frame).
    resets: Vec<Channel>,
    /// Channels, with the epoch, whose sender key the hub acknowledged in a frame carrying it
    /// (from then on it goes only once per resend interval).
    keys_acked: Vec<(Channel, u64)>,
    /// Requests waiting for their reply, by reply channel.
    replies: HashMap<Channel, ReplyWaiter>,
    /// The most requests that waited for their replies at once, lately: raised to the count
    /// whenever a request starts waiting, decayed by the writer ([`Shared::round_trip_limits`]).
    in_flight_peak: usize,
    /// The most requests one delivery (a `Deliver` frame) held, lately: raised by the reader,
    /// decayed by the writer ([`Shared::round_trip_limits`]).
    delivered_peak: usize,
}

impl State {
    /// Lets go of the publishes sent before `now` less twice the request timeout that the hub
    /// has not answered, and returns their waiters: a hub that never answers can't make the
    /// session keep each frame's state (and a batch of replies' plaintexts, kept to send them
    /// again) for as long as it lasts. Their channels start new epochs, as after a refusal,
    /// since the hub may not have taken their sender keys.
    fn sweep_unanswered(&mut self, now: Instant) -> Vec<Vec<PublishWaiter>> {
        let mut unanswered = Vec::new();
        while let Some(&(deadline, id)) = self.publish_deadlines.front() {
            if deadline > now {
                break;
            }
            self.publish_deadlines.pop_front();
            let Entry::Occupied(slot) = self.pending.entry(id) else {
                continue;
            };
            if let Pending::Publish { .. } = slot.get()
                && let Pending::Publish {
                    channel, waiters, ..
                } = slot.remove()
            {
                self.resets.push(channel);
                unanswered.push(waiters);
            }
        }
        unanswered
    }
}

/// A request waiting for the one reply it accepts.
#[derive(Debug)]
struct ReplyWaiter {
    /// The request's target: a reply from anyone else is not the answer.
    from: Principal,
    done: oneshot::Sender<Message>,
}

/// Undoes a subscription being opened, at the hub too, unless it settled (taken or refused).
struct Opening<'a> {
    shared: &'a Shared,
    id: u64,
    settled: bool,
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.shared.detach(self.id);
        }
    }
}

/// Removes a request's waiter however the request ends, unless its reply took it.
struct AwaitingReply<'a> {
    shared: &'a Shared,
    channel: Channel,
    /// Whether the reply arrived: the reader took the waiter out to hand it over.
    answered: bool,
}

/// The messages of one durable entry: those the application has yet to acknowledge, and those
/// it has.
#[derive(Debug, Default)]
struct Unacked {
    left: HashSet<MessageId>,
    done: HashSet<MessageId>,
}

/// What an `Ack` or `Refusal` answers.
#[derive(Debug)]
enum Pending {
    Subscribe {
        pattern: ChannelPattern,
        done: Waiter,
    },
    Unsubscribe {
        done: Option<Waiter>,
    },
    Publish {
        channel: Channel,
        waiters: Vec<PublishWaiter>,
        /// A batch of replies: its messages, in waiter order, to send again one by one if the
        /// hub refuses the batch for one of them.
        replies: Vec<Outgoing<()>>,
        /// The epoch of the sender key the frame carried, if it carried one.
        key_epoch: Option<u64>,
    },
}

type Waiter = oneshot::Sender<Result<(), Error>>;

/// A publisher waiting for its `Ack` (with what the hub holds for approval) or `Refusal`.
type PublishWaiter = oneshot::Sender<Result<Vec<Held>, Error>>;

#[derive(Debug)]
struct SubscriptionEntry {
    pattern: ChannelPattern,
    items: mpsc::Sender<Result<Message, Error>>,
    /// The payload bytes `items` may hold ([`ClientOptions::subscription_queue_bytes`]): taken
    /// by the reader for each message it queues, given back by the [`Subscription`] as it takes
    /// them, closed when the subscription is dropped or unsubscribed.
    room: Arc<ByteRoom>,
    /// What was delivered before the hub acknowledged the subscription, set aside by the
    /// reader until the `Ack` (the application has no [`Subscription`] to take it out of
    /// yet): queued then, in order.
    early: Mutex<Early>,
    inbox: Mutex<Inbox>,
    /// Durable subscriptions: the messages of each stored entry not yet acknowledged, and
    /// those acknowledged, by ID (a redelivery adds what opened now and was not acknowledged
    /// before; an ID acknowledged twice, or once per delivery, counts once).
    unacked: Option<Mutex<HashMap<u64, Unacked>>>,
    /// The session's subscription to its own reply namespace: the reader hands each reply
    /// straight to the request waiting for it, with no queue and no task in between.
    replies: bool,
}

/// Items set aside while a subscription waits for its `Ack`: at most as many, and as many
/// payload bytes, as its queue holds; those that came after are dropped and counted.
#[derive(Debug, Default)]
struct Early {
    items: Vec<Result<Message, Error>>,
    bytes: u32,
    dropped: u64,
}

impl SubscriptionEntry {
    /// What was set aside for the subscription before its `Ack`, taken out.
    fn take_early(&self) -> Early {
        std::mem::take(&mut *self.early.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Early {
    /// What was set aside, in order, then an error saying how many came after and were
    /// dropped, if any.
    fn into_items(mut self) -> Vec<Result<Message, Error>> {
        if self.dropped > 0 {
            self.items.push(Err(Error::new(
                ErrorKind::Limited,
                format!(
                    "{} messages delivered before the hub acknowledged the subscription were \
                     dropped: more than its queue holds",
                    self.dropped
                ),
            )));
        }
        self.items
    }
}

#[derive(Debug)]
enum Command {
    /// A message, with the room it took in the publish queue
    /// ([`ClientOptions::publish_queue_bytes`]), given back once the writer sent it (or when
    /// the message is dropped before); none for a reply sent again.
    Publish(Outgoing<PublishWaiter>, Option<Taken>),
    /// A subscribe or unsubscribe frame, already registered as pending.
    Frame(client_frame::Kind),
}

impl Command {
    /// A request or a reply, or neither.
    fn round_trip(&self) -> Option<RoundTrip> {
        match self {
            Self::Publish(m, _) => outbox::round_trip(m),
            Self::Frame(_) => None,
        }
    }
}

/// How the session ended.
#[derive(Debug)]
enum End {
    /// [`Client::close`], or every handle dropped.
    ByClient,
    /// The hub ended it, or the connection failed: why.
    Hub(String),
}

// === impl Client ===

impl Client {
    /// Connects to the hub at `hub` (`"host:port"` or a `SocketAddr`) as `identity`: TLS 1.3
    /// with the identity's certificate, verifying that the server is the hub of the
    /// identity's trust domain; then the session: by default a framed connection of its own,
    /// the calls going on an HTTP/2 connection opened when one is needed; or a stream of one
    /// HTTP/2 connection that also carries every call ([`ClientOptions::session_transport`]).
    /// A hub that refuses the connection or the
    /// session (a revoked certificate, a connection limit, a quarantine) makes this fail with
    /// its reason.
    pub async fn connect(
        identity: Identity,
        hub: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let limit = options.connect_timeout;
        tokio::time::timeout(limit, Self::connect_now(identity, hub, options))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("connecting to the hub took longer than {limit:?}"),
                )
            })?
    }

    async fn connect_now(
        identity: Identity,
        hub: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Self, Error> {
        let bundles = KeyBundleCache::new(identity.trust().clone());
        bundles.admit(identity.key_bundle(), now_ms())?;
        let identity = Arc::new(identity);
        let credential = Arc::new(Credential::new(identity.clone()));
        let (outbound, outbound_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let (transport, stream, driver) = Transport::connect(
            credential.clone(),
            hub,
            options.limits,
            options.session_transport,
            options.keepalive_settings(),
            outbound_rx,
        )
        .await?;
        let (commands, commands_rx) = mpsc::channel(options.publish_queue);
        let (resend, resend_rx) = mpsc::unbounded_channel();
        let publish_room = Arc::new(ByteRoom::new(options.publish_queue_bytes));
        let shared = Arc::new(Shared {
            credential,
            identity,
            options,
            bundles,
            stats: Stats::default(),
            state: Mutex::new(State::default()),
            next_id: AtomicU64::new(1),
            publish_room,
            shutdown: watch::channel(false).0,
            transport_failed: AtomicBool::new(false),
            ended: watch::channel(false).0,
            resend,
            commands: commands.downgrade(),
        });
        tokio::spawn(write(shared.clone(), commands_rx, resend_rx, outbound));
        tokio::spawn(read(shared.clone(), transport.clone(), stream, driver));
        if shared.options.renew {
            let (shared, transport) = (shared.clone(), transport.clone());
            tokio::spawn(async move {
                let shutdown = shared.shutdown.subscribe();
                let timeout = shared.options.request_timeout;
                renew::run(
                    &shared.credential,
                    &shared.bundles,
                    &shared.stats,
                    &transport,
                    timeout,
                    shutdown,
                )
                .await;
            });
        }
        let reply_namespace = ReplyNamespace::of(shared.identity.principal());
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                commands,
                transport,
                members: Mutex::new(HashMap::new()),
                replies: tokio::sync::Mutex::new(false),
                listening: AtomicBool::new(false),
                last_direct: Mutex::new(None),
                reply_namespace,
            }),
        })
    }

    /// Who this client is.
    pub fn principal(&self) -> &Principal {
        self.inner.shared.identity.principal()
    }

    /// The credentials in use: the identity connected with, or — once the client renewed its
    /// certificate ([`ClientOptions::renew`]) — the same identity with the latest certificate
    /// and TLS key, and the trust bundle and key bundle as the latest renewal left them (the
    /// intermediates of a CA rollover adopted, the key bundle re-signed). Connect again with
    /// this, not the original, which expires sooner.
    ///
    /// ```no_run
    /// # async fn run(client: entente_client::Client) -> Result<(), entente_client::Error> {
    /// use entente_client::{Client, ClientOptions};
    ///
    /// client.close().await;
    /// let identity = client.identity();
    /// let again = Client::connect(identity, "127.0.0.1:7443", ClientOptions::new()).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn identity(&self) -> Identity {
        Identity::clone(&self.inner.shared.credential.current())
    }

    /// When the certificate in use expires. With renewal on, this moves later at each
    /// renewal; the hub closes the session (`UNAUTHENTICATED`) once it has passed.
    ///
    /// ```no_run
    /// # fn run(client: entente_client::Client) {
    /// use std::time::SystemTime;
    ///
    /// let left = client.certificate_not_after().duration_since(SystemTime::now());
    /// println!("the certificate is valid for another {left:?}");
    /// let stats = client.stats();
    /// println!("{} renewals, {} failed", stats.renewals, stats.renewal_failures);
    /// if let Some(e) = client.renewal_error() {
    ///     eprintln!("the last renewal failed: {e}");
    /// }
    /// # }
    /// ```
    pub fn certificate_not_after(&self) -> SystemTime {
        self.inner.shared.credential.current().not_after()
    }

    /// Why the latest renewal of the certificate failed (the hub refused it or did not
    /// answer, its certificate did not check out, or it could not be written to the identity
    /// directory), or took effect with part of the hub's answer refused (a trust bundle whose
    /// intermediates are not under this identity's roots, a key bundle for other keys: the
    /// current one is kept); `None` when none failed since the last one that succeeded.
    /// Failures are retried with backoff until the certificate expires, and counted in
    /// [`ClientStats::renewal_failures`].
    pub fn renewal_error(&self) -> Option<Error> {
        self.inner.shared.credential.failure()
    }

    /// Subscribes to `pattern` (a channel, or a pattern with `*` for one token and a final `>`
    /// for one or more) and waits for the hub's answer.
    ///
    /// A refusal is an error carrying the hub's code ([`Error::refusal_code`]): kind
    /// [`ErrorKind::Denied`] when the principal may not subscribe there.
    ///
    /// The subscription yields every message that arrives for it, opened and verified, in the
    /// order the hub delivered them (so in order per sender). Envelopes that fail to verify or
    /// open are **not** dropped silently: each becomes an `Err` item of kind
    /// [`ErrorKind::Rejected`] (or the directory's error kind when the sender's key bundle
    /// could not be obtained — one item per batch then) and is counted in
    /// [`ClientStats::rejected`]. The stream goes on after them; it ends after an
    /// [`ErrorKind::Closed`] item when the hub ends the session, and after an
    /// [`ErrorKind::Denied`] item (code and reason from the hub) when the hub ends the
    /// subscription because a policy change no longer allows it. What arrives before the
    /// hub's answer is kept for the subscription up to what its queue holds; an
    /// [`ErrorKind::Limited`] item says how many came past that and were dropped
    /// ([`ClientOptions::subscription_queue`](crate::ClientOptions::subscription_queue)).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        let pattern = ChannelPattern::parse(pattern).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("bad channel pattern: {e}")).with_source(e)
        })?;
        let (id, items, room) = self.open_subscription(&pattern, None, false).await?;
        Ok(Subscription::new(id, pattern, items, room, self.clone()))
    }

    /// Subscribes to a durable channel (docs/DURABLE.md) as the durable consumer `consumer`,
    /// made at the first subscription and kept by the hub while this client is away: it reads
    /// from where it left off everything published on `pattern` since it was made, at least
    /// once. `pattern` is the durable channel's pattern, or one channel it captures; the
    /// consumer belongs to this client's principal.
    ///
    /// Each message carries [`Message::durable`]; acknowledge it with
    /// [`ack`](Self::ack) once it is handled. What is not acknowledged within the channel's
    /// `ack_wait` (or when the subscription ends) is delivered again, with a higher
    /// `attempt`; after the channel's `max_deliver` attempts it goes to a dead-letter log.
    /// A refusal is [`ErrorKind::Refused`] with code `NO_STREAM` when no durable channel
    /// captures `pattern`, `DUPLICATE_SUBSCRIPTION` when another session holds the consumer.
    pub async fn subscribe_durable(
        &self,
        pattern: &str,
        consumer: &str,
    ) -> Result<Subscription, Error> {
        let pattern = ChannelPattern::parse(pattern).map_err(|e| {
            Error::new(ErrorKind::InvalidInput, format!("bad channel pattern: {e}")).with_source(e)
        })?;
        let (id, items, room) = self
            .open_subscription(&pattern, Some(consumer), false)
            .await?;
        Ok(Subscription::new(id, pattern, items, room, self.clone()))
    }

    /// Acknowledges `message` of a durable subscription: once every message of the stored
    /// entry it came in is acknowledged, the hub is told and does not deliver the entry to
    /// this consumer again. Does nothing for a message of a live subscription, or of a
    /// subscription that has ended.
    ///
    /// The acknowledgement is queued in order with this client's other frames, without
    /// waiting for the hub; one still queued when the client closes is lost, and the entry
    /// comes again (delivery is at least once).
    pub async fn ack(&self, message: &Message) -> Result<(), Error> {
        let Some(durable) = message.durable else {
            return Ok(());
        };
        let entry = self
            .inner
            .shared
            .lock()
            .subscriptions
            .get(&durable.subscription)
            .cloned();
        let Some(entry) = entry else {
            return Ok(());
        };
        let done = entry.unacked.as_ref().is_some_and(|unacked| {
            let mut unacked = unacked.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(entry) = unacked.get_mut(&durable.sequence) else {
                return false;
            };
            if !entry.left.remove(&message.message_id) {
                return false;
            }
            entry.done.insert(message.message_id);
            if !entry.left.is_empty() {
                return false;
            }
            unacked.remove(&durable.sequence);
            true
        });
        if done {
            self.send_ack(durable.subscription, vec![durable.sequence])
                .await?;
        }
        Ok(())
    }

    async fn send_ack(&self, subscription_id: u64, sequences: Vec<u64>) -> Result<(), Error> {
        let frame = Command::Frame(client_frame::Kind::DurableAck(DurableAck {
            subscription_id,
            sequences,
        }));
        self.inner
            .commands
            .send(frame)
            .await
            .map_err(|_| self.inner.shared.closed_error())
    }

    /// Subscribes to `pattern` (as durable consumer `durable`, if given) and returns the
    /// subscription's ID and items.
    async fn open_subscription(
        &self,
        pattern: &ChannelPattern,
        durable: Option<&str>,
        replies: bool,
    ) -> Result<(u64, mpsc::Receiver<Result<Message, Error>>, Arc<ByteRoom>), Error> {
        let shared = &self.inner.shared;
        let id = shared.next_id();
        let (items, items_rx) = mpsc::channel(shared.options.subscription_queue);
        let room = Arc::new(ByteRoom::new(shared.options.subscription_queue_bytes));
        let identity = &shared.identity;
        let entry = Arc::new(SubscriptionEntry {
            pattern: pattern.clone(),
            items,
            room: Arc::clone(&room),
            early: Mutex::default(),
            inbox: Mutex::new(Inbox::new(
                identity.principal().clone(),
                identity.key_bundle().epoch(),
                identity.message_keys().clone(),
                pattern.clone(),
                durable.is_none().then(now_ms),
            )),
            unacked: durable.map(|_| Mutex::default()),
            replies,
        });
        let (done, answer) = oneshot::channel();
        shared.register(
            id,
            Pending::Subscribe {
                pattern: pattern.clone(),
                done,
            },
            Some(entry),
        )?;
        // Timed out, or this future dropped (a caller's own timeout, `select!`): the hub may
        // still take the subscription, and would deliver to it with no one reading (a durable
        // consumer held, its entries redelivered into nothing): undone there too.
        let mut opening = Opening {
            shared,
            id,
            settled: false,
        };
        let frame = client_frame::Kind::Subscribe(Subscribe {
            subscription_id: id,
            pattern: pattern.to_string(),
            durable: durable.unwrap_or_default().to_owned(),
        });
        match self.exchange(Command::Frame(frame), answer).await {
            Ok(()) => {
                opening.settled = true;
                Ok((id, items_rx, room))
            }
            Err(e) if e.kind() == ErrorKind::Timeout => Err(e),
            // Refused (the hub forgot it already) or closed.
            Err(e) => {
                opening.settled = true;
                let mut state = shared.lock();
                state.subscriptions.remove(&id);
                state.pending.remove(&id);
                Err(e)
            }
        }
    }

    /// Publishes `payload` on `channel`, sealed for the channel's members as listed by the
    /// hub's directory (every principal subscribed to it; each key bundle verified against the
    /// trust bundle, and the list cached for the directory TTL), and waits for the hub's `Ack`.
    ///
    /// A refusal is an error carrying the hub's code: kind [`ErrorKind::Denied`] when the
    /// principal may not publish there, [`ErrorKind::Refused`] otherwise. A hub without a
    /// directory makes this fail with [`ErrorKind::Unsupported`]: use
    /// [`publish_to`](Self::publish_to) then.
    ///
    /// Concurrent publishes are batched: messages queued while a batch is sealed and sent go
    /// out together under one signature. Their order on a channel is the order in which they
    /// were queued; to publish many messages in a fixed order without waiting for each ack,
    /// use [`enqueue`](Self::enqueue).
    pub async fn publish(&self, channel: &str, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.enqueue(channel, payload).await?.await
    }

    /// Publishes `payload` on `channel`, sealed for `recipients` (and this client's own
    /// principal, so that its other sessions can read it), and waits for the hub's `Ack`.
    ///
    /// Each bundle is checked against this client's trust bundle (bundles already held are
    /// not verified again). When the recipients differ from the previous publish on the
    /// channel, a new sender-key epoch starts: removed recipients can't read what follows.
    ///
    /// Refusals and batching as for [`publish`](Self::publish).
    pub async fn publish_to(
        &self,
        channel: &str,
        payload: impl Into<Vec<u8>>,
        recipients: &[VerifiedKeyBundle],
    ) -> Result<(), Error> {
        self.enqueue_to(channel, payload, recipients).await?.await
    }

    /// Publishes `payload` on `channel` alone (in a batch and frame of its own) with a
    /// `purpose` for approvers, sealed for the channel's members like
    /// [`publish`](Self::publish), and waits for the hub's answer: `Some(held)` when the hub
    /// holds it for approval (a high-stakes channel: docs/POLICY.md, "Holding messages for
    /// approval"), `None` when it was routed at once. A held message is delivered once
    /// approved; see [`held`](Self::held) for what became of it.
    ///
    /// `purpose` must not be empty (at most 1024 bytes): approvers see it, never the payload.
    pub async fn publish_with_purpose(
        &self,
        channel: &str,
        payload: impl Into<Vec<u8>>,
        purpose: &str,
    ) -> Result<Option<Held>, Error> {
        let deadline = self.deadline();
        let channel = parse_channel(channel)?;
        if purpose.trim().is_empty() || purpose.len() > entente_wire::MAX_REASON_BYTES {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a purpose is 1 to {} bytes of text",
                    entente_wire::MAX_REASON_BYTES
                ),
            ));
        }
        let payload = self.check_payload(payload.into())?;
        let recipients = self.members(&channel).await?;
        let ack = self
            .queue(
                channel,
                payload,
                recipients,
                None,
                Some(purpose.to_owned()),
                deadline,
            )
            .await?;
        Ok(ack.held().await?.into_iter().next())
    }

    /// Queues `payload` for `channel`'s members, like [`publish`](Self::publish), but returns
    /// once it is queued: the returned [`PublishAck`] resolves when the hub answers. Messages
    /// queued one after the other are published in that order, batched.
    ///
    /// ```no_run
    /// # async fn run(client: entente_client::Client) -> Result<(), entente_client::Error> {
    /// let mut acks = Vec::new();
    /// for i in 0..100u32 {
    ///     acks.push(client.enqueue("metrics.cpu", i.to_be_bytes()).await?);
    /// }
    /// for ack in acks {
    ///     ack.await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enqueue(
        &self,
        channel: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<PublishAck, Error> {
        let deadline = self.deadline();
        let channel = parse_channel(channel)?;
        let payload = self.check_payload(payload.into())?;
        let recipients = self.members(&channel).await?;
        self.queue(channel, payload, recipients, None, None, deadline)
            .await
    }

    /// Queues `payload` for `recipients`, like [`publish_to`](Self::publish_to), but returns
    /// once it is queued (see [`enqueue`](Self::enqueue)).
    pub async fn enqueue_to(
        &self,
        channel: &str,
        payload: impl Into<Vec<u8>>,
        recipients: &[VerifiedKeyBundle],
    ) -> Result<PublishAck, Error> {
        let deadline = self.deadline();
        let channel = parse_channel(channel)?;
        let payload = self.check_payload(payload.into())?;
        let shared = &self.inner.shared;
        let now = now_ms();
        let bundles = recipients
            .iter()
            .map(|b| shared.bundles.admit(b, now))
            .collect::<Result<Vec<_>, _>>()?;
        let recipients = Arc::new(Recipients::new(&shared.own_key_bundle(), bundles));
        self.queue(channel, payload, recipients, None, None, deadline)
            .await
    }

    /// Verifies `bundle` against the identity's trust bundle and keeps it, so that messages
    /// from its principal can be verified (and it can be a recipient) without asking the
    /// hub's directory.
    pub fn trust_key_bundle(&self, bundle: KeyBundle) -> Result<VerifiedKeyBundle, Error> {
        self.inner.shared.bundles.trust(bundle, now_ms())
    }

    /// The verified key bundle of `principal`: the newest one held, otherwise from the hub's
    /// directory. Direct messages, requests and replies are sealed to it.
    ///
    /// What is held is refreshed from the directory once it was fetched (or given with
    /// [`trust_key_bundle`](Self::trust_key_bundle)) longer ago than the directory TTL
    /// ([`ClientOptions::directory_ttl`]), as a channel's members are: a principal that
    /// enrolled again with new keys (say, after its old ones leaked) is sealed for under the
    /// new ones from then on. The directory can only add a newer bundle that verifies: if the
    /// refresh fails (the hub does not answer, has no directory, does not list the principal,
    /// or offers a bundle that does not verify), the one held stays in use until the next
    /// refresh.
    pub async fn key_bundle(&self, principal: &Principal) -> Result<VerifiedKeyBundle, Error> {
        let shared = &self.inner.shared;
        let now = now_ms();
        if let Some(bundle) = shared.bundles.latest(principal, now) {
            let ttl = millis(shared.options.directory_ttl);
            if !shared.bundles.refresh_due(principal, now, ttl) {
                return Ok(bundle);
            }
            // Whatever went wrong is not this call's failure: the bundle held stays.
            lookup_bundles(
                shared,
                &self.inner.transport,
                std::slice::from_ref(principal),
            )
            .await;
            return Ok(shared.bundles.latest(principal, now_ms()).unwrap_or(bundle));
        }
        let failures = lookup_bundles(
            shared,
            &self.inner.transport,
            std::slice::from_ref(principal),
        )
        .await;
        if let Some(bundle) = shared.bundles.latest(principal, now_ms()) {
            return Ok(bundle);
        }
        Err(shared.after_end(
            failures
                .get(principal.as_str())
                .map(Error::duplicate)
                .unwrap_or_else(|| no_bundle(principal, None)),
        ))
    }

    /// Asks the hub for a one-time join token for `agent` (listed administrators, or as the hub's policies permit `enroll` on it). `ttl` of
    /// zero takes the hub's default. Returns the token and its expiry (Unix milliseconds).
    pub async fn create_token(
        &self,
        agent: &entente_types::AgentId,
        ttl: Duration,
    ) -> Result<(String, u64), Error> {
        self.token_for(agent.as_str(), ttl).await
    }

    /// Asks the hub for a one-time join token for the human `human`
    /// (`spiffe://TD/human/NAME`; listed administrators, or as the policies permit `enroll` on it), as [`create_token`](Self::create_token)
    /// does for an agent. The human enrolls with it like an agent ([`crate::enroll`]) and acts
    /// with its own identity: approving requests, giving grants, as its policies allow.
    pub async fn create_human_token(
        &self,
        human: &entente_types::HumanId,
        ttl: Duration,
    ) -> Result<(String, u64), Error> {
        self.token_for(human.as_str(), ttl).await
    }

    async fn token_for(&self, principal: &str, ttl: Duration) -> Result<(String, u64), Error> {
        if ttl.as_secs() == 0 && !ttl.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "a join token lives at least one second",
            ));
        }
        let response: entente_wire::CreateTokenResponse = self
            .inner
            .transport
            .unary(
                "/entente.v1.Admin/CreateToken",
                entente_wire::CreateTokenRequest {
                    agent: principal.to_owned(),
                    ttl_seconds: ttl.as_secs(),
                },
                self.inner.shared.options.request_timeout,
                "creating a join token",
            )
            .await
            .map_err(|e| self.inner.shared.after_end(e))?;
        Ok((response.token, response.expires_at_ms))
    }

    /// Revokes principals (listed administrators, or as the policies permit `revoke` on each) and certificate serials (listed administrators only); returns how many live
    /// connections the hub closed.
    pub async fn revoke(
        &self,
        principals: &[Principal],
        serials: &[Vec<u8>],
    ) -> Result<u32, Error> {
        let response: entente_wire::RevokeResponse = self
            .inner
            .transport
            .unary(
                "/entente.v1.Admin/Revoke",
                entente_wire::RevokeRequest {
                    principals: principals.iter().map(ToString::to_string).collect(),
                    serials: serials.to_vec(),
                },
                self.inner.shared.options.request_timeout,
                "revoking",
            )
            .await
            .map_err(|e| self.inner.shared.after_end(e))?;
        Ok(response.closed_connections)
    }

    /// Replaces the hub's running policy set with `sources` — `(name, text)` pairs of Cedar
    /// policies, such as file names and contents — and the hub's base policies
    /// (listed administrators, or as the policies permit `admin` on `Hub::"hub"`). Returns the new policy epoch and how many policies run, the
    /// base policies included.
    ///
    /// All or nothing: a set the hub refuses (invalid Cedar, a policy that does not fit the
    /// schema or Entente's rules, a source named `base`, bounds) is an error of kind
    /// [`ErrorKind::InvalidInput`] whose [`Error::details`] lists each problem,
    /// `file:line:col: …`; the running set is unchanged then. Subscriptions the new set no
    /// longer allows are ended by the hub (see [`Client::subscribe`]).
    pub async fn load_policies(&self, sources: &[(String, String)]) -> Result<(u64, u32), Error> {
        let request = entente_wire::LoadPoliciesRequest {
            sources: sources
                .iter()
                .map(|(name, text)| entente_wire::PolicySource {
                    name: name.clone(),
                    text: text.clone(),
                })
                .collect(),
        };
        let response: entente_wire::LoadPoliciesResponse = self
            .inner
            .transport
            .unary(
                "/entente.v1.Admin/LoadPolicies",
                request,
                self.inner.shared.options.request_timeout,
                "loading policies",
            )
            .await
            .map_err(|e| match refused_policies(&e) {
                Some(refused) => refused,
                None => self.inner.shared.after_end(e),
            })?;
        Ok((response.epoch, response.policies))
    }

    /// The hub's running policy set (listed administrators, or `admin` on `Hub::"hub"`): its epoch, its sources (`base`
    /// first) and each policy's ID and place.
    pub async fn policies(&self) -> Result<entente_wire::ShowPoliciesResponse, Error> {
        self.inner
            .transport
            .unary(
                "/entente.v1.Admin/ShowPolicies",
                entente_wire::ShowPoliciesRequest {},
                self.inner.shared.options.request_timeout,
                "showing the policies",
            )
            .await
            .map_err(|e| self.inner.shared.after_end(e))
    }

    /// How the hub would decide `principal` doing `action` (`publish`, `subscribe`, `direct`,
    /// `request`, …) on a resource (listed administrators, or `admin` on `Hub::"hub"`): `resource_type` is `channel` (a
    /// pattern for `subscribe`), `agent` (a SPIFFE ID) or `segment` (a name). The answer says
    /// whether it is allowed, which policies decided, and explains it in words.
    pub async fn check_policy(
        &self,
        principal: &Principal,
        action: &str,
        resource_type: &str,
        resource: &str,
    ) -> Result<entente_wire::CheckPolicyResponse, Error> {
        self.inner
            .transport
            .unary(
                "/entente.v1.Admin/CheckPolicy",
                entente_wire::CheckPolicyRequest {
                    principal: principal.to_string(),
                    action: action.to_owned(),
                    resource_type: resource_type.to_owned(),
                    resource: resource.to_owned(),
                },
                self.inner.shared.options.request_timeout,
                "checking a policy decision",
            )
            .await
            .map_err(|e| self.inner.shared.after_end(e))
    }

    /// The client's counters, and the requests waiting for their reply now.
    pub fn stats(&self) -> ClientStats {
        let shared = &self.inner.shared;
        let mut stats = shared.stats.snapshot();
        stats.awaiting_replies = shared.lock().replies.len() as u64;
        stats
    }

    /// The connection, for [`crate::danger`].
    pub(crate) fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// How long a request may wait for the hub's answer, for [`crate::danger`].
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.shared.options.request_timeout
    }

    /// The identity in use: the connected one's principal and message keys, with the latest
    /// certificate, trust bundle and key bundle.
    pub(crate) fn current_identity(&self) -> Arc<Identity> {
        self.inner.shared.credential.current()
    }

    /// `error`, or the reason the session ended if it ended meanwhile.
    pub(crate) fn after_end(&self, error: Error) -> Error {
        self.inner.shared.after_end(error)
    }

    /// Whether the session is over.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.lock().closed.is_some()
    }

    /// Ends the session and waits until it is over. Waiting publishes and subscriptions fail
    /// with [`ErrorKind::Closed`]; subscription streams end.
    pub async fn close(&self) {
        let shared = &self.inner.shared;
        shared.shutdown.send_replace(true);
        // Publishers waiting for room in the queue fail now, not once the writer stops.
        shared.publish_room.close();
        let mut ended = shared.ended.subscribe();
        let _ = ended.wait_for(|ended| *ended).await;
    }

    /// Unsubscribes `id` and waits for the hub's answer (a subscription the hub ended already
    /// is over: nothing to ask). `release` runs once the client forgot it, before the wait: the
    /// subscription lets go of its buffer, on which the reader may be waiting.
    ///
    /// The frame is queued before the first wait, so that the hub is told even if this future
    /// is dropped (a caller's timeout) while the queue is full: the client has forgotten the
    /// subscription, and the hub must too.
    pub(crate) async fn unsubscribe(&self, id: u64, release: impl FnOnce()) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let gone = {
            let mut state = shared.lock();
            state.closed.is_none() && state.subscriptions.remove(&id).is_none()
        };
        release();
        if gone {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        shared.register(id, Pending::Unsubscribe { done: Some(done) }, None)?;
        let frame = Command::Frame(client_frame::Kind::Unsubscribe(Unsubscribe {
            subscription_id: id,
        }));
        if !send_detached(self.inner.commands.clone(), frame) {
            shared.lock().pending.remove(&id);
            return Err(shared.closed_error());
        }
        let limit = shared.options.request_timeout;
        tokio::time::timeout(limit, answer)
            .await
            .map_err(|_| self.timeout_error())?
            .map_err(|_| shared.closed_error())?
    }

    /// Forgets subscription `id` and tells the hub, without waiting (a dropped
    /// [`Subscription`]).
    pub(crate) fn detach(&self, id: u64) {
        self.inner.shared.detach(id);
    }

    /// Sends `command` and waits for `answer`, both within the request timeout.
    async fn exchange(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<(), Error>>,
    ) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let limit = shared.options.request_timeout;
        let exchange = async {
            self.inner
                .commands
                .send(command)
                .await
                .map_err(|_| shared.closed_error())?;
            answer.await.map_err(|_| shared.closed_error())?
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| self.timeout_error())?
    }

    /// Queues one message for the writer, waiting for room until `deadline`.
    async fn queue(
        &self,
        channel: Channel,
        payload: Vec<u8>,
        recipients: Arc<Recipients>,
        reply_to: Option<Channel>,
        purpose: Option<String>,
        deadline: tokio::time::Instant,
    ) -> Result<PublishAck, Error> {
        let room = self.publish_room(payload.len(), deadline).await?;
        let (ticket, answer) = oneshot::channel();
        let command = Command::Publish(
            Outgoing {
                channel,
                payload,
                recipients,
                reply_to,
                purpose,
                alone: false,
                ticket,
            },
            Some(room),
        );
        // Not sent (the session ended, no place in time, or this future dropped), the message
        // gives its room back as it is dropped.
        match tokio::time::timeout_at(deadline, self.inner.commands.send(command)).await {
            Ok(Ok(())) => Ok(PublishAck {
                answer,
                deadline,
                timer: None,
                timed: true,
                client: self.clone(),
            }),
            Ok(Err(_)) => Err(self.inner.shared.closed_error()),
            Err(_) => Err(queue_full()),
        }
    }

    /// Takes room for `len` payload bytes in the publish queue (all of it for a message
    /// larger than the queue), waiting for it until `deadline`. The writer gives it back in
    /// one go for all it sent (`HeldRoom`); a message dropped before, itself.
    async fn publish_room(
        &self,
        len: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Taken, Error> {
        let shared = &self.inner.shared;
        let bytes = shared.publish_room.of(len);
        match tokio::time::timeout_at(deadline, shared.publish_room.take(bytes)).await {
            Ok(true) => Ok(Taken::new(Arc::clone(&shared.publish_room), bytes)),
            Ok(false) => Err(shared.closed_error()),
            Err(_) => Err(queue_full()),
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.inner.shared.options.request_timeout
    }

    fn timeout_error(&self) -> Error {
        let limit = self.inner.shared.options.request_timeout;
        Error::new(
            ErrorKind::Timeout,
            format!("the hub did not answer within {limit:?}"),
        )
    }

    /// The recipients of `channel` from the directory, cached for the directory TTL. Only
    /// publishes on the same channel wait for one another's lookup.
    async fn members(&self, channel: &Channel) -> Result<Arc<Recipients>, Error> {
        let shared = &self.inner.shared;
        let slot = self.members_slot(channel);
        let mut slot = slot.lock().await;
        match slot.as_ref() {
            Some((at, Ok(recipients))) if at.elapsed() < shared.options.directory_ttl => {
                return Ok(recipients.clone());
            }
            Some((at, Err(denied))) if at.elapsed() < DENIAL_KEPT => {
                return Err(denied.duplicate());
            }
            _ => {}
        }
        let answer = self
            .inner
            .transport
            .directory(
                DirectoryRequest {
                    principals: Vec::new(),
                    channel: channel.to_string(),
                },
                shared.options.request_timeout,
            )
            .await
            .map_err(|e| shared.after_end(e));
        let response = match answer {
            Ok(response) => response,
            Err(e) => {
                if e.kind() == ErrorKind::Denied {
                    *slot = Some((Instant::now(), Err(e.duplicate())));
                }
                return Err(e);
            }
        };
        let now = now_ms();
        let bundles = response
            .bundles
            .into_iter()
            .map(|b| shared.bundles.trust(b, now))
            .collect::<Result<Vec<_>, _>>()?;
        let recipients = Arc::new(Recipients::new(&shared.own_key_bundle(), bundles));
        *slot = Some((Instant::now(), Ok(recipients.clone())));
        Ok(recipients)
    }

    /// The members slot of `channel`, made if there is none ([`members_slot`]).
    fn members_slot(&self, channel: &Channel) -> MembersSlot {
        let mut members = self
            .inner
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ttl = self.inner.shared.options.directory_ttl;
        members_slot(&mut members, channel, ttl)
    }

    fn check_payload(&self, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        let max = self
            .inner
            .shared
            .options
            .limits
            .max_ciphertext_bytes
            .saturating_sub(TAG_LEN);
        if payload.len() > max {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "a payload of {} bytes exceeds the limit of {max}",
                    payload.len()
                ),
            ));
        }
        Ok(payload)
    }
}

// === direct messages and request/reply ===

impl Client {
    /// Sends `payload` to `target` alone and waits for the hub's `Ack`.
    ///
    /// It goes on the target's direct channel ([`namespace::direct_channel`]: `_direct.S.N`
    /// for an agent, `_direct.human:N` for a human), sealed for exactly the target's key
    /// bundle (from the hub's directory, verified against the trust bundle). The target
    /// receives it through [`subscribe_direct`](Self::subscribe_direct) or
    /// [`serve_direct`](Self::serve_direct).
    ///
    /// The hub's base policies let an agent message any agent of its own segment; anything
    /// else needs a policy permitting the action `direct` on the direct channel
    /// ([`ErrorKind::Denied`] otherwise).
    /// A target with no session listening is refused with
    /// [`RefusalCode::NoRecipient`](crate::RefusalCode::NoRecipient).
    ///
    /// ```no_run
    /// # async fn run(client: entente_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use entente_client::Principal;
    ///
    /// let bob = Principal::parse("spiffe://example.org/agent/shop/bob")?;
    /// client.direct(&bob, "are you there?").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn direct(
        &self,
        target: &Principal,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), Error> {
        let deadline = self.deadline();
        let payload = self.check_payload(payload.into())?;
        self.send_direct(target, payload, None, deadline).await
    }

    /// Subscribes to this principal's own direct channel: every [`direct`](Self::direct)
    /// message and request addressed to it. Only its owner may subscribe there.
    pub async fn subscribe_direct(&self) -> Result<Subscription, Error> {
        self.subscribe(namespace::direct_channel(self.principal()).as_str())
            .await
    }

    /// Sends `payload` to `target` as a request and waits up to `timeout` for its reply.
    ///
    /// On the first request the session subscribes to this principal's reply namespace
    /// (`_reply.S.N.>`); each request then goes out as a [`direct`](Self::direct) message
    /// whose `reply_to` is a fresh channel `_reply.S.N.<random>` of that namespace. The hub
    /// grants the target, and only the target, one reply there, for at most
    /// [`MAX_REPLY_WAIT`](entente_hub::MAX_REPLY_WAIT) (60 s); this client accepts only a
    /// verified reply from the target on that exact channel. Anything else arriving there is
    /// dropped and counted ([`ClientStats::replies_dropped`]).
    ///
    /// The hub authorizes a request as the action `request` on the target's direct channel,
    /// which the base policies do not permit: a policy must (docs/POLICY.md, "In the hub").
    ///
    /// Errors: [`ErrorKind::Timeout`] when no reply came in time (the request may still have
    /// been delivered), the hub's refusals as for [`direct`](Self::direct), and
    /// [`RefusalCode::TooManyReplyGrants`](crate::RefusalCode::TooManyReplyGrants) when the
    /// session has too many requests outstanding; [`ErrorKind::InvalidInput`] for a `timeout`
    /// too long to make a deadline of.
    ///
    /// A request's outcome is its reply: the verified reply, signed by the target, proves the
    /// request was delivered, so it is returned as soon as it arrives, without waiting for
    /// the hub's acknowledgement of the request (which waits until the hub's audit log holds
    /// it durably). Should that acknowledgement then turn out to be a refusal — the audit log
    /// failed after the request was routed — it is counted in
    /// [`ClientStats::publish_refused`], and the hub refuses what follows until its log
    /// works again.
    ///
    /// ```no_run
    /// # async fn run(client: entente_client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    ///
    /// use entente_client::Principal;
    ///
    /// let bob = Principal::parse("spiffe://example.org/agent/shop/bob")?;
    /// let reply = client.request(&bob, "ping", Duration::from_secs(5)).await?;
    /// assert_eq!(reply.sender, bob);
    /// println!("{}", String::from_utf8_lossy(&reply.payload));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn request(
        &self,
        target: &Principal,
        payload: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let deadline = tokio::time::Instant::now()
            .checked_add(timeout)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the timeout is too long"))?;
        let payload = self.check_payload(payload.into())?;
        let shared = &self.inner.shared;
        let exchange = async {
            self.listen_for_replies().await?;
            let reply_to = (self.inner.reply_namespace)
                .channel(unique_token()?.as_str())
                .map_err(|e| Error::new(ErrorKind::Protocol, format!("reply channel: {e}")))?;
            let (done, mut reply) = oneshot::channel();
            let mut waiting = shared.await_reply(reply_to.clone(), target.clone(), done)?;
            let send_by = deadline.min(self.deadline());
            let mut ack = self
                .queue_direct(target, payload, Some(reply_to), send_by)
                .await?;
            // When this request's own timeout ends it by the ack's deadline (the usual case),
            // the ack arms no timer of its own.
            ack.timed = send_by < deadline;
            // The reply proves the request was delivered: it is not held up by the hub's
            // acknowledgement (which waits for the audit log to be durable). A refusal that
            // comes first ends the request with the hub's reason.
            tokio::select! {
                biased;
                answer = &mut reply => {
                    return match answer {
                        Ok(message) => {
                            waiting.answered = true;
                            Ok(message)
                        }
                        // No reply will come (the session ended): the hub's answer to the
                        // request, if it gave one, says why better than the end does.
                        Err(_) => Err(ack.await.err().unwrap_or_else(|| shared.closed_error())),
                    };
                }
                acked = &mut ack => acked?,
            }
            let message = reply.await.map_err(|_| shared.closed_error())?;
            waiting.answered = true;
            Ok(message)
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Timeout,
                    format!("no reply from `{target}` within {timeout:?}"),
                )
            })?
    }

    /// Serves requests arriving on `pattern` (a channel or a pattern): a stream of
    /// [`Request`](crate::Request)s, each answered with its
    /// [`Responder`](crate::Responder).
    pub async fn serve(&self, pattern: &str) -> Result<Requests, Error> {
        Ok(Requests::new(self.subscribe(pattern).await?))
    }

    /// Serves requests addressed to this principal: [`serve`](Self::serve) on its own direct
    /// channel.
    ///
    /// ```no_run
    /// # async fn run(client: entente_client::Client) -> Result<(), entente_client::Error> {
    /// use tokio_stream::StreamExt;
    ///
    /// let mut requests = client.serve_direct().await?;
    /// while let Some(request) = requests.next().await {
    ///     let request = request?;
    ///     let answer = request.message.payload.to_ascii_uppercase();
    ///     request.responder.reply(answer).await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serve_direct(&self) -> Result<Requests, Error> {
        Ok(Requests::new(self.subscribe_direct().await?))
    }

    /// Queues `payload` on `reply_to`, sealed for exactly `requester`: the returned ack
    /// resolves on the hub's answer. `reply_to` must lie in the requester's reply namespace.
    pub(crate) async fn queue_reply(
        &self,
        requester: &Principal,
        reply_to: &Channel,
        payload: Vec<u8>,
    ) -> Result<PublishAck, Error> {
        if !namespace::is_reply_channel_of(requester, reply_to) {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("`{reply_to}` is not in the reply namespace of `{requester}`"),
            ));
        }
        let deadline = self.deadline();
        let payload = self.check_payload(payload)?;
        let bundle = self.key_bundle(requester).await?;
        let recipients = Arc::new(Recipients::exactly(vec![bundle]));
        self.queue(reply_to.clone(), payload, recipients, None, None, deadline)
            .await
    }

    async fn send_direct(
        &self,
        target: &Principal,
        payload: Vec<u8>,
        reply_to: Option<Channel>,
        deadline: tokio::time::Instant,
    ) -> Result<(), Error> {
        self.queue_direct(target, payload, reply_to, deadline)
            .await?
            .await
    }

    /// Queues `payload` on `target`'s direct channel, sealed for `target` alone.
    async fn queue_direct(
        &self,
        target: &Principal,
        payload: Vec<u8>,
        reply_to: Option<Channel>,
        deadline: tokio::time::Instant,
    ) -> Result<PublishAck, Error> {
        let bundle = self.key_bundle(target).await?;
        let (channel, recipients) = self.direct_to(bundle);
        self.queue(channel, payload, recipients, reply_to, None, deadline)
            .await
    }

    /// The direct channel of `bundle`'s principal and the recipients of a message there:
    /// those of the last target kept, while its bundle is the same.
    fn direct_to(&self, bundle: VerifiedKeyBundle) -> (Channel, Arc<Recipients>) {
        let mut last = self
            .inner
            .last_direct
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(last) = last.as_ref().filter(|last| last.bundle == bundle) {
            return (last.channel.clone(), last.recipients.clone());
        }
        let channel = namespace::direct_channel(bundle.principal());
        let recipients = Arc::new(Recipients::exactly(vec![bundle.clone()]));
        *last = Some(Direct {
            bundle,
            channel: channel.clone(),
            recipients: recipients.clone(),
        });
        (channel, recipients)
    }

    /// Subscribes to this principal's reply namespace, once per session: the reader hands
    /// what arrives there to the waiting requests ([`hand_reply`]).
    async fn listen_for_replies(&self) -> Result<(), Error> {
        if self.inner.listening.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut listening = self.inner.replies.lock().await;
        if !*listening {
            let pattern = namespace::reply_pattern(self.principal());
            // Boxed: once per session, kept out of every request's future. Nothing is queued
            // for this subscription: its queue's receiver is not needed.
            Box::pin(self.open_subscription(&pattern, None, true)).await?;
            *listening = true;
            self.inner.listening.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// Hands a verified message of the reply namespace to the request waiting on its channel, if
/// it came from that request's target; drops and counts the rest (rejections were counted when
/// opened).
fn hand_reply(shared: &Shared, message: Message) {
    let waiter = shared.lock().take_reply_waiter(&message);
    match waiter {
        Some(waiter) => {
            let _ = waiter.done.send(message);
        }
        None => stats::add(&shared.stats.replies_dropped, 1),
    }
}

/// How many random bytes a thread draws at once for reply channels' tokens.
const TOKEN_POOL_LEN: usize = 512;

thread_local! {
    /// Random bytes for tokens, and where the unused ones start: unpredictable to all but
    /// the hub and the responder, who see the channel (PROTOCOL.md §9, replies), and never used
    /// twice. (A process that forks would share them with its child, as it would a client's
    /// sequence numbers: a client is not used across a fork.)
    static TOKEN_POOL: RefCell<([u8; TOKEN_POOL_LEN], usize)> =
        const { RefCell::new(([0; TOKEN_POOL_LEN], TOKEN_POOL_LEN)) };
}

/// 128 random bits in lowercase hex: the last token of a reply channel, kept on the stack
/// (the channel is the name's only allocation).
struct Token([u8; 32]);

impl Token {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A fresh [`Token`]. The bits come from the system's generator 512 bytes at a time (each
/// call reseeds it from hardware entropy, too costly for 16 bytes), each used once.
fn unique_token() -> Result<Token, Error> {
    let bytes = TOKEN_POOL.with_borrow_mut(|(pool, used)| {
        if *used == TOKEN_POOL_LEN {
            SystemRandom::new()
                .fill(pool)
                .map_err(|_| Error::new(ErrorKind::Crypto, "no randomness for a reply channel"))?;
            *used = 0;
        }
        let mut bytes = [0u8; 16];
        let fresh = pool
            .get(*used..*used + bytes.len())
            .ok_or_else(|| Error::new(ErrorKind::Crypto, "the token pool is misaligned"))?;
        bytes.copy_from_slice(fresh);
        *used += bytes.len();
        Ok::<_, Error>(bytes)
    })?;
    let mut token = [0u8; 32];
    let nibbles = bytes.iter().flat_map(|byte| [byte >> 4, byte & 0xf]);
    for (digit, nibble) in token.iter_mut().zip(nibbles) {
        *digit = char::from_digit(u32::from(nibble), 16)
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(b'0');
    }
    Ok(Token(token))
}

// === impl State ===

impl State {
    /// The request `message` answers: one waiting on its channel for a reply from its
    /// sender. A message from anyone else answers nothing (the request keeps waiting).
    fn take_reply_waiter(&mut self, message: &Message) -> Option<ReplyWaiter> {
        match self.replies.entry(message.channel.clone()) {
            Entry::Occupied(waiter) if waiter.get().from == message.sender => Some(waiter.remove()),
            _ => None,
        }
    }
}

// === impl AwaitingReply ===

impl Drop for AwaitingReply<'_> {
    fn drop(&mut self) {
        // A reply is handed over only by taking its waiter out (`take_reply_waiter`): then
        // there is nothing left to remove, and no lock to take.
        if !self.answered {
            self.shared.lock().replies.remove(&self.channel);
        }
    }
}

// === impl PublishAck ===

impl PublishAck {
    /// The hub's answer with what it holds for approval.
    async fn held(self) -> Result<Vec<Held>, Error> {
        let PublishAck {
            answer,
            deadline,
            client,
            ..
        } = self;
        tokio::select! {
            answer = answer => answer.unwrap_or_else(|_| Err(client.inner.shared.closed_error())),
            () = tokio::time::sleep_until(deadline) => Err(client.timeout_error()),
        }
    }
}

impl Future for PublishAck {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(answer) = Pin::new(&mut this.answer).poll(cx) {
            return Poll::Ready(
                answer
                    .unwrap_or_else(|_| Err(this.client.inner.shared.closed_error()))
                    .map(drop),
            );
        }
        if !this.timed {
            return Poll::Pending;
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(this.client.timeout_error()));
        }
        Poll::Pending
    }
}

// === impl Shared ===

impl Shared {
    /// This principal's key bundle as it stands: signed again at renewals (past half its life,
    /// after an intermediate rollover), where the one connected with may have ended.
    fn own_key_bundle(&self) -> VerifiedKeyBundle {
        self.credential.current().key_bundle().clone()
    }

    /// Forgets subscription `id` and unsubscribes at the hub (its `Ack` or refusal awaited
    /// by no one), unless the hub ended it already.
    fn detach(&self, id: u64) {
        if self.lock().subscriptions.remove(&id).is_none() {
            return;
        }
        if self
            .register(id, Pending::Unsubscribe { done: None }, None)
            .is_err()
        {
            return;
        }
        let Some(commands) = self.commands.upgrade() else {
            return;
        };
        let frame = Command::Frame(client_frame::Kind::Unsubscribe(Unsubscribe {
            subscription_id: id,
        }));
        send_detached(commands, frame);
    }

    /// Sends the unsubscribe of subscription `id` again in `after` (at least a millisecond,
    /// at most a minute) to twice that, its answer going to `done`.
    fn unsubscribe_later(&self, id: u64, done: Option<Waiter>, after: Duration) {
        if self
            .register(id, Pending::Unsubscribe { done }, None)
            .is_err()
        {
            return;
        }
        let commands = self.commands.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // Spread over up to twice the wait: unsubscribes refused together are not all sent
        // again at one instant (each would be refused but one, again and again).
        let mut spread = [0u8; 2];
        let _ = aws_lc_rs::rand::fill(&mut spread);
        let after = after.clamp(Duration::from_millis(1), Duration::from_secs(60));
        let after = after + after.mul_f64(f64::from(u16::from_be_bytes(spread)) / 65_536.0);
        runtime.spawn(async move {
            tokio::time::sleep(after).await;
            // A client gone meanwhile is not kept up by its unsubscribes.
            let Some(commands) = commands.upgrade() else {
                return;
            };
            let frame = Command::Frame(client_frame::Kind::Unsubscribe(Unsubscribe {
                subscription_id: id,
            }));
            let _ = commands.send(frame).await;
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Most requests, and most replies, the writer puts in one batch now (`gather`'s
    /// round-trip limits and the outbox's). Requests: half of the requests this client has
    /// lately had waiting for their replies at once, so that they leave in two batches or more
    /// whose steps overlap, or `round_trip_batch_min` if that is more, never more than
    /// `batch_max`; only this client's own requests raise it. Replies: as many as the largest
    /// delivery of requests to this client lately, so that they go back as their requests
    /// came, or the requests' limit if that is more, never more than `batch_max`.
    /// Each peak decays by a sixty-fourth (one at least) each time the writer looks, once per
    /// round it writes, so it follows the load down within some dozens of rounds (from 256 to
    /// 64 in 69); with nothing to write it stays.
    fn round_trip_limits(&self) -> RoundTrips {
        let (in_flight, delivered) = {
            let mut state = self.lock();
            let (in_flight, delivered) = (state.in_flight_peak, state.delivered_peak);
            state.in_flight_peak = decayed(in_flight, state.replies.len());
            state.delivered_peak = decayed(delivered, 0);
            (in_flight, delivered)
        };
        round_trip_limits(&self.options, in_flight, delivered)
    }

    /// Raises the peak of requests delivered at once to `requests`.
    fn delivered_requests(&self, requests: usize) {
        let mut state = self.lock();
        state.delivered_peak = state.delivered_peak.max(requests);
    }

    /// Records what request `id` waits for (and the subscription it creates), unless the
    /// session is over.
    fn register(
        &self,
        id: u64,
        pending: Pending,
        subscription: Option<Arc<SubscriptionEntry>>,
    ) -> Result<(), Error> {
        let mut state = self.open_state()?;
        state.pending.insert(id, pending);
        if let Some(entry) = subscription {
            state.subscriptions.insert(id, entry);
        }
        Ok(())
    }

    /// [`register`](Self::register)s a publish, with when it stops being waited for.
    fn register_publish(&self, id: u64, pending: Pending) -> Result<(), Error> {
        let deadline = Instant::now() + 2 * self.options.request_timeout;
        let mut state = self.open_state()?;
        state.pending.insert(id, pending);
        state.publish_deadlines.push_back((deadline, id));
        Ok(())
    }

    /// The state, locked, unless the session is over.
    fn open_state(&self) -> Result<MutexGuard<'_, State>, Error> {
        let state = self.lock();
        match &state.closed {
            Some(reason) => Err(Error::new(ErrorKind::Closed, reason.clone())),
            None => Ok(state),
        }
    }

    /// Registers a request waiting on `channel` for a reply from `from`, unless the session
    /// is over; the guard unregisters it.
    fn await_reply(
        &self,
        channel: Channel,
        from: Principal,
        done: oneshot::Sender<Message>,
    ) -> Result<AwaitingReply<'_>, Error> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(Error::new(ErrorKind::Closed, reason.clone()));
        }
        state
            .replies
            .insert(channel.clone(), ReplyWaiter { from, done });
        state.in_flight_peak = state.in_flight_peak.max(state.replies.len());
        Ok(AwaitingReply {
            shared: self,
            channel,
            answered: false,
        })
    }

    /// `reason` for the session's end, saying so when the certificate expired: the hub
    /// closes the session with `UNAUTHENTICATED` then, but the connection may drop before the
    /// status arrives.
    fn with_expiry(&self, reason: String, code: Option<tonic::Code>) -> String {
        let unauthenticated = code == Some(tonic::Code::Unauthenticated);
        if !unauthenticated && SystemTime::now() < self.credential.current().not_after() {
            return reason;
        }
        let why = if !self.options.renew {
            "renewal is off".to_owned()
        } else {
            match self.credential.failure() {
                Some(e) => format!("the last renewal failed: {e}"),
                None => "it was not renewed in time".to_owned(),
            }
        };
        let status = if unauthenticated {
            ""
        } else {
            "UNAUTHENTICATED: "
        };
        format!("{reason} ({status}the client's certificate expired; {why})")
    }

    /// `error` from the connection, or — when it failed because the session is over — the
    /// session's end, which says why.
    fn after_end(&self, error: Error) -> Error {
        if error.kind() == ErrorKind::Closed && self.lock().closed.is_some() {
            self.closed_error()
        } else {
            error
        }
    }

    fn closed_error(&self) -> Error {
        let reason = self.lock().closed.clone();
        Error::new(
            ErrorKind::Closed,
            reason.unwrap_or_else(|| "the session is closed".to_owned()),
        )
    }

    /// Handles the hub's `Ack` (`refusal` is `None`; `held`, what it holds for approval) or
    /// `Refusal` for request `id`; returns the subscription an `Ack` made.
    fn answer(
        &self,
        id: u64,
        refusal: Option<(u32, String, u64)>,
        held: Vec<Held>,
    ) -> Option<Arc<SubscriptionEntry>> {
        let (pending, subscribed) = {
            let mut state = self.lock();
            let pending = state.pending.remove(&id);
            let mut subscribed = None;
            match (&pending, &refusal) {
                (Some(Pending::Subscribe { .. }), Some(_)) => {
                    state.subscriptions.remove(&id);
                }
                (Some(Pending::Subscribe { .. }), None) => {
                    subscribed = state.subscriptions.get(&id).cloned();
                }
                (Some(Pending::Publish { channel, .. }), Some(_)) => {
                    state.resets.push(channel.clone());
                }
                // Held for approval, nothing of it was routed: nor was its key.
                (
                    Some(Pending::Publish {
                        channel,
                        key_epoch: Some(epoch),
                        ..
                    }),
                    None,
                ) if held.is_empty() => {
                    state.keys_acked.push((channel.clone(), *epoch));
                }
                _ => {}
            }
            (pending, subscribed)
        };
        let refused = |what: String| {
            refusal.as_ref().map(|(code, reason, retry_after_ms)| {
                let error = Error::refusal(&what, *code, reason);
                if RefusalCode::from_u32(*code) == Some(RefusalCode::RateLimited) {
                    error.with_retry_after(Duration::from_millis(*retry_after_ms))
                } else {
                    error
                }
            })
        };
        let limited = refusal.as_ref().and_then(|(code, _, retry_after_ms)| {
            (RefusalCode::from_u32(*code) == Some(RefusalCode::RateLimited))
                .then(|| Duration::from_millis(*retry_after_ms))
        });
        match pending {
            None => {}
            // An unsubscribe the hub refused for a rate limit is sent again once it may be: the
            // subscription is gone here already, so the hub must not keep delivering to it (nor
            // keep its durable consumer held). Its caller, if any, waits for that answer.
            Some(Pending::Unsubscribe { done }) if let Some(after) = limited => {
                self.unsubscribe_later(id, done, after);
            }
            Some(Pending::Subscribe { pattern, done }) => {
                let _ = done.send(match refused(format!("the subscription to `{pattern}`")) {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
            Some(Pending::Unsubscribe { done: Some(done) }) => {
                let _ = done.send(match refused("the unsubscription".to_owned()) {
                    Some(e) => Err(e),
                    None => Ok(()),
                });
            }
            Some(Pending::Unsubscribe { done: None }) => {}
            Some(Pending::Publish {
                channel,
                waiters,
                replies,
                ..
            }) => {
                let count = waiters.len() as u64;
                let denied = refusal.as_ref().is_some_and(|(code, ..)| {
                    RefusalCode::from_u32(*code) == Some(RefusalCode::Denied)
                });
                match refused(format!("the publish to `{channel}`")) {
                    // A batch of replies refused for one of them (its grant used or expired):
                    // each is sent again alone, to be answered on its own.
                    Some(_) if denied && !replies.is_empty() && replies.len() == waiters.len() => {
                        stats::add(&self.stats.replies_resent, count);
                        for (waiter, reply) in waiters.into_iter().zip(replies) {
                            let again = Outgoing {
                                channel: reply.channel,
                                payload: reply.payload,
                                recipients: reply.recipients,
                                reply_to: reply.reply_to,
                                purpose: None,
                                alone: true,
                                ticket: waiter,
                            };
                            // Should the writer be gone, the waiter is dropped with the
                            // message and reports the session's end.
                            let _ = self.resend.send(again);
                        }
                    }
                    Some(e) => {
                        stats::add(&self.stats.publish_refused, count);
                        for waiter in waiters {
                            let _ = waiter.send(Err(e.duplicate()));
                        }
                    }
                    None => {
                        stats::add(&self.stats.published, count);
                        // A frame carrying a held message carries that message alone.
                        let mut held = Some(held);
                        for waiter in waiters {
                            let _ = waiter.send(Ok(held.take().unwrap_or_default()));
                        }
                    }
                }
            }
        }
        subscribed
    }

    /// How the session ended when the reader was told to stop: closed by this client, unless
    /// the writer stopped because the connection took no more frames (it failed before the
    /// reader saw it, or while the reader waited for room in a subscription's queue).
    fn stopped(&self, transport: &Transport) -> End {
        if !self.transport_failed.load(Ordering::Acquire) {
            return End::ByClient;
        }
        let mut reason =
            "the connection to the hub failed: it took no more of the session's frames".to_owned();
        if let Some(tls) = transport.tls_alert() {
            reason.push_str(&format!(" ({tls})"));
        }
        End::Hub(self.with_expiry(reason, None))
    }

    /// Ends the session: everything waiting fails, every subscription is told (unless this
    /// client closed it), and both tasks stop.
    fn end(&self, end: End) {
        let (reason, by_client) = match end {
            End::ByClient => ("the session was closed by this client".to_owned(), true),
            End::Hub(reason) => (reason, false),
        };
        let (pending, subscriptions) = {
            let mut state = self.lock();
            state.closed.get_or_insert(reason.clone());
            // Waiting requests see their reply channel close and report the end.
            state.replies.clear();
            (
                mem::take(&mut state.pending),
                mem::take(&mut state.subscriptions),
            )
        };
        self.shutdown.send_replace(true);
        let error = Error::new(ErrorKind::Closed, reason);
        for pending in pending.into_values() {
            match pending {
                Pending::Subscribe { done, .. } => {
                    let _ = done.send(Err(error.duplicate()));
                }
                Pending::Unsubscribe { done } => {
                    if let Some(done) = done {
                        let _ = done.send(Err(error.duplicate()));
                    }
                }
                Pending::Publish { waiters, .. } => {
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.duplicate()));
                    }
                }
            }
        }
        if !by_client {
            for entry in subscriptions.into_values() {
                // Without blocking on a subscription nobody reads.
                let items = entry.items.clone();
                let error = error.duplicate();
                tokio::spawn(async move {
                    let _ = items.send(Err(error)).await;
                });
            }
        }
    }
}

/// Queues `command` for the writer at once, or, when the queue is full, in a task of its own
/// (on the current runtime, if any), so that it is sent whatever becomes of the caller;
/// `false` if the writer is gone.
fn send_detached(commands: mpsc::Sender<Command>, command: Command) -> bool {
    match commands.try_send(command) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(command)) => {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
            true
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// A policy set the hub refused (`INVALID_ARGUMENT` to a load): its summary line as the
/// message, each further line of the status message as a detail.
fn refused_policies(error: &Error) -> Option<Error> {
    let status = std::error::Error::source(error)?.downcast_ref::<tonic::Status>()?;
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    let mut lines = status.message().lines();
    let summary = lines.next().unwrap_or("invalid policies");
    let details = lines.map(str::to_owned).collect();
    Some(
        Error::new(
            ErrorKind::InvalidInput,
            format!("the hub refused the policies: {summary}"),
        )
        .with_details(details),
    )
}

// === the writer ===

/// Seals and sends what the handles ask for, until shutdown or every handle is gone.
async fn write(
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
    mut resend: mpsc::UnboundedReceiver<Outgoing<PublishWaiter>>,
    outbound: mpsc::Sender<ClientFrame>,
) {
    let identity = &shared.identity;
    let options = &shared.options;
    let mut outbox = Outbox::new(
        identity.principal().clone(),
        identity.key_bundle().epoch(),
        identity.message_keys().clone(),
        OutboxOptions {
            batch_max: options.batch_max,
            round_trips: RoundTrips::both(options.round_trip_batch_min_value()),
            reply_batches: options.reply_batches,
            batch_max_bytes: options.batch_max_bytes,
            sender_key_resend_ms: millis(options.sender_key_resend),
            sealer: SealerOptions {
                message_ttl_ms: millis(options.message_ttl),
                limits: options.limits,
                ..SealerOptions::default()
            },
        },
    );
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        // What is queued is taken at once (up to a batch), which also gives the queue's room
        // back at once rather than one message at a time.
        let mut batch = Vec::with_capacity(options.batch_max.min(MAX_GATHER));
        let taken = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(again) = resend.recv() => {
                batch.push(Command::Publish(again, None));
                while let Ok(again) = resend.try_recv() {
                    batch.push(Command::Publish(again, None));
                }
                batch.len()
            }
            taken = commands.recv_many(&mut batch, options.batch_max) => taken,
        };
        if taken == 0 {
            break;
        }
        let limits = GatherLimits {
            max: options.batch_max,
            round_trips: shared.round_trip_limits(),
        };
        gather(&mut commands, &mut batch, limits, options.linger).await;
        outbox.set_round_trips(limits.round_trips);
        let mut writer = Writer {
            shared: &shared,
            outbox: &mut outbox,
            outbound: &outbound,
            shutdown: &mut shutdown,
        };
        if !writer.send_all(batch).await {
            break;
        }
    }
    // Nothing more is sent: publishers waiting for room fail at once.
    shared.publish_room.close();
    shared.shutdown.send_replace(true);
}

/// [`Shared::round_trip_limits`] for `in_flight` requests in flight lately and `delivered`
/// requests in one delivery lately.
fn round_trip_limits(options: &ClientOptions, in_flight: usize, delivered: usize) -> RoundTrips {
    let requests = options
        .round_trip_batch_min
        .max(in_flight.div_ceil(2))
        .min(options.batch_max);
    RoundTrips {
        requests,
        replies: requests.max(delivered.min(options.batch_max)),
    }
}

/// A peak kept after a look at it: a sixty-fourth less (one at least), never below `now`.
fn decayed(peak: usize, now: usize) -> usize {
    (peak - peak.div_ceil(64)).max(now)
}

/// How much [`gather`] waits for.
#[derive(Debug, Clone, Copy)]
struct GatherLimits {
    /// Commands in all.
    max: usize,
    /// Requests, and replies, on all channels together: once the batch holds that many
    /// requests or that many replies, the writer stops waiting for more and sends it
    /// ([`Shared::round_trip_limits`]).
    round_trips: RoundTrips,
}

/// Requests and replies counted into a batch.
#[derive(Debug, Default)]
struct RoundTripCount {
    /// Requests in the batch.
    requests: usize,
    /// Replies in the batch.
    replies: usize,
}

impl RoundTripCount {
    /// Counts a command of `kind` (nothing for a publish or another frame).
    fn add(&mut self, kind: Option<RoundTrip>) {
        match kind {
            Some(RoundTrip::Request) => self.requests += 1,
            Some(RoundTrip::Reply) => self.replies += 1,
            None => {}
        }
    }

    /// Whether the batch holds a batch of requests or one of replies.
    fn reached(&self, limits: RoundTrips) -> bool {
        self.requests >= limits.requests || self.replies >= limits.replies
    }
}

/// Waits up to `linger` for more commands to add to `batch`, up to `limits.max` in all and
/// until it holds a batch of requests or one of replies (`limits.round_trips`). With no
/// `linger`, yields to the scheduler and takes what tasks ready to run queued meanwhile, as
/// long as that adds something. Each time it takes, it takes all that is queued (up to
/// `limits.max`), requests and replies beyond the limits included: the outbox cuts them into
/// batches.
async fn gather(
    commands: &mut mpsc::Receiver<Command>,
    batch: &mut Vec<Command>,
    limits: GatherLimits,
    linger: Duration,
) {
    let max = limits.max;
    let mut held = RoundTripCount::default();
    for command in batch.iter() {
        held.add(command.round_trip());
    }
    if linger.is_zero() {
        // Let the tasks that are ready to run add what they are about to send.
        while batch.len() < max && !held.reached(limits.round_trips) {
            tokio::task::yield_now().await;
            let before = batch.len();
            while batch.len() < max {
                match commands.try_recv() {
                    Ok(command) => {
                        held.add(command.round_trip());
                        batch.push(command);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() == before {
                break;
            }
        }
        return;
    }
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max && !held.reached(limits.round_trips) {
        let room = max - batch.len();
        let before = batch.len();
        match tokio::time::timeout_at(deadline, commands.recv_many(batch, room)).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        for command in batch.iter().skip(before) {
            held.add(command.round_trip());
        }
    }
}

/// A publish that found no room in the publish queue before its deadline.
fn queue_full() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "no room in the publish queue in time: the session's writer has not caught up with \
         what was queued (`ClientOptions::publish_queue`, `publish_queue_bytes`)",
    )
}

/// The publish queue's room the messages the writer holds took, given back when it is done
/// with them however it ends.
struct HeldRoom<'a> {
    queue: &'a ByteRoom,
    bytes: usize,
}

impl Drop for HeldRoom<'_> {
    fn drop(&mut self) {
        self.queue.give_back(self.bytes);
    }
}

struct Writer<'a> {
    shared: &'a Shared,
    outbox: &'a mut Outbox,
    outbound: &'a mpsc::Sender<ClientFrame>,
    shutdown: &'a mut watch::Receiver<bool>,
}

impl Writer<'_> {
    /// Sends `batch` in order: runs of publishes sealed together, other frames as they come.
    /// `false` once the session is over.
    async fn send_all(&mut self, batch: Vec<Command>) -> bool {
        let shared = self.shared;
        let mut room = HeldRoom {
            queue: &shared.publish_room,
            bytes: 0,
        };
        let mut publishes = Vec::new();
        for command in batch {
            match command {
                Command::Publish(message, taken) => {
                    room.bytes += taken.map_or(0, |t| t.hand_over() as usize);
                    publishes.push(message);
                }
                Command::Frame(kind) => {
                    if !self.flush(mem::take(&mut publishes)).await
                        || !self.send(ClientFrame { kind: Some(kind) }).await
                    {
                        return false;
                    }
                }
            }
        }
        self.flush(publishes).await
    }

    async fn flush(&mut self, publishes: Vec<Outgoing<PublishWaiter>>) -> bool {
        if publishes.is_empty() {
            return true;
        }
        let shared = self.shared;
        let (acked, resets, mut open, unanswered) = {
            let mut state = shared.lock();
            let unanswered = state.sweep_unanswered(Instant::now());
            (
                mem::take(&mut state.keys_acked),
                mem::take(&mut state.resets),
                state.closed.is_none(),
                unanswered,
            )
        };
        if !unanswered.is_empty() {
            let wait = 2 * shared.options.request_timeout;
            let error = Error::new(
                ErrorKind::Timeout,
                format!("the hub did not answer the publish within {wait:?}: no longer waited for"),
            );
            stats::add(&shared.stats.publishes_unanswered, unanswered.len() as u64);
            for waiter in unanswered.into_iter().flatten() {
                let _ = waiter.send(Err(error.duplicate()));
            }
        }
        for (channel, epoch) in acked {
            self.outbox.acknowledged(&channel, epoch);
        }
        for channel in resets {
            self.outbox.reset(&channel);
        }
        let now = now_ms();
        // Each run is sent as soon as it is sealed: the hub starts on it while the next one
        // is sealed.
        for run in self.outbox.runs(publishes) {
            if !open {
                // The session is over: what is left is not sealed, only answered.
                let error = shared.closed_error();
                for m in run {
                    let _ = m.ticket.send(Err(error.duplicate()));
                }
                continue;
            }
            match self.outbox.seal_run(run, now, &mut || shared.next_id()) {
                Sealed::Failed { tickets, error } => {
                    for ticket in tickets {
                        let _ = ticket.send(Err(error.duplicate()));
                    }
                }
                Sealed::Frame {
                    channel,
                    publish,
                    tickets,
                    replies,
                } => {
                    let id = publish.request_id;
                    let keys = publish.sender_keys.len() as u64;
                    let batches = publish.batches.len() as u64;
                    let key_epoch = publish.sender_keys.first().map(|k| k.epoch);
                    let frame = ClientFrame {
                        kind: Some(client_frame::Kind::Publish(publish)),
                    };
                    // A frame past the hub's limit would end the session, and every
                    // subscription and call with it: its messages alone fail.
                    let len = prost::Message::encoded_len(&frame);
                    let max = shared.options.limits.max_frame_bytes;
                    if len > max {
                        let error = Error::new(
                            ErrorKind::InvalidInput,
                            format!(
                                "the messages sealed together on `{channel}` make a frame of \
                                 {len} bytes, more than the {max} a frame may hold: send \
                                 fewer or smaller at once (`ClientOptions::batch_max_bytes`)"
                            ),
                        );
                        for ticket in tickets {
                            let _ = ticket.send(Err(error.duplicate()));
                        }
                        continue;
                    }
                    let pending = Pending::Publish {
                        channel,
                        waiters: tickets,
                        replies,
                        key_epoch,
                    };
                    if shared.register_publish(id, pending).is_err() {
                        // The session is over. The waiters were dropped with `pending`: they
                        // see their answer channel closed and report the session's end.
                        open = false;
                        continue;
                    }
                    stats::add(&shared.stats.publish_frames, 1);
                    stats::add(&shared.stats.batches_sent, batches);
                    stats::add(&shared.stats.sender_keys_sent, keys);
                    open = self.send(frame).await;
                }
            }
        }
        open
    }

    /// Sends `frame`; `false` once the session is over, or its connection takes no more
    /// frames (then [`Shared::stopped`] reports the failure).
    async fn send(&mut self, frame: ClientFrame) -> bool {
        tokio::select! {
            biased;
            _ = self.shutdown.wait_for(|stop| *stop) => false,
            sent = self.outbound.send(frame) => {
                if sent.is_err() {
                    self.shared.transport_failed.store(true, Ordering::Release);
                }
                sent.is_ok()
            }
        }
    }
}

// === the reader ===

/// Reads the hub's frames until the session ends, then ends it for everyone.
async fn read(
    shared: Arc<Shared>,
    transport: Transport,
    mut stream: SessionStream,
    driver: Driver,
) {
    let mut shutdown = shared.shutdown.subscribe();
    // The next frame, when it was there at once after the last.
    let mut arrived = None;
    let end = loop {
        let next = match arrived.take() {
            Some(_) if *shutdown.borrow() => break shared.stopped(&transport),
            Some(next) => next,
            None => tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break shared.stopped(&transport),
                next = stream.message() => next,
            },
        };
        match next {
            // The last frame of a framed session (PROTOCOL.md §9.1): what a gRPC status says
            // on HTTP/2.
            Ok(Some(ServerFrame {
                kind: Some(server_frame::Kind::SessionEnd(end)),
            })) => {
                let status = end_status(end);
                let reason = format!("the hub closed the session: {}", status_text(&status));
                break End::Hub(shared.with_expiry(reason, Some(status.code())));
            }
            Ok(Some(frame)) => {
                tokio::select! {
                    biased;
                    _ = shutdown.wait_for(|stop| *stop) => break shared.stopped(&transport),
                    awaited = handle(&shared, &transport, frame) => {
                        // The last task woken for what was just handed over waits in this
                        // worker's next-task slot until this task waits: if the next frame is
                        // already here, it is moved where the other worker can run it now
                        // (`entente_hub::handoff`). When it is not, the next `select!` polls
                        // the stream again with this task's waker (`message` is cancel-safe).
                        // Only for requests and replies, which a task awaits to go on: after
                        // publishes too, 1 → 10 pub/sub lost throughput and its median
                        // latency doubled (docs/BENCHMARKS.md).
                        if awaited {
                            arrived = stream.message().now_or_never();
                            if arrived.is_some() {
                                handoff::nudge();
                            }
                        }
                    }
                }
            }
            Ok(None) => {
                let reason = shared.with_expiry("the hub ended the session".to_owned(), None);
                break End::Hub(reason);
            }
            Err(status) => {
                let mut reason = format!("the hub closed the session: {}", status_text(&status));
                if let Some(tls) = transport.tls_alert() {
                    reason.push_str(&format!(" ({tls})"));
                }
                break End::Hub(shared.with_expiry(reason, Some(status.code())));
            }
        }
    };
    shared.end(end);
    drop(stream);
    driver.stop();
    transport.close_calls();
    shared.ended.send_replace(true);
}

/// Handles one frame; `true` if it handed requests or replies to tasks awaiting them.
async fn handle(shared: &Shared, transport: &Transport, frame: ServerFrame) -> bool {
    match frame.kind {
        Some(server_frame::Kind::Ack(ack)) => {
            let subscribed = shared.answer(ack.request_id, None, ack.held);
            if let Some(entry) = subscribed {
                let early = entry.take_early().into_items();
                queue(shared, ack.request_id, &entry, early).await;
            }
        }
        Some(server_frame::Kind::Refusal(refusal)) => {
            shared.answer(
                refusal.request_id,
                Some((refusal.code, refusal.reason, refusal.retry_after_ms)),
                Vec::new(),
            );
        }
        Some(server_frame::Kind::Deliver(deliver)) => {
            return self::deliver(shared, transport, deliver).await;
        }
        Some(server_frame::Kind::SubscriptionEnded(ended)) => {
            // The subscription is over: its stream gets the hub's reason, then ends.
            let entry = shared.lock().subscriptions.remove(&ended.subscription_id);
            if let Some(entry) = entry {
                let what = format!("the subscription to `{}`", entry.pattern);
                let mut error = Error::ended(&what, ended.code, &ended.reason);
                // Ended before the hub acknowledged it: what was set aside for it goes too.
                let early = entry.take_early();
                let lost = early.items.len() as u64 + early.dropped;
                if lost > 0 {
                    stats::add(&shared.stats.early_dropped, early.items.len() as u64);
                    error = error.with_details(vec![format!(
                        "{lost} messages delivered before the hub acknowledged the \
                         subscription were dropped"
                    )]);
                }
                let _ = entry.items.send(Err(error)).await;
            }
        }
        // Flow control is the hub's queues and HTTP/2 windows for now.
        Some(server_frame::Kind::Credit(_)) | None => {}
        // Handled where the session's frames are read.
        Some(server_frame::Kind::SessionEnd(_)) => {}
    }
    false
}

/// Opens a delivery with its subscription's inbox and hands over the result, waiting for
/// room in the subscription's queue (which holds up the session: backpressure to the hub);
/// `true` if it held requests or replies (a task awaits each).
async fn deliver(shared: &Shared, transport: &Transport, deliver: Deliver) -> bool {
    let id = deliver.subscription_id;
    let (entry, acknowledged) = {
        let state = shared.lock();
        (
            state.subscriptions.get(&id).cloned(),
            !matches!(state.pending.get(&id), Some(Pending::Subscribe { .. })),
        )
    };
    // A subscription that was just dropped: the application asked for nothing more.
    let Some(entry) = entry else {
        return false;
    };
    let now = now_ms();
    // Looked up only when the directory may have it (the reader waits for the answer).
    let mut missing: Vec<Principal> = Inbox::needs(&deliver)
        .into_iter()
        .filter_map(|(sender, epoch)| {
            let sender = Principal::parse(&sender).ok()?;
            (shared.bundles.epoch(&sender, epoch, now).is_none()
                && shared.bundles.worth_looking_up(&sender, epoch, now))
            .then_some(sender)
        })
        .collect();
    missing.dedup();
    let (failures, now) = if missing.is_empty() {
        (HashMap::new(), now)
    } else {
        // Expiries are checked against the time after the lookup, however long it took.
        let failures = lookup_bundles(shared, transport, &missing).await;
        (failures, now_ms())
    };
    let lookup = |sender: &Principal, epoch: u64| {
        shared.bundles.epoch(sender, epoch, now).ok_or_else(|| {
            failures
                .get(sender.as_str())
                .map(Error::duplicate)
                .unwrap_or_else(|| no_bundle(sender, Some(epoch)))
        })
    };
    let (sequence, attempt) = (deliver.sequence, deliver.attempt);
    let durable = entry.unacked.is_some() && sequence > 0;
    let mut opened = if durable && attempt > 1 {
        // A redelivery: the subscription's replay window has seen these envelopes, so they
        // open in a window of their own (the hub redelivers what was not acknowledged).
        let identity = &shared.identity;
        Inbox::new(
            identity.principal().clone(),
            identity.key_bundle().epoch(),
            identity.message_keys().clone(),
            entry.pattern.clone(),
            None,
        )
        .open(deliver, &lookup, now)
    } else {
        entry
            .inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open(deliver, &lookup, now)
    };
    // A batch of replies reaches every subscription matching one of its replies: each one
    // gets only the replies its pattern matches.
    let before = opened.items.len();
    opened.items.retain(|item| match item {
        Ok(message) => {
            !message
                .channel
                .as_str()
                .starts_with(namespace::REPLY_PREFIX)
                || entry.pattern.routes(&message.channel)
        }
        Err(_) => true,
    });
    if durable && let Some(unacked) = &entry.unacked {
        let mut ids = HashSet::new();
        for message in opened.items.iter_mut().flatten() {
            message.durable = Some(DurableDelivery {
                subscription: id,
                sequence,
                attempt,
            });
            ids.insert(message.message_id);
        }
        // An entry none of whose messages open is not acknowledged: it is delivered again,
        // then goes to the dead-letter log, where the operator sees it. A redelivery adds to
        // what is left to acknowledge what opened now (messages acknowledged once are done).
        if !ids.is_empty() {
            let mut unacked = unacked.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = unacked.entry(sequence).or_default();
            let fresh: Vec<MessageId> = ids
                .into_iter()
                .filter(|id| !entry.done.contains(id))
                .collect();
            entry.left.extend(fresh);
        }
    }
    let unmatched = (before - opened.items.len()) as u64;
    let s = &shared.stats;
    stats::add(&s.replies_unmatched, unmatched);
    stats::add(&s.received, opened.received.saturating_sub(unmatched));
    stats::add(&s.rejected, opened.rejected);
    stats::add(&s.batches_received, opened.batches);
    stats::add(&s.sender_keys_accepted, opened.keys_accepted);
    stats::add(&s.sender_keys_rejected, opened.keys_rejected);
    if entry.replies {
        let mut any = false;
        for message in opened.items.into_iter().flatten() {
            hand_reply(shared, message);
            any = true;
        }
        return any;
    }
    // Requests: messages that ask for a reply, other than replies that ask back (those are
    // counted, and answered, as replies).
    let requests = opened
        .items
        .iter()
        .flatten()
        .filter(|m| m.reply_to.is_some() && !namespace::is_reply_channel(&m.channel))
        .count();
    if requests > 0 {
        shared.delivered_requests(requests);
    }
    if acknowledged {
        queue(shared, id, &entry, opened.items).await;
    } else {
        // Not waited for room: the `Ack` that lets the application take them may be behind
        // them. (The hub sends none of a durable subscription's before its `Ack`, but what it
        // routes to a new subscription while the `Ack` waits for the audit log may come
        // first.)
        set_aside(shared, &entry, opened.items);
    }
    requests > 0
}

/// Sets `items` aside for a subscription the hub has not acknowledged yet, up to as many, and
/// as many payload bytes, as its queue holds; the rest are dropped and counted
/// ([`ClientStats::early_dropped`]), and an error in their place says how many.
fn set_aside(shared: &Shared, entry: &SubscriptionEntry, items: Vec<Result<Message, Error>>) {
    let mut early = entry.early.lock().unwrap_or_else(PoisonError::into_inner);
    let places = entry.items.max_capacity();
    let mut dropped = 0;
    for item in items {
        let bytes = early
            .bytes
            .saturating_add(subscription::room_of(&entry.room, &item));
        if early.dropped == 0 && early.items.len() < places && bytes <= entry.room.whole() {
            early.bytes = bytes;
            early.items.push(item);
            continue;
        }
        if early.dropped == 0 && early.items.len() == places {
            // The error saying how many were dropped takes a place in the queue: the last one
            // kept makes way for it, so that all of it goes in at once at the `Ack`.
            early.items.pop();
            early.dropped += 1;
            dropped += 1;
        }
        early.dropped += 1;
        dropped += 1;
    }
    stats::add(&shared.stats.early_dropped, dropped);
}

/// Queues `items` for subscription `id`, waiting for room in its queue (which holds up the
/// session: backpressure to the hub), or until no one will take them.
async fn queue(
    shared: &Shared,
    id: u64,
    entry: &SubscriptionEntry,
    items: Vec<Result<Message, Error>>,
) {
    // Room for the batch is taken at once (up to the queue's size), not item by item: its
    // payload bytes first (up to the queue's), then its places in the queue.
    let places = entry.items.max_capacity();
    let mut items = items.into_iter();
    while items.len() > 0 {
        // As many as fit in the whole room, one at least.
        let (mut count, mut bytes) = (0, 0u32);
        for item in items.as_slice().iter().take(places) {
            let more = subscription::room_of(&entry.room, item);
            if count > 0 && bytes.saturating_add(more) > entry.room.whole() {
                break;
            }
            (count, bytes) = (count + 1, bytes.saturating_add(more));
        }
        // Whoever would take them out may be gone already (a subscribe that failed, or was
        // cancelled, before its stream was made): then no room will come back.
        let roomy = tokio::select! {
            biased;
            taken = entry.room.take(bytes) => taken,
            () = entry.items.closed() => false,
        };
        let queued = if roomy {
            entry.items.reserve_many(count).await.ok()
        } else {
            None
        };
        let Some(permits) = queued else {
            // And the hub is told: it would go on delivering (a durable consumer would stay
            // held, its entries redelivered into nothing).
            shared.detach(id);
            break;
        };
        for (permit, item) in permits.zip(&mut items) {
            permit.send(item);
        }
    }
}

/// The slot of `channel` in `members`, made if there is none. Past [`MAX_CHANNELS_KEPT`]
/// channels, those whose answer is older than `ttl` (or [`DENIAL_KEPT`]) are forgotten, then,
/// if that is not enough, all that no one is looking up or waiting for.
fn members_slot(
    members: &mut HashMap<Channel, MembersSlot>,
    channel: &Channel,
    ttl: Duration,
) -> MembersSlot {
    if let Some(slot) = members.get(channel) {
        return slot.clone();
    }
    if members.len() >= MAX_CHANNELS_KEPT {
        let ttl = ttl.max(DENIAL_KEPT);
        // A slot someone holds (a lookup under way, or waited for) is in use.
        let fresh = |slot: &MembersSlot| {
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .is_ok_and(|s| s.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl))
        };
        members.retain(|_, slot| fresh(slot));
        if members.len() >= MAX_CHANNELS_KEPT {
            members.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
    }
    members.entry(channel.clone()).or_default().clone()
}

/// Fetches the key bundles of `principals` from the directory into the cache; returns why
/// each one that could not be had is missing.
async fn lookup_bundles(
    shared: &Shared,
    transport: &Transport,
    principals: &[Principal],
) -> HashMap<String, Error> {
    let request = DirectoryRequest {
        principals: principals.iter().map(|p| p.to_string()).collect(),
        channel: String::new(),
    };
    let mut failures = HashMap::new();
    match transport
        .directory(request, shared.options.request_timeout)
        .await
    {
        Ok(response) => {
            let now = now_ms();
            // Answered: not asked again for a while, whatever the answer held (a lookup
            // that failed on its way is tried again).
            shared.bundles.looked_up(principals, now);
            for bundle in response.bundles {
                let principal = bundle.principal.clone();
                // Only what was asked for.
                if !principals.iter().any(|p| p.as_str() == principal) {
                    continue;
                }
                if let Err(e) = shared.bundles.trust(bundle, now) {
                    failures.insert(principal, e);
                }
            }
        }
        Err(e) => {
            // Not asked again for a while either: a peer naming key epochs that don't exist
            // must not cost a call per frame while calls fail (a receiver at its call limit
            // would have its own risk raised by each).
            shared.bundles.lookup_failed(principals, now_ms());
            for p in principals {
                failures.insert(p.to_string(), e.duplicate());
            }
        }
    }
    failures
}

fn no_bundle(principal: &Principal, epoch: Option<u64>) -> Error {
    let epoch = epoch.map_or_else(String::new, |e| format!(" for key epoch {e}"));
    Error::new(
        ErrorKind::Rejected,
        format!("no valid key bundle of `{principal}`{epoch} is known"),
    )
}

fn parse_channel(channel: &str) -> Result<Channel, Error> {
    Channel::parse(channel).map_err(|e| {
        Error::new(ErrorKind::InvalidInput, format!("bad channel: {e}")).with_source(e)
    })
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use entente_types::MessageId;

    use super::*;

    fn command(channel: &str, reply_to: Option<&str>) -> Command {
        let (ticket, _answer) = oneshot::channel();
        Command::Publish(
            Outgoing {
                channel: Channel::parse(channel).unwrap(),
                payload: b"x".to_vec(),
                recipients: Arc::new(Recipients::exactly(Vec::new())),
                reply_to: reply_to.map(|r| Channel::parse(r).unwrap()),
                purpose: None,
                alone: false,
                ticket,
            },
            None,
        )
    }

    #[test]
    fn publishes_the_hub_leaves_unanswered_are_let_go_past_their_deadline() {
        let mut state = State::default();
        let start = Instant::now();
        // Another kind of frame has an ID of its own, and is not let go.
        let (done, _) = oneshot::channel();
        let pending = Pending::Unsubscribe { done: Some(done) };
        state.pending.insert(4, pending);
        state.publish_deadlines.push_back((start, 4));
        let mut answers = Vec::new();
        for (id, channel) in [(1, "orders.eu"), (2, "orders.us"), (3, "orders.uk")] {
            let (waiter, answer) = oneshot::channel();
            answers.push(answer);
            let pending = Pending::Publish {
                channel: Channel::parse(channel).unwrap(),
                waiters: vec![waiter],
                replies: Vec::new(),
                key_epoch: None,
            };
            state.pending.insert(id, pending);
            let deadline = start + Duration::from_secs(id);
            state.publish_deadlines.push_back((deadline, id));
        }
        // The second was answered.
        state.pending.remove(&2);

        assert!(state.sweep_unanswered(start).is_empty());
        assert_eq!(state.publish_deadlines.len(), 3, "what is due goes");
        let mut unanswered = state.sweep_unanswered(start + Duration::from_secs(2));
        assert_eq!(unanswered.len(), 1);
        assert_eq!(unanswered[0].len(), 1);
        unanswered[0].pop().unwrap().send(Ok(Vec::new())).unwrap();
        assert!(answers[0].try_recv().is_ok());
        let resets: Vec<&str> = state.resets.iter().map(Channel::as_str).collect();
        assert_eq!(resets, ["orders.eu"]);
        let mut kept: Vec<u64> = state.pending.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, [3, 4]);
        assert_eq!(state.publish_deadlines.len(), 1);
        assert_eq!(
            state.sweep_unanswered(start + Duration::from_secs(3)).len(),
            1
        );
        assert_eq!(state.pending.keys().copied().collect::<Vec<_>>(), [4]);
        assert!(state.publish_deadlines.is_empty());
    }

    #[test]
    fn the_round_trip_limits_follow_the_requests_in_flight_and_delivered() {
        let requests =
            |options: &ClientOptions, in_flight| round_trip_limits(options, in_flight, 0).requests;
        let options = ClientOptions::new();
        // Few in flight: the option's least limit.
        assert_eq!(requests(&options, 0), 32);
        assert_eq!(requests(&options, 64), 32);
        // More: half of them, up to `batch_max`.
        assert_eq!(requests(&options, 128), 64);
        assert_eq!(requests(&options, 129), 65);
        assert_eq!(requests(&options, 10_000), 256);
        let small = ClientOptions::new().round_trip_batch_min(2).batch_max(16);
        assert_eq!(requests(&small, 0), 2);
        assert_eq!(requests(&small, 12), 6);
        assert_eq!(requests(&small, 100), 16);

        // Replies go back as their requests came, in batches as large as the largest
        // delivered lately, never below the requests' limit nor above `batch_max`; the
        // requests delivered do not change the requests' limit.
        let limits = |requests, replies| RoundTrips { requests, replies };
        assert_eq!(round_trip_limits(&options, 0, 0), limits(32, 32));
        assert_eq!(round_trip_limits(&options, 0, 64), limits(32, 64));
        assert_eq!(round_trip_limits(&options, 0, 20), limits(32, 32));
        assert_eq!(round_trip_limits(&options, 200, 64), limits(100, 100));
        assert_eq!(round_trip_limits(&small, 0, 1_000), limits(2, 16));

        // A peak decays by a sixty-fourth per look, never below what is in flight: from 256
        // to the option's limit again in 69 looks.
        assert_eq!(decayed(128, 0), 126);
        assert_eq!(decayed(128, 127), 127);
        assert_eq!(decayed(10, 3), 9);
        assert_eq!(decayed(1, 0), 0);
        assert_eq!(decayed(0, 0), 0);
        let mut peak = 256;
        let mut looks = 0;
        while requests(&options, peak) > 32 {
            peak = decayed(peak, 0);
            looks += 1;
        }
        assert_eq!(looks, 69);
        // The limit for replies is the peak itself, not half of it: from 256 to 32 in 101
        // looks.
        let mut peak = 256;
        let mut looks = 0;
        while round_trip_limits(&options, 0, peak).replies > 32 {
            peak = decayed(peak, 0);
            looks += 1;
        }
        assert_eq!(looks, 101);
    }

    // On one thread: a spawned task runs only when the test yields.
    #[tokio::test(flavor = "current_thread")]
    async fn gathering_stops_waiting_once_it_holds_a_batch_of_requests_or_replies() {
        let limits = |requests, replies| GatherLimits {
            max: 8,
            round_trips: RoundTrips { requests, replies },
        };
        let request = || command("_direct.shop.bob", Some("_reply.shop.alice.r"));
        let reply = || command("_reply.shop.bob.x1", None);
        // A task ready to run that is about to queue one more: the writer waits for it
        // (yields) unless it already holds a batch of requests, or one of replies.
        let (tx, mut rx) = mpsc::channel(16);
        let about_to_send = |tx: &mpsc::Sender<Command>| {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(command("_reply.shop.bob.x1", None)).await })
        };
        let mut batch = vec![request(), request()];
        let pending = about_to_send(&tx);
        gather(&mut rx, &mut batch, limits(2, 8), Duration::ZERO).await;
        assert_eq!(batch.len(), 2, "waited with a batch of requests in hand");
        pending.await.unwrap().unwrap();

        // Two more allowed: it waits, and takes what was queued meanwhile (the reply above)
        // and what the task adds.
        let pending = about_to_send(&tx);
        gather(&mut rx, &mut batch, limits(4, 8), Duration::ZERO).await;
        assert_eq!(batch.len(), 4);
        pending.await.unwrap().unwrap();

        // Replies count against their own limit.
        let mut replies = vec![reply(), reply()];
        let pending = about_to_send(&tx);
        gather(&mut rx, &mut replies, limits(8, 2), Duration::ZERO).await;
        assert_eq!(replies.len(), 2, "waited with a batch of replies in hand");
        let mut replies = vec![reply(), reply()];
        gather(&mut rx, &mut replies, limits(2, 8), Duration::ZERO).await;
        assert_eq!(replies.len(), 3, "took the reply the task queued");
        pending.await.unwrap().unwrap();

        // Publishes do not count: the writer waits for more.
        let mut publishes = vec![command("orders.eu", None), command("orders.eu", None)];
        let pending = about_to_send(&tx);
        gather(&mut rx, &mut publishes, limits(2, 2), Duration::ZERO).await;
        assert_eq!(publishes.len(), 3);
        pending.await.unwrap().unwrap();
        assert_eq!(
            publishes.last().unwrap().round_trip(),
            Some(RoundTrip::Reply)
        );
        assert_eq!(publishes.first().unwrap().round_trip(), None);
        assert_eq!(request().round_trip(), Some(RoundTrip::Request));

        // With a linger, likewise.
        let mut batch = vec![request(), request()];
        tx.send(request()).await.unwrap();
        gather(&mut rx, &mut batch, limits(2, 8), Duration::from_secs(5)).await;
        assert_eq!(batch.len(), 2);
        gather(&mut rx, &mut batch, limits(3, 8), Duration::from_millis(50)).await;
        assert_eq!(batch.len(), 3);
    }

    #[test]
    fn the_members_kept_are_bounded_and_each_channel_looks_up_on_its_own() {
        let ttl = Duration::from_secs(30);
        let channel = |i: usize| Channel::parse(&format!("metrics.m{i}")).unwrap();
        let answer = |at: Instant| Some((at, Err(Error::new(ErrorKind::Denied, "no"))));
        let mut members = HashMap::new();
        // A lookup under way on one channel holds its slot: another's is free.
        let slow = members_slot(&mut members, &channel(0), ttl);
        let _looking_up = slow.try_lock().unwrap();
        let other = members_slot(&mut members, &channel(1), ttl);
        assert!(other.try_lock().is_ok());
        assert!(Arc::ptr_eq(
            &other,
            &members_slot(&mut members, &channel(1), ttl)
        ));
        drop(other);

        // Full: the stale answers go first, the fresh ones and the slot in use stay.
        let stale = Instant::now().checked_sub(2 * ttl).unwrap();
        for i in 1..MAX_CHANNELS_KEPT {
            let at = if i % 2 == 0 { stale } else { Instant::now() };
            *members_slot(&mut members, &channel(i), ttl)
                .try_lock()
                .unwrap() = answer(at);
        }
        assert_eq!(members.len(), MAX_CHANNELS_KEPT);
        members_slot(&mut members, &channel(MAX_CHANNELS_KEPT), ttl);
        // The one in use, the odd ones (fresh), the new one.
        assert_eq!(members.len(), 1 + MAX_CHANNELS_KEPT / 2 + 1);
        assert!(members.contains_key(&channel(0)));
        assert!(members.contains_key(&channel(1)));
        assert!(!members.contains_key(&channel(2)));

        // Full of fresh answers: all but the one in use go.
        for slot in members.values() {
            if let Ok(mut slot) = slot.try_lock() {
                *slot = answer(Instant::now());
            }
        }
        for i in MAX_CHANNELS_KEPT + 1.. {
            if members.len() == MAX_CHANNELS_KEPT {
                break;
            }
            *members_slot(&mut members, &channel(i), ttl)
                .try_lock()
                .unwrap() = answer(Instant::now());
        }
        assert_eq!(members.len(), MAX_CHANNELS_KEPT);
        members_slot(&mut members, &channel(3 * MAX_CHANNELS_KEPT), ttl);
        let mut kept: Vec<&str> = members.keys().map(Channel::as_str).collect();
        kept.sort_unstable();
        let last = format!("metrics.m{}", 3 * MAX_CHANNELS_KEPT);
        assert_eq!(kept, ["metrics.m0", last.as_str()]);
    }

    #[test]
    fn reply_tokens_are_128_random_bits_in_lowercase_hex() {
        // Several pools' worth, on two threads: each token is used once.
        let token = || unique_token().unwrap().as_str().to_owned();
        let mut tokens: Vec<String> = (0..200).map(|_| token()).collect();
        let other = std::thread::spawn(move || (0..200).map(|_| token()).collect::<Vec<String>>());
        tokens.extend(other.join().unwrap());
        for token in &tokens {
            assert_eq!(token.len(), 32, "{token}");
            assert!(
                token.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
                "{token}"
            );
        }
        let distinct: std::collections::HashSet<&String> = tokens.iter().collect();
        assert_eq!(distinct.len(), tokens.len());
        // Every nibble value shows up somewhere in the tokens: neither half of a byte is
        // lost.
        let seen: std::collections::HashSet<char> = tokens.iter().flat_map(|t| t.chars()).collect();
        assert_eq!(seen.len(), 16);
    }

    fn reply(from: &str, channel: &str) -> Message {
        Message {
            sender: Principal::parse(from).unwrap(),
            channel: Channel::parse(channel).unwrap(),
            payload: b"answer".to_vec(),
            message_id: MessageId::from_parts(1, [0; 10]),
            reply_to: None,
            durable: None,
        }
    }

    #[test]
    fn only_the_target_answers_a_request_on_its_channel() {
        let bob = "spiffe://example.org/agent/shop/bob";
        let carol = "spiffe://example.org/agent/shop/carol";
        let mut state = State::default();
        let (done, _answer) = oneshot::channel();
        state.replies.insert(
            Channel::parse("_reply.shop.alice.r1").unwrap(),
            ReplyWaiter {
                from: Principal::parse(bob).unwrap(),
                done,
            },
        );
        assert!(
            state
                .take_reply_waiter(&reply(carol, "_reply.shop.alice.r1"))
                .is_none()
        );
        assert!(
            state
                .take_reply_waiter(&reply(bob, "_reply.shop.alice.r2"))
                .is_none()
        );
        assert!(
            state
                .take_reply_waiter(&reply(bob, "_reply.shop.alice.r1"))
                .is_some()
        );
        assert!(
            state
                .take_reply_waiter(&reply(bob, "_reply.shop.alice.r1"))
                .is_none()
        );
    }
}
