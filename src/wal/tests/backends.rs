use super::*;

fn round_trip(choice: BackendChoice) -> BackendKind {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, rec) = Wal::open(cfg(dir.path(), choice)).unwrap();
    assert!(rec.report.fresh);
    let kind = wal.backend_kind();
    let written = write_batches(&mut wal, 1, 20, 3, 500);
    let sid = wal
        .set_superblock(SuperState {
            promised: Ballot {
                round: 9,
                replica: 1,
            },
            app: b"commit=60".to_vec(),
        })
        .unwrap();
    let mut sink = Vec::new();
    wal.wait_durable(sid, &mut sink).unwrap();
    drop(wal);
    let (_wal, rec) = Wal::open(cfg(dir.path(), choice)).unwrap();
    if kind == BackendKind::Memory {
        assert!(rec.entries.is_empty());
    } else {
        assert!(same(&rec.entries, &written), "entries survive reopen");
        assert_eq!(
            rec.superblock.promised,
            Ballot {
                round: 9,
                replica: 1
            }
        );
        assert_eq!(rec.superblock.app, b"commit=60");
        assert!(rec.report.torn_tail.is_none());
    }
    kind
}

#[test]
fn backend_sync_round_trip() {
    assert_eq!(round_trip(BackendChoice::Sync), BackendKind::Sync);
}

#[test]
fn backend_memory_round_trip() {
    assert_eq!(round_trip(BackendChoice::Memory), BackendKind::Memory);
}

/// A memory WAL has no segment files: releasing its old segments (after a snapshot) must not
/// try to delete any (it stopped every benchmark cluster running `memory` past 64 MiB of log).
#[test]
fn memory_backend_releases_segments_without_files() {
    for choice in [BackendChoice::Memory, BackendChoice::Sync] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(cfg(dir.path(), choice)).unwrap();
        // Enough batches to fill several segments.
        let batches = 4 * SEG / 4096;
        write_batches(&mut wal, 1, batches, 1, 500);
        let released = wal.release_segments(batches / 2).unwrap();
        assert!(released > 0, "{choice:?}: nothing released");
        // The log goes on.
        write_batches(&mut wal, batches + 1, 4, 1, 500);
    }
}

#[test]
fn backend_uring_round_trip() {
    match backend::UringBackend::new(4, UringSync::RwfDsync) {
        Ok(_) => assert_eq!(round_trip(BackendChoice::Uring), BackendKind::Uring),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)) => {
            eprintln!("io_uring unavailable here ({e}); checking auto falls back to sync");
            assert_eq!(round_trip(BackendChoice::Auto), BackendKind::Sync);
        }
        Err(e) => panic!("io_uring setup failed unexpectedly: {e}"),
    }
}

#[test]
fn backend_uring_linked_fdatasync_round_trip() {
    if backend::UringBackend::new(4, UringSync::LinkedFdatasync).is_err() {
        eprintln!("io_uring unavailable here; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), BackendChoice::Uring);
    c.uring_sync = UringSync::LinkedFdatasync;
    let (mut wal, _) = Wal::open(c.clone()).unwrap();
    let written = write_batches(&mut wal, 1, 10, 2, 100);
    drop(wal);
    let (_, rec) = Wal::open(c).unwrap();
    assert!(same(&rec.entries, &written));
}

#[test]
fn auto_falls_back_to_sync_when_uring_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), BackendChoice::Auto);
    c.inject.uring_errno = Some(libc::EPERM);
    let (wal, rec) = Wal::open(c.clone()).unwrap();
    assert_eq!(wal.backend_kind(), BackendKind::Sync);
    assert!(
        rec.report.backend_reason.contains("io_uring unavailable"),
        "{}",
        rec.report.backend_reason
    );
    drop(wal);
    c.backend = BackendChoice::Uring;
    c.inject.uring_errno = Some(libc::ENOMEM);
    let e = Wal::open(c).unwrap_err();
    assert!(matches!(e, WalError::UringUnavailable { .. }));
    assert!(e.to_string().contains("ulimit -l"), "{e}");
}

