//! Log recovery as a pure function over segment images.
//!
//! Owns: the recovery decision table of `docs/internals/wal.md` (clean end, torn tail,
//! corruption in the middle, misdirected writes, truncated segments). It reads bytes handed to
//! it and returns what it found; it never touches files, so the crash tests can run it on
//! in-memory images at millions of cases per minute.
//!
//! The key argument: the writer keeps at most one log write in flight and reports write ids in
//! order, so only the last batch of the log can be torn. A damaged batch followed by any later
//! valid batch was therefore complete before that later write was issued, i.e. it may have been
//! acknowledged: it is reported as corruption, never truncated.

use std::borrow::Cow;
use std::fmt;

use super::format::{
    align_up, is_zero, Ballot, EntryHeader, HeaderFault, SegmentHeader, ENTRY_HEADER_BYTES,
    SECTOR_BYTES,
};

/// What recovery does when it finds a damaged entry that may have been acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnCorruption {
    /// Refuse to open the log (the default): the operator restores the replica from peers.
    #[default]
    Refuse,
    /// Open anyway and report the damaged regions, so the replica can repair those slots from
    /// its peers. Entries after a damaged region are returned too.
    Report,
}

/// The bytes of one segment file as read from disk (possibly shorter than a full segment).
#[derive(Clone, Copy, Debug)]
pub struct SegmentImage<'a> {
    pub index: u64,
    pub bytes: &'a [u8],
}

/// What recovery must match.
#[derive(Clone, Copy, Debug)]
pub struct ScanConfig {
    pub cluster_id: u64,
    pub group: u32,
    pub segment_bytes: u64,
    pub max_entry_bytes: u32,
    pub mode: OnCorruption,
    /// Entries whose last slot is at or below this (the newest snapshot's slot) are verified
    /// and chained like every other, but not returned: nobody replays them, and copying their
    /// bodies was a good part of a restart. 0 returns every entry.
    pub skip_through: u64,
}

/// One verified log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredEntry {
    pub slot_first: u64,
    pub slot_last: u64,
    pub ballot: Ballot,
    pub body: Vec<u8>,
    /// Absolute log position of the entry's header.
    pub log_offset: u64,
}

/// Why bytes where an entry was expected are not that entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Zeroed,
    BadMagic,
    HeaderChecksum,
    BodyChecksum,
    UnknownVersion(u8),
    /// A valid entry that records another position: it was written to the wrong place.
    Misdirected {
        recorded_offset: u64,
    },
    /// A valid entry of another group.
    ForeignGroup {
        group: u32,
    },
    /// A valid entry whose previous-entry checksum does not match the entry before it.
    ChainBroken,
    /// A length or slot range no writer produces.
    Malformed,
    /// A segment file whose header is damaged or names another segment.
    SegmentHeader,
    /// A segment file is missing between two others.
    SegmentMissing {
        index: u64,
    },
    /// A segment file is shorter than it was preallocated, and the cut falls inside data.
    SegmentTruncated {
        file_bytes: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Zeroed => write!(f, "zeroed sector where an entry should be"),
            Fault::BadMagic => write!(f, "not an entry header (bad magic)"),
            Fault::HeaderChecksum => write!(f, "entry header checksum mismatch"),
            Fault::BodyChecksum => write!(f, "entry body checksum mismatch"),
            Fault::UnknownVersion(v) => write!(f, "entry of unknown format version {v}"),
            Fault::Misdirected { recorded_offset } => write!(
                f,
                "misdirected write: a valid entry that belongs at log offset {recorded_offset}"
            ),
            Fault::ForeignGroup { group } => write!(f, "a valid entry of group {group}"),
            Fault::ChainBroken => write!(f, "previous-entry checksum chain broken"),
            Fault::Malformed => write!(f, "entry with an impossible length or slot range"),
            Fault::SegmentHeader => write!(f, "segment header damaged"),
            Fault::SegmentMissing { index } => write!(f, "segment file {index} is missing"),
            Fault::SegmentTruncated { file_bytes } => write!(
                f,
                "segment file truncated to {file_bytes} bytes, inside logged data"
            ),
        }
    }
}

