//! The client's sans-IO session: everything the client decides, nothing it does.
//!
//! A [`Session`] routes operations to their group's leader, follows redirects, backs off when
//! the server is busy or leaderless, retries on another replica when an attempt takes longer
//! than the latency it has observed warrants, keeps writes exactly-once across those retries
//! (a write keeps its (client id, seq) on every attempt), gives up at the operation's deadline,
//! and says whether a write it gave up on was *definitely not applied* or has an *unknown*
//! outcome. It owns no socket, reads no clock, never sleeps and draws no thread randomness:
//! time is an argument (`now`, nanoseconds on any monotonic clock the caller likes) and the
//! backoff jitter comes from [`SessionConfig::seed`]. The blocking [`super::Client`] drives one
//! over TCP; the simulator can drive the very same logic over its simulated network.
//!
//! # Driving a session (quinn-proto style)
//!
//! After every input — [`Session::start`], [`Session::on_reply`], [`Session::on_send_failed`],
//! [`Session::on_link_failed`], [`Session::on_timeout`] — the caller must:
//! 1. drain [`Session::poll_transmit`] and send each request to its (replica, group), reporting
//!    a request that could not be written at all with [`Session::on_send_failed`];
//! 2. drain [`Session::poll_complete`] for finished operations;
//! 3. re-read [`Session::poll_timeout`] and call [`Session::on_timeout`] once the clock reaches
//!    it (calling it early or late is harmless: it acts on what is due at `now`).
//!
//! # Pipelining and exactly-once
//!
//! The store keeps only the *last* applied sequence number per client id (`kv::KvStore::apply`:
//! a lower one is answered `Stale` and not applied). So a session has `lanes` client ids, and
//! each lane carries at most one write at a time, with sequence numbers increasing by one per
//! write. Up to `lanes` writes are in flight at once; more wait in FIFO order for a lane. Writes
//! on different lanes are not ordered with respect to each other: a caller that needs B after A
//! waits for A to complete. Reads carry no sequence number and are never queued.
//!
//! Once a lane's write completes (even as [`SessionError::Unknown`]), the lane's next write uses
//! the next sequence number. An old attempt that is still travelling can then be applied only
//! *before* the new write: once the new sequence number is applied the old one is `Stale`.
//!
//! # Outcome classification
//!
//! Every attempt ends in a state: answered, refused (`Busy`, `WrongGroup`, a read's
//! `NotLeader`), not delivered (the caller could not write it: connection refused, handshake
//! failed), or *possibly delivered* (no answer within its deadline, the connection dropped
//! after it was written, or a write answered `NotLeader`). A write that gives up with at least
//! one possibly-delivered attempt is [`SessionError::Unknown`]; otherwise it is
//! [`SessionError::NotApplied`]. A write's `NotLeader` is possibly delivered because the
//! runtime answers `NotLeader` also to writes it had already proposed when it lost leadership
//! (`runtime/group.rs`, `fail_waiting`), and the next leader may still choose them. Reads are
//! idempotent: a read that gives up is always `NotApplied`.
//!
//! Details and the state machine: `docs/internals/client.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::wire::{Op, Outcome, Request};

/// Nanoseconds on the caller's monotonic clock.
pub type Nanos = u64;

const MS: Nanos = 1_000_000;

/// Names one operation from [`Session::start`] to [`Session::poll_complete`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(pub u64);

