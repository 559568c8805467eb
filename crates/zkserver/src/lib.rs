//! Runs Apache ZooKeeper servers as child processes: one standalone server or an
//! ensemble on loopback, each in its own folder, with its log captured to a file.
//!
//! Used by `switchyard up` for a local region and by `testkit` for tests. The servers
//! are the real thing, started from the installed Apache ZooKeeper; nothing here speaks
//! the ZooKeeper protocol beyond its four-letter words.
//!
//! **Invariant:** a server never outlives its handle. Dropping a [`Server`] kills its
//! process group; if our process dies first, the kernel kills the server (see `spawn`).

#![warn(missing_docs)]

mod install;
pub mod ports;
mod spawn;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use install::{Installation, CLASSPATH_ENV, DEBIAN_JAR};
pub use spawn::spawn as spawn_bound;

/// `jute.maxbuffer`'s default in ZooKeeper: the largest packet a server accepts.
pub const DEFAULT_JUTE_MAXBUFFER: u32 = 1_048_575;

/// The four-letter words a server answers; the others stay disabled.
pub const FOUR_LETTER_WORDS: &str = "ruok,srvr,mntr,stat,conf,cons";

/// Errors from starting or driving a server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Java or ZooKeeper is missing; `detail` says how to install it.
    #[error("{what} is not installed: {detail}")]
    NotInstalled {
        /// What is missing.
        what: &'static str,
        /// What was looked for, and how to install it.
        detail: String,
    },
    /// A port the ensemble needs is taken by another process.
    #[error("port {port} on 127.0.0.1 is already in use (needed as {role} of ZooKeeper server {server}); stop what holds it or choose other ports")]
    PortInUse {
        /// The port.
        port: u16,
        /// Which of the server's ports it is.
        role: &'static str,
        /// The server that needed it.
        server: u32,
    },
    /// A fixed first port leaves no room for every server's port after it.
    #[error("{role} {base} leaves no room for {servers} servers' ports (the last port is 65535)")]
    PortRange {
        /// The first server's port.
        base: u16,
        /// Which of the servers' ports it is.
        role: &'static str,
        /// How many servers need one.
        servers: u32,
    },
    /// A server process exited while it was being started.
    #[error("ZooKeeper server {server} exited during start ({status}); last lines of {log}:\n{log_tail}")]
    Exited {
        /// The server's id.
        server: u32,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The servers did not become ready in time.
    #[error("ZooKeeper did not become ready within {waited:?}: {reason}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// What was still missing, with the end of each server's log.
        reason: String,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// How the servers' ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// Free ports picked at start, never the same twice in one process (tests).
    Free,
    /// Server `i` (0-based) listens on `client + i`, `quorum + i` and `election + i`.
    Fixed {
        /// First client port.
        client: u16,
        /// First quorum (follower-to-leader) port.
        quorum: u16,
        /// First leader-election port.
        election: u16,
    },
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of servers: 1 is a standalone server, 3 or 5 an ensemble.
    pub servers: u32,
    /// Root folder; server `n` (1-based) keeps its data, config and log in `dir/zk<n>`.
    /// Reusing a folder keeps the servers' data.
    pub dir: PathBuf,
    /// Port selection.
    pub ports: Ports,
    /// `jute.maxbuffer`: the largest packet the server accepts, in bytes.
    pub jute_maxbuffer: u32,
    /// JVM heap limit (`-Xmx`), in MiB. An unbounded JVM takes a quarter of the machine.
    pub heap_mib: u32,
    /// ZooKeeper's `tickTime`: session timeouts are bounded by 2 and 20 ticks.
    pub tick_time: Duration,
    /// How long `start` waits for every server to serve (and, for an ensemble, a leader).
    pub start_timeout: Duration,
}

impl Config {
    /// A standalone server in `dir`, on free ports.
    pub fn standalone(dir: impl Into<PathBuf>) -> Config {
        Config::ensemble(dir, 1)
    }

    /// An ensemble of `servers` in `dir`, on free ports.
    pub fn ensemble(dir: impl Into<PathBuf>, servers: u32) -> Config {
        Config {
            servers,
            dir: dir.into(),
            ports: Ports::Free,
            jute_maxbuffer: DEFAULT_JUTE_MAXBUFFER,
            heap_mib: 512,
            tick_time: Duration::from_millis(500),
            start_timeout: Duration::from_secs(60),
        }
    }
}

/// The role a server reports in `srvr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A server on its own.
    Standalone,
    /// The ensemble's leader.
    Leader,
    /// A follower of the leader.
    Follower,
    /// A non-voting member.
    Observer,
}

