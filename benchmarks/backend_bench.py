"""In-process throughput of the model backends: images/s per backend x precision x batch size.

vit-base shape (`ViTConfig()`, the catalog's google/vit-base-patch16-224, random weights) on uint8
(B, 3, 224, 224) pixels through `backend.embed_images`, for torch fp32, torch bf16 (`--dtype bfloat16`; what
`--dtype auto` picks on a CPU with bf16 units), ONNX Runtime fp32 (O2) and ONNX Runtime dynamic int8
(ONNX Runtime's CPU provider has no bfloat16 path for these graphs on x86). Every (config, batch) is measured in fresh subprocesses `--runs` times (int8 speed
varies between processes) and the median is reported, with FLOP utilisation against this machine's fp32
GEMM peak, measured by the same script in the same run (torch matmul loop). ViT-B/16 at 224 is 35.1
GFLOP per image.

    python benchmarks/backend_bench.py            # full run (~10 min on 2 cores), writes benchmarks/results/backends.{json,md,png}
    python benchmarks/backend_bench.py --quick    # seconds: tiny ViT, 1 run (CI smoke); writes only with --out

Never asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VIT_BASE = "google/vit-base-patch16-224"
GFLOP_PER_IMAGE = {"vit-base": 35.1}
CONFIGS = {  # name -> (backend, BackendConfig overrides)
    "torch fp32": ("torch", {"dtype": "float32"}),  # explicit: `auto` is bfloat16 on a CPU with bf16 units
    "torch bf16": ("torch", {"dtype": "bfloat16"}),
    "onnx fp32": ("onnx", {"onnx_optimize": "O2"}),
    "onnx int8": ("onnx", {"quantize": "int8"}),
}


def _backend_config(model: str, overrides: dict, cache: str):
    from backends import BackendConfig
    from iei.models import resolve_model

    source = resolve_model(model, None, "dummy")
    return BackendConfig(model=model, load_format="dummy", config_dir=source.config_dir, device="cpu",
                         onnx_cache_dir=cache, max_batch_size=32, **overrides)


def worker(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process: prints {"images_per_s": ...} as JSON."""
    print(json.dumps({"images_per_s": run_once(args.worker, args.batch, args)}))


def run_once(name: str, batch: int, args: argparse.Namespace) -> float:
    import numpy as np

    from backends import load_backend

    backend_name, overrides = CONFIGS[name]
    backend = load_backend(backend_name, _backend_config(args.model, overrides, args.cache))
    pixels = np.random.default_rng(0).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)
    backend.embed_images(pixels)  # warm-up
    iterations, start = 0, time.perf_counter()
    while True:
        backend.embed_images(pixels)
        iterations += 1
        elapsed = time.perf_counter() - start
        if elapsed >= args.seconds and iterations >= args.min_iterations:
            break
    return iterations * batch / elapsed


def gemm_peak(seconds: float) -> float:
    """fp32 GEMM GFLOP/s with all cores (torch.mm 2048^2, best of several timed loops), in a subprocess."""
    code = f"""
import time, torch
n = 2048; a = torch.randn(n, n); b = torch.randn(n, n); c = torch.empty(n, n)
for _ in range(3): torch.mm(a, b, out=c)
best = 0.0; deadline = time.perf_counter() + {seconds}
while time.perf_counter() < deadline:
    t = time.perf_counter(); reps = 5
    for _ in range(reps): torch.mm(a, b, out=c)
    best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9)
print(best)
"""
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def measure(name: str, batch: int, args: argparse.Namespace) -> float:
    if args.quick:  # in-process: seconds, not a fresh interpreter per cell
        return run_once(name, batch, args)
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(batch), "--model", args.model, "--cache", args.cache,
           "--seconds", str(args.seconds), "--min-iterations", str(args.min_iterations)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{name} batch {batch} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_s"]


def _tiny_model(root: Path) -> str:
    import shutil

    from transformers import ViTConfig

    from iei.models import catalog_dir

    folder = root / "tiny-vit"
    ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=32).save_pretrained(folder)
    shutil.copyfile(catalog_dir(VIT_BASE) / "preprocessor_config.json", folder / "preprocessor_config.json")
    return str(folder)


