"""64 concurrent single-image clients against one real server: everyone gets their own vector, and
the batcher really forms batches."""

from __future__ import annotations

import asyncio
import base64
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.reference import reference_embeddings

pytestmark = pytest.mark.slow

CLIENTS = 64


def distinct_images(count: int) -> list[bytes]:
    rng = np.random.default_rng(7)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")
        images.append(buf.getvalue())
    return images


def batch_histogram(metrics: str) -> tuple[float, float]:
    """(batches of size 1, all batches) from the iei_batch_size histogram."""
    ones = float(re.search(r'iei_batch_size_bucket\{le="1\.0"\} (\S+)', metrics).group(1))
    total = float(re.search(r"iei_batch_size_count (\S+)", metrics).group(1))
    return ones, total


async def test_64_concurrent_clients_get_their_own_vectors(vit_server, tiny_model):
    images = distinct_images(CLIENTS)
    expected = reference_embeddings(tiny_model("vit"), images)
    before = batch_histogram(httpx.get(vit_server.url + "/metrics").text)
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=vit_server.url, timeout=120, limits=limits) as client:
        async def one(data: bytes) -> list[float]:
            response = await client.post("/embed", json={"inputs": [base64.b64encode(data).decode()],
                                                         "normalize": False})
            assert response.status_code == 200, response.text
            return response.json()[0]

        for _ in range(3):  # a few rounds so batching shows even on a loaded machine
            vectors = np.array(await asyncio.gather(*(one(data) for data in images)))
            np.testing.assert_allclose(vectors, expected, atol=1e-4)
    ones, total = batch_histogram(httpx.get(vit_server.url + "/metrics").text)
    assert total - before[1] < 3 * CLIENTS, "some batches held more than one image"
    assert (total - before[1]) - (ones - before[0]) > 0, "no batch larger than 1 was formed"
