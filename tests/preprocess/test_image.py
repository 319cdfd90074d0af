"""prepare_image and decode_payload: parity with transformers' slow processors, the JPEG draft
path, image modes and formats, and bad inputs.

Reference: `processor(images=load_image(pil), input_data_format="channels_last")`. Declaring
channels-last only matters for 1xN and 3xN images, where transformers would otherwise guess
channels-first from the array shape.
"""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib
from pathlib import Path

import msgspec
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, JpegImagePlugin
from transformers import (
    AutoImageProcessor,
    BeitImageProcessor,
    BitImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    SiglipImageProcessor,
    ViTImageProcessor,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, load_image

import iei.preprocess.image as image_module
from iei.errors import InputError
from iei.models import catalog_dir
from iei.preprocess.image import decode_payload, prepare_image
from iei.preprocess.spec import make_spec, spec_from_processor

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

# Draft tolerance, on the normalised tensor, measured on synthetic photos (gradients, shapes,
# blur, noise; JPEG q90) at 1024x768 and 4000x3000 for ViT, ConvNeXt and CLIP specs: mean abs
# diff 0.003-0.011, cosine >= 0.9998. Bounds have ~2x headroom; 0.02 is about 1-2.5 grey levels
# on average (std 0.229-0.5) — well below what changes an embedding.
DRAFT_MEAN_ABS_DIFF = 0.02
DRAFT_MIN_COSINE = 0.999


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


@pytest.fixture(scope="module")
def jpegs() -> dict[str, bytes]:
    return {name: make() for name, make in JPEGS.items()}


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    assert SEEDS, f"no seed images under {SEED_DIR}"
    return {path.stem: path.read_bytes() for path in SEEDS}


# --- parity with transformers ---------------------------------------------------------------


@pytest.mark.parametrize("family", PROCESSORS)
def test_matches_transformers_on_seed_images(family, seeds):
    processor = PROCESSORS[family]()
    spec = spec_from_processor(processor, draft=False)
    for name, data in seeds.items():
        got = prepare_image(data, spec)
        assert got.dtype == np.float32 and got.shape == (3, spec.output_height, spec.output_width)
        np.testing.assert_allclose(got, reference(processor, data), atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("family", PROCESSORS)
def test_matches_transformers_on_jpegs(family, jpegs):
    processor = PROCESSORS[family]()
    spec = spec_from_processor(processor, draft=False)
    for name, data in jpegs.items():
        np.testing.assert_allclose(prepare_image(data, spec), reference(processor, data), atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("family", PROCESSORS)
def test_matches_processor_saved_and_reloaded(family, seeds, jpegs, tmp_path):
    PROCESSORS[family]().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    spec = spec_from_processor(processor, draft=False)
    for data in (seeds["bag"], jpegs["exif6-800x600"]):
        np.testing.assert_allclose(prepare_image(data, spec), reference(processor, data), atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_id", ["openai/clip-vit-base-patch32", "google/siglip-base-patch16-224",
                                      "facebook/dinov2-small"])
def test_retrieval_catalog_processors_match_transformers(model_id, seeds, jpegs):
    """What we serve for CLIP (shortest edge 224 bicubic + crop + CLIP mean/std), SigLIP (fixed 224) and DINOv2
    (shortest edge 256 + crop 224), read from the bundled hub files."""
    processor = AutoImageProcessor.from_pretrained(catalog_dir(model_id), use_fast=False)
    spec = spec_from_processor(processor, draft=False)
    for name, data in {**seeds, **jpegs}.items():
        np.testing.assert_allclose(prepare_image(data, spec), reference(processor, data), atol=1e-4, rtol=0, err_msg=name)


def test_exif_orientation_6_is_applied(jpegs):
    spec = make_spec(resize="fixed", resample=2, resize_height=60, resize_width=80, draft=False)
    data = jpegs["exif6-800x600"]  # stored 800 wide, shown 600 wide
    with_exif = prepare_image(data, spec)
    stored = Image.open(io.BytesIO(data))
    rotated = encode(stored.transpose(Image.ROTATE_270), "PNG")
    np.testing.assert_allclose(with_exif, prepare_image(rotated, spec), atol=1e-6)


def test_extreme_aspect_ratio_resizes_only_the_cropped_part():
    # 4 x 300 with a 256 shortest edge is 256 x 19200 before the crop: over the full-resize cap,
    # so only the kept region is resized. Close to transformers, not bit-exact (Pillow rounding).
    processor = PROCESSORS["dinov2"]()
    column = np.linspace(0, 255, 300)[:, None, None] + np.array([0, 40, 80])[None, None, :]
    pixels = np.broadcast_to(column, (300, 4, 3)) + np.random.default_rng(0).normal(0, 3, (300, 4, 3))
    data = encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), "PNG")
    got = prepare_image(data, spec_from_processor(processor))
    assert np.abs(got - reference(processor, data)).max() < 0.05  # about 2 grey levels


