//! The load generator's engine: one mio loop driving many logical clients.
//!
//! A *client* owns its own connections (one per replica and group it talks to) and its own
//! leader cache; it runs `outstanding` *sessions*, each a client id with one request in flight
//! at a time, so retries stay exactly-once (same client id and sequence number).
//!
//! Closed loop: a session sends its next request when the previous one completes; latency is
//! measured from the send. Open loop: requests are scheduled by an arrival process,
//! independent of completions; a request that finds no free session waits in a backlog, and
//! its latency is measured from its scheduled time (coordinated-omission safe, architecture §10).
//!
//! With a placement, every message between a client and a replica is held for the one-way
//! delay between their regions (in a FIFO per link), in both directions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::stats::{new_histogram, IntervalLog, Recorder, SeriesKey};
use super::workload::{key_bytes, Arrival, Arrivals, KeyDist, KeyPicker};
use crate::net::frame::{access, FrameEncoder, FrameReader};
use crate::net::placement::Placement;
use crate::net::timerfd::{TimerClock, TimerFd};
use crate::net::wire::{
    ClientFrame, Hello, Op, Outcome, Request, ServerFrame, Topology, CLIENT_ID_NONE,
};

/// Where a client sends a linearizable read first.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ReadFrom {
    /// The leader (as cached from redirects).
    #[default]
    Leader,
    /// The client's nearest replica: in its region (else the lowest RTT) under a placement,
    /// spread over the replicas without one. A replica that cannot serve it locally (no
    /// quorum lease) redirects it to the leader.
    Nearest,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub topology: Topology,
    pub clients: usize,
    /// Connections the clients share to each (replica, group), like etcd's benchmark
    /// `--conns`: 0 gives every client its own. Clients share only with clients of their own
    /// region (a placement's delays are per link).
    pub conns: usize,
    /// Sessions per client (closed loop: requests in flight per client).
    pub outstanding: usize,
    /// Open loop at this many requests per second (all clients together).
    pub rate: Option<f64>,
    pub arrival: Arrival,
    pub warmup: Duration,
    pub duration: Duration,
    pub read_ratio: f64,
    pub linearizable_reads: bool,
    pub read_from: ReadFrom,
    pub keys: u64,
    pub key_dist: KeyDist,
    pub value_bytes: usize,
    pub key_bytes: usize,
    pub seed: u64,
    pub placement: Option<Placement>,
    pub attempt_timeout: Duration,
    /// After the run, how long to wait for requests still in flight.
    pub drain_timeout: Duration,
    /// Status round trips per (client region, replica) link measured before the run.
    pub probes_per_link: u32,
    /// Poll without sleeping for up to this long before blocking: a thread woken from sleep
    /// on a VM can take tens of microseconds to run, which would be charged to the system
    /// under test.
    pub spin: Duration,
    /// Wake this long before every deadline (a scheduled send, a retry, a delayed frame) and
    /// spin through the rest, so deadlines are met to within microseconds instead of the
    /// kernel's wake-up latency. The sleep itself uses a timerfd (nanosecond resolution), not
    /// epoll's millisecond timeout.
    pub deadline_spin: Duration,
    /// Mixed into every session's client id. `None`: a fresh random value per run (time, pid
    /// and OS randomness), so two runs with one seed against one cluster never share ids.
    pub client_id_nonce: Option<u64>,
    /// Keep every measured request's send time and latency (`EngineResult::timeline`).
    pub timeline: bool,
    /// `--anatomy`: trace one measured request in this many (0: none); see `bench::anatomy`.
    pub anatomy_every: u32,
}

/// An open-loop run whose send-lag p99 exceeds this many microseconds is flagged: the load
/// generator did not keep its own schedule, and the lateness is inside every open-loop latency.
pub const SEND_LAG_P99_FLAG_US: f64 = 100.0;

/// A link's measured round trip against its configured one.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct LinkRtt {
    pub client_region: String,
    pub replica: u32,
    pub replica_region: String,
    pub configured_rtt_ms: f64,
    pub measured_rtt_ms_p50: f64,
    pub measured_rtt_ms_min: f64,
    pub samples: usize,
}

pub struct EngineResult {
    /// Latencies of requests that succeeded (errors are never recorded here).
    pub recorder: Recorder,
    /// Censored latencies: for each measured request that had not completed when the run
    /// ended, the time it had waited by then (a lower bound of its latency).
    pub censored: Recorder,
    /// Actual send minus the moment the request could have been sent (its scheduled time, or
    /// when a session became free for it, whichever is later), per measured request.
    pub send_lag: hdrhistogram::Histogram<u64>,
    /// Successful completions whose reply arrived inside the measured window.
    pub completed_in_window: u64,
    /// The measured window as it really elapsed (seconds): from its start to the first moment
    /// the engine saw it end.
    pub elapsed_s: f64,
    /// Open loop: requests scheduled inside the window.
    pub offered: u64,
    /// Open loop: requests scheduled but not completed (backlog plus in flight), sampled at the
    /// start of the window and after every second of it (the last sample at its end).
    pub queue_samples: Vec<u64>,
    /// Final outcomes other than success, by kind (see [`ErrorKind`]); a measured request
    /// counts once.
    pub errors_by_kind: std::collections::BTreeMap<String, u64>,
    /// The value mixed into this run's client ids, and the ids (one per session).
    pub client_id_nonce: u64,
    pub client_ids: Vec<u64>,
    /// Why attempts were retried (mpaxos: busy, not_leader, timeout, link_lost, connect,
    /// refused); retried requests that then succeeded are successes.
    pub retries_by_kind: std::collections::BTreeMap<String, u64>,
    pub intervals: IntervalLog,
    /// `--timeline`: every measured request (up to `timeline::TIMELINE_MAX`).
    pub timeline: Vec<TimelinePoint>,
    /// `--anatomy`: the traced requests that succeeded at their first attempt.
    pub anatomy: Vec<super::anatomy::Sample>,
    /// The measured window on the monotonic clock (for samplers running beside the engine).
    pub window: (Instant, Instant),
    pub started: std::time::SystemTime,
    /// Requests scheduled (open) or sent (closed) inside the measured window that completed.
    pub completed: u64,
    /// Measured requests that never completed (drain timeout) — counted, never dropped.
    pub unfinished: u64,
    pub retries: u64,
    pub redirects: u64,
    pub timeouts: u64,
    /// Measured requests that ended in a definite error (every kind but `unknown_outcome` and
    /// `timeout`, which are also the unfinished ones).
    pub errors: u64,
    pub measured_s: f64,
    pub links: Vec<LinkRtt>,
    /// The leader each client ended up talking to, per group (most common answer).
    pub leaders: Vec<Option<u32>>,
}

const BACKOFF_NS: u64 = 5_000_000;
/// How long reads bypass a nearest replica whose link failed before trying it again.
const HOME_RETRY_NS: u64 = 1_000_000_000;

