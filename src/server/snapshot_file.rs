//! The operator's snapshot file: `mpaxos snapshot save FILE`, `mpaxos snapshot status FILE`
//! and `mpaxos cluster --from-snapshot FILE` (docs/internals/wal.md, "Snapshot file").
//!
//! Layout: magic `MPXSNAPF`, format version (u32 LE, 1), group count (u32 LE), then per group
//! its slot (u64 LE), its length (u64 LE) and its kv snapshot (self-checking, see
//! `kv::snapshot`), then the crc32c (u32 LE) of every byte before it. Each group's part is
//! consistent at one slot (and so at one revision of that group): the group's leader took it
//! from its state machine at its applied index, which holds every write it acknowledged.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::client::cli::{Endpoints, OutputFormat};
use crate::client::{Client, ClientOptions};
use crate::kv::{snapshot_info, SnapshotInfo};
use crate::server::config::ClusterConfig;
use crate::wal::{self, Wal};

const MAGIC: &[u8; 8] = b"MPXSNAPF";
const VERSION: u32 = 1;

/// One group's part of a snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPart {
    pub slot: u64,
    pub data: Vec<u8>,
}

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save every group's state machine from a live cluster into FILE (each group consistent
    /// at one revision: its leader's applied state).
    Save {
        file: std::path::PathBuf,
        #[command(flatten)]
        ep: Endpoints,
    },
    /// Check FILE and print its revision, keys, bytes and checksum.
    Status {
        file: std::path::PathBuf,
        #[arg(short = 'w', long = "write-out", value_enum, default_value_t)]
        format: OutputFormat,
    },
    /// Seed one replica's empty data directories from FILE before its first start (a new
    /// cluster of `mpaxos server` processes: run it for every replica, each with the same
    /// cluster.toml, then start them). `mpaxos cluster --from-snapshot` does this for a local
    /// cluster.
    Restore {
        file: std::path::PathBuf,
        /// The cluster's configuration (as for `mpaxos server`).
        #[arg(long)]
        config: std::path::PathBuf,
        /// The replica to seed.
        #[arg(long)]
        id: u32,
    },
}

