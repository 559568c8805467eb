//! The proxy's own HTTP/1.1 path: a client connection's requests are read, routed and
//! sent to a plain pooled backend socket, and the answers streamed back, all in the
//! connection's one task.
//!
//! hyper's server and client (the path in `forward`) cost more per request than the
//! kernel work every proxy pays: a request crossed three tasks and four wake-ups (the
//! client connection, the backend connection's driver, the body channel between them),
//! and the benchmark put the gateway at 0.7-0.9x nginx's requests/s. Here a request is
//! two reads and two writes, its heads parsed in place (httparse) and rewritten into
//! one buffer; buffers are lent per request from a per-thread spare list, so a request
//! allocates nothing and an idle connection holds no buffer.
//!
//! This path takes HTTP/1.1 requests in origin form, with or without a body
//! (`Content-Length` or chunked), `Expect: 100-continue` and pipelining included.
//! Anything else (HTTP/2's preface, HTTP/1.0, an `Upgrade`, `CONNECT`, a head it
//! does not parse or finds ambiguous) hands the connection, with the bytes read so
//! far, to hyper ([`Outcome::HandOver`]), which serves it from there as before. A head
//! over 64 KiB (`proxy::MAX_HEAD`) is refused here, with 431, whatever it is.
//!
//! A client connection is a plain socket or TLS over one ([`ClientStream`]); the
//! backends are plain sockets.
//!
//! **Invariant:** the statuses, bodies, headers, timeouts, retries and metrics are
//! those of the hyper path; the proxy tests go through this path, and through hyper's
//! for what it hands over (HTTP/2, upgrades, HTTP/1.0).
//! **Invariant:** a backend socket goes back to its pool only after a response that
//! ended where its framing said, with nothing after it, to a request sent whole.

pub(super) mod bridge;
mod framing;
mod head;

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

use self::framing::{BodyEnd, Framing};
use self::head::{Parse, RequestHead};
use super::answer::Failure;
use super::body::Progress;
use super::conn::{ClientConn, Phase};
use super::forward::{connect_failed, route, RequestGuard};
use super::gate::Gated;
use super::idle::{Activity, IdleTimer};
use super::upstream::{Lease, RawConn, Upstream};
use super::Proxy;

/// How a connection left this path.
pub(super) enum Outcome {
    /// It is done with: drop it.
    Closed,
    /// hyper takes it on, starting with these bytes, already read from it.
    HandOver(Vec<u8>),
}

/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;

/// A pooled backend connection that idled this long may have been closed by its
/// backend's keep-alive timeout just as a request went out on it (the close and the
/// request cross on the wire): if it is closed before any byte of an answer, an
/// idempotent request without a body is sent again, once, on a new connection, as
/// nginx does. Backends' timeouts are seconds (Node.js 5 s, gunicorn 2 s); below this,
/// no copy of the head is kept and a close before the answer is the backend's 502.
const RESEND_AFTER_IDLE_MS: u64 = 1000;

/// Sends `head` (a request without a body) again, on a new connection to `lease`'s
/// backend: the pooled one it went out on was closed before any byte of an answer.
async fn resend(proxy: &Proxy, lease: &mut Lease, head: &[u8]) -> Result<RawConn, Failure> {
    tracing::debug!(
        backend = lease.upstream().addr(),
        "a pooled connection closed without an answer; sending the request again on a new one"
    );
    proxy.upstreams.resent();
    match proxy.upstreams.connect(lease.upstream()).await {
        Ok(mut conn) => match conn.stream.write_all(head).await {
            Ok(()) => Ok(conn),
            Err(error) => {
                tracing::debug!(%error, "backend request failed");
                Err(Failure::Backend)
            }
        },
        // The same backend: it answered a moment ago.
        Err(error) => {
            Err(connect_failed(proxy, "", lease, &mut false, &error).unwrap_or(Failure::Connect))
        }
    }
}

