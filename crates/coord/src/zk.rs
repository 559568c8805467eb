//! `Zk`: the handle every component uses to talk to ZooKeeper.
//!
//! Three promises, each from the August 2016 post-mortem:
//! - **Bounded in flight.** A request takes a slot of one window (a fair semaphore)
//!   *before* it reaches `zookeeper-client`, whose queue is unbounded and which queues at
//!   the call, not at the first poll. A full window makes callers wait; it never fails
//!   them and never grows memory.
//! - **Sized before sent.** Every payload is encoded (`codec`) and checked against
//!   `jute.maxbuffer` less the request overhead; a write over it is refused with
//!   [`Error::NodeTooLarge`] and nothing is sent.
//! - **Sessions are handled once, here.** A connection loss is retried with backoff
//!   (reads; writes whose outcome can be checked). A session expiry is published at
//!   once on [`Zk::session`], ephemeral work bound to the old session fails with
//!   [`Error::SessionExpired`], and a new client is built, since a `zookeeper-client`
//!   client is dead after expiry.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Semaphore, SemaphorePermit};
use zookeeper_client as zkc;

use crate::coalesce::Coalesced;
use crate::codec;
use crate::error::{Error, Result, ZkError};
use crate::metrics as m;
use crate::Config;

pub use zookeeper_client::Stat;

/// How a node is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateMode {
    /// Stays until deleted.
    Persistent,
    /// Deleted when the session that created it ends; counted against the budget.
    Ephemeral,
}

impl CreateMode {
    pub(crate) fn options(self) -> &'static zkc::CreateOptions<'static> {
        static PERSISTENT: zkc::CreateOptions<'static> =
            zkc::CreateMode::Persistent.with_acls(zkc::Acls::anyone_all());
        static EPHEMERAL: zkc::CreateOptions<'static> =
            zkc::CreateMode::Ephemeral.with_acls(zkc::Acls::anyone_all());
        match self {
            CreateMode::Persistent => &PERSISTENT,
            CreateMode::Ephemeral => &EPHEMERAL,
        }
    }
}

/// The state of the layer's ZooKeeper session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Connected; requests flow.
    Connected,
    /// The connection dropped; the session may still be alive and requests wait.
    Disconnected,
    /// The session expired: its ephemeral nodes are gone. A new one is being built.
    Expired,
    /// The layer was closed.
    Closed,
}

/// A one-shot watch set by a read; resolves on the next event for its node or session.
#[derive(Debug)]
pub struct Watch(zkc::OneshotWatcher);

impl Watch {
    /// Waits for the event. A session expiry also fires it (the watch is then gone).
    pub async fn changed(self) {
        self.0.changed().await;
    }
}

/// A snapshot of the session, published on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// Counts sessions: 1 for the first, +1 after every expiry. Work tied to a session
    /// (ephemerals, ownership) records it and is void once it changes.
    pub generation: u64,
    /// ZooKeeper's id of the current session.
    pub id: i64,
    /// Where it stands.
    pub state: SessionState,
}

/// Counters about the session's life, for tests and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Times the connection dropped (the session survived or not).
    pub disconnects: u64,
    /// Times the session expired.
    pub expiries: u64,
}

/// The handle to ZooKeeper. Cheap to clone; all clones share one session and window.
///
/// Dropping the last clone closes the session (its ephemeral nodes go at once).
#[derive(Clone)]
pub struct Zk {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    window: Semaphore,
    pub(crate) multi_window: Semaphore,
    /// Single requests waiting to go out together (`coalesce.rs`).
    pub(crate) coalescing: Mutex<crate::coalesce::Queues>,
    pub(crate) coalesced_creates: AtomicU64,
    pub(crate) coalesced_reads: AtomicU64,
    client: ArcSwapOption<zkc::Client>,
    session: watch::Sender<Session>,
    ephemerals: Mutex<Ephemerals>,
    disconnects: AtomicU64,
    expiries: AtomicU64,
    largest_payload: AtomicUsize,
    /// Path hashes of nodes last seen over the size alert.
    over_alert: Mutex<HashSet<u64>>,
    over_alert_count: AtomicUsize,
}

