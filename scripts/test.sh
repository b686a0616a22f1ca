#!/usr/bin/env bash
# Set up (idempotent, with the browser), then lint, type-check and run every test: unit, real vLLM engine,
# Dagster webserver + chromium, DuckLake on a PostgreSQL server started by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser --postgres
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
