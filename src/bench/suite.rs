//! `mpaxos suite FILE`: a matrix of benchmark runs (replicas × placement × knobs × load),
//! repeated, in randomized order, with a combined `summary.csv`, `report.md` and plots.
//!
//! A suite file:
//! ```toml
//! name = "replicas"
//! repeats = 2
//! [base]                 # any `mpaxos bench` knob (BenchSpec field)
//! duration = 5.0
//! [matrix]               # one axis per key; scalars set that knob, tables set several
//! replicas = [3, 5, 7]
//! clients = [1, 16, 64]
//! batching = [{ name = "off", batch_max_ops = 1 }, { name = "adaptive" }]
//! ```
//! A `placement` value that is a bare name resolves to `scripts/placements/NAME.toml` next to
//! the suite file's directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Deserialize;

use super::report::{csv_header, csv_row};
use super::stats::new_histogram;
use super::{run_one, BenchSpec, Summary};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SuiteFile {
    name: String,
    #[serde(default = "one")]
    repeats: u32,
    #[serde(default = "yes")]
    randomize: bool,
    #[serde(default)]
    seed: u64,
    /// The axis that is the load level (for throughput–latency curves).
    #[serde(default)]
    load_axis: Option<String>,
    #[serde(default)]
    base: toml::Table,
    #[serde(default)]
    matrix: toml::Table,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}

#[derive(clap::Args, Debug)]
pub struct SuiteArgs {
    /// The suite file (see scripts/suites/).
    pub file: PathBuf,
    /// Parent of the suite directory.
    #[arg(long, default_value = "results/suites")]
    pub out: PathBuf,
    /// Override every run's measured seconds (quick smoke runs).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Override every run's warm-up seconds.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Override the repeat count.
    #[arg(long)]
    pub repeats: Option<u32>,
    /// Run every cell with this replication protocol (overrides the suite file's `protocol`).
    #[arg(long, value_enum)]
    pub protocol: Option<crate::protocol::ProtocolMode>,
    /// Run nothing: rewrite report.md, summary.csv and the plots of an existing suite
    /// directory from its summaries.json (after a change to the report code).
    #[arg(long)]
    pub rerender: Option<PathBuf>,
}

/// One cell of the matrix: its axis values (for labels) and the spec it runs.
#[derive(Clone, Debug)]
pub struct Cell {
    pub axes: BTreeMap<String, String>,
    pub spec: BenchSpec,
}

/// Every bench knob at its command-line default.
pub fn default_spec() -> BenchSpec {
    use clap::Parser;
    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        spec: BenchSpec,
    }
    Wrap::parse_from(["bench"]).spec
}

