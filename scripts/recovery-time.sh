#!/usr/bin/env bash
# Recovery time of saved data directories, side by side (issue 11, results/snapshots.md):
# each SAVED is a directory `KEEP_DATA=SAVED scripts/restart-time.sh` wrote (cluster.toml and
# the killed replica's data directory). Every round recovers each of them in turn from a fresh
# copy with a cold page cache (root: drop_caches), as replica 2 alone, and prints one CSV line
# per recovery: saved,round,wal_ms,restore_ms,entries_scanned,mib_scanned,start_to_started_s
# Alternating the directories puts the machine's noise on all of them alike.
#
#   B=target/release/mpaxos ROUNDS=5 scripts/recovery-time.sh results/keep-1m results/keep-10m
set -euo pipefail
B=${B:-target/release/mpaxos}
ROUNDS=${ROUNDS:-5}
VICTIM=${VICTIM:-2}
[[ $# -ge 1 ]] || { echo "usage: $0 SAVED..." >&2; exit 2; }
WORK=$(mktemp -d)
trap 'kill "${P:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
echo "saved,round,wal_ms,restore_ms,entries_scanned,mib_scanned,start_to_started_s"
for round in $(seq 1 "$ROUNDS"); do
  for saved in "$@"; do
    rm -rf "$WORK/data" && mkdir -p "$WORK/data"
    cp -a "$saved/replica-$VICTIM" "$WORK/data/"
    sed "s#^data_dir = .*#data_dir = \"$WORK/data\"#" "$saved/cluster.toml" > "$WORK/cluster.toml"
    sync
    echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(date +%s.%N)
    "$B" server --config "$WORK/cluster.toml" --id "$VICTIM" > "$WORK/log" 2>&1 &
    P=$!
    for _ in $(seq 1000); do grep -q "replica started" "$WORK/log" && break; sleep 0.01; done
    line=$(grep -m1 "replica started" "$WORK/log" || true)
    [[ -n "$line" ]] || { echo "no start in 10 s; log: $(tail -3 "$WORK/log")" >&2; exit 1; }
    t1=$(date -d "$(echo "$line" | cut -d' ' -f1)" +%s.%N)
    kill -INT "$P"; wait "$P" 2>/dev/null || true; P=
    rec=$(grep -m1 "WAL recovered" "$WORK/log")
    f() { echo "$rec" | sed -n "s/.* $1=\([0-9]*\).*/\1/p"; }
    echo "$(basename "$saved"),$round,$(f wal_ms),$(f restore_ms),$(f entries_scanned),$(f mib_scanned),$(echo "$t1 - $t0" | bc)"
  done
done
