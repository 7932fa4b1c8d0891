//! The `memory` backend: every write completes at once and nothing is stored. For benchmarks
//! of the layers above the disk only.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use super::{Backend, BackendKind, Completion, EventFd, WriteOp};

pub struct MemoryBackend {
    done: VecDeque<Completion>,
    efd: EventFd,
}

impl MemoryBackend {
    pub fn new() -> io::Result<MemoryBackend> {
        Ok(MemoryBackend {
            done: VecDeque::new(),
            efd: EventFd::new()?,
        })
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    fn submit(&mut self, op: WriteOp) -> io::Result<()> {
        self.done.push_back(Completion {
            token: op.token,
            buf: op.buf,
            result: Ok(()),
        });
        self.efd.signal();
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.efd.drain();
        out.extend(self.done.drain(..));
        Ok(())
    }

    fn eventfd(&self) -> RawFd {
        self.efd.fd()
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }
}
