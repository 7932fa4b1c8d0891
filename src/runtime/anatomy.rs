//! Latency anatomy, server side (`mpaxos bench --anatomy`; `docs/internals/bench.md`).
//!
//! A client marks a sampled request as traced (`ClientFrame::TracedRequest`). The replica
//! that serves it stamps each stage the request passes on its clock (CLOCK_BOOTTIME, the same
//! clock in every process of one host) and returns the stamps with the reply
//! (`ServerFrame::TracedReply`). For a write the stages of the slot that carries it are
//! stamped too, on the leader and on the followers: the leader sends a traced slot's Accept in
//! a traced peer frame, and a follower answers it with its own stamps in a traced Accepted.
//!
//! Nothing here changes what the protocol does; with no traced request in flight the tracer is
//! empty and costs a branch per Accept. The simulator never traces.

use std::collections::{BTreeMap, BTreeSet};

use crate::protocol::{Nanos, ReplicaId, Slot, WriteId};

/// Where each stamp goes in a reply's stamp array (`TracedReply.stamps`). 0 = not stamped.
pub mod stamp {
    /// The request's bytes were read (the serving replica).
    pub const RECV: usize = 0;
    /// Writes: the slot carrying the command was proposed (the batch was cut).
    pub const PROPOSED: usize = 1;
    /// Writes: the leader's WAL write holding the slot went to the disk / became durable.
    pub const LEADER_WAL_SUBMITTED: usize = 2;
    pub const LEADER_WAL_DURABLE: usize = 3;
    /// Writes: the leader wrote the slot's Accept to its peer links.
    pub const ACCEPT_SENT: usize = 4;
    /// Writes, the follower whose Accepted completed the quorum: the Accept's bytes were
    /// read, its WAL write went to the disk, became durable, and its Accepted was sent.
    pub const FOLLOWER_RECV: usize = 5;
    pub const FOLLOWER_WAL_SUBMITTED: usize = 6;
    pub const FOLLOWER_WAL_DURABLE: usize = 7;
    pub const FOLLOWER_SENT: usize = 8;
    /// Writes: that follower's Accepted was read by the leader.
    pub const ACCEPTED_RECV: usize = 9;
    /// Writes: the leader learned the slot chosen / applied the command.
    pub const CHOSEN: usize = 10;
    pub const APPLIED: usize = 11;
    /// Reads: the read's linearization point was confirmed (read index, lease) and every
    /// slot it waits for applied.
    pub const READ_READY: usize = 12;
    /// The reply frame was encoded for the client's connection.
    pub const REPLY_SENT: usize = 13;
    /// The follower that answered (its id + 1; 0: none).
    pub const FOLLOWER_ID: usize = 14;
    pub const COUNT: usize = 15;
}

/// The stamps of one traced request.
pub type Stamps = [u64; stamp::COUNT];

/// A follower's stamps for one slot, in a traced Accepted frame: received, WAL submitted,
/// WAL durable, Accepted sent.
pub const FOLLOWER_STAMPS: usize = 4;

/// Traced slots at most kept (oldest dropped first): slots whose reply never came (a leader
/// change) must not accumulate.
const SLOTS_MAX: usize = 4096;

/// A traced slot this far below the newest applied one is not waited for any more.
const STALE_SLOTS: Slot = 10_000;

#[derive(Clone, Debug, Default)]
struct SlotTrace {
    /// This replica's Accept write of the slot.
    write: Option<WriteId>,
    proposed: Nanos,
    wal_submitted: Nanos,
    wal_durable: Nanos,
    accept_sent: Nanos,
    /// Follower side: when the traced Accept arrived.
    recv: Nanos,
    /// Leader side: each follower's stamps and when its Accepted arrived.
    followers: Vec<(ReplicaId, [u64; FOLLOWER_STAMPS], Nanos)>,
    chosen: Nanos,
}

/// Per group: the traced requests and slots in flight.
#[derive(Default)]
pub struct Tracer {
    /// Reads the clock for stamps taken inside one `drive` (the simulator: none, stamps use
    /// the `now` it was given).
    clock: Option<fn() -> Nanos>,
    /// Traced writes not yet seen in a slot: (client id, seq).
    pending: BTreeSet<(u64, u64)>,
    slots: BTreeMap<Slot, SlotTrace>,
}

impl Tracer {
    pub fn new(clock: Option<fn() -> Nanos>) -> Tracer {
        Tracer {
            clock,
            ..Tracer::default()
        }
    }

