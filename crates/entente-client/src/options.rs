//! [`ClientOptions`]: timeouts, batching, queue sizes, certificate renewal and how the session
//! travels ([`SessionTransport`]).

use std::time::Duration;

use entente_wire::Limits;

/// The longest keepalive interval and timeout, and the longest connect and request timeouts
/// (a day): past it, the timers' and deadlines' arithmetic could overflow.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// How a [`Client`](crate::Client) behaves. Every setting has a default; setters clamp values
/// to what works (a queue of at least one entry, a batch within the wire limit).
///
/// ```
/// use std::time::Duration;
/// use entente_client::ClientOptions;
///
/// let options = ClientOptions::new()
///     .request_timeout(Duration::from_secs(5))
///     .batch_max(128)
///     .linger(Duration::from_micros(200));
/// assert_eq!(options.batch_max_value(), 128);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) batch_max: usize,
    pub(crate) round_trip_batch_min: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) reply_batches: bool,
    pub(crate) linger: Duration,
    pub(crate) publish_queue: usize,
    pub(crate) publish_queue_bytes: usize,
    pub(crate) subscription_queue: usize,
    pub(crate) subscription_queue_bytes: usize,
    pub(crate) sender_key_resend: Duration,
    pub(crate) message_ttl: Duration,
    pub(crate) directory_ttl: Duration,
    pub(crate) limits: Limits,
    pub(crate) renew: bool,
    pub(crate) session_transport: SessionTransport,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) keepalive_timeout: Duration,
}

/// How a client's session travels to the hub ([`ClientOptions::session_transport`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionTransport {
    /// One HTTP/2 connection carries the session (a gRPC stream) and every call: directory
    /// lookups, renewal, grants, administration.
    Http2,
    /// The session on a framed connection of its own (PROTOCOL.md §9.1): length-prefixed
    /// frames with neither HTTP/2 nor gRPC under them, which costs the hub less than half the
    /// memory per idle connection and both sides less work per frame. Calls go on an HTTP/2
    /// connection opened when one is needed, with the certificate then in use, and closed by
    /// the hub once it has been idle for its idle timeout; renewing over it keeps the framed
    /// session up too. A client that makes no call holds one connection. The default.
    #[default]
    Framed,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            batch_max: 256,
            round_trip_batch_min: 32,
            batch_max_bytes: 1 << 20,
            reply_batches: true,
            linger: Duration::ZERO,
            publish_queue: 4096,
            publish_queue_bytes: 4 << 20,
            subscription_queue: 4096,
            subscription_queue_bytes: 4 << 20,
            sender_key_resend: Duration::from_secs(1),
            message_ttl: Duration::from_secs(600),
            directory_ttl: Duration::from_secs(30),
            limits: Limits::default(),
            renew: true,
            session_transport: SessionTransport::Framed,
            keepalive: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

