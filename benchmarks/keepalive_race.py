"""The keep-alive race behind the front-end balance test's one `httpx.ReadError`, provoked.

64 clients (one connection each) against `iei serve --http-workers 3` go idle for about uvicorn's
`timeout_keep_alive` (5 s) between requests, then reuse their connection; the control idles 3 s. Prints the
outcomes of each (status codes, or the transport error and its cause). Uses the test suite's tiny ViT and
server helpers. Results: `benchmarks/results/frontends_link.md`.

Run from the repository root: `python benchmarks/keepalive_race.py`."""

from __future__ import annotations

import asyncio
import collections
import random
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.e2e.test_concurrency import distinct_images  # noqa: E402
from tests.model_factory import make_tiny_model  # noqa: E402
from tests.server_process import running_server  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "keepalive-race"


async def trial(url: str, body: bytes, idle_s: tuple[float, float], rounds: int) -> collections.Counter:
    outcomes: collections.Counter = collections.Counter()

    async def one_client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as client:
            for _ in range(rounds):
                try:
                    response = await client.post("/embed", content=body, headers={"content-type": "image/png"})
                    outcomes[response.status_code] += 1
                except httpx.TransportError as e:
                    outcomes[f"{type(e).__name__}({type(e.__cause__ or e.__context__).__name__})"] += 1
                await asyncio.sleep(random.uniform(*idle_s))

    await asyncio.gather(*(one_client() for _ in range(64)))
    return outcomes


def main() -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    model = CACHE / "vit" if (CACHE / "vit").exists() else make_tiny_model("vit", CACHE)
    body = distinct_images(1)[0]
    with running_server("--model", str(model), "--http-workers", "3", "--preprocess-workers", "2",
                        "--backend-threads", "1", "--max-batch-delay-ms", "5", log_dir=CACHE) as server:
        for idle_s in [(2.9, 3.1), (4.97, 5.03)]:
            started = time.monotonic()
            outcomes = asyncio.run(trial(server.url, body, idle_s, 5))
            print(f"idle {idle_s[0]}-{idle_s[1]} s: {dict(outcomes)} ({time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
