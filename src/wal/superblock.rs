//! The superblock: the promised ballot and other small state, as four checksummed,
//! sequence-numbered copies in one file.
//!
//! Owns: choosing the copy to trust at start-up, and the byte image of an update. An update
//! with sequence number `seq` writes both copies of pair `seq % 2` in one two-sector write, so
//! the other pair (holding the previous acknowledged state) is never touched by a torn write.

use std::path::Path;

use super::error::WalError;
use super::format::{HeaderFault, SuperCopy, SuperState, SECTOR_BYTES, SUPER_COPIES};

/// Bytes of the superblock file.
pub const SUPERBLOCK_BYTES: usize = SUPER_COPIES * SECTOR_BYTES;
/// Bytes of one update (one pair of copies).
pub const PAIR_BYTES: usize = 2 * SECTOR_BYTES;

/// The trusted superblock state and what was noticed choosing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperChoice {
    pub seq: u64,
    pub state: SuperState,
    pub notes: Vec<String>,
}

/// Encodes the pair written by update `seq` into `out[..PAIR_BYTES]`; returns its file offset.
pub fn encode_update(
    cluster_id: u64,
    group: u32,
    seq: u64,
    state: &SuperState,
    out: &mut [u8],
) -> u64 {
    let pair = (seq % 2) as usize;
    let copy = SuperCopy {
        cluster_id,
        group,
        seq,
        state: state.clone(),
    };
    for k in 0..2 {
        let index = pair * 2 + k;
        copy.encode(
            index as u16,
            &mut out[k * SECTOR_BYTES..(k + 1) * SECTOR_BYTES],
        );
    }
    (pair * PAIR_BYTES) as u64
}

/// Encodes a fresh superblock: all four copies with sequence number 1.
pub fn encode_initial(cluster_id: u64, group: u32, state: &SuperState) -> Vec<u8> {
    let mut out = vec![0u8; SUPERBLOCK_BYTES];
    for pair_seq in [1u64, 2] {
        let off = encode_update(
            cluster_id,
            group,
            pair_seq,
            state,
            &mut out[(pair_seq as usize % 2) * PAIR_BYTES..],
        );
        debug_assert_eq!(off as usize, (pair_seq as usize % 2) * PAIR_BYTES);
    }
    // Both pairs hold the same state; number them 1 and 2 so the next update is 3.
    out
}

/// Picks the copy to trust from the file's bytes (see the decision table in
/// `docs/internals/wal.md`).
pub fn choose(
    bytes: &[u8],
    dir: &Path,
    cluster_id: u64,
    group: u32,
) -> Result<SuperChoice, WalError> {
    let mut copies: Vec<Result<SuperCopy, HeaderFault>> = Vec::with_capacity(SUPER_COPIES);
    for i in 0..SUPER_COPIES {
        let s = bytes
            .get(i * SECTOR_BYTES..(i + 1) * SECTOR_BYTES)
            .unwrap_or(&[]);
        copies.push(SuperCopy::decode(s));
    }
    let mut notes = Vec::new();
    for c in copies.iter().flatten() {
        if c.cluster_id != cluster_id || c.group != group {
            return Err(WalError::Foreign {
                dir: dir.to_path_buf(),
                found_cluster: c.cluster_id,
                found_group: c.group,
                cluster: cluster_id,
                group,
            });
        }
    }
    for pair in 0..2 {
        let (a, b) = (&copies[pair * 2], &copies[pair * 2 + 1]);
        if a.is_err() && b.is_err() {
            // Each copy is one sector and sectors are written atomically, so a crash cannot
            // spoil both copies of a pair: this is media damage, and the newest promise may
            // have been in it.
            return Err(WalError::SuperblockCorrupt {
                dir: dir.to_path_buf(),
                detail: format!(
                    "both copies of pair {pair} are damaged ({:?}, {:?})",
                    a.as_ref().err(),
                    b.as_ref().err()
                ),
            });
        }
        for (k, c) in [a, b].into_iter().enumerate() {
            if let Err(f) = c {
                notes.push(format!(
                    "superblock copy {} is damaged ({f:?}); its twin is used and the next update rewrites it",
                    pair * 2 + k
                ));
            }
        }
    }
    let best = copies
        .iter()
        .flatten()
        .max_by_key(|c| c.seq)
        .expect("at least one copy per pair is valid");
    Ok(SuperChoice {
        seq: best.seq,
        state: best.state.clone(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::format::Ballot;

    fn state(round: u64) -> SuperState {
        SuperState {
            promised: Ballot { round, replica: 1 },
            app: b"x".to_vec(),
        }
    }

    fn image_after_updates(n: u64) -> Vec<u8> {
        let mut img = encode_initial(7, 0, &state(0));
        for seq in 3..3 + n {
            let mut pair = vec![0u8; PAIR_BYTES];
            let off = encode_update(7, 0, seq, &state(seq), &mut pair) as usize;
            img[off..off + PAIR_BYTES].copy_from_slice(&pair);
        }
        img
    }

    #[test]
    fn superblock_clean_picks_highest_seq() {
        let img = image_after_updates(3);
        let c = choose(&img, Path::new("d"), 7, 0).unwrap();
        assert_eq!(c.seq, 5);
        assert_eq!(c.state, state(5));
        assert!(c.notes.is_empty());
    }

    #[test]
    fn superblock_stale_copy_is_ignored() {
        // Pair 0 holds seq 4 and pair 1 seq 5: pair 0 is stale and must not win.
        let img = image_after_updates(3);
        let c = choose(&img, Path::new("d"), 7, 0).unwrap();
        assert_eq!(c.state.promised.round, 5);
    }

    #[test]
    fn superblock_torn_update_falls_back_to_previous_pair() {
        // Update seq 6 (pair 0) was torn: copy 0 got it, copy 1 did not; seq 6 was written,
        // so using it is safe; if copy 0 were the stale one, seq 5 from pair 1 wins.
        let mut img = image_after_updates(3);
        let mut pair = vec![0u8; PAIR_BYTES];
        encode_update(7, 0, 6, &state(6), &mut pair);
        img[..SECTOR_BYTES].copy_from_slice(&pair[..SECTOR_BYTES]);
        assert_eq!(choose(&img, Path::new("d"), 7, 0).unwrap().seq, 6);
    }

    #[test]
    fn superblock_corrupt_copy_uses_twin() {
        let mut img = image_after_updates(3);
        img[2 * SECTOR_BYTES + 40] ^= 0x10; // copy 2 (pair 1, seq 5)
        let c = choose(&img, Path::new("d"), 7, 0).unwrap();
        assert_eq!(c.seq, 5, "copy 3 still holds seq 5");
        assert_eq!(c.notes.len(), 1);
    }

    #[test]
    fn superblock_both_copies_of_pair_corrupt_refuses() {
        let mut img = image_after_updates(3);
        img[2 * SECTOR_BYTES + 40] ^= 0x10;
        img[3 * SECTOR_BYTES + 40] ^= 0x10;
        let e = choose(&img, Path::new("d"), 7, 0).unwrap_err();
        assert!(matches!(e, WalError::SuperblockCorrupt { .. }), "{e}");
        assert!(e.to_string().contains("restore this replica"));
    }

    #[test]
    fn superblock_of_another_cluster_refuses() {
        let img = image_after_updates(1);
        let e = choose(&img, Path::new("d"), 8, 0).unwrap_err();
        assert!(matches!(e, WalError::Foreign { .. }), "{e}");
        let e = choose(&img, Path::new("d"), 7, 1).unwrap_err();
        assert!(matches!(e, WalError::Foreign { .. }), "{e}");
    }
}
