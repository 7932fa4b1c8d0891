//! The node: everything one group does that is not a socket, a syscall or a clock read
//! (architecture §3a). The protocol replica, the kv state machine, the mapping of protocol writes
//! onto WAL appends ([`Storage`] over a [`Disk`]), backpressure, the clients waiting for
//! answers, and status.
//!
//! It is sans-IO like the protocol core: events in, output out. The server's mio loop
//! (`group.rs`) and the simulator (`sim::world`) are two thin shells that run this same code;
//! what one tests is what the other runs. A shell's loop, in full:
//!
//! 1. feed events as they arrive, each with the clock read *after* its bytes were read:
//!    [`Node::on_request`] (a decoded client request, tagged with the shell's connection id),
//!    [`Node::on_peer`] (a decoded peer message), [`Node::on_disk`] (the disk may have
//!    completed writes), [`Node::tick`] (when [`Node::poll_timeout`] is due);
//! 2. call [`Node::drive`] once, then [`Node::take_output`]: send `messages` to peers, send
//!    each reply to its connection (a shell drops replies to connections that are gone);
//! 3. sleep until `poll_timeout()` or the next event.
//!
//! Snapshots (`docs/internals/protocol.md`, "Snapshots and truncation"): after applying,
//! once `snapshot_every_entries` slots or `snapshot_every_bytes` bytes of values were applied
//! since the last snapshot, the node serializes the kv (a copy, on this thread) and hands the
//! bytes to the disk, which writes them on a thread of its own; when the disk reports the
//! snapshot durable, the replica's log gets a floor and the WAL below it is released. A peer
//! that needs truncated slots fetches the newest snapshot in chunks (`SnapshotRequest` /
//! `SnapshotChunk`, a window of chunks per request), resumes after a loss from the offset it
//! has, checks the crc32c and the kv's own checks, installs it, then catches up on the suffix.
//!
//! Failure: a WAL error or a safety violation stops the node for good ([`Node::failed`]): it
//! answers every waiting client `NotLeader`, takes part in nothing, and the operator restarts
//! the replica (which recovers from what is durable).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::protocol::{InjectedBug, Message};

use super::anatomy::{stamp, Stamps, Tracer};
use super::disk::{Disk, SnapshotData};
use super::metrics::{GroupMetrics, LocalHistogram};
use super::storage::Storage;
use crate::kv::{self, KvStore, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::net::wire::{self, group_of, GroupStatus, Op, Outcome, Request};
use crate::protocol::{
    self, Command, DurableState, Envelope, FastCounters, LeaseReadCounters, Nanos, NotLeader,
    ReadOutcome, Replica, ReplicaId, Role, Slot, Value, Write,
};
use crate::server::config::Limits;

/// The shell's name for a client connection (it encodes whatever the shell needs to tell a
/// reused connection slot from the old one). Opaque to the node.
pub type ConnId = u64;

/// Everything a node needs, decided before it starts.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub replica_id: ReplicaId,
    pub group: u32,
    pub groups: u32,
    pub protocol: protocol::Config,
    pub limits: Limits,
    /// New client writes are refused with `Busy` (retryable) while more than this many bytes
    /// of log records wait for the WAL to take them.
    pub backlog_bytes_max: usize,
    /// Report every applied slot and every message to itself in [`Output`] (the simulator's
    /// checks use them).
    pub observe: bool,
    /// Injected bug (simulator only): the storage mapping acknowledges writes before the
    /// disk says they are durable.
    pub inject_ack_before_durable: bool,
    pub snapshot: SnapshotPolicy,
    /// Added to the monotonic `now` to get Unix time (ns) for the leader's clock commands.
    pub wall_clock_offset_ns: u64,
    /// Keep the WAL writes of a `drive` until [`Node::submit_disk`], so the shell can put
    /// the turn's messages on the wire first: a leader's Accepts then leave before the system
    /// call that starts its own disk write (which runs beside its followers' anyway). Safe:
    /// nothing a replica sends before its write is durable depends on that write (Promise and
    /// Accepted are held by the replica until it is).
    pub send_before_disk: bool,
}

/// When to take snapshots and how to send them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Take a snapshot once this many slots were applied since the last one (0: never by
    /// count).
    pub every_entries: u64,
    /// ... or once this many bytes of values (`Value::size_bytes`) were applied (0: never by
    /// size).
    pub every_bytes: u64,
    /// Slots kept below a durable snapshot: the log floor is `snapshot slot - trail_slots`, so
    /// a follower slightly behind catches up from the log, and one that installed a snapshot
    /// finds the slots after it even if newer snapshots were taken during its transfer.
    pub trail_slots: u64,
    /// Bytes of snapshot per transfer chunk (each chunk is one peer message).
    pub chunk_bytes: usize,
    /// Bytes a fetching replica asks for per request (a window of chunks in flight): a
    /// transfer takes one round trip per window.
    pub window_bytes: u64,
    /// Sessions idle longer than this expire (0: never); the leader proposes its clock with
    /// this value every `clock_every_ms`.
    pub session_idle_ms: u64,
    /// How often the leader proposes its clock (0: never, and sessions never expire).
    pub clock_every_ms: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_entries: 100_000,
            every_bytes: 64 << 20,
            trail_slots: 1_000,
            chunk_bytes: 1 << 20,
            window_bytes: 4 << 20,
            session_idle_ms: 0,
            clock_every_ms: 0,
        }
    }
}

/// A snapshot being fetched from a peer.
#[derive(Debug)]
struct Fetch {
    peer: ReplicaId,
    /// The floor that made us ask (the snapshot must be at least this new to be useful).
    wanted: Slot,
    /// The snapshot whose bytes are being collected (0 until the first chunk).
    slot: Slot,
    total_bytes: u64,
    crc: u32,
    buf: Vec<u8>,
    /// Chunks of the window that arrived ahead of a missing one (a network may reorder).
    ahead: BTreeMap<u64, Bytes>,
    /// The end of the window asked for; the next request goes out when it is reached.
    requested_end: u64,
    /// When the last request went out or the last chunk came; silence for `retry_ns` asks
    /// again from the offset we have.
    asked_at: Nanos,
    retries: u32,
}

/// Requests a fetch sends without an answer before it gives up (catch-up asks again later).
const FETCH_RETRIES_MAX: u32 = 5;

/// The state a node starts from: the kv at the newest valid snapshot (or empty).
pub struct Restored {
    pub kv: KvStore,
    /// The snapshot's slot and bytes (to serve to peers).
    pub snapshot: Option<(Slot, Bytes)>,
}

impl Restored {
    pub fn empty() -> Restored {
        Restored {
            kv: KvStore::new(),
            snapshot: None,
        }
    }

    /// Decodes and checks the snapshot a disk recovered (taken at `slot`).
    pub fn from_snapshot(slot: Slot, data: Vec<u8>) -> Result<Restored, String> {
        let (at, kv) = KvStore::decode_snapshot(&data)
            .map_err(|e| format!("the snapshot at slot {slot} is unusable: {e}"))?;
        if at != slot {
            return Err(format!(
                "the snapshot file for slot {slot} holds the state at slot {at}; the data directory is damaged"
            ));
        }
        Ok(Restored {
            kv,
            snapshot: Some((slot, Bytes::from(data))),
        })
    }

    pub fn slot(&self) -> Slot {
        self.snapshot.as_ref().map_or(0, |(s, _)| *s)
    }
}

/// A reply for one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub conn: ConnId,
    pub req_id: u64,
    pub outcome: Outcome,
    /// A traced request's stamps (`runtime::anatomy`); the shell adds the reply's.
    pub trace: Option<Box<Stamps>>,
}

