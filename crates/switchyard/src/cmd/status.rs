//! `switchyard status`: the region at a glance, from `region.json` or flags. Every
//! ZooKeeper server (`srvr`, `mntr`), orchestrator (`/readyz`, `/v1/region`,
//! `/metrics`) and gateway (admin `/readyz`, `/metrics`) is asked at once, and the
//! answers are read, never trusted to exist: a component that does not answer is
//! reported as unreachable, not skipped.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use orchestrator::config::parse_duration;
use serde::{Deserialize, Serialize};

use super::operator::{self, BAD, UNREACHABLE};
use crate::region::Region;

const EXIT_STATUS: &str = "\
Exit status:
  0  every component answered, is ready, and there is no size alert
  1  something is degraded: not ready, not serving, a held route update, a stale
     table, or a size alert (ZooKeeper's largest proposal near jute.maxbuffer, or an
     orchestrator that wrote payloads over its size alert)
  2  usage error
  3  some component could not be reached (this wins over 1: it is often the cause)

What is checked: the components of <DIR>/region.json (written by `switchyard up`);
--zk, --orchestrator and --gateway replace its lists. Without region.json, only what
the flags name is checked, or, with no flag, the default local addresses
(127.0.0.1:2181, http://127.0.0.1:7000, gateway admin http://127.0.0.1:9080).";

#[derive(Debug, clap::Args)]
#[command(after_long_help = EXIT_STATUS)]
pub struct Args {
    /// State folder of `switchyard up`, whose region.json lists the components.
    #[arg(long, env = "SWITCHYARD_DIR", default_value = ".switchyard")]
    dir: PathBuf,
    /// ZooKeeper connect string (`host:port,host:port`): these servers instead of
    /// region.json's.
    #[arg(long, value_name = "CONNECT")]
    zk: Option<String>,
    /// An orchestrator's base URL instead of region.json's (repeatable).
    #[arg(long = "orchestrator", value_name = "URL")]
    orchestrators: Vec<String>,
    /// A gateway's admin base URL instead of region.json's (repeatable).
    #[arg(long = "gateway", value_name = "ADMIN_URL")]
    gateways: Vec<String>,
    /// Longest wait for each answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// `jute.maxbuffer` of the ZooKeeper servers, in bytes.
    #[arg(long, default_value_t = coord::DEFAULT_JUTE_MAXBUFFER)]
    jute_maxbuffer: usize,
    /// Share of jute.maxbuffer above which ZooKeeper's largest proposal is an alert.
    #[arg(long, default_value_t = 0.9, value_parser = operator::share)]
    threshold: f64,
    /// A gateway whose table was last known current longer ago than this is degraded.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    max_staleness: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How a component is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Health {
    Ok,
    Degraded,
    Unreachable,
}

/// One component to ask: its name in region.json (or its address) and its address.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    addr: String,
}

#[derive(Debug, Serialize)]
struct ZkStatus {
    name: String,
    addr: String,
    health: Health,
    /// `standalone`, `leader`, `follower` or `observer`; none when not serving.
    mode: Option<String>,
    /// Why it is not ok.
    reason: Option<String>,
    /// The largest write forwarded to the quorum, in bytes; none from a standalone
    /// server, which makes no proposals.
    max_proposal_size: Option<u64>,
    approximate_data_size: Option<u64>,
    ephemerals_count: Option<u64>,
    znode_count: Option<u64>,
}

/// The part of an orchestrator's `/v1/region` shown here.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RegionView {
    member: String,
    members: Vec<String>,
    apps: u64,
    shards: u64,
    shards_owned_here: u64,
    owners: BTreeMap<String, u64>,
    unowned: u64,
    route_version: u64,
    route_subscribers: u64,
}

