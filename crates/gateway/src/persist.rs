//! The route table on disk (invariant 1): its encoding as a snapshot payload, and the
//! coalescing writer that keeps the latest applied table in the [`SnapshotStore`].
//!
//! # Payload (version 1)
//!
//! The store checksums and compresses whatever it is given; this is what the gateway
//! gives it. Little-endian integers; a string is a `u16` length and UTF-8 bytes.
//!
//! | field | content |
//! | --- | --- |
//! | magic | `SWYROUTE` ([`PAYLOAD_MAGIC`]) |
//! | payload version | `u32`, [`PAYLOAD_VERSION`] |
//! | table version | `u64` |
//! | route count | `u64` |
//! | chunk count | `u32` |
//! | chunks | each: `u32` routes, `u64` body length, then its routes |
//!
//! A route is: app id (string), `fail_open` (one byte, 0 or 1), `u32` domain count and
//! the domains (strings), `u32` backend count and the backends (address string, `u16`
//! weight). Every value goes back through `model`'s checks when it is read.
//!
//! Why not the route stream's NDJSON (`model::StreamLine`)? Measured on the shared 2-core
//! development machine, release build: parsing 100,000 route lines took 0.57 s (10 s or
//! so at a million), against 0.56-0.59 s to decode a *million* routes of this form on one
//! thread. Chunks let [`decode`] decode on other cores while the calling thread builds
//! the table, so a start from disk costs about the table build (`RouteTable::upsert`)
//! alone.
//!
//! # Writer
//!
//! A stream of deltas is not a write per delta: the writer writes at most once per
//! `snapshot_interval`, and then the latest table, whatever came between. A failed write
//! is logged, counted and retried after the interval. One gateway process owns a state
//! folder's files: a new gateway started beside the old one (SO_REUSEPORT) loads the
//! snapshot but writes only once the old one has exited (an `flock` on `gateway.lock`),
//! so the two never overwrite each other's files.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use model::{Backend, Route};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::snapshot::{self, Meta, SnapshotStore};
use crate::RouteTable;

/// The first bytes of a payload.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"SWYROUTE";
/// The payload encoding this code writes and reads.
pub const PAYLOAD_VERSION: u32 = 1;
/// Routes per chunk: the unit of parallel decoding.
const CHUNK_ROUTES: usize = 16_384;
/// Magic, payload version, table version, route count, chunk count.
const PAYLOAD_HEADER_LEN: usize = 8 + 4 + 8 + 8 + 4;

/// Why a snapshot payload cannot be turned back into a table. The store's checksums
/// passed, so the bytes are what some gateway wrote: this is a bug, or a payload from
/// another binary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload does not start with [`PAYLOAD_MAGIC`].
    #[error("not a route table payload (bad magic bytes)")]
    BadMagic,
    /// A payload encoding this binary does not know (a newer one).
    #[error("route table payload version {found}; this binary reads version {supported}")]
    UnknownVersion {
        /// The version found.
        found: u32,
        /// [`PAYLOAD_VERSION`].
        supported: u32,
    },
    /// The payload ends inside a field, or has bytes after its last chunk.
    #[error("malformed route table payload: {0}")]
    Malformed(String),
    /// A route does not pass `model`'s checks.
    #[error("route {index}: {reason}")]
    Route {
        /// Its position in the payload.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Encodes a table as a snapshot payload (see the module docs).
pub fn encode(table: &RouteTable) -> Vec<u8> {
    let routes: Vec<&Arc<Route>> = table.routes().collect();
    let chunks = routes.len().div_ceil(CHUNK_ROUTES);
    let mut out = Vec::with_capacity(PAYLOAD_HEADER_LEN + routes.len() * 96);
    out.extend_from_slice(&PAYLOAD_MAGIC);
    out.extend_from_slice(&PAYLOAD_VERSION.to_le_bytes());
    out.extend_from_slice(&table.version().to_le_bytes());
    out.extend_from_slice(&(routes.len() as u64).to_le_bytes());
    out.extend_from_slice(&(chunks as u32).to_le_bytes());
    for chunk in routes.chunks(CHUNK_ROUTES) {
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0; 8]);
        for route in chunk {
            put_str(&mut out, route.app.as_str());
            out.push(u8::from(route.fail_open));
            out.extend_from_slice(&(route.domains.len() as u32).to_le_bytes());
            for domain in &route.domains {
                put_str(&mut out, domain.as_str());
            }
            out.extend_from_slice(&(route.backends.len() as u32).to_le_bytes());
            for backend in &route.backends {
                put_str(&mut out, backend.addr());
                out.extend_from_slice(&backend.weight().to_le_bytes());
            }
        }
        let body_len = (out.len() - len_at - 8) as u64;
        out[len_at..len_at + 8].copy_from_slice(&body_len.to_le_bytes());
    }
    out
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Every string in a route is far shorter than 64 KiB (ids 63, domains 253 bytes).
    let len = u16::try_from(s.len()).expect("route strings are short");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over payload bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Malformed(format!(
                "ends inside a field ({n} bytes wanted, {} left)",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError::Malformed("a string is not UTF-8".into()))
    }
}

