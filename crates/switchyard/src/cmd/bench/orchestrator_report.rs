//! What one run of `bench orchestrator` measured, the medians over runs and restarts,
//! the targets, and the table.

use std::fmt::Write as _;

use serde::Serialize;

use super::super::report::median;
use super::load::{Import, Reference};
use super::proc::Sample;
use super::stream::{Readiness, Snapshot, Writes};

/// Start to `/readyz` 200, in seconds, at most.
pub const TARGET_READY_SECS: f64 = 30.0;
/// Resident memory when ready, in bytes, at most (1.5 GB, decimal: the stricter reading).
pub const TARGET_RSS_BYTES: f64 = 1.5e9;
/// p99 of write to `upsert` on the stream, in ms, at most.
pub const TARGET_P99_MS: f64 = 100.0;

const MIB: f64 = 1024.0 * 1024.0;

/// One run: a fresh ZooKeeper, the import, then fresh orchestrators one after another.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    pub run: usize,
    pub reference: Option<Reference>,
    pub reference_error: Option<String>,
    pub empty_region_ready: Option<Readiness>,
    /// The first orchestrator's failed starts (it creates the region), with their error.
    pub region_failures: Vec<String>,
    pub import: Option<Import>,
    /// SIGTERM to exit of the orchestrator that imported.
    pub import_stop: Option<Stop>,
    pub zk_after_import: Option<ZkStats>,
    pub restarts: Vec<Restart>,
    /// The peer: the Java client reading the imported tree.
    pub java_walks: Vec<JavaWalk>,
    pub java_walk_error: Option<String>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

/// One walk of the imported tree by the official Java client (`ZkWalk.java`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JavaWalk {
    pub client: String,
    pub nodes: u64,
    pub bytes: u64,
    pub secs: f64,
    pub errors: u64,
    pub peak_rss_bytes: u64,
}

/// SIGTERM to exit.
#[derive(Debug, Clone, Serialize)]
pub struct Stop {
    pub secs: f64,
    pub ended: String,
}

/// The ZooKeeper server after the import.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ZkStats {
    pub znodes: Option<u64>,
    pub approximate_data_size_bytes: Option<u64>,
    pub server: Option<Sample>,
}

/// One fresh orchestrator on the imported region.
#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub restart: usize,
    pub readiness: Option<Readiness>,
    pub snapshot: Option<Snapshot>,
    pub writes: Option<Writes>,
    /// The orchestrator after the snapshot and the writes.
    pub after_writes: Option<Sample>,
    /// CPU seconds the ZooKeeper server spent from the spawn to `/readyz` 200.
    pub zk_cpu_to_ready_secs: Option<f64>,
    pub stop: Option<Stop>,
    pub error: Option<String>,
}

/// The `q` quantile (0..=1) by nearest rank: the smallest value with at least `q` of
/// the values at or below it.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Medians over runs (import) and over every restart of every run (the rest).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub restarts_measured: usize,
    pub import_secs: Option<f64>,
    pub import_apps_per_sec: Option<f64>,
    pub import_visible_secs: Option<f64>,
    pub reference_apps_per_sec: Option<f64>,
    /// Median import rate over the median reference rate.
    pub import_vs_reference: Option<f64>,
    pub reference_cache_walk_secs: Option<f64>,
    pub reference_state_load_secs: Option<f64>,
    /// Median time of the Java client's walk of the same tree.
    pub java_walk_secs: Option<f64>,
    /// Median start-to-ready time over the median Java walk time.
    pub ready_vs_java_walk: Option<f64>,
    pub ready_secs: Option<f64>,
    pub ready_secs_max: Option<f64>,
    pub vm_hwm_at_ready_bytes: Option<f64>,
    pub vm_rss_at_ready_bytes: Option<f64>,
    pub vm_hwm_at_ready_bytes_max: Option<f64>,
    pub cpu_secs_at_ready: Option<f64>,
    pub vm_hwm_after_writes_bytes: Option<f64>,
    pub snapshot_bytes: Option<f64>,
    pub snapshot_routes: Option<f64>,
    pub snapshot_secs: Option<f64>,
    pub snapshot_first_byte_secs: Option<f64>,
    /// Medians of each restart's p50 / p99 over its writes; the max over all writes.
    pub write_p50_ms: Option<f64>,
    pub write_p99_ms: Option<f64>,
    pub write_max_ms: Option<f64>,
    pub answer_p50_ms: Option<f64>,
    pub answer_p99_ms: Option<f64>,
    pub write_errors: u64,
    pub stop_secs: Option<f64>,
}