#[derive(Debug, Serialize)]
struct OrchestratorStatus {
    name: String,
    url: String,
    health: Health,
    ready: bool,
    reason: Option<String>,
    region: Option<RegionView>,
    /// `switchyard_zk_payloads_over_alert_total`: payloads written or read over the size
    /// alert.
    payloads_over_alert: Option<u64>,
    /// Files the orchestrator process has open, and the most it may.
    open_files: Option<u64>,
    open_files_limit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct GatewayStatus {
    name: String,
    admin: String,
    health: Health,
    ready: bool,
    reason: Option<String>,
    routes: Option<u64>,
    table_version: Option<u64>,
    staleness_seconds: Option<f64>,
    held_updates: Option<u64>,
    held_update_removed_routes: Option<u64>,
    /// Certificate files its TLS listener serves (none: no TLS).
    tls_certificates: Option<u64>,
    /// Days until the first of them expires (negative: expired).
    tls_days_left: Option<f64>,
    /// Files the gateway process has open, and the most it may.
    open_files: Option<u64>,
    open_files_limit: Option<u64>,
    /// Client connections open, and the most it serves at once (`--max-connections`).
    connections: Option<u64>,
    connections_limit: Option<u64>,
    /// Table version of its snapshot on disk.
    snapshot_version: Option<u64>,
    /// Seconds its served table has waited to be written to disk.
    snapshot_unsaved_seconds: Option<f64>,
    /// Snapshot writes that failed since it started.
    snapshot_write_errors: Option<u64>,
    /// Whether it holds its state folder's lock (and so writes its table there).
    state_folder_held: Option<bool>,
}

/// A gateway whose served table has waited this long to be written to disk is degraded:
/// a restart would serve the older table on disk. Writes are coalesced to one per
/// `--snapshot-interval` (500 ms), and a restart beside the old gateway waits a few
/// seconds for its lock.
const UNSAVED_WARNING_SECS: f64 = 60.0;

/// A daemon with this share of its open-files limit in use is degraded: at the limit
/// it accepts no connection. So is a gateway with this share of its connection limit.
const OPEN_FILES_WARNING_SHARE: f64 = 0.8;

/// What is wrong when a daemon has `open` of its `limit` files open, if anything.
fn open_files_problem(open: Option<u64>, limit: Option<u64>) -> Option<String> {
    let (open, limit) = (open?, limit?);
    (open as f64 >= OPEN_FILES_WARNING_SHARE * limit as f64).then(|| {
        format!(
            "{open} of its {limit} open files in use: at the limit it accepts no connection; \
             raise the limit (systemd: LimitNOFILE=)"
        )
    })
}

/// A served TLS certificate this close to its expiry makes a gateway degraded.
const TLS_EXPIRY_WARNING_DAYS: f64 = 14.0;

#[derive(Debug, Serialize)]
struct Report {
    health: Health,
    zookeeper: Vec<ZkStatus>,
    orchestrators: Vec<OrchestratorStatus>,
    gateways: Vec<GatewayStatus>,
    size_alerts: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let region = operator::region_if_present(&args.dir)?;
    let (zk, orchestrators, gateways) = targets(&args, region.as_ref());
    let report = operator::runtime()?.block_on(survey(&args, zk, orchestrators, gateways));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serialises")
        );
    } else {
        print!("{}", render(&report, &args));
    }
    Ok(match report.health {
        Health::Ok => ExitCode::SUCCESS,
        Health::Degraded => operator::exit(BAD),
        Health::Unreachable => operator::exit(UNREACHABLE),
    })
}

