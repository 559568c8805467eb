//! [`Gated`]: a future polled only after it asked to be.
//!
//! A connection's task is woken for every read and write, and a `select!` polls each
//! of its branches on every wake. A branch that waits for something rare, the drain
//! say, would take the locks of its channel for nothing each time. Gated, it is
//! polled on the first poll and then only when its own waker fired: on the request
//! path, a flag read. Its wakes go to whichever task waker polled it last.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

pub(super) struct Gated<F> {
    future: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// The task's waker, as last given to `signal`.
    task: Option<Waker>,
}

/// The waker the gated future sees: it notes the wake, then wakes the task.
struct Signal {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = &*task {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> Gated<F> {
    pub(super) fn new(future: F) -> Gated<F> {
        Gated {
            future: Box::pin(future),
            signal: Arc::new(Signal {
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            }),
            task: None,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        if !this.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let mut task = this
                .signal
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            *task = Some(cx.waker().clone());
            this.task = Some(cx.waker().clone());
        }
        // A wake that went to a waker since replaced left the flag set: not lost.
        if !this.signal.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        let waker = Waker::from(Arc::clone(&this.signal));
        this.future.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::sync::watch;

    use super::*;

    /// Counts its polls; pending until `ready` is seen (by `rx`).
    async fn watched(rx: &mut watch::Receiver<bool>, polls: &AtomicUsize) {
        let mut changed = std::pin::pin!(rx.wait_for(|ready| *ready));
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            changed.as_mut().poll(cx).map(|_| ())
        })
        .await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_gated_future_is_polled_when_woken_not_whenever_its_task_is() {
        let (tx, mut rx) = watch::channel(false);
        let polls = AtomicUsize::new(0);
        let mut gated = std::pin::pin!(Gated::new(watched(&mut rx, &polls)));
        // The task is woken a hundred times by something else (a timer here).
        for _ in 0..100 {
            tokio::select! {
                biased;
                () = gated.as_mut() => panic!("ready before the value changed"),
                () = tokio::time::sleep(Duration::from_micros(10)) => {}
            }
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once, at first");

        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), gated.as_mut())
            .await
            .expect("the gated future saw the change");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_new_task_waker_polls_it_again() {
        let (tx, mut rx) = watch::channel(false);
        let polls = AtomicUsize::new(0);
        let mut gated = Gated::new(watched(&mut rx, &polls));
        let noop = Waker::noop();
        assert!(Pin::new(&mut gated)
            .poll(&mut Context::from_waker(noop))
            .is_pending());
        // The value changes while a waker that goes nowhere is registered; the next
        // poll, from a real task, must not miss it.
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), gated)
            .await
            .expect("the change was seen by the new task");
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
