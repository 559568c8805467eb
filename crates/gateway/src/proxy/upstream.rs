//! Backends as the request path sees them: one [`Upstream`] per address, with its pool
//! of idle HTTP/1.1 connections (plain sockets, one list per proxy thread), its
//! requests in flight and its ejection state; and the balancer that picks one of a
//! route's backends for a request.
//!
//! Balancing is the power of two choices, weighted: draw two backends at random with
//! probability proportional to their weights, keep the one with fewer requests in
//! flight per unit of weight (ties to the first draw). Idle, that is exactly weighted
//! random; under load it steers away from slow or stuck backends. It needs no state
//! per route (a table holds a million of them, immutable), only the in-flight count
//! per backend address, which every route to that address shares.
//!
//! **Invariant:** no lock here is held across an `.await`; the pools and the registry
//! are plain mutexes and read-write locks held for a push, a pop or a lookup.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::net::TcpStream;

use super::body::now_ms;
use super::{BackendConfig, BackendStats, ProxyConfig};
use crate::table::Backends;

/// Registry shards: lookups of different backends rarely meet on one lock.
const SHARDS: usize = 16;

type Shard = HashMap<Box<str>, Arc<Upstream>, BuildHasherDefault<FxHasher>>;

/// Every backend address the proxy has sent to lately.
pub(super) struct Upstreams {
    shards: Box<[RwLock<Shard>]>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    eject_after_failures: u32,
    eject_cooldown: Duration,
    max_idle: usize,
    /// `switchyard_gateway_backend_ejections_total`.
    ejections: metrics::Counter,
    /// `switchyard_gateway_backend_resends_total`.
    resends: metrics::Counter,
    /// `switchyard_gateway_backend_idle_shed_total`.
    shed: metrics::Counter,
}

/// One backend address.
pub(super) struct Upstream {
    addr: Box<str>,
    in_flight: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// [`now_ms`] until which the backend is skipped; 0 when it never was.
    ejected_until_ms: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// Idle connections, most recently used last (reused first, so the surplus ages
    /// out): one list per proxy thread (by [`this_thread`]), as a socket is lent on
    /// its own thread only.
    /// A checkout and a checkin are a pop and a push; one shared list took a scan past
    /// the other threads' sockets, and its cap, reached by one thread, made the others
    /// close theirs after every request.
    idle: Mutex<Vec<Vec<RawConn>>>,
    max_idle: usize,
}

/// A plain connection to a backend, which every request goes on (`h1`, `h1::bridge`).
/// Nothing reads it while it is pooled: a close (or stray bytes) shows as readiness,
/// checked without a system call when it is taken out.
///
/// It has no idle timer of its own: in the pool, the sweep closes it once it has been
/// idle for the idle timeout; in use, a wait for a response head is bounded by the
/// first-byte timeout, and a stalled response body by the client connection's idle
/// timeout.
pub(super) struct RawConn {
    pub(super) stream: TcpStream,
    /// The proxy thread whose runtime drives the socket (see [`set_thread`]): it is
    /// lent to requests on that thread only.
    thread: usize,
    /// [`now_ms`] when it last went back to the pool (`None`: it never did).
    idle_since_ms: Option<u64>,
    /// It was found closed, or sent bytes nobody asked for.
    broken: Cell<bool>,
}

impl RawConn {
    fn new(stream: TcpStream) -> RawConn {
        RawConn {
            stream,
            thread: this_thread(),
            idle_since_ms: None,
            broken: Cell::new(false),
        }
    }

    /// The socket, for a tunnel after an upgrade: it never goes back to a pool.
    pub(super) fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Whether it came from the pool after idling for at least `ms` until `at_ms` (on
    /// the clock of [`now_ms`]): long enough that its backend's keep-alive timeout may
    /// have closed it just as it was taken.
    pub(super) fn idled_at_least(&self, ms: u64, at_ms: u64) -> bool {
        self.idle_since_ms
            .is_some_and(|since| at_ms.saturating_sub(since) >= ms)
    }

    /// Whether the backend closed it or wrote to it while it was idle. Reads only when
    /// the runtime saw it readable: a quiet connection costs no system call.
    fn is_closed(&self) -> bool {
        if self.broken.get() {
            return true;
        }
        match self.stream.try_read(&mut [0; 1]) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => false,
            _ => {
                self.broken.set(true);
                true
            }
        }
    }
}

