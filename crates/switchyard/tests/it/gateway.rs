//! `switchyard gateway` as real processes: killed with SIGKILL and restarted with the
//! orchestrator gone, a corrupt snapshot, readiness, SIGTERM, and a new gateway started
//! beside the old one under load.
//!
//! The orchestrator and the backends are small real HTTP servers on loopback threads,
//! written with std alone; the client speaks HTTP/1.1 over a fresh connection per
//! request. Nothing asserts timing: waits are polls with generous upper bounds, and every
//! load loop is bounded in count and time.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{switchyard, switchyard_with_open_files};
use gateway::persist;
use gateway::snapshot::SnapshotStore;
use serde_json::{json, Value};

/// Polls `check` every 20 ms until it holds; panics with `what` after a minute.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "gave up after a minute waiting for {what}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port, outside the ephemeral range (see `zkserver::ports`).
fn free_port() -> u16 {
    zkserver::ports::free_port().expect("a free loopback port")
}

/// A route for `app` on `{app}.test`, as the route stream writes it (`model::Route`).
fn route(app: &str, backend: SocketAddr) -> Value {
    json!({
        "app": app,
        "domains": [format!("{app}.test")],
        "backends": [{"addr": backend.to_string(), "weight": 1}],
        "fail_open": false,
    })
}

/// One NDJSON line of the route stream (`model::StreamLine`).
fn line(line: Value) -> String {
    format!("{line}\n")
}

fn route_line(route: &Value) -> String {
    let mut line = route.clone();
    line["type"] = json!("route");
    self::line(line)
}

fn upsert(version: u64, route: Value) -> String {
    line(json!({"type": "upsert", "version": version, "route": route}))
}

fn snapshot(version: u64, routes: &[Value]) -> Vec<String> {
    let mut lines = vec![line(
        json!({"type": "snapshot", "version": version, "routes": routes.len()}),
    )];
    lines.extend(routes.iter().map(route_line));
    lines.push(line(json!({"type": "ready", "version": version})));
    lines
}

/// Reads an HTTP request's head (up to the blank line); returns its request line.
fn read_request_head(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("request head too long"));
        }
    }
    let head = String::from_utf8_lossy(&head);
    Ok(head.lines().next().unwrap_or_default().to_owned())
}

/// A thread accepting connections on a loopback port until the value is dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(serve: impl Fn(TcpStream, &AtomicBool) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            let serve = Arc::clone(&serve);
                            let stop = Arc::clone(&stop);
                            thread::spawn(move || serve(stream, &stop));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    /// Stops accepting and closes the port; connections end within ~100 ms.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A backend answering every request with its name.
