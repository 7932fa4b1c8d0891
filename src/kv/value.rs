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

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

/// Values up to this long live inside the index slot.
pub const INLINE_VALUE_BYTES: usize = 64;

/// A key's value as the index stores it.
pub type StoredValue = InlineBytes<INLINE_VALUE_BYTES>;

/// Bytes kept inline when there are at most `N` of them, else in a shared buffer: the index's
/// values ([`StoredValue`]) and its keys (`keys::IndexKey`). Hashes, compares and orders as
/// its bytes (so a map of them is searched with a `&[u8]`, and digests are those of `Bytes`).
#[derive(Clone)]
pub enum InlineBytes<const N: usize> {
    Inline { len: u8, bytes: [u8; N] },
    Shared(Bytes),
}

impl<const N: usize> InlineBytes<N> {
    /// `value`, inline if it is short, else the `Bytes` `share` returns (which must hold
    /// the same bytes: typically the command's payload, sliced, so a long value is not copied).
    pub fn new(value: &[u8], share: impl FnOnce() -> Bytes) -> Self {
        if value.len() <= N {
            Self::inline(value)
        } else {
            let shared = share();
            debug_assert_eq!(&shared[..], value);
            InlineBytes::Shared(shared)
        }
    }

    /// A copy of `value` (inline if it is short).
    pub fn copied(value: &[u8]) -> Self {
        Self::new(value, || Bytes::copy_from_slice(value))
    }

    /// At most `N` bytes.
    fn inline(value: &[u8]) -> Self {
        let mut bytes = [0; N];
        bytes[..value.len()].copy_from_slice(value);
        InlineBytes::Inline {
            len: value.len() as u8,
            bytes,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            InlineBytes::Inline { len, bytes } => &bytes[..*len as usize],
            InlineBytes::Shared(b) => b,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes as `Bytes` (a copy of inline ones; shared ones are shared).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            InlineBytes::Inline { .. } => Bytes::copy_from_slice(self.as_slice()),
            InlineBytes::Shared(b) => b.clone(),
        }
    }
}

impl<const N: usize> Default for InlineBytes<N> {
    fn default() -> Self {
        Self::inline(&[])
    }
}

impl<const N: usize> From<Bytes> for InlineBytes<N> {
    fn from(b: Bytes) -> Self {
        if b.len() <= N {
            Self::inline(&b)
        } else {
            InlineBytes::Shared(b)
        }
    }
}

impl<const N: usize> std::fmt::Debug for InlineBytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Bytes::copy_from_slice(self.as_slice()).fmt(f)
    }
}

// `Borrow` requires hashing, equality and order to agree with `[u8]`'s.
impl<const N: usize> Borrow<[u8]> for InlineBytes<N> {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl<const N: usize> Hash for InlineBytes<N> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl<const N: usize> PartialEq for InlineBytes<N> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<const N: usize> Eq for InlineBytes<N> {}

impl<const N: usize> Ord for InlineBytes<N> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl<const N: usize> PartialOrd for InlineBytes<N> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
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
