//! The one `mpaxos` binary: every subcommand of the project.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use mpaxos::protocol::InjectedBug;
use mpaxos::sim::{self, SeedRange, SimOutcome};

#[derive(Parser)]
#[command(
    name = "mpaxos",
    version,
    about = "Thread-per-core Multi-Paxos config store, simulator and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the deterministic fault-injecting simulator over a range of seeds.
    Sim(SimArgs),
    /// Check this host (`check disk`: what a durable WAL commit costs here).
    #[command(subcommand)]
    Check(mpaxos::wal::cli::CheckCommand),
    /// Run one replica of a cluster described by a config file.
    Server {
        /// The cluster's TOML config (shared by every replica).
        #[arg(long)]
        config: std::path::PathBuf,
        /// This replica's id in the config.
        #[arg(long)]
        id: u32,
    },
    /// Run a local cluster on loopback in the foreground (Ctrl-C stops it).
    Cluster(mpaxos::server::local::ClusterArgs),
    /// Jepsen-style tests: real replicas under kill -9 and SIGSTOP, histories checked for
    /// linearizability and lost writes.
    Chaos(mpaxos::chaos::ChaosArgs),
    /// Benchmark a cluster (a local 3-replica one by default); `bench compare A B` diffs runs.
    Bench(Box<BenchCmd>),
    /// Run a benchmark suite: a matrix of runs with a combined report and plots.
    Suite(mpaxos::bench::suite::SuiteArgs),
    /// Side by side with a 3-member etcd started here (build with --features etcd).
    #[cfg(feature = "etcd")]
    CompareEtcd(mpaxos::bench::compare_etcd::CompareEtcdArgs),
    /// Snapshots of a live cluster: `snapshot save FILE`, `snapshot status FILE`; restore one
    /// with `mpaxos cluster --from-snapshot FILE`.
    #[command(subcommand)]
    Snapshot(mpaxos::server::snapshot_file::SnapshotCommand),
    #[command(flatten)]
    Store(mpaxos::client::cli::StoreCommand),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchCmd {
    #[command(subcommand)]
    sub: Option<BenchSub>,
    #[command(flatten)]
    args: mpaxos::bench::BenchArgs,
}

