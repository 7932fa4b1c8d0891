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
//! Failure: a WAL error or a safety violation stops the node for good ([`Node::failed`]): it
//! answers every waiting client `NotLeader`, takes part in nothing, and the operator restarts
//! the replica (which recovers from what is durable).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::disk::Disk;
use super::metrics::{GroupMetrics, LocalHistogram};
use super::storage::Storage;
use crate::kv::{self, KvStore, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::net::wire::{self, group_of, GroupStatus, Op, Outcome, Request};
use crate::protocol::{
    self, Command, DurableState, Envelope, FastCounters, LeaseReadCounters, Nanos, NotLeader,
    ReadOutcome, Replica, ReplicaId, Role, Slot, Value,
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
}

/// A reply for one client request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub conn: ConnId,
    pub req_id: u64,
    pub outcome: Outcome,
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
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.replies.is_empty()
            && self.applied.is_empty()
            && self.self_messages.is_empty()
    }

    pub fn clear(&mut self) {
        self.messages.clear();
        self.replies.clear();
        self.applied.clear();
        self.self_messages.clear();
    }
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    conn: ConnId,
    req_id: u64,
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
}

impl<D: Disk> Node<D> {
    /// Starts a node from recovered durable state. `now` is the time after recovery: the
    /// replica's timers start here, so a long recovery does not trigger an election before
    /// its peers could speak.
    pub fn new(
        cfg: NodeConfig,
        mut storage: Storage<D>,
        durable: &DurableState,
        now: Nanos,
        metrics: GroupMetrics,
    ) -> Node<D> {
        if cfg.inject_ack_before_durable {
            storage.inject_ack_before_durable();
        }
        let wal_backend = storage.disk().backend_name();
        Node {
            replica: Replica::new(cfg.protocol.clone(), durable, now),
            kv: KvStore::new(),
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
        }
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
        self.failed.is_none().then(|| self.replica.poll_timeout())
    }

    /// Whether writes are waiting for the disk (a shell without a completion signal polls).
    pub fn disk_busy(&self) -> bool {
        self.failed.is_none() && self.storage.pending() > 0
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
        self.replica.step(now, envelope);
    }

    /// The disk may have completed writes.
    pub fn on_disk(&mut self, now: Nanos) {
        if self.failed.is_some() {
            return;
        }
        match self.storage.poll(now) {
            Ok(durable) => {
                for s in &durable.write_seconds {
                    self.fsync_hist.observe(*s);
                }
                if let Some(id) = durable.up_to {
                    self.replica.persisted(now, id);
                }
            }
            Err(e) => self.fail(e.to_string()),
        }
    }

    /// Runs the protocol's timers if they are due.
    pub fn tick(&mut self, now: Nanos) {
        if self.failed.is_none() && now >= self.replica.poll_timeout() {
            self.replica.tick(now);
        }
    }

    /// A client request. `now` must be read after the request's bytes were read (a lease
    /// check must not use a time before the read arrived).
    pub fn on_request(&mut self, now: Nanos, conn: ConnId, req: Request) {
        let waiter = Waiter {
            conn,
            req_id: req.id,
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
        let id = (req.client_id, req.seq);
        if let Some(w) = self.pending_writes.get_mut(&id) {
            // A retry of a command still in flight here: answer the newest asker only.
            let old = std::mem::replace(w, waiter);
            self.bump_waiting(old.conn, -1);
            self.bump_waiting(waiter.conn, 1);
            return;
        }
        if self.storage.backlog_bytes() > self.cfg.backlog_bytes_max {
            // The disk is behind: push back on clients instead of queueing without bound.
            self.answer_now(waiter, Outcome::Busy);
            return;
        }
        let command = Command {
            client_id: id.0,
            seq: id.1,
            payload: op.encode(),
        };
        match self.replica.propose(now, command) {
            Ok(()) => {
                self.pending_writes.insert(id, waiter);
                self.bump_waiting(waiter.conn, 1);
            }
            Err(e) => {
                self.metrics.proposals_failed_total.inc();
                self.answer_now(waiter, not_leader_outcome(e));
            }
        }
    }

    fn start_read(&mut self, now: Nanos, waiter: Waiter, key: Bytes, linearizable: bool) {
        if !linearizable {
            let reply = self.kv.get(&key);
            self.answer_now(waiter, wire::outcome_from_reply(reply));
            return;
        }
        let id = self.next_read_id;
        self.next_read_id += 1;
        match self.replica.read_index(now, id) {
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
            if !ready.writes.is_empty() {
                if let Err(e) = self.storage.submit(now, ready.writes) {
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
                self.apply(slot, value);
            }
            for read in ready.reads {
                let Some((waiter, key)) = self.pending_reads.remove(&read.id) else {
                    continue;
                };
                let outcome = match read.outcome {
                    ReadOutcome::Ready => wire::outcome_from_reply(self.kv.get(&key)),
                    ReadOutcome::NotLeader { leader } => Outcome::NotLeader { leader },
                };
                self.answer(waiter, outcome);
            }
            for d in ready.dropped {
                if let Some(waiter) = self.pending_writes.remove(&(d.client_id, d.seq)) {
                    self.metrics.proposals_failed_total.inc();
                    self.answer(waiter, Outcome::NotLeader { leader: d.leader });
                }
            }
            let msgs = std::mem::take(&mut self.self_msgs);
            for env in msgs {
                self.replica.step(now, env);
            }
        }
        self.observe_status();
    }

    /// Moves everything the shell must do into `into` (which is cleared first).
    pub fn take_output(&mut self, into: &mut Output) {
        into.clear();
        std::mem::swap(into, &mut self.out);
    }

    fn apply(&mut self, slot: Slot, value: Value) {
        let cmds = value.commands();
        if self.last_role == Role::Leader && !cmds.is_empty() {
            self.batch_hist.observe(cmds.len() as f64);
        }
        for cmd in cmds {
            let reply = self.kv.apply(cmd.client_id, cmd.seq, &cmd.payload);
            if let Some(waiter) = self.pending_writes.remove(&(cmd.client_id, cmd.seq)) {
                self.answer(waiter, wire::outcome_from_reply(reply));
            }
        }
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
        self.out.replies.push(ClientReply {
            conn: w.conn,
            req_id: w.req_id,
            outcome,
        });
    }

    fn answer(&mut self, w: Waiter, outcome: Outcome) {
        self.bump_waiting(w.conn, -1);
        self.answer_now(w, outcome);
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

fn not_leader_outcome(e: NotLeader) -> Outcome {
    match e {
        NotLeader::Redirect { leader } => Outcome::NotLeader { leader },
        NotLeader::QueueFull => Outcome::Busy,
    }
}
