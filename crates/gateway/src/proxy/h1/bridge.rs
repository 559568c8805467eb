//! The requests of hyper's path (HTTP/2, HTTP/1.0, and the HTTP/1.1 the own path hands
//! over, upgrades among them), sent to their backend on the own path's plain pooled
//! sockets: the head written here, the request's body (if any) sent as the client's
//! stream yields it ([`Upload`]), the answer's head parsed with httparse
//! ([`head::response_parts`]) and its body read, de-chunked, by the client's stream
//! itself ([`RawBody`]); after a `101`, the socket goes to the tunnel
//! ([`RawBody::into_tunnel`]).
//!
//! With hyper's client a request crossed the stream's task, the backend connection's
//! driver task and the body channel between them; on all cores over HTTP/2 that made
//! the gateway 0.81x nginx's requests/s at 1.31x its CPU per request
//! (docs/BENCHMARKS.md), and it kept a second pool of backend connections beside the
//! own path's.
//!
//! A body goes on while the answer is awaited and while it is streamed back (a backend
//! may answer before it has read it all), driven by whoever waits: the exchange until
//! the answer's head, then the client's stream as it polls the answer's body.
//!
//! **Invariant:** as on the own path, a socket goes back to its pool only after an
//! answer that ended where its framing said, with nothing after it, to a request whose
//! body was sent whole; and a request is
//! sent again (on another socket) only when its first write failed, before any byte of
//! it left, or when, idempotent, it went out on a socket pooled for a second or more
//! that closed before any byte of an answer (`RESEND_AFTER_IDLE_MS`).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Incoming};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::framing::BodyEnd;
use super::head;
use super::{read_now, resend, spare, READ_SIZE, RESEND_AFTER_IDLE_MS};
use crate::proxy::answer::Failure;
use crate::proxy::body::{ms_of, Progress};
use crate::proxy::forward::connect_failed;
use crate::proxy::upstream::{Lease, RawConn, Upstream};
use crate::proxy::{warn_bad_answer, warn_stray_bytes, Proxy};

/// Writes the head of `parts` (a request as `headers::prepare_request` left it: HTTP/1.1
/// in origin form, with its `Host`) for a backend, to `out`; `chunked`: with
/// `Transfer-Encoding: chunked`, for a body of no stated length.
pub(in crate::proxy) fn write_request(
    parts: &http::request::Parts,
    chunked: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A request for [`exchange`], prepared for its backend.
pub(in crate::proxy) struct Outgoing<'a> {
    /// Its head (see [`write_request`]).
    pub(in crate::proxy) head: &'a [u8],
    /// The host it was routed by: after a failed connect, another backend of its route
    /// may take it.
    pub(in crate::proxy) host: &'a str,
    /// A `HEAD` request: its answer has no body, whatever its head says.
    pub(in crate::proxy) to_head: bool,
    /// It asks for an upgrade: a `101` is its final answer.
    pub(in crate::proxy) upgrade: bool,
    /// It may go to another backend after a failed connect (idempotent, no body).
    pub(in crate::proxy) retry_elsewhere: bool,
    /// Its body, if it has one.
    pub(in crate::proxy) upload: Option<Upload>,
}