def test_writes_into_given_buffer(seeds):
    spec = spec_from_processor(PROCESSORS["vit"]())
    batch = np.zeros((2, 3, 224, 224), dtype=np.float32)
    result = prepare_image(seeds["coat"], spec, out=batch[1])
    assert np.shares_memory(result, batch) and np.array_equal(batch[1], prepare_image(seeds["coat"], spec))
    assert not batch[0].any()
    with pytest.raises(ValueError):
        prepare_image(seeds["coat"], spec, out=np.zeros((3, 224, 223), dtype=np.float32))


# --- JPEG draft (DCT downscale) -------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpegs() -> dict[str, bytes]:
    return {"1024x768": synthetic_photo(1024, 768, seed=11), "4000x3000": synthetic_photo(4000, 3000, seed=12)}


@pytest.mark.parametrize("family", ["vit", "convnext", "clip", "deit"])
@pytest.mark.parametrize("size", ["1024x768", "4000x3000"])
def test_draft_stays_within_tolerance(family, size, large_jpegs):
    exact_spec = spec_from_processor(PROCESSORS[family](), draft=False)
    exact = prepare_image(large_jpegs[size], exact_spec)
    drafted = prepare_image(large_jpegs[size], msgspec.structs.replace(exact_spec, draft=True))
    assert not np.array_equal(exact, drafted), "draft was expected to be used"
    assert np.abs(exact - drafted).mean() < DRAFT_MEAN_ABS_DIFF
    cosine = float(exact.ravel() @ drafted.ravel() / np.linalg.norm(exact) / np.linalg.norm(drafted))
    assert cosine >= DRAFT_MIN_COSINE


@pytest.mark.parametrize("size", [(400, 300), (447, 600), (224, 224)])
def test_draft_skipped_when_source_is_not_much_larger(size, monkeypatch):
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: calls.append(a) or original(self, *a))
    data = synthetic_photo(*size, seed=13)
    spec = spec_from_processor(PROCESSORS["vit"]())
    assert np.array_equal(prepare_image(data, spec), prepare_image(data, msgspec.structs.replace(spec, draft=False)))
    assert calls == []


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(
    "spec",
    [
        make_spec(resize="fixed", resample=2, resize_height=100, resize_width=400),
        make_spec(resize="fixed", resample=2, resize_height=400, resize_width=100),
        make_spec(resize="shortest_edge", resample=3, shortest_edge=150, crop_height=150, crop_width=150),
    ],
    ids=["wide", "tall", "shortest-edge"],
)
def test_draft_never_decodes_below_the_resize_size(spec, orientation, monkeypatch):
    seen = []
    original = image_module._resize_and_crop
    monkeypatch.setattr(
        image_module, "_resize_and_crop", lambda img, src, s: seen.append((img.size, src)) or original(img, src, s)
    )
    prepare_image(synthetic_photo(4000, 1000, seed=14, exif_orientation=orientation), spec)
    (decoded_w, decoded_h), (src_w, src_h) = seen[0]
    assert (src_w, src_h) == ((1000, 4000) if orientation in (6, 8) else (4000, 1000))
    assert decoded_w < src_w, "draft was expected to be used"
    res_w, res_h = image_module._resize_size(src_w, src_h, (decoded_w, decoded_h), spec)
    assert decoded_w >= res_w and decoded_h >= res_h