/// A client connection this path serves.
pub(super) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// The reading side, while the writing side is used at the same time.
    type Reader<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The writing side, while the reading side is used at the same time.
    type Writer<'a>: WriteNow + Send
    where
        Self: 'a;

    /// `X-Forwarded-Proto` for requests on it.
    const PROTO: &'static [u8];

    /// Both sides, for a request body going up while its answer comes down.
    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>);

    /// Waits for the client's next bytes and reads what is there into
    /// `buffers.client`, lending the connection its buffers once there is something to
    /// read (0: the client closed). Cancel-safe: dropped while it waits, nothing is lost.
    fn read_more(
        &mut self,
        buffers: &mut Buffers,
    ) -> impl Future<Output = io::Result<usize>> + Send;

    /// Ends the connection from this side, once this path is done with it.
    fn close(&mut self) -> impl Future<Output = ()> + Send;
}

/// A writer that can take bytes without a future to poll, when its socket has room.
pub(super) trait WriteNow: AsyncWrite + Unpin {
    /// Writes what the socket takes now: `WouldBlock` if it has no room, or if this
    /// writer cannot write outside a future (TLS: a session to flush).
    fn write_now(&mut self, _bytes: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

impl WriteNow for WriteHalf<'_> {
    fn write_now(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }
}

impl<T: AsyncWrite> WriteNow for tokio::io::WriteHalf<T> {}

impl ClientStream for TcpStream {
    type Reader<'a> = ReadHalf<'a>;
    type Writer<'a> = WriteHalf<'a>;
    const PROTO: &'static [u8] = b"http";

    fn halves(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        self.split()
    }

    async fn read_more(&mut self, buffers: &mut Buffers) -> io::Result<usize> {
        loop {
            // The socket's own reader slot, not `readable()`'s list of waiters (a lock
            // and a list entry per wait).
            std::future::poll_fn(|cx| self.poll_read_ready(cx)).await?;
            buffers.lend_for_request();
            buffers.client.reserve(READ_SIZE);
            match read_now(self, &mut buffers.client) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    if buffers.client.is_empty() {
                        buffers.give_back();
                    }
                }
                read => return read,
            }
        }
    }

    async fn close(&mut self) {
        // Dropping the socket closes it.
    }
}

impl ClientStream for TlsStream<TcpStream> {
    type Reader<'a> = tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>;
    type Writer<'a> = tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>;
    const PROTO: &'static [u8] = b"https";

    fn halves(&mut self) -> (Self::Reader<'_>, Self::Writer<'_>) {
        tokio::io::split(self)
    }

    async fn read_more(&mut self, buffers: &mut Buffers) -> io::Result<usize> {
        // Decrypted bytes may wait inside the TLS session with the socket quiet: read
        // through it. Only the read buffer is held while waiting.
        if buffers.client.capacity() == 0 {
            buffers.client = spare::take();
        }
        buffers.client.reserve(READ_SIZE);
        let read = self.read_buf(&mut buffers.client).await;
        buffers.lend_for_request();
        read
    }

    async fn close(&mut self) {
        // close_notify, so that a client reading an answer to its end knows it was
        // not cut; bounded, for a client that reads nothing any more.
        let _ = tokio::time::timeout(CLOSE_NOTIFY_TIMEOUT, self.shutdown()).await;
    }
}

