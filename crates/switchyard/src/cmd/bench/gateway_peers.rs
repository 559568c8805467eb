//! The processes `bench gateway` runs: the backend (an nginx serving a fixed 200), the
//! proxies under test (nginx, HAProxy, the gateway) with their configurations, the
//! tools they need (installed with apt-get when missing), CPU pinning, and what a
//! process group costs (CPU time, peak RSS).
//!
//! Every server listens on 127.0.0.1 only, runs in a process group of its own and dies
//! with the benchmark (`zkserver::spawn_bound`).

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

/// The host every request is for: the one route each proxy knows (the gateway: one of
/// its table's).
pub const HOST: &str = "bench.example.test";
/// What the backend answers; a proxied answer must carry exactly this.
pub const BACKEND_BODY: &str = "switchyard-bench-backend";

// ---------------------------------------------------------------------------------------
// Interruption: Ctrl-C stops the benchmark between steps, and its children with it.

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes the first SIGINT or SIGTERM set a flag the benchmark checks between steps (so
/// that it stops its servers on the way out); a second one kills as usual.
pub fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // SA_RESETHAND restores the default action after the first signal.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Tools.

/// An installed program and its version, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub path: PathBuf,
    pub version: String,
}

/// The programs the benchmark uses; a missing one says why.
#[derive(Debug)]
pub struct Tools {
    pub nginx: Result<Tool, String>,
    pub haproxy: Result<Tool, String>,
    /// The closed-loop client: wrk, or h2load for HTTP/2.
    pub wrk: Result<Tool, String>,
}

/// (program, Debian package, arguments that print the version).
const PROGRAMS: [(&str, &str, &str); 3] = [
    ("nginx", "nginx", "-v"),
    ("haproxy", "haproxy", "-v"),
    ("wrk", "wrk", "-v"),
];

/// The closed-loop client for HTTP/2, in wrk's place.
const H2LOAD: (&str, &str, &str) = ("h2load", "nghttp2-client", "--version");

/// Finds nginx, HAProxy and wrk (h2load instead with `http2`); installs the missing
/// ones with apt-get first when `install` (as root, or through sudo). What is still
/// missing afterwards is reported with the reason, never silently dropped.
pub fn tools(install: bool, http2: bool) -> Tools {
    let mut programs = PROGRAMS;
    if http2 {
        programs[2] = H2LOAD;
    }
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _, _)| find_program(program).is_none())
        .map(|(_, package, _)| *package)
        .collect();
    let mut install_error = None;
    if !missing.is_empty() {
        if install {
            eprintln!(
                "bench: missing {}; installing with apt-get install -y --no-install-recommends {}",
                missing.join(", "),
                missing.join(" ")
            );
            if let Err(err) = apt_install(&missing) {
                eprintln!("bench: INSTALL FAILED: {err:#}");
                install_error = Some(format!("{err:#}"));
            }
        } else {
            eprintln!(
                "bench: missing {} and --no-install was given",
                missing.join(", ")
            );
        }
    }
    let find = |(program, package, version_arg): (&str, &str, &str)| {
        let path = find_program(program).ok_or_else(|| {
            let mut reason = format!("`{program}` is not installed (Debian package `{package}`)");
            match (&install_error, install) {
                (Some(err), _) => {
                    let _ = write!(reason, "; installing it failed: {err}");
                }
                (None, false) => reason.push_str("; --no-install was given"),
                (None, true) => {}
            }
            reason
        })?;
        Ok(Tool {
            version: version(&path, version_arg),
            path,
        })
    };
    Tools {
        nginx: find(programs[0]),
        haproxy: find(programs[1]),
        wrk: find(programs[2]),
    }
}

fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if find_program("apt-get").is_none() {
        bail!(
            "this system has no apt-get: install {} with its package manager",
            packages.join(", ")
        );
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && find_program("sudo").is_none() {
        bail!(
            "installing needs root and there is no sudo: run `apt-get install {}` as root",
            packages.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut command = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::from(io::stderr()));
        command
    };
    let run = |mut command: Command, what: &str| -> anyhow::Result<()> {
        let status = command
            .status()
            .with_context(|| format!("running {what}"))?;
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    };
    run(apt(&["update", "-q"]), "apt-get update")?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend_from_slice(packages);
    run(apt(&install), "apt-get install")
}

