"""Per-core cost of IEI's own preprocessing (`prepare_image`, one process) with `--jpeg-decoder pillow` vs `auto`.

Synthetic photo-like JPEGs (q90) at sizes where `auto` decodes with simplejpeg at 3/8 scale (1024x768, 1152x864
for 224 models; 1280x960 for 256) and where it keeps Pillow (12 MP). Timed round-robin (both settings alternate,
so background load hits them alike), median over rounds; the normalised tensor is compared with the exact path
(draft off). Prints a Markdown table, and writes it with --out. Never asserts a speed.

    python benchmarks/jpeg_decoder_bench.py [--rounds 15] [--out benchmarks/results/jpeg_decoder.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from iei.preprocess.image import prepare_image  # noqa: E402
from iei.preprocess.spec import make_spec  # noqa: E402
from tests.preprocess.images import synthetic_photo  # noqa: E402

SPECS = {
    "vit (fixed 224, bilinear)": make_spec(resize="fixed", resample=2, resize_height=224, resize_width=224),
    "dinov2 (shortest 256, crop 224, bicubic)": make_spec(resize="shortest_edge", resample=3, shortest_edge=256,
                                                          crop_height=224, crop_width=224),
}
SIZES = ((1024, 768), (1152, 864), (1280, 960), (4000, 3000))


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = ["| image | spec | pillow ms | auto ms | auto decoder | speed-up | cosine to exact (pillow / auto) |",
            "|---|---|---:|---:|---|---:|---|"]
    for w, h in SIZES:
        data = synthetic_photo(w, h, seed=w)
        iterations = 2 if w * h > 4_000_000 else 10
        for name, spec in SPECS.items():
            variants = {k: msgspec.structs.replace(spec, jpeg_decoder=k) for k in ("pillow", "auto")}
            exact = prepare_image(data, msgspec.structs.replace(spec, draft=False))
            got = {k: prepare_image(data, s) for k, s in variants.items()}
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.rounds):
                for k, s in variants.items():
                    t0 = time.process_time()
                    for _ in range(iterations):
                        prepare_image(data, s)
                    times[k].append((time.process_time() - t0) / iterations * 1000)
            ms = {k: statistics.median(v) for k, v in times.items()}
            cos = {k: float(exact.ravel() @ g.ravel() / np.linalg.norm(exact) / np.linalg.norm(g))
                   for k, g in got.items()}
            same = np.array_equal(got["pillow"], got["auto"])
            rows.append(f"| {w}x{h} | {name} | {ms['pillow']:.2f} | {ms['auto']:.2f} | "
                        f"{'Pillow (no win)' if same else 'simplejpeg 3/8'} | ×{ms['pillow'] / ms['auto']:.2f} | "
                        f"{cos['pillow']:.6f} / {cos['auto']:.6f} |")
            print(rows[-1], flush=True)
    head = f"{cpu_model()} · one process · CPU time (process_time) · median of {args.rounds} interleaved rounds"
    text = "\n".join([head, "", *rows, ""])
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
