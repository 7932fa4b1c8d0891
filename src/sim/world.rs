//! One simulated run: the world (hosts running the real node, clients, network, disks,
//! clocks), its event loop and its checks. See the module docs of `sim` for the fault model
//! and the checks.
//!
//! Each host runs [`Node`] — the very code the server's mio shell runs — over a
//! [`SimDisk`] behind the WAL's interface. The world plays the shell: it delivers decoded
//! peer messages and client requests, reports disk completions, fires timers, and carries
//! the node's output over the simulated network.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::disk::{DiskState, SimDisk};
use super::network::{Handoff, NetworkFaults, Partition};
use crate::check;
use crate::client::{OpId, Session, SessionConfig, SessionError};
use crate::kv::Op as KvOp;
use crate::net::wire::{Op, Outcome, Request};
use crate::protocol::{
    Ballot, Command, Config, Envelope, FastOrder, InjectedBug, Message, Nanos, ProtocolMode,
    QuorumSpec, ReadMode, ReplicaId, Slot, Value, VoteSet,
};
use crate::runtime::disk::DiskLimits;
use crate::runtime::metrics::GroupMetrics;
use crate::runtime::node::{Node, NodeConfig, Output, Restored, SnapshotPolicy};
use crate::runtime::storage::{self, Storage};
use crate::server::config::Limits;
use crate::wal::{self, RecoveredEntry};

const NS_PER_MS: u64 = 1_000_000;
/// After healing, everything must be done within this much simulated time.
const HEAL_DEADLINE_NS: Nanos = 30_000 * NS_PER_MS;
const CONVERGENCE_CHECK_NS: Nanos = 50 * NS_PER_MS;
/// The linearizability search is bounded; exceeding it fails the seed rather than passing it.
const CHECK_STEPS_MAX: u64 = 20_000_000;
/// The server's limits, simulated as shipped: the largest peer frame, the WAL's entry and
/// append limits (`server::run` sets these), its queue depth.
const PEER_FRAME_MAX_BYTES: usize = 64 << 20;
const WAL_LIMITS: DiskLimits = DiskLimits {
    entry_bytes_max: crate::server::config::WAL_MAX_ENTRY_BYTES as usize,
    append_bytes_max: crate::server::config::WAL_MAX_BATCH_BYTES as usize,
};
const WAL_PENDING_MAX: usize = 4096;
const BACKLOG_BYTES_MAX: usize = 64 << 20;
const VALUE_BYTES_MAX: usize = crate::kv::VALUE_BYTES_MAX;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub replicas: u32,
    pub seed: u64,
    pub inject_bug: Option<InjectedBug>,
    /// Every seed runs with quorum leases (`mpaxos sim --quorum-leases`), and Multi-Paxos.
    pub quorum_leases: bool,
    /// Every seed runs this protocol (`mpaxos sim --protocol`); `None`: a quarter of the seeds
    /// run Fast Paxos (derived from the seed). `quorum_leases` and an injected bug win.
    pub protocol: Option<ProtocolMode>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which check failed: agreement, applied-order, linearizability, lost-write, liveness,
    /// convergence, oversized-message, lease-overlap.
    pub check: &'static str,
    pub detail: String,
}

#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub ops_completed: u64,
    pub ops_issued: u64,
    pub slots_committed: Slot,
    pub crashes: u64,
    pub cluster_crashes: u64,
    pub pauses: u64,
    pub partitions: u64,
    /// Partitions struck while two leaders overlapped (`Event::LeaderSplit`).
    pub leader_splits: u64,
    /// Leader-handoff partitions (`Partition::handoff_first_half`), and how many reached their
    /// second half (a new leader elected while the old one still led).
    pub handoffs: u64,
    pub handoff_second_halves: u64,
    pub disk_stalls: u64,
    pub disk_errors: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub events: u64,
    pub sim_time_ms: u64,
    /// From healing until every client's write after healing succeeded.
    pub heal_to_served_ms: u64,
    /// Linearizable reads a replica that was not the leader answered with a value (quorum
    /// leases: served locally by a holder).
    pub follower_reads: u64,
    /// Fast Paxos, summed over the replicas' last incarnations: slots learned from a fast
    /// quorum, slots the leader recovered after a collision or a timeout, mode switches.
    pub fast_chosen: u64,
    pub fast_collisions: u64,
    pub fast_timeouts: u64,
    pub fast_mode_switches: u64,
    /// Fast Paxos client proposals held until their deadline, and voted late (past it).
    pub fast_held: u64,
    pub fast_late: u64,
    /// Snapshots made durable, and installed from a peer.
    pub snapshots: u64,
    pub snapshots_installed: u64,
    /// Quorum leases: lease configuration changes the workload had a leader propose.
    pub lease_config_changes: u64,
}

#[derive(Clone, Debug)]
pub struct SimOutcome {
    pub seed: u64,
    pub violations: Vec<Violation>,
    pub trace_hash: u64,
    pub stats: SimStats,
    /// The seed ran with `read_mode = QuorumLease`.
    pub quorum_leases: bool,
    /// The seed ran with `protocol = FastPaxos`.
    pub fast_paxos: bool,
}

/// Runs one seed to completion.
pub fn run(cfg: &SimConfig) -> SimOutcome {
    let mut world = World::new(cfg);
    world.run();
    world.finish()
}

/// Runs one seed like [`run`] (the same events, the same outcome) and writes what happens to
/// `log`, a line per event in the order the simulator handles them: the simulated time in ms,
/// then the event (a message delivered with its contents, a disk write completing, a crash, a
/// partition, a client's next request, a replica's timer), and each violation when it is
/// found. Lines are cut at [`EVENT_LOG_LINE_MAX`] characters (values can be 1 MiB).
pub fn run_with_event_log(cfg: &SimConfig, log: Box<dyn std::io::Write>) -> SimOutcome {
    let mut world = World::new(cfg);
    world.event_log = Some(log);
    let fast_paxos = world.fast_paxos;
    world.log_line(format_args!(
        "seed {} replicas {} quorum_leases {} fast_paxos {fast_paxos}",
        cfg.seed,
        cfg.replicas,
        read_mode(cfg) == ReadMode::QuorumLease,
    ));
    world.run();
    world.log_violations(); // the checks made once the run is over
    if let Some(log) = world.event_log.as_mut() {
        let _ = log.flush();
    }
    world.event_log = None;
    world.finish()
}

/// The longest line [`run_with_event_log`] writes (the rest of a line is cut, marked `…`).
pub const EVENT_LOG_LINE_MAX: usize = 400;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Addr {
    Replica(ReplicaId),
    Client(usize),
}

#[derive(Clone, Debug)]
enum Packet {
    Peer(Envelope),
    /// `incarnation`: the client process that sent it (its connection).
    Request {
        client: usize,
        incarnation: u64,
        request: Request,
    },
    Response {
        from: ReplicaId,
        incarnation: u64,
        req_id: u64,
        outcome: Outcome,
    },
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: Addr,
        packet: Packet,
    },
    DiskDone {
        replica: ReplicaId,
        incarnation: u64,
        write_id: u64,
    },
    /// The snapshot the replica's disk is writing is durable (tmp, sync, rename, dir sync).
    SnapshotDone {
        replica: ReplicaId,
        incarnation: u64,
    },
    Crash,
    CrashAll,
    Restart {
        replica: ReplicaId,
        incarnation: u64,
    },
    Pause,
    Resume {
        replica: ReplicaId,
        incarnation: u64,
    },
    DiskStall,
    DiskError,
    PartitionStart,
    PartitionEnd,
    /// Two replicas believe they lead: cut them apart and let each reach a random part of
    /// the rest, some links one way only (the nemesis strikes at a leader change).
    LeaderSplit,
    LeaderSplitEnd,
    /// A handoff partition's cut (`Partition::handoff_first_half`).
    HandoffCut,
    Heal,
    ClientNext {
        client: usize,
    },
    /// A client request held back before it enters the network (Fast Paxos reordering).
    Transmit {
        to: Addr,
        packet: Packet,
    },
    ClientTimer {
        client: usize,
    },
    ConvergenceCheck,
    /// Quorum leases: the workload asks the leader to change the lease configuration.
    LeaseConfig,
    /// The slowed link to a removed holder (`change_lease_config`) is fast again, unless
    /// another partition replaced it meanwhile.
    LeaseLagEnd {
        partition: Partition,
    },
}

struct Scheduled {
    at: Nanos,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The per-seed fault plan (swarm testing: each seed draws its own mix).
struct Plan {
    storm: NetworkFaults,
    crash_every_ms: Option<u64>,
    /// Whole-cluster crashes (power loss of every replica at once).
    crash_all_every_ms: Option<u64>,
    /// SIGSTOP-like pauses, some longer than the election timeout and the lease.
    pause_every_ms: Option<u64>,
    partition_every_ms: Option<u64>,
    /// Partitions of 20–300 ms that mostly follow one another at once (a flapping link or
    /// switch), each drawn anew around whoever leads at that moment.
    partitions_flap: bool,
    disk_latency_ns: (Nanos, Nanos),
    disk_stall_every_ms: Option<u64>,
    /// ENOSPC / EIO now and then: the node must fail loudly, never ack a lost write.
    disk_error_every_ms: Option<u64>,
    fault_phase_ns: Nanos,
    clients: usize,
    keys: u32,
    /// Share of operations that are linearizable reads, in percent. A config store is read
    /// mostly: in read-heavy seeds a new leader may go a long time without writing (without
    /// an Accept that would raise its followers' promises), with only heartbeats behind its
    /// lease.
    read_percent: u32,
    think_ns_max: Nanos,
    /// Puts carry values up to this size (up to the 1 MiB limit in some seeds).
    value_bytes_max: usize,
}

/// One simulated machine: the node (while up), its disk (always), its clock.
struct Host {
    id: ReplicaId,
    node: Option<Node<SimDisk>>,
    disk: Rc<RefCell<DiskState>>,
    incarnation: u64,
    /// Set while paused (SIGSTOP): inputs wait in `inbox` until resumed.
    paused: bool,
    inbox: Vec<(Addr, Packet)>,
    disk_signal: bool,
    /// The flush in progress ends here; writes issued meanwhile join the next flush.
    disk_flush_ends_at: Nanos,
    disk_next_flush_ends_at: Option<Nanos>,
    disk_stalled_until: Nanos,
    clock_offset_ns: Nanos,
    clock_ppm: i64,
    applied_slot: Slot,
    applied_commands: BTreeSet<(u64, u64)>,
    /// Accept writes issued (as the disk saw them), so the vote an Accepted reports can be
    /// attributed to its value.
    issued_accepts: BTreeMap<(Slot, Ballot), Value>,
}

impl Host {
    /// Group commit, as a real WAL does it: a write issued while the disk is idle starts a
    /// flush now; writes issued during a flush all complete together with the next one.
    fn disk_flush_end(&mut self, t: Nanos, latency: Nanos) -> Nanos {
        let t = t.max(self.disk_stalled_until);
        if t >= self.disk_flush_ends_at {
            if let Some(next) = self.disk_next_flush_ends_at.take() {
                if next > t {
                    // The queued flush has started; it is now the one in progress.
                    self.disk_flush_ends_at = next;
                    self.disk_next_flush_ends_at = Some(next + latency);
                    return next + latency;
                }
            }
            self.disk_flush_ends_at = t + latency;
            return self.disk_flush_ends_at;
        }
        *self
            .disk_next_flush_ends_at
            .get_or_insert(self.disk_flush_ends_at + latency)
    }

