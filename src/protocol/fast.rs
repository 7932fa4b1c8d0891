//! Fast Paxos rounds (architecture §6; rules and safety argument in
//! `docs/internals/protocol.md` §11).
//!
//! Owns the parts of Fast Paxos that do not need the replica's state: the protocol mode, the
//! learners' tally of fast-round votes, and the value-selection rule of coordinated and
//! uncoordinated recovery. The replica (`replica.rs`) decides when to vote, recover and open or
//! close fast rounds.
//!
//! Rounds: every ballot `b` has two rounds per slot, its fast round and its classic round,
//! ordered `(b, fast) < (b, classic) < (b', fast)` for `b < b'`. The leader of `b` opens the
//! fast round of `b` for every slot from `fast_from` on (its "any" message, carried by its
//! heartbeats); its classic round is used for recovery and for everything before `fast_from`.

use std::collections::BTreeMap;

use super::quorum::QuorumSpec;
use super::types::{Ballot, Command, Nanos, ReplicaId, Slot, Value};

/// The replication protocol of a cluster (`protocol` in `cluster.toml`, `--protocol`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolMode {
    /// Every command goes through the leader (architecture §4).
    #[default]
    MultiPaxos,
    /// Clients send commands to every replica, which vote for them in fast rounds; the leader
    /// recovers collisions and falls back to classic rounds without a live fast quorum.
    FastPaxos,
}

impl ProtocolMode {
    pub const ALL: [ProtocolMode; 2] = [ProtocolMode::MultiPaxos, ProtocolMode::FastPaxos];

    pub fn name(&self) -> &'static str {
        match self {
            ProtocolMode::MultiPaxos => "multi-paxos",
            ProtocolMode::FastPaxos => "fast-paxos",
        }
    }

    pub fn from_name(name: &str) -> Option<ProtocolMode> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// A stable number for settings digests.
    pub fn code(self) -> u64 {
        match self {
            ProtocolMode::MultiPaxos => 1,
            ProtocolMode::FastPaxos => 2,
        }
    }
}

impl std::fmt::Display for ProtocolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How an acceptor orders the fast-round proposals it receives (`fast_order` in
/// `cluster.toml`, `--fast-order`; `docs/internals/protocol.md` §11, "Ordering proposals").
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum FastOrder {
    /// Hold a proposal until its client-stamped deadline (+ `fast_order_margin_us`), then
    /// vote the held ones in (deadline, client id, seq) order: acceptors that received a set
    /// of proposals before their deadlines vote them into the same slots.
    #[default]
    Deadline,
    /// Vote for a proposal as soon as it arrives (concurrent writes collide whenever
    /// acceptors receive them in different orders).
    Arrival,
}

impl FastOrder {
    pub const ALL: [FastOrder; 2] = [FastOrder::Deadline, FastOrder::Arrival];

    pub fn name(&self) -> &'static str {
        match self {
            FastOrder::Deadline => "deadline",
            FastOrder::Arrival => "arrival",
        }
    }

    pub fn from_name(name: &str) -> Option<FastOrder> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// A stable number for settings digests.
    pub fn code(self) -> u64 {
        match self {
            FastOrder::Deadline => 1,
            FastOrder::Arrival => 2,
        }
    }
}

