//! The load generator's measurement rules against a scripted fake server (no timings of our
//! own code are asserted; the delays asserted are ones the test injects).
//!
//! - Coordinated omission: a server that stalls once for 1 s. Open loop measures from the
//!   scheduled time, so its p99 shows the stall; closed loop measures from the send, so one
//!   slow request hides in its p99.
//! - Placement emulation: the measured RTT of an emulated link is within 5% (plus the loopback
//!   base) of the configured one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpaxos::bench::engine::{Engine, EngineConfig};
use mpaxos::bench::stats::Percentiles;
use mpaxos::bench::workload::{Arrival, KeyDist};
use mpaxos::net::frame::{access, FrameEncoder, FrameReader};
use mpaxos::net::placement::Placement;
use mpaxos::net::wire::{
    ArchivedClientFrame, ClientFrame, GroupStatus, Outcome, ReplicaInfo, ServerFrame, Topology,
    WBallot,
};

/// A one-replica, one-group fake that answers every put at once, except that the first
/// request arriving after `stall_after` waits `stall` before it (and everything behind it) is
/// answered.
struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl FakeServer {
    fn start(stall_after: Option<Duration>, stall: Duration) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let stalled = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let stalled = stalled.clone();
                std::thread::spawn(move || {
                    serve(conn, port, started, stall_after, stall, &stalled)
                });
            }
        });
        FakeServer { port, stop }
    }

    fn topology(&self) -> Topology {
        Topology {
            cluster_id: 7,
            groups: 1,
            replicas: vec![ReplicaInfo {
                id: 0,
                host: "127.0.0.1".into(),
                client_port_base: self.port,
                region: "a".into(),
            }],
            leaders: vec![Some(0)],
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(
    mut s: TcpStream,
    port: u16,
    started: Instant,
    stall_after: Option<Duration>,
    stall: Duration,
    stalled: &AtomicBool,
) {
    let _ = s.set_nodelay(true);
    let mut reader = FrameReader::default();
    let mut enc = FrameEncoder::new();
    let mut out = Vec::new();
    loop {
        while let Ok(Some(p)) = reader.next_payload() {
            let Ok(frame) = access::<ClientFrame>(p) else {
                return;
            };
            let reply = match frame {
                ArchivedClientFrame::Hello(_) => ServerFrame::Welcome(Topology {
                    cluster_id: 7,
                    groups: 1,
                    replicas: vec![ReplicaInfo {
                        id: 0,
                        host: "127.0.0.1".into(),
                        client_port_base: port,
                        region: "a".into(),
                    }],
                    leaders: vec![Some(0)],
                }),
                ArchivedClientFrame::Request(r) => {
                    if let Some(after) = stall_after {
                        if started.elapsed() >= after && !stalled.swap(true, Ordering::SeqCst) {
                            std::thread::sleep(stall);
                        }
                    }
                    ServerFrame::Reply {
                        id: r.id.to_native(),
                        outcome: Outcome::Put {
                            revision: 1,
                            version: 1,
                        },
                    }
                }
                ArchivedClientFrame::Status { id } => ServerFrame::Status {
                    id: id.to_native(),
                    status: GroupStatus {
                        replica: 0,
                        group: 0,
                        role: "leader".into(),
                        leader: Some(0),
                        ballot: WBallot {
                            round: 1,
                            replica: 0,
                        },
                        commit: 0,
                        applied: 0,
                        proposals_pending: 0,
                        wal_backend: "memory".into(),
                    },
                },
                ArchivedClientFrame::Topology { .. } => continue,
            };
            out.clear();
            enc.encode(&reply, &mut out);
            if s.write_all(&out).is_err() {
                return;
            }
        }
        match reader.read_from(16 * 1024, |b| s.read(b)) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn config(topology: Topology) -> EngineConfig {
    EngineConfig {
        topology,
        clients: 1,
        outstanding: 1,
        rate: None,
        arrival: Arrival::Constant,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(3),
        read_ratio: 0.0,
        linearizable_reads: true,
        keys: 1000,
        key_dist: KeyDist::Uniform,
        value_bytes: 16,
        key_bytes: 16,
        seed: 3,
        placement: None,
        attempt_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
        probes_per_link: 0,
        spin: Duration::ZERO,
    }
}

fn put_percentiles(cfg: EngineConfig) -> Percentiles {
    let result = Engine::new(cfg).unwrap().run(&|_| {}).unwrap();
    assert_eq!(result.unfinished, 0);
    Percentiles::of(&result.recorder.merged(|k| k.op == "put"))
}

#[test]
fn open_loop_shows_a_stall_that_closed_loop_hides() {
    let stall = Duration::from_secs(1);
    // The stall starts 1.2 s in: inside the measured window (0.2 s warm-up, 3 s measured).
    let closed_server = FakeServer::start(Some(Duration::from_millis(1200)), stall);
    let closed = put_percentiles(config(closed_server.topology()));

    let open_server = FakeServer::start(Some(Duration::from_millis(1200)), stall);
    let mut cfg = config(open_server.topology());
    cfg.rate = Some(1000.0);
    cfg.outstanding = 64;
    let open = put_percentiles(cfg);

    // Closed loop: one request waited the whole stall (max), but the stall is a single
    // sample among thousands, so p99 stays far below it.
    assert!(closed.max >= 900_000.0, "closed max {} us", closed.max);
    assert!(closed.p99 < 100_000.0, "closed p99 {} us", closed.p99);
    // Open loop: every request scheduled during the stall (a third of the window) is late by
    // up to the stall, so p99 is close to the stall itself.
    assert!(open.p99 >= 800_000.0, "open p99 {} us", open.p99);
    assert!(open.p90 >= 300_000.0, "open p90 {} us", open.p90);
    assert!(open.count >= 2500, "open-loop requests {}", open.count);
}

fn write_placement(dir: &Path, rtt_ms: f64) -> Placement {
    std::fs::write(
        dir.join("rtt.csv"),
        format!("from,to,rtt_avg_ms\nnear,far,{rtt_ms}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("p.toml"),
        "name = \"test\"\nrtt_csv = \"rtt.csv\"\nregions = [\"near\", \"far\"]\nreplicas = [\"near\"]\nclients = [\"near\", \"far\"]\n",
    )
    .unwrap();
    Placement::load(&dir.join("p.toml")).unwrap()
}

#[test]
fn emulated_links_have_the_configured_rtt() {
    let dir = tempfile::tempdir().unwrap();
    let rtt_ms = 40.0;
    let placement = write_placement(dir.path(), rtt_ms);
    let server = FakeServer::start(None, Duration::ZERO);
    let mut cfg = config(server.topology());
    cfg.placement = Some(placement);
    cfg.clients = 2; // one per region
    cfg.probes_per_link = 10;
    cfg.duration = Duration::from_millis(500);
    cfg.warmup = Duration::ZERO;
    let result = Engine::new(cfg).unwrap().run(&|_| {}).unwrap();
    let far = result
        .links
        .iter()
        .find(|l| l.client_region == "far")
        .expect("a far link");
    let near = result
        .links
        .iter()
        .find(|l| l.client_region == "near")
        .expect("a near link");
    assert_eq!(far.configured_rtt_ms, rtt_ms);
    assert_eq!(far.samples, 10);
    // The loopback base: what the same link costs without emulation.
    let base_ms = near.measured_rtt_ms_p50;
    assert!(base_ms < 5.0, "loopback base {base_ms} ms");
    let err = (far.measured_rtt_ms_p50 - rtt_ms).abs();
    assert!(
        err <= 0.05 * rtt_ms + base_ms,
        "measured {} ms vs configured {rtt_ms} ms (base {base_ms} ms)",
        far.measured_rtt_ms_p50
    );
    // And every far request paid the round trip.
    let far_puts = result
        .recorder
        .merged(|k| k.region == "far" && k.op == "put");
    assert!(far_puts.min() as f64 >= 0.95 * rtt_ms * 1e6);
}
