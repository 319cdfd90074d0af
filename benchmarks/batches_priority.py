"""Online latency while a background batch job runs: does /embed's p99 stay within 1.5x of its p99
with no job?

Open-loop online load (one 256x256 JPEG per /embed request at a fixed rate) in alternating rounds:
no job, then a job (path inputs, big enough to run through the whole round: submitted, measured once
it has started, then cancelled), repeated. Alternating rounds keep the two phases under the same
background noise on a shared machine. Reported: p50/p99 per round and pooled per phase, the median
of the per-round p99s, the job's images/s, and whether the strict check (median job p99 <= 1.5 x
median no-job p99) holds.

    python benchmarks/batches_priority.py                 # starts a tiny-ViT server -> results/batches_priority.{json,md}
    python benchmarks/batches_priority.py --url http://127.0.0.1:8000 --input-root DIR --out x.json
        # an existing server started with --batch-input-root DIR (the test suite does this)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    RESULTS,
    Server,
    free_port,
    iei_command,
    machine_facts,
    synthetic_photo,
    vit_model,
)

STRICT_RATIO = 1.5
JOB_IMAGES = 20  # distinct files the job cycles through


def write_job_images(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(JOB_IMAGES):
        path = root / f"priority-{i}.jpg"
        if not path.exists():
            path.write_bytes(synthetic_photo(256, 256, seed=100 + i))


def job_body(lines: int) -> bytes:
    return "".join(json.dumps({"path": f"priority-{i % JOB_IMAGES}.jpg"}) + "\n" for i in range(lines)).encode()


async def online_round(client: httpx.AsyncClient, body: dict, rate: float, seconds: float) -> list[float]:
    """Requests at `rate`/s for `seconds` (open loop: a slow answer does not delay the next request);
    returns each request's latency in ms."""
    latencies: list[float] = []

    async def one() -> None:
        start = time.perf_counter()
        response = await client.post("/embed", json=body)
        response.raise_for_status()
        latencies.append((time.perf_counter() - start) * 1000)

    tasks, start, sent = [], time.perf_counter(), 0
    while time.perf_counter() < start + seconds:
        delay = start + sent / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one()))
        sent += 1
    await asyncio.gather(*tasks)
    return latencies


async def job_round(client: httpx.AsyncClient, body: dict, rate: float, seconds: float, lines: int) -> dict[str, Any]:
    response = await client.post("/batches", content=job_body(lines), headers={"content-type": "application/jsonl"})
    if response.status_code != 202:
        raise RuntimeError(f"the job was refused: {response.status_code} {response.text}")
    path = f"/batches/{response.json()['id']}"
    while (status := (await client.get(path)).json())["progress"]["done"] == 0:
        await asyncio.sleep(0.02)
    done_before, start = status["progress"]["done"], time.perf_counter()
    latencies = await online_round(client, body, rate, seconds)
    status = (await client.get(path)).json()
    elapsed = time.perf_counter() - start
    await client.delete(path)
    return {"latencies": latencies, "job_status_at_end": status["status"],
            "job_img_per_s": round((status["progress"]["done"] - done_before) / elapsed, 1)}


def p(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


async def measure(url: str, api_key: str | None, rounds: int, round_s: float, rate: float,
                  job_lines: int) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"inputs": [base64.b64encode(synthetic_photo(256, 256, seed=1)).decode()]}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        await online_round(client, body, rate, 1.0)  # warm-up
        no_job, with_job = [], []
        for _ in range(rounds):
            no_job.append({"latencies": await online_round(client, body, rate, round_s)})
            with_job.append(await job_round(client, body, rate, round_s, job_lines))
            await asyncio.sleep(0.3)  # let the cancelled job's last images drain
    return summarise(no_job, with_job, rate, round_s)


def summarise(no_job: list[dict], with_job: list[dict], rate: float, round_s: float) -> dict[str, Any]:
    def phase(rounds: list[dict]) -> dict[str, Any]:
        pooled = [x for r in rounds for x in r["latencies"]]
        round_p99 = [p(r["latencies"], 99) for r in rounds]
        return {"requests": len(pooled), "pooled_p50_ms": p(pooled, 50), "pooled_p99_ms": p(pooled, 99),
                "round_p50_ms": [p(r["latencies"], 50) for r in rounds], "round_p99_ms": round_p99,
                "median_round_p99_ms": round(statistics.median(round_p99), 2)}

    result = {"rate_per_s": rate, "round_s": round_s, "rounds": len(no_job), "no_job": phase(no_job),
              "with_job": phase(with_job), "job_img_per_s": [r["job_img_per_s"] for r in with_job],
              "job_running_throughout": all(r["job_status_at_end"] == "running" for r in with_job)}
    result["p99_ratio"] = round(result["with_job"]["median_round_p99_ms"] / result["no_job"]["median_round_p99_ms"], 3)
    result["pooled_p99_ratio"] = round(result["with_job"]["pooled_p99_ms"] / result["no_job"]["pooled_p99_ms"], 3)
    result["strict_check_passed"] = result["p99_ratio"] <= STRICT_RATIO
    return result