impl std::fmt::Display for FastOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Fast Paxos counters of this incarnation (they restart at 0 with the replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastCounters {
    /// Slots this replica learned chosen from a fast quorum of matching votes.
    pub fast_learned: u64,
    /// Of those, the ones it learned while leading: summed over the replicas, each slot a
    /// fast quorum chose is counted about once (the leader hears every vote).
    pub fast_chosen: u64,
    /// Leader: slots chosen by a classic quorum in its classic round (recoveries, the slots
    /// before fast rounds opened and everything while they are closed).
    pub classic_chosen: u64,
    /// Leader: slots it recovered because the votes collided (no value could reach a fast
    /// quorum any more).
    pub collisions: u64,
    /// Leader: slots it recovered because they stayed undecided for `fast_timeout`.
    pub timeouts: u64,
    /// Leader: sum of the times from a recovered slot's first known vote to its choice.
    pub recovery_ns_total: u64,
    /// Leader: recovered slots that have been chosen (the count behind `recovery_ns_total`).
    pub recovered: u64,
    /// Leader: fast rounds opened or closed.
    pub mode_switches: u64,
    /// Client proposals this acceptor held until their deadline (`FastOrder::Deadline`).
    pub held: u64,
    /// Client proposals with a deadline that arrived after it (or after a later deadline was
    /// already released): voted at once, in arrival order.
    pub late: u64,
}

/// The votes known for one slot, at the highest ballot whose fast round voted there.
#[derive(Clone, Debug)]
pub struct SlotVotes {
    pub ballot: Ballot,
    /// Per replica, its vote in the fast round of `ballot`.
    pub votes: Vec<Option<Value>>,
    /// When this replica first heard of the slot (a vote there, or one above it).
    pub since: Nanos,
    /// Leader: when it last asked the non-voters for their vote (`FastFill`).
    pub fill_sent_at: Option<Nanos>,
}

impl SlotVotes {
    pub fn voters(&self) -> u32 {
        self.votes.iter().filter(|v| v.is_some()).count() as u32
    }

    /// The votes as (voter, value) pairs, in voter order.
    pub fn pairs(&self) -> Vec<(ReplicaId, Value)> {
        self.votes
            .iter()
            .enumerate()
            .filter_map(|(id, v)| v.clone().map(|v| (id as ReplicaId, v)))
            .collect()
    }

    /// The most votes any one value has.
    pub fn max_count(&self) -> u32 {
        counts(&self.pairs())
            .iter()
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(0)
    }

    /// No value can reach a fast quorum any more, whatever the missing voters say.
    pub fn collided(&self, quorum: &QuorumSpec) -> bool {
        self.max_count() + (quorum.replicas() - self.voters()) < quorum.fast()
    }

    /// Like [`SlotVotes::collided`], counting as missing only the replicas that may still
    /// vote here on their own: an acceptor votes for commands in increasing slots, so one
    /// known to have voted above `slot` (`voted_max`) never will (only a `FastFill` makes it).
    pub fn hopeless(&self, slot: Slot, voted_max: &[Slot], quorum: &QuorumSpec) -> bool {
        let may_vote = self
            .votes
            .iter()
            .zip(voted_max)
            .filter(|(v, max)| v.is_none() && **max < slot)
            .count() as u32;
        self.max_count() + may_vote < quorum.fast()
    }
}

/// The learner's record of fast-round votes for slots not yet known chosen. Bounded by the
/// acceptors' voting window (`Config::pipeline_depth` slots past the commit point).
#[derive(Clone, Debug)]
pub struct Tally {
    /// Replicas in the group.
    n: u32,
    slots: BTreeMap<Slot, SlotVotes>,
    /// The highest slot any vote (or a heartbeat ack) named: acceptors vote above it.
    max_slot: Slot,
    /// Per replica, the highest slot it was heard voting in.
    voted_max: Vec<Slot>,
}

impl Tally {
    pub fn new(n: u32) -> Tally {
        Tally {
            n,
            slots: BTreeMap::new(),
            max_slot: 0,
            voted_max: vec![0; n as usize],
        }
    }

    /// Per replica, the highest slot it was heard voting in.
    pub fn voted_max(&self) -> &[Slot] {
        &self.voted_max
    }

    pub fn max_slot(&self) -> Slot {
        self.max_slot
    }

    /// Raises `max_slot` (a slot known to hold a vote somewhere).
    pub fn saw_slot(&mut self, slot: Slot) {
        self.max_slot = self.max_slot.max(slot);
    }

    pub fn get(&self, slot: Slot) -> Option<&SlotVotes> {
        self.slots.get(&slot)
    }

    pub fn get_mut(&mut self, slot: Slot) -> Option<&mut SlotVotes> {
        self.slots.get_mut(&slot)
    }

    /// The slot's entry, created (empty, at `ballot`) if it has none.
    pub fn entry(&mut self, slot: Slot, ballot: Ballot, now: Nanos) -> &mut SlotVotes {
        let n = self.n as usize;
        self.slots.entry(slot).or_insert_with(|| SlotVotes {
            ballot,
            votes: vec![None; n],
            since: now,
            fill_sent_at: None,
        })
    }

    /// Records `from`'s vote and returns the value if it now has `needed` matching votes in
    /// one fast round. Votes of a lower ballot than the slot's are dropped; a higher ballot's
    /// vote replaces them (votes of different rounds never add up).
    pub fn record(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        value: Value,
        needed: u32,
    ) -> Option<Value> {
        self.saw_slot(slot);
        let heard = &mut self.voted_max[from as usize];
        *heard = (*heard).max(slot);
        let n = self.n as usize;
        let entry = self.entry(slot, ballot, now);
        if ballot < entry.ballot {
            return None;
        }
        if ballot > entry.ballot {
            entry.ballot = ballot;
            entry.votes = vec![None; n];
        }
        entry.votes[from as usize] = Some(value.clone());
        let count = entry
            .votes
            .iter()
            .filter(|v| **v == Some(value.clone()))
            .count() as u32;
        (count >= needed).then_some(value)
    }

    /// Forgets a slot (chosen, or recovered by the leader).
    pub fn remove(&mut self, slot: Slot) {
        self.slots.remove(&slot);
    }

    /// Forgets every slot up to `commit`.
    pub fn forget_through(&mut self, commit: Slot) {
        self.slots = self.slots.split_off(&(commit + 1));
    }

    pub fn slots(&self) -> impl Iterator<Item = (&Slot, &SlotVotes)> {
        self.slots.iter()
    }

    /// Whether a slot other than `except` for which `undecided` holds has a vote for
    /// `command` (that slot will choose it, or lose it and hand it on).
    pub fn votes_elsewhere(
        &self,
        except: Slot,
        command: &Command,
        undecided: impl Fn(Slot) -> bool,
    ) -> bool {
        self.slots.iter().any(|(slot, e)| {
            *slot != except
                && undecided(*slot)
                && e.votes.iter().flatten().any(|v| {
                    v.commands()
                        .iter()
                        .any(|c| (c.client_id, c.seq) == (command.client_id, command.seq))
                })
        })
    }
}

/// Distinct values with their vote counts, in the order each value was first seen.
fn counts(votes: &[(ReplicaId, Value)]) -> Vec<(Value, u32)> {
    let mut out: Vec<(Value, u32)> = Vec::new();
    for (_, v) in votes {
        match out.iter_mut().find(|(w, _)| w == v) {
            Some((_, c)) => *c += 1,
            None => out.push((v.clone(), 1)),
        }
    }
    out
}

/// What recovery proposes for a slot whose highest round with votes in the quorum is a fast
/// round, and the commands of the other values (to be proposed again in later slots).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub value: Value,
    /// Whether a value had a strict majority of the quorum (it may have been chosen).
    pub forced: bool,
    pub losers: Vec<Command>,
}

