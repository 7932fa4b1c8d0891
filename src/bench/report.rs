//! A run's outputs: histograms (`.hgrm`, interval log), `summary.json`, `summary.csv`,
//! `report.md` and `report.html`, the latency plots, and the table printed at the end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::engine::{EngineResult, SEND_LAG_P99_FLAG_US};
use super::stats::{median, spread, write_hgrm, Percentiles};
use super::{BenchSpec, Floors, Summary};

/// Achieved rate below this fraction of the target flags an open-loop run (architecture §10).
pub const RATE_FLAG_FRACTION: f64 = 0.95;

/// An open-loop run is flagged when its queue (scheduled, not completed) grew over the window
/// by more than this many requests or this fraction of the requests offered in it, whichever
/// is larger: the system did not keep up, and a longer run would show higher latencies.
pub const QUEUE_GROWTH_FLAG_MIN: u64 = 10;
pub const QUEUE_GROWTH_FLAG_FRACTION: f64 = 0.02;

/// Why a run is flagged (empty: not flagged). Every rule of `docs/internals/bench.md`.
pub fn flag_reasons(s: &Summary) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(rate) = s.config.rate {
        if s.throughput_ops_s < RATE_FLAG_FRACTION * rate {
            out.push(format!(
                "achieved {:.0} ops/s is under 95% of the target {rate:.0} ops/s",
                s.throughput_ops_s
            ));
        }
        if let (Some(first), Some(last)) = (s.queue_samples.first(), s.queue_samples.last()) {
            let offered = s.offered_ops_s.unwrap_or(rate) * s.elapsed_s;
            let bound = (QUEUE_GROWTH_FLAG_FRACTION * offered).max(QUEUE_GROWTH_FLAG_MIN as f64);
            if *last as f64 - *first as f64 > bound {
                out.push(format!(
                    "the backlog grew from {first} to {last} requests over the window"
                ));
            }
        }
    }
    // Open loop only: there latency counts from the schedule, so lateness is charged to the
    // system. In the closed loop latency counts from the actual send; a late send there only
    // means the load generator was the bottleneck (reported, not flagged).
    if s.config.rate.is_some()
        && s.send_lag_us.count > 0
        && s.send_lag_us.p99 > SEND_LAG_P99_FLAG_US
    {
        out.push(format!(
            "send lag p99 {:.0} us is over {SEND_LAG_P99_FLAG_US:.0} us: the load generator did not keep its schedule",
            s.send_lag_us.p99
        ));
    }
    if s.unfinished > 0 {
        out.push(format!(
            "{} measured requests never completed (censored in the percentiles)",
            s.unfinished
        ));
    }
    if s.errors > 0 {
        let kinds: Vec<String> = s
            .errors_by_kind
            .iter()
            .filter(|(k, _)| !super::engine::kind::is_unfinished(k))
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push(format!(
            "{} requests ended in an error ({})",
            s.errors,
            kinds.join(", ")
        ));
    }
    if s.completed == 0 {
        out.push("no request completed in the measured window".into());
    }
    out
}

