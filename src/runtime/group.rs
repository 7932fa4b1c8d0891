//! One Paxos group's thread: the mio shell around the group's sans-IO [`Node`].
//!
//! The shell owns sockets, the clock, the WAL's eventfd and peer links; everything else
//! (protocol, kv, the storage mapping, waiting clients, status) is the node, which the
//! simulator runs too. The loop, once per turn (see `docs/internals/runtime.md`):
//! 1. wait for socket, disk or waker events, or the next timer;
//! 2. read every readable socket; decode each frame; handshakes, topology and status frames
//!    are answered here, peer messages go to `Node::on_peer` and client requests to
//!    `Node::on_request`, each with the clock read after its bytes were read;
//! 3. `Node::on_disk`, `Node::tick`, `Node::drive`; send what `Node::take_output` gives;
//! 4. flush every connection that has output: one write per connection per turn.
//!
//! Everything here belongs to this thread; the only shared state is a few atomics (leaders
//! per group for topology replies, health) and metrics.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::anatomy;
use super::conn::{Conn, ReadStatus};
use super::metrics::{GroupMetrics, LocalHistogram};
use super::node::{ConnId, Node, NodeConfig, Output, Restored, SnapshotPolicy};
use super::storage::Storage;
use super::{Shared, NO_LEADER};
use crate::net::frame::{access, FrameError, FRAME_PAYLOAD_MAX_BYTES};
use crate::net::timerfd::{TimerClock, TimerFd};
use crate::net::wire::{
    self, ArchivedClientFrame, ArchivedPeerFrame, ClientFrame, ErrorCode, GroupStatus, Hello,
    PeerFrame, ReplicaInfo, ServerFrame, Topology, WireError, CLIENT_ID_NONE,
};
use crate::net::FrameEncoder;
use crate::protocol::{self, Envelope, Message, Nanos, ReplicaId};
use crate::server::config::Limits;
use crate::wal::{Wal, WalConfig};

const CLIENT_LISTENER: Token = Token(0);
const PEER_LISTENER: Token = Token(1);
const WAL_EVENTS: Token = Token(2);
const WAKER: Token = Token(3);
const TIMER: Token = Token(4);
const PEER_OUT_BASE: usize = 16;
const CONN_BASE: usize = 1024;

/// Unsent bytes a peer link may hold; past it messages to that peer are dropped (the protocol
/// retransmits what matters) instead of growing without bound behind a dead peer.
const PEER_OUT_MAX_BYTES: usize = 64 << 20;
/// Largest frame accepted on a peer connection (a Promise may carry many slots).
const PEER_FRAME_MAX_BYTES: usize = 64 << 20;
/// Unsent bytes a client connection may hold before we stop answering it and close it.
const CLIENT_OUT_MAX_BYTES: usize = 64 << 20;
const RECONNECT_MIN_MS: u64 = 20;
const RECONNECT_MAX_MS: u64 = 1000;
const METRICS_FLUSH_NS: Nanos = 100_000_000;
/// While WAL writes are in flight the loop waits at most this long (their eventfd should wake
/// it first).
const DISK_FALLBACK_NS: Nanos = 1_000_000;
/// An interrupted wait that ends this long after a deadline it should have met was a pause.
const SHORT_PAUSE_NS: Nanos = 5_000_000;
/// A wait that ends this much later than asked for means the thread was paused.
const PAUSE_NS: Nanos = 50_000_000;
/// Client writes are refused with `Busy` while this many bytes wait for the WAL.
const WAL_BACKLOG_BYTES_MAX: usize = 64 << 20;
/// Bits of a [`ConnId`] that hold the connection's slot index; the rest is its generation.
const CONN_INDEX_BITS: u32 = 24;

/// The clock of every group thread: CLOCK_BOOTTIME, which (unlike CLOCK_MONOTONIC, what
/// `Instant` reads) keeps counting while the machine or VM is suspended. A lease measured on a
/// clock that stops would outlive the acceptors' promises, which keep counting on theirs.
/// Unix time minus [`boottime_ns`], for the leader's clock commands (sessions expire on it).
fn wall_clock_offset_ns() -> Nanos {
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    unix_ns.saturating_sub(boottime_ns())
}

pub fn boottime_ns() -> Nanos {
    let raw = crate::net::timerfd::boottime_raw_ns();
    #[cfg(feature = "fault-injection")]
    let raw = crate::fault::clock::now(raw);
    raw
}

/// The instant of the raw CLOCK_BOOTTIME (what the timerfd counts) at which [`boottime_ns`]
/// reads `at`: the same instant unless a test build's clock fault is on.
fn timer_instant(at: Nanos) -> Nanos {
    #[cfg(feature = "fault-injection")]
    let at = crate::fault::clock::to_raw(at);
    at
}

/// Whether a readiness event says the peer closed its side or the socket failed: the data and
/// the end of the stream may have arrived together, and a short read then does not mean there
/// is nothing more to read (nginx's `pending_eof`).
fn closed_hint(event: &mio::event::Event) -> bool {
    event.is_read_closed() || event.is_error()
}

/// The node's disk: the WAL, wrapped by the disk-fault injector in test builds.
#[cfg(not(feature = "fault-injection"))]
type GroupDisk = Wal;
#[cfg(feature = "fault-injection")]
type GroupDisk = crate::fault::disk::FaultDisk<Wal>;

#[cfg(not(feature = "fault-injection"))]
fn group_disk(storage: Storage<Wal>) -> Storage<GroupDisk> {
    storage
}
#[cfg(feature = "fault-injection")]
fn group_disk(storage: Storage<Wal>) -> Storage<GroupDisk> {
    storage.map_disk(crate::fault::disk::FaultDisk::new)
}

