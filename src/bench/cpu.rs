//! CPU time and context switches per operation, per process and thread (`summary.json`:
//! `cpu`). The servers and the load generator share this machine's cores, so CPU per
//! operation is what throughput is made of.
//!
//! A sampler thread reads `/proc/PID/task/TID/schedstat` (time on CPU, ns) and `.../status`
//! (voluntary and involuntary context switches) of every watched process a few times a
//! second. The figures cover the samples nearest inside the measured window; operations in
//! that span are the window's throughput times its length.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const PERIOD: Duration = Duration::from_millis(200);

/// A process to watch: what to call it, and its pid.
#[derive(Clone, Debug)]
pub struct Watched {
    pub label: String,
    pub pid: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct ThreadCounters {
    cpu_ns: u64,
    voluntary: u64,
    involuntary: u64,
}

struct Snapshot {
    at: Instant,
    /// (process index, tid) → (thread name, counters)
    threads: BTreeMap<(usize, u32), (String, ThreadCounters)>,
}

fn read_thread(pid: u32, tid: u32) -> Option<(String, ThreadCounters)> {
    let base = format!("/proc/{pid}/task/{tid}");
    let sched = std::fs::read_to_string(format!("{base}/schedstat")).ok()?;
    let cpu_ns = sched.split_whitespace().next()?.parse().ok()?;
    let status = std::fs::read_to_string(format!("{base}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let name = std::fs::read_to_string(format!("{base}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Some((
        name,
        ThreadCounters {
            cpu_ns,
            voluntary: field("voluntary_ctxt_switches:"),
            involuntary: field("nonvoluntary_ctxt_switches:"),
        },
    ))
}

fn snapshot(watched: &[Watched]) -> Snapshot {
    let at = Instant::now();
    let mut threads = BTreeMap::new();
    for (i, w) in watched.iter().enumerate() {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", w.pid)) else {
            continue;
        };
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(t) = read_thread(w.pid, tid) {
                threads.insert((i, tid), t);
            }
        }
    }
    Snapshot { at, threads }
}

/// Every process on this host whose name (`/proc/PID/comm`) is `name`, labelled by pid.
pub fn processes_named(name: &str) -> Vec<Watched> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<Watched> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(|pid| Watched {
            label: format!("{name} pid {pid}"),
            pid,
        })
        .collect();
    out.sort_by_key(|w| w.pid);
    out
}

pub struct Sampler {
    watched: Vec<Watched>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Snapshot>>,
}

