#!/usr/bin/env bash
# shellcheck disable=SC2016 # remote scripts are single-quoted on purpose: they expand on the host
# Deploys an mpaxos cluster onto several hosts and manages it.
#
#   scripts/deploy.sh HOSTS_FILE start   [--run-dir DIR]   build, write cluster.toml, copy, start, wait
#   scripts/deploy.sh HOSTS_FILE stop    [--run-dir DIR]   SIGTERM every replica, wait, SIGKILL if stuck
#   scripts/deploy.sh HOSTS_FILE status  [--run-dir DIR]   processes + `mpaxos status`
#   scripts/deploy.sh HOSTS_FILE collect [--run-dir DIR]   logs, status.json, /metrics into DIR
#   scripts/deploy.sh HOSTS_FILE wipe    [--run-dir DIR]   delete the (stopped) replicas' data
#   scripts/deploy.sh HOSTS_FILE endpoints [--run-dir DIR] print the client endpoints
#   scripts/deploy.sh HOSTS_FILE config  [--run-dir DIR]   only write DIR/cluster.toml (e.g. for systemd)
#
# The hosts file: one replica per line, in replica-id order (0, 1, 2, ...); `#` starts a comment.
#
#   ADDRESS [REGION] [ssh=TARGET] [cpus=auto|off|C0,C1,...]
#
#   ADDRESS  what the replica binds and what peers and clients dial (an IPv4 address or a host
#            name that resolves to one of the host's own addresses; never 0.0.0.0)
#   REGION   a label shown by `mpaxos status` (default "local"); it does not add delay
#   ssh=     what {host} expands to in MPAXOS_REMOTE_CMD / MPAXOS_COPY_CMD (default: ADDRESS),
#            e.g. ssh=ubuntu@ec2-1-2-3-4.compute.amazonaws.com, or a network namespace name
#   cpus=    this replica's pinning (default $MPAXOS_CPUS): one core per group, "auto" or "off"
#
# A host may appear more than once; its replicas then get disjoint port ranges.
#
# Environment (defaults in brackets):
#   MPAXOS_GROUPS [1]            Paxos groups per replica
#   MPAXOS_DURABILITY [auto]     auto | uring | sync | memory
#   MPAXOS_BASE_PORT [7000]      replica k on a host: clients base+k(3G+1) .. +G-1, peers +G, admin +2G
#   MPAXOS_REMOTE_DIR [mpaxos-deploy]
#                                where binary, config, logs, pid files and data go on each host;
#                                relative = relative to the remote login directory. May use
#                                {host} {addr} {id} {region} (e.g. a per-host directory when all
#                                "hosts" share one file system, as in the netns test)
#   MPAXOS_DATA_DIR [data]       cluster.toml's data_dir; relative = inside MPAXOS_REMOTE_DIR
#   MPAXOS_CLUSTER_ID [derived]  default: a hash of the addresses, ports, groups and remote dir,
#                                so a restart reuses the replicas' data; set it (or `wipe`) for a
#                                fresh cluster
#   MPAXOS_CPUS [auto]           default pinning of every replica
#   MPAXOS_MAX_RTT_MS            the largest RTT between two hosts (ms); when set, timeouts become
#                                heartbeat 50 ms, election 4*RTT+500 .. 8*RTT+1000 ms (the rule
#                                `mpaxos bench --placement` uses)
#   MPAXOS_PREFERRED_LEADER      a replica id that should win elections
#   MPAXOS_CONFIG_EXTRA          a TOML fragment file appended to the top of cluster.toml (e.g.
#                                a [batching] table)
#   MPAXOS_BINARY                use this binary instead of running `cargo build --release`
#   MPAXOS_RUST_LOG              RUST_LOG for the replicas (default: the server's `info`)
#   MPAXOS_START_TIMEOUT [30]    seconds to wait for each replica to start and for leaders
#   MPAXOS_STOP_TIMEOUT [10]     seconds between SIGTERM and SIGKILL
#   MPAXOS_RUN_DIR               default for --run-dir [results/deploy/<hosts file name>]
#   MPAXOS_REMOTE_CMD [ssh -o BatchMode=yes -o ConnectTimeout=10 {host}]
#                                a command prefix that runs a command on a host; deploy.sh
#                                appends `sh -s` and writes a POSIX sh script to its stdin
#   MPAXOS_COPY_CMD [scp -q {src} {host}:{dst}]
#                                copies local file {src} to {dst} on a host
#
# Placeholders in MPAXOS_REMOTE_CMD, MPAXOS_COPY_CMD and MPAXOS_REMOTE_DIR: {host} (the ssh=
# target), {addr} (ADDRESS), {id} (replica id), {region}; {src} and {dst} in MPAXOS_COPY_CMD.
# Each is replaced by its value, shell-quoted, and the result is run with `eval`, so the templates
# may themselves use shell quoting. Local test example (scripts/test-deploy-netns.sh):
#   MPAXOS_REMOTE_CMD='ip netns exec {host}' MPAXOS_COPY_CMD='cp {src} {dst}' \
#   MPAXOS_REMOTE_DIR=/tmp/mpx/{host} scripts/deploy.sh hosts.txt start
#
# The run directory gets cluster.toml (as deployed), replicas.tsv (the layout), deploy.env
# (MPAXOS_ENDPOINTS=... for `source`), endpoints, commands.log (every command run, with the
# remote scripts) and, after `collect`, logs/replica-N.log, status.json and metrics/.
#
# Docs: docs/deploy.md.
set -euo pipefail

