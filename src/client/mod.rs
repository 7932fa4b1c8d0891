//! The client library: topology discovery, routing by `group_of(key) % G`, leader redirects,
//! timeouts and retries that stay exactly-once (architecture §2, §4).
//!
//! Every decision lives in the sans-IO [`session::Session`] (routing, leader cache, redirects,
//! backoff, per-attempt and per-operation deadlines, outcome classification), which the
//! simulator can drive too. [`Client`] is a thin blocking shell around one: it discovers the
//! topology, keeps one TCP connection per (replica, group), sends what the session says,
//! waits for replies with `poll(2)` until the session's next deadline, and feeds back what
//! happened. One client id, one request at a time, sequence numbers increasing by one per
//! write; a retry resends the same (client id, sequence), so the store applies the write at
//! most once however many times it is sent. The load generator runs many of these.

pub mod cli;
pub mod session;

pub use session::{OpId, Session, SessionConfig, SessionError, SessionStats, Transmit};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::net::frame::{access, FrameReader};
use crate::net::wire::{
    ClientFrame, GroupStatus, Hello, Op, Outcome, ServerFrame, Topology, CLIENT_ID_NONE,
};
use crate::net::FrameEncoder;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of any replica's group-0 client port.
    pub endpoints: Vec<String>,
    /// 0 = learn it from the first replica that answers.
    pub cluster_id: u64,
    /// One attempt (connect, or wait for a reply) takes at most this long; the client moves
    /// on sooner when the latency it has observed says the replica should have answered
    /// (see [`SessionConfig::attempt_timeout_ns`]).
    pub attempt_timeout: Duration,
    /// The least an attempt waits before the client tries another replica.
    pub attempt_timeout_min: Duration,
    /// A whole operation, retries included, takes at most this long.
    pub op_timeout: Duration,
    /// Start of the exponential backoff between retries that found no leader.
    pub backoff: Duration,
    /// Also send a serializable read to a second replica when the first is slow.
    pub hedge_reads: bool,
    /// Send linearizable reads to this replica first (the nearest; with quorum leases it
    /// serves them locally, else it redirects to the leader).
    pub read_from: Option<u32>,
}

