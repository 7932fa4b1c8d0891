//! A key's value as the index stores it: short values inside the index slot, longer ones in a
//! shared buffer.
//!
//! Every replica applies every put, and overwriting a value that lives in its own allocation
//! releases that allocation: with ~100,000 keys that is a cache miss on the old buffer's
//! header (and, for a `Bytes` sharing the command's payload, on the shared header too) on
//! every put — 6 % of the servers' CPU at 64 clients (perf, results/anatomy.md). A value of
//! up to [`INLINE_VALUE_BYTES`] bytes (flags, addresses, versions, small JSON; the benchmark's
//! default of 64) is copied into the slot the lookup already brought into the cache, and
//! overwriting it frees nothing.

use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// Values up to this long live inside the index slot.
pub const INLINE_VALUE_BYTES: usize = 64;

#[derive(Clone)]
pub enum StoredValue {
    Inline {
        len: u8,
        bytes: [u8; INLINE_VALUE_BYTES],
    },
    Shared(Bytes),
}

impl StoredValue {
    /// `value`, inline if it is short, else the `Bytes` `share` returns (which must hold
    /// the same bytes: typically the command's payload, sliced, so a long value is not copied).
    pub fn new(value: &[u8], share: impl FnOnce() -> Bytes) -> StoredValue {
        if value.len() <= INLINE_VALUE_BYTES {
            let mut bytes = [0; INLINE_VALUE_BYTES];
            bytes[..value.len()].copy_from_slice(value);
            StoredValue::Inline {
                len: value.len() as u8,
                bytes,
            }
        } else {
            let shared = share();
            debug_assert_eq!(&shared[..], value);
            StoredValue::Shared(shared)
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            StoredValue::Inline { len, bytes } => &bytes[..*len as usize],
            StoredValue::Shared(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value as `Bytes` (a copy of an inline value; a long one is shared).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            StoredValue::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            StoredValue::Shared(b) => b.clone(),
        }
    }
}

impl Default for StoredValue {
    fn default() -> Self {
        StoredValue::new(&[], Bytes::new)
    }
}

impl From<Bytes> for StoredValue {
    fn from(b: Bytes) -> Self {
        StoredValue::new(&b.clone(), || b)
    }
}

impl std::fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Bytes::copy_from_slice(self.as_slice()).fmt(f)
    }
}

impl PartialEq for StoredValue {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for StoredValue {}

/// Hashes as the `Bytes` it replaced (its bytes as a slice), so state digests did not change.
impl Hash for StoredValue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kv::digest_of as digest;

    #[test]
    fn short_values_are_inline_long_ones_shared_and_both_read_back() {
        for n in [
            0,
            1,
            INLINE_VALUE_BYTES - 1,
            INLINE_VALUE_BYTES,
            INLINE_VALUE_BYTES + 1,
            4096,
        ] {
            let bytes = Bytes::from((0..n).map(|i| i as u8).collect::<Vec<_>>());
            let v = StoredValue::from(bytes.clone());
            assert_eq!(v.as_slice(), &bytes[..], "{n} bytes");
            assert_eq!(v.to_bytes(), bytes);
            assert_eq!(v.len(), n);
            assert_eq!(
                matches!(v, StoredValue::Inline { .. }),
                n <= INLINE_VALUE_BYTES,
                "{n} bytes"
            );
            // Digests of the state are unchanged from when values were `Bytes`.
            assert_eq!(digest(&v), digest(&bytes), "{n} bytes");
        }
    }

    #[test]
    fn a_long_value_shares_the_buffer_it_is_given() {
        let payload = Bytes::from(vec![7u8; 1000]);
        let v = StoredValue::new(&payload[10..500], || payload.slice(10..500));
        match v {
            StoredValue::Shared(b) => assert_eq!(b.as_ptr(), payload[10..].as_ptr()),
            StoredValue::Inline { .. } => panic!("490 bytes are not inline"),
        }
    }
}
