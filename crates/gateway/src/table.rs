//! The route table: host name → route, immutable once built, cheap to change.
//!
//! Exact host names and wildcard domains (`*.example.com`, which matches exactly one
//! more label: `a.example.com`, not `example.com` nor `a.b.example.com`) live in two
//! maps, so a lookup is at most two hash probes and never allocates. A third map finds
//! an application's route, for updates and removals.
//!
//! # Memory
//!
//! A route is held once, in the compact form of [`Route`]: one allocation with its app
//! id, domains and backends, behind a one-pointer handle. The maps are hashbrown
//! `HashTable`s of handles that copy no names: an app entry is the handle (8 bytes), a
//! domain entry the handle and where the key sits in the route's bytes (16 bytes). An
//! entry is found by the hash of its key and compared against the key's bytes inside
//! the route itself. A million routes of two domains and two backends each (the
//! benchmark's) take 137 MiB for the routes (113 bytes each on average, 144 with the
//! reference counts and the allocator's rounding) and 86 MiB for the maps (hashbrown
//! gives each bucket's table a power of two of slots, 44% to 87% of them used; 48% at
//! that size).
//!
//! Fuller maps were tried: splitting each bucket in as many tables as fill about 76% of
//! their slots at a million routes took the process from 236 to 204 MiB, but its start
//! from 877 to 907 ms (the median of 16 alternating starts on one core): an insert into
//! a fuller table compares more keys, each behind a pointer, and the start has the
//! smaller margin of the two targets (1 s; 400 MB).
//!
//! # Copy on write
//!
//! Each map is split into [`BUCKETS`] buckets behind `Arc`s. A table is cloned by
//! cloning those pointers, and a change copies only the buckets it touches: applying
//! a delta to a million routes copies about 1/256 of them, not all of them, and every
//! other bucket stays shared with the table readers still hold. A bucket is chosen by
//! bits 32 to 39 of the key's hash; the `HashTable` inside uses the low bits for the
//! slot and the top seven for its tags, so neither is constant within a bucket.
//!
//! # Bulk build
//!
//! [`RouteTable::from_routes`], the snapshot decoder (`persist`) and the route stream's
//! snapshots (`sync`) go through a `Builder`: it files each entry, with its hash,
//! under its bucket as the routes arrive (the decoder works the hashes out from the
//! bytes it decodes), then builds every bucket's table at once, sized up front, on every
//! core (the buckets are independent). A bucket's table is small enough to stay in the
//! CPU's caches while it is filled, which is what makes the build fast on one core too.
//! The apps go first: a route replaced by a later one of the same app is left out with
//! all its domains, as an upsert would have removed them.
//!
//! Two applications claiming one domain (the orchestrator refuses that, but a table
//! must survive anything) resolve to the one written last; removing the other then
//! leaves the domain alone.

mod route;

use std::collections::HashSet;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::{Entry, HashTable};

pub(crate) use route::Encoder;
pub use route::{BackendRef, Backends, Route};

/// A fast, per-table randomly seeded hasher: host names are not secret, but a seed per
/// process keeps a crafted set of names from piling into one bucket everywhere.
pub(crate) type RandomState = foldhash::fast::RandomState;

/// Buckets per map.
pub const BUCKETS: usize = 256;

/// The bucket of a hash: bits 32 to 39 (see the module docs).
fn bucket_of(hash: u64) -> usize {
    (hash >> 32) as usize % BUCKETS
}

/// An entry of a map: it finds its key inside the route it points at. Keys are hashed
/// and compared as bytes.
trait Keyed: Clone {
    fn key(&self) -> &[u8];
    fn route(&self) -> &Route;
}

/// An entry of the app map.
#[derive(Clone)]
struct AppEntry(Route);

impl Keyed for AppEntry {
    fn key(&self) -> &[u8] {
        self.0.app().as_bytes()
    }

    fn route(&self) -> &Route {
        &self.0
    }
}

/// An entry of the exact or the wildcard map: the route and where the key sits in its
/// bytes (see `Route::domain_keys`), so that comparing a key reads nothing else. The
/// key of a wildcard (`*.example.com`) is its suffix (`example.com`).
#[derive(Clone)]
struct DomainEntry {
    route: Route,
    start: u32,
    len: u32,
}

