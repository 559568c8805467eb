//! The operator commands (`wait-ready`, `zk audit`, `app`, `status`) as scripts run
//! them: against a real ZooKeeper, a real orchestrator process and a real gateway
//! process, checking exit statuses and what is printed.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::{json, Value};

use super::orchestrator::{eventually, get};
use super::{switchyard, switchyard_with_open_files};

const TOKEN: &str = "cli-test-token-0123456789";

/// What a finished command left.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `switchyard ARGS` in `cwd` (so that no `.switchyard` of the developer's is
/// found), with `stdin` as its input.
fn run_in(cwd: &Path, args: &[&str], stdin: &str) -> Run {
    let mut child = switchyard()
        .args(args)
        .current_dir(cwd)
        .env_remove("SWITCHYARD_ORCHESTRATOR")
        .env_remove("SWITCHYARD_TOKEN")
        .env_remove("SWITCHYARD_TOKEN_FILE")
        .env_remove("SWITCHYARD_DIR")
        .env("SWITCHYARD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn run(cwd: &Path, args: &[&str]) -> Run {
    run_in(cwd, args, "")
}

/// What `wait-ready` printed about `url`.
fn state_of<'a>(out: &'a Run, url: &str) -> &'a str {
    out.stdout
        .lines()
        .find_map(|line| line.strip_prefix(url))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no line for {url}:\n{out}"))
}

/// The ids of a `list --json`.
fn app_ids(list: &Value) -> Vec<String> {
    list["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

/// A loopback address nothing listens on, and nothing will: its port stays bound, not
/// listening, until the tests end (a connect to it is refused). Freed at once, the port
/// could be taken by another test's server, running meanwhile, and answer.
pub(crate) fn closed_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let addr = socket.local_addr().unwrap();
    // Held for the rest of the process: one file each, a few in all.
    std::mem::forget(socket);
    addr
}

/// A loopback address free a moment ago, for a server of the test to listen on.
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A process whose stderr goes to a log file, printed if the test fails; killed on drop.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Process {
        let log = dir.join(format!("{name}.log"));
        let child = switchyard()
            .args(args)
            .env("SWITCHYARD_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Process { child, log }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {}:\n{log}", self.log.display());
        }
    }
}

/// `switchyard orchestrator` on a free port, with 16 shards in region `cli`.
struct Orchestrator {
    addr: SocketAddr,
    url: String,
    token_file: PathBuf,
    _process: Process,
}

