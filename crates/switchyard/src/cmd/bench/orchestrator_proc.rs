//! The orchestrator under test as a child process of `bench orchestrator`, and what
//! `/proc` says about it (resident memory, CPU time).
//!
//! The child is started with `zkserver::spawn_bound`: its own process group, killed by
//! the kernel if the benchmark dies, and killed on `Drop` if it is still running.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Lines of the orchestrator's log shown with a failure.
pub const LOG_TAIL_LINES: usize = 20;

/// What every orchestrator of a run is started with.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The `switchyard` binary to run as `switchyard orchestrator`.
    pub binary: PathBuf,
    /// ZooKeeper connect string.
    pub zk: String,
    /// The ZooKeeper server's process (for its CPU time).
    pub zk_pid: Option<u32>,
    /// The region's name.
    pub region: String,
    /// `--shards`.
    pub shards: u16,
    /// The token file.
    pub token_file: PathBuf,
    /// Where each orchestrator's log goes (`orchestrator-<name>.log`).
    pub dir: PathBuf,
}

/// One running orchestrator.
#[derive(Debug)]
pub struct Orchestrator {
    child: Option<Child>,
    /// Its API address.
    pub addr: SocketAddr,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// When it was spawned.
    pub spawned: Instant,
    pid: u32,
}

impl Orchestrator {
    /// Starts an orchestrator on a free port; `name` names its log.
    pub fn spawn(launch: &Launch, name: &str) -> anyhow::Result<Orchestrator> {
        let addr = free_addr()?;
        let log = launch.dir.join(format!("orchestrator-{name}.log"));
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let mut command = Command::new(&launch.binary);
        command
            .arg("orchestrator")
            .args(["--zk", &launch.zk])
            .args(["--region", &launch.region])
            .args(["--listen", &addr.to_string()])
            .arg("--token-file")
            .arg(&launch.token_file)
            .args(["--shards", &launch.shards.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let spawned = Instant::now();
        let child = zkserver::spawn_bound(command)
            .with_context(|| format!("starting {} orchestrator", launch.binary.display()))?;
        let pid = child.id();
        Ok(Orchestrator {
            child: Some(child),
            addr,
            log,
            spawned,
            pid,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `http://<addr>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(err) => Some(format!("cannot be waited for: {err}")),
        }
    }

    /// Memory and CPU as `/proc` says now; `None` once it has exited.
    pub fn sample(&self) -> Option<Sample> {
        Sample::of(&self.pid.to_string())
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_LINES)
    }

    /// Stops it as an operator would (SIGTERM) and waits up to `grace` for it to exit,
    /// then kills it. Returns how long it took and how it ended.
    pub fn terminate(&mut self, grace: Duration) -> (Duration, String) {
        let started = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return (Duration::ZERO, "not running".into());
        };
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child,
        // not yet reaped, so it cannot have been reused.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = started + grace;
        let ended = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    break match child.wait() {
                        Ok(status) => format!("killed after {grace:?} without exiting: {status}"),
                        Err(err) => format!("could not be reaped: {err}"),
                    };
                }
            }
        };
        self.child = None;
        (started.elapsed(), ended)
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Memory and CPU time of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Sample {
    /// Peak resident set so far (VmHWM), in bytes.
    pub vm_hwm_bytes: u64,
    /// Resident set now (VmRSS), in bytes.
    pub vm_rss_bytes: u64,
    /// User plus system CPU time so far, in seconds.
    pub cpu_secs: f64,
}

impl Sample {
    /// `pid` is a number or `self`.
    pub fn of(pid: &str) -> Option<Sample> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        };
        Some(Sample {
            vm_hwm_bytes: kib("VmHWM:")? * 1024,
            vm_rss_bytes: kib("VmRSS:")? * 1024,
            cpu_secs: cpu_secs(pid).unwrap_or(0.0),
        })
    }
}

/// User plus system CPU time of a process, in seconds.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some((utime + stime) as f64 / ticks)
}

/// A free port on 127.0.0.1 (free when asked; the orchestrator binds it just after).
fn free_addr() -> anyhow::Result<SocketAddr> {
    let port = zkserver::ports::free_port().context("finding a free port on 127.0.0.1")?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// Writes a random 32-character token to `dir/token`, readable by us only.
pub fn write_token(dir: &Path) -> anyhow::Result<(PathBuf, String)> {
    use std::hash::{BuildHasher, Hasher};
    use std::os::unix::fs::OpenOptionsExt;
    let mut token = String::new();
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        token.push_str(&format!("{:016x}", hasher.finish()));
    }
    let path = dir.join("token");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, token.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((path, token))
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