fn backend(name: &'static str) -> Server {
    Server::start(move |mut stream, _| {
        while read_request_head(&mut stream).is_ok() {
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{name}",
                name.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    })
}

enum Plan {
    /// Answer 200 with these lines, then whatever the sender sends, pinging meanwhile.
    Stream(Vec<String>, mpsc::Receiver<String>),
}

/// An orchestrator's `/v1/routes` from a script: each request takes the next plan; with
/// none left, it answers 503 (an orchestrator that is not ready).
struct Orchestrator {
    server: Server,
    plans: Arc<Mutex<VecDeque<Plan>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Orchestrator {
    fn start() -> Orchestrator {
        let plans: Arc<Mutex<VecDeque<Plan>>> = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let server = Server::start({
            let plans = Arc::clone(&plans);
            let requests = Arc::clone(&requests);
            move |mut stream, stop| {
                let Ok(request) = read_request_head(&mut stream) else {
                    return;
                };
                requests.lock().unwrap().push(request);
                let plan = plans.lock().unwrap().pop_front();
                let _ = play(&mut stream, plan, stop);
            }
        });
        Orchestrator {
            server,
            plans,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    /// Queues a stream: `lines` at once, then what the returned sender sends.
    fn stream(&self, lines: Vec<String>) -> mpsc::Sender<String> {
        let (tx, rx) = mpsc::channel();
        self.plans
            .lock()
            .unwrap()
            .push_back(Plan::Stream(lines, rx));
        tx
    }

    fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn play(stream: &mut TcpStream, plan: Option<Plan>, stop: &AtomicBool) -> io::Result<()> {
    let Some(Plan::Stream(lines, more)) = plan else {
        let body = "not ready";
        return write!(
            stream,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    // No length, no chunking: the body ends when the connection closes.
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nConnection: close\r\n\r\n",
    )?;
    // Pings carry the version of the last change sent.
    let mut version = 0;
    let send = |stream: &mut TcpStream, text: &str, version: &mut u64| -> io::Result<()> {
        let parsed: Value = serde_json::from_str(text).expect("a JSON line");
        if let Some(v) = parsed["version"].as_u64() {
            *version = v;
        }
        stream.write_all(text.as_bytes())
    };
    for text in &lines {
        send(stream, text, &mut version)?;
    }
    while !stop.load(Ordering::Relaxed) {
        match more.recv_timeout(Duration::from_millis(100)) {
            Ok(text) => send(stream, &text, &mut version)?,
            Err(_) => {
                let ping = line(json!({"type": "ping", "version": version}));
                stream.write_all(ping.as_bytes())?;
            }
        }
    }
    Ok(())
}

/// An HTTP/1.1 GET over a fresh connection: status and body.
fn http_get(addr: SocketAddr, host: &str, path: &str) -> io::Result<(u16, String)> {
    exchange(connect(addr)?, host, path)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

/// `GET https://{host}{path}` on `addr`, trusting only `trusted` (a self-signed
/// certificate, DER).
fn https_get(
    addr: SocketAddr,
    trusted: &[u8],
    host: &str,
    path: &str,
) -> io::Result<(u16, String)> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(trusted.to_vec().into())
        .map_err(io::Error::other)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(io::Error::other)?;
    let tls = rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    exchange(rustls::StreamOwned::new(tls, connect(addr)?), host, path)
}

/// One request with `Connection: close` on `stream`: the status and (de-chunked) body.
fn exchange(mut stream: impl Read + Write, host: &str, path: &str) -> io::Result<(u16, String)> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify, after the whole response.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e),
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no response head in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    Ok((
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    ))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
}

/// A `switchyard gateway` process; killed (SIGKILL) on drop, and its log printed if the
/// test is failing.
struct GatewayProcess {
    child: Child,
    log: PathBuf,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// Flags for a gateway on `proxy`/`admin` ports with its state in `dir`.
fn gateway_args(dir: &Path, proxy: u16, admin: u16, orchestrators: &[String]) -> Vec<String> {
    let mut args = vec![
        "gateway".to_string(),
        "--workers".into(),
        "2".into(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{proxy}"),
        "--admin".into(),
        format!("127.0.0.1:{admin}"),
        "--snapshot-interval".into(),
        "50ms".into(),
        "--reconnect-min".into(),
        "20ms".into(),
        "--reconnect-max".into(),
        "200ms".into(),
        "--drain-timeout".into(),
        "5s".into(),
    ];
    for url in orchestrators {
        args.push("--orchestrator".into());
        args.push(url.clone());
    }
    args
}

/// The address given to `flag` in `args`.
fn addr_of(args: &[String], flag: &str) -> SocketAddr {
    let at = args.iter().position(|a| a == flag).expect(flag);
    args[at + 1].parse().unwrap()
}

impl GatewayProcess {
    /// Starts `switchyard ARGS`; the proxy and admin addresses are those of `--listen`
    /// and `--admin` in `args`.
    fn spawn(dir: &Path, name: &str, args: &[String]) -> GatewayProcess {
        let (proxy, admin) = (addr_of(args, "--listen"), addr_of(args, "--admin"));
        GatewayProcess::spawn_with(switchyard(), dir, name, args, &[], proxy, admin)
    }

    /// [`GatewayProcess::spawn`], with the limit on open files set to `soft` (and
    /// `hard`) in the child before it runs.
    fn spawn_with_open_files(
        dir: &Path,
        name: &str,
        args: &[String],
        soft: u64,
        hard: u64,
    ) -> GatewayProcess {
        let command = switchyard_with_open_files(soft, hard);
        let (proxy, admin) = (addr_of(args, "--listen"), addr_of(args, "--admin"));
        GatewayProcess::spawn_with(command, dir, name, args, &[], proxy, admin)
    }

    /// Starts `command ARGS` (the binary under test, perhaps set up further) with
    /// `envs`, which serves on `proxy` and `admin`.
    fn spawn_with(
        mut command: Command,
        dir: &Path,
        name: &str,
        args: &[String],
        envs: &[(&str, String)],
        proxy: SocketAddr,
        admin: SocketAddr,
    ) -> GatewayProcess {
        let log = dir.join(format!("{name}.log"));
        let child = command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .env("SWITCHYARD_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        GatewayProcess {
            child,
            log,
            proxy,
            admin,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for `check`, failing early (with the log) if the process exits.
    fn wait_for(&mut self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        wait_for(what, || {
            assert!(
                self.is_running(),
                "the gateway exited while waiting for {what}:\n{}",
                self.log()
            );
            check(self)
        });
    }

    fn admin_get(&self, path: &str) -> io::Result<(u16, String)> {
        http_get(self.admin, "localhost", path)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").ok()?;
        metric(&text, name)
    }

    fn wait_ready(&mut self) {
        self.wait_for("/readyz", |gateway| {
            matches!(gateway.admin_get("/readyz"), Ok((200, _)))
        });
    }

    /// Waits until the table at `version` is on disk.
    fn wait_written(&mut self, version: u64) {
        self.wait_for(&format!("version {version} on disk"), |gateway| {
            gateway.metric("switchyard_gateway_snapshot_table_version") == Some(version as f64)
        });
    }

    /// A request through the proxy for `host`.
    fn get(&self, host: &str) -> io::Result<(u16, String)> {
        http_get(self.proxy, host, "/")
    }

    /// The files the process has open now, as /proc counts them.
    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    /// Waits until the process has `limit` files open, and has had for ten looks in a
    /// row. A connection the test is done with may hold a file for a moment longer
    /// (hyper closes after its shutdown): given back after the table filled, it is
    /// taken by the next accept, connections waiting in the listen queue.
    fn wait_full(&mut self, limit: usize) {
        let mut looks = 0;
        self.wait_for("a full file table", |gateway| {
            looks = if gateway.open_files() >= limit {
                looks + 1
            } else {
                0
            };
            looks >= 10
        });
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", io::Error::last_os_error());
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not exit:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

#[test]
fn a_gateway_killed_with_sigkill_serves_every_route_from_disk_with_the_orchestrator_gone() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["alpha", "beta", "gamma"];
    let backends: Vec<Server> = names.iter().map(|name| backend(name)).collect();
    let routes: Vec<Value> = names
        .iter()
        .zip(&backends)
        .map(|(name, server)| route(name, server.addr))
        .collect();
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(5, &routes));
    let args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);

    let mut gateway = GatewayProcess::spawn(dir.path(), "first", &args);
    gateway.wait_ready();
    for name in names {
        let host = format!("{name}.test");
        gateway.wait_for(
            &format!("{host} through the proxy"),
            |gateway| matches!(gateway.get(&host), Ok((200, body)) if body == name),
        );
    }
    gateway.wait_written(5);
    gateway.kill9();
    drop(orchestrator); // the control plane is gone too: the August 2016 night

    let mut gateway = GatewayProcess::spawn(dir.path(), "second", &args);
    gateway.wait_ready();
    for name in names {
        let host = format!("{name}.test");
        assert_eq!(
            gateway.get(&host).unwrap(),
            (200, name.to_string()),
            "{host}"
        );
    }
    let (status, body) = gateway.admin_get("/routes/beta.test").unwrap();
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["app"], "beta");
    // What the proxy knows of the backend it has just sent to.
    let state = &body["backend_state"][0];
    assert!(state["connects_total"].as_u64().unwrap() >= 1, "{body}");
    assert_eq!(state["connect_failures_total"], 0, "{body}");
    assert_eq!(state["ejected"], false, "{body}");
    assert!(gateway
        .metric("switchyard_gateway_route_table_staleness_seconds")
        .is_some());
    assert_eq!(
        gateway.metric("switchyard_gateway_route_table_version"),
        Some(5.0)
    );
    // The three requests this process proxied, in its latency histogram.
    assert_eq!(
        gateway.metric("switchyard_gateway_upstream_duration_seconds_count"),
        Some(3.0)
    );
}

#[test]
fn a_corrupt_current_snapshot_falls_back_to_the_previous_generation() {
    let dir = tempfile::tempdir().unwrap();
    let server = backend("web");
    let orchestrator = Orchestrator::start();
    let live = orchestrator.stream(snapshot(
        1,
        &[route("one", server.addr), route("two", server.addr)],
    ));
    let args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    let mut gateway = GatewayProcess::spawn(dir.path(), "first", &args);
    gateway.wait_ready();
    gateway.wait_written(1);
    live.send(upsert(2, route("three", server.addr))).unwrap();
    gateway.wait_written(2);
    gateway.kill9();
    drop(orchestrator);

    let current = dir
        .path()
        .join("state")
        .join(gateway::snapshot::CURRENT_FILE);
    let mut bytes = std::fs::read(&current).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&current, bytes).unwrap();

    // No orchestrator at all this time: the disk is all it has. A check first says what
    // a start will serve, and changes nothing.
    let args = gateway_args(dir.path(), free_port(), free_port(), &[]);
    let state = folder_contents(&dir.path().join("state"));
    let (code, stdout, stderr) = check(&args);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("table: version 1, 2 routes, from ")
            && stdout.contains("routes.snap.prev (previous generation, written "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("warning: skipped {}", current.display())),
        "{stdout}"
    );
    assert_eq!(folder_contents(&dir.path().join("state")), state);
    let mut gateway = GatewayProcess::spawn(dir.path(), "second", &args);
    gateway.wait_ready();
    assert_eq!(gateway.get("one.test").unwrap(), (200, "web".into()));
    assert_eq!(gateway.get("two.test").unwrap(), (200, "web".into()));
    assert_eq!(
        gateway.get("three.test").unwrap().0,
        404,
        "version 2 was the corrupt one"
    );
    assert_eq!(
        gateway.metric("switchyard_gateway_route_table_version"),
        Some(1.0)
    );
    let log = gateway.log();
    assert!(log.contains("rejected"), "the fallback is logged:\n{log}");
}

/// Runs `switchyard` with `args` and `--check`: its exit code, stdout and stderr.
fn check(args: &[String]) -> (Option<i32>, String, String) {
    let output = switchyard().args(args).arg("--check").output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Every file in `dir` (not recursive) with its bytes.
fn folder_contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_check_fails_where_a_start_would_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let no_orchestrator = gateway_args(dir.path(), free_port(), free_port(), &[]);
    let (code, _, stderr) = check(&no_orchestrator);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("nothing to serve"), "{stderr}");
    assert!(!state.exists(), "a check creates no folder");

    // With an orchestrator, a folder yet to be made is what a first start has.
    let orchestrated = gateway_args(
        dir.path(),
        free_port(),
        free_port(),
        &["http://127.0.0.1:1".into()],
    );
    let (code, stdout, stderr) = check(&orchestrated);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains("does not exist and a start creates it"),
        "{stdout}"
    );
    assert!(stdout.contains("orchestrators: 1"), "{stdout}");
    assert!(!state.exists(), "a check creates no folder");

    // Files that are no snapshot at all: refused, named, and left as they are.
    std::fs::create_dir(&state).unwrap();
    let current = state.join(gateway::snapshot::CURRENT_FILE);
    std::fs::write(&current, b"not a snapshot").unwrap();
    let before = folder_contents(&state);
    let (code, _, stderr) = check(&orchestrated);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&current.display().to_string()), "{stderr}");
    assert_eq!(folder_contents(&state), before);
    std::fs::remove_file(&current).unwrap();

    // An access log in a folder that does not exist, a certificate folder that does not
    // exist, an orchestrator URL that is no URL.
    let mut bad_log = orchestrated.clone();
    let log = dir.path().join("missing").join("access.log");
    bad_log.extend(["--access-log".into(), log.display().to_string()]);
    let (code, _, stderr) = check(&bad_log);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains(&format!("cannot open the access log {}", log.display())),
        "{stderr}"
    );
    assert!(!log.exists());
    let mut bad_certs = orchestrated.clone();
    let certs = dir.path().join("no-certs");
    bad_certs.extend([
        "--tls-listen".into(),
        format!("127.0.0.1:{}", free_port()),
        "--tls-certs".into(),
        certs.display().to_string(),
    ]);
    let (code, _, stderr) = check(&bad_certs);
    assert_eq!(code, Some(1));
    assert!(stderr.contains(&certs.display().to_string()), "{stderr}");
    let bad_url = gateway_args(
        dir.path(),
        free_port(),
        free_port(),
        &["orch-1:7000".into()],
    );
    let (code, _, stderr) = check(&bad_url);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("orch-1:7000"), "{stderr}");
    assert_eq!(folder_contents(&state), vec![], "the probe file is removed");
}

