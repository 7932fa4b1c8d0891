//! WAL group-commit benchmarks per backend: one append of N entries, waited until durable.
//! Run: `cargo bench --bench wal` (scratch files go under `MPAXOS_BENCH_DIR`, default
//! `target/wal-bench`, which must be on the disk you want to measure).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mpaxos::wal::check_disk::synthetic_batch;
use mpaxos::wal::{BackendChoice, Wal, WalConfig};

fn bench_group_commit(c: &mut Criterion) {
    let base = std::env::var("MPAXOS_BENCH_DIR").unwrap_or_else(|_| "target/wal-bench".into());
    let mut g = c.benchmark_group("wal_group_commit");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for backend in [
        BackendChoice::Uring,
        BackendChoice::Sync,
        BackendChoice::Memory,
    ] {
        let dir = std::path::Path::new(&base).join(format!("{backend:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = WalConfig::new(&dir, 0xBE7C, 0);
        cfg.backend = backend;
        cfg.segment_bytes = 16 << 20;
        cfg.max_batch_bytes = 1 << 20;
        cfg.max_entry_bytes = 64 << 10;
        let (mut wal, _) = match Wal::open(cfg) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("skipping {backend:?}: {e}");
                continue;
            }
        };
        let body = [0xA5u8; 64];
        for n in [1usize, 64, 512] {
            let entries = synthetic_batch(n, &body);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{backend:?}").to_lowercase(), format!("{n}x64B")),
                &n,
                |b, _| {
                    let mut sink = Vec::new();
                    b.iter_custom(|iters| {
                        let t = Instant::now();
                        for _ in 0..iters {
                            let id = wal.append(&entries).expect("append");
                            wal.wait_durable(id, &mut sink).expect("durable");
                            sink.clear();
                        }
                        t.elapsed()
                    });
                },
            );
        }
        drop(wal);
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

criterion_group!(benches, bench_group_commit);
criterion_main!(benches);
