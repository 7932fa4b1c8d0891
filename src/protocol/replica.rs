//! One group's Multi-Paxos replica: proposer, acceptor and learner in one state machine.
//!
//! Rules (architecture §4), each enforced here and listed with its invariant in
//! `docs/internals/protocol.md`:
//! - an acceptor reports state (Promise, Accepted) only after it is durable;
//! - phase 1 runs once per leadership, for every slot from the first one not known chosen;
//! - the new leader re-proposes the highest-ballot value of each reported slot (a value known
//!   chosen outranks every ballot) and fills gaps with no-ops;
//! - phase 2 is pipelined (`pipeline_depth` slots in flight), each slot holding a batch;
//! - followers stay with a live leader: a prepare from anyone else is refused while the leader
//!   was heard within the minimum election timeout, and a leader that loses its quorum steps
//!   down;
//! - reads use a read-index round: no durable write, a quorum confirms the ballot still leads.

use std::collections::{BTreeMap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fast::{FastCounters, FastOrder, ProtocolMode, Tally};
use super::lease::{grantor_hold_ms, LeaderLease, LeasePending, QuorumLease, ReadMode};
use super::log::{Compacted, Log};
use super::message::{
    Envelope, Message, PromiseEntry, ENTRY_OVERHEAD_BYTES, MESSAGE_OVERHEAD_BYTES,
};
use super::quorum::{QuorumSpec, VoteSet};
use super::types::{Ballot, Command, DurableState, Nanos, ReplicaId, Slot, Value, Write, WriteId};

#[path = "fast_rounds.rs"]
mod fast_rounds;

const NS_PER_US: u64 = 1_000;
use super::lease::NS_PER_MS;

/// A deliberate protocol bug, so the simulator's checks can be shown to bite.
/// Never set outside tests and `mpaxos sim --inject-bug`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedBug {
    /// Acceptors send Promise/Accepted before the write is durable.
    AckBeforePersist,
    /// A new leader ignores the values reported in phase 1 and reuses their slots.
    SkipValueAdoption,
    /// The leader trusts its leadership: reads are answered locally without a quorum round,
    /// and it never steps down on a lost quorum.
    StaleLeaderRead,
    /// Not a protocol bug: the node's storage mapping reports WAL writes durable as soon as
    /// they are handed to the disk (the simulator's crashes then lose acknowledged state).
    StorageAckBeforeDurable,
    /// Not a protocol bug: the replica's clock stops while its process or VM is suspended
    /// (CLOCK_MONOTONIC does), so a lease outlives the promises that back it.
    ClockStopsInSuspend,
    /// Followers stick to whichever leader spoke last: a Heartbeat or Accept at any ballot
    /// at or above `promised` is acknowledged and makes its sender the sticky leader, even
    /// after a higher-ballot leader was heard (the lease argument then fails with N >= 5).
    /// Like `StaleLeaderRead`, a leader that lost its quorum does not step down, so that two
    /// leaders overlap for longer than a message delay.
    LeaseFollowsLastSpeaker,
    /// Quorum leases: the leader commits a slot on a majority alone, without the votes of the
    /// lease holders its voters named.
    QleaseCommitWithoutHolder,
    /// Quorum leases: a holder serves a local read at its commit point, without waiting for
    /// the slots it (or its grantors, when they granted) had accepted but not applied.
    QleaseReadUnapplied,
    /// Quorum leases: a holder keeps reading on grants whose time is up.
    QleaseReadAfterExpiry,
    /// Quorum leases: a grantor stops naming a removed holder in its Accepteds at the slot
    /// that removes it, although the grants it gave that holder are still valid.
    QleaseConfigDropEarly,
    /// Fast Paxos: learners take a classic majority of matching fast-round votes as chosen
    /// (instead of ⌈3N/4⌉).
    FastQuorumMajority,
    /// Fast Paxos: recovery proposes the value of the highest-numbered voter, ignoring a value
    /// with a majority of the quorum (which may have been chosen).
    FastRecoveryAnyValue,
    /// Fast Paxos: an acceptor picks the slot for a new command above its commit point only,
    /// not above its own votes, so it may vote twice in one (slot, round).
    FastVoteTwice,
    /// Not a protocol bug: the node labels a snapshot with the highest slot its log holds
    /// instead of the slot its state machine has applied, so the log is truncated past the
    /// applied index (and a replica restarted from, or installing, that snapshot skips slots).
    SnapshotPastApplied,
    /// Not a protocol bug: a replica installs a peer's snapshot without its exactly-once
    /// client table (a retried command can then be applied twice).
    SnapshotWithoutClientTable,
}

impl InjectedBug {
    pub const ALL: [InjectedBug; 15] = [
        InjectedBug::AckBeforePersist,
        InjectedBug::SkipValueAdoption,
        InjectedBug::StaleLeaderRead,
        InjectedBug::StorageAckBeforeDurable,
        InjectedBug::ClockStopsInSuspend,
        InjectedBug::LeaseFollowsLastSpeaker,
        InjectedBug::QleaseCommitWithoutHolder,
        InjectedBug::QleaseReadUnapplied,
        InjectedBug::QleaseReadAfterExpiry,
        InjectedBug::QleaseConfigDropEarly,
        InjectedBug::FastQuorumMajority,
        InjectedBug::FastRecoveryAnyValue,
        InjectedBug::FastVoteTwice,
        InjectedBug::SnapshotPastApplied,
        InjectedBug::SnapshotWithoutClientTable,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            InjectedBug::AckBeforePersist => "ack-before-persist",
            InjectedBug::SkipValueAdoption => "skip-value-adoption",
            InjectedBug::StaleLeaderRead => "stale-leader-read",
            InjectedBug::StorageAckBeforeDurable => "storage-ack-before-durable",
            InjectedBug::ClockStopsInSuspend => "clock-stops-in-suspend",
            InjectedBug::LeaseFollowsLastSpeaker => "lease-follows-last-speaker",
            InjectedBug::QleaseCommitWithoutHolder => "qlease-commit-without-holder",
            InjectedBug::QleaseReadUnapplied => "qlease-read-unapplied",
            InjectedBug::QleaseReadAfterExpiry => "qlease-read-after-expiry",
            InjectedBug::QleaseConfigDropEarly => "qlease-config-drop-early",
            InjectedBug::FastQuorumMajority => "fast-quorum-majority",
            InjectedBug::FastRecoveryAnyValue => "fast-recovery-any-value",
            InjectedBug::FastVoteTwice => "fast-vote-twice",
            InjectedBug::SnapshotPastApplied => "snapshot-past-applied",
            InjectedBug::SnapshotWithoutClientTable => "snapshot-without-client-table",
        }
    }

    /// A bug in the Fast Paxos rules (only fast-paxos mode can show it).
    pub fn needs_fast_paxos(&self) -> bool {
        matches!(
            self,
            InjectedBug::FastQuorumMajority
                | InjectedBug::FastRecoveryAnyValue
                | InjectedBug::FastVoteTwice
        )
    }

    /// A bug in the quorum-lease rules (only quorum-lease mode can show it).
    pub fn needs_quorum_leases(&self) -> bool {
        matches!(
            self,
            InjectedBug::QleaseCommitWithoutHolder
                | InjectedBug::QleaseReadUnapplied
                | InjectedBug::QleaseReadAfterExpiry
                | InjectedBug::QleaseConfigDropEarly
        )
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Per-replica knobs. Times are in the units their names say.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: ReplicaId,
    pub replicas: u32,
    /// Seeds the election-jitter RNG (mixed with `id`).
    pub seed: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Slots proposed but not yet chosen, at most.
    pub pipeline_depth: usize,
    /// 1 turns batching off.
    pub batch_max_ops: usize,
    pub batch_max_bytes: usize,
    /// 0 = adaptive: a batch takes whatever queued while the pipeline was full.
    pub batch_delay_us: u64,
    /// Proposals waiting for a batch, at most; beyond it `propose` refuses.
    pub proposal_queue_max: usize,
    /// Chosen values per catch-up reply, at most.
    pub catchup_batch_max: usize,
    /// Estimated bytes (`Message::size_bytes`) of one Promise or CatchupReply, at most: larger
    /// ones are split (a message always carries at least one entry). Keep it well under the
    /// transport's frame limit (64 MiB between peers).
    pub message_bytes_max: usize,
    /// Bytes of values in flight (proposed, not yet chosen), at most: with big values the
    /// pipeline is bounded by bytes, not slots, so the Accepts queued on a peer link stay short
    /// and heartbeats behind them arrive in time. A slot always fits when nothing is in flight.
    pub pipeline_bytes_max: usize,
    /// Leader lease (architecture §5): how long after sending a heartbeat that a majority
    /// acknowledged the leader may serve linearizable reads locally, without a read round.
    /// 0 turns leases off. Safe only if every acceptor's stickiness window
    /// (`election_timeout_min_ms`) outlasts it on every clock: keep it at most
    /// `min over replicas of election_timeout_min_ms × (1 − 2 × max clock drift)`
    /// ([`Config::lease_ms_for`]).
    pub lease_ms: u64,
    /// How linearizable reads are served. `ReadIndex` ignores `lease_ms` (no leases at all);
    /// the lease modes need `lease_ms > 0`.
    pub read_mode: ReadMode,
    /// Quorum leases: the replicas that hold read leases at start (the initial lease
    /// configuration; every replica by default). Others never ask for grants and are never
    /// granted one. The log changes it ([`Replica::set_lease_holders`]).
    pub lease_holders: VoteSet,
    /// Quorum leases: whether a holder keeps a local read that must wait for slots it has
    /// not applied (`Wait`) or redirects it to the leader at once (`Forward`).
    pub lease_pending: LeasePending,
    /// The most two replicas' clock rates may differ, percent: sizes the restart blackout.
    pub clock_drift_percent: u64,
    /// Multi-Paxos, or Fast Paxos rounds when a fast quorum is alive (`fast.rs`). Fast Paxos
    /// needs `read_mode = ReadIndex`: a slot may be chosen by votes the leader has not seen,
    /// so the leader cannot serve a read without asking a quorum how far their votes go.
    pub protocol: ProtocolMode,
    /// Fast Paxos: hold client proposals until their deadline and vote them in deadline order
    /// (`Deadline`), or vote at arrival (`Arrival`). Performance only: safety never depends
    /// on the order of votes.
    pub fast_order: FastOrder,
    /// Fast Paxos, `FastOrder::Deadline`: a held proposal is voted this long after its
    /// deadline (it absorbs the jitter of delivery and processing; every acceptor uses the
    /// same value, so it does not change the order).
    pub fast_order_margin_us: u64,
    /// Fast Paxos, `FastOrder::Deadline`: how far ahead this replica stamps the deadline of
    /// a `FastPropose` (its own commands, the losers of a collision): its estimate of the
    /// one-way delay to its `Qf`-th nearest acceptor, itself included (the server derives it
    /// from the placement; 0 without one).
    pub fast_propose_ahead_us: u64,
    pub inject_bug: Option<InjectedBug>,
}

