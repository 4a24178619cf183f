#!/usr/bin/env bash
# Regenerates the published JSON Schemas (schemas/*.json) and the field reference
# (docs/reference.md) from the wire types. cli/tests/schemas.rs fails while they
# are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOENIX_UPDATE_SCHEMAS=1 cargo test -p phoenix-cli --test schemas -- the_published_schemas
git status --short schemas docs/reference.md
