#!/usr/bin/env python3
"""Multi-Paxos against Fast Paxos from a `scripts/suites/fast-paxos.toml` suite directory.

    scripts/fast-paxos-table.py SUITE_DIR [--placements DIR]

One row per (placement, N, contention, clients): throughput of each protocol, Fast Paxos slots
chosen fast / classic (recovered after a collision or a timeout), and per client region the put
p50 of Multi-Paxos, of Fast Paxos, and the analytic fast path (docs/internals/protocol.md §11):
for a client in region c whose nearest replica is R, the Qf-th smallest d(c,a) + d(a,R) over the
acceptors a, plus d(R,c), with d = half the placement's average RTT (Qf = ceil(3N/4)); it leaves
out the local sync write and the acceptors' ordering margin (`fast_order_margin_us`, 1 ms). A
Fast Paxos p50 in bold is below Multi-Paxos' for that region.
"""
import csv
import json
import math
import pathlib
import sys
import tomllib


def load_placement(path, base):
    p = pathlib.Path(path)
    if not p.is_absolute() and not p.exists():
        p = base / p.name
    spec = tomllib.loads(p.read_text())
    rtt = {}
    if "rtt_csv" not in spec:
        return spec, rtt  # one region (lan): nothing emulated
    with open(p.parent / spec["rtt_csv"]) as f:
        for row in csv.DictReader(f):
            rtt[(row["from"], row["to"])] = float(row["rtt_avg_ms"])
    return spec, rtt


def d(rtt, a, b):
    """One-way delay as the servers emulate it: none within a region, half the RTT across."""
    if a == b:
        return 0.0
    r = rtt.get((a, b)) or rtt.get((b, a))
    return r / 2


def analytic(spec, rtt, n, region):
    # Replica i runs in replicas[i mod len] (net/placement.rs).
    replicas = [spec["replicas"][i % len(spec["replicas"])] for i in range(n)]
    qf = math.ceil(3 * n / 4)
    near = min(range(n), key=lambda i: (d(rtt, region, replicas[i]), i))
    r = replicas[near]
    paths = sorted(d(rtt, region, a) + d(rtt, a, r) for a in replicas)
    return paths[qf - 1] + d(rtt, r, region)


def main():
    suite = pathlib.Path(sys.argv[1])
    base = pathlib.Path(__file__).resolve().parent / "placements"
    cells = {}
    for f in sorted(suite.glob("runs/*/summary.json")):
        s = json.loads(f.read_text())
        c = s["config"]
        label = dict(kv.split("=", 1) for kv in s["label"].split())
        key = (
            pathlib.Path(c["placement"]).stem if c.get("placement") else "lan",
            c["replicas"],
            label.get("contention", c.get("key_dist")),
            c["clients"],
        )
        cells.setdefault(key, {})[s["protocol"]] = (s, c.get("placement"))
    print(
        "| placement | N | contention | clients | ops/s MP / FP | FP slots fast / classic (collisions) "
        "| put p50 ms by client region: MP / FP (analytic fast path) |"
    )
    print("|---|---|---|---|---|---|---|")
    order = {"lan": 0, "3-regions": 1, "5-regions": 2, "leader-far": 3}
    for key in sorted(cells, key=lambda k: (order.get(k[0], 9), k[1], k[2], k[3])):
        placement, n, contention, clients = key
        mp = cells[key].get("multi-paxos", (None, None))[0]
        fp, ppath = cells[key].get("fast-paxos", (None, None))
        spec = rtt = None
        if ppath:
            spec, rtt = load_placement(ppath, base)
        regions = sorted(
            set((mp or {}).get("latency_us_by_region", {}))
            | set((fp or {}).get("latency_us_by_region", {}))
        )
        parts = []
        for r in regions:
            def p50(s):
                x = (s or {}).get("latency_us_by_region", {}).get(r, {}).get("put")
                return x["p50"] / 1000 if x and x.get("count") else None
            a, b = p50(mp), p50(fp)
            fmt = lambda v: "—" if v is None else f"{v:.1f}"
            fb = fmt(b)
            if a is not None and b is not None and b < a:
                fb = f"**{fb}**"
            an = f" ({analytic(spec, rtt, n, r):.1f})" if spec and r in spec["regions"] else ""
            parts.append(f"{r} {fmt(a)} / {fb}{an}")
        ops = lambda s: "—" if s is None else f"{s['throughput_ops_s']:.0f}"
        slots = "—" if fp is None else f"{fp['fast_chosen']} / {fp['classic_chosen']} ({fp['collisions']})"
        print(
            f"| {placement} | {n} | {contention} | {clients} | {ops(mp)} / {ops(fp)} | {slots} | "
            + "; ".join(parts)
            + " |"
        )


if __name__ == "__main__":
    main()
