//! A local cluster on loopback: one config file, one child process per replica (the same
//! binary running `server`), logs in the cluster directory. Used by `mpaxos cluster`, by
//! `mpaxos bench` when no `--endpoints` are given, and by the real-process tests.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::config::ClusterConfig;
use crate::client::{Client, ClientOptions};

pub struct LocalCluster {
    pub dir: PathBuf,
    pub config: ClusterConfig,
    pub config_path: PathBuf,
    binary: PathBuf,
    children: Vec<Option<Child>>,
    /// Per replica, a command that runs the server (e.g. `ip netns exec NS`); empty: none.
    launchers: Vec<Vec<String>>,
}

/// Finds a run of free loopback ports for `replicas` replicas of `groups` groups.
pub fn free_base_port(replicas: u32, groups: u32) -> Result<u16, String> {
    let needed = replicas as u16 * (3 * groups as u16 + 1);
    for _ in 0..64 {
        let base: u16 = 20000 + (rand::random::<u16>() % 30000);
        let all_free = (base..base + needed).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    Err("cannot find free loopback ports for a local cluster".into())
}

impl LocalCluster {
    /// Writes `config` to `dir/cluster.toml` (the cluster's data lives under `dir` too).
    pub fn new(dir: &Path, config: ClusterConfig, binary: PathBuf) -> Result<LocalCluster, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        config.validate()?;
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, config.to_toml())
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        let n = config.replicas.len();
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            config,
            config_path,
            binary,
            children: (0..n).map(|_| None).collect(),
            launchers: vec![Vec::new(); n],
        })
    }

    pub fn log_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("replica-{id}.log"))
    }

    /// `host:port` of every replica's group-0 client port.
    pub fn endpoints(&self) -> Vec<String> {
        self.config
            .replicas
            .iter()
            .map(|r| format!("{}:{}", r.host, r.client_port))
            .collect()
    }

    pub fn start_all(&mut self) -> Result<(), String> {
        for id in 0..self.config.replicas.len() as u32 {
            self.start(id)?;
        }
        Ok(())
    }

    /// Runs replica `id` under `launcher` from its next start on: `launcher[0]` is executed
    /// with the rest of `launcher`, then this binary and its arguments. The launcher must exec
    /// the server in its own process (as `ip netns exec` does) so that signals reach it.
    pub fn set_launcher(&mut self, id: u32, launcher: Vec<String>) {
        self.launchers[id as usize] = launcher;
    }

    /// Starts (or restarts) replica `id`, appending to its log.
    pub fn start(&mut self, id: u32) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_err(|e| format!("cannot open log: {e}"))?;
        let launcher = &self.launchers[id as usize];
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .arg("server")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--id")
            .arg(id.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.children[id as usize] = Some(child);
        Ok(())
    }

    pub fn pid(&self, id: u32) -> Option<u32> {
        self.children[id as usize].as_ref().map(|c| c.id())
    }

    /// Sends `signal` (libc::SIGKILL, SIGSTOP, SIGCONT, SIGTERM) to replica `id`.
    pub fn signal(&mut self, id: u32, signal: i32) {
        if let Some(pid) = self.pid(id) {
            // SAFETY: kill(2) on a child we started; a stale pid is at worst ESRCH.
            unsafe {
                libc::kill(pid as i32, signal);
            }
        }
        if signal == libc::SIGKILL {
            if let Some(mut c) = self.children[id as usize].take() {
                let _ = c.wait();
            }
        }
    }

    /// Whether each started replica is still running (`None`: not started or reaped).
    pub fn exited(&mut self) -> Vec<(u32, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Some(child) = c {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push((i as u32, status));
                    *c = None;
                }
            }
        }
        out
    }

    /// Waits until every group has a leader that answers a linearizable read.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no replica answered yet");
        while Instant::now() < deadline {
            if let Some((id, status)) = self.exited().into_iter().next() {
                let log = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(format!(
                    "replica {id} exited ({status}) while starting; its log ends: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            let mut opts = ClientOptions::new(self.endpoints());
            opts.op_timeout = Duration::from_millis(500);
            opts.attempt_timeout = Duration::from_millis(300);
            match Client::connect(opts) {
                Ok(mut c) => {
                    let groups = c.topology().groups;
                    let mut ok = true;
                    for g in 0..groups {
                        // A key in group g: probe until one maps there.
                        let key = (0u32..)
                            .map(|i| format!("__ready{i}"))
                            .find(|k| crate::net::wire::group_of(k.as_bytes(), groups) == g)
                            .expect("some key maps to every group");
                        if let Err(e) = c.get(key.as_bytes(), true) {
                            last = e.to_string();
                            ok = false;
                            break;
                        }
                    }
                    if ok {
                        return Ok(());
                    }
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the cluster did not become ready within {timeout:?}: {last}"
        ))
    }

    /// SIGTERM every replica and wait for it (SIGKILL after 5 s).
    pub fn stop(&mut self) {
        for c in self.children.iter().flatten() {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in self.children.iter_mut() {
            if let Some(child) = c {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() > deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
            *c = None;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `mpaxos cluster`: runs a local cluster in the foreground until Ctrl-C.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Replicas of a new cluster [default: 3]; an existing directory's cluster.toml must agree.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Paxos groups of a new cluster [default: 1]; an existing directory's must agree.
    #[arg(long)]
    pub groups: Option<u32>,
    /// Directory for the config, logs and data (created if missing).
    #[arg(long, default_value = "mpaxos-cluster")]
    pub dir: PathBuf,
    /// WAL backend of a new cluster: auto, uring, sync or memory [default: auto]; an existing
    /// directory's must agree.
    #[arg(long)]
    pub durability: Option<crate::wal::BackendChoice>,
    /// First port; 0 picks a free range.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// How linearizable reads are served (a new cluster's `read_mode`; an existing
    /// directory's `cluster.toml` must agree).
    #[arg(long, value_enum)]
    pub read_mode: Option<crate::protocol::ReadMode>,
    /// Quorum leases: a holder waits for a slot it must apply before a local read, or
    /// forwards the read to the leader (a new cluster's `lease_pending`; an existing
    /// directory's `cluster.toml` must agree).
    #[arg(long, value_enum)]
    pub lease_pending: Option<crate::protocol::LeasePending>,
    /// The replication protocol of a new cluster (its `protocol`; an existing directory's
    /// `cluster.toml` must agree). Fast Paxos serves reads with read-index rounds.
    #[arg(long, value_enum)]
    pub protocol: Option<crate::protocol::ProtocolMode>,
    /// Fast Paxos: how acceptors order concurrent writes (a new cluster's `fast_order`).
    #[arg(long, value_enum)]
    pub fast_order: Option<crate::protocol::FastOrder>,
    /// Start a new cluster from a file `mpaxos snapshot save` wrote (every replica starts
    /// from it; the directory must not hold a cluster yet). Its group count is the cluster's.
    #[arg(long)]
    pub from_snapshot: Option<PathBuf>,
}

/// A flag given for a directory that already holds a cluster must say what its cluster.toml
/// says: restarting a 3-replica cluster when `--replicas 5` was asked for would be a surprise.
fn flags_agree(args: &ClusterArgs, config: &ClusterConfig) -> Result<(), String> {
    let have = config.replicas.len() as u32;
    if let Some(n) = args.replicas.filter(|n| *n != have) {
        return Err(format!(
            "it has {have} replicas, --replicas {n} asks for {n}"
        ));
    }
    if let Some(g) = args.groups.filter(|g| *g != config.groups) {
        return Err(format!(
            "it has {} groups, --groups {g} asks for {g}",
            config.groups
        ));
    }
    if let Some(p) = args.protocol.filter(|p| *p != config.protocol()) {
        return Err(format!(
            "it runs protocol = \"{}\", --protocol asks for {p}",
            config.protocol()
        ));
    }
    if let Some(d) = args.durability.filter(|d| *d != config.durability) {
        return Err(format!(
            "its durability is {:?}, --durability asks for {d:?}",
            config.durability
        )
        .to_lowercase());
    }
    Ok(())
}

pub fn run_cluster(args: ClusterArgs) -> std::process::ExitCode {
    use std::process::ExitCode;
    super::init_logging();
    let existing = args.dir.join("cluster.toml");
    let restore = match &args.from_snapshot {
        None => None,
        Some(_) if existing.exists() => {
            eprintln!(
                "error: {} already holds a cluster; --from-snapshot starts a new one (use a new --dir)",
                existing.display()
            );
            return ExitCode::from(2);
        }
        Some(file) => match super::snapshot_file::read(file) {
            Ok(parts) => Some(parts),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let groups = args.groups.or(restore.as_ref().map(|p| p.len() as u32));
    let config = if existing.exists() {
        // Restarting a cluster in the same directory keeps its identity and data.
        match ClusterConfig::load(&existing) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let base = if args.base_port == 0 {
            match free_base_port(args.replicas.unwrap_or(3), groups.unwrap_or(1)) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            args.base_port
        };
        let dir = std::path::absolute(&args.dir).unwrap_or(args.dir.clone());
        let mut c =
            ClusterConfig::local(args.replicas.unwrap_or(3), groups.unwrap_or(1), &dir, base);
        c.durability = args.durability.unwrap_or_default();
        // A benchmark cluster is never restarted: memory durability is its to choose.
        c.unsafe_memory_durability = c.durability == crate::wal::BackendChoice::Memory;
        c.read_mode = args.read_mode;
        c.lease_pending = args.lease_pending;
        c.protocol = args.protocol;
        c.fast_order = args.fast_order;
        c
    };
    if let Err(e) = flags_agree(&args, &config) {
        eprintln!("error: {} already holds a cluster: {e} (use a new --dir, or drop the flag to restart that cluster as it is)", existing.display());
        return ExitCode::from(2);
    }
    if let Some(mode) = args.read_mode {
        if config.read_mode() != mode {
            eprintln!(
                "error: {} already holds a cluster with read_mode = \"{}\"; --read-mode {mode} would disagree (edit its cluster.toml, or use a new --dir)",
                existing.display(),
                config.read_mode()
            );
            return ExitCode::from(2);
        }
    }
    if let Some(pending) = args.lease_pending {
        if config.lease_pending.unwrap_or_default() != pending {
            eprintln!(
                "error: {} already holds a cluster with lease_pending = \"{}\"; --lease-pending {pending} would disagree (edit its cluster.toml, or use a new --dir)",
                existing.display(),
                config.lease_pending.unwrap_or_default()
            );
            return ExitCode::from(2);
        }
    }
    if let Some(parts) = &restore {
        if let Err(e) = super::snapshot_file::restore(&config, parts) {
            eprintln!("error: cannot restore the snapshot: {e}");
            return ExitCode::from(2);
        }
        println!(
            "restored {} groups from {}",
            parts.len(),
            args.from_snapshot.as_ref().expect("given").display()
        );
    }
    let binary = match std::env::current_exe() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cluster = match LocalCluster::new(&args.dir, config, binary) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    if let Err(e) = cluster
        .start_all()
        .and_then(|_| cluster.wait_ready(Duration::from_secs(20)))
    {
        eprintln!("error: {e}");
        cluster.stop();
        return ExitCode::FAILURE;
    }
    println!(
        "cluster {:#x} is up: {} replicas, {} groups",
        cluster.config.cluster_id,
        cluster.config.replicas.len(),
        cluster.config.groups
    );
    println!("config:    {}", cluster.config_path.display());
    println!("endpoints: {}", cluster.endpoints().join(","));
    for r in &cluster.config.replicas {
        println!(
            "replica {}: clients {}:{}  admin http://{}:{}/metrics  log {}",
            r.id,
            r.host,
            r.client_port,
            r.host,
            r.admin_port,
            cluster.log_path(r.id).display()
        );
    }
    println!(
        "try:       mpaxos status --endpoints {}",
        cluster.endpoints().join(",")
    );
    println!("Ctrl-C stops every replica.");
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        for (id, status) in cluster.exited() {
            eprintln!(
                "replica {id} exited unexpectedly ({status}); see {}",
                cluster.log_path(id).display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("stopping the cluster");
    cluster.stop();
    ExitCode::SUCCESS
}
