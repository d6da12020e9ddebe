//! Handing work from one task to another on Tokio's multi-threaded scheduler, so that a
//! pipeline of tasks (a session's reader, the sessions it delivers to, their writers) keeps
//! both workers busy.
//!
//! A task woken from a worker waits in that worker's next-task slot, which other workers
//! can't take from, until the task that woke it yields. When the waker goes on with more
//! work of its own (the next frame is already there), the two run one after the other on one
//! worker while the other idles. [`pass_on`] moves the woken task to the worker's queue,
//! from which an idle worker takes it; a task with nothing more to do yields anyway, and the
//! woken task then runs next on the same worker, its data still in that core's caches.

use std::future::Future;
use std::task::{Context, Poll, Waker};

/// `future`'s output if it is ready at once; `None`, and `future` dropped, otherwise (it must
/// be cancel-safe).
pub fn at_once<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// What `slot` holds, taking it; never ready when it is empty.
pub async fn take<T>(slot: &mut Option<T>) -> T {
    std::future::poll_fn(|_| slot.take().map_or(Poll::Pending, Poll::Ready)).await
}

/// Lets the task this one just woke run on another worker while this one goes on: this task
/// wakes itself and yields once, and so takes the next-task slot, which moves the task there
/// to the worker's queue.
pub async fn pass_on() {
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
    /// task runs on the other worker before that work is done. (Without `pass_on`, it waits
    /// in the waker's next-task slot until the work is over.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_passed_on_runs_on_the_other_worker_while_its_waker_works() {
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