/// The ephemeral nodes this session holds, by a hash of their path: 8 bytes each,
/// whatever the path's length, since a benchmark session may hold a million.
#[derive(Default)]
struct Ephemerals {
    held: HashSet<u64>,
    creating: usize,
}

fn path_key(path: &str) -> u64 {
    // A fixed-key hash: the same path must give the same key in every call.
    let mut hasher = std::hash::DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish()
}

impl std::fmt::Debug for Zk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zk")
            .field("connect", &self.inner.config.connect)
            .field("session", &*self.inner.session.borrow())
            .finish()
    }
}

/// A slot of the window with the client to use while holding it.
pub(crate) struct Slot<'a> {
    _permit: SemaphorePermit<'a>,
    pub(crate) client: Arc<zkc::Client>,
    pub(crate) generation: u64,
}

impl Zk {
    /// Connects, retrying for `config.retry_for` while no server answers.
    pub async fn connect(config: Config) -> Result<Zk> {
        assert!(config.window > 0, "the in-flight window must be at least 1");
        let started = Instant::now();
        let client = connect_client(&config, started).await?;
        let session = Session {
            generation: 1,
            id: client.session_id().0,
            state: SessionState::Connected,
        };
        let (sender, _) = watch::channel(session);
        let inner = Arc::new(Inner {
            window: Semaphore::new(config.window),
            multi_window: Semaphore::new(config.multi_in_flight.max(1)),
            coalescing: Mutex::default(),
            coalesced_creates: AtomicU64::new(0),
            coalesced_reads: AtomicU64::new(0),
            client: ArcSwapOption::from_pointee(client),
            session: sender,
            ephemerals: Mutex::default(),
            disconnects: AtomicU64::new(0),
            expiries: AtomicU64::new(0),
            largest_payload: AtomicUsize::new(0),
            over_alert: Mutex::default(),
            over_alert_count: AtomicUsize::new(0),
            config,
        });
        tokio::spawn(keep_session(Arc::downgrade(&inner)));
        tracing::info!(connect = %inner.config.connect, session = format_args!("{:#x}", session.id), "ZooKeeper session established");
        Ok(Zk { inner })
    }

    /// The settings this handle was built with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Whether the current client has seen its session end (expired, refused, closed)
    /// before the task that follows it has published that: a request can fail with
    /// the expiry a moment before [`Zk::session`] says so.
    pub(crate) fn session_ended(&self) -> bool {
        self.inner.client.load().as_ref().is_none_or(|client| {
            matches!(
                client.state(),
                zkc::SessionState::Expired
                    | zkc::SessionState::AuthFailed
                    | zkc::SessionState::Closed
            )
        })
    }

    /// The current session; `.changed()` on the receiver wakes on every change.
    pub fn session(&self) -> watch::Receiver<Session> {
        self.inner.session.subscribe()
    }

    /// Disconnects and expiries seen so far.
    pub fn session_stats(&self) -> SessionStats {
        SessionStats {
            disconnects: self.inner.disconnects.load(Ordering::Relaxed),
            expiries: self.inner.expiries.load(Ordering::Relaxed),
        }
    }

    /// Ephemeral nodes this session holds (or is creating).
    pub fn ephemerals_held(&self) -> usize {
        let e = self
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        e.held.len() + e.creating
    }

    /// The largest encoded payload written or read so far, in bytes.
    pub fn largest_payload_bytes(&self) -> usize {
        self.inner.largest_payload.load(Ordering::Relaxed)
    }

    /// Single creates sent inside shared `multi` transactions so far.
    pub fn coalesced_creates(&self) -> u64 {
        self.inner.coalesced_creates.load(Ordering::Relaxed)
    }

    /// Single reads sent inside shared `multiRead` requests so far.
    pub fn coalesced_reads(&self) -> u64 {
        self.inner.coalesced_reads.load(Ordering::Relaxed)
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.inner.config.window - self.inner.window.available_permits()
    }

