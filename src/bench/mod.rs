//! The load generator (architecture §9–10): `mpaxos bench`, `mpaxos suite`, `mpaxos bench compare`.
//!
//! Speaks only the wire protocol; starts a local cluster through [`crate::server::local`] when
//! no `--endpoints` are given.

pub mod anatomy;
pub mod compare;
#[cfg(feature = "etcd")]
pub mod compare_etcd;
pub mod cpu;
pub mod engine;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod floor;
pub mod html;
pub mod report;
pub mod stats;
pub mod suite;
pub mod timeline;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientOptions};
use crate::net::placement::Placement;
use crate::server::config::ClusterConfig;
use crate::server::local::{free_base_port, LocalCluster};
use crate::wal::BackendChoice;
use engine::{Engine, EngineConfig, Progress};
use workload::{Arrival, KeyDist};

/// Every knob of one benchmark run; recorded verbatim in the run's `summary.json`.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct BenchSpec {
    /// Replicas of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Paxos groups per replica.
    #[arg(long, default_value_t = 1)]
    pub groups: u32,
    /// Concurrent clients (each with its own connections).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Closed loop: requests in flight per client.
    #[arg(long, default_value_t = 1)]
    pub outstanding: usize,
    /// Open loop: total requests per second (omit for closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open-loop arrival process: poisson or constant.
    #[arg(long, default_value = "poisson")]
    pub arrival: String,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Fraction of reads (linearizable gets); the rest are puts.
    #[arg(long, default_value_t = 0.5)]
    pub read_ratio: f64,
    /// Serve reads from the contacted replica's state without a read-index round.
    #[arg(long)]
    pub serializable_reads: bool,
    /// How the local cluster serves linearizable reads (its `read_mode`). Fast Paxos runs
    /// with read-index rounds whatever this says.
    #[arg(long, value_enum, default_value_t = crate::protocol::ReadMode::LeaderLease)]
    #[serde(default)]
    pub read_mode: crate::protocol::ReadMode,
    /// With `--read-mode quorum-lease`: the local cluster's `lease_pending` (a holder waits
    /// for a slot it must apply, or forwards the read to the leader).
    #[arg(long, value_enum)]
    #[serde(default)]
    pub lease_pending: Option<crate::protocol::LeasePending>,
    /// The local cluster's replication protocol (its `protocol`): with `fast-paxos` clients
    /// send each write to every replica and take the answer of their nearest.
    #[arg(long, value_enum, default_value_t = crate::protocol::ProtocolMode::MultiPaxos)]
    #[serde(default)]
    pub protocol: crate::protocol::ProtocolMode,
    /// With `--protocol fast-paxos`: the local cluster's `fast_order` (acceptors vote
    /// concurrent writes in client-deadline order, or at arrival). Unset: the default.
    #[arg(long, value_enum)]
    #[serde(default)]
    pub fast_order: Option<crate::protocol::FastOrder>,
    /// Where clients send linearizable reads first: the leader, or their nearest replica
    /// (which serves them locally with quorum leases, else redirects to the leader).
    #[arg(long, value_enum, default_value_t = engine::ReadFrom::Leader)]
    #[serde(default)]
    pub read_from: engine::ReadFrom,
    /// Key space size.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// uniform, zipf:THETA or hot:P.
    #[arg(long, default_value = "uniform")]
    pub key_dist: String,
    /// Value bytes per put.
    #[arg(long, default_value_t = 64)]
    pub value_size: usize,
    /// Key bytes (`k` + zero-padded key number).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Write every key once before the warm-up (so reads find values).
    #[arg(long)]
    pub prefill: bool,
    /// What to drive: mpaxos, or etcd (a build with `--features etcd`, and `--endpoints`).
    #[arg(long, default_value = "mpaxos")]
    pub target: String,
    /// Connections the clients share to each replica (etcd's benchmark `--conns`): 0 gives
    /// every mpaxos client its own, and etcd's driver 1 gRPC connection (etcd's default).
    /// Shared connections carry many clients' requests, so one read and one write move
    /// several of them. With a placement the count is rounded up to a multiple of the client
    /// regions (clients share only within their region).
    #[arg(long, default_value_t = 0)]
    pub conns: usize,
    /// WAL backend of the local cluster: auto, uring, sync or memory.
    #[arg(long, default_value = "auto")]
    pub durability: String,
    /// 1 turns batching off.
    #[arg(long, default_value_t = 256)]
    pub batch_max_ops: usize,
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_max_bytes: usize,
    /// 0 = adaptive batching.
    #[arg(long, default_value_t = 0)]
    pub batch_delay_us: u64,
    #[arg(long, default_value_t = 64)]
    pub pipeline_depth: usize,
    /// A placement file (regions and RTTs) to emulate a WAN.
    #[arg(long)]
    pub placement: Option<PathBuf>,
    /// Random seed (keys, arrivals, client ids).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// An existing cluster's client endpoints instead of a local cluster.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Option<Vec<String>>,
    /// Where data directories (and the floor's disk probe) go; default: the run directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The load generator polls this long before sleeping while it waits for replies (so its
    /// own wake-up latency is not charged to the system); the floor's client does the same.
    /// 0: always block (runs recorded before this knob existed blocked).
    #[arg(long, default_value_t = 30)]
    #[serde(default)]
    pub spin_us: u64,
    /// The servers' `spin_us` (cluster.toml): each group thread polls this many µs for more
    /// input before it sleeps (0: never). For hosts with a core to spare per group thread.
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub server_spin_us: u64,
    /// Keep every measured request's send time and latency: `timeline.csv` and a
    /// latency-over-time plot in the run directory (`mpaxos bench timeline RUN --mark ...`
    /// marks events such as a kill and measures the stall around them).
    #[arg(long)]
    #[serde(default)]
    pub timeline: bool,
    /// Wake this long before every deadline of the load generator (a scheduled open-loop
    /// send, a retry, a frame held by the WAN emulation) and spin through the rest, so deadlines
    /// are met within microseconds. Sleeps use a timerfd (ns), not epoll's ms timeouts.
    #[arg(long, default_value_t = 100)]
    #[serde(default = "default_deadline_spin_us")]
    pub deadline_spin_us: u64,
    /// How long one attempt waits for its reply before it is retried (same client id and
    /// sequence number, so a write stays exactly-once).
    #[arg(long, default_value_t = 2000)]
    #[serde(default = "default_attempt_timeout_ms")]
    pub attempt_timeout_ms: u64,
    /// Open loop: sessions (client ids with one request in flight each) per client; default
    /// `--outstanding`. A request that finds no free session waits in the backlog. Closed loop
    /// uses `--outstanding`.
    #[arg(long)]
    #[serde(default)]
    pub sessions_per_client: Option<usize>,
    /// After the window, how long to wait for measured requests still in flight.
    #[arg(long, default_value_t = 10_000)]
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Free-form label stored with the run (suites set it).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Latency anatomy: trace one measured request in `--anatomy-every` through every stage of
    /// its path (the servers stamp it) and add a per-stage table and plot to the run
    /// (`anatomy_us` and `anatomy_us_get` in summary.json; docs/internals/bench.md).
    #[arg(long)]
    #[serde(default)]
    pub anatomy: bool,
    /// With `--anatomy`: trace one measured request in this many.
    #[arg(long, default_value_t = 16)]
    #[serde(default = "default_anatomy_every")]
    pub anatomy_every: u32,
}

