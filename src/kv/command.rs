//! The kv command encoding carried as a protocol command's opaque payload.
//!
//! A tag byte, then fields: u64 little-endian, and byte strings as a u32 little-endian length
//! followed by the bytes. Decoding slices the shared `Bytes` instead of copying, and rejects
//! trailing bytes, unknown tags and over-limit sizes. (The wire layer frames whole messages
//! with rkyv; this inner payload stays a plain byte string so the protocol can stay generic.)

use bytes::{BufMut, Bytes, BytesMut};

pub const KEY_BYTES_MAX: usize = 4 * 1024;
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;
const TAG_GET: u8 = 4;
const TAG_CLOCK: u8 = 5;
const TAG_LEASE_HOLDERS: u8 = 6;

/// `Op::LeaseHolders`: every replica of the group holds a lease.
pub const LEASE_HOLDERS_ALL: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    Cas {
        key: Bytes,
        expected_version: u64,
        value: Bytes,
    },
    /// A read through the log (the read-index path needs no command; this exists for clients
    /// that ask for a read ordered with writes).
    Get {
        key: Bytes,
    },
    /// The leader's clock (Unix ms) and the session idle time, proposed by the cluster itself
    /// (client id 0) so that every replica expires the same sessions at the same slot.
    Clock {
        now_ms: u64,
        session_idle_ms: u64,
    },
    /// Quorum leases: the group's lease configuration from this slot on (bit i: replica i
    /// holds a lease; [`LEASE_HOLDERS_ALL`]: every replica). The node checks it before
    /// proposing it; the store only records it.
    LeaseHolders {
        holders: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    UnknownTag(u8),
    TooLarge {
        field: &'static str,
        bytes: usize,
        max: usize,
    },
    TrailingBytes(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "command is truncated"),
            DecodeError::UnknownTag(tag) => write!(f, "unknown command tag {tag}"),
            DecodeError::TooLarge { field, bytes, max } => {
                write!(f, "{field} is {bytes} bytes, over the limit of {max}")
            }
            DecodeError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the command"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Whether applying the encoded command `payload` may change `key`'s value or version, read
/// without decoding the whole command (quorum-lease holders ask it for every command they
/// hold but have not applied, on each local read: protocol.md §8, "Key-narrowed wait").
/// A payload it cannot read answers true. A command that may change keys it does not name
/// (none today) must answer true here.
pub fn may_change_key(payload: &[u8], key: &[u8]) -> bool {
    match payload.first() {
        Some(&(TAG_PUT | TAG_DELETE | TAG_CAS)) => {
            let named = payload
                .get(1..5)
                .map(|l| u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize)
                .and_then(|len| payload.get(5..5usize.checked_add(len)?));
            named.map_or(true, |named| named == key)
        }
        // A read through the log, the replicated clock (session expiry) and the lease
        // configuration change no key.
        Some(&(TAG_GET | TAG_CLOCK | TAG_LEASE_HOLDERS)) => false,
        _ => true,
    }
}

impl Op {
    /// The key the command touches (none for a clock command).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } | Op::Get { key } => {
                Some(key)
            }
            Op::Clock { .. } | Op::LeaseHolders { .. } => None,
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        match self {
            Op::Put { key, value } => {
                buf.put_u8(TAG_PUT);
                put_bytes(&mut buf, key);
                put_bytes(&mut buf, value);
            }
            Op::Delete { key } => {
                buf.put_u8(TAG_DELETE);
                put_bytes(&mut buf, key);
            }
            Op::Cas {
                key,
                expected_version,
                value,
            } => {
                buf.put_u8(TAG_CAS);
                put_bytes(&mut buf, key);
                buf.put_u64_le(*expected_version);
                put_bytes(&mut buf, value);
            }
            Op::Get { key } => {
                buf.put_u8(TAG_GET);
                put_bytes(&mut buf, key);
            }
            Op::Clock {
                now_ms,
                session_idle_ms,
            } => {
                buf.put_u8(TAG_CLOCK);
                buf.put_u64_le(*now_ms);
                buf.put_u64_le(*session_idle_ms);
            }
            Op::LeaseHolders { holders } => {
                buf.put_u8(TAG_LEASE_HOLDERS);
                buf.put_u64_le(*holders);
            }
        }
        buf.freeze()
    }

    fn encoded_len(&self) -> usize {
        1 + match self {
            Op::Put { key, value } => 8 + key.len() + value.len(),
            Op::Delete { key } | Op::Get { key } => 4 + key.len(),
            Op::Cas { key, value, .. } => 16 + key.len() + value.len(),
            Op::Clock { .. } => 16,
            Op::LeaseHolders { .. } => 8,
        }
    }

    pub fn decode(payload: &Bytes) -> Result<Op, DecodeError> {
        let share = |field: &[u8]| payload.slice_ref(field);
        Ok(match OpRef::decode(payload)? {
            OpRef::Put { key, value } => Op::Put {
                key: share(key),
                value: share(value),
            },
            OpRef::Delete { key } => Op::Delete { key: share(key) },
            OpRef::Cas {
                key,
                expected_version,
                value,
            } => Op::Cas {
                key: share(key),
                expected_version,
                value: share(value),
            },
            OpRef::Get { key } => Op::Get { key: share(key) },
            OpRef::Clock {
                now_ms,
                session_idle_ms,
            } => Op::Clock {
                now_ms,
                session_idle_ms,
            },
            OpRef::LeaseHolders { holders } => Op::LeaseHolders { holders },
        })
    }
}

