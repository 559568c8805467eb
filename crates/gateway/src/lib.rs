//! Switchyard's HTTP gateway: a reverse proxy that routes by Host header.
//!
//! **Invariant:** never talks to ZooKeeper (no dependency on `coord`).
//! **Invariant:** the on-disk snapshot is loaded before the listener binds (invariant 1).
//!
//! Start at [`run`] (what `switchyard gateway` calls) or [`Gateway::start`]: the
//! control side is [`config`], `sync` (the route stream and its guards), [`persist`]
//! (the table on disk), `admin` (the admin API), [`tls`] (the certificates) and
//! [`metrics`]; the request path is [`proxy`]; both share one [`RouteTable`] behind an
//! `ArcSwap`.

mod admin;
mod check;
pub mod config;
pub mod metrics;
pub mod persist;
pub mod proxy;
#[cfg(test)]
mod seeded;
pub mod snapshot;
mod sync;
pub mod table;
pub mod tls;

pub use check::{check, Checked, CheckedTable};
pub use config::{Config, ConfigError};
pub use table::RouteTable;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::proxy::Proxy;
use crate::snapshot::SnapshotStore;
use crate::sync::{Control, SyncConfig};

/// Why a gateway could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is invalid (checked before anything binds or touches the disk).
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The snapshot folder is unusable, or holds snapshots none of which is valid, or
    /// one written by a newer binary. Never an empty table instead.
    #[error("{0}")]
    Snapshot(#[from] snapshot::Error),
    /// A snapshot passed its checksums but its payload does not decode.
    #[error("route table snapshot {path} passed its checksums but cannot be decoded: {source}; was it written by another Switchyard version? Run that version, or move the file away to start from the previous one")]
    Payload {
        /// The snapshot file.
        path: PathBuf,
        /// What is wrong with the payload.
        source: persist::DecodeError,
    },
    /// No snapshot on disk and no orchestrator to get a table from.
    #[error("nothing to serve: no route table snapshot in {dir} and no orchestrator configured; give --orchestrator, or restore a snapshot into {dir}")]
    NothingToServe {
        /// The state folder.
        dir: PathBuf,
    },
    /// The TLS certificate folder cannot be used.
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    /// The access log cannot be opened for writing.
    #[error("cannot open the access log {path}: {source}; its folder must exist and be writable by this user")]
    AccessLog {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A listening socket could not be set up.
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        /// `proxy`, `TLS proxy` or `admin API`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The proxy stopped serving on its own.
    #[error("the proxy stopped: {0}")]
    Proxy(#[source] io::Error),
}

/// Runs a gateway until `shutdown` resolves: loads the snapshot, binds, serves, follows
/// the orchestrators; then stops accepting, drains (at most `drain_timeout`), writes the
/// latest table to disk and returns. See [`Gateway::start`] and [`Gateway::serve`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
    Gateway::start(config).await?.serve(shutdown).await
}

/// A started gateway: its table loaded, its sockets bound, its control side running.
/// The proxy accepts connections once [`Gateway::serve`] runs.
pub struct Gateway {
    config: Config,
    control: Arc<Control>,
    listener: Option<proxy::Listeners>,
    /// Handed to the proxy when it starts serving; written out when it stops.
    access_log: Option<Arc<proxy::AccessLog>>,
    /// Threads of their own the proxy runs on; 0: the runtime `serve` is called on.
    proxy_threads: usize,
    /// See [`Gateway::keep_table_at_exit`].
    keep_table: bool,
    listen_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    admin_stop: Option<oneshot::Sender<()>>,
    admin_task: Option<JoinHandle<io::Result<()>>>,
    background: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Validates `config`, loads the snapshot from the state folder (**before** binding:
    /// invariant 1), binds the proxy and admin addresses with `SO_REUSEPORT`, and starts
    /// the admin API, the route stream follower and the snapshot writer.
    ///
    /// A corrupt current snapshot falls back to the previous generation (logged); an
    /// unusable folder, no valid snapshot among existing files, or a snapshot from a
    /// newer binary is an error, never an empty table.
    pub async fn start(config: Config) -> Result<Gateway, Error> {
        config.validate()?;
        let urls = config
            .orchestrators
            .iter()
            .map(|url| config::parse_orchestrator_url(url))
            .collect::<Result<Vec<_>, _>>()?;
        metrics::install();
        let tls = match &config.tls_certs {
            Some(dir) => Some(Arc::new(tls::CertFolder::load(dir)?)),
            None => None,
        };
        let access_log = match &config.access_log {
            Some(path) => {
                Some(
                    proxy::AccessLog::open(path).map_err(|source| Error::AccessLog {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };

        let dir = config.state_dir.clone();
        let started = Instant::now();
        let (store, loaded) = tokio::task::spawn_blocking(move || load(&dir))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let load_duration = started.elapsed();
        if loaded.is_none() && urls.is_empty() {
            return Err(Error::NothingToServe {
                dir: config.state_dir.clone(),
            });
        }

        let listener = bind(config.listen, "proxy")?;
        let tls_listener = match (config.tls_listen, &tls) {
            (Some(addr), Some(certs)) => Some((bind(addr, "TLS proxy")?, certs.acceptor())),
            _ => None,
        };
        let admin_listener = bind(config.admin, "admin API")?;
        let local = |listener: &tokio::net::TcpListener, what, addr| {
            listener
                .local_addr()
                .map_err(|source| Error::Bind { what, addr, source })
        };
        let listen_addr = local(&listener, "proxy", config.listen)?;
        let tls_addr = match (&tls_listener, config.tls_listen) {
            (Some((listener, _)), Some(addr)) => Some(local(listener, "TLS proxy", addr)?),
            _ => None,
        };
        let admin_addr = local(&admin_listener, "admin API", config.admin)?;
        if !admin_addr.ip().is_loopback() {
            tracing::warn!(admin = %admin_addr, "the admin API is not on loopback: whoever reaches it can confirm held deletions");
        }

        let (table, synced_at, from_disk) = match loaded {
            Some(loaded) => (Arc::new(loaded.table), loaded.modified, true),
            None => (Arc::new(RouteTable::empty()), SystemTime::now(), false),
        };
        tracing::info!(
            proxy = %listen_addr,
            tls = ?tls_addr,
            tls.certificates = tls.as_ref().map(|t| t.files()),
            admin = %admin_addr,
            table.version = table.version(),
            routes = table.len(),
            from_disk,
            max_connections = config.proxy_config().max_connections,
            took_ms = started.elapsed().as_millis() as u64,
            "gateway listening"
        );
        let writer = persist::Writer::start(
            Arc::new(store),
            Arc::clone(&table),
            config.snapshot_interval,
        );
        let control = Arc::new(Control::new(
            Arc::new(ArcSwap::new(table)),
            from_disk,
            synced_at,
            load_duration,
            writer,
            SyncConfig {
                guard: config.guard(),
                burst_window: config.mass_delete_window,
                confirm_window: config.confirm_window,
                ping_timeout: config.ping_timeout,
                connect_timeout: config.connect_timeout,
                reconnect_min: config.reconnect_min,
                reconnect_max: config.reconnect_max,
            },
            tls.clone(),
        ));
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(admin::serve(
            admin_listener,
            Arc::clone(&control),
            async move {
                let _ = admin_stopped.await;
            },
        ));
        let mut background = vec![
            tokio::spawn(sync::follow(Arc::clone(&control), urls)),
            tokio::spawn(sync::hold_timer(Arc::clone(&control))),
            tokio::spawn(metrics::upkeep()),
        ];
        if tls.is_some() || access_log.is_some() {
            background.push(tokio::spawn(reload_on_sighup(tls, access_log.clone())));
        }
        let mut listeners = proxy::Listeners::from(listener);
        if let Some((listener, acceptor)) = tls_listener {
            listeners = listeners.with_tls(listener, acceptor);
        }
        Ok(Gateway {
            config,
            control,
            listener: Some(listeners),
            access_log,
            proxy_threads: 0,
            keep_table: false,
            listen_addr,
            tls_addr,
            admin_addr,
            admin_stop: Some(admin_stop),
            admin_task: Some(admin_task),
            background,
        })
    }

    /// The address the proxy listens on (the actual port when configured with port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The address of the TLS listener, if the gateway serves TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The address of the admin API.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The table being served, as the proxy sees it.
    pub fn table(&self) -> Arc<RouteTable> {
        self.control.table().load_full()
    }

    /// Runs the proxy on `threads` threads of its own, each with a single-threaded
    /// runtime (see [`Proxy::serve_on_threads`]), instead of on the runtime
    /// [`Gateway::serve`] is called on (`0`, the default). The control side stays there.
    pub fn with_proxy_threads(mut self, threads: usize) -> Gateway {
        self.proxy_threads = threads;
        self
    }

    /// Leaves the route table in memory when the gateway stops, for a process that exits
    /// right after [`Gateway::serve`] returns: freeing a million routes entry by entry
    /// takes about 0.3 s of CPU, which a gateway stopping for a restart would spend
    /// beside the process that took over from it. The system takes the memory back at
    /// exit. Not for a process that goes on after the gateway: the table is never freed.
    pub fn keep_table_at_exit(mut self) -> Gateway {
        self.keep_table = true;
        self
    }

    /// Serves requests until `shutdown` resolves; then `/readyz` turns 503, the proxy
    /// stops accepting and drains (at most `drain_timeout`), and the latest table is
    /// written to disk before this returns.
    pub async fn serve(mut self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let listener = self.listener.take().expect("serve runs once");
        let mut proxy = Proxy::with_backend_config(
            Arc::clone(self.control.table()),
            self.config.proxy_config(),
            self.config.backend_config(),
        );
        if let Some(log) = &self.access_log {
            proxy = proxy.with_access_log(Arc::clone(log));
        }
        let proxy = Arc::new(proxy);
        let _ = self.control.proxy.set(Arc::downgrade(&proxy));
        let (stop_proxy, proxy_stopped) = oneshot::channel::<()>();
        let proxy_stopped = async move {
            let _ = proxy_stopped.await;
        };
        let threads = self.proxy_threads;
        let serving = async move {
            match threads {
                0 => proxy.serve(listener, proxy_stopped).await,
                threads => {
                    proxy
                        .serve_on_threads(listener, threads, proxy_stopped)
                        .await
                }
            }
        };
        tokio::pin!(serving);
        tokio::pin!(shutdown);
        let ended_early = tokio::select! {
            result = &mut serving => Some(result),
            () = &mut shutdown => None,
        };
        let result = match ended_early {
            Some(result) => {
                tracing::error!(?result, "the proxy stopped on its own");
                Err(Error::Proxy(result.err().unwrap_or_else(|| {
                    io::Error::other("the proxy returned before shutdown")
                })))
            }
            None => {
                tracing::info!(drain_timeout = ?self.config.drain_timeout, "stopping: draining connections");
                self.control.set_stopping();
                let _ = stop_proxy.send(());
                // The proxy bounds its drain by drain_timeout; this is a safety net.
                let limit = self.config.drain_timeout + Duration::from_secs(5);
                match tokio::time::timeout(limit, &mut serving).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Error::Proxy(e)),
                    Err(_) => {
                        tracing::warn!(
                            "the proxy did not finish draining in time; stopping anyway"
                        );
                        Ok(())
                    }
                }
            }
        };
        self.stop().await;
        result
    }

    /// Stops the control side without serving (or after): the admin API, the stream
    /// follower; writes the latest table to disk.
    pub async fn stop(mut self) {
        self.control.set_stopping();
        for task in self.background.drain(..) {
            task.abort();
        }
        // The requests have drained: their lines are all formatted.
        if let Some(log) = &self.access_log {
            if let Err(error) = log.flush() {
                tracing::warn!(%error, path = %log.path().display(), "access log not written");
            }
        }
        if let Some(stop) = self.admin_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.admin_task.take() {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the admin API stopped with an error"),
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => {}
            }
        }
        self.control.writer().flush().await;
        let table = self.control.table().load();
        tracing::info!(
            table.version = table.version(),
            routes = table.len(),
            "gateway stopped"
        );
        if self.keep_table {
            // One owner of the swap that holds the table, never dropped.
            std::mem::forget(Arc::clone(self.control.table()));
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.control.table().load();
        f.debug_struct("Gateway")
            .field("listen_addr", &self.listen_addr)
            .field("admin_addr", &self.admin_addr)
            .field("table_version", &table.version())
            .field("routes", &table.len())
            .finish_non_exhaustive()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        if let Some(task) = &self.admin_task {
            task.abort();
        }
        self.control.writer().abort();
    }
}

/// On each SIGHUP, reads the TLS certificate folder again (as nginx and HAProxy reload
/// on a signal), so renewed certificates are served without a restart, and opens the
/// access log again by its name, for log rotation.
async fn reload_on_sighup(
    tls: Option<Arc<tls::CertFolder>>,
    access_log: Option<Arc<proxy::AccessLog>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; reload TLS certificates with POST /admin/tls/reload");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if let Some(log) = &access_log {
            tracing::info!(path = %log.path().display(), "SIGHUP: reopening the access log");
            log.reopen();
        }
        if let Some(tls) = &tls {
            let tls = Arc::clone(tls);
            let _ = tokio::task::spawn_blocking(move || tls.reload()).await;
        }
    }
}

/// A table read back from the state folder.
struct Loaded {
    table: RouteTable,
    /// The file's modification time: the table was current then, as far as anyone knows.
    modified: SystemTime,
    /// The file it came from.
    path: PathBuf,
    /// The generation of that file.
    generation: snapshot::Generation,
    /// Files skipped on the way to it (a corrupt current generation).
    rejected: Vec<snapshot::Rejected>,
}

/// Opens the store and loads its newest valid table (blocking).
fn load(dir: &std::path::Path) -> Result<(SnapshotStore, Option<Loaded>), Error> {
    let store = SnapshotStore::open(dir)?;
    // The payload is decoded as it decompresses: it is never whole in memory.
    let Some(loaded) = store.load_with(|_, payload| persist::decode_from(payload))? else {
        return Ok((store, None));
    };
    let path = store.path(loaded.generation);
    for rejected in &loaded.rejected {
        tracing::error!(%rejected, "a route table snapshot was rejected; starting from the previous generation");
    }
    let table = loaded.value.map_err(|source| Error::Payload {
        path: path.clone(),
        source,
    })?;
    let modified = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    Ok((
        store,
        Some(Loaded {
            table,
            modified,
            path,
            generation: loaded.generation,
            rejected: loaded.rejected,
        }),
    ))
}

/// Connections a listener holds before they are accepted.
const LISTEN_BACKLOG: i32 = 4096;

/// A listening socket with `SO_REUSEPORT`, so that a new gateway can bind beside the one
/// it replaces; see [`steer_new_connections_here`].
fn bind(addr: SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let error = |source| Error::Bind { what, addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    socket.set_reuse_port(true).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    socket.bind(&addr.into()).map_err(error)?;
    // Room for a burst of connections (clients reconnecting after a restart, say) to
    // wait for their accept rather than have their SYNs dropped and retried a second
    // later; the kernel caps it at net.core.somaxconn (4096 by default).
    socket.listen(LISTEN_BACKLOG).map_err(error)?;
    if let Err(e) = steer_new_connections_here(&socket) {
        tracing::warn!(%addr, error = %e, "cannot steer new connections to this gateway; a restart beside another gateway may reset a few connections");
    }
    tokio::net::TcpListener::from_std(socket.into()).map_err(error)
}

/// `SO_ATTACH_REUSEPORT_CBPF`'s value in the generic Linux ABI (x86_64, aarch64, ...).
#[cfg(target_os = "linux")]
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Sends every new connection on the port to the socket that joined the `SO_REUSEPORT`
/// group second: this one, while it starts beside the gateway it replaces.
///
/// Without it the kernel spreads connections over both gateways' sockets, and when the
/// old one closes its listener the connections still in its accept queue are reset: a
/// restart would fail a few requests. With it, the old gateway's queue stops filling the
/// moment the new one has bound (its table already loaded), so it is empty when the old
/// one closes. Once the old socket is gone this one is first in the group, index 1 no
/// longer exists, and the kernel falls back to its usual hash: no effect on a lone
/// gateway.
#[cfg(target_os = "linux")]
fn steer_new_connections_here(socket: &socket2::Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // One classic BPF instruction: return 1 (the index of the socket to use).
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `program`, both alive for the call; the kernel copies them.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn steer_new_connections_here(_: &socket2::Socket) -> io::Result<()> {
    Ok(())
}
