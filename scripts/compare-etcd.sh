#!/usr/bin/env bash
# mpaxos side by side with etcd on this machine: installs etcd and protoc if missing, builds
# mpaxos with the etcd target, starts a 3-member etcd cluster on loopback (its own data dirs)
# and 3-replica mpaxos clusters, runs identical workloads interleaved A B A B with repeats, with
# matching durability (fsync on for both; etcd without fsync against mpaxos `memory`), stops
# everything it started, and writes results/compare-etcd/ (report.md has the ratio table).
#
#   scripts/compare-etcd.sh            # full: 5 workloads x 2 durability modes x 3 repeats
#   scripts/compare-etcd.sh --quick    # smoke: 3 workloads, fsync mode, 1 repeat, 2 s runs
#   OUT=/tmp/cmp scripts/compare-etcd.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-etcd.sh
cargo build --release --features etcd
quick=()
out="${OUT:-results/compare-etcd}"
for arg in "$@"; do
  case "$arg" in
    --quick) quick=(--quick) ;;
    *) echo "usage: $0 [--quick]" >&2; exit 2 ;;
  esac
done
if [ ${#quick[@]} -gt 0 ] && [ -z "${OUT:-}" ]; then
  out="$(mktemp -d)/compare-etcd-quick"
fi
# Everything is a child of this process; make sure nothing outlives it.
trap 'pkill -P $$ 2>/dev/null || true' EXIT
target/release/mpaxos compare-etcd --out "$out" "${quick[@]}"
echo "report: $out/report.md"
