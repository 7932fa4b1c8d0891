//! Deterministic scenario tests: replicas driven by hand through a tiny in-memory network.
//!
//! The harness persists every write at once, delivers messages in send order (dropping those on
//! cut links or matched by `drop_if`, parking those matched by `hold_if`), and moves time only
//! when a test says so, so each scenario is an exact interleaving.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::lease;
use super::*;

const MS: Nanos = 1_000_000;

type Filter = Box<dyn Fn(&Envelope) -> bool>;

struct Net {
    replicas: Vec<Option<Replica>>,
    cfgs: Vec<Config>,
    durable: Vec<DurableState>,
    now: Nanos,
    queue: VecDeque<Envelope>,
    /// Messages parked by `hold_if`, released by hand.
    held: Vec<Envelope>,
    /// Directed links that drop everything.
    cut: BTreeSet<(ReplicaId, ReplicaId)>,
    drop_if: Option<Filter>,
    hold_if: Option<Filter>,
    committed: Vec<Vec<(Slot, Value)>>,
    reads: Vec<Vec<(ReadResult, Slot)>>,
    /// Proposals handed back (`Ready::dropped`): (replica, proposal).
    dropped: Vec<(ReplicaId, DroppedProposal)>,
    /// Every message sent, for size checks.
    sent_log: bool,
    sent: Vec<Envelope>,
    /// The largest message sent, by `Message::size_bytes`, and its kind.
    max_message: (usize, &'static str),
    /// The most Accepts one Ready carried.
    max_accepts_per_ready: usize,
    /// `Ready::stepped_down`: (replica, why).
    stepped_down: Vec<(ReplicaId, StepDown)>,
}

fn config(id: ReplicaId, n: u32) -> Config {
    let mut cfg = Config::new(id, n);
    cfg.seed = 7;
    // Deterministic timers: every election timeout is exactly 150 ms.
    cfg.election_timeout_min_ms = 150;
    cfg.election_timeout_max_ms = 150;
    cfg
}

impl Net {
    fn new(n: u32) -> Net {
        Net::with_configs((0..n).map(|id| config(id, n)).collect())
    }

    fn with_configs(cfgs: Vec<Config>) -> Net {
        let n = cfgs.len();
        let mut net = Net {
            replicas: Vec::new(),
            cfgs: cfgs.clone(),
            durable: vec![DurableState::default(); n],
            now: 0,
            queue: VecDeque::new(),
            held: Vec::new(),
            cut: BTreeSet::new(),
            drop_if: None,
            hold_if: None,
            committed: vec![Vec::new(); n],
            reads: vec![Vec::new(); n],
            dropped: Vec::new(),
            sent_log: false,
            sent: Vec::new(),
            max_message: (0, ""),
            max_accepts_per_ready: 0,
            stepped_down: Vec::new(),
        };
        for cfg in cfgs {
            net.replicas
                .push(Some(Replica::new(cfg, &DurableState::default(), 0)));
        }
        net
    }

    fn with_durable(cfgs: Vec<Config>, durable: Vec<DurableState>) -> Net {
        let mut net = Net::with_configs(cfgs);
        for (id, state) in durable.into_iter().enumerate() {
            net.durable[id] = state;
            net.restart(id as ReplicaId);
        }
        net
    }

    fn r(&self, id: ReplicaId) -> &Replica {
        self.replicas[id as usize].as_ref().expect("replica is up")
    }

    fn r_mut(&mut self, id: ReplicaId) -> &mut Replica {
        self.replicas[id as usize].as_mut().expect("replica is up")
    }

    /// Restarts `id` from its durable state at the current time.
    fn restart(&mut self, id: ReplicaId) {
        let cfg = self.cfgs[id as usize].clone();
        self.replicas[id as usize] = Some(Replica::new(cfg, &self.durable[id as usize], self.now));
        self.committed[id as usize].clear();
        self.drain(id);
    }

    /// Takes a replica's Ready: persists writes at once, queues messages, records the rest.
    fn drain(&mut self, id: ReplicaId) {
        let now = self.now;
        loop {
            let Some(replica) = self.replicas[id as usize].as_mut() else {
                return;
            };
            let ready = replica.ready(now);
            if ready.is_empty() {
                return;
            }
            let last = ready.writes.last().map(|(w, _)| *w);
            for (_, write) in &ready.writes {
                self.durable[id as usize].apply(write);
            }
            if let Some(last) = last {
                replica.persisted(now, last);
            }
            let applied = replica.status().applied;
            if self.sent_log {
                self.sent.extend(ready.messages.iter().cloned());
            }
            let mut accepts = 0;
            for env in &ready.messages {
                let size = env.msg.size_bytes();
                if size > self.max_message.0 {
                    self.max_message = (size, env.msg.kind());
                }
                if matches!(env.msg, Message::Accept { .. }) && env.to == id {
                    accepts += 1;
                }
            }
            self.max_accepts_per_ready = self.max_accepts_per_ready.max(accepts);
            self.queue.extend(ready.messages);
            self.committed[id as usize].extend(ready.committed);
            for read in ready.reads {
                self.reads[id as usize].push((read, applied));
            }
            self.dropped
                .extend(ready.dropped.into_iter().map(|d| (id, d)));
            self.stepped_down
                .extend(ready.stepped_down.into_iter().map(|w| (id, w)));
        }
    }

    /// Delivers queued messages (and what they cause) until none is left.
    fn deliver_all(&mut self) {
        let mut steps = 0;
        while let Some(env) = self.queue.pop_front() {
            steps += 1;
            assert!(steps < 10_000_000, "message storm");
            self.deliver(env);
        }
    }

    fn deliver(&mut self, env: Envelope) {
        if self.cut.contains(&(env.from, env.to)) || self.drop_if.as_ref().is_some_and(|f| f(&env))
        {
            return;
        }
        if self.hold_if.as_ref().is_some_and(|f| f(&env)) {
            self.held.push(env);
            return;
        }
        let to = env.to;
        let now = self.now;
        let Some(replica) = self.replicas[to as usize].as_mut() else {
            return;
        };
        replica.step(now, env);
        self.drain(to);
    }

    fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for env in held {
            self.deliver(env);
        }
        self.deliver_all();
    }

