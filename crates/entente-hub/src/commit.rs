//! Group commit: many callers hand items to one writer thread, which makes them durable
//! together (one `fdatasync` for all queued), and each caller waits for its own.
//!
//! A caller [`submit`](Committer::submit)s an item (a push under a lock) and gets a *ticket*:
//! the number of items submitted so far. The writer [`take`](Committer::take)s everything
//! queued, writes it, and reports it [`committed`](Committer::committed); a caller that must not
//! go on before its item is durable waits for its ticket ([`durable`](Committer::durable)).
//! When the writer [`fail`](Committer::fail)s, every later submit and every wait for an item
//! not yet durable fails: the committer fails closed, for good.
//!
//! Items that go to several committers together, all or none, are decided under each one's
//! [`Admission`] (its queue's lock), taken in one order by every caller: durable streams' in
//! their address order, the audit log's last; nobody holding the audit log's takes another.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

/// The writer failed: nothing more becomes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed;

/// The queue between callers and one writer.
#[derive(Debug)]
pub(crate) struct Committer<T> {
    queue: Mutex<Queue<T>>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
    room: Notify,
    max_backlog: usize,
}

#[derive(Debug)]
struct Queue<T> {
    items: Vec<T>,
    /// What the queued items weigh (the caller's unit, e.g. bytes).
    weight: u64,
    /// The items the writer took and has not reported yet, and what they weigh: admissions
    /// count them until the writer settles them ([`Committer::committed`]).
    writing: (u64, u64),
    submitted: u64,
    closed: bool,
    failed: bool,
    /// The writer waits for items: a push wakes it (otherwise only a close, or a backlog over
    /// the bound while it [pauses](Committer::pause_until), does).
    waiting: bool,
}

/// A committer's queue held locked: what is queued can be weighed and items pushed, with
/// nothing else submitted meanwhile. Dropped, the writer is woken if anything was pushed.
#[derive(Debug)]
pub(crate) struct Admission<'c, T> {
    queue: MutexGuard<'c, Queue<T>>,
    wake: &'c Condvar,
    max_backlog: usize,
    pushed: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    durable: u64,
    failed: bool,
}

// === impl Committer ===

