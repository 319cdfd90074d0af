"""Hostile and odd images through the real server: each is a clear 4xx JSON error or a correct vector,
and the server keeps serving the valid images of the same and other requests."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def photo(size=(320, 240)) -> Image.Image:
    x = np.linspace(0, 255, size[0])[None, :, None]
    y = np.linspace(0, 255, size[1])[:, None, None]
    return Image.fromarray(np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


GOOD = {
    "one_pixel": lambda: encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
    "grayscale": lambda: encode(photo().convert("L"), "PNG"),
    "palette_with_transparency": lambda: encode(photo().convert("P"), "PNG", transparency=0),
    "la": lambda: encode(photo().convert("LA"), "PNG"),
    "sixteen_bit_png": lambda: encode(Image.fromarray((np.asarray(photo().convert("L"), np.uint16) * 257)), "PNG"),
    "cmyk_jpeg": lambda: encode(photo().convert("CMYK"), "JPEG"),
    "webp": lambda: encode(photo(), "WEBP"),
    "gif": lambda: encode(photo().convert("P"), "GIF"),
    "bmp": lambda: encode(photo(), "BMP"),
    "tiff": lambda: encode(photo(), "TIFF"),
}

BAD = {
    "not_base64": ("@@@ not base64 @@@", "base64"),
    "text_bytes": (b64(b"just some text, honestly"), "decodable"),
    "truncated_jpeg": (b64(encode(photo((640, 480)), "JPEG")[:1500]), "truncated"),
    "zero_bytes_png": (b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "decodable"),
    "bomb_header": (b64(png_claiming(100_000, 100_000)), "pixels"),
}


@pytest.fixture(scope="module")
def client(vit_server):
    with httpx.Client(base_url=vit_server.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("name", sorted(GOOD))
def test_odd_but_valid_images_embed(client, name):
    response = client.post("/embed", json={"inputs": [b64(GOOD[name]())]})
    assert response.status_code == 200, response.text
    vector = np.array(response.json()[0])
    assert vector.shape == (32,) and np.isfinite(vector).all()
    np.testing.assert_allclose(np.linalg.norm(vector), 1.0, atol=1e-5)


def test_sixteen_bit_png_embeds_like_its_eight_bit_twin(client):
    gray = photo().convert("L")
    wide = client.post("/embed", json={"inputs": [b64(GOOD["sixteen_bit_png"]())]}).json()[0]
    narrow = client.post("/embed", json={"inputs": [b64(encode(gray, "PNG"))]}).json()[0]
    np.testing.assert_allclose(wide, narrow, atol=1e-3)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_are_422_naming_the_index(client, name):
    payload, hint = BAD[name]
    response = client.post("/embed", json={"inputs": [b64(encode(photo(), "PNG")), payload]})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error_type"] == "Validation"
    assert body["error"].startswith("inputs[1]: ") and hint in body["error"]


def test_empty_string_input(client):
    response = client.post("/embed", json={"inputs": [""]})
    assert response.status_code == 422 and response.json()["error"].startswith("inputs[0]")


def test_bad_raw_body(client):
    response = client.post("/embed", content=b"\xff\xd8\xff garbage", headers={"content-type": "image/jpeg"})
    assert response.status_code == 422 and response.json()["error_type"] == "Validation"


def test_bad_images_do_not_fail_other_clients(client):
    """Valid and invalid single-image requests interleaved concurrently: every valid one succeeds."""
    import concurrent.futures

    good = b64(encode(photo(), "JPEG"))
    bodies = [{"inputs": [good]} if i % 2 else {"inputs": [BAD["truncated_jpeg"][0]]} for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda body: client.post("/embed", json=body).status_code, bodies))
    assert statuses == [200 if i % 2 else 422 for i in range(24)]
    assert client.get("/health").status_code == 200
