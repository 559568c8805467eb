//! Switchyard's orchestrator: keeps the applications in ZooKeeper, owns a share of
//! them through `&owner` nodes, checks their backends and serves the route table.
//!
//! Start at [`run`]. The pieces: `layout` (where things live in ZooKeeper), `state`
//! (the region in memory, from one tree cache), `registry` and `import` (writing apps),
//! `shards` (ownership), `health` (checks), `api` (HTTP).
//!
//! **Invariant:** it hands out no route table before it is ready (post-mortem lesson
//! 2): ZooKeeper session up, cache loaded, its shards claimed, route server serving.

mod api;
pub mod config;
mod error;
mod health;
mod import;
pub mod layout;
pub mod metrics;
mod registry;
pub mod shards;
pub mod state;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard};

use coord::{Membership, SessionState, TreeCache, Zk};
use metrics_exporter_prometheus::PrometheusHandle;
use model::MemberId;
use tokio::sync::{mpsc, watch};

pub use config::Config;
pub use error::{ApiError, Error};
pub use layout::Layout;
pub use state::State;

/// Everything the orchestrator's tasks share.
pub(crate) struct Shared {
    config: Config,
    layout: Layout,
    zk: Zk,
    member: MemberId,
    token: String,
    state: RwLock<State>,
    /// Bumped after every batch of cache changes applied to `state`.
    applied: watch::Sender<u64>,
    members: watch::Receiver<Vec<String>>,
    shards: shards::Shards,
    cache_loaded: AtomicBool,
    serving: AtomicBool,
    prometheus: Option<PrometheusHandle>,
    /// Becomes true when the orchestrator stops: long-lived route streams end then.
    stopping: watch::Receiver<bool>,
}

impl Shared {
    fn state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the orchestrator cannot do its whole job yet, or `None` when it can.
    fn not_ready(&self) -> Option<String> {
        let session = self.zk.session().borrow().state;
        if session != SessionState::Connected {
            return Some(format!("ZooKeeper session is {session:?}"));
        }
        if !self.cache_loaded.load(Ordering::Acquire) {
            return Some("loading applications from ZooKeeper".into());
        }
        let shards = self.shards.status();
        if !shards.settled && shards.target == 0 {
            return Some("joining the member group".into());
        }
        if !shards.settled {
            return Some(format!(
                "claiming shards: {} of {} owned",
                shards.owned, shards.target
            ));
        }
        if !self.serving.load(Ordering::Acquire) {
            return Some("the route server is not serving yet".into());
        }
        None
    }

    fn record_gauges(&self) {
        let state = self.state();
        ::metrics::gauge!(metrics::APPS).set(state.app_count() as f64);
        ::metrics::gauge!(metrics::ROUTE_VERSION).set((state.version() & ((1 << 48) - 1)) as f64);
        ::metrics::gauge!(metrics::UNDECODABLE_NODES).set(state.undecodable() as f64);
        ::metrics::gauge!(metrics::READY).set(if self.not_ready().is_none() { 1.0 } else { 0.0 });
        ::metrics::gauge!(metrics::ZK_IN_FLIGHT).set(self.zk.in_flight() as f64);
        ::metrics::gauge!(metrics::ZK_LARGEST_NODE).set(self.zk.largest_payload_bytes() as f64);
        metrics::record_process();
    }
}

