#!/usr/bin/env bash
# Create .venv and install IEI with the PyTorch and ONNX Runtime backends, the test and benchmark tools.
# torch is pinned to the CPU wheel this machine carries (an unpinned torch may pull a multi-GB CUDA build);
# set TORCH_SPEC to choose another build, e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index configured.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
# The same torch spec again, so no extra's dependency can move torch.
"$VENV/bin/python" -m pip install --quiet -e ".[torch,onnx,bench,test]" "$TORCH_SPEC"
echo "installed into $VENV"
