#!/usr/bin/env bash
# A real fuzzing session (libFuzzer): builds the fuzz targets instrumented and
# runs each for SECONDS (-max_total_time). Not part of CI: `cargo test`
# replays every checked-in input instead (fuzz/targets/tests/replay.rs, no
# instrumented build). Run a session when a parser changes, and record its
# executions and findings in docs/reliability.md (Fuzzing, Results).
#
# Exits non-zero if any target crashes; each crashing input is copied to
# fuzz/regressions/<target>/ and kept there (commit it: from then on
# `cargo test` replays it too). Before fuzzing, every file in
# fuzz/regressions/<target>/ is replayed through the instrumented target.
#
#   fuzz/run.sh 20                  # every target, 20 s each
#   fuzz/run.sh 60 derp_frames      # chosen targets
#   FUZZ_OPERATOR=1 fuzz/run.sh 20  # also the AdmissionReview target (builds kube)
#
# A target's body is in fuzz/targets/src/<target>.rs; fuzz_targets/<target>.rs
# is the one-line libFuzzer entry. Works on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags. Needs cargo-fuzz:
#   cargo install --locked cargo-fuzz@0.13.2
# The checked-in seeds in fuzz/corpus/<target>/ are only read; what libFuzzer
# finds goes to a working corpus under $CARGO_TARGET_DIR/corpus/<target>/,
# kept between runs.
set -euo pipefail
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"
shift
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/meshscale-fuzz-target}"
features=()
if [[ "${FUZZ_OPERATOR:-0}" == 1 ]]; then
    features=(--features operator)
fi
command -v cargo-fuzz >/dev/null || { echo "run.sh: cargo-fuzz missing: cargo install --locked cargo-fuzz@0.13.2" >&2; exit 2; }
# cargo-fuzz has no --locked; refuse a stale fuzz/Cargo.lock before building.
cargo metadata --locked --format-version 1 >/dev/null

named=$(($# > 0))
if ((named)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
    if [[ "${FUZZ_OPERATOR:-0}" != 1 ]]; then
        targets=("${targets[@]/admission_review}")
    fi
fi

if ((named)); then
    # Only what was asked for: a chosen target must not pay for the others' build.
    for t in "${targets[@]}"; do cargo fuzz build "${features[@]}" "$t"; done
else
    cargo fuzz build "${features[@]}"
fi
triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$CARGO_TARGET_DIR/$triple/release"
log_dir="${FUZZ_LOG_DIR:-$CARGO_TARGET_DIR/fuzz-logs}"
mkdir -p "$log_dir"

failed=()
printf '%-20s %12s %8s  %s\n' target execs exec/s result
for t in "${targets[@]}"; do
    [[ -n "$t" ]] || continue
    art="$CARGO_TARGET_DIR/artifacts/$t"
    rm -rf "$art"
    work="$CARGO_TARGET_DIR/corpus/$t"
    mkdir -p "$art" "$work"
    log="$log_dir/$t.log"
    if compgen -G "regressions/$t/*" >/dev/null; then
        if ! "$bin_dir/$t" -runs=1 "regressions/$t"/* >"$log_dir/$t.replay.log" 2>&1; then
            echo "$t: a kept regression input fails again (log $log_dir/$t.replay.log)" >&2
            failed+=("$t")
            continue
        fi
    fi
    set +e
    "$bin_dir/$t" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 -artifact_prefix="$art/" "$work" "corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    result=ok
    if [[ $rc -ne 0 ]] || compgen -G "$art/*" >/dev/null; then
        result="CRASH (rc $rc, log $log)"
        failed+=("$t")
        mkdir -p "regressions/$t"
        for f in "$art"/*; do
            [[ -e "$f" ]] && cp "$f" "regressions/$t/"
        done
    fi
    printf '%-20s %12s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "run.sh: crashes in: ${failed[*]} (inputs saved under fuzz/regressions/)" >&2
    exit 1
fi