/// The value-selection rule (Lamport, Fast Paxos, §3.3 with |Qc| + 2|Qf| > 2N): `votes` are the
/// fast-round votes, at the highest round any member of the quorum voted in, of the members of
/// a classic quorum of `quorum_size` acceptors (members that did not vote in that round are
/// counted in `quorum_size`, not in `votes`). A value chosen in that round has at least
/// `quorum_size - (N - qf)` of these votes, which is more than half of `quorum_size`; so if a
/// value has a strict majority of the quorum it must be proposed, and otherwise nothing was
/// chosen and any value is safe (the most voted one, ties to the lowest voter's).
///
/// `any_value` is the injected bug `fast-recovery-any-value`: the highest voter's value, whatever
/// the counts.
pub fn select(votes: &[(ReplicaId, Value)], quorum_size: u32, any_value: bool) -> Selection {
    assert!(!votes.is_empty(), "selection needs at least one vote");
    assert!(votes.len() as u32 <= quorum_size, "more votes than voters");
    let counted = counts(votes);
    let majority = counted.iter().find(|(_, c)| 2 * c > quorum_size);
    let (value, forced) = if any_value {
        (votes.last().expect("not empty").1.clone(), false)
    } else if let Some((v, _)) = majority {
        (v.clone(), true)
    } else {
        let best = counted.iter().map(|(_, c)| *c).max().expect("not empty");
        let (v, _) = counted
            .iter()
            .find(|(_, c)| *c == best)
            .expect("a value has the most votes");
        (v.clone(), false)
    };
    let mut losers: Vec<Command> = Vec::new();
    for (v, _) in &counted {
        for c in v.commands() {
            let kept = value
                .commands()
                .iter()
                .any(|k| (k.client_id, k.seq) == (c.client_id, c.seq));
            let listed = losers
                .iter()
                .any(|k| (k.client_id, k.seq) == (c.client_id, c.seq));
            if !kept && !listed {
                losers.push(c.clone());
            }
        }
    }
    Selection {
        value,
        forced,
        losers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn cmd(client: u64) -> Value {
        Value::Batch(
            vec![Command {
                client_id: client,
                seq: 1,
                payload: Bytes::from_static(b"x"),
            }]
            .into(),
        )
    }

    fn votes(vals: &[u64]) -> Vec<(ReplicaId, Value)> {
        vals.iter()
            .enumerate()
            .map(|(i, c)| (i as ReplicaId, cmd(*c)))
            .collect()
    }

    #[test]
    fn a_possibly_chosen_value_is_kept_for_every_quorum_size() {
        // For each N, a value chosen by a fast quorum keeps at least |Q| - (N - qf) votes in any
        // classic quorum Q, which is a strict majority of |Q|: selection must return it.
        for n in [3u32, 4, 5, 7, 9] {
            let q = QuorumSpec::new(n);
            for size in q.classic()..=n {
                let min_votes = size - (n - q.fast());
                assert!(2 * min_votes > size, "n {n} |Q| {size}");
                let mut vals = vec![1u64; min_votes as usize];
                vals.extend((0..size - min_votes).map(|i| 100 + u64::from(i)));
                let s = select(&votes(&vals), size, false);
                assert_eq!(s.value, cmd(1), "n {n} |Q| {size}");
                assert!(s.forced);
                assert_eq!(s.losers.len() as u32, size - min_votes);
            }
        }
    }

    #[test]
    fn the_real_quorum_size_counts_members_that_did_not_vote() {
        // N = 5, Q of 4 of which 2 voted 1 and 1 voted 2 (one member voted nothing): 2 of 4 is
        // no majority, so nothing could have been chosen (qf = 4 needs 3 of this Q).
        let s = select(&votes(&[1, 1, 2]), 4, false);
        assert!(!s.forced);
        assert_eq!(s.value, cmd(1), "most votes, though not forced");
        // The same votes with |Q| = 3 (everyone in Q voted): 1 must be kept.
        assert!(select(&votes(&[1, 1, 2]), 3, false).forced);
    }

    #[test]
    fn the_any_value_bug_ignores_the_majority() {
        let s = select(&votes(&[1, 1, 2]), 3, true);
        assert_eq!(s.value, cmd(2));
    }

    #[test]
    fn tally_counts_one_round_at_a_time() {
        let b1 = Ballot::new(1, 0);
        let b2 = Ballot::new(2, 0);
        let mut t = Tally::new(3);
        assert_eq!(t.record(0, 0, b1, 5, cmd(1), 3), None);
        assert_eq!(t.record(0, 1, b1, 5, cmd(1), 3), None);
        // A vote of a higher ballot starts over.
        assert_eq!(t.record(0, 2, b2, 5, cmd(1), 3), None);
        assert_eq!(t.get(5).unwrap().voters(), 1);
        // A vote of the old ballot no longer counts.
        assert_eq!(t.record(0, 0, b1, 5, cmd(1), 3), None);
        assert_eq!(t.record(0, 0, b2, 5, cmd(1), 3), None);
        assert_eq!(t.record(0, 1, b2, 5, cmd(1), 3), Some(cmd(1)));
        assert_eq!(t.max_slot(), 5);
        t.forget_through(5);
        assert!(t.get(5).is_none());
    }

    #[test]
    fn collision_is_detected_once_no_value_can_reach_the_fast_quorum() {
        let q = QuorumSpec::new(5); // qf = 4
        let mut t = Tally::new(5);
        let b = Ballot::new(1, 0);
        t.record(0, 0, b, 1, cmd(1), 4);
        t.record(0, 1, b, 1, cmd(2), 4);
        assert!(
            !t.get(1).unwrap().collided(&q),
            "1 + 3 missing can still make 4"
        );
        t.record(0, 2, b, 1, cmd(3), 4);
        assert!(t.get(1).unwrap().collided(&q), "1 + 2 missing < 4");
    }
}