    /// The replica's own clock (CLOCK_BOOTTIME): offset and a bounded rate error.
    fn local(&self, t: Nanos) -> Nanos {
        let skew = (i128::from(t) * i128::from(self.clock_ppm) / 1_000_000) as i64;
        self.clock_offset_ns + t.saturating_add_signed(skew)
    }

    /// The earliest global time at which the local clock reads at least `local`.
    fn global(&self, local: Nanos) -> Nanos {
        let since = local.saturating_sub(self.clock_offset_ns) as i128;
        let t = since * 1_000_000 / (1_000_000 + i128::from(self.clock_ppm));
        let mut t = t.max(0) as Nanos;
        while self.local(t) < local {
            t += 1;
        }
        t
    }

    fn up(&self) -> bool {
        self.node.is_some()
    }
}

/// A write acknowledged to its client: when, and its (client id, seq).
type AckedWrite = (Nanos, (u64, u64));

/// An operation a simulated client has in flight.
struct ClientOp {
    key: Bytes,
    history_index: usize,
    write: bool,
    /// (client id, seq) once the session gave the write a lane.
    identity: Option<(u64, u64)>,
    /// The write every client makes after healing: it must succeed (liveness).
    after_heal: bool,
}

/// A simulated client: the client library's own sans-IO session (routing, redirects,
/// retries with the same (client id, seq), observed-latency deadlines, giving up), with one
/// or several operations in flight (pipelined lanes).
struct Client {
    id: u64,
    /// Sessions this client has had (a client process restarting gets a new one).
    incarnations: u64,
    session: Session,
    /// Operations kept in flight at once.
    depth: usize,
    ops: BTreeMap<OpId, ClientOp>,
    ops_started: u64,
    known_version: BTreeMap<Bytes, u64>,
    /// The earliest ClientTimer event scheduled and not yet fired.
    timer_at: Option<Nanos>,
}

struct World {
    cfg: SimConfig,
    /// The seed runs Fast Paxos (`protocol_mode`).
    fast_paxos: bool,
    quorum: QuorumSpec,
    rng: ChaCha8Rng,
    now: Nanos,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    plan: Plan,
    faults: NetworkFaults,
    partition: Partition,
    /// Whether two replicas believed they led after the last step.
    leaders_overlap: bool,
    /// A leader-handoff partition in its first half, waiting for a new leader.
    handoff: Option<Handoff>,
    /// A handoff partition (either half) is in force until its `PartitionEnd`.
    handoff_running: bool,
    /// The ballot each replica leads at, as last seen (`check_lease_overlap`).
    leading: Vec<Option<Ballot>>,
    hosts: Vec<Host>,
    clients: Vec<Client>,
    replica_cfgs: Vec<Config>,
    /// Per replica: when it snapshots (small random thresholds, so snapshots, truncation
    /// and transfers happen all the time), how big its transfer chunks are.
    snapshot_policies: Vec<SnapshotPolicy>,
    healed_at: Option<Nanos>,
    done: bool,
    output: Output,

    history: Vec<check::Operation>,
    learned: BTreeMap<Slot, Value>,
    votes: BTreeMap<(Slot, Ballot), (Value, VoteSet)>,
    /// Fast Paxos: per (slot, ballot), each acceptor's vote in that ballot's fast round.
    fast_votes: BTreeMap<(Slot, Ballot), Vec<Option<Value>>>,
    vote_chosen: BTreeMap<Slot, Value>,
    acked_writes: Vec<(u64, u64)>,
    /// Writes a session gave up on as definitely not applied: no replica may ever apply them.
    not_applied_writes: Vec<(u64, u64)>,
    /// Linearizable reads sent, by (client, incarnation, request id): when and for which key.
    reads_sent: BTreeMap<(usize, u64, u64), (Nanos, Bytes)>,
    /// Per key, the writes acknowledged to their clients: (when, (client id, seq)).
    acks_by_key: BTreeMap<Bytes, Vec<AckedWrite>>,
    /// The slot each command was first applied in.
    command_slot: BTreeMap<(u64, u64), Slot>,
    /// History entries of operations that definitely had no effect (failed reads, writes
    /// definitely not applied): left out of the linearizability check.
    history_void: BTreeSet<usize>,
    violations: Vec<Violation>,
    trace: std::collections::hash_map::DefaultHasher,
    /// [`run_with_event_log`]: where each event is written as it is handled.
    event_log: Option<Box<dyn std::io::Write>>,
    /// Violations written to the event log so far.
    violations_logged: usize,
    stats: SimStats,
    /// Quorum leases: how often the workload changes the lease configuration (none: never),
    /// and the stream its draws come from (apart from `rng`, so they shift no other draw).
    lease_config_every_ms: Option<u64>,
    lease_rng: ChaCha8Rng,
}

impl World {
    fn new(cfg: &SimConfig) -> Self {
        assert!(cfg.replicas >= 1);
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let storm = NetworkFaults::random(&mut rng);
        let sometimes = |rng: &mut ChaCha8Rng, p: f64, lo: u64, hi: u64| {
            rng.gen_bool(p).then(|| rng.gen_range(lo..=hi))
        };
        let plan = Plan {
            storm: storm.clone(),
            crash_every_ms: sometimes(&mut rng, 0.7, 100, 2_000),
            crash_all_every_ms: sometimes(&mut rng, 0.15, 500, 3_000),
            pause_every_ms: sometimes(&mut rng, 0.4, 200, 2_000),
            partition_every_ms: sometimes(&mut rng, 0.7, 100, 2_000),
            partitions_flap: rng.gen_bool(0.3),
            disk_latency_ns: {
                // From a fast NVMe to a slow network disk: a slow disk widens the window in
                // which a crash loses state that was (wrongly) already reported.
                let min = rng.gen_range(20_000..=500_000);
                let spread_max = [1_000_000, 5_000_000, 50_000_000][rng.gen_range(0..3)];
                (min, min + rng.gen_range(0..=spread_max))
            },
            disk_stall_every_ms: sometimes(&mut rng, 0.3, 300, 3_000),
            disk_error_every_ms: sometimes(&mut rng, 0.1, 500, 4_000),
            fault_phase_ns: rng.gen_range(1_000..=4_000) * NS_PER_MS,
            clients: rng.gen_range(2..=5),
            keys: rng.gen_range(1..=4),
            read_percent: [35, 35, 35, 80, 95][rng.gen_range(0..5)],
            // Some seeds have slow clients that sit idle for up to a second between
            // operations, and come back with a leader cache that may have gone stale.
            think_ns_max: if rng.gen_bool(0.2) {
                rng.gen_range(100..=1_000) * NS_PER_MS
            } else {
                rng.gen_range(0..=20) * NS_PER_MS
            },
            value_bytes_max: if rng.gen_bool(0.03) {
                VALUE_BYTES_MAX
            } else {
                16
            },
        };
        let mut replica_cfgs = random_replica_configs(&mut rng, cfg);
        let drift_ppm_max = if rng.gen_bool(0.3) {
            // Up to the configured bound: `clock_drift_percent` is how far two replicas'
            // rates may differ, so each may be off by half of it.
            (replica_cfgs[0].clock_drift_percent * 10_000 / 2) as i64
        } else {
            500
        };
        let preload = Preload::random(&mut rng, cfg.replicas);
        if preload.slots > 0 {
            // What the server ships (`server::protocol_config`): catch-up in chunks of 64.
            for c in &mut replica_cfgs {
                c.catchup_batch_max = 64;
            }
        }
        let mut hosts = Vec::new();
        for id in 0..cfg.replicas {
            let mut disk = DiskState::new(WAL_LIMITS, WAL_PENDING_MAX);
            preload.apply(&mut disk, id);
            hosts.push(Host {
                id,
                node: None,
                disk: Rc::new(RefCell::new(disk)),
                incarnation: 0,
                paused: false,
                inbox: Vec::new(),
                disk_signal: false,
                disk_flush_ends_at: 0,
                disk_next_flush_ends_at: None,
                disk_stalled_until: 0,
                // Fast Paxos deadlines are stamped on the clients' clock (the simulator's
                // global one): some seeds keep the replicas' clocks within 2 ms of it, so
                // proposals are held and ordered; the others (up to 1 s ahead) see every
                // deadline in the past and vote at arrival. Scaled, not drawn anew, so the
                // seed's other draws stay put.
                clock_offset_ns: match fast_order_mix(cfg) {
                    (_, true) => rng.gen_range(0..=1_000) * NS_PER_MS / 500,
                    (_, false) => rng.gen_range(0..=1_000) * NS_PER_MS,
                },
                clock_ppm: rng.gen_range(-drift_ppm_max..=drift_ppm_max),
                applied_slot: 0,
                applied_commands: BTreeSet::new(),
                issued_accepts: BTreeMap::new(),
            });
        }
        let clients = (0..plan.clients)
            .map(|i| {
                let id = i as u64 + 1;
                // Some clients pipeline: several writes in flight, one client id per lane.
                let lanes = [1, 1, 1, 2, 3][rng.gen_range(0..5)];
                Client {
                    id,
                    incarnations: 1,
                    session: new_session(cfg, id, 1, lanes, Vec::new()),
                    depth: lanes as usize,
                    ops: BTreeMap::new(),
                    ops_started: 0,
                    known_version: BTreeMap::new(),
                    timer_at: None,
                }
            })
            .collect();
        let snapshot_policies = random_snapshot_policies(cfg);
        let mut world = World {
            snapshot_policies,
            cfg: cfg.clone(),
            fast_paxos: protocol_mode(cfg) == ProtocolMode::FastPaxos,
            quorum: QuorumSpec::new(cfg.replicas),
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            seq: 0,
            faults: storm,
            plan,
            partition: Partition::none(),
            leaders_overlap: false,
            handoff: None,
            handoff_running: false,
            leading: vec![None; cfg.replicas as usize],
            replica_cfgs,
            hosts,
            clients,
            healed_at: None,
            done: false,
            output: Output::default(),
            history: Vec::new(),
            learned: BTreeMap::new(),
            votes: BTreeMap::new(),
            fast_votes: BTreeMap::new(),
            vote_chosen: BTreeMap::new(),
            acked_writes: Vec::new(),
            not_applied_writes: Vec::new(),
            reads_sent: BTreeMap::new(),
            acks_by_key: BTreeMap::new(),
            command_slot: BTreeMap::new(),
            history_void: BTreeSet::new(),
            violations: Vec::new(),
            trace: Default::default(),
            event_log: None,
            violations_logged: 0,
            stats: SimStats::default(),
            lease_config_every_ms: lease_config_every_ms(cfg),
            lease_rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x1ea5_ec0f_0000_0001),
        };
        for id in 0..cfg.replicas {
            world.start_replica(id);
        }
        world.schedule_faults();
        world.schedule_lease_config();
        for client in 0..world.clients.len() {
            world.schedule(0, Event::ClientNext { client });
        }
        let heal_at = world.plan.fault_phase_ns;
        world.schedule(heal_at, Event::Heal);
        world
    }

