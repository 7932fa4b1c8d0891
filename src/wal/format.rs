//! The on-disk format: entry headers, segment headers, superblock copies and snapshot headers.
//!
//! Owns: byte layouts and their checksums (crc32c), nothing else: no files, no I/O. Every
//! layout is documented byte by byte in `docs/internals/wal.md`; keep the two in step.
//! All integers are little-endian.

/// Every write is whole sectors of this size, at offsets and from buffers aligned to it.
pub const SECTOR_BYTES: usize = 4096;
/// Bumped on any incompatible layout change; a reader refuses other versions.
pub const FORMAT_VERSION: u8 = 1;

pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"MPXW");
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"MPXS");
pub const SUPER_MAGIC: u32 = u32::from_le_bytes(*b"MPXB");
pub const SNAPSHOT_MAGIC: u32 = u32::from_le_bytes(*b"MPXP");

/// Size of an entry header; the body follows it directly.
pub const ENTRY_HEADER_BYTES: usize = 64;
/// Flag bit: this entry is the last of its group-commit batch; the next batch starts at the
/// next sector boundary.
pub const FLAG_LAST_IN_BATCH: u8 = 1;

/// Largest application blob a superblock copy can hold.
pub const SUPER_APP_MAX_BYTES: usize = 1024;
/// Superblock copies; written in pairs (one 2-sector write per update).
pub const SUPER_COPIES: usize = 4;

/// A Paxos ballot: ordered by round, then replica id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    pub round: u64,
    pub replica: u32,
}

/// One log entry as the caller hands it to [`crate::wal::Wal::append`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub slot_first: u64,
    pub slot_last: u64,
    pub ballot: Ballot,
    pub body: &'a [u8],
}

/// The decoded, header-checksum-verified fields of an entry header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub flags: u8,
    /// Sectors between the first sector of this entry's batch and the sector holding this
    /// header; lets recovery tell which batch a header found by a sector scan belongs to.
    pub batch_lead_sectors: u16,
    pub group: u32,
    pub body_len: u32,
    pub slot_first: u64,
    pub slot_last: u64,
    pub ballot: Ballot,
    pub body_crc: u32,
    /// Absolute log position of this header (segment index × segment bytes + file offset).
    pub log_offset: u64,
    /// `header_crc` of the previous entry in the log (the chain).
    pub prev_crc: u32,
    pub header_crc: u32,
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub fn align_up(x: u64) -> u64 {
    x.div_ceil(SECTOR_BYTES as u64) * SECTOR_BYTES as u64
}

pub fn align_down(x: u64) -> u64 {
    x / SECTOR_BYTES as u64 * SECTOR_BYTES as u64
}

impl EntryHeader {
    /// Writes the header into `out[..64]`, computing and returning its header checksum.
    pub fn encode(&mut self, out: &mut [u8]) -> u32 {
        let h = &mut out[..ENTRY_HEADER_BYTES];
        put_u32(h, 0, ENTRY_MAGIC);
        h[4] = FORMAT_VERSION;
        h[5] = self.flags;
        put_u16(h, 6, self.batch_lead_sectors);
        put_u32(h, 8, self.group);
        put_u32(h, 12, self.body_len);
        put_u64(h, 16, self.slot_first);
        put_u64(h, 24, self.slot_last);
        put_u64(h, 32, self.ballot.round);
        put_u32(h, 40, self.ballot.replica);
        put_u32(h, 44, self.body_crc);
        put_u64(h, 48, self.log_offset);
        put_u32(h, 56, self.prev_crc);
        self.header_crc = crc32c::crc32c(&h[..60]);
        put_u32(h, 60, self.header_crc);
        self.header_crc
    }