impl Keyed for DomainEntry {
    fn key(&self) -> &[u8] {
        self.route.key(self.start, self.len)
    }

    fn route(&self) -> &Route {
        &self.route
    }
}

/// A hash map split into copy-on-write buckets.
#[derive(Clone)]
struct Sharded<T> {
    hasher: RandomState,
    buckets: Vec<Arc<HashTable<T>>>,
}

impl<T: Keyed> Sharded<T> {
    fn new(hasher: RandomState) -> Self {
        Sharded {
            buckets: (0..BUCKETS).map(|_| Arc::new(HashTable::new())).collect(),
            hasher,
        }
    }

    fn get(&self, key: &[u8]) -> Option<&T> {
        let hash = self.hasher.hash_one(key);
        self.buckets[bucket_of(hash)].find(hash, |e| e.key() == key)
    }

    /// Inserts `entry`, replacing the one with the same key.
    fn insert(&mut self, entry: T) {
        let hash = self.hasher.hash_one(entry.key());
        let hasher = &self.hasher;
        let table = Arc::make_mut(&mut self.buckets[bucket_of(hash)]);
        match table.entry(
            hash,
            |e| e.key() == entry.key(),
            |e| hasher.hash_one(e.key()),
        ) {
            Entry::Occupied(mut occupied) => *occupied.get_mut() = entry,
            Entry::Vacant(vacant) => {
                vacant.insert(entry);
            }
        }
    }

    /// Removes the entry of `key` if `remove` says so.
    fn remove_if(&mut self, key: &[u8], remove: impl FnOnce(&T) -> bool) -> Option<T> {
        let hash = self.hasher.hash_one(key);
        let i = bucket_of(hash);
        match self.buckets[i].find(hash, |e| e.key() == key) {
            Some(entry) if remove(entry) => Arc::make_mut(&mut self.buckets[i])
                .find_entry(hash, |e| e.key() == key)
                .ok()
                .map(|occupied| occupied.remove().0),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.len()).sum()
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.buckets.iter().flat_map(|b| b.iter())
    }

    #[cfg(test)]
    fn shares_buckets_with(&self, other: &Self) -> usize {
        self.buckets
            .iter()
            .zip(&other.buckets)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

/// An immutable route table at a version. Clone it to change it; readers of the
/// original are not disturbed.
#[derive(Clone)]
pub struct RouteTable {
    version: u64,
    /// Exact host name → route.
    exact: Sharded<DomainEntry>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → route.
    wildcard: Sharded<DomainEntry>,
    /// Application → its route, to find the domains an update or removal replaces.
    apps: Sharded<AppEntry>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::empty()
    }
}

impl fmt::Debug for RouteTable {
    // A table can hold a million routes: show its size, not its contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("version", &self.version)
            .field("routes", &self.len())
            .field("domains", &self.domain_count())
            .finish()
    }
}

impl RouteTable {
    /// A table with no routes, at version 0.
    pub fn empty() -> RouteTable {
        let hasher = RandomState::default();
        RouteTable {
            version: 0,
            exact: Sharded::new(hasher.clone()),
            wildcard: Sharded::new(hasher.clone()),
            apps: Sharded::new(hasher),
        }
    }

    /// A table holding `routes`, at `version`: the same table as upserting them one by
    /// one in order (a later route of an app replaces an earlier one; a domain claimed
    /// twice goes to the later claimant), built in bulk on every core.
    pub fn from_routes(version: u64, routes: impl IntoIterator<Item = model::Route>) -> RouteTable {
        let routes = routes.into_iter();
        let mut builder = Builder::new(routes.size_hint().0 as u64);
        let mut encoder = Encoder::default();
        for route in routes {
            builder.push(encoder.encode_model(&route));
        }
        builder.finish(version, available_threads())
    }

    /// The version of the last change applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (after applying a batch of changes).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }

