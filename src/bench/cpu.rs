//! CPU time and context switches per operation, per process and thread (`summary.json`:
//! `cpu`). The servers and the load generator share this machine's cores, so CPU per
//! operation is what throughput is made of.
//!
//! A sampler thread reads `/proc/PID/task/TID/schedstat` (time on CPU, ns) and `.../status`
//! (voluntary and involuntary context switches) of every watched process a few times a
//! second, and where the kernel lets it (root, or `perf_event_paranoid` low enough) a perf
//! counter of system calls (the `raw_syscalls:sys_enter` tracepoint) on each thread that
//! existed when sampling started. The figures cover the samples nearest inside the measured
//! window; operations in that span are the window's throughput times its length.

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
    syscalls: u64,
    /// Threads summed here with and without a system call counter.
    counted: u32,
    uncounted: u32,
}

/// A perf counter of one thread's system calls.
struct SyscallCounter {
    fd: std::os::fd::OwnedFd,
}

/// `struct perf_event_attr` as of its first version (`PERF_ATTR_SIZE_VER0`, 64 bytes): the
/// kernel accepts it and zero-extends the rest.
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

impl SyscallCounter {
    /// Counts the system calls of thread `tid` from now on.
    fn open(tracepoint: u64, tid: u32) -> std::io::Result<SyscallCounter> {
        use std::os::fd::FromRawFd;
        let attr = PerfEventAttr {
            type_: PERF_TYPE_TRACEPOINT,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: tracepoint,
            sample_period: 0,
            sample_type: 0,
            read_format: 0,
            flags: 0,
            wakeup_events: 0,
            bp_type: 0,
            config1: 0,
        };
        // SAFETY: perf_event_open reads one attr we own; it returns a new descriptor or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(SyscallCounter {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    fn read(&self) -> Option<u64> {
        use std::os::fd::AsRawFd;
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a perf counter descriptor.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        (r == 8).then_some(n)
    }
}

/// The id of the `raw_syscalls:sys_enter` tracepoint, or why it cannot be counted.
fn syscall_tracepoint() -> Result<u64, String> {
    for base in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if let Ok(id) = std::fs::read_to_string(format!("{base}/events/raw_syscalls/sys_enter/id"))
        {
            return id.trim().parse().map_err(|e| format!("tracepoint id: {e}"));
        }
    }
    Err("no tracefs with raw_syscalls events (mount tracefs, or run as root)".into())
}

/// Opens a syscall counter on every thread of the watched processes; the reason if none.
fn open_counters(watched: &[Watched]) -> (BTreeMap<(usize, u32), SyscallCounter>, Option<String>) {
    let id = match syscall_tracepoint() {
        Ok(id) => id,
        Err(why) => return (BTreeMap::new(), Some(why)),
    };
    let mut out = BTreeMap::new();
    let mut err = None;
    for (i, w) in watched.iter().enumerate() {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", w.pid)) else {
            continue;
        };
        for tid in dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        {
            match SyscallCounter::open(id, tid) {
                Ok(c) => {
                    out.insert((i, tid), c);
                }
                Err(e) => err = Some(format!("perf_event_open: {e}")),
            }
        }
    }
    let why = if out.is_empty() { err } else { None };
    (out, why)
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
            syscalls: 0,
            counted: 0,
            uncounted: 1,
        },
    ))
}

fn snapshot(watched: &[Watched], counters: &BTreeMap<(usize, u32), SyscallCounter>) -> Snapshot {
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
            if let Some(mut t) = read_thread(w.pid, tid) {
                if let Some(n) = counters.get(&(i, tid)).and_then(SyscallCounter::read) {
                    t.1.syscalls = n;
                    (t.1.counted, t.1.uncounted) = (1, 0);
                }
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
    /// Why system calls are not counted (None: they are).
    syscalls_unavailable: Option<String>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Snapshot>>,
}

/// Per operation, over the span measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerOp {
    pub cpu_us: f64,
    pub voluntary_switches: f64,
    pub involuntary_switches: f64,
    /// System calls (absent where they cannot be counted: `syscalls_unavailable`; a thread
    /// born after sampling started has no counter, and a process's figure sums the threads
    /// that have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<f64>,
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
    /// Why `syscalls` is absent (no tracefs, no permission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls_unavailable: Option<String>,
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
        let (counters, syscalls_unavailable) = open_counters(&watched);
        let thread = std::thread::Builder::new()
            .name("cpu-sampler".into())
            .spawn(move || {
                let mut out = vec![snapshot(&w, &counters)];
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    out.push(snapshot(&w, &counters));
                }
                out
            })
            .expect("spawn the CPU sampler");
        Sampler {
            watched,
            syscalls_unavailable,
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
        let mut r = report(&self.watched, first, last, span, ops_per_s * span);
        if let Some(why) = self.syscalls_unavailable {
            for p in r.processes.iter_mut() {
                p.per_op.syscalls = None;
                p.threads.values_mut().for_each(|t| t.syscalls = None);
            }
            r.servers_per_op.syscalls = None;
            r.load_generator_per_op.syscalls = None;
            r.syscalls_unavailable = Some(why);
        }
        Some(r)
    }
}