def _machine() -> dict:
    from backends.onnx_providers import cpu_isa

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "int8_isa": cpu_isa(), "python": platform.python_version()}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def render_md(results: dict) -> str:
    lines = [
        "# Backend benchmark (in-process)", "",
        f"commit `{results['commit']}`, {results['machine']['cpu']}, {results['machine']['cores']} cores, int8 ISA "
        f"{results['machine']['int8_isa']}; model {results['model']} (random weights); uint8 224x224 pixels through "
        f"`embed_images`; median of {results['runs']} fresh processes per cell, {results['seconds']} s each; "
        f"fp32 GEMM peak measured in the same run: {results['gemm_peak_gflops']:.0f} GFLOP/s; load average before: "
        f"{results['loadavg_before']:.2f}, after: {results['loadavg_after']:.2f}.", "",
        "| backend | batch | images/s (median) | min..max | utilisation of fp32 peak |",
        "|---|---:|---:|---|---:|",
    ]
    for row in results["rows"]:
        util = f"{row['utilisation']:.0%}" if row["utilisation"] is not None else "-"
        lines.append(f"| {row['config']} | {row['batch']} | {row['images_per_s']:.2f} | "
                     f"{min(row['runs']):.2f}..{max(row['runs']):.2f} | {util} |")
    lines += ["", "Utilisation = images/s x GFLOP/image / fp32 GEMM peak (for int8 it can exceed 100%: int8 "
              "arithmetic is not bounded by the fp32 peak).", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(dict.fromkeys(r["config"] for r in results["rows"]))
    batches = sorted({r["batch"] for r in results["rows"]})
    width = 0.8 / len(configs)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, config in enumerate(configs):
        values = [next((r["images_per_s"] for r in results["rows"] if r["config"] == config and r["batch"] == b), 0) for b in batches]
        ax.bar([j + i * width for j in range(len(batches))], values, width, label=config)
    if results.get("fp32_ceiling"):
        ax.axhline(results["fp32_ceiling"], color="grey", linestyle="--", label="fp32 GEMM ceiling")
    ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(batches))], [f"batch {b}" for b in batches])
    ax.set_ylabel("images/s")
    ax.set_title(f"{results['model']} in-process, {results['machine']['cores']} cores ({results['machine']['int8_isa']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny ViT, batches 1 and 8, 1 run, 0.3 s")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (at least --min-iterations)")
    parser.add_argument("--min-iterations", type=int, default=2)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=None, help="results basename (default benchmarks/results/backends; --quick: none)")
    parser.add_argument("--model", default=VIT_BASE)
    parser.add_argument("--cache", default=str(ROOT / "benchmarks" / ".cache" / "onnx"))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    tmp = None
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        args.model, args.cache = _tiny_model(Path(tmp.name)), str(Path(tmp.name) / "onnx")
        args.runs, args.seconds, args.min_iterations, args.batches = 1, 1.0, 1, "1,8"
    out = args.out or (None if args.quick else str(ROOT / "benchmarks" / "results" / "backends"))
    batches = [int(b) for b in args.batches.split(",")]
    configs = args.configs.split(",")
    loadavg_before = os.getloadavg()[0]
    peak = gemm_peak(1.0 if args.quick else 5.0)
    print(f"fp32 GEMM peak: {peak:.0f} GFLOP/s", flush=True)
    gflop = GFLOP_PER_IMAGE.get("vit-base") if args.model == VIT_BASE else None
    rows = []
    for name in configs:
        measure(name, 1, argparse.Namespace(**{**vars(args), "seconds": 0.0, "min_iterations": 1}))  # export once, untimed
        for batch in batches:
            runs = [measure(name, batch, args) for _ in range(args.runs)]
            median = statistics.median(runs)
            rows.append({"config": name, "batch": batch, "images_per_s": median, "runs": runs,
                         "utilisation": median * gflop / peak if gflop else None})
            print(f"{name:12s} batch {batch:3d}: {median:8.2f} images/s  (runs {', '.join(f'{r:.2f}' for r in runs)})", flush=True)
    from backends.onnx_manifest import package_versions

    results = {
        "commit": _commit(), "machine": _machine(), "model": args.model if not args.quick else "tiny ViT",
        "gflop_per_image": gflop, "gemm_peak_gflops": peak, "fp32_ceiling": peak / gflop if gflop else None,
        "runs": args.runs, "seconds": args.seconds, "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg()[0],
        "versions": package_versions(), "rows": rows,
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out + ".json").write_text(json.dumps(results, indent=2) + "\n")
        Path(out + ".md").write_text(render_md(results))
        plot(results, Path(out + ".png"))
        print(f"wrote {out}.json, .md, .png")
    else:
        print(render_md(results))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