    fn schedule(&mut self, at: Nanos, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: at.max(self.now),
            seq: self.seq,
            event,
        }));
    }

    /// Schedules the next occurrence of a recurring fault, `every_ms` apart on average.
    fn schedule_every(&mut self, every_ms: Option<u64>, event: Event) {
        if let Some(every_ms) = every_ms {
            let at = self.now + self.rng.gen_range(0..=2 * every_ms) * NS_PER_MS;
            self.schedule(at, event);
        }
    }

    fn schedule_faults(&mut self) {
        self.schedule_every(self.plan.crash_every_ms, Event::Crash);
        self.schedule_every(self.plan.crash_all_every_ms, Event::CrashAll);
        self.schedule_every(self.plan.pause_every_ms, Event::Pause);
        self.schedule_every(self.plan.partition_every_ms, Event::PartitionStart);
        self.schedule_every(self.plan.disk_stall_every_ms, Event::DiskStall);
        self.schedule_every(self.plan.disk_error_every_ms, Event::DiskError);
    }

    /// The next lease configuration change (quorum-lease seeds that have them).
    fn schedule_lease_config(&mut self) {
        if let Some(every_ms) = self.lease_config_every_ms {
            let at = self.now + self.lease_rng.gen_range(0..=2 * every_ms) * NS_PER_MS;
            self.schedule(at, Event::LeaseConfig);
        }
    }

    /// The workload changes the lease configuration: a random holder set (every replica now
    /// and then), proposed by the current leader through its log, while writes go on.
    fn change_lease_config(&mut self) {
        let all = VoteSet::all(self.cfg.replicas).bits();
        let holders = if self.lease_rng.gen_bool(0.2) {
            crate::kv::LEASE_HOLDERS_ALL
        } else {
            self.lease_rng.gen_range(1..=all)
        };
        let leader = self.hosts.iter().position(|h| {
            !h.paused
                && h.node
                    .as_ref()
                    .is_some_and(|n| n.replica().role() == crate::protocol::Role::Leader)
        });
        let Some(id) = leader else {
            return;
        };
        let host = &mut self.hosts[id];
        let now = host.local(self.now);
        let node = host.node.as_mut().expect("a live leader");
        let before = node.replica().lease_holders_configured();
        if !node.propose_lease_holders(now, holders) {
            return;
        }
        self.stats.lease_config_changes += 1;
        self.trace_event(18, id as u64, holders);
        // Half the time a holder being removed hears the leader late for a while: it may go
        // on reading on its grants after the others applied the change (removal must not
        // rely on it keeping up). Only on a link no other partition is using.
        let removed: Vec<ReplicaId> = (0..self.cfg.replicas)
            .filter(|&r| r as usize != id && before.contains(r) && holders & (1 << r) == 0)
            .collect();
        if !removed.is_empty()
            && self.partition == Partition::none()
            && !self.handoff_running
            && self.lease_rng.gen_bool(0.5)
        {
            let victim = removed[self.lease_rng.gen_range(0..removed.len())];
            let extra = self.lease_rng.gen_range(20..=150) * NS_PER_MS;
            self.partition = Partition::slow_link(id as ReplicaId, victim, extra);
            let lasts = self.lease_rng.gen_range(100..=400) * NS_PER_MS;
            let partition = self.partition.clone();
            self.schedule(self.now + lasts, Event::LeaseLagEnd { partition });
        }
        self.drive(id as ReplicaId);
    }

    fn healed(&self) -> bool {
        self.healed_at.is_some()
    }

    // ------------------------------------------------------------------ the loop

    fn run(&mut self) {
        while !self.done {
            let timer = self.next_timer();
            let event_at = self.queue.peek().map(|Reverse(s)| s.at);
            match (timer, event_at) {
                (Some((at, replica)), Some(e)) if at <= e => self.fire_timer(at, replica),
                (Some((at, replica)), None) => self.fire_timer(at, replica),
                (_, Some(_)) => {
                    let Reverse(scheduled) = self.queue.pop().expect("peeked");
                    self.now = scheduled.at;
                    self.stats.events += 1;
                    if self.event_log.is_some() {
                        self.log_line(format_args!("{:?}", scheduled.event));
                    }
                    self.handle(scheduled.event);
                }
                (None, None) => break,
            }
            if self.event_log.is_some() {
                self.log_violations();
            }
            self.watch_leader_overlap();
            self.check_lease_overlap();
            if let Some(healed_at) = self.healed_at {
                if self.now > healed_at + HEAL_DEADLINE_NS {
                    self.report_stuck();
                    break;
                }
            }
        }
        self.stats.sim_time_ms = self.now / NS_PER_MS;
    }

    fn next_timer(&self) -> Option<(Nanos, ReplicaId)> {
        self.hosts
            .iter()
            .filter(|h| !h.paused)
            .filter_map(|h| {
                let due = h.node.as_ref()?.poll_timeout()?;
                Some((h.global(due).max(self.now), h.id))
            })
            .min()
    }

    fn fire_timer(&mut self, at: Nanos, id: ReplicaId) {
        self.now = at;
        self.stats.events += 1;
        self.log_line(format_args!("timer replica {id}"));
        self.trace_event(1, u64::from(id), 0);
        let host = &mut self.hosts[id as usize];
        let now = host.local(at);
        host.node.as_mut().expect("timer of a live node").tick(now);
        self.drive(id);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { to, packet } => self.deliver(to, packet),
            Event::DiskDone {
                replica,
                incarnation,
                write_id,
            } => self.disk_done(replica, incarnation, write_id),
            Event::SnapshotDone {
                replica,
                incarnation,
            } => self.snapshot_done(replica, incarnation),
            Event::Crash => {
                if !self.healed() {
                    let victims = if self.rng.gen_bool(0.2) {
                        self.quorum.classic()
                    } else {
                        1
                    };
                    for _ in 0..victims {
                        self.crash_one();
                    }
                    self.schedule_every(self.plan.crash_every_ms, Event::Crash);
                }
            }
            Event::CrashAll => {
                if !self.healed() {
                    self.stats.cluster_crashes += 1;
                    for id in 0..self.cfg.replicas {
                        self.crash(id);
                    }
                    self.schedule_every(self.plan.crash_all_every_ms, Event::CrashAll);
                }
            }
            Event::Restart {
                replica,
                incarnation,
            } => {
                let host = &self.hosts[replica as usize];
                if !host.up() && host.incarnation == incarnation {
                    self.trace_event(4, u64::from(replica), 0);
                    self.start_replica(replica);
                }
            }
            Event::Pause => {
                if !self.healed() {
                    self.pause_one();
                    self.schedule_every(self.plan.pause_every_ms, Event::Pause);
                }
            }
            Event::Resume {
                replica,
                incarnation,
            } => self.resume(replica, incarnation),
            Event::DiskStall => {
                if !self.healed() {
                    let id = self.rng.gen_range(0..self.cfg.replicas);
                    let lasts = self.rng.gen_range(100..=2_000) * NS_PER_MS;
                    self.stats.disk_stalls += 1;
                    self.trace_event(9, u64::from(id), lasts);
                    let host = &mut self.hosts[id as usize];
                    host.disk_stalled_until = host.disk_stalled_until.max(self.now + lasts);
                    self.schedule_every(self.plan.disk_stall_every_ms, Event::DiskStall);
                }
            }
            Event::DiskError => {
                if !self.healed() {
                    let id = self.rng.gen_range(0..self.cfg.replicas);
                    let eio = self.rng.gen_bool(0.5);
                    self.stats.disk_errors += 1;
                    self.trace_event(10, u64::from(id), u64::from(eio));
                    let mut disk = self.hosts[id as usize].disk.borrow_mut();
                    if eio {
                        disk.armed.eio = true;
                    } else {
                        disk.armed.enospc = true;
                    }
                    drop(disk);
                    self.schedule_every(self.plan.disk_error_every_ms, Event::DiskError);
                }
            }
            Event::PartitionStart => {
                if !self.healed() {
                    let leaders = self.leaders();
                    let live_leaders: Vec<ReplicaId> = leaders
                        .iter()
                        .copied()
                        .filter(|id| !self.hosts[*id as usize].paused)
                        .collect();
                    self.handoff = None;
                    self.handoff_running = false;
                    self.partition = if !live_leaders.is_empty()
                        && self.cfg.replicas >= 5
                        && self.rng.gen_bool(0.3)
                    {
                        let old = live_leaders[self.rng.gen_range(0..live_leaders.len())];
                        let timeout = self.election_timeout_min_ns();
                        let heartbeat = self.replica_cfgs[old as usize].heartbeat_ms * NS_PER_MS;
                        let roles = Handoff::random(
                            &mut self.rng,
                            self.cfg.replicas,
                            old,
                            heartbeat,
                            timeout,
                        );
                        self.stats.handoffs += 1;
                        // The cut follows after a heartbeat or two, whose acks come back
                        // slowly.
                        let cut_at = self.now + self.rng.gen_range(heartbeat..=3 * heartbeat);
                        self.schedule(cut_at, Event::HandoffCut);
                        let first = Partition::handoff_slow_answers(&roles);
                        self.handoff = Some(roles);
                        self.handoff_running = true;
                        first
                    } else if !leaders.is_empty() && self.rng.gen_bool(0.4) {
                        let leader = leaders[self.rng.gen_range(0..leaders.len())];
                        Partition::bridge(&mut self.rng, self.cfg.replicas, leader)
                    } else {
                        Partition::random(&mut self.rng, self.cfg.replicas)
                    };
                    self.stats.partitions += 1;
                    self.trace.write_u64(5);
                    self.partition.hash(&mut self.trace);
                    let lasts = if self.handoff_running {
                        // Long enough for an election and what follows it.
                        self.rng.gen_range(500..=2_000)
                    } else if self.plan.partitions_flap {
                        self.rng.gen_range(20..=300)
                    } else {
                        self.rng.gen_range(50..=2_000)
                    };
                    self.schedule(self.now + lasts * NS_PER_MS, Event::PartitionEnd);
                }
            }
            Event::LeaderSplit => {
                let leaders = self.leaders();
                // A handoff partition (which makes two leaders overlap on purpose) plays out.
                if leaders.len() >= 2 && !self.healed() && !self.handoff_running {
                    self.partition =
                        Partition::between_leaders(&mut self.rng, self.cfg.replicas, &leaders);
                    self.stats.partitions += 1;
                    self.stats.leader_splits += 1;
                    self.trace.write_u64(12);
                    self.partition.hash(&mut self.trace);
                    let lasts = self.rng.gen_range(20..=400) * NS_PER_MS;
                    self.schedule(self.now + lasts, Event::LeaderSplitEnd);
                }
            }
            Event::HandoffCut => {
                if let Some(roles) = self.handoff.as_ref().filter(|_| self.handoff_running) {
                    self.partition = Partition::handoff_first_half(roles);
                    self.trace.write_u64(14);
                    self.partition.hash(&mut self.trace);
                }
            }
            Event::LeaderSplitEnd => {
                if !self.handoff_running {
                    self.partition = Partition::none();
                }
            }
            Event::PartitionEnd => {
                self.handoff = None;
                self.handoff_running = false;
                self.partition = Partition::none();
                if self.plan.partitions_flap && self.rng.gen_bool(0.75) {
                    // Flapping: the next cut follows at once, often around whoever leads now.
                    self.schedule(self.now, Event::PartitionStart);
                } else {
                    self.schedule_every(self.plan.partition_every_ms, Event::PartitionStart);
                }
            }
            Event::Heal => self.heal(),
            Event::ClientNext { client } => self.client_next(client),
            Event::LeaseLagEnd { partition } => {
                if self.partition == partition {
                    self.partition = Partition::none();
                }
            }
            Event::LeaseConfig => {
                if !self.healed() {
                    self.change_lease_config();
                    self.schedule_lease_config();
                }
            }
            Event::Transmit { to, packet } => self.transmit(to, packet),
            Event::ClientTimer { client } => {
                let c = &mut self.clients[client];
                if c.timer_at.is_some_and(|at| at <= self.now) {
                    c.timer_at = None;
                }
                c.session.on_timeout(self.now);
                self.client_poll(client);
            }
            Event::ConvergenceCheck => self.convergence_check(),
        }
    }

    /// Writes the violations found since the last call (as the outcome lists them: a repeat
    /// of the one before is left out).
    fn log_violations(&mut self) {
        for i in self.violations_logged..self.violations.len() {
            if i > 0 && self.violations[i] == self.violations[i - 1] {
                continue;
            }
            let v = self.violations[i].clone();
            self.log_line(format_args!("VIOLATION [{}]: {}", v.check, v.detail));
        }
        self.violations_logged = self.violations.len();
    }

    /// One line of the event log (if there is one): the simulated time, then `what`, cut at
    /// [`EVENT_LOG_LINE_MAX`] characters.
    fn log_line(&mut self, what: std::fmt::Arguments<'_>) {
        use std::io::Write as _;
        let Some(log) = self.event_log.as_mut() else {
            return;
        };
        let mut line = format!("{:>14.6} ms  {what}", self.now as f64 / NS_PER_MS as f64);
        if line.len() > EVENT_LOG_LINE_MAX {
            let mut cut = EVENT_LOG_LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
            line.push('…');
        }
        if writeln!(log, "{line}").is_err() {
            self.event_log = None; // a closed pipe: stop logging, not simulating
        }
    }

    fn trace_event(&mut self, kind: u64, a: u64, b: u64) {
        self.trace.write_u64(self.now);
        self.trace.write_u64(kind);
        self.trace.write_u64(a);
        self.trace.write_u64(b);
    }

    // ------------------------------------------------------------------ hosts

    /// Starts (or restarts) replica `id`: recovery from its disk, exactly as the server does
    /// it, then a node whose timers start now.
    fn start_replica(&mut self, id: ReplicaId) {
        let protocol = self.replica_cfgs[id as usize].clone();
        let t = self.now;
        let observe = true;
        let inject_ack = self.cfg.inject_bug == Some(InjectedBug::StorageAckBeforeDurable);
        let host = &mut self.hosts[id as usize];
        host.incarnation += 1;
        host.paused = false;
        host.inbox.clear();
        host.disk_signal = false;
        host.applied_slot = 0;
        host.applied_commands.clear();
        host.issued_accepts.clear();
        let (durable, restored) = {
            let disk = host.disk.borrow();
            let (promised, entries) = disk.recovered();
            let restored = match disk.snapshot() {
                Some((slot, data)) => Restored::from_snapshot(*slot, data.clone())
                    .expect("the simulated disk holds the snapshot the node wrote"),
                None => Restored::empty(),
            };
            let durable = storage::replay(promised, entries, restored.slot())
                .expect("the simulated disk holds valid records");
            (durable, restored)
        };
        // The snapshot stands for every slot up to its own: the replica applied them.
        let floor = restored.slot();
        host.applied_slot = floor;
        for value in self.learned.range(..=floor).map(|(_, v)| v) {
            for c in value.commands() {
                host.applied_commands.insert((c.client_id, c.seq));
            }
        }
        let storage = Storage::new(SimDisk(host.disk.clone()));
        let node_cfg = NodeConfig {
            replica_id: id,
            group: 0,
            groups: 1,
            protocol,
            limits: Limits::default(),
            backlog_bytes_max: BACKLOG_BYTES_MAX,
            observe,
            inject_ack_before_durable: inject_ack,
            snapshot: self.snapshot_policies[id as usize].clone(),
            wall_clock_offset_ns: 0,
            // As the server runs (its messages leave before its disk writes start).
            send_before_disk: true,
        };
        let metrics = GroupMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
            0,
            self.cfg.replicas,
            id,
        );
        let now = host.local(t);
        host.node = Some(Node::new(
            node_cfg, storage, &durable, restored, now, metrics,
        ));
        self.drive(id);
    }

    fn crash_one(&mut self) {
        let down = self.hosts.iter().filter(|h| !h.up()).count();
        // Up to a majority may be down at once, so quorum loss is exercised too.
        if down >= self.quorum.classic() as usize {
            return;
        }
        // Busy: writes in flight, or a snapshot being written (a crash in the middle of it).
        let busy: Vec<ReplicaId> = self
            .hosts
            .iter()
            .filter(|h| {
                let disk = h.disk.borrow();
                h.up() && (disk.in_flight() > 0 || disk.snapshot_in_progress())
            })
            .map(|h| h.id)
            .collect();
        let all: Vec<ReplicaId> = self.hosts.iter().filter(|h| h.up()).map(|h| h.id).collect();
        let pool = if !busy.is_empty() && self.rng.gen_bool(0.7) {
            busy
        } else {
            all
        };
        if pool.is_empty() {
            return;
        }
        let id = pool[self.rng.gen_range(0..pool.len())];
        self.crash(id);
    }

    /// Kills replica `id`: volatile state is gone; of the writes in flight, a random prefix
    /// reached the disk (never reported), the rest is lost. It restarts later.
    fn crash(&mut self, id: ReplicaId) {
        if !self.hosts[id as usize].up() {
            return;
        }
        self.trace_event(3, u64::from(id), 0);
        self.stats.crashes += 1;
        let in_flight = self.hosts[id as usize].disk.borrow().in_flight();
        let reach = self.rng.gen_range(0..=in_flight);
        let host = &mut self.hosts[id as usize];
        host.node = None;
        host.incarnation += 1;
        host.paused = false;
        host.inbox.clear();
        host.disk.borrow_mut().crash(reach);
        host.disk_flush_ends_at = 0;
        host.disk_next_flush_ends_at = None;
        let incarnation = host.incarnation;
        // Some stay down for seconds: long enough that their peers truncate the slots they
        // miss, so they come back through a snapshot transfer.
        let down_ms = if self.rng.gen_bool(0.15) {
            self.rng.gen_range(1_000..=4_000)
        } else {
            self.rng.gen_range(10..=1_000)
        };
        let restart = self.now + down_ms * NS_PER_MS;
        self.schedule(
            restart,
            Event::Restart {
                replica: id,
                incarnation,
            },
        );
    }

    /// When a second replica starts to believe it leads while the first still does, the
    /// partition nemesis (in seeds that have one) strikes half of the time: the window in
    /// which two leaders overlap is where stickiness and leases must hold.
    fn watch_leader_overlap(&mut self) {
        if self.plan.partition_every_ms.is_none() || self.healed() {
            return;
        }
        if let Some(roles) = &self.handoff {
            let leaders = self.leaders();
            if !leaders.contains(&roles.old) {
                // The old leader stepped down first: the handoff went right.
                self.handoff = None;
            } else if let Some(new) = leaders.iter().copied().find(|id| {
                *id != roles.bridge
                    && *id != roles.turncoat
                    && !self.hosts[*id as usize].paused
                    && self.replica_promised(*id) > self.replica_promised(roles.old)
            }) {
                self.partition = Partition::handoff_second_half(roles, new);
                self.stats.handoff_second_halves += 1;
                self.trace.write_u64(13);
                self.partition.hash(&mut self.trace);
                self.handoff = None;
            }
        }
        let overlapping = self.leaders().len() >= 2;
        if overlapping && !self.leaders_overlap && self.rng.gen_bool(0.8) {
            // Often at once: with check-quorum the window can be a few milliseconds.
            let at = self.now + self.rng.gen_range(0..=2_000_000);
            self.schedule(at, Event::LeaderSplit);
        }
        self.leaders_overlap = overlapping;
    }

    /// The leader-lease argument, checked directly: when a replica is elected, no replica
    /// leading at a lower ballot may still hold its lease (it would serve reads that miss
    /// the new leader's writes). Stronger than waiting for a stale read to be observed: it
    /// fails even when the new leader happens to commit nothing before the old lease ends.
    fn check_lease_overlap(&mut self) {
        for id in 0..self.hosts.len() {
            let ballot = self.hosts[id]
                .node
                .as_ref()
                .and_then(|n| n.replica().leading_ballot());
            if ballot == self.leading[id] {
                continue;
            }
            self.leading[id] = ballot;
            let Some(ballot) = ballot else {
                continue;
            };
            for other in self.hosts.iter().filter(|h| h.id as usize != id) {
                let Some(node) = other.node.as_ref() else {
                    continue;
                };
                let replica = node.replica();
                let older = replica.leading_ballot().is_some_and(|b| b < ballot);
                if older && replica.holds_leader_lease(other.local(self.now)) {
                    let detail = format!(
                        "replica {id} was elected at ballot {ballot:?} at {} ms while replica {} (leading at {:?}) still held its leader lease",
                        self.now / NS_PER_MS,
                        other.id,
                        replica.leading_ballot().expect("leads")
                    );
                    if !self.violations.iter().any(|v| v.check == "lease-overlap") {
                        self.violations.push(Violation {
                            check: "lease-overlap",
                            detail,
                        });
                    }
                }
            }
        }
    }

    /// The highest ballot replica `id` promised (a leader's own ballot), zero when it is down.
    fn replica_promised(&self, id: ReplicaId) -> Ballot {
        self.hosts[id as usize]
            .node
            .as_ref()
            .map_or(Ballot::default(), |n| n.replica().status().promised)
    }

    /// The shortest election timeout of any replica.
    fn election_timeout_min_ns(&self) -> Nanos {
        self.replica_cfgs
            .iter()
            .map(|c| c.election_timeout_min_ms * NS_PER_MS)
            .min()
            .unwrap_or(NS_PER_MS)
    }

    /// The replicas that are up and believe they lead (two may overlap).
    fn leaders(&self) -> Vec<ReplicaId> {
        self.hosts
            .iter()
            .filter(|h| {
                h.node
                    .as_ref()
                    .is_some_and(|n| n.replica().role() == crate::protocol::Role::Leader)
            })
            .map(|h| h.id)
            .collect()
    }

    /// SIGSTOP: the process keeps its state but runs nothing; input queues up. Some pauses
    /// outlast the election timeout and the lease.
    fn pause_one(&mut self) {
        let up: Vec<ReplicaId> = self
            .hosts
            .iter()
            .filter(|h| h.up() && !h.paused)
            .map(|h| h.id)
            .collect();
        if up.is_empty() {
            return;
        }
        // A paused leader is where a pause can hurt (its lease, its clock): favour it.
        let leaders: Vec<ReplicaId> = self
            .leaders()
            .into_iter()
            .filter(|id| up.contains(id))
            .collect();
        let pool = if !leaders.is_empty() && self.rng.gen_bool(0.5) {
            leaders
        } else {
            up
        };
        let id = pool[self.rng.gen_range(0..pool.len())];
        let lasts = self.rng.gen_range(20..=2_000) * NS_PER_MS;
        self.trace_event(11, u64::from(id), lasts);
        self.stats.pauses += 1;
        let host = &mut self.hosts[id as usize];
        host.paused = true;
        if self.cfg.inject_bug == Some(InjectedBug::ClockStopsInSuspend) {
            // The bug: a clock that does not count the suspension (CLOCK_MONOTONIC).
            host.clock_offset_ns = host.clock_offset_ns.saturating_sub(lasts);
        }
        let incarnation = host.incarnation;
        self.schedule(
            self.now + lasts,
            Event::Resume {
                replica: id,
                incarnation,
            },
        );
    }

    /// SIGCONT: like the server's loop after a pause, read everything that arrived before
    /// running the timers that expired meanwhile.
    fn resume(&mut self, id: ReplicaId, incarnation: u64) {
        let host = &self.hosts[id as usize];
        if host.incarnation != incarnation || !host.paused {
            return;
        }
        self.trace_event(12, u64::from(id), 0);
        let host = &mut self.hosts[id as usize];
        host.paused = false;
        let inbox = std::mem::take(&mut host.inbox);
        // The shell reads its sockets in whatever order epoll lists them: each connection's
        // bytes in order, connections interleaved arbitrarily.
        let mut queues: BTreeMap<Addr, std::collections::VecDeque<Packet>> = BTreeMap::new();
        for (_, packet) in inbox {
            let source = match &packet {
                Packet::Peer(envelope) => Addr::Replica(envelope.from),
                Packet::Request { client, .. } => Addr::Client(*client),
                Packet::Response { .. } => unreachable!("responses go to clients"),
            };
            queues.entry(source).or_default().push_back(packet);
        }
        while !queues.is_empty() {
            let pick = self.rng.gen_range(0..queues.len());
            let source = *queues.keys().nth(pick).expect("in range");
            let queue = queues.get_mut(&source).expect("present");
            let packet = queue.pop_front().expect("queues are never empty");
            if queue.is_empty() {
                queues.remove(&source);
            }
            self.arrive(Addr::Replica(id), packet);
        }
        let host = &mut self.hosts[id as usize];
        if host.disk_signal {
            host.disk_signal = false;
            let now = host.local(self.now);
            if let Some(node) = host.node.as_mut() {
                node.on_disk(now);
            }
        }
        self.drive(id);
    }

    fn snapshot_done(&mut self, id: ReplicaId, incarnation: u64) {
        if self.hosts[id as usize].incarnation != incarnation {
            return; // The crash came first: the snapshot is a leftover tmp file.
        }
        self.trace_event(16, u64::from(id), 0);
        let host = &mut self.hosts[id as usize];
        host.disk.borrow_mut().complete_snapshot();
        if host.paused {
            host.disk_signal = true;
            return;
        }
        let now = host.local(self.now);
        if let Some(node) = host.node.as_mut() {
            node.on_disk(now);
        }
        self.drive(id);
    }

    fn disk_done(&mut self, id: ReplicaId, incarnation: u64, write_id: u64) {
        if self.hosts[id as usize].incarnation != incarnation {
            return; // The write died with the crash.
        }
        self.trace_event(2, u64::from(id), write_id);
        let host = &mut self.hosts[id as usize];
        host.disk.borrow_mut().complete(write_id);
        if host.paused {
            host.disk_signal = true;
            return;
        }
        let now = host.local(self.now);
        if let Some(node) = host.node.as_mut() {
            node.on_disk(now);
        }
        self.drive(id);
    }

    /// Drives the node and carries out what it asks, like the server's shell does.
    fn drive(&mut self, id: ReplicaId) {
        let t = self.now;
        let (lo, hi) = self.plan.disk_latency_ns;
        let latency = self.rng.gen_range(lo..=hi);
        let host = &mut self.hosts[id as usize];
        if host.paused {
            return;
        }
        let now = host.local(t);
        let Some(node) = host.node.as_mut() else {
            return;
        };
        let was_failed = node.failed().is_some();
        node.drive(now);
        let mut output = std::mem::take(&mut self.output);
        node.take_output(&mut output);
        // The shell's order: the output goes out, then the disk writes start.
        if node.submit_disk(now) {
            let mut more = Output::default();
            node.take_output(&mut more);
            output.messages.append(&mut more.messages);
            output.replies.append(&mut more.replies);
        }
        let newly_failed = match node.failed() {
            Some(why) if !was_failed => Some(why.to_string()),
            _ => None,
        };
        if let Some(why) = newly_failed {
            // Only an injected disk fault may stop a node; anything else (a WAL limit, a
            // safety violation the replica detected) is a bug.
            if why.starts_with("protocol:") {
                self.violations.push(Violation {
                    check: "agreement",
                    detail: format!("replica {id} stopped: {why}"),
                });
            } else if !why.contains("EIO") && !why.contains("full") {
                self.violations.push(Violation {
                    check: "node-failed",
                    detail: format!("replica {id} stopped: {why}"),
                });
            }
        }
        let host = &mut self.hosts[id as usize];
        // The disk's view of what the node wrote: schedule completions (group commit) and
        // remember which value each Accept wrote, for the vote count.
        let submitted = host.disk.borrow_mut().take_submitted();
        let incarnation = host.incarnation;
        let mut done = Vec::new();
        for (write_id, accepts) in submitted {
            for (slot, ballot, value) in accepts {
                host.issued_accepts.insert((slot, ballot), value);
            }
            done.push((host.disk_flush_end(t, latency), write_id));
        }
        let snapshot_started = host.disk.borrow_mut().take_snapshot_submitted();
        for (at, write_id) in done {
            self.schedule(
                at,
                Event::DiskDone {
                    replica: id,
                    incarnation,
                    write_id,
                },
            );
        }
        if snapshot_started {
            // Writing a file, syncing it, renaming it and syncing the directory: a few disk
            // round trips, sometimes many (a crash then often lands in the middle).
            let at = t + latency * self.rng.gen_range(2..=40);
            self.schedule(
                at,
                Event::SnapshotDone {
                    replica: id,
                    incarnation,
                },
            );
        }
        if let Some(slot) = output.installed.take() {
            self.observe_installed(id, slot);
        }
        for envelope in output.self_messages.drain(..) {
            self.observe_vote(id, &envelope);
        }
        for envelope in output.messages.drain(..) {
            self.observe_vote(id, &envelope);
            self.send_peer(envelope);
        }
        for (slot, value) in output.applied.drain(..) {
            self.observe_applied(id, slot, value);
        }
        for reply in output.replies.drain(..) {
            let client = (reply.conn & 0xffff_ffff) as usize;
            if let Outcome::Get { .. } = &reply.outcome {
                self.check_read_freshness(id, client, reply.conn >> 32, reply.req_id);
            }
            if reply.conn >> 32 != self.clients[client].incarnations {
                continue; // That client process is gone, and its connection with it.
            }
            self.transmit(
                Addr::Client(client),
                Packet::Response {
                    from: id,
                    incarnation: reply.conn >> 32,
                    req_id: reply.req_id,
                    outcome: reply.outcome,
                },
            );
        }
        self.output = output;
    }

    /// Check (i): a linearizable read is answered from a state that holds every write to its
    /// key acknowledged before the read was sent — whether or not its client still waits for
    /// the answer (a late answer to a retried read is dropped by the client, so the history
    /// alone would not show it).
    fn check_read_freshness(
        &mut self,
        id: ReplicaId,
        client: usize,
        incarnation: u64,
        req_id: u64,
    ) {
        let Some((sent_at, key)) = self.reads_sent.remove(&(client, incarnation, req_id)) else {
            return;
        };
        let host = &self.hosts[id as usize];
        if host
            .node
            .as_ref()
            .is_some_and(|n| n.replica().role() != crate::protocol::Role::Leader)
        {
            self.stats.follower_reads += 1;
        }
        let applied = self.hosts[id as usize].applied_slot;
        let Some(acks) = self.acks_by_key.get(&key) else {
            return;
        };
        let missed = acks
            .iter()
            .take_while(|(at, _)| *at < sent_at)
            .filter_map(|(_, w)| self.command_slot.get(w).map(|slot| (*slot, *w)))
            .find(|(slot, _)| *slot > applied);
        if let Some((slot, w)) = missed {
            self.violations.push(Violation {
                check: "stale-read",
                detail: format!(
                    "replica {id} answered a read of {} from applied slot {applied}, but client {} seq {} (slot {slot}) was acknowledged before the read was sent",
                    String::from_utf8_lossy(&key),
                    w.0,
                    w.1
                ),
            });
        }
    }

    fn observe_vote(&mut self, id: ReplicaId, envelope: &Envelope) {
        if let Message::Accepted { ballot, slot, .. } = envelope.msg {
            let host = &self.hosts[id as usize];
            if let Some(value) = host.issued_accepts.get(&(slot, ballot)).cloned() {
                self.count_vote(id, slot, ballot, value);
            }
        }
        if let Message::Voted {
            ballot,
            slot,
            value,
        } = &envelope.msg
        {
            // Sent to every replica: count it once, on its way to the first of them.
            if envelope.to == 0 || (envelope.to == 1 && id == 0) {
                self.count_fast_vote(id, *slot, *ballot, value.clone());
            }
        }
    }

    /// Check (a) for fast rounds: an acceptor votes at most once per (slot, fast round), and a
    /// value with a fast quorum of votes there is chosen (and must agree with every other way
    /// the slot was decided).
    fn count_fast_vote(&mut self, voter: ReplicaId, slot: Slot, ballot: Ballot, value: Value) {
        let n = self.cfg.replicas as usize;
        let votes = self
            .fast_votes
            .entry((slot, ballot))
            .or_insert_with(|| vec![None; n]);
        match &votes[voter as usize] {
            Some(old) if *old != value => {
                self.violations.push(Violation {
                    check: "agreement",
                    detail: format!(
                        "slot {slot} ballot {ballot}: replica {voter} voted twice in the fast round ({} then {})",
                        describe(old),
                        describe(&value)
                    ),
                });
                return;
            }
            _ => votes[voter as usize] = Some(value.clone()),
        }
        let count = votes.iter().filter(|v| v.as_ref() == Some(&value)).count() as u32;
        if count < self.quorum.fast() {
            return;
        }
        self.vote_chose(slot, ballot, value, "a fast quorum voted");
    }

    /// A quorum's votes chose `value` at `slot`: it must be the value chosen there before, if
    /// any (`how`: which quorum, for the report).
    fn vote_chose(&mut self, slot: Slot, ballot: Ballot, value: Value, how: &str) {
        match self.vote_chosen.get(&slot) {
            Some(chosen) if *chosen != value => self.violations.push(Violation {
                check: "agreement",
                detail: format!(
                    "slot {slot}: {how} {} at ballot {ballot}, but {} was chosen before",
                    describe(&value),
                    describe(chosen)
                ),
            }),
            Some(_) => {}
            None => {
                self.vote_chosen.insert(slot, value);
            }
        }
    }

    /// Check (a), from the acceptors' side: count the votes each (slot, ballot) actually got.
    fn count_vote(&mut self, voter: ReplicaId, slot: Slot, ballot: Ballot, value: Value) {
        let entry = self
            .votes
            .entry((slot, ballot))
            .or_insert((value.clone(), VoteSet::EMPTY));
        if entry.0 != value {
            self.violations.push(Violation {
                check: "agreement",
                detail: format!("slot {slot} ballot {ballot}: two values accepted at one ballot"),
            });
            return;
        }
        entry.1.insert(voter);
        if !self.quorum.is_chosen(entry.1, VoteSet::EMPTY) {
            return;
        }
        self.vote_chose(slot, ballot, value, "a majority accepted");
    }

    /// Replica `id` installed a peer's snapshot at `slot`: its state jumped over the slots up
    /// to it. Whether that state is right is for the later checks (applied values, the
    /// converged states' digests, lost writes, linearizability) to say.
    fn observe_installed(&mut self, id: ReplicaId, slot: Slot) {
        self.trace_event(17, u64::from(id), slot);
        self.stats.snapshots_installed += 1;
        let host = &mut self.hosts[id as usize];
        if slot <= host.applied_slot {
            self.violations.push(Violation {
                check: "applied-order",
                detail: format!(
                    "replica {id} installed a snapshot at slot {slot} after applying slot {}",
                    host.applied_slot
                ),
            });
        }
        host.applied_slot = slot;
        for value in self.learned.range(..=slot).map(|(_, v)| v) {
            for c in value.commands() {
                host.applied_commands.insert((c.client_id, c.seq));
            }
        }
    }

    fn observe_applied(&mut self, id: ReplicaId, slot: Slot, value: Value) {
        // Check (a), learner side, and (b): applied in order, each slot's one chosen value.
        match self.learned.get(&slot) {
            Some(first) if *first != value => self.violations.push(Violation {
                check: "agreement",
                detail: format!(
                    "slot {slot}: replica {id} applied {} but another replica applied {}",
                    describe(&value),
                    describe(first)
                ),
            }),
            Some(_) => {}
            None => {
                self.learned.insert(slot, value.clone());
            }
        }
        if let Some(voted) = self.vote_chosen.get(&slot) {
            if *voted != value {
                self.violations.push(Violation {
                    check: "agreement",
                    detail: format!(
                        "slot {slot}: replica {id} applied {} but the acceptors chose {}",
                        describe(&value),
                        describe(voted)
                    ),
                });
            }
        }
        self.trace_event(6, u64::from(id), slot);
        let host = &mut self.hosts[id as usize];
        if slot != host.applied_slot + 1 {
            self.violations.push(Violation {
                check: "applied-order",
                detail: format!(
                    "replica {id} applied slot {slot} after slot {}",
                    host.applied_slot
                ),
            });
        }
        host.applied_slot = slot;
        for command in value.commands() {
            host.applied_commands
                .insert((command.client_id, command.seq));
            self.command_slot
                .entry((command.client_id, command.seq))
                .or_insert(slot);
        }
        self.stats.slots_committed = self.stats.slots_committed.max(slot);
    }

    // ------------------------------------------------------------------ network

    fn send_peer(&mut self, envelope: Envelope) {
        let to = envelope.to;
        self.stats.messages_sent += 1;
        if let Some(bytes) = oversized(&envelope.msg) {
            // The real shell cannot encode it and drops it: a bug to prevent, not to survive.
            // Reported once per run.
            if self
                .violations
                .iter()
                .any(|v| v.check == "oversized-message")
            {
                self.stats.messages_dropped += 1;
                return;
            }
            self.violations.push(Violation {
                check: "oversized-message",
                detail: format!(
                    "replica {} sent a {} of about {bytes} bytes to replica {to}, over the {PEER_FRAME_MAX_BYTES}-byte frame limit",
                    envelope.from,
                    envelope.msg.kind()
                ),
            });
            self.stats.messages_dropped += 1;
            return;
        }
        if self.partition.blocks(envelope.from, to) {
            self.stats.messages_dropped += 1;
            return;
        }
        let extra = self.partition.extra_delay(envelope.from, to);
        self.transmit_after(extra, Addr::Replica(to), Packet::Peer(envelope));
    }

    /// Sends over the faulty network: maybe dropped, maybe duplicated, randomly delayed.
    fn transmit(&mut self, to: Addr, packet: Packet) {
        self.transmit_after(0, to, packet);
    }

    /// `transmit` over a link slowed by `extra` on top of the seed's delay range.
    fn transmit_after(&mut self, extra: Nanos, to: Addr, packet: Packet) {
        if self.rng.gen_range(0..1_000_000) < self.faults.drop_ppm {
            self.stats.messages_dropped += 1;
            return;
        }
        let copies = if self.rng.gen_range(0..1_000_000) < self.faults.duplicate_ppm {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self
                .rng
                .gen_range(self.faults.delay_min_ns..=self.faults.delay_max_ns);
            self.schedule(
                self.now + extra + delay,
                Event::Deliver {
                    to,
                    packet: packet.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, to: Addr, packet: Packet) {
        if let Packet::Peer(envelope) = &packet {
            // A link cut while a message was on it loses the message.
            if self.partition.blocks(envelope.from, envelope.to) {
                self.stats.messages_dropped += 1;
                return;
            }
        }
        self.arrive(to, packet);
    }

    /// A packet reaches its destination (a paused process's socket buffer keeps it).
    fn arrive(&mut self, to: Addr, packet: Packet) {
        if let Addr::Replica(id) = to {
            let host = &mut self.hosts[id as usize];
            if !host.up() {
                return;
            }
            if host.paused {
                host.inbox.push((to, packet));
                return;
            }
        }
        match (to, packet) {
            (Addr::Replica(id), Packet::Peer(envelope)) => {
                self.trace.write_u64(self.now);
                envelope.hash(&mut self.trace);
                let host = &mut self.hosts[id as usize];
                let now = host.local(self.now);
                host.node.as_mut().expect("up").on_peer(now, envelope);
                self.drive(id);
            }
            (
                Addr::Replica(id),
                Packet::Request {
                    client,
                    incarnation,
                    request,
                },
            ) => {
                self.trace_event(7, u64::from(id), request.id);
                let host = &mut self.hosts[id as usize];
                let now = host.local(self.now);
                // The connection: this client process's incarnation, so replies to an earlier
                // incarnation's connection are dropped as the closed socket would drop them.
                let conn = client as u64 | (incarnation << 32);
                let host = &mut self.hosts[id as usize];
                host.node
                    .as_mut()
                    .expect("up")
                    .on_request(now, conn, request);
                self.drive(id);
            }
            (
                Addr::Client(client),
                Packet::Response {
                    from,
                    incarnation,
                    req_id,
                    outcome,
                },
            ) => {
                self.trace_event(8, client as u64, req_id);
                if incarnation != self.clients[client].incarnations {
                    return;
                }
                self.clients[client]
                    .session
                    .on_reply(self.now, from, 0, req_id, outcome);
                self.client_poll(client);
            }
            (to, packet) => unreachable!("{packet:?} routed to {to:?}"),
        }
    }

    // ------------------------------------------------------------------ clients

    fn random_value(&mut self, tag: String) -> Bytes {
        let max = self.plan.value_bytes_max;
        if max <= 16 || self.rng.gen_bool(0.5) {
            return Bytes::from(tag);
        }
        let len = self.rng.gen_range(tag.len()..=max);
        let mut v = tag.into_bytes();
        v.resize(len, b'.');
        Bytes::from(v)
    }

    /// Starts operations until the client has `depth` in flight.
    fn client_next(&mut self, client: usize) {
        if !self.healed() && self.clients[client].ops.is_empty() && self.rng.gen_bool(0.05) {
            self.client_reconnect(client);
        }
        while !self.healed() && self.clients[client].ops.len() < self.clients[client].depth {
            self.client_start(client);
        }
        self.client_poll(client);
    }

    /// The client process restarts: a new session (new client ids) that learns the leader
    /// from whichever replica it reaches first — possibly a stale belief, as a real client's
    /// topology from a replica that has not heard of the new leader yet.
    fn client_reconnect(&mut self, client: usize) {
        let first = self.rng.gen_range(0..self.cfg.replicas);
        let leader = self.hosts[first as usize]
            .node
            .as_ref()
            .and_then(|n| n.leader());
        let c = &mut self.clients[client];
        c.incarnations += 1;
        let id = c.id | (c.incarnations << 32);
        let lanes = c.depth as u32;
        let incarnations = c.incarnations;
        c.session = new_session(&self.cfg, id, incarnations, lanes, vec![leader]);
        self.trace_event(14, client as u64, incarnations);
    }

    /// After healing, every client makes one more write, which must succeed.
    fn client_after_heal(&mut self, client: usize) {
        let key = Bytes::from("k0");
        let c = &mut self.clients[client];
        c.ops_started += 1;
        let value = Bytes::from(format!("c{}n{}", c.id, c.ops_started));
        self.history.push(check::Operation {
            client: c.id,
            key: key.to_vec(),
            call: check::Call::Put {
                value: value.to_vec(),
            },
            ret: None,
            invoke_ns: self.now,
            complete_ns: 0,
        });
        let id = c.session.start(
            self.now,
            Op::Put {
                key: key.clone(),
                value,
            },
        );
        c.ops.insert(
            id,
            ClientOp {
                key,
                history_index: self.history.len() - 1,
                write: true,
                identity: None,
                after_heal: true,
            },
        );
        self.stats.ops_issued += 1;
        self.client_poll(client);
    }

    fn client_start(&mut self, client: usize) {
        let key = Bytes::from(format!("k{}", self.rng.gen_range(0..self.plan.keys)));
        let roll = self.rng.gen_range(0..100);
        let c = &mut self.clients[client];
        c.ops_started += 1;
        let tag = format!("c{}n{}", c.id, c.ops_started);
        let reads = self.plan.read_percent;
        let writes = 100 - reads;
        let (call, op) = if roll < reads {
            (
                check::Call::Get,
                Op::Get {
                    key: key.clone(),
                    linearizable: true,
                },
            )
        } else {
            let value = self.random_value(tag);
            let c = &mut self.clients[client];
            if roll < reads + writes / 2 {
                (
                    check::Call::Put {
                        value: value.to_vec(),
                    },
                    Op::Put {
                        key: key.clone(),
                        value,
                    },
                )
            } else if roll < reads + writes * 3 / 4 {
                let guess = c.known_version.get(&key).copied().unwrap_or(0);
                let expected_version = if self.rng.gen_bool(0.8) {
                    guess
                } else {
                    self.rng.gen_range(0..=3)
                };
                (
                    check::Call::Cas {
                        expected_version,
                        value: value.to_vec(),
                    },
                    Op::Cas {
                        key: key.clone(),
                        expected_version,
                        value,
                    },
                )
            } else {
                (check::Call::Delete, Op::Delete { key: key.clone() })
            }
        };
        let c = &mut self.clients[client];
        self.history.push(check::Operation {
            client: c.id,
            key: key.to_vec(),
            call,
            ret: None,
            invoke_ns: self.now,
            complete_ns: 0,
        });
        let write = !matches!(op, Op::Get { .. });
        let id = c.session.start(self.now, op);
        c.ops.insert(
            id,
            ClientOp {
                key,
                history_index: self.history.len() - 1,
                write,
                identity: None,
                after_heal: false,
            },
        );
        self.stats.ops_issued += 1;
    }

    /// Does what the session asks after an input: send its requests, finish completed
    /// operations, keep its timer scheduled.
    fn client_poll(&mut self, client: usize) {
        loop {
            let c = &mut self.clients[client];
            let mut transmits = Vec::new();
            while let Some(t) = c.session.poll_transmit() {
                transmits.push(t);
            }
            for (id, op) in c.ops.iter_mut() {
                if op.write && op.identity.is_none() {
                    op.identity = c.session.write_identity(*id);
                }
            }
            if transmits.is_empty() {
                break;
            }
            for t in transmits {
                if !self.hosts[t.replica as usize].up() {
                    // Connection refused: the request was never written. The session may
                    // answer with another transmit, sent on the next pass.
                    self.clients[client].session.on_send_failed(
                        self.now,
                        t.request.id,
                        "connection refused",
                    );
                    continue;
                }
                if let Op::Get {
                    key,
                    linearizable: true,
                } = &t.request.op
                {
                    let incarnation = self.clients[client].incarnations;
                    self.reads_sent
                        .insert((client, incarnation, t.request.id), (self.now, key.clone()));
                }
                let packet = Packet::Request {
                    client,
                    incarnation: self.clients[client].incarnations,
                    request: t.request,
                };
                if self.fast_paxos && self.rng.gen_bool(0.25) {
                    // Fast Paxos: hold some copies of a write back, so replicas see concurrent
                    // clients' commands in different orders and their votes collide.
                    let hold = self.rng.gen_range(0..=5 * NS_PER_MS);
                    let at = self.now + hold;
                    self.schedule(
                        at,
                        Event::Transmit {
                            to: Addr::Replica(t.replica),
                            packet,
                        },
                    );
                    continue;
                }
                self.transmit(Addr::Replica(t.replica), packet);
            }
        }
        let mut finished = false;
        while let Some((id, result)) = self.clients[client].session.poll_complete() {
            self.client_complete(client, id, result);
            finished = true;
        }
        let c = &mut self.clients[client];
        if let Some(at) = c.session.poll_timeout() {
            if !c.timer_at.is_some_and(|t| at >= t) {
                c.timer_at = Some(at);
                self.schedule(at, Event::ClientTimer { client });
            }
        }
        if finished {
            let think = self.rng.gen_range(0..=self.plan.think_ns_max);
            self.schedule(self.now + think, Event::ClientNext { client });
        }
    }

    fn client_complete(&mut self, client: usize, id: OpId, result: Result<Outcome, SessionError>) {
        let c = &mut self.clients[client];
        let Some(op) = c.ops.remove(&id) else {
            return;
        };
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                if op.after_heal {
                    // Its deadline may be shorter than a recovery: try again. A cluster that
                    // never serves it again fails the heal deadline (liveness).
                    self.trace_event(15, client as u64, id.0);
                    self.history_void.insert(op.history_index);
                    if !e.maybe_applied() {
                        if let Some(identity) = op.identity {
                            self.not_applied_writes.push(identity);
                        }
                    } else {
                        // An unknown outcome stays in the history as an open operation.
                        self.history_void.remove(&op.history_index);
                    }
                    self.client_after_heal(client);
                    return;
                }
                // Gave up. Unknown: the history keeps it open (it may have taken effect).
                // Definitely not applied: it had no effect, and no replica may ever apply it.
                if !e.maybe_applied() {
                    self.history_void.insert(op.history_index);
                    if let Some(identity) = op.identity {
                        self.not_applied_writes.push(identity);
                    }
                }
                return;
            }
        };
        let ret = match outcome {
            Outcome::Get { value, version, .. } => check::Ret::Get {
                value: value.map(|v| v.to_vec()),
                version,
            },
            Outcome::Put { version, .. } => check::Ret::Put { version },
            Outcome::Delete { existed, .. } => check::Ret::Delete { existed },
            Outcome::Cas { ok, version, .. } => check::Ret::Cas { ok, version },
            other => {
                self.violations.push(Violation {
                    check: "linearizability",
                    detail: format!("client {} got an impossible reply {other:?}", c.id),
                });
                return;
            }
        };
        let version_seen = match &ret {
            check::Ret::Get { version, .. }
            | check::Ret::Put { version }
            | check::Ret::Cas { version, .. } => *version,
            check::Ret::Delete { .. } => 0,
        };
        c.known_version.insert(op.key.clone(), version_seen);
        if op.write {
            match op.identity {
                Some(identity) => {
                    self.acked_writes.push(identity);
                    self.acks_by_key
                        .entry(op.key.clone())
                        .or_default()
                        .push((self.now, identity));
                }
                None => self.violations.push(Violation {
                    check: "lost-write",
                    detail: format!("client {} acknowledged a write it never sent", c.id),
                }),
            }
        }
        let entry = &mut self.history[op.history_index];
        entry.ret = Some(ret);
        entry.complete_ns = self.now;
        self.stats.ops_completed += 1;
        if op.after_heal {
            let healed_at = self.healed_at.expect("after healing");
            self.stats.heal_to_served_ms = (self.now - healed_at) / NS_PER_MS;
        }
    }

    // ------------------------------------------------------------------ heal and finish

    fn heal(&mut self) {
        self.healed_at = Some(self.now);
        self.partition = Partition::none();
        self.faults = self.plan.storm.calm();
        for id in 0..self.cfg.replicas {
            let host = &mut self.hosts[id as usize];
            host.disk_stalled_until = host.disk_stalled_until.min(self.now);
            host.disk.borrow_mut().armed = Default::default();
            let incarnation = host.incarnation;
            if host.paused {
                self.resume(id, incarnation);
            }
            // A node that stopped on a disk error is restarted by its operator.
            let failed = self.hosts[id as usize]
                .node
                .as_ref()
                .is_some_and(|n| n.failed().is_some());
            if failed {
                self.crash(id);
            }
            if !self.hosts[id as usize].up() {
                self.start_replica(id);
            }
        }
        for client in 0..self.clients.len() {
            self.client_after_heal(client);
        }
        self.schedule(self.now + CONVERGENCE_CHECK_NS, Event::ConvergenceCheck);
    }

    fn clients_idle(&self) -> bool {
        self.clients.iter().all(|c| c.ops.is_empty())
    }

    fn converged(&self) -> bool {
        let statuses: Vec<_> = self
            .hosts
            .iter()
            .filter_map(|h| h.node.as_ref().map(|n| n.replica().status()))
            .collect();
        if statuses.len() != self.hosts.len() {
            return false;
        }
        let commit_max = statuses.iter().map(|s| s.commit).max().unwrap_or(0);
        statuses.iter().all(|s| s.applied == commit_max)
    }

    fn convergence_check(&mut self) {
        if self.clients_idle() && self.converged() {
            self.done = true;
            self.final_checks();
            return;
        }
        self.schedule(self.now + CONVERGENCE_CHECK_NS, Event::ConvergenceCheck);
    }

    fn report_stuck(&mut self) {
        let pending: Vec<String> = self
            .clients
            .iter()
            .flat_map(|c| {
                c.ops
                    .keys()
                    .map(move |id| format!("client {} op {}", c.id, id.0))
            })
            .collect();
        let statuses: Vec<String> = self
            .hosts
            .iter()
            .filter_map(|h| {
                h.node
                    .as_ref()
                    .map(|n| format!("{:?} failed={:?}", n.replica().status(), n.failed()))
            })
            .collect();
        self.violations.push(Violation {
            check: "liveness",
            detail: format!(
                "not done {} ms after healing; pending: [{}]; replicas: [{}]",
                HEAL_DEADLINE_NS / NS_PER_MS,
                pending.join(", "),
                statuses.join("; ")
            ),
        });
    }

    fn final_checks(&mut self) {
        // (d) No acknowledged write is lost: every replica has applied every one.
        for host in &self.hosts {
            if let Some(missing) = self
                .acked_writes
                .iter()
                .find(|w| !host.applied_commands.contains(w))
            {
                self.violations.push(Violation {
                    check: "lost-write",
                    detail: format!(
                        "replica {} never applied acknowledged write client {} seq {}",
                        host.id, missing.0, missing.1
                    ),
                });
            }
        }
        // (d') A write its client was told was definitely not applied never is.
        for host in &self.hosts {
            if let Some(w) = self
                .not_applied_writes
                .iter()
                .find(|w| host.applied_commands.contains(w))
            {
                self.violations.push(Violation {
                    check: "not-applied-was-applied",
                    detail: format!(
                        "replica {} applied client {} seq {}, a write its client gave up on as definitely not applied",
                        host.id, w.0, w.1
                    ),
                });
            }
        }
        // (f) Converged replicas hold equal state.
        let digests: Vec<u64> = self
            .hosts
            .iter()
            .map(|h| h.node.as_ref().map_or(0, |n| n.kv().digest()))
            .collect();
        if digests.iter().any(|d| *d != digests[0]) {
            self.violations.push(Violation {
                check: "convergence",
                detail: format!(
                    "kv states differ at applied slots {:?}",
                    self.hosts
                        .iter()
                        .map(|h| h.applied_slot)
                        .collect::<Vec<_>>()
                ),
            });
        }
        // (c) The client history is linearizable.
        let history: Vec<check::Operation> = self
            .history
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.history_void.contains(i))
            .map(|(_, op)| op.clone())
            .collect();
        match check::check_with_budget(&history, CHECK_STEPS_MAX) {
            check::Outcome::Linearizable => {}
            check::Outcome::NotLinearizable(violation) => self.violations.push(Violation {
                check: "linearizability",
                detail: violation.to_string(),
            }),
            check::Outcome::Unknown { key, reason } => self.violations.push(Violation {
                check: "linearizability",
                detail: format!(
                    "undecided for key {}: {reason}",
                    String::from_utf8_lossy(&key)
                ),
            }),
        }
    }

    fn finish(mut self) -> SimOutcome {
        for host in &self.hosts {
            if let Some(node) = &host.node {
                let c = node.replica().fast_counters();
                self.stats.fast_chosen += c.fast_chosen;
                self.stats.fast_collisions += c.collisions;
                self.stats.fast_timeouts += c.timeouts;
                self.stats.fast_mode_switches += c.mode_switches;
                self.stats.fast_held += c.held;
                self.stats.fast_late += c.late;
            }
        }
        self.stats.snapshots = self
            .hosts
            .iter()
            .map(|h| h.disk.borrow().snapshots_written)
            .sum();
        let trace_hash = self.trace.finish();
        self.violations.dedup();
        SimOutcome {
            seed: self.cfg.seed,
            violations: self.violations,
            trace_hash,
            stats: self.stats,
            quorum_leases: read_mode(&self.cfg) == ReadMode::QuorumLease,
            fast_paxos: protocol_mode(&self.cfg) == ProtocolMode::FastPaxos,
        }
    }
}