#[test]
fn completions_reach_a_mio_loop_through_the_eventfd() {
    use mio::{unix::SourceFd, Events, Interest, Poll, Token};
    for choice in [
        BackendChoice::Auto,
        BackendChoice::Sync,
        BackendChoice::Memory,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(cfg(dir.path(), choice)).unwrap();
        let mut poll = Poll::new().unwrap();
        poll.registry()
            .register(&mut SourceFd(&wal.eventfd()), Token(7), Interest::READABLE)
            .unwrap();
        let mut events = Events::with_capacity(8);
        let mut ids = Vec::new();
        let mut last = None;
        // Many appends without waiting: they group-commit behind the first.
        for i in 0..50u64 {
            let e = [Entry {
                slot_first: i,
                slot_last: i,
                ballot: Ballot::default(),
                body: b"v",
            }];
            last = Some(wal.append(&e).unwrap());
        }
        let last = last.unwrap();
        while wal.durable_up_to() != Some(last) {
            match poll.poll(&mut events, Some(std::time::Duration::from_secs(5))) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r.unwrap(),
            }
            assert!(
                events.iter().any(|e| e.token() == Token(7)),
                "eventfd fired"
            );
            wal.poll_completions(&mut ids).unwrap();
        }
        let expect: Vec<WriteId> = (1..=50).map(WriteId).collect();
        assert_eq!(ids, expect, "ids durable in order ({choice:?})");
    }
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), BackendChoice::Sync)).unwrap();
    let big = vec![0u8; 9000];
    let e = wal
        .append(&[Entry {
            slot_first: 1,
            slot_last: 1,
            ballot: Ballot::default(),
            body: &big,
        }])
        .unwrap_err();
    assert!(matches!(e, WalError::Limit { .. }), "{e}");
    let e = wal
        .append(&[Entry {
            slot_first: 2,
            slot_last: 1,
            ballot: Ballot::default(),
            body: b"",
        }])
        .unwrap_err();
    assert!(matches!(e, WalError::InvalidEntry(_)), "{e}");
    assert!(matches!(
        wal.append(&[]).unwrap_err(),
        WalError::InvalidEntry(_)
    ));
    // Pending writes are bounded.
    let mut got_backpressure = false;
    for i in 0..200u64 {
        let e = [Entry {
            slot_first: i,
            slot_last: i,
            ballot: Ballot::default(),
            body: &big[..4000],
        }];
        match wal.append(&e) {
            Ok(_) => {}
            Err(WalError::Backpressure { .. }) => {
                got_backpressure = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(got_backpressure);
    wal.flush().unwrap();
    assert_eq!(wal.pending_writes(), 0);
}

#[test]
fn unusable_data_directory_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    // Root ignores permission bits, so use a path through a regular file.
    let e = Wal::open(cfg(&file.join("wal"), BackendChoice::Sync)).unwrap_err();
    assert!(matches!(e, WalError::DataDir { .. }), "{e}");
    assert!(e.to_string().contains("check that the path exists"), "{e}");
}

#[test]
fn data_directory_of_another_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(dir.path(), BackendChoice::Sync)).unwrap();
    write_batches(&mut wal, 1, 2, 1, 10);
    drop(wal);
    let mut other = cfg(dir.path(), BackendChoice::Sync);
    other.cluster_id = 0xC2;
    let e = Wal::open(other).unwrap_err();
    assert!(matches!(e, WalError::Foreign { .. }), "{e}");
    assert!(e.to_string().contains("belongs to cluster 0xc1"), "{e}");
}

#[test]
fn no_direct_io_falls_back_or_refuses_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), BackendChoice::Sync);
    c.inject.no_direct_io = true;
    c.direct_io = DirectIo::Require;
    let e = Wal::open(c.clone()).unwrap_err();
    assert!(matches!(e, WalError::DirectIoUnsupported { .. }), "{e}");
    c.direct_io = DirectIo::Auto;
    let (mut wal, rec) = Wal::open(c.clone()).unwrap();
    assert!(!rec.report.direct_io);
    let written = write_batches(&mut wal, 1, 3, 2, 100);
    drop(wal);
    let (_, rec) = Wal::open(c).unwrap();
    assert!(same(&rec.entries, &written));
}

#[test]
fn tmpfs_data_directory_opens_or_says_why() {
    // On Linux >= 6.6 tmpfs supports O_DIRECT; on older kernels `auto` falls back.
    let base = std::path::Path::new("/dev/shm");
    if !base.is_dir() {
        return;
    }
    let dir = tempfile::tempdir_in(base).unwrap();
    let (mut wal, rec) = Wal::open(cfg(dir.path(), BackendChoice::Auto)).unwrap();
    eprintln!(
        "tmpfs: direct_io={} backend={}",
        rec.report.direct_io,
        wal.backend_kind()
    );
    write_batches(&mut wal, 1, 2, 1, 10);
}