fn default_anatomy_every() -> u32 {
    16
}

fn default_deadline_spin_us() -> u64 {
    100
}
fn default_attempt_timeout_ms() -> u64 {
    2000
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub spec: BenchSpec,
    /// Parent directory of the run directory.
    #[arg(long, default_value = "results/runs")]
    pub out: PathBuf,
    /// Print summary.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl BenchSpec {
    pub fn key_dist(&self) -> Result<KeyDist, String> {
        self.key_dist.parse()
    }
    pub fn arrival(&self) -> Result<Arrival, String> {
        self.arrival.parse()
    }
    pub fn durability(&self) -> Result<BackendChoice, String> {
        self.durability.parse()
    }

    /// Sessions per client: `--sessions-per-client` in the open loop, else `--outstanding`.
    pub fn sessions(&self) -> usize {
        match self.rate {
            Some(_) => self.sessions_per_client.unwrap_or(self.outstanding),
            None => self.outstanding,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.key_dist()?;
        self.arrival()?;
        self.durability()?;
        if self.duration <= 0.0 || self.warmup < 0.0 {
            return Err("--duration must be positive and --warmup not negative".into());
        }
        if self.attempt_timeout_ms == 0 {
            return Err("--attempt-timeout-ms must be positive".into());
        }
        if self.sessions_per_client == Some(0) {
            return Err("--sessions-per-client must be at least 1".into());
        }
        if self.rate.is_none()
            && self
                .sessions_per_client
                .is_some_and(|n| n != self.outstanding)
        {
            return Err("closed loop: sessions per client are --outstanding; --sessions-per-client is for the open loop (--rate)".into());
        }
        if self.clients == 0 {
            return Err("--clients must be at least 1".into());
        }
        if self.outstanding == 0 {
            return Err("--outstanding must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(format!(
                "--read-ratio {} is not a fraction; use a value from 0 (all writes) to 1 (all reads)",
                self.read_ratio
            ));
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return Err("--rate must be a positive number of requests per second".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.value_size > crate::kv::VALUE_BYTES_MAX {
            return Err(format!(
                "--value-size {} is over the store's {}-byte value limit",
                self.value_size,
                crate::kv::VALUE_BYTES_MAX
            ));
        }
        if self.key_size > crate::kv::KEY_BYTES_MAX {
            return Err(format!(
                "--key-size {} is over the store's {}-byte key limit",
                self.key_size,
                crate::kv::KEY_BYTES_MAX
            ));
        }
        if self.replicas == 0 || self.replicas > 9 {
            return Err("--replicas must be 1..=9".into());
        }
        if self.groups == 0 {
            return Err("--groups must be at least 1".into());
        }
        match self.target.as_str() {
            "mpaxos" => {}
            "etcd" => {
                if !cfg!(feature = "etcd") {
                    return Err("this build has no etcd target; build with `cargo build --release --features etcd` (scripts/setup-etcd.sh installs protoc)".into());
                }
                if self.endpoints.is_none() {
                    return Err("--target etcd needs --endpoints of a running etcd cluster".into());
                }
            }
            other => return Err(format!("unknown --target {other:?}; use mpaxos or etcd")),
        }
        if self.anatomy && self.target != "mpaxos" {
            return Err(
                "--anatomy needs the mpaxos target (its servers stamp the requests)".into(),
            );
        }
        if self.anatomy && self.anatomy_every == 0 {
            return Err("--anatomy-every must be at least 1".into());
        }
        if self.endpoints.is_some() && self.placement.is_some() && self.target == "mpaxos" {
            return Err("--placement emulates a WAN inside a local cluster's servers; against --endpoints only the client side would be delayed. Use netem on real hosts (docs/deploy.md)".into());
        }
        if self.key_size < workload::min_key_size(self.keys) {
            return Err(format!(
                "--key-size {} cannot hold {} distinct keys; use at least {}",
                self.key_size,
                self.keys,
                workload::min_key_size(self.keys)
            ));
        }
        Ok(())
    }

    /// `--conns K` when the clients really share connections (fewer than there are clients).
    pub fn shared_conns(&self) -> Option<usize> {
        (self.conns > 0 && self.conns < self.clients).then_some(self.conns)
    }

    /// A short name for the run directory.
    pub fn slug(&self) -> String {
        let load = match self.rate {
            Some(r) => format!("rate{r}"),
            None => format!("c{}x{}", self.clients, self.outstanding),
        };
        let load = match self.shared_conns() {
            Some(k) => format!("{load}-k{k}"),
            None => load,
        };
        let place = self
            .placement
            .as_ref()
            .and_then(|p| p.file_stem())
            .map_or("lan".to_string(), |s| s.to_string_lossy().to_string());
        if self.target == "etcd" {
            return format!("etcd-{load}");
        }
        format!(
            "r{}-g{}-{}-{}-{}",
            self.replicas, self.groups, place, self.durability, load
        )
    }
}

/// Everything one run produced, as written to `summary.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub label: String,
    pub throughput_ops_s: f64,
    pub latency_us: std::collections::BTreeMap<String, stats::Percentiles>,
    /// Per client region, per operation.
    pub latency_us_by_region:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, stats::Percentiles>>,
    /// Per client region, the share of completed reads answered by the client's nearest
    /// replica (`--read-from nearest`; always 0 with `--read-from leader`).
    #[serde(default)]
    pub local_read_share_by_region: std::collections::BTreeMap<String, f64>,
    pub floor_rtt_us: f64,
    pub floor_sync_write_us: f64,
    /// write p50 ÷ (2 × floor RTT + floor sync write); read p50 ÷ floor RTT.
    pub write_p50_over_floor: Option<f64>,
    pub read_p50_over_floor: Option<f64>,
    pub completed: u64,
    pub unfinished: u64,
    pub errors: u64,
    pub retries: u64,
    pub redirects: u64,
    pub timeouts: u64,
    pub target_rate_ops_s: Option<f64>,
    pub flagged: bool,
    pub flag_reasons: Vec<String>,
    pub leaders: Vec<Option<u32>>,
    pub wal_backend: String,
    pub links: Vec<engine::LinkRtt>,
    /// Replica-to-replica links of a local cluster.
    #[serde(default)]
    pub peer_links: Vec<PeerLinkRtt>,
    /// The cluster's replication protocol (a local cluster's `--protocol`).
    #[serde(default)]
    pub protocol: crate::protocol::ProtocolMode,
    /// Fast Paxos (docs/internals/protocol.md §11), from the replicas' metrics at the end of
    /// the run (warm-up included; a local cluster only, else 0): slots the leaders saw chosen
    /// by a fast quorum, slots chosen in classic rounds (every slot with Multi-Paxos), and
    /// slots recovered after a collision or a timeout.
    #[serde(default)]
    pub fast_chosen: u64,
    #[serde(default)]
    pub classic_chosen: u64,
    #[serde(default)]
    pub collisions: u64,
    pub config: BenchSpec,
    pub started_unix_s: u64,
    // ---- added by "numbers you can publish"; absent (default) in older summaries ----
    /// The load generator's lateness: actual send minus when the request could have left (its
    /// schedule, or a session freeing up for it), measured requests; µs.
    #[serde(default)]
    pub send_lag_us: stats::Percentiles,
    /// Successful replies that arrived while the window was open (whenever scheduled);
    /// `throughput_ops_s` is this over `elapsed_s`.
    #[serde(default)]
    pub completed_in_window: u64,
    /// The window as it really elapsed, seconds.
    #[serde(default)]
    pub elapsed_s: f64,
    /// Open loop: requests scheduled in the window per second of it.
    #[serde(default)]
    pub offered_ops_s: Option<f64>,
    /// Open loop: requests scheduled but not completed, at the window's start, after each
    /// second of it and at its end.
    #[serde(default)]
    pub queue_samples: Vec<u64>,
    /// Measured requests that did not succeed, by kind (stale, invalid, wrong_group, busy,
    /// not_leader, timeout, unknown_outcome, not_sent, other); never in latencies or
    /// throughput.
    #[serde(default)]
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// Why attempts were retried (the requests may have succeeded afterwards).
    #[serde(default)]
    pub retries_by_kind: std::collections::BTreeMap<String, u64>,
    /// Mixed into the client ids so that no two runs share one; and the ids.
    #[serde(default)]
    pub client_id_nonce: u64,
    #[serde(default)]
    pub client_ids: Vec<u64>,
    /// The p50 of each floor measurement (before the load, then after it); `floor_rtt_us` and
    /// `floor_sync_write_us` are their medians.
    #[serde(default)]
    pub floor_rtt_us_samples: Vec<f64>,
    #[serde(default)]
    pub floor_sync_write_us_samples: Vec<f64>,
    /// Where the disk floor was measured, and whether that is the WAL's directory (false with
    /// `--endpoints` or `--target etcd`: the replicas' disks are elsewhere).
    #[serde(default)]
    pub floor_sync_write_dir: PathBuf,
    #[serde(default)]
    pub floor_sync_write_on_wal_disk: bool,
    /// A local cluster only (its replicas' WALs share one disk): the durable write measured
    /// from one writer per replica at once, the p50 of each measurement and their median,
    /// and write p50 ÷ (2 × floor RTT + that) — the one-host floor, context beside
    /// `write_p50_over_floor` (whose target assumes a disk per replica), not a target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_sync_write_shared_us: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floor_sync_write_shared_us_samples: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor_sync_write_shared_writers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_p50_over_shared_floor: Option<f64>,
    /// `--anatomy`: per stage of a put's path, in order, `{mean, p50, p99, count}` in µs;
    /// the means add up to the sampled puts' end-to-end mean (`anatomy`).
    #[serde(default, skip_serializing_if = "anatomy::Stages::is_empty")]
    pub anatomy_us: anatomy::Stages,
    /// The same for gets (in the run's read mode).
    #[serde(default, skip_serializing_if = "anatomy::Stages::is_empty")]
    pub anatomy_us_get: anatomy::Stages,
    /// Stages beside the put chain (the leader's own WAL write).
    #[serde(default, skip_serializing_if = "anatomy::Stages::is_empty")]
    pub anatomy_parallel_us: anatomy::Stages,
    /// How the anatomy was sampled and what it covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anatomy: Option<anatomy::Meta>,
    /// CPU time and context switches per operation, per process and thread (a local
    /// cluster's servers and the load generator; `bench::cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<cpu::CpuReport>,
    /// `--target etcd`: the gRPC echo floor (etcd's client stack against a KV server that
    /// answers at once), p50 of each measurement and their median; beside `floor_rtt_us`, the
    /// same for mpaxos's transport, it shows each side's client cost.
    #[serde(default)]
    pub floor_grpc_rtt_us: Option<f64>,
    #[serde(default)]
    pub floor_grpc_rtt_us_samples: Vec<f64>,
    /// The RTT floor's p50, sampled once a second during the load (not the physical floor:
    /// the load competes for the cores); absent in summaries from before it existed.
    #[serde(default)]
    pub floor_rtt_us_under_load_samples: Vec<f64>,
}

/// Runs one benchmark and writes its run directory under `out`. `quiet` suppresses the
/// progress bar (suites draw their own).
pub fn run_one(spec: &BenchSpec, out: &Path, quiet: bool) -> Result<Summary, String> {
    spec.validate()?;
    let stamp = chrono_like_stamp();
    let run_dir = out.join(format!("{stamp}-{}", spec.slug()));
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| format!("cannot create run directory {}: {e}", run_dir.display()))?;
    let run_dir = std::path::absolute(&run_dir).unwrap_or(run_dir);
    std::fs::write(
        run_dir.join("spec.json"),
        serde_json::to_string_pretty(spec).expect("json"),
    )
    .map_err(|e| e.to_string())?;
    let argv: Vec<String> = std::env::args().collect();
    let mut commands = format!("{}\n", shell_words(&argv));
    let placement = match &spec.placement {
        Some(p) => Some(Placement::load(p)?),
        None => None,
    };
    let data_parent = spec.data_dir.clone().unwrap_or_else(|| run_dir.clone());
    let data_dir = data_parent.join("cluster");

    // The cluster: local (started here, stopped when this function returns) or existing.
    let mut local = None;
    let endpoints = match &spec.endpoints {
        Some(e) if e.is_empty() => return Err("--endpoints is empty".into()),
        Some(e) => e.clone(),
        None => {
            let cfg = local_config(spec, &data_dir, placement.as_ref())?;
            let binary = std::env::current_exe().map_err(|e| e.to_string())?;
            let mut cluster = LocalCluster::new(&data_dir, cfg, binary)?;
            for id in 0..spec.replicas {
                commands.push_str(&format!(
                    "{} server --config {} --id {id}\n",
                    std::env::current_exe()
                        .map_err(|e| e.to_string())?
                        .display(),
                    cluster.config_path.display()
                ));
            }
            cluster.start_all()?;
            cluster.wait_ready(Duration::from_secs(30))?;
            let eps = cluster.endpoints();
            local = Some(cluster);
            eps
        }
    };
    std::fs::write(run_dir.join("commands.txt"), &commands).map_err(|e| e.to_string())?;
    let local_config = local.as_ref().map(|c: &LocalCluster| c.config.clone());
    // The local servers, for CPU per operation.
    let watched: Vec<cpu::Watched> = local.as_ref().map_or_else(Vec::new, |c| {
        (0..spec.replicas)
            .filter_map(|id| {
                c.pid(id).map(|pid| cpu::Watched {
                    label: format!("replica {id}"),
                    pid,
                })
            })
            .collect()
    });
    let result = measure(
        spec,
        &run_dir,
        &data_parent,
        endpoints,
        placement,
        (local_config.as_ref(), watched),
        quiet,
    );
    if let Some(mut cluster) = local {
        cluster.stop();
        let logs = run_dir.join("logs");
        let _ = std::fs::create_dir_all(&logs);
        for id in 0..spec.replicas {
            let _ = std::fs::rename(cluster.log_path(id), logs.join(format!("replica-{id}.log")));
        }
        // The data is scratch: keep the config and logs, drop the WAL files.
        for id in 0..spec.replicas {
            let _ = std::fs::remove_dir_all(cluster.config.replica_data_dir(id));
        }
    }
    result
}