    /// Applications routed.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether no application is routed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Host names and wildcards routed.
    pub fn domain_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// The route for a normalised host (lowercase, no port, no trailing dot; see
    /// `model::normalize_host`): an exact name first, then a wildcard one label up.
    pub fn lookup(&self, host: &str) -> Option<&Route> {
        if let Some(entry) = self.exact.get(host.as_bytes()) {
            return Some(&entry.route);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard
            .get(parent.as_bytes())
            .map(|entry| &entry.route)
    }

    /// The route of an application.
    pub fn app(&self, app: &str) -> Option<&Route> {
        self.apps.get(app.as_bytes()).map(|entry| &entry.0)
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.apps.values().map(|entry| &entry.0)
    }

    /// Adds or replaces an application's route.
    pub fn upsert(&mut self, route: model::Route) {
        self.upsert_route(Route::from_model(&route));
    }

    /// Adds or replaces an application's route, already in its compact form.
    pub fn upsert_route(&mut self, route: Route) {
        if let Some(old) = self.apps.get(route.app().as_bytes()).map(|e| e.0.clone()) {
            self.unlink(&old, Some(&route));
        }
        for (start, len, wildcard) in route.domain_keys() {
            let entry = DomainEntry {
                route: route.clone(),
                start,
                len,
            };
            if wildcard {
                self.wildcard.insert(entry);
            } else {
                self.exact.insert(entry);
            }
        }
        self.apps.insert(AppEntry(route));
    }

    /// Removes an application's route; returns whether it was there.
    pub fn remove(&mut self, app: &str) -> bool {
        match self.apps.remove_if(app.as_bytes(), |_| true) {
            Some(old) => {
                self.unlink(&old.0, None);
                true
            }
            None => false,
        }
    }

    /// Removes `old`'s domains that still point at its application and that `new`
    /// (its replacement, if any) does not keep.
    fn unlink(&mut self, old: &Route, new: Option<&Route>) {
        for domain in old.domains() {
            if new.is_some_and(|new| new.domains().any(|d| d == domain)) {
                continue;
            }
            let ours = |current: &DomainEntry| current.route.app() == old.app();
            match domain.strip_prefix("*.") {
                Some(suffix) => self.wildcard.remove_if(suffix.as_bytes(), ours),
                None => self.exact.remove_if(domain.as_bytes(), ours),
            };
        }
    }
}

/// Threads worth using for a bulk build: the CPUs this process may run on.
pub(crate) fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most routes a [`Builder`] reserves room for up front, whatever it is told.
const MAX_ROUTES_HINT: u64 = 1 << 22;

/// Builds a table in bulk (see the module docs): [`push`](Builder::push) the routes in
/// order, then [`finish`](Builder::finish).
pub(crate) struct Builder {
    hasher: RandomState,
    apps: Vec<Vec<(u64, AppEntry)>>,
    exact: Vec<Vec<(u64, DomainEntry)>>,
    wildcard: Vec<Vec<(u64, DomainEntry)>>,
    keys: Keys,
}

impl Builder {
    /// A builder for about `routes` routes (a hint: room is reserved for them and for
    /// two domains each, up to [`MAX_ROUTES_HINT`]; past that, the room grows as they
    /// come).
    pub(crate) fn new(routes: u64) -> Builder {
        let per_bucket = routes.min(MAX_ROUTES_HINT) as usize / BUCKETS;
        // A bucket's share varies by a few standard deviations (sqrt of the mean).
        let slack = |n: usize| if n == 0 { 0 } else { n + 4 * n.isqrt() + 8 };
        Builder {
            hasher: RandomState::default(),
            apps: (0..BUCKETS)
                .map(|_| Vec::with_capacity(slack(per_bucket)))
                .collect(),
            exact: (0..BUCKETS)
                .map(|_| Vec::with_capacity(slack(2 * per_bucket)))
                .collect(),
            wildcard: (0..BUCKETS).map(|_| Vec::new()).collect(),
            keys: Keys::default(),
        }
    }

    /// The hasher of the table being built, for [`Keys`] worked out on other threads.
    pub(crate) fn hasher(&self) -> &RandomState {
        &self.hasher
    }

    /// Adds a route (after those pushed before it).
    pub(crate) fn push(&mut self, route: Route) {
        let mut keys = std::mem::take(&mut self.keys);
        keys.start(&self.hasher, route.app());
        for domain in route.domains() {
            keys.domain(&self.hasher, domain);
        }
        self.push_keyed(route, &keys);
        self.keys = keys;
    }

