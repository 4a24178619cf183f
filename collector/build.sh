#!/usr/bin/env bash
# Build (or reuse) the Phoenix OpenTelemetry Collector distribution.
#
#   bin=$(collector/build.sh)
#
# stdout: exactly one line, the absolute path of the otelcol-phoenix binary.
# stderr: progress.
#
# The binary is cached under ${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/collector/<hash>/
# where <hash> = sha256(manifest.yaml + ocb version). A cached binary that answers
# --version is reused immediately. Concurrent callers serialise on a flock; only
# one builds, the others wait and then reuse its result.
#
# Needs: bash, coreutils, flock + setsid (util-linux), sed, Go (PATH or /usr/local/go/bin)
# and access to the Go module proxy.
set -euo pipefail

OCB_VERSION="v0.160.0"   # must match the core component versions in manifest.yaml
DIST_NAME="otelcol-phoenix"
EXPECTED_MINUTES=10      # measured cold builds: 8-11 min on a busy 2-core VM (see README.md)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifest="${PHOENIX_COLLECTOR_MANIFEST:-$here/manifest.yaml}"

log() { printf 'collector/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ -f "$manifest" ]] || die "manifest not found: $manifest"

# --- cache location -----------------------------------------------------------
if [[ -n "${PHOENIX_CACHE_DIR:-}" ]]; then
  cache_root="$PHOENIX_CACHE_DIR"
else
  cache_root="/var/cache/phoenix"
  if ! mkdir -p "$cache_root" 2>/dev/null || [[ ! -w "$cache_root" ]]; then
    cache_root="${XDG_CACHE_HOME:-${HOME:?HOME unset; set PHOENIX_CACHE_DIR}/.cache}/phoenix"
    log "/var/cache/phoenix is not writable; using $cache_root (set PHOENIX_CACHE_DIR to choose)"
  fi
fi

mkdir -p "$cache_root" || die "cannot create cache dir $cache_root"
cache_root="$(cd "$cache_root" && pwd -P)"   # absolute, so the printed path works from anywhere

hash="$( { cat "$manifest"; printf '\nocb=%s\n' "$OCB_VERSION"; } | sha256sum | cut -d' ' -f1)"
cache_dir="$cache_root/collector/$hash"
bin="$cache_dir/$DIST_NAME"

binary_ok() { [[ -x "$bin" ]] && "$bin" --version >/dev/null 2>&1; }

# --- fast path: already built ---------------------------------------------------
if binary_ok; then
  printf '%s\n' "$bin"
  exit 0
fi

# --- slow path: serialise builders on a per-hash lock ----------------------------
mkdir -p "$cache_dir"
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
  log "another build of this collector is running; waiting for it ($cache_dir/.lock)"
  flock 9
fi
if binary_ok; then   # somebody else finished while we waited
  printf '%s\n' "$bin"
  exit 0
fi

# --- Go toolchain and Go caches --------------------------------------------------
if ! command -v go >/dev/null 2>&1; then
  [[ -x /usr/local/go/bin/go ]] || die "go not found in PATH or /usr/local/go/bin"
  export PATH="$PATH:/usr/local/go/bin"
fi
# Keep Go's module and build caches next to the binary cache unless the caller
# chose their own; this also works under systemd where HOME may be unset.
export GOMODCACHE="${GOMODCACHE:-$cache_root/collector/go/mod}"
export GOCACHE="${GOCACHE:-$cache_root/collector/go/build}"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"   # lets `rm -rf` clean the cache
export GOBIN="$cache_root/collector/ocb/$OCB_VERSION"
export CGO_ENABLED=0
# The pinned modules declare a minimum Go (v0.160.0: go 1.26.0). "auto" lets the
# go command fetch that toolchain from the Go module proxy (golang.org/toolchain)
# only if the local Go is older; a newer local Go is used as is. Some machines
# set GOTOOLCHAIN=local in $GOROOT/go.env, which would turn that into a failure.
export GOTOOLCHAIN="${PHOENIX_GOTOOLCHAIN:-auto}"

start=$SECONDS
if [[ -n "$(ls -A "$GOCACHE" 2>/dev/null | head -n 1)" ]]; then
  log "building collector (manifest changed; Go caches are warm, ~1 minute)…"
else
  log "building collector (first time on this machine, ~$EXPECTED_MINUTES minutes on 2 cores)…"
fi
log "manifest $manifest, ocb $OCB_VERSION, $(go version | cut -d' ' -f3-)"
log "cache dir $cache_dir"

rm -rf "$cache_dir"/.build.*   # leftovers of a killed build (we hold the lock)
tmp="$(mktemp -d "$cache_dir/.build.XXXXXX")"
ticker_pid="" ocb_pid=""
cleanup() {
  [[ -n "$ticker_pid" ]] && kill "$ticker_pid" 2>/dev/null || true
  # ocb runs in its own process group (setsid); stop it and its go/compile children.
  [[ -n "$ocb_pid" ]] && kill -- "-$ocb_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# Heartbeat; must not hold the lock fd, and stops if this script dies.
( while sleep 60; do kill -0 $$ 2>/dev/null || exit 0
    log "still building… $(( (SECONDS - start) / 60 )) min elapsed"; done ) 9>&- &
ticker_pid=$!

# --- ocb -------------------------------------------------------------------------
ocb="$GOBIN/builder"
ocb_have="$( { [[ -x "$ocb" ]] && "$ocb" version 2>&1; } || true)"   # prints to stderr; no pipe (pipefail + grep -q = SIGPIPE)
if [[ "$ocb_have" != *"$OCB_VERSION"* ]]; then
  log "installing ocb $OCB_VERSION into $GOBIN"
  go install "go.opentelemetry.io/collector/cmd/builder@$OCB_VERSION" >"$tmp/ocb-install.log" 2>&1 || {
    tail -n 40 "$tmp/ocb-install.log" >&2; die "go install of ocb failed"; }
fi

# --- generate + compile ----------------------------------------------------------
# ocb has no --output-path flag, so rewrite dist.output_path in a copy of the manifest.
sed -E "s|^([[:space:]]+output_path:).*|\1 $tmp/out|" "$manifest" >"$tmp/manifest.yaml"
grep -q "output_path: $tmp/out" "$tmp/manifest.yaml" || die "manifest has no dist.output_path line to override"

log "running ocb (log: $cache_dir/build.log on failure)"
setsid "$ocb" --config "$tmp/manifest.yaml" >"$tmp/build.log" 2>&1 &
ocb_pid=$!
if ! wait "$ocb_pid"; then
  ocb_pid=""
  cp "$tmp/build.log" "$cache_dir/build.log" || true
  tail -n 60 "$tmp/build.log" >&2
  die "ocb build failed after $(( SECONDS - start ))s; full log in $cache_dir/build.log"
fi

ocb_pid=""
built="$tmp/out/$DIST_NAME"
"$built" --version >/dev/null 2>&1 || die "built binary does not run: $built"

cp -f "$manifest" "$cache_dir/manifest.yaml"     # provenance, informational
mv -f "$tmp/build.log" "$cache_dir/build.log"
# Same filesystem (tmp is inside cache_dir), so this mv is an atomic rename(2):
# readers see either no binary or the complete one.
mv -f "$built" "$bin"

log "built $("$bin" --version) in $(( SECONDS - start ))s"
printf '%s\n' "$bin"