    fn isolate(&mut self, a: ReplicaId, others: &[ReplicaId]) {
        for &b in others {
            self.cut.insert((a, b));
            self.cut.insert((b, a));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Moves time to `t` a millisecond at a time; at each step ticks every due replica in id
    /// order, delivering everything after each tick.
    fn run_until(&mut self, t: Nanos) {
        while self.now < t {
            self.now = (self.now + MS).min(t);
            self.tick_due();
        }
    }

    fn tick_due(&mut self) {
        for id in 0..self.replicas.len() as ReplicaId {
            let due = match &self.replicas[id as usize] {
                Some(r) => r.poll_timeout() <= self.now,
                None => false,
            };
            if due {
                let now = self.now;
                self.r_mut(id).tick(now);
                self.drain(id);
                self.deliver_all();
            }
        }
    }

    fn leader(&self) -> Option<ReplicaId> {
        self.replicas
            .iter()
            .flatten()
            .find(|r| r.role() == Role::Leader)
            .map(|r| r.id())
    }

    fn propose(&mut self, id: ReplicaId, client_id: u64, seq: u64, payload: Bytes) {
        let now = self.now;
        self.r_mut(id)
            .propose(
                now,
                Command {
                    client_id,
                    seq,
                    payload,
                },
            )
            .expect("a leader takes the proposal");
        self.drain(id);
        self.deliver_all();
    }
}

fn batch(client_id: u64, seq: u64, payload: Bytes) -> Value {
    Value::Batch(Arc::from(vec![Command {
        client_id,
        seq,
        payload,
    }]))
}

// ------------------------------------------------------------------ hole 4: conflicts are fatal

#[test]
fn conflicting_chosen_value_is_fatal() {
    let mut net = Net::new(3);
    net.run_until(200 * MS);
    let leader = net.leader().expect("a leader after 200 ms");
    net.propose(leader, 1, 1, Bytes::from_static(b"a"));
    net.run_until(300 * MS);
    let follower = (leader + 1) % 3;
    assert_eq!(net.r(follower).status().commit, 1);
    assert!(net.r(follower).fatal().is_none());
    // A peer (broken elsewhere) reports another value chosen at slot 1.
    let now = net.now;
    net.r_mut(follower).step(
        now,
        Envelope {
            from: leader,
            to: follower,
            msg: Message::CatchupReply {
                entries: vec![(1, batch(9, 9, Bytes::from_static(b"z")))],
                floor: 0,
            },
        },
    );
    let fatal = net
        .r(follower)
        .fatal()
        .expect("the conflict stops the replica");
    assert!(fatal.contains("slot 1"), "{fatal}");
    // It takes no further part: no messages, no writes, no commits, whatever it is fed.
    net.drain(follower);
    net.queue.clear();
    net.run_until(2_000 * MS);
    let r = net.r_mut(follower);
    r.tick(now + 10_000 * MS);
    let ready = r.ready(now + 10_000 * MS);
    assert!(ready.is_empty(), "a failed replica still acts: {ready:?}");
    assert_eq!(r.poll_timeout(), Nanos::MAX);
}

// ------------------------------------------------------------------ hole 1: lease stickiness

fn is_leader_traffic(msg: &Message) -> bool {
    matches!(msg, Message::Heartbeat { .. } | Message::Accept { .. })
}

/// Five replicas. Leader 0 (ballot b1) is cut off from 1, 3, 4; its last heartbeat to 2 is
/// delayed. 1 is elected at b2 by {1, 3, 4} (2 still sticks to 0), takes a lease from the
/// acks of 2 and 3, and never reaches 4 again. Then 0's delayed heartbeat reaches 2. Before the
/// fix 2 acked it and made 0 its sticky leader again, so when 0 (rejected by 4) re-ran phase 1
/// at b3, 2 promised it: 0 won with {0, 2, 4} and committed a write while 1 still served reads
/// from its lease (which counts 2's ack) without it.
fn lease_scenario(bug: Option<InjectedBug>) -> (Net, Option<(ReadResult, Slot)>) {
    let mut net = Net::with_configs(
        (0..5)
            .map(|id| {
                let mut cfg = config(id, 5);
                cfg.inject_bug = bug;
                cfg
            })
            .collect(),
    );
    net.run_until(150 * MS);
    assert_eq!(net.leader(), Some(0));
    let b1 = net.r(0).status().promised;
    net.run_until(251 * MS);
    net.isolate(0, &[1, 3, 4]);
    net.run_until(389 * MS);
    // 0's heartbeat of 390 ms to 2 is delayed in the network.
    net.hold_if = Some(Box::new(|e: &Envelope| e.from == 0 && e.to == 2));
    // 1 will reach 4 with its Prepare only: its heartbeats and accepts to 4 are lost.
    net.drop_if = Some(Box::new(|e: &Envelope| {
        e.from == 1 && e.to == 4 && is_leader_traffic(&e.msg)
    }));
    net.run_until(400 * MS);
    assert_eq!(net.r(1).role(), Role::Leader, "1 elected at 400 ms");
    assert_eq!(net.r(0).role(), Role::Leader, "0 has not noticed yet");
    let b2 = net.r(1).status().promised;
    assert!(b2 > b1);
    // 401 ms: the delayed heartbeat of 0 (b1) reaches 2.
    net.now = 401 * MS;
    net.hold_if = None;
    net.release_held();
    // 402 ms: 0 reaches 4 again, and a client write arrives at 0.
    net.now = 402 * MS;
    net.cut.remove(&(0, 4));
    net.cut.remove(&(4, 0));
    if net.r(0).role() == Role::Leader {
        net.propose(0, 1, 1, Bytes::from_static(b"new"));
    }
    // 403 ms: a read at 1, which still holds its lease.
    net.now = 403 * MS;
    let mut read = None;
    if net.r(1).role() == Role::Leader {
        net.r_mut(1).read_index(403 * MS, 77).expect("1 leads");
        net.drain(1);
        net.deliver_all();
        read = net.reads[1].iter().find(|(r, _)| r.id == 77).copied();
    }
    (net, read)
}

#[test]
fn lease_holder_sees_every_committed_write_5_replicas() {
    let (net, read) = lease_scenario(None);
    let (read, applied) = read.expect("1 holds its lease and serves the read at once");
    assert_eq!(read.outcome, ReadOutcome::Ready);
    let committed_elsewhere = (0..5).any(|id| net.r(id).status().commit >= 1);
    assert!(
        !(committed_elsewhere && applied < 1),
        "stale lease read: slot 1 was committed by {:?} but lease holder 1 served a read at applied {applied}",
        (0..5)
            .filter(|id| net.r(*id).status().commit >= 1)
            .collect::<Vec<_>>()
    );
    // 2 refused the older leader once it had heard the newer one.
    assert_eq!(net.r(2).status().leader, Some(1));
}

#[test]
fn lease_follows_last_speaker_bug_reads_stale() {
    let (net, read) = lease_scenario(Some(InjectedBug::LeaseFollowsLastSpeaker));
    let (read, applied) = read.expect("1 serves the read from its lease");
    assert_eq!(read.outcome, ReadOutcome::Ready);
    assert_eq!(applied, 0);
    assert!(net.r(0).status().commit >= 1, "0 won b3 and committed");
}

// ------------------------------------------------------------------ hole 3: pre-vote

#[test]
fn rejoining_follower_does_not_depose_a_healthy_leader() {
    let mut net = Net::new(5);
    net.run_until(300 * MS);
    let leader = net.leader().expect("a leader");
    let ballot = net.r(leader).status().promised;
    let loner = (leader + 4) % 5;
    let others: Vec<ReplicaId> = (0..5).filter(|id| *id != loner).collect();
    net.isolate(loner, &others);
    // Many election timeouts alone.
    net.run_until(2_000 * MS);
    assert!(
        net.r(loner).status().promised <= ballot,
        "the cut-off follower raised its ballot to {} (leader's is {ballot})",
        net.r(loner).status().promised
    );
    net.heal();
    for t in (2_001..=3_000).step_by(1) {
        net.run_until(t * MS);
        assert_eq!(net.leader(), Some(leader), "leader lost at {t} ms");
        assert_eq!(
            net.r(leader).status().promised,
            ballot,
            "leader re-ran phase 1 at {t} ms"
        );
    }
    assert!(net.r(loner).status().promised <= ballot);
    assert_eq!(net.r(loner).status().leader, Some(leader));
}

/// A leader cut off from its followers steps down by check-quorum and says why: for each
/// replica, how long ago it last acknowledged (the operator's log prints this; a CI flake once
/// had a leader step down with nothing saying why).
#[test]
fn a_leader_that_steps_down_says_why() {
    let mut net = Net::new(3);
    net.run_until(300 * MS);
    let leader = net.leader().expect("a leader");
    let ballot = net.r(leader).status().promised;
    let others: Vec<ReplicaId> = (0..3).filter(|id| *id != leader).collect();
    net.isolate(leader, &others);
    net.run_until(300 * MS + 2 * net.cfgs[0].election_timeout_min_ms * MS);
    let (who, why) = net
        .stepped_down
        .iter()
        .find(|(_, w)| matches!(w, StepDown::LostQuorum { .. }))
        .expect("the isolated leader stepped down by check-quorum");
    assert_eq!(*who, leader);
    let StepDown::LostQuorum {
        ballot: b,
        window_ms,
        last_ack_ms_ago,
    } = why
    else {
        unreachable!()
    };
    assert_eq!(*b, ballot);
    assert_eq!(last_ack_ms_ago[leader as usize], Some(0));
    for id in &others {
        let ago = last_ack_ms_ago[*id as usize].expect("they acknowledged before the cut");
        assert!(ago >= *window_ms, "replica {id} acked {ago} ms ago");
    }
    let line = why.to_string();
    assert!(
        line.contains("check-quorum") && line.contains(&format!("{ballot}")),
        "{line}"
    );
    let (ours, theirs) = (Ballot::new(3, 1), Ballot::new(4, 2));
    let outranked = StepDown::Outranked {
        ours,
        leader: false,
        theirs,
    }
    .to_string();
    assert!(outranked.starts_with("candidate at ballot 3.1") && outranked.contains("4.2"));
    let rejected = StepDown::Rejected {
        ours,
        promised: theirs,
    }
    .to_string();
    assert!(rejected.contains("3.1") && rejected.contains("promised the higher ballot 4.2"));
    let behind = StepDown::BehindSnapshot {
        ours,
        peer: 2,
        floor: 25,
        commit: 24,
    }
    .to_string();
    assert!(
        behind.contains("3.1") && behind.contains("replica 2 compacted up to slot 25"),
        "{behind}"
    );
}

// ------------------------------------------------------------------ hole 5: restart timers

#[test]
fn replica_started_late_waits_a_full_election_timeout() {
    for now in [0, 1, 150 * MS, 3_600_000 * MS, u64::MAX / 4] {
        let cfg = config(1, 3);
        let min = cfg.election_timeout_min_ms * MS;
        let mut r = Replica::new(cfg, &DurableState::default(), now);
        assert!(r.poll_timeout() >= now + min, "deadline too early at {now}");
        r.tick(now + min - 1);
        let ready = r.ready(now + min - 1);
        assert!(ready.messages.is_empty(), "campaigned early at {now}");
        assert_eq!(r.role(), Role::Follower);
    }
}

#[test]
fn follower_restarted_after_long_recovery_does_not_depose_leader() {
    let mut net = Net::new(3);
    net.run_until(300 * MS);
    let leader = net.leader().expect("a leader");
    let ballot = net.r(leader).status().promised;
    net.propose(leader, 1, 1, Bytes::from_static(b"x"));
    let other = (leader + 1) % 3;
    let restarted = (leader + 2) % 3;
    // A long recovery: the replica is down for 10 s, then comes back unable to hear the
    // leader (but able to reach the other follower) for a while.
    net.replicas[restarted as usize] = None;
    net.run_until(10_000 * MS);
    net.isolate(restarted, &[leader]);
    net.restart(restarted);
    net.run_until(10_000 * MS + 149 * MS);
    assert!(
        net.r(restarted).status().promised <= ballot,
        "campaigned within one election timeout of starting"
    );
    net.run_until(12_000 * MS);
    net.heal();
    net.run_until(13_000 * MS);
    assert_eq!(net.leader(), Some(leader));
    assert_eq!(
        net.r(leader).status().promised,
        ballot,
        "leader was deposed"
    );
    assert_eq!(net.r(other).status().leader, Some(leader));
    assert_eq!(net.r(restarted).status().commit, 1, "caught up");
}

// ------------------------------------------------------------------ hole 2: large logs

#[test]
fn commit_point_survives_a_whole_cluster_restart() {
    let mut net = Net::new(3);
    net.run_until(300 * MS);
    let leader = net.leader().expect("a leader");
    for seq in 1..=10 {
        net.propose(leader, 1, seq, Bytes::from(format!("v{seq}")));
    }
    net.run_until(net.now + 50 * MS);
    for id in 0..3 {
        assert_eq!(net.r(id).status().commit, 10);
    }
    // Everyone restarts at once: the commit point comes back from the durable state.
    net.now += 1_000 * MS;
    for id in 0..3 {
        net.restart(id);
    }
    for id in 0..3 {
        assert!(
            net.r(id).status().commit >= 9,
            "replica {id} restarted at commit {}",
            net.r(id).status().commit
        );
    }
    net.sent_log = true;
    net.run_until(net.now + 1_000 * MS);
    let first_slots: Vec<Slot> = net
        .sent
        .iter()
        .filter_map(|e| match e.msg {
            Message::Prepare { first_slot, .. } => Some(first_slot),
            _ => None,
        })
        .collect();
    assert!(!first_slots.is_empty());
    assert!(
        first_slots.iter().all(|s| *s >= 10),
        "prepared from {first_slots:?}"
    );
    assert!(net.leader().is_some());
}

/// 100,000 accepted-but-not-known-chosen slots of 1 MiB each on every replica (the state a
/// whole-cluster restart left before the commit point was persisted): the election still
/// completes, no message exceeds `message_bytes_max`, and recovery is paced by the pipeline.
#[test]
fn huge_log_election_and_catch_up_stay_under_the_message_limit() {
    const SLOTS: Slot = 100_000;
    let payload = Bytes::from(vec![7u8; 1 << 20]);
    let value = batch(1, 1, payload);
    let mut durable = DurableState::default();
    let old = Ballot::new(1, 2);
    durable.promised = old;
    for slot in 1..=SLOTS {
        durable.accepted.insert(slot, (old, value.clone()));
    }
    let cfgs: Vec<Config> = (0..3).map(|id| config(id, 3)).collect();
    let limit = cfgs[0].message_bytes_max;
    let depth = cfgs[0].pipeline_depth;
    let mut net = Net::with_durable(cfgs, vec![durable.clone(), durable.clone(), durable]);
    net.run_until(400 * MS);
    let leader = net.leader().expect("an election completes");
    assert!(
        net.max_message.0 <= limit,
        "a {} of {} bytes (limit {limit})",
        net.max_message.1,
        net.max_message.0
    );
    assert!(
        net.max_accepts_per_ready <= depth,
        "{} accepts in one Ready (pipeline depth {depth})",
        net.max_accepts_per_ready
    );
    // Recovery re-proposed (and so chose) every slot.
    assert_eq!(net.r(leader).status().commit, SLOTS);
    // A follower that lost its disk catches up in replies under the limit.
    let wiped = (leader + 1) % 3;
    net.durable[wiped as usize] = DurableState::default();
    net.restart(wiped);
    net.run_until(net.now + 2_000 * MS);
    assert_eq!(net.r(wiped).status().commit, SLOTS);
    assert!(
        net.max_message.0 <= limit,
        "a {} of {} bytes (limit {limit})",
        net.max_message.1,
        net.max_message.0
    );
}

// ------------------------------------------------------------------ quorum leases

fn qlease_net(bug: Option<InjectedBug>) -> Net {
    let mut net = Net::with_configs(
        (0..3)
            .map(|id| {
                let mut cfg = config(id, 3);
                cfg.read_mode = ReadMode::QuorumLease;
                cfg.inject_bug = bug;
                cfg
            })
            .collect(),
    );
    net.run_until(300 * MS);
    assert_eq!(net.leader(), Some(0));
    net
}

/// Starts a linearizable read at `id` now; returns whether it was taken and, if it was
/// served already, the applied slot it was served at.
fn read_at(net: &mut Net, id: ReplicaId, read_id: u64) -> (bool, Option<(ReadOutcome, Slot)>) {
    let now = net.now;
    let taken = net.r_mut(id).read_index(now, read_id).is_ok();
    net.drain(id);
    net.deliver_all();
    let served = net.reads[id as usize]
        .iter()
        .find(|(r, _)| r.id == read_id)
        .map(|(r, applied)| (r.outcome, *applied));
    (taken, served)
}

#[test]
fn qlease_follower_reads_locally() {
    let mut net = qlease_net(None);
    net.sent_log = true;
    let (taken, served) = read_at(&mut net, 2, 1);
    assert!(taken, "2 holds grants from a majority");
    assert_eq!(served, Some((ReadOutcome::Ready, 0)));
    assert!(net.sent.is_empty(), "no message for a local read");
    let c = net.r(2).lease_read_counters();
    assert_eq!((c.local, c.waited, c.forwarded), (1, 0, 0));
    // Leader-lease mode refuses the same read (redirect to the leader).
    let mut leader_lease = Net::new(3);
    leader_lease.run_until(300 * MS);
    assert!(leader_lease.r_mut(2).read_index(300 * MS, 1).is_err());
}

/// Parks the leader 0's commit notices (heartbeats carrying a commit index) to replica 2.
fn hold_commit_notices_to_2(net: &mut Net) {
    net.hold_if = Some(Box::new(|e: &Envelope| {
        e.from == 0
            && e.to == 2
            && matches!(e.msg, Message::Heartbeat { commit, .. } if commit >= 1)
    }));
}

/// A write commits at the leader; the commit notice to holder 2 is still in the network (held
/// here). A read at 2 must wait for the slot it accepted.
fn qlease_unapplied_scenario(bug: Option<InjectedBug>) -> Option<(ReadOutcome, Slot)> {
    let mut net = qlease_net(bug);
    hold_commit_notices_to_2(&mut net);
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    assert_eq!(net.r(0).status().commit, 1, "committed at the leader");
    assert_eq!(net.r(2).status().applied, 0, "2 has not heard the commit");
    let (taken, served) = read_at(&mut net, 2, 9);
    assert!(taken);
    if served.is_some() {
        return served;
    }
    net.hold_if = None;
    net.release_held();
    net.run_until(330 * MS);
    net.reads[2]
        .iter()
        .find(|(r, _)| r.id == 9)
        .map(|(r, applied)| (r.outcome, *applied))
}

#[test]
fn qlease_leader_sends_a_commit_notice() {
    // With quorum leases a holder hears of a commit at once (no Accept was going out to carry
    // it), so a read right after a write does not wait for the next heartbeat.
    let mut net = qlease_net(None);
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    assert_eq!(net.r(0).status().commit, 1);
    for id in [1, 2] {
        assert_eq!(
            net.r(id).status().applied,
            1,
            "replica {id} heard the commit"
        );
    }
    // Without them only the leader reads, and the commit rides on the next heartbeat.
    let mut plain = Net::new(3);
    plain.run_until(300 * MS);
    let leader = plain.leader().expect("a leader");
    plain.propose(leader, 1, 1, Bytes::from_static(b"new"));
    let follower = (leader + 1) % 3;
    assert_eq!(plain.r(follower).status().applied, 0);
}

#[test]
fn qlease_read_waits_only_for_slots_that_may_change_its_key() {
    let mut net = qlease_net(None);
    hold_commit_notices_to_2(&mut net);
    net.propose(0, 1, 1, Bytes::from_static(b"write-a"));
    assert_eq!(net.r(2).status().applied, 0, "2 has not heard the commit");
    // A read that slot 1 cannot change is served at once, locally, without waiting.
    let now = net.now;
    let other = |c: &Command| c.payload.as_ref() == b"write-b";
    assert!(net.r_mut(2).read_index_for(now, 20, &other).is_ok());
    net.drain(2);
    let served = net.reads[2].iter().find(|(r, _)| r.id == 20).cloned();
    assert_eq!(
        served.map(|(r, a)| (r.outcome, a)),
        Some((ReadOutcome::Ready, 0))
    );
    // One it can change waits for slot 1.
    let same = |c: &Command| c.payload.as_ref() == b"write-a";
    assert!(net.r_mut(2).read_index_for(now, 21, &same).is_ok());
    net.drain(2);
    assert!(
        net.reads[2].iter().all(|(r, _)| r.id != 21),
        "served before slot 1 applied"
    );
    let c = net.r(2).lease_read_counters();
    assert_eq!((c.local, c.waited), (1, 1), "one served, one waiting");
    net.hold_if = None;
    net.release_held();
    let served = net.reads[2].iter().find(|(r, _)| r.id == 21).cloned();
    assert_eq!(
        served.map(|(r, a)| (r.outcome, a)),
        Some((ReadOutcome::Ready, 1))
    );
    let c = net.r(2).lease_read_counters();
    assert_eq!((c.local, c.waited, c.forwarded), (2, 1, 0));
}

/// A holder must not trust a value it accepted under an older leader (found by review): 0
/// leads, accepts its own write at slot s, loses its Accepts and is cut off; 1 or 2 leads at a
/// higher ballot and commits a write of key `a` at s without 0 (once the obligations to 0
/// ran out). After the heal 0 holds fresh grants (promised at the new ballot) but not the
/// chosen value (catch-up replies are lost): a read of `a` at 0 must wait, although the value 0
/// holds at s (its own, accepted at the old ballot) does not touch `a`.
#[test]
fn qlease_read_does_not_trust_a_value_accepted_under_an_older_leader() {
    let mut net = qlease_net(None);
    let s = net.r(0).status().commit + 1;
    net.drop_if = Some(Box::new(|e: &Envelope| {
        e.from == 0 && matches!(e.msg, Message::Accept { .. })
    }));
    net.propose(0, 1, 1, Bytes::from_static(b"write-x"));
    net.isolate(0, &[1, 2]);
    net.drop_if = None;
    let start = net.now;
    let new_leader = loop {
        net.run_until(net.now + MS);
        if let Some(l) = [1, 2]
            .into_iter()
            .find(|&id| net.r(id).role() == Role::Leader)
        {
            break l;
        }
        assert!(net.now < start + 2_000 * MS, "no new leader");
    };
    net.propose(new_leader, 2, 1, Bytes::from_static(b"write-a"));
    while net.r(new_leader).status().commit < s {
        assert!(net.now < start + 3_000 * MS, "the write never committed");
        net.run_until(net.now + MS);
    }
    // Heal, but 0 never receives the chosen value for s.
    net.drop_if = Some(Box::new(|e: &Envelope| {
        e.to == 0 && matches!(e.msg, Message::CatchupReply { .. } | Message::Accept { .. })
    }));
    net.heal();
    net.run_until(net.now + 400 * MS);
    assert!(
        net.r(0).status().applied < s,
        "0 applied s without the chosen value"
    );
    let now = net.now;
    let a = |c: &Command| c.payload.as_ref() == b"write-a";
    // 0 holds fresh grants: the read is taken (a local read), and must wait.
    assert!(
        net.r_mut(0).read_index_for(now, 77, &a).is_ok(),
        "0 holds a lease"
    );
    net.drain(0);
    let served = net.reads[0].iter().find(|(r, _)| r.id == 77).cloned();
    assert!(
        !matches!(served, Some((ReadResult { outcome: ReadOutcome::Ready, .. }, applied)) if applied < s),
        "0 read `a` before applying slot {s}, where `a` was written: {served:?}"
    );
}

#[test]
fn qlease_read_waits_for_an_accepted_slot() {
    let served = qlease_unapplied_scenario(None);
    assert_eq!(
        served,
        Some((ReadOutcome::Ready, 1)),
        "served once slot 1 applied"
    );
}

#[test]
fn qlease_read_unapplied_bug_reads_stale() {
    let served = qlease_unapplied_scenario(Some(InjectedBug::QleaseReadUnapplied));
    assert_eq!(
        served,
        Some((ReadOutcome::Ready, 0)),
        "stale: slot 1 committed"
    );
}

/// 2 loses its links to the leader 0 but still reaches 1. Its newest grant from 1 predates
/// 1's acceptance of the write, so only the holder rule keeps the write from committing while
/// 2 reads locally.
fn qlease_holder_scenario(bug: Option<InjectedBug>) -> (Net, Option<(ReadOutcome, Slot)>) {
    let mut net = qlease_net(bug);
    net.isolate(2, &[0]);
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    let (taken, served) = read_at(&mut net, 2, 9);
    assert!(taken, "2 holds grants from 1 and itself");
    (net, served)
}

#[test]
fn qlease_write_waits_for_every_holder() {
    let (mut net, served) = qlease_holder_scenario(None);
    let start = net.now;
    assert_eq!(net.r(0).status().commit, 0, "2 has not accepted");
    assert_eq!(net.r(0).lease_read_counters().writes_held_for_holders, 1);
    assert_eq!(
        served,
        Some((ReadOutcome::Ready, 0)),
        "nothing committed yet"
    );
    // 2 still renews its grant at 1. The leader names it in `revoke` once the write waited
    // max(4 heartbeats, half an election timeout); 1 stops renewing; its grant runs out.
    while net.r(0).status().commit == 0 {
        assert!(net.now < start + 400 * MS, "the write never committed");
        net.run_until(net.now + MS);
    }
    let cfg = &net.cfgs[0];
    let waited = net.now - start;
    let hold_ms = lease::grantor_hold_ms(cfg.lease_ms, cfg.clock_drift_percent);
    let bound_ms =
        cfg.election_timeout_min_ms / 2 + cfg.heartbeat_ms + hold_ms + 2 * cfg.heartbeat_ms;
    assert!(
        waited <= bound_ms * MS,
        "waited {} ms > {bound_ms}",
        waited / MS
    );
    assert!(
        waited >= cfg.lease_ms * MS,
        "waited only {} ms",
        waited / MS
    );
    // From the commit on, 2 has no lease: it cannot read the old value.
    let (taken, _) = read_at(&mut net, 2, 1_000_000);
    assert!(
        !taken,
        "2 still holds a lease after the write committed without it"
    );
    eprintln!(
        "write held {} ms for a holder cut off from the leader only",
        waited / MS
    );
}

#[test]
fn qlease_commit_without_holder_bug_reads_stale() {
    let (net, served) = qlease_holder_scenario(Some(InjectedBug::QleaseCommitWithoutHolder));
    assert_eq!(net.r(0).status().commit, 1, "committed without 2");
    assert_eq!(served, Some((ReadOutcome::Ready, 0)), "stale at holder 2");
}

/// 2 is cut off from everyone. Writes wait for its grants to expire at their grantors, then
/// commit; from then on 2 must not read locally.
fn qlease_expiry_scenario(bug: Option<InjectedBug>) -> (Net, Nanos, bool) {
    let mut net = qlease_net(bug);
    net.isolate(2, &[0, 1]);
    let cut_at = net.now;
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    let mut committed_at = None;
    while net.now < cut_at + 400 * MS {
        net.run_until(net.now + MS);
        if committed_at.is_none() && net.r(0).status().commit >= 1 {
            committed_at = Some(net.now);
        }
    }
    let committed_at = committed_at.expect("the write commits once 2's grants expired");
    let (taken, _) = read_at(&mut net, 2, 9);
    (net, committed_at - cut_at, taken)
}

#[test]
fn qlease_unresponsive_holder_stalls_writes_for_a_bounded_time() {
    let (net, stall, taken) = qlease_expiry_scenario(None);
    eprintln!(
        "write held {} ms for a holder cut off from everyone",
        stall / MS
    );
    let cfg = &net.cfgs[0];
    let hold_ms = lease::grantor_hold_ms(cfg.lease_ms, cfg.clock_drift_percent);
    // Not before the grants 2 holds could have expired (on 2's clock)...
    assert!(stall >= cfg.lease_ms * MS, "stall {stall} ns");
    // ...and within the documented bound: hold + one renewal period + one retransmit period.
    assert!(
        stall <= (hold_ms + 3 * cfg.heartbeat_ms) * MS,
        "stall {} ms",
        stall / MS
    );
    assert!(!taken, "2's grants expired: no local read");
    assert_eq!(net.r(2).lease_read_counters().forwarded, 1);
}

#[test]
fn qlease_read_after_expiry_bug_reads_stale() {
    let (net, _, taken) = qlease_expiry_scenario(Some(InjectedBug::QleaseReadAfterExpiry));
    assert!(taken, "2 reads on expired grants");
    let (read, applied) = net.reads[2].last().copied().expect("served at once");
    assert_eq!((read.id, read.outcome, applied), (9, ReadOutcome::Ready, 0));
}

/// Grantor 1 restarts while holder 2 still counts a grant it made before the crash; 2 is cut
/// off from 0 and from the new 1. The restarted 1 must name 2 in its Accepteds until that grant
/// has run out, so no write commits while 2 can still read the old value.
#[test]
fn qlease_restarted_grantor_owes_everyone() {
    let mut net = qlease_net(None);
    net.isolate(2, &[0]);
    // 0's grant to 2 runs out; 2 keeps renewing at 1 and at itself.
    net.run_until(480 * MS);
    let (taken, _) = read_at(&mut net, 2, 1);
    assert!(taken, "2 holds grants from 1 and itself");
    let restarted_at = net.now;
    net.restart(1);
    net.cut.insert((2, 1));
    net.cut.insert((1, 2));
    net.sent_log = true;
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    let named = net.sent.iter().any(|e| {
        e.from == 1 && matches!(&e.msg, Message::Accepted { holders, .. } if holders.contains(2))
    });
    assert!(named, "the restarted grantor names 2");
    let mut committed_at = None;
    while net.now < restarted_at + 600 * MS && committed_at.is_none() {
        net.run_until(net.now + MS);
        if net.r(0).status().commit >= 1 {
            committed_at = Some(net.now);
        }
    }
    let committed_at = committed_at.expect("the write commits once the hold is over");
    let cfg = &net.cfgs[1];
    let hold_ms = lease::grantor_hold_ms(cfg.lease_ms, cfg.clock_drift_percent);
    assert!(committed_at >= restarted_at + hold_ms * MS);
    let read_id = net.now;
    let (taken, _) = read_at(&mut net, 2, read_id);
    assert!(!taken, "2 still reads after the write committed without it");
}

/// The lease configuration changes from every replica to {0, 1} (a log entry; the node calls
/// `set_lease_holders` as it applies it). 0 and 1 applied it; 2, cut off from the leader, has
/// not, and still holds grants from 1 and itself. A write after the change must still wait for
/// 2 until the grants 1 gave it have run out: 1 keeps its obligation, only refuses to renew.
fn qlease_config_removal_scenario(bug: Option<InjectedBug>) -> (Net, Option<(ReadOutcome, Slot)>) {
    let mut net = qlease_net(bug);
    net.isolate(2, &[0]);
    let mut new = VoteSet::EMPTY;
    new.insert(0);
    new.insert(1);
    assert!(net.r_mut(0).set_lease_holders(new));
    assert!(net.r_mut(1).set_lease_holders(new));
    assert!(!net.r_mut(1).set_lease_holders(new), "applied once");
    assert_eq!(net.r(1).lease_holders_configured(), new);
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    let (taken, served) = read_at(&mut net, 2, 9);
    assert!(taken, "2 still holds grants from 1 and itself");
    (net, served)
}

#[test]
fn qlease_removed_holder_is_waited_for_until_its_grants_expire() {
    let (mut net, served) = qlease_config_removal_scenario(None);
    let start = net.now;
    assert_eq!(net.r(0).status().commit, 0, "the write waits for 2");
    assert_eq!(
        served,
        Some((ReadOutcome::Ready, 0)),
        "nothing committed yet"
    );
    while net.r(0).status().commit == 0 {
        assert!(net.now < start + 400 * MS, "the write never committed");
        net.run_until(net.now + MS);
    }
    let cfg = &net.cfgs[1];
    let hold_ms = lease::grantor_hold_ms(cfg.lease_ms, cfg.clock_drift_percent);
    let waited = net.now - start;
    // 1 refuses 2's renewals from the change on: the wait ends with 1's last obligation.
    assert!(
        waited <= (hold_ms + 3 * cfg.heartbeat_ms) * MS,
        "waited {} ms",
        waited / MS
    );
    let read_id = net.now;
    let (taken, _) = read_at(&mut net, 2, read_id);
    assert!(!taken, "2 still reads after the write committed without it");
    eprintln!("write held {} ms for a removed holder", waited / MS);
}

#[test]
fn qlease_config_drop_early_bug_reads_stale() {
    let (net, served) = qlease_config_removal_scenario(Some(InjectedBug::QleaseConfigDropEarly));
    assert_eq!(net.r(0).status().commit, 1, "committed without 2");
    assert_eq!(
        served,
        Some((ReadOutcome::Ready, 0)),
        "stale at removed holder 2"
    );
}

/// Lease configuration {0, 1}: 2 holds no lease, redirects linearizable reads, and a write does
/// not wait for it.
#[test]
fn qlease_named_holders_only() {
    let mut holders = VoteSet::EMPTY;
    holders.insert(0);
    holders.insert(1);
    let mut net = Net::with_configs(
        (0..3)
            .map(|id| {
                let mut cfg = config(id, 3);
                cfg.read_mode = ReadMode::QuorumLease;
                cfg.lease_holders = holders;
                cfg
            })
            .collect(),
    );
    net.run_until(300 * MS);
    assert_eq!(net.leader(), Some(0));
    let (taken, _) = read_at(&mut net, 2, 1);
    assert!(!taken, "2 is not a holder");
    let (taken, served) = read_at(&mut net, 1, 2);
    assert!(taken);
    assert_eq!(served, Some((ReadOutcome::Ready, 0)));
    net.isolate(2, &[0, 1]);
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    assert_eq!(net.r(0).status().commit, 1, "no wait for a non-holder");
    assert_eq!(net.r(0).lease_read_counters().writes_held_for_holders, 0);
    // The log adds 2 (every replica applies the change): once it has grants under the new
    // configuration, it reads locally and writes wait for it again.
    net.heal();
    for id in 0..3 {
        net.r_mut(id).set_lease_holders(VoteSet::all(3));
    }
    net.run_until(net.now + 3 * net.cfgs[0].heartbeat_ms * MS);
    let (taken, _) = read_at(&mut net, 2, 3);
    assert!(taken, "2 is a holder now");
    net.isolate(2, &[0, 1]);
    net.propose(0, 1, 2, Bytes::from_static(b"newer"));
    assert_eq!(net.r(0).status().commit, 1, "the write waits for holder 2");
}

/// Forward mode: a holder redirects a read that would have to wait for an accepted slot.
#[test]
fn qlease_forward_mode_redirects_instead_of_waiting() {
    let mut net = Net::with_configs(
        (0..3)
            .map(|id| {
                let mut cfg = config(id, 3);
                cfg.read_mode = ReadMode::QuorumLease;
                cfg.lease_pending = lease::LeasePending::Forward;
                cfg
            })
            .collect(),
    );
    net.run_until(300 * MS);
    assert_eq!(net.leader(), Some(0));
    // The commit notice to 2 is still in the network.
    hold_commit_notices_to_2(&mut net);
    net.propose(0, 1, 1, Bytes::from_static(b"new"));
    assert_eq!(net.r(2).status().applied, 0, "2 has not heard the commit");
    let (taken, _) = read_at(&mut net, 2, 9);
    assert!(!taken, "forwarded to the leader");
    let c = net.r(2).lease_read_counters();
    assert_eq!((c.local, c.waited, c.forwarded), (0, 0, 1));
    net.hold_if = None;
    net.release_held();
    net.run_until(net.now + 3 * net.cfgs[0].heartbeat_ms * MS);
    let (taken, served) = read_at(&mut net, 2, 10);
    assert!(taken, "nothing to wait for: local");
    assert_eq!(served, Some((ReadOutcome::Ready, 1)));
}

// ------------------------------------------------------------------ ballot reuse after a crash

/// Drives replica 4 of 5 to an election by hand and answers its Prepare with promises from
/// 0, 2 and 3 (a majority) while its own promise write is not yet durable. It must not lead
/// until its own promise is durable: otherwise a crash at that moment restarts it with its old
/// `promised`, it picks the same ballot again, and two different values get accepted at one
/// ballot in one slot (found by the simulator, 5 replicas, seed 1037921).
#[test]
fn a_candidate_leads_only_once_its_own_promise_is_durable() {
    let mut r = Replica::new(config(4, 5), &DurableState::default(), 0);
    let mut now = r.poll_timeout();
    r.tick(now);
    // Pre-vote: grants from 0 and 1 make three with its own.
    let ready = r.ready(now);
    let ballot = ready
        .messages
        .iter()
        .find_map(|e| match e.msg {
            Message::PreVote { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("a pre-vote");
    for from in [0, 1] {
        r.step(
            now,
            Envelope {
                from,
                to: 4,
                msg: Message::PreVoteReply {
                    ballot,
                    granted: true,
                },
            },
        );
    }
    now += MS;
    let ready = r.ready(now);
    let prepare = ready
        .messages
        .iter()
        .find(|e| e.to == 4 && matches!(e.msg, Message::Prepare { .. }))
        .cloned()
        .expect("a Prepare to itself");
    let Message::Prepare { ballot, first_slot } = prepare.msg else {
        unreachable!()
    };
    // Its own Prepare arrives; the promise write is issued but not yet durable.
    r.step(now, prepare);
    let ready = r.ready(now);
    let own_write = ready
        .writes
        .last()
        .map(|(id, _)| *id)
        .expect("a promise write");
    assert!(
        !ready
            .messages
            .iter()
            .any(|e| matches!(e.msg, Message::Promise { .. })),
        "no Promise before the write is durable"
    );
    for from in [0, 2, 3] {
        r.step(
            now,
            Envelope {
                from,
                to: 4,
                msg: Message::Promise {
                    ballot,
                    first_slot,
                    last_slot: Slot::MAX,
                    entries: Vec::new(),
                    floor: 0,
                },
            },
        );
    }
    let _ = r.ready(now);
    assert_ne!(
        r.role(),
        Role::Leader,
        "a majority of others' promises, but its own ballot is not durable yet"
    );
    // The write completes: its own Promise goes out (to itself) and it leads.
    r.persisted(now, own_write);
    let ready = r.ready(now);
    for env in ready.messages.into_iter().filter(|e| e.to == 4) {
        r.step(now, env);
    }
    let _ = r.ready(now);
    assert_eq!(r.role(), Role::Leader);
}

// ------------------------------------------------------------------ Fast Paxos

#[cfg(test)]
#[path = "tests_fast.rs"]
mod fast;

// ------------------------------------------------------------------ snapshots and truncation

fn take_ready(r: &mut Replica, now: Nanos) -> Ready {
    let ready = r.ready(now);
    if let Some((last, _)) = ready.writes.last() {
        r.persisted(now, *last);
    }
    ready
}

/// A candidate that learns from a promise that an acceptor truncated slots it does not know
/// chosen fetches that snapshot before it proposes anything: a no-op there would overwrite a
/// chosen value. Once the snapshot is installed it leads, re-proposing only above the floor.
#[test]
fn candidate_installs_a_peers_snapshot_before_proposing() {
    let mut r = Replica::new(config(2, 3), &DurableState::default(), 0);
    let mut now = 151 * MS;
    r.tick(now);
    let pre = take_ready(&mut r, now);
    let ballot = pre
        .messages
        .iter()
        .find_map(|e| match e.msg {
            Message::PreVote { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("a pre-vote");
    r.step(
        now,
        Envelope {
            from: 1,
            to: 2,
            msg: Message::PreVoteReply {
                ballot,
                granted: true,
            },
        },
    );
    // The election: our own promise goes through our own acceptor.
    let mut prepare = None;
    for _ in 0..4 {
        let ready = take_ready(&mut r, now);
        for env in ready.messages {
            if let Message::Prepare { ballot, first_slot } = env.msg {
                prepare = Some((ballot, first_slot));
            }
            if env.to == 2 {
                r.step(now, env);
            }
        }
    }
    let (ballot, first_slot) = prepare.expect("a prepare");
    assert_eq!(first_slot, 1);
    let accepted = batch(4, 1, Bytes::from_static(b"after the floor"));
    r.step(
        now,
        Envelope {
            from: 1,
            to: 2,
            msg: Message::Promise {
                ballot,
                first_slot,
                last_slot: Slot::MAX,
                entries: vec![PromiseEntry {
                    slot: 11,
                    ballot: Ballot::new(1, 0),
                    value: accepted.clone(),
                    chosen: false,
                    fast: false,
                }],
                floor: 10,
            },
        },
    );
    let ready = take_ready(&mut r, now);
    assert_eq!(ready.snapshot_wanted, Some((1, 10)));
    assert!(
        !ready
            .messages
            .iter()
            .any(|e| matches!(e.msg, Message::Accept { .. })),
        "proposed before installing the snapshot: {:?}",
        ready.messages
    );
    assert_eq!(r.role(), Role::Candidate);
    // The node installs the snapshot: the replica leads and starts above the floor.
    now += MS;
    assert!(r.install_snapshot(now, 10));
    assert_eq!(r.status().applied, 10);
    assert_eq!(r.status().floor, 10);
    assert_eq!(r.role(), Role::Leader);
    let ready = take_ready(&mut r, now);
    let accepts: Vec<(Slot, Value)> = ready
        .messages
        .iter()
        .filter_map(|e| match &e.msg {
            Message::Accept { slot, value, .. } if e.to == 0 => Some((*slot, value.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        accepts,
        vec![(11, accepted)],
        "only slot 11, with its value"
    );
    // An older snapshot changes nothing.
    assert!(!r.install_snapshot(now, 5));
}

/// After a durable snapshot the log forgets the slots below the floor: a catch-up request
/// for them is answered with the floor (the asker fetches the snapshot), a Promise reports
/// the floor, and a restart from the snapshot's durable state starts at the floor.
#[test]
fn truncated_slots_are_offered_as_a_snapshot() {
    let mut net = Net::new(3);
    net.run_until(200 * MS);
    let leader = net.leader().expect("a leader");
    for seq in 1..=5 {
        net.propose(leader, 1, seq, Bytes::from_static(b"v"));
    }
    net.run_until(400 * MS);
    let follower = (leader + 1) % 3;
    let applied = net.r(follower).status().applied;
    assert!(applied >= 5, "applied {applied}");
    drop(net.r_mut(follower).compact(4));
    assert_eq!(net.r(follower).status().floor, 4);
    assert!(net.r(follower).log().get(4).is_none());
    assert!(net.r(follower).log().get(5).is_some());
    let now = net.now;
    net.r_mut(follower).step(
        now,
        Envelope {
            from: leader,
            to: follower,
            msg: Message::CatchupRequest {
                first_slot: 2,
                last_slot: 6,
            },
        },
    );
    let ready = net.r_mut(follower).ready(now);
    let reply = ready
        .messages
        .iter()
        .find(|e| matches!(e.msg, Message::CatchupReply { .. }))
        .expect("a reply");
    assert_eq!(
        reply.msg,
        Message::CatchupReply {
            entries: Vec::new(),
            floor: 4
        }
    );
    // The asker, behind the floor, wants the snapshot.
    let mut lagging = Replica::new(config(2, 3), &DurableState::default(), now);
    lagging.step(
        now,
        Envelope {
            from: follower,
            to: 2,
            msg: reply.msg.clone(),
        },
    );
    assert_eq!(lagging.ready(now).snapshot_wanted, Some((follower, 4)));
    // A restart from the snapshot's durable state: applied and committed up to the floor.
    let mut durable = net.durable[follower as usize].clone();
    durable.floor = 4;
    let restarted = Replica::new(config(follower, 3), &durable, now);
    assert_eq!(restarted.status().applied, 4);
    assert!(restarted.status().commit >= 4);
    assert!(restarted.log().get(3).is_none());
}

#[test]
#[should_panic(expected = "past the applied index")]
fn a_snapshot_past_the_applied_index_is_refused() {
    let mut r = Replica::new(config(0, 3), &DurableState::default(), 0);
    drop(r.compact(3));
}
