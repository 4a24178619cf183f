#!/usr/bin/env bash
# Regenerates the published JSON Schemas (schemas/*.json) and the field reference
# (docs/reference.md) from the wire types, and the api's OpenAPI document
# (schemas/openapi.json) from the api's code. cli/tests/schemas.rs and
# api/tests/openapi.rs fail while they are stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PHOENIX_UPDATE_SCHEMAS=1 cargo test -p phoenix-cli --test schemas -- the_published_schemas
PHOENIX_UPDATE_SCHEMAS=1 cargo test -p phoenix-api --test openapi -- the_published
git status --short schemas docs/reference.md
