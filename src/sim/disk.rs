//! A simulated disk behind the WAL's own interface ([`Disk`]), so the node's storage mapping
//! runs in the simulator exactly as it runs over the real WAL.
//!
//! Model: `append`/`set_superblock` enforce the real WAL's limits (entry size, append size,
//! queue depth → backpressure) and hand the write to the world, which decides when it is
//! durable (group commit, latency, stalls). A write is durable only once the world completes
//! it; `poll_completions` reports durable ids in order. Faults: ENOSPC at submission, EIO on
//! completion (the WAL stops, as the real one does), and on a crash a random prefix of the
//! in-flight writes reaches the platter (durable but never reported), the rest — including a
//! torn last write, which recovery drops whole — is lost.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use crate::protocol::{Ballot, Slot, Value};
use crate::runtime::disk::{Disk, DiskLimits, SnapshotData};
use crate::runtime::storage;
use crate::wal::format::{ENTRY_HEADER_BYTES, SECTOR_BYTES};
use crate::wal::{self, RecoveredEntry, SuperState, WalError};

/// An accepted value as a disk write carries it: (slot, ballot, value).
pub type AcceptedEntry = (Slot, Ballot, Value);

/// What one write carries.
#[derive(Clone, Debug)]
enum Content {
    Entries(Vec<RecoveredEntry>),
    Superblock(wal::Ballot),
}

#[derive(Debug)]
struct InFlight {
    id: u64,
    content: Content,
    done: bool,
}

/// Faults armed by the world; each fires once.
#[derive(Clone, Copy, Debug, Default)]
pub struct ArmedFaults {
    /// The next append or superblock write fails with ENOSPC.
    pub enospc: bool,
    /// The next write to complete fails with EIO (and the WAL stops).
    pub eio: bool,
}

/// The disk's state; it outlives the node using it (a crash drops the node, not the disk).
#[derive(Debug)]
pub struct DiskState {
    limits: DiskLimits,
    pending_max: usize,
    /// Durable contents, in log order.
    promised: wal::Ballot,
    entries: Vec<RecoveredEntry>,
    in_flight: VecDeque<InFlight>,
    /// Durable ids not yet reported.
    completed: VecDeque<u64>,
    next_id: u64,
    /// Ids handed over since the world last looked (it schedules their completion).
    submitted: Vec<u64>,
    stopped: Option<String>,
    pub armed: ArmedFaults,
    /// Bytes of log appended in all (statistics).
    pub bytes_appended: u64,
    /// The durable snapshot (slot, bytes), if any.
    snapshot: Option<(u64, Vec<u8>)>,
    /// A snapshot being written: lost in a crash until the world completes it.
    snapshot_writing: Option<(u64, bytes::Bytes)>,
    /// The world has not scheduled the completion of the snapshot being written yet.
    snapshot_submitted: bool,
    /// Completed and not yet reported to the node.
    snapshot_done: Option<(u64, bytes::Bytes)>,
    /// Snapshots written and log entries released (statistics).
    pub snapshots_written: u64,
    pub entries_released: u64,
}

impl DiskState {
    pub fn new(limits: DiskLimits, pending_max: usize) -> Self {
        DiskState {
            limits,
            pending_max,
            promised: wal::Ballot::default(),
            entries: Vec::new(),
            in_flight: VecDeque::new(),
            completed: VecDeque::new(),
            next_id: 1,
            submitted: Vec::new(),
            stopped: None,
            armed: ArmedFaults::default(),
            bytes_appended: 0,
            snapshot: None,
            snapshot_writing: None,
            snapshot_submitted: false,
            snapshot_done: None,
            snapshots_written: 0,
            entries_released: 0,
        }
    }

    /// A snapshot is being written.
    pub fn snapshot_in_progress(&self) -> bool {
        self.snapshot_writing.is_some()
    }

    /// Whether a snapshot write started since the world last looked (it schedules its end).
    pub fn take_snapshot_submitted(&mut self) -> bool {
        std::mem::take(&mut self.snapshot_submitted)
    }

