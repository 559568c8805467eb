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
//! weight).
//!
//! Why not the route stream's NDJSON (`model::StreamLine`)? Measured on the shared 2-core
//! development machine, release build: parsing 100,000 route lines took 0.57 s (10 s or
//! so at a million); decoding a *million* routes of this form and building their table
//! takes about 0.6 s of one core, decompression and page faults included.
//!
//! # Reading
//!
//! [`decode_from`] reads the payload as the store decompresses it
//! ([`SnapshotStore::load_with`]), a chunk at a time, so the payload (118 MB at a
//! million routes) is never whole in memory. Each route goes straight from the chunk's
//! bytes into its compact form (`table::Route`, one allocation) and into the table's
//! bulk builder, with the hashes of its keys worked out from the same bytes; no
//! `model::Route` is built.
//!
//! Every value is held to `model`'s rules: the common forms (lowercase names, IPv4
//! backends) by quick checks that accept only what `model` accepts, in one pass and
//! without allocating; anything else by `model`'s own parsers, which decide, and word the
//! error ([`DecodeError::Route`]).
//!
//! With more than one CPU, chunks are decoded on scoped threads while the calling thread
//! decompresses the next ones and files the decoded ones in payload order (the first
//! error in payload order is the one reported, as on one thread); with one CPU (a
//! gateway pinned to a core) it all happens in turn on the calling thread.
//!
//! [`encode_into`] writes the payload a chunk at a time into the store's compressor
//! ([`SnapshotStore::write_with`]): a write holds the compressed file, not the payload.
//!
//! # Writer
//!
//! A stream of deltas is not a write per delta: the writer writes at most once per
//! `snapshot_interval`, and then the latest table, whatever came between. A failed write
//! is logged, counted and retried after the interval. One gateway process owns a state
//! folder's files: a new gateway started beside the old one (SO_REUSEPORT) loads the
//! snapshot but writes only once the old one has exited (an `flock` on `gateway.lock`),
//! so the two never overwrite each other's files. Loading writes nothing, and only the
//! lock's holder removes a `routes.snap.tmp` left by an interrupted write (were the new
//! gateway's start to remove it, it could be the old one's write in progress, whose last
//! rename would then fail).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use model::{AppId, Backend, Domain};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

mod fast_check;

use crate::snapshot::{self, Meta, SnapshotStore};
use crate::table::{self, Builder, Encoder, KeyedRoutes, Keys, RandomState, Route};
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
    /// The payload ends inside a field, or has bytes after its last chunk, or could not
    /// be read.
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
    let mut out = Vec::with_capacity(PAYLOAD_HEADER_LEN + table.len() * 128);
    encode_into(table, &mut out).expect("writing to a Vec does not fail");
    out
}

/// Encodes a table as a snapshot payload into `out`, a chunk at a time: the payload is
/// never whole in memory (the writer compresses it as it comes).
pub fn encode_into(table: &RouteTable, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
    let count = table.len();
    let chunks = count.div_ceil(CHUNK_ROUTES);
    let mut header = Vec::with_capacity(PAYLOAD_HEADER_LEN);
    header.extend_from_slice(&PAYLOAD_MAGIC);
    header.extend_from_slice(&PAYLOAD_VERSION.to_le_bytes());
    header.extend_from_slice(&table.version().to_le_bytes());
    header.extend_from_slice(&(count as u64).to_le_bytes());
    header.extend_from_slice(&(chunks as u32).to_le_bytes());
    out.write_all(&header)?;
    let mut routes = table.routes();
    let mut body = Vec::new();
    for _ in 0..chunks {
        body.clear();
        let mut in_chunk = 0u32;
        for route in routes.by_ref().take(CHUNK_ROUTES) {
            encode_route(&mut body, route);
            in_chunk += 1;
        }
        out.write_all(&in_chunk.to_le_bytes())?;
        out.write_all(&(body.len() as u64).to_le_bytes())?;
        out.write_all(&body)?;
    }
    debug_assert!(routes.next().is_none());
    Ok(())
}

