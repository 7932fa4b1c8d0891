//! The cluster configuration file (`cluster.toml`): one file, shared by every replica, each
//! started with its own `--id`.
//!
//! Owns: parsing and validating the file into plain values. Every mistake a user can make
//! comes back as one sentence naming the field and what to do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{ProtocolMode, ReadMode};
use crate::runtime::node::SnapshotPolicy;
use crate::wal::{BackendChoice, WalConfig};

/// Where a replica pins its group threads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Cpus {
    /// `"auto"` (disjoint core sets for the replicas on one host when there are enough cores,
    /// else unpinned) or `"off"`.
    Mode(String),
    /// Explicit cores, one per group in order.
    List(Vec<usize>),
}

impl Default for Cpus {
    fn default() -> Self {
        Cpus::Mode("auto".into())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub id: u32,
    /// The address clients and peers dial (and this replica binds, unless `listen_host`).
    pub host: String,
    /// Binds the client, peer and admin ports here instead of `host` (e.g. "0.0.0.0" to
    /// listen on every interface while others dial `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_host: Option<String>,
    /// Group g serves clients on `client_port + g`.
    pub client_port: u16,
    /// Group g listens for peers on `peer_port + g`.
    pub peer_port: u16,
    /// HTTP: /metrics, /health, /readyz.
    pub admin_port: u16,
    #[serde(default = "default_region")]
    pub region: String,
    /// Overrides `data_dir/replica-<id>`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub cpus: Cpus,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn default_region() -> String {
    "local".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    pub batch_max_ops: usize,
    pub batch_max_bytes: usize,
    /// 0 = adaptive (whatever queued while the previous batch was in flight).
    pub batch_delay_us: u64,
    pub pipeline_depth: usize,
    /// Bytes of proposed, not yet chosen values at most (big values: the pipeline is bounded
    /// by bytes so heartbeats are not stuck behind megabytes of Accepts).
    pub pipeline_bytes_max: usize,
    pub proposal_queue_max: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch_max_ops: 256,
            batch_max_bytes: 1 << 20,
            batch_delay_us: 0,
            pipeline_depth: 64,
            pipeline_bytes_max: 8 << 20,
            proposal_queue_max: 16 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Leader leases: the leader serves linearizable reads locally while a majority's
    /// heartbeat acks are fresh (architecture §5). Off: every linearizable read runs a read round.
    pub lease_reads: bool,
    /// The most two replicas' clock rates may differ, in percent; leases are shortened by
    /// twice this.
    pub clock_drift_percent: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            heartbeat_ms: 20,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            lease_reads: true,
            clock_drift_percent: 10,
        }
    }
}

