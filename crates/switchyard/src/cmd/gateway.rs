//! `switchyard gateway`: runs one gateway (`gateway::run`) until SIGTERM or SIGINT, then
//! drains it and writes its table to disk.

use std::process::ExitCode;

use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Worker threads of the async runtime [default: one per core].
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all().thread_name("gateway");
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.into());
    }
    let runtime = runtime.build().context("starting the async runtime")?;
    runtime
        .block_on(gateway::run(config, super::shutdown_signal()))
        .context("running the gateway")?;
    Ok(ExitCode::SUCCESS)
}