fn measure(
    spec: &BenchSpec,
    run_dir: &Path,
    data_parent: &Path,
    endpoints: Vec<String>,
    placement: Option<Placement>,
    (local, watched): (Option<&ClusterConfig>, Vec<cpu::Watched>),
    quiet: bool,
) -> Result<Summary, String> {
    let bar = progress_bar(spec, quiet);
    if spec.target == "etcd" {
        return measure_etcd(spec, run_dir, data_parent, &endpoints, &bar);
    }
    let mut opts = ClientOptions::new(endpoints.clone());
    opts.op_timeout = Duration::from_secs(10);
    let mut client = Client::connect(opts).map_err(|e| e.to_string())?;
    let wal_backend = client
        .status_all()
        .into_iter()
        .find_map(|(_, _, s)| s.ok().map(|s| s.wal_backend))
        .unwrap_or_default();
    let topology = client.topology().clone();
    drop(client);
    // Against an existing cluster, record what actually ran, not the local-cluster defaults.
    let external;
    let spec = if spec.endpoints.is_some() {
        let mut s = spec.clone();
        s.replicas = topology.replicas.len() as u32;
        s.groups = topology.groups;
        if !wal_backend.is_empty() {
            s.durability = wal_backend.clone();
        }
        external = s;
        &external
    } else {
        spec
    };
    if spec.prefill {
        prefill(spec, &endpoints)?;
    }

    // The physical floor, measured in this run on this machine: before the load and after.
    let floor_dir = local
        .map(|c| c.replica_data_dir(0))
        .filter(|d| d.is_dir())
        .unwrap_or_else(|| data_parent.to_path_buf());
    let phases = Phases::new(&bar, spec, quiet);
    phases.enter("floor");
    let mut floors = Floors::new(floor_dir, local.is_some());
    if local.is_some() {
        // Every replica's WAL is on this disk: each durable write waits for the others'.
        floors.shared_writers = spec.replicas as usize;
    }
    floors.measure(spec, FLOOR_ROUNDS_BEFORE)?;

    let peer_placement = placement.clone();
    let cfg = EngineConfig {
        topology,
        clients: spec.clients,
        conns: spec.conns,
        outstanding: spec.sessions(),
        rate: spec.rate,
        arrival: spec.arrival()?,
        warmup: Duration::from_secs_f64(spec.warmup),
        duration: Duration::from_secs_f64(spec.duration),
        read_ratio: spec.read_ratio,
        linearizable_reads: !spec.serializable_reads,
        read_from: spec.read_from,
        keys: spec.keys,
        key_dist: spec.key_dist()?,
        value_bytes: spec.value_size,
        key_bytes: spec.key_size,
        seed: spec.seed,
        placement,
        attempt_timeout: Duration::from_millis(spec.attempt_timeout_ms),
        drain_timeout: Duration::from_millis(spec.drain_timeout_ms),
        probes_per_link: 10,
        spin: Duration::from_micros(spec.spin_us),
        deadline_spin: Duration::from_micros(spec.deadline_spin_us),
        client_id_nonce: None,
        timeline: spec.timeline,
        anatomy_every: if spec.anatomy { spec.anatomy_every } else { 0 },
    };
    let engine = Engine::new(cfg)?;
    let sampler = cpu::Sampler::start(watched);
    let probe = UnderLoadProbe::start(spec);
    let result = engine.run(&|p| phases.progress(spec, p))?;
    let window_ops_s = result.completed_in_window as f64 / result.elapsed_s.max(1e-9);
    let mut cpu = sampler.finish(result.window, window_ops_s);
    if let Some(c) = cpu.as_mut() {
        for p in &mut c.processes {
            let id = p
                .label
                .strip_prefix("replica ")
                .and_then(|i| i.parse().ok());
            if id.is_some() && result.leaders.contains(&id) {
                p.label.push_str(" (leader)");
            }
        }
    }
    floors.rtt_under_load = probe.stop();
    phases.enter("floor again");
    floors.measure(spec, FLOOR_ROUNDS_AFTER)?;
    bar.finish_and_clear();
    let peer_links = local.map_or_else(Vec::new, |c| peer_link_rtts(c, peer_placement.as_ref()));
    let counts = local.map_or_else(ProtocolCounts::default, protocol_counts);
    report::write_run(
        spec,
        run_dir,
        result,
        floors,
        wal_backend,
        peer_links,
        (counts, cpu),
    )
}

