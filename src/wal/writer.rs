//! [`Wal`]: group commit, ordered completions, segment rolling and start-up recovery.
//!
//! At most one log write and one superblock write are in flight at a time. Appends made while
//! the log write is in flight are encoded into the next batch (adaptive group commit) and go
//! out together when it completes. Keeping one log write in flight is what lets recovery tell a
//! torn tail (the last batch) from damage to acknowledged data (anything before a later valid
//! batch); see `scan.rs`.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::backend::{self, Backend, BackendChoice, BackendKind, Completion, WriteOp};
use super::buf::AlignedBuf;
use super::error::WalError;
use super::files::{self, create_segment, open_rw, segment_name, SUPERBLOCK_NAME};
use super::format::{
    align_up, BatchEncoder, Entry, SegmentHeader, SuperState, ENTRY_HEADER_BYTES, SECTOR_BYTES,
    SUPER_APP_MAX_BYTES,
};
use super::scan::{self, OnCorruption, ScanConfig, ScanRefusal, SegmentImage};
use super::superblock::{self, PAIR_BYTES};
use super::{snapshot, Recovered, RecoveryReport, WalConfig, WriteId};

struct SegFile {
    index: u64,
    file: Arc<File>,
    /// Highest slot of any entry in the segment; a segment is released only when a snapshot
    /// covers it.
    max_slot: Option<u64>,
}

struct Staged {
    enc: BatchEncoder,
    buf: AlignedBuf,
    token: u64,
    seg_index: u64,
}

const SUPER_TOKEN_BIT: u64 = 1;

/// The write-ahead log of one group. Not `Sync`: owned by the group's thread.
pub struct Wal {
    cfg: WalConfig,
    direct: bool,
    memory: bool,
    backend: Box<dyn Backend>,
    backend_reason: String,
    segments: VecDeque<SegFile>,
    spare: Option<(u64, JoinHandle<Result<File, WalError>>)>,
    /// Absolute log offset just past the last batch handed to the backend.
    next_offset: u64,
    /// Header checksum of the last entry handed to the backend.
    chain: u32,
    staged: Option<Staged>,
    free_bufs: Vec<AlignedBuf>,
    log_in_flight: Option<u64>,
    super_file: Arc<File>,
    super_seq: u64,
    super_state: SuperState,
    super_pending: Option<(SuperState, u64)>,
    super_in_flight: Option<u64>,
    super_buf: Option<AlignedBuf>,
    next_token: u64,
    next_id: u64,
    /// (write id, token of the write carrying it, durable yet).
    outstanding: VecDeque<(u64, u64, bool)>,
    durable: Option<WriteId>,
    stopped: Option<String>,
    scratch: Vec<Completion>,
    /// A snapshot being written on its own thread: (slot, the writer).
    snapshot_writer: Option<(u64, JoinHandle<Result<bytes::Bytes, WalError>>)>,
    /// Removes released segments and frees what the caller no longer needs, off the group's
    /// thread (started on first use).
    reclaimer: Option<(mpsc::Sender<Reclaim>, JoinHandle<()>)>,
}

/// Work for the reclaimer thread.
enum Reclaim {
    /// Released segments, oldest first: unlink them, then sync the directory.
    Segments(PathBuf, Vec<(PathBuf, Arc<File>)>),
    /// Memory to free (the caller's released log entries).
    Drop(Box<dyn Send>),
    /// Answer once everything sent before is done.
    Barrier(mpsc::Sender<()>),
}

