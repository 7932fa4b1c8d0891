#!/usr/bin/env bash
# The long Jepsen-style campaign (issue 14; docs/internals/chaos.md): every nemesis family on 3
# and 5 real replicas, both protocols, both read modes and small snapshot thresholds, then one
# table of the results.
#
#   scripts/chaos-campaign.sh                    # every row, 5 runs of 60 s each (~2 h)
#   ROWS="r3-clock r3-disk" RUNS=2 DURATION=30 scripts/chaos-campaign.sh
#
# Environment: OUT (default chaos-campaign), RUNS (5), DURATION (60), SEED (10000; row i uses
# SEED + 100 i), ROWS (space-separated row names; default all), BUILD (1: build first).
# It builds the test-only `fault-injection` feature (the clock and disk nemeses need it) with
# the test profile and copies the binary to $OUT/mpaxos, so rebuilds cannot change it
# mid-campaign. Runs one at a time (no parallel jobs: recovery times are part of the result).
# Exit status: non-zero when any row found an unexpected anomaly or lost write, or failed.
# Partitions need root and network namespaces; without them each run says
# `nemesis partition: skipped: ...`.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-chaos-campaign}
RUNS=${RUNS:-5}
DURATION=${DURATION:-60}
SEED=${SEED:-10000}
BUILD=${BUILD:-1}

# name | mpaxos chaos options
ALL_ROWS=(
  "r3-all|--replicas 3 --nemesis all"
  "r5-all|--replicas 5 --nemesis all"
  "r3-all-ri|--replicas 3 --nemesis all --read-mode read-index"
  "r3-clock|--replicas 3 --nemesis clock"
  "r5-clock|--replicas 5 --nemesis clock"
  "r3-disk|--replicas 3 --nemesis disk"
  "r5-disk|--replicas 5 --nemesis disk"
  "r3-fast|--replicas 3 --nemesis kill,pause --protocol fast-paxos"
  "r5-fast|--replicas 5 --nemesis kill,pause --protocol fast-paxos"
  "r3-snap|--replicas 3 --nemesis kill --snapshot-every 20"
  "r3-snap-all|--replicas 3 --nemesis all --snapshot-every random"
  "r3-ql|--replicas 3 --nemesis all --read-mode quorum-lease"
  # Beyond what the protocol promises (anomalies reported as expected, not counted):
  "r3-clock-beyond|--replicas 3 --nemesis clock-beyond"
  "r3-clock-beyond-ri|--replicas 3 --nemesis clock-beyond --read-mode read-index"
  "r3-disk-lie|--replicas 3 --nemesis disk-lie"
  "r3-clock-beyond-iso|--replicas 3 --nemesis clock-beyond-isolated"
  "r3-clock-beyond-iso-ri|--replicas 3 --nemesis clock-beyond-isolated --read-mode read-index"
)

if [[ "$BUILD" == 1 ]]; then
  cargo build --profile test --features fault-injection --bin mpaxos
fi
mkdir -p "$OUT"
cp target/debug/mpaxos "$OUT/mpaxos"

status=0
i=0
for row in "${ALL_ROWS[@]}"; do
  name=${row%%|*}
  opts=${row#*|}
  seed=$((SEED + 100 * i))
  i=$((i + 1))
  if [[ -n "${ROWS:-}" && " $ROWS " != *" $name "* ]]; then
    continue
  fi
  echo "== $name: mpaxos chaos $opts --duration $DURATION --runs $RUNS --seed $seed --out $OUT/$name"
  # shellcheck disable=SC2086
  if ! "$OUT/mpaxos" chaos $opts --duration "$DURATION" --runs "$RUNS" --seed "$seed" \
      --out "$OUT/$name" 2>"$OUT/$name.stderr" | tee "$OUT/$name.log"; then
    status=1
  fi
done

python3 - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print()
print("| row | N | protocol | reads | snapshots | runs | ops | ok | fail | indeterminate | faults | linearizable | acked write-once | lost | expected anomalies / lost | worst after heal (ms) | worst gap (ms) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    runs = [json.loads(s.read_text()) for s in sorted(d.glob("seed-*/summary.json"))]
    if not runs:
        continue
    sched = json.loads(next(d.glob("seed-*/schedule.json")).read_text())
    c = {k: sum(r["counts"][k] for r in runs) for k in ("ops", "ok", "fail", "info")}
    lin = sum(1 for r in runs if r["linearizable"])
    lost = sum(len(r["durability"]["lost"]) for r in runs if not r.get("lost_expected"))
    exp_a = sum(1 for r in runs if (r.get("anomalies_expected") or r.get("lost_expected")) and not r["linearizable"])
    exp_l = sum(len(r["durability"]["lost"]) for r in runs if r.get("lost_expected"))
    win = [w for r in runs for w in r["windows"]]
    heal = max((w["after_heal_ms"] or float("inf") for w in win), default=0)
    gap = max((w["longest_gap_ms"] for w in win), default=0)
    snaps = sorted({r.get("snapshot_every", 0) for r in runs})
    snap = ",".join("default" if s == 0 else str(s) for s in snaps)
    print(f"| {d.name} | {sched['replicas']} | {runs[0].get('protocol','multi-paxos')} | {runs[0].get('read_mode','lease')} | {snap} | {len(runs)} | {c['ops']:,} | {c['ok']:,} | {c['fail']:,} | {c['info']:,} | {sum(r['faults'] for r in runs)} | {lin} of {len(runs)} | {sum(r['durability']['acknowledged'] for r in runs):,} | {lost} | {exp_a} / {exp_l} | {heal:.0f} | {gap:.0f} |")
print()
print("Worst unavailability per fault kind (n, after heal ms, gap ms):")
for d in sorted(p for p in out.iterdir() if p.is_dir()):
    kinds = {}
    for s in sorted(d.glob("seed-*/summary.json")):
        for w in json.loads(s.read_text())["windows"]:
            k = w["what"].split(" -> ")[0]
            n, h, g = kinds.get(k, (0, 0.0, 0.0))
            kinds[k] = (n + 1, max(h, w["after_heal_ms"] if w["after_heal_ms"] is not None else float("inf")), max(g, w["longest_gap_ms"]))
    if kinds:
        print(f"- {d.name}: " + "; ".join(f"{k}: {n}, {h:.0f}, {g:.0f}" for k, (n, h, g) in sorted(kinds.items())))
EOF
exit $status
