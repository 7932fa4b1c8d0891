//! Latency anatomy, load-generator side (`mpaxos bench --anatomy`): one sampled request in
//! every `--anatomy-every` is sent traced; the serving replica returns the stamps of the
//! stages it went through (`runtime::anatomy`), and here each sample becomes a chain of
//! consecutive stages whose durations add up to the request's latency exactly (the stamps
//! telescope). Aggregated per stage: mean (which add up to the end-to-end mean of the same
//! samples), p50, p99, count. `docs/internals/bench.md` describes the stages.
//!
//! Clocks: the server stamps CLOCK_BOOTTIME; the engine converts its own clock to it, so on one
//! host every stamp is comparable. Across hosts (`same_host` false) only same-host differences
//! are: the two network legs of each hop are reported as one round-trip stage, which is still
//! exact (each leg's clock offset cancels the other's).

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::runtime::anatomy::stamp;

/// Samples kept at most per run (a long fast run at 1 in 16 stops adding past it).
pub const SAMPLES_MAX: usize = 1_000_000;

/// One traced request that succeeded at its first attempt.
#[derive(Clone, Debug)]
pub struct Sample {
    pub op: &'static str,
    /// Open loop: when it was scheduled (the engine's clock converted to the server's);
    /// closed loop: equal to `send`.
    pub scheduled: u64,
    pub send: u64,
    pub recv: u64,
    pub stamps: Vec<u64>,
}

/// One stage's durations over the samples, microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub count: u64,
}

/// Stages in order (serialized as a JSON object in that order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stages(pub Vec<(String, StageStats)>);

impl Stages {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sum of the stage means.
    pub fn mean_sum(&self) -> f64 {
        self.0.iter().map(|(_, s)| s.mean).sum()
    }
}