/// The encoded size of a message that could exceed the peer frame limit, if it does. Only
/// messages that carry many values are measured.
fn oversized(msg: &Message) -> Option<usize> {
    let values: Box<dyn Iterator<Item = &Value>> = match msg {
        Message::Promise { entries, .. } => Box::new(entries.iter().map(|e| &e.value)),
        Message::CatchupReply { entries, .. } => Box::new(entries.iter().map(|(_, v)| v)),
        _ => return None,
    };
    let bytes: usize = values
        .map(|v| {
            32 + v
                .commands()
                .iter()
                .map(|c| c.payload.len() + 32)
                .sum::<usize>()
        })
        .sum();
    (bytes > PEER_FRAME_MAX_BYTES).then_some(bytes)
}

/// A log the cluster already holds when the run starts (some seeds): many small slots (a
/// long-lived cluster; replicas do not know the last few dozen are chosen) or a few huge
/// ones (1 MiB values) accepted and never known chosen. Every slot is accepted at one old
/// ballot on every replica, so the preload itself is consistent: what a whole-cluster restart
/// finds on disk.
struct Preload {
    slots: u64,
    value_bytes: usize,
    /// Per replica: how many leading slots it knows are chosen.
    known_chosen: Vec<u64>,
}

impl Preload {
    fn random(rng: &mut ChaCha8Rng, replicas: u32) -> Preload {
        let roll = rng.gen_range(0..1000);
        let (slots, value_bytes) = if roll < 4 {
            (rng.gen_range(100_000..=120_000), 8)
        } else if roll < 6 && replicas <= 5 {
            // 70 MiB of log: more than one peer frame holds.
            (rng.gen_range(70..=75), VALUE_BYTES_MAX)
        } else {
            (0, 0)
        };
        let known_chosen = (0..replicas)
            .map(|_| {
                if value_bytes > 8 || slots == 0 {
                    0
                } else {
                    // Since the commit point is persisted with each Accept, what a replica
                    // knows chosen lags the log by about a pipeline, not by thousands.
                    slots - rng.gen_range(0..=32) - rng.gen_range(0..=64)
                }
            })
            .collect();
        Preload {
            slots,
            value_bytes,
            known_chosen,
        }
    }

