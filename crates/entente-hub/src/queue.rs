//! A session's outbound queue, bounded twice: in frames (the channel's capacity) and in bytes
//! of delivered batches.
//!
//! A `Deliver` frame can carry a whole signed batch (hundreds of messages), so a bound in
//! frames alone lets a fast publisher queue tens of megabytes for one subscriber, and every
//! message then waits behind them. The byte budget keeps what waits for one subscriber small
//! (`HubConfig::queue_bytes`): each `Deliver` takes its body's length from the budget when it
//! is queued and gives it back when the session's stream takes it from the queue for the
//! wire. A body larger than the whole budget takes all of it. Acknowledgements and other
//! small frames are bounded by the frame count only.
//!
//! The channel is made when the first frame is queued, not with the session: tokio allocates
//! a channel's first block of 32 slots when it is made (2 336 bytes here), which an idle
//! session would hold for nothing (docs/BENCHMARKS.md, Scale). The receiving side takes the
//! channel's receiver from a hand-off slot at its first wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::mpsc::error::{SendError, TryRecvError, TrySendError};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::codec::Outbound;

/// The sending side of a session's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboundTx {
    queue: Arc<Queue>,
}

/// The receiving side of a session's outbound queue.
#[derive(Debug)]
pub struct OutboundRx {
    rendezvous: Arc<Rendezvous>,
    frames: Option<mpsc::Receiver<Outbound>>,
}

/// What the senders share: the channel once made, and the byte budget. The last sender gone
/// drops it, and with it the channel's only sender.
#[derive(Debug)]
struct Queue {
    capacity: usize,
    frames: OnceLock<mpsc::Sender<Outbound>>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
    rendezvous: Arc<Rendezvous>,
}

/// Where the receiving side finds the channel once a sender made it.
#[derive(Debug, Default)]
struct Rendezvous {
    state: Mutex<RendezvousState>,
    /// The channel was made, or every sender is gone (waiters registered first, then the
    /// state read under the lock: nothing is missed).
    made: Notify,
    /// The receiving side is gone.
    gone: Notify,
    /// The receiving side is gone (read without the lock).
    receiver_gone: AtomicBool,
}

#[derive(Debug, Default)]
struct RendezvousState {
    /// The channel's receiver, until the receiving side takes it.
    waiting: Option<mpsc::Receiver<Outbound>>,
    senders_gone: bool,
    receiver_gone: bool,
}

/// The bytes a queued `Deliver` holds of its queue's budget, given back when it is dropped
/// (once the frame has been taken from the queue). Not part of the frame's value: two frames
/// compare equal whatever they hold.
#[derive(Debug, Default)]
pub struct Budget {
    _held: Option<OwnedSemaphorePermit>,
}

impl OutboundTx {
    /// A queue of at most `frames` frames and `bytes` bytes of `Deliver` bodies (each at
    /// least 1), and its receiving side.
    pub fn channel(frames: usize, bytes: usize) -> (Self, OutboundRx) {
        let max_bytes = u32::try_from(bytes.clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX)
            .max(1);
        let rendezvous = Arc::new(Rendezvous::default());
        let queue = Queue {
            capacity: frames.max(1),
            frames: OnceLock::new(),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
            rendezvous: rendezvous.clone(),
        };
        let rx = OutboundRx {
            rendezvous,
            frames: None,
        };
        (
            Self {
                queue: Arc::new(queue),
            },
            rx,
        )
    }

    /// The channel, made now if this is the first frame; `None` if the receiving side left
    /// before any was made.
    fn frames(&self) -> Option<&mpsc::Sender<Outbound>> {
        let queue = &*self.queue;
        if let Some(frames) = queue.frames.get() {
            return Some(frames);
        }
        if queue.rendezvous.receiver_gone.load(Ordering::Acquire) {
            return None;
        }
        Some(queue.frames.get_or_init(|| {
            let (tx, rx) = mpsc::channel(queue.capacity);
            let mut state = queue.rendezvous.lock();
            // If the receiving side left meanwhile, the receiver is dropped here, which
            // closes the channel for the senders.
            if !state.receiver_gone {
                state.waiting = Some(rx);
            }
            drop(state);
            queue.rendezvous.made.notify_waiters();
            tx
        }))
    }