#[test]
fn readyz_turns_true_once_an_orchestrator_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let server = backend("web");
    let orchestrator = Orchestrator::start(); // answers 503 until it has a plan
    let args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    let mut gateway = GatewayProcess::spawn(dir.path(), "gateway", &args);

    gateway.wait_for("the admin API", |gateway| {
        gateway.admin_get("/healthz").is_ok()
    });
    gateway.wait_for("a 503 from the orchestrator", |_| {
        orchestrator.requests() >= 2
    });
    let (status, body) = gateway.admin_get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not_ready"), "{body}");
    assert_eq!(
        gateway.get("web.test").unwrap().0,
        404,
        "no table: nothing routed"
    );

    let _live = orchestrator.stream(snapshot(3, &[route("web", server.addr)]));
    gateway.wait_ready();
    assert_eq!(gateway.get("web.test").unwrap(), (200, "web".into()));
}

#[test]
fn sigterm_stops_cleanly_and_leaves_the_latest_table_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = backend("web");
    let orchestrator = Orchestrator::start();
    let live = orchestrator.stream(snapshot(1, &[route("app0", server.addr)]));
    let mut args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    // Written rarely, so the last changes are on disk only thanks to the final flush.
    let interval = args
        .iter()
        .position(|a| a == "--snapshot-interval")
        .unwrap();
    args[interval + 1] = "1h".into();
    let mut gateway = GatewayProcess::spawn(dir.path(), "gateway", &args);
    gateway.wait_ready();
    for version in 2..=20u64 {
        live.send(upsert(
            version,
            route(&format!("app{version}"), server.addr),
        ))
        .unwrap();
    }
    gateway.wait_for("the last change", |gateway| {
        gateway.metric("switchyard_gateway_route_table_version") == Some(20.0)
    });
    gateway.signal(libc::SIGTERM);
    let status = gateway.wait_exit();
    assert!(status.success(), "{status}:\n{}", gateway.log());

    let store = SnapshotStore::open(dir.path().join("state")).unwrap();
    let loaded = store.load().unwrap().expect("a snapshot");
    assert_eq!(loaded.meta.table_version, 20);
    let table = persist::decode(&loaded.payload).unwrap();
    assert_eq!(table.len(), 20);
}