impl Config {
    pub fn new(id: ReplicaId, replicas: u32) -> Self {
        Config {
            id,
            replicas,
            seed: 0,
            heartbeat_ms: 20,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            pipeline_depth: 64,
            batch_max_ops: 256,
            batch_max_bytes: 256 * 1024,
            batch_delay_us: 0,
            proposal_queue_max: 16 * 1024,
            catchup_batch_max: 256,
            message_bytes_max: 8 << 20,
            pipeline_bytes_max: 8 << 20,
            lease_ms: Config::lease_ms_for(150, 10),
            read_mode: ReadMode::LeaderLease,
            lease_holders: VoteSet::all(replicas),
            lease_pending: LeasePending::Wait,
            clock_drift_percent: 10,
            protocol: ProtocolMode::MultiPaxos,
            fast_order: FastOrder::Deadline,
            fast_order_margin_us: 1_000,
            fast_propose_ahead_us: 0,
            inject_bug: None,
        }
    }

    /// Fast Paxos: how long a slot may stay undecided before the leader recovers it, and how
    /// long a replica may stay silent before the leader stops counting it towards a live fast
    /// quorum: four heartbeats, or half the minimum election timeout if that is longer (which
    /// placements scale with the RTT, so a far acceptor's vote has time to arrive).
    pub fn fast_timeout_ns(&self) -> Nanos {
        (4 * self.heartbeat_ms).max(self.election_timeout_min_ms / 2) * NS_PER_MS
    }

    /// The longest safe lease for a cluster whose smallest `election_timeout_min_ms` is
    /// `election_timeout_min_ms`, with clock rates that may differ by up to `drift_percent`.
    pub fn lease_ms_for(election_timeout_min_ms: u64, drift_percent: u64) -> u64 {
        election_timeout_min_ms * 100u64.saturating_sub(2 * drift_percent) / 100
    }

    /// How long a restarted acceptor refuses new ballots: long enough, on its own clock, to
    /// outlast any lease granted before it crashed on the leader's clock.
    fn restart_blackout_ms(&self) -> u64 {
        grantor_hold_ms(self.leader_lease_ms(), self.clock_drift_percent)
    }

    /// The leader lease's length: `lease_ms`, or 0 (no leases) in read-index mode.
    pub fn leader_lease_ms(&self) -> u64 {
        match self.read_mode {
            ReadMode::ReadIndex => 0,
            ReadMode::LeaderLease | ReadMode::QuorumLease => self.lease_ms,
        }
    }

    fn validate(&self) {
        assert!(
            self.id < self.replicas,
            "replica id {} >= {}",
            self.id,
            self.replicas
        );
        assert!(self.heartbeat_ms > 0);
        assert!(self.heartbeat_ms < self.election_timeout_min_ms);
        assert!(self.election_timeout_min_ms <= self.election_timeout_max_ms);
        assert!(self.pipeline_depth > 0 && self.batch_max_ops > 0 && self.batch_max_bytes > 0);
        assert!(self.proposal_queue_max > 0 && self.catchup_batch_max > 0);
        assert!(self.message_bytes_max > 0 && self.pipeline_bytes_max > 0);
        assert!(
            self.lease_ms < self.election_timeout_min_ms,
            "a lease must end before an acceptor's stickiness window"
        );
        assert!(
            self.read_mode != ReadMode::QuorumLease || self.lease_ms > 0,
            "quorum leases need lease_ms > 0"
        );
        assert!(
            VoteSet::all(self.replicas).is_superset(self.lease_holders),
            "lease holder id out of range"
        );
        assert!(
            self.protocol == ProtocolMode::MultiPaxos || self.read_mode == ReadMode::ReadIndex,
            "fast paxos needs read_mode = read-index"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

/// Why a proposal or read was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLeader {
    /// Ask this replica instead (`None`: no leader known right now).
    Redirect { leader: Option<ReplicaId> },
    /// The leader's proposal queue is full; retry later.
    QueueFull,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Serve the read from the state machine now (after applying this Ready's `committed`).
    Ready,
    /// Leadership was lost before the read could be confirmed, or (quorum leases) a holder's
    /// local read waited too long for a slot to be applied: ask the leader.
    NotLeader { leader: Option<ReplicaId> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub id: u64,
    pub outcome: ReadOutcome,
}

/// Quorum-lease counters of this incarnation (they restart at 0 with the replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseReadCounters {
    /// Linearizable reads a non-leader served from its quorum lease.
    pub local: u64,
    /// Of those taken locally, the ones that had to wait for a slot to be applied.
    pub waited: u64,
    /// Reads a non-leader redirected because it held no valid quorum lease.
    pub forwarded: u64,
    /// Local reads given up after waiting an election timeout (answered with a redirect).
    pub gave_up: u64,
    /// Leader: slots that had a majority but waited for a lease holder's vote.
    pub writes_held_for_holders: u64,
}

/// A queued proposal that will never be proposed here (leadership was lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DroppedProposal {
    pub client_id: u64,
    pub seq: u64,
    pub leader: Option<ReplicaId>,
}

/// Everything the caller must do after feeding inputs; see the module docs for the order.
#[must_use]
#[derive(Debug, Default)]
pub struct Ready {
    /// Persist in order; report each with `persisted` once durable.
    pub writes: Vec<(WriteId, Write)>,
    /// Send now (Promise/Accepted appear here only once their write is durable).
    pub messages: Vec<Envelope>,
    /// Newly committed slots, contiguous and in order: apply them.
    pub committed: Vec<(Slot, Value)>,
    /// Reads whose outcome is known.
    pub reads: Vec<ReadResult>,
    /// Queued proposals dropped on losing leadership.
    pub dropped: Vec<DroppedProposal>,
    /// This replica needs slots a peer has truncated: fetch that peer's snapshot (at least at
    /// this slot) and hand it to [`Replica::install_snapshot`].
    pub snapshot_wanted: Option<(ReplicaId, Slot)>,
    /// This replica gave up its leadership (or a candidacy, to a higher ballot), and why —
    /// for the operator's log: the protocol needs nothing done about it.
    pub stepped_down: Vec<StepDown>,
}

/// Why a leader or candidate gave up its ballot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepDown {
    /// Check-quorum: the leader heard no phase-1 quorum within `election_timeout_min_ms`.
    /// For each replica (itself included, at 0), how long ago it last acknowledged this
    /// leader, in ms (`None`: not since the election).
    LostQuorum {
        ballot: Ballot,
        window_ms: u64,
        last_ack_ms_ago: Vec<Option<u64>>,
    },
    /// A higher ballot got through.
    Outranked {
        ours: Ballot,
        leader: bool,
        theirs: Ballot,
    },
    /// An acceptor rejected the leader's ballot, having promised a higher one (a replica that
    /// promised a failed candidate): the leader runs phase 1 again above it.
    Rejected { ours: Ballot, promised: Ballot },
    /// Fast Paxos: a peer has compacted slots this leader never learned chosen (followers learn
    /// fast-chosen slots from the votes themselves; the leader's copies of those votes were
    /// lost). A leader cannot install a snapshot, so it runs phase 1 again; as a candidate it
    /// fetches the snapshot before it leads (`finish_election`).
    BehindSnapshot {
        ours: Ballot,
        peer: ReplicaId,
        floor: Slot,
        commit: Slot,
    },
}

impl std::fmt::Display for StepDown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepDown::LostQuorum {
                ballot,
                window_ms,
                last_ack_ms_ago,
            } => {
                write!(
                    f,
                    "leader at ballot {ballot} stepped down: no quorum acknowledged it within {window_ms} ms (check-quorum); last acknowledgement per replica:"
                )?;
                for (id, ago) in last_ack_ms_ago.iter().enumerate() {
                    match ago {
                        Some(ms) => write!(f, " {id}: {ms} ms ago")?,
                        None => write!(f, " {id}: never")?,
                    }
                }
                Ok(())
            }
            StepDown::Outranked {
                ours,
                leader,
                theirs,
            } => write!(
                f,
                "{} at ballot {ours} stepped down: saw the higher ballot {theirs}",
                if *leader { "leader" } else { "candidate" }
            ),
            StepDown::Rejected { ours, promised } => write!(
                f,
                "leader at ballot {ours} runs phase 1 again: an acceptor had promised the higher ballot {promised}"
            ),
            StepDown::BehindSnapshot {
                ours,
                peer,
                floor,
                commit,
            } => write!(
                f,
                "leader at ballot {ours} runs phase 1 again to fetch a snapshot: replica {peer} compacted up to slot {floor}, past this leader's commit {commit}"
            ),
        }
    }
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.reads.is_empty()
            && self.dropped.is_empty()
            && self.snapshot_wanted.is_none()
            && self.stepped_down.is_empty()
    }
}

/// A snapshot of the replica for metrics, status and the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: ReplicaId,
    pub role: Role,
    pub promised: Ballot,
    pub leader: Option<ReplicaId>,
    pub commit: Slot,
    pub applied: Slot,
    /// The log floor: slots up to it live only in the snapshot.
    pub floor: Slot,
    pub leader_commit: Slot,
    pub proposals_queued: usize,
    pub slots_in_flight: usize,
    /// Fast Paxos: the fast round this replica votes in, (ballot, first slot), if open.
    pub fast_open: Option<(Ballot, Slot)>,
}

struct Candidate {
    ballot: Ballot,
    first_slot: Slot,
    /// Per acceptor, the first slot of the next part of its report it must send (reports
    /// longer than `message_bytes_max` come in parts, asked for one at a time).
    next_part: Vec<Slot>,
    promises: VoteSet,
    merged: BTreeMap<Slot, PromiseEntry>,
    /// Fast Paxos: per slot, the reported votes of the highest fast round reported there
    /// (its ballot; per acceptor, its vote), for the value-selection rule (`fast::select`).
    fast_votes: BTreeMap<Slot, (Ballot, Vec<Option<Value>>)>,
    /// The highest log floor an acceptor reported at or above `first_slot`, and who: the
    /// slots below it are chosen but were not reported, so this replica installs that
    /// snapshot before it proposes anything.
    snapshot_needed: Option<(ReplicaId, Slot)>,
}

struct InFlight {
    value: Value,
    votes: VoteSet,
    /// A majority voted but a named holder had not (counted once).
    held_for_holders: bool,
    proposed_at: Nanos,
    /// Quorum leases: per voter, the holders its newest Accepted named (all must vote).
    holders: Vec<VoteSet>,
    sent_at: Nanos,
}

impl InFlight {
    /// Every holder some voter named: the slot commits only once all of them voted.
    fn required(&self) -> VoteSet {
        self.holders
            .iter()
            .enumerate()
            .filter(|(id, _)| self.votes.contains(*id as ReplicaId))
            .fold(VoteSet::EMPTY, |acc, (_, h)| acc.union(*h))
    }
}

/// A linearizable read a quorum-lease holder serves locally once `index` is applied.
struct LocalRead {
    id: u64,
    index: Slot,
    arrived: Nanos,
}

struct PendingRead {
    id: u64,
    /// The read-index round that must be confirmed; sent after the read arrived.
    round: u64,
    /// The slot the state machine must have applied before the read is served. Fast Paxos
    /// raises it, once the round is confirmed, to the highest slot the acks reported.
    index: Slot,
    confirmed: bool,
}

