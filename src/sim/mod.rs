//! The deterministic simulator (our VOPR): N hosts running the server's own node code
//! (`runtime::node`: protocol, kv, the storage mapping onto the WAL, waiting clients) over a
//! simulated network, simulated clocks and a simulated disk behind the WAL's interface, with
//! simulated clients, all driven from one seed.
//!
//! A run has a fault phase and then a heal phase (no more faults, every replica up) in which
//! every pending client operation must complete and the replicas must converge. Each seed
//! draws its own fault mix (swarm testing) from: message drops, duplicates, reordering by
//! random delay (in some seeds delays as long as an election timeout), symmetric and one-way
//! partitions; crashes of one replica, a majority or the whole cluster, losing every write
//! not yet durable except a random prefix that reached the platter unreported; SIGSTOP-like
//! pauses (input queues up and is read, connections interleaved, before the overdue timers
//! run); disk latency, stalls of 100 ms – 2 s, ENOSPC and EIO (the node must stop, never ack a
//! lost write; healing restarts it); clock offsets and rate drift up to the configured bound;
//! values up to the 1 MiB limit; logs of 100k+ slots or 70 MiB on disk at start; and, in a
//! quarter of the seeds, exactly the configuration the server ships for a preferred leader.
//! The checks, each a hard failure:
//!
//! - (a) agreement: never two different values chosen for one slot — both as learned by any
//!   replica and as counted from the acceptors' actual votes;
//! - (b) every replica applies the chosen values in slot order, without gaps (so its applied log
//!   is a prefix of the longest one);
//! - (c) the client history is linearizable (`check`);
//! - (d) no acknowledged write is lost across crashes;
//! - (e) liveness: after healing, every operation completes within a bounded simulated time;
//! - (f) replicas' kv states are equal after convergence;
//! - (g) no peer message exceeds the 64 MiB frame limit (the server could not send it);
//! - (h) no node stops for any reason but an injected disk fault.
//!
//! Everything that happens is folded into a trace hash: the same seed gives the same hash.

pub(crate) mod disk;
mod network;
mod runner;
mod world;

pub use runner::{run_range, RangeSummary, SeedRange};
pub use world::{
    run, run_with_event_log, SimConfig, SimOutcome, SimStats, Violation, EVENT_LOG_LINE_MAX,
};

/// The one command that replays a seed of `range`: every flag that changes what a seed runs.
pub fn replay_command(range: &SeedRange, seed: u64) -> String {
    let mut cmd = format!(
        "mpaxos sim --replicas {} --seeds 1 --seed {seed}",
        range.replicas
    );
    if let Some(bug) = range.inject_bug {
        cmd.push_str(&format!(" --inject-bug {}", bug.name()));
    }
    if range.quorum_leases {
        cmd.push_str(" --quorum-leases");
    }
    if let Some(protocol) = range.protocol {
        cmd.push_str(&format!(" --protocol {protocol}"));
    }
    cmd
}
