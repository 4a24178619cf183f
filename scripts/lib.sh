# Shared by scripts/demo, scripts/test and .ci/run: one cargo target directory per
# machine (builds are slow on small machines), and the collector from its cache.

# A machine-wide target dir when we may write there, else the usual ./target.
if [[ -z "${CARGO_TARGET_DIR:-}" ]]; then
  if mkdir -p /var/cache/phoenix/cargo-target 2>/dev/null && [[ -w /var/cache/phoenix/cargo-target ]]; then
    export CARGO_TARGET_DIR=/var/cache/phoenix/cargo-target
  fi
fi

# Postgres server binaries for throwaway clusters (tests, demo) when DATABASE_URL is unset.
ensure_postgres_binaries() {
  if [[ -n "${DATABASE_URL:-}" ]] || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    return
  fi
  echo "installing the Postgres server binaries (apt-get install postgresql)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

# Prometheus (remote-write receiver) and the Pushgateway, from Debian's packages; the
# tests and the demo start private instances, nothing is started system-wide.
ensure_measurement_binaries() {
  if [[ -x /usr/bin/prometheus && -x /usr/bin/prometheus-pushgateway ]]; then
    return
  fi
  echo "installing Prometheus and the Pushgateway (apt-get install prometheus prometheus-pushgateway)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-pushgateway >/dev/null
}

# The Phoenix collector, built once per machine and cached (see collector/README.md).
ensure_collector() {
  PHOENIX_COLLECTOR_BIN=$(collector/build.sh)
  export PHOENIX_COLLECTOR_BIN
}

# A cargo tool from crates.io (cargo-deny, cargo-fuzz), built once per machine and
# version under /var/cache/phoenix/cargo-tools, one builder at a time (flock).
# Prints the binary's path.
ensure_cargo_tool() {
  local name=$1 version=$2
  local root="${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/cargo-tools"
  local bin="$root/$name-$version/bin/$name"
  mkdir -p "$root"
  if [[ ! -x "$bin" ]]; then
    (
      flock 9
      if [[ ! -x "$bin" ]]; then
        echo "building $name $version from crates.io (once per machine)…" >&2
        CARGO_TARGET_DIR="$root/target" cargo install --quiet --locked \
          --root "$root/$name-$version" "$name@$version" >&2
      fi
    ) 9>"$root/.lock"
  fi
  printf '%s\n' "$bin"
}
