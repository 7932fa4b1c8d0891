#!/usr/bin/env bash
# Soak run (issue 11, "Measure"): a local 3-replica cluster under `mpaxos bench` for DUR
# seconds while every replica's RSS and data-directory size are sampled every INTERVAL
# seconds into OUT/usage.csv (t_s,replica,rss_kib,data_bytes). With snapshots on, both should
# be flat after warm-up (bounded by snapshot_every_entries / snapshot_every_bytes), not grow
# with history. Compare the bench's throughput and p99 with a 60 s run of the same spec.
#
#   B=target/release/mpaxos DUR=600 scripts/soak.sh
#   B=target/release/mpaxos DUR=60  scripts/soak.sh      # the reference run
#
# Knobs (environment): B, DUR (600), CLIENTS (16), READ (0.5), VALUE (512), KEYS (1000),
# INTERVAL (5), OUT (results/soak-<utc time>), SNAP_ENTRIES / SNAP_BYTES (cluster.toml
# thresholds; unset: the defaults).
set -euo pipefail
B=${B:-target/release/mpaxos}
DUR=${DUR:-600}
CLIENTS=${CLIENTS:-16}
READ=${READ:-0.5}
VALUE=${VALUE:-512}
KEYS=${KEYS:-1000}
INTERVAL=${INTERVAL:-5}
OUT=${OUT:-results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
WORK=$(mktemp -d)
DIR=$WORK/cluster
mkdir -p "$OUT" "$DIR"

# A first start writes cluster.toml; set the thresholds in it, then start for real.
if [[ -n "${SNAP_ENTRIES:-}${SNAP_BYTES:-}" ]]; then
  "$B" cluster --replicas 3 --dir "$DIR" > "$OUT/cluster-init.out" 2>&1 &
  init=$!
  for _ in $(seq 100); do grep -q '^endpoints:' "$OUT/cluster-init.out" && break; sleep 0.2; done
  kill -INT "$init"; wait "$init" || true
  [[ -n "${SNAP_ENTRIES:-}" ]] && sed -i "s/^snapshot_every_entries = .*/snapshot_every_entries = $SNAP_ENTRIES/" "$DIR/cluster.toml"
  [[ -n "${SNAP_BYTES:-}" ]] && sed -i "s/^snapshot_every_bytes = .*/snapshot_every_bytes = $SNAP_BYTES/" "$DIR/cluster.toml"
fi

"$B" cluster --replicas 3 --dir "$DIR" > "$OUT/cluster.out" 2>&1 &
CLUSTER=$!
cleanup() {
  kill "${SAMPLER:-0}" 2>/dev/null || true
  kill -INT "$CLUSTER" 2>/dev/null || true
  wait "$CLUSTER" 2>/dev/null || true
  cp "$DIR"/cluster.toml "$DIR"/replica-*.log "$OUT/" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 150); do grep -q '^endpoints:' "$OUT/cluster.out" && break; sleep 0.2; done
EP=$(sed -n 's/^endpoints: //p' "$OUT/cluster.out")
[[ -n "$EP" ]] || { echo "the cluster did not start; see $OUT/cluster.out" >&2; exit 1; }

echo "t_s,replica,rss_kib,data_bytes" > "$OUT/usage.csv"
(
  start=$(date +%s)
  while kill -0 "$CLUSTER" 2>/dev/null; do
    t=$(( $(date +%s) - start ))
    for pid in $(pgrep -P "$CLUSTER" || true); do
      id=$(tr '\0' ' ' < "/proc/$pid/cmdline" | sed -n 's/.*--id \([0-9]*\).*/\1/p')
      [[ -n "$id" ]] || continue
      rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
      bytes=$(du -sb "$DIR/replica-$id" 2>/dev/null | cut -f1)
      echo "$t,$id,$rss,${bytes:-0}"
    done >> "$OUT/usage.csv"
    sleep "$INTERVAL"
  done
) &
SAMPLER=$!

"$B" bench --endpoints "$EP" --duration "$DUR" --clients "$CLIENTS" --read-ratio "$READ" \
  --value-size "$VALUE" --keys "$KEYS" --out "$OUT/runs" --label "soak-${DUR}s"
echo "usage samples: $OUT/usage.csv"