/// Sends `outgoing` to `upstream`, on a pooled socket (another if it turns out closed)
/// or a new one; after a failed connect, once to another backend of its route if it
/// may go elsewhere; then its body. Returns the answer's head and its body, once the
/// head is in (within the first-byte timeout, counted from when the request's body
/// last moved), and the backend that gave them. After a `101` the body holds the
/// socket for a tunnel ([`RawBody::into_tunnel`]).
pub(in crate::proxy) async fn exchange(
    proxy: &Proxy,
    upstream: Arc<Upstream>,
    outgoing: Outgoing<'_>,
) -> Result<(http::response::Parts, RawBody, Arc<Upstream>), Failure> {
    let Outgoing {
        head: request,
        host,
        to_head,
        upgrade,
        mut retry_elsewhere,
        mut upload,
    } = outgoing;
    let idempotent = retry_elsewhere;
    let mut lease = Lease::new(upstream);
    let mut conn = 'sent: loop {
        while let Some(mut conn) = lease.upstream().checkout() {
            // A first write that fails wrote nothing: the socket was closed under us,
            // and the request can go on another. Once any byte is written, it cannot.
            let first = match conn.stream.try_write(request) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    conn.stream.write(request).await
                }
                first => first,
            };
            match first {
                Ok(0) | Err(_) => continue,
                Ok(written) => match conn.stream.write_all(&request[written..]).await {
                    Ok(()) => break 'sent conn,
                    Err(error) => {
                        tracing::debug!(%error, "backend request failed");
                        return Err(Failure::Backend);
                    }
                },
            }
        }
        match proxy.upstreams.connect(lease.upstream()).await {
            Ok(mut conn) => match conn.stream.write_all(request).await {
                Ok(()) => break 'sent conn,
                Err(error) => {
                    tracing::debug!(%error, "backend request failed");
                    return Err(Failure::Backend);
                }
            },
            Err(error) => {
                match connect_failed(proxy, host, &mut lease, &mut retry_elsewhere, &error) {
                    None => continue,
                    Some(failure) => return Err(failure),
                }
            }
        }
    };

    let sent = Instant::now();
    let mut deadline = sent + proxy.config.first_byte_timeout;
    // One of the thread's spare read buffers (16 KiB): a buffer of that size made
    // afresh for every answer cost more in malloc than the rest of its reading.
    let mut buf = Spare(spare::take());
    // A pooled connection closed before any byte of an answer: the request goes again,
    // once, on a new one (see `RESEND_AFTER_IDLE_MS`).
    let mut may_resend =
        idempotent && conn.idled_at_least(RESEND_AFTER_IDLE_MS, ms_of(sent.into_std()));
    let mut answering = false;
    let (answer, parts) = loop {
        match head::response_parts(&buf, to_head, upgrade) {
            Ok(Some((answer, parts))) if answer.status >= 200 || answer.status == 101 => {
                break (answer, parts)
            }
            // An interim answer (100 Continue, 103 Early Hints) is not passed on.
            Ok(Some((interim, _))) => {
                buf.drain(..interim.len);
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                let backend = lease.upstream().addr();
                warn_bad_answer(backend, format_args!("{error}; its client got a 502"));
                return Err(Failure::BadResponse);
            }
        }
        let readable = std::future::poll_fn(|cx| {
            if let Some(sending) = upload.as_mut() {
                if let Poll::Ready(Err(error)) = sending.poll_send(cx, &conn.stream) {
                    return Poll::Ready(Err(error));
                }
            }
            conn.stream
                .poll_read_ready(cx)
                .map_err(|_| UploadError::Backend)
        });
        match tokio::time::timeout_at(deadline, readable).await {
            Err(_) => {
                // A long upload is not a slow backend: the wait counts from its last
                // bytes.
                let timeout = proxy.config.first_byte_timeout;
                let left = upload
                    .as_ref()
                    .and_then(|sending| sending.progress.left_of(timeout));
                match left {
                    Some(left) => deadline = Instant::now() + left,
                    None => return Err(Failure::Timeout),
                }
                continue;
            }
            Ok(Err(UploadError::Client)) => return Err(Failure::BadBody),
            Ok(Err(UploadError::Backend)) => {
                // The backend stopped taking the body: it may have answered (a 413,
                // say) before it closed. What it said is read below; the socket is
                // not reused.
                if let Some(sending) = upload.as_mut() {
                    sending.failed = true;
                }
            }
            Ok(Ok(())) => {}
        }
        buf.reserve(READ_SIZE);
        let closed = match read_now(&conn.stream, &mut *buf) {
            Ok(0) => true,
            Ok(_) => {
                answering = true;
                false
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => false,
            Err(_) => true,
        };
        if closed {
            if answering || !std::mem::take(&mut may_resend) {
                return Err(Failure::Backend);
            }
            conn = resend(proxy, &mut lease, request).await?;
            deadline = Instant::now() + proxy.config.first_byte_timeout;
        }
    };

    let answered_by = Arc::clone(lease.upstream());
    let mut body = RawBody {
        conn: Some(conn),
        lease: Some(lease),
        end: BodyEnd::new(answer.framing),
        // A backend that did not switch may still have meant to: its socket is not
        // pooled again.
        keep_alive: answer.keep_alive && !upgrade,
        upload: upload.filter(|sending| !sending.is_done()).map(Box::new),
        pending: BytesMut::new(),
        read: BytesMut::new(),
    };
    if answer.status == 101 {
        // What came after the head is the new protocol's, for the tunnel.
        body.pending.extend_from_slice(&buf[answer.len..]);
        return Ok((parts, body, answered_by));
    }
    // What came with the head; broken framing there is the backend's fault, and
    // nothing of the answer has gone out yet.
    body.take(&buf[answer.len..]).map_err(|_| {
        let backend = answered_by.addr();
        warn_bad_answer(
            backend,
            format_args!("a malformed chunked body; its client got a 502"),
        );
        Failure::BadResponse
    })?;
    body.release_if_done();
    Ok((parts, body, answered_by))
}

/// Body bytes that may go in the head's write (see [`Upload::take_ready`]).
const WITH_HEAD: usize = 16 * 1024;

