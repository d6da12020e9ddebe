//! Serving requests: [`Requests`], a stream of [`Request`]s, each with the [`Responder`] that
//! answers it.

use std::pin::Pin;
use std::task::{Context, Poll};

use entente_types::{Channel, ChannelPattern, Principal};
use futures_core::Stream;

use crate::{Client, Error, ErrorKind, Message, PublishAck, Subscription};

/// The requests arriving on a channel, pattern or this principal's direct channel
/// ([`Client::serve`], [`Client::serve_direct`]), as a [`Stream`].
///
/// Items and their end are those of the underlying [`Subscription`]: `Ok` for every message
/// that verified and opened — a request if it carries `reply_to`, a plain message otherwise —
/// and `Err` for what did not.
#[derive(Debug)]
pub struct Requests {
    subscription: Subscription,
}

/// One message that arrived for a [`Requests`] stream, and how to answer it.
#[derive(Debug)]
#[non_exhaustive]
pub struct Request {
    /// The verified message.
    pub message: Message,
    /// Answers it, once.
    pub responder: Responder,
}

/// Answers one request: its reply goes on the request's `reply_to`, sealed for the requester
/// alone. The hub accepts one reply per request and recipient, within the request's life
/// (at most [`MAX_REPLY_WAIT`](entente_hub::MAX_REPLY_WAIT)).
#[derive(Debug)]
pub struct Responder {
    client: Client,
    requester: Principal,
    reply_to: Option<Channel>,
}

// === impl Requests ===

impl Requests {
    pub(crate) fn new(subscription: Subscription) -> Self {
        Self { subscription }
    }

    /// The pattern served.
    pub fn pattern(&self) -> &ChannelPattern {
        self.subscription.pattern()
    }

    /// Stops serving and waits for the hub's answer.
    pub async fn unsubscribe(self) -> Result<(), Error> {
        self.subscription.unsubscribe().await
    }
}

impl Stream for Requests {
    type Item = Result<Request, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Poll::Ready(item) = Pin::new(&mut this.subscription).poll_next(cx) else {
            return Poll::Pending;
        };
        let client = this.subscription.client();
        Poll::Ready(item.map(|result| {
            result.map(|message| Request {
                responder: Responder {
                    client: client.clone(),
                    requester: message.sender.clone(),
                    reply_to: message.reply_to.clone(),
                },
                message,
            })
        }))
    }
}

// === impl Responder ===

impl Responder {
    /// Where the reply goes; `None` for a message that asked for none.
    pub fn reply_to(&self) -> Option<&Channel> {
        self.reply_to.as_ref()
    }

    /// Who asked.
    pub fn requester(&self) -> &Principal {
        &self.requester
    }

    /// Sends `payload` as the reply, sealed for the requester alone, and waits for the hub's
    /// `Ack`. A message without `reply_to` can't be answered ([`ErrorKind::InvalidInput`]);
    /// nor can one whose `reply_to` lies outside its sender's reply namespace. A second reply,
    /// or one after the request expired, is refused by the hub ([`ErrorKind::Denied`]).
    pub async fn reply(self, payload: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.enqueue_reply(payload).await?.await
    }

    /// Queues the reply like [`reply`](Self::reply), but returns once it is queued: the
    /// returned [`PublishAck`] resolves when the hub answers (with the same errors). A
    /// responder answering a stream of requests can so go on to the next one without a task
    /// per reply; replies to one requester queued one after the other can share a batch and
    /// its signature.
    ///
    /// ```no_run
    /// # async fn run(client: entente_client::Client) -> Result<(), entente_client::Error> {
    /// use futures_util::stream::{FuturesUnordered, StreamExt};
    ///
    /// let mut requests = client.serve_direct().await?;
    /// let mut acks = FuturesUnordered::new();
    /// let refused = |answer: Result<(), entente_client::Error>| {
    ///     if let Err(e) = answer {
    ///         eprintln!("a reply failed: {e}");
    ///     }
    /// };
    /// loop {
    ///     tokio::select! {
    ///         request = requests.next() => match request {
    ///             None => break,
    ///             Some(Ok(request)) => {
    ///                 let payload = request.message.payload.to_ascii_uppercase();
    ///                 acks.push(request.responder.enqueue_reply(payload).await?);
    ///             }
    ///             Some(Err(e)) => eprintln!("a message was refused: {e}"),
    ///         },
    ///         Some(answer) = acks.next() => refused(answer),
    ///     }
    /// }
    /// // The replies still waiting for the hub's answer.
    /// while let Some(answer) = acks.next().await {
    ///     refused(answer);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enqueue_reply(self, payload: impl Into<Vec<u8>>) -> Result<PublishAck, Error> {
        let Some(reply_to) = &self.reply_to else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the message from `{}` asked for no reply (it has no reply_to)",
                    self.requester
                ),
            ));
        };
        self.client
            .queue_reply(&self.requester, reply_to, payload.into())
            .await
    }
}