impl ClientOptions {
    pub fn new(endpoints: Vec<String>) -> ClientOptions {
        ClientOptions {
            endpoints,
            cluster_id: 0,
            attempt_timeout: Duration::from_millis(1000),
            attempt_timeout_min: Duration::from_millis(50),
            op_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(5),
            hedge_reads: true,
            read_from: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach any endpoint ({0})")]
    Unreachable(String),
    #[error("the server refused: {0}")]
    Refused(String),
    /// Gave up; the operation was definitely not applied (nothing reached a replica that
    /// could have applied it, or it was a read).
    #[error("no answer within {0:?}, not applied (last problem: {1})")]
    Timeout(Duration, String),
    /// Gave up on a write that reached a replica without a definite answer: it may or may not
    /// have been applied (read the key to find out).
    #[error("no definite answer within {0:?}: the write may or may not have been applied (last problem: {1})")]
    Unknown(Duration, String),
    #[error("the server sent something unexpected: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether the operation may have been applied (only [`ClientError::Unknown`]).
    pub fn maybe_applied(&self) -> bool {
        matches!(self, ClientError::Unknown(..))
    }
}

/// One blocking, framed connection to a (replica, group).
struct Link {
    stream: TcpStream,
    reader: FrameReader,
    out: Vec<u8>,
}

impl Link {
    fn open(
        addr: SocketAddr,
        timeout: Duration,
        hello: &Hello,
        enc: &mut FrameEncoder,
    ) -> Result<(Link, Topology), String> {
        let deadline = Instant::now() + timeout;
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut link = Link {
            stream,
            reader: FrameReader::default(),
            out: Vec::new(),
        };
        link.send(enc, &ClientFrame::Hello(hello.clone()))?;
        let _ = link
            .stream
            .set_write_timeout(Some(timeout.max(Duration::from_secs(1))));
        match link.recv(deadline)? {
            ServerFrame::Welcome(t) => Ok((link, t)),
            ServerFrame::Error(e) => Err(format!(
                "{addr} refused the handshake: {:?}: {}",
                e.code, e.message
            )),
            other => Err(format!("{addr} answered the handshake with {other:?}")),
        }
    }

    fn send(&mut self, enc: &mut FrameEncoder, frame: &ClientFrame) -> Result<(), String> {
        self.out.clear();
        enc.encode(frame, &mut self.out);
        self.stream
            .write_all(&self.out)
            .map_err(|e| format!("send: {e}"))
    }

    /// Reads what the socket has (call when `poll` says it is readable) and returns every
    /// complete frame; an error means the connection is unusable.
    fn read_ready(&mut self) -> Result<Vec<ServerFrame>, String> {
        let stream = &mut self.stream;
        match self.reader.read_from(16 * 1024, |buf| stream.read(buf)) {
            Ok(0) => return Err("connection closed by the server".into()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("receive: {e}")),
        }
        self.buffered()
    }

    /// Every complete frame already read.
    fn buffered(&mut self) -> Result<Vec<ServerFrame>, String> {
        let mut frames = Vec::new();
        loop {
            match self.reader.next_payload() {
                Ok(Some(p)) => {
                    let archived = access::<ServerFrame>(p).map_err(|e| e.to_string())?;
                    frames.push(
                        rkyv::deserialize::<ServerFrame, rkyv::rancor::Error>(archived)
                            .map_err(|e| e.to_string())?,
                    );
                }
                Ok(None) => return Ok(frames),
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    fn recv(&mut self, deadline: Instant) -> Result<ServerFrame, String> {
        loop {
            match self.reader.next_payload() {
                Ok(Some(p)) => {
                    let archived = access::<ServerFrame>(p).map_err(|e| e.to_string())?;
                    return rkyv::deserialize::<ServerFrame, rkyv::rancor::Error>(archived)
                        .map_err(|e| e.to_string());
                }
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("timed out waiting for a reply".into());
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let stream = &mut self.stream;
            match self.reader.read_from(16 * 1024, |buf| stream.read(buf)) {
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(_) => {}
                Err(e) => {
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) {
                        return Err("timed out waiting for a reply".into());
                    }
                    return Err(format!("receive: {e}"));
                }
            }
        }
    }
}

/// How long discovery waits for a first endpoint's handshake before trying the next one (a
/// paused replica accepts connections and never answers); a second pass waits the whole
/// attempt timeout.
const DISCOVERY_FIRST_PASS: Duration = Duration::from_millis(100);

/// Status requests use ids of their own (the session's start at 1).
const STATUS_ID_BASE: u64 = 1 << 63;

/// CLOCK_BOOTTIME in ns, the clock of the servers' group threads (`runtime::group`), without
/// a test build's clock fault: Fast Paxos deadlines are stamped on it.
pub fn boottime_ns() -> u64 {
    crate::net::timerfd::boottime_raw_ns()
}

pub struct Client {
    opts: ClientOptions,
    topology: Topology,
    links: HashMap<(u32, u32), Link>,
    session: Session,
    /// The session's clock: nanoseconds since this instant.
    epoch: Instant,
    /// CLOCK_BOOTTIME at `epoch`: Fast Paxos deadlines go out on the servers' clock.
    epoch_boottime_ns: u64,
    next_status_id: u64,
    encoder: FrameEncoder,
    /// Retries made (a redirect, a timeout, a busy server), for the load generator.
    pub retries: u64,
}

fn resolve(ep: &str) -> Result<SocketAddr, String> {
    match ep.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(a)) => Ok(a),
        _ => Err(format!("{ep}: cannot resolve")),
    }
}

impl Client {
    /// Connects to the first endpoint that answers and learns the cluster's topology. A first
    /// pass gives each endpoint [`DISCOVERY_FIRST_PASS`] (so a paused replica listed first
    /// costs that, not the attempt timeout); a second pass gives each the attempt timeout.
    pub fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let mut encoder = FrameEncoder::new();
        let mut problems = Vec::new();
        let first = DISCOVERY_FIRST_PASS.min(opts.attempt_timeout);
        let passes: &[Duration] = if first < opts.attempt_timeout {
            &[first, opts.attempt_timeout]
        } else {
            &[first]
        };
        let mut hopeless = vec![false; opts.endpoints.len()];
        for &budget in passes {
            for (i, ep) in opts.endpoints.iter().enumerate() {
                if hopeless[i] {
                    continue;
                }
                let addr = match resolve(ep) {
                    Ok(a) => a,
                    Err(e) => {
                        hopeless[i] = true;
                        problems.push(e);
                        continue;
                    }
                };
                let hello = Hello::new(opts.cluster_id, CLIENT_ID_NONE, 0);
                let t0 = Instant::now();
                match Link::open(addr, budget, &hello, &mut encoder) {
                    Ok((link, topology)) => {
                        let rtt = t0.elapsed();
                        return Ok(Client::from_link(opts, encoder, addr, link, topology, rtt));
                    }
                    Err(e) if e.contains("refused the handshake") => {
                        return Err(ClientError::Refused(e))
                    }
                    Err(e) => {
                        // Only a timeout is worth a second, longer try.
                        hopeless[i] = !e.contains("timed out");
                        problems.push(e);
                    }
                }
            }
        }
        Err(ClientError::Unreachable(problems.join("; ")))
    }

    fn from_link(
        opts: ClientOptions,
        encoder: FrameEncoder,
        addr: SocketAddr,
        link: Link,
        topology: Topology,
        rtt: Duration,
    ) -> Client {
        // Which replica answered: the one whose address this is (replicas on different hosts
        // often share port numbers, so the port alone is not enough). None: keep no link, one
        // opens on first use.
        let replica = topology
            .replicas
            .iter()
            .find(|r| {
                r.client_port_base == addr.port()
                    && (r.host.as_str(), r.client_port_base)
                        .to_socket_addrs()
                        .is_ok_and(|mut a| a.any(|a| a == addr))
            })
            .map(|r| r.id);
        let client_id = rand::random::<u64>() | 1;
        let mut cfg =
            SessionConfig::new(client_id, topology.groups, topology.replicas.len() as u32);
        cfg.leaders = topology.leaders.clone();
        cfg.attempt_timeout_ns = opts.attempt_timeout.as_nanos() as u64;
        cfg.attempt_timeout_min_ns =
            (opts.attempt_timeout_min.min(opts.attempt_timeout)).as_nanos() as u64;
        cfg.initial_rto_ns = cfg.initial_rto_ns.min(cfg.attempt_timeout_ns);
        cfg.op_timeout_ns = opts.op_timeout.as_nanos() as u64;
        cfg.backoff_ns = opts.backoff.as_nanos() as u64;
        cfg.hedge_reads = opts.hedge_reads;
        cfg.read_from = opts.read_from;
        if topology.fast_paxos {
            // Every write goes to every replica; the one this client reached first answers.
            cfg.fast_write_via = Some(replica.unwrap_or(0));
        }
        let mut session = Session::new(cfg);
        let mut client = Client {
            opts,
            topology,
            links: HashMap::new(),
            session: Session::new(SessionConfig::new(client_id, 1, 1)),
            epoch: Instant::now(),
            epoch_boottime_ns: boottime_ns(),
            next_status_id: STATUS_ID_BASE,
            encoder,
            retries: 0,
        };
        client.opts.cluster_id = client.topology.cluster_id;
        if let Some(r) = replica {
            session.observe_rtt(r, rtt.as_nanos() as u64);
            client.links.insert((r, 0), link);
        }
        client.session = session;
        client
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn client_id(&self) -> u64 {
        self.session.client_id()
    }

    /// The leader this client currently routes group `g` to.
    pub fn leader_of(&self, g: u32) -> Option<u32> {
        self.session.leader_of(g)
    }

    /// The session's counters (retries, redirects, attempt timeouts, hedges, ...).
    pub fn stats(&self) -> SessionStats {
        self.session.stats()
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<Outcome, ClientError> {
        self.execute(Op::Put {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
        })
    }

    pub fn get(&mut self, key: &[u8], linearizable: bool) -> Result<Outcome, ClientError> {
        self.execute(Op::Get {
            key: Bytes::copy_from_slice(key),
            linearizable,
        })
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<Outcome, ClientError> {
        self.execute(Op::Delete {
            key: Bytes::copy_from_slice(key),
        })
    }

    pub fn cas(
        &mut self,
        key: &[u8],
        expected_version: u64,
        value: &[u8],
    ) -> Result<Outcome, ClientError> {
        self.execute(Op::Cas {
            key: Bytes::copy_from_slice(key),
            expected_version,
            value: Bytes::copy_from_slice(value),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn addr_of(&self, replica: u32, group: u32) -> Result<SocketAddr, String> {
        let r = self
            .topology
            .replicas
            .get(replica as usize)
            .ok_or_else(|| format!("replica {replica} is not in the topology"))?;
        let port = r.client_port_base + group as u16;
        (r.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("{}:{port}: {e}", r.host))?
            .next()
            .ok_or_else(|| format!("{}:{port} resolves to nothing", r.host))
    }

    /// The link to (replica, group), opened (connect + handshake within `timeout`) if needed.
    fn link(&mut self, replica: u32, group: u32, timeout: Duration) -> Result<&mut Link, String> {
        if !self.links.contains_key(&(replica, group)) {
            let addr = self.addr_of(replica, group)?;
            let hello = Hello::new(self.opts.cluster_id, CLIENT_ID_NONE, group);
            let t0 = Instant::now();
            let (link, topology) = Link::open(addr, timeout, &hello, &mut self.encoder)?;
            self.session
                .observe_rtt(replica, t0.elapsed().as_nanos() as u64);
            self.session.learn_leaders(&topology.leaders);
            self.links.insert((replica, group), link);
        }
        Ok(self
            .links
            .get_mut(&(replica, group))
            .expect("just inserted"))
    }

    /// A handshake with `replica` may take this long: twice the session's deadline for an
    /// attempt there, at least 200 ms, at most the attempt timeout. (A request is written only
    /// after the handshake, so a handshake that times out left the request undelivered.)
    fn handshake_budget(&self, replica: u32) -> Duration {
        Duration::from_nanos(self.session.rto_ns(replica).saturating_mul(2))
            .max(Duration::from_millis(200))
            .min(self.opts.attempt_timeout)
    }

    /// Sends everything the session wants sent.
    fn flush_transmits(&mut self) {
        while let Some(t) = self.session.poll_transmit() {
            let budget = self.handshake_budget(t.replica);
            let request_id = t.request.id;
            let mut request = t.request;
            if request.fast_deadline_ns > 0 {
                request.fast_deadline_ns += self.epoch_boottime_ns;
            }
            let frame = ClientFrame::Request(request);
            let mut enc = std::mem::take(&mut self.encoder);
            let sent = match self.link(t.replica, t.group, budget) {
                Err(e) => Err((false, e)),
                Ok(link) => link.send(&mut enc, &frame).map_err(|e| (true, e)),
            };
            self.encoder = enc;
            let now = self.now();
            match sent {
                Ok(()) => {}
                Err((false, e)) => self.session.on_send_failed(now, request_id, &e),
                Err((true, e)) => {
                    // Part of it may have been written.
                    self.links.remove(&(t.replica, t.group));
                    self.session.on_link_failed(now, t.replica, t.group, &e);
                }
            }
        }
    }

    /// Waits for replies until `deadline` (session nanoseconds) or until some arrived, and
    /// feeds them (and broken connections) to the session.
    fn wait(&mut self, deadline: u64) {
        let keys: Vec<(u32, u32)> = self.links.keys().copied().collect();
        let mut frames: Vec<((u32, u32), ServerFrame)> = Vec::new();
        let mut failed: Vec<((u32, u32), String)> = Vec::new();
        // Frames a handshake or status read left in a buffer.
        for k in &keys {
            match self.links.get_mut(k).expect("listed").buffered() {
                Ok(f) => frames.extend(f.into_iter().map(|f| (*k, f))),
                Err(e) => failed.push((*k, e)),
            }
        }
        if frames.is_empty() && failed.is_empty() {
            let left = deadline.saturating_sub(self.now());
            let mut fds: Vec<libc::pollfd> = keys
                .iter()
                .map(|k| libc::pollfd {
                    fd: self.links[k].stream.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = left.div_ceil(1_000_000).min(i32::MAX as u64) as libc::c_int;
            if fds.is_empty() {
                std::thread::sleep(Duration::from_nanos(left));
            } else {
                // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call.
                let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
                if n > 0 {
                    for (k, p) in keys.iter().zip(&fds) {
                        if p.revents == 0 {
                            continue;
                        }
                        match self.links.get_mut(k).expect("listed").read_ready() {
                            Ok(f) => frames.extend(f.into_iter().map(|f| (*k, f))),
                            Err(e) => failed.push((*k, e)),
                        }
                    }
                }
            }
        }
        let now = self.now();
        for ((r, g), frame) in frames {
            match frame {
                ServerFrame::Reply { id, outcome } => self.session.on_reply(now, r, g, id, outcome),
                ServerFrame::Error(e) => {
                    failed.push(((r, g), format!("{:?}: {}", e.code, e.message)))
                }
                // Late status answers and the like.
                _ => {}
            }
        }
        for ((r, g), e) in failed {
            if self.links.remove(&(r, g)).is_some() {
                self.session.on_link_failed(now, r, g, &e);
            }
        }
    }

    /// Sends one operation to its group's leader, following redirects and retrying (with the
    /// same sequence number) until it gets an answer or `op_timeout` passes. A write that gave
    /// up after reaching a replica is [`ClientError::Unknown`]; anything else that gave up was
    /// not applied ([`ClientError::Timeout`]).
    pub fn execute(&mut self, op: Op) -> Result<Outcome, ClientError> {
        let now = self.now();
        let id = self.session.start(now, op);
        loop {
            self.flush_transmits();
            let mut result = None;
            while let Some((done, r)) = self.session.poll_complete() {
                if done == id {
                    result = Some(r);
                }
            }
            if let Some(r) = result {
                self.retries = self.session.stats().retries;
                let t = self.opts.op_timeout;
                return r.map_err(|e| match e {
                    SessionError::NotApplied { reason, .. } => ClientError::Timeout(t, reason),
                    SessionError::Unknown { reason, .. } => ClientError::Unknown(t, reason),
                    e @ SessionError::WrongGroup { .. } => ClientError::Protocol(e.to_string()),
                });
            }
            let Some(deadline) = self.session.poll_timeout() else {
                return Err(ClientError::Protocol(
                    "the session has nothing to wait for (bug)".into(),
                ));
            };
            if self.now() < deadline {
                self.wait(deadline);
            }
            let now = self.now();
            if now >= deadline {
                self.session.on_timeout(now);
            }
        }
    }

    /// `mpaxos snapshot save`: group `group`'s state machine as its leader holds it now (a
    /// kv snapshot, checked by its crc32c), fetched in parts. Returns the slot and the bytes.
    pub fn export_snapshot(&mut self, group: u32) -> Result<(u64, Vec<u8>), String> {
        let deadline = Instant::now() + self.opts.op_timeout.max(Duration::from_secs(1));
        let mut last_problem = String::from("no leader found");
        while Instant::now() < deadline {
            let leader = self
                .status_all()
                .into_iter()
                .find(|(_, g, st)| *g == group && st.as_ref().is_ok_and(|s| s.role == "leader"))
                .map(|(r, _, _)| r);
            let Some(leader) = leader else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            match self.export_from(leader, group) {
                Ok(done) => return Ok(done),
                Err(e) => {
                    last_problem = format!("replica {leader}: {e}");
                    self.links.remove(&(leader, group));
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Err(format!(
            "could not read group {group}'s snapshot: {last_problem}"
        ))
    }

    fn export_from(&mut self, replica: u32, group: u32) -> Result<(u64, Vec<u8>), String> {
        let timeout = self.opts.attempt_timeout;
        let mut enc = std::mem::take(&mut self.encoder);
        let mut out = Vec::new();
        let (mut slot, mut crc) = (0, 0);
        let res = loop {
            let id = self.next_status_id;
            self.next_status_id += 1;
            let frame = ClientFrame::Snapshot {
                id,
                slot,
                offset: out.len() as u64,
            };
            let link = match self.link(replica, group, timeout) {
                Ok(l) => l,
                Err(e) => break Err(e),
            };
            if let Err(e) = link.send(&mut enc, &frame) {
                break Err(e);
            }
            let part = loop {
                match link.recv(Instant::now() + timeout) {
                    Ok(ServerFrame::Snapshot {
                        id: got,
                        refused,
                        slot,
                        offset,
                        total_bytes,
                        crc,
                        data,
                    }) if got == id => break Ok((refused, slot, offset, total_bytes, crc, data)),
                    Ok(ServerFrame::Error(e)) => break Err(format!("{:?}: {}", e.code, e.message)),
                    Ok(_) => continue,
                    Err(e) => break Err(e),
                }
            };
            let (refused, at, offset, total, part_crc, data) = match part {
                Ok(p) => p,
                Err(e) => break Err(e),
            };
            if let Some(why) = refused {
                break Err(why);
            }
            if (slot != 0 && at != slot) || offset != out.len() as u64 {
                break Err("the export changed under us".into());
            }
            slot = at;
            crc = part_crc;
            out.extend_from_slice(&data);
            if out.len() as u64 >= total {
                break Ok(());
            }
            if data.is_empty() {
                break Err("the server sent an empty part".into());
            }
        };
        self.encoder = enc;
        res?;
        if crate::kv::snapshot::checksum(&out) != crc {
            return Err("the snapshot arrived damaged (checksum mismatch)".into());
        }
        Ok((slot, out))
    }

    /// Every (replica, group)'s status; unreachable ones come back as an error string.
    pub fn status_all(&mut self) -> Vec<(u32, u32, Result<GroupStatus, String>)> {
        let mut out = Vec::new();
        for r in 0..self.topology.replicas.len() as u32 {
            for g in 0..self.topology.groups {
                let id = self.next_status_id;
                self.next_status_id += 1;
                let timeout = self.opts.attempt_timeout;
                let deadline = Instant::now() + timeout;
                let mut enc = std::mem::take(&mut self.encoder);
                let res = (|| {
                    let link = self.link(r, g, timeout)?;
                    link.send(&mut enc, &ClientFrame::Status { id })?;
                    loop {
                        match link.recv(deadline)? {
                            ServerFrame::Status { id: got, status } if got == id => {
                                return Ok(status)
                            }
                            ServerFrame::Error(e) => {
                                return Err(format!("{:?}: {}", e.code, e.message))
                            }
                            _ => continue,
                        }
                    }
                })();
                self.encoder = enc;
                if res.is_err() {
                    self.links.remove(&(r, g));
                }
                out.push((r, g, res));
            }
        }
        out
    }
}
