//! `switchyard up`: a whole local region on this machine, supervised until Ctrl-C: a
//! ZooKeeper ensemble, orchestrators, gateways, demo backends and demo apps.
//!
//! State lives in one folder, reused by the next `up`. Every child is started from this
//! same binary and dies with this process; a child that exits is restarted with a
//! growing delay. `region.json` in the folder says what runs where, and a control
//! socket there lets `switchyard upgrade` restart one component at a time: a gateway is
//! replaced by a new process started beside it on the same ports (SO_REUSEPORT), so its
//! clients see no gap.

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use zkserver::{Config, Ensemble, Ports};

use crate::region::{Component, Region};

/// The control socket's name in the state folder.
pub const CONTROL_SOCKET: &str = "control.sock";
const REGION: &str = "local";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder that keeps the region's state between runs.
    #[arg(long, default_value = ".switchyard", env = "SWITCHYARD_DIR")]
    dir: PathBuf,
    /// Number of ZooKeeper servers (1 for a standalone server, 3 or 5 for a quorum).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    zk_servers: u32,
    /// Client port of the first ZooKeeper server; the others take the next ones.
    #[arg(long, default_value_t = 2181)]
    zk_port: u16,
    /// Quorum port of the first server; the others take the next ones.
    #[arg(long, default_value_t = 2888)]
    zk_peer_port: u16,
    /// Leader-election port of the first server; the others take the next ones
    /// [default: 1000 above --zk-peer-port].
    #[arg(long)]
    zk_election_port: Option<u16>,
    /// JVM heap limit of each ZooKeeper server, in MiB.
    #[arg(long, default_value_t = 512)]
    zk_heap_mib: u32,
    /// Orchestrators to run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=9))]
    orchestrators: u16,
    /// Port of the first orchestrator's API; the others take the next ones.
    #[arg(long, default_value_t = 7001)]
    orchestrator_port: u16,
    /// Gateways to run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=9))]
    gateways: u16,
    /// Proxy port of the first gateway; the others take the next ones.
    #[arg(long, default_value_t = 8081)]
    gateway_port: u16,
    /// Admin port of the first gateway; the others take the next ones.
    #[arg(long, default_value_t = 9081)]
    gateway_admin_port: u16,
    /// Demo backends to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=9))]
    backends: u16,
    /// Port of the first demo backend; the others take the next ones.
    #[arg(long, default_value_t = 9101)]
    backend_port: u16,
    /// Shards of a new region (fixed once the region exists).
    #[arg(long, default_value_t = 1024)]
    shards: u16,
}

/// What kind of child a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Backend,
    Orchestrator,
    Gateway,
}

/// A supervised child process.
struct Proc {
    kind: Kind,
    component: Component,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    started: Instant,
    failures: u32,
    next_start: Option<Instant>,
}

impl Proc {
    fn spawn(&self, exe: &Path) -> anyhow::Result<Child> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(exe);
        command
            .args(&self.args)
            .env(
                "SWITCHYARD_LOG",
                std::env::var("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        zkserver::spawn_bound(command)
            .with_context(|| format!("starting {} ({})", self.component.name, exe.display()))
    }

    fn start(&mut self, exe: &Path) -> anyhow::Result<()> {
        let child = self.spawn(exe)?;
        self.component.pid = Some(child.id());
        self.child = Some(child);
        self.started = Instant::now();
        self.next_start = None;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the child.
    async fn stop(&mut self, grace: Duration) {
        if let Some(child) = self.child.take() {
            terminate(child, grace).await;
        }
        self.component.pid = None;
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 20)
    }
}

async fn terminate(mut child: Child, grace: Duration) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn check_port(port: u16, what: &str) -> anyhow::Result<()> {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
        bail!("port {port} on 127.0.0.1 is already in use (needed for {what}); stop what holds it or choose other ports");
    }
    Ok(())
}

fn port(base: u16, i: u16, flag: &str) -> anyhow::Result<u16> {
    base.checked_add(i)
        .with_context(|| format!("--{flag} {base} leaves no room for {} ports", i + 1))
}

