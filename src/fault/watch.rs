//! The server side of the control file: read at start-up and every 10 ms after, applied to the
//! process's clock and disk faults (and logged, so a replica's log shows when they changed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{read_control, Control, ARMED_FILE};

/// CLOCK_BOOTTIME, unfaulted.
pub fn raw_boottime_ns() -> u64 {
    crate::net::timerfd::boottime_raw_ns()
}

fn apply(c: &Control) {
    if super::clock::set(raw_boottime_ns(), c.rate_ppm, c.offset_ns) {
        tracing::warn!(
            rate_ppm = c.rate_ppm,
            offset_ns = c.offset_ns,
            "fault injection: clock changed"
        );
    }
    if super::disk::set(c.disk, c.stall_ms) {
        tracing::warn!(mode = ?c.disk, stall_ms = c.stall_ms, "fault injection: disk changed");
    }
}

/// Applies the control file in `data_dir` now, then watches it from a thread for the life of
/// the process; writes the armed marker (this process's pid) once it does.
pub fn start(data_dir: &Path) -> Result<(), String> {
    let dir: PathBuf = data_dir.to_path_buf();
    let first = read_control(&dir)?;
    apply(&first);
    tracing::warn!(
        dir = %dir.display(),
        "fault injection armed (a test build): this replica's clock and disk obey {}",
        super::CONTROL_FILE
    );
    std::thread::Builder::new()
        .name("fault-watch".into())
        .spawn(move || {
            let mut last = first;
            loop {
                std::thread::sleep(Duration::from_millis(10));
                match read_control(&dir) {
                    Ok(c) if c != last => {
                        apply(&c);
                        last = c;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("fault injection: {e}"),
                }
            }
        })
        .map_err(|e| format!("cannot start the fault-injection thread: {e}"))?;
    std::fs::write(data_dir.join(ARMED_FILE), std::process::id().to_string())
        .map_err(|e| format!("cannot write {}: {e}", data_dir.join(ARMED_FILE).display()))
}
