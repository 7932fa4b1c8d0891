//! `mpaxos chaos`: Jepsen-style tests on real processes.
//!
//! Each run starts a fresh local cluster of real `mpaxos server` processes, drives a concurrent
//! workload against it from several client threads while a nemesis kills and pauses replicas
//! on a schedule fixed by the seed, then reads everything back and checks the history: the
//! register keys with the WGL checker (`check`), the write-once keys for lost acknowledged
//! writes, and every fault for how long the cluster served nothing after it healed.
//! `docs/internals/chaos.md` describes the nemeses, the checks and their blind spots.

pub mod analysis;
pub mod history;
pub mod nemesis;
pub mod netns;
pub mod workload;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::check::Outcome;
use crate::client::Client;
use crate::protocol::InjectedBug;
use crate::server::config::ClusterConfig;
use crate::server::local::{free_base_port, LocalCluster};
use history::{RecCall, Record, Status, UNIQUE_PREFIX};
use nemesis::{Executed, Fault, Nemesis, Timing};

/// The client id of the final reads in the history.
const FINAL_READER: u64 = u64::MAX;

#[derive(clap::Args, Debug, Clone)]
pub struct ChaosArgs {
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Seconds of workload under faults, per run (the last fault heals before it ends).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Comma-separated: kill, pause, partition, clock, disk, or all (those five); opt-in:
    /// partition-one-way, partition-flap, clock-beyond, disk-lie. Families this binary or
    /// machine cannot run are skipped with a printed reason (clock and disk need a
    /// `--features fault-injection` build; partitions need root and network namespaces).
    #[arg(long, default_value = "kill,pause")]
    pub nemesis: String,
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// The first run's seed (run i uses seed + i); random when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where runs go: `<out>/seed-<seed>/` holds a run's history, schedule, logs and data.
    #[arg(long, default_value = "chaos-out")]
    pub out: PathBuf,
    /// Client threads.
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Register keys the checker sees (fewer keys, more contention).
    #[arg(long, default_value_t = 3)]
    pub keys: u32,
    /// Each client waits up to this long (uniformly at random) between operations; 0 runs
    /// them back to back.
    #[arg(long, default_value_t = 10)]
    pub think_ms: u64,
    /// How linearizable reads are served: lease (leader lease, the server's default),
    /// read-index (a quorum round per read) or quorum-lease (every replica holds a read lease;
    /// each client reads first from a home replica, which answers locally).
    #[arg(long, default_value = "lease", value_parser = ["lease", "read-index", "quorum-lease"])]
    pub read_mode: String,
    /// The replication protocol: multi-paxos, or fast-paxos (reads then use read-index).
    #[arg(long, default_value = "multi-paxos", value_parser = ["multi-paxos", "fast-paxos"])]
    pub protocol: String,
    /// Snapshot thresholds: `default` (the server's), a number N (snapshot every N applied
    /// slots, keep N/2 slots of log below it, so snapshots, log release and snapshot installs
    /// happen during the faults), or `random` (per run, from the seed: default, 20, 100 or 500).
    #[arg(long, default_value = "default")]
    pub snapshot_every: String,
    /// A run fails if the cluster serves nothing for longer than this after a fault heals.
    #[arg(long, default_value_t = 5000)]
    pub recovery_bound_ms: u64,
    /// Break the servers on purpose (testing only; see `mpaxos sim --help` for the names) to
    /// show the checks catch a real bug on real processes.
    #[arg(long, value_parser = bug_names())]
    pub inject_bug: Option<String>,
    /// Check a kept `history.jsonl` again (linearizability and lost writes) and exit.
    #[arg(long, value_name = "FILE")]
    pub recheck: Option<PathBuf>,
    /// Print each run's fault schedule (JSON, one line per run) and exit without running.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the data directories of passing runs too (failing runs always keep everything).
    #[arg(long)]
    pub keep: bool,
}

fn bug_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        InjectedBug::ALL
            .iter()
            .filter(|b| {
                !matches!(
                    b,
                    InjectedBug::StorageAckBeforeDurable | InjectedBug::ClockStopsInSuspend
                )
            })
            .map(|b| b.name()),
    )
}