/// What to ask: region.json's lists, each replaced by its flag; without region.json,
/// what the flags name, or the default local addresses.
fn targets(args: &Args, region: Option<&Region>) -> (Vec<Target>, Vec<Target>, Vec<Target>) {
    let named = |addrs: &[String], url: bool| -> Vec<Target> {
        addrs
            .iter()
            .map(|a| {
                let addr = if url {
                    operator::base_url(a)
                } else {
                    a.clone()
                };
                Target {
                    name: addr.clone(),
                    addr,
                }
            })
            .collect()
    };
    let zk_flag = args.zk.as_deref().map(connect_servers);
    let orch_flag = (!args.orchestrators.is_empty()).then(|| named(&args.orchestrators, true));
    let gw_flag = (!args.gateways.is_empty()).then(|| named(&args.gateways, true));
    match region {
        Some(region) => {
            let zk = zk_flag.unwrap_or_else(|| {
                if region.zookeeper.is_empty() {
                    connect_servers(&region.zk)
                } else {
                    region
                        .zookeeper
                        .iter()
                        .map(|c| Target {
                            name: c.name.clone(),
                            addr: c.url.clone(),
                        })
                        .collect()
                }
            });
            let orchestrators = orch_flag.unwrap_or_else(|| {
                region
                    .orchestrators
                    .iter()
                    .map(|c| Target {
                        name: c.name.clone(),
                        addr: operator::base_url(&c.url),
                    })
                    .collect()
            });
            let gateways = gw_flag.unwrap_or_else(|| {
                region
                    .gateways
                    .iter()
                    .filter_map(|c| {
                        Some(Target {
                            name: c.name.clone(),
                            addr: operator::base_url(c.admin.as_ref()?),
                        })
                    })
                    .collect()
            });
            (zk, orchestrators, gateways)
        }
        None if zk_flag.is_none() && orch_flag.is_none() && gw_flag.is_none() => {
            eprintln!(
                "no {} in {}: checking the default local addresses",
                crate::region::FILE,
                args.dir.display()
            );
            (
                connect_servers("127.0.0.1:2181"),
                named(&["http://127.0.0.1:7000".into()], true),
                named(&["http://127.0.0.1:9080".into()], true),
            )
        }
        None => (
            zk_flag.unwrap_or_default(),
            orch_flag.unwrap_or_default(),
            gw_flag.unwrap_or_default(),
        ),
    }
}

/// The servers of a connect string (`h1:2181,h2:2181/chroot`).
fn connect_servers(connect: &str) -> Vec<Target> {
    let hosts = connect.split('/').next().unwrap_or_default();
    hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| {
            let addr = if h
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                h.to_string()
            } else {
                format!("{h}:2181")
            };
            Target {
                name: addr.clone(),
                addr,
            }
        })
        .collect()
}

async fn survey(
    args: &Args,
    zk: Vec<Target>,
    orchestrators: Vec<Target>,
    gateways: Vec<Target>,
) -> Report {
    let zk = futures::future::join_all(zk.into_iter().map(zk_status));
    let orchestrators = futures::future::join_all(
        orchestrators
            .into_iter()
            .map(|t| orchestrator_status(t, args.timeout)),
    );
    let gateways = futures::future::join_all(
        gateways
            .into_iter()
            .map(|t| gateway_status(t, args.timeout, args.max_staleness)),
    );
    let (zookeeper, orchestrators, gateways) = tokio::join!(zk, orchestrators, gateways);
    let mut size_alerts = Vec::new();
    let alarm = args.jute_maxbuffer as f64 * args.threshold;
    for server in &zookeeper {
        if let Some(size) = server.max_proposal_size.filter(|s| *s as f64 > alarm) {
            size_alerts.push(format!(
                "{}: largest proposal {size} bytes is {:.1}% of jute.maxbuffer ({} bytes)",
                server.name,
                size as f64 * 100.0 / args.jute_maxbuffer as f64,
                args.jute_maxbuffer
            ));
        }
    }
    for orchestrator in &orchestrators {
        if let Some(count) = orchestrator.payloads_over_alert.filter(|c| *c > 0) {
            size_alerts.push(format!(
                "{}: {count} ZooKeeper payloads over the size alert (see `switchyard zk audit`)",
                orchestrator.name
            ));
        }
    }
    let worst = zookeeper
        .iter()
        .map(|s| s.health)
        .chain(orchestrators.iter().map(|o| o.health))
        .chain(gateways.iter().map(|g| g.health))
        .max()
        .unwrap_or(Health::Ok);
    let health = if worst == Health::Ok && !size_alerts.is_empty() {
        Health::Degraded
    } else {
        worst
    };
    Report {
        health,
        zookeeper,
        orchestrators,
        gateways,
        size_alerts,
    }
}