impl Mode {
    fn parse(srvr: &str) -> Option<Mode> {
        let mode = srvr.lines().find_map(|l| l.strip_prefix("Mode:"))?.trim();
        match mode {
            "standalone" => Some(Mode::Standalone),
            "leader" => Some(Mode::Leader),
            "follower" => Some(Mode::Follower),
            "observer" => Some(Mode::Observer),
            _ => None,
        }
    }

    /// The name ZooKeeper uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Standalone => "standalone",
            Mode::Leader => "leader",
            Mode::Follower => "follower",
            Mode::Observer => "observer",
        }
    }
}

/// One ZooKeeper server process and its folder.
#[derive(Debug)]
pub struct Server {
    id: u32,
    dir: PathBuf,
    client_port: u16,
    quorum_port: u16,
    election_port: u16,
    install: Arc<Installation>,
    jvm_args: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl Server {
    /// The server's id in the ensemble (1-based; `myid`).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The address clients connect to.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.client_port))
    }

    /// The quorum and leader-election ports (unused by a standalone server).
    pub fn peer_ports(&self) -> (u16, u16) {
        (self.quorum_port, self.election_port)
    }

    /// The server's folder: `zoo.cfg`, `data/`, `server.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that captures the server's stdout and stderr (its log).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// The process id (also its process group id), while it runs.
    pub fn pid(&mut self) -> Option<u32> {
        self.is_running()
            .then(|| self.child.as_ref().map(Child::id))?
    }