pub fn write_run(
    spec: &BenchSpec,
    run_dir: &Path,
    result: EngineResult,
    floors: Floors,
    wal_backend: String,
    peer_links: Vec<super::PeerLinkRtt>,
    (counts, cpu): (super::ProtocolCounts, Option<super::cpu::CpuReport>),
) -> Result<Summary, String> {
    let io = |e: std::io::Error| format!("writing the run directory: {e}");
    let hist_dir = run_dir.join("histograms");
    std::fs::create_dir_all(&hist_dir).map_err(io)?;
    let rec = &result.recorder;
    let cens = &result.censored;
    for (k, h) in &rec.series {
        write_hgrm(h, &hist_dir.join(format!("{}.hgrm", k.file_stem()))).map_err(io)?;
    }
    if !cens.series.is_empty() {
        write_hgrm(&cens.merged(|_| true), &hist_dir.join("censored-all.hgrm")).map_err(io)?;
    }
    write_hgrm(&result.send_lag, &hist_dir.join("send-lag.hgrm")).map_err(io)?;
    let mut ops = rec.ops();
    ops.extend(cens.ops().into_iter().filter(|o| o != "unsent"));
    ops.sort();
    ops.dedup();
    // Percentiles include censored values (unfinished requests at the time they had waited);
    // the `.hgrm` files hold completed requests only, plus `censored-all.hgrm`.
    let mut latency_us = BTreeMap::new();
    for op in &ops {
        let h = rec.merged(|k| k.op == *op);
        write_hgrm(&h, &hist_dir.join(format!("{op}-all.hgrm"))).map_err(io)?;
        latency_us.insert(
            op.clone(),
            Percentiles::censored(&h, &cens.merged(|k| k.op == *op)),
        );
    }
    let all = rec.merged(|_| true);
    latency_us.insert(
        "all".to_string(),
        Percentiles::censored(&all, &cens.merged(|_| true)),
    );
    let mut by_region = BTreeMap::new();
    for region in rec.regions() {
        let mut m = BTreeMap::new();
        for op in &ops {
            m.insert(
                op.clone(),
                Percentiles::censored(
                    &rec.merged(|k| k.op == *op && k.region == region),
                    &cens.merged(|k| k.op == *op && k.region == region),
                ),
            );
        }
        by_region.insert(region, m);
    }
    // Per client region, the share of completed reads its nearest replica answered itself.
    let mut local_read_share_by_region = BTreeMap::new();
    for region in rec.regions() {
        let reads = rec.merged(|k| k.op == "get" && k.region == region).len();
        if reads > 0 {
            let local = rec
                .merged(|k| k.op == "get" && k.region == region && k.path == "local")
                .len();
            local_read_share_by_region.insert(region, local as f64 / reads as f64);
        }
    }
    result
        .intervals
        .write(&run_dir.join("intervals.hlog"), result.started)
        .map_err(io)?;

    let elapsed_s = if result.elapsed_s > 0.0 {
        result.elapsed_s
    } else {
        result.measured_s
    };
    let throughput = result.completed_in_window as f64 / elapsed_s;
    let floor_rtt_us_samples = floors.rtt_samples();
    let floor_sync_write_us_samples = floors.sync_samples();
    let floor_rtt_us = median(&floor_rtt_us_samples).unwrap_or(f64::NAN);
    let floor_sync_write_us = median(&floor_sync_write_us_samples).unwrap_or(f64::NAN);
    let write_floor_us = 2.0 * floor_rtt_us + floor_sync_write_us;
    let write_p50_over_floor = latency_us
        .get("put")
        .filter(|p| p.count > 0)
        .map(|p| p.p50 / write_floor_us);
    let floor_sync_write_shared_us_samples = floors.sync_shared_samples();
    let floor_sync_write_shared_us = median(&floor_sync_write_shared_us_samples);
    let write_p50_over_shared_floor = floor_sync_write_shared_us.and_then(|shared| {
        latency_us
            .get("put")
            .filter(|p| p.count > 0)
            .map(|p| p.p50 / (2.0 * floor_rtt_us + shared))
    });
    let read_p50_over_floor = latency_us
        .get("get")
        .filter(|p| p.count > 0)
        .map(|p| p.p50 / floor_rtt_us);
    let mut summary = Summary {
        run_dir: relative_to(run_dir, &std::env::current_dir().unwrap_or_default()),
        label: spec.label.clone(),
        throughput_ops_s: throughput,
        latency_us,
        latency_us_by_region: by_region,
        local_read_share_by_region,
        floor_rtt_us,
        floor_sync_write_us,
        write_p50_over_floor,
        read_p50_over_floor,
        completed: result.completed,
        unfinished: result.unfinished,
        errors: result.errors,
        retries: result.retries,
        redirects: result.redirects,
        timeouts: result.timeouts,
        target_rate_ops_s: spec.rate,
        flagged: false,
        flag_reasons: Vec::new(),
        leaders: result.leaders,
        wal_backend,
        links: result.links,
        peer_links,
        protocol: spec.protocol,
        fast_chosen: counts.fast_chosen,
        classic_chosen: counts.classic_chosen,
        collisions: counts.collisions,
        config: spec.clone(),
        started_unix_s: result
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        send_lag_us: Percentiles::of(&result.send_lag),
        completed_in_window: result.completed_in_window,
        elapsed_s,
        offered_ops_s: spec.rate.map(|_| result.offered as f64 / elapsed_s),
        queue_samples: result.queue_samples,
        errors_by_kind: result.errors_by_kind,
        retries_by_kind: result.retries_by_kind,
        client_id_nonce: result.client_id_nonce,
        client_ids: result.client_ids,
        floor_rtt_us_samples,
        floor_sync_write_us_samples,
        floor_sync_write_dir: relative_to(&floors.sync_dir, run_dir),
        floor_sync_write_on_wal_disk: floors.sync_on_wal_disk,
        floor_sync_write_shared_us,
        floor_sync_write_shared_us_samples,
        floor_sync_write_shared_writers: floor_sync_write_shared_us
            .map(|_| floors.shared_writers as u32),
        write_p50_over_shared_floor,
        floor_grpc_rtt_us: median(&floors.grpc_samples()),
        floor_grpc_rtt_us_samples: floors.grpc_samples(),
        floor_rtt_us_under_load_samples: floors.rtt_under_load_samples(),
        anatomy_us: Default::default(),
        anatomy_us_get: Default::default(),
        anatomy_parallel_us: Default::default(),
        anatomy: None,
        cpu,
    };
    if spec.anatomy {
        let a = super::anatomy::analyze(&result.anatomy, spec.anatomy_every, same_host(spec));
        summary.anatomy_us = a.put;
        summary.anatomy_us_get = a.get;
        summary.anatomy_parallel_us = a.parallel;
        summary.anatomy = Some(a.meta);
    }
    summary.flag_reasons = flag_reasons(&summary);
    summary.flagged = !summary.flag_reasons.is_empty();
    let summary = summary;
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
    if let Err(e) = super::suite::plot_cdf(
        &series,
        &run_dir.join("latency-cdf"),
        &human_title(&summary),
        true,
    ) {
        tracing::warn!("could not draw the latency CDF: {e}");
    }
    let mut floors = Vec::new();
    if summary.floor_rtt_us.is_finite() && summary.floor_sync_write_us.is_finite() {
        floors.push((
            format!(
                "write floor: 2 x RTT + sync write = {:.0} us",
                2.0 * summary.floor_rtt_us + summary.floor_sync_write_us
            ),
            2.0 * summary.floor_rtt_us + summary.floor_sync_write_us,
        ));
    }
    if summary.floor_rtt_us.is_finite() {
        floors.push((
            format!("read floor: RTT = {:.0} us", summary.floor_rtt_us),
            summary.floor_rtt_us,
        ));
    }
    if let Err(e) = super::suite::plot_percentiles(
        &series,
        &floors,
        &run_dir.join("latency-percentiles"),
        &human_title(&summary),
    ) {
        tracing::warn!("could not draw the latency percentiles: {e}");
    }
    if !result.timeline.is_empty() {
        let start_ns = result
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let csv = run_dir.join("timeline.csv");
        super::timeline::write_csv(&csv, start_ns, &result.timeline).map_err(io)?;
        let rows = super::timeline::read_csv(&csv)?;
        if let Err(e) = super::timeline::plot(
            &rows.1,
            &[],
            &run_dir.join("timeline"),
            &format!("{}: latency over time", human_title(&summary)),
        ) {
            tracing::warn!("could not draw the timeline: {e}");
        }
    }
    if let Some(a) = anatomy_of(&summary) {
        if !a.is_empty() {
            let title = format!("{}: where the time goes", human_title(&summary));
            if let Err(e) = super::anatomy::plot(&a, &run_dir.join("anatomy"), &title) {
                tracing::warn!("could not draw the latency anatomy: {e}");
            }
        }
    }
    super::html::write(run_dir, &markdown(&summary), &human_title(&summary)).map_err(io)?;
    Ok(summary)
}

