//! One test per row of the recovery decision table (`docs/internals/wal.md`).

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use super::*;
use crate::wal::files::segment_name;
use crate::wal::format::SECTOR_BYTES;

const S: u64 = SECTOR_BYTES as u64;

fn seg_path(dir: &Path, i: u64) -> std::path::PathBuf {
    dir.join(segment_name(i))
}

fn patch(dir: &Path, abs: u64, f: impl FnOnce(&mut [u8])) {
    let p = seg_path(dir, abs / SEG);
    let file = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let off = abs % SEG;
    let mut sector = vec![0u8; SECTOR_BYTES];
    file.read_exact_at(&mut sector, off - off % S).unwrap();
    f(&mut sector[(off % S) as usize..]);
    file.write_all_at(&sector, off - off % S).unwrap();
}

/// Writes 6 batches of 2 entries (one sector each) and returns (dir, written, batch offsets).
fn six_batches(choice: BackendChoice) -> (tempfile::TempDir, Vec<RecoveredEntry>, Vec<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), choice)).unwrap();
    let mut written = Vec::new();
    let mut offsets = Vec::new();
    for b in 0..6 {
        offsets.push(wal.next_log_offset());
        written.extend(write_batches(&mut wal, 1 + b * 2, 1, 2, 300));
    }
    (dir, written, offsets)
}

fn reopen(dir: &Path, mode: OnCorruption) -> Result<(Wal, Recovered), WalError> {
    let mut c = cfg(dir, BackendChoice::Sync);
    c.on_corruption = mode;
    Wal::open(c)
}

