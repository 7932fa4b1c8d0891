//! The replica's Fast Paxos rounds (architecture §6, `docs/internals/protocol.md` §11): voting
//! in the fast round, learning from fast quorums, the leader's collision recovery and its
//! switches between fast and classic rounds. A child module of `replica.rs`, so it works on the
//! replica's own state; the pure parts (the tally, the selection rule) are in `fast.rs`.
//!
//! Slot assignment: an acceptor votes for a command in the lowest slot above the fast round's
//! first slot, above every slot it holds anything for (its own votes, durable or not, values
//! accepted in a classic round and values known chosen) and above its commit point. Acceptors
//! that see commands in the same order therefore agree on slots without talking; any
//! disagreement is a collision the leader recovers, and an acceptor that fell behind catches up
//! as the slots it missed are decided (they enter its log).

use super::{InjectedBug, NotLeader, Proposer, Replica, NS_PER_MS};
use crate::protocol::fast::{self, FastOrder, ProtocolMode};
use crate::protocol::message::{Message, PromiseEntry};
use crate::protocol::types::{Ballot, Command, Nanos, ReplicaId, Slot, Value, Write};

/// Acceptors vote at most this many slots past their commit point, or `pipeline_depth` if that
/// is more: beyond it a command is refused as `QueueFull` (the client backs off and retries).
const FAST_WINDOW_MIN: u64 = 8;

impl Replica {
    /// The fast round this acceptor may vote in now, (ballot, first slot): opened by the leader
    /// whose ballot is still the highest this acceptor answers.
    pub(super) fn fast_open_now(&self) -> Option<(Ballot, Slot)> {
        if self.cfg.protocol != ProtocolMode::FastPaxos {
            return None;
        }
        self.fast_open.filter(|(b, _)| *b == self.ballot_floor())
    }

    fn fast_order_margin_ns(&self) -> Nanos {
        self.cfg.fast_order_margin_us * super::NS_PER_US
    }

    /// Holds a client proposal until its deadline (`Replica::propose_by`), or votes for it at
    /// once if it is late: past its deadline (+ margin), or below a proposal already released
    /// (voting it now may collide; recovery handles that). A deadline further ahead than
    /// `fast_timeout` (a client whose clock is ahead) is taken as now + `fast_timeout`.
    pub(super) fn hold_fast(
        &mut self,
        now: Nanos,
        command: Command,
        deadline: Nanos,
    ) -> Result<(), NotLeader> {
        let deadline = deadline.min(now.saturating_add(self.cfg.fast_timeout_ns()));
        let key = (deadline, command.client_id, command.seq);
        if deadline.saturating_add(self.fast_order_margin_ns()) <= now || key <= self.fast_released
        {
            self.fast_counters.late += 1;
            return self.propose(now, command);
        }
        let id = (command.client_id, command.seq);
        if self.fast_held.values().any(|c| (c.client_id, c.seq) == id) {
            return Ok(()); // a retry of a command still held: it is voted at its first deadline
        }
        if self.fast_held.len() >= self.cfg.proposal_queue_max {
            return Err(NotLeader::QueueFull);
        }
        self.fast_counters.held += 1;
        self.fast_held.insert(key, command);
        Ok(())
    }

    /// The deadline this replica stamps on a `FastPropose` sent now (0 with `Arrival`).
    pub(super) fn fast_propose_deadline(&self, now: Nanos) -> Nanos {
        match self.cfg.fast_order {
            FastOrder::Deadline => now + self.cfg.fast_propose_ahead_us * super::NS_PER_US,
            FastOrder::Arrival => 0,
        }
    }

    /// When the first held proposal is due (deadline + margin).
    pub(super) fn fast_release_due(&self) -> Option<Nanos> {
        let margin = self.fast_order_margin_ns();
        self.fast_held
            .keys()
            .next()
            .map(|(deadline, _, _)| deadline.saturating_add(margin))
    }

    /// Votes for the held proposals whose deadline (+ margin) passed, in deadline order. One
    /// that cannot be voted any more (the fast round closed here and this replica does not
    /// lead) goes back to its client through `Ready::dropped`.
    pub(super) fn release_fast_held(&mut self, now: Nanos) {
        if self.fatal.is_some() {
            return;
        }
        let margin = self.fast_order_margin_ns();
        while let Some(first) = self.fast_held.first_entry() {
            if first.key().0.saturating_add(margin) > now {
                break;
            }
            let (key, command) = first.remove_entry();
            self.fast_released = key;
            let (client_id, seq) = (command.client_id, command.seq);
            if let Err(e) = self.propose(now, command) {
                let leader = match e {
                    NotLeader::Redirect { leader } => leader,
                    NotLeader::QueueFull => self.leader_hint(),
                };
                self.out.dropped.push(super::DroppedProposal {
                    client_id,
                    seq,
                    leader,
                });
            }
        }
    }