/// The first `name` on `$PATH` or in the sbin folders (nginx lives in /usr/sbin, which
/// is not on a normal user's path).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The first line of `program <arg>` that names a version (stdout or stderr).
fn version(program: &Path, arg: &str) -> String {
    let Ok(output) = Command::new(program).arg(arg).stdin(Stdio::null()).output() else {
        return "(version unknown)".into();
    };
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| line.strip_prefix("nginx version: ").unwrap_or(line))
        .map(|line| {
            // wrk: "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
            // haproxy: "HAProxy version 2.6.12-1+deb12u4 2025/01/01 - https://haproxy.org/"
            let line = line.split(" Copyright").next().unwrap_or(line);
            line.split(" - http").next().unwrap_or(line).to_string()
        })
        .unwrap_or_else(|| "(version unknown)".into())
}

// ---------------------------------------------------------------------------------------
// CPUs.

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let ok =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) }
            == 0;
    if !ok {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is below CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; indices are checked.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu < libc::CPU_SETSIZE as usize {
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
    }
    set
}

/// Runs the command's process on `cpus` only (what `taskset -c` does).
pub fn pin_command(command: &mut Command, cpus: &[usize]) {
    let set = cpu_set(cpus);
    // SAFETY: sched_setaffinity is a plain system call, async-signal-safe, reading only
    // the set copied into the closure.
    unsafe {
        command.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Runs the calling thread on `cpus` only.
pub fn pin_this_thread(cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus);
    // SAFETY: pid 0 is the calling thread; the set is a valid cpu_set_t.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Processes.

/// A server the benchmark started: its own process group, killed when dropped.
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
    stopped: bool,
}

impl Process {
    /// Starts `command` with its output in `log`, on `cpus` if given.
    pub fn start(
        name: &str,
        mut command: Command,
        cpus: Option<&[usize]>,
        log: PathBuf,
    ) -> anyhow::Result<Process> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("duplicating a log file handle")?)
            .stderr(out);
        if let Some(cpus) = cpus {
            pin_command(&mut command, cpus);
        }
        let program = command.get_program().to_string_lossy().into_owned();
        let child = zkserver::spawn_bound(command)
            .with_context(|| format!("starting {name} ({program})"))?;
        Ok(Process {
            name: name.to_string(),
            child,
            log,
            stopped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the end of its log if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("polling a server")? {
            self.stopped = true;
            bail!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(15)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// CPU time and memory of the process group (a nginx master and its workers).
    pub fn usage(&self) -> Usage {
        group_usage(self.pid())
    }

    /// SIGTERM to the group, up to 10 s for the leader to exit, then SIGKILL to whatever
    /// is left. Returns how it ended.
    pub fn stop(mut self) -> String {
        self.stopped = true;
        let pgid = self.pid() as libc::pid_t;
        // SAFETY: killpg has no memory-safety preconditions.
        unsafe { libc::killpg(pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let ended = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status.to_string(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) | Err(_) => {
                    let _ = self.child.kill();
                    break match self.child.wait() {
                        Ok(status) => format!("killed after 10 s: {status}"),
                        Err(err) => format!("could not be reaped: {err}"),
                    };
                }
            }
        };
        // SAFETY: as above; a group with no process left answers ESRCH.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        ended
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.stopped {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe { libc::killpg(self.pid() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// What a process group has used so far.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// User and system CPU time of its live processes, all threads.
    pub cpu_secs: f64,
    /// Sum of the processes' peak resident sets (VmHWM). For several processes (nginx's
    /// master and workers) shared pages count more than once: an upper bound.
    pub peak_rss_bytes: u64,
    /// Sum of the processes' resident sets now (VmRSS).
    pub rss_bytes: u64,
    pub processes: usize,
}

/// Reads /proc for the processes of group `pgid`.
pub fn group_usage(pgid: u32) -> Usage {
    let ticks = clock_ticks();
    let mut usage = Usage::default();
    let Ok(entries) = fs::read_dir("/proc") else {
        return usage;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((group, cpu_ticks)) = parse_stat(&stat) else {
            continue;
        };
        if group != pgid {
            continue;
        }
        usage.processes += 1;
        usage.cpu_secs += cpu_ticks as f64 / ticks;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        usage.peak_rss_bytes += status_kib(&status, "VmHWM:") * 1024;
        usage.rss_bytes += status_kib(&status, "VmRSS:") * 1024;
    }
    usage
}

/// The process group and utime + stime (in clock ticks) from a /proc/<pid>/stat line.
fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12).
    let pgrp = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pgrp, utime + stime))
}

/// A `Vm...:` value of /proc/<pid>/status, in KiB.
fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Cumulative time of one CPU from /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// Running tasks: user, nice and system time (interrupts are not counted: with IRQ
    /// time accounting they are charged to no task, and here they are mostly our own
    /// loopback traffic).
    pub busy: u64,
    pub steal: u64,
    pub total: u64,
}

/// Every CPU's times, indexed by CPU number (missing ones are zero).
pub fn cpu_times() -> Vec<CpuTimes> {
    parse_cpu_times(&fs::read_to_string("/proc/stat").unwrap_or_default())
}

fn parse_cpu_times(stat: &str) -> Vec<CpuTimes> {
    let mut out = Vec::new();
    for line in stat.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            continue;
        };
        // "cpu3 ..." is CPU 3; "cpu  ..." (no number) is all CPUs together.
        let Some((number, fields)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(cpu) = number.parse::<usize>() else {
            continue;
        };
        let fields = fields.split_whitespace();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
        if values.len() < 8 {
            continue;
        }
        if out.len() <= cpu {
            out.resize(cpu + 1, CpuTimes::default());
        }
        out[cpu] = CpuTimes {
            busy: values[0] + values[1] + values[2],
            steal: values[7],
            total: values.iter().sum(),
        };
    }
    out
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Clock ticks per second (of /proc/stat and /proc/<pid>/stat).
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

// ---------------------------------------------------------------------------------------
// HTTP probes.

/// A port on 127.0.0.1 nobody listens on right now, outside the ephemeral range (see
/// `zkserver::ports`).
pub fn free_port() -> anyhow::Result<u16> {
    zkserver::ports::free_port().context("finding a free port on 127.0.0.1")
}

/// One `GET /` with `Host: host` on a new connection; the status and the (de-chunked)
/// body.
pub fn http_get(addr: SocketAddr, host: &str) -> io::Result<(u16, Vec<u8>)> {
    exchange(connect(addr)?, host)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(stream)
}

/// [`http_get`] over TLS, asking for `host` and trusting `cert` alone.
pub fn https_get(addr: SocketAddr, host: &str, cert: &BenchCert) -> io::Result<(u16, Vec<u8>)> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).map_err(io::Error::other)?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(io::Error::other)?;
    let tls = rustls::ClientConnection::new(std::sync::Arc::new(config), name)
        .map_err(io::Error::other)?;
    exchange(rustls::StreamOwned::new(tls, connect(addr)?), host)
}