fn value_label(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Table(t) => t
            .get("name")
            .and_then(|n| n.as_str())
            .map(String::from)
            .unwrap_or_else(|| {
                t.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        other => other.to_string(),
    }
}

/// A suite file, expanded into its cells (before repeats).
pub struct Suite {
    pub name: String,
    pub repeats: u32,
    pub randomize: bool,
    pub seed: u64,
    pub load_axis: Option<String>,
    pub cells: Vec<Cell>,
}

/// Expands a suite file into its cells (before repeats).
pub fn expand(path: &Path) -> Result<Suite, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read suite {}: {e}", path.display()))?;
    let f: SuiteFile = toml::from_str(&text)
        .map_err(|e| format!("suite {} is not valid: {}", path.display(), e.message()))?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut base = toml::Table::try_from(default_spec()).map_err(|e| e.to_string())?;
    for (k, v) in &f.base {
        base.insert(k.clone(), v.clone());
    }
    let axes: Vec<(String, Vec<toml::Value>)> = f
        .matrix
        .iter()
        .map(|(k, v)| match v {
            toml::Value::Array(a) if !a.is_empty() => Ok((k.clone(), a.clone())),
            _ => Err(format!("matrix axis {k} must be a non-empty list")),
        })
        .collect::<Result<_, _>>()?;
    let mut cells = vec![(BTreeMap::new(), base)];
    for (axis, values) in &axes {
        let mut next = Vec::new();
        for (labels, table) in &cells {
            for v in values {
                let mut t = table.clone();
                let mut l = labels.clone();
                l.insert(axis.clone(), value_label(v));
                match v {
                    toml::Value::Table(over) => {
                        for (k, x) in over {
                            if k != "name" {
                                t.insert(k.clone(), x.clone());
                            }
                        }
                    }
                    scalar => {
                        t.insert(axis.clone(), scalar.clone());
                    }
                }
                next.push((l, t));
            }
        }
        cells = next;
    }
    let mut out = Vec::new();
    for (axes, mut table) in cells {
        if let Some(toml::Value::String(p)) = table.get("placement").cloned() {
            let resolved = if p.ends_with(".toml") {
                base_dir.join(&p)
            } else {
                base_dir.join("../placements").join(format!("{p}.toml"))
            };
            table.insert(
                "placement".into(),
                toml::Value::String(resolved.to_string_lossy().to_string()),
            );
        }
        let mut spec: BenchSpec = table
            .try_into()
            .map_err(|e: toml::de::Error| format!("suite {}: {}", path.display(), e.message()))?;
        spec.label = axes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        spec.validate()
            .map_err(|e| format!("suite {} cell {}: {e}", path.display(), spec.label))?;
        out.push(Cell { axes, spec });
    }
    Ok(Suite {
        name: f.name,
        repeats: f.repeats,
        randomize: f.randomize,
        seed: f.seed,
        load_axis: f.load_axis,
        cells: out,
    })
}

