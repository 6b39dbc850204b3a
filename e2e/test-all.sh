#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every check
# and test of the workspace. `.ci/run` calls exactly this.
#
#   CARGO_TARGET_DIR     reuse a build cache outside the clone (optional)
#   MESHSCALE_TOOLS_DIR  where the official tailscale client and helm live (see setup.sh)
#   MESHSCALE_FUZZ_SECONDS     fuzzing time per target (default 10)
#   MESHSCALE_FUZZ_TARGET_DIR  the fuzz build cache (default /var/tmp/meshscale-fuzz-target)
#   MESHSCALE_FUZZ_OPERATOR_TARGET_DIR  the admission_review target's (default ...-operator)
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test-all.sh: cargo is required (a Rust toolchain with rustfmt and clippy)" >&2; exit 1; }

e2e/setup.sh
export MESHSCALE_TOOLS_DIR="${MESHSCALE_TOOLS_DIR:-/var/cache/meshscale-tools}"
export PATH="$MESHSCALE_TOOLS_DIR/bin:$PATH"

# shellcheck source=e2e/lib/postgres.sh
source e2e/lib/postgres.sh
pg_start
trap pg_stop EXIT

step() { printf '\n== %s\n' "$*" >&2; }

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "dependency audit (cargo deny: bans, licenses, sources, advisories)"
audit/deny.sh

step "build"
# The end-to-end scenarios (e2e/tests) run the real `meshscale` binary; build it
# first and tell them where it is, so they never test a stale one.
cargo build --workspace --bins --locked
export MESHSCALE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/meshscale"
case $MESHSCALE_BIN in /*) ;; *) MESHSCALE_BIN="$PWD/$MESHSCALE_BIN" ;; esac

step "tests (SQLite and PostgreSQL at $MESHSCALE_TEST_POSTGRES_URL)"
log=$(mktemp)
trap 'pg_stop; rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# cargo prints one result line per test binary; add them up into one closing line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"

# Bounded: every target for MESHSCALE_FUZZ_SECONDS each, after replaying
# every kept crash input in fuzz/regressions/. Own target dirs: instrumented
# builds share nothing with the workspace's.
fuzz_secs="${MESHSCALE_FUZZ_SECONDS:-10}"
step "fuzz (every target ${fuzz_secs} s, regressions replayed)"
set +e
CARGO_TARGET_DIR="${MESHSCALE_FUZZ_TARGET_DIR:-/var/tmp/meshscale-fuzz-target}" fuzz/run.sh "$fuzz_secs"
fuzz_status=$?
# The AdmissionReview target needs the operator (kube); that feature changes
# shared dependencies' features, so it gets its own build cache and the
# other targets' cache stays warm.
FUZZ_OPERATOR=1 CARGO_TARGET_DIR="${MESHSCALE_FUZZ_OPERATOR_TARGET_DIR:-/var/tmp/meshscale-fuzz-target-operator}" \
    fuzz/run.sh "$fuzz_secs" admission_review || fuzz_status=$?
set -e
((fuzz_status == 0)) || echo "fuzz: FAILED (status $fuzz_status)" >&2
((status != 0)) && exit "$status"
exit "$fuzz_status"