/// How long a TLS connection's closing alert may wait for the client to take it.
const CLOSE_NOTIFY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves `client`'s HTTP/1.1 requests until it closes, idles out, is drained, or
/// sends something for hyper.
pub(super) async fn serve<C: ClientStream>(
    conn: &Arc<ClientConn>,
    client: &mut C,
    idle: &mut IdleTimer,
    drain: &mut watch::Receiver<Phase>,
) -> Outcome {
    let mut buffers = Buffers::default();
    let mut first_byte = Box::pin(tokio::time::sleep(conn.proxy.config.first_byte_timeout));
    // Resolves once the drain begins (or the proxy is gone): made once, not per request.
    let mut draining = {
        let mut drain = drain.clone();
        Gated::new(async move {
            let _ = drain.wait_for(|phase| *phase != Phase::Serving).await;
        })
    };
    let mut drain_seen = false;
    loop {
        let req = loop {
            if !buffers.client.is_empty() {
                let parsed = head::request(
                    &buffers.client,
                    conn.client_ip.as_bytes(),
                    C::PROTO,
                    &mut buffers.out,
                );
                match parsed {
                    Parse::Done(req) => break req,
                    Parse::HandOver => {
                        return Outcome::HandOver(std::mem::take(&mut buffers.client))
                    }
                    Parse::TooLong => {
                        let answer = Answer {
                            failure: Failure::HeadTooLong,
                            is_head: false,
                            close: true,
                        };
                        // Logged with what its request line says, if it ended.
                        let mut request = RequestGuard::new(Arc::clone(conn));
                        let (method, target) = head::request_line(&buffers.client);
                        request.describe(method, b"", target, "HTTP/1.1");
                        answer
                            .send(&conn.proxy, client, &mut buffers.out, &mut request)
                            .await;
                        return Outcome::Closed;
                    }
                    Parse::Partial => {}
                }
            } else if drain_seen || *drain.borrow() != Phase::Serving {
                return Outcome::Closed;
            }
            tokio::select! {
                biased;
                read = client.read_more(&mut buffers) => match read {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    Ok(_) => {}
                },
                () = idle.expired(&conn.activity) => return Outcome::Closed,
                () = &mut draining, if !drain_seen => drain_seen = true,
            }
        };
        let close = !req.keep_alive || *drain.borrow() != Phase::Serving;
        let exchange = Exchange {
            conn,
            req,
            close,
            first_byte: first_byte.as_mut(),
        };
        let open = exchange.run(client, idle, &mut buffers).await;
        if !open || *drain.borrow() != Phase::Serving {
            return Outcome::Closed;
        }
        if buffers.client.is_empty() {
            buffers.give_back();
        }
    }
}