    /// Decodes a header whose magic, version and header checksum are right. Field values
    /// (position, group, chain) are the caller's to judge.
    pub fn decode(b: &[u8]) -> Result<EntryHeader, HeaderFault> {
        if b.len() < ENTRY_HEADER_BYTES {
            return Err(HeaderFault::Zeroed);
        }
        let h = &b[..ENTRY_HEADER_BYTES];
        if is_zero(h) {
            return Err(HeaderFault::Zeroed);
        }
        if get_u32(h, 0) != ENTRY_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if crc32c::crc32c(&h[..60]) != get_u32(h, 60) {
            return Err(HeaderFault::BadChecksum);
        }
        if h[4] != FORMAT_VERSION {
            return Err(HeaderFault::BadVersion(h[4]));
        }
        Ok(EntryHeader {
            flags: h[5],
            batch_lead_sectors: get_u16(h, 6),
            group: get_u32(h, 8),
            body_len: get_u32(h, 12),
            slot_first: get_u64(h, 16),
            slot_last: get_u64(h, 24),
            ballot: Ballot {
                round: get_u64(h, 32),
                replica: get_u32(h, 40),
            },
            body_crc: get_u32(h, 44),
            log_offset: get_u64(h, 48),
            prev_crc: get_u32(h, 56),
            header_crc: get_u32(h, 60),
        })
    }

    pub fn is_last_in_batch(&self) -> bool {
        self.flags & FLAG_LAST_IN_BATCH != 0
    }

    /// Absolute log offset of the first sector of this entry's batch.
    pub fn batch_start(&self) -> u64 {
        align_down(self.log_offset)
            .saturating_sub(self.batch_lead_sectors as u64 * SECTOR_BYTES as u64)
    }
}

/// Why bytes at a position are not a usable entry header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderFault {
    Zeroed,
    BadMagic,
    BadChecksum,
    BadVersion(u8),
}

/// The first sector of every segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub cluster_id: u64,
    pub group: u32,
    pub index: u64,
    pub segment_bytes: u64,
}

impl SegmentHeader {
    pub fn encode(&self, out: &mut [u8]) {
        let s = &mut out[..SECTOR_BYTES];
        s.fill(0);
        put_u32(s, 0, SEGMENT_MAGIC);
        s[4] = FORMAT_VERSION;
        put_u64(s, 8, self.cluster_id);
        put_u32(s, 16, self.group);
        put_u64(s, 24, self.index);
        put_u64(s, 32, self.segment_bytes);
        let crc = crc32c::crc32c(&s[..SECTOR_BYTES - 4]);
        put_u32(s, SECTOR_BYTES - 4, crc);
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, HeaderFault> {
        if b.len() < SECTOR_BYTES {
            return Err(HeaderFault::Zeroed);
        }
        let s = &b[..SECTOR_BYTES];
        if s.iter().all(|&x| x == 0) {
            return Err(HeaderFault::Zeroed);
        }
        if get_u32(s, 0) != SEGMENT_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if crc32c::crc32c(&s[..SECTOR_BYTES - 4]) != get_u32(s, SECTOR_BYTES - 4) {
            return Err(HeaderFault::BadChecksum);
        }
        if s[4] != FORMAT_VERSION {
            return Err(HeaderFault::BadVersion(s[4]));
        }
        Ok(SegmentHeader {
            cluster_id: get_u64(s, 8),
            group: get_u32(s, 16),
            index: get_u64(s, 24),
            segment_bytes: get_u64(s, 32),
        })
    }
}

/// The small durable state kept in the superblock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuperState {
    /// The highest ballot this replica promised (Paxos phase 1).
    pub promised: Ballot,
    /// Opaque small state of the caller (at most [`SUPER_APP_MAX_BYTES`]).
    pub app: Vec<u8>,
}

/// One decoded superblock copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuperCopy {
    pub cluster_id: u64,
    pub group: u32,
    pub seq: u64,
    pub state: SuperState,
}

impl SuperCopy {
    pub fn encode(&self, copy_index: u16, out: &mut [u8]) {
        assert!(self.state.app.len() <= SUPER_APP_MAX_BYTES);
        let s = &mut out[..SECTOR_BYTES];
        s.fill(0);
        put_u32(s, 0, SUPER_MAGIC);
        s[4] = FORMAT_VERSION;
        put_u16(s, 6, copy_index);
        put_u64(s, 8, self.cluster_id);
        put_u32(s, 16, self.group);
        put_u64(s, 24, self.seq);
        put_u64(s, 32, self.state.promised.round);
        put_u32(s, 40, self.state.promised.replica);
        put_u32(s, 44, self.state.app.len() as u32);
        s[64..64 + self.state.app.len()].copy_from_slice(&self.state.app);
        let crc = crc32c::crc32c(&s[..SECTOR_BYTES - 4]);
        put_u32(s, SECTOR_BYTES - 4, crc);
    }

