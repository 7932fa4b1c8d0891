//! `mpaxos compare-etcd`: the same workloads against a 3-member etcd cluster and a 3-replica
//! mpaxos cluster, interleaved A B A B with repeats, with matching durability, and a ratio
//! table in `report.md`. `scripts/compare-etcd.sh` installs what it needs and calls this.
//!
//! Durability modes:
//! - `fsync`: etcd as shipped (fsync on every commit) against mpaxos `auto` (io_uring, O_DIRECT,
//!   durable before acknowledging);
//! - `no-fsync`: etcd `--unsafe-no-fsync` (etcd ≥ 3.5; older etcd gets its data directory on
//!   tmpfs, where fsync costs nothing, and the report says so) against mpaxos `memory`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{run_one, BenchSpec, Summary};

#[derive(clap::Args, Debug)]
pub struct CompareEtcdArgs {
    /// Output directory (runs and report.md).
    #[arg(long, default_value = "results/compare-etcd")]
    pub out: PathBuf,
    /// A short smoke run: 1 repeat, 2 s per run, fewer workloads.
    #[arg(long)]
    pub quick: bool,
    /// Repeats per (workload, system).
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Measured seconds per run.
    #[arg(long)]
    pub duration: Option<f64>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
}

/// A 3-member etcd cluster on loopback with its own data directories; stopped on drop.
pub struct EtcdCluster {
    children: Vec<Child>,
    pub endpoints: Vec<String>,
    pub dir: PathBuf,
    pub how: String,
}