/// Exports the ZooKeeper servers' own size figures (`mntr`) every 15 s, and logs an
/// alert when one of them passes 90 % of `jute.maxbuffer`.
async fn watch_server_sizes(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let limit = shared.config.jute_maxbuffer as f64;
    loop {
        for (server, answer) in
            coord::mntr::mntr_all(&shared.config.zk, std::time::Duration::from_secs(5)).await
        {
            let figures = match answer {
                Ok(figures) => figures,
                Err(err) => {
                    tracing::debug!(%server, %err, "no mntr from ZooKeeper server");
                    continue;
                }
            };
            for name in coord::mntr::SIZE_FIGURES {
                let Some(value) = figures.get(name).and_then(|v| v.parse::<f64>().ok()) else {
                    continue;
                };
                ::metrics::gauge!(coord::metrics::ZK_SERVER_FIGURE, "server" => server.clone(), "figure" => name)
                    .set(value);
                if name != "zk_approximate_data_size" && value > limit * 0.9 {
                    tracing::warn!(%server, figure = name, value, limit, "a ZooKeeper server handled a packet over 90% of jute.maxbuffer");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The process-wide Prometheus recorder (one per process, however many orchestrators
/// a test runs in it).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|err| tracing::warn!(%err, "no Prometheus recorder; /metrics is empty"))
                .ok()
        })
        .clone()
}

/// Runs an orchestrator until `shutdown` resolves; then releases its shards at once,
/// leaves the group, closes its ZooKeeper session and returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    config.validate()?;
    let token = config.load_token()?;
    let member: MemberId = config.member_id().parse().expect("validated");
    // Bind first: a taken port is an error before anything else happens.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let prometheus = prometheus();

    let mut zk_config = coord::Config::new(config.zk.clone());
    zk_config.session_timeout = config.session_timeout;
    zk_config.window = config.zk_window;
    zk_config.jute_maxbuffer = config.jute_maxbuffer;
    let zk = Zk::connect(zk_config).await?;
    let layout = Layout::new(&config.region).open(&zk, config.shards).await?;
    tracing::info!(root = layout.root(), shards = layout.shard_count(), %member, %listen, "orchestrator starting");

    let membership = Membership::join(
        &zk,
        &layout.members(),
        member.as_str(),
        listen.to_string().as_bytes(),
    )
    .await?;
    let (applied, _) = watch::channel(0);
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        stopping: stopped.clone(),
        state: RwLock::new(State::new(layout.clone())),
        layout,
        zk,
        member,
        token,
        applied,
        members: membership.members(),
        shards: shards::Shards::default(),
        cache_loaded: AtomicBool::new(false),
        serving: AtomicBool::new(false),
        prometheus,
        config,
    });

    // Serve at once: /healthz and /readyz answer while the rest loads, and /v1/routes
    // says 503 until everything is ready.
    let server = {
        let router = api::router(Arc::clone(&shared));
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            // No Nagle delay: a route delta is one small write that must leave at once.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        })
    };
    shared.serving.store(true, Ordering::Release);

    // The cache sends every node of its initial walk as it reads it, then `Loaded`:
    // the state is built while the walk goes on, and the updater must run first.
    let (changes_tx, mut changes) = mpsc::channel(65_536);
    let updater = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Some(first) = changes.recv().await {
                let mut state = shared.state.write().unwrap_or_else(|p| p.into_inner());
                let was_loaded = state.is_loaded();
                state.apply_change(&first);
                // Apply what else is queued under the same lock.
                let mut more = 0;
                while more < 4096 {
                    match changes.try_recv() {
                        Ok(change) => state.apply_change(&change),
                        Err(_) => break,
                    }
                    more += 1;
                }
                let loaded = state.is_loaded() && !was_loaded;
                let apps = state.app_count();
                drop(state);
                if loaded {
                    tracing::info!(apps, "applications loaded");
                    shared.cache_loaded.store(true, Ordering::Release);
                }
                shared.applied.send_modify(|n| *n += 1);
            }
        })
    };
    let cache = TreeCache::start(&shared.zk, &shared.layout.shards(), Some(changes_tx)).await?;
    let ownership = tokio::spawn(shards::run(Arc::clone(&shared), stopped.clone()));
    let checks = tokio::spawn(health::run(Arc::clone(&shared), stopped.clone()));
    let sizes = tokio::spawn(watch_server_sizes(Arc::clone(&shared), stopped.clone()));

    shutdown.await;
    tracing::info!("stopping: releasing shards");
    let _ = stop.send(true);
    let _ = ownership.await;
    checks.abort();
    sizes.abort();
    shared.shards.release_all(&shared).await;
    if let Err(err) = membership.leave().await {
        tracing::warn!(%err, "cannot leave the member group");
    }
    let _ = server.await;
    updater.abort();
    drop(cache);
    shared.zk.close().await;
    tracing::info!("stopped");
    Ok(())
}