/// Client-facing limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections per group thread (clients and peers together).
    pub connections_max: usize,
    /// Requests one client connection may have waiting for an answer.
    pub requests_per_connection_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: 4096,
            requests_per_connection_max: 4096,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Any nonzero number; every replica's data directory is stamped with it.
    pub cluster_id: u64,
    #[serde(default = "one")]
    pub groups: u32,
    /// Parent of each replica's `replica-<id>` directory.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub durability: BackendChoice,
    /// `durability = "memory"` forgets promises on restart, so a restarted replica can help
    /// elect a second leader (split brain). A server refuses it unless this is set: for
    /// benchmarks of everything above the disk, on clusters nobody restarts.
    #[serde(default)]
    pub unsafe_memory_durability: bool,
    #[serde(default)]
    pub batching: Batching,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub limits: Limits,
    /// A placement file (regions and RTTs) to emulate WAN delays between replicas.
    #[serde(default)]
    pub placement: Option<PathBuf>,
    /// A replica that should win the first election (placements pin the leader's region): it
    /// times out sooner than the others. Stickiness then keeps it leader while it is healthy.
    #[serde(default)]
    pub preferred_leader: Option<u32>,
    /// Testing only: break the protocol on purpose (a name from `mpaxos sim --help`'s
    /// `--inject-bug` list) so that `mpaxos chaos --inject-bug NAME` can show its checker
    /// catching a real bug on real processes. Never set it on a cluster that holds data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_inject_bug: Option<String>,
    /// The replication protocol: `"multi-paxos"` (unset) or `"fast-paxos"`
    /// (docs/internals/protocol.md §11). Every replica must run the same one (it is in the
    /// settings digest peers compare).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<crate::protocol::ProtocolMode>,
    /// How linearizable reads are served: `"read-index"`, `"leader-lease"` or
    /// `"quorum-lease"` (docs/internals/protocol.md §8). Unset: `"leader-lease"`, or
    /// `"read-index"` when `timeouts.lease_reads = false` or `protocol = "fast-paxos"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_mode: Option<crate::protocol::ReadMode>,
    /// With `read_mode = "quorum-lease"`: the replica ids that hold read leases (the others
    /// redirect linearizable reads to the leader, and writes do not wait for them). Unset:
    /// every replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_holders: Option<Vec<u32>>,
    /// With `read_mode = "quorum-lease"`: what a holder does with a linearizable read that
    /// must first apply a slot it has not applied yet: `"wait"` (default) for the commit
    /// notice, or `"forward"` it to the leader at once (docs/internals/protocol.md §8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_pending: Option<crate::protocol::LeasePending>,
    /// With `protocol = "fast-paxos"`: how acceptors order concurrent client writes:
    /// `"deadline"` (default; hold each until the deadline its client stamped, then vote in
    /// deadline order, so acceptors agree on slots) or `"arrival"` (vote at once; concurrent
    /// writes collide when acceptors receive them in different orders). Performance only
    /// (docs/internals/protocol.md §11, "Ordering proposals").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_order: Option<crate::protocol::FastOrder>,
    /// With `fast_order = "deadline"`: a held write is voted this many µs after its deadline
    /// (absorbs delivery and scheduling jitter). Unset: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_order_margin_us: Option<u64>,
    /// Each group thread polls this many µs for more input before it sleeps, so that a message
    /// or disk completion arriving within it costs no wake-up (20–60 µs per hop on a VM; the
    /// latency anatomy shows them), at the price of a core spinning for that long after every
    /// turn. 0 (default): never. Only for hosts with a core to spare per group thread: on a
    /// 2-core host running three replicas and the load generator it made one client's puts
    /// slower and cost 40 % more CPU (results/anatomy.md, fourth pass). Not measured yet on a
    /// host with spare cores: `mpaxos bench --server-spin-us N` compares it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spin_us: u64,
    /// Each group snapshots its state machine once this many slots were applied since its
    /// last snapshot (0: never by count); the log below a durable snapshot is released.
    #[serde(default = "default_snapshot_every_entries")]
    pub snapshot_every_entries: u64,
    /// ... or once this many bytes of commands were applied (0: never by size).
    #[serde(default = "default_snapshot_every_bytes")]
    pub snapshot_every_bytes: u64,
    /// Slots kept in the log below a durable snapshot (the log floor trails the snapshot by
    /// this much), so a follower a little behind catches up from the log instead of a snapshot.
    #[serde(default = "default_snapshot_trail_slots")]
    pub snapshot_trail_slots: u64,
    /// A client session (the exactly-once record of one client id) idle for longer than this
    /// expires; a later command of that client other than its first is refused with a
    /// "session expired" error instead of risking a second application. 0: never expire
    /// (the table then grows with every client id ever seen).
    #[serde(default = "default_session_idle_ms")]
    pub session_idle_ms: u64,
    /// Bytes per WAL segment file (a multiple of 1 MiB, at least 8 MiB). The log is released
    /// a whole segment at a time and a restart reads every retained segment, so this bounds
    /// how much a restart reads beyond the suffix after the newest snapshot. An existing log
    /// keeps the size it was written with.
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
    pub replicas: Vec<ReplicaConfig>,
}

fn default_snapshot_every_entries() -> u64 {
    SnapshotPolicy::default().every_entries
}

fn default_snapshot_every_bytes() -> u64 {
    SnapshotPolicy::default().every_bytes
}