#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Lane 0's client id; lane `i > 0` uses [`lane_client_id`]`(client_id, i)`.
    pub client_id: u64,
    /// Writes in flight at once (one per client id); at least 1.
    pub lanes: u32,
    /// Groups in the cluster (keys are routed by [`group_of`]).
    pub groups: u32,
    /// Replicas in the cluster, ids `0..replicas`.
    pub replicas: u32,
    /// Per group, the leader to try first (from the topology); may be empty.
    pub leaders: Vec<Option<u32>>,
    /// The most one attempt waits for its answer before the session tries elsewhere; the
    /// observed-latency deadline (RTO) is capped by it.
    pub attempt_timeout_ns: Nanos,
    /// The least one attempt waits (the RTO's floor).
    pub attempt_timeout_min_ns: Nanos,
    /// The RTO before any latency has been observed.
    pub initial_rto_ns: Nanos,
    /// A whole operation, queueing and retries included, gives up after this long.
    pub op_timeout_ns: Nanos,
    /// First backoff after `Busy` or a leaderless `NotLeader`; doubles per retry.
    pub backoff_ns: Nanos,
    pub backoff_max_ns: Nanos,
    /// A replica that timed out or whose connection failed is avoided for this long (or until
    /// it answers something), unless every replica is avoided.
    pub suspect_ns: Nanos,
    /// Serializable reads (which any replica may answer) are also sent to a second replica if
    /// the first has not answered within the hedge delay (srtt + 2 rttvar, at least 1 ms).
    pub hedge_reads: bool,
    /// Send a linearizable read's first attempt here (the nearest replica, with quorum
    /// leases it may serve the read locally); a refusal falls back to the leader as usual.
    pub read_from: Option<u32>,
    /// Fast Paxos clusters (`protocol = "fast-paxos"`): every write attempt also goes to every
    /// other replica (they vote for it in the fast round), and the first attempt's primary is
    /// this replica — the nearest, whose answer the client expects first. Any definite answer
    /// completes the write (every replica applies the same log; replies of the others are
    /// usually later). `None`: writes go to the leader only. Each such attempt carries a
    /// deadline ([`Session::fast_deadline`]) by which acceptors order concurrent writes.
    pub fast_write_via: Option<u32>,
    /// Seeds the backoff jitter.
    pub seed: u64,
}

impl SessionConfig {
    /// Defaults: attempts between 50 ms and 1 s (by observed latency, 250 ms before any),
    /// operations 10 s, backoff 5 ms doubling to 200 ms, suspicion 1 s, one lane, hedged
    /// serializable reads.
    pub fn new(client_id: u64, groups: u32, replicas: u32) -> SessionConfig {
        SessionConfig {
            client_id,
            lanes: 1,
            groups,
            replicas,
            leaders: Vec::new(),
            attempt_timeout_ns: 1000 * MS,
            attempt_timeout_min_ns: 50 * MS,
            initial_rto_ns: 250 * MS,
            op_timeout_ns: 10_000 * MS,
            backoff_ns: 5 * MS,
            backoff_max_ns: 200 * MS,
            suspect_ns: 1000 * MS,
            hedge_reads: true,
            read_from: None,
            fast_write_via: None,
            seed: client_id,
        }
    }
}

/// The client id of lane `lane` of a session whose lane 0 is `base` (splitmix64 of both;
/// odd, like the ids [`super::Client`] draws).
pub fn lane_client_id(base: u64, lane: u32) -> u64 {
    if lane == 0 {
        return base;
    }
    let mut z = base ^ (lane as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1
}

/// One request to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub replica: u32,
    pub group: u32,
    /// `request.id` is unique per attempt; writes keep their (client_id, seq) on every attempt.
    pub request: Request,
}

/// Why an operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Gave up, and the operation was definitely not applied: nothing was delivered, or every
    /// delivery was refused before the server could apply it (or it was a read).
    #[error("not applied: gave up after {attempts} attempt(s) (last problem: {reason})")]
    NotApplied { attempts: u32, reason: String },
    /// Gave up on a write that may have been applied: it reached a replica that then did not
    /// answer definitely. Read the key to find out.
    #[error("outcome unknown: the write may have been applied; no definite answer after {attempts} attempt(s) (last problem: {reason})")]
    Unknown { attempts: u32, reason: String },
    /// The server places the key in another group: client and server disagree on the group
    /// count. Not applied.
    #[error("the server places this key in group {server_group}, the client in {client_group}: client and server disagree on the group count")]
    WrongGroup {
        client_group: u32,
        server_group: u32,
    },
}

impl SessionError {
    /// Whether the operation may have been applied.
    pub fn maybe_applied(&self) -> bool {
        matches!(self, SessionError::Unknown { .. })
    }
}

/// Counters, for the load generator and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub started: u64,
    pub completed: u64,
    /// Attempts after an operation's first (redirects, timeouts, busy, lost links).
    pub retries: u64,
    pub redirects: u64,
    pub busy: u64,
    /// Attempts whose deadline passed.
    pub attempt_timeouts: u64,
    /// Hedged (duplicate) serializable reads sent.
    pub hedges: u64,
    /// Replies to no pending attempt (abandoned by a finished operation, or unknown ids).
    pub stale_replies: u64,
}