/// The run's latency anatomy as recorded in its summary (`--anatomy` runs only).
fn anatomy_of(s: &Summary) -> Option<super::anatomy::Anatomy> {
    s.anatomy.as_ref().map(|meta| super::anatomy::Anatomy {
        meta: meta.clone(),
        put: s.anatomy_us.clone(),
        get: s.anatomy_us_get.clone(),
        parallel: s.anatomy_parallel_us.clone(),
    })
}

/// Whether the servers' stamps are on the load generator's host clock: a local cluster, or
/// endpoints that are all loopback addresses.
fn same_host(spec: &BenchSpec) -> bool {
    use std::net::ToSocketAddrs;
    spec.endpoints.as_ref().map_or(true, |eps| {
        eps.iter().all(|e| {
            e.to_socket_addrs()
                .map(|mut a| a.all(|a| a.ip().is_loopback()))
                .unwrap_or(false)
        })
    })
}

/// `path` relative to `base` when it lies under it (a summary committed to `results/` must not
/// name the machine it was made on), else `path` itself.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
}

pub fn csv_header() -> &'static str {
    "label,replicas,groups,placement,durability,clients,outstanding,rate,read_ratio,value_size,batch_max_ops,batch_delay_us,pipeline_depth,throughput_ops_s,op,count,p50_us,p90_us,p99_us,p999_us,max_us,floor_rtt_us,floor_sync_write_us,flagged,run_dir,completed_in_window,elapsed_s,offered_ops_s,send_lag_p50_us,send_lag_p99_us,send_lag_max_us,censored,lower_bounds,errors,errors_by_kind,floor_rtt_us_min,floor_rtt_us_max,floor_sync_write_us_min,floor_sync_write_us_max,floor_sync_write_on_wal_disk,floor_sync_write_dir"
}

