//! `switchyard zk audit`: node sizes against `jute.maxbuffer`, for cron and alerting
//! (post-mortem lesson 4: the node that took the region down had grown past the limit
//! unwatched). The walk is `coord::Zk::audit`; this file parses flags, shows progress
//! and prints the report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use coord::{AuditOptions, AuditReport, NodeSize};
use orchestrator::config::parse_duration;

use super::operator::{self, BAD, UNREACHABLE};

const AUDIT_EXIT_STATUS: &str = "\
Exit status:
  0  no node is over the threshold
  1  some node's data, or its list of children, is over the threshold (each is
     printed), or the audit failed (no such path, ZooKeeper refused a request)
  2  usage error
  3  ZooKeeper could not be reached within --connect-timeout

Example (cron):
  switchyard zk audit --zk 10.0.0.1:2181,10.0.0.2:2181 --threshold 0.8 || page-someone";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ZkCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ZkCommand {
    /// Walk a tree: its largest nodes, its widest parents, and every node whose data or
    /// list of children is over a share of jute.maxbuffer.
    #[command(after_long_help = AUDIT_EXIT_STATUS)]
    Audit(AuditArgs),
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// ZooKeeper connect string [default: the `zk` of <DIR>/region.json, else
    /// 127.0.0.1:2181].
    #[arg(long, value_name = "CONNECT")]
    zk: Option<String>,
    /// State folder of `switchyard up`, whose region.json gives the default --zk.
    #[arg(long, env = "SWITCHYARD_DIR", default_value = ".switchyard")]
    dir: PathBuf,
    /// The tree to walk.
    #[arg(long, default_value = "/switchyard")]
    path: String,
    /// Share of the limit above which a node is reported, and the exit status is 1.
    #[arg(long, default_value_t = 0.9, value_parser = operator::share)]
    threshold: f64,
    /// How many of the largest nodes and of the widest parents to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Nodes read at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// `jute.maxbuffer` of the servers, in bytes: the limit sizes are measured against.
    #[arg(long, default_value_t = coord::DEFAULT_JUTE_MAXBUFFER)]
    jute_maxbuffer: usize,
    /// How long to keep trying to reach ZooKeeper before giving up (exit status 3).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        ZkCommand::Audit(args) => audit(args),
    }
}

fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let connect = match &args.zk {
        Some(zk) => zk.clone(),
        None => operator::region_if_present(&args.dir)?
            .map(|region| region.zk)
            .unwrap_or_else(|| "127.0.0.1:2181".into()),
    };
    let mut config = coord::Config::new(connect.clone());
    config.jute_maxbuffer = args.jute_maxbuffer;
    config.retry_for = args.connect_timeout;
    let options = AuditOptions {
        root: args.path.clone(),
        threshold: args.threshold,
        top: args.top,
        concurrency: args.concurrency as usize,
    };
    let walked = operator::runtime()?.block_on(async {
        // The client may wait a whole session timeout per attempt: bound it all.
        let connecting = tokio::time::timeout(args.connect_timeout, coord::Zk::connect(config));
        let zk = match connecting.await {
            Ok(Ok(zk)) => zk,
            Ok(Err(err)) => return Walk::Failed(err),
            Err(_) => {
                return Walk::Unreachable(format!("no session within {:?}", args.connect_timeout))
            }
        };
        let walked = match walk(&zk, &options).await {
            Ok(Some(report)) => Walk::Done(report),
            Ok(None) => Walk::NoRoot,
            Err(err) => Walk::Failed(err),
        };
        zk.close().await;
        walked
    });
    let report = match walked {
        Walk::Done(report) => report,
        Walk::NoRoot => anyhow::bail!("there is no node {} in ZooKeeper at {connect}", args.path),
        Walk::Failed(err @ coord::Error::Unavailable { .. }) => {
            eprintln!("error: ZooKeeper at {connect} is unreachable: {err}");
            return Ok(operator::exit(UNREACHABLE));
        }
        Walk::Unreachable(why) => {
            eprintln!("error: ZooKeeper at {connect} is unreachable: {why}");
            return Ok(operator::exit(UNREACHABLE));
        }
        Walk::Failed(err) => {
            return Err(err).with_context(|| format!("auditing {} at {connect}", args.path))
        }
    };
    if args.json {
        let mut value = serde_json::to_value(&report).expect("the report serialises");
        value["zk"] = connect.into();
        value["alarming"] = report.alarming().into();
        println!("{value}");
    } else {
        print!("{}", render(&connect, &report));
    }
    Ok(if report.alarming() {
        operator::exit(BAD)
    } else {
        ExitCode::SUCCESS
    })
}

