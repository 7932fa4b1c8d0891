//! The simulated network's fault model: per-seed drop/duplicate rates, delay range, and the
//! current partition as a set of blocked directed links.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::protocol::{Nanos, ReplicaId};

const NS_PER_US: u64 = 1_000;

#[derive(Clone, Debug)]
pub struct NetworkFaults {
    pub drop_ppm: u32,
    pub duplicate_ppm: u32,
    pub delay_min_ns: Nanos,
    pub delay_max_ns: Nanos,
}

impl NetworkFaults {
    /// Swarm testing: every seed draws its own fault mix, so some seeds are calm and some are
    /// brutal, and rare interleavings get their turn.
    pub fn random(rng: &mut ChaCha8Rng) -> Self {
        let drop_ppm = [0, 1_000, 10_000, 50_000, 100_000][rng.gen_range(0..5)];
        let duplicate_ppm = [0, 1_000, 20_000, 50_000][rng.gen_range(0..4)];
        let delay_min_ns = rng.gen_range(50..=1_000) * NS_PER_US;
        // Some seeds have messages delayed for as long as an election timeout (a congested
        // or re-routed WAN link): heartbeats arrive after the follower gave up on them.
        let spread_max_us = if rng.gen_bool(0.1) { 400_000 } else { 20_000 };
        let delay_max_ns = delay_min_ns + rng.gen_range(100..=spread_max_us) * NS_PER_US;
        NetworkFaults {
            drop_ppm,
            duplicate_ppm,
            delay_min_ns,
            delay_max_ns,
        }
    }

    /// The network after healing: no drops or duplicates, and delays back under 20 ms (a
    /// link congested for as long as an election timeout recovers).
    pub fn calm(&self) -> Self {
        NetworkFaults {
            drop_ppm: 0,
            duplicate_ppm: 0,
            delay_max_ns: self
                .delay_max_ns
                .min(self.delay_min_ns + 20_000 * NS_PER_US),
            ..self.clone()
        }
    }
}

/// Which directed replica-to-replica links are cut. Clients are never partitioned, so a
/// partitioned old leader still hears from clients (the situation stale reads come from).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Partition {
    blocked: Vec<(ReplicaId, ReplicaId)>,
    /// Directed links that work but add this much delay to every message (a congested or
    /// re-routed path), on top of the seed's delay range.
    slowed: Vec<(ReplicaId, ReplicaId, Nanos)>,
}

/// Who plays which part in a leader-handoff partition (`Partition::handoff_first_half`).
#[derive(Clone, Debug)]
pub struct Handoff {
    pub replicas: u32,
    pub old: ReplicaId,
    pub bridge: ReplicaId,
    pub turncoat: ReplicaId,
    pub to_bridge_ns: Nanos,
    pub new_to_bridge_ns: Nanos,
    pub back_ns: Nanos,
}

impl Handoff {
    /// Roles for a handoff away from `old` (at least five replicas: old leader, bridge,
    /// turncoat, and two more to elect the new leader).
    pub fn random(
        rng: &mut ChaCha8Rng,
        replicas: u32,
        old: ReplicaId,
        heartbeat_ns: Nanos,
        timeout_ns: Nanos,
    ) -> Self {
        assert!(replicas >= 5);
        let mut others: Vec<ReplicaId> = (0..replicas).filter(|r| *r != old).collect();
        let bridge = others.swap_remove(rng.gen_range(0..others.len()));
        let turncoat = others.swap_remove(rng.gen_range(0..others.len()));
        Handoff {
            replicas,
            old,
            bridge,
            turncoat,
            to_bridge_ns: rng.gen_range(0..=heartbeat_ns),
            new_to_bridge_ns: rng.gen_range(0..=2 * heartbeat_ns),
            back_ns: rng.gen_range(timeout_ns / 2..=timeout_ns * 9 / 10),
        }
    }

    /// Everyone but the old leader and its bridge.
    fn others(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        (0..self.replicas).filter(|r| *r != self.old && *r != self.bridge)
    }
}

