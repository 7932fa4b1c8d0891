//! `mpaxos server`: config, start-up (WAL recovery per group), the admin endpoint, shutdown.
pub mod admin;
pub mod config;
pub mod local;
pub mod snapshot_file;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::net::wire::ReplicaInfo;
use crate::protocol;
use crate::runtime::{self, GroupMetrics, GroupSpec, Shared};
use config::ClusterConfig;

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port} resolves to no address"))
}

/// Sets up logging to stderr (`RUST_LOG` overrides the default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Fast Paxos: how far ahead this replica stamps its own `FastPropose`s — the emulated
/// one-way delay to its `Qf`-th nearest replica, itself included (0 without a placement).
fn fast_propose_ahead_us(delays_ns: &[u64]) -> u64 {
    let mut d = delays_ns.to_vec();
    d.sort_unstable();
    let qf = protocol::QuorumSpec::new(d.len().max(1) as u32).fast() as usize;
    d.get(qf.saturating_sub(1)).copied().unwrap_or(0) / 1_000
}

/// The protocol knobs of replica `id` from the config.
pub fn protocol_config(cfg: &ClusterConfig, id: u32, group: u32) -> protocol::Config {
    let mut p = protocol::Config::new(id, cfg.replicas.len() as u32);
    p.seed = rand::random::<u64>() ^ ((group as u64) << 32);
    p.heartbeat_ms = cfg.timeouts.heartbeat_ms;
    p.election_timeout_min_ms = cfg.timeouts.election_timeout_min_ms;
    p.election_timeout_max_ms = cfg.timeouts.election_timeout_max_ms;
    p.pipeline_depth = cfg.batching.pipeline_depth;
    p.pipeline_bytes_max = cfg.batching.pipeline_bytes_max;
    p.batch_max_ops = cfg.batching.batch_max_ops;
    p.batch_max_bytes = cfg.batching.batch_max_bytes;
    p.batch_delay_us = cfg.batching.batch_delay_us;
    p.proposal_queue_max = cfg.batching.proposal_queue_max;
    p.catchup_batch_max = 64;
    // The smallest stickiness window in the cluster bounds every leader's lease.
    let mut cluster_min_ms = cfg.timeouts.election_timeout_min_ms;
    if let Some(preferred) = cfg.preferred_leader {
        // Everyone else waits at least twice as long before a first election.
        let t = &cfg.timeouts;
        let span = (t.election_timeout_max_ms - t.election_timeout_min_ms).max(2);
        let preferred_min_ms = (t.election_timeout_min_ms / 2).max(t.heartbeat_ms + 1);
        cluster_min_ms = cluster_min_ms.min(preferred_min_ms);
        if preferred == id {
            p.election_timeout_min_ms = preferred_min_ms;
            p.election_timeout_max_ms = p.election_timeout_min_ms + span / 4;
        } else {
            p.election_timeout_min_ms = t.election_timeout_min_ms + span;
            p.election_timeout_max_ms = t.election_timeout_max_ms + span;
        }
    }
    p.clock_drift_percent = cfg.timeouts.clock_drift_percent;
    p.protocol = cfg.protocol();
    if let Some(order) = cfg.fast_order {
        p.fast_order = order;
    }
    if let Some(margin) = cfg.fast_order_margin_us {
        p.fast_order_margin_us = margin;
    }
    p.read_mode = cfg.read_mode();
    p.lease_holders = cfg.lease_holder_set();
    p.lease_pending = cfg.lease_pending.unwrap_or_default();
    p.lease_ms = if cfg.timeouts.lease_reads {
        protocol::Config::lease_ms_for(cluster_min_ms, cfg.timeouts.clock_drift_percent)
    } else {
        0
    };
    p.inject_bug = cfg
        .unsafe_inject_bug
        .as_deref()
        .and_then(protocol::InjectedBug::from_name);
    p
}

/// Runs replica `id` until SIGTERM or SIGINT. Every start-up error is one line on stderr and a
/// non-zero exit.
pub fn run(config_path: &Path, id: u32) -> ExitCode {
    grow_heaps_in_large_steps();
    init_logging();
    let cfg = match ClusterConfig::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    raise_open_files_limit();
    match start(&cfg, id) {
        Ok(running) => {
            wait_for_signal();
            tracing::info!(replica = id, "stopping");
            running.stop();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Asks glibc to make each of its thread heaps writable at once instead of a page at a time.
///
/// A group thread allocates from its own glibc arena, made of heaps of up to 64 MiB of address
/// space that glibc opens for writing (`mprotect`) as they fill, a page at a time unless asked
/// for padding. The log a group keeps until its next snapshot grows the arena by ~10 MB/s at
/// 50k puts/s: 0.14 `mprotect` calls per put over the three replicas, 12 % of all their system
/// calls (perf and the bench's counters, results/anatomy.md). With a padding of a whole heap
/// each new heap is opened in one call. The padding is address space, not memory: pages
/// cost nothing until touched; but glibc also keeps up to the padding of freed memory at a
/// heap's top rather than returning it (reused by the next growth). Called first, before any thread (and its arena) exists;
/// `GLIBC_TUNABLES=glibc.malloc.top_pad=...` still wins if set.
fn grow_heaps_in_large_steps() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tuned = std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("top_pad"));
        // SAFETY: mallopt changes a malloc parameter; no other thread exists yet.
        if !tuned && unsafe { libc::mallopt(libc::M_TOP_PAD, 64 << 20) } != 1 {
            eprintln!("warning: glibc refused M_TOP_PAD; its heaps grow a page at a time");
        }
    }
}

