//! The bodies on the request path, both streamed frame by frame.
//!
//! A [`ResponseBody`] is what a client reads: a short answer of the proxy's own, or a
//! backend's body, which hands its backend connection back to the pool the moment it
//! ends. A [`RequestBody`] is what a backend reads: the client's body, noting its
//! progress for the first-byte timeout.
//! **Invariant:** a backend connection returns to its pool only after both its
//! response and its request body ended; a body that errs or is dropped early takes
//! its connection with it.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::forward::RequestGuard;
use super::h1::bridge::RawBody;
use super::upstream::{BackendConn, Lease};

/// What a response body fails with: hyper's error, or a plain socket's.
pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body for the client.
pub(super) struct ResponseBody {
    inner: Inner,
    /// The backend connection and in-flight lease, released when the body ends.
    pooled: Option<Pooled>,
    /// Ends the request (metrics, idle accounting) when the body is dropped.
    request: Option<RequestGuard>,
    /// A body that breaks resets its client's connection (HTTP/1.x): see
    /// `ClientConn::reset_on_close`. Over HTTP/2 hyper resets the stream alone.
    reset_on_error: bool,
}

enum Inner {
    Full(Option<Bytes>),
    Backend(Incoming),
    /// Read from a plain backend socket (`h1::bridge`).
    Raw(RawBody),
}

/// What a backend's response body holds on to until it ends.
pub(super) struct Pooled {
    pub(super) conn: BackendConn,
    pub(super) lease: Lease,
    /// The request body's progress, if it had one: the connection is reusable only
    /// once it was sent whole.
    pub(super) request_body: Option<Arc<Progress>>,
}

impl Pooled {
    fn release(self) {
        if self.request_body.as_ref().is_none_or(|p| p.is_done()) {
            self.lease.upstream().checkin(self.conn);
        }
    }
}

impl ResponseBody {
    pub(super) fn full(data: Bytes) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Some(data)),
            pooled: None,
            request: None,
            reset_on_error: false,
        }
    }

    pub(super) fn empty() -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(None),
            pooled: None,
            request: None,
            reset_on_error: false,
        }
    }

    pub(super) fn backend(body: Incoming, pooled: Pooled) -> ResponseBody {
        if body.is_end_stream() {
            // Nothing to read (HEAD, 204, 304, an empty body): hyper may never poll.
            pooled.release();
            return ResponseBody {
                inner: Inner::Backend(body),
                pooled: None,
                request: None,
                reset_on_error: false,
            };
        }
        ResponseBody {
            inner: Inner::Backend(body),
            pooled: Some(pooled),
            request: None,
            reset_on_error: false,
        }
    }

    /// A body read from a plain backend socket, which goes back to its pool (and lets
    /// go of its lease) when the body ends.
    pub(super) fn raw(body: RawBody) -> ResponseBody {
        ResponseBody {
            inner: Inner::Raw(body),
            pooled: None,
            request: None,
            reset_on_error: false,
        }
    }

    /// Keeps the request open until this body is dropped; `http1`: the client speaks
    /// HTTP/1.x, whose connection is reset if the body breaks.
    pub(super) fn attach(&mut self, request: RequestGuard, http1: bool) {
        self.request = Some(request);
        self.reset_on_error = http1;
    }

    /// The body broke: a backend's answer cannot be finished.
    fn broke(&mut self) {
        if let (true, Some(request)) = (self.reset_on_error, &self.request) {
            request.reset_client_on_close();
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(data) => {
                let data = data.take();
                if let (Some(request), Some(data)) = (&mut this.request, &data) {
                    request.sent_bytes(data.len() as u64);
                }
                Poll::Ready(data.map(|data| Ok(Frame::data(data))))
            }
            Inner::Backend(body) => {
                let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
                if let (Some(request), Some(Ok(frame))) = (&mut this.request, &frame) {
                    if let Some(data) = frame.data_ref() {
                        request.sent_bytes(data.len() as u64);
                    }
                }
                let ended = match &frame {
                    None => true,
                    Some(Ok(_)) => body.is_end_stream(),
                    Some(Err(_)) => {
                        // The connection is broken: drop it, and the lease with it.
                        this.pooled = None;
                        this.broke();
                        false
                    }
                };
                if ended {
                    if let Some(pooled) = this.pooled.take() {
                        pooled.release();
                    }
                }
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Inner::Raw(body) => {
                let data = ready!(body.poll_data(cx));
                if let (Some(request), Some(Ok(data))) = (&mut this.request, &data) {
                    request.sent_bytes(data.len() as u64);
                }
                if let Some(Err(_)) = &data {
                    this.broke();
                }
                Poll::Ready(data.map(|data| data.map(Frame::data).map_err(Into::into)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(data) => data.is_none(),
            Inner::Backend(body) => body.is_end_stream(),
            Inner::Raw(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Backend(body) => body.size_hint(),
            Inner::Raw(body) if body.is_end_stream() => SizeHint::with_exact(0),
            Inner::Raw(_) => SizeHint::default(),
        }
    }
}

/// A client's request body on its way to a backend.
pub(super) struct RequestBody {
    inner: Incoming,
    progress: Option<Arc<Progress>>,
}

impl RequestBody {
    pub(super) fn new(inner: Incoming, progress: Option<Arc<Progress>>) -> RequestBody {
        RequestBody { inner, progress }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(progress) = &this.progress {
            match &frame {
                None => progress.finish(),
                Some(Ok(_)) if this.inner.is_end_stream() => progress.finish(),
                Some(Ok(_)) => progress.touch(),
                Some(Err(_)) => progress.broken.store(true, Relaxed),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How far a request body has gone: when a frame last went through, and whether it
/// ended, or broke on the client's side.
#[derive(Debug)]
pub(super) struct Progress {
    last_ms: AtomicU64,
    done: AtomicBool,
    broken: AtomicBool,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            last_ms: AtomicU64::new(now_ms()),
            done: AtomicBool::new(false),
            broken: AtomicBool::new(false),
        }
    }

    /// When a frame last went through (at first, when it was made), on the clock of
    /// [`now_ms`].
    pub(super) fn last_ms(&self) -> u64 {
        self.last_ms.load(Relaxed)
    }

    pub(super) fn touch(&self) {
        self.last_ms.store(now_ms(), Relaxed);
    }

    fn finish(&self) {
        self.touch();
        self.done.store(true, Relaxed);
    }

    pub(super) fn is_done(&self) -> bool {
        self.done.load(Relaxed)
    }

    /// Whether the client's body broke (its framing, or the client went away in it):
    /// an exchange that fails then failed for the client, not for the backend.
    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Relaxed)
    }

    /// How much of `timeout` is left, counted from the last frame sent; `None` when
    /// nothing is.
    pub(super) fn left_of(&self, timeout: Duration) -> Option<Duration> {
        let since = Duration::from_millis(now_ms().saturating_sub(self.last_ms.load(Relaxed)));
        timeout.checked_sub(since).filter(|left| !left.is_zero())
    }
}

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call: a clock cheap to store in an atomic.
pub(super) fn now_ms() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// `instant` on the clock of [`now_ms`], without reading the time.
pub(super) fn ms_of(instant: Instant) -> u64 {
    instant
        .saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_millis() as u64
}