fn encode_route(out: &mut Vec<u8>, route: &Route) {
    put_str(out, route.app());
    out.push(u8::from(route.fail_open()));
    out.extend_from_slice(&(route.domain_count() as u32).to_le_bytes());
    for domain in route.domains() {
        put_str(out, domain);
    }
    let backends = route.backends();
    out.extend_from_slice(&(backends.len() as u32).to_le_bytes());
    for backend in backends.iter() {
        put_str(out, backend.addr());
        out.extend_from_slice(&backend.weight().to_le_bytes());
    }
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

    /// A string's bytes (`u16` length first), not checked yet.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }
}

fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("a string is not UTF-8".into()))
}

/// Bytes a [`fast_check`] accepted as a string. The fast checks accept ASCII only; this
/// checks it anyway, so a bug there is a panic, never undefined behaviour. (`is_ascii`
/// is inlined where `str::from_utf8` is a call: the latter was 7 % of a million-route
/// start.)
fn ascii(bytes: &[u8]) -> &str {
    assert!(bytes.is_ascii(), "the fast checks accept ASCII only");
    // SAFETY: ASCII is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Decodes a snapshot payload into a table. See [`decode_from`].
pub fn decode(payload: &[u8]) -> Result<RouteTable, DecodeError> {
    decode_from(payload)
}

/// Decodes a snapshot payload into a table as it is read from `payload` (the store
/// streams it out of its decompressor: the payload is never whole in memory).
///
/// Each route is held to `model`'s rules and written straight into its compact form
/// (one allocation), then filed into the table's bulk builder (see the module docs,
/// which also say how the work is spread over the CPUs).
pub fn decode_from(payload: impl Read) -> Result<RouteTable, DecodeError> {
    decode_on(payload, table::available_threads())
}

/// [`decode_from`] on up to `threads` threads.
fn decode_on(mut payload: impl Read, threads: usize) -> Result<RouteTable, DecodeError> {
    let mut header = [0u8; PAYLOAD_HEADER_LEN];
    let magic = read_up_to(&mut payload, &mut header[..PAYLOAD_MAGIC.len()])?;
    if magic < PAYLOAD_MAGIC.len() || header[..PAYLOAD_MAGIC.len()] != PAYLOAD_MAGIC {
        return Err(DecodeError::BadMagic);
    }
    read_exact(&mut payload, &mut header[PAYLOAD_MAGIC.len()..])?;
    let mut reader = Reader {
        bytes: &header[PAYLOAD_MAGIC.len()..],
    };
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
    let mut builder = Builder::new(count);
    let decoded = if threads > 1 && chunk_count > 1 {
        decode_on_threads(&mut payload, chunk_count, &mut builder, threads)?
    } else {
        decode_here(&mut payload, chunk_count, &mut builder)?
    };
    let trailing = io::copy(&mut payload, &mut io::sink()).map_err(read_error)?;
    if trailing != 0 {
        return Err(DecodeError::Malformed(format!(
            "{trailing} bytes after the last chunk"
        )));
    }
    if decoded != count {
        return Err(DecodeError::Malformed(format!(
            "the header says {count} routes, the chunks hold {decoded}"
        )));
    }
    Ok(builder.finish(version, threads))
}

fn read_error(e: io::Error) -> DecodeError {
    DecodeError::Malformed(format!("cannot read the payload: {e}"))
}

/// Reads until `buf` is full or the payload ends; returns the bytes read.
fn read_up_to(payload: &mut impl Read, buf: &mut [u8]) -> Result<usize, DecodeError> {
    let mut filled = 0;
    while filled < buf.len() {
        match payload.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_error(e)),
        }
    }
    Ok(filled)
}

fn read_exact(payload: &mut impl Read, buf: &mut [u8]) -> Result<(), DecodeError> {
    let filled = read_up_to(payload, buf)?;
    if filled < buf.len() {
        return Err(DecodeError::Malformed(format!(
            "ends inside a field ({} bytes wanted, {filled} left)",
            buf.len()
        )));
    }
    Ok(())
}

