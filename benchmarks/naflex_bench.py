"""SigLIP 2 NaFlex against fixed resolution, side by side: what variable patch grids cost.

Three SigLIP-B/16 vision towers with random weights (the text towers are built too, with a small vocabulary:
they do not run here and a 256k-token embedding would only slow the starts):
- `fixres-224`: google/siglip2-base-patch16-224's shape (model type `siglip`), 224 x 224, 196 patches;
- `fixres-256`: the same at 256 x 256, 256 patches: the same token count as NaFlex's budget;
- `naflex-256`: google/siglip2-base-patch16-naflex (`siglip2`), each image at its own aspect ratio in at most
  256 patches, padded to 256 (the padding is masked but still computed).

Measured in one run, rounds alternating between the variants, medians:
- in process: the torch backend's images/s on batches of 1024 x 768 photos already preprocessed as the workers
  write them (for NaFlex, patches and grids, so the position-embedding resize per grid and the masking count),
  and the preprocessing itself (decode + resize (+ patchify), ms per image, one core);
- end to end: `iei serve` on each, 16 clients posting one 1024 x 768 JPEG each, images/s.

    .venv/bin/python benchmarks/naflex_bench.py --out benchmarks/results/naflex
    .venv/bin/python benchmarks/naflex_bench.py --quick        # seconds: tiny widths, no report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import CACHE, RESULTS, Server, free_port, iei_command, machine_facts, save_report, synthetic_photo  # noqa: E402
from loadgen import build_payloads, run_level  # noqa: E402

VARIANTS = ("fixres-224", "fixres-256", "naflex-256")
_BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
_TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


def build_model(variant: str, quick: bool) -> Path:
    """A random-weight model folder (save_pretrained) with its image processor, built once."""
    folder = CACHE / "models" / f"siglip-{variant}{'-tiny' if quick else ''}"
    if (folder / "preprocessor_config.json").exists():
        return folder
    import torch
    from transformers import (
        Siglip2Config, Siglip2ImageProcessor, Siglip2Model, SiglipConfig, SiglipImageProcessor, SiglipModel,
    )

    width = _TINY if quick else _BASE
    text = {**_TINY, "vocab_size": 1000, "max_position_embeddings": 64}
    torch.manual_seed(0)
    if variant.startswith("fixres"):
        size = int(variant.split("-")[1])
        model = SiglipModel(SiglipConfig(text_config=text, vision_config={**width, "image_size": size, "patch_size": 16}))
        processor = SiglipImageProcessor(size={"height": size, "width": size}, resample=2)
    else:
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config={**width, "num_patches": 256, "patch_size": 16}))
        processor = Siglip2ImageProcessor(max_num_patches=256, patch_size=16)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _photos(count: int) -> list[bytes]:
    return [synthetic_photo(1024, 768, seed=i) for i in range(count)]


def in_process(models: dict[str, Path], batch: int, rounds: int, seconds: float) -> dict[str, Any]:
    """Images/s of each variant's torch backend (alternating rounds) and its preprocessing ms per image."""
    import numpy as np

    from backends import BackendConfig
    from backends.torch_backend import load_torch_backend
    from iei.preprocess.image import pixel_affine, prepare_patches, prepare_pixels
    from iei.preprocess.spec import load_spec

    photos = _photos(batch)
    loaded, inputs, prep_ms = {}, {}, {}
    for name, folder in models.items():
        spec = load_spec(str(folder))
        scale, offset = pixel_affine(spec)
        loaded[name] = load_torch_backend(BackendConfig(
            model=str(folder), pixel_scale=scale, pixel_offset=offset, max_num_patches=spec.max_num_patches,
            image_size=(spec.output_height, spec.output_width), max_batch_size=batch,
            dtype="float32"))  # the cost of variable grids, not of --dtype auto's choice (which may differ per model)
        pixels = np.zeros((batch, *spec.item_shape), dtype=np.uint8)
        grids = np.zeros((batch, 2), dtype=np.int32)
        started = time.perf_counter()
        for _ in range(3):
            for i, photo in enumerate(photos):
                if spec.variable_grid:
                    grids[i] = prepare_patches(photo, spec, pixels[i])
                else:
                    prepare_pixels(photo, spec, pixels[i])
        prep_ms[name] = (time.perf_counter() - started) * 1000 / (3 * batch)
        inputs[name] = (pixels, grids if spec.variable_grid else None)
        loaded[name].embed_images(*inputs[name])  # warm this shape
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, backend in loaded.items():
            done, started = 0, time.perf_counter()
            while done < 2 * batch or time.perf_counter() - started < seconds:
                backend.embed_images(*inputs[name])
                done += batch
            rates[name].append(done / (time.perf_counter() - started))
    grid = tuple(int(v) for v in inputs["naflex-256"][1][0]) if "naflex-256" in inputs else None
    return {"img_per_s": rates, "median_img_per_s": {n: statistics.median(r) for n, r in rates.items()},
            "preprocess_ms_per_image": prep_ms, "batch": batch, "naflex_grid_1024x768": grid}


