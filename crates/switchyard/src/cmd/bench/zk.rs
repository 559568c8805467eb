//! `switchyard bench zk`: Switchyard's ZooKeeper layer against the official Java client
//! and Kazoo, in one run on one machine.
//!
//! For every run and every client: a fresh standalone ZooKeeper server, the client as a
//! child process that creates N ephemeral nodes and reads them back and prints one JSON
//! line, then the server is killed (SIGKILL) *before* the client's session could close:
//! a session closing with a million ephemerals makes ZooKeeper write all their paths into
//! one transaction (ZOOKEEPER-4306). Prints a table of medians; writes no file.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::peers::{self, Launcher};
use super::report::{self, ClientResult, Outcome, Run, Skipped};

/// A client the benchmark can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Client {
    /// Switchyard's layer, one `create` per node through its in-flight window.
    Layer,
    /// Switchyard's layer, creates batched into `multi` transactions (`write_many`).
    LayerMulti,
    /// The official Java client, async API, at most `--window` requests in flight.
    Java,
    /// The official Java client, async API, no bound on requests in flight.
    JavaUnbounded,
    /// Kazoo (Python), `create_async`/`get_async`, at most `--window` in flight.
    Kazoo,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Layer => "layer",
            Client::LayerMulti => "layer-multi",
            Client::Java => "java",
            Client::JavaUnbounded => "java-unbounded",
            Client::Kazoo => "kazoo",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ephemeral nodes each client creates and reads (Kazoo: --kazoo-nodes).
    #[arg(long, default_value_t = 1_000_000)]
    nodes: usize,
    /// Ephemeral nodes for Kazoo, which manages about 2k creates/s.
    #[arg(long, default_value_t = 100_000)]
    kazoo_nodes: usize,
    /// Runs of every client; the table shows medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Payload of each node, in bytes.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Requests in flight at most: the layer's window, and the semaphore of the bounded
    /// Java client and of Kazoo.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    window: u64,
    /// Clients to run, in this order within each run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "layer,layer-multi,java,java-unbounded,kazoo"
    )]
    clients: Vec<Client>,
    /// JVM heap limit of the ZooKeeper server, in MiB.
    #[arg(long, default_value_t = 3072)]
    heap_mib: u32,
    /// Give up on a client run after this many seconds.
    #[arg(long, default_value_t = 1800)]
    client_timeout_secs: u64,
    /// Print the raw per-run results and the medians as JSON on stdout (the table then
    /// goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Lines of a failed client's stderr and of the server log shown with the failure.