    /// Whether the process is alive (a paused server is alive).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => {
                    self.child = None;
                    self.paused = false;
                    false
                }
            },
        }
    }

    /// Whether the server was paused with [`Server::pause`] and not resumed.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Starts the process if it is not running. Does not wait for it to serve.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io_err(format!("opening {}", self.log_path().display())))?;
        let log_err = log
            .try_clone()
            .map_err(io_err("duplicating the log file handle"))?;
        let mut command = Command::new(&self.install.java);
        command
            .args(&self.jvm_args)
            .arg("-cp")
            .arg(&self.install.classpath)
            .arg(install::MAIN_CLASS)
            .arg(self.dir.join("zoo.cfg"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = spawn::spawn(command).map_err(io_err(format!(
            "starting ZooKeeper server {} with {}",
            self.id,
            self.install.java.display()
        )))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    /// Stops the server as an operator would (SIGTERM), escalating to SIGKILL after 10 s.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.terminate(libc::SIGTERM, Duration::from_secs(10))
    }

    /// Kills the server's process group with SIGKILL and reaps it.
    pub fn kill(&mut self) -> Result<(), Error> {
        self.terminate(libc::SIGKILL, Duration::ZERO)
    }

    /// Kills the server, then starts it again with the same ports and data.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.stop()?;
        self.start()
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGSTOP)?;
        self.paused = true;
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return Ok(());
        };
        spawn::wait_stopped(pid, Duration::from_secs(10))
            .map_err(io_err(format!("pausing ZooKeeper server {}", self.id)))
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&mut self) -> Result<(), Error> {
        self.signal(libc::SIGCONT)?;
        self.paused = false;
        Ok(())
    }

    fn signal(&mut self, signal: libc::c_int) -> Result<(), Error> {
        let pid = self.pid().ok_or_else(|| Error::Io {
            context: format!("signalling ZooKeeper server {}", self.id),
            source: io::Error::new(io::ErrorKind::NotFound, "the server is not running"),
        })?;
        spawn::signal_group(pid, signal).map_err(io_err(format!("signalling pid {pid}")))
    }

    fn terminate(&mut self, signal: libc::c_int, grace: Duration) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let context = || format!("stopping ZooKeeper server {} (pid {pid})", self.id);
        spawn::signal_group(pid, signal).map_err(io_err(context()))?;
        if self.paused {
            // A stopped process does not act on SIGTERM until it is continued.
            spawn::signal_group(pid, libc::SIGCONT).map_err(io_err(context()))?;
            self.paused = false;
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait().map_err(io_err(context()))?.is_some() {
                // The JVM is gone; anything it forked goes with the group.
                let _ = spawn::signal_group(pid, libc::SIGKILL);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        spawn::signal_group(pid, libc::SIGKILL).map_err(io_err(context()))?;
        child.wait().map_err(io_err(context()))?;
        Ok(())
    }

    /// Sends a four-letter word (`ruok`, `srvr`, `mntr`, `stat`, ...) and returns the answer.
    pub fn four_letter(&self, word: &str) -> io::Result<String> {
        four_letter(self.client_addr(), word)
    }

    /// The server's `mntr` figures, by name (`zk_server_state`, `zk_max_proposal_size`, ...).
    pub fn mntr(&self) -> io::Result<BTreeMap<String, String>> {
        Ok(parse_mntr(&self.four_letter("mntr")?))
    }

    /// The server's role, or `None` when it does not serve (down, paused, or out of quorum).
    pub fn mode(&self) -> Option<Mode> {
        if self.paused {
            return None;
        }
        Mode::parse(&self.four_letter("srvr").ok()?)
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Sends a four-letter word to a server at `addr` and returns the answer.
pub fn four_letter(addr: SocketAddr, word: &str) -> io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(word.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Parses `mntr`'s `name<TAB>value` lines.
pub fn parse_mntr(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A standalone server or an ensemble, started and ready.
#[derive(Debug)]
pub struct Ensemble {
    servers: Vec<Server>,
    dir: PathBuf,
}

impl Ensemble {
    /// Writes each server's configuration, starts them all and waits until every one
    /// serves and, for an ensemble, one of them leads.
    ///
    /// With [`Ports::Free`], a start that fails because a port was taken meanwhile is
    /// retried on other ports.
    pub fn start(config: &Config) -> Result<Ensemble, Error> {
        assert!(config.servers >= 1, "an ensemble needs at least one server");
        let install = Arc::new(Installation::locate()?);
        let attempts = if config.ports == Ports::Free { 3 } else { 1 };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut ensemble = Ensemble::configure(config, &install)?;
            for server in &mut ensemble.servers {
                server.start()?;
            }
            match ensemble.wait_ready(config.start_timeout) {
                Ok(()) => return Ok(ensemble),
                Err(err) if attempt < attempts && ensemble.lost_a_port() => {
                    drop(err);
                    continue;
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn configure(config: &Config, install: &Arc<Installation>) -> Result<Ensemble, Error> {
        fs::create_dir_all(&config.dir)
            .map_err(io_err(format!("creating {}", config.dir.display())))?;
        let n = config.servers;
        let mut ports = Vec::with_capacity(n as usize);
        for i in 0..n {
            ports.push(match config.ports {
                Ports::Free => {
                    let free =
                        || ports::free_port().map_err(io_err("finding a free port on 127.0.0.1"));
                    (free()?, free()?, free()?)
                }
                Ports::Fixed {
                    client,
                    quorum,
                    election,
                } => {
                    let offset = |base: u16, role| {
                        u16::try_from(i)
                            .ok()
                            .and_then(|i| base.checked_add(i))
                            .ok_or(Error::PortRange {
                                base,
                                role,
                                servers: n,
                            })
                    };
                    let trio = (
                        offset(client, "client port")?,
                        offset(quorum, "quorum port")?,
                        offset(election, "election port")?,
                    );
                    for (port, role) in [
                        (trio.0, "client port"),
                        (trio.1, "quorum port"),
                        (trio.2, "election port"),
                    ] {
                        if n == 1 && role != "client port" {
                            continue;
                        }
                        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
                            return Err(Error::PortInUse {
                                port,
                                role,
                                server: i + 1,
                            });
                        }
                    }
                    trio
                }
            });
        }
        let mut servers = Vec::with_capacity(n as usize);
        for (i, &(client, quorum, election)) in ports.iter().enumerate() {
            let id = i as u32 + 1;
            let dir = config.dir.join(format!("zk{id}"));
            let data = dir.join("data");
            fs::create_dir_all(&data).map_err(io_err(format!("creating {}", data.display())))?;
            let mut cfg = String::new();
            let tick = config.tick_time.as_millis().max(1);
            let _ = writeln!(cfg, "# Written by switchyard; rewritten at every start.");
            let _ = writeln!(cfg, "tickTime={tick}");
            let _ = writeln!(cfg, "initLimit=20");
            let _ = writeln!(cfg, "syncLimit=10");
            let _ = writeln!(cfg, "dataDir={}", data.display());
            let _ = writeln!(cfg, "clientPort={client}");
            let _ = writeln!(cfg, "clientPortAddress=127.0.0.1");
            let _ = writeln!(cfg, "maxClientCnxns=0");
            let _ = writeln!(cfg, "admin.enableServer=false");
            let _ = writeln!(cfg, "4lw.commands.whitelist={FOUR_LETTER_WORDS}");
            let _ = writeln!(cfg, "autopurge.snapRetainCount=3");
            let _ = writeln!(cfg, "autopurge.purgeInterval=1");
            if n > 1 {
                for (j, &(_, q, e)) in ports.iter().enumerate() {
                    let _ = writeln!(cfg, "server.{}=127.0.0.1:{q}:{e}", j + 1);
                }
                fs::write(data.join("myid"), format!("{id}\n"))
                    .map_err(io_err(format!("writing {}/myid", data.display())))?;
            }
            let cfg_path = dir.join("zoo.cfg");
            fs::write(&cfg_path, cfg).map_err(io_err(format!("writing {}", cfg_path.display())))?;
            servers.push(Server {
                id,
                dir,
                client_port: client,
                quorum_port: quorum,
                election_port: election,
                install: Arc::clone(install),
                jvm_args: vec![
                    format!("-Xmx{}m", config.heap_mib),
                    "-XX:+ExitOnOutOfMemoryError".into(),
                    format!("-Djute.maxbuffer={}", config.jute_maxbuffer),
                    "-Dzookeeper.admin.enableServer=false".into(),
                    "-Dorg.slf4j.simpleLogger.showDateTime=true".into(),
                    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS".into(),
                ],
                child: None,
                paused: false,
            });
        }
        Ok(Ensemble {
            servers,
            dir: config.dir.clone(),
        })
    }

    /// Whether a server logged that a port of its was taken (a race with another process).
    fn lost_a_port(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.log_tail(200).contains("Address already in use"))
    }

    /// Waits until every running, unpaused server serves and, for an ensemble, exactly
    /// one of them is the leader. A server that exits meanwhile is an error.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            for server in &mut self.servers {
                if let Some(child) = &mut server.child {
                    if let Ok(Some(status)) = child.try_wait() {
                        server.child = None;
                        return Err(Error::Exited {
                            server: server.id,
                            status,
                            log: server.log_path(),
                            log_tail: server.log_tail(30),
                        });
                    }
                }
            }
            let missing = self.not_ready();
            if missing.is_empty() {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                let mut reason = missing.join("; ");
                for server in &self.servers {
                    let _ = write!(
                        reason,
                        "\n--- server {} log ({}):\n{}",
                        server.id,
                        server.log_path().display(),
                        server.log_tail(15)
                    );
                }
                return Err(Error::NotReady {
                    waited: started.elapsed(),
                    reason,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn not_ready(&mut self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut leaders = 0;
        for server in &mut self.servers {
            if !server.is_running() || server.is_paused() {
                continue;
            }
            match server.mode() {
                None => missing.push(format!("server {} does not serve yet", server.id)),
                Some(Mode::Leader) => leaders += 1,
                Some(_) => {}
            }
        }
        if self.servers.len() > 1 && missing.is_empty() && leaders != 1 {
            missing.push(format!("{leaders} leaders"));
        }
        missing
    }

    /// The client connect string: `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.client_addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The root folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All servers, in id order.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// All servers, in id order, to stop, kill, restart or pause.
    pub fn servers_mut(&mut self) -> &mut [Server] {
        &mut self.servers
    }

    /// The server with index `index` (0-based; its id is `index + 1`).
    pub fn server(&mut self, index: usize) -> &mut Server {
        &mut self.servers[index]
    }

    /// The index of the current leader (or of the standalone server), if one serves.
    pub fn leader(&self) -> Option<usize> {
        self.servers
            .iter()
            .position(|s| matches!(s.mode(), Some(Mode::Leader | Mode::Standalone)))
    }

    /// Stops every server (SIGTERM, then SIGKILL after a grace period).
    pub fn stop(&mut self) -> Result<(), Error> {
        for server in &mut self.servers {
            server.stop()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mode_from_srvr() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(Mode::parse(srvr), Some(Mode::Follower));
        assert_eq!(
            Mode::parse("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
    }

    #[test]
    fn parses_mntr() {
        let m = parse_mntr("zk_version\t3.8.0\nzk_server_state\tleader\nnot a pair\n");
        assert_eq!(m.get("zk_server_state").map(String::as_str), Some("leader"));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_taken_fixed_port_is_named() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::standalone(dir.path());
        config.ports = Ports::Fixed {
            client: port,
            quorum: 1,
            election: 1,
        };
        let install = Arc::new(Installation {
            java: "java".into(),
            classpath: String::new(),
        });
        match Ensemble::configure(&config, &install) {
            Err(Error::PortInUse {
                port: p,
                role,
                server,
            }) => {
                assert_eq!((p, role, server), (port, "client port", 1));
            }
            other => panic!("expected PortInUse, got {other:?}"),
        }
    }

    #[test]
    fn fixed_ports_past_65535_are_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::ensemble(dir.path(), 3);
        config.ports = Ports::Fixed {
            client: ports::free_run(3).unwrap(),
            quorum: ports::free_run(3).unwrap(),
            election: 65_534,
        };
        let install = Arc::new(Installation {
            java: "java".into(),
            classpath: String::new(),
        });
        match Ensemble::configure(&config, &install) {
            Err(err @ Error::PortRange { .. }) => assert_eq!(
                err.to_string(),
                "election port 65534 leaves no room for 3 servers' ports (the last port is 65535)"
            ),
            other => panic!("expected PortRange, got {other:?}"),
        }
    }
}
