//! The session against a scripted fake cluster: no sockets, no clock, no threads.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::*;
use crate::kv::{self, KvStore};
use crate::net::wire::outcome_from_reply;

/// What a replica does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// Applies writes (exactly-once through the real kv) and answers after its latency.
    Leader,
    /// Answers `NotLeader { leader: hint }`.
    Follower(Option<u32>),
    /// Accepts the request and never answers (SIGSTOP); the requests are kept for `resume`.
    Paused,
    /// Answers `Busy`.
    Busy,
    /// The connection is refused: nothing is written.
    Refuse,
    /// Applies a write, then the connection drops before the answer.
    DropLink,
    /// Answers `WrongGroup`.
    WrongGroup(u32),
    /// A leader that proposed the write, lost leadership and answered `NotLeader`, while the
    /// next leader chose it anyway (`runtime/group.rs`, `fail_waiting`): applied, then
    /// redirected.
    Deposed(Option<u32>),
}

struct Fake {
    modes: Vec<Mode>,
    latency: Vec<Nanos>,
    kv: KvStore,
    /// Every request the session sent, with the time and target.
    sent: Vec<(Nanos, Transmit)>,
    /// Requests held by paused replicas.
    held: Vec<Transmit>,
    /// Replies on their way: (arrival, replica, group, request id, outcome).
    replies: Vec<(Nanos, u32, u32, u64, Outcome)>,
}

impl Fake {
    fn apply(&mut self, t: &Transmit) -> Outcome {
        let payload = match &t.request.op {
            Op::Get { key, .. } => return outcome_from_reply(self.kv.get(key)),
            Op::Put { key, value } => kv::Op::Put {
                key: key.clone(),
                value: value.clone(),
            },
            Op::Delete { key } => kv::Op::Delete { key: key.clone() },
            Op::Cas {
                key,
                expected_version,
                value,
            } => kv::Op::Cas {
                key: key.clone(),
                expected_version: *expected_version,
                value: value.clone(),
            },
            Op::SetLeaseHolders { holders, .. } => kv::Op::LeaseHolders { holders: *holders },
        }
        .encode();
        outcome_from_reply(self.kv.apply(t.request.client_id, t.request.seq, &payload))
    }
}

struct H {
    s: Session,
    f: Fake,
    now: Nanos,
    done: BTreeMap<OpId, (Nanos, Result<Outcome, SessionError>)>,
}

fn cfg(replicas: u32) -> SessionConfig {
    let mut c = SessionConfig::new(0x1001, 1, replicas);
    c.leaders = vec![Some(0)];
    c
}

impl H {
    fn new(cfg: SessionConfig, modes: Vec<Mode>) -> H {
        let n = modes.len();
        H {
            s: Session::new(cfg),
            f: Fake {
                modes,
                latency: vec![MS; n],
                kv: KvStore::new(),
                sent: Vec::new(),
                held: Vec::new(),
                replies: Vec::new(),
            },
            now: 0,
            done: BTreeMap::new(),
        }
    }

    /// Hands every transmit to its replica, and collects completions.
    fn pump(&mut self) {
        while let Some(t) = self.s.poll_transmit() {
            self.f.sent.push((self.now, t.clone()));
            let r = t.replica as usize;
            let at = self.now + self.f.latency[r];
            let reply = |o| (at, t.replica, t.group, t.request.id, o);
            match self.f.modes[r].clone() {
                Mode::Leader => {
                    let o = self.f.apply(&t);
                    self.f.replies.push(reply(o));
                }
                Mode::Follower(hint) => self
                    .f
                    .replies
                    .push(reply(Outcome::NotLeader { leader: hint })),
                Mode::Busy => self.f.replies.push(reply(Outcome::Busy)),
                Mode::WrongGroup(g) => self.f.replies.push(reply(Outcome::WrongGroup { group: g })),
                Mode::Deposed(hint) => {
                    let _ = self.f.apply(&t);
                    self.f
                        .replies
                        .push(reply(Outcome::NotLeader { leader: hint }));
                }
                Mode::Paused => self.f.held.push(t),
                Mode::Refuse => self.s.on_send_failed(self.now, t.request.id, "refused"),
                Mode::DropLink => {
                    let _ = self.f.apply(&t);
                    self.s
                        .on_link_failed(self.now, t.replica, t.group, "connection reset");
                }
            }
        }
        while let Some((id, r)) = self.s.poll_complete() {
            self.done.insert(id, (self.now, r));
        }
    }

