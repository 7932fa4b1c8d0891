//! The sans-IO Multi-Paxos core (architecture §3–4).
//!
//! A [`Replica`] is one group's proposer + acceptor + learner as a deterministic state machine.
//! It reads no clock, opens no socket or file and starts no thread: time is an argument, and
//! everything it wants done comes out of [`Replica::ready`]. The caller's loop, in full:
//!
//! 1. feed inputs: [`Replica::step`] (a peer message), [`Replica::propose`],
//!    [`Replica::read_index`], [`Replica::tick`] (when [`Replica::poll_timeout`] is due),
//!    [`Replica::persisted`] (a write became durable; writes complete in order);
//! 2. call [`Replica::ready`] and, in this order: start the `writes` (numbered, in order),
//!    send the `messages` (including ones addressed to itself: deliver those back through
//!    `step`), apply `committed` in slot order, then serve the `reads` against the state just
//!    applied and answer `dropped` proposals with a redirect;
//! 3. sleep until `poll_timeout()` or the next input.
//!
//! Messages that may only leave after a write is durable (Promise, Accepted) are held inside
//! the replica and released by `persisted`, so a caller cannot send them early by mistake.

pub mod fast;
pub mod lease;
mod log;
mod message;
pub mod quorum;
mod replica;
#[cfg(test)]
mod tests;
mod types;

pub use fast::{FastCounters, FastOrder, ProtocolMode};
pub use lease::{Grant, LeasePending, ReadMode};
pub use log::{Compacted, Entry, Log};
pub use message::{Envelope, Message, PromiseEntry};
pub use quorum::{QuorumSpec, VoteSet};
pub use replica::{
    Config, DroppedProposal, InjectedBug, LeaseReadCounters, NotLeader, ReadOutcome, ReadResult,
    Ready, Replica, Role, Status, StepDown,
};
pub use types::{Ballot, Command, DurableState, Nanos, ReplicaId, Slot, Value, Write, WriteId};
