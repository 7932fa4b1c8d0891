//! `mpaxos bench compare A B`: throughput and percentile deltas between two runs or suites.
//!
//! A run directory holds `summary.json`; a suite directory holds `summaries.json`. Suites are
//! matched cell by cell on their labels; each cell is the true median (metric by metric) of
//! its unflagged repeats, with their spread; flagged repeats are listed apart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::stats::{median, spread, Percentiles};
use super::Summary;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The baseline: a run or suite directory.
    pub a: PathBuf,
    /// The candidate: a run or suite directory.
    pub b: PathBuf,
}

/// One cell of a run or suite: the true medians of its unflagged repeats, their spread, and
/// the flagged repeats listed apart.
pub struct Cell {
    /// A summary whose throughput, latency percentiles and floors are the medians of `runs`
    /// (the mean of the two middle values for an even count), not any one repeat.
    pub median: Summary,
    /// The repeats the medians are over: the unflagged ones, or every repeat when all are
    /// flagged (then `all_flagged`).
    pub runs: Vec<Summary>,
    /// Flagged repeats, kept out of the medians (when any repeat is unflagged).
    pub flagged: Vec<Summary>,
    pub all_flagged: bool,
}

impl Cell {
    pub fn new(all: Vec<Summary>) -> Cell {
        let (mut runs, mut flagged): (Vec<Summary>, Vec<Summary>) =
            all.into_iter().partition(|s| !s.flagged);
        let all_flagged = runs.is_empty();
        if all_flagged {
            runs = std::mem::take(&mut flagged);
        }
        let refs: Vec<&Summary> = runs.iter().collect();
        Cell {
            median: median_summary(&refs),
            runs,
            flagged,
            all_flagged,
        }
    }

    /// (min, max) of `f` over the repeats in the median.
    pub fn spread(&self, f: impl Fn(&Summary) -> f64) -> (f64, f64) {
        let v: Vec<f64> = self.runs.iter().map(f).collect();
        spread(&v).unwrap_or((f64::NAN, f64::NAN))
    }
}

/// The medians of several repeats, metric by metric.
pub fn median_summary(runs: &[&Summary]) -> Summary {
    let mut m = runs[0].clone();
    let med = |f: &dyn Fn(&Summary) -> f64| {
        let v: Vec<f64> = runs.iter().map(|s| f(s)).collect();
        median(&v).unwrap_or(f64::NAN)
    };
    m.throughput_ops_s = med(&|s| s.throughput_ops_s);
    m.floor_rtt_us = med(&|s| s.floor_rtt_us);
    m.floor_sync_write_us = med(&|s| s.floor_sync_write_us);
    m.send_lag_us.p50 = med(&|s| s.send_lag_us.p50);
    m.send_lag_us.p99 = med(&|s| s.send_lag_us.p99);
    m.send_lag_us.max = med(&|s| s.send_lag_us.max);
    for (op, p) in m.latency_us.iter_mut() {
        let get = |f: fn(&Percentiles) -> f64| {
            let v: Vec<f64> = runs
                .iter()
                .filter_map(|s| s.latency_us.get(op).map(f))
                .collect();
            median(&v).unwrap_or(f64::NAN)
        };
        p.p50 = get(|p| p.p50);
        p.p90 = get(|p| p.p90);
        p.p99 = get(|p| p.p99);
        p.p999 = get(|p| p.p999);
        p.max = get(|p| p.max);
        p.mean = get(|p| p.mean);
        // A median of lower bounds is a lower bound.
        let mut lb: Vec<String> = runs
            .iter()
            .filter_map(|s| s.latency_us.get(op))
            .flat_map(|p| p.lower_bounds.iter().cloned())
            .collect();
        lb.sort();
        lb.dedup();
        p.lower_bounds = lb;
    }
    m.flagged = runs.iter().any(|s| s.flagged);
    m.flag_reasons = runs.iter().flat_map(|s| s.flag_reasons.clone()).collect();
    m
}