const LOAD_GENERATOR: &str = "load generator";

/// Threads of the measuring tool itself (this sampler, the bench's under-load RTT probe):
/// listed, but not in the load generator's totals.
const TOOL_THREADS: [&str; 2] = ["cpu-sampler", "floor-probe"];

fn report(watched: &[Watched], a: &Snapshot, b: &Snapshot, span: f64, ops: f64) -> CpuReport {
    // `strict`: a figure for threads that all had a counter; else the sum of those that did.
    let per_op = |c: &ThreadCounters, strict: bool| PerOp {
        cpu_us: c.cpu_ns as f64 / 1e3 / ops,
        voluntary_switches: c.voluntary as f64 / ops,
        involuntary_switches: c.involuntary as f64 / ops,
        syscalls: (c.counted > 0 && !(strict && c.uncounted > 0)).then(|| c.syscalls as f64 / ops),
    };
    let add = |x: &mut ThreadCounters, y: &ThreadCounters| {
        x.cpu_ns += y.cpu_ns;
        x.voluntary += y.voluntary;
        x.involuntary += y.involuntary;
        x.syscalls += y.syscalls;
        x.counted += y.counted;
        x.uncounted += y.uncounted;
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
                syscalls: end.syscalls.saturating_sub(start.syscalls),
                counted: end.counted,
                uncounted: end.uncounted,
            };
            if !TOOL_THREADS.contains(&name.as_str()) {
                add(&mut total, &d);
            }
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
            per_op: per_op(&total, false),
            threads: by_name
                .iter()
                .map(|(n, c)| (n.clone(), per_op(c, true)))
                .collect(),
        });
    }
    CpuReport {
        span_s: span,
        ops,
        servers_per_op: per_op(&servers, false),
        load_generator_per_op: per_op(&loadgen, false),
        processes,
        syscalls_unavailable: None,
    }
}

/// The run report's CPU section.
pub fn markdown(r: &CpuReport) -> String {
    let sc = |p: &PerOp| p.syscalls.map_or("—".to_string(), |n| format!("{n:.2}"));
    let mut s = format!(
        "\n## CPU per operation\n\nOver {:.1} s of the measured window (≈{:.0} operations; \
         `/proc/PID/task/*/schedstat`, context switches from `status`, system calls from a \
         perf counter{}). Servers together: **{:.1} µs CPU per operation**, {:.2} voluntary + \
         {:.2} involuntary context switches, {} system calls; load generator: {:.1} µs, \
         {:.2} + {:.2}, {}.\n\n",
        r.span_s,
        r.ops,
        r.syscalls_unavailable
            .as_ref()
            .map_or(String::new(), |w| format!(": not counted, {w}")),
        r.servers_per_op.cpu_us,
        r.servers_per_op.voluntary_switches,
        r.servers_per_op.involuntary_switches,
        sc(&r.servers_per_op),
        r.load_generator_per_op.cpu_us,
        r.load_generator_per_op.voluntary_switches,
        r.load_generator_per_op.involuntary_switches,
        sc(&r.load_generator_per_op),
    );
    s.push_str(
        "| process | thread | CPU µs/op | voluntary cs/op | involuntary cs/op | syscalls/op |\n",
    );
    s.push_str("|---|---|---|---|---|---|\n");
    for p in &r.processes {
        s.push_str(&format!(
            "| {} ({:.2} cores) | all | {:.1} | {:.2} | {:.2} | {} |\n",
            p.label,
            p.cores,
            p.per_op.cpu_us,
            p.per_op.voluntary_switches,
            p.per_op.involuntary_switches,
            sc(&p.per_op)
        ));
        for (name, t) in &p.threads {
            if t.cpu_us >= 0.05 {
                s.push_str(&format!(
                    "| | {name} | {:.1} | {:.2} | {:.2} | {} |\n",
                    t.cpu_us,
                    t.voluntary_switches,
                    t.involuntary_switches,
                    sc(t)
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
            if x % 1024 == 0 {
                // A system call now and then, for the syscall counter to see.
                let _ = std::fs::metadata("/");
            }
        }
        std::hint::black_box(x);
        let r = s
            .finish((start, Instant::now()), 1000.0)
            .expect("samples inside the window");
        assert!(r.span_s > 0.1, "{r:?}");
        assert_eq!(r.processes.len(), 1);
        assert_eq!(r.processes[0].label, LOAD_GENERATOR);
        assert!(r.load_generator_per_op.cpu_us > 0.0, "{r:?}");
        assert_eq!(r.servers_per_op.cpu_us, 0.0);
        assert!(r.processes[0].cores > 0.0, "{r:?}");
        // As root (CI, this VM) the perf counter works; elsewhere it says why not.
        match &r.syscalls_unavailable {
            None => assert!(r.load_generator_per_op.syscalls.unwrap() > 0.0, "{r:?}"),
            Some(why) => assert!(!why.is_empty()),
        }
    }
}
