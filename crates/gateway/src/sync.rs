//! Following the orchestrators' route stream (`GET {url}/v1/routes?since=V`, wire format
//! in `model::route`), and the guards that stand between it and the served table
//! (invariant 1: a gateway never forgets its routes).
//!
//! - A 503 (an orchestrator that is not ready, invariant 2) is never read as a table: the
//!   gateway logs it and tries the next URL.
//! - A snapshot is built aside and applied only after its `ready` line: a stream that
//!   breaks halfway leaves the served table as it was.
//! - Reconnecting resumes with `since=` the version the gateway has; a failed or ended
//!   stream fails over to the next URL, after a jittered, exponential delay; a stream
//!   silent for `ping_timeout` is dead.
//! - An update that would empty a non-empty table, or remove more than the configured
//!   share of routes (see `config::Guard`), is **held**: not applied, logged as an error,
//!   shown by `switchyard_gateway_held_updates` and `GET /admin/held`. Later changes pile
//!   onto the held table, not the served one. It is applied when an operator confirms it
//!   (`POST /admin/confirm`), when a later snapshot passes the guards, or (a mass
//!   deletion, never an emptying) when it has been held for `confirm_window`.
//! - With no orchestrator reachable the gateway serves on, forever; staleness grows.
//!
//! Changes are applied by cloning the served table (cheap: it shares its buckets),
//! applying, and storing it in the `ArcSwap` the proxy reads; every applied table goes to
//! the snapshot writer.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use model::{AppId, Route, StreamLine};

use crate::config::{Guard, HoldReason};
use crate::persist;
use crate::table::{self, Builder, Encoder};
use crate::RouteTable;

/// Longest line the gateway accepts on a route stream (a route has at most 1,000
/// domains and 1,000 backends: well under this).
const MAX_LINE_BYTES: usize = 4 << 20;
/// Deltas applied in one clone-and-swap at most.
const MAX_BATCH: usize = 10_000;

/// The settings the stream follower and the guards use.
#[derive(Debug, Clone)]
pub(crate) struct SyncConfig {
    pub(crate) guard: Guard,
    pub(crate) burst_window: Duration,
    pub(crate) confirm_window: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
}

/// One change of a live stream.
enum Delta {
    Upsert(u64, Route),
    Remove(u64, AppId),
}

impl Delta {
    fn version(&self) -> u64 {
        match self {
            Delta::Upsert(v, _) | Delta::Remove(v, _) => *v,
        }
    }
}

/// An update the guards hold.
struct Held {
    /// The table the update (and every change after it) leads to.
    target: RouteTable,
    reason: HoldReason,
    /// Since when the gateway has been holding (continuously).
    since: Instant,
    /// The version that was first held; `target.version()` is the latest.
    first_version: u64,
    /// Routes of the served table the target lacks, at the last evaluation.
    removed: usize,
    /// When the stream last said the target is current.
    synced_at: SystemTime,
}

impl Held {
    /// Whether `version` names this hold: anything from its first version to its latest.
    fn names(&self, version: u64) -> bool {
        let (a, b) = (self.first_version, self.target.version());
        (a.min(b)..=a.max(b)).contains(&version)
    }
}

/// Removes applied recently, counted together by the mass-deletion guard.
struct RemovalWindow {
    started: Instant,
    /// Routes in the table when the window began.
    baseline: usize,
    /// Applications removed since, and not added back.
    removed: HashSet<AppId>,
}

impl RemovalWindow {
    fn new(baseline: usize) -> RemovalWindow {
        RemovalWindow {
            started: Instant::now(),
            baseline,
            removed: HashSet::new(),
        }
    }
}

struct State {
    /// A table was loaded from disk or applied from an orchestrator.
    loaded: bool,
    stopping: bool,
    /// When the served table was last known to match an orchestrator's.
    synced_at: SystemTime,
    held: Option<Held>,
    window: RemovalWindow,
    /// Why the last stream attempt ended, for `/readyz` and `/admin/held`.
    last_stream_error: Option<String>,
}

/// Stream counters, sampled by `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct StreamStats {
    pub(crate) connects: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) not_ready: AtomicU64,
    pub(crate) snapshots_applied: AtomicU64,
    pub(crate) deltas_applied: AtomicU64,
    pub(crate) updates_held: AtomicU64,
}

