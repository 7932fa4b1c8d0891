//! A run's outputs: histograms (`.hgrm`, interval log), `summary.json`, `summary.csv`,
//! `report.md`, a latency CDF plot, and the table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::engine::EngineResult;
use super::stats::{write_hgrm, Percentiles};
use super::{BenchSpec, Summary};

/// Achieved rate below this fraction of the target flags an open-loop run (DESIGN §10).
pub const RATE_FLAG_FRACTION: f64 = 0.95;

pub fn write_run(
    spec: &BenchSpec,
    run_dir: &Path,
    result: EngineResult,
    floor_rtt: Percentiles,
    floor_sync: Percentiles,
    wal_backend: String,
    peer_links: Vec<super::PeerLinkRtt>,
) -> Result<Summary, String> {
    let io = |e: std::io::Error| format!("writing the run directory: {e}");
    let hist_dir = run_dir.join("histograms");
    std::fs::create_dir_all(&hist_dir).map_err(io)?;
    let rec = &result.recorder;
    for (k, h) in &rec.series {
        write_hgrm(h, &hist_dir.join(format!("{}.hgrm", k.file_stem()))).map_err(io)?;
    }
    let mut latency_us = BTreeMap::new();
    for op in rec.ops() {
        let h = rec.merged(|k| k.op == op);
        write_hgrm(&h, &hist_dir.join(format!("{op}-all.hgrm"))).map_err(io)?;
        latency_us.insert(op.clone(), Percentiles::of(&h));
    }
    let all = rec.merged(|_| true);
    latency_us.insert("all".to_string(), Percentiles::of(&all));
    let mut by_region = BTreeMap::new();
    for region in rec.regions() {
        let mut m = BTreeMap::new();
        for op in rec.ops() {
            m.insert(
                op.clone(),
                Percentiles::of(&rec.merged(|k| k.op == op && k.region == region)),
            );
        }
        by_region.insert(region, m);
    }
    result
        .intervals
        .write(&run_dir.join("intervals.hlog"), result.started)
        .map_err(io)?;

    let throughput = result.completed as f64 / result.measured_s;
    let mut flag_reasons = Vec::new();
    if let Some(rate) = spec.rate {
        if throughput < RATE_FLAG_FRACTION * rate {
            flag_reasons.push(format!(
                "achieved {throughput:.0} ops/s is under 95% of the target {rate:.0} ops/s"
            ));
        }
    }
    if result.unfinished > 0 {
        flag_reasons.push(format!(
            "{} measured requests never completed",
            result.unfinished
        ));
    }
    if result.errors > 0 {
        flag_reasons.push(format!("{} requests ended in an error", result.errors));
    }
    if result.completed == 0 {
        flag_reasons.push("no request completed in the measured window".into());
    }
    let write_floor_us = 2.0 * floor_rtt.p50 + floor_sync.p50;
    let write_p50_over_floor = latency_us
        .get("put")
        .filter(|p| p.count > 0)
        .map(|p| p.p50 / write_floor_us);
    let read_p50_over_floor = latency_us
        .get("get")
        .filter(|p| p.count > 0)
        .map(|p| p.p50 / floor_rtt.p50);
    let summary = Summary {
        run_dir: run_dir.to_path_buf(),
        label: spec.label.clone(),
        throughput_ops_s: throughput,
        latency_us,
        latency_us_by_region: by_region,
        floor_rtt_us: floor_rtt.p50,
        floor_sync_write_us: floor_sync.p50,
        write_p50_over_floor,
        read_p50_over_floor,
        completed: result.completed,
        unfinished: result.unfinished,
        errors: result.errors,
        retries: result.retries,
        redirects: result.redirects,
        timeouts: result.timeouts,
        target_rate_ops_s: spec.rate,
        flagged: !flag_reasons.is_empty(),
        flag_reasons,
        leaders: result.leaders,
        wal_backend,
        links: result.links,
        peer_links,
        config: spec.clone(),
        started_unix_s: result
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    std::fs::write(
        run_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("json"),
    )
    .map_err(io)?;
    std::fs::write(
        run_dir.join("summary.csv"),
        csv_header().to_string() + "\n" + &csv_row(&summary) + "\n",
    )
    .map_err(io)?;
    std::fs::write(run_dir.join("report.md"), markdown(&summary)).map_err(io)?;
    let series: Vec<(String, hdrhistogram::Histogram<u64>)> = rec
        .ops()
        .into_iter()
        .map(|op| {
            let h = rec.merged(|k| k.op == op);
            (op, h)
        })
        .collect();
    if let Err(e) =
        super::suite::plot_cdf(&series, &run_dir.join("latency-cdf"), &spec.slug(), false)
    {
        tracing::warn!("could not draw the latency CDF: {e}");
    }
    Ok(summary)
}

pub fn csv_header() -> &'static str {
    "label,replicas,groups,placement,durability,clients,outstanding,rate,read_ratio,value_size,batch_max_ops,batch_delay_us,pipeline_depth,throughput_ops_s,op,count,p50_us,p90_us,p99_us,p999_us,max_us,floor_rtt_us,floor_sync_write_us,flagged,run_dir"
}

