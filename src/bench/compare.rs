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
    /// Output format.
    #[arg(short = 'w', long, value_enum, default_value_t = CompareFormat::Text)]
    pub write_out: CompareFormat,
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

/// A percentile of a [`Percentiles`].
type Metric = fn(&Percentiles) -> f64;

/// How `bench compare` writes its result.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CompareFormat {
    #[default]
    Text,
    Markdown,
    Json,
}

/// One line of a comparison: a metric of one cell on both sides.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub cell: String,
    /// `ops/s`, or the operation and percentile (`put p99`).
    pub metric: String,
    pub a: f64,
    pub b: f64,
    /// (B − A) / A in percent; `None` when A is 0.
    pub delta_percent: Option<f64>,
    pub a_repeats: usize,
    pub b_repeats: usize,
    /// min–max over the repeats in each median (absent for a single run).
    pub a_spread: Option<(f64, f64)>,
    pub b_spread: Option<(f64, f64)>,
    /// With two or more repeats on each side: whether the two spreads overlap (then the
    /// difference is within the noise of these repeats).
    pub within_noise: Option<bool>,
    /// The value is a lower bound (censored unfinished requests).
    pub a_lower_bound: bool,
    pub b_lower_bound: bool,
}

/// A matched pair of cells: their rows, their floors and how their settings differ.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CellComparison {
    pub cell: String,
    pub rows: Vec<Row>,
    pub a_floor_rtt_us: f64,
    pub b_floor_rtt_us: f64,
    pub a_floor_sync_write_us: f64,
    pub b_floor_sync_write_us: f64,
    /// Settings that differ between A and B (`clients: 16 vs 64`), so a reader knows the
    /// comparison is not like for like.
    pub settings_differ: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Comparison {
    pub a: PathBuf,
    pub b: PathBuf,
    pub cells: Vec<CellComparison>,
    pub only_a: Vec<String>,
    pub only_b: Vec<String>,
}

/// Settings that may differ without changing what is measured.
const NOT_SETTINGS: &[&str] = &["seed", "label", "endpoints", "data_dir"];

/// The spec fields that differ between two runs.
pub fn settings_diff(a: &super::BenchSpec, b: &super::BenchSpec) -> Vec<String> {
    let (Ok(serde_json::Value::Object(va)), Ok(serde_json::Value::Object(vb))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = va.keys().chain(vb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !NOT_SETTINGS.contains(&k.as_str()))
        .filter_map(|k| {
            let (x, y) = (
                va.get(k).unwrap_or(&serde_json::Value::Null),
                vb.get(k).unwrap_or(&serde_json::Value::Null),
            );
            (x != y).then(|| format!("{k}: {x} vs {y}"))
        })
        .collect()
}

fn overlap(a: Option<(f64, f64)>, b: Option<(f64, f64)>) -> Option<bool> {
    let ((alo, ahi), (blo, bhi)) = (a?, b?);
    Some(alo <= bhi && blo <= ahi)
}

pub fn compare(
    a_dir: &Path,
    b_dir: &Path,
    a: &BTreeMap<String, Cell>,
    b: &BTreeMap<String, Cell>,
) -> Comparison {
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
    let mut cells = Vec::new();
    for (label, ca, cb) in &pairs {
        let (sa, sb) = (&ca.median, &cb.median);
        let label = if label.is_empty() {
            "(run)".to_string()
        } else {
            label.clone()
        };
        let spread_of =
            |c: &Cell, f: &dyn Fn(&Summary) -> f64| (c.runs.len() >= 2).then(|| c.spread(f));
        let mut rows = Vec::new();
        let row = |metric: String,
                   x: f64,
                   y: f64,
                   sx: Option<(f64, f64)>,
                   sy: Option<(f64, f64)>,
                   lower: (bool, bool)| Row {
            cell: label.clone(),
            metric,
            a: x,
            b: y,
            delta_percent: (x != 0.0).then(|| (y - x) / x * 100.0),
            a_repeats: ca.runs.len(),
            b_repeats: cb.runs.len(),
            a_spread: sx,
            b_spread: sy,
            within_noise: overlap(sx, sy),
            a_lower_bound: lower.0,
            b_lower_bound: lower.1,
        };
        let (sx, sy) = (
            spread_of(ca, &|s| s.throughput_ops_s),
            spread_of(cb, &|s| s.throughput_ops_s),
        );
        rows.push(row(
            "ops/s".into(),
            sa.throughput_ops_s,
            sb.throughput_ops_s,
            sx,
            sy,
            (false, false),
        ));
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
                let of = |c: &Cell| {
                    spread_of(c, &|s: &Summary| s.latency_us.get(op).map_or(f64::NAN, f))
                };
                let lower = |p: &Percentiles| p.lower_bounds.iter().any(|n| n == field);
                rows.push(row(
                    format!("{op} {name}"),
                    f(pa),
                    f(pb),
                    of(ca),
                    of(cb),
                    (lower(pa), lower(pb)),
                ));
            }
        }
        let mut notes = Vec::new();
        for (side, c) in [("A", ca), ("B", cb)] {
            if c.all_flagged {
                notes.push(format!(
                    "every {side} repeat is flagged; its medians are over flagged runs ({})",
                    c.median.flag_reasons.join("; ")
                ));
            }
            for f in &c.flagged {
                notes.push(format!(
                    "flagged {side} repeat, not in the median: {} ({:.0} ops/s): {}",
                    f.run_dir.display(),
                    f.throughput_ops_s,
                    f.flag_reasons.join("; ")
                ));
            }
        }
        cells.push(CellComparison {
            cell: label.clone(),
            rows,
            a_floor_rtt_us: sa.floor_rtt_us,
            b_floor_rtt_us: sb.floor_rtt_us,
            a_floor_sync_write_us: sa.floor_sync_write_us,
            b_floor_sync_write_us: sb.floor_sync_write_us,
            settings_differ: settings_diff(&sa.config, &sb.config),
            notes,
        });
    }
    let (only_a, only_b) = if pairs.len() > 1 {
        (
            a.keys().filter(|k| !b.contains_key(*k)).cloned().collect(),
            b.keys().filter(|k| !a.contains_key(*k)).cloned().collect(),
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Comparison {
        a: a_dir.to_path_buf(),
        b: b_dir.to_path_buf(),
        cells,
        only_a,
        only_b,
    }
}

fn value(v: f64, lower: bool, decimals: usize) -> String {
    format!("{}{v:.decimals$}", if lower { ">=" } else { "" })
}

fn noise(r: &Row) -> &'static str {
    match r.within_noise {
        Some(true) => "noise",
        Some(false) => "changed",
        None => "",
    }
}

