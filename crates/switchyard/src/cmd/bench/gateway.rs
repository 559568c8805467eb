//! `switchyard bench gateway`: the gateway against nginx and HAProxy as reverse proxies,
//! side by side in one run on this machine, behind the same backend.
//!
//! The backend is an nginx worker answering a fixed 200. Each proxy runs in its own
//! process, one at a time under load, in four CPU modes: `one-core` (one worker each,
//! pinned to a CPU of its own; the load generator and the backend share the other),
//! `capped` (the same, each proxy held to the same share of its CPU by a cgroup quota,
//! `gateway/cpu_cap.rs`, so that the proxy and not the load side runs out), `all-cores`
//! (each proxy's multi-core default, nothing pinned but the backend) and
//! `all-cores-capped` (the same, all of a proxy's threads held to that share together).
//! The load is wrk at 32 connections (closed loop) and then a fixed rate from our own
//! generator (open loop, latency from the scheduled send), each first a process per
//! sample, then in rounds that move the load between proxies running side by side
//! (`gateway/interleaved.rs`). The gateway runs twice: with
//! one route and with a million (`gateway-large`), each table written to its state
//! folder with the gateway crate's own snapshot code and served from disk, without an
//! orchestrator. Prints a table of medians with ratios to nginx; writes no file.
//! With `--instructions` it counts each proxy's user-space instructions per request
//! under callgrind instead (`gateway/instructions.rs`).

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::gateway_load::{self, RateSettings, WrkSettings};
use super::gateway_peers::{self as peers, CpuTimes, Process, SnapshotInfo, Tool, Usage};
use super::gateway_report::{self as report, Outcome, Row, Sample, Skipped, Slice, Target};
use super::report::median;
use interleaved::RoundLoad;

mod cpu_cap;
mod instructions;
mod interleaved;

/// A peer: what serves the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// No proxy: the load straight to the backend (a reference for the load side).
    Direct,
    /// nginx as a reverse proxy (the reference of every ratio).
    Nginx,
    /// HAProxy as a reverse proxy.
    Haproxy,
    /// HAProxy relaying TCP: no HTTP read, a backend connection per client connection.
    /// Not a rival (it routes nothing) but the layout's ceiling: the least work any
    /// proxy can do between this load and backend. Plain HTTP/1.1 loads only.
    HaproxyTcp,
    /// `switchyard gateway` with one route.
    Gateway,
    /// `switchyard gateway` with --routes routes (the benchmarked host among them).
    GatewayLarge,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::HaproxyTcp => "haproxy-tcp",
            Peer::Gateway => "gateway",
            Peer::GatewayLarge => "gateway-large",
        }
    }
}

/// How much CPU each proxy gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One worker each (nginx `worker_processes 1`, HAProxy `nbthread 1`, the gateway
    /// `--workers 1`), pinned to a CPU the load generator and backend do not use.
    OneCore,
    /// As `one-core`, and each proxy limited to --cap-percent of its CPU by a cgroup
    /// quota, so that it runs out of CPU before the load generator and backend do.
    /// Closed loop only; neither p99 nor the start time counts here (the quota makes both).
    Capped,
    /// Each proxy's multi-core default (nginx `auto`, HAProxy's default threads, the
    /// gateway's one worker per core), nothing pinned but the backend.
    AllCores,
    /// As `all-cores`, and each proxy's processes, all their threads together, limited
    /// to --cap-percent of one CPU by the same quota as `capped`.
    AllCoresCapped,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::OneCore => "one-core",
            Mode::Capped => "capped",
            Mode::AllCores => "all-cores",
            Mode::AllCoresCapped => "all-cores-capped",
        }
    }

    /// Held to a CPU quota: closed loop only, and only requests/s counts.
    fn capped(self) -> bool {
        matches!(self, Mode::Capped | Mode::AllCoresCapped)
    }

    /// One worker each, pinned to the proxy's CPU (the load generator on its own).
    fn one_worker(self) -> bool {
        matches!(self, Mode::OneCore | Mode::Capped)
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs of every peer in every mode; the tables show medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Seconds of each measured load (wrk, and the fixed rate).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    duration_secs: u64,
    /// Seconds of load before each measured one (not counted).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=60))]
    warmup_secs: u64,
    /// Connections the load is sent on (wrk -c, and the fixed-rate generator's).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    connections: u64,
    /// Requests/s of the fixed-rate runs, the same for every peer. Default: --rate-share
    /// of the lowest median requests/s of the proxies under wrk in the same mode.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// See --rate. A quarter, so that the CPU the generator shares with the backend in
    /// one-core mode stays about half busy: at half the slowest proxy's rate it was
    /// saturated, and its queueing, not the proxies, made the tail.
    #[arg(long, default_value_t = 0.25)]
    rate_share: f64,
    /// Interleaved fixed-rate rounds in each mode that has a fixed rate (0: none). Every
    /// proxy is up at once and the load moves from one to the next every --slice-ms, so
    /// each round compares each proxy's p99 with nginx's measured seconds apart. A round
    /// disturbed by others or steal is left out and made up, up to twice as many in all.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=1000))]
    rounds: u64,
    /// Milliseconds each proxy is measured in an interleaved round, after 200 ms of load
    /// that is not counted.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    slice_ms: u64,
    /// Interleaved closed-loop rounds in each mode (0: none), after the wrk runs: every
    /// proxy up at once and wrk moved from one to the next, --wrk-slice-secs each, so
    /// each round compares each proxy's requests/s and CPU per request with nginx's
    /// measured seconds apart. Disturbed rounds are left out and made up as with --rounds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=1000))]
    wrk_rounds: u64,
    /// Seconds of wrk on each proxy in an interleaved closed-loop round (each proxy is
    /// first warmed up once, for --warmup-secs).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    wrk_slice_secs: u64,
    /// Routes in the large gateway table (the `gateway-large` peer).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    routes: u64,
    /// Peers to run, in this order within each run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,nginx,haproxy,gateway,gateway-large"
    )]
    peers: Vec<Peer>,
    /// CPU modes, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "one-core,capped,all-cores,all-cores-capped"
    )]
    modes: Vec<Mode>,
    /// The share of one CPU each proxy gets in the capped modes, in %. Half: the load
    /// side then has about half of its CPU to spare.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(5..=95))]
    cap_percent: u32,
    /// Clients speak TLS (HTTP/1.1 over TLS, one certificate for the host, ECDSA P-256,
    /// made with openssl) to nginx, HAProxy and the gateway; the backend stays plain.
    /// Closed-loop (wrk) runs only; `direct` and `gateway-large` are left out.
    #[arg(long)]
    tls: bool,
    /// wrk asks for `Connection: close`: every request on a new connection (with
    /// --tls, a new handshake), what an edge sees from clients that do not keep
    /// connections alive. Closed-loop runs only.
    #[arg(long)]
    new_connections: bool,
    /// Clients speak HTTP/2, driven by h2load (Debian `nghttp2-client`) instead of wrk:
    /// with prior knowledge in clear text, or chosen by ALPN with --tls. nginx listens
    /// with `http2`, HAProxy with `proto h2` (`alpn h2` over TLS); the gateway takes
    /// either by itself. The backend stays HTTP/1.1. Closed-loop runs only; `direct`
    /// is left out.
    #[arg(long, conflicts_with_all = ["new_connections"])]
    http2: bool,
    /// With --http2: requests in flight on each connection at once (h2load's -m).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    streams: u32,
    /// With --http2: every request is a POST with a body of this many bytes (h2load's
    /// -d), which each proxy passes on to the backend.
    #[arg(long, requires = "http2", value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    upload_bytes: Option<u32>,
    /// Instead of timing the proxies, count the user-space instructions each spends per
    /// request under wrk (h2load with --http2), with callgrind (valgrind), one worker
    /// each: a figure the machine's noise does not move. `gateway-large` and `direct`
    /// are left out.
    #[arg(long, conflicts_with_all = ["tls", "new_connections"])]
    instructions: bool,
    /// Every proxy logs every request: the gateway (`--access-log`) and nginx the same
    /// JSON line to a file in their folder, nginx buffered (64k, flushed every 100 ms) as
    /// the gateway's writer is; HAProxy its standard HTTP log line to its output, one
    /// write a line (it logs to syslog or a stream only).
    #[arg(long)]
    access_log: bool,
    /// Do not install missing tools (nginx, haproxy, wrk) with apt-get; skip what needs them.
    #[arg(long)]
    no_install: bool,
    /// A sample during which other processes used more than this much CPU (in % of one
    /// CPU: a shared machine) is measured again, up to --attempts times; before each
    /// attempt the benchmark waits (up to --quiet-wait-secs) until they use less.
    #[arg(long, default_value_t = 10.0)]
    max_others_percent: f64,
    /// A sample during which the hypervisor took more than this share of the CPUs'
    /// time (steal, in %: a shared host) is measured again, like one disturbed by other
    /// processes; before each attempt the benchmark also waits for steal to drop below it.
    #[arg(long, default_value_t = 10.0)]
    max_steal_percent: f64,
    /// See --max-others-percent.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=10))]
    attempts: u64,
    /// See --max-others-percent.
    #[arg(long, default_value_t = 600)]
    quiet_wait_secs: u64,
    /// Give up on a proxy that does not proxy its first request within this many seconds.
    #[arg(long, default_value_t = 60)]
    start_timeout_secs: u64,
    /// Print the raw per-run results and the medians as JSON on stdout (the tables then
    /// go to stderr).
    #[arg(long)]
    json: bool,
}

