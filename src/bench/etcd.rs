//! The etcd target: the same workloads, arrival processes, measurement window and histograms
//! as the mpaxos engine, driven through the `etcd-client` crate (build with `--features etcd`).
//!
//! Connections are mapped the way etcd's own `benchmark` tool maps them: `--conns` gRPC
//! connections shared round-robin by `--clients × --outstanding` concurrent requesters. Like
//! the mpaxos engine, the driver runs on one thread (a current-thread tokio runtime), so both
//! systems get the same load-generator budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, GetOptions, KvClient};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::engine::EngineResult;
use super::stats::{new_histogram, IntervalLog, Recorder, SeriesKey};
use super::workload::{key_bytes, Arrivals, KeyPicker};
use super::BenchSpec;

#[derive(Default)]
struct Acc {
    recorder: Recorder,
    /// (op, second of the window) → histogram.
    intervals: HashMap<(&'static str, u64), hdrhistogram::Histogram<u64>>,
    completed: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Acc {
    fn record(&mut self, op: &'static str, latency_ns: u64, second: u64) {
        self.recorder.record(
            &SeriesKey {
                op: op.to_string(),
                region: "local".into(),
                path: "etcd".into(),
            },
            latency_ns,
        );
        self.intervals
            .entry((op, second))
            .or_insert_with(new_histogram)
            .saturating_record(latency_ns.max(1));
        self.completed += 1;
    }

    /// Records a finished request: its latency if it succeeded, else the error.
    fn finish(&mut self, op: &'static str, res: Result<(), String>, latency_ns: u64, second: u64) {
        match res {
            Ok(()) => self.record(op, latency_ns, second),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }
}

struct Workload {
    keys: KeyPicker,
    key_size: usize,
    value: Vec<u8>,
    read_ratio: f64,
    serializable: bool,
}

impl Workload {
    async fn one(
        &self,
        kv: &mut KvClient,
        rng: &mut ChaCha8Rng,
    ) -> (&'static str, Result<(), String>) {
        let mut key = Vec::new();
        key_bytes(self.keys.pick(rng), self.key_size, &mut key);
        if rng.gen_bool(self.read_ratio) {
            let opts = self
                .serializable
                .then(|| GetOptions::new().with_serializable());
            (
                "get",
                kv.get(key, opts)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        } else {
            (
                "put",
                kv.put(key, self.value.clone(), None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            )
        }
    }
}

async fn connect(endpoints: &[String], conns: usize) -> Result<Vec<KvClient>, String> {
    let mut out = Vec::new();
    for _ in 0..conns.max(1) {
        let c = tokio::time::timeout(Duration::from_secs(10), Client::connect(endpoints, None))
            .await
            .map_err(|_| format!("etcd at {endpoints:?} did not answer within 10 s"))?
            .map_err(|e| format!("cannot connect to etcd at {endpoints:?}: {e}"))?;
        out.push(c.kv_client());
    }
    Ok(out)
}

/// Writes every key once (`--prefill`).
pub fn prefill(spec: &BenchSpec, endpoints: &[String]) -> Result<(), String> {
    let rt = runtime()?;
    rt.block_on(async {
        let conns = connect(endpoints, spec.conns).await?;
        let workers = (spec.clients * spec.outstanding).clamp(1, 64) as u64;
        let mut tasks = Vec::new();
        for w in 0..workers {
            let mut kv = conns[w as usize % conns.len()].clone();
            let (keys, key_size, value) = (spec.keys, spec.key_size, vec![b'x'; spec.value_size]);
            tasks.push(tokio::spawn(async move {
                let mut key = Vec::new();
                let mut k = w;
                while k < keys {
                    key_bytes(k, key_size, &mut key);
                    kv.put(key.clone(), value.clone(), None)
                        .await
                        .map_err(|e| format!("etcd prefill: {e}"))?;
                    k += workers;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs the spec's workload against etcd.
pub fn run(
    spec: &BenchSpec,
    endpoints: &[String],
    progress: &dyn Fn(f64),
) -> Result<EngineResult, String> {
    let rt = runtime()?;
    let workload = Arc::new(Workload {
        keys: KeyPicker::new(spec.keys, spec.key_dist()?)?,
        key_size: spec.key_size,
        value: vec![b'x'; spec.value_size],
        read_ratio: spec.read_ratio,
        serializable: spec.serializable_reads,
    });
    let sessions = spec.clients * spec.outstanding;
    let warmup = Duration::from_secs_f64(spec.warmup);
    let duration = Duration::from_secs_f64(spec.duration);
    let started = std::time::SystemTime::now();
    let acc = Arc::new(Mutex::new(Acc::default()));
    let unfinished = rt.block_on(async {
        let conns = connect(endpoints, spec.conns).await?;
        let t0 = tokio::time::Instant::now();
        let measure_start = t0 + warmup;
        let measure_end = measure_start + duration;
        let second_of = move |t: tokio::time::Instant| (t - measure_start).as_secs();
        let in_window = move |t: tokio::time::Instant| t >= measure_start && t < measure_end;
        let mut tasks = Vec::new();
        let mut unfinished = 0u64;
        match spec.rate {
            None => {
                for j in 0..sessions {
                    let mut kv = conns[j % conns.len()].clone();
                    let (w, acc) = (workload.clone(), acc.clone());
                    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(j as u64));
                    tasks.push(tokio::spawn(async move {
                        loop {
                            let sent = tokio::time::Instant::now();
                            if sent >= measure_end {
                                break;
                            }
                            let (op, res) = w.one(&mut kv, &mut rng).await;
                            let done = tokio::time::Instant::now();
                            if in_window(sent) {
                                acc.lock().expect("lock").finish(
                                    op,
                                    res,
                                    (done - sent).as_nanos() as u64,
                                    second_of(sent),
                                );
                            }
                        }
                    }));
                }
            }
            Some(rate) => {
                let arrivals = Arrivals::new(spec.arrival()?, rate)?;
                let permits = Arc::new(tokio::sync::Semaphore::new(sessions.max(1)));
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
                let mut at = t0;
                let mut n = 0usize;
                while at < measure_end {
                    tokio::time::sleep_until(at).await;
                    let permit = permits
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut kv = conns[n % conns.len()].clone();
                    n += 1;
                    let (w, acc) = (workload.clone(), acc.clone());
                    let scheduled = at;
                    let mut task_rng = ChaCha8Rng::seed_from_u64(rng.gen());
                    tasks.push(tokio::spawn(async move {
                        let (op, res) = w.one(&mut kv, &mut task_rng).await;
                        drop(permit);
                        let done = tokio::time::Instant::now();
                        if in_window(scheduled) {
                            acc.lock().expect("lock").finish(
                                op,
                                res,
                                (done - scheduled).as_nanos() as u64,
                                second_of(scheduled),
                            );
                        }
                    }));
                    at += Duration::from_nanos(arrivals.next_gap_ns(&mut rng).max(1.0) as u64);
                    if n % 256 == 0 {
                        let total = (measure_end - t0).as_secs_f64();
                        progress(
                            ((tokio::time::Instant::now() - t0).as_secs_f64() / total).min(1.0),
                        );
                    }
                }
            }
        }
        // Progress while the closed loop runs; then the drain.
        while tokio::time::Instant::now() < measure_end {
            let total = (measure_end - t0).as_secs_f64();
            progress(((tokio::time::Instant::now() - t0).as_secs_f64() / total).min(1.0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for t in tasks {
            match tokio::time::timeout_at(drain_deadline, t).await {
                Ok(_) => {}
                Err(_) => unfinished += 1,
            }
        }
        Ok::<_, String>(unfinished)
    })?;
    let acc = Arc::try_unwrap(acc)
        .map_err(|_| "etcd requests still running after the drain".to_string())?
        .into_inner()
        .expect("lock");
    if let Some(e) = &acc.first_error {
        tracing::warn!("etcd returned {} errors; the first: {e}", acc.errors);
    }
    let mut intervals = IntervalLog::new();
    let mut keys: Vec<_> = acc.intervals.keys().copied().collect();
    keys.sort();
    let mut acc_intervals = acc.intervals;
    for (op, sec) in keys {
        let h = acc_intervals.remove(&(op, sec)).expect("key");
        intervals.push(
            op,
            warmup + Duration::from_secs(sec),
            Duration::from_secs(1),
            h,
        );
    }
    Ok(EngineResult {
        recorder: acc.recorder,
        intervals,
        started,
        completed: acc.completed,
        unfinished,
        retries: 0,
        redirects: 0,
        timeouts: 0,
        errors: acc.errors,
        measured_s: duration.as_secs_f64(),
        links: Vec::new(),
        leaders: Vec::new(),
    })
}