#[test]
fn recovery_clean_log() {
    let (dir, written, _) = six_batches(BackendChoice::Auto);
    let (_, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert!(same(&rec.entries, &written));
    assert!(rec.report.torn_tail.is_none() && rec.report.corruptions.is_empty());
}

#[test]
fn recovery_torn_last_batch_is_truncated_and_log_continues() {
    let (dir, written, offs) = six_batches(BackendChoice::Sync);
    // The last batch tore: its first 100 bytes reached the disk garbled.
    patch(dir.path(), offs[5] + 10, |b| b[..100].fill(0xAB));
    let (mut wal, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert!(same(&rec.entries, &written[..10]), "last batch dropped");
    let torn = rec.report.torn_tail.expect("torn tail reported");
    assert_eq!(torn.log_offset, offs[5]);
    // Appending after recovery reuses the torn sector and the log stays readable.
    let more = write_batches(&mut wal, 100, 2, 3, 50);
    drop(wal);
    let (_, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    let mut expect = written[..10].to_vec();
    expect.extend(more);
    assert!(same(&rec.entries, &expect));
    assert!(rec.report.torn_tail.is_none());
}

#[test]
fn recovery_zeroed_sector_in_the_middle_is_refused_or_reported() {
    let (dir, written, offs) = six_batches(BackendChoice::Sync);
    patch(dir.path(), offs[2], |b| b[..SECTOR_BYTES].fill(0));
    let e = reopen(dir.path(), OnCorruption::Refuse).unwrap_err();
    assert!(matches!(e, WalError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("zeroed sector"), "{e}");
    assert!(e.to_string().contains("slots after 4"), "{e}");
    let (_, rec) = reopen(dir.path(), OnCorruption::Report).unwrap();
    let c = &rec.report.corruptions[0];
    assert_eq!(c.log_offset, offs[2]);
    assert_eq!((c.last_slot_before, c.first_slot_after), (Some(4), Some(7)));
    let mut expect = written[..4].to_vec();
    expect.extend_from_slice(&written[6..]);
    assert!(
        same(&rec.entries, &expect),
        "entries on both sides are kept"
    );
}

#[test]
fn recovery_corrupt_entry_in_the_middle_is_refused() {
    let (dir, _, offs) = six_batches(BackendChoice::Sync);
    patch(dir.path(), offs[3] + 64 + 5, |b| b[0] ^= 0x04); // one bit of a body
    let e = reopen(dir.path(), OnCorruption::Refuse).unwrap_err();
    assert!(e.to_string().contains("body checksum"), "{e}");
    assert!(
        e.to_string()
            .contains("restore this replica from its peers"),
        "{e}"
    );
}

#[test]
fn recovery_misdirected_write_is_detected() {
    let (dir, _, offs) = six_batches(BackendChoice::Sync);
    // Batch 4's sector lands on batch 1's place: every checksum in it is valid.
    let p = seg_path(dir.path(), 0);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let mut sector = vec![0u8; SECTOR_BYTES];
    f.read_exact_at(&mut sector, offs[4] % SEG).unwrap();
    f.write_all_at(&sector, offs[1] % SEG).unwrap();
    let e = reopen(dir.path(), OnCorruption::Refuse).unwrap_err();
    assert!(e.to_string().contains("misdirected write"), "{e}");
}

#[test]
fn recovery_complete_batch_that_does_not_chain_is_corruption() {
    let (dir, _, offs) = six_batches(BackendChoice::Sync);
    // The whole last batch before a segment roll vanishes: simulate by zeroing batch 4 and
    // 5 (the last two) and checking the tail is torn, then zero batch 3 only: chain gap.
    patch(dir.path(), offs[3], |b| b[..SECTOR_BYTES].fill(0));
    let (_, rec) = reopen(dir.path(), OnCorruption::Report).unwrap();
    assert_eq!(rec.report.corruptions.len(), 1);
}

#[test]
fn recovery_corrupt_superblock_copy_uses_its_twin() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), BackendChoice::Sync)).unwrap();
    let st = SuperState {
        promised: Ballot {
            round: 5,
            replica: 2,
        },
        app: vec![],
    };
    let id = wal.set_superblock(st.clone()).unwrap();
    wal.wait_durable(id, &mut Vec::new()).unwrap();
    drop(wal);
    // Update seq 3 went to pair 1 (copies 2 and 3); damage copy 2.
    let p = dir.path().join(files::SUPERBLOCK_NAME);
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.write_all_at(&[0xFF; 16], 2 * S + 100).unwrap();
    let (_, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert_eq!(rec.superblock, st);
    assert_eq!(rec.report.notes.len(), 1, "{:?}", rec.report.notes);
    // Both copies of the pair damaged: the promise may be lost, so refuse.
    f.write_all_at(&[0xFF; 16], 3 * S + 100).unwrap();
    let e = reopen(dir.path(), OnCorruption::Refuse).unwrap_err();
    assert!(matches!(e, WalError::SuperblockCorrupt { .. }), "{e}");
}

#[test]
fn recovery_truncated_segment() {
    // Cut past the data: harmless, the file is re-extended.
    let (dir, written, offs) = six_batches(BackendChoice::Sync);
    let p = seg_path(dir.path(), 0);
    let end = offs[5] % SEG + S;
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(end + 1000)
        .unwrap();
    let (wal, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert!(same(&rec.entries, &written));
    drop(wal);
    assert_eq!(fs::metadata(&p).unwrap().len(), SEG);
    // Cut inside the data: we never shrink a segment, so acknowledged data may be gone.
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(offs[5] % SEG + 200)
        .unwrap();
    let e = reopen(dir.path(), OnCorruption::Refuse).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn recovery_file_from_another_group_is_refused() {
    let (dir, _, _) = six_batches(BackendChoice::Sync);
    let other = tempfile::tempdir().unwrap();
    let mut c = cfg(other.path(), BackendChoice::Sync);
    c.group = 4;
    let (mut w, _) = Wal::open(c).unwrap();
    write_batches(&mut w, 1, 1, 1, 10);
    drop(w);
    // A segment of group 4 copied into group 3's directory.
    fs::copy(seg_path(other.path(), 0), seg_path(dir.path(), 1)).unwrap();
    let e = reopen(dir.path(), OnCorruption::Refuse).unwrap_err();
    assert!(matches!(e, WalError::Foreign { found_group: 4, .. }), "{e}");
}

#[test]
fn recovery_across_segment_rolls_and_snapshot_release() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), BackendChoice::Auto)).unwrap();
    // 40 batches of 3 × 1000 B: one sector each... ~4 sectors per batch, several segments.
    let written = write_batches(&mut wal, 1, 40, 3, 1000);
    drop(wal);
    let segs_before = files::list_dir(dir.path()).unwrap().segments.len();
    assert!(segs_before >= 3, "rolled over segments ({segs_before})");
    let (mut wal, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert!(same(&rec.entries, &written));
    // Snapshot at slot 60 releases the segments that hold only slots <= 60.
    let released = wal.snapshot(60, b"state@60").unwrap();
    assert!(released >= 1);
    let more = write_batches(&mut wal, 121, 2, 1, 10);
    drop(wal);
    let (_, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert_eq!(rec.snapshot.as_ref().map(|s| s.slot), Some(60));
    assert_eq!(rec.snapshot.as_ref().unwrap().data, b"state@60");
    // Entries at or below the snapshot are verified but not returned; everything above is.
    let first = rec.entries.first().unwrap().slot_first;
    assert_eq!(
        first, 61,
        "the first entry returned is the snapshot's next slot"
    );
    let tail: Vec<_> = written
        .iter()
        .filter(|e| e.slot_first >= first)
        .cloned()
        .chain(more)
        .collect();
    assert!(same(&rec.entries, &tail));
    // The skipped entries still chain: the log appends after them and reopens clean.
    let (mut wal, _) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    let last = write_batches(&mut wal, 123, 1, 1, 10);
    drop(wal);
    let (_, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert!(rec.report.corruptions.is_empty() && rec.report.torn_tail.is_none());
    let tail: Vec<_> = tail.into_iter().chain(last).collect();
    assert!(same(&rec.entries, &tail));
}

#[test]
fn entries_skipped_below_a_snapshot_still_hold_their_segments() {
    // A snapshot made durable without releasing anything (the server releases later, at its
    // log floor): after a restart the first segments hold only slots at or below the snapshot,
    // which recovery verifies but does not return. Their slots still count: releasing below
    // them must keep them.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), BackendChoice::Auto)).unwrap();
    write_batches(&mut wal, 1, 40, 3, 1000);
    wal.start_snapshot(100, || bytes::Bytes::from_static(b"state@100"))
        .unwrap();
    while wal.poll_snapshot().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(wal);
    let segs = files::list_dir(dir.path()).unwrap().segments.len();
    assert!(segs >= 3, "rolled over segments ({segs})");
    let (mut wal, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert_eq!(rec.snapshot.as_ref().map(|s| s.slot), Some(100));
    assert_eq!(rec.entries.first().map(|e| e.slot_first), Some(101));
    assert_eq!(
        wal.release_segments(0).unwrap(),
        0,
        "released below its slots"
    );
    assert_eq!(files::list_dir(dir.path()).unwrap().segments.len(), segs);
    // At the snapshot's slot the segments holding nothing above it go.
    assert!(wal.release_segments(100).unwrap() >= 1);
}

#[test]
fn recovery_skips_a_damaged_snapshot_for_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), BackendChoice::Sync)).unwrap();
    write_batches(&mut wal, 1, 2, 1, 10);
    wal.snapshot(1, b"one").unwrap();
    wal.snapshot(2, b"two").unwrap();
    wal.snapshot(3, b"three").unwrap();
    drop(wal);
    assert_eq!(
        files::list_dir(dir.path()).unwrap().snapshots,
        vec![2, 3],
        "two kept"
    );
    let p = dir.path().join(files::snapshot_name(3));
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at(b"X", S + 1).unwrap();
    let (_, rec) = reopen(dir.path(), OnCorruption::Refuse).unwrap();
    assert_eq!(rec.snapshot.unwrap().data, b"two");
    assert_eq!(rec.report.notes.len(), 1);
}