/// `GET /` for [`HOST`] over HTTP/2 (`https` with ALPN, else with prior knowledge),
/// with one run of `h2load -n1`: the status class it counted (200 for a 2xx), and no
/// body (h2load does not show it).
fn h2_get(h2load: &Path, addr: SocketAddr, tls: bool) -> io::Result<(u16, Vec<u8>)> {
    let scheme = if tls { "https" } else { "http" };
    let output = Command::new(h2load)
        .args(["-n1", "-c1", "-m1", "-H"])
        .arg(format!(":authority: {HOST}"))
        .arg(format!("{scheme}://{addr}/"))
        .stdin(std::process::Stdio::null())
        .output()?;
    let report = String::from_utf8_lossy(&output.stdout);
    let counted = report
        .lines()
        .find_map(|line| line.strip_prefix("status codes: "))
        .ok_or_else(|| io::Error::other(format!("h2load: {}", report.trim())))?;
    let class = counted
        .split(", ")
        .find(|count| count.starts_with("1 "))
        .and_then(|count| count.strip_prefix("1 "))
        .ok_or_else(|| io::Error::other(format!("no answer: {}", report.trim())))?;
    match class {
        "2xx" => Ok((200, Vec::new())),
        other => Ok((other[..1].parse::<u16>().unwrap_or(0) * 100, Vec::new())),
    }
}