/// A command read in place: its key and value borrow the encoded payload (the state machine
/// copies what it keeps, and shares the payload only for long values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpRef<'a> {
    Put {
        key: &'a [u8],
        value: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    Cas {
        key: &'a [u8],
        expected_version: u64,
        value: &'a [u8],
    },
    Get {
        key: &'a [u8],
    },
    Clock {
        now_ms: u64,
        session_idle_ms: u64,
    },
    LeaseHolders {
        holders: u64,
    },
}

impl<'a> OpRef<'a> {
    pub fn decode(payload: &'a [u8]) -> Result<OpRef<'a>, DecodeError> {
        let mut reader = Reader {
            buf: payload,
            at: 0,
        };
        let op = match reader.u8()? {
            TAG_PUT => OpRef::Put {
                key: reader.bytes("key", KEY_BYTES_MAX)?,
                value: reader.bytes("value", VALUE_BYTES_MAX)?,
            },
            TAG_DELETE => OpRef::Delete {
                key: reader.bytes("key", KEY_BYTES_MAX)?,
            },
            TAG_CAS => OpRef::Cas {
                key: reader.bytes("key", KEY_BYTES_MAX)?,
                expected_version: reader.u64()?,
                value: reader.bytes("value", VALUE_BYTES_MAX)?,
            },
            TAG_GET => OpRef::Get {
                key: reader.bytes("key", KEY_BYTES_MAX)?,
            },
            TAG_CLOCK => OpRef::Clock {
                now_ms: reader.u64()?,
                session_idle_ms: reader.u64()?,
            },
            TAG_LEASE_HOLDERS => OpRef::LeaseHolders {
                holders: reader.u64()?,
            },
            tag => return Err(DecodeError::UnknownTag(tag)),
        };
        match payload.len() - reader.at {
            0 => Ok(op),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

fn put_bytes(buf: &mut BytesMut, bytes: &Bytes) {
    let len = u32::try_from(bytes.len()).expect("field length fits u32");
    buf.put_u32_le(len);
    buf.put_slice(bytes);
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        if end > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let range = self.at..end;
        self.at = end;
        Ok(range)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let r = self.take(1)?;
        Ok(self.buf[r.start])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let r = self.take(4)?;
        Ok(u32::from_le_bytes(self.buf[r].try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let r = self.take(8)?;
        Ok(u64::from_le_bytes(self.buf[r].try_into().expect("8 bytes")))
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge {
                field,
                bytes: len,
                max,
            });
        }
        let r = self.take(len)?;
        Ok(&self.buf[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn may_change_key_reads_the_key_without_decoding() {
        let k = Bytes::from_static(b"alpha");
        let other = Bytes::from_static(b"beta");
        let v = Bytes::from_static(b"v");
        for op in [
            Op::Put {
                key: k.clone(),
                value: v.clone(),
            },
            Op::Delete { key: k.clone() },
            Op::Cas {
                key: k.clone(),
                expected_version: 3,
                value: v.clone(),
            },
        ] {
            let p = op.encode();
            assert!(may_change_key(&p, b"alpha"), "{op:?}");
            assert!(!may_change_key(&p, b"beta"), "{op:?}");
            assert!(!may_change_key(&p, b"alph"), "{op:?}");
            // Cut short: cannot tell, so yes.
            assert!(may_change_key(&p[..4], b"beta"), "{op:?}");
        }
        for op in [
            Op::Get { key: other },
            Op::Clock {
                now_ms: 1,
                session_idle_ms: 2,
            },
            Op::LeaseHolders { holders: 1 },
        ] {
            assert!(!may_change_key(&op.encode(), b"alpha"), "{op:?}");
        }
        assert!(may_change_key(&[], b"alpha"));
        assert!(may_change_key(&[99, 0, 0], b"alpha"));
    }

    #[test]
    fn round_trip_every_op() {
        let key = Bytes::from_static(b"config/a");
        let value = Bytes::from_static(b"v1");
        let ops = [
            Op::Put {
                key: key.clone(),
                value: value.clone(),
            },
            Op::Delete { key: key.clone() },
            Op::Cas {
                key: key.clone(),
                expected_version: 42,
                value,
            },
            Op::Get { key },
            Op::Clock {
                now_ms: 1_700_000_000_000,
                session_idle_ms: 3_600_000,
            },
            Op::LeaseHolders { holders: 0b101 },
        ];
        for op in ops {
            assert_eq!(Op::decode(&op.encode()), Ok(op));
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Op::decode(&Bytes::new()), Err(DecodeError::Truncated));
        assert_eq!(
            Op::decode(&Bytes::from_static(&[9])),
            Err(DecodeError::UnknownTag(9))
        );
        let mut long = Op::Delete {
            key: Bytes::from_static(b"k"),
        }
        .encode()
        .to_vec();
        long.push(0);
        assert_eq!(
            Op::decode(&Bytes::from(long)),
            Err(DecodeError::TrailingBytes(1))
        );
        let huge = [&[TAG_DELETE][..], &u32::MAX.to_le_bytes()[..]].concat();
        assert!(matches!(
            Op::decode(&Bytes::from(huge)),
            Err(DecodeError::TooLarge { .. })
        ));
        // Every prefix of a valid command is an error, never a panic.
        let valid = Op::Cas {
            key: Bytes::from_static(b"key"),
            expected_version: 1,
            value: Bytes::from_static(b"value"),
        }
        .encode();
        for cut in 0..valid.len() {
            assert!(
                Op::decode(&valid.slice(..cut)).is_err(),
                "prefix of {cut} bytes"
            );
        }
    }
}
