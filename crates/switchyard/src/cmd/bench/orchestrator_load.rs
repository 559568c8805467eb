//! Filling the region for `bench orchestrator`: the generated apps, the bulk import
//! through `POST /v1/apps/import` (NDJSON generated on the fly and streamed, never held
//! whole), and the same-run reference: the same ZooKeeper writes made directly with
//! the layer (`coord::Zk::write_groups`), then the same tree loaded with
//! `coord::TreeCache` and `orchestrator::State`, in this process.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use serde::Serialize;

use super::proc::{Orchestrator, Sample};

/// Apps per `write_groups` call: the import's batch (`BATCH` in
/// `orchestrator/src/import.rs`), so that the reference pipelines as the import does.
pub const IMPORT_BATCH: u64 = 10_000;
/// Bytes of NDJSON per piece of the streamed request body.
const UPLOAD_PIECE_BYTES: usize = 256 * 1024;
/// Attempts at creating the region (the reference's `Layout::open`, the first
/// orchestrator's start): on a fresh server, `Layout::open` sometimes fails with "node
/// not exists" on a shard's `apps` or `health` node, because it creates parents and
/// children in one `write_many`, whose transactions are not sent in order.
pub const REGION_ATTEMPTS: usize = 3;
/// Failed lines of an import shown in full.
const FAILURES_SHOWN: usize = 5;

/// App `i`'s id.
pub fn app_id(i: u64) -> String {
    format!("app-{i:07}")
}

/// App `i` as JSON: one domain, two backends on 127.0.0.1 (ports 10000..=29999), no
/// health check, so nothing is probed. `second_port` replaces the second backend's
/// port (the benchmark's writes use 30000 and up). `stored` adds `"version":0`, which
/// makes it byte for byte what the orchestrator stores (`registry.rs`, `encode`).
pub fn app_json(i: u64, second_port: Option<u16>, stored: bool) -> String {
    let id = app_id(i);
    let first = 10_000 + (i % 10_000) * 2;
    let second = second_port.map_or(first + 1, u64::from);
    let version = if stored { ",\"version\":0" } else { "" };
    format!(
        "{{\"id\":\"{id}\",\"domains\":[\"{id}.bench.test\"],\"backends\":[{{\"addr\":\"127.0.0.1:{first}\",\"weight\":1}},{{\"addr\":\"127.0.0.1:{second}\",\"weight\":1}}]{version}}}"
    )
}

/// One progress line of the import, as the orchestrator sent it.
#[derive(Debug, Clone, Serialize)]
pub struct ProgressPoint {
    /// Seconds since the request was sent, when the line arrived.
    pub secs: f64,
    pub lines: u64,
    pub imported: u64,
    pub failed: u64,
}

/// What the import did.
#[derive(Debug, Clone, Serialize)]
pub struct Import {
    /// Apps sent.
    pub apps: u64,
    /// Bytes of NDJSON sent.
    pub request_bytes: u64,
    /// From sending the request to its `done` line.
    pub secs: f64,
    /// When the last byte of the request was handed to the HTTP client.
    pub upload_secs: f64,
    /// From sending the request until `/v1/region` counted every app (the
    /// orchestrator's own cache and state caught up).
    pub visible_secs: Option<f64>,
    /// The `done` line's counts.
    pub lines: u64,
    pub imported: u64,
    pub failed: u64,
    /// The first failed lines, as the orchestrator described them.
    pub failures: Vec<String>,
    pub progress: Vec<ProgressPoint>,
    /// The importing orchestrator when the apps were visible.
    pub orchestrator_at_end: Option<Sample>,
    /// CPU seconds the orchestrator and the ZooKeeper server spent from the request
    /// until the apps were visible.
    pub orchestrator_cpu_secs: Option<f64>,
    pub zk_cpu_secs: Option<f64>,
}

impl Import {
    pub fn apps_per_sec(&self) -> f64 {
        self.imported as f64 / self.secs
    }

    /// The `done` line says every app was imported.
    pub fn complete(&self) -> bool {
        self.imported == self.apps && self.failed == 0
    }
}