/// Reads what `stream` holds into `buf`'s spare capacity, without waiting
/// (`WouldBlock`: nothing there, and no system call made if the runtime has not seen
/// the socket readable since it was last drained).
///
/// One recv(2) inside `try_io`, and after a short read the socket's readiness
/// forgotten, as `poll_read` does: the socket is drained. Left set, every next request on a kept-alive
/// connection began with a `recv` that failed with EAGAIN, one system call in five of
/// the whole request.
///
/// The readiness is forgotten as it was seen *before* the read (`try_io` clears what
/// it saw when its closure began, unless a newer event came in since): cleared after
/// the read instead, an event for bytes that arrived during it could be lost with it,
/// and the socket never read again (edge-triggered epoll fires once). That happened
/// when another thread drove the runtime's I/O meanwhile (a multi-threaded runtime):
/// an answer's last bytes sat unread a few times in a hundred in a test.
pub(super) fn read_now(stream: &TcpStream, buf: &mut impl bytes::BufMut) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut read = 0;
    let outcome = stream.try_io(Interest::READABLE, || {
        // The spare capacity (some is made if there is none).
        let spare = buf.chunk_mut();
        let room = spare.len();
        // SAFETY: `spare` is `room` writable bytes of `buf`; recv(2) writes at most
        // that many, and says how many.
        let got = unsafe { libc::recv(stream.as_raw_fd(), spare.as_mut_ptr().cast(), room, 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        read = got as usize;
        // SAFETY: recv initialised the first `read` bytes of the spare capacity.
        unsafe { buf.advance_mut(read) };
        if read > 0 && read < room {
            // Drained: WouldBlock makes tokio clear the readiness this call began with.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match outcome {
        Err(error) if error.kind() == io::ErrorKind::WouldBlock && read > 0 => Ok(read),
        Err(error) => Err(error),
        Ok(()) => Ok(read),
    }
}

/// A connection's buffers. Lent by the thread's spares only while there are bytes to
/// handle: a connection that idles between requests, or waits for its backend's
/// answer, holds none (there may be many thousands).
#[derive(Default)]
pub(super) struct Buffers {
    /// Bytes read from the client and not yet handled.
    client: Vec<u8>,
    /// Bytes read from the backend.
    backend: Vec<u8>,
    /// What goes out next: the request head (and the body bytes that came with it)
    /// for the backend, then the response head for the client.
    out: Vec<u8>,
}

impl Buffers {
    /// Before the client's bytes are read: room for them and for the rewritten head.
    fn lend_for_request(&mut self) {
        if self.client.capacity() == 0 || self.out.capacity() == 0 {
            spare::take_into(&mut [&mut self.client, &mut self.out]);
        }
    }

    /// Once the request head is with the backend, what is not needed while it works
    /// goes back. The client's bytes stay while a body or a pipelined request is
    /// still to come.
    fn release_while_waiting(&mut self, body_done: bool) {
        if body_done && self.client.is_empty() {
            spare::give_all(&mut [&mut self.client, &mut self.out]);
        } else {
            spare::give_all(&mut [&mut self.out]);
        }
    }

    fn give_back(&mut self) {
        spare::give_all(&mut [&mut self.client, &mut self.backend, &mut self.out]);
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Spare buffers, per thread: taking one costs no allocation once the thread has
/// served as many requests at once as it ever will.
mod spare {
    use std::cell::RefCell;

    use super::READ_SIZE;

    /// Buffers kept per thread (up to three per request being read or answered).
    const KEEP: usize = 256;
    /// A buffer that grew beyond this is freed, not kept.
    const KEEP_CAPACITY: usize = 64 * 1024;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn take() -> Vec<u8> {
        SPARE
            .with(|spare| spare.borrow_mut().pop())
            .unwrap_or_else(|| Vec::with_capacity(READ_SIZE))
    }

    /// Gives each of `bufs` that has no buffer one (the thread's list is looked up once).
    pub(super) fn take_into(bufs: &mut [&mut Vec<u8>]) {
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            for buf in bufs.iter_mut().filter(|buf| buf.capacity() == 0) {
                **buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(READ_SIZE));
            }
        });
    }

    /// Takes `bufs`' buffers back, emptied; one that grew too large is freed.
    pub(super) fn give_all(bufs: &mut [&mut Vec<u8>]) {
        SPARE.with(|spare| {
            let mut spare = spare.borrow_mut();
            for buf in bufs.iter_mut() {
                let mut buf = std::mem::take(*buf);
                if buf.capacity() == 0 || buf.capacity() > KEEP_CAPACITY || spare.len() >= KEEP {
                    continue;
                }
                buf.clear();
                spare.push(buf);
            }
        });
    }
}

/// One request, from its parsed head to the end of its answer.
struct Exchange<'a> {
    conn: &'a Arc<ClientConn>,
    req: RequestHead,
    /// The client connection closes after the answer.
    close: bool,
    first_byte: Pin<&'a mut Sleep>,
}

/// Why a response ended badly.
enum Broken {
    /// Before its head reached the client: the proxy answers instead.
    Answer(Failure),
    /// The backend closed (or reset) the connection before any byte of an answer: a
    /// [`Broken::Answer`] of [`Failure::Backend`], unless the request can go again
    /// (see [`RESEND_AFTER_IDLE_MS`]).
    Unanswered,
    /// After: the client connection is reset mid-answer.
    Cut,
}

impl Exchange<'_> {
    /// Whether the client connection stays open.
    async fn run<C: ClientStream>(
        self,
        client: &mut C,
        idle: &mut IdleTimer,
        buffers: &mut Buffers,
    ) -> bool {
        let Exchange {
            conn,
            req,
            close,
            mut first_byte,
        } = self;
        let proxy = &*conn.proxy;
        let mut request = RequestGuard::new(Arc::clone(conn));
        if proxy.access_log.is_some() {
            // The request line: the method, one space, the target, one space.
            let mut line = buffers.client[..req.len].splitn(3, |byte| *byte == b' ');
            let (method, target) = (
                line.next().unwrap_or_default(),
                line.next().unwrap_or_default(),
            );
            request.describe(
                method,
                &buffers.client[req.host.clone()],
                target,
                "HTTP/1.1",
            );
        }
        let mut body = BodyEnd::new(req.framing);
        // Body bytes that came with the head go out with it.
        let with_head = match body.advance(&buffers.client[req.len..]) {
            Ok(taken) => taken,
            Err(_) => {
                let answer = Answer::new(Failure::BadBody, &req, true);
                answer
                    .send(proxy, client, &mut buffers.out, &mut request)
                    .await;
                return false;
            }
        };
        // The normalised host is made again from the request if a failed connect
        // sends it to another backend: not kept, it borrows nothing meanwhile.
        let upstream = match route(proxy, &buffers.client[req.host.clone()]) {
            Ok((_, upstream)) => upstream,
            Err(failure) => {
                // The body is not read: the connection cannot go on after it.
                let close = close || req.framing != Framing::Empty;
                let answer = Answer::new(failure, &req, close);
                let sent = answer
                    .send(proxy, client, &mut buffers.out, &mut request)
                    .await;
                buffers.client.drain(..req.len);
                return sent && !close;
            }
        };
        let sent_with_head = req.len..req.len + with_head;
        buffers
            .out
            .extend_from_slice(&buffers.client[sent_with_head.clone()]);

        let started = Instant::now();
        let waiting = conn.activity.hold();
        let retry_elsewhere = req.idempotent && req.framing == Framing::Empty;
        request.sent_to(&upstream);
        let outgoing = Outgoing {
            out: &mut buffers.out,
            client: &mut buffers.client,
            consumed: sent_with_head.end,
            host: req.host.clone(),
        };
        let sent = send_head(proxy, upstream, outgoing, retry_elsewhere).await;
        let (mut backend, mut lease) = match sent {
            Ok(sent) => sent,
            Err(failure) => {
                drop(waiting);
                let close = close || !body.is_done();
                let answer = Answer::new(failure, &req, close);
                return answer
                    .send(proxy, client, &mut buffers.out, &mut request)
                    .await
                    && !close;
            }
        };
        request.sent_to(lease.upstream());
        // From the head's going out (and read from the clock once, here).
        let progress = Progress::new();
        // The head is kept (it is in `out`, not copied) where it may have to go again.
        let mut resend_head = (retry_elsewhere
            && backend.idled_at_least(RESEND_AFTER_IDLE_MS, progress.last_ms()))
        .then(|| std::mem::take(&mut buffers.out));
        buffers.release_while_waiting(body.is_done());

        if req.expect_continue
            && !body.is_done()
            && write_out(client, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return false;
        }

        // The rest of the request body goes on while the answer is awaited and
        // streamed back: a backend may answer before it has read it all.
        let mut uploaded = body.is_done();
        let answered = {
            let (mut from_client, mut to_client) = client.halves();
            let (mut from_backend, mut to_backend) = backend.stream.split();
            let mut upload = pin!(upload(
                &mut from_client,
                &mut to_backend,
                &mut buffers.client,
                &mut body,
                &progress,
            ));
            let mut answer = pin!(respond(Respond {
                proxy,
                backend: lease.upstream().addr(),
                activity: &conn.activity,
                is_head: req.is_head,
                close,
                started,
                progress: &progress,
                first_byte: first_byte.as_mut(),
                waiting: Some(waiting),
                request: &mut request,
                from_backend: &mut from_backend,
                to_client: &mut to_client,
                buf: &mut buffers.backend,
                out: &mut buffers.out,
                idle,
            }));
            loop {
                tokio::select! {
                    biased;
                    answered = answer.as_mut() => break answered,
                    sent = upload.as_mut(), if !uploaded => match sent {
                        Ok(()) => uploaded = true,
                        Err(error) => {
                            tracing::debug!(%error, "request body not forwarded");
                            return false;
                        }
                    },
                }
            }
        };
        let uploaded = uploaded && body.is_done();
        let answered = match (answered, resend_head.take()) {
            (Err(Broken::Unanswered), Some(head)) => match resend(proxy, &mut lease, &head).await {
                Ok(fresh) => {
                    backend = fresh;
                    let progress = Progress::new();
                    let (_, mut to_client) = client.halves();
                    let (mut from_backend, _) = backend.stream.split();
                    respond(Respond {
                        proxy,
                        backend: lease.upstream().addr(),
                        activity: &conn.activity,
                        is_head: req.is_head,
                        close,
                        started,
                        progress: &progress,
                        first_byte: first_byte.as_mut(),
                        waiting: Some(conn.activity.hold()),
                        request: &mut request,
                        from_backend: &mut from_backend,
                        to_client: &mut to_client,
                        buf: &mut buffers.backend,
                        out: &mut buffers.out,
                        idle,
                    })
                    .await
                }
                Err(failure) => Err(Broken::Answer(failure)),
            },
            (answered, _) => answered,
        };

        match answered {
            Ok(ended) => {
                if ended.backend_reusable && uploaded {
                    lease.upstream().checkin(backend);
                }
                drop((lease, request));
                uploaded && !ended.client_close
            }
            Err(broken @ (Broken::Answer(_) | Broken::Unanswered)) => {
                let failure = match broken {
                    Broken::Answer(failure) => failure,
                    _ => Failure::Backend,
                };
                drop((backend, lease));
                let close = close || !uploaded;
                let answer = Answer::new(failure, &req, close);
                answer
                    .send(proxy, client, &mut buffers.out, &mut request)
                    .await
                    && !close
            }
            Err(Broken::Cut) => {
                // A reset, not an orderly close: nothing about the answer's end is
                // left for the client to guess (see `ClientConn::reset_on_close`).
                conn.reset_on_close();
                false
            }
        }
    }
}