/// `GET /` for `host` with `Connection: close`: the status and (de-chunked) body.
fn exchange(mut stream: impl Read + Write, host: &str) -> io::Result<(u16, Vec<u8>)> {
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A TLS peer that closed without close_notify, after its answer.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e),
    }
    parse_response(&raw)
}

/// The certificate every proxy serves for [`HOST`] in `--tls` runs: an ECDSA P-256
/// key and a self-signed certificate made by `openssl req`, in one PEM file (the
/// certificate, then the key), as the gateway and HAProxy read it; nginx is given the
/// file for both.
pub struct BenchCert {
    /// The PEM file.
    pub pem: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl BenchCert {
    /// Makes it in `dir` (created; the file is alone in it, as the gateway serves every
    /// `*.pem` in its folder), with `openssl`.
    pub fn make(dir: &Path) -> anyhow::Result<BenchCert> {
        let parts = dir.join("openssl");
        fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
        let (cert, key) = (parts.join("cert"), parts.join("key"));
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .arg("-subj")
            .arg(format!("/CN={HOST}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{HOST}"))
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .context("running openssl to make the --tls certificate (is openssl installed?)")?;
        if !output.status.success() {
            bail!(
                "openssl could not make the --tls certificate ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let read =
            |path: &Path| fs::read(path).with_context(|| format!("reading {}", path.display()));
        let (cert_pem, key_pem) = (read(&cert)?, read(&key)?);
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(&cert_pem)
            .context("reading the certificate openssl made")?;
        // The gateway's default certificate too: wrk sends no usable SNI (an IP).
        let pem = dir.join(gateway::tls::DEFAULT_FILE);
        fs::write(&pem, [cert_pem, key_pem].concat())
            .with_context(|| format!("writing {}", pem.display()))?;
        Ok(BenchCert { pem, der })
    }
}

fn parse_response(raw: &[u8]) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of the response head"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("a head that is not UTF-8"))?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body).ok_or_else(|| bad("a malformed chunked body"))?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// Polls `addr` with `GET /` for [`HOST`] until it answers 200 with the backend's body;
/// returns the time since `since` (the spawn). Fails if the process exits, if a 200
/// carries another body (a misconfigured peer), or after `limit`.
pub fn first_proxied(
    process: &mut Process,
    addr: SocketAddr,
    tls: Option<&BenchCert>,
    h2load: Option<&Path>,
    since: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let deadline = since + limit;
    let mut last: String;
    loop {
        let answer = match (h2load, tls) {
            (Some(h2load), _) => h2_get(h2load, addr, tls.is_some()),
            (None, Some(cert)) => https_get(addr, HOST, cert),
            (None, None) => http_get(addr, HOST),
        };
        match answer {
            Ok((200, body)) => {
                let took = since.elapsed();
                // h2load does not show the body it got.
                if h2load.is_none() && body != BACKEND_BODY.as_bytes() {
                    bail!(
                        "{} answered 200 with {:?}, not the backend's body {BACKEND_BODY:?}",
                        process.name,
                        String::from_utf8_lossy(&body)
                    );
                }
                return Ok(took);
            }
            Ok((status, _)) => last = format!("answered {status}"),
            Err(err) => last = err.to_string(),
        }
        process.check_running()?;
        check_interrupted()?;
        if Instant::now() >= deadline {
            bail!(
                "{} did not proxy a request within {limit:?} ({last}); the end of its log:\n{}",
                process.name,
                process.log_tail(15)
            );
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------------------
// Configurations.

/// The access log's file in a peer's folder, with `--access-log`.
pub const ACCESS_LOG: &str = "access.log";

/// nginx's `worker_connections` and HAProxy's `maxconn` for a load on `connections`
/// connections: each takes one, and its connection to the backend another.
pub fn connection_room(connections: u64) -> u64 {
    (2 * connections + 256).max(4096)
}

/// nginx's upstream `keepalive` (idle backend connections kept per worker) for a load on
/// `connections` connections: as many, at least 64, so that a worker keeps what the load
/// uses, as the gateway and HAProxy do by default. Fewer, and a worker closes connections
/// its next requests need and connects again (at 4,000 connections with `keepalive 1024`,
/// once for every 70 requests).
pub fn nginx_keepalive(connections: u64) -> u64 {
    connections.max(64)
}

/// The backend: one nginx worker answering every request with a fixed 200 and
/// [`BACKEND_BODY`], keeping connections open for as long as a proxy likes. Room for
/// every proxy of an interleaved round holding a connection per client connection, and
/// a listen queue that takes a burst of them (nginx's default holds 511).
pub fn backend_conf(dir: &Path, port: u16, connections: u64) -> String {
    let room = (4 * connections + 256).max(4096);
    format!(
        "# The backend of `switchyard bench gateway`: a fixed 200 with a small body.
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {room};
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            return 200 \"{BACKEND_BODY}\";
        }}
    }}
}}
",
        dir = dir.display()
    )
}