/// One chunk's routes, not yet decoded.
struct Chunk<'a> {
    first_index: u64,
    routes: u32,
    body: &'a [u8],
}

/// Decodes a snapshot payload into a table.
///
/// Chunks are decoded on scoped threads (all cores but one) while the calling thread
/// inserts them into the table in payload order: at a million routes the two halves of
/// the work overlap, which is what brings a start from disk under a second.
pub fn decode(payload: &[u8]) -> Result<RouteTable, DecodeError> {
    let mut reader = Reader { bytes: payload };
    if payload.len() < PAYLOAD_MAGIC.len() || reader.take(8)? != PAYLOAD_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let found = reader.u32()?;
    if found != PAYLOAD_VERSION {
        return Err(DecodeError::UnknownVersion {
            found,
            supported: PAYLOAD_VERSION,
        });
    }
    let version = reader.u64()?;
    let count = reader.u64()?;
    let chunk_count = reader.u32()?;
    let mut chunks = Vec::with_capacity(chunk_count.min(1 << 20) as usize);
    let mut first_index = 0u64;
    for _ in 0..chunk_count {
        let routes = reader.u32()?;
        let body_len = usize::try_from(reader.u64()?)
            .map_err(|_| DecodeError::Malformed("a chunk is too long".into()))?;
        let body = reader.take(body_len)?;
        chunks.push(Chunk {
            first_index,
            routes,
            body,
        });
        first_index += u64::from(routes);
    }
    if !reader.bytes.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the last chunk",
            reader.bytes.len()
        )));
    }
    if first_index != count {
        return Err(DecodeError::Malformed(format!(
            "the header says {count} routes, the chunks hold {first_index}"
        )));
    }
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
        .min(chunks.len().max(1));
    let routes = decode_in_parallel(&chunks, workers)?;
    Ok(RouteTable::from_routes(version, routes))
}