/// A damaged region that may have held acknowledged entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Corruption {
    /// Absolute log offset of the first damaged batch.
    pub log_offset: u64,
    pub fault: Fault,
    /// Where the next valid batch starts (the damage lies in between).
    pub next_valid_offset: Option<u64>,
    /// Highest slot of the last good entry before the damage.
    pub last_slot_before: Option<u64>,
    /// Lowest slot of the first good entry after the damage (when scanning went on).
    pub first_slot_after: Option<u64>,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at log offset {}", self.fault, self.log_offset)?;
        if let Some(n) = self.next_valid_offset {
            write!(f, " (valid entries resume at {n})")?;
        }
        match (self.last_slot_before, self.first_slot_after) {
            (Some(a), Some(b)) => write!(f, "; slots after {a} and before {b} may be lost"),
            (Some(a), None) => write!(f, "; slots after {a} may be lost"),
            (None, Some(b)) => write!(f, "; slots before {b} may be lost"),
            (None, None) => Ok(()),
        }
    }
}

/// The last batch was torn by a crash (never acknowledged): it is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub log_offset: u64,
    pub fault: Fault,
}

/// Everything recovery found in the log.
#[derive(Clone, Debug, Default)]
pub struct ScanOutcome {
    /// Verified entries above `ScanConfig::skip_through`, in log order.
    pub entries: Vec<RecoveredEntry>,
    /// The last slot of the verified log, returned or skipped.
    pub last_slot: Option<u64>,
    /// Entries verified, returned or skipped.
    pub entries_verified: u64,
    /// Bytes of segment files scanned.
    pub bytes_read: u64,
    /// Per segment index, the highest slot of its verified entries, returned or skipped (a
    /// segment is released only once a snapshot covers it).
    pub max_slot_by_segment: std::collections::BTreeMap<u64, u64>,
    /// Absolute log offset where the next batch goes (sector aligned, past a segment header).
    pub next_offset: u64,
    /// `header_crc` of the last entry (the chain head for the next write).
    pub chain: u32,
    pub torn_tail: Option<TornTail>,
    pub corruptions: Vec<Corruption>,
    /// Absolute byte ranges past the end of the log holding non-zero bytes (the torn tail):
    /// they must be zeroed before appending, so no stale bytes outlive the truncation.
    pub zero_ranges: Vec<(u64, u64)>,
    /// Segment files shorter than preallocated whose cut lies past the data: re-extend them.
    pub short_segments: Vec<u64>,
}

/// A fatal mismatch: the files belong to another cluster or group, or another configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanRefusal {
    Foreign {
        cluster_id: u64,
        group: u32,
        segment: u64,
    },
    SegmentSize {
        segment: u64,
        segment_bytes: u64,
    },
}

struct Seg<'a> {
    index: u64,
    bytes: Cow<'a, [u8]>,
    file_bytes: u64,
}

struct Scanner<'a> {
    cfg: ScanConfig,
    segs: Vec<Seg<'a>>,
}

