//! The CPU cost of the wire codec (`src/net/`): framing an rkyv archive with its length and
//! crc32c, and cutting, checksumming, validating and converting it back, for the two frames
//! that dominate a loaded cluster: a leader's Accept carrying a 64-command batch, and a
//! client's Put. Results: `results/codec.md`.
//!
//! Decoding feeds bytes through `FrameReader::read_from`, as `Conn::read_some` does: `push`
//! never compacts the buffer, so a long-lived reader fed with `push` would grow without bound.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use mpaxos::kv::Op;
use mpaxos::net::frame::FRAME_PAYLOAD_MAX_BYTES;
use mpaxos::net::wire::{
    self, ArchivedClientFrame, ArchivedOp, ArchivedPeerFrame, ClientFrame, PeerFrame, Request,
};
use mpaxos::net::{access, FrameEncoder, FrameReader};
use mpaxos::protocol::{Ballot, Command, Message, Value};

const BATCH_COMMANDS: usize = 64;
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 64;
/// Peer connections accept frames up to 64 MiB (`PEER_FRAME_MAX_BYTES` in the runtime).
const PEER_FRAME_MAX_BYTES: usize = 64 << 20;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key-{i:012}").into_bytes())
}

fn value() -> Bytes {
    Bytes::from(vec![0xab; VALUE_BYTES])
}

/// The Accept a leader sends for one slot holding 64 puts (16-byte key, 64-byte value).
fn accept_64() -> Message {
    let commands: Vec<Command> = (0..BATCH_COMMANDS)
        .map(|i| {
            let op = Op::Put {
                key: key(i),
                value: value(),
            };
            assert_eq!(op.key().map(|k| k.len()), Some(KEY_BYTES));
            Command {
                client_id: 0x1234_5678_9abc_def1 + i as u64,
                seq: 1_000 + i as u64,
                payload: op.encode(),
            }
        })
        .collect();
    Message::Accept {
        ballot: Ballot::new(7, 1),
        slot: 123_456,
        value: Value::Batch(Arc::from(commands)),
        commit: 123_400,
    }
}

fn put_request() -> ClientFrame {
    ClientFrame::Request(Request {
        id: 42,
        client_id: 0x1234_5678_9abc_def1,
        seq: 1_000,
        op: wire::Op::Put {
            key: key(0),
            value: value(),
        },
        fast_deadline_ns: 0,
    })
}

/// Feeds `frame` to `reader` the way a socket read does and returns its validated payload.
fn read_one<'r>(reader: &'r mut FrameReader, frame: &[u8]) -> &'r [u8] {
    reader
        .read_from(frame.len(), |buf| {
            buf[..frame.len()].copy_from_slice(frame);
            Ok(frame.len())
        })
        .expect("copying cannot fail");
    reader
        .next_payload()
        .expect("frame is valid")
        .expect("frame is complete")
        .as_slice()
}

fn peer_accept(c: &mut Criterion) {
    let msg = accept_64();
    let peer_frame = PeerFrame::Msg(wire::message_to_wire(&msg));
    let mut encoder = FrameEncoder::new();
    let mut out = Vec::new();
    let frame_bytes = encoder.encode(&peer_frame, &mut out);
    let frame = out.clone();

    let mut group = c.benchmark_group("peer_accept_64x_put_16B_64B");
    group.throughput(Throughput::Bytes(frame_bytes as u64));
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encoder.encode(black_box(&peer_frame), &mut out)
        })
    });
    // What `send_peer` does per message: convert to the wire mirror, then encode.
    group.bench_function("to_wire_and_encode", |b| {
        b.iter(|| {
            out.clear();
            let f = PeerFrame::Msg(wire::message_to_wire(black_box(&msg)));
            encoder.encode(&f, &mut out)
        })
    });
    let mut reader = FrameReader::new(PEER_FRAME_MAX_BYTES);
    group.bench_function("validate_decode", |b| {
        b.iter(|| {
            let payload = read_one(&mut reader, black_box(&frame));
            match access::<PeerFrame>(payload).expect("frame validates") {
                ArchivedPeerFrame::Msg(m) => wire::message_from_archived(m),
                _ => unreachable!("the frame is a Msg"),
            }
        })
    });
    group.finish();
    match access::<PeerFrame>(read_one(&mut reader, &frame)).expect("frame validates") {
        ArchivedPeerFrame::Msg(m) => assert_eq!(wire::message_from_archived(m), msg),
        _ => unreachable!("the frame is a Msg"),
    }
}

fn client_put(c: &mut Criterion) {
    let request = put_request();
    let mut encoder = FrameEncoder::new();
    let mut out = Vec::new();
    let frame_bytes = encoder.encode(&request, &mut out);
    let frame = out.clone();

    let mut group = c.benchmark_group("client_put_16B_64B");
    group.throughput(Throughput::Bytes(frame_bytes as u64));
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encoder.encode(black_box(&request), &mut out)
        })
    });
    // What the server does before proposing: validate, then copy key and value out of the
    // archive (`Group::on_request`).
    let mut reader = FrameReader::new(FRAME_PAYLOAD_MAX_BYTES);
    group.bench_function("validate_decode", |b| {
        b.iter(|| {
            let payload = read_one(&mut reader, black_box(&frame));
            match access::<ClientFrame>(payload).expect("frame validates") {
                ArchivedClientFrame::Request(r) => match &r.op {
                    ArchivedOp::Put { key, value } => (
                        r.client_id.to_native(),
                        r.seq.to_native(),
                        Bytes::copy_from_slice(key.as_slice()),
                        Bytes::copy_from_slice(value.as_slice()),
                    ),
                    _ => unreachable!("the request is a Put"),
                },
                _ => unreachable!("the frame is a Request"),
            }
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = peer_accept, client_put
}
criterion_main!(benches);