/// A request on its way to a backend, as [`send_head`] takes it.
struct Outgoing<'a> {
    /// Its head (and the body bytes that came with it) for the backend.
    out: &'a mut Vec<u8>,
    /// The client's bytes: the first `consumed` are this request's head and body.
    client: &'a mut Vec<u8>,
    consumed: usize,
    /// Where its raw `Host` is in `client`.
    host: std::ops::Range<usize>,
}

/// What [`send_head`] keeps of a request while it waits for a new connection.
struct SetAside {
    head: Vec<u8>,
    /// The normalised host, for another backend of its route after a failed connect.
    host: String,
}

/// Writes the request's head to a pooled connection to `upstream` (another one if it
/// turns out closed) or a new one; after a failed connect, to another backend of its
/// route once, if `retry_elsewhere`. The request's bytes are taken off the client's
/// buffer whatever happens.
///
/// Before it waits for a new connection, the head and the host are copied out and the
/// buffers go back to the thread (the client's unless more bytes of it wait there): a
/// burst of new clients on a cold pool means thousands of connects at once, and the
/// buffers they held were half the gateway's memory at 4,000 connections.
async fn send_head(
    proxy: &Proxy,
    upstream: Arc<Upstream>,
    outgoing: Outgoing<'_>,
    mut retry_elsewhere: bool,
) -> Result<(RawConn, Lease), Failure> {
    let Outgoing {
        out,
        client,
        consumed,
        host,
    } = outgoing;
    let mut lease = Lease::new(upstream);
    let mut set_aside: Option<SetAside> = None;
    let sent = 'send: loop {
        while let Some(mut conn) = lease.upstream().checkout() {
            let head = set_aside.as_ref().map_or(&out[..], |aside| &aside.head);
            // A first write that fails wrote nothing: the socket was closed under us,
            // and the request can go on another. Once any byte is written, it cannot.
            // An idle pooled socket nearly always has room: try without a future first.
            let first = match conn.stream.try_write(head) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    conn.stream.write(head).await
                }
                first => first,
            };
            match first {
                Ok(0) | Err(_) => continue,
                Ok(written) => {
                    break 'send match conn.stream.write_all(&head[written..]).await {
                        Ok(()) => Ok((conn, lease)),
                        Err(error) => {
                            tracing::debug!(%error, "backend request failed");
                            Err(Failure::Backend)
                        }
                    };
                }
            }
        }
        if set_aside.is_none() {
            let raw = std::str::from_utf8(&client[host.clone()]).ok();
            set_aside = Some(SetAside {
                head: out.clone(),
                host: raw
                    .and_then(model::normalize_host)
                    .map(String::from)
                    .unwrap_or_default(),
            });
            client.drain(..consumed);
            if client.is_empty() {
                spare::give_all(&mut [out, client]);
            } else {
                spare::give_all(&mut [out]);
            }
        }
        let aside = set_aside.as_ref().expect("set aside above");
        match proxy.upstreams.connect(lease.upstream()).await {
            Ok(mut conn) => {
                break match conn.stream.write_all(&aside.head).await {
                    Ok(()) => Ok((conn, lease)),
                    Err(error) => {
                        tracing::debug!(%error, "backend request failed");
                        Err(Failure::Backend)
                    }
                };
            }
            Err(error) => {
                match connect_failed(proxy, &aside.host, &mut lease, &mut retry_elsewhere, &error) {
                    None => continue,
                    Some(failure) => break Err(failure),
                }
            }
        }
    };
    if set_aside.is_none() {
        client.drain(..consumed);
    }
    sent
}

