//! `mpaxos check disk`: what a durable commit costs on this disk (like `etcdctl check perf`).
//!
//! Owns: measuring the physical floor (one 4 KiB O_DIRECT durable write, as `write` +
//! `fdatasync` and as one `pwritev2(RWF_DSYNC)`, the faster of the two) and the WAL's
//! group-commit latency and throughput for batches of 1/8/64/512 entries of 64 B and 1 KiB,
//! through the backend `auto` picks (or the one asked for). Percentiles come from HdrHistograms.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::backend::BackendChoice;
use super::buf::AlignedBuf;
use super::error::WalError;
use super::files::{self, DirectIo};
use super::format::{align_up, Ballot, Entry, ENTRY_HEADER_BYTES, SECTOR_BYTES};
use super::{Wal, WalConfig, WriteId};

pub const BATCH_ENTRIES: [usize; 4] = [1, 8, 64, 512];
pub const ENTRY_BYTES: [usize; 2] = [64, 1024];

#[derive(Clone, Debug)]
pub struct DiskOptions {
    pub backend: BackendChoice,
    /// Measured writes per configuration (big batches use fewer, to bound bytes written).
    pub iterations: u32,
    /// Also measure the `uring` and `sync` backends side by side.
    pub all_backends: bool,
    /// Above 1: also time the floor's write from this many writers at once, as the replicas
    /// of a one-host cluster write one disk.
    pub writers: usize,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            backend: BackendChoice::Auto,
            iterations: 200,
            all_backends: false,
            writers: 1,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BatchResult {
    pub entries: usize,
    pub entry_bytes: usize,
    pub latency_us_p50: u64,
    pub latency_us_p99: u64,
    pub entries_per_s: f64,
    pub iterations: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendResult {
    pub backend: String,
    pub batches: Vec<BatchResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    /// batch-64 × 64 B p50 ÷ floor p50; target ≤ 1.3.
    pub amortization_ratio: f64,
    /// batch-512 × 64 B entries/s ÷ batch-1 × 64 B entries/s; target ≥ 100.
    pub batch512_throughput_gain: f64,
    /// sync batch-64 × 64 B p50 ÷ uring p50 (only with `--all-backends`); target ≥ 1.0.
    pub uring_speedup_over_sync: Option<f64>,
}

/// Where the measurement ran: without this a ratio means nothing to the next reader.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiskContext {
    /// The mount's source (e.g. `/dev/vda1`), from /proc/self/mountinfo.
    pub device: String,
    pub filesystem: String,
    pub mount_point: String,
    /// `uname -r`.
    pub kernel: String,
    /// Reasons the figures may not mean what they seem (tmpfs, overlay, network filesystems,
    /// no O_DIRECT).
    pub warnings: Vec<String>,
}

/// Filesystems on which an O_DIRECT write + datasync does not measure a disk.
const NOT_A_DISK: &[(&str, &str)] = &[
    ("tmpfs", "memory, not a disk"),
    ("ramfs", "memory, not a disk"),
    ("overlay", "an overlay (container) filesystem"),
    ("9p", "a host-shared 9p filesystem"),
    ("virtiofs", "a host-shared virtiofs filesystem"),
    ("nfs", "a network filesystem"),
    ("nfs4", "a network filesystem"),
    ("cifs", "a network filesystem"),
    ("fuse", "a FUSE filesystem"),
];

impl DiskContext {
    /// The mount holding `dir` (the longest mount point that is a prefix of its canonical
    /// path) and the kernel release. Best effort: unknown fields stay "?".
    pub fn of(dir: &Path, direct_io: bool) -> DiskContext {
        let path = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let mut best: Option<(PathBuf, String, String)> = None;
        if let Ok(info) = fs::read_to_string("/proc/self/mountinfo") {
            for line in info.lines() {
                // id parent major:minor root mount-point options [optional...] - fstype source super
                let fields: Vec<&str> = line.split(' ').collect();
                let Some(dash) = fields.iter().position(|f| *f == "-") else {
                    continue;
                };
                let (Some(mount), Some(fstype), Some(source)) =
                    (fields.get(4), fields.get(dash + 1), fields.get(dash + 2))
                else {
                    continue;
                };
                let mount = PathBuf::from(mount.replace("\\040", " "));
                let longer = best.as_ref().map_or(true, |(m, _, _)| {
                    mount.as_os_str().len() >= m.as_os_str().len()
                });
                if path.starts_with(&mount) && longer {
                    best = Some((mount, fstype.to_string(), source.to_string()));
                }
            }
        }
        let (mount_point, filesystem, device) = best
            .map(|(m, f, d)| (m.display().to_string(), f, d))
            .unwrap_or_else(|| ("?".into(), "?".into(), "?".into()));
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let mut warnings = Vec::new();
        let base = filesystem.split('.').next().unwrap_or("");
        if let Some((_, what)) = NOT_A_DISK
            .iter()
            .find(|(fs, _)| *fs == base || base.starts_with("fuse"))
        {
            warnings.push(format!(
                "{} is on {filesystem} ({what}): these timings do not measure a disk; check a directory on the disk the WAL will use",
                dir.display()
            ));
        }
        if !direct_io {
            warnings.push(
                "O_DIRECT is not available here: writes go through the page cache, so the floor and the batches measure less than the WAL does on a real disk".into(),
            );
        }
        DiskContext {
            device,
            filesystem,
            mount_point,
            kernel,
            warnings,
        }
    }
}

/// The targets of the WAL (docs/internals/wal.md) with a verdict each.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub measured: f64,
    pub pass: bool,
}

