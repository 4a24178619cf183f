#!/usr/bin/env bash
# The console's browser tests (console/tests/, node's test runner) against the real
# stack: `phoenix-demo --stack-only` with the api that embeds this console, and
# Debian's chromium driven by playwright-core. scripts/test runs it after the
# workspace is built with PHOENIX_CONSOLE_DIST set (scripts/lib.sh: ensure_console).
#
# Needs: PHOENIX_COLLECTOR_BIN, the workspace binaries in $CARGO_TARGET_DIR/debug
# (or PHOENIX_DEMO_BIN), /usr/bin/chromium.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ -x /usr/bin/chromium || -n "${PHOENIX_CHROMIUM:-}" ]] || { echo "console/test.sh: /usr/bin/chromium is missing (apt-get install chromium)" >&2; exit 1; }
: "${PHOENIX_COLLECTOR_BIN:?set PHOENIX_COLLECTOR_BIN (collector/build.sh prints it)}"
export PHOENIX_DEMO_BIN="${PHOENIX_DEMO_BIN:-${CARGO_TARGET_DIR:-$here/../target}/debug/phoenix-demo}"
[[ -x "$PHOENIX_DEMO_BIN" ]] || { echo "console/test.sh: $PHOENIX_DEMO_BIN is not built (cargo build --workspace --bins)" >&2; exit 1; }
deps="$("$here/build.sh" --deps)"
# The tests import playwright-core and axe-core from the cached node_modules.
if [[ ! -e "$here/node_modules" || -L "$here/node_modules" ]]; then
  ln -sfn "$deps" "$here/node_modules"
fi
cd "$here"
exec node --test --test-reporter=spec --test-concurrency=1 tests/
