//! A WAL wrapper that injects disk faults into a running server (test builds only): stalls,
//! EIO, ENOSPC and an fsync that lies. It implements [`Disk`] around the real WAL, so the node
//! runs unchanged on top of it.
//!
//! Write ids: the wrapper hands out its own, in order, and maps them to the WAL's. Completions
//! are reported in id order, as the [`Disk`] contract says, whatever the mode.
//!
//! - `stall`: a write the WAL finished is reported durable `stall_ms` later.
//! - `eio`: `append`, `set_superblock`, `poll_completions` and snapshot calls fail with EIO
//!   (the node stops the group for good, as on a real write error).
//! - `enospc`: writes fail with ENOSPC (`WalError::DiskFull`).
//! - `lie`: writes are reported durable at once and kept in this process's memory, not handed
//!   to the WAL; the data is not in the page cache either, so a kill -9 loses it, which is
//!   what a disk whose cache acknowledges flushes it has not done loses at a power cut. When
//!   the mode ends they are written, in order, before any later write.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::fault::DiskMode;
use crate::runtime::disk::{Disk, DiskLimits, SnapshotData};
use crate::wal::{self, Ballot, SuperState, WalError, WriteId};

static MODE: Mutex<(DiskMode, u64)> = Mutex::new((DiskMode::Ok, 0));

/// Sets the process's disk fault (mode, stall in ms).
pub fn set(mode: DiskMode, stall_ms: u64) -> bool {
    let mut m = MODE.lock().unwrap_or_else(|e| e.into_inner());
    let changed = *m != (mode, stall_ms);
    *m = (mode, stall_ms);
    changed
}

fn mode() -> (DiskMode, u64) {
    *MODE.lock().unwrap_or_else(|e| e.into_inner())
}

fn eio(what: &str) -> WalError {
    WalError::Io {
        context: format!("injected fault: {what}"),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    }
}

fn enospc() -> WalError {
    WalError::io(
        "injected fault",
        &PathBuf::from("(fault injection)"),
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    )
}

struct OwnedEntry {
    slot_first: u64,
    slot_last: u64,
    ballot: Ballot,
    body: Vec<u8>,
}

enum Op {
    Append(Vec<OwnedEntry>),
    Super(SuperState),
}

struct Pending {
    id: WriteId,
    /// The WAL's id once handed over; None while held in memory.
    inner: Option<WriteId>,
    /// Reported durable without being so (`lie`).
    lied: bool,
    /// When the WAL was first seen to have finished it.
    done_at: Option<Instant>,
}

pub struct FaultDisk<D: Disk> {
    inner: D,
    next_id: u64,
    pending: VecDeque<Pending>,
    /// Writes not handed to the WAL yet, in order (their ids are in `pending`).
    held: VecDeque<(WriteId, Op)>,
    /// The highest WAL id the WAL reported durable.
    inner_done: Option<WriteId>,
    /// The highest WAL id handed over.
    inner_last: Option<WriteId>,
    buf: Vec<WriteId>,
}

