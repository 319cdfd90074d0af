"""Helpers for the /batches end-to-end tests: building JSONL bodies, polling a job, reading results."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
from PIL import Image

JSONL = {"content-type": "application/jsonl"}


def small_images(count: int, seed: int = 7, size: tuple[int, int] = (48, 64)) -> list[bytes]:
    """`count` distinct random PNGs."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def image_lines(images: list[bytes]) -> list[dict]:
    return [{"image": base64.b64encode(data).decode()} for data in images]


def wait_for_job(client: httpx.Client, job_id: str, until=lambda job: job["status"] not in ("queued", "running"),
                 timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/batches/{job_id}").json()
        if until(job):
            return job
        assert time.monotonic() < deadline, f"job not there after {timeout_s} s: {job}"
        time.sleep(0.05)


def result_lines(client: httpx.Client, job_id: str) -> list[dict]:
    response = client.get(f"/batches/{job_id}/results")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/jsonl")
    return [json.loads(line) for line in response.text.splitlines()]
