//! One pinned thread per Paxos group (architecture §2): a mio loop that drives `protocol`, `kv`,
//! the WAL and the group's sockets. `docs/internals/runtime.md` describes the loop.
//!
//! Owns nothing but the wiring: the protocol decides, the WAL persists, `net` frames bytes.

pub mod anatomy;
mod conn;
pub mod disk;
pub mod group;
pub mod metrics;
pub mod node;
pub mod storage;

use std::sync::atomic::{AtomicBool, AtomicU32};

pub use group::{spawn, GroupHandle, GroupSpec};
pub use metrics::GroupMetrics;

/// "No leader known" in [`Shared::leaders`].
pub const NO_LEADER: u32 = u32::MAX;

/// The little state a replica's group threads share: atomics each written by one owner.
pub struct Shared {
    /// Per group: the leader its thread believes in, or [`NO_LEADER`].
    pub leaders: Vec<AtomicU32>,
    /// Per group: recovered, listening and running.
    pub ready: Vec<AtomicBool>,
    /// Per group: false once its WAL failed.
    pub healthy: Vec<AtomicBool>,
    /// Set once to stop every group thread (then wake them).
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new(groups: u32) -> Shared {
        Shared {
            leaders: (0..groups).map(|_| AtomicU32::new(NO_LEADER)).collect(),
            ready: (0..groups).map(|_| AtomicBool::new(false)).collect(),
            healthy: (0..groups).map(|_| AtomicBool::new(false)).collect(),
            stop: AtomicBool::new(false),
        }
    }
}