impl Serialize for Stages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Stages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stages, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stages;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map from stage name to its statistics")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Stages, A::Error> {
                let mut v = Vec::new();
                while let Some((k, s)) = a.next_entry::<String, StageStats>()? {
                    v.push((k, s));
                }
                Ok(Stages(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// What a run's anatomy found (`summary.json`: `anatomy_us`, `anatomy_us_get`,
/// `anatomy_parallel_us`, `anatomy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// One request in this many was traced.
    pub every: u32,
    /// Whether every stamp is on one host's clock (a local cluster, or loopback endpoints).
    pub same_host: bool,
    /// Samples behind `anatomy_us` / `anatomy_us_get`.
    pub samples_put: u64,
    pub samples_get: u64,
    /// Traced requests that succeeded but whose stamps do not form the chain (e.g. a write
    /// answered by a replica that did not propose it: a Fast Paxos fast path).
    pub incomplete: u64,
    /// The end-to-end mean of the sampled requests (= the sum of the stage means), µs.
    pub end_to_end_mean_us_put: f64,
    pub end_to_end_mean_us_get: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Anatomy {
    pub meta: Meta,
    pub put: Stages,
    pub get: Stages,
    /// Stages off the critical chain: the leader's own WAL write, which runs while the Accept
    /// travels (the chain's "leader: until chosen" shows when the leader's disk was the
    /// slower one).
    pub parallel: Stages,
}

impl Anatomy {
    /// No sample formed a chain (nothing to tabulate or plot).
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.get.is_empty()
    }
}

/// (stamp index or a client point, stage name ending at it). `SEND`/`RECV` are the client's.
const SCHEDULED: usize = usize::MAX - 2;
const SEND: usize = usize::MAX - 1;
const CLIENT_RECV: usize = usize::MAX;

const PUT_CHAIN: &[(usize, &str)] = &[
    (SCHEDULED, ""),
    (SEND, "load generator: queue"),
    (stamp::RECV, "client → leader"),
    (stamp::PROPOSED, "leader: batching"),
    (stamp::ACCEPT_SENT, "leader: until Accept sent"),
    (stamp::FOLLOWER_RECV, "leader → follower"),
    (stamp::FOLLOWER_WAL_SUBMITTED, "follower: until WAL write"),
    (stamp::FOLLOWER_WAL_DURABLE, "follower: WAL write + sync"),
    (stamp::FOLLOWER_SENT, "follower: until Accepted sent"),
    (stamp::ACCEPTED_RECV, "follower → leader"),
    (stamp::CHOSEN, "leader: until chosen"),
    (stamp::APPLIED, "leader: apply"),
    (stamp::REPLY_SENT, "leader: until reply sent"),
    (CLIENT_RECV, "leader → client"),
];

/// A single-replica cluster (no followers).
const PUT_CHAIN_SOLO: &[(usize, &str)] = &[
    (SCHEDULED, ""),
    (SEND, "load generator: queue"),
    (stamp::RECV, "client → leader"),
    (stamp::PROPOSED, "leader: batching"),
    (stamp::CHOSEN, "leader: until chosen"),
    (stamp::APPLIED, "leader: apply"),
    (stamp::REPLY_SENT, "leader: until reply sent"),
    (CLIENT_RECV, "leader → client"),
];

const GET_CHAIN: &[(usize, &str)] = &[
    (SCHEDULED, ""),
    (SEND, "load generator: queue"),
    (stamp::RECV, "client → replica"),
    (stamp::READ_READY, "replica: until read confirmed"),
    (stamp::REPLY_SENT, "replica: until reply sent"),
    (CLIENT_RECV, "replica → client"),
];

const PARALLEL: &[(usize, usize, &str)] = &[
    (
        stamp::PROPOSED,
        stamp::LEADER_WAL_SUBMITTED,
        "leader WAL: until write",
    ),
    (
        stamp::LEADER_WAL_SUBMITTED,
        stamp::LEADER_WAL_DURABLE,
        "leader WAL: write + sync",
    ),
];

/// Stages whose ends are on different hosts, merged pairwise when `same_host` is false:
/// (outbound, return, merged name).
const CROSS_HOST: &[(&str, &str, &str)] = &[
    (
        "client → leader",
        "leader → client",
        "client ↔ leader (network, both ways)",
    ),
    (
        "leader → follower",
        "follower → leader",
        "leader ↔ follower (network, both ways)",
    ),
    (
        "client → replica",
        "replica → client",
        "client ↔ replica (network, both ways)",
    ),
];

fn point(s: &Sample, p: usize) -> u64 {
    match p {
        SCHEDULED => s.scheduled,
        SEND => s.send,
        CLIENT_RECV => s.recv,
        i => s.stamps.get(i).copied().unwrap_or(0),
    }
}

/// The sample's stage durations (ns, signed: two clocks may disagree slightly), or None when a
/// stamp of the chain is missing.
fn durations(s: &Sample, chain: &[(usize, &str)], same_host: bool) -> Option<Vec<(String, i64)>> {
    let mut out: Vec<(String, i64)> = Vec::with_capacity(chain.len());
    let mut prev = point(s, chain[0].0);
    for (p, name) in &chain[1..] {
        let t = point(s, *p);
        if t == 0 || prev == 0 {
            return None;
        }
        out.push((name.to_string(), t as i64 - prev as i64));
        prev = t;
    }
    if !same_host {
        for (there, back, merged) in CROSS_HOST {
            let a = out.iter().position(|(n, _)| n == there);
            let b = out.iter().position(|(n, _)| n == back);
            if let (Some(a), Some(b)) = (a, b) {
                let total = out[a].1 + out[b].1;
                out[a] = (merged.to_string(), total);
                out.remove(b);
            }
        }
    }
    Some(out)
}

fn stats(values: &mut [i64]) -> StageStats {
    values.sort_unstable();
    let n = values.len();
    let q = |f: f64| values[((f * n as f64).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
    StageStats {
        mean: values.iter().map(|v| *v as f64).sum::<f64>() / n as f64 / 1e3,
        p50: q(0.5),
        p99: q(0.99),
        count: n as u64,
    }
}

/// Aggregates per-sample chains into per-stage statistics, stages in chain order.
fn aggregate(chains: &[Vec<(String, i64)>]) -> Stages {
    let Some(first) = chains.first() else {
        return Stages::default();
    };
    let mut out = Vec::new();
    for (i, (name, _)) in first.iter().enumerate() {
        let mut v: Vec<i64> = chains.iter().map(|c| c[i].1).collect();
        out.push((name.clone(), stats(&mut v)));
    }
    Stages(out)
}

/// Chains of the samples of `op`: `shape` says which of `candidates` a sample should
/// follow (by the stamps its path could have); the most common chain wins, and samples that do
/// not complete it count as incomplete.
fn chains_of(
    samples: &[Sample],
    op: &str,
    candidates: &[&[(usize, &str)]],
    shape: impl Fn(&Sample) -> usize,
    same_host: bool,
    incomplete: &mut u64,
) -> Vec<Vec<(String, i64)>> {
    let mut by_chain: Vec<Vec<Vec<(String, i64)>>> = vec![Vec::new(); candidates.len()];
    for s in samples.iter().filter(|s| s.op == op) {
        let i = shape(s).min(candidates.len() - 1);
        match durations(s, candidates[i], same_host) {
            Some(d) => by_chain[i].push(d),
            None => *incomplete += 1,
        }
    }
    let best = (0..candidates.len())
        .max_by_key(|i| (by_chain[*i].len(), usize::MAX - i))
        .unwrap_or(0);
    for (i, c) in by_chain.iter().enumerate() {
        if i != best {
            *incomplete += c.len() as u64;
        }
    }
    std::mem::take(&mut by_chain[best])
}

pub fn analyze(samples: &[Sample], every: u32, same_host: bool) -> Anatomy {
    let mut incomplete = 0;
    // A write whose leader sent no Accept to anyone ran on a single replica.
    let solo = |s: &Sample| {
        usize::from(point(s, stamp::ACCEPT_SENT) == 0 && point(s, stamp::FOLLOWER_ID) == 0)
    };
    let puts = chains_of(
        samples,
        "put",
        &[PUT_CHAIN, PUT_CHAIN_SOLO],
        solo,
        same_host,
        &mut incomplete,
    );
    let gets = chains_of(
        samples,
        "get",
        &[GET_CHAIN],
        |_| 0,
        same_host,
        &mut incomplete,
    );
    let e2e = |c: &[Vec<(String, i64)>]| {
        if c.is_empty() {
            return 0.0;
        }
        c.iter()
            .map(|d| d.iter().map(|x| x.1).sum::<i64>() as f64)
            .sum::<f64>()
            / c.len() as f64
            / 1e3
    };
    let mut parallel = Vec::new();
    for (from, to, name) in PARALLEL {
        let mut v: Vec<i64> = samples
            .iter()
            .filter(|s| s.op == "put")
            .filter_map(|s| {
                let (a, b) = (point(s, *from), point(s, *to));
                (a != 0 && b != 0).then(|| b as i64 - a as i64)
            })
            .collect();
        if !v.is_empty() {
            parallel.push((name.to_string(), stats(&mut v)));
        }
    }
    Anatomy {
        meta: Meta {
            every,
            same_host,
            samples_put: puts.len() as u64,
            samples_get: gets.len() as u64,
            incomplete,
            end_to_end_mean_us_put: e2e(&puts),
            end_to_end_mean_us_get: e2e(&gets),
        },
        put: aggregate(&puts),
        get: aggregate(&gets),
        parallel: Stages(parallel),
    }
}

/// A markdown table of one operation's stages.
pub fn table(title: &str, stages: &Stages, e2e: f64, samples: u64) -> String {
    let mut s = format!(
        "{title} ({samples} sampled requests; stage means add up to their mean, {e2e:.1} µs)\n\n"
    );
    s.push_str("| stage | mean µs | p50 µs | p99 µs | share of mean |\n|---|---|---|---|---|\n");
    for (name, st) in &stages.0 {
        let share = if e2e > 0.0 {
            format!("{:.0} %", 100.0 * st.mean / e2e)
        } else {
            "—".into()
        };
        s.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {share} |\n",
            st.mean, st.p50, st.p99
        ));
    }
    s
}

/// The run report's anatomy section (empty without samples).
pub fn markdown(a: &Anatomy) -> String {
    if a.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "\n## Latency anatomy\n\nOne request in {} traced{}; {} traced requests did not form a \
         complete chain and are left out.\n\n",
        a.meta.every,
        if a.meta.same_host {
            ", all stamps on one host's clock"
        } else {
            "; replicas on other hosts, so each network hop is one round-trip stage"
        },
        a.meta.incomplete
    );
    if !a.put.is_empty() {
        s.push_str(&table(
            "Puts",
            &a.put,
            a.meta.end_to_end_mean_us_put,
            a.meta.samples_put,
        ));
        if !a.parallel.is_empty() {
            s.push_str("\nIn parallel with the chain (the leader's own WAL write):\n\n");
            s.push_str("| stage | mean µs | p50 µs | p99 µs |\n|---|---|---|---|\n");
            for (name, st) in &a.parallel.0 {
                s.push_str(&format!(
                    "| {name} | {:.1} | {:.1} | {:.1} |\n",
                    st.mean, st.p50, st.p99
                ));
            }
        }
        s.push('\n');
    }
    if !a.get.is_empty() {
        s.push_str(&table(
            "Gets",
            &a.get,
            a.meta.end_to_end_mean_us_get,
            a.meta.samples_get,
        ));
    }
    s
}

