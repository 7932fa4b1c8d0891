#!/usr/bin/env bash
# Runs an `mpaxos suite` against the cluster scripts/deploy.sh deployed from HOSTS_FILE.
#
#   scripts/run-suite-remote.sh HOSTS_FILE SUITE_FILE [mpaxos suite args: --duration S --warmup S --repeats N --out DIR]
#
# `mpaxos suite` starts a local cluster for every run unless the run's spec has `endpoints`, so
# this writes a copy of SUITE_FILE with the deployed cluster's endpoints added to [base], then
# runs `mpaxos suite` on the copy. The copy is kept (RUN_DIR/suites/NAME.remote.toml, and the
# suite directory's suite.toml), with the changes listed at its top.
#
# Knobs that configure the servers cannot vary per run against a cluster that is already
# running, so they are removed, each with a warning:
#   replicas, groups, durability, batch_max_ops, batch_max_bytes, batch_delay_us,
#   pipeline_depth  -> set from the deployed cluster.toml instead (so the run's spec.json says
#                      what actually ran); to compare them, redeploy (MPAXOS_DURABILITY=...,
#                      MPAXOS_CONFIG_EXTRA with [batching], more hosts) and run the suite again
#   placement        -> in-process WAN emulation exists only for local clusters (servers and
#                       load generator delay messages themselves); on real hosts use real
#                       distance or netem (docs/deploy.md)
# A matrix axis whose values set any of them is dropped as a whole (its client-side settings
# too; the warning names them), and `load_axis` with it if it named that axis.
#
# Environment: MPAXOS_RUN_DIR (default results/deploy/<hosts file name>, as deploy.sh),
# MPAXOS_BINARY (default target/release/mpaxos).
set -euo pipefail

