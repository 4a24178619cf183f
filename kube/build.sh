#!/usr/bin/env bash
# Build (or reuse) the Kubernetes control plane the test suite runs: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and kwok.
#
#   dir=$(kube/build.sh)      # then "$dir/kube-apiserver", "$dir/etcd", ...
#
# stdout: exactly one line, the absolute path of the directory holding the binaries.
# stderr: progress.
#
# Everything comes from the Go module proxy, pinned by the three wrapper modules
# next to this script (go.mod + go.sum each):
#   controlplane/  k8s.io/kubernetes v1.37.2, every k8s.io/* staging module replaced
#                  by its v0.37.2 release; kube-apiserver, kube-controller-manager,
#                  kube-scheduler, kubectl
#   etcd/          go.etcd.io/etcd/server/v3 v3.7.3, its sibling modules replaced by
#                  their v3.7.3 releases
#   kwok/          sigs.k8s.io/kwok (fake Nodes: the cluster gets nodes with labels
#                  and the pods scheduled to them report Running)
#
# The binaries are cached under ${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/kube/<key>/
# where <key> = sha256 of the wrapper modules and this script's stamps. A complete
# cached set is reused immediately. Concurrent callers serialise on a flock; one
# builds, the others wait and reuse its result. Go's module and build caches stay in
# .../kube/go, so a version bump rebuilds only what changed.
#
# Measured cold build on a busy 2-core VM (modules already downloaded): 12.5 min in
# all; etcd 83 s, kube-apiserver + kube-controller-manager + kube-scheduler + kubectl
# 577 s, kwok 94 s. A cached run takes 0.1 s.
#
# Needs: bash, coreutils, flock + setsid (util-linux), Go (PATH or /usr/local/go/bin)
# and access to the Go module proxy.
set -euo pipefail

KUBE_VERSION="v1.37.2"   # must match k8s.io/kubernetes in controlplane/go.mod
ETCD_VERSION="v3.7.3"    # must match go.etcd.io/etcd/server/v3 in etcd/go.mod
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf 'kube/build.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

grep -q "k8s.io/kubernetes $KUBE_VERSION" "$here/controlplane/go.mod" \
  || die "controlplane/go.mod does not require k8s.io/kubernetes $KUBE_VERSION"
grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "$here/etcd/go.mod" \
  || die "etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION"

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

key="$( { for m in controlplane etcd kwok; do cat "$here/$m/go.mod" "$here/$m/go.sum"; done
          printf 'kube=%s etcd=%s stamp=2\n' "$KUBE_VERSION" "$ETCD_VERSION"; } \
        | sha256sum | cut -c1-16)"
cache_dir="$cache_root/kube/$KUBE_VERSION-$key"
bin_dir="$cache_dir/bin"

set_ok() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x "$bin_dir/$b" ]] || return 1; done
  "$bin_dir/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $KUBE_VERSION"
}

# --- fast path: already built ---------------------------------------------------
if set_ok; then
  printf '%s\n' "$bin_dir"
  exit 0
fi

# --- slow path: serialise builders on a per-key lock ------------------------------
mkdir -p "$cache_dir"
exec 9>"$cache_dir/.lock"
if ! flock -n 9; then
  log "another build of this control plane is running; waiting for it ($cache_dir/.lock)"
  flock 9
fi
if set_ok; then
  printf '%s\n' "$bin_dir"
  exit 0
fi

# --- Go toolchain and Go caches --------------------------------------------------
if ! command -v go >/dev/null 2>&1; then
  [[ -x /usr/local/go/bin/go ]] || die "go not found in PATH or /usr/local/go/bin"
  export PATH="$PATH:/usr/local/go/bin"
fi
export GOMODCACHE="${GOMODCACHE:-$cache_root/kube/go/mod}"
export GOCACHE="${GOCACHE:-$cache_root/kube/go/build}"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-modcacherw -mod=readonly"   # -modcacherw: `rm -rf` can clean the cache
export CGO_ENABLED=0
# The modules declare go 1.26.0; "auto" fetches that toolchain from the Go module
# proxy only if the local Go is older (some machines set GOTOOLCHAIN=local).
export GOTOOLCHAIN="${PHOENIX_GOTOOLCHAIN:-auto}"

start=$SECONDS
log "building etcd $ETCD_VERSION, Kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and kwok with $(go version | cut -d' ' -f3-)"
if [[ -z "$(ls -A "$GOCACHE" 2>/dev/null | head -n 1)" ]]; then
  log "first time on this machine: about 13 minutes on 2 cores (then cached in $cache_dir)"
fi

rm -rf "$cache_dir"/.build.*   # leftovers of a killed build (we hold the lock)
tmp="$(mktemp -d "$cache_dir/.build.XXXXXX")"
ticker_pid="" go_pid=""
cleanup() {
  [[ -n "$ticker_pid" ]] && kill "$ticker_pid" 2>/dev/null || true
  # go runs in its own process group (setsid); stop it and its compile children.
  [[ -n "$go_pid" ]] && kill -- "-$go_pid" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
( while sleep 60; do kill -0 $$ 2>/dev/null || exit 0
    log "still building… $(( (SECONDS - start) / 60 )) min elapsed"; done ) 9>&- &
ticker_pid=$!

# go_build MODULE_DIR LOG LDFLAGS OUTPUT PACKAGE...: one `go build` in its own
# process group, with the log kept on failure.
go_build() {
  local module="$1" name="$2" ldflags="$3" out="$4"; shift 4
  local t0=$SECONDS
  log "building $name"
  (cd "$here/$module" && exec setsid go build -trimpath -ldflags "$ldflags" -o "$out" "$@") \
    >"$tmp/$name.log" 2>&1 &
  go_pid=$!
  if ! wait "$go_pid"; then
    go_pid=""
    cp "$tmp/$name.log" "$cache_dir/$name.log" || true
    tail -n 40 "$tmp/$name.log" >&2
    die "building $name failed; full log in $cache_dir/$name.log"
  fi
  go_pid=""
  log "built $name in $(( SECONDS - t0 ))s"
}

mkdir -p "$tmp/bin"

# etcd stamps its own version (it is a module version, nothing to -X).
go_build etcd etcd "-s -w" "$tmp/bin/etcd" go.etcd.io/etcd/server/v3

# Kubernetes' Makefile stamps the version with -X; without it the binaries call
# themselves v0.0.0-master and Helm refuses a chart whose kubeVersion needs more.
kube_time="$(cd "$here/controlplane" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)"
minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
major="${KUBE_VERSION#v}"; major="${major%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$kube_time"
done
# The release's git commit is not in the module proxy's data; say where it came from.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitCommit=go-module-proxy"
done
go_build controlplane kubernetes "$kube_ldflags" "$tmp/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl

go_build kwok kwok "-s -w" "$tmp/bin/kwok" sigs.k8s.io/kwok/cmd/kwok

"$tmp/bin/kube-apiserver" --version | grep -qx "Kubernetes $KUBE_VERSION" \
  || die "kube-apiserver reports $("$tmp/bin/kube-apiserver" --version 2>&1), not $KUBE_VERSION"
"$tmp/bin/etcd" --version >/dev/null || die "built etcd does not run"

# Same filesystem (tmp is inside cache_dir), so the rename is atomic: readers see
# either no bin/ or the complete set.
rm -rf "$bin_dir"
mv "$tmp/bin" "$bin_dir"
log "built the control plane in $(( SECONDS - start ))s: $bin_dir"
printf '%s\n' "$bin_dir"
