# CompGrid task runner. Run through uv so `just` comes from the lock file: `uv run just <recipe>`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Install the system packages CompGrid needs (Debian/Ubuntu; no-op when present).
bootstrap:
    bash scripts/bootstrap.sh

# Start the whole platform on this machine (Ctrl-C stops it).
dev: bootstrap
    uv run python scripts/devstack.py

# Lint, type-check, then run every test against real servers.
test *ARGS: bootstrap lint
    uv run pytest {{ARGS}}

# ruff (lint + format check) and mypy.
lint:
    uv run ruff check .
    uv run ruff format --check .
    uv run mypy

# Apply formatting and autofixes.
fmt:
    uv run ruff format .
    uv run ruff check --fix .

# Apply every service's migrations (COMPGRID_<SVC>_DATABASE_URL or --database-url).
migrate *ARGS:
    uv run compgrid-migrate {{ARGS}}

# Regenerate the committed AsyncAPI document from the contracts.
asyncapi:
    uv run python -m compgrid_events.asyncapi docs/asyncapi.json

# Run one benchmark (bench/NAME.py), or all of them.
bench NAME="":
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -n "{{NAME}}" ]; then
        uv run python -m "bench.{{NAME}}"
    else
        for b in bench/*.py; do n=$(basename "$b" .py); case "$n" in common|__init__) continue;; esac; uv run python -m "bench.$n"; done
    fi

# Regenerate the committed OpenAPI document of the REST API.
openapi:
    uv run python -m compgrid_gateway.openapi docs/openapi.json
