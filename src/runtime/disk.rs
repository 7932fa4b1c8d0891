//! The WAL's interface as the node sees it, so the server runs the real [`Wal`] behind it and
//! the simulator runs a fault-injecting model of a disk (`sim::disk`) behind the very same
//! calls.
//!
//! The contract is the WAL's own (see `crate::wal`): `append` and `set_superblock` return a
//! write id at once or push back ([`WalError::Backpressure`]); ids become durable in order and
//! `poll_completions` reports them; any other error is fatal to the group.

use crate::wal::{self, SuperState, Wal, WalError};

pub trait Disk {
    /// Appends entries as one group-commit write; see [`Wal::append`].
    fn append(&mut self, entries: &[wal::Entry<'_>]) -> Result<wal::WriteId, WalError>;
    /// Replaces the superblock state; see [`Wal::set_superblock`].
    fn set_superblock(&mut self, state: SuperState) -> Result<wal::WriteId, WalError>;
    /// Moves newly durable write ids (increasing) into `out`.
    fn poll_completions(&mut self, out: &mut Vec<wal::WriteId>) -> Result<(), WalError>;
    /// Blocks until everything handed over is durable (clean shutdown).
    fn flush(&mut self) -> Result<(), WalError>;
    /// The largest entry body and the largest append (entry headers included), bytes.
    fn limits(&self) -> DiskLimits;
    /// A short name for status and logs ("uring", "sync", "memory", "sim").
    fn backend_name(&self) -> String;
    /// Starts writing a snapshot of the state machine at `slot` durably, without waiting for
    /// it; see [`Wal::start_snapshot`] (which also encodes it off the caller's thread). One at
    /// a time.
    fn start_snapshot(&mut self, slot: u64, data: SnapshotData) -> Result<(), WalError>;
    /// The slot and bytes of the snapshot write that became durable since the last call, if
    /// any.
    fn poll_snapshot(&mut self) -> Result<Option<(u64, bytes::Bytes)>, WalError>;
    /// A snapshot at `slot` is durable: release the log that holds nothing above it; returns
    /// the number of segments released. The WAL removes their files on its reclaimer thread
    /// ([`Wal::release_segments_in_background`]).
    fn release_log(&mut self, slot: u64) -> Result<usize, WalError>;
    /// Bytes of written log a restart would read now (from the first retained segment to the
    /// end of the last write); 0 where that means nothing (memory, simulated disks).
    fn retained_bytes(&self) -> u64;
    /// Frees memory the caller is done with (released log entries), off the caller's thread
    /// where the disk has one.
    fn free(&mut self, garbage: Box<dyn Send>);
}

/// A snapshot's bytes, or how to make them. The kv state is taken on the group's thread (a scan
/// of the key table, no serialization) and serialized by the disk, on the thread that writes
/// it where the disk has one: serializing ~100,000 keys (12 MB) on the group's thread stopped
/// every replica at once for 50–250 ms, past the election timeout (results/anatomy.md).
pub enum SnapshotData {
    Bytes(bytes::Bytes),
    Encode(Box<dyn FnOnce() -> bytes::Bytes + Send>),
}

impl SnapshotData {
    pub fn into_bytes(self) -> bytes::Bytes {
        match self {
            SnapshotData::Bytes(b) => b,
            SnapshotData::Encode(f) => f(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLimits {
    pub entry_bytes_max: usize,
    pub append_bytes_max: usize,
}

impl Disk for Wal {
    fn append(&mut self, entries: &[wal::Entry<'_>]) -> Result<wal::WriteId, WalError> {
        Wal::append(self, entries)
    }

    fn set_superblock(&mut self, state: SuperState) -> Result<wal::WriteId, WalError> {
        Wal::set_superblock(self, state)
    }

    fn poll_completions(&mut self, out: &mut Vec<wal::WriteId>) -> Result<(), WalError> {
        Wal::poll_completions(self, out)
    }

    fn flush(&mut self) -> Result<(), WalError> {
        Wal::flush(self)
    }

    fn limits(&self) -> DiskLimits {
        let cfg = self.config();
        DiskLimits {
            entry_bytes_max: cfg.max_entry_bytes as usize,
            append_bytes_max: cfg.max_batch_bytes as usize,
        }
    }

    fn backend_name(&self) -> String {
        self.backend_kind().to_string()
    }

    fn start_snapshot(&mut self, slot: u64, data: SnapshotData) -> Result<(), WalError> {
        Wal::start_snapshot(self, slot, move || data.into_bytes())
    }

    fn poll_snapshot(&mut self) -> Result<Option<(u64, bytes::Bytes)>, WalError> {
        Wal::poll_snapshot(self)
    }

    fn release_log(&mut self, slot: u64) -> Result<usize, WalError> {
        Wal::release_segments_in_background(self, slot)
    }

    fn retained_bytes(&self) -> u64 {
        Wal::retained_bytes(self)
    }

    fn free(&mut self, garbage: Box<dyn Send>) {
        self.free_in_background(garbage);
    }
}
