#!/usr/bin/env bash
# Build the separate virtual environments the serving benchmark's baselines run in.
#   benchmarks/.venv-baselines : the original FastAPI server (fastapi, uvicorn, transformers, pillow)
#   benchmarks/.venv-infinity  : infinity-emb (michaelfeil/infinity)    [only with --infinity]
# torch is pinned and installed FIRST: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
TORCH="torch==2.13.0"

if [ ! -x "$here/.venv-baselines/bin/uvicorn" ]; then
  python3 -m venv "$here/.venv-baselines"
  "$here/.venv-baselines/bin/pip" install -q --upgrade pip
  "$here/.venv-baselines/bin/pip" install -q "$TORCH"
  "$here/.venv-baselines/bin/pip" install -q "$TORCH" fastapi uvicorn "transformers<4.58" pillow
fi

if [ "${1:-}" = "--infinity" ]; then
  if [ ! -x "$here/.venv-infinity/bin/infinity_emb" ]; then
    python3 -m venv "$here/.venv-infinity"
    "$here/.venv-infinity/bin/pip" install -q --upgrade pip
    "$here/.venv-infinity/bin/pip" install -q "$TORCH"
    "$here/.venv-infinity/bin/pip" install -q "$TORCH" "infinity-emb[server,torch]" "transformers<4.58" pillow aiohttp
  fi
fi
echo "baseline venvs ready under $here"