impl<T> Committer<T> {
    /// A committer whose callers wait for [`room`](Self::room) while more than `max_backlog`
    /// items are queued.
    pub(crate) fn new(max_backlog: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                weight: 0,
                writing: (0, 0),
                submitted: 0,
                closed: false,
                failed: false,
                waiting: false,
            }),
            wake: Condvar::new(),
            progress: watch::Sender::new(Progress::default()),
            room: Notify::new(),
            max_backlog,
        }
    }

    /// Queues `item` and returns its ticket.
    pub(crate) fn submit(&self, item: T) -> Result<u64, Failed> {
        Ok(self.admission()?.push(item, 0))
    }

    /// Locks the queue, unless the committer failed or was closed: a caller with limits
    /// weighs what is queued and pushes under it, so that they hold under concurrency, and
    /// submits decided with other committers' go through it too. Whoever holds several at once takes them in one
    /// order that every such caller keeps.
    pub(crate) fn admission(&self) -> Result<Admission<'_, T>, Failed> {
        let queue = self.lock();
        if queue.failed || queue.closed {
            return Err(Failed);
        }
        Ok(Admission {
            queue,
            wake: &self.wake,
            max_backlog: self.max_backlog,
            pushed: false,
        })
    }

    /// The ticket of everything submitted so far.
    pub(crate) fn ticket(&self) -> u64 {
        self.lock().submitted
    }

    /// Waits until the items up to `ticket` are durable.
    pub(crate) async fn durable(&self, ticket: u64) -> Result<(), Failed> {
        let mut progress = self.progress.subscribe();
        let reached = progress
            .wait_for(|p| p.durable >= ticket || p.failed)
            .await
            .map_err(|_| Failed)?;
        if reached.durable >= ticket {
            Ok(())
        } else {
            Err(Failed)
        }
    }

    /// Fails if the writer has failed.
    pub(crate) fn check(&self) -> Result<(), Failed> {
        if self.lock().failed {
            Err(Failed)
        } else {
            Ok(())
        }
    }

    /// Waits while more than the backlog bound of items is queued.
    pub(crate) async fn room(&self) {
        loop {
            let mut notified = std::pin::pin!(self.room.notified());
            notified.as_mut().enable();
            {
                let queue = self.lock();
                if queue.items.len() <= self.max_backlog || queue.failed || queue.closed {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Takes no more items; the writer takes what is queued and then sees the close.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
        self.room.notify_waiters();
    }

    // --- the writer's side ---

    /// Waits until `until` before taking more (to space commits), unless the committer is
    /// closed or more than the backlog bound of items is queued first. Items pushed meanwhile
    /// do not wake the writer. Whether it waited while items were queued (they were held).
    pub(crate) fn pause_until(&self, until: Instant) -> bool {
        let mut queue = self.lock();
        let mut paused = false;
        while !queue.closed && queue.items.len() <= self.max_backlog {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero() {
                break;
            }
            paused = true;
            queue = self
                .wake
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        paused && !queue.items.is_empty()
    }

    /// Waits up to `wait` for items; returns what is queued and whether the committer is
    /// closed.
    pub(crate) fn take(&self, wait: Duration) -> (Vec<T>, bool) {
        let mut queue = self.lock();
        if queue.items.is_empty() && !queue.closed && !wait.is_zero() {
            queue.waiting = true;
            queue = self
                .wake
                .wait_timeout_while(queue, wait, |q| q.items.is_empty() && !q.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            queue.waiting = false;
        }
        queue.writing = (queue.items.len() as u64, queue.weight);
        queue.weight = 0;
        let items = std::mem::take(&mut queue.items);
        let closed = queue.closed;
        drop(queue);
        self.room.notify_waiters();
        (items, closed)
    }

    /// Reports `n` more items durable, in submission order, after running `settle` under the
    /// queue's lock: what the writer took stops counting for admissions at the moment `settle`
    /// makes it count where the caller's checks see it (a stream's kept entries), never both
    /// and never neither. The writer reports what it took before it takes more.
    pub(crate) fn committed(&self, n: u64, settle: impl FnOnce()) {
        let mut queue = self.lock();
        settle();
        queue.writing = (0, 0);
        drop(queue);
        if n > 0 {
            self.progress.send_modify(|p| p.durable += n);
        }
    }

    /// The writer failed: refuse everything from now on.
    pub(crate) fn fail(&self) {
        let mut queue = self.lock();
        queue.failed = true;
        queue.items.clear();
        queue.weight = 0;
        drop(queue);
        self.progress.send_modify(|p| p.failed = true);
        self.room.notify_waiters();
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// === impl Admission ===

impl<T> Admission<'_, T> {
    /// The items queued or being written, and what they weigh.
    pub(crate) fn queued(&self) -> (u64, u64) {
        let (writing, writing_weight) = self.queue.writing;
        (
            self.queue.items.len() as u64 + writing,
            self.queue.weight + writing_weight,
        )
    }

    /// Queues `item`, weighing `weight`; returns its ticket.
    pub(crate) fn push(&mut self, item: T, weight: u64) -> u64 {
        self.queue.items.push(item);
        self.queue.weight += weight;
        self.queue.submitted += 1;
        self.pushed = true;
        self.queue.submitted
    }
}

impl<T> Drop for Admission<'_, T> {
    /// Wakes the writer if it waits for items, or if it pauses and the backlog is over the
    /// bound; otherwise it takes what was pushed when it next looks.
    fn drop(&mut self) {
        if self.pushed && (self.queue.waiting || self.queue.items.len() > self.max_backlog) {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn tickets_become_durable_in_order_and_a_failure_fails_what_is_left() {
        let c = Arc::new(Committer::<u32>::new(10));
        let (a, b) = (c.submit(1).unwrap(), c.submit(2).unwrap());
        assert_eq!((a, b, c.ticket()), (1, 2, 2));
        let (items, closed) = c.take(Duration::ZERO);
        assert_eq!((items, closed), (vec![1, 2], false));
        c.committed(1, || {});
        c.durable(a).await.unwrap();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.durable(b).await })
        };
        c.fail();
        assert_eq!(waiter.await.unwrap(), Err(Failed));
        c.durable(a).await.unwrap();
        assert_eq!(c.submit(3), Err(Failed));
        assert_eq!(c.check(), Err(Failed));
    }

    /// What the writer took counts for admissions until it reports it, and stops counting at
    /// the moment it settles it.
    #[test]
    fn items_being_written_count_until_the_writer_settles_them() {
        let c = Committer::<u32>::new(10);
        c.admission().unwrap().push(1, 5);
        c.admission().unwrap().push(2, 7);
        assert_eq!(c.admission().unwrap().queued(), (2, 12));
        let (items, _) = c.take(Duration::ZERO);
        assert_eq!(items, [1, 2]);
        assert_eq!(c.admission().unwrap().queued(), (2, 12), "being written");
        c.admission().unwrap().push(3, 1);
        assert_eq!(c.admission().unwrap().queued(), (3, 13));
        let mut settled = false;
        c.committed(2, || settled = true);
        assert!(settled);
        assert_eq!(c.admission().unwrap().queued(), (1, 1));
    }

    #[tokio::test]
    async fn an_admission_weighs_what_is_queued_and_take_waits() {
        let c = Arc::new(Committer::<u32>::new(10));
        {
            let mut admission = c.admission().unwrap();
            assert_eq!(admission.queued(), (0, 0));
            assert_eq!(admission.push(1, 5), 1);
            assert_eq!(admission.queued(), (1, 5));
        }
        // Weighed and let go without a push: nothing queued.
        assert_eq!(c.admission().unwrap().queued(), (1, 5));
        let writer = {
            let c = c.clone();
            std::thread::spawn(move || {
                let first = c.take(Duration::from_secs(5));
                let second = c.take(Duration::from_secs(5));
                (first, second)
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.close();
        let ((first, _), (second, closed)) = writer.join().unwrap();
        assert_eq!(first, vec![1]);
        assert!(second.is_empty() && closed);
        assert!(c.admission().is_err(), "a closed committer admits nothing");
    }

    /// Runs `wait` on a thread of its own and `act` on another 50 ms later; says whether
    /// `wait` ended within 5 s.
    fn ends_after(
        c: &Arc<Committer<u32>>,
        wait: impl FnOnce(&Committer<u32>) + Send + 'static,
        act: impl FnOnce(&Committer<u32>) + Send + 'static,
    ) -> bool {
        let (done, ended) = std::sync::mpsc::channel();
        let waiting = c.clone();
        std::thread::spawn(move || {
            wait(&waiting);
            let _ = done.send(());
        });
        let acting = c.clone();
        let acted = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            act(&acting);
        });
        let ended = ended.recv_timeout(Duration::from_secs(5)).is_ok();
        acted.join().unwrap();
        ended
    }

    #[test]
    fn a_push_wakes_a_writer_waiting_for_items() {
        let c = Arc::new(Committer::<u32>::new(10));
        let take = |c: &Committer<u32>| assert_eq!(c.take(Duration::from_secs(30)).0, [1]);
        let push = |c: &Committer<u32>| {
            c.submit(1).unwrap();
        };
        assert!(
            ends_after(&c, take, push),
            "the writer slept through the push"
        );
    }

    #[test]
    fn a_pause_ends_at_its_time_at_a_close_or_over_the_backlog_only() {
        // Pushes under the bound do not end it.
        let c = Arc::new(Committer::<u32>::new(2));
        let pause = Duration::from_millis(150);
        let started = Instant::now();
        let pushes = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.submit(1).unwrap();
                c.submit(2).unwrap();
            })
        };
        // Items were queued while it paused: they were held.
        assert!(c.pause_until(started + pause));
        assert!(started.elapsed() >= pause);
        pushes.join().unwrap();
        assert_eq!(c.take(Duration::ZERO).0, [1, 2]);

        // More than the bound queued ends it; so does a close.
        let pause = |c: &Committer<u32>| {
            c.pause_until(Instant::now() + Duration::from_secs(30));
        };
        let fill = |c: &Committer<u32>| {
            for i in 0..3 {
                c.submit(i).unwrap();
            }
        };
        assert!(
            ends_after(&c, pause, fill),
            "the pause outlasted a backlog over the bound"
        );
        assert_eq!(c.take(Duration::ZERO).0.len(), 3);
        assert!(
            ends_after(&c, pause, Committer::close),
            "the pause outlasted the close"
        );
    }
}
