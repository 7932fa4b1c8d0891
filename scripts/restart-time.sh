#!/usr/bin/env bash
# Restart time (issue 11, "Measure"): a local 3-replica cluster takes WRITE_S seconds of
# 64-byte puts over KEYS keys (`mpaxos bench --read-ratio 0`), then replica 2 is killed with
# SIGKILL, stopped for DOWN_S seconds (more writes meanwhile if DOWN_LOAD=1) and started again.
# Prints, as one CSV line appended to OUT/restart.csv:
#   history_slots,down_s,recover_s,caught_up_s,snapshot_slot,installed
# recover_s: start to "replica started" (WAL + snapshot recovery); caught_up_s: start to
# applied >= the leader's commit. With snapshots the restart time must not depend on how much
# history the cluster has (compare WRITE_S giving ~1M and ~10M writes), and at 100k keys of
# 64 B stay under 2 s; a follower down 5 minutes (DOWN_S=300 DOWN_LOAD=1) must serve again
# within 10 s.
#
#   B=target/release/mpaxos WRITE_S=120 scripts/restart-time.sh
#   B=target/release/mpaxos WRITE_S=60 DOWN_S=300 DOWN_LOAD=1 scripts/restart-time.sh
set -euo pipefail
B=${B:-target/release/mpaxos}
WRITE_S=${WRITE_S:-60}
DOWN_S=${DOWN_S:-1}
DOWN_LOAD=${DOWN_LOAD:-0}
KEYS=${KEYS:-100000}
CLIENTS=${CLIENTS:-16}
OUT=${OUT:-results/restart-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=$(mktemp -d)
DIR=$WORK/cluster
mkdir -p "$OUT" "$DIR"
"$B" cluster --replicas 3 --dir "$DIR" > "$OUT/cluster.out" 2>&1 &
CLUSTER=$!
cleanup() {
  kill "${RESTARTED:-0}" 2>/dev/null || true
  kill -INT "$CLUSTER" 2>/dev/null || true
  wait "$CLUSTER" 2>/dev/null || true
  cp "$DIR"/replica-*.log "$OUT/" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 150); do grep -q '^endpoints:' "$OUT/cluster.out" && break; sleep 0.2; done
EP=$(sed -n 's/^endpoints: //p' "$OUT/cluster.out")
[[ -n "$EP" ]] || { echo "the cluster did not start; see $OUT/cluster.out" >&2; exit 1; }
load() {
  "$B" bench --endpoints "$EP" --duration "$1" --warmup 0 --clients "$CLIENTS" --read-ratio 0 \
    --value-size 64 --keys "$KEYS" --out "$OUT/runs" --label "$2" > "$OUT/$2.out" 2>&1
}
status() { "$B" status -w json --endpoints "$EP" 2>/dev/null || true; }
field() { # field REPLICA NAME: a group-0 status field of a replica, or of the leader (REPLICA=L)
  python3 -c '
import json, sys
try:
    doc = json.load(sys.stdin)
except ValueError:
    doc = {}
rows = [r for r in doc.get("members", []) if r.get("group") == 0]
who, name = sys.argv[1], sys.argv[2]
for r in rows:
    if (who == "L" and r.get("role") == "leader") or str(r.get("replica")) == who:
        print(r.get(name, "")); break' "$1" "$2"
}
load "$WRITE_S" history
victim=2
pid=$(pgrep -P "$CLUSTER" -f -- "--id $victim\$" | head -1 || true)
kill -KILL "$pid"
if [[ "$DOWN_LOAD" == 1 ]]; then load "$DOWN_S" while-down; else sleep "$DOWN_S"; fi
history=$(status | field L commit)
log=$DIR/replica-$victim.log
lines_before=$(wc -l < "$log")
t0=$(date +%s.%N)
"$B" server --config "$DIR/cluster.toml" --id "$victim" >> "$log" 2>&1 &
RESTARTED=$!
recover_s=""
while :; do
  now=$(date +%s.%N)
  if [[ -z "$recover_s" ]] && tail -n +"$((lines_before + 1))" "$log" | grep -q "replica started"; then
    recover_s=$(echo "$now - $t0" | bc)
  fi
  st=$(status)
  applied=$(echo "$st" | field "$victim" applied)
  commit=$(echo "$st" | field L commit)
  if [[ -n "$applied" && -n "$commit" && "$applied" -ge "$commit" && "$commit" -gt 0 ]]; then
    caught_up_s=$(echo "$now - $t0" | bc); break
  fi
  sleep 0.05
done
snap=$(tail -n +"$((lines_before + 1))" "$log" | sed -n 's/.*snapshot_slot=\([0-9]*\).*/\1/p' | head -1)
installed=$(tail -n +"$((lines_before + 1))" "$log" | grep -c "installed a peer's snapshot" || true)
[[ -f "$OUT/restart.csv" ]] || echo "history_slots,down_s,recover_s,caught_up_s,snapshot_slot,installed" > "$OUT/restart.csv"
echo "$history,$DOWN_S,${recover_s:-?},$caught_up_s,${snap:-0},$installed" | tee -a "$OUT/restart.csv"