    /// Adds a route whose [`Keys`] were worked out already (from the strings it was made
    /// of, without reading them back out of the route).
    pub(crate) fn push_keyed(&mut self, route: Route, keys: &Keys) {
        self.push_parts(route, keys.app, &keys.domains);
    }

    fn push_parts(&mut self, route: Route, app: u64, domains: &[u64]) {
        debug_assert_eq!(domains.len(), route.domain_count());
        for (&hash, (start, len, wildcard)) in domains.iter().zip(route.domain_keys()) {
            let entry = DomainEntry {
                route: route.clone(),
                start,
                len,
            };
            let map = if wildcard {
                &mut self.wildcard
            } else {
                &mut self.exact
            };
            map[bucket_of(hash)].push((hash, entry));
        }
        self.apps[bucket_of(app)].push((app, AppEntry(route)));
    }

    /// Adds the routes of a [`KeyedRoutes`], in order, and empties it.
    pub(crate) fn push_all(&mut self, routes: &mut KeyedRoutes) {
        let mut at = 0;
        for (route, app, count) in routes.routes.drain(..) {
            let end = at + count as usize;
            self.push_parts(route, app, &routes.domains[at..end]);
            at = end;
        }
        routes.domains.clear();
    }

    /// The table, at `version`, its buckets built on up to `threads` threads.
    pub(crate) fn finish(self, version: u64, threads: usize) -> RouteTable {
        let hasher = self.hasher;
        // The apps first: a route replaced by a later one of the same app is dropped
        // with all its domains, as an upsert would.
        let built = in_parallel(self.apps, threads, |entries| fill(&hasher, entries, None));
        // Held until the domains are built: their addresses identify them meanwhile.
        let mut replaced_routes = Vec::new();
        let mut apps = Vec::with_capacity(BUCKETS);
        for (table, dropped) in built {
            apps.push(Arc::new(table));
            replaced_routes.extend(dropped);
        }
        let replaced: HashSet<usize> = replaced_routes.iter().map(route_addr).collect();
        let skip = (!replaced.is_empty()).then_some(&replaced);
        let domains = |lists: Vec<Vec<(u64, DomainEntry)>>| -> Vec<Arc<HashTable<DomainEntry>>> {
            in_parallel(lists, threads, |entries| fill(&hasher, entries, skip))
                .into_iter()
                .map(|(table, _)| Arc::new(table))
                .collect()
        };
        let exact = domains(self.exact);
        let wildcard = domains(self.wildcard);
        drop((replaced, replaced_routes));
        RouteTable {
            version,
            exact: Sharded {
                hasher: hasher.clone(),
                buckets: exact,
            },
            wildcard: Sharded {
                hasher: hasher.clone(),
                buckets: wildcard,
            },
            apps: Sharded {
                hasher,
                buckets: apps,
            },
        }
    }
}

/// What a [`Builder`] files a route under, worked out from the strings it is made of:
/// [`start`](Keys::start) with its app id, then each [`domain`](Keys::domain).
#[derive(Debug, Default)]
pub(crate) struct Keys {
    app: u64,
    /// The hash of each domain's key (the name, or a wildcard's suffix).
    domains: Vec<u64>,
}

impl Keys {
    pub(crate) fn start(&mut self, hasher: &RandomState, app: &str) {
        self.app = hasher.hash_one(app.as_bytes());
        self.domains.clear();
    }

    pub(crate) fn domain(&mut self, hasher: &RandomState, domain: &str) {
        let key = domain.strip_prefix("*.").unwrap_or(domain);
        self.domains.push(hasher.hash_one(key.as_bytes()));
    }
}

/// Routes with their [`Keys`], gathered on one thread for a [`Builder`] on another.
#[derive(Default)]
pub(crate) struct KeyedRoutes {
    /// Each route, its app's hash, and how many of `domains` are its.
    routes: Vec<(Route, u64, u32)>,
    domains: Vec<u64>,
}

impl KeyedRoutes {
    pub(crate) fn with_capacity(routes: usize) -> KeyedRoutes {
        KeyedRoutes {
            routes: Vec::with_capacity(routes),
            domains: Vec::with_capacity(routes * 2),
        }
    }

