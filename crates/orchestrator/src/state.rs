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
    /// The cache's initial walk has been applied: changes from now on are published.
    loaded: bool,
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
            loaded: false,
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

    /// Whether the cache's initial walk has been applied.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// What every route is made of, for a snapshot: cheap to take under the lock,
    /// and written out as route lines after it is released.
    pub fn route_sources(&self) -> Vec<RouteSource> {
        self.apps
            .iter()
            .map(|(id, stored)| RouteSource {
                app: Arc::clone(&stored.app),
                down: self.down(stored.shard, id).to_vec(),
            })
            .collect()
    }

    /// The route of one app.
    pub fn route(&self, id: &AppId) -> Option<Route> {
        let stored = self.apps.get(id)?;
        Some(
            RouteSource {
                app: Arc::clone(&stored.app),
                down: self.down(stored.shard, id).to_vec(),
            }
            .to_route(),
        )
    }

    /// The addresses of an app's backends found down.
    fn down(&self, shard: ShardId, id: &AppId) -> &[String] {
        self.health
            .get(&shard)
            .and_then(|h| h.down.get(id))
            .map_or(&[], Vec::as_slice)
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
            self.apply(path, Some(entry));
        }
        self.loaded = true;
    }

    /// Applies one change of the cached tree. Until [`Change::Loaded`], changes are
    /// the initial walk's nodes and build the state quietly; after it, route changes
    /// are logged and broadcast.
    pub fn apply_change(&mut self, change: &Change) {
        match change {
            Change::Upsert { path, entry } => self.apply(path, Some(entry)),
            Change::Remove { path } => self.apply(path, None),
            Change::Loaded => self.loaded = true,
        }
    }

    fn apply(&mut self, path: &str, entry: Option<&Entry>) {
        match self.layout.classify(path) {
            Node::App(shard, id) => {
                let app = entry.and_then(|e| self.parse_app(path, e));
                self.set_app(shard, id, app);
            }
            Node::Health(shard) => {
                let health = entry
                    .and_then(|e| self.parse::<ShardHealth>(path, e))
                    .unwrap_or_default();
                self.set_health(shard, health);
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
        let parsed = match &entry.data {
            Ok(data) => App::from_stored(data),
            Err(err) => Err(err.to_string()),
        };
        match parsed {
            Ok(mut app) => {
                app.version = u64::try_from(entry.version).unwrap_or(0);
                Some(app)
            }
            Err(err) => {
                self.undecodable += 1;
                tracing::error!(zk.path = path, %err, "cannot read app node; ignoring it");
                None
            }
        }
    }

    fn set_app(&mut self, shard: ShardId, id: AppId, app: Option<App>) {
        let before = self.route_if_loaded(&id);
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
        let after = self.route_if_loaded(&id);
        self.publish(&id, before, after);
    }

    fn set_health(&mut self, shard: ShardId, health: ShardHealth) {
        let touched: Vec<AppId> = {
            let old = self.health.get(&shard);
            let touched: HashSet<&AppId> = old
                .into_iter()
                .flat_map(|h| h.down.keys())
                .chain(health.down.keys())
                .collect();
            touched.into_iter().cloned().collect()
        };
        let before: Vec<Option<Route>> =
            touched.iter().map(|id| self.route_if_loaded(id)).collect();
        self.health.insert(shard, health);
        for (id, before) in touched.iter().zip(before) {
            let after = self.route_if_loaded(id);
            self.publish(id, before, after);
        }
    }

    /// An app's route, once routes are published; nothing is built while loading.
    fn route_if_loaded(&self, id: &AppId) -> Option<Route> {
        if self.loaded {
            self.route(id)
        } else {
            None
        }
    }

    /// Logs and broadcasts an app's route change, if it changed. While loading,
    /// only the version moves.
    fn publish(&mut self, id: &AppId, before: Option<Route>, after: Option<Route>) {
        if !self.loaded {
            self.version += 1;
            // Not logged: nobody can have been handed a version before this one.
            self.log_base = self.version;
            return;
        }
        let version = self.version + 1;
        let line = Arc::new(match (before, after) {
            (Some(old), Some(new)) if old == new => return,
            (_, Some(route)) => StreamLine::Upsert { version, route },
            (Some(_), None) => StreamLine::Remove {
                version,
                app: id.clone(),
            },
            (None, None) => return,
        });
        self.version = version;
        if self.log.len() == LOG_CAPACITY {
            if let Some((evicted, _)) = self.log.pop_front() {
                self.log_base = evicted;
            }
        }
        self.log.push_back((version, Arc::clone(&line)));
        let _ = self.changes.send((version, line));
    }
}

/// An app and its backends found down: what its route is made of.
#[derive(Debug, Clone)]
pub struct RouteSource {
    app: Arc<App>,
    down: Vec<String>,
}

impl RouteSource {
    /// Every backend is down, so the route lists them all.
    fn fail_open(&self) -> bool {
        self.app
            .backends
            .iter()
            .all(|b| self.down.iter().any(|d| d == b.addr()))
    }

    /// The backends the route lists.
    fn backends(&self) -> impl Iterator<Item = &model::Backend> {
        let fail_open = self.fail_open();
        self.app
            .backends
            .iter()
            .filter(move |b| fail_open || !self.down.iter().any(|d| d == b.addr()))
    }

    /// The route itself.
    pub fn to_route(&self) -> Route {
        Route {
            app: self.app.id.clone(),
            domains: self.app.domains.clone(),
            backends: self.backends().cloned().collect(),
            fail_open: self.fail_open(),
        }
    }

    /// Appends the route's line of a snapshot (`{"type":"route",..}` and a newline)
    /// without building the route: the same bytes as [`StreamLine::Route`] of
    /// [`RouteSource::to_route`].
    pub fn write_line(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, &RouteLine(self)).expect("routes serialise");
        out.push(b'\n');
    }
}

