#!/usr/bin/env bash
# Every issue-6 benchmark in one run, then the report (docs/benchmarks.md and
# docs/benchmarks/*.png).
#
#   sudo e2e/bench/run-all.sh [OUT_DIR]      (default /var/tmp/meshscale-bench/latest)
#
# Order: release build of meshscale, meshscale-sidecar and meshscale-loadgen
# (once, shared by every part), e2e/bench/dataplane.sh, e2e/bench/control.sh,
# `cargo bench` (criterion micro-benchmarks), the report generator
# (e2e/bench/report/report.py, matplotlib in a venv this script creates).
# A failing part is recorded in OUT_DIR/status.json and its log kept in
# OUT_DIR/<part>.log; the others still run and the report marks what is
# missing. The exit status is non-zero when any part failed.
#
# Environment:
#   CARGO_TARGET_DIR      build directory (default /var/tmp/meshscale-target, the same
#                         cache .ci/run uses; an empty folder on a new machine)
#   MESHSCALE_TOOLS_DIR   tailscale/tailscaled (e2e/setup.sh) and the report's venv
#                         (default /var/cache/meshscale-tools)
#   BENCH_PARTS           subset of "dataplane control cargo_bench" (default all;
#                         empty: only the report, from what OUT_DIR already holds)
#   BENCH_CONTROL_N       the N values for control.sh (default: its own, 1000 5000 10000)
#   DOCS_DIR              where the report goes (default <repo>/docs)
#   Each part's own variables (BENCH_SECONDS, BENCH_SYSTEMS, ...) pass through.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-/var/tmp/meshscale-bench/latest}
PARTS=${BENCH_PARTS-dataplane control cargo_bench}
TOOLS_DIR=${MESHSCALE_TOOLS_DIR:-/var/cache/meshscale-tools}
VENV=$TOOLS_DIR/bench-venv
DOCS=${DOCS_DIR:-$ROOT/docs}
# Pinned so that plots look the same from one run to the next.
MATPLOTLIB=matplotlib==3.11.2
# Safety nets only (the parts' own budgets: ~13, ~10 and ~3 minutes); a part
# past its limit is stopped and marked failed, the rest still runs.
LIMIT_BUILD=20m
LIMIT_DATAPLANE=18m
# Two more runs than before: the 20-rule policy at 5,000 nodes on each database.
LIMIT_CONTROL=22m
LIMIT_BENCH=10m

log() { printf '[run-all %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

mkdir -p "$OUT" || {
  log "cannot create $OUT"
  exit 1
}
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/meshscale-target}
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$ROOT/$CARGO_TARGET_DIR ;; esac
RELEASE=$CARGO_TARGET_DIR/release

wanted() { [[ " $PARTS " == *" $1 "* ]]; }

# Results of an earlier run must never pass for this run's.
wanted dataplane && rm -f "$OUT/dataplane.json"
wanted control && rm -f "$OUT/control.json"
wanted cargo_bench && rm -rf "$OUT/criterion" "$OUT/cargo-bench.log"
rm -f "$OUT/status.json"
[[ -n $PARTS ]] && rm -f "$OUT/notes.md"

# The running part is stopped with us (timeout runs it in its own group).
CHILD=
on_signal() {
  [[ -n $CHILD ]] && kill -TERM "$CHILD" 2>/dev/null
  wait
  log "interrupted"
  exit 130
}
trap on_signal INT TERM

declare -A STATUS=()
ORDER=(build build_loadgen dataplane control cargo_bench total report)
FAILED=0
START=$SECONDS

write_status() {
  local first=1 part
  {
    printf '{'
    for part in "${ORDER[@]}"; do
      [[ -n ${STATUS[$part]:-} ]] || continue
      ((first)) || printf ','
      first=0
      printf '\n  "%s": "%s"' "$part" "${STATUS[$part]}"
    done
    printf '\n}\n'
  } >"$OUT/status.json"
}

# run_part NAME LIMIT LOG CMD...: runs CMD with a time limit, output to LOG.
run_part() {
  local name=$1 limit=$2 logfile=$3 t0=$SECONDS rc
  shift 3
  log "$name: starting (log: $logfile, limit $limit)"
  timeout --kill-after=60 "$limit" "$@" >"$logfile" 2>&1 &
  CHILD=$!
  wait "$CHILD"
  rc=$?
  CHILD=
  local took=$((SECONDS - t0))
  if ((rc == 0)); then
    STATUS[$name]="ok in ${took} s"
    log "$name: ok in ${took} s"
  else
    if ((rc == 124)); then
      STATUS[$name]="FAILED: stopped at its ${limit} limit"
    else
      STATUS[$name]="FAILED: exit status ${rc} after ${took} s"
    fi
    FAILED=1
    log "$name: ${STATUS[$name]}; last lines of $logfile:"
    tail -n 15 "$logfile" >&2
  fi
  write_status
  return "$rc"
}

skip_part() {
  STATUS[$1]="FAILED: not run ($2)"
  FAILED=1
  log "$1: not run: $2"
  write_status
}

