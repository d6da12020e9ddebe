//! Handing work from one task to another on Tokio's multi-threaded scheduler, so that a
//! pipeline of tasks (a session, the connection writers its deliveries go to; an SDK's
//! reader, the tasks awaiting what it delivers) keeps both workers busy.
//!
//! A task woken from a worker waits in that worker's next-task (LIFO) slot, which other
//! workers can't take from, and no idle worker is woken for it: it runs when the poll of the
//! task that woke it returns. When the waker goes on with more work of its own (the next
//! frame is already there), the two run one after the other on one worker while the other
//! idles. Two ways out, for a waker with more to do (one with nothing more waits anyway, and
//! the woken task then runs next on the same worker, its data still in that core's caches):
//!
//! - `pass_on` (within the hub): the waker yields. The woken task runs at once on this
//!   worker, and the waker goes to the back of the worker's queue, left there for the idle
//!   worker, which is woken to take it. For a hub session, whose writers each have a
//!   connection to serve.
//! - [`nudge`]: the waker goes on, and the woken task moves to the worker's queue, where
//!   the idle worker, woken, takes it. For an SDK's reader, which stays at the front: a
//!   reader that always has a next frame (a saturated subscriber's) is not sent behind
//!   every other task.

use std::task::Poll;

use tokio::runtime::{Handle, RuntimeFlavor};

/// Moves the task this one woke last from the worker's next-task slot to its queue, where an
/// idle worker is woken to take it, and lets this one go on: a task spawned from a worker
/// takes that slot as a woken one does, and the one there moves to the queue. The task
/// spawned does nothing. Outside a runtime, or on a current-thread one (which has no other
/// worker), nothing is spawned.
pub fn nudge() {
    if let Ok(runtime) = Handle::try_current()
        && runtime.runtime_flavor() == RuntimeFlavor::MultiThread
    {
        drop(runtime.spawn(std::future::ready(())));
    }
}

/// What `slot` holds, taking it; never ready when it is empty.
pub(crate) async fn take<T>(slot: &mut Option<T>) -> T {
    std::future::poll_fn(|_| slot.take().map_or(Poll::Pending, Poll::Ready)).await
}

/// Lets the task this one woke last run now, and leaves this one to another worker: this task
/// wakes itself and returns `Pending` once, which Tokio takes as a yield (to the back of the
/// worker's queue, an idle worker woken to take it), leaving the woken task in the next-task
/// slot.
pub(crate) async fn pass_on() {
    let mut woke = false;
    std::future::poll_fn(|cx| {
        if woke {
            Poll::Ready(())
        } else {
            woke = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use std::future::Future;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn take_empties_the_slot_and_waits_on_an_empty_one() {
        let mut slot = Some("frame");
        assert_eq!(take(&mut slot).now_or_never(), Some("frame"));
        assert_eq!(slot, None);
        assert_eq!(take(&mut slot).now_or_never(), None);
    }

    /// Whether a task woken by another, which then calls `hand_over` and works for up to
    /// `work` without awaiting anything, runs before that work is done.
    async fn woken_task_runs_during_its_wakers_work<F>(hand_over: fn() -> F, work: Duration) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let started = Arc::new(AtomicBool::new(false));
        let (wake, woken) = tokio::sync::oneshot::channel::<()>();
        let (parked, is_parked) = tokio::sync::oneshot::channel::<()>();
        let flag = Arc::clone(&started);
        let waiting = tokio::spawn(async move {
            let _ = parked.send(());
            let _ = woken.await;
            flag.store(true, Ordering::SeqCst);
        });
        is_parked.await.unwrap();
        // Let the waiting task reach its wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let waker = tokio::spawn(async move {
            wake.send(()).unwrap();
            hand_over().await;
            // Work that does not yield, until the woken task ran or `work` passed.
            let until = Instant::now() + work;
            while !started.load(Ordering::SeqCst) && Instant::now() < until {
                std::hint::spin_loop();
            }
            started.load(Ordering::SeqCst)
        });
        let ran = waker.await.unwrap();
        waiting.await.unwrap();
        ran
    }

    /// Why there is this module: without a hand-over, the woken task waits in its waker's
    /// next-task slot until the work is over, the other worker idle. (Three tries: a waiting
    /// task held up before its wait, on a loaded machine, is woken as a yield instead.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_woken_task_waits_for_its_wakers_work_without_a_hand_over() {
        let mut waited = false;
        for _ in 0..3 {
            let work = Duration::from_millis(300);
            if !woken_task_runs_during_its_wakers_work(|| async {}, work).await {
                waited = true;
                break;
            }
        }
        assert!(waited, "the woken task ran during its waker's work");
    }

    /// Fails if the woken task waits for its waker's work despite `pass_on`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_passed_on_runs_before_its_wakers_work_is_done() {
        assert!(
            woken_task_runs_during_its_wakers_work(pass_on, WORK).await,
            "the woken task waited for its waker's work"
        );
    }

    /// Fails if the woken task waits for its waker's work despite `nudge`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_nudged_runs_before_its_wakers_work_is_done() {
        assert!(
            woken_task_runs_during_its_wakers_work(|| async { nudge() }, WORK).await,
            "the woken task waited for its waker's work"
        );
    }

    /// Long enough for an idle worker to wake and take a task, on a loaded machine too.
    const WORK: Duration = Duration::from_secs(3);

    #[test]
    fn a_nudge_outside_a_runtime_does_nothing() {
        nudge();
    }

    /// Fails if `nudge` spawns its task on a current-thread runtime, which has no other
    /// worker to take anything.
    #[tokio::test(flavor = "current_thread")]
    async fn a_nudge_on_a_current_thread_runtime_spawns_nothing() {
        let metrics = Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        nudge();
        assert_eq!(metrics.num_alive_tasks(), before);
    }
}
