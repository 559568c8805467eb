//! `switchyard bench`: measured comparisons of Switchyard's parts with their peers,
//! run side by side on one machine. Each benchmark prints its results; it writes no file.

mod client;
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
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Zk(args) => zk::run(args),
        Command::ZkClient(args) => client::run(args),
    }
}