    pub(crate) fn push(&mut self, route: Route, keys: &Keys) {
        let count = u32::try_from(keys.domains.len()).expect("fewer than 2^32 domains");
        self.routes.push((route, keys.app, count));
        self.domains.extend_from_slice(&keys.domains);
    }
}

/// Where a route lives: its identity while it is alive.
fn route_addr(route: &Route) -> usize {
    route.key(0, 0).as_ptr() as usize
}

/// One bucket's table from its entries in order, a later entry replacing an earlier one
/// with the same key; entries of the routes in `skip` are left out. Returns the routes
/// of the replaced entries too.
fn fill<T: Keyed>(
    hasher: &RandomState,
    entries: Vec<(u64, T)>,
    skip: Option<&HashSet<usize>>,
) -> (HashTable<T>, Vec<Route>) {
    let mut table = HashTable::with_capacity(entries.len());
    let mut replaced = Vec::new();
    for (hash, entry) in entries {
        if skip.is_some_and(|skip| skip.contains(&route_addr(entry.route()))) {
            continue;
        }
        match table.entry(
            hash,
            |e: &T| e.key() == entry.key(),
            |e| hasher.hash_one(e.key()),
        ) {
            Entry::Occupied(mut occupied) => {
                let old = std::mem::replace(occupied.get_mut(), entry);
                replaced.push(old.route().clone());
            }
            Entry::Vacant(vacant) => {
                vacant.insert(entry);
            }
        }
    }
    (table, replaced)
}

/// `f` of every item, in order, computed on up to `threads` scoped threads (each a
/// contiguous run of the items).
fn in_parallel<I: Send, O: Send>(
    items: Vec<I>,
    threads: usize,
    f: impl Fn(I) -> O + Sync,
) -> Vec<O> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(threads);
    let mut groups = Vec::with_capacity(threads);
    let mut rest = items.into_iter();
    loop {
        let group: Vec<I> = rest.by_ref().take(per_thread).collect();
        if group.is_empty() {
            break;
        }
        groups.push(group);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = groups
            .into_iter()
            .map(|group| scope.spawn(move || group.into_iter().map(f).collect::<Vec<O>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a table builder thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Backend;

    fn route(app: &str, domains: &[&str]) -> model::Route {
        model::Route {
            app: app.parse().unwrap(),
            domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
            backends: vec![Backend::new("127.0.0.1:8080", 1).unwrap()],
            fail_open: false,
        }
    }

    fn app_of<'a>(table: &'a RouteTable, host: &str) -> Option<&'a str> {
        table.lookup(host).map(|r| r.app())
    }

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_match_one_label() {
        let table = RouteTable::from_routes(
            1,
            [
                route("wild", &["*.example.com"]),
                route("exact", &["www.example.com"]),
                route("apex", &["example.com"]),
            ],
        );
        assert_eq!(app_of(&table, "www.example.com"), Some("exact"));
        assert_eq!(app_of(&table, "shop.example.com"), Some("wild"));
        assert_eq!(app_of(&table, "example.com"), Some("apex"));
        assert_eq!(app_of(&table, "a.b.example.com"), None);
        assert_eq!(app_of(&table, "example.org"), None);
        assert_eq!(app_of(&table, "com"), None);
        assert_eq!(table.len(), 3);
        assert_eq!(table.domain_count(), 3);
    }

    #[test]
    fn an_update_replaces_an_apps_domains_and_a_removal_drops_them() {
        let mut table = RouteTable::from_routes(1, [route("a", &["a.test", "old.test"])]);
        table.upsert(route("a", &["a.test", "new.test"]));
        assert_eq!(app_of(&table, "a.test"), Some("a"));
        assert_eq!(app_of(&table, "new.test"), Some("a"));
        assert_eq!(app_of(&table, "old.test"), None);
        assert!(table.remove("a"));
        assert!(!table.remove("a"));
        assert!(table.is_empty());
        assert_eq!(table.domain_count(), 0);
    }

    #[test]
    fn a_domain_claimed_twice_goes_to_the_last_writer_and_survives_the_others_removal() {
        let mut table = RouteTable::from_routes(1, [route("first", &["shared.test"])]);
        table.upsert(route("second", &["shared.test"]));
        assert_eq!(app_of(&table, "shared.test"), Some("second"));
        table.remove("first");
        assert_eq!(app_of(&table, "shared.test"), Some("second"));
    }

    #[test]
    fn a_bulk_build_is_the_same_table_as_upserts_in_order() {
        let routes = vec![
            route("a", &["a.test", "old-a.test"]),
            route("b", &["b.test", "*.shared.test"]),
            route("c", &["c.test", "*.shared.test"]),
            route("a", &["a.test", "new-a.test"]),
            route("d", &["b.test"]),
        ];
        for threads in [1, 4] {
            let mut builder = Builder::new(routes.len() as u64);
            for r in &routes {
                builder.push(Route::from_model(r));
            }
            let bulk = builder.finish(7, threads);
            let mut one_by_one = RouteTable::empty();
            for route in routes.clone() {
                one_by_one.upsert(route);
            }
            for host in [
                "a.test",
                "old-a.test",
                "new-a.test",
                "b.test",
                "c.test",
                "x.shared.test",
                "nope.test",
            ] {
                assert_eq!(app_of(&bulk, host), app_of(&one_by_one, host), "{host}");
            }
            assert_eq!(app_of(&bulk, "old-a.test"), None);
            assert_eq!(app_of(&bulk, "x.shared.test"), Some("c"));
            assert_eq!(app_of(&bulk, "b.test"), Some("d"));
            assert_eq!(
                (bulk.len(), bulk.domain_count()),
                (one_by_one.len(), one_by_one.domain_count())
            );
            assert_eq!(bulk.app("a").unwrap().domain(1), "new-a.test");
            assert_eq!(bulk.version(), 7);
        }
    }

    #[test]
    fn a_change_copies_only_the_buckets_it_touches() {
        let routes = (0..10_000).map(|i| route(&format!("app{i}"), &[&format!("app{i}.test")]));
        let before = RouteTable::from_routes(1, routes);
        let mut after = before.clone();
        after.upsert(route("app5", &["app5.test", "more.test"]));
        after.set_version(2);
        // One exact bucket or two, one app bucket, no wildcard bucket were copied.
        assert!(after.exact.shares_buckets_with(&before.exact) >= BUCKETS - 2);
        assert_eq!(after.apps.shares_buckets_with(&before.apps), BUCKETS - 1);
        assert_eq!(
            after.wildcard.shares_buckets_with(&before.wildcard),
            BUCKETS
        );
        // The reader of the old table sees the old table.
        assert_eq!(app_of(&before, "more.test"), None);
        assert_eq!(app_of(&after, "more.test"), Some("app5"));
        assert_eq!((before.version(), after.version()), (1, 2));
    }

    #[test]
    fn many_routes_are_found_after_bulk_builds_upserts_and_removals() {
        let routes: Vec<model::Route> = (0..20_000)
            .map(|i| {
                route(
                    &format!("app{i}"),
                    &[&format!("app{i}.test"), &format!("*.app{i}.wild.test")],
                )
            })
            .collect();
        let mut table = RouteTable::from_routes(1, routes.clone());
        assert_eq!((table.len(), table.domain_count()), (20_000, 40_000));
        for i in (0..20_000).step_by(2) {
            assert!(table.remove(&format!("app{i}")));
        }
        for i in 0..20_000 {
            let expected = (i % 2 == 1).then(|| format!("app{i}"));
            assert_eq!(app_of(&table, &format!("app{i}.test")), expected.as_deref());
            assert_eq!(
                app_of(&table, &format!("x.app{i}.wild.test")),
                expected.as_deref()
            );
        }
        for route in routes.iter().step_by(2) {
            table.upsert(route.clone());
        }
        assert_eq!((table.len(), table.domain_count()), (20_000, 40_000));
        for route in &routes {
            assert_eq!(table.app(route.app.as_str()).unwrap(), route);
        }
        let total: usize = table.routes().map(|r| r.domain_count()).sum();
        assert_eq!(total, 40_000);
    }
}