PROG=deploy.sh
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "$PROG: error: $*" >&2
  exit 1
}
warn() { echo "$PROG: warning: $*" >&2; }
usage() {
  sed -n '3,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  echo "Hosts file format, environment and placeholders: the header of $0 or docs/deploy.md." >&2
  exit 2
}

# ---------------------------------------------------------------------------------------------
# Arguments and settings

[[ $# -ge 2 ]] || usage
HOSTS_FILE=$1
ACTION=$2
shift 2
RUN_DIR=${MPAXOS_RUN_DIR:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --run-dir) [[ $# -ge 2 ]] || usage; RUN_DIR=$2; shift 2 ;;
    --run-dir=*) RUN_DIR=${1#--run-dir=}; shift ;;
    -h | --help) usage ;;
    *) echo "$PROG: unknown argument: $1" >&2; usage ;;
  esac
done
case $ACTION in
  start | stop | status | collect | wipe | endpoints | config) ;;
  *) echo "$PROG: unknown action: $ACTION" >&2; usage ;;
esac
[[ -f $HOSTS_FILE ]] || die "hosts file $HOSTS_FILE does not exist"

GROUPS_N=${MPAXOS_GROUPS:-1}
DURABILITY=${MPAXOS_DURABILITY:-auto}
BASE_PORT=${MPAXOS_BASE_PORT:-7000}
REMOTE_DIR=${MPAXOS_REMOTE_DIR:-mpaxos-deploy}
DATA_DIR=${MPAXOS_DATA_DIR:-data}
DEFAULT_CPUS=${MPAXOS_CPUS:-auto}
START_TIMEOUT=${MPAXOS_START_TIMEOUT:-30}
STOP_TIMEOUT=${MPAXOS_STOP_TIMEOUT:-10}
DEFAULT_REMOTE_CMD='ssh -o BatchMode=yes -o ConnectTimeout=10 {host}'
DEFAULT_COPY_CMD='scp -q {src} {host}:{dst}'
REMOTE_CMD=${MPAXOS_REMOTE_CMD:-$DEFAULT_REMOTE_CMD}
COPY_CMD=${MPAXOS_COPY_CMD:-$DEFAULT_COPY_CMD}