/// Reads the next chunk's header and body (into `body`); returns its route count.
fn read_chunk(payload: &mut impl Read, body: &mut Vec<u8>) -> Result<u32, DecodeError> {
    let mut head = [0u8; 12];
    read_exact(payload, &mut head)?;
    let mut reader = Reader { bytes: &head };
    let routes = reader.u32()?;
    let len = reader.u64()?;
    let wanted =
        usize::try_from(len).map_err(|_| DecodeError::Malformed("a chunk is too long".into()))?;
    body.clear();
    // The length is not trusted for the allocation: the body grows as it arrives.
    body.reserve(wanted.min(64 << 20));
    payload.take(len).read_to_end(body).map_err(read_error)?;
    if body.len() != wanted {
        return Err(DecodeError::Malformed(format!(
            "ends inside a field ({wanted} bytes wanted, {} left)",
            body.len()
        )));
    }
    Ok(routes)
}

/// Decodes every chunk on the calling thread; returns the routes decoded.
fn decode_here(
    payload: &mut impl Read,
    chunk_count: u32,
    builder: &mut Builder,
) -> Result<u64, DecodeError> {
    let mut body = Vec::new();
    let mut decoder = ChunkDecoder::new(builder.hasher().clone());
    let mut first_index = 0u64;
    for _ in 0..chunk_count {
        let routes = read_chunk(payload, &mut body)?;
        decoder.decode(first_index, routes, &body, |route, keys| {
            builder.push_keyed(route, keys)
        })?;
        first_index += u64::from(routes);
    }
    Ok(first_index)
}

/// A chunk for a decoding thread.
struct Job {
    seq: u32,
    first_index: u64,
    routes: u32,
    body: Vec<u8>,
}

/// Decodes the chunks on `threads` scoped threads while this one reads them and files
/// the results in order; returns the routes decoded.
fn decode_on_threads(
    payload: &mut impl Read,
    chunk_count: u32,
    builder: &mut Builder,
    threads: usize,
) -> Result<u64, DecodeError> {
    let hasher = builder.hasher().clone();
    // Bounded: a fast decompressor must not queue the whole payload.
    let (jobs, queue) = mpsc::sync_channel::<Job>(threads);
    let queue = Mutex::new(queue);
    let (results, done) = mpsc::channel::<(u32, Result<KeyedRoutes, DecodeError>)>();
    let (spare, buffers) = mpsc::channel::<Vec<u8>>();
    // Everything the threads borrow outlives the scope; the senders are moved into it,
    // so that however it returns, they are dropped and the threads end.
    std::thread::scope(|scope| {
        let jobs = jobs;
        for _ in 0..threads {
            let (queue, results, spare) = (&queue, results.clone(), spare.clone());
            let mut decoder = ChunkDecoder::new(hasher.clone());
            scope.spawn(move || loop {
                let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                let Ok(job) = job else { return };
                let mut decoded = KeyedRoutes::with_capacity(job.routes as usize);
                let result = decoder
                    .decode(job.first_index, job.routes, &job.body, |route, keys| {
                        decoded.push(route, keys)
                    })
                    .map(|()| decoded);
                let _ = spare.send(job.body);
                if results.send((job.seq, result)).is_err() {
                    return;
                }
            });
        }
        drop((results, spare));

        let mut pending: BTreeMap<u32, Result<KeyedRoutes, DecodeError>> = BTreeMap::new();
        let mut next = 0u32;
        // Files the decoded chunks that are next in order; the first error in payload
        // order wins, as on one thread.
        let mut file =
            |pending: &mut BTreeMap<u32, _>, next: &mut u32| -> Result<(), DecodeError> {
                while let Some(result) = pending.remove(next) {
                    builder.push_all(&mut result?);
                    *next += 1;
                }
                Ok(())
            };
        let mut first_index = 0u64;
        let mut sent = 0u32;
        for seq in 0..chunk_count {
            let mut body = buffers.try_recv().unwrap_or_default();
            match read_chunk(payload, &mut body) {
                Ok(routes) => {
                    let job = Job {
                        seq,
                        first_index,
                        routes,
                        body,
                    };
                    first_index += u64::from(routes);
                    if jobs.send(job).is_err() {
                        break;
                    }
                    sent += 1;
                }
                Err(e) => {
                    pending.insert(seq, Err(e));
                    break;
                }
            }
            while let Ok((seq, result)) = done.try_recv() {
                pending.insert(seq, result);
            }
            file(&mut pending, &mut next)?;
        }
        drop(jobs);
        for (seq, result) in done.iter() {
            pending.insert(seq, result);
            file(&mut pending, &mut next)?;
        }
        file(&mut pending, &mut next)?;
        debug_assert_eq!(next, sent);
        Ok(first_index)
    })
}

