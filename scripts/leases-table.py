#!/usr/bin/env python3
"""Pivot a `leases` suite (scripts/suites/leases.toml) into the tables of results/leases.md.

For each placement and N: one row per (write share, read mode) with, per client region, the
read p50 in ms and the share of reads the region's nearest replica answered itself, and the
write p50 seen from the leader's region. Usage: scripts/leases-table.py SUITE_DIR
"""
import json
import sys
from pathlib import Path


def main() -> None:
    suite = Path(sys.argv[1])
    runs = json.loads((suite / "summaries.json").read_text())
    cells = {}
    for s in runs:
        c = s["config"]
        placement = Path(c.get("placement") or "lan").stem
        key = (placement, c["replicas"], 1.0 - c["read_ratio"], c["read_mode"])
        cells[key] = s
    modes = ["read-index", "leader-lease", "quorum-lease"]
    for placement in ["lan", "3-regions", "5-regions"]:
        for n in [3, 5]:
            some = [s for k, s in cells.items() if k[0] == placement and k[1] == n]
            if not some:
                continue
            regions = sorted({r for s in some for r in s["latency_us_by_region"]})
            print(f"\n**{placement}, N = {n}** — read p50 ms (local share) per client region; put p50 ms\n")
            print("| writes | read mode | " + " | ".join(regions) + " | put p50 | ops/s |")
            print("|---" * (len(regions) + 4) + "|")
            for w in sorted({k[2] for k in cells}):
                for m in modes:
                    s = cells.get((placement, n, w, m))
                    if s is None:
                        continue
                    row = []
                    for r in regions:
                        g = s["latency_us_by_region"].get(r, {}).get("get", {})
                        local = s.get("local_read_share_by_region", {}).get(r)
                        if not g.get("count"):
                            row.append("-")
                            continue
                        share = f" ({local * 100:.0f}%)" if local is not None else ""
                        row.append(f"{g['p50'] / 1e3:.1f}{share}")
                    put = s["latency_us"].get("put", {})
                    put_s = f"{put['p50'] / 1e3:.1f}" if put.get("count") else "-"
                    print(f"| {w * 100:.0f}% | {m} | " + " | ".join(row)
                          + f" | {put_s} | {s['throughput_ops_s']:.0f} |")


if __name__ == "__main__":
    main()
