#!/usr/bin/env bash
# The dependency audit e2e/test-all.sh runs: `cargo deny` with deny.toml.
#   - bans, licenses, sources: always (they need only Cargo.lock and the
#     crates' manifests);
#   - advisories: against the live RustSec database when it can be fetched
#     (a fresh clone into a temp dir, bounded by DENY_FETCH_TIMEOUT, 60 s),
#     otherwise against the snapshot checked in under audit/advisory-db/
#     (reduced to the crates in Cargo.lock; its date is printed, and
#     advisories published after it are NOT checked).
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
    # cargo-deny keeps the default database (github.com/RustSec/advisory-db)
    # in a directory named after a hash of that URL.
    db="$work/snap/advisory-db-3157b0e258782691"
    mkdir -p "$db"
    cp -r "$here/advisory-db/." "$db/"
    date="$(sed -n 's/^date = //p' "$here/advisory-db/SNAPSHOT")"
    commit="$(sed -n 's/^commit = //p' "$here/advisory-db/SNAPSHOT")"
    # cargo-deny reads the database's date from git: commit the copy with it.
    git -C "$db" init -q
    git -C "$db" add -A
    GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
        git -C "$db" -c user.name=snapshot -c user.email=snapshot@invalid -c commit.gpgsign=false \
        commit -qm "RustSec advisory-db $commit (reduced)"
    config_with_db "$work/snap"
    echo "deny.sh: advisories: RustSec database unreachable: $(grep -v "^\s*$" "$work/fetch.log" | tail -1)" >&2
    echo "deny.sh: advisories: checking against the snapshot of ${date%%T*} (commit ${commit:0:12}, audit/advisory-db/); newer advisories are not checked" >&2
fi
cargo deny --offline --config "$work/deny.toml" check advisories
