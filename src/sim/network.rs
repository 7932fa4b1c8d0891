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
}

impl Partition {
    pub fn none() -> Self {
        Partition::default()
    }

    pub fn blocks(&self, from: ReplicaId, to: ReplicaId) -> bool {
        from != to && self.blocked.contains(&(from, to))
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
        Partition { blocked }
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
        Partition { blocked }
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
        Partition { blocked }
    }
}