thread_local! {
    static THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as proxy thread `index` (from 1), whose runtime drives the
/// sockets it opens.
pub(super) fn set_thread(index: usize) {
    THREAD.with(|thread| thread.set(index));
}

pub(super) fn this_thread() -> usize {
    THREAD.with(std::cell::Cell::get)
}

/// Counts a request in flight to an upstream for as long as it lives.
pub(super) struct Lease(Arc<Upstream>);

impl Lease {
    pub(super) fn new(upstream: Arc<Upstream>) -> Lease {
        upstream.in_flight.fetch_add(1, Relaxed);
        Lease(upstream)
    }

    pub(super) fn upstream(&self) -> &Arc<Upstream> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ConnectError {
    /// Whether the gateway itself, not the backend, lacks what a connection takes: a
    /// file descriptor (its limit or the system's), a local port, socket memory. Such a
    /// failure says nothing of the backend: it does not count towards its ejection, and
    /// another backend would fail the same way.
    pub(super) fn is_local(&self) -> bool {
        let ConnectError::Io(error) = self else {
            return false;
        };
        matches!(
            error.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
        )
    }
}

/// Whether `error` is the process's or the system's file table being full.
fn is_out_of_files(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl Upstreams {
    pub(super) fn new(config: &ProxyConfig, backends: &BackendConfig) -> Upstreams {
        Upstreams {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            eject_after_failures: backends.eject_after_failures.max(1),
            eject_cooldown: backends.eject_cooldown,
            max_idle: backends
                .max_idle_per_backend
                .unwrap_or(config.max_connections),
            ejections: metrics::counter!(super::metrics::BACKEND_EJECTIONS_TOTAL),
            resends: metrics::counter!(super::metrics::BACKEND_RESENDS_TOTAL),
            shed: metrics::counter!(super::metrics::BACKEND_IDLE_SHED_TOTAL),
        }
    }

    fn shard(&self, addr: &str) -> &RwLock<Shard> {
        let hash = BuildHasherDefault::<FxHasher>::default().hash_one(addr);
        // Middle bits: the map's buckets use the low ones and its tags the top seven.
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// The upstream for `addr`, created on first use.
    pub(super) fn get(&self, addr: &str) -> Arc<Upstream> {
        let shard = self.shard(addr);
        if let Some(upstream) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(addr)
        {
            return Arc::clone(upstream);
        }
        let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
        let upstream = shard
            .entry(addr.into())
            .or_insert_with(|| Arc::new(Upstream::new(addr, self.max_idle)));
        Arc::clone(upstream)
    }

    /// The upstream for `addr` if the proxy knows it.
    pub(super) fn find(&self, addr: &str) -> Option<Arc<Upstream>> {
        let shard = self
            .shard(addr)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        shard.get(addr).cloned()
    }

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Picks one of `backends` for a request (see the module doc), skipping ejected
    /// backends unless all are, and `avoid` (a backend that just failed) always.
    /// `None` when there is nothing to pick.
    pub(super) fn pick(
        &self,
        backends: Backends<'_>,
        avoid: Option<&Upstream>,
    ) -> Option<Arc<Upstream>> {
        if avoid.is_none() {
            match backends.len() {
                0 => return None,
                // All ejected means try anyway: with one backend, that is always.
                1 => return Some(self.get(backends.get(0).addr())),
                _ => {}
            }
            // The common case: two draws, two lookups, no allocation.
            let (i, j) = two_draws(backends.len(), |i| backends.get(i).weight());
            let (a, b) = (backends.get(i), backends.get(j));
            let first = self.get(a.addr());
            if i == j {
                if !first.is_ejected() {
                    return Some(first);
                }
            } else {
                let second = self.get(b.addr());
                match (first.is_ejected(), second.is_ejected()) {
                    (false, false) => {
                        let better = less_loaded((&first, a.weight()), (&second, b.weight()));
                        return Some(if better { first } else { second });
                    }
                    (false, true) => return Some(first),
                    (true, false) => return Some(second),
                    (true, true) => {}
                }
            }
        }
        // Some backend is ejected, or one is avoided: look at all of them.
        let candidates: Vec<(Arc<Upstream>, u16)> = backends
            .iter()
            .filter(|b| avoid.is_none_or(|avoid| *avoid.addr != *b.addr()))
            .map(|b| (self.get(b.addr()), b.weight()))
            .collect();
        let usable: Vec<(Arc<Upstream>, u16)> = candidates
            .iter()
            .filter(|(upstream, _)| !upstream.is_ejected())
            .cloned()
            .collect();
        let pool = if usable.is_empty() {
            candidates
        } else {
            usable
        };
        match pool.as_slice() {
            [] => None,
            [only] => Some(Arc::clone(&only.0)),
            _ => {
                let (i, j) = two_draws(pool.len(), |i| pool[i].1);
                let better = less_loaded((&pool[i].0, pool[i].1), (&pool[j].0, pool[j].1));
                Some(Arc::clone(&pool[if better { i } else { j }].0))
            }
        }
    }

    /// Counts a request sent again after a pooled connection closed unanswered.
    pub(super) fn resent(&self) {
        self.resends.increment(1);
    }

    /// Opens a new plain connection to `upstream`, counting a failure towards
    /// ejection.
    pub(super) async fn connect(&self, upstream: &Upstream) -> Result<RawConn, ConnectError> {
        // Boxed: a connect's state (resolving, the socket's, the timeout's) is large and
        // seldom needed, and every request's future would otherwise carry room for it.
        // Over HTTP/2 that future is moved into a task of its own per request.
        let result = Box::pin(self.connect_stream(upstream))
            .await
            .map(RawConn::new);
        self.count_connect(upstream, &result);
        result
    }

    fn count_connect<T>(&self, upstream: &Upstream, result: &Result<T, ConnectError>) {
        match result {
            Ok(_) => upstream.connected(),
            Err(error) if error.is_local() => {
                static WARNING: super::Warning = super::Warning::new();
                if WARNING.due() {
                    tracing::warn!(
                        %error,
                        "opening a backend connection fails for want of file descriptors, \
                         local ports or memory: such requests are answered 503 and no \
                         backend is blamed (logged at most every {} s; \
                         switchyard_gateway_errors_total{{reason=\"out_of_sockets\"}} \
                         counts every one)",
                        super::WARNING_EVERY_SECS
                    );
                }
            }
            Err(_) => {
                if upstream.connect_failed(self.eject_after_failures, self.eject_cooldown) {
                    self.ejections.increment(1);
                }
            }
        }
    }

    /// A new connection to `upstream`. Out of file descriptors, it closes every idle
    /// backend connection and tries once more: idle connections are a cache, which the
    /// load refills, and the file table they hold is better spent on the request that
    /// needs one now (with the pools kept as large as the load left, a peak on some
    /// backends could otherwise leave the others unreachable until the idle timeout).
    async fn connect_stream(&self, upstream: &Upstream) -> Result<TcpStream, ConnectError> {
        match self.try_connect(upstream).await {
            Err(ConnectError::Io(error)) if is_out_of_files(&error) => {
                let shed = self.close_idle();
                if shed == 0 {
                    return Err(ConnectError::Io(error));
                }
                self.shed.increment(shed as u64);
                static WARNING: super::Warning = super::Warning::new();
                if WARNING.due() {
                    tracing::warn!(
                        %error,
                        shed,
                        "out of file descriptors: closed every idle backend connection to \
                         open a new one (logged at most every {} s)",
                        super::WARNING_EVERY_SECS
                    );
                }
                self.try_connect(upstream).await
            }
            result => result,
        }
    }

    /// Closes every idle connection, of every upstream and proxy thread; how many.
    pub(super) fn close_idle(&self) -> usize {
        let mut shed = 0;
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for upstream in shard.values() {
                let idle = std::mem::take(&mut *upstream.idle());
                shed += idle.iter().map(Vec::len).sum::<usize>();
                drop(idle);
            }
        }
        shed
    }

    async fn try_connect(&self, upstream: &Upstream) -> Result<TcpStream, ConnectError> {
        upstream.connects.fetch_add(1, Relaxed);
        let connect = TcpStream::connect(&*upstream.addr);
        let stream = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout(self.connect_timeout))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Closes pooled connections that are closed or idle for the idle timeout, and
    /// forgets upstreams nobody uses.
    pub(super) fn sweep(&self) {
        let idle_since = now_ms().saturating_sub(self.idle_timeout.as_millis() as u64);
        for shard in self.shards.iter() {
            let unused: Vec<Box<str>> = {
                let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
                shard
                    .iter()
                    .filter(|(_, upstream)| {
                        upstream.prune(idle_since);
                        upstream.is_unused()
                    })
                    .map(|(addr, _)| addr.clone())
                    .collect()
            };
            if unused.is_empty() {
                continue;
            }
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            for addr in unused {
                if shard
                    .get(&addr)
                    .is_some_and(|upstream| upstream.is_unused())
                {
                    shard.remove(&addr);
                }
            }
        }
    }
}

impl Upstream {
    fn new(addr: &str, max_idle: usize) -> Upstream {
        Upstream {
            addr: addr.into(),
            in_flight: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            idle: Mutex::default(),
            max_idle,
        }
    }

    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Vec<RawConn>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle plain connection of this thread's that is not known to be closed, if
    /// there is one.
    pub(super) fn checkout(&self) -> Option<RawConn> {
        let mut idle = self.idle();
        let mine = idle.get_mut(this_thread())?;
        while let Some(conn) = mine.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// Puts a plain connection whose exchange is complete back in its thread's pool
    /// (which keeps at most `max_idle`).
    pub(super) fn checkin(&self, mut conn: RawConn) {
        conn.idle_since_ms = Some(now_ms());
        let mut idle = self.idle();
        if idle.len() <= conn.thread {
            idle.resize_with(conn.thread + 1, Vec::new);
        }
        let mine = &mut idle[conn.thread];
        if mine.len() < self.max_idle {
            mine.push(conn);
        }
    }

    /// Drops pooled connections that are closed, or idle since before `idle_since`.
    fn prune(&self, idle_since: u64) {
        for idle in self.idle().iter_mut() {
            idle.retain(|conn| !conn.is_closed() && conn.idle_since_ms >= Some(idle_since));
        }
    }

    /// Nothing in flight, nothing pooled, not ejected: forgetting it loses nothing but
    /// a count of failures too short to eject.
    fn is_unused(&self) -> bool {
        self.in_flight.load(Relaxed) == 0
            && !self.is_ejected()
            && self.idle().iter().all(Vec::is_empty)
    }

    fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Relaxed);
        until != 0 && until > now_ms()
    }

    fn connected(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
            self.ejected_until_ms.store(0, Relaxed);
        }
    }

    /// Counts a failed connect; whether it ejected the backend.
    fn connect_failed(&self, eject_after: u32, cooldown: Duration) -> bool {
        self.connect_failures.fetch_add(1, Relaxed);
        // Not reset on ejection: after the cool-down, one more failure ejects again.
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures < eject_after || self.is_ejected() {
            return false;
        }
        let until = now_ms() + cooldown.as_millis() as u64;
        self.ejected_until_ms.store(until, Relaxed);
        tracing::warn!(
            backend = %self.addr,
            failures,
            cooldown_secs = cooldown.as_secs_f64(),
            "backend ejected after consecutive connect failures"
        );
        true
    }

    pub(super) fn stats(&self) -> BackendStats {
        BackendStats {
            addr: self.addr.to_string(),
            in_flight: self.in_flight.load(Relaxed),
            idle_connections: self
                .idle()
                .iter()
                .flatten()
                .filter(|conn| !conn.is_closed())
                .count(),
            connects_total: self.connects.load(Relaxed),
            connect_failures_total: self.connect_failures.load(Relaxed),
            ejected: self.is_ejected(),
        }
    }
}

/// Whether `a` has no more requests in flight per unit of weight than `b`.
fn less_loaded(a: (&Upstream, u16), b: (&Upstream, u16)) -> bool {
    let a_load = a.0.in_flight.load(Relaxed) as u64 * u64::from(b.1);
    let b_load = b.0.in_flight.load(Relaxed) as u64 * u64::from(a.1);
    a_load <= b_load
}

/// Two independent draws from `len` items, each with probability proportional to its
/// weight.
fn two_draws(len: usize, weight: impl Fn(usize) -> u16) -> (usize, usize) {
    let total: u64 = (0..len).map(|i| u64::from(weight(i))).sum();
    let draw = || {
        let mut point = random() % total.max(1);
        for i in 0..len {
            let w = u64::from(weight(i));
            if point < w {
                return i;
            }
            point -= w;
        }
        len - 1
    };
    (draw(), draw())
}

/// A fast per-thread random number (wyrand), seeded from the OS's hash keys.
fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::hash::RandomState::new().hash_one(0u8));
    }
    STATE.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// FxHash (rustc's): backend addresses come from the control plane, not from
/// clients, so a fast hash that is not collision-resistant is fine.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
