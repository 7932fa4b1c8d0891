//! The `sync` backend: `pwrite` + `fdatasync` on one worker thread per WAL, completions
//! through an eventfd. Works wherever POSIX files do.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::{Backend, BackendKind, Completion, EventFd, WriteOp};

pub struct SyncBackend {
    to_worker: Option<SyncSender<WriteOp>>,
    from_worker: Receiver<Completion>,
    efd: Arc<EventFd>,
    worker: Option<JoinHandle<()>>,
    in_flight: usize,
}

impl SyncBackend {
    pub fn new(queue_depth: u32) -> io::Result<SyncBackend> {
        let efd = Arc::new(EventFd::new()?);
        let (to_worker, rx) = sync_channel::<WriteOp>(queue_depth as usize);
        let (tx, from_worker) = sync_channel::<Completion>(queue_depth as usize);
        let signal = efd.clone();
        let worker = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                for op in rx {
                    let result = op
                        .file
                        .write_all_at(op.buf.as_slice(), op.offset)
                        .and_then(|()| op.file.sync_data());
                    let done = Completion {
                        token: op.token,
                        buf: op.buf,
                        result,
                    };
                    if tx.send(done).is_err() {
                        return;
                    }
                    signal.signal();
                }
            })?;
        Ok(SyncBackend {
            to_worker: Some(to_worker),
            from_worker,
            efd,
            worker: Some(worker),
            in_flight: 0,
        })
    }
}

impl Backend for SyncBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Sync
    }

    fn submit(&mut self, op: WriteOp) -> io::Result<()> {
        let tx = self.to_worker.as_ref().expect("worker alive until drop");
        tx.send(op)
            .map_err(|_| io::Error::other("the WAL sync worker thread stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        self.efd.drain();
        while let Ok(c) = self.from_worker.try_recv() {
            self.in_flight -= 1;
            out.push(c);
        }
        Ok(())
    }

    fn eventfd(&self) -> RawFd {
        self.efd.fd()
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for SyncBackend {
    fn drop(&mut self) {
        // Closing the channel ends the worker after the writes already queued.
        self.to_worker.take();
        while self.in_flight > 0 {
            match self.from_worker.recv() {
                Ok(_) => self.in_flight -= 1,
                Err(_) => break,
            }
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
