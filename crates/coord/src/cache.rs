//! A tree cache: every node under a root, in memory, kept current by one persistent
//! recursive watch (ZooKeeper 3.6+ `addWatch`) and filled by a pipelined walk.
//!
//! The walk reads nodes in `multiRead` batches, several in flight, each sized by the
//! average node size seen so far to keep its answer near 128 KiB. The watch is set
//! before the walk, so nothing that happens during the walk is missed. An event makes
//! the cache re-read its node (in the same batches), so the cache converges on what
//! ZooKeeper holds whatever order events and reads come back in. Events during a
//! disconnection can be lost (ZOOKEEPER-4698), and zookeeper-client does not set a
//! persistent watch again when it reconnects, so a reconnection sets the watch anew and
//! triggers a full re-walk that is diffed against the cache; a session expiry sets a new
//! watch on the new session and re-walks too.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zookeeper_client as zkc;

use crate::codec::DecodeError;
use crate::error::{Error, Result};
use crate::zk::{SessionState, Zk};

/// One cached node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The decoded payload, or why it could not be decoded.
    pub data: Result<Arc<[u8]>, DecodeError>,
    /// The node's data version.
    pub version: i32,
    /// The zxid of the node's last change.
    pub mzxid: i64,
}

/// A change the cache applied, as the node's state after it: applying a change twice,
/// or after reading the tree that already holds it, is harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The node was created or changed.
    Upsert {
        /// The node.
        path: String,
        /// Its new state.
        entry: Entry,
    },
    /// The node was deleted.
    Remove {
        /// The node.
        path: String,
    },
    /// Every node the initial walk found has been sent above; what follows are changes.
    Loaded,
}

/// How far the cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStatus {
    /// The initial walk finished.
    pub loaded: bool,
    /// Nodes cached.
    pub nodes: usize,
    /// Full re-walks after a reconnection or an expiry.
    pub reloads: u64,
    /// The largest zxid seen in a node's stat.
    pub max_zxid: i64,
}

type Tree = BTreeMap<String, Entry>;

/// `multiRead` requests a walk or a refresh keeps in flight.
const WALK_CONCURRENCY: usize = 16;
/// Nodes read by one `multiRead` of a walk, at most.
const WALK_BATCH_MAX: usize = 512;
/// Nodes read by the first `multiRead`s of a walk, before node sizes are known.
const WALK_BATCH_FIRST: usize = 16;
/// Parents whose children one `multiRead` of a walk lists, at most: a shard's folder
/// of a thousand apps lists in about 15 KB.
const WALK_PARENTS_PER_READ: usize = 8;
/// What a walk aims to keep one `multiRead` answer under: a small share of
/// `jute.maxbuffer`, so a batch never trips ZooKeeper's response-size alerts.
const WALK_BATCH_BYTES: usize = 128 * 1024;

/// The cache of the tree under one root.
#[derive(Debug)]
pub struct TreeCache {
    tree: Arc<RwLock<Tree>>,
    status: watch::Receiver<CacheStatus>,
    task: JoinHandle<()>,
}

impl TreeCache {
    /// Sets the watch, walks the tree under `root`, and returns once it is loaded.
    ///
    /// When `changes` is given, every node the walk finds is sent there as it is read
    /// (so the receiver can work through the tree while the walk goes on), then
    /// [`Change::Loaded`], then every later change the cache applies in the
    /// background. A slow receiver slows the cache; it does not lose changes. The
    /// receiver must be running before this is called, or a large tree fills the
    /// channel and the walk waits forever.
    pub async fn start(
        zk: &Zk,
        root: &str,
        changes: Option<mpsc::Sender<Change>>,
    ) -> Result<TreeCache> {
        let (events, incoming) = mpsc::unbounded_channel();
        let (generation, pump) = watch_into(zk, root, events.clone()).await?;
        let mut tree = Tree::new();
        walk(
            zk,
            root,
            |path, entry| {
                let change = changes.is_some().then(|| Change::Upsert {
                    path: path.clone(),
                    entry: entry.clone(),
                });
                tree.insert(path, entry);
                change
            },
            changes.as_ref(),
        )
        .await?;
        if let Some(changes) = &changes {
            let _ = changes.send(Change::Loaded).await;
        }
        let tree = Arc::new(RwLock::new(tree));
        let max_zxid = {
            let tree = tree.read().unwrap_or_else(|p| p.into_inner());
            tree.values().map(|e| e.mzxid).max().unwrap_or(0)
        };
        let (status_tx, status) = watch::channel(CacheStatus {
            max_zxid,
            ..CacheStatus::default()
        });
        let keeper = Keeper {
            zk: zk.clone(),
            root: root.to_string(),
            tree: Arc::clone(&tree),
            status: status_tx,
            changes,
            events,
            generation,
            pump,
            reloads: 0,
        };
        keeper.publish();
        let task = tokio::spawn(keeper.run(incoming));
        Ok(TreeCache { tree, status, task })
    }

