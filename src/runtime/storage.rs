//! The bridge between the protocol's numbered writes and the group's WAL (through [`Disk`], so
//! the simulator runs this very code over its simulated disk).
//!
//! Owns: encoding protocol writes as WAL entries (and decoding them at start-up), grouping
//! the log writes of one loop turn into appends no larger than the WAL takes, keeping protocol
//! write ids and WAL write ids in step (both complete in order), and holding writes back while
//! the WAL pushes back.
//!
//! Mapping: `Promise` → the superblock's promised ballot; `Accept` → one entry for its slot at
//! its ballot, carrying the leader's commit index; `Chosen` → one entry per slot, flagged
//! chosen. Replaying entries in log order
//! through [`DurableState::apply`] rebuilds the state the replica had.
//!
//! Limits: a run of log writes is cut into appends that each fit the WAL's batch limit (one
//! protocol write may span several appends; it is durable when the last one is). A full WAL
//! queue is backpressure, never an error: records wait in the backlog, and the node refuses new
//! client work while the backlog is over its byte bound ([`Storage::backlog_bytes`]).

use std::collections::VecDeque;

use rkyv::{Archive, Deserialize, Serialize};

use super::disk::{Disk, DiskLimits, SnapshotData};
use crate::net::frame::access;
use crate::net::wire::{value_from_archived, value_to_wire, WValue};
use crate::protocol::{self, Ballot, DurableState, Nanos, Slot, Write};
use crate::wal::format::{ENTRY_HEADER_BYTES, SECTOR_BYTES};
use crate::wal::{self, RecoveredEntry, SuperState, Wal, WalConfig, WalError};

/// The body of one WAL entry.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct WalRecord {
    chosen: bool,
    value: WValue,
    /// For an accepted value: the commit index its leader sent with it (0 for chosen ones),
    /// or [`FAST_VOTE`] for a vote in the fast round of the entry's ballot.
    commit: u64,
}

/// `WalRecord::commit` of a Fast Paxos vote: no leader's commit index is ever `u64::MAX`, so
/// the format (and every existing WAL) stays as it was.
const FAST_VOTE: u64 = u64::MAX;

/// What one WAL entry holds, as recovery reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Chosen,
    /// Accepted in the classic round of the entry's ballot.
    Accepted,
    /// A vote in the fast round of the entry's ballot.
    FastVote,
}

fn to_wal_ballot(b: Ballot) -> wal::Ballot {
    wal::Ballot {
        round: b.round,
        replica: b.replica,
    }
}

/// What the disk said after a poll.
#[derive(Debug, Default)]
pub struct Durable {
    /// Every protocol write up to this one is durable.
    pub up_to: Option<protocol::WriteId>,
    /// Seconds each completed WAL write took from hand-off to durable.
    pub write_seconds: Vec<f64>,
    /// For each completed disk write that finished a protocol write: that write, and when the
    /// disk write went to the disk (the latency anatomy's "WAL submitted").
    pub submitted: Vec<(protocol::WriteId, Nanos)>,
}

/// One unit the WAL takes: a log entry, or the superblock.
enum Record {
    Entry {
        slot: Slot,
        ballot: Ballot,
        body: rkyv::util::AlignedVec,
    },
    Superblock {
        promised: Ballot,
    },
}

impl Record {
    fn append_bytes(&self) -> usize {
        match self {
            Record::Entry { body, .. } => ENTRY_HEADER_BYTES + body.len(),
            Record::Superblock { .. } => 0,
        }
    }
}

/// A record waiting for the WAL; `completes` is the protocol write it finishes, if it is the
/// last record of one.
struct Queued {
    record: Record,
    completes: Option<protocol::WriteId>,
}

pub struct Storage<D: Disk> {
    disk: D,
    limits: DiskLimits,
    /// (WAL write id, highest protocol write it completes, handed over at).
    in_flight: VecDeque<(wal::WriteId, Option<protocol::WriteId>, Nanos)>,
    /// Records the WAL pushed back on; retried in order after the next completion.
    backlog: VecDeque<Queued>,
    backlog_bytes: usize,
    completed: Vec<wal::WriteId>,
    /// Injected bug (simulator only): report writes durable as soon as they are handed over.
    ack_before_durable: bool,
    acked_early: Option<protocol::WriteId>,
}