/// The replica nearest to a client of `region`: one in that region, else the lowest RTT (ties:
/// the lowest id). Without a placement, clients are spread over the replicas.
fn nearest_replica(placement: Option<&Placement>, region: &str, client: usize, n: u32) -> u32 {
    let Some(p) = placement else {
        return client as u32 % n;
    };
    let rtt = |r: u32| {
        let rr = p.replica_region(r as usize);
        if rr == region {
            0.0
        } else {
            p.rtt_ms(region, rr).unwrap_or(f64::MAX)
        }
    };
    // Among equally near replicas (several in the client's region, or a one-region placement),
    // clients take turns, so their reads spread over those replicas instead of all landing on
    // the lowest id.
    let turn = |r: u32| (r + n - client as u32 % n) % n;
    (0..n)
        .min_by(|a, b| rtt(*a).total_cmp(&rtt(*b)).then(turn(*a).cmp(&turn(*b))))
        .unwrap_or(0)
}

/// The wake-up timer's token (links use their index).
const TIMER_TOKEN: Token = Token(usize::MAX);

/// How a request ended when it did not succeed (`errors_by_kind`), or why an attempt was
/// retried (`retries_by_kind`).
pub mod kind {
    /// The server saw an older sequence number from this client id (ids reused across runs).
    pub const STALE: &str = "stale";
    /// The request was invalid (too large, malformed, ...).
    pub const INVALID: &str = "invalid";
    pub const WRONG_GROUP: &str = "wrong_group";
    /// The server refused the connection (wrong cluster, ...).
    pub const REFUSED: &str = "refused";
    /// The leader's queue was full (mpaxos retries; etcd's "too many requests").
    pub const BUSY: &str = "busy";
    pub const NOT_LEADER: &str = "not_leader";
    /// A read (or a write never sent) without an answer when the run ended, or an attempt that
    /// timed out.
    pub const TIMEOUT: &str = "timeout";
    /// A write sent at least once without an answer: it may or may not have been applied.
    pub const UNKNOWN_OUTCOME: &str = "unknown_outcome";
    /// Open loop: scheduled in the window, never sent (no free session) when the run ended.
    pub const NOT_SENT: &str = "not_sent";
    pub const LINK_LOST: &str = "link_lost";
    pub const CONNECT: &str = "connect";
    pub const OTHER: &str = "other";
    /// Kinds that do not say the request failed: its outcome is unknown (also `unfinished`).
    pub fn is_unfinished(kind: &str) -> bool {
        matches!(kind, TIMEOUT | UNKNOWN_OUTCOME | NOT_SENT)
    }
    /// The kind of an `Invalid` reply from its reason.
    pub fn of_invalid(reason: &str) -> &'static str {
        if reason.contains("older than") || reason.to_ascii_lowercase().contains("stale") {
            STALE
        } else {
            INVALID
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Connecting,
    Up,
}

struct Link {
    stream: TcpStream,
    state: LinkState,
    reader: FrameReader,
    out: Vec<u8>,
    out_pos: usize,
    /// One-way delay to the replica (placement), ns.
    delay_ns: u64,
    delayed_out: VecDeque<(u64, Vec<u8>)>,
    /// request id → session
    waiting: HashMap<u64, usize>,
    client: usize,
    replica: u32,
}

struct InFlight {
    op: Op,
    kind: &'static str,
    group: u32,
    scheduled_ns: u64,
    sent_ns: u64,
    req_id: u64,
    link: Option<usize>,
    target: u32,
    measured: bool,
    seq: u64,
    /// A linearizable read already went to the client's nearest replica once.
    tried_home: bool,
    /// The current attempt is at the nearest replica (a local read if it answers).
    at_home: bool,
    /// Fast Paxos: the current attempt of this write went to every replica (the nearest as
    /// `target`); the first definite answer from any of them completes it.
    fanned_out: bool,
    /// `--anatomy`: the current attempt is traced (only ever a first attempt).
    traced: bool,
}

struct Session {
    client: usize,
    client_id: u64,
    /// Per group, the last sequence number used there (each group's store keeps its own
    /// session of the client id and must see its numbers contiguous from 1).
    seqs: Vec<u64>,
    region_idx: usize,
    busy: Option<InFlight>,
    /// When the session last became free (for the send lag).
    free_since: u64,
}

struct Client {
    leaders: Vec<Option<u32>>,
    /// `ReadFrom::Nearest`: the replica linearizable reads go to first.
    home: Option<u32>,
    /// Until then reads skip `home` and go to the leader: its link failed (a dead or
    /// restarting replica), and paying a failed connect and a backoff on every read would
    /// measure the client's retry policy, not the cluster.
    home_down_until: u64,
    /// Fast Paxos clusters: the nearest replica, whose answer to a write the client expects.
    fast_home: Option<u32>,
    probe: u32,
    /// (replica, group) → link index
    links: HashMap<(u32, u32), usize>,
    region: String,
}

enum Timer {
    /// Resend the session's request (after a backoff).
    Retry { session: usize, req_id: u64 },
    /// Give up on this attempt if it is still the current one.
    AttemptTimeout { session: usize, req_id: u64 },
    /// A reply held back by the placement delay.
    Deliver {
        link: usize,
        frame: Box<ServerFrame>,
    },
}

/// Which client's links each client uses (`EngineConfig::conns`): itself, or with `conns`
/// shared connections the client `c % m`, where `m` is `conns` rounded up to a multiple of the
/// regions — clients are spread over regions as `c % regions`, so `c` and `c % m` share one.
fn link_owners(clients: usize, conns: usize, regions: usize) -> Vec<usize> {
    let regions = regions.max(1);
    let m = conns.div_ceil(regions) * regions;
    (0..clients)
        .map(|c| if conns == 0 || m >= clients { c } else { c % m })
        .collect()
}

/// A value no other run shares: OS randomness mixed with the clock and the pid.
fn fresh_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    rand::random::<u64>() ^ t.rotate_left(17) ^ ((std::process::id() as u64) << 40)
}

pub struct Engine {
    cfg: EngineConfig,
    poll: Poll,
    encoder: FrameEncoder,
    links: Vec<Option<Link>>,
    clients: Vec<Client>,
    /// Per client, the client whose links it uses (`link_owners`).
    owner: Vec<usize>,
    sessions: Vec<Session>,
    free: VecDeque<usize>,
    backlog: VecDeque<u64>,
    timers: BinaryHeap<Reverse<(u64, u64)>>,
    timer_data: HashMap<u64, Timer>,
    next_timer: u64,
    next_req: u64,
    rng: ChaCha8Rng,
    keys: KeyPicker,
    value: Bytes,
    key_buf: Vec<u8>,
    epoch: Instant,
    regions: Vec<String>,
    // measurement
    recorder: Recorder,
    interval: HashMap<&'static str, hdrhistogram::Histogram<u64>>,
    intervals: IntervalLog,
    measure_start: u64,
    measure_end: u64,
    completed: u64,
    measured_in_flight: u64,
    retries: u64,
    redirects: u64,
    timeouts: u64,
    errors: u64,
    stopping: bool,
    // probes: id → (link, sent)
    probes: HashMap<u64, (usize, u64)>,
    probe_samples: HashMap<(usize, u32), Vec<u64>>,
    wake_timer: Option<TimerFd>,
    censored: Recorder,
    send_lag: hdrhistogram::Histogram<u64>,
    completed_in_window: u64,
    errors_by_kind: std::collections::BTreeMap<String, u64>,
    retries_by_kind: std::collections::BTreeMap<String, u64>,
    client_id_nonce: u64,
    /// Live figures for the progress bar: every success (warm-up included), and the measured
    /// latencies at two significant digits (cheap to record and to read once a second).
    succeeded: u64,
    live: hdrhistogram::Histogram<u64>,
    /// `--timeline`: every measured request, and the engine's start on its clock.
    timeline: Vec<TimelinePoint>,
    t0: u64,
    /// `--anatomy`: requests counted for sampling, the samples, the stamps of the traced
    /// reply being handled, and what to add to this engine's clock to get the servers'
    /// (CLOCK_BOOTTIME).
    traced_counter: u64,
    anatomy: Vec<super::anatomy::Sample>,
    reply_stamps: Option<Vec<u64>>,
    server_clock_offset: u64,
}

