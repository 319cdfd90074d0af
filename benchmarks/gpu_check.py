"""GPU check: the torch backend on CUDA, then IEI end to end on that GPU. One short run on a lent machine.

  parity      ViT-base (random weights, seed 0) on the six seed images: CUDA float32 / float16 / bfloat16
              vectors against the CPU float32 ones (cosine, min over images), through the server's own
              preprocessing and backend configuration (`iei.model_plan.model_plan`).
  in process  the backend alone: images/s at batch 1, 8, 32, 64, 128 for each dtype (uint8 pixels in,
              float32 vectors out, so host-device copies are counted, as in the server), median of 3 windows.
  end to end  `iei serve --device cuda --dtype float16` driven by benchmarks/loadgen.py (aiohttp) with
              224x224 and 1024x768 JPEGs, one or 16 images per request; the ratio to in-process batch 64.

    python benchmarks/gpu_check.py              # on a CUDA machine; --quick: a CPU smoke run of the script

Writes OUT.json and OUT.md (with --quick only where --out is given). Needs a CUDA GPU (exits 2 without one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    Server,
    free_port,
    generated_image,
    iei_command,
    machine_facts,
    vit_model,
)
from loadgen import build_payloads, run_level

sys.path.insert(0, str(ROOT))
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu_check"
BATCHES = (1, 8, 32, 64, 128)


def load(model: Path, device: str, dtype: str):
    """The backend and preprocessing exactly as `iei serve --device D --dtype T` builds them."""
    from backends import load_backend
    from iei.cli import build_parser
    from iei.config import settings_from
    from iei.model_plan import model_plan

    args = build_parser().parse_args(["serve", "--model", str(model), "--device", device, "--dtype", dtype,
                                      "--max-batch-size", str(max(BATCHES))])
    plan = model_plan(settings_from(args, {}))
    backend = load_backend("torch", plan.config)
    backend.warmup()
    return backend, plan.spec


def seed_pixels(images: Path, spec) -> np.ndarray:
    from iei.preprocess.image import prepare_pixels

    files = sorted(images.glob("*.png"))
    if not files:
        raise SystemExit(f"no seed images in {images}")
    return np.stack([prepare_pixels(f.read_bytes(), spec) for f in files])


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def rate(backend, batch: int, seconds: float, windows: int = 3) -> float:
    h, w = backend.info.image_size
    x = np.random.default_rng(0).integers(0, 256, (batch, 3, h, w), dtype=np.uint8)
    backend.embed_images(x)
    out = []
    for _ in range(windows):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds or n < 3 * batch:
            backend.embed_images(x)  # returns host numpy: the device work is finished
            n += batch
        out.append(n / elapsed)
    return statistics.median(out)


def in_process(model: Path, images: Path, seconds: float, device: str, batches=BATCHES) -> dict[str, Any]:
    cpu, spec = load(model, "cpu", "float32")
    pixels = seed_pixels(images, spec)
    reference = cpu.embed_images(pixels)
    cpu.close()
    result: dict[str, Any] = {"parity": {}, "img_per_s": {}}
    for dtype in DTYPES if device != "cpu" else ("float32",):
        gpu, _ = load(model, device, dtype)
        result["info"] = {"device": gpu.info.device, "model_type": gpu.info.model_type, "dim": gpu.info.embedding_dim}
        result["parity"][dtype] = round(cosine_min(gpu.embed_images(pixels), reference), 6)
        result["img_per_s"][dtype] = {b: round(rate(gpu, b, seconds), 1) for b in batches}
        print(f"{dtype}: cosine vs cpu fp32 {result['parity'][dtype]}  img/s {result['img_per_s'][dtype]}", flush=True)
        gpu.close()
    return result


LEVELS = (("jpeg-224", 1, 64), ("jpeg-224", 1, 256), ("jpeg-224", 16, 32), ("jpeg-1024x768", 1, 64),
          ("jpeg-1024x768", 16, 16))  # (image, images per request, clients)


def end_to_end(model: Path, workers: int, seconds: float, device: str, levels=LEVELS) -> list[dict[str, Any]]:
    port = free_port()
    flags = ["--device", device, "--dtype", "float16" if device != "cpu" else "float32", "--max-batch-size", "64", "--preprocess-workers", str(workers),
             "--max-concurrent-requests", "4096"]
    server = Server("iei-gpu", iei_command(model, port, flags), {}, port, "/embed", b"", None)
    results = []
    try:
        server.start(300)
        url = server.url
        for image, per_request, concurrency in levels:
            payloads = build_payloads([generated_image(image)], "json", per_request)
            run_level(url, payloads, concurrency=concurrency, duration_s=min(2.0, seconds))  # warm-up, not recorded
            level = run_level(url, payloads, concurrency=concurrency, duration_s=seconds)
            level.update(image=image, images_per_request=per_request)
            print(f"e2e {image} x{per_request} c={concurrency}: {level['img_per_s']} img/s "
                  f"p50 {level['p50_ms']} p99 {level['p99_ms']} ms errors {level['errors']}", flush=True)
            results.append(level)
    finally:
        server.stop()
        print(server.log_tail(800))
    return results


def markdown(result: dict[str, Any]) -> str:
    ip = result["in_process"]
    lines = [f"# GPU check ({result['gpu']}, {result['machine']['cpu_cores']} CPU cores, commit {result['machine']['git_commit']})",
             "", f"ViT ({result['model']}; base = vit-base-patch16-224 shape), random weights; torch backend.", "",
             "| dtype | cosine vs CPU fp32 (min) | " + " | ".join(f"b{b} img/s" for b in BATCHES) + " |",
             "|---|---|" + "---|" * len(BATCHES)]
    for dtype, rates in ip["img_per_s"].items():
        lines.append(f"| {dtype} | {ip['parity'][dtype]} | " + " | ".join(str(rates.get(b, "")) for b in BATCHES) + " |")
    best = max(ip["img_per_s"].get("float16", ip["img_per_s"]["float32"]).values())
    lines += ["", (f"End to end, `iei serve --device cuda --dtype float16 --max-batch-size 64 --preprocess-workers "
              f"{result['workers']}`, loadgen (aiohttp, JSON base64) on the same machine; in-process fp16 best = {best} img/s."), "",
              "| image | images/request | clients | img/s | req/s | p50 ms | p99 ms | errors | % of in-process |",
              "|---|---|---|---|---|---|---|---|---|"]
    for lv in result["end_to_end"]:
        lines.append(f"| {lv['image']} | {lv['images_per_request']} | {lv['concurrency']} | {lv['img_per_s']} | "
                     f"{lv['req_per_s']} | {lv['p50_ms']} | {lv['p99_ms']} | {lv['errors'] or 0} | "
                     f"{100 * lv['img_per_s'] / best:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "testdata" / "seed-images",
                   help="folder of seed PNGs for the parity check")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seconds", type=float, default=1.0, help="in-process window length")
    p.add_argument("--e2e-seconds", type=float, default=8.0)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 3))
    p.add_argument("--device", default="cuda", help="cpu: a local smoke run of the script itself")
    p.add_argument("--model", default="base", choices=["base", "tiny"])
    p.add_argument("--quick", action="store_true", help="CI smoke of the script: tiny model on the CPU, one short level")
    args = p.parse_args()
    if args.quick:
        args.device, args.model, args.seconds, args.e2e_seconds, args.workers = "cpu", "tiny", 0.1, 0.5, 1
    import torch

    if args.device != "cpu" and not torch.cuda.is_available():
        print("no CUDA GPU", file=sys.stderr)
        return 2
    model = vit_model(args.model)
    gpu = torch.cuda.get_device_name(0) if args.device != "cpu" else "none (cpu smoke)"
    result: dict[str, Any] = {"machine": machine_facts(), "gpu": gpu,
                              "torch": torch.__version__, "cuda": torch.version.cuda, "workers": args.workers,
                              "model": args.model}
    result["in_process"] = in_process(model, args.images, args.seconds, args.device, (1, 8) if args.quick else BATCHES)
    result["end_to_end"] = end_to_end(model, args.workers, args.e2e_seconds, args.device,
                                      LEVELS[:1] if args.quick else LEVELS)
    if args.quick and args.out == DEFAULT_OUT:
        print(markdown(result))
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
