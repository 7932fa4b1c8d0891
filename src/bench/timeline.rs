//! `mpaxos bench --timeline`: every measured request with its send time, so a run shows what a
//! fault did *when* (a histogram cannot): `timeline.csv`, a latency-over-time plot, and
//! `mpaxos bench timeline RUN --mark LABEL@TIME` to mark events (a kill, a partition) and
//! measure the stall around each one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use super::engine::TimelinePoint;

/// At most this many requests are kept (~24 MB); a longer run keeps its first ones and says so.
pub const TIMELINE_MAX: usize = 1_000_000;

/// One row of `timeline.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Seconds from the engine's start (warm-up included) to the request's send (closed loop)
    /// or scheduled send (open loop).
    pub sent_s: f64,
    pub op: String,
    pub latency_us: f64,
    /// Unfinished when the run ended: `latency_us` is what it had waited by then.
    pub censored: bool,
}

/// Writes `timeline.csv`: a `# engine_start_unix_ns=N` line (so events timed by the wall clock
/// can be placed on it), a header, one row per measured request in send order.
pub fn write_csv(
    path: &Path,
    start_unix_ns: u128,
    points: &[TimelinePoint],
) -> std::io::Result<()> {
    let mut sorted: Vec<&TimelinePoint> = points.iter().collect();
    sorted.sort_by_key(|p| p.sent_ns);
    let mut out = String::with_capacity(points.len() * 32 + 100);
    let _ = writeln!(out, "# engine_start_unix_ns={start_unix_ns}");
    out.push_str("sent_s,op,latency_us,censored\n");
    for p in sorted {
        let _ = writeln!(
            out,
            "{:.6},{},{:.1},{}",
            p.sent_ns as f64 / 1e9,
            p.op,
            p.latency_ns as f64 / 1e3,
            u8::from(p.censored)
        );
    }
    std::fs::write(path, out)
}

/// Reads `timeline.csv`: the engine's start (unix ns) and the rows.
pub fn read_csv(path: &Path) -> Result<(u128, Vec<Row>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut start = None;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = || format!("{}:{}: not a timeline row: {line:?}", path.display(), i + 1);
        if let Some(v) = line.strip_prefix("# engine_start_unix_ns=") {
            start = Some(v.trim().parse::<u128>().map_err(|_| bad())?);
            continue;
        }
        if line.starts_with('#') || line.starts_with("sent_s,") || line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 4 {
            return Err(bad());
        }
        rows.push(Row {
            sent_s: f[0].parse().map_err(|_| bad())?,
            op: f[1].to_string(),
            latency_us: f[2].parse().map_err(|_| bad())?,
            censored: f[3] == "1",
        });
    }
    let start = start.ok_or_else(|| format!("{}: no engine_start_unix_ns line", path.display()))?;
    Ok((start, rows))
}

/// An event to draw and measure around: a label and its time in seconds from the engine start.
pub type Mark = (String, f64);

/// What a mark did to writes: over the window from `before_s` before it to `after_s` after it,
/// the slowest put (sent in the window) and the longest time no put completed.
#[derive(Clone, Debug, PartialEq)]
pub struct Stall {
    pub label: String,
    pub at_s: f64,
    pub put_max_ms: f64,
    pub put_gap_ms: f64,
    /// Puts sent in the window.
    pub puts: usize,
}

pub fn stall(rows: &[Row], mark: &Mark, before_s: f64, after_s: f64) -> Stall {
    // The window ends at the run's last completion at the latest (silence after the run
    // ended is not a stall).
    let last = rows
        .iter()
        .map(|r| r.sent_s + r.latency_us / 1e6)
        .fold(f64::MIN, f64::max);
    let (from, to) = (mark.1 - before_s, (mark.1 + after_s).min(last));
    let puts: Vec<&Row> = rows
        .iter()
        .filter(|r| r.op == "put" && r.sent_s >= from && r.sent_s < to)
        .collect();
    let put_max_ms = puts.iter().map(|r| r.latency_us / 1e3).fold(0.0, f64::max);
    // Completions of every put (sent any time) that landed in the window, in order; the gap
    // counts from the window's start and to its end (a stall that outlasts it shows in full
    // up to there).
    let mut done: Vec<f64> = rows
        .iter()
        .filter(|r| r.op == "put" && !r.censored)
        .map(|r| r.sent_s + r.latency_us / 1e6)
        .filter(|&t| t >= from && t < to)
        .collect();
    done.sort_by(f64::total_cmp);
    let mut last = from;
    let mut gap: f64 = 0.0;
    for t in done.iter().copied().chain([to]) {
        gap = gap.max(t - last);
        last = t;
    }
    Stall {
        label: mark.0.clone(),
        at_s: mark.1,
        put_max_ms,
        put_gap_ms: gap * 1e3,
        puts: puts.len(),
    }
}

