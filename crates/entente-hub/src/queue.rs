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

use std::sync::Arc;

use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::codec::Outbound;

/// The sending side of a session's outbound queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct OutboundTx {
    frames: mpsc::Sender<Outbound>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
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
    pub fn channel(frames: usize, bytes: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(frames.max(1));
        let max_bytes = u32::try_from(bytes.clamp(1, Semaphore::MAX_PERMITS))
            .unwrap_or(u32::MAX)
            .max(1);
        let tx = Self {
            frames: tx,
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        };
        (tx, rx)
    }

    /// What `frame` takes of the byte budget.
    fn cost(&self, frame: &Outbound) -> Option<u32> {
        match frame {
            Outbound::Deliver { body, .. } => Some(
                u32::try_from(body.len())
                    .unwrap_or(u32::MAX)
                    .clamp(1, self.max_bytes),
            ),
            Outbound::Frame(_) => None,
        }
    }

    /// Queues `frame` if the queue has room for it now.
    pub fn try_send(&self, mut frame: Outbound) -> Result<(), TrySendError<Outbound>> {
        if let Some(cost) = self.cost(&frame) {
            match self.bytes.clone().try_acquire_many_owned(cost) {
                Ok(permit) => frame.hold(Budget {
                    _held: Some(permit),
                }),
                Err(_) if self.frames.is_closed() => return Err(TrySendError::Closed(frame)),
                Err(_) => return Err(TrySendError::Full(frame)),
            }
        }
        self.frames.try_send(frame).map_err(|e| match e {
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
        if let Some(cost) = self.cost(&frame) {
            let permit = tokio::select! {
                biased;
                () = self.frames.closed() => return Err(SendError(frame)),
                permit = self.bytes.clone().acquire_many_owned(cost) => match permit {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => return Err(SendError(frame)),
                },
            };
            frame.hold(Budget {
                _held: Some(permit),
            });
        }
        self.frames.send(frame).await
    }

    /// Resolves once the receiving side is gone.
    pub async fn closed(&self) {
        self.frames.closed().await;
    }

    /// Bytes of the budget free now.
    pub fn free_bytes(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Frames and bytes of deliveries waiting in the queue now.
    pub fn queued(&self) -> (usize, usize) {
        let frames = self.frames.max_capacity() - self.frames.capacity();
        let bytes = (self.max_bytes as usize).saturating_sub(self.free_bytes());
        (frames, bytes)
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
}
