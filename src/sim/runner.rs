//! Runs many seeds (in parallel, each one deterministic) and reports violations with the one
//! command that replays each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::world::{run, SimConfig, SimOutcome};
use crate::protocol::InjectedBug;

#[derive(Clone, Debug)]
pub struct SeedRange {
    pub replicas: u32,
    pub first_seed: u64,
    pub seeds: u64,
    pub inject_bug: Option<InjectedBug>,
    /// Every seed with quorum leases (`SimConfig::quorum_leases`).
    pub quorum_leases: bool,
    /// Every seed with this protocol (`SimConfig::protocol`).
    pub protocol: Option<crate::protocol::ProtocolMode>,
    /// Worker threads; seeds are independent, so this changes nothing but the wall time.
    pub jobs: usize,
}

#[derive(Clone, Debug, Default)]
pub struct RangeSummary {
    pub seeds: u64,
    /// Seeds with at least one violation, in seed order.
    pub failed: Vec<SimOutcome>,
    pub ops_completed: u64,
    pub slots_committed: u64,
    pub crashes: u64,
    pub cluster_crashes: u64,
    pub pauses: u64,
    pub disk_stalls: u64,
    pub disk_errors: u64,
    /// Seeds run with quorum leases, and linearizable reads answered by non-leaders.
    pub quorum_lease_seeds: u64,
    pub follower_reads: u64,
    /// Partitions struck while two leaders overlapped, and how many were leader handoffs.
    pub leader_splits: u64,
    pub handoffs: u64,
    pub handoff_second_halves: u64,
    /// Seeds run with Fast Paxos, and their slots chosen by fast quorums (counted per
    /// learner) and recovered after collisions.
    pub fast_paxos_seeds: u64,
    pub fast_chosen: u64,
    pub fast_collisions: u64,
    /// Fast Paxos client proposals held until their deadline, and voted past it.
    pub fast_held: u64,
    pub fast_late: u64,
    /// Snapshots made durable, and installed from a peer (transfers completed).
    pub snapshots: u64,
    pub snapshots_installed: u64,
    /// Quorum leases: lease configuration changes the workload proposed.
    pub lease_config_changes: u64,
}

impl RangeSummary {
    pub fn violations(&self) -> usize {
        self.failed.len()
    }

    /// Counts one seed's outcome in (keeping it if it failed). `seeds` is the caller's.
    pub fn add(&mut self, outcome: SimOutcome) {
        let s = self;
        s.ops_completed += outcome.stats.ops_completed;
        s.slots_committed += outcome.stats.slots_committed;
        s.crashes += outcome.stats.crashes;
        s.cluster_crashes += outcome.stats.cluster_crashes;
        s.pauses += outcome.stats.pauses;
        s.follower_reads += outcome.stats.follower_reads;
        s.leader_splits += outcome.stats.leader_splits;
        s.handoffs += outcome.stats.handoffs;
        s.handoff_second_halves += outcome.stats.handoff_second_halves;
        s.snapshots += outcome.stats.snapshots;
        s.snapshots_installed += outcome.stats.snapshots_installed;
        s.lease_config_changes += outcome.stats.lease_config_changes;
        if outcome.quorum_leases {
            s.quorum_lease_seeds += 1;
        }
        if outcome.fast_paxos {
            s.fast_paxos_seeds += 1;
        }
        s.fast_chosen += outcome.stats.fast_chosen;
        s.fast_collisions += outcome.stats.fast_collisions;
        s.fast_held += outcome.stats.fast_held;
        s.fast_late += outcome.stats.fast_late;
        s.disk_stalls += outcome.stats.disk_stalls;
        s.disk_errors += outcome.stats.disk_errors;
        if !outcome.violations.is_empty() {
            s.failed.push(outcome);
        }
    }
}

/// Runs every seed of the range; `on_failure` sees each failing seed as soon as it is found.
pub fn run_range(range: &SeedRange, on_failure: &(dyn Fn(&SimOutcome) + Sync)) -> RangeSummary {
    let next = AtomicU64::new(0);
    let summary = Mutex::new(RangeSummary {
        seeds: range.seeds,
        ..Default::default()
    });
    std::thread::scope(|scope| {
        for _ in 0..range.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= range.seeds {
                    return;
                }
                let outcome = run(&SimConfig {
                    replicas: range.replicas,
                    seed: range.first_seed + i,
                    inject_bug: range.inject_bug,
                    quorum_leases: range.quorum_leases,
                    protocol: range.protocol,
                });
                if !outcome.violations.is_empty() {
                    on_failure(&outcome);
                }
                summary.lock().expect("no worker panicked").add(outcome);
            });
        }
    });
    let mut summary = summary.into_inner().expect("no worker panicked");
    summary.failed.sort_by_key(|o| o.seed);
    summary
}
