"""Async load generator for any server speaking IEI's `/embed` contract (docs/api.md).

Closed loop: N clients, each sending its next request as soon as the last one answered, for each
N of a sweep. Open loop: requests start at Poisson arrival times of a given rate, whatever the
answers do (latency then includes the queueing the server causes). Bodies are encoded once, before
the clock starts, and one aiohttp session is reused, so the generator stays cheap.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000/embed --concurrency 1,4,16,64 --duration 10
    python benchmarks/loadgen.py --url ... --rate 50,100,200 --image jpeg-1024x768 --mode multipart
    python benchmarks/loadgen.py --url ... --images-dir photos/ --images-per-request 8 --out /tmp/run.json

Per level: images/s and requests/s (2xx only), latency p50/p90/p99/max, errors by status, and the
server's stage times (x-preprocess-time, x-queue-time, x-inference-time) when it sends them.
Targets must be loopback unless --allow-remote. Never asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import ipaddress
import json
import socket
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GENERATED_IMAGES, generated_image

MODES = ("json", "multipart", "raw")
STAGE_HEADERS = {"preprocess": "x-preprocess-time", "queue": "x-queue-time", "inference": "x-inference-time"}
MAX_DURATION_S = 600  # a level never runs longer, whatever is asked


@dataclass(frozen=True)
class Payload:
    """One pre-encoded request: body bytes, its content type and how many images it carries."""

    body: bytes
    content_type: str
    images: int


def _sniff_type(image: bytes) -> str:
    return "image/png" if image.startswith(b"\x89PNG") else "image/jpeg"


def encode_request(images: list[bytes], mode: str) -> Payload:
    """A request body carrying `images` in one of MODES (raw takes exactly one image)."""
    if mode == "json":
        body = json.dumps({"inputs": [base64.b64encode(i).decode() for i in images]}).encode()
        return Payload(body, "application/json", len(images))
    if mode == "multipart":
        boundary = uuid.uuid4().hex
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{n}\"\r\n"
                 f"Content-Type: {_sniff_type(i)}\r\n\r\n".encode() + i + b"\r\n" for n, i in enumerate(images)]
        return Payload(b"".join(parts) + f"--{boundary}--\r\n".encode(),
                       f"multipart/form-data; boundary={boundary}", len(images))
    if mode == "raw":
        if len(images) != 1:
            raise ValueError("raw mode sends one image per request")
        return Payload(images[0], _sniff_type(images[0]), 1)
    raise ValueError(f"unknown mode {mode!r}")


def build_payloads(images: list[bytes], mode: str, per_request: int, count: int = 16) -> list[Payload]:
    """Up to `count` distinct bodies cycling through `images`, `per_request` images each."""
    count = max(1, min(count, len(images)))
    return [encode_request([images[(k * per_request + j) % len(images)] for j in range(per_request)], mode)
            for k in range(count)]


def load_images(image: str | None, images_dir: Path | None) -> list[bytes]:
    if images_dir is not None:
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
        if not files:
            raise SystemExit(f"no .jpg/.jpeg/.png/.webp files in {images_dir}")
        return [p.read_bytes() for p in files]
    return [generated_image(image or "jpeg-224")]


def check_loopback(url: str) -> None:
    """Raise ValueError unless every address `url`'s host resolves to is loopback."""
    host = urlsplit(url).hostname or ""
    addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    remote = [a for a in addresses if not ipaddress.ip_address(a.split("%")[0]).is_loopback]
    if remote or not addresses:
        raise ValueError(f"{url}: {host} is not loopback ({', '.join(remote) or 'unresolved'}); "
                         "pass --allow-remote to load another machine")


@dataclass
class Recorder:
    """Outcomes of one level, written only by the event loop that runs it."""

    latencies: list[float] = field(default_factory=list)  # seconds, 2xx only
    stages: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in STAGE_HEADERS})
    statuses: Counter = field(default_factory=Counter)
    ok_images: int = 0

    def add(self, status: int, latency: float, headers, images: int) -> None:
        self.statuses[str(status)] += 1
        if 200 <= status < 300:
            self.latencies.append(latency)
            self.ok_images += images
            for stage, name in STAGE_HEADERS.items():
                value = headers.get(name)
                if value is not None:
                    self.stages[stage].append(float(value))

    def summary(self, seconds: float) -> dict[str, Any]:
        ms = np.asarray(self.latencies) * 1e3
        pct = (lambda q: round(float(np.percentile(ms, q)), 2)) if len(ms) else (lambda q: None)
        stages = {k: round(float(np.median(v)), 3) for k, v in self.stages.items() if v}
        return {
            "seconds": round(seconds, 3), "ok_requests": len(ms), "requests": sum(self.statuses.values()),
            "img_per_s": round(self.ok_images / seconds, 2), "req_per_s": round(len(ms) / seconds, 2),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(float(ms.max()), 2) if len(ms) else None,
            "statuses": dict(self.statuses), "errors": {k: v for k, v in self.statuses.items() if not k.startswith("2")},
            "stage_median_ms": stages,
        }


async def _send(session: aiohttp.ClientSession, url: str, payload: Payload, rec: Recorder) -> None:
    t0 = time.perf_counter()
    try:
        async with session.post(url, data=payload.body, headers={"Content-Type": payload.content_type}) as resp:
            await resp.read()
            rec.add(resp.status, time.perf_counter() - t0, resp.headers, payload.images)
    except (TimeoutError, aiohttp.ClientError) as e:
        rec.statuses[type(e).__name__] += 1