/// What the admin API shows of a held update.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldView {
    /// The version first held; confirm with this (or any up to `latest_version`).
    pub version: u64,
    /// The version the held table has reached with the changes streamed since.
    pub latest_version: u64,
    /// `empty_table` or `mass_deletion`.
    pub reason: &'static str,
    /// Plain words for the log and the operator.
    pub detail: String,
    /// Routes served now.
    pub served_routes: usize,
    /// Routes the held table has.
    pub held_routes: usize,
    /// Served routes the held table lacks.
    pub removed_routes: usize,
    /// Seconds it has been held.
    pub held_seconds: f64,
    /// Seconds until it is applied without confirmation; `None`: only an operator can.
    pub auto_apply_in_seconds: Option<f64>,
}

/// Why a confirmation was refused.
#[derive(Debug)]
pub(crate) enum ConfirmError {
    NothingHeld,
    OtherVersion(HeldView),
}

/// The gateway's routing state: the served table, what is held, and readiness.
pub(crate) struct Control {
    table: Arc<ArcSwap<RouteTable>>,
    state: Mutex<State>,
    writer: persist::Writer,
    config: SyncConfig,
    pub(crate) stats: StreamStats,
    registry: crate::metrics::Registry,
    /// How long loading the snapshot took at start-up.
    load_duration: Duration,
    /// The TLS certificates, when the gateway serves TLS.
    pub(crate) tls: Option<Arc<crate::tls::CertFolder>>,
    /// The proxy, once it serves (its per-thread connection counts are sampled).
    pub(crate) proxy: std::sync::OnceLock<std::sync::Weak<crate::proxy::Proxy>>,
}

