//! What one client run reports, and the table of medians `bench zk` prints.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The one JSON line every client prints on stdout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientResult {
    pub client: String,
    pub nodes: u64,
    pub create_secs: f64,
    pub read_secs: f64,
    pub errors: u64,
    pub peak_rss_bytes: u64,
    /// The layer's creates that went out in shared `multi`s (the layer alone says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesced_creates: Option<u64>,
    /// The layer's reads that went out in shared `multiRead`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesced_reads: Option<u64>,
}

impl ClientResult {
    pub fn creates_per_sec(&self) -> f64 {
        self.nodes as f64 / self.create_secs
    }

    pub fn reads_per_sec(&self) -> f64 {
        self.nodes as f64 / self.read_secs
    }
}

/// One run of one client: its result, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub run: usize,
    pub client: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// `zk_ephemerals_count` of the server when the client was done: a check that the
    /// nodes the client reports are really there.
    pub server_ephemerals: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The client printed its result (which may count errors).
    Result(ClientResult),
    /// The client crashed, timed out or printed no result.
    Failed(String),
}

/// A client that was not run at all, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub client: String,
    pub reason: String,
}

/// Peak resident set of this process (VmHWM), in bytes; 0 when unreadable.
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The median; the mean of the middle two for an even count.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// One row of the table: a client's medians over the runs that reported.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub client: String,
    pub nodes: Option<u64>,
    pub runs_reported: usize,
    pub runs_failed: usize,
    pub creates_per_sec: Option<f64>,
    pub reads_per_sec: Option<f64>,
    pub peak_rss_mib: Option<f64>,
    pub errors: u64,
    /// Median creates/s over the bounded Java client's, measured in the same runs.
    pub creates_vs_java: Option<f64>,
    pub skipped: Option<String>,
}

/// Summarises `runs` per client, in the order of `clients`.
pub fn summarise(clients: &[String], runs: &[Run], skipped: &[Skipped]) -> Vec<Summary> {
    let mut rows: Vec<Summary> = clients
        .iter()
        .map(|client| {
            let results: Vec<&ClientResult> = runs
                .iter()
                .filter(|r| &r.client == client)
                .filter_map(|r| match &r.outcome {
                    Outcome::Result(result) => Some(result),
                    Outcome::Failed(_) => None,
                })
                .collect();
            let failed = runs
                .iter()
                .filter(|r| &r.client == client && matches!(r.outcome, Outcome::Failed(_)))
                .count();
            Summary {
                client: client.clone(),
                nodes: results.first().map(|r| r.nodes),
                runs_reported: results.len(),
                runs_failed: failed,
                creates_per_sec: median(results.iter().map(|r| r.creates_per_sec()).collect()),
                reads_per_sec: median(results.iter().map(|r| r.reads_per_sec()).collect()),
                peak_rss_mib: median(
                    results
                        .iter()
                        .map(|r| r.peak_rss_bytes as f64 / (1024.0 * 1024.0))
                        .collect(),
                ),
                errors: results.iter().map(|r| r.errors).sum(),
                creates_vs_java: None,
                skipped: skipped
                    .iter()
                    .find(|s| &s.client == client)
                    .map(|s| s.reason.clone()),
            }
        })
        .collect();
    let java = rows
        .iter()
        .find(|r| r.client == "java")
        .and_then(|r| r.creates_per_sec);
    for row in &mut rows {
        row.creates_vs_java = match (row.creates_per_sec, java) {
            (Some(own), Some(java)) if java > 0.0 => Some(own / java),
            _ => None,
        };
    }
    rows
}

/// The table, as plain text.
pub fn table(rows: &[Summary], runs: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>9} {:>11} {:>11} {:>9} {:>7} {:>10}  STATUS",
        "CLIENT", "NODES", "CREATES/S", "READS/S", "RSS MiB", "ERRORS", "vs java"
    );
    for row in rows {
        if let Some(reason) = &row.skipped {
            let _ = writeln!(
                out,
                "{:<15} {:>9} {:>11} {:>11} {:>9} {:>7} {:>10}  SKIPPED: {reason}",
                row.client, "-", "-", "-", "-", "-", "-"
            );
            continue;
        }
        let status = match (row.runs_reported, row.runs_failed, row.errors) {
            (0, _, _) => format!("FAILED: no run of {runs} reported"),
            (_, 0, 0) => format!("ok ({} runs)", row.runs_reported),
            (_, 0, _) => format!("ERRORS in {} runs", row.runs_reported),
            (n, f, _) => format!("FAILED {f} of {} runs (medians over {n})", n + f),
        };
        let _ = writeln!(
            out,
            "{:<15} {:>9} {:>11} {:>11} {:>9} {:>7} {:>10}  {status}",
            row.client,
            row.nodes.map_or("-".into(), |n| n.to_string()),
            row.creates_per_sec
                .map_or("-".into(), |v| format!("{v:.0}")),
            row.reads_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            row.peak_rss_mib.map_or("-".into(), |v| format!("{v:.0}")),
            row.errors,
            row.creates_vs_java
                .map_or("-".into(), |v| format!("{v:.2}x")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(client: &str, create_secs: f64, errors: u64) -> ClientResult {
        ClientResult {
            client: client.into(),
            nodes: 1000,
            create_secs,
            read_secs: 1.0,
            errors,
            peak_rss_bytes: 100 << 20,
            coalesced_creates: None,
            coalesced_reads: None,
        }
    }

    fn run(run: usize, client: &str, outcome: Outcome) -> Run {
        Run {
            run,
            client: client.into(),
            outcome,
            server_ephemerals: None,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn summary_takes_medians_and_ratios_to_java() {
        let clients = vec!["layer".to_string(), "java".to_string(), "kazoo".to_string()];
        let runs = vec![
            run(1, "layer", Outcome::Result(result("layer", 0.5, 0))),
            run(2, "layer", Outcome::Result(result("layer", 0.25, 2))),
            run(3, "layer", Outcome::Failed("crashed".into())),
            run(1, "java", Outcome::Result(result("java", 1.0, 0))),
        ];
        let skipped = vec![Skipped {
            client: "kazoo".into(),
            reason: "no python3".into(),
        }];
        let rows = summarise(&clients, &runs, &skipped);
        assert_eq!(rows[0].creates_per_sec, Some(3000.0));
        assert_eq!(rows[0].errors, 2);
        assert_eq!((rows[0].runs_reported, rows[0].runs_failed), (2, 1));
        assert_eq!(rows[0].creates_vs_java, Some(3.0));
        assert_eq!(rows[1].creates_vs_java, Some(1.0));
        assert_eq!(rows[1].peak_rss_mib, Some(100.0));
        assert_eq!(rows[2].skipped.as_deref(), Some("no python3"));
        let text = table(&rows, 3);
        assert!(text.contains("SKIPPED: no python3"), "{text}");
        assert!(text.contains("FAILED 1 of 3 runs"), "{text}");
        assert!(text.contains("3.00x"), "{text}");
    }

    #[test]
    fn result_line_round_trips() {
        let line = r#"{"client":"java","nodes":10,"create_secs":0.5,"read_secs":0.25,"errors":0,"peak_rss_bytes":1024}"#;
        let parsed: ClientResult = serde_json::from_str(line).unwrap();
        assert_eq!(parsed.creates_per_sec(), 20.0);
        assert_eq!(parsed.reads_per_sec(), 40.0);
    }
}
