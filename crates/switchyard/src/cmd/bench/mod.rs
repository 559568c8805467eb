//! `switchyard bench`: measured comparisons of Switchyard's parts with their peers,
//! run side by side on one machine. Each benchmark prints its results; it writes no file.

mod client;
mod gateway;
mod gateway_load;
mod gateway_peers;
mod gateway_report;
mod orchestrator;
mod peers;
mod report;
mod zk;

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Compare the ZooKeeper layer (`coord`) with the official Java client and Kazoo:
    /// N ephemeral creates and N reads each, against a fresh standalone server per run.
    Zk(zk::Args),
    /// One client run of `bench zk`, re-executed as a child process (internal).
    #[command(hide = true)]
    ZkClient(client::Args),
    /// Compare the gateway with nginx and HAProxy as reverse proxies behind one backend:
    /// requests/s and p99 under wrk and at a fixed rate, then with a million routes.
    Gateway(gateway::Args),
    /// An orchestrator with a million apps against the targets: import time, start to
    /// /readyz, memory when ready, write-to-delta latency, full snapshot size.
    Orchestrator(orchestrator::Args),
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Zk(args) => zk::run(args),
        Command::ZkClient(args) => client::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Orchestrator(args) => orchestrator::run(args),
    }
}