/// Latency over time, per operation: per bucket of the run (≈ one pixel wide), the median
/// (thick) and the maximum (thin); censored requests as crosses; marks as dashed verticals.
pub fn plot(rows: &[Row], marks: &[Mark], stem: &Path, title: &str) -> Result<(), String> {
    super::suite::draw_both(&TimelinePlot(rows, marks, title), stem)
}

struct TimelinePlot<'a>(&'a [Row], &'a [Mark], &'a str);

impl super::suite::Plot for TimelinePlot<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let (rows, marks, title) = (self.0, self.1, self.2);
        let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(e)?;
        let end_s = rows
            .iter()
            .map(|r| r.sent_s)
            .chain(marks.iter().map(|m| m.1))
            .fold(1.0, f64::max);
        let start_s = rows
            .iter()
            .map(|r| r.sent_s)
            .chain(marks.iter().map(|m| m.1))
            .fold(end_s, f64::min);
        let max_us = rows.iter().map(|r| r.latency_us).fold(10.0, f64::max);
        let min_us = rows
            .iter()
            .map(|r| r.latency_us)
            .fold(max_us, f64::min)
            .max(1.0);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .margin_right(30)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(start_s..end_s, (min_us * 0.8..max_us * 1.5).log_scale())
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the run started (by send time)")
            .y_desc("latency (log scale)")
            .y_label_formatter(&super::suite::latency_label)
            .draw()
            .map_err(e)?;
        let buckets = 600usize;
        let width = ((end_s - start_s) / buckets as f64).max(1e-6);
        let mut ops: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
        ops.sort();
        ops.dedup();
        for (i, op) in ops.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let mut per: Vec<Vec<f64>> = vec![Vec::new(); buckets + 1];
            for r in rows.iter().filter(|r| r.op == *op && !r.censored) {
                let b = (((r.sent_s - start_s) / width) as usize).min(buckets);
                per[b].push(r.latency_us);
            }
            let mut median = Vec::new();
            let mut max = Vec::new();
            for (b, v) in per.iter_mut().enumerate() {
                if v.is_empty() {
                    continue;
                }
                v.sort_by(f64::total_cmp);
                let x = start_s + (b as f64 + 0.5) * width;
                median.push((x, v[v.len() / 2]));
                max.push((x, v[v.len() - 1]));
            }
            chart
                .draw_series(LineSeries::new(median, color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{op} median"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(LineSeries::new(max, color.mix(0.5).stroke_width(1)))
                .map_err(e)?
                .label(format!("{op} max"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.mix(0.5)));
            let censored: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| r.op == *op && r.censored)
                .map(|r| (r.sent_s, r.latency_us))
                .collect();
            if !censored.is_empty() {
                chart
                    .draw_series(
                        censored
                            .into_iter()
                            .map(|p| Cross::new(p, 4, color.filled())),
                    )
                    .map_err(e)?
                    .label(format!("{op} unfinished (waited at least)"))
                    .legend(move |(x, y)| Cross::new((x + 10, y), 4, color.filled()));
            }
        }
        for (i, (label, at)) in marks.iter().enumerate() {
            let color = Palette99::pick(ops.len() + i).to_rgba();
            chart
                .draw_series(DashedLineSeries::new(
                    [(*at, min_us * 0.8), (*at, max_us * 1.5)],
                    6,
                    4,
                    color.stroke_width(2),
                ))
                .map_err(e)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
pub struct TimelineArgs {
    /// A run directory of `mpaxos bench --timeline`.
    pub run: PathBuf,
    /// An event to mark and measure around: `LABEL@SECONDS` (from the engine's start, as on
    /// the plot's x axis) or `LABEL@unix:SECONDS` (wall clock, e.g. `$(date +%s.%N)` taken when
    /// a script killed a replica). Repeatable.
    #[arg(long = "mark", value_name = "LABEL@TIME")]
    pub marks: Vec<String>,
    /// The window measured around each mark: from this many seconds before it...
    #[arg(long, default_value_t = 0.5)]
    pub before_s: f64,
    /// ...to this many seconds after it.
    #[arg(long, default_value_t = 5.0)]
    pub after_s: f64,
}

/// Parses `LABEL@SECONDS` or `LABEL@unix:SECONDS` into a mark on the engine's time axis.
pub fn parse_mark(s: &str, start_unix_ns: u128) -> Result<Mark, String> {
    let (label, at) = s
        .rsplit_once('@')
        .ok_or_else(|| format!("--mark {s:?}: expected LABEL@SECONDS or LABEL@unix:SECONDS"))?;
    let bad = || format!("--mark {s:?}: {at:?} is not a time in seconds");
    let at_s = match at.strip_prefix("unix:") {
        Some(unix) => {
            let unix: f64 = unix.parse().map_err(|_| bad())?;
            unix - start_unix_ns as f64 / 1e9
        }
        None => at.parse().map_err(|_| bad())?,
    };
    if label.is_empty() || !at_s.is_finite() {
        return Err(bad());
    }
    Ok((label.to_string(), at_s))
}

/// `mpaxos bench timeline RUN [--mark LABEL@TIME]...`: redraws `timeline.svg|png` with the
/// marks and prints, per mark, the slowest put and the longest time without a put completing.
pub fn run_timeline(args: TimelineArgs) -> std::process::ExitCode {
    match timeline(&args) {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn timeline(args: &TimelineArgs) -> Result<String, String> {
    let csv = args.run.join("timeline.csv");
    if !csv.is_file() {
        return Err(format!(
            "{} has no timeline.csv (run `mpaxos bench --timeline`)",
            args.run.display()
        ));
    }
    let (start, rows) = read_csv(&csv)?;
    let marks = args
        .marks
        .iter()
        .map(|m| parse_mark(m, start))
        .collect::<Result<Vec<_>, _>>()?;
    let title = std::fs::read_to_string(args.run.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<super::Summary>(&t).ok())
        .map_or_else(
            || "latency over time".into(),
            |s| format!("{}: latency over time", super::report::human_title(&s)),
        );
    plot(&rows, &marks, &args.run.join("timeline"), &title)?;
    let mut out = format!(
        "{} requests; plot: {}\n",
        rows.len(),
        args.run.join("timeline.svg").display()
    );
    for m in &marks {
        let s = stall(&rows, m, args.before_s, args.after_s);
        let _ = writeln!(
            out,
            "mark={:?} at_s={:.3} put_max_ms={:.1} put_gap_ms={:.1} puts={}",
            s.label, s.at_s, s.put_max_ms, s.put_gap_ms, s.puts
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(sent_s: f64, op: &str, latency_ms: f64) -> Row {
        Row {
            sent_s,
            op: op.into(),
            latency_us: latency_ms * 1e3,
            censored: false,
        }
    }

    #[test]
    fn a_stall_is_the_slowest_put_and_the_longest_silence() {
        // Puts every 10 ms, each 1 ms; the one sent at 5.0 s waits 180 ms, and nothing
        // completes between 5.001 and 5.18 s.
        let mut rows: Vec<Row> = (0..1000)
            .map(|i| i as f64 * 0.01)
            .filter(|t| !(5.0..5.18).contains(t))
            .map(|t| row(t, "put", if t == 5.18 { 0.5 } else { 1.0 }))
            .collect();
        rows.push(row(4.995, "put", 185.0));
        rows.push(row(5.05, "get", 1.0));
        let s = stall(&rows, &("kill".into(), 5.0), 0.5, 2.0);
        assert!((s.put_max_ms - 185.0).abs() < 1e-9, "{s:?}");
        // From 4.991 (the last completion before) to 5.18 (the slow put's completion).
        assert!(s.put_gap_ms > 170.0 && s.put_gap_ms < 190.0, "{s:?}");
        // Near the end of the run, the silence after it is not a stall.
        let s = stall(&rows, &("late".into(), 9.9), 0.5, 5.0);
        assert!(s.put_gap_ms < 20.0, "{s:?}");
    }

    #[test]
    fn marks_parse_on_either_clock() {
        assert_eq!(parse_mark("kill 2@5.5", 0).unwrap(), ("kill 2".into(), 5.5));
        let start = 1_700_000_000_000_000_000u128;
        let (l, at) = parse_mark("kill@unix:1700000003.25", start).unwrap();
        assert_eq!(l, "kill");
        assert!((at - 3.25).abs() < 1e-3);
        assert!(parse_mark("kill", 0).is_err());
        assert!(parse_mark("kill@soon", 0).is_err());
    }

    #[test]
    fn the_csv_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("timeline.csv");
        let points = [
            TimelinePoint {
                sent_ns: 2_000_000_000,
                op: "get",
                latency_ns: 300_000,
                censored: false,
            },
            TimelinePoint {
                sent_ns: 1_000_000_000,
                op: "put",
                latency_ns: 1_500_000,
                censored: true,
            },
        ];
        write_csv(&path, 42, &points).unwrap();
        let (start, rows) = read_csv(&path).unwrap();
        assert_eq!(start, 42);
        assert_eq!(
            rows,
            vec![
                Row {
                    sent_s: 1.0,
                    op: "put".into(),
                    latency_us: 1500.0,
                    censored: true
                },
                Row {
                    sent_s: 2.0,
                    op: "get".into(),
                    latency_us: 300.0,
                    censored: false
                },
            ]
        );
        plot(&rows, &[("kill".into(), 1.5)], &dir.path().join("t"), "t").unwrap();
        assert!(dir.path().join("t.png").is_file());
    }
}
