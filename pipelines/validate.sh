#!/usr/bin/env bash
# Validate Phoenix PipelineTemplate documents with the real collector.
#
#   pipelines/validate.sh pipelines/process-topk.yaml [more.yaml ...]
#
# For each template, this extracts spec.config, sets the env vars that
# phoenix-agent always sets (plausible values; anything already in the
# environment wins), and runs `otelcol-phoenix validate --config=<file>`.
# PHOENIX_VAR_* variables are left unset, so their defaults are what gets
# validated. Export one to validate another value.
#
# Collector binary: $OTELCOL_BIN, else the output of collector/build.sh (which
# builds it the first time). Exit status: 0 if all templates are valid.
#
# Extraction uses python3 + PyYAML when available, and otherwise an awk
# fallback that understands the `  config: |` block layout used in pipelines/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ $# -ge 1 ]] || { echo "usage: $0 <template.yaml> [...]" >&2; exit 2; }

bin="${OTELCOL_BIN:-$("$here/../collector/build.sh")}"
[[ -x "$bin" ]] || { echo "collector binary not executable: $bin" >&2; exit 2; }

export PHOENIX_EXPERIMENT="${PHOENIX_EXPERIMENT:-validate}"
export PHOENIX_VARIANT="${PHOENIX_VARIANT:-candidate}"
export PHOENIX_HOST="${PHOENIX_HOST:-$(hostname 2>/dev/null || echo host-1)}"
export PHOENIX_REMOTE_WRITE_URL="${PHOENIX_REMOTE_WRITE_URL:-http://127.0.0.1:9090/api/v1/write}"
export PHOENIX_HEALTH_PORT="${PHOENIX_HEALTH_PORT:-13133}"
export PHOENIX_TELEMETRY_PORT="${PHOENIX_TELEMETRY_PORT:-8888}"
export PHOENIX_CRITICAL_PROCESSES_REGEX="${PHOENIX_CRITICAL_PROCESSES_REGEX:-^(nginx|postgres|java)\$}"
export PHOENIX_HOSTFS="${PHOENIX_HOSTFS-}"   # empty = "/"

extract() { # $1 = template file; prints spec.config on stdout
  if python3 -c 'import yaml' 2>/dev/null; then
    python3 - "$1" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
if not isinstance(doc, dict) or doc.get("kind") != "PipelineTemplate" \
        or doc.get("apiVersion") != "phoenix.dev/v1":
    sys.exit("not a phoenix.dev/v1 PipelineTemplate")
name = (doc.get("metadata") or {}).get("name")
cfg = (doc.get("spec") or {}).get("config")
if not name or not isinstance(cfg, str) or not cfg.strip():
    sys.exit("metadata.name or spec.config missing")
sys.stdout.write(cfg)
PY
  else
    grep -q '^kind: PipelineTemplate' "$1" || { echo "not a PipelineTemplate" >&2; return 1; }
    awk '
      /^  config: \|[-+]?[[:space:]]*$/ { inblk = 1; next }
      inblk && /^[^[:space:]]/          { exit }          # next top-level key
      inblk && /^  [^[:space:]]/        { exit }          # next spec key
      inblk { sub(/^    /, ""); print }
    ' "$1"
  fi
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
rc=0
for t in "$@"; do
  cfg="$tmp/$(basename "${t%.yaml}").config.yaml"
  if ! extract "$t" >"$cfg" || [[ ! -s "$cfg" ]]; then
    echo "FAIL $t: could not extract spec.config" >&2; rc=1; continue
  fi
  if out="$("$bin" validate --config="$cfg" 2>&1)"; then
    echo "ok   $t"
  else
    echo "FAIL $t" >&2
    printf '%s\n' "$out" | sed 's/^/     /' >&2
    rc=1
  fi
done
exit $rc