impl Control {
    /// `loaded`: the table came from disk. `synced_at`: when it was last in sync with an
    /// orchestrator, as far as anyone knows (the snapshot file's modification time).
    pub(crate) fn new(
        table: Arc<ArcSwap<RouteTable>>,
        loaded: bool,
        synced_at: SystemTime,
        load_duration: Duration,
        writer: persist::Writer,
        config: SyncConfig,
        tls: Option<Arc<crate::tls::CertFolder>>,
    ) -> Control {
        let baseline = table.load().len();
        Control {
            table,
            state: Mutex::new(State {
                loaded,
                stopping: false,
                synced_at,
                held: None,
                window: RemovalWindow::new(baseline),
                last_stream_error: None,
            }),
            writer,
            config,
            stats: StreamStats::default(),
            registry: crate::metrics::Registry::new(),
            load_duration,
            tls,
            proxy: std::sync::OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn table(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.table
    }

    pub(crate) fn writer(&self) -> &persist::Writer {
        &self.writer
    }

    /// Serves `table` and hands it to the snapshot writer.
    fn store(&self, state: &mut State, table: RouteTable) {
        let table = Arc::new(table);
        self.table.store(Arc::clone(&table));
        self.writer.submit(table);
        state.loaded = true;
    }

    /// The version a reconnecting stream resumes from: that of the held table if one is
    /// held (it is the newest the gateway has seen), else that of the served one; `None`
    /// before any table.
    fn resume_version(&self) -> Option<u64> {
        let state = self.lock();
        match &state.held {
            Some(held) => Some(held.target.version()),
            None if state.loaded => Some(self.table.load().version()),
            None => None,
        }
    }

    /// A complete snapshot from an orchestrator: applied, or held.
    fn apply_snapshot(&self, new: RouteTable) {
        let mut state = self.lock();
        let served = self.table.load_full();
        let removed = served
            .routes()
            .filter(|route| new.app(route.app()).is_none())
            .count();
        if new.version() < served.version() {
            tracing::warn!(
                table.version = new.version(),
                served.version = served.version(),
                "an orchestrator sent a snapshot older than the served table; applying it"
            );
        }
        match self.config.guard.verdict(served.len(), removed, new.len()) {
            None => {
                if state.held.take().is_some() {
                    tracing::warn!(
                        table.version = new.version(),
                        routes = new.len(),
                        "a new snapshot passes the guards: the held update is dropped"
                    );
                }
                tracing::info!(
                    table.version = new.version(),
                    routes = new.len(),
                    removed,
                    "route table snapshot applied"
                );
                state.window = RemovalWindow::new(new.len());
                state.synced_at = SystemTime::now();
                self.stats.snapshots_applied.fetch_add(1, Ordering::Relaxed);
                self.store(&mut state, new);
            }
            Some(reason) => {
                let first_version = new.version();
                self.hold(
                    &mut state,
                    new,
                    reason,
                    removed,
                    served.len(),
                    first_version,
                )
            }
        }
    }

    /// Holds `target` (or replaces the table already held, keeping the hold's start).
    fn hold(
        &self,
        state: &mut State,
        target: RouteTable,
        reason: HoldReason,
        removed: usize,
        served: usize,
        first_version: u64,
    ) {
        let detail = describe(reason, removed, served, target.len());
        match &mut state.held {
            Some(held) => {
                tracing::warn!(
                    table.version = target.version(),
                    held.version = held.first_version,
                    "{detail}: the newer update is held too (replacing the held one)"
                );
                held.target = target;
                held.reason = reason;
                held.removed = removed;
                held.synced_at = SystemTime::now();
            }
            None => {
                let auto = match reason {
                    HoldReason::Empty => "only an operator can apply it".to_string(),
                    HoldReason::MassDeletion => format!(
                        "applied by itself if still held after {}",
                        crate::config::format_duration(self.config.confirm_window)
                    ),
                };
                tracing::error!(
                    table.version = target.version(),
                    served.version = self.table.load().version(),
                    "route table update HELD, not applied: {detail}. Check the orchestrators; \
                     to apply it, POST /admin/confirm {{\"version\":{first_version}}} on the admin API ({auto})"
                );
                self.stats.updates_held.fetch_add(1, Ordering::Relaxed);
                state.held = Some(Held {
                    target,
                    reason,
                    since: Instant::now(),
                    first_version,
                    removed,
                    synced_at: SystemTime::now(),
                });
            }
        }
    }

    /// Live changes, in stream order: applied in one swap, or held.
    fn apply_deltas(&self, batch: Vec<Delta>) {
        if batch.is_empty() {
            return;
        }
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(held) = &mut state.held {
            // Order matters, so nothing overtakes what is held.
            let mut applied = 0;
            for delta in batch {
                if delta.version() <= held.target.version() {
                    continue;
                }
                applied += 1;
                match delta {
                    Delta::Upsert(version, route) => {
                        held.target.upsert(route);
                        held.target.set_version(version);
                    }
                    Delta::Remove(version, app) => {
                        held.target.remove(app.as_str());
                        held.target.set_version(version);
                    }
                }
            }
            if applied > 0 {
                tracing::info!(
                    table.version = held.target.version(),
                    changes = applied,
                    "changes added to the held update"
                );
            }
            return;
        }
        let served = self.table.load_full();
        if state.window.started.elapsed() >= self.config.burst_window {
            state.window = RemovalWindow::new(served.len());
        }
        let mut next = (*served).clone();
        let mut first_version = None;
        let mut applied = 0u64;
        for delta in batch {
            if delta.version() <= next.version() {
                tracing::debug!(
                    version = delta.version(),
                    table.version = next.version(),
                    "skipping a change the table already has"
                );
                continue;
            }
            first_version.get_or_insert(delta.version());
            applied += 1;
            match delta {
                Delta::Upsert(version, route) => {
                    state.window.removed.remove(&route.app);
                    next.upsert(route);
                    next.set_version(version);
                }
                Delta::Remove(version, app) => {
                    if next.remove(app.as_str()) {
                        state.window.removed.insert(app);
                    }
                    next.set_version(version);
                }
            }
        }
        let Some(first_version) = first_version else {
            return;
        };
        let before = state.window.baseline.max(served.len());
        let removed = state.window.removed.len();
        match self.config.guard.verdict(before, removed, next.len()) {
            None => {
                self.stats
                    .deltas_applied
                    .fetch_add(applied, Ordering::Relaxed);
                self.store(state, next);
            }
            Some(reason) => {
                let removed = served
                    .routes()
                    .filter(|route| next.app(route.app()).is_none())
                    .count();
                self.hold(state, next, reason, removed, served.len(), first_version);
            }
        }
    }

    /// The stream is alive and the gateway has everything it sent.
    fn mark_synced(&self) {
        let mut state = self.lock();
        state.last_stream_error = None;
        match &mut state.held {
            Some(held) => held.synced_at = SystemTime::now(),
            None => state.synced_at = SystemTime::now(),
        }
    }

    fn stream_ended(&self, why: String) {
        self.lock().last_stream_error = Some(why);
    }

    /// An operator's confirmation of the held update named by `version`.
    pub(crate) fn confirm(&self, version: u64) -> Result<(u64, usize), ConfirmError> {
        let mut state = self.lock();
        let Some(held) = &state.held else {
            return Err(ConfirmError::NothingHeld);
        };
        if !held.names(version) {
            let view = self.view(&state).expect("something is held");
            return Err(ConfirmError::OtherVersion(view));
        }
        let held = state.held.take().expect("something is held");
        tracing::warn!(
            table.version = held.target.version(),
            routes = held.target.len(),
            "held route table update confirmed by an operator: applying it"
        );
        Ok(self.apply_held(&mut state, held))
    }

    /// Applies a held mass deletion that has been held for the confirmation window.
    pub(crate) fn expire_held(&self) {
        let mut state = self.lock();
        let due = state.held.as_ref().is_some_and(|held| {
            held.reason != HoldReason::Empty && held.since.elapsed() >= self.config.confirm_window
        });
        if due {
            let held = state.held.take().expect("something is held");
            tracing::warn!(
                table.version = held.target.version(),
                routes = held.target.len(),
                window = %crate::config::format_duration(self.config.confirm_window),
                "held route table update persisted for the confirmation window: applying it"
            );
            self.apply_held(&mut state, held);
        }
    }

    fn apply_held(&self, state: &mut State, held: Held) -> (u64, usize) {
        let applied = (held.target.version(), held.target.len());
        state.window = RemovalWindow::new(held.target.len());
        state.synced_at = held.synced_at;
        self.store(state, held.target);
        applied
    }

    /// The held update, for the admin API.
    pub(crate) fn held(&self) -> Option<HeldView> {
        self.view(&self.lock())
    }

    fn view(&self, state: &State) -> Option<HeldView> {
        let held = state.held.as_ref()?;
        let served = self.table.load().len();
        let held_seconds = held.since.elapsed().as_secs_f64();
        Some(HeldView {
            version: held.first_version,
            latest_version: held.target.version(),
            reason: match held.reason {
                HoldReason::Empty => "empty_table",
                HoldReason::MassDeletion => "mass_deletion",
            },
            detail: describe(held.reason, held.removed, served, held.target.len()),
            served_routes: served,
            held_routes: held.target.len(),
            removed_routes: held.removed,
            held_seconds,
            auto_apply_in_seconds: match held.reason {
                HoldReason::Empty => None,
                HoldReason::MassDeletion => {
                    Some((self.config.confirm_window.as_secs_f64() - held_seconds).max(0.0))
                }
            },
        })
    }

    /// `Ok` when the gateway can do its whole job, else why not.
    pub(crate) fn readiness(&self) -> Result<(), String> {
        let state = self.lock();
        if state.stopping {
            return Err("the gateway is stopping (draining its connections)".into());
        }
        if !state.loaded {
            let mut why = "no route table yet: there was no snapshot on disk, and no orchestrator has sent a complete one".to_string();
            if let Some(error) = &state.last_stream_error {
                why.push_str(&format!(" (last attempt: {error})"));
            }
            return Err(why);
        }
        Ok(())
    }

    pub(crate) fn set_stopping(&self) {
        self.lock().stopping = true;
    }

    /// Seconds since the served table was last known to be current.
    pub(crate) fn staleness(&self) -> Duration {
        let synced_at = self.lock().synced_at;
        SystemTime::now()
            .duration_since(synced_at)
            .unwrap_or_default()
    }

    /// `/metrics`: this gateway's metrics, then the global recorder's (the proxy's
    /// counters and gauges), then the proxy's latency histogram.
    pub(crate) fn render_metrics(&self) -> String {
        let mut text = self.registry.render(|| self.sample_metrics());
        if let Some(proxy) = self.proxy.get().and_then(std::sync::Weak::upgrade) {
            proxy.render_metrics(&mut text);
        }
        text
    }

    /// Sets this gateway's sampled metrics (see `metrics`).
    fn sample_metrics(&self) {
        use crate::metrics as m;
        let table = self.table.load();
        let ready = self.readiness().is_ok();
        let held = self.held();
        metrics::gauge!(m::ROUTES).set(table.len() as f64);
        metrics::gauge!(m::DOMAINS).set(table.domain_count() as f64);
        metrics::gauge!(m::TABLE_VERSION).set(table.version() as f64);
        metrics::gauge!(m::STALENESS).set(self.staleness().as_secs_f64());
        metrics::gauge!(m::READY).set(if ready { 1.0 } else { 0.0 });
        metrics::gauge!(m::HELD_UPDATES).set(if held.is_some() { 1.0 } else { 0.0 });
        metrics::gauge!(m::HELD_AGE).set(held.as_ref().map_or(0.0, |h| h.held_seconds));
        metrics::gauge!(m::HELD_REMOVED)
            .set(held.as_ref().map_or(0.0, |h| h.removed_routes as f64));
        let counter = |name: &'static str, value: &AtomicU64| {
            metrics::counter!(name).absolute(value.load(Ordering::Relaxed));
        };
        let s = &self.stats;
        counter(m::STREAM_CONNECTS, &s.connects);
        counter(m::STREAM_FAILURES, &s.failures);
        counter(m::STREAM_NOT_READY, &s.not_ready);
        counter(m::SNAPSHOTS_APPLIED, &s.snapshots_applied);
        counter(m::DELTAS_APPLIED, &s.deltas_applied);
        counter(m::UPDATES_HELD, &s.updates_held);
        let w = self.writer.stats();
        counter(m::SNAPSHOT_WRITES, &w.writes);
        counter(m::SNAPSHOT_WRITE_ERRORS, &w.errors);
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed) as f64;
        metrics::gauge!(m::SNAPSHOT_WRITE_DURATION).set(load(&w.last_duration_us) / 1e6);
        metrics::gauge!(m::SNAPSHOT_WRITE_BYTES).set(load(&w.last_bytes));
        metrics::gauge!(m::SNAPSHOT_WRITE_TIME).set(load(&w.last_unix_ms) / 1e3);
        metrics::gauge!(m::SNAPSHOT_VERSION).set(load(&w.last_version));
        metrics::gauge!(m::SNAPSHOT_UNSAVED).set(w.unsaved_seconds(SystemTime::now()));
        metrics::gauge!(m::STATE_FOLDER_HELD).set(load(&w.folder_held));
        metrics::gauge!(m::SNAPSHOT_LOAD_DURATION).set(self.load_duration.as_secs_f64());
        m::record_process();
        if let Some(tls) = &self.tls {
            metrics::gauge!(m::TLS_CERTIFICATES).set(tls.files() as f64);
            if let Some(expiry) = tls.earliest_expiry() {
                metrics::gauge!(m::TLS_EARLIEST_EXPIRY).set(expiry as f64);
            }
        }
        if let Some(proxy) = self.proxy.get().and_then(std::sync::Weak::upgrade) {
            let per_thread = proxy.stats().connections_per_thread;
            for (thread, open) in (1..).zip(per_thread) {
                let thread: u32 = thread;
                metrics::gauge!(m::THREAD_CONNECTIONS, m::THREAD_LABEL => thread.to_string())
                    .set(open as f64);
            }
        }
    }
}