    /// The clock now (or `now` without a clock).
    pub fn stamp(&self, now: Nanos) -> Nanos {
        self.clock.map_or(now, |c| c())
    }

    /// The clock now while something is traced, else `now` (no clock read).
    pub fn stamp_if_active(&self, now: Nanos) -> Nanos {
        if self.active() {
            self.stamp(now)
        } else {
            now
        }
    }

    /// Whether anything is being traced (every hook checks this first).
    pub fn active(&self) -> bool {
        !self.pending.is_empty() || !self.slots.is_empty()
    }

    pub fn add_pending(&mut self, id: (u64, u64)) {
        if self.pending.len() >= SLOTS_MAX {
            // Writes that were never placed (a lost leadership not noticed yet): drop the
            // oldest rather than grow.
            self.pending.pop_first();
        }
        self.pending.insert(id);
    }

    pub fn forget_pending(&mut self, id: (u64, u64)) {
        if !self.pending.is_empty() {
            self.pending.remove(&id);
        }
    }

    /// This node gave up on every write it was asked for (it lost leadership).
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// Whether `id` is a traced write not yet placed in a slot.
    pub fn take_pending(&mut self, id: (u64, u64)) -> bool {
        !self.pending.is_empty() && self.pending.remove(&id)
    }

    pub fn is_traced(&self, slot: Slot) -> bool {
        !self.slots.is_empty() && self.slots.contains_key(&slot)
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut SlotTrace {
        if !self.slots.contains_key(&slot) && self.slots.len() >= SLOTS_MAX {
            self.slots.pop_first();
        }
        self.slots.entry(slot).or_default()
    }

    /// Leader: a traced command was proposed in `slot`.
    pub fn proposed(&mut self, slot: Slot, at: Nanos) {
        let t = self.slot_mut(slot);
        if t.proposed == 0 {
            t.proposed = at;
        }
    }

    /// Follower: a traced Accept for `slot` arrived at `at`.
    pub fn accept_received(&mut self, slot: Slot, at: Nanos) {
        let t = self.slot_mut(slot);
        if t.recv == 0 {
            t.recv = at;
        }
    }

    /// This replica's WAL write `write` holds `slot`'s accepted value.
    pub fn wal_write(&mut self, slot: Slot, write: WriteId) {
        if let Some(t) = self.slots.get_mut(&slot) {
            if t.write.is_none() {
                t.write = Some(write);
            }
        }
    }

    /// Writes up to `up_to` are durable at `at`; `submitted`: when each completed write went
    /// to the disk.
    pub fn durable(&mut self, up_to: WriteId, submitted: &[(WriteId, Nanos)], at: Nanos) {
        for t in self.slots.values_mut() {
            let Some(w) = t.write else { continue };
            if w > up_to || t.wal_durable != 0 {
                continue;
            }
            t.wal_durable = at;
            // The disk write that completed it: the first one at or after it.
            t.wal_submitted = submitted
                .iter()
                .find(|(id, _)| *id >= w)
                .map_or(at, |(_, s)| *s);
        }
    }

    /// Leader: the slot's Accept left for the peers at `at`.
    pub fn accept_sent(&mut self, slot: Slot, at: Nanos) {
        if let Some(t) = self.slots.get_mut(&slot) {
            if t.accept_sent == 0 {
                t.accept_sent = at;
            }
        }
    }

    /// Follower: its Accepted for `slot` leaves now (`at`): the stamps to send with it (and
    /// the slot is done here).
    pub fn follower_stamps(&mut self, slot: Slot, at: Nanos) -> Option<[u64; FOLLOWER_STAMPS]> {
        let t = self.slots.remove(&slot)?;
        if t.recv == 0 {
            return None; // Traced here as a leader (a leader change): nothing to say.
        }
        Some([t.recv, t.wal_submitted, t.wal_durable, at])
    }

    /// Leader: follower `from`'s Accepted for `slot` arrived at `at` with its stamps.
    pub fn accepted(
        &mut self,
        from: ReplicaId,
        slot: Slot,
        stamps: [u64; FOLLOWER_STAMPS],
        at: Nanos,
    ) {
        if let Some(t) = self.slots.get_mut(&slot) {
            if t.proposed != 0 && !t.followers.iter().any(|f| f.0 == from) {
                t.followers.push((from, stamps, at));
            }
        }
    }

    /// The slot was learned chosen at `at`.
    pub fn chosen(&mut self, slot: Slot, at: Nanos) {
        if let Some(t) = self.slots.get_mut(&slot) {
            if t.chosen == 0 {
                t.chosen = at;
            }
        }
    }

    /// Fills a traced write's reply stamps from its slot's trace (the command was applied at
    /// `applied`).
    pub fn fill_write(&self, slot: Slot, stamps: &mut Stamps, applied: Nanos) {
        stamps[stamp::APPLIED] = applied;
        let Some(t) = self.slots.get(&slot) else {
            return;
        };
        stamps[stamp::PROPOSED] = t.proposed;
        stamps[stamp::LEADER_WAL_SUBMITTED] = t.wal_submitted;
        stamps[stamp::LEADER_WAL_DURABLE] = t.wal_durable;
        stamps[stamp::ACCEPT_SENT] = t.accept_sent;
        stamps[stamp::CHOSEN] = t.chosen;
        // The follower whose answer completed the quorum: the last one to arrive before the
        // slot was chosen (with N = 3, the first follower to answer).
        let decisive = t
            .followers
            .iter()
            .filter(|f| t.chosen == 0 || f.2 <= t.chosen)
            .max_by_key(|f| f.2);
        if let Some((from, f, at)) = decisive {
            stamps[stamp::FOLLOWER_RECV] = f[0];
            stamps[stamp::FOLLOWER_WAL_SUBMITTED] = f[1];
            stamps[stamp::FOLLOWER_WAL_DURABLE] = f[2];
            stamps[stamp::FOLLOWER_SENT] = f[3];
            stamps[stamp::ACCEPTED_RECV] = *at;
            stamps[stamp::FOLLOWER_ID] = u64::from(*from) + 1;
        }
    }

    /// `slot` was applied: a slot this replica proposed is done (its traced replies were
    /// made); one it traces as a follower waits for its Accepted. Traces of slots far below it
    /// (an Accept rejected, a slot applied elsewhere) are dropped, so a finished benchmark
    /// leaves the tracer empty.
    pub fn applied(&mut self, slot: Slot) {
        if self.slots.get(&slot).is_some_and(|t| t.proposed != 0) {
            self.slots.remove(&slot);
        }
        let stale = slot.saturating_sub(STALE_SLOTS);
        while self
            .slots
            .first_key_value()
            .is_some_and(|(s, _)| *s < stale)
        {
            self.slots.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_gets_the_decisive_followers_stamps() {
        let mut t = Tracer::new(None);
        t.add_pending((7, 1));
        assert!(t.active());
        assert!(t.take_pending((7, 1)));
        assert!(!t.take_pending((7, 1)));
        t.proposed(5, 100);
        t.wal_write(5, 3);
        t.accept_sent(5, 110);
        // Two followers answer (N = 5 needs both); the slot is chosen after the second.
        t.accepted(1, 5, [120, 125, 150, 155], 160);
        t.accepted(2, 5, [121, 126, 170, 175], 180);
        t.durable(3, &[(3, 105)], 140);
        t.chosen(5, 181);
        let mut s = [0; stamp::COUNT];
        t.fill_write(5, &mut s, 185);
        assert_eq!(s[stamp::PROPOSED], 100);
        assert_eq!(s[stamp::LEADER_WAL_SUBMITTED], 105);
        assert_eq!(s[stamp::LEADER_WAL_DURABLE], 140);
        assert_eq!(s[stamp::ACCEPTED_RECV], 180);
        assert_eq!(s[stamp::FOLLOWER_RECV], 121);
        assert_eq!(s[stamp::FOLLOWER_ID], 3);
        assert_eq!(s[stamp::APPLIED], 185);
        t.applied(5);
        assert!(!t.active());
    }

    #[test]
    fn a_follower_returns_its_stamps_once() {
        let mut t = Tracer::new(None);
        t.accept_received(9, 10);
        assert!(t.is_traced(9));
        t.wal_write(9, 4);
        t.durable(2, &[], 20);
        t.durable(4, &[(4, 15)], 30);
        assert_eq!(t.follower_stamps(9, 31), Some([10, 15, 30, 31]));
        assert_eq!(t.follower_stamps(9, 32), None);
        assert!(!t.active());
    }

    #[test]
    fn abandoned_slots_are_bounded() {
        let mut t = Tracer::new(None);
        for s in 0..(SLOTS_MAX as u64 + 10) {
            t.proposed(s, 1);
        }
        assert_eq!(t.slots.len(), SLOTS_MAX);
        assert!(!t.is_traced(0));
    }
}
