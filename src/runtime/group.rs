//! One Paxos group's thread: a mio loop that drives `protocol`, `kv` and the WAL.
//!
//! The loop, once per turn (see `docs/internals/runtime.md`):
//! 1. wait for socket, disk or waker events, or the next timer;
//! 2. read every readable socket: peer messages go to `Replica::step`, client requests to
//!    `propose`/`read_index` (or are answered at once: redirects, local reads, status);
//! 3. feed durable write ids from the WAL to `persisted`; `tick` when the protocol is due;
//! 4. drain `Replica::ready` until it is empty: hand writes to the WAL, queue messages (those
//!    to ourselves are stepped back in), apply committed batches to `kv` and answer waiting
//!    clients, serve confirmed reads;
//! 5. flush every connection that has output: one write per connection per turn.
//!
//! Everything here belongs to this thread; the only shared state is a few atomics (leaders
//! per group for topology replies, health) and metrics.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::conn::{Conn, ReadStatus};
use super::metrics::{GroupMetrics, LocalHistogram};
use super::storage::Storage;
use super::{Shared, NO_LEADER};
use crate::kv::{self, KvStore, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::net::frame::{access, FrameError, FRAME_PAYLOAD_MAX_BYTES};
use crate::net::wire::{
    self, group_of, ArchivedClientFrame, ArchivedOp, ArchivedPeerFrame, ArchivedRequest,
    ClientFrame, ErrorCode, GroupStatus, Hello, Outcome, PeerFrame, ReplicaInfo, ServerFrame,
    Topology, WireError, CLIENT_ID_NONE,
};
use crate::net::FrameEncoder;
use crate::protocol::{
    self, Command, Envelope, Message, Nanos, NotLeader, ReadOutcome, Replica, ReplicaId, Role,
};
use crate::server::config::Limits;
use crate::wal::WalConfig;

const CLIENT_LISTENER: Token = Token(0);
const PEER_LISTENER: Token = Token(1);
const WAL_EVENTS: Token = Token(2);
const WAKER: Token = Token(3);
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
/// A wait that ends this much later than asked for means the thread was paused.
const PAUSE_NS: Nanos = 50_000_000;

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
    pub limits: Limits,
    pub shared: Arc<Shared>,
    pub metrics: GroupMetrics,
    /// Per-peer one-way delay (WAN emulation), nanoseconds; empty = none.
    pub peer_delay_ns: Vec<Nanos>,
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
    waiting: usize,
}

#[derive(Clone, Copy)]
struct Waiter {
    conn: usize,
    gen: u64,
    req_id: u64,
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
    group: u32,
    groups: u32,
    cluster_id: u64,
    replicas: Vec<ReplicaInfo>,
    limits: Limits,
    shared: Arc<Shared>,
    metrics: GroupMetrics,
    fsync_hist: LocalHistogram,
    batch_hist: LocalHistogram,
    /// Per peer.
    rtt_hist: Vec<LocalHistogram>,
    metrics_flush_at: Nanos,

    poll: Poll,
    waker: Arc<Waker>,
    client_listener: TcpListener,
    peer_listener: TcpListener,
    conns: Vec<Option<Slot>>,
    free: Vec<usize>,
    next_gen: u64,
    dirty: Vec<usize>,
    peers: Vec<PeerLink>,
    encoder: FrameEncoder,

    epoch: Instant,
    replica: Replica,
    kv: KvStore,
    storage: Storage,
    wal_backend: String,
    /// Set when the WAL failed: the group stops taking part and refuses clients.
    failed: Option<String>,
    pending_writes: HashMap<(u64, u64), Waiter>,
    pending_reads: HashMap<u64, (Waiter, Bytes)>,
    next_read_id: u64,
    self_msgs: Vec<Envelope>,
    /// The last peer message encoded, and its frame bytes.
    last_peer_frame: Option<(Message, Vec<u8>)>,
    last_leader: Option<ReplicaId>,
    last_role: Role,
}

