//! Handing work from one task to another on Tokio's multi-threaded scheduler, so that a
//! pipeline of tasks (a session, the connection writers its deliveries go to) keeps both
//! workers busy.
//!
//! A task woken from a worker waits in that worker's next-task (LIFO) slot, which other
//! workers can't take from, and no idle worker is woken for it: it runs when the poll of the
//! task that woke it returns. When the waker goes on with more work of its own (the next
//! frame is already there), the two run one after the other on one worker while the other
//! idles. [`pass_on`] yields instead: the woken task runs at once on this worker, and the
//! task that passed it on goes to the back of the worker's queue, left there for the idle
//! worker, which is woken to take it. A task with nothing more to do waits anyway, and the
//! woken task then runs next on the same worker, its data still in that core's caches.

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// `future`'s output if it is ready at once; `None`, and `future` dropped, otherwise (it must
/// be cancel-safe). It is polled with a waker that does nothing: whatever it waits for must
/// be polled again with the task's own waker before the task waits.
pub(crate) fn at_once<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
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

    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn at_once_gives_what_is_ready_and_nothing_else() {
        assert_eq!(at_once(std::future::ready(7)), Some(7));
        assert_eq!(at_once(std::future::pending::<u8>()), None);
    }

    #[test]
    fn take_empties_the_slot_and_waits_on_an_empty_one() {
        let mut slot = Some("frame");
        assert_eq!(at_once(take(&mut slot)), Some("frame"));
        assert_eq!(slot, None);
        assert_eq!(at_once(take(&mut slot)), None);
    }

    /// A task wakes another, passes it on, then works without awaiting anything: the woken
    /// task runs before that work is done. The test fails if, despite `pass_on`, the woken
    /// task waits for its waker's work (without `pass_on`, it does: it stays in the waker's
    /// next-task slot until the work is over).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_passed_on_runs_before_its_wakers_work_is_done() {
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
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waker = tokio::spawn(async move {
            wake.send(()).unwrap();
            pass_on().await;
            // Work that does not yield, until the woken task ran or a few seconds passed.
            let until = Instant::now() + Duration::from_secs(3);
            while !started.load(Ordering::SeqCst) && Instant::now() < until {
                std::hint::spin_loop();
            }
            started.load(Ordering::SeqCst)
        });
        assert!(
            waker.await.unwrap(),
            "the woken task waited for its waker's work"
        );
        waiting.await.unwrap();
    }
}