impl Partition {
    pub fn none() -> Self {
        Partition::default()
    }

    /// One directed link slowed by `extra` (quorum leases: a holder being removed hears the
    /// leader late, so it may still read on its grants after the others applied the change).
    pub fn slow_link(from: ReplicaId, to: ReplicaId, extra: Nanos) -> Self {
        Partition {
            blocked: Vec::new(),
            slowed: vec![(from, to, extra)],
        }
    }

    pub fn blocks(&self, from: ReplicaId, to: ReplicaId) -> bool {
        from != to && self.blocked.contains(&(from, to))
    }

    /// The extra delay of the link `from` → `to` (zero unless it is slowed).
    pub fn extra_delay(&self, from: ReplicaId, to: ReplicaId) -> Nanos {
        self.slowed
            .iter()
            .find(|(a, b, _)| (*a, *b) == (from, to))
            .map_or(0, |(_, _, extra)| *extra)
    }

    /// The first half of a leader handoff gone wrong (Jepsen-style targeted adversary, aimed
    /// at lease stickiness: hole 3 of the node issue). The leader `old` stops reaching everyone
    /// but its *bridge*, over a link slowed by `to_bridge_ns` (so later its heartbeats reach the
    /// bridge after a new leader's); the answers to it come back slowed by `back_ns` (so it
    /// keeps counting a quorum, and leading, for a while after the others stopped hearing it).
    /// The rest elect a new leader; `handoff_second_half` follows once they have.
    pub fn handoff_first_half(roles: &Handoff) -> Self {
        let mut partition = Partition::handoff_slow_answers(roles);
        partition
            .slowed
            .push((roles.old, roles.bridge, roles.to_bridge_ns));
        for other in roles.others() {
            partition.blocked.push((roles.old, other));
        }
        partition
    }

    /// What comes just before the first half: every answer to the leader `old` is slowed by
    /// `back_ns`, so the acks of its last heartbeats before the cut arrive late and it keeps
    /// counting a quorum for that long after the others stopped hearing it.
    pub fn handoff_slow_answers(roles: &Handoff) -> Self {
        Partition {
            blocked: Vec::new(),
            slowed: (0..roles.replicas)
                .filter(|r| *r != roles.old)
                .map(|r| (r, roles.old, roles.back_ns))
                .collect(),
        }
    }

    /// The second half, once `new` leads while `old` still does: the two are cut apart and
    /// `old` from everyone but its bridge (still slowed) and its *turncoat*, which it reaches
    /// both ways again while the new leader's messages to the turncoat are lost (so the
    /// turncoat, which promised the new ballot, rejects the old leader, and may promise the old
    /// leader's next ballot without ever having heard the new one lead).
    pub fn handoff_second_half(roles: &Handoff, new: ReplicaId) -> Self {
        let mut blocked = vec![(roles.old, new), (new, roles.old)];
        for other in roles.others().filter(|r| *r != roles.turncoat && *r != new) {
            blocked.push((roles.old, other));
            blocked.push((other, roles.old));
        }
        blocked.push((new, roles.turncoat));
        Partition {
            blocked,
            // The link between the new leader and the bridge is slow both ways: how long the
            // new leader goes on counting the bridge's earlier acks (its lease) after the
            // bridge moved on.
            slowed: vec![
                (roles.old, roles.bridge, roles.to_bridge_ns),
                (new, roles.bridge, roles.new_to_bridge_ns),
                (roles.bridge, new, roles.new_to_bridge_ns),
            ],
        }
    }