/// A replica-to-replica link: the heartbeat round trip the replica measured (its
/// `mpaxos_peer_round_trip_time_seconds` metric, all groups) against the configured RTT.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerLinkRtt {
    pub from: u32,
    pub from_region: String,
    pub to: u32,
    pub to_region: String,
    pub configured_rtt_ms: f64,
    pub measured_rtt_ms_mean: f64,
    pub samples: u64,
}

/// How a local cluster's slots were chosen: its replicas' Fast Paxos counters, summed.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProtocolCounts {
    pub fast_chosen: u64,
    pub classic_chosen: u64,
    pub collisions: u64,
}

fn protocol_counts(cfg: &ClusterConfig) -> ProtocolCounts {
    let mut out = ProtocolCounts::default();
    for r in &cfg.replicas {
        let Ok(text) = http_get(&r.host, r.admin_port, "/metrics") else {
            continue;
        };
        for line in text.lines() {
            let Some((name, value)) = line.split_once('{').and_then(|(n, rest)| {
                let (_, v) = rest.rsplit_once("} ")?;
                Some((n, v.trim().parse::<f64>().ok()? as u64))
            }) else {
                continue;
            };
            match name {
                "mpaxos_fast_chosen_total" => out.fast_chosen += value,
                "mpaxos_classic_chosen_total" => out.classic_chosen += value,
                "mpaxos_fast_collisions_total" | "mpaxos_fast_recovery_timeouts_total" => {
                    out.collisions += value
                }
                _ => {}
            }
        }
    }
    out
}

