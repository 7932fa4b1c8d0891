//! Fast Paxos scenarios (`fast.rs`, `fast_rounds.rs`; docs/internals/protocol.md §11), driven
//! through the same hand-run network as the Multi-Paxos ones.

use super::*;

fn fast_net(n: u32, bug: Option<InjectedBug>) -> Net {
    fast_net_with(n, bug, FastOrder::default())
}

fn fast_net_with(n: u32, bug: Option<InjectedBug>, order: FastOrder) -> Net {
    Net::with_configs(
        (0..n)
            .map(|id| {
                let mut cfg = config(id, n);
                cfg.protocol = ProtocolMode::FastPaxos;
                cfg.read_mode = ReadMode::ReadIndex;
                cfg.inject_bug = bug;
                cfg.fast_order = order;
                cfg
            })
            .collect(),
    )
}

fn cmd(client_id: u64, seq: u64) -> Command {
    Command {
        client_id,
        seq,
        payload: Bytes::from(format!("c{client_id}s{seq}")),
    }
}

impl Net {
    /// A client's command reaching each replica in `order` before anything is delivered.
    fn fast_propose(&mut self, order: &[ReplicaId], command: Command) {
        let now = self.now;
        for &id in order {
            self.r_mut(id)
                .propose(now, command.clone())
                .expect("the fast round takes it");
            self.drain(id);
        }
    }

    fn committed_ids(&self, id: ReplicaId) -> Vec<(u64, u64)> {
        self.committed[id as usize]
            .iter()
            .flat_map(|(_, v)| v.commands().iter().map(|c| (c.client_id, c.seq)))
            .collect()
    }

    /// Every replica's fast round is open.
    fn fast_open_everywhere(&self) -> bool {
        (0..self.replicas.len() as ReplicaId).all(|id| self.r(id).status().fast_open.is_some())
    }
}

#[test]
fn a_fast_quorum_chooses_a_command_without_the_leader() {
    let mut net = fast_net(3, None);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    assert!(net.fast_open_everywhere(), "the leader opened fast rounds");
    net.sent_log = true;
    net.fast_propose(&[0, 1, 2], cmd(1, 1));
    net.deliver_all();
    for id in 0..3 {
        assert_eq!(net.committed_ids(id), vec![(1, 1)], "replica {id}");
        assert_eq!(net.r(id).fast_counters().fast_learned, 1);
    }
    assert_eq!(net.r(leader).fast_counters().fast_chosen, 1);
    // One message delay from acceptor to learner: votes only, no Accept from the leader.
    assert!(
        net.sent
            .iter()
            .all(|e| !matches!(e.msg, Message::Accept { .. })),
        "the leader took part"
    );
    assert_eq!(net.r(leader).fast_counters().classic_chosen, 0);
}

#[test]
fn colliding_votes_are_recovered_and_every_command_is_chosen() {
    let mut net = fast_net(3, None);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    assert!(net.fast_open_everywhere());
    // Replica 0 sees a then b; 1 and 2 see b then a: two slots, neither with a fast quorum.
    net.fast_propose(&[0], cmd(1, 1));
    net.fast_propose(&[1, 2, 0], cmd(2, 1));
    net.fast_propose(&[1, 2], cmd(1, 1));
    net.deliver_all();
    net.run_until(600 * MS);
    let ids = net.committed_ids(leader);
    assert!(ids.contains(&(1, 1)) && ids.contains(&(2, 1)), "{ids:?}");
    for id in 0..3 {
        assert_eq!(net.committed[id as usize], net.committed[leader as usize]);
    }
    let c = net.r(leader).fast_counters();
    assert!(c.collisions >= 2, "{c:?}");
    assert!(
        c.classic_chosen >= 2,
        "recovered in the classic round: {c:?}"
    );
}

