//! The orchestrator's view of the region, built from its tree cache: every app, every
//! shard's health and owner, the route of each app, and the log of route changes that
//! the route stream serves.
//!
//! **Invariant:** a route lists an app's healthy backends, or all of them when none is
//! healthy (fail open); the log and the broadcast carry every route change, in order,
//! each with a version greater than the one before.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use coord::cache::{Change, Entry};
use model::{App, AppId, Domain, Route, ShardId, StreamLine};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::layout::{Layout, Node};

/// Route changes kept for gateways that resume; older ones need a full snapshot.
pub const LOG_CAPACITY: usize = 100_000;
/// Route changes buffered per subscriber before it is dropped as too slow.
pub const BROADCAST_CAPACITY: usize = 65_536;

/// A shard's health node: the backends found down, per app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardHealth {
    /// App → addresses of its backends that are down.
    #[serde(default)]
    pub down: BTreeMap<AppId, Vec<String>>,
}

/// An application with its data version (the `If-Match` version).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The application, `version` set from ZooKeeper.
    pub app: Arc<App>,
    /// Its shard.
    pub shard: ShardId,
}

/// The region as this orchestrator sees it.
#[derive(Debug)]
pub struct State {
    layout: Layout,
    apps: BTreeMap<AppId, Stored>,
    domains: HashMap<Domain, AppId>,
    by_shard: HashMap<ShardId, HashSet<AppId>>,
    health: HashMap<ShardId, ShardHealth>,
    owners: HashMap<ShardId, String>,
    routes: HashMap<AppId, Arc<Route>>,
    /// High 16 bits: this process's tag; low 48 bits: a counter. A gateway resuming
    /// with a version of another process gets a full snapshot.
    version: u64,
    log: VecDeque<(u64, Arc<StreamLine>)>,
    /// Every change after this version is in `log`.
    log_base: u64,
    changes: broadcast::Sender<(u64, Arc<StreamLine>)>,
    undecodable: usize,
}

const COUNTER_BITS: u32 = 48;