/// What the shell must do after [`Node::drive`].
#[derive(Debug, Default)]
pub struct Output {
    /// Peer messages, in order (never addressed to this replica).
    pub messages: Vec<Envelope>,
    pub replies: Vec<ClientReply>,
    /// Slots applied to the kv, in order (only with [`NodeConfig::observe`]).
    pub applied: Vec<(Slot, Value)>,
    /// Messages the replica sent itself, already delivered (only with
    /// [`NodeConfig::observe`]).
    pub self_messages: Vec<Envelope>,
    /// A peer's snapshot installed at this slot: the kv jumped there (only with
    /// [`NodeConfig::observe`]).
    pub installed: Option<Slot>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.replies.is_empty()
            && self.applied.is_empty()
            && self.self_messages.is_empty()
            && self.installed.is_none()
    }

    pub fn clear(&mut self) {
        self.messages.clear();
        self.replies.clear();
        self.applied.clear();
        self.self_messages.clear();
        self.installed = None;
    }
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    conn: ConnId,
    req_id: u64,
    /// A traced request: when it arrived (0: not traced).
    traced_at: Nanos,
}

pub struct Node<D: Disk> {
    cfg: NodeConfig,
    replica: Replica,
    kv: KvStore,
    storage: Storage<D>,
    wal_backend: String,
    failed: Option<String>,
    /// Ordered maps, not hash maps: the simulator replays a seed exactly, so the order in
    /// which waiters are answered must not depend on a random hasher.
    pending_writes: BTreeMap<(u64, u64), Waiter>,
    pending_reads: BTreeMap<u64, (Waiter, Bytes)>,
    /// Requests each connection has waiting for an answer.
    waiting: BTreeMap<ConnId, usize>,
    next_read_id: u64,
    self_msgs: Vec<Envelope>,
    last_leader: Option<ReplicaId>,
    last_role: Role,
    /// The replica's quorum-lease and Fast Paxos counters at the last metrics update.
    lease_counters: LeaseReadCounters,
    fast_counters: FastCounters,
    out: Output,
    metrics: GroupMetrics,
    fsync_hist: LocalHistogram,
    batch_hist: LocalHistogram,

    // Snapshots.
    /// Slots and value bytes applied since the last snapshot was started.
    since_snapshot_slots: u64,
    since_snapshot_bytes: u64,
    /// The slot of the snapshot the disk is writing.
    snapshot_writing: Option<Slot>,
    /// Wall time this thread spent taking the last snapshot's state (for the log line).
    snapshot_take_ms: f64,
    /// An installed snapshot waiting for the disk to finish the previous write.
    snapshot_to_write: Option<(Slot, SnapshotData)>,
    /// The newest snapshot (durable, or installed and being written): what peers are sent.
    snapshot_latest: Option<Held>,
    fetch: Option<Fetch>,
    /// Per peer, the snapshot its transfer is reading: kept (a reference, not a copy) while
    /// newer snapshots are taken, so a transfer slower than the snapshot interval finishes.
    serving: BTreeMap<ReplicaId, Held>,
    /// The leader's next clock command is due (0: not leader).
    clock_due: Nanos,
    /// The snapshot `mpaxos snapshot save` is reading (one at a time per group).
    export: Option<Held>,
    /// Traced requests and slots (`mpaxos bench --anatomy`).
    tracer: Tracer,
    /// [`NodeConfig::send_before_disk`]: this turn's writes, not yet handed to the WAL.
    deferred_writes: Vec<(protocol::WriteId, Write)>,
}

/// A snapshot this node holds (its newest, one pinned for a peer's transfer, an export) with
/// its checksum, computed at most once, when first needed. Every window of a transfer and
/// every part of an export carries the whole snapshot's checksum; computing it per window cost
/// a transfer of an S-byte snapshot S² / window bytes of CRC on the group thread (a 1 GiB state
/// in 4 MiB windows: 256 GiB, ~30 s of stalls of ~120 ms each at this VM's 9 GB/s). Not at
/// taking time either: most snapshots are never sent, and that would put the O(S) pass the
/// background encoding took off the group thread back on it.
#[derive(Clone, Debug)]
struct Held {
    slot: Slot,
    data: Bytes,
    crc: Option<u32>,
}

impl Held {
    fn new(slot: Slot, data: Bytes) -> Held {
        Held {
            slot,
            data,
            crc: None,
        }
    }

    fn crc(&mut self) -> u32 {
        *self
            .crc
            .get_or_insert_with(|| crate::kv::snapshot::checksum(&self.data))
    }
}

/// Bytes of an export snapshot per client frame.
const EXPORT_PART_BYTES: usize = 1 << 20;

/// A part of an export snapshot ([`Node::export_snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportPart {
    pub slot: Slot,
    pub offset: u64,
    pub total_bytes: u64,
    pub crc: u32,
    pub data: Bytes,
}

