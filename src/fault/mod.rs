//! Test-only fault injection on real server processes: a replica's clock (offset and rate) and
//! its WAL (stall, EIO, ENOSPC, an fsync that lies), driven from outside through a control
//! file in the replica's data directory. `mpaxos chaos` writes the file; the server reads it.
//!
//! The server side (`clock`, `disk`, `watch`) exists only with the cargo feature
//! `fault-injection`, which no default build has: `cargo build --features fault-injection`.
//! Without it the server never looks at the control file. This module's always-compiled part is
//! the file's format, so a chaos run can tell what it asked for even from a binary without the
//! feature (it then skips the clock and disk nemeses with a printed reason).
//! `docs/internals/chaos.md` §3.5 describes the faults and what each is expected to do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[cfg(feature = "fault-injection")]
pub mod clock;
#[cfg(feature = "fault-injection")]
pub mod disk;
#[cfg(feature = "fault-injection")]
pub mod watch;

/// Whether this binary was built with the `fault-injection` feature (its servers obey the
/// control file).
pub const ENABLED: bool = cfg!(feature = "fault-injection");

/// The control file, in a replica's data directory.
pub const CONTROL_FILE: &str = "fault-control.json";
/// Written by a server with the feature when it starts reading the control file (its pid).
pub const ARMED_FILE: &str = "fault-armed";

/// What a replica's clock and disk should do, as a state (rewriting the same state is a
/// no-op).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Control {
    /// The clock runs at (1 + rate_ppm / 10⁶) times real speed from when this is read
    /// (-999,999 at the slowest; a monotonic clock never runs backward).
    pub rate_ppm: i64,
    /// Nanoseconds added to the clock so far. Raising it jumps the clock forward by the
    /// difference at once; lowering it is a backward jump, which a monotonic clock cannot do:
    /// the clock stands still until real time has caught up by the difference.
    pub offset_ns: i64,
    pub disk: DiskMode,
    /// With [`DiskMode::Stall`]: each write is reported durable this long after the disk
    /// finished it.
    pub stall_ms: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiskMode {
    #[default]
    Ok,
    /// Completions are delayed by `stall_ms`.
    Stall,
    /// Every write and completion poll fails with EIO.
    Eio,
    /// Every write fails with ENOSPC (the disk is full).
    Enospc,
    /// Writes are acknowledged at once and kept in memory only, never handed to the WAL while
    /// this lasts: a kill -9 loses them. Back to `Ok`, they are written (in order).
    Lie,
}

pub fn control_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CONTROL_FILE)
}

/// Replaces the control file of the replica whose data directory is `data_dir` (atomically:
/// a server never reads half a file).
pub fn write_control(data_dir: &Path, control: &Control) -> Result<(), String> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let tmp = data_dir.join(format!("{CONTROL_FILE}.tmp"));
    let text = serde_json::to_string(control).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, control_path(data_dir))
        .map_err(|e| format!("cannot replace {}: {e}", control_path(data_dir).display()))
}

/// Reads a control file; a missing file is the default (no faults).
pub fn read_control(data_dir: &Path) -> Result<Control, String> {
    match std::fs::read_to_string(control_path(data_dir)) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| format!("{}: {e}", control_path(data_dir).display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Control::default()),
        Err(e) => Err(format!(
            "cannot read {}: {e}",
            control_path(data_dir).display()
        )),
    }
}
