//! The route table: host name → route, immutable once built, cheap to change.
//!
//! Exact host names and wildcard domains (`*.example.com`, which matches exactly one
//! more label: `a.example.com`, not `example.com` nor `a.b.example.com`) live in two
//! maps, so a lookup is at most two hash probes and never allocates.
//!
//! Each map is split into [`BUCKETS`] buckets behind `Arc`s. A table is cloned by
//! cloning those pointers, and a change copies only the buckets it touches: applying
//! a delta to a million routes copies about 1/256 of them, not all of them, and every
//! other bucket stays shared with the table readers still hold.
//!
//! Two applications claiming one domain (the orchestrator refuses that, but a table
//! must survive anything) resolve to the one written last; removing the other then
//! leaves the domain alone.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// A fast, per-table randomly seeded hasher: host names are not secret, but a seed per
/// process keeps a crafted set of names from piling into one bucket everywhere.
type RandomState = foldhash::fast::RandomState;

use model::{AppId, Route};

/// Buckets per map.
pub const BUCKETS: usize = 256;

/// A hash map split into copy-on-write buckets.
#[derive(Debug, Clone)]
struct Sharded<K, V> {
    hasher: RandomState,
    buckets: Vec<Arc<HashMap<K, V, RandomState>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    fn new(hasher: RandomState) -> Self {
        Sharded {
            buckets: (0..BUCKETS)
                .map(|_| Arc::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
        }
    }

    /// A map of `entries`, later entries winning over earlier ones with the same key,
    /// built bucket by bucket on up to `threads` threads.
    fn build(hasher: RandomState, entries: Vec<(K, V)>, threads: usize) -> Self
    where
        K: Send + Sync,
        V: Send + Sync,
    {
        let mut per_bucket: Vec<Vec<(K, V)>> = (0..BUCKETS).map(|_| Vec::new()).collect();
        for (key, value) in entries {
            let i = (hasher.hash_one(&key) as usize) % BUCKETS;
            per_bucket[i].push((key, value));
        }
        let build_one = |entries: Vec<(K, V)>| {
            let mut map = HashMap::with_capacity_and_hasher(entries.len(), hasher.clone());
            map.extend(entries);
            Arc::new(map)
        };
        let threads = threads.clamp(1, BUCKETS);
        let buckets = if threads == 1 {
            per_bucket.into_iter().map(build_one).collect()
        } else {
            let per_thread = BUCKETS.div_ceil(threads);
            let mut groups = Vec::new();
            let mut rest = per_bucket.into_iter();
            loop {
                let group: Vec<_> = rest.by_ref().take(per_thread).collect();
                if group.is_empty() {
                    break;
                }
                groups.push(group);
            }
            std::thread::scope(|scope| {
                let handles: Vec<_> = groups
                    .into_iter()
                    .map(|group| {
                        let build_one = &build_one;
                        scope.spawn(move || group.into_iter().map(build_one).collect::<Vec<_>>())
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("a table builder thread panicked"))
                    .collect()
            })
        };
        Sharded { hasher, buckets }
    }

    fn bucket<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) as usize) % BUCKETS
    }

    fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.buckets[self.bucket(key)].get(key)
    }

    fn insert(&mut self, key: K, value: V) {
        let i = self.bucket(&key);
        Arc::make_mut(&mut self.buckets[i]).insert(key, value);
    }

    fn remove_if<Q>(&mut self, key: &Q, keep: impl FnOnce(&V) -> bool) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.bucket(key);
        match self.buckets[i].get(key) {
            Some(v) if !keep(v) => Arc::make_mut(&mut self.buckets[i]).remove(key),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.len()).sum()
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.buckets.iter().flat_map(|b| b.values())
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
#[derive(Debug, Clone)]
pub struct RouteTable {
    version: u64,
    /// Exact host name → route.
    exact: Sharded<String, Arc<Route>>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → route.
    wildcard: Sharded<String, Arc<Route>>,
    /// Application → its route, to find the domains an update or removal replaces.
    apps: Sharded<AppId, Arc<Route>>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::empty()
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
    pub fn from_routes(version: u64, routes: impl IntoIterator<Item = Route>) -> RouteTable {
        // The last route of each app wins; drop the earlier ones first, so no domain of a
        // replaced route survives.
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut last: HashMap<&AppId, usize, RandomState> =
            HashMap::with_capacity_and_hasher(routes.len(), RandomState::default());
        for (i, route) in routes.iter().enumerate() {
            last.insert(&route.app, i);
        }
        let keep: Vec<bool> = {
            let mut keep = vec![false; routes.len()];
            for i in last.values() {
                keep[*i] = true;
            }
            keep
        };
        drop(last);
        let routes: Vec<Arc<Route>> = routes
            .into_iter()
            .zip(keep)
            .filter_map(|(route, keep)| keep.then_some(route))
            .collect();
        let (mut exact, mut wildcard) = (Vec::with_capacity(routes.len()), Vec::new());
        for route in &routes {
            for domain in &route.domains {
                match domain.suffix() {
                    Some(suffix) => wildcard.push((suffix.to_string(), Arc::clone(route))),
                    None => exact.push((domain.as_str().to_string(), Arc::clone(route))),
                }
            }
        }
        let apps: Vec<(AppId, Arc<Route>)> =
            routes.into_iter().map(|r| (r.app.clone(), r)).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let hasher = RandomState::default();
        RouteTable {
            version,
            exact: Sharded::build(hasher.clone(), exact, threads),
            wildcard: Sharded::build(hasher.clone(), wildcard, threads),
            apps: Sharded::build(hasher, apps, threads),
        }
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
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        if let Some(route) = self.exact.get(host) {
            return Some(route);
        }
        let (_, parent) = host.split_once('.')?;
        self.wildcard.get(parent)
    }

