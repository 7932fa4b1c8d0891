//! The wire types: what peers and clients send each other, archived with rkyv.
//!
//! Owns: the message shapes and their conversion to and from the protocol's own types. The
//! protocol module stays free of serialization; these mirrors are cheap to build (payloads are
//! `Bytes`, cloned by reference count) and decoded straight from the validated archive.

use std::sync::Arc;

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use crate::protocol::{
    Ballot, Command, Envelope, Message, PromiseEntry, ReplicaId, Value, VoteSet,
};

/// First bytes of every handshake: "MPAX".
pub const MAGIC: u32 = u32::from_le_bytes(*b"MPAX");
/// Bumped on any incompatible change of these types; a peer or client with another version is
/// refused with [`ErrorCode::Version`].
pub const PROTOCOL_VERSION: u16 = 5;
/// The group a key belongs to: FNV-1a 64 of the key, modulo the group count. Clients and
/// servers must agree on this function; changing it is a protocol version bump.
pub fn group_of(key: &[u8], groups: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % groups.max(1) as u64) as u32
}

/// The replica id a client puts in its handshake.
pub const CLIENT_ID_NONE: u32 = u32::MAX;

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub magic: u32,
    pub version: u16,
    /// 0 from a client that has not learned the cluster id yet (first contact).
    pub cluster_id: u64,
    /// The sender's replica id, or [`CLIENT_ID_NONE`] for a client.
    pub replica_id: u32,
    /// The group the connection is for; must match the port's group.
    pub group: u32,
    /// From a peer: a digest of the settings the lease argument needs every replica to share
    /// (heartbeat, election timeouts, lease, drift bound, preferred leader); a peer whose
    /// digest differs is refused. 0 from a client.
    pub settings_digest: u64,
}

impl Hello {
    pub fn new(cluster_id: u64, replica_id: u32, group: u32) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id,
            replica_id,
            group,
            settings_digest: 0,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The frame could not be decoded (bad checksum, bad archive, unexpected frame).
    Malformed,
    /// The length prefix is over the limit.
    Oversized,
    BadMagic,
    Version,
    WrongCluster,
    WrongGroup,
    /// A peer handshake from a replica id that is not in the cluster (or is ourselves).
    UnknownReplica,
    /// The server is at its connection or request limit.
    Busy,
}

/// Sent before the server closes a connection it refuses.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WBallot {
    pub round: u64,
    pub replica: u32,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WCommand {
    pub client_id: u64,
    pub seq: u64,
    pub payload: Bytes,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WValue {
    Noop,
    Batch(Vec<WCommand>),
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WPromiseEntry {
    pub slot: u64,
    pub ballot: WBallot,
    pub value: WValue,
    pub chosen: bool,
    pub fast: bool,
}

/// A protocol message on the wire (mirrors [`crate::protocol::Message`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WMessage {
    Prepare {
        ballot: WBallot,
        first_slot: u64,
    },
    Promise {
        ballot: WBallot,
        first_slot: u64,
        last_slot: u64,
        entries: Vec<WPromiseEntry>,
        floor: u64,
    },
    Accept {
        ballot: WBallot,
        slot: u64,
        value: WValue,
        commit: u64,
    },
    Accepted {
        ballot: WBallot,
        slot: u64,
        holders: u64,
    },
    Reject {
        ballot: WBallot,
        promised: WBallot,
    },
    Heartbeat {
        ballot: WBallot,
        commit: u64,
        read_round: u64,
        revoke: u64,
        fast_from: u64,
    },
    HeartbeatAck {
        ballot: WBallot,
        read_round: u64,
        last_slot: u64,
    },
    CatchupRequest {
        first_slot: u64,
        last_slot: u64,
    },
    CatchupReply {
        entries: Vec<(u64, WValue)>,
        floor: u64,
    },
    SnapshotRequest {
        slot: u64,
        offset: u64,
        bytes_max: u64,
    },
    SnapshotChunk {
        slot: u64,
        offset: u64,
        total_bytes: u64,
        crc: u32,
        data: Bytes,
    },
    PreVote {
        ballot: WBallot,
        commit: u64,
    },
    PreVoteReply {
        ballot: WBallot,
        granted: bool,
    },
    LeaseRequest {
        lease_num: u64,
    },
    LeaseGrant {
        lease_num: u64,
        latest_accepted: u64,
        promised: WBallot,
    },
    Voted {
        ballot: WBallot,
        slot: u64,
        value: WValue,
    },
    FastPropose {
        command: WCommand,
        deadline: u64,
    },
    FastFill {
        ballot: WBallot,
        slot: u64,
    },
}

/// Everything that travels on a peer connection (dialer → listener only).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    Hello(Hello),
    Msg(WMessage),
    Error(WireError),
    /// A message of a slot a sampled client request is traced through (`mpaxos bench
    /// --anatomy`, `runtime::anatomy`): an Accept (no stamps), or a follower's Accepted with
    /// its stamps (received, WAL submitted, WAL durable, sent).
    Traced {
        msg: WMessage,
        stamps: Vec<u64>,
    },
}