/// Decodes `chunks` on `workers` threads, each a contiguous run of them, and returns
/// the routes in their order.
fn decode_in_parallel(chunks: &[Chunk<'_>], workers: usize) -> Result<Vec<Route>, DecodeError> {
    let per_worker = chunks.len().div_ceil(workers.max(1)).max(1);
    let decoded: Vec<Result<Vec<Route>, DecodeError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .chunks(per_worker)
            .map(|run| {
                scope.spawn(move || {
                    let mut routes = Vec::new();
                    for chunk in run {
                        routes.extend(decode_chunk(chunk)?);
                    }
                    Ok(routes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a snapshot decoder thread panicked"))
            .collect()
    });
    let mut routes = Vec::with_capacity(chunks.iter().map(|c| c.routes as usize).sum());
    for run in decoded {
        routes.extend(run?);
    }
    Ok(routes)
}

fn decode_chunk(chunk: &Chunk<'_>) -> Result<Vec<Route>, DecodeError> {
    let mut reader = Reader { bytes: chunk.body };
    let mut routes = Vec::with_capacity(chunk.routes as usize);
    for i in 0..chunk.routes {
        let index = chunk.first_index + u64::from(i);
        let bad = |reason: String| DecodeError::Route { index, reason };
        let app = reader
            .str()?
            .parse()
            .map_err(|e| bad(format!("app id: {e}")))?;
        let fail_open = match reader.take(1)?[0] {
            0 => false,
            1 => true,
            other => return Err(bad(format!("fail_open byte is {other}"))),
        };
        let domain_count = reader.u32()?;
        let mut domains = Vec::with_capacity(domain_count.min(1024) as usize);
        for _ in 0..domain_count {
            let domain = reader.str()?;
            domains.push(
                domain
                    .parse()
                    .map_err(|e| bad(format!("domain {domain:?}: {e}")))?,
            );
        }
        let backend_count = reader.u32()?;
        let mut backends = Vec::with_capacity(backend_count.min(1024) as usize);
        for _ in 0..backend_count {
            let addr = reader.str()?;
            let weight = reader.u16()?;
            backends.push(
                Backend::new(addr, weight).map_err(|e| bad(format!("backend {addr:?}: {e}")))?,
            );
        }
        routes.push(Route {
            app,
            domains,
            backends,
            fail_open,
        });
    }
    if !reader.bytes.is_empty() {
        return Err(DecodeError::Malformed(format!(
            "{} bytes after the routes of the chunk starting at route {}",
            reader.bytes.len(),
            chunk.first_index
        )));
    }
    Ok(routes)
}

/// The metadata the store keeps beside a table's payload.
pub fn meta(table: &RouteTable) -> Meta {
    Meta {
        table_version: table.version(),
        route_count: table.len() as u64,
    }
}

/// What the writer has done, for `/metrics` and the tests.
#[derive(Debug, Default)]
pub(crate) struct WriteStats {
    pub(crate) writes: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) last_version: AtomicU64,
    pub(crate) last_duration_us: AtomicU64,
    pub(crate) last_bytes: AtomicU64,
    pub(crate) last_unix_ms: AtomicU64,
}

/// The coalescing writer task. Give it every applied table with [`Writer::submit`];
/// [`Writer::flush`] writes the latest one and stops it.
pub(crate) struct Writer {
    latest: watch::Sender<Arc<RouteTable>>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    task: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<WriteStats>,
}

impl Writer {
    /// Starts the writer; `on_disk` is the table the store already holds (the one loaded
    /// at start), which it does not write again.
    pub(crate) fn start(
        store: Arc<SnapshotStore>,
        on_disk: Arc<RouteTable>,
        interval: Duration,
    ) -> Writer {
        let (latest, rx) = watch::channel(Arc::clone(&on_disk));
        let (stop, stop_rx) = oneshot::channel();
        let stats = Arc::new(WriteStats::default());
        let task = tokio::spawn(write_loop(
            store,
            on_disk,
            rx,
            stop_rx,
            interval,
            Arc::clone(&stats),
        ));
        Writer {
            latest,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
            stats,
        }
    }

    /// Hands over a newly applied table; it replaces any table not yet written.
    pub(crate) fn submit(&self, table: Arc<RouteTable>) {
        self.latest.send_replace(table);
    }

    pub(crate) fn stats(&self) -> &WriteStats {
        &self.stats
    }

    /// Writes the latest table now if it is not on disk yet, and stops the writer.
    pub(crate) async fn flush(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        let task = lock(&self.task).take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }

    /// Stops the writer without a last write (a gateway dropped without stopping).
    pub(crate) fn abort(&self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn write_loop(
    store: Arc<SnapshotStore>,
    mut written: Arc<RouteTable>,
    mut rx: watch::Receiver<Arc<RouteTable>>,
    mut stop: oneshot::Receiver<()>,
    interval: Duration,
    stats: Arc<WriteStats>,
) {
    let mut lock = StateLock::new(store.dir());
    let mut last_attempt: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        let pending = !Arc::ptr_eq(&written, &rx.borrow());
        if !pending {
            if stopping {
                return;
            }
            tokio::select! {
                _ = &mut stop => stopping = true,
                changed = rx.changed() => stopping = changed.is_err(),
            }
            continue;
        }
        // Coalescing: at most one write per interval, of whatever is latest by then.
        if let (false, Some(at)) = (stopping, last_attempt) {
            tokio::select! {
                _ = tokio::time::sleep_until(at + interval) => {}
                _ = &mut stop => stopping = true,
            }
        }
        let table = Arc::clone(&rx.borrow_and_update());
        last_attempt = Some(tokio::time::Instant::now());
        if !lock.try_hold() {
            if stopping && !lock.wait(Duration::from_secs(5)).await {
                tracing::error!(
                    table_version = table.version(),
                    "stopping without writing the latest route table: another gateway holds the state folder"
                );
                return;
            }
            continue;
        }
        let started = Instant::now();
        match write_table(&store, &table).await {
            Ok(bytes) => {
                let took = started.elapsed();
                stats.writes.fetch_add(1, Ordering::Relaxed);
                stats.last_version.store(table.version(), Ordering::Relaxed);
                stats
                    .last_duration_us
                    .store(took.as_micros() as u64, Ordering::Relaxed);
                stats.last_bytes.store(bytes as u64, Ordering::Relaxed);
                stats
                    .last_unix_ms
                    .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
                tracing::debug!(
                    table_version = table.version(),
                    routes = table.len(),
                    payload_bytes = bytes,
                    took_ms = took.as_millis() as u64,
                    "route table written"
                );
                written = table;
            }
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    %error,
                    table_version = table.version(),
                    "cannot write the route table snapshot; retrying"
                );
                if stopping {
                    return;
                }
            }
        }
    }
}

/// An exclusive `flock` on `gateway.lock` in the state folder: the one process that writes
/// there. Released when the process exits, however it exits.
struct StateLock {
    path: PathBuf,
    file: Option<File>,
    warned: bool,
}

impl StateLock {
    fn new(dir: &Path) -> StateLock {
        StateLock {
            path: dir.join("gateway.lock"),
            file: None,
            warned: false,
        }
    }

    /// Whether this process holds the lock (taking it if it is free).
    fn try_hold(&mut self) -> bool {
        if self.file.is_some() {
            return true;
        }
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
        {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot open the state folder's lock file");
                return false;
            }
        };
        // SAFETY: flock on a file descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if locked {
            if self.warned {
                tracing::info!(path = %self.path.display(), "the other gateway released the state folder; writing snapshots");
            }
            self.file = Some(file);
            true
        } else {
            if !self.warned {
                tracing::warn!(path = %self.path.display(), "another gateway (the one this one replaces?) holds the state folder; snapshots are written once it exits");
                self.warned = true;
            }
            false
        }
    }

    /// Tries to take the lock for up to `limit`.
    async fn wait(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.try_hold() {
                return true;
            }
        }
        false
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes one table on a blocking thread; returns the payload's length.
async fn write_table(
    store: &Arc<SnapshotStore>,
    table: &Arc<RouteTable>,
) -> Result<usize, snapshot::Error> {
    let store = Arc::clone(store);
    let table = Arc::clone(table);
    tokio::task::spawn_blocking(move || {
        let payload = encode(&table);
        store.write(&meta(&table), &payload).map(|()| payload.len())
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}