/// A request's body on its way to a backend socket: the client's stream of it (hyper's
/// HTTP/2 or HTTP/1.0 server), written as it comes, as it came with a `Content-Length`
/// (hyper's server holds it to that length) or else chunked. Trailers are not sent.
pub(in crate::proxy) struct Upload {
    body: Incoming,
    chunked: bool,
    /// What is to be written next, in order: a chunk's size line, its data, its end.
    queue: VecDeque<Bytes>,
    /// The client's body has ended, and the last of it is in `queue`.
    ended: bool,
    /// The backend stopped taking it: the socket is not reused.
    failed: bool,
    /// When it last moved, for the first-byte timeout.
    progress: Progress,
}

/// Why a body could not be sent whole.
#[derive(Debug)]
pub(in crate::proxy) enum UploadError {
    /// The client's body broke (its framing, or the client went away in it).
    Client,
    /// The backend's socket took no more.
    Backend,
}

impl Upload {
    /// `body`, framed chunked unless it has a stated length.
    pub(in crate::proxy) fn new(body: Incoming, chunked: bool) -> Upload {
        Upload {
            body,
            chunked,
            queue: VecDeque::with_capacity(3),
            ended: false,
            failed: false,
            progress: Progress::new(),
        }
    }

    /// Whether it goes chunked (else as its `Content-Length` says).
    pub(in crate::proxy) fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// Appends to `out` (the request's head) what of the body is already in, up to
    /// [`WITH_HEAD`] bytes, framed: one write takes the head and a small body together,
    /// where two would cost a system call and a segment more for the backend to take.
    pub(in crate::proxy) fn take_ready(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), UploadError> {
        let start = out.len();
        while !self.ended && out.len() - start < WITH_HEAD {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    self.ended = true;
                    if self.chunked {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    }
                    if out.len() - start + data.len() <= WITH_HEAD {
                        out.extend_from_slice(&data);
                        if self.chunked {
                            out.extend_from_slice(b"\r\n");
                        }
                    } else {
                        // Too large to copy: it goes in the next writes, after the head.
                        self.queue.push_back(data);
                        if self.chunked {
                            self.queue.push_back(Bytes::from_static(b"\r\n"));
                        }
                        break;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::debug!(%error, "the client's request body broke");
                    return Err(UploadError::Client);
                }
            }
        }
        Ok(())
    }

    /// Whether all of it was written.
    fn is_done(&self) -> bool {
        self.ended && self.queue.is_empty() && !self.failed
    }

    /// Writes what the client has sent to `stream`, as far as it takes it: ready once
    /// all of it is written (or the backend took no more before, when that is
    /// `failed`), else waiting for the client or the socket.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        stream: &TcpStream,
    ) -> Poll<Result<(), UploadError>> {
        if self.failed {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.queue.is_empty() {
                if ready!(stream.poll_write_ready(cx)).is_err() {
                    return Poll::Ready(Err(UploadError::Backend));
                }
                let mut slices = [IoSlice::new(&[]); 3];
                for (slice, bytes) in slices.iter_mut().zip(&self.queue) {
                    *slice = IoSlice::new(bytes);
                }
                let count = self.queue.len().min(slices.len());
                match stream.try_write_vectored(&slices[..count]) {
                    Ok(0) => return Poll::Ready(Err(UploadError::Backend)),
                    Ok(mut written) => {
                        while written > 0 {
                            let front = self.queue.front_mut().expect("written from the queue");
                            let taken = written.min(front.len());
                            front.advance(taken);
                            written -= taken;
                            if front.is_empty() {
                                self.queue.pop_front();
                            }
                        }
                        self.progress.touch();
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Poll::Ready(Err(UploadError::Backend)),
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    if self.chunked {
                        self.queue.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            if self.chunked {
                                let size = format!("{:x}\r\n", data.len());
                                self.queue.push_back(Bytes::from(size));
                                self.queue.push_back(data);
                                self.queue.push_back(Bytes::from_static(b"\r\n"));
                            } else {
                                self.queue.push_back(data);
                            }
                        }
                    }
                    self.progress.touch();
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "the client's request body broke");
                    return Poll::Ready(Err(UploadError::Client));
                }
            }
        }
    }
}

/// A spare buffer of the thread's, given back when dropped.
struct Spare(Vec<u8>);

impl std::ops::Deref for Spare {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Spare {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        spare::give_all(&mut [&mut self.0]);
    }
}

/// A backend's response body, read from its socket by whoever polls it (hyper's
/// stream for the client), which also writes the rest of the request's body; the
/// socket goes back to its pool when both have ended.
pub(in crate::proxy) struct RawBody {
    /// Until the body ends (or breaks).
    conn: Option<RawConn>,
    /// The request's hold on its backend (in flight), until the body ends.
    lease: Option<Lease>,
    end: BodyEnd,
    keep_alive: bool,
    /// The request's body, while some of it is still to be sent (boxed: most requests
    /// have none, and this body is moved into hyper's response).
    upload: Option<Box<Upload>>,
    /// Data read and not yet handed on.
    pending: BytesMut,
    /// What the last read brought, framing included.
    read: BytesMut,
}

