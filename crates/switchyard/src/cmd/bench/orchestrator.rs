//! `switchyard bench orchestrator`: an orchestrator with a million apps, against the
//! issue's targets (start to `/readyz` under 30 s, resident memory when ready under
//! 1.5 GB, write to delta on the route stream p99 under 100 ms), on one machine.
//!
//! Per run: a fresh standalone ZooKeeper; `switchyard orchestrator` as a child process;
//! N apps imported through `POST /v1/apps/import` (NDJSON generated and streamed);
//! then, `--restarts` times, the orchestrator is stopped (SIGTERM) and a fresh one
//! started and timed to `/readyz` 200, its memory read from `/proc`, the route stream's
//! snapshot read to its end, and `--writes` writes timed until their `upsert` line
//! arrives. No other program does an orchestrator's job; its peer for the start is the
//! official Java client reading the same imported tree node by node (`ZkWalk.java`), the
//! part of a start that any client must do. One same-run reference gives context (the
//! same ZooKeeper writes and tree walk done directly with the layer, on their own fresh
//! server).
//! Prints a table of medians; writes no file.

#[path = "orchestrator_load.rs"]
mod load;
#[path = "orchestrator_proc.rs"]
mod proc;
#[path = "orchestrator_report.rs"]
mod report;
#[path = "orchestrator_stream.rs"]
mod stream;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use self::proc::{Launch, Orchestrator, Sample};
use self::report::{JavaWalk, Restart, RunResult, Stop, ZkStats};