/// Sends the rest of a request body to the backend as it arrives.
async fn upload(
    from_client: &mut (impl AsyncRead + Unpin),
    to_backend: &mut WriteHalf<'_>,
    buf: &mut Vec<u8>,
    body: &mut BodyEnd,
    progress: &Progress,
) -> io::Result<()> {
    while !body.is_done() {
        buf.reserve(READ_SIZE);
        if from_client.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let taken = body.advance(buf).map_err(io::Error::other)?;
        to_backend.write_all(&buf[..taken]).await?;
        // What follows the body is the client's next request.
        buf.drain(..taken);
        progress.touch();
    }
    Ok(())
}

/// What [`respond`] needs.
struct Respond<'a, 'b, W> {
    proxy: &'a Proxy,
    /// The backend's address, for the log.
    backend: &'a str,
    activity: &'a Activity,
    is_head: bool,
    close: bool,
    /// When a backend was chosen.
    started: Instant,
    /// When the request body last moved: the first-byte timeout counts from then.
    progress: &'a Progress,
    first_byte: Pin<&'a mut Sleep>,
    /// Holds the client connection (not idle) until the response head.
    waiting: Option<super::idle::Hold<'a>>,
    request: &'a mut RequestGuard,
    from_backend: &'a mut ReadHalf<'b>,
    to_client: &'a mut W,
    buf: &'a mut Vec<u8>,
    out: &'a mut Vec<u8>,
    idle: &'a mut IdleTimer,
}