/// A row's cells as text: metric, A, B, delta, A spread, B spread, noise verdict.
fn row_cells(r: &Row, dash: &str) -> [String; 7] {
    let decimals = if r.metric == "ops/s" { 0 } else { 1 };
    let spread = |s: Option<(f64, f64)>| {
        s.map_or(String::new(), |(lo, hi)| {
            format!("{lo:.decimals$}{dash}{hi:.decimals$}")
        })
    };
    [
        r.metric.clone(),
        value(r.a, r.a_lower_bound, decimals),
        value(r.b, r.b_lower_bound, decimals),
        r.delta_percent
            .map_or("n/a".into(), |d| format!("{d:+.1}%")),
        spread(r.a_spread),
        spread(r.b_spread),
        noise(r).to_string(),
    ]
}

const LEGEND: &str = "latencies in us; A and B are true medians of the unflagged repeats ([A|B] repeats counted; spread = min-max of them); delta = (B - A) / A; lower latency and higher ops/s are better; >= marks lower bounds (censored unfinished requests); \"noise\" = the two spreads overlap (a difference these repeats cannot tell from noise), \"changed\" = they do not; with a single run on a side there is no noise band: repeat runs (suite `repeats`) to get one";

pub fn render(c: &Comparison, format: CompareFormat) -> String {
    match format {
        CompareFormat::Json => serde_json::to_string_pretty(c).expect("json") + "\n",
        CompareFormat::Text => render_text(c),
        CompareFormat::Markdown => render_markdown(c),
    }
}

fn render_text(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A = {}", c.a.display());
    let _ = writeln!(out, "B = {}", c.b.display());
    for cell in &c.cells {
        let _ = writeln!(out);
        for d in &cell.settings_differ {
            let _ = writeln!(out, "WARNING: settings differ ({}): {d}", cell.cell);
        }
        let _ = writeln!(
            out,
            "{:<36} {:<12} {:>12} {:>12} {:>9} {:>19} {:>19} {:>8}",
            "cell", "metric", "A", "B", "delta", "A spread", "B spread", "noise?"
        );
        for (i, r) in cell.rows.iter().enumerate() {
            let name = if i == 0 {
                format!("{} [{}|{}]", r.cell, r.a_repeats, r.b_repeats)
            } else {
                String::new()
            };
            let [metric, a, b, delta, sa, sb, noise] = row_cells(r, "-");
            let _ = writeln!(
                out,
                "{name:<36} {metric:<12} {a:>12} {b:>12} {delta:>9} {sa:>19} {sb:>19} {noise:>8}"
            );
        }
        let _ = writeln!(
            out,
            "  floors: A RTT {:.1} us, sync write {:.1} us; B RTT {:.1} us, sync write {:.1} us",
            cell.a_floor_rtt_us,
            cell.a_floor_sync_write_us,
            cell.b_floor_rtt_us,
            cell.b_floor_sync_write_us
        );
        for n in &cell.notes {
            let _ = writeln!(out, "  note: {n}");
        }
    }
    if !c.only_a.is_empty() || !c.only_b.is_empty() {
        let _ = writeln!(
            out,
            "\nunmatched cells: A only {:?}, B only {:?}",
            c.only_a, c.only_b
        );
    }
    let _ = writeln!(out, "\n{LEGEND}");
    out
}

