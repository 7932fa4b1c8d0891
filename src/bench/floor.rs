//! The physical floor, measured in the same run as the benchmark (architecture §10): a loopback
//! round trip through the same transport (TCP, the same frames and codec as a client request)
//! and one 4 KiB O_DIRECT write + datasync on the data disk.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;

use crate::net::frame::{access, FrameEncoder, FrameReader};
use crate::net::wire::{ArchivedClientFrame, ClientFrame, Op, Outcome, Request, ServerFrame};

use super::stats::{new_histogram, Percentiles};

/// Round trips of a put-sized request against an echo server that decodes it and answers with
/// a reply frame, like a replica would without doing any work. The client waits for each reply
/// the way the load generator does: polling for up to `spin`, then blocking.
pub fn loopback_rtt(
    value_bytes: usize,
    iterations: u32,
    spin: std::time::Duration,
) -> Result<Percentiles, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("floor: cannot bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = std::thread::spawn(move || -> Result<(), String> {
        let (mut s, _) = listener.accept().map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let mut reader = FrameReader::default();
        let mut enc = FrameEncoder::new();
        let mut out = Vec::new();
        loop {
            while let Some(p) = reader.next_payload().map_err(|e| e.to_string())? {
                let id = match access::<ClientFrame>(p).map_err(|e| e.to_string())? {
                    ArchivedClientFrame::Request(r) => r.id.to_native(),
                    _ => 0,
                };
                out.clear();
                enc.encode(
                    &ServerFrame::Reply {
                        id,
                        outcome: Outcome::Put {
                            revision: id,
                            version: 1,
                        },
                    },
                    &mut out,
                );
                s.write_all(&out).map_err(|e| e.to_string())?;
            }
            match reader.read_from(16 * 1024, |b| s.read(b)) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    });
    let mut c = TcpStream::connect(addr).map_err(|e| format!("floor: cannot connect: {e}"))?;
    let _ = c.set_nodelay(true);
    c.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut enc = FrameEncoder::new();
    let mut reader = FrameReader::default();
    let mut out = Vec::new();
    let mut h = new_histogram();
    let value = Bytes::from(vec![b'v'; value_bytes]);
    for i in 0..iterations as u64 + 100 {
        let start = Instant::now();
        out.clear();
        enc.encode(
            &ClientFrame::Request(Request {
                id: i,
                client_id: 1,
                seq: i,
                op: Op::Put {
                    key: Bytes::from_static(b"k000000000000001"),
                    value: value.clone(),
                },
                fast_deadline_ns: 0,
            }),
            &mut out,
        );
        c.write_all(&out).map_err(|e| e.to_string())?;
        loop {
            if let Some(p) = reader.next_payload().map_err(|e| e.to_string())? {
                access::<ServerFrame>(p).map_err(|e| e.to_string())?;
                break;
            }
            match reader.read_from(16 * 1024, |b| c.read(b)) {
                Ok(0) => return Err("floor: echo server closed".into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if start.elapsed() < spin {
                        std::hint::spin_loop();
                    } else {
                        wait_readable(&c)?;
                    }
                }
                Err(e) => return Err(format!("floor: {e}")),
            }
        }
        if i >= 100 {
            h.saturating_record(start.elapsed().as_nanos() as u64);
        }
    }
    drop(c);
    let _ = server.join();
    Ok(Percentiles::of(&h))
}

/// Blocks until `s` is readable (the engine's epoll wait, for one socket).
fn wait_readable(s: &TcpStream) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("floor: poll: {e}"));
        }
    }
    Ok(())
}

/// One 4 KiB O_DIRECT durable write on the disk holding `dir`, `iterations` times, from
/// `writers` threads at once (each its own file; > 1: the write a one-host cluster's replicas
/// each wait for while the others write too).
pub fn sync_write(dir: &Path, writers: usize, iterations: u32) -> Result<Percentiles, String> {
    let h = crate::wal::check_disk::floor_sync_write(dir, writers, iterations)
        .map_err(|e| e.to_string())?;
    Ok(percentiles_of_us(&h))
}

/// check_disk records microseconds; the floors here are ns histograms like the engine's.
fn percentiles_of_us(h: &hdrhistogram::Histogram<u64>) -> Percentiles {
    let mut ns = new_histogram();
    for v in h.iter_recorded() {
        ns.saturating_record_n(v.value_iterated_to() * 1000, v.count_at_value());
    }
    Percentiles::of(&ns)
}