    /// Closes the session now: its ephemeral nodes are deleted by ZooKeeper at once,
    /// and every later request fails with [`Error::Closed`].
    pub async fn close(&self) {
        if let Some(client) = self.inner.client.swap(None) {
            self.inner
                .session
                .send_modify(|s| s.state = SessionState::Closed);
            // Wait for requests in flight to give back their client, so that the drop
            // below is the last one and closes the session.
            let _all = self
                .inner
                .window
                .acquire_many(self.inner.config.window as u32)
                .await;
            // Dropping the last client sends the close; its state says when it is done,
            // so that on return the session's ephemerals are gone.
            let mut states = client.state_watcher();
            drop(client);
            let closed = async {
                loop {
                    if states.changed().await == zkc::SessionState::Closed {
                        return;
                    }
                }
            };
            let timeout = self.inner.config.session_timeout;
            if tokio::time::timeout(timeout, closed).await.is_err() {
                tracing::warn!("ZooKeeper did not confirm the session's close");
            }
        }
    }

    /// Takes a window slot; waits while the window is full.
    pub(crate) async fn slot(&self) -> Result<Slot<'_>> {
        let permit = match self.inner.window.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!(m::ZK_WINDOW_WAITS).increment(1);
                self.inner
                    .window
                    .acquire()
                    .await
                    .map_err(|_| Error::Closed)?
            }
        };
        metrics::gauge!(m::ZK_IN_FLIGHT).set(self.in_flight() as f64);
        let client = self.inner.client.load_full().ok_or(Error::Closed)?;
        let generation = self.inner.session.borrow().generation;
        Ok(Slot {
            _permit: permit,
            client,
            generation,
        })
    }

    /// Encodes a payload for `path` and refuses it when it is over the limit.
    pub(crate) fn encode(&self, path: &str, payload: &[u8]) -> Result<Vec<u8>> {
        let config = &self.inner.config;
        let encoded = codec::encode(payload, config.compress_above_bytes);
        let limit = config.max_payload_bytes(path);
        if encoded.len() > limit {
            metrics::counter!(m::ZK_ERRORS, "kind" => "node_too_large").increment(1);
            return Err(Error::NodeTooLarge {
                path: path.to_string(),
                size_bytes: encoded.len(),
                limit_bytes: limit,
            });
        }
        self.note_size(path, encoded.len());
        Ok(encoded)
    }

    /// Records a node size; one over the alert ratio of the limit is logged and counted.
    pub(crate) fn note_size(&self, path: &str, size_bytes: usize) {
        let config = &self.inner.config;
        let previous = self
            .inner
            .largest_payload
            .fetch_max(size_bytes, Ordering::Relaxed);
        if size_bytes > previous {
            metrics::gauge!(m::ZK_LARGEST_PAYLOAD).set(size_bytes as f64);
        }
        let limit = config.max_payload_bytes(path);
        let over = size_bytes as f64 > limit as f64 * config.size_alert_ratio;
        // The set of nodes over the alert is only touched when it can change: a node
        // over it, or a node seen while the set is not empty.
        if !over && self.inner.over_alert_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let key = path_key(path);
        let mut nodes = self
            .inner
            .over_alert
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let crossed = if over {
            nodes.insert(key)
        } else {
            nodes.remove(&key);
            false
        };
        self.inner
            .over_alert_count
            .store(nodes.len(), Ordering::Relaxed);
        metrics::gauge!(m::ZK_NODES_OVER_ALERT).set(nodes.len() as f64);
        drop(nodes);
        if over {
            metrics::counter!(m::ZK_PAYLOADS_OVER_ALERT).increment(1);
        }
        if crossed {
            tracing::warn!(
                zk.path = path,
                size_bytes,
                limit_bytes = limit,
                "ZooKeeper node crossed {:.0}% of the size limit",
                config.size_alert_ratio * 100.0
            );
        }
    }

    /// Nodes whose last seen size was over the alert share of the limit.
    pub fn nodes_over_alert(&self) -> usize {
        self.inner.over_alert_count.load(Ordering::Relaxed)
    }

    pub(crate) fn decode(&self, path: &str, data: &[u8]) -> Result<Vec<u8>> {
        self.note_size(path, data.len());
        codec::decode(data).map_err(|source| Error::Decode {
            path: path.to_string(),
            source,
        })
    }

    /// Reads a node: its decoded payload and stat, or `None` when it does not exist.
    ///
    /// While [`Config::coalesce_above`] requests are in flight, the read is queued and
    /// sent inside a `multiRead` shared with other reads.
    pub async fn get(&self, path: &str) -> Result<Option<(Vec<u8>, Stat)>> {
        match self.get_raw(path).await? {
            Some((data, stat)) => Ok(Some((self.decode(path, &data)?, stat))),
            None => Ok(None),
        }
    }

    /// Reads many nodes' raw bytes and stats in one request (ZooKeeper 3.6+
    /// `multiRead`), in the order of `paths`; `None` for a node that does not exist.
    ///
    /// One request for many reads spares ZooKeeper most of its per-request work: a
    /// tree walk reads several times as many nodes per second this way. The answer is
    /// one packet holding every payload, so callers keep batches to what they expect
    /// to be well under `jute.maxbuffer`.
    pub async fn get_many_raw(&self, paths: &[String]) -> Result<Vec<Option<(Vec<u8>, Stat)>>> {
        let results = self
            .read_many("get_many", paths, |reader, path| reader.add_get_data(path))
            .await?;
        results
            .into_iter()
            .zip(paths)
            .map(|(result, path)| match result {
                zkc::MultiReadResult::Data { data, stat } => Ok(Some((data, stat))),
                zkc::MultiReadResult::Error {
                    err: ZkError::NoNode,
                } => Ok(None),
                zkc::MultiReadResult::Error { err } => {
                    Err(Retry::new(self, "get_many", path).refused(err))
                }
                other => Err(Error::Unexpected {
                    path: path.clone(),
                    detail: format!("a multiRead answered a data read with {other:?}"),
                }),
            })
            .collect()
    }

    /// The children of many nodes in one request, in the order of `paths`; `None`
    /// for a node that does not exist.
    pub async fn children_many(&self, paths: &[String]) -> Result<Vec<Option<Vec<String>>>> {
        let results = self
            .read_many("children_many", paths, |reader, path| {
                reader.add_get_children(path)
            })
            .await?;
        results
            .into_iter()
            .zip(paths)
            .map(|(result, path)| match result {
                zkc::MultiReadResult::Children { children } => Ok(Some(children)),
                zkc::MultiReadResult::Error {
                    err: ZkError::NoNode,
                } => Ok(None),
                zkc::MultiReadResult::Error { err } => {
                    Err(Retry::new(self, "children_many", path).refused(err))
                }
                other => Err(Error::Unexpected {
                    path: path.clone(),
                    detail: format!("a multiRead answered a children read with {other:?}"),
                }),
            })
            .collect()
    }

    /// One `multiRead` of `add` applied to every path, retried as a whole (reads are
    /// idempotent) after a connection loss or a session expiry.
    async fn read_many(
        &self,
        op: &'static str,
        paths: &[String],
        add: impl Fn(&mut zkc::MultiReader<'_>, &str) -> std::result::Result<(), ZkError>,
    ) -> Result<Vec<zkc::MultiReadResult>> {
        let Some(first) = paths.first() else {
            return Ok(Vec::new());
        };
        let mut retry = Retry::new(self, op, first);
        loop {
            let slot = self.slot().await?;
            let mut reader = slot.client.new_multi_reader();
            for path in paths {
                add(&mut reader, path).map_err(|err| retry.refused(err))?;
            }
            let result = reader.commit().await;
            drop(reader);
            drop(slot);
            match result {
                Ok(results) if results.len() == paths.len() => {
                    retry.done();
                    return Ok(results);
                }
                Ok(results) => {
                    return Err(Error::Unexpected {
                        path: first.clone(),
                        detail: format!(
                            "a multiRead of {} operations got {} answers",
                            paths.len(),
                            results.len()
                        ),
                    })
                }
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// Reads a node's raw bytes without decoding them (audits, foreign nodes).
    pub async fn get_raw(&self, path: &str) -> Result<Option<(Vec<u8>, Stat)>> {
        let mut retry = Retry::new(self, "get", path);
        if self.congested() {
            match self.get_coalesced(path).await? {
                Coalesced::Done(found) => {
                    retry.done();
                    return Ok(found);
                }
                Coalesced::Refused(err) => return Err(retry.refused(err)),
                Coalesced::Fallback { .. } => {}
            }
        }
        loop {
            let slot = self.slot().await?;
            let result = slot.client.get_data(path).await;
            drop(slot);
            match result {
                Ok(found) => return Ok(Some(found)).inspect(|_| retry.done()),
                Err(ZkError::NoNode) => return Ok(None).inspect(|_| retry.done()),
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// A node's stat, or `None` when it does not exist.
    pub async fn exists(&self, path: &str) -> Result<Option<Stat>> {
        let mut retry = Retry::new(self, "exists", path);
        loop {
            let slot = self.slot().await?;
            let result = slot.client.check_stat(path).await;
            drop(slot);
            match result {
                Ok(stat) => return Ok(stat).inspect(|_| retry.done()),
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// The names of a node's children (unsorted). A missing node is an error.
    pub async fn children(&self, path: &str) -> Result<Vec<String>> {
        let mut retry = Retry::new(self, "children", path);
        loop {
            let slot = self.slot().await?;
            let result = slot.client.list_children(path).await;
            drop(slot);
            match result {
                Ok(children) => return Ok(children).inspect(|_| retry.done()),
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// The names of a node's children and a one-shot watch that fires on the next
    /// change to them (or to the session). A missing node is an error.
    pub async fn children_watch(&self, path: &str) -> Result<(Vec<String>, Watch)> {
        let mut retry = Retry::new(self, "children", path);
        loop {
            let slot = self.slot().await?;
            let result = slot.client.list_and_watch_children(path).await;
            drop(slot);
            match result {
                Ok((children, watcher)) => {
                    retry.done();
                    return Ok((children, Watch(watcher)));
                }
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// A node's stat (or `None`) and a one-shot watch that fires when it is created,
    /// changed or deleted (or on a session event).
    pub async fn exists_watch(&self, path: &str) -> Result<(Option<Stat>, Watch)> {
        let mut retry = Retry::new(self, "exists", path);
        loop {
            let slot = self.slot().await?;
            let result = slot.client.check_and_watch_stat(path).await;
            drop(slot);
            match result {
                Ok((stat, watcher)) => {
                    retry.done();
                    return Ok((stat, Watch(watcher)));
                }
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// A persistent recursive watch on `path` (ZooKeeper 3.6+ `addWatch`), with the
    /// session generation it belongs to: it ends with that session.
    pub(crate) async fn recursive_watch(
        &self,
        path: &str,
    ) -> Result<(zkc::PersistentWatcher, u64)> {
        let mut retry = Retry::new(self, "watch", path);
        loop {
            let slot = self.slot().await?;
            let generation = slot.generation;
            let result = slot
                .client
                .watch(path, zkc::AddWatchMode::PersistentRecursive)
                .await;
            drop(slot);
            match result {
                Ok(watcher) => {
                    retry.done();
                    return Ok((watcher, generation));
                }
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// Creates a node holding `payload` (encoded and size-checked).
    ///
    /// After a connection loss the create is retried; if the retry finds the node with
    /// our data (and, for an ephemeral, our session), the first attempt succeeded.
    /// An ephemeral create never crosses a session expiry: it fails with
    /// [`Error::SessionExpired`] and the caller decides what to re-establish.
    ///
    /// While [`Config::coalesce_above`] requests are in flight, the create is queued
    /// and sent inside a `multi` shared with other creates (see `batch.rs`). It returns
    /// no stat: ZooKeeper 3.8 answers a create inside a `multi` without one.
    pub async fn create(&self, path: &str, payload: &[u8], mode: CreateMode) -> Result<()> {
        let data = self.encode(path, payload)?;
        let _reservation = match mode {
            CreateMode::Ephemeral => Some(self.reserve_ephemerals(path, 1)?),
            CreateMode::Persistent => None,
        };
        let mut retry = Retry::new(self, "create", path);
        let mut generation = None;
        if self.congested() {
            match self.create_coalesced(path, &data, mode).await? {
                Coalesced::Done(()) => {
                    retry.done();
                    if mode == CreateMode::Ephemeral {
                        self.hold_ephemeral(path);
                    }
                    return Ok(());
                }
                Coalesced::Refused(err) => return Err(retry.refused(err)),
                Coalesced::Fallback {
                    lost,
                    generation: g,
                } => {
                    // On its own from here, as if its first attempt had been the multi.
                    retry.lost |= lost;
                    generation = Some(g);
                }
            }
        }
        loop {
            let slot = self.slot().await?;
            if mode == CreateMode::Ephemeral
                && *generation.get_or_insert(slot.generation) != slot.generation
            {
                return Err(retry.expired());
            }
            let session_id = slot.client.session_id().0;
            let result = slot.client.create(path, &data, mode.options()).await;
            drop(slot);
            match result {
                Ok(_) => {
                    retry.done();
                    if mode == CreateMode::Ephemeral {
                        self.hold_ephemeral(path);
                    }
                    return Ok(());
                }
                Err(ZkError::NodeExists) if retry.after_loss() => {
                    // Did our first attempt land before the connection dropped?
                    if let Some((existing, stat)) = self.get_raw(path).await? {
                        let ours = existing == data
                            && (mode == CreateMode::Persistent
                                || stat.ephemeral_owner == session_id);
                        if ours {
                            retry.done();
                            if mode == CreateMode::Ephemeral {
                                self.hold_ephemeral(path);
                            }
                            return Ok(());
                        }
                    }
                    return Err(retry.refused(ZkError::NodeExists));
                }
                Err(ZkError::SessionExpired) if mode == CreateMode::Ephemeral => {
                    return Err(retry.expired());
                }
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// Creates `path` and any missing parent as empty persistent nodes (`mkdir -p`).
    pub async fn ensure_path(&self, path: &str) -> Result<()> {
        let mut end = 1;
        while end <= path.len() {
            let next = path[end..].find('/').map_or(path.len(), |i| end + i);
            let prefix = &path[..next];
            match self.create(prefix, b"", CreateMode::Persistent).await {
                Ok(_) => {}
                Err(err) if err.is_node_exists() => {}
                Err(err) => return Err(err),
            }
            end = next + 1;
        }
        Ok(())
    }

    /// Replaces a node's payload; with `version`, only if the node is at that version.
    pub async fn set(&self, path: &str, payload: &[u8], version: Option<i32>) -> Result<Stat> {
        let data = self.encode(path, payload)?;
        let mut retry = Retry::new(self, "set", path);
        loop {
            let slot = self.slot().await?;
            let result = slot.client.set_data(path, &data, version).await;
            drop(slot);
            match result {
                Ok(stat) => return Ok(stat).inspect(|_| retry.done()),
                Err(ZkError::BadVersion) if retry.after_loss() => {
                    // Our first attempt may have landed: then the node is one version on
                    // and holds our data.
                    if let Some((existing, stat)) = self.get_raw(path).await? {
                        if existing == data && Some(stat.version - 1) == version {
                            return Ok(stat).inspect(|_| retry.done());
                        }
                    }
                    return Err(retry.refused(ZkError::BadVersion));
                }
                Err(err) => retry.failed(err).await?,
            }
        }
    }

    /// Deletes a node; with `version`, only if it is at that version.
    ///
    /// After a connection loss, a retry that finds no node counts as done.
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<()> {
        let mut retry = Retry::new(self, "delete", path);
        loop {
            let slot = self.slot().await?;
            let result = slot.client.delete(path, version).await;
            drop(slot);
            match result {
                Ok(()) => break,
                Err(ZkError::NoNode) if retry.after_loss() => break,
                Err(err) => retry.failed(err).await?,
            }
        }
        retry.done();
        self.release_ephemeral(path);
        Ok(())
    }

    /// Takes `count` slots of the ephemeral budget for creates about to be sent; they
    /// are given back when the reservation drops (by then a success is held).
    pub(crate) fn reserve_ephemerals(
        &self,
        path: &str,
        count: usize,
    ) -> Result<EphemeralReservation<'_>> {
        let budget = self.inner.config.ephemeral_budget;
        let mut e = self
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let held = e.held.len() + e.creating;
        if held + count > budget {
            metrics::counter!(m::ZK_ERRORS, "kind" => "ephemeral_budget").increment(1);
            return Err(Error::EphemeralBudget {
                path: path.to_string(),
                held,
                budget,
            });
        }
        e.creating += count;
        Ok(EphemeralReservation { zk: self, count })
    }

    fn hold_ephemeral(&self, path: &str) {
        self.hold_ephemerals([path]);
    }

    pub(crate) fn hold_ephemerals<'p>(&self, paths: impl IntoIterator<Item = &'p str>) {
        let mut e = self
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        e.held.extend(paths.into_iter().map(path_key));
    }

    pub(crate) fn release_ephemeral(&self, path: &str) {
        let mut e = self
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        e.held.remove(&path_key(path));
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Waits until the session generation is past `generation` and connected, or the
    /// deadline passes.
    async fn wait_for_new_session(&self, generation: u64, deadline: Instant) -> bool {
        let mut session = self.session();
        let wait = async {
            loop {
                let now = *session.borrow_and_update();
                if now.state == SessionState::Closed {
                    return false;
                }
                if now.generation > generation && now.state == SessionState::Connected {
                    return true;
                }
                if session.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout_at(deadline.into(), wait)
            .await
            .unwrap_or(false)
    }
}

/// A slot in the ephemeral budget taken while a create is in flight.
pub(crate) struct EphemeralReservation<'a> {
    zk: &'a Zk,
    count: usize,
}

impl Drop for EphemeralReservation<'_> {
    fn drop(&mut self) {
        let mut e = self
            .zk
            .inner
            .ephemerals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        e.creating -= self.count;
    }
}

/// The retry policy of one request: backoff across connection losses, a wait for a new
/// session after an expiry, a deadline, and the metrics of the outcome.
pub(crate) struct Retry<'a> {
    zk: &'a Zk,
    op: &'static str,
    path: &'a str,
    started: Instant,
    attempts: u32,
    lost: bool,
}

impl<'a> Retry<'a> {
    pub(crate) fn new(zk: &'a Zk, op: &'static str, path: &'a str) -> Retry<'a> {
        Retry {
            zk,
            op,
            path,
            started: Instant::now(),
            attempts: 0,
            lost: false,
        }
    }

    /// Whether an earlier attempt's outcome is unknown (its connection dropped).
    pub(crate) fn after_loss(&self) -> bool {
        self.lost
    }

    pub(crate) fn done(&self) {
        metrics::histogram!(m::ZK_REQUEST_DURATION, "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }

    /// ZooKeeper's definite answer, as an error.
    pub(crate) fn refused(&self, source: ZkError) -> Error {
        metrics::counter!(m::ZK_ERRORS, "kind" => "zk").increment(1);
        Error::Zk {
            path: self.path.to_string(),
            source,
        }
    }

    pub(crate) fn expired(&self) -> Error {
        metrics::counter!(m::ZK_ERRORS, "kind" => "session_expired").increment(1);
        Error::SessionExpired {
            path: self.path.to_string(),
        }
    }

    /// Handles a failed attempt: returns `Ok` to try again, or the error to give up with.
    pub(crate) async fn failed(&mut self, err: ZkError) -> Result<()> {
        let deadline = self.started + self.zk.inner.config.retry_for;
        match err {
            // zookeeper-client reports an I/O failure of the connection (a reset by a
            // killed server) as `Custom`: the request's outcome is as unknown as after
            // a connection loss, and it is retried the same way.
            ZkError::ConnectionLoss
            | ZkError::Timeout
            | ZkError::Throttled
            | ZkError::Custom(_) => {
                self.lost |= !matches!(err, ZkError::Throttled);
                metrics::counter!(m::ZK_RETRIES, "reason" => "connection_loss").increment(1);
                if Instant::now() >= deadline {
                    return Err(self.unavailable(err));
                }
                tokio::time::sleep(backoff(self.attempts)).await;
                self.attempts += 1;
                Ok(())
            }
            ZkError::SessionExpired | ZkError::ClientClosed => {
                let generation = self.zk.inner.session.borrow().generation;
                metrics::counter!(m::ZK_RETRIES, "reason" => "session_expired").increment(1);
                self.lost = true;
                if self.zk.wait_for_new_session(generation, deadline).await {
                    Ok(())
                } else if self.zk.inner.client.load().is_none() {
                    Err(Error::Closed)
                } else {
                    Err(self.unavailable(err))
                }
            }
            other => Err(self.refused(other)),
        }
    }

    fn unavailable(&self, source: ZkError) -> Error {
        metrics::counter!(m::ZK_ERRORS, "kind" => "unavailable").increment(1);
        Error::Unavailable {
            path: self.path.to_string(),
            waited: self.started.elapsed(),
            source,
        }
    }
}

/// 10 ms doubling to 1 s, with ±50 % jitter so that many callers do not retry in step.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(10).saturating_mul(1 << attempt.min(7));
    let base = base.min(Duration::from_secs(1));
    let jitter = RandomState::new().build_hasher().finish() % 1000;
    base.mul_f64(0.5 + jitter as f64 / 1000.0)
}

async fn connect_client(config: &Config, started: Instant) -> Result<zkc::Client> {
    let mut attempt = 0;
    loop {
        let connecting = zkc::Client::connector()
            .with_session_timeout(config.session_timeout)
            .connect(&config.connect);
        match connecting.await {
            Ok(client) => return Ok(client),
            Err(err) if started.elapsed() < config.retry_for => {
                tracing::warn!(connect = %config.connect, %err, "cannot reach ZooKeeper yet; retrying");
                tokio::time::sleep(backoff(attempt + 4)).await;
                attempt += 1;
            }
            Err(source) => {
                return Err(Error::Unavailable {
                    path: "/".into(),
                    waited: started.elapsed(),
                    source,
                })
            }
        }
    }
}

/// Follows the current client's state; after an expiry builds a new client and
/// publishes the new session. Ends when the last `Zk` is dropped or closed.
async fn keep_session(inner: Weak<Inner>) {
    loop {
        let (mut states, mut closed) = {
            let Some(inner) = inner.upgrade() else { return };
            let Some(client) = inner.client.load_full() else {
                return;
            };
            (client.state_watcher(), inner.session.subscribe())
        };
        let expired = loop {
            let state = tokio::select! {
                state = states.changed() => state,
                changed = closed.changed() => {
                    if changed.is_err() || closed.borrow().state == SessionState::Closed {
                        return;
                    }
                    continue;
                }
            };
            let Some(inner) = inner.upgrade() else { return };
            match state {
                zkc::SessionState::Disconnected => {
                    inner.disconnects.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(m::ZK_DISCONNECTS).increment(1);
                    tracing::warn!("ZooKeeper connection lost; the session may survive");
                    inner
                        .session
                        .send_modify(|s| s.state = SessionState::Disconnected);
                }
                zkc::SessionState::SyncConnected | zkc::SessionState::ConnectedReadOnly => {
                    tracing::info!("ZooKeeper connection re-established");
                    inner
                        .session
                        .send_modify(|s| s.state = SessionState::Connected);
                }
                zkc::SessionState::Expired | zkc::SessionState::AuthFailed => break true,
                zkc::SessionState::Closed => return,
            }
        };
        if !expired {
            return;
        }
        // The session is gone, and with it every ephemeral node it held.
        let Some(strong) = inner.upgrade() else {
            return;
        };
        strong.expiries.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::ZK_EXPIRIES).increment(1);
        tracing::error!(
            "ZooKeeper session expired; its ephemeral nodes are gone; building a new session"
        );
        {
            let mut e = strong.ephemerals.lock().unwrap_or_else(|p| p.into_inner());
            e.held.clear();
        }
        strong
            .session
            .send_modify(|s| s.state = SessionState::Expired);
        let config = strong.config.clone();
        drop(strong);
        let mut attempt = 0;
        let client = loop {
            match connect_client(&config, Instant::now()).await {
                Ok(client) => break client,
                Err(err) => {
                    tracing::error!(%err, "cannot build a new ZooKeeper session; retrying");
                    tokio::time::sleep(backoff(attempt + 6)).await;
                    attempt += 1;
                    if inner.strong_count() == 0 {
                        return;
                    }
                }
            }
        };
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.client.load().is_none() {
            return; // closed meanwhile
        }
        let id = client.session_id().0;
        strong.client.store(Some(Arc::new(client)));
        strong.session.send_modify(|s| {
            s.generation += 1;
            s.id = id;
            s.state = SessionState::Connected;
        });
        tracing::info!(
            session = format_args!("{id:#x}"),
            "new ZooKeeper session established"
        );
    }
}
