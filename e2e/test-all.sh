#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every check
# and test of the workspace. `.ci/run` calls exactly this.
#
#   CARGO_TARGET_DIR     reuse a build cache outside the clone (optional)
#   MESHSCALE_TOOLS_DIR  where the official tailscale client and helm live (see setup.sh)
#
# Fuzzing is not a step: `cargo test` replays every fuzz target's corpus and
# kept crashes (fuzz/targets/tests/replay.rs); fuzz/run.sh runs real sessions.
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
# The cargo-fuzz crate is a workspace of its own: its one-line targets get
# fmt, and its lock file must be current (what `--locked` checks). No clippy
# or build here: that is a second build of every dependency (libFuzzer's C++
# included) for 12 one-line files; their bodies are in the workspace
# (fuzz/targets), linted and tested below.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo metadata --locked --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null || {
    echo "test-all.sh: fuzz/Cargo.lock is stale (a workspace crate's dependencies changed): run" \
        "\`cargo metadata --manifest-path fuzz/Cargo.toml --format-version 1 >/dev/null\` and commit it" >&2
    exit 1
}

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The debug-only capture hooks (fuzz/capture.sh) are compiled only with this
# feature; linting them costs one more check of the control crate alone.
cargo clippy -p meshscale-control --features debug-capture --lib --locked -- -D warnings

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

exit "$status"