/// Streams `apps` generated apps into `POST /v1/apps/import` and follows the answer.
pub async fn import(
    orchestrator: &Orchestrator,
    token: &str,
    apps: u64,
    idle: Duration,
    zk_pid: Option<u32>,
) -> anyhow::Result<Import> {
    let cpu = |pid: Option<u32>| pid.and_then(|p| super::proc::cpu_secs(&p.to_string()));
    let (orch_cpu0, zk_cpu0) = (cpu(Some(orchestrator.pid())), cpu(zk_pid));
    let (sender, pieces) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let started = Instant::now();
    let generator = tokio::task::spawn_blocking(move || {
        let mut sent: u64 = 0;
        let mut piece = Vec::with_capacity(UPLOAD_PIECE_BYTES + 512);
        for i in 0..apps {
            piece.extend_from_slice(app_json(i, None, false).as_bytes());
            piece.push(b'\n');
            if piece.len() >= UPLOAD_PIECE_BYTES || i + 1 == apps {
                sent += piece.len() as u64;
                let full = std::mem::replace(&mut piece, Vec::with_capacity(UPLOAD_PIECE_BYTES));
                if sender.blocking_send(Ok(Bytes::from(full))).is_err() {
                    break;
                }
            }
        }
        (sent, started.elapsed())
    });
    let url = format!("{}/v1/apps/import", orchestrator.base_url());
    let mut answer = crate::http::request_streamed(
        "POST",
        &url,
        Some(token),
        &[("content-type", "application/x-ndjson")],
        pieces,
        Duration::from_secs(60),
    )
    .await?;
    if answer.status != 200 {
        let status = answer.status;
        let rest = answer.rest(Duration::from_secs(10)).await?;
        bail!(
            "the import was refused: {status} {}",
            String::from_utf8_lossy(&rest.body)
        );
    }
    let mut progress = Vec::new();
    let mut done: Option<serde_json::Value> = None;
    let mut pending: Vec<u8> = Vec::new();
    while done.is_none() {
        let Some(chunk) = answer.chunk(idle).await? else {
            break;
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let value: serde_json::Value = serde_json::from_slice(&line).with_context(|| {
                format!(
                    "the import's answer has a line that is not JSON: {}",
                    String::from_utf8_lossy(&line)
                )
            })?;
            if let Some(p) = value.get("progress") {
                let point = ProgressPoint {
                    secs: started.elapsed().as_secs_f64(),
                    lines: p["lines"].as_u64().unwrap_or(0),
                    imported: p["imported"].as_u64().unwrap_or(0),
                    failed: p["failed"].as_u64().unwrap_or(0),
                };
                eprintln!(
                    "bench:   import progress at {:6.1} s: {} lines, {} imported, {} failed ({:.0} apps/s so far)",
                    point.secs,
                    point.lines,
                    point.imported,
                    point.failed,
                    point.imported as f64 / point.secs
                );
                progress.push(point);
            } else if let Some(d) = value.get("done") {
                done = Some(d.clone());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let Some(done) = done else {
        bail!(
            "the import's answer ended after {secs:.1} s without its `done` line ({} progress lines)",
            progress.len()
        );
    };
    let (request_bytes, upload) = generator.await.context("the NDJSON generator")?;
    let failures: Vec<String> = done["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .take(FAILURES_SHOWN)
        .map(|f| format!("line {}: {}", f["line"], f["error"].as_str().unwrap_or("?")))
        .collect();
    let failed = done["failed"].as_array().map_or(0, Vec::len) as u64;
    eprintln!(
        "bench:   import done at {secs:.1} s: {} lines, {} imported, {failed} failed",
        done["lines"], done["imported"]
    );
    // The orchestrator answers `done` when ZooKeeper has the apps; its own cache reads
    // them back through its watch. Wait until its state counts them all.
    let client = super::stream::client();
    let region = format!("{}/v1/region", orchestrator.base_url());
    let wanted = done["imported"].as_u64().unwrap_or(0);
    let mut visible_secs = None;
    let deadline = Instant::now() + idle;
    while Instant::now() < deadline {
        if let Ok((200, body)) =
            super::stream::send(&client, "GET", &region, None, Bytes::new()).await
        {
            let seen = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["apps"].as_u64());
            if seen >= Some(wanted) {
                visible_secs = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delta = |before: Option<f64>, pid: Option<u32>| Some(cpu(pid)? - before?);
    Ok(Import {
        apps,
        request_bytes,
        secs,
        upload_secs: upload.as_secs_f64(),
        visible_secs,
        lines: done["lines"].as_u64().unwrap_or(0),
        imported: done["imported"].as_u64().unwrap_or(0),
        failed,
        failures,
        progress,
        orchestrator_at_end: orchestrator.sample(),
        orchestrator_cpu_secs: delta(orch_cpu0, Some(orchestrator.pid())),
        zk_cpu_secs: delta(zk_cpu0, zk_pid),
    })
}

/// CPU seconds spent in a phase by this process and by the ZooKeeper server.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cpu {
    pub here_secs: f64,
    pub zk_secs: f64,
}

/// The reference: the import's ZooKeeper work without the orchestrator.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub apps: u64,
    /// ZooKeeper nodes created for the apps (app node + domain index node each).
    pub nodes: u64,
    /// `write_groups` in batches of the import's size, sequentially.
    pub write_secs: f64,
    pub write_cpu: Cpu,
    /// Groups (apps) refused.
    pub failed: u64,
    /// Failed attempts at creating the region before the one that worked.
    pub region_failures: Vec<String>,
    /// `TreeCache::start` over the shards subtree: the walk an orchestrator's start does.
    pub cache_walk_secs: f64,
    pub cache_walk_cpu: Cpu,
    pub cache_nodes: u64,
    /// `State::load` of the cached tree (parsing every app, building routes).
    pub state_load_secs: f64,
    /// CPU time of `State::load` (one thread).
    pub state_load_cpu_secs: f64,
    pub state_apps: u64,
    /// This process's resident set before the walk, after it, and after the state load
    /// (approximate: allocator slack included).
    pub rss_before_bytes: u64,
    pub rss_after_cache_bytes: u64,
    pub rss_after_state_bytes: u64,
}

impl Reference {
    pub fn apps_per_sec(&self) -> f64 {
        (self.apps - self.failed) as f64 / self.write_secs
    }
}

/// Writes `apps` apps into the region `region` exactly as the import does (same paths,
/// same payloads, same groups, same batches), then loads the tree as an orchestrator's
/// start does. Runs in this process against `connect` (its own fresh server).
pub async fn reference(
    connect: &str,
    region: &str,
    shards: u16,
    apps: u64,
    zk_pid: Option<u32>,
) -> anyhow::Result<Reference> {
    let cpu = || super::proc::cpu_secs("self").unwrap_or(f64::NAN);
    let zk_cpu = || {
        zk_pid
            .and_then(|p| super::proc::cpu_secs(&p.to_string()))
            .unwrap_or(f64::NAN)
    };
    let zk = coord::Zk::connect(coord::Config::new(connect))
        .await
        .with_context(|| format!("connecting to ZooKeeper at {connect}"))?;
    // `Layout::open` can fail on a fresh server (see `REGION_ATTEMPTS`); it tolerates
    // the nodes an earlier attempt made, so it is tried again.
    let mut open_failures = Vec::new();
    let layout = loop {
        match ::orchestrator::Layout::new(region).open(&zk, shards).await {
            Ok(layout) => break layout,
            Err(err) if open_failures.len() + 1 < REGION_ATTEMPTS => {
                eprintln!("bench:   reference: creating the region failed, trying again: {err}");
                open_failures.push(err.to_string());
            }
            Err(err) => return Err(err).context("creating the region"),
        }
    };
    let mut failed = 0u64;
    let mut first_error: Option<String> = None;
    let (cpu0, zk_cpu0) = (cpu(), zk_cpu());
    let started = Instant::now();
    let mut next = 0;
    while next < apps {
        let end = (next + IMPORT_BATCH).min(apps);
        let mut groups = Vec::with_capacity((end - next) as usize);
        for i in next..end {
            let id = app_id(i);
            let app_id = id
                .parse()
                .map_err(|err| anyhow::anyhow!("app id {id}: {err}"))?;
            let domain_name = format!("{id}.bench.test");
            let domain = domain_name
                .parse()
                .map_err(|err| anyhow::anyhow!("domain {domain_name}: {err}"))?;
            groups.push(vec![
                coord::Op::Create {
                    path: layout.app(&app_id),
                    payload: app_json(i, None, true).into_bytes(),
                    mode: coord::CreateMode::Persistent,
                },
                coord::Op::Create {
                    path: layout.domain(&domain),
                    payload: id.into_bytes(),
                    mode: coord::CreateMode::Persistent,
                },
            ]);
        }
        let outcome = zk.write_groups(groups).await;
        failed += outcome.failed.len() as u64;
        if let (None, Some(refused)) = (&first_error, outcome.failed.first()) {
            first_error = Some(format!("{}: {}", refused.path, refused.error));
        }
        next = end;
    }
    let write_secs = started.elapsed().as_secs_f64();
    let write_cpu = Cpu {
        here_secs: cpu() - cpu0,
        zk_secs: zk_cpu() - zk_cpu0,
    };
    if let Some(error) = first_error {
        eprintln!("bench:   reference: {failed} apps refused; the first: {error}");
    }

    trim_heap();
    let rss_before = Sample::of("self").map_or(0, |s| s.vm_rss_bytes);
    let (cpu0, zk_cpu0) = (cpu(), zk_cpu());
    let started = Instant::now();
    let cache = coord::TreeCache::start(&zk, &layout.shards(), None)
        .await
        .context("loading the tree cache")?;
    let cache_walk_secs = started.elapsed().as_secs_f64();
    let cache_walk_cpu = Cpu {
        here_secs: cpu() - cpu0,
        zk_secs: zk_cpu() - zk_cpu0,
    };
    let rss_after_cache = Sample::of("self").map_or(0, |s| s.vm_rss_bytes);
    let cpu0 = cpu();
    let started = Instant::now();
    let mut state = ::orchestrator::State::new(layout.clone());
    cache.with_tree(|tree| state.load(tree.iter()));
    let state_load_secs = started.elapsed().as_secs_f64();
    let state_load_cpu_secs = cpu() - cpu0;
    let rss_after_state = Sample::of("self").map_or(0, |s| s.vm_rss_bytes);
    let result = Reference {
        apps,
        nodes: 2 * (apps - failed),
        write_secs,
        write_cpu,
        failed,
        region_failures: open_failures,
        cache_walk_secs,
        cache_walk_cpu,
        state_load_cpu_secs,
        cache_nodes: cache.len() as u64,
        state_load_secs,
        state_apps: state.app_count() as u64,
        rss_before_bytes: rss_before,
        rss_after_cache_bytes: rss_after_cache,
        rss_after_state_bytes: rss_after_state,
    };
    drop(state);
    drop(cache);
    zk.close().await;
    trim_heap();
    Ok(result)
}

/// Gives freed heap back to the system, so that the reference's tree does not stay in
/// this process's resident set while the orchestrator is measured.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