pub fn run_suite(args: SuiteArgs) -> std::process::ExitCode {
    crate::server::init_logging();
    match run_suite_inner(&args) {
        Ok(dir) => {
            println!("suite directory: {}", dir.display());
            println!("report: {}", dir.join("report.md").display());
            println!("html report: {}", dir.join("report.html").display());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn rerender(file: &Path, dir: &Path) -> Result<PathBuf, String> {
    let suite = expand(file)?;
    let text = std::fs::read_to_string(dir.join("summaries.json"))
        .map_err(|e| format!("cannot read {}/summaries.json: {e}", dir.display()))?;
    let summaries: Vec<Summary> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut repeats: BTreeMap<usize, u32> = BTreeMap::new();
    let mut results = Vec::new();
    for s in summaries {
        let Some(i) = suite.cells.iter().position(|c| c.spec.label == s.label) else {
            return Err(format!(
                "run {:?} matches no cell of {}",
                s.label,
                file.display()
            ));
        };
        let r = repeats.entry(i).or_default();
        results.push((i, *r, s));
        *r += 1;
    }
    write_suite_outputs(
        dir,
        &suite.name,
        &suite.cells,
        &results,
        &[],
        suite.load_axis.as_deref(),
    )?;
    Ok(dir.to_path_buf())
}

fn run_suite_inner(args: &SuiteArgs) -> Result<PathBuf, String> {
    if let Some(dir) = &args.rerender {
        return rerender(&args.file, dir);
    }
    let Suite {
        name,
        repeats,
        randomize,
        seed,
        load_axis,
        mut cells,
    } = expand(&args.file)?;
    for c in cells.iter_mut() {
        if let Some(d) = args.duration {
            c.spec.duration = d;
        }
        if let Some(w) = args.warmup {
            c.spec.warmup = w;
        }
        if let Some(p) = args.protocol {
            c.spec.protocol = p;
            c.axes.insert("protocol".into(), p.name().into());
        }
    }
    let repeats = args.repeats.unwrap_or(repeats).max(1);
    let mut order: Vec<(usize, u32)> = (0..cells.len())
        .flat_map(|i| (0..repeats).map(move |r| (i, r)))
        .collect();
    if randomize {
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    }
    let stamp = super::chrono_like_stamp();
    let dir = args.out.join(format!("{stamp}-{name}"));
    let runs_dir = dir.join("runs");
    std::fs::create_dir_all(&runs_dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::copy(&args.file, dir.join("suite.toml")).map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("command.txt"),
        std::env::args().collect::<Vec<_>>().join(" ") + "\n",
    )
    .map_err(|e| e.to_string())?;
    let bar = indicatif::ProgressBar::new(order.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} suite {msg} [{bar:40}] {pos}/{len} runs, eta {eta}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    bar.set_message(name.clone());
    let mut results: Vec<(usize, u32, Summary)> = Vec::new();
    let mut failures = Vec::new();
    for (i, r) in order {
        let mut spec = cells[i].spec.clone();
        spec.seed = spec.seed.wrapping_add(r as u64);
        bar.println(format!("run: {} (repeat {})", spec.label, r + 1));
        match run_one(&spec, &runs_dir, true) {
            Ok(s) => results.push((i, r, s)),
            Err(e) => {
                bar.println(format!("  failed: {e}"));
                failures.push(format!("{} (repeat {}): {e}", spec.label, r + 1));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    results.sort_by_key(|(i, r, _)| (*i, *r));
    write_suite_outputs(
        &dir,
        &name,
        &cells,
        &results,
        &failures,
        load_axis.as_deref(),
    )?;
    if results.is_empty() {
        return Err(format!(
            "every run of the suite failed: {}",
            failures.join("; ")
        ));
    }
    Ok(dir)
}

fn write_suite_outputs(
    dir: &Path,
    name: &str,
    cells: &[Cell],
    results: &[(usize, u32, Summary)],
    failures: &[String],
    load_axis: Option<&str>,
) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let mut csv = format!("repeat,{}\n", csv_header());
    for (_, r, s) in results {
        for line in csv_row(s).lines() {
            let _ = writeln!(csv, "{r},{line}");
        }
    }
    std::fs::write(dir.join("summary.csv"), csv).map_err(io)?;
    let summaries: Vec<&Summary> = results.iter().map(|(_, _, s)| s).collect();
    std::fs::write(
        dir.join("summaries.json"),
        serde_json::to_string_pretty(&summaries).expect("json"),
    )
    .map_err(io)?;

    let mut md = String::new();
    let _ = writeln!(md, "# Suite `{name}`\n");
    let _ = writeln!(
        md,
        "{} cells, {} runs completed, {} failed. Runs executed in randomized order; the exact command is in `command.txt`, each run's directory (spec, commands, logs, histograms) under `runs/`.\n",
        cells.len(),
        results.len(),
        failures.len()
    );
    let _ = writeln!(
        md,
        "Percentiles are from each run's merged HdrHistogram (never averaged); with repeats, each repeat is its own row, and one representative repeat per cell (the lower-middle by throughput among unflagged repeats) is plotted.\n"
    );
    let _ = writeln!(
        md,
        "| cell | repeat | ops/s | put p50 us | put p99 us | get p50 us | get p99 us | floor RTT us | floor sync us | flagged |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (_, r, s) in results {
        let p = |op: &str, f: fn(&super::stats::Percentiles) -> f64| {
            s.latency_us
                .get(op)
                .map_or("-".into(), |x| format!("{:.0}", f(x)))
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
            s.label,
            r + 1,
            s.throughput_ops_s,
            p("put", |x| x.p50),
            p("put", |x| x.p99),
            p("get", |x| x.p50),
            p("get", |x| x.p99),
            s.floor_rtt_us,
            s.floor_sync_write_us,
            if s.flagged {
                s.flag_reasons.join("; ")
            } else {
                String::new()
            }
        );
    }
    replication_cost(&mut md, results);
    md.push_str(&per_region_table(results));
    if !failures.is_empty() {
        let _ = writeln!(md, "\n## Failed runs\n");
        for f in failures {
            let _ = writeln!(md, "- {f}");
        }
    }

    // Plots: one representative repeat of each cell (a plot needs one run's histograms): the
    // lower-middle by throughput among the unflagged repeats (all, if every one is flagged).
    let mut best: BTreeMap<usize, &Summary> = BTreeMap::new();
    for i in 0..cells.len() {
        let mut reps: Vec<&Summary> = results
            .iter()
            .filter(|(c, _, _)| *c == i)
            .map(|(_, _, s)| s)
            .collect();
        if reps.iter().any(|s| !s.flagged) {
            reps.retain(|s| !s.flagged);
        }
        reps.sort_by(|a, b| a.throughput_ops_s.total_cmp(&b.throughput_ops_s));
        if let Some(s) = reps.get(reps.len().saturating_sub(1) / 2) {
            best.insert(i, s);
        }
    }
    let mut cdf_series = Vec::new();
    for s in best.values() {
        // The run's own directory under this suite's `runs/` (the recorded `run_dir` is
        // relative to where the suite ran from).
        let run = s
            .run_dir
            .file_name()
            .map_or_else(|| s.run_dir.clone(), |name| dir.join("runs").join(name));
        let hgrm = run.join("histograms");
        if let Some(h) = load_merged(&hgrm, "put").or_else(|| load_merged(&hgrm, "get")) {
            cdf_series.push((s.label.clone(), h));
        }
    }
    // Titles name the suite and what its cells have in common (the axes are in the legends).
    let common = best.values().next().map_or(String::new(), |s| {
        let varied = |axis: &str| cells.iter().any(|c| c.axes.contains_key(axis));
        format!(" ({})", super::report::human_title_except(s, &varied))
    });
    let mut plots = Vec::new();
    if !cdf_series.is_empty() {
        plot_percentiles(
            &cdf_series,
            &[],
            &dir.join("latency-percentiles"),
            &format!("{name}{common}: write latency by percentile"),
        )?;
        plots.push("latency-percentiles");
        plot_cdf(
            &cdf_series,
            &dir.join("latency-cdf"),
            &format!("{name}{common}: write latency CDF"),
            true,
        )?;
        plots.push("latency-cdf");
    }
    if let Some(axis) = load_axis {
        let mut curves: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
        for (i, s) in &best {
            let key = cells[*i]
                .axes
                .iter()
                .filter(|(k, _)| k.as_str() != axis)
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            if let Some(p) = s.latency_us.get("all") {
                curves
                    .entry(key)
                    .or_default()
                    .push((s.throughput_ops_s, p.p50, p.p99));
            }
        }
        plot_throughput_latency(
            &curves,
            &dir.join("throughput-latency"),
            &format!("{name}{common}"),
        )?;
        plots.push("throughput-latency");
    }
    let regional: Vec<&Summary> = best
        .values()
        .copied()
        .filter(|s| s.latency_us_by_region.len() > 1)
        .collect();
    if !regional.is_empty() {
        plot_region_bars(
            &regional,
            &dir.join("region-latency"),
            &format!("{name}{common}"),
        )?;
        plots.push("region-latency");
    }
    if !plots.is_empty() {
        let _ = writeln!(md, "\n## Plots\n");
        for p in plots {
            let _ = writeln!(md, "![{p}]({p}.svg) (PNG: `{p}.png`)\n");
        }
    }
    std::fs::write(dir.join("report.md"), &md).map_err(io)?;
    super::html::write(dir, &md, &format!("mpaxos suite {name}")).map_err(io)?;
    Ok(())
}

/// Runs with clients in several regions: latency per client region (ms, since these are WAN
/// runs) and the share of reads its nearest replica served, one row per (run, region).
fn per_region_table(results: &[(usize, u32, Summary)]) -> String {
    let mut md = String::new();
    let regional: Vec<&(usize, u32, Summary)> = results
        .iter()
        .filter(|(_, _, s)| s.latency_us_by_region.len() > 1)
        .collect();
    if regional.is_empty() {
        return md;
    }
    let _ = writeln!(md, "\n## Per client region\n");
    let _ = writeln!(
        md,
        "Latency of the requests sent by clients in each region (ms); `local reads`: the share of reads answered by the client's nearest replica without a redirect (`--read-from nearest`; `-` when clients read from the leader).\n"
    );
    let _ = writeln!(
        md,
        "| cell | repeat | region | get p50 | get p99 | local reads | put p50 | put p99 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (_, r, s) in regional {
        for (region, ops) in &s.latency_us_by_region {
            let ms = |op: &str, f: fn(&super::stats::Percentiles) -> f64| {
                ops.get(op)
                    .filter(|p| p.count > 0)
                    .map_or("-".into(), |p| format!("{:.1}", f(p) / 1e3))
            };
            let local = s
                .local_read_share_by_region
                .get(region)
                .map_or("-".into(), |x| format!("{:.0}%", x * 100.0));
            let _ = writeln!(
                md,
                "| {} | {} | {region} | {} | {} | {local} | {} | {} |",
                s.label,
                r + 1,
                ms("get", |p| p.p50),
                ms("get", |p| p.p99),
                ms("put", |p| p.p50),
                ms("put", |p| p.p99),
            );
        }
    }
    md
}

/// The cost of replication: the median throughput of each 3-replica cell over the median of
/// the 1-replica cell that differs from it only in `replicas`.
fn replication_cost(md: &mut String, results: &[(usize, u32, Summary)]) {
    let key = |s: &Summary| {
        let mut c = s.config.clone();
        c.replicas = 0;
        c.label = String::new();
        c.seed = 0;
        serde_json::to_string(&c).unwrap_or_default()
    };
    // True medians over the unflagged repeats (flagged ones are listed in the table above).
    let median = |replicas: u32, k: &str| {
        let v: Vec<f64> = results
            .iter()
            .filter(|(_, _, s)| s.config.replicas == replicas && key(s) == k && !s.flagged)
            .map(|(_, _, s)| s.throughput_ops_s)
            .collect();
        (super::stats::median(&v), v.len())
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    for (_, _, three) in results.iter().filter(|(_, _, s)| s.config.replicas == 3) {
        let k = key(three);
        if !seen.insert(k.clone()) {
            continue;
        }
        if let ((Some(t3), n3), (Some(t1), n1)) = (median(3, &k), median(1, &k)) {
            if t1 > 0.0 {
                lines.push(format!(
                    "| {} | {t3:.0} ({n3}) | {t1:.0} ({n1}) | {:.2} |",
                    three.label,
                    t3 / t1
                ));
            }
        }
    }
    if !lines.is_empty() {
        let _ = writeln!(
            md,
            "\n## Cost of replication (3 replicas / 1 replica, same knobs)\n"
        );
        let _ = writeln!(md, "Medians over unflagged repeats (their count in parentheses); 1 replica is the same binary and durability without replication.\n");
        let _ = writeln!(
            md,
            "| 3-replica cell | 3-replica ops/s | 1-replica ops/s | ratio |"
        );
        let _ = writeln!(md, "|---|---|---|---|");
        for l in lines {
            let _ = writeln!(md, "{l}");
        }
    }
}

/// Rebuilds a histogram from a run's `OP-all.hgrm` percentile file (values in us).
fn load_merged(hist_dir: &Path, op: &str) -> Option<hdrhistogram::Histogram<u64>> {
    let text = std::fs::read_to_string(hist_dir.join(format!("{op}-all.hgrm"))).ok()?;
    let mut h = new_histogram();
    for line in text.lines().skip(2) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.len() < 3 || line.starts_with('#') {
            continue;
        }
        let (Ok(v), Ok(n)) = (cells[0].parse::<f64>(), cells[2].parse::<u64>()) else {
            continue;
        };
        if n > 0 {
            h.saturating_record_n(((v * 1000.0) as u64).max(1), n);
        }
    }
    (!h.is_empty()).then_some(h)
}

fn ensure_font() -> bool {
    static FONT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        for c in candidates {
            if let Ok(bytes) = std::fs::read(c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

type PlotResult = Result<(), String>;

/// A chart that can be drawn on any plotters backend.
pub(crate) trait Plot {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> PlotResult
    where
        DB::ErrorType: 'static;
}

/// Draws `plot` as `stem.svg` and, with `png`, `stem.png`. Both need a font to lay out text.
/// `stem.svg` and `stem.png`.
pub(crate) fn draw_both(plot: &impl Plot, stem: &Path) -> PlotResult {
    both_backends(plot, stem, true)
}

fn both_backends(plot: &impl Plot, stem: &Path, png: bool) -> PlotResult {
    if !ensure_font() {
        return Err(
            "no TrueType font found; install fonts-dejavu-core (scripts/setup.sh does)".into(),
        );
    }
    let svg = stem.with_extension("svg");
    {
        let root = SVGBackend::new(&svg, (900, 600)).into_drawing_area();
        plot.draw(&root)?;
        root.present().map_err(|e| e.to_string())?;
    }
    if !png {
        return Ok(());
    }
    let png = stem.with_extension("png");
    let root = BitMapBackend::new(&png, (900, 600)).into_drawing_area();
    plot.draw(&root)?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The series legend every chart here draws, at `position`.
fn legend<'a, DB: DrawingBackend + 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(position)
        .draw()
        .map_err(err)
}

type CdfArgs = [(String, hdrhistogram::Histogram<u64>)];
struct CdfPlot<'a>(&'a CdfArgs, &'a str);
impl Plot for CdfPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let (series, title) = (self.0, self.1);
        root.fill(&WHITE).map_err(err)?;
        let max_us = series
            .iter()
            .map(|(_, h)| h.value_at_quantile(0.9999) as f64 / 1000.0)
            .fold(1.0, f64::max);
        let min_us = series
            .iter()
            .map(|(_, h)| h.min() as f64 / 1000.0)
            .fold(f64::MAX, f64::min)
            .max(1.0);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((min_us * 0.8..max_us * 1.2).log_scale(), 0.0..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("latency (us, log scale)")
            .y_desc("fraction of requests")
            .draw()
            .map_err(err)?;
        for (i, (label, h)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let total = h.len() as f64;
            let mut seen = 0u64;
            let points: Vec<(f64, f64)> = h
                .iter_recorded()
                .map(|v| {
                    seen += v.count_at_value();
                    (v.value_iterated_to() as f64 / 1000.0, seen as f64 / total)
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
        Ok(())
    }
}

/// Latency CDFs (log-scale x) of named histograms, as `stem.svg` and (with `png`) `stem.png`.
pub fn plot_cdf(series: &CdfArgs, stem: &Path, title: &str, png: bool) -> PlotResult {
    both_backends(&CdfPlot(series, title), stem, png)
}

/// `1 / (1 - p)`, the HdrHistogram percentile axis: 50 % → 2, 90 % → 10, 99 % → 100, ...
fn percentile_x(q: f64) -> f64 {
    (1.0 / (1.0 - q)).min(PERCENTILE_X_MAX)
}

/// The axis ends at 99.999 %.
const PERCENTILE_X_MAX: f64 = 100_000.0;

/// The tick label of an axis position: "99.9%" for 1000.
fn percentile_label(x: f64) -> String {
    let p = (1.0 - 1.0 / x) * 100.0;
    let digits = (x.log10().round() as i32 - 2).max(0) as usize;
    format!("{p:.digits$}%")
}

/// A latency axis label: "250 us", "1.5 ms".
pub(crate) fn latency_label(us: &f64) -> String {
    if *us >= 1000.0 {
        format!("{} ms", *us / 1000.0)
    } else {
        format!("{us} us")
    }
}

/// A horizontal reference line: (label, latency in µs).
pub type FloorLine = (String, f64);

type PercentileArgs = [(String, hdrhistogram::Histogram<u64>)];
struct PercentilePlot<'a>(&'a PercentileArgs, &'a [FloorLine], &'a str);
impl Plot for PercentilePlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let (series, floors, title) = (self.0, self.1, self.2);
        root.fill(&WHITE).map_err(err)?;
        let max_us = series
            .iter()
            .map(|(_, h)| h.max() as f64 / 1000.0)
            .chain(floors.iter().map(|f| f.1))
            .fold(1.0, f64::max);
        let min_us = series
            .iter()
            .map(|(_, h)| h.min() as f64 / 1000.0)
            .chain(floors.iter().map(|f| f.1))
            .fold(f64::MAX, f64::min)
            .max(1.0);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .margin_right(45)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (1.0..PERCENTILE_X_MAX).log_scale(),
                (min_us * 0.8..max_us * 1.5).log_scale(),
            )
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (log scale)")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&latency_label)
            .draw()
            .map_err(err)?;
        for (i, (label, h)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, f64)> = h
                .iter_quantiles(5)
                .map(|v| {
                    (
                        percentile_x(v.quantile_iterated_to()),
                        (v.value_iterated_to() as f64 / 1000.0).max(min_us * 0.8),
                    )
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        for (i, (label, us)) in floors.iter().enumerate() {
            let color = Palette99::pick(series.len() + i).to_rgba();
            chart
                .draw_series(DashedLineSeries::new(
                    [(1.0, *us), (PERCENTILE_X_MAX, *us)],
                    8,
                    5,
                    color.stroke_width(1),
                ))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Latency by percentile on the HdrHistogram axis (x = 1/(1−p), log scale; y log scale), one
/// line per named histogram and a dashed line per floor, as `stem.svg` and `stem.png`.
pub fn plot_percentiles(
    series: &PercentileArgs,
    floors: &[FloorLine],
    stem: &Path,
    title: &str,
) -> PlotResult {
    both_backends(&PercentilePlot(series, floors, title), stem, true)
}

type CurveArgs = BTreeMap<String, Vec<(f64, f64, f64)>>;
struct CurvePlot<'a>(&'a CurveArgs, &'a str);
impl Plot for CurvePlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        let (curves, title) = (self.0, self.1);
        root.fill(&WHITE).map_err(err)?;
        let max_x = curves.values().flatten().map(|p| p.0).fold(1.0, f64::max);
        let max_y = curves.values().flatten().map(|p| p.2).fold(1.0, f64::max);
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{title}: throughput vs latency (p50 solid, p99 dashed)"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_x * 1.1, (1.0..max_y * 1.5).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("throughput (ops/s)")
            .y_desc("latency (us, log scale)")
            .draw()
            .map_err(err)?;
        for (i, (label, pts)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut pts = pts.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1.max(1.0))),
                    color.stroke_width(2),
                ))
                .map_err(err)?
                .label(format!("{label} p50"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(DashedLineSeries::new(
                    pts.iter().map(|p| (p.0, p.2.max(1.0))),
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(err)?;
            chart
                .draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p.0, p.1.max(1.0)), 3, color.filled())),
                )
                .map_err(err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Throughput–latency curves, one per cell family (everything but the load axis).
pub fn plot_throughput_latency(curves: &CurveArgs, stem: &Path, title: &str) -> PlotResult {
    both_backends(&CurvePlot(curves, title), stem, true)
}

fn region_rows(runs: &[&Summary]) -> Vec<(String, f64, f64)> {
    let mut rows = Vec::new();
    for s in runs {
        for (region, ops) in &s.latency_us_by_region {
            let all: Vec<&super::stats::Percentiles> = ops.values().collect();
            let p50 = all.iter().map(|p| p.p50).fold(0.0, f64::max);
            let p99 = all.iter().map(|p| p.p99).fold(0.0, f64::max);
            rows.push((format!("{} @ {region}", s.label), p50, p99));
        }
    }
    rows
}

struct BarPlot<'a>(Vec<(String, f64, f64)>, &'a str);
impl Plot for BarPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, plotters::coord::Shift>) -> PlotResult
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let rows = &self.0;
        let max_y = rows.iter().map(|r| r.2).fold(1.0, f64::max);
        let n = rows.len();
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("{}: latency per client region (p50 bar, p99 tick)", self.1),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..n as f64, 0.0..max_y * 1.1)
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("latency (us)")
            .draw()
            .map_err(err)?;
        for (i, (label, p50, p99)) in rows.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let x = i as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, *p50)],
                    color.filled(),
                )))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x + 0.3, *p99), (x + 0.7, *p99)],
                    BLACK.stroke_width(2),
                )))
                .map_err(err)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        Ok(())
    }
}