/// The held update in plain words: `removed` of the `served` routes gone, `held` left.
fn describe(reason: HoldReason, removed: usize, served: usize, held: usize) -> String {
    match reason {
        HoldReason::Empty => {
            format!("the update would replace a table of {served} routes with an EMPTY table")
        }
        HoldReason::MassDeletion => {
            let share = 100.0 * removed as f64 / served.max(1) as f64;
            format!(
                "the update would remove {removed} of {served} routes at once ({share:.0} %), leaving {held}"
            )
        }
    }
}

/// Applies held mass deletions whose confirmation window has passed; runs until dropped.
pub(crate) async fn hold_timer(control: Arc<Control>) {
    let period = (control.config.confirm_window / 20)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        control.expire_held();
    }
}

/// Follows the orchestrators at `urls` in turn, forever (until the task is dropped).
pub(crate) async fn follow(control: Arc<Control>, urls: Vec<Uri>) {
    if urls.is_empty() {
        tracing::info!("no orchestrator configured: serving the table on disk only");
        return;
    }
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(control.config.connect_timeout));
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(connector);
    let mut failures = 0u32;
    for url in urls.iter().cycle() {
        let attempt = follow_one(&control, &client, url).await;
        control.stats.failures.fetch_add(1, Ordering::Relaxed);
        if attempt.synced {
            failures = 0;
            tracing::warn!(orchestrator = %url, reason = %attempt.end, "route stream ended; reconnecting");
        } else {
            failures = failures.saturating_add(1);
            tracing::warn!(orchestrator = %url, reason = %attempt.end, failures, "route stream failed; trying the next orchestrator");
        }
        control.stream_ended(format!("{url}: {}", attempt.end));
        let config = &control.config;
        let backoff = config
            .reconnect_min
            .saturating_mul(1 << failures.min(20))
            .min(config.reconnect_max);
        tokio::time::sleep(jitter(backoff)).await;
    }
}