#[test]
fn without_a_live_fast_quorum_the_leader_falls_back_to_classic_rounds() {
    let mut net = fast_net(3, None);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    assert!(net.fast_open_everywhere());
    // N = 3 has qf = 3: one replica down and no fast round can choose anything.
    let down = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    net.isolate(down, &[leader, other]);
    net.run_until(800 * MS);
    assert_eq!(
        net.leader(),
        Some(leader),
        "the leader re-ran phase 1 and kept leading"
    );
    assert!(net.r(leader).status().fast_open.is_none());
    assert!(net.r(other).status().fast_open.is_none());
    assert!(net.r(leader).fast_counters().mode_switches >= 2);
    // Clients go to the leader; the classic round chooses with a majority.
    let now = net.now;
    assert!(matches!(
        net.r_mut(other).propose(now, cmd(3, 1)),
        Err(NotLeader::Redirect { leader: Some(l) }) if l == leader
    ));
    net.propose(leader, 3, 1, Bytes::from_static(b"x"));
    net.run_until(900 * MS);
    assert!(net.committed_ids(other).contains(&(3, 1)));
    // Healed: fast rounds open again.
    net.heal();
    net.run_until(1_500 * MS);
    assert!(net.fast_open_everywhere());
}

/// Five replicas, qf = 4. `a` is chosen by the fast votes of 0..=3, and only 1 learns it; 4
/// voted `b`. The leader 0 then dies, 1 is cut off, and a new leader is elected by {2, 3, 4} —
/// whose votes are a, a, b. The selection rule (a strict majority of |Q| = 3) must keep `a`.
fn leader_change_scenario(bug: Option<InjectedBug>) -> Net {
    let mut net = fast_net(5, bug);
    net.run_until(400 * MS);
    assert_eq!(
        net.leader(),
        Some(0),
        "the lowest id wins with equal timeouts"
    );
    assert!(net.fast_open_everywhere());
    net.fast_propose(&[4], cmd(2, 1));
    net.fast_propose(&[0, 1, 2, 3], cmd(1, 1));
    net.drop_if = Some(Box::new(|e| {
        matches!(e.msg, Message::Voted { .. }) && e.to != 1
    }));
    net.deliver_all();
    assert_eq!(
        net.committed_ids(1),
        vec![(1, 1)],
        "1 learned a from the fast quorum"
    );
    net.replicas[0] = None;
    net.drop_if = Some(Box::new(|e| e.to == 1 || e.from == 1));
    net.run_until(1_500 * MS);
    net
}

#[test]
fn a_new_leader_keeps_a_value_a_fast_quorum_may_have_chosen() {
    let net = leader_change_scenario(None);
    let leader = net.leader().expect("a new leader");
    assert_ne!(leader, 0);
    for id in [2, 3, 4] {
        assert!(net.r(id).fatal().is_none());
        assert_eq!(net.committed_ids(id).first(), Some(&(1, 1)), "replica {id}");
    }
}

#[test]
fn the_recovery_any_value_bug_breaks_agreement() {
    let net = leader_change_scenario(Some(InjectedBug::FastRecoveryAnyValue));
    let leader = net.leader().expect("a new leader");
    // The new leader chose b where 1 had learned a.
    assert_eq!(net.committed_ids(leader).first(), Some(&(2, 1)));
    assert_eq!(net.committed_ids(1), vec![(1, 1)]);
}