    fn fast_window(&self) -> u64 {
        (self.cfg.pipeline_depth as u64).max(FAST_WINDOW_MIN)
    }

    /// Votes for `command` in the next free slot of the open fast round.
    pub(super) fn fast_vote(&mut self, command: Command) -> Result<(), NotLeader> {
        let (ballot, first) = self.fast_open_now().expect("the caller checked");
        let own = if self.cfg.inject_bug == Some(InjectedBug::FastVoteTwice) {
            self.log.commit()
        } else {
            self.log.last_slot()
        };
        // Not above the votes heard from others: a replica that hears a vote for a slot before
        // the command behind it would skip that slot, and the hole costs a FastFill round.
        let slot = first.max(own + 1).max(self.log.commit() + 1);
        if slot > self.log.commit() + self.fast_window() {
            return Err(NotLeader::QueueFull);
        }
        self.cast_fast_vote(ballot, slot, Value::Batch(vec![command].into()));
        Ok(())
    }

    /// Votes `value` in the fast round of `ballot` at `slot`: durable first, then a Voted to
    /// every replica (all of them learn).
    fn cast_fast_vote(&mut self, ballot: Ballot, slot: Slot, value: Value) {
        let twice = self.cfg.inject_bug == Some(InjectedBug::FastVoteTwice);
        self.promised = self.promised.max(ballot);
        let entry = self.log.entry_mut(slot);
        let voted_here = matches!(&entry.accepted, Some((b, _)) if *b >= ballot);
        assert!(
            twice || !voted_here,
            "an acceptor votes at most once per slot and round (slot {slot}, ballot {ballot})"
        );
        entry.accepted = Some((ballot, value.clone()));
        entry.accepted_fast = true;
        let write_id = self.persist(Write::Accept {
            ballot,
            slot,
            value: value.clone(),
            commit: 0,
            fast: true,
        });
        self.log.entry_mut(slot).accepted_write_id = write_id;
        for to in 0..self.cfg.replicas {
            self.send_after(
                write_id,
                to,
                Message::Voted {
                    ballot,
                    slot,
                    value: value.clone(),
                },
            );
        }
    }

    /// A fast-round vote from `from`: learn the slot chosen once a fast quorum voted one value;
    /// the leader recovers a slot as soon as its votes collided.
    pub(super) fn on_voted(
        &mut self,
        now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
        value: Value,
    ) {
        if self.cfg.protocol != ProtocolMode::FastPaxos
            || slot <= self.log.commit()
            || self.log.chosen(slot).is_some()
        {
            return;
        }
        let needed = if self.cfg.inject_bug == Some(InjectedBug::FastQuorumMajority) {
            self.quorum.classic()
        } else {
            self.quorum.fast()
        };
        if let Some(chosen) = self.tally.record(now, from, ballot, slot, value, needed) {
            if self.set_chosen(slot, chosen) {
                self.fast_counters.fast_learned += 1;
                if matches!(self.proposer, Proposer::Leader(_)) {
                    self.fast_counters.fast_chosen += 1;
                }
            }
            self.tally.remove(slot);
            return;
        }
        // The leader acts on a collision at once (this slot, or one below that this vote
        // shows its voter skipped).
        if matches!(self.proposer, Proposer::Leader(_)) {
            self.scan_fast_slots(now);
        }
    }

    /// The "any" message on a heartbeat of the leader of `ballot`: its fast round is open from
    /// `fast_from` on (0: closed).
    pub(super) fn on_fast_any(&mut self, from: ReplicaId, ballot: Ballot, fast_from: Slot) {
        if self.cfg.protocol != ProtocolMode::FastPaxos
            || from == self.cfg.id
            || ballot < self.ballot_floor()
        {
            return;
        }
        self.fast_open = (fast_from > 0).then_some((ballot, fast_from));
    }

