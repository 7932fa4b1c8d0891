#!/usr/bin/env bash
# Re-runs exactly the reference single runs of results/README.md (same command lines, same
# defaults) with the current load generator, then compares each with its recorded run:
#   mpaxos bench compare <recorded run> <new run>
# Run it on a quiet machine: every figure here is a single 10 s run on a shared VM.
#
#   scripts/reference-runs.sh                     # new runs under results/reference-rerun/<stamp>/
#   OUT=/tmp/rerun scripts/reference-runs.sh
#   MPAXOS=target/release/mpaxos scripts/reference-runs.sh   # skip the build
#
# Output: one directory per run under $OUT/<name>/, the suites under $OUT/suites/, and
# $OUT/compare.txt (also printed). SUITES=0 runs only the four single runs.
# What changed in the tool between the two sides (docs/internals/bench.md): open-loop sends on
# time, throughput = completions in the window, errors kept out of latencies, unique client ids,
# censored unfinished requests, the floor measured four times in the WAL's directory. These four
# runs are closed loop, so most of the difference should be noise plus the floor's new median.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MPAXOS:-}" ]; then
  cargo build --release
  MPAXOS=target/release/mpaxos
fi
ref=results/reference/bench
out="${OUT:-results/reference-rerun/$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$out"

# name | recorded run directory | the bench arguments recorded in its commands.txt (without --out)
runs=(
  "default|20261123T021137-7046-r3-g1-lan-auto-c16x1|"
  "1client|20261123T021150-5139-r3-g1-lan-auto-c1x1|--clients 1 --read-ratio 0.5"
  "64clients-writes|20261123T021202-8368-r3-g1-lan-auto-c64x1|--clients 64 --read-ratio 0"
  "1client-nospin|20261123T021215-7608-r3-g1-lan-auto-c1x1|--clients 1 --read-ratio 0.5 --spin-us 0"
)

: > "$out/compare.txt"
for entry in "${runs[@]}"; do
  IFS='|' read -r name old args <<< "$entry"
  if [ ! -f "$ref/$old/summary.json" ]; then
    echo "error: the recorded run $ref/$old is missing" >&2
    exit 1
  fi
  echo "== $name: $MPAXOS bench $args" >&2
  # shellcheck disable=SC2086  # $args is a list of flags
  "$MPAXOS" bench $args --out "$out/$name" > "$out/$name.txt"
  cat "$out/$name.txt"
  new=$(ls -d "$out/$name"/*/ | head -n 1)
  {
    echo "== $name (A = recorded $ref/$old, B = $new)"
    echo "   command: mpaxos bench $args"
    "$MPAXOS" bench compare "$ref/$old" "$new"
    echo
  } >> "$out/compare.txt"
done
# The suites recorded under results/reference/suites/, re-run with the same suite files
# (SUITES=0 skips them: about 10 minutes on 2 cores).
if [ "${SUITES:-1}" = 1 ]; then
  for suite in replicas knobs placements; do
    old=$(ls -d results/reference/suites/*-"$suite" 2>/dev/null | tail -n 1 || true)
    echo "== suite $suite: $MPAXOS suite scripts/suites/$suite.toml" >&2
    "$MPAXOS" suite "scripts/suites/$suite.toml" --out "$out/suites" > "$out/suite-$suite.txt"
    new=$(ls -d "$out/suites"/*-"$suite" | tail -n 1)
    if [ -n "$old" ]; then
      {
        echo "== suite $suite (A = recorded $old, B = $new)"
        echo "   command: mpaxos suite scripts/suites/$suite.toml"
        "$MPAXOS" bench compare "$old" "$new"
        echo
      } >> "$out/compare.txt"
    else
      echo "== suite $suite: no recorded run to compare with; new run in $new" >> "$out/compare.txt"
    fi
  done
fi

cat "$out/compare.txt"
echo "runs and compare.txt: $out" >&2