/// Reads every replica's `/metrics` for its per-peer heartbeat round trips.
fn peer_link_rtts(cfg: &ClusterConfig, placement: Option<&Placement>) -> Vec<PeerLinkRtt> {
    let mut out = Vec::new();
    for r in &cfg.replicas {
        let Ok(text) = http_get(&r.host, r.admin_port, "/metrics") else {
            continue;
        };
        let mut sums: std::collections::BTreeMap<u32, (f64, u64)> = Default::default();
        for line in text.lines() {
            let (is_sum, rest) = if let Some(x) =
                line.strip_prefix("mpaxos_peer_round_trip_time_seconds_sum{")
            {
                (true, x)
            } else if let Some(x) = line.strip_prefix("mpaxos_peer_round_trip_time_seconds_count{")
            {
                (false, x)
            } else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            let peer = labels
                .split(',')
                .find_map(|l| l.strip_prefix("peer=\""))
                .and_then(|p| p.trim_end_matches('"').parse::<u32>().ok());
            let (Some(peer), Ok(v)) = (peer, value.trim().parse::<f64>()) else {
                continue;
            };
            let e = sums.entry(peer).or_default();
            if is_sum {
                e.0 += v;
            } else {
                e.1 += v as u64;
            }
        }
        for (peer, (sum, count)) in sums {
            if count == 0 {
                continue;
            }
            let region = |id: u32| cfg.replicas[id as usize].region.clone();
            out.push(PeerLinkRtt {
                from: r.id,
                from_region: region(r.id),
                to: peer,
                to_region: region(peer),
                configured_rtt_ms: placement
                    .and_then(|p| p.rtt_ms(&region(r.id), &region(peer)))
                    .filter(|_| region(r.id) != region(peer))
                    .unwrap_or(0.0),
                measured_rtt_ms_mean: sum / count as f64 * 1e3,
                samples: count,
            });
        }
    }
    out
}

