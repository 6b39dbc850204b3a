#!/usr/bin/env bash
# The dependency audit e2e/test-all.sh runs: `cargo deny` with deny.toml.
#   - bans, licenses, sources: always (they need only Cargo.lock and the
#     crates' manifests);
#   - advisories: against the live RustSec database when it can be fetched
#     (a fresh clone into a temp dir, bounded by DENY_FETCH_TIMEOUT, 60 s),
#     otherwise against a local copy of it: $MESHSCALE_ADVISORY_DB, default
#     ../shared/advisory-db beside the clone (a plain directory with a
#     SNAPSHOT file giving `commit = ...` and `date = ...`). Its date is
#     printed: advisories published after it are not checked. With neither,
#     the audit fails: an advisory check against nothing is no check.
# Needs cargo-deny (e2e/setup.sh installs it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"
command -v cargo-deny >/dev/null || { echo "deny.sh: cargo-deny missing (e2e/setup.sh installs it)" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/meshscale-deny.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# deny.toml with the advisory database directory pointed at $1.
config_with_db() {
    sed "/^\[advisories\]/a db-path = \"$1\"" deny.toml >"$work/deny.toml"
}

# Every crate's manifest must be local for `--offline` (a no-op when built).
cargo fetch --locked --quiet
cargo deny --offline check --hide-inclusion-graph bans licenses sources

config_with_db "$work/live"
if timeout "${DENY_FETCH_TIMEOUT:-60}" cargo deny --config "$work/deny.toml" fetch db >"$work/fetch.log" 2>&1; then
    db="$(ls -d "$work"/live/advisory-db-*)"
    echo "deny.sh: advisories: live RustSec database, commit $(git -C "$db" log -1 --format='%h of %cs')" >&2
else
    echo "deny.sh: advisories: live RustSec database unreachable: $(grep -v "^\s*$" "$work/fetch.log" | tail -1)" >&2
    local_db="${MESHSCALE_ADVISORY_DB:-$root/../shared/advisory-db}"
    if [[ ! -f "$local_db/SNAPSHOT" || ! -d "$local_db/crates" ]]; then
        echo "deny.sh: advisories: FAILED: no local copy either: $local_db needs SNAPSHOT and crates/ (a RustSec advisory-db checkout; set MESHSCALE_ADVISORY_DB)" >&2
        exit 1
    fi
    local_db="$(cd "$local_db" && pwd)"
    date="$(sed -n 's/^date = //p' "$local_db/SNAPSHOT")"
    commit="$(sed -n 's/^commit = //p' "$local_db/SNAPSHOT")"
    [[ -n "$date" && -n "$commit" ]] || { echo "deny.sh: advisories: FAILED: $local_db/SNAPSHOT lacks 'commit = ' or 'date = '" >&2; exit 1; }
    [[ "$date" == *T* ]] || date="${date}T00:00:00Z"
    # The copy may be read-only (CI mounts shared/ so), and cargo-deny wants
    # a git checkout it can open, dated by its last commit, in a directory
    # named after a hash of the default database URL: commit a copy in the
    # temp dir.
    db="$work/local/advisory-db-3157b0e258782691"
    mkdir -p "$db"
    cp -r "$local_db/crates" "$db/"
    [[ -d "$local_db/rust" ]] && cp -r "$local_db/rust" "$db/"
    chmod -R u+w "$db"
    git -C "$db" init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
        git -C "$db" -c user.name=snapshot -c user.email=snapshot@invalid -c commit.gpgsign=false \
        commit -qm "RustSec advisory-db $commit"
    config_with_db "$work/local"
    echo "deny.sh: advisories: checking against the local copy in $local_db: commit ${commit:0:12} of ${date%%T*}; advisories published after that are not checked" >&2
fi
cargo deny --offline --config "$work/deny.toml" check advisories
