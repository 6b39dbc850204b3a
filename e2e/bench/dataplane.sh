#!/usr/bin/env bash
# Data-plane benchmark (issue 6): raw veth, wireguard-go, the official
# tailscaled pair joined through `meshscale serve`, and a meshscale-sidecar
# pair, measured one after the other in the same run on the same machine.
#
#   sudo e2e/bench/dataplane.sh [OUT_DIR]     (default /var/tmp/meshscale-bench/latest)
#
# Writes OUT_DIR/dataplane.json (see docs/benchmarks.d/dataplane.md for the
# method and every field) and prints a table with each figure and the
# sidecar's ratio to wireguard-go and to tailscaled.
#
# Two namespaces, msbench-dp-a and msbench-dp-b, joined by one veth pair
# (10.201.0.1 <-> 10.201.0.2); `meshscale serve` (with its embedded DERP
# relay, the only one in the DERP map) runs in msbench-dp-a. Nothing is
# routed off the machine; the host namespace is never touched.
#
# Environment:
#   MESHSCALE_BIN, MESHSCALE_SIDECAR_BIN  binaries to measure (else built with
#                                         `cargo build --release`)
#   MESHSCALE_TOOLS_DIR   where tailscale/tailscaled 1.96.4 live (e2e/setup.sh)
#   BENCH_SECONDS         seconds per iperf3 TCP run (default 10)
#   BENCH_RUNS            runs per TCP figure, median taken (default 3)
#   BENCH_SYSTEMS         subset, e.g. "wireguard-go meshscale-sidecar"
#   BENCH_STARTS          fresh starts of node B measured for `up` to first
#                         packet, median reported (default 5)
#   BENCH_START_ONLY=1    measure only `up` to first packet (no iperf3, ping,
#                         CPU or RSS figures: those stay null)
#   KEEP=1                keep the work directory (logs, raw iperf3 JSON)
set -euo pipefail

OUT=${1:-/var/tmp/meshscale-bench/latest}
SECS=${BENCH_SECONDS:-10}
RUNS=${BENCH_RUNS:-3}
SYSTEMS=${BENCH_SYSTEMS:-veth wireguard-go tailscaled meshscale-sidecar}
STARTS=${BENCH_STARTS:-5}
START_ONLY=${BENCH_START_ONLY:-0}
UDP_SECS=5
LOAD_SECS=6
# 300 pings 10 ms apart: enough samples for a p99 in 3 s.
PINGS=300

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TOOLS_DIR=${MESHSCALE_TOOLS_DIR:-/var/cache/meshscale-tools}
NS_A=msbench-dp-a
NS_B=msbench-dp-b
IP_A=10.201.0.1
IP_B=10.201.0.2
WG_A=10.202.0.1
WG_B=10.202.0.2

die() {
  echo "dataplane.sh: $*" >&2
  exit 1
}
log() { printf '[dataplane %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, TUN devices)"
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 ]] || die "BENCH_SECONDS must be a positive integer"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "BENCH_RUNS must be a positive integer"
[[ $STARTS =~ ^[0-9]+$ && $STARTS -ge 1 ]] || die "BENCH_STARTS must be a positive integer"
for s in $SYSTEMS; do
  case $s in veth | wireguard-go | tailscaled | meshscale-sidecar) ;; *) die "unknown system in BENCH_SYSTEMS: $s" ;; esac
done

# ------------------------------------------------------------------ tools
need_pkgs=()
for pair in ip:iproute2 iperf3:iperf3 ping:iputils-ping wg:wireguard-tools wireguard-go:wireguard-go \
  jq:jq openssl:openssl curl:curl flock:util-linux timeout:coreutils; do
  command -v "${pair%%:*}" >/dev/null || need_pkgs+=("${pair#*:}")
done
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]} (apt)"
  command -v apt-get >/dev/null || die "missing ${need_pkgs[*]} and no apt-get to install them"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
TAILSCALED=$TOOLS_DIR/bin/tailscaled
TAILSCALE=$TOOLS_DIR/bin/tailscale

# One run at a time: the namespace names are fixed so that a killed run's
# leftovers can be found and removed by the next one.
LOCK_DIR=/run/lock
[[ -d $LOCK_DIR ]] || LOCK_DIR=/tmp
exec 9>"$LOCK_DIR/meshscale-bench-dataplane.lock"
flock -n 9 || die "another dataplane.sh is running (lock $LOCK_DIR/meshscale-bench-dataplane.lock)"

