"""DINOv3 preprocessing without torchvision: how close IEI's pixels and vectors are to the torch reference, what
the float resize costs, and how the bundled ids start with random weights.

`DINOv3ViTImageProcessorFast` resizes float tensors with `F.interpolate(bilinear, antialias=True)`; IEI resizes
each channel in Pillow's 32-bit float mode and rounds once into the uint8 slab (`iei.preprocess.fast_processors`).

- pixels: max and mean |IEI - torch| in 8-bit levels over the seed images, JPEG photos and noise images of
  several sizes (decoded in full: --draft-decode off), for IEI's float resize, for Pillow's 8-bit resize (what
  IEI does for slow processors: it rounds between its two passes) and for the float resize before rounding;
- vectors: the torch backend on IEI's pixels against `pooler_output` on the reference's pixels, on the seed
  images: max |difference|, max |difference| / max |value|, min cosine; tiny models and the bundled full-size
  ids with random weights (real weights are not reachable here);
- preprocessing: ms per image (decode + resize, one core), float resize against the 8-bit one;
- the torch reference is the tests' own (`tests/dinov3/reference.py`), so both hold IEI to the same thing;
- start (--serve): `iei serve --load-format dummy` of each bundled id, offline: seconds to /health 200 and the
  model process's peak RSS.

    .venv/bin/python benchmarks/dinov3_parity.py --serve --out benchmarks/results/dinov3
    .venv/bin/python benchmarks/dinov3_parity.py --quick        # seconds: tiny models only, no report
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, Server, free_port, iei_command, machine_facts, save_report, synthetic_photo  # noqa: E402

IDS = ("facebook/dinov3-vits16-pretrain-lvd1689m", "facebook/dinov3-vitb16-pretrain-lvd1689m",
       "facebook/dinov3-convnext-tiny-pretrain-lvd1689m")
SEED_DIR = ROOT.parent / "shared" / "testdata" / "seed-images"
PHOTO_SIZES = ((1024, 768), (4000, 3000), (640, 480), (300, 200), (224, 224), (150, 100), (37, 501))
NOISE_SIZES = ((1024, 768), (224, 224), (100, 150), (64, 64), (5, 400))


def _images() -> dict[str, bytes]:
    from PIL import Image

    images = {f"seed {p.stem}": p.read_bytes() for p in sorted(SEED_DIR.glob("*.png"))}
    images.update({f"photo {w}x{h}": synthetic_photo(w, h, seed=i) for i, (w, h) in enumerate(PHOTO_SIZES)})
    for i, (w, h) in enumerate(NOISE_SIZES):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buffer, "PNG")
        images[f"noise {w}x{h}"] = buffer.getvalue()
    return images


def _spec(folder: str, **changes: Any):
    from iei.preprocess.spec import load_spec

    return msgspec.structs.replace(load_spec(folder, draft=False), **changes)


def pixel_parity(images: dict[str, bytes]) -> list[dict[str, Any]]:
    from iei.models import catalog_dir
    from iei.preprocess import image as image_module
    from iei.preprocess.image import prepare_pixels
    from tests.dinov3.reference import processor_config, resized_levels

    folder = str(catalog_dir(IDS[1]))
    config, spec = processor_config(Path(folder)), _spec(folder)
    eight_bit = msgspec.structs.replace(spec, float_resize=False)
    rows = []
    for name, data in images.items():
        want = resized_levels(config, data)
        image, _ = image_module._decode(data, spec)
        unrounded = np.stack([np.asarray(band.convert("F").resize((224, 224), 2)) for band in image.split()])
        diffs = {"float (IEI)": prepare_pixels(data, spec), "8-bit Pillow": prepare_pixels(data, eight_bit),
                 "float, unrounded": unrounded}
        rows.append({"image": name, **{k: {"max": float(np.abs(v.astype(np.float32) - want).max()),
                                           "mean": float(np.abs(v.astype(np.float32) - want).mean())}
                                       for k, v in diffs.items()}})
    return rows


def _tiny(family: str, root: Path) -> str:
    from tests.model_factory import make_tiny_model

    return str(make_tiny_model(family, root))


def vector_parity(seeds: list[bytes], quick: bool, root: Path) -> list[dict[str, Any]]:
    import torch

    from backends import BackendConfig, load_backend
    from iei.models import resolve_model
    from iei.preprocess.image import pixel_affine, prepare_pixels
    from tests.dinov3.reference import pixel_values, processor_config

    models = [("tiny dinov3_vit", _tiny("dinov3_vit", root), "auto"), ("tiny dinov3_convnext", _tiny("dinov3_convnext", root), "auto")]
    if not quick:
        models += [(f"{model_id} (random)", model_id, "dummy") for model_id in IDS]
    rows = []
    for name, model, load_format in models:
        folder = resolve_model(model, None, load_format).config_dir or model
        spec = _spec(folder)
        scale, offset = pixel_affine(spec)
        backend = load_backend("torch", BackendConfig(model=model, load_format=load_format, config_dir=folder if load_format == "dummy" else None,
                                                      device="cpu", image_size=(224, 224), pixel_scale=scale, pixel_offset=offset,
                                                      dtype="float32"))  # parity with the float32 reference: no bf16 (--dtype auto)
        served = backend.embed_images(np.stack([prepare_pixels(data, spec) for data in seeds]))
        reference_model = backend._embedder.model  # the same weights (dummy: seeded random)
        with torch.inference_mode():
            want = reference_model(pixel_values=pixel_values(processor_config(Path(folder)), seeds)).pooler_output.numpy()
        diff = np.abs(served - want)
        cosine = (served * want).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(want, axis=1))
        rows.append({"model": name, "dim": int(served.shape[1]), "max_abs_diff": float(diff.max()),
                     "max_abs_diff_over_max_abs": float(diff.max() / np.abs(want).max()), "min_cosine": float(cosine.min())})
        del backend, reference_model
    return rows


def preprocess_cost(images: dict[str, bytes], rounds: int) -> list[dict[str, Any]]:
    from iei.models import catalog_dir
    from iei.preprocess.image import prepare_pixels

    folder = str(catalog_dir(IDS[1]))
    rows = []
    for name in ("photo 1024x768", "photo 4000x3000", "seed bag"):
        data = images[name]
        row: dict[str, Any] = {"image": name}
        for label, changes in (("float", {}), ("8-bit", {"float_resize": False})):
            for draft in (False, True):
                spec = _spec(folder, draft=draft, **changes)
                times = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    prepare_pixels(data, spec)
                    times.append((time.perf_counter() - start) * 1000)
                row[f"{label}{' draft' if draft else ''}_ms"] = statistics.median(times)
        rows.append(row)
    return rows


def _peak_rss_mb(pgid: int) -> float:
    """The largest VmHWM (peak resident set) among the live processes of the group: the model process."""
    peak = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            if int(Path(status.parent, "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
        except (OSError, ValueError, IndexError):
            continue
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def dummy_starts() -> list[dict[str, Any]]:
    rows = []
    for model_id in IDS:
        port = free_port()
        server = Server(f"dinov3-{model_id.split('/')[1]}", iei_command(Path(model_id), port, [
            "--load-format", "dummy", "--preprocess-workers", "1"]), {}, port, "/embed", b"", None)
        start = time.monotonic()
        server.start(timeout_s=300)
        seconds = time.monotonic() - start
        rows.append({"model": model_id, "start_to_health_s": round(seconds, 1),
                     "model_process_peak_rss_mb": round(_peak_rss_mb(server.process.pid), 0)})
        server.stop()
    return rows


def write_markdown(report: dict[str, Any], path: Path) -> None:
    facts = report["machine"]
    lines = [f"# DINOv3 preprocessing parity and start-up ({facts['cpu_model']}, {facts['cpu_cores']} cores, "
             f"commit {facts['git_commit']}, {facts['date']})", "",
             "## Pixels: |IEI - torch interpolate(antialias)| in 8-bit levels (224 x 224, full decode)", "",
             "| image | float (IEI) max | mean | 8-bit Pillow max | mean | float before rounding max |", "|---|---|---|---|---|---|"]
    for row in report["pixels"]:
        f, e, u = row["float (IEI)"], row["8-bit Pillow"], row["float, unrounded"]
        lines.append(f"| {row['image']} | {f['max']:.4f} | {f['mean']:.4f} | {e['max']:.4f} | {e['mean']:.4f} | {u['max']:.4f} |")
    lines += ["", "## Vectors on the six seed images: IEI (torch backend) against pooler_output on torch's pixels", "",
              "| model | dim | max abs diff | max abs diff / max abs value | min cosine |", "|---|---|---|---|---|"]
    for row in report["vectors"]:
        lines.append(f"| {row['model']} | {row['dim']} | {row['max_abs_diff']:.2e} | {row['max_abs_diff_over_max_abs']:.2e} "
                     f"| {row['min_cosine']:.7f} |")
    lines += ["", "## Preprocessing, ms per image (decode + resize, one core, median)", "",
              "| image | float | float, draft | 8-bit | 8-bit, draft |", "|---|---|---|---|---|"]
    for row in report["preprocess"]:
        lines.append(f"| {row['image']} | {row['float_ms']:.1f} | {row['float draft_ms']:.1f} | {row['8-bit_ms']:.1f} "
                     f"| {row['8-bit draft_ms']:.1f} |")
    if report.get("starts"):
        lines += ["", "## `iei serve --load-format dummy`, offline (1 preprocessing worker)", "",
                  "| model | start to /health 200, s | model process peak RSS, MB |", "|---|---|---|"]
        for row in report["starts"]:
            lines.append(f"| {row['model']} | {row['start_to_health_s']} | {row['model_process_peak_rss_mb']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only, few rounds, no report")
    parser.add_argument("--serve", action="store_true", help="also start each bundled id with --load-format dummy")
    parser.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    import tempfile

    images = _images()
    seeds = [data for name, data in images.items() if name.startswith("seed")]
    with tempfile.TemporaryDirectory() as root:
        report = {"machine": machine_facts(), "pixels": pixel_parity(images),
                  "vectors": vector_parity(seeds, args.quick, Path(root)),
                  "preprocess": preprocess_cost(images, 3 if args.quick else 15),
                  "starts": dummy_starts() if args.serve and not args.quick else []}
    worst = max(row["float (IEI)"]["max"] for row in report["pixels"])
    print(f"max |IEI - torch| {worst:.4f} levels; vectors:", [(r["model"], f"{r['min_cosine']:.7f}") for r in report["vectors"]])
    save_report(report, None if args.quick else args.out, write_markdown)


if __name__ == "__main__":
    main()