#[test]
fn a_new_gateway_started_beside_the_old_one_takes_over_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let server = backend("web");
    let orchestrator = Orchestrator::start();
    let routes = [route("web", server.addr)];
    let _old_stream = orchestrator.stream(snapshot(1, &routes));
    let _new_stream = orchestrator.stream(snapshot(1, &routes));
    let args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    let mut old = GatewayProcess::spawn(dir.path(), "old", &args);
    old.wait_ready();
    old.wait_written(1);
    let proxy = old.proxy;

    // A steady load: two clients, a new connection per request, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<JoinHandle<()>> = (0..2)
        .map(|_| {
            let (stop, ok, failures) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failures));
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                for _ in 0..200_000 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        return;
                    }
                    match http_get(proxy, "web.test", "/") {
                        Ok((200, body)) if body == "web" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => failures.lock().unwrap().push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    let served = |n: u64| {
        let start = ok.load(Ordering::Relaxed);
        wait_for(&format!("{n} more requests"), || {
            ok.load(Ordering::Relaxed) >= start + n
        });
    };
    served(200);

    // The new gateway binds the same ports beside the old one (SO_REUSEPORT)...
    let mut new = GatewayProcess::spawn(dir.path(), "new", &args);
    new.wait_for("the new gateway to listen", |gateway| {
        gateway.log().contains("gateway listening")
    });
    served(200);
    // ...and the old one is told to stop.
    old.signal(libc::SIGTERM);
    let status = old.wait_exit();
    assert!(status.success(), "{status}:\n{}", old.log());
    served(500);
    new.wait_ready();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed, first: {:?}\n--- old ---\n{}\n--- new ---\n{}",
        failures.len(),
        failures.len() as u64 + ok.load(Ordering::Relaxed),
        failures.first(),
        old.log(),
        new.log()
    );
}