/// Decodes chunks into routes, with buffers kept from one route to the next.
struct ChunkDecoder {
    hasher: RandomState,
    encoder: Encoder,
    keys: Keys,
    /// Lent to `model`'s checks, which take a `String` and give it back when valid.
    scratch: String,
}

impl ChunkDecoder {
    fn new(hasher: RandomState) -> ChunkDecoder {
        ChunkDecoder {
            hasher,
            encoder: Encoder::default(),
            keys: Keys::default(),
            scratch: String::new(),
        }
    }

    /// Decodes the `routes` routes of `body`, the first of which is route `first_index`
    /// of the payload, handing each to `each` with its keys.
    fn decode(
        &mut self,
        first_index: u64,
        routes: u32,
        body: &[u8],
        mut each: impl FnMut(Route, &Keys),
    ) -> Result<(), DecodeError> {
        let mut reader = Reader { bytes: body };
        for i in 0..routes {
            let index = first_index + u64::from(i);
            let bad = |reason: String| DecodeError::Route { index, reason };
            let app = reader.bytes()?;
            let app = if fast_check::app_id(app) {
                ascii(app)
            } else {
                let app = utf8(app)?;
                self.check::<AppId>(app)
                    .map_err(|e| bad(format!("app id: {e}")))?;
                app
            };
            let fail_open = match reader.take(1)?[0] {
                0 => false,
                1 => true,
                other => return Err(bad(format!("fail_open byte is {other}"))),
            };
            self.encoder.start(app, fail_open);
            self.keys.start(&self.hasher, app);
            let domain_count = reader.u32()?;
            for _ in 0..domain_count {
                let domain = reader.bytes()?;
                let domain = if fast_check::domain(domain) {
                    ascii(domain)
                } else {
                    let domain = utf8(domain)?;
                    self.check::<Domain>(domain)
                        .map_err(|e| bad(format!("domain {domain:?}: {e}")))?;
                    domain
                };
                self.encoder.domain(domain);
                self.keys.domain(&self.hasher, domain);
            }
            let backend_count = reader.u32()?;
            for _ in 0..backend_count {
                let addr = reader.bytes()?;
                let weight = reader.u16()?;
                let addr = if fast_check::backend(addr, weight) {
                    ascii(addr)
                } else {
                    let addr = utf8(addr)?;
                    Backend::new(addr, weight)
                        .map_err(|e| bad(format!("backend {addr:?}: {e}")))?;
                    addr
                };
                self.encoder.backend(addr, weight);
            }
            each(self.encoder.finish(), &self.keys);
        }
        if !reader.bytes.is_empty() {
            return Err(DecodeError::Malformed(format!(
                "{} bytes after the routes of the chunk starting at route {}",
                reader.bytes.len(),
                first_index
            )));
        }
        Ok(())
    }