/// The stacked bar plot (`anatomy.svg`/`.png`): one bar per operation, one segment per stage
/// (its mean), in path order.
pub fn plot(a: &Anatomy, stem: &std::path::Path, title: &str) -> Result<(), String> {
    super::suite::draw_both(&BarPlot(a, title), stem)
}

struct BarPlot<'a>(&'a Anatomy, &'a str);
impl super::suite::Plot for BarPlot<'_> {
    fn draw<DB: plotters::prelude::DrawingBackend>(
        &self,
        root: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        use plotters::prelude::*;
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let (a, title) = (self.0, self.1);
        let rows: Vec<(&str, &Stages)> = [("put", &a.put), ("get", &a.get)]
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .collect();
        let x_max = rows
            .iter()
            .map(|(_, s)| s.0.iter().map(|(_, st)| st.mean.max(0.0)).sum::<f64>())
            .fold(1.0, f64::max)
            * 1.05;
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..rows.len() as f64)
            .map_err(|e| err(&e))?;
        let labels: Vec<String> = rows.iter().map(|(op, _)| op.to_string()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc("mean latency, µs (stages in path order)")
            .y_labels(rows.len() * 2 + 1)
            .y_label_formatter(&|y| {
                let i = y.floor() as usize;
                if (y - i as f64 - 0.5).abs() < 0.01 && i < labels.len() {
                    labels[i].clone()
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(|e| err(&e))?;
        // One colour per stage name, shared by the bars.
        let mut names: Vec<&str> = Vec::new();
        for (_, st) in &rows {
            for (n, _) in &st.0 {
                if !names.contains(&n.as_str()) {
                    names.push(n);
                }
            }
        }
        for (ci, name) in names.iter().enumerate() {
            let color = Palette99::pick(ci).to_rgba();
            let mut rects = Vec::new();
            for (ri, (_, st)) in rows.iter().enumerate() {
                let mut x = 0.0;
                for (n, s) in &st.0 {
                    let w = s.mean.max(0.0);
                    if n == name && w > 0.0 {
                        let y = ri as f64;
                        rects.push(Rectangle::new(
                            [(x, y + 0.2), (x + w, y + 0.8)],
                            color.filled(),
                        ));
                    }
                    x += w;
                }
            }
            chart
                .draw_series(rects)
                .map_err(|e| err(&e))?
                .label(name.to_string())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| err(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(base: u64, follower: bool) -> Sample {
        let mut st = vec![0; stamp::COUNT];
        st[stamp::RECV] = base + 30;
        st[stamp::PROPOSED] = base + 40;
        st[stamp::LEADER_WAL_SUBMITTED] = base + 45;
        st[stamp::LEADER_WAL_DURABLE] = base + 200;
        if follower {
            st[stamp::ACCEPT_SENT] = base + 50;
            st[stamp::FOLLOWER_RECV] = base + 80;
            st[stamp::FOLLOWER_WAL_SUBMITTED] = base + 85;
            st[stamp::FOLLOWER_WAL_DURABLE] = base + 240;
            st[stamp::FOLLOWER_SENT] = base + 245;
            st[stamp::ACCEPTED_RECV] = base + 275;
            st[stamp::FOLLOWER_ID] = 2;
        }
        st[stamp::CHOSEN] = base + 280;
        st[stamp::APPLIED] = base + 290;
        st[stamp::REPLY_SENT] = base + 300;
        Sample {
            op: "put",
            scheduled: base,
            send: base,
            recv: base + 330,
            stamps: st,
        }
    }

    #[test]
    fn stage_means_add_up_to_the_end_to_end_mean() {
        let samples: Vec<Sample> = (0..10).map(|i| put(1_000_000 * (i + 1), true)).collect();
        for same_host in [true, false] {
            let a = analyze(&samples, 16, same_host);
            assert_eq!(a.meta.samples_put, 10);
            assert!((a.put.mean_sum() - a.meta.end_to_end_mean_us_put).abs() < 1e-9);
            assert!((a.meta.end_to_end_mean_us_put - 0.33).abs() < 1e-9);
            let names: Vec<&str> = a.put.0.iter().map(|(n, _)| n.as_str()).collect();
            if same_host {
                assert_eq!(names[1], "client → leader");
                assert_eq!(names.len(), PUT_CHAIN.len() - 1);
            } else {
                assert_eq!(names[1], "client ↔ leader (network, both ways)");
                assert!(!names.contains(&"leader → client"));
                assert_eq!(names.len(), PUT_CHAIN.len() - 3);
            }
        }
    }

    #[test]
    fn a_sample_with_a_missing_stamp_is_incomplete() {
        let mut bad = put(5_000, true);
        bad.stamps[stamp::FOLLOWER_WAL_DURABLE] = 0;
        let samples = vec![put(1_000, true), bad, put(9_000, true), put(20_000, false)];
        let a = analyze(&samples, 1, true);
        // The one missing a follower stamp is not taken for a single-replica write, and the
        // single-replica one is in the minority.
        assert_eq!(a.meta.samples_put, 2);
        assert_eq!(a.meta.incomplete, 2);
        assert_eq!(a.parallel.0.len(), 2);
        assert!((a.parallel.0[1].1.mean - 0.155).abs() < 1e-9);
        let solo = analyze(&[put(1_000, false)], 1, true);
        assert_eq!(solo.meta.samples_put, 1);
        assert_eq!(solo.put.0.len(), PUT_CHAIN_SOLO.len() - 1);
    }

    #[test]
    fn stages_serialize_in_order() {
        let a = analyze(&[put(1_000, true)], 1, true);
        let json = serde_json::to_string(&a.put).unwrap();
        let load = json.find("load generator").unwrap();
        let client = json.find("client → leader").unwrap();
        let reply = json.find("leader → client").unwrap();
        assert!(load < client && client < reply);
        let back: Stages = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a.put);
    }
}
