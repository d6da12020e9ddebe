//! [`ByteRoom`]: how many payload bytes a queue may hold, whatever the number of messages.

use std::sync::Arc;

use tokio::sync::Semaphore;

/// Room for payload bytes in a queue: each message put in takes its payload's length (all of
/// the room for a message larger than the queue, which then goes alone), given back once it
/// is taken out. Closed, it turns every wait away.
#[derive(Debug)]
pub(crate) struct ByteRoom {
    free: Semaphore,
    size: usize,
}

impl ByteRoom {
    /// Room for `size` bytes (at most `u32::MAX`, and what a semaphore can count).
    pub(crate) fn new(size: usize) -> Self {
        let size = size.clamp(1, (u32::MAX as usize).min(Semaphore::MAX_PERMITS));
        Self {
            free: Semaphore::new(size),
            size,
        }
    }

    /// All of the room, when none is taken.
    pub(crate) fn whole(&self) -> u32 {
        self.of(self.size)
    }

    /// The room a payload of `len` bytes takes.
    pub(crate) fn of(&self, len: usize) -> u32 {
        u32::try_from(len.min(self.size)).unwrap_or(u32::MAX)
    }

    /// Takes `bytes` of room, waiting until there is that much; `false` once closed.
    pub(crate) async fn take(&self, bytes: u32) -> bool {
        let taken = match self.free.try_acquire_many(bytes) {
            Ok(taken) => taken,
            Err(_) => match self.free.acquire_many(bytes).await {
                Ok(taken) => taken,
                Err(_) => return false,
            },
        };
        // Given back by whoever takes the messages out, in one go for as many as it takes.
        taken.forget();
        true
    }

    /// Gives `bytes` of room back.
    pub(crate) fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.free.add_permits(bytes);
        }
    }

    /// Turns away every wait for room, now and later.
    pub(crate) fn close(&self) {
        self.free.close();
    }
}

/// Room taken in a [`ByteRoom`] for one message on its way: given back if the message is
/// dropped before it arrives (a publish cancelled while it waits for a place in the queue),
/// or [`handed over`](Self::hand_over) to whoever takes it out.
#[derive(Debug)]
pub(crate) struct Taken {
    room: Arc<ByteRoom>,
    bytes: u32,
}

impl Taken {
    /// `bytes` of `room`, already taken.
    pub(crate) fn new(room: Arc<ByteRoom>, bytes: u32) -> Self {
        Self { room, bytes }
    }

    /// The bytes taken, now the caller's to give back.
    pub(crate) fn hand_over(mut self) -> u32 {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.room.give_back(self.bytes as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_taken_given_back_and_closed() {
        let room = ByteRoom::new(100);
        assert_eq!(room.of(40), 40);
        // A message larger than the queue takes all of it.
        assert_eq!(room.of(1_000), 100);
        assert_eq!(room.whole(), 100);
        assert!(room.take(60).await);
        assert!(room.take(40).await);
        let full = tokio::time::timeout(std::time::Duration::from_millis(50), room.take(1));
        assert!(full.await.is_err(), "room was found in a full queue");
        room.give_back(100);
        assert!(room.take(100).await);
        // A wait under way is turned away when the room closes, and every later one.
        let waiting = room.take(1);
        tokio::pin!(waiting);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), &mut waiting);
        assert!(pending.await.is_err());
        room.close();
        assert!(!waiting.await);
        room.give_back(1);
        assert!(!room.take(1).await);
        assert_eq!(ByteRoom::new(0).of(5), 1);
    }

    #[tokio::test]
    async fn room_taken_for_a_message_comes_back_unless_handed_over() {
        let room = Arc::new(ByteRoom::new(10));
        assert!(room.take(10).await);
        drop(Taken::new(Arc::clone(&room), 10));
        assert!(room.take(10).await, "a dropped message kept its room");
        let handed = Taken::new(Arc::clone(&room), 10).hand_over();
        assert_eq!(handed, 10);
        let full = tokio::time::timeout(std::time::Duration::from_millis(20), room.take(1));
        assert!(full.await.is_err(), "room handed over came back by itself");
        room.give_back(handed as usize);
        assert!(room.take(10).await);
    }
}