impl Orchestrator {
    fn start(zk: &testkit::Zk, dir: &Path, member: &str) -> Orchestrator {
        let addr = free_addr();
        let token_file = dir.join(format!("{member}.token"));
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let args: Vec<String> = [
            "orchestrator",
            "--zk",
            &zk.connect_string(),
            "--region",
            "cli",
            "--member-id",
            member,
            "--listen",
            &addr.to_string(),
            "--shards",
            "16",
            "--token-file",
            token_file.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        let process = Process::spawn(dir, member, &args);
        let orchestrator = Orchestrator {
            addr,
            url: format!("http://{addr}"),
            token_file,
            _process: process,
        };
        eventually(&format!("{member} to be ready"), || {
            (get(orchestrator.addr, "/readyz")?.0 == 200).then_some(())
        });
        orchestrator
    }

    /// `app ARGS --orchestrator URL --token-file F`.
    fn app(&self, cwd: &Path, args: &[&str]) -> Run {
        let mut all = vec!["app"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--orchestrator", &self.url, "--token-file"]);
        all.push(self.token_file.to_str().unwrap());
        run(cwd, &all)
    }
}

/// `switchyard gateway` with its admin API on a free port; with an orchestrator that is
/// not there, it has no table and is never ready.
struct Gateway {
    admin: SocketAddr,
    admin_url: String,
    _process: Process,
}

impl Gateway {
    fn start(dir: &Path, name: &str, orchestrator: &str) -> Gateway {
        let admin = free_addr();
        let args: Vec<String> = [
            "gateway",
            "--workers",
            "1",
            "--state-dir",
            dir.join(name).to_str().unwrap(),
            "--listen",
            &free_addr().to_string(),
            "--admin",
            &admin.to_string(),
            "--reconnect-min",
            "20ms",
            "--reconnect-max",
            "200ms",
            "--orchestrator",
            orchestrator,
        ]
        .map(String::from)
        .to_vec();
        let mut process = Process::spawn(dir, name, &args);
        eventually(&format!("{name}'s admin API"), || {
            if let Some(status) = process.child.try_wait().unwrap() {
                panic!("{name} exited with {status}");
            }
            (get(admin, "/healthz")?.0 == 200).then_some(())
        });
        Gateway {
            admin,
            admin_url: format!("http://{admin}"),
            _process: process,
        }
    }
}

#[test]
fn wait_ready_tells_ready_from_not_ready_from_unreachable() {
    let zk = testkit::Zk::standalone();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let orchestrator = Orchestrator::start(&zk, cwd, "o1");
    let nowhere = format!("http://{}", closed_addr());
    let gateway = Gateway::start(cwd, "gw-no-table", &nowhere);
    let closed = format!("http://{}", closed_addr());
    let short = ["--timeout", "1s", "--interval", "100ms"];

    // A base URL is polled at /readyz; a URL with a path as given.
    let healthz = format!("{}/healthz", orchestrator.url);
    let out = run(cwd, &["wait-ready", &orchestrator.url, &healthz]);
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!(
        state_of(&out, &format!("{}/readyz", orchestrator.url)),
        "ready",
        "{out}"
    );
    assert_eq!(state_of(&out, &healthz), "ready", "{out}");

    // A gateway without a table answers 503 with its reason, which is printed.
    let mut args = vec!["wait-ready", &gateway.admin_url];
    args.extend(short);
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("not ready (503)"), "{out}");
    assert!(out.stdout.contains("no route table yet"), "{out}");

    // Nothing listens: unreachable.
    let mut args = vec!["wait-ready", &closed];
    args.extend(short);
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stdout.contains("unreachable"), "{out}");

    // Ready and unreachable: 3. Add one that is merely not ready: 1.
    let mut args = vec!["wait-ready", &orchestrator.url, &closed];
    args.extend(short);
    assert_eq!(run(cwd, &args).code, Some(3));
    args.push(&gateway.admin_url);
    args.push("--json");
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    assert_eq!(report["ready"], false);
    let states: Vec<&str> = report["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready", "unreachable", "not_ready"], "{out}");
    assert_eq!(report["urls"][2]["status"], 503);
    drop(gateway);
}

#[test]
fn zk_audit_names_what_is_over_the_threshold() {
    let zk = testkit::Zk::standalone();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut config = coord::Config::new(zk.connect_string());
            // Sizes in ZooKeeper are then the sizes written.
            config.compress_above_bytes = usize::MAX;
            let client = coord::Zk::connect(config).await.unwrap();
            client.ensure_path("/audit/big").await.unwrap();
            let persistent = coord::CreateMode::Persistent;
            let blob = vec![b'x'; 9_500];
            client
                .create("/audit/big/blob", &blob, persistent)
                .await
                .unwrap();
            client
                .create("/audit/small", b"tiny", persistent)
                .await
                .unwrap();
            client.ensure_path("/clean/a").await.unwrap();
            client
                .create("/clean/a/b", b"tiny", persistent)
                .await
                .unwrap();
            client.close().await;
        });
    let connect = zk.connect_string();
    let audit = |path: &str, extra: &[&str]| {
        let mut args = vec!["zk", "audit", "--zk", &connect, "--path", path];
        args.extend_from_slice(&["--jute-maxbuffer", "10000"]);
        args.extend_from_slice(extra);
        run(cwd, &args)
    };

    // 9,500 bytes is over 90 % of a 10,000-byte limit.
    let out = audit("/audit", &[]);
    assert_eq!(out.code, Some(1), "{out}");
    let over = out
        .stdout
        .split("Over 90% of the limit:")
        .nth(1)
        .unwrap_or("");
    assert!(over.contains("/audit/big/blob: data"), "{out}");
    assert!(!over.contains("/audit/small"), "{out}");
    assert!(out.stdout.contains("ALERT"), "{out}");

    let out = audit("/audit", &["--json"]);
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    assert_eq!(report["alarming"], true);
    assert_eq!(report["nodes"], 4, "{out}");
    assert_eq!(report["limit_bytes"], 10000);
    assert_eq!(report["over"].as_array().unwrap().len(), 1, "{out}");
    assert_eq!(report["over"][0]["path"], "/audit/big/blob");
    assert!(report["over"][0]["data_bytes"].as_u64().unwrap() >= 9_500);
    assert_eq!(report["largest"][0]["path"], "/audit/big/blob");
    assert_eq!(report["widest"][0]["path"], "/audit", "{out}");

    // A clean tree, and a higher threshold for the same tree: 0.
    let out = audit("/clean", &[]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("OK: no node is over 90%"), "{out}");
    assert_eq!(audit("/audit", &["--threshold", "0.99"]).code, Some(0));

    // No such tree: 1, named.
    let out = audit("/nowhere", &[]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("no node /nowhere"), "{out}");

    // No ZooKeeper there: 3.
    let closed = closed_addr().to_string();
    let args = ["zk", "audit", "--zk", &closed, "--connect-timeout", "1s"];
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(3), "{out}");
    assert!(out.stderr.contains("unreachable"), "{out}");
}