/// Label → the cell of the repeats with that label.
pub fn load(dir: &Path) -> Result<BTreeMap<String, Cell>, String> {
    let read = |p: PathBuf| -> Result<String, String> {
        std::fs::read_to_string(&p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let all: Vec<Summary> = if dir.join("summaries.json").exists() {
        serde_json::from_str(&read(dir.join("summaries.json"))?)
            .map_err(|e| format!("{}: {e}", dir.display()))?
    } else if dir.join("summary.json").exists() {
        vec![serde_json::from_str(&read(dir.join("summary.json"))?)
            .map_err(|e| format!("{}: {e}", dir.display()))?]
    } else {
        return Err(format!(
            "{} is neither a run directory (summary.json) nor a suite directory (summaries.json)",
            dir.display()
        ));
    };
    Ok(group(all))
}

/// Groups summaries into cells by label.
pub fn group(all: Vec<Summary>) -> BTreeMap<String, Cell> {
    let mut groups: BTreeMap<String, Vec<Summary>> = BTreeMap::new();
    for s in all {
        groups.entry(s.label.clone()).or_default().push(s);
    }
    groups.into_iter().map(|(k, v)| (k, Cell::new(v))).collect()
}

fn delta(a: f64, b: f64) -> String {
    if a == 0.0 {
        return "n/a".into();
    }
    format!("{:+.1}%", (b - a) / a * 100.0)
}

/// A percentile of a [`Percentiles`].
type Metric = fn(&Percentiles) -> f64;

fn range(n: usize, (lo, hi): (f64, f64), decimals: usize) -> String {
    if n < 2 {
        return String::new();
    }
    format!("{lo:.decimals$}-{hi:.decimals$}")
}

pub fn render(a: &BTreeMap<String, Cell>, b: &BTreeMap<String, Cell>) -> String {
    let mut out = String::new();
    let pairs: Vec<(String, &Cell, &Cell)> = if a.len() == 1 && b.len() == 1 {
        let (la, sa) = a.iter().next().expect("one");
        let (lb, sb) = b.iter().next().expect("one");
        let label = if la == lb {
            la.clone()
        } else {
            format!("{la} vs {lb}")
        };
        vec![(label, sa, sb)]
    } else {
        a.iter()
            .filter_map(|(k, sa)| b.get(k).map(|sb| (k.clone(), sa, sb)))
            .collect()
    };
    let _ = writeln!(
        out,
        "{:<40} {:<6} {:>12} {:>12} {:>9} {:>19} {:>19}",
        "cell", "metric", "A", "B", "delta", "A spread", "B spread"
    );
    for (label, ca, cb) in &pairs {
        let (sa, sb) = (&ca.median, &cb.median);
        let label = if label.is_empty() {
            "(run)"
        } else {
            label.as_str()
        };
        let _ = writeln!(
            out,
            "{:<40} {:<6} {:>12.0} {:>12.0} {:>9} {:>19} {:>19}",
            format!("{label} [{}|{}]", ca.runs.len(), cb.runs.len()),
            "ops/s",
            sa.throughput_ops_s,
            sb.throughput_ops_s,
            delta(sa.throughput_ops_s, sb.throughput_ops_s),
            range(ca.runs.len(), ca.spread(|s| s.throughput_ops_s), 0),
            range(cb.runs.len(), cb.spread(|s| s.throughput_ops_s), 0),
        );
        for (op, pa) in &sa.latency_us {
            let Some(pb) = sb.latency_us.get(op) else {
                continue;
            };
            let metrics: [(&str, &str, Metric); 5] = [
                ("p50", "p50", |p| p.p50),
                ("p90", "p90", |p| p.p90),
                ("p99", "p99", |p| p.p99),
                ("p99.9", "p999", |p| p.p999),
                ("max", "max", |p| p.max),
            ];
            for (name, field, f) in metrics {
                let (x, y) = (f(pa), f(pb));
                let of = |c: &Cell| c.spread(|s| s.latency_us.get(op).map_or(f64::NAN, f));
                let _ = writeln!(
                    out,
                    "{:<40} {:<6} {:>12} {:>12} {:>9} {:>19} {:>19}",
                    format!("  {op}"),
                    name,
                    pa.show(field, x),
                    pb.show(field, y),
                    delta(x, y),
                    range(ca.runs.len(), of(ca), 1),
                    range(cb.runs.len(), of(cb), 1),
                );
            }
        }
        for (side, c) in [("A", ca), ("B", cb)] {
            if c.all_flagged {
                let _ = writeln!(
                    out,
                    "  note: every {side} repeat is flagged; its medians are over flagged runs ({})",
                    c.median.flag_reasons.join("; ")
                );
            }
            for f in &c.flagged {
                let _ = writeln!(
                    out,
                    "  flagged {side} repeat, not in the median: {} ({:.0} ops/s): {}",
                    f.run_dir.display(),
                    f.throughput_ops_s,
                    f.flag_reasons.join("; ")
                );
            }
        }
    }
    let only_a: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    if pairs.len() > 1 && (!only_a.is_empty() || !only_b.is_empty()) {
        let _ = writeln!(
            out,
            "\nunmatched cells: A only {only_a:?}, B only {only_b:?}"
        );
    }
    let _ = writeln!(
        out,
        "\nlatencies in us; A and B are true medians of the unflagged repeats ([A|B] repeats counted; spread = min-max of them); delta = (B - A) / A; lower latency and higher ops/s are better; >= marks lower bounds (censored unfinished requests)"
    );
    out
}

pub fn run_compare(args: CompareArgs) -> std::process::ExitCode {
    match load(&args.a).and_then(|a| load(&args.b).map(|b| (a, b))) {
        Ok((a, b)) => {
            print!("{}", render(&a, &b));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(label: &str, ops: f64, put_p50: f64, flagged: bool) -> Summary {
        serde_json::from_value(serde_json::json!({
            "run_dir": format!("/runs/{label}-{ops}"),
            "label": label,
            "throughput_ops_s": ops,
            "latency_us": {"put": {"count": 10, "mean": put_p50, "p50": put_p50, "p90": put_p50,
                                   "p99": put_p50, "p999": put_p50, "max": put_p50}},
            "latency_us_by_region": {},
            "floor_rtt_us": 20.0,
            "floor_sync_write_us": 70.0,
            "completed": 10, "unfinished": 0, "errors": 0, "retries": 0, "redirects": 0,
            "timeouts": 0,
            "flagged": flagged,
            "flag_reasons": if flagged { vec!["send lag"] } else { vec![] },
            "leaders": [], "wal_backend": "memory", "links": [],
            "config": serde_json::to_value(crate::bench::suite::default_spec()).unwrap(),
            "started_unix_s": 0
        }))
        .unwrap()
    }

    #[test]
    fn medians_are_true_medians_of_unflagged_repeats() {
        // Two repeats: the median is their mean, not the larger (`v[len / 2]`). A third,
        // flagged repeat is listed apart and moves nothing.
        let cells = group(vec![
            summary("x", 100.0, 300.0, false),
            summary("x", 300.0, 100.0, false),
            summary("x", 10_000.0, 1.0, true),
        ]);
        let c = &cells["x"];
        assert_eq!(c.runs.len(), 2);
        assert_eq!(c.flagged.len(), 1);
        assert_eq!(c.median.throughput_ops_s, 200.0);
        assert_eq!(c.median.latency_us["put"].p50, 200.0);
        assert_eq!(c.spread(|s| s.throughput_ops_s), (100.0, 300.0));
        assert!(!c.median.flagged);
        let text = render(&cells, &cells);
        assert!(
            text.contains("flagged A repeat, not in the median"),
            "{text}"
        );
        assert!(text.contains("100-300"), "{text}");
    }

    #[test]
    fn old_summaries_still_load() {
        // Summaries written before the send lag, errors by kind and floor samples existed.
        let s = summary("old", 1.0, 1.0, false);
        assert_eq!(s.completed_in_window, 0);
        assert!(s.errors_by_kind.is_empty());
        assert!(s.floor_rtt_us_samples.is_empty());
    }
}