#[test]
fn the_config_file_yields_to_the_environment_and_an_unknown_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let server = backend("web");
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(4, &[route("web", server.addr)]));

    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nlisten-adress = \"x\"\n").unwrap();
    let output = switchyard()
        .args(["gateway", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen-adress"), "{stderr}");

    // The file says one admin port, the environment another: the environment wins.
    let (proxy, file_admin, env_admin) = (free_port(), free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{proxy}\"\nadmin = \"127.0.0.1:{file_admin}\"\n\
             state-dir = {:?}\norchestrators = [{:?}]\n",
            state.display().to_string(),
            orchestrator.url(),
        ),
    )
    .unwrap();
    let args = [
        "gateway".to_string(),
        "--config".into(),
        config.display().to_string(),
    ];
    let localhost = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut gateway = GatewayProcess::spawn_with(
        switchyard(),
        dir.path(),
        "gateway",
        &args,
        &[("SWITCHYARD_GATEWAY_ADMIN", format!("127.0.0.1:{env_admin}"))],
        localhost(proxy),
        localhost(env_admin),
    );
    gateway.wait_ready();
    assert_eq!(gateway.get("web.test").unwrap(), (200, "web".into()));
    assert!(
        http_get(localhost(file_admin), "localhost", "/healthz").is_err(),
        "nothing on the file's admin port"
    );
}