    pub fn decode(b: &[u8]) -> Result<SuperCopy, HeaderFault> {
        if b.len() < SECTOR_BYTES {
            return Err(HeaderFault::Zeroed);
        }
        let s = &b[..SECTOR_BYTES];
        if s.iter().all(|&x| x == 0) {
            return Err(HeaderFault::Zeroed);
        }
        if get_u32(s, 0) != SUPER_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if crc32c::crc32c(&s[..SECTOR_BYTES - 4]) != get_u32(s, SECTOR_BYTES - 4) {
            return Err(HeaderFault::BadChecksum);
        }
        if s[4] != FORMAT_VERSION {
            return Err(HeaderFault::BadVersion(s[4]));
        }
        let app_len = get_u32(s, 44) as usize;
        if app_len > SUPER_APP_MAX_BYTES {
            return Err(HeaderFault::BadChecksum);
        }
        Ok(SuperCopy {
            cluster_id: get_u64(s, 8),
            group: get_u32(s, 16),
            seq: get_u64(s, 24),
            state: SuperState {
                promised: Ballot {
                    round: get_u64(s, 32),
                    replica: get_u32(s, 40),
                },
                app: s[64..64 + app_len].to_vec(),
            },
        })
    }
}

/// The first sector of a snapshot file; the body follows at offset [`SECTOR_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub cluster_id: u64,
    pub group: u32,
    pub slot: u64,
    pub body_len: u64,
    pub body_crc: u32,
}

impl SnapshotHeader {
    pub fn encode(&self, out: &mut [u8]) {
        let s = &mut out[..SECTOR_BYTES];
        s.fill(0);
        put_u32(s, 0, SNAPSHOT_MAGIC);
        s[4] = FORMAT_VERSION;
        put_u64(s, 8, self.cluster_id);
        put_u32(s, 16, self.group);
        put_u64(s, 24, self.slot);
        put_u64(s, 32, self.body_len);
        put_u32(s, 40, self.body_crc);
        let crc = crc32c::crc32c(&s[..SECTOR_BYTES - 4]);
        put_u32(s, SECTOR_BYTES - 4, crc);
    }

    pub fn decode(b: &[u8]) -> Result<SnapshotHeader, HeaderFault> {
        if b.len() < SECTOR_BYTES {
            return Err(HeaderFault::Zeroed);
        }
        let s = &b[..SECTOR_BYTES];
        if get_u32(s, 0) != SNAPSHOT_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if crc32c::crc32c(&s[..SECTOR_BYTES - 4]) != get_u32(s, SECTOR_BYTES - 4) {
            return Err(HeaderFault::BadChecksum);
        }
        if s[4] != FORMAT_VERSION {
            return Err(HeaderFault::BadVersion(s[4]));
        }
        Ok(SnapshotHeader {
            cluster_id: get_u64(s, 8),
            group: get_u32(s, 16),
            slot: get_u64(s, 24),
            body_len: get_u64(s, 32),
            body_crc: get_u32(s, 40),
        })
    }
}

/// Encodes group-commit batches into a sector-aligned buffer.
///
/// Entries are appended one by one; `finish` marks the last entry of the batch and pads the
/// batch to a whole sector. The chain (`prev_crc`) runs through every entry.
pub struct BatchEncoder {
    pub group: u32,
    /// Absolute log offset where the batch starts (sector aligned).
    pub batch_start: u64,
    /// Bytes of the batch written so far (not yet padded).
    pub used: usize,
    /// `header_crc` of the last entry encoded (the chain head).
    pub chain: u32,
    /// Offset within the batch of the last entry's header, if any.
    last_header_at: Option<usize>,
}

impl BatchEncoder {
    pub fn new(group: u32, batch_start: u64, chain: u32) -> BatchEncoder {
        assert_eq!(
            batch_start % SECTOR_BYTES as u64,
            0,
            "batch must start on a sector"
        );
        BatchEncoder {
            group,
            batch_start,
            used: 0,
            chain,
            last_header_at: None,
        }
    }