async fn zk_status(target: Target) -> ZkStatus {
    let mut status = ZkStatus {
        name: target.name.clone(),
        addr: target.addr.clone(),
        health: Health::Unreachable,
        mode: None,
        reason: None,
        max_proposal_size: None,
        approximate_data_size: None,
        ephemerals_count: None,
        znode_count: None,
    };
    let addr = target.addr.clone();
    let asked = tokio::task::spawn_blocking(move || -> Result<(String, String), String> {
        let addr: SocketAddr = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to no address"))?;
        let srvr = zkserver::four_letter(addr, "srvr").map_err(|e| e.to_string())?;
        let mntr = zkserver::four_letter(addr, "mntr").unwrap_or_default();
        Ok((srvr, mntr))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let (srvr, mntr) = match asked {
        Ok(answers) => answers,
        Err(why) => {
            status.reason = Some(why);
            return status;
        }
    };
    status.mode = srvr
        .lines()
        .find_map(|l| l.strip_prefix("Mode:"))
        .map(|m| m.trim().to_string());
    let figures = zkserver::parse_mntr(&mntr);
    let figure = |name: &str| figures.get(name).and_then(|v| v.parse::<u64>().ok());
    status.max_proposal_size = figure("zk_max_proposal_size");
    status.approximate_data_size = figure("zk_approximate_data_size");
    status.ephemerals_count = figure("zk_ephemerals_count");
    status.znode_count = figure("zk_znode_count");
    if status.mode.is_some() {
        status.health = Health::Ok;
    } else {
        status.health = Health::Degraded;
        let said = srvr.lines().map(str::trim).find(|l| !l.is_empty());
        status.reason = Some(match said {
            Some(line) => format!("not serving: {line}"),
            None => "not serving (an empty answer to srvr)".into(),
        });
    }
    status
}

async fn get(url: String, timeout: Duration) -> Result<crate::http::Answer, String> {
    crate::http::request("GET", &url, None, &[], Bytes::new(), timeout)
        .await
        .map_err(|e| e.reason)
}

async fn orchestrator_status(target: Target, timeout: Duration) -> OrchestratorStatus {
    let base = &target.addr;
    let (readyz, region, metrics) = tokio::join!(
        get(format!("{base}/readyz"), timeout),
        get(format!("{base}/v1/region"), timeout),
        get(format!("{base}/metrics"), timeout),
    );
    let (mut health, ready, mut reason) = match &readyz {
        Ok(answer) if answer.status == 200 => (Health::Ok, true, None),
        Ok(answer) => (Health::Degraded, false, Some(operator::reason(answer))),
        Err(why) => (Health::Unreachable, false, Some(why.clone())),
    };
    let metrics = metrics
        .ok()
        .filter(|a| a.status == 200)
        .map(|a| String::from_utf8_lossy(&a.body).into_owned());
    let whole = |name| Some(metric(metrics.as_deref()?, name)? as u64);
    let (open_files, open_files_limit) = (
        whole(orchestrator::metrics::OPEN_FDS),
        whole(orchestrator::metrics::MAX_FDS),
    );
    if let Some(problem) = open_files_problem(open_files, open_files_limit) {
        if health == Health::Ok {
            (health, reason) = (Health::Degraded, Some(problem));
        }
    }
    let region = region
        .ok()
        .filter(|a| a.status == 200)
        .and_then(|a| serde_json::from_slice::<RegionView>(&a.body).ok());
    // Absent until the first payload over the alert: then it is zero.
    let payloads_over_alert = metrics
        .as_deref()
        .map(|text| metric(text, coord::metrics::ZK_PAYLOADS_OVER_ALERT).unwrap_or(0.0) as u64);
    OrchestratorStatus {
        name: target.name,
        url: target.addr,
        health,
        ready,
        reason,
        region,
        payloads_over_alert,
        open_files,
        open_files_limit,
    }
}

async fn gateway_status(
    target: Target,
    timeout: Duration,
    max_staleness: Duration,
) -> GatewayStatus {
    use gateway::metrics as m;
    let base = &target.addr;
    let (readyz, metrics) = tokio::join!(
        get(format!("{base}/readyz"), timeout),
        get(format!("{base}/metrics"), timeout),
    );
    let mut status = GatewayStatus {
        name: target.name.clone(),
        admin: target.addr.clone(),
        health: Health::Ok,
        ready: false,
        reason: None,
        routes: None,
        table_version: None,
        staleness_seconds: None,
        held_updates: None,
        held_update_removed_routes: None,
        tls_certificates: None,
        tls_days_left: None,
        open_files: None,
        open_files_limit: None,
        connections: None,
        connections_limit: None,
        snapshot_version: None,
        snapshot_unsaved_seconds: None,
        snapshot_write_errors: None,
        state_folder_held: None,
    };
    match &readyz {
        Ok(answer) if answer.status == 200 => {
            status.ready = true;
            if let Ok(body) = answer.json() {
                status.routes = body["routes"].as_u64();
                status.table_version = body["table_version"].as_u64();
                status.staleness_seconds = body["staleness_seconds"].as_f64();
            }
        }
        Ok(answer) => {
            status.health = Health::Degraded;
            status.reason = Some(operator::reason(answer));
        }
        Err(why) => {
            status.health = Health::Unreachable;
            status.reason = Some(why.clone());
            return status;
        }
    }
    if let Some(answer) = metrics.ok().filter(|a| a.status == 200) {
        let text = String::from_utf8_lossy(&answer.body);
        let whole = |name| metric(&text, name).map(|v| v as u64);
        status.routes = status.routes.or(whole(m::ROUTES));
        status.table_version = status.table_version.or(whole(m::TABLE_VERSION));
        status.staleness_seconds = status.staleness_seconds.or(metric(&text, m::STALENESS));
        status.held_updates = whole(m::HELD_UPDATES);
        status.held_update_removed_routes = whole(m::HELD_REMOVED);
        status.tls_certificates = whole(m::TLS_CERTIFICATES);
        status.open_files = whole(m::OPEN_FDS);
        status.open_files_limit = whole(m::MAX_FDS);
        status.connections = whole(gateway::proxy::metrics::CONNECTIONS_OPEN);
        status.connections_limit = whole(gateway::proxy::metrics::CONNECTIONS_MAX);
        status.snapshot_version = whole(m::SNAPSHOT_VERSION);
        status.snapshot_unsaved_seconds = metric(&text, m::SNAPSHOT_UNSAVED);
        status.snapshot_write_errors = whole(m::SNAPSHOT_WRITE_ERRORS);
        status.state_folder_held = metric(&text, m::STATE_FOLDER_HELD).map(|held| held > 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        status.tls_days_left =
            metric(&text, m::TLS_EARLIEST_EXPIRY).map(|expiry| (expiry - now) / 86_400.0);
    }
    let problems = gateway_problems(&status, max_staleness);
    if !problems.is_empty() && status.health == Health::Ok {
        status.health = Health::Degraded;
        status.reason = Some(problems.join("; "));
    }
    status
}

/// What is wrong with a gateway that answers.
fn gateway_problems(status: &GatewayStatus, max_staleness: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(days) = status
        .tls_days_left
        .filter(|days| *days < TLS_EXPIRY_WARNING_DAYS)
    {
        problems.push(if days <= 0.0 {
            format!(
                "a TLS certificate it serves EXPIRED {:.0} days ago: renew it, then kill -HUP the gateway",
                -days
            )
        } else {
            format!(
                "a TLS certificate it serves expires in {days:.1} days: renew it, then kill -HUP the gateway"
            )
        });
    }
    problems.extend(open_files_problem(
        status.open_files,
        status.open_files_limit,
    ));
    if let (Some(open), Some(limit)) = (status.connections, status.connections_limit) {
        if open as f64 >= OPEN_FILES_WARNING_SHARE * limit as f64 {
            problems.push(format!(
                "{open} of its {limit} connections in use: at the limit new ones wait to be \
                 accepted; raise --max-connections (and the open-files limit with it)"
            ));
        }
    }
    if let Some(held) = status.held_updates.filter(|h| *h > 0) {
        problems.push(format!(
            "{held} route table update held (it would remove {} routes): see GET /admin/held, then POST /admin/confirm",
            status.held_update_removed_routes.unwrap_or(0)
        ));
    }
    if let Some(unsaved) = status
        .snapshot_unsaved_seconds
        .filter(|s| *s > UNSAVED_WARNING_SECS)
    {
        let why = if status.state_folder_held == Some(false) {
            "another process holds its state folder (gateway.lock): two gateways given one \
             --state-dir?"
                .to_string()
        } else {
            format!(
                "{} snapshot writes failed: see its log (disk full? permissions?)",
                status.snapshot_write_errors.unwrap_or(0)
            )
        };
        let versions = match (status.snapshot_version, status.table_version) {
            (Some(disk), Some(served)) => format!(" (version {disk} on disk, {served} served)"),
            _ => String::new(),
        };
        problems.push(format!(
            "its table has waited {unsaved:.0} s to be written to disk; {why}. A restart now \
             would serve the older table on disk{versions}"
        ));
    }
    if let Some(stale) = status
        .staleness_seconds
        .filter(|s| *s > max_staleness.as_secs_f64())
    {
        problems.push(format!(
            "its table is {stale:.0} s stale (over --max-staleness {max_staleness:?})"
        ));
    }
    problems
}

/// The sum of a metric's series in Prometheus text (`name value` or
/// `name{labels} value`); `None` when it has none.
fn metric(text: &str, name: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.rsplit_once('}').map(|(_, v)| v)
        } else if rest.starts_with(' ') {
            Some(rest)
        } else {
            None // another metric whose name starts with this one
        };
        if let Some(value) = value.and_then(|v| v.split_whitespace().next()) {
            if let Ok(value) = value.parse::<f64>() {
                *sum.get_or_insert(0.0) += value;
            }
        }
    }
    sum
}

fn label(name: &str, addr: &str) -> String {
    if name == addr {
        addr.to_string()
    } else {
        format!("{name} ({addr})")
    }
}

fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// `3 routes`, or `? routes` when the figure is missing.
fn counted(value: Option<u64>, word: &str) -> String {
    match value {
        Some(n) => operator::count(n, word),
        None => format!("? {word}s"),
    }
}

/// The human report.
fn render(report: &Report, args: &Args) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "ZooKeeper");
    if report.zookeeper.is_empty() {
        let _ = writeln!(out, "  (none checked)");
    }
    for s in &report.zookeeper {
        let who = label(&s.name, &s.addr);
        match (&s.mode, s.health) {
            (Some(mode), _) => {
                let proposal = s.max_proposal_size.map_or("none".into(), |p| {
                    format!(
                        "{p} B ({:.1}% of jute.maxbuffer)",
                        p as f64 * 100.0 / args.jute_maxbuffer as f64
                    )
                });
                let _ = writeln!(
                    out,
                    "  {who}  {mode}  data {} B, {}, {}, largest proposal {proposal}",
                    optional(s.approximate_data_size),
                    counted(s.znode_count, "znode"),
                    counted(s.ephemerals_count, "ephemeral"),
                );
            }
            (None, Health::Unreachable) => {
                let _ = writeln!(out, "  {who}  UNREACHABLE: {}", optional(s.reason.as_ref()));
            }
            (None, _) => {
                let _ = writeln!(out, "  {who}  DEGRADED: {}", optional(s.reason.as_ref()));
            }
        }
    }
    let _ = writeln!(out, "Orchestrators");
    if report.orchestrators.is_empty() {
        let _ = writeln!(out, "  (none checked)");
    }
    for o in &report.orchestrators {
        let who = label(&o.name, &o.url);
        let state = match o.health {
            Health::Ok => "ready".to_string(),
            Health::Degraded => format!("NOT READY: {}", optional(o.reason.as_ref())),
            Health::Unreachable => format!("UNREACHABLE: {}", optional(o.reason.as_ref())),
        };
        let _ = writeln!(out, "  {who}  {state}");
        if let Some(r) = &o.region {
            let owners: Vec<String> = r.owners.iter().map(|(m, n)| format!("{m} {n}")).collect();
            let _ = writeln!(
                out,
                "    member {} of [{}]; shards owned: {}; unowned {} of {}",
                r.member,
                r.members.join(", "),
                if owners.is_empty() {
                    "none".into()
                } else {
                    owners.join(", ")
                },
                r.unowned,
                r.shards,
            );
            let _ = writeln!(
                out,
                "    {}; route version {}, {}; {} over the size alert",
                operator::count(r.apps, "app"),
                r.route_version,
                operator::count(r.route_subscribers, "subscriber"),
                counted(o.payloads_over_alert, "ZooKeeper payload"),
            );
        }
    }
    let _ = writeln!(out, "Gateways");
    if report.gateways.is_empty() {
        let _ = writeln!(out, "  (none checked)");
    }
    for g in &report.gateways {
        let who = label(&g.name, &g.admin);
        let state = match (g.health, g.ready) {
            (Health::Ok, _) => "ready".to_string(),
            (Health::Degraded, true) => format!("DEGRADED: {}", optional(g.reason.as_ref())),
            (Health::Degraded, false) => format!("NOT READY: {}", optional(g.reason.as_ref())),
            (Health::Unreachable, _) => format!("UNREACHABLE: {}", optional(g.reason.as_ref())),
        };
        let _ = writeln!(out, "  {who}  {state}");
        if g.health != Health::Unreachable {
            let _ = writeln!(
                out,
                "    {}; table version {}; {} s stale; {}",
                counted(g.routes, "route"),
                optional(g.table_version),
                g.staleness_seconds
                    .map_or("?".into(), |s| format!("{s:.1}")),
                match g.held_updates {
                    Some(0) => "no held update".to_string(),
                    held => counted(held, "held update"),
                },
            );
            if let (Some(open), Some(limit)) = (g.connections, g.connections_limit) {
                let _ = writeln!(
                    out,
                    "    connections: {open} of {limit}; open files: {} of {}",
                    optional(g.open_files),
                    optional(g.open_files_limit),
                );
            }
            if let Some(files) = g.tls_certificates {
                let _ = writeln!(
                    out,
                    "    TLS: {}; the first expires in {} days",
                    counted(Some(files), "certificate"),
                    g.tls_days_left.map_or("?".into(), |d| format!("{d:.0}")),
                );
            }
        }
    }
    let _ = writeln!(out, "Size alerts");
    if report.size_alerts.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for alert in &report.size_alerts {
        let _ = writeln!(out, "  {alert}");
    }
    let verdict = match report.health {
        Health::Ok => "ok",
        Health::Degraded => "DEGRADED",
        Health::Unreachable => "UNREACHABLE (some component did not answer)",
    };
    let _ = writeln!(out, "Region: {verdict}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_their_series() {
        let text = "\
# TYPE switchyard_zk_payloads_over_alert_total counter
switchyard_zk_payloads_over_alert_total{op=\"write\"} 2
switchyard_zk_payloads_over_alert_total{op=\"read\"} 3
switchyard_gateway_routes 12
switchyard_gateway_routes_extra 99
";
        assert_eq!(
            metric(text, "switchyard_zk_payloads_over_alert_total"),
            Some(5.0)
        );
        assert_eq!(metric(text, "switchyard_gateway_routes"), Some(12.0));
        assert_eq!(metric(text, "switchyard_gateway_domains"), None);
    }

    #[test]
    fn connect_strings_name_their_servers() {
        let addrs: Vec<String> = connect_servers("a:1, b ,c:3/chroot")
            .into_iter()
            .map(|t| t.addr)
            .collect();
        assert_eq!(addrs, ["a:1", "b:2181", "c:3"]);
    }

    #[test]
    fn a_daemon_is_flagged_from_80_percent_of_its_open_files_limit() {
        assert_eq!(open_files_problem(Some(799), Some(1000)), None);
        let problem = open_files_problem(Some(800), Some(1000)).unwrap();
        assert!(
            problem.starts_with("800 of its 1000 open files in use"),
            "{problem}"
        );
        assert!(problem.contains("LimitNOFILE="), "{problem}");
        // A daemon that does not report both figures is not judged on them.
        assert_eq!(open_files_problem(Some(5000), None), None);
        assert_eq!(open_files_problem(None, Some(10)), None);
    }

    /// A gateway with nothing wrong.
    fn healthy_gateway() -> GatewayStatus {
        GatewayStatus {
            name: "gateway-1".into(),
            admin: "http://127.0.0.1:9080".into(),
            health: Health::Ok,
            ready: true,
            reason: None,
            routes: Some(3),
            table_version: Some(7),
            staleness_seconds: Some(1.0),
            held_updates: Some(0),
            held_update_removed_routes: Some(0),
            tls_certificates: None,
            tls_days_left: None,
            open_files: Some(100),
            open_files_limit: Some(1024),
            connections: Some(10),
            connections_limit: Some(480),
            snapshot_version: Some(7),
            snapshot_unsaved_seconds: Some(0.0),
            snapshot_write_errors: Some(0),
            state_folder_held: Some(true),
        }
    }

    #[test]
    fn a_gateway_near_certificate_expiry_or_its_open_files_or_connection_limit_is_degraded() {
        let status = |days: Option<f64>| GatewayStatus {
            tls_certificates: days.map(|_| 2),
            tls_days_left: days,
            ..healthy_gateway()
        };
        let stale = Duration::from_secs(60);
        assert!(gateway_problems(&status(None), stale).is_empty());
        assert!(gateway_problems(&status(Some(30.0)), stale).is_empty());
        let soon = gateway_problems(&status(Some(3.5)), stale);
        assert_eq!(soon.len(), 1);
        assert!(soon[0].contains("expires in 3.5 days"), "{soon:?}");
        let expired = gateway_problems(&status(Some(-2.0)), stale);
        assert!(expired[0].contains("EXPIRED 2 days ago"), "{expired:?}");

        // Near its open-files limit.
        let near = |open: u64| GatewayStatus {
            open_files: Some(open),
            ..status(None)
        };
        assert!(gateway_problems(&near(818), stale).is_empty());
        let problems = gateway_problems(&near(820), stale);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("820 of its 1024 open files in use"),
            "{problems:?}"
        );

        // Near its connection limit.
        let busy = |connections: u64| GatewayStatus {
            connections: Some(connections),
            ..status(None)
        };
        assert!(gateway_problems(&busy(383), stale).is_empty());
        let problems = gateway_problems(&busy(384), stale);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("384 of its 480 connections in use"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_gateway_whose_table_waits_to_be_saved_is_degraded_with_the_reason() {
        let status = |unsaved: f64, held: bool, errors: u64| GatewayStatus {
            table_version: Some(9),
            snapshot_unsaved_seconds: Some(unsaved),
            snapshot_write_errors: Some(errors),
            state_folder_held: Some(held),
            ..healthy_gateway()
        };
        let stale = Duration::from_secs(600);
        // Writes are coalesced, and a restart waits for the old gateway's lock: a short
        // wait is normal.
        assert!(gateway_problems(&status(30.0, false, 0), stale).is_empty());
        let failing = gateway_problems(&status(61.0, true, 12), stale);
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert!(
            failing[0].starts_with(
                "its table has waited 61 s to be written to disk; 12 snapshot writes failed"
            ),
            "{failing:?}"
        );
        assert!(
            failing[0].ends_with("(version 7 on disk, 9 served)"),
            "{failing:?}"
        );
        let locked_out = gateway_problems(&status(300.0, false, 0), stale);
        assert!(
            locked_out[0].contains("another process holds its state folder"),
            "{locked_out:?}"
        );
    }
}