#[test]
fn tls_certificates_are_served_by_name_and_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    // A self-signed certificate per name, each the client's only trust anchor.
    let issue = |name: &str| {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        std::fs::write(
            certs.join(format!("{name}.pem")),
            format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem()),
        )
        .unwrap();
        cert.cert.der().to_vec()
    };
    let app0 = issue("app0.test");
    // One that has expired is served, and named in the log.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut expired = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    expired.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let expired = expired.self_signed(&key).unwrap();
    std::fs::write(
        certs.join("old.test.pem"),
        format!("{}{}", expired.pem(), key.serialize_pem()),
    )
    .unwrap();
    let server = backend("web");
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(
        1,
        &[route("app0", server.addr), route("app1", server.addr)],
    ));
    let tls = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    args.extend([
        "--tls-listen".to_string(),
        tls.to_string(),
        "--tls-certs".to_string(),
        certs.display().to_string(),
    ]);
    let mut gateway = GatewayProcess::spawn(dir.path(), "gateway", &args);
    gateway.wait_ready();
    let log = gateway.log();
    assert!(
        log.lines()
            .any(|line| line.contains("has EXPIRED") && line.contains("old.test.pem")),
        "{log}"
    );

    assert_eq!(
        https_get(tls, &app0, "app0.test", "/").unwrap(),
        (200, "web".to_string())
    );
    let app1 = issue("app1.test");
    let refused = https_get(tls, &app1, "app1.test", "/");
    assert!(refused.is_err(), "no certificate yet, but {refused:?}");

    gateway.signal(libc::SIGHUP);
    gateway.wait_for("app1.test's certificate after SIGHUP", |_| {
        https_get(tls, &app1, "app1.test", "/").is_ok_and(|answer| answer == (200, "web".into()))
    });
    assert!(
        gateway.log().contains("TLS certificates reloaded"),
        "{}",
        gateway.log()
    );
    // Plain HTTP is served on as before.
    assert_eq!(gateway.get("app1.test").unwrap(), (200, "web".to_string()));

    gateway.signal(libc::SIGTERM);
    let status = gateway.wait_exit();
    assert!(status.success(), "{status}:\n{}", gateway.log());
}

#[test]
fn the_ejection_settings_on_the_command_line_reach_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(1, &[route("dead", crate::cli::closed_addr())]));
    let mut args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    args.extend(["--eject-after", "1", "--eject-cooldown", "1h"].map(String::from));
    let mut gateway = GatewayProcess::spawn(dir.path(), "eject", &args);
    gateway.wait_ready();
    gateway.wait_for("the route", |gateway| {
        matches!(gateway.get("dead.test"), Ok((502, _)))
    });
    // One failed connect ejects it (the default takes three), for the hour given.
    let (status, body) = gateway.admin_get("/routes/dead.test").unwrap();
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["backend_state"][0]["ejected"], true, "{body}");
    assert_eq!(
        gateway.metric("switchyard_gateway_backend_ejections_total"),
        Some(1.0)
    );
    assert!(
        gateway.log().contains("cooldown_secs=3600"),
        "{}",
        gateway.log()
    );
}

#[test]
fn a_backend_whose_answers_cannot_be_passed_on_is_named_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // One answers with a status no HTTP has; the other adds bytes after its answer.
    let bad = Server::start(|mut stream, _| {
        while read_request_head(&mut stream).is_ok() {
            if stream
                .write_all(b"HTTP/1.1 000 OK\r\nContent-Length: 0\r\n\r\n")
                .is_err()
            {
                return;
            }
        }
    });
    let stray = Server::start(|mut stream, _| {
        while read_request_head(&mut stream).is_ok() {
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstrayHTTP/1.1 200 OK\r\n";
            if stream.write_all(answer).is_err() {
                return;
            }
        }
    });
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(
        1,
        &[route("bad", bad.addr), route("stray", stray.addr)],
    ));
    let args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    let mut gateway = GatewayProcess::spawn(dir.path(), "bad-answers", &args);
    gateway.wait_ready();
    gateway.wait_for("the routes", |gateway| {
        matches!(gateway.get("stray.test"), Ok((200, _)))
    });
    let refused = format!(
        "backend {} sent an answer with status 0, outside 100 to 599; its client got a 502",
        bad.addr
    );
    assert_eq!(
        gateway.get("bad.test").unwrap(),
        (502, "backend sent an invalid response\n".to_string())
    );
    gateway.wait_for("the refusal to be logged", |gateway| {
        gateway.log().contains(&refused)
    });
    // The answer with bytes after it is passed on whole; the log says why its
    // connection was closed.
    assert_eq!(
        gateway.get("stray.test").unwrap(),
        (200, "stray".to_string())
    );
    let stray_bytes = format!(
        "backend {} sent bytes after the end of an answer; the connection is not used again",
        stray.addr
    );
    gateway.wait_for("the stray bytes to be logged", |gateway| {
        gateway.log().contains(&stray_bytes)
    });
    assert_eq!(
        gateway.metric("switchyard_gateway_errors_total{reason=\"bad_response\"}"),
        Some(1.0)
    );
}