/// Half of `delay` to all of it, at random: gateways that lost one orchestrator do not
/// all come back at once.
fn jitter(delay: Duration) -> Duration {
    let random = RandomState::new().hash_one(Instant::now());
    let fraction = (random % 1000) as f64 / 1000.0;
    delay.mul_f64(0.5 + 0.5 * fraction)
}

/// How one stream attempt went.
struct Attempt {
    /// The gateway was in step with the orchestrator at some point (progress).
    synced: bool,
    end: String,
}

/// Where a stream is in the protocol.
enum Phase {
    /// Waiting for `snapshot` or `resume`.
    Start,
    /// Between `snapshot` and `ready`: the routes go into a bulk builder, in order.
    Snapshot {
        version: u64,
        expected: u64,
        received: u64,
        builder: Box<Builder>,
        encoder: Encoder,
    },
    /// Deltas and pings.
    Live,
}

/// `{url}/v1/routes[?since=V]`.
fn stream_uri(base: &Uri, since: Option<u64>) -> Uri {
    let path = base.path().trim_end_matches('/');
    let query = since.map_or(String::new(), |v| format!("?since={v}"));
    let authority = base.authority().expect("validated: has a host");
    format!("http://{authority}{path}/v1/routes{query}")
        .parse()
        .expect("a URL built from a valid one")
}