impl ClientOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Time allowed for TCP and TLS setup (and HTTP/2's) and opening the session. Default 10 s;
    /// at most a day.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// Time a publish, subscription or directory lookup may wait for the hub's answer,
    /// queueing included. Default 10 s; at most a day.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.min(MAX_DURATION);
        self
    }

    /// Most messages sealed into one signed batch (one Ed25519 signature). Default 256;
    /// clamped to 1 ..= the wire limit (1024).
    pub fn batch_max(mut self, messages: usize) -> Self {
        self.batch_max = messages.clamp(1, self.limits.max_batch_envelopes.max(1));
        self
    }

    /// The least round-trip limit: a signed batch may always hold this many requests, or this
    /// many replies; the client allows more requests when it has more in flight, and more
    /// replies when it was delivered more requests at once. Default 32; clamped to 1 ..= the
    /// wire limit (1024), and never above [`batch_max`](Self::batch_max) (which alone caps
    /// batches, of any kind).
    ///
    /// Requests and replies travel a closed loop: a requester with many requests in flight
    /// sends the next ones as the replies come back. Sealed as one batch, what is in flight
    /// would move as one wave through each step in turn (seal, the hub's checks, open, answer),
    /// with one step busy at a time; in two batches or more the steps overlap, on the cores of
    /// one machine or across machines, at the cost of one signature and its checks more per
    /// batch. So the client's round-trip limit is half of the requests it has lately had in
    /// flight at once, or this if more, never above `batch_max`: measured on two cores, half
    /// of what is in flight works best (32 with 64, 64 with 128). Waves of this many or fewer
    /// travel whole. A responder's replies go back as their requests came: its limit for
    /// replies is the largest delivery of requests to it lately, if more (never above
    /// `batch_max`), so that a requester's batches are not cut smaller on the way back.
    /// Publishes are not limited by it.
    pub fn round_trip_batch_min(mut self, messages: usize) -> Self {
        self.round_trip_batch_min = messages.clamp(1, self.limits.max_batch_envelopes.max(1));
        self
    }

    /// Whether replies queued together to one requester go as one batch of replies on its
    /// reply namespace root, under one signature (PROTOCOL.md §5.5). Default on; turn it off
    /// to answer requesters whose SDK predates batches of replies (they refuse them as badly
    /// signed), so that each reply goes as a batch on its own channel.
    pub fn reply_batches(mut self, on: bool) -> Self {
        self.reply_batches = on;
        self
    }

    /// Most payload bytes in one batch (a single larger message still goes alone).
    /// Default 1 MiB; at least 1. A frame of sealed messages past the hub's frame limit
    /// ([`Limits::max_frame_bytes`], 4 MiB by default) is not sent: its messages fail
    /// (`InvalidInput`), and the session goes on.
    pub fn batch_max_bytes(mut self, bytes: usize) -> Self {
        self.batch_max_bytes = bytes.max(1);
        self
    }

    /// How long the publisher waits for more messages before sealing a batch that is not
    /// full. Default zero: a batch holds whatever queued up while the previous one was being
    /// sealed and sent, plus what tasks already ready to run add while the writer yields to
    /// the scheduler, again as long as that adds something (say, the requests a batch of
    /// replies releases). So a lone message goes out at once and batches grow only under
    /// load. With or without a linger, the writer stops waiting once it holds a batch of
    /// requests or replies (see [`round_trip_batch_min`](Self::round_trip_batch_min)). At most
    /// a day.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger.min(MAX_DURATION);
        self
    }

    /// Messages that may wait to be sealed before `publish` waits for room. Default 4096.
    pub fn publish_queue(mut self, messages: usize) -> Self {
        self.publish_queue = messages.max(1);
        self
    }

    /// Payload bytes that may wait to be sealed (and sent) before `publish` waits for room,
    /// whatever the number of messages: what bounds the queue's memory, and the time a message
    /// queued behind it waits, when messages are large. Default 4 MiB (the whole queue of
    /// [`publish_queue`](Self::publish_queue) messages up to 1 KiB); between 1 and
    /// `u32::MAX`. A message larger than this goes alone, once nothing else waits.
    pub fn publish_queue_bytes(mut self, bytes: usize) -> Self {
        self.publish_queue_bytes = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// Messages each subscription buffers before the session stops reading from the hub.
    /// Default 4096 (a [`Subscription`](crate::Subscription) being read also holds up to 256
    /// it has taken from that buffer at once). A subscription that is not read holds up the whole session — acks
    /// included — and the hub disconnects a consumer that stays stuck (`RESOURCE_EXHAUSTED`).
    /// What reaches a subscription before the hub has acknowledged it (deliveries may come
    /// first, as while the `Ack` waits for the hub's audit log) is kept aside until then, up
    /// to this many messages and [`subscription_queue_bytes`](Self::subscription_queue_bytes);
    /// the rest is dropped, counted
    /// ([`ClientStats::early_dropped`](crate::ClientStats::early_dropped)) and reported by an
    /// [`ErrorKind::Limited`](crate::ErrorKind::Limited) error on the subscription, which
    /// takes the place of the last one kept.
    pub fn subscription_queue(mut self, messages: usize) -> Self {
        self.subscription_queue = messages.max(1);
        self
    }

    /// Payload bytes each subscription buffers before the session stops reading from the hub,
    /// whatever the number of messages (the messages a [`Subscription`](crate::Subscription)
    /// has taken from that buffer are no longer counted). Default 4 MiB; between 1 and
    /// `u32::MAX`. A message larger than this is taken once the buffer is empty.
    pub fn subscription_queue_bytes(mut self, bytes: usize) -> Self {
        self.subscription_queue_bytes = bytes.clamp(1, u32::MAX as usize);
        self
    }

    /// How often the current sender key of a channel is sent again with a publish, so that
    /// recipients who subscribed after it was first sent can read the channel. Default 1 s;
    /// zero sends it with every publish frame. A new epoch's key is always sent at once.
    pub fn sender_key_resend(mut self, interval: Duration) -> Self {
        self.sender_key_resend = interval;
        self
    }

    /// Lifetime of each sealed message (`expires_at - issued_at`). Default 10 minutes.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        self.message_ttl = ttl;
        self
    }

    /// How long a channel's recipients, looked up in the directory, are reused, and how long
    /// the key bundle of the one principal a direct message, request or reply is sealed to is
    /// used before it is looked up again ([`Client::key_bundle`](crate::Client::key_bundle)).
    /// Default 30 s.
    pub fn directory_ttl(mut self, ttl: Duration) -> Self {
        self.directory_ttl = ttl;
        self
    }

    /// Decoding bounds for everything the hub sends. Default [`Limits::default`], which is
    /// what the hub uses. `batch_max` and `round_trip_batch_min` are clamped to the new
    /// limit.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self.batch_max = self
            .batch_max
            .clamp(1, self.limits.max_batch_envelopes.max(1));
        self.round_trip_batch_min = self
            .round_trip_batch_min
            .clamp(1, self.limits.max_batch_envelopes.max(1));
        self
    }

    /// Whether the client renews its certificate by itself. Default on.
    ///
    /// When on, a connected client asks the hub for a new certificate over its connection for
    /// calls (the session's own over HTTP/2) at half-life — at the midpoint of the
    /// certificate's validity, or after half of what remains when that has passed — with a
    /// fresh TLS key, checks it against the trust bundle,
    /// and uses it from then on ([`Client::identity`](crate::Client::identity)); the session
    /// stays up. An identity loaded from a directory has the renewed certificate and key
    /// written back there ([`Identity::dir`](crate::Identity::dir)). A failed renewal is
    /// retried with backoff until the certificate expires, and counted
    /// ([`ClientStats::renewal_failures`](crate::ClientStats::renewal_failures)).
    ///
    /// When off, the hub closes the session once the certificate expires (`UNAUTHENTICATED`).
    ///
    /// ```
    /// let options = entente_client::ClientOptions::new().renew(false);
    /// assert!(!options.renew_value());
    /// assert!(entente_client::ClientOptions::new().renew_value());
    /// ```
    pub fn renew(mut self, renew: bool) -> Self {
        self.renew = renew;
        self
    }

    /// How the session travels: as a framed session (the default) or over HTTP/2
    /// ([`SessionTransport`]).
    ///
    /// ```
    /// use entente_client::{ClientOptions, SessionTransport};
    ///
    /// assert_eq!(ClientOptions::new().session_transport_value(), SessionTransport::Framed);
    /// let options = ClientOptions::new().session_transport(SessionTransport::Http2);
    /// assert_eq!(options.session_transport_value(), SessionTransport::Http2);
    /// ```
    pub fn session_transport(mut self, transport: SessionTransport) -> Self {
        self.session_transport = transport;
        self
    }

    /// The session transport in force.
    pub fn session_transport_value(&self) -> SessionTransport {
        self.session_transport
    }

    /// How long a connection to the hub may go without a word from it before the client
    /// checks that the hub is still there, or `None` never to check. Default 30 s, as the hub
    /// checks its clients.
    ///
    /// Every connection has TCP keepalive on: after this long without traffic (at least a
    /// second), the kernel probes the peer four times within
    /// [`keepalive_timeout`](Self::keepalive_timeout) (at least a second apart) and breaks the
    /// connection if none is answered: a hub host gone, or a network path dropped, without
    /// the connection being closed. Probes go only while nothing sent is unacknowledged, so
    /// a TCP user timeout of this interval plus `keepalive_timeout` also breaks a connection
    /// whose data the hub leaves unacknowledged that long. An HTTP/2 connection (the session's over
    /// [`SessionTransport::Http2`], and the one for calls while a call is under way) is also
    /// pinged at this interval, and closed when a ping goes unanswered for
    /// `keepalive_timeout`: that also finds a hub that stopped answering while its host still
    /// does. Either way the session ends with [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    /// A framed session has no pings (PROTOCOL.md §9.1): TCP keepalive is its only check.
    ///
    /// ```
    /// use std::time::Duration;
    /// use entente_client::ClientOptions;
    ///
    /// let options = ClientOptions::new()
    ///     .keepalive(Some(Duration::from_secs(10)))
    ///     .keepalive_timeout(Duration::from_secs(5));
    /// assert_eq!(options.keepalive_value(), Some(Duration::from_secs(10)));
    /// assert_eq!(ClientOptions::new().keepalive_value(), Some(Duration::from_secs(30)));
    /// ```
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval
            .filter(|d| !d.is_zero())
            .map(|d| d.min(MAX_DURATION));
        self
    }

    /// How long the hub has to answer a keepalive check ([`keepalive`](Self::keepalive))
    /// before the connection is taken for broken. Default 20 s; at least a millisecond, at
    /// most a day.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = timeout.clamp(Duration::from_millis(1), MAX_DURATION);
        self
    }

    /// The keepalive interval in force ([`keepalive`](Self::keepalive)).
    pub fn keepalive_value(&self) -> Option<Duration> {
        self.keepalive
    }

    /// The keepalive settings of the connections, if keepalive is on.
    pub(crate) fn keepalive_settings(&self) -> Option<crate::transport::Keepalive> {
        self.keepalive.map(|interval| crate::transport::Keepalive {
            interval,
            timeout: self.keepalive_timeout,
        })
    }

    /// Whether automatic renewal is on.
    pub fn renew_value(&self) -> bool {
        self.renew
    }

    /// The batch size in force.
    pub fn batch_max_value(&self) -> usize {
        self.batch_max
    }

    /// The least round-trip limit in force: the smaller of
    /// [`round_trip_batch_min`](Self::round_trip_batch_min) and
    /// [`batch_max`](Self::batch_max).
    ///
    /// ```
    /// use entente_client::ClientOptions;
    ///
    /// assert_eq!(ClientOptions::new().round_trip_batch_min_value(), 32);
    /// assert_eq!(ClientOptions::new().batch_max(8).round_trip_batch_min_value(), 8);
    /// ```
    pub fn round_trip_batch_min_value(&self) -> usize {
        self.round_trip_batch_min.min(self.batch_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setters_clamp_to_usable_values() {
        let o = ClientOptions::new()
            .batch_max(0)
            .publish_queue(0)
            .publish_queue_bytes(0)
            .subscription_queue(0)
            .subscription_queue_bytes(0)
            .batch_max_bytes(0);
        assert_eq!(o.batch_max, 1);
        // A deadline a day away at most: `Duration::MAX` ("no timeout") would overflow.
        let long = ClientOptions::new()
            .request_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX)
            .linger(Duration::MAX);
        assert_eq!(long.linger, MAX_DURATION);
        assert_eq!(long.request_timeout, MAX_DURATION);
        assert_eq!(long.connect_timeout, MAX_DURATION);
        assert_eq!(o.publish_queue, 1);
        assert_eq!(o.publish_queue_bytes, 1);
        assert_eq!(
            ClientOptions::new()
                .publish_queue_bytes(usize::MAX)
                .publish_queue_bytes,
            u32::MAX as usize
        );
        assert_eq!(o.subscription_queue, 1);
        assert_eq!(o.subscription_queue_bytes, 1);
        assert_eq!(o.batch_max_bytes, 1);
        assert_eq!(ClientOptions::new().batch_max(1_000_000).batch_max, 1024);
        assert_eq!(
            ClientOptions::new()
                .round_trip_batch_min(0)
                .round_trip_batch_min,
            1
        );
        assert_eq!(
            ClientOptions::new()
                .round_trip_batch_min(1_000_000)
                .round_trip_batch_min_value(),
            256
        );
        let small = Limits {
            max_batch_envelopes: 8,
            ..Limits::default()
        };
        assert_eq!(
            ClientOptions::new()
                .batch_max(512)
                .limits(small)
                .batch_max_value(),
            8
        );
        let options = ClientOptions::new()
            .batch_max(512)
            .round_trip_batch_min(512)
            .limits(small);
        assert_eq!(options.round_trip_batch_min, 8);
        assert_eq!(options.round_trip_batch_min_value(), 8);
    }
}
