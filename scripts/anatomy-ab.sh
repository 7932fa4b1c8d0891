#!/usr/bin/env bash
# A/B runs for the latency anatomy (issue 15, results/anatomy.md): two binaries (or one binary
# with and without --anatomy), alternated A B A B ... in one session so the noisy machine
# affects both alike, at 1 client and at 64 clients (durable puts, 3 replicas, loopback).
# Prints one table of medians over the rounds: put p50/p99, throughput, the anatomy's
# end-to-end mean and its gap to the measured mean, and CPU µs / system calls per put.
#
#   scripts/anatomy-ab.sh A_BIN B_BIN                 # two builds, both with --anatomy
#   OVERHEAD=1 scripts/anatomy-ab.sh BIN BIN          # A without --anatomy, B with it
#   B_FLAGS="--conns 8" scripts/anatomy-ab.sh BIN BIN  # one build, a bench flag on B only
#
# Environment: OUT (default anatomy-ab), ROUNDS (3), DURATION (8), CLIENTS ("1 64"), A_FLAGS and
# B_FLAGS (extra bench flags of each side, split on spaces).
# Copy the binaries aside first: the bench starts its servers from its own path.
set -euo pipefail
A=${1:?A binary}
B=${2:?B binary}
OUT=${OUT:-anatomy-ab}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-"1 64"}
OVERHEAD=${OVERHEAD:-0}
read -r -a a_flags <<< "${A_FLAGS:-}"
read -r -a b_flags <<< "${B_FLAGS:-}"
mkdir -p "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do
    for side in A B; do
      bin=$A
      flags=(--anatomy "${a_flags[@]}")
      if [[ $side == B ]]; then bin=$B; flags=(--anatomy "${b_flags[@]}"); fi
      if [[ $OVERHEAD == 1 && $side == A ]]; then flags=("${a_flags[@]}"); fi
      echo "round $round, $c clients, $side: $bin bench ${flags[*]} --clients $c --read-ratio 0 --duration $DURATION"
      "$bin" bench "${flags[@]}" --clients "$c" --read-ratio 0 --warmup 1 --duration "$DURATION" \
        --label "$side-c$c" --out "$OUT/$side-c$c" >/dev/null 2>>"$OUT/stderr.log"
    done
  done
done
python3 - "$OUT" <<'EOF'
import json, pathlib, statistics, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for d in sorted(out.glob("*-c*/*/summary.json")):
    s = json.loads(d.read_text())
    rows.setdefault(s["label"], []).append(s)
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")
print("| side | clients | runs | put p50 µs | put p99 µs | puts/s | anatomy e2e mean µs | measured mean µs | servers CPU µs/put | servers syscalls/put | load gen CPU µs/put |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for label in sorted(rows, key=lambda l: (int(l.split("-c")[1]), l)):
    runs = rows[label]
    side, c = label.split("-c")
    put = [r["latency_us"]["put"] for r in runs]
    anat = [r.get("anatomy", {}).get("end_to_end_mean_us_put") for r in runs]
    cpu = [r.get("cpu") or {} for r in runs]
    srv = [x.get("servers_per_op", {}) for x in cpu]
    lg = [x.get("load_generator_per_op", {}) for x in cpu]
    print(f"| {side} | {c} | {len(runs)} | {med([p['p50'] for p in put]):.0f} | {med([p['p99'] for p in put]):.0f} "
          f"| {med([r['throughput_ops_s'] for r in runs]):.0f} | {med(anat):.1f} | {med([p['mean'] for p in put]):.1f} "
          f"| {med([x.get('cpu_us') for x in srv]):.1f} | {med([x.get('syscalls') for x in srv]):.2f} | {med([x.get('cpu_us') for x in lg]):.1f} |")
EOF