#[test]
fn the_open_files_limit_is_raised_and_a_gateway_at_it_serves_the_connections_that_waited() {
    let dir = tempfile::tempdir().unwrap();
    let app = backend("app");
    let other = backend("other");
    let third = backend("third");
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(
        1,
        &[
            route("app", app.addr),
            route("other", other.addr),
            route("third", third.addr),
        ],
    ));
    let mut ours = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes the struct it is given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut ours) },
        0
    );

    // A soft limit under the hard one is raised to it; under 16,384 it is warned about.
    let hard = ours.rlim_max.min(4096);
    let args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    let mut gateway =
        GatewayProcess::spawn_with_open_files(dir.path(), "raised", &args, hard.min(256), hard);
    gateway.wait_ready();
    assert_eq!(gateway.metric("process_max_fds"), Some(hard as f64));
    // With the process's memory and CPU, under their usual names.
    let resident = gateway.metric("process_resident_memory_bytes").unwrap();
    assert!(resident > 1e6 && resident < 1e10, "{resident} bytes");
    let started = gateway.metric("process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started <= now + 1.0 && started > now - 600.0, "{started}");
    // Counted in clock ticks (10 ms): every scrape spends some.
    gateway.wait_for("CPU time counted", |gateway| {
        gateway
            .metric("process_cpu_seconds_total")
            .is_some_and(|cpu| cpu > 0.0 && cpu < 600.0)
    });
    assert!(
        gateway.log().contains("the open-files limit is low"),
        "{}",
        gateway.log()
    );
    // Every client connection is an open file.
    let before = gateway.metric("process_open_fds").unwrap();
    let idle: Vec<TcpStream> = (0..20).map(|_| connect(gateway.proxy).unwrap()).collect();
    gateway.wait_for("20 more open files", |gateway| {
        gateway
            .metric("process_open_fds")
            .is_some_and(|open| open >= before + 20.0)
    });
    drop(idle);
    gateway.wait_written(1);
    drop(gateway);

    // Room for ten connections more than the gateway needs to start: the rest wait in
    // the listen queue, and are served once others close. The routes come from the
    // disk: a route stream's retries would take and give back a file, which a backend
    // connection could get when none is to be had.
    let limit = before as u64 + 10;
    let args = gateway_args(dir.path(), free_port(), free_port(), &[]);
    let mut gateway =
        GatewayProcess::spawn_with_open_files(dir.path(), "full", &args, limit, limit);
    gateway.wait_ready();
    let mut idle: Vec<TcpStream> = (0..30).map(|_| connect(gateway.proxy).unwrap()).collect();
    gateway.wait_for("accepts to fail", |gateway| {
        gateway.log().contains("accepting connections fails")
    });
    let full = usize::try_from(limit).unwrap();
    gateway.wait_full(full);
    // The file table is full, and no idle backend connection holds a file that could be
    // given up: a request that needs a new backend connection gets a 503 that says so,
    // and the backend, which did nothing wrong, is not ejected. On one kept-alive
    // connection (the first accepted), so that none closes meanwhile.
    let first = &mut idle[0];
    for _ in 0..4 {
        write!(first, "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n").unwrap();
        let (status, body) = read_response(first).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (
                503,
                "gateway overloaded: no connection to a backend can be opened\n"
            ),
            "{}",
            gateway.log()
        );
    }
    assert!(
        gateway.log().contains("opening a backend connection fails"),
        "{}",
        gateway.log()
    );
    let proxy = gateway.proxy;
    let waiting = thread::spawn(move || http_get(proxy, "app.test", "/"));
    drop(idle);
    assert_eq!(waiting.join().unwrap().unwrap(), (200, "app".to_string()));
    assert_eq!(gateway.get("app.test").unwrap(), (200, "app".to_string()));
    assert!(
        gateway
            .metric("switchyard_gateway_accept_errors_total")
            .is_some_and(|errors| errors >= 1.0),
        "{}",
        gateway.log()
    );
    assert_eq!(
        gateway.metric("switchyard_gateway_errors_total{reason=\"out_of_sockets\"}"),
        Some(4.0)
    );
    assert_eq!(
        gateway.metric("switchyard_gateway_backend_ejections_total"),
        Some(0.0)
    );
    let (status, body) = gateway.admin_get("/routes/other.test").unwrap();
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    let state = &body["backend_state"][0];
    assert_eq!(state["connect_failures_total"], 0, "{body}");
    assert_eq!(state["ejected"], false, "{body}");
    assert_eq!(
        gateway.get("other.test").unwrap(),
        (200, "other".to_string())
    );

    // Full again, now with idle connections to `app` and `other` pooled: they are
    // closed to make room for one to `third`, and the request is served.
    let failures =
        |gateway: &GatewayProcess| gateway.log().matches("accepting connections fails").count();
    let before = failures(&gateway);
    let mut idle: Vec<TcpStream> = (0..30).map(|_| connect(gateway.proxy).unwrap()).collect();
    // The warning is logged at most every 5 s.
    gateway.wait_for("accepts to fail again", |gateway| {
        failures(gateway) > before
    });
    gateway.wait_full(full);
    let first = &mut idle[0];
    write!(first, "GET / HTTP/1.1\r\nHost: third.test\r\n\r\n").unwrap();
    assert_eq!(
        read_response(first).unwrap(),
        (200, "third".to_string()),
        "{}",
        gateway.log()
    );
    assert!(
        gateway
            .log()
            .contains("closed every idle backend connection to open a new one"),
        "{}",
        gateway.log()
    );
    drop(idle);
    assert_eq!(
        gateway.metric("switchyard_gateway_errors_total{reason=\"out_of_sockets\"}"),
        Some(4.0)
    );
    assert!(
        gateway
            .metric("switchyard_gateway_backend_idle_shed_total")
            .is_some_and(|shed| shed >= 2.0),
        "{}",
        gateway.log()
    );
}