fn render_markdown(c: &Comparison) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "A = `{}`  \nB = `{}`\n", c.a.display(), c.b.display());
    for cell in &c.cells {
        let _ = writeln!(out, "### {}\n", cell.cell);
        for d in &cell.settings_differ {
            let _ = writeln!(out, "> **settings differ**: {d}  ");
        }
        if !cell.settings_differ.is_empty() {
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "| metric | A | B | delta | A spread | B spread | noise? |\n|---|---:|---:|---:|---:|---:|---|"
        );
        for r in &cell.rows {
            let [metric, a, b, delta, sa, sb, noise] = row_cells(r, "–");
            let _ = writeln!(
                out,
                "| {metric} | {a} | {b} | {delta} | {sa} | {sb} | {noise} |"
            );
        }
        let _ = writeln!(
            out,
            "\nFloors: A RTT {:.1} µs, sync write {:.1} µs; B RTT {:.1} µs, sync write {:.1} µs. Repeats: A {}, B {}.\n",
            cell.a_floor_rtt_us,
            cell.a_floor_sync_write_us,
            cell.b_floor_rtt_us,
            cell.b_floor_sync_write_us,
            cell.rows.first().map_or(0, |r| r.a_repeats),
            cell.rows.first().map_or(0, |r| r.b_repeats),
        );
        for n in &cell.notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    if !c.only_a.is_empty() || !c.only_b.is_empty() {
        let _ = writeln!(
            out,
            "Unmatched cells: A only {:?}, B only {:?}\n",
            c.only_a, c.only_b
        );
    }
    let _ = writeln!(out, "{LEGEND}");
    out
}

pub fn run_compare(args: CompareArgs) -> std::process::ExitCode {
    match load(&args.a).and_then(|a| load(&args.b).map(|b| (a, b))) {
        Ok((a, b)) => {
            print!(
                "{}",
                render(&compare(&args.a, &args.b, &a, &b), args.write_out)
            );
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
        let c = compare(Path::new("a"), Path::new("b"), &cells, &cells);
        let text = render(&c, CompareFormat::Text);
        assert!(
            text.contains("flagged A repeat, not in the median"),
            "{text}"
        );
        assert!(text.contains("100-300"), "{text}");
    }

    #[test]
    fn compare_names_sides_warns_on_settings_and_marks_noise() {
        let a = group(vec![
            summary("x", 100.0, 300.0, false),
            summary("x", 120.0, 280.0, false),
        ]);
        let mut b1 = summary("x", 110.0, 100.0, false);
        let mut b2 = summary("x", 130.0, 90.0, false);
        b1.config.clients = 64;
        b2.config.clients = 64;
        let b = group(vec![b1, b2]);
        let c = compare(Path::new("runs/a"), Path::new("runs/b"), &a, &b);
        let cell = &c.cells[0];
        assert_eq!(cell.settings_differ, ["clients: 16 vs 64"]);
        // ops/s: 100-120 vs 110-130 overlap; put p50: 280-300 vs 90-100 do not.
        assert_eq!(cell.rows[0].within_noise, Some(true));
        let p50 = cell.rows.iter().find(|r| r.metric == "put p50").unwrap();
        assert_eq!(p50.within_noise, Some(false));
        let text = render(&c, CompareFormat::Text);
        assert!(text.starts_with("A = runs/a\nB = runs/b\n"), "{text}");
        assert!(
            text.contains("WARNING: settings differ (x): clients: 16 vs 64"),
            "{text}"
        );
        assert!(text.contains("floors: A RTT 20.0 us"), "{text}");
        let md = render(&c, CompareFormat::Markdown);
        assert!(md.contains("| put p50 |"), "{md}");
        assert!(
            md.contains("**settings differ**: clients: 16 vs 64"),
            "{md}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&c, CompareFormat::Json)).unwrap();
        assert_eq!(json["cells"][0]["rows"][0]["within_noise"], true);
        // One run a side: no noise band claimed.
        let one = group(vec![summary("x", 100.0, 300.0, false)]);
        let c1 = compare(Path::new("a"), Path::new("b"), &one, &one);
        assert_eq!(c1.cells[0].rows[0].within_noise, None);
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