/// Which CPUs run what.
#[derive(Debug, Clone, serde::Serialize)]
struct Layout {
    allowed: Vec<usize>,
    /// wrk and the fixed-rate generator, in `one-core` mode.
    load: Vec<usize>,
    /// The proxy under test, in `one-core` mode.
    proxy: Vec<usize>,
    /// The backend, always.
    backend: Vec<usize>,
}

impl Layout {
    fn new(allowed: Vec<usize>) -> Layout {
        let first = allowed.first().copied().unwrap_or(0);
        let load = vec![first];
        let proxy = vec![allowed.get(1).copied().unwrap_or(first)];
        let backend = vec![allowed.get(2).copied().unwrap_or(first)];
        Layout {
            allowed,
            load,
            proxy,
            backend,
        }
    }
}

/// What every measurement needs.
struct Bench<'a> {
    args: &'a Args,
    dir: PathBuf,
    layout: Layout,
    nginx: Tool,
    haproxy: Option<Tool>,
    wrk: Option<Tool>,
    /// The copy of this binary the gateways run (so a rebuild cannot swap it mid-run).
    switchyard: PathBuf,
    backend: Process,
    backend_addr: SocketAddr,
    /// With --tls: what every proxy serves.
    tls: Option<peers::BenchCert>,
    /// The cgroup of `capped` mode.
    cap: Option<cpu_cap::CpuCap>,
    small_state: PathBuf,
    large_state: Option<PathBuf>,
    /// With --upload-bytes: the file h2load sends as each request's body.
    upload: Option<PathBuf>,
    starts: usize,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.rate_share > 0.0 && args.rate_share <= 1.0,
        "--rate-share must be more than 0 and at most 1"
    );
    // The backend may hold a connection per client connection for every proxy of an
    // interleaved round; the processes started from here inherit the limit.
    let open_files =
        crate::open_files::raise().context("reading or raising the open-files limit")?;
    let needed = 4 * args.connections + 512;
    anyhow::ensure!(
        open_files >= needed,
        "--connections {} needs about {needed} open files per process (the backend may hold \
         a connection per client connection for each of four proxies); the limit is \
         {open_files}: raise the hard limit (ulimit -Hn, or LimitNOFILE=)",
        args.connections
    );
    peers::catch_interrupts();
    let mut peer_list: Vec<Peer> = Vec::new();
    for &peer in &args.peers {
        if !peer_list.contains(&peer) {
            peer_list.push(peer);
        }
    }
    if args.tls {
        // The direct load has no TLS to compare; the large table measures lookups and
        // starts, which TLS does not change; the TCP relay would hand TLS to a plain
        // backend.
        peer_list.retain(|p| !matches!(p, Peer::Direct | Peer::GatewayLarge | Peer::HaproxyTcp));
        anyhow::ensure!(
            !peer_list.is_empty(),
            "--tls runs nginx, haproxy and gateway; --peers names none of them"
        );
    }
    anyhow::ensure!(
        args.http2 || args.streams == 1,
        "--streams is for --http2: an HTTP/1.1 connection has one request in flight"
    );
    if args.http2 {
        // The backend speaks HTTP/1.1 only.
        peer_list.retain(|p| !matches!(p, Peer::Direct | Peer::HaproxyTcp));
        anyhow::ensure!(
            !peer_list.is_empty(),
            "--http2 runs nginx, haproxy and the gateways; --peers names none of them"
        );
    }
    if args.instructions {
        // Counted on one route, for the HTTP proxies; the direct load runs no proxy to
        // count.
        peer_list.retain(|p| !matches!(p, Peer::Direct | Peer::GatewayLarge | Peer::HaproxyTcp));
        anyhow::ensure!(
            !peer_list.is_empty(),
            "--instructions counts nginx, haproxy and gateway; --peers names none of them"
        );
    }
    let mut modes: Vec<Mode> = Vec::new();
    for &mode in &args.modes {
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    let mut notes: Vec<String> = Vec::new();
    let cap = if modes.iter().any(|m| m.capped()) && !args.instructions {
        match cpu_cap::CpuCap::create(args.cap_percent) {
            Ok(cap) => {
                eprintln!("bench: capped mode: {}", cap.describe());
                Some(cap)
            }
            Err(err) => {
                let note = format!("SKIPPED the capped mode: {err:#}");
                eprintln!("bench: {note}");
                notes.push(note);
                modes.retain(|m| !m.capped());
                None
            }
        }
    } else {
        None
    };

    let tools = peers::tools(!args.no_install, args.http2);
    let nginx = match tools.nginx {
        Ok(tool) => tool,
        Err(reason) => bail!("nginx is needed for the backend: {reason}"),
    };
    let mut skipped: Vec<Skipped> = Vec::new();
    let haproxy = match tools.haproxy {
        Ok(tool) => Some(tool),
        Err(reason) => {
            for peer in [Peer::Haproxy, Peer::HaproxyTcp] {
                if peer_list.contains(&peer) {
                    eprintln!("bench: SKIPPING {}: {reason}", peer.name());
                    skipped.push(Skipped {
                        peer: peer.name().into(),
                        reason: reason.clone(),
                    });
                }
            }
            None
        }
    };
    let wrk = match tools.wrk {
        Ok(tool) => Some(tool),
        Err(reason) => {
            let note = format!("SKIPPED the closed-loop (wrk) runs: {reason}");
            eprintln!("bench: {note}");
            notes.push(note);
            None
        }
    };
    eprintln!(
        "bench: nginx   {} ({})",
        nginx.version,
        nginx.path.display()
    );
    if let Some(tool) = &haproxy {
        eprintln!("bench: haproxy {} ({})", tool.version, tool.path.display());
    }
    if let Some(tool) = &wrk {
        let client = if args.http2 { "h2load " } else { "wrk    " };
        eprintln!("bench: {client} {} ({})", tool.version, tool.path.display());
    }

    let layout = Layout::new(peers::allowed_cpus());
    if layout.allowed.len() < 2 {
        let note = format!(
            "only {} CPU available: the proxy under test shares it with the load and the backend",
            layout.allowed.len()
        );
        eprintln!("bench: WARNING: {note}");
        notes.push(note);
    }
    eprintln!(
        "bench: CPUs {:?}: load generator on {:?}, proxy on {:?} (one-core mode), backend on {:?}",
        layout.allowed, layout.load, layout.proxy, layout.backend
    );

    let dir = tempfile::Builder::new()
        .prefix("switchyard-bench-gateway-")
        .tempdir()
        .context("creating a temporary folder")?;
    let switchyard = dir.path().join("switchyard");
    fs::copy("/proc/self/exe", &switchyard)
        .context("copying this binary for the gateways to run")?;

    let backend_port = peers::free_port()?;
    let backend_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, backend_port));
    let backend_dir = dir.path().join("backend");
    peers::write_file(
        &backend_dir.join("nginx.conf"),
        &peers::backend_conf(&backend_dir, backend_port, args.connections),
    )?;
    let started = Instant::now();
    let mut backend = Process::start(
        "backend nginx",
        peers::nginx_command(&nginx.path, &backend_dir, &backend_dir.join("nginx.conf")),
        Some(&layout.backend),
        backend_dir.join("output.log"),
    )?;
    peers::first_proxied(
        &mut backend,
        backend_addr,
        None,
        None,
        started,
        Duration::from_secs(args.start_timeout_secs),
    )
    .context("starting the backend")?;
    eprintln!("bench: backend nginx (1 worker) on {backend_addr}");

    let tls = if args.tls {
        let cert = peers::BenchCert::make(&dir.path().join("tls"))?;
        eprintln!(
            "bench: TLS to every proxy, certificate {}",
            cert.pem.display()
        );
        Some(cert)
    } else {
        None
    };

    let mut snapshots: Vec<SnapshotInfo> = Vec::new();
    let small_state = dir.path().join("gateway-state-1");
    snapshots.push(peers::write_snapshot(&small_state, 1, backend_addr)?);
    let large_state = if peer_list.contains(&Peer::GatewayLarge) {
        let state = dir.path().join("gateway-state-large");
        eprint!("bench: writing a snapshot of {} routes ... ", args.routes);
        let info = peers::write_snapshot(&state, args.routes as usize, backend_addr)?;
        eprintln!(
            "{:.1} s; payload {:.0} MB, file {:.0} MB",
            info.build_secs,
            info.payload_bytes as f64 / 1e6,
            info.file_bytes as f64 / 1e6
        );
        snapshots.push(info);
        Some(state)
    } else {
        None
    };

    let upload = match args.upload_bytes {
        Some(bytes) => {
            let path = dir.path().join("upload.bin");
            std::fs::write(&path, vec![b'u'; bytes as usize])
                .with_context(|| format!("writing {}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    let mut bench = Bench {
        args: &args,
        dir: dir.path().to_path_buf(),
        layout,
        nginx,
        haproxy,
        wrk,
        switchyard,
        backend,
        backend_addr,
        tls,
        cap,
        small_state,
        large_state,
        upload,
        starts: 0,
    };
    let runnable: Vec<Peer> = peer_list
        .iter()
        .copied()
        .filter(|p| !(matches!(p, Peer::Haproxy | Peer::HaproxyTcp) && bench.haproxy.is_none()))
        .collect();
    if args.instructions {
        return instructions::run(&mut bench, &runnable, skipped);
    }

    let began = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let mut discarded: Vec<Sample> = Vec::new();
    let mut rates: Vec<(Mode, u64)> = Vec::new();
    let mut slices: Vec<Slice> = Vec::new();
    let proxies = runnable.iter().filter(|p| **p != Peer::Direct).count();
    for &mode in &modes {
        if bench.wrk.is_some() {
            for run in 1..=args.runs as usize {
                for &peer in &runnable {
                    peers::check_interrupted()?;
                    samples.push(bench.measure(mode, run, peer, None, &mut discarded)?);
                }
            }
            if args.wrk_rounds > 0 && proxies > 1 && runnable.contains(&Peer::Nginx) {
                let (measured, stopped) = bench.interleave(mode, RoundLoad::Wrk, &runnable);
                slices.extend(measured);
                if let Some(note) = stopped {
                    eprintln!("bench: {note}");
                    notes.push(note);
                }
            }
        }
        if bench.tls.is_some() || args.new_connections || args.http2 {
            // The fixed-rate generator speaks plain HTTP/1.1 on kept-alive connections
            // only.
            continue;
        }
        if mode.capped() {
            // A quota stops the proxy for the rest of any period in which a burst used
            // it up: its latency would be the quota's, measured in one-core mode instead.
            continue;
        }
        let rate = match args.rate {
            Some(rate) => Some(rate),
            None => auto_rate(mode, &runnable, &samples, args.rate_share),
        };
        let Some(rate) = rate else {
            let note = format!(
                "SKIPPED the fixed-rate runs in {} mode: no --rate and no wrk result to derive one from",
                mode.name()
            );
            eprintln!("bench: {note}");
            notes.push(note);
            continue;
        };
        rates.push((mode, rate));
        for run in 1..=args.runs as usize {
            for &peer in &runnable {
                peers::check_interrupted()?;
                samples.push(bench.measure(mode, run, peer, Some(rate), &mut discarded)?);
            }
        }
        if args.rounds > 0 && proxies > 1 && runnable.contains(&Peer::Nginx) {
            let (measured, stopped) = bench.interleave(mode, RoundLoad::FixedRate(rate), &runnable);
            slices.extend(measured);
            if let Some(note) = stopped {
                eprintln!("bench: {note}");
                notes.push(note);
            }
        }
    }
    eprintln!(
        "bench: {} proxy starts, {} measured loads ({} more discarded as disturbed) in {:.0} s",
        bench.starts,
        samples.len(),
        discarded.len(),
        began.elapsed().as_secs_f64()
    );
    let backend_ended = bench.backend.check_running();

    let peer_rows: Vec<(String, usize)> = peer_list
        .iter()
        .map(|p| {
            let routes = match p {
                Peer::GatewayLarge => args.routes as usize,
                _ => 1,
            };
            (p.name().to_string(), routes)
        })
        .collect();
    let mut text = String::new();
    let mut all_rows: Vec<Row> = Vec::new();
    let mut all_targets: Vec<Target> = Vec::new();
    let _ = writeln!(
        text,
        "\nGateway benchmark{}{}: medians of {} runs; {} connections; {} s measured after {} s of warm-up; ratios to nginx in the same run",
        match (args.tls, args.new_connections) {
            (false, false) => "",
            (true, false) => " over TLS (closed loop only)",
            (false, true) => " with a new connection per request (closed loop only)",
            (true, true) => " over TLS with a new connection (and handshake) per request (closed loop only)",
        },
        {
            let streams = match args.streams {
                1 => "1 stream".to_string(),
                n => format!("{n} streams"),
            };
            let upload = match args.upload_bytes {
                Some(bytes) => format!(", each a POST of {bytes} bytes"),
                None => String::new(),
            };
            match (args.http2, args.tls) {
                (false, _) => String::new(),
                (true, false) => format!(
                    " over HTTP/2 with prior knowledge, {streams} in flight per connection{upload} (closed loop only)"
                ),
                (true, true) => format!(", HTTP/2 by ALPN, {streams} in flight per connection{upload}"),
            }
        },
        args.runs,
        args.connections,
        args.duration_secs,
        args.warmup_secs
    );
    for &mode in &modes {
        let mut rows = report::summarise(mode.name(), &peer_rows, &samples, &discarded, &skipped);
        report::summarise_interleaved(mode.name(), &mut rows, &slices);
        report::summarise_wrk_rounds(mode.name(), &mut rows, &slices);
        let _ = writeln!(text, "\n== {} ==\n{}", mode.name(), describe(mode, &bench));
        if bench.wrk.is_some() {
            let _ = writeln!(
                text,
                "Closed loop ({} -t{} -c{}; CPU% of the proxy, the client and the backend, 100 = one core; CPU µs: the proxy's per request):",
                match bench.streams() {
                    Some(streams) => format!("h2load -m{streams}"),
                    None => "wrk --latency".to_string(),
                },
                wrk_threads(mode, &bench.layout),
                args.connections
            );
            text.push_str(&report::wrk_table(&rows, args.runs as usize));
            text.push_str("Requests/s per run (ratio to nginx in the same run):\n");
            text.push_str(&report::per_run(&rows));
            if rows
                .iter()
                .any(|r| r.wrk_rounds + r.wrk_rounds_left_out > 0)
            {
                let _ = writeln!(
                    text,
                    "\nInterleaved closed loop (every proxy up at once, wrk moved to the next every {} s, the order turning each round; medians over the undisturbed rounds; vs nginx: the median of the per-round ratios of requests/s, with its 95 % interval; ahead in: rounds with more requests/s than nginx in the same round, and the sign test of that split; >= 1.1x: rounds at 1.1x nginx's or more; CPU µs: the proxy's per request, and the median of its per-round ratios to nginx's; thr%: periods throttled, capped modes):",
                    args.wrk_slice_secs
                );
                text.push_str(&report::wrk_rounds_table(&rows));
            }
        }
        if let Some((_, rate)) = rates.iter().find(|(m, _)| *m == mode) {
            let _ = writeln!(
                text,
                "\nFixed rate ({rate} req/s over {} connections; latency from the scheduled send; wait p99: scheduled to sent, pacer p99: how late the generator queued; CPU%, gen%, bknd%: proxy, generator, backend):",
                args.connections
            );
            text.push_str(&report::rate_table(&rows));
            if slices.iter().any(|s| s.mode == mode.name()) {
                let _ = writeln!(
                    text,
                    "\nInterleaved fixed rate ({rate} req/s; every proxy up at once, the load moved to the next every {} ms after 200 ms not counted, the order turning each round; medians over the undisturbed rounds; vs nginx: the median of the per-round ratios of the p99s; lower in: rounds with a p99 below nginx's in the same round; sign p: the chance of a split at least that uneven if neither proxy tended lower):",
                    args.slice_ms
                );
                text.push_str(&report::interleaved_table(&rows));
            }
        }
        all_targets.extend(report::targets(mode.name(), &rows, mode.capped()));
        all_rows.extend(rows);
    }
    text.push_str("\nTargets:\n");
    text.push_str(&report::targets_text(&all_targets));
    text.push_str(&about(&bench, &snapshots));
    for note in &notes {
        let _ = writeln!(text, "- {note}");
    }
    if let Err(err) = &backend_ended {
        let _ = writeln!(text, "- THE BACKEND DIED during the run: {err:#}");
    }

    if args.json {
        eprint!("{text}");
        let document = serde_json::json!({
            "settings": {
                "runs": args.runs,
                "duration_secs": args.duration_secs,
                "warmup_secs": args.warmup_secs,
                "connections": args.connections,
                "max_others_percent": args.max_others_percent,
                "max_steal_percent": args.max_steal_percent,
                "attempts": args.attempts,
                "rates": rates.iter().map(|(m, r)| (m.name(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
                "routes": args.routes,
                "tls": args.tls,
                "http2": args.http2,
                "streams": args.streams,
                "upload_bytes": args.upload_bytes,
                "new_connections": args.new_connections,
                "access_log": args.access_log,
                "peers": peer_list.iter().map(|p| p.name()).collect::<Vec<_>>(),
                "modes": modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
                "cap_percent": args.cap_percent,
                "rounds": args.rounds,
                "slice_ms": args.slice_ms,
                "wrk_rounds": args.wrk_rounds,
                "wrk_slice_secs": args.wrk_slice_secs,
            },
            "tools": {
                "nginx": &bench.nginx,
                "haproxy": &bench.haproxy,
                "wrk": &bench.wrk,
            },
            "layout": &bench.layout,
            "snapshots": snapshots,
            "skipped": skipped,
            "notes": notes,
            "samples": samples,
            "discarded": discarded,
            "interleaved": slices,
            "summary": all_rows,
            "targets": all_targets,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).context("encoding the results")?
        );
    } else {
        print!("{text}");
    }

    let stopped = bench.backend.stop();
    tracing::debug!(%stopped, "backend stopped");
    let all_ok = !samples.is_empty()
        && skipped.is_empty()
        && notes.is_empty()
        && backend_ended.is_ok()
        && samples
            .iter()
            .all(|s| !matches!(s.outcome, Outcome::Failed { .. }) && s.errors() == 0)
        && slices.iter().all(|s| s.errors() == 0);
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// --rate-share of the lowest median requests/s among the proxies in `mode`, rounded
/// down to a multiple of 100.
fn auto_rate(mode: Mode, peers: &[Peer], samples: &[Sample], share: f64) -> Option<u64> {
    let lowest = peers
        .iter()
        .filter(|p| **p != Peer::Direct)
        .filter_map(|p| {
            median(
                samples
                    .iter()
                    .filter(|s| s.mode == mode.name() && s.peer == p.name())
                    .filter_map(|s| match &s.outcome {
                        Outcome::Wrk(r) => Some(r.requests_per_sec),
                        _ => None,
                    })
                    .collect(),
            )
        })
        .fold(None, |low: Option<f64>, v| {
            Some(low.map_or(v, |l| l.min(v)))
        })?;
    let rate = ((lowest * share) as u64 / 100 * 100).max(100);
    eprintln!(
        "bench: fixed rate for {} mode: {rate} req/s ({share} of the slowest proxy's median, {lowest:.0} req/s)",
        mode.name()
    );
    Some(rate)
}

fn wrk_threads(mode: Mode, layout: &Layout) -> usize {
    if mode.one_worker() {
        1
    } else {
        layout.allowed.len().max(1)
    }
}

fn describe(mode: Mode, bench: &Bench<'_>) -> String {
    let l = &bench.layout;
    match mode {
        Mode::OneCore => format!(
            "One worker each: nginx worker_processes 1, HAProxy nbthread 1, gateway --workers 1; the proxy pinned to CPU {:?}, \
             wrk (1 thread) or the fixed-rate generator on CPU {:?}, the backend (1 nginx worker) on CPU {:?}.",
            l.proxy, l.load, l.backend
        ),
        Mode::Capped => format!(
            "As one-core, and each proxy's processes limited to {}% of CPU {:?} ({}): \
             the proxy runs out of CPU first, so requests/s compares what each does with the same CPU time. \
             Closed loop only: a throttled proxy waits out the rest of the period, so latency here is the quota's \
             (one-core mode measures it).",
            bench.args.cap_percent,
            l.proxy,
            bench.cap.as_ref().map_or("no cgroup".into(), cpu_cap::CpuCap::describe)
        ),
        Mode::AllCores => format!(
            "Multi-core defaults: nginx worker_processes auto, HAProxy without nbthread, the gateway without --workers; \
             the proxy, wrk ({} threads) and the generator on any of CPUs {:?}; the backend (1 nginx worker) still on CPU {:?}.",
            wrk_threads(mode, l),
            l.allowed,
            l.backend
        ),
        Mode::AllCoresCapped => format!(
            "As all-cores, and each proxy's processes, all threads together, limited to {}% of one CPU ({}): \
             multi-core defaults given the same CPU time. Closed loop only.",
            bench.args.cap_percent,
            bench.cap.as_ref().map_or("no cgroup".into(), cpu_cap::CpuCap::describe)
        ),
    }
}

/// What `--access-log` turns on, for the report.
const ACCESS_LOG_NOTE: &str = "- access logs (--access-log): the gateway (--access-log) and nginx (log_format \
     escape=json, buffer=64k flush=100ms) write the same JSON line per request to a file; HAProxy its \
     `option httplog` line to its output, one write a line\n";

fn about(bench: &Bench<'_>, snapshots: &[SnapshotInfo]) -> String {
    let mut out = String::from("\nPeers:\n");
    let _ = writeln!(
        out,
        "- backend: nginx {}, 1 worker, `return 200 \"{}\"` on {}",
        bench.nginx.version,
        peers::BACKEND_BODY,
        bench.backend_addr
    );
    let _ = writeln!(
        out,
        "- nginx: {} as a reverse proxy for {} (upstream keepalive {}, keepalive_requests 1000000, listen backlog 4096, X-Forwarded-*)",
        bench.nginx.version,
        peers::HOST,
        peers::nginx_keepalive(bench.args.connections * u64::from(bench.args.streams))
    );
    if bench.args.http2 {
        let _ = writeln!(
            out,
            "- HTTP/2 from the client: nginx `listen ... http2` (http2_max_requests 1000000), \
             HAProxy `{}`, the gateway as always; to the backend, HTTP/1.1",
            if bench.tls.is_some() {
                "bind ... alpn h2,http/1.1"
            } else {
                "bind ... proto h2"
            }
        );
    }
    if bench.args.access_log {
        out.push_str(ACCESS_LOG_NOTE);
    }
    if let Some(h) = &bench.haproxy {
        let _ = writeln!(
            out,
            "- haproxy: {}, mode http, Host ACL, option forwardfor, default http-reuse",
            h.version
        );
        let relayed = !bench.args.http2 && bench.tls.is_none();
        if relayed && bench.args.peers.contains(&Peer::HaproxyTcp) {
            out.push_str(
                "- haproxy-tcp: the same HAProxy in mode tcp, relaying each client connection to a \
                 backend connection of its own, no HTTP read: no rival (it routes nothing), the \
                 least work a proxy can do here, so the ceiling of what any proxy reaches in this \
                 layout\n",
            );
        }
    }
    for info in snapshots {
        let _ = writeln!(
            out,
            "- gateway with {} route(s): `switchyard gateway` ({}), no orchestrator, table from its snapshot ({:.1} MB on disk)",
            info.routes,
            env!("CARGO_PKG_VERSION"),
            info.file_bytes as f64 / 1e6
        );
    }
    if let Some(w) = &bench.wrk {
        let client = if bench.args.http2 { "h2load" } else { "wrk" };
        let _ = writeln!(out, "- {client}: {}", w.version);
    }
    out.push_str(
        "- fixed rate: this benchmark's open-loop generator (hyper, one tokio thread, a pacing thread); \
         a request's latency runs from its scheduled time\n",
    );
    out.push_str(
        "Notes:\n- START ms: from spawning the proxy to its first proxied 200 (polled every ms).\n",
    );
    out.push_str("- RSS MiB: peak resident set (VmHWM) at the end of the load, summed over the proxy's processes (nginx: master and workers).\n");
    out
}

/// What was used before a load began.
struct Before {
    proxy: Usage,
    backend: Usage,
    cpus: Vec<CpuTimes>,
    throttling: Option<cpu_cap::Throttling>,
    at: Instant,
}

/// A proxy under test, started and proxying.
struct Running {
    process: Option<Process>,
    addr: SocketAddr,
    start_to_first: Option<Duration>,
}

impl Bench<'_> {
    /// With --http2: the streams each connection of the closed loop keeps in flight
    /// (the client is h2load).
    fn streams(&self) -> Option<usize> {
        self.args.http2.then_some(self.args.streams as usize)
    }

    /// With --http2: h2load, which also checks that a proxy is up (nginx's clear-text
    /// HTTP/2 listener speaks nothing else).
    fn h2load(&self) -> Option<&Path> {
        if !self.args.http2 {
            return None;
        }
        self.wrk.as_ref().map(|tool| tool.path.as_path())
    }

    /// [`Bench::measure_once`] on a quiet machine: waits until other processes leave
    /// the CPUs alone, and measures again (up to --attempts) when they did not during
    /// the sample; the disturbed samples go to `discarded`.
    fn measure(
        &mut self,
        mode: Mode,
        run: usize,
        peer: Peer,
        rate: Option<u64>,
        discarded: &mut Vec<Sample>,
    ) -> anyhow::Result<Sample> {
        let attempts = self.args.attempts as usize;
        for attempt in 1..=attempts {
            self.wait_for_quiet()?;
            let mut sample = self.measure_once(mode, run, peer, rate, attempt)?;
            let others = sample.others_percent.unwrap_or(0.0);
            let steal = sample.steal_percent.unwrap_or(0.0);
            sample.disturbed =
                others > self.args.max_others_percent || steal > self.args.max_steal_percent;
            if sample.disturbed && attempt < attempts {
                eprintln!(
                    "bench:   disturbed: other processes used {others:.0}% of a CPU (--max-others-percent {}), steal {steal:.0}% (--max-steal-percent {}); measuring again",
                    self.args.max_others_percent, self.args.max_steal_percent
                );
                discarded.push(sample);
                continue;
            }
            return Ok(sample);
        }
        unreachable!("the last attempt returns")
    }

    /// Waits until tasks other than the backend and this benchmark use at most
    /// --max-others-percent of a CPU over a second, and steal is at most
    /// --max-steal-percent, for at most --quiet-wait-secs.
    fn wait_for_quiet(&self) -> anyhow::Result<()> {
        let limit = Instant::now() + Duration::from_secs(self.args.quiet_wait_secs);
        let began = Instant::now();
        let mut waiting = false;
        loop {
            let (cpus, backend) = (peers::cpu_times(), self.backend.usage());
            let (own, at) = (gateway_load::process_cpu_secs(), Instant::now());
            std::thread::sleep(Duration::from_secs(1));
            peers::check_interrupted()?;
            let wall = at.elapsed().as_secs_f64();
            let busy = self.busy_secs(&cpus, &peers::cpu_times());
            let ours = (self.backend.usage().cpu_secs - backend.cpu_secs)
                + (gateway_load::process_cpu_secs() - own);
            let others = (100.0 * (busy - ours) / wall).max(0.0);
            let steal = self.steal_percent(&cpus, &peers::cpu_times());
            if others <= self.args.max_others_percent && steal <= self.args.max_steal_percent {
                if waiting {
                    eprint!("(quiet after {:.0} s) ", began.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            if Instant::now() >= limit {
                eprint!(
                    "(still {others:.0}% of a CPU used by others after {} s; measuring anyway) ",
                    self.args.quiet_wait_secs
                );
                return Ok(());
            }
            if !waiting {
                eprint!("(waiting for a quiet machine: others use {others:.0}% of a CPU, steal {steal:.0}%) ");
                waiting = true;
            }
        }
    }

    /// The share of the allowed CPUs' time the hypervisor took between two readings,
    /// in %.
    fn steal_percent(&self, before: &[CpuTimes], after: &[CpuTimes]) -> f64 {
        let delta = |cpu: usize, f: fn(&CpuTimes) -> u64| {
            let then = before.get(cpu).map_or(0, f);
            after.get(cpu).map_or(0, f).saturating_sub(then)
        };
        let (steal, total) = self
            .layout
            .allowed
            .iter()
            .map(|&cpu| (delta(cpu, |t| t.steal), delta(cpu, |t| t.total)))
            .fold((0, 0), |(s, t), (ds, dt)| (s + ds, t + dt));
        if total == 0 {
            return 0.0;
        }
        100.0 * steal as f64 / total as f64
    }

    /// Task time on the allowed CPUs between two readings, in seconds.
    fn busy_secs(&self, before: &[CpuTimes], after: &[CpuTimes]) -> f64 {
        let ticks: u64 = self
            .layout
            .allowed
            .iter()
            .map(|&cpu| {
                let then = before.get(cpu).map_or(0, |t| t.busy);
                after.get(cpu).map_or(0, |t| t.busy).saturating_sub(then)
            })
            .sum();
        ticks as f64 / peers::clock_ticks()
    }

    /// One start of `peer`, loaded by wrk (`rate` None) or at a fixed rate; a failure
    /// is recorded, not returned (an interruption is returned).
    fn measure_once(
        &mut self,
        mode: Mode,
        run: usize,
        peer: Peer,
        rate: Option<u64>,
        attempt: usize,
    ) -> anyhow::Result<Sample> {
        let load = if rate.is_some() { "fixed-rate" } else { "wrk" };
        eprint!(
            "bench: {} run {run}/{} {:<14} {load:<10} ... ",
            mode.name(),
            self.args.runs,
            peer.name()
        );
        let began = Instant::now();
        let mut sample = Sample {
            mode: mode.name().into(),
            run,
            peer: peer.name().into(),
            routes: match peer {
                Peer::GatewayLarge => self.args.routes as usize,
                _ => 1,
            },
            start_to_first_ms: None,
            gateway_start_log_ms: None,
            peak_rss_mib: None,
            rss_mib: None,
            proxy_cpu_percent: None,
            backend_cpu_percent: None,
            others_on_proxy_cpu_percent: None,
            throttled_percent: None,
            others_percent: None,
            attempt,
            disturbed: false,
            steal_percent: None,
            load_average: peers::load_average(),
            outcome: Outcome::Failed {
                load: load.into(),
                reason: String::new(),
            },
        };
        match self.try_measure(mode, peer, rate, &mut sample) {
            Ok(outcome) => sample.outcome = outcome,
            Err(err) => {
                peers::check_interrupted()?;
                sample.outcome = Outcome::Failed {
                    load: load.into(),
                    reason: format!("{err:#}"),
                };
            }
        }
        let took = began.elapsed().as_secs_f64();
        let mut start = sample
            .start_to_first_ms
            .map_or(String::new(), |ms| format!(", start {ms:.0} ms"));
        if let Some(others) = sample.others_percent {
            let _ = write!(start, ", others {others:.0}%");
        }
        if let Some(others) = sample.others_on_proxy_cpu_percent {
            let _ = write!(start, " ({others:.0}% on its CPU)");
        }
        if let Some(throttled) = sample.throttled_percent {
            let _ = write!(start, ", throttled in {throttled:.0}% of periods");
        }
        if let Some(steal) = sample.steal_percent.filter(|s| *s >= 1.0) {
            let _ = write!(start, ", steal {steal:.0}%");
        }
        match &sample.outcome {
            Outcome::Wrk(r) => eprintln!(
                "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, CPU {}%, {} errors{start} ({took:.0} s)",
                r.requests_per_sec,
                r.p50_ms,
                r.p99_ms,
                sample.proxy_cpu_percent.map_or("-".into(), |c| format!("{c:.0}")),
                r.errors()
            ),
            Outcome::FixedRate(r) => eprintln!(
                "{:.0}/{} req/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, {} errors{start} ({took:.0} s)",
                r.achieved_rate, r.target_rate, r.p50_ms, r.p99_ms, r.p999_ms, r.errors
            ),
            Outcome::Failed { reason, .. } => eprintln!("FAILED: {reason}"),
        }
        Ok(sample)
    }

    fn try_measure(
        &mut self,
        mode: Mode,
        peer: Peer,
        rate: Option<u64>,
        sample: &mut Sample,
    ) -> anyhow::Result<Outcome> {
        self.backend.check_running().context("the backend")?;
        let mut running = self.start(mode, peer)?;
        sample.start_to_first_ms = running.start_to_first.map(|d| d.as_secs_f64() * 1000.0);
        if matches!(peer, Peer::Gateway | Peer::GatewayLarge) {
            if let Some(process) = &running.process {
                sample.gateway_start_log_ms = gateway_took_ms(&process.log_tail(50));
            }
        }
        let load_cpus = mode.one_worker().then(|| self.layout.load.clone());
        let warmup = Duration::from_secs(self.args.warmup_secs);
        let duration = Duration::from_secs(self.args.duration_secs);
        let connections = self.args.connections as usize;
        let outcome = match rate {
            None => {
                let wrk = self.wrk.as_ref().context("wrk is not installed")?;
                let mut settings = WrkSettings {
                    wrk: &wrk.path,
                    addr: running.addr,
                    threads: wrk_threads(mode, &self.layout),
                    connections,
                    duration: warmup,
                    tls: self.tls.is_some(),
                    close: self.args.new_connections,
                    streams: self.streams(),
                    upload: self.upload.as_deref(),
                    cpus: load_cpus.as_deref(),
                };
                if !warmup.is_zero() {
                    gateway_load::wrk(&settings).context("warming up with wrk")?;
                }
                settings.duration = duration;
                let before = self.usage(&running);
                let result = gateway_load::wrk(&settings)?;
                let busy = self.note_usage(mode, &running, sample, before);
                sample.others_percent = Some(others(sample, busy, result.wrk_cpu_percent));
                Outcome::Wrk(result)
            }
            Some(rate) => {
                let settings = RateSettings {
                    addr: running.addr,
                    rate,
                    connections,
                    warmup,
                    duration,
                    cpus: load_cpus,
                };
                let before = self.usage(&running);
                let result = gateway_load::fixed_rate(&settings)?;
                let busy = self.note_usage(mode, &running, sample, before);
                sample.others_percent = Some(others(sample, busy, result.generator_cpu_percent));
                Outcome::FixedRate(result)
            }
        };
        if let Some(mut process) = running.process.take() {
            process
                .check_running()
                .context("the proxy died under load")?;
            let ended = process.stop();
            tracing::debug!(peer = peer.name(), %ended, "proxy stopped");
        }
        Ok(outcome)
    }

    fn usage(&self, running: &Running) -> Before {
        let proxy = running
            .process
            .as_ref()
            .map_or(Usage::default(), Process::usage);
        Before {
            proxy,
            backend: self.backend.usage(),
            cpus: peers::cpu_times(),
            throttling: self.cap.as_ref().map(cpu_cap::CpuCap::throttling),
            at: Instant::now(),
        }
    }

    /// Fills in what the proxy and the backend used during a load; returns the task time
    /// on all allowed CPUs, in % of one CPU.
    fn note_usage(
        &self,
        mode: Mode,
        running: &Running,
        sample: &mut Sample,
        before: Before,
    ) -> f64 {
        let wall = before.at.elapsed().as_secs_f64();
        let ticks = peers::clock_ticks();
        let backend = self.backend.usage();
        sample.backend_cpu_percent =
            Some(100.0 * (backend.cpu_secs - before.backend.cpu_secs) / wall);
        let cpus = peers::cpu_times();
        sample.steal_percent = Some(self.steal_percent(&before.cpus, &cpus));
        let busy_percent = 100.0 * self.busy_secs(&before.cpus, &cpus) / wall;
        if mode.capped() {
            if let (Some(cap), Some(then)) = (&self.cap, before.throttling) {
                sample.throttled_percent = cap.throttling().percent_since(then);
            }
        }
        if let Some(process) = &running.process {
            let after = process.usage();
            let proxy_secs = after.cpu_secs - before.proxy.cpu_secs;
            sample.proxy_cpu_percent = Some(100.0 * proxy_secs / wall);
            sample.peak_rss_mib = Some(after.peak_rss_bytes as f64 / (1024.0 * 1024.0));
            sample.rss_mib = Some(after.rss_bytes as f64 / (1024.0 * 1024.0));
            if mode.one_worker() && self.layout.proxy != self.layout.load {
                let cpu = self.layout.proxy[0];
                let then = before.cpus.get(cpu).map_or(0, |t| t.busy);
                let busy = cpus.get(cpu).map_or(0, |t| t.busy).saturating_sub(then) as f64 / ticks;
                sample.others_on_proxy_cpu_percent =
                    Some((100.0 * (busy - proxy_secs) / wall).max(0.0));
            }
        }
        busy_percent
    }

    /// Starts `peer` for `mode` on a fresh port and waits for its first proxied 200.
    fn start(&mut self, mode: Mode, peer: Peer) -> anyhow::Result<Running> {
        if peer == Peer::Direct {
            return Ok(Running {
                process: None,
                addr: self.backend_addr,
                start_to_first: None,
            });
        }
        self.starts += 1;
        let port = peers::free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let dir = self
            .dir
            .join(format!("{}-{}-{}", peer.name(), mode.name(), self.starts));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut command = self.command(mode, peer, &dir, addr, false)?;
        if mode.capped() {
            let cap = self
                .cap
                .as_ref()
                .context("capped mode without its cgroup")?;
            cap.apply(&mut command)?;
        }
        let cpus = mode.one_worker().then_some(self.layout.proxy.as_slice());
        let spawned = Instant::now();
        let mut process = Process::start(peer.name(), command, cpus, dir.join("output.log"))?;
        let took = peers::first_proxied(
            &mut process,
            addr,
            self.tls.as_ref(),
            self.h2load(),
            spawned,
            Duration::from_secs(self.args.start_timeout_secs),
        )?;
        Ok(Running {
            process: Some(process),
            addr,
            start_to_first: Some(took),
        })
    }

    /// The command that runs `peer` on `addr` in `mode`, its files in `dir`; with
    /// `single_process`, nginx runs without its master process.
    fn command(
        &self,
        mode: Mode,
        peer: Peer,
        dir: &Path,
        addr: SocketAddr,
        single_process: bool,
    ) -> anyhow::Result<Command> {
        let port = addr.port();
        let one = mode.one_worker().then_some(1u16);
        let backend_port = self.backend_addr.port();
        let front = peers::Front {
            tls: self.tls.as_ref().map(|cert| cert.pem.as_path()),
            http2: self.args.http2,
            streams: u64::from(self.args.streams),
        };
        let command = match peer {
            Peer::Direct => bail!("the direct load runs no proxy"),
            Peer::Nginx => {
                let conf = dir.join("nginx.conf");
                let connections = self.args.connections;
                let mut text = peers::nginx_conf(
                    dir,
                    port,
                    backend_port,
                    one,
                    front,
                    connections,
                    self.args.access_log,
                );
                if single_process {
                    anyhow::ensure!(
                        text.contains("master_process on;"),
                        "the nginx configuration no longer says `master_process on;`"
                    );
                    text = text.replace("master_process on;", "master_process off;");
                }
                peers::write_file(&conf, &text)?;
                peers::nginx_command(&self.nginx.path, dir, &conf)
            }
            Peer::Haproxy | Peer::HaproxyTcp => {
                let haproxy = self.haproxy.as_ref().context("haproxy is not installed")?;
                let conf = dir.join("haproxy.cfg");
                let connections = self.args.connections;
                let text = if peer == Peer::HaproxyTcp {
                    peers::haproxy_tcp_conf(port, backend_port, one, connections)
                } else {
                    let log = self.args.access_log;
                    peers::haproxy_conf(port, backend_port, one, front, connections, log)
                };
                peers::write_file(&conf, &text)?;
                let mut command = Command::new(&haproxy.path);
                command.arg("-db").arg("-f").arg(&conf);
                command
            }
            Peer::Gateway | Peer::GatewayLarge => {
                let state = match peer {
                    Peer::Gateway => self.small_state.clone(),
                    _ => self
                        .large_state
                        .clone()
                        .context("no large table was written")?,
                };
                let mut command = self.gateway_command(addr, &state, one)?;
                if self.args.access_log {
                    command.arg("--access-log").arg(dir.join(peers::ACCESS_LOG));
                }
                command
            }
        };
        Ok(command)
    }

    fn gateway_command(
        &self,
        listen: SocketAddr,
        state: &Path,
        workers: Option<u16>,
    ) -> anyhow::Result<Command> {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, peers::free_port()?));
        // With TLS, the load goes to `listen` on the TLS listener; plain HTTP gets a
        // port of its own, unused.
        let (listen, tls) = match &self.tls {
            Some(cert) => {
                let plain = SocketAddr::from((Ipv4Addr::LOCALHOST, peers::free_port()?));
                let folder = cert.pem.parent().context("the certificate's folder")?;
                (plain, Some((listen, folder)))
            }
            None => (listen, None),
        };
        let mut command = Command::new(&self.switchyard);
        // The gateway's settings come from these flags alone, not from the caller's
        // environment (SWITCHYARD_GATEWAY_ORCHESTRATORS, say).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SWITCHYARD_") {
                command.env_remove(key);
            }
        }
        command
            .env("SWITCHYARD_LOG", "info")
            .env("NO_COLOR", "1")
            .arg("gateway")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--state-dir")
            .arg(state);
        if let Some((addr, folder)) = tls {
            command
                .arg("--tls-listen")
                .arg(addr.to_string())
                .arg("--tls-certs")
                .arg(folder);
        }
        if let Some(workers) = workers {
            command.arg("--workers").arg(workers.to_string());
        }
        Ok(command)
    }
}

/// What tasks other than the proxy, the backend and the load generator used during a
/// sample: all task time less theirs, in % of one CPU.
fn others(sample: &Sample, busy_percent: f64, load_percent: f64) -> f64 {
    let ours = sample.proxy_cpu_percent.unwrap_or(0.0)
        + sample.backend_cpu_percent.unwrap_or(0.0)
        + load_percent;
    (busy_percent - ours).max(0.0)
}

/// `took_ms` of the gateway's "gateway listening" log line.
fn gateway_took_ms(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("gateway listening"))?;
    let clean = strip_ansi(line);
    let rest = &clean[clean.find("took_ms=")? + "took_ms=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_start_time_is_read_from_its_log() {
        let log = "2026-01-01T00:00:00Z  INFO gateway: gateway listening proxy=127.0.0.1:1 admin=127.0.0.1:2 table.version=1 routes=1000000 from_disk=true took_ms=812\n";
        assert_eq!(gateway_took_ms(log), Some(812.0));
        let coloured = "\u{1b}[32m INFO\u{1b}[0m gateway listening \u{1b}[3mtook_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m45";
        assert_eq!(gateway_took_ms(coloured), Some(45.0));
        assert_eq!(gateway_took_ms("nothing"), None);
    }

    #[test]
    fn the_layout_separates_load_proxy_and_backend_when_it_can() {
        let two = Layout::new(vec![0, 1]);
        assert_eq!(
            (two.load, two.proxy, two.backend),
            (vec![0], vec![1], vec![0])
        );
        let four = Layout::new(vec![2, 3, 5, 7]);
        assert_eq!(
            (four.load, four.proxy, four.backend),
            (vec![2], vec![3], vec![5])
        );
        let one = Layout::new(vec![0]);
        assert_eq!(
            (one.load, one.proxy, one.backend),
            (vec![0], vec![0], vec![0])
        );
    }
}