/// How a response ended.
struct Ended {
    backend_reusable: bool,
    client_close: bool,
}

/// Reads the backend's answer and streams it to the client: interim (1xx) heads, the
/// final head, the body.
async fn respond<W: WriteNow>(mut r: Respond<'_, '_, W>) -> Result<Ended, Broken> {
    // Counted from the request's head going out (`progress` began then), as on the
    // hyper path. The timer is not reset per request: its deadline, set from an
    // earlier request or the connection's start, is never later than this one's, and
    // when it goes off early it is set again for what is left.
    let timeout = r.proxy.config.first_byte_timeout;
    r.buf.clear();
    let backend = r.from_backend.as_ref();
    // Whether any byte of an answer came: a close before one is `Unanswered`.
    let mut answering = false;
    let head = loop {
        r.out.clear();
        match head::response(r.buf, r.is_head, r.close, r.out) {
            Ok(Some(head)) if head.status >= 200 => break head,
            Ok(Some(interim)) => {
                answering = true;
                write(r.to_client, r.out, r.activity, r.idle).await?;
                r.buf.drain(..interim.len);
                continue;
            }
            Ok(None) => {}
            Err(error) => {
                super::warn_bad_answer(r.backend, format_args!("{}; its client got a 502", error));
                return Err(Broken::Answer(Failure::BadResponse));
            }
        }
        tokio::select! {
            biased;
            // The buffers are lent once the answer is there to read, not while the
            // backend works on the request.
            ready = std::future::poll_fn(|cx| backend.poll_read_ready(cx)) => {
                if ready.is_err() {
                    return Err(Broken::Answer(Failure::Backend));
                }
                spare::take_into(&mut [&mut *r.buf, &mut *r.out]);
                r.buf.reserve(READ_SIZE);
                let unanswered = || {
                    if answering {
                        Broken::Answer(Failure::Backend)
                    } else {
                        Broken::Unanswered
                    }
                };
                match read_now(backend, r.buf) {
                    Ok(0) => return Err(unanswered()),
                    Ok(_) => answering = true,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return Err(unanswered()),
                }
            }
            () = r.first_byte.as_mut() => {
                let Some(left) = r.progress.left_of(timeout) else {
                    return Err(Broken::Answer(Failure::Timeout));
                };
                r.first_byte.as_mut().reset(Instant::now() + left);
            }
        }
    };
    drop(r.waiting.take());
    let mut body = BodyEnd::new(head.framing);
    let rest = &r.buf[head.len..];
    // Broken framing in what came with the head: nothing has reached the client yet.
    let taken = body.advance(rest).map_err(|error| {
        super::warn_bad_answer(r.backend, format_args!("a {error}; its client got a 502"));
        Broken::Answer(Failure::BadResponse)
    })?;
    let mut stray = taken < rest.len();
    r.proxy.metrics.upstream_duration(r.started.elapsed());
    if let Ok(status) = StatusCode::from_u16(head.status) {
        r.proxy.metrics.count(status);
        r.request.answered(status);
    }
    r.out.extend_from_slice(&rest[..taken]);
    write(r.to_client, r.out, r.activity, r.idle).await?;
    r.request.sent_bytes(body.data());
    while !body.is_done() {
        r.buf.clear();
        r.buf.reserve(READ_SIZE);
        tokio::select! {
            biased;
            read = r.from_backend.read_buf(r.buf) => match read {
                Ok(0) if body.until_close() => break,
                Ok(0) | Err(_) => return Err(Broken::Cut),
                Ok(_) => {}
            },
            // A backend stalled mid-body leaves the client connection idle.
            () = r.idle.expired(r.activity) => return Err(Broken::Cut),
        }
        let data = body.data();
        let taken = body.advance(r.buf).map_err(|error| {
            super::warn_bad_answer(
                r.backend,
                format_args!("a {error}; its client's answer was cut off"),
            );
            Broken::Cut
        })?;
        stray |= taken < r.buf.len();
        write(r.to_client, &r.buf[..taken], r.activity, r.idle).await?;
        r.request.sent_bytes(body.data() - data);
    }
    if stray && head.keep_alive {
        super::warn_stray_bytes(r.backend);
    }
    Ok(Ended {
        backend_reusable: head.keep_alive && !stray && body.is_done(),
        client_close: r.close || head.framing == Framing::UntilClose,
    })
}