    /// A cached node.
    pub fn get(&self, path: &str) -> Option<Entry> {
        self.read().get(path).cloned()
    }

    /// The names of a cached node's children, sorted.
    pub fn children(&self, path: &str) -> Vec<String> {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        self.read()
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter_map(|(p, _)| {
                let rest = &p[prefix.len()..];
                (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
            })
            .collect()
    }

    /// Nodes cached.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether nothing is cached (not even the root).
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Runs `f` on the whole cached tree, under a read lock: keep it short.
    pub fn with_tree<R>(&self, f: impl FnOnce(&BTreeMap<String, Entry>) -> R) -> R {
        f(&self.read())
    }

    /// The cache's progress; `.changed()` wakes on every update.
    pub fn status(&self) -> watch::Receiver<CacheStatus> {
        self.status.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TreeCache {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Sets a persistent recursive watch on `root` and pumps its events into `events`
/// until the session ends (after which the watcher must not be polled again). Returns
/// the session generation it was set on and the task that pumps.
async fn watch_into(
    zk: &Zk,
    root: &str,
    events: mpsc::UnboundedSender<zkc::WatchedEvent>,
) -> Result<(u64, JoinHandle<()>)> {
    let (mut watcher, generation) = zk.recursive_watch(root).await?;
    let pump = tokio::spawn(async move {
        loop {
            let event = watcher.changed().await;
            let terminal = event.event_type == zkc::EventType::Session
                && matches!(
                    event.session_state,
                    zkc::SessionState::Expired
                        | zkc::SessionState::Closed
                        | zkc::SessionState::AuthFailed
                );
            if events.send(event).is_err() || terminal {
                return;
            }
        }
    });
    Ok((generation, pump))
}

fn child_path(parent: &str, child: &str) -> String {
    if parent == "/" {
        format!("/{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// A node's payload as the cache holds it: decoded, or why it could not be.
fn decoded(zk: &Zk, path: &str, raw: &[u8]) -> Result<Arc<[u8]>, DecodeError> {
    let data = zk
        .decode(path, raw)
        .map(Arc::from)
        .map_err(|err| match err {
            Error::Decode { source, .. } => source,
            other => DecodeError::Corrupt(other.to_string()),
        });
    if let Err(err) = &data {
        tracing::warn!(zk.path = %path, %err, "cached node cannot be decoded");
    }
    data
}

/// A read node with its children's paths (when asked for), and the bytes its reads
/// brought; `None` for a node that does not exist.
type ReadNode = (String, Option<(Entry, Vec<String>, usize)>);

/// Reads a batch of nodes with one `multiRead`, then, with `children`, the children of
/// those that have any.
async fn read_batch(zk: &Zk, paths: Vec<String>, children: bool) -> Result<Vec<ReadNode>> {
    let found = zk.get_many_raw(&paths).await?;
    let parents: Vec<String> = if children {
        paths
            .iter()
            .zip(&found)
            .filter(|(_, node)| node.as_ref().is_some_and(|(_, stat)| stat.num_children > 0))
            .map(|(path, _)| path.clone())
            .collect()
    } else {
        Vec::new()
    };
    // Few nodes have children, but a parent can have thousands: a few per request.
    let listed = futures::future::try_join_all(
        parents
            .chunks(WALK_PARENTS_PER_READ)
            .map(|chunk| zk.children_many(chunk)),
    )
    .await?;
    let mut listed = listed.into_iter().flatten();
    let mut nodes = Vec::with_capacity(paths.len());
    for (path, node) in paths.into_iter().zip(found) {
        let Some((raw, stat)) = node else {
            nodes.push((path, None));
            continue;
        };
        let kids: Vec<String> = if children && stat.num_children > 0 {
            listed
                .next()
                .flatten()
                .unwrap_or_default()
                .iter()
                .map(|child| child_path(&path, child))
                .collect()
        } else {
            Vec::new()
        };
        let entry = Entry {
            data: decoded(zk, &path, &raw),
            version: stat.version,
            mzxid: stat.mzxid,
        };
        let size = raw.len() + kids.iter().map(String::len).sum::<usize>();
        nodes.push((path, Some((entry, kids, size))));
    }
    Ok(nodes)
}

/// How many nodes the next `multiRead` should read, given what the reads so far
/// brought: as many as fit [`WALK_BATCH_BYTES`] at the average size.
fn batch_size(nodes_read: usize, bytes_read: usize) -> usize {
    if nodes_read < WALK_BATCH_FIRST {
        WALK_BATCH_FIRST
    } else {
        let average = (bytes_read / nodes_read).max(1);
        (WALK_BATCH_BYTES / average).clamp(1, WALK_BATCH_MAX)
    }
}

/// Reads every node under `root` and hands each to `visit`; a change `visit` returns
/// is sent to `changes` before the walk goes on.
///
/// Nodes are read in `multiRead` batches, [`WALK_CONCURRENCY`] batches in flight.
/// A batch holds as many nodes as fit [`WALK_BATCH_BYTES`] at the average size seen
/// so far, so a tree of small nodes is read in large batches and a tree of large
/// ones in small batches.
async fn walk(
    zk: &Zk,
    root: &str,
    mut visit: impl FnMut(String, Entry) -> Option<Change>,
    changes: Option<&mpsc::Sender<Change>>,
) -> Result<()> {
    let mut queue = vec![root.to_string()];
    let mut pending = FuturesUnordered::new();
    let (mut nodes_read, mut bytes_read) = (0usize, 0usize);
    loop {
        while pending.len() < WALK_CONCURRENCY && !queue.is_empty() {
            let batch = batch_size(nodes_read, bytes_read);
            let paths = queue.split_off(queue.len().saturating_sub(batch));
            pending.push(read_batch(zk, paths, true));
        }
        let Some(read) = pending.next().await else {
            return Ok(());
        };
        for (path, node) in read? {
            // Deleted since its parent listed it: the watch reports that.
            let Some((entry, children, size)) = node else {
                continue;
            };
            nodes_read += 1;
            bytes_read += size;
            queue.extend(children);
            if let Some(change) = visit(path, entry) {
                if let Some(changes) = changes {
                    let _ = changes.send(change).await;
                }
            }
        }
    }
}

struct Keeper {
    zk: Zk,
    root: String,
    tree: Arc<RwLock<Tree>>,
    status: watch::Sender<CacheStatus>,
    changes: Option<mpsc::Sender<Change>>,
    events: mpsc::UnboundedSender<zkc::WatchedEvent>,
    /// The session generation the watch is set on.
    generation: u64,
    /// The task pumping the watch's events.
    pump: JoinHandle<()>,
    reloads: u64,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl Keeper {
    async fn run(mut self, mut incoming: mpsc::UnboundedReceiver<zkc::WatchedEvent>) {
        let mut dirty = HashSet::new();
        let mut reload = false;
        while let Some(first) = incoming.recv().await {
            let mut next = Some(first);
            // Take every event already queued, so a burst becomes one pipelined refresh.
            while let Some(event) = next.take().or_else(|| incoming.try_recv().ok()) {
                match (event.event_type, event.session_state) {
                    (zkc::EventType::Session, zkc::SessionState::Disconnected) => {}
                    (zkc::EventType::Session, zkc::SessionState::SyncConnected)
                    | (zkc::EventType::Session, zkc::SessionState::ConnectedReadOnly) => {
                        // zookeeper-client does not set persistent watches again when
                        // it reconnects, so the server forgot this one: set it anew.
                        // Events may also have been lost while disconnected
                        // (ZOOKEEPER-4698): re-walk once it is set.
                        if !self.set_watch(false).await {
                            return;
                        }
                        reload = true;
                    }
                    (zkc::EventType::Session, _) => {
                        if !self.set_watch(true).await {
                            return;
                        }
                        reload = true;
                    }
                    (_, _) => {
                        dirty.insert(event.path);
                    }
                }
            }
            if reload {
                reload = false;
                dirty.clear();
                self.reload().await;
            } else if !dirty.is_empty() {
                self.refresh(std::mem::take(&mut dirty)).await;
            }
        }
    }

    /// Sets the watch again once the session is connected (after an expiry, the new
    /// session) and stops pumping the old watcher; `false` when the layer closed.
    ///
    /// The old watcher is dropped after the new one is set, so zookeeper-client still
    /// has a watcher on the path and does not ask the server to remove the watch.
    async fn set_watch(&mut self, after_expiry: bool) -> bool {
        let mut session = self.zk.session();
        loop {
            let now = *session.borrow_and_update();
            if now.state == SessionState::Closed {
                return false;
            }
            let fresh = !after_expiry || now.generation > self.generation;
            if now.state == SessionState::Connected && fresh {
                match watch_into(&self.zk, &self.root, self.events.clone()).await {
                    Ok((generation, pump)) => {
                        std::mem::replace(&mut self.pump, pump).abort();
                        self.generation = generation;
                        return true;
                    }
                    Err(Error::Closed) => return false,
                    Err(err) => {
                        tracing::warn!(zk.path = %self.root, %err, "cannot set the cache's watch; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            }
            if session.changed().await.is_err() {
                return false;
            }
        }
    }

    /// Re-reads changed nodes and applies them. (A recursive watch reports every
    /// descendant of a created or deleted subtree, so no walk is needed here.)
    async fn refresh(&mut self, paths: HashSet<String>) {
        if !self.try_refresh(paths).await {
            return self.reload().await;
        }
        self.publish();
    }

    /// Applies fresh reads of `paths` (in `multiRead` batches, as a walk reads);
    /// `false` when a read failed.
    async fn try_refresh(&self, paths: HashSet<String>) -> bool {
        let mut reads = FuturesUnordered::new();
        let mut queue: Vec<String> = paths.into_iter().collect();
        let (mut nodes_read, mut bytes_read) = (0usize, 0usize);
        loop {
            while reads.len() < WALK_CONCURRENCY && !queue.is_empty() {
                let batch = batch_size(nodes_read, bytes_read);
                let paths = queue.split_off(queue.len().saturating_sub(batch));
                reads.push(read_batch(&self.zk, paths, false));
            }
            let Some(read) = reads.next().await else {
                break;
            };
            let read = match read {
                Ok(read) => read,
                Err(err) => {
                    tracing::warn!(%err, "cache refresh failed; re-walking the tree");
                    return false;
                }
            };
            for (path, node) in read {
                nodes_read += 1;
                match node {
                    Some((entry, _, size)) => {
                        bytes_read += size;
                        self.upsert(path, entry).await;
                    }
                    None => self.remove(path).await,
                }
            }
        }
        true
    }

    /// Re-walks the whole tree and applies the difference.
    async fn reload(&mut self) {
        let fresh = loop {
            let mut fresh = Tree::new();
            let walked = walk(
                &self.zk,
                &self.root,
                |path, entry| {
                    fresh.insert(path, entry);
                    None
                },
                None,
            )
            .await;
            match walked {
                Ok(()) => break fresh,
                Err(Error::Closed) => return,
                Err(err) => {
                    tracing::warn!(zk.path = %self.root, %err, "cannot re-walk the cached tree; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        self.reloads += 1;
        let gone: Vec<String> = {
            let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
            tree.keys()
                .filter(|p| !fresh.contains_key(*p))
                .cloned()
                .collect()
        };
        for path in gone {
            self.remove(path).await;
        }
        for (path, entry) in fresh {
            let same = {
                let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
                tree.get(&path) == Some(&entry)
            };
            if !same {
                self.upsert(path, entry).await;
            }
        }
        self.publish();
    }

    async fn upsert(&self, path: String, entry: Entry) {
        {
            let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
            if tree.get(&path) == Some(&entry) {
                return;
            }
            tree.insert(path.clone(), entry.clone());
        }
        self.status
            .send_modify(|s| s.max_zxid = s.max_zxid.max(entry.mzxid));
        if let Some(changes) = &self.changes {
            let _ = changes.send(Change::Upsert { path, entry }).await;
        }
    }

    async fn remove(&self, path: String) {
        let removed = {
            let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
            tree.remove(&path).is_some()
        };
        if removed {
            if let Some(changes) = &self.changes {
                let _ = changes.send(Change::Remove { path }).await;
            }
        }
    }

    fn publish(&self) {
        let nodes = self.tree.read().unwrap_or_else(|p| p.into_inner()).len();
        self.status.send_modify(|s| {
            s.loaded = true;
            s.nodes = nodes;
            s.reloads = self.reloads;
        });
    }
}