/// What one run found.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub dir: PathBuf,
    pub counts: analysis::Counts,
    pub faults: usize,
    pub verdict: String,
    pub linearizable: bool,
    /// The checker could not decide (budget) or the history was malformed.
    pub inconclusive: bool,
    pub durability: analysis::Durability,
    pub windows: Vec<analysis::Window>,
    /// Faults after whose heal the cluster stayed unavailable beyond the bound.
    pub slow_recoveries: usize,
    /// Anything else that makes the run fail (a replica that died on its own, no final read).
    pub problems: Vec<String>,
    /// The run's settings: protocol, read mode, snapshot threshold (0: the server's default).
    pub protocol: String,
    pub read_mode: String,
    pub snapshot_every: u64,
    /// Why anomalies (non-linearizable reads) are expected in this run, if they are: a fault
    /// beyond what the protocol promises to survive happened. They are reported, not counted.
    pub anomalies_expected: Option<String>,
    /// Why lost acknowledged writes are expected in this run, if they are (a lying fsync).
    pub lost_expected: Option<String>,
}

impl RunReport {
    pub fn anomalies(&self) -> u64 {
        u64::from(!self.linearizable && !self.inconclusive) + self.durability.phantom.len() as u64
    }

    pub fn lost(&self) -> u64 {
        self.durability.lost.len() as u64
    }

    /// Anomalies that count against the campaign (not expected by the run's faults).
    pub fn counted_anomalies(&self) -> u64 {
        let a = self.anomalies();
        match (&self.anomalies_expected, &self.lost_expected) {
            (None, None) => a,
            // A lying disk can also lose promises and votes: anything goes.
            (_, Some(_)) => 0,
            // Clocks beyond the bound break leases (stale reads), never writes.
            (Some(_), None) => self.durability.phantom.len() as u64,
        }
    }

    pub fn counted_lost(&self) -> u64 {
        if self.lost_expected.is_some() {
            0
        } else {
            self.lost()
        }
    }

    pub fn passed(&self) -> bool {
        self.counted_anomalies() == 0
            && self.counted_lost() == 0
            && !self.inconclusive
            && self.slow_recoveries == 0
            && self.problems.is_empty()
            && self.durability.unread.is_empty()
    }
}

