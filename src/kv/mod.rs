//! The replicated state machine: keys with per-key versions, a global revision, compare-and-swap
//! on version, and the exactly-once client table (architecture §4).
//!
//! Every replica applies the same commands in the same slot order, so everything here is
//! deterministic: ordered maps only, no clocks, no randomness. Malformed commands are
//! answered with an error reply (on every replica alike) rather than panicking.

mod command;
mod hugepages;
mod keys;
pub mod snapshot;
mod value;

use std::collections::BTreeMap;

use bytes::Bytes;

use command::OpRef;
pub use command::{
    may_change_key, DecodeError, Op, KEY_BYTES_MAX, LEASE_HOLDERS_ALL, VALUE_BYTES_MAX,
};
pub use snapshot::{snapshot_info, SnapshotInfo};
pub use value::{StoredValue, INLINE_VALUE_BYTES};

/// The client id of commands the cluster itself proposes (the leader's clock); client
/// libraries never use it, and it has no entry in the client table.
pub const SYSTEM_CLIENT_ID: u64 = 0;

/// A key's current state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyState {
    pub value: StoredValue,
    /// Puts since the key was created; deleting resets it (an absent key has version 0).
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// The answer to one command, identical on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Reply {
    Put {
        revision: u64,
        version: u64,
    },
    Delete {
        revision: u64,
        existed: bool,
    },
    /// `version` is the key's version after the command: the new one if `ok`, else the current.
    Cas {
        ok: bool,
        revision: u64,
        version: u64,
    },
    Get {
        value: Option<Bytes>,
        version: u64,
        mod_revision: u64,
    },
    /// The command could not be decoded; nothing changed.
    Invalid {
        reason: String,
    },
    /// A retry of a command older than the client's last one; its reply is gone.
    Stale {
        last_seq: u64,
    },
    /// The client's session is unknown here and the command is not its first (seq 1): the
    /// session expired (idle longer than the session idle time), so whether an earlier try
    /// of this command was applied can no longer be told. Nothing changed; the client must
    /// start a new session (a new client id).
    SessionExpired,
    /// A command of the cluster itself (the leader's clock).
    System,
    /// The lease configuration was set to `holders` (bit mask; `LEASE_HOLDERS_ALL`: all).
    LeaseHolders {
        holders: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientRecord {
    seq: u64,
    reply: Reply,
    /// The replicated clock (`KvStore::clock_ms`) when the client's last command was applied.
    last_active_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvStore {
    keys: keys::Keys,
    /// Bumped by every command that changes a key.
    revision: u64,
    clients: BTreeMap<u64, ClientRecord>,
    /// The replicated clock: the highest leader time (Unix ms) applied from a clock command.
    /// It is part of the state, so every replica expires the same sessions at the same slot.
    clock_ms: u64,
    /// The session idle time the last clock command carried (0: sessions never expire).
    session_idle_ms: u64,
    /// Sessions expired so far (statistics).
    sessions_expired: u64,
    /// Quorum leases: the lease configuration the log set last (bit mask,
    /// `LEASE_HOLDERS_ALL` for every replica); `None`: the initial one from `cluster.toml`.
    lease_holders: Option<u64>,
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Drops the client table (only the simulator's injected bug does this).
    #[doc(hidden)]
    pub fn forget_clients(&mut self) {
        self.clients.clear();
    }

    /// Sessions in the client table.
    pub fn sessions(&self) -> usize {
        self.clients.len()
    }

    /// Sessions expired since the cluster started.
    pub fn sessions_expired(&self) -> u64 {
        self.sessions_expired
    }

    /// Quorum leases: the lease configuration the log set last (`None`: never set; the
    /// initial configuration applies).
    pub fn lease_holders(&self) -> Option<u64> {
        self.lease_holders
    }

    /// The replicated clock, Unix ms (0 until the first clock command).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Applies client `client_id`'s command number `seq` exactly once: a repeat of the client's
    /// latest sequence returns the recorded reply without applying again.
    ///
    /// Sessions: a client unknown here starts a session with its first command (seq 1). A
    /// session idle for longer than the session idle time is dropped at the next clock command
    /// (see [`KvStore::apply_clock`]); after that, any command of that client other than seq 1
    /// is answered [`Reply::SessionExpired`] and not applied, so a late retry is never applied
    /// a second time.
    pub fn apply(&mut self, client_id: u64, seq: u64, payload: &Bytes) -> Reply {
        if client_id == SYSTEM_CLIENT_ID {
            return match OpRef::decode(payload) {
                Ok(OpRef::Clock {
                    now_ms,
                    session_idle_ms,
                }) => {
                    self.apply_clock(now_ms, session_idle_ms);
                    Reply::System
                }
                Ok(OpRef::LeaseHolders { holders }) => {
                    self.set_lease_holders(holders);
                    Reply::System
                }
                Ok(_) => Reply::Invalid {
                    reason: "client id 0 is reserved for the cluster's own commands".into(),
                },
                Err(err) => Reply::Invalid {
                    reason: err.to_string(),
                },
            };
        }
        match self.clients.get_mut(&client_id) {
            Some(record) => {
                if seq == record.seq {
                    return record.reply.clone();
                }
                if seq < record.seq {
                    return Reply::Stale {
                        last_seq: record.seq,
                    };
                }
            }
            // With expiry off (no clock command set an idle time) nothing was ever dropped.
            None if seq > 1 && self.session_idle_ms > 0 => return Reply::SessionExpired,
            None => {}
        }
        let reply = match OpRef::decode(payload) {
            Ok(OpRef::Clock { .. }) => Reply::Invalid {
                reason: "clock commands come from the cluster only".into(),
            },
            Ok(op) => self.apply_op(op, payload),
            Err(err) => Reply::Invalid {
                reason: err.to_string(),
            },
        };
        self.clients.insert(
            client_id,
            ClientRecord {
                seq,
                reply: reply.clone(),
                last_active_ms: self.clock_ms,
            },
        );
        reply
    }

    /// The leader's clock, through the log: moves the replicated clock forward (never back)
    /// and drops every session idle for more than `session_idle_ms` (0: keep all).
    fn apply_clock(&mut self, now_ms: u64, session_idle_ms: u64) {
        if self.clock_ms == 0 {
            // The first clock: sessions opened before it were active "at 0", which is not
            // decades ago. Count them active now.
            for c in self.clients.values_mut() {
                c.last_active_ms = now_ms;
            }
        }
        self.clock_ms = self.clock_ms.max(now_ms);
        self.session_idle_ms = session_idle_ms;
        if session_idle_ms == 0 {
            return;
        }
        let clock_ms = self.clock_ms;
        let before = self.clients.len();
        self.clients
            .retain(|_, c| c.last_active_ms.saturating_add(session_idle_ms) >= clock_ms);
        self.sessions_expired += (before - self.clients.len()) as u64;
    }

    fn set_lease_holders(&mut self, holders: u64) {
        self.lease_holders = Some(holders);
    }

    fn apply_op(&mut self, op: OpRef, payload: &Bytes) -> Reply {
        match op {
            OpRef::LeaseHolders { holders } => {
                self.set_lease_holders(holders);
                Reply::LeaseHolders { holders }
            }
            OpRef::Put { key, value } => {
                let version = self.write(key, value, payload);
                Reply::Put {
                    revision: self.revision,
                    version,
                }
            }
            OpRef::Delete { key } => {
                let existed = self.keys.remove(key).is_some();
                if existed {
                    self.revision += 1;
                }
                Reply::Delete {
                    revision: self.revision,
                    existed,
                }
            }
            OpRef::Cas {
                key,
                expected_version,
                value,
            } => {
                let current = self.keys.get(key).map_or(0, |k| k.version);
                if current != expected_version {
                    return Reply::Cas {
                        ok: false,
                        revision: self.revision,
                        version: current,
                    };
                }
                let version = self.write(key, value, payload);
                Reply::Cas {
                    ok: true,
                    revision: self.revision,
                    version,
                }
            }
            OpRef::Get { key } => self.get(key),
            OpRef::Clock { .. } => unreachable!("clock commands are applied by apply_clock"),
        }
    }

    /// Sets `key` to `value` (both inside the command's `payload`, which a long value shares).
    fn write(&mut self, key: &[u8], value: &[u8], payload: &Bytes) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let state = self.keys.get_or_insert_with(key, || KeyState {
            value: StoredValue::default(),
            version: 0,
            create_revision: revision,
            mod_revision: revision,
        });
        state.value = StoredValue::new(value, || payload.slice_ref(value));
        state.version += 1;
        state.mod_revision = revision;
        state.version
    }

    /// A local read of the applied state; linearizable only when the protocol said so.
    pub fn get(&self, key: &[u8]) -> Reply {
        match self.keys.get(key) {
            Some(state) => Reply::Get {
                value: Some(state.value.to_bytes()),
                version: state.version,
                mod_revision: state.mod_revision,
            },
            None => Reply::Get {
                value: None,
                version: 0,
                mod_revision: 0,
            },
        }
    }

    /// A digest of the whole state (keys, revision and client table), for comparing replicas.
    pub fn digest(&self) -> u64 {
        digest_of(self)
    }
}

/// The digest [`KvStore::digest`] takes, of anything hashable (tests compare parts with it).
pub(crate) fn digest_of(h: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    h.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Bytes {
        Op::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
        .encode()
    }

    fn cas(k: &str, expected_version: u64, v: &str) -> Bytes {
        Op::Cas {
            key: Bytes::copy_from_slice(k.as_bytes()),
            expected_version,
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
        .encode()
    }

    fn del(k: &str) -> Bytes {
        Op::Delete {
            key: Bytes::copy_from_slice(k.as_bytes()),
        }
        .encode()
    }

    #[test]
    fn versions_and_revisions() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.apply(1, 1, &put("a", "x")),
            Reply::Put {
                revision: 1,
                version: 1
            }
        );
        assert_eq!(
            kv.apply(1, 2, &put("a", "y")),
            Reply::Put {
                revision: 2,
                version: 2
            }
        );
        assert_eq!(
            kv.apply(1, 3, &put("b", "z")),
            Reply::Put {
                revision: 3,
                version: 1
            }
        );
        assert_eq!(
            kv.get(b"a"),
            Reply::Get {
                value: Some(Bytes::from_static(b"y")),
                version: 2,
                mod_revision: 2
            }
        );
        assert_eq!(
            kv.apply(1, 4, &del("a")),
            Reply::Delete {
                revision: 4,
                existed: true
            }
        );
        assert_eq!(
            kv.apply(1, 5, &del("a")),
            Reply::Delete {
                revision: 4,
                existed: false
            }
        );
        assert_eq!(
            kv.get(b"a"),
            Reply::Get {
                value: None,
                version: 0,
                mod_revision: 0
            }
        );
        // A re-created key starts again at version 1.
        assert_eq!(
            kv.apply(1, 6, &put("a", "w")),
            Reply::Put {
                revision: 5,
                version: 1
            }
        );
    }

    #[test]
    fn compare_and_swap_on_version() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.apply(1, 1, &cas("k", 1, "x")),
            Reply::Cas {
                ok: false,
                revision: 0,
                version: 0
            }
        );
        assert_eq!(
            kv.apply(1, 2, &cas("k", 0, "x")),
            Reply::Cas {
                ok: true,
                revision: 1,
                version: 1
            }
        );
        assert_eq!(
            kv.apply(1, 3, &cas("k", 0, "y")),
            Reply::Cas {
                ok: false,
                revision: 1,
                version: 1
            }
        );
        assert_eq!(
            kv.apply(1, 4, &cas("k", 1, "y")),
            Reply::Cas {
                ok: true,
                revision: 2,
                version: 2
            }
        );
    }

    #[test]
    fn exactly_once_per_client() {
        let mut kv = KvStore::new();
        let first = kv.apply(7, 1, &put("a", "x"));
        assert_eq!(
            kv.apply(7, 1, &put("a", "x")),
            first,
            "a retry gets the recorded reply"
        );
        assert_eq!(kv.revision(), 1, "and is not applied twice");
        kv.apply(7, 2, &put("a", "y"));
        assert_eq!(kv.apply(7, 1, &put("a", "x")), Reply::Stale { last_seq: 2 });
        assert_eq!(kv.revision(), 2);
        // Another client's sequence numbers are independent.
        assert_eq!(
            kv.apply(8, 1, &put("a", "z")),
            Reply::Put {
                revision: 3,
                version: 3
            }
        );
    }

    #[test]
    fn malformed_command_changes_nothing() {
        let mut kv = KvStore::new();
        let reply = kv.apply(1, 1, &Bytes::from_static(&[0xff, 1, 2]));
        assert!(matches!(reply, Reply::Invalid { .. }));
        assert_eq!(kv.revision(), 0);
        assert!(kv.is_empty());
    }

    fn clock(now_ms: u64, session_idle_ms: u64) -> Bytes {
        Op::Clock {
            now_ms,
            session_idle_ms,
        }
        .encode()
    }

    #[test]
    fn snapshot_round_trip_keeps_everything() {
        let mut kv = KvStore::new();
        kv.apply(SYSTEM_CLIENT_ID, 0, &clock(1_000, 60_000));
        kv.apply(1, 1, &put("a", "x"));
        kv.apply(1, 2, &put("a", "y"));
        kv.apply(2, 1, &put("b", "z"));
        kv.apply(2, 2, &del("b"));
        kv.apply(3, 1, &cas("c", 0, "w"));
        let bytes = kv.encode_snapshot(42);
        let (slot, back) = KvStore::decode_snapshot(&bytes).expect("decodes");
        assert_eq!(slot, 42);
        assert_eq!(back, kv, "keys, revisions, clients and clock all survive");
        assert_eq!(back.digest(), kv.digest());
        // The client table came along: a retry is answered, not applied again.
        let mut back = back;
        assert_eq!(
            back.apply(1, 2, &put("a", "y")),
            kv.clone().apply(1, 2, &put("a", "y"))
        );
        assert_eq!(back.revision(), kv.revision());
        let info = snapshot_info(&bytes).unwrap();
        assert_eq!((info.slot, info.keys, info.clients), (42, 2, 3));
        assert_eq!(info.revision, kv.revision());
        assert_eq!(info.bytes, bytes.len() as u64);
    }

    #[test]
    fn damaged_snapshots_are_refused() {
        let mut kv = KvStore::new();
        kv.apply(1, 1, &put("a", "x"));
        let bytes = kv.encode_snapshot(7);
        for at in [0, 9, 16, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(KvStore::decode_snapshot(&bad).is_err(), "flip at byte {at}");
        }
        for cut in [0, 10, 16, bytes.len() - 1] {
            assert!(
                KvStore::decode_snapshot(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn sessions_expire_after_the_idle_time_and_late_retries_are_refused() {
        let mut kv = KvStore::new();
        kv.apply(SYSTEM_CLIENT_ID, 0, &clock(10_000, 5_000));
        kv.apply(1, 1, &put("a", "x"));
        kv.apply(1, 2, &put("a", "y"));
        kv.apply(2, 1, &put("b", "x"));
        kv.apply(SYSTEM_CLIENT_ID, 0, &clock(14_000, 5_000));
        kv.apply(2, 2, &put("b", "y")); // client 2 stays active
        assert_eq!(kv.sessions(), 2, "nobody idle for 5 s yet");
        kv.apply(SYSTEM_CLIENT_ID, 0, &clock(16_000, 5_000));
        assert_eq!(kv.sessions(), 1, "client 1, idle for 6 s, expired");
        assert_eq!(kv.sessions_expired(), 1);
        let revision = kv.revision();
        // A late retry of client 1's last write, or its next one, is refused, not applied.
        assert_eq!(kv.apply(1, 2, &put("a", "y")), Reply::SessionExpired);
        assert_eq!(kv.apply(1, 3, &put("a", "z")), Reply::SessionExpired);
        assert_eq!(kv.revision(), revision);
        assert_eq!(kv.sessions(), 1, "a refused command opens no session");
        // The clock never goes back.
        kv.apply(SYSTEM_CLIENT_ID, 0, &clock(1, 5_000));
        assert_eq!(kv.clock_ms(), 16_000);
        // Clients cannot forge clock commands, and client 0 takes nothing else.
        assert!(matches!(
            kv.apply(9, 1, &clock(99_999, 1)),
            Reply::Invalid { .. }
        ));
        assert_eq!(kv.clock_ms(), 16_000);
        assert!(matches!(
            kv.apply(SYSTEM_CLIENT_ID, 0, &put("k", "v")),
            Reply::Invalid { .. }
        ));
        assert_eq!(kv.revision(), revision);
    }

    /// Found by the real-process snapshot test: sessions opened before the first clock
    /// command were stamped 0 and expired at once when the Unix-time clock arrived.
    #[test]
    fn sessions_from_before_the_first_clock_are_not_expired_by_it() {
        let mut kv = KvStore::new();
        kv.apply(1, 1, &put("a", "x"));
        kv.apply(SYSTEM_CLIENT_ID, 0, &clock(1_764_000_000_000, 3_600_000));
        assert_eq!(kv.sessions(), 1);
        assert!(matches!(kv.apply(1, 2, &put("a", "y")), Reply::Put { .. }));
    }

    #[test]
    fn without_expiry_an_unknown_client_may_start_at_any_seq() {
        let mut kv = KvStore::new();
        assert!(matches!(kv.apply(5, 7, &put("a", "x")), Reply::Put { .. }));
    }

    #[test]
    fn digest_tracks_state() {
        let mut a = KvStore::new();
        let mut b = KvStore::new();
        a.apply(1, 1, &put("k", "v"));
        assert_ne!(a.digest(), b.digest());
        b.apply(1, 1, &put("k", "v"));
        assert_eq!(a.digest(), b.digest());
    }
}