# --- modes and formats ----------------------------------------------------------------------


def gradient(size=(64, 48)) -> np.ndarray:
    w, h = size
    return ((np.arange(w)[None, :] * 3 + np.arange(h)[:, None] * 2) % 256).astype(np.uint8)


VIT = make_spec(resize="fixed", resample=2, resize_height=32, resize_width=32)


def assert_valid(result: np.ndarray) -> None:
    assert result.shape == (3, 32, 32) and result.dtype == np.float32 and np.isfinite(result).all()


def test_16_bit_png_matches_its_8_bit_version():
    g8 = gradient()
    noise = np.random.default_rng(0).integers(-100, 100, g8.shape)  # below half a step of 257
    g16 = Image.fromarray((g8.astype(np.int64) * 257 + noise).clip(0, 65535).astype(np.uint16))
    assert Image.open(io.BytesIO(encode(g16, "PNG"))).mode.startswith("I;16")
    got16 = prepare_image(encode(g16, "PNG"), VIT)
    got8 = prepare_image(encode(Image.fromarray(g8), "PNG"), VIT)
    assert np.abs(got16 - got8).max() <= 1 / 255 / 0.5 + 1e-6  # within one grey level


def test_32_bit_int_and_float_tiff_are_scaled_not_clipped():
    g8 = gradient().astype(np.int32)
    expected = prepare_image(encode(Image.fromarray(g8.astype(np.uint8)), "PNG"), VIT)
    as_int = Image.fromarray(g8 * 257, mode="I")
    as_float = Image.fromarray(g8.astype(np.float32) / 255, mode="F")
    for img in (as_int, as_float):
        np.testing.assert_allclose(prepare_image(encode(img, "TIFF"), VIT), expected, atol=1e-6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.fromarray(gradient()), "PNG"),  # L
        lambda: encode(Image.fromarray(gradient()).convert("1"), "PNG"),
        lambda: encode(Image.fromarray(np.dstack([gradient(), 255 - gradient()])), "PNG"),  # LA
        lambda: encode(Image.fromarray(gradient()).convert("P"), "PNG", transparency=3),
        lambda: encode(Image.new("RGBA", (5, 7), (10, 200, 30, 0)), "PNG"),
        lambda: encode(Image.new("CMYK", (40, 30), (200, 10, 50, 20)), "JPEG"),
        lambda: encode(Image.fromarray(gradient()), "JPEG"),  # greyscale JPEG
        lambda: encode(Image.new("RGB", (30, 20), "red"), "BMP"),
        lambda: encode(Image.new("RGB", (30, 20), "red"), "WEBP", lossless=True),
    ],
    ids=["L", "1", "LA", "P+transparency", "RGBA", "CMYK-jpeg", "L-jpeg", "bmp", "webp"],
)
def test_modes_give_finite_tensor(make):
    assert_valid(prepare_image(make(), VIT))


def test_cmyk_jpeg_matches_transformers():
    processor = PROCESSORS["vit"]()
    data = encode(Image.new("CMYK", (40, 30), (200, 10, 50, 20)), "JPEG", quality=95)
    np.testing.assert_allclose(prepare_image(data, spec_from_processor(processor)), reference(processor, data), atol=1e-4)