impl<D: Disk> Node<D> {
    /// Starts a node from recovered durable state. `now` is the time after recovery: the
    /// replica's timers start here, so a long recovery does not trigger an election before
    /// its peers could speak.
    ///
    /// `restored` is the state machine at the snapshot the durable state starts from
    /// (`durable.floor` must be its slot).
    pub fn new(
        cfg: NodeConfig,
        mut storage: Storage<D>,
        durable: &DurableState,
        restored: Restored,
        now: Nanos,
        metrics: GroupMetrics,
    ) -> Node<D> {
        assert_eq!(
            durable.floor,
            restored.slot(),
            "the log starts at the snapshot"
        );
        if cfg.inject_ack_before_durable {
            storage.inject_ack_before_durable();
        }
        let wal_backend = storage.disk().backend_name();
        let mut node = Node {
            replica: Replica::new(cfg.protocol.clone(), durable, now),
            kv: restored.kv,
            since_snapshot_slots: 0,
            since_snapshot_bytes: 0,
            snapshot_writing: None,
            snapshot_take_ms: 0.0,
            snapshot_to_write: None,
            snapshot_latest: restored.snapshot.map(|(slot, data)| Held::new(slot, data)),
            fetch: None,
            serving: BTreeMap::new(),
            clock_due: 0,
            export: None,
            tracer: Tracer::default(),
            deferred_writes: Vec::new(),
            storage,
            wal_backend,
            failed: None,
            pending_writes: BTreeMap::new(),
            pending_reads: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_read_id: 1,
            self_msgs: Vec::new(),
            last_leader: None,
            last_role: Role::Follower,
            lease_counters: LeaseReadCounters::default(),
            fast_counters: FastCounters::default(),
            out: Output::default(),
            fsync_hist: LocalHistogram::new(metrics.wal_fsync_duration_seconds.clone()),
            batch_hist: LocalHistogram::new(metrics.batch_size.clone()),
            metrics,
            cfg,
        };
        // The lease configuration of the state restored from a snapshot (the WAL's slots
        // above it are applied again and may change it further).
        node.sync_lease_holders();
        node
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    pub fn storage(&self) -> &Storage<D> {
        &self.storage
    }

    /// Why the node stopped, if it did.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// The leader this node believes in (none once failed).
    pub fn leader(&self) -> Option<ReplicaId> {
        if self.failed.is_some() {
            None
        } else {
            self.replica.status().leader
        }
    }

    /// The next instant [`Node::tick`] is due; `None` once failed (nothing is due, ever).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        if self.failed.is_some() {
            return None;
        }
        let mut due = self.replica.poll_timeout();
        if let Some(f) = &self.fetch {
            due = due.min(f.asked_at + self.fetch_retry_ns());
        }
        if self.clock_due > 0 {
            due = due.min(self.clock_due);
        }
        Some(due)
    }

    /// Whether writes (or a snapshot) are waiting for the disk (a shell without a completion
    /// signal polls).
    pub fn disk_busy(&self) -> bool {
        self.failed.is_none() && (self.storage.pending() > 0 || self.snapshot_writing.is_some())
    }

    /// `mpaxos snapshot save`: the leader's state machine at its applied slot (every write it
    /// acknowledged is in it), served in parts. `slot = 0` takes a new export snapshot; later
    /// parts must name its slot (an export replaced by a newer one must be started again).
    pub fn export_snapshot(&mut self, slot: Slot, offset: u64) -> Result<ExportPart, String> {
        if self.failed.is_some() || self.replica.role() != Role::Leader {
            let leader = self.leader().filter(|l| *l != self.cfg.replica_id);
            return Err(match leader {
                Some(l) => format!("not the leader of group {}; replica {l} is", self.cfg.group),
                None => format!("group {} has no leader right now; retry", self.cfg.group),
            });
        }
        if slot == 0 {
            let applied = self.replica.status().applied;
            let data = Bytes::from(self.kv.encode_snapshot(applied));
            self.export = Some(Held::new(applied, data));
        }
        let Some(export) = &mut self.export else {
            return Err("no snapshot export is in progress here; start again".into());
        };
        let (at, crc) = (export.slot, export.crc());
        let data = &export.data;
        if slot != 0 && slot != at {
            return Err(format!(
                "the export at slot {slot} was replaced by one at slot {at}; start again"
            ));
        }
        let start = (offset as usize).min(data.len());
        let end = (start + EXPORT_PART_BYTES).min(data.len());
        Ok(ExportPart {
            slot: at,
            offset: start as u64,
            total_bytes: data.len() as u64,
            crc,
            data: data.slice(start..end),
        })
    }

    /// The newest snapshot this node holds (slot and bytes).
    pub fn snapshot_latest(&self) -> Option<(Slot, &Bytes)> {
        self.snapshot_latest.as_ref().map(|h| (h.slot, &h.data))
    }

    /// Requests connection `conn` has waiting for an answer.
    pub fn waiting(&self, conn: ConnId) -> usize {
        self.waiting.get(&conn).copied().unwrap_or(0)
    }

    /// The connection is gone: its answers, when they come, are dropped by the shell.
    pub fn conn_closed(&mut self, conn: ConnId) {
        self.waiting.remove(&conn);
    }

    // ---------------------------------------------------------------- events

    /// A peer message. `now` must be read after the message's bytes were read: a follower's
    /// "heard from the leader" time must never predate the message.
    pub fn on_peer(&mut self, now: Nanos, envelope: Envelope) {
        if self.failed.is_some() {
            return;
        }
        match envelope.msg {
            Message::SnapshotRequest {
                slot,
                offset,
                bytes_max,
            } => self.serve_snapshot(envelope.from, slot, offset, bytes_max),
            Message::SnapshotChunk {
                slot,
                offset,
                total_bytes,
                crc,
                data,
            } => self.on_snapshot_chunk(now, envelope.from, (slot, offset, total_bytes, crc), data),
            _ => self.replica.step(now, envelope),
        }
    }

    /// The disk may have completed writes.
    pub fn on_disk(&mut self, now: Nanos) {
        if self.failed.is_some() {
            return;
        }
        self.poll_snapshot();
        match self.storage.poll(now) {
            Ok(durable) => {
                for s in &durable.write_seconds {
                    self.fsync_hist.observe(*s);
                }
                if let Some(id) = durable.up_to {
                    if self.tracer.active() {
                        let at = self.tracer.stamp(now);
                        self.tracer.durable(id, &durable.submitted, at);
                    }
                    self.replica.persisted(now, id);
                }
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Runs the protocol's timers if they are due (and the snapshot fetch's and the clock's).
    pub fn tick(&mut self, now: Nanos) {
        if self.failed.is_some() {
            return;
        }
        if now >= self.replica.poll_timeout() {
            self.replica.tick(now);
        }
        self.poll_snapshot();
        self.retry_fetch(now);
        self.propose_clock(now);
    }

    /// A client request. `now` must be read after the request's bytes were read (a lease
    /// check must not use a time before the read arrived).
    pub fn on_request(&mut self, now: Nanos, conn: ConnId, req: Request) {
        self.request(now, conn, req, false);
    }

    /// A client request whose path is traced (`ClientFrame::TracedRequest`): its reply
    /// carries the stamps of its stages.
    pub fn on_traced_request(&mut self, now: Nanos, conn: ConnId, req: Request) {
        self.request(now, conn, req, true);
    }

    /// The tracer (the shell stamps what only it sees: frames sent and received).
    pub fn tracer(&mut self) -> &mut Tracer {
        &mut self.tracer
    }

    fn request(&mut self, now: Nanos, conn: ConnId, req: Request, traced: bool) {
        let waiter = Waiter {
            conn,
            req_id: req.id,
            traced_at: if traced { now } else { 0 },
        };
        if self.waiting(conn) >= self.cfg.limits.requests_per_connection_max {
            self.answer_now(waiter, Outcome::Busy);
            return;
        }
        if let Some(why) = &self.failed {
            tracing::debug!(group = self.cfg.group, "refusing a request: {why}");
            self.answer_now(waiter, Outcome::NotLeader { leader: None });
            return;
        }
        let key = match &req.op {
            Op::Get { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. } => key.clone(),
            Op::SetLeaseHolders { group, holders } => {
                match self.check_lease_holders(*group, *holders) {
                    Ok(()) => {
                        let op = kv::Op::LeaseHolders { holders: *holders };
                        self.propose_write(now, waiter, (req.client_id, req.seq), op, 0);
                    }
                    Err(reason) => self.answer_now(waiter, Outcome::Invalid { reason }),
                }
                return;
            }
        };
        if key.len() > KEY_BYTES_MAX {
            let reason = format!(
                "key of {} bytes is over the {KEY_BYTES_MAX}-byte limit",
                key.len()
            );
            self.answer_now(waiter, Outcome::Invalid { reason });
            return;
        }
        let g = group_of(&key, self.cfg.groups);
        if g != self.cfg.group {
            self.answer_now(waiter, Outcome::WrongGroup { group: g });
            return;
        }
        let op = match req.op {
            Op::Get { linearizable, .. } => {
                self.start_read(now, waiter, key, linearizable);
                return;
            }
            Op::Put { value, .. } => kv::Op::Put { key, value },
            Op::Delete { .. } => kv::Op::Delete { key },
            Op::Cas {
                expected_version,
                value,
                ..
            } => kv::Op::Cas {
                key,
                expected_version,
                value,
            },
            Op::SetLeaseHolders { .. } => unreachable!("answered above"),
        };
        if let kv::Op::Put { value, .. } | kv::Op::Cas { value, .. } = &op {
            if value.len() > VALUE_BYTES_MAX {
                let reason = format!(
                    "value of {} bytes is over the {VALUE_BYTES_MAX}-byte limit",
                    value.len()
                );
                self.answer_now(waiter, Outcome::Invalid { reason });
                return;
            }
        }
        let deadline = req.fast_deadline_ns;
        self.propose_write(now, waiter, (req.client_id, req.seq), op, deadline);
    }

    /// Proposes a client's write (exactly once per `(client id, seq)`). `deadline`: the
    /// request's Fast Paxos deadline (`Replica::propose_by`; 0: none).
    fn propose_write(
        &mut self,
        now: Nanos,
        waiter: Waiter,
        id: (u64, u64),
        op: kv::Op,
        deadline: Nanos,
    ) {
        let command = Command {
            client_id: id.0,
            seq: id.1,
            payload: op.encode(),
        };
        if let Some(w) = self.pending_writes.get_mut(&id) {
            // A retry of a command still in flight here: answer the newest asker only.
            let old = std::mem::replace(w, waiter);
            self.bump_waiting(old.conn, -1);
            self.bump_waiting(waiter.conn, 1);
            // Fast Paxos: a vote that lost a collision, or one no promiser reported to a new
            // leader, may leave the command in no slot at all, and nothing but this retry would
            // propose it again. Vote for it again: if both votes end up chosen, the
            // exactly-once table applies it once.
            if self.cfg.protocol.protocol == protocol::ProtocolMode::FastPaxos
                && self.replica.propose_by(now, command, deadline).is_err()
            {
                self.metrics.proposals_failed_total.inc();
            }
            return;
        }
        if self.storage.backlog_bytes() > self.cfg.backlog_bytes_max {
            // The disk is behind: push back on clients instead of queueing without bound.
            self.answer_now(waiter, Outcome::Busy);
            return;
        }
        match self.replica.propose_by(now, command, deadline) {
            Ok(()) => {
                if waiter.traced_at != 0 {
                    self.tracer.add_pending(id);
                }
                self.pending_writes.insert(id, waiter);
                self.bump_waiting(waiter.conn, 1);
            }
            Err(e) => {
                self.metrics.proposals_failed_total.inc();
                self.answer_now(waiter, not_leader_outcome(e));
            }
        }
    }

    /// Whether `holders` (bit mask, `kv::LEASE_HOLDERS_ALL`: every replica) may become
    /// this group's lease configuration: quorum-lease mode, and at least one replica, each
    /// an id of this cluster.
    fn check_lease_holders(&self, group: u32, holders: u64) -> Result<(), String> {
        let p = &self.cfg.protocol;
        if group != self.cfg.group {
            return Err(format!(
                "group {group} does not exist here (this is group {})",
                self.cfg.group
            ));
        }
        if p.read_mode != protocol::ReadMode::QuorumLease {
            return Err(format!(
                "lease holders need read_mode = \"quorum-lease\" (this cluster runs \"{}\")",
                p.read_mode
            ));
        }
        let all = protocol::VoteSet::all(p.replicas).bits();
        if holders != kv::LEASE_HOLDERS_ALL && (holders == 0 || holders & !all != 0) {
            return Err(format!(
                "lease holders must be at least one replica id below {} (got {:?})",
                p.replicas,
                mask_ids(holders)
            ));
        }
        Ok(())
    }

    /// The lease configuration the applied state says is in effect: the log's last one, or
    /// the initial one from the cluster config.
    fn lease_holders_applied(&self) -> protocol::VoteSet {
        match self.kv.lease_holders() {
            Some(bits) => protocol::VoteSet::from_bits(
                bits & protocol::VoteSet::all(self.cfg.protocol.replicas).bits(),
            ),
            None => self.cfg.protocol.lease_holders,
        }
    }

    /// Hands the applied lease configuration to the replica (after applying a slot that set
    /// it, installing a snapshot, or restoring one at start).
    fn sync_lease_holders(&mut self) {
        let holders = self.lease_holders_applied();
        if self.replica.set_lease_holders(holders) {
            self.metrics.lease_config_changes_total.inc();
            tracing::info!(
                group = self.cfg.group,
                holders = ?mask_ids(holders.bits()),
                "quorum leases: lease configuration changed"
            );
        }
    }

    /// The simulator's workload: the leader proposes a lease configuration change as a
    /// command of the cluster itself (client id 0). Returns whether it was taken.
    pub fn propose_lease_holders(&mut self, now: Nanos, holders: u64) -> bool {
        let command = Command {
            client_id: kv::SYSTEM_CLIENT_ID,
            seq: 0,
            payload: kv::Op::LeaseHolders { holders }.encode(),
        };
        self.replica.propose(now, command).is_ok()
    }

    fn start_read(&mut self, now: Nanos, waiter: Waiter, key: Bytes, linearizable: bool) {
        if !linearizable {
            let reply = self.kv.get(&key);
            let outcome = wire::outcome_from_reply(reply);
            self.answer_traced(waiter, outcome, |s| s[stamp::READ_READY] = now);
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        let may_change = |c: &Command| kv::may_change_key(&c.payload, &key);
        match self.replica.read_index_for(now, id, &may_change) {
            Ok(()) => {
                self.pending_reads.insert(id, (waiter, key));
                self.bump_waiting(waiter.conn, 1);
            }
            Err(e) => self.answer_now(waiter, not_leader_outcome(e)),
        }
    }

    // ---------------------------------------------------------------- protocol output

    /// Drains the protocol until it has nothing more to say: writes go to the WAL, messages
    /// to peers (or back to itself), committed slots to the kv and their clients, confirmed
    /// reads are served.
    pub fn drive(&mut self, now: Nanos) {
        if self.failed.is_some() {
            return;
        }
        self.poll_snapshot();
        loop {
            let ready = self.replica.ready(now);
            if let Some(why) = self.replica.fatal() {
                // A safety violation the replica detected (two values chosen for one slot):
                // stop loudly rather than serve from a state that may be wrong.
                self.fail(format!("protocol: {why}"));
                return;
            }
            if ready.is_empty() && self.self_msgs.is_empty() {
                break;
            }
            if self.tracer.active() {
                self.trace_ready(now, &ready);
            }
            if self.cfg.send_before_disk {
                self.deferred_writes.extend(ready.writes);
            } else if !ready.writes.is_empty() {
                // Traced: the WAL's submission time is a stamp, read as it happens.
                let at = self.tracer.stamp_if_active(now);
                if let Err(e) = self.storage.submit(at, ready.writes) {
                    self.fail(e.to_string());
                    return;
                }
            }
            for env in ready.messages {
                if env.to == self.cfg.replica_id {
                    if self.cfg.observe {
                        self.out.self_messages.push(env.clone());
                    }
                    self.self_msgs.push(env);
                } else {
                    self.out.messages.push(env);
                }
            }
            for (slot, value) in ready.committed {
                self.apply(now, slot, value);
            }
            for read in ready.reads {
                let Some((waiter, key)) = self.pending_reads.remove(&read.id) else {
                    continue;
                };
                let outcome = match read.outcome {
                    ReadOutcome::Ready => wire::outcome_from_reply(self.kv.get(&key)),
                    ReadOutcome::NotLeader { leader } => Outcome::NotLeader { leader },
                };
                let at = if waiter.traced_at != 0 {
                    self.tracer.stamp(now)
                } else {
                    0
                };
                self.answer_with(waiter, outcome, |s| s[stamp::READ_READY] = at);
            }
            for d in ready.dropped {
                self.tracer.forget_pending((d.client_id, d.seq));
                if let Some(waiter) = self.pending_writes.remove(&(d.client_id, d.seq)) {
                    self.metrics.proposals_failed_total.inc();
                    self.answer(waiter, Outcome::NotLeader { leader: d.leader });
                }
            }
            if let Some((peer, floor)) = ready.snapshot_wanted {
                self.start_fetch(now, peer, floor);
            }
            for why in ready.stepped_down {
                tracing::info!(group = self.cfg.group, "{why}");
            }
            let msgs = std::mem::take(&mut self.self_msgs);
            for env in msgs {
                self.replica.step(now, env);
            }
        }
        self.maybe_snapshot();
        self.observe_status();
    }

    /// With [`NodeConfig::send_before_disk`]: hands the writes `drive` kept to the WAL (call
    /// once the turn's output is on the wire, before waiting). Returns true if the disk failed
    /// now (the node stopped; its output has the answers to its waiting clients).
    pub fn submit_disk(&mut self, now: Nanos) -> bool {
        if self.deferred_writes.is_empty() || self.failed.is_some() {
            return false;
        }
        let writes = std::mem::take(&mut self.deferred_writes);
        let at = self.tracer.stamp_if_active(now);
        match self.storage.submit(at, writes) {
            Ok(()) => false,
            Err(e) => {
                self.fail(e.to_string());
                true
            }
        }
    }

    // ---------------------------------------------------------------- snapshots

    /// Starts a snapshot once enough was applied since the last one (and none is being
    /// written). The kv is serialized here, on the group's thread (a copy of the state: for a
    /// config store of megabytes, milliseconds); the disk writes and syncs it elsewhere.
    fn maybe_snapshot(&mut self) {
        let p = &self.cfg.snapshot;
        let due = (p.every_entries > 0 && self.since_snapshot_slots >= p.every_entries)
            || (p.every_bytes > 0 && self.since_snapshot_bytes >= p.every_bytes);
        if !due || self.snapshot_writing.is_some() || self.failed.is_some() {
            return;
        }
        let st = self.replica.status();
        let mut slot = st.applied;
        if self.cfg.protocol.inject_bug == Some(InjectedBug::SnapshotPastApplied) {
            // The injected bug: label the state with the highest slot the log holds.
            slot = slot.max(self.replica.log().last_slot());
        }
        if slot <= st.floor {
            return;
        }
        // This thread only takes the state (a scan of the key table); the disk serializes it
        // where it writes it (`SnapshotData`).
        let started = std::time::Instant::now();
        let image = self.kv.snapshot_image(slot);
        self.snapshot_take_ms = started.elapsed().as_secs_f64() * 1e3;
        self.since_snapshot_slots = 0;
        self.since_snapshot_bytes = 0;
        let encode = move || Bytes::from(image.encode());
        self.write_snapshot(slot, SnapshotData::Encode(Box::new(encode)));
    }

    fn write_snapshot(&mut self, slot: Slot, data: SnapshotData) {
        if self.snapshot_writing.is_some() {
            self.snapshot_to_write = Some((slot, data));
            return;
        }
        match self.storage.start_snapshot(slot, data) {
            Ok(()) => self.snapshot_writing = Some(slot),
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// A snapshot became durable: the log below it is released, in memory and on disk.
    fn poll_snapshot(&mut self) {
        if self.snapshot_writing.is_none() || self.failed.is_some() {
            return;
        }
        let (slot, data) = match self.storage.poll_snapshot() {
            Ok(Some(done)) => done,
            Ok(None) => return,
            Err(e) => return self.fail(e.to_string()),
        };
        let written = self.snapshot_writing.take().expect("checked above");
        assert_eq!(written, slot, "the disk finished another snapshot");
        let bytes = data.len();
        // The floor trails the snapshot: every slot up to it is in the snapshot just made.
        let floor = slot.saturating_sub(self.cfg.snapshot.trail_slots);
        // Wall time of the two steps on this thread, for the log line (the simulator's
        // figures are meaningless and unused; nothing depends on them).
        let started = std::time::Instant::now();
        let compacted = self.replica.compact(floor);
        self.storage.free(Box::new(compacted));
        let compact_ms = started.elapsed().as_secs_f64() * 1e3;
        let released = match self.storage.release_log(floor) {
            Ok(n) => n,
            Err(e) => return self.fail(e.to_string()),
        };
        let release_ms = started.elapsed().as_secs_f64() * 1e3 - compact_ms;
        if self
            .snapshot_latest
            .as_ref()
            .map_or(true, |h| slot > h.slot)
        {
            self.snapshot_latest = Some(Held::new(slot, data));
        }
        self.metrics.snapshots_total.inc();
        tracing::info!(
            group = self.cfg.group,
            slot,
            bytes,
            log_floor = floor,
            take_ms = format!("{:.1}", self.snapshot_take_ms),
            compact_ms = format!("{compact_ms:.1}"),
            segments_released = released,
            release_ms = format!("{release_ms:.1}"),
            "snapshot durable; log and WAL released below the floor"
        );
        if let Some((slot, data)) = self.snapshot_to_write.take() {
            self.write_snapshot(slot, data);
        }
    }

    fn fetch_retry_ns(&self) -> Nanos {
        4 * self.cfg.protocol.heartbeat_ms * 1_000_000
    }

    /// The replica needs slots `peer` has truncated (up to `floor`): fetch its snapshot.
    fn start_fetch(&mut self, now: Nanos, peer: ReplicaId, floor: Slot) {
        let busy = self.fetch.as_ref().is_some_and(|f| {
            // A transfer that is moving is finished even if the peer's floor moved on: any
            // snapshot past our commit index is progress, and the next one starts from it.
            f.wanted >= floor || (f.peer == peer && f.slot > 0 && f.retries == 0)
        });
        if busy {
            return;
        }
        self.fetch = Some(Fetch {
            peer,
            wanted: floor,
            slot: 0,
            total_bytes: 0,
            crc: 0,
            buf: Vec::new(),
            ahead: BTreeMap::new(),
            requested_end: 0,
            asked_at: now,
            retries: 0,
        });
        // The first request asks for one chunk (it names the snapshot); then whole windows.
        self.send_peer(
            peer,
            Message::SnapshotRequest {
                slot: 0,
                offset: 0,
                bytes_max: 0,
            },
        );
    }

    /// A fetch request lost (or its answers): ask again from the offset we have; after
    /// [`FETCH_RETRIES_MAX`] tries give up (catch-up asks again, maybe another peer).
    fn retry_fetch(&mut self, now: Nanos) {
        let retry_ns = self.fetch_retry_ns();
        let Some(f) = &mut self.fetch else {
            return;
        };
        if now < f.asked_at + retry_ns {
            return;
        }
        if f.retries >= FETCH_RETRIES_MAX {
            self.fetch = None;
            return;
        }
        f.retries += 1;
        f.asked_at = now;
        let offset = f.buf.len() as u64;
        f.requested_end = offset;
        f.ahead.clear();
        let (peer, slot) = (f.peer, f.slot);
        self.send_peer(
            peer,
            Message::SnapshotRequest {
                slot,
                offset,
                bytes_max: 0,
            },
        );
    }

    /// Sends `to` the chunks covering `bytes_max` bytes from `offset` (one chunk if 0) of the
    /// snapshot its transfer reads: the one it names if we still hold it for it, else our
    /// newest (from byte 0).
    fn serve_snapshot(&mut self, to: ReplicaId, slot: Slot, offset: u64, bytes_max: u64) {
        let pinned = self
            .serving
            .get_mut(&to)
            .filter(|h| slot != 0 && h.slot == slot);
        let Some(held) = pinned.or(self.snapshot_latest.as_mut()) else {
            return; // Nothing to give; the asker gives up and asks elsewhere.
        };
        let crc = held.crc();
        let held = held.clone();
        let (latest, data) = (held.slot, held.data.clone());
        self.serving.insert(to, held);
        let chunk = self.cfg.snapshot.chunk_bytes.max(1);
        let mut start = if slot == latest { offset as usize } else { 0 };
        start = start.min(data.len());
        let window = (bytes_max.min(self.cfg.snapshot.window_bytes) as usize).max(1);
        let end = (start + window).min(data.len());
        loop {
            let stop = (start + chunk).min(data.len());
            self.send_peer(
                to,
                Message::SnapshotChunk {
                    slot: latest,
                    offset: start as u64,
                    total_bytes: data.len() as u64,
                    crc,
                    data: data.slice(start..stop),
                },
            );
            start = stop;
            if start >= end {
                return;
            }
        }
    }

    fn on_snapshot_chunk(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        (slot, offset, total_bytes, crc): (Slot, u64, u64, u32),
        data: Bytes,
    ) {
        let commit = self.replica.status().commit;
        let Some(f) = &mut self.fetch else {
            return;
        };
        if from != f.peer || slot <= commit {
            return; // Not ours, or of no use any more.
        }
        if slot != f.slot || total_bytes != f.total_bytes || crc != f.crc {
            if offset != 0 {
                return; // The tail of another snapshot: wait for its start.
            }
            // A newer snapshot (or the first chunk): start collecting it.
            f.slot = slot;
            f.total_bytes = total_bytes;
            f.crc = crc;
            f.buf.clear();
            f.ahead.clear();
            f.requested_end = 0;
        }
        let have = f.buf.len() as u64;
        if data.is_empty() || offset + data.len() as u64 > total_bytes || offset < have {
            return; // A duplicate (or nonsense).
        }
        if offset > have {
            // Ahead of a chunk still on its way: keep it if it is in the window asked for.
            if offset < f.requested_end {
                f.ahead.insert(offset, data);
            }
            return;
        }
        f.buf.extend_from_slice(&data);
        while let Some(next) = f.ahead.remove(&(f.buf.len() as u64)) {
            f.buf.extend_from_slice(&next);
        }
        f.ahead.retain(|o, _| *o > f.buf.len() as u64);
        f.asked_at = now;
        f.retries = 0;
        let have = f.buf.len() as u64;
        if have < total_bytes {
            if have >= f.requested_end {
                let bytes_max = self.cfg.snapshot.window_bytes.max(1);
                f.requested_end = have + bytes_max;
                let msg = Message::SnapshotRequest {
                    slot,
                    offset: have,
                    bytes_max,
                };
                self.send_peer(from, msg);
            }
            return;
        }
        let f = self.fetch.take().expect("present");
        self.install(now, f);
    }

    /// A complete snapshot from a peer: verify it, install it, persist it.
    fn install(&mut self, now: Nanos, f: Fetch) {
        if crate::kv::snapshot::checksum(&f.buf) != f.crc {
            tracing::warn!(
                group = self.cfg.group,
                peer = f.peer,
                "a snapshot transfer arrived damaged (checksum mismatch); fetching it again"
            );
            return self.start_fetch(now, f.peer, f.wanted);
        }
        let (slot, mut kv) = match KvStore::decode_snapshot(&f.buf) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(group = self.cfg.group, peer = f.peer, "{e}; not installed");
                return;
            }
        };
        if slot != f.slot {
            return;
        }
        if self.cfg.protocol.inject_bug == Some(InjectedBug::SnapshotWithoutClientTable) {
            kv.forget_clients();
        }
        if !self.replica.install_snapshot(now, slot) {
            return;
        }
        tracing::info!(
            group = self.cfg.group,
            peer = f.peer,
            slot,
            bytes = f.buf.len(),
            "installed a peer's snapshot"
        );
        self.kv = kv;
        self.sync_lease_holders();
        self.since_snapshot_slots = 0;
        self.since_snapshot_bytes = 0;
        self.metrics.applied_index.set(slot as i64);
        self.metrics.snapshots_installed_total.inc();
        if self.cfg.observe {
            self.out.installed = Some(slot);
        }
        let data = Bytes::from(f.buf);
        // Its checksum was just verified against the transfer's.
        self.snapshot_latest = Some(Held {
            slot,
            data: data.clone(),
            crc: Some(f.crc),
        });
        self.write_snapshot(slot, SnapshotData::Bytes(data));
    }

    fn send_peer(&mut self, to: ReplicaId, msg: Message) {
        self.out.messages.push(Envelope {
            from: self.cfg.replica_id,
            to,
            msg,
        });
    }

    fn wall_clock_ms(&self, now: Nanos) -> u64 {
        now.saturating_add(self.cfg.wall_clock_offset_ns) / 1_000_000
    }

    /// The leader proposes its clock now and then, so that sessions expire at the same slot
    /// everywhere (`kv::KvStore::apply`).
    fn propose_clock(&mut self, now: Nanos) {
        let p = &self.cfg.snapshot;
        if p.clock_every_ms == 0 || self.replica.role() != Role::Leader {
            self.clock_due = 0;
            return;
        }
        if self.clock_due == 0 {
            self.clock_due = now + p.clock_every_ms * 1_000_000;
            return;
        }
        if now < self.clock_due {
            return;
        }
        self.clock_due = now + p.clock_every_ms * 1_000_000;
        let command = Command {
            client_id: kv::SYSTEM_CLIENT_ID,
            seq: 0,
            payload: kv::Op::Clock {
                now_ms: self.wall_clock_ms(now),
                session_idle_ms: p.session_idle_ms,
            }
            .encode(),
        };
        // A full queue skips a tick; the next one carries a later time anyway. With Fast Paxos
        // rounds open it goes to every acceptor, ordered like a client's write.
        let _ = self.replica.propose_own(now, command);
    }

    /// Moves everything the shell must do into `into` (which is cleared first).
    pub fn take_output(&mut self, into: &mut Output) {
        into.clear();
        std::mem::swap(into, &mut self.out);
    }

    fn apply(&mut self, now: Nanos, slot: Slot, value: Value) {
        let cmds = value.commands();
        if self.last_role == Role::Leader && !cmds.is_empty() {
            self.batch_hist.observe(cmds.len() as f64);
        }
        let traced = self.tracer.is_traced(slot);
        if traced {
            let at = self.tracer.stamp(now);
            self.tracer.chosen(slot, at);
        }
        let lease_holders = self.kv.lease_holders();
        for cmd in cmds {
            let reply = self.kv.apply(cmd.client_id, cmd.seq, &cmd.payload);
            if let Some(waiter) = self.pending_writes.remove(&(cmd.client_id, cmd.seq)) {
                let outcome = wire::outcome_from_reply(reply);
                if waiter.traced_at != 0 {
                    self.tracer.forget_pending((cmd.client_id, cmd.seq));
                    let at = self.tracer.stamp(now);
                    let tracer = std::mem::take(&mut self.tracer);
                    self.answer_with(waiter, outcome, |s| tracer.fill_write(slot, s, at));
                    self.tracer = tracer;
                } else {
                    self.answer(waiter, outcome);
                }
            }
        }
        if self.tracer.active() {
            self.tracer.applied(slot);
        }
        if self.kv.lease_holders() != lease_holders {
            // Every replica switches at this slot (as it applies it).
            self.sync_lease_holders();
        }
        self.since_snapshot_slots += 1;
        self.since_snapshot_bytes += value.size_bytes() as u64;
        let n = cmds.len() as u64;
        self.metrics.proposals_committed_total.inc_by(n);
        self.metrics.proposals_applied_total.inc_by(n);
        self.metrics.applied_index.set(slot as i64);
        if self.cfg.observe {
            self.out.applied.push((slot, value));
        }
    }

    fn observe_status(&mut self) {
        let c = self.replica.lease_read_counters();
        if c != self.lease_counters {
            let last = std::mem::replace(&mut self.lease_counters, c);
            let m = &self.metrics;
            m.lease_reads_local_total
                .inc_by(c.local.saturating_sub(last.local));
            m.lease_reads_waited_total
                .inc_by(c.waited.saturating_sub(last.waited));
            m.lease_reads_forwarded_total
                .inc_by(c.forwarded.saturating_sub(last.forwarded));
            m.lease_reads_gave_up_total
                .inc_by(c.gave_up.saturating_sub(last.gave_up));
            m.writes_held_for_lease_holders_total.inc_by(
                c.writes_held_for_holders
                    .saturating_sub(last.writes_held_for_holders),
            );
        }
        let f = self.replica.fast_counters();
        if f != self.fast_counters {
            let last = std::mem::replace(&mut self.fast_counters, f);
            let m = &self.metrics;
            m.fast_chosen_total
                .inc_by(f.fast_chosen.saturating_sub(last.fast_chosen));
            m.classic_chosen_total
                .inc_by(f.classic_chosen.saturating_sub(last.classic_chosen));
            m.fast_collisions_total
                .inc_by(f.collisions.saturating_sub(last.collisions));
            m.fast_recovery_timeouts_total
                .inc_by(f.timeouts.saturating_sub(last.timeouts));
            m.fast_recovered_total
                .inc_by(f.recovered.saturating_sub(last.recovered));
            m.fast_recovery_seconds_total
                .inc_by(f.recovery_ns_total.saturating_sub(last.recovery_ns_total) as f64 / 1e9);
            m.fast_mode_switches_total
                .inc_by(f.mode_switches.saturating_sub(last.mode_switches));
            m.fast_held_total.inc_by(f.held.saturating_sub(last.held));
            m.fast_late_total.inc_by(f.late.saturating_sub(last.late));
            if f.mode_switches != last.mode_switches {
                // Opened: this leader's fast round is open now. Closed: it is re-running phase 1
                // for classic rounds (fewer than a fast quorum answered).
                let open = self.replica.status().fast_open;
                let what = if open.is_some() { "opened" } else { "closed" };
                tracing::info!(
                    group = self.cfg.group,
                    fast_open = ?open,
                    "fast paxos: fast rounds {what}"
                );
            }
        }
        let st = self.replica.status();
        self.metrics.commit_index.set(st.commit as i64);
        self.metrics.log_floor.set(st.floor as i64);
        self.metrics.log_slots.set(self.replica.log().len() as i64);
        self.metrics
            .wal_retained_bytes
            .set(self.storage.retained_bytes() as i64);
        self.metrics.sessions.set(self.kv.sessions() as i64);
        self.metrics
            .proposals_pending
            .set(self.pending_writes.len() as i64);
        if st.leader != self.last_leader {
            self.metrics.leader_changes_seen_total.inc();
            self.metrics.has_leader.set(st.leader.is_some() as i64);
            tracing::info!(group = self.cfg.group, leader = ?st.leader, role = ?st.role, ballot = %st.promised, "leader changed");
            self.last_leader = st.leader;
        }
        if st.role != self.last_role {
            self.metrics.is_leader.set((st.role == Role::Leader) as i64);
            if self.last_role == Role::Leader {
                // Whatever we had in flight may or may not be chosen by the next leader:
                // the clients retry there, and exactly-once makes that safe.
                self.fail_waiting(st.leader);
            }
            self.last_role = st.role;
        }
    }

    /// Stops the node for good: it takes no further part, and every waiting client is told
    /// to go elsewhere.
    pub fn fail(&mut self, why: String) {
        if self.failed.is_some() {
            return;
        }
        tracing::error!(
            group = self.cfg.group,
            "this group stops taking part: {why}"
        );
        self.failed = Some(why);
        self.fail_waiting(None);
    }

    fn fail_waiting(&mut self, leader: Option<ReplicaId>) {
        let writes = std::mem::take(&mut self.pending_writes);
        let reads = std::mem::take(&mut self.pending_reads);
        // Traced writes this node will not place in a slot any more.
        self.tracer.clear_pending();
        for w in writes
            .into_values()
            .chain(reads.into_values().map(|(w, _)| w))
        {
            self.metrics.proposals_failed_total.inc();
            self.answer(w, Outcome::NotLeader { leader });
        }
    }

    // ---------------------------------------------------------------- answers

    fn bump_waiting(&mut self, conn: ConnId, by: isize) {
        if by > 0 {
            *self.waiting.entry(conn).or_insert(0) += by as usize;
        } else if let Some(n) = self.waiting.get_mut(&conn) {
            *n = n.saturating_add_signed(by);
            if *n == 0 {
                self.waiting.remove(&conn);
            }
        }
    }

    /// Answers a request that was never counted as waiting.
    fn answer_now(&mut self, w: Waiter, outcome: Outcome) {
        self.answer_traced(w, outcome, |_| {});
    }

    /// Answers `w`; a traced request's reply carries its stamps (`fill` adds the stages it
    /// went through besides its arrival).
    fn answer_traced(&mut self, w: Waiter, outcome: Outcome, fill: impl FnOnce(&mut Stamps)) {
        let trace = (w.traced_at != 0).then(|| {
            let mut s = Box::new([0; stamp::COUNT]);
            s[stamp::RECV] = w.traced_at;
            fill(&mut s);
            s
        });
        self.out.replies.push(ClientReply {
            conn: w.conn,
            req_id: w.req_id,
            outcome,
            trace,
        });
    }

    /// Stamps what the protocol just produced for traced slots: a traced write placed in a
    /// slot (the leader's proposal), and the WAL write that holds a traced slot.
    fn trace_ready(&mut self, now: Nanos, ready: &protocol::Ready) {
        let leader = self.replica.role() == Role::Leader;
        let mut at = 0;
        for (id, write) in &ready.writes {
            let Write::Accept { slot, value, .. } = write else {
                continue;
            };
            if leader {
                for cmd in value.commands() {
                    if self.tracer.take_pending((cmd.client_id, cmd.seq)) {
                        if at == 0 {
                            at = self.tracer.stamp(now);
                        }
                        self.tracer.proposed(*slot, at);
                    }
                }
            }
            self.tracer.wal_write(*slot, *id);
        }
    }

    fn answer(&mut self, w: Waiter, outcome: Outcome) {
        self.bump_waiting(w.conn, -1);
        self.answer_now(w, outcome);
    }

    fn answer_with(&mut self, w: Waiter, outcome: Outcome, fill: impl FnOnce(&mut Stamps)) {
        self.bump_waiting(w.conn, -1);
        self.answer_traced(w, outcome, fill);
    }

    // ---------------------------------------------------------------- status

    pub fn status(&self) -> GroupStatus {
        let st = self.replica.status();
        GroupStatus {
            replica: self.cfg.replica_id,
            group: self.cfg.group,
            role: match (&self.failed, st.role) {
                (Some(_), _) => "failed".into(),
                (None, Role::Leader) => "leader".into(),
                (None, Role::Candidate) => "candidate".into(),
                (None, Role::Follower) => "follower".into(),
            },
            leader: self.leader(),
            ballot: st.promised.into(),
            commit: st.commit,
            applied: st.applied,
            proposals_pending: self.pending_writes.len() as u64,
            wal_backend: self.wal_backend.clone(),
            lease_holders: self.replica.lease_holders_configured().bits(),
        }
    }

    /// Moves buffered histogram observations into the shared metrics (call on a timer).
    pub fn flush_metrics(&mut self) {
        self.fsync_hist.flush();
        self.batch_hist.flush();
    }

    /// Blocks until everything handed to the WAL is durable (clean shutdown; skipped once
    /// failed).
    pub fn shutdown(&mut self) {
        if self.failed.is_none() {
            if let Err(e) = self.storage.flush() {
                tracing::warn!(group = self.cfg.group, "WAL flush at shutdown failed: {e}");
            }
        }
    }
}

/// The replica ids of a lease-holder bit mask (`kv::LEASE_HOLDERS_ALL`: all 64).
pub fn mask_ids(bits: u64) -> Vec<u32> {
    (0..64).filter(|i| bits & (1 << i) != 0).collect()
}

fn not_leader_outcome(e: NotLeader) -> Outcome {
    match e {
        NotLeader::Redirect { leader } => Outcome::NotLeader { leader },
        NotLeader::QueueFull => Outcome::Busy,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::runtime::disk::DiskLimits;
    use crate::sim::disk::{DiskState, SimDisk};

    const MS: Nanos = 1_000_000;

    fn test_disk() -> Rc<RefCell<DiskState>> {
        let limits = DiskLimits {
            entry_bytes_max: 1 << 20,
            append_bytes_max: 4 << 20,
        };
        Rc::new(RefCell::new(DiskState::new(limits, 64)))
    }

    /// A node of a 3-replica group on a simulated disk, with `protocol`'s replica id.
    fn test_node(
        protocol: protocol::Config,
        disk: Rc<RefCell<DiskState>>,
        restored: Restored,
        adjust: impl FnOnce(&mut NodeConfig),
    ) -> Node<SimDisk> {
        let id = protocol.id;
        let mut cfg = NodeConfig {
            replica_id: id,
            group: 0,
            groups: 1,
            protocol,
            limits: Limits::default(),
            backlog_bytes_max: 1 << 20,
            observe: false,
            inject_ack_before_durable: false,
            snapshot: SnapshotPolicy::default(),
            wall_clock_offset_ns: 0,
            send_before_disk: false,
        };
        adjust(&mut cfg);
        let durable = DurableState {
            floor: restored.slot(),
            ..DurableState::default()
        };
        let metrics = GroupMetrics::register(
            &mut prometheus_client::registry::Registry::default(),
            0,
            3,
            id,
        );
        Node::new(
            cfg,
            Storage::new(SimDisk(disk)),
            &durable,
            restored,
            0,
            metrics,
        )
    }

    fn node(id: ReplicaId, restored: Restored) -> Node<SimDisk> {
        let mut protocol = protocol::Config::new(id, 3);
        protocol.seed = 1;
        test_node(protocol, test_disk(), restored, |cfg| {
            cfg.observe = true;
            cfg.snapshot = SnapshotPolicy {
                chunk_bytes: 100,
                window_bytes: 400,
                ..SnapshotPolicy::default()
            };
        })
    }

    fn take(n: &mut Node<SimDisk>) -> Output {
        let mut out = Output::default();
        n.take_output(&mut out);
        out
    }

    /// Three Fast Paxos nodes on simulated disks that complete every write at once, wired by
    /// hand: `step` runs every node's timers and moves messages (minus those `drop` matches)
    /// and disk completions until nothing is left at this instant; client replies are kept.
    struct FastCluster {
        nodes: Vec<Node<SimDisk>>,
        disks: Vec<Rc<RefCell<DiskState>>>,
        replies: Vec<(ReplicaId, ClientReply)>,
    }

    impl FastCluster {
        fn new() -> FastCluster {
            let mut nodes = Vec::new();
            let mut disks = Vec::new();
            for id in 0..3 {
                let disk = test_disk();
                let mut protocol = protocol::Config::new(id, 3);
                protocol.seed = 1;
                protocol.protocol = protocol::ProtocolMode::FastPaxos;
                protocol.read_mode = protocol::ReadMode::ReadIndex;
                nodes.push(test_node(protocol, disk.clone(), Restored::empty(), |_| {}));
                disks.push(disk);
            }
            FastCluster {
                nodes,
                disks,
                replies: Vec::new(),
            }
        }

        fn step(&mut self, now: Nanos, drop: &dyn Fn(&Envelope) -> bool) {
            for n in &mut self.nodes {
                n.tick(now);
            }
            loop {
                let mut mail = Vec::new();
                for (id, n) in self.nodes.iter_mut().enumerate() {
                    n.drive(now);
                    let done: Vec<u64> = self.disks[id]
                        .borrow_mut()
                        .take_submitted()
                        .into_iter()
                        .map(|(w, _)| w)
                        .collect();
                    for w in done {
                        self.disks[id].borrow_mut().complete(w);
                    }
                    n.on_disk(now);
                    n.drive(now);
                    let out = take(n);
                    mail.extend(out.messages);
                    self.replies
                        .extend(out.replies.into_iter().map(|r| (id as ReplicaId, r)));
                }
                if mail.is_empty() {
                    return;
                }
                for env in mail.into_iter().filter(|e| !drop(e)) {
                    let to = env.to as usize;
                    self.nodes[to].on_peer(now, env);
                }
            }
        }

        fn run(&mut self, from: Nanos, to: Nanos, drop: &dyn Fn(&Envelope) -> bool) {
            let mut now = from;
            while now < to {
                now += MS;
                self.step(now, drop);
            }
        }
    }

    /// A Fast Paxos write whose only vote never reached anyone sits in no slot while its node
    /// still waits for it (the leader filled the slot with a no-op and never saw the command,
    /// so nobody re-proposes it). The client's retry must make that node vote for it again
    /// (`propose_write`); before the fix the retry only re-attached to the waiting write, and
    /// the write hung.
    #[test]
    fn a_fast_paxos_retry_of_a_pending_write_votes_again() {
        let mut c = FastCluster::new();
        let none = |_: &Envelope| false;
        c.run(0, 1_000 * MS, &none);
        assert!(
            c.nodes
                .iter()
                .all(|n| n.replica().status().fast_open.is_some()),
            "fast rounds open"
        );
        let mut now = 1_000 * MS;
        let put = |id: u64| Request {
            id,
            client_id: 9,
            seq: 1,
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            },
            fast_deadline_ns: 0,
        };
        // Only follower `x` gets the write (the copies to the others are lost), and its votes
        // are lost on the way: the leader's FastFill has the others vote no-ops there, and the
        // no-op is chosen.
        let leader = c.nodes[0].leader().expect("a leader") as usize;
        let x = (leader + 1) % 3;
        c.nodes[x].on_request(now, 77, put(1));
        let lose_votes =
            |e: &Envelope| e.from as usize == x && matches!(e.msg, Message::Voted { .. });
        c.run(now, now + 1_000 * MS, &lose_votes);
        now += 1_000 * MS;
        assert!(
            c.replies.is_empty(),
            "the write is in no slot: {:?}",
            c.replies
        );
        assert_eq!(c.nodes[x].waiting(77), 1, "node {x} still waits for it");
        // The client's retry reaches `x` only.
        c.nodes[x].on_request(now, 77, put(2));
        c.run(now, now + 1_000 * MS, &none);
        let answered: Vec<&Outcome> = c
            .replies
            .iter()
            .filter(|(_, r)| r.conn == 77 && r.req_id == 2)
            .map(|(_, r)| &r.outcome)
            .collect();
        assert!(
            matches!(answered.as_slice(), [Outcome::Put { .. }]),
            "the retry was not voted again: {answered:?}"
        );
        for n in &c.nodes {
            assert_eq!(n.kv().digest(), c.nodes[x].kv().digest());
        }
    }

    /// A follower behind a peer's floor fetches the snapshot in chunks; a lost chunk is asked
    /// for again from the offset held (resumed, not restarted), a damaged transfer fails its
    /// checksum and is fetched again, and the installed state is the peer's, client table
    /// included.
    #[test]
    fn snapshot_transfer_resumes_checks_and_installs() {
        let mut kv = KvStore::new();
        for i in 0..20u64 {
            let op = kv::Op::Put {
                key: Bytes::from(format!("key/{i}")),
                value: Bytes::from(vec![b'v'; 30]),
            };
            kv.apply(i + 1, 1, &op.encode());
        }
        let image = kv.encode_snapshot(10);
        let mut a = node(0, Restored::from_snapshot(10, image.clone()).unwrap());
        let mut b = node(1, Restored::empty());
        let mut now = 10 * MS;
        // B learns that A truncated what it needs.
        b.on_peer(
            now,
            Envelope {
                from: 0,
                to: 1,
                msg: Message::CatchupReply {
                    entries: Vec::new(),
                    floor: 10,
                },
            },
        );
        b.drive(now);
        let mut to_a: Vec<Envelope> = take(&mut b).messages;
        assert!(matches!(
            to_a[0].msg,
            Message::SnapshotRequest { offset: 0, .. }
        ));
        let mut lost_one = false;
        let mut damaged_one = false;
        let mut requests = 0;
        let mut resumed_from = Vec::new();
        for _ in 0..1000 {
            if b.replica().status().applied == 10 {
                break;
            }
            for env in to_a.drain(..) {
                if let Message::SnapshotRequest { offset, .. } = env.msg {
                    requests += 1;
                    resumed_from.push(offset);
                }
                a.on_peer(now, env);
            }
            a.drive(now);
            for mut env in take(&mut a).messages {
                if let Message::SnapshotChunk { offset, data, .. } = &mut env.msg {
                    if *offset == 500 && !lost_one {
                        lost_one = true;
                        continue; // lost on the way
                    }
                    if *offset == 900 && !damaged_one {
                        damaged_one = true;
                        let mut bad = data.to_vec();
                        bad[0] ^= 1;
                        *data = Bytes::from(bad);
                    }
                }
                b.on_peer(now, env);
            }
            b.drive(now);
            let out = take(&mut b);
            to_a.extend(out.messages);
            if to_a.is_empty() {
                // Nothing asked: only the retry timer moves things on.
                now += 100 * MS;
                b.tick(now);
                b.drive(now);
                to_a.extend(take(&mut b).messages);
            }
        }
        assert!(lost_one && damaged_one);
        assert_eq!(b.replica().status().applied, 10);
        assert_eq!(b.replica().status().floor, 10);
        assert_eq!(
            b.kv().digest(),
            kv.digest(),
            "keys and client table arrived"
        );
        assert!(
            resumed_from.contains(&500),
            "the lost chunk was asked for again from its offset: {resumed_from:?}"
        );
        assert!(
            resumed_from.iter().filter(|o| **o == 0).count() >= 2,
            "the damaged transfer was fetched again: {resumed_from:?}"
        );
        assert!(requests > 2 * image.len() / 400, "windows, not one request");
        assert_eq!(b.snapshot_latest().map(|(s, _)| s), Some(10));
    }
}