/// nginx as a reverse proxy for [`HOST`] (anything else: 404), with `workers` worker
/// processes (`auto`: one per CPU, its multi-core default). Keep-alive to the backend,
/// the forwarding headers the gateway sets, and no per-connection request limit on
/// either side (nginx's default of 1000 would make it reconnect where the others do not).
/// Room for `connections` clients, and as many idle backend connections kept per worker
/// as there are clients, up to 1024 (the gateway keeps 1024 per thread), at least 64.
/// The listen queue is the gateway's (4096; nginx's default holds 511).
/// With `front.tls` (a PEM file with the certificate and its key), clients speak TLS
/// to it; with `front.http2`, HTTP/2.
/// With `access_log`, every request is logged as the gateway logs it (the same JSON
/// fields), to [`ACCESS_LOG`] in `dir`, buffered and flushed as the gateway's writer does.
pub fn nginx_conf(
    dir: &Path,
    port: u16,
    backend: u16,
    workers: Option<u16>,
    front: Front<'_>,
    connections: u64,
    access_log: bool,
) -> String {
    let workers = workers.map_or("auto".to_string(), |n| n.to_string());
    let access_log = if access_log {
        format!(
            "log_format switchyard escape=json '{{\"time\":\"$time_iso8601\",\"client\":\"$remote_addr\",\
             \"method\":\"$request_method\",\"host\":\"$host\",\"path\":\"$request_uri\",\
             \"protocol\":\"$server_protocol\",\"status\":$status,\"bytes\":$body_bytes_sent,\"upstream\":\"$upstream_addr\",\
             \"duration_ms\":$request_time}}';\n    \
             access_log {} switchyard buffer=64k flush=100ms;",
            dir.join(ACCESS_LOG).display()
        )
    } else {
        "access_log off;".to_string()
    };
    let room = connection_room(connections * front.streams);
    let keepalive = nginx_keepalive(connections * front.streams);
    let http2 = if front.http2 { " http2" } else { "" };
    let (ssl, certificate) = match front.tls {
        Some(pem) => (
            " ssl",
            format!(
                // TLS 1.3 as the others speak it (nginx 1.22's default stops at 1.2).
                "ssl_certificate {pem};\n    ssl_certificate_key {pem};\n    \
                 ssl_protocols TLSv1.2 TLSv1.3;\n    ",
                pem = pem.display()
            ),
        ),
        None => ("", String::new()),
    };
    // A client's requests over one HTTP/2 connection, as over HTTP/1.1 keep-alive.
    let http2_requests = if front.http2 {
        "http2_max_requests 1000000;\n    "
    } else {
        ""
    };
    format!(
        "# nginx as a reverse proxy, as `switchyard bench gateway` runs it.
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections {room};
}}
http {{
    {access_log}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    {http2_requests}client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    {certificate}upstream backend {{
        server 127.0.0.1:{backend};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl}{http2} default_server backlog=4096;
        return 404;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl}{http2};
        server_name {HOST};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
        }}
    }}
}}
",
        dir = dir.display()
    )
}

/// What clients speak to a proxy.
#[derive(Debug, Clone, Copy)]
pub struct Front<'a> {
    /// TLS, with the certificate and its key in this PEM file.
    pub tls: Option<&'a Path>,
    pub http2: bool,
    /// Requests in flight on each client connection (HTTP/2 streams; 1 otherwise): the
    /// backend connections a proxy may need are the connections times this.
    pub streams: u64,
}

