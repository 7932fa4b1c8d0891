//! The bridge between the protocol's numbered writes and the group's WAL.
//!
//! Owns: encoding protocol writes as WAL entries (and decoding them at start-up), grouping
//! the log writes of one loop turn into one append, keeping protocol write ids and WAL write
//! ids in step (both complete in order), and holding writes back while the WAL pushes back.
//!
//! Mapping: `Promise` → the superblock's promised ballot; `Accept` → one entry for its slot at
//! its ballot, carrying the leader's commit index; `Chosen` → one entry per slot, flagged
//! chosen. Replaying entries in log order
//! through [`DurableState::apply`] rebuilds the state the replica had.

use std::collections::VecDeque;

use rkyv::{Archive, Deserialize, Serialize};

use crate::net::frame::access;
use crate::net::wire::{value_from_archived, value_to_wire, WValue};
use crate::protocol::{self, Ballot, DurableState, Nanos, Slot, Write};
use crate::wal::{self, Recovered, SuperState, Wal, WalConfig, WalError};

/// The body of one WAL entry.
#[derive(Archive, Serialize, Deserialize, Debug)]
struct WalRecord {
    chosen: bool,
    value: WValue,
    /// For an accepted value: the commit index its leader sent with it (0 for chosen ones).
    commit: u64,
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
}

pub struct Storage {
    wal: Wal,
    /// (WAL write id, highest protocol write id it carries, handed over at).
    in_flight: VecDeque<(wal::WriteId, protocol::WriteId, Nanos)>,
    /// Protocol writes the WAL pushed back on; retried in order after the next completion.
    backlog: VecDeque<(protocol::WriteId, Write)>,
    bodies: Vec<rkyv::util::AlignedVec>,
    completed: Vec<wal::WriteId>,
}

impl Storage {
    /// Opens the WAL and rebuilds the protocol's durable state from it.
    pub fn open(cfg: WalConfig) -> Result<(Storage, DurableState, Recovered), String> {
        let (wal, mut recovered) = Wal::open(cfg).map_err(|e| e.to_string())?;
        let mut durable = DurableState::default();
        let sb = recovered.superblock.promised;
        durable.apply(&Write::Promise {
            ballot: Ballot::new(sb.round, sb.replica),
        });
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        for e in recovered.entries.drain(..) {
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
                durable.apply(&Write::Accept {
                    ballot: Ballot::new(e.ballot.round, e.ballot.replica),
                    slot,
                    value,
                    commit: record.commit.to_native(),
                });
            }
        }
        let storage = Storage {
            wal,
            in_flight: VecDeque::new(),
            backlog: VecDeque::new(),
            bodies: Vec::new(),
            completed: Vec::new(),
        };
        Ok((storage, durable, recovered))
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Writes not yet durable (handed to the WAL or held back).
    pub fn pending(&self) -> usize {
        self.in_flight.len() + self.backlog.len()
    }

    /// Hands the protocol's writes to the WAL (in order). A fatal WAL error stops the group.
    pub fn submit(
        &mut self,
        now: Nanos,
        writes: impl IntoIterator<Item = (protocol::WriteId, Write)>,
    ) -> Result<(), WalError> {
        self.backlog.extend(writes);
        self.drain_backlog(now)
    }

    fn drain_backlog(&mut self, now: Nanos) -> Result<(), WalError> {
        while let Some((id, write)) = self.backlog.front() {
            if let Write::Promise { ballot } = write {
                let state = SuperState {
                    promised: to_wal_ballot(*ballot),
                    app: Vec::new(),
                };
                let id = *id;
                match self.wal.set_superblock(state) {
                    Ok(wid) => {
                        self.in_flight.push_back((wid, id, now));
                        self.backlog.pop_front();
                        continue;
                    }
                    Err(WalError::Backpressure { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            // A run of log writes becomes one append.
            let run = self
                .backlog
                .iter()
                .take_while(|(_, w)| !matches!(w, Write::Promise { .. }))
                .count();
            match self.append_run(run) {
                Ok(wid) => {
                    let last = self.backlog[run - 1].0;
                    self.in_flight.push_back((wid, last, now));
                    self.backlog.drain(..run);
                }
                Err(WalError::Backpressure { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn append_run(&mut self, run: usize) -> Result<wal::WriteId, WalError> {
        let mut meta: Vec<(Slot, Ballot)> = Vec::new();
        let mut used = 0;
        for (_, write) in self.backlog.iter().take(run) {
            let mut push = |slot: Slot,
                            ballot: Ballot,
                            chosen: bool,
                            value: &protocol::Value,
                            commit: Slot| {
                let record = WalRecord {
                    chosen,
                    value: value_to_wire(value),
                    commit,
                };
                if self.bodies.len() <= used {
                    self.bodies.push(rkyv::util::AlignedVec::new());
                }
                let mut buf = std::mem::take(&mut self.bodies[used]);
                buf.clear();
                self.bodies[used] =
                    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&record, buf)
                        .expect("serializing into memory cannot fail");
                used += 1;
                meta.push((slot, ballot));
            };
            match write {
                Write::Accept {
                    ballot,
                    slot,
                    value,
                    commit,
                } => push(*slot, *ballot, false, value, *commit),
                Write::Chosen { entries } => {
                    for (slot, value) in entries {
                        push(*slot, Ballot::ZERO, true, value, 0);
                    }
                }
                Write::Promise { .. } => unreachable!("a run holds log writes only"),
            }
        }
        let entries: Vec<wal::Entry<'_>> = meta
            .iter()
            .zip(&self.bodies[..used])
            .map(|((slot, ballot), body)| wal::Entry {
                slot_first: *slot,
                slot_last: *slot,
                ballot: to_wal_ballot(*ballot),
                body: body.as_slice(),
            })
            .collect();
        self.wal.append(&entries)
    }

    /// Collects completions. Call when the WAL's eventfd is readable (and cheaply at any time).
    pub fn poll(&mut self, now: Nanos) -> Result<Durable, WalError> {
        let mut out = Durable::default();
        if self.in_flight.is_empty() {
            return Ok(out);
        }
        self.completed.clear();
        self.wal.poll_completions(&mut self.completed)?;
        let Some(&last) = self.completed.last() else {
            return Ok(out);
        };
        while let Some(&(wid, pid, at)) = self.in_flight.front() {
            if wid > last {
                break;
            }
            self.in_flight.pop_front();
            out.up_to = Some(pid);
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
        self.wal.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Command, Value};
    use crate::wal::BackendChoice;
    use std::sync::Arc;

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
                    },
                ),
                (
                    3,
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
                if up_to == Some(3) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            assert_eq!(up_to, Some(3));
            drop(st);
            let (_, durable, _) = Storage::open(cfg).unwrap();
            assert_eq!(durable, expected);
        }
    }
}