/// Scans segments (any order) and returns what recovery found, or a refusal when the files are
/// not this group's. Never panics on any input bytes.
pub fn scan(images: &[SegmentImage<'_>], cfg: ScanConfig) -> Result<ScanOutcome, ScanRefusal> {
    assert!(cfg.segment_bytes >= 2 * SECTOR_BYTES as u64);
    assert_eq!(cfg.segment_bytes % SECTOR_BYTES as u64, 0);
    let mut imgs: Vec<SegmentImage<'_>> = images.to_vec();
    imgs.sort_by_key(|s| s.index);
    let segs = imgs
        .iter()
        .map(|s| {
            let full = cfg.segment_bytes as usize;
            let bytes = if s.bytes.len() >= full {
                Cow::Borrowed(&s.bytes[..full])
            } else {
                let mut v = s.bytes.to_vec();
                v.resize(full, 0);
                Cow::Owned(v)
            };
            Seg {
                index: s.index,
                bytes,
                file_bytes: s.bytes.len() as u64,
            }
        })
        .collect();
    let bytes_read = images.iter().map(|s| s.bytes.len() as u64).sum();
    let mut out = Scanner { cfg, segs }.run()?;
    out.bytes_read = bytes_read;
    Ok(out)
}

impl<'a> Scanner<'a> {
    fn abs(&self, seg_i: usize, off: u64) -> u64 {
        self.segs[seg_i].index * self.cfg.segment_bytes + off
    }

    fn locate(&self, abs: u64) -> Option<(usize, u64)> {
        let index = abs / self.cfg.segment_bytes;
        let i = self.segs.iter().position(|s| s.index == index)?;
        Some((i, abs % self.cfg.segment_bytes))
    }

    /// Decodes and verifies the entry at `off` of segment `seg_i`.
    fn parse(
        &self,
        seg_i: usize,
        off: u64,
        chain: Option<u32>,
        batch_start: u64,
    ) -> Result<(EntryHeader, std::ops::Range<usize>), Fault> {
        let bytes = &self.segs[seg_i].bytes;
        let off = off as usize;
        if off + ENTRY_HEADER_BYTES > bytes.len() {
            return Err(Fault::Zeroed);
        }
        let h = EntryHeader::decode(&bytes[off..]).map_err(|f| match f {
            HeaderFault::Zeroed => Fault::Zeroed,
            HeaderFault::BadMagic => Fault::BadMagic,
            HeaderFault::BadChecksum => Fault::HeaderChecksum,
            HeaderFault::BadVersion(v) => Fault::UnknownVersion(v),
        })?;
        let here = self.abs(seg_i, off as u64);
        if h.log_offset != here {
            return Err(Fault::Misdirected {
                recorded_offset: h.log_offset,
            });
        }
        if h.group != self.cfg.group {
            return Err(Fault::ForeignGroup { group: h.group });
        }
        if h.batch_start() != batch_start {
            return Err(Fault::Misdirected {
                recorded_offset: h.log_offset,
            });
        }
        if chain.is_some_and(|c| c != h.prev_crc) {
            return Err(Fault::ChainBroken);
        }
        let body_start = off + ENTRY_HEADER_BYTES;
        let body_end = body_start as u64 + h.body_len as u64;
        if h.body_len > self.cfg.max_entry_bytes
            || body_end > bytes.len() as u64
            || h.slot_first > h.slot_last
        {
            return Err(Fault::Malformed);
        }
        let body = body_start..body_end as usize;
        if crc32c::crc32c(&bytes[body.clone()]) != h.body_crc {
            return Err(Fault::BodyChecksum);
        }
        Ok((h, body))
    }

    /// The first header at a sector boundary at or after `from` (absolute) that decodes, sits
    /// where it says, and belongs to a batch starting after `after_batch`. Returns the batch
    /// start of the earliest such batch whose own first header is intact, if any, and whether
    /// any later evidence exists at all.
    fn later_evidence(&self, from: u64, after_batch: u64) -> (bool, Option<u64>) {
        let mut any = false;
        for (i, seg) in self.segs.iter().enumerate() {
            let seg_start = self.abs(i, 0);
            let mut off = SECTOR_BYTES as u64;
            if seg_start + off < from {
                off = align_up(from - seg_start);
            }
            while off + ENTRY_HEADER_BYTES as u64 <= seg.bytes.len() as u64 {
                let at = off as usize;
                if let Ok(h) = EntryHeader::decode(&seg.bytes[at..]) {
                    let here = seg_start + off;
                    if h.log_offset == here
                        && h.group == self.cfg.group
                        && h.batch_start() > after_batch
                    {
                        any = true;
                        if h.batch_lead_sectors == 0 {
                            return (true, Some(here));
                        }
                    }
                }
                off += SECTOR_BYTES as u64;
            }
        }
        (any, None)
    }

    /// Non-zero sector ranges at or after `from` (absolute), merged.
    fn nonzero_ranges(&self, from: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, seg) in self.segs.iter().enumerate() {
            let seg_start = self.abs(i, 0);
            let mut off = SECTOR_BYTES as u64;
            if seg_start + off < from {
                off = from - seg_start;
            }
            off -= off % SECTOR_BYTES as u64;
            while off < seg.bytes.len() as u64 {
                let s = &seg.bytes[off as usize..off as usize + SECTOR_BYTES];
                if !is_zero(s) {
                    let here = seg_start + off;
                    match out.last_mut() {
                        Some((start, len)) if *start + *len == here => *len += SECTOR_BYTES as u64,
                        _ => out.push((here, SECTOR_BYTES as u64)),
                    }
                }
                off += SECTOR_BYTES as u64;
            }
        }
        out
    }

    fn check_segment_headers(&self, out: &mut ScanOutcome) -> Result<Option<usize>, ScanRefusal> {
        let mut prev_index: Option<u64> = None;
        for (i, seg) in self.segs.iter().enumerate() {
            if let Some(p) = prev_index {
                if seg.index != p + 1 {
                    out.corruptions.push(Corruption {
                        log_offset: (p + 1) * self.cfg.segment_bytes,
                        fault: Fault::SegmentMissing { index: p + 1 },
                        next_valid_offset: Some(self.abs(i, SECTOR_BYTES as u64)),
                        last_slot_before: None,
                        first_slot_after: None,
                    });
                    if self.cfg.mode == OnCorruption::Refuse {
                        return Ok(Some(i));
                    }
                }
            }
            prev_index = Some(seg.index);
            match SegmentHeader::decode(&seg.bytes) {
                Ok(h) if h.cluster_id != self.cfg.cluster_id || h.group != self.cfg.group => {
                    return Err(ScanRefusal::Foreign {
                        cluster_id: h.cluster_id,
                        group: h.group,
                        segment: seg.index,
                    });
                }
                Ok(h) if h.segment_bytes != self.cfg.segment_bytes => {
                    return Err(ScanRefusal::SegmentSize {
                        segment: seg.index,
                        segment_bytes: h.segment_bytes,
                    });
                }
                Ok(h) if h.index == seg.index => {}
                _ => {
                    out.corruptions.push(Corruption {
                        log_offset: self.abs(i, 0),
                        fault: Fault::SegmentHeader,
                        next_valid_offset: None,
                        last_slot_before: None,
                        first_slot_after: None,
                    });
                    if self.cfg.mode == OnCorruption::Refuse {
                        return Ok(Some(i));
                    }
                }
            }
        }
        Ok(None)
    }

    fn run(self) -> Result<ScanOutcome, ScanRefusal> {
        let mut out = ScanOutcome::default();
        if self.segs.is_empty() {
            out.next_offset = SECTOR_BYTES as u64;
            return Ok(out);
        }
        if self.check_segment_headers(&mut out)?.is_some() {
            out.next_offset = self.abs(0, SECTOR_BYTES as u64);
            return Ok(out);
        }
        let mut seg_i = 0usize;
        let mut off = SECTOR_BYTES as u64;
        let mut chain: Option<u32> = None;
        let mut batch_start = self.abs(0, off);
        let mut good_end = batch_start;
        let mut batch: Vec<RecoveredEntry> = Vec::new();
        loop {
            match self.parse(seg_i, off, chain, batch_start) {
                Ok((h, body)) => {
                    let skipped = h.slot_last <= self.cfg.skip_through;
                    batch.push(RecoveredEntry {
                        slot_first: h.slot_first,
                        slot_last: h.slot_last,
                        ballot: h.ballot,
                        body: if skipped {
                            Vec::new()
                        } else {
                            self.segs[seg_i].bytes[body.clone()].to_vec()
                        },
                        log_offset: h.log_offset,
                    });
                    chain = Some(h.header_crc);
                    let end = body.end as u64;
                    if h.is_last_in_batch() {
                        out.last_slot = Some(h.slot_last);
                        out.entries_verified += batch.len() as u64;
                        for e in &batch {
                            let m = out
                                .max_slot_by_segment
                                .entry(e.log_offset / self.cfg.segment_bytes)
                                .or_default();
                            *m = (*m).max(e.slot_last);
                        }
                        let skip = self.cfg.skip_through;
                        out.entries
                            .extend(batch.drain(..).filter(|e| e.slot_last > skip));
                        out.chain = h.header_crc;
                        off = align_up(end);
                        batch_start = self.abs(seg_i, off);
                        good_end = batch_start;
                    } else {
                        off = end;
                    }
                }
                Err(fault) => {
                    if batch.is_empty() && fault == Fault::Zeroed && self.should_roll(seg_i, off) {
                        seg_i += 1;
                        off = SECTOR_BYTES as u64;
                        batch_start = self.abs(seg_i, off);
                        continue;
                    }
                    let had_partial = !batch.is_empty();
                    batch.clear();
                    // A complete batch that does not chain to the one before it cannot come
                    // from a torn write: the data between them was lost after being written.
                    let chain_gap = fault == Fault::ChainBroken
                        && !had_partial
                        && self.complete_batch_at(seg_i, off);
                    let (damage_at, any_later, resume) = if chain_gap {
                        (good_end, true, Some(batch_start))
                    } else {
                        let (any, resume) =
                            self.later_evidence(batch_start + SECTOR_BYTES as u64, batch_start);
                        (batch_start, any, resume)
                    };
                    if !any_later {
                        self.finish_tail(&mut out, batch_start, fault, had_partial);
                        return Ok(out);
                    }
                    let first_slot_after = resume.and_then(|r| self.slot_at(r));
                    out.corruptions.push(Corruption {
                        log_offset: damage_at,
                        fault,
                        next_valid_offset: resume,
                        last_slot_before: out.last_slot,
                        first_slot_after,
                    });
                    let Some(resume) = resume.filter(|_| self.cfg.mode == OnCorruption::Report)
                    else {
                        out.next_offset = batch_start;
                        return Ok(out);
                    };
                    let (i, o) = self.locate(resume).expect("resume point is in a segment");
                    seg_i = i;
                    off = o;
                    chain = None;
                    batch_start = resume;
                }
            }
        }
    }

    /// True when nothing follows `off` in segment `seg_i` and the next segment holds data: the
    /// writer moved on because its next batch did not fit here.
    fn should_roll(&self, seg_i: usize, off: u64) -> bool {
        if seg_i + 1 >= self.segs.len() || self.segs[seg_i + 1].index != self.segs[seg_i].index + 1
        {
            return false;
        }
        let seg = &self.segs[seg_i];
        let rest = seg.bytes.get(off as usize..).unwrap_or(&[]);
        is_zero(rest) && !is_zero(&self.segs[seg_i + 1].bytes[SECTOR_BYTES..])
    }

    /// True when a whole batch verifies at `off` (ignoring its link to earlier entries).
    fn complete_batch_at(&self, seg_i: usize, mut off: u64) -> bool {
        let start = self.abs(seg_i, off);
        let mut chain = None;
        loop {
            match self.parse(seg_i, off, chain, start) {
                Ok((h, _)) if h.is_last_in_batch() => return true,
                Ok((h, body)) => {
                    chain = Some(h.header_crc);
                    off = body.end as u64;
                }
                Err(_) => return false,
            }
        }
    }
    fn slot_at(&self, abs: u64) -> Option<u64> {
        let (i, o) = self.locate(abs)?;
        self.parse(i, o, None, abs).ok().map(|(h, _)| h.slot_first)
    }

    /// The log ends at `batch_start`: either cleanly or with a torn last batch.
    fn finish_tail(&self, out: &mut ScanOutcome, batch_start: u64, fault: Fault, partial: bool) {
        let ranges = self.nonzero_ranges(batch_start);
        // A batch start exactly at a segment's end belongs to that (full) segment.
        let (seg_i, off) = if batch_start % self.cfg.segment_bytes == 0 {
            let (i, o) = self.locate(batch_start - 1).expect("tail is in a segment");
            (i, o + 1)
        } else {
            self.locate(batch_start).expect("tail is in a segment")
        };
        let seg = &self.segs[seg_i];
        let cut = seg.file_bytes;
        let cut_abs = self.abs(seg_i, cut);
        let truncated_inside_data = cut < self.cfg.segment_bytes
            && off < cut
            && ranges.first().is_some_and(|r| r.0 < cut_abs);
        if truncated_inside_data {
            // We never shrink a segment file, so this cut is outside damage, not a crash: the
            // bytes past it may have been acknowledged.
            out.corruptions.push(Corruption {
                log_offset: batch_start,
                fault: Fault::SegmentTruncated { file_bytes: cut },
                next_valid_offset: None,
                last_slot_before: out.last_slot,
                first_slot_after: None,
            });
        } else if partial || !ranges.is_empty() || fault != Fault::Zeroed {
            out.torn_tail = Some(TornTail {
                log_offset: batch_start,
                fault,
            });
        }
        for s in &self.segs {
            if s.file_bytes < self.cfg.segment_bytes {
                out.short_segments.push(s.index);
            }
        }
        out.zero_ranges = ranges;
        out.next_offset = if off + SECTOR_BYTES as u64 > self.cfg.segment_bytes {
            (seg.index + 1) * self.cfg.segment_bytes + SECTOR_BYTES as u64
        } else {
            batch_start
        };
    }
}
