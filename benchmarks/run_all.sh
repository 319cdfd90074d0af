#!/usr/bin/env bash
# Reproduce every committed result under benchmarks/results/ (about 50 minutes on 2 cores).
# Usage: bash benchmarks/run_all.sh [PYTHON]   (default .venv/bin/python; needs wrk: apt-get install wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
export PYTHONPATH=$PWD
"$PY" benchmarks/preprocess_bench.py
"$PY" benchmarks/backend_bench.py
bash benchmarks/baselines/install.sh --infinity && "$PY" benchmarks/serving_bench.py
"$PY" benchmarks/compute_efficiency.py
"$PY" benchmarks/compute_efficiency.py --configs torch --rounds 11 --seconds 20 --out benchmarks/results/compute_efficiency_torch
"$PY" benchmarks/overhead_bench.py --runs 3 --duration 8 --profile-seconds 8
"$PY" benchmarks/overhead_bench.py --image jpeg-1024x768 --runs 3 --duration 8 --profile-seconds 8 --out benchmarks/results/overhead_decode
"$PY" benchmarks/floor_bench.py
"$PY" benchmarks/sweep.py --model tiny --concurrency 4,32 --duration 2 --rounds 3
"$PY" benchmarks/bulk_bench.py
"$PY" benchmarks/batches_priority.py
"$PY" benchmarks/soak/rss_probe.py --model benchmarks/.cache/models/vit-tiny --passes 5 --out benchmarks/results/soak_rss
"$PY" benchmarks/naflex_bench.py --out benchmarks/results/naflex