fn reclaim(work: mpsc::Receiver<Reclaim>) {
    for job in work {
        match job {
            Reclaim::Segments(dir, files) => {
                // Deleting is garbage collection: a crash before it leaves segments whose
                // entries are all at or below the snapshot, which recovery skips and the next
                // release removes. Oldest first, so the segments left are always contiguous.
                let mut removed = 0;
                for (path, file) in files {
                    drop(file);
                    match fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) => tracing::warn!(
                            "cannot remove the released WAL segment {}: {e}",
                            path.display()
                        ),
                    }
                }
                if removed > 0 {
                    if let Err(e) = files::sync_dir(&dir) {
                        tracing::warn!("{e}");
                    }
                }
            }
            Reclaim::Drop(garbage) => drop(garbage),
            Reclaim::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Where a freshly opened WAL's log and superblock stand.
struct LogStart {
    direct: bool,
    memory: bool,
    segments: VecDeque<SegFile>,
    next_offset: u64,
    chain: u32,
    super_file: Arc<File>,
    super_seq: u64,
    super_state: SuperState,
}

fn validate(cfg: &WalConfig) -> Result<(), WalError> {
    let sector = SECTOR_BYTES as u64;
    let bad = |m: String| Err(WalError::Config(m));
    if cfg.segment_bytes % sector != 0 || cfg.segment_bytes < 4 * sector {
        return bad(format!(
            "segment_bytes {} must be a multiple of 4096 and at least 16384",
            cfg.segment_bytes
        ));
    }
    if cfg.max_batch_bytes as u64 % sector != 0
        || cfg.max_batch_bytes as u64 > cfg.segment_bytes - sector
        || cfg.max_batch_bytes as u64 > u16::MAX as u64 * sector
    {
        return bad(format!(
            "max_batch_bytes {} must be a multiple of 4096 that fits in a segment after its header",
            cfg.max_batch_bytes
        ));
    }
    if cfg.max_entry_bytes as u64 + ENTRY_HEADER_BYTES as u64 > cfg.max_batch_bytes as u64 {
        return bad("max_entry_bytes plus a 64-byte header must fit in max_batch_bytes".into());
    }
    if cfg.max_pending_writes == 0 {
        return bad("max_pending_writes must be at least 1".into());
    }
    Ok(())
}

impl Wal {
    /// Opens (or initialises) the WAL in `cfg.dir`, recovering what is durable.
    pub fn open(mut cfg: WalConfig) -> Result<(Wal, Recovered), WalError> {
        validate(&cfg)?;
        let chosen = backend::choose(cfg.backend, 4, cfg.uring_sync, cfg.inject.uring_errno)
            .map_err(|e| match cfg.backend {
                BackendChoice::Uring => WalError::UringUnavailable {
                    reason: backend::uring_refusal_hint(&e),
                },
                _ => WalError::Io {
                    context: "starting the WAL backend".into(),
                    source: e,
                },
            })?;
        let mut report = RecoveryReport {
            backend: Some(chosen.backend.kind()),
            backend_reason: chosen.reason.clone(),
            ..RecoveryReport::default()
        };
        if chosen.backend.kind() == BackendKind::Memory {
            return Ok(Self::open_memory(cfg, chosen, report));
        }
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(|e| WalError::DataDir {
            dir: dir.clone(),
            source: e,
        })?;
        let listing = files::list_dir(&dir)?;
        let direct = files::probe_direct_io(&dir, cfg.direct_io, cfg.inject.no_direct_io)?;
        report.direct_io = direct;

        let super_path = dir.join(SUPERBLOCK_NAME);
        if !listing.has_superblock {
            if !listing.segments.is_empty() || !listing.snapshots.is_empty() {
                return Err(WalError::SuperblockCorrupt {
                    dir,
                    detail: "the superblock file is missing but WAL files exist".into(),
                });
            }
            write_initial_superblock(&dir, &cfg)?;
            report.fresh = true;
        }
        let super_bytes = fs::read(&super_path).map_err(|e| {
            WalError::io(format!("reading {}", super_path.display()), &super_path, e)
        })?;
        let sb = superblock::choose(&super_bytes, &dir, cfg.cluster_id, cfg.group)?;
        report.notes.extend(sb.notes.iter().cloned());
        let super_file = Arc::new(open_rw(&super_path, direct).map_err(|e| {
            WalError::io(format!("opening {}", super_path.display()), &super_path, e)
        })?);
        let snap = snapshot::load_newest(&dir, cfg.cluster_id, cfg.group, &mut report.notes)?;

        if let Some(found) = written_segment_bytes(&cfg, &listing.segments) {
            report.notes.push(format!(
                "its segments are {found} bytes, not the configured {}: this log keeps its size \
                 (segment offsets depend on it; a new data directory takes the configured one)",
                cfg.segment_bytes
            ));
            cfg.segment_bytes = found;
            validate(&cfg).map_err(|e| {
                WalError::Config(format!(
                    "the log in {} was written with {found}-byte segments: {e}",
                    dir.display()
                ))
            })?;
        }
        let skip_through = snap.as_ref().map_or(0, |s| s.slot);
        let (outcome, segments) = recover_segments(&cfg, &listing.segments, direct, skip_through)?;
        report.torn_tail = outcome.torn_tail;
        report.entries_scanned = outcome.entries_verified;
        report.bytes_scanned = outcome.bytes_read;
        report.corruptions = outcome.corruptions.clone();
        if let Some(t) = &outcome.torn_tail {
            tracing::info!(
                "WAL {}: dropped a torn, never-acknowledged last batch at log offset {} ({})",
                dir.display(),
                t.log_offset,
                t.fault
            );
        }
        for c in &outcome.corruptions {
            tracing::error!("WAL {}: {c}; repair these slots from peers", dir.display());
        }

        let mut wal = Wal::assemble(
            cfg,
            chosen,
            LogStart {
                direct,
                memory: false,
                segments,
                next_offset: outcome.next_offset,
                chain: outcome.chain,
                super_file,
                super_seq: sb.seq,
                super_state: sb.state.clone(),
            },
        );
        let first = wal.normalize(wal.next_offset);
        wal.ensure_segment(first / wal.cfg.segment_bytes)?;
        Ok((
            wal,
            Recovered {
                superblock: sb.state,
                snapshot: snap,
                entries: outcome.entries,
                report,
            },
        ))
    }

    /// Builds an idle WAL (nothing staged or in flight) positioned at `start`; the one
    /// constructor shared by the durable and the memory paths.
    fn assemble(cfg: WalConfig, chosen: backend::Chosen, start: LogStart) -> Wal {
        let free_bufs = (0..2)
            .map(|_| AlignedBuf::new(cfg.max_batch_bytes as usize))
            .collect();
        Wal {
            backend: chosen.backend,
            backend_reason: chosen.reason,
            direct: start.direct,
            memory: start.memory,
            segments: start.segments,
            spare: None,
            next_offset: start.next_offset,
            chain: start.chain,
            staged: None,
            free_bufs,
            log_in_flight: None,
            super_file: start.super_file,
            super_seq: start.super_seq,
            super_state: start.super_state,
            super_pending: None,
            super_in_flight: None,
            super_buf: Some(AlignedBuf::new(PAIR_BYTES)),
            next_token: 0,
            next_id: 1,
            outstanding: VecDeque::with_capacity(cfg.max_pending_writes as usize),
            durable: None,
            stopped: None,
            scratch: Vec::with_capacity(8),
            snapshot_writer: None,
            reclaimer: None,
            cfg,
        }
    }

    fn open_memory(
        cfg: WalConfig,
        chosen: backend::Chosen,
        mut report: RecoveryReport,
    ) -> (Wal, Recovered) {
        report.fresh = true;
        let null = Arc::new(
            File::options()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null opens"),
        );
        let wal = Wal::assemble(
            cfg,
            chosen,
            LogStart {
                direct: false,
                memory: true,
                segments: VecDeque::new(),
                next_offset: SECTOR_BYTES as u64,
                chain: 0,
                super_file: null,
                super_seq: 2,
                super_state: SuperState::default(),
            },
        );
        let recovered = Recovered {
            superblock: SuperState::default(),
            snapshot: None,
            entries: Vec::new(),
            report,
        };
        (wal, recovered)
    }

    /// Readable when [`Wal::poll_completions`] has something to report. Register it with mio
    /// (`mio::unix::SourceFd`, readable interest).
    pub fn eventfd(&self) -> RawFd {
        self.backend.eventfd()
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// Why this backend runs (e.g. why `auto` fell back to `sync`).
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    pub fn direct_io(&self) -> bool {
        self.direct
    }

    /// The highest write id such that it and every earlier one are durable.
    pub fn durable_up_to(&self) -> Option<WriteId> {
        self.durable
    }

    /// Write ids not yet durable.
    pub fn pending_writes(&self) -> usize {
        self.outstanding.len()
    }

    /// The superblock state most recently handed to [`Wal::set_superblock`] (or recovered).
    pub fn superblock(&self) -> &SuperState {
        self.super_pending
            .as_ref()
            .map_or(&self.super_state, |p| &p.0)
    }

    fn check_running(&self) -> Result<(), WalError> {
        match &self.stopped {
            Some(why) => Err(WalError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    fn new_token(&mut self, superblock: bool) -> u64 {
        self.next_token += 1;
        (self.next_token << 1) | superblock as u64
    }

    fn new_id(&mut self, token: u64) -> WriteId {
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding.push_back((id, token, false));
        WriteId(id)
    }

    /// Appends `entries` as part of the next group commit and returns at once. The returned id
    /// is reported by [`Wal::poll_completions`] once every entry is durable. Entries appended
    /// while a write is in flight go out together in the next one.
    pub fn append(&mut self, entries: &[Entry<'_>]) -> Result<WriteId, WalError> {
        self.check_running()?;
        if entries.is_empty() {
            return Err(WalError::InvalidEntry(
                "an append needs at least one entry".into(),
            ));
        }
        let mut needed = 0usize;
        for e in entries {
            if e.body.len() > self.cfg.max_entry_bytes as usize {
                return Err(WalError::Limit {
                    what: format!("an entry body of {} bytes", e.body.len()),
                    limit: self.cfg.max_entry_bytes as u64,
                });
            }
            if e.slot_first > e.slot_last {
                return Err(WalError::InvalidEntry(format!(
                    "slot range {}..={} is inverted",
                    e.slot_first, e.slot_last
                )));
            }
            needed += ENTRY_HEADER_BYTES + e.body.len();
        }
        if align_up(needed as u64) > self.cfg.max_batch_bytes as u64 {
            return Err(WalError::Limit {
                what: format!("an append of {needed} bytes"),
                limit: self.cfg.max_batch_bytes as u64,
            });
        }
        if self.outstanding.len() >= self.cfg.max_pending_writes as usize {
            return Err(WalError::Backpressure {
                pending: self.outstanding.len(),
            });
        }
        match &self.staged {
            None => self.start_staged(needed)?,
            Some(st) => {
                let padded = st.enc.padded_len_with(needed) as u64;
                let seg_end = (st.seg_index + 1) * self.cfg.segment_bytes;
                if padded > self.cfg.max_batch_bytes as u64 || st.enc.batch_start + padded > seg_end
                {
                    assert!(
                        self.log_in_flight.is_some(),
                        "a staged batch waits only behind a write"
                    );
                    return Err(WalError::Backpressure {
                        pending: self.outstanding.len(),
                    });
                }
            }
        }
        let st = self.staged.as_mut().expect("staged batch exists");
        let mut max_slot = 0;
        for e in entries {
            st.enc.push(st.buf.as_full_mut(), e);
            max_slot = max_slot.max(e.slot_last);
        }
        let (token, seg_index) = (st.token, st.seg_index);
        if let Some(seg) = self
            .segments
            .iter_mut()
            .rev()
            .find(|s| s.index == seg_index)
        {
            seg.max_slot = Some(seg.max_slot.map_or(max_slot, |m| m.max(max_slot)));
        }
        let id = self.new_id(token);
        if self.log_in_flight.is_none() {
            self.submit_staged()?;
        }
        Ok(id)
    }

    /// A batch never starts on a segment header.
    fn normalize(&self, offset: u64) -> u64 {
        if offset % self.cfg.segment_bytes == 0 {
            offset + SECTOR_BYTES as u64
        } else {
            offset
        }
    }

    fn start_staged(&mut self, needed: usize) -> Result<(), WalError> {
        let seg_bytes = self.cfg.segment_bytes;
        let mut start = self.normalize(self.next_offset);
        let seg_end = (start / seg_bytes + 1) * seg_bytes;
        if start + align_up(needed as u64) > seg_end {
            start = seg_end + SECTOR_BYTES as u64;
        }
        let seg_index = start / seg_bytes;
        self.ensure_segment(seg_index)?;
        let buf = self
            .free_bufs
            .pop()
            .expect("a free batch buffer while none is staged");
        let token = self.new_token(false);
        self.staged = Some(Staged {
            enc: BatchEncoder::new(self.cfg.group, start, self.chain),
            buf,
            token,
            seg_index,
        });
        Ok(())
    }

    fn submit_staged(&mut self) -> Result<(), WalError> {
        let mut st = self.staged.take().expect("a staged batch to submit");
        let len = st.enc.finish(st.buf.as_full_mut());
        st.buf.set_len(len);
        let seg = self
            .segments
            .iter()
            .find(|s| s.index == st.seg_index)
            .expect("staged batch's segment is open");
        let op = WriteOp {
            token: st.token,
            file: seg.file.clone(),
            offset: st.enc.batch_start % self.cfg.segment_bytes,
            buf: st.buf,
        };
        assert!(op.offset + len as u64 <= self.cfg.segment_bytes);
        assert_eq!(op.offset % SECTOR_BYTES as u64, 0);
        self.chain = st.enc.chain;
        self.next_offset = st.enc.batch_start + len as u64;
        if let Err(e) = self.backend.submit(op) {
            return Err(self.stop(e, "submitting a WAL write"));
        }
        self.log_in_flight = Some(st.token);
        self.maybe_prepare_spare();
        Ok(())
    }

    /// Records the durable superblock state (promised ballot, small state). Returns at once;
    /// the id is reported durable like an append's. Updates made while one is in flight are
    /// merged: only the newest state is written next.
    pub fn set_superblock(&mut self, state: SuperState) -> Result<WriteId, WalError> {
        self.check_running()?;
        if state.app.len() > SUPER_APP_MAX_BYTES {
            return Err(WalError::Limit {
                what: format!("superblock app state of {} bytes", state.app.len()),
                limit: SUPER_APP_MAX_BYTES as u64,
            });
        }
        if self.outstanding.len() >= self.cfg.max_pending_writes as usize {
            return Err(WalError::Backpressure {
                pending: self.outstanding.len(),
            });
        }
        let token = match &self.super_pending {
            Some((_, t)) => *t,
            None => self.new_token(true),
        };
        self.super_pending = Some((state, token));
        let id = self.new_id(token);
        if self.super_in_flight.is_none() {
            self.submit_super()?;
        }
        Ok(id)
    }

    fn submit_super(&mut self) -> Result<(), WalError> {
        let (state, token) = self.super_pending.take().expect("a pending superblock");
        self.super_seq += 1;
        let mut buf = self.super_buf.take().expect("superblock buffer is free");
        let offset = superblock::encode_update(
            self.cfg.cluster_id,
            self.cfg.group,
            self.super_seq,
            &state,
            buf.as_full_mut(),
        );
        buf.set_len(PAIR_BYTES);
        self.super_state = state;
        let op = WriteOp {
            token,
            file: self.super_file.clone(),
            offset,
            buf,
        };
        if let Err(e) = self.backend.submit(op) {
            return Err(self.stop(e, "submitting a superblock write"));
        }
        self.super_in_flight = Some(token);
        Ok(())
    }

    fn stop(&mut self, e: std::io::Error, context: &str) -> WalError {
        let err = WalError::io(context, &self.cfg.dir, e);
        self.stopped = Some(err.to_string());
        err
    }

    /// Collects finished writes and appends newly durable write ids (in increasing order) to
    /// `out`; starts the next group commit. Call it whenever [`Wal::eventfd`] is readable.
    /// After an error the WAL is stopped: every later call fails.
    pub fn poll_completions(&mut self, out: &mut Vec<WriteId>) -> Result<(), WalError> {
        self.check_running()?;
        let mut done = std::mem::take(&mut self.scratch);
        if let Err(e) = self.backend.reap(&mut done) {
            self.scratch = done;
            return Err(self.stop(e, "collecting WAL completions"));
        }
        let mut failure = None;
        for mut c in done.drain(..) {
            if let Err(e) = c.result {
                failure.get_or_insert(e);
            }
            if c.token & SUPER_TOKEN_BIT != 0 {
                assert_eq!(self.super_in_flight.take(), Some(c.token));
                self.super_buf = Some(c.buf);
            } else {
                assert_eq!(self.log_in_flight.take(), Some(c.token));
                c.buf.set_len(0);
                self.free_bufs.push(c.buf);
            }
            for o in self.outstanding.iter_mut().filter(|o| o.1 == c.token) {
                o.2 = true;
            }
        }
        self.scratch = done;
        if let Some(e) = failure {
            return Err(self.stop(e, "writing the WAL"));
        }
        while let Some(&(id, _, true)) = self.outstanding.front() {
            self.outstanding.pop_front();
            assert!(
                self.durable.map_or(true, |d| d.0 < id),
                "write ids complete in order"
            );
            self.durable = Some(WriteId(id));
            out.push(WriteId(id));
        }
        if self.staged.is_some() && self.log_in_flight.is_none() {
            self.submit_staged()?;
        }
        if self.super_pending.is_some() && self.super_in_flight.is_none() {
            self.submit_super()?;
        }
        Ok(())
    }

    /// Blocks until `id` is durable (tools, tests and benchmarks; an event loop uses the
    /// eventfd instead).
    pub fn wait_durable(&mut self, id: WriteId, out: &mut Vec<WriteId>) -> Result<(), WalError> {
        loop {
            self.poll_completions(out)?;
            if self.durable.is_some_and(|d| d >= id) {
                return Ok(());
            }
            backend::wait_readable(self.eventfd(), 1000)
                .map_err(|e| WalError::io("waiting for the WAL", &self.cfg.dir, e))?;
        }
    }

    /// Blocks until every write so far is durable.
    pub fn flush(&mut self) -> Result<(), WalError> {
        let mut sink = Vec::new();
        match self.outstanding.back() {
            Some(&(id, _, _)) => self.wait_durable(WriteId(id), &mut sink),
            None => Ok(()),
        }
    }

    /// Makes segment `index` writable: it exists already, or it is the spare, or it is made now.
    fn ensure_segment(&mut self, index: u64) -> Result<(), WalError> {
        if self.segments.iter().any(|s| s.index == index) {
            return Ok(());
        }
        if let Some(last) = self.segments.back() {
            assert_eq!(index, last.index + 1, "segments are used in order");
        }
        let file = if self.memory {
            self.super_file
                .as_ref()
                .try_clone()
                .map_err(|e| WalError::io("dup", &self.cfg.dir, e))?
        } else {
            match self.spare.take() {
                Some((i, handle)) if i == index => handle.join().map_err(|_| {
                    WalError::Stopped("the segment preallocation thread panicked".into())
                })??,
                other => {
                    if let Some((_, h)) = other {
                        let _ = h.join();
                    }
                    create_segment(
                        &self.cfg.dir,
                        self.segment_header(index),
                        self.direct,
                        files::Fill::Now,
                    )?
                }
            }
        };
        self.segments.push_back(SegFile {
            index,
            file: Arc::new(file),
            max_slot: None,
        });
        Ok(())
    }

    fn segment_header(&self, index: u64) -> SegmentHeader {
        SegmentHeader {
            cluster_id: self.cfg.cluster_id,
            group: self.cfg.group,
            index,
            segment_bytes: self.cfg.segment_bytes,
        }
    }

    /// Once the active segment is half full, preallocates the next one on a helper thread so
    /// rolling over does not stall the group's loop.
    fn maybe_prepare_spare(&mut self) {
        if self.memory || self.spare.is_some() {
            return;
        }
        let active = self.next_offset / self.cfg.segment_bytes;
        let next = active + 1;
        if self.segments.iter().any(|s| s.index == next)
            || self.next_offset % self.cfg.segment_bytes < self.cfg.segment_bytes / 2
        {
            return;
        }
        let (dir, header, direct) = (self.cfg.dir.clone(), self.segment_header(next), self.direct);
        let spawned = std::thread::Builder::new()
            .name("wal-prealloc".into())
            .spawn(move || create_segment(&dir, header, direct, files::Fill::Paced));
        if let Ok(h) = spawned {
            self.spare = Some((next, h));
        }
    }

    /// Writes a snapshot of the caller's state at `slot` (it holds every slot up to `slot`),
    /// then releases WAL segments that hold nothing above `slot`. Blocking; returns the number
    /// of segments released.
    pub fn snapshot(&mut self, slot: u64, data: &[u8]) -> Result<usize, WalError> {
        self.check_running()?;
        if self.memory {
            return Ok(0);
        }
        snapshot::write(
            &self.cfg.dir,
            self.cfg.cluster_id,
            self.cfg.group,
            slot,
            data,
        )?;
        self.release_segments(slot)
    }

    /// Starts writing a snapshot at `slot` on a thread of its own: `encode` makes its bytes
    /// there (serializing a large state takes far longer than the group's thread may stop),
    /// then tmp file, sync, rename, directory sync; [`Wal::poll_snapshot`] says when it is
    /// durable and hands the bytes back. One at a time: a second call while one is being
    /// written is a caller error. With the memory backend nothing is written and it is
    /// "durable" once encoded.
    pub fn start_snapshot(
        &mut self,
        slot: u64,
        encode: impl FnOnce() -> bytes::Bytes + Send + 'static,
    ) -> Result<(), WalError> {
        self.check_running()?;
        assert!(
            self.snapshot_writer.is_none(),
            "one snapshot write at a time"
        );
        let (dir, cluster_id, group, memory) = (
            self.cfg.dir.clone(),
            self.cfg.cluster_id,
            self.cfg.group,
            self.memory,
        );
        let handle = std::thread::Builder::new()
            .name(format!("snapshot-g{group}"))
            .spawn(move || {
                let data = encode();
                if !memory {
                    snapshot::write(&dir, cluster_id, group, slot, &data)?;
                }
                Ok(data)
            })
            .map_err(|e| WalError::io("starting the snapshot writer", &self.cfg.dir, e))?;
        self.snapshot_writer = Some((slot, handle));
        Ok(())
    }

    /// The slot and bytes of the snapshot write that finished since the last call, once it is
    /// durable. A failed snapshot write is an error (the caller stops the group, as for any
    /// WAL error).
    pub fn poll_snapshot(&mut self) -> Result<Option<(u64, bytes::Bytes)>, WalError> {
        let finished = self
            .snapshot_writer
            .as_ref()
            .is_some_and(|(_, h)| h.is_finished());
        if !finished {
            return Ok(None);
        }
        let (slot, handle) = self.snapshot_writer.take().expect("checked above");
        match handle.join() {
            Ok(Ok(data)) => Ok(Some((slot, data))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(WalError::Stopped("the snapshot writer panicked".into())),
        }
    }

    /// Removes the oldest segments while they are not in use and hold no slot above `slot`,
    /// before returning (see [`Wal::release_segments_in_background`]).
    pub fn release_segments(&mut self, slot: u64) -> Result<usize, WalError> {
        let released = self.take_releasable(slot);
        if self.memory {
            // A memory WAL's segments are no files (benchmarks only): nothing to remove.
            return Ok(released.len());
        }
        for seg in &released {
            let path = self.cfg.dir.join(segment_name(seg.index));
            fs::remove_file(&path)
                .map_err(|e| WalError::io("releasing a WAL segment", &path, e))?;
        }
        if !released.is_empty() {
            files::sync_dir(&self.cfg.dir)?;
        }
        Ok(released.len())
    }

    /// As [`Wal::release_segments`], but the files are removed on the reclaimer thread: on
    /// ext4, unlinking a dozen preallocated segments and syncing the directory took ~100 ms,
    /// long enough, on every replica at once after the same snapshot, to let a follower's
    /// election timer fire. The segments are gone from the log's bookkeeping at once.
    pub fn release_segments_in_background(&mut self, slot: u64) -> Result<usize, WalError> {
        let released = self.take_releasable(slot);
        let n = released.len();
        if n > 0 && !self.memory {
            let files = released
                .into_iter()
                .map(|s| (self.cfg.dir.join(segment_name(s.index)), s.file))
                .collect();
            let dir = self.cfg.dir.clone();
            self.send_reclaim(Reclaim::Segments(dir, files))?;
        }
        Ok(n)
    }

    /// Frees `garbage` on the reclaimer thread (the caller's released log entries: dropping
    /// tens of thousands of them took 35-75 ms on the group's thread).
    pub fn free_in_background(&mut self, garbage: Box<dyn Send>) {
        // Without a thread (it could not be started) the garbage is dropped here, in the
        // failed send.
        let _ = self.send_reclaim(Reclaim::Drop(garbage));
    }

    /// Waits until the reclaimer has done everything handed to it so far (for tests and
    /// tools that look at the directory).
    pub fn wait_reclaimed(&self) {
        if let Some((tx, _)) = &self.reclaimer {
            let (done_tx, done_rx) = mpsc::channel();
            if tx.send(Reclaim::Barrier(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
    }

    fn send_reclaim(&mut self, job: Reclaim) -> Result<(), WalError> {
        if self.reclaimer.is_none() {
            let (tx, rx) = mpsc::channel();
            let handle = std::thread::Builder::new()
                .name(format!("wal-reclaim-g{}", self.cfg.group))
                .spawn(move || reclaim(rx))
                .map_err(|e| WalError::io("starting the WAL reclaimer", &self.cfg.dir, e))?;
            self.reclaimer = Some((tx, handle));
        }
        let (tx, _) = self.reclaimer.as_ref().expect("started above");
        // The thread only ends when the sender is dropped (in `drop`).
        let _ = tx.send(job);
        Ok(())
    }

    /// Takes the oldest segments off the log while they are not in use and hold no slot above
    /// `slot`.
    fn take_releasable(&mut self, slot: u64) -> Vec<SegFile> {
        let active = self.next_offset.saturating_sub(1) / self.cfg.segment_bytes;
        let busy = self
            .staged
            .as_ref()
            .map(|s| s.seg_index)
            .unwrap_or(u64::MAX)
            .min(active);
        let mut released = Vec::new();
        while self.segments.len() > 1 {
            let front = &self.segments[0];
            if front.index >= busy || front.max_slot.is_some_and(|m| m > slot) {
                break;
            }
            released.push(self.segments.pop_front().expect("len > 1"));
        }
        released
    }

    /// Bytes of log from the start of the oldest retained segment to the end of the last write:
    /// what a restart would read of the log now, less the unwritten rest of the active segment.
    pub fn retained_bytes(&self) -> u64 {
        match self.segments.front() {
            Some(s) if !self.memory => self
                .next_offset
                .saturating_sub(s.index * self.cfg.segment_bytes),
            _ => 0,
        }
    }

    /// Absolute log offset where the next batch will start (for tests and tools).
    pub fn next_log_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn config(&self) -> &WalConfig {
        &self.cfg
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.cfg.dir)
            .field("group", &self.cfg.group)
            .field("backend", &self.backend.kind())
            .field("next_offset", &self.next_offset)
            .field("pending_writes", &self.outstanding.len())
            .finish()
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some((_, h)) = self.spare.take() {
            let _ = h.join();
        }
        if let Some((tx, h)) = self.reclaimer.take() {
            drop(tx);
            let _ = h.join();
        }
    }
}

fn write_initial_superblock(dir: &Path, cfg: &WalConfig) -> Result<(), WalError> {
    let path = dir.join(SUPERBLOCK_NAME);
    let tmp = dir.join(format!("{SUPERBLOCK_NAME}.tmp"));
    let bytes = superblock::encode_initial(cfg.cluster_id, cfg.group, &SuperState::default());
    let io = |e| WalError::io(format!("creating {}", tmp.display()), &tmp, e);
    let mut f = File::create(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut f, &bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    files::sync_dir(dir)
}

/// The segment size an existing log was written with, when it differs from the configured
/// one: from the first segment header that decodes and names this cluster and group (damaged
/// or foreign headers are left to recovery to report).
fn written_segment_bytes(cfg: &WalConfig, segments: &[u64]) -> Option<u64> {
    use std::io::Read;
    let found = segments.iter().find_map(|&i| {
        let mut sector = [0u8; SECTOR_BYTES];
        File::open(cfg.dir.join(segment_name(i)))
            .and_then(|mut f| f.read_exact(&mut sector))
            .ok()?;
        SegmentHeader::decode(&sector)
            .ok()
            .filter(|h| h.cluster_id == cfg.cluster_id && h.group == cfg.group)
    })?;
    (found.segment_bytes != cfg.segment_bytes).then_some(found.segment_bytes)
}

/// Reads every segment, scans them, applies the repairs the scan asks for (zeroing a torn
/// tail, re-extending harmlessly short files), and opens the segments for writing.
fn recover_segments(
    cfg: &WalConfig,
    indices: &[u64],
    direct: bool,
    skip_through: u64,
) -> Result<(scan::ScanOutcome, VecDeque<SegFile>), WalError> {
    let dir = &cfg.dir;
    let path_of = |i: u64| -> PathBuf { dir.join(segment_name(i)) };
    let mut images = Vec::with_capacity(indices.len());
    for &i in indices {
        let p = path_of(i);
        let bytes =
            fs::read(&p).map_err(|e| WalError::io(format!("reading {}", p.display()), &p, e))?;
        images.push((i, bytes));
    }
    let views: Vec<SegmentImage<'_>> = images
        .iter()
        .map(|(i, b)| SegmentImage {
            index: *i,
            bytes: b,
        })
        .collect();
    let scan_cfg = ScanConfig {
        cluster_id: cfg.cluster_id,
        group: cfg.group,
        segment_bytes: cfg.segment_bytes,
        max_entry_bytes: cfg.max_entry_bytes,
        mode: cfg.on_corruption,
        skip_through,
    };
    let outcome = scan::scan(&views, scan_cfg).map_err(|r| match r {
        ScanRefusal::Foreign {
            cluster_id, group, ..
        } => WalError::Foreign {
            dir: dir.clone(),
            found_cluster: cluster_id,
            found_group: group,
            cluster: cfg.cluster_id,
            group: cfg.group,
        },
        ScanRefusal::SegmentSize { segment_bytes, .. } => WalError::SegmentSize {
            dir: dir.clone(),
            found: segment_bytes,
            configured: cfg.segment_bytes,
        },
    })?;
    drop(views);
    drop(images);
    if !outcome.corruptions.is_empty() && cfg.on_corruption == OnCorruption::Refuse {
        let detail = outcome
            .corruptions
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(WalError::Corrupt {
            dir: dir.clone(),
            detail,
        });
    }
    // Repairs use buffered handles: a short file's length need not be sector aligned.
    let mut repaired = std::collections::BTreeSet::new();
    for &(abs, len) in &outcome.zero_ranges {
        let i = abs / cfg.segment_bytes;
        let p = path_of(i);
        let f =
            open_rw(&p, false).map_err(|e| WalError::io("opening a segment to repair", &p, e))?;
        files::write_zeros(&f, &p, abs % cfg.segment_bytes, len)?;
        repaired.insert(i);
    }
    for &i in &outcome.short_segments {
        let p = path_of(i);
        let f =
            open_rw(&p, false).map_err(|e| WalError::io("opening a segment to repair", &p, e))?;
        let len = f.metadata().map_err(|e| WalError::io("stat", &p, e))?.len();
        files::write_zeros(&f, &p, len, cfg.segment_bytes - len)?;
        repaired.insert(i);
    }
    for &i in &repaired {
        let p = path_of(i);
        File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(|e| WalError::io("syncing a repaired segment", &p, e))?;
    }
    let mut segs = VecDeque::with_capacity(indices.len());
    for &i in indices {
        let p = path_of(i);
        let f = open_rw(&p, direct)
            .map_err(|e| WalError::io(format!("opening {}", p.display()), &p, e))?;
        let max_slot = outcome.max_slot_by_segment.get(&i).copied();
        segs.push_back(SegFile {
            index: i,
            file: Arc::new(f),
            max_slot,
        });
    }
    Ok((outcome, segs))
}
