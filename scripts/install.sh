#!/usr/bin/env bash
# Create .venv and install IEI with the PyTorch and ONNX Runtime backends (sentencepiece for SigLIP text comes
# with the torch extra), `iei embed` (with Ray), the test, deployment-lint and benchmark tools.
# torch is pinned to the CPU wheel this machine carries (an unpinned torch may pull a multi-GB CUDA build);
# set TORCH_SPEC to choose another build, e.g. TORCH_SPEC="torch==2.13.0" with a CUDA index configured.
# IEI_PILLOW_SIMD=1 replaces Pillow with pillow-simd (built from source: needs a C compiler and the libjpeg,
# zlib and libpng headers; about a minute), whose AVX2 resize is 5-10x faster. Its resize can differ
# from Pillow's by one grey level on a few pixels, so embeddings match a Pillow-based reference to
# cosine ~0.99999 rather than exactly; the default install keeps Pillow.
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
# IEI_EXTRAS: the extras to install. The default is everything the test suite exercises (CI), Ray
# included; a server-only install can use IEI_EXTRAS=torch,onnx.
EXTRAS=${IEI_EXTRAS:-torch,onnx,bulk,ray,deploy-lint,bench,test}
"$VENV/bin/python" -m pip install --quiet -e ".[$EXTRAS]" "$TORCH_SPEC"
if [ "${IEI_PILLOW_SIMD:-0}" = "1" ]; then
    "$VENV/bin/python" -m pip uninstall --quiet --yes pillow pillow-simd || true
    CC="${CC:-cc} -mavx2" "$VENV/bin/python" -m pip install --quiet --no-deps --no-binary pillow-simd "pillow-simd==12.1.1.post0"
fi
# wrk: the load generator of the serving benchmarks and of their quick-mode tests (Debian's package; not on
# PyPI). Installed where this runs as root with apt-get, as in CI; elsewhere those tests skip and say why.
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq wrk >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; } \
        || echo "could not install wrk with apt-get: the wrk benchmark tests will be skipped" >&2
fi
echo "installed into $VENV ($("$VENV/bin/python" -c 'import PIL; print("Pillow", PIL.__version__)'))"