/// One client operation. `client_id` + `seq` make writes exactly-once across retries.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get {
        key: Bytes,
        linearizable: bool,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    Cas {
        key: Bytes,
        expected_version: u64,
        value: Bytes,
    },
    /// Quorum leases: set group `group`'s lease configuration (bit i: replica i holds a
    /// lease; `u64::MAX`: every replica) through its log (`mpaxos lease-holders set`).
    SetLeaseHolders {
        group: u32,
        holders: u64,
    },
}

impl Op {
    /// The group the operation belongs to.
    pub fn group(&self, groups: u32) -> u32 {
        match self {
            Op::Get { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. } => group_of(key, groups),
            Op::SetLeaseHolders { group, .. } => *group,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    pub client_id: u64,
    pub seq: u64,
    pub op: Op,
    /// Fast Paxos writes: when the client expects this request at its `Qf`-th nearest replica,
    /// in ns on CLOCK_BOOTTIME (the servers' clock; on one host all processes share it). An
    /// acceptor holds the write until then and votes held writes in deadline order
    /// (docs/internals/protocol.md §11, "Ordering proposals"). 0: none (vote at arrival).
    pub fast_deadline_ns: u64,
}

/// Client → server.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Hello(Hello),
    Request(Request),
    Status {
        id: u64,
    },
    Topology {
        id: u64,
    },
    /// `mpaxos snapshot save`: the part of this group's export snapshot from byte `offset`.
    /// `slot = 0` starts a new export (the leader snapshots its state machine now); later
    /// parts name the export's slot.
    Snapshot {
        id: u64,
        slot: u64,
        offset: u64,
    },
    /// A request whose path the server stamps (`mpaxos bench --anatomy`): answered with a
    /// [`ServerFrame::TracedReply`].
    TracedRequest(Request),
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Put {
        revision: u64,
        version: u64,
    },
    Delete {
        revision: u64,
        existed: bool,
    },
    Cas {
        ok: bool,
        revision: u64,
        version: u64,
    },
    Get {
        value: Option<Bytes>,
        version: u64,
        mod_revision: u64,
    },
    /// Not the leader of this group: go to `leader` (none known yet: retry shortly).
    NotLeader {
        leader: Option<u32>,
    },
    /// The key belongs to another group.
    WrongGroup {
        group: u32,
    },
    /// The leader's queue is full; back off and retry.
    Busy,
    /// The request is invalid (too large a key or value, an older sequence number, ...).
    Invalid {
        reason: String,
    },
    /// The lease configuration was set (`Op::SetLeaseHolders`), from the applied slot on.
    LeaseHolders {
        holders: u64,
    },
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    pub id: u32,
    pub host: String,
    pub client_port_base: u16,
    pub region: String,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub cluster_id: u64,
    pub groups: u32,
    pub replicas: Vec<ReplicaInfo>,
    /// Per group, the leader this replica believes in.
    pub leaders: Vec<Option<u32>>,
    /// The cluster runs Fast Paxos (`protocol = "fast-paxos"`): clients send each write to
    /// every replica (`SessionConfig::fast_write_via`).
    pub fast_paxos: bool,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub replica: u32,
    pub group: u32,
    pub role: String,
    pub leader: Option<u32>,
    pub ballot: WBallot,
    pub commit: u64,
    pub applied: u64,
    pub proposals_pending: u64,
    pub wal_backend: String,
    /// Quorum leases: the lease configuration in effect at this replica (bit i: replica i);
    /// 0 in the other read modes.
    pub lease_holders: u64,
}

/// Server → client.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ServerFrame {
    /// The handshake was accepted.
    Welcome(Topology),
    Reply {
        id: u64,
        outcome: Outcome,
    },
    Status {
        id: u64,
        status: GroupStatus,
    },
    Topology {
        id: u64,
        topology: Topology,
    },
    /// A part of an export snapshot (`refused`: why there is none, e.g. not the leader).
    Snapshot {
        id: u64,
        refused: Option<String>,
        slot: u64,
        offset: u64,
        total_bytes: u64,
        crc: u32,
        data: Bytes,
    },
    Error(WireError),
    /// The reply to a [`ClientFrame::TracedRequest`]: `stamps` on the server's clock, indexed
    /// as `runtime::anatomy::stamp` says (0: not stamped).
    TracedReply {
        id: u64,
        outcome: Outcome,
        stamps: Vec<u64>,
    },
}

