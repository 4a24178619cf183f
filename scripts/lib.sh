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

# libfaketime (Debian's package), for the fault test of an api replica whose clock
# is off (e2e/tests/faults.rs).
ensure_libfaketime() {
  if compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null; then
    return
  fi
  echo "installing libfaketime (apt-get install libfaketime)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfaketime >/dev/null
}

# The Kubernetes control plane the suite runs (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok), built once per machine
# and cached (kube/build.sh); the tests find it through PHOENIX_KUBE_BIN_DIR.
ensure_kube() {
  PHOENIX_KUBE_BIN_DIR=$(kube/build.sh)
  export PHOENIX_KUBE_BIN_DIR
}

# The Phoenix collector, built once per machine and cached (see collector/README.md).
ensure_collector() {
  PHOENIX_COLLECTOR_BIN=$(collector/build.sh)
  export PHOENIX_COLLECTOR_BIN
}

# The checks that follow the tests, pinned here for scripts/deny and scripts/fuzz.
CARGO_DENY_VERSION=0.18.5
CARGO_FUZZ_VERSION=0.13.1
FUZZ_TARGET_DIR="${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/cargo-target-fuzz"

# Builds what those checks need (cargo-deny, cargo-fuzz, the fuzz targets on nightly)
# unless cached: on a new machine about 15 minutes of compiling, which scripts/test
# runs at low priority while the tests, which mostly wait on timers, run.
prebuild_checks() {
  ensure_cargo_tool cargo-deny "$CARGO_DENY_VERSION" >/dev/null
  local fuzz
  fuzz=$(ensure_cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION")
  (cd fuzz && CARGO_TARGET_DIR="$FUZZ_TARGET_DIR" RUSTUP_TOOLCHAIN=nightly "$fuzz" fuzz build >&2)
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

# Node and npm (Debian's) for the web console's build and browser tests.
ensure_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    return
  fi
  echo "installing Node.js and npm (apt-get install nodejs npm)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
}

# The web console, built once per source hash (console/build.sh); phoenix-api embeds
# the directory PHOENIX_CONSOLE_DIST names at build time (api/build.rs), so export
# it before any cargo command, or the api is rebuilt without it.
ensure_console() {
  ensure_node
  PHOENIX_CONSOLE_DIST=$(console/build.sh)
  export PHOENIX_CONSOLE_DIST
}

# Debian's chromium, which the console's browser tests drive (playwright-core).
ensure_chromium() {
  if [[ -x /usr/bin/chromium ]]; then
    return
  fi
  echo "installing Chromium (apt-get install chromium)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

# Schemathesis (PyPI), the api fuzzer of scripts/api-fuzz, installed once per machine
# and version into a virtualenv under /var/cache/phoenix/schemathesis, one installer
# at a time (flock); a venv without its `.complete` mark (a killed install) is made
# again. Prints the path of its `st` command.
SCHEMATHESIS_VERSION=4.32.5
ensure_schemathesis() {
  local root="${PHOENIX_CACHE_DIR:-/var/cache/phoenix}/schemathesis"
  local venv="$root/$SCHEMATHESIS_VERSION"
  mkdir -p "$root"
  if [[ ! -e "$venv/.complete" ]]; then
    (
      flock 9
      if [[ ! -e "$venv/.complete" ]]; then
        if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
          echo "installing Python and its venv (apt-get install python3 python3-venv)…" >&2
          apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
        fi
        echo "installing schemathesis $SCHEMATHESIS_VERSION from PyPI (once per machine)…" >&2
        rm -rf "$venv"
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check \
          "schemathesis==$SCHEMATHESIS_VERSION" >&2
        "$venv/bin/st" --version >&2
        touch "$venv/.complete"
      fi
    ) 9>"$root/.lock"
  fi
  printf '%s\n' "$venv/bin/st"
}
