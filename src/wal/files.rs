//! Files of a WAL data directory: names, opening (O_DIRECT policy), preallocated segments,
//! zero-filling, and directory syncs.
//!
//! Layout of a group's data directory:
//! `superblock` (4 sectors), `wal-<index:016x>.seg` (preallocated segments),
//! `snap-<slot:020>.snap` (snapshots). `*.tmp` files are unfinished and removed at open.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::buf::AlignedBuf;
use super::error::WalError;
use super::format::{SegmentHeader, SECTOR_BYTES};

pub const SUPERBLOCK_NAME: &str = "superblock";

/// Whether files are opened with O_DIRECT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DirectIo {
    /// O_DIRECT where the filesystem supports it; otherwise buffered writes (still
    /// data-synced, so just as durable, only slower) with one log line.
    #[default]
    Auto,
    /// Refuse to start without O_DIRECT.
    Require,
    /// Never O_DIRECT.
    Off,
}

pub fn segment_name(index: u64) -> String {
    format!("wal-{index:016x}.seg")
}

pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("wal-")?.strip_suffix(".seg")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

pub fn snapshot_name(slot: u64) -> String {
    format!("snap-{slot:020}.snap")
}

pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    name.strip_prefix("snap-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// Opens `path` for reading and writing, with O_DIRECT when `direct`.
pub fn open_rw(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Decides whether O_DIRECT is used in `dir`, by opening a probe file with it.
pub fn probe_direct_io(
    dir: &Path,
    policy: DirectIo,
    inject_unsupported: bool,
) -> Result<bool, WalError> {
    if policy == DirectIo::Off {
        return Ok(false);
    }
    let probe = dir.join("direct-io-probe.tmp");
    let r = if inject_unsupported {
        Err(std::io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .map(drop)
    };
    let _ = fs::remove_file(&probe);
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => match policy {
            DirectIo::Require => Err(WalError::DirectIoUnsupported {
                dir: dir.to_path_buf(),
            }),
            _ => {
                tracing::warn!(
                    "the filesystem of {} does not support O_DIRECT: writing through the page cache with data syncs (durable, but slower); put the data directory on ext4 or xfs for full speed",
                    dir.display()
                );
                Ok(false)
            }
        },
        Err(e) => Err(WalError::DataDir {
            dir: dir.to_path_buf(),
            source: e,
        }),
    }
}

pub fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(format!("syncing directory {}", dir.display()), dir, e))
}

/// Writes `len` zero bytes at `offset` of `file` in aligned chunks (works with O_DIRECT).
pub fn write_zeros(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), WalError> {
    const CHUNK: usize = 1 << 20;
    let mut zeros = AlignedBuf::new(CHUNK);
    zeros.set_len(CHUNK);
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros.as_slice()[..n], offset + done)
            .map_err(|e| WalError::io(format!("zero-filling {}", path.display()), path, e))?;
        done += n as u64;
    }
    Ok(())
}

/// How a segment is zero-filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// As fast as the disk goes (start-up, or a writer that must wait for it anyway).
    Now,
    /// In the background while the log is being written: small O_DIRECT chunks with pauses, so
    /// the log's own durable writes never queue behind tens of megabytes of zeros. (Filling a
    /// whole segment through the page cache and syncing it at once stalled acknowledged
    /// writes for seconds on a slow disk.)
    Paced,
}

/// Zero-fills `len` bytes from `offset` in 256 KiB direct (or buffered) writes, syncing every
/// 4 MiB; `Fill::Paced` sleeps as long as each chunk took, leaving the disk half free.
fn write_zeros_paced(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
    fill: Fill,
) -> Result<(), WalError> {
    const CHUNK: usize = 256 << 10;
    const SYNC_EVERY: u64 = 4 << 20;
    let mut zeros = AlignedBuf::new(CHUNK);
    zeros.set_len(CHUNK);
    let mut done = 0u64;
    let mut since_sync = 0u64;
    let err = |e| WalError::io(format!("zero-filling {}", path.display()), path, e);
    while done < len {
        let started = std::time::Instant::now();
        let n = (len - done).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros.as_slice()[..n], offset + done)
            .map_err(err)?;
        done += n as u64;
        since_sync += n as u64;
        if since_sync >= SYNC_EVERY {
            file.sync_data().map_err(err)?;
            since_sync = 0;
        }
        if fill == Fill::Paced {
            std::thread::sleep(started.elapsed());
        }
    }
    Ok(())
}

/// Creates a preallocated, zero-filled segment atomically (tmp file, sync, rename, dir sync)
/// and returns it opened for writing. On any failure the tmp file is removed, so a full disk
/// never leaves a half-made segment behind.
pub fn create_segment(
    dir: &Path,
    header: SegmentHeader,
    direct: bool,
    fill: Fill,
) -> Result<File, WalError> {
    let final_path = dir.join(segment_name(header.index));
    let tmp = dir.join(format!("{}.tmp", segment_name(header.index)));
    let made = (|| {
        File::create(&tmp)
            .map_err(|e| WalError::io(format!("creating {}", tmp.display()), &tmp, e))?;
        let f = open_rw(&tmp, direct)
            .map_err(|e| WalError::io(format!("opening {}", tmp.display()), &tmp, e))?;
        let mut first = AlignedBuf::new(SECTOR_BYTES);
        first.set_len(SECTOR_BYTES);
        header.encode(first.as_full_mut());
        f.write_all_at(first.as_slice(), 0)
            .map_err(|e| WalError::io(format!("writing {}", tmp.display()), &tmp, e))?;
        write_zeros_paced(
            &f,
            &tmp,
            SECTOR_BYTES as u64,
            header.segment_bytes - SECTOR_BYTES as u64,
            fill,
        )?;
        f.sync_all()
            .map_err(|e| WalError::io(format!("syncing {}", tmp.display()), &tmp, e))?;
        fs::rename(&tmp, &final_path)
            .map_err(|e| WalError::io(format!("renaming {}", tmp.display()), &tmp, e))?;
        sync_dir(dir)
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    open_rw(&final_path, direct)
        .map_err(|e| WalError::io(format!("opening {}", final_path.display()), &final_path, e))
}

/// Lists segment indices and snapshot slots in `dir`, removing leftover `*.tmp` files.
pub struct DirListing {
    pub segments: Vec<u64>,
    pub snapshots: Vec<u64>,
    pub has_superblock: bool,
    pub other_files: Vec<PathBuf>,
}

pub fn list_dir(dir: &Path) -> Result<DirListing, WalError> {
    let data_dir_err = |e| WalError::DataDir {
        dir: dir.to_path_buf(),
        source: e,
    };
    let mut out = DirListing {
        segments: Vec::new(),
        snapshots: Vec::new(),
        has_superblock: false,
        other_files: Vec::new(),
    };
    for ent in fs::read_dir(dir).map_err(data_dir_err)? {
        let ent = ent.map_err(data_dir_err)?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(ent.path());
        } else if name == SUPERBLOCK_NAME {
            out.has_superblock = true;
        } else if let Some(i) = parse_segment_name(&name) {
            out.segments.push(i);
        } else if let Some(s) = parse_snapshot_name(&name) {
            out.snapshots.push(s);
        } else {
            out.other_files.push(ent.path());
        }
    }
    out.segments.sort_unstable();
    out.snapshots.sort_unstable();
    Ok(out)
}