    /// What `frame` takes of the byte budget.
    fn cost(&self, frame: &Outbound) -> Option<u32> {
        match frame {
            Outbound::Deliver { body, .. } => Some(
                u32::try_from(body.len())
                    .unwrap_or(u32::MAX)
                    .clamp(1, self.queue.max_bytes),
            ),
            Outbound::Frame(_) => None,
        }
    }

    /// Queues `frame` if the queue has room for it now.
    pub fn try_send(&self, mut frame: Outbound) -> Result<(), TrySendError<Outbound>> {
        let Some(frames) = self.frames() else {
            return Err(TrySendError::Closed(frame));
        };
        if let Some(cost) = self.cost(&frame) {
            match self.queue.bytes.clone().try_acquire_many_owned(cost) {
                Ok(permit) => frame.hold(Budget {
                    _held: Some(permit),
                }),
                Err(_) if frames.is_closed() => return Err(TrySendError::Closed(frame)),
                Err(_) => return Err(TrySendError::Full(frame)),
            }
        }
        frames.try_send(frame).map_err(|e| match e {
            TrySendError::Full(mut frame) => {
                frame.hold(Budget::default());
                TrySendError::Full(frame)
            }
            TrySendError::Closed(mut frame) => {
                frame.hold(Budget::default());
                TrySendError::Closed(frame)
            }
        })
    }

    /// Queues `frame`, waiting for room; fails only when the receiving side is gone.
    pub async fn send(&self, mut frame: Outbound) -> Result<(), SendError<Outbound>> {
        let Some(frames) = self.frames() else {
            return Err(SendError(frame));
        };
        if let Some(cost) = self.cost(&frame) {
            let permit = tokio::select! {
                biased;
                () = frames.closed() => return Err(SendError(frame)),
                permit = self.queue.bytes.clone().acquire_many_owned(cost) => match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => return Err(SendError(frame)),
                },
            };
            frame.hold(Budget {
                _held: Some(permit),
            });
        }
        frames.send(frame).await
    }

    /// Resolves once the receiving side is gone.
    pub async fn closed(&self) {
        let rendezvous = &self.queue.rendezvous;
        let gone = rendezvous.gone.notified();
        tokio::pin!(gone);
        gone.as_mut().enable();
        if !rendezvous.receiver_gone.load(Ordering::Acquire) {
            gone.await;
        }
    }

    /// Bytes of the budget free now.
    pub fn free_bytes(&self) -> usize {
        self.queue.bytes.available_permits()
    }

    /// Frames and bytes of deliveries waiting in the queue now.
    pub fn queued(&self) -> (usize, usize) {
        let frames = self
            .queue
            .frames
            .get()
            .map_or(0, |frames| frames.max_capacity() - frames.capacity());
        let bytes = (self.queue.max_bytes as usize).saturating_sub(self.free_bytes());
        (frames, bytes)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.rendezvous.lock().senders_gone = true;
        self.rendezvous.made.notify_waiters();
    }
}

impl Rendezvous {
    fn lock(&self) -> MutexGuard<'_, RendezvousState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl OutboundRx {
    /// The next frame; `None` once every sender is gone and nothing is queued.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            if let Some(frames) = &mut self.frames {
                return frames.recv().await;
            }
            let made = self.rendezvous.made.notified();
            tokio::pin!(made);
            made.as_mut().enable();
            {
                let mut state = self.rendezvous.lock();
                if let Some(frames) = state.waiting.take() {
                    self.frames = Some(frames);
                    continue;
                }
                if state.senders_gone {
                    return None;
                }
            }
            made.await;
        }
    }

    /// The next frame if one is queued now.
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        if self.frames.is_none() {
            let mut state = self.rendezvous.lock();
            match state.waiting.take() {
                Some(frames) => self.frames = Some(frames),
                None if state.senders_gone => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        }
        match &mut self.frames {
            Some(frames) => frames.try_recv(),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.rendezvous.lock();
            state.receiver_gone = true;
            self.rendezvous.receiver_gone.store(true, Ordering::Release);
            state.waiting.take()
        };
        // Dropping the receiver (taken or waiting) closes the channel for the senders.
        drop(waiting);
        self.rendezvous.gone.notify_waiters();
    }
}