    /// `model`'s checks of `s` as a `T`, without allocating when it passes.
    fn check<T>(&mut self, s: &str) -> Result<(), <T as TryFrom<String>>::Error>
    where
        T: TryFrom<String> + Into<String>,
    {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.push_str(s);
        let valid = T::try_from(scratch)?;
        self.scratch = valid.into();
        Ok(())
    }
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
    /// Unix milliseconds since which the served table has waited to be written; 0 when
    /// none waits.
    pub(crate) unsaved_since_unix_ms: AtomicU64,
    /// 1 while this process holds the state folder's lock, else 0.
    pub(crate) folder_held: AtomicU64,
}

impl WriteStats {
    /// Seconds the served table has waited to be written, at `now`.
    pub(crate) fn unsaved_seconds(&self, now: SystemTime) -> f64 {
        match self.unsaved_since_unix_ms.load(Ordering::Relaxed) {
            0 => 0.0,
            since => unix_ms(now).saturating_sub(since) as f64 / 1e3,
        }
    }

    /// Notes that a table waits to be written, unless one already did.
    fn unsaved(&self) {
        let _ = self.unsaved_since_unix_ms.compare_exchange(
            0,
            unix_ms(SystemTime::now()).max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    fn held(&self, held: bool) {
        self.folder_held.store(u64::from(held), Ordering::Relaxed);
    }
}

/// How often a writer that does not hold its state folder tries the lock again while no
/// table waits (one that waits tries at every write attempt).
const LOCK_RETRY: Duration = Duration::from_secs(1);

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
        // The disk holds `on_disk` already.
        stats
            .last_version
            .store(on_disk.version(), Ordering::Relaxed);
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
    // The folder's owner tidies what an interrupted write left. A gateway started beside
    // the owner leaves it: it may be the owner's write in progress.
    if lock.try_hold() {
        store.remove_leftover_tmp();
    }
    stats.held(lock.held());
    let mut last_attempt: Option<tokio::time::Instant> = None;
    let mut stopping = false;
    loop {
        let pending = !Arc::ptr_eq(&written, &rx.borrow());
        if !pending {
            if stopping {
                return;
            }
            let held = lock.held();
            tokio::select! {
                _ = &mut stop => stopping = true,
                changed = rx.changed() => stopping = changed.is_err(),
                () = tokio::time::sleep(LOCK_RETRY), if !held => {
                    if lock.try_hold() {
                        store.remove_leftover_tmp();
                    }
                    stats.held(lock.held());
                }
            }
            continue;
        }
        stats.unsaved();
        // Coalescing: at most one write per interval, of whatever is latest by then.
        if let (false, Some(at)) = (stopping, last_attempt) {
            tokio::select! {
                _ = tokio::time::sleep_until(at + interval) => {}
                _ = &mut stop => stopping = true,
            }
        }
        let table = Arc::clone(&rx.borrow_and_update());
        last_attempt = Some(tokio::time::Instant::now());
        let held = lock.try_hold();
        stats.held(held);
        if !held {
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
                let now = unix_ms(SystemTime::now());
                stats.last_unix_ms.store(now, Ordering::Relaxed);
                // A newer table that came during the write waits from now.
                let newer = !Arc::ptr_eq(&table, &rx.borrow());
                stats
                    .unsaved_since_unix_ms
                    .store(if newer { now.max(1) } else { 0 }, Ordering::Relaxed);
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

/// The state folder's lock file; see [`StateLock`].
pub const LOCK_FILE: &str = "gateway.lock";

/// An exclusive `flock` on [`LOCK_FILE`] in the state folder: the one process that writes
/// there. Released when the process exits, however it exits.
struct StateLock {
    path: PathBuf,
    file: Option<File>,
    /// Whether another process was found holding the lock.
    warned: bool,
    /// Why the lock file could not be opened last time, if it could not.
    open_failed: Option<io::ErrorKind>,
}

impl StateLock {
    fn new(dir: &Path) -> StateLock {
        StateLock {
            path: dir.join(LOCK_FILE),
            file: None,
            warned: false,
            open_failed: None,
        }
    }

    /// Whether this process holds the lock (without trying to take it).
    fn held(&self) -> bool {
        self.file.is_some()
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
                // Tried every second: said once for each kind of failure.
                if self.open_failed.replace(e.kind()) == Some(e.kind()) {
                    tracing::debug!(path = %self.path.display(), error = %e, "cannot open the state folder's lock file");
                } else {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot open the state folder's lock file; no snapshot is written until it can");
                }
                return false;
            }
        };
        self.open_failed = None;
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
        store
            .write_with(&meta(&table), |out| encode_into(&table, out))
            .map(|len| len as usize)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(i: usize) -> model::Route {
        model::Route {
            app: format!("app-{i}").parse().unwrap(),
            domains: vec![
                format!("app-{i}.test").parse().unwrap(),
                format!("*.w{i}.test").parse().unwrap(),
            ],
            backends: vec![
                Backend::new(format!("10.0.{}.{}:80", i / 256 % 256, i % 256), 1).unwrap(),
            ],
            fail_open: i % 7 == 0,
        }
    }

    /// A payload of several chunks.
    fn payload(n: usize) -> Vec<u8> {
        let payload = encode(&RouteTable::from_routes(3, (0..n).map(route)));
        assert!(n > 2 * CHUNK_ROUTES);
        payload
    }

    #[test]
    fn every_way_of_decoding_gives_the_same_table() {
        let n = 2 * CHUNK_ROUTES + 1000;
        let payload = payload(n);
        for threads in [1, 2, 3, 8] {
            let table = decode_on(&payload[..], threads).unwrap();
            assert_eq!((table.version(), table.len()), (3, n), "{threads} threads");
            assert_eq!(table.domain_count(), 2 * n);
            for i in [0, 1, CHUNK_ROUTES, n - 1] {
                let expected = route(i);
                assert_eq!(table.app(expected.app.as_str()).unwrap(), &expected);
                assert_eq!(
                    table.lookup(&format!("app-{i}.test")).unwrap().app(),
                    expected.app.as_str()
                );
                assert_eq!(
                    table.lookup(&format!("x.w{i}.test")).unwrap().app(),
                    expected.app.as_str()
                );
            }
            // Encoding the decoded table gives the same bytes back, but for the order.
            assert_eq!(encode(&table).len(), payload.len());
        }
    }

    #[test]
    fn the_first_error_in_payload_order_wins_on_any_thread_count() {
        let n = 2 * CHUNK_ROUTES + 1000;
        let mut bad = payload(n);
        // The first app ids of the second and third chunks, made into ones model refuses.
        let mut at = PAYLOAD_HEADER_LEN;
        for chunk in 0..3 {
            let body_len = u64::from_le_bytes(bad[at + 4..at + 12].try_into().unwrap());
            let body = at + 12;
            if chunk > 0 {
                bad[body + 2] = b'A';
            }
            at = body + body_len as usize;
        }
        let index_of = |result: Result<RouteTable, DecodeError>| match result {
            Err(DecodeError::Route { index, .. }) => index,
            other => panic!("{other:?}"),
        };
        let first = index_of(decode_on(&bad[..], 1));
        for threads in [2, 3, 8] {
            assert_eq!(
                index_of(decode_on(&bad[..], threads)),
                first,
                "{threads} threads"
            );
        }
        assert_eq!(first, CHUNK_ROUTES as u64);

        // A payload cut short in its last chunk, after a bad route in an earlier one.
        let cut = &bad[..bad.len() - 10];
        assert_eq!(index_of(decode_on(cut, 1)), first);
        assert_eq!(index_of(decode_on(cut, 3)), first);
        let good = payload(n);
        for threads in [1, 3] {
            for cut in [40, good.len() / 2, good.len() - 1] {
                assert!(
                    matches!(
                        decode_on(&good[..cut], threads),
                        Err(DecodeError::Malformed(_))
                    ),
                    "cut at {cut} on {threads} threads"
                );
            }
            let mut longer = good.clone();
            longer.extend_from_slice(b"extra");
            assert!(matches!(
                decode_on(&longer[..], threads),
                Err(DecodeError::Malformed(_))
            ));
        }
    }
}