/// Everything one group thread needs, decided by the server before it starts.
pub struct GroupSpec {
    pub cluster_id: u64,
    pub replica_id: ReplicaId,
    pub group: u32,
    pub groups: u32,
    pub client_listen: SocketAddr,
    pub peer_listen: SocketAddr,
    /// Group `group`'s peer address on every replica (index = replica id).
    pub peer_addrs: Vec<SocketAddr>,
    pub replicas: Vec<ReplicaInfo>,
    pub protocol: protocol::Config,
    pub wal: WalConfig,
    pub core: Option<usize>,
    /// Polls this long for more input before sleeping (cluster.toml `spin_us`; 0: never).
    pub spin_ns: Nanos,
    pub limits: Limits,
    pub shared: Arc<Shared>,
    pub metrics: GroupMetrics,
    /// Per-peer one-way delay (WAN emulation), nanoseconds; empty = none.
    pub peer_delay_ns: Vec<Nanos>,
    /// [`crate::server::config::ClusterConfig::settings_digest`]: peers must agree on it.
    pub settings_digest: u64,
    pub snapshot: SnapshotPolicy,
}

/// A running group thread.
pub struct GroupHandle {
    pub waker: Arc<Waker>,
    pub join: std::thread::JoinHandle<()>,
}

/// Starts group `spec.group`'s thread; returns once it has recovered its WAL and bound its
/// ports, or with the one-sentence reason it could not.
pub fn spawn(spec: GroupSpec) -> Result<GroupHandle, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let name = format!("group-{}", spec.group);
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Some(core) = spec.core {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    tracing::warn!(
                        group = spec.group,
                        core,
                        "could not pin to core; running unpinned"
                    );
                }
            }
            match Group::start(spec) {
                Ok(mut group) => {
                    let _ = tx.send(Ok(group.waker.clone()));
                    group.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("cannot start a group thread: {e}"))?;
    match rx.recv() {
        Ok(Ok(waker)) => Ok(GroupHandle { waker, join }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err("a group thread died while starting".into()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A client that has not sent its handshake yet.
    ClientNew,
    Client,
    /// A peer that has not sent its handshake yet.
    PeerNew,
    Peer(ReplicaId),
}

struct Slot {
    conn: Conn,
    kind: Kind,
    gen: u64,
}

impl Slot {
    fn id(&self, idx: usize) -> ConnId {
        (self.gen << CONN_INDEX_BITS) | idx as u64
    }
}

fn conn_index(id: ConnId) -> usize {
    (id & ((1 << CONN_INDEX_BITS) - 1)) as usize
}

struct PeerLink {
    addr: SocketAddr,
    conn: Option<Conn>,
    connected: bool,
    retry_at: Nanos,
    backoff_ms: u64,
    /// WAN emulation: messages held until their delivery time (FIFO per link).
    delay_ns: Nanos,
    delayed: std::collections::VecDeque<(Nanos, Vec<u8>)>,
    /// The heartbeat whose round trip is being timed: (read round, sent at).
    heartbeat_probe: Option<(u64, Nanos)>,
}

struct Group {
    spec_id: ReplicaId,
    spin_ns: Nanos,
    group: u32,
    groups: u32,
    cluster_id: u64,
    settings_digest: u64,
    replicas: Vec<ReplicaInfo>,
    limits: Limits,
    shared: Arc<Shared>,
    /// Per peer.
    rtt_hist: Vec<LocalHistogram>,
    metrics_flush_at: Nanos,

    poll: Poll,
    waker: Arc<Waker>,
    timer: TimerFd,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    conns: Vec<Option<Slot>>,
    free: Vec<usize>,
    next_gen: u64,
    dirty: Vec<usize>,
    peers: Vec<PeerLink>,
    encoder: FrameEncoder,

    node: Node<GroupDisk>,
    output: Output,
    /// What was last published in `shared` for this group.
    published_leader: Option<ReplicaId>,
    published_failed: bool,
    /// The last peer message encoded, and its frame bytes.
    /// The last peer frame encoded: its message, whether traced, and its bytes.
    last_peer_frame: Option<(Message, bool, Vec<u8>)>,
    /// Traced slots whose Accept was queued this turn: stamped as the peer links are flushed.
    accepts_traced: Vec<protocol::Slot>,
}

impl Group {
    fn start(spec: GroupSpec) -> Result<Group, String> {
        if spec.limits.connections_max >= 1 << CONN_INDEX_BITS {
            return Err(format!(
                "limits.connections_max must be below {}",
                1u64 << CONN_INDEX_BITS
            ));
        }
        let started = std::time::Instant::now();
        let (storage, durable, mut recovered) = Storage::open(spec.wal.clone())?;
        let wal_ms = started.elapsed().as_millis();
        let wal_eventfd = storage.wal().eventfd();
        let storage = group_disk(storage);
        let restored = match recovered.snapshot.take() {
            Some(snap) => Restored::from_snapshot(snap.slot, snap.data)?,
            None => Restored::empty(),
        };
        let restore_ms = started.elapsed().as_millis() - wal_ms;
        let report = &recovered.report;
        tracing::info!(
            group = spec.group,
            backend = %report.backend.map_or("?".to_string(), |b| b.to_string()),
            reason = %report.backend_reason,
            direct_io = report.direct_io,
            fresh = report.fresh,
            promised = %durable.promised,
            accepted = durable.accepted.len(),
            chosen = durable.chosen.len(),
            snapshot_slot = restored.slot(),
            keys = restored.kv.len(),
            entries_scanned = report.entries_scanned,
            mib_scanned = report.bytes_scanned >> 20,
            wal_ms,
            restore_ms,
            "WAL recovered"
        );
        for note in &report.notes {
            tracing::warn!(group = spec.group, "{note}");
        }
        if let Some(t) = &report.torn_tail {
            tracing::warn!(
                group = spec.group,
                "dropped a torn last write (never acknowledged): {t:?}"
            );
        }
        let poll = Poll::new().map_err(|e| format!("cannot create an event loop: {e}"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER)
                .map_err(|e| format!("cannot create a waker: {e}"))?,
        );
        let bind = |addr: SocketAddr, what: &str| {
            TcpListener::bind(addr).map_err(|e| {
                format!("cannot listen for {what} on {addr}: {e}; is another process (or another replica) using that port?")
            })
        };
        let mut client_listener = bind(spec.client_listen, "clients")?;
        let mut peer_listener = bind(spec.peer_listen, "peers")?;
        let reg = poll.registry();
        reg.register(&mut client_listener, CLIENT_LISTENER, Interest::READABLE)
            .and_then(|_| reg.register(&mut peer_listener, PEER_LISTENER, Interest::READABLE))
            .and_then(|_| reg.register(&mut SourceFd(&wal_eventfd), WAL_EVENTS, Interest::READABLE))
            .map_err(|e| format!("cannot register with the event loop: {e}"))?;
        let timer = TimerFd::new(TimerClock::Boottime)
            .map_err(|e| format!("cannot create a timerfd: {e}"))?;
        reg.register(&mut SourceFd(&timer.fd()), TIMER, Interest::READABLE)
            .map_err(|e| format!("cannot register with the event loop: {e}"))?;
        let peers = spec
            .peer_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| PeerLink {
                addr: *addr,
                conn: None,
                connected: false,
                retry_at: 0,
                backoff_ms: RECONNECT_MIN_MS,
                delay_ns: spec.peer_delay_ns.get(i).copied().unwrap_or(0),
                delayed: Default::default(),
                heartbeat_probe: None,
            })
            .collect();
        let metrics = spec.metrics.clone();
        let node_cfg = NodeConfig {
            replica_id: spec.replica_id,
            group: spec.group,
            groups: spec.groups,
            protocol: spec.protocol.clone(),
            limits: spec.limits.clone(),
            backlog_bytes_max: WAL_BACKLOG_BYTES_MAX,
            observe: false,
            inject_ack_before_durable: false,
            snapshot: spec.snapshot.clone(),
            wall_clock_offset_ns: wall_clock_offset_ns(),
            send_before_disk: true,
        };
        // The replica's timers start now, after recovery and binding: a long recovery must not
        // count against the election timeout.
        let mut node = Node::new(
            node_cfg,
            storage,
            &durable,
            restored,
            boottime_ns(),
            metrics.clone(),
        );
        *node.tracer() = anatomy::Tracer::new(Some(boottime_ns));
        Ok(Group {
            spec_id: spec.replica_id,
            spin_ns: spec.spin_ns,
            group: spec.group,
            groups: spec.groups,
            cluster_id: spec.cluster_id,
            settings_digest: spec.settings_digest,
            replicas: spec.replicas,
            limits: spec.limits,
            shared: spec.shared,
            rtt_hist: metrics
                .peer_round_trip_time_seconds
                .iter()
                .map(|h| LocalHistogram::new(h.clone()))
                .collect(),
            metrics_flush_at: 0,
            poll,
            waker,
            timer,
            client_listener,
            peer_listener,
            conns: Vec::new(),
            free: Vec::new(),
            next_gen: 1,
            dirty: Vec::new(),
            peers,
            encoder: FrameEncoder::with_limit(PEER_FRAME_MAX_BYTES),
            node,
            output: Output::default(),
            published_leader: None,
            published_failed: false,
            last_peer_frame: None,
            accepts_traced: Vec::new(),
        })
    }

    fn now(&self) -> Nanos {
        boottime_ns()
    }

    fn run(&mut self) {
        self.shared.ready[self.group as usize].store(true, Ordering::Release);
        self.shared.healthy[self.group as usize].store(true, Ordering::Release);
        let mut events = Events::with_capacity(1024);
        // Set after a pause: the next turn polls once more before running timers.
        let mut recheck = false;
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let before = self.now();
            let due = self.next_deadline(before);
            // epoll rounds its timeout up to whole milliseconds; the timerfd wakes us at the
            // deadline itself (sub-millisecond batching delays and WAN emulation queues). It is
            // armed only when the deadline changes: not for a recheck, nor for the disk's
            // fallback poll below, which would re-arm it on every write.
            self.timer.arm_at(timer_instant(due));
            let mut timeout = if recheck {
                0
            } else {
                due.saturating_sub(before)
            };
            if self.node.disk_busy() {
                // Completions of a backend without a usable eventfd edge are still picked up
                // (epoll's millisecond timeout is fine for that).
                timeout = timeout.min(DISK_FALLBACK_NS);
            }
            let interrupted = match self.wait(&mut events, before, timeout) {
                Ok(()) => false,
                // io_uring interrupts the wait to run its completion work (one per WAL write):
                // no events were returned, and the turn below collects the completion. A
                // SIGCONT also ends here; the clock tells them apart (below).
                Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                Err(e) => {
                    tracing::error!(group = self.group, "event loop failed: {e}");
                    break;
                }
            };
            let woke = self.now();
            for event in events.iter() {
                match event.token() {
                    CLIENT_LISTENER => self.accept(false),
                    PEER_LISTENER => self.accept(true),
                    WAL_EVENTS | WAKER => {}
                    TIMER => self.timer.clear(),
                    Token(t) if (PEER_OUT_BASE..CONN_BASE).contains(&t) => {
                        self.on_peer_link_event(t - PEER_OUT_BASE, woke, closed_hint(event))
                    }
                    Token(t) => self.on_conn_readable(t - CONN_BASE, closed_hint(event)),
                }
            }
            // The thread was paused (SIGSTOP/SIGCONT, a VM or scheduler stall): the wait ended
            // late, and what it returned may predate the pause. Input that
            // arrived meanwhile (the leader's heartbeats) must be read before the timers that
            // expired meanwhile run, or a follower deposes a healthy leader: poll again, without
            // waiting, before this turn's timers. Once, so that a loaded host that always wakes
            // late still makes progress.
            // An interrupted wait that ran well past a deadline is a pause too (a short stop):
            // its timers must not run before the input that arrived meanwhile is read. A busy
            // loop's deadlines are often just behind it when an io_uring completion interrupts
            // the wait; those do not pay for a recheck.
            let paused = woke.saturating_sub(before) > timeout + PAUSE_NS
                || (interrupted && woke > due + SHORT_PAUSE_NS);
            if paused && !recheck {
                recheck = true;
                continue;
            }
            recheck = false;
            self.turn();
        }
        self.node.shutdown();
        self.shared.ready[self.group as usize].store(false, Ordering::Release);
    }

    /// Waits up to `timeout` ns from `before` for events: first polling without sleeping for up
    /// to `spin_ns` (so input arriving within it costs no wake-up), then sleeping in epoll.
    fn wait(&mut self, events: &mut Events, before: Nanos, timeout: Nanos) -> io::Result<()> {
        if self.spin_ns > 0 && timeout > 0 {
            let until = before + self.spin_ns.min(timeout);
            loop {
                self.poll.poll(events, Some(Duration::ZERO))?;
                if !events.is_empty() {
                    return Ok(());
                }
                if self.now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        let left = timeout.saturating_sub(self.now().saturating_sub(before));
        self.poll.poll(events, Some(Duration::from_nanos(left)))
    }

    fn next_deadline(&self, now: Nanos) -> Nanos {
        let mut due = self.metrics_flush_at.max(now);
        if let Some(at) = self.node.poll_timeout() {
            due = due.min(at);
        }
        for p in &self.peers {
            if p.conn.is_none() && p.retry_at > 0 {
                due = due.min(p.retry_at);
            }
            if let Some((at, _)) = p.delayed.front() {
                due = due.min(*at);
            }
        }
        due
    }

    /// Disk, timers, node output, peer links and flushing: the end of every loop turn.
    fn turn(&mut self) {
        let now = self.now();
        self.node.on_disk(now);
        self.node.tick(now);
        self.node.drive(now);
        self.send_output(now);
        self.publish();
        self.maintain_peers(now);
        if now >= self.metrics_flush_at {
            self.flush_metrics();
            self.metrics_flush_at = now + METRICS_FLUSH_NS;
        }
        // Peers first: the Accepts are on the wire before the disk write starts
        // (`send_before_disk`), and the disk write starts before the replies of this turn are
        // written (with many clients, a flush of tens of connections). A disk that fails now
        // leaves answers for the waiting clients.
        self.flush_peers();
        if self.node.submit_disk(self.now()) {
            self.send_output(now);
            self.publish();
        }
        self.flush_all();
    }

    /// Sends what the node asked for: peer messages, and replies to connections still open.
    fn send_output(&mut self, now: Nanos) {
        let mut output = std::mem::take(&mut self.output);
        self.node.take_output(&mut output);
        for env in output.messages.drain(..) {
            let trace = if self.node.tracer().active() {
                self.peer_trace(&env)
            } else {
                None
            };
            self.send_peer(now, env, trace);
        }
        for reply in output.replies.drain(..) {
            let idx = conn_index(reply.conn);
            let live = self
                .conns
                .get(idx)
                .and_then(|s| s.as_ref())
                .is_some_and(|s| s.id(idx) == reply.conn);
            if !live {
                continue;
            }
            let frame = match reply.trace {
                None => ServerFrame::Reply {
                    id: reply.req_id,
                    outcome: reply.outcome,
                },
                Some(mut stamps) => {
                    stamps[anatomy::stamp::REPLY_SENT] = self.now();
                    ServerFrame::TracedReply {
                        id: reply.req_id,
                        outcome: reply.outcome,
                        stamps: stamps.to_vec(),
                    }
                }
            };
            self.send_client(idx, &frame);
        }
        self.output = output;
    }

    /// Publishes the node's leader and health to the other threads (topology, admin).
    fn publish(&mut self) {
        let leader = self.node.leader();
        if leader != self.published_leader {
            self.shared.leaders[self.group as usize]
                .store(leader.unwrap_or(NO_LEADER), Ordering::Release);
            self.published_leader = leader;
        }
        if self.node.failed().is_some() && !self.published_failed {
            self.shared.healthy[self.group as usize].store(false, Ordering::Release);
            self.published_failed = true;
        }
    }

    // ---- peers ----

    /// Whether `env` belongs to a traced slot (`runtime::anatomy`), and the stamps it
    /// carries: a leader's Accept (none; the follower stamps its side), a follower's Accepted
    /// (its stamps).
    fn peer_trace(&mut self, env: &Envelope) -> Option<Vec<u64>> {
        match &env.msg {
            Message::Accept { slot, .. } if self.node.tracer().is_traced(*slot) => Some(Vec::new()),
            Message::Accepted { slot, .. } if self.node.tracer().is_traced(*slot) => {
                let now = self.now();
                self.node
                    .tracer()
                    .follower_stamps(*slot, now)
                    .map(|s| s.to_vec())
            }
            _ => None,
        }
    }

    /// Queues `env` on its peer link (after the link's emulated delay). `trace`: the message
    /// belongs to a traced slot (`runtime::anatomy`) and goes as a `PeerFrame::Traced` with
    /// these stamps.
    fn send_peer(&mut self, now: Nanos, env: Envelope, trace: Option<Vec<u64>>) {
        let to = env.to as usize;
        if to >= self.peers.len() {
            return;
        }
        if let Message::Heartbeat { read_round, .. } = &env.msg {
            let link = &mut self.peers[to];
            if link.heartbeat_probe.is_none() {
                link.heartbeat_probe = Some((*read_round, now));
            }
        }
        let link = &self.peers[to];
        let Some(conn) = link.conn.as_ref() else {
            return;
        };
        if conn.unsent() > PEER_OUT_MAX_BYTES {
            return;
        }
        let traced_accept = match (&trace, &env.msg) {
            (Some(_), Message::Accept { slot, .. }) => Some(*slot),
            _ => None,
        };
        let traced = trace.is_some();
        // The leader sends the same Accept (or heartbeat) to every peer: encode it once.
        let cached = self
            .last_peer_frame
            .as_ref()
            .is_some_and(|(msg, t, _)| *t == traced && *msg == env.msg);
        if !cached {
            let mut bytes = std::mem::take(&mut self.last_peer_frame)
                .map(|(_, _, b)| b)
                .unwrap_or_default();
            bytes.clear();
            let msg = wire::message_to_wire(&env.msg);
            let frame = match trace {
                None => PeerFrame::Msg(msg),
                Some(stamps) => PeerFrame::Traced { msg, stamps },
            };
            if self.encoder.encode(&frame, &mut bytes) == 0 {
                tracing::warn!(
                    group = self.group,
                    kind = env.msg.kind(),
                    "dropping a peer message over the frame limit"
                );
                return;
            }
            self.last_peer_frame = Some((env.msg, traced, bytes));
        }
        let bytes = &self.last_peer_frame.as_ref().expect("just cached").2;
        let link = &mut self.peers[to];
        let conn = link.conn.as_mut().expect("checked above");
        if link.delay_ns > 0 {
            link.delayed.push_back((now + link.delay_ns, bytes.clone()));
        } else {
            conn.out().extend_from_slice(bytes);
        }
        if let Some(slot) = traced_accept {
            if self.accepts_traced.last() != Some(&slot) {
                self.accepts_traced.push(slot);
            }
        }
    }

    fn maintain_peers(&mut self, now: Nanos) {
        for id in 0..self.peers.len() {
            if id as ReplicaId == self.spec_id {
                continue;
            }
            let link = &mut self.peers[id];
            while let Some((at, _)) = link.delayed.front() {
                if *at > now {
                    break;
                }
                let (_, bytes) = link.delayed.pop_front().expect("front exists");
                if let Some(conn) = link.conn.as_mut() {
                    conn.out().extend_from_slice(&bytes);
                }
            }
            if link.conn.is_none() && now >= link.retry_at {
                self.connect_peer(id, now);
            }
        }
    }

    fn connect_peer(&mut self, id: usize, now: Nanos) {
        let mut hello = Hello::new(self.cluster_id, self.spec_id, self.group);
        hello.settings_digest = self.settings_digest;
        let hello = PeerFrame::Hello(hello);
        let link = &mut self.peers[id];
        match TcpStream::connect(link.addr) {
            Ok(mut stream) => {
                let token = Token(PEER_OUT_BASE + id);
                if self
                    .poll
                    .registry()
                    .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                    .is_err()
                {
                    link.retry_at = now + link.backoff_ms * 1_000_000;
                    return;
                }
                let _ = stream.set_nodelay(true);
                let mut conn = Conn::new(stream, PEER_FRAME_MAX_BYTES);
                self.encoder.encode(&hello, conn.out());
                link.conn = Some(conn);
                link.connected = false;
            }
            Err(_) => {
                link.retry_at = now + link.backoff_ms * 1_000_000;
                link.backoff_ms = (link.backoff_ms * 2).min(RECONNECT_MAX_MS);
            }
        }
    }

    fn drop_peer_link(&mut self, id: usize, now: Nanos) {
        let link = &mut self.peers[id];
        if let Some(mut conn) = link.conn.take() {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if link.connected {
                tracing::info!(
                    group = self.group,
                    peer = id,
                    "peer link lost; reconnecting"
                );
            }
        }
        link.connected = false;
        link.delayed.clear();
        link.heartbeat_probe = None;
        link.retry_at = now + link.backoff_ms * 1_000_000;
        link.backoff_ms = (link.backoff_ms * 2).min(RECONNECT_MAX_MS);
    }

    fn on_peer_link_event(&mut self, id: usize, now: Nanos, closed: bool) {
        let Some(link) = self.peers.get_mut(id) else {
            return;
        };
        let Some(conn) = link.conn.as_mut() else {
            return;
        };
        if !link.connected {
            match conn.stream.peer_addr() {
                Ok(_) => {
                    link.connected = true;
                    link.backoff_ms = RECONNECT_MIN_MS;
                    tracing::debug!(group = self.group, peer = id, "peer link up");
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if let Ok(Some(_)) | Err(_) = conn.stream.take_error() {
                        self.drop_peer_link(id, now);
                    }
                    return;
                }
                Err(_) => {
                    self.drop_peer_link(id, now);
                    return;
                }
            }
        }
        // The listener side sends nothing but an error frame before closing.
        loop {
            let status = conn.read_some();
            match status {
                ReadStatus::Data | ReadStatus::Drained => {
                    if let Ok(Some(payload)) = conn.reader.next_payload() {
                        if let Ok(ArchivedPeerFrame::Error(e)) = access::<PeerFrame>(payload) {
                            tracing::warn!(
                                group = self.group,
                                peer = id,
                                "peer refused us: {}",
                                e.message
                            );
                        }
                    }
                }
                ReadStatus::WouldBlock => break,
                ReadStatus::Eof | ReadStatus::Closed => {
                    self.drop_peer_link(id, now);
                    return;
                }
            }
            if matches!(status, ReadStatus::Drained) && !closed {
                break;
            }
        }
        if self.peers[id].conn.as_ref().is_some_and(|c| c.unsent() > 0) {
            self.flush_peer(id, now);
        }
    }

    fn flush_peer(&mut self, id: usize, now: Nanos) {
        let link = &mut self.peers[id];
        if !link.connected {
            return;
        }
        if let Some(conn) = link.conn.as_mut() {
            if conn.flush().is_err() {
                self.drop_peer_link(id, now);
            }
        }
    }

    // ---- accepted connections ----

    fn accept(&mut self, peer: bool) {
        loop {
            let listener = if peer {
                &self.peer_listener
            } else {
                &self.client_listener
            };
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(group = self.group, "accept failed: {e}");
                    return;
                }
            };
            let live = self.conns.len() - self.free.len();
            if live >= self.limits.connections_max {
                // Refuse politely: the client (or peer) gets a reason, in a frame of the
                // port's own kind, instead of a silent close.
                let mut conn = Conn::new(stream, 0);
                let err = WireError {
                    code: ErrorCode::Busy,
                    message: format!("connection limit {} reached", self.limits.connections_max),
                };
                if peer {
                    self.encoder.encode(&PeerFrame::Error(err), conn.out());
                } else {
                    self.encoder.encode(&ServerFrame::Error(err), conn.out());
                }
                let _ = conn.flush();
                continue;
            }
            let _ = stream.set_nodelay(true);
            let idx = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(CONN_BASE + idx),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.free.push(idx);
                continue;
            }
            let max = if peer {
                PEER_FRAME_MAX_BYTES
            } else {
                FRAME_PAYLOAD_MAX_BYTES
            };
            self.next_gen += 1;
            self.conns[idx] = Some(Slot {
                conn: Conn::new(stream, max),
                kind: if peer { Kind::PeerNew } else { Kind::ClientNew },
                gen: self.next_gen,
            });
        }
    }

    fn close(&mut self, idx: usize) {
        if let Some(mut slot) = self.conns[idx].take() {
            self.node.conn_closed(slot.id(idx));
            let _ = self.poll.registry().deregister(&mut slot.conn.stream);
            self.free.push(idx);
        }
    }

    /// `closed`: the event said the other side closed (or the socket failed): read until the
    /// end of the stream even after a short read, or the close is never seen.
    fn on_conn_readable(&mut self, idx: usize, closed: bool) {
        loop {
            let Some(slot) = self.conns.get_mut(idx).and_then(|s| s.as_mut()) else {
                return;
            };
            if slot.conn.closing || slot.conn.eof {
                // Only flushing (the error frame, or the answers still owed) is left.
                self.mark_dirty(idx);
                return;
            }
            let status = slot.conn.read_some();
            // The clock is read after the bytes: no event may be stamped earlier than its
            // arrival (a lease check, a follower's "heard from the leader").
            let now = self.now();
            if !self.take_frames(idx, now) {
                return;
            }
            match status {
                ReadStatus::Data => continue,
                ReadStatus::Drained if closed => continue,
                ReadStatus::Drained | ReadStatus::WouldBlock => {
                    self.mark_dirty(idx);
                    return;
                }
                ReadStatus::Eof => {
                    // A half-closed client still gets what it asked for: close once every
                    // answer is out (flush_all).
                    if let Some(slot) = self.conns[idx].as_mut() {
                        slot.conn.eof = true;
                    }
                    self.mark_dirty(idx);
                    return;
                }
                ReadStatus::Closed => {
                    self.close(idx);
                    return;
                }
            }
        }
    }

    /// Handles every complete frame buffered on connection `idx`. Returns false if the
    /// connection was closed or is closing.
    fn take_frames(&mut self, idx: usize, now: Nanos) -> bool {
        let Some(slot) = self.conns[idx].as_mut() else {
            return false;
        };
        let mut reader = std::mem::replace(&mut slot.conn.reader, crate::net::FrameReader::new(0));
        let kind = slot.kind;
        let mut keep = true;
        loop {
            let payload = match reader.next_payload() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        FrameError::Oversized { .. } => ErrorCode::Oversized,
                        _ => ErrorCode::Malformed,
                    };
                    self.refuse(idx, kind, code, e.to_string());
                    keep = false;
                    break;
                }
            };
            let ok = match kind {
                Kind::ClientNew | Kind::Client => self.on_client_frame(idx, now, payload),
                Kind::PeerNew | Kind::Peer(_) => self.on_peer_frame(idx, now, payload),
            };
            if !ok {
                keep = false;
                break;
            }
        }
        if let Some(slot) = self.conns[idx].as_mut() {
            slot.conn.reader = reader;
        }
        keep
    }

    /// Sends an error frame and closes the connection once it is flushed.
    fn refuse(&mut self, idx: usize, kind: Kind, code: ErrorCode, message: String) {
        tracing::warn!(
            group = self.group,
            conn = idx,
            ?code,
            "refusing a connection: {message}"
        );
        let Some(slot) = self.conns[idx].as_mut() else {
            return;
        };
        let err = WireError { code, message };
        match kind {
            Kind::ClientNew | Kind::Client => self
                .encoder
                .encode(&ServerFrame::Error(err), slot.conn.out()),
            Kind::PeerNew | Kind::Peer(_) => {
                self.encoder.encode(&PeerFrame::Error(err), slot.conn.out())
            }
        };
        slot.conn.closing = true;
        self.mark_dirty(idx);
    }

    fn check_hello(&self, h: &wire::ArchivedHello, peer: bool) -> Result<(), (ErrorCode, String)> {
        if h.magic.to_native() != wire::MAGIC {
            return Err((ErrorCode::BadMagic, "bad magic in handshake".into()));
        }
        if h.version.to_native() != wire::PROTOCOL_VERSION {
            return Err((
                ErrorCode::Version,
                format!(
                    "protocol version {} is not supported (this server speaks {})",
                    h.version.to_native(),
                    wire::PROTOCOL_VERSION
                ),
            ));
        }
        let cluster = h.cluster_id.to_native();
        // A client on first contact may send 0 (it learns the id from our welcome); a peer may not.
        let first_contact = cluster == 0 && !peer;
        if cluster != self.cluster_id && !first_contact {
            return Err((
                ErrorCode::WrongCluster,
                format!(
                    "cluster id {cluster:#x} does not match this cluster ({:#x})",
                    self.cluster_id
                ),
            ));
        }
        if h.group.to_native() != self.group {
            return Err((
                ErrorCode::WrongGroup,
                format!(
                    "this port serves group {}, not group {}",
                    self.group,
                    h.group.to_native()
                ),
            ));
        }
        let rid = h.replica_id.to_native();
        if peer && (rid as usize >= self.replicas.len() || rid == self.spec_id) {
            return Err((
                ErrorCode::UnknownReplica,
                format!("replica id {rid} is not a peer of replica {}", self.spec_id),
            ));
        }
        let digest = h.settings_digest.to_native();
        if peer && digest != self.settings_digest {
            return Err((
                ErrorCode::WrongCluster,
                format!(
                    "replica {rid} runs with different timeout or lease settings (digest {digest:#x}, ours {:#x}); every replica must share protocol, heartbeat_ms, election timeouts, lease_reads, read_mode, clock_drift_percent and preferred_leader",
                    self.settings_digest
                ),
            ));
        }
        if !peer && rid != CLIENT_ID_NONE {
            return Err((
                ErrorCode::UnknownReplica,
                "a client handshake must not claim a replica id".into(),
            ));
        }
        Ok(())
    }

    fn on_peer_frame(&mut self, idx: usize, now: Nanos, payload: &[u8]) -> bool {
        let kind = self.conns[idx].as_ref().map(|s| s.kind);
        let frame = match access::<PeerFrame>(payload) {
            Ok(f) => f,
            Err(e) => {
                self.refuse(idx, Kind::PeerNew, ErrorCode::Malformed, e.to_string());
                return false;
            }
        };
        match (kind, frame) {
            (Some(Kind::PeerNew), ArchivedPeerFrame::Hello(h)) => {
                if let Err((code, msg)) = self.check_hello(h, true) {
                    self.refuse(idx, Kind::PeerNew, code, msg);
                    return false;
                }
                let from = h.replica_id.to_native();
                if let Some(slot) = self.conns[idx].as_mut() {
                    slot.kind = Kind::Peer(from);
                }
                true
            }
            (Some(Kind::Peer(from)), ArchivedPeerFrame::Traced { msg, stamps }) => {
                let env = wire::envelope_from_archived(from, self.spec_id, msg);
                let tracer = self.node.tracer();
                match (&env.msg, stamps.len()) {
                    (Message::Accept { slot, .. }, _) => tracer.accept_received(*slot, now),
                    (Message::Accepted { slot, .. }, anatomy::FOLLOWER_STAMPS) => {
                        let mut s = [0; anatomy::FOLLOWER_STAMPS];
                        for (d, v) in s.iter_mut().zip(stamps.iter()) {
                            *d = v.to_native();
                        }
                        tracer.accepted(from, *slot, s, now);
                    }
                    _ => {}
                }
                self.node.on_peer(now, env);
                true
            }
            (Some(Kind::Peer(from)), ArchivedPeerFrame::Msg(m)) => {
                let env = wire::envelope_from_archived(from, self.spec_id, m);
                if let Message::HeartbeatAck { read_round, .. } = &env.msg {
                    let link = &mut self.peers[from as usize];
                    if let Some((round, at)) = link.heartbeat_probe {
                        if *read_round >= round {
                            self.rtt_hist[from as usize]
                                .observe(now.saturating_sub(at) as f64 / 1e9);
                            link.heartbeat_probe = None;
                        }
                    }
                }
                self.node.on_peer(now, env);
                true
            }
            (_, ArchivedPeerFrame::Error(e)) => {
                tracing::warn!(group = self.group, "peer sent an error: {}", e.message);
                self.close(idx);
                false
            }
            _ => {
                self.refuse(
                    idx,
                    Kind::PeerNew,
                    ErrorCode::Malformed,
                    "unexpected frame on a peer connection (handshake first, once)".into(),
                );
                false
            }
        }
    }

    fn on_client_frame(&mut self, idx: usize, now: Nanos, payload: &[u8]) -> bool {
        let Some((kind, gen)) = self.conns[idx].as_ref().map(|s| (s.kind, s.gen)) else {
            return false;
        };
        let frame = match access::<ClientFrame>(payload) {
            Ok(f) => f,
            Err(e) => {
                self.refuse(idx, kind, ErrorCode::Malformed, e.to_string());
                return false;
            }
        };
        match (kind, frame) {
            (Kind::ClientNew, ArchivedClientFrame::Hello(h)) => {
                if let Err((code, msg)) = self.check_hello(h, false) {
                    self.refuse(idx, kind, code, msg);
                    return false;
                }
                let topology = self.topology();
                self.send_client(idx, &ServerFrame::Welcome(topology));
                if let Some(slot) = self.conns[idx].as_mut() {
                    slot.kind = Kind::Client;
                }
                true
            }
            (Kind::Client, ArchivedClientFrame::Request(req))
            | (Kind::Client, ArchivedClientFrame::TracedRequest(req)) => {
                let traced = matches!(frame, ArchivedClientFrame::TracedRequest(_));
                let req = match rkyv::deserialize::<wire::Request, rkyv::rancor::Error>(req) {
                    Ok(r) => r,
                    Err(e) => {
                        self.refuse(idx, kind, ErrorCode::Malformed, e.to_string());
                        return false;
                    }
                };
                let conn = (gen << CONN_INDEX_BITS) | idx as u64;
                if traced {
                    self.node.on_traced_request(now, conn, req);
                } else {
                    self.node.on_request(now, conn, req);
                }
                true
            }
            (Kind::Client, ArchivedClientFrame::Status { id }) => {
                let status = self.status();
                self.send_client(
                    idx,
                    &ServerFrame::Status {
                        id: id.to_native(),
                        status,
                    },
                );
                true
            }
            (Kind::Client, ArchivedClientFrame::Snapshot { id, slot, offset }) => {
                let frame = match self
                    .node
                    .export_snapshot(slot.to_native(), offset.to_native())
                {
                    Ok(part) => ServerFrame::Snapshot {
                        id: id.to_native(),
                        refused: None,
                        slot: part.slot,
                        offset: part.offset,
                        total_bytes: part.total_bytes,
                        crc: part.crc,
                        data: part.data,
                    },
                    Err(why) => ServerFrame::Snapshot {
                        id: id.to_native(),
                        refused: Some(why),
                        slot: 0,
                        offset: 0,
                        total_bytes: 0,
                        crc: 0,
                        data: bytes::Bytes::new(),
                    },
                };
                self.send_client(idx, &frame);
                true
            }
            (Kind::Client, ArchivedClientFrame::Topology { id }) => {
                let topology = self.topology();
                self.send_client(
                    idx,
                    &ServerFrame::Topology {
                        id: id.to_native(),
                        topology,
                    },
                );
                true
            }
            _ => {
                self.refuse(
                    idx,
                    kind,
                    ErrorCode::Malformed,
                    "unexpected frame on a client connection (handshake first, once)".into(),
                );
                false
            }
        }
    }

    fn send_client(&mut self, idx: usize, frame: &ServerFrame) {
        let Some(slot) = self.conns[idx].as_mut() else {
            return;
        };
        if slot.conn.unsent() > CLIENT_OUT_MAX_BYTES {
            tracing::warn!(
                group = self.group,
                conn = idx,
                "client is not reading its replies; closing"
            );
            self.close(idx);
            return;
        }
        self.encoder.encode(frame, slot.conn.out());
        self.mark_dirty(idx);
    }

    fn mark_dirty(&mut self, idx: usize) {
        self.dirty.push(idx);
    }

    /// Writes every connection with output: clients, then peer links.
    fn flush_all(&mut self) {
        self.flush_clients();
        self.flush_peers();
    }

    fn flush_clients(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for idx in dirty.drain(..) {
            let Some(slot) = self.conns.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            let waiting = self.node.waiting(slot.id(idx));
            let failed = slot.conn.flush().is_err();
            let done_closing =
                (slot.conn.closing || (slot.conn.eof && waiting == 0)) && slot.conn.unsent() == 0;
            if failed || done_closing {
                self.close(idx);
            }
        }
        self.dirty = dirty;
    }

    fn flush_peers(&mut self) {
        let now = self.now();
        // A traced Accept is stamped as its writes start: a follower on another core may read
        // it before the last peer's write returns.
        for slot in self.accepts_traced.drain(..) {
            self.node.tracer().accept_sent(slot, now);
        }
        for id in 0..self.peers.len() {
            if self.peers[id].conn.as_ref().is_some_and(|c| c.unsent() > 0) {
                self.flush_peer(id, now);
            }
        }
    }

    // ---- status ----

    fn topology(&self) -> Topology {
        Topology {
            cluster_id: self.cluster_id,
            groups: self.groups,
            replicas: self.replicas.clone(),
            leaders: self
                .shared
                .leaders
                .iter()
                .map(|l| match l.load(Ordering::Acquire) {
                    NO_LEADER => None,
                    id => Some(id),
                })
                .collect(),
            fast_paxos: self.node.replica().config().protocol
                == crate::protocol::ProtocolMode::FastPaxos,
        }
    }

    fn status(&self) -> GroupStatus {
        self.node.status()
    }

    fn flush_metrics(&mut self) {
        self.node.flush_metrics();
        for h in &mut self.rtt_hist {
            h.flush();
        }
    }
}
