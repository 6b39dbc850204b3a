#!/usr/bin/env bash
# Control-plane benchmark (issue 6): `meshscale serve` on SQLite, then on PostgreSQL, each
# loaded with N simulated nodes by bench/loadgen (meshscale-loadgen), for each N.
#
#   e2e/bench/control.sh OUT_DIR [N...]      (default N: 1000 5000 10000)
#
# MESHSCALE_BENCH_POLICIES picks the access policies each (database, N) runs under:
# "allow-all" (no policy, the default) and/or "acl-20" (a 20-rule policy set with
# `meshscale policy set` before the join storm; adds the policy-change propagation and
# CPU per policy change). E.g. MESHSCALE_BENCH_POLICIES="allow-all acl-20".
#
# Writes OUT_DIR/control.json (see docs/benchmarks.d/control.md for what each figure means).
# Binaries: MESHSCALE_BIN and MESHSCALE_LOADGEN_BIN if set, else built here with --release.
# PostgreSQL comes from e2e/lib/postgres.sh (a fresh database per run). Loopback only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-/var/tmp/meshscale-bench/latest}
shift || true
NS=("$@")
((${#NS[@]})) || NS=(1000 5000 10000)
REPEATS=${MESHSCALE_BENCH_REPEATS:-10}
# Seconds each run may spend registering (keeps the whole script under 10 minutes).
BUDGET=${MESHSCALE_BENCH_REGISTER_BUDGET:-50}
DBS=${MESHSCALE_BENCH_DBS:-"sqlite postgres"}
POLICIES=${MESHSCALE_BENCH_POLICIES:-"allow-all"}
for p in $POLICIES; do
  [[ $p == allow-all || $p =~ ^acl-[0-9]+$ ]] || { printf 'control.sh: unknown policy %s (allow-all | acl-N)\n' "$p" >&2; exit 2; }
done

log() { printf 'control.sh: %s\n' "$*" >&2; }

mkdir -p "$OUT"
WORK=$(mktemp -d /var/tmp/meshscale-control-bench.XXXXXX)
SERVER_PID=""
cleanup() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [[ -z ${MESHSCALE_BIN:-} || -z ${MESHSCALE_LOADGEN_BIN:-} ]]; then
  log "building meshscale and meshscale-loadgen (release)"
  (cd "$ROOT" && cargo build --release -p meshscale-control --bin meshscale -p meshscale-loadgen >&2)
  TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
  MESHSCALE_BIN=${MESHSCALE_BIN:-$TARGET/release/meshscale}
  MESHSCALE_LOADGEN_BIN=${MESHSCALE_LOADGEN_BIN:-$TARGET/release/meshscale-loadgen}
fi
for b in "$MESHSCALE_BIN" "$MESHSCALE_LOADGEN_BIN"; do
  [[ -x $b ]] || { log "not executable: $b"; exit 1; }
done

# Every simulated node holds a socket in the generator and one in the server.
if [[ $(id -u) -eq 0 ]]; then ulimit -Hn 1048576 2>/dev/null || true; fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open-file limit $(ulimit -n)"

# shellcheck source=../lib/postgres.sh
source "$ROOT/e2e/lib/postgres.sh"
if [[ $DBS == *postgres* ]]; then
  pg_start >&2
  PSQL="$(_pg_bindir)/psql"
fi

# Below the kernel's ephemeral range (32768+ by default), where the load
# generator's 10,000 client sockets and their TIME_WAIT leftovers live, and
# not used by any socket at all; start_server still retries on a lost race.
free_port() {
  local p low
  low=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  while :; do
    p=$((10000 + RANDOM % (low - 10000)))
    ss -Htan "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# Polls the admin socket until the server answers (no fixed sleep).
wait_ready() {
  local cfg=$1 deadline=$((SECONDS + 60))
  until "$MESHSCALE_BIN" -c "$cfg" users list >/dev/null 2>&1; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null || ((SECONDS > deadline)); then
      log "server did not start; its log:"
      tail -n 30 "$2" >&2
      return 1
    fi
    sleep 0.1
  done
}

run_one() {
  local db=$1 n=$2 policy=$3 dir cfg http metrics dbname="" database key result
  local policy_yaml="" policy_args=()
  if [[ $policy != allow-all ]]; then
    policy_yaml=$'policy:\n  mode: database\n'
    policy_args=(--policy-rules "${policy#acl-}" --policy-user bench)
  fi
  dir=$WORK/$db-$n-$policy
  mkdir -p "$dir"
  cfg=$dir/config.yaml
  if [[ $db == sqlite ]]; then
    database=$'database:\n  type: sqlite\n'
  else
    dbname=bench_${n}_$$_$RANDOM
    "$PSQL" -q -h 127.0.0.1 -p "$(_pg_port)" -U postgres -d postgres -c "CREATE DATABASE $dbname" >&2
    database=$'database:\n  type: postgres\n  postgres:\n    host: 127.0.0.1\n'
    database+="    port: $(_pg_port)"$'\n'"    name: $dbname"$'\n    user: postgres\n'
  fi
  local attempt
  for attempt in 1 2 3 4 5; do
    http=127.0.0.1:$(free_port)
    metrics=127.0.0.1:$(free_port)
    cat >"$cfg" <<CFG
server_url: http://$http
listen_addr: $http
metrics_listen_addr: $metrics
grpc_listen_addr: ""
data_dir: $dir/data
unix_socket: $dir/run/meshscale.sock
log:
  level: warn
derp:
  server:
    enabled: false
$database
$policy_yaml
CFG
    "$MESHSCALE_BIN" -c "$cfg" serve >"$dir/server.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$cfg" "$dir/server.log" && break
    wait "$SERVER_PID" 2>/dev/null || true
    grep -q "Address already in use" "$dir/server.log" && ((attempt < 5)) || return 1
    log "$db N=$n: port taken meanwhile; new ports (attempt $((attempt + 1)))"
  done
  "$MESHSCALE_BIN" -c "$cfg" users create bench >/dev/null
  key=$("$MESHSCALE_BIN" -c "$cfg" preauthkeys create --user bench --reusable --expiration 1h | tail -n 1)
  log "$db N=$n $policy: running"
  if result=$(MESHSCALE_LOADGEN_AUTHKEY=$key "$MESHSCALE_LOADGEN_BIN" --server "http://$http" \
    --nodes "$n" --server-pid "$SERVER_PID" --meshscale-bin "$MESHSCALE_BIN" --config "$cfg" \
    --db "$db" --repeats "$REPEATS" --register-budget "$BUDGET" --phase-timeout 45 "${policy_args[@]}"); then
    printf '%s\n' "$result" >>"$WORK/runs.jsonl"
    log "$db N=$n $policy: $result"
  else
    FAILED+=("$db N=$n $policy")
    log "$db N=$n $policy: load generator failed; server log tail:"
    tail -n 20 "$dir/server.log" >&2
    printf '{"db":"%s","n":%s,"policy":"%s","held":false,"register_per_s":null,"all_mapped_s":null,"propagation":null,"server_rss_kib":null,"server_rss_peak_kib":null,"server_cpu_s_per_change":null,"bytes_per_change":null,"nodes_list_ms":null,"notes":"load generator failed"}\n' \
      "$db" "$n" "$policy" >>"$WORK/runs.jsonl"
  fi
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  if [[ -n $dbname ]]; then
    "$PSQL" -q -h 127.0.0.1 -p "$(_pg_port)" -U postgres -d postgres -c "DROP DATABASE IF EXISTS $dbname" >&2 || true
  fi
  rm -rf "$dir"
}

START=$SECONDS
# Runs whose load generator failed: still written (as nulls) so the report shows
# them, but the script then exits non-zero instead of passing with empty figures.
FAILED=()
: >"$WORK/runs.jsonl"
for db in $DBS; do
  for n in "${NS[@]}"; do
    for policy in $POLICIES; do
      if ! run_one "$db" "$n" "$policy"; then
        FAILED+=("$db N=$n $policy (server did not start)")
        printf '{"db":"%s","n":%s,"policy":"%s","held":false,"register_per_s":null,"all_mapped_s":null,"propagation":null,"server_rss_kib":null,"server_rss_peak_kib":null,"server_cpu_s_per_change":null,"bytes_per_change":null,"nodes_list_ms":null,"notes":"server did not start"}\n' \
          "$db" "$n" "$policy" >>"$WORK/runs.jsonl"
      fi
    done
  done
done

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
SHA=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
PGVER=""
[[ $DBS == *postgres* ]] && PGVER=$("$PSQL" --version | awk '{print $3}')
{
  printf '{\n  "machine": {"cores": %s, "kernel": %s, "cpu": %s},\n' \
    "$(nproc)" "$(json_str "$(uname -r)")" "$(json_str "$CPU")"
  printf '  "versions": {"meshscale": %s, "sqlite": "bundled (sqlx)", "postgresql": %s},\n' \
    "$(json_str "$SHA")" "$(json_str "$PGVER")"
  printf '  "runs": [\n'
  sep=""
  while IFS= read -r line; do
    printf '%s    %s' "$sep" "$line"
    sep=$',\n'
  done <"$WORK/runs.jsonl"
  printf '\n  ],\n  "notes": [%s]\n}\n' \
    "$(json_str "load generator and server share the same $(nproc) cores; PostgreSQL from e2e/lib/postgres.sh runs with durability off (test cluster); total $((SECONDS - START)) s")"
} >"$OUT/control.json"
log "wrote $OUT/control.json in $((SECONDS - START)) s"
if ((${#FAILED[@]})); then
  log "FAILED: the load generator failed for: ${FAILED[*]}"
  exit 1
fi
