//! `switchyard orchestrator`: runs an orchestrator until SIGTERM or Ctrl-C, then
//! releases its shards at once and exits.

use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::ArgMatches;
use orchestrator::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: Config,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
}

/// Settings from `--config FILE`, overridden by flags and environment variables that
/// were actually given.
fn merge(cli: Config, matches: Option<&ArgMatches>) -> anyhow::Result<Config> {
    let Some(path) = cli.config.clone() else {
        return Ok(cli);
    };
    let mut config = Config::from_toml_file(&path)?;
    let given = |id: &str| {
        matches
            .and_then(|m| m.value_source(id))
            .is_some_and(|source| {
                matches!(source, ValueSource::CommandLine | ValueSource::EnvVariable)
            })
    };
    macro_rules! take {
        ($($field:ident),* $(,)?) => {
            $( if given(stringify!($field)) { config.$field = cli.$field.clone(); } )*
        };
    }
    take!(
        zk,
        region,
        member_id,
        listen,
        token_file,
        token,
        shards,
        session_timeout,
        zk_window,
        jute_maxbuffer,
        health_interval,
        health_timeout,
        health_down_after,
        health_up_after,
        max_body_bytes,
        max_import_bytes,
    );
    config.config = Some(path);
    Ok(config)
}

pub fn run(args: Args, matches: Option<&ArgMatches>) -> anyhow::Result<ExitCode> {
    let config = merge(args.config, matches)?;
    config.validate().context("invalid orchestrator settings")?;
    super::raise_open_files_limit(
        "each gateway's route stream, each admin client and ZooKeeper take one",
    );
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers.max(1));
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        orchestrator::run(config, super::shutdown_signal())
            .await
            .context("orchestrator failed")
    })?;
    // Everything is released and the session closed: exit now rather than spend
    // seconds freeing a million apps' worth of memory.
    std::process::exit(0)
}
