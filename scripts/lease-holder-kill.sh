#!/usr/bin/env bash
# Writes after a quorum-lease holder dies (issue 12, "Measure"): a local cluster with
# READ_MODE (quorum-lease), `mpaxos bench --timeline` with clients reading from their nearest
# replica, and follower VICTIM killed with SIGKILL KILL_AT seconds into the run. Prints the
# slowest put and the longest time no put completed around the kill (the documented bound is
# grantor_hold_ms + one-way delay + 2 x heartbeat_ms, about 190 ms with the defaults:
# docs/internals/protocol.md §8), and draws the run's timeline.png with the kill marked.
#
#   B=target/release/mpaxos scripts/lease-holder-kill.sh
#   B=target/release/mpaxos READ_MODE=leader-lease scripts/lease-holder-kill.sh   # the baseline
set -euo pipefail
B=${B:-target/release/mpaxos}
N=${N:-3}
READ_MODE=${READ_MODE:-quorum-lease}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
KILL_AT=${KILL_AT:-6}          # seconds after the bench started (warm-up included)
READ_RATIO=${READ_RATIO:-0.9}
CLIENTS=${CLIENTS:-15}
OUT=${OUT:-results/runs/holder-kill-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=$(mktemp -d)
DIR=$WORK/cluster
mkdir -p "$OUT" "$DIR"
"$B" cluster --replicas "$N" --dir "$DIR" --read-mode "$READ_MODE" > "$OUT/cluster.out" 2>&1 &
CLUSTER=$!
cleanup() {
  kill -INT "$CLUSTER" 2>/dev/null || true
  wait "$CLUSTER" 2>/dev/null || true
  mkdir -p "$OUT/logs" && cp "$DIR"/replica-*.log "$OUT/logs/" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 150); do grep -q '^endpoints:' "$OUT/cluster.out" && break; sleep 0.2; done
EP=$(sed -n 's/^endpoints: //p' "$OUT/cluster.out")
[[ -n "$EP" ]] || { echo "the cluster did not start; see $OUT/cluster.out" >&2; exit 1; }
sleep 1
# The victim: the highest-numbered replica that does not lead group 0.
VICTIM=$("$B" status -w json --endpoints "$EP" | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin)["members"] if r.get("group") == 0]
print(max(r["replica"] for r in rows if r.get("role") != "leader"))')
"$B" bench --endpoints "$EP" --duration "$DURATION" --warmup "$WARMUP" --clients "$CLIENTS" \
  --read-ratio "$READ_RATIO" --read-from nearest --timeline --out "$OUT/runs" \
  --label "holder-kill-$READ_MODE" > "$OUT/bench.out" 2>&1 &
BENCH=$!
sleep "$KILL_AT"
pid=$(pgrep -P "$CLUSTER" -f -- "--id $VICTIM\$" | head -1 || true)
[[ -n "$pid" ]] || { echo "replica $VICTIM's process not found" >&2; exit 1; }
KILLED_AT=$(date +%s.%N)
kill -KILL "$pid"
wait "$BENCH" || { echo "bench failed; see $OUT/bench.out" >&2; exit 1; }
RUN=$(sed -n 's/^run directory: //p' "$OUT/bench.out")
echo "read_mode=$READ_MODE victim=$VICTIM run=$RUN"
"$B" bench timeline "$RUN" --mark "kill -9 replica $VICTIM@unix:$KILLED_AT" | tee "$OUT/stall.txt"
