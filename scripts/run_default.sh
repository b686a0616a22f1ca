#!/usr/bin/env bash
# Set up (idempotent), then run the whole pipeline on the embedded default: the sample sub-datasets in
# data/samples, CPU vLLM, SmolLM2-135M-Instruct.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/arhn run "$@"
