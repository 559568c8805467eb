//! A client connection: HTTP/1.1 or HTTP/2 (prior knowledge), told apart by its first
//! bytes and served by hyper, closed when idle, shut down gracefully on a drain. A
//! connection from the TLS listener is served the same way once its handshake is done;
//! one that chose HTTP/2 by ALPN goes to hyper at once.
//!
//! **Invariant:** every client connection (and every tunnel made from one) holds a
//! receiver of the drain channel until it is gone, so `serve` knows when the last one
//! has finished.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::gate::Gated;
use super::idle::{Activity, IdleTimer, Watched};
use super::{forward, h1, Proxy};

/// Where the proxy is in its life, as told to each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Serving,
    /// Finish what is in flight, take nothing new.
    Draining,
    /// The drain ran out: close now.
    Abort,
}

/// What the requests of one client connection share.
pub(super) struct ClientConn {
    pub(super) proxy: Arc<Proxy>,
    /// The client's address, ready for `X-Forwarded-For`.
    pub(super) client_ip: HeaderValue,
    /// Whether the client connected over TLS (`X-Forwarded-Proto: https`).
    pub(super) tls: bool,
    /// Bytes written, requests begun and ended; a request waiting for its response
    /// head holds the connection.
    pub(super) activity: Arc<Activity>,
    pub(super) drain: watch::Receiver<Phase>,
    /// The connection's socket (under TLS too), for [`ClientConn::reset_on_close`].
    fd: RawFd,
}

impl ClientConn {
    /// Makes the connection's close a reset (RST) rather than an orderly end (FIN).
    /// An HTTP/1.0 client reads an answer of unknown length to the connection's end,
    /// so an orderly close after a backend's body broke would pass for a whole answer.
    /// Only while the connection is served, so that the socket is still open: the own
    /// path calls it mid-answer, and an answer's body from the connection hyper owns
    /// and polls it from.
    pub(super) fn reset_on_close(&self) {
        // SAFETY: `fd` is this connection's socket, open while it is served (above);
        // it is borrowed for one `setsockopt`.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = socket2::SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        self.proxy.connections_open.fetch_sub(1, Relaxed);
        self.proxy.metrics.connections.decrement(1.0);
    }
}

/// Resolves when the drain runs out (or `serve` is gone).
pub(super) async fn aborted(drain: &mut watch::Receiver<Phase>) {
    let _ = drain.wait_for(|phase| *phase == Phase::Abort).await;
}

/// Serves one accepted connection until it closes, idles out or is drained: on the
/// proxy's own HTTP/1.1 path (`h1`) while it can, then with hyper; with `tls`, after
/// the handshake.
pub(super) async fn serve(
    proxy: Arc<Proxy>,
    server: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    drain: watch::Receiver<Phase>,
) {
    // Small responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    proxy.connections_open.fetch_add(1, Relaxed);
    proxy.metrics.connections.increment(1.0);
    let idle_timeout = proxy.config.idle_timeout;
    let client_ip = HeaderValue::from_str(&peer.ip().to_canonical().to_string())
        .expect("an IP address is a valid header value");
    let conn = Arc::new(ClientConn {
        proxy,
        client_ip,
        tls: tls.is_some(),
        activity: Arc::new(Activity::default()),
        drain: drain.clone(),
        fd: stream.as_raw_fd(),
    });
    let idle = IdleTimer::new(idle_timeout);

    match tls {
        // Boxed, as is hyper's part below: a task's future is as big as its biggest
        // state, and the TLS session and hyper's connection would make every plain
        // connection's task several KiB bigger, idle or not.
        Some(acceptor) => {
            Box::pin(serve_tls(conn, server, acceptor, stream, peer, idle, drain)).await
        }
        None => serve_h1_then_hyper(&conn, &server, stream, peer, idle, drain).await,
    }
}