    /// Bytes the batch would occupy, padded, after adding entries with these body sizes.
    pub fn padded_len_with(&self, extra_bytes: usize) -> usize {
        (self.used + extra_bytes).div_ceil(SECTOR_BYTES) * SECTOR_BYTES
    }

    pub fn is_empty(&self) -> bool {
        self.last_header_at.is_none()
    }

    /// Encodes one entry at the end of the batch. `out` is the whole batch buffer.
    pub fn push(&mut self, out: &mut [u8], e: &Entry<'_>) {
        let at = self.used;
        let end = at + ENTRY_HEADER_BYTES + e.body.len();
        assert!(end <= out.len(), "batch buffer overflow");
        assert!(e.slot_first <= e.slot_last, "entry slot range is inverted");
        let log_offset = self.batch_start + at as u64;
        let mut h = EntryHeader {
            flags: 0,
            batch_lead_sectors: (at / SECTOR_BYTES) as u16,
            group: self.group,
            body_len: e.body.len() as u32,
            slot_first: e.slot_first,
            slot_last: e.slot_last,
            ballot: e.ballot,
            body_crc: crc32c::crc32c(e.body),
            log_offset,
            prev_crc: self.chain,
            header_crc: 0,
        };
        out[at + ENTRY_HEADER_BYTES..end].copy_from_slice(e.body);
        self.chain = h.encode(&mut out[at..]);
        self.last_header_at = Some(at);
        self.used = end;
    }

    /// Marks the last entry, zero-pads to a sector and returns the padded length.
    pub fn finish(&mut self, out: &mut [u8]) -> usize {
        let at = self.last_header_at.expect("finish on an empty batch");
        let mut h = EntryHeader::decode(&out[at..]).expect("own header decodes");
        h.flags |= FLAG_LAST_IN_BATCH;
        self.chain = h.encode(&mut out[at..]);
        let padded = self.padded_len_with(0);
        out[self.used..padded].fill(0);
        padded
    }
}

/// Whether every byte is zero. Recovery asks this of whole segments (the zeroed tail after
/// the last batch, and whether a later segment holds data): 64 bytes at a time, OR-folded so
/// the compiler vectorizes it, instead of one byte per step.
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |acc, &x| acc | x) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_sees_any_nonzero_byte() {
        for len in [0, 1, 63, 64, 65, 4096, 4099] {
            let mut b = vec![0u8; len];
            assert!(is_zero(&b));
            for i in 0..len {
                b[i] = 0x80;
                assert!(!is_zero(&b), "len {len}, byte {i}");
                b[i] = 0;
            }
        }
    }

    #[test]
    fn entry_header_round_trip_and_checksum() {
        let mut buf = vec![0u8; SECTOR_BYTES];
        let mut enc = BatchEncoder::new(7, 8192, 0xdead);
        let e = Entry {
            slot_first: 3,
            slot_last: 5,
            ballot: Ballot {
                round: 9,
                replica: 2,
            },
            body: b"hello",
        };
        enc.push(&mut buf, &e);
        let len = enc.finish(&mut buf);
        assert_eq!(len, SECTOR_BYTES);
        let h = EntryHeader::decode(&buf).unwrap();
        assert_eq!(h.group, 7);
        assert_eq!(h.log_offset, 8192);
        assert_eq!(h.prev_crc, 0xdead);
        assert!(h.is_last_in_batch());
        assert_eq!(h.header_crc, enc.chain);
        assert_eq!(&buf[64..69], b"hello");
        buf[20] ^= 1;
        assert_eq!(EntryHeader::decode(&buf), Err(HeaderFault::BadChecksum));
    }

    #[test]
    fn superblock_copy_round_trip() {
        let c = SuperCopy {
            cluster_id: 1,
            group: 2,
            seq: 3,
            state: SuperState {
                promised: Ballot {
                    round: 4,
                    replica: 5,
                },
                app: vec![6; 10],
            },
        };
        let mut s = vec![0u8; SECTOR_BYTES];
        c.encode(1, &mut s);
        assert_eq!(SuperCopy::decode(&s).unwrap(), c);
        s[100] ^= 0x80;
        assert!(SuperCopy::decode(&s).is_err());
    }
}
