//! Quorum math, kept apart so every rule is testable alone.
//!
//! Phase 1 needs a classic quorum (a majority). Phase 2 needs a majority *and* every replica in
//! `required` — the hook for quorum read leases, where each current lease holder must accept a
//! write before it commits (architecture §5). Fast quorums (architecture §6) are ⌈3N/4⌉.

use super::types::ReplicaId;

/// The largest cluster a `VoteSet` can describe.
pub const REPLICAS_MAX: u32 = 64;

/// A set of replicas, as a bitset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VoteSet(u64);

impl VoteSet {
    pub const EMPTY: VoteSet = VoteSet(0);

    /// Replicas `0..n`.
    pub fn all(n: u32) -> VoteSet {
        assert!(n <= REPLICAS_MAX);
        VoteSet(if n == 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    pub fn insert(&mut self, replica: ReplicaId) {
        assert!(replica < REPLICAS_MAX);
        self.0 |= 1 << replica;
    }

    pub fn contains(&self, replica: ReplicaId) -> bool {
        replica < REPLICAS_MAX && self.0 & (1 << replica) != 0
    }

    pub fn len(&self) -> u32 {
        self.0.count_ones()
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn is_superset(&self, other: VoteSet) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: VoteSet) -> VoteSet {
        VoteSet(self.0 | other.0)
    }

    /// The set as a bit mask (bit i: replica i), for the wire.
    pub fn bits(&self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> VoteSet {
        VoteSet(bits)
    }
}

/// The quorum rules of one group of `n` replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumSpec {
    n: u32,
}

impl QuorumSpec {
    pub fn new(n: u32) -> Self {
        assert!(
            (1..=REPLICAS_MAX).contains(&n),
            "replica count {n} out of range"
        );
        QuorumSpec { n }
    }

    pub fn replicas(&self) -> u32 {
        self.n
    }

    /// Classic quorum: a strict majority.
    pub fn classic(&self) -> u32 {
        self.n / 2 + 1
    }

    /// Fast quorum ⌈3N/4⌉: any classic quorum and any two fast quorums intersect.
    pub fn fast(&self) -> u32 {
        (3 * self.n).div_ceil(4)
    }

    /// Phase 1 is complete once a classic quorum promised.
    pub fn is_phase1_quorum(&self, promised: VoteSet) -> bool {
        promised.len() >= self.classic()
    }

    /// A value is chosen once a classic quorum accepted it at one ballot and every replica in
    /// `required` (current read-lease holders; empty without leases) is among them.
    pub fn is_chosen(&self, accepted: VoteSet, required: VoteSet) -> bool {
        accepted.len() >= self.classic() && accepted.is_superset(required)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> VoteSet {
        let mut s = VoteSet::EMPTY;
        for &id in ids {
            s.insert(id);
        }
        s
    }

    #[test]
    fn quorum_sizes_table() {
        // (n, classic, fast): fast = ceil(3n/4), and |Qc| + 2|Qf| > 2n holds for every row.
        let table = [(1, 1, 1), (3, 2, 3), (5, 3, 4), (7, 4, 6), (9, 5, 7)];
        for (n, classic, fast) in table {
            let q = QuorumSpec::new(n);
            assert_eq!(q.classic(), classic, "classic quorum of {n}");
            assert_eq!(q.fast(), fast, "fast quorum of {n}");
            assert!(
                q.classic() + 2 * q.fast() > 2 * n,
                "fast quorums intersect for {n}"
            );
            assert!(2 * q.classic() > n, "classic quorums intersect for {n}");
        }
    }

    #[test]
    fn chosen_needs_majority() {
        let q = QuorumSpec::new(5);
        assert!(!q.is_chosen(set(&[0, 1]), VoteSet::EMPTY));
        assert!(q.is_chosen(set(&[0, 1, 4]), VoteSet::EMPTY));
        assert!(!q.is_phase1_quorum(set(&[2, 3])));
        assert!(q.is_phase1_quorum(set(&[1, 2, 3])));
    }

    #[test]
    fn chosen_needs_every_required_holder() {
        let q = QuorumSpec::new(5);
        let holders = set(&[3]);
        assert!(
            !q.is_chosen(set(&[0, 1, 2]), holders),
            "a lease holder is missing"
        );
        assert!(q.is_chosen(set(&[0, 1, 3]), holders));
    }

    #[test]
    fn vote_set_is_idempotent() {
        let mut s = set(&[1, 1, 2]);
        s.insert(2);
        assert_eq!(s.len(), 2);
        assert!(s.contains(1) && !s.contains(0));
    }
}