// ---- conversions between protocol types and their wire mirrors ----

impl From<Ballot> for WBallot {
    fn from(b: Ballot) -> Self {
        WBallot {
            round: b.round,
            replica: b.replica,
        }
    }
}

impl From<&ArchivedWBallot> for Ballot {
    fn from(b: &ArchivedWBallot) -> Self {
        Ballot::new(b.round.to_native(), b.replica.to_native())
    }
}

impl From<WBallot> for Ballot {
    fn from(b: WBallot) -> Self {
        Ballot::new(b.round, b.replica)
    }
}

pub fn value_to_wire(v: &Value) -> WValue {
    match v {
        Value::Noop => WValue::Noop,
        Value::Batch(cmds) => WValue::Batch(
            cmds.iter()
                .map(|c| WCommand {
                    client_id: c.client_id,
                    seq: c.seq,
                    payload: c.payload.clone(),
                })
                .collect(),
        ),
    }
}

pub fn value_from_archived(v: &ArchivedWValue) -> Value {
    match v {
        ArchivedWValue::Noop => Value::Noop,
        ArchivedWValue::Batch(cmds) => {
            let cmds: Arc<[Command]> = cmds
                .iter()
                .map(|c| Command {
                    client_id: c.client_id.to_native(),
                    seq: c.seq.to_native(),
                    payload: Bytes::copy_from_slice(c.payload.as_slice()),
                })
                .collect();
            Value::Batch(cmds)
        }
    }
}

