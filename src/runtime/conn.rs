//! One TCP connection's buffers: a frame reader and a coalesced output buffer.
//!
//! Frames queued during a loop turn go out together when the loop flushes at the end of the
//! turn (one `write` per connection per turn, architecture §8).

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::net::FrameReader;

/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

pub struct Conn {
    pub stream: TcpStream,
    pub reader: FrameReader,
    out: Vec<u8>,
    out_pos: usize,
    /// Close once the output is flushed (after an error frame).
    pub closing: bool,
    /// The other side shut down its sending half: nothing more to read, but the answers it
    /// is waiting for still go out before we close.
    pub eof: bool,
}

pub enum ReadStatus {
    /// Read something (maybe frames to take); the socket may have more.
    Data,
    /// Read something, and the socket had no more (the read came back short): under
    /// edge-triggered polling the next arrival raises a new event, so asking again now would
    /// only be a system call that says `EAGAIN` (the same rule nginx follows).
    Drained,
    /// Nothing more for now.
    WouldBlock,
    /// The other side will send nothing more (it closed, or shut down its sending half).
    Eof,
    /// The socket failed.
    Closed,
}

impl Conn {
    pub fn new(stream: TcpStream, max_payload: usize) -> Conn {
        Conn {
            stream,
            reader: FrameReader::new(max_payload),
            out: Vec::with_capacity(16 * 1024),
            out_pos: 0,
            closing: false,
            eof: false,
        }
    }

    /// One read into the frame buffer.
    pub fn read_some(&mut self) -> ReadStatus {
        let stream = &mut self.stream;
        let mut offered = 0;
        match self.reader.read_from(READ_CHUNK_BYTES, |buf| {
            offered = buf.len();
            stream.read(buf)
        }) {
            Ok(0) => ReadStatus::Eof,
            Ok(n) if n < offered => ReadStatus::Drained,
            Ok(_) => ReadStatus::Data,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadStatus::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadStatus::Data,
            Err(_) => ReadStatus::Closed,
        }
    }

    /// The buffer frames are encoded into.
    pub fn out(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes as much as the socket takes. `Err` means the connection is dead.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 1 << 20 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }
}