def end_to_end(models: dict[str, Path], rounds: int, seconds: float, clients: int) -> dict[str, Any]:
    """Images/s of `iei serve` per variant, one server at a time, rounds alternating."""
    photo = _photos(1)
    payloads = build_payloads(photo, "json", 1)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, folder in models.items():
            port = free_port()
            server = Server(name, iei_command(folder, port, ["--max-batch-size", "8", "--load-format", "dummy", "--dtype", "float32"]), {}, port, "/embed", b"", None)
            try:
                server.start(timeout_s=300)
                run_level(server.url, payloads, concurrency=4, duration_s=min(3.0, seconds))  # warm
                level = run_level(server.url, payloads, concurrency=clients, duration_s=seconds)
                rates[name].append(level["img_per_s"])
            finally:
                server.stop()
    return {"img_per_s": rates, "median_img_per_s": {n: statistics.median(r) for n, r in rates.items()},
            "clients": clients}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    ip, e2e = report["in_process"], report["end_to_end"]
    base = ip["median_img_per_s"]["fixres-256"]
    lines = [
        "# SigLIP 2 NaFlex vs fixed resolution (SigLIP-B/16 vision, random weights, torch fp32)", "",
        f"Host: {report['machine']['cpu_model']}, {report['machine']['cpu_cores']} cores; commit "
        f"{report['machine']['git_commit']}; {report['note']}", "",
        f"In process: batch {ip['batch']} of 1024x768 photos preprocessed as the workers write them (NaFlex gives "
        f"them a {ip['naflex_grid_1024x768']} grid of 16-pixel patches, padded to 256); {report['rounds']} "
        "alternating rounds, medians. End to end: `iei serve`, "
        f"{e2e['clients']} clients, one 1024x768 JPEG per request.", "",
        "| variant | tokens | in process img/s | vs fixres-256 | preprocess ms/img | end to end img/s | vs fixres-256 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    e2e_base = e2e["median_img_per_s"]["fixres-256"]
    for name, tokens in (("fixres-224", 196), ("fixres-256", 256), ("naflex-256", 256)):
        rate, served = ip["median_img_per_s"][name], e2e["median_img_per_s"][name]
        lines.append(f"| {name} | {tokens} | {rate:.2f} | x{rate / base:.2f} | {ip['preprocess_ms_per_image'][name]:.1f} | "
                     f"{served:.2f} | x{served / e2e_base:.2f} |")
    lines += ["", "Per round (img/s): " + json.dumps({"in_process": ip["img_per_s"], "end_to_end": e2e["img_per_s"]})]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny widths, one short round, no end-to-end part")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0, help="per variant and round, in process")
    p.add_argument("--e2e-seconds", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--note", default="", help="said in the report, e.g. what else ran on the host")
    p.add_argument("--out", type=Path, default=None, help=f"report path without suffix, e.g. {RESULTS / 'naflex'}")
    args = p.parse_args(argv)
    models = {name: build_model(name, args.quick) for name in VARIANTS}
    if args.quick:
        result = in_process(models, batch=2, rounds=1, seconds=0.1)
        print(json.dumps(result["median_img_per_s"]))
        return 0
    report = {"machine": machine_facts(), "note": args.note, "rounds": args.rounds,
              "in_process": in_process(models, args.batch, args.rounds, args.seconds)}
    print(json.dumps(report["in_process"]["median_img_per_s"]), flush=True)
    report["end_to_end"] = end_to_end(models, args.rounds, args.e2e_seconds, clients=16)
    print(json.dumps(report["end_to_end"]["median_img_per_s"]), flush=True)
    save_report(report, args.out, write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