    /// The route of an application.
    pub fn app(&self, app: &AppId) -> Option<&Arc<Route>> {
        self.apps.get(app)
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.apps.values()
    }

    /// Adds or replaces an application's route.
    pub fn upsert(&mut self, route: Route) {
        let route = Arc::new(route);
        if let Some(old) = self.apps.get(&route.app).cloned() {
            self.unlink(&old, Some(&route));
        }
        for domain in &route.domains {
            match domain.suffix() {
                Some(suffix) => self.wildcard.insert(suffix.to_string(), Arc::clone(&route)),
                None => self
                    .exact
                    .insert(domain.as_str().to_string(), Arc::clone(&route)),
            }
        }
        self.apps.insert(route.app.clone(), route);
    }

    /// Removes an application's route; returns whether it was there.
    pub fn remove(&mut self, app: &AppId) -> bool {
        match self.apps.remove_if(app, |_| false) {
            Some(old) => {
                self.unlink(&old, None);
                true
            }
            None => false,
        }
    }

    /// Removes `old`'s domains that still point at its application and that `new`
    /// (its replacement, if any) does not keep.
    fn unlink(&mut self, old: &Route, new: Option<&Route>) {
        for domain in &old.domains {
            if new.is_some_and(|new| new.domains.contains(domain)) {
                continue;
            }
            let someone_else = |current: &Arc<Route>| current.app != old.app;
            match domain.suffix() {
                Some(suffix) => self.wildcard.remove_if(suffix, someone_else),
                None => self.exact.remove_if(domain.as_str(), someone_else),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::Backend;

    fn route(app: &str, domains: &[&str]) -> Route {
        Route {
            app: app.parse().unwrap(),
            domains: domains.iter().map(|d| d.parse().unwrap()).collect(),
            backends: vec![Backend::new("127.0.0.1:8080", 1).unwrap()],
            fail_open: false,
        }
    }

    fn app_of<'a>(table: &'a RouteTable, host: &str) -> Option<&'a str> {
        table.lookup(host).map(|r| r.app.as_str())
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
        assert!(table.remove(&"a".parse().unwrap()));
        assert!(!table.remove(&"a".parse().unwrap()));
        assert!(table.is_empty());
        assert_eq!(table.domain_count(), 0);
    }

    #[test]
    fn a_domain_claimed_twice_goes_to_the_last_writer_and_survives_the_others_removal() {
        let mut table = RouteTable::from_routes(1, [route("first", &["shared.test"])]);
        table.upsert(route("second", &["shared.test"]));
        assert_eq!(app_of(&table, "shared.test"), Some("second"));
        table.remove(&"first".parse().unwrap());
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
        let bulk = RouteTable::from_routes(7, routes.clone());
        let mut one_by_one = RouteTable::empty();
        for route in routes {
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
        assert_eq!(bulk.version(), 7);
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
}
