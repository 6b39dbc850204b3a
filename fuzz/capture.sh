#!/usr/bin/env bash
# Records official tailscaled (1.96.4) traffic and checks it in as fuzz
# seeds: runs one e2e scenario (default: two clients behind NATs, which
# uses the control protocol, DERP with disco, and STUN) with the server's
# DEBUG-ONLY capture on (MESHSCALE_DEBUG_CAPTURE_DIR, control/src/capture.rs,
# compiled in only with the control crate's `debug-capture` feature),
# then writes fuzz/corpus/<target>/capture-* (fuzz/capture_seeds.py).
# Pre-auth and API keys are redacted by the server before anything is
# written; capture_seeds.py refuses to write a seed that still holds one.
#
#   fuzz/capture.sh                     # as root, like the e2e tests
#   fuzz/capture.sh lan::two_nodes_on_one_lan_join_and_talk
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
scenario="${1:-nat::nat_to_nat_starts_on_derp_then_goes_direct}"
cd "$root"

raw="$(mktemp -d "${TMPDIR:-/tmp}/meshscale-capture.XXXXXX")"
trap 'rm -rf "$raw"' EXIT
chmod 700 "$raw"

export MESHSCALE_TOOLS_DIR="${MESHSCALE_TOOLS_DIR:-/var/cache/meshscale-tools}"
export PATH="$MESHSCALE_TOOLS_DIR/bin:$PATH"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
# Its own build dir: the feature changes the binary, and the e2e tests of
# `.ci/run` must never pick up a capturing server from a shared cache.
capture_target="$target_dir/debug-capture"
CARGO_TARGET_DIR="$capture_target" cargo build --locked -p meshscale-control --features debug-capture --bin meshscale
export MESHSCALE_BIN="$capture_target/debug/meshscale"

# Only the server reads it; tailscaled runs with a cleared environment.
MESHSCALE_DEBUG_CAPTURE_DIR="$raw" \
    cargo test --locked -p meshscale-e2e --test official_client -- --exact "$scenario" --test-threads=1
python3 "$here/capture_seeds.py" "$raw" "$here/corpus"