/// [`serve`] for a connection from the TLS listener: the handshake, then HTTP/2 if
/// ALPN chose it, else HTTP/1.1 as on a plain connection.
async fn serve_tls(
    conn: Arc<ClientConn>,
    server: Arc<auto::Builder<TokioExecutor>>,
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    idle: IdleTimer,
    mut drain: watch::Receiver<Phase>,
) {
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                conn.proxy.metrics.tls_handshake_failures.increment(1);
                tracing::debug!(%error, %peer, "TLS handshake failed");
                return;
            }
            Err(_) => {
                conn.proxy.metrics.tls_handshake_failures.increment(1);
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = aborted(&mut drain) => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        let io = Watched::writes_only(stream, Arc::clone(&conn.activity));
        return serve_hyper(&conn, &server, io, peer, idle, drain).await;
    }
    serve_h1_then_hyper(&conn, &server, stream, peer, idle, drain).await;
}

/// Serves `stream` on the `h1` path, then, if it hands the connection over, with hyper.
async fn serve_h1_then_hyper<S>(
    conn: &Arc<ClientConn>,
    server: &auto::Builder<TokioExecutor>,
    mut stream: S,
    peer: SocketAddr,
    mut idle: IdleTimer,
    mut drain: watch::Receiver<Phase>,
) where
    S: h1::ClientStream + 'static,
{
    let outcome = {
        let mut phase = drain.clone();
        tokio::select! {
            biased;
            outcome = h1::serve(conn, &mut stream, &mut idle, &mut phase) => outcome,
            () = Gated::new(aborted(&mut drain)) => return,
        }
    };
    let h1::Outcome::HandOver(read) = outcome else {
        stream.close().await;
        return;
    };
    let activity = Arc::clone(&conn.activity);
    let io = Watched::writes_only(h1::Rewind::new(read, stream), activity);
    Box::pin(serve_hyper(conn, server, io, peer, idle, drain)).await;
}

/// Bounds a TLS handshake (a client that connects and sends nothing holds a socket).
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The drain's next phase (`None`: `serve` is gone), with the receiver to wait on for
/// the one after.
async fn next_phase(mut drain: watch::Receiver<Phase>) -> (watch::Receiver<Phase>, Option<Phase>) {
    let phase = match drain.changed().await {
        Ok(()) => Some(*drain.borrow_and_update()),
        Err(_) => None,
    };
    (drain, phase)
}

/// Serves `io` with hyper until it closes, idles out or is drained.
async fn serve_hyper<IO>(
    conn: &Arc<ClientConn>,
    server: &auto::Builder<TokioExecutor>,
    io: IO,
    peer: SocketAddr,
    mut idle: IdleTimer,
    drain: watch::Receiver<Phase>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let service = {
        let conn = Arc::clone(conn);
        service_fn(move |req| {
            let conn = Arc::clone(&conn);
            // Boxed: over HTTP/2, hyper moves each request's future into a stream and
            // that into a task of its own, and the future is a few KiB; a box moves as
            // a pointer.
            Box::pin(async move { Ok::<_, Infallible>(forward::handle(conn, req).await) })
        })
    };
    let mut http = pin!(server.serve_connection_with_upgrades(io, service));
    let mut closing = false;
    // Polled only when the drain moved, not on every wake of this task (every frame).
    let mut phase = Gated::new(next_phase(drain));
    loop {
        tokio::select! {
            biased;
            result = http.as_mut() => {
                if let Err(error) = result {
                    if let Some(error) = error.downcast_ref::<hyper::Error>() {
                        forward::refused_by_hyper(conn, error);
                    }
                    tracing::debug!(%error, %peer, "client connection ended with an error");
                }
                break;
            }
            () = idle.expired(&conn.activity) => {
                // Idle twice over (a graceful close that did not finish, say a
                // request head that never completed): just drop it.
                if closing {
                    break;
                }
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            (drain, next) = &mut phase => {
                match next {
                    Some(Phase::Serving) => {}
                    Some(Phase::Draining) => {
                        if !closing {
                            http.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                    Some(Phase::Abort) | None => break,
                }
                phase = Gated::new(next_phase(drain));
            }
        }
    }
}