/// Per operation, over the span measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerOp {
    pub cpu_us: f64,
    pub voluntary_switches: f64,
    pub involuntary_switches: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessCpu {
    pub label: String,
    /// Cores this process kept busy on average (CPU seconds per second).
    pub cores: f64,
    pub per_op: PerOp,
    /// By thread name (threads of one name summed), per operation.
    pub threads: BTreeMap<String, PerOp>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuReport {
    /// The span between the two samples used (inside the measured window), seconds.
    pub span_s: f64,
    /// Operations in that span: the window's throughput times the span.
    pub ops: f64,
    /// Every watched server process together, and the load generator, per operation.
    pub servers_per_op: PerOp,
    pub load_generator_per_op: PerOp,
    pub processes: Vec<ProcessCpu>,
}

impl Sampler {
    /// Starts sampling `watched` (the load generator is added as "load generator").
    pub fn start(mut watched: Vec<Watched>) -> Sampler {
        watched.push(Watched {
            label: LOAD_GENERATOR.into(),
            pid: std::process::id(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let w = watched.clone();
        let thread = std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || {
                let mut out = vec![snapshot(&w)];
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    out.push(snapshot(&w));
                }
                out
            })
            .expect("spawn the CPU sampler");
        Sampler {
            watched,
            stop,
            thread,
        }
    }

    /// Stops sampling; figures for the measured window `[start, end]` at `ops_per_s`.
    pub fn finish(self, window: (Instant, Instant), ops_per_s: f64) -> Option<CpuReport> {
        self.stop.store(true, Ordering::Relaxed);
        let snaps = self.thread.join().ok()?;
        let first = snaps.iter().find(|s| s.at >= window.0)?;
        let last = snaps.iter().rev().find(|s| s.at <= window.1)?;
        let span = last.at.checked_duration_since(first.at)?.as_secs_f64();
        if span <= 0.0 || ops_per_s <= 0.0 {
            return None;
        }
        Some(report(&self.watched, first, last, span, ops_per_s * span))
    }
}

const LOAD_GENERATOR: &str = "load generator";

fn report(watched: &[Watched], a: &Snapshot, b: &Snapshot, span: f64, ops: f64) -> CpuReport {
    let per_op = |c: &ThreadCounters| PerOp {
        cpu_us: c.cpu_ns as f64 / 1e3 / ops,
        voluntary_switches: c.voluntary as f64 / ops,
        involuntary_switches: c.involuntary as f64 / ops,
    };
    let add = |x: &mut ThreadCounters, y: &ThreadCounters| {
        x.cpu_ns += y.cpu_ns;
        x.voluntary += y.voluntary;
        x.involuntary += y.involuntary;
    };
    let mut processes = Vec::new();
    let (mut servers, mut loadgen) = (ThreadCounters::default(), ThreadCounters::default());
    for (i, w) in watched.iter().enumerate() {
        let mut total = ThreadCounters::default();
        let mut by_name: BTreeMap<String, ThreadCounters> = BTreeMap::new();
        for ((p, tid), (name, end)) in b.threads.range((i, 0)..=(i, u32::MAX)) {
            // A thread born inside the span counts from zero.
            let start = a.threads.get(&(*p, *tid)).map(|t| t.1).unwrap_or_default();
            let d = ThreadCounters {
                cpu_ns: end.cpu_ns.saturating_sub(start.cpu_ns),
                voluntary: end.voluntary.saturating_sub(start.voluntary),
                involuntary: end.involuntary.saturating_sub(start.involuntary),
            };
            add(&mut total, &d);
            add(by_name.entry(name.clone()).or_default(), &d);
        }
        if w.label == LOAD_GENERATOR {
            add(&mut loadgen, &total);
        } else {
            add(&mut servers, &total);
        }
        processes.push(ProcessCpu {
            label: w.label.clone(),
            cores: total.cpu_ns as f64 / 1e9 / span,
            per_op: per_op(&total),
            threads: by_name
                .iter()
                .map(|(n, c)| (n.clone(), per_op(c)))
                .collect(),
        });
    }
    CpuReport {
        span_s: span,
        ops,
        servers_per_op: per_op(&servers),
        load_generator_per_op: per_op(&loadgen),
        processes,
    }
}

/// The run report's CPU section.
pub fn markdown(r: &CpuReport) -> String {
    let mut s = format!(
        "\n## CPU per operation\n\nOver {:.1} s of the measured window (≈{:.0} operations; \
         `/proc/PID/task/*/schedstat` and context switches from `status`). Servers together: \
         **{:.1} µs CPU per operation**, {:.2} voluntary + {:.2} involuntary context switches; \
         load generator: {:.1} µs, {:.2} + {:.2}.\n\n",
        r.span_s,
        r.ops,
        r.servers_per_op.cpu_us,
        r.servers_per_op.voluntary_switches,
        r.servers_per_op.involuntary_switches,
        r.load_generator_per_op.cpu_us,
        r.load_generator_per_op.voluntary_switches,
        r.load_generator_per_op.involuntary_switches,
    );
    s.push_str("| process | thread | CPU µs/op | voluntary cs/op | involuntary cs/op |\n");
    s.push_str("|---|---|---|---|---|\n");
    for p in &r.processes {
        s.push_str(&format!(
            "| {} ({:.2} cores) | all | {:.1} | {:.2} | {:.2} |\n",
            p.label,
            p.cores,
            p.per_op.cpu_us,
            p.per_op.voluntary_switches,
            p.per_op.involuntary_switches
        ));
        for (name, t) in &p.threads {
            if t.cpu_us >= 0.05 {
                s.push_str(&format!(
                    "| | {name} | {:.1} | {:.2} | {:.2} |\n",
                    t.cpu_us, t.voluntary_switches, t.involuntary_switches
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_sampled_and_divided_by_operations() {
        let s = Sampler::start(Vec::new());
        let start = Instant::now();
        // Burn some CPU on this thread so the figure cannot be zero.
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(700) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let r = s
            .finish((start, Instant::now()), 1000.0)
            .expect("samples inside the window");
        assert!(r.span_s > 0.1, "{r:?}");
        assert_eq!(r.processes.len(), 1);
        assert_eq!(r.processes[0].label, LOAD_GENERATOR);
        assert!(r.load_generator_per_op.cpu_us > 0.0, "{r:?}");
        assert_eq!(r.servers_per_op, PerOp::default());
        assert!(r.processes[0].cores > 0.0, "{r:?}");
    }
}
