//! Write backends: how sector-aligned buffers reach the disk durably.
//!
//! Owns: submitting writes and reporting their completions through an eventfd that a mio loop
//! can register. A backend knows nothing of entries or recovery; the [`crate::wal::Wal`] keeps
//! ordering and decides what to write. Every completed write is durable (written and
//! data-synced) unless the backend is `memory`.

mod memory;
mod sync;
mod uring;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

pub use memory::MemoryBackend;
pub use sync::SyncBackend;
pub use uring::{UringBackend, UringSync};

use super::buf::AlignedBuf;

/// Which backend to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// io_uring if it can be set up here, else `sync` (with one log line saying why).
    #[default]
    Auto,
    Uring,
    Sync,
    /// No durability at all: for benchmarks of everything above the disk.
    Memory,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" => Ok(BackendChoice::Uring),
            "sync" => Ok(BackendChoice::Sync),
            "memory" => Ok(BackendChoice::Memory),
            other => Err(format!(
                "unknown WAL backend {other:?}; use auto, uring, sync or memory"
            )),
        }
    }
}

/// The backend actually running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Uring,
    Sync,
    Memory,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "uring",
            BackendKind::Sync => "sync",
            BackendKind::Memory => "memory",
        })
    }
}

/// One durable write: `buf` (whole sectors) at `offset` of `file`.
pub struct WriteOp {
    pub token: u64,
    pub file: Arc<File>,
    pub offset: u64,
    pub buf: AlignedBuf,
}

/// A finished write; the buffer comes back for reuse.
pub struct Completion {
    pub token: u64,
    pub buf: AlignedBuf,
    pub result: io::Result<()>,
}

/// A write backend. At most `queue_depth` writes may be in flight.
pub trait Backend: Send {
    fn kind(&self) -> BackendKind;
    /// Starts a write. Fails only when the backend itself failed (not for I/O errors of the
    /// write, which come back in its [`Completion`]).
    fn submit(&mut self, op: WriteOp) -> io::Result<()>;
    /// Moves finished writes into `out`. Call whenever [`Backend::eventfd`] is readable; it
    /// clears the eventfd first, so no completion is missed.
    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()>;
    /// Becomes readable when completions are ready.
    fn eventfd(&self) -> RawFd;
    fn in_flight(&self) -> usize;
}

/// A non-blocking eventfd owned by a backend.
pub struct EventFd {
    file: File,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall; the returned fd is owned by the File below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(EventFd {
            file: unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        })
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd. EAGAIN (counter saturated)
        // still leaves it readable, which is all we need.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter; returns whether it was signalled.
    pub fn drain(&self) -> bool {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64; non-blocking.
        let n = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        n == 8
    }

    /// Blocks until readable or `timeout_ms` passes (-1: forever).
    pub fn wait(&self, timeout_ms: i32) -> io::Result<()> {
        wait_readable(self.fd(), timeout_ms)
    }
}

/// Blocks until `fd` is readable or `timeout_ms` passes (-1: forever).
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The outcome of choosing a backend: what runs and why.
pub struct Chosen {
    pub backend: Box<dyn Backend>,
    pub reason: String,
}

/// Sets up the backend `choice` asks for. `auto` probes io_uring and falls back to `sync`,
/// logging one line that says why. `inject_uring_errno` makes the probe fail (tests).
pub fn choose(
    choice: BackendChoice,
    queue_depth: u32,
    uring_sync: UringSync,
    inject_uring_errno: Option<i32>,
) -> Result<Chosen, io::Error> {
    let uring = || match inject_uring_errno {
        Some(e) => Err(io::Error::from_raw_os_error(e)),
        None => UringBackend::new(queue_depth, uring_sync),
    };
    match choice {
        BackendChoice::Memory => Ok(Chosen {
            backend: Box::new(MemoryBackend::new()?),
            reason: "memory backend requested (no durability)".into(),
        }),
        BackendChoice::Sync => Ok(Chosen {
            backend: Box::new(SyncBackend::new(queue_depth)?),
            reason: "sync backend requested".into(),
        }),
        BackendChoice::Uring => Ok(Chosen {
            backend: Box::new(uring()?),
            reason: "uring backend requested".into(),
        }),
        BackendChoice::Auto => match uring() {
            Ok(b) => Ok(Chosen {
                backend: Box::new(b),
                reason: "auto: io_uring is available".into(),
            }),
            Err(e) => {
                let reason = format!(
                    "auto: io_uring unavailable ({}), using the sync backend",
                    uring_refusal_hint(&e)
                );
                tracing::warn!("{reason}");
                Ok(Chosen {
                    backend: Box::new(SyncBackend::new(queue_depth)?),
                    reason,
                })
            }
        },
    }
}

/// Explains an io_uring setup error in terms of what the operator can change.
pub fn uring_refusal_hint(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!("{e}: the kernel has no io_uring"),
        Some(libc::EPERM) => format!(
            "{e}: io_uring is disabled (sysctl kernel.io_uring_disabled, seccomp or a container)"
        ),
        Some(libc::ENOMEM) => format!("{e}: locked-memory limit too low (raise ulimit -l)"),
        _ => e.to_string(),
    }
}
