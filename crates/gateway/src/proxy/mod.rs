//! The proxy's request path: accept, route by Host, forward to a backend, stream back.
//!
//! **Invariant:** no body is ever buffered whole, in either direction, and no lock is
//! held across an `.await`.
//!
//! Where things are: `conn` serves a client connection (idle and drain handling),
//! `h1` the proxy's own HTTP/1.1 path, which serves a connection's requests while it
//! can and hands the connection to hyper (HTTP/2, upgrades, HTTP/1.0, anything
//! unusual) when it cannot; `forward` one request on the hyper path (routing, rewriting, retries), `upstream`
//! the backends (connection pools, in-flight counts, ejection, the balancer), `body`
//! the streaming bodies, `headers` the header rewriting, `tunnel` upgraded connections,
//! `idle` idle timeouts, `answer` the proxy's own status pages, `balance` how proxy
//! threads share connections and `metrics` the metric names.

mod access_log;
mod answer;
mod balance;
mod body;
mod conn;
mod forward;
mod gate;
mod h1;
mod headers;
mod idle;
pub mod metrics;
mod tunnel;
mod upstream;

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

pub use self::access_log::AccessLog;
use self::balance::{Balance, Share};
use self::conn::Phase;
use self::metrics::Metrics;
use self::upstream::Upstreams;
use crate::RouteTable;

/// The longest message head the proxy takes, in bytes: the request or status line and
/// the headers (for HTTP/2, the header list as its settings count it). A longer request
/// is refused (431), a longer answer is a backend error (502). nginx's default takes
/// 32 KiB of request headers, HAProxy's about 16 KiB; hyper's own, 400 KiB, would let
/// every connection hold that much before a byte of it is routed. (A connection already
/// handed to hyper, such as HTTP/1.0 with keep-alive, has its later heads bounded by
/// hyper's buffer of this size, which a head that arrives in one read can overrun: the
/// proxy then measures the head it parsed, `headers::head_too_long`, and refuses it.)
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Timeouts and limits of the request path.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Connecting to a backend.
    pub connect_timeout: Duration,
    /// From sending a request to a backend to its response head. While a request body
    /// is still being sent, counted from its last frame instead.
    pub first_byte_timeout: Duration,
    /// A client or backend connection with nothing to do: a client connection that
    /// wrote nothing (and has no request waiting for its response head; a backend
    /// stalled mid-body shows as that), a tunnel that moved no byte, a backend
    /// connection unused in its pool. It is closed between one and two of these after
    /// it went quiet (a half-read request head: up to three). Zero: never, and pooled
    /// backend connections are kept until the backend closes them.
    pub idle_timeout: Duration,
    /// How long a stopping gateway lets requests in flight finish.
    pub drain_timeout: Duration,
    /// Client connections served at once (TLS ones and upgraded ones included); more
    /// wait in the listen queue, not accepted, until one closes, as with HAProxy's
    /// `maxconn`. At most [`Semaphore::MAX_PERMITS`], which the default is: no cap.
    pub max_connections: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(3),
            first_byte_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
            max_connections: Semaphore::MAX_PERMITS,
        }
    }
}

/// How the proxy treats backends: passive ejection and connection pooling.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Consecutive failed connects after which a backend is skipped (at least 1).
    pub eject_after_failures: u32,
    /// How long an ejected backend is skipped (unless all of a route's are). After it,
    /// one more failed connect ejects the backend again; a good one clears it.
    pub eject_cooldown: Duration,
    /// Idle connections kept per backend address (on the HTTP/1.1 path, per proxy
    /// thread, as nginx's `keepalive` is per worker); more are closed after use.
    ///
    /// `None` (the default): up to [`ProxyConfig::max_connections`], that is as many as
    /// the load left; the sweep closes those idle for the idle timeout, so the pool
    /// shrinks back once a peak is over. A fixed cap below the requests in flight closes
    /// connections the next requests need: at 4,000 client connections, a cap of 1,024
    /// per thread made the gateway connect again for one request in 20 to 45, each
    /// connect waiting in the backend's accept queue, and its p99 three times nginx's.
    pub max_idle_per_backend: Option<usize>,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            eject_after_failures: 3,
            eject_cooldown: Duration::from_secs(10),
            max_idle_per_backend: None,
        }
    }
}

/// Where the proxy takes connections from: a plain listener and, optionally, one whose
/// connections speak TLS (see [`crate::tls`]).
///
/// The caller binds them (with `SO_REUSEPORT` if a new process is to start beside this
/// one); a bare [`TcpListener`] converts into plain-only listeners.
pub struct Listeners {
    plain: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
}