/// Raises the soft limit on open files to the hard one (as Go's runtime does for etcd): every
/// retained WAL segment and every client connection holds a descriptor, and the usual soft
/// limit of 1024 is 8 GiB of 8 MiB segments for a group whose snapshots are off.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to / read from the struct we pass; no other memory.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!(
                    "cannot raise the open-files limit from {before}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

fn wait_for_signal() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGTERM, SIGINT]) {
        Ok(mut signals) => {
            let _ = signals.forever().next();
        }
        Err(e) => {
            tracing::error!("cannot install signal handlers ({e}); running until killed");
            loop {
                std::thread::park();
            }
        }
    }
}

/// A started replica: its group threads and admin endpoint.
pub struct Running {
    shared: Arc<Shared>,
    groups: Vec<runtime::GroupHandle>,
    admin: Option<admin::AdminServer>,
}

impl Running {
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        for g in &self.groups {
            let _ = g.waker.wake();
        }
        for g in self.groups {
            let _ = g.join.join();
        }
        if let Some(a) = self.admin {
            a.stop();
        }
    }
}

/// Starts replica `id` of `cfg`: recovers and binds every group, then the admin endpoint.
pub fn start(cfg: &ClusterConfig, id: u32) -> Result<Running, String> {
    let me = cfg.replica(id)?.clone();
    let listen_host = me.listen_host.as_deref().unwrap_or(&me.host);
    if let Some(bug) = &cfg.unsafe_inject_bug {
        tracing::warn!(
            replica = id,
            "unsafe_inject_bug = {bug:?}: this replica breaks the protocol on purpose (testing only)"
        );
    }
    let data_dir = cfg.replica_data_dir(id);
    std::fs::create_dir_all(&data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}; check the path and its permissions",
            data_dir.display()
        )
    })?;
    #[cfg(feature = "fault-injection")]
    crate::fault::watch::start(&data_dir)?;
    let host_cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let cores = match cfg.cores_for(id, host_cores) {
        Ok(c) => Some(c),
        Err(why) => {
            tracing::info!(replica = id, "{why}");
            None
        }
    };
    let delays = match &cfg.placement {
        Some(p) => {
            crate::net::placement::Placement::load(p)?.replica_delays_ns(id, cfg.replicas.len())?
        }
        None => Vec::new(),
    };
    let shared = Arc::new(Shared::new(cfg.groups));
    let mut registry = Registry::with_prefix("mpaxos");
    let infos: Vec<ReplicaInfo> = cfg
        .replicas
        .iter()
        .map(|r| ReplicaInfo {
            id: r.id,
            host: r.host.clone(),
            client_port_base: r.client_port,
            region: r.region.clone(),
        })
        .collect();
    let mut running = Running {
        shared: shared.clone(),
        groups: Vec::new(),
        admin: None,
    };
    for g in 0..cfg.groups {
        let wal = cfg.wal_config(data_dir.join(format!("group-{g}")), g);
        std::fs::create_dir_all(&wal.dir)
            .map_err(|e| format!("cannot create {}: {e}", wal.dir.display()))?;
        let peer_addrs = cfg
            .replicas
            .iter()
            .map(|r| resolve(&r.host, r.peer_port + g as u16))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = GroupSpec {
            cluster_id: cfg.cluster_id,
            replica_id: id,
            group: g,
            groups: cfg.groups,
            client_listen: resolve(listen_host, me.client_port + g as u16)?,
            peer_listen: resolve(listen_host, me.peer_port + g as u16)?,
            peer_addrs,
            replicas: infos.clone(),
            protocol: {
                let mut p = protocol_config(cfg, id, g);
                p.fast_propose_ahead_us = fast_propose_ahead_us(&delays);
                p
            },
            wal,
            core: cores.as_ref().map(|c| c[g as usize]),
            spin_ns: cfg.spin_us * 1_000,
            limits: cfg.limits.clone(),
            shared: shared.clone(),
            metrics: GroupMetrics::register(&mut registry, g, cfg.replicas.len() as u32, id),
            peer_delay_ns: delays.clone(),
            settings_digest: cfg.settings_digest(),
            snapshot: cfg.snapshot_policy(),
        };
        match runtime::spawn(spec) {
            Ok(h) => running.groups.push(h),
            Err(e) => {
                running.stop();
                return Err(format!("group {g}: {e}"));
            }
        }
    }
    let admin_addr = resolve(listen_host, me.admin_port)?;
    match admin::AdminServer::start(admin_addr, registry, shared.clone()) {
        Ok(a) => running.admin = Some(a),
        Err(e) => {
            running.stop();
            return Err(e);
        }
    }
    tracing::info!(
        replica = id,
        groups = cfg.groups,
        client = %format!("{}:{}", me.host, me.client_port),
        admin = %admin_addr,
        durability = ?cfg.durability,
        "replica started"
    );
    Ok(running)
}