# in_range VALUE MIN MAX: VALUE is a decimal number in [MIN, MAX].
in_range() { [[ $1 =~ ^[0-9]{1,9}$ ]] && ((10#$1 >= $2 && 10#$1 <= $3)); }
in_range "$GROUPS_N" 1 256 || die "MPAXOS_GROUPS must be 1..256, got '$GROUPS_N'"
GROUPS_N=$((10#$GROUPS_N))
case $DURABILITY in auto | uring | sync | memory) ;; *)
  die "MPAXOS_DURABILITY must be auto, uring, sync or memory, got '$DURABILITY'" ;;
esac
in_range "$BASE_PORT" 1 65535 || die "MPAXOS_BASE_PORT must be a port number, got '$BASE_PORT'"
BASE_PORT=$((10#$BASE_PORT))
in_range "$START_TIMEOUT" 1 86400 || die "MPAXOS_START_TIMEOUT must be whole seconds"
in_range "$STOP_TIMEOUT" 0 86400 || die "MPAXOS_STOP_TIMEOUT must be whole seconds"
START_TIMEOUT=$((10#$START_TIMEOUT))
STOP_TIMEOUT=$((10#$STOP_TIMEOUT))
# `~/x` means x in the login directory, which is what a relative path already means for both
# ssh and scp; a quoted `~` would not be expanded remotely.
REMOTE_DIR=${REMOTE_DIR#\~/}
[[ -n $REMOTE_DIR && $REMOTE_DIR != "~" ]] || die "MPAXOS_REMOTE_DIR must name a directory"

if [[ -z $RUN_DIR ]]; then
  base=$(basename "$HOSTS_FILE")
  RUN_DIR=$REPO/results/deploy/${base%.*}
fi
# Made absolute (and created) once the hosts file parsed.
CMDLOG=/dev/null

# The local binary: built for `start`, reused (for `mpaxos status`) by the other actions.
if [[ -n ${MPAXOS_BINARY:-} ]]; then
  BINARY=$MPAXOS_BINARY
else
  BINARY=${CARGO_TARGET_DIR:-$REPO/target}/release/mpaxos
fi

# ---------------------------------------------------------------------------------------------
# Helpers

stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

cmdlog() { printf '[%s] %s\n' "$(stamp)" "$*" >>"$CMDLOG"; }

# Shell-quotes one value (unquoted when it is plainly safe, so logs stay readable).
shq() {
  if [[ $1 =~ ^[A-Za-z0-9_./:@%+=,-]+$ ]]; then
    printf '%s' "$1"
  else
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
  fi
}

# expand TEMPLATE NAME VALUE [NAME VALUE ...]: replaces {NAME} by VALUE, shell-quoted.
expand() {
  local out=$1 k v
  shift
  while [[ $# -ge 2 ]]; do
    k=$1
    v=$(shq "$2")
    out=${out//"{$k}"/"$v"}
    shift 2
  done
  printf '%s' "$out"
}

# The same, without quoting (for MPAXOS_REMOTE_DIR, which becomes a path, not shell text).
expand_raw() {
  local out=$1 k v
  shift
  while [[ $# -ge 2 ]]; do
    k=$1
    v=$2
    out=${out//"{$k}"/"$v"}
    shift 2
  done
  printf '%s' "$out"
}

# ---------------------------------------------------------------------------------------------
# The hosts file -> the layout (arrays indexed by replica id)

R_ADDR=()
R_REGION=()
R_SSH=()
R_CPUS=()
R_DIR=()
R_CLIENT=()
R_PEER=()
R_ADMIN=()

parse_hosts() {
  local lineno=0 line tok addr region ssh cpus
  local -a f
  local -A per_host=()
  while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    line=${line%%#*}
    read -ra f <<<"$line" || true
    [[ ${#f[@]} -gt 0 ]] || continue
    addr=${f[0]}
    region=""
    ssh=$addr
    cpus=$DEFAULT_CPUS
    for tok in "${f[@]:1}"; do
      case $tok in
        ssh=*) ssh=${tok#ssh=} ;;
        cpus=*) cpus=${tok#cpus=} ;;
        *=*) die "$HOSTS_FILE:$lineno: unknown option '${tok%%=*}=' (known: ssh=, cpus=)" ;;
        *)
          [[ -z $region ]] || die "$HOSTS_FILE:$lineno: more than one region ('$region', '$tok')"
          region=$tok
          ;;
      esac
    done
    [[ $addr =~ ^[A-Za-z0-9._-]+$ ]] ||
      die "$HOSTS_FILE:$lineno: '$addr' is not an IPv4 address or host name"
    [[ $addr != 0.0.0.0 ]] ||
      die "$HOSTS_FILE:$lineno: 0.0.0.0 cannot be dialled; use the host's own address"
    [[ $region =~ ^[A-Za-z0-9._-]*$ ]] ||
      die "$HOSTS_FILE:$lineno: region '$region' may use letters, digits, '.', '_' and '-'"
    [[ -n $ssh ]] || die "$HOSTS_FILE:$lineno: empty ssh="
    case $cpus in
      auto | off) ;;
      *)
        [[ $cpus =~ ^[0-9]+(,[0-9]+)*$ ]] ||
          die "$HOSTS_FILE:$lineno: cpus must be auto, off or a list like 0,1 (got '$cpus')"
        local n_cpus
        n_cpus=$(tr ',' '\n' <<<"$cpus" | wc -l)
        [[ $n_cpus -eq $GROUPS_N ]] ||
          die "$HOSTS_FILE:$lineno: cpus lists $n_cpus cores for $GROUPS_N groups (MPAXOS_GROUPS)"
        ;;
    esac
    local id=${#R_ADDR[@]}
    local slot=${per_host[$addr]:-0}
    per_host[$addr]=$((slot + 1))
    local client=$((BASE_PORT + slot * (3 * GROUPS_N + 1)))
    ((client + 3 * GROUPS_N <= 65535)) ||
      die "$HOSTS_FILE:$lineno: ports from $client for $GROUPS_N groups run past 65535"
    R_ADDR+=("$addr")
    R_REGION+=("$region")
    R_SSH+=("$ssh")
    R_CPUS+=("$cpus")
    R_CLIENT+=("$client")
    R_PEER+=("$((client + GROUPS_N))")
    R_ADMIN+=("$((client + 2 * GROUPS_N))")
    R_DIR+=("$(expand_raw "$REMOTE_DIR" host "$ssh" addr "$addr" id "$id" region "${region:-local}")")
  done <"$HOSTS_FILE"
  local n=${#R_ADDR[@]}
  ((n >= 1 && n <= 9)) || die "$HOSTS_FILE lists $n replicas; mpaxos supports 1 to 9"
  if [[ -n ${MPAXOS_PREFERRED_LEADER:-} ]]; then
    in_range "$MPAXOS_PREFERRED_LEADER" 0 $((n - 1)) ||
      die "MPAXOS_PREFERRED_LEADER must be a replica id 0..$((n - 1))"
  fi
}

layout_tsv() {
  local i
  printf '# id\taddress\tssh\tregion\tremote_dir\tclient_port\tpeer_port\tadmin_port\n'
  for i in "${!R_ADDR[@]}"; do
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "${R_ADDR[i]}" "${R_SSH[i]}" \
      "${R_REGION[i]:--}" "${R_DIR[i]}" "${R_CLIENT[i]}" "${R_PEER[i]}" "${R_ADMIN[i]}"
  done
}

# The other actions act on what `start` deployed (replicas.tsv), not on a since-edited hosts file.
load_deployed_layout() {
  local tsv=$RUN_DIR/replicas.tsv
  [[ -f $tsv ]] || return 0
  if [[ "$(layout_tsv)" != "$(cat "$tsv")" ]]; then
    warn "the hosts file or MPAXOS_* settings changed since start; acting on the deployed layout in $tsv"
  fi
  R_ADDR=() R_REGION=() R_SSH=() R_DIR=() R_CLIENT=() R_PEER=() R_ADMIN=()
  local id addr ssh region dir client peer admin
  while IFS=$'\t' read -r id addr ssh region dir client peer admin; do
    [[ $id == \#* ]] && continue
    [[ $region == - ]] && region=""
    R_ADDR+=("$addr") R_SSH+=("$ssh") R_REGION+=("$region") R_DIR+=("$dir")
    R_CLIENT+=("$client") R_PEER+=("$peer") R_ADMIN+=("$admin")
  done <"$tsv"
  if [[ -f $RUN_DIR/deploy.env ]]; then
    GROUPS_N=$(sed -n 's/^DEPLOY_GROUPS=//p' "$RUN_DIR/deploy.env")
  fi
}

endpoints() {
  local i out=""
  for i in "${!R_ADDR[@]}"; do
    out+="${out:+,}${R_ADDR[i]}:${R_CLIENT[i]}"
  done
  printf '%s' "$out"
}

# ---------------------------------------------------------------------------------------------
# cluster.toml

cluster_id() {
  if [[ -n ${MPAXOS_CLUSTER_ID:-} ]]; then
    [[ $MPAXOS_CLUSTER_ID =~ ^[0-9]+$ && $MPAXOS_CLUSTER_ID != 0 && ${#MPAXOS_CLUSTER_ID} -le 18 ]] ||
      die "MPAXOS_CLUSTER_ID must be a nonzero decimal number below 10^18"
    printf '%s' "$((10#$MPAXOS_CLUSTER_ID))"
    return
  fi
  local h
  h=$( {
    printf 'groups=%s\n' "$GROUPS_N"
    local i
    for i in "${!R_ADDR[@]}"; do
      printf '%s %s %s %s\n' "${R_ADDR[i]}" "${R_CLIENT[i]}" "${R_PEER[i]}" "${R_DIR[i]}"
    done
  } | sha256sum | cut -c1-15)
  # 60 bits: a TOML integer, never zero.
  printf '%s' "$(((16#$h) | 1))"
}

toml_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

write_config() {
  local out=$1 cid=$2 i
  {
    printf '# Generated by scripts/deploy.sh from %s at %s.\n' "$HOSTS_FILE" "$(stamp)"
    printf '# Every replica runs `mpaxos server --config cluster.toml --id N` in its remote directory,\n'
    printf '# so a relative data_dir is inside that directory.\n'
    printf 'cluster_id = %s\n' "$cid"
    printf 'groups = %s\n' "$GROUPS_N"
    printf 'data_dir = %s\n' "$(toml_str "$DATA_DIR")"
    printf 'durability = "%s"\n' "$DURABILITY"
    if [[ -n ${MPAXOS_PREFERRED_LEADER:-} ]]; then
      printf 'preferred_leader = %s\n' "$((10#$MPAXOS_PREFERRED_LEADER))"
    fi
    if [[ -n ${MPAXOS_CONFIG_EXTRA:-} ]]; then
      [[ -f $MPAXOS_CONFIG_EXTRA ]] || die "MPAXOS_CONFIG_EXTRA: $MPAXOS_CONFIG_EXTRA does not exist"
      printf '\n# From MPAXOS_CONFIG_EXTRA=%s:\n' "$MPAXOS_CONFIG_EXTRA"
      cat "$MPAXOS_CONFIG_EXTRA"
      printf '\n'
    fi
    if [[ -n ${MPAXOS_MAX_RTT_MS:-} ]]; then
      in_range "$MPAXOS_MAX_RTT_MS" 0 100000 || die "MPAXOS_MAX_RTT_MS must be whole milliseconds"
      printf '\n# MPAXOS_MAX_RTT_MS=%s: elections must outlast the slowest round trip.\n' "$MPAXOS_MAX_RTT_MS"
      local rtt=$((10#$MPAXOS_MAX_RTT_MS))
      printf '[timeouts]\nheartbeat_ms = 50\n'
      printf 'election_timeout_min_ms = %s\n' "$((rtt * 4 + 500))"
      printf 'election_timeout_max_ms = %s\n' "$((rtt * 8 + 1000))"
    fi
    for i in "${!R_ADDR[@]}"; do
      printf '\n[[replicas]]\n'
      printf 'id = %s\n' "$i"
      printf 'host = "%s"\n' "${R_ADDR[i]}"
      printf 'client_port = %s\n' "${R_CLIENT[i]}"
      printf 'peer_port = %s\n' "${R_PEER[i]}"
      printf 'admin_port = %s\n' "${R_ADMIN[i]}"
      [[ -z ${R_REGION[i]} ]] || printf 'region = "%s"\n' "${R_REGION[i]}"
      case ${R_CPUS[i]} in
        auto | off) printf 'cpus = "%s"\n' "${R_CPUS[i]}" ;;
        *) printf 'cpus = [%s]\n' "${R_CPUS[i]//,/, }" ;;
      esac
    done
  } >"$out"
}

# ---------------------------------------------------------------------------------------------
# Running things on the hosts

# The prelude of every remote script: where to go, which replica, and a liveness test that
# does not trust a pid file alone (zombies and reused pids are not our replica).
prelude() {
  local i=$1
  printf 'set -eu\n'
  printf 'RDIR=%s\n' "$(shq "${R_DIR[i]}")"
  printf 'ID=%s\n' "$i"
  # A relative directory is relative to where the remote command starts (the login directory).
  printf 'case $RDIR in /*) ;; *) RDIR=$(pwd)/$RDIR ;; esac\n'
  printf 'PIDF=replica-$ID.pid\nLOG=replica-$ID.log\n'
  cat <<'EOF'
alive() {
  [ -r "/proc/$1/status" ] || return 1
  st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
  [ "$st" != Z ] && [ "$st" != X ] || return 1
  case "$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true)" in
    *mpaxos*" server "*"--id $ID"*) return 0 ;;
  esac
  return 1
}
running_pid() {
  [ -f "$RDIR/$PIDF" ] || return 1
  p=$(cat "$RDIR/$PIDF")
  alive "$p" || return 1
  echo "$p"
}
EOF
}

# remote I SCRIPT: runs SCRIPT (POSIX sh) on replica I's host; returns its exit code.
remote() {
  local i=$1 body=$2 cmd script
  cmd=$(expand "$REMOTE_CMD" host "${R_SSH[i]}" addr "${R_ADDR[i]}" id "$i" region "${R_REGION[i]:-local}")
  script="$(prelude "$i")
$body"
  {
    printf '[%s] replica %s: %s sh -s <<EOF\n' "$(stamp)" "$i" "$cmd"
    # The prelude is the same every time; log only what differs.
    printf '%s\n' "$body" | sed 's/^/    /'
    printf '    EOF\n'
  } >>"$CMDLOG"
  local rc=0
  eval "$cmd sh -s" <<<"$script" || rc=$?
  return "$rc"
}

# copy I SRC DST: copies local SRC to DST on replica I's host.
copy() {
  local i=$1 src=$2 dst=$3 cmd
  cmd=$(expand "$COPY_CMD" host "${R_SSH[i]}" addr "${R_ADDR[i]}" id "$i" \
    region "${R_REGION[i]:-local}" src "$src" dst "$dst")
  cmdlog "replica $i: $cmd"
  eval "$cmd"
}

tail_remote_log() {
  local i=$1 n=${2:-20}
  echo "--- end of replica $i's log (${R_DIR[i]}/replica-$i.log on ${R_SSH[i]}):" >&2
  # Only what the last start wrote.
  remote "$i" "[ -f \"\$RDIR/\$LOG\" ] || { echo '(no log)'; exit 0; }
awk '/^=== deploy.sh start/ { n = 0 } { l[n++] = \$0 } END { for (i = (n > $n ? n - $n : 0); i < n; i++) print l[i] }' \"\$RDIR/\$LOG\"" >&2 || true
}

local_status() {
  [[ -x $BINARY ]] || die "no mpaxos binary at $BINARY for \`mpaxos status\`: build it (cargo build --release) or set MPAXOS_BINARY"
  cmdlog "$BINARY status --endpoints $(endpoints) $*"
  "$BINARY" status --endpoints "$(endpoints)" "$@"
}

# ---------------------------------------------------------------------------------------------
# Actions

do_stop() {
  local i rc=0 out
  for i in "${!R_ADDR[@]}"; do
    out=$(remote "$i" "
cd \"\$RDIR\" 2>/dev/null || { echo \"not deployed (no \$RDIR)\"; exit 0; }
if ! pid=\$(running_pid); then
  rm -f \"\$PIDF\"
  echo 'not running'
  exit 0
fi
kill -TERM \"\$pid\"
n=0
while alive \"\$pid\" && [ \$n -lt $((STOP_TIMEOUT * 5)) ]; do sleep 0.2; n=\$((n + 1)); done
if alive \"\$pid\"; then
  kill -KILL \"\$pid\" 2>/dev/null || true
  echo \"=== deploy.sh: SIGKILL after ${STOP_TIMEOUT}s \$(date -u +%Y-%m-%dT%H:%M:%SZ)\" >>\"\$LOG\"
  rm -f \"\$PIDF\"
  echo \"did not stop within ${STOP_TIMEOUT}s of SIGTERM: killed (pid \$pid)\"
  exit 4
fi
rm -f \"\$PIDF\"
echo \"stopped (pid \$pid)\"
") || rc=1
    echo "replica $i (${R_ADDR[i]}, ${R_SSH[i]}): ${out:-unreachable}"
  done
  return "$rc"
}

# cluster.toml, replicas.tsv, endpoints and deploy.env in the run directory.
write_run_files() {
  local cid eps
  cid=$(cluster_id)
  write_config "$RUN_DIR/cluster.toml" "$cid"
  layout_tsv >"$RUN_DIR/replicas.tsv"
  eps=$(endpoints)
  printf '%s\n' "$eps" >"$RUN_DIR/endpoints"
  {
    printf 'MPAXOS_ENDPOINTS=%s\n' "$eps"
    printf 'DEPLOY_REPLICAS=%s\n' "${#R_ADDR[@]}"
    printf 'DEPLOY_GROUPS=%s\n' "$GROUPS_N"
    printf 'DEPLOY_DURABILITY=%s\n' "$DURABILITY"
    printf 'DEPLOY_HOSTS_FILE=%s\n' "$(shq "$(cd "$(dirname "$HOSTS_FILE")" && pwd)/$(basename "$HOSTS_FILE")")"
    printf 'export MPAXOS_ENDPOINTS\n'
  } >"$RUN_DIR/deploy.env"
}

check_config() {
  local check rc=0
  check=$("$BINARY" server --config "$RUN_DIR/cluster.toml" --id 4294967295 2>&1) || rc=$?
  if [[ $rc -eq 2 ]]; then
    die "the generated config is invalid: $check"
  fi
}

do_start() {
  # 1. Nothing may be running already (a running replica would keep its old config, and the
  #    run directory must keep describing it).
  local i out running=()
  for i in "${!R_ADDR[@]}"; do
    out=$(remote "$i" 'if p=$(running_pid); then echo "running $p"; else echo free; fi') ||
      die "cannot run commands on ${R_SSH[i]} (replica $i) with: $REMOTE_CMD"
    [[ $out != running* ]] || running+=("$i")
  done
  [[ ${#running[@]} -eq 0 ]] ||
    die "replica(s) ${running[*]} already running; run: $0 $HOSTS_FILE stop --run-dir $RUN_DIR"

  # 2. The binary.
  if [[ -n ${MPAXOS_BINARY:-} ]]; then
    echo "binary: $BINARY (MPAXOS_BINARY; not building)"
  else
    echo "building: cargo build --release"
    cmdlog "cargo build --release --manifest-path $REPO/Cargo.toml"
    cargo build --release --manifest-path "$REPO/Cargo.toml" || die "cargo build failed"
  fi
  [[ -x $BINARY ]] || die "no executable at $BINARY"

  # 3. The config and the layout, checked here rather than on every host: the server validates
  #    its config (exit 2 if invalid) before it looks up --id, so an id that cannot exist
  #    checks the file without starting anything.
  write_run_files
  check_config
  cmdlog "start: ${#R_ADDR[@]} replicas, config $RUN_DIR/cluster.toml"
  echo "config: $RUN_DIR/cluster.toml (cluster_id $(sed -n 's/^cluster_id = //p' "$RUN_DIR/cluster.toml"))"
  local eps
  eps=$(endpoints)

  # 4. Copy the binary and config, once per (host, directory). Copy to a new name and rename:
  #    overwriting a binary another replica runs would fail (ETXTBSY).
  local -A copied=()
  local key
  for i in "${!R_ADDR[@]}"; do
    key="${R_SSH[i]}|${R_DIR[i]}"
    [[ -z ${copied[$key]:-} ]] || continue
    copied[$key]=1
    echo "copying to ${R_SSH[i]}:${R_DIR[i]}"
    remote "$i" 'mkdir -p "$RDIR/bin"' || die "cannot reach ${R_SSH[i]} (replica $i) or create ${R_DIR[i]}"
    copy "$i" "$BINARY" "${R_DIR[i]}/bin/mpaxos.new" || die "copying the binary to ${R_SSH[i]} failed"
    copy "$i" "$RUN_DIR/cluster.toml" "${R_DIR[i]}/cluster.toml.new" || die "copying cluster.toml to ${R_SSH[i]} failed"
    remote "$i" 'cd "$RDIR" && chmod +x bin/mpaxos.new && mv -f bin/mpaxos.new bin/mpaxos && mv -f cluster.toml.new cluster.toml' ||
      die "installing the binary on ${R_SSH[i]} failed"
  done

  # 5. Start every replica and wait until it logged `replica started` (or died).
  local env_prefix=""
  [[ -z ${MPAXOS_RUST_LOG:-} ]] || env_prefix="RUST_LOG=$(shq "$MPAXOS_RUST_LOG") "
  local failed=""
  for i in "${!R_ADDR[@]}"; do
    local out rc=0
    out=$(remote "$i" "
cd \"\$RDIR\"
touch \"\$LOG\"
n0=\$(wc -l <\"\$LOG\")
echo \"=== deploy.sh start \$(date -u +%Y-%m-%dT%H:%M:%SZ): replica \$ID\" >>\"\$LOG\"
# Only the log keeps the replica's output; no other descriptor of ours stays open in it.
${env_prefix}nohup ./bin/mpaxos server --config cluster.toml --id \"\$ID\" </dev/null >>\"\$LOG\" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
pid=\$!
echo \"\$pid\" >\"\$PIDF\"
n=0
while [ \$n -lt $((START_TIMEOUT * 5)) ]; do
  if tail -n +\$((n0 + 1)) \"\$LOG\" | grep -q 'replica started'; then echo \"\$pid\"; exit 0; fi
  alive \"\$pid\" || break
  sleep 0.2
  n=\$((n + 1))
done
if alive \"\$pid\"; then echo \"started (pid \$pid) but no 'replica started' in the log after ${START_TIMEOUT}s\" >&2; exit 5; fi
rm -f \"\$PIDF\"
echo \"exited during start-up\" >&2
exit 6
") || rc=$?
    if [[ $rc -eq 0 ]]; then
      echo "replica $i: started on ${R_ADDR[i]} (pid $out, host ${R_SSH[i]}, dir ${R_DIR[i]})"
    else
      echo "replica $i: FAILED to start on ${R_ADDR[i]} (exit $rc)" >&2
      tail_remote_log "$i"
      failed+=" $i"
      break
    fi
  done

  # 6. Wait for a leader in every group.
  if [[ -z $failed ]]; then
    echo "waiting for leaders (up to ${START_TIMEOUT}s)"
    local deadline=$((SECONDS + START_TIMEOUT)) table="" ok=""
    while ((SECONDS < deadline)); do
      if table=$("$BINARY" status --endpoints "$eps" --timeout-ms 2000 2>&1) &&
        awk 'NR > 2 && $5 !~ /^[0-9]+$/ { bad = 1 } NR > 2 { rows++ } END { exit !(rows > 0 && !bad) }' <<<"$table"; then
        ok=1
        break
      fi
      sleep 0.5
    done
    if [[ -z $ok ]]; then
      echo "the cluster has no leader in every group after ${START_TIMEOUT}s; last status:" >&2
      printf '%s\n' "$table" >&2
      failed=" (leaders)"
      for i in "${!R_ADDR[@]}"; do tail_remote_log "$i" 10; done
    fi
  fi
  if [[ -n $failed ]]; then
    echo "collecting logs into $RUN_DIR/logs and stopping what started" >&2
    do_collect >/dev/null 2>&1 || true
    do_stop >&2 || true
    die "start failed"
  fi
  printf '%s\n' "$table"
  cmdlog "started; endpoints $eps"
  echo
  echo "run directory: $RUN_DIR"
  echo "endpoints: $eps"
  echo "try: export MPAXOS_ENDPOINTS=$eps   # or: source $RUN_DIR/deploy.env"
  echo "     $BINARY status"
  echo "     $BINARY bench --endpoints $eps --duration 10"
}

do_status() {
  local i out rc=0 st=0
  for i in "${!R_ADDR[@]}"; do
    out=$(remote "$i" '
if p=$(running_pid); then
  echo "running (pid $p)"
else
  last=$(tail -n 1 "$RDIR/$LOG" 2>/dev/null || true)
  echo "NOT running; last log line: ${last:-(none)}"
  exit 7
fi') || rc=1
    echo "replica $i (${R_ADDR[i]}:${R_CLIENT[i]}, host ${R_SSH[i]}): ${out:-unreachable}"
  done
  echo
  local_status --timeout-ms 3000 || st=$?
  [[ $st -eq 0 ]] || return "$st"
  return "$rc"
}

do_collect() {
  local i logs=$RUN_DIR/logs rc=0
  mkdir -p "$logs" "$RUN_DIR/metrics"
  for i in "${!R_ADDR[@]}"; do
    if remote "$i" 'cat "$RDIR/$LOG"' >"$logs/replica-$i.log.part"; then
      mv -f "$logs/replica-$i.log.part" "$logs/replica-$i.log"
      echo "replica $i: $(wc -l <"$logs/replica-$i.log") log lines -> $logs/replica-$i.log"
    else
      rm -f "$logs/replica-$i.log.part"
      echo "replica $i: could not read ${R_DIR[i]}/replica-$i.log on ${R_SSH[i]}" >&2
      rc=1
    fi
    if command -v curl >/dev/null 2>&1; then
      local url="http://${R_ADDR[i]}:${R_ADMIN[i]}/metrics"
      cmdlog "curl -fsS --max-time 3 $url"
      curl -fsS --max-time 3 "$url" >"$RUN_DIR/metrics/replica-$i.prom" 2>/dev/null ||
        { rm -f "$RUN_DIR/metrics/replica-$i.prom"; echo "replica $i: no /metrics at $url" >&2; }
    fi
  done
  if [[ -x $BINARY ]]; then
    local_status -w json --timeout-ms 3000 >"$RUN_DIR/status.json" 2>&1 || true
    echo "status -> $RUN_DIR/status.json"
  fi
  cmdlog "collected into $RUN_DIR"
  return "$rc"
}

do_wipe() {
  local i rc=0 out
  for i in "${!R_ADDR[@]}"; do
    out=$(remote "$i" "
cd \"\$RDIR\" 2>/dev/null || { echo 'nothing to wipe'; exit 0; }
if p=\$(running_pid); then echo \"running (pid \$p); stop it first\"; exit 8; fi
d=$(shq "$DATA_DIR")/replica-\$ID
rm -rf -- \"\$d\"
echo \"deleted \$RDIR/\$d\"
") || rc=1
    echo "replica $i (${R_SSH[i]}): ${out:-unreachable}"
  done
  return "$rc"
}

parse_hosts
if [[ $ACTION == endpoints && ! -d $RUN_DIR ]]; then
  endpoints && echo
  exit 0
fi
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
CMDLOG=$RUN_DIR/commands.log
if [[ $ACTION != start && $ACTION != config ]]; then
  load_deployed_layout
fi
case $ACTION in
  start) do_start ;;
  config)
    write_run_files
    if [[ -x $BINARY ]]; then check_config; else warn "no binary at $BINARY: cluster.toml not checked"; fi
    cmdlog "config: wrote $RUN_DIR/cluster.toml"
    echo "$RUN_DIR/cluster.toml"
    ;;
  stop)
    cmdlog "stop"
    do_stop
    ;;
  status) do_status ;;
  collect) do_collect ;;
  wipe)
    cmdlog "wipe"
    do_wipe
    ;;
  endpoints) endpoints && echo ;;
esac
