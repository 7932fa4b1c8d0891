//! The `mpaxos check disk` subcommand: clap arguments and the handler. The binary only wires
//! [`CheckCommand`] in as `Check`.

use std::path::PathBuf;
use std::process::ExitCode;

use super::backend::BackendChoice;
use super::check_disk::{self, DiskOptions};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum CheckCommand {
    /// Measure the disk for the WAL: the durable-write floor and group-commit latency and
    /// throughput (like `etcdctl check perf`).
    Disk(DiskArgs),
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DiskArgs {
    /// Directory on the disk to measure (a scratch directory is made in it and removed).
    #[arg(long)]
    pub dir: PathBuf,
    /// Output format.
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = OutputFormat::Table)]
    pub write_out: OutputFormat,
    /// WAL backend: auto, uring, sync or memory.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Measured writes per configuration.
    #[arg(long, default_value_t = 200)]
    pub iterations: u32,
    /// Also measure the uring and sync backends side by side.
    #[arg(long)]
    pub all_backends: bool,
    /// Also time the floor's write from this many writers at once (each its own file), as the
    /// replicas of a one-host cluster write one disk for every batch: 3 for a local 3-replica
    /// cluster. 1: only the single writer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub writers: u32,
}

/// Runs a `check` subcommand; errors are printed as one sentence.
pub fn run_check(cmd: CheckCommand) -> ExitCode {
    match cmd {
        CheckCommand::Disk(a) => {
            let opts = DiskOptions {
                backend: a.backend,
                iterations: a.iterations.max(1),
                all_backends: a.all_backends,
                writers: a.writers as usize,
            };
            match check_disk::run(&a.dir, &opts) {
                Ok(r) => {
                    match a.write_out {
                        OutputFormat::Json => println!(
                            "{}",
                            serde_json::to_string_pretty(&r).expect("report serializes")
                        ),
                        OutputFormat::Table => print!("{}", check_disk::render_table(&r)),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mpaxos check disk: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
