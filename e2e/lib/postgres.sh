#!/usr/bin/env bash
# Throwaway PostgreSQL server for Meshscale's tests, from Debian's postgresql package.
#
# Source it and call pg_start / pg_stop (pg_start exports MESHSCALE_TEST_POSTGRES_URL), or run it:
#   e2e/lib/postgres.sh start   # starts if needed, prints the URL on stdout
#   e2e/lib/postgres.sh stop
#   e2e/lib/postgres.sh url     # prints the URL (does not start anything)
#
#   MESHSCALE_PG_DIR      holds data/ and postgres.log (default /var/tmp/meshscale-pg)
#   MESHSCALE_PG_PORT     TCP port on 127.0.0.1 (default 55432)
#   MESHSCALE_PG_TIMEOUT  seconds to wait for readiness (default 30)
#
# As root the server runs as the `postgres` OS user, since PostgreSQL refuses to run as root.
# Only meant for tests: durability is switched off and every local connection is trusted.

# No `set -e` at this level: when sourced it would change the caller's shell.

_pg_log() { printf 'postgres.sh: %s\n' "$*" >&2; }

_pg_base() { printf '%s\n' "${MESHSCALE_PG_DIR:-/var/tmp/meshscale-pg}"; }
_pg_data() { printf '%s/data\n' "$(_pg_base)"; }
_pg_port() { printf '%s\n' "${MESHSCALE_PG_PORT:-55432}"; }

pg_url() { printf 'postgres://postgres@127.0.0.1:%s/postgres\n' "$(_pg_port)"; }

