//! `switchyard up` and `switchyard upgrade` on a whole local region: real ZooKeeper,
//! orchestrators, gateways and backends as processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{free_port_run, process_exists, switchyard};

/// One GET through a gateway with a Host header: the body on 200, else an error.
fn get(gateway: SocketAddr, host: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&gateway, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    if !answer.starts_with("HTTP/1.1 200") {
        return Err(answer.lines().next().unwrap_or("no answer").to_string());
    }
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

struct Up {
    child: Child,
    dir: tempfile::TempDir,
    gateways: Vec<SocketAddr>,
}

impl Up {
    fn start() -> Up {
        let dir = tempfile::tempdir().unwrap();
        let zk = free_port_run(3);
        let peer = free_port_run(3);
        let election = free_port_run(3);
        let orchestrators = free_port_run(2);
        let gateways = free_port_run(2);
        let admins = free_port_run(2);
        let backends = free_port_run(3);
        let mut child = switchyard()
            .arg("up")
            .arg("--dir")
            .arg(dir.path())
            .args([
                "--zk-port",
                &zk.to_string(),
                "--zk-peer-port",
                &peer.to_string(),
                "--zk-election-port",
                &election.to_string(),
                "--zk-heap-mib",
                "256",
            ])
            .args([
                "--orchestrator-port",
                &orchestrators.to_string(),
                "--gateway-port",
                &gateways.to_string(),
            ])
            .args([
                "--gateway-admin-port",
                &admins.to_string(),
                "--backend-port",
                &backends.to_string(),
            ])
            .args(["--shards", "64"])
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut printed = Vec::new();
        for line in stdout.lines() {
            let line = line.unwrap();
            if line.starts_with("Press Ctrl-C") {
                break;
            }
            printed.push(line);
        }
        assert!(
            printed.iter().any(|l| l.starts_with("gateway-2")),
            "the table lists the gateways: {printed:?}"
        );
        let gateways = (0..2)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], gateways + i)))
            .collect();
        Up {
            child,
            dir,
            gateways,
        }
    }

    fn region(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.path().join("region.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn pids(&self) -> Vec<u32> {
        let region = self.region();
        ["zookeeper", "orchestrators", "gateways", "backends"]
            .iter()
            .flat_map(|kind| region[kind].as_array().unwrap().clone())
            .filter_map(|c| c["pid"].as_u64().map(|p| p as u32))
            .collect()
    }

    fn upgrade(&self) -> std::process::Output {
        switchyard()
            .args(["upgrade", "--step-timeout", "90s", "--dir"])
            .arg(self.dir.path())
            .output()
            .unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Requests through every gateway in a loop until stopped; counts failures.
fn steady_load(
    gateways: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut errors = Vec::new();
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let gateway = gateways[i % gateways.len()];
            let host = ["hello.localhost", "world.localhost", "x.demo.localhost"][i % 3];
            match get(gateway, host) {
                Ok(_) => {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{gateway} {host}: {err}"));
                }
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        errors
    })
}

fn hold_a_shard(zk_connect: &str) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let connect = zk_connect.to_string();
    runtime.block_on(async move {
        let zk = coord::Zk::connect(coord::Config::new(connect))
            .await
            .unwrap();
        // Squat on a shard: delete its owner's lock by hand and take it. The owner
        // cannot re-claim it, so it is not ready.
        let shard = "/switchyard/local/shards/0005";
        let _ = zk.delete(&format!("{shard}/&owner"), None).await;
        zk.create(
            &format!("{shard}/&owner"),
            b"squatter",
            coord::CreateMode::Ephemeral,
        )
        .await
        .unwrap();
        std::mem::forget(zk);
    });
    runtime
}