impl Clone for Budget {
    /// A copy of a frame holds none of the budget.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Budget {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn deliver(len: usize) -> Outbound {
        Outbound::Deliver {
            subscription_id: 1,
            body: Bytes::from(vec![0u8; len]),
            budget: Budget::default(),
        }
    }

    #[tokio::test]
    async fn deliveries_are_bounded_in_bytes_and_give_them_back_when_taken() {
        let (tx, mut rx) = OutboundTx::channel(1024, 1000);
        tx.try_send(deliver(600)).unwrap();
        assert_eq!(tx.free_bytes(), 400);
        // 600 more do not fit, although the channel has room for 1022 more frames.
        assert!(matches!(
            tx.try_send(deliver(600)),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(tx.free_bytes(), 400, "a refused frame holds nothing");
        // A frame that is not a delivery is bounded by the frame count only.
        tx.try_send(Outbound::Frame(entente_wire::ServerFrame::default()))
            .unwrap();
        // A waiting send goes through once the first delivery is taken from the queue.
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(deliver(600)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(rx.recv().await.unwrap());
        assert!(waiting.await.unwrap());
        assert_eq!(tx.free_bytes(), 400);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_budget_takes_all_of_it() {
        let (tx, mut rx) = OutboundTx::channel(8, 100);
        tx.try_send(deliver(5000)).unwrap();
        assert_eq!(tx.free_bytes(), 0);
        assert!(matches!(
            tx.try_send(deliver(1)),
            Err(TrySendError::Full(_))
        ));
        drop(rx.try_recv().unwrap());
        assert_eq!(tx.free_bytes(), 100);
    }

    #[tokio::test]
    async fn the_frame_count_still_bounds_the_queue_and_a_gone_receiver_is_closed() {
        let (tx, rx) = OutboundTx::channel(1, 1 << 20);
        tx.try_send(deliver(10)).unwrap();
        match tx.try_send(deliver(10)) {
            Err(TrySendError::Full(_)) => {}
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(
            tx.free_bytes(),
            (1 << 20) - 10,
            "the refused frame gave its bytes back"
        );
        drop(rx);
        assert!(matches!(
            tx.try_send(deliver(10)),
            Err(TrySendError::Closed(_))
        ));
        assert!(tx.send(deliver(10)).await.is_err());
    }

    #[tokio::test]
    async fn the_channel_is_made_by_the_first_frame_and_found_by_a_waiting_receiver() {
        let (tx, mut rx) = OutboundTx::channel(4, 1000);
        assert!(
            tx.queue.frames.get().is_none(),
            "nothing allocated before a frame"
        );
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        assert_eq!(tx.queued(), (0, 0));
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        tx.clone().try_send(deliver(10)).unwrap();
        let (first, mut rx) = waiting.await.unwrap();
        assert!(matches!(first, Some(Outbound::Deliver { .. })));
        drop(first);
        tx.send(deliver(20)).await.unwrap();
        assert_eq!(tx.queued(), (1, 20));
        drop(tx);
        assert!(
            rx.recv().await.is_some(),
            "what was queued outlives the senders"
        );
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn senders_gone_before_any_frame_end_the_receiver() {
        let (tx, mut rx) = OutboundTx::channel(4, 1000);
        let waiting = tokio::spawn(async move { rx.recv().await.is_none() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx.clone());
        assert!(!waiting.is_finished(), "one sender is left");
        drop(tx);
        assert!(waiting.await.unwrap());
        let (tx, mut rx) = OutboundTx::channel(4, 1000);
        drop(tx);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    }

    #[tokio::test]
    async fn a_receiver_gone_before_or_after_the_first_frame_closes_the_queue() {
        // Gone before any frame: nothing is made, and senders learn it.
        let (tx, rx) = OutboundTx::channel(4, 1000);
        let closed = tokio::spawn({
            let tx = tx.clone();
            async move { tx.closed().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!closed.is_finished());
        drop(rx);
        closed.await.unwrap();
        assert!(matches!(
            tx.try_send(deliver(1)),
            Err(TrySendError::Closed(_))
        ));
        assert!(tx.send(deliver(1)).await.is_err());
        assert!(tx.queue.frames.get().is_none());
        tx.closed().await;

        // Gone after the channel was made but before the receiver took it.
        let (tx, rx) = OutboundTx::channel(4, 1000);
        tx.try_send(deliver(1)).unwrap();
        drop(rx);
        assert!(matches!(
            tx.try_send(deliver(1)),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(tx.free_bytes(), 1000, "what was queued gave its bytes back");
        tx.closed().await;
    }
}
