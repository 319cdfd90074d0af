"""Images and processors shared by the preprocessing tests: synthetic photos, the seed images, the
transformers processors of every family we serve, and transformers' own output as the reference.

Reference: `processor(images=load_image(pil), input_data_format="channels_last")`. Declaring
channels-last only matters for 1xN and 3xN images, where transformers would otherwise guess
channels-first from the array shape.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from transformers import (
    BeitImageProcessor,
    BitImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    SiglipImageProcessor,
    ViTImageProcessor,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, load_image

SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "seed-images"
if not SEED_DIR.is_dir():
    SEED_DIR = Path("/work/shared/testdata/seed-images")
SEEDS = sorted(SEED_DIR.glob("*.png"))
IMAGENET = {"image_mean": IMAGENET_DEFAULT_MEAN, "image_std": IMAGENET_DEFAULT_STD}
HALF = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}

# As the hub configs of the families we serve set them.
PROCESSORS = {
    "vit": lambda: ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, **HALF),
    "swin": lambda: ViTImageProcessor(size={"height": 224, "width": 224}, resample=3, **IMAGENET),
    "deit": lambda: DeiTImageProcessor(size={"height": 256, "width": 256}, resample=3, **IMAGENET),
    "beit": lambda: BeitImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False, resample=2, **HALF),
    "beit-crop": lambda: BeitImageProcessor(),
    "convnext": lambda: ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3, **IMAGENET),
    "convnext-384": lambda: ConvNextImageProcessor(size={"shortest_edge": 384}, resample=3, **IMAGENET),
    "clip": lambda: CLIPImageProcessor(),
    "siglip": lambda: SiglipImageProcessor(size={"height": 224, "width": 224}, resample=3, **HALF),
    "dinov2": lambda: BitImageProcessor(size={"shortest_edge": 256}, resample=3, **IMAGENET),
}


def synthetic_photo(width: int, height: int, seed: int = 0, exif_orientation: int | None = None) -> bytes:
    """A JPEG (q90) with photo-like statistics: smooth gradients, shapes, blur and sensor noise.
    Drawn at up to 1024 px and scaled up, so 12 MP costs well under a second."""
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
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    img.save(buf, "JPEG", quality=90, exif=exif)
    return buf.getvalue()


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def reference(processor, data: bytes) -> np.ndarray:
    pil = load_image(Image.open(io.BytesIO(data)))
    return processor(images=pil, return_tensors="np", input_data_format="channels_last")["pixel_values"][0]


JPEGS = {
    "1024x768": lambda: synthetic_photo(1024, 768, seed=1),
    "portrait-600x900": lambda: synthetic_photo(600, 900, seed=2),
    "odd-333x517": lambda: synthetic_photo(333, 517, seed=3),
    "wide-900x200": lambda: synthetic_photo(900, 200, seed=4),
    "tiny-1x1": lambda: synthetic_photo(1, 1, seed=5),
    "tiny-2x3": lambda: synthetic_photo(2, 3, seed=6),
    "exif6-800x600": lambda: synthetic_photo(800, 600, seed=7, exif_orientation=6),
}
