#!/usr/bin/env bash
# Install (or reuse) a real `helm`, built from source with `go install`.
#
#   helm=$(helm/install-helm.sh)
#
# stdout: exactly one line, the absolute path of the helm binary.
# stderr: progress.
#
# The binary is cached under ${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/helm/<version>/,
# so it is built once per machine; a cached binary that reports the pinned version
# is reused immediately. Concurrent callers serialise on a flock; one builds, the
# others wait and reuse its result. On a fresh machine the build takes a few minutes
# (helm and client-go compile from nothing); the Go module and build caches are kept
# beside the binary so a version bump is quicker.
#
# Needs: bash, coreutils, flock (util-linux), Go (PATH or /usr/local/go/bin) and
# access to the Go module proxy.
set -euo pipefail

HELM_VERSION="${PHOENIX_HELM_VERSION:-v3.22.0}"

log() { printf 'helm/install-helm.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

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
cache_root="$(cd "$cache_root" && pwd -P)"

cache_dir="$cache_root/helm/$HELM_VERSION"
bin="$cache_dir/helm"

# `helm version --template` prints the version the binary was stamped with (below).
binary_ok() { [[ -x "$bin" ]] && [[ "$("$bin" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; }

# --- fast path: already installed -------------------------------------------------
if binary_ok; then
  printf '%s\n' "$bin"
  exit 0
fi

# --- slow path: serialise installers on a per-version lock ---------------------------
mkdir -p "$cache_dir"
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
  log "another install of helm $HELM_VERSION is running; waiting for it ($cache_dir/.lock)"
  flock 9
fi
if binary_ok; then
  printf '%s\n' "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  [[ -x /usr/local/go/bin/go ]] || die "go not found in PATH or /usr/local/go/bin"
  export PATH="$PATH:/usr/local/go/bin"
fi
export GOMODCACHE="${GOMODCACHE:-$cache_root/helm/go/mod}"
export GOCACHE="${GOCACHE:-$cache_root/helm/go/build}"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw"   # lets `rm -rf` clean the cache
export CGO_ENABLED=0
# helm's go.mod may ask for a newer Go than the machine has; "auto" fetches that
# toolchain from the Go module proxy only then (some machines set GOTOOLCHAIN=local).
export GOTOOLCHAIN="${PHOENIX_GOTOOLCHAIN:-auto}"

rm -rf "$cache_dir"/.build.*   # leftovers of a killed install (we hold the lock)
tmp="$(mktemp -d "$cache_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

start=$SECONDS
log "installing helm $HELM_VERSION with go install ($(go version | cut -d' ' -f3-)); first time on a machine takes a few minutes"
# `go install` builds without helm's Makefile, which stamps two things with -X; do
# the same. The version, so `helm version` tells the truth (and binary_ok can check
# it). The Kubernetes version (major = client-go major + 1, minor = client-go minor),
# which `helm template` and `helm lint` assume for .Capabilities.KubeVersion and the
# deprecated-API check; unstamped, helm assumes Kubernetes v1.20.
helm_gomod="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
[[ -f "$helm_gomod" ]] || die "cannot download helm.sh/helm/v3@$HELM_VERSION from the Go module proxy"
client_go="$(sed -n 's|^[[:space:]]*k8s.io/client-go v\([0-9]*\)\.\([0-9]*\)\..*|\1 \2|p' "$helm_gomod")"
read -r client_go_major k8s_minor <<<"$client_go"
[[ -n "${k8s_minor:-}" ]] || die "cannot find k8s.io/client-go in $helm_gomod"
k8s_major=$(( client_go_major + 1 ))
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  ldflags+=" -X $pkg.k8sVersionMajor=$k8s_major -X $pkg.k8sVersionMinor=$k8s_minor"
done
log "helm assumes Kubernetes v$k8s_major.$k8s_minor by default (its client-go version)"
if ! GOBIN="$tmp" go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >"$tmp/install.log" 2>&1; then
  cp "$tmp/install.log" "$cache_dir/install.log" || true
  tail -n 40 "$tmp/install.log" >&2
  die "go install of helm $HELM_VERSION failed; full log in $cache_dir/install.log"
fi
# Same filesystem (tmp is inside cache_dir), so this is an atomic rename(2).
mv -f "$tmp/helm" "$bin"
binary_ok || die "installed helm does not report $HELM_VERSION: $("$bin" version 2>&1 || true)"
log "installed helm $HELM_VERSION in $(( SECONDS - start ))s: $bin"
printf '%s\n' "$bin"