/// Rebuilds the protocol's durable state from what the WAL recovered (the server's WAL at
/// start-up, or the simulator's disk after a crash): one code path for both. `floor` is the
/// slot of the snapshot the replica starts from (0: none): entries at or below it are
/// skipped, so restart work depends on the log since the snapshot, not on history.
pub fn replay(
    promised: wal::Ballot,
    entries: &[RecoveredEntry],
    floor: Slot,
) -> Result<DurableState, String> {
    let mut durable = DurableState {
        floor,
        ..DurableState::default()
    };
    durable.apply(&Write::Promise {
        ballot: Ballot::new(promised.round, promised.replica),
    });
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    for e in entries.iter().filter(|e| e.slot_first > floor) {
        aligned.clear();
        aligned.extend_from_slice(&e.body);
        let record = access::<WalRecord>(&aligned).map_err(|err| {
            format!(
                "WAL entry for slot {} at log offset {} does not decode ({err}); this data directory was written by an incompatible version",
                e.slot_first, e.log_offset
            )
        })?;
        let value = value_from_archived(&record.value);
        let slot = e.slot_first;
        if record.chosen {
            durable.apply(&Write::Chosen {
                entries: vec![(slot, value)],
            });
        } else {
            let commit = record.commit.to_native();
            durable.apply(&Write::Accept {
                ballot: Ballot::new(e.ballot.round, e.ballot.replica),
                slot,
                value,
                commit: if commit == FAST_VOTE { 0 } else { commit },
                fast: commit == FAST_VOTE,
            });
        }
    }
    Ok(durable)
}

/// Encodes one entry body (an accepted or a chosen value), into a buffer sized for it up
/// front: grown by doubling from empty and then copied into a `Vec`, this was 8 % of the
/// servers' CPU at 64 clients (perf, results/anatomy.md).
pub fn encode_record(
    chosen: bool,
    value: &protocol::Value,
    commit: Slot,
) -> rkyv::util::AlignedVec {
    let record = WalRecord {
        chosen,
        value: value_to_wire(value),
        commit,
    };
    let out = rkyv::util::AlignedVec::with_capacity(record_bytes_bound(value));
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&record, out)
        .expect("serializing into memory cannot fail")
}

/// At least the size of a record holding `value`: each command archives as two u64s, a
/// relative pointer and a length (24 bytes) plus its payload; the record adds a few words.
fn record_bytes_bound(value: &protocol::Value) -> usize {
    64 + match value {
        protocol::Value::Noop => 0,
        protocol::Value::Batch(cmds) => cmds.iter().map(|c| 40 + c.payload.len()).sum(),
    }
}

/// Decodes one entry body the way recovery does (the simulator uses it to see which value an
/// acceptor wrote).
pub fn decode_value(body: &[u8]) -> Option<(RecordKind, protocol::Value)> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(body);
    let record = access::<WalRecord>(&aligned).ok()?;
    let kind = if record.chosen {
        RecordKind::Chosen
    } else if record.commit.to_native() == FAST_VOTE {
        RecordKind::FastVote
    } else {
        RecordKind::Accepted
    };
    Some((kind, value_from_archived(&record.value)))
}

impl Storage<Wal> {
    /// Opens the WAL and rebuilds the protocol's durable state from it, starting at the
    /// newest valid snapshot (left in `Recovered::snapshot` for the state machine).
    pub fn open(cfg: WalConfig) -> Result<(Storage<Wal>, DurableState, wal::Recovered), String> {
        let (wal, mut recovered) = Wal::open(cfg).map_err(|e| e.to_string())?;
        let floor = recovered.snapshot.as_ref().map_or(0, |s| s.slot);
        let durable = replay(recovered.superblock.promised, &recovered.entries, floor)?;
        recovered.entries = Vec::new();
        Ok((Storage::new(wal), durable, recovered))
    }

    pub fn wal(&self) -> &Wal {
        &self.disk
    }
}