# ------------------------------------------------------------ report tools
# Set up first: a report must be possible whatever happens to the benchmarks.
setup_venv() {
  if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    return 0
  fi
  mkdir -p "$TOOLS_DIR" || return 1
  if ! python3 -m venv --clear "$VENV" 2>/dev/null; then
    # Debian splits venv (and ensurepip) out of python3.
    log "python3 -m venv unavailable: installing python3-venv (apt)"
    command -v apt-get >/dev/null || return 1
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >/dev/null ||
      return 1
    python3 -m venv --clear "$VENV" || return 1
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$MATPLOTLIB"
}
PYTHON=python3
if setup_venv >"$OUT/venv.log" 2>&1; then
  PYTHON=$VENV/bin/python
else
  log "matplotlib venv setup failed (see $OUT/venv.log): the report will have no plots"
fi

# ------------------------------------------------------------------ build
if [[ $(id -u) -ne 0 ]]; then
  log "not root: dataplane and control need network namespaces and are skipped"
fi
if ! wanted dataplane && ! wanted control; then
  : # cargo bench builds what it needs itself
elif command -v cargo >/dev/null; then
  run_part build "$LIMIT_BUILD" "$OUT/build.log" \
    cargo build --release --locked -p meshscale-control -p meshscale-sidecar --bins
  # Only control.sh needs the loadgen: a broken loadgen must not cost the
  # data plane its binaries.
  if wanted control; then
    run_part build_loadgen "$LIMIT_BUILD" "$OUT/build-loadgen.log" \
      cargo build --release --locked -p meshscale-loadgen --bins
  fi
else
  skip_part build "cargo not found"
fi
export MESHSCALE_BIN=$RELEASE/meshscale
export MESHSCALE_SIDECAR_BIN=$RELEASE/meshscale-sidecar
export MESHSCALE_LOADGEN_BIN=$RELEASE/meshscale-loadgen

# ------------------------------------------------------------------ parts
if wanted dataplane; then
  if [[ $(id -u) -ne 0 ]]; then
    skip_part dataplane "needs root"
  elif [[ ${STATUS[build]:-} != ok* ]]; then
    skip_part dataplane "release build failed"
  elif [[ ! -x $ROOT/e2e/bench/dataplane.sh ]]; then
    skip_part dataplane "e2e/bench/dataplane.sh missing"
  else
    if [[ ! -x $TOOLS_DIR/bin/tailscaled ]]; then
      log "tailscaled not installed: running e2e/setup.sh"
      bash "$ROOT/e2e/setup.sh" >"$OUT/setup.log" 2>&1 || log "e2e/setup.sh failed (see $OUT/setup.log)"
    fi
    run_part dataplane "$LIMIT_DATAPLANE" "$OUT/dataplane.log" "$ROOT/e2e/bench/dataplane.sh" "$OUT"
  fi
fi

if wanted control; then
  if [[ $(id -u) -ne 0 ]]; then
    skip_part control "needs root"
  elif [[ ${STATUS[build]:-} != ok* || ${STATUS[build_loadgen]:-} != ok* ]]; then
    skip_part control "release build of meshscale or meshscale-loadgen failed"
  elif [[ ! -x $ROOT/e2e/bench/control.sh ]]; then
    skip_part control "e2e/bench/control.sh missing"
  else
    # shellcheck disable=SC2086 # a list of N, split on purpose
    run_part control "$LIMIT_CONTROL" "$OUT/control.log" "$ROOT/e2e/bench/control.sh" "$OUT" ${BENCH_CONTROL_N:-}
  fi
fi

if wanted cargo_bench; then
  if ! command -v cargo >/dev/null; then
    skip_part cargo_bench "cargo not found"
  else
    # criterion writes under CRITERION_HOME: keeping it in OUT ties the
    # figures to this run. The log also carries the map sizes the report shows.
    # Micro-benchmarks are sensitive to whatever else runs on the machine.
    echo "- load average when \`cargo bench\` started: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)" >>"$OUT/notes.md"
    run_part cargo_bench "$LIMIT_BENCH" "$OUT/cargo-bench.log" \
      env CRITERION_HOME="$OUT/criterion" \
      cargo bench --locked -p meshscale-ts2021 -p meshscale-control -p meshscale-sidecar --benches
  fi
fi

# ----------------------------------------------------------------- report
STATUS[total]="$(((SECONDS - START) / 60)) min $(((SECONDS - START) % 60)) s before the report"
log "report: writing $DOCS/benchmarks.md"
STATUS[report]="ok"
write_status
if ! "$PYTHON" "$ROOT/e2e/bench/report/report.py" "$OUT" --criterion "$OUT/criterion" \
  --docs "$DOCS" --repo "$ROOT" >"$OUT/report.log" 2>&1; then
  STATUS[report]="FAILED"
  FAILED=1
  write_status
  cat "$OUT/report.log" >&2
fi

log "done in $(((SECONDS - START) / 60)) min $(((SECONDS - START) % 60)) s; results in $OUT, report in $DOCS/benchmarks.md"
for part in "${ORDER[@]}"; do
  [[ -n ${STATUS[$part]:-} ]] && printf '  %-12s %s\n' "$part" "${STATUS[$part]}" >&2
done
if ((FAILED)); then
  log "some parts FAILED (see above and $OUT/*.log); the report marks what is missing"
  exit 1
fi
