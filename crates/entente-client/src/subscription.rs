//! [`Subscription`]: a stream of the messages (and rejections) of one subscription.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use entente_types::ChannelPattern;
use futures_core::Stream;
use tokio::sync::mpsc;

use crate::room::ByteRoom;
use crate::{Client, Error, Message};

/// The messages arriving for one subscription, as a [`Stream`].
///
/// Items are `Ok(Message)` for every message that verified and opened, and `Err` for every
/// one that did not (see [`Client::subscribe`]), or for how many arrived before the hub
/// acknowledged the subscription past what its queue holds: nothing that reaches the client
/// is dropped without a trace. After the session ends the stream yields an
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed) error (unless this client closed it) and
/// then ends. When the hub ends the subscription alone — a policy change no longer allows it
/// — the stream yields an error carrying the hub's code and reason
/// ([`Error::refusal_code`](crate::Error::refusal_code), kind
/// [`ErrorKind::Denied`](crate::ErrorKind::Denied) for `DENIED`) and then ends; the session
/// and its other subscriptions go on.
///
/// Dropping it unsubscribes without waiting; [`unsubscribe`](Self::unsubscribe) waits for the
/// hub's answer. It keeps its [`Client`]'s session alive. Its `Debug` shows no message it
/// holds (their plaintexts), only how many.
pub struct Subscription {
    id: u64,
    pattern: ChannelPattern,
    items: mpsc::Receiver<Result<Message, Error>>,
    /// The payload bytes `items` may hold, given back as they are taken out.
    room: Arc<ByteRoom>,
    /// Items taken from `items` at once and not yet yielded.
    taken: VecDeque<Result<Message, Error>>,
    client: Client,
    active: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("queued", &(self.items.len() + self.taken.len()))
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Most items taken from the queue at once.
const TAKE: usize = 256;

impl Subscription {
    pub(crate) fn new(
        id: u64,
        pattern: ChannelPattern,
        items: mpsc::Receiver<Result<Message, Error>>,
        room: Arc<ByteRoom>,
        client: Client,
    ) -> Self {
        Self {
            id,
            pattern,
            items,
            room,
            taken: VecDeque::new(),
            client,
            active: true,
        }
    }

    /// The subscription's ID on the session.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client this subscription belongs to.
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &ChannelPattern {
        &self.pattern
    }

    /// Ends the subscription and waits for the hub's answer. Messages already queued for it
    /// are discarded. A subscription the hub has ended already is simply dropped.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.active = false;
        // Once the subscription is forgotten, the reader may be waiting for places in the
        // queue or for its bytes: both let go (else it could not read the hub's answer, nor
        // anything else of the session).
        let (room, items) = (Arc::clone(&self.room), &mut self.items);
        self.client
            .unsubscribe(self.id, || {
                items.close();
                room.close();
            })
            .await
    }
}

impl Stream for Subscription {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(item) = this.taken.pop_front() {
            return Poll::Ready(Some(item));
        }
        // What is queued is taken at once (which also gives the queue's room back at once),
        // then yielded one by one.
        let mut taken = Vec::from(std::mem::take(&mut this.taken));
        let polled = this.items.poll_recv_many(cx, &mut taken, TAKE);
        let bytes: usize = taken
            .iter()
            .map(|item| room_of(&this.room, item) as usize)
            .sum();
        this.room.give_back(bytes);
        this.taken = VecDeque::from(taken);
        match polled {
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(this.taken.pop_front()),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The room `item` takes in a subscription's queue: its payload's bytes (none for an error).
pub(crate) fn room_of(room: &ByteRoom, item: &Result<Message, Error>) -> u32 {
    room.of(item.as_ref().map_or(0, |message| message.payload.len()))
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Forgotten first, so that the hub is told before the reader, no longer waiting for
        // room no one will give back, can forget it on its own.
        if self.active {
            self.client.detach(self.id);
        }
        self.room.close();
    }
}
