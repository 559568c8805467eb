//! What a client that hyper serves reads, streamed frame by frame: a short answer of
//! the proxy's own, or a backend's body ([`RawBody`]), which hands its backend
//! connection back to the pool the moment it ends; and the progress of a request
//! body, for the first-byte timeout.
//! **Invariant:** a backend connection returns to its pool only after both its
//! response and its request body ended; a body that errs or is dropped early takes
//! its connection with it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::forward::RequestGuard;
use super::h1::bridge::RawBody;

/// What a response body fails with: hyper's error, or a plain socket's.
pub(super) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A response body for the client.
pub(super) struct ResponseBody {
    inner: Inner,
    /// Ends the request (metrics, idle accounting) when the body is dropped.
    request: Option<RequestGuard>,
    /// A body that breaks resets its client's connection (HTTP/1.x): see
    /// `ClientConn::reset_on_close`. Over HTTP/2 hyper resets the stream alone.
    reset_on_error: bool,
}

enum Inner {
    Full(Option<Bytes>),
    /// Read from a plain backend socket (`h1::bridge`).
    Raw(RawBody),
}

impl ResponseBody {
    pub(super) fn full(data: Bytes) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(Some(data)),
            request: None,
            reset_on_error: false,
        }
    }

    pub(super) fn empty() -> ResponseBody {
        ResponseBody {
            inner: Inner::Full(None),
            request: None,
            reset_on_error: false,
        }
    }

    /// A body read from a plain backend socket, which goes back to its pool (and lets
    /// go of its lease) when the body ends.
    pub(super) fn raw(body: RawBody) -> ResponseBody {
        ResponseBody {
            inner: Inner::Raw(body),
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
            Inner::Raw(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Raw(body) if body.is_end_stream() => SizeHint::with_exact(0),
            Inner::Raw(_) => SizeHint::default(),
        }
    }
}

/// How far a request body has gone: when it last moved, for the first-byte timeout
/// (a long upload is not a slow backend).
#[derive(Debug)]
pub(super) struct Progress {
    last_ms: AtomicU64,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            last_ms: AtomicU64::new(now_ms()),
        }
    }

    /// When it last moved (at first, when it was made), on the clock of [`now_ms`].
    pub(super) fn last_ms(&self) -> u64 {
        self.last_ms.load(Relaxed)
    }

    pub(super) fn touch(&self) {
        self.last_ms.store(now_ms(), Relaxed);
    }

    /// How much of `timeout` is left, counted from when it last moved; `None` when
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
