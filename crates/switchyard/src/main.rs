//! `switchyard`: one binary for every role of a region. This crate only parses the
//! command line, starts logging and hands over to a library; it alone knows clap and
//! exit codes.

mod cmd;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Switchyard: the routing control plane and edge of a PaaS region.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole local region on this machine until Ctrl-C.
    Up(cmd::up::Args),
    /// Run an orchestrator: the app registry, shard owner and route server.
    Orchestrator(cmd::orchestrator::Args),
    /// Measure Switchyard's parts against their peers, side by side on this machine.
    Bench(cmd::bench::Args),
    /// Run a gateway: the HTTP edge, serving its last-known-good table from disk.
    Gateway(cmd::gateway::Args),
}

fn main() -> ExitCode {
    // The matches are kept: a config file's values yield to flags given explicitly.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Up(args) => cmd::up::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Gateway(args) => cmd::gateway::run(args, matches.subcommand_matches("gateway")),
        Command::Orchestrator(args) => {
            cmd::orchestrator::run(args, matches.subcommand_matches("orchestrator"))
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