/// One line per operation (`all` included).
pub fn csv_row(s: &Summary) -> String {
    let c = &s.config;
    let place = c
        .placement
        .as_ref()
        .and_then(|p| p.file_stem())
        .map_or("lan".to_string(), |x| x.to_string_lossy().to_string());
    s.latency_us
        .iter()
        .map(|(op, p)| {
            format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{},{}",
                c.label,
                c.replicas,
                c.groups,
                place,
                c.durability,
                c.clients,
                c.outstanding,
                c.rate.map_or(String::new(), |r| r.to_string()),
                c.read_ratio,
                c.value_size,
                c.batch_max_ops,
                c.batch_delay_us,
                c.pipeline_depth,
                s.throughput_ops_s,
                op,
                p.count,
                p.p50,
                p.p90,
                p.p99,
                p.p999,
                p.max,
                s.floor_rtt_us,
                s.floor_sync_write_us,
                s.flagged,
                s.run_dir.display()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table printed at the end of `mpaxos bench`.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let c = &s.config;
    let load = match c.rate {
        Some(r) => format!("open loop {r:.0} ops/s ({})", c.arrival),
        None => format!(
            "closed loop, {} clients x {} outstanding",
            c.clients, c.outstanding
        ),
    };
    let _ = writeln!(
        out,
        "\nmpaxos bench: {} replicas, {} group(s), WAL {} ({}), {}, {:.0}% reads, {} B values, {} keys {}",
        c.replicas,
        c.groups,
        c.durability,
        s.wal_backend,
        load,
        c.read_ratio * 100.0,
        c.value_size,
        c.keys,
        c.key_dist
    );
    let _ = writeln!(
        out,
        "measured {:.1} s after {:.1} s warm-up: {} requests, {:.0} ops/s, {} retries, {} redirects",
        c.duration, c.warmup, s.completed, s.throughput_ops_s, s.retries, s.redirects
    );
    let _ = writeln!(
        out,
        "\n{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "op", "count", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "mean us"
    );
    for (op, p) in &s.latency_us {
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            op, p.count, p.p50, p.p90, p.p99, p.p999, p.max, p.mean
        );
    }
    if s.latency_us_by_region.len() > 1 {
        let _ = writeln!(out, "\nper client region (p50 / p99 us):");
        for (region, ops) in &s.latency_us_by_region {
            let cells: Vec<String> = ops
                .iter()
                .map(|(op, p)| format!("{op} {:.0} / {:.0}", p.p50, p.p99))
                .collect();
            let _ = writeln!(out, "  {region:<16} {}", cells.join("   "));
        }
    }
    let _ = writeln!(
        out,
        "\nphysical floor (same run): loopback round trip p50 {:.1} us, 4 KiB O_DIRECT write+datasync p50 {:.1} us",
        s.floor_rtt_us, s.floor_sync_write_us
    );
    if c.endpoints.is_some() {
        let _ = writeln!(
            out,
            "  (measured on the load generator's host: against remote replicas the ratios below are only indicative)"
        );
    }
    if let Some(r) = s.write_p50_over_floor {
        let _ = writeln!(
            out,
            "  write p50 / (2 x RTT + sync write) = {r:.2}   (target <= 1.5 for 1 client on loopback)"
        );
    }
    if let Some(r) = s.read_p50_over_floor {
        let _ = writeln!(
            out,
            "  read  p50 / RTT                    = {r:.2}   (target <= 3 for 1 client on loopback)"
        );
    }
    if !s.links.is_empty() && s.links.iter().any(|l| l.configured_rtt_ms > 0.0) {
        let _ = writeln!(
            out,
            "\nemulated links (client region -> replica): configured vs measured RTT ms"
        );
        for l in &s.links {
            let _ = writeln!(
                out,
                "  {:<16} -> {} ({:<16}) {:>8.1} {:>8.1}",
                l.client_region,
                l.replica,
                l.replica_region,
                l.configured_rtt_ms,
                l.measured_rtt_ms_p50
            );
        }
    }
    if s.peer_links.iter().any(|l| l.configured_rtt_ms > 0.0) {
        let _ = writeln!(
            out,
            "\nemulated links (replica -> replica, heartbeats): configured vs measured mean RTT ms"
        );
        for l in &s.peer_links {
            let _ = writeln!(
                out,
                "  {} ({:<16}) -> {} ({:<16}) {:>8.1} {:>8.1}",
                l.from,
                l.from_region,
                l.to,
                l.to_region,
                l.configured_rtt_ms,
                l.measured_rtt_ms_mean
            );
        }
    }
    if s.flagged {
        let _ = writeln!(out, "\nFLAGGED: {}", s.flag_reasons.join("; "));
    }
    let _ = writeln!(out, "\nrun directory: {}", s.run_dir.display());
    out
}

pub fn markdown(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# mpaxos bench run\n");
    let _ = writeln!(out, "```\n{}```\n", table(s));
    let _ = writeln!(
        out,
        "Histograms: `histograms/*.hgrm` (per operation, client region and path; `*-all` merged); interval log: `intervals.hlog`; the exact commands: `commands.txt`; replica logs: `logs/`.\n"
    );
    let _ = writeln!(out, "![latency CDF](latency-cdf.svg)");
    out
}
