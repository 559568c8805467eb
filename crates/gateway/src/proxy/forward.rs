//! One request through the proxy: find its route by host, pick a backend, rewrite the
//! request, send it on a pooled (or new) connection, and stream the answer back.
//!
//! hyper serves the client (HTTP/2, HTTP/1.0, and HTTP/1.1 that the own path hands
//! over); the request goes on a plain pooled socket (`h1::bridge`, as on the own
//! HTTP/1.1 path), and an upgrade the backend accepts goes on as a tunnel
//! (`tunnel`).
//!
//! Retries. A request is re-sent only when no backend can have seen it:
//! - a pooled connection that turns out closed (a first write that fails) leaves the
//!   request unsent, and it goes on another connection to the same backend, whatever
//!   its method;
//! - a failed connect is retried once on another backend of the route, for an
//!   idempotent method (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) without a body.
//!
//! A request that failed after its bytes were written is answered 502 and never
//! re-sent. **Invariant:** no request reaches a backend twice through the proxy.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::Poll;

use http::header::{CONNECTION, CONTENT_LENGTH};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use super::access_log::Entry;
use super::answer::Failure;
use super::body::ResponseBody;
use super::conn::ClientConn;
use super::h1::bridge;
use super::upstream::{ConnectError, Lease, Upstream};
use super::{headers, tunnel, Proxy};

/// A request in flight, from its head to the end of its response (or its tunnel),
/// counted in the in-flight gauge, and written to the access log when it ends.
pub(super) struct RequestGuard {
    conn: Arc<ClientConn>,
    /// What the access log says of it; `None` without an access log.
    log: Option<Box<Logged>>,
}

/// A request as the access log says it, gathered as it goes.
struct Logged {
    /// The method, the host and the target, back to back.
    text: Vec<u8>,
    method_end: usize,
    host_end: usize,
    protocol: &'static str,
    started: Instant,
    /// 0 until an answer is decided.
    status: u16,
    /// Bytes of the answer's body's data passed on so far (not its framing).
    bytes: u64,
    upstream: Option<Arc<Upstream>>,
}

impl RequestGuard {
    pub(super) fn new(conn: Arc<ClientConn>) -> RequestGuard {
        conn.activity.touch();
        conn.proxy.metrics.in_flight.increment(1.0);
        RequestGuard { conn, log: None }
    }

    /// Makes the client connection's close a reset: see [`ClientConn::reset_on_close`].
    pub(super) fn reset_client_on_close(&self) {
        self.conn.reset_on_close();
    }

    /// Says what the request is, for the access log (nothing without one).
    pub(super) fn describe(
        &mut self,
        method: &[u8],
        host: &[u8],
        target: &[u8],
        protocol: &'static str,
    ) {
        if self.conn.proxy.access_log.is_none() {
            return;
        }
        let text = [method, host, target].concat();
        self.log = Some(Box::new(Logged {
            method_end: method.len(),
            host_end: method.len() + host.len(),
            text,
            protocol,
            started: Instant::now(),
            status: 0,
            bytes: 0,
            upstream: None,
        }));
    }

    /// The status the client is answered with.
    #[inline]
    pub(super) fn answered(&mut self, status: StatusCode) {
        if let Some(log) = &mut self.log {
            log.status = status.as_u16();
        }
    }

    /// `bytes` more of the answer's body passed on to the client.
    #[inline]
    pub(super) fn sent_bytes(&mut self, bytes: u64) {
        if let Some(log) = &mut self.log {
            log.bytes += bytes;
        }
    }