    /// The leader asks for this acceptor's vote at `slot` in the fast round of `ballot`: report
    /// it, or vote a no-op if there is none (either way the leader now has it as a phase-1b
    /// for its classic round).
    pub(super) fn on_fast_fill(
        &mut self,
        _now: Nanos,
        from: ReplicaId,
        ballot: Ballot,
        slot: Slot,
    ) {
        if self.cfg.protocol != ProtocolMode::FastPaxos || self.reject_below_promise(from, ballot) {
            return;
        }
        // At or below the floor the slot is chosen and only in the snapshot: never a no-op
        // vote there; the leader, behind this floor, fetches the snapshot.
        if self.send_floor_if_truncated(from, slot) {
            return;
        }
        if let Some(value) = self.log.chosen(slot).cloned() {
            let floor = self.log.floor();
            self.send(
                from,
                Message::CatchupReply {
                    entries: vec![(slot, value)],
                    floor,
                },
            );
            return;
        }
        let held = self.log.get(slot).and_then(|e| {
            e.accepted
                .clone()
                .map(|(b, v)| (b, v, e.accepted_fast, e.accepted_write_id))
        });
        match held {
            Some((b, value, true, write_id)) if b == ballot => {
                self.send_after(
                    write_id,
                    from,
                    Message::Voted {
                        ballot,
                        slot,
                        value,
                    },
                );
            }
            // Accepted in the classic round of `ballot`: the recovery is under way.
            Some((b, _, false, _)) if b >= ballot => {}
            _ => self.cast_fast_vote(ballot, slot, Value::Noop),
        }
    }

    /// Phase 1 of a new leader: in every slot whose highest reported round is a fast round,
    /// replace the merged report by the value the selection rule picks from the promisers'
    /// votes (`fast::select`, with the real quorum size), and queue the other commands so they
    /// are proposed again in later slots.
    pub(super) fn select_fast_values(&mut self, now: Nanos, candidate: &mut super::Candidate) {
        let promisers = candidate.promises;
        let bug = self.cfg.inject_bug == Some(InjectedBug::FastRecoveryAnyValue);
        let mut requeue: Vec<Command> = Vec::new();
        for (slot, (ballot, votes)) in &candidate.fast_votes {
            let Some(top) = candidate.merged.get(slot) else {
                continue;
            };
            if top.chosen || !top.fast || top.ballot != *ballot {
                continue; // a value known chosen, or a higher round, decides the slot
            }
            let pairs: Vec<(ReplicaId, Value)> = votes
                .iter()
                .enumerate()
                .filter(|(id, _)| promisers.contains(*id as ReplicaId))
                .filter_map(|(id, v)| v.clone().map(|v| (id as ReplicaId, v)))
                .collect();
            // No promiser voted in that round: nothing was chosen in it, any value is safe.
            let value = if pairs.is_empty() {
                top.value.clone()
            } else {
                fast::select(&pairs, promisers.len(), bug).value
            };
            for v in votes.iter().flatten() {
                for c in v.commands() {
                    let kept = value
                        .commands()
                        .iter()
                        .any(|k| (k.client_id, k.seq) == (c.client_id, c.seq));
                    let listed = requeue
                        .iter()
                        .any(|k| (k.client_id, k.seq) == (c.client_id, c.seq));
                    if !kept && !listed {
                        requeue.push(c.clone());
                    }
                }
            }
            let entry = PromiseEntry {
                slot: *slot,
                ballot: *ballot,
                value,
                chosen: false,
                fast: false,
            };
            candidate.merged.insert(*slot, entry);
        }
        for command in requeue {
            if self.queue.len() >= self.cfg.proposal_queue_max {
                break; // the clients retry the rest
            }
            self.queue_bytes += command.size_bytes();
            self.queue.push_back((now, command));
        }
    }

    /// Opens or closes the leader's fast rounds by how many replicas answered lately; returns
    /// whether leadership was given up for a new ballot (closing needs phase 1, which collects
    /// every vote cast in the fast round).
    pub(super) fn switch_fast_mode(&mut self, now: Nanos) -> bool {
        let window = self.cfg.fast_timeout_ns();
        let Proposer::Leader(leader) = &self.proposer else {
            return false;
        };
        let live = leader
            .last_ack
            .iter()
            .enumerate()
            .filter(|(id, at)| *id == self.cfg.id as usize || at.is_some_and(|t| now < t + window))
            .count() as u32;
        let fast_quorum_alive = live >= self.quorum.fast();
        // Hysteresis: a leadership opens fast rounds only an election timeout after it began,
        // so a replica that keeps dropping out for a moment costs one phase 1 per election
        // timeout at most, not one per fast timeout.
        let settled = now >= leader.elected_at + self.cfg.election_timeout_min_ms * NS_PER_MS;
        match leader.fast_from {
            Some(_) if !fast_quorum_alive => {
                self.fast_counters.mode_switches += 1;
                self.start_election(now);
                true
            }
            None if fast_quorum_alive && settled && leader.recovery_next > leader.recovery_end => {
                self.open_fast_rounds(now);
                false
            }
            _ => false,
        }
    }