    /// Jepsen's "bridge" around the leader: `leader` keeps one link (to `bridge`), the rest
    /// of the cluster keeps its links except for some random one-way cuts. The rest elects a
    /// new leader while the old one, still reaching the bridge, has not yet noticed: two
    /// leaders overlap, both speak to the bridge, and some replicas hear only one of them
    /// (the situation lease stickiness must get right, hole 3 of the node issue).
    pub fn bridge(rng: &mut ChaCha8Rng, replicas: u32, leader: ReplicaId) -> Self {
        let mut blocked = Vec::new();
        let others: Vec<ReplicaId> = (0..replicas).filter(|r| *r != leader).collect();
        let bridge = others[rng.gen_range(0..others.len())];
        for other in others.iter().copied().filter(|r| *r != bridge) {
            blocked.push((leader, other));
            blocked.push((other, leader));
        }
        for a in others.iter().copied() {
            for b in others.iter().copied() {
                if a != b && rng.gen_bool(0.15) {
                    blocked.push((a, b));
                }
            }
        }
        Partition {
            blocked,
            slowed: Vec::new(),
        }
    }

    /// Two or more replicas that each believe they lead are cut apart; every other replica
    /// hears each of them, or answers each of them, with probability 0.7 (so some links
    /// work one way only, and some replicas hear only one leader).
    pub fn between_leaders(rng: &mut ChaCha8Rng, replicas: u32, leaders: &[ReplicaId]) -> Self {
        let mut blocked = Vec::new();
        for a in leaders.iter().copied() {
            for b in leaders.iter().copied().filter(|b| *b != a) {
                blocked.push((a, b));
            }
            for other in (0..replicas).filter(|r| !leaders.contains(r)) {
                if rng.gen_bool(0.3) {
                    blocked.push((a, other));
                }
                if rng.gen_bool(0.3) {
                    blocked.push((other, a));
                }
            }
        }
        Partition {
            blocked,
            slowed: Vec::new(),
        }
    }

    /// A random partition: one replica isolated, a two-sided split, or random one-way cuts.
    pub fn random(rng: &mut ChaCha8Rng, replicas: u32) -> Self {
        let mut blocked = Vec::new();
        match rng.gen_range(0..3) {
            0 => {
                let isolated = rng.gen_range(0..replicas);
                for other in (0..replicas).filter(|r| *r != isolated) {
                    blocked.push((isolated, other));
                    blocked.push((other, isolated));
                }
            }
            1 => {
                let side: Vec<bool> = (0..replicas).map(|_| rng.gen_bool(0.5)).collect();
                for a in 0..replicas {
                    for b in 0..replicas {
                        if side[a as usize] != side[b as usize] {
                            blocked.push((a, b));
                        }
                    }
                }
            }
            _ => {
                for a in 0..replicas {
                    for b in 0..replicas {
                        if a != b && rng.gen_bool(0.3) {
                            blocked.push((a, b));
                        }
                    }
                }
            }
        }
        Partition {
            blocked,
            slowed: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn handoff_halves_cut_what_they_say() {
        for seed in 0..200 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let roles = Handoff::random(&mut rng, 5, 2, 20_000_000, 150_000_000);
            let (old, bridge, turncoat) = (roles.old, roles.bridge, roles.turncoat);
            assert!(old != bridge && old != turncoat && bridge != turncoat);
            let first = Partition::handoff_first_half(&roles);
            for r in (0..5).filter(|r| *r != old) {
                // Everyone still answers the old leader (slowly); only the bridge hears it.
                assert!(!first.blocks(r, old));
                assert!(first.extra_delay(r, old) >= 75_000_000);
                assert_eq!(first.blocks(old, r), r != bridge);
            }
            let new = (0..5)
                .find(|r| ![old, bridge, turncoat].contains(r))
                .unwrap();
            let second = Partition::handoff_second_half(&roles, new);
            assert!(second.blocks(old, new) && second.blocks(new, old));
            assert!(!second.blocks(old, turncoat) && !second.blocks(turncoat, old));
            assert!(second.blocks(new, turncoat) && !second.blocks(turncoat, new));
            assert!(!second.blocks(old, bridge) && !second.blocks(new, bridge));
            let rest = (0..5)
                .find(|r| ![old, bridge, turncoat, new].contains(r))
                .unwrap();
            assert!(second.blocks(old, rest) && second.blocks(rest, old));
            assert!(!second.blocks(new, rest));
        }
    }
}