/// `kind:count` pairs joined with `;` (a CSV cell without commas).
fn kinds_cell(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// One line per operation (`all` included).
pub fn csv_row(s: &Summary) -> String {
    let c = &s.config;
    let place = c
        .placement
        .as_ref()
        .and_then(|p| p.file_stem())
        .map_or("lan".to_string(), |x| x.to_string_lossy().to_string());
    let rtt = spread(&s.floor_rtt_us_samples).unwrap_or((s.floor_rtt_us, s.floor_rtt_us));
    let sync = spread(&s.floor_sync_write_us_samples)
        .unwrap_or((s.floor_sync_write_us, s.floor_sync_write_us));
    s.latency_us
        .iter()
        .map(|(op, p)| {
            format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{},{},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{:.1},{},{},{},{:.3},{},{:.1},{:.1},{:.1},{},{},{},{},{:.1},{:.1},{:.1},{:.1},{},{}",
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
                s.run_dir.display(),
                s.completed_in_window,
                s.elapsed_s,
                s.offered_ops_s.map_or(String::new(), |r| format!("{r:.1}")),
                s.send_lag_us.p50,
                s.send_lag_us.p99,
                s.send_lag_us.max,
                p.censored,
                p.lower_bounds.join(";"),
                s.errors,
                kinds_cell(&s.errors_by_kind),
                rtt.0,
                rtt.1,
                sync.0,
                sync.1,
                s.floor_sync_write_on_wal_disk,
                s.floor_sync_write_dir.display()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The table printed at the end of `mpaxos bench`.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let c = &s.config;
    let mut load = match c.rate {
        Some(r) => format!("open loop {r:.0} ops/s ({})", c.arrival),
        None => format!(
            "closed loop, {} clients x {} outstanding",
            c.clients, c.outstanding
        ),
    };
    if let Some(k) = c.shared_conns() {
        load.push_str(&format!(", over {k} shared connections per replica"));
    }
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
        "measured {:.1} s ({:.3} s elapsed) after {:.1} s warm-up: {} requests completed, {} in the window = {:.0} ops/s, {} retries, {} redirects",
        c.duration,
        s.elapsed_s,
        c.warmup,
        s.completed,
        s.completed_in_window,
        s.throughput_ops_s,
        s.retries,
        s.redirects
    );
    if let Some(offered) = s.offered_ops_s {
        let _ = writeln!(
            out,
            "offered {offered:.0} ops/s; backlog + in flight at each second: {:?}",
            s.queue_samples
        );
    }
    let _ = writeln!(
        out,
        "send lag (actual send - when it could leave): p50 {:.1} us, p99 {:.1} us, max {:.1} us (open loop: flagged above p99 {SEND_LAG_P99_FLAG_US:.0} us)",
        s.send_lag_us.p50, s.send_lag_us.p99, s.send_lag_us.max
    );
    if !s.errors_by_kind.is_empty() {
        let _ = writeln!(
            out,
            "not successful (not in latencies or throughput): {}",
            s.errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !s.retries_by_kind.is_empty() {
        let _ = writeln!(
            out,
            "retried attempts: {}",
            s.retries_by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "op", "count", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us", "mean us"
    );
    let mut censored = false;
    for (op, p) in &s.latency_us {
        censored |= p.censored > 0;
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            op,
            p.count,
            p.show("p50", p.p50),
            p.show("p90", p.p90),
            p.show("p99", p.p99),
            p.show("p999", p.p999),
            p.show("max", p.max),
            p.show("mean", p.mean)
        );
    }
    if censored {
        let _ = writeln!(
            out,
            "(counts include unfinished requests, censored at the time they had waited when the run ended; >= marks lower bounds)"
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
        "\nphysical floor (same run): loopback round trip p50 {:.1} us, 4 KiB O_DIRECT durable write p50 {:.1} us",
        s.floor_rtt_us, s.floor_sync_write_us
    );
    if let Some(g) = s.floor_grpc_rtt_us {
        let _ = writeln!(
            out,
            "  gRPC echo floor (etcd's client stack, a KV server that answers at once): p50 {g:.1} us (samples {:?})",
            s.floor_grpc_rtt_us_samples
        );
    }
    if !s.floor_rtt_us_samples.is_empty() {
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  medians of {} measurements (before and after the load): RTT p50s [{}], sync write p50s [{}]",
            s.floor_rtt_us_samples.len(),
            show(&s.floor_rtt_us_samples),
            show(&s.floor_sync_write_us_samples)
        );
    }
    if let Some((lo, hi)) = spread(&s.floor_rtt_us_under_load_samples) {
        let _ = writeln!(
            out,
            "  RTT floor under load (a quiet round trip on the loaded machine, once a second, {} samples): median {:.1} us, range {lo:.1}-{hi:.1} us",
            s.floor_rtt_us_under_load_samples.len(),
            median(&s.floor_rtt_us_under_load_samples).unwrap_or(f64::NAN),
        );
    }
    // (Summaries from before the floor samples existed say nothing about it; they measured
    // in the run directory, elsewhere only with --endpoints.)
    let elsewhere = if s.floor_sync_write_us_samples.is_empty() {
        c.endpoints.is_some()
    } else {
        !s.floor_sync_write_on_wal_disk
    };
    if elsewhere {
        let _ = writeln!(
            out,
            "  (disk floor measured in {} on the load generator's host, not on the replicas' WAL disk: the write ratio is only indicative)",
            s.floor_sync_write_dir.display()
        );
    }
    // The targets are for one closed-loop client on loopback; under load the ratio measures
    // queueing, not the path, so it is shown without a verdict beside the throughput.
    let one_client =
        c.clients == 1 && c.outstanding == 1 && c.rate.is_none() && c.placement.is_none();
    let verdict = |r: f64, target: f64| {
        if r <= target {
            format!("meets the 1-client target <= {target}")
        } else {
            format!("MISSES the 1-client target <= {target}")
        }
    };
    let load = format!(
        "no target under load: {} ops/s from {} clients x {}",
        s.throughput_ops_s.round(),
        c.clients,
        c.outstanding
    );
    if let Some(r) = s.write_p50_over_floor {
        let _ = writeln!(
            out,
            "  write p50 / (2 x RTT + sync write) = {r:.2}   ({})",
            if one_client {
                verdict(r, 1.5)
            } else {
                load.clone()
            }
        );
    }
    if let (Some(r), Some(shared), Some(n)) = (
        s.write_p50_over_shared_floor,
        s.floor_sync_write_shared_us,
        s.floor_sync_write_shared_writers,
    ) {
        let _ = writeln!(
            out,
            "  write p50 / (2 x RTT + shared write) = {r:.2}   (one host: the {n} replicas' WALs share this disk; {n} concurrent durable writes p50 {shared:.1} us, samples [{}]; context, not a target)",
            s.floor_sync_write_shared_us_samples
                .iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(r) = s.read_p50_over_floor {
        let _ = writeln!(
            out,
            "  read  p50 / RTT                    = {r:.2}   ({})",
            if one_client { verdict(r, 3.0) } else { load }
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

/// A title a person reads: what ran, how loaded, where, how durable, when.
pub fn human_title(s: &Summary) -> String {
    human_title_except(s, &|_| false)
}

/// `human_title` without the settings a suite varies (`varied(axis)` for "replicas",
/// "clients", "read_ratio", "placement", "durability", ...): what its cells have in common.
pub fn human_title_except(s: &Summary, varied: &dyn Fn(&str) -> bool) -> String {
    let c = &s.config;
    let mut parts = Vec::new();
    if !varied("replicas") {
        parts.push(format!("{} replicas", c.replicas));
    }
    let load_axes = ["clients", "outstanding", "rate"];
    if !load_axes.iter().any(|a| varied(a)) {
        parts.push(match c.rate {
            Some(r) => format!("open loop {r:.0}/s"),
            None => format!(
                "{} client{} x {}",
                c.clients,
                if c.clients == 1 { "" } else { "s" },
                c.outstanding
            ),
        });
    }
    if !varied("read_ratio") {
        parts.push(format!("{:.0}% reads", c.read_ratio * 100.0));
    }
    if !varied("placement") {
        parts.push(
            c.placement
                .as_ref()
                .and_then(|p| p.file_stem())
                .map_or("loopback".to_string(), |x| x.to_string_lossy().to_string()),
        );
    }
    if !varied("durability") {
        parts.push(format!(
            "WAL {}",
            if s.wal_backend.is_empty() {
                c.durability.clone()
            } else {
                s.wal_backend.clone()
            }
        ));
    }
    let (y, m, d) = super::civil_date(s.started_unix_s);
    parts.push(format!("{y:04}-{m:02}-{d:02}"));
    parts.join(", ")
}

pub fn markdown(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# mpaxos bench run\n");
    let _ = writeln!(out, "```\n{}```\n", table(s));
    let _ = writeln!(
        out,
        "Histograms: `histograms/*.hgrm` (per operation, client region and path; `*-all` merged); interval log: `intervals.hlog`; the exact commands: `commands.txt`; replica logs: `logs/`.\n"
    );
    let _ = writeln!(
        out,
        "![latency by percentile](latency-percentiles.svg)\n\n![latency CDF](latency-cdf.svg)"
    );
    if let Some(a) = anatomy_of(s) {
        out.push_str(&super::anatomy::markdown(&a));
        if !a.is_empty() {
            let _ = writeln!(out, "\n![latency anatomy](anatomy.svg)");
        }
    }
    if let Some(cpu) = &s.cpu {
        out.push_str(&super::cpu::markdown(cpu));
    }
    if s.config.timeline {
        let _ = writeln!(
            out,
            "\nEvery measured request: `timeline.csv` (send time, operation, latency; `mpaxos bench timeline` marks events on it).\n\n![latency over time](timeline.svg)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        let mut config = crate::bench::suite::default_spec();
        config.rate = Some(1000.0);
        serde_json::from_value(serde_json::json!({
            "run_dir": "/runs/x", "label": "x", "throughput_ops_s": 1000.0,
            "latency_us": {}, "latency_us_by_region": {}, "floor_rtt_us": 20.0,
            "floor_sync_write_us": 70.0, "completed": 10000, "unfinished": 0, "errors": 0,
            "retries": 0, "redirects": 0, "timeouts": 0, "flagged": false, "flag_reasons": [],
            "leaders": [], "wal_backend": "memory", "links": [],
            "config": serde_json::to_value(config).unwrap(), "started_unix_s": 0,
            "elapsed_s": 10.0, "offered_ops_s": 1000.0,
            "queue_samples": [0, 1, 0, 2, 1, 0, 0, 1, 0, 0, 3],
            "send_lag_us": {"count": 10000, "mean": 5.0, "p50": 2.0, "p90": 5.0, "p99": 40.0,
                            "p999": 90.0, "max": 300.0}
        }))
        .unwrap()
    }

    #[test]
    fn recorded_paths_are_relative_where_they_can_be() {
        let run = Path::new("/work/repo/results/runs/r1");
        assert_eq!(
            relative_to(&run.join("cluster/replica-0"), run),
            PathBuf::from("cluster/replica-0")
        );
        assert_eq!(
            relative_to(run, Path::new("/work/repo")),
            PathBuf::from("results/runs/r1")
        );
        // Outside the base (a --data-dir elsewhere): kept as it is.
        assert_eq!(
            relative_to(Path::new("/mnt/fast/data"), run),
            PathBuf::from("/mnt/fast/data")
        );
    }

    #[test]
    fn floor_ratio_verdicts_only_for_one_client() {
        let mut s = summary();
        s.write_p50_over_floor = Some(6.4);
        s.read_p50_over_floor = Some(2.0);
        s.config.rate = None;
        s.config.clients = 16;
        let t = table(&s);
        assert!(
            t.contains("= 6.40   (no target under load: 1000 ops/s from 16 clients x 1)"),
            "{t}"
        );
        assert!(!t.contains("target <="), "{t}");
        s.config.clients = 1;
        let t = table(&s);
        assert!(
            t.contains("= 6.40   (MISSES the 1-client target <= 1.5)"),
            "{t}"
        );
        assert!(
            t.contains("= 2.00   (meets the 1-client target <= 3)"),
            "{t}"
        );
    }

    #[test]
    fn the_one_host_floor_is_shown_beside_the_target_without_a_verdict() {
        let mut s = summary();
        s.config.clients = 1;
        s.config.rate = None;
        s.write_p50_over_floor = Some(2.4);
        let t = table(&s);
        assert!(!t.contains("shared write"), "not measured, not shown: {t}");
        s.floor_sync_write_shared_us = Some(309.6);
        s.floor_sync_write_shared_us_samples = vec![339.2, 280.06];
        s.floor_sync_write_shared_writers = Some(3);
        s.write_p50_over_shared_floor = Some(1.54);
        let t = table(&s);
        assert!(
            t.contains("= 2.40   (MISSES the 1-client target <= 1.5)"),
            "{t}"
        );
        assert!(
            t.contains("write p50 / (2 x RTT + shared write) = 1.54   (one host: the 3 replicas' WALs share this disk; 3 concurrent durable writes p50 309.6 us, samples [339.2, 280.1]; context, not a target)"),
            "{t}"
        );
    }

    #[test]
    fn flag_rules() {
        let ok = summary();
        assert!(flag_reasons(&ok).is_empty(), "{:?}", flag_reasons(&ok));
        let mut late = summary();
        late.send_lag_us.p99 = 150.0;
        assert!(flag_reasons(&late)[0].contains("send lag p99"));
        late.config.rate = None;
        late.throughput_ops_s = 1.0;
        assert!(
            flag_reasons(&late).is_empty(),
            "closed loop: reported, not flagged"
        );
        let mut behind = summary();
        behind.queue_samples = vec![0, 100, 200, 300];
        assert!(flag_reasons(&behind)[0].contains("backlog grew"));
        let mut slow = summary();
        slow.throughput_ops_s = 900.0;
        assert!(flag_reasons(&slow)[0].contains("under 95%"));
        let mut errors = summary();
        errors.errors = 3;
        errors.errors_by_kind.insert("stale".into(), 3);
        errors.errors_by_kind.insert("unknown_outcome".into(), 1);
        errors.unfinished = 1;
        let r = flag_reasons(&errors).join("; ");
        assert!(r.contains("3 requests ended in an error (stale 3)"), "{r}");
        assert!(r.contains("1 measured requests never completed"), "{r}");
    }
}