/// The segment size is a property of the log on disk (offsets depend on it): a log written
/// with one size reopens under a configuration that names another, keeps writing with its own
/// size across segments, and says so; only a new data directory takes the configured size.
#[test]
fn a_log_keeps_the_segment_size_it_was_written_with() {
    let (dir, mut written, _) = six_batches(BackendChoice::Sync);
    let mut c = cfg(dir.path(), BackendChoice::Sync);
    c.segment_bytes = 2 * SEG;
    let (mut wal, rec) = Wal::open(c.clone()).unwrap();
    assert!(same(&rec.entries, &written));
    assert!(
        rec.report
            .notes
            .iter()
            .any(|n| n.contains(&format!("{SEG} bytes"))),
        "{:?}",
        rec.report.notes
    );
    assert_eq!(wal.config().segment_bytes, SEG);
    // Enough to fill more than one more segment of the old size.
    written.extend(write_batches(&mut wal, 100, 40, 2, 1500));
    assert!(wal.next_log_offset() > 2 * SEG);
    drop(wal);
    let (_, rec) = Wal::open(c).unwrap();
    assert!(same(&rec.entries, &written));
    assert!(rec.report.corruptions.is_empty() && rec.report.torn_tail.is_none());
    let fresh = tempfile::tempdir().unwrap();
    let mut c = cfg(fresh.path(), BackendChoice::Sync);
    c.segment_bytes = 2 * SEG;
    let (wal, rec) = Wal::open(c).unwrap();
    assert!(rec.report.notes.is_empty(), "{:?}", rec.report.notes);
    assert_eq!(wal.config().segment_bytes, 2 * SEG);
}