def frames() -> list[Image.Image]:
    return [Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue")]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "TIFF"])
def test_animated_and_multipage_use_the_first_frame(fmt):
    first, *rest = frames()
    kwargs = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(first, fmt, save_all=True, append_images=rest, **kwargs)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    np.testing.assert_allclose(prepare_image(data, VIT), prepare_image(encode(first, "PNG"), VIT), atol=1e-6)


def test_one_pixel_image_gives_its_colour_everywhere():
    result = prepare_image(encode(Image.new("RGB", (1, 1), (255, 0, 128)), "PNG"), VIT)
    expected = (np.array([255, 0, 128], dtype=np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(result, np.broadcast_to(expected[:, None, None], result.shape), atol=1e-5)


# --- bad inputs -----------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming width x height, then IEND: a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty image"),
        (b"hello, this is not an image", "not a decodable image"),
        (b"\x00" * 1000, "not a decodable image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "unsupported image format SVG"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported image format SVG"),
        (b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "unsupported image format PDF"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unsupported image format PostScript"),
    ],
    ids=["empty", "text", "zeros", "svg", "xml-svg", "pdf", "eps"],
)
def test_undecodable_bytes(data, message):
    with pytest.raises(InputError, match=message):
        prepare_image(data, VIT)


@pytest.mark.parametrize("fmt", ["ICO", "TGA", "PPM"])
def test_formats_outside_the_default_allow_list_are_named(fmt):
    data = encode(Image.new("RGB", (16, 16), "red"), fmt)
    with pytest.raises(InputError, match=rf"unsupported image format {fmt} \(allowed: JPEG, PNG, WEBP, GIF, BMP, TIFF\)"):
        prepare_image(data, VIT)
    assert_valid(prepare_image(data, msgspec.structs.replace(VIT, formats=(fmt,))))


def test_allow_list_narrows_the_formats():
    png_only = msgspec.structs.replace(VIT, formats=("PNG",))
    assert_valid(prepare_image(encode(Image.new("RGB", (8, 8)), "PNG"), png_only))
    with pytest.raises(InputError, match=r"unsupported image format JPEG \(allowed: PNG\)"):
        prepare_image(encode(Image.new("RGB", (8, 8)), "JPEG"), png_only)


def test_truncated_jpeg_and_png(jpegs, seeds):
    for data in (jpegs["1024x768"], seeds["shoe"]):
        with pytest.raises(InputError, match="truncated"):
            prepare_image(data[: len(data) // 2], VIT)


@pytest.mark.parametrize(("size", "message"), [(100_000, "over the limit"), (9_000, "9000x9000")])
def test_huge_declared_dimensions_rejected_before_decoding(size, message):
    start = time.perf_counter()
    with pytest.raises(InputError, match=message):
        prepare_image(png_header_only(size, size), VIT)
    assert time.perf_counter() - start < 0.5


def test_pixel_limit_names_size_and_limit(jpegs):
    spec = msgspec.structs.replace(VIT, max_image_pixels=100_000)
    with pytest.raises(InputError, match=r"1024x768 = 786432 pixels, over the limit of 100000"):
        prepare_image(jpegs["1024x768"], spec)


# --- decode_payload -------------------------------------------------------------------------


def test_decode_payload_variants():
    raw = bytes(range(256)) * 10
    b64 = base64.b64encode(raw)
    assert decode_payload(b64, "base64") == raw
    assert decode_payload(b64.decode(), "base64") == raw
    assert decode_payload(base64.encodebytes(raw), "base64") == raw  # line breaks every 76 chars
    assert decode_payload(b"data:image/png;base64," + b64, "base64") == raw
    assert decode_payload(b"DATA:application/octet-stream;base64," + b64, "base64") == raw
    assert decode_payload(raw, "raw") == raw


@pytest.mark.parametrize("payload", [b"abc$def=", b"abc", "caf\u00e9", b"data:image/png;base64,%%%"])
def test_decode_payload_rejects_bad_base64(payload):
    with pytest.raises(InputError, match="not valid base64"):
        decode_payload(payload, "base64")


@pytest.mark.parametrize(
    ("payload", "encoding"),
    [(b"", "base64"), (b"data:image/png;base64,", "base64"), (b" \n", "base64"), (b"", "raw")],
)
def test_decode_payload_empty(payload, encoding):
    with pytest.raises(InputError, match="empty image"):
        decode_payload(payload, encoding)
