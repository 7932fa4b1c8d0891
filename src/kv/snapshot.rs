//! The kv snapshot: the whole state machine at one slot as one self-checking byte string.
//!
//! The same bytes are the body of a WAL snapshot file, the payload of a snapshot transfer
//! between replicas and the file `mpaxos snapshot save` writes, so each of them can be checked
//! alone. Layout (`docs/internals/wal.md`, "kv snapshot"):
//!
//! ```text
//! [0..8)   magic "MPXKVS01"
//! [8..12)  crc32c of bytes [16..), little-endian
//! [12..16) zero
//! [16..)   rkyv archive of `Image` (validated on load, then checked for the kv invariants)
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use rkyv::{Archive, Deserialize, Serialize};

use super::{ClientRecord, KeyState, KvStore, Reply, KEY_BYTES_MAX};

const MAGIC: &[u8; 8] = b"MPXKVS01";
const HEADER_BYTES: usize = 16;

#[derive(Archive, Serialize, Deserialize, Debug)]
struct KeyImage {
    key: Bytes,
    value: Bytes,
    version: u64,
    create_revision: u64,
    mod_revision: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct ClientImage {
    client_id: u64,
    seq: u64,
    reply: Reply,
    last_active_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
struct Image {
    /// Every slot up to and including this one is applied.
    slot: u64,
    revision: u64,
    clock_ms: u64,
    session_idle_ms: u64,
    sessions_expired: u64,
    keys: Vec<KeyImage>,
    clients: Vec<ClientImage>,
}

/// What `snapshot status` reports about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotInfo {
    pub slot: u64,
    pub revision: u64,
    pub keys: u64,
    pub clients: u64,
    pub bytes: u64,
    pub crc32c: u32,
}

impl KvStore {
    /// The whole state as a snapshot at `slot` (the caller says which slot it has applied).
    pub fn encode_snapshot(&self, slot: u64) -> Vec<u8> {
        let image = Image {
            slot,
            revision: self.revision,
            clock_ms: self.clock_ms,
            session_idle_ms: self.session_idle_ms,
            sessions_expired: self.sessions_expired,
            keys: self
                .keys
                .iter()
                .map(|(k, s)| KeyImage {
                    key: k.clone(),
                    value: s.value.clone(),
                    version: s.version,
                    create_revision: s.create_revision,
                    mod_revision: s.mod_revision,
                })
                .collect(),
            clients: self
                .clients
                .iter()
                .map(|(id, c)| ClientImage {
                    client_id: *id,
                    seq: c.seq,
                    reply: c.reply.clone(),
                    last_active_ms: c.last_active_ms,
                })
                .collect(),
        };
        let body = rkyv::api::high::to_bytes::<rkyv::rancor::Error>(&image)
            .expect("serializing into memory cannot fail");
        let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&body);
        out
    }

    /// Checks and decodes a snapshot: the checksum, the archive's validity, then the kv's own
    /// invariants. Returns the slot it was taken at and the state.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, KvStore), String> {
        let image = decode_image(bytes)?;
        let mut keys = BTreeMap::new();
        for k in image.keys {
            let ok = k.key.len() <= KEY_BYTES_MAX
                && k.version >= 1
                && k.create_revision <= k.mod_revision
                && k.mod_revision <= image.revision;
            if !ok {
                return Err(format!(
                    "the snapshot holds an impossible key state for {:?}",
                    String::from_utf8_lossy(&k.key)
                ));
            }
            let state = KeyState {
                value: k.value,
                version: k.version,
                create_revision: k.create_revision,
                mod_revision: k.mod_revision,
            };
            if keys.insert(k.key, state).is_some() {
                return Err("the snapshot holds a key twice".into());
            }
        }
        let mut clients = BTreeMap::new();
        for c in image.clients {
            let record = ClientRecord {
                seq: c.seq,
                reply: c.reply,
                last_active_ms: c.last_active_ms,
            };
            if clients.insert(c.client_id, record).is_some() {
                return Err("the snapshot holds a client twice".into());
            }
        }
        let kv = KvStore {
            keys,
            revision: image.revision,
            clients,
            clock_ms: image.clock_ms,
            session_idle_ms: image.session_idle_ms,
            sessions_expired: image.sessions_expired,
        };
        Ok((image.slot, kv))
    }
}

fn decode_image(bytes: &[u8]) -> Result<Image, String> {
    if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
        return Err("not an mpaxos kv snapshot (bad magic)".into());
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let body = &bytes[HEADER_BYTES..];
    if crc32c::crc32c(body) != crc {
        return Err("the snapshot's checksum does not match: it is damaged or truncated".into());
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(body);
    let archived = crate::net::frame::access::<Image>(&aligned)
        .map_err(|e| format!("the snapshot does not decode ({e})"))?;
    rkyv::deserialize::<Image, rkyv::rancor::Error>(archived)
        .map_err(|e| format!("the snapshot does not decode ({e})"))
}

/// Checks a snapshot and describes it (without building the maps).
pub fn snapshot_info(bytes: &[u8]) -> Result<SnapshotInfo, String> {
    let crc = bytes
        .get(8..12)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0);
    let image = decode_image(bytes)?;
    Ok(SnapshotInfo {
        slot: image.slot,
        revision: image.revision,
        keys: image.keys.len() as u64,
        clients: image.clients.len() as u64,
        bytes: bytes.len() as u64,
        crc32c: crc,
    })
}

/// The crc32c of a whole snapshot byte string (what a transfer checks at the end).
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