#[derive(Subcommand)]
enum BenchSub {
    /// Throughput and percentile deltas between two run or suite directories.
    Compare(mpaxos::bench::compare::CompareArgs),
    /// Redraw a `--timeline` run's latency over time with events marked, and measure the
    /// write stall around each one.
    Timeline(mpaxos::bench::timeline::TimelineArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// Replicas per simulated cluster (3, 5 or 7 are the interesting ones).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// How many seeds to run, starting at --seed.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Deliberately break the protocol to show the checks catch it.
    #[arg(long, value_parser = bug_parser())]
    inject_bug: Option<InjectedBug>,
    /// Run every seed with quorum leases (and Multi-Paxos), instead of 40 % of them.
    #[arg(long)]
    quorum_leases: bool,
    /// Run every seed with this protocol, instead of Fast Paxos in a quarter of them (derived
    /// from the seed). An injected bug and --quorum-leases decide for themselves.
    #[arg(long, value_enum)]
    protocol: Option<mpaxos::protocol::ProtocolMode>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print each seed's statistics and trace hash.
    #[arg(long)]
    verbose: bool,
    /// Write every event of each seed to FILE ("-": standard output), a line each in the
    /// order the simulator handles them: simulated time, then the message delivered, disk
    /// write completed, crash, partition, client request or timer, and violations as they are
    /// found. Seeds then run one at a time. Meant for one seed: the replay line a failing seed
    /// prints, plus `--event-log FILE`.
    #[arg(long, value_name = "FILE")]
    event_log: Option<std::path::PathBuf>,
}

fn bug_parser() -> impl clap::builder::TypedValueParser<Value = InjectedBug> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(InjectedBug::ALL.map(|b| b.name()))
        .map(|name| InjectedBug::from_name(&name).expect("a listed name"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => {
            restore_sigpipe(); // `--event-log - | head` ends quietly
            run_sim(args)
        }
        Command::Check(command) => mpaxos::wal::cli::run_check(command),
        Command::Server { config, id } => mpaxos::server::run(&config, id),
        Command::Cluster(args) => mpaxos::server::local::run_cluster(args),
        Command::Snapshot(cmd) => mpaxos::server::snapshot_file::run(cmd),
        Command::Chaos(args) => mpaxos::chaos::run_chaos(args),
        Command::Store(cmd) => {
            restore_sigpipe();
            mpaxos::client::cli::run(cmd)
        }
        Command::Bench(b) => match b.sub {
            Some(BenchSub::Compare(args)) => mpaxos::bench::compare::run_compare(args),
            Some(BenchSub::Timeline(args)) => mpaxos::bench::timeline::run_timeline(args),
            None => mpaxos::bench::run_bench(b.args),
        },
        Command::Suite(args) => mpaxos::bench::suite::run_suite(args),
        #[cfg(feature = "etcd")]
        Command::CompareEtcd(args) => mpaxos::bench::compare_etcd::run(args),
    }
}

/// Store commands and `sim` print and exit: let `mpaxos status | head` (or `mpaxos sim
/// --event-log - | head`) end quietly on a closed pipe instead of panicking. (Servers keep
/// Rust's default of ignoring SIGPIPE, so a client that vanishes is a write error, never a
/// dead replica.)
fn restore_sigpipe() {
    // SAFETY: resetting a signal disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run_sim(args: SimArgs) -> ExitCode {
    if args.replicas == 0 || args.replicas > 9 {
        eprintln!(
            "error: --replicas must be between 1 and 9, got {}",
            args.replicas
        );
        return ExitCode::from(2);
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let range = SeedRange {
        replicas: args.replicas,
        first_seed: args.seed,
        seeds: args.seeds,
        inject_bug: args.inject_bug,
        quorum_leases: args.quorum_leases,
        protocol: args.protocol,
        jobs,
    };
    let started = Instant::now();
    let verbose = args.verbose || args.event_log.is_some();
    // Where each seed's event log goes: standard output, or one file for all of them.
    let event_log: Option<Option<std::fs::File>> = match args.event_log.as_deref() {
        None => None,
        Some(p) if p == std::path::Path::new("-") => Some(None),
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Some(Some(f)),
            Err(e) => {
                eprintln!("error: cannot create the event log {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let log_writer = |file: &Option<std::fs::File>| -> std::io::Result<Box<dyn std::io::Write>> {
        Ok(match file {
            None => Box::new(std::io::stdout()),
            Some(f) => Box::new(std::io::BufWriter::new(f.try_clone()?)),
        })
    };
    let replay_range = range.clone();
    let report = move |outcome: &SimOutcome| {
        for violation in &outcome.violations {
            eprintln!(
                "seed {} violation [{}]: {}",
                outcome.seed, violation.check, violation.detail
            );
        }
        let replay = sim::replay_command(&replay_range, outcome.seed);
        eprintln!("  replay: {replay}");
        eprintln!(
            "  its events, a line each: {replay} --event-log seed-{}.log",
            outcome.seed
        );
        if verbose {
            eprintln!(
                "  stats: {:?} trace={:016x}",
                outcome.stats, outcome.trace_hash
            );
        }
    };
    let summary = if verbose {
        // One at a time, so every seed's line can be printed.
        let mut total = sim::RangeSummary::default();
        for seed in range.first_seed..range.first_seed + range.seeds {
            let cfg = sim::SimConfig {
                replicas: range.replicas,
                seed,
                inject_bug: range.inject_bug,
                quorum_leases: range.quorum_leases,
                protocol: range.protocol,
            };
            let outcome = match event_log.as_ref().map(log_writer) {
                None => sim::run(&cfg),
                Some(Ok(log)) => sim::run_with_event_log(&cfg, log),
                Some(Err(e)) => {
                    eprintln!("error: writing the event log: {e}");
                    return ExitCode::from(2);
                }
            };
            println!(
                "seed {seed} violations={} trace={:016x} {:?}",
                outcome.violations.len(),
                outcome.trace_hash,
                outcome.stats
            );
            if !outcome.violations.is_empty() {
                report(&outcome);
            }
            total.add(outcome);
            total.seeds += 1;
        }
        total
    } else {
        sim::run_range(&range, &report)
    };
    eprintln!(
        "replicas={} first_seed={} ops_completed={} crashes={} cluster_crashes={} pauses={} disk_stalls={} disk_errors={} quorum_lease_seeds={} fast_paxos_seeds={} fast_chosen={} fast_collisions={} fast_held={} fast_late={} follower_reads={} leader_splits={} handoffs={}/{} snapshots={} snapshots_installed={} lease_config_changes={} elapsed_s={:.1}",
        args.replicas,
        args.seed,
        summary.ops_completed,
        summary.crashes,
        summary.cluster_crashes,
        summary.pauses,
        summary.disk_stalls,
        summary.disk_errors,
        summary.quorum_lease_seeds,
        summary.fast_paxos_seeds,
        summary.fast_chosen,
        summary.fast_collisions,
        summary.fast_held,
        summary.fast_late,
        summary.follower_reads,
        summary.leader_splits,
        summary.handoff_second_halves,
        summary.handoffs,
        summary.snapshots,
        summary.snapshots_installed,
        summary.lease_config_changes,
        started.elapsed().as_secs_f64()
    );
    println!(
        "seeds={} violations={}",
        summary.seeds,
        summary.violations()
    );
    if summary.violations() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