/// A snapshot's `route` line, serialised field by field from its source.
struct RouteLine<'a>(&'a RouteSource);

impl Serialize for RouteLine<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Backends<'a>(&'a RouteSource);
        impl Serialize for Backends<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.backends())
            }
        }
        let source = self.0;
        let mut line = serializer.serialize_struct("RouteLine", 5)?;
        line.serialize_field("type", "route")?;
        line.serialize_field("app", &source.app.id)?;
        line.serialize_field("domains", &source.app.domains)?;
        line.serialize_field("backends", &Backends(source))?;
        line.serialize_field("fail_open", &source.fail_open())?;
        line.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(backends: &[&str], down: &[&str]) -> RouteSource {
        let app = App {
            id: "shop".parse().unwrap(),
            domains: vec![
                "shop.example.com".parse().unwrap(),
                "*.shop.example.com".parse().unwrap(),
            ],
            backends: backends
                .iter()
                .enumerate()
                .map(|(i, a)| model::Backend::new(*a, i as u16 + 1).unwrap())
                .collect(),
            health_check: None,
            version: 3,
        };
        RouteSource {
            app: Arc::new(app),
            down: down.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn a_route_line_is_the_stream_line_of_the_route() {
        let cases = [
            source(&["10.0.0.1:80", "10.0.0.2:80"], &[]),
            source(&["10.0.0.1:80", "10.0.0.2:80"], &["10.0.0.2:80"]),
            source(
                &["10.0.0.1:80", "10.0.0.2:80"],
                &["10.0.0.1:80", "10.0.0.2:80"],
            ),
            source(&["10.0.0.1:80"], &["10.9.9.9:80"]),
        ];
        let mut expected_backends = Vec::new();
        for case in &cases {
            let route = case.to_route();
            expected_backends.push((route.backends.len(), route.fail_open));
            let mut line = Vec::new();
            case.write_line(&mut line);
            assert_eq!(line, StreamLine::Route(route).to_line());
        }
        // Healthy ones only; all of them, flagged, when none is healthy.
        assert_eq!(
            expected_backends,
            [(2, false), (1, false), (2, true), (1, false)]
        );
    }
}
