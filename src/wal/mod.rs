//! The durable write-ahead log of one Paxos group (architecture §7, `docs/internals/wal.md`).
//!
//! Owns: the group's data directory (superblock, preallocated segments, snapshots), group
//! commit, ordering of durable write ids, and recovery. It stores generic entries
//! `{slot range, ballot, body}` and knows nothing of the protocol's messages.
//!
//! The caller's loop (a mio loop in the runtime):
//! 1. `Wal::open` → [`Recovered`] (superblock state, newest snapshot, verified entries);
//! 2. register [`Wal::eventfd`] for readability;
//! 3. `append` / `set_superblock` return a [`WriteId`] at once;
//! 4. when the eventfd is readable, call [`Wal::poll_completions`]: it yields durable write
//!    ids in increasing order; only then may messages that depend on them go out.

pub mod backend;
pub mod buf;
pub mod check_disk;
pub mod cli;
pub mod error;
pub mod files;
pub mod format;
pub mod scan;
pub mod snapshot;
pub mod superblock;
mod writer;

#[cfg(test)]
mod tests;

pub use backend::{BackendChoice, BackendKind, UringSync};
pub use error::WalError;
pub use files::DirectIo;
pub use format::{Ballot, Entry, SuperState};
pub use scan::{Corruption, Fault, OnCorruption, RecoveredEntry, TornTail};
pub use snapshot::Snapshot;
pub use writer::Wal;

use std::path::PathBuf;

/// Identifies one `append` or `set_superblock` call. Ids increase by one per call and become
/// durable in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// Configuration of one group's WAL. Every queue and size has a limit.
#[derive(Clone, Debug)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub cluster_id: u64,
    pub group: u32,
    pub backend: BackendChoice,
    pub uring_sync: UringSync,
    pub direct_io: DirectIo,
    /// Bytes per segment file (preallocated, zero-filled). A multiple of 4 KiB.
    pub segment_bytes: u64,
    /// Largest entry body.
    pub max_entry_bytes: u32,
    /// Largest group-commit batch (one write), headers and padding included.
    pub max_batch_bytes: u32,
    /// Write ids that may wait for the disk at once; past it `append` returns
    /// [`WalError::Backpressure`].
    pub max_pending_writes: u32,
    pub on_corruption: OnCorruption,
    /// Test hooks that simulate environments we cannot create on demand.
    #[doc(hidden)]
    pub inject: InjectFaults,
}

#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectFaults {
    /// Make io_uring setup fail with this errno.
    pub uring_errno: Option<i32>,
    /// Make the O_DIRECT probe fail as on a filesystem without it.
    pub no_direct_io: bool,
}

impl WalConfig {
    pub fn new(dir: impl Into<PathBuf>, cluster_id: u64, group: u32) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            cluster_id,
            group,
            backend: BackendChoice::Auto,
            uring_sync: UringSync::RwfDsync,
            direct_io: DirectIo::Auto,
            segment_bytes: 64 << 20,
            max_entry_bytes: 1 << 20,
            max_batch_bytes: 4 << 20,
            max_pending_writes: 4096,
            on_corruption: OnCorruption::Refuse,
            inject: InjectFaults::default(),
        }
    }
}

/// What `Wal::open` found.
#[derive(Debug)]
pub struct Recovered {
    /// Promised ballot and the caller's small state.
    pub superblock: SuperState,
    /// The newest snapshot that verifies, if any.
    pub snapshot: Option<Snapshot>,
    /// Verified entries in log order above the snapshot's slot (those at or below it are
    /// verified and chained, but not returned).
    pub entries: Vec<RecoveredEntry>,
    pub report: RecoveryReport,
}

/// How recovery went: which backend runs, and anything suspicious it found.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    /// The data directory was empty and has been initialised.
    pub fresh: bool,
    /// A torn last batch (never acknowledged) that was dropped.
    pub torn_tail: Option<TornTail>,
    /// Damaged regions that may have held acknowledged entries (only with
    /// [`OnCorruption::Report`]; otherwise `open` fails). Repair their slots from peers.
    pub corruptions: Vec<Corruption>,
    /// Other findings, one sentence each (a damaged superblock copy, a skipped snapshot).
    pub notes: Vec<String>,
    pub backend: Option<BackendKind>,
    pub backend_reason: String,
    pub direct_io: bool,
    /// Log entries recovery verified (the returned ones and those below the snapshot).
    pub entries_scanned: u64,
    /// Bytes of segment files it read.
    pub bytes_scanned: u64,
}
