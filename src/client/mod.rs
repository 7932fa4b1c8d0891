//! The client library: topology discovery, routing by `group_of(key) % G`, leader redirects,
//! timeouts and retries that stay exactly-once (DESIGN §2, §4).
//!
//! A [`Client`] is one logical client: one client id, one request at a time, sequence numbers
//! increasing by one per write. A retry resends the same (client id, sequence), so the store
//! applies the write at most once however many times it is sent. Blocking I/O; the load
//! generator runs many of these.

pub mod cli;
pub mod session;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::net::frame::{access, FrameReader};
use crate::net::wire::{
    group_of, ClientFrame, GroupStatus, Hello, Op, Outcome, Request, ServerFrame, Topology,
    CLIENT_ID_NONE,
};
use crate::net::FrameEncoder;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `host:port` of any replica's group-0 client port.
    pub endpoints: Vec<String>,
    /// 0 = learn it from the first replica that answers.
    pub cluster_id: u64,
    /// One attempt (connect, or wait for a reply) takes at most this long.
    pub attempt_timeout: Duration,
    /// A whole operation, retries included, takes at most this long.
    pub op_timeout: Duration,
    /// Start of the exponential backoff between retries that found no leader.
    pub backoff: Duration,
}

impl ClientOptions {
    pub fn new(endpoints: Vec<String>) -> ClientOptions {
        ClientOptions {
            endpoints,
            cluster_id: 0,
            attempt_timeout: Duration::from_millis(1000),
            op_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(5),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach any endpoint ({0})")]
    Unreachable(String),
    #[error("the server refused: {0}")]
    Refused(String),
    #[error("no answer within {0:?} (last problem: {1})")]
    Timeout(Duration, String),
    #[error("the server sent something unexpected: {0}")]
    Protocol(String),
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
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut link = Link {
            stream,
            reader: FrameReader::default(),
            out: Vec::new(),
        };
        link.send(enc, &ClientFrame::Hello(hello.clone()))?;
        match link.recv(Instant::now() + timeout)? {
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

pub struct Client {
    opts: ClientOptions,
    topology: Topology,
    links: HashMap<(u32, u32), Link>,
    leaders: Vec<Option<u32>>,
    /// Rotates through replicas when no leader is known.
    probe: u32,
    client_id: u64,
    seq: u64,
    next_id: u64,
    encoder: FrameEncoder,
    /// Retries made (a redirect, a timeout, a busy server), for the load generator.
    pub retries: u64,
}

impl Client {
    /// Connects to the first endpoint that answers and learns the cluster's topology.
    pub fn connect(opts: ClientOptions) -> Result<Client, ClientError> {
        let mut encoder = FrameEncoder::new();
        let mut problems = Vec::new();
        for ep in &opts.endpoints {
            let addr = match ep.to_socket_addrs().map(|mut a| a.next()) {
                Ok(Some(a)) => a,
                _ => {
                    problems.push(format!("{ep}: cannot resolve"));
                    continue;
                }
            };
            let hello = Hello::new(opts.cluster_id, CLIENT_ID_NONE, 0);
            match Link::open(addr, opts.attempt_timeout, &hello, &mut encoder) {
                Ok((link, topology)) => {
                    // Which replica answered: the one whose address this is (replicas on
                    // different hosts often share port numbers, so the port alone is not
                    // enough). None: keep no link, one opens on first use.
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
                    let mut client = Client {
                        leaders: topology.leaders.clone(),
                        topology,
                        opts: opts.clone(),
                        links: HashMap::new(),
                        probe: 0,
                        client_id: rand::random::<u64>() | 1,
                        seq: 0,
                        next_id: 1,
                        encoder,
                        retries: 0,
                    };
                    client.opts.cluster_id = client.topology.cluster_id;
                    if let Some(r) = replica {
                        client.links.insert((r, 0), link);
                    }
                    return Ok(client);
                }
                Err(e) if e.contains("refused the handshake") => {
                    return Err(ClientError::Refused(e))
                }
                Err(e) => problems.push(e),
            }
        }
        Err(ClientError::Unreachable(problems.join("; ")))
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The leader this client currently routes group `g` to.
    pub fn leader_of(&self, g: u32) -> Option<u32> {
        self.leaders.get(g as usize).copied().flatten()
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

    fn link(&mut self, replica: u32, group: u32) -> Result<&mut Link, String> {
        if !self.links.contains_key(&(replica, group)) {
            let addr = self.addr_of(replica, group)?;
            let hello = Hello::new(self.opts.cluster_id, CLIENT_ID_NONE, group);
            let (link, topology) =
                Link::open(addr, self.opts.attempt_timeout, &hello, &mut self.encoder)?;
            for (g, l) in topology.leaders.iter().enumerate() {
                if self.leaders.get(g).is_some_and(|x| x.is_none()) {
                    self.leaders[g] = *l;
                }
            }
            self.links.insert((replica, group), link);
        }
        Ok(self
            .links
            .get_mut(&(replica, group))
            .expect("just inserted"))
    }

    /// Sends one operation to its group's leader, following redirects and retrying (with the
    /// same sequence number) until it gets an answer or `op_timeout` passes.
    pub fn execute(&mut self, op: Op) -> Result<Outcome, ClientError> {
        let key = match &op {
            Op::Get { key, .. }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. } => key,
        };
        let group = group_of(key, self.topology.groups);
        if !matches!(op, Op::Get { .. }) {
            self.seq += 1;
        }
        let request = Request {
            id: 0,
            client_id: self.client_id,
            seq: self.seq,
            op,
        };
        let start = Instant::now();
        let deadline = start + self.opts.op_timeout;
        let mut backoff = self.opts.backoff;
        let mut last_problem = String::from("none");
        let replicas = self.topology.replicas.len() as u32;
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(self.opts.op_timeout, last_problem));
            }
            let target = match self.leaders[group as usize] {
                Some(l) if l < replicas => l,
                _ => {
                    self.probe = (self.probe + 1) % replicas;
                    self.probe
                }
            };
            let mut req = request.clone();
            req.id = self.next_id;
            self.next_id += 1;
            match self.attempt(target, group, &req, deadline) {
                Ok(Outcome::NotLeader { leader }) => {
                    last_problem = format!("replica {target} is not the leader of group {group}");
                    let known_new = leader.is_some_and(|l| l != target);
                    self.leaders[group as usize] = leader.filter(|&l| l != target);
                    if !known_new {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_millis(200));
                    }
                }
                Ok(Outcome::Busy) => {
                    last_problem = format!("replica {target} is busy");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Ok(Outcome::WrongGroup { group: g }) => {
                    return Err(ClientError::Protocol(format!(
                        "the server places this key in group {g}, the client in {group}: client and server disagree on the group count"
                    )));
                }
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    last_problem = format!("replica {target}: {e}");
                    self.links.remove(&(target, group));
                    self.leaders[group as usize] = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
            }
            self.retries += 1;
        }
    }

    fn attempt(
        &mut self,
        target: u32,
        group: u32,
        req: &Request,
        deadline: Instant,
    ) -> Result<Outcome, String> {
        let attempt_deadline = deadline.min(Instant::now() + self.opts.attempt_timeout);
        let frame = ClientFrame::Request(req.clone());
        // The encoder lives beside the links; take it out while a link is borrowed.
        let mut enc = std::mem::take(&mut self.encoder);
        let result = (|| {
            let link = self.link(target, group)?;
            link.send(&mut enc, &frame)?;
            loop {
                match link.recv(attempt_deadline)? {
                    ServerFrame::Reply { id, outcome } if id == req.id => return Ok(outcome),
                    ServerFrame::Reply { .. } => continue, // an answer to an abandoned attempt
                    ServerFrame::Error(e) => return Err(format!("{:?}: {}", e.code, e.message)),
                    other => return Err(format!("unexpected frame {other:?}")),
                }
            }
        })();
        self.encoder = enc;
        result
    }

    /// Every (replica, group)'s status; unreachable ones come back as an error string.
    pub fn status_all(&mut self) -> Vec<(u32, u32, Result<GroupStatus, String>)> {
        let mut out = Vec::new();
        for r in 0..self.topology.replicas.len() as u32 {
            for g in 0..self.topology.groups {
                let id = self.next_id;
                self.next_id += 1;
                let deadline = Instant::now() + self.opts.attempt_timeout;
                let mut enc = std::mem::take(&mut self.encoder);
                let res = (|| {
                    let link = self.link(r, g)?;
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
