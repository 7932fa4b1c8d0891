#!/usr/bin/env bash
# How long taking a snapshot stops a replica's group thread, and what it does to latency
# (results/anatomy.md, "Third pass"). Starts a local 3-replica cluster with snapshots every
# EVERY slots (far more often than the default, so a short run takes many), drives it with 64
# clients over 8 shared connections, then prints the put latency line and, from the replicas'
# "snapshot durable" log lines, the group thread's time per snapshot (`take_ms`; it also reads
# `encode_ms`, which only the uncommitted "before" build of results/anatomy.md logged — a timer
# around the old serialization; committed builds before af1ccb6 log neither) and the leader
# changes.
#
#   scripts/snapshot-stall.sh BIN [LABEL]
#
# Environment: OUT (default snapshot-stall), EVERY (5000), DURATION (15).
# Alternate two builds (A B A B) for a comparison; copy the binaries aside first.
set -euo pipefail
BIN=${1:?binary}
LABEL=${2:-run}
OUT=${OUT:-snapshot-stall}
EVERY=${EVERY:-5000}
DURATION=${DURATION:-15}
mkdir -p "$OUT"
dir="$OUT/$LABEL-cluster"
rm -rf "$dir"
start_cluster() {
  "$BIN" cluster --dir "$dir" > "$dir.out" 2>&1 &
  cluster_pid=$!
  for _ in $(seq 1 100); do grep -q '^endpoints:' "$dir.out" 2>/dev/null && return; sleep 0.2; done
  echo "the cluster did not start:" >&2; cat "$dir.out" >&2; exit 1
}
# Once to write cluster.toml, then again with the snapshot interval changed.
start_cluster
kill -TERM "$cluster_pid"; wait "$cluster_pid" || true
rm -f "$dir"/replica-*.log
sed -i "s/^snapshot_every_entries = .*/snapshot_every_entries = $EVERY/" "$dir/cluster.toml"
start_cluster
trap 'kill -TERM "$cluster_pid" 2>/dev/null || true' EXIT
endpoints=$(awk '/^endpoints:/ {print $2}' "$dir.out")
sleep 1
"$BIN" bench --endpoints "$endpoints" --clients 64 --conns 8 --read-ratio 0 --warmup 1 \
  --duration "$DURATION" --label "$LABEL" --out "$OUT/runs" > "$OUT/$LABEL-bench.txt" 2>&1
kill -TERM "$cluster_pid"; wait "$cluster_pid" || true
trap - EXIT
echo "$LABEL: $(grep -E '^op ' "$OUT/$LABEL-bench.txt")"
echo "$LABEL: $(grep -E '^put ' "$OUT/$LABEL-bench.txt")"
grep -h "snapshot durable" "$dir"/replica-*.log \
  | grep -o -E '(take|encode)_ms="[0-9.]+' | cut -d'"' -f2 | sort -n \
  | awk -v l="$LABEL" '{a[NR]=$1} END {if (NR) printf "%s: snapshots %d, group thread ms per snapshot: min %s, median %s, max %s\n", l, NR, a[1], a[int((NR+1)/2)], a[NR]; else print l": no snapshot taken"}'
echo "$LABEL: leader changes logged per replica (1: the first election only): $(grep -c 'leader changed' "$dir"/replica-*.log | cut -d: -f2 | paste -sd' ')"