    /// Advances to the next reply or session timeout; false if there is none.
    fn step(&mut self) -> bool {
        self.pump();
        let next_reply = self.f.replies.iter().map(|r| r.0).min();
        let timeout = self.s.poll_timeout();
        match (next_reply, timeout) {
            (Some(r), t) if t.is_none_or(|t| r <= t) => {
                let i = self.f.replies.iter().position(|x| x.0 == r).unwrap();
                let (at, replica, group, id, o) = self.f.replies.remove(i);
                self.now = at;
                self.s.on_reply(at, replica, group, id, o);
            }
            (_, Some(t)) => {
                self.now = self.now.max(t);
                self.s.on_timeout(self.now);
            }
            _ => return false,
        }
        self.pump();
        true
    }

    fn run(&mut self, id: OpId) -> (Nanos, Result<Outcome, SessionError>) {
        for _ in 0..100_000 {
            if let Some(r) = self.done.remove(&id) {
                return r;
            }
            if !self.step() {
                break;
            }
        }
        self.done.remove(&id).expect("the operation completes")
    }

    fn start(&mut self, op: Op) -> OpId {
        let id = self.s.start(self.now, op);
        self.pump();
        id
    }

    fn put(&mut self, key: &str, value: &str) -> (Nanos, Result<Outcome, SessionError>) {
        let id = self.start(put(key, value));
        self.run(id)
    }

    /// The replicas each sent request went to, in order.
    fn targets(&self) -> Vec<u32> {
        self.f.sent.iter().map(|(_, t)| t.replica).collect()
    }

    /// The key's version in the fake's kv.
    fn version(&self, key: &str) -> u64 {
        match self.f.kv.get(key.as_bytes()) {
            kv::Reply::Get { version, .. } => version,
            other => panic!("{other:?}"),
        }
    }