#[cfg(test)]
impl Front<'_> {
    /// Plain HTTP/1.1.
    pub const PLAIN: Front<'static> = Front {
        tls: None,
        http2: false,
        streams: 1,
    };
}

/// HAProxy as a reverse proxy for [`HOST`] (anything else: 404), with `threads` threads
/// (`None`: its default, one per CPU it may run on). With `front.tls` (a PEM file with
/// the certificate and its key), clients speak TLS to it; with `front.http2`, HTTP/2
/// (chosen by ALPN over TLS, with prior knowledge without). With `access_log`, every request
/// is logged in its standard HTTP format to its standard output: HAProxy writes logs to
/// syslog or to a stream, a line at a time, not to a file of its own.
pub fn haproxy_conf(
    port: u16,
    backend: u16,
    threads: Option<u16>,
    front: Front<'_>,
    connections: u64,
    access_log: bool,
) -> String {
    let nbthread = threads.map_or(String::new(), |n| format!("    nbthread {n}\n"));
    let (log_global, log_defaults) = if access_log {
        (
            "    log stdout format raw local0\n",
            "    log global\n    option httplog\n",
        )
    } else {
        ("", "")
    };
    let room = connection_room(connections * front.streams);
    let (ssl, proto) = match (front.tls, front.http2) {
        (Some(pem), false) => (format!(" ssl crt {}", pem.display()), "https"),
        (Some(pem), true) => (
            format!(" ssl crt {} alpn h2,http/1.1", pem.display()),
            "https",
        ),
        (None, false) => (String::new(), "http"),
        (None, true) => (" proto h2".to_string(), "http"),
    };
    format!(
        "# HAProxy as a reverse proxy, as `switchyard bench gateway` runs it.
global
{nbthread}{log_global}    maxconn {room}
defaults
{log_defaults}    mode http
    timeout connect 3s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
frontend bench
    bind 127.0.0.1:{port}{ssl}
    option forwardfor
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request return status 404 unless {{ req.hdr(host) -i {HOST} }}
    default_backend app
backend app
    server backend 127.0.0.1:{backend}
"
    )
}

/// HAProxy relaying TCP (`mode tcp`), with `threads` threads as in [`haproxy_conf`]: each
/// client connection gets a backend connection of its own, and the bytes go through
/// unread. It routes nothing and adds no header, so it is no rival to an HTTP proxy; it
/// is the least work any proxy does between the same load and backend, and so the
/// layout's ceiling: a proxy's requests/s beside it says how much of its gap to the
/// load side's limit is the proxy's own.
pub fn haproxy_tcp_conf(port: u16, backend: u16, threads: Option<u16>, connections: u64) -> String {
    let nbthread = threads.map_or(String::new(), |n| format!("    nbthread {n}\n"));
    let room = connection_room(connections);
    format!(
        "# HAProxy relaying TCP, as `switchyard bench gateway` runs it (`haproxy-tcp`).
global
{nbthread}    maxconn {room}
defaults
    mode tcp
    timeout connect 3s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server backend 127.0.0.1:{backend}
"
    )
}

/// The command that starts an nginx with `conf`, keeping everything in `dir`.
pub fn nginx_command(nginx: &Path, dir: &Path, conf: &Path) -> Command {
    let mut command = Command::new(nginx);
    command
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(conf);
    command
}

/// Writes `text` to `path`.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

// ---------------------------------------------------------------------------------------
// The gateway's table on disk.

/// What was written to a gateway state folder.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub routes: usize,
    pub payload_bytes: u64,
    pub file_bytes: u64,
    pub build_secs: f64,
}