/// Why a backend's body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub(in crate::proxy) enum BodyError {
    #[error("the backend closed the connection before the end of the body")]
    Cut,
    #[error("reading the backend's body: {0}")]
    Io(#[from] io::Error),
    #[error("the backend's chunked framing is broken")]
    Framing,
    #[error("the client's request body broke while its answer came")]
    Client,
}

impl RawBody {
    /// Whether the body has ended and all of it was handed on.
    pub(in crate::proxy) fn is_end_stream(&self) -> bool {
        self.end.is_done() && self.pending.is_empty()
    }

    /// Takes `bytes` read from the backend: the body's data goes to `pending`. Bytes
    /// after the body's end make the socket unfit for another request.
    fn take(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        let pending = &mut self.pending;
        let taken = self
            .end
            .advance_data(bytes, |data| pending.extend_from_slice(&bytes[data]))
            .map_err(|_| BodyError::Framing)?;
        if taken < bytes.len() && self.keep_alive {
            self.keep_alive = false;
            if let Some(lease) = &self.lease {
                warn_stray_bytes(lease.upstream().addr());
            }
        }
        Ok(())
    }

    /// Once the body has ended: the socket back to its pool if it may serve another
    /// request, and the lease let go.
    fn release_if_done(&mut self) {
        if !self.end.is_done() {
            return;
        }
        // A body not sent whole is given up: the answer is all there is.
        let uploaded = self.upload.take().is_none_or(|upload| upload.is_done());
        if let (Some(conn), Some(lease)) = (self.conn.take(), self.lease.take()) {
            if self.keep_alive && uploaded {
                lease.upstream().checkin(conn);
            }
        }
    }

    /// After a `101`: the backend's socket, the request's hold on its backend, and the
    /// bytes of the new protocol that came with the head.
    pub(in crate::proxy) fn into_tunnel(mut self) -> Option<(RawConn, Lease, BytesMut)> {
        let conn = self.conn.take()?;
        let lease = self.lease.take()?;
        Some((conn, lease, std::mem::take(&mut self.pending)))
    }

    /// The next run of the body's data; `None` at its end.
    pub(in crate::proxy) fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            if !self.pending.is_empty() {
                return Poll::Ready(Some(Ok(self.pending.split().freeze())));
            }
            if self.end.is_done() {
                self.release_if_done();
                return Poll::Ready(None);
            }
            let Some(conn) = &self.conn else {
                return Poll::Ready(None);
            };
            if let Some(upload) = &mut self.upload {
                match upload.poll_send(cx, &conn.stream) {
                    Poll::Ready(Ok(())) if upload.is_done() => self.upload = None,
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                    Poll::Ready(Err(UploadError::Backend)) => upload.failed = true,
                    Poll::Ready(Err(UploadError::Client)) => {
                        // The backend has a request cut short: its answer cannot be
                        // trusted to end, nor its socket reused.
                        self.conn = None;
                        return Poll::Ready(Some(Err(BodyError::Client)));
                    }
                }
            }
            if let Err(error) = ready!(conn.stream.poll_read_ready(cx)) {
                self.conn = None;
                return Poll::Ready(Some(Err(error.into())));
            }
            self.read.clear();
            self.read.reserve(READ_SIZE);
            // Drained, the socket's readiness is forgotten (as `read_now` does), so
            // that the next poll waits for the next bytes instead of reading to find
            // none.
            let read = match read_now(&conn.stream, &mut self.read) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                Err(error) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Ok(read) => read,
            };
            if read == 0 {
                self.conn = None;
                if self.end.until_close() {
                    // The close ends it: done, and the socket with it.
                    self.lease = None;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(BodyError::Cut)));
            }
            let bytes = std::mem::take(&mut self.read);
            let taken = self.take(&bytes);
            self.read = bytes;
            if let Err(error) = taken {
                if let Some(lease) = &self.lease {
                    warn_bad_answer(
                        lease.upstream().addr(),
                        format_args!("a malformed chunked body; its client's answer was cut off"),
                    );
                }
                self.conn = None;
                return Poll::Ready(Some(Err(error)));
            }
        }
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // A body dropped before its end takes its socket with it (the rest of the
        // answer would be read as the next one's).
        if !self.end.is_done() {
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_request_is_written_as_an_http_1_1_head() {
        let req = http::Request::builder()
            .method("DELETE")
            .uri("/a/b?c=1")
            .header("host", "app.test")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-many", "1")
            .header("x-many", "2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let mut out = Vec::new();
        write_request(&parts, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "DELETE /a/b?c=1 HTTP/1.1\r\nhost: app.test\r\nx-forwarded-for: 10.0.0.1\r\n\
             x-many: 1\r\nx-many: 2\r\n\r\n"
        );
    }
}
