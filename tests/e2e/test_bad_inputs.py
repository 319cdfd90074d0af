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


def gif_claiming(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def jpeg_claiming(width: int, height: int) -> bytes:
    start_of_frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + start_of_frame + b"\xff\xd9"


def animated(fmt: str) -> bytes:
    first, *rest = [photo().point(lambda v, k=k: (v + 80 * k) % 256) for k in range(3)]
    return encode(first, fmt, save_all=True, append_images=rest)


def exif_rotated(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "PNG", exif=exif)


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
    "animated_gif": lambda: animated("GIF"),
    "animated_webp": lambda: animated("WEBP"),
    "multipage_tiff": lambda: animated("TIFF"),
    "exif_rotated": lambda: exif_rotated(photo(), 6),
}

BAD = {
    "not_base64": ("@@@ not base64 @@@", "base64"),
    "text_bytes": (b64(b"just some text, honestly"), "decodable"),
    "truncated_jpeg": (b64(encode(photo((640, 480)), "JPEG")[:1500]), "truncated"),
    "zero_bytes_png": (b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), "decodable"),
    "bomb_header": (b64(png_claiming(100_000, 100_000)), "pixels"),
    "bomb_header_gif": (b64(gif_claiming(60_000, 60_000)), "pixels"),
    "bomb_header_jpeg": (b64(jpeg_claiming(60_000, 60_000)), "pixels"),
    "over_pixel_limit": (b64(png_claiming(12_000, 9_000)), "over the limit of 100000000"),
    "svg": (b64(b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'), "unsupported image format SVG"),
    "pdf": (b64(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"),
            "unsupported image format PDF"),
    "tga_not_allowed": (b64(encode(photo(), "TGA")), "unsupported image format TGA"),
    "truncated_png": (b64(encode(photo((640, 480)), "PNG", compress_level=0)[:5000]), "truncated"),
    "corrupt_jpeg_body": (b64(encode(photo(), "JPEG")[:300] + bytes(range(256)) * 20), "truncated"),
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


def test_exif_orientation_is_applied(client):
    upright = photo().transpose(Image.Transpose.ROTATE_270)  # what orientation 6 displays
    rotated = client.post("/embed", json={"inputs": [b64(GOOD["exif_rotated"]())]}).json()[0]
    expected = client.post("/embed", json={"inputs": [b64(encode(upright, "PNG"))]}).json()[0]
    np.testing.assert_allclose(rotated, expected, atol=1e-5)


def test_animated_images_use_their_first_frame(client):
    first = photo()
    expected = client.post("/embed", json={"inputs": [b64(encode(first, "PNG"))]}).json()[0]
    for name in ("animated_webp", "multipage_tiff"):  # lossless here; GIF's palette is not
        got = client.post("/embed", json={"inputs": [b64(GOOD[name]())]}).json()[0]
        assert np.dot(got, expected) > 0.99, name


@pytest.mark.parametrize("body", [
    b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"inputs": ["' + b"A" * 3 + b'"' + b', {"a": [1, [2, [3]]]}' * 1000 + b"]}",
    b'{"inputs": "' + b"\\u0000" * 1000 + b'"}',
    b'{"inputs": ' + b"1" * 5000 + b"}",
], ids=["deeply_nested", "mixed_types", "escaped_nul", "huge_number"])
def test_hostile_json_is_a_4xx(client, body):
    response = client.post("/embed", content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500 and response.json()["error_type"] == "Validation", response.text
    assert "Traceback" not in response.text


def test_enormous_json_is_413_naming_the_limit(client):
    body = b'{"inputs": ["' + b"A" * (5 * 1024 * 1024) + b'"]}'
    response = client.post("/embed", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json() == {
        "error": f"request body is larger than the payload limit of {4 * 1024 * 1024} bytes (payload_limit)",
        "error_type": "PayloadTooLarge"}


def test_zero_byte_raw_body(client):
    response = client.post("/embed", content=b"", headers={"content-type": "image/png"})
    assert response.status_code == 422 and response.json()["error"] == "inputs[0]: empty image"


def test_empty_string_input(client):
    response = client.post("/embed", json={"inputs": [""]})
    assert response.status_code == 422 and response.json()["error"].startswith("inputs[0]")


def test_bad_raw_body(client):
    response = client.post("/embed", content=b"\xff\xd8\xff garbage", headers={"content-type": "image/jpeg"})
    assert response.status_code == 422 and response.json()["error_type"] == "Validation"


def test_bad_images_do_not_fail_other_clients(client):
    """Every bad input of the corpus interleaved concurrently with valid requests (so they share
    batches and workers): every valid one succeeds, every bad one is a 422, nothing is a 5xx."""
    import concurrent.futures

    good = b64(encode(photo(), "JPEG"))
    bad = [payload for payload, _ in BAD.values()]
    bodies = [{"inputs": [good]} if i % 2 else {"inputs": [bad[(i // 2) % len(bad)]]} for i in range(4 * len(bad))]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        statuses = list(pool.map(lambda body: client.post("/embed", json=body).status_code, bodies))
    assert statuses == [200 if i % 2 else 422 for i in range(len(bodies))]
    assert client.get("/health").status_code == 200
