"""prepare_image and decode_payload on every kind of input: image modes and formats, bad bytes,
limits, and the base64 forms."""

from __future__ import annotations

import base64
import io
import struct
import time
import zlib

import msgspec
import numpy as np
import pytest
from PIL import Image

from iei.errors import InputError
from iei.preprocess.image import decode_payload, prepare_image
from iei.preprocess.spec import make_spec, spec_from_processor
from tests.preprocess.images import PROCESSORS, encode, reference


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