    /// The world says the snapshot being written reached stable storage (tmp, sync, rename,
    /// dir sync all done).
    pub fn complete_snapshot(&mut self) {
        if let Some((slot, data)) = self.snapshot_writing.take() {
            if self.stopped.is_none() {
                self.snapshot = Some((slot, data.to_vec()));
                self.snapshot_done = Some((slot, data));
                self.snapshots_written += 1;
            }
        }
    }

    /// The snapshot recovery finds.
    pub fn snapshot(&self) -> Option<&(u64, Vec<u8>)> {
        self.snapshot.as_ref()
    }

    /// Writes handed over since the last call, in order, each with the accepted (not
    /// chosen) values its entries carry, decoded as recovery would decode them.
    pub fn take_submitted(&mut self) -> Vec<(u64, Vec<AcceptedEntry>)> {
        let ids = std::mem::take(&mut self.submitted);
        ids.into_iter()
            .map(|id| {
                let mut accepts = Vec::new();
                if let Some(InFlight {
                    content: Content::Entries(entries),
                    ..
                }) = self.in_flight.iter().find(|w| w.id == id)
                {
                    for e in entries {
                        if let Some((storage::RecordKind::Accepted, value)) =
                            storage::decode_value(&e.body)
                        {
                            let ballot = Ballot::new(e.ballot.round, e.ballot.replica);
                            accepts.push((e.slot_first, ballot, value));
                        }
                    }
                }
                (id, accepts)
            })
            .collect()
    }

    /// The world says write `id` reached stable storage (or failed, with an armed EIO).
    pub fn complete(&mut self, id: u64) {
        let Some(w) = self.in_flight.iter_mut().find(|w| w.id == id) else {
            return; // Lost in a crash.
        };
        w.done = true;
        // Durable in order: a write is reported only once every earlier one is.
        while self.in_flight.front().is_some_and(|w| w.done) {
            let w = self.in_flight.pop_front().expect("front exists");
            if self.armed.eio && self.stopped.is_none() {
                self.armed.eio = false;
                self.stopped = Some(format!("write {} failed: EIO", w.id));
                // What failed may or may not be on the platter; here it is not.
                self.in_flight.clear();
                return;
            }
            if self.stopped.is_some() {
                continue;
            }
            self.persist(w.content);
            self.completed.push_back(w.id);
        }
    }

    fn persist(&mut self, content: Content) {
        match content {
            Content::Entries(entries) => self.entries.extend(entries),
            Content::Superblock(b) => self.promised = b,
        }
    }