async fn follow_one(
    control: &Arc<Control>,
    client: &Client<HttpConnector, Empty<Bytes>>,
    base: &Uri,
) -> Attempt {
    let since = control.resume_version();
    let uri = stream_uri(base, since);
    let ping_timeout = control.config.ping_timeout;
    let mut synced = false;
    let end = |synced, end: String| Attempt { synced, end };
    let request = Request::get(uri)
        .header(http::header::ACCEPT, "application/x-ndjson")
        .body(Empty::new())
        .expect("a valid request");
    control.stats.connects.fetch_add(1, Ordering::Relaxed);
    let response = match tokio::time::timeout(ping_timeout, client.request(request)).await {
        Err(_) => return end(false, format!("no answer within {ping_timeout:?}")),
        Ok(Err(e)) => return end(false, format!("request failed: {}", error_chain(&e))),
        Ok(Ok(response)) => response,
    };
    match response.status() {
        StatusCode::OK => {}
        StatusCode::SERVICE_UNAVAILABLE => {
            // Invariant 2: no table from a control plane that is not ready. The body is
            // not even read.
            control.stats.not_ready.fetch_add(1, Ordering::Relaxed);
            return end(
                false,
                "503: the orchestrator is not ready; nothing applied".into(),
            );
        }
        status => {
            return end(
                false,
                format!("unexpected status {status}; nothing applied"),
            )
        }
    }
    tracing::info!(orchestrator = %base, since = ?since, "route stream connected");
    let mut body = response.into_body();
    let mut buffer: Vec<u8> = Vec::new();
    let mut phase = Phase::Start;
    let mut pending: Vec<Delta> = Vec::new();
    let mut deadline = tokio::time::Instant::now() + ping_timeout;
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = tokio::time::sleep_until(deadline) => {
                return end(synced, format!("no line for {ping_timeout:?} (ping timeout): the stream is dead"));
            }
        };
        match frame {
            None => return end(synced, "the orchestrator closed the stream".into()),
            Some(Err(e)) => return end(synced, format!("stream broken: {}", error_chain(&e))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
        }
        let mut start = 0;
        while let Some(newline) = buffer[start..].iter().position(|&b| b == b'\n') {
            let line = &buffer[start..start + newline];
            start += newline + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            deadline = tokio::time::Instant::now() + ping_timeout;
            let line = match StreamLine::parse(line) {
                Ok(line) => line,
                Err(e) => {
                    return end(
                        synced,
                        format!(
                            "unreadable line ({e}); dropping the stream, nothing partial applied"
                        ),
                    )
                }
            };
            match step(control, &mut phase, &mut pending, line, since).await {
                Ok(Step::Continue) => {}
                Ok(Step::Synced) => synced = true,
                Err(e) => return end(synced, e),
            }
            if pending.len() >= MAX_BATCH {
                control.apply_deltas(std::mem::take(&mut pending));
            }
        }
        buffer.drain(..start);
        if buffer.len() > MAX_LINE_BYTES {
            return end(synced, format!("a line longer than {MAX_LINE_BYTES} bytes"));
        }
        // Everything that arrived together is applied together.
        if !pending.is_empty() {
            control.apply_deltas(std::mem::take(&mut pending));
        }
        if matches!(phase, Phase::Live) {
            control.mark_synced();
        }
    }
}