    fn apply(&self, disk: &mut DiskState, replica: ReplicaId) {
        if self.slots == 0 {
            return;
        }
        let ballot = wal::Ballot {
            round: 1,
            replica: 0,
        };
        let payload_value = Bytes::from(vec![b'p'; self.value_bytes]);
        let known_chosen = self.known_chosen[replica as usize];
        let entries = (1..=self.slots)
            .map(|slot| {
                let op = KvOp::Put {
                    key: Bytes::from(format!("preload/{}", slot % 1000)),
                    value: payload_value.clone(),
                };
                let value = Value::Batch(
                    vec![Command {
                        client_id: 1 << 40,
                        seq: slot,
                        payload: op.encode(),
                    }]
                    .into(),
                );
                let chosen = slot <= known_chosen;
                RecoveredEntry {
                    slot_first: slot,
                    slot_last: slot,
                    ballot: if chosen {
                        wal::Ballot::default()
                    } else {
                        ballot
                    },
                    body: storage::encode_record(chosen, &value, 0).into_vec(),
                    log_offset: 0,
                }
            })
            .collect();
        disk.preload(ballot, entries);
    }
}

/// A simulated client's session: the client library's own, with a deadline long enough that
/// a client gives up only in a cluster that stays broken (or, for some clients, a short one
/// so that giving up is exercised during the faults).
fn new_session(
    cfg: &SimConfig,
    client_id: u64,
    incarnation: u64,
    lanes: u32,
    leaders: Vec<Option<ReplicaId>>,
) -> Session {
    let mut session_cfg = SessionConfig::new(client_id, 1, cfg.replicas);
    session_cfg.lanes = lanes;
    // With quorum leases most clients read from a "nearest" replica of their own (the client
    // id, not the incarnation, picks it; every fourth client reads from the leader).
    let base_id = client_id & 0xffff_ffff;
    if read_mode(cfg) == ReadMode::QuorumLease && base_id % 4 != 0 {
        session_cfg.read_from = Some((base_id % u64::from(cfg.replicas)) as u32);
    }
    if protocol_mode(cfg) == ProtocolMode::FastPaxos {
        // Each client's "nearest" replica, picked by its id like the read replica above.
        session_cfg.fast_write_via = Some((base_id % u64::from(cfg.replicas)) as u32);
    }
    session_cfg.leaders = leaders;
    session_cfg.seed = cfg.seed ^ client_id ^ incarnation;
    session_cfg.op_timeout_ns = if client_id % 4 == 3 {
        2_000 * NS_PER_MS
    } else {
        20_000 * NS_PER_MS
    };
    Session::new(session_cfg)
}

