//! Honest statistics (architecture §10): HdrHistograms per (operation, client region, path), merged
//! before any percentile is taken, `.hgrm` percentile files and interval logs.
//!
//! Latencies are recorded in nanoseconds and reported in microseconds.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds: 10 minutes.
pub(crate) const LATENCY_NS_MAX: u64 = 600_000_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// Which histogram a sample belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct SeriesKey {
    pub op: String,
    pub region: String,
    /// How the request was served: `leader` (today every request), later `lease-local`,
    /// `fast`, `classic`.
    pub path: String,
}

impl SeriesKey {
    pub fn file_stem(&self) -> String {
        format!("{}-{}-{}", self.op, self.region, self.path)
    }
}

/// Every series of one run (or the merge of several engine threads).
#[derive(Clone, Default)]
pub struct Recorder {
    pub series: BTreeMap<SeriesKey, Histogram<u64>>,
}

impl Recorder {
    pub fn record(&mut self, key: &SeriesKey, latency_ns: u64) {
        let h = match self.series.get_mut(key) {
            Some(h) => h,
            None => self.series.entry(key.clone()).or_insert_with(new_histogram),
        };
        h.saturating_record(latency_ns.clamp(1, LATENCY_NS_MAX));
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (k, h) in &other.series {
            match self.series.get_mut(k) {
                Some(mine) => mine.add(h).expect("same bounds"),
                None => {
                    self.series.insert(k.clone(), h.clone());
                }
            }
        }
    }

    /// Merges every series matching `keep` into one histogram.
    pub fn merged(&self, keep: impl Fn(&SeriesKey) -> bool) -> Histogram<u64> {
        let mut out = new_histogram();
        for (k, h) in &self.series {
            if keep(k) {
                out.add(h).expect("same bounds");
            }
        }
        out
    }

    pub fn ops(&self) -> Vec<String> {
        let mut ops: Vec<String> = self.series.keys().map(|k| k.op.clone()).collect();
        ops.dedup();
        ops.sort();
        ops.dedup();
        ops
    }

    pub fn regions(&self) -> Vec<String> {
        let mut r: Vec<String> = self.series.keys().map(|k| k.region.clone()).collect();
        r.sort();
        r.dedup();
        r
    }
}

/// Percentiles of one histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    /// How many of `count` are censored: requests unfinished when the run ended, recorded at
    /// the time they had waited by then.
    #[serde(default)]
    pub censored: u64,
    /// The statistics that are only lower bounds because of censored values: every percentile
    /// at or above the smallest censored value, `max`, and `mean` (names as in this struct).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lower_bounds: Vec<String>,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            censored: 0,
            lower_bounds: Vec::new(),
        }
    }

    /// Percentiles of completed latencies and censored ones together; the statistics a
    /// censored value can have moved are named in `lower_bounds`.
    pub fn censored(done: &Histogram<u64>, censored: &Histogram<u64>) -> Percentiles {
        if censored.is_empty() {
            return Percentiles::of(done);
        }
        let mut all = done.clone();
        all.add(censored).expect("same bounds");
        let mut p = Percentiles::of(&all);
        p.censored = censored.len();
        let min = censored.min() as f64 / 1000.0;
        let mut lb = vec!["mean".to_string()];
        for (name, v) in [
            ("p50", p.p50),
            ("p90", p.p90),
            ("p99", p.p99),
            ("p999", p.p999),
            ("max", p.max),
        ] {
            // Histogram buckets are 0.1% wide: compare with that slack.
            if v >= min * 0.999 {
                lb.push(name.to_string());
            }
        }
        p.lower_bounds = lb;
        p
    }

    /// `v` formatted with one decimal, prefixed `>=` when it is a lower bound.
    pub fn show(&self, name: &str, v: f64) -> String {
        if self.lower_bounds.iter().any(|n| n == name) {
            format!(">={v:.1}")
        } else {
            format!("{v:.1}")
        }
    }
}

/// The true median (the mean of the two middle values for an even count); `None` when empty.
/// NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Smallest and largest value (NaNs ignored).
pub fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// Writes `h` as an HdrHistogram percentile distribution (`.hgrm`, values in microseconds),
/// the format HdrHistogram's plotter reads.
pub fn write_hgrm(h: &Histogram<u64>, path: &Path) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let inv = if q < 1.0 {
                format!("{:>14.2}", 1.0 / (1.0 - q))
            } else {
                format!("{:>14}", "")
            };
            writeln!(
                f,
                "{:>12.3} {:>2.12} {:>10} {}",
                v.value_iterated_to() as f64 / 1000.0,
                q,
                v.count_since_last_iteration(),
                inv
            )?;
        }
    }
    writeln!(
        f,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    )?;
    writeln!(
        f,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    )?;
    writeln!(
        f,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    )?;
    f.flush()
}

/// Interval histograms (one per second per operation) in HdrHistogram's interval log format.
pub struct IntervalLog {
    intervals: Vec<(
        String,
        std::time::Duration,
        std::time::Duration,
        Histogram<u64>,
    )>,
}

impl Default for IntervalLog {
    fn default() -> Self {
        Self::new()
    }
}

impl IntervalLog {
    pub fn new() -> IntervalLog {
        IntervalLog {
            intervals: Vec::new(),
        }
    }

