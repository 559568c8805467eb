//! `switchyard gateway`: runs one gateway (`gateway::run`) until SIGTERM or SIGINT, then
//! drains it and writes its table to disk.

use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Threads that serve requests [default: one per core]. Each is a single-threaded
    /// runtime of its own accepting from the shared listener; the control side (admin
    /// API, route stream, snapshots) runs on one more, so that its work does not stall
    /// the proxy's event loop.
    #[arg(long, env = "SWITCHYARD_GATEWAY_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,

    #[command(flatten)]
    config: gateway::Config,
}

/// `matches`: the subcommand's parsed arguments, which say which settings were given as
/// flags or environment variables (they override the `--config` file).
pub fn run(args: Args, matches: Option<&clap::ArgMatches>) -> anyhow::Result<ExitCode> {
    let config = match matches {
        Some(matches) => gateway::Config::from_matches(matches)?,
        None => args.config,
    };
    config.validate()?;
    let workers = match args.workers {
        Some(workers) => usize::from(workers),
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    super::raise_open_files_limit(
        "a proxied connection takes two (the client's and its backend's), so about half \
         as many fit",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("gateway")
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(async {
            gateway::Gateway::start(config)
                .await?
                .with_proxy_threads(workers)
                .keep_table_at_exit()
                .serve(super::shutdown_signal())
                .await
        })
        .context("running the gateway")?;
    Ok(ExitCode::SUCCESS)
}