/// Reads one response with a `Content-Length` from `stream`, leaving it open: its
/// status and body.
fn read_response(stream: &mut TcpStream) -> io::Result<(u16, String)> {
    let mut head = Vec::new();
    let mut byte = [0];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head[9..12].parse().map_err(io::Error::other)?;
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|length| length.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no length in {head:?}")))?;
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn a_gateway_at_its_connection_limit_lets_new_connections_wait_for_room() {
    let dir = tempfile::tempdir().unwrap();
    let app = backend("app");
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(1, &[route("app", app.addr)]));
    let mut args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    args.extend(["--max-connections".into(), "3".into()]);
    let mut gateway = GatewayProcess::spawn(dir.path(), "capped", &args);
    gateway.wait_ready();
    assert_eq!(
        gateway.metric("switchyard_gateway_connections_max"),
        Some(3.0)
    );
    let request = "GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    // Three kept-alive connections, served on the gateway's two threads.
    let mut open: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = connect(gateway.proxy).unwrap();
            write!(stream, "{request}").unwrap();
            assert_eq!(read_response(&mut stream).unwrap(), (200, "app".into()));
            stream
        })
        .collect();

    // A fourth is not accepted while they are open: its request waits.
    let mut fourth = connect(gateway.proxy).unwrap();
    write!(fourth, "{request}").unwrap();
    gateway.wait_for("the limit to be reported", |gateway| {
        gateway.log().contains("the connection limit is reached")
    });
    fourth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let early = read_response(&mut fourth).map_err(|error| error.kind());
    assert!(
        matches!(
            early,
            Err(io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        ),
        "{early:?}"
    );
    assert_eq!(
        gateway.metric("switchyard_gateway_connections_open"),
        Some(3.0)
    );

    // One closes: the fourth is served.
    drop(open.pop());
    fourth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(read_response(&mut fourth).unwrap(), (200, "app".into()));
    for stream in &mut open {
        write!(stream, "{request}").unwrap();
        assert_eq!(read_response(stream).unwrap(), (200, "app".into()));
    }
}

#[test]
fn the_access_log_has_a_line_per_request_and_is_opened_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let app = backend("app");
    let orchestrator = Orchestrator::start();
    let _live = orchestrator.stream(snapshot(1, &[route("app", app.addr)]));
    let path = dir.path().join("access.log");
    let mut args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    args.extend(["--access-log".into(), path.display().to_string()]);
    let mut gateway = GatewayProcess::spawn(dir.path(), "logged", &args);
    gateway.wait_ready();
    gateway.wait_for("app.test through the proxy", |gateway| {
        matches!(gateway.get("app.test"), Ok((200, _)))
    });
    let lines = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    wait_for("the request's line", || {
        lines(&path).iter().any(|line| line["host"] == "app.test")
    });
    let line = lines(&path).pop().unwrap();
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], app.addr.to_string().as_str());

    // logrotate's way: move the file, then SIGHUP.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    gateway.signal(libc::SIGHUP);
    gateway.wait_for("the log reopened", |gateway| {
        gateway.log().contains("reopening the access log")
    });
    assert_eq!(
        http_get(gateway.proxy, "app.test", "/rotated").unwrap().0,
        200
    );
    wait_for("a line in the new file", || !lines(&path).is_empty());
    let after = lines(&path);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["path"], "/rotated");
    assert!(lines(&rotated)
        .iter()
        .all(|line| line["path"] != "/rotated"));
    assert!(gateway.is_running());

    // Stopped right after a request, the gateway writes its line before it exits.
    assert_eq!(http_get(gateway.proxy, "app.test", "/last").unwrap().0, 200);
    gateway.signal(libc::SIGTERM);
    assert!(gateway.wait_exit().success());
    assert_eq!(lines(&path).last().unwrap()["path"], "/last");

    // A log that cannot be opened stops the start, naming the file.
    let mut args = gateway_args(dir.path(), free_port(), free_port(), &[orchestrator.url()]);
    args.extend(["--access-log".into(), "/nonexistent/access.log".into()]);
    let mut refused = GatewayProcess::spawn(dir.path(), "refused", &args);
    assert!(!refused.wait_exit().success());
    assert!(
        refused
            .log()
            .contains("cannot open the access log /nonexistent/access.log"),
        "{}",
        refused.log()
    );
}