/// TCP-style (RFC 6298) smoothed latency and variation of one replica's answers.
#[derive(Clone, Copy, Debug, Default)]
struct Rtt {
    srtt: Nanos,
    rttvar: Nanos,
    /// The least round trip seen (Fast Paxos deadlines: the network part of a round trip,
    /// without the server's queueing or a write's consensus).
    min: Nanos,
    samples: u64,
    /// RTO doublings since the last sample (consecutive timeouts).
    shift: u32,
}

impl Rtt {
    fn sample(&mut self, r: Nanos) {
        if self.samples == 0 {
            self.srtt = r;
            self.rttvar = r / 2;
            self.min = r;
        } else {
            self.min = self.min.min(r);
            self.rttvar = (3 * self.rttvar + self.srtt.abs_diff(r)) / 4;
            self.srtt = (7 * self.srtt + r) / 8;
        }
        self.samples += 1;
        self.shift = 0;
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct ReplicaState {
    rtt: Rtt,
    /// Avoided until then (0: not suspect).
    suspect_until: Nanos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AttemptState {
    /// Sent, no answer yet, deadline not passed.
    InFlight,
    /// A definite answer.
    Answered,
    /// Refused before the server could apply it (Busy, WrongGroup, a read's NotLeader).
    Refused,
    /// The caller could not write it (connection refused, handshake failed).
    NotDelivered,
    /// Delivered or maybe delivered, without a definite answer: deadline passed, connection
    /// lost after writing, or a write's NotLeader (see the module docs). A later answer to
    /// this very attempt still counts.
    MaybeDelivered,
}

#[derive(Clone, Debug)]
struct Attempt {
    request_id: u64,
    replica: u32,
    sent_at: Nanos,
    state: AttemptState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A write waiting for a free lane.
    Queued,
    /// Waiting before the next attempt.
    Backoff { until: Nanos },
    /// The current attempt is out; past `timer` the session tries elsewhere.
    InFlight { timer: Nanos },
}

#[derive(Clone, Debug)]
struct OpState {
    op: Op,
    group: u32,
    write: bool,
    lane: Option<u32>,
    client_id: u64,
    seq: u64,
    deadline: Nanos,
    phase: Phase,
    attempts: Vec<Attempt>,
    /// The attempt whose timer drives retries.
    current: Option<usize>,
    backoff_ns: Nanos,
    /// When to hedge the current attempt (serializable reads).
    hedge_at: Option<Nanos>,
    last_problem: String,
    /// Replicas that answered any attempt of this operation (for the give-up message).
    answered_by: BTreeSet<u32>,
}

impl OpState {
    fn hedgeable(&self) -> bool {
        matches!(
            self.op,
            Op::Get {
                linearizable: false,
                ..
            }
        )
    }
}

#[derive(Clone, Debug)]
struct Lane {
    client_id: u64,
    /// Per group, the last sequence number this lane used there: each group's store keeps
    /// its own session of the client id, and sees its numbers contiguous from 1.
    seqs: Vec<u64>,
    busy: Option<OpId>,
}

/// The sans-IO client: see the module docs.
pub struct Session {
    cfg: SessionConfig,
    rng: ChaCha8Rng,
    leaders: Vec<Option<u32>>,
    /// Per group, the replica the last probe went to.
    probe: Vec<u32>,
    replicas: Vec<ReplicaState>,
    /// Over all replicas: the estimate for a replica not heard from yet.
    global: Rtt,
    lanes: Vec<Lane>,
    waiting_for_lane: VecDeque<OpId>,
    ops: BTreeMap<OpId, OpState>,
    /// Request id → (operation, attempt index), for pending operations only.
    requests: HashMap<u64, (OpId, usize)>,
    next_op: u64,
    next_request: u64,
    transmits: VecDeque<Transmit>,
    completed: VecDeque<(OpId, Result<Outcome, SessionError>)>,
    stats: SessionStats,
}

impl Session {
    pub fn new(cfg: SessionConfig) -> Session {
        let groups = cfg.groups.max(1) as usize;
        let mut leaders = cfg.leaders.clone();
        leaders.resize(groups, None);
        for l in leaders.iter_mut() {
            *l = l.filter(|&r| r < cfg.replicas);
        }
        let lanes = (0..cfg.lanes.max(1))
            .map(|i| Lane {
                client_id: lane_client_id(cfg.client_id, i),
                seqs: vec![0; groups],
                busy: None,
            })
            .collect();
        Session {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            leaders,
            // The first probe goes to replica 0.
            probe: vec![cfg.replicas.max(1) - 1; groups],
            replicas: vec![ReplicaState::default(); cfg.replicas as usize],
            global: Rtt::default(),
            lanes,
            waiting_for_lane: VecDeque::new(),
            ops: BTreeMap::new(),
            requests: HashMap::new(),
            next_op: 1,
            next_request: 1,
            transmits: VecDeque::new(),
            completed: VecDeque::new(),
            stats: SessionStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// Lane 0's client id.
    pub fn client_id(&self) -> u64 {
        self.lanes[0].client_id
    }

    /// Every lane's client id.
    pub fn lane_client_ids(&self) -> Vec<u64> {
        self.lanes.iter().map(|l| l.client_id).collect()
    }

    /// The replica this session currently routes group `g` to, if it knows one.
    pub fn leader_of(&self, g: u32) -> Option<u32> {
        self.leaders.get(g as usize).copied().flatten()
    }

    /// Fills in leaders this session does not know yet (e.g. from a handshake's topology).
    pub fn learn_leaders(&mut self, leaders: &[Option<u32>]) {
        for (mine, theirs) in self.leaders.iter_mut().zip(leaders) {
            if mine.is_none() {
                *mine = theirs.filter(|&r| r < self.cfg.replicas);
            }
        }
    }

    /// Feeds a latency measured outside requests (e.g. a handshake round trip) to `replica`'s
    /// estimator.
    pub fn observe_rtt(&mut self, replica: u32, rtt_ns: Nanos) {
        if let Some(r) = self.replicas.get_mut(replica as usize) {
            r.rtt.sample(rtt_ns);
            self.global.sample(rtt_ns);
        }
    }

    /// How long the next attempt to `replica` may take before the session tries elsewhere:
    /// `srtt + 4 rttvar` of its answers (of all replicas' if it has none; `initial_rto_ns` if
    /// nobody answered yet), at least `attempt_timeout_min_ns`, doubled per consecutive timeout,
    /// at most `attempt_timeout_ns`. A shell may use it to bound a connection handshake.
    pub fn rto_ns(&self, replica: u32) -> Nanos {
        let st = self
            .replicas
            .get(replica as usize)
            .copied()
            .unwrap_or_default();
        let est = if st.rtt.samples > 0 {
            st.rtt
        } else {
            self.global
        };
        let base = if est.samples > 0 {
            est.srtt + 4 * est.rttvar
        } else {
            self.cfg.initial_rto_ns
        };
        base.max(self.cfg.attempt_timeout_min_ns)
            .saturating_mul(1 << st.rtt.shift.min(16))
            .min(self.cfg.attempt_timeout_ns)
            .max(1)
    }

    /// Fast Paxos: the deadline a write sent at `now` carries (`Request::fast_deadline_ns`, on
    /// the caller's clock): `now` + the estimated one-way delay to the `Qf`-th nearest replica,
    /// each replica's being half the least round trip observed to it (a replica not heard from
    /// counts as the nearest one heard from; before any answer, 0). Acceptors hold a write
    /// until then and vote held writes in deadline order (docs/internals/protocol.md §11).
    pub fn fast_deadline(&self, now: Nanos) -> Nanos {
        let known = self
            .replicas
            .iter()
            .filter(|r| r.rtt.samples > 0)
            .map(|r| r.rtt.min)
            .min();
        let mut one_way: Vec<Nanos> = self
            .replicas
            .iter()
            .map(|r| {
                if r.rtt.samples > 0 {
                    r.rtt.min / 2
                } else {
                    known.unwrap_or(0) / 2
                }
            })
            .collect();
        one_way.sort_unstable();
        let qf = crate::protocol::QuorumSpec::new(self.cfg.replicas.max(1)).fast() as usize;
        let est = one_way.get(qf.saturating_sub(1)).copied().unwrap_or(0);
        now.saturating_add(est).max(1)
    }

    fn hedge_delay(&self, replica: u32) -> Nanos {
        let st = self.replicas[replica as usize].rtt;
        let est = if st.samples > 0 { st } else { self.global };
        if est.samples == 0 {
            return self.rto_ns(replica) / 2;
        }
        (est.srtt + 2 * est.rttvar)
            .max(MS)
            .min(self.rto_ns(replica))
    }

    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// Operations started and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Starts `op`. Writes take a free lane (or queue for one); reads go at once. Poll
    /// afterwards (see the module docs).
    pub fn start(&mut self, now: Nanos, op: Op) -> OpId {
        let id = OpId(self.next_op);
        self.next_op += 1;
        self.stats.started += 1;
        let write = !matches!(op, Op::Get { .. });
        let state = OpState {
            group: op.group(self.cfg.groups),
            op,
            write,
            lane: None,
            client_id: self.lanes[0].client_id,
            seq: 0,
            deadline: now.saturating_add(self.cfg.op_timeout_ns),
            phase: Phase::Queued,
            attempts: Vec::new(),
            current: None,
            backoff_ns: self.cfg.backoff_ns,
            hedge_at: None,
            last_problem: "none".into(),
            answered_by: BTreeSet::new(),
        };
        self.ops.insert(id, state);
        if write {
            match self.lanes.iter().position(|l| l.busy.is_none()) {
                Some(lane) => self.assign_lane(now, id, lane as u32),
                None => {
                    self.ops.get_mut(&id).expect("just inserted").last_problem =
                        "every lane was busy (waiting for a free lane)".into();
                    self.waiting_for_lane.push_back(id);
                }
            }
        } else {
            self.send_attempt(now, id, None);
        }
        id
    }

    fn assign_lane(&mut self, now: Nanos, id: OpId, lane: u32) {
        let group = self.ops.get(&id).expect("pending op").group as usize;
        let l = &mut self.lanes[lane as usize];
        l.seqs[group] += 1;
        l.busy = Some(id);
        let (client_id, seq) = (l.client_id, l.seqs[group]);
        let op = self.ops.get_mut(&id).expect("pending op");
        op.lane = Some(lane);
        op.client_id = client_id;
        op.seq = seq;
        self.send_attempt(now, id, None);
    }

    /// The next request to send, if any. Poll until `None` after every input.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next finished operation, if any.
    /// The (client id, seq) a pending write carries once it has a lane (the same on every
    /// attempt); `None` for reads, queued writes and finished operations.
    pub fn write_identity(&self, id: OpId) -> Option<(u64, u64)> {
        let op = self.ops.get(&id)?;
        (op.write && op.lane.is_some()).then_some((op.client_id, op.seq))
    }

    pub fn poll_complete(&mut self) -> Option<(OpId, Result<Outcome, SessionError>)> {
        self.completed.pop_front()
    }

    /// When [`Session::on_timeout`] must next be called; `None` while nothing is pending.
    pub fn poll_timeout(&self) -> Option<Nanos> {
        self.ops
            .values()
            .flat_map(|op| {
                let phase = match op.phase {
                    Phase::Queued => None,
                    Phase::Backoff { until } => Some(until),
                    Phase::InFlight { timer } => Some(timer),
                };
                [Some(op.deadline), phase, op.hedge_at]
            })
            .flatten()
            .min()
    }

    fn suspect(&self, replica: u32, now: Nanos) -> bool {
        self.replicas[replica as usize].suspect_until > now
    }

    fn make_suspect(&mut self, replica: u32, group: u32, now: Nanos) {
        self.replicas[replica as usize].suspect_until = now.saturating_add(self.cfg.suspect_ns);
        if self.leaders[group as usize] == Some(replica) {
            self.leaders[group as usize] = None;
        }
    }

    /// The replica the next attempt for `group` goes to: the leader if known and not suspect,
    /// else the next replica in rotation that is not suspect (any, if all are), skipping
    /// `avoid` when there is a choice.
    fn choose_target(&mut self, now: Nanos, group: u32, avoid: Option<u32>) -> u32 {
        let n = self.cfg.replicas.max(1);
        if let Some(l) = self.leaders[group as usize] {
            if !self.suspect(l, now) && Some(l) != avoid {
                return l;
            }
        }
        let start = self.probe[group as usize];
        let pick = (1..=n)
            .map(|i| (start + i) % n)
            .find(|&r| !self.suspect(r, now) && Some(r) != avoid)
            .or_else(|| (1..=n).map(|i| (start + i) % n).find(|&r| Some(r) != avoid))
            .unwrap_or((start + 1) % n);
        self.probe[group as usize] = pick;
        pick
    }

    /// Sends a new attempt for `id`: the primary (its timer drives retries) unless `hedge_of`
    /// names the primary's replica, then a parallel duplicate to another replica.
    fn send_attempt(&mut self, now: Nanos, id: OpId, hedge_of: Option<u32>) {
        let Some(op) = self.ops.get(&id) else { return };
        let group = op.group;
        let local_read = matches!(
            op.op,
            Op::Get {
                linearizable: true,
                ..
            }
        ) && op.attempts.is_empty()
            && hedge_of.is_none();
        let fast_write = op.write && hedge_of.is_none() && self.cfg.fast_write_via.is_some();
        let first_fast = fast_write && op.attempts.is_empty();
        let target = match (self.cfg.read_from, self.cfg.fast_write_via) {
            (_, Some(r)) if first_fast && r < self.cfg.replicas && !self.suspect(r, now) => r,
            (Some(r), _) if local_read && r < self.cfg.replicas && !self.suspect(r, now) => r,
            _ => self.choose_target(now, group, hedge_of),
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let rto = self.rto_ns(target);
        let hedge_delay = self.hedge_delay(target);
        let fast_deadline_ns = if fast_write {
            self.fast_deadline(now)
        } else {
            0
        };
        let op = self.ops.get_mut(&id).expect("pending op");
        if !op.attempts.is_empty() && hedge_of.is_none() {
            self.stats.retries += 1;
        }
        let idx = op.attempts.len();
        op.attempts.push(Attempt {
            request_id,
            replica: target,
            sent_at: now,
            state: AttemptState::InFlight,
        });
        self.requests.insert(request_id, (id, idx));
        if hedge_of.is_none() {
            op.current = Some(idx);
            op.phase = Phase::InFlight {
                timer: now.saturating_add(rto).min(op.deadline),
            };
            op.hedge_at = (self.cfg.hedge_reads && op.hedgeable() && self.cfg.replicas > 1)
                .then(|| now.saturating_add(hedge_delay));
        } else {
            self.stats.hedges += 1;
        }
        self.transmits.push_back(Transmit {
            replica: target,
            group,
            request: Request {
                id: request_id,
                client_id: op.client_id,
                seq: op.seq,
                op: op.op.clone(),
                fast_deadline_ns,
            },
        });
        if fast_write {
            // The copies are attempts of their own (not current: their refusals start no
            // retry), so an operation given up with a copy out is reported Unknown.
            for replica in (0..self.cfg.replicas).filter(|&r| r != target) {
                let request_id = self.next_request;
                self.next_request += 1;
                let op = self.ops.get_mut(&id).expect("pending op");
                let idx = op.attempts.len();
                op.attempts.push(Attempt {
                    request_id,
                    replica,
                    sent_at: now,
                    state: AttemptState::InFlight,
                });
                self.requests.insert(request_id, (id, idx));
                self.transmits.push_back(Transmit {
                    replica,
                    group,
                    request: Request {
                        id: request_id,
                        client_id: op.client_id,
                        seq: op.seq,
                        op: op.op.clone(),
                        fast_deadline_ns,
                    },
                });
            }
        }
    }

    fn back_off(&mut self, now: Nanos, id: OpId) {
        let jitter = self.rng.gen_range(0.5..=1.0);
        let op = self.ops.get_mut(&id).expect("pending op");
        let wait = (op.backoff_ns as f64 * jitter) as Nanos;
        op.backoff_ns = op.backoff_ns.saturating_mul(2).min(self.cfg.backoff_max_ns);
        op.current = None;
        op.hedge_at = None;
        op.phase = Phase::Backoff {
            until: now.saturating_add(wait).min(op.deadline),
        };
    }

    fn complete(&mut self, now: Nanos, id: OpId, result: Result<Outcome, SessionError>) {
        let Some(op) = self.ops.remove(&id) else {
            return;
        };
        for a in &op.attempts {
            self.requests.remove(&a.request_id);
        }
        self.stats.completed += 1;
        let applied = matches!(
            result,
            Ok(Outcome::Put { .. } | Outcome::Delete { .. } | Outcome::Cas { .. })
        );
        self.completed.push_back((id, result));
        if let Some(lane) = op.lane {
            if op.write && !applied {
                // The cluster may hold no record of this sequence number, and a session the
                // store does not know continues only from seq 1 (an unknown client at a
                // later seq looks like an expired session: `kv::KvStore::apply`). Start a new
                // session for the lane's next write.
                let l = &mut self.lanes[lane as usize];
                l.client_id = self.rng.gen::<u64>() | 1;
                l.seqs.iter_mut().for_each(|s| *s = 0);
            }
            self.lanes[lane as usize].busy = None;
            while let Some(next) = self.waiting_for_lane.pop_front() {
                if self.ops.get(&next).is_some_and(|o| now >= o.deadline) {
                    // Its time ran out in the queue: it never leaves.
                    self.give_up(now, next);
                    continue;
                }
                self.assign_lane(now, next, lane);
                break;
            }
        }
    }

    fn give_up(&mut self, now: Nanos, id: OpId) {
        let Some(op) = self.ops.get(&id) else { return };
        let attempts = op.attempts.len() as u32;
        let n = self.replicas.len();
        let majority = n / 2 + 1;
        let reason = if attempts > 1 && op.answered_by.len() < majority {
            // Say what the operator needs to know first: the cluster cannot decide anything.
            let who: Vec<String> = op.answered_by.iter().map(|r| r.to_string()).collect();
            format!(
                "no quorum reachable: {} of {n} replicas answered{} and a majority is {majority}; {}",
                op.answered_by.len(),
                if who.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", who.join(", "))
                },
                op.last_problem
            )
        } else {
            op.last_problem.clone()
        };
        let maybe = op.write
            && op.attempts.iter().any(|a| {
                matches!(
                    a.state,
                    AttemptState::InFlight | AttemptState::MaybeDelivered
                )
            });
        let err = if maybe {
            SessionError::Unknown { attempts, reason }
        } else {
            SessionError::NotApplied { attempts, reason }
        };
        self.waiting_for_lane.retain(|&w| w != id);
        self.complete(now, id, Err(err));
    }

    /// A reply from (replica, group) to request `request_id`. Replies to attempts of finished
    /// operations, or that do not match the attempt's (replica, group), are ignored.
    pub fn on_reply(
        &mut self,
        now: Nanos,
        replica: u32,
        group: u32,
        request_id: u64,
        outcome: Outcome,
    ) {
        let Some(&(id, idx)) = self.requests.get(&request_id) else {
            self.stats.stale_replies += 1;
            return;
        };
        let op = self.ops.get(&id).expect("requests only name pending ops");
        let a = &op.attempts[idx];
        if a.replica != replica || op.group != group || a.state == AttemptState::Answered {
            self.stats.stale_replies += 1;
            return;
        }
        let (write, sent_at, is_current) = (op.write, a.sent_at, op.current == Some(idx));
        let linearizable = write
            || matches!(
                op.op,
                Op::Get {
                    linearizable: true,
                    ..
                }
            );
        // It answered: it is alive.
        self.replicas[replica as usize].suspect_until = 0;
        self.ops
            .get_mut(&id)
            .expect("pending op")
            .answered_by
            .insert(replica);
        let set = |s: &mut Session, st: AttemptState, problem: Option<String>| {
            let op = s.ops.get_mut(&id).expect("pending op");
            op.attempts[idx].state = st;
            if let Some(p) = problem {
                op.last_problem = p;
            }
        };
        match outcome {
            Outcome::NotLeader { leader } => {
                self.stats.redirects += 1;
                // A write the server had proposed may still be chosen (module docs).
                let st = if write {
                    AttemptState::MaybeDelivered
                } else {
                    AttemptState::Refused
                };
                set(
                    self,
                    st,
                    Some(format!(
                        "replica {replica} is not the leader of group {group} (hint {leader:?})"
                    )),
                );
                let hint = leader.filter(|&l| l != replica && l < self.cfg.replicas);
                let g = group as usize;
                if hint.is_some() {
                    self.leaders[g] = hint;
                } else if self.leaders[g] == Some(replica) {
                    self.leaders[g] = None;
                }
                if is_current {
                    match hint {
                        Some(l) if !self.suspect(l, now) => self.send_attempt(now, id, None),
                        _ => self.back_off(now, id),
                    }
                }
            }
            Outcome::Busy => {
                self.stats.busy += 1;
                set(
                    self,
                    AttemptState::Refused,
                    Some(format!("replica {replica} is busy")),
                );
                if is_current {
                    self.back_off(now, id);
                }
            }
            Outcome::WrongGroup {
                group: server_group,
            } => {
                set(self, AttemptState::Refused, None);
                self.complete(
                    now,
                    id,
                    Err(SessionError::WrongGroup {
                        client_group: group,
                        server_group,
                    }),
                );
            }
            outcome => {
                set(self, AttemptState::Answered, None);
                if !matches!(outcome, Outcome::Invalid { .. }) {
                    let rtt = now.saturating_sub(sent_at);
                    self.replicas[replica as usize].rtt.sample(rtt);
                    self.global.sample(rtt);
                    // A linearizable answer names the leader, unless a lease holder gave it or
                    // (Fast Paxos) any replica may have answered the write.
                    let named = if write {
                        self.cfg.fast_write_via.is_none()
                    } else {
                        linearizable && self.cfg.read_from.is_none()
                    };
                    if named {
                        self.leaders[group as usize] = Some(replica);
                    }
                }
                self.complete(now, id, Ok(outcome));
            }
        }
    }

    /// Request `request_id` could not be written at all (connection refused, handshake
    /// failed or timed out before the request was written): it was not delivered.
    pub fn on_send_failed(&mut self, now: Nanos, request_id: u64, reason: &str) {
        let Some(&(id, idx)) = self.requests.get(&request_id) else {
            return;
        };
        let op = self.ops.get_mut(&id).expect("pending op");
        let a = &mut op.attempts[idx];
        if a.state != AttemptState::InFlight {
            return;
        }
        a.state = AttemptState::NotDelivered;
        let replica = a.replica;
        op.last_problem = format!("replica {replica}: {reason}");
        let (group, is_current) = (op.group, op.current == Some(idx));
        self.make_suspect(replica, group, now);
        if is_current {
            self.back_off(now, id);
        }
    }

    /// The connection to (replica, group) failed after requests may have been written on it
    /// (closed, reset, an error frame): every attempt in flight there may have been delivered.
    pub fn on_link_failed(&mut self, now: Nanos, replica: u32, group: u32, reason: &str) {
        let mut retry = Vec::new();
        let mut any = false;
        for (&id, op) in self.ops.iter_mut() {
            if op.group != group {
                continue;
            }
            for (idx, a) in op.attempts.iter_mut().enumerate() {
                if a.replica == replica && a.state == AttemptState::InFlight {
                    a.state = AttemptState::MaybeDelivered;
                    op.last_problem = format!("replica {replica}: {reason}");
                    any = true;
                    if op.current == Some(idx) {
                        retry.push(id);
                    }
                }
            }
        }
        if any || self.leaders[group as usize] == Some(replica) {
            self.make_suspect(replica, group, now);
        }
        for id in retry {
            self.back_off(now, id);
        }
    }

    /// Acts on everything due at `now`: operation deadlines (give up), backoffs (send again),
    /// attempt deadlines (try another replica; the late attempt's answer still counts) and
    /// hedges. Poll afterwards.
    pub fn on_timeout(&mut self, now: Nanos) {
        let ids: Vec<OpId> = self.ops.keys().copied().collect();
        for id in ids {
            let Some(op) = self.ops.get(&id) else {
                continue;
            };
            if now >= op.deadline {
                self.give_up(now, id);
                continue;
            }
            match op.phase {
                Phase::Backoff { until } if until <= now => self.send_attempt(now, id, None),
                Phase::InFlight { timer } if timer <= now => {
                    let idx = op.current.expect("in flight has a current attempt");
                    let group = op.group;
                    let op = self.ops.get_mut(&id).expect("pending op");
                    let a = &mut op.attempts[idx];
                    if a.state == AttemptState::InFlight {
                        a.state = AttemptState::MaybeDelivered;
                    }
                    let replica = a.replica;
                    op.last_problem = format!(
                        "replica {replica} did not answer within {} ms",
                        (now - a.sent_at) / MS
                    );
                    self.stats.attempt_timeouts += 1;
                    let st = &mut self.replicas[replica as usize];
                    st.rtt.shift = (st.rtt.shift + 1).min(16);
                    self.make_suspect(replica, group, now);
                    self.send_attempt(now, id, None);
                }
                _ => {
                    if let (Some(at), Some(cur)) = (op.hedge_at, op.current) {
                        if at <= now {
                            let primary = op.attempts[cur].replica;
                            self.ops.get_mut(&id).expect("pending op").hedge_at = None;
                            self.send_attempt(now, id, Some(primary));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