#[test]
fn app_commands_create_show_list_delete_and_import() {
    let zk = testkit::Zk::standalone();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let orchestrator = Orchestrator::start(&zk, cwd, "o1");

    // From flags.
    let out = orchestrator.app(
        cwd,
        &[
            "create",
            "--id",
            "shop",
            "--domain",
            "shop.test",
            "--domain",
            "www.shop.test",
            "--backend",
            "127.0.0.1:9001",
            "--backend",
            "127.0.0.1:9002=3",
            "--http-check",
            "/healthz",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("created app shop"), "{out}");

    // From a file, and from stdin.
    let file = cwd.join("blog.json");
    let blog =
        json!({"id": "blog", "domains": ["blog.test"], "backends": [{"addr": "127.0.0.1:9003"}]});
    std::fs::write(&file, blog.to_string()).unwrap();
    let out = orchestrator.app(cwd, &["create", "--file", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out}");
    let wiki =
        json!({"id": "wiki", "domains": ["wiki.test"], "backends": [{"addr": "127.0.0.1:9004"}]});
    let token = orchestrator.token_file.to_str().unwrap();
    let args = [
        "app",
        "create",
        "-f",
        "-",
        "--orchestrator",
        &orchestrator.url,
        "--token-file",
        token,
    ];
    let out = run_in(cwd, &args, &wiki.to_string());
    assert_eq!(out.code, Some(0), "{out}");

    // get: text and JSON.
    let out = orchestrator.app(cwd, &["get", "shop"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("www.shop.test"), "{out}");
    assert!(out.stdout.contains("127.0.0.1:9002 (weight 3)"), "{out}");
    assert!(out.stdout.contains("http GET /healthz"), "{out}");
    let app = orchestrator.app(cwd, &["get", "shop", "--json"]).json();
    assert_eq!(app["domains"], json!(["shop.test", "www.shop.test"]));
    assert_eq!(
        app["backends"][1],
        json!({"addr": "127.0.0.1:9002", "weight": 3})
    );
    assert_eq!(
        app["health_check"],
        json!({"type": "http", "path": "/healthz"})
    );

    // list: a table; pages followed with --all; a page says how to get the next.
    let out = orchestrator.app(cwd, &["list"]);
    assert_eq!(out.code, Some(0), "{out}");
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert!(rows[0].starts_with("ID"), "{out}");
    let ids: Vec<&str> = rows[1..]
        .iter()
        .map(|r| r.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["blog", "shop", "wiki"], "{out}");
    let all = orchestrator.app(cwd, &["list", "--limit", "1", "--all", "--json"]);
    let ids = app_ids(&all.json());
    assert_eq!(ids, ["blog", "shop", "wiki"], "{all}");
    let page = orchestrator.app(cwd, &["list", "--limit", "1"]);
    assert!(page.stderr.contains("--after blog"), "{page}");
    let by_domain = orchestrator.app(cwd, &["list", "--domain", "www.shop.test", "--json"]);
    assert_eq!(by_domain.json()["apps"][0]["id"], "shop", "{by_domain}");

    // delete: with a stale version refused (1), then done; the app is gone (1).
    let out = orchestrator.app(cwd, &["delete", "blog", "--if-match", "1"]);
    assert_eq!(out.code, Some(1), "{out}");
    let out = orchestrator.app(cwd, &["delete", "blog"]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("deleted app blog"), "{out}");
    let out = orchestrator.app(cwd, &["get", "blog"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("not_found"), "{out}");

    // import: line 2 is bad, the others go in; the bad line is named, exit 1.
    let lines = [
        json!({"id": "imp-1", "domains": ["imp-1.test"], "backends": [{"addr": "127.0.0.1:9101"}]}),
        json!({"id": "imp-2", "domains": ["imp-2.test"], "backends": [{"addr": "no port"}]}),
        json!({"id": "imp-3", "domains": ["imp-3.test"], "backends": [{"addr": "127.0.0.1:9103"}]}),
    ];
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let file = cwd.join("apps.ndjson");
    std::fs::write(&file, &ndjson).unwrap();
    let out = orchestrator.app(cwd, &["import", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("3 lines, 2 apps imported, 1 line failed"),
        "{out}"
    );
    assert!(out.stdout.contains("line 2:"), "{out}");
    assert!(out.stdout.contains("backends[0].addr"), "{out}");
    assert_eq!(orchestrator.app(cwd, &["get", "imp-3"]).code, Some(0));

    // --atomic: one bad line, nothing imported.
    let lines = [
        json!({"id": "atom-1", "domains": ["atom-1.test"], "backends": [{"addr": "127.0.0.1:9201"}]}),
        json!({"id": "atom-2", "domains": ["imp-1.test"], "backends": [{"addr": "127.0.0.1:9202"}]}),
    ];
    let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&file, &ndjson).unwrap();
    let out = orchestrator.app(
        cwd,
        &["import", file.to_str().unwrap(), "--atomic", "--json"],
    );
    assert_eq!(out.code, Some(1), "{out}");
    let done = out.json();
    assert_eq!(done["imported"], 0, "{out}");
    assert_eq!(done["failed"][0]["line"], 2, "{out}");
    assert_eq!(orchestrator.app(cwd, &["get", "atom-1"]).code, Some(1));

    // Without flags, region.json (as `switchyard up` writes it) names the orchestrator
    // and the token file.
    let region = json!({
        "zk": zk.connect_string(),
        "region": "cli",
        "token_file": orchestrator.token_file,
        "supervisor_pid": std::process::id(),
        "zookeeper": [],
        "orchestrators": [{"name": "orchestrator-1", "url": orchestrator.url}],
        "gateways": [],
        "backends": [],
    });
    let state = cwd.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("region.json"), region.to_string()).unwrap();
    let state = state.to_str().unwrap();
    let out = run(cwd, &["app", "delete", "wiki", "--dir", state]);
    assert_eq!(out.code, Some(0), "{out}");
    let out = run(cwd, &["app", "list", "--dir", state, "--json"]);
    let ids = app_ids(&out.json());
    assert_eq!(ids, ["imp-1", "imp-3", "shop"], "{out}");

    // A file of several request-body pieces, whose progress shows as it is imported.
    let many: String = (0..10_001)
        .map(|i| {
            let app = json!({"id": format!("bulk-{i}"), "domains": [format!("bulk-{i}.test")],
                             "backends": [{"addr": "127.0.0.1:9101"}]});
            format!("{app}\n")
        })
        .collect();
    std::fs::write(&file, &many).unwrap();
    let out = run(
        cwd,
        &["app", "import", file.to_str().unwrap(), "--dir", state],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("import: 10000 lines read, 10000 imported, 0 failed"),
        "{out}"
    );
    assert!(
        out.stdout
            .contains("10001 lines, 10001 apps imported, 0 lines failed"),
        "{out}"
    );
}

#[test]
fn app_errors_show_the_api_error_and_exit_1() {
    let zk = testkit::Zk::standalone();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let orchestrator = Orchestrator::start(&zk, cwd, "o1");
    let url = orchestrator.url.as_str();
    let create = [
        "app",
        "create",
        "--id",
        "x",
        "--domain",
        "x.test",
        "--backend",
        "127.0.0.1:9001",
        "--orchestrator",
        url,
    ];

    // A wrong token: the API's `unauthorized`.
    let wrong = cwd.join("wrong-token");
    std::fs::write(&wrong, "not-the-token-0123456789").unwrap();
    let mut args = create.to_vec();
    args.extend(["--token-file", wrong.to_str().unwrap()]);
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("unauthorized (HTTP 401)"), "{out}");

    // No token at all: said before anything is sent, with how to give one.
    let out = run(cwd, &create);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("--token-file"), "{out}");
    assert!(out.stderr.contains("SWITCHYARD_TOKEN"), "{out}");

    // Each invalid field is shown; --json puts the API's error on stdout.
    let out = orchestrator.app(
        cwd,
        &[
            "create",
            "--id",
            "Bad Id",
            "--domain",
            "bad..test",
            "--backend",
            "h:1",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("invalid (HTTP 400)"), "{out}");
    assert!(out.stderr.contains("\n  id: "), "{out}");
    assert!(out.stderr.contains("\n  domains[0]: "), "{out}");
    let error = out.json();
    assert_eq!(error["error"], "invalid");
    assert_eq!(error["status"], 400);
    assert!(error["fields"].as_array().unwrap().len() >= 2, "{out}");

    // An unknown app.
    let out = orchestrator.app(cwd, &["get", "nope"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("not_found (HTTP 404): no app nope"),
        "{out}"
    );
}

#[test]
fn unreachable_peers_exit_3_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let closed = format!("http://{}", closed_addr());

    let out = run(cwd, &["app", "list", "--orchestrator", &closed]);
    assert_eq!(out.code, Some(3), "{out}");
    assert!(
        out.stderr.contains(&format!("cannot reach {closed}")),
        "{out}"
    );
    let token = cwd.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let args = [
        "app",
        "delete",
        "x",
        "--orchestrator",
        &closed,
        "--token-file",
    ];
    let mut args = args.to_vec();
    args.push(token.to_str().unwrap());
    assert_eq!(run(cwd, &args).code, Some(3));
    // Flags name what `status` checks when there is no region.json.
    let out = run(cwd, &["status", "--orchestrator", &closed, "--json"]);
    assert_eq!(out.code, Some(3), "{out}");
    assert_eq!(out.json()["orchestrators"][0]["health"], "unreachable");

    for usage in [
        &["app", "create", "--id", "x"][..],
        &["app", "create", "--file", "a.json", "--id", "x"],
        &[
            "app",
            "create",
            "--id",
            "x",
            "--domain",
            "x.test",
            "--backend",
            "h:1=many",
        ],
        &["wait-ready"],
        &["wait-ready", "http://127.0.0.1:1", "--timeout", "soon"],
        &["wait-ready", "http://not a url"],
        &["zk", "audit", "--threshold", "2"],
        &["app", "frobnicate"],
    ] {
        let out = run(cwd, usage);
        assert_eq!(out.code, Some(2), "{usage:?}: {out}");
    }
}

#[test]
fn status_reports_zookeeper_orchestrators_and_gateways() {
    let zk = testkit::Zk::standalone();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let orchestrator = Orchestrator::start(&zk, cwd, "o1");
    let out = orchestrator.app(
        cwd,
        &[
            "create",
            "--id",
            "shop",
            "--domain",
            "shop.test",
            "--backend",
            "127.0.0.1:9001",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    let gateway = Gateway::start(cwd, "gw-1", &orchestrator.url);
    eventually("the gateway to have the route", || {
        let (status, body) = get(gateway.admin, "/readyz")?;
        let body: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && body["routes"] == 1).then_some(())
    });

    let connect = zk.connect_string();
    let flags = [
        "status",
        "--zk",
        &connect,
        "--orchestrator",
        &orchestrator.url,
        "--gateway",
        &gateway.admin_url,
    ];
    let mut args = flags.to_vec();
    args.push("--json");
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(0), "{out}");
    let report = out.json();
    assert_eq!(report["health"], "ok", "{out}");
    let server = &report["zookeeper"][0];
    assert_eq!(server["health"], "ok");
    assert_eq!(server["mode"], "standalone");
    // A standalone server makes no proposals: the figure is there, without a value.
    assert!(server.get("max_proposal_size").is_some(), "{out}");
    assert!(
        server["approximate_data_size"].as_u64().unwrap() > 0,
        "{out}"
    );
    assert!(server["ephemerals_count"].as_u64().unwrap() > 0, "{out}");
    let orch = &report["orchestrators"][0];
    assert_eq!(orch["ready"], true);
    assert_eq!(orch["region"]["members"], json!(["o1"]));
    assert_eq!(orch["region"]["owners"], json!({"o1": 16}));
    assert_eq!(orch["region"]["unowned"], 0);
    assert_eq!(orch["region"]["apps"], 1);
    assert!(orch["region"]["route_version"].as_u64().unwrap() > 0);
    assert_eq!(orch["region"]["route_subscribers"], 1, "{out}");
    assert_eq!(orch["payloads_over_alert"], 0, "{out}");
    let gw = &report["gateways"][0];
    assert_eq!(gw["health"], "ok");
    assert_eq!(gw["ready"], true);
    assert_eq!(gw["routes"], 1);
    assert!(gw["table_version"].as_u64().unwrap() > 0, "{out}");
    assert!(gw["staleness_seconds"].is_f64(), "{out}");
    assert_eq!(gw["held_updates"], 0);
    // It writes its table to its own state folder.
    assert_eq!(gw["state_folder_held"], true, "{out}");
    assert!(gw["snapshot_unsaved_seconds"].is_f64(), "{out}");
    // Its connection limit, from the open-files limit it runs under.
    assert!(gw["connections_limit"].as_u64().unwrap() >= 16, "{out}");
    assert!(gw["connections"].as_u64().is_some(), "{out}");
    assert_eq!(report["size_alerts"], json!([]));

    let out = run(cwd, &flags);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("standalone"), "{out}");
    assert!(out.stdout.contains("    connections: "), "{out}");
    assert!(out.stdout.ends_with("Region: ok\n"), "{out}");

    // From region.json, with a gateway that is gone: 3, and it is named.
    let gone = format!("http://{}", closed_addr());
    let region = json!({
        "zk": connect,
        "region": "cli",
        "token_file": orchestrator.token_file,
        "supervisor_pid": std::process::id(),
        "zookeeper": [{"name": "zookeeper-1", "url": connect}],
        "orchestrators": [{"name": "orchestrator-1", "url": orchestrator.url}],
        "gateways": [
            {"name": "gateway-1", "url": "http://127.0.0.1:1", "admin": gateway.admin_url},
            {"name": "gateway-2", "url": "http://127.0.0.1:1", "admin": gone},
        ],
        "backends": [],
    });
    std::fs::write(cwd.join("region.json"), region.to_string()).unwrap();
    let dir_arg = cwd.to_str().unwrap();
    let out = run(cwd, &["status", "--dir", dir_arg, "--json"]);
    assert_eq!(out.code, Some(3), "{out}");
    let report = out.json();
    assert_eq!(report["health"], "unreachable");
    assert_eq!(report["zookeeper"][0]["name"], "zookeeper-1");
    assert_eq!(report["orchestrators"][0]["health"], "ok");
    assert_eq!(report["gateways"][0]["health"], "ok");
    assert_eq!(report["gateways"][1]["name"], "gateway-2");
    assert_eq!(report["gateways"][1]["health"], "unreachable");
    let out = run(cwd, &["status", "--dir", dir_arg]);
    assert!(out.stdout.contains("gateway-2 ("), "{out}");
    assert!(out.stdout.contains("UNREACHABLE"), "{out}");

    // A gateway that answers but is not ready: 1 (flags replace region.json's list).
    let lonely = Gateway::start(cwd, "gw-no-table", &gone);
    let args = [
        "status",
        "--dir",
        dir_arg,
        "--gateway",
        &lonely.admin_url,
        "--json",
    ];
    let out = run(cwd, &args);
    assert_eq!(out.code, Some(1), "{out}");
    let report = out.json();
    assert_eq!(report["health"], "degraded");
    assert_eq!(report["gateways"].as_array().unwrap().len(), 1);
    assert!(
        report["gateways"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no route table yet"),
        "{out}"
    );
}

#[test]
fn bench_gateway_refuses_more_connections_than_its_open_files_allow() {
    let dir = tempfile::tempdir().unwrap();
    let bench = |connections: &str| {
        let mut command = switchyard_with_open_files(1024, 1024);
        // `--tls --peers direct` is refused by the check after this one.
        let args = [
            "bench",
            "gateway",
            "--no-install",
            "--tls",
            "--peers",
            "direct",
        ];
        let output = command
            .args(args)
            .args(["--connections", connections])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr, output.stdout.is_empty())
    };
    let (code, stderr, quiet) = bench("1000");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--connections 1000 needs about 4512 open files")
            && stderr.contains("the limit is 1024"),
        "{stderr}"
    );
    assert!(quiet);
    let (code, stderr, _) = bench("100");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--peers names none of them"), "{stderr}");
}