def _session(connections: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                 skip_auto_headers=("User-Agent",))


async def closed_loop(url: str, payloads: list[Payload], concurrency: int, duration_s: float,
                      max_requests: int, timeout_s: float = 60) -> dict[str, Any]:
    """`concurrency` clients back to back for duration_s (or max_requests started, whichever first)."""
    rec, started = Recorder(), 0
    async with _session(concurrency, timeout_s) as session:
        deadline = time.perf_counter() + min(duration_s, MAX_DURATION_S)

        async def client(k: int) -> None:
            nonlocal started
            while time.perf_counter() < deadline and started < max_requests:
                started += 1
                await _send(session, url, payloads[(k + started) % len(payloads)], rec)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        result = rec.summary(time.perf_counter() - t0)
    return {"concurrency": concurrency, **result}


async def open_loop(url: str, payloads: list[Payload], rate: float, duration_s: float, max_requests: int,
                    timeout_s: float = 60, max_in_flight: int = 1024, seed: int = 0) -> dict[str, Any]:
    """Requests started at Poisson arrivals of `rate`/s for duration_s; waits for those in flight."""
    rec, rng, tasks = Recorder(), np.random.default_rng(seed), set()
    async with _session(max_in_flight, timeout_s) as session:
        t0 = time.perf_counter()
        next_at, n = t0, 0
        while n < max_requests and next_at - t0 < min(duration_s, MAX_DURATION_S):
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) >= max_in_flight:
                rec.statuses["client_saturated"] += 1
            else:
                task = asyncio.create_task(_send(session, url, payloads[n % len(payloads)], rec))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            n += 1
            next_at += rng.exponential(1 / rate)
        if tasks:
            await asyncio.wait(tasks)
        result = rec.summary(time.perf_counter() - t0)
    return {"rate": rate, **result}


def run_level(url: str, payloads: list[Payload], *, concurrency: int | None = None, rate: float | None = None,
              duration_s: float = 10, max_requests: int = 1_000_000, timeout_s: float = 60) -> dict[str, Any]:
    """One closed-loop (concurrency) or open-loop (rate) level, run to completion on a fresh event loop."""
    if concurrency is not None:
        return asyncio.run(closed_loop(url, payloads, concurrency, duration_s, max_requests, timeout_s))
    return asyncio.run(open_loop(url, payloads, rate, duration_s, max_requests, timeout_s))


def format_level(r: dict[str, Any]) -> str:
    level = f"c={r['concurrency']}" if "concurrency" in r else f"rate={r['rate']:g}/s"
    stages = " ".join(f"{k} {v:.2f}" for k, v in r["stage_median_ms"].items())
    return (f"{level:>10}  {r['img_per_s']:8.1f} img/s {r['req_per_s']:8.1f} req/s  p50 {r['p50_ms']} "
            f"p90 {r['p90_ms']} p99 {r['p99_ms']} max {r['max_ms']} ms  errors {r['errors'] or 0}"
            + (f"  server ms: {stages}" if stages else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the /embed URL, e.g. http://127.0.0.1:8000/embed")
    p.add_argument("--concurrency", default=None, help="closed loop: comma list of client counts (default 1,4,16,64,256)")
    p.add_argument("--rate", default=None, help="open loop: comma list of Poisson arrival rates, requests/s")
    p.add_argument("--duration", type=float, default=10, help=f"seconds per level (at most {MAX_DURATION_S})")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unrecorded load before the first level")
    p.add_argument("--max-requests", type=int, default=200_000, help="most requests started per level")
    p.add_argument("--timeout", type=float, default=60, help="seconds per request")
    p.add_argument("--image", choices=sorted(GENERATED_IMAGES), default="jpeg-224", help="generated image kind")
    p.add_argument("--images-dir", type=Path, default=None, help="send these images instead (jpg/png/webp)")
    p.add_argument("--images-per-request", type=int, default=1)
    p.add_argument("--mode", choices=MODES, default="json", help="JSON base64, multipart, or raw body")
    p.add_argument("--allow-remote", action="store_true", help="allow a target that is not loopback")
    p.add_argument("--out", type=Path, default=None, help="write the levels as JSON here")
    args = p.parse_args(argv)
    if args.concurrency is None and args.rate is None:
        args.concurrency = "1,4,16,64,256"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.allow_remote:
        try:
            check_loopback(args.url)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    payloads = build_payloads(load_images(args.image, args.images_dir), args.mode, args.images_per_request)
    if args.warmup > 0:
        run_level(args.url, payloads, concurrency=4, duration_s=args.warmup, timeout_s=args.timeout)
    levels = []
    for c in (args.concurrency or "").split(","):
        if c.strip():
            levels.append(run_level(args.url, payloads, concurrency=int(c), duration_s=args.duration,
                                    max_requests=args.max_requests, timeout_s=args.timeout))
            print(format_level(levels[-1]), flush=True)
    for r in (args.rate or "").split(","):
        if r.strip():
            levels.append(run_level(args.url, payloads, rate=float(r), duration_s=args.duration,
                                    max_requests=args.max_requests, timeout_s=args.timeout))
            print(format_level(levels[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"url": args.url, "mode": args.mode, "levels": levels}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