/// The region the benchmark creates (in its own fresh ZooKeeper).
const REGION: &str = "bench";
/// Requests the Java walk keeps in flight: the layer's default window.
const JAVA_WALK_WINDOW: usize = 1000;
/// How long a SIGTERM'd orchestrator may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(120);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Apps imported (each: 1 domain, 2 backends on 127.0.0.1, no health check).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    apps: u64,
    /// Full runs, each with a fresh ZooKeeper and its own import. Default 1: importing
    /// a million apps takes minutes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    runs: u64,
    /// Fresh orchestrators started one after another on each run's imported region;
    /// start, memory, snapshot and writes are measured on each (the table shows medians).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    restarts: u64,
    /// Writes timed on each restarted orchestrator, one at a time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=stream::MAX_WRITES))]
    writes: u64,
    /// Shards of the region (the orchestrator's `--shards`).
    #[arg(long, default_value_t = 1024)]
    shards: u16,
    /// JVM heap limit of the ZooKeeper server, in MiB.
    #[arg(long, default_value_t = 4096)]
    heap_mib: u32,
    /// Skip the same-run reference (the import's ZooKeeper writes made directly with
    /// `coord::Zk::write_groups`, then the tree walked with `TreeCache`, in this
    /// process, against its own fresh ZooKeeper).
    #[arg(long)]
    no_reference: bool,
    /// Times the peer, the official Java client, reads the imported tree node by node
    /// (`bench/zk/ZkWalk.java`, as a tree cache loads) on each run; 0 skips it.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(0..=10))]
    java_walks: u64,
    /// The `switchyard` binary to run as `switchyard orchestrator` (default: this one).
    #[arg(long)]
    orchestrator_bin: Option<PathBuf>,
    /// Give up on an orchestrator's start after this many seconds.
    #[arg(long, default_value_t = 600)]
    ready_timeout_secs: u64,
    /// Give up when the import's answer or a snapshot is silent this many seconds.
    #[arg(long, default_value_t = 600)]
    idle_timeout_secs: u64,
    /// Keep the temporary folder (ZooKeeper's data, the orchestrators' logs).
    #[arg(long)]
    keep: bool,
    /// Print the raw results and the medians as JSON on stdout (the table then goes to
    /// stderr).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let binary = match &args.orchestrator_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe().context("finding the switchyard binary to run")?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    eprintln!(
        "bench: orchestrator: {} apps, {} run(s), {} restart(s) per run, {} writes per restart; orchestrator binary {}",
        args.apps,
        args.runs,
        args.restarts,
        args.writes,
        binary.display()
    );
    let mut runs = Vec::new();
    for run in 1..=args.runs as usize {
        let result = one_run(&args, &runtime, &binary, run);
        runs.push(result);
    }
    let summary = report::summarise(&runs);
    let mut text = format!(
        "\nOrchestrator benchmark: {} apps (1 domain, 2 backends on 127.0.0.1, no health check), --shards {}; {} run(s) (each: fresh standalone ZooKeeper, {} MiB heap, one import), {} fresh orchestrator start(s) per run, {} writes each; medians over runs (import) and over all starts (the rest)\n\n",
        args.apps, args.shards, args.runs, args.heap_mib, args.restarts, args.writes
    );
    text.push_str(&report::table(&summary, &runs, args.apps));
    text.push_str(&notes(&args, &binary));
    let problems = problems(&args, &runs);
    let warnings = warnings(&runs);
    if !warnings.is_empty() {
        text.push_str("\nWARNINGS (the product's failures the benchmark got past):\n");
        for warning in &warnings {
            let _ = writeln!(text, "- {warning}");
        }
    }
    if !problems.is_empty() {
        text.push_str("\nPROBLEMS:\n");
        for problem in &problems {
            let _ = writeln!(text, "- {problem}");
        }
    }
    if args.json {
        eprint!("{text}");
        let document = serde_json::json!({
            "settings": {
                "apps": args.apps,
                "runs": args.runs,
                "restarts": args.restarts,
                "writes": args.writes,
                "shards": args.shards,
                "heap_mib": args.heap_mib,
                "reference": !args.no_reference,
                "orchestrator_bin": binary,
            },
            "runs": runs,
            "summary": summary,
            "targets": report::targets(&summary),
            "problems": problems,
            "warnings": warnings,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&document).context("encoding the results")?
        );
    } else {
        print!("{text}");
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `caused by:` lines of an orchestrator's last words, or its last line.
fn last_error_line(log_tail: &str) -> String {
    let causes: Vec<&str> = log_tail
        .lines()
        .filter_map(|l| l.trim().strip_prefix("caused by: "))
        .collect();
    match causes.first() {
        Some(_) => causes.join(": "),
        None => log_tail.lines().last().unwrap_or("").trim().to_string(),
    }
}

/// Failures the benchmark got past: the product's, reported, but not the benchmark's.
fn warnings(runs: &[RunResult]) -> Vec<String> {
    let mut out = Vec::new();
    for run in runs {
        for failure in &run.region_failures {
            out.push(format!(
                "run {}: the first orchestrator failed to create the region and was started again: {failure}",
                run.run
            ));
        }
        for failure in run.reference.iter().flat_map(|r| &r.region_failures) {
            out.push(format!(
                "run {}: reference: Layout::open failed and was tried again: {failure}",
                run.run
            ));
        }
    }
    out
}

/// What went wrong in the runs (unmet targets are not problems; errors are).
fn problems(args: &Args, runs: &[RunResult]) -> Vec<String> {
    let mut out = Vec::new();
    for run in runs {
        let r = run.run;
        if let Some(error) = &run.error {
            out.push(format!("run {r}: {error}"));
        }
        if let Some(error) = &run.reference_error {
            out.push(format!("run {r}: reference: {error}"));
        }
        if let Some(reference) = &run.reference {
            if reference.failed > 0 || reference.state_apps != args.apps {
                out.push(format!(
                    "run {r}: reference: {} apps refused, {} apps in the loaded state (expected {})",
                    reference.failed, reference.state_apps, args.apps
                ));
            }
        }
        if let Some(import) = &run.import {
            if !import.complete() {
                out.push(format!(
                    "run {r}: import: {} of {} imported, {} failed lines (first: {})",
                    import.imported,
                    import.apps,
                    import.failed,
                    import.failures.join(" | ")
                ));
            }
            if import.visible_secs.is_none() {
                out.push(format!(
                    "run {r}: the importing orchestrator never counted every app"
                ));
            }
        }
        for restart in &run.restarts {
            let n = restart.restart;
            if let Some(error) = &restart.error {
                out.push(format!("run {r} restart {n}: {error}"));
            }
            if let Some(s) = &restart.snapshot {
                if s.routes_announced != args.apps || s.route_lines != args.apps {
                    out.push(format!(
                        "run {r} restart {n}: the snapshot announced {} routes and held {}, not {}",
                        s.routes_announced, s.route_lines, args.apps
                    ));
                }
            }
            if let Some(w) = &restart.writes {
                if w.errors > 0 {
                    out.push(format!(
                        "run {r} restart {n}: {} write errors (first: {})",
                        w.errors,
                        w.first_errors.join(" | ")
                    ));
                }
            }
            if let Some(stop) = &restart.stop {
                if stop.ended.contains("killed") {
                    out.push(format!("run {r} restart {n}: stop: {}", stop.ended));
                }
            }
        }
    }
    out
}

fn notes(args: &Args, binary: &std::path::Path) -> String {
    format!(
        "\nNotes:\n\
         - peer: the official Java client (bench/zk/ZkWalk.java, async getData of every node and getChildren of\n  \
           every parent, 1000 in flight, a fresh JVM each time) reading the imported shards subtree on the same\n  \
           ZooKeeper after the import, before the restarts; an orchestrator's start reads that tree and more.\n\
         - reference: the import's ZooKeeper writes (same paths, payloads, groups of app node + domain node,\n  \
           write_groups in batches of {batch}) made directly with coord::Zk in this process against its own fresh\n  \
           ZooKeeper, then TreeCache::start + State::load on that tree: the import and the start without HTTP,\n  \
           JSON validation, the orchestrator's watch read-back, shard claims.\n\
         - import: timed from sending the request to its `done` line; `visible` is when /v1/region counted every app.\n\
         - start: from spawning `{bin} orchestrator` to the first /readyz 200 (polled every 20 ms);\n  \
           memory is VmHWM (peak so far) and VmRSS from /proc/<pid>/status right after that 200.\n\
         - snapshot: GET /v1/routes body bytes up to the end of its `ready` line (NDJSON, uncompressed; HTTP\n  \
           headers and chunk framing not counted); route lines are counted, not parsed.\n\
         - writes: PUT /v1/apps/<id> moving the app's second backend to a new port, one at a time, {writes} per\n  \
           start; each timed from sending the PUT to the arrival of the stream chunk holding its `upsert`;\n  \
           p50/p99 are per start (nearest rank), the table shows their medians; max is over all writes.\n\
         - The benchmark, the orchestrator and ZooKeeper share this machine's cores.\n",
        batch = load::IMPORT_BATCH,
        bin = binary.display(),
        writes = args.writes,
    )
}

fn one_run(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    run: usize,
) -> RunResult {
    let mut result = RunResult {
        run,
        reference: None,
        reference_error: None,
        empty_region_ready: None,
        region_failures: Vec::new(),
        import: None,
        import_stop: None,
        zk_after_import: None,
        restarts: Vec::new(),
        java_walks: Vec::new(),
        java_walk_error: None,
        error: None,
    };
    if let Err(err) = try_run(args, runtime, binary, &mut result) {
        let error = format!("{err:#}");
        eprintln!("bench: run {run} FAILED: {error}");
        result.error = Some(error);
    }
    result
}

/// The peer: the official Java client reading the imported region's shards subtree,
/// every node, as a tree cache's load does; one fresh JVM per walk.
fn java_walks(
    args: &Args,
    ensemble: &zkserver::Ensemble,
    run: usize,
) -> anyhow::Result<Vec<JavaWalk>> {
    let launcher = super::peers::java_walk(&super::peers::tools_dir())?;
    let root = orchestrator::Layout::new(REGION).shards();
    let mut walks = Vec::new();
    for n in 1..=args.java_walks {
        let output = launcher
            .command()
            .arg(ensemble.connect_string())
            .arg(&root)
            .arg(JAVA_WALK_WINDOW.to_string())
            .stdin(std::process::Stdio::null())
            .output()
            .context("running the Java walk")?;
        if !output.status.success() {
            anyhow::bail!(
                "the Java walk exited with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let line = String::from_utf8_lossy(&output.stdout);
        let walk: JavaWalk = serde_json::from_str(line.trim())
            .with_context(|| format!("reading the Java walk's answer {line:?}"))?;
        eprintln!(
            "bench: run {run}: Java walk {n}: {} nodes in {:.1} s, {} errors, peak RSS {:.0} MiB",
            walk.nodes,
            walk.secs,
            walk.errors,
            walk.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        );
        walks.push(walk);
    }
    Ok(walks)
}

fn start_zookeeper(args: &Args, dir: &std::path::Path) -> anyhow::Result<zkserver::Ensemble> {
    let mut config = zkserver::Config::standalone(dir);
    config.heap_mib = args.heap_mib;
    zkserver::Ensemble::start(&config).context("starting ZooKeeper")
}

fn try_run(
    args: &Args,
    runtime: &tokio::runtime::Runtime,
    binary: &std::path::Path,
    result: &mut RunResult,
) -> anyhow::Result<()> {
    let run = result.run;
    let folder = tempfile::Builder::new()
        .prefix("switchyard-bench-orchestrator-")
        .tempdir()
        .context("creating a temporary folder")?;
    let dir = folder.path().to_path_buf();
    if args.keep {
        let _ = folder.keep();
        eprintln!("bench: run {run}: keeping {}", dir.display());
    }
    let idle = Duration::from_secs(args.idle_timeout_secs);
    let ready_timeout = Duration::from_secs(args.ready_timeout_secs);

    if !args.no_reference {
        let zk_dir = dir.join("zookeeper-reference");
        eprintln!(
            "bench: run {run}: reference: {} apps written with write_groups, then walked, on a fresh ZooKeeper",
            args.apps
        );
        let outcome = start_zookeeper(args, &zk_dir).and_then(|mut ensemble| {
            let connect = ensemble.connect_string();
            let reference = runtime.block_on(load::reference(
                &connect,
                REGION,
                args.shards,
                args.apps,
                ensemble.server(0).pid(),
            ));
            let _ = ensemble.server(0).kill();
            drop(ensemble);
            let _ = std::fs::remove_dir_all(&zk_dir);
            reference
        });
        match outcome {
            Ok(reference) => {
                eprintln!(
                    "bench: run {run}: reference: writes {:.1} s ({:.0} apps/s), walk {:.1} s ({} nodes), state load {:.1} s",
                    reference.write_secs,
                    reference.apps_per_sec(),
                    reference.cache_walk_secs,
                    reference.cache_nodes,
                    reference.state_load_secs
                );
                result.reference = Some(reference);
            }
            Err(err) => {
                let error = format!("{err:#}");
                eprintln!("bench: run {run}: reference FAILED: {error}");
                result.reference_error = Some(error);
            }
        }
    }

    let mut ensemble = start_zookeeper(args, &dir.join("zookeeper"))?;
    let connect = ensemble.connect_string();
    let zk_pid = ensemble.server(0).pid();
    let (token_file, token) = proc::write_token(&dir)?;
    let launch = Launch {
        binary: binary.to_path_buf(),
        zk: connect.clone(),
        zk_pid,
        region: REGION.into(),
        shards: args.shards,
        token_file,
        dir: dir.clone(),
    };
    eprintln!("bench: run {run}: ZooKeeper at {connect}; starting the orchestrator that imports");
    let client = runtime.block_on(async { stream::client() });

    // The first start creates the region; it is tried again if its process exits
    // before it is ready (see `load::REGION_ATTEMPTS`), and each failure is reported.
    let mut attempt = 1;
    let (mut importer, ready) = loop {
        let name = if attempt == 1 {
            "import".to_string()
        } else {
            format!("import-attempt-{attempt}")
        };
        let mut importer = Orchestrator::spawn(&launch, &name)?;
        match runtime.block_on(stream::wait_ready(&mut importer, &client, ready_timeout)) {
            Ok(ready) => break (importer, ready),
            Err(err) if attempt < load::REGION_ATTEMPTS && importer.exited().is_some() => {
                let error = last_error_line(&importer.log_tail());
                eprintln!(
                    "bench: run {run}: the first orchestrator exited before it was ready ({error}); starting it again"
                );
                result
                    .region_failures
                    .push(format!("{}: {error}", importer.log.display()));
                drop(err);
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    };
    eprintln!(
        "bench: run {run}: empty region ready in {:.2} s; importing {} apps",
        ready.ready_secs, args.apps
    );
    result.empty_region_ready = Some(ready);
    let import = runtime.block_on(load::import(&importer, &token, args.apps, idle, zk_pid));
    let import = match import {
        Ok(import) => import,
        Err(err) => {
            let exited = importer.exited();
            let last = importer.sample();
            return Err(err.context(format!(
                "the import failed; the orchestrator {}{}; last lines of {}:\n{}",
                exited.map_or("is still running".to_string(), |s| format!("exited: {s}")),
                last.map_or(String::new(), |s| format!(
                    " (VmHWM {:.0} MiB)",
                    s.vm_hwm_bytes as f64 / (1024.0 * 1024.0)
                )),
                importer.log.display(),
                importer.log_tail()
            )));
        }
    };
    let complete = import.complete();
    result.import = Some(import);
    let mntr = ensemble.server(0).mntr().ok();
    let number = |key: &str| mntr.as_ref()?.get(key)?.parse::<u64>().ok();
    result.zk_after_import = Some(ZkStats {
        znodes: number("zk_znode_count"),
        approximate_data_size_bytes: number("zk_approximate_data_size"),
        server: zk_pid.and_then(|pid| Sample::of(&pid.to_string())),
    });
    let (took, ended) = importer.terminate(STOP_GRACE);
    result.import_stop = Some(Stop {
        secs: took.as_secs_f64(),
        ended,
    });
    drop(importer);
    if !complete {
        anyhow::bail!("the import was incomplete; no restarts measured");
    }
    if args.java_walks > 0 {
        match java_walks(args, &ensemble, run) {
            Ok(walks) => result.java_walks = walks,
            Err(err) => {
                let error = format!("{err:#}");
                eprintln!("bench: run {run}: Java walk FAILED: {error}");
                result.java_walk_error = Some(error);
            }
        }
    }

    for n in 1..=args.restarts as usize {
        let round = (run as u64 - 1) * args.restarts + n as u64 - 1;
        let restart = runtime.block_on(restart(
            args,
            &launch,
            &client,
            &token,
            n,
            round,
            ready_timeout,
            idle,
        ));
        let failed = restart.error.is_some();
        result.restarts.push(restart);
        if failed {
            break;
        }
    }
    let _ = ensemble.server(0).kill();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn restart(
    args: &Args,
    launch: &Launch,
    client: &stream::Http,
    token: &str,
    n: usize,
    round: u64,
    ready_timeout: Duration,
    idle: Duration,
) -> Restart {
    let mut restart = Restart {
        restart: n,
        readiness: None,
        snapshot: None,
        writes: None,
        after_writes: None,
        zk_cpu_to_ready_secs: None,
        stop: None,
        error: None,
    };
    let zk_cpu = || proc::cpu_secs(&launch.zk_pid?.to_string());
    let zk_cpu0 = zk_cpu();
    let mut orchestrator = match Orchestrator::spawn(launch, &format!("start-{n}")) {
        Ok(o) => o,
        Err(err) => {
            restart.error = Some(format!("{err:#}"));
            return restart;
        }
    };
    let outcome: anyhow::Result<()> = async {
        let ready = stream::wait_ready(&mut orchestrator, client, ready_timeout).await?;
        eprintln!(
            "bench:   start {n}: ready in {:.1} s, VmHWM {:.0} MiB, VmRSS {:.0} MiB",
            ready.ready_secs,
            ready.at_ready.vm_hwm_bytes as f64 / (1024.0 * 1024.0),
            ready.at_ready.vm_rss_bytes as f64 / (1024.0 * 1024.0),
        );
        restart.zk_cpu_to_ready_secs = zk_cpu().zip(zk_cpu0).map(|(now, then)| now - then);
        restart.readiness = Some(ready);
        let (snapshot, live) = stream::snapshot(&orchestrator, client, idle).await?;
        eprintln!(
            "bench:   start {n}: snapshot {} bytes, {} routes, in {:.2} s",
            snapshot.bytes, snapshot.route_lines, snapshot.secs
        );
        restart.snapshot = Some(snapshot);
        let writes = stream::writes(
            &orchestrator,
            client,
            token,
            live,
            args.apps,
            args.writes,
            round,
        )
        .await;
        eprintln!(
            "bench:   start {n}: {} writes: p50 {:.1} ms, p99 {:.1} ms, {} errors",
            writes.upsert_ms.len(),
            report::percentile(&writes.upsert_ms, 0.5).unwrap_or(f64::NAN),
            report::percentile(&writes.upsert_ms, 0.99).unwrap_or(f64::NAN),
            writes.errors
        );
        restart.writes = Some(writes);
        restart.after_writes = orchestrator.sample();
        Ok(())
    }
    .await;
    if let Err(err) = outcome {
        restart.error = Some(format!("{err:#}"));
    }
    // Blocks this (block_on) thread only; the runtime's workers go on.
    let (took, ended) = orchestrator.terminate(STOP_GRACE);
    restart.stop = Some(Stop {
        secs: took.as_secs_f64(),
        ended,
    });
    restart
}
