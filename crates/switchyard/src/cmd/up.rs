//! `switchyard up`: a whole local region on this machine, supervised until Ctrl-C.
//!
//! Today the region is its ZooKeeper ensemble; orchestrators, gateways and demo
//! backends join it as they are built. State lives in one folder, reused by the next
//! `up`, so a restart keeps the region's data.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use zkserver::{Config, Ensemble, Ports};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder that keeps the region's state between runs.
    #[arg(long, default_value = ".switchyard", env = "SWITCHYARD_DIR")]
    dir: PathBuf,
    /// Number of ZooKeeper servers (1 for a standalone server, 3 or 5 for a quorum).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=7))]
    zk_servers: u32,
    /// Client port of the first ZooKeeper server; the others take the next ones.
    #[arg(long, default_value_t = 2181)]
    zk_port: u16,
    /// Quorum port of the first server; election ports start 1000 above it.
    #[arg(long, default_value_t = 2888)]
    zk_peer_port: u16,
    /// JVM heap limit of each ZooKeeper server, in MiB.
    #[arg(long, default_value_t = 512)]
    zk_heap_mib: u32,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(election) = args.zk_peer_port.checked_add(1000) else {
        anyhow::bail!(
            "--zk-peer-port {} leaves no room for election ports 1000 above it",
            args.zk_peer_port
        );
    };
    let mut config = Config::ensemble(args.dir.join("zookeeper"), args.zk_servers);
    config.ports = Ports::Fixed {
        client: args.zk_port,
        quorum: args.zk_peer_port,
        election,
    };
    config.heap_mib = args.zk_heap_mib;
    config.tick_time = Duration::from_millis(2000);

    eprintln!(
        "starting a local region in {} ({} ZooKeeper server{})",
        args.dir.display(),
        args.zk_servers,
        if args.zk_servers == 1 { "" } else { "s" }
    );
    let mut ensemble = Ensemble::start(&config).context("starting ZooKeeper")?;
    print_table(&mut ensemble);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(supervise(&mut ensemble))?;
    eprintln!("stopping");
    ensemble.stop().context("stopping ZooKeeper")?;
    eprintln!("stopped; state kept in {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

fn print_table(ensemble: &mut Ensemble) {
    println!();
    println!(
        "{:<14} {:<11} {:<18} {:<8} LOG",
        "COMPONENT", "ROLE", "ADDRESS", "PID"
    );
    for server in ensemble.servers_mut() {
        let role = server.mode().map_or("-", |m| m.as_str());
        let pid = server.pid().map_or("-".to_string(), |p| p.to_string());
        println!(
            "{:<14} {:<11} {:<18} {:<8} {}",
            format!("zookeeper-{}", server.id()),
            role,
            server.client_addr().to_string(),
            pid,
            server.log_path().display()
        );
    }
    println!();
    println!("ZooKeeper connect string: {}", ensemble.connect_string());
    println!("Press Ctrl-C to stop.");
}

/// Restarts any server that dies, with a growing delay, until Ctrl-C or SIGTERM.
async fn supervise(ensemble: &mut Ensemble) -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut backoff = vec![Duration::ZERO; ensemble.servers().len()];
    let mut next_try = vec![tokio::time::Instant::now(); ensemble.servers().len()];
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        for (i, server) in ensemble.servers_mut().iter_mut().enumerate() {
            if server.is_running() {
                continue;
            }
            if now < next_try[i] {
                continue;
            }
            tracing::warn!(server = server.id(), log = %server.log_path().display(), "ZooKeeper server is not running; restarting it");
            if let Err(err) = server.start() {
                tracing::error!(server = server.id(), %err, "cannot restart ZooKeeper server");
            }
            backoff[i] = (backoff[i] * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            next_try[i] = now + backoff[i];
        }
    }
}