struct Leader {
    ballot: Ballot,
    elected_at: Nanos,
    next_slot: Slot,
    /// Sum of `Value::size_bytes` over `in_flight`.
    in_flight_bytes: usize,
    /// Highest slot re-proposed by phase 1: anything chosen before this leadership is at or
    /// below it, so a read must wait for it to commit.
    recovery_end: Slot,
    /// The next slot recovery re-proposes (recovery is done once it passes `recovery_end`),
    /// and the merged phase-1 reports not yet re-proposed.
    recovery_next: Slot,
    recovery: BTreeMap<Slot, PromiseEntry>,
    in_flight: BTreeMap<Slot, InFlight>,
    heartbeat_due: Nanos,
    last_ack: Vec<Option<Nanos>>,
    /// The last read round sent, and the highest one each replica acknowledged.
    read_round: u64,
    read_round_wanted: bool,
    acked_round: Vec<u64>,
    /// The leader lease: heartbeat rounds sent and the grants their acks make (`lease.rs`).
    lease: LeaderLease,
    reads: VecDeque<PendingRead>,
    /// Fast Paxos: the highest slot each replica said it holds (heartbeat acks).
    acked_slot: Vec<Slot>,
    /// Fast Paxos: the fast round of `ballot` is open from this slot on.
    fast_from: Option<Slot>,
    /// Fast Paxos: slots being recovered, with the time their first vote was known.
    recovering: BTreeMap<Slot, Nanos>,
    /// The highest commit index sent to every peer (in an Accept or a heartbeat).
    commit_sent: Slot,
}

/// Asking peers whether they would grant a new ballot, before raising one (pre-vote).
struct PreCandidate {
    /// The ballot it would use; identifies this attempt (the real one is computed afresh).
    ballot: Ballot,
    votes: VoteSet,
}

// One per replica, never moved on a hot path: boxing the leader would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Proposer {
    Idle,
    PreCandidate(PreCandidate),
    Candidate(Candidate),
    Leader(Leader),
}

pub struct Replica {
    cfg: Config,
    quorum: QuorumSpec,
    rng: ChaCha8Rng,

    // Acceptor (durable: promised ballot and the log's accepted/chosen values).
    promised: Ballot,
    /// The last Promise write: its ballot and id (0: durable already).
    promise_write: (Ballot, WriteId),
    log: Log,

    // Learner.
    applied: Slot,
    leader_commit: Slot,
    catchup_peer: Option<ReplicaId>,
    catchup_sent_at: Option<Nanos>,

    // Follower view of the leader.
    /// The highest ballot heard from a leader (Accept or Heartbeat) in this incarnation. An
    /// Accept, Heartbeat or Prepare below it is refused like one below `promised`, and
    /// stickiness (`leader`, `last_heard_leader`) belongs to its leader only (§5 of the doc).
    leader_ballot: Ballot,
    leader: Option<ReplicaId>,
    last_heard_leader: Option<Nanos>,
    election_deadline: Nanos,
    round_seen_max: u64,
    /// With leases, a restarted acceptor has forgotten which leader it heard from and when:
    /// it promises no new ballot until a whole stickiness window has passed since it started,
    /// so a lease granted before the crash still holds.
    promise_blackout_until: Nanos,

    /// Quorum leases (`read_mode = QuorumLease`): grants held and owed, and the local reads
    /// waiting for their index to be applied.
    qlease: Option<QuorumLease>,
    local_reads: VecDeque<LocalRead>,
    lease_reads: LeaseReadCounters,

    /// Fast Paxos: the fast round this acceptor votes in (ballot, first slot), from the
    /// leader's heartbeats; it votes only while that ballot is still its `ballot_floor`.
    fast_open: Option<(Ballot, Slot)>,
    /// Fast Paxos: the votes heard for slots not yet known chosen (every replica learns).
    tally: Tally,
    fast_counters: FastCounters,
    /// Fast Paxos, `FastOrder::Deadline`: client proposals held until their deadline, by
    /// (deadline, client id, seq), the order they are voted in.
    fast_held: BTreeMap<(Nanos, u64, u64), Command>,
    /// The key of the last held proposal released: one arriving below it is late.
    fast_released: (Nanos, u64, u64),

    proposer: Proposer,
    queue: VecDeque<(Nanos, Command)>,
    queue_bytes: usize,

    // Outputs.
    write_id_next: WriteId,
    write_id_durable: WriteId,
    held: VecDeque<(WriteId, Envelope)>,
    out: Ready,
    /// A safety violation seen here (two values chosen for one slot): the replica stops.
    fatal: Option<String>,
}