    /// Replica `r` leaves `Paused` for `mode` and handles what it held, answering now.
    fn resume(&mut self, r: u32, mode: Mode) {
        self.f.modes[r as usize] = mode;
        let held: Vec<Transmit> = std::mem::take(&mut self.f.held);
        for t in held {
            if t.replica != r {
                self.f.held.push(t);
                continue;
            }
            let o = self.f.apply(&t);
            self.f
                .replies
                .push((self.now + MS, t.replica, t.group, t.request.id, o));
        }
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn get(key: &str, linearizable: bool) -> Op {
    Op::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
        linearizable,
    }
}

fn same_write_identity(h: &H) {
    let ids: Vec<(u64, u64)> =
        h.f.sent
            .iter()
            .map(|(_, t)| (t.request.client_id, t.request.seq))
            .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    let rids: Vec<u64> = h.f.sent.iter().map(|(_, t)| t.request.id).collect();
    let mut uniq = rids.clone();
    uniq.dedup();
    assert_eq!(uniq, rids, "request ids are unique per attempt");
}

#[test]
fn redirect_chain_follows_hints() {
    let mut h = H::new(
        cfg(3),
        vec![
            Mode::Follower(Some(1)),
            Mode::Follower(Some(2)),
            Mode::Leader,
        ],
    );
    let (at, r) = h.put("k", "v");
    assert!(matches!(r, Ok(Outcome::Put { version: 1, .. })), "{r:?}");
    assert_eq!(h.targets(), vec![0, 1, 2]);
    same_write_identity(&h);
    // Redirects with a hint go at once: three round trips.
    assert_eq!(at, 3 * MS);
    assert_eq!(h.s.leader_of(0), Some(2));
    assert_eq!(h.s.stats().redirects, 2);
    assert_eq!(h.s.stats().retries, 2);
    // The next write goes straight to the leader.
    h.f.sent.clear();
    let _ = h.put("k2", "v");
    assert_eq!(h.targets(), vec![2]);
}

#[test]
fn not_leader_without_hint_backs_off_and_probes() {
    let mut c = cfg(3);
    c.leaders = vec![None];
    let mut h = H::new(
        c,
        vec![Mode::Follower(None), Mode::Follower(None), Mode::Leader],
    );
    let (_, r) = h.put("k", "v");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(h.targets(), vec![0, 1, 2]);
    // Each leaderless answer waits a jittered, doubling backoff before the next probe.
    let times: Vec<Nanos> = h.f.sent.iter().map(|(t, _)| *t).collect();
    let gap1 = times[1] - times[0] - MS;
    let gap2 = times[2] - times[1] - MS;
    assert!((5 * MS / 2..=5 * MS).contains(&gap1), "{gap1}");
    assert!((5 * MS..=10 * MS).contains(&gap2), "{gap2}");
}

#[test]
fn busy_backs_off_exponentially_then_succeeds() {
    let mut h = H::new(
        cfg(3),
        vec![Mode::Busy, Mode::Follower(Some(0)), Mode::Follower(Some(0))],
    );
    let id = h.start(put("k", "v"));
    for _ in 0..8 {
        h.step();
    }
    assert!(
        h.targets().iter().all(|&r| r == 0),
        "busy retries the same leader"
    );
    let times: Vec<Nanos> = h.f.sent.iter().map(|(t, _)| *t).collect();
    let gaps: Vec<Nanos> = times.windows(2).map(|w| w[1] - w[0] - MS).collect();
    for (i, g) in gaps.iter().enumerate() {
        let b = ((5 * MS) << i).min(200 * MS);
        assert!((b / 2..=b).contains(g), "gap {i} = {g}, backoff {b}");
    }
    h.f.modes[0] = Mode::Leader;
    let (_, r) = h.run(id);
    assert!(r.is_ok(), "{r:?}");
    same_write_identity(&h);
    assert!(h.s.stats().busy >= 3);
}

#[test]
fn attempt_timeout_retries_elsewhere_with_the_same_seq() {
    // The leader is paused; replica 1 has taken over.
    let mut h = H::new(
        cfg(3),
        vec![Mode::Paused, Mode::Leader, Mode::Follower(Some(1))],
    );
    let (at, r) = h.put("k", "v");
    assert!(matches!(r, Ok(Outcome::Put { version: 1, .. })), "{r:?}");
    assert_eq!(h.targets(), vec![0, 1]);
    same_write_identity(&h);
    // Nothing observed yet: the initial RTO, then one round trip.
    assert_eq!(at, 250 * MS + MS);
    assert_eq!(h.s.stats().attempt_timeouts, 1);
    // The paused replica resumes and applies the same (client id, seq): not twice.
    h.resume(0, Mode::Follower(Some(1)));
    h.f.modes[0] = Mode::Leader;
    let held = h.f.sent[0].1.clone();
    let o = h.f.apply(&held);
    assert!(matches!(o, Outcome::Put { version: 1, .. }), "{o:?}");
    assert_eq!(h.version("k"), 1);
}

#[test]
fn rto_follows_observed_latency() {
    let mut h = H::new(
        cfg(3),
        vec![
            Mode::Leader,
            Mode::Follower(Some(0)),
            Mode::Follower(Some(0)),
        ],
    );
    // Fast answers: the RTO falls to its floor.
    for i in 0..20 {
        let _ = h.put(&format!("k{i}"), "v");
    }
    assert_eq!(h.s.rto_ns(0), 50 * MS);
    // Slow, varying answers: it rises with them, capped by the attempt timeout.
    for i in 0..20 {
        h.f.latency[0] = if i % 2 == 0 { 100 * MS } else { 300 * MS };
        let _ = h.put(&format!("s{i}"), "v");
    }
    let rto = h.s.rto_ns(0);
    assert!(rto > 300 * MS && rto <= 1000 * MS, "{rto}");
    // A replica never heard from uses what all replicas showed.
    assert!(h.s.rto_ns(1) > 100 * MS, "{}", h.s.rto_ns(1));
}

#[test]
fn paused_leader_costs_one_rto_not_the_attempt_timeout() {
    let mut h = H::new(
        cfg(3),
        vec![
            Mode::Leader,
            Mode::Follower(Some(0)),
            Mode::Follower(Some(0)),
        ],
    );
    for i in 0..10 {
        let _ = h.put(&format!("k{i}"), "v");
    }
    // Pause the leader; the others elect replica 2 at once.
    h.f.modes = vec![Mode::Paused, Mode::Follower(Some(2)), Mode::Leader];
    let t0 = h.now;
    let (at, r) = h.put("x", "v");
    assert!(r.is_ok(), "{r:?}");
    assert!(at - t0 <= 50 * MS + 3 * MS, "took {} ms", (at - t0) / MS);
    // The paused replica is avoided for a while: the next write goes to the new leader.
    h.f.sent.clear();
    let _ = h.put("y", "v");
    assert_eq!(h.targets(), vec![2]);
}

#[test]
fn late_answer_to_a_timed_out_attempt_completes_the_write() {
    let mut h = H::new(
        cfg(3),
        vec![
            Mode::Paused,
            Mode::Follower(Some(0)),
            Mode::Follower(Some(0)),
        ],
    );
    let id = h.start(put("k", "v"));
    // The RTO passes; the retries are redirected back to the (suspect) paused leader, so the
    // session backs off between probes of the followers.
    while h.now < 400 * MS {
        h.step();
    }
    assert!(!h.done.contains_key(&id));
    // The leader resumes and answers the first attempt: that answer is the write's.
    h.resume(0, Mode::Leader);
    let (_, r) = h.run(id);
    assert!(matches!(r, Ok(Outcome::Put { version: 1, .. })), "{r:?}");
    assert_eq!(h.version("k"), 1);
    same_write_identity(&h);
}

#[test]
fn replies_to_finished_operations_are_ignored() {
    let mut c = cfg(3);
    c.hedge_reads = false;
    let mut h = H::new(c, vec![Mode::Paused, Mode::Leader, Mode::Follower(Some(1))]);
    let (_, r) = h.put("k", "v");
    assert!(r.is_ok());
    let first = h.f.sent[0].1.request.id;
    // The abandoned attempt's answer arrives after the operation finished.
    h.s.on_reply(
        h.now,
        0,
        0,
        first,
        Outcome::Put {
            revision: 9,
            version: 9,
        },
    );
    // An id the session never used, and a reply from the wrong replica.
    h.s.on_reply(h.now, 1, 0, 12345, Outcome::Busy);
    let id = h.start(put("k2", "v"));
    let rid = h.f.sent.last().unwrap().1.request.id;
    h.s.on_reply(
        h.now,
        2,
        0,
        rid,
        Outcome::Put {
            revision: 1,
            version: 1,
        },
    );
    assert_eq!(h.s.stats().stale_replies, 3);
    assert!(h.s.poll_complete().is_none());
    let (_, r) = h.run(id);
    assert!(matches!(r, Ok(Outcome::Put { version: 1, .. })), "{r:?}");
}

#[test]
fn write_that_reached_a_silent_replica_is_unknown() {
    let mut c = cfg(3);
    c.op_timeout_ns = 2000 * MS;
    let mut h = H::new(c, vec![Mode::Paused, Mode::Paused, Mode::Paused]);
    let (at, r) = h.put("k", "v");
    assert_eq!(at, 2000 * MS, "gives up exactly at the operation deadline");
    assert!(matches!(r, Err(SessionError::Unknown { .. })), "{r:?}");
    assert!(r.unwrap_err().maybe_applied());
}

#[test]
fn write_never_delivered_is_not_applied() {
    let mut c = cfg(3);
    c.op_timeout_ns = 1000 * MS;
    let mut h = H::new(c, vec![Mode::Refuse, Mode::Refuse, Mode::Refuse]);
    let (at, r) = h.put("k", "v");
    assert_eq!(at, 1000 * MS);
    assert!(matches!(r, Err(SessionError::NotApplied { .. })), "{r:?}");
    assert!(h.f.sent.len() > 3, "kept trying: {}", h.f.sent.len());
}

#[test]
fn write_refused_busy_everywhere_is_not_applied() {
    let mut c = cfg(3);
    c.op_timeout_ns = 1000 * MS;
    let mut h = H::new(c, vec![Mode::Busy, Mode::Refuse, Mode::Busy]);
    let (_, r) = h.put("k", "v");
    assert!(matches!(r, Err(SessionError::NotApplied { .. })), "{r:?}");
    assert_eq!(h.version("k"), 0);
}

#[test]
fn write_redirected_without_an_answer_is_unknown() {
    // A write's NotLeader may come from a leader that had proposed it before stepping down.
    let mut c = cfg(3);
    c.op_timeout_ns = 500 * MS;
    let mut h = H::new(
        c,
        vec![
            Mode::Follower(None),
            Mode::Follower(None),
            Mode::Follower(None),
        ],
    );
    let (_, r) = h.put("k", "v");
    assert!(matches!(r, Err(SessionError::Unknown { .. })), "{r:?}");
}

#[test]
fn write_whose_link_dropped_is_unknown_even_if_later_refused() {
    let mut c = cfg(3);
    c.op_timeout_ns = 500 * MS;
    let mut h = H::new(c, vec![Mode::DropLink, Mode::Refuse, Mode::Refuse]);
    let id = h.start(put("k", "v"));
    h.step();
    h.f.modes[0] = Mode::Refuse;
    let (_, r) = h.run(id);
    assert!(matches!(r, Err(SessionError::Unknown { .. })), "{r:?}");
    // It was in fact applied.
    assert_eq!(h.version("k"), 1);
}

#[test]
fn read_that_times_out_is_not_applied() {
    let mut c = cfg(3);
    c.op_timeout_ns = 700 * MS;
    let mut h = H::new(c, vec![Mode::Paused, Mode::Paused, Mode::Paused]);
    let id = h.start(get("k", true));
    let (at, r) = h.run(id);
    assert_eq!(at, 700 * MS);
    assert!(matches!(r, Err(SessionError::NotApplied { .. })), "{r:?}");
}

#[test]
fn wrong_group_is_a_definite_failure() {
    let mut h = H::new(
        cfg(3),
        vec![Mode::WrongGroup(1), Mode::Leader, Mode::Leader],
    );
    let (_, r) = h.put("k", "v");
    assert_eq!(
        r,
        Err(SessionError::WrongGroup {
            client_group: 0,
            server_group: 1
        })
    );
}

#[test]
fn serializable_read_is_hedged_to_a_second_replica() {
    let mut h = H::new(cfg(3), vec![Mode::Leader, Mode::Leader, Mode::Leader]);
    let _ = h.put("k", "v");
    h.f.modes[0] = Mode::Paused;
    let t0 = h.now;
    let id = h.start(get("k", false));
    let (at, r) = h.run(id);
    assert!(matches!(r, Ok(Outcome::Get { version: 1, .. })), "{r:?}");
    // The hedge went out after srtt + 2 rttvar (a few ms), far before the 50 ms RTO.
    assert!(at - t0 < 10 * MS, "took {} ms", (at - t0) / MS);
    assert_eq!(h.s.stats().hedges, 1);
    assert_eq!(h.s.stats().attempt_timeouts, 0);
    // Linearizable reads are not hedged (only the leader may answer them).
    let id = h.start(get("k", true));
    h.step();
    h.step();
    assert_eq!(h.s.stats().hedges, 1);
    let _ = h.run(id);
}

#[test]
fn pipelined_writes_use_one_client_id_per_lane() {
    let mut c = cfg(3);
    c.lanes = 2;
    let mut h = H::new(
        c,
        vec![
            Mode::Leader,
            Mode::Follower(Some(0)),
            Mode::Follower(Some(0)),
        ],
    );
    h.f.latency[0] = 10 * MS;
    let a = h.start(put("a", "1"));
    let b = h.start(put("b", "1"));
    let c = h.start(put("c", "1"));
    let r = h.start(get("a", true));
    // Two writes (one per lane) and the read go at once; the third write waits for a lane.
    let ids: Vec<(u64, u64)> =
        h.f.sent
            .iter()
            .map(|(_, t)| (t.request.client_id, t.request.seq))
            .collect();
    let lanes = h.s.lane_client_ids();
    assert_eq!(ids, vec![(lanes[0], 1), (lanes[1], 1), (lanes[0], 0)]);
    assert_ne!(lanes[0], lanes[1]);
    for id in [a, b, c, r] {
        let (_, res) = h.run(id);
        assert!(res.is_ok(), "{res:?}");
    }
    // The queued write took the lane that freed first, with that lane's next seq.
    let last = &h.f.sent.last().unwrap().1.request;
    assert_eq!((last.client_id, last.seq), (lanes[0], 2));
    for k in ["a", "b", "c"] {
        assert_eq!(h.version(k), 1);
    }
}

#[test]
fn queued_write_that_never_got_a_lane_is_not_applied() {
    let mut c = cfg(3);
    c.op_timeout_ns = 300 * MS;
    let mut h = H::new(c, vec![Mode::Paused, Mode::Paused, Mode::Paused]);
    let a = h.start(put("a", "1"));
    h.now = 100 * MS;
    let b = h.start(put("b", "1"));
    let (_, ra) = h.run(a);
    assert!(matches!(ra, Err(SessionError::Unknown { .. })), "{ra:?}");
    // b got the lane when a gave up, and was sent: it may have been applied too.
    let (_, rb) = h.run(b);
    assert!(matches!(rb, Err(SessionError::Unknown { .. })), "{rb:?}");
    let mut c = cfg(3);
    c.op_timeout_ns = 300 * MS;
    let mut h = H::new(c, vec![Mode::Paused, Mode::Paused, Mode::Paused]);
    let a = h.start(put("a", "1"));
    let b = h.start(put("b", "1"));
    let (_, rb) = h.run(b);
    let (_, ra) = h.run(a);
    assert!(matches!(ra, Err(SessionError::Unknown { .. })), "{ra:?}");
    // Both deadlines fall together: b never left the queue.
    assert!(matches!(rb, Err(SessionError::NotApplied { .. })), "{rb:?}");
}

#[test]
fn same_seed_same_schedule() {
    let run = || {
        let mut c = cfg(3);
        c.op_timeout_ns = 2000 * MS;
        let mut h = H::new(c, vec![Mode::Busy, Mode::Follower(None), Mode::Paused]);
        let _ = h.put("k", "v");
        h.f.sent
            .iter()
            .map(|(t, x)| (*t, x.replica))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

/// Replica `r` leaves `Paused` for `mode`: what it held is answered as `mode` would, or lost
/// with the connection.
fn resume_as(h: &mut H, r: u32, mode: Mode) {
    h.f.modes[r as usize] = mode.clone();
    let held: Vec<Transmit> = std::mem::take(&mut h.f.held);
    let mut lost = false;
    for t in held {
        if t.replica != r {
            h.f.held.push(t);
            continue;
        }
        let at = h.now + MS;
        let reply = |o| (at, t.replica, t.group, t.request.id, o);
        match &mode {
            Mode::Leader => {
                let o = h.f.apply(&t);
                h.f.replies.push(reply(o));
            }
            Mode::Follower(hint) => {
                h.f.replies
                    .push(reply(Outcome::NotLeader { leader: *hint }))
            }
            Mode::Busy => h.f.replies.push(reply(Outcome::Busy)),
            Mode::Paused => h.f.held.push(t),
            _ => lost = true,
        }
    }
    if lost {
        h.s.on_link_failed(h.now, r, 0, "connection reset");
    }
}

#[test]
fn random_faults_never_misclassify_a_write() {
    use rand::{Rng, SeedableRng};
    for seed in 0..300u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut c = cfg(3);
        c.lanes = 2;
        c.seed = seed;
        c.op_timeout_ns = rng.gen_range(100..2000) * MS;
        let mut h = H::new(
            c,
            vec![
                Mode::Leader,
                Mode::Follower(Some(0)),
                Mode::Follower(Some(0)),
            ],
        );
        let pick = |rng: &mut rand_chacha::ChaCha8Rng| match rng.gen_range(0..8) {
            0 | 1 => Mode::Leader,
            7 => Mode::Deposed(Some(rng.gen_range(0..3))),
            2 => Mode::Follower(Some(rng.gen_range(0..3))),
            3 => Mode::Follower(None),
            4 => Mode::Paused,
            5 => Mode::Busy,
            _ => {
                if rng.gen_bool(0.5) {
                    Mode::Refuse
                } else {
                    Mode::DropLink
                }
            }
        };
        let mut ops = Vec::new();
        for i in 0..12 {
            let key = format!("k{i}");
            ops.push((key.clone(), h.start(put(&key, "v"))));
            for _ in 0..rng.gen_range(0..6) {
                if rng.gen_bool(0.3) {
                    let r = rng.gen_range(0..3u32);
                    let m = pick(&mut rng);
                    if h.f.modes[r as usize] == Mode::Paused {
                        resume_as(&mut h, r, m);
                    } else {
                        h.f.modes[r as usize] = m;
                    }
                }
                for r in 0..3 {
                    h.f.latency[r] = rng.gen_range(1..80) * MS;
                }
                h.step();
            }
        }
        let results: Vec<(String, Result<Outcome, SessionError>)> =
            ops.into_iter().map(|(k, id)| (k, h.run(id).1)).collect();
        // Everything held anywhere is finally applied (the worst case for "not applied").
        for r in 0..3 {
            resume_as(&mut h, r, Mode::Leader);
        }
        while h.step() {}
        for (key, res) in results {
            let v = h.version(&key);
            match &res {
                Ok(Outcome::Put { version: 1, .. }) => assert_eq!(v, 1, "seed {seed} {key}"),
                Err(SessionError::NotApplied { .. }) => {
                    assert_eq!(v, 0, "seed {seed} {key}: {res:?} yet applied")
                }
                Err(SessionError::Unknown { .. }) => assert!(v <= 1, "seed {seed} {key}"),
                other => panic!("seed {seed} {key}: {other:?}"),
            }
        }
    }
}

#[test]
fn two_of_three_replicas_down_says_no_quorum_is_reachable() {
    // Replicas 0 and 1 are down (connections refused); 2 answers NotLeader pointing at 0.
    // Before, the give-up message was "replica 2 is not the leader of group 0".
    let mut c = cfg(3);
    c.op_timeout_ns = 1000 * MS;
    let mut h = H::new(c, vec![Mode::Refuse, Mode::Refuse, Mode::Follower(Some(0))]);
    let (_, r) = h.put("k", "v");
    let msg = r.unwrap_err().to_string();
    assert!(
        msg.contains("no quorum reachable: 1 of 3 replicas answered (2) and a majority is 2"),
        "{msg}"
    );
}

#[test]
fn a_quorum_that_answers_is_not_called_unreachable() {
    let mut c = cfg(3);
    c.op_timeout_ns = 500 * MS;
    let mut h = H::new(
        c,
        vec![
            Mode::Follower(None),
            Mode::Follower(None),
            Mode::Follower(None),
        ],
    );
    let (_, r) = h.put("k", "v");
    let msg = r.unwrap_err().to_string();
    assert!(!msg.contains("no quorum"), "{msg}");
}

// ------------------------------------------------------------------ Fast Paxos

#[test]
fn fast_paxos_write_goes_to_every_replica_and_the_nearest_answers() {
    let mut c = cfg(3);
    c.fast_write_via = Some(2);
    let mut h = H::new(c, vec![Mode::Leader, Mode::Leader, Mode::Leader]);
    h.f.latency = vec![5 * MS, 5 * MS, MS];
    let (at, r) = h.put("k", "v");
    assert!(matches!(r, Ok(Outcome::Put { version: 1, .. })), "{r:?}");
    assert_eq!(
        h.targets(),
        vec![2, 0, 1],
        "the nearest first, then the others"
    );
    assert_eq!(at, MS, "the nearest replica's answer completed it");
    same_write_identity(&h);
    // Any replica answers a fast write: replica 2's answer does not make it the leader.
    assert_eq!(h.s.leader_of(0), Some(0));
    // The others' later answers are to attempts of a finished operation.
    while h.step() {}
    assert_eq!(h.s.stats().stale_replies, 2);
    assert_eq!(h.version("k"), 1, "applied once");
}

#[test]
fn fast_paxos_write_given_up_with_copies_out_is_unknown() {
    let mut c = cfg(3);
    c.fast_write_via = Some(0);
    c.op_timeout_ns = 300 * MS;
    // The nearest replica refuses the connection, the others take the write and never answer.
    let mut h = H::new(c, vec![Mode::Refuse, Mode::Paused, Mode::Paused]);
    let (_, r) = h.put("k", "v");
    assert!(
        matches!(r, Err(SessionError::Unknown { .. })),
        "copies were delivered, so the outcome is unknown: {r:?}"
    );
}

#[test]
fn fast_paxos_write_copies_carry_one_deadline_at_the_qf_th_nearest_one_way_delay() {
    let mut c = cfg(5);
    c.fast_write_via = Some(0);
    let mut s = Session::new(c);
    // Before any answer: no estimate, the deadline is the send time.
    assert_eq!(s.fast_deadline(1_000), 1_000);
    // Least round trips 2, 10, 30, 80 ms; replica 4 not heard from counts as the nearest
    // heard from (2 ms). Qf = 4 of 5: the 4th smallest one-way delay is 30 / 2 = 15 ms.
    for (r, rtt) in [(0, 2), (1, 10), (2, 30), (3, 80)] {
        s.observe_rtt(r, rtt * MS);
        s.observe_rtt(r, 3 * rtt * MS); // a slower sample: the least one counts
    }
    assert_eq!(s.fast_deadline(1_000), 1_000 + 15 * MS);
    s.start(
        7 * MS,
        Op::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        },
    );
    let deadlines: Vec<u64> = std::iter::from_fn(|| s.poll_transmit())
        .map(|t| t.request.fast_deadline_ns)
        .collect();
    assert_eq!(deadlines, vec![22 * MS; 5], "every copy, the same deadline");
}