#[test]
fn bench_gateway_refuses_settings_out_of_range_before_starting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    for (args, name) in [
        (&["--wrk-slice-secs", "0"][..], "--wrk-slice-secs"),
        (&["--wrk-slice-secs", "61"], "--wrk-slice-secs"),
        (&["--wrk-rounds", "1001"], "--wrk-rounds"),
        (&["--wrk-rounds", "many"], "--wrk-rounds"),
        (&["--rounds", "1001"], "--rounds"),
        (&["--slice-ms", "99"], "--slice-ms"),
        (&["--http2", "--streams", "0"], "--streams"),
        (&["--http2", "--streams", "257"], "--streams"),
        (&["--http2", "--upload-bytes", "0"], "--upload-bytes"),
        (&["--http2", "--upload-bytes", "16777217"], "--upload-bytes"),
    ] {
        let mut all = vec!["bench", "gateway", "--no-install"];
        all.extend_from_slice(args);
        // Were the value accepted, the first check after parsing would stop the command
        // before it measured anything, with another error.
        all.extend(["--rate-share", "0"]);
        let out = run(cwd, &all);
        assert_ne!(out.code, Some(0), "{args:?}: {out}");
        let refused = format!("invalid value '{}' for '{name} ", args[args.len() - 1]);
        assert!(out.stderr.contains(&refused), "{args:?}: {out}");
        assert!(out.stdout.is_empty(), "{args:?}: {out}");
    }
    // In range, the same flags parse (the help is printed and nothing is run).
    let out = run(
        cwd,
        &[
            "bench",
            "gateway",
            "--wrk-rounds",
            "0",
            "--wrk-slice-secs",
            "60",
            "--help",
        ],
    );
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.contains("--wrk-rounds"), "{out}");

    // Streams are HTTP/2's; the HTTP/2 client measures no new connections.
    let out = run(cwd, &["bench", "gateway", "--no-install", "--streams", "4"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("--streams is for --http2"), "{out}");
    let out = run(
        cwd,
        &[
            "bench",
            "gateway",
            "--no-install",
            "--http2",
            "--new-connections",
            "--rate-share",
            "0",
        ],
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("cannot be used with"), "{out}");
    // Uploads are sent by the HTTP/2 client only.
    let out = run(
        cwd,
        &[
            "bench",
            "gateway",
            "--no-install",
            "--upload-bytes",
            "1024",
            "--rate-share",
            "0",
        ],
    );
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("--http2"), "{out}");
}