    /// A crash: the first `reach` in-flight writes made it to the platter without being
    /// reported; every later one (a torn last write included) is lost.
    pub fn crash(&mut self, reach: usize) {
        let in_flight = std::mem::take(&mut self.in_flight);
        if self.stopped.is_none() {
            for w in in_flight.into_iter().take(reach) {
                self.persist(w.content);
            }
        }
        self.completed.clear();
        self.submitted.clear();
        // A snapshot not yet renamed into place is a leftover tmp file: removed at open.
        self.snapshot_writing = None;
        self.snapshot_submitted = false;
        self.snapshot_done = None;
        self.stopped = None;
        self.armed = ArmedFaults::default();
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// What recovery finds: the superblock's promised ballot and the durable entries.
    pub fn recovered(&self) -> (wal::Ballot, &[RecoveredEntry]) {
        (self.promised, &self.entries)
    }

    /// Seeds the platter with entries (a pre-existing large log).
    pub fn preload(&mut self, promised: wal::Ballot, entries: Vec<RecoveredEntry>) {
        self.promised = promised;
        self.entries = entries;
    }

    fn check_running(&self) -> Result<(), WalError> {
        match &self.stopped {
            Some(why) => Err(WalError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    fn admit(&mut self, content: Content) -> Result<wal::WriteId, WalError> {
        self.check_running()?;
        if self.in_flight.len() >= self.pending_max {
            return Err(WalError::Backpressure {
                pending: self.in_flight.len(),
            });
        }
        if self.armed.enospc {
            self.armed.enospc = false;
            self.stopped = Some("the disk is full".into());
            return Err(WalError::DiskFull {
                path: PathBuf::from("sim"),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight.push_back(InFlight {
            id,
            content,
            done: false,
        });
        self.submitted.push(id);
        Ok(wal::WriteId(id))
    }
}

/// The node's handle on a [`DiskState`] the world also holds.
pub struct SimDisk(pub Rc<RefCell<DiskState>>);

impl Disk for SimDisk {
    fn append(&mut self, entries: &[wal::Entry<'_>]) -> Result<wal::WriteId, WalError> {
        let mut st = self.0.borrow_mut();
        if entries.is_empty() {
            return Err(WalError::InvalidEntry(
                "an append needs at least one entry".into(),
            ));
        }
        let mut needed = 0;
        for e in entries {
            if e.body.len() > st.limits.entry_bytes_max {
                return Err(WalError::Limit {
                    what: format!("an entry body of {} bytes", e.body.len()),
                    limit: st.limits.entry_bytes_max as u64,
                });
            }
            needed += ENTRY_HEADER_BYTES + e.body.len();
        }
        if needed.next_multiple_of(SECTOR_BYTES) > st.limits.append_bytes_max {
            return Err(WalError::Limit {
                what: format!("an append of {needed} bytes"),
                limit: st.limits.append_bytes_max as u64,
            });
        }
        st.bytes_appended += needed as u64;
        let owned = entries
            .iter()
            .map(|e| RecoveredEntry {
                slot_first: e.slot_first,
                slot_last: e.slot_last,
                ballot: e.ballot,
                body: e.body.to_vec(),
                log_offset: 0,
            })
            .collect();
        st.admit(Content::Entries(owned))
    }

    fn set_superblock(&mut self, state: SuperState) -> Result<wal::WriteId, WalError> {
        self.0
            .borrow_mut()
            .admit(Content::Superblock(state.promised))
    }

    fn poll_completions(&mut self, out: &mut Vec<wal::WriteId>) -> Result<(), WalError> {
        let mut st = self.0.borrow_mut();
        out.extend(st.completed.drain(..).map(wal::WriteId));
        st.check_running()
    }

    fn flush(&mut self) -> Result<(), WalError> {
        Ok(())
    }

    fn limits(&self) -> DiskLimits {
        self.0.borrow().limits
    }

    fn backend_name(&self) -> String {
        "sim".into()
    }

    fn start_snapshot(&mut self, slot: u64, data: SnapshotData) -> Result<(), WalError> {
        let mut st = self.0.borrow_mut();
        st.check_running()?;
        assert!(
            st.snapshot_writing.is_none(),
            "one snapshot write at a time"
        );
        // Encoded here, at once: the simulated disk has no thread of its own (and the
        // simulation stays deterministic).
        st.snapshot_writing = Some((slot, data.into_bytes()));
        st.snapshot_submitted = true;
        Ok(())
    }

    fn poll_snapshot(&mut self) -> Result<Option<(u64, bytes::Bytes)>, WalError> {
        let mut st = self.0.borrow_mut();
        st.check_running()?;
        Ok(st.snapshot_done.take())
    }

    fn release_log(&mut self, slot: u64) -> Result<usize, WalError> {
        let mut st = self.0.borrow_mut();
        let before = st.entries.len();
        // The real WAL releases whole segments at or below the slot; releasing every entry
        // at or below it is the harshest version of that (recovery skips them either way).
        st.entries.retain(|e| e.slot_first > slot);
        let released = before - st.entries.len();
        st.entries_released += released as u64;
        Ok(released)
    }

    fn retained_bytes(&self) -> u64 {
        // The simulated disk keeps entries, not segments: no restart reads bytes here.
        0
    }

    fn free(&mut self, garbage: Box<dyn Send>) {
        // Deterministic: freed at once, on the simulator's thread.
        drop(garbage);
    }
}
