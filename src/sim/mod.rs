//! The deterministic simulator (our VOPR): N replicas of the real protocol + kv code, simulated
//! clients, network, disks and clocks, all driven from one seed.
//!
//! A run has a fault phase (message drops, duplicates, reordering by random delay, symmetric and
//! asymmetric partitions, crashes that lose every write not yet durable, restarts, clock drift)
//! and then a heal phase (no more faults, every replica up) in which every pending client
//! operation must complete and the replicas must converge. The checks, each a hard failure:
//!
//! - (a) agreement: never two different values chosen for one slot — both as learned by any
//!   replica and as counted from the acceptors' actual votes;
//! - (b) every replica applies the chosen values in slot order, without gaps (so its applied log
//!   is a prefix of the longest one);
//! - (c) the client history is linearizable (`check`);
//! - (d) no acknowledged write is lost across crashes;
//! - (e) liveness: after healing, every operation completes within a bounded simulated time;
//! - (f) replicas' kv states are equal after convergence.
//!
//! Everything that happens is folded into a trace hash: the same seed gives the same hash.

mod disk;
mod network;
mod runner;
mod world;

pub use runner::{run_range, RangeSummary, SeedRange};
pub use world::{run, SimConfig, SimOutcome, SimStats, Violation};

use crate::protocol::InjectedBug;

/// The one command that replays a seed.
pub fn replay_command(replicas: u32, seed: u64, bug: Option<InjectedBug>) -> String {
    let mut cmd = format!("mpaxos sim --replicas {replicas} --seeds 1 --seed {seed}");
    if let Some(bug) = bug {
        cmd.push_str(&format!(" --inject-bug {}", bug.name()));
    }
    cmd
}