impl<D: Disk> FaultDisk<D> {
    pub fn new(inner: D) -> FaultDisk<D> {
        FaultDisk {
            inner,
            next_id: 1,
            pending: VecDeque::new(),
            held: VecDeque::new(),
            inner_done: None,
            inner_last: None,
            buf: Vec::new(),
        }
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    fn take_id(&mut self) -> WriteId {
        let id = WriteId(self.next_id);
        self.next_id += 1;
        id
    }

    fn submit(&mut self, op: &Op) -> Result<WriteId, WalError> {
        let id = submit(&mut self.inner, op)?;
        self.inner_last = Some(id);
        Ok(id)
    }

    /// Hands held writes to the WAL, in order, until it pushes back.
    fn drain(&mut self) -> Result<(), WalError> {
        while let Some((id, op)) = self.held.front() {
            let id = *id;
            let inner = match submit(&mut self.inner, op) {
                Ok(i) => i,
                Err(WalError::Backpressure { .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            self.inner_last = Some(inner);
            self.held.pop_front();
            if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
                p.inner = Some(inner);
            }
        }
        Ok(())
    }

    fn write(&mut self, op: Op) -> Result<WriteId, WalError> {
        match mode().0 {
            DiskMode::Eio => return Err(eio("write")),
            DiskMode::Enospc => return Err(enospc()),
            DiskMode::Lie => {
                let id = self.take_id();
                self.held.push_back((id, op));
                self.pending.push_back(Pending {
                    id,
                    inner: None,
                    lied: true,
                    done_at: None,
                });
                return Ok(id);
            }
            DiskMode::Ok | DiskMode::Stall => {}
        }
        if !self.held.is_empty() {
            let id = self.take_id();
            self.held.push_back((id, op));
            self.pending.push_back(Pending {
                id,
                inner: None,
                lied: false,
                done_at: None,
            });
            self.drain()?;
            return Ok(id);
        }
        let inner = self.submit(&op)?;
        let id = self.take_id();
        self.pending.push_back(Pending {
            id,
            inner: Some(inner),
            lied: false,
            done_at: None,
        });
        Ok(id)
    }
}

impl<D: Disk> Disk for FaultDisk<D> {
    fn append(&mut self, entries: &[wal::Entry<'_>]) -> Result<WriteId, WalError> {
        let owned = entries
            .iter()
            .map(|e| OwnedEntry {
                slot_first: e.slot_first,
                slot_last: e.slot_last,
                ballot: e.ballot,
                body: e.body.to_vec(),
            })
            .collect();
        self.write(Op::Append(owned))
    }

    fn set_superblock(&mut self, state: SuperState) -> Result<WriteId, WalError> {
        self.write(Op::Super(state))
    }

    fn poll_completions(&mut self, out: &mut Vec<WriteId>) -> Result<(), WalError> {
        let (mode, stall_ms) = mode();
        if mode == DiskMode::Eio {
            return Err(eio("fsync"));
        }
        self.buf.clear();
        self.inner.poll_completions(&mut self.buf)?;
        if let Some(&last) = self.buf.last() {
            self.inner_done = Some(last.max(self.inner_done.unwrap_or(last)));
        }
        if mode != DiskMode::Lie && !self.held.is_empty() {
            self.drain()?;
        }
        let stall = if mode == DiskMode::Stall {
            Duration::from_millis(stall_ms)
        } else {
            Duration::ZERO
        };
        let now = Instant::now();
        while let Some(p) = self.pending.front_mut() {
            if !p.lied {
                match p.inner {
                    Some(i) if Some(i) <= self.inner_done => {}
                    _ => break,
                }
                let done_at = *p.done_at.get_or_insert(now);
                if now.duration_since(done_at) < stall {
                    break;
                }
            }
            out.push(p.id);
            self.pending.pop_front();
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), WalError> {
        if mode().0 == DiskMode::Eio {
            return Err(eio("flush"));
        }
        while !self.held.is_empty() {
            self.drain()?;
            if !self.held.is_empty() {
                self.inner.flush()?;
            }
        }
        self.inner.flush()?;
        self.inner_done = self.inner_last;
        Ok(())
    }

    fn limits(&self) -> DiskLimits {
        self.inner.limits()
    }

    fn backend_name(&self) -> String {
        format!("{}+faults", self.inner.backend_name())
    }

    fn start_snapshot(&mut self, slot: u64, data: SnapshotData) -> Result<(), WalError> {
        match mode().0 {
            DiskMode::Eio => Err(eio("snapshot write")),
            DiskMode::Enospc => Err(enospc()),
            _ => self.inner.start_snapshot(slot, data),
        }
    }

    fn poll_snapshot(&mut self) -> Result<Option<(u64, bytes::Bytes)>, WalError> {
        if mode().0 == DiskMode::Eio {
            return Err(eio("snapshot fsync"));
        }
        self.inner.poll_snapshot()
    }

    fn release_log(&mut self, slot: u64) -> Result<usize, WalError> {
        self.inner.release_log(slot)
    }

    fn retained_bytes(&self) -> u64 {
        self.inner.retained_bytes()
    }

    fn free(&mut self, garbage: Box<dyn Send>) {
        self.inner.free(garbage);
    }
}

fn submit<D: Disk>(inner: &mut D, op: &Op) -> Result<WriteId, WalError> {
    match op {
        Op::Append(entries) => {
            let borrowed: Vec<wal::Entry<'_>> = entries
                .iter()
                .map(|e| wal::Entry {
                    slot_first: e.slot_first,
                    slot_last: e.slot_last,
                    ballot: e.ballot,
                    body: &e.body,
                })
                .collect();
            inner.append(&borrowed)
        }
        Op::Super(state) => inner.set_superblock(state.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completes everything handed over at the next poll; records what it was given.
    #[derive(Default)]
    struct Mock {
        next: u64,
        handed: Vec<u64>,
        written: Vec<u64>,
    }

    impl Disk for Mock {
        fn append(&mut self, entries: &[wal::Entry<'_>]) -> Result<WriteId, WalError> {
            self.next += 1;
            self.handed.push(self.next);
            self.written.push(entries[0].slot_first);
            Ok(WriteId(self.next))
        }
        fn set_superblock(&mut self, _: SuperState) -> Result<WriteId, WalError> {
            self.next += 1;
            self.handed.push(self.next);
            Ok(WriteId(self.next))
        }
        fn poll_completions(&mut self, out: &mut Vec<WriteId>) -> Result<(), WalError> {
            out.extend(self.handed.drain(..).map(WriteId));
            Ok(())
        }
        fn flush(&mut self) -> Result<(), WalError> {
            self.handed.clear();
            Ok(())
        }
        fn limits(&self) -> DiskLimits {
            DiskLimits {
                entry_bytes_max: 1 << 20,
                append_bytes_max: 1 << 20,
            }
        }
        fn backend_name(&self) -> String {
            "mock".into()
        }
        fn start_snapshot(&mut self, _: u64, _: SnapshotData) -> Result<(), WalError> {
            Ok(())
        }
        fn poll_snapshot(&mut self) -> Result<Option<(u64, bytes::Bytes)>, WalError> {
            Ok(None)
        }
        fn release_log(&mut self, _: u64) -> Result<usize, WalError> {
            Ok(0)
        }

        fn retained_bytes(&self) -> u64 {
            0
        }

        fn free(&mut self, _: Box<dyn Send>) {}
    }

    fn entry(slot: u64) -> [wal::Entry<'static>; 1] {
        [wal::Entry {
            slot_first: slot,
            slot_last: slot,
            ballot: Ballot::default(),
            body: b"x",
        }]
    }

    // One test: the mode is process-wide.
    #[test]
    fn a_lying_disk_acknowledges_in_order_and_writes_in_order_later() {
        let mut d = FaultDisk::new(Mock::default());
        let mut out = Vec::new();
        set(DiskMode::Ok, 0);
        let a = d.append(&entry(1)).unwrap();
        set(DiskMode::Lie, 0);
        let b = d.append(&entry(2)).unwrap();
        let c = d.set_superblock(SuperState::default()).unwrap();
        // Nothing reached the disk while lying, but everything is acknowledged, in order.
        assert_eq!(d.inner().written, vec![1]);
        d.poll_completions(&mut out).unwrap();
        assert_eq!(out, vec![a, b, c]);
        // Truthful again: held writes go first, then new ones, which complete only once
        // written.
        set(DiskMode::Ok, 0);
        let e = d.append(&entry(3)).unwrap();
        assert_eq!(d.inner().written, vec![1, 2, 3]);
        out.clear();
        d.poll_completions(&mut out).unwrap();
        assert_eq!(out, vec![e]);
        // Errors.
        set(DiskMode::Eio, 0);
        assert!(matches!(d.append(&entry(4)), Err(WalError::Io { .. })));
        assert!(d.poll_completions(&mut out).is_err());
        set(DiskMode::Enospc, 0);
        assert!(matches!(
            d.append(&entry(4)),
            Err(WalError::DiskFull { .. })
        ));
        // A stall holds completions back.
        set(DiskMode::Stall, 60_000);
        let f = d.append(&entry(5)).unwrap();
        out.clear();
        d.poll_completions(&mut out).unwrap();
        assert!(out.is_empty());
        set(DiskMode::Ok, 0);
        d.poll_completions(&mut out).unwrap();
        assert_eq!(out, vec![f]);
    }
}
