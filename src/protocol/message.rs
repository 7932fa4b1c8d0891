//! Peer messages. The full table (sender, receiver, when, durable precondition) is in
//! `docs/internals/protocol.md`.

use super::quorum::VoteSet;
use super::types::{Ballot, Command, Nanos, ReplicaId, Slot, Value};

/// A message with its route. Messages to `from == to` are the replica talking to its own
/// acceptor; the caller delivers them back through `step` like any other.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub msg: Message,
}

/// One slot as an acceptor reports it in a Promise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PromiseEntry {
    pub slot: Slot,
    /// The ballot the value was accepted at (ignored when `chosen`).
    pub ballot: Ballot,
    pub value: Value,
    /// The acceptor knows this value is chosen; it outranks any accepted ballot.
    pub chosen: bool,
    /// The value is a vote in the fast round of `ballot` (below its classic round).
    pub fast: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Phase 1a: "promise me `ballot` for every slot from `first_slot` on".
    Prepare { ballot: Ballot, first_slot: Slot },
    /// Phase 1b, sent only once the promise is durable: every slot the acceptor holds in
    /// `first_slot..=last_slot`. `last_slot == Slot::MAX` ends the report; otherwise the
    /// report was cut at `message_bytes_max` and the candidate asks for the rest with another
    /// Prepare at the same ballot from `last_slot + 1`.
    ///
    /// `floor` is the acceptor's log floor (its snapshot slot): it reports nothing at or below
    /// it, because those slots are chosen and live only in its snapshot. A candidate whose
    /// commit index is below a reported floor installs a snapshot before it proposes.
    Promise {
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
        entries: Vec<PromiseEntry>,
        floor: Slot,
    },
    /// Phase 2a for one slot, with the leader's commit index piggybacked.
    Accept {
        ballot: Ballot,
        slot: Slot,
        value: Value,
        commit: Slot,
    },
    /// Phase 2b, sent only once the accepted value is durable. `holders`: with quorum leases,
    /// every replica this acceptor had a live read-lease obligation to when it (re)answered,
    /// having accepted the slot; the leader commits only once each of them accepted too.
    Accepted {
        ballot: Ballot,
        slot: Slot,
        holders: VoteSet,
    },
    /// "I promised a higher ballot than the one you used."
    Reject { ballot: Ballot, promised: Ballot },
    /// Leader liveness, commit index, and a read-index confirmation round.
    Heartbeat {
        ballot: Ballot,
        commit: Slot,
        read_round: u64,
        /// Quorum leases: holders that keep writes waiting for their vote; grantors stop
        /// renewing their grants (the old grants run out, then writes go on without them).
        revoke: VoteSet,
        /// Fast Paxos mode: the "any" message. Non-zero: the fast round of `ballot` is open for
        /// every slot from `fast_from` on; acceptors vote for client commands there. 0: no
        /// fast rounds at this ballot (clients go to the leader).
        fast_from: Slot,
    },
    /// "`ballot` is still the highest I promised", for liveness and read rounds. Not durable.
    /// `last_slot`: the highest slot the acceptor holds anything for (Fast Paxos mode: a read
    /// waits for it, since a slot may be chosen by fast votes the leader has not seen).
    HeartbeatAck {
        ballot: Ballot,
        read_round: u64,
        last_slot: Slot,
    },
    /// A lagging replica asks for chosen values in `first_slot..=last_slot`.
    CatchupRequest { first_slot: Slot, last_slot: Slot },
    /// Chosen values the responder knows in the requested range, and its log floor: slots
    /// at or below `floor` it can give only as a snapshot.
    CatchupReply {
        entries: Vec<(Slot, Value)>,
        floor: Slot,
    },
    /// Snapshot transfer (handled by the node, not the replica): "send me `bytes_max` bytes
    /// (0: one chunk) of your snapshot from byte `offset`"; `slot` is the snapshot being
    /// fetched (0: whichever is newest).
    SnapshotRequest {
        slot: Slot,
        offset: u64,
        bytes_max: u64,
    },
    /// One chunk of the responder's newest snapshot: `total_bytes` long, `crc` its crc32c
    /// as a whole. A chunk of another slot than the one asked for restarts the transfer.
    SnapshotChunk {
        slot: Slot,
        offset: u64,
        total_bytes: u64,
        crc: u32,
        data: bytes::Bytes,
    },
    /// Pre-vote: "would you grant me a new ballot?" `ballot` names the attempt; `commit` is
    /// the asker's commit index. Not durable; changes nothing at the receiver.
    PreVote { ballot: Ballot, commit: Slot },
    /// The answer to a PreVote.
    PreVoteReply { ballot: Ballot, granted: bool },
    /// Fast Paxos phase 2b, sent to every replica (all are learners) once the vote is durable:
    /// this acceptor voted `value` in the fast round of `ballot` at `slot`.
    Voted {
        ballot: Ballot,
        slot: Slot,
        value: Value,
    },
    /// Fast Paxos: a command to vote for in the receiver's next free slot, as if a client had
    /// sent it (the leader re-proposes the commands that lost a collision this way, and
    /// proposes its own). `deadline`: on the sender's clock, as a client's (0: none), so
    /// acceptors order it among the clients' writes (§11, "Ordering proposals").
    FastPropose { command: Command, deadline: Nanos },
    /// Fast Paxos, leader → acceptors: "report your vote in the fast round of `ballot` at
    /// `slot`, or vote a no-op there if you have none", so coordinated recovery has votes
    /// from a classic quorum.
    FastFill { ballot: Ballot, slot: Slot },
    /// Quorum leases, holder → grantor: "promise me a read lease". `lease_num` is the holder's
    /// clock when it sent this; the holder measures the lease from it. Not durable.
    LeaseRequest { lease_num: Nanos },
    /// Quorum leases, grantor → holder: the promise. The grantor counts the holder in every
    /// Accepted it sends until `grantor_hold_ms` after it received the request; `latest_accepted`
    /// is the highest slot it held (accepted or chosen) when it answered, and `promised` its
    /// promised ballot then (a holder trusts a value it holds for an unapplied slot only if
    /// it was accepted at or above every valid grant's `promised`: protocol.md §8, R3′).
    /// Not durable.
    LeaseGrant {
        lease_num: Nanos,
        latest_accepted: Slot,
        promised: Ballot,
    },
}