/// Five replicas. A write is chosen by the fast votes of 1..=4 and learned by them (so a
/// client may have its answer), while none of those votes reached the leader 0. A
/// linearizable read at 0 must still see it: the read round's acks name the voted slot, and
/// the read waits until 0 has learned and applied it.
#[test]
fn a_read_at_the_leader_waits_for_a_slot_chosen_by_votes_it_has_not_seen() {
    let mut net = fast_net(5, None);
    net.run_until(400 * MS);
    assert_eq!(net.leader(), Some(0));
    assert!(net.fast_open_everywhere());
    net.drop_if = Some(Box::new(|e| {
        matches!(e.msg, Message::Voted { .. }) && e.to == 0
    }));
    net.fast_propose(&[1, 2, 3, 4], cmd(1, 1));
    net.deliver_all();
    assert_eq!(net.committed_ids(1), vec![(1, 1)], "1 learned the write");
    assert!(net.committed_ids(0).is_empty(), "0 has not");
    let (taken, served) = super::read_at(&mut net, 0, 7);
    assert!(taken);
    assert_eq!(
        served, None,
        "the read was served before the write was applied"
    );
    // The votes get through again: 0 learns the slot (the FastFill it sends after the fast
    // timeout has the voters repeat their votes) and only then serves the read.
    net.drop_if = None;
    net.run_until(700 * MS);
    let served = net.reads[0]
        .iter()
        .find(|(r, _)| r.id == 7)
        .map(|(r, a)| (r.outcome, *a));
    assert_eq!(served, Some((ReadOutcome::Ready, 1)));
    assert_eq!(net.committed_ids(0), vec![(1, 1)]);
}

fn fast_net_ordered(n: u32, order: FastOrder) -> Net {
    fast_net_with(n, None, order)
}

impl Net {
    /// A client's command with Fast Paxos `deadline` reaching each replica in `order`.
    fn fast_propose_by(&mut self, order: &[ReplicaId], command: Command, deadline: Nanos) {
        let now = self.now;
        for &id in order {
            self.r_mut(id)
                .propose_by(now, command.clone(), deadline)
                .expect("the fast round takes it");
            self.drain(id);
        }
    }
}

/// Two concurrent writes reach the acceptors in opposite orders (0 sees a then b, 1 and 2 see
/// b then a), all before their deadlines. Ordered by deadline, every acceptor votes a then b
/// into the same slots: both are chosen by fast quorums, nothing collides. Voted at arrival
/// (the control), the same deliveries collide.
fn opposite_orders(order: FastOrder) -> (Net, ReplicaId) {
    let mut net = fast_net_ordered(3, order);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    assert!(net.fast_open_everywhere());
    let t = net.now;
    let (a, b) = (cmd(1, 1), cmd(2, 1));
    net.fast_propose_by(&[0], a.clone(), t + 2 * MS);
    net.fast_propose_by(&[1, 2, 0], b.clone(), t + 3 * MS);
    net.fast_propose_by(&[1, 2], a, t + 2 * MS);
    net.deliver_all();
    net.run_until(t + 200 * MS);
    (net, leader)
}

#[test]
fn deadline_order_makes_opposite_arrival_orders_agree() {
    let (net, leader) = opposite_orders(FastOrder::Deadline);
    for id in 0..3 {
        assert_eq!(net.committed_ids(id), vec![(1, 1), (2, 1)], "replica {id}");
        let c = net.r(id).fast_counters();
        assert_eq!((c.held, c.late), (2, 0), "replica {id}: {c:?}");
    }
    let c = net.r(leader).fast_counters();
    assert_eq!(c.fast_chosen, 2, "{c:?}");
    assert_eq!(
        (c.collisions, c.timeouts, c.classic_chosen),
        (0, 0, 0),
        "{c:?}"
    );
}

#[test]
fn arrival_order_collides_on_the_same_deliveries() {
    let (net, leader) = opposite_orders(FastOrder::Arrival);
    let ids = net.committed_ids(leader);
    assert!(ids.contains(&(1, 1)) && ids.contains(&(2, 1)), "{ids:?}");
    let c = net.r(leader).fast_counters();
    assert!(c.collisions >= 1, "{c:?}");
    assert_eq!(c.held, 0);
}

