//! `mpaxos bench compare A B`: throughput and percentile deltas between two runs or suites.
//!
//! A run directory holds `summary.json`; a suite directory holds `summaries.json`. Suites are
//! matched cell by cell on their labels (the median-throughput repeat of each).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::Summary;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// The baseline: a run or suite directory.
    pub a: PathBuf,
    /// The candidate: a run or suite directory.
    pub b: PathBuf,
}

/// Label → the median-throughput summary with that label.
pub fn load(dir: &Path) -> Result<BTreeMap<String, Summary>, String> {
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
    let mut groups: BTreeMap<String, Vec<Summary>> = BTreeMap::new();
    for s in all {
        groups.entry(s.label.clone()).or_default().push(s);
    }
    Ok(groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.throughput_ops_s.total_cmp(&b.throughput_ops_s));
            let mid = v.len() / 2;
            (k, v.swap_remove(mid))
        })
        .collect())
}

fn delta(a: f64, b: f64) -> String {
    if a == 0.0 {
        return "n/a".into();
    }
    format!("{:+.1}%", (b - a) / a * 100.0)
}

pub fn render(a: &BTreeMap<String, Summary>, b: &BTreeMap<String, Summary>) -> String {
    let mut out = String::new();
    let pairs: Vec<(String, &Summary, &Summary)> = if a.len() == 1 && b.len() == 1 {
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
        "{:<40} {:<6} {:>12} {:>12} {:>9}",
        "cell", "metric", "A", "B", "delta"
    );
    for (label, sa, sb) in &pairs {
        let label = if label.is_empty() {
            "(run)"
        } else {
            label.as_str()
        };
        let _ = writeln!(
            out,
            "{:<40} {:<6} {:>12.0} {:>12.0} {:>9}",
            label,
            "ops/s",
            sa.throughput_ops_s,
            sb.throughput_ops_s,
            delta(sa.throughput_ops_s, sb.throughput_ops_s)
        );
        for (op, pa) in &sa.latency_us {
            let Some(pb) = sb.latency_us.get(op) else {
                continue;
            };
            for (name, x, y) in [
                ("p50", pa.p50, pb.p50),
                ("p90", pa.p90, pb.p90),
                ("p99", pa.p99, pb.p99),
                ("p99.9", pa.p999, pb.p999),
                ("max", pa.max, pb.max),
            ] {
                let _ = writeln!(
                    out,
                    "{:<40} {:<6} {:>12.1} {:>12.1} {:>9}",
                    format!("  {op}"),
                    name,
                    x,
                    y,
                    delta(x, y)
                );
            }
        }
        if sa.flagged || sb.flagged {
            let _ = writeln!(
                out,
                "  note: a run is flagged ({}{})",
                sa.flag_reasons.join("; "),
                sb.flag_reasons.join("; ")
            );
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
        "\nlatencies in us; delta = (B - A) / A; lower latency and higher ops/s are better"
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
