//! WAL tests on real files: one per row of the recovery decision table in
//! `docs/internals/wal.md`, plus backends, limits and user-facing errors.

mod backends;
mod recovery;

use std::path::Path;

use super::*;

pub const SEG: u64 = 64 * 1024;

pub fn cfg(dir: &Path, backend: BackendChoice) -> WalConfig {
    let mut c = WalConfig::new(dir, 0xC1, 3);
    c.backend = backend;
    c.segment_bytes = SEG;
    c.max_batch_bytes = 16 * 1024;
    c.max_entry_bytes = 8 * 1024;
    c.max_pending_writes = 64;
    c
}

pub fn body(batch: u64, i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (batch * 31 + i * 7 + k as u64) as u8)
        .collect()
}

/// Appends `batches` batches of `per_batch` entries (each waited for) and returns what was
/// written, in order.
pub fn write_batches(
    wal: &mut Wal,
    first_slot: u64,
    batches: u64,
    per_batch: u64,
    len: usize,
) -> Vec<RecoveredEntry> {
    let mut written = Vec::new();
    let mut sink = Vec::new();
    for b in 0..batches {
        let bodies: Vec<Vec<u8>> = (0..per_batch).map(|i| body(b, i, len)).collect();
        let entries: Vec<Entry<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, bd)| {
                let slot = first_slot + b * per_batch + i as u64;
                Entry {
                    slot_first: slot,
                    slot_last: slot,
                    ballot: Ballot {
                        round: 1,
                        replica: 2,
                    },
                    body: bd,
                }
            })
            .collect();
        let id = wal.append(&entries).unwrap();
        wal.wait_durable(id, &mut sink).unwrap();
        for e in &entries {
            written.push(RecoveredEntry {
                slot_first: e.slot_first,
                slot_last: e.slot_last,
                ballot: e.ballot,
                body: e.body.to_vec(),
                log_offset: 0,
            });
        }
    }
    written
}

/// Compares entries ignoring log offsets.
pub fn same(a: &[RecoveredEntry], b: &[RecoveredEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.slot_first == y.slot_first
                && x.slot_last == y.slot_last
                && x.ballot == y.ballot
                && x.body == y.body
        })
}