    pub fn push(
        &mut self,
        tag: &str,
        start: std::time::Duration,
        length: std::time::Duration,
        h: Histogram<u64>,
    ) {
        self.intervals.push((tag.to_string(), start, length, h));
    }

    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    pub fn write(&self, path: &Path, start_time: std::time::SystemTime) -> std::io::Result<()> {
        use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
        use hdrhistogram::serialization::V2DeflateSerializer;
        let mut buf = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .add_comment("mpaxos bench: latency in nanoseconds (max divided by 1000 = us)")
                .with_start_time(start_time)
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut buf, &mut ser)?;
            for (tag, start, len, h) in &self.intervals {
                w.write_histogram(h, *start, *len, Tag::new(tag))
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            }
        }
        std::fs::write(path, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        // 1..=10_000 us, uniform: p50 = 5000, p99 = 9900, max = 10000.
        let mut r = Recorder::default();
        let k = SeriesKey {
            op: "put".into(),
            region: "a".into(),
            path: "leader".into(),
        };
        for us in 1..=10_000u64 {
            r.record(&k, us * 1000);
        }
        let p = Percentiles::of(&r.merged(|_| true));
        assert_eq!(p.count, 10_000);
        let close = |got: f64, want: f64| (got - want).abs() / want < 0.002;
        assert!(close(p.p50, 5000.0), "p50 {}", p.p50);
        assert!(close(p.p90, 9000.0), "p90 {}", p.p90);
        assert!(close(p.p99, 9900.0), "p99 {}", p.p99);
        assert!(close(p.p999, 9990.0), "p999 {}", p.p999);
        assert!(close(p.max, 10_000.0), "max {}", p.max);
        assert!(close(p.mean, 5000.5), "mean {}", p.mean);
    }

    #[test]
    fn median_of_two_is_their_mean() {
        // `v[len / 2]` of two repeats is the larger one.
        assert_eq!(median(&[100.0, 300.0]), Some(200.0));
        assert_eq!(median(&[300.0, 100.0, 200.0]), Some(200.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(spread(&[3.0, 1.0, 2.0]), Some((1.0, 3.0)));
    }

    #[test]
    fn censored_values_make_lower_bounds() {
        // 98 completed at 1 ms, 2 unfinished that had waited 5 s: p99 and max come from the
        // censored values and are lower bounds; p50 is not.
        let mut done = new_histogram();
        let mut cens = new_histogram();
        for _ in 0..98 {
            done.record(1_000_000).unwrap();
        }
        cens.record(5_000_000_000).unwrap();
        cens.record(5_000_000_000).unwrap();
        let p = Percentiles::censored(&done, &cens);
        assert_eq!(p.count, 100);
        assert_eq!(p.censored, 2);
        assert!(p.p99 >= 4_990_000.0, "p99 {}", p.p99);
        assert!(p.lower_bounds.contains(&"p99".to_string()));
        assert!(p.lower_bounds.contains(&"max".to_string()));
        assert!(!p.lower_bounds.contains(&"p50".to_string()));
        assert!(p.show("p99", p.p99).starts_with(">="));
        assert!(!p.show("p50", p.p50).starts_with(">="));
        // Without censored values nothing is a lower bound.
        assert!(Percentiles::censored(&done, &new_histogram())
            .lower_bounds
            .is_empty());
    }

    #[test]
    fn merging_is_not_averaging() {
        // Two regions: one fast (all 100 us), one slow (all 10 ms), equal counts. The merged
        // p99 is the slow region's, not the average of the two p99s.
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        let ka = SeriesKey {
            op: "get".into(),
            region: "fast".into(),
            path: "leader".into(),
        };
        let kb = SeriesKey {
            region: "slow".into(),
            ..ka.clone()
        };
        for _ in 0..1000 {
            a.record(&ka, 100_000);
            b.record(&kb, 10_000_000);
        }
        a.merge(&b);
        let all = Percentiles::of(&a.merged(|k| k.op == "get"));
        assert!((all.p99 - 10_000.0).abs() < 10.0, "{}", all.p99);
        assert!((all.p50 - 100.0).abs() < 1.0 || (all.p50 - 10_000.0).abs() < 10.0);
        assert_eq!(all.count, 2000);
        let fast = Percentiles::of(&a.merged(|k| k.region == "fast"));
        assert!((fast.p99 - 100.0).abs() < 1.0);
    }

    #[test]
    fn hgrm_and_interval_log_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = new_histogram();
        for v in 1..1000u64 {
            h.record(v * 1000).unwrap();
        }
        write_hgrm(&h, &dir.path().join("x.hgrm")).unwrap();
        let text = std::fs::read_to_string(dir.path().join("x.hgrm")).unwrap();
        assert!(text.contains("Total count    =          999"), "{text}");
        let mut log = IntervalLog::new();
        log.push(
            "put",
            std::time::Duration::from_secs(0),
            std::time::Duration::from_secs(1),
            h,
        );
        log.write(&dir.path().join("x.hlog"), std::time::SystemTime::now())
            .unwrap();
        let bytes = std::fs::read(dir.path().join("x.hlog")).unwrap();
        let n = hdrhistogram::serialization::interval_log::IntervalLogIterator::new(&bytes)
            .filter(|e| {
                matches!(
                    e,
                    Ok(hdrhistogram::serialization::interval_log::LogEntry::Interval(_))
                )
            })
            .count();
        assert_eq!(n, 1);
    }
}