impl State {
    /// An empty state for `layout`, with a fresh version tag.
    pub fn new(layout: Layout) -> State {
        let tag = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            (h.finish() & 0x7fff) | 1
        };
        let (changes, _) = broadcast::channel(BROADCAST_CAPACITY);
        State {
            layout,
            apps: BTreeMap::new(),
            domains: HashMap::new(),
            by_shard: HashMap::new(),
            health: HashMap::new(),
            owners: HashMap::new(),
            routes: HashMap::new(),
            version: tag << COUNTER_BITS,
            log: VecDeque::new(),
            log_base: tag << COUNTER_BITS,
            changes,
            undecodable: 0,
        }
    }

    /// The current route table version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether `version` was handed out by this process.
    pub fn is_ours(&self, version: u64) -> bool {
        version >> COUNTER_BITS == self.version >> COUNTER_BITS
    }

    /// Applications known.
    pub fn app_count(&self) -> usize {
        self.apps.len()
    }

    /// Nodes that could not be decoded or parsed (alerted in logs).
    pub fn undecodable(&self) -> usize {
        self.undecodable
    }

    /// One application.
    pub fn app(&self, id: &AppId) -> Option<&Stored> {
        self.apps.get(id)
    }

    /// Applications in id order, after `after`, at most `limit`.
    pub fn list(&self, after: Option<&AppId>, limit: usize) -> Vec<Arc<App>> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.apps
            .range::<AppId, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(_, s)| Arc::clone(&s.app))
            .collect()
    }

    /// The application that owns `domain`.
    pub fn domain_owner(&self, domain: &Domain) -> Option<&AppId> {
        self.domains.get(domain)
    }

    /// The apps of a shard.
    pub fn apps_in(&self, shard: ShardId) -> Vec<Arc<App>> {
        self.by_shard
            .get(&shard)
            .into_iter()
            .flatten()
            .filter_map(|id| self.apps.get(id).map(|s| Arc::clone(&s.app)))
            .collect()
    }

    /// A shard's stored health.
    pub fn health(&self, shard: ShardId) -> ShardHealth {
        self.health.get(&shard).cloned().unwrap_or_default()
    }

    /// Owners by shard, as their `&owner` nodes say.
    pub fn owners(&self) -> &HashMap<ShardId, String> {
        &self.owners
    }

    /// Every route, for a snapshot.
    pub fn routes(&self) -> Vec<Arc<Route>> {
        self.routes.values().cloned().collect()
    }

    /// The route of one app.
    pub fn route(&self, app: &AppId) -> Option<&Arc<Route>> {
        self.routes.get(app)
    }

    /// Route changes after `since`, if the log still reaches back that far.
    pub fn changes_since(&self, since: u64) -> Option<Vec<(u64, Arc<StreamLine>)>> {
        if !self.is_ours(since) || since > self.version {
            return None;
        }
        if since < self.log_base {
            return None;
        }
        Some(
            self.log
                .iter()
                .filter(|(v, _)| *v > since)
                .cloned()
                .collect(),
        )
    }

    /// A receiver of every later route change.
    pub fn subscribe(&self) -> broadcast::Receiver<(u64, Arc<StreamLine>)> {
        self.changes.subscribe()
    }

    /// Route-stream subscribers.
    pub fn subscribers(&self) -> usize {
        self.changes.receiver_count()
    }

    /// Loads a whole cached tree without logging route changes (the initial state).
    pub fn load<'a>(&mut self, tree: impl Iterator<Item = (&'a String, &'a Entry)>) {
        for (path, entry) in tree {
            self.apply(path, Some(entry), false);
        }
    }

    /// Applies one change of the cached tree; route changes are logged and broadcast.
    pub fn apply_change(&mut self, change: &Change) {
        match change {
            Change::Upsert { path, entry } => self.apply(path, Some(entry), true),
            Change::Remove { path } => self.apply(path, None, true),
        }
    }

    fn apply(&mut self, path: &str, entry: Option<&Entry>, publish: bool) {
        match self.layout.classify(path) {
            Node::App(shard, id) => {
                let app = entry.and_then(|e| self.parse_app(path, e));
                self.set_app(shard, id, app, publish);
            }
            Node::Health(shard) => {
                let health = entry
                    .and_then(|e| self.parse::<ShardHealth>(path, e))
                    .unwrap_or_default();
                self.set_health(shard, health, publish);
            }
            Node::Owner(shard) => match entry.and_then(|e| e.data.as_ref().ok()) {
                Some(data) => {
                    self.owners
                        .insert(shard, String::from_utf8_lossy(data).into_owned());
                }
                None => {
                    self.owners.remove(&shard);
                }
            },
            Node::Other => {}
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self, path: &str, entry: &Entry) -> Option<T> {
        let parsed = entry
            .data
            .as_ref()
            .map_err(|err| err.to_string())
            .and_then(|data| serde_json::from_slice(data).map_err(|err| err.to_string()));
        match parsed {
            Ok(value) => Some(value),
            Err(err) => {
                self.undecodable += 1;
                tracing::error!(zk.path = path, %err, "cannot read node; ignoring it");
                None
            }
        }
    }

    fn parse_app(&mut self, path: &str, entry: &Entry) -> Option<App> {
        let mut app: App = self.parse(path, entry)?;
        app.version = u64::try_from(entry.version).unwrap_or(0);
        Some(app)
    }

    fn set_app(&mut self, shard: ShardId, id: AppId, app: Option<App>, publish: bool) {
        if let Some(old) = self.apps.remove(&id) {
            for domain in &old.app.domains {
                if self.domains.get(domain) == Some(&id) {
                    self.domains.remove(domain);
                }
            }
            if let Some(set) = self.by_shard.get_mut(&old.shard) {
                set.remove(&id);
            }
        }
        match app {
            Some(app) if app.id == id => {
                for domain in &app.domains {
                    self.domains.insert(domain.clone(), id.clone());
                }
                self.by_shard.entry(shard).or_default().insert(id.clone());
                self.apps.insert(
                    id.clone(),
                    Stored {
                        app: Arc::new(app),
                        shard,
                    },
                );
            }
            Some(app) => {
                self.undecodable += 1;
                tracing::error!(node = %id, app = %app.id, "app node holds another app's id; ignoring it");
            }
            None => {}
        }
        self.reroute(&id, publish);
    }

    fn set_health(&mut self, shard: ShardId, health: ShardHealth, publish: bool) {
        let old = self
            .health
            .insert(shard, health.clone())
            .unwrap_or_default();
        let touched: HashSet<&AppId> = old.down.keys().chain(health.down.keys()).collect();
        let touched: Vec<AppId> = touched.into_iter().cloned().collect();
        for app in touched {
            self.reroute(&app, publish);
        }
    }

    /// Recomputes an app's route; logs and broadcasts it if it changed.
    fn reroute(&mut self, id: &AppId, publish: bool) {
        let route = self.apps.get(id).map(|stored| {
            let down: HashSet<&str> = self
                .health
                .get(&stored.shard)
                .and_then(|h| h.down.get(id))
                .map(|addrs| addrs.iter().map(String::as_str).collect())
                .unwrap_or_default();
            let healthy: Vec<_> = stored
                .app
                .backends
                .iter()
                .filter(|b| !down.contains(b.addr()))
                .cloned()
                .collect();
            let fail_open = healthy.is_empty();
            Arc::new(Route {
                app: id.clone(),
                domains: stored.app.domains.clone(),
                backends: if fail_open {
                    stored.app.backends.clone()
                } else {
                    healthy
                },
                fail_open,
            })
        });
        let line = match (route, self.routes.get(id)) {
            (Some(new), Some(old)) if new == *old => return,
            (Some(new), _) => {
                self.routes.insert(id.clone(), Arc::clone(&new));
                StreamLine::Upsert {
                    version: 0,
                    route: (*new).clone(),
                }
            }
            (None, Some(_)) => {
                self.routes.remove(id);
                StreamLine::Remove {
                    version: 0,
                    app: id.clone(),
                }
            }
            (None, None) => return,
        };
        self.version += 1;
        if !publish {
            // Not logged: nobody can have been handed a version before this one.
            self.log_base = self.version;
            return;
        }
        let version = self.version;
        let line = Arc::new(match line {
            StreamLine::Upsert { route, .. } => StreamLine::Upsert { version, route },
            StreamLine::Remove { app, .. } => StreamLine::Remove { version, app },
            other => other,
        });
        if self.log.len() == LOG_CAPACITY {
            if let Some((evicted, _)) = self.log.pop_front() {
                self.log_base = evicted;
            }
        }
        self.log.push_back((version, Arc::clone(&line)));
        let _ = self.changes.send((version, line));
    }
}
