//! The replica's log: per slot, what its acceptor accepted and whether it is known chosen.

use std::collections::BTreeMap;

use super::types::{Ballot, DurableState, Slot, Value, WriteId};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The highest-ballot value this acceptor accepted for the slot.
    pub accepted: Option<(Ballot, Value)>,
    /// The write that makes `accepted` durable (0: durable already, e.g. recovered from disk).
    pub accepted_write_id: WriteId,
    /// `accepted` is a vote in the fast round of its ballot (Fast Paxos mode), which ranks
    /// below that ballot's classic round and proves nothing about what is chosen.
    pub accepted_fast: bool,
    /// The chosen value, once learned. Never changes once set.
    pub chosen: Option<Value>,
}

/// Log entries taken out by [`Log::truncate`]: drop it, here or on another thread.
#[must_use = "the released entries are freed when this is dropped; drop it where that is cheap"]
#[derive(Default)]
pub struct Compacted(#[allow(dead_code)] BTreeMap<Slot, Entry>);

/// Slots are kept in a `BTreeMap` so iteration order (and so the simulator's trace) is
/// deterministic, and sparse slots cost nothing.
#[derive(Clone, Debug, Default)]
pub struct Log {
    entries: BTreeMap<Slot, Entry>,
    /// Every slot in 1..=commit is chosen and known here.
    commit: Slot,
    /// The log floor: every slot up to it is chosen, applied and held only in a snapshot (its
    /// entries are gone from here). `floor <= commit`.
    floor: Slot,
}

impl Log {
    pub fn from_durable(state: &DurableState) -> Self {
        let mut log = Log {
            floor: state.floor,
            commit: state.floor,
            ..Log::default()
        };
        for (slot, (ballot, value)) in state.accepted.range(state.floor + 1..) {
            let entry = log.entry_mut(*slot);
            entry.accepted = Some((*ballot, value.clone()));
            entry.accepted_fast = state.fast.contains(slot);
            // The leader of `ballot` said every slot up to its commit is chosen, and a value
            // accepted at exactly `ballot` in its classic round is its proposal (see
            // `Replica::learn_commit`); a fast-round vote may have lost.
            if !entry.accepted_fast
                && state
                    .commits
                    .get(ballot)
                    .is_some_and(|commit| slot <= commit)
            {
                entry.chosen = Some(value.clone());
            }
        }
        for (slot, value) in state.chosen.range(state.floor + 1..) {
            log.entry_mut(*slot).chosen = Some(value.clone());
        }
        log.advance_commit();
        log
    }

    pub fn commit(&self) -> Slot {
        self.commit
    }

    pub fn get(&self, slot: Slot) -> Option<&Entry> {
        self.entries.get(&slot)
    }

    pub fn floor(&self) -> Slot {
        self.floor
    }

    pub fn entry_mut(&mut self, slot: Slot) -> &mut Entry {
        assert!(slot > 0, "slot 0 is not a log position");
        assert!(
            slot > self.floor,
            "slot {slot} is at or below the log floor {}",
            self.floor
        );
        self.entries.entry(slot).or_default()
    }

    /// Raises the floor to `floor` (a snapshot at `floor` holds every slot up to it): drops
    /// the entries at or below it; the commit index is at least the floor.
    /// Returns the entries it removed, for the caller to free where it likes (tens of
    /// thousands of them take tens of milliseconds to drop).
    pub fn truncate(&mut self, floor: Slot) -> Compacted {
        if floor <= self.floor {
            return Compacted::default();
        }
        let kept = self.entries.split_off(&(floor + 1));
        let removed = std::mem::replace(&mut self.entries, kept);
        self.floor = floor;
        self.commit = self.commit.max(floor);
        self.advance_commit();
        Compacted(removed)
    }

    /// Slots held in memory (for metrics and tests).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The highest slot with anything in it (the floor if nothing is above it).
    pub fn last_slot(&self) -> Slot {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.floor)
    }

    pub fn chosen(&self, slot: Slot) -> Option<&Value> {
        self.entries.get(&slot).and_then(|e| e.chosen.as_ref())
    }

    /// Records `value` as chosen at `slot` and returns whether it was new. A slot's chosen value
    /// never changes: learning a different one is a safety violation, reported to the caller.
    pub fn set_chosen(&mut self, slot: Slot, value: Value) -> Result<bool, Value> {
        if slot <= self.floor {
            // Chosen and compacted into the snapshot: nothing to learn (or check) here.
            return Ok(false);
        }
        let entry = self.entry_mut(slot);
        match &entry.chosen {
            Some(existing) if *existing == value => Ok(false),
            Some(existing) => Err(existing.clone()),
            None => {
                entry.chosen = Some(value);
                self.advance_commit();
                Ok(true)
            }
        }
    }

    /// Moves the commit index over every contiguous chosen slot.
    pub fn advance_commit(&mut self) {
        while self.chosen(self.commit + 1).is_some() {
            self.commit += 1;
        }
    }

    /// Entries from `first` on, for a Promise.
    pub fn range_from(&self, first: Slot) -> impl Iterator<Item = (&Slot, &Entry)> {
        self.entries.range(first..)
    }

    /// Chosen values in `first..=last`, at most `limit` of them and, past the first, at most
    /// `bytes_max` by `Value::size_bytes` plus `entry_bytes` each, for a catch-up reply.
    pub fn chosen_in(
        &self,
        first: Slot,
        last: Slot,
        limit: usize,
        bytes_max: usize,
        entry_bytes: usize,
    ) -> Vec<(Slot, Value)> {
        let mut out = Vec::new();
        if first > last {
            return out;
        }
        let mut bytes = 0;
        for (slot, entry) in self.entries.range(first..=last) {
            let Some(value) = &entry.chosen else {
                continue;
            };
            let size = value.size_bytes() + entry_bytes;
            if out.len() >= limit || (!out.is_empty() && bytes + size > bytes_max) {
                break;
            }
            bytes += size;
            out.push((*slot, value.clone()));
        }
        out
    }
}
