//! Real-process tests: `mpaxos server` replicas on loopback, started by [`LocalCluster`].
//!
//! - Bad input on the client and the peer port (random bytes, an oversized length prefix, a
//!   wrong protocol version, a wrong cluster id) gets an error frame, then the server closes
//!   that connection and keeps serving everyone else.
//! - Bad config files and a data directory of another cluster stop `mpaxos server` at once
//!   with one clear `error:` line.
//! - kill -9 of the leader under load: a new leader within 2x the election timeout, no
//!   acknowledged write lost, and the killed replica recovers from its WAL and catches up.
//! - SIGSTOP of a follower: writes keep succeeding; after SIGCONT it catches up without
//!   disturbing the leader. SIGSTOP of the leader: another takes over; the old one, resumed,
//!   steps down and catches up.
//! - A paused follower or leader stalls a client for about an election timeout at most, not the
//!   attempt timeout (measured and printed); the CLI exits 6 when a write's outcome is unknown.
//! - The connection limit answers Busy (in the port's own frame type); a half-closed client
//!   still gets its answers; replicas on different hosts may share port numbers.
//!
//! The fault tests run one at a time (a lock) so that their timing bounds hold on a small
//! machine; the others run in parallel with them. A failed test prints the tail of every
//! replica's log; `MPAXOS_TEST_LOGS_DIR=<dir>` keeps the whole logs there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mpaxos::client::{Client, ClientOptions};
use mpaxos::net::frame::{access, encode_frame, FrameReader};
use mpaxos::net::wire::{
    group_of, ClientFrame, ErrorCode, GroupStatus, Hello, Op, Outcome, PeerFrame, Request,
    ServerFrame, WireError, CLIENT_ID_NONE, PROTOCOL_VERSION,
};
use mpaxos::server::config::{ClusterConfig, Cpus};
use mpaxos::server::local::{free_base_port, LocalCluster};
use mpaxos::wal::BackendChoice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Serializes the timing-sensitive fault tests.
static FAULT_LOCK: Mutex<()> = Mutex::new(());

fn fault_lock() -> std::sync::MutexGuard<'static, ()> {
    FAULT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mpaxos"))
}

/// A running local cluster that is stopped (and its logs shown, if the test failed) on drop.
struct TestCluster {
    cluster: LocalCluster,
    // Dropped after `cluster` (field order): the data must outlive the replicas.
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `replicas` replicas of `groups` groups and waits until every group has a leader.
    fn start(replicas: u32, groups: u32, durability: BackendChoice) -> TestCluster {
        TestCluster::start_with(replicas, groups, |c| {
            c.durability = durability;
            // The tests that ask for memory never restart a replica.
            c.unsafe_memory_durability = durability == BackendChoice::Memory;
        })
    }

