//! Errors a WAL user can hit. Each message is one sentence that says what to do.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot use data directory {dir}: {source}; check that the path exists, is a directory, and is readable and writable by this user")]
    DataDir { dir: PathBuf, source: io::Error },

    #[error("the disk holding {path} is full; free space on it (or take a snapshot to release old WAL segments) and restart this replica")]
    DiskFull { path: PathBuf },

    #[error("the filesystem of {dir} does not support O_DIRECT (tmpfs or a network filesystem?); put the data directory on ext4 or xfs, or set direct_io to auto or off")]
    DirectIoUnsupported { dir: PathBuf },

    #[error("io_uring is unavailable ({reason}); use the sync or auto WAL backend")]
    UringUnavailable { reason: String },

    #[error("data directory {dir} belongs to cluster {found_cluster:#x} group {found_group}, not cluster {cluster:#x} group {group}; point this replica at its own data directory, or empty this one to start fresh")]
    Foreign {
        dir: PathBuf,
        found_cluster: u64,
        found_group: u32,
        cluster: u64,
        group: u32,
    },

    #[error("the WAL in {dir} holds a segment of {found} bytes among segments of {configured}: its files come from different logs, or that header is damaged; move the odd segment aside only if its slots are below the newest snapshot, else restore this replica from its peers")]
    SegmentSize {
        dir: PathBuf,
        found: u64,
        configured: u64,
    },

    #[error("the WAL in {dir} is damaged where acknowledged entries may be ({detail}); restore this replica from its peers (empty its data directory and restart) or open it with on_corruption = report to repair the listed slots from peers")]
    Corrupt { dir: PathBuf, detail: String },

    #[error("the superblock in {dir} cannot be trusted ({detail}); the promised ballot may be lost, so restore this replica from its peers by emptying its data directory and restarting")]
    SuperblockCorrupt { dir: PathBuf, detail: String },

    #[error("{what} exceeds its limit of {limit}; split the write or raise the limit in the WAL configuration")]
    Limit { what: String, limit: u64 },

    #[error("the WAL has {pending} writes waiting for the disk; call poll_completions and retry once some are durable")]
    Backpressure { pending: usize },

    #[error("invalid WAL configuration: {0}")]
    Config(String),

    #[error("invalid entry: {0}")]
    InvalidEntry(String),

    #[error("the WAL stopped after a failed write ({0}); fix the disk and restart this replica, which recovers from what is durable")]
    Stopped(String),

    #[error("{context}: {source}; check the disk and the data directory")]
    Io { context: String, source: io::Error },
}

impl WalError {
    /// Wraps an I/O error, turning ENOSPC/EDQUOT into [`WalError::DiskFull`].
    pub fn io(context: impl Into<String>, path: &std::path::Path, source: io::Error) -> WalError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => WalError::DiskFull {
                path: path.to_path_buf(),
            },
            _ => WalError::Io {
                context: context.into(),
                source,
            },
        }
    }
}
