//! Idle timeouts of client connections and tunnels: one with no activity for a whole
//! period is closed. (Pooled backend connections are closed by the pool's sweep.)
//!
//! Activity is noted with a relaxed store (bytes written, a request begun or ended),
//! and a timer per connection looks at it once a period, so the hot path never touches
//! a timer. A connection is closed between one and two periods after it went quiet.
//! **Invariant:** while a request on a connection waits for its response head, the
//! connection is held, not idle: that wait has its own timeout (first byte).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a watchdog looks at.
#[derive(Debug, Default)]
pub(super) struct Activity {
    touched: AtomicBool,
    holds: AtomicUsize,
}

impl Activity {
    pub(super) fn touch(&self) {
        self.touched.store(true, Relaxed);
    }

    /// Holds the connection (it is not idle) until the guard is dropped.
    pub(super) fn hold(&self) -> Hold<'_> {
        self.holds.fetch_add(1, Relaxed);
        self.touch();
        Hold(self)
    }

    /// Whether nothing happened since the last look, and nothing holds the connection.
    fn quiet_since_last_look(&self) -> bool {
        !self.touched.swap(false, Relaxed) && self.holds.load(Relaxed) == 0
    }
}

/// See [`Activity::hold`].
pub(super) struct Hold<'a>(&'a Activity);

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Relaxed);
        self.0.touch();
    }
}

/// Goes off once an [`Activity`] has been quiet for a whole period.
///
/// Its timer is polled again only after it went off, not on every wake of the task
/// that owns it (the task's waker stays registered with the timer in between), so a
/// busy connection pays nothing for it. Hence: always poll it from the same task.
pub(super) struct IdleTimer {
    /// `None` for a zero period: no idle timeout.
    sleep: Option<Pin<Box<Sleep>>>,
    period: Duration,
    /// Whether the timer holds this task's waker since its last reset.
    registered: bool,
}

impl IdleTimer {
    pub(super) fn new(period: Duration) -> IdleTimer {
        IdleTimer {
            sleep: (!period.is_zero()).then(|| Box::pin(tokio::time::sleep(period))),
            period,
            registered: false,
        }
    }

    /// Ready once `activity` was quiet for a whole period since the timer was made
    /// or last went off.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>, activity: &Activity) -> Poll<()> {
        let Some(sleep) = &mut self.sleep else {
            return Poll::Pending;
        };
        if self.registered && !sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                self.registered = true;
                return Poll::Pending;
            }
            sleep.as_mut().reset(Instant::now() + self.period);
            self.registered = false;
            if activity.quiet_since_last_look() {
                return Poll::Ready(());
            }
        }
    }

    pub(super) async fn expired(&mut self, activity: &Activity) {
        std::future::poll_fn(|cx| self.poll_expired(cx, activity)).await;
    }
}

/// An I/O object that notes its reads and writes in an [`Activity`].
pub(super) struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
    reads: bool,
}

impl<T> Watched<T> {
    /// Reads and writes are activity.
    pub(super) fn new(io: T, activity: Arc<Activity>) -> Watched<T> {
        Watched {
            io,
            activity,
            reads: true,
        }
    }

    /// Only writes are: a peer trickling bytes in (a request head that never ends)
    /// is not kept alive by them, and one that stopped reading is caught.
    pub(super) fn writes_only(io: T, activity: Arc<Activity>) -> Watched<T> {
        Watched {
            io,
            activity,
            reads: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.reads && result.is_ready() {
            this.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if result.is_ready() {
            this.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if result.is_ready() {
            this.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
