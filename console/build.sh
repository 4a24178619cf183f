#!/usr/bin/env bash
# Build (or reuse) the web console that phoenix-api embeds.
#
#   dist=$(console/build.sh)          # the directory holding index.html and assets/
#   deps=$(console/build.sh --deps)   # its node_modules (for the browser tests)
#
# stdout: exactly one line, an absolute path. stderr: progress.
#
# Cached under ${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/console/: node_modules per
# lockfile hash (deps/<hash>, from `npm ci`), and the build per hash of the sources,
# lockfile and Node version (<hash>/dist). Concurrent callers serialise on a flock;
# only one builds. A build type-checks (tsc) before it bundles (esbuild).
#
# Needs: bash, coreutils, flock (util-linux), node and npm, access to the npm registry.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'console/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v node >/dev/null 2>&1 || die "node not found (apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found (apt-get install npm)"

if [[ -n "${PHOENIX_CACHE_DIR:-}" ]]; then
  cache_root="$PHOENIX_CACHE_DIR"
else
  cache_root="/var/cache/phoenix"
  if ! mkdir -p "$cache_root" 2>/dev/null || [[ ! -w "$cache_root" ]]; then
    cache_root="${XDG_CACHE_HOME:-${HOME:?HOME unset; set PHOENIX_CACHE_DIR}/.cache}/phoenix"
    log "/var/cache/phoenix is not writable; using $cache_root (set PHOENIX_CACHE_DIR to choose)"
  fi
fi
mkdir -p "$cache_root/console" || die "cannot create $cache_root/console"
root="$(cd "$cache_root/console" && pwd -P)"

# --- dependencies, per lockfile ------------------------------------------------------
lock_hash="$(cat "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
deps="$root/deps/$lock_hash"
if [[ ! -f "$deps/.complete" ]]; then
  mkdir -p "$deps"
  exec 8>"$deps/.lock"
  flock 8
  if [[ ! -f "$deps/.complete" ]]; then
    log "installing npm dependencies (npm ci, lockfile $lock_hash)…"
    start=$SECONDS
    rm -rf "$deps/node_modules"
    cp "$here/package.json" "$here/package-lock.json" "$deps/"
    # No install scripts: esbuild's platform binary comes as its own npm package.
    (cd "$deps" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) || die "npm ci failed"
    touch "$deps/.complete"
    log "dependencies installed in $(( SECONDS - start ))s"
  fi
  exec 8>&-
fi
if [[ "${1:-}" == "--deps" ]]; then
  printf '%s\n' "$deps/node_modules"
  exit 0
fi

# --- the build, per sources -------------------------------------------------------------
sources=("$here/package.json" "$here/package-lock.json" "$here/tsconfig.json" "$here/build.mjs")
while IFS= read -r -d '' f; do sources+=("$f"); done < <(find "$here/src" -type f -print0 | LC_ALL=C sort -z)
key="$( { for f in "${sources[@]}"; do printf '%s\n' "${f#"$here"/}"; cat "$f"; done; node --version; } | sha256sum | cut -c1-16)"
out="$root/$key"
built() { [[ -f "$out/dist/index.html" ]]; }
if built; then
  printf '%s\n' "$out/dist"
  exit 0
fi
mkdir -p "$out"
exec 9>"$out/.lock"
if ! flock -n 9; then
  log "another build of this console is running; waiting for it"
  flock 9
fi
if built; then
  printf '%s\n' "$out/dist"
  exit 0
fi
start=$SECONDS
rm -rf "$out"/.build.*
tmp="$(mktemp -d "$out/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cp -r "$here/src" "$here/package.json" "$here/tsconfig.json" "$here/build.mjs" "$tmp/"
ln -s "$deps/node_modules" "$tmp/node_modules"
log "type-checking and bundling the console ($key)…"
(cd "$tmp" && node_modules/.bin/tsc --noEmit -p . >&2) || die "type check failed"
(cd "$tmp" && node build.mjs "$tmp/dist") || die "bundling failed"
[[ -f "$tmp/dist/index.html" ]] || die "the build made no index.html"
mv "$tmp/dist" "$out/dist"   # same filesystem: an atomic rename
log "built in $(( SECONDS - start ))s"
printf '%s\n' "$out/dist"