fn wait_for(path: &Path) {
    for _ in 0..600 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn up_serves_the_demo_apps_survives_an_upgrade_under_load_and_stops_cleanly() {
    let mut up = Up::start();
    wait_for(&up.dir.path().join("control.sock"));
    for gateway in &up.gateways {
        assert!(get(*gateway, "hello.localhost")
            .unwrap()
            .starts_with("hello from backend-"));
        assert_eq!(
            get(*gateway, "world.localhost").unwrap(),
            "hello from backend-3\n"
        );
        assert!(get(*gateway, "anything.demo.localhost")
            .unwrap()
            .starts_with("hello from backend-"));
        assert!(get(*gateway, "nobody.localhost")
            .unwrap_err()
            .contains("404"));
    }
    // Each gateway logs its requests beside its log.
    let access_log = up.dir.path().join("logs").join("gateway-1.access.log");
    let mut logged = String::new();
    for _ in 0..100 {
        logged = std::fs::read_to_string(&access_log).unwrap_or_default();
        if logged.contains("\"host\":\"nobody.localhost\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(logged.contains("\"status\":404"), "{logged}");
    assert!(logged.contains("\"host\":\"hello.localhost\""), "{logged}");

    // A dry run changes nothing.
    let before = up.pids();
    let dry = switchyard()
        .args(["upgrade", "--dry-run", "--dir"])
        .arg(up.dir.path())
        .output()
        .unwrap();
    assert!(dry.status.success());
    assert!(String::from_utf8_lossy(&dry.stdout).contains("restart gateway-2"));
    assert_eq!(up.pids(), before);

    // The rolling upgrade under a steady load: every process replaced, no request lost.
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let load = steady_load(
        up.gateways.clone(),
        stop.clone(),
        ok.clone(),
        failed.clone(),
    );
    let upgrade = up.upgrade();
    stop.store(true, Ordering::Relaxed);
    let errors = load.join().unwrap();
    assert!(
        upgrade.status.success(),
        "{}",
        String::from_utf8_lossy(&upgrade.stderr)
    );
    assert!(
        errors.is_empty(),
        "{} of {} requests failed: {:?}",
        errors.len(),
        ok.load(Ordering::Relaxed) + errors.len() as u64,
        &errors[..errors.len().min(5)]
    );
    assert!(ok.load(Ordering::Relaxed) > 50, "the load ran");
    let after = up.pids();
    let kept: Vec<_> = after.iter().filter(|p| before.contains(p)).collect();
    assert_eq!(
        kept.len(),
        3,
        "only the 3 backends keep their pids: {before:?} -> {after:?}"
    );

    // A gateway that would not start (its access log's path is now a folder): the upgrade
    // stops at it with the reason as soon as the new process exits, and the old one
    // serves on.
    let gateway_pid = |up: &Up| up.region()["gateways"][0]["pid"].as_u64();
    let serving = gateway_pid(&up);
    std::fs::remove_file(&access_log).unwrap();
    std::fs::create_dir(&access_log).unwrap();
    let refused = up.upgrade();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gateway-1")
            && stderr.contains("exited at start")
            && stderr.contains("cannot open the access log"),
        "{stderr}"
    );
    assert_eq!(gateway_pid(&up), serving);
    for gateway in &up.gateways {
        assert!(get(*gateway, "hello.localhost")
            .unwrap()
            .starts_with("hello from backend-"));
    }
    std::fs::remove_dir(&access_log).unwrap();

    // An orchestrator held not ready: the upgrade refuses and touches nothing.
    let zk = up.region()["zk"].as_str().unwrap().to_string();
    let squatter = hold_a_shard(&zk);
    let orchestrators: Vec<String> = up.region()["orchestrators"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            o["url"]
                .as_str()
                .unwrap()
                .trim_start_matches("http://")
                .to_string()
        })
        .collect();
    super::orchestrator::eventually("an orchestrator to notice its lost shard", || {
        orchestrators
            .iter()
            .any(|addr| {
                super::orchestrator::get(addr.parse().unwrap(), "/readyz")
                    .is_some_and(|(s, _)| s == 503)
            })
            .then_some(())
    });
    let held = up.pids();
    let refused = up.upgrade();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("refused") && stderr.contains("orchestrator-"),
        "{stderr}"
    );
    assert_eq!(up.pids(), held, "a refused upgrade restarted something");
    drop(squatter);

    // Ctrl-C stops everything.
    let all = up.pids();
    unsafe { libc::kill(up.child.id() as libc::pid_t, libc::SIGINT) };
    let status = up.child.wait().unwrap();
    assert!(status.success(), "{status}");
    for pid in all {
        assert!(!process_exists(pid), "{pid} survived `up`");
    }
    assert!(
        up.dir.path().join("zookeeper/zk1/data/version-2").is_dir(),
        "state kept"
    );
}