/// A proposal that reaches an acceptor past its deadline is voted at once: a (deadline +2 ms)
/// reaches everyone in time, b (+3 ms) 0 and 1 in time and 2 only at +8 ms. 2 votes b on
/// arrival, in the slot after a, like the others did: both are chosen by fast quorums.
#[test]
fn a_late_proposal_is_voted_at_once() {
    let mut net = fast_net_ordered(3, FastOrder::Deadline);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    assert!(net.fast_open_everywhere());
    let t = net.now;
    let (a, b) = (cmd(1, 1), cmd(2, 1));
    net.fast_propose_by(&[0, 1, 2], a, t + 2 * MS);
    net.fast_propose_by(&[0, 1], b.clone(), t + 3 * MS);
    net.run_until(t + 8 * MS);
    net.fast_propose_by(&[2], b, t + 3 * MS);
    net.deliver_all();
    for id in 0..3 {
        assert_eq!(net.committed_ids(id), vec![(1, 1), (2, 1)], "replica {id}");
    }
    assert_eq!(net.r(2).fast_counters().late, 1);
    let c = net.r(leader).fast_counters();
    assert_eq!(
        (c.fast_chosen, c.collisions, c.timeouts),
        (2, 0, 0),
        "{c:?}"
    );
}

/// Late proposals that were ordered differently collide and are recovered. a (deadline +2
/// ms) reaches everyone in time, b (+3 ms) only 0 and 1, c (+4 ms) only 2: 0 and 1 vote a, b;
/// 2 votes a, c — slot 2 has b, b, c, a collision (N = 3 needs all three). The late copies
/// (c at 0 and 1, b at 2) are voted at once in later slots. Every command is chosen, in one
/// order everywhere.
#[test]
fn late_proposals_that_collide_are_recovered() {
    let mut net = fast_net_ordered(3, FastOrder::Deadline);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    assert!(net.fast_open_everywhere());
    let t = net.now;
    let (a, b, c) = (cmd(1, 1), cmd(2, 1), cmd(3, 1));
    net.fast_propose_by(&[0, 1, 2], a, t + 2 * MS);
    net.fast_propose_by(&[0, 1], b.clone(), t + 3 * MS);
    net.fast_propose_by(&[2], c.clone(), t + 4 * MS);
    net.run_until(t + 10 * MS);
    net.fast_propose_by(&[0, 1], c, t + 4 * MS);
    net.fast_propose_by(&[2], b, t + 3 * MS);
    net.deliver_all();
    net.run_until(t + 400 * MS);
    let ids = net.committed_ids(leader);
    for want in [(1, 1), (2, 1), (3, 1)] {
        assert!(ids.contains(&want), "{want:?} not chosen: {ids:?}");
    }
    for id in 0..3 {
        assert_eq!(net.committed[id as usize], net.committed[leader as usize]);
    }
    let c = net.r(leader).fast_counters();
    assert!(c.collisions >= 1, "{c:?}");
}

/// A held proposal whose fast round closes before its deadline (no fast quorum any more: the
/// leader re-runs phase 1) is not lost: released at its deadline it takes the classic path
/// (queued at the leader, or handed back to its client as dropped, with a redirect).
#[test]
fn a_held_proposal_outlives_the_fast_round_closing() {
    let mut net = fast_net_ordered(3, FastOrder::Deadline);
    net.run_until(400 * MS);
    let leader = net.leader().expect("a leader");
    let other = (leader + 1) % 3;
    let t = net.now;
    // The third replica is cut off; the write is held at the other two until t + 79 ms
    // (just under the fast timeout, the longest a deadline may be ahead).
    net.isolate((leader + 2) % 3, &[leader, other]);
    net.fast_propose_by(&[leader, other], cmd(1, 1), t + 79 * MS);
    net.run_until(t + 78 * MS);
    assert!(
        net.r(leader).status().fast_open.is_none(),
        "the fast round closed before the deadline"
    );
    assert!(net.committed_ids(leader).is_empty(), "still held");
    net.run_until(t + 400 * MS);
    let chosen = net.committed_ids(leader).contains(&(1, 1));
    let redirected: Vec<ReplicaId> = net
        .dropped
        .iter()
        .filter(|(_, d)| d.client_id == 1)
        .map(|(id, _)| *id)
        .collect();
    assert!(
        chosen || !redirected.is_empty(),
        "the held write was lost: leader log {:?}",
        net.committed_ids(leader)
    );
    // Where it was not proposed, it came back to its client.
    assert!(chosen || redirected.contains(&leader), "{redirected:?}");
}