impl Targets {
    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut v = vec![
            Verdict {
                target: "batch-64 x 64 B p50 / floor p50 <= 1.3 (group commit amortizes)".into(),
                measured: self.amortization_ratio,
                pass: self.amortization_ratio <= 1.3,
            },
            Verdict {
                target: "batch-512 / batch-1 entries per second (64 B) >= 100".into(),
                measured: self.batch512_throughput_gain,
                pass: self.batch512_throughput_gain >= 100.0,
            },
        ];
        if let Some(u) = self.uring_speedup_over_sync {
            v.push(Verdict {
                target: "sync batch-64 p50 / uring batch-64 p50 >= 1.0".into(),
                measured: u,
                pass: u >= 1.0,
            });
        }
        v
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct DiskReport {
    pub dir: PathBuf,
    pub context: DiskContext,
    pub verdicts: Vec<Verdict>,
    pub backend: String,
    pub backend_reason: String,
    pub direct_io: bool,
    /// The faster of the two ways to make a 4 KiB write durable (below), by p50.
    pub floor_sync_write_us_p50: u64,
    pub floor_sync_write_us_p99: u64,
    /// `"write+fdatasync"` or `"pwritev2 RWF_DSYNC"`: which one the floor is.
    pub floor_method: String,
    /// Both, measured interleaved: `write` then `fdatasync`; one `pwritev2` with `RWF_DSYNC`
    /// (what the WAL's io_uring backend does; FUA where the device has it).
    pub floor_write_fdatasync_us_p50: u64,
    pub floor_rwf_dsync_us_p50: u64,
    pub floor_iterations: u32,
    /// `--writers N` (N > 1): the floor's write from N writers at once, each its own file
    /// (every writer's writes in one histogram, the faster way by p50).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_shared_writers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_shared_us_p50: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_shared_us_p99: Option<u64>,
    pub batches: Vec<BatchResult>,
    pub amortization_ratio: f64,
    pub targets: Targets,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_backend: Vec<BackendResult>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> WalError {
    WalError::io(what.to_string(), path, e)
}

/// Measures the disk under `dir` (a scratch directory is made inside it and removed after).
pub fn run(dir: &Path, opts: &DiskOptions) -> Result<DiskReport, WalError> {
    fs::create_dir_all(dir).map_err(|e| WalError::DataDir {
        dir: dir.to_path_buf(),
        source: e,
    })?;
    let work = dir.join(format!("mpaxos-check-disk-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| WalError::DataDir {
        dir: work.clone(),
        source: e,
    })?;
    let result = measure(dir, &work, opts);
    let _ = fs::remove_dir_all(&work);
    result
}

fn measure(dir: &Path, work: &Path, opts: &DiskOptions) -> Result<DiskReport, WalError> {
    let direct = files::probe_direct_io(work, DirectIo::Auto, false)?;
    let floors = floor(work, direct, opts.iterations)?;
    let floor_iters = floors.iterations;
    let (floor_method, floor) = floors.faster();
    let floor = floor.clone();
    let shared = if opts.writers > 1 {
        Some(floor_sync_write(work, opts.writers, opts.iterations)?)
    } else {
        None
    };
    let (backend, reason, batches) = wal_batches(work, opts.backend, opts.iterations)?;
    let mut by_backend = Vec::new();
    if opts.all_backends {
        for choice in [BackendChoice::Uring, BackendChoice::Sync] {
            match wal_batches(work, choice, opts.iterations) {
                Ok((name, _, b)) => by_backend.push(BackendResult {
                    backend: name,
                    batches: b,
                }),
                Err(e) => tracing::warn!("check disk: skipping the {choice:?} backend: {e}"),
            }
        }
    }
    let p50 = |bs: &[BatchResult], n: usize| {
        bs.iter()
            .find(|b| b.entries == n && b.entry_bytes == 64)
            .map(|b| b.latency_us_p50 as f64)
            .unwrap_or(f64::NAN)
    };
    let eps = |n: usize| {
        batches
            .iter()
            .find(|b| b.entries == n && b.entry_bytes == 64)
            .map(|b| b.entries_per_s)
            .unwrap_or(f64::NAN)
    };
    let floor_p50 = floor.value_at_quantile(0.5).max(1);
    let amortization_ratio = p50(&batches, 64) / floor_p50 as f64;
    let uring_speedup_over_sync = {
        let find = |name: &str| by_backend.iter().find(|b| b.backend == name);
        match (find("uring"), find("sync")) {
            (Some(u), Some(s)) => Some(p50(&s.batches, 64) / p50(&u.batches, 64)),
            _ => None,
        }
    };
    let targets = Targets {
        amortization_ratio,
        batch512_throughput_gain: eps(512) / eps(1),
        uring_speedup_over_sync,
    };
    Ok(DiskReport {
        dir: dir.to_path_buf(),
        context: DiskContext::of(dir, direct),
        verdicts: targets.verdicts(),
        backend,
        backend_reason: reason,
        direct_io: direct,
        floor_sync_write_us_p50: floor_p50,
        floor_sync_write_us_p99: floor.value_at_quantile(0.99),
        floor_method: floor_method.to_string(),
        floor_write_fdatasync_us_p50: floors.fdatasync.value_at_quantile(0.5),
        floor_rwf_dsync_us_p50: floors.rwf_dsync.value_at_quantile(0.5),
        floor_iterations: floor_iters,
        floor_shared_writers: shared.as_ref().map(|_| opts.writers),
        floor_shared_us_p50: shared.as_ref().map(|h| h.value_at_quantile(0.5)),
        floor_shared_us_p99: shared.as_ref().map(|h| h.value_at_quantile(0.99)),
        amortization_ratio,
        targets,
        batches,
        by_backend,
    })
}

/// One 4 KiB write + fdatasync at a time, at increasing offsets of a preallocated file.
/// The floor measured both ways (µs).
struct Floors {
    fdatasync: Histogram<u64>,
    rwf_dsync: Histogram<u64>,
    iterations: u32,
}

impl Floors {
    /// The faster way by p50, and its name.
    fn faster(&self) -> (&'static str, &Histogram<u64>) {
        if self.rwf_dsync.value_at_quantile(0.5) < self.fdatasync.value_at_quantile(0.5) {
            ("pwritev2 RWF_DSYNC", &self.rwf_dsync)
        } else {
            ("write+fdatasync", &self.fdatasync)
        }
    }
}

fn floor(work: &Path, direct: bool, iterations: u32) -> Result<Floors, WalError> {
    FloorFile::create(work, direct)?.measure(iterations)
}

/// The physical floor of a durable write on the disk under `dir`: one 4 KiB O_DIRECT (where
/// supported) durable write at a time, `iterations` times each as write + fdatasync and as
/// `pwritev2(RWF_DSYNC)`, interleaved; the faster by p50 (µs). With `writers` > 1, from that
/// many threads at once, each on its own file, all starting together, every writer's writes in
/// one histogram: what one durable write costs while the other replicas of a one-host cluster
/// write the same disk, as they do for every batch.
pub fn floor_sync_write(
    dir: &Path,
    writers: usize,
    iterations: u32,
) -> Result<Histogram<u64>, WalError> {
    let work = dir.join(format!("mpaxos-floor-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let result = (|| {
        fs::create_dir_all(&work).map_err(|e| WalError::DataDir {
            dir: work.clone(),
            source: e,
        })?;
        let direct = files::probe_direct_io(&work, DirectIo::Auto, false)?;
        let files = (0..writers.max(1))
            .map(|i| {
                let sub = work.join(format!("w{i}"));
                fs::create_dir_all(&sub).map_err(|e| WalError::DataDir {
                    dir: sub.clone(),
                    source: e,
                })?;
                FloorFile::create(&sub, direct)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let start = std::sync::Barrier::new(files.len());
        let floors = std::thread::scope(|s| {
            let handles: Vec<_> = files
                .iter()
                .map(|f| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        f.measure(iterations)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a floor writer panicked"))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut merged = Floors {
            fdatasync: histogram(),
            rwf_dsync: histogram(),
            iterations,
        };
        for f in &floors {
            merged.fdatasync.add(&f.fdatasync).expect("same bounds");
            merged.rwf_dsync.add(&f.rwf_dsync).expect("same bounds");
        }
        Ok(merged.faster().1.clone())
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// A preallocated, already-written file of 1,024 sectors to time durable writes on.
struct FloorFile {
    file: fs::File,
    path: PathBuf,
}

impl FloorFile {
    const SECTORS: u64 = 1024;

    fn create(work: &Path, direct: bool) -> Result<FloorFile, WalError> {
        let path = work.join("floor.dat");
        {
            let f = fs::File::create(&path).map_err(|e| io_err("creating", &path, e))?;
            files::write_zeros(&f, &path, 0, Self::SECTORS * SECTOR_BYTES as u64)?;
            f.sync_all().map_err(|e| io_err("syncing", &path, e))?;
        }
        let file = files::open_rw(&path, direct).map_err(|e| io_err("opening", &path, e))?;
        Ok(FloorFile { file, path })
    }

    /// One 4 KiB durable write at a time, `iterations` times each way (after 10 unrecorded),
    /// the two ways interleaved on separate halves of the file so both see the same moment.
    fn measure(&self, iterations: u32) -> Result<Floors, WalError> {
        use std::os::fd::AsRawFd;
        let (f, path) = (&self.file, &self.path);
        let mut buf = AlignedBuf::new(SECTOR_BYTES);
        buf.as_full_mut().fill(0x5A);
        buf.set_len(SECTOR_BYTES);
        let (mut fdatasync, mut rwf_dsync) = (histogram(), histogram());
        let dsync_write = |offset: u64| -> std::io::Result<()> {
            let iov = libc::iovec {
                iov_base: buf.as_slice().as_ptr() as *mut libc::c_void,
                iov_len: SECTOR_BYTES,
            };
            // SAFETY: one iovec over a live, aligned buffer we own, on an open descriptor.
            let n = unsafe {
                libc::pwritev2(
                    f.as_raw_fd(),
                    &iov,
                    1,
                    offset as libc::off_t,
                    libc::RWF_DSYNC,
                )
            };
            match n {
                n if n == SECTOR_BYTES as isize => Ok(()),
                n if n < 0 => Err(std::io::Error::last_os_error()),
                _ => Err(std::io::ErrorKind::WriteZero.into()),
            }
        };
        let half = Self::SECTORS / 2;
        for i in 0..iterations as u64 + 10 {
            let a = (i % half) * SECTOR_BYTES as u64;
            let b = a + half * SECTOR_BYTES as u64;
            let t = Instant::now();
            f.write_all_at(buf.as_slice(), a)
                .and_then(|()| f.sync_data())
                .map_err(|e| io_err("writing", path, e))?;
            let t_fdatasync = t.elapsed();
            let t = Instant::now();
            dsync_write(b).map_err(|e| io_err("writing (RWF_DSYNC)", path, e))?;
            let t_dsync = t.elapsed();
            if i >= 10 {
                fdatasync
                    .record(t_fdatasync.as_micros().max(1) as u64)
                    .expect("in range");
                rwf_dsync
                    .record(t_dsync.as_micros().max(1) as u64)
                    .expect("in range");
            }
        }
        Ok(Floors {
            fdatasync,
            rwf_dsync,
            iterations,
        })
    }
}

fn iterations_for(batch_bytes: u64, iterations: u32) -> u32 {
    let cap = (32u64 << 20) / batch_bytes;
    (iterations as u64).min(cap.max(20)) as u32
}

fn batch_bytes(entries: usize, entry_bytes: usize) -> u64 {
    align_up((entries * (ENTRY_HEADER_BYTES + entry_bytes)) as u64)
}

/// Group commits of each size through a WAL with `choice`; returns (backend, why, results).
fn wal_batches(
    work: &Path,
    choice: BackendChoice,
    iterations: u32,
) -> Result<(String, String, Vec<BatchResult>), WalError> {
    const WARMUP: u32 = 5;
    let mut total = 0u64;
    for &n in &BATCH_ENTRIES {
        for &b in &ENTRY_BYTES {
            let bb = batch_bytes(n, b);
            total += bb * (iterations_for(bb, iterations) + WARMUP) as u64;
        }
    }
    let dir = work.join(format!("wal-{choice:?}").to_lowercase());
    let mut cfg = WalConfig::new(&dir, 0xD15C, 0);
    cfg.backend = choice;
    cfg.segment_bytes = align_up(total + (2 << 20));
    cfg.max_batch_bytes = 1 << 20;
    cfg.max_entry_bytes = 64 << 10;
    let (mut wal, rec) = Wal::open(cfg)?;
    let backend = wal.backend_kind().to_string();
    let reason = rec.report.backend_reason.clone();
    let mut results = Vec::new();
    let mut sink: Vec<WriteId> = Vec::with_capacity(16);
    for &entry_bytes in &ENTRY_BYTES {
        for &n in &BATCH_ENTRIES {
            let body = vec![0xA5u8; entry_bytes];
            let entries = synthetic_batch(n, &body);
            let iters = iterations_for(batch_bytes(n, entry_bytes), iterations);
            let mut h = histogram();
            let mut measured = std::time::Duration::ZERO;
            for i in 0..iters + WARMUP {
                let t = Instant::now();
                let id = wal.append(&entries)?;
                wal.wait_durable(id, &mut sink)?;
                sink.clear();
                let dt = t.elapsed();
                if i >= WARMUP {
                    h.record(dt.as_micros().max(1) as u64).expect("in range");
                    measured += dt;
                }
            }
            results.push(BatchResult {
                entries: n,
                entry_bytes,
                latency_us_p50: h.value_at_quantile(0.5),
                latency_us_p99: h.value_at_quantile(0.99),
                entries_per_s: (n as f64 * iters as f64) / measured.as_secs_f64(),
                iterations: iters,
            });
        }
    }
    drop(wal);
    let _ = fs::remove_dir_all(&dir);
    Ok((backend, reason, results))
}

/// Renders the report as a human-readable table.
pub fn render_table(r: &DiskReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "disk check of {}", r.dir.display());
    let c = &r.context;
    let _ = writeln!(
        s,
        "on {} ({}, mounted at {}), kernel {}",
        c.device, c.filesystem, c.mount_point, c.kernel
    );
    for w in &c.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    let _ = writeln!(
        s,
        "backend: {} ({}), O_DIRECT: {}",
        r.backend, r.backend_reason, r.direct_io
    );
    let _ = writeln!(
        s,
        "floor (4 KiB durable write, {}): p50 {} us, p99 {} us ({} writes each way; write+fdatasync p50 {} us, pwritev2 RWF_DSYNC p50 {} us)",
        r.floor_method,
        r.floor_sync_write_us_p50,
        r.floor_sync_write_us_p99,
        r.floor_iterations,
        r.floor_write_fdatasync_us_p50,
        r.floor_rwf_dsync_us_p50
    );
    if let (Some(n), Some(p50), Some(p99)) = (
        r.floor_shared_writers,
        r.floor_shared_us_p50,
        r.floor_shared_us_p99,
    ) {
        let _ = writeln!(
            s,
            "floor with {n} writers at once (a one-host cluster's replicas on this disk): p50 {p50} us, p99 {p99} us ({:.2}x one writer's p50)",
            p50 as f64 / r.floor_sync_write_us_p50.max(1) as f64
        );
    }
    let mut table = |title: &str, batches: &[BatchResult]| {
        let _ = writeln!(s, "\n{title}");
        let _ = writeln!(
            s,
            "{:>8} {:>12} {:>10} {:>10} {:>14} {:>6}",
            "entries", "entry_bytes", "p50_us", "p99_us", "entries_per_s", "iters"
        );
        for b in batches {
            let _ = writeln!(
                s,
                "{:>8} {:>12} {:>10} {:>10} {:>14.0} {:>6}",
                b.entries,
                b.entry_bytes,
                b.latency_us_p50,
                b.latency_us_p99,
                b.entries_per_s,
                b.iterations
            );
        }
    };
    table(&format!("group commit ({})", r.backend), &r.batches);
    for b in &r.by_backend {
        table(&format!("group commit ({})", b.backend), &b.batches);
    }
    let _ = writeln!(s, "\ntargets:");
    for v in &r.verdicts {
        let _ = writeln!(
            s,
            "  {:<4} {:.2}  {}",
            if v.pass { "pass" } else { "FAIL" },
            v.measured,
            v.target
        );
    }
    let failed = r.verdicts.iter().filter(|v| !v.pass).count();
    let _ = writeln!(
        s,
        "verdict: {}{}",
        if failed == 0 {
            "every target met".to_string()
        } else {
            format!("{failed} of {} targets missed", r.verdicts.len())
        },
        if c.warnings.is_empty() {
            ""
        } else {
            " (read the warnings above first)"
        }
    );
    s
}

/// `n` entries of one slot each, all carrying `body`: the batch the disk check and
/// `benches/wal.rs` both measure.
pub fn synthetic_batch(n: usize, body: &[u8]) -> Vec<Entry<'_>> {
    (0..n as u64)
        .map(|i| Entry {
            slot_first: i,
            slot_last: i,
            ballot: Ballot {
                round: 1,
                replica: 0,
            },
            body,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_targets() {
        let t = Targets {
            amortization_ratio: 1.31,
            batch512_throughput_gain: 100.0,
            uring_speedup_over_sync: Some(0.9),
        };
        let v = t.verdicts();
        assert_eq!(
            v.iter().map(|v| v.pass).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn context_names_the_mount_and_warns_on_memory_filesystems() {
        let here = DiskContext::of(Path::new(env!("CARGO_MANIFEST_DIR")), true);
        assert_ne!(here.filesystem, "?");
        assert_ne!(here.kernel, "?");
        // /dev/shm is tmpfs on Linux hosts that have it.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let c = DiskContext::of(shm, true);
            if c.filesystem == "tmpfs" {
                assert!(
                    c.warnings
                        .iter()
                        .any(|w| w.contains("do not measure a disk")),
                    "{:?}",
                    c.warnings
                );
            }
        }
        let no_direct = DiskContext::of(Path::new(env!("CARGO_MANIFEST_DIR")), false);
        assert!(no_direct.warnings.iter().any(|w| w.contains("O_DIRECT")));
    }

    #[test]
    fn the_shared_floor_times_every_writers_writes_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let h = floor_sync_write(dir.path(), 3, 12).unwrap();
        // Each writer records `iterations` writes of the chosen way (after 10 unrecorded).
        assert_eq!(h.len(), 3 * 12);
        assert!(h.value_at_quantile(0.5) >= 1);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "scratch files removed"
        );
    }

    #[test]
    fn writers_above_one_add_the_shared_floor_to_the_report() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DiskOptions {
            backend: BackendChoice::Sync,
            iterations: 3,
            all_backends: false,
            writers: 2,
        };
        let r = run(dir.path(), &opts).unwrap();
        assert_eq!(r.floor_shared_writers, Some(2));
        assert!(r.floor_shared_us_p50.unwrap() >= 1);
        assert!(r.floor_shared_us_p99.unwrap() >= r.floor_shared_us_p50.unwrap());
        assert!(render_table(&r).contains("floor with 2 writers at once"));
        let one = run(dir.path(), &DiskOptions { writers: 1, ..opts }).unwrap();
        assert_eq!(one.floor_shared_writers, None);
        assert!(!render_table(&one).contains("writers at once"));
        let json = serde_json::to_value(&one).unwrap();
        assert!(json.get("floor_shared_us_p50").is_none());
    }
}
