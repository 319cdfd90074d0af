"""Overload: offered load at 3x capacity. Does admission keep the admitted requests' latency flat (p99
within 2x of the p99 without overload) and reject the rest with 429 in milliseconds?

The server (tests.fake_server: the FakeBackend, a fixed 100 ms per batch of up to 2 images, admission
limit 2 images, so capacity is 20 images/s) runs in its own process. Load is open-loop with Poisson
arrivals (requests start on a random schedule, not when the previous one ends), as real traffic is; the
baseline is the same arrival process at 0.3x capacity, where requests rarely meet each other.

These are speed claims, so they live here and not in the test suite (a busy 2-core host would make
them flake there); tests/e2e/test_overload.py checks the behaviour (429 at once, admitted requests
served) by ordering alone.

    python benchmarks/overload_bench.py            # -> results/overload.{json,md}
    python benchmarks/overload_bench.py --quick --out /tmp/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, free_port, machine_facts  # noqa: E402

BATCH_MS, BATCH = 100.0, 2
CAPACITY_PER_S = BATCH / (BATCH_MS / 1000)


def small_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def start_fake_server(port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "tests.fake_server", "--port", str(port), "--delay-ms", str(BATCH_MS),
               "--max-batch-size", str(BATCH), "--max-concurrent-requests", str(BATCH), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the fake server did not start")
        time.sleep(0.05)


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


def p99_ms(latencies: list[float]) -> float | None:
    return round(float(np.percentile(latencies, 99)) * 1000, 1) if latencies else None


async def measure(url: str, light_s: float, heavy_s: float) -> dict[str, Any]:
    body = {"inputs": [small_png()]}
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        light = await offer(client, 0.3 * CAPACITY_PER_S, light_s, body)
        heavy = await offer(client, 3 * CAPACITY_PER_S, heavy_s, body)
    served_light = [t for status, t in light if status == 200]
    admitted = [t for status, t in heavy if status == 200]
    rejected = [t for status, t in heavy if status == 429]
    unloaded, admitted_p99, rejected_p99 = p99_ms(served_light), p99_ms(admitted), p99_ms(rejected)
    return {
        "capacity_img_per_s": CAPACITY_PER_S, "light_s": light_s, "heavy_s": heavy_s,
        "light": {"requests": len(light), "served": len(served_light), "p99_ms": unloaded},
        "heavy": {"requests": len(heavy), "admitted": len(admitted), "rejected": len(rejected),
                  "other_statuses": sorted({s for s, _ in heavy} - {200, 429}),
                  "admitted_p99_ms": admitted_p99, "rejected_p99_ms": rejected_p99},
        "goodput_ratio": round((len(admitted) / heavy_s) / max(len(served_light) / light_s, 1e-9), 2),
        "admitted_p99_ratio": round(admitted_p99 / unloaded, 2) if admitted_p99 and unloaded else None,
        "checks": {
            "admitted p99 <= 2x unloaded p99": bool(admitted_p99 and unloaded and admitted_p99 <= 2 * unloaded),
            "rejected p99 < 50 ms": bool(rejected_p99 is not None and rejected_p99 < 50),
            "goodput under overload > 1.5x the light load's": len(admitted) / heavy_s > 1.5 * len(served_light) / light_s,
            "more than a third rejected": len(rejected) > len(heavy) / 3,
        },
    }


def markdown(result: dict[str, Any], facts: dict[str, Any]) -> str:
    heavy, light = result["heavy"], result["light"]
    rows = "\n".join(f"| {name} | {'yes' if ok else 'NO'} |" for name, ok in result["checks"].items())
    return f"""# Overload: 3x capacity against admission control

`python benchmarks/overload_bench.py`; commit {facts['git_commit']}{' (dirty)' if facts['git_dirty'] else ''}, {facts['date']},
{facts['cpu_model']} ({facts['cpu_cores']} cores, load average {facts['loadavg_at_start'][0]:.1f} at the start). FakeBackend server: {BATCH_MS:g} ms per batch of up to {BATCH},
admission limit {BATCH} images, capacity {CAPACITY_PER_S:g} img/s; Poisson arrivals.

| load | requests | served | rejected (429) | p99 served | p99 rejected |
|---|---:|---:|---:|---:|---:|
| 0.3x capacity, {result['light_s']:g} s | {light['requests']} | {light['served']} | {light['requests'] - light['served']} | {light['p99_ms']} ms | |
| 3x capacity, {result['heavy_s']:g} s | {heavy['requests']} | {heavy['admitted']} | {heavy['rejected']} | {heavy['admitted_p99_ms']} ms | {heavy['rejected_p99_ms']} ms |

Admitted p99 / unloaded p99: {result['admitted_p99_ratio']}; goodput ratio (3x / 0.3x, per second): {result['goodput_ratio']}.

| check | holds |
|---|---|
{rows}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 s + 1 s of load (a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default results/overload.json)")
    args = parser.parse_args()
    light_s, heavy_s = (2.0, 1.0) if args.quick else (8.0, 4.0)
    port = free_port()
    process = start_fake_server(port)
    try:
        result = asyncio.run(measure(f"http://127.0.0.1:{port}", light_s, heavy_s))
    finally:
        process.terminate()
        process.wait(timeout=30)
    facts = machine_facts()
    out = args.out or RESULTS / "overload.json"
    out.write_text(json.dumps({"machine": facts, **result}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, facts))
    print(json.dumps(result["checks"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