impl EtcdCluster {
    pub fn start(etcd: &Path, dir: &Path, no_fsync: bool) -> Result<EtcdCluster, String> {
        let help = Command::new(etcd).arg("--help").output().map_err(|e| {
            format!(
                "cannot run {}: {e}; run scripts/setup-etcd.sh",
                etcd.display()
            )
        })?;
        let help = String::from_utf8_lossy(&help.stdout).to_string()
            + &String::from_utf8_lossy(&help.stderr);
        let has_flag = help.contains("unsafe-no-fsync");
        let (data_root, how) = if no_fsync && !has_flag {
            let shm = PathBuf::from("/dev/shm").join(format!("mpaxos-etcd-{}", std::process::id()));
            (
                shm,
                "no fsync: data directory on tmpfs (/dev/shm), this etcd has no --unsafe-no-fsync"
                    .to_string(),
            )
        } else if no_fsync {
            (dir.join("data"), "no fsync: --unsafe-no-fsync".to_string())
        } else {
            (
                dir.join("data"),
                "fsync on every commit (etcd default)".to_string(),
            )
        };
        let _ = std::fs::remove_dir_all(&data_root);
        std::fs::create_dir_all(&data_root).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let base = crate::server::local::free_base_port(2, 1)?;
        let client_port = |i: u16| base + 2 * i;
        let peer_port = |i: u16| base + 2 * i + 1;
        let initial: Vec<String> = (0..3u16)
            .map(|i| format!("m{i}=http://127.0.0.1:{}", peer_port(i)))
            .collect();
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        let mut commands = String::new();
        for i in 0..3u16 {
            let mut cmd = Command::new(etcd);
            cmd.arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(data_root.join(format!("m{i}")))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{}", client_port(i)))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{}", client_port(i)))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peer_port(i)))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{}", peer_port(i)))
                .arg("--initial-cluster")
                .arg(initial.join(","))
                .arg("--initial-cluster-token")
                .arg(format!("mpaxos-compare-{}", std::process::id()))
                .arg("--initial-cluster-state")
                .arg("new")
                .arg("--quota-backend-bytes")
                .arg((8u64 << 30).to_string());
            if no_fsync && has_flag {
                cmd.arg("--unsafe-no-fsync");
            }
            let _ = writeln!(commands, "{cmd:?}");
            let log = std::fs::File::create(dir.join(format!("etcd-m{i}.log")))
                .map_err(|e| e.to_string())?;
            let child = cmd
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start etcd: {e}"))?;
            children.push(child);
            endpoints.push(format!("http://127.0.0.1:{}", client_port(i)));
        }
        std::fs::write(dir.join("etcd-commands.txt"), commands).map_err(|e| e.to_string())?;
        let cluster = EtcdCluster {
            children,
            endpoints,
            dir: data_root,
            how,
        };
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg("--endpoints")
                .arg(self.endpoints.join(","))
                .arg("endpoint")
                .arg("health")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err("the etcd cluster did not become healthy within 30 s (see etcd-m*.log)".into())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &self.children {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One workload of the comparison (etcd's published presets, and one open-loop run).
struct Workload {
    name: &'static str,
    conns: usize,
    clients: usize,
    read_ratio: f64,
    serializable: bool,
    rate: Option<f64>,
    prefill: bool,
}

fn workloads(quick: bool) -> Vec<Workload> {
    let mut w = vec![
        Workload {
            name: "put-1conn-1client",
            conns: 1,
            clients: 1,
            read_ratio: 0.0,
            serializable: false,
            rate: None,
            prefill: false,
        },
        Workload {
            name: "put-10conn-100client",
            conns: 10,
            clients: 100,
            read_ratio: 0.0,
            serializable: false,
            rate: None,
            prefill: false,
        },
        Workload {
            name: "get-linearizable-10conn-100client",
            conns: 10,
            clients: 100,
            read_ratio: 1.0,
            serializable: false,
            rate: None,
            prefill: true,
        },
        Workload {
            name: "get-serializable-10conn-100client",
            conns: 10,
            clients: 100,
            read_ratio: 1.0,
            serializable: true,
            rate: None,
            prefill: true,
        },
        Workload {
            name: "put-open-loop-2000ops",
            conns: 10,
            clients: 100,
            read_ratio: 0.0,
            serializable: false,
            rate: Some(2000.0),
            prefill: false,
        },
    ];
    if quick {
        w.retain(|x| {
            matches!(
                x.name,
                "put-1conn-1client" | "put-10conn-100client" | "get-linearizable-10conn-100client"
            )
        });
    }
    w
}

/// Keys: 8 bytes over a key space of 10,000 (etcd's benchmark writes 8-byte keys and 256-byte
/// values; reads range over the same prefilled keys).
const KEY_SPACE: u64 = 10_000;

fn spec_for(
    w: &Workload,
    target: &str,
    durability: &str,
    duration: f64,
    endpoints: Option<Vec<String>>,
    seed: u64,
) -> BenchSpec {
    let mut s = super::suite::default_spec();
    s.target = target.into();
    s.endpoints = endpoints;
    s.durability = durability.into();
    s.clients = w.clients;
    s.conns = w.conns;
    s.outstanding = 1;
    s.read_ratio = w.read_ratio;
    s.serializable_reads = w.serializable;
    s.rate = w.rate;
    s.keys = KEY_SPACE;
    s.key_size = 8;
    s.value_size = 256;
    s.duration = duration;
    s.warmup = (duration / 4.0).clamp(1.0, 3.0);
    s.prefill = w.prefill;
    s.seed = seed;
    // The etcd driver (tokio) blocks while it waits; the mpaxos engine must too, or it would
    // dodge the wake-up latency etcd's client pays.
    s.spin_us = 0;
    s.label = format!("{} {target}", w.name);
    s
}

struct Row {
    mode: &'static str,
    workload: &'static str,
    etcd: Vec<Summary>,
    mpaxos: Vec<Summary>,
}

/// The true median of `f` over the repeats (flagged ones are kept out by the caller).
fn median_by(v: &[&Summary], f: impl Fn(&Summary) -> f64) -> Option<f64> {
    let xs: Vec<f64> = v.iter().map(|s| f(s)).collect();
    super::stats::median(&xs)
}

/// `min-max` of `f` over the repeats (empty for fewer than two).
fn spread_by(v: &[&Summary], f: impl Fn(&Summary) -> f64, decimals: usize) -> String {
    let xs: Vec<f64> = v.iter().map(|s| f(s)).collect();
    match super::stats::spread(&xs) {
        Some((lo, hi)) if xs.len() > 1 => format!(" ({lo:.decimals$}-{hi:.decimals$})"),
        _ => String::new(),
    }
}

/// The repeats that count: the unflagged ones, or all when every one is flagged.
fn usable(runs: &[Summary]) -> (Vec<&Summary>, bool) {
    let ok: Vec<&Summary> = runs.iter().filter(|s| !s.flagged).collect();
    if ok.is_empty() {
        (runs.iter().collect(), true)
    } else {
        (ok, false)
    }
}

/// Errors by kind summed over runs, `kind n, ...` (or `-`).
fn error_kinds(runs: &[Summary]) -> String {
    let mut m: std::collections::BTreeMap<&str, u64> = Default::default();
    for s in runs {
        for (k, n) in &s.errors_by_kind {
            *m.entry(k.as_str()).or_default() += n;
        }
    }
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(args: CompareEtcdArgs) -> std::process::ExitCode {
    crate::server::init_logging();
    match run_inner(&args) {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_inner(args: &CompareEtcdArgs) -> Result<String, String> {
    let repeats = args
        .repeats
        .unwrap_or(if args.quick { 1 } else { 3 })
        .max(1);
    let duration = args.duration.unwrap_or(if args.quick { 2.0 } else { 10.0 });
    std::fs::create_dir_all(&args.out).map_err(|e| e.to_string())?;
    let runs_dir = args.out.join("runs");
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let modes: &[(&str, bool, &str)] = if args.quick {
        &[("fsync", false, "auto")]
    } else {
        &[("fsync", false, "auto"), ("no-fsync", true, "memory")]
    };
    for (mode, no_fsync, mpaxos_durability) in modes {
        let mut noted = false;
        for w in workloads(args.quick) {
            let mut row = Row {
                mode,
                workload: w.name,
                etcd: Vec::new(),
                mpaxos: Vec::new(),
            };
            for r in 0..repeats {
                // A B A B: each repeat runs etcd, then mpaxos, on the same machine state.
                let seed = 1 + r as u64;
                eprintln!("[{mode}] {} repeat {}: etcd", w.name, r + 1);
                // A fresh etcd cluster per run, as each mpaxos run gets a fresh cluster.
                let etcd_dir =
                    args.out
                        .join(format!("etcd-{mode}"))
                        .join(format!("{}-{}", w.name, r + 1));
                let etcd = EtcdCluster::start(&args.etcd, &etcd_dir, *no_fsync)?;
                if !noted {
                    noted = true;
                    notes.push(format!(
                        "{mode}: etcd {} (a fresh 3-member cluster per run); mpaxos --durability {mpaxos_durability} (a fresh cluster per run)",
                        etcd.how
                    ));
                }
                let s = run_one(
                    &spec_for(
                        &w,
                        "etcd",
                        mpaxos_durability,
                        duration,
                        Some(etcd.endpoints.clone()),
                        seed,
                    ),
                    &runs_dir,
                    true,
                )?;
                drop(etcd);
                row.etcd.push(s);
                eprintln!("[{mode}] {} repeat {}: mpaxos", w.name, r + 1);
                let s = run_one(
                    &spec_for(&w, "mpaxos", mpaxos_durability, duration, None, seed),
                    &runs_dir,
                    true,
                )?;
                row.mpaxos.push(s);
            }
            rows.push(row);
        }
    }
    let report = render(&rows, &notes, repeats, duration);
    std::fs::write(args.out.join("report.md"), &report).map_err(|e| e.to_string())?;
    let mut csv = String::from(
        "mode,workload,system,repeat,throughput_ops_s,op,p50_us,p99_us,flagged,run_dir,errors,errors_by_kind,send_lag_p99_us,floor_rtt_us,floor_sync_write_us,floor_sync_write_on_wal_disk,floor_grpc_rtt_us\n",
    );
    for row in &rows {
        for (system, runs) in [("etcd", &row.etcd), ("mpaxos", &row.mpaxos)] {
            for (i, s) in runs.iter().enumerate() {
                for (op, p) in s.latency_us.iter().filter(|(op, _)| op.as_str() != "all") {
                    let kinds: Vec<String> = s
                        .errors_by_kind
                        .iter()
                        .map(|(k, n)| format!("{k}:{n}"))
                        .collect();
                    let _ = writeln!(
                        csv,
                        "{},{},{system},{},{:.1},{op},{:.1},{:.1},{},{},{},{},{:.1},{:.1},{:.1},{},{}",
                        row.mode,
                        row.workload,
                        i + 1,
                        s.throughput_ops_s,
                        p.p50,
                        p.p99,
                        s.flagged,
                        s.run_dir.display(),
                        s.errors,
                        kinds.join(";"),
                        s.send_lag_us.p99,
                        s.floor_rtt_us,
                        s.floor_sync_write_us,
                        s.floor_sync_write_on_wal_disk,
                        s.floor_grpc_rtt_us.map_or(String::new(), |g| format!("{g:.1}"))
                    );
                }
            }
        }
    }
    std::fs::write(args.out.join("summary.csv"), csv).map_err(|e| e.to_string())?;
    Ok(report)
}

fn render(rows: &[Row], notes: &[String], repeats: u32, duration: f64) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# mpaxos vs etcd\n");
    let _ = writeln!(
        md,
        "3-member etcd and 3-replica mpaxos on loopback, same machine, same load generator loop (one thread), a fresh cluster for every run of either system, interleaved etcd, mpaxos, etcd, mpaxos… with {repeats} repeat(s) of {duration} s each. Every figure is the true median of the unflagged repeats (the mean of the middle two for an even count), with the min-max of those repeats in parentheses; flagged repeats are kept out and listed below the table. Errors of either system (by kind) are neither latencies nor throughput. Each side's client cost is shown by its echo floor, measured in the same runs (p50, median of the runs): etcd's client stack (etcd-client over tonic, HTTP/2, protobuf) against a gRPC KV server that answers at once, and mpaxos's transport and codec against an echo thread. Keys 8 B over a space of {KEY_SPACE}, values 256 B; reads hit prefilled keys. Ratios are mpaxos / etcd for throughput and etcd / mpaxos for latency (above 1 = mpaxos better).\n"
    );
    for n in notes {
        let _ = writeln!(md, "- {n}");
    }
    let _ = writeln!(
        md,
        "\n| mode | workload | etcd ops/s | mpaxos ops/s | throughput ratio | etcd p50 us | mpaxos p50 us | p50 ratio | etcd p99 us | mpaxos p99 us | p99 ratio | repeats etcd / mpaxos | errors etcd | errors mpaxos | etcd gRPC echo floor us | mpaxos echo floor us |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut flagged_lines = Vec::new();
    for row in rows {
        let (e, e_all) = usable(&row.etcd);
        let (m, m_all) = usable(&row.mpaxos);
        let tp = |v: &[&Summary]| median_by(v, |s| s.throughput_ops_s).unwrap_or(f64::NAN);
        let pct = |v: &[&Summary], f: fn(&super::stats::Percentiles) -> f64| {
            median_by(v, |s| s.latency_us.get("all").map_or(f64::NAN, f)).unwrap_or(f64::NAN)
        };
        let sp = |v: &[&Summary], f: fn(&super::stats::Percentiles) -> f64| {
            spread_by(v, |s| s.latency_us.get("all").map_or(f64::NAN, f), 0)
        };
        let (et, mt) = (tp(&e), tp(&m));
        let (e50, m50) = (pct(&e, |p| p.p50), pct(&m, |p| p.p50));
        let (e99, m99) = (pct(&e, |p| p.p99), pct(&m, |p| p.p99));
        for s in row
            .etcd
            .iter()
            .chain(row.mpaxos.iter())
            .filter(|s| s.flagged)
        {
            flagged_lines.push(format!(
                "- {} {} {}: {:.0} ops/s, `{}`: {}",
                row.mode,
                row.workload,
                s.config.target,
                s.throughput_ops_s,
                s.run_dir.display(),
                s.flag_reasons.join("; ")
            ));
        }
        let count = |n: usize, all_flagged: bool| {
            if all_flagged {
                format!("{n} (all flagged)")
            } else {
                n.to_string()
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0}{} | {:.0}{} | {:.2} | {:.0}{} | {:.0}{} | {:.2} | {:.0}{} | {:.0}{} | {:.2} | {} / {} | {} | {} | {:.1} | {:.1} |",
            row.mode,
            row.workload,
            et,
            spread_by(&e, |s| s.throughput_ops_s, 0),
            mt,
            spread_by(&m, |s| s.throughput_ops_s, 0),
            mt / et,
            e50,
            sp(&e, |p| p.p50),
            m50,
            sp(&m, |p| p.p50),
            e50 / m50,
            e99,
            sp(&e, |p| p.p99),
            m99,
            sp(&m, |p| p.p99),
            e99 / m99,
            count(e.len(), e_all),
            count(m.len(), m_all),
            error_kinds(&row.etcd),
            error_kinds(&row.mpaxos),
            median_by(&e, |s| s.floor_grpc_rtt_us.unwrap_or(f64::NAN)).unwrap_or(f64::NAN),
            median_by(&m, |s| s.floor_rtt_us).unwrap_or(f64::NAN),
        );
    }
    if !flagged_lines.is_empty() {
        let _ = writeln!(
            md,
            "\nFlagged runs (not in the medians unless every repeat of that side is flagged):\n"
        );
        for l in flagged_lines {
            let _ = writeln!(md, "{l}");
        }
    }
    let _ = writeln!(
        md,
        "\nEvery run's directory (spec, commands, logs, histograms, summary.json) is under `runs/`; etcd's command lines and logs are in `etcd-<mode>/<workload>-<repeat>/`. Reproduce: `scripts/compare-etcd.sh` (add `--quick` for the smoke run)."
    );
    md
}