pub fn message_to_wire(m: &Message) -> WMessage {
    match m {
        Message::Prepare { ballot, first_slot } => WMessage::Prepare {
            ballot: (*ballot).into(),
            first_slot: *first_slot,
        },
        Message::Promise {
            ballot,
            first_slot,
            last_slot,
            entries,
            floor,
        } => WMessage::Promise {
            ballot: (*ballot).into(),
            first_slot: *first_slot,
            last_slot: *last_slot,
            floor: *floor,
            entries: entries
                .iter()
                .map(|e| WPromiseEntry {
                    slot: e.slot,
                    ballot: e.ballot.into(),
                    value: value_to_wire(&e.value),
                    chosen: e.chosen,
                    fast: e.fast,
                })
                .collect(),
        },
        Message::Accept {
            ballot,
            slot,
            value,
            commit,
        } => WMessage::Accept {
            ballot: (*ballot).into(),
            slot: *slot,
            value: value_to_wire(value),
            commit: *commit,
        },
        Message::Accepted {
            ballot,
            slot,
            holders,
        } => WMessage::Accepted {
            ballot: (*ballot).into(),
            slot: *slot,
            holders: holders.bits(),
        },
        Message::Reject { ballot, promised } => WMessage::Reject {
            ballot: (*ballot).into(),
            promised: (*promised).into(),
        },
        Message::Heartbeat {
            ballot,
            commit,
            read_round,
            revoke,
            fast_from,
        } => WMessage::Heartbeat {
            ballot: (*ballot).into(),
            commit: *commit,
            read_round: *read_round,
            revoke: revoke.bits(),
            fast_from: *fast_from,
        },
        Message::HeartbeatAck {
            ballot,
            read_round,
            last_slot,
        } => WMessage::HeartbeatAck {
            ballot: (*ballot).into(),
            read_round: *read_round,
            last_slot: *last_slot,
        },
        Message::CatchupRequest {
            first_slot,
            last_slot,
        } => WMessage::CatchupRequest {
            first_slot: *first_slot,
            last_slot: *last_slot,
        },
        Message::CatchupReply { entries, floor } => WMessage::CatchupReply {
            entries: entries
                .iter()
                .map(|(s, v)| (*s, value_to_wire(v)))
                .collect(),
            floor: *floor,
        },
        Message::SnapshotRequest {
            slot,
            offset,
            bytes_max,
        } => WMessage::SnapshotRequest {
            slot: *slot,
            offset: *offset,
            bytes_max: *bytes_max,
        },
        Message::SnapshotChunk {
            slot,
            offset,
            total_bytes,
            crc,
            data,
        } => WMessage::SnapshotChunk {
            slot: *slot,
            offset: *offset,
            total_bytes: *total_bytes,
            crc: *crc,
            data: data.clone(),
        },
        Message::PreVote { ballot, commit } => WMessage::PreVote {
            ballot: (*ballot).into(),
            commit: *commit,
        },
        Message::PreVoteReply { ballot, granted } => WMessage::PreVoteReply {
            ballot: (*ballot).into(),
            granted: *granted,
        },
        Message::LeaseRequest { lease_num } => WMessage::LeaseRequest {
            lease_num: *lease_num,
        },
        Message::LeaseGrant {
            lease_num,
            latest_accepted,
            promised,
        } => WMessage::LeaseGrant {
            lease_num: *lease_num,
            latest_accepted: *latest_accepted,
            promised: (*promised).into(),
        },
        Message::Voted {
            ballot,
            slot,
            value,
        } => WMessage::Voted {
            ballot: (*ballot).into(),
            slot: *slot,
            value: value_to_wire(value),
        },
        Message::FastPropose { command, deadline } => WMessage::FastPropose {
            command: WCommand {
                client_id: command.client_id,
                seq: command.seq,
                payload: command.payload.clone(),
            },
            deadline: *deadline,
        },
        Message::FastFill { ballot, slot } => WMessage::FastFill {
            ballot: (*ballot).into(),
            slot: *slot,
        },
    }
}