/// How an audit went.
enum Walk {
    Done(AuditReport),
    /// The root does not exist.
    NoRoot,
    /// No session in time.
    Unreachable(String),
    Failed(coord::Error),
}

/// The audit, with progress on stderr; `None` when the root does not exist.
async fn walk(zk: &coord::Zk, options: &AuditOptions) -> coord::Result<Option<AuditReport>> {
    if zk.exists(&options.root).await?.is_none() {
        return Ok(None);
    }
    let mut shown = 0;
    let report = zk
        .audit(options, |nodes| {
            if nodes >= shown + 10_000 {
                shown = nodes;
                eprintln!("zk audit: {nodes} nodes visited");
            }
        })
        .await?;
    Ok(Some(report))
}

fn percent(bytes: usize, limit: usize) -> String {
    format!("{:.1}%", bytes as f64 * 100.0 / limit.max(1) as f64)
}

/// The human report.
fn render(connect: &str, report: &AuditReport) -> String {
    use std::fmt::Write;
    let limit = report.limit_bytes;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ZooKeeper {connect}, {}: {} nodes; limit {limit} bytes (jute.maxbuffer); alarm above {:.0}% ({} bytes)",
        report.root,
        report.nodes,
        report.threshold * 100.0,
        (limit as f64 * report.threshold) as usize,
    );
    let _ = writeln!(out, "\nLargest nodes (data):");
    let _ = writeln!(out, "  {:>12}  {:>6}  PATH", "BYTES", "LIMIT");
    for node in report.largest.iter().filter(|n| n.data_bytes > 0) {
        let _ = writeln!(
            out,
            "  {:>12}  {:>6}  {}",
            node.data_bytes,
            percent(node.data_bytes, limit),
            node.path
        );
    }
    let _ = writeln!(out, "\nWidest parents (children, and their list's size):");
    let _ = writeln!(
        out,
        "  {:>10}  {:>12}  {:>6}  PATH",
        "CHILDREN", "LIST BYTES", "LIMIT"
    );
    for node in &report.widest {
        let _ = writeln!(
            out,
            "  {:>10}  {:>12}  {:>6}  {}",
            node.children,
            node.children_list_bytes,
            percent(node.children_list_bytes, limit),
            node.path
        );
    }
    let threshold = format!("{:.0}%", report.threshold * 100.0);
    if report.over.is_empty() {
        let _ = writeln!(out, "\nOK: no node is over {threshold} of the limit.");
    } else {
        let _ = writeln!(out, "\nOver {threshold} of the limit:");
        for node in &report.over {
            let _ = writeln!(out, "  {}: {}", node.path, over(node, report));
        }
        let _ = writeln!(
            out,
            "\nALERT: {} over {threshold} of the limit. A write past jute.maxbuffer is refused, and a list of children past it cannot be read.",
            operator::count(report.over.len() as u64, "node")
        );
    }
    out
}

/// What is over the threshold in `node`.
fn over(node: &NodeSize, report: &AuditReport) -> String {
    let limit = report.limit_bytes;
    let alarm = (limit as f64 * report.threshold) as usize;
    let mut parts = Vec::new();
    if node.data_bytes > alarm {
        parts.push(format!(
            "data {} bytes, {} of the limit",
            node.data_bytes,
            percent(node.data_bytes, limit)
        ));
    }
    if node.children_list_bytes > alarm {
        parts.push(format!(
            "{} children listed in {} bytes, {} of the limit",
            node.children,
            node.children_list_bytes,
            percent(node.children_list_bytes, limit)
        ));
    }
    parts.join("; ")
}
