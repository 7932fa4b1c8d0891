//! The `uring` backend: io_uring writes that are durable on completion, either with
//! `RWF_DSYNC` on the write itself or as a write linked (`IO_LINK`) to an `fdatasync`.
//! Completions are signalled through an eventfd registered with the ring.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use super::{Backend, BackendKind, Completion, EventFd, WriteOp};

/// How a uring write is made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UringSync {
    /// One write with `RWF_DSYNC` (FUA where the device has it).
    #[default]
    RwfDsync,
    /// A write linked to an `fdatasync` (`IORING_FSYNC_DATASYNC`).
    LinkedFdatasync,
}

struct Slot {
    op: WriteOp,
    /// Bytes of the buffer already written (short writes are resubmitted).
    written: usize,
    /// Result of the write half of a linked pair, awaiting its fsync.
    write_result: Option<io::Result<usize>>,
}

pub struct UringBackend {
    ring: IoUring,
    efd: EventFd,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    sync: UringSync,
    in_flight: usize,
    /// Reused between reaps so the hot path does not allocate.
    cqe_scratch: Vec<(u64, i32)>,
}

const FSYNC_BIT: u64 = 1;

impl UringBackend {
    /// Sets up a ring for `queue_depth` writes. Fails with the kernel's error (ENOSYS, EPERM,
    /// ENOMEM for memlock limits) when io_uring is refused.
    pub fn new(queue_depth: u32, sync: UringSync) -> io::Result<UringBackend> {
        assert!(queue_depth >= 1);
        let ring = IoUring::new((queue_depth * 2).next_power_of_two())?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Write::CODE, opcode::Fsync::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the kernel's io_uring lacks IORING_OP_WRITE or IORING_OP_FSYNC",
                ));
            }
        }
        let efd = EventFd::new()?;
        ring.submitter().register_eventfd(efd.fd())?;
        Ok(UringBackend {
            ring,
            efd,
            slots: (0..queue_depth).map(|_| None).collect(),
            free: (0..queue_depth as usize).rev().collect(),
            sync,
            in_flight: 0,
            cqe_scratch: Vec::with_capacity(queue_depth as usize * 2),
        })
    }

    fn push(&mut self, slot_i: usize) -> io::Result<()> {
        let slot = self.slots[slot_i].as_ref().expect("slot in use");
        let buf = &slot.op.buf;
        let fd = types::Fd(slot.op.file.as_raw_fd());
        let remaining = buf.len() - slot.written;
        // SAFETY: the buffer lives in `self.slots` until its completion is reaped.
        let ptr = unsafe { buf.as_ptr().add(slot.written) };
        let write = opcode::Write::new(fd, ptr, remaining as u32)
            .offset(slot.op.offset + slot.written as u64);
        let token = (slot_i as u64) << 1;
        let mut sq = self.ring.submission();
        // SAFETY: entries reference buffers kept alive in `self.slots` until completion.
        unsafe {
            match self.sync {
                UringSync::RwfDsync => {
                    let e = write.rw_flags(libc::RWF_DSYNC).build().user_data(token);
                    sq.push(&e)
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                }
                UringSync::LinkedFdatasync => {
                    let w = write.build().flags(squeue::Flags::IO_LINK).user_data(token);
                    let f = opcode::Fsync::new(fd)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(token | FSYNC_BIT);
                    sq.push_multiple(&[w, f])
                        .map_err(|_| io::Error::other("io_uring submission queue full"))?;
                }
            }
        }
        drop(sq);
        self.ring.submit()?;
        Ok(())
    }

    /// Handles one CQE; returns a finished write, if this CQE finished one.
    fn on_cqe(&mut self, user_data: u64, res: i32) -> io::Result<Option<Completion>> {
        let slot_i = (user_data >> 1) as usize;
        let is_fsync = user_data & FSYNC_BIT != 0;
        let result = if res < 0 {
            Err(io::Error::from_raw_os_error(-res))
        } else {
            Ok(res as usize)
        };
        let slot = self.slots[slot_i].as_mut().expect("cqe for a live slot");
        let outcome: io::Result<usize> = match (self.sync, is_fsync) {
            (UringSync::RwfDsync, _) => result,
            (UringSync::LinkedFdatasync, false) => {
                slot.write_result = Some(result);
                return Ok(None);
            }
            (UringSync::LinkedFdatasync, true) => {
                match slot
                    .write_result
                    .take()
                    .expect("write cqe precedes its fsync")
                {
                    Err(e) => Err(e),
                    Ok(n) => result.map(|_| n),
                }
            }
        };
        match outcome {
            Ok(n) if slot.written + n < slot.op.buf.len() && n > 0 => {
                slot.written += n;
                self.push(slot_i)?;
                Ok(None)
            }
            Ok(0) => Ok(Some(
                self.finish(slot_i, Err(io::ErrorKind::WriteZero.into())),
            )),
            Ok(_) => Ok(Some(self.finish(slot_i, Ok(())))),
            Err(e) => Ok(Some(self.finish(slot_i, Err(e)))),
        }
    }

    fn finish(&mut self, slot_i: usize, result: io::Result<()>) -> Completion {
        let slot = self.slots[slot_i].take().expect("finishing a live slot");
        self.free.push(slot_i);
        self.in_flight -= 1;
        Completion {
            token: slot.op.token,
            buf: slot.op.buf,
            result,
        }
    }
}

impl Backend for UringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Uring
    }

    fn submit(&mut self, op: WriteOp) -> io::Result<()> {
        let slot_i = self
            .free
            .pop()
            .ok_or_else(|| io::Error::other("io_uring backend queue depth exceeded"))?;
        self.slots[slot_i] = Some(Slot {
            op,
            written: 0,
            write_result: None,
        });
        self.in_flight += 1;
        if let Err(e) = self.push(slot_i) {
            self.slots[slot_i] = None;
            self.free.push(slot_i);
            self.in_flight -= 1;
            return Err(e);
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.efd.drain();
        let mut cqes = std::mem::take(&mut self.cqe_scratch);
        let result = loop {
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if cqes.is_empty() {
                break Ok(());
            }
            if let Err(e) = cqes.iter().try_for_each(|&(ud, res)| {
                if let Some(c) = self.on_cqe(ud, res)? {
                    out.push(c);
                }
                Ok::<(), io::Error>(())
            }) {
                break Err(e);
            }
        };
        self.cqe_scratch = cqes;
        result
    }

    fn eventfd(&self) -> RawFd {
        self.efd.fd()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // The kernel may still write from our buffers: wait for every write before freeing.
        while self.in_flight > 0 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            let mut sink = Vec::new();
            if self.reap(&mut sink).is_err() {
                break;
            }
        }
    }
}
