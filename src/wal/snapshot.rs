//! Snapshots: the caller's state at slot `s`, checksummed, in its own file. Once a snapshot at
//! `s` is durable, WAL segments holding only slots up to `s` can be released.
//!
//! Owns: writing a snapshot file atomically (tmp, sync, rename, dir sync), finding the newest
//! valid one at start-up, and pruning old ones (the newest two are kept, so a damaged newest
//! snapshot still leaves one to fall back to).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use super::error::WalError;
use super::files::{parse_snapshot_name, snapshot_name, sync_dir};
use super::format::{SnapshotHeader, SECTOR_BYTES};

/// Snapshots kept on disk after a new one is written.
pub const SNAPSHOTS_KEPT: usize = 2;

/// A loaded, verified snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The snapshot holds the effect of every slot up to and including this one.
    pub slot: u64,
    pub data: Vec<u8>,
}

/// Writes a snapshot of `data` at `slot` durably, then removes all but the newest
/// [`SNAPSHOTS_KEPT`] snapshots.
pub fn write(
    dir: &Path,
    cluster_id: u64,
    group: u32,
    slot: u64,
    data: &[u8],
) -> Result<(), WalError> {
    let name = snapshot_name(slot);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut head = vec![0u8; SECTOR_BYTES];
    SnapshotHeader {
        cluster_id,
        group,
        slot,
        body_len: data.len() as u64,
        body_crc: crc32c::crc32c(data),
    }
    .encode(&mut head);
    let io = |what: &str, e| WalError::io(format!("{what} snapshot {}", tmp.display()), &tmp, e);
    let made = (|| {
        let mut f = File::create(&tmp).map_err(|e| io("creating", e))?;
        f.write_all(&head).map_err(|e| io("writing", e))?;
        f.write_all(data).map_err(|e| io("writing", e))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("renaming", e))?;
        sync_dir(dir)
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    prune(dir)
}

fn slots_on_disk(dir: &Path) -> Result<Vec<u64>, WalError> {
    let mut slots = Vec::new();
    let rd = fs::read_dir(dir).map_err(|e| WalError::DataDir {
        dir: dir.to_path_buf(),
        source: e,
    })?;
    for ent in rd.flatten() {
        if let Some(s) = parse_snapshot_name(&ent.file_name().to_string_lossy()) {
            slots.push(s);
        }
    }
    slots.sort_unstable();
    Ok(slots)
}

fn prune(dir: &Path) -> Result<(), WalError> {
    let slots = slots_on_disk(dir)?;
    if slots.len() > SNAPSHOTS_KEPT {
        for s in &slots[..slots.len() - SNAPSHOTS_KEPT] {
            let p = dir.join(snapshot_name(*s));
            fs::remove_file(&p).map_err(|e| WalError::io("removing old snapshot", &p, e))?;
        }
        sync_dir(dir)?;
    }
    Ok(())
}

/// Loads the newest snapshot that verifies. Damaged snapshots are skipped with a note; a
/// snapshot of another cluster or group is refused.
pub fn load_newest(
    dir: &Path,
    cluster_id: u64,
    group: u32,
    notes: &mut Vec<String>,
) -> Result<Option<Snapshot>, WalError> {
    for slot in slots_on_disk(dir)?.into_iter().rev() {
        let path = dir.join(snapshot_name(slot));
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| WalError::io(format!("reading {}", path.display()), &path, e))?;
        let h = match SnapshotHeader::decode(&bytes) {
            Ok(h) => h,
            Err(f) => {
                notes.push(format!(
                    "snapshot {} has a damaged header ({f:?}); skipped",
                    path.display()
                ));
                continue;
            }
        };
        if h.cluster_id != cluster_id || h.group != group {
            return Err(WalError::Foreign {
                dir: dir.to_path_buf(),
                found_cluster: h.cluster_id,
                found_group: h.group,
                cluster: cluster_id,
                group,
            });
        }
        let body = &bytes[SECTOR_BYTES..];
        if h.slot != slot || body.len() as u64 != h.body_len || crc32c::crc32c(body) != h.body_crc {
            notes.push(format!(
                "snapshot {} is damaged or truncated; skipped",
                path.display()
            ));
            continue;
        }
        return Ok(Some(Snapshot {
            slot,
            data: body.to_vec(),
        }));
    }
    Ok(None)
}