impl Group {
    fn start(spec: GroupSpec) -> Result<Group, String> {
        let epoch = Instant::now();
        let (storage, durable, recovered) = Storage::open(spec.wal.clone())?;
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
        let wal_backend = storage.wal().backend_kind().to_string();
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
            .and_then(|_| {
                reg.register(
                    &mut SourceFd(&storage.wal().eventfd()),
                    WAL_EVENTS,
                    Interest::READABLE,
                )
            })
            .map_err(|e| format!("cannot register with the event loop: {e}"))?;
        let replica = Replica::new(spec.protocol.clone(), &durable, 0);
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
        Ok(Group {
            spec_id: spec.replica_id,
            group: spec.group,
            groups: spec.groups,
            cluster_id: spec.cluster_id,
            replicas: spec.replicas,
            limits: spec.limits,
            shared: spec.shared,
            fsync_hist: LocalHistogram::new(metrics.wal_fsync_duration_seconds.clone()),
            batch_hist: LocalHistogram::new(metrics.batch_size.clone()),
            rtt_hist: metrics
                .peer_round_trip_time_seconds
                .iter()
                .map(|h| LocalHistogram::new(h.clone()))
                .collect(),
            metrics,
            metrics_flush_at: 0,
            poll,
            waker,
            client_listener,
            peer_listener,
            conns: Vec::new(),
            free: Vec::new(),
            next_gen: 1,
            dirty: Vec::new(),
            peers,
            encoder: FrameEncoder::with_limit(PEER_FRAME_MAX_BYTES),
            epoch,
            replica,
            kv: KvStore::new(),
            storage,
            wal_backend,
            failed: None,
            pending_writes: HashMap::new(),
            pending_reads: HashMap::new(),
            next_read_id: 1,
            self_msgs: Vec::new(),
            last_peer_frame: None,
            last_leader: None,
            last_role: Role::Follower,
        })
    }

    fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
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
            let timeout = if recheck {
                0
            } else {
                self.next_deadline(before).saturating_sub(before)
            };
            let interrupted = match self
                .poll
                .poll(&mut events, Some(Duration::from_nanos(timeout)))
            {
                Ok(()) => false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                Err(e) => {
                    tracing::error!(group = self.group, "event loop failed: {e}");
                    break;
                }
            };
            let now = self.now();
            for event in events.iter() {
                match event.token() {
                    CLIENT_LISTENER => self.accept(false),
                    PEER_LISTENER => self.accept(true),
                    WAL_EVENTS | WAKER => {}
                    Token(t) if (PEER_OUT_BASE..CONN_BASE).contains(&t) => {
                        self.on_peer_link_event(t - PEER_OUT_BASE, now)
                    }
                    Token(t) => self.on_conn_readable(t - CONN_BASE, now),
                }
            }
            // The thread was paused (SIGSTOP/SIGCONT, a VM or scheduler stall): the wait ended
            // late or was interrupted, and what it returned may predate the pause. Input that
            // arrived meanwhile (the leader's heartbeats) must be read before the timers that
            // expired meanwhile run, or a follower deposes a healthy leader: poll again, without
            // waiting, before this turn's timers. Once, so that a loaded host that always wakes
            // late still makes progress.
            let paused = interrupted || now.saturating_sub(before) > timeout + PAUSE_NS;
            if paused && !recheck {
                recheck = true;
                continue;
            }
            recheck = false;
            self.poll_disk(now);
            self.turn(now);
        }
        if self.failed.is_none() {
            if let Err(e) = self.storage.flush() {
                tracing::warn!(group = self.group, "WAL flush at shutdown failed: {e}");
            }
        }
        self.shared.ready[self.group as usize].store(false, Ordering::Release);
    }

    fn next_deadline(&self, now: Nanos) -> Nanos {
        let mut due = self.metrics_flush_at.max(now);
        if self.failed.is_none() {
            due = due.min(self.replica.poll_timeout());
        }
        for p in &self.peers {
            if p.conn.is_none() && p.retry_at > 0 {
                due = due.min(p.retry_at);
            }
            if let Some((at, _)) = p.delayed.front() {
                due = due.min(*at);
            }
        }
        // Completions of a backend without a usable eventfd edge are still picked up.
        if self.storage.pending() > 0 {
            due = due.min(now + 1_000_000);
        }
        due
    }

    /// Timers, protocol output, peer links and flushing: the end of every loop turn.
    fn turn(&mut self, now: Nanos) {
        if self.failed.is_none() && now >= self.replica.poll_timeout() {
            self.replica.tick(now);
        }
        self.drive(now);
        self.maintain_peers(now);
        if now >= self.metrics_flush_at {
            self.flush_metrics();
            self.metrics_flush_at = now + METRICS_FLUSH_NS;
        }
        self.flush_all();
    }

    fn poll_disk(&mut self, now: Nanos) {
        if self.failed.is_some() {
            return;
        }
        match self.storage.poll(now) {
            Ok(durable) => {
                for s in &durable.write_seconds {
                    self.fsync_hist.observe(*s);
                }
                if let Some(id) = durable.up_to {
                    self.replica.persisted(now, id);
                }
            }
            Err(e) => self.fail(format!("{e}")),
        }
    }

    fn fail(&mut self, why: String) {
        tracing::error!(
            group = self.group,
            "group failed, it stops taking part: {why}"
        );
        self.failed = Some(why);
        self.shared.healthy[self.group as usize].store(false, Ordering::Release);
        self.shared.leaders[self.group as usize].store(NO_LEADER, Ordering::Release);
        self.fail_waiting(None);
    }

    // ---- protocol output ----

    fn drive(&mut self, now: Nanos) {
        if self.failed.is_some() {
            return;
        }
        loop {
            let ready = self.replica.ready(now);
            if let Some(why) = self.replica.fatal() {
                self.fail(format!("protocol: {why}"));
                return;
            }
            if ready.is_empty() && self.self_msgs.is_empty() {
                break;
            }
            if !ready.writes.is_empty() {
                if let Err(e) = self.storage.submit(now, ready.writes) {
                    self.fail(e.to_string());
                    return;
                }
            }
            for env in ready.messages {
                if env.to == self.spec_id {
                    self.self_msgs.push(env);
                } else {
                    self.send_peer(now, env);
                }
            }
            for (slot, value) in ready.committed {
                self.apply(slot, &value);
            }
            for read in ready.reads {
                let Some((waiter, key)) = self.pending_reads.remove(&read.id) else {
                    continue;
                };
                let outcome = match read.outcome {
                    ReadOutcome::Ready => wire::outcome_from_reply(self.kv.get(&key)),
                    ReadOutcome::NotLeader { leader } => Outcome::NotLeader { leader },
                };
                self.answer(waiter, outcome);
            }
            for d in ready.dropped {
                if let Some(waiter) = self.pending_writes.remove(&(d.client_id, d.seq)) {
                    self.metrics.proposals_failed_total.inc();
                    self.answer(waiter, Outcome::NotLeader { leader: d.leader });
                }
            }
            let msgs = std::mem::take(&mut self.self_msgs);
            for env in msgs {
                self.replica.step(now, env);
            }
        }
        self.observe_status();
    }

    fn apply(&mut self, slot: protocol::Slot, value: &protocol::Value) {
        let cmds = value.commands();
        if self.last_role == Role::Leader && !cmds.is_empty() {
            self.batch_hist.observe(cmds.len() as f64);
        }
        for cmd in cmds {
            let reply = self.kv.apply(cmd.client_id, cmd.seq, &cmd.payload);
            if let Some(waiter) = self.pending_writes.remove(&(cmd.client_id, cmd.seq)) {
                self.answer(waiter, wire::outcome_from_reply(reply));
            }
        }
        self.metrics
            .proposals_committed_total
            .inc_by(cmds.len() as u64);
        self.metrics
            .proposals_applied_total
            .inc_by(cmds.len() as u64);
        self.metrics.applied_index.set(slot as i64);
    }

    fn observe_status(&mut self) {
        let st = self.replica.status();
        self.metrics.commit_index.set(st.commit as i64);
        self.metrics
            .proposals_pending
            .set(self.pending_writes.len() as i64);
        if st.leader != self.last_leader {
            self.metrics.leader_changes_seen_total.inc();
            self.metrics.has_leader.set(st.leader.is_some() as i64);
            self.shared.leaders[self.group as usize]
                .store(st.leader.unwrap_or(NO_LEADER), Ordering::Release);
            tracing::info!(group = self.group, leader = ?st.leader, role = ?st.role, ballot = %st.promised, "leader changed");
            self.last_leader = st.leader;
        }
        if st.role != self.last_role {
            self.metrics.is_leader.set((st.role == Role::Leader) as i64);
            if self.last_role == Role::Leader {
                // Whatever we had in flight may or may not be chosen by the next leader:
                // the clients retry there, and exactly-once makes that safe.
                self.fail_waiting(st.leader);
            }
            self.last_role = st.role;
        }
    }

    fn fail_waiting(&mut self, leader: Option<ReplicaId>) {
        let writes: Vec<Waiter> = self.pending_writes.drain().map(|(_, w)| w).collect();
        let reads: Vec<Waiter> = self.pending_reads.drain().map(|(_, (w, _))| w).collect();
        for w in writes.into_iter().chain(reads) {
            self.metrics.proposals_failed_total.inc();
            self.answer(w, Outcome::NotLeader { leader });
        }
    }

    // ---- peers ----

    fn send_peer(&mut self, now: Nanos, env: Envelope) {
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
        // The leader sends the same Accept (or heartbeat) to every peer: encode it once.
        let cached = self
            .last_peer_frame
            .as_ref()
            .is_some_and(|(msg, _)| *msg == env.msg);
        if !cached {
            let mut bytes = std::mem::take(&mut self.last_peer_frame)
                .map(|(_, b)| b)
                .unwrap_or_default();
            bytes.clear();
            let frame = PeerFrame::Msg(wire::message_to_wire(&env.msg));
            if self.encoder.encode(&frame, &mut bytes) == 0 {
                tracing::warn!(
                    group = self.group,
                    kind = env.msg.kind(),
                    "dropping a peer message over the frame limit"
                );
                return;
            }
            self.last_peer_frame = Some((env.msg, bytes));
        }
        let bytes = &self.last_peer_frame.as_ref().expect("just cached").1;
        let link = &mut self.peers[to];
        let conn = link.conn.as_mut().expect("checked above");
        if link.delay_ns > 0 {
            link.delayed.push_back((now + link.delay_ns, bytes.clone()));
        } else {
            conn.out().extend_from_slice(bytes);
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
        let hello = PeerFrame::Hello(Hello::new(self.cluster_id, self.spec_id, self.group));
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

    fn on_peer_link_event(&mut self, id: usize, now: Nanos) {
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
            match conn.read_some() {
                ReadStatus::Data => {
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
                waiting: 0,
            });
        }
    }

    fn close(&mut self, idx: usize) {
        if let Some(mut slot) = self.conns[idx].take() {
            let _ = self.poll.registry().deregister(&mut slot.conn.stream);
            self.free.push(idx);
        }
    }

    fn on_conn_readable(&mut self, idx: usize, now: Nanos) {
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
            if !self.take_frames(idx, now) {
                return;
            }
            match status {
                ReadStatus::Data => continue,
                ReadStatus::WouldBlock => {
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
            (Some(Kind::Peer(from)), ArchivedPeerFrame::Msg(m)) => {
                if self.failed.is_some() {
                    return true;
                }
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
                self.replica.step(now, env);
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
            (Kind::Client, ArchivedClientFrame::Request(req)) => {
                let waiter = Waiter {
                    conn: idx,
                    gen,
                    req_id: req.id.to_native(),
                };
                self.on_request(now, waiter, req);
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

    fn on_request(&mut self, now: Nanos, waiter: Waiter, req: &ArchivedRequest) {
        let waiting = self.conns[waiter.conn].as_ref().map_or(0, |s| s.waiting);
        if waiting >= self.limits.requests_per_connection_max {
            self.answer_now(waiter, Outcome::Busy);
            return;
        }
        if let Some(why) = &self.failed {
            tracing::debug!(group = self.group, "refusing a request: {why}");
            self.answer_now(waiter, Outcome::NotLeader { leader: None });
            return;
        }
        let key: &[u8] = match &req.op {
            ArchivedOp::Get { key, .. }
            | ArchivedOp::Put { key, .. }
            | ArchivedOp::Delete { key }
            | ArchivedOp::Cas { key, .. } => key.as_slice(),
        };
        if key.len() > KEY_BYTES_MAX {
            self.answer_now(
                waiter,
                Outcome::Invalid {
                    reason: format!(
                        "key of {} bytes is over the {KEY_BYTES_MAX}-byte limit",
                        key.len()
                    ),
                },
            );
            return;
        }
        let g = group_of(key, self.groups);
        if g != self.group {
            self.answer_now(waiter, Outcome::WrongGroup { group: g });
            return;
        }
        let key = Bytes::copy_from_slice(key);
        let op = match &req.op {
            ArchivedOp::Get { linearizable, .. } => {
                if !*linearizable {
                    let reply = self.kv.get(&key);
                    self.answer_now(waiter, wire::outcome_from_reply(reply));
                    return;
                }
                let id = self.next_read_id;
                self.next_read_id += 1;
                match self.replica.read_index(now, id) {
                    Ok(()) => {
                        self.pending_reads.insert(id, (waiter, key));
                        self.bump_waiting(waiter, 1);
                    }
                    Err(e) => self.answer_now(waiter, not_leader_outcome(e)),
                }
                return;
            }
            ArchivedOp::Put { value, .. } => kv::Op::Put {
                key,
                value: Bytes::copy_from_slice(value.as_slice()),
            },
            ArchivedOp::Delete { .. } => kv::Op::Delete { key },
            ArchivedOp::Cas {
                expected_version,
                value,
                ..
            } => kv::Op::Cas {
                key,
                expected_version: expected_version.to_native(),
                value: Bytes::copy_from_slice(value.as_slice()),
            },
        };
        if let kv::Op::Put { value, .. } | kv::Op::Cas { value, .. } = &op {
            if value.len() > VALUE_BYTES_MAX {
                self.answer_now(
                    waiter,
                    Outcome::Invalid {
                        reason: format!(
                            "value of {} bytes is over the {VALUE_BYTES_MAX}-byte limit",
                            value.len()
                        ),
                    },
                );
                return;
            }
        }
        let id = (req.client_id.to_native(), req.seq.to_native());
        if let Some(w) = self.pending_writes.get_mut(&id) {
            // A retry of a command still in flight here: answer the newest asker only.
            let old = std::mem::replace(w, waiter);
            self.bump_waiting(old, -1);
            self.bump_waiting(waiter, 1);
            return;
        }
        let command = Command {
            client_id: id.0,
            seq: id.1,
            payload: op.encode(),
        };
        match self.replica.propose(now, command) {
            Ok(()) => {
                self.pending_writes.insert(id, waiter);
                self.bump_waiting(waiter, 1);
            }
            Err(e) => {
                self.metrics.proposals_failed_total.inc();
                self.answer_now(waiter, not_leader_outcome(e));
            }
        }
    }

    fn bump_waiting(&mut self, w: Waiter, by: isize) {
        if let Some(slot) = self.conns.get_mut(w.conn).and_then(|s| s.as_mut()) {
            if slot.gen == w.gen {
                slot.waiting = slot.waiting.saturating_add_signed(by);
                if by < 0 && slot.conn.eof {
                    // A half-closed connection may have nothing left to wait for.
                    self.dirty.push(w.conn);
                }
            }
        }
    }

    /// Answers a request that was never counted as waiting.
    fn answer_now(&mut self, w: Waiter, outcome: Outcome) {
        self.bump_waiting(w, 1);
        self.answer(w, outcome);
    }

    fn answer(&mut self, w: Waiter, outcome: Outcome) {
        let Some(slot) = self.conns.get_mut(w.conn).and_then(|s| s.as_mut()) else {
            return;
        };
        if slot.gen != w.gen {
            return; // That client is gone; its connection slot was reused.
        }
        slot.waiting = slot.waiting.saturating_sub(1);
        self.send_client(
            w.conn,
            &ServerFrame::Reply {
                id: w.req_id,
                outcome,
            },
        );
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

    fn flush_all(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for idx in dirty.drain(..) {
            let Some(slot) = self.conns.get_mut(idx).and_then(|s| s.as_mut()) else {
                continue;
            };
            let failed = slot.conn.flush().is_err();
            let done_closing = (slot.conn.closing || (slot.conn.eof && slot.waiting == 0))
                && slot.conn.unsent() == 0;
            if failed || done_closing {
                self.close(idx);
            }
        }
        self.dirty = dirty;
        let now = self.now();
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
        }
    }

    fn status(&self) -> GroupStatus {
        let st = self.replica.status();
        GroupStatus {
            replica: self.spec_id,
            group: self.group,
            role: match (&self.failed, st.role) {
                (Some(_), _) => "failed".into(),
                (None, Role::Leader) => "leader".into(),
                (None, Role::Candidate) => "candidate".into(),
                (None, Role::Follower) => "follower".into(),
            },
            leader: if self.failed.is_some() {
                None
            } else {
                st.leader
            },
            ballot: st.promised.into(),
            commit: st.commit,
            applied: st.applied,
            proposals_pending: self.pending_writes.len() as u64,
            wal_backend: self.wal_backend.clone(),
        }
    }

    fn flush_metrics(&mut self) {
        self.fsync_hist.flush();
        self.batch_hist.flush();
        for h in &mut self.rtt_hist {
            h.flush();
        }
    }
}

fn not_leader_outcome(e: NotLeader) -> Outcome {
    match e {
        NotLeader::Redirect { leader } => Outcome::NotLeader { leader },
        NotLeader::QueueFull => Outcome::Busy,
    }
}