impl Listeners {
    /// Connections on `listener` are TLS, set up by `acceptor`.
    pub fn with_tls(mut self, listener: TcpListener, acceptor: TlsAcceptor) -> Listeners {
        self.tls = Some((listener, acceptor));
        self
    }

    /// One copy per proxy thread.
    fn into_std(self) -> io::Result<StdListeners> {
        Ok(StdListeners {
            plain: self.plain.into_std()?,
            tls: match self.tls {
                Some((listener, acceptor)) => Some((listener.into_std()?, acceptor)),
                None => None,
            },
        })
    }
}

impl From<TcpListener> for Listeners {
    fn from(plain: TcpListener) -> Listeners {
        Listeners { plain, tls: None }
    }
}

/// [`Listeners`] between threads.
struct StdListeners {
    plain: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, TlsAcceptor)>,
}

impl StdListeners {
    fn try_clone(&self) -> io::Result<StdListeners> {
        Ok(StdListeners {
            plain: self.plain.try_clone()?,
            tls: match &self.tls {
                Some((listener, acceptor)) => Some((listener.try_clone()?, acceptor.clone())),
                None => None,
            },
        })
    }

    /// Registers the sockets with the current runtime.
    fn into_tokio(self) -> io::Result<Listeners> {
        Ok(Listeners {
            plain: TcpListener::from_std(self.plain)?,
            tls: match self.tls {
                Some((listener, acceptor)) => Some((TcpListener::from_std(listener)?, acceptor)),
                None => None,
            },
        })
    }
}