impl<D: Disk> Storage<D> {
    /// Frees released memory off this thread where the disk can ([`Disk::free`]).
    pub fn free(&mut self, garbage: Box<dyn Send>) {
        self.disk.free(garbage);
    }

    /// Bytes of log a restart would read now ([`Disk::retained_bytes`]).
    pub fn retained_bytes(&self) -> u64 {
        self.disk.retained_bytes()
    }

    pub fn new(disk: D) -> Storage<D> {
        let limits = disk.limits();
        assert!(
            limits.append_bytes_max >= SECTOR_BYTES && limits.entry_bytes_max > 0,
            "WAL limits too small: {limits:?}"
        );
        Storage {
            disk,
            limits,
            in_flight: VecDeque::new(),
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            completed: Vec::new(),
            ack_before_durable: false,
            acked_early: None,
        }
    }

    /// Injected bug for the simulator: acknowledge writes before the disk says they are
    /// durable.
    pub fn inject_ack_before_durable(&mut self) {
        self.ack_before_durable = true;
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    /// The same storage on a wrapper of its disk (test builds inject disk faults this way);
    /// only before any write was handed over.
    pub fn map_disk<E: Disk>(self, wrap: impl FnOnce(D) -> E) -> Storage<E> {
        assert!(self.pending() == 0, "map_disk with writes in flight");
        Storage::new(wrap(self.disk))
    }

    /// Writes not yet durable (handed to the WAL or held back).
    pub fn pending(&self) -> usize {
        self.in_flight.len() + self.backlog.len()
    }

    /// Bytes of log records waiting for the WAL to take them.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog_bytes
    }

    /// Hands the protocol's writes to the WAL (in order). A fatal WAL error stops the group.
    pub fn submit(
        &mut self,
        now: Nanos,
        writes: impl IntoIterator<Item = (protocol::WriteId, Write)>,
    ) -> Result<(), WalError> {
        for (id, write) in writes {
            self.enqueue(id, write)?;
        }
        self.drain_backlog(now)
    }

    fn enqueue(&mut self, id: protocol::WriteId, write: Write) -> Result<(), WalError> {
        let start = self.backlog.len();
        match write {
            Write::Promise { ballot } => self.push(Record::Superblock { promised: ballot }),
            Write::Accept {
                ballot,
                slot,
                value,
                commit,
                fast,
            } => {
                let commit = if fast { FAST_VOTE } else { commit };
                self.push_entry(slot, ballot, false, &value, commit)?
            }
            Write::Chosen { entries } => {
                for (slot, value) in &entries {
                    self.push_entry(*slot, Ballot::ZERO, true, value, 0)?;
                }
            }
        }
        if self.backlog.len() == start {
            // A write with nothing to store (an empty Chosen) is durable as soon as the
            // writes before it are: let it complete with the next one.
            self.push(Record::Superblock {
                promised: Ballot::ZERO,
            });
        }
        self.backlog.back_mut().expect("just pushed").completes = Some(id);
        Ok(())
    }

    fn push(&mut self, record: Record) {
        self.backlog_bytes += record.append_bytes();
        self.backlog.push_back(Queued {
            record,
            completes: None,
        });
    }

    fn push_entry(
        &mut self,
        slot: Slot,
        ballot: Ballot,
        chosen: bool,
        value: &protocol::Value,
        commit: Slot,
    ) -> Result<(), WalError> {
        let body = encode_record(chosen, value, commit);
        if body.len() > self.limits.entry_bytes_max
            || ENTRY_HEADER_BYTES + body.len() > self.limits.append_bytes_max
        {
            // The protocol's batching limits keep slots far below this; reaching it is a
            // configuration error, not something to retry.
            return Err(WalError::Limit {
                what: format!("the WAL entry for slot {slot} ({} bytes)", body.len()),
                limit: self.limits.entry_bytes_max as u64,
            });
        }
        self.push(Record::Entry { slot, ballot, body });
        Ok(())
    }

