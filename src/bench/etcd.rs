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

use super::engine::{kind, EngineResult};
use super::stats::{new_histogram, IntervalLog, Recorder, SeriesKey};
use super::workload::{key_bytes, Arrivals, KeyPicker};
use super::BenchSpec;

struct Acc {
    recorder: Recorder,
    censored: Recorder,
    send_lag: hdrhistogram::Histogram<u64>,
    /// (op, second of the window) → histogram.
    intervals: HashMap<(&'static str, u64), hdrhistogram::Histogram<u64>>,
    completed: u64,
    completed_in_window: u64,
    errors: u64,
    errors_by_kind: std::collections::BTreeMap<String, u64>,
    first_error: Option<String>,
    /// Measured requests in flight: id → (op, measured from).
    in_flight: HashMap<u64, (&'static str, tokio::time::Instant)>,
    next_id: u64,
    /// Open loop: requests finished (any outcome), for the queue samples.
    finished: u64,
}

impl Default for Acc {
    fn default() -> Acc {
        Acc {
            recorder: Recorder::default(),
            censored: Recorder::default(),
            send_lag: new_histogram(),
            intervals: HashMap::new(),
            completed: 0,
            completed_in_window: 0,
            errors: 0,
            errors_by_kind: Default::default(),
            first_error: None,
            in_flight: HashMap::new(),
            next_id: 0,
            finished: 0,
        }
    }
}

/// The same error kinds as the mpaxos engine (`errors_by_kind`). etcd's client does not retry,
/// so every error is final; a write whose outcome is unknown (deadline, lost connection) is
/// `unknown_outcome`, not a failure.
pub fn error_kind(op: &str, e: &etcd_client::Error) -> &'static str {
    let write = op != "get";
    match e {
        etcd_client::Error::GRpcStatus(st) => {
            let msg = st.message().to_ascii_lowercase();
            // The code by name (tonic is not a direct dependency).
            let code = format!("{:?}", st.code());
            let unknown = if write {
                kind::UNKNOWN_OUTCOME
            } else {
                kind::TIMEOUT
            };
            if msg.contains("too many requests") || code == "ResourceExhausted" {
                kind::BUSY
            } else if msg.contains("leader") {
                kind::NOT_LEADER
            } else if code == "DeadlineExceeded" || code == "Cancelled" {
                unknown
            } else if code == "Unavailable" {
                if write {
                    kind::UNKNOWN_OUTCOME
                } else {
                    kind::LINK_LOST
                }
            } else if code == "InvalidArgument" || code == "FailedPrecondition" {
                kind::INVALID
            } else {
                kind::OTHER
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            if write {
                kind::UNKNOWN_OUTCOME
            } else {
                kind::LINK_LOST
            }
        }
        etcd_client::Error::InvalidArgs(_) => kind::INVALID,
        _ => kind::OTHER,
    }
}

impl Acc {
    /// Registers a measured request about to be sent; `could_leave` is when it could have left
    /// (its schedule, or a free session), for the send lag.
    fn start(
        &mut self,
        op: &'static str,
        from: tokio::time::Instant,
        could_leave: tokio::time::Instant,
    ) -> u64 {
        let now = tokio::time::Instant::now();
        self.send_lag.saturating_record(
            (now.saturating_duration_since(could_leave).as_nanos() as u64).max(1),
        );
        self.next_id += 1;
        self.in_flight.insert(self.next_id, (op, from));
        self.next_id
    }

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

    /// Records a finished measured request: its latency if it succeeded, else its error kind
    /// (never a latency).
    fn finish(
        &mut self,
        id: u64,
        op: &'static str,
        res: &Result<(), etcd_client::Error>,
        latency_ns: u64,
        second: u64,
    ) {
        self.in_flight.remove(&id);
        match res {
            Ok(()) => self.record(op, latency_ns, second),
            Err(e) => {
                let k = error_kind(op, e);
                *self.errors_by_kind.entry(k.to_string()).or_default() += 1;
                if !kind::is_unfinished(k) {
                    self.errors += 1;
                }
                self.first_error.get_or_insert(e.to_string());
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
    /// The next operation: its name and key.
    fn pick(&self, rng: &mut ChaCha8Rng) -> (&'static str, Vec<u8>) {
        let mut key = Vec::new();
        key_bytes(self.keys.pick(rng), self.key_size, &mut key);
        let op = if rng.gen_bool(self.read_ratio) {
            "get"
        } else {
            "put"
        };
        (op, key)
    }

    async fn send(
        &self,
        kv: &mut KvClient,
        op: &'static str,
        key: Vec<u8>,
    ) -> Result<(), etcd_client::Error> {
        if op == "get" {
            let opts = self
                .serializable
                .then(|| GetOptions::new().with_serializable());
            kv.get(key, opts).await.map(|_| ())
        } else {
            kv.put(key, self.value.clone(), None).await.map(|_| ())
        }
    }
}

async fn connect(
    endpoints: &[String],
    conns: usize,
    request_timeout: Option<Duration>,
) -> Result<Vec<KvClient>, String> {
    let mut out = Vec::new();
    for _ in 0..conns.max(1) {
        let opts = request_timeout.map(|t| etcd_client::ConnectOptions::new().with_timeout(t));
        let c = tokio::time::timeout(Duration::from_secs(10), Client::connect(endpoints, opts))
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
        let conns = connect(endpoints, spec.conns, None).await?;
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

/// Sleeps until `at` to within microseconds, like the engine: tokio's timer has millisecond
/// granularity, so the sleep itself is a `nanosleep` on a blocking-pool thread until `spin`
/// before `at` (the runtime keeps serving replies meanwhile), and the rest is spent yielding.
/// (Yielding through a whole millisecond instead would burn the CPU the etcd servers share.)
async fn sleep_until_precise(at: tokio::time::Instant, spin: Duration) {
    let now = tokio::time::Instant::now();
    if at > now + spin {
        let wake = (at - spin).into_std();
        let _ = tokio::task::spawn_blocking(move || {
            let now = std::time::Instant::now();
            if wake > now {
                std::thread::sleep(wake - now);
            }
        })
        .await;
    }
    while tokio::time::Instant::now() < at {
        tokio::task::yield_now().await;
    }
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
    let sessions = spec.clients * spec.sessions();
    let warmup = Duration::from_secs_f64(spec.warmup);
    let duration = Duration::from_secs_f64(spec.duration);
    let deadline_spin = Duration::from_micros(spec.deadline_spin_us);
    let started = std::time::SystemTime::now();
    let acc = Arc::new(Mutex::new(Acc::default()));
    let (unfinished, offered, queue_samples, window_start) = rt.block_on(async {
        // etcd's client does not retry: the attempt timeout is its request timeout.
        let conns = connect(
            endpoints,
            spec.conns,
            Some(Duration::from_millis(spec.attempt_timeout_ms)),
        )
        .await?;
        let t0 = tokio::time::Instant::now();
        let measure_start = t0 + warmup;
        let measure_end = measure_start + duration;
        let second_of = move |t: tokio::time::Instant| (t - measure_start).as_secs();
        let in_window = move |t: tokio::time::Instant| t >= measure_start && t < measure_end;
        let mut tasks = Vec::new();
        let mut offered = 0u64;
        // Open loop: scheduled minus finished, at the window's start and after each second
        // (sampled when the scheduler runs, which is at every arrival).
        let mut queue_samples = Vec::new();
        let mut next_sample = measure_start;
        match spec.rate {
            None => {
                for j in 0..sessions {
                    let mut kv = conns[j % conns.len()].clone();
                    let (w, acc) = (workload.clone(), acc.clone());
                    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed.wrapping_add(j as u64));
                    tasks.push(tokio::spawn(async move {
                        let mut free_since = tokio::time::Instant::now();
                        loop {
                            let sent = tokio::time::Instant::now();
                            if sent >= measure_end {
                                break;
                            }
                            let (op, key) = w.pick(&mut rng);
                            let measured = in_window(sent);
                            let id = if measured {
                                acc.lock().expect("lock").start(op, sent, free_since)
                            } else {
                                0
                            };
                            let res = w.send(&mut kv, op, key).await;
                            let done = tokio::time::Instant::now();
                            free_since = done;
                            let mut a = acc.lock().expect("lock");
                            if res.is_ok() && in_window(done) {
                                a.completed_in_window += 1;
                            }
                            if measured {
                                a.finish(
                                    id,
                                    op,
                                    &res,
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
                    sleep_until_precise(at, deadline_spin).await;
                    if at >= next_sample && next_sample <= measure_end {
                        let finished = acc.lock().expect("lock").finished;
                        queue_samples.push((n as u64).saturating_sub(finished));
                        next_sample += Duration::from_secs(1);
                    }
                    let permit = permits
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|e| e.to_string())?;
                    let got = tokio::time::Instant::now();
                    let mut kv = conns[n % conns.len()].clone();
                    n += 1;
                    let (w, acc) = (workload.clone(), acc.clone());
                    let scheduled = at;
                    if in_window(scheduled) {
                        offered += 1;
                    }
                    let mut task_rng = ChaCha8Rng::seed_from_u64(rng.gen());
                    tasks.push(tokio::spawn(async move {
                        let (op, key) = w.pick(&mut task_rng);
                        let measured = in_window(scheduled);
                        let id = if measured {
                            acc.lock()
                                .expect("lock")
                                .start(op, scheduled, scheduled.max(got))
                        } else {
                            0
                        };
                        let res = w.send(&mut kv, op, key).await;
                        drop(permit);
                        let done = tokio::time::Instant::now();
                        let mut a = acc.lock().expect("lock");
                        a.finished += 1;
                        if res.is_ok() && in_window(done) {
                            a.completed_in_window += 1;
                        }
                        if measured {
                            a.finish(
                                id,
                                op,
                                &res,
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
                // The window's end.
                let finished = acc.lock().expect("lock").finished;
                queue_samples.push((n as u64).saturating_sub(finished));
            }
        }
        // Progress while the closed loop runs; then the drain.
        while tokio::time::Instant::now() < measure_end {
            let total = (measure_end - t0).as_secs_f64();
            progress(((tokio::time::Instant::now() - t0).as_secs_f64() / total).min(1.0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let drain_deadline =
            tokio::time::Instant::now() + Duration::from_millis(spec.drain_timeout_ms);
        for t in tasks {
            if tokio::time::timeout_at(drain_deadline, t).await.is_err() {
                // Abandoned below (the runtime is dropped with it); censored from `in_flight`.
            }
        }
        // Whatever measured request is still in flight is censored at the time it had waited.
        let end = tokio::time::Instant::now();
        let mut a = acc.lock().expect("lock");
        let left: Vec<(&'static str, tokio::time::Instant)> =
            a.in_flight.values().copied().collect();
        a.in_flight.clear();
        for (op, from) in &left {
            a.censored.record(
                &SeriesKey {
                    op: op.to_string(),
                    region: "local".into(),
                    path: "etcd".into(),
                },
                (end - *from).as_nanos() as u64,
            );
            let k = if *op == "get" {
                kind::TIMEOUT
            } else {
                kind::UNKNOWN_OUTCOME
            };
            *a.errors_by_kind.entry(k.to_string()).or_default() += 1;
        }
        // The measured window on the monotonic clock, for the CPU sampler beside the driver.
        Ok::<_, String>((
            left.len() as u64,
            offered,
            queue_samples,
            measure_start.into_std(),
        ))
    })?;
    drop(rt);
    let acc = std::mem::take(&mut *acc.lock().expect("lock"));
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
        censored: acc.censored,
        send_lag: acc.send_lag,
        completed_in_window: acc.completed_in_window,
        elapsed_s: duration.as_secs_f64(),
        offered,
        queue_samples,
        errors_by_kind: acc.errors_by_kind,
        retries_by_kind: Default::default(),
        client_id_nonce: 0,
        client_ids: Vec::new(),
        intervals,
        timeline: Vec::new(),
        anatomy: Vec::new(),
        window: (window_start, window_start + duration),
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

/// A gRPC KV server that answers every request at once without doing anything: the etcd
/// side's floor, as the echo thread of `floor::loopback_rtt` is mpaxos's.
struct EchoKv;

type EchoResult<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl etcd_client::proto::PbKvService for EchoKv {
    async fn range(
        &self,
        _: tonic::Request<etcd_client::proto::PbRangeRequest>,
    ) -> EchoResult<etcd_client::proto::PbRangeResponse> {
        Ok(tonic::Response::new(Default::default()))
    }

    type RangeStreamStream = tonic::codegen::tokio_stream::Empty<
        Result<etcd_client::proto::PbRangeStreamResponse, tonic::Status>,
    >;

    async fn range_stream(
        &self,
        _: tonic::Request<etcd_client::proto::PbRangeRequest>,
    ) -> EchoResult<Self::RangeStreamStream> {
        Ok(tonic::Response::new(tonic::codegen::tokio_stream::empty()))
    }

    async fn put(
        &self,
        _: tonic::Request<etcd_client::proto::PbPutRequest>,
    ) -> EchoResult<etcd_client::proto::PbPutResponse> {
        Ok(tonic::Response::new(Default::default()))
    }

    async fn delete_range(
        &self,
        _: tonic::Request<etcd_client::proto::PbDeleteRequest>,
    ) -> EchoResult<etcd_client::proto::PbDeleteResponse> {
        Ok(tonic::Response::new(Default::default()))
    }

    async fn txn(
        &self,
        _: tonic::Request<etcd_client::proto::PbTxnRequest>,
    ) -> EchoResult<etcd_client::proto::PbTxnResponse> {
        Ok(tonic::Response::new(Default::default()))
    }

    async fn compact(
        &self,
        _: tonic::Request<etcd_client::proto::PbCompactionRequest>,
    ) -> EchoResult<etcd_client::proto::PbCompactionResponse> {
        Ok(tonic::Response::new(Default::default()))
    }
}

/// The gRPC floor: `iterations` puts of a `value_bytes` value, one at a time, through the same
/// etcd client and single-threaded runtime the etcd driver uses, against [`EchoKv`] served from
/// its own thread on loopback. What etcd's client stack (tonic, HTTP/2, protobuf) costs per
/// request before etcd does anything.
pub fn grpc_echo_rtt(
    value_bytes: usize,
    iterations: u32,
) -> Result<super::stats::Percentiles, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("grpc floor: cannot bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || -> Result<(), String> {
        let rt = runtime()?;
        rt.block_on(async move {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
            let incoming = tonic::codegen::tokio_stream::wrappers::TcpListenerStream::new(listener);
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(etcd_client::proto::PbKvServer::new(EchoKv))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
                .map_err(|e| format!("grpc floor server: {e}"))
        })
    });
    let result = runtime()?.block_on(async {
        let endpoints = vec![format!("http://{addr}")];
        let mut kv = connect(&endpoints, 1, None).await?.remove(0);
        let value = vec![b'v'; value_bytes];
        let mut h = new_histogram();
        for i in 0..iterations + 100 {
            let start = std::time::Instant::now();
            kv.put(b"k0000001".to_vec(), value.clone(), None)
                .await
                .map_err(|e| format!("grpc floor: {e}"))?;
            if i >= 100 {
                h.saturating_record(start.elapsed().as_nanos() as u64);
            }
        }
        Ok::<_, String>(super::stats::Percentiles::of(&h))
    });
    let _ = stop_tx.send(());
    let _ = server.join();
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_are_on_time() {
        // 200 sends 2 ms apart: tokio's millisecond timer alone is up to 1 ms late.
        let rt = super::runtime().unwrap();
        let mut lag = crate::bench::stats::new_histogram();
        rt.block_on(async {
            let mut at = tokio::time::Instant::now() + std::time::Duration::from_millis(5);
            for _ in 0..200 {
                super::sleep_until_precise(at, std::time::Duration::from_micros(100)).await;
                let late = tokio::time::Instant::now() - at;
                lag.saturating_record((late.as_nanos() as u64).max(1));
                at += std::time::Duration::from_micros(2_000);
            }
        });
        let p = crate::bench::stats::Percentiles::of(&lag);
        assert!(p.p50 < 100.0, "send lag p50 {} us", p.p50);
    }

    #[test]
    fn grpc_echo_floor_answers() {
        let p = super::grpc_echo_rtt(64, 50).unwrap();
        assert_eq!(p.count, 50);
        assert!(p.p50 > 0.0 && p.p50 < 1_000_000.0, "p50 {} us", p.p50);
    }

    #[test]
    fn etcd_errors_have_the_engine_kinds() {
        use etcd_client::Error;
        let busy = Error::GRpcStatus(tonic::Status::resource_exhausted(
            "etcdserver: too many requests",
        ));
        assert_eq!(super::error_kind("put", &busy), "busy");
        let deadline = Error::GRpcStatus(tonic::Status::deadline_exceeded("context deadline"));
        assert_eq!(super::error_kind("put", &deadline), "unknown_outcome");
        assert_eq!(super::error_kind("get", &deadline), "timeout");
        let leader = Error::GRpcStatus(tonic::Status::unavailable("etcdserver: no leader"));
        assert_eq!(super::error_kind("get", &leader), "not_leader");
    }
}
