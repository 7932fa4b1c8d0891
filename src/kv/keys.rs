//! The key index: a hash map for point reads and writes, with the keys' order kept beside it
//! for what needs it (snapshots, the state digest, range reads later).
//!
//! Overwriting a key — most writes of a config store, and of every benchmark — touches only the
//! hash map. A `BTreeMap<Bytes, _>` alone paid a B-tree descent per write on every replica, each
//! step a `memcmp` through a pointer to the key's heap bytes: a quarter of the servers' CPU at
//! 64 clients (perf, results/anatomy.md). Creating or deleting a key also updates the order.
//!
//! The hash map keeps keys of up to [`INLINE_KEY_BYTES`] bytes in its own slots
//! ([`IndexKey`]), so finding one compares bytes already loaded with the slot instead of
//! following a pointer to the key's heap bytes (one cache miss less per lookup over a large
//! key set; `memcmp` on that pointer was 7 % of the servers' CPU at 64 clients).
//!
//! The map is hashbrown's with its default hasher (foldhash: a few instructions per short key
//! where std's SipHash took tens), and its table sits on transparent huge pages
//! ([`super::hugepages`]): probing it was still the largest user-space cost of a put, most of
//! it TLB misses over a table of ~18 MB per replica (perf: 13.7 → 9.4 % of the servers' CPU,
//! results/anatomy.md, fourth pass). The map's iteration order is not part of the state: `iter`
//! goes by the order set, and a snapshot sorts the image it takes with `iter_unordered`.

use std::collections::BTreeSet;

use hashbrown::hash_map::{Entry, EntryRef};
use hashbrown::{DefaultHashBuilder, HashMap};

use super::hugepages::HugePageAlloc;
use std::hash::{Hash, Hasher};

use bytes::Bytes;

use super::value::InlineBytes;
use super::KeyState;

/// Keys up to this long live inside the hash map's slots (the enum is 40 bytes either way).
pub const INLINE_KEY_BYTES: usize = 38;

/// A key as the hash map and the order set hold it: short keys inline, longer ones in a
/// shared buffer. Hashes and compares as its bytes, so both are searched with a `&[u8]`.
type IndexKey = InlineBytes<INLINE_KEY_BYTES>;

#[derive(Clone, Debug, Default)]
pub struct Keys {
    map: HashMap<IndexKey, KeyState, DefaultHashBuilder, HugePageAlloc>,
    /// The keys in order, kept like the map's (short ones inline), so comparing two while
    /// descending the tree reads bytes already in the node instead of following a pointer
    /// to each: creating a key cost ~17 such cache misses, 10 % of the servers' CPU while a
    /// benchmark was still creating its keys (results/anatomy.md, fourth pass).
    order: BTreeSet<IndexKey>,
}

impl Keys {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Option<&KeyState> {
        self.map.get(key)
    }

    /// Adds a key; returns its previous state, if it had one.
    pub fn insert(&mut self, key: Bytes, state: KeyState) -> Option<KeyState> {
        match self.map.entry(IndexKey::from(key)) {
            Entry::Occupied(mut o) => Some(std::mem::replace(o.get_mut(), state)),
            Entry::Vacant(v) => {
                self.order.insert(v.key().clone());
                v.insert(state);
                None
            }
        }
    }

    /// The key's state, created by `new` if the key is absent (its bytes copied: the index
    /// does not keep the command that created it alive). One probe, by the key's bytes: an
    /// `IndexKey` is built only for a new key.
    pub fn get_or_insert_with(
        &mut self,
        key: &[u8],
        new: impl FnOnce() -> KeyState,
    ) -> &mut KeyState {
        match self.map.entry_ref(key) {
            EntryRef::Occupied(o) => o.into_mut(),
            EntryRef::Vacant(v) => {
                let key = IndexKey::copied(key);
                self.order.insert(key.clone());
                v.insert_entry_with_key(key, new()).into_mut()
            }
        }
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<KeyState> {
        let state = self.map.remove(key)?;
        self.order.remove(key);
        Some(state)
    }

    /// Every key in the hash map's order (a sequential scan: no lookups).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&[u8], &KeyState)> {
        self.map.iter().map(|(k, s)| (k.as_slice(), s))
    }

    /// Every key in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &KeyState)> {
        self.order
            .iter()
            .map(|k| (k.as_slice(), &self.map[k.as_slice()]))
    }
}

impl PartialEq for Keys {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl Eq for Keys {}

/// Hashes exactly as the `BTreeMap<Bytes, KeyState>` it replaced (length, then each pair in
/// key order), so state digests did not change.
impl Hash for Keys {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for pair in self.iter() {
            pair.hash(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn st(version: u64) -> KeyState {
        KeyState {
            value: Bytes::from(vec![version as u8]).into(),
            version,
            create_revision: 1,
            mod_revision: version,
        }
    }

    use crate::kv::digest_of as digest;

    #[test]
    fn an_index_key_is_40_bytes() {
        assert_eq!(std::mem::size_of::<IndexKey>(), 40);
    }

    #[test]
    fn behaves_like_an_ordered_map() {
        let mut keys = Keys::default();
        let mut model = BTreeMap::new();
        // Inserts, overwrites and deletes in a scrambled order; keys of 4 to 63 bytes, so both
        // sides of `INLINE_KEY_BYTES` (and the boundary itself) are kept inline and shared.
        for i in 0u64..500 {
            let n = (i * 7919) % 97;
            let pad = "-".repeat((n as usize * 13) % 60);
            let k = Bytes::from(format!("k{n:03}{pad}"));
            match i % 5 {
                0 => assert_eq!(keys.remove(&k), model.remove(&k)),
                1 => assert_eq!(keys.insert(k.clone(), st(i)), model.insert(k, st(i))),
                _ => {
                    let a = keys.get_or_insert_with(&k, || st(0));
                    a.version += 1;
                    let b = model.entry(k).or_insert_with(|| st(0));
                    b.version += 1;
                }
            }
            assert_eq!(keys.len(), model.len());
        }
        let ours: Vec<_> = keys
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), v.clone()))
            .collect();
        let theirs: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(ours, theirs, "same keys, same states, same order");
        let lens: BTreeSet<usize> = model.keys().map(|k| k.len()).collect();
        assert!(lens.contains(&INLINE_KEY_BYTES) && lens.contains(&(INLINE_KEY_BYTES + 1)));
        assert!(lens.first() < Some(&INLINE_KEY_BYTES) && lens.last() > Some(&INLINE_KEY_BYTES));
        for k in model.keys() {
            assert_eq!(keys.get(k), model.get(k));
        }
        assert_eq!(digest(&keys), digest(&model), "digests as before");
    }
}
