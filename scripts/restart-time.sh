#!/usr/bin/env bash
# Restart time (issue 11, "Measure"): a local 3-replica cluster takes WRITE_S seconds of
# 64-byte puts over KEYS keys (`mpaxos bench --read-ratio 0`), then replica 2 is killed with
# SIGKILL, stopped for DOWN_S seconds (more writes meanwhile if DOWN_LOAD=1) and started again.
# Prints, as one CSV line appended to OUT/restart.csv:
#   history_slots,down_s,recover_s,caught_up_s,snapshot_slot,installed,history_writes,
#   kill_slots,data_bytes,wal_ms,restore_ms,mib_scanned,kill_wal_bytes,cold
# (history_writes: writes of the WRITE_S phase; kill_slots, kill_wal_bytes: the victim's
# log_slots and wal_retained_bytes gauges at the kill; data_bytes: its data directory then;
# wal_ms/restore_ms/mib_scanned: what its "WAL recovered" log line reports; cold: 1 if the page
# cache was dropped before the restart, which needs root). A new OUT per run: rows are
# appended under the header of the first.
# recover_s: start to "replica started" (WAL + snapshot recovery; from the log line's own
# timestamp, not from when this script's polling noticed it); caught_up_s: start to
# applied >= the leader's commit. With snapshots the restart time must not depend on how much
# history the cluster has (compare WRITE_S giving ~1M and ~10M writes), and at 100k keys of
# 64 B stay under 2 s; a follower down 5 minutes (DOWN_S=300 DOWN_LOAD=1) must serve again
# within 10 s.
#
#   B=target/release/mpaxos WRITE_S=120 scripts/restart-time.sh
#   B=target/release/mpaxos WRITE_S=60 DOWN_S=300 DOWN_LOAD=1 scripts/restart-time.sh
#
# Recovery replays the log since the newest snapshot, so where in the snapshot cycle the kill
# falls sets its length. KILL_AT_SLOTS=N makes runs comparable: after the history, the load goes
# on until the victim holds N slots above its log floor (its `mpaxos_log_slots` gauge, having
# first seen it below N, i.e. after a snapshot), and the victim is killed then. The floor trails
# the snapshot by `snapshot_trail_slots` (1,000), so the suffix replayed is about N - 1,000; N
# must be above that, and below what `snapshot_every_bytes` lets a log reach.
#   B=target/release/mpaxos WRITE_S=300 CLIENTS=64 KILL_AT_SLOTS=20000 scripts/restart-time.sh
# KILL_AT_WAL_MIB=M instead kills when the victim's WAL a restart would read (its
# `mpaxos_wal_retained_bytes` gauge) reaches M MiB after a release: slots differ in WAL bytes
# from run to run (how many share a group-commit write), and a restart reads bytes.
#   B=target/release/mpaxos WRITE_S=350 CLIENTS=64 KILL_AT_WAL_MIB=80 scripts/restart-time.sh
# KEEP_DATA=DIR also saves the victim's data directory at the kill (see scripts/recovery-time.sh).
set -euo pipefail
B=${B:-target/release/mpaxos}
WRITE_S=${WRITE_S:-60}
DOWN_S=${DOWN_S:-1}
DOWN_LOAD=${DOWN_LOAD:-0}
KEYS=${KEYS:-100000}
CLIENTS=${CLIENTS:-16}
KILL_AT_SLOTS=${KILL_AT_SLOTS:-0}
KILL_AT_WAL_MIB=${KILL_AT_WAL_MIB:-0}
KEEP_DATA=${KEEP_DATA:-}
OUT=${OUT:-results/restart-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=$(mktemp -d)
DIR=$WORK/cluster
mkdir -p "$OUT" "$DIR"
"$B" cluster --replicas 3 --dir "$DIR" > "$OUT/cluster.out" 2>&1 &
CLUSTER=$!
cleanup() {
  [[ -n "${TAIL:-}" ]] && { pkill -TERM -P "$TAIL" 2>/dev/null || true; }
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
[[ -n "$pid" ]] || { echo "replica $victim is not running; see $OUT/cluster.out" >&2; exit 1; }
kill_slots=""
kill_at=""
kill_wal=""
if [[ "$KILL_AT_SLOTS" -gt 0 && "$KILL_AT_WAL_MIB" -gt 0 ]]; then
  echo "KILL_AT_SLOTS and KILL_AT_WAL_MIB exclude each other" >&2; exit 1
fi
if [[ "$KILL_AT_SLOTS" -gt 0 || "$KILL_AT_WAL_MIB" -gt 0 ]]; then
  admin=$(sed -n "s/.*replica started replica=$victim .*admin=\([^ ]*\).*/\1/p" "$DIR/replica-$victim.log" | tail -1)
  [[ -n "$admin" ]] || { echo "no admin endpoint in replica-$victim.log" >&2; exit 1; }
  if [[ "$KILL_AT_SLOTS" -gt 0 ]]; then metric=log_slots; limit=$KILL_AT_SLOTS
  else metric=wal_retained_bytes; limit=$((KILL_AT_WAL_MIB << 20)); fi
  gauge() { { curl -s -m 1 "http://$admin/metrics" || true; } | sed -n "s/^mpaxos_${1:-$metric}{group=\"0\"} \([0-9]*\).*/\1/p"; }
  load 3600 tail &
  TAIL=$!
  seen_below=0
  give_up=$((SECONDS + 300))
  while [[ $SECONDS -lt $give_up ]]; do
    n=$(gauge); n=${n:-0}
    if [[ "$n" -lt "$limit" ]]; then seen_below=1
    elif [[ "$seen_below" == 1 ]]; then kill_at=$n; break; fi
    sleep 0.01
  done
  [[ -n "$kill_at" ]] || { echo "the victim's $metric never reached $limit in 300 s (a snapshot, snapshot_every_bytes, may come first: use less)" >&2; exit 1; }
  # Both gauges as the kill finds them (the one not watched is read just now).
  if [[ "$metric" == log_slots ]]; then kill_slots=$kill_at; kill_wal=$(gauge wal_retained_bytes)
  else kill_wal=$kill_at; kill_slots=$(gauge log_slots); fi
fi
kill -KILL "$pid"
if [[ -n "${TAIL:-}" ]]; then
  # (a background job of a script ignores SIGINT)
  pkill -TERM -P "$TAIL" 2>/dev/null || true
  wait "$TAIL" 2>/dev/null || true
fi
data_bytes=$(du -sb "$DIR/replica-$victim" 2>/dev/null | cut -f1 || echo "?")
if [[ -n "$KEEP_DATA" ]]; then
  # The victim's data directory as the kill left it, for scripts/recovery-time.sh (which
  # times recoveries of saved directories side by side). Copying reads every file into the
  # page cache: drop it again, so this restart starts as cold as one without the copy.
  mkdir -p "$KEEP_DATA"
  cp -a "$DIR/replica-$victim" "$KEEP_DATA/"
  cp "$DIR/cluster.toml" "$KEEP_DATA/"
fi
# Every restart starts cold: the log was written with O_DIRECT (never cached), but the snapshot
# files went through the page cache (needs root; skipped otherwise).
sync
cold=0
{ echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null && cold=1 || true
if [[ "$DOWN_LOAD" == 1 ]]; then load "$DOWN_S" while-down; else sleep "$DOWN_S"; fi
history=$(status | field L commit)
log=$DIR/replica-$victim.log
lines_before=$(wc -l < "$log")
t0=$(date +%s.%N)
"$B" server --config "$DIR/cluster.toml" --id "$victim" >> "$log" 2>&1 &
RESTARTED=$!
started_at=""
while :; do
  now=$(date +%s.%N)
  if [[ -z "$started_at" ]]; then
    line=$(tail -n +"$((lines_before + 1))" "$log" | grep -m1 "replica started" || true)
    # The log's RFC 3339 UTC timestamp, as seconds since the epoch.
    [[ -n "$line" ]] && started_at=$(date -d "$(echo "$line" | cut -d' ' -f1)" +%s.%N)
  fi
  st=$(status)
  applied=$(echo "$st" | field "$victim" applied)
  commit=$(echo "$st" | field L commit)
  if [[ -n "$applied" && -n "$commit" && "$applied" -ge "$commit" && "$commit" -gt 0 ]]; then
    caught_up_s=$(echo "$now - $t0" | bc); break
  fi
  sleep 0.05
done
recover_s=""
[[ -n "$started_at" ]] && recover_s=$(echo "$started_at - $t0" | bc)
snap=$(tail -n +"$((lines_before + 1))" "$log" | sed -n 's/.*snapshot_slot=\([0-9]*\).*/\1/p' | head -1)
installed=$(tail -n +"$((lines_before + 1))" "$log" | grep -c "installed a peer's snapshot" || true)
wal_ms=$(tail -n +"$((lines_before + 1))" "$log" | sed -n 's/.*wal_ms=\([0-9]*\).*/\1/p' | head -1)
restore_ms=$(tail -n +"$((lines_before + 1))" "$log" | sed -n 's/.*restore_ms=\([0-9]*\).*/\1/p' | head -1)
mib_scanned=$(tail -n +"$((lines_before + 1))" "$log" | sed -n 's/.*mib_scanned=\([0-9.]*\).*/\1/p' | head -1)
writes=$(sed -n 's/.* \([0-9]*\) requests completed.*/\1/p' "$OUT/history.out" | head -1)
[[ -f "$OUT/restart.csv" ]] || echo "history_slots,down_s,recover_s,caught_up_s,snapshot_slot,installed,history_writes,kill_slots,data_bytes,wal_ms,restore_ms,mib_scanned,kill_wal_bytes,cold" > "$OUT/restart.csv"
echo "$history,$DOWN_S,${recover_s:-?},$caught_up_s,${snap:-0},$installed,${writes:-?},${kill_slots:-?},$data_bytes,${wal_ms:-?},${restore_ms:-?},${mib_scanned:-?},${kill_wal:-?},$cold" | tee -a "$OUT/restart.csv"