fn default_snapshot_trail_slots() -> u64 {
    SnapshotPolicy::default().trail_slots
}

fn default_wal_segment_bytes() -> u64 {
    WAL_SEGMENT_BYTES_MIN
}

/// The smallest WAL segment: the largest group-commit write the server makes, plus the
/// segment's header sector, rounded up to whole MiB.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 8 << 20;
/// The largest group-commit write (one WAL append; a longer run is split).
pub const WAL_MAX_BATCH_BYTES: u32 = 7 << 20;
/// The largest log entry (one slot's value, a batch of commands).
pub const WAL_MAX_ENTRY_BYTES: u32 = 6 << 20;

/// An hour: far above any client's retry window, so only a client gone for good expires.
fn default_session_idle_ms() -> u64 {
    3_600_000
}

fn one() -> u32 {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: ClusterConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.message().trim_end().to_string()
                + &e.span()
                    .map(|s| {
                        let (line, col) = line_col(&text, s.start);
                        format!(" (line {line}, column {col})")
                    })
                    .unwrap_or_default(),
        })?;
        cfg.validate().map_err(|message| ConfigError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Checks everything the replicas would otherwise trip over at run time.
    pub fn validate(&self) -> Result<(), String> {
        if self.cluster_id == 0 {
            return Err("cluster_id must be nonzero".into());
        }
        if self.groups == 0 || self.groups > 256 {
            return Err(format!("groups must be 1..=256, got {}", self.groups));
        }
        if self.durability == BackendChoice::Memory && !self.unsafe_memory_durability {
            return Err("durability = \"memory\" keeps no promise across a restart, so a restarted replica can help elect a second leader; use auto, uring or sync, or set unsafe_memory_durability = true for a benchmark cluster that is never restarted".into());
        }
        if let Some(name) = &self.unsafe_inject_bug {
            use crate::protocol::InjectedBug;
            if let Some(
                b @ (InjectedBug::StorageAckBeforeDurable | InjectedBug::ClockStopsInSuspend),
            ) = InjectedBug::from_name(name)
            {
                return Err(format!(
                    "unsafe_inject_bug = {:?} lives in the simulator's disk or clock model; a real server cannot inject it",
                    b.name()
                ));
            }
            if InjectedBug::from_name(name).is_none() {
                let known: Vec<&str> = crate::protocol::InjectedBug::ALL
                    .iter()
                    .map(|b| b.name())
                    .collect();
                return Err(format!(
                    "unsafe_inject_bug = {name:?} is not one of {}",
                    known.join(", ")
                ));
            }
        }
        if self.wal_segment_bytes % (1 << 20) != 0 || self.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN
        {
            return Err(format!(
                "wal_segment_bytes = {} must be a multiple of 1 MiB (1048576) and at least {WAL_SEGMENT_BYTES_MIN}",
                self.wal_segment_bytes
            ));
        }
        let n = self.replicas.len();
        if n == 0 || n > 9 {
            return Err(format!("there must be 1 to 9 replicas, got {n}"));
        }
        for (i, r) in self.replicas.iter().enumerate() {
            if r.id as usize != i {
                return Err(format!(
                    "replica ids must be 0, 1, 2, ... in order; entry {i} has id {}",
                    r.id
                ));
            }
            if r.host.is_empty() {
                return Err(format!("replica {} has an empty host", r.id));
            }
            if let Ok(ip) = r.host.parse::<std::net::IpAddr>() {
                if ip.is_unspecified() {
                    return Err(format!(
                        "replica {} host = {:?} is a wildcard: clients and peers are told to dial the host, and cannot dial {}; give the address they should use (set listen_host to bind every interface)",
                        r.id, r.host, r.host
                    ));
                }
            }
            for (name, port) in [("client_port", r.client_port), ("peer_port", r.peer_port)] {
                if port == 0 || port as u32 + self.groups > 65536 {
                    return Err(format!(
                        "replica {} {name} {port} leaves no room for {} groups",
                        r.id, self.groups
                    ));
                }
            }
            if let Cpus::Mode(m) = &r.cpus {
                if m != "auto" && m != "off" {
                    return Err(format!(
                        "replica {} cpus must be \"auto\", \"off\" or a list of cores, got {m:?}",
                        r.id
                    ));
                }
            }
            if let Cpus::List(l) = &r.cpus {
                if l.len() != self.groups as usize {
                    return Err(format!(
                        "replica {} lists {} cpus for {} groups",
                        r.id,
                        l.len(),
                        self.groups
                    ));
                }
            }
        }
        // Port clashes between replicas on the same host.
        let mut used = std::collections::BTreeMap::new();
        for r in &self.replicas {
            let mut ports: Vec<(u16, &str)> = vec![(r.admin_port, "admin_port")];
            for g in 0..self.groups as u16 {
                ports.push((r.client_port + g, "client_port"));
                ports.push((r.peer_port + g, "peer_port"));
            }
            for (p, what) in ports {
                if let Some((other, other_what)) = used.insert((r.host.clone(), p), (r.id, what)) {
                    return Err(format!(
                        "port {p} on {} is used twice (replica {other} {other_what} and replica {} {what})",
                        r.host, r.id
                    ));
                }
            }
        }
        let t = &self.timeouts;
        if t.heartbeat_ms == 0 || t.heartbeat_ms >= t.election_timeout_min_ms {
            return Err(format!(
                "timeouts.heartbeat_ms ({}) must be nonzero and below election_timeout_min_ms ({})",
                t.heartbeat_ms, t.election_timeout_min_ms
            ));
        }
        if t.clock_drift_percent >= 50 {
            return Err("timeouts.clock_drift_percent must be below 50".into());
        }
        if t.lease_reads
            && Self::lease_ms_for(t.election_timeout_min_ms / 2, t.clock_drift_percent)
                <= t.heartbeat_ms
        {
            return Err(format!(
                "timeouts: with lease_reads, heartbeats ({} ms) must come well within the lease (a fraction of election_timeout_min_ms {} ms); lower heartbeat_ms or raise election_timeout_min_ms",
                t.heartbeat_ms, t.election_timeout_min_ms
            ));
        }
        if !t.lease_reads && self.read_mode.is_some_and(|m| m != ReadMode::ReadIndex) {
            return Err(format!(
                "read_mode = \"{}\" needs leases, but timeouts.lease_reads = false; drop one of them",
                self.read_mode.expect("checked")
            ));
        }
        if self.protocol() == ProtocolMode::FastPaxos && self.read_mode() != ReadMode::ReadIndex {
            return Err(format!(
                "protocol = \"fast-paxos\" serves reads with read_mode = \"read-index\" only (a write may be chosen by votes the leader has not seen yet), not \"{}\"; drop read_mode",
                self.read_mode()
            ));
        }
        if let Some(h) = &self.lease_holders {
            if self.read_mode() != ReadMode::QuorumLease {
                return Err("lease_holders needs read_mode = \"quorum-lease\"".into());
            }
            if h.is_empty() || h.iter().any(|&id| id as usize >= n) {
                return Err(format!(
                    "lease_holders {h:?} must name at least one replica, each an id below {n}"
                ));
            }
        }
        if (self.fast_order.is_some() || self.fast_order_margin_us.is_some())
            && self.protocol() != ProtocolMode::FastPaxos
        {
            return Err(
                "fast_order and fast_order_margin_us need protocol = \"fast-paxos\"".into(),
            );
        }
        if self.lease_pending.is_some() && self.read_mode() != ReadMode::QuorumLease {
            return Err("lease_pending needs read_mode = \"quorum-lease\"".into());
        }
        if t.election_timeout_min_ms > t.election_timeout_max_ms {
            return Err("timeouts.election_timeout_min_ms is above election_timeout_max_ms".into());
        }
        let b = &self.batching;
        if b.batch_max_ops == 0
            || b.batch_max_bytes == 0
            || b.pipeline_depth == 0
            || b.pipeline_bytes_max == 0
            || b.proposal_queue_max == 0
        {
            return Err(
                "batching: batch_max_ops, batch_max_bytes, pipeline_depth, pipeline_bytes_max and proposal_queue_max must be at least 1"
                    .into(),
            );
        }
        if b.batch_max_bytes > 4 << 20 {
            return Err(format!(
                "batching.batch_max_bytes {} is over the 4 MiB frame budget",
                b.batch_max_bytes
            ));
        }
        if let Some(p) = self.preferred_leader {
            if p as usize >= n {
                return Err(format!("preferred_leader {p} is not a replica id"));
            }
        }
        if self.limits.connections_max == 0 || self.limits.requests_per_connection_max == 0 {
            return Err("limits must be at least 1".into());
        }
        Ok(())
    }

    fn lease_ms_for(min_ms: u64, drift_percent: u64) -> u64 {
        crate::protocol::Config::lease_ms_for(min_ms, drift_percent)
    }

    /// The quorum-lease holders as a set (every replica when unset).
    pub fn lease_holder_set(&self) -> crate::protocol::VoteSet {
        let n = self.replicas.len() as u32;
        match &self.lease_holders {
            None => crate::protocol::VoteSet::all(n),
            Some(ids) => {
                let mut set = crate::protocol::VoteSet::EMPTY;
                for &id in ids.iter().filter(|&&id| id < n) {
                    set.insert(id);
                }
                set
            }
        }
    }

    /// The replication protocol in force (`multi-paxos` when unset).
    pub fn protocol(&self) -> ProtocolMode {
        self.protocol.unwrap_or_default()
    }

    /// The read mode in force: `read_mode`, else what `protocol` and `timeouts.lease_reads`
    /// imply.
    pub fn read_mode(&self) -> ReadMode {
        let leases = self.timeouts.lease_reads && self.protocol() == ProtocolMode::MultiPaxos;
        self.read_mode.unwrap_or(if leases {
            ReadMode::LeaderLease
        } else {
            ReadMode::ReadIndex
        })
    }

    /// A digest of the settings every replica must share for leases and stickiness to be
    /// sound; peers compare it in their handshake and refuse a mismatch.
    /// The snapshot and session settings every group runs with.
    pub fn snapshot_policy(&self) -> SnapshotPolicy {
        SnapshotPolicy {
            every_entries: self.snapshot_every_entries,
            every_bytes: self.snapshot_every_bytes,
            trail_slots: self.snapshot_trail_slots,
            session_idle_ms: self.session_idle_ms,
            clock_every_ms: if self.session_idle_ms > 0 { 1_000 } else { 0 },
            ..SnapshotPolicy::default()
        }
    }

    /// The WAL settings of group `g` whose files live in `dir`.
    pub fn wal_config(&self, dir: PathBuf, g: u32) -> WalConfig {
        let mut wal = WalConfig::new(dir, self.cluster_id, g);
        wal.backend = self.durability;
        wal.segment_bytes = self.wal_segment_bytes;
        wal.max_entry_bytes = WAL_MAX_ENTRY_BYTES;
        wal.max_batch_bytes = WAL_MAX_BATCH_BYTES;
        wal
    }

    pub fn settings_digest(&self) -> u64 {
        let t = &self.timeouts;
        let mut fields = vec![
            t.heartbeat_ms,
            t.election_timeout_min_ms,
            t.election_timeout_max_ms,
            t.lease_reads as u64,
            t.clock_drift_percent,
            self.preferred_leader.map_or(u64::MAX, u64::from),
            self.replicas.len() as u64,
            self.read_mode().code(),
            self.lease_holder_set().bits(),
            self.protocol().code(),
        ];
        if self.protocol() == ProtocolMode::FastPaxos {
            // Acceptors must order alike for the ordering to help (never for safety).
            let p = crate::protocol::Config::new(0, 1);
            fields.push(self.fast_order.unwrap_or(p.fast_order).code());
            fields.push(self.fast_order_margin_us.unwrap_or(p.fast_order_margin_us));
        }
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for f in fields {
            for b in f.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h | 1
    }

    pub fn replica(&self, id: u32) -> Result<&ReplicaConfig, String> {
        self.replicas
            .get(id as usize)
            .ok_or_else(|| match self.replicas.len() {
                1 => format!("--id {id} is not in the config: only id 0 exists"),
                n => format!("--id {id} is not in the config: ids 0 to {} exist", n - 1),
            })
    }

    pub fn replica_data_dir(&self, id: u32) -> PathBuf {
        match &self.replicas[id as usize].data_dir {
            Some(d) => d.clone(),
            None => self.data_dir.join(format!("replica-{id}")),
        }
    }

    /// The cores replica `id`'s groups run on, or `None` (unpinned) with the reason.
    pub fn cores_for(&self, id: u32, host_cores: usize) -> Result<Vec<usize>, String> {
        let r = &self.replicas[id as usize];
        let g = self.groups as usize;
        match &r.cpus {
            Cpus::List(l) => Ok(l.clone()),
            Cpus::Mode(m) if m == "off" => Err("pinning is off (cpus = \"off\")".into()),
            _ => {
                let local: Vec<u32> = self
                    .replicas
                    .iter()
                    .filter(|o| o.host == r.host)
                    .map(|o| o.id)
                    .collect();
                let k = local.iter().position(|&o| o == id).expect("self is local");
                if local.len() * g <= host_cores {
                    Ok((k * g..(k + 1) * g).collect())
                } else {
                    Err(format!(
                        "{} replicas x {g} groups on {} exceed its {host_cores} cores, so threads run unpinned",
                        local.len(),
                        r.host
                    ))
                }
            }
        }
    }

    /// A local cluster on loopback: `replicas` replicas, ports from `base_port` up.
    pub fn local(replicas: u32, groups: u32, data_dir: &Path, base_port: u16) -> ClusterConfig {
        let stride = 3 * groups as u16 + 1;
        ClusterConfig {
            cluster_id: rand::random::<u64>() | 1,
            groups,
            data_dir: data_dir.to_path_buf(),
            durability: BackendChoice::Auto,
            unsafe_memory_durability: false,
            batching: Batching::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            placement: None,
            preferred_leader: None,
            unsafe_inject_bug: None,
            protocol: None,
            read_mode: None,
            lease_holders: None,
            lease_pending: None,
            fast_order: None,
            fast_order_margin_us: None,
            spin_us: 0,
            snapshot_every_entries: default_snapshot_every_entries(),
            snapshot_every_bytes: default_snapshot_every_bytes(),
            snapshot_trail_slots: default_snapshot_trail_slots(),
            session_idle_ms: default_session_idle_ms(),
            wal_segment_bytes: default_wal_segment_bytes(),
            replicas: (0..replicas)
                .map(|id| {
                    let base = base_port + id as u16 * stride;
                    ReplicaConfig {
                        id,
                        host: "127.0.0.1".into(),
                        listen_host: None,
                        client_port: base,
                        peer_port: base + groups as u16,
                        admin_port: base + 2 * groups as u16,
                        region: "local".into(),
                        data_dir: None,
                        cpus: Cpus::Mode("auto".into()),
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_config_round_trips_and_validates() {
        let cfg = ClusterConfig::local(3, 2, Path::new("/tmp/x"), 20000);
        cfg.validate().unwrap();
        let back: ClusterConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn mistakes_are_named() {
        let mut cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        cfg.replicas[1].client_port = cfg.replicas[0].client_port;
        assert!(cfg.validate().unwrap_err().contains("used twice"));
        let mut cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        cfg.timeouts.heartbeat_ms = 500;
        assert!(cfg.validate().unwrap_err().contains("heartbeat_ms"));
        let mut cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        cfg.wal_segment_bytes = 4 << 20;
        assert!(cfg.validate().unwrap_err().contains("wal_segment_bytes"));
        cfg.wal_segment_bytes = (32 << 20) + 4096;
        assert!(cfg.validate().unwrap_err().contains("wal_segment_bytes"));
        cfg.wal_segment_bytes = 32 << 20;
        cfg.validate().unwrap();
        // A cluster.toml written before the key existed gets the default.
        let old_toml: String = cfg
            .to_toml()
            .lines()
            .filter(|l| !l.starts_with("wal_segment_bytes"))
            .map(|l| format!("{l}\n"))
            .collect();
        let back: ClusterConfig = toml::from_str(&old_toml).unwrap();
        assert_eq!(back.wal_segment_bytes, 8 << 20);
        let mut cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        cfg.durability = BackendChoice::Memory;
        assert!(cfg
            .validate()
            .unwrap_err()
            .contains("unsafe_memory_durability"));
        cfg.unsafe_memory_durability = true;
        cfg.validate().unwrap();
        let err = toml::from_str::<ClusterConfig>("cluster_id = 1\nbogus = 2\n").unwrap_err();
        assert!(err.message().contains("bogus"), "{}", err.message());
    }

    #[test]
    fn a_wildcard_host_is_refused_and_listen_host_binds_it() {
        let mut cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        cfg.replicas[2].host = "0.0.0.0".into();
        let err = cfg.validate().unwrap_err();
        assert!(
            err.contains("replica 2 host = \"0.0.0.0\" is a wildcard"),
            "{err}"
        );
        cfg.replicas[2].host = "127.0.0.1".into();
        cfg.replicas[2].listen_host = Some("0.0.0.0".into());
        cfg.validate().unwrap();
        let back: ClusterConfig = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn toml_errors_say_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        let text = ClusterConfig::local(3, 1, dir.path(), 20000).to_toml();
        let line = 1 + text
            .lines()
            .position(|l| l.starts_with("heartbeat_ms = "))
            .expect("the config has a heartbeat_ms line");
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("heartbeat_ms = ") {
                    "heartbeat_ms = \"soon\"\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, &text).unwrap();
        let err = ClusterConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains(&format!("(line {line}, column 16)")), "{err}");
        assert!(!err.contains("byte"), "{err}");
    }

    #[test]
    fn an_unknown_id_names_the_ids_that_exist() {
        let one = ClusterConfig::local(1, 1, Path::new("/tmp/x"), 20000);
        assert_eq!(
            one.replica(7).unwrap_err(),
            "--id 7 is not in the config: only id 0 exists"
        );
        let three = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        assert_eq!(
            three.replica(3).unwrap_err(),
            "--id 3 is not in the config: ids 0 to 2 exist"
        );
    }

    #[test]
    fn read_mode_parses_defaults_and_is_in_the_digest() {
        let cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        assert_eq!(cfg.read_mode(), ReadMode::LeaderLease);
        let mut text = cfg.to_toml();
        assert!(!text.contains("read_mode"), "unset stays unset: {text}");
        text = format!("read_mode = \"quorum-lease\"\n{text}");
        let q: ClusterConfig = toml::from_str(&text).unwrap();
        assert_eq!(q.read_mode(), ReadMode::QuorumLease);
        q.validate().unwrap();
        let back: ClusterConfig = toml::from_str(&q.to_toml()).unwrap();
        assert_eq!(back, q);
        // Peers with different read modes refuse each other.
        assert_ne!(q.settings_digest(), cfg.settings_digest());
        let mut explicit = cfg.clone();
        explicit.read_mode = Some(ReadMode::LeaderLease);
        assert_eq!(explicit.settings_digest(), cfg.settings_digest());
        let mut ri = cfg.clone();
        ri.timeouts.lease_reads = false;
        assert_eq!(ri.read_mode(), ReadMode::ReadIndex);
        assert_ne!(ri.settings_digest(), cfg.settings_digest());
        ri.read_mode = Some(ReadMode::QuorumLease);
        assert!(ri.validate().unwrap_err().contains("lease_reads"));
        let bad = format!("read_mode = \"nearest\"\n{}", cfg.to_toml());
        assert!(toml::from_str::<ClusterConfig>(&bad).is_err());
        // A named lease configuration: quorum leases only, valid ids, in the digest.
        let mut named = q.clone();
        named.lease_holders = Some(vec![0, 2]);
        named.validate().unwrap();
        assert_eq!(named.lease_holder_set().bits(), 0b101);
        assert_eq!(q.lease_holder_set().bits(), 0b111);
        assert_ne!(named.settings_digest(), q.settings_digest());
        let back: ClusterConfig = toml::from_str(&named.to_toml()).unwrap();
        assert_eq!(back, named);
        named.lease_holders = Some(vec![3]);
        assert!(named.validate().unwrap_err().contains("lease_holders"));
        let mut not_q = cfg.clone();
        not_q.lease_holders = Some(vec![0]);
        assert!(not_q.validate().unwrap_err().contains("quorum-lease"));
        // lease_pending: quorum leases only; parses from its names.
        let fwd = format!("lease_pending = \"forward\"\n{}", q.to_toml());
        let fwd: ClusterConfig = toml::from_str(&fwd).unwrap();
        assert_eq!(
            fwd.lease_pending,
            Some(crate::protocol::LeasePending::Forward)
        );
        fwd.validate().unwrap();
        let mut not_q = cfg.clone();
        not_q.lease_pending = Some(crate::protocol::LeasePending::Wait);
        assert!(not_q.validate().unwrap_err().contains("lease_pending"));
    }

    #[test]
    fn fast_order_parses_needs_fast_paxos_and_is_in_the_digest() {
        let cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 7000);
        let text = cfg.to_toml();
        let fast: ClusterConfig =
            toml::from_str(&format!("protocol = \"fast-paxos\"\n{text}")).unwrap();
        let arrival: ClusterConfig = toml::from_str(&format!(
            "protocol = \"fast-paxos\"\nfast_order = \"arrival\"\nfast_order_margin_us = 500\n{text}"
        ))
        .unwrap();
        assert_eq!(
            arrival.fast_order,
            Some(crate::protocol::FastOrder::Arrival)
        );
        arrival.validate().unwrap();
        // Acceptors must order alike: the digest differs.
        assert_ne!(arrival.settings_digest(), fast.settings_digest());
        let mut explicit = fast.clone();
        explicit.fast_order = Some(crate::protocol::FastOrder::Deadline);
        assert_eq!(
            explicit.settings_digest(),
            fast.settings_digest(),
            "the default"
        );
        let p = crate::server::protocol_config(&arrival, 0, 0);
        assert_eq!(p.fast_order, crate::protocol::FastOrder::Arrival);
        assert_eq!(p.fast_order_margin_us, 500);
        let mut multi = cfg.clone();
        multi.fast_order = Some(crate::protocol::FastOrder::Arrival);
        assert!(multi.validate().unwrap_err().contains("fast_order"));
    }

    #[test]
    fn protocol_parses_and_is_in_the_digest() {
        let cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 7000);
        assert_eq!(cfg.protocol(), ProtocolMode::MultiPaxos);
        let text = cfg.to_toml();
        assert!(!text.contains("protocol"), "unset stays unset: {text}");
        let fast: ClusterConfig =
            toml::from_str(&format!("protocol = \"fast-paxos\"\n{text}")).unwrap();
        assert_eq!(fast.protocol(), ProtocolMode::FastPaxos);
        // Fast Paxos reads through read-index rounds; a mixed cluster is refused by digest.
        assert_eq!(fast.read_mode(), ReadMode::ReadIndex);
        fast.validate().unwrap();
        assert_ne!(fast.settings_digest(), cfg.settings_digest());
        let mut leased = fast.clone();
        leased.read_mode = Some(ReadMode::LeaderLease);
        assert!(leased.validate().unwrap_err().contains("fast-paxos"));
        let bad = format!("protocol = \"epaxos\"\n{text}");
        assert!(toml::from_str::<ClusterConfig>(&bad).is_err());
    }

    #[test]
    fn auto_pinning_needs_enough_cores() {
        let cfg = ClusterConfig::local(3, 1, Path::new("/tmp/x"), 20000);
        assert_eq!(cfg.cores_for(1, 8).unwrap(), vec![1]);
        assert!(cfg.cores_for(1, 2).is_err());
    }
}
