//! The replicated state machine: keys with per-key versions, a global revision, compare-and-swap
//! on version, and the exactly-once client table (architecture §4).
//!
//! Every replica applies the same commands in the same slot order, so everything here is
//! deterministic: ordered maps only, no clocks, no randomness. Malformed commands are
//! answered with an error reply (on every replica alike) rather than panicking.

mod command;

use std::collections::BTreeMap;

use bytes::Bytes;

pub use command::{DecodeError, Op, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// A key's current state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyState {
    pub value: Bytes,
    /// Puts since the key was created; deleting resets it (an absent key has version 0).
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// The answer to one command, identical on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ClientRecord {
    seq: u64,
    reply: Reply,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvStore {
    keys: BTreeMap<Bytes, KeyState>,
    /// Bumped by every command that changes a key.
    revision: u64,
    clients: BTreeMap<u64, ClientRecord>,
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

    /// Applies client `client_id`'s command number `seq` exactly once: a repeat of the client's
    /// latest sequence returns the recorded reply without applying again.
    pub fn apply(&mut self, client_id: u64, seq: u64, payload: &Bytes) -> Reply {
        if let Some(record) = self.clients.get(&client_id) {
            if seq == record.seq {
                return record.reply.clone();
            }
            if seq < record.seq {
                return Reply::Stale {
                    last_seq: record.seq,
                };
            }
        }
        let reply = match Op::decode(payload) {
            Ok(op) => self.apply_op(op),
            Err(err) => Reply::Invalid {
                reason: err.to_string(),
            },
        };
        self.clients.insert(
            client_id,
            ClientRecord {
                seq,
                reply: reply.clone(),
            },
        );
        reply
    }

    fn apply_op(&mut self, op: Op) -> Reply {
        match op {
            Op::Put { key, value } => {
                let version = self.write(key, value);
                Reply::Put {
                    revision: self.revision,
                    version,
                }
            }
            Op::Delete { key } => {
                let existed = self.keys.remove(&key).is_some();
                if existed {
                    self.revision += 1;
                }
                Reply::Delete {
                    revision: self.revision,
                    existed,
                }
            }
            Op::Cas {
                key,
                expected_version,
                value,
            } => {
                let current = self.keys.get(&key).map_or(0, |k| k.version);
                if current != expected_version {
                    return Reply::Cas {
                        ok: false,
                        revision: self.revision,
                        version: current,
                    };
                }
                let version = self.write(key, value);
                Reply::Cas {
                    ok: true,
                    revision: self.revision,
                    version,
                }
            }
            Op::Get { key } => self.get(&key),
        }
    }

    fn write(&mut self, key: Bytes, value: Bytes) -> u64 {
        self.revision += 1;
        let revision = self.revision;
        let state = self.keys.entry(key).or_insert(KeyState {
            value: Bytes::new(),
            version: 0,
            create_revision: revision,
            mod_revision: revision,
        });
        state.value = value;
        state.version += 1;
        state.mod_revision = revision;
        state.version
    }

    /// A local read of the applied state; linearizable only when the protocol said so.
    pub fn get(&self, key: &[u8]) -> Reply {
        match self.keys.get(key) {
            Some(state) => Reply::Get {
                value: Some(state.value.clone()),
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
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut hasher);
        hasher.finish()
    }
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
