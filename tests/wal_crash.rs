//! Crash tests for WAL recovery (`docs/internals/wal.md`, "Crash tests").
//!
//! Each seed builds a log image with the real batch encoder, makes the last batch the one in
//! flight at the crash, tears it (keeps a random prefix or a random subset of its sectors),
//! flips random bits in the unacknowledged tail, and recovers. It asserts that every
//! acknowledged entry comes back intact, that nothing else is returned except the whole
//! in-flight batch, that recovery never panics and never reports corruption for a crash, and
//! that the log accepts new batches after its repairs.
//!
//! More seeds: `MPAXOS_WAL_CRASH_SEEDS=100000 cargo test --release --test wal_crash`
//! (start at another seed with `MPAXOS_WAL_CRASH_FIRST_SEED`).

use mpaxos::wal::format::{align_up, Ballot, BatchEncoder, Entry, SegmentHeader, SECTOR_BYTES};
use mpaxos::wal::scan::{scan, OnCorruption, RecoveredEntry, ScanConfig, SegmentImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const SEG: u64 = 32 * 1024;
const S: u64 = SECTOR_BYTES as u64;
const CLUSTER: u64 = 0xC1;
const GROUP: u32 = 3;

struct Log {
    segs: Vec<Vec<u8>>,
    next_offset: u64,
    chain: u32,
}

impl Log {
    fn new() -> Log {
        Log {
            segs: Vec::new(),
            next_offset: S,
            chain: 0,
        }
    }

    fn seg(&mut self, index: u64) -> &mut Vec<u8> {
        while self.segs.len() as u64 <= index {
            let mut s = vec![0u8; SEG as usize];
            SegmentHeader {
                cluster_id: CLUSTER,
                group: GROUP,
                index: self.segs.len() as u64,
                segment_bytes: SEG,
            }
            .encode(&mut s);
            self.segs.push(s);
        }
        &mut self.segs[index as usize]
    }

    /// Writes one batch like `Wal` does; returns (start, padded length, bytes).
    fn write_batch(&mut self, entries: &[RecoveredEntry]) -> (u64, Vec<u8>) {
        let needed: u64 = entries.iter().map(|e| 64 + e.body.len() as u64).sum();
        let mut start = self.next_offset;
        if start % SEG == 0 {
            start += S;
        }
        let seg_end = (start / SEG + 1) * SEG;
        if start + align_up(needed) > seg_end {
            start = seg_end + S;
        }
        let mut buf = vec![0u8; align_up(needed) as usize];
        let mut enc = BatchEncoder::new(GROUP, start, self.chain);
        for e in entries {
            enc.push(
                &mut buf,
                &Entry {
                    slot_first: e.slot_first,
                    slot_last: e.slot_last,
                    ballot: e.ballot,
                    body: &e.body,
                },
            );
        }
        let len = enc.finish(&mut buf);
        assert_eq!(len, buf.len());
        self.chain = enc.chain;
        self.next_offset = start + len as u64;
        let off = (start % SEG) as usize;
        self.seg(start / SEG)[off..off + len].copy_from_slice(&buf);
        (start, buf)
    }

    fn scan(&self) -> mpaxos::wal::scan::ScanOutcome {
        let imgs: Vec<SegmentImage<'_>> = self
            .segs
            .iter()
            .enumerate()
            .map(|(i, b)| SegmentImage {
                index: i as u64,
                bytes: b,
            })
            .collect();
        scan(
            &imgs,
            ScanConfig {
                cluster_id: CLUSTER,
                group: GROUP,
                segment_bytes: SEG,
                max_entry_bytes: 8192,
                mode: OnCorruption::Refuse,
                skip_through: 0,
            },
        )
        .expect("own files are never refused")
    }

    fn byte(&mut self, abs: u64) -> &mut u8 {
        let seg = self.seg(abs / SEG);
        &mut seg[(abs % SEG) as usize]
    }
}

fn random_batch(rng: &mut ChaCha8Rng, slot: &mut u64) -> Vec<RecoveredEntry> {
    let n = rng.gen_range(1..=6);
    (0..n)
        .map(|_| {
            *slot += 1;
            let len = if rng.gen_bool(0.2) {
                rng.gen_range(1000..3000)
            } else {
                rng.gen_range(0..200)
            };
            RecoveredEntry {
                slot_first: *slot,
                slot_last: *slot + rng.gen_range(0..2),
                ballot: Ballot {
                    round: rng.gen_range(1..4),
                    replica: rng.gen_range(0..3),
                },
                body: (0..len).map(|_| rng.gen()).collect(),
                log_offset: 0,
            }
        })
        .collect()
}

fn same(a: &[RecoveredEntry], b: &[RecoveredEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            (x.slot_first, x.slot_last, x.ballot, &x.body)
                == (y.slot_first, y.slot_last, y.ballot, &y.body)
        })
}

