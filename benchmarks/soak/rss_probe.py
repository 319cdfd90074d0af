"""Where the model process's RSS goes under dynamic batching: a leak, or a plateau per batch size?

Each variant is a fresh process that loads the backend as `iei serve` does (`iei.model_plan.model_plan`),
runs `--passes` passes of batches, and reads its own RSS after warm-up and after every pass:

  mixed         every batch size 1..max once per pass, in a new random order (what dynamic batching sends)
  fixed         the largest batch size only, as many batches
  mixed+jemalloc  mixed, with libjemalloc preloaded (only where the library is installed)

A leak keeps growing pass after pass; a heap that fragments over the batch sizes grows during the first
pass or two and then stays flat.

    python benchmarks/soak/rss_probe.py --model benchmarks/.cache/models/vit-tiny --out benchmarks/results/soak_rss
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")

CHILD = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from backends import load_backend
from iei.cli import build_parser
from iei.config import settings_from
from iei.model_plan import model_plan

model, mode, passes, max_batch = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
def rss_mb():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
args = build_parser().parse_args(["serve", "--model", model, "--device", "cpu", "--backend-threads", "1",
                                  "--max-batch-size", str(max_batch)])
backend = load_backend("torch", model_plan(settings_from(args, {})).config)
backend.warmup()
h, w = backend.info.image_size
rng = np.random.default_rng(0)
pixels = rng.integers(0, 256, (max_batch, 3, h, w), dtype=np.uint8)  # batches are views: no input allocations
series = [rss_mb()]
for _ in range(passes):
    sizes = rng.permutation(np.arange(1, max_batch + 1)) if mode == "mixed" else [max_batch] * max_batch
    for size in sizes:
        backend.embed_images(pixels[: int(size)])
    series.append(rss_mb())
print(json.dumps(series))
"""


def run_variant(model: str, mode: str, passes: int, max_batch: int, preload: Path | None) -> list[float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if preload is not None:
        env["LD_PRELOAD"] = str(preload)
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), model, mode, str(passes), str(max_batch)],
                         capture_output=True, text=True, env=env, check=True, timeout=1800)
    return [round(v, 1) for v in json.loads(out.stdout.strip().splitlines()[-1])]


def markdown(result: dict) -> str:
    passes = len(next(iter(result["variants"].values()))) - 1
    lines = [f"# Model-process RSS per pass of batches 1..{result['max_batch']} (`{result['model']}`)", "",
             "RSS in MB after warm-up (column 0) and after each pass; growth = last - warm-up.", "",
             "| variant | " + " | ".join(str(i) for i in range(passes + 1)) + " | growth |",
             "|---|" + "---|" * (passes + 2)]
    for name, series in result["variants"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in series) + f" | {series[-1] - series[0]:+.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--passes", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    p.add_argument("--variants", default="mixed,fixed,mixed+jemalloc", help="comma list (jemalloc: where installed)")
    args = p.parse_args()
    known = {"mixed": ("mixed", None), "fixed": ("fixed", None), "mixed+jemalloc": ("mixed", JEMALLOC)}
    variants = {name: known[name] for name in args.variants.split(",")
                if name in known and (known[name][1] is None or known[name][1].exists())}
    result = {"model": args.model, "max_batch": args.max_batch_size, "variants": {}}
    for name, (mode, preload) in variants.items():
        result["variants"][name] = run_variant(args.model, mode, args.passes, args.max_batch_size, preload)
        print(name, result["variants"][name], flush=True)
    print(markdown(result))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
        args.out.with_suffix(".md").write_text(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
