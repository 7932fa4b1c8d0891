//! The CPU cost of the protocol core: commands per second through an in-memory 3-replica
//! cluster (messages delivered at once, writes durable at once, no I/O), batching on and off.
//! Results: `results/protocol-bench.md`.

use std::collections::VecDeque;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use mpaxos::kv::{KvStore, Op};
use mpaxos::protocol::{Command, Config, DurableState, Envelope, Replica, Role};

const NS_PER_MS: u64 = 1_000_000;

struct Cluster {
    replicas: Vec<Replica>,
    kvs: Vec<KvStore>,
    now: u64,
    inbox: VecDeque<Envelope>,
    applied: u64,
}

impl Cluster {
    fn new(n: u32, batch_max_ops: usize) -> Self {
        let replicas = (0..n)
            .map(|id| {
                let mut cfg = Config::new(id, n);
                cfg.batch_max_ops = batch_max_ops;
                cfg.pipeline_depth = 64;
                Replica::new(cfg, &DurableState::default(), 0)
            })
            .collect();
        let mut cluster = Cluster {
            replicas,
            kvs: (0..n).map(|_| KvStore::new()).collect(),
            now: 0,
            inbox: VecDeque::new(),
            applied: 0,
        };
        // Elect replica 0.
        cluster.now = 400 * NS_PER_MS;
        cluster.replicas[0].tick(cluster.now);
        cluster.settle();
        assert_eq!(cluster.replicas[0].role(), Role::Leader);
        cluster
    }

    /// Drains every replica until nothing is left to do: writes become durable at once and
    /// messages arrive at once.
    fn settle(&mut self) {
        loop {
            let mut idle = true;
            for i in 0..self.replicas.len() {
                let ready = self.replicas[i].ready(self.now);
                if ready.is_empty() {
                    continue;
                }
                idle = false;
                if let Some((last, _)) = ready.writes.last() {
                    self.replicas[i].persisted(self.now, *last);
                }
                self.inbox.extend(ready.messages);
                for (_, value) in ready.committed {
                    for c in value.commands() {
                        self.kvs[i].apply(c.client_id, c.seq, &c.payload);
                        if i == 0 {
                            self.applied += 1;
                        }
                    }
                }
            }
            while let Some(envelope) = self.inbox.pop_front() {
                idle = false;
                let to = envelope.to as usize;
                self.replicas[to].step(self.now, envelope);
            }
            if idle {
                return;
            }
        }
    }
}

fn commands_per_second(c: &mut Criterion) {
    const COMMANDS: u64 = 4_096;
    let payload = Op::Put {
        key: Bytes::from_static(b"config/key"),
        value: Bytes::from(vec![7u8; 64]),
    }
    .encode();
    let mut group = c.benchmark_group("protocol_3_replicas");
    group.throughput(Throughput::Elements(COMMANDS));
    for (name, batch_max_ops) in [("batching_off", 1), ("batching_on", 256)] {
        group.bench_function(BenchmarkId::new("commit_4096_puts", name), |b| {
            let mut cluster = Cluster::new(3, batch_max_ops);
            let mut seq = 0;
            b.iter(|| {
                let target = cluster.applied + COMMANDS;
                for _ in 0..COMMANDS {
                    seq += 1;
                    let command = Command {
                        client_id: 1,
                        seq,
                        payload: payload.clone(),
                    };
                    let now = cluster.now;
                    while cluster.replicas[0].propose(now, command.clone()).is_err() {
                        cluster.settle();
                    }
                    // Offer load in rounds of 64 so batches can form while the pipeline fills.
                    if seq % 64 == 0 {
                        cluster.settle();
                    }
                }
                while cluster.applied < target {
                    cluster.settle();
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, commands_per_second);
criterion_main!(benches);
