//! The proxy's own answers: one mapping from what went wrong to a status and a short
//! plain-text body that says which.
//!
//! **Invariant:** a body names at most the normalised host the client sent, never a
//! backend's address or an internal error.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode};

use super::body::ResponseBody;

/// Why a request was not forwarded, or not answered by a backend.
#[derive(Debug)]
pub(super) enum Failure {
    /// No `Host` header (nor URI authority), more than one, or one that is not a host
    /// name.
    BadHost,
    /// A request head over [`MAX_HEAD`](super::MAX_HEAD) bytes.
    HeadTooLong,
    /// A request head that does not parse as HTTP/1.x. Only hyper's path meets one:
    /// the own path hands such a head over, and hyper answers it (400, no body); it is
    /// counted and logged here.
    MalformedHead,
    /// A request body in a transfer coding other than chunked (RFC 9112 §6.1: 501).
    UnsupportedCoding,
    /// A request body whose chunked framing is broken.
    BadBody,
    /// No route for this (normalised) host.
    NoRoute(String),
    /// The route has no backend to send to.
    NoBackend(String),
    /// `CONNECT`: this is a reverse proxy, not a forward one.
    ConnectMethod,
    /// No connection to a backend could be made.
    Connect,
    /// The gateway itself could not open a connection: out of file descriptors, local
    /// ports or socket memory ([`ConnectError::is_local`](super::upstream::ConnectError::is_local)).
    OutOfSockets,
    /// The backend's connection failed (reset, or closed before its answer).
    Backend,
    /// The backend answered with what the proxy cannot pass on: a head that does not
    /// parse, conflicting or unsupported framing, a `101` nobody asked for.
    BadResponse,
    /// The backend did not send its response head in time.
    Timeout,
}

impl Failure {
    /// Every reason, as [`Failure::reason`] names them: the label values of
    /// `switchyard_gateway_errors_total`.
    pub(super) const REASONS: [&'static str; 13] = [
        "bad_host",
        "head_too_long",
        "malformed_head",
        "unsupported_coding",
        "bad_body",
        "no_route",
        "no_backend",
        "connect_method",
        "connect",
        "out_of_sockets",
        "backend",
        "bad_response",
        "timeout",
    ];

    /// Its index in [`Failure::REASONS`].
    pub(super) fn reason(&self) -> usize {
        match self {
            Failure::BadHost => 0,
            Failure::HeadTooLong => 1,
            Failure::MalformedHead => 2,
            Failure::UnsupportedCoding => 3,
            Failure::BadBody => 4,
            Failure::NoRoute(_) => 5,
            Failure::NoBackend(_) => 6,
            Failure::ConnectMethod => 7,
            Failure::Connect => 8,
            Failure::OutOfSockets => 9,
            Failure::Backend => 10,
            Failure::BadResponse => 11,
            Failure::Timeout => 12,
        }
    }

    pub(super) fn status(&self) -> StatusCode {
        match self {
            Failure::BadHost | Failure::BadBody | Failure::MalformedHead => StatusCode::BAD_REQUEST,
            Failure::NoRoute(_) => StatusCode::NOT_FOUND,
            Failure::HeadTooLong => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Failure::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            Failure::NoBackend(_) | Failure::OutOfSockets => StatusCode::SERVICE_UNAVAILABLE,
            Failure::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            Failure::Connect | Failure::Backend | Failure::BadResponse => StatusCode::BAD_GATEWAY,
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn body(self) -> Bytes {
        match self {
            Failure::BadHost => Bytes::from_static(b"missing or invalid Host header\n"),
            Failure::BadBody => Bytes::from_static(b"malformed request body\n"),
            Failure::MalformedHead => Bytes::from_static(b"malformed request head\n"),
            Failure::HeadTooLong => Bytes::from_static(b"request head over 64 KiB\n"),
            Failure::UnsupportedCoding => {
                Bytes::from_static(b"transfer coding not supported (only chunked)\n")
            }
            Failure::NoRoute(host) => format!("no route for host {host}\n").into(),
            Failure::NoBackend(host) => format!("no backend available for host {host}\n").into(),
            Failure::ConnectMethod => Bytes::from_static(b"CONNECT is not supported\n"),
            Failure::Connect => Bytes::from_static(b"could not connect to a backend\n"),
            Failure::OutOfSockets => Bytes::from_static(
                b"gateway overloaded: no connection to a backend can be opened\n",
            ),
            Failure::Backend => Bytes::from_static(b"backend connection failed\n"),
            Failure::BadResponse => Bytes::from_static(b"backend sent an invalid response\n"),
            Failure::Timeout => Bytes::from_static(b"backend did not answer in time\n"),
        }
    }

    /// Whether an HTTP/1.x connection must close after this answer: the request's
    /// own bytes were refused, and whatever follows them on the connection cannot be
    /// trusted to start a request (RFC 9112 §6.1 for a coding not understood; a head
    /// or body not read to its end; `CONNECT`'s tunnel bytes). A bad `Host` is not
    /// among them: the request was read whole, as hyper and the own path frame it.
    pub(super) fn closes_connection(&self) -> bool {
        matches!(
            self,
            Failure::HeadTooLong
                | Failure::MalformedHead
                | Failure::UnsupportedCoding
                | Failure::BadBody
                | Failure::ConnectMethod
        )
    }

    /// Its status and body.
    pub(super) fn into_parts(self) -> (StatusCode, Bytes) {
        (self.status(), self.body())
    }

    /// The answer to send the client.
    pub(super) fn response(self) -> Response<ResponseBody> {
        let status = self.status();
        let mut response = Response::new(ResponseBody::full(self.body()));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}