pub fn summarise(runs: &[RunResult]) -> Summary {
    let imports: Vec<&Import> = runs.iter().filter_map(|r| r.import.as_ref()).collect();
    let references: Vec<&Reference> = runs.iter().filter_map(|r| r.reference.as_ref()).collect();
    let restarts: Vec<&Restart> = runs.iter().flat_map(|r| &r.restarts).collect();
    let ready: Vec<&Readiness> = restarts
        .iter()
        .filter_map(|r| r.readiness.as_ref())
        .collect();
    let snapshots: Vec<&Snapshot> = restarts
        .iter()
        .filter_map(|r| r.snapshot.as_ref())
        .collect();
    let writes: Vec<&Writes> = restarts.iter().filter_map(|r| r.writes.as_ref()).collect();
    let of = |values: Vec<f64>| median(values);
    let max = |values: Vec<f64>| values.into_iter().reduce(f64::max);
    let import_apps_per_sec = of(imports.iter().map(|i| i.apps_per_sec()).collect());
    let reference_apps_per_sec = of(references.iter().map(|r| r.apps_per_sec()).collect());
    let java_walk_secs = of(runs
        .iter()
        .flat_map(|r| &r.java_walks)
        .map(|w| w.secs)
        .collect());
    let ready_secs = of(ready.iter().map(|r| r.ready_secs).collect());
    Summary {
        java_walk_secs,
        ready_vs_java_walk: match (ready_secs, java_walk_secs) {
            (Some(ready), Some(walk)) if walk > 0.0 => Some(ready / walk),
            _ => None,
        },
        runs: runs.len(),
        restarts_measured: ready.len(),
        import_secs: of(imports.iter().map(|i| i.secs).collect()),
        import_apps_per_sec,
        import_visible_secs: of(imports.iter().filter_map(|i| i.visible_secs).collect()),
        reference_apps_per_sec,
        import_vs_reference: match (import_apps_per_sec, reference_apps_per_sec) {
            (Some(import), Some(reference)) if reference > 0.0 => Some(import / reference),
            _ => None,
        },
        reference_cache_walk_secs: of(references.iter().map(|r| r.cache_walk_secs).collect()),
        reference_state_load_secs: of(references.iter().map(|r| r.state_load_secs).collect()),
        ready_secs,
        ready_secs_max: max(ready.iter().map(|r| r.ready_secs).collect()),
        vm_hwm_at_ready_bytes: of(ready
            .iter()
            .map(|r| r.at_ready.vm_hwm_bytes as f64)
            .collect()),
        vm_rss_at_ready_bytes: of(ready
            .iter()
            .map(|r| r.at_ready.vm_rss_bytes as f64)
            .collect()),
        vm_hwm_at_ready_bytes_max: max(ready
            .iter()
            .map(|r| r.at_ready.vm_hwm_bytes as f64)
            .collect()),
        cpu_secs_at_ready: of(ready.iter().map(|r| r.at_ready.cpu_secs).collect()),
        vm_hwm_after_writes_bytes: of(restarts
            .iter()
            .filter_map(|r| r.after_writes.map(|s| s.vm_hwm_bytes as f64))
            .collect()),
        snapshot_bytes: of(snapshots.iter().map(|s| s.bytes as f64).collect()),
        snapshot_routes: of(snapshots.iter().map(|s| s.route_lines as f64).collect()),
        snapshot_secs: of(snapshots.iter().map(|s| s.secs).collect()),
        snapshot_first_byte_secs: of(snapshots.iter().map(|s| s.first_byte_secs).collect()),
        write_p50_ms: of(writes
            .iter()
            .filter_map(|w| percentile(&w.upsert_ms, 0.50))
            .collect()),
        write_p99_ms: of(writes
            .iter()
            .filter_map(|w| percentile(&w.upsert_ms, 0.99))
            .collect()),
        write_max_ms: max(writes
            .iter()
            .filter_map(|w| percentile(&w.upsert_ms, 1.0))
            .collect()),
        answer_p50_ms: of(writes
            .iter()
            .filter_map(|w| percentile(&w.answer_ms, 0.50))
            .collect()),
        answer_p99_ms: of(writes
            .iter()
            .filter_map(|w| percentile(&w.answer_ms, 0.99))
            .collect()),
        write_errors: writes.iter().map(|w| w.errors).sum(),
        stop_secs: of(restarts
            .iter()
            .filter_map(|r| r.stop.as_ref().map(|s| s.secs))
            .collect()),
    }
}