    /// Opens the fast round of the leader's ballot for every slot past those it used (the "any"
    /// message goes out with the heartbeat sent now), and hands its queue to the fast round.
    fn open_fast_rounds(&mut self, now: Nanos) {
        let Proposer::Leader(leader) = &mut self.proposer else {
            return;
        };
        let from = leader.next_slot;
        leader.fast_from = Some(from);
        self.fast_open = Some((leader.ballot, from));
        self.fast_counters.mode_switches += 1;
        let queued: Vec<Command> = self.queue.drain(..).map(|(_, c)| c).collect();
        self.queue_bytes = 0;
        let deadline = self.fast_propose_deadline(now);
        for command in queued {
            self.broadcast(Message::FastPropose { command, deadline });
        }
        self.send_heartbeats(now);
    }

    /// The leader's collision and timeout detection: a slot with votes from a classic quorum
    /// that cannot reach a fast quorum any more (`hopeless`), or that stayed undecided for
    /// `fast_timeout`, is recovered; a hopeless or timed-out slot without a classic quorum of
    /// votes gets a `FastFill` (again each `fast_timeout` while it lacks them).
    pub(super) fn scan_fast_slots(&mut self, now: Nanos) {
        let Proposer::Leader(leader) = &self.proposer else {
            return;
        };
        let Some(first) = leader.fast_from else {
            return;
        };
        let ballot = leader.ballot;
        let timeout = self.cfg.fast_timeout_ns();
        let n = self.cfg.replicas;
        let lo = first.max(self.log.commit() + 1);
        let hi = self.tally.max_slot().min(lo + 4 * self.fast_window());
        let mut recover = Vec::new();
        let mut fill = Vec::new();
        for slot in lo..=hi {
            if self.log.chosen(slot).is_some() || leader.in_flight.contains_key(&slot) {
                continue;
            }
            let e = self.tally.entry(slot, ballot, now);
            if e.ballot > ballot {
                continue; // a higher ballot voted: this leader is about to learn it lost
            }
            if e.ballot < ballot {
                e.ballot = ballot;
                e.votes = vec![None; n as usize];
            }
            let due = now >= e.since + timeout;
            let e = self.tally.get(slot).expect("just made");
            let hopeless = e.hopeless(slot, self.tally.voted_max(), &self.quorum);
            let e = self.tally.get_mut(slot).expect("just made");
            if e.voters() >= self.quorum.classic() && (due || hopeless) {
                recover.push((slot, !due));
            } else if (due || hopeless) && e.fill_sent_at.map_or(true, |at| now >= at + timeout) {
                e.fill_sent_at = Some(now);
                fill.push(slot);
            }
        }
        for (slot, collided) in recover {
            self.recover_slot(now, slot, collided);
        }
        for slot in fill {
            self.broadcast(Message::FastFill { ballot, slot });
        }
    }

    /// Coordinated recovery: the fast-round votes of a classic quorum serve as the phase-1b
    /// messages of the classic round of the same ballot; propose the selected value there and
    /// send the other commands back to the fast round.
    fn recover_slot(&mut self, now: Nanos, slot: Slot, collided: bool) {
        let e = self.tally.get(slot).expect("a slot with votes");
        let votes = e.pairs();
        let since = e.since;
        let bug = self.cfg.inject_bug == Some(InjectedBug::FastRecoveryAnyValue);
        // Every member of this quorum voted in the round: |Q| is the number of votes.
        let selection = fast::select(&votes, votes.len() as u32, bug);
        if collided {
            self.fast_counters.collisions += 1;
        } else {
            self.fast_counters.timeouts += 1;
        }
        if let Proposer::Leader(leader) = &mut self.proposer {
            leader.recovering.insert(slot, since);
        }
        self.propose_slot(now, slot, selection.value);
        // A losing command still voted in another undecided slot is left to that slot: it is
        // chosen there, or loses there and comes back here. (Client retries cover the rest.)
        let Proposer::Leader(leader) = &self.proposer else {
            unreachable!("only a leader recovers")
        };
        let undecided =
            |s: Slot| self.log.chosen(s).is_none() && !leader.in_flight.contains_key(&s);
        let resend: Vec<Command> = selection
            .losers
            .into_iter()
            .filter(|c| !self.tally.votes_elsewhere(slot, c, undecided))
            .collect();
        let deadline = self.fast_propose_deadline(now);
        for command in resend {
            self.broadcast(Message::FastPropose { command, deadline });
        }
    }
}