pub fn message_from_archived(m: &ArchivedWMessage) -> Message {
    match m {
        ArchivedWMessage::Prepare { ballot, first_slot } => Message::Prepare {
            ballot: ballot.into(),
            first_slot: first_slot.to_native(),
        },
        ArchivedWMessage::Promise {
            ballot,
            first_slot,
            last_slot,
            entries,
            floor,
        } => Message::Promise {
            ballot: ballot.into(),
            first_slot: first_slot.to_native(),
            last_slot: last_slot.to_native(),
            floor: floor.to_native(),
            entries: entries
                .iter()
                .map(|e| PromiseEntry {
                    slot: e.slot.to_native(),
                    ballot: (&e.ballot).into(),
                    value: value_from_archived(&e.value),
                    chosen: e.chosen,
                    fast: e.fast,
                })
                .collect(),
        },
        ArchivedWMessage::Accept {
            ballot,
            slot,
            value,
            commit,
        } => Message::Accept {
            ballot: ballot.into(),
            slot: slot.to_native(),
            value: value_from_archived(value),
            commit: commit.to_native(),
        },
        ArchivedWMessage::Accepted {
            ballot,
            slot,
            holders,
        } => Message::Accepted {
            ballot: ballot.into(),
            slot: slot.to_native(),
            holders: VoteSet::from_bits(holders.to_native()),
        },
        ArchivedWMessage::Reject { ballot, promised } => Message::Reject {
            ballot: ballot.into(),
            promised: promised.into(),
        },
        ArchivedWMessage::Heartbeat {
            ballot,
            commit,
            read_round,
            revoke,
            fast_from,
        } => Message::Heartbeat {
            ballot: ballot.into(),
            commit: commit.to_native(),
            read_round: read_round.to_native(),
            revoke: VoteSet::from_bits(revoke.to_native()),
            fast_from: fast_from.to_native(),
        },
        ArchivedWMessage::HeartbeatAck {
            ballot,
            read_round,
            last_slot,
        } => Message::HeartbeatAck {
            ballot: ballot.into(),
            read_round: read_round.to_native(),
            last_slot: last_slot.to_native(),
        },
        ArchivedWMessage::CatchupRequest {
            first_slot,
            last_slot,
        } => Message::CatchupRequest {
            first_slot: first_slot.to_native(),
            last_slot: last_slot.to_native(),
        },
        ArchivedWMessage::CatchupReply { entries, floor } => Message::CatchupReply {
            entries: entries
                .iter()
                .map(|e| (e.0.to_native(), value_from_archived(&e.1)))
                .collect(),
            floor: floor.to_native(),
        },
        ArchivedWMessage::SnapshotRequest {
            slot,
            offset,
            bytes_max,
        } => Message::SnapshotRequest {
            slot: slot.to_native(),
            offset: offset.to_native(),
            bytes_max: bytes_max.to_native(),
        },
        ArchivedWMessage::SnapshotChunk {
            slot,
            offset,
            total_bytes,
            crc,
            data,
        } => Message::SnapshotChunk {
            slot: slot.to_native(),
            offset: offset.to_native(),
            total_bytes: total_bytes.to_native(),
            crc: crc.to_native(),
            data: Bytes::copy_from_slice(data.as_slice()),
        },
        ArchivedWMessage::PreVote { ballot, commit } => Message::PreVote {
            ballot: ballot.into(),
            commit: commit.to_native(),
        },
        ArchivedWMessage::PreVoteReply { ballot, granted } => Message::PreVoteReply {
            ballot: ballot.into(),
            granted: *granted,
        },
        ArchivedWMessage::LeaseRequest { lease_num } => Message::LeaseRequest {
            lease_num: lease_num.to_native(),
        },
        ArchivedWMessage::LeaseGrant {
            lease_num,
            latest_accepted,
            promised,
        } => Message::LeaseGrant {
            lease_num: lease_num.to_native(),
            latest_accepted: latest_accepted.to_native(),
            promised: promised.into(),
        },
        ArchivedWMessage::Voted {
            ballot,
            slot,
            value,
        } => Message::Voted {
            ballot: ballot.into(),
            slot: slot.to_native(),
            value: value_from_archived(value),
        },
        ArchivedWMessage::FastPropose { command, deadline } => Message::FastPropose {
            command: Command {
                client_id: command.client_id.to_native(),
                seq: command.seq.to_native(),
                payload: Bytes::copy_from_slice(command.payload.as_slice()),
            },
            deadline: deadline.to_native(),
        },
        ArchivedWMessage::FastFill { ballot, slot } => Message::FastFill {
            ballot: ballot.into(),
            slot: slot.to_native(),
        },
    }
}

/// Builds the envelope a received peer message becomes.
pub fn envelope_from_archived(from: ReplicaId, to: ReplicaId, m: &ArchivedWMessage) -> Envelope {
    Envelope {
        from,
        to,
        msg: message_from_archived(m),
    }
}

/// Converts a wire outcome into the kv reply shape, for clients that want the kv types.
pub fn outcome_from_reply(reply: crate::kv::Reply) -> Outcome {
    use crate::kv::Reply;
    match reply {
        Reply::Put { revision, version } => Outcome::Put { revision, version },
        Reply::Delete { revision, existed } => Outcome::Delete { revision, existed },
        Reply::Cas {
            ok,
            revision,
            version,
        } => Outcome::Cas {
            ok,
            revision,
            version,
        },
        Reply::Get {
            value,
            version,
            mod_revision,
        } => Outcome::Get {
            value,
            version,
            mod_revision,
        },
        Reply::Invalid { reason } => Outcome::Invalid { reason },
        Reply::SessionExpired => Outcome::Invalid {
            reason: "this client's session expired (idle longer than the cluster's session idle time); whether an earlier try of this write was applied is unknown; start a new client".into(),
        },
        Reply::System => Outcome::Invalid {
            reason: "client id 0 is reserved for the cluster".into(),
        },
        Reply::LeaseHolders { holders } => Outcome::LeaseHolders { holders },
        Reply::Stale { last_seq } => Outcome::Invalid {
            reason: format!("sequence number is older than this client's last ({last_seq})"),
        },
    }
}
