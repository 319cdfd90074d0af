"""Soak test: N seconds at saturation with a mix of valid and invalid requests against a real
`iei serve`; reports responses by status, throughput and the resident memory (RSS) of the server and
its worker/model processes over time. Exits 1 on any 5xx, any valid request that failed, any invalid
request that was not a 4xx, or RSS still growing: the second half's peak more than `--max-rss-growth-mb`
above the first half's (after the warm-up).

    python benchmarks/soak/soak.py --model DIR --seconds 600 --json out.json --markdown out.md

Starts the server itself (on 127.0.0.1, a free port) with `--model` and any `--server-arg`s, and stops
it at the end. Linux only (RSS is read from /proc)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


# -- request mix ----------------------------------------------------------------------------------

def _jpeg(seed: int, size=(640, 480)) -> bytes:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size[0])[None, :, None]
    y = np.linspace(0, 255, size[1])[:, None, None]
    pixels = (x * rng.random(3) + y * rng.random(3) + rng.integers(0, 40, (size[1], size[0], 3))) % 256
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def request_mix() -> tuple[list[bytes], list[bytes]]:
    """(valid bodies, invalid bodies), JSON-encoded once up front."""
    b64 = [base64.b64encode(_jpeg(i)).decode() for i in range(8)]
    valid = [{"inputs": b64[i : i + n]} for i, n in ((0, 1), (1, 2), (3, 4), (7, 1))]
    truncated = base64.b64encode(_jpeg(0)[:2000]).decode()
    invalid = [
        {"inputs": ["@@ not base64 @@"]},
        {"inputs": [b64[0], truncated]},
        {"inputs": [base64.b64encode(b"plain text, not an image").decode()]},
        {"inputs": [base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'/>").decode()]},
        {"inputs": [base64.b64encode(_png_claiming(100_000, 100_000)).decode()]},
        {"inputs": []},
        {"inputs": [base64.b64encode(_jpeg(9, (8, 8))).decode()] * 65},  # over the default max_client_batch_size
        {"inputs": b64[0], "dimensions": 100_000},
    ]
    encode = lambda body: json.dumps(body).encode()  # noqa: E731
    return [encode(b) for b in valid], [encode(b) for b in invalid] + [b'{"inputs": [', b"[" * 50_000]


# -- server and memory -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "iei", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready; see {log_path}")


def stop_server(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            pass
    return pids


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# -- load ------------------------------------------------------------------------------------------

async def run_load(url: str, seconds: float, concurrency: int, invalid_share: float, server_pid: int,
                   sample_every_s: float) -> dict:
    valid, invalid = request_mix()
    statuses: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    samples: list[dict] = []
    stop_at = time.monotonic() + seconds
    started = time.monotonic()

    async def client(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while time.monotonic() < stop_at:
                bad = rng.random() < invalid_share
                body = rng.choice(invalid if bad else valid)
                try:
                    response = await http.post("/embed", content=body, headers={"content-type": "application/json"})
                except httpx.TransportError as e:
                    statuses[f"transport:{type(e).__name__}"] += 1
                    problems["transport error"] += 1
                    continue
                status = response.status_code
                statuses[str(status)] += 1
                if status >= 500:
                    problems[f"{status} {response.text[:120]}"] += 1
                elif not bad and status != 200:
                    problems[f"valid request got {status}"] += 1
                elif bad and not 400 <= status < 500:
                    problems[f"invalid request got {status}"] += 1
                if "Traceback" in response.text:
                    problems["traceback in a response"] += 1

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            tree = process_tree(server_pid)
            samples.append({"t_s": round(time.monotonic() - started, 1),
                            "server_mb": round(rss_mb(server_pid), 1),
                            "total_mb": round(sum(rss_mb(p) for p in tree), 1), "processes": len(tree)})
            await asyncio.sleep(sample_every_s)

    await asyncio.gather(sampler(), *(client(i) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    return {"statuses": dict(sorted(statuses.items())), "problems": dict(problems), "elapsed_s": round(elapsed, 1),
            "requests_per_s": round(sum(statuses.values()) / elapsed, 1), "rss": samples}


def rss_growth(samples: list[dict], warmup_s: float) -> dict:
    """Growth after the warm-up, and the leak check: how far the second half of the run rose above the
    first half's peak. The model process's heap grows in steps until batches of every size have been
    seen, then stays flat (benchmarks/results/soak_rss.md); a leak keeps rising into the second half."""
    steady = [s for s in samples if s["t_s"] >= warmup_s] or samples[-1:]
    first, last = steady[0], steady[-1]
    half = len(steady) // 2
    early_peak = max(s["total_mb"] for s in steady[:half]) if half else first["total_mb"]
    return {"baseline_total_mb": first["total_mb"], "final_total_mb": last["total_mb"],
            "max_total_mb": max(s["total_mb"] for s in steady),
            "growth_total_mb": round(last["total_mb"] - first["total_mb"], 1),
            "growth_server_mb": round(last["server_mb"] - first["server_mb"], 1),
            "late_growth_total_mb": round(max(s["total_mb"] for s in steady[half:]) - early_peak, 1)}


def markdown(report: dict) -> str:
    growth = report["rss_growth"]
    lines = [
        f"# Soak: {report['seconds']} s, {report['concurrency']} clients, {report['invalid_share']:.0%} invalid",
        "", f"model `{report['model']}`, server args `{' '.join(report['server_args'])}`; "
        f"{report['requests_per_s']} requests/s; server exit code {report['exit_code']}", "",
        "| status | responses |", "|---|---:|",
        *(f"| {status} | {count} |" for status, count in report["statuses"].items()),
        "", f"RSS of the server and its children after {report['warmup_s']} s warm-up: "
        f"{growth['baseline_total_mb']} MB -> {growth['final_total_mb']} MB (max {growth['max_total_mb']} MB; "
        f"growth {growth['growth_total_mb']} MB, of which the HTTP process {growth['growth_server_mb']} MB). "
        f"Leak check: the second half's peak is {growth['late_growth_total_mb']} MB above the first half's "
        f"(bound {report['max_rss_growth_mb']} MB).", "",
        "| t (s) | server MB | total MB |", "|---:|---:|---:|",
        *(f"| {s['t_s']} | {s['server_mb']} | {s['total_mb']} |" for s in report["rss"][:: max(1, len(report["rss"]) // 20)]),
        "", "Problems: " + (", ".join(f"{k} x{v}" for k, v in report["problems"].items()) or "none"), "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model id or folder for `iei serve --model`")
    parser.add_argument("--server-arg", action="append", default=[], help="extra `iei serve` argument (repeatable)")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--invalid-share", type=float, default=0.25)
    parser.add_argument("--warmup-s", type=float, default=15, help="RSS growth is measured after this")
    parser.add_argument("--sample-every-s", type=float, default=2)
    parser.add_argument("--max-rss-growth-mb", type=float, default=64,
                        help="most the second half's RSS peak may exceed the first half's (a leak)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--log", type=Path, default=ROOT / "benchmarks" / ".cache" / "logs" / "soak-server.log",
                        help="the server's own log (default under the gitignored benchmarks/.cache)")
    args = parser.parse_args()

    process, url = start_server(args.model, args.server_arg, args.log)
    try:
        result = asyncio.run(run_load(url, args.seconds, args.concurrency, args.invalid_share, process.pid,
                                      args.sample_every_s))
    finally:
        exit_code = stop_server(process)
    report = {"model": args.model, "server_args": args.server_arg, "seconds": args.seconds,
              "concurrency": args.concurrency, "invalid_share": args.invalid_share, "warmup_s": args.warmup_s,
              "max_rss_growth_mb": args.max_rss_growth_mb, "exit_code": exit_code, **result,
              "rss_growth": rss_growth(result["rss"], args.warmup_s)}
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.markdown:
        args.markdown.write_text(text)
    failed = bool(report["problems"]) or exit_code != 0 or report["rss_growth"]["late_growth_total_mb"] > args.max_rss_growth_mb
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
