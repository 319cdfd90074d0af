"""Micro-benchmark of the preprocessing worker function, single process.

Measures images/s for base64 decode + image decode + resize (+ crop) + normalise
(`decode_payload` then `prepare_image`) on synthetic photo-like JPEGs (q90) of 1024x768 and
4000x3000 (12 MP), exact (draft off) versus JPEG DCT draft, for a ViT-style spec (fixed 224,
bilinear) and a ConvNeXt-style spec (shortest edge 256, centre crop 224, bicubic).

    python benchmarks/preprocess_bench.py            # full run, writes benchmarks/results/preprocess.{json,md}
    python benchmarks/preprocess_bench.py --quick    # ~2 s smoke run (CI); writes only with --out

A second table compares JPEG decoders per core (this one process): Pillow full decode, Pillow `draft`
(today's path), simplejpeg (`min_height`/`min_width`, libjpeg-turbo's M/8 scaled decode) and PyTurboJPEG
(scaling 1/2, 1/4, 1/8), each followed by the same Pillow bilinear resize to 224x224, timed round-robin
(interleaved, so background load hits every decoder alike), with the uint8 tensor compared to the exact
path's. simplejpeg and PyTurboJPEG are optional (`pip install simplejpeg 'pyturbojpeg<2'`, and Debian's
`libturbojpeg0`); a decoder that is missing is listed as such.

Reports the median of several repeats; never asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from iei.preprocess.image import decode_payload, prepare_image  # noqa: E402
from iei.preprocess.spec import PreprocessSpec, make_spec  # noqa: E402

SPECS = {
    "vit (fixed 224, bilinear)": make_spec(
        resize="fixed", resample=2, resize_height=224, resize_width=224, draft=False
    ),
    "convnext (shortest 256, crop 224, bicubic)": make_spec(
        resize="shortest_edge", resample=3, shortest_edge=256, crop_height=224, crop_width=224,
        image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225), draft=False,
    ),
}
SIZES = {"1024x768": (1024, 768), "4000x3000 (12 MP)": (4000, 3000)}


def synthetic_photo(width: int, height: int, seed: int = 0) -> bytes:
    """JPEG q90 with photo-like statistics: gradients, shapes, blur, sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = min(width, 1024), min(height, 1024)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(6 * x / w + 3 * y / h)], -1)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(30):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(1, max(2, min(w, h) // 4))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1)).resize((width, height), Image.BILINEAR)
    noise = rng.integers(-6, 7, (height, width, 3), dtype=np.int16)
    img = Image.fromarray((np.asarray(img, dtype=np.int16) + noise).clip(0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def images_per_second(payload: str, spec: PreprocessSpec, iterations: int, repeats: int) -> float:
    out = np.empty((3, spec.output_height, spec.output_width), dtype=np.float32)
    prepare_image(decode_payload(payload, "base64"), spec, out)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            prepare_image(decode_payload(payload, "base64"), spec, out)
        rates.append(iterations / (time.perf_counter() - start))
    return statistics.median(rates)


# -- decoders, per core -------------------------------------------------------------------------------


def _pillow(data: bytes, need: tuple[int, int] | None) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    if need is not None:
        image.draft("RGB", need)
    return np.asarray(image.convert("RGB"))


def decoders() -> dict[str, object]:
    """name -> decode(data, (need_w, need_h)) -> HWC uint8 at no less than `need` where it downscales,
    or a string saying why the decoder is unavailable."""
    found: dict[str, object] = {"pillow full": lambda data, need: _pillow(data, None),
                                "pillow draft (today)": _pillow}
    try:
        import simplejpeg

        found["simplejpeg min_factor scaled"] = lambda data, need: simplejpeg.decode_jpeg(
            data, "RGB", min_width=need[0], min_height=need[1])
        found["simplejpeg fastdct+fastupsample"] = lambda data, need: simplejpeg.decode_jpeg(
            data, "RGB", fastdct=True, fastupsample=True, min_width=need[0], min_height=need[1])
    except ImportError as e:
        found["simplejpeg"] = f"not installed ({e})"
    try:
        import turbojpeg

        jpeg = turbojpeg.TurboJPEG()

        def turbo(data: bytes, need: tuple[int, int]) -> np.ndarray:
            width, height, _, _ = jpeg.decode_header(data)
            factor = next(f for f in (8, 4, 2, 1) if f == 1 or (width // f >= need[0] and height // f >= need[1]))
            return jpeg.decode(data, pixel_format=turbojpeg.TJPF_RGB, scaling_factor=(1, factor))

        found["pyturbojpeg 1/2,1/4,1/8"] = turbo
    except (ImportError, RuntimeError, OSError) as e:
        found["pyturbojpeg"] = f"not available ({e})"
    return found


def decoder_table(quick: bool) -> list[dict]:
    """Per-core decode + resize to 224x224 (bilinear) for each decoder, interleaved; parity to the exact path."""
    size = (224, 224)
    rows = []
    rounds = 1 if quick else 7
    for size_name, (w, h) in SIZES.items():
        jpeg = synthetic_photo(w, h, seed=w)
        iterations = 1 if quick else (20 if w <= 1024 else 3)
        exact = np.asarray(Image.fromarray(_pillow(jpeg, None)).resize(size, Image.BILINEAR), dtype=np.float64)
        available = {k: v for k, v in decoders().items() if callable(v)}
        times: dict[str, list[float]] = {k: [] for k in available}
        outputs = {k: np.asarray(Image.fromarray(fn(jpeg, size)).resize(size, Image.BILINEAR))  # type: ignore[operator]
                   for k, fn in available.items()}
        for _ in range(rounds):
            for name, fn in available.items():
                start = time.perf_counter()
                for _ in range(iterations):
                    Image.fromarray(fn(jpeg, size)).resize(size, Image.BILINEAR)  # type: ignore[operator]
                times[name].append((time.perf_counter() - start) / iterations)
        for name, value in decoders().items():
            if not callable(value):
                rows.append({"image": size_name, "decoder": name, "unavailable": value})
                continue
            got = outputs[name].astype(np.float64)
            # on the normalised scale of a mean 0.5 / std 0.5 model (ViT): 2/255 per uint8 step
            mean_abs = float(np.abs(got - exact).mean() * 2 / 255)
            a, b = (exact / 127.5 - 1).ravel(), (got / 127.5 - 1).ravel()
            cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            ms = statistics.median(times[name]) * 1000
            rows.append({"image": size_name, "decoder": name, "ms": round(ms, 2), "img_s": round(1000 / ms, 1),
                         "decoded": "x".join(map(str, available[name](jpeg, size).shape[1::-1])),  # type: ignore[operator]
                         "mean_abs_diff": round(mean_abs, 4), "cosine": round(cosine, 6)})
            print(f"{size_name:18} {name:34} {ms:7.2f} ms  mean|d| {mean_abs:.4f}  cos {cosine:.6f}")
    draft = {r["image"]: r["ms"] for r in rows if r["decoder"] == "pillow draft (today)"}
    for r in rows:
        if "ms" in r:
            r["vs_draft"] = round(draft[r["image"]] / r["ms"], 2)
    return rows


def environment() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    cpu = platform.processor() or None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    commit = git("rev-parse", "--short", "HEAD")
    return {
        "commit": commit + ("+dirty" if commit and git("status", "--porcelain", "--untracked-files=no") else "")
        if commit else None,
        "cpu": cpu,
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


def run(quick: bool) -> dict:
    iterations = {"1024x768": 2 if quick else 40, "4000x3000 (12 MP)": 1 if quick else 5}
    repeats = 1 if quick else 5
    rows = []
    for size_name, (w, h) in SIZES.items():
        jpeg = synthetic_photo(w, h, seed=w)
        payload = base64.b64encode(jpeg).decode()
        for spec_name, spec in SPECS.items():
            exact = images_per_second(payload, spec, iterations[size_name], repeats)
            draft = images_per_second(payload, msgspec.structs.replace(spec, draft=True), iterations[size_name], repeats)
            rows.append({
                "image": size_name, "jpeg_bytes": len(jpeg), "spec": spec_name,
                "exact_img_s": round(exact, 2), "draft_img_s": round(draft, 2),
                "exact_ms": round(1000 / exact, 2), "draft_ms": round(1000 / draft, 2),
                "speedup": round(draft / exact, 2),
            })
            print(f"{size_name:18} {spec_name:45} exact {exact:7.1f} img/s  draft {draft:7.1f} img/s  x{draft / exact:.2f}")
    return {
        "benchmark": "preprocess (decode_payload + prepare_image, one process)",
        "settings": {"quick": quick, "iterations": iterations, "repeats": repeats, "statistic": "median of repeats",
                     "jpeg_quality": 90},
        "environment": environment(),
        "results": rows,
        "decoders": decoder_table(quick),
        "decoder_settings": {"rounds": 1 if quick else 7, "statistic": "median over interleaved rounds",
                             "resize": "Pillow bilinear to 224x224 after decoding"},
    }


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# Preprocessing micro-benchmark",
        "",
        f"`benchmarks/preprocess_bench.py`: {report['benchmark']}; base64 → decode → resize/crop → normalise "
        "into a float32 (3, 224, 224) buffer. Synthetic photo-like JPEGs (q90). "
        f"Median of {report['settings']['repeats']} repeats.",
        "",
        f"commit `{env['commit']}` · CPU {env['cpu']} · Python {env['python']} · Pillow {env['pillow']} · numpy {env['numpy']}",
        "",
        "| image | JPEG size | spec | exact img/s (ms) | draft img/s (ms) | draft speed-up |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['image']} | {r['jpeg_bytes'] / 1e6:.2f} MB | {r['spec']} | {r['exact_img_s']} ({r['exact_ms']}) "
            f"| {r['draft_img_s']} ({r['draft_ms']}) | ×{r['speedup']} |"
        )
    lines += ["", "Exact = `draft=False` (bit-exact with transformers' slow processor); draft = JPEG DCT-domain "
              "downscale by 2/4/8 to no less than the resize size (mean abs diff < 0.02 on the normalised "
              "tensor, cosine ≥ 0.999; see tests/preprocess/test_image_parity.py).", ""]
    lines += ["## JPEG decoders, per core", "",
              "Decode, then the same Pillow bilinear resize to 224x224, in this one process (one core); decoders timed "
              "round-robin, median of the rounds. Parity against the exact path (full decode + resize) on the "
              "normalised scale of a mean/std 0.5 model: today's draft path is held to mean abs diff < 0.02 and "
              "cosine ≥ 0.999.", "",
              "| image | decoder | decoded at | ms | img/s | vs Pillow draft | mean abs diff | cosine |",
              "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in report.get("decoders", []):
        if "unavailable" in r:
            lines.append(f"| {r['image']} | {r['decoder']} | {r['unavailable']} | | | | | |")
        else:
            lines.append(f"| {r['image']} | {r['decoder']} | {r['decoded']} | {r['ms']} | {r['img_s']} | ×{r['vs_draft']} "
                         f"| {r['mean_abs_diff']} | {r['cosine']} |")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short repeat (~2 s), for CI smoke runs")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for preprocess.json and preprocess.md (default: benchmarks/results; "
                             "with --quick nothing is written unless given)")
    args = parser.parse_args()
    report = run(args.quick)
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "preprocess.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "preprocess.md").write_text(markdown(report))
        print(f"wrote {out / 'preprocess.json'} and {out / 'preprocess.md'}")


if __name__ == "__main__":
    main()
