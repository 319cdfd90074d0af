"""Overload: offered load at 3x capacity. Admission keeps the admitted requests' latency flat (p99
within 2x of the p99 without overload) and rejects the rest with 429 in milliseconds.

The server (FakeBackend: a fixed 100 ms per batch of up to 2 images, admission limit 2 images, so
capacity is 20 images/s) runs in its own process. Load is open-loop with Poisson arrivals (requests
start on a random schedule, not when the previous one ends), as real traffic is; the baseline is the
same arrival process at 0.3x capacity, where requests rarely meet each other.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.e2e.test_failures import b64_image
from tests.server_process import REPO, free_port

pytestmark = pytest.mark.slow

BATCH_MS, BATCH = 100.0, 2
CAPACITY_PER_S = BATCH / (BATCH_MS / 1000)


@pytest.fixture(scope="module")
def fake_server():
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_server", "--port", str(port), "--delay-ms", str(BATCH_MS),
         "--max-batch-size", str(BATCH), "--max-concurrent-requests", str(BATCH), "--log-level", "warning"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "fake server did not start"
        time.sleep(0.05)
    yield url
    process.terminate()
    process.wait(timeout=30)


async def offer(client: httpx.AsyncClient, rate_per_s: float, seconds: float, body: dict) -> list[tuple[int, float]]:
    """Start requests with Poisson arrivals at `rate_per_s` for `seconds`; (status, latency_s) of each."""
    async def one() -> tuple[int, float]:
        start = time.perf_counter()
        response = await client.post("/embed", json=body)
        return response.status_code, time.perf_counter() - start

    rng = random.Random(5)
    tasks, at, start = [], 0.0, time.perf_counter()
    while at < seconds:
        await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one()))
        at += rng.expovariate(rate_per_s)
    return await asyncio.gather(*tasks)


async def test_admitted_latency_stays_flat_at_three_times_capacity(fake_server):
    body = {"inputs": [b64_image()]}
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=fake_server, timeout=30, limits=limits) as client:
        light = await offer(client, 0.3 * CAPACITY_PER_S, 8.0, body)
        heavy = await offer(client, 3 * CAPACITY_PER_S, 4.0, body)
    served_light = [t for status, t in light if status == 200]
    assert {status for status, _ in light} <= {200, 429} and len(served_light) >= 0.75 * len(light)
    unloaded_p99 = np.percentile(served_light, 99)
    admitted = [t for status, t in heavy if status == 200]
    rejected = [t for status, t in heavy if status == 429]
    admitted_p99, rejected_p99 = np.percentile(admitted, 99), np.percentile(rejected, 99)
    print(f"0.3x capacity: p99 {unloaded_p99 * 1000:.1f} ms; 3x: {len(admitted)} admitted, p99 "
          f"{admitted_p99 * 1000:.1f} ms; {len(rejected)} rejected, p99 {rejected_p99 * 1000:.1f} ms")
    assert {status for status, _ in heavy} <= {200, 429}
    assert len(admitted) / 4.0 > 1.5 * len(served_light) / 8.0  # goodput does not collapse under overload
    assert len(rejected) > len(heavy) / 3
    assert admitted_p99 <= 2 * unloaded_p99
    assert rejected_p99 < 0.05  # refused at once, not after queueing