enum Step {
    Continue,
    /// The gateway is now in step with the stream.
    Synced,
}

async fn step(
    control: &Arc<Control>,
    phase: &mut Phase,
    pending: &mut Vec<Delta>,
    line: StreamLine,
    since: Option<u64>,
) -> Result<Step, String> {
    match (&mut *phase, line) {
        (Phase::Start | Phase::Live, StreamLine::Snapshot { version, routes }) => {
            if !pending.is_empty() {
                control.apply_deltas(std::mem::take(pending));
            }
            tracing::info!(
                table.version = version,
                routes,
                "receiving a route table snapshot"
            );
            *phase = Phase::Snapshot {
                version,
                expected: routes,
                received: 0,
                builder: Box::new(Builder::new(routes)),
                encoder: Encoder::default(),
            };
            Ok(Step::Continue)
        }
        (Phase::Start, StreamLine::Resume { version }) => {
            if since != Some(version) {
                return Err(format!(
                    "the orchestrator resumes from version {version}, the gateway asked for {since:?}"
                ));
            }
            tracing::info!(table.version = version, "route stream resumed");
            *phase = Phase::Live;
            control.mark_synced();
            Ok(Step::Synced)
        }
        (
            Phase::Snapshot {
                expected,
                received,
                builder,
                encoder,
                ..
            },
            StreamLine::Route(route),
        ) => {
            if *received >= *expected {
                return Err(format!("more route lines than the {expected} announced"));
            }
            *received += 1;
            builder.push(encoder.encode_model(&route));
            Ok(Step::Continue)
        }
        (
            Phase::Snapshot {
                version,
                expected,
                received,
                ..
            },
            StreamLine::Ready { version: ready },
        ) => {
            if ready != *version || *received != *expected {
                return Err(format!(
                    "ready for version {ready} after {received} of {expected} routes of snapshot {version}; not applied"
                ));
            }
            let Phase::Snapshot { builder, .. } = std::mem::replace(phase, Phase::Live) else {
                unreachable!("matched above");
            };
            let control = Arc::clone(control);
            // Building the table and comparing it with a million served routes take a
            // while: not on the runtime.
            tokio::task::spawn_blocking(move || {
                let table = builder.finish(ready, table::available_threads());
                control.apply_snapshot(table)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            Ok(Step::Synced)
        }
        (Phase::Live, StreamLine::Upsert { version, route }) => {
            pending.push(Delta::Upsert(version, route));
            Ok(Step::Continue)
        }
        (Phase::Live, StreamLine::Remove { version, app }) => {
            pending.push(Delta::Remove(version, app));
            Ok(Step::Continue)
        }
        (Phase::Live, StreamLine::Ping { version }) => {
            if !pending.is_empty() {
                control.apply_deltas(std::mem::take(pending));
            }
            match control.resume_version() {
                Some(have) if version > have => Err(format!(
                    "ping at version {version}, but the gateway has only {have}: changes were missed; resuming"
                )),
                _ => Ok(Step::Continue),
            }
        }
        (_, line) => Err(format!("unexpected line here: {line:?}")),
    }
}

/// An error and its causes, on one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