def markdown(result: dict[str, Any], facts: dict[str, Any], command: str) -> str:
    rows = [f"| {i + 1} | {a} | {b} | {c} | {d} | {j} |" for i, (a, b, c, d, j) in enumerate(zip(
        result["no_job"]["round_p50_ms"], result["no_job"]["round_p99_ms"], result["with_job"]["round_p50_ms"],
        result["with_job"]["round_p99_ms"], result["job_img_per_s"]))]
    verdict = "holds" if result["strict_check_passed"] else "does NOT hold"
    return "\n".join([
        "# Online latency while a batch job runs",
        "",
        (f"Commit {facts['git_commit']}, {facts['cpu_model']}, {facts['cpu_cores']} cores, {facts['date']}, load "
        f"average at start {facts['loadavg_at_start'][0]:.2f}. Tiny random ViT, one 256x256 JPEG per /embed request, "
        f"{result['rate_per_s']:g} requests/s open loop, {result['rounds']} alternating rounds of {result['round_s']:g} s "
        "per phase; the job embeds 256x256 JPEGs from --batch-input-root. Generated by "
        "`benchmarks/batches_priority.py`."),
        "",
        "| round | no job p50 (ms) | no job p99 (ms) | job p50 (ms) | job p99 (ms) | job images/s |",
        "|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        (f"Median of per-round p99: no job {result['no_job']['median_round_p99_ms']} ms, with the job "
        f"{result['with_job']['median_round_p99_ms']} ms: ratio {result['p99_ratio']} (pooled p99 ratio "
        f"{result['pooled_p99_ratio']}). The strict check (ratio <= {STRICT_RATIO}) {verdict}. The job ran through "
        f"every round: {result['job_running_throughout']}."),
        "",
        f"Server: `{command}`",
        "",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an existing server (started with --batch-input-root INPUT_ROOT)")
    parser.add_argument("--input-root", help="that server's --batch-input-root (job images are written there)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--round-s", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=40.0, help="online requests per second")
    parser.add_argument("--job-lines", type=int, default=20_000, help="inputs per job (enough to outlast a round)")
    parser.add_argument("--out", type=Path, help="JSON output (default with a started server: results/batches_priority.json)")
    args = parser.parse_args()
    if args.url:
        if not args.input_root:
            parser.error("--url needs --input-root")
        write_job_images(Path(args.input_root))
        result = asyncio.run(measure(args.url, args.api_key, args.rounds, args.round_s, args.rate, args.job_lines))
        command = None
    else:
        root = CACHE / "batch-inputs"
        write_job_images(root)
        port = free_port()
        flags = ["--preprocess-workers", "2", "--backend-threads", "1", "--max-batch-delay-ms", "5",
                 "--batch-input-root", str(root), "--batch-db", str(CACHE / f"batches-{port}.sqlite3")]
        server = Server("iei-batches", iei_command(vit_model("tiny"), port, flags), {}, port, "/embed", b"", None)
        server.start(timeout_s=180)
        try:
            result = asyncio.run(measure(f"http://127.0.0.1:{port}", None, args.rounds, args.round_s, args.rate,
                                         args.job_lines))
        finally:
            server.stop()
        command = server.command_line()
    facts = machine_facts()
    report = {"machine": facts, "server_command": command, **result}
    out = args.out or (None if args.url else RESULTS / "batches_priority.json")
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
        if not args.url:
            out.with_suffix(".md").write_text(markdown(result, facts, command or ""))
    print(json.dumps({k: result[k] for k in ("p99_ratio", "pooled_p99_ratio", "strict_check_passed",
                                             "job_running_throughout", "job_img_per_s")}))
    print(f"no job: {result['no_job']['round_p99_ms']} ms p99 per round; with job: {result['with_job']['round_p99_ms']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