/// Bytes a message is assumed to take beyond its values (ballots, slots, framing).
pub(crate) const MESSAGE_OVERHEAD_BYTES: usize = 64;
/// Bytes each slot entry is assumed to take beyond its value.
pub(crate) const ENTRY_OVERHEAD_BYTES: usize = 32;

impl Message {
    /// An upper estimate of the encoded size, used to keep every message under
    /// `Config::message_bytes_max` (and so well under the transport's frame limit).
    pub fn size_bytes(&self) -> usize {
        let values = match self {
            Message::Promise { entries, .. } => entries
                .iter()
                .map(|e| e.value.size_bytes() + ENTRY_OVERHEAD_BYTES)
                .sum(),
            Message::Accept { value, .. } | Message::Voted { value, .. } => value.size_bytes(),
            Message::FastPropose { command, .. } => command.size_bytes(),
            Message::CatchupReply { entries, .. } => entries
                .iter()
                .map(|(_, v)| v.size_bytes() + ENTRY_OVERHEAD_BYTES)
                .sum(),
            Message::SnapshotChunk { data, .. } => data.len(),
            _ => 0,
        };
        MESSAGE_OVERHEAD_BYTES + values
    }

    /// A short name for traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Reject { .. } => "reject",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::CatchupRequest { .. } => "catchup_request",
            Message::CatchupReply { .. } => "catchup_reply",
            Message::SnapshotRequest { .. } => "snapshot_request",
            Message::SnapshotChunk { .. } => "snapshot_chunk",
            Message::PreVote { .. } => "pre_vote",
            Message::PreVoteReply { .. } => "pre_vote_reply",
            Message::LeaseRequest { .. } => "lease_request",
            Message::LeaseGrant { .. } => "lease_grant",
            Message::Voted { .. } => "voted",
            Message::FastPropose { .. } => "fast_propose",
            Message::FastFill { .. } => "fast_fill",
        }
    }
}