/// A minimal HTTP/1.0 GET (the admin endpoint is plain HTTP on loopback).
fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map_or(body.clone(), |(_, b)| b.to_string()))
}

fn progress_bar(spec: &BenchSpec, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(1000);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {percent}% ({eta} left)",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    b.set_message(format!("bench {}: floor", spec.slug()));
    b
}

/// Tells the user which phase a run is in: on the progress bar when stderr is a terminal,
/// else one line per phase (logs and CI keep a record of where a run spent its time).
struct Phases {
    bar: indicatif::ProgressBar,
    slug: String,
    quiet: bool,
    current: std::cell::Cell<&'static str>,
}

impl Phases {
    fn new(bar: &indicatif::ProgressBar, spec: &BenchSpec, quiet: bool) -> Phases {
        Phases {
            bar: bar.clone(),
            slug: spec.slug(),
            quiet,
            current: std::cell::Cell::new(""),
        }
    }

    fn enter(&self, phase: &'static str) {
        if self.current.replace(phase) == phase {
            return;
        }
        self.bar
            .set_message(format!("bench {}: {phase}", self.slug));
        if !self.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("bench {}: {phase}", self.slug);
        }
    }

    /// The engine's progress: the phase, the position, and the live figures on the bar.
    fn progress(&self, spec: &BenchSpec, p: &Progress) {
        let warm = spec.warmup / (spec.warmup + spec.duration).max(f64::MIN_POSITIVE);
        let phase = if p.fraction < warm {
            "warm-up"
        } else if p.fraction < 1.0 {
            "measuring"
        } else {
            "draining"
        };
        self.enter(phase);
        let live = live_figures(p);
        if !live.is_empty() {
            self.bar
                .set_message(format!("bench {}: {phase}{live}", self.slug));
        }
        self.bar.set_position((p.fraction * 1000.0) as u64);
    }
}

/// " · 23410 ops/s · p99 1.84 ms" (what is known so far), or "".
fn live_figures(p: &Progress) -> String {
    let mut s = String::new();
    if let Some(r) = p.ops_per_s {
        s.push_str(&format!(" · {r:.0} ops/s"));
    }
    if let Some(us) = p.p99_us {
        if us >= 1000.0 {
            s.push_str(&format!(" · p99 {:.2} ms", us / 1000.0));
        } else {
            s.push_str(&format!(" · p99 {us:.0} µs"));
        }
    }
    s
}

/// Writes every key once, from up to 16 clients in parallel.
fn prefill(spec: &BenchSpec, endpoints: &[String]) -> Result<(), String> {
    let workers = (spec.clients * spec.outstanding).clamp(1, 16) as u64;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                scope.spawn(move || -> Result<(), String> {
                    let mut c = Client::connect(ClientOptions::new(endpoints.to_vec()))
                        .map_err(|e| e.to_string())?;
                    let value = vec![b'x'; spec.value_size];
                    let mut key = Vec::new();
                    let mut k = w;
                    while k < spec.keys {
                        workload::key_bytes(k, spec.key_size, &mut key);
                        c.put(&key, &value).map_err(|e| format!("prefill: {e}"))?;
                        k += workers;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a prefill thread panicked".into()))
            })
            .collect::<Result<Vec<()>, String>>()
    })?;
    Ok(())
}