    fn drain_backlog(&mut self, now: Nanos) -> Result<(), WalError> {
        while let Some(front) = self.backlog.front() {
            if let Record::Superblock { promised } = front.record {
                let result = if promised == Ballot::ZERO && front.completes.is_some() {
                    // The placeholder of an empty write: nothing to store.
                    None
                } else {
                    Some(self.disk.set_superblock(SuperState {
                        promised: to_wal_ballot(promised),
                        app: Vec::new(),
                    }))
                };
                match result {
                    Some(Ok(wid)) => {
                        let q = self.backlog.pop_front().expect("front exists");
                        self.handed_over(wid, q.completes, now);
                    }
                    None => {
                        let q = self.backlog.pop_front().expect("front exists");
                        self.complete_with_previous(q.completes);
                    }
                    Some(Err(WalError::Backpressure { .. })) => return Ok(()),
                    Some(Err(e)) => return Err(e),
                }
                continue;
            }
            // A run of log entries becomes one append, cut at the WAL's batch limit.
            let mut run = 0;
            let mut bytes = 0;
            for q in &self.backlog {
                let Record::Entry { body, .. } = &q.record else {
                    break;
                };
                let next = bytes + ENTRY_HEADER_BYTES + body.len();
                if run > 0 && next.next_multiple_of(SECTOR_BYTES) > self.limits.append_bytes_max {
                    break;
                }
                bytes = next;
                run += 1;
            }
            let result = {
                let entries: Vec<wal::Entry<'_>> = self
                    .backlog
                    .iter()
                    .take(run)
                    .map(|q| match &q.record {
                        Record::Entry { slot, ballot, body } => wal::Entry {
                            slot_first: *slot,
                            slot_last: *slot,
                            ballot: to_wal_ballot(*ballot),
                            body: body.as_slice(),
                        },
                        Record::Superblock { .. } => unreachable!("a run holds entries only"),
                    })
                    .collect();
                self.disk.append(&entries)
            };
            match result {
                Ok(wid) => {
                    let mut completes = None;
                    for q in self.backlog.drain(..run) {
                        self.backlog_bytes -= q.record.append_bytes();
                        completes = q.completes.or(completes);
                    }
                    self.handed_over(wid, completes, now);
                }
                Err(WalError::Backpressure { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn handed_over(&mut self, wid: wal::WriteId, completes: Option<protocol::WriteId>, now: Nanos) {
        if self.ack_before_durable && completes.is_some() {
            self.acked_early = completes;
        }
        self.in_flight.push_back((wid, completes, now));
    }

    /// A write that needs no disk work completes with the last write handed over before it.
    fn complete_with_previous(&mut self, completes: Option<protocol::WriteId>) {
        match self.in_flight.back_mut() {
            Some(last) => last.1 = completes.or(last.1),
            None => {
                // Nothing in flight: it is durable now.
                self.acked_early = completes.or(self.acked_early);
            }
        }
    }

    /// Collects completions. Call when the WAL's eventfd is readable (and cheaply at any time).
    pub fn poll(&mut self, now: Nanos) -> Result<Durable, WalError> {
        let mut out = Durable {
            up_to: self.acked_early.take(),
            ..Default::default()
        };
        if self.in_flight.is_empty() {
            return Ok(out);
        }
        self.completed.clear();
        self.disk.poll_completions(&mut self.completed)?;
        let Some(&last) = self.completed.last() else {
            return Ok(out);
        };
        while let Some(&(wid, pid, at)) = self.in_flight.front() {
            if wid > last {
                break;
            }
            self.in_flight.pop_front();
            if let Some(p) = pid {
                out.up_to = pid.max(out.up_to);
                out.submitted.push((p, at));
            }
            out.write_seconds
                .push((now.saturating_sub(at)) as f64 / 1e9);
        }
        if !self.backlog.is_empty() {
            self.drain_backlog(now)?;
        }
        Ok(out)
    }

    /// Blocks until everything handed over is durable (clean shutdown).
    pub fn flush(&mut self) -> Result<(), WalError> {
        self.disk.flush()
    }

    /// Starts writing a snapshot in the background; see [`Disk::start_snapshot`].
    pub fn start_snapshot(&mut self, slot: Slot, data: SnapshotData) -> Result<(), WalError> {
        self.disk.start_snapshot(slot, data)
    }

    /// The slot and bytes of a snapshot that became durable since the last call.
    pub fn poll_snapshot(&mut self) -> Result<Option<(Slot, bytes::Bytes)>, WalError> {
        self.disk.poll_snapshot()
    }

    /// Releases the log below a durable snapshot.
    pub fn release_log(&mut self, slot: Slot) -> Result<usize, WalError> {
        self.disk.release_log(slot)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, Value};
    use crate::wal::BackendChoice;
    use std::sync::Arc;

    #[test]
    fn records_fit_the_buffer_sized_for_them_and_decode() {
        // Payloads of every length from empty up, odd lengths included (the archive pads).
        let mut values = vec![Value::Noop];
        for n in [1usize, 2, 3, 7, 64, 500] {
            for len in [0usize, 1, 7, 8, 9, 100, 4097] {
                values.push(Value::Batch(Arc::from(
                    (0..n)
                        .map(|i| Command {
                            client_id: u64::MAX - i as u64,
                            seq: i as u64 * 31,
                            payload: bytes::Bytes::from(vec![i as u8; len + i % 3]),
                        })
                        .collect::<Vec<_>>(),
                )));
            }
        }
        for value in values {
            for chosen in [false, true] {
                let body = encode_record(chosen, &value, 77);
                assert!(
                    body.len() <= record_bytes_bound(&value),
                    "{} bytes",
                    body.len()
                );
                let (kind, back) = decode_value(&body).unwrap();
                assert_eq!(back, value);
                let want = if chosen {
                    RecordKind::Chosen
                } else {
                    RecordKind::Accepted
                };
                assert_eq!(kind, want);
            }
        }
    }

    fn batch(n: u64) -> Value {
        Value::Batch(Arc::from(
            (0..n)
                .map(|i| Command {
                    client_id: 9,
                    seq: i,
                    payload: bytes::Bytes::from(vec![i as u8; 10]),
                })
                .collect::<Vec<_>>(),
        ))
    }

    #[test]
    fn writes_survive_a_reopen() {
        for backend in [BackendChoice::Sync, BackendChoice::Auto] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = WalConfig::new(dir.path(), 5, 0);
            cfg.backend = backend;
            cfg.segment_bytes = 1 << 20;
            // A batch must fit in a segment after its header, an entry in a batch.
            cfg.max_batch_bytes = 512 << 10;
            cfg.max_entry_bytes = 256 << 10;
            let (mut st, durable, _) = Storage::open(cfg.clone()).unwrap();
            assert_eq!(durable, DurableState::default());
            let b1 = Ballot::new(1, 2);
            let writes = vec![
                (1, Write::Promise { ballot: b1 }),
                (
                    2,
                    Write::Accept {
                        ballot: b1,
                        slot: 1,
                        value: batch(3),
                        commit: 1,
                        fast: false,
                    },
                ),
                (
                    3,
                    // A Fast Paxos vote: recovered as a vote, not as an accept with a commit.
                    Write::Accept {
                        ballot: b1,
                        slot: 4,
                        value: batch(2),
                        commit: 0,
                        fast: true,
                    },
                ),
                (
                    4,
                    Write::Chosen {
                        entries: vec![(2, Value::Noop), (3, batch(1))],
                    },
                ),
            ];
            let mut expected = DurableState::default();
            for (_, w) in &writes {
                expected.apply(w);
            }
            st.submit(0, writes).unwrap();
            let mut up_to = None;
            for _ in 0..1000 {
                if let Some(u) = st.poll(0).unwrap().up_to {
                    up_to = Some(u);
                }
                if up_to == Some(4) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            assert_eq!(up_to, Some(4));
            drop(st);
            let (_, durable, _) = Storage::open(cfg).unwrap();
            assert!(durable.fast.contains(&4) && !durable.fast.contains(&1));
            assert_eq!(durable, expected);
        }
    }

    /// A snapshot written through the storage (off-thread) becomes durable, releases the log
    /// below it, and a reopen starts from it: the floor is its slot and only the entries above
    /// it are replayed.
    #[test]
    fn reopen_starts_from_the_newest_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = WalConfig::new(dir.path(), 5, 0);
        cfg.backend = BackendChoice::Sync;
        cfg.segment_bytes = 64 << 10;
        cfg.max_batch_bytes = 32 << 10;
        cfg.max_entry_bytes = 16 << 10;
        let (mut st, _, _) = Storage::open(cfg.clone()).unwrap();
        let wait = |st: &mut Storage<Wal>, id: protocol::WriteId| {
            for _ in 0..5000 {
                if st.poll(0).unwrap().up_to == Some(id) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            panic!("write {id} never became durable");
        };
        // Enough chosen slots to fill several segments.
        for id in 1..=40u64 {
            let entries = (1..=10).map(|i| ((id - 1) * 10 + i, batch(40))).collect();
            st.submit(0, vec![(id, Write::Chosen { entries })]).unwrap();
            wait(&mut st, id);
        }
        let segments_before = crate::wal::files::list_dir(dir.path())
            .unwrap()
            .segments
            .len();
        let image = b"state at slot 300".to_vec();
        let encoded = image.clone();
        st.start_snapshot(
            300,
            SnapshotData::Encode(Box::new(move || bytes::Bytes::from(encoded))),
        )
        .unwrap();
        let mut durable_at = None;
        for _ in 0..5000 {
            durable_at = st.poll_snapshot().unwrap();
            if durable_at.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(durable_at, Some((300, bytes::Bytes::from(image.clone()))));
        let released = st.release_log(300).unwrap();
        assert!(released > 0, "no segment released");
        // The files go on the WAL's reclaimer thread.
        st.wal().wait_reclaimed();
        let segments_after = crate::wal::files::list_dir(dir.path())
            .unwrap()
            .segments
            .len();
        assert_eq!(segments_after, segments_before - released);
        drop(st);
        let (_, durable, recovered) = Storage::open(cfg).unwrap();
        let snap = recovered.snapshot.expect("the snapshot is found");
        assert_eq!((snap.slot, snap.data), (300, image));
        assert_eq!(durable.floor, 300);
        assert!(durable.chosen.keys().all(|s| *s > 300));
        assert_eq!(durable.chosen.keys().next_back(), Some(&400));
        assert_eq!(durable.chosen.len(), 100);
    }

    /// Hole: one run of log writes used to become one append, and an append over the WAL's
    /// batch limit (a catch-up of big values, a backlog behind a slow disk) failed the group
    /// for good. Runs are now cut at the limit, and a write larger than one append spans
    /// several.
    #[test]
    fn a_run_over_the_append_limit_is_split_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = WalConfig::new(dir.path(), 5, 0);
        cfg.backend = BackendChoice::Sync;
        cfg.segment_bytes = 64 << 20;
        cfg.max_batch_bytes = 4 << 20;
        cfg.max_entry_bytes = 2 << 20;
        cfg.max_pending_writes = 2;
        let (mut st, _, _) = Storage::open(cfg.clone()).unwrap();
        let big = |seq: u64| {
            Value::Batch(Arc::from(vec![Command {
                client_id: 1,
                seq,
                payload: bytes::Bytes::from(vec![7u8; 1 << 20]),
            }]))
        };
        let b1 = Ballot::new(1, 0);
        // 12 MiB of chosen values in one protocol write, then accepts: three times the
        // append limit, and more appends than the WAL queues at once (backpressure).
        let mut writes = vec![(
            1,
            Write::Chosen {
                entries: (1..=12).map(|s| (s, big(s))).collect(),
            },
        )];
        for slot in 13..=20 {
            writes.push((
                slot - 11,
                Write::Accept {
                    ballot: b1,
                    slot,
                    value: big(slot),
                    commit: 12,
                    fast: false,
                },
            ));
        }
        let mut expected = DurableState::default();
        for (_, w) in &writes {
            expected.apply(w);
        }
        st.submit(0, writes)
            .expect("a big run is split, never refused");
        let mut up_to = None;
        for _ in 0..5000 {
            if let Some(u) = st.poll(0).unwrap().up_to {
                up_to = Some(u);
            }
            if up_to == Some(9) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(up_to, Some(9));
        drop(st);
        let (_, durable, _) = Storage::open(cfg).unwrap();
        assert_eq!(durable, expected);
    }
}