/// One measured request for `--timeline`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimelinePoint {
    /// From the engine's start to the send (closed loop) or scheduled send (open loop).
    pub sent_ns: u64,
    pub op: &'static str,
    pub latency_ns: u64,
    /// Unfinished at the end: `latency_ns` is what it had waited by then.
    pub censored: bool,
}

/// What the progress bar shows while a run is going: how far it is, the ops/s of the last
/// second and the p99 of the measured requests so far.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Warm-up + measurement done, 0–1.
    pub fraction: f64,
    pub ops_per_s: Option<f64>,
    pub p99_us: Option<f64>,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Result<Engine, String> {
        if cfg.clients == 0 || cfg.outstanding == 0 {
            return Err("--clients and --outstanding must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&cfg.read_ratio) {
            return Err("--read-ratio must be between 0 and 1".into());
        }
        if cfg.value_bytes > crate::kv::VALUE_BYTES_MAX {
            return Err(format!(
                "--value-size {} is over the store's {}-byte limit",
                cfg.value_bytes,
                crate::kv::VALUE_BYTES_MAX
            ));
        }
        let keys = KeyPicker::new(cfg.keys, cfg.key_dist.clone())?;
        if cfg.key_bytes < super::workload::min_key_size(cfg.keys) {
            return Err(format!(
                "--key-size {} cannot hold {} distinct keys; use at least {}",
                cfg.key_bytes,
                cfg.keys,
                super::workload::min_key_size(cfg.keys)
            ));
        }
        let regions: Vec<String> = match &cfg.placement {
            Some(p) => p.clients.clone(),
            None => vec!["local".into()],
        };
        let groups = cfg.topology.groups as usize;
        let replicas = cfg.topology.replicas.len() as u32;
        let clients = (0..cfg.clients)
            .map(|c| Client {
                leaders: cfg.topology.leaders.clone(),
                home_down_until: 0,
                home: (cfg.read_from == ReadFrom::Nearest && replicas > 0).then(|| {
                    nearest_replica(
                        cfg.placement.as_ref(),
                        &regions[c % regions.len()],
                        c,
                        replicas,
                    )
                }),
                fast_home: (cfg.topology.fast_paxos && replicas > 0).then(|| {
                    nearest_replica(
                        cfg.placement.as_ref(),
                        &regions[c % regions.len()],
                        c,
                        replicas,
                    )
                }),
                probe: c as u32,
                links: HashMap::new(),
                region: regions[c % regions.len()].clone(),
            })
            .collect::<Vec<_>>();
        let owner = link_owners(cfg.clients, cfg.conns, regions.len());
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        // Client ids: the workload stays reproducible from the seed, but ids must not repeat
        // across runs (a server remembers each id's last sequence number and would answer a
        // reused id's first writes "stale").
        let client_id_nonce = cfg.client_id_nonce.unwrap_or_else(fresh_nonce);
        let mut id_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ client_id_nonce);
        let mut sessions = Vec::new();
        for c in 0..cfg.clients {
            for _ in 0..cfg.outstanding {
                sessions.push(Session {
                    client: c,
                    client_id: id_rng.gen::<u64>() | 1,
                    seqs: vec![0; groups],
                    region_idx: c % regions.len(),
                    busy: None,
                    free_since: 0,
                });
            }
        }
        assert!(groups > 0);
        let poll = Poll::new().map_err(|e| e.to_string())?;
        let wake_timer = match TimerFd::new(TimerClock::Monotonic).and_then(|t| {
            poll.registry()
                .register(
                    &mut mio::unix::SourceFd(&t.fd()),
                    TIMER_TOKEN,
                    Interest::READABLE,
                )
                .map(|_| t)
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("no timerfd ({e}): deadlines fall back to epoll's milliseconds");
                None
            }
        };
        // The servers stamp traced requests on CLOCK_BOOTTIME; this engine's clock is the time
        // since `epoch` (CLOCK_MONOTONIC). Both tick at one rate, so one offset converts.
        let epoch = Instant::now();
        let server_clock_offset =
            crate::client::boottime_ns().wrapping_sub(epoch.elapsed().as_nanos() as u64);
        Ok(Engine {
            poll,
            encoder: FrameEncoder::new(),
            links: Vec::new(),
            clients,
            owner,
            free: (0..sessions.len()).collect(),
            sessions,
            backlog: VecDeque::new(),
            timers: BinaryHeap::new(),
            timer_data: HashMap::new(),
            next_timer: 0,
            next_req: 1,
            rng,
            keys,
            value: Bytes::from(vec![b'x'; cfg.value_bytes]),
            key_buf: Vec::new(),
            epoch,
            regions,
            recorder: Recorder::default(),
            interval: HashMap::new(),
            intervals: IntervalLog::new(),
            measure_start: u64::MAX,
            measure_end: u64::MAX,
            completed: 0,
            measured_in_flight: 0,
            retries: 0,
            redirects: 0,
            timeouts: 0,
            errors: 0,
            stopping: false,
            probes: HashMap::new(),
            probe_samples: HashMap::new(),
            wake_timer,
            censored: Recorder::default(),
            send_lag: new_histogram(),
            completed_in_window: 0,
            errors_by_kind: Default::default(),
            retries_by_kind: Default::default(),
            client_id_nonce,
            succeeded: 0,
            timeline: Vec::new(),
            t0: 0,
            traced_counter: 0,
            anatomy: Vec::new(),
            reply_stamps: None,
            server_clock_offset,
            live: hdrhistogram::Histogram::new_with_bounds(
                1,
                crate::bench::stats::LATENCY_NS_MAX,
                2,
            )
            .expect("valid histogram bounds"),
            cfg,
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn add_timer(&mut self, at: u64, t: Timer) {
        self.next_timer += 1;
        self.timers.push(Reverse((at, self.next_timer)));
        self.timer_data.insert(self.next_timer, t);
    }

    fn replica_region(&self, replica: u32) -> String {
        match &self.cfg.placement {
            Some(p) => p.replica_region(replica as usize).to_string(),
            None => "local".into(),
        }
    }

    fn addr(&self, replica: u32, group: u32) -> Result<SocketAddr, String> {
        let r = &self.cfg.topology.replicas[replica as usize];
        (r.host.as_str(), r.client_port_base + group as u16)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", r.host))
    }

    /// The link of `client` to (`replica`, `group`) — its owner's (`link_owners`) — connecting
    /// if needed.
    fn link(&mut self, client: usize, replica: u32, group: u32) -> Option<usize> {
        let client = self.owner[client];
        if let Some(&l) = self.clients[client].links.get(&(replica, group)) {
            if self.links[l].is_some() {
                return Some(l);
            }
        }
        let addr = self.addr(replica, group).ok()?;
        let mut stream = TcpStream::connect(addr).ok()?;
        let idx = self
            .links
            .iter()
            .position(|l| l.is_none())
            .unwrap_or_else(|| {
                self.links.push(None);
                self.links.len() - 1
            });
        self.poll
            .registry()
            .register(
                &mut stream,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        let _ = stream.set_nodelay(true);
        let delay_ns = match &self.cfg.placement {
            Some(p) => p.one_way_ns(
                &self.clients[client].region,
                p.replica_region(replica as usize),
            ),
            None => 0,
        };
        let mut link = Link {
            stream,
            state: LinkState::Connecting,
            reader: FrameReader::default(),
            out: Vec::new(),
            out_pos: 0,
            delay_ns,
            delayed_out: VecDeque::new(),
            waiting: HashMap::new(),
            client,
            replica,
        };
        let hello = ClientFrame::Hello(Hello::new(
            self.cfg.topology.cluster_id,
            CLIENT_ID_NONE,
            group,
        ));
        self.encoder.encode(&hello, &mut link.out);
        self.links[idx] = Some(link);
        self.clients[client].links.insert((replica, group), idx);
        Some(idx)
    }

    fn send_frame(&mut self, link: usize, frame: &ClientFrame, now: u64) {
        let l = self.links[link].as_mut().expect("live link");
        if l.delay_ns > 0 {
            let mut bytes = Vec::new();
            self.encoder.encode(frame, &mut bytes);
            l.delayed_out.push_back((now + l.delay_ns, bytes));
        } else {
            self.encoder.encode(frame, &mut l.out);
        }
    }

    fn next_op(&mut self) -> (Op, &'static str) {
        let k = self.keys.pick(&mut self.rng);
        key_bytes(k, self.cfg.key_bytes, &mut self.key_buf);
        let key = Bytes::copy_from_slice(&self.key_buf);
        if self.rng.gen_bool(self.cfg.read_ratio) {
            (
                Op::Get {
                    key,
                    linearizable: self.cfg.linearizable_reads,
                },
                "get",
            )
        } else {
            (
                Op::Put {
                    key,
                    value: self.value.clone(),
                },
                "put",
            )
        }
    }

    /// Starts a new request on a free session.
    fn start_request(&mut self, session: usize, scheduled_ns: u64) {
        let (op, kind) = self.next_op();
        let group = op.group(self.cfg.topology.groups);
        let s = &mut self.sessions[session];
        if !matches!(op, Op::Get { .. }) {
            s.seqs[group as usize] += 1;
        }
        let seq = s.seqs[group as usize];
        let open = self.cfg.rate.is_some();
        // The send time is read here, just before the frame is queued (and written in the same
        // turn), not at the top of the turn.
        let now = self.epoch.elapsed().as_nanos() as u64;
        let measured_from = if open { scheduled_ns } else { now };
        let measured = measured_from >= self.measure_start && measured_from < self.measure_end;
        if measured {
            self.measured_in_flight += 1;
            // Lateness is the load generator's own: from when this request could have left (its
            // schedule, or a session freeing up for it) to when it did.
            let could_leave = scheduled_ns.max(s.free_since);
            self.send_lag
                .saturating_record(now.saturating_sub(could_leave).max(1));
        }
        s.busy = Some(InFlight {
            op,
            kind,
            group,
            scheduled_ns,
            sent_ns: now,
            req_id: 0,
            link: None,
            target: 0,
            measured,
            seq,
            tried_home: false,
            at_home: false,
            fanned_out: false,
            traced: false,
        });
        self.send_attempt(session, now);
    }

    /// Fast Paxos: the deadline a write sent now carries (`Request::fast_deadline_ns`, on
    /// CLOCK_BOOTTIME, the servers' clock): now + the placement's one-way delay from this
    /// client to its `Qf`-th nearest replica (0 without a placement: on loopback the servers'
    /// `fast_order_margin_us` alone orders).
    fn fast_deadline_ns(&self, client: usize) -> u64 {
        let replicas = self.cfg.topology.replicas.len();
        let mut one_way: Vec<u64> = match &self.cfg.placement {
            Some(p) => (0..replicas)
                .map(|r| p.one_way_ns(&self.clients[client].region, p.replica_region(r)))
                .collect(),
            None => vec![0; replicas],
        };
        one_way.sort_unstable();
        let qf = crate::protocol::QuorumSpec::new(replicas.max(1) as u32).fast() as usize;
        let est = one_way.get(qf.saturating_sub(1)).copied().unwrap_or(0);
        crate::client::boottime_ns() + est
    }

    fn send_attempt(&mut self, session: usize, now: u64) {
        let client = self.sessions[session].client;
        let (group, client_id) = {
            let s = &self.sessions[session];
            (s.busy.as_ref().expect("busy").group, s.client_id)
        };
        let replicas = self.cfg.topology.replicas.len() as u32;
        let local_read = {
            let busy = self.sessions[session].busy.as_mut().expect("busy");
            let first = matches!(
                busy.op,
                Op::Get {
                    linearizable: true,
                    ..
                }
            ) && !busy.tried_home;
            busy.tried_home |= first;
            first
        };
        // Fast Paxos: a write's first attempt goes to every replica; after a redirect (fast
        // rounds closed) it goes to the leader like any Multi-Paxos write.
        let fast_write = {
            let busy = self.sessions[session].busy.as_ref().expect("busy");
            !matches!(busy.op, Op::Get { .. }) && !busy.tried_home
        };
        let c = &mut self.clients[client];
        let fast_home = c.fast_home.filter(|_| fast_write);
        let home = c
            .home
            .filter(|_| local_read && now >= c.home_down_until)
            .or(fast_home);
        let target = match (home, c.leaders[group as usize]) {
            (Some(h), _) => h,
            (None, Some(l)) if l < replicas => l,
            _ => {
                c.probe = (c.probe + 1) % replicas;
                c.probe
            }
        };
        let Some(link) = self.link(client, target, group) else {
            // Cannot even connect: treat as a failed attempt.
            self.clients[client].leaders[group as usize] = None;
            if home == Some(target) {
                self.clients[client].home_down_until = now + HOME_RETRY_NS;
            }
            self.retries += 1;
            *self
                .retries_by_kind
                .entry(kind::CONNECT.to_string())
                .or_default() += 1;
            let req_id = self.sessions[session].busy.as_ref().map_or(0, |b| b.req_id);
            self.add_timer(now + BACKOFF_NS, Timer::Retry { session, req_id });
            return;
        };
        let req_id = self.next_req;
        self.next_req += 1;
        let busy = self.sessions[session].busy.as_mut().expect("busy");
        let first_attempt = busy.req_id == 0;
        // `--anatomy`: a measured request's first attempt, one in `anatomy_every`; never a
        // fanned-out Fast Paxos write (its answer comes from whichever replica applies first).
        busy.traced = self.cfg.anatomy_every > 0
            && first_attempt
            && busy.measured
            && fast_home.is_none()
            && {
                self.traced_counter += 1;
                self.traced_counter % u64::from(self.cfg.anatomy_every) == 0
            };
        busy.req_id = req_id;
        busy.link = Some(link);
        busy.target = target;
        busy.at_home = home.is_some();
        busy.fanned_out = fast_home.is_some();
        busy.tried_home |= fast_home.is_some();
        let fast_deadline_ns = if fast_home.is_some() {
            self.fast_deadline_ns(client)
        } else {
            0
        };
        let busy = self.sessions[session].busy.as_ref().expect("busy");
        let request = Request {
            id: req_id,
            client_id,
            seq: busy.seq,
            op: busy.op.clone(),
            fast_deadline_ns,
        };
        let frame = if busy.traced {
            ClientFrame::TracedRequest(request)
        } else {
            ClientFrame::Request(request)
        };
        self.links[link]
            .as_mut()
            .expect("live link")
            .waiting
            .insert(req_id, session);
        self.send_frame(link, &frame, now);
        if fast_home.is_some() {
            // The copies share the request id; only the target's refusals steer retries.
            for other in (0..replicas).filter(|&r| r != target) {
                if let Some(copy) = self.link(client, other, group) {
                    self.links[copy]
                        .as_mut()
                        .expect("live link")
                        .waiting
                        .insert(req_id, session);
                    self.send_frame(copy, &frame, now);
                }
            }
        }
        let timeout = self.cfg.attempt_timeout.as_nanos() as u64;
        self.add_timer(now + timeout, Timer::AttemptTimeout { session, req_id });
    }

    fn retry_later(&mut self, session: usize, now: u64, forget_leader: bool, why: &'static str) {
        self.retries += 1;
        *self.retries_by_kind.entry(why.to_string()).or_default() += 1;
        let Some(busy) = self.sessions[session].busy.as_ref() else {
            return;
        };
        let (group, req_id) = (busy.group, busy.req_id);
        if forget_leader {
            let c = self.sessions[session].client;
            self.clients[c].leaders[group as usize] = None;
        }
        self.add_timer(now + BACKOFF_NS, Timer::Retry { session, req_id });
    }

    fn on_reply(&mut self, link: usize, req_id: u64, outcome: Outcome, now: u64) {
        let Some(session) = self.links[link]
            .as_mut()
            .and_then(|l| l.waiting.remove(&req_id))
        else {
            return;
        };
        let Some(busy) = self.sessions[session].busy.as_ref() else {
            return;
        };
        if busy.req_id != req_id {
            return; // an abandoned attempt
        }
        let (group, target, at_home) = (busy.group, busy.target, busy.at_home);
        let client = self.sessions[session].client;
        let from = self.links[link].as_ref().map_or(target, |l| l.replica);
        if from != target {
            // A copy of a fast write: a definite answer completes it (every replica applies the
            // same log); a refusal is the target's to act on.
            if !matches!(
                outcome,
                Outcome::NotLeader { .. } | Outcome::Busy | Outcome::WrongGroup { .. }
            ) {
                let error = match &outcome {
                    Outcome::Invalid { reason } => Some(kind::of_invalid(reason)),
                    _ => None,
                };
                self.complete(session, now, error);
            }
            return;
        }
        match outcome {
            Outcome::NotLeader { leader } => {
                self.redirects += 1;
                match leader {
                    Some(l) if l != target => {
                        self.clients[client].leaders[group as usize] = Some(l);
                        self.retries += 1;
                        *self
                            .retries_by_kind
                            .entry(kind::NOT_LEADER.to_string())
                            .or_default() += 1;
                        self.send_attempt(session, now);
                    }
                    _ => self.retry_later(session, now, true, kind::NOT_LEADER),
                }
            }
            Outcome::Busy => self.retry_later(session, now, false, kind::BUSY),
            other => {
                if !at_home {
                    // The nearest replica answering a read says nothing about the leader.
                    self.clients[client].leaders[group as usize] = Some(target);
                }
                let error = match &other {
                    Outcome::Invalid { reason } => Some(kind::of_invalid(reason)),
                    Outcome::WrongGroup { .. } => Some(kind::WRONG_GROUP),
                    _ => None,
                };
                self.complete(session, now, error);
            }
        }
    }

    /// Ends the session's request: a success (`error` None) is a latency and a completion;
    /// an error is neither, only a count by kind.
    fn complete(&mut self, session: usize, now: u64, error: Option<&'static str>) {
        let busy = self.sessions[session].busy.take().expect("busy");
        let room = self.anatomy.len() < super::anatomy::SAMPLES_MAX;
        if let (true, true, None, Some(stamps)) =
            (busy.traced, room, error, self.reply_stamps.take())
        {
            let at = |t: u64| t.wrapping_add(self.server_clock_offset);
            let closed = self.cfg.rate.is_none();
            self.anatomy.push(super::anatomy::Sample {
                op: busy.kind,
                scheduled: at(if closed {
                    busy.sent_ns
                } else {
                    busy.scheduled_ns
                }),
                send: at(busy.sent_ns),
                recv: at(now),
                stamps,
            });
        }
        self.sessions[session].free_since = now;
        if error.is_some() && !matches!(busy.op, Op::Get { .. }) {
            // A write that was not applied: the store may hold no record of its number, and it
            // accepts an unknown client only at seq 1 (sessions expire). Start a new session.
            let s = &mut self.sessions[session];
            s.client_id = crate::client::session::lane_client_id(s.client_id, 1);
            s.seqs.iter_mut().for_each(|n| *n = 0);
        }
        // Throughput counts every success whose reply arrives while the window is open,
        // whenever the request was scheduled.
        if error.is_none() && now >= self.measure_start && !self.stopping {
            self.completed_in_window += 1;
        }
        if error.is_none() {
            self.succeeded += 1;
        }
        if busy.measured && error.is_some() {
            self.measured_in_flight -= 1;
            self.errors += 1;
            *self
                .errors_by_kind
                .entry(error.unwrap_or(kind::OTHER).to_string())
                .or_default() += 1;
        } else if busy.measured {
            self.measured_in_flight -= 1;
            let from = if self.cfg.rate.is_some() {
                busy.scheduled_ns
            } else {
                busy.sent_ns
            };
            let latency = now.saturating_sub(from);
            let region = self.regions[self.sessions[session].region_idx].clone();
            self.recorder.record(
                &SeriesKey {
                    op: busy.kind.to_string(),
                    region,
                    // "local": a read answered by the client's nearest replica (`--read-from
                    // nearest`); "fast": a Fast Paxos write sent to every replica; "leader":
                    // through the leader (Multi-Paxos, or Fast Paxos after a redirect).
                    path: if busy.fanned_out {
                        "fast"
                    } else if busy.at_home {
                        "local"
                    } else {
                        "leader"
                    }
                    .into(),
                },
                latency,
            );
            self.interval
                .entry(busy.kind)
                .or_insert_with(new_histogram)
                .saturating_record(latency.max(1));
            self.live.saturating_record(latency.max(1));
            if self.cfg.timeline && self.timeline.len() < super::timeline::TIMELINE_MAX {
                self.timeline.push(TimelinePoint {
                    sent_ns: from.saturating_sub(self.t0),
                    op: busy.kind,
                    latency_ns: latency,
                    censored: false,
                });
            }
            self.completed += 1;
        }
        self.free.push_back(session);
    }

    fn link_failed(&mut self, idx: usize, now: u64) {
        let Some(mut link) = self.links[idx].take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut link.stream);
        self.clients[link.client].links.retain(|_, v| *v != idx);
        // Every client that shared the link lost it.
        for c in (0..self.clients.len()).filter(|&c| self.owner[c] == link.client) {
            if self.clients[c].home == Some(link.replica) {
                self.clients[c].home_down_until = now + HOME_RETRY_NS;
            }
            for l in self.clients[c].leaders.iter_mut() {
                if *l == Some(link.replica) {
                    *l = None;
                }
            }
        }
        for (_, session) in link.waiting.drain() {
            self.retry_later(session, now, true, kind::LINK_LOST);
        }
        self.probes.retain(|_, (l, _)| *l != idx);
    }

    fn on_link_event(&mut self, idx: usize, now: u64) {
        let Some(link) = self.links[idx].as_mut() else {
            return;
        };
        if link.state == LinkState::Connecting {
            match link.stream.peer_addr() {
                Ok(_) => link.state = LinkState::Up,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                    if !matches!(link.stream.take_error(), Ok(None)) {
                        self.link_failed(idx, now);
                    }
                    return;
                }
                Err(_) => {
                    self.link_failed(idx, now);
                    return;
                }
            }
        }
        let mut frames = Vec::new();
        let mut dead = false;
        loop {
            let stream = &mut link.stream;
            match link.reader.read_from(64 * 1024, |b| stream.read(b)) {
                Ok(0) => {
                    dead = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    dead = true;
                    break;
                }
            }
            loop {
                match link.reader.next_payload() {
                    Ok(Some(p)) => match access::<ServerFrame>(p)
                        .ok()
                        .and_then(|a| rkyv::deserialize::<ServerFrame, rkyv::rancor::Error>(a).ok())
                    {
                        Some(f) => frames.push(f),
                        None => {
                            dead = true;
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                }
            }
            if dead {
                break;
            }
        }
        let delay = link.delay_ns;
        for f in frames {
            self.on_frame(idx, f, now, delay);
        }
        if dead {
            self.link_failed(idx, now);
        }
    }

    fn on_frame(&mut self, link: usize, frame: ServerFrame, now: u64, delay: u64) {
        match &frame {
            ServerFrame::Reply { .. }
            | ServerFrame::TracedReply { .. }
            | ServerFrame::Status { .. } => {}
            ServerFrame::Welcome(_)
            | ServerFrame::Topology { .. }
            | ServerFrame::Snapshot { .. } => return,
            ServerFrame::Error(e) => {
                tracing::warn!(
                    "server refused the load generator: {:?}: {}",
                    e.code,
                    e.message
                );
                *self
                    .retries_by_kind
                    .entry(kind::REFUSED.to_string())
                    .or_default() += 1;
                return;
            }
        }
        if delay > 0 {
            self.add_timer(
                now + delay,
                Timer::Deliver {
                    link,
                    frame: Box::new(frame),
                },
            );
            return;
        }
        self.deliver(link, frame, now);
    }

    fn deliver(&mut self, link: usize, frame: ServerFrame, now: u64) {
        match frame {
            ServerFrame::Reply { id, outcome } => self.on_reply(link, id, outcome, now),
            ServerFrame::TracedReply {
                id,
                outcome,
                stamps,
            } => {
                self.reply_stamps = Some(stamps);
                self.on_reply(link, id, outcome, now);
                self.reply_stamps = None;
            }
            ServerFrame::Status { id, .. } => {
                if let Some((l, sent)) = self.probes.remove(&id) {
                    let (client, replica) = match &self.links[l] {
                        Some(x) => (x.client, x.replica),
                        None => return,
                    };
                    let region = self
                        .sessions
                        .iter()
                        .find(|s| s.client == client)
                        .map_or(0, |s| s.region_idx);
                    self.probe_samples
                        .entry((region, replica))
                        .or_default()
                        .push(now - sent);
                }
            }
            _ => {}
        }
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(t) = self.timer_data.remove(&id) else {
                continue;
            };
            match t {
                Timer::Retry { session, req_id } => {
                    if self.sessions[session]
                        .busy
                        .as_ref()
                        .is_some_and(|b| b.req_id == req_id)
                    {
                        self.send_attempt(session, now);
                    }
                }
                Timer::AttemptTimeout { session, req_id } => {
                    let current = self.sessions[session]
                        .busy
                        .as_ref()
                        .filter(|b| b.req_id == req_id)
                        .map(|b| b.link);
                    if let Some(link) = current {
                        self.timeouts += 1;
                        if let Some(l) = link.and_then(|l| self.links[l].as_mut()) {
                            l.waiting.remove(&req_id);
                        }
                        self.retry_later(session, now, true, kind::TIMEOUT);
                    }
                }
                Timer::Deliver { link, frame } => self.deliver(link, *frame, now),
            }
        }
    }

    fn flush_links(&mut self, now: u64) {
        let mut dead = Vec::new();
        for (i, slot) in self.links.iter_mut().enumerate() {
            let Some(l) = slot.as_mut() else { continue };
            while let Some((at, _)) = l.delayed_out.front() {
                if *at > now {
                    break;
                }
                let (_, bytes) = l.delayed_out.pop_front().expect("front");
                l.out.extend_from_slice(&bytes);
            }
            if l.state != LinkState::Up {
                continue;
            }
            while l.out_pos < l.out.len() {
                match l.stream.write(&l.out[l.out_pos..]) {
                    Ok(0) => {
                        dead.push(i);
                        break;
                    }
                    Ok(n) => l.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        dead.push(i);
                        break;
                    }
                }
            }
            if l.out_pos == l.out.len() {
                l.out.clear();
                l.out_pos = 0;
            }
        }
        for i in dead {
            self.link_failed(i, now);
        }
    }

    fn next_wakeup(&self, now: u64, next_arrival: Option<u64>) -> u64 {
        let mut due = now + 10_000_000;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            due = due.min(*at);
        }
        if let Some(a) = next_arrival {
            due = due.min(a);
        }
        for l in self.links.iter().flatten() {
            if let Some((at, _)) = l.delayed_out.front() {
                due = due.min(*at);
            }
        }
        due
    }

    /// One wait for events or the next deadline, then handles what happened.
    ///
    /// Waiting for replies, it first polls without sleeping for `spin`. Deadlines (scheduled
    /// sends, timers, delayed frames, `next_deadline`) are met exactly: it sleeps on the timerfd
    /// until `deadline_spin` before the deadline and spins through the rest. (mio rounds epoll
    /// timeouts up to whole milliseconds, which used to make sends up to 1 ms late.)
    fn turn(&mut self, events: &mut Events, next_deadline: Option<u64>) -> Result<u64, String> {
        let start = self.now();
        let due = self.next_wakeup(start, next_deadline);
        let spin_until = start + self.cfg.spin.as_nanos() as u64;
        let lead = self.cfg.deadline_spin.as_nanos() as u64;
        loop {
            let now = self.now();
            let remaining = due.saturating_sub(now);
            let block = now >= spin_until && remaining > lead;
            let timeout = if !block {
                Duration::ZERO
            } else if let Some(t) = &mut self.wake_timer {
                t.arm_after(remaining - lead);
                // The timerfd wakes us; the epoll timeout is only a safety net.
                Duration::from_nanos(remaining - lead) + Duration::from_millis(2)
            } else {
                Duration::from_nanos(remaining - lead)
            };
            self.poll.poll(events, Some(timeout)).or_else(|e| {
                if e.kind() == io::ErrorKind::Interrupted {
                    Ok(())
                } else {
                    Err(e.to_string())
                }
            })?;
            let mut io_ready = false;
            for e in events.iter() {
                if e.token() == TIMER_TOKEN {
                    if let Some(t) = &mut self.wake_timer {
                        t.clear();
                    }
                } else {
                    io_ready = true;
                }
            }
            if io_ready || self.now() >= due {
                break;
            }
            if !block {
                std::hint::spin_loop();
            }
        }
        let now = self.now();
        let ready: Vec<usize> = events
            .iter()
            .map(|e| e.token())
            .filter(|t| *t != TIMER_TOKEN)
            .map(|t| t.0)
            .collect();
        for idx in ready {
            self.on_link_event(idx, now);
        }
        self.fire_timers(now);
        Ok(now)
    }

    /// Measures Status round trips from each client region to each replica (group 0).
    fn probe_links(&mut self, events: &mut Events) -> Result<Vec<LinkRtt>, String> {
        let replicas = self.cfg.topology.replicas.len() as u32;
        let mut targets = Vec::new();
        for (ri, _) in self.regions.clone().iter().enumerate() {
            let Some(client) = self
                .sessions
                .iter()
                .find(|s| s.region_idx == ri)
                .map(|s| s.client)
            else {
                continue;
            };
            for r in 0..replicas {
                targets.push((client, r, ri));
            }
        }
        let deadline = self.now() + 10_000_000_000;
        let per_link = self.cfg.probes_per_link as usize;
        let mut in_flight: HashMap<(usize, u32), bool> = HashMap::new();
        loop {
            let now = self.now();
            let mut all_done = true;
            for &(client, r, ri) in &targets {
                let done = self.probe_samples.get(&(ri, r)).map_or(0, |v| v.len());
                if done >= per_link {
                    continue;
                }
                all_done = false;
                let waiting = self.probes.values().any(|(l, _)| {
                    self.links[*l]
                        .as_ref()
                        .is_some_and(|x| x.client == client && x.replica == r)
                });
                if !waiting {
                    in_flight.insert((client, r), true);
                    if let Some(link) = self.link(client, r, 0) {
                        let id = self.next_req;
                        self.next_req += 1;
                        self.probes.insert(id, (link, now));
                        self.send_frame(link, &ClientFrame::Status { id }, now);
                    }
                }
            }
            if all_done || now > deadline {
                break;
            }
            self.flush_links(now);
            self.turn(events, None)?;
        }
        let mut out = Vec::new();
        for &(_, r, ri) in &targets {
            let mut v = self
                .probe_samples
                .get(&(ri, r))
                .cloned()
                .unwrap_or_default();
            v.sort_unstable();
            let region = &self.regions[ri];
            let rr = self.replica_region(r);
            let configured = match &self.cfg.placement {
                Some(p) if *region != rr => p.rtt_ms(region, &rr).unwrap_or(0.0),
                _ => 0.0,
            };
            out.push(LinkRtt {
                client_region: region.clone(),
                replica: r,
                replica_region: rr,
                configured_rtt_ms: configured,
                measured_rtt_ms_p50: v.get(v.len() / 2).map_or(f64::NAN, |x| *x as f64 / 1e6),
                measured_rtt_ms_min: v.first().map_or(f64::NAN, |x| *x as f64 / 1e6),
                samples: v.len(),
            });
        }
        Ok(out)
    }

    /// Open loop: requests scheduled but not completed (measured or not).
    fn queue_len(&self) -> u64 {
        (self.backlog.len() + self.sessions.iter().filter(|s| s.busy.is_some()).count()) as u64
    }

    /// Runs the whole benchmark: probes, warm-up, the measured window, then the drain.
    pub fn run(mut self, progress: &dyn Fn(&Progress)) -> Result<EngineResult, String> {
        let mut events = Events::with_capacity(1024);
        let links = if self.cfg.probes_per_link > 0 {
            self.probe_links(&mut events)?
        } else {
            Vec::new()
        };
        let started = std::time::SystemTime::now();
        let t0 = self.now();
        self.t0 = t0;
        for s in self.sessions.iter_mut() {
            s.free_since = t0;
        }
        self.measure_start = t0 + self.cfg.warmup.as_nanos() as u64;
        self.measure_end = self.measure_start + self.cfg.duration.as_nanos() as u64;
        let arrivals = match self.cfg.rate {
            Some(r) => Some(Arrivals::new(self.cfg.arrival, r)?),
            None => None,
        };
        let open = arrivals.is_some();
        let mut next_arrival = arrivals.as_ref().map(|_| t0);
        let mut next_interval = self.measure_start + 1_000_000_000;
        let mut interval_start = self.measure_start;
        let mut drain_deadline = u64::MAX;
        let mut window_end = self.measure_end;
        let mut last_progress = 0;
        // Live figures: ops/s over the last second, p99 of the measured requests so far.
        let mut live = Progress::default();
        let (mut rate_from, mut rate_count) = (t0, 0u64);
        let mut offered = 0u64;
        let mut queue_samples = Vec::new();
        let mut sampled_start = false;
        loop {
            let now = self.now();
            if now >= self.measure_start && !sampled_start {
                sampled_start = true;
                if open {
                    queue_samples.push(self.queue_len());
                }
            }
            // Open loop: schedule every arrival that is due (none from the window's end on).
            if let (Some(a), Some(arr)) = (next_arrival.as_mut(), arrivals.as_ref()) {
                while *a <= now && *a < self.measure_end {
                    if *a >= self.measure_start {
                        offered += 1;
                    }
                    self.backlog.push_back(*a);
                    *a += arr.next_gap_ns(&mut self.rng).max(1.0) as u64;
                }
            }
            if now >= self.measure_end && !self.stopping {
                self.stopping = true;
                window_end = now;
                next_arrival = None;
                drain_deadline = now + self.cfg.drain_timeout.as_nanos() as u64;
                if open {
                    // The queue at the window's end (the last sample).
                    queue_samples.push(self.queue_len());
                }
            }
            while let Some(&session) = self.free.front() {
                let scheduled = if open {
                    match self.backlog.pop_front() {
                        Some(s) => s,
                        None => break,
                    }
                } else if self.stopping {
                    break;
                } else {
                    // Closed loop: the request is due now (send lag counts from when its
                    // session became free).
                    self.sessions[session].free_since
                };
                self.free.pop_front();
                self.start_request(session, scheduled);
            }
            // The interval log covers the drain too, and the last partial second.
            if now >= next_interval {
                let start = Duration::from_nanos(interval_start - t0);
                for (op, h) in self.interval.drain() {
                    self.intervals.push(op, start, Duration::from_secs(1), h);
                }
                if open && next_interval < self.measure_end {
                    queue_samples.push(self.queue_len());
                }
                interval_start = next_interval;
                next_interval += 1_000_000_000;
            }
            if now >= last_progress + 200_000_000 {
                last_progress = now;
                let total = (self.measure_end - t0) as f64;
                live.fraction = ((now - t0) as f64 / total).min(1.0);
                if now >= rate_from + 1_000_000_000 {
                    let secs = (now - rate_from) as f64 / 1e9;
                    live.ops_per_s = Some((self.succeeded - rate_count) as f64 / secs);
                    (rate_from, rate_count) = (now, self.succeeded);
                    if !self.live.is_empty() {
                        live.p99_us = Some(self.live.value_at_quantile(0.99) as f64 / 1e3);
                    }
                }
                progress(&live);
            }
            self.flush_links(now);
            if self.stopping {
                let backlog_measured = self
                    .backlog
                    .iter()
                    .any(|&s| s >= self.measure_start && s < self.measure_end);
                if (self.measured_in_flight == 0 && !backlog_measured) || now >= drain_deadline {
                    break;
                }
            }
            // Deadlines of the loop itself: the next arrival, the window's end (so it closes
            // on time), the next interval boundary, the drain deadline.
            let mut deadline = next_interval.min(drain_deadline);
            if !self.stopping {
                deadline = deadline.min(self.measure_end);
            }
            if let Some(a) = next_arrival {
                deadline = deadline.min(a);
            }
            self.turn(&mut events, Some(deadline))?;
        }
        let end = self.now();
        // The last, partial interval.
        if !self.interval.is_empty() && end > interval_start {
            let start = Duration::from_nanos(interval_start - t0);
            let len = Duration::from_nanos(end - interval_start);
            for (op, h) in self.interval.drain() {
                self.intervals.push(op, start, len, h);
            }
        }
        // Whatever measured request is still unfinished is censored at `end`: its latency is at
        // least what it had waited by then.
        let mut unfinished = 0u64;
        for i in 0..self.sessions.len() {
            let Some(busy) = self.sessions[i].busy.as_ref() else {
                continue;
            };
            if !busy.measured {
                continue;
            }
            unfinished += 1;
            let from = if open {
                busy.scheduled_ns
            } else {
                busy.sent_ns
            };
            let k = if busy.req_id == 0 {
                kind::NOT_SENT
            } else if matches!(busy.op, Op::Get { .. }) {
                kind::TIMEOUT
            } else {
                kind::UNKNOWN_OUTCOME
            };
            *self.errors_by_kind.entry(k.to_string()).or_default() += 1;
            let key = SeriesKey {
                op: busy.kind.to_string(),
                region: self.regions[self.sessions[i].region_idx].clone(),
                path: "leader".into(),
            };
            self.censored.record(&key, end.saturating_sub(from));
            if self.cfg.timeline {
                let kind = busy.kind;
                self.timeline.push(TimelinePoint {
                    sent_ns: from.saturating_sub(t0),
                    op: kind,
                    latency_ns: end.saturating_sub(from),
                    censored: true,
                });
            }
        }
        // Backlogged requests were never sent: we do not know which operation they would have
        // been, so they are censored under `all` only (op "unsent").
        for &s in &self.backlog {
            if s >= self.measure_start && s < self.measure_end {
                unfinished += 1;
                *self
                    .errors_by_kind
                    .entry(kind::NOT_SENT.to_string())
                    .or_default() += 1;
                let key = SeriesKey {
                    op: "unsent".into(),
                    region: "-".into(),
                    path: "leader".into(),
                };
                self.censored.record(&key, end.saturating_sub(s));
            }
        }
        let leaders = (0..self.cfg.topology.groups as usize)
            .map(|g| {
                let mut counts: HashMap<u32, usize> = HashMap::new();
                for c in &self.clients {
                    if let Some(l) = c.leaders[g] {
                        *counts.entry(l).or_default() += 1;
                    }
                }
                counts.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
            })
            .collect();
        let client_ids = self.sessions.iter().map(|s| s.client_id).collect();
        Ok(EngineResult {
            recorder: self.recorder,
            censored: self.censored,
            send_lag: self.send_lag,
            completed_in_window: self.completed_in_window,
            elapsed_s: window_end.saturating_sub(self.measure_start) as f64 / 1e9,
            window: (
                self.epoch + Duration::from_nanos(self.measure_start),
                self.epoch + Duration::from_nanos(window_end.max(self.measure_start)),
            ),
            offered,
            queue_samples,
            errors_by_kind: self.errors_by_kind,
            retries_by_kind: self.retries_by_kind,
            client_id_nonce: self.client_id_nonce,
            client_ids,
            intervals: self.intervals,
            timeline: std::mem::take(&mut self.timeline),
            anatomy: std::mem::take(&mut self.anatomy),
            started,
            completed: self.completed,
            unfinished,
            retries: self.retries,
            redirects: self.redirects,
            timeouts: self.timeouts,
            errors: self.errors,
            measured_s: self.cfg.duration.as_secs_f64(),
            links,
            leaders,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_connections_stay_within_a_region() {
        // Own connections by default, and when there are fewer clients than connections.
        assert_eq!(link_owners(4, 0, 1), vec![0, 1, 2, 3]);
        assert_eq!(link_owners(4, 10, 1), vec![0, 1, 2, 3]);
        // 10 connections for 25 clients in one region.
        let o = link_owners(25, 10, 1);
        assert_eq!(o[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let mut owners = o.clone();
        owners.sort_unstable();
        owners.dedup();
        assert_eq!(owners.len(), 10);
        // Three regions (client c is in region c % 3): 4 connections become 6, two per
        // region, and every client's owner is in its region.
        let o = link_owners(30, 4, 3);
        assert!(o.iter().enumerate().all(|(c, &w)| c % 3 == w % 3 && w < 6));
        let mut owners = o.clone();
        owners.sort_unstable();
        owners.dedup();
        assert_eq!(owners, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn equally_near_replicas_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rtt.csv"),
            "from,to,rtt_avg_ms\nnear,far,40\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            "name = \"t\"\nrtt_csv = \"rtt.csv\"\nregions = [\"near\", \"far\"]\nreplicas = [\"near\", \"far\"]\nclients = [\"near\", \"far\"]\n",
        )
        .unwrap();
        let p = Placement::load(&dir.path().join("p.toml")).unwrap();
        // 4 replicas: 0 and 2 in "near", 1 and 3 in "far".
        let homes: Vec<u32> = (0..4)
            .map(|c| nearest_replica(Some(&p), "near", c, 4))
            .collect();
        assert_eq!(homes, [0, 2, 2, 0]);
        let homes: Vec<u32> = (0..4)
            .map(|c| nearest_replica(Some(&p), "far", c, 4))
            .collect();
        assert_eq!(homes, [1, 1, 3, 3]);
        // No placement: round robin.
        let homes: Vec<u32> = (0..4)
            .map(|c| nearest_replica(None, "local", c, 3))
            .collect();
        assert_eq!(homes, [0, 1, 2, 0]);
    }
}