/// The next connection on either listener, and whether it is the TLS one. When both
/// have connections waiting they take turns (`tls_first` flips), so a flood on one
/// port cannot keep the other's connections waiting.
async fn accept_next(
    plain: &TcpListener,
    tls: &Option<(TcpListener, TlsAcceptor)>,
    tls_first: &mut bool,
) -> (io::Result<(TcpStream, std::net::SocketAddr)>, bool) {
    std::future::poll_fn(|cx| {
        for secure in [*tls_first, !*tls_first] {
            let listener = match (secure, tls) {
                (false, _) => plain,
                (true, Some((listener, _))) => listener,
                (true, None) => continue,
            };
            if let std::task::Poll::Ready(accepted) = listener.poll_accept(cx) {
                *tls_first = !secure;
                return std::task::Poll::Ready((accepted, secure));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The reverse proxy.
///
/// Metric handles are registered in [`Proxy::new`]: install the metrics recorder
/// before creating the proxy (see [`metrics`] for the names).
pub struct Proxy {
    table: Arc<ArcSwap<RouteTable>>,
    config: ProxyConfig,
    upstreams: Upstreams,
    metrics: Metrics,
    connections_open: AtomicUsize,
    /// A permit per client connection that may be open ([`ProxyConfig::max_connections`]).
    slots: Arc<Semaphore>,
    /// Set while serving on threads of its own.
    balance: ArcSwapOption<Balance>,
    access_log: Option<Arc<AccessLog>>,
}

/// A snapshot of the proxy's state, for the admin side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections open, upgraded ones included.
    pub connections_open: usize,
    /// Backend addresses the proxy keeps state for (pools, ejection).
    pub backends: usize,
    /// Client connections open per proxy thread, in thread order, when it serves on
    /// threads of its own ([`Proxy::serve_on_threads`]); empty otherwise.
    pub connections_per_thread: Vec<usize>,
}

/// The state of one backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStats {
    /// `host:port`.
    pub addr: String,
    /// Requests (and tunnels) in flight to it.
    pub in_flight: usize,
    /// Open connections waiting in its pool.
    pub idle_connections: usize,
    /// Connects attempted.
    pub connects_total: u64,
    /// Connects failed.
    pub connect_failures_total: u64,
    /// Whether it is skipped now after consecutive connect failures.
    pub ejected: bool,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy that routes with whatever table `table` holds at each request.
    pub fn new(table: Arc<ArcSwap<RouteTable>>, config: ProxyConfig) -> Proxy {
        Proxy::with_backend_config(table, config, BackendConfig::default())
    }

    /// [`Proxy::new`], with backends treated as `backends` says.
    pub fn with_backend_config(
        table: Arc<ArcSwap<RouteTable>>,
        config: ProxyConfig,
        backends: BackendConfig,
    ) -> Proxy {
        let max_connections = config.max_connections.clamp(1, Semaphore::MAX_PERMITS);
        let metrics = Metrics::new();
        metrics.connections_max.set(max_connections as f64);
        Proxy {
            upstreams: Upstreams::new(&config, &backends),
            metrics,
            table,
            config,
            connections_open: AtomicUsize::new(0),
            slots: Arc::new(Semaphore::new(max_connections)),
            balance: ArcSwapOption::empty(),
            access_log: None,
        }
    }

    /// Logs every request to `log` (see [`AccessLog`]).
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Proxy {
        self.access_log = Some(log);
        self
    }

    /// A slot for one more client connection: at once while there is one, else when a
    /// connection closes (meanwhile new ones wait in the listen queue).
    async fn slot(&self) -> Slot {
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return slot;
        }
        static FULL: Warning = Warning::new();
        if FULL.due() {
            tracing::warn!(
                max_connections = self.config.max_connections,
                "the connection limit is reached: new connections wait in the listen \
                 queue until others close (logged at most every {WARNING_EVERY_SECS} s)"
            );
        }
        Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// Counts of connections and backends.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections_open: self.connections_open.load(Relaxed),
            backends: self.upstreams.len(),
            connections_per_thread: self
                .balance
                .load()
                .as_ref()
                .map_or_else(Vec::new, |balance| balance.open()),
        }
    }

    /// Appends what the proxy records outside the `metrics` recorder, in the Prometheus
    /// text format: the upstream latency histogram (see `metrics::Latency`).
    pub fn render_metrics(&self, out: &mut String) {
        self.metrics.upstream_duration.render(out);
    }

    /// The state of the backend at `addr` (`host:port`, as in the route table), if the
    /// proxy has sent to it lately.
    pub fn backend(&self, addr: &str) -> Option<BackendStats> {
        self.upstreams.find(addr).map(|upstream| upstream.stats())
    }

    /// Serves connections from `listener` until `shutdown` resolves, then stops
    /// accepting and lets requests in flight finish (at most `drain_timeout`).
    ///
    /// The listener is used as given (the caller binds it, with `SO_REUSEPORT` if a
    /// new process is to start beside this one) and closed when `shutdown` resolves,
    /// so new connections are refused from then on. Keep-alive connections are closed
    /// after their current request; HTTP/2 ones get a GOAWAY. When the drain runs
    /// out, whatever is left (slow responses, upgraded connections) is cut. Errors
    /// accepting a connection (a full file table, say) are logged and waited out, not
    /// returned.
    pub async fn serve(
        self: Arc<Self>,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        self.serve_with(listeners.into(), shutdown, None).await
    }

    /// [`Proxy::serve`]; with a `share`, as one of the threads of
    /// [`Proxy::serve_on_threads`], which also serves the connections others hand it.
    async fn serve_with(
        self: Arc<Self>,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
        mut share: Option<Share>,
    ) -> io::Result<()> {
        let (drain_tx, drain_rx) = watch::channel(Phase::Serving);
        let mut server = auto::Builder::new(TokioExecutor::new());
        server.http1().max_buf_size(MAX_HEAD);
        server.http2().max_header_list_size(MAX_HEAD as u32);
        let server = Arc::new(server);
        let sweeper = tokio::spawn(sweep(Arc::downgrade(&self), self.config.idle_timeout));
        let Listeners {
            plain: listener,
            tls,
        } = listeners;
        let acceptor = tls.as_ref().map(|(_, acceptor)| acceptor.clone());
        let mut tls_first = false;
        let spawn =
            |stream: TcpStream, peer, secure: bool, slot: Slot, counted: Option<Counted>| {
                let tls = if secure { acceptor.clone() } else { None };
                let conn = conn::serve(
                    Arc::clone(&self),
                    Arc::clone(&server),
                    stream,
                    peer,
                    tls,
                    drain_rx.clone(),
                );
                tokio::spawn(async move {
                    conn.await;
                    drop((counted, slot));
                });
            };

        let mut shutdown = std::pin::pin!(shutdown);
        // Taken before accepting; goes with the connection accepted.
        let mut room: Option<Slot> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut() => break,
                Some((stream, peer, secure, slot)) = handed(&mut share) => {
                    let share = share.as_ref().expect("only a share receives connections");
                    let counted = Counted(Arc::clone(&share.balance), share.index);
                    match TcpStream::from_std(stream) {
                        Ok(stream) => spawn(stream, peer, secure, slot, Some(counted)),
                        Err(error) => {
                            tracing::warn!(%error, "taking a connection from another thread failed");
                        }
                    }
                }
                slot = self.slot(), if room.is_none() => room = Some(slot),
                (accepted, secure) = accept_next(&listener, &tls, &mut tls_first), if room.is_some() => {
                    match accepted {
                        Ok((stream, peer)) => {
                            let slot = room.take().expect("accepting holds a slot");
                            match &share {
                                None => spawn(stream, peer, secure, slot, None),
                                Some(share) => place(share, stream, peer, secure, slot, spawn),
                            }
                        }
                        Err(error) => accept_failed(&self.metrics, error).await,
                    }
                }
            }
        }

        drop((listener, tls));
        if let Some(share) = &mut share {
            // Connections handed over but not taken yet are served (and drained) too.
            share.inbox.close();
            while let Ok((stream, peer, secure, slot)) = share.inbox.try_recv() {
                let counted = Counted(Arc::clone(&share.balance), share.index);
                if let Ok(stream) = TcpStream::from_std(stream) {
                    spawn(stream, peer, secure, slot, Some(counted));
                }
            }
        }
        drop(drain_rx);
        let _ = drain_tx.send(Phase::Draining);
        let drained = tokio::time::timeout(self.config.drain_timeout, drain_tx.closed()).await;
        if drained.is_err() {
            tracing::warn!(
                connections = self.connections_open.load(Relaxed),
                "drain timed out; closing the connections left"
            );
            let _ = drain_tx.send(Phase::Abort);
            // Aborted connections go at once; this only bounds a straggler.
            let _ = tokio::time::timeout(Duration::from_secs(1), drain_tx.closed()).await;
        }
        sweeper.abort();
        self.upstreams.close_idle();
        Ok(())
    }
}