/// One of the targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub what: &'static str,
    pub target: &'static str,
    pub measured: Option<String>,
    /// `None` when nothing was measured.
    pub met: Option<bool>,
}

pub fn targets(summary: &Summary) -> Vec<Target> {
    vec![
        Target {
            what: "start to /readyz 200",
            target: "< 30 s",
            measured: summary.ready_secs.map(|s| format!("{s:.1} s")),
            met: summary.ready_secs.map(|s| s < TARGET_READY_SECS),
        },
        Target {
            what: "resident memory when ready (VmHWM)",
            target: "< 1.5 GB",
            measured: summary
                .vm_hwm_at_ready_bytes
                .map(|b| format!("{:.0} MiB ({:.2} GB)", b / MIB, b / 1e9)),
            met: summary.vm_hwm_at_ready_bytes.map(|b| b < TARGET_RSS_BYTES),
        },
        Target {
            what: "write to upsert on the stream, p99",
            target: "< 100 ms",
            measured: summary.write_p99_ms.map(|ms| format!("{ms:.1} ms")),
            met: summary.write_p99_ms.map(|ms| ms < TARGET_P99_MS),
        },
    ]
}

fn opt(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_string(), f)
}

/// The table: one line per measure, then the targets, then per run and per restart.
pub fn table(summary: &Summary, runs: &[RunResult], apps: u64) -> String {
    let mut out = String::new();
    let mut row = |what: &str, value: String| {
        let _ = writeln!(out, "{what:<52} {value}");
    };
    row("MEASURE", "VALUE".into());
    row(
        "import: POST /v1/apps/import to its `done` line",
        opt(summary.import_secs, |s| format!("{s:.1} s")),
    );
    row(
        "import rate",
        opt(summary.import_apps_per_sec, |r| format!("{r:.0} apps/s")),
    );
    row(
        "  same writes by the layer, write_groups (reference)",
        opt(summary.reference_apps_per_sec, |r| {
            format!("{r:.0} apps/s ({:.0} creates/s)", 2.0 * r)
        }),
    );
    row(
        "  import rate vs the reference",
        opt(summary.import_vs_reference, |x| format!("{x:.2}x")),
    );
    row(
        "import until the orchestrator's state has every app",
        opt(summary.import_visible_secs, |s| format!("{s:.1} s")),
    );
    row(
        "start (spawn) to /readyz 200",
        opt(summary.ready_secs, |s| {
            format!(
                "{s:.1} s (max {})",
                opt(summary.ready_secs_max, |m| format!("{m:.1} s"))
            )
        }),
    );
    row(
        "  reference: TreeCache walk + State::load in-process",
        match (
            summary.reference_cache_walk_secs,
            summary.reference_state_load_secs,
        ) {
            (Some(walk), Some(load)) => format!("{walk:.1} s + {load:.1} s"),
            _ => "-".into(),
        },
    );
    row(
        "  peer: the Java client reading the same tree",
        opt(summary.java_walk_secs, |s| format!("{s:.1} s")),
    );
    row(
        "  start to ready vs the Java client's read",
        opt(summary.ready_vs_java_walk, |x| {
            format!("{x:.2}x the time ({:.1}x faster)", 1.0 / x)
        }),
    );
    row(
        "resident memory when ready: VmHWM (peak)",
        opt(summary.vm_hwm_at_ready_bytes, |b| {
            format!(
                "{:.0} MiB (max {})",
                b / MIB,
                opt(summary.vm_hwm_at_ready_bytes_max, |m| format!(
                    "{:.0} MiB",
                    m / MIB
                ))
            )
        }),
    );
    row(
        "resident memory when ready: VmRSS",
        opt(summary.vm_rss_at_ready_bytes, |b| {
            format!("{:.0} MiB", b / MIB)
        }),
    );
    row(
        "CPU time of the orchestrator until ready",
        opt(summary.cpu_secs_at_ready, |s| format!("{s:.1} s")),
    );
    row(
        "full snapshot on the wire (body bytes)",
        opt(summary.snapshot_bytes, |b| {
            format!(
                "{:.1} MB, {:.0} bytes/route ({} routes)",
                b / 1e6,
                b / summary.snapshot_routes.unwrap_or(f64::NAN).max(1.0),
                opt(summary.snapshot_routes, |r| format!("{r:.0}"))
            )
        }),
    );
    row(
        "  read to its `ready` line (first byte)",
        opt(summary.snapshot_secs, |s| {
            format!(
                "{s:.2} s ({})",
                opt(summary.snapshot_first_byte_secs, |f| format!("{f:.3} s"))
            )
        }),
    );
    row(
        "write to its upsert on the stream: p50 / p99 / max",
        match (
            summary.write_p50_ms,
            summary.write_p99_ms,
            summary.write_max_ms,
        ) {
            (Some(p50), Some(p99), Some(max)) => {
                format!("{p50:.1} / {p99:.1} / {max:.1} ms")
            }
            _ => "-".into(),
        },
    );
    row(
        "  the PUT's own answer: p50 / p99",
        match (summary.answer_p50_ms, summary.answer_p99_ms) {
            (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1} ms"),
            _ => "-".into(),
        },
    );
    row("write errors", summary.write_errors.to_string());
    row(
        "VmHWM after snapshot and writes",
        opt(summary.vm_hwm_after_writes_bytes, |b| {
            format!("{:.0} MiB", b / MIB)
        }),
    );
    row(
        "SIGTERM to exit",
        opt(summary.stop_secs, |s| format!("{s:.2} s")),
    );

    let _ = writeln!(out, "\nTARGETS (the issue's, at {apps} apps)");
    for target in targets(summary) {
        let met = match target.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT MEASURED",
        };
        let _ = writeln!(
            out,
            "{:<40} {:<10} {:<28} {met}",
            target.what,
            target.target,
            target.measured.as_deref().unwrap_or("-")
        );
    }

    let _ = writeln!(out, "\nPER RUN");
    for run in runs {
        let mut line = format!("run {}:", run.run);
        if let Some(i) = &run.import {
            let _ = write!(
                line,
                " import {:.1} s ({:.0} apps/s, {} of {} imported, {} failed; visible at {}; CPU orchestrator {} s, ZooKeeper {} s)",
                i.secs,
                i.apps_per_sec(),
                i.imported,
                i.apps,
                i.failed,
                opt(i.visible_secs, |s| format!("{s:.1} s")),
                opt(i.orchestrator_cpu_secs, |s| format!("{s:.0}")),
                opt(i.zk_cpu_secs, |s| format!("{s:.0}")),
            );
        }
        if let Some(r) = &run.reference {
            let _ = write!(
                line,
                "; reference {:.1} s ({:.0} apps/s; CPU here {:.0} s, ZooKeeper {:.0} s), walk {:.1} s (CPU here {:.1} s, ZooKeeper {:.1} s), load {:.1} s (CPU {:.1} s), in-process RSS +{:.0} MiB cache, +{:.0} MiB state",
                r.write_secs,
                r.apps_per_sec(),
                r.write_cpu.here_secs,
                r.write_cpu.zk_secs,
                r.cache_walk_secs,
                r.cache_walk_cpu.here_secs,
                r.cache_walk_cpu.zk_secs,
                r.state_load_secs,
                r.state_load_cpu_secs,
                r.rss_after_cache_bytes.saturating_sub(r.rss_before_bytes) as f64 / MIB,
                r.rss_after_state_bytes.saturating_sub(r.rss_after_cache_bytes) as f64 / MIB,
            );
        }
        if let Some(e) = &run.reference_error {
            let _ = write!(line, "; reference FAILED: {e}");
        }
        if !run.java_walks.is_empty() {
            let walks: Vec<String> = run
                .java_walks
                .iter()
                .map(|w| format!("{:.1} s", w.secs))
                .collect();
            let w = &run.java_walks[0];
            let _ = write!(
                line,
                "; Java walk {} ({} nodes, {} errors, peak RSS {:.0} MiB)",
                walks.join(" / "),
                w.nodes,
                run.java_walks.iter().map(|w| w.errors).sum::<u64>(),
                w.peak_rss_bytes as f64 / MIB
            );
        }
        if let Some(e) = &run.java_walk_error {
            let _ = write!(line, "; Java walk FAILED: {e}");
        }
        if let Some(z) = &run.zk_after_import {
            let _ = write!(
                line,
                "; ZooKeeper {} znodes, {} MB data, server RSS {} MiB",
                z.znodes.map_or("-".into(), |n| n.to_string()),
                z.approximate_data_size_bytes
                    .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1e6)),
                z.server.map_or("-".into(), |s| format!(
                    "{:.0}",
                    s.vm_rss_bytes as f64 / MIB
                )),
            );
        }
        let _ = writeln!(out, "{line}");
        if let Some(error) = &run.error {
            let _ = writeln!(out, "  FAILED: {error}");
        }
        for restart in &run.restarts {
            let mut line = format!("  restart {}:", restart.restart);
            if let Some(r) = &restart.readiness {
                let phases: Vec<String> = r
                    .phases
                    .iter()
                    .map(|p| format!("{} @{:.1}", p.reason, p.since_secs))
                    .collect();
                let _ = write!(
                    line,
                    " ready {:.1} s [{}], VmHWM {:.0} MiB, VmRSS {:.0} MiB, CPU {:.1} s (ZooKeeper {} s)",
                    r.ready_secs,
                    phases.join(", "),
                    r.at_ready.vm_hwm_bytes as f64 / MIB,
                    r.at_ready.vm_rss_bytes as f64 / MIB,
                    r.at_ready.cpu_secs,
                    opt(restart.zk_cpu_to_ready_secs, |s| format!("{s:.1}")),
                );
            }
            if let Some(s) = &restart.snapshot {
                let _ = write!(
                    line,
                    "; snapshot {} bytes, {} routes in {:.2} s",
                    s.bytes, s.route_lines, s.secs
                );
            }
            if let Some(w) = &restart.writes {
                let _ = write!(
                    line,
                    "; {} writes p50 {} p99 {} max {} ms, {} errors",
                    w.upsert_ms.len(),
                    opt(percentile(&w.upsert_ms, 0.5), |v| format!("{v:.1}")),
                    opt(percentile(&w.upsert_ms, 0.99), |v| format!("{v:.1}")),
                    opt(percentile(&w.upsert_ms, 1.0), |v| format!("{v:.1}")),
                    w.errors
                );
            }
            let _ = writeln!(out, "{line}");
            if let Some(error) = &restart.error {
                let _ = writeln!(out, "    FAILED: {error}");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_by_nearest_rank() {
        let values: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), Some(500.0));
        assert_eq!(percentile(&values, 0.99), Some(990.0));
        assert_eq!(percentile(&values, 1.0), Some(1000.0));
        assert_eq!(percentile(&[3.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn targets_read_the_medians() {
        let summary = Summary {
            ready_secs: Some(31.0),
            vm_hwm_at_ready_bytes: Some(1.0e9),
            write_p99_ms: None,
            ..Summary::default()
        };
        let met: Vec<Option<bool>> = targets(&summary).iter().map(|t| t.met).collect();
        assert_eq!(met, vec![Some(false), Some(true), None]);
    }
}