pub fn run_chaos(args: ChaosArgs) -> ExitCode {
    crate::server::init_logging();
    if let Some(path) = &args.recheck {
        return recheck(path);
    }
    if args.replicas == 0 || args.replicas > 9 || args.keys == 0 || args.clients == 0 {
        eprintln!("error: --replicas must be 1..=9 and --keys, --clients at least 1");
        return ExitCode::from(2);
    }
    let mut args = args;
    if args.protocol == "fast-paxos" && args.read_mode != "read-index" {
        if args.read_mode == "lease" {
            println!(
                "protocol fast-paxos serves linearizable reads with read-index only: --read-mode read-index"
            );
            args.read_mode = "read-index".into();
        } else {
            eprintln!(
                "error: --protocol fast-paxos needs --read-mode read-index, not {}",
                args.read_mode
            );
            return ExitCode::from(2);
        }
    }
    if let Err(e) = snapshot_every(&args.snapshot_every, 0) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let args = args;
    let nemeses = match nemesis::parse_nemeses(&args.nemesis) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut nemeses = nemeses;
    for n in &nemeses {
        if let Some(why) = n.unsupported() {
            println!("nemesis {}: skipped: {why}", n.name());
        }
    }
    if nemeses.iter().any(|n| n.is_partition()) {
        if let Some(why) = netns::NetNs::unavailable() {
            for n in nemeses.iter().filter(|n| n.is_partition()) {
                println!("nemesis {}: skipped: {why}", n.name());
            }
            nemeses.retain(|n| !n.is_partition());
        }
    }
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.dry_run {
        for i in 0..args.runs {
            let seed = args.seed.unwrap_or(0).wrapping_add(i);
            let faults = nemesis::schedule(
                seed,
                &nemeses,
                args.replicas,
                args.duration * 1000,
                default_timing(),
            );
            println!(
                "seed {seed}: {}",
                serde_json::to_string(&faults).unwrap_or_default()
            );
        }
        return ExitCode::SUCCESS;
    }
    let abort = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, abort.clone());
    }
    let first_seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    println!(
        "chaos: {} run(s) of {} s, {} replicas, nemesis {}, protocol {}, read mode {}, snapshots {}, first seed {first_seed}, out {}",
        args.runs,
        args.duration,
        args.replicas,
        args.nemesis,
        args.protocol,
        args.read_mode,
        args.snapshot_every,
        args.out.display()
    );
    let (mut anomalies, mut lost, mut runs, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let (mut expected_anomalies, mut expected_lost) = (0u64, 0u64);
    for i in 0..args.runs {
        if abort.load(Ordering::Relaxed) {
            break;
        }
        let seed = first_seed.wrapping_add(i);
        let dir = args.out.join(format!("seed-{seed}"));
        let report = match run_one(&args, &nemeses, seed, &dir, &binary, &abort) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("run seed={seed}: error: {e}");
                println!("  kept: {}", dir.display());
                println!("  replay: {}", replay_command(&args, seed));
                failed += 1;
                runs += 1;
                continue;
            }
        };
        runs += 1;
        anomalies += report.counted_anomalies();
        lost += report.counted_lost();
        expected_anomalies += report.anomalies() - report.counted_anomalies();
        expected_lost += report.lost() - report.counted_lost();
        print_report(&args, i, &report);
        // A run with expected anomalies passes but keeps its data too.
        if report.passed() && report.anomalies() == 0 && report.lost() == 0 {
            if !args.keep {
                let _ = std::fs::remove_dir_all(dir.join("data"));
            }
        } else if !report.passed() {
            failed += 1;
        }
    }
    if expected_anomalies > 0 || expected_lost > 0 {
        println!(
            "expected (faults beyond what the protocol promises to survive; not counted below): anomalies={expected_anomalies} lost={expected_lost}"
        );
    }
    println!("runs={runs} anomalies={anomalies} lost={lost}");
    if anomalies > 0 || lost > 0 || failed > 0 || abort.load(Ordering::Relaxed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The command that reruns `seed` with the same schedule (the interleaving of real processes
/// differs from run to run; the faults, their order, targets and lengths do not).
pub fn replay_command(args: &ChaosArgs, seed: u64) -> String {
    let mut cmd = format!(
        "mpaxos chaos --replicas {} --duration {} --nemesis {} --runs 1 --seed {seed} \
         --clients {} --keys {} --think-ms {} --read-mode {} --recovery-bound-ms {} --out {}",
        args.replicas,
        args.duration,
        args.nemesis,
        args.clients,
        args.keys,
        args.think_ms,
        args.read_mode,
        args.recovery_bound_ms,
        args.out.join("replay").display()
    );
    if args.protocol != "multi-paxos" {
        cmd.push_str(&format!(" --protocol {}", args.protocol));
    }
    if args.snapshot_every != "default" {
        cmd.push_str(&format!(" --snapshot-every {}", args.snapshot_every));
    }
    if let Some(bug) = &args.inject_bug {
        cmd.push_str(&format!(" --inject-bug {bug}"));
    }
    cmd
}

fn print_report(args: &ChaosArgs, i: u64, r: &RunReport) {
    let c = &r.counts;
    let worst = r
        .windows
        .iter()
        .map(|w| w.after_heal_ms.unwrap_or(f64::INFINITY))
        .fold(0.0f64, f64::max);
    let gap = r
        .windows
        .iter()
        .map(|w| w.longest_gap_ms)
        .fold(0.0f64, f64::max);
    println!(
        "run {}/{} seed={} ops={} ok={} fail={} info={} faults={} linearizable={} acked_unique={} lost={} phantom={} max_unavailable_after_heal_ms={worst:.0} max_gap_ms={gap:.0} slow={} -> {}",
        i + 1,
        args.runs,
        r.seed,
        c.ops,
        c.ok,
        c.fail,
        c.info,
        r.faults,
        if r.inconclusive { "unknown" } else if r.linearizable { "yes" } else { "NO" },
        r.durability.acknowledged,
        r.lost(),
        r.durability.phantom.len(),
        r.slow_recoveries,
        if r.passed() { "PASS" } else { "FAIL" }
    );
    if let Some(why) = &r.anomalies_expected {
        if r.anomalies() > 0 {
            println!(
                "  expected: linearizable={} ({why})",
                if r.linearizable { "yes" } else { "NO" }
            );
        }
    }
    if let Some(why) = &r.lost_expected {
        if r.anomalies() > 0 || r.lost() > 0 {
            println!(
                "  expected: anomalies={} lost={} ({why})",
                r.anomalies(),
                r.lost()
            );
        }
    }
    if (r.anomalies() > 0 || r.lost() > 0) && r.passed() {
        if !r.linearizable {
            println!("  checker: {}", r.verdict);
        }
        for l in r.durability.lost.iter().take(10) {
            println!("  lost: {l}");
        }
        println!("  kept: {}", r.dir.display());
        println!("  replay: {}", replay_command(args, r.seed));
    }
    if !r.passed() {
        if !r.linearizable {
            println!("  checker: {}", r.verdict);
        }
        for l in r.durability.lost.iter().take(10) {
            println!("  lost: {l}");
        }
        for p in r.durability.phantom.iter().take(10) {
            println!("  phantom: {p}");
        }
        if !r.durability.unread.is_empty() {
            println!(
                "  no final read for {} unique keys",
                r.durability.unread.len()
            );
        }
        for w in &r.windows {
            if w.after_heal_ms
                .map_or(true, |t| t > args.recovery_bound_ms as f64)
            {
                println!(
                    "  slow recovery after fault {} ({}): {:?} ms after the heal, bound {} ms",
                    w.fault, w.what, w.after_heal_ms, args.recovery_bound_ms
                );
            }
        }
        for p in &r.problems {
            println!("  problem: {p}");
        }
        println!("  kept: {}", r.dir.display());
        println!("  replay: {}", replay_command(args, r.seed));
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), String> {
    let text = serde_json::to_string_pretty(value).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn write_history(path: &Path, history: &[Record]) -> Result<(), String> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?,
    );
    for r in history {
        serde_json::to_writer(&mut f, r).map_err(|e| e.to_string())?;
        f.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct ScheduleFile<'a> {
    seed: u64,
    replicas: u32,
    duration_s: u64,
    nemesis: &'a str,
    inject_bug: Option<&'a str>,
    faults: &'a [Fault],
}

/// `--recheck FILE`: the history checks of a kept run, again.
fn recheck(path: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut history = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match serde_json::from_str::<Record>(line) {
            Ok(r) => history.push(r),
            Err(e) => {
                eprintln!("error: {}:{}: {e}", path.display(), i + 1);
                return ExitCode::from(2);
            }
        }
    }
    let verdict = analysis::linearizability(&history);
    let durability =
        analysis::durability(&history, &analysis::final_values(&history, FINAL_READER));
    let c = analysis::counts(&history);
    println!("{verdict}");
    println!(
        "ops={} ok={} fail={} info={} acked_unique={} lost={} phantom={} unread={}",
        c.ops,
        c.ok,
        c.fail,
        c.info,
        durability.acknowledged,
        durability.lost.len(),
        durability.phantom.len(),
        durability.unread.len()
    );
    for l in &durability.lost {
        println!("lost: {l}");
    }
    for p in &durability.phantom {
        println!("phantom: {p}");
    }
    let anomalies =
        u64::from(matches!(verdict, Outcome::NotLinearizable(_))) + durability.phantom.len() as u64;
    println!(
        "runs=1 anomalies={anomalies} lost={}",
        durability.lost.len()
    );
    if anomalies > 0 || !durability.lost.is_empty() || !verdict.is_linearizable() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn timing_of(config: &ClusterConfig) -> Timing {
    Timing {
        election_timeout_min_ms: config.timeouts.election_timeout_min_ms,
        election_timeout_max_ms: config.timeouts.election_timeout_max_ms,
        lease_ms: crate::protocol::Config::lease_ms_for(
            config.timeouts.election_timeout_min_ms,
            config.timeouts.clock_drift_percent,
        ),
        clock_drift_percent: config.timeouts.clock_drift_percent,
    }
}

/// The timing of the clusters `run_one` starts.
fn default_timing() -> Timing {
    timing_of(&ClusterConfig::local(3, 1, Path::new("/nonexistent"), 1))
}

/// The snapshot threshold of run `seed` (0: the server's default).
fn snapshot_every(spec: &str, seed: u64) -> Result<u64, String> {
    match spec {
        "default" => Ok(0),
        "random" => {
            let choices = [0, 20, 100, 500];
            let pick = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % choices.len();
            Ok(choices[pick])
        }
        n => n.parse::<u64>().map_err(|_| {
            format!("--snapshot-every takes default, random or a number of slots, not {n:?}")
        }),
    }
}

fn run_one(
    args: &ChaosArgs,
    nemeses: &[Nemesis],
    seed: u64,
    dir: &Path,
    binary: &Path,
    abort: &Arc<AtomicBool>,
) -> Result<RunReport, String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let dir = std::path::absolute(dir).unwrap_or(dir.to_path_buf());
    let base = free_base_port(args.replicas, 1)?;
    let mut config = ClusterConfig::local(args.replicas, 1, &dir.join("data"), base);
    // Declared before the cluster, so dropped after it: the replicas stop before their
    // namespaces go.
    let net = if nemeses.iter().any(|n| n.is_partition()) {
        let net = netns::NetNs::create(args.replicas, seed as u32)?;
        for r in &mut config.replicas {
            r.host = net.addr(r.id);
        }
        Some(net)
    } else {
        None
    };
    config.timeouts.lease_reads = args.read_mode != "read-index";
    if args.read_mode == "quorum-lease" {
        config.read_mode = Some(crate::protocol::ReadMode::QuorumLease);
    }
    config.unsafe_inject_bug = args.inject_bug.clone();
    if args.protocol == "fast-paxos" {
        config.protocol = Some(crate::protocol::ProtocolMode::FastPaxos);
    }
    let snap = snapshot_every(&args.snapshot_every, seed)?;
    if snap > 0 {
        config.snapshot_every_entries = snap;
        config.snapshot_trail_slots = (snap / 2).max(1);
    }
    let timing = timing_of(&config);
    let duration_ms = args.duration * 1000;
    let faults = nemesis::schedule(seed, nemeses, args.replicas, duration_ms, timing);
    write_json(
        &dir.join("schedule.json"),
        &ScheduleFile {
            seed,
            replicas: args.replicas,
            duration_s: args.duration,
            nemesis: &args.nemesis,
            inject_bug: args.inject_bug.as_deref(),
            faults: &faults,
        },
    )?;
    let mut cluster = LocalCluster::new(&dir, config, binary.to_path_buf())?;
    if let Some(net) = &net {
        for id in 0..args.replicas {
            cluster.set_launcher(id, net.launcher(id));
        }
    }
    cluster.start_all()?;
    cluster.wait_ready(Duration::from_secs(20))?;
    if nemeses
        .iter()
        .any(|n| n.needs_fault_injection() && n.unsupported().is_none())
    {
        // The servers are this binary; check they really obey the control file.
        for id in 0..args.replicas {
            let armed = cluster
                .config
                .replica_data_dir(id)
                .join(crate::fault::ARMED_FILE);
            if !armed.exists() {
                return Err(format!(
                    "replica {id} did not arm fault injection ({} is missing): was it built with --features fault-injection?",
                    armed.display()
                ));
            }
        }
    }

    let endpoints = cluster.endpoints();
    let wl = workload::WorkloadConfig {
        endpoints: endpoints.clone(),
        clients: args.clients,
        keys: args.keys,
        think_max: Duration::from_millis(args.think_ms),
        op_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_millis(500),
        seed,
        read_from_home: args.read_mode == "quorum-lease",
    };
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sink = Arc::new(Mutex::new(Vec::<Record>::new()));
    let threads: Vec<_> = (0..wl.clients)
        .map(|c| {
            let (wl, stop, sink) = (wl.clone(), stop.clone(), sink.clone());
            std::thread::spawn(move || workload::client_loop(c as u64, wl, epoch, stop, sink))
        })
        .collect();

    // The nemesis runs here: it owns the cluster.
    let mut executed: Vec<Executed> = Vec::new();
    let mut problems = Vec::new();
    let now_ns = || epoch.elapsed().as_nanos() as u64;
    let sleep_until = |t_ns: u64| {
        while now_ns() < t_ns && !abort.load(Ordering::Relaxed) {
            let left = t_ns.saturating_sub(now_ns()).min(50_000_000);
            std::thread::sleep(Duration::from_nanos(left));
        }
    };
    let mut nemesis_log = std::fs::File::create(dir.join("nemesis.jsonl"))
        .map_err(|e| format!("cannot write the nemesis log: {e}"))?;
    for fault in &faults {
        sleep_until(fault.at_ms * 1_000_000);
        if abort.load(Ordering::Relaxed) {
            break;
        }
        for (id, status) in cluster.exited() {
            problems.push(format!("replica {id} exited on its own ({status})"));
            let _ = cluster.start(id);
        }
        // Just after a fault nobody may lead yet: ask again for up to a second.
        let mut leader = nemesis::current_leader(&cluster);
        let asked_at = Instant::now();
        while leader.is_none()
            && asked_at.elapsed() < Duration::from_secs(1)
            && !abort.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(100));
            leader = nemesis::current_leader(&cluster);
        }
        let who = nemesis::resolve(fault.target, args.replicas, leader);
        let start_ns = now_ns();
        let mut fault_problems =
            nemesis::inject(&mut cluster, net.as_ref(), fault.kind, fault.amount, &who);
        let heal_at = start_ns + fault.heal_after_ms * 1_000_000;
        if fault.kind == nemesis::FaultKind::PartitionFlap && fault.flap_ms > 0 {
            // Heal and cut again, each for flap_ms, until the heal.
            let mut cut = true;
            while now_ns() + fault.flap_ms * 1_000_000 < heal_at && !abort.load(Ordering::Relaxed) {
                sleep_until(now_ns() + fault.flap_ms * 1_000_000);
                if let Some(net) = &net {
                    let r = if cut { net.heal() } else { net.partition(&who) };
                    if let Err(e) = r {
                        fault_problems.push(format!("flapping failed: {e}"));
                    }
                }
                cut = !cut;
            }
        }
        sleep_until(heal_at);
        fault_problems.extend(nemesis::heal(&mut cluster, net.as_ref(), fault.kind, &who));
        let heal_problems = fault_problems;
        let e = Executed {
            fault: fault.clone(),
            replicas: who,
            leader_seen: leader,
            start_ns,
            heal_ns: now_ns(),
            problems: heal_problems.clone(),
        };
        problems.extend(heal_problems);
        let _ = serde_json::to_writer(&mut nemesis_log, &e);
        let _ = nemesis_log.write_all(b"\n");
        executed.push(e);
    }
    // Run to the end, and long enough after the last heal to see the cluster serve again.
    sleep_until(duration_ms * 1_000_000);
    let last_heal = executed.last().map_or(0, |e| e.heal_ns);
    let give_up = now_ns().max(last_heal) + args.recovery_bound_ms * 1_000_000;
    while now_ns() < give_up && !abort.load(Ordering::Relaxed) {
        let served = sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|r| r.status == Status::Ok && r.complete_ns >= last_heal);
        if served {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sleep_until(now_ns() + 300_000_000);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    for (id, status) in cluster.exited() {
        problems.push(format!("replica {id} exited on its own ({status})"));
        let _ = cluster.start(id);
    }
    let mut history = std::mem::take(&mut *sink.lock().unwrap_or_else(|e| e.into_inner()));
    history.sort_by_key(|r| (r.invoke_ns, r.client));

    // Final reads: every register key into the history, every unique key for the durability
    // check.
    let finals = final_reads(&cluster, &mut history, args.keys, epoch, &mut problems);
    cluster.stop();
    if abort.load(Ordering::Relaxed) {
        problems.push("interrupted".into());
    }

    write_history(&dir.join("history.jsonl"), &history)?;
    let verdict = analysis::linearizability(&history);
    let durability = analysis::durability(&history, &finals);
    let windows = analysis::windows(&history, &executed);
    let slow_recoveries = windows
        .iter()
        .filter(|w| {
            w.after_heal_ms
                .map_or(true, |t| t > args.recovery_bound_ms as f64)
        })
        .count();
    let lease_reads = args.read_mode != "read-index";
    let beyond_clock = executed.iter().any(|e| {
        matches!(
            e.fault.kind,
            nemesis::FaultKind::ClockSkewBeyond
                | nemesis::FaultKind::ClockJump
                | nemesis::FaultKind::ClockSlowIsolated
        )
    });
    let lied = executed
        .iter()
        .any(|e| e.fault.kind == nemesis::FaultKind::DiskLie);
    let anomalies_expected = if lied {
        Some("a lying fsync: promises and votes can be forgotten".to_string())
    } else if beyond_clock && lease_reads {
        Some(format!(
            "a clock beyond the {} % drift bound with {} reads: a lease can outlive the promises that back it, so stale reads are possible",
            config_drift(&cluster),
            args.read_mode
        ))
    } else {
        None
    };
    let lost_expected = lied.then(|| {
        "a lying fsync then kill -9: acknowledged writes held in memory are gone".to_string()
    });
    let report = RunReport {
        seed,
        dir: dir.clone(),
        counts: analysis::counts(&history),
        faults: executed.len(),
        verdict: verdict.to_string(),
        linearizable: verdict.is_linearizable(),
        inconclusive: matches!(verdict, Outcome::Unknown { .. }),
        durability,
        windows,
        slow_recoveries,
        problems,
        protocol: args.protocol.clone(),
        read_mode: args.read_mode.clone(),
        snapshot_every: snap,
        anomalies_expected,
        lost_expected,
    };
    write_json(&dir.join("summary.json"), &report)?;
    std::fs::write(dir.join("check.txt"), format!("{verdict}\n"))
        .map_err(|e| format!("cannot write check.txt: {e}"))?;
    Ok(report)
}

fn config_drift(cluster: &LocalCluster) -> u64 {
    cluster.config.timeouts.clock_drift_percent
}

/// Reads every register key and every unique key written (appended to `history`, so the
/// checker sees them and a kept history can be checked again); returns the unique keys'
/// values. Retries until each read answers or
/// 20 s pass.
fn final_reads(
    cluster: &LocalCluster,
    history: &mut Vec<Record>,
    keys: u32,
    epoch: Instant,
    problems: &mut Vec<String>,
) -> HashMap<String, Option<String>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = None;
    let mut read = |key: &str, history: &mut Vec<Record>| -> Option<Option<String>> {
        while Instant::now() < deadline {
            let c = match client.as_mut() {
                Some(c) => c,
                None => {
                    let opts = workload::client_options(
                        &cluster.endpoints(),
                        Duration::from_millis(500),
                        Duration::from_secs(2),
                    );
                    match Client::connect(opts) {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    }
                }
            };
            let rec = workload::execute(c, FINAL_READER, key, RecCall::Get, epoch);
            if let Some(v) = analysis::read_value(&rec) {
                history.push(rec);
                return Some(v);
            }
        }
        None
    };
    for k in 0..keys {
        let key = workload::register_key(k);
        if read(&key, history).is_none() {
            problems.push(format!("no final read of {key} within 20 s"));
        }
    }
    let unique: Vec<String> = {
        let mut u: Vec<String> = history
            .iter()
            .filter(|r| r.key.starts_with(UNIQUE_PREFIX) && r.is_write())
            .map(|r| r.key.clone())
            .collect();
        u.sort();
        u.dedup();
        u
    };
    let mut finals = HashMap::new();
    for key in unique {
        if let Some(v) = read(&key, history) {
            finals.insert(key, v);
        }
    }
    finals
}