/// Fast Paxos seeds, derived from the seed alone: the acceptors' `fast_order` (three in four
/// `deadline`) and whether the replicas' clocks are within 2 ms of the clients' (half of the
/// deadline seeds; else up to 1 s apart, when deadlines look past and only order nothing).
pub fn fast_order_mix(cfg: &SimConfig) -> (FastOrder, bool) {
    if protocol_mode(cfg) != ProtocolMode::FastPaxos {
        return (FastOrder::default(), false);
    }
    let mut x = cfg.seed ^ 0x6a09_e667_f3bc_c908;
    x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 29;
    match x % 8 {
        0 | 1 => (FastOrder::Arrival, false),
        2..=4 => (FastOrder::Deadline, false),
        _ => (FastOrder::Deadline, true),
    }
}

/// The seed's read mode, derived from the seed alone (not drawn from the world's RNG, so the
/// other draws of a seed do not depend on it): 40% quorum leases, 10% read index, the rest
/// leader leases. An injected quorum-lease bug runs every seed with quorum leases.
pub fn read_mode(cfg: &SimConfig) -> ReadMode {
    if cfg.quorum_leases || cfg.inject_bug.is_some_and(|b| b.needs_quorum_leases()) {
        return ReadMode::QuorumLease;
    }
    if protocol_mode(cfg) == ProtocolMode::FastPaxos {
        return ReadMode::ReadIndex; // what a fast-paxos cluster runs
    }
    let mut x = cfg.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    match x % 10 {
        0..=3 => ReadMode::QuorumLease,
        4 => ReadMode::ReadIndex,
        _ => ReadMode::LeaderLease,
    }
}

