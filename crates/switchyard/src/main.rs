//! `switchyard`: one binary for every role of a region. This crate only parses the
//! command line, starts logging and hands over to a library; it alone knows clap and
//! exit codes.

mod cmd;
mod http;
mod open_files;
mod region;

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
    /// Restart the local region one process at a time, in a safe order, with readiness gates.
    Upgrade(cmd::upgrade::Args),
    /// A tiny HTTP server that answers with its own name (the demo apps' backends).
    DemoBackend(cmd::demo_backend::Args),
    /// Run an orchestrator: the app registry, shard owner and route server.
    Orchestrator(cmd::orchestrator::Args),
    /// Measure Switchyard's parts against their peers, side by side on this machine.
    Bench(cmd::bench::Args),
    /// Run a gateway: the HTTP edge, serving its last-known-good table from disk.
    Gateway(cmd::gateway::Args),
    /// Create, show, list, delete and bulk-import apps through an orchestrator's API.
    App(cmd::app::Args),
    /// The region at a glance: ZooKeeper, orchestrators, gateways and size alerts.
    Status(cmd::status::Args),
    /// Wait until URLs answer 200 on /readyz (for systemd's ExecStartPre and scripts).
    WaitReady(cmd::wait_ready::Args),
    /// ZooKeeper tools: `zk audit` measures node sizes against jute.maxbuffer.
    Zk(cmd::zk::Args),
}

fn main() -> ExitCode {
    // The matches are kept: a config file's values yield to flags given explicitly.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    // Operator commands print their own output; their logs only say what went wrong.
    let operator = matches!(
        cli.command,
        Command::App(_) | Command::Status(_) | Command::WaitReady(_) | Command::Zk(_)
    );
    let default_log = if operator { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Up(args) => cmd::up::run(args),
        Command::Upgrade(args) => cmd::upgrade::run(args),
        Command::DemoBackend(args) => cmd::demo_backend::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::App(args) => cmd::app::run(args),
        Command::Status(args) => cmd::status::run(args),
        Command::WaitReady(args) => cmd::wait_ready::run(args),
        Command::Zk(args) => cmd::zk::run(args),
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
