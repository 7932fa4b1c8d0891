//! Framing: `len: u32 LE | crc32c(payload): u32 LE | payload (rkyv archive)`.
//!
//! Owns: turning a typed value into frame bytes and a byte stream back into validated frames.
//! The payload is copied into a 16-byte-aligned buffer and validated with `rkyv::access`
//! before anything reads it, so a malformed frame is an error, never undefined behaviour.

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Portable, Serialize};

pub const FRAME_HEADER_BYTES: usize = 8;
/// Largest payload accepted: a 1 MiB value plus its key and framing fits with room to spare;
/// peer messages carry batches bounded by `batch_max_bytes` (validated ≤ this).
pub const FRAME_PAYLOAD_MAX_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {len} is over the {max}-byte limit")]
    Oversized { len: usize, max: usize },
    /// The first bytes are another protocol's (an HTTP request or response, an SSH banner,
    /// TLS): the other side is not an mpaxos endpoint.
    #[error("not an mpaxos port: the other side speaks {0} (is this the admin/metrics port? clients dial the client port)")]
    Foreign(&'static str),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("frame payload does not validate: {0}")]
    Invalid(String),
}

/// Names the protocol whose first bytes these are, if they are a well-known one. Checked only
/// for a header whose length is over the limit (these prefixes all read as lengths of 400 MB
/// and more), so it never refuses a real frame.
fn foreign_protocol(header: &[u8]) -> Option<&'static str> {
    const KNOWN: &[(&[u8], &str)] = &[
        (b"HTTP/", "HTTP (a response)"),
        (b"GET ", "HTTP"),
        (b"POST ", "HTTP"),
        (b"PUT ", "HTTP"),
        (b"HEAD ", "HTTP"),
        (b"PRI * HTTP/2", "HTTP/2"),
        (b"SSH-", "SSH"),
        (b"\x16\x03", "TLS"),
    ];
    KNOWN
        .iter()
        .find(|(prefix, _)| header.starts_with(&prefix[..prefix.len().min(header.len())]))
        .map(|(_, what)| *what)
}

/// Serializes values into frames, reusing its buffers.
pub struct FrameEncoder {
    scratch: AlignedVec,
    arena: rkyv::ser::allocator::Arena,
    max_payload: usize,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        FrameEncoder::new()
    }
}

impl FrameEncoder {
    pub fn new() -> FrameEncoder {
        FrameEncoder::with_limit(FRAME_PAYLOAD_MAX_BYTES)
    }

    /// An encoder that refuses payloads over `max_payload` bytes (the receiver's limit).
    pub fn with_limit(max_payload: usize) -> FrameEncoder {
        FrameEncoder {
            scratch: AlignedVec::new(),
            arena: Default::default(),
            max_payload,
        }
    }

    /// Appends one frame holding `value` to `out`; returns the frame's length in bytes, or 0
    /// (and appends nothing) if the payload is over the limit: the receiver would refuse it.
    pub fn encode<T>(&mut self, value: &T, out: &mut Vec<u8>) -> usize
    where
        T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let buf = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            value,
            buf,
            self.arena.acquire(),
        )
        .expect("serializing into memory cannot fail");
        let len = buf.len();
        if len > self.max_payload {
            tracing::warn!(
                len,
                max = self.max_payload,
                "not sending a frame over the receiver's size limit"
            );
            self.scratch = buf;
            return 0;
        }
        out.reserve(FRAME_HEADER_BYTES + len);
        out.extend_from_slice(&(len as u32).to_le_bytes());
        out.extend_from_slice(&crc32c::crc32c(&buf).to_le_bytes());
        out.extend_from_slice(&buf);
        self.scratch = buf;
        FRAME_HEADER_BYTES + len
    }
}

/// Accumulates bytes from a stream and cuts them into validated frames.
///
/// `buf[start..end]` holds unconsumed bytes; `buf` stays initialized up to its length, so
/// reads never zero-fill memory again (only growth does, once).
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    payload: AlignedVec,
    max_payload: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        FrameReader::new(FRAME_PAYLOAD_MAX_BYTES)
    }
}