# --------------------------------------------------------------- binaries
build_dir=${CARGO_TARGET_DIR:-$ROOT/target}
case $build_dir in /*) ;; *) build_dir=$ROOT/$build_dir ;; esac
MESHSCALE=${MESHSCALE_BIN:-}
SIDECAR=${MESHSCALE_SIDECAR_BIN:-}
if [[ -z $MESHSCALE || -z $SIDECAR ]]; then
  if [[ " $SYSTEMS " == *" tailscaled "* || " $SYSTEMS " == *" meshscale-sidecar "* ]]; then
    command -v cargo >/dev/null || die "cargo not found: set MESHSCALE_BIN and MESHSCALE_SIDECAR_BIN"
    log "building meshscale and meshscale-sidecar (--release)"
    (cd "$ROOT" && cargo build --release --locked -p meshscale-control -p meshscale-sidecar --bins) ||
      die "release build failed"
  fi
  MESHSCALE=${MESHSCALE:-$build_dir/release/meshscale}
  SIDECAR=${SIDECAR:-$build_dir/release/meshscale-sidecar}
fi

# ------------------------------------------------------ namespaces, cleanup
WORK=$(mktemp -d /tmp/msbench-dp.XXXXXX)
declare -A PIDS=()

kill_ns_procs() {
  local ns=$1 pid
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
}

# Stops one background process of ours: TERM, then KILL after 5 s.
stop_bg() {
  local name=$1 pid=${PIDS[$1]:-} i
  [[ -n $pid ]] || return 0
  unset "PIDS[$name]"
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  set +e
  local name
  for name in "${!PIDS[@]}"; do stop_bg "$name"; done
  for ns in "$NS_A" "$NS_B"; do
    kill_ns_procs "$ns"
    ip netns del "$ns" 2>/dev/null
  done
  rm -f /var/run/wireguard/wgdpa.sock /var/run/wireguard/wgdpb.sock
  if [[ ${KEEP:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ns in "$NS_A" "$NS_B"; do
  if ip netns list | grep -qw "$ns"; then
    log "removing $ns left over by an earlier run"
    kill_ns_procs "$ns"
    ip netns del "$ns"
  fi
done
rm -f /var/run/wireguard/wgdpa.sock /var/run/wireguard/wgdpb.sock

ip netns add "$NS_A"
ip netns add "$NS_B"
A() { ip netns exec "$NS_A" "$@"; }
B() { ip netns exec "$NS_B" "$@"; }
ip -n "$NS_A" link set lo up
ip -n "$NS_B" link set lo up
ip -n "$NS_A" link add dp0 type veth peer name dp0 netns "$NS_B"
ip -n "$NS_A" addr add "$IP_A/24" dev dp0
ip -n "$NS_B" addr add "$IP_B/24" dev dp0
ip -n "$NS_A" link set dp0 up
ip -n "$NS_B" link set dp0 up

# Polls "$@" every 0.1 s for at most $1 seconds.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what (KEEP=1 keeps logs in $WORK)"
    sleep 0.1
  done
}
wait_for 10 "the veth link" A ping -c 1 -W 1 "$IP_B"

now_ms() { echo $(($(date +%s%N) / 1000000)); }
CLK_TCK=$(getconf CLK_TCK)

# utime+stime, in clock ticks, of the given pids (all their threads).
cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || die "process $pid is gone"
    total=$((total + t))
  done
  echo "$total"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The largest RSS among the pids (each agent alone, not their sum).
max_rss() {
  local m=0 pid r
  for pid in "$@"; do
    r=$(rss_kib "$pid")
    ((r > m)) && m=$r
  done
  echo "$m"
}

# Median of the numbers on stdin (one per line); "null" if none.
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# Nearest-rank percentile $1 of the numbers on stdin.
percentile() { sort -g | awk -v p="$1" '{v[NR] = $1} END {if (NR == 0) {print "null"; exit} r = int((p / 100) * NR + 0.999999); if (r < 1) r = 1; if (r > NR) r = NR; print v[r]}'; }

# -------------------------------------------------------- meshscale serve
need_server() { [[ " $SYSTEMS " == *" tailscaled "* || " $SYSTEMS " == *" meshscale-sidecar "* ]]; }
SERVER_URL=https://$IP_A:8443
start_server() {
  [[ -x $MESHSCALE ]] || die "meshscale binary not found at $MESHSCALE"
  local d=$WORK/server
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=meshscale bench CA" -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$IP_A" -keyout "$d/tls.key" -out "$d/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$IP_A" >"$d/ext"
  openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
    -days 1 -extfile "$d/ext" -out "$d/tls.crt" 2>/dev/null
  cat >"$d/config.yaml" <<YAML
server_url: $SERVER_URL
listen_addr: $IP_A:8443
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: ""
tls_cert_path: $d/tls.crt
tls_key_path: $d/tls.key
data_dir: $d/data
unix_socket: $d/run/meshscale.sock
derp:
  server:
    stun_listen_addr: $IP_A:3478
# Database mode with no policy set is allow-all; the sidecar's filter row
# sets policies with `meshscale policy set`.
policy:
  mode: database
YAML
  ip netns exec "$NS_A" "$MESHSCALE" -c "$d/config.yaml" serve >"$d/server.log" 2>&1 &
  PIDS[server]=$!
  wait_for 30 "meshscale serve (see $d/server.log)" A curl -sf --cacert "$d/ca.pem" "$SERVER_URL/health"
  wait_for 30 "the admin socket" "$MESHSCALE" -c "$d/config.yaml" users list
  "$MESHSCALE" -c "$d/config.yaml" users create bench >/dev/null
  AUTHKEY=$("$MESHSCALE" -c "$d/config.yaml" preauthkeys create --user bench --reusable --expiration 1h -o json |
    jq -r '.key // empty')
  [[ $AUTHKEY == mskey-auth-* ]] || die "could not create a pre-auth key"
  CA=$d/ca.pem
}

# ------------------------------------------------------------ measurement
# Runs on the system whose peer (in namespace A) is reachable at $1 from
# namespace B; agents' pids in AGENTS. Writes $WORK/<sys>.json.
measure() {
  local sys=$1 target=$2 up_ms=$3
  local dir=$WORK/$sys
  mkdir -p "$dir"
  local up_runs=null
  ((${#START_MS[@]})) && up_runs=$(printf '%s\n' "${START_MS[@]}" | jq -s -c .)
  if [[ $START_ONLY == 1 ]]; then
    jq -n --argjson up "$up_ms" --argjson runs "$up_runs" \
      '{tcp1_fwd_mbps: null, tcp1_rev_mbps: null, tcp4_fwd_mbps: null, tcp4_rev_mbps: null,
        tcp_runs: {}, udp_pps: null, udp_mbps: null, udp_loss_pct: null,
        lat_idle_p50_ms: null, lat_idle_p99_ms: null, lat_load_p50_ms: null, lat_load_p99_ms: null,
        cpu_s_per_gb: null, rss_idle_kib: null, rss_load_kib: null,
        up_to_first_packet_ms: $up, up_to_first_packet_runs_ms: $runs}' >"$WORK/$sys.json"
    return
  fi
  ip netns exec "$NS_A" iperf3 -s -p 5201 >"$dir/iperf3-server.log" 2>&1 &
  PIDS[iperf3]=$!
  wait_for 10 "iperf3 -s" B bash -c "exec 3<>/dev/tcp/$target/5201"
  # Let start-up work (path discovery, map updates) settle before the
  # idle figures.
  sleep 2

  local rss_idle=null
  ((${#AGENTS[@]})) && rss_idle=$(max_rss "${AGENTS[@]}")

  log "$sys: idle latency ($PINGS pings)"
  B ping -n -i 0.01 -c "$PINGS" -W 1 "$target" >"$dir/ping-idle.txt" 2>&1 || true
  local idle50 idle99
  idle50=$(grep -o 'time=[0-9.]*' "$dir/ping-idle.txt" | cut -d= -f2 | percentile 50)
  idle99=$(grep -o 'time=[0-9.]*' "$dir/ping-idle.txt" | cut -d= -f2 | percentile 99)

  local cpu0=0 bytes=0
  ((${#AGENTS[@]})) && cpu0=$(cpu_ticks "${AGENTS[@]}")
  local test run streams rev mbps f
  local -A runs=()
  for test in tcp1_fwd tcp1_rev tcp4_fwd tcp4_rev; do
    streams=${test:3:1}
    rev=()
    [[ $test == *_rev ]] && rev=(-R)
    for ((run = 1; run <= RUNS; run++)); do
      f=$dir/$test-$run.json
      log "$sys: $test run $run/$RUNS (${SECS}s)"
      if ! B timeout $((SECS + 30)) iperf3 -c "$target" -p 5201 -t "$SECS" -P "$streams" "${rev[@]}" -J >"$f" 2>"$f.err"; then
        log "$sys: $test run $run failed: $(jq -r '.error // empty' "$f" 2>/dev/null) $(head -c 300 "$f.err")"
        continue
      fi
      mbps=$(jq -r '.end.sum_received.bits_per_second / 1e6 | . * 10 | round / 10' "$f")
      bytes=$((bytes + $(jq -r '.end.sum_received.bytes' "$f")))
      runs[$test]+="$mbps "
    done
  done
  local cpu_per_gb=null
  if ((${#AGENTS[@]})) && ((bytes > 0)); then
    local cpu1
    cpu1=$(cpu_ticks "${AGENTS[@]}")
    cpu_per_gb=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN {printf "%.3f", (t / hz) / (b / 1e9)}')
  fi

  log "$sys: latency and RSS under load (one TCP stream, ${LOAD_SECS}s)"
  B timeout $((LOAD_SECS + 30)) iperf3 -c "$target" -p 5201 -t "$LOAD_SECS" -J >"$dir/load.json" 2>"$dir/load.err" &
  local load_pid=$!
  sleep 1
  B ping -n -i 0.01 -c "$PINGS" -W 1 "$target" >"$dir/ping-load.txt" 2>&1 &
  local ping_pid=$! rss_load=0 r
  while kill -0 "$load_pid" 2>/dev/null; do
    if ((${#AGENTS[@]})); then
      r=$(max_rss "${AGENTS[@]}")
      ((r > rss_load)) && rss_load=$r
    fi
    sleep 0.5
  done
  wait "$load_pid" || log "$sys: load run failed (see $dir/load.json)"
  wait "$ping_pid" || true
  ((${#AGENTS[@]})) || rss_load=null
  local load50 load99
  load50=$(grep -o 'time=[0-9.]*' "$dir/ping-load.txt" | cut -d= -f2 | percentile 50)
  load99=$(grep -o 'time=[0-9.]*' "$dir/ping-load.txt" | cut -d= -f2 | percentile 99)

  log "$sys: UDP, 1400-byte payloads, unlimited rate (${UDP_SECS}s)"
  local udp_pps=null udp_mbps=null udp_loss=null
  if B timeout $((UDP_SECS + 30)) iperf3 -c "$target" -p 5201 -u -b 0 -l 1400 -t "$UDP_SECS" -J >"$dir/udp.json" 2>"$dir/udp.err"; then
    udp_pps=$(jq -r '.end.sum_received | ((.packets - .lost_packets) / .seconds) | round' "$dir/udp.json")
    udp_mbps=$(jq -r '.end.sum_received.bits_per_second / 1e6 | . * 10 | round / 10' "$dir/udp.json")
    udp_loss=$(jq -r '.end.sum_received.lost_percent | . * 10 | round / 10' "$dir/udp.json")
  else
    log "$sys: UDP run failed (see $dir/udp.json)"
  fi
  stop_bg iperf3

  local runs_json='{}' med_json='{}'
  for test in tcp1_fwd tcp1_rev tcp4_fwd tcp4_rev; do
    local list=${runs[$test]:-}
    local arr med
    arr=$(tr ' ' '\n' <<<"$list" | awk 'NF' | jq -R 'tonumber' | jq -s -c .)
    med=$(tr ' ' '\n' <<<"$list" | awk 'NF' | median)
    runs_json=$(jq -c --arg k "$test" --argjson v "$arr" '. + {($k): $v}' <<<"$runs_json")
    med_json=$(jq -c --arg k "${test}_mbps" --argjson v "${med:-null}" '. + {($k): $v}' <<<"$med_json")
  done
  jq -n --argjson med "$med_json" --argjson runs "$runs_json" \
    --argjson udp_pps "$udp_pps" --argjson udp_mbps "$udp_mbps" --argjson udp_loss "$udp_loss" \
    --argjson i50 "$idle50" --argjson i99 "$idle99" --argjson l50 "$load50" --argjson l99 "$load99" \
    --argjson cpu "$cpu_per_gb" --argjson ri "$rss_idle" --argjson rl "$rss_load" --argjson up "$up_ms" \
    --argjson up_runs "$up_runs" \
    '$med + {tcp_runs: $runs, udp_pps: $udp_pps, udp_mbps: $udp_mbps, udp_loss_pct: $udp_loss,
      lat_idle_p50_ms: $i50, lat_idle_p99_ms: $i99, lat_load_p50_ms: $l50, lat_load_p99_ms: $l99,
      cpu_s_per_gb: $cpu, rss_idle_kib: $ri, rss_load_kib: $rl, up_to_first_packet_ms: $up,
      up_to_first_packet_runs_ms: $up_runs}' \
    >"$WORK/$sys.json"
}

# Waits until a route to $2 exists in namespace $1, then pings every 10 ms
# until one reply comes back. Fails after $3 seconds.
first_packet() {
  local ns=$1 target=$2 secs=$3
  local deadline=$((SECONDS + secs))
  until ip netns exec "$ns" ip route get "$target" 2>/dev/null | grep -qv unreachable; do
    ((SECONDS < deadline)) || return 1
    sleep 0.01
  done
  ip netns exec "$ns" ping -n -c 1 -i 0.01 -w $((deadline - SECONDS + 1)) "$target" >/dev/null 2>&1
}

# -------------------------------------------------------------- systems
run_veth() {
  AGENTS=()
  START_MS=()
  measure veth "$IP_A" null
  stop_all_agents
}

run_wireguard_go() {
  local side ns peer_ip wg_ip other
  local -A priv=() pub=()
  for side in a b; do
    priv[$side]=$(wg genkey)
    pub[$side]=$(wg pubkey <<<"${priv[$side]}")
    printf '%s\n' "${priv[$side]}" >"$WORK/wg-$side.key"
    chmod 600 "$WORK/wg-$side.key"
  done
  AGENTS=()
  START_MS=()
  # One interface name per side: wireguard-go's control socket lives in
  # /var/run/wireguard/<name>.sock, which both namespaces share.
  for side in a b; do
    if [[ $side == a ]]; then ns=$NS_A peer_ip=$IP_B wg_ip=$WG_A other=b; else ns=$NS_B peer_ip=$IP_A wg_ip=$WG_B other=a; fi
    local dev=wgdp$side peer_wg=$WG_A
    [[ $other == b ]] && peer_wg=$WG_B
    ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$dev" >"$WORK/wireguard-go-$side.log" 2>&1 &
    PIDS[wg-$side]=$!
    AGENTS+=("${PIDS[wg-$side]}")
    wait_for 10 "wireguard-go's $dev in $ns (see $WORK/wireguard-go-$side.log)" ip netns exec "$ns" wg show "$dev"
    ip netns exec "$ns" wg set "$dev" private-key "$WORK/wg-$side.key" listen-port 51820 \
      peer "${pub[$other]}" endpoint "$peer_ip:51820" allowed-ips "$peer_wg/32"
    ip -n "$ns" addr add "$wg_ip/24" dev "$dev"
    ip -n "$ns" link set "$dev" up
  done
  wait_for 20 "a WireGuard handshake (wireguard-go)" B ping -c 1 -W 1 "$WG_A"
  measure wireguard-go "$WG_A" null
  stop_all_agents
}

ts_env() {
  local d=$1
  echo env -i "PATH=$PATH" "HOME=$d" "XDG_CACHE_HOME=$d/cache" "XDG_CONFIG_HOME=$d/config" \
    TS_NO_LOGS_NO_SUPPORT=true "TS_LOGS_DIR=$d" "SSL_CERT_FILE=$CA" "SSL_CERT_DIR=$d/no-cert-dir"
}
ts_cli() {
  local ns=$1 d=$2
  shift 2
  # shellcheck disable=SC2046
  ip netns exec "$ns" $(ts_env "$d") "$TAILSCALE" --socket="$d/tailscaled.sock" "$@"
}
ts_start() {
  local side=$1 ns=$2 d=$WORK/ts-$1
  mkdir -p "$d"
  # shellcheck disable=SC2046
  ip netns exec "$ns" $(ts_env "$d") "$TAILSCALED" --no-logs-no-support --statedir="$d" \
    --state="$d/tailscaled.state" --socket="$d/tailscaled.sock" --tun=tailscale0 --port=41641 \
    --encrypt-state=false >"$d/tailscaled.log" 2>&1 &
  PIDS[ts-$side]=$!
  AGENTS+=("${PIDS[ts-$side]}")
  wait_for 20 "tailscaled $side to answer" ts_cli "$ns" "$d" status --json
}
ts_up() {
  local side=$1 ns=$2 d=$WORK/ts-$1
  ts_cli "$ns" "$d" up --login-server="$SERVER_URL" --hostname="ts-$side" --accept-dns=false \
    --auth-key="$AUTHKEY" --timeout=60s >"$d/up.log" 2>&1 ||
    die "tailscale up ($side) failed: $(cat "$d/up.log")"
}

run_tailscaled() {
  # Missing tools cost this system only: null figures and a note.
  [[ -x $TAILSCALED && -x $TAILSCALE ]] ||
    die "tailscaled/tailscale not in $TOOLS_DIR/bin: run e2e/setup.sh first (or set MESHSCALE_TOOLS_DIR)"
  AGENTS=()
  ts_start a "$NS_A"
  ts_up a "$NS_A"
  local ip_a
  ip_a=$(ts_cli "$NS_A" "$WORK/ts-a" ip -4)
  # Each start a new node B (fresh state), as a new pod is; the last one
  # stays for the other figures. Back to back, as the pods of a rollout
  # start: the server then batches changes over a longer window (a burst),
  # and node A may hear of B later than B sends its first packet.
  local t0 i side=
  START_MS=()
  for ((i = 1; i <= STARTS; i++)); do
    [[ -n $side ]] && stop_bg "ts-$side"
    side=b$i
    ts_start "$side" "$NS_B"
    t0=$(now_ms)
    ts_up "$side" "$NS_B"
    first_packet "$NS_B" "$ip_a" 30 || die "tailscaled: no packet across within 30 s of up"
    START_MS+=($(($(now_ms) - t0)))
    log "tailscaled: first packet ${START_MS[-1]} ms after up (start $i/$STARTS)"
  done
  AGENTS=("${PIDS[ts-a]}" "${PIDS[ts-$side]}")
  if [[ $START_ONLY != 1 ]]; then
    wait_for 30 "tailscaled's direct path" bash -c \
      "$(declare -f ts_cli ts_env); WORK=$WORK CA=$CA PATH=$PATH TAILSCALE=$TAILSCALE; \
       ts_cli $NS_B $WORK/ts-$side ping -c 1 --timeout=1s $ip_a | grep -q 'via $IP_A'"
  fi
  measure tailscaled "$ip_a" "$(printf '%s\n' "${START_MS[@]}" | median)"
  stop_all_agents
}

sc_cli() { ip netns exec "$1" "$SIDECAR" --state-dir "$2" "${@:3}"; }
sc_start() {
  local side=$1 ns=$2 d=$WORK/sc-$1
  mkdir -p "$d"
  # The key goes through the environment, never the command line.
  MESHSCALE_AUTHKEY=$AUTHKEY ip netns exec "$ns" "$SIDECAR" --state-dir "$d" up \
    --login-server "$SERVER_URL" --hostname "sc-$side" --ca-file "$CA" >"$d/sidecar.log" 2>&1 &
  PIDS[sc-$side]=$!
  AGENTS+=("${PIDS[sc-$side]}")
}

run_sidecar() {
  [[ -x $SIDECAR ]] || die "meshscale-sidecar binary not found at $SIDECAR"
  AGENTS=()
  sc_start a "$NS_A"
  wait_for 30 "sidecar a's tunnel (see $WORK/sc-a/sidecar.log)" \
    bash -c "ip netns exec $NS_A $SIDECAR --state-dir $WORK/sc-a ip -4 | grep -q '^100\.'"
  local ip_a t0 i side=
  ip_a=$(sc_cli "$NS_A" "$WORK/sc-a" ip -4)
  # As for tailscaled: each start a new node B, the last one kept.
  START_MS=()
  for ((i = 1; i <= STARTS; i++)); do
    [[ -n $side ]] && stop_bg "sc-$side"
    side=b$i
    t0=$(now_ms)
    sc_start "$side" "$NS_B"
    first_packet "$NS_B" "$ip_a" 30 ||
      die "sidecar: no packet across within 30 s of up (see $WORK/sc-$side/sidecar.log)"
    START_MS+=($(($(now_ms) - t0)))
    log "meshscale-sidecar: first packet ${START_MS[-1]} ms after up (start $i/$STARTS)"
  done
  AGENTS=("${PIDS[sc-a]}" "${PIDS[sc-$side]}")
  if [[ $START_ONLY != 1 ]]; then
    wait_for 30 "the sidecar's direct path" bash -c \
      "ip netns exec $NS_B ping -c 1 -W 1 $ip_a >/dev/null; \
       ip netns exec $NS_B $SIDECAR --state-dir $WORK/sc-$side status --json | jq -e '.peers[] | select(.name == \"sc-a\") | .path | startswith(\"direct\")'"
  fi
  measure meshscale-sidecar "$ip_a" "$(printf '%s\n' "${START_MS[@]}" | median)"
  [[ $START_ONLY == 1 ]] || measure_filter "$ip_a" "$WORK/sc-a" "$WORK/sc-$side"
  stop_all_agents
}

# The policy with 20 ACL entries: 19 for ports nothing uses, then iperf3's.
policy_20() {
  local i acls=
  for ((i = 0; i < 19; i++)); do
    acls+="{\"action\": \"accept\", \"src\": [\"bench@\"], \"proto\": \"tcp\", \"dst\": [\"bench@:$((7000 + i))\"]},"
  done
  acls+='{"action": "accept", "src": ["bench@"], "proto": "tcp", "dst": ["bench@:5201"]}'
  printf '{"acls": [%s]}\n' "$acls"
}

# Sets the policy in file $1 and waits until both sidecars compiled $2
# filter entries (status --json .filter.matches).
set_policy_and_wait() {
  local file=$1 want=$2 a=$3 b=$4
  "$MESHSCALE" -c "$WORK/server/config.yaml" policy set --file "$file" >/dev/null
  wait_for 20 "both sidecars to apply $(basename "$file")" bash -c \
    "[[ \$(ip netns exec $NS_A $SIDECAR --state-dir $a status --json | jq '.filter.matches') $want ]] &&
     [[ \$(ip netns exec $NS_B $SIDECAR --state-dir $b status --json | jq '.filter.matches') $want ]]"
}

# The packet filter's cost: one-stream TCP (fwd) with an allow-all policy
# and with the 20-entry one, alternating run by run so machine noise hits
# both alike. Adds tcp1_fwd_allow_all_mbps, tcp1_fwd_filter20_mbps and
# filter20_matches to the sidecar's figures.
measure_filter() {
  local target=$1 a=$2 b=$3 dir=$WORK/meshscale-sidecar run f mbps
  local -A runs=()
  printf '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}\n' >"$dir/policy-allow-all.json"
  policy_20 >"$dir/policy-20.json"
  ip netns exec "$NS_A" iperf3 -s -p 5201 >"$dir/iperf3-filter-server.log" 2>&1 &
  PIDS[iperf3]=$!
  wait_for 10 "iperf3 -s" B bash -c "exec 3<>/dev/tcp/$target/5201"
  local matches20=null
  for ((run = 1; run <= RUNS; run++)); do
    for pol in allow-all 20; do
      if [[ $pol == 20 ]]; then
        set_policy_and_wait "$dir/policy-$pol.json" "-ge 20" "$a" "$b"
        matches20=$(ip netns exec "$NS_A" "$SIDECAR" --state-dir "$a" status --json | jq '.filter.matches')
      else
        set_policy_and_wait "$dir/policy-$pol.json" "-le 2" "$a" "$b"
      fi
      f=$dir/filter-$pol-$run.json
      log "meshscale-sidecar: tcp1_fwd with the $pol policy, run $run/$RUNS (${SECS}s)"
      if ! B timeout $((SECS + 30)) iperf3 -c "$target" -p 5201 -t "$SECS" -J >"$f" 2>"$f.err"; then
        log "meshscale-sidecar: filter run failed: $(head -c 300 "$f.err")"
        continue
      fi
      mbps=$(jq -r '.end.sum_received.bits_per_second / 1e6 | . * 10 | round / 10' "$f")
      runs[$pol]+="$mbps "
    done
  done
  stop_bg iperf3
  local all20 allow
  allow=$(printf '%s\n' ${runs[allow-all]:-} | median)
  all20=$(printf '%s\n' ${runs[20]:-} | median)
  jq --argjson a "${allow:-null}" --argjson f "${all20:-null}" --argjson m "$matches20" \
    '. + {tcp1_fwd_allow_all_mbps: $a, tcp1_fwd_filter20_mbps: $f, filter20_matches: $m}' \
    "$WORK/meshscale-sidecar.json" >"$WORK/meshscale-sidecar.json.tmp"
  mv "$WORK/meshscale-sidecar.json.tmp" "$WORK/meshscale-sidecar.json"
}

stop_all_agents() {
  local name
  for name in "${!PIDS[@]}"; do
    [[ $name == server ]] || stop_bg "$name"
  done
  AGENTS=()
}

# ------------------------------------------------------------------- run
started=$SECONDS
need_server && start_server
FAILED_NOTES=()
for sys in $SYSTEMS; do
  log "== $sys"
  # Each system in a subshell: one that fails leaves null figures and a
  # note instead of losing the whole run.
  set +e
  (
    set -e
    case $sys in
      veth) run_veth ;;
      wireguard-go) run_wireguard_go ;;
      tailscaled) run_tailscaled ;;
      meshscale-sidecar) run_sidecar ;;
    esac
  )
  rc=$?
  set -e
  if ((rc != 0)) || [[ ! -s $WORK/$sys.json ]]; then
    log "$sys: FAILED (exit $rc); its figures are null"
    FAILED_NOTES+=("$sys: the measurement failed (exit $rc; see the log above); its figures are null.")
    # What the failed subshell left running, except the server.
    for ns in "$NS_A" "$NS_B"; do
      for pid in $(ip netns pids "$ns" 2>/dev/null); do
        [[ $pid == "${PIDS[server]:-}" ]] || kill -KILL "$pid" 2>/dev/null || true
      done
    done
    jq -n '{tcp1_fwd_mbps: null, tcp1_rev_mbps: null, tcp4_fwd_mbps: null, tcp4_rev_mbps: null,
      tcp_runs: {}, udp_pps: null, udp_mbps: null, udp_loss_pct: null,
      lat_idle_p50_ms: null, lat_idle_p99_ms: null, lat_load_p50_ms: null, lat_load_p99_ms: null,
      cpu_s_per_gb: null, rss_idle_kib: null, rss_load_kib: null, up_to_first_packet_ms: null,
      up_to_first_packet_runs_ms: null}' >"$WORK/$sys.json"
  fi
done
stop_bg server

# ------------------------------------------------------------------ output
mkdir -p "$OUT"
systems_json='{}'
for sys in $SYSTEMS; do
  systems_json=$(jq -c --arg k "$sys" --slurpfile v "$WORK/$sys.json" '. + {($k): $v[0]}' <<<"$systems_json")
done
sidecar_ver=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain -- sidecar 2>/dev/null) ]]; then sidecar_ver+="-dirty"; fi
wg_ver=$(wireguard-go --version 2>/dev/null | head -n1 | awk '{print $2}')
ts_ver=null
[[ -x $TAILSCALED ]] && ts_ver=$("$TAILSCALED" --version 2>/dev/null | head -n1 | jq -R .)
notes=(
  "All systems measured one after another in one run on this machine; other work on the machine makes figures noisy, so compare systems within this run."
  "Two namespaces joined by one veth pair; meshscale serve (embedded DERP relay only) runs in the first namespace."
  "TCP: iperf3, ${SECS} s per run, median of ${RUNS}; fwd = from namespace B to A, rev = -R. Mbit/s as received."
  "UDP: iperf3 -u -b 0 -l 1400 for ${UDP_SECS} s; udp_pps = datagrams received per second. 1,400-byte payloads exceed the tunnels' MTU (1280 tailscaled/sidecar, 1420 wireguard-go) and travel as two IP fragments inside them."
  "Latency: ping -i 0.01, ${PINGS} samples, nearest-rank p50/p99; under load = while one iperf3 TCP stream runs; lost pings are not counted."
  "cpu_s_per_gb: utime+stime of both agents over all TCP runs, per GB received by iperf3 (null for veth: kernel only)."
  "rss_*_kib: the larger of the two agents' VmRSS; idle after the path is up, load = peak sampled every 0.5 s during the load run."
  "tcp1_fwd_allow_all_mbps / tcp1_fwd_filter20_mbps (sidecar only): one-stream TCP with an allow-all policy vs a 20-entry ACL (19 entries for unused ports, iperf3's last), alternating run by run, median of ${RUNS} each; filter20_matches = the compiled filter entries per family on the receiving sidecar. Target: within 5%."
  "up_to_first_packet_ms: from starting node B (tailscale up, with its tailscaled already running; meshscale-sidecar up) to the first ping reply from node A's mesh address; median of ${STARTS} starts, each a new node B with fresh state (up_to_first_packet_runs_ms: every start, in order)."
)
notes_json=$(printf '%s\n' "${notes[@]}" "${FAILED_NOTES[@]}" | jq -R 'select(length > 0)' | jq -s -c .)
jq -n \
  --argjson cores "$(nproc)" --arg kernel "$(uname -r)" \
  --arg cpu "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)" \
  --arg wg "${wg_ver:-unknown}" --argjson ts "$ts_ver" \
  --arg iperf "$(iperf3 --version | head -n1 | awk '{print $2}')" --arg sc "$sidecar_ver" \
  --argjson systems "$systems_json" --argjson notes "$notes_json" \
  '{machine: {cores: $cores, kernel: $kernel, cpu: $cpu},
    versions: {"wireguard-go": $wg, tailscaled: $ts, iperf3: $iperf, "meshscale-sidecar": $sc},
    systems: $systems, notes: $notes}' >"$OUT/dataplane.json.tmp"
mv "$OUT/dataplane.json.tmp" "$OUT/dataplane.json"

# ------------------------------------------------------------------- table
jq -r '
  def fmt: if . == null then "-" elif (. | type) == "number" then (. * 100 | round / 100 | tostring) else tostring end;
  def ratio($a; $b): if $a == null or $b == null or $b == 0 then "-" else ($a / $b * 100 | round / 100 | tostring) + "x" end;
  .systems as $s
  | ["veth", "wireguard-go", "tailscaled", "meshscale-sidecar"] as $cols
  | (["figure", "veth", "wg-go", "tailscaled", "sidecar", "sc/wg-go", "sc/tailscaled"] | @tsv),
    (["tcp1_fwd_mbps", "tcp1_rev_mbps", "tcp4_fwd_mbps", "tcp4_rev_mbps", "udp_pps", "udp_mbps",
      "udp_loss_pct", "lat_idle_p50_ms", "lat_idle_p99_ms", "lat_load_p50_ms", "lat_load_p99_ms",
      "cpu_s_per_gb", "rss_idle_kib", "rss_load_kib", "up_to_first_packet_ms",
      "tcp1_fwd_allow_all_mbps", "tcp1_fwd_filter20_mbps"][] as $f
     | [$f] + [$cols[] | ($s[.][$f] // null) | fmt]
       + [ratio($s["meshscale-sidecar"][$f]; $s["wireguard-go"][$f]), ratio($s["meshscale-sidecar"][$f]; $s["tailscaled"][$f])]
     | @tsv)' "$OUT/dataplane.json" | column -t -s $'\t'
log "wrote $OUT/dataplane.json in $((SECONDS - started)) s"