fn one_seed(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut log = Log::new();
    let mut slot = 0;
    let mut acked: Vec<RecoveredEntry> = Vec::new();
    for _ in 0..rng.gen_range(0..25) {
        let b = random_batch(&mut rng, &mut slot);
        log.write_batch(&b);
        acked.extend(b);
    }
    let in_flight = random_batch(&mut rng, &mut slot);
    let (start, bytes) = log.write_batch(&in_flight);
    let len = bytes.len() as u64;
    // The crash: the in-flight write reached the disk only in part.
    match rng.gen_range(0..4) {
        0 => {} // all of it reached the disk (but was not acknowledged yet)
        1 => {
            // a prefix, cut at a random byte
            let cut = rng.gen_range(0..len);
            for a in start + cut..start + len {
                *log.byte(a) = 0;
            }
        }
        2 => {
            // a random subset of its sectors
            for s in 0..len / S {
                if rng.gen_bool(0.5) {
                    for a in start + s * S..start + (s + 1) * S {
                        *log.byte(a) = 0;
                    }
                }
            }
        }
        _ => {
            // nothing at all
            for a in start..start + len {
                *log.byte(a) = 0;
            }
        }
    }
    // Garbage in the unacknowledged tail: random bit flips in the in-flight region and just
    // past it (in the same segment).
    let tail_end = ((start / SEG) + 1) * SEG;
    let span_end = (start + len + 2 * S).min(tail_end);
    let flips = if rng.gen_bool(0.5) {
        rng.gen_range(1..8)
    } else {
        0
    };
    for _ in 0..flips {
        let a = rng.gen_range(start..span_end);
        *log.byte(a) ^= 1 << rng.gen_range(0..8);
    }

    let out = log.scan();
    assert!(
        out.corruptions.is_empty(),
        "seed {seed}: a crash is not corruption: {:?}",
        out.corruptions
    );
    let with_in_flight: Vec<RecoveredEntry> = acked.iter().chain(&in_flight).cloned().collect();
    let kept_all = same(&out.entries, &with_in_flight);
    assert!(
        same(&out.entries, &acked) || kept_all,
        "seed {seed}: recovered {} entries, acked {}, in flight {}",
        out.entries.len(),
        acked.len(),
        in_flight.len()
    );

    // Apply the repairs and continue the log from where recovery said.
    for &(abs, n) in &out.zero_ranges {
        for a in abs..abs + n {
            *log.byte(a) = 0;
        }
    }
    log.next_offset = out.next_offset;
    log.chain = out.chain;
    let next = random_batch(&mut rng, &mut slot);
    log.write_batch(&next);
    let again = log.scan();
    let mut expect = out.entries.clone();
    expect.extend(next);
    assert!(
        again.corruptions.is_empty(),
        "seed {seed}: after repair: {:?}",
        again.corruptions
    );
    assert!(
        same(&again.entries, &expect),
        "seed {seed}: log continues after repair"
    );
}

#[test]
fn wal_crash_random_tears_and_bit_flips() {
    let seeds: u64 = std::env::var("MPAXOS_WAL_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("MPAXOS_WAL_CRASH_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    for seed in first..first + seeds {
        let r = std::panic::catch_unwind(|| one_seed(seed));
        if r.is_err() {
            panic!(
                "wal_crash failed at seed {seed}; replay: MPAXOS_WAL_CRASH_FIRST_SEED={seed} MPAXOS_WAL_CRASH_SEEDS=1 cargo test --test wal_crash"
            );
        }
    }
}