impl FrameReader {
    pub fn new(max_payload: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            end: 0,
            payload: AlignedVec::new(),
            max_payload,
        }
    }

    /// Makes room for at least `at_least` more bytes after `end`.
    fn reserve(&mut self, at_least: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < at_least {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < at_least {
            self.buf.resize(self.end + at_least, 0);
        }
    }

    /// Reads from `source` into spare room of at least `at_least` bytes; returns what
    /// `source` returned (the bytes it reported are kept).
    pub fn read_from(
        &mut self,
        at_least: usize,
        source: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        self.reserve(at_least);
        let result = source(&mut self.buf[self.end..]);
        if let Ok(n) = result {
            self.end += n;
        }
        result
    }

    /// Appends bytes (tests and simple callers).
    pub fn push(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.buf[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// The next complete frame's payload, checksum-verified and in an aligned buffer, or
    /// `None` if more bytes are needed. After an error the stream is unusable: close it.
    pub fn next_payload(&mut self) -> Result<Option<&AlignedVec>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < FRAME_HEADER_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(avail[4..8].try_into().expect("4 bytes"));
        if len > self.max_payload {
            if let Some(what) = foreign_protocol(&avail[..FRAME_HEADER_BYTES]) {
                return Err(FrameError::Foreign(what));
            }
            return Err(FrameError::Oversized {
                len,
                max: self.max_payload,
            });
        }
        if avail.len() < FRAME_HEADER_BYTES + len {
            return Ok(None);
        }
        let body = &avail[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
        if crc32c::crc32c(body) != crc {
            return Err(FrameError::Checksum);
        }
        self.payload.clear();
        self.payload.extend_from_slice(body);
        self.start += FRAME_HEADER_BYTES + len;
        Ok(Some(&self.payload))
    }
}

/// Validates `payload` as an archived `T` and returns a reference into it.
pub fn access<T>(payload: &[u8]) -> Result<&T::Archived, FrameError>
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(payload)
        .map_err(|e| FrameError::Invalid(e.to_string()))
}

/// Encodes one value as a standalone frame (tests, tools, the blocking client).
pub fn encode_frame<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let mut out = Vec::new();
    FrameEncoder::new().encode(value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::{ArchivedClientFrame, ClientFrame, Hello};

    #[test]
    fn another_protocol_is_named_not_reported_as_a_huge_frame() {
        for (bytes, what) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], "HTTP (a response)"),
            (&b"GET /metrics HTTP/1.1\r\n"[..], "HTTP"),
            (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], "SSH"),
        ] {
            let mut r = FrameReader::default();
            r.read_from(1024, |b| {
                b[..bytes.len()].copy_from_slice(bytes);
                Ok(bytes.len())
            })
            .unwrap();
            let err = r.next_payload().unwrap_err();
            assert_eq!(err, FrameError::Foreign(what));
            assert!(err.to_string().contains("not an mpaxos port"), "{err}");
        }
    }

    #[test]
    fn round_trip_and_split_reads() {
        let frame = encode_frame(&ClientFrame::Hello(Hello::new(7, 1, 2)));
        let mut reader = FrameReader::default();
        for (i, b) in frame.iter().enumerate() {
            assert!(
                reader.next_payload().unwrap().is_none(),
                "incomplete at byte {i}"
            );
            reader.push(&[*b]);
        }
        let payload = reader.next_payload().unwrap().unwrap().clone();
        let archived = access::<ClientFrame>(&payload).unwrap();
        match archived {
            ArchivedClientFrame::Hello(h) => assert_eq!(h.cluster_id.to_native(), 7),
            _ => panic!("wrong frame"),
        }
        assert!(reader.next_payload().unwrap().is_none());
    }

    #[test]
    fn oversized_and_corrupt_frames_are_errors() {
        let mut reader = FrameReader::new(1024);
        reader.push(&(4096u32).to_le_bytes());
        reader.push(&[0; 4]);
        assert_eq!(
            reader.next_payload().unwrap_err(),
            FrameError::Oversized {
                len: 4096,
                max: 1024
            }
        );
        let mut frame = encode_frame(&ClientFrame::Status { id: 3 });
        let last = frame.len() - 1;
        frame[last] ^= 0xff;
        let mut reader = FrameReader::default();
        reader.push(&frame);
        assert_eq!(reader.next_payload().unwrap_err(), FrameError::Checksum);
    }

    #[test]
    fn garbage_with_a_valid_checksum_fails_validation() {
        let body = [0xffu8; 40];
        let mut reader = FrameReader::default();
        reader.push(&(body.len() as u32).to_le_bytes());
        reader.push(&crc32c::crc32c(&body).to_le_bytes());
        reader.push(&body);
        let payload = reader.next_payload().unwrap().unwrap().clone();
        assert!(access::<ClientFrame>(&payload).is_err());
    }
}

#[cfg(test)]
mod peer_tests {
    use super::*;
    use crate::net::wire::message_from_archived;
    use crate::net::wire::*;
    use crate::protocol::{Ballot, Message, VoteSet};

    #[test]
    fn peer_frames_round_trip() {
        let msgs = vec![
            PeerFrame::Hello(Hello::new(1, 2, 0)),
            PeerFrame::Msg(message_to_wire(&Message::Heartbeat {
                ballot: Ballot::new(1, 2),
                commit: 3,
                read_round: 4,
                revoke: VoteSet::from_bits(0b101),
                fast_from: 0,
            })),
            PeerFrame::Msg(message_to_wire(&Message::Prepare {
                ballot: Ballot::new(1, 2),
                first_slot: 1,
            })),
        ];
        let mut enc = FrameEncoder::new();
        let mut out = Vec::new();
        for m in &msgs {
            enc.encode(m, &mut out);
        }
        let mut reader = FrameReader::default();
        reader.push(&out);
        for m in &msgs {
            let p = reader.next_payload().unwrap().unwrap().clone();
            let a = access::<PeerFrame>(&p).unwrap();
            let back: PeerFrame = rkyv::deserialize::<PeerFrame, rancor::Error>(a).unwrap();
            assert_eq!(&back, m);
        }
    }

    #[test]
    fn lease_messages_round_trip() {
        let msgs = [
            Message::Accepted {
                ballot: Ballot::new(7, 1),
                slot: 9,
                holders: VoteSet::from_bits(0b110),
            },
            Message::Heartbeat {
                ballot: Ballot::new(7, 1),
                commit: 8,
                read_round: 2,
                revoke: VoteSet::from_bits(0b100),
                fast_from: 0,
            },
            Message::LeaseRequest {
                lease_num: 123_456_789,
            },
            Message::LeaseGrant {
                lease_num: 123_456_789,
                latest_accepted: 42,
                promised: Ballot {
                    round: 7,
                    replica: 2,
                },
            },
        ];
        for m in msgs {
            let mut enc = FrameEncoder::new();
            let mut out = Vec::new();
            enc.encode(&PeerFrame::Msg(message_to_wire(&m)), &mut out);
            let mut reader = FrameReader::default();
            reader.push(&out);
            let p = reader.next_payload().unwrap().unwrap().clone();
            let ArchivedPeerFrame::Msg(a) = access::<PeerFrame>(&p).unwrap() else {
                panic!("not a message frame");
            };
            assert_eq!(message_from_archived(a), m);
        }
    }
}