#[cfg(feature = "etcd")]
fn measure_etcd(
    spec: &BenchSpec,
    run_dir: &Path,
    data_parent: &Path,
    endpoints: &[String],
    bar: &indicatif::ProgressBar,
) -> Result<Summary, String> {
    if spec.prefill {
        etcd::prefill(spec, endpoints)?;
    }
    let mut floors = Floors::new(data_parent.to_path_buf(), false);
    let grpc_floor = |floors: &mut Floors, rounds: usize| -> Result<(), String> {
        for _ in 0..rounds {
            floors
                .grpc
                .push(etcd::grpc_echo_rtt(spec.value_size, 1000)?);
        }
        Ok(())
    };
    floors.measure(spec, FLOOR_ROUNDS_BEFORE)?;
    grpc_floor(&mut floors, FLOOR_ROUNDS_BEFORE)?;
    // The etcd members on this host (a local comparison), and this driver.
    let sampler = cpu::Sampler::start(cpu::processes_named("etcd"));
    let result = etcd::run(spec, endpoints, &|f| bar.set_position((f * 1000.0) as u64))?;
    let window_ops_s = result.completed_in_window as f64 / result.elapsed_s.max(1e-9);
    let cpu = sampler.finish(result.window, window_ops_s);
    bar.finish_and_clear();
    floors.measure(spec, FLOOR_ROUNDS_AFTER)?;
    grpc_floor(&mut floors, FLOOR_ROUNDS_AFTER)?;
    report::write_run(
        spec,
        run_dir,
        result,
        floors,
        "etcd".into(),
        Vec::new(),
        (ProtocolCounts::default(), cpu),
    )
}

#[cfg(not(feature = "etcd"))]
fn measure_etcd(
    _: &BenchSpec,
    _: &Path,
    _: &Path,
    _: &[String],
    _: &indicatif::ProgressBar,
) -> Result<Summary, String> {
    Err("this build has no etcd target; build with --features etcd".into())
}

/// Floor measurements before the load and after it (each: 1,000 round trips and 100 durable
/// writes), so a reader sees the floor's spread over the run, not one sample.
pub const FLOOR_ROUNDS_BEFORE: usize = 2;
pub const FLOOR_ROUNDS_AFTER: usize = 2;

/// The physical floor of this run: the transport's round trip (waiting for replies the way the
/// engine does) and one durable 4 KiB write in the WAL's directory, measured several times.
pub struct Floors {
    pub rtt: Vec<stats::Percentiles>,
    pub sync: Vec<stats::Percentiles>,
    /// `--target etcd` only: the gRPC echo floor.
    pub grpc: Vec<stats::Percentiles>,
    /// Where the disk floor is measured.
    pub sync_dir: PathBuf,
    /// Whether `sync_dir` is the WAL's own directory (a local cluster's replica 0).
    pub sync_on_wal_disk: bool,
    /// A local cluster's replicas write one disk: the durable write measured from this many
    /// writers at once (one per replica) beside the single writer; 0 or 1: not measured.
    pub shared_writers: usize,
    pub sync_shared: Vec<stats::Percentiles>,
    /// The RTT floor measured once a second *during* the load: not the physical floor (the
    /// load competes for the same cores), but how much a quiet round trip costs on the
    /// loaded machine, beside the quiet samples taken before and after.
    pub rtt_under_load: Vec<stats::Percentiles>,
}

/// Round trips per under-load floor sample; at ~30 µs each, about 3 ms of one core per
/// second of load (0.15 % of this 2-core machine).
const UNDER_LOAD_ROUND_TRIPS: u32 = 100;

/// Measures the loopback RTT floor once a second while the load runs (after a first second,
/// so the cluster is warm). The disk floor is not sampled under load: its writes would queue
/// behind the WAL's on the same device and slow the system being measured.
struct UnderLoadProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<stats::Percentiles>>,
}