/// Per-region latency bars of placement runs.
pub fn plot_region_bars(runs: &[&Summary], stem: &Path, title: &str) -> PlotResult {
    both_backends(&BarPlot(region_rows(runs), title), stem, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_suites_expand() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/suites");
        for (file, min_cells) in [
            ("replicas.toml", 3),
            ("placements.toml", 6),
            ("knobs.toml", 6),
            ("fast-paxos.toml", 96),
            ("leases.toml", 72),
            ("leases-pending.toml", 8),
        ] {
            let cells = expand(&dir.join(file)).unwrap().cells;
            assert!(cells.len() >= min_cells, "{file}: {} cells", cells.len());
            for c in &cells {
                c.spec.validate().unwrap();
                if let Some(p) = &c.spec.placement {
                    crate::net::placement::Placement::load(p).unwrap();
                }
            }
        }
    }

    #[test]
    fn per_region_table_names_regions_and_local_share() {
        let pct = |p50: f64, count: u64| {
            serde_json::json!({"count": count, "mean": p50, "p50": p50, "p90": p50, "p99": 2.0 * p50,
                               "p999": 2.0 * p50, "max": 2.0 * p50})
        };
        let mut s: Summary = serde_json::from_value(serde_json::json!({
            "run_dir": "runs/x", "label": "read_mode=quorum-lease", "throughput_ops_s": 10.0,
            "latency_us": {}, "floor_rtt_us": 20.0, "floor_sync_write_us": 70.0,
            "latency_us_by_region": {
                "eu": {"get": pct(1500.0, 10), "put": pct(80000.0, 0)},
                "us": {"get": pct(300.0, 10), "put": pct(70000.0, 3)}},
            "local_read_share_by_region": {"eu": 0.96, "us": 1.0},
            "completed": 10, "unfinished": 0, "errors": 0, "retries": 0, "redirects": 0,
            "timeouts": 0, "flagged": false, "flag_reasons": [], "leaders": [],
            "wal_backend": "memory", "links": [],
            "config": serde_json::to_value(default_spec()).unwrap(), "started_unix_s": 0
        }))
        .unwrap();
        let md = per_region_table(&[(0, 0, s.clone())]);
        assert!(
            md.contains("| read_mode=quorum-lease | 1 | eu | 1.5 | 3.0 | 96% | - | - |"),
            "{md}"
        );
        assert!(
            md.contains("| us | 0.3 | 0.6 | 100% | 70.0 | 140.0 |"),
            "{md}"
        );
        // One region only: no table.
        s.latency_us_by_region.remove("eu");
        assert_eq!(per_region_table(&[(0, 0, s)]), "");
    }

    #[test]
    fn plots_render() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = new_histogram();
        for v in 1..5000u64 {
            h.record(v * 1000).unwrap();
        }
        plot_cdf(&[("a".into(), h)], &dir.path().join("cdf"), "t", true).unwrap();
        assert!(dir.path().join("cdf.png").exists());
        assert!(dir.path().join("cdf.svg").exists());
        let mut curves = BTreeMap::new();
        curves.insert(
            "x".to_string(),
            vec![(100.0, 50.0, 90.0), (200.0, 60.0, 120.0)],
        );
        plot_throughput_latency(&curves, &dir.path().join("tl"), "t").unwrap();
        assert!(dir.path().join("tl.svg").exists());
    }
}

#[cfg(test)]
mod percentile_axis_tests {
    use super::*;

    #[test]
    fn percentile_axis_positions_and_labels() {
        assert_eq!(percentile_x(0.5), 2.0);
        assert!((percentile_x(0.99) - 100.0).abs() < 1e-9);
        assert_eq!(percentile_x(1.0), PERCENTILE_X_MAX);
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(10_000.0), "99.99%");
    }

    #[test]
    fn percentile_plot_draws_svg_and_png() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        for v in 1..10_000u64 {
            h.record(v * 100).unwrap();
        }
        let stem = dir.path().join("p");
        plot_percentiles(
            &[("put".to_string(), h)],
            &[("write floor".to_string(), 150.0)],
            &stem,
            "3 replicas, 1 client",
        )
        .unwrap();
        assert!(stem.with_extension("svg").exists());
        assert!(stem.with_extension("png").exists());
    }
}
