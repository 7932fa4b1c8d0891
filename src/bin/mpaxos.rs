//! The `mpaxos` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mpaxos",
    version,
    about = "Thread-per-core Multi-Paxos replicated store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check this host (`check disk`: what a durable WAL commit costs here).
    #[command(subcommand)]
    Check(mpaxos::wal::cli::CheckCommand),
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check(c) => mpaxos::wal::cli::run_check(c),
    }
}