    /// Like [`TestCluster::start`], with a hook to change the config first.
    fn start_with(replicas: u32, groups: u32, tweak: impl Fn(&mut ClusterConfig)) -> TestCluster {
        let mut last = String::new();
        // A port picked as free can be taken by someone else before a replica binds it (other
        // tests run in parallel): try again on other ports.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let base = free_base_port(replicas, groups).expect("free ports");
            let mut config = ClusterConfig::local(replicas, groups, dir.path(), base);
            tweak(&mut config);
            let cluster = LocalCluster::new(dir.path(), config, binary()).expect("cluster config");
            let mut tc = TestCluster { cluster, _dir: dir };
            match tc
                .cluster
                .start_all()
                .and_then(|_| tc.cluster.wait_ready(Duration::from_secs(20)))
            {
                Ok(()) => return tc,
                Err(e) => {
                    last = e;
                    tc.cluster.stop();
                }
            }
        }
        panic!("the cluster did not start: {last}");
    }

    fn config(&self) -> &ClusterConfig {
        &self.cluster.config
    }

    fn client(&self) -> Client {
        let mut opts = ClientOptions::new(self.cluster.endpoints());
        opts.op_timeout = Duration::from_secs(10);
        opts.attempt_timeout = Duration::from_millis(500);
        Client::connect(opts).expect("client connects")
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for r in &self.cluster.config.replicas {
            let log = std::fs::read_to_string(self.cluster.log_path(r.id)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(30);
            out += &format!("--- replica {} log (last lines) ---\n", r.id);
            for l in &lines[from..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A stopped replica would sit out SIGTERM until the stop timeout.
        for r in 0..self.cluster.config.replicas.len() as u32 {
            self.cluster.signal(r, libc::SIGCONT);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
            // MPAXOS_TEST_LOGS_DIR=<dir> keeps the whole logs of a failed test there.
            if let Some(keep) = std::env::var_os("MPAXOS_TEST_LOGS_DIR") {
                let to = Path::new(&keep).join(format!(
                    "{}-{}",
                    std::thread::current().name().unwrap_or("test"),
                    std::process::id()
                ));
                let _ = std::fs::create_dir_all(&to);
                for r in &self.cluster.config.replicas {
                    let from = self.cluster.log_path(r.id);
                    let _ = std::fs::copy(&from, to.join(from.file_name().unwrap()));
                }
                eprintln!("logs kept in {}", to.display());
            }
        }
        self.cluster.stop();
    }
}

/// Every (replica, group) status that answered.
fn statuses(client: &mut Client) -> Vec<GroupStatus> {
    client
        .status_all()
        .into_iter()
        .filter_map(|(_, _, s)| s.ok())
        .collect()
}

/// Per group, the replica that reports itself leader (None: no replica does).
fn leaders(client: &mut Client, groups: u32) -> Vec<Option<u32>> {
    let st = statuses(client);
    (0..groups)
        .map(|g| {
            st.iter()
                .find(|s| s.group == g && s.role == "leader")
                .map(|s| s.replica)
        })
        .collect()
}

/// Per group, the leader and its ballot (round, replica), as the leader reports them.
fn leader_ballots(client: &mut Client, groups: u32) -> Vec<Option<(u32, u64, u32)>> {
    let st = statuses(client);
    (0..groups)
        .map(|g| {
            st.iter()
                .find(|s| s.group == g && s.role == "leader")
                .map(|s| (s.replica, s.ballot.round, s.ballot.replica))
        })
        .collect()
}

/// Waits until some replica leads every group.
fn wait_leaders(client: &mut Client, groups: u32, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let l = leaders(client, groups);
        if l.iter().all(|x| x.is_some()) {
            return l.into_iter().map(|x| x.unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no leader for every group within {timeout:?}: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until replica `id` has applied, in every group, everything its leader has committed.
fn wait_caught_up(client: &mut Client, id: u32, groups: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let st = statuses(client);
        let caught_up = (0..groups).all(|g| {
            let leader = st.iter().find(|s| s.group == g && s.role == "leader");
            let me = st.iter().find(|s| s.group == g && s.replica == id);
            match (leader, me) {
                (Some(l), Some(m)) => m.applied >= l.commit && l.commit > 0,
                _ => false,
            }
        });
        if caught_up {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica {id} did not catch up within {timeout:?}; last statuses: {st:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A key of group `g`, for checks that must touch a particular group.
fn key_in_group(prefix: &str, g: u32, groups: u32) -> String {
    (0u32..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| group_of(k.as_bytes(), groups) == g)
        .expect("some key maps to every group")
}

/// A put then a linearizable get of the same key, in every group.
fn put_get_works(tc: &TestCluster, tag: &str) {
    let groups = tc.config().groups;
    let mut c = tc.client();
    for g in 0..groups {
        let key = key_in_group(&format!("{tag}-"), g, groups);
        let value = format!("value-of-{key}");
        match c.put(key.as_bytes(), value.as_bytes()) {
            Ok(Outcome::Put { .. }) => {}
            other => panic!("{tag}: put {key} failed: {other:?}"),
        }
        match c.get(key.as_bytes(), true) {
            Ok(Outcome::Get { value: Some(v), .. }) if v.as_ref() == value.as_bytes() => {}
            other => panic!("{tag}: get {key} returned {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Load: client threads writing distinct keys, recording what was acknowledged.

struct Acked {
    key: String,
    value: String,
    at: Instant,
}

#[derive(Default)]
struct LoadResult {
    acked: Vec<Acked>,
    errors: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadResult>>,
}

impl Load {
    fn start(tc: &TestCluster, threads: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let mut client = tc.client();
                let stop = stop.clone();
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    let mut res = LoadResult::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("{tag}-t{t}-k{i}");
                        let value = format!("v{i}-{:x}", client.client_id());
                        i += 1;
                        match client.put(key.as_bytes(), value.as_bytes()) {
                            Ok(Outcome::Put { .. }) => res.acked.push(Acked {
                                key,
                                value,
                                at: Instant::now(),
                            }),
                            Ok(other) => res.errors.push(format!("put {key}: {other:?}")),
                            Err(e) => res.errors.push(format!("put {key}: {e}")),
                        }
                    }
                    res
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn finish(self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadResult::default();
        for t in self.threads {
            let r = t.join().expect("load thread");
            all.acked.extend(r.acked);
            all.errors.extend(r.errors);
        }
        all
    }
}

/// The load saw no failed write; else the failures and the cluster's state.
fn assert_no_errors(tc: &TestCluster, res: &LoadResult) {
    if res.errors.is_empty() {
        return;
    }
    let mut c = tc.client();
    let st: Vec<String> = c
        .status_all()
        .into_iter()
        .map(|(r, g, s)| match s {
            Ok(s) => format!(
                "{r}/{g}: {} leader {:?} ballot {}.{} commit {} applied {} pending {}",
                s.role,
                s.leader,
                s.ballot.round,
                s.ballot.replica,
                s.commit,
                s.applied,
                s.proposals_pending
            ),
            Err(e) => format!("{r}/{g}: {e}"),
        })
        .collect();
    panic!(
        "{} writes failed, first: {:?}; status now:\n{}",
        res.errors.len(),
        &res.errors[..res.errors.len().min(5)],
        st.join("\n")
    );
}

/// Every acknowledged write reads back (linearizably) with its value.
fn verify_acked(tc: &TestCluster, acked: &[Acked]) {
    let chunks: Vec<&[Acked]> = acked.chunks(acked.len().div_ceil(4).max(1)).collect();
    std::thread::scope(|s| {
        for chunk in chunks {
            let mut c = tc.client();
            s.spawn(move || {
                for a in chunk {
                    match c.get(a.key.as_bytes(), true) {
                        Ok(Outcome::Get { value: Some(v), .. })
                            if v.as_ref() == a.value.as_bytes() => {}
                        other => panic!(
                            "acknowledged write {} = {} reads back as {other:?}",
                            a.key, a.value
                        ),
                    }
                }
            });
        }
    });
}

/// How many acknowledged writes fell into each group after `since`.
fn acked_per_group_since(acked: &[Acked], groups: u32, since: Instant) -> Vec<usize> {
    let mut n = vec![0; groups as usize];
    for a in acked.iter().filter(|a| a.at > since) {
        n[group_of(a.key.as_bytes(), groups) as usize] += 1;
    }
    n
}

// ------------------------------------------------------------------------------------------
// 1. Bad input on the client and the peer port.

enum Port {
    Client,
    Peer,
}

/// The bad inputs, each sent on a fresh connection.
fn bad_inputs(
    port: &Port,
    cluster_id: u64,
    settings_digest: u64,
    target: u32,
) -> Vec<(&'static str, Vec<u8>, &'static [ErrorCode])> {
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let mut out: Vec<(&'static str, Vec<u8>, &'static [ErrorCode])> = Vec::new();

    // Random bytes: whatever their first four bytes say, the length is over any limit.
    let mut noise = vec![0u8; 1024];
    rng.fill(&mut noise[..]);
    noise[3] = 0xf0;
    out.push(("random bytes", noise, &[ErrorCode::Oversized]));

    // Random bytes in a well-formed frame with a wrong checksum.
    let mut body = vec![0u8; 200];
    rng.fill(&mut body[..]);
    let mut framed = (body.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&(crc32c::crc32c(&body) ^ 1).to_le_bytes());
    framed.extend_from_slice(&body);
    out.push((
        "random frame, bad checksum",
        framed,
        &[ErrorCode::Malformed],
    ));

    // Random bytes with a right checksum: the archive does not validate.
    let mut framed = (body.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    framed.extend_from_slice(&body);
    out.push((
        "random frame, good checksum",
        framed,
        &[ErrorCode::Malformed],
    ));

    // A burst of random bytes far larger than the server reads at once.
    let mut burst = vec![0u8; 4 << 20];
    rng.fill(&mut burst[..]);
    burst[3] = 0xf0;
    out.push(("4 MiB of random bytes", burst, &[ErrorCode::Oversized]));

    // A length prefix far over the limit (and a few bytes of a body that never comes).
    let mut oversized = (u32::MAX - 7).to_le_bytes().to_vec();
    oversized.extend_from_slice(&[0u8; 12]);
    out.push((
        "oversized length prefix",
        oversized,
        &[ErrorCode::Oversized],
    ));

    let hello = |cluster: u64, version: u16| {
        let mut h = match port {
            Port::Client => Hello::new(cluster, CLIENT_ID_NONE, 0),
            // Claims to be another replica of the cluster.
            Port::Peer => {
                let mut h = Hello::new(cluster, (target + 1) % 3, 0);
                h.settings_digest = settings_digest;
                h
            }
        };
        h.version = version;
        match port {
            Port::Client => encode_frame(&ClientFrame::Hello(h)),
            Port::Peer => encode_frame(&PeerFrame::Hello(h)),
        }
    };
    out.push((
        "wrong protocol version",
        hello(cluster_id, PROTOCOL_VERSION + 1),
        &[ErrorCode::Version],
    ));
    out.push((
        "wrong cluster id",
        hello(cluster_id ^ 0x00ff_00ff_0000_0000, PROTOCOL_VERSION),
        &[ErrorCode::WrongCluster],
    ));

    if matches!(port, Port::Peer) {
        // A peer whose timeouts or lease settings differ would break the lease argument.
        let mut h = Hello::new(cluster_id, (target + 1) % 3, 0);
        h.settings_digest = settings_digest ^ 0x10;
        out.push((
            "peer with other timeout settings",
            encode_frame(&PeerFrame::Hello(h)),
            &[ErrorCode::WrongCluster],
        ));
    }

    // A good handshake, then random bytes in a frame with a right checksum.
    let mut then_garbage = hello(cluster_id, PROTOCOL_VERSION);
    then_garbage.extend_from_slice(&(body.len() as u32).to_le_bytes());
    then_garbage.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    then_garbage.extend_from_slice(&body);
    out.push((
        "random frame after a good handshake",
        then_garbage,
        &[ErrorCode::Malformed],
    ));

    // A good handshake, then a second one.
    let mut twice = hello(cluster_id, PROTOCOL_VERSION);
    twice.extend_from_slice(&hello(cluster_id, PROTOCOL_VERSION));
    out.push(("a second handshake", twice, &[ErrorCode::Malformed]));
    out
}

/// Joins a thread when dropped.
struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
    }
}

fn join_on_drop(t: JoinHandle<()>) -> JoinOnDrop {
    JoinOnDrop(Some(t))
}

/// Sends `bytes` on a new connection to `addr`, then reads until the server closes it.
/// Returns the frames received before the close.
fn send_and_read_until_closed(addr: &str, bytes: &[u8], port: &Port) -> Vec<WireError> {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close before it has read everything: write from another thread and
    // ignore a write that fails because of that.
    let mut w = s.try_clone().unwrap();
    let bytes = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let _writer = join_on_drop(writer);
    let mut reader = FrameReader::new(1 << 20);
    let mut errors = Vec::new();
    loop {
        let res = reader.read_from(4096, |buf| s.read(buf));
        while let Some(p) = reader
            .next_payload()
            .expect("the server sends valid frames")
        {
            let e = match port {
                Port::Client => {
                    let f = access::<ServerFrame>(p).expect("a valid server frame");
                    match rkyv::deserialize::<ServerFrame, rkyv::rancor::Error>(f).unwrap() {
                        ServerFrame::Error(e) => e,
                        // The answer to a good handshake that comes first.
                        ServerFrame::Welcome(_) if errors.is_empty() => continue,
                        other => panic!("expected an error frame, got {other:?}"),
                    }
                }
                Port::Peer => {
                    let f = access::<PeerFrame>(p).expect("a valid peer frame");
                    match rkyv::deserialize::<PeerFrame, rkyv::rancor::Error>(f).unwrap() {
                        PeerFrame::Error(e) => e,
                        other => panic!("expected an error frame, got {other:?}"),
                    }
                }
            };
            errors.push(e);
        }
        match res {
            Ok(0) => return errors,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return errors,
            Err(e) => panic!("{addr}: the server did not close the connection: {e}"),
        }
    }
}

#[test]
fn bad_input_on_client_and_peer_ports_is_refused_and_the_server_keeps_serving() {
    let tc = TestCluster::start(3, 1, BackendChoice::Auto);
    let cluster_id = tc.config().cluster_id;
    put_get_works(&tc, "before");
    // A client that stays connected through all of it keeps working too.
    let mut bystander = tc.client();
    for (i, (port, r)) in [
        (Port::Client, 0usize),
        (Port::Peer, 0),
        (Port::Client, 2),
        (Port::Peer, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let rc = &tc.config().replicas[r];
        let addr = match port {
            Port::Client => format!("{}:{}", rc.host, rc.client_port),
            Port::Peer => format!("{}:{}", rc.host, rc.peer_port),
        };
        let digest = tc.config().settings_digest();
        for (case, bytes, codes) in bad_inputs(&port, cluster_id, digest, r as u32) {
            let errors = send_and_read_until_closed(&addr, &bytes, &port);
            assert_eq!(
                errors.len(),
                1,
                "{case} on {addr}: expected one error frame before the close, got {errors:?}"
            );
            assert!(
                codes.contains(&errors[0].code),
                "{case} on {addr}: expected {codes:?}, got {:?}",
                errors[0]
            );
            assert!(!errors[0].message.is_empty(), "{case}: the error says why");
            put_get_works(&tc, &format!("after-{i}-{case}"));
            match bystander.put(b"bystander", case.as_bytes()) {
                Ok(Outcome::Put { .. }) => {}
                other => panic!("bystander put after {case}: {other:?}"),
            }
        }
    }
    // Every replica (including the ones that were sent garbage) still follows the log.
    let mut c = tc.client();
    for r in 0..3 {
        wait_caught_up(&mut c, r, 1, Duration::from_secs(10));
    }
}

/// Reads one frame from `s` (a blocking stream with a read timeout).
fn read_one<T>(s: &mut TcpStream) -> T
where
    T: rkyv::Archive,
    T::Archived: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut reader = FrameReader::new(1 << 20);
    loop {
        if let Some(p) = reader.next_payload().expect("a valid frame") {
            let a = access::<T>(p).expect("a valid archive");
            return rkyv::deserialize::<T, rkyv::rancor::Error>(a).unwrap();
        }
        let n = reader.read_from(4096, |buf| s.read(buf)).expect("read");
        assert!(n > 0, "closed before a whole frame arrived");
    }
}

#[test]
fn connection_limit_refuses_with_busy_and_recovers() {
    const LIMIT: usize = 8;
    let tc = TestCluster::start_with(3, 1, |c| c.limits.connections_max = LIMIT);
    let r0 = tc.config().replicas[0].clone();
    let client_addr = format!("{}:{}", r0.host, r0.client_port);
    let mut held = Vec::new();
    let busy = loop {
        assert!(
            held.len() <= LIMIT,
            "{} connections were all welcomed",
            held.len()
        );
        let mut s = TcpStream::connect(&client_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&encode_frame(&ClientFrame::Hello(Hello::new(
            0,
            CLIENT_ID_NONE,
            0,
        ))))
        .unwrap();
        match read_one::<ServerFrame>(&mut s) {
            ServerFrame::Welcome(_) => held.push(s),
            ServerFrame::Error(e) => break e,
            other => panic!("unexpected answer to a handshake: {other:?}"),
        }
    };
    assert_eq!(busy.code, ErrorCode::Busy, "{busy:?}");
    // The peer port shares the limit, and answers in its own frame type.
    let peer_addr = format!("{}:{}", r0.host, r0.peer_port);
    let errors = send_and_read_until_closed(&peer_addr, &[], &Port::Peer);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].code, ErrorCode::Busy, "{errors:?}");
    // Once those clients go away, replica 0 takes new ones again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(&client_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&encode_frame(&ClientFrame::Hello(Hello::new(
            0,
            CLIENT_ID_NONE,
            0,
        ))))
        .unwrap();
        match read_one::<ServerFrame>(&mut s) {
            ServerFrame::Welcome(_) => break,
            other => assert!(Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    put_get_works(&tc, "after-limit");
}

/// A client that sends its requests and then shuts down its sending side (as `nc -N` does)
/// still gets every answer before the server closes.
#[test]
fn half_closed_client_gets_its_answers() {
    let tc = TestCluster::start(3, 1, BackendChoice::Auto);
    let mut c = tc.client();
    let leader = wait_leaders(&mut c, 1, Duration::from_secs(10))[0];
    assert!(matches!(c.put(b"half", b"closed"), Ok(Outcome::Put { .. })));
    let r = &tc.config().replicas[leader as usize];
    let mut s = TcpStream::connect((r.host.as_str(), r.client_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = |id: u64, seq: u64, op: Op| {
        encode_frame(&ClientFrame::Request(Request {
            id,
            client_id: 0xfeed,
            seq,
            op,
            fast_deadline_ns: 0,
        }))
    };
    let mut bytes = encode_frame(&ClientFrame::Hello(Hello::new(0, CLIENT_ID_NONE, 0)));
    bytes.extend(request(
        1,
        1,
        Op::Put {
            key: "half-2".into(),
            value: "x".into(),
        },
    ));
    bytes.extend(request(
        2,
        1,
        Op::Get {
            key: "half".into(),
            linearizable: true,
        },
    ));
    s.write_all(&bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut reader = FrameReader::new(1 << 20);
    let mut frames = Vec::new();
    loop {
        let n = reader
            .read_from(4096, |buf| s.read(buf))
            .expect("the server closes, it does not time out");
        while let Some(p) = reader.next_payload().unwrap() {
            let a = access::<ServerFrame>(p).unwrap();
            frames.push(rkyv::deserialize::<ServerFrame, rkyv::rancor::Error>(a).unwrap());
        }
        if n == 0 {
            break;
        }
    }
    assert!(
        matches!(frames.first(), Some(ServerFrame::Welcome(_))),
        "{frames:?}"
    );
    let replies: Vec<(u64, Outcome)> = frames
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Reply { id, outcome } => Some((id, outcome)),
            _ => None,
        })
        .collect();
    assert_eq!(replies.len(), 2, "{replies:?}");
    for (id, outcome) in &replies {
        match (id, outcome) {
            (1, Outcome::Put { .. }) => {}
            (2, Outcome::Get { value: Some(v), .. }) => assert_eq!(v.as_ref(), b"closed"),
            other => panic!("{other:?}"),
        }
    }
    put_get_works(&tc, "after-half-close");
}

/// Replicas on different hosts with the same ports (127.0.0.1, .2, .3 stand in for hosts): a
/// client that first reaches any one of them talks to the replica it means to.
#[test]
fn replicas_on_distinct_hosts_with_the_same_ports() {
    let tc = TestCluster::start_with(3, 2, |c| {
        let first = c.replicas[0].clone();
        for r in c.replicas.iter_mut() {
            r.host = format!("127.0.0.{}", r.id + 1);
            r.client_port = first.client_port;
            r.peer_port = first.peer_port;
            r.admin_port = first.admin_port;
            // Each replica is alone on its "host": auto pinning would stack them on one core.
            r.cpus = Cpus::Mode("off".into());
        }
    });
    for (i, endpoint) in tc.cluster.endpoints().into_iter().enumerate() {
        let mut opts = ClientOptions::new(vec![endpoint.clone()]);
        opts.op_timeout = Duration::from_secs(5);
        let mut c = Client::connect(opts).expect("connect");
        for (r, g, st) in c.status_all() {
            let st = st.unwrap_or_else(|e| panic!("via {endpoint}: status of {r}/{g}: {e}"));
            assert_eq!(
                (st.replica, st.group),
                (r, g),
                "via {endpoint}: asked {r}/{g}"
            );
        }
        for g in 0..2 {
            let key = key_in_group(&format!("via{i}-"), g, 2);
            match c.put(key.as_bytes(), b"v") {
                Ok(Outcome::Put { .. }) => {}
                other => panic!("via {endpoint}: put {key}: {other:?}"),
            }
            match c.get(key.as_bytes(), true) {
                Ok(Outcome::Get { value: Some(v), .. }) if v.as_ref() == b"v" => {}
                other => panic!("via {endpoint}: get {key}: {other:?}"),
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// 2. Start-up errors.

/// Runs `mpaxos server --config path --id id`, which must fail; returns its status and stderr.
fn server_must_fail(config: &Path, id: u32) -> (ExitStatus, String) {
    let mut child = Command::new(binary())
        .arg("server")
        .arg("--config")
        .arg(config)
        .arg("--id")
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mpaxos server");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            assert!(
                !status.success(),
                "the server should have refused to start; stderr: {stderr}"
            );
            return (status, stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the server with config {} did not exit", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The single `error:` line of `stderr` (asserting there is exactly one), which must contain
/// `needle`. With `only`, stderr must hold nothing else.
fn the_error_line(stderr: &str, needle: &str, only: bool) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one error: line, stderr was:\n{stderr}"
    );
    if only {
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "expected only the error line:\n{stderr}"
        );
    }
    assert!(
        errors[0].contains(needle),
        "the error line should mention {needle:?}: {}",
        errors[0]
    );
    errors[0].to_string()
}

/// `mpaxos cluster --replicas 5 --dir D` on a D that holds a 3-replica cluster used to start
/// the old cluster silently; a flag that disagrees with D's cluster.toml is refused (exit 2).
#[test]
fn cluster_refuses_flags_that_disagree_with_an_existing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ClusterConfig::local(3, 1, dir.path(), 20000);
    std::fs::write(dir.path().join("cluster.toml"), cfg.to_toml()).unwrap();
    for (args, needle) in [
        (&["--replicas", "5"][..], "it has 3 replicas, --replicas 5"),
        (&["--groups", "2"][..], "it has 1 groups, --groups 2"),
        (
            &["--durability", "memory"][..],
            "--durability asks for memory",
        ),
        (
            &["--protocol", "fast-paxos"][..],
            "it runs protocol = \"multi-paxos\", --protocol asks for fast-paxos",
        ),
    ] {
        let res = std::process::Command::new(binary())
            .arg("cluster")
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(stderr.contains("already holds a cluster"), "{stderr}");
    }
}

#[test]
fn bad_config_files_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port(3, 1).unwrap();
    let good = ClusterConfig::local(3, 1, &dir.path().join("data"), base);

    let path = dir.path().join("unparsable.toml");
    std::fs::write(&path, "cluster_id = 7\nreplicas = [ this is not toml\n").unwrap();
    let (_, stderr) = server_must_fail(&path, 0);
    the_error_line(&stderr, "unparsable.toml", true);

    let path = dir.path().join("unknown-field.toml");
    std::fs::write(&path, format!("bogus_knob = 3\n{}", good.to_toml())).unwrap();
    let (_, stderr) = server_must_fail(&path, 0);
    the_error_line(&stderr, "bogus_knob", true);

    let path = dir.path().join("unknown-nested-field.toml");
    let text = good
        .to_toml()
        .replace("[timeouts]", "[timeouts]\nelection_timeout_ms = 10");
    assert!(
        text.contains("election_timeout_ms = 10"),
        "the config has a [timeouts] table"
    );
    std::fs::write(&path, text).unwrap();
    let (_, stderr) = server_must_fail(&path, 0);
    the_error_line(&stderr, "election_timeout_ms", true);

    // Two replicas on one port.
    let mut clash = good.clone();
    clash.replicas[1].client_port = clash.replicas[0].peer_port;
    let path = dir.path().join("port-clash.toml");
    std::fs::write(&path, clash.to_toml()).unwrap();
    let (_, stderr) = server_must_fail(&path, 0);
    the_error_line(
        &stderr,
        &format!("port {}", clash.replicas[0].peer_port),
        true,
    );

    // A port some other process holds.
    let holder = std::net::TcpListener::bind(("127.0.0.1", good.replicas[0].client_port))
        .expect("bind the port the replica wants");
    let path = dir.path().join("good.toml");
    std::fs::write(&path, good.to_toml()).unwrap();
    let (_, stderr) = server_must_fail(&path, 0);
    let line = the_error_line(&stderr, &good.replicas[0].client_port.to_string(), false);
    assert_eq!(
        stderr.trim_end().lines().last(),
        Some(line.as_str()),
        "the error comes last"
    );
    drop(holder);

    // An id that is not in the config.
    let (_, stderr) = server_must_fail(&path, 3);
    the_error_line(&stderr, "--id 3", true);
}

#[test]
fn data_directory_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = free_base_port(1, 1).unwrap();
    let a = ClusterConfig::local(1, 1, &data, base);
    let cluster_a = a.cluster_id;
    {
        let mut cluster = LocalCluster::new(&dir.path().join("a"), a.clone(), binary()).unwrap();
        cluster.start(0).unwrap();
        cluster
            .wait_ready(Duration::from_secs(20))
            .expect("a one-replica cluster starts");
        let mut c = Client::connect(ClientOptions::new(cluster.endpoints())).unwrap();
        assert!(matches!(c.put(b"k", b"v"), Ok(Outcome::Put { .. })));
        cluster.stop();
    }
    assert!(
        data.join("replica-0").is_dir(),
        "replica 0 made its data directory"
    );

    let mut b = a.clone();
    b.cluster_id = cluster_a ^ 0x0bad_0000_0000_0000;
    let path = dir.path().join("b.toml");
    std::fs::write(&path, b.to_toml()).unwrap();
    let (_, stderr) = server_must_fail(&path, 0);
    let line = the_error_line(&stderr, &format!("{cluster_a:#x}"), true);
    assert!(line.contains("belongs to cluster"), "{line}");
}

// ------------------------------------------------------------------------------------------
// 3. kill -9 of the leader under load.

fn kill_leader_under_load(groups: u32, durability: BackendChoice) {
    let _serial = fault_lock();
    let mut tc = TestCluster::start(3, groups, durability);
    let election_max = Duration::from_millis(tc.config().timeouts.election_timeout_max_ms);
    let mut watcher = tc.client();
    let before = wait_leaders(&mut watcher, groups, Duration::from_secs(10));
    let victim = before[0];
    let led: Vec<u32> = (0..groups)
        .filter(|&g| before[g as usize] == victim)
        .collect();

    let load = Load::start(&tc, 4, &format!("kill{groups}"));
    std::thread::sleep(Duration::from_millis(500));

    let killed_at = Instant::now();
    tc.cluster.signal(victim, libc::SIGKILL);
    // Until every group the victim led has another leader.
    let elected_in = loop {
        let now = leaders(&mut watcher, groups);
        if led
            .iter()
            .all(|&g| now[g as usize].is_some_and(|l| l != victim))
        {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > election_max * 10 {
            break killed_at.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    eprintln!(
        "groups={groups}: new leader(s) for groups {led:?} {elected_in:?} after kill -9 of replica {victim} (bound {:?})",
        election_max * 2
    );
    std::thread::sleep(Duration::from_millis(500));
    let res = load.finish();
    assert!(
        elected_in <= election_max * 2,
        "no new leader within 2 x election_timeout_max ({:?}): took {elected_in:?}",
        election_max * 2
    );
    assert_no_errors(&tc, &res);
    let after = acked_per_group_since(&res.acked, groups, killed_at);
    assert!(
        after.iter().all(|&n| n > 0),
        "every group acknowledged writes after the kill: {after:?}"
    );
    eprintln!(
        "groups={groups}: {} acknowledged writes, {after:?} after the kill",
        res.acked.len()
    );
    verify_acked(&tc, &res.acked);

    // The victim comes back from its WAL and catches up.
    tc.cluster.start(victim).unwrap();
    wait_caught_up(&mut watcher, victim, groups, Duration::from_secs(60));
    put_get_works(&tc, "after-restart");
}

#[test]
fn kill_9_leader_under_load_one_group() {
    kill_leader_under_load(1, BackendChoice::Auto);
}

#[test]
fn kill_9_leader_under_load_two_groups() {
    kill_leader_under_load(2, BackendChoice::Sync);
}

// ------------------------------------------------------------------------------------------
// 4. SIGSTOP of a follower.

fn stop_follower_under_load(groups: u32, durability: BackendChoice) {
    let _serial = fault_lock();
    let mut tc = TestCluster::start(3, groups, durability);
    let election_max = Duration::from_millis(tc.config().timeouts.election_timeout_max_ms);
    let mut watcher = tc.client();
    let leaders_now = wait_leaders(&mut watcher, groups, Duration::from_secs(10));
    // With 3 replicas and at most 2 groups, some replica leads none.
    let follower = (0..3u32)
        .find(|r| !leaders_now.contains(r))
        .expect("a replica that leads no group");
    let terms_before = leader_ballots(&mut watcher, groups);

    let load = Load::start(&tc, 3, &format!("stop{groups}"));
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = Instant::now();
    tc.cluster.signal(follower, libc::SIGSTOP);
    // Long enough for any election timer to have fired several times.
    std::thread::sleep((election_max * 5).max(Duration::from_millis(1500)));
    let resumed_at = Instant::now();
    tc.cluster.signal(follower, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    let res = load.finish();

    assert_no_errors(&tc, &res);
    let during: Vec<usize> = {
        let mut n = vec![0; groups as usize];
        for a in res
            .acked
            .iter()
            .filter(|a| a.at > stopped_at && a.at < resumed_at)
        {
            n[group_of(a.key.as_bytes(), groups) as usize] += 1;
        }
        n
    };
    eprintln!(
        "groups={groups}: {} acknowledged writes, {during:?} while replica {follower} was stopped",
        res.acked.len()
    );
    assert!(
        during.iter().all(|&n| n > 0),
        "every group acknowledged writes while a follower was stopped: {during:?}"
    );

    wait_caught_up(&mut watcher, follower, groups, Duration::from_secs(60));
    // A follower coming back reads the heartbeats that queued up while it was stopped before
    // its overdue election timer can fire: the leaders were never disturbed.
    assert_eq!(
        leader_ballots(&mut watcher, groups),
        terms_before,
        "(leader, ballot) per group changed after replica {follower} was stopped and resumed"
    );
    verify_acked(&tc, &res.acked);
    put_get_works(&tc, "after-resume");
}

/// Hole 6 of the node issue: a follower restarted with kill -9 used to start an election before
/// any peer link existed (its timers started before WAL recovery, at `now = 0`), forcing the
/// leader to re-run phase 1. Now timers start after recovery and a pre-vote keeps a replica that
/// cannot win from deposing a healthy leader: the (leader, ballot) of every group survives.
#[test]
fn restarted_follower_does_not_disturb_the_leader() {
    let _serial = fault_lock();
    let groups = 2;
    let mut tc = TestCluster::start(3, groups, BackendChoice::Auto);
    let mut watcher = tc.client();
    let leaders_now = wait_leaders(&mut watcher, groups, Duration::from_secs(10));
    let follower = (0..3u32)
        .find(|r| !leaders_now.contains(r))
        .expect("a replica that leads no group");
    let terms_before = leader_ballots(&mut watcher, groups);
    let load = Load::start(&tc, 3, "restart-follower");
    std::thread::sleep(Duration::from_millis(300));
    tc.cluster.signal(follower, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    let restarted_at = Instant::now();
    tc.cluster.start(follower).unwrap();
    wait_caught_up(&mut watcher, follower, groups, Duration::from_secs(60));
    // Several election timeouts after its restart.
    let election_max = Duration::from_millis(tc.config().timeouts.election_timeout_max_ms);
    std::thread::sleep((election_max * 3).saturating_sub(restarted_at.elapsed()));
    let res = load.finish();
    assert_no_errors(&tc, &res);
    assert_eq!(
        leader_ballots(&mut watcher, groups),
        terms_before,
        "(leader, ballot) per group changed after replica {follower} was killed and restarted"
    );
    verify_acked(&tc, &res.acked);
}

#[test]
fn sigstop_follower_one_group() {
    stop_follower_under_load(1, BackendChoice::Sync);
}

#[test]
fn sigstop_follower_two_groups() {
    stop_follower_under_load(2, BackendChoice::Auto);
}

// ------------------------------------------------------------------------------------------
// SIGSTOP of the leader: the others elect a new one; the old one, resumed, steps down and
// catches up, and no acknowledged write is lost.

#[test]
fn sigstop_leader_then_resume() {
    let _serial = fault_lock();
    let groups = 1;
    let mut tc = TestCluster::start(3, groups, BackendChoice::Auto);
    let election_max = Duration::from_millis(tc.config().timeouts.election_timeout_max_ms);
    let mut watcher = tc.client();
    let old = wait_leaders(&mut watcher, groups, Duration::from_secs(10))[0];

    let load = Load::start(&tc, 3, "stopleader");
    std::thread::sleep(Duration::from_millis(300));
    tc.cluster.signal(old, libc::SIGSTOP);
    let stopped_at = Instant::now();
    // The watcher's link to the stopped leader would hang each poll: use the others only.
    let deadline = stopped_at + Duration::from_secs(10);
    let new = loop {
        let mut opts = ClientOptions::new(tc.cluster.endpoints());
        opts.attempt_timeout = Duration::from_millis(200);
        let mut c = Client::connect(opts).unwrap();
        let l = leaders(&mut c, groups)[0];
        if let Some(l) = l.filter(|&l| l != old) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no new leader while {old} is stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!(
        "replica {new} took over {:?} after replica {old} stopped",
        stopped_at.elapsed()
    );
    std::thread::sleep(election_max * 2);
    tc.cluster.signal(old, libc::SIGCONT);
    let resumed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let res = load.finish();
    assert_no_errors(&tc, &res);
    let after = acked_per_group_since(&res.acked, groups, resumed_at);
    assert!(after[0] > 0, "writes succeed after the old leader resumed");
    let mut watcher = tc.client();
    wait_caught_up(&mut watcher, old, groups, Duration::from_secs(60));
    let st = statuses(&mut watcher);
    let leaders_now: Vec<u32> = st
        .iter()
        .filter(|s| s.role == "leader")
        .map(|s| s.replica)
        .collect();
    assert_eq!(leaders_now.len(), 1, "one leader: {st:#?}");
    verify_acked(&tc, &res.acked);
}

// ------------------------------------------------------------------------------------------
// What a client sees while one replica is paused (SIGSTOP): the longest operation of a
// writer, a linearizable reader and a serializable reader that were running already, and of
// fresh clients (connect + one put, like the CLI) whose endpoint list names the paused replica
// first. All with the default client options (as the CLI and the load generator use them).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Follower,
    Leader,
}

/// Per probe, (operations, failed, longest operation) over the operations that overlapped the
/// pause.
fn measure_pause(victim: Victim) -> Vec<(&'static str, usize, usize, Duration)> {
    let _serial = fault_lock();
    let mut tc = TestCluster::start(3, 1, BackendChoice::Auto);
    let mut watcher = tc.client();
    let leader = wait_leaders(&mut watcher, 1, Duration::from_secs(10))[0];
    let target = match victim {
        Victim::Leader => leader,
        Victim::Follower => (0..3).find(|&r| r != leader).unwrap(),
    };
    let endpoints = tc.cluster.endpoints();
    // The paused replica first, as a CLI user listing it first would.
    let mut paused_first = vec![endpoints[target as usize].clone()];
    paused_first.extend(
        endpoints
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 != target)
            .map(|(_, e)| e.clone()),
    );
    let stop = Arc::new(AtomicBool::new(false));
    type Spans = Vec<(Instant, Instant, bool)>;
    let mut probes: Vec<(&'static str, JoinHandle<Spans>)> = Vec::new();
    for kind in [
        "writer",
        "linearizable reader",
        "serializable reader",
        "fresh client",
    ] {
        let stop = stop.clone();
        let eps = endpoints.clone();
        let first = paused_first.clone();
        probes.push((
            kind,
            std::thread::spawn(move || {
                let mut spans = Vec::new();
                let mut client = Client::connect(ClientOptions::new(eps)).expect("connect");
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("pause-{i}");
                    let t0 = Instant::now();
                    let ok = match kind {
                        "writer" => client.put(key.as_bytes(), b"v").is_ok(),
                        "linearizable reader" => client.get(b"pause-1", true).is_ok(),
                        "serializable reader" => client.get(b"pause-1", false).is_ok(),
                        _ => Client::connect(ClientOptions::new(first.clone()))
                            .and_then(|mut c| c.put(key.as_bytes(), b"v"))
                            .is_ok(),
                    };
                    spans.push((t0, Instant::now(), ok));
                    std::thread::sleep(Duration::from_millis(5));
                }
                spans
            }),
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let stopped_at = Instant::now();
    tc.cluster.signal(target, libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(2500));
    let resumed_at = Instant::now();
    tc.cluster.signal(target, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    probes
        .into_iter()
        .map(|(kind, h)| {
            let spans = h.join().expect("probe");
            let during: Vec<_> = spans
                .iter()
                .filter(|(s, e, _)| *e > stopped_at && *s < resumed_at)
                .collect();
            let longest = during
                .iter()
                .map(|(s, e, _)| *e - *s)
                .max()
                .unwrap_or_default();
            let failed = during.iter().filter(|x| !x.2).count();
            eprintln!(
                "{victim:?} paused: {kind}: {} ops overlapping the pause, {failed} failed, longest {longest:?}",
                during.len()
            );
            (kind, during.len(), failed, longest)
        })
        .collect()
}

/// The longest operation of `probe` in `m`.
fn longest(m: &[(&'static str, usize, usize, Duration)], probe: &str) -> Duration {
    let p = m.iter().find(|p| p.0 == probe).expect("probe ran");
    assert_eq!(p.2, 0, "{probe}: no operation failed");
    assert!(p.1 > 0, "{probe}: some operation overlapped the pause");
    p.3
}

// Before the client moved on by observed latency, each of these took the whole 1 s attempt
// timeout (see docs/internals/client.md); the bounds leave room for a loaded machine.
#[test]
fn paused_follower_unavailability_seen_by_clients() {
    let m = measure_pause(Victim::Follower);
    for probe in ["writer", "linearizable reader", "serializable reader"] {
        let t = longest(&m, probe);
        assert!(t < Duration::from_millis(500), "{probe}: {t:?}");
    }
    let t = longest(&m, "fresh client");
    assert!(t < Duration::from_millis(700), "fresh client: {t:?}");
}

#[test]
fn paused_leader_unavailability_seen_by_clients() {
    let m = measure_pause(Victim::Leader);
    // A new leader takes an election timeout (150-300 ms) to appear.
    for probe in ["writer", "linearizable reader", "fresh client"] {
        let t = longest(&m, probe);
        assert!(t < Duration::from_millis(900), "{probe}: {t:?}");
    }
    // Serializable reads are hedged to another replica.
    let t = longest(&m, "serializable reader");
    assert!(t < Duration::from_millis(500), "serializable reader: {t:?}");
}

// ------------------------------------------------------------------------------------------
// The CLI's exit codes when it gives up: 6 for a write that reached a replica without a
// definite answer (outcome unknown), 1 for a read (or anything definitely not applied).

#[test]
fn cli_reports_outcome_unknown_with_exit_code_6() {
    let _serial = fault_lock();
    let mut tc = TestCluster::start(3, 1, BackendChoice::Memory);
    let mut watcher = tc.client();
    let leader = wait_leaders(&mut watcher, 1, Duration::from_secs(10))[0];
    let others: Vec<u32> = (0..3).filter(|&r| r != leader).collect();
    let endpoints = tc.cluster.endpoints();
    // The live follower first: discovery goes through it and learns the (paused) leader.
    let eps = format!(
        "{},{},{}",
        endpoints[others[0] as usize], endpoints[leader as usize], endpoints[others[1] as usize]
    );
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .args(args)
            .args(["--endpoints", &eps, "--timeout-ms", "800"])
            .output()
            .expect("run the CLI");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = cli(&["put", "before", "1"]);
    assert_eq!(code, Some(0), "{err}");
    // No majority: the leader and one follower paused.
    tc.cluster.signal(leader, libc::SIGSTOP);
    tc.cluster.signal(others[1], libc::SIGSTOP);
    let (code, err) = cli(&["put", "during", "1"]);
    assert_eq!(code, Some(6), "a write sent to the paused leader: {err}");
    assert!(err.contains("unknown"), "{err}");
    let (code, err) = cli(&["get", "before"]);
    assert_eq!(code, Some(1), "a read that timed out: {err}");
    tc.cluster.signal(leader, libc::SIGCONT);
    tc.cluster.signal(others[1], libc::SIGCONT);
}

// ------------------------------------------------------------------------------------------
// Quorum leases on real processes: a follower serves linearizable reads itself, and killing a
// lease holder stalls writes only until its grants have run out.

fn metric(tc: &TestCluster, replica: u32, name: &str) -> u64 {
    let r = &tc.config().replicas[replica as usize];
    let mut s = TcpStream::connect((r.host.as_str(), r.admin_port)).expect("admin port");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains("group=\"0\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn quorum_lease_followers_serve_linearizable_reads_locally() {
    let tc = TestCluster::start_with(3, 1, |c| {
        c.durability = BackendChoice::Sync;
        c.read_mode = Some(mpaxos::protocol::ReadMode::QuorumLease);
    });
    let mut writer = tc.client();
    let leader = wait_leaders(&mut writer, 1, Duration::from_secs(10))[0];
    for i in 0..20u32 {
        let key = format!("ql-{i}");
        writer.put(key.as_bytes(), b"v1").unwrap();
        writer
            .put(key.as_bytes(), format!("v2-{i}").as_bytes())
            .unwrap();
        // Right after the write, from each follower: the new value, without a redirect.
        for f in (0..3).filter(|&r| r != leader) {
            let mut opts = ClientOptions::new(tc.cluster.endpoints());
            opts.read_from = Some(f);
            let mut reader = Client::connect(opts).unwrap();
            match reader.get(key.as_bytes(), true) {
                Ok(Outcome::Get { value: Some(v), .. }) => {
                    assert_eq!(
                        v.as_ref(),
                        format!("v2-{i}").as_bytes(),
                        "stale read at {f}"
                    )
                }
                other => panic!("read at {f}: {other:?}"),
            }
            assert_eq!(
                reader.stats().redirects,
                0,
                "replica {f} redirected the read"
            );
        }
    }
    for f in (0..3).filter(|&r| r != leader) {
        let local = metric(&tc, f, "mpaxos_lease_reads_local_total");
        assert!(local >= 20, "replica {f} served {local} reads locally");
    }
}

#[test]
fn quorum_lease_kill_9_holder_stalls_writes_briefly() {
    let _serial = fault_lock();
    let mut tc = TestCluster::start_with(3, 1, |c| {
        c.durability = BackendChoice::Sync;
        c.read_mode = Some(mpaxos::protocol::ReadMode::QuorumLease);
    });
    let mut watcher = tc.client();
    let leader = wait_leaders(&mut watcher, 1, Duration::from_secs(10))[0];
    let holder = (leader + 1) % 3;
    let load = Load::start(&tc, 2, "qlkill");
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    tc.cluster.signal(holder, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(1500));
    let res = load.finish();
    assert_no_errors(&tc, &res);
    // The longest pause in acknowledged writes around the kill.
    let mut times: Vec<Instant> = res.acked.iter().map(|a| a.at).collect();
    times.sort();
    let gap = times
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .map(|w| w[1] - w[0].max(killed_at))
        .max()
        .unwrap_or_default();
    let held = metric(&tc, leader, "mpaxos_writes_held_for_lease_holders_total");
    eprintln!(
        "quorum leases: writes paused {gap:?} after kill -9 of holder {holder} ({held} slots held for holders)"
    );
    let after = res.acked.iter().filter(|a| a.at > killed_at).count();
    assert!(after > 0, "no write acknowledged after the kill");
    // protocol.md §8: grantor_hold_ms (147 ms with the defaults) + a message delay + two
    // heartbeats, plus scheduling noise on a shared machine.
    assert!(gap < Duration::from_millis(1000), "writes paused {gap:?}");
    verify_acked(&tc, &res.acked);
}

/// The lease configuration is a log entry: `mpaxos lease-holders set` removes a follower from
/// the holders of a running cluster; every replica applies it, the removed follower stops
/// serving linearizable reads locally once its grants ran out (it redirects them), and writes
/// go on. Bad ids are refused with a clear message and exit code 2.
#[test]
fn quorum_lease_holders_change_through_the_cli() {
    // Serialized with the fault tests: its load would skew their timing bounds on 2 cores.
    let _serial = fault_lock();
    let tc = TestCluster::start_with(3, 1, |c| {
        c.durability = BackendChoice::Sync;
        c.read_mode = Some(mpaxos::protocol::ReadMode::QuorumLease);
    });
    let mut writer = tc.client();
    let leader = wait_leaders(&mut writer, 1, Duration::from_secs(10))[0];
    let removed = (leader + 1) % 3;
    let kept: Vec<u32> = (0..3).filter(|&r| r != removed).collect();
    let eps = tc.cluster.endpoints().join(",");
    let cli = |args: &[&str]| {
        let out = Command::new(binary())
            .args(args)
            .args(["--endpoints", &eps])
            .output()
            .expect("run the CLI");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let reader_at = |r: u32| {
        let mut opts = ClientOptions::new(tc.cluster.endpoints());
        opts.read_from = Some(r);
        Client::connect(opts).unwrap()
    };
    writer.put(b"qlc", b"v0").unwrap();
    let mut reader = reader_at(removed);
    reader.get(b"qlc", true).unwrap();
    assert_eq!(
        reader.stats().redirects,
        0,
        "{removed} is a holder at first"
    );
    // Bad input: clear errors, exit code 2, nothing proposed.
    let (code, _, err) = cli(&["lease-holders", "set", "0,7"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("replica 7 does not exist"), "{err}");
    let (code, _, err) = cli(&["lease-holders", "set", "0,x"]);
    assert_eq!(code, Some(2), "{err}");
    // Remove one follower.
    let set = format!("{},{}", kept[0], kept[1]);
    let (code, out, err) = cli(&["lease-holders", "set", &set]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("OK group=0 lease_holders={set}")),
        "{out}"
    );
    // Every replica applies it (the status carries the configuration in effect).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = statuses(&mut writer)
            .iter()
            .all(|s| s.lease_holders == (1 << kept[0]) | (1 << kept[1]));
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "not applied everywhere");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, out, err) = cli(&["lease-holders", "get"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.matches(&format!(" {set}\n")).count(), 3, "{out}");
    // Its grants (lease_ms = 120 ms from their request) have run out.
    std::thread::sleep(Duration::from_millis(400));
    let local_before = metric(&tc, removed, "mpaxos_lease_reads_local_total");
    let forwarded_before = metric(&tc, removed, "mpaxos_lease_reads_forwarded_total");
    for i in 0..10u32 {
        let v = format!("v{}", i + 1);
        writer.put(b"qlc", v.as_bytes()).unwrap();
        let mut reader = reader_at(removed);
        match reader.get(b"qlc", true) {
            Ok(Outcome::Get {
                value: Some(got), ..
            }) => assert_eq!(got.as_ref(), v.as_bytes()),
            other => panic!("read through {removed}: {other:?}"),
        }
        assert!(reader.stats().redirects >= 1, "{removed} answered itself");
    }
    assert_eq!(
        metric(&tc, removed, "mpaxos_lease_reads_local_total"),
        local_before,
        "the removed holder served reads locally"
    );
    assert!(metric(&tc, removed, "mpaxos_lease_reads_forwarded_total") >= forwarded_before + 10);
    // The kept follower still reads locally.
    let kept_follower = kept.iter().copied().find(|&r| r != leader).unwrap();
    let mut reader = reader_at(kept_follower);
    reader.get(b"qlc", true).unwrap();
    assert_eq!(
        reader.stats().redirects,
        0,
        "{kept_follower} is still a holder"
    );
    for r in 0..3 {
        assert!(
            metric(&tc, r, "mpaxos_lease_config_changes_total") >= 1,
            "replica {r}"
        );
    }
    // Back to every replica.
    let (code, out, err) = cli(&["lease-holders", "set", "all"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("lease_holders=all"), "{out}");
}

// Fast Paxos on real processes (docs/internals/protocol.md §11): clients send each write to
// every replica, and it is chosen by the replicas' votes without a hop through the leader.

fn fast_paxos_cluster() -> TestCluster {
    TestCluster::start_with(3, 1, |c| {
        c.durability = BackendChoice::Sync;
        c.protocol = Some(mpaxos::protocol::ProtocolMode::FastPaxos);
    })
}

/// Waits until the leader has opened fast rounds (a mode switch) and returns it.
fn wait_fast_rounds(tc: &TestCluster) -> u32 {
    let mut watcher = tc.client();
    let leader = wait_leaders(&mut watcher, 1, Duration::from_secs(10))[0];
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(tc, leader, "mpaxos_fast_mode_switches_total") == 0 {
        assert!(Instant::now() < deadline, "fast rounds never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
    leader
}

#[test]
fn fast_paxos_cluster_serves_puts_and_gets_through_every_replica() {
    // Serialized with the fault tests (its load skews their timing bounds on 2 cores). In two
    // CI runs it left a write pending at every replica for over 10 s: a command whose fast vote
    // was lost was never voted again, since a client's retry only re-attached to the pending
    // write. A retry now votes for it again (node.rs `propose_write`).
    let _serial = fault_lock();
    let tc = fast_paxos_cluster();
    let leader = wait_fast_rounds(&tc);
    let endpoints = tc.cluster.endpoints();
    for (r, endpoint) in endpoints.iter().enumerate() {
        // A client that reached replica r first takes r's answers: r is its "nearest".
        let mut opts = ClientOptions::new(vec![endpoint.clone()]);
        opts.op_timeout = Duration::from_secs(10);
        let mut c = Client::connect(opts).expect("client connects");
        assert!(c.topology().fast_paxos, "the topology says fast-paxos");
        for i in 0..20 {
            let key = format!("fast-{r}-{i}");
            match c.put(key.as_bytes(), b"v1") {
                Ok(Outcome::Put { version: 1, .. }) => {}
                other => panic!("put {key} via {r}: {other:?}"),
            }
            match c.get(key.as_bytes(), true) {
                Ok(Outcome::Get { value: Some(v), .. }) => assert_eq!(v.as_ref(), b"v1"),
                other => panic!("get {key}: {other:?}"),
            }
        }
        assert_eq!(c.stats().redirects, 0, "a write through {r} was redirected");
    }
    // One client at a time sees no collision: the writes took the fast path.
    let fast = metric(&tc, leader, "mpaxos_fast_chosen_total");
    assert!(
        fast >= 50,
        "only {fast} of 60 writes were chosen by a fast quorum"
    );
    // Several writers at once: every acknowledged write reads back.
    let load = Load::start(&tc, 3, "fastload");
    std::thread::sleep(Duration::from_millis(1000));
    let res = load.finish();
    assert_no_errors(&tc, &res);
    assert!(res.acked.len() > 30, "only {} writes", res.acked.len());
    verify_acked(&tc, &res.acked);
}

#[test]
fn fast_paxos_collisions_apply_every_write_exactly_once() {
    let tc = fast_paxos_cluster();
    let leader = wait_fast_rounds(&tc);
    // Four writers on one key: their commands reach the replicas in different orders, so fast
    // rounds collide and the leader recovers them; a command chosen twice must count once.
    let acked: Vec<u64> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let mut c = tc.client();
                s.spawn(move || {
                    let mut ok = 0;
                    for i in 0..40 {
                        match c.put(b"hot", format!("t{t}-{i}").as_bytes()) {
                            Ok(Outcome::Put { .. }) => ok += 1,
                            other => panic!("put: {other:?}"),
                        }
                    }
                    ok
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let total: u64 = acked.iter().sum();
    let mut c = tc.client();
    match c.get(b"hot", true) {
        Ok(Outcome::Get { version, .. }) => assert_eq!(version, total, "puts applied != acked"),
        other => panic!("get: {other:?}"),
    }
    let collisions = metric(&tc, leader, "mpaxos_fast_collisions_total")
        + metric(&tc, leader, "mpaxos_fast_recovery_timeouts_total");
    eprintln!(
        "fast paxos, one hot key, 4 writers: {total} puts, {} fast-chosen slots, {collisions} recovered",
        metric(&tc, leader, "mpaxos_fast_chosen_total")
    );
}

/// N = 3 has a fast quorum of 3: with one replica killed no fast round can choose anything, so
/// the leader falls back to classic rounds (a mode switch) and writes go on through it.
#[test]
fn fast_paxos_three_replicas_fall_back_to_classic_rounds_when_one_dies() {
    let _serial = fault_lock();
    let mut tc = fast_paxos_cluster();
    let leader = wait_fast_rounds(&tc);
    let victim = (leader + 1) % 3;
    tc.cluster.signal(victim, libc::SIGKILL);
    let mut c = tc.client();
    for i in 0..20 {
        let key = format!("after-kill-{i}");
        match c.put(key.as_bytes(), b"v") {
            Ok(Outcome::Put { .. }) => {}
            other => panic!("put {key} with replica {victim} dead: {other:?}"),
        }
    }
    let switches = metric(&tc, leader, "mpaxos_fast_mode_switches_total");
    assert!(
        switches >= 2,
        "fast rounds opened and closed: {switches} switches"
    );
    let classic = metric(&tc, leader, "mpaxos_classic_chosen_total");
    assert!(
        classic >= 20,
        "the writes went through classic rounds: {classic}"
    );
}

// ------------------------------------------------------------------------------------------
// Snapshots on real processes.

/// Small snapshot thresholds on real replicas: a follower killed while the others write and
/// truncate comes back through a snapshot transfer; `mpaxos snapshot save` reads the live
/// cluster, `snapshot status -w json` describes the file, and `mpaxos cluster
/// --from-snapshot` starts a new cluster that serves the same data.
#[test]
fn snapshot_transfer_save_status_and_restore() {
    let _serial = fault_lock();
    let mut tc = TestCluster::start_with(3, 1, |c| {
        c.snapshot_every_entries = 20;
        c.snapshot_trail_slots = 0;
    });
    let mut watcher = tc.client();
    let leaders_now = wait_leaders(&mut watcher, 1, Duration::from_secs(10));
    let follower = (0..3u32).find(|r| *r != leaders_now[0]).unwrap();
    let mut c = tc.client();
    let put = |c: &mut Client, i: u32| {
        let (k, v) = (format!("snap/{i}"), format!("v{i}"));
        match c.put(k.as_bytes(), v.as_bytes()) {
            Ok(Outcome::Put { .. }) => {}
            other => panic!("put {k}: {other:?}"),
        }
    };
    for i in 0..50 {
        put(&mut c, i);
    }
    tc.cluster.signal(follower, libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    for i in 50..200 {
        put(&mut c, i);
    }
    tc.cluster.start(follower).unwrap();
    wait_caught_up(&mut watcher, follower, 1, Duration::from_secs(30));
    let log = std::fs::read_to_string(tc.cluster.log_path(follower)).unwrap_or_default();
    assert!(
        log.contains("installed a peer's snapshot"),
        "replica {follower} caught up without a snapshot:\n{}",
        tc.log_tails()
    );
    // The replicas say when they take snapshots (operators look for it in the logs).
    let leader_log =
        std::fs::read_to_string(tc.cluster.log_path(leaders_now[0])).unwrap_or_default();
    assert!(
        leader_log.contains("snapshot durable"),
        "the leader's log does not mention its snapshots:\n{}",
        tc.log_tails()
    );
    // Its data directory holds snapshots, and it serves a serializable read of a key it
    // never received as a log entry.
    let snaps = std::fs::read_dir(tc.config().replica_data_dir(follower).join("group-0"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .count();
    assert!(snaps >= 1, "no snapshot file on replica {follower}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.snap");
    let endpoints = tc.cluster.endpoints().join(",");
    let out = Command::new(binary())
        .args(["snapshot", "save"])
        .arg(&file)
        .args(["--endpoints", &endpoints])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "snapshot save failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(binary())
        .args(["snapshot", "status"])
        .arg(&file)
        .args(["-w", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["keys"], 200, "{status}");
    assert_eq!(status["revision"], 200, "{status}");
    assert_eq!(
        status["bytes"],
        std::fs::metadata(&file).unwrap().len(),
        "{status}"
    );
    assert_eq!(status["checksum"].as_str().unwrap().len(), 8, "{status}");
    // A damaged file is refused with one clear line.
    let mut bad = std::fs::read(&file).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let bad_file = dir.path().join("bad.snap");
    std::fs::write(&bad_file, bad).unwrap();
    let out = Command::new(binary())
        .args(["snapshot", "status"])
        .arg(&bad_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));
    drop(c);
    drop(watcher);
    drop(tc);

    // Restore into a new cluster and read the data back. Its ports are picked free but can be
    // taken by another test before a replica binds them: try again in a new directory on
    // other ports (as `TestCluster::start_with` does), and say why the last attempt failed.
    let mut failures = String::new();
    let (mut child, endpoints) = (0..3)
        .find_map(|attempt| {
            let base = free_base_port(3, 1).unwrap();
            let stderr_path = dir.path().join(format!("restored-{attempt}.stderr"));
            let mut child = Command::new(binary())
                .args(["cluster", "--dir"])
                .arg(dir.path().join(format!("restored-{attempt}")))
                .args(["--base-port", &base.to_string(), "--from-snapshot"])
                .arg(&file)
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr_path).unwrap())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
            loop {
                let Some(Ok(line)) = lines.next() else {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    let tail: Vec<&str> = err.lines().rev().take(20).collect();
                    failures += &format!("attempt {attempt} (base port {base}):\n");
                    for l in tail.iter().rev() {
                        failures += &format!("  {l}\n");
                    }
                    return None;
                };
                if let Some(e) = line.strip_prefix("endpoints: ") {
                    // Keep draining stdout so the cluster never blocks on a full pipe.
                    std::thread::spawn(move || for _ in lines {});
                    return Some((child, e.trim().to_string()));
                }
            }
        })
        .unwrap_or_else(|| panic!("the restored cluster did not start:\n{failures}"));
    let result = std::panic::catch_unwind(|| {
        let mut opts = ClientOptions::new(endpoints.split(',').map(String::from).collect());
        opts.op_timeout = Duration::from_secs(10);
        let mut c = Client::connect(opts).unwrap();
        for i in [0, 49, 50, 199] {
            let key = format!("snap/{i}");
            match c.get(key.as_bytes(), true) {
                Ok(Outcome::Get { value: Some(v), .. }) => {
                    assert_eq!(v.as_ref(), format!("v{i}").as_bytes())
                }
                other => panic!("get {key} from the restored cluster: {other:?}"),
            }
        }
        // It takes writes, and revisions go on from the snapshot's.
        match c.put(b"snap/new", b"x") {
            Ok(Outcome::Put { revision, .. }) => assert_eq!(revision, 201),
            other => panic!("put after restore: {other:?}"),
        }
    });
    // SAFETY: signalling our own child process by its pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn replicas_that_spin_before_sleeping_serve_and_fail_over() {
    let _serial = fault_lock();
    let mut tc = TestCluster::start_with(3, 1, |c| {
        c.durability = BackendChoice::Sync;
        c.spin_us = 20;
    });
    put_get_works(&tc, "spin");
    // A leader that spins still loses its lease and leadership when it is killed.
    let mut client = tc.client();
    let leader = wait_leaders(&mut client, 1, Duration::from_secs(10))[0];
    tc.cluster.signal(leader, libc::SIGKILL);
    client
        .put(b"spin-after", b"v")
        .expect("a put after the leader died");
    match client.get(b"spin-after", true) {
        Ok(Outcome::Get { value: Some(v), .. }) if v.as_ref() == b"v" => {}
        other => panic!("get after failover returned {other:?}"),
    }
    let now = wait_leaders(&mut client, 1, Duration::from_secs(10))[0];
    assert_ne!(now, leader, "a new leader");
}