/// The seed's protocol, derived from the seed alone: a quarter of the seeds run Fast Paxos
/// (their read mode is then read-index). An injected Fast Paxos bug runs every seed in Fast
/// Paxos; any other injected bug none, so the seeds that catch it stay where they were.
pub fn protocol_mode(cfg: &SimConfig) -> ProtocolMode {
    if cfg.quorum_leases {
        return ProtocolMode::MultiPaxos;
    }
    match cfg.inject_bug {
        Some(b) if b.needs_fast_paxos() => return ProtocolMode::FastPaxos,
        Some(_) => return ProtocolMode::MultiPaxos,
        None => {}
    }
    if let Some(p) = cfg.protocol {
        return p;
    }
    let mut x = cfg.seed ^ 0x2545_f491_4f6c_dd1d;
    x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    if x % 4 == 0 {
        ProtocolMode::FastPaxos
    } else {
        ProtocolMode::MultiPaxos
    }
}

/// With quorum leases, the seed's lease holders (also derived from the seed alone): every
/// replica in half of the seeds, a random non-empty subset in the others.
pub fn lease_holders(cfg: &SimConfig) -> VoteSet {
    let mut x = cfg.seed.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ 0x5851_f42d_4c95_7f2d;
    x = (x ^ (x >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    x ^= x >> 32;
    let all = VoteSet::all(cfg.replicas);
    if x % 2 == 0 {
        return all;
    }
    VoteSet::from_bits((x >> 1) % all.bits() + 1)
}

/// With quorum leases, how often the workload changes the lease configuration during the
/// fault phase (derived from the seed alone): in three of four seeds, every 50–400 ms on
/// average; every seed when the injected bug is about configuration changes.
pub fn lease_config_every_ms(cfg: &SimConfig) -> Option<u64> {
    if read_mode(cfg) != ReadMode::QuorumLease {
        return None;
    }
    let mut x = cfg.seed.wrapping_mul(0x9fb2_1c65_1e98_df25) ^ 0x1ea5_ec0f_ca11_ed00;
    x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 32;
    let always = cfg.inject_bug == Some(crate::protocol::InjectedBug::QleaseConfigDropEarly);
    (always || x % 4 != 0).then_some(50 + (x >> 8) % 351)
}

/// With quorum leases, what holders do with a read that must wait for a slot (derived from
/// the seed alone): forward it to the leader in a third of the seeds, else wait.
pub fn lease_pending(cfg: &SimConfig) -> crate::protocol::LeasePending {
    use crate::protocol::LeasePending;
    let x = cfg.seed.wrapping_mul(0xa076_1d64_78bd_642f) >> 40;
    if read_mode(cfg) == ReadMode::QuorumLease && x % 3 == 0 {
        LeasePending::Forward
    } else {
        LeasePending::Wait
    }
}

/// Every replica's protocol configuration. Most seeds draw random knobs; some run exactly
/// what the server ships for a cluster with a preferred leader (asymmetric election
/// timeouts, the lease derived from them).
/// Per replica, snapshot thresholds small enough that snapshots, truncation and transfers
/// happen many times a run (most seeds), or none at all (some seeds). Drawn from a stream of
/// their own, so they do not shift the rest of a seed's plan.
fn random_snapshot_policies(cfg: &SimConfig) -> Vec<SnapshotPolicy> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_5a95_0000_0001);
    let on = rng.gen_bool(0.85);
    // Cluster-wide, as in `cluster.toml`: a server sends at most its own window per request.
    let window_bytes = [256 << 10, 4 << 20, 16 << 20][rng.gen_range(0..3)];
    let clock_every_ms = if rng.gen_bool(0.5) {
        rng.gen_range(50..=500)
    } else {
        0
    };
    (0..cfg.replicas)
        .map(|_| SnapshotPolicy {
            every_entries: if on { rng.gen_range(2..=64) } else { 0 },
            every_bytes: if on && rng.gen_bool(0.3) {
                rng.gen_range(256..=64 << 10)
            } else {
                0
            },
            trail_slots: [0, 0, 4, 64][rng.gen_range(0..4)],
            chunk_bytes: [700, 4096, 64 << 10, 1 << 20][rng.gen_range(0..4)],
            window_bytes,
            // Clock commands go through the log; sessions never expire within a run (a
            // simulated client's retry window is seconds, the idle time an hour).
            session_idle_ms: 3_600_000,
            clock_every_ms,
        })
        .collect()
}