impl Replica {
    /// Starts (or restarts) a replica from its durable state at time `now`.
    pub fn new(cfg: Config, durable: &DurableState, now: Nanos) -> Self {
        cfg.validate();
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ (u64::from(cfg.id) << 48) ^ 0x9e37_79b9);
        let mut replica = Replica {
            quorum: QuorumSpec::new(cfg.replicas),
            rng,
            promised: durable.promised,
            promise_write: (durable.promised, 0),
            log: Log::from_durable(durable),
            applied: durable.floor,
            leader_commit: 0,
            catchup_peer: None,
            catchup_sent_at: None,
            leader_ballot: Ballot::ZERO,
            leader: None,
            last_heard_leader: None,
            election_deadline: 0,
            round_seen_max: durable.promised.round,
            promise_blackout_until: if cfg.leader_lease_ms() > 0 {
                now + cfg.restart_blackout_ms() * NS_PER_MS
            } else {
                0
            },
            qlease: (cfg.read_mode == ReadMode::QuorumLease).then(|| {
                QuorumLease::new(
                    cfg.replicas,
                    cfg.id,
                    cfg.lease_holders,
                    now,
                    grantor_hold_ms(cfg.lease_ms, cfg.clock_drift_percent),
                )
            }),
            local_reads: VecDeque::new(),
            lease_reads: LeaseReadCounters::default(),
            fast_open: None,
            tally: Tally::new(cfg.replicas),
            fast_counters: FastCounters::default(),
            fast_held: BTreeMap::new(),
            fast_released: (0, 0, 0),
            proposer: Proposer::Idle,
            queue: VecDeque::new(),
            queue_bytes: 0,
            write_id_next: 1,
            write_id_durable: 0,
            held: VecDeque::new(),
            out: Ready::default(),
            fatal: None,
            cfg,
        };
        replica.reset_election_deadline(now);
        replica
    }

    pub fn id(&self) -> ReplicaId {
        self.cfg.id
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn role(&self) -> Role {
        match self.proposer {
            // A pre-candidate has raised no ballot and promised nothing: still a follower.
            Proposer::Idle | Proposer::PreCandidate(_) => Role::Follower,
            Proposer::Candidate(_) => Role::Candidate,
            Proposer::Leader(_) => Role::Leader,
        }
    }

    pub fn status(&self) -> Status {
        let slots_in_flight = match &self.proposer {
            Proposer::Leader(l) => l.in_flight.len(),
            _ => 0,
        };
        Status {
            id: self.cfg.id,
            role: self.role(),
            promised: self.promised,
            leader: self.leader,
            commit: self.log.commit(),
            applied: self.applied,
            floor: self.log.floor(),
            leader_commit: self.leader_commit,
            proposals_queued: self.queue.len(),
            slots_in_flight,
            fast_open: self.fast_open_now(),
        }
    }

    /// Fast Paxos counters since this replica started.
    pub fn fast_counters(&self) -> FastCounters {
        self.fast_counters
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The ballot this replica leads at, if it leads.
    pub fn leading_ballot(&self) -> Option<Ballot> {
        match &self.proposer {
            Proposer::Leader(leader) => Some(leader.ballot),
            _ => None,
        }
    }

    /// Whether this replica leads and holds its leader lease at `now` (it would serve a
    /// linearizable read without a round). The lease argument says no other replica can be
    /// elected until this is false; the simulator checks it.
    pub fn holds_leader_lease(&self, now: Nanos) -> bool {
        match &self.proposer {
            Proposer::Leader(leader) => self.holds_lease(leader, now),
            _ => false,
        }
    }

    /// Quorum-lease read and write counters since this replica started.
    pub fn lease_read_counters(&self) -> LeaseReadCounters {
        self.lease_reads
    }

    /// Why this replica stopped, if it did: it learned a second value for a chosen slot, so
    /// safety is already broken somewhere. A stopped replica takes no further part (every
    /// input is ignored, `ready` is empty); its caller should fail the group loudly.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// Records `value` as chosen at `slot`; returns whether it was new. A different value
    /// already chosen there stops the replica (see [`Replica::fatal`]).
    fn set_chosen(&mut self, slot: Slot, value: Value) -> bool {
        match self.log.set_chosen(slot, value.clone()) {
            Ok(new) => new,
            Err(existing) => {
                if self.fatal.is_none() {
                    self.fatal = Some(format!(
                        "agreement violated: slot {slot} is chosen as {existing:?} here, but {value:?} was learned chosen too"
                    ));
                    self.out = Ready::default();
                    self.held.clear();
                }
                false
            }
        }
    }

    /// Queues a command for the next batch. Only the leader takes proposals; others (a
    /// candidate included) answer with where to go.
    pub fn propose(&mut self, now: Nanos, command: Command) -> Result<(), NotLeader> {
        if self.fatal.is_some() {
            return Err(NotLeader::Redirect { leader: None });
        }
        if self.fast_open_now().is_some() {
            return self.fast_vote(command);
        }
        if !matches!(self.proposer, Proposer::Leader(_)) {
            return Err(NotLeader::Redirect {
                leader: self.leader_hint(),
            });
        }
        if self.queue.len() >= self.cfg.proposal_queue_max {
            return Err(NotLeader::QueueFull);
        }
        self.queue_bytes += command.size_bytes();
        self.queue.push_back((now, command));
        Ok(())
    }

    /// A client write that carries a Fast Paxos deadline: the instant, on this replica's
    /// clock, at which its client expects it to have reached its `Qf`-th nearest acceptor (0:
    /// none). With the fast round open and `FastOrder::Deadline`, one that arrives before its
    /// deadline is held and voted at deadline + `fast_order_margin_us`, in (deadline, client
    /// id, seq) order (docs/internals/protocol.md §11, "Ordering proposals"); anything else is
    /// [`Replica::propose`]. A held proposal that cannot be voted when released (the fast
    /// round closed here) comes back in `Ready::dropped`.
    pub fn propose_by(
        &mut self,
        now: Nanos,
        command: Command,
        deadline: Nanos,
    ) -> Result<(), NotLeader> {
        // Held writes already due go first: a write voted at once (late, or without a
        // deadline) must not overtake them (a thread that was not scheduled for a while reads
        // requests before it runs its timers).
        self.release_fast_held(now);
        if self.fatal.is_none()
            && deadline > 0
            && self.cfg.fast_order == FastOrder::Deadline
            && self.fast_open_now().is_some()
        {
            return self.hold_fast(now, command, deadline);
        }
        self.propose(now, command)
    }

    /// A command of this replica's own (the leader's clock command): with the
    /// fast round open it goes to every acceptor as a `FastPropose` (itself included), like a
    /// client's write, so they all vote for it; otherwise as [`Replica::propose`].
    pub fn propose_own(&mut self, now: Nanos, command: Command) -> Result<(), NotLeader> {
        if self.fatal.is_none() && self.fast_open_now().is_some() {
            let deadline = self.fast_propose_deadline(now);
            self.broadcast(Message::FastPropose { command, deadline });
            return Ok(());
        }
        self.propose(now, command)
    }

    /// Starts a linearizable read with caller-chosen `id`. Its outcome appears in a later
    /// `Ready::reads`; the read must then be served after applying that Ready's `committed`.
    pub fn read_index(&mut self, now: Nanos, id: u64) -> Result<(), NotLeader> {
        self.read_index_for(now, id, &|_| true)
    }

    /// `read_index` for a read of one key: `may_change(command)` says whether applying a
    /// command may change what the read returns. A quorum-lease holder then waits only for
    /// the unapplied slots that hold such a command (or that it does not hold at all), not for
    /// every slot (docs/internals/protocol.md §8, "Key-narrowed wait").
    pub fn read_index_for(
        &mut self,
        now: Nanos,
        id: u64,
        may_change: &dyn Fn(&Command) -> bool,
    ) -> Result<(), NotLeader> {
        if self.fatal.is_some() {
            return Err(NotLeader::Redirect { leader: None });
        }
        let commit = self.log.commit();
        let lease = match &self.proposer {
            Proposer::Leader(leader) => self.holds_lease(leader, now),
            _ => false,
        };
        if !matches!(self.proposer, Proposer::Leader(_)) {
            return self.read_local(now, id, may_change);
        }
        let Proposer::Leader(leader) = &mut self.proposer else {
            unreachable!("checked above");
        };
        if lease {
            // No other leader can exist until the lease ends: serve once everything committed
            // so far (and everything an earlier leader may have chosen) is applied.
            leader.reads.push_back(PendingRead {
                id,
                round: 0,
                index: commit.max(leader.recovery_end),
                confirmed: false,
            });
            return Ok(());
        }
        if self.cfg.inject_bug == Some(InjectedBug::StaleLeaderRead) {
            self.out.reads.push(ReadResult {
                id,
                outcome: ReadOutcome::Ready,
            });
            return Ok(());
        }
        leader.read_round_wanted = true;
        leader.reads.push_back(PendingRead {
            id,
            round: leader.read_round + 1,
            index: commit.max(leader.recovery_end),
            confirmed: false,
        });
        Ok(())
    }

    /// A linearizable read at a follower: served locally if this replica holds a quorum
    /// lease (docs/internals/protocol.md §8, quorum leases), else redirected to the leader.
    fn read_local(
        &mut self,
        now: Nanos,
        id: u64,
        may_change: &dyn Fn(&Command) -> bool,
    ) -> Result<(), NotLeader> {
        let hint = self.leader_hint();
        let Some(qlease) = &self.qlease else {
            return Err(NotLeader::Redirect { leader: hint });
        };
        self.lease_reads.forwarded += 1; // undone below if the read is taken
        let bug = self.cfg.inject_bug;
        let Some(bar) = qlease.read_bar(
            now,
            self.cfg.lease_ms,
            &self.quorum,
            bug == Some(InjectedBug::QleaseReadAfterExpiry),
        ) else {
            return Err(NotLeader::Redirect { leader: hint });
        };
        // Every slot this replica holds (a write it accepted may be committed already,
        // counting its vote) and every slot its grantors held when they granted.
        let index = if bug == Some(InjectedBug::QleaseReadUnapplied) {
            self.log.commit()
        } else {
            self.log.commit().max(self.log.last_slot()).max(bar)
        };
        let trusted_from = qlease.grants_ballot(now, self.cfg.lease_ms);
        let index =
            if index > self.applied && !self.pending_may_change(index, trusted_from, may_change) {
                // Nothing pending can change what this read returns: serve it now.
                self.applied
            } else {
                index
            };
        if index > self.applied {
            if self.cfg.lease_pending == LeasePending::Forward {
                // Counted as forwarded (above): the leader answers it.
                return Err(NotLeader::Redirect { leader: hint });
            }
            self.lease_reads.waited += 1;
        }
        self.lease_reads.forwarded -= 1;
        self.local_reads.push_back(LocalRead {
            id,
            index,
            arrived: now,
        });
        Ok(())
    }

    /// Whether a read must wait for the unapplied slots up to `index`: one of them is missing
    /// here, holds no value, holds a value accepted below `trusted_from` (the highest ballot
    /// a valid grantor had promised when it granted), or holds a command `may_change` names.
    /// A value accepted at or above `trusted_from` is the chosen one if the slot was chosen
    /// before the read arrived (protocol.md §8, R3′); a slot chosen later is concurrent with
    /// the read, as is every slot after it (slots apply in order). At most `NARROW_SLOTS_MAX`
    /// slots are looked at; a longer backlog waits.
    fn pending_may_change(
        &self,
        index: Slot,
        trusted_from: Ballot,
        may_change: &dyn Fn(&Command) -> bool,
    ) -> bool {
        const NARROW_SLOTS_MAX: u64 = 256;
        let first = self.applied + 1;
        if index - self.applied > NARROW_SLOTS_MAX
            || self.cfg.inject_bug == Some(InjectedBug::QleaseReadUnapplied)
        {
            return true;
        }
        let mut held = 0;
        for (_, entry) in self.log.range_from(first).take_while(|(s, _)| **s <= index) {
            held += 1;
            let value = match (&entry.chosen, &entry.accepted) {
                (Some(v), _) => v,
                (None, Some((ballot, v))) if *ballot >= trusted_from && !entry.accepted_fast => v,
                _ => return true,
            };
            if value.commands().iter().any(may_change) {
                return true;
            }
        }
        held != index - self.applied
    }

    /// Serves the local reads whose index is applied; gives up on those that waited longer
    /// than an election timeout (their slot may need a new leader to be chosen).
    fn release_local_reads(&mut self, now: Nanos) {
        let give_up_ns = self.cfg.election_timeout_max_ms * NS_PER_MS;
        let hint = self.leader_hint().filter(|l| *l != self.cfg.id);
        let applied = self.applied;
        let mut answered = Vec::new();
        self.local_reads.retain(|read| {
            if read.index <= applied {
                answered.push((read.id, ReadOutcome::Ready));
                false
            } else if now >= read.arrived + give_up_ns {
                answered.push((read.id, ReadOutcome::NotLeader { leader: hint }));
                false
            } else {
                true
            }
        });
        for (id, outcome) in answered {
            match outcome {
                ReadOutcome::Ready => self.lease_reads.local += 1,
                ReadOutcome::NotLeader { .. } => self.lease_reads.gave_up += 1,
            }
            self.out.reads.push(ReadResult { id, outcome });
        }
    }

    /// Quorum leases: renews this replica's grants (a request to every replica, itself too),
    /// if it is a configured holder.
    fn request_leases(&mut self, now: Nanos) {
        let Some(qlease) = &mut self.qlease else {
            return;
        };
        let holder = qlease.is_holder();
        if now < qlease.request_due() {
            return;
        }
        if !holder {
            qlease.next_request(now, self.cfg.lease_ms, self.cfg.heartbeat_ms);
            return;
        }
        let lease_num = qlease.next_request(now, self.cfg.lease_ms, self.cfg.heartbeat_ms);
        for to in 0..self.cfg.replicas {
            self.send(to, Message::LeaseRequest { lease_num });
        }
    }

    fn on_lease_request(&mut self, now: Nanos, from: ReplicaId, lease_num: Nanos) {
        let hold_ms = grantor_hold_ms(self.cfg.lease_ms, self.cfg.clock_drift_percent);
        let Some(qlease) = &mut self.qlease else {
            return;
        };
        // Owed from now on, before the grant leaves: an Accepted sent after this names it.
        if !qlease.on_request(from, now, hold_ms) {
            return;
        }
        let latest_accepted = self.log.commit().max(self.log.last_slot());
        let promised = self.promised;
        self.send(
            from,
            Message::LeaseGrant {
                lease_num,
                latest_accepted,
                promised,
            },
        );
    }

    /// Stops renewing `holders`' grants for two heartbeat periods (the leader repeats the
    /// request in every heartbeat while they hold writes up).
    fn revoke_grants(&mut self, now: Nanos, holders: VoteSet) {
        let until = now + 2 * self.cfg.heartbeat_ms * NS_PER_MS;
        if let Some(qlease) = &mut self.qlease {
            if !holders.is_empty() {
                qlease.revoke(holders, until);
            }
        }
    }

    /// Quorum leases: the node applied a lease configuration change (a log entry; the
    /// initial configuration is `Config::lease_holders`). From here on this replica grants
    /// only to `holders` and asks for grants only if it is one; grants it gave before are
    /// owed to their end, and grants it holds stay valid to theirs
    /// (docs/internals/protocol.md §8, "Lease configuration").
    /// Returns whether the configuration changed. No-op without quorum leases.
    pub fn set_lease_holders(&mut self, holders: VoteSet) -> bool {
        let drop_early = self.cfg.inject_bug == Some(InjectedBug::QleaseConfigDropEarly);
        self.qlease
            .as_mut()
            .is_some_and(|q| q.set_configured(holders, drop_early))
    }

    /// Quorum leases: the lease configuration in effect here (empty without quorum leases).
    pub fn lease_holders_configured(&self) -> VoteSet {
        self.qlease
            .as_ref()
            .map_or(VoteSet::EMPTY, |q| q.configured())
    }

    /// The holders an Accepted sent now must name (empty without quorum leases).
    fn lease_holders(&self, now: Nanos) -> VoteSet {
        self.qlease
            .as_ref()
            .map_or(VoteSet::EMPTY, |q| q.holders(now))
    }

    /// The next instant at which `tick` must be called (absent other inputs).
    pub fn poll_timeout(&self) -> Nanos {
        let mut due = Nanos::MAX;
        if self.fatal.is_some() {
            return due;
        }
        match &self.proposer {
            Proposer::Leader(leader) => {
                due = due.min(leader.heartbeat_due);
                if self.cfg.batch_delay_us > 0 && !Self::pipeline_full(&self.cfg, leader) {
                    if let Some((since, _)) = self.queue.front() {
                        due = due.min(since + self.cfg.batch_delay_us * NS_PER_US);
                    }
                }
            }
            Proposer::Candidate(_) | Proposer::PreCandidate(_) | Proposer::Idle => {
                due = due.min(self.election_deadline)
            }
        }
        if let Some(sent) = self.catchup_sent_at {
            due = due.min(sent + self.catchup_retry_ns());
        }
        if let Some(qlease) = &self.qlease {
            due = due.min(qlease.request_due());
        }
        if let Some(at) = self.fast_release_due() {
            due = due.min(at);
        }
        due
    }

    /// Advances timers: elections, heartbeats, retransmission, lost-quorum step-down.
    pub fn tick(&mut self, now: Nanos) {
        if self.fatal.is_some() {
            return;
        }
        if matches!(self.proposer, Proposer::Leader(_)) {
            self.tick_leader(now);
        } else if now >= self.election_deadline {
            self.start_pre_vote(now);
        }
        self.maybe_catch_up(now);
        self.request_leases(now);
        self.release_fast_held(now);
    }

    /// A write up to `write_id` is durable (writes complete in order).
    pub fn persisted(&mut self, _now: Nanos, write_id: WriteId) {
        assert!(
            write_id < self.write_id_next,
            "persisted a write never asked for"
        );
        self.write_id_durable = self.write_id_durable.max(write_id);
        if self.fatal.is_some() {
            return;
        }
        while let Some((id, _)) = self.held.front() {
            if *id > self.write_id_durable {
                break;
            }
            let (_, envelope) = self.held.pop_front().expect("front exists");
            self.out.messages.push(envelope);
        }
    }

    /// Handles one message from a peer (or from itself).
    pub fn step(&mut self, now: Nanos, envelope: Envelope) {
        let Envelope { from, to, msg } = envelope;
        assert_eq!(to, self.cfg.id, "message delivered to the wrong replica");
        if from >= self.cfg.replicas || self.fatal.is_some() {
            // Not one of ours (the transport should have refused it already), or stopped.
            return;
        }
        match msg {
            Message::Prepare { ballot, first_slot } => {
                self.on_prepare(now, from, ballot, first_slot)
            }
            Message::Promise {
                ballot,
                first_slot,
                last_slot,
                entries,
                floor,
            } => self.on_promise(now, from, ballot, (first_slot, last_slot), entries, floor),
            Message::Accept {
                ballot,
                slot,
                value,
                commit,
            } => self.on_accept(now, from, ballot, slot, value, commit),
            Message::Accepted {
                ballot,
                slot,
                holders,
            } => self.on_accepted(now, from, ballot, slot, holders),
            Message::Reject { ballot, promised } => self.on_reject(now, ballot, promised),
            Message::Heartbeat {
                ballot,
                commit,
                read_round,
                revoke,
                fast_from,
            } => {
                self.on_heartbeat(now, from, ballot, commit, read_round, revoke);
                self.on_fast_any(from, ballot, fast_from);
            }
            Message::HeartbeatAck {
                ballot,
                read_round,
                last_slot,
            } => self.on_heartbeat_ack(now, from, ballot, read_round, last_slot),
            Message::Voted {
                ballot,
                slot,
                value,
            } => self.on_voted(now, from, ballot, slot, value),
            Message::FastPropose { command, deadline } => {
                // A refusal (fast rounds closed here, or the window full) drops it: the
                // client's own copy or retry carries the command on.
                let _ = self.propose_by(now, command, deadline);
            }
            Message::FastFill { ballot, slot } => self.on_fast_fill(now, from, ballot, slot),
            Message::CatchupRequest {
                first_slot,
                last_slot,
            } => self.on_catchup_request(from, first_slot, last_slot),
            Message::CatchupReply { entries, floor } => {
                self.on_catchup_reply(now, from, entries, floor)
            }
            // Snapshot transfer is the node's business (it holds the state machine).
            Message::SnapshotRequest { .. } | Message::SnapshotChunk { .. } => {}
            Message::PreVote { ballot, commit } => self.on_pre_vote(now, from, ballot, commit),
            Message::PreVoteReply { ballot, granted } => {
                self.on_pre_vote_reply(now, from, ballot, granted)
            }
            Message::LeaseRequest { lease_num } => self.on_lease_request(now, from, lease_num),
            Message::LeaseGrant {
                lease_num,
                latest_accepted,
                promised,
            } => {
                if let Some(qlease) = &mut self.qlease {
                    qlease.on_grant(from, lease_num, latest_accepted, promised);
                }
            }
        }
    }

    /// Drains everything the caller must do now. Cuts batches from queued proposals first.
    pub fn ready(&mut self, now: Nanos) -> Ready {
        if self.fatal.is_some() {
            return Ready::default();
        }
        self.release_fast_held(now);
        self.pump_leader(now);
        self.send_commit_notice();
        let commit = self.log.commit();
        self.tally.forget_through(commit);
        while self.applied < commit {
            self.applied += 1;
            let value = self
                .log
                .chosen(self.applied)
                .expect("commit covers chosen slots");
            self.out.committed.push((self.applied, value.clone()));
        }
        self.release_confirmed_reads();
        self.release_local_reads(now);
        std::mem::take(&mut self.out)
    }

    // ---------------------------------------------------------------- acceptor

    fn on_prepare(&mut self, now: Nanos, from: ReplicaId, ballot: Ballot, first_slot: Slot) {
        self.round_seen_max = self.round_seen_max.max(ballot.round);
        if self.reject_below_promise(from, ballot) {
            return;
        }
        if ballot > self.promised {
            if self.sticks_to_leader(now, from) {
                return;
            }
            self.promised = ballot;
            self.step_down_below(now, ballot);
            self.leader = None;
            self.reset_election_deadline(now);
        } else if from == ballot.replica && from != self.cfg.id {
            // The candidate we promised asks for the next part of our report: it is alive and
            // making progress, so give it the time to finish.
            self.reset_election_deadline(now);
        }
        let (entries, last_slot) = self.promise_chunk(first_slot);
        // A repeated prepare at the promised ballot is answered once the first promise is
        // durable, without writing again.
        let write_id = if ballot == self.promise_write.0 {
            self.promise_write.1
        } else {
            let write_id = self.persist(Write::Promise { ballot });
            self.promise_write = (ballot, write_id);
            write_id
        };
        let floor = self.log.floor();
        self.send_after(
            write_id,
            from,
            Message::Promise {
                ballot,
                first_slot,
                last_slot,
                entries,
                floor,
            },
        );
    }

    /// The slots this acceptor holds from `first_slot` on (chosen, else accepted), cut so the
    /// Promise stays within `message_bytes_max` (at least one entry); the last slot covered,
    /// `Slot::MAX` if the report is complete.
    fn promise_chunk(&self, first_slot: Slot) -> (Vec<PromiseEntry>, Slot) {
        let budget = self
            .cfg
            .message_bytes_max
            .saturating_sub(MESSAGE_OVERHEAD_BYTES);
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (slot, entry) in self.log.range_from(first_slot) {
            let report = match (&entry.chosen, &entry.accepted) {
                (Some(value), _) => PromiseEntry {
                    slot: *slot,
                    ballot: Ballot::ZERO,
                    value: value.clone(),
                    chosen: true,
                    fast: false,
                },
                (None, Some((accepted, value))) => PromiseEntry {
                    slot: *slot,
                    ballot: *accepted,
                    value: value.clone(),
                    chosen: false,
                    fast: entry.accepted_fast,
                },
                (None, None) => continue,
            };
            let size = report.value.size_bytes() + ENTRY_OVERHEAD_BYTES;
            if !entries.is_empty() && bytes + size > budget {
                return (entries, *slot - 1);
            }
            bytes += size;
            entries.push(report);
        }
        (entries, Slot::MAX)
    }

    /// Answers a message from an outranked ballot with a Reject naming the promise; returns
    /// whether it did.
    fn reject_below_promise(&mut self, from: ReplicaId, ballot: Ballot) -> bool {
        let floor = self.ballot_floor();
        if ballot >= floor {
            return false;
        }
        self.send(
            from,
            Message::Reject {
                ballot,
                promised: floor,
            },
        );
        true
    }

    /// The lowest ballot this acceptor still answers: its promise, or the highest leader
    /// ballot it heard if that is higher (an in-memory promise, see `leader_ballot`).
    fn ballot_floor(&self) -> Ballot {
        if self.cfg.inject_bug == Some(InjectedBug::LeaseFollowsLastSpeaker) {
            return self.promised;
        }
        self.promised.max(self.leader_ballot)
    }

    /// Leader stickiness: refuse a new ballot while a live leader other than `from` leads.
    fn sticks_to_leader(&self, now: Nanos, from: ReplicaId) -> bool {
        if now < self.promise_blackout_until && from != self.cfg.id {
            return true;
        }
        let min_ns = self.cfg.election_timeout_min_ms * NS_PER_MS;
        if let Proposer::Leader(leader) = &self.proposer {
            return self.leader_has_quorum(leader, now, min_ns);
        }
        match (self.leader, self.last_heard_leader) {
            (Some(current), Some(heard)) => current != from && now < heard + min_ns,
            _ => false,
        }
    }

    fn on_accept(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        value: Value,
        commit: Slot,
    ) {
        if self.reject_below_promise(from, ballot) {
            return;
        }
        self.promised = ballot;
        self.step_down_below(now, ballot);
        self.heard_from_leader(now, from, ballot);
        if slot <= self.log.floor() {
            // Chosen and compacted here. A leader proposes at a chosen slot only the chosen
            // value (phase 1 guarantees it), so the vote is safe; there is nothing to store.
            let holders = self.lease_holders(now);
            self.send(
                from,
                Message::Accepted {
                    ballot,
                    slot,
                    holders,
                },
            );
            self.learn_commit(now, from, ballot, commit);
            return;
        }
        let entry = self.log.entry_mut(slot);
        let write_id = match &entry.accepted {
            // A retransmitted or duplicated Accept: answer once the first write is durable
            // instead of writing again (a slow disk would otherwise fall ever further behind).
            // A fast-round vote at this ballot is not it: the classic round outranks it.
            Some((accepted, old))
                if *accepted == ballot && *old == value && !entry.accepted_fast =>
            {
                entry.accepted_write_id
            }
            _ => {
                entry.accepted = Some((ballot, value.clone()));
                entry.accepted_fast = false;
                let write_id = self.persist(Write::Accept {
                    ballot,
                    slot,
                    value,
                    commit,
                    fast: false,
                });
                self.log.entry_mut(slot).accepted_write_id = write_id;
                write_id
            }
        };
        // Computed now, with the slot accepted: a grant sent from now on reports the slot in
        // `latest_accepted`; one sent before is owed a vote here until it expires.
        let holders = self.lease_holders(now);
        self.send_after(
            write_id,
            from,
            Message::Accepted {
                ballot,
                slot,
                holders,
            },
        );
        self.learn_commit(now, from, ballot, commit);
    }

    fn on_heartbeat(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        commit: Slot,
        read_round: u64,
        revoke: VoteSet,
    ) {
        if self.reject_below_promise(from, ballot) {
            return;
        }
        self.step_down_below(now, ballot);
        self.heard_from_leader(now, from, ballot);
        self.revoke_grants(now, revoke);
        // Not durable and need not be: it says only "I promised nothing above `ballot`".
        let last_slot = self.log.last_slot();
        self.send(
            from,
            Message::HeartbeatAck {
                ballot,
                read_round,
                last_slot,
            },
        );
        self.learn_commit(now, from, ballot, commit);
    }

    /// `from` leads at `ballot`, which is at least `ballot_floor` (lower ones were refused).
    fn heard_from_leader(&mut self, now: Nanos, from: ReplicaId, ballot: Ballot) {
        self.round_seen_max = self.round_seen_max.max(ballot.round);
        self.leader_ballot = if self.cfg.inject_bug == Some(InjectedBug::LeaseFollowsLastSpeaker) {
            ballot
        } else {
            self.leader_ballot.max(ballot)
        };
        self.leader = Some(from);
        self.last_heard_leader = Some(now);
        self.reset_election_deadline(now);
    }

    // ---------------------------------------------------------------- learner

    /// The leader of `ballot` says slots up to `commit` are chosen. A local value accepted at
    /// exactly `ballot` is that leader's proposal, and a leader proposes one value per slot
    /// per ballot and counts a slot chosen only from votes at its own ballot (or because it
    /// knew the value chosen before proposing it), so such a value is the chosen one.
    fn learn_commit(&mut self, now: Nanos, from: ReplicaId, ballot: Ballot, commit: Slot) {
        if commit > self.leader_commit {
            self.leader_commit = commit;
        }
        if from != self.cfg.id {
            self.catchup_peer = Some(from);
        }
        if commit <= self.log.commit() {
            return;
        }
        let learned: Vec<(Slot, Value)> = self
            .log
            .range_from(self.log.commit() + 1)
            .take_while(|(slot, _)| **slot <= commit)
            .filter_map(|(slot, entry)| match (&entry.chosen, &entry.accepted) {
                // Only the classic round's value is the leader's proposal: a fast-round vote at
                // `ballot` may have lost a collision (the slot is then fetched).
                (None, Some((accepted, value))) if *accepted == ballot && !entry.accepted_fast => {
                    Some((*slot, value.clone()))
                }
                _ => None,
            })
            .collect();
        for (slot, value) in learned {
            self.set_chosen(slot, value);
        }
        self.maybe_catch_up(now);
    }

    fn maybe_catch_up(&mut self, now: Nanos) {
        if matches!(self.proposer, Proposer::Leader(_)) || self.log.commit() >= self.leader_commit {
            self.catchup_sent_at = None;
            return;
        }
        let Some(peer) = self.catchup_peer else {
            return;
        };
        if let Some(sent) = self.catchup_sent_at {
            if now < sent + self.catchup_retry_ns() {
                return;
            }
        }
        let first_slot = self.log.commit() + 1;
        let last_slot = self
            .leader_commit
            .min(first_slot + self.cfg.catchup_batch_max as u64 - 1);
        self.catchup_sent_at = Some(now);
        self.send(
            peer,
            Message::CatchupRequest {
                first_slot,
                last_slot,
            },
        );
    }

    fn catchup_retry_ns(&self) -> Nanos {
        2 * self.cfg.heartbeat_ms * NS_PER_MS
    }

    /// If `slot` is at or below the log floor (only in the snapshot), tells `from` the floor
    /// (it fetches the snapshot) and returns true.
    pub(super) fn send_floor_if_truncated(&mut self, from: ReplicaId, slot: Slot) -> bool {
        let floor = self.log.floor();
        if slot > floor {
            return false;
        }
        self.send(
            from,
            Message::CatchupReply {
                entries: Vec::new(),
                floor,
            },
        );
        true
    }

    fn on_catchup_request(&mut self, from: ReplicaId, first_slot: Slot, last_slot: Slot) {
        // Those slots are only in the snapshot: say so, the asker fetches it.
        if self.send_floor_if_truncated(from, first_slot) {
            return;
        }
        let floor = self.log.floor();
        let entries = self.log.chosen_in(
            first_slot,
            last_slot,
            self.cfg.catchup_batch_max,
            self.cfg
                .message_bytes_max
                .saturating_sub(MESSAGE_OVERHEAD_BYTES),
            ENTRY_OVERHEAD_BYTES,
        );
        if !entries.is_empty() {
            self.send(from, Message::CatchupReply { entries, floor });
        }
    }

    fn on_catchup_reply(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        entries: Vec<(Slot, Value)>,
        floor: Slot,
    ) {
        if floor > self.log.commit() {
            match &self.proposer {
                Proposer::Leader(leader) => {
                    // Only Fast Paxos leaves a leader behind a follower's floor (it answers a
                    // leader's fast fill at a compacted slot with its floor); in Multi-Paxos a
                    // recovering leader re-proposes what its phase 1 found instead.
                    if self.cfg.protocol == ProtocolMode::FastPaxos {
                        self.out.stepped_down.push(StepDown::BehindSnapshot {
                            ours: leader.ballot,
                            peer: from,
                            floor,
                            commit: self.log.commit(),
                        });
                        self.start_election(now);
                    }
                }
                _ => self.want_snapshot(from, floor),
            }
        }
        let mut new = Vec::new();
        for (slot, value) in entries {
            if slot == 0 {
                continue;
            }
            if self.set_chosen(slot, value.clone()) {
                new.push((slot, value));
            }
        }
        if self.fatal.is_some() {
            return;
        }
        if new.is_empty() {
            // A duplicate or stale reply: ask again only when the retry timer says so, or
            // duplicated replies would breed requests without bound.
            return;
        }
        // Chosen values are durable so a restart need not fetch them again.
        let _ = self.persist(Write::Chosen { entries: new });
        self.catchup_sent_at = None;
        self.maybe_catch_up(now);
    }

    // ---------------------------------------------------------------- pre-vote

    /// The election timer fired: ask the others whether they would grant a new ballot. Nothing
    /// is promised or raised until a classic quorum (itself included) says yes, so a replica
    /// cut off by a partition cannot come back with a ballot that deposes a healthy leader.
    fn start_pre_vote(&mut self, now: Nanos) {
        self.fail_leader_work();
        let ballot = Ballot::new(
            self.round_seen_max.max(self.promised.round) + 1,
            self.cfg.id,
        );
        let mut votes = VoteSet::EMPTY;
        votes.insert(self.cfg.id);
        self.proposer = Proposer::PreCandidate(PreCandidate { ballot, votes });
        self.reset_election_deadline(now);
        if self.quorum.is_phase1_quorum(votes) {
            self.start_election(now);
            return;
        }
        let commit = self.log.commit();
        for to in 0..self.cfg.replicas {
            if to != self.cfg.id {
                self.send(to, Message::PreVote { ballot, commit });
            }
        }
    }

    /// Would this acceptor grant `from` a new ballot? Not while it heard from a live leader
    /// (stickiness, which includes the restart blackout), and not if the asker knows fewer
    /// chosen slots than it does. Answering changes no state.
    fn on_pre_vote(&mut self, now: Nanos, from: ReplicaId, ballot: Ballot, commit: Slot) {
        let granted = !self.sticks_to_leader(now, from) && commit >= self.log.commit();
        self.send(from, Message::PreVoteReply { ballot, granted });
    }

    fn on_pre_vote_reply(&mut self, now: Nanos, from: ReplicaId, ballot: Ballot, granted: bool) {
        let Proposer::PreCandidate(pre) = &mut self.proposer else {
            return;
        };
        if pre.ballot != ballot || !granted {
            return;
        }
        pre.votes.insert(from);
        if self.quorum.is_phase1_quorum(pre.votes) {
            self.start_election(now);
        }
    }

    // ---------------------------------------------------------------- proposer

    fn start_election(&mut self, now: Nanos) {
        self.fail_leader_work();
        let round = self.round_seen_max.max(self.promised.round) + 1;
        self.round_seen_max = round;
        let ballot = Ballot::new(round, self.cfg.id);
        let first_slot = self.log.commit() + 1;
        self.proposer = Proposer::Candidate(Candidate {
            ballot,
            first_slot,
            next_part: vec![first_slot; self.cfg.replicas as usize],
            promises: VoteSet::EMPTY,
            merged: BTreeMap::new(),
            fast_votes: BTreeMap::new(),
            snapshot_needed: None,
        });
        self.leader = None;
        self.last_heard_leader = None;
        self.reset_election_deadline(now);
        self.broadcast(Message::Prepare { ballot, first_slot });
    }

    fn on_promise(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        (first_slot, last_slot): (Slot, Slot),
        entries: Vec<PromiseEntry>,
        floor: Slot,
    ) {
        let Proposer::Candidate(candidate) = &mut self.proposer else {
            return;
        };
        if candidate.ballot != ballot || candidate.promises.contains(from) {
            return;
        }
        if first_slot != candidate.next_part[from as usize] {
            return; // A duplicate or stale part.
        }
        if floor >= candidate.first_slot
            && candidate.snapshot_needed.map_or(true, |(_, f)| floor > f)
        {
            candidate.snapshot_needed = Some((from, floor));
        }
        // Merging the parts of an acceptor that never completes is harmless: they are values
        // it really accepted below our ballot, and the highest-ballot rule stays safe with
        // reports from beyond a quorum.
        let n = self.cfg.replicas as usize;
        for entry in entries {
            if entry.slot < candidate.first_slot {
                continue;
            }
            if entry.fast && !entry.chosen {
                let (at, votes) = candidate
                    .fast_votes
                    .entry(entry.slot)
                    .or_insert_with(|| (entry.ballot, vec![None; n]));
                if entry.ballot > *at {
                    *at = entry.ballot;
                    *votes = vec![None; n];
                }
                if entry.ballot == *at {
                    votes[from as usize] = Some(entry.value.clone());
                }
            }
            // Rounds rank by ballot, and within a ballot the classic round above the fast one.
            let keep_old = match candidate.merged.get(&entry.slot) {
                Some(old) => {
                    old.chosen
                        || (!entry.chosen && (old.ballot, !old.fast) >= (entry.ballot, !entry.fast))
                }
                None => false,
            };
            if !keep_old {
                candidate.merged.insert(entry.slot, entry);
            }
        }
        if last_slot != Slot::MAX {
            let next = last_slot + 1;
            candidate.next_part[from as usize] = next;
            self.send(
                from,
                Message::Prepare {
                    ballot,
                    first_slot: next,
                },
            );
            // Progress: a long report must not run into our own election timer.
            self.reset_election_deadline(now);
            return;
        }
        candidate.promises.insert(from);
        // Our own promise must be among them: it is the durable record that we used this
        // ballot. Without it, a candidate elected by others' promises that crashed before its
        // own write completed came back with its old `promised`, picked the same ballot again
        // and proposed other values in the same slots at that ballot (simulator, 5 replicas,
        // seed 1037921: "two values accepted at one ballot").
        if candidate.promises.contains(self.cfg.id)
            && self.quorum.is_phase1_quorum(candidate.promises)
        {
            self.finish_election(now);
        }
    }

    /// A candidate with its quorum of promises leads, unless an acceptor reported a log floor
    /// above what this replica knows chosen: it fetches that snapshot first (a no-op proposed
    /// in a slot that was chosen and truncated elsewhere would overwrite it). The election
    /// timer still runs: a snapshot that does not come in time means a new election.
    fn finish_election(&mut self, now: Nanos) {
        let Proposer::Candidate(candidate) = &self.proposer else {
            return;
        };
        if let Some((peer, floor)) = candidate.snapshot_needed {
            if floor > self.log.commit() {
                self.want_snapshot(peer, floor);
                return;
            }
        }
        self.become_leader(now);
    }

    fn want_snapshot(&mut self, peer: ReplicaId, floor: Slot) {
        if peer == self.cfg.id {
            return;
        }
        if self.out.snapshot_wanted.map_or(true, |(_, f)| floor > f) {
            self.out.snapshot_wanted = Some((peer, floor));
        }
    }

    /// The node installed a snapshot at `slot` in its state machine (taken from a peer, after
    /// verifying it): every slot up to `slot` is chosen and applied. Returns false (and
    /// changes nothing) if this replica already knows that much. The node persists the
    /// snapshot; until it is durable the WAL still holds the older state, which is safe to
    /// restart from (it only lacks chosen slots, which catch-up fetches again).
    pub fn install_snapshot(&mut self, now: Nanos, slot: Slot) -> bool {
        if self.fatal.is_some()
            || slot <= self.log.commit()
            || matches!(self.proposer, Proposer::Leader(_))
        {
            return false;
        }
        // Rare (a follower far behind): its few released slots are freed right here.
        drop(self.log.truncate(slot));
        self.applied = slot;
        self.catchup_sent_at = None;
        self.maybe_catch_up(now);
        let ready = match &self.proposer {
            Proposer::Candidate(c) => {
                c.promises.contains(self.cfg.id) && self.quorum.is_phase1_quorum(c.promises)
            }
            _ => false,
        };
        if ready {
            self.finish_election(now);
        }
        true
    }

    /// A snapshot of the state machine at `slot` is durable: the log forgets every slot up to
    /// it (the node then releases the WAL below it). `slot` must be applied already.
    pub fn compact(&mut self, slot: Slot) -> Compacted {
        if slot <= self.log.floor() || self.fatal.is_some() {
            return Compacted::default();
        }
        if self.cfg.inject_bug == Some(InjectedBug::SnapshotPastApplied) && slot > self.applied {
            // The injected bug: the log claims slots the state machine never applied.
            let released = self.log.truncate(slot);
            self.applied = slot;
            return released;
        }
        assert!(
            slot <= self.applied,
            "a snapshot at slot {slot} is past the applied index {}",
            self.applied
        );
        self.log.truncate(slot)
    }

    fn become_leader(&mut self, now: Nanos) {
        let Proposer::Candidate(candidate) = std::mem::replace(&mut self.proposer, Proposer::Idle)
        else {
            unreachable!("only a candidate becomes leader")
        };
        let n = self.cfg.replicas as usize;
        // Slots at or below the log floor are chosen (and held only in the snapshot): never
        // re-proposed.
        let first_slot = candidate.first_slot.max(self.log.floor() + 1);
        let last_reported = candidate.merged.keys().next_back().copied().unwrap_or(0);
        let skip_adoption = self.cfg.inject_bug == Some(InjectedBug::SkipValueAdoption);
        let recovery_end = if skip_adoption {
            first_slot - 1
        } else {
            last_reported.max(first_slot - 1)
        };
        let mut candidate = candidate;
        if !skip_adoption {
            self.select_fast_values(now, &mut candidate);
        }
        let mut leader = Leader {
            ballot: candidate.ballot,
            elected_at: now,
            next_slot: recovery_end + 1,
            recovery_end,
            recovery_next: first_slot,
            recovery: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            in_flight_bytes: 0,
            heartbeat_due: now,
            last_ack: vec![None; n],
            read_round: 0,
            read_round_wanted: false,
            acked_round: vec![0; n],
            lease: LeaderLease::new(self.cfg.replicas, self.cfg.id),
            reads: VecDeque::new(),
            acked_slot: vec![0; n],
            fast_from: None,
            recovering: BTreeMap::new(),
            commit_sent: 0,
        };
        leader.last_ack[self.cfg.id as usize] = Some(now);
        // Values reported chosen are facts: learn them first (a conflict with one known here
        // stops the replica).
        if !skip_adoption {
            for (slot, entry) in &candidate.merged {
                if entry.chosen && *slot >= first_slot {
                    self.set_chosen(*slot, entry.value.clone());
                }
            }
            // The slots first_slot..=recovery_end are re-proposed by `pump_leader` as the
            // pipeline drains, not all at once.
            leader.recovery = candidate.merged;
        }
        self.proposer = Proposer::Leader(leader);
        self.leader = Some(self.cfg.id);
        self.send_heartbeats(now);
    }

    /// What recovery re-proposes at `slot`: the value known chosen here; else the merged
    /// phase-1 report's; else a no-op for a gap.
    fn recovery_value(&mut self, slot: Slot) -> Value {
        let reported = match &mut self.proposer {
            Proposer::Leader(leader) => leader.recovery.remove(&slot),
            _ => None,
        };
        match (self.log.chosen(slot), reported) {
            (Some(value), _) => value.clone(),
            (None, Some(entry)) => entry.value,
            (None, None) => Value::Noop,
        }
    }

    fn propose_slot(&mut self, now: Nanos, slot: Slot, value: Value) {
        let commit = self.log.commit();
        let Proposer::Leader(leader) = &mut self.proposer else {
            unreachable!("only a leader proposes")
        };
        let ballot = leader.ballot;
        leader.commit_sent = leader.commit_sent.max(commit);
        leader.in_flight_bytes += value.size_bytes();
        let previous = leader.in_flight.insert(
            slot,
            InFlight {
                value: value.clone(),
                votes: VoteSet::EMPTY,
                held_for_holders: false,
                proposed_at: now,
                holders: vec![VoteSet::EMPTY; self.cfg.replicas as usize],
                sent_at: now,
            },
        );
        // One value per slot in the classic round of a ballot (fast rounds take many values,
        // but the leader never proposes in them).
        assert!(
            previous.is_none(),
            "slot {slot} proposed twice in the classic round of ballot {ballot}"
        );
        self.broadcast(Message::Accept {
            ballot,
            slot,
            value,
            commit,
        });
    }

    fn on_accepted(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        holders: VoteSet,
    ) {
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        if leader.ballot != ballot {
            return;
        }
        leader.last_ack[from as usize] = Some(now);
        let Some(in_flight) = leader.in_flight.get_mut(&slot) else {
            return;
        };
        in_flight.votes.insert(from);
        // The newest Accepted of a voter counts: its holder set shrinks only once the grants
        // it owed have expired (a holder that stopped answering stalls writes that long).
        in_flight.holders[from as usize] = holders;
        let required = if self.cfg.inject_bug == Some(InjectedBug::QleaseCommitWithoutHolder) {
            VoteSet::EMPTY
        } else {
            in_flight.required()
        };
        if !self.quorum.is_chosen(in_flight.votes, required) {
            if !in_flight.held_for_holders && self.quorum.is_chosen(in_flight.votes, VoteSet::EMPTY)
            {
                in_flight.held_for_holders = true;
                self.lease_reads.writes_held_for_holders += 1;
            }
            return;
        }
        let chosen = leader.in_flight.remove(&slot).expect("present").value;
        leader.in_flight_bytes -= chosen.size_bytes();
        if let Some(since) = leader.recovering.remove(&slot) {
            self.fast_counters.recovered += 1;
            self.fast_counters.recovery_ns_total += now.saturating_sub(since);
        }
        if self.set_chosen(slot, chosen) {
            self.fast_counters.classic_chosen += 1;
        }
    }

    fn on_reject(&mut self, now: Nanos, ballot: Ballot, promised: Ballot) {
        self.round_seen_max = self.round_seen_max.max(promised.round);
        if promised <= ballot {
            return;
        }
        // A leader whose ballot an acceptor outgrew (a restarted or once-partitioned replica
        // that promised a failed candidate) re-runs phase 1 above it at once: its followers
        // grant it (it is their live leader), and the stray acceptor rejoins.
        if let Proposer::Leader(leader) = &self.proposer {
            if leader.ballot == ballot {
                self.out.stepped_down.push(StepDown::Rejected {
                    ours: ballot,
                    promised,
                });
                self.start_election(now);
            }
        }
    }

    fn on_heartbeat_ack(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        read_round: u64,
        last_slot: Slot,
    ) {
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        if leader.ballot != ballot {
            return;
        }
        leader.last_ack[from as usize] = Some(now);
        let acked_slot = &mut leader.acked_slot[from as usize];
        *acked_slot = (*acked_slot).max(last_slot);
        if self.cfg.protocol == ProtocolMode::FastPaxos {
            // Votes the leader has not heard: recovery must reach that far.
            self.tally.saw_slot(last_slot);
        }
        let acked = &mut leader.acked_round[from as usize];
        *acked = (*acked).max(read_round);
        // The ack vouches for the heartbeat of round `read_round` (a grant, `lease.rs`).
        leader.lease.on_ack(from, read_round);
    }

    /// Whether the leader holds a lease at `now`: a classic quorum (itself included) has
    /// acknowledged heartbeats sent less than `lease_ms` ago.
    fn holds_lease(&self, leader: &Leader, now: Nanos) -> bool {
        leader
            .lease
            .holds(now, self.cfg.leader_lease_ms(), &self.quorum)
    }

    fn tick_leader(&mut self, now: Nanos) {
        let min_ns = self.cfg.election_timeout_min_ms * NS_PER_MS;
        let Proposer::Leader(leader) = &self.proposer else {
            return;
        };
        let lost_quorum =
            now >= leader.elected_at + min_ns && !self.leader_has_quorum(leader, now, min_ns);
        // The injected stale-leader-read bug keeps a leader that lost its quorum in office:
        // check-quorum would otherwise close the window in which two leaders overlap within a
        // message delay. (lease-follows-last-speaker runs with check-quorum on.)
        let lingers = self.cfg.inject_bug == Some(InjectedBug::StaleLeaderRead);
        if lost_quorum && !lingers {
            let me = self.cfg.id as usize;
            self.out.stepped_down.push(StepDown::LostQuorum {
                ballot: leader.ballot,
                window_ms: self.cfg.election_timeout_min_ms,
                last_ack_ms_ago: leader
                    .last_ack
                    .iter()
                    .enumerate()
                    .map(|(id, a)| {
                        if id == me {
                            Some(0)
                        } else {
                            a.map(|at| now.saturating_sub(at) / NS_PER_MS)
                        }
                    })
                    .collect(),
            });
            self.step_down(now);
            return;
        }
        if self.cfg.protocol == ProtocolMode::FastPaxos && self.switch_fast_mode(now) {
            return;
        }
        let Proposer::Leader(leader) = &self.proposer else {
            return;
        };
        if now >= leader.heartbeat_due {
            self.send_heartbeats(now);
            self.retransmit(now);
        }
        self.scan_fast_slots(now);
    }

    fn leader_has_quorum(&self, leader: &Leader, now: Nanos, window_ns: Nanos) -> bool {
        let mut live = VoteSet::EMPTY;
        for (id, ack) in leader.last_ack.iter().enumerate() {
            if ack.is_some_and(|at| now < at + window_ns) || id == self.cfg.id as usize {
                live.insert(id as ReplicaId);
            }
        }
        self.quorum.is_phase1_quorum(live)
    }

    /// Accepts lost on the way (or to a replica that restarted) are sent again to the
    /// replicas that have not voted.
    fn retransmit(&mut self, now: Nanos) {
        let retry_ns = 2 * self.cfg.heartbeat_ms * NS_PER_MS;
        let commit = self.log.commit();
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        let mut resend = Vec::new();
        for (slot, in_flight) in leader.in_flight.iter_mut() {
            if now < in_flight.sent_at + retry_ns {
                continue;
            }
            in_flight.sent_at = now;
            // A voter that named a holder who has not voted is asked again: its fresh answer
            // drops holders whose grants expired meanwhile.
            for to in 0..self.cfg.replicas {
                let stale_holders = in_flight.votes.contains(to)
                    && !in_flight.votes.is_superset(in_flight.holders[to as usize]);
                if !in_flight.votes.contains(to) || stale_holders {
                    resend.push(Envelope {
                        from: self.cfg.id,
                        to,
                        msg: Message::Accept {
                            ballot: leader.ballot,
                            slot: *slot,
                            value: in_flight.value.clone(),
                            commit,
                        },
                    });
                }
            }
        }
        self.out.messages.extend(resend);
    }

    fn send_heartbeats(&mut self, now: Nanos) {
        let commit = self.log.commit();
        let heartbeat_ns = self.cfg.heartbeat_ms * NS_PER_MS;
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        let lease_ms = self.cfg.leader_lease_ms();
        if leader.read_round_wanted || lease_ms > 0 {
            // With leases every heartbeat is its own round, so an ack names its send time.
            leader.read_round += 1;
            leader.read_round_wanted = false;
        }
        if lease_ms > 0 {
            leader.lease.round_sent(leader.read_round, now, lease_ms);
        }
        leader.heartbeat_due = now + heartbeat_ns;
        leader.commit_sent = leader.commit_sent.max(commit);
        leader.acked_round[self.cfg.id as usize] = leader.read_round;
        // Holders whose vote a slot has waited for over two retransmission periods (and half
        // an election timeout, which placements scale with the RTT): grantors
        // stop renewing them, so their grants run out and the writes go on.
        let mut revoke = VoteSet::EMPTY;
        if self.qlease.is_some() {
            let patience_ns =
                (4 * heartbeat_ns).max(self.cfg.election_timeout_min_ms * NS_PER_MS / 2);
            for f in leader.in_flight.values() {
                if now >= f.proposed_at + patience_ns {
                    for id in 0..self.cfg.replicas {
                        if f.required().contains(id) && !f.votes.contains(id) {
                            revoke.insert(id);
                        }
                    }
                }
            }
        }
        leader.acked_slot[self.cfg.id as usize] = self.log.last_slot();
        let msg = Message::Heartbeat {
            ballot: leader.ballot,
            commit,
            read_round: leader.read_round,
            revoke,
            fast_from: leader.fast_from.unwrap_or(0),
        };
        self.broadcast_to_peers(msg);
        // The leader is a grantor too.
        self.revoke_grants(now, revoke);
    }

    /// Quorum leases: a holder's local read waits until it has applied every slot it holds
    /// (R3), and followers learn commits from the next Accept or heartbeat. When no Accept
    /// took the new commit index out (the pipeline is idle, or this step proposed nothing),
    /// the leader sends it now in a heartbeat of the current read round — otherwise a read at
    /// a holder right after a write waits up to `heartbeat_ms` for the commit (the "commit
    /// notice" of Bodega). Without quorum leases only the leader serves linearizable reads,
    /// and followers learn commits when they next hear from it.
    fn send_commit_notice(&mut self) {
        if self.qlease.is_none() {
            return;
        }
        let commit = self.log.commit();
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        if commit <= leader.commit_sent {
            return;
        }
        leader.commit_sent = commit;
        // The read round is the last one sent: an ack to it proves no more than that round's
        // send time, so leases and read rounds count it as they count the first ack.
        let msg = Message::Heartbeat {
            ballot: leader.ballot,
            commit,
            read_round: leader.read_round,
            revoke: VoteSet::EMPTY,
            fast_from: leader.fast_from.unwrap_or(0),
        };
        self.broadcast_to_peers(msg);
    }

    /// Cuts batches from the queue while the pipeline has room, and starts a read round if a
    /// read is waiting for one.
    fn pump_leader(&mut self, now: Nanos) {
        let Proposer::Leader(leader) = &self.proposer else {
            return;
        };
        if leader.read_round_wanted {
            // A read round does not move the periodic heartbeat: with reads arriving faster
            // than `heartbeat_ms` the leader's timers (check-quorum, retransmit) must still fire.
            let heartbeat_due = leader.heartbeat_due;
            self.send_heartbeats(now);
            if let Proposer::Leader(leader) = &mut self.proposer {
                leader.heartbeat_due = heartbeat_due;
            }
        }
        loop {
            let Proposer::Leader(leader) = &mut self.proposer else {
                return;
            };
            if Self::pipeline_full(&self.cfg, leader) {
                return;
            }
            // Recovery first, paced by the pipeline like any proposal.
            if leader.recovery_next <= self.log.floor() {
                // Compacted meanwhile: chosen, nothing to re-propose.
                leader.recovery_next = self.log.floor() + 1;
                continue;
            }
            if leader.recovery_next <= leader.recovery_end {
                let slot = leader.recovery_next;
                leader.recovery_next += 1;
                let value = self.recovery_value(slot);
                self.propose_slot(now, slot, value);
                continue;
            }
            if self.queue.is_empty() || leader.fast_from.is_some() {
                // With fast rounds open the leader proposes nothing of its own: commands are
                // voted for in the fast round (`open_fast_rounds` handed the queue over).
                return;
            }
            if self.cfg.batch_delay_us > 0 {
                let oldest = self.queue.front().expect("not empty").0;
                let full = self.queue.len() >= self.cfg.batch_max_ops
                    || self.queue_bytes >= self.cfg.batch_max_bytes;
                if !full && now < oldest + self.cfg.batch_delay_us * NS_PER_US {
                    return;
                }
            }
            let slot = leader.next_slot;
            let batch = self.cut_batch();
            let Proposer::Leader(leader) = &mut self.proposer else {
                return;
            };
            leader.next_slot += 1;
            self.propose_slot(now, slot, Value::Batch(batch.into()));
        }
    }

    /// No room for another slot: `pipeline_depth` slots, or `pipeline_bytes_max` bytes, in
    /// flight. (The batching timer must not be due while the pipeline is full, or the caller
    /// would tick in a loop with nothing to do.)
    fn pipeline_full(cfg: &Config, leader: &Leader) -> bool {
        leader.in_flight.len() >= cfg.pipeline_depth
            || (!leader.in_flight.is_empty() && leader.in_flight_bytes >= cfg.pipeline_bytes_max)
    }

    fn cut_batch(&mut self) -> Vec<Command> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some((_, command)) = self.queue.front() {
            let size = command.size_bytes();
            let over = batch.len() >= self.cfg.batch_max_ops
                || (!batch.is_empty() && bytes + size > self.cfg.batch_max_bytes);
            if over {
                break;
            }
            bytes += size;
            self.queue_bytes -= size;
            batch.push(self.queue.pop_front().expect("front exists").1);
        }
        assert!(!batch.is_empty());
        batch
    }

    fn release_confirmed_reads(&mut self) {
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        let mut rounds = leader.acked_round.clone();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        // The round a classic quorum (the leader included) has acknowledged.
        let confirmed = rounds[self.quorum.classic() as usize - 1];
        // Only while its own fast round is open: a slot fast-chosen at an older ballot was
        // voted by a member of the phase-1 quorum, so it is at or below `recovery_end`.
        let fast = leader.fast_from.is_some();
        while let Some(read) = leader.reads.front_mut() {
            if read.round > confirmed {
                break;
            }
            if fast && !read.confirmed {
                // A write acknowledged before the read arrived was voted by a fast quorum,
                // which meets the classic quorum that confirmed the round: one of those acks
                // (sent after the read arrived) names a slot at or above the write's.
                read.confirmed = true;
                for (id, slot) in leader.acked_slot.iter().enumerate() {
                    if leader.acked_round[id] >= read.round {
                        read.index = read.index.max(*slot);
                    }
                }
            }
            if read.index > self.applied {
                break;
            }
            let read = leader.reads.pop_front().expect("front exists");
            self.out.reads.push(ReadResult {
                id: read.id,
                outcome: ReadOutcome::Ready,
            });
        }
    }

    // ---------------------------------------------------------------- role changes

    /// Leaves candidacy or leadership if `ballot` outranks ours.
    fn step_down_below(&mut self, now: Nanos, ballot: Ballot) {
        let ours = match &self.proposer {
            Proposer::Idle => return,
            Proposer::PreCandidate(_) => {
                // Someone else's ballot got through: the pre-vote is moot.
                self.proposer = Proposer::Idle;
                return;
            }
            Proposer::Candidate(c) => (c.ballot, false),
            Proposer::Leader(l) => (l.ballot, true),
        };
        if ballot > ours.0 {
            self.out.stepped_down.push(StepDown::Outranked {
                ours: ours.0,
                leader: ours.1,
                theirs: ballot,
            });
            self.step_down(now);
        }
    }

    fn step_down(&mut self, now: Nanos) {
        self.fail_leader_work();
        self.proposer = Proposer::Idle;
        if self.leader == Some(self.cfg.id) {
            self.leader = None;
        }
        self.reset_election_deadline(now);
    }

    /// Answers everything waiting on this replica's leadership: queued proposals and reads.
    fn fail_leader_work(&mut self) {
        let hint = self.leader_hint().filter(|l| *l != self.cfg.id);
        for (_, command) in self.queue.drain(..) {
            self.out.dropped.push(DroppedProposal {
                client_id: command.client_id,
                seq: command.seq,
                leader: hint,
            });
        }
        self.queue_bytes = 0;
        if let Proposer::Leader(leader) = &mut self.proposer {
            for read in leader.reads.drain(..) {
                self.out.reads.push(ReadResult {
                    id: read.id,
                    outcome: ReadOutcome::NotLeader { leader: hint },
                });
            }
        }
    }

    fn leader_hint(&self) -> Option<ReplicaId> {
        self.leader
    }

    fn reset_election_deadline(&mut self, now: Nanos) {
        let timeout_ms = self
            .rng
            .gen_range(self.cfg.election_timeout_min_ms..=self.cfg.election_timeout_max_ms);
        self.election_deadline = now + timeout_ms * NS_PER_MS;
    }

    // ---------------------------------------------------------------- output

    fn persist(&mut self, write: Write) -> WriteId {
        let id = self.write_id_next;
        self.write_id_next += 1;
        self.out.writes.push((id, write));
        id
    }

    fn send(&mut self, to: ReplicaId, msg: Message) {
        self.out.messages.push(Envelope {
            from: self.cfg.id,
            to,
            msg,
        });
    }

    fn send_after(&mut self, write_id: WriteId, to: ReplicaId, msg: Message) {
        let envelope = Envelope {
            from: self.cfg.id,
            to,
            msg,
        };
        let durable = write_id <= self.write_id_durable;
        if durable || self.cfg.inject_bug == Some(InjectedBug::AckBeforePersist) {
            self.out.messages.push(envelope);
        } else {
            self.held.push_back((write_id, envelope));
        }
    }

    fn broadcast(&mut self, msg: Message) {
        for to in 0..self.cfg.replicas {
            self.out.messages.push(Envelope {
                from: self.cfg.id,
                to,
                msg: msg.clone(),
            });
        }
    }

    /// To every replica but this one.
    fn broadcast_to_peers(&mut self, msg: Message) {
        for to in (0..self.cfg.replicas).filter(|&to| to != self.cfg.id) {
            self.out.messages.push(Envelope {
                from: self.cfg.id,
                to,
                msg: msg.clone(),
            });
        }
    }
}