impl UnderLoadProbe {
    fn start(spec: &BenchSpec) -> UnderLoadProbe {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (value_size, spin) = (spec.value_size, Duration::from_micros(spec.spin_us));
        let thread = std::thread::Builder::new()
            .name("floor-probe".into())
            .spawn(move || {
                let mut samples = Vec::new();
                let mut next = Instant::now() + Duration::from_secs(1);
                loop {
                    while Instant::now() < next {
                        if flag.load(std::sync::atomic::Ordering::Relaxed) {
                            return samples;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if let Ok(p) = floor::loopback_rtt(value_size, UNDER_LOAD_ROUND_TRIPS, spin) {
                        samples.push(p);
                    }
                    next += Duration::from_secs(1);
                }
            })
            .expect("spawn the under-load floor probe");
        UnderLoadProbe { stop, thread }
    }

    fn stop(self) -> Vec<stats::Percentiles> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

impl Floors {
    pub fn new(sync_dir: PathBuf, sync_on_wal_disk: bool) -> Floors {
        Floors {
            rtt: Vec::new(),
            sync: Vec::new(),
            grpc: Vec::new(),
            sync_dir,
            sync_on_wal_disk,
            shared_writers: 0,
            sync_shared: Vec::new(),
            rtt_under_load: Vec::new(),
        }
    }

    pub fn measure(&mut self, spec: &BenchSpec, rounds: usize) -> Result<(), String> {
        for _ in 0..rounds {
            self.rtt.push(floor::loopback_rtt(
                spec.value_size,
                1000,
                Duration::from_micros(spec.spin_us),
            )?);
            self.sync.push(floor::sync_write(&self.sync_dir, 1, 100)?);
            if self.shared_writers > 1 {
                self.sync_shared
                    .push(floor::sync_write(&self.sync_dir, self.shared_writers, 100)?);
            }
        }
        Ok(())
    }

    /// The p50 of each measurement.
    pub fn rtt_samples(&self) -> Vec<f64> {
        self.rtt.iter().map(|p| p.p50).collect()
    }
    pub fn sync_samples(&self) -> Vec<f64> {
        self.sync.iter().map(|p| p.p50).collect()
    }
    pub fn sync_shared_samples(&self) -> Vec<f64> {
        self.sync_shared.iter().map(|p| p.p50).collect()
    }
    pub fn rtt_under_load_samples(&self) -> Vec<f64> {
        self.rtt_under_load.iter().map(|p| p.p50).collect()
    }
    pub fn grpc_samples(&self) -> Vec<f64> {
        self.grpc.iter().map(|p| p.p50).collect()
    }
}

/// The local cluster a run starts: the spec's knobs on loopback.
pub fn local_config(
    spec: &BenchSpec,
    data_dir: &Path,
    placement: Option<&Placement>,
) -> Result<ClusterConfig, String> {
    let base = free_base_port(spec.replicas, spec.groups)?;
    let mut cfg = ClusterConfig::local(spec.replicas, spec.groups, data_dir, base);
    cfg.durability = spec.durability()?;
    // A benchmark cluster is never restarted: memory durability is its to choose.
    cfg.unsafe_memory_durability = cfg.durability == crate::wal::BackendChoice::Memory;
    cfg.batching.batch_max_ops = spec.batch_max_ops;
    cfg.batching.batch_max_bytes = spec.batch_max_bytes;
    cfg.batching.batch_delay_us = spec.batch_delay_us;
    cfg.batching.pipeline_depth = spec.pipeline_depth;
    cfg.spin_us = spec.server_spin_us;
    cfg.protocol = Some(spec.protocol);
    cfg.read_mode = Some(match spec.protocol {
        crate::protocol::ProtocolMode::MultiPaxos => spec.read_mode,
        crate::protocol::ProtocolMode::FastPaxos => crate::protocol::ReadMode::ReadIndex,
    });
    if cfg.read_mode == Some(crate::protocol::ReadMode::QuorumLease) {
        cfg.lease_pending = spec.lease_pending;
    }
    if spec.protocol == crate::protocol::ProtocolMode::FastPaxos {
        cfg.fast_order = spec.fast_order;
    }
    if let Some(p) = placement {
        cfg.placement = Some(std::path::absolute(&p.path).map_err(|e| e.to_string())?);
        for r in cfg.replicas.iter_mut() {
            r.region = p.replica_region(r.id as usize).to_string();
        }
        // Elections must outlast the slowest round trip, or leaders flap.
        let max_rtt_ms = (0..spec.replicas as usize)
            .flat_map(|a| (0..spec.replicas as usize).map(move |b| (a, b)))
            .map(|(a, b)| {
                p.rtt_ms(p.replica_region(a), p.replica_region(b))
                    .unwrap_or(0.0)
            })
            .fold(0.0, f64::max);
        if max_rtt_ms > 0.0 {
            cfg.timeouts.heartbeat_ms = 50;
            cfg.timeouts.election_timeout_min_ms = (max_rtt_ms * 4.0) as u64 + 500;
            cfg.timeouts.election_timeout_max_ms = (max_rtt_ms * 8.0) as u64 + 1000;
        }
        cfg.preferred_leader = p.leader_replica(spec.replicas as usize);
    }
    cfg.validate()?;
    Ok(cfg)
}

/// The UTC civil date (year, month, day) of a Unix time (Howard Hinnant's civil-from-days).
pub fn civil_date(unix_s: u64) -> (i64, i64, i64) {
    let z = (unix_s / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn chrono_like_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_date(secs);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}-{:04}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        rand::random::<u16>() % 10_000
    )
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `mpaxos bench`.
pub fn run_bench(args: BenchArgs) -> std::process::ExitCode {
    crate::server::init_logging();
    // A usage error is reported before any work: no cluster, no run directory, exit 2.
    if let Err(e) = args.spec.validate() {
        eprintln!("error: {e}");
        return std::process::ExitCode::from(2);
    }
    match run_one(&args.spec, &args.out, args.json) {
        Ok(summary) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary).expect("json"));
            } else {
                print!("{}", report::table(&summary));
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_figures_name_what_is_known() {
        assert_eq!(live_figures(&Progress::default()), "");
        let p = Progress {
            fraction: 0.5,
            ops_per_s: Some(23410.4),
            p99_us: Some(1840.0),
        };
        assert_eq!(live_figures(&p), " · 23410 ops/s · p99 1.84 ms");
        let p = Progress {
            p99_us: Some(412.3),
            ops_per_s: None,
            ..p
        };
        assert_eq!(live_figures(&p), " · p99 412 µs");
    }
}
