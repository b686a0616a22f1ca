#!/usr/bin/env bash
# Set up (idempotent, with the browser), then run every test: unit, real vLLM engine, Dagster webserver + chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --browser
exec .venv/bin/python -m pytest "$@"
