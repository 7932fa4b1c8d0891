//! Plain data shared by the protocol: ballots, slots, commands, values and durable writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

/// Monotonic time in nanoseconds, always passed in by the caller.
pub type Nanos = u64;
/// A log position. Slots start at 1; 0 means "none".
pub type Slot = u64;
/// Replica ids are dense: 0..n.
pub type ReplicaId = u32;
/// Numbers the writes a replica asks its caller to persist; completions arrive in order.
pub type WriteId = u64;

/// A ballot: (round, replica), ordered lexicographically so ballots of different replicas never tie.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    pub round: u64,
    pub replica: ReplicaId,
}

impl Ballot {
    pub const ZERO: Ballot = Ballot {
        round: 0,
        replica: 0,
    };

    pub fn new(round: u64, replica: ReplicaId) -> Self {
        Ballot { round, replica }
    }
}

impl std::fmt::Display for Ballot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.round, self.replica)
    }
}

/// One client command. The payload is opaque to the protocol (the kv layer encodes it);
/// (client_id, seq) identify it for exactly-once application.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Command {
    pub client_id: u64,
    pub seq: u64,
    pub payload: Bytes,
}

impl Command {
    /// Bytes counted against `batch_max_bytes`: payload plus the fixed header.
    pub fn size_bytes(&self) -> usize {
        self.payload.len() + 16
    }
}

/// What a slot holds: a batch of commands, or a no-op that fills a gap left by a dead leader.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    Noop,
    Batch(Arc<[Command]>),
}

impl Value {
    /// An upper estimate of the value's encoded size: payloads plus a fixed cost per
    /// command and per value (the wire form adds less; see `Message::size_bytes`).
    pub fn size_bytes(&self) -> usize {
        16 + self
            .commands()
            .iter()
            .map(|c| c.payload.len() + 32)
            .sum::<usize>()
    }

    pub fn commands(&self) -> &[Command] {
        match self {
            Value::Noop => &[],
            Value::Batch(commands) => commands,
        }
    }
}

/// A state change the caller must make durable before the replica may report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// The acceptor promised not to accept ballots below `ballot`.
    Promise { ballot: Ballot },
    /// The acceptor accepted `value` for `slot` at `ballot` (this implies a promise of `ballot`).
    /// `commit` is the commit index the leader of `ballot` sent with it: every slot up to it
    /// whose durable accepted value is at exactly `ballot` in its classic round is chosen (the
    /// rule of `learn_commit`), which lets a restart rebuild the commit point.
    ///
    /// `fast`: a vote in the fast round of `ballot` (Fast Paxos mode, `fast.rs`), which ranks
    /// below the classic round of the same ballot; such a vote says nothing about what is
    /// chosen (`commit` is 0).
    Accept {
        ballot: Ballot,
        slot: Slot,
        value: Value,
        commit: Slot,
        fast: bool,
    },
    /// Values learned as chosen (through catch-up); a chosen value never changes.
    Chosen { entries: Vec<(Slot, Value)> },
}

/// Everything a replica keeps across a crash. Rebuilt by replaying persisted writes in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    pub promised: Ballot,
    pub accepted: BTreeMap<Slot, (Ballot, Value)>,
    pub chosen: BTreeMap<Slot, Value>,
    /// Per ballot, the highest commit index its leader sent with an Accept written here.
    pub commits: BTreeMap<Ballot, Slot>,
    /// Slots whose `accepted` value is a fast-round vote (Fast Paxos mode).
    pub fast: BTreeSet<Slot>,
    /// The slot of the snapshot the replica starts from (0: none): every slot up to it is
    /// chosen and applied in the state machine, and entries at or below it are ignored.
    pub floor: Slot,
}

impl DurableState {
    /// Replays one durable write. Replaying the writes in the order they were made yields the
    /// state the replica had when the last of them became durable.
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::Promise { ballot } => self.promised = self.promised.max(*ballot),
            Write::Accept {
                ballot,
                slot,
                value,
                commit,
                fast,
            } => {
                self.promised = self.promised.max(*ballot);
                if *commit > 0 {
                    let known = self.commits.entry(*ballot).or_default();
                    *known = (*known).max(*commit);
                }
                let newer = match self.accepted.get(slot) {
                    Some((old, _)) => ballot >= old,
                    None => true,
                };
                if newer {
                    self.accepted.insert(*slot, (*ballot, value.clone()));
                    if *fast {
                        self.fast.insert(*slot);
                    } else {
                        self.fast.remove(slot);
                    }
                }
            }
            Write::Chosen { entries } => {
                for (slot, value) in entries {
                    self.chosen.insert(*slot, value.clone());
                }
            }
        }
    }
}