fn random_replica_configs(rng: &mut ChaCha8Rng, cfg: &SimConfig) -> Vec<Config> {
    let shipped = rng.gen_bool(0.25);
    let preferred = rng.gen_range(0..cfg.replicas);
    let pipeline_depth = [1, 4, 32][rng.gen_range(0..3)];
    let batch_max_ops = [1, 4, 64][rng.gen_range(0..3)];
    let batch_delay_us = [0, 0, 500][rng.gen_range(0..3)];
    let catchup_batch_max = [2, 64][rng.gen_range(0..2)];
    // Some clusters are configured for worse clocks (a shorter lease, and more drift for
    // the simulator to inject up to that bound): the window in which two leaders overlap
    // grows with the drift.
    let drift_percent = [10, 10, 25, 40][rng.gen_range(0..4)];
    (0..cfg.replicas)
        .map(|id| {
            let mut replica = if shipped {
                let mut cluster = crate::server::config::ClusterConfig::local(
                    cfg.replicas,
                    1,
                    std::path::Path::new("/sim"),
                    1,
                );
                cluster.preferred_leader = Some(preferred);
                cluster.protocol = Some(protocol_mode(cfg));
                cluster.read_mode = Some(read_mode(cfg));
                if read_mode(cfg) == ReadMode::QuorumLease {
                    let holders = lease_holders(cfg);
                    cluster.lease_holders =
                        Some((0..cfg.replicas).filter(|&r| holders.contains(r)).collect());
                }
                crate::server::protocol_config(&cluster, id, 0)
            } else {
                let mut c = Config::new(id, cfg.replicas);
                c.clock_drift_percent = drift_percent;
                c.lease_ms = Config::lease_ms_for(c.election_timeout_min_ms, drift_percent);
                c
            };
            replica.seed = cfg.seed;
            replica.inject_bug = cfg.inject_bug;
            replica.protocol = protocol_mode(cfg);
            replica.read_mode = read_mode(cfg);
            replica.lease_holders = lease_holders(cfg);
            replica.lease_pending = lease_pending(cfg);
            replica.pipeline_depth = pipeline_depth;
            replica.batch_max_ops = batch_max_ops;
            replica.batch_delay_us = batch_delay_us;
            replica.catchup_batch_max = catchup_batch_max;
            let (order, _) = fast_order_mix(cfg);
            replica.fast_order = order;
            // Every fourth seed cuts Promise reports and catch-up replies after a few hundred
            // bytes, so paging runs under faults (the 8 MiB default is reached only by the
            // preloaded 70 MiB logs). Derived from the seed, not drawn.
            if cfg.seed % 4 == 3 {
                replica.message_bytes_max = 512;
            }
            if cfg.seed % 8 == 5 {
                // A pipeline bounded by bytes rather than slots (big values in some seeds).
                replica.pipeline_bytes_max = 4096;
            }
            replica
        })
        .collect()
}

fn describe(value: &Value) -> String {
    match value {
        Value::Noop => "no-op".to_string(),
        Value::Batch(commands) => {
            let ids: Vec<String> = commands
                .iter()
                .take(8)
                .map(|c| format!("c{}s{}", c.client_id, c.seq))
                .collect();
            format!("batch [{}]", ids.join(" "))
        }
    }
}