/// Writes a route table of `routes` routes into the state folder `dir`, with the
/// gateway's own code (`RouteTable::from_routes`, `persist::encode`, `SnapshotStore`):
/// the benchmarked host first, sent to `backend`; then `routes - 1` routes shaped like
/// a real region's, as in the gateway's own start-from-disk test: two domains and two
/// backends each, loopback addresses nobody listens on.
pub fn write_snapshot(
    dir: &Path,
    routes: usize,
    backend: SocketAddr,
) -> anyhow::Result<SnapshotInfo> {
    anyhow::ensure!(
        routes >= 1,
        "a table for the benchmark needs at least one route"
    );
    let started = Instant::now();
    // Routes are made from their JSON form (`model::Route`'s serde, which runs model's
    // checks): this crate does not depend on `model` directly.
    let mut list = Vec::with_capacity(routes);
    let mut line = String::with_capacity(256);
    for i in 0..routes {
        line.clear();
        route_json(&mut line, i, backend);
        list.push(serde_json::from_str(&line).with_context(|| format!("route {line}"))?);
    }
    let table = gateway::RouteTable::from_routes(1, list);
    anyhow::ensure!(
        table.len() == routes,
        "the table holds {} routes, not {routes}",
        table.len()
    );
    let payload = gateway::persist::encode(&table);
    let store = gateway::snapshot::SnapshotStore::open(dir)
        .with_context(|| format!("opening the snapshot store in {}", dir.display()))?;
    store
        .write(&gateway::persist::meta(&table), &payload)
        .context("writing the snapshot")?;
    let file = store.path(gateway::snapshot::Generation::Current);
    let file_bytes = fs::metadata(&file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    Ok(SnapshotInfo {
        routes,
        payload_bytes: payload.len() as u64,
        file_bytes,
        build_secs: started.elapsed().as_secs_f64(),
    })
}

fn route_json(out: &mut String, i: usize, backend: SocketAddr) {
    if i == 0 {
        let _ = write!(
            out,
            r#"{{"app":"bench","domains":["{HOST}"],"backends":[{{"addr":"{backend}","weight":1}}]}}"#
        );
        return;
    }
    let host = format!("127.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255);
    let _ = write!(
        out,
        r#"{{"app":"app-{i}","domains":["app-{i}.apps.example.com","www.customer-{i}.com"],"backends":[{{"addr":"{host}:8080","weight":1}},{{"addr":"{host}:8081","weight":1}}]}}"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_http2_nginx_and_haproxy_take_it_with_room_for_every_stream() {
        let dir = Path::new("/tmp/x");
        let pem = Path::new("/tmp/x/cert.pem");
        let h2c = Front {
            tls: None,
            http2: true,
            streams: 10,
        };
        let nginx = nginx_conf(dir, 1, 2, Some(1), h2c, 32, false);
        assert!(nginx.contains("listen 127.0.0.1:1 http2;"), "{nginx}");
        assert!(nginx.contains("http2_max_requests 1000000;"), "{nginx}");
        // 320 requests in flight may each want a backend connection.
        assert!(nginx.contains("keepalive 320;"), "{nginx}");
        let haproxy = haproxy_conf(1, 2, Some(1), h2c, 32, false);
        assert!(haproxy.contains("bind 127.0.0.1:1 proto h2\n"), "{haproxy}");

        let h2 = Front {
            tls: Some(pem),
            ..h2c
        };
        let nginx = nginx_conf(dir, 1, 2, Some(1), h2, 32, false);
        assert!(nginx.contains("listen 127.0.0.1:1 ssl http2;"), "{nginx}");
        let haproxy = haproxy_conf(1, 2, Some(1), h2, 32, false);
        assert!(
            haproxy.contains("bind 127.0.0.1:1 ssl crt /tmp/x/cert.pem alpn h2,http/1.1\n"),
            "{haproxy}"
        );

        let plain = nginx_conf(dir, 1, 2, Some(1), Front::PLAIN, 32, false);
        assert!(!plain.contains("http2"), "{plain}");
        assert!(plain.contains("keepalive 64;"), "{plain}");
        // Every connection of a large load keeps its backend connection between requests.
        let large = nginx_conf(dir, 1, 2, None, Front::PLAIN, 4000, false);
        assert!(large.contains("keepalive 4000;"), "{large}");
    }

    #[test]
    fn the_tcp_relay_reads_no_http_and_keeps_the_thread_count() {
        let one = haproxy_tcp_conf(1, 2, Some(1), 32);
        assert!(one.contains("    mode tcp\n"), "{one}");
        assert!(
            !one.contains("mode http") && !one.contains("forwardfor"),
            "{one}"
        );
        assert!(one.contains("nbthread 1\n"), "{one}");
        assert!(one.contains("bind 127.0.0.1:1\n"), "{one}");
        assert!(one.contains("server backend 127.0.0.1:2\n"), "{one}");
        // A client connection holds a backend connection: room for both.
        let large = haproxy_tcp_conf(1, 2, None, 4000);
        assert!(!large.contains("nbthread"), "{large}");
        assert!(large.contains("maxconn 8256\n"), "{large}");
    }

    #[test]
    fn with_access_logs_nginx_logs_the_gateways_fields_and_haproxy_its_http_line() {
        let dir = Path::new("/tmp/peer");
        let off = nginx_conf(dir, 1, 2, Some(1), Front::PLAIN, 32, false);
        assert!(off.contains("access_log off;") && !off.contains("log_format"));
        let on = nginx_conf(dir, 1, 2, Some(1), Front::PLAIN, 32, true);
        assert!(
            on.contains("access_log /tmp/peer/access.log switchyard buffer=64k flush=100ms;"),
            "{on}"
        );
        // The fields of the gateway's own line (`gateway::proxy::AccessLog`).
        for field in [
            "time",
            "client",
            "method",
            "host",
            "path",
            "protocol",
            "status",
            "bytes",
            "upstream",
            "duration_ms",
        ] {
            assert!(on.contains(&format!("\"{field}\":")), "{field} in {on}");
        }
        let off = haproxy_conf(1, 2, Some(1), Front::PLAIN, 32, false);
        assert!(!off.contains("log"), "{off}");
        let on = haproxy_conf(1, 2, Some(1), Front::PLAIN, 32, true);
        assert!(on.contains("log stdout format raw local0") && on.contains("option httplog"));
    }

    #[test]
    fn a_stat_line_gives_its_group_and_cpu_ticks() {
        let stat =
            "4242 (nginx: worker) S 4240 4240 4240 0 -1 4194624 90 0 0 0 17 5 0 0 20 0 1 0 1 2 3";
        assert_eq!(parse_stat(stat), Some((4240, 22)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn responses_are_parsed_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(parse_response(plain).unwrap(), (200, b"ok".to_vec()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (200, b"abcde".to_vec()));
        let not_found = b"HTTP/1.1 404 Not Found\r\n\r\n";
        assert_eq!(parse_response(not_found).unwrap().0, 404);
    }

    #[test]
    fn cpu_times_count_tasks_as_busy_per_cpu() {
        let stat = "cpu  10 0 10 100 0 0 0 5 0 0\ncpu0 1 2 3 40 4 0 0 1 0 0\ncpu1 10 0 0 50 0 0 0 0 0 0\nintr 1 2\n";
        let times = parse_cpu_times(stat);
        assert_eq!(times.len(), 2);
        assert_eq!((times[0].busy, times[0].steal, times[0].total), (6, 1, 51));
        // Interrupt time is not a task's.
        let irq = parse_cpu_times("cpu0 1 0 1 10 0 5 5 0 0 0\n");
        assert_eq!((irq[0].busy, irq[0].total), (2, 22));
        assert_eq!((times[1].busy, times[1].total), (10, 60));
    }

    #[test]
    fn status_values_are_read_in_kib() {
        let status = "Name:\tx\nVmHWM:\t  1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(status_kib(status, "VmHWM:"), 1234);
        assert_eq!(status_kib(status, "VmSwap:"), 0);
    }

    #[test]
    fn the_region_routes_are_valid_and_route_the_benchmarked_host() {
        let backend: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let routes: Vec<_> = [0usize, 1, 65_536, 999_999]
            .iter()
            .map(|&i| {
                let mut line = String::new();
                route_json(&mut line, i, backend);
                serde_json::from_str(&line).unwrap()
            })
            .collect();
        let table = gateway::RouteTable::from_routes(1, routes);
        assert_eq!(table.len(), 4);
        let bench = table.lookup(HOST).expect("the benchmarked host is routed");
        assert_eq!(bench.backends().get(0).addr(), "127.0.0.1:9999");
        assert!(table.lookup("www.customer-999999.com").is_some());
    }
}