# Debian's own binaries, highest major version: /usr/local/bin/pg_ctl and friends may be
# another build, and mixing versions breaks an existing data dir.
_pg_bindir() {
  local dir best="" best_ver=0 ver
  for dir in /usr/lib/postgresql/*/bin; do
    [[ -x $dir/pg_ctl ]] || continue
    ver=${dir#/usr/lib/postgresql/}
    ver=${ver%%/*}
    [[ $ver =~ ^[0-9]+$ ]] || continue
    if ((ver > best_ver)); then best=$dir best_ver=$ver; fi
  done
  if [[ -z $best ]]; then
    _pg_log "no PostgreSQL under /usr/lib/postgresql; run e2e/setup.sh first"
    return 1
  fi
  printf '%s\n' "$best"
}

# Run a command as the server's owner. cd / because postgres cannot read root's cwd.
_pg_as_owner() {
  if [[ $(id -u) -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    (cd / && "$@")
  fi
}

_pg_owner() { if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi; }

_pg_running() {
  local bindir=$1 data=$2
  [[ -f $data/PG_VERSION ]] && _pg_as_owner "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1
}

_pg_ready() {
  local bindir=$1
  "$bindir/pg_isready" -q -h 127.0.0.1 -p "$(_pg_port)" -U postgres -d postgres -t 2
}

# Creates the cluster once; a data dir from another major version is throwaway, so it is redone.
_pg_init() {
  local bindir=$1 base data owner major
  base=$(_pg_base)
  data=$(_pg_data)
  owner=$(_pg_owner)
  major=${bindir#/usr/lib/postgresql/}
  major=${major%%/*}

  mkdir -p "$base" || return 1
  chown "$owner:" "$base" || return 1
  if ! _pg_as_owner test -w "$base"; then
    _pg_log "$owner cannot write $base (is a parent directory private?)"
    return 1
  fi

  if [[ -f $data/PG_VERSION && $(<"$data/PG_VERSION") != "$major" ]]; then
    _pg_log "data dir is from PostgreSQL $(<"$data/PG_VERSION"), server is $major: recreating it"
    rm -rf "$data" || return 1
  fi
  if [[ -f $data/PG_VERSION ]]; then
    # A data dir left by another user (say, a non-root run) would make the server refuse it.
    if [[ $(stat -c %U "$data") != "$owner" ]]; then chown -R "$owner:" "$data" || return 1; fi
    return 0
  fi

  rm -rf "$data" || return 1
  _pg_log "initdb $data (PostgreSQL $major)"
  _pg_as_owner "$bindir/initdb" -D "$data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C --no-sync >"$base/initdb.log" 2>&1 || {
    _pg_log "initdb failed:"
    cat "$base/initdb.log" >&2
    return 1
  }
  # Only the unix socket and IPv4 loopback may connect; nothing else is trusted.
  _pg_as_owner tee "$data/pg_hba.conf" >/dev/null <<'EOF' || return 1
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       all                 trust
host    all       all   127.0.0.1/32  trust
EOF
  # Settings that may change between runs (port, paths) live in meshscale.conf, rewritten
  # on every start, so they never go stale in postgresql.conf.
  printf "\ninclude_if_exists = 'meshscale.conf'\n" |
    _pg_as_owner tee -a "$data/postgresql.conf" >/dev/null || return 1
}

_pg_write_conf() {
  local data port
  data=$(_pg_data)
  port=$(_pg_port)
  [[ $port =~ ^[0-9]+$ ]] || {
    _pg_log "MESHSCALE_PG_PORT must be a number, got '$port'"
    return 1
  }
  _pg_as_owner tee "$data/meshscale.conf" >/dev/null <<EOF
# Written by e2e/lib/postgres.sh on each start.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '${data//\'/\'\'}'
# Throwaway cluster: durability buys nothing and costs test time.
fsync = off
synchronous_commit = off
full_page_writes = off
# Tests run in parallel, each with its own connection pool.
max_connections = 200
EOF
}

# Show the log written since byte offset FROM, so old runs' noise does not hide the cause.
_pg_show_log() {
  local log
  log="$(_pg_base)/postgres.log"
  [[ -f $log ]] || return 0
  _pg_log "log since this start ($log):"
  tail -c +"$(($1 + 1))" "$log" | tail -n 20 >&2
}

pg_start() {
  local bindir data base deadline timeout logpos=0
  bindir=$(_pg_bindir) || return 1
  timeout=${MESHSCALE_PG_TIMEOUT:-30}
  base=$(_pg_base)
  data=$(_pg_data)
  deadline=$((SECONDS + timeout))

  if _pg_running "$bindir" "$data"; then
    _pg_log "already running ($data)"
  else
    _pg_init "$bindir" || return 1
    _pg_write_conf || return 1
    logpos=$(stat -c %s "$base/postgres.log" 2>/dev/null || echo 0)
    # -w returns as soon as the postmaster is up or has died (port taken, bad config),
    # so a broken start fails fast instead of running out the clock below.
    _pg_as_owner "$bindir/pg_ctl" start -w -t "$timeout" -D "$data" -l "$base/postgres.log" \
      >/dev/null || {
      _pg_log "pg_ctl start failed"
      _pg_show_log "$logpos"
      return 1
    }
  fi

  # The server is up; wait until it actually accepts connections where the tests will connect.
  until _pg_ready "$bindir"; do
    if ! _pg_running "$bindir" "$data" || ((SECONDS >= deadline)); then
      _pg_log "server not ready on 127.0.0.1:$(_pg_port)"
      _pg_show_log "$logpos"
      return 1
    fi
    sleep 0.2
  done

  MESHSCALE_TEST_POSTGRES_URL=$(pg_url)
  export MESHSCALE_TEST_POSTGRES_URL
  _pg_log "ready: $MESHSCALE_TEST_POSTGRES_URL"
}

pg_stop() {
  local bindir data
  bindir=$(_pg_bindir) || return 1
  data=$(_pg_data)
  if ! _pg_running "$bindir" "$data"; then
    _pg_log "not running"
    return 0
  fi
  # fast: roll back open test transactions instead of waiting for clients to leave.
  _pg_as_owner "$bindir/pg_ctl" stop -D "$data" -m fast -w >/dev/null || return 1
  _pg_log "stopped"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  case "${1:-}" in
  start) pg_start && pg_url ;;
  stop) pg_stop ;;
  url) pg_url ;;
  *)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
  esac
fi