/// The region's write token: kept in the state folder, made once.
fn token_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("token");
    if !path.exists() {
        let mut bytes = [0u8; 24];
        let mut random = File::open("/dev/urandom").context("opening /dev/urandom")?;
        std::io::Read::read_exact(&mut random, &mut bytes).context("reading /dev/urandom")?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
    }
    Ok(path)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding this program's path")?;
    std::fs::create_dir_all(args.dir.join("logs"))
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args
        .dir
        .canonicalize()
        .with_context(|| format!("resolving {}", args.dir.display()))?;

    // Every port first: a taken one is an error before anything starts.
    let mut plan = Vec::new();
    for i in 0..args.backends {
        let p = port(args.backend_port, i, "backend-port")?;
        check_port(p, &format!("backend-{}", i + 1))?;
        plan.push((Kind::Backend, i + 1, p, None));
    }
    for i in 0..args.orchestrators {
        let p = port(args.orchestrator_port, i, "orchestrator-port")?;
        check_port(p, &format!("orchestrator-{}", i + 1))?;
        plan.push((Kind::Orchestrator, i + 1, p, None));
    }
    for i in 0..args.gateways {
        let p = port(args.gateway_port, i, "gateway-port")?;
        let a = port(args.gateway_admin_port, i, "gateway-admin-port")?;
        check_port(p, &format!("gateway-{}", i + 1))?;
        check_port(a, &format!("gateway-{} admin", i + 1))?;
        plan.push((Kind::Gateway, i + 1, p, Some(a)));
    }

    let Some(election) = args
        .zk_election_port
        .or_else(|| args.zk_peer_port.checked_add(1000))
    else {
        bail!(
            "--zk-peer-port {} leaves no room for election ports 1000 above it; \
             choose them with --zk-election-port",
            args.zk_peer_port
        );
    };
    let last = u16::try_from(args.zk_servers - 1).expect("at most 7 servers");
    port(args.zk_port, last, "zk-port")?;
    port(args.zk_peer_port, last, "zk-peer-port")?;
    port(election, last, "zk-election-port")?;
    let mut config = Config::ensemble(dir.join("zookeeper"), args.zk_servers);
    config.ports = Ports::Fixed {
        client: args.zk_port,
        quorum: args.zk_peer_port,
        election,
    };
    config.heap_mib = args.zk_heap_mib;
    config.tick_time = Duration::from_millis(2000);
    eprintln!("starting a local region in {}", dir.display());
    let mut ensemble = Ensemble::start(&config).context("starting ZooKeeper")?;
    let token = token_file(&dir)?;
    let zk = ensemble.connect_string();

    let orchestrator_urls: Vec<String> = plan
        .iter()
        .filter(|p| p.0 == Kind::Orchestrator)
        .map(|p| format!("http://127.0.0.1:{}", p.2))
        .collect();
    let mut procs: Vec<Proc> = plan
        .iter()
        .map(|&(kind, n, port, admin)| {
            let (name, args): (String, Vec<String>) = match kind {
                Kind::Backend => {
                    let name = format!("backend-{n}");
                    let args = vec![
                        "demo-backend".into(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--name".into(),
                        name.clone(),
                    ];
                    (name, args)
                }
                Kind::Orchestrator => {
                    let name = format!("orchestrator-{n}");
                    let args = vec![
                        "orchestrator".into(),
                        "--zk".into(),
                        zk.clone(),
                        "--region".into(),
                        REGION.into(),
                        "--member-id".into(),
                        name.clone(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--token-file".into(),
                        token.display().to_string(),
                        "--shards".into(),
                        args.shards.to_string(),
                    ];
                    (name, args)
                }
                Kind::Gateway => {
                    let name = format!("gateway-{n}");
                    let state = dir.join(&name);
                    let args = vec![
                        "gateway".into(),
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--admin".into(),
                        format!("127.0.0.1:{}", admin.expect("a gateway has an admin port")),
                        "--orchestrator".into(),
                        orchestrator_urls.join(","),
                        "--state-dir".into(),
                        state.display().to_string(),
                        "--access-log".into(),
                        dir.join("logs")
                            .join(format!("{name}.access.log"))
                            .display()
                            .to_string(),
                    ];
                    (name, args)
                }
            };
            Proc {
                kind,
                log: dir.join("logs").join(format!("{name}.log")),
                component: Component {
                    name,
                    url: format!("http://127.0.0.1:{port}"),
                    admin: admin.map(|a| format!("http://127.0.0.1:{a}")),
                    pid: None,
                },
                args: args.into_iter().map(OsString::from).collect(),
                child: None,
                started: Instant::now(),
                failures: 0,
                next_start: None,
            }
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let start = start_region(&exe, &mut procs, &token);
        let started = tokio::select! {
            started = start => started,
            _ = interrupt.recv() => Err(anyhow::anyhow!("interrupted while starting")),
            _ = terminate.recv() => Err(anyhow::anyhow!("terminated while starting")),
        };
        if let Err(err) = started {
            shutdown(&mut procs, &mut ensemble).await;
            return Err(err);
        }
        let region = describe(&mut ensemble, &procs, &token);
        region.save(&dir)?;
        print_table(&region, &dir);
        let socket = dir.join(CONTROL_SOCKET);
        let _ = std::fs::remove_file(&socket);
        let control = UnixListener::bind(&socket)
            .with_context(|| format!("binding the control socket {}", socket.display()))?;
        let supervised = supervise(
            &exe,
            &dir,
            &mut procs,
            &mut ensemble,
            &token,
            control,
            &mut interrupt,
            &mut terminate,
        )
        .await;
        eprintln!("stopping");
        shutdown(&mut procs, &mut ensemble).await;
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(dir.join(crate::region::FILE));
        supervised
    });
    result?;
    eprintln!("stopped; state kept in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}

/// Starts backends, orchestrators (waiting until they are ready), the demo apps, then
/// gateways (waiting until they are ready).
async fn start_region(exe: &Path, procs: &mut [Proc], token: &Path) -> anyhow::Result<()> {
    for kind in [Kind::Backend, Kind::Orchestrator] {
        for proc in procs.iter_mut().filter(|p| p.kind == kind) {
            proc.start(exe)?;
        }
    }
    for proc in procs.iter().filter(|p| p.kind == Kind::Orchestrator) {
        wait_ready(proc, &proc.component.url, None, Duration::from_secs(180)).await?;
    }
    let token_text = std::fs::read_to_string(token).context("reading the token")?;
    let orchestrator = procs.iter().find(|p| p.kind == Kind::Orchestrator);
    let backends: Vec<String> = procs
        .iter()
        .filter(|p| p.kind == Kind::Backend)
        .map(|p| p.component.url.trim_start_matches("http://").to_string())
        .collect();
    if let (Some(orchestrator), false) = (orchestrator, backends.is_empty()) {
        create_demo_apps(&orchestrator.component.url, token_text.trim(), &backends).await?;
    }
    for proc in procs.iter_mut().filter(|p| p.kind == Kind::Gateway) {
        proc.start(exe)?;
    }
    for proc in procs.iter().filter(|p| p.kind == Kind::Gateway) {
        let admin = proc
            .component
            .admin
            .clone()
            .expect("a gateway has an admin URL");
        wait_ready(proc, &admin, proc.component.pid, Duration::from_secs(120)).await?;
    }
    Ok(())
}

/// The demo apps, created unless they exist: `hello.localhost`, `world.localhost` and
/// every `*.demo.localhost`.
async fn create_demo_apps(
    orchestrator: &str,
    token: &str,
    backends: &[String],
) -> anyhow::Result<()> {
    let pick = |i: usize| backends[i % backends.len()].clone();
    let apps = [
        ("hello", vec!["hello.localhost"], vec![pick(0), pick(1)]),
        ("world", vec!["world.localhost"], vec![pick(2)]),
        ("demo", vec!["*.demo.localhost"], backends.to_vec()),
    ];
    for (id, domains, addrs) in apps {
        let body = serde_json::json!({
            "id": id,
            "domains": domains,
            "backends": addrs.iter().map(|a| serde_json::json!({"addr": a})).collect::<Vec<_>>(),
            "health_check": {"type": "http", "path": "/health"},
        });
        let answer = crate::http::request(
            "POST",
            &format!("{orchestrator}/v1/apps"),
            Some(token),
            &[("content-type", "application/json")],
            Bytes::from(body.to_string()),
            Duration::from_secs(30),
        )
        .await?;
        match answer.status {
            201 => eprintln!("created demo app {id}"),
            409 => {}
            status => bail!(
                "creating demo app {id}: {status} {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    Ok(())
}

/// Waits until `base/readyz` answers 200 (from process `pid`, when given), or fails
/// with the end of the process's log.
async fn wait_ready(
    proc: &Proc,
    base: &str,
    pid: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let url = format!("{base}/readyz");
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match crate::http::request("GET", &url, None, &[], Bytes::new(), Duration::from_secs(5))
            .await
        {
            Ok(answer) if answer.status == 200 => {
                let from = answer.json().ok().and_then(|j| j["pid"].as_u64());
                if pid.is_none() || from.is_none() || from == pid.map(u64::from) {
                    return Ok(());
                }
                last = "an older process answered".into();
            }
            Ok(answer) => last = String::from_utf8_lossy(&answer.body).trim().to_string(),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "{} did not become ready within {timeout:?} ({last}); last lines of {}:\n{}",
        proc.component.name,
        proc.log.display(),
        proc.log_tail()
    )
}

fn describe(ensemble: &mut Ensemble, procs: &[Proc], token: &Path) -> Region {
    let zookeeper = ensemble
        .servers_mut()
        .iter_mut()
        .map(|s| Component {
            name: format!("zookeeper-{}", s.id()),
            url: s.client_addr().to_string(),
            admin: None,
            pid: s.pid(),
        })
        .collect();
    let of = |kind| {
        procs
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| p.component.clone())
            .collect()
    };
    Region {
        zk: ensemble.connect_string(),
        region: REGION.into(),
        token_file: token.to_path_buf(),
        supervisor_pid: std::process::id(),
        zookeeper,
        orchestrators: of(Kind::Orchestrator),
        gateways: of(Kind::Gateway),
        backends: of(Kind::Backend),
    }
}

fn print_table(region: &Region, dir: &Path) {
    println!();
    println!("{:<16} {:<46} {:<8} LOG", "COMPONENT", "ADDRESS", "PID");
    let row = |c: &Component, log: String| {
        let pid = c.pid.map_or("-".to_string(), |p| p.to_string());
        let address = match &c.admin {
            Some(admin) => format!("{} (admin {})", c.url, admin.trim_start_matches("http://")),
            None => c.url.clone(),
        };
        println!("{:<16} {:<46} {:<8} {log}", c.name, address, pid);
    };
    for c in &region.zookeeper {
        row(
            c,
            dir.join("zookeeper")
                .join(c.name.replace("zookeeper-", "zk"))
                .join("server.log")
                .display()
                .to_string(),
        );
    }
    for c in region
        .orchestrators
        .iter()
        .chain(&region.gateways)
        .chain(&region.backends)
    {
        row(
            c,
            dir.join("logs")
                .join(format!("{}.log", c.name))
                .display()
                .to_string(),
        );
    }
    println!();
    println!("ZooKeeper connect string: {}", region.zk);
    if let Some(gateway) = region.gateways.first() {
        let port = gateway.url.rsplit(':').next().unwrap_or_default();
        println!("Try:  curl -H 'Host: hello.localhost' http://127.0.0.1:{port}/");
    }
    if let Some(orchestrator) = region.orchestrators.first() {
        println!(
            "Apps: switchyard app list --orchestrator {} (token in {})",
            orchestrator.url,
            region.token_file.display()
        );
    }
    println!("Press Ctrl-C to stop.");
}

/// Restarts what exits, answers the control socket, until Ctrl-C or SIGTERM.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    exe: &Path,
    dir: &Path,
    procs: &mut [Proc],
    ensemble: &mut Ensemble,
    token: &Path,
    control: UnixListener,
    interrupt: &mut tokio::signal::unix::Signal,
    terminate: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut zk_next_try = vec![Instant::now(); ensemble.servers().len()];
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            accepted = control.accept() => {
                if let Ok((stream, _)) = accepted {
                    handle_control(stream, exe, procs, ensemble).await;
                    let _ = describe(ensemble, procs, token).save(dir);
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        let mut changed = false;
        let now = Instant::now();
        for proc in procs.iter_mut() {
            if let Some(child) = &mut proc.child {
                if let Ok(Some(status)) = child.try_wait() {
                    proc.child = None;
                    proc.component.pid = None;
                    // A child that ran a while is restarted at once; one that keeps
                    // dying waits longer each time, up to 30 s.
                    if proc.started.elapsed() > Duration::from_secs(60) {
                        proc.failures = 0;
                    }
                    let delay = Duration::from_millis(500)
                        .saturating_mul(1 << proc.failures.min(6))
                        .min(Duration::from_secs(30));
                    proc.failures += 1;
                    proc.next_start = Some(now + delay);
                    tracing::warn!(component = %proc.component.name, %status, ?delay, log = %proc.log.display(), "exited; restarting");
                }
            }
            if proc.child.is_none() && proc.next_start.is_some_and(|t| t <= now) {
                match proc.start(exe) {
                    Ok(()) => changed = true,
                    Err(err) => {
                        tracing::error!(component = %proc.component.name, %err, "cannot restart");
                        proc.next_start = Some(now + Duration::from_secs(5));
                    }
                }
            }
        }
        for (i, server) in ensemble.servers_mut().iter_mut().enumerate() {
            if server.is_running() || now < zk_next_try[i] {
                continue;
            }
            tracing::warn!(server = server.id(), log = %server.log_path().display(), "ZooKeeper server is not running; restarting it");
            if let Err(err) = server.start() {
                tracing::error!(server = server.id(), %err, "cannot restart ZooKeeper server");
            }
            zk_next_try[i] = now + Duration::from_secs(5);
            changed = true;
        }
        if changed {
            let _ = describe(ensemble, procs, token).save(dir);
        }
    }
}

/// One control request: `restart <component>`; answers `ok <pid>` or `error <why>`.
async fn handle_control(
    stream: tokio::net::UnixStream,
    exe: &Path,
    procs: &mut [Proc],
    ensemble: &mut Ensemble,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    let answer =
        match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
            Ok(Ok(_)) => match line.trim().split_once(' ') {
                Some(("restart", name)) => match restart(name, exe, procs, ensemble).await {
                    Ok(pid) => format!("ok {pid}\n"),
                    Err(err) => format!("error {}\n", format!("{err:#}").replace('\n', " | ")),
                },
                _ => format!(
                    "error unknown request {:?}; expected `restart <component>`\n",
                    line.trim()
                ),
            },
            _ => "error no request\n".to_string(),
        };
    let _ = write.write_all(answer.as_bytes()).await;
}

/// Restarts one component; a gateway is replaced by a new process beside it.
async fn restart(
    name: &str,
    exe: &Path,
    procs: &mut [Proc],
    ensemble: &mut Ensemble,
) -> anyhow::Result<u32> {
    if let Some(id) = name
        .strip_prefix("zookeeper-")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let server = ensemble
            .servers_mut()
            .get_mut(id.wrapping_sub(1))
            .with_context(|| format!("no component {name}"))?;
        tokio::task::block_in_place(|| server.restart()).context("restarting ZooKeeper")?;
        return server.pid().context("the server did not start");
    }
    let proc = procs
        .iter_mut()
        .find(|p| p.component.name == name)
        .with_context(|| format!("no component {name}"))?;
    if proc.kind != Kind::Gateway {
        proc.stop(Duration::from_secs(40)).await;
        proc.start(exe)?;
        return Ok(proc.component.pid.expect("just started"));
    }
    // Beside the old one: it keeps serving until the new one is ready.
    let mut new = proc.spawn(exe)?;
    let pid = new.id();
    let admin = proc
        .component
        .admin
        .clone()
        .expect("a gateway has an admin URL");
    let ready = {
        let ready = wait_ready(proc, &admin, Some(pid), Duration::from_secs(120));
        tokio::pin!(ready);
        // The old gateway answers on the same admin port meanwhile: a new one that
        // exits at start (a configuration or folder it refuses) is noticed at once,
        // not at the readiness timeout.
        loop {
            tokio::select! {
                ready = &mut ready => break ready,
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Ok(Some(status)) = new.try_wait() {
                        // Reaped: its pid may be another process's now, so no signal.
                        bail!(
                            "the new gateway exited at start ({status}); the old one still \
                             serves; last lines of {}:\n{}",
                            proc.log.display(),
                            proc.log_tail()
                        );
                    }
                }
            }
        }
    };
    if let Err(err) = ready {
        terminate(new, Duration::from_secs(10)).await;
        return Err(err.context("the new gateway did not become ready; the old one still serves"));
    }
    if let Some(old) = proc.child.replace(new) {
        terminate(old, Duration::from_secs(40)).await;
    }
    proc.component.pid = Some(pid);
    proc.started = Instant::now();
    Ok(pid)
}

/// Stops gateways first (they drain), then orchestrators (they release their shards),
/// then backends, then ZooKeeper.
async fn shutdown(procs: &mut [Proc], ensemble: &mut Ensemble) {
    for kind in [Kind::Gateway, Kind::Orchestrator, Kind::Backend] {
        let stopping: Vec<_> = procs
            .iter_mut()
            .filter(|p| p.kind == kind)
            .map(|p| p.stop(Duration::from_secs(40)))
            .collect();
        futures::future::join_all(stopping).await;
    }
    if let Err(err) = tokio::task::block_in_place(|| ensemble.stop()) {
        tracing::error!(%err, "stopping ZooKeeper");
    }
}

/// Sends one control request to a running `up` in `dir`.
pub async fn control(dir: &Path, request: &str) -> anyhow::Result<String> {
    let socket = dir.join(CONTROL_SOCKET);
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| {
            format!(
                "connecting to {} (is `switchyard up` running?)",
                socket.display()
            )
        })?;
    stream.write_all(format!("{request}\n").as_bytes()).await?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).await?;
    Ok(answer.trim().to_string())
}