const TAIL_LINES: usize = 15;

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut clients: Vec<Client> = Vec::new();
    for &client in &args.clients {
        if !clients.contains(&client) {
            clients.push(client);
        }
    }
    let tools = peers::tools_dir();
    let mut launchers: Vec<(Client, Launcher)> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut java: Option<Result<Launcher, String>> = None;
    for &client in &clients {
        let prepared = match client {
            Client::Layer | Client::LayerMulti => peers::layer().map_err(|e| format!("{e:#}")),
            Client::Java | Client::JavaUnbounded => java
                .get_or_insert_with(|| {
                    eprintln!(
                        "bench: compiling bench/zk/ZkBench.java into {}",
                        tools.join("bench-java").display()
                    );
                    peers::java(&tools).map_err(|e| format!("{e:#}"))
                })
                .clone(),
            Client::Kazoo => peers::kazoo(&tools).map_err(|e| format!("{e:#}")),
        };
        match prepared {
            Ok(launcher) => {
                eprintln!("bench: {:<15} {}", client.name(), launcher.about);
                launchers.push((client, launcher));
            }
            Err(reason) => {
                eprintln!("bench: SKIPPING {}: {reason}", client.name());
                skipped.push(Skipped {
                    client: client.name().into(),
                    reason,
                });
            }
        }
    }

    let started = Instant::now();
    let mut runs: Vec<Run> = Vec::new();
    for run in 1..=args.runs as usize {
        for (client, launcher) in &launchers {
            let nodes = match client {
                Client::Kazoo => args.kazoo_nodes,
                _ => args.nodes,
            };
            eprint!(
                "bench: run {run}/{} {:<15} {nodes} nodes ... ",
                args.runs,
                client.name()
            );
            let began = Instant::now();
            let (outcome, server_ephemerals) = run_client(&args, *client, launcher, nodes);
            let took = began.elapsed().as_secs_f64();
            match &outcome {
                Outcome::Result(r) => {
                    let mut line = format!(
                        "done in {took:.0} s: {:.0} creates/s, {:.0} reads/s, peak RSS {:.0} MiB, {} errors",
                        r.creates_per_sec(),
                        r.reads_per_sec(),
                        r.peak_rss_bytes as f64 / (1024.0 * 1024.0),
                        r.errors
                    );
                    if let (Some(creates), Some(reads)) = (r.coalesced_creates, r.coalesced_reads) {
                        let _ = write!(line, ", coalesced: {creates} creates, {reads} reads");
                    }
                    match server_ephemerals {
                        Some(count) if count == r.nodes => {}
                        Some(count) => {
                            let _ = write!(
                                line,
                                "; WARNING: the server counts {count} ephemerals, not {}",
                                r.nodes
                            );
                        }
                        None => line.push_str("; (server's ephemeral count unavailable)"),
                    }
                    eprintln!("{line}");
                }
                Outcome::Failed(reason) => eprintln!("FAILED after {took:.0} s: {reason}"),
            }
            runs.push(Run {
                run,
                client: client.name().into(),
                outcome,
                server_ephemerals,
            });
        }
    }
    eprintln!(
        "bench: {} client runs in {:.0} s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );

    let names: Vec<String> = clients.iter().map(|c| c.name().to_string()).collect();
    let rows = report::summarise(&names, &runs, &skipped);
    let mut text = format!(
        "\nZooKeeper layer benchmark: medians of {} runs; {} nodes ({} for kazoo), {}-byte payloads, window {}, fresh standalone ZooKeeper per client run ({} MiB heap)\n\n",
        args.runs, args.nodes, args.kazoo_nodes, args.payload_bytes, args.window, args.heap_mib
    );
    text.push_str(&report::table(&rows, args.runs as usize));
    text.push_str("\nClients:\n");
    for (client, launcher) in &launchers {
        let _ = writeln!(text, "- {:<15} {}", client.name(), launcher.about);
    }
    text.push_str(&notes(&args));
    if args.json {
        eprint!("{text}");
        let document = serde_json::json!({
            "settings": {
                "nodes": args.nodes,
                "kazoo_nodes": args.kazoo_nodes,
                "runs": args.runs,
                "payload_bytes": args.payload_bytes,
                "window": args.window,
                "heap_mib": args.heap_mib,
                "clients": names,
            },
            "clients": launchers.iter().map(|(c, l)| (c.name(), l.about.clone())).collect::<std::collections::BTreeMap<_, _>>(),
            "skipped": skipped,
            "runs": runs,
            "summary": rows,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).context("encoding the results")?
        );
    } else {
        print!("{text}");
    }
    let all_ok = !runs.is_empty()
        && skipped.is_empty()
        && runs
            .iter()
            .all(|r| matches!(&r.outcome, Outcome::Result(res) if res.errors == 0));
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn notes(args: &Args) -> String {
    format!(
        "\nNotes:\n\
         - vs java: median creates/s over the bounded Java client's (`java`), measured in the same runs.\n\
         - layer, layer-multi: ephemeral_budget raised to {} for this benchmark only (default 10,000 per session, ZOOKEEPER-4306);\n  \
           the window of {} bounds requests in flight and the futures alive, hence memory. layer: one create (get)\n  \
           call per node; while 64 requests are in flight the layer sends queued calls together in shared multis\n  \
           (multiReads), each call answered on its own (`coalesced` in the lines above). layer-multi: write_many,\n  \
           up to 100 creates per multi, 64 multis in flight; its reads are single gets as in layer.\n\
         - java: official client, async API, Semaphore({}); java-unbounded: the same with no semaphore.\n\
         - kazoo: create_async/get_async, at most {} in flight, at {} nodes (its rate is per its own count).\n\
         - Every client exits without closing its session; the server is killed first (ZOOKEEPER-4306).\n",
        args.nodes + 10,
        args.window,
        args.window,
        args.window,
        args.kazoo_nodes
    )
}

/// Runs one client against a fresh server; returns its outcome and the number of
/// ephemerals the server counted when the client was done.
fn run_client(
    args: &Args,
    client: Client,
    launcher: &Launcher,
    nodes: usize,
) -> (Outcome, Option<u64>) {
    match try_run_client(args, client, launcher, nodes) {
        Ok(done) => done,
        Err(err) => (Outcome::Failed(format!("{err:#}")), None),
    }
}

fn try_run_client(
    args: &Args,
    client: Client,
    launcher: &Launcher,
    nodes: usize,
) -> anyhow::Result<(Outcome, Option<u64>)> {
    let dir = tempfile::Builder::new()
        .prefix("switchyard-bench-zk-")
        .tempdir()
        .context("creating a temporary folder for ZooKeeper")?;
    let mut config = zkserver::Config::standalone(dir.path().join("zookeeper"));
    config.heap_mib = args.heap_mib;
    let mut ensemble = zkserver::Ensemble::start(&config).context("starting ZooKeeper")?;
    let connect = ensemble.connect_string();

    let mut command = launcher.command();
    let window = match client {
        Client::JavaUnbounded => 0,
        _ => args.window,
    };
    match client {
        Client::Layer | Client::LayerMulti => {
            let mode = if client == Client::Layer {
                "layer"
            } else {
                "layer-multi"
            };
            command
                .args(["--connect", &connect, "--mode", mode])
                .args(["--nodes", &nodes.to_string()])
                .args(["--payload-bytes", &args.payload_bytes.to_string()])
                .args(["--window", &window.to_string()]);
        }
        Client::Java | Client::JavaUnbounded | Client::Kazoo => {
            command.args([
                connect.clone(),
                nodes.to_string(),
                args.payload_bytes.to_string(),
                window.to_string(),
            ]);
        }
    }
    let stderr_path = dir.path().join("client.stderr");
    let stderr = File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr);
    die_with_parent(&mut command);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", launcher.program.display()))?;

    let (lines, incoming) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(args.client_timeout_secs);
    let mut result: Option<ClientResult> = None;
    let mut other_output = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match incoming.recv_timeout(left) {
            Ok(line) => match serde_json::from_str::<ClientResult>(&line) {
                Ok(parsed) => {
                    result = Some(parsed);
                    break;
                }
                Err(_) => other_output.push(line),
            },
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    // The server goes first, so that the client's session can never close (ZOOKEEPER-4306).
    let server = ensemble.server(0);
    let ephemerals = server
        .mntr()
        .ok()
        .and_then(|m| m.get("zk_ephemerals_count")?.parse::<u64>().ok());
    let server_log = server.log_tail(TAIL_LINES);
    server.kill().context("killing the ZooKeeper server")?;
    let status = finish(
        &mut child,
        if timed_out {
            Duration::ZERO
        } else {
            Duration::from_secs(10)
        },
    );
    drop(ensemble);

    let outcome = match result {
        Some(result) => Outcome::Result(result),
        None => {
            let mut reason = if timed_out {
                format!(
                    "no result within {} s (--client-timeout-secs); killed",
                    args.client_timeout_secs
                )
            } else {
                format!("exited ({status}) without printing a result")
            };
            let _ = write!(
                reason,
                "\n--- client stderr (last lines):\n{}",
                tail(&stderr_path, TAIL_LINES)
            );
            if !other_output.is_empty() {
                let _ = write!(reason, "\n--- client stdout:\n{}", other_output.join("\n"));
            }
            let _ = write!(reason, "\n--- ZooKeeper log (last lines):\n{server_log}");
            Outcome::Failed(reason)
        }
    };
    Ok((outcome, ephemerals))
}

/// Waits up to `grace` for the client to exit on its own (it does, right after its
/// result), then kills it; returns how it ended.
fn finish(child: &mut Child, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                return match child.wait() {
                    Ok(status) => format!("killed after it did not exit: {status}"),
                    Err(err) => format!("could not be reaped: {err}"),
                };
            }
        }
    }
}

/// A client must not outlive the benchmark: the kernel kills it when we die.
fn die_with_parent(command: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
        // PR_SET_PDEATHSIG fires when the forking *thread* exits; clients are started
        // from the main thread, which lives as long as the benchmark.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