PROG=run-suite-remote.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() {
  echo "$PROG: error: $*" >&2
  exit 1
}
if [[ $# -lt 2 || $1 == -h || $1 == --help ]]; then
  sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
HOSTS_FILE=$1
SUITE_FILE=$2
shift 2
[[ -f $HOSTS_FILE ]] || die "hosts file $HOSTS_FILE does not exist"
[[ -f $SUITE_FILE ]] || die "suite file $SUITE_FILE does not exist"

if [[ -n ${MPAXOS_RUN_DIR:-} ]]; then
  RUN_DIR=$MPAXOS_RUN_DIR
else
  base=$(basename "$HOSTS_FILE")
  RUN_DIR=$REPO/results/deploy/${base%.*}
fi
ENV_FILE=$RUN_DIR/deploy.env
[[ -f $ENV_FILE && -f $RUN_DIR/cluster.toml ]] ||
  die "no deployment in $RUN_DIR: run scripts/deploy.sh $HOSTS_FILE start first (or set MPAXOS_RUN_DIR)"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
BINARY=${MPAXOS_BINARY:-${CARGO_TARGET_DIR:-$REPO/target}/release/mpaxos}
[[ -x $BINARY ]] || die "no mpaxos binary at $BINARY: cargo build --release, or set MPAXOS_BINARY"

# deploy.env is read, not sourced.
env_get() { sed -n "s/^$1=//p" "$ENV_FILE" | tail -n 1; }
ENDPOINTS=$(env_get MPAXOS_ENDPOINTS)
REPLICAS=$(env_get DEPLOY_REPLICAS)
GROUPS_N=$(env_get DEPLOY_GROUPS)
DURABILITY=$(env_get DEPLOY_DURABILITY)
[[ -n $ENDPOINTS && -n $REPLICAS && -n $GROUPS_N && -n $DURABILITY ]] || die "$ENV_FILE is incomplete"

deployed_hosts=$(env_get DEPLOY_HOSTS_FILE | tr -d "'")
given_hosts="$(cd "$(dirname "$HOSTS_FILE")" && pwd)/$(basename "$HOSTS_FILE")"
if [[ -n $deployed_hosts && $deployed_hosts != "$given_hosts" ]]; then
  echo "$PROG: warning: $RUN_DIR was deployed from $deployed_hosts, not $given_hosts" >&2
fi

echo "cluster: $ENDPOINTS ($REPLICAS replicas, $GROUPS_N groups, durability $DURABILITY)"
if ! "$BINARY" status --endpoints "$ENDPOINTS" --timeout-ms 3000 >/dev/null 2>&1; then
  die "the cluster at $ENDPOINTS does not answer for every replica; see: scripts/deploy.sh $HOSTS_FILE status"
fi

# The deployed [batching] values, so each run's spec records what the servers actually use.
BATCHING=$(awk '
  /^[ \t]*\[/ { sec = $0; gsub(/[ \t\[\]]/, "", sec); next }
  sec == "batching" && /^[ \t]*(batch_max_ops|batch_max_bytes|batch_delay_us|pipeline_depth)[ \t]*=/ {
    line = $0; sub(/#.*/, "", line); gsub(/[ \t]+/, " ", line); sub(/^ /, "", line); sub(/ $/, "", line)
    printf "%s\\n", line
  }' "$RUN_DIR/cluster.toml")

EP_TOML="[$(tr ',' '\n' <<<"$ENDPOINTS" | sed 's/.*/"&"/' | paste -sd, - | sed 's/,/, /g')]"

mkdir -p "$RUN_DIR/suites"
suite_base=$(basename "$SUITE_FILE")
OUT=$RUN_DIR/suites/${suite_base%.toml}.remote.toml

# The rewrite. TOML statements may span lines (arrays, inline tables); brackets inside strings
# and comments do not count.
awk -v endpoints="$EP_TOML" -v replicas="$REPLICAS" -v groups="$GROUPS_N" \
  -v durability="$DURABILITY" -v batching="$BATCHING" -v src="$SUITE_FILE" -v rundir="$RUN_DIR" '
function delta(s,    i, c, d, q) {
  d = 0; q = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (q != "") {
      if (q == "\"" && c == "\\") { i++; continue }
      if (c == q) q = ""
      continue
    }
    if (c == "\"" || c == "\047") { q = c; continue }
    if (c == "#") break
    if (c == "[" || c == "{") d++
    if (c == "]" || c == "}") d--
  }
  return d
}
function warn(msg) {
  print "run-suite-remote.sh: warning: " msg > "/dev/stderr"
  notes[++nnotes] = msg
}
BEGIN {
  nserver = split("replicas groups durability placement batch_max_ops batch_max_bytes batch_delay_us pipeline_depth endpoints", sk, " ")
  for (i = 1; i <= nserver; i++) server[sk[i]] = 1
  n = 0; sect = ""; open_stmt = 0
}
{
  line = $0
  if (open_stmt) {
    text[n] = text[n] "\n" line
    depth += delta(line)
    if (depth <= 0) open_stmt = 0
    next
  }
  n++
  sec[n] = sect
  text[n] = line
  if (line ~ /^[ \t]*\[[^\[]/) {
    kind[n] = "header"
    s = line; sub(/#.*/, "", s); gsub(/[ \t\[\]"]/, "", s)
    sect = s; sec[n] = s
    if (s == "base") have_base = 1
    next
  }
  if (line ~ /^[ \t]*"?[A-Za-z0-9_.-]+"?[ \t]*=/) {
    kind[n] = "stmt"
    k = line; sub(/=.*/, "", k); gsub(/[ \t"]/, "", k)
    key[n] = k
    depth = delta(line)
    if (depth > 0) open_stmt = 1
    next
  }
  kind[n] = "raw"
}
END {
  for (i = 1; i <= n; i++) {
    if (kind[i] != "stmt") continue
    k = key[i]
    if (sec[i] == "base" && (k in server)) {
      drop[i] = 1
      if (k == "placement") warn("[base] " k " removed: placement emulation only works on local clusters; use netem on the hosts (docs/deploy.md)")
      else if (k != "endpoints") warn("[base] " k " removed: the deployed cluster decides it")
    }
    if (sec[i] == "matrix") {
      axes++
      why = ""
      if (k in server) why = k
      else {
        v = text[i]; sub(/^[^=]*=/, "", v)
        for (j = 1; j <= nserver; j++)
          if (match(v, "[{,][ \t\n]*\"?" sk[j] "\"?[ \t]*=")) why = why (why == "" ? "" : ", ") sk[j]
      }
      if (why != "") {
        drop[i] = 1; dropped_axis[k] = 1
        if (why ~ /placement/) warn("[matrix] axis " k " dropped (sets " why "): placement emulation only works on local clusters; use netem on the hosts (docs/deploy.md)")
        else warn("[matrix] axis " k " dropped (sets " why "): server-side; redeploy with other settings to compare them")
        dropped_axes++
      }
    }
  }
  if (axes > 0 && dropped_axes == axes) warn("every matrix axis was server-side: the suite is one cell (x repeats) against the deployed cluster")
  for (i = 1; i <= n; i++) {
    if (kind[i] != "stmt" || sec[i] != "") continue
    v = text[i]; sub(/^[^=]*=[ \t]*/, "", v)
    if (key[i] == "load_axis") {
      a = v; sub(/#.*/, "", a); gsub(/[ \t"]/, "", a)
      if (a in dropped_axis) { drop[i] = 1; warn("load_axis " a " removed with its axis") }
    }
    if (key[i] == "name" && match(v, /"[^"]*"/)) {
      text[i] = "name = \"" substr(v, RSTART + 1, RLENGTH - 2) "-remote\""
    }
  }
  print "# Generated by scripts/run-suite-remote.sh from " src
  print "# for the cluster deployed in " rundir "."
  for (i = 1; i <= nnotes; i++) print "# - " notes[i]
  print ""
  added = "# Added by run-suite-remote.sh: the deployed cluster.\nendpoints = " endpoints \
    "\nreplicas = " replicas "\ngroups = " groups "\ndurability = \"" durability "\""
  if (batching != "") added = added "\n" batching
  sub(/\n$/, "", added)
  in_base = 0
  for (i = 1; i <= n; i++) {
    if (kind[i] == "header") {
      if (in_base) { print added; print ""; in_base = 0; done = 1 }
      if (sec[i] == "base") in_base = 1
    }
    if (!drop[i]) print text[i]
  }
  if (in_base) { print added; done = 1 }
  if (!done) { print ""; print "[base]"; print added }
}' "$SUITE_FILE" >"$OUT"

echo "suite for the deployed cluster: $OUT"
echo "running: $BINARY suite $OUT $*"
printf '[%s] %s suite %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$BINARY" "$OUT" "$*" >>"$RUN_DIR/commands.log"
"$BINARY" suite "$OUT" "$@"
echo "server logs: scripts/deploy.sh $HOSTS_FILE collect --run-dir $RUN_DIR"