    /// The backend the request went to (the last one, after a retry elsewhere).
    #[inline]
    pub(super) fn sent_to(&mut self, upstream: &Arc<Upstream>) {
        if let Some(log) = &mut self.log {
            log.upstream = Some(Arc::clone(upstream));
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.proxy.metrics.in_flight.decrement(1.0);
        self.conn.activity.touch();
        if let (Some(log), Some(access_log)) = (&self.log, &self.conn.proxy.access_log) {
            if log.status != 0 {
                access_log.record(&Entry {
                    client: self.conn.client_ip.as_bytes(),
                    method: &log.text[..log.method_end],
                    host: &log.text[log.method_end..log.host_end],
                    path: &log.text[log.host_end..],
                    protocol: log.protocol,
                    status: log.status,
                    bytes: log.bytes,
                    upstream: log.upstream.as_deref().map(Upstream::addr),
                    duration: log.started.elapsed(),
                });
            }
        }
    }
}

/// A request head hyper refused itself, with its own answer (400, or 431 for one over
/// the limit, no body), after which it closes the connection: counted and logged as the
/// proxy's own answers are. Nothing of the request is known but its client.
pub(super) fn refused_by_hyper(conn: &Arc<ClientConn>, error: &hyper::Error) {
    // The errors hyper answers (`on_error` of its HTTP/1 server role); an HTTP/2
    // preface where HTTP/1 was expected is not one, and never reaches it here.
    if !error.is_parse() || error.is_parse_version_h2() || error.is_parse_status() {
        return;
    }
    let failure = if error.is_parse_too_large() {
        Failure::HeadTooLong
    } else {
        Failure::MalformedHead
    };
    let mut request = RequestGuard::new(Arc::clone(conn));
    request.describe(b"", b"", b"", "");
    conn.proxy.metrics.failed(&failure);
    conn.proxy.metrics.count(failure.status());
    request.answered(failure.status());
}

/// Answers one request: the backend's response, or the proxy's own.
pub(super) async fn handle(
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let mut guard = RequestGuard::new(Arc::clone(&conn));
    if conn.proxy.access_log.is_some() {
        let host = headers::raw_host(&req);
        let host = host.as_ref().map_or(&b""[..], |host| host.as_bytes());
        let target = req.uri().path_and_query().map_or("", |p| p.as_str());
        let protocol = match req.version() {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        };
        guard.describe(
            req.method().as_str().as_bytes(),
            host,
            target.as_bytes(),
            protocol,
        );
    }
    let mut request = Some(guard);
    let http1 = req.version() < http::Version::HTTP_2;
    let mut response = match forward(&conn, req, &mut request).await {
        Ok(response) => response,
        Err(failure) => {
            tracing::debug!(?failure, "request not forwarded");
            conn.proxy.metrics.failed(&failure);
            let close = http1 && failure.closes_connection();
            let mut response = failure.response();
            if close {
                // hyper's server closes the connection after an answer that says so,
                // rather than read on past the request's body.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    };
    conn.proxy.metrics.count(response.status());
    if let Some(mut request) = request {
        request.answered(response.status());
        response.body_mut().attach(request, http1);
    }
    response
}

async fn forward(
    conn: &Arc<ClientConn>,
    mut req: Request<Incoming>,
    request: &mut Option<RequestGuard>,
) -> Result<Response<ResponseBody>, Failure> {
    let proxy = &*conn.proxy;
    if headers::head_too_long(&req) {
        return Err(Failure::HeadTooLong);
    }
    if req.method() == Method::CONNECT {
        return Err(Failure::ConnectMethod);
    }
    if !headers::only_chunked(req.headers()) {
        return Err(Failure::UnsupportedCoding);
    }
    if !headers::one_length(req.headers_mut()) {
        return Err(Failure::MalformedHead);
    }
    let raw_host = headers::raw_host(&req).ok_or(Failure::BadHost)?;
    let (host, upstream) = route(proxy, raw_host.as_bytes())?;

    // An upgrade is taken only without a body: a client may not switch before its
    // request is sent whole (RFC 9110 §7.8), and a request with one goes as it would
    // without the `Upgrade`, which a server may ignore.
    let upgrade = headers::is_upgrade(&req) && req.body().is_end_stream();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    headers::prepare_request(
        &mut req,
        &conn.client_ip,
        conn.tls,
        raw_host.clone(),
        upgrade,
    );
    let retry_elsewhere = is_idempotent(req.method()) && req.body().is_end_stream();
    let (mut parts, body) = req.into_parts();
    let mut upload = upload_of(&mut parts.headers, body).await?;
    let chunked = upload.as_ref().is_some_and(bridge::Upload::is_chunked);
    let mut head = Vec::with_capacity(512);
    bridge::write_request(&parts, chunked, &mut head);
    if let Some(upload) = upload.as_mut() {
        // What of the body is in already goes with the head.
        std::future::poll_fn(|cx| Poll::Ready(upload.take_ready(cx, &mut head)))
            .await
            .map_err(|_| Failure::BadBody)?;
    }
    let outgoing = bridge::Outgoing {
        head: &head,
        host: &host,
        to_head: parts.method == Method::HEAD,
        upgrade,
        retry_elsewhere,
        upload,
    };
    drop(parts);

    let started = Instant::now();
    if let Some(request) = request.as_mut() {
        request.sent_to(&upstream);
    }
    // Waiting for a head is bounded by the first-byte timeout, not the idle one.
    let waiting = conn.activity.hold();
    let (parts, body, answered_by) = bridge::exchange(proxy, upstream, outgoing).await?;
    drop(waiting);
    proxy.metrics.upstream_duration(started.elapsed());
    if let Some(request) = request.as_mut() {
        request.sent_to(&answered_by);
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Only a request that asked for an upgrade gets here with a 101.
        let (Some(client_upgrade), Some((backend, lease, early))) =
            (client_upgrade, body.into_tunnel())
        else {
            return Err(Failure::Backend);
        };
        let mut request = request.take().expect("the request guard is taken once");
        request.answered(StatusCode::SWITCHING_PROTOCOLS);
        tunnel::spawn(
            Arc::clone(conn),
            client_upgrade,
            backend,
            early,
            lease,
            request,
        );
        return Ok(Response::from_parts(parts, ResponseBody::empty()));
    }
    Ok(Response::from_parts(parts, ResponseBody::raw(body)))
}

/// The request's body, if it has one, to go after its head, `headers` set to frame it
/// as hyper's server holds the client to: its exact length, or else chunked, whatever
/// `Content-Length` the head had beside a coding.
async fn upload_of(
    headers: &mut http::HeaderMap,
    mut body: Incoming,
) -> Result<Option<bridge::Upload>, Failure> {
    if body.is_end_stream() {
        return Ok(None);
    }
    let length = body.size_hint().exact();
    match length {
        Some(0) => {
            // A length of 0 on an HTTP/2 stream that has not ended: the head alone
            // would be a whole request to the backend, and data may still come that
            // makes the client's request malformed. Its end is awaited first.
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|_| Failure::BadBody)?;
                if frame.data_ref().is_some_and(|data| !data.is_empty()) {
                    return Err(Failure::BadBody);
                }
            }
            return Ok(None);
        }
        Some(length) => {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.remove(CONTENT_LENGTH);
        }
    }
    Ok(Some(bridge::Upload::new(body, length.is_none())))
}

fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

/// The host a request is for (from its raw `Host`), normalised, and the backend to
/// send it to.
pub(super) fn route<'h>(
    proxy: &Proxy,
    raw_host: &'h [u8],
) -> Result<(Cow<'h, str>, Arc<Upstream>), Failure> {
    let host = std::str::from_utf8(raw_host)
        .ok()
        .and_then(model::normalize_host)
        .ok_or(Failure::BadHost)?;
    // The table guard is not held across an await.
    let table = proxy.table.load();
    let route = table
        .lookup(&host)
        .ok_or_else(|| Failure::NoRoute(host.to_string()))?;
    let upstream = proxy
        .upstreams
        .pick(route.backends(), None)
        .ok_or_else(|| Failure::NoBackend(host.to_string()))?;
    Ok((host, upstream))
}

/// After a connect to `lease`'s backend failed with `error`: `None` when the request
/// goes on to another backend of the route of `host` (the lease moved there; only
/// once, while `allowed`), else what to answer. A connect the gateway itself could not
/// make (out of sockets) would fail anywhere: it goes nowhere else.
pub(super) fn connect_failed(
    proxy: &Proxy,
    host: &str,
    lease: &mut Lease,
    allowed: &mut bool,
    error: &ConnectError,
) -> Option<Failure> {
    tracing::debug!(%error, backend = lease.upstream().addr(), "connect failed");
    if error.is_local() {
        return Some(Failure::OutOfSockets);
    }
    if move_elsewhere(proxy, host, lease, allowed) {
        return None;
    }
    Some(Failure::Connect)
}

/// After a failed connect: moves `lease` to another backend of the route of `host`, if
/// the request may still go elsewhere (`allowed`, used up here). Whether it did.
fn move_elsewhere(proxy: &Proxy, host: &str, lease: &mut Lease, allowed: &mut bool) -> bool {
    if !std::mem::take(allowed) {
        return false;
    }
    match another_backend(proxy, host, lease.upstream()) {
        Some(other) => {
            *lease = Lease::new(other);
            true
        }
        None => false,
    }
}

/// Another backend of the route of `host` than `failed`, from the table as it is now.
fn another_backend(proxy: &Proxy, host: &str, failed: &Upstream) -> Option<Arc<Upstream>> {
    let table = proxy.table.load();
    let route = table.lookup(host)?;
    proxy.upstreams.pick(route.backends(), Some(failed))
}