impl Proxy {
    /// [`Proxy::serve`] on `threads` threads of its own, each with a single-threaded
    /// runtime accepting from the same listener (as nginx runs one worker process per
    /// core): a connection, its requests and its pooled backend sockets stay on one
    /// thread, with no work stealing and no wake-up across threads. A busy thread is
    /// slower to accept, so new connections go mostly to the others. Returns when
    /// `shutdown` resolved and every thread drained, or when a thread stopped on its
    /// own (with its error).
    pub async fn serve_on_threads(
        self: Arc<Self>,
        listeners: impl Into<Listeners>,
        threads: usize,
        shutdown: impl Future<Output = ()> + Send,
    ) -> io::Result<()> {
        let listener = listeners.into().into_std()?;
        let (stop, stopped) = watch::channel(false);
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<io::Result<()>>();
        let (balance, shares) = Balance::new(threads.max(1));
        self.balance.store(Some(balance));
        for (share, index) in shares.into_iter().zip(1..) {
            let listener = listener.try_clone()?;
            let proxy = Arc::clone(&self);
            let mut stopped = stopped.clone();
            let done_tx = done_tx.clone();
            let work = move || {
                upstream::set_thread(index);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = listener.into_tokio()?;
                    let shutdown = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    proxy.serve_with(listener, shutdown, Some(share)).await
                })
            };
            std::thread::Builder::new()
                .name(format!("gateway-proxy-{index}"))
                .spawn(move || {
                    let _ = done_tx.send(work());
                })?;
        }
        drop((listener, done_tx));

        let mut shutdown = std::pin::pin!(shutdown);
        let early = tokio::select! {
            () = shutdown.as_mut() => None,
            ended = done.recv() => Some(ended.unwrap_or(Ok(()))),
        };
        let _ = stop.send(true);
        let mut result = match early {
            Some(Ok(())) => Err(io::Error::other("a proxy thread returned before shutdown")),
            Some(Err(error)) => Err(error),
            None => Ok(()),
        };
        while let Some(ended) = done.recv().await {
            if let (Ok(()), Err(error)) = (&result, ended) {
                result = Err(error);
            }
        }
        result
    }
}

/// Room for one client connection, held while it is open (see [`Proxy::slot`]).
type Slot = OwnedSemaphorePermit;

/// One open connection of a proxy thread, counted in its [`Balance`] while it lives.
struct Counted(Arc<Balance>, usize);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.closed(self.1);
    }
}