/// Writes `bytes` to the client; one that stops reading is let go after the idle
/// timeout, as the hyper path does.
async fn write(
    to: &mut impl WriteNow,
    bytes: &[u8],
    activity: &Activity,
    idle: &mut IdleTimer,
) -> Result<(), Broken> {
    // Usually the socket takes it all at once: no future, no timer.
    let rest = match to.write_now(bytes) {
        Ok(written) => &bytes[written..],
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => bytes,
        Err(_) => return Err(Broken::Cut),
    };
    if !rest.is_empty() {
        tokio::select! {
            biased;
            written = write_out(to, rest) => written.map_err(|_| Broken::Cut)?,
            () = idle.expired(activity) => return Err(Broken::Cut),
        }
    }
    activity.touch();
    Ok(())
}

/// Writes `bytes` and flushes them: a TLS session may keep what the socket did not
/// take at once until it is flushed (a plain socket's flush does nothing).
async fn write_out(to: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> io::Result<()> {
    to.write_all(bytes).await?;
    to.flush().await
}

/// The proxy's own answer to a request.
struct Answer {
    failure: Failure,
    is_head: bool,
    close: bool,
}

impl Answer {
    fn new(failure: Failure, req: &RequestHead, close: bool) -> Answer {
        Answer {
            failure,
            is_head: req.is_head,
            close,
        }
    }

    /// Whether it was sent.
    async fn send(
        self,
        proxy: &Proxy,
        client: &mut (impl AsyncWrite + Unpin),
        out: &mut Vec<u8>,
        request: &mut RequestGuard,
    ) -> bool {
        tracing::debug!(failure = ?self.failure, "request not forwarded");
        proxy.metrics.failed(&self.failure);
        let (status, body) = self.failure.into_parts();
        proxy.metrics.count(status);
        request.answered(status);
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        if self.close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !self.is_head {
            out.extend_from_slice(&body);
            request.sent_bytes(body.len() as u64);
        }
        write_out(client, out).await.is_ok()
    }
}

/// A client connection handed to hyper: the bytes already read come first.
pub(super) struct Rewind<S> {
    read: Vec<u8>,
    at: usize,
    stream: S,
}

impl<S> Rewind<S> {
    pub(super) fn new(read: Vec<u8>, stream: S) -> Rewind<S> {
        Rewind {
            read,
            at: 0,
            stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
