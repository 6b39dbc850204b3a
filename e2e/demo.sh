#!/usr/bin/env bash
# The sidecar story on one machine, in one command (as root):
#
#   ./e2e/demo.sh
#
# starts `meshscale serve`, creates a user and a pre-auth key, brings up two
# `meshscale-sidecar` nodes in their own network namespaces, each behind its
# own NAT router, then prints `nodes list`, `status` and a `ping` that turns
# direct through both NATs, and cleans everything up.
#
#   n1 192.168.1.2 ── r1 (NAT, wan 10.200.0.11) ─┐
#                                                ├─ wan ── server 10.200.0.1
#   n2 192.168.2.2 ── r2 (NAT, wan 10.200.0.12) ─┘
#
# Everything lives in namespaces named msdemo<pid>-*: the host namespace's
# routes, sysctls and firewall are never touched, and nothing is routed off
# the machine. Needs: ip, nft, openssl, curl, cargo (unless the binaries are
# built: set BIN_DIR, default $CARGO_TARGET_DIR/debug or target/debug).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "demo.sh: needs root (network namespaces, TUN devices)" >&2
  exit 1
fi
for c in ip nft openssl curl; do
  command -v "$c" >/dev/null || { echo "demo.sh: \`$c\` is missing" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/debug}
if [[ ! -x $BIN_DIR/meshscale || ! -x $BIN_DIR/meshscale-sidecar ]]; then
  echo "== building meshscale and meshscale-sidecar"
  (cd "$ROOT" && cargo build -p meshscale-control -p meshscale-sidecar --bins)
fi
MESHSCALE=$BIN_DIR/meshscale
SIDECAR=$BIN_DIR/meshscale-sidecar

P=msdemo$$
DIR=$(mktemp -d "/tmp/$P.XXXXXX")
NAMESPACES=()
PIDS=()

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "logs kept in $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT INT TERM

ns() { ip netns add "$P-$1"; NAMESPACES+=("$P-$1"); ip -n "$P-$1" link set lo up; }
in_ns() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }

# Polls "$@" every 0.2 s until it succeeds, for at most $1 seconds.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "demo.sh: timed out waiting for $what" >&2
      return 1
    fi
    sleep 0.2
  done
}

echo "== network: a WAN switch, two NAT routers, two private LANs"
ns sw
ip -n "$P-sw" link add br0 type bridge
ip -n "$P-sw" link set br0 up
# plug <ns> <ifname> <cidr>: a veth from the switch's bridge into <ns>.
plug() {
  ip -n "$P-sw" link add "p-$1" type veth peer name "$2" netns "$P-$1"
  ip -n "$P-sw" link set "p-$1" master br0 up
  ip -n "$P-$1" addr add "$3" dev "$2"
  ip -n "$P-$1" link set "$2" up
}
ns srv
plug srv eth0 10.200.0.1/24
for i in 1 2; do
  ns "r$i"
  plug "r$i" wan0 "10.200.0.1$i/24"
  in_ns "r$i" sysctl -qw net.ipv4.ip_forward=1
  # A home router: masquerade out of wan0; unsolicited packets to the
  # router itself dropped (see e2e/src/lab.rs for why this matters).
  in_ns "r$i" nft -f - <<NFT
table ip demo_nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
  chain input { type filter hook input priority filter; policy accept; iifname "wan0" ct state new drop; }
}
NFT
  ns "n$i"
  ip -n "$P-r$i" link add lan0 type veth peer name eth0 netns "$P-n$i"
  ip -n "$P-r$i" addr add "192.168.$i.1/24" dev lan0
  ip -n "$P-r$i" link set lan0 up
  ip -n "$P-n$i" addr add "192.168.$i.2/24" dev eth0
  ip -n "$P-n$i" link set eth0 up
  ip -n "$P-n$i" route add default via "192.168.$i.1"
done

echo "== meshscale serve on https://10.200.0.1:8443 (self-signed CA)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj "/CN=meshscale demo CA" -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=10.200.0.1" -keyout "$DIR/tls.key" -out "$DIR/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:10.200.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$DIR/ext"
openssl x509 -req -in "$DIR/tls.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial \
  -days 1 -extfile "$DIR/ext" -out "$DIR/tls.crt" 2>/dev/null
cat >"$DIR/config.yaml" <<YAML
server_url: https://10.200.0.1:8443
listen_addr: 10.200.0.1:8443
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: ""
tls_cert_path: $DIR/tls.crt
tls_key_path: $DIR/tls.key
data_dir: $DIR/data
unix_socket: $DIR/run/meshscale.sock
derp:
  server:
    stun_listen_addr: 10.200.0.1:3478
YAML
in_ns srv "$MESHSCALE" -c "$DIR/config.yaml" serve >"$DIR/server.log" 2>&1 &
PIDS+=($!)
ms() { "$MESHSCALE" -c "$DIR/config.yaml" "$@"; }
wait_for 30 "the server" in_ns srv curl -sf --cacert "$DIR/ca.pem" https://10.200.0.1:8443/health
wait_for 30 "the admin socket" ms users list

echo "== meshscale users create vpn1; preauthkeys create --reusable"
ms users create vpn1
KEY=$(ms preauthkeys create --user vpn1 --reusable --expiration 1h -o json |
  grep -o 'mskey-auth-[0-9a-f]*-[0-9a-f]*' | head -n1)
[[ -n $KEY ]] || { echo "demo.sh: no key created" >&2; exit 1; }

for i in 1 2; do
  echo "== n$i: meshscale-sidecar up --hostname side$i (behind r$i)"
  mkdir -p "$DIR/side$i"
  # The key goes through the environment, never the command line.
  MESHSCALE_AUTHKEY=$KEY in_ns "n$i" "$SIDECAR" --state-dir "$DIR/side$i" up \
    --login-server https://10.200.0.1:8443 --hostname "side$i" --ca-file "$DIR/ca.pem" \
    >"$DIR/side$i/sidecar.log" 2>&1 &
  PIDS+=($!)
done
sc() { local i=$1; shift; in_ns "n$i" "$SIDECAR" --state-dir "$DIR/side$i" "$@"; }
for i in 1 2; do
  wait_for 40 "side$i's tunnel" bash -c \
    "ip netns exec $P-n$i $SIDECAR --state-dir $DIR/side$i ip -4 | grep -q '^100\.'"
done
wait_for 40 "side1 to see side2" bash -c \
  "ip netns exec $P-n1 $SIDECAR --state-dir $DIR/side1 status | grep -q side2"

echo
echo "== meshscale nodes list"
ms nodes list
echo
echo "== side1: meshscale-sidecar ping side2 (DERP first, then direct through both NATs)"
sc 1 ping -c 20 side2 || { echo "(no direct path; see logs: KEEP=1 $0)"; }
echo
echo "== side1: meshscale-sidecar status"
sc 1 status
echo
echo "== side2: ping -c 3 side1's mesh address"
in_ns n2 ping -c 3 -i 0.2 "$(sc 1 ip -4)"
echo
echo "== done; cleaning up"
