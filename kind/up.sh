#!/usr/bin/env bash
# Phoenix on a local kind cluster, end to end:
#
#   kind/up.sh          create the cluster (or reuse it), build and load the three
#                       images, install the chart with kind/values.yaml, run
#                       `helm test`, apply examples/ with the phoenix CLI through a
#                       port-forward, and wait for every experiment's verdict
#   kind/up.sh --down   delete the cluster
#
# Needs: docker (a running daemon), kind (>= v0.20, for node labels), kubectl, Go
# (helm is built by helm/install-helm.sh) and cargo (the phoenix CLI runs locally).
#
# Settings (environment):
#   PHOENIX_KIND_CLUSTER     cluster name                            (phoenix)
#   PHOENIX_NAMESPACE        namespace of the release                (phoenix)
#   PHOENIX_KIND_API_PORT    local port forwarded to the API         (18080)
#   PHOENIX_VERDICT_TIMEOUT  seconds to wait for all verdicts        (1200)
#   PHOENIX_SKIP_BUILD=1     use the images already loaded into the nodes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh   # one cargo target dir per machine

cluster="${PHOENIX_KIND_CLUSTER:-phoenix}"
namespace="${PHOENIX_NAMESPACE:-phoenix}"
api_port="${PHOENIX_KIND_API_PORT:-18080}"
verdict_timeout="${PHOENIX_VERDICT_TIMEOUT:-1200}"
release=phoenix
tag=kind   # kind/values.yaml sets image.tag: kind and pullPolicy: Never
context="kind-$cluster"

log() { printf '\nkind/up.sh: %s\n' "$*" >&2; }
die() { printf 'kind/up.sh: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found; $2"; }

need kind "install it, e.g. go install sigs.k8s.io/kind@latest"
if [[ "${1:-}" == "--down" ]]; then
  kind delete cluster --name "$cluster"
  exit 0
fi
need docker "kind runs its nodes as containers"
need kubectl "install kubectl"
need cargo "the phoenix CLI is built locally"
docker info >/dev/null 2>&1 || die "the docker daemon is not reachable (docker info failed)"
helm="$(helm/install-helm.sh)"

# --- 1. the cluster: a control plane and two workers labelled role=web / role=db ----
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "reusing kind cluster $cluster"
else
  log "creating kind cluster $cluster (kind/cluster.yaml)"
  kind create cluster --name "$cluster" --config kind/cluster.yaml --wait 180s
fi
kubectl --context "$context" get nodes --show-labels

# --- 2. images: built from docker/Dockerfile, loaded into every node -----------------
if [[ -z "${PHOENIX_SKIP_BUILD:-}" ]]; then
  for target in api reconciler agent; do
    log "building phoenix/$target:$tag (the first build compiles Rust and the collector: long)"
    DOCKER_BUILDKIT=1 docker build -f docker/Dockerfile --target "$target" -t "phoenix/$target:$tag" \
      --build-arg "PHOENIX_GIT_COMMIT=$(git rev-parse --short HEAD 2>/dev/null || true)" .
    kind load docker-image --name "$cluster" "phoenix/$target:$tag"
  done
fi

# --- 3. the chart --------------------------------------------------------------------
log "installing the chart (helm/phoenix with kind/values.yaml) into namespace $namespace"
# The Pod Security labels helm/phoenix/README.md documents: the agent is privileged.
kubectl --context "$context" create namespace "$namespace" --dry-run=client -o yaml \
  | kubectl --context "$context" apply -f -
kubectl --context "$context" label --overwrite namespace "$namespace" \
  pod-security.kubernetes.io/enforce=privileged pod-security.kubernetes.io/warn=baseline
"$helm" upgrade --install "$release" helm/phoenix \
  --kube-context "$context" --namespace "$namespace" \
  --values kind/values.yaml --wait --timeout 10m
kubectl --context "$context" -n "$namespace" rollout status "daemonset/$release-agent" --timeout 5m
"$helm" test "$release" --kube-context "$context" --namespace "$namespace" --logs

# --- 4. the CLI through a port-forward ------------------------------------------------
cargo build --quiet -p phoenix-cli
phoenix="${CARGO_TARGET_DIR:-target}/debug/phoenix"
kubectl --context "$context" -n "$namespace" port-forward "svc/$release-api" "$api_port:8080" >/dev/null &
port_forward=$!
trap 'kill "$port_forward" 2>/dev/null || true' EXIT
export PHOENIX_API_URL="http://127.0.0.1:$api_port"
PHOENIX_TOKEN="$(kubectl --context "$context" -n "$namespace" get secret "$release-tokens" \
  -o jsonpath='{.data.operator-token}' | base64 -d)"
export PHOENIX_TOKEN
for _ in $(seq 60); do
  curl -fsS "$PHOENIX_API_URL/readyz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "$PHOENIX_API_URL/readyz" >/dev/null || die "the API is not ready through the port-forward on $api_port"

nodes="$(kubectl --context "$context" get nodes --no-headers | wc -l)"
log "waiting for one host per node ($nodes) to report, with its Node's labels"
for _ in $(seq 60); do
  hosts="$("$phoenix" host list -o json | grep -o '"hostId"' | wc -l || true)"
  [[ "$hosts" -ge "$nodes" ]] && break
  sleep 2
done
"$phoenix" host list

# --- 5. the example experiments ----------------------------------------------------------
names=()
for file in examples/*.yaml; do
  names+=("$(awk '/^metadata:/ {m = 1} m && /^  name:/ {print $2; exit}' "$file")")
done
if "$phoenix" apply --help >/dev/null 2>&1; then
  log "applying examples/ (phoenix apply)"
  "$phoenix" apply -f examples/
else
  log "creating the experiments in examples/ one by one (this CLI has no apply yet)"
  for file in examples/*.yaml; do
    "$phoenix" experiment create -f "$file" || log "could not create $file (exists already?)"
  done
fi

# --- 6. wait for the verdicts ----------------------------------------------------------------
phase_of() {
  "$phoenix" experiment get "$1" -o json | grep -o '"phase": *"[a-z-]*"' | head -n 1 | sed 's/.*"\([a-z-]*\)"$/\1/'
}
log "waiting up to ${verdict_timeout}s for the verdicts of: ${names[*]}"
deadline=$(( SECONDS + verdict_timeout ))
status=0
for name in "${names[@]}"; do
  while true; do
    phase="$(phase_of "$name" || true)"
    case "$phase" in
      completed|promoted|rolled-back) break ;;
      failed|stopped) status=1; break ;;
    esac
    if (( SECONDS >= deadline )); then
      log "no verdict for $name within ${verdict_timeout}s (phase: ${phase:-unknown})"
      status=1
      break
    fi
    sleep 10
  done
  "$phoenix" experiment get "$name"
  "$phoenix" experiment events "$name"
done

log "done: kubectl --context $context -n $namespace get pods; kind/up.sh --down removes the cluster"
exit "$status"