pub fn encode(groups: &[GroupPart]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for g in groups {
        out.extend_from_slice(&g.slot.to_le_bytes());
        out.extend_from_slice(&(g.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&g.data);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the file's checksum and every group's snapshot; returns the groups in order.
pub fn decode(bytes: &[u8]) -> Result<Vec<GroupPart>, String> {
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err("not an mpaxos snapshot file (bad magic)".into());
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
    if crc32c::crc32c(body) != crc {
        return Err("the file's checksum does not match: it is damaged or truncated".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    if u32_at(8) != VERSION {
        return Err(format!(
            "snapshot file format {} is not supported (this build reads {VERSION})",
            u32_at(8)
        ));
    }
    let count = u32_at(12) as usize;
    let mut at = 16;
    let mut groups = Vec::with_capacity(count.min(256));
    for g in 0..count {
        let header = body
            .get(at..at + 16)
            .ok_or_else(|| format!("group {g}'s part is missing"))?;
        let slot = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(header[8..].try_into().expect("8 bytes")) as usize;
        at += 16;
        let data = body
            .get(at..at.saturating_add(len))
            .ok_or_else(|| format!("group {g}'s part is cut short"))?;
        let info = snapshot_info(data).map_err(|e| format!("group {g}: {e}"))?;
        if info.slot != slot {
            return Err(format!(
                "group {g}: its snapshot is at slot {}, the file says {slot}",
                info.slot
            ));
        }
        groups.push(GroupPart {
            slot,
            data: data.to_vec(),
        });
        at += len;
    }
    if at != body.len() {
        return Err(format!(
            "{} unexpected bytes after the groups",
            body.len() - at
        ));
    }
    Ok(groups)
}

pub fn read(path: &Path) -> Result<Vec<GroupPart>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `bytes` to `path` durably: a tmp file, fsync, rename, directory fsync.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let made = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    })();
    made.map_err(|e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

fn save(file: &Path, ep: &Endpoints) -> Result<String, String> {
    let mut opts = ClientOptions::new(ep.endpoints.clone());
    opts.op_timeout = std::time::Duration::from_millis(ep.timeout_ms);
    let mut client = Client::connect(opts).map_err(|e| e.to_string())?;
    let groups = client.topology().groups;
    let mut parts = Vec::new();
    for g in 0..groups {
        let (slot, data) = client.export_snapshot(g)?;
        parts.push(GroupPart { slot, data });
    }
    let bytes = encode(&parts);
    write_durably(file, &bytes)?;
    let infos = infos(&parts)?;
    Ok(format!(
        "saved {} ({} groups, revision {}, {} keys, {} bytes)",
        file.display(),
        groups,
        infos.iter().map(|i| i.revision).sum::<u64>(),
        infos.iter().map(|i| i.keys).sum::<u64>(),
        bytes.len()
    ))
}

fn infos(parts: &[GroupPart]) -> Result<Vec<SnapshotInfo>, String> {
    parts.iter().map(|p| snapshot_info(&p.data)).collect()
}

/// What `snapshot status` prints.
#[derive(serde::Serialize)]
struct Status {
    /// Sum of the groups' revisions (one per group; with one group, that group's revision).
    revision: u64,
    keys: u64,
    /// Bytes of the file.
    bytes: u64,
    /// crc32c of the file (its last four bytes), hex.
    checksum: String,
    groups: Vec<GroupStatus>,
}

#[derive(serde::Serialize)]
struct GroupStatus {
    group: u32,
    slot: u64,
    revision: u64,
    keys: u64,
    sessions: u64,
    bytes: u64,
    crc32c: String,
}

fn status(file: &Path, format: OutputFormat) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let parts = decode(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    let infos = infos(&parts)?;
    let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
    let st = Status {
        revision: infos.iter().map(|i| i.revision).sum(),
        keys: infos.iter().map(|i| i.keys).sum(),
        bytes: bytes.len() as u64,
        checksum: format!("{crc:08x}"),
        groups: infos
            .iter()
            .enumerate()
            .map(|(g, i)| GroupStatus {
                group: g as u32,
                slot: i.slot,
                revision: i.revision,
                keys: i.keys,
                sessions: i.clients,
                bytes: i.bytes,
                crc32c: format!("{:08x}", i.crc32c),
            })
            .collect(),
    };
    Ok(match format {
        OutputFormat::Json => serde_json::to_string_pretty(&st).expect("serializes"),
        OutputFormat::Table => {
            let mut out = format!(
                "revision {}  keys {}  bytes {}  checksum {}\n",
                st.revision, st.keys, st.bytes, st.checksum
            );
            out.push_str("group  slot  revision  keys  sessions  bytes  crc32c\n");
            for g in &st.groups {
                out.push_str(&format!(
                    "{}  {}  {}  {}  {}  {}  {}\n",
                    g.group, g.slot, g.revision, g.keys, g.sessions, g.bytes, g.crc32c
                ));
            }
            out.trim_end().to_string()
        }
    })
}

pub fn run(cmd: SnapshotCommand) -> ExitCode {
    let result = match cmd {
        SnapshotCommand::Save { file, ep } => save(&file, &ep),
        SnapshotCommand::Status { file, format } => status(&file, format),
        SnapshotCommand::Restore { file, config, id } => restore_one(&file, &config, id),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `mpaxos snapshot restore FILE --config C --id N`.
fn restore_one(file: &Path, config: &Path, id: u32) -> Result<String, String> {
    let config = ClusterConfig::load(config).map_err(|e| e.to_string())?;
    if !config.replicas.iter().any(|r| r.id == id) {
        let ids: Vec<String> = config.replicas.iter().map(|r| r.id.to_string()).collect();
        return Err(format!(
            "replica {id} is not in the configuration (its ids: {})",
            ids.join(", ")
        ));
    }
    let parts = read(file)?;
    restore_replicas(&config, &parts, &[id])?;
    Ok(format!(
        "replica {id}: {} groups restored from {} into {}",
        parts.len(),
        file.display(),
        config.replica_data_dir(id).display()
    ))
}

/// Seeds every replica's data directories of a new cluster with the file's snapshots.
pub fn restore(config: &ClusterConfig, parts: &[GroupPart]) -> Result<(), String> {
    let ids: Vec<u32> = config.replicas.iter().map(|r| r.id).collect();
    restore_replicas(config, parts, &ids)
}

/// Seeds the data directories of replicas `ids` with the file's snapshots: each group starts
/// from its snapshot's slot (its log floor), with nothing in its log. Refuses a directory that
/// holds a WAL already.
fn restore_replicas(
    config: &ClusterConfig,
    parts: &[GroupPart],
    ids: &[u32],
) -> Result<(), String> {
    if parts.len() != config.groups as usize {
        return Err(format!(
            "the snapshot holds {} groups, the cluster has {}",
            parts.len(),
            config.groups
        ));
    }
    if config.durability == wal::BackendChoice::Memory {
        return Err("a memory-durability cluster keeps nothing on disk to restore into".into());
    }
    for &id in ids {
        for (g, part) in parts.iter().enumerate() {
            let dir = config.replica_data_dir(id).join(format!("group-{g}"));
            let occupied = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
            if occupied {
                return Err(format!(
                    "{} holds data already; restore into a new cluster directory",
                    dir.display()
                ));
            }
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let cfg = config.wal_config(dir.clone(), g as u32);
            // Initialise the directory (superblock, first segment), then add the snapshot.
            drop(Wal::open(cfg).map_err(|e| e.to_string())?);
            wal::snapshot::write(&dir, config.cluster_id, g as u32, part.slot, &part.data)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_seeds_one_replica_of_a_server_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ClusterConfig::local(3, 1, &dir.path().join("data"), 20_000);
        config.durability = wal::BackendChoice::Sync;
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        let file = dir.path().join("backup.snap");
        let kv = crate::kv::KvStore::new();
        std::fs::write(
            &file,
            encode(&[GroupPart {
                slot: 7,
                data: kv.encode_snapshot(7),
            }]),
        )
        .unwrap();
        let out = restore_one(&file, &config_path, 1).unwrap();
        assert!(out.contains("replica 1: 1 groups restored"), "{out}");
        let snaps = |id: u32| {
            std::fs::read_dir(config.replica_data_dir(id).join("group-0"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                        .count()
                })
                .unwrap_or(0)
        };
        assert_eq!((snaps(0), snaps(1), snaps(2)), (0, 1, 0));
        // Once only: a directory with data is never overwritten.
        let again = restore_one(&file, &config_path, 1).unwrap_err();
        assert!(again.contains("holds data already"), "{again}");
        let unknown = restore_one(&file, &config_path, 7).unwrap_err();
        assert!(unknown.contains("ids: 0, 1, 2"), "{unknown}");
    }

    #[test]
    fn file_round_trip_and_damage() {
        let mut kv = crate::kv::KvStore::new();
        kv.apply(
            1,
            1,
            &crate::kv::Op::Put {
                key: bytes::Bytes::from_static(b"k"),
                value: bytes::Bytes::from_static(b"v"),
            }
            .encode(),
        );
        let parts = vec![
            GroupPart {
                slot: 9,
                data: kv.encode_snapshot(9),
            },
            GroupPart {
                slot: 0,
                data: crate::kv::KvStore::new().encode_snapshot(0),
            },
        ];
        let bytes = encode(&parts);
        assert_eq!(decode(&bytes).unwrap(), parts);
        for at in [0, 12, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(decode(&bad).is_err(), "flip at {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