/// The next connection another thread handed to this one; never, without a share.
async fn handed(share: &mut Option<Share>) -> Option<balance::Handed> {
    match share {
        Some(share) => share.inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves a connection this thread accepted here, or hands it to a less busy thread.
fn place(
    share: &Share,
    stream: TcpStream,
    peer: std::net::SocketAddr,
    secure: bool,
    slot: Slot,
    spawn: impl Fn(TcpStream, std::net::SocketAddr, bool, Slot, Option<Counted>),
) {
    let balance = &share.balance;
    let here = share.index;
    let target = balance.assign(here);
    if target == here {
        return spawn(
            stream,
            peer,
            secure,
            slot,
            Some(Counted(Arc::clone(balance), here)),
        );
    }
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            balance.closed(target);
            tracing::warn!(%error, "handing a connection to another thread failed");
            return;
        }
    };
    // Sent, or given back because that thread has stopped: then it is served here.
    if let Err((stream, peer, secure, slot)) = balance.hand(target, (stream, peer, secure, slot)) {
        balance.moved(target, here);
        let counted = Counted(Arc::clone(balance), here);
        match TcpStream::from_std(stream) {
            Ok(stream) => spawn(stream, peer, secure, slot, Some(counted)),
            Err(error) => tracing::warn!(%error, "taking back a connection failed"),
        }
    }
}

async fn accept_failed(counted: &Metrics, error: io::Error) {
    match error.kind() {
        // The client gave up before we got to it: nothing to wait out.
        io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::Interrupted => {}
        // Out of file descriptors or memory: accepting again at once would spin.
        _ => {
            counted.accept_errors.increment(1);
            if accept_warning_due() {
                tracing::warn!(
                    %error,
                    "accepting connections fails; new ones wait until it works again \
                     (logged at most every {WARNING_EVERY_SECS} s; \
                     {} counts every failure)",
                    metrics::ACCEPT_ERRORS_TOTAL
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How often, at most, a warning for a failure that repeats while it lasts is logged.
pub(super) const WARNING_EVERY_SECS: u64 = 5;

/// Logs that the backend at `backend` sent `what` (an answer the proxy could not pass
/// on, and what its client got instead), at most once per [`WARNING_EVERY_SECS`] for
/// the whole process. The counters say how often; this line says which backend, and
/// what was wrong with its answer.
pub(super) fn warn_bad_answer(backend: &str, what: std::fmt::Arguments<'_>) {
    static WARNING: Warning = Warning::new();
    if WARNING.due() {
        tracing::warn!(
            backend,
            "backend {backend} sent {what} (logged at most every {WARNING_EVERY_SECS} s; \
             switchyard_gateway_errors_total{{reason=\"bad_response\"}} counts the 502s)"
        );
    }
}

/// Logs that the backend at `backend` sent bytes after the end of an answer, at most
/// once per [`WARNING_EVERY_SECS`] for the whole process. The answer went on, and the
/// connection is closed: read as the start of the next answer, on a reused connection,
/// those bytes would have gone to another client.
pub(super) fn warn_stray_bytes(backend: &str) {
    static WARNING: Warning = Warning::new();
    if WARNING.due() {
        tracing::warn!(
            backend,
            "backend {backend} sent bytes after the end of an answer; the connection is \
             not used again (logged at most every {WARNING_EVERY_SECS} s)"
        );
    }
}

/// Whether to log an accept failure now: see [`Warning`].
fn accept_warning_due() -> bool {
    static ACCEPT: Warning = Warning::new();
    ACCEPT.due()
}

/// A warning logged once per [`WARNING_EVERY_SECS`] for the whole process at most: a
/// full file table fails every thread's accepts every 50 ms, and every new backend
/// connection, until connections close.
pub(super) struct Warning {
    /// Seconds since the process's first warning when the next may be logged.
    next: AtomicU64,
}

impl Warning {
    pub(super) const fn new() -> Warning {
        Warning {
            next: AtomicU64::new(0),
        }
    }

    pub(super) fn due(&self) -> bool {
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        let now = START
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_secs();
        let next = self.next.load(Relaxed);
        now >= next
            && self
                .next
                .compare_exchange(next, now + WARNING_EVERY_SECS, Relaxed, Relaxed)
                .is_ok()
    }
}

/// Every idle period, drops closed pooled connections and forgets unused backends.
async fn sweep(proxy: Weak<Proxy>, period: Duration) {
    if period.is_zero() {
        return;
    }
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        match proxy.upgrade() {
            Some(proxy) => proxy.upstreams.sweep(),
            None => return,
        }
    }
}
