"""The ceiling of IEI's stack on this machine: how many requests/s the issue's overhead and decode-bound
scenarios could reach if IEI added no cost of its own, next to what IEI does in the same run.

Each request carries one image; per request, the floor is the sum of the least each unavoidable part costs
on these cores. Every part is measured here, in rounds (each round measures every part in turn, so the
shared host's drift hits them alike; medians):

  - HTTP: a bare Litestar app on uvicorn (`floor_apps.py`: msgspec body, fixed vector, no decode, no model)
    under the same wrk load and body as IEI; CPU-ms per request from /proc. A bare uvicorn ASGI app is
    measured too, to show what Litestar itself costs.
  - decode: IEI's own decode + resize (`decode_payload` + `prepare_pixels`, the tiny model's spec, draft on
    as served) in this process, no IPC.
  - model: the tiny ViT through IEI's backend in process (`inprocess.py`), its best batch size.
  - client: wrk's own CPU per request (it shares the cores with the server).

ceiling = cores x 1000 / (sum of those CPU-ms). It assumes perfect packing of the cores and no cost at all
for queueing, batching, IPC, admission, metrics or headers, so no server on this stack can pass it here.

    python benchmarks/floor_bench.py                      # -> benchmarks/results/floor.{json,md}
    python benchmarks/floor_bench.py --quick --out /tmp/f # seconds-long smoke (CI)

Never asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH, GENERATED_IMAGES, RESULTS, ROOT, Server, free_port, generated_image, iei_command,
                    machine_facts, save_report, stop_servers_on_sigterm, vit_model)
from inprocess import InProcess
from wrk_load import run_wrk

from iei.preprocess.image import decode_payload, prepare_pixels
from iei.preprocess.spec import load_spec

# Issue 2's scenarios and their bars (one image per request, 64 connections, the tiny ViT).
SCENARIOS = {"overhead": ("jpeg-224", 1200, "req/s"), "decode": ("jpeg-1024x768", 300, "img/s")}
HTTP_APPS = {"uvicorn": "raw_app", "litestar": "litestar_app"}


def json_body(image: bytes) -> bytes:
    return json.dumps({"inputs": [base64.b64encode(image).decode()]}).encode()


def bare_http(app: str, body: bytes) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", f"floor_apps:{app}", "--app-dir", str(BENCH), "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", "--no-access-log"]
    return Server(f"floor-{app}", cmd, {}, port, "/embed", body, lambda r: r[0])


def iei(body: bytes) -> Server:
    port = free_port()
    cmd = iei_command(vit_model("tiny"), port, ["--backend-threads", "1"])
    return Server("floor-iei", cmd, {"PYTHONPATH": str(ROOT)}, port, "/embed", body, lambda r: r[0])


def http_run(server: Server, args) -> dict[str, float]:
    """One wrk run: req/s and CPU-ms per request of the server's process group and of wrk."""
    r = run_wrk(server, args.connections, args.duration, 1, 30)
    return {"rps": r["ok_rps"], "server_cpu_ms": 1000 * r["server_cores"] / r["ok_rps"],
            "client_cpu_ms": 1000 * r["wrk_and_bench_cores"] / r["ok_rps"], "other_cores": r["other_cores"]}


class DecodeLoop:
    """IEI's decode + resize of one base64 payload in this process (no IPC), with the tiny model's spec
    (draft on, as `iei serve` serves it)."""

    def __init__(self, image: bytes, iterations: int) -> None:
        self.spec = load_spec(str(vit_model("tiny")))
        self.payload = base64.b64encode(image).decode()
        self.out = np.empty((3, self.spec.output_height, self.spec.output_width), dtype=np.uint8)
        self.iterations = iterations
        self.once()

    def once(self) -> None:
        prepare_pixels(decode_payload(self.payload, "base64"), self.spec, self.out)

    def ms(self) -> float:
        t0 = time.perf_counter()
        for _ in range(self.iterations):
            self.once()
        return 1000 * (time.perf_counter() - t0) / self.iterations


def model_ms(worker: InProcess, args) -> float:
    """The tiny ViT through IEI's backend in process (one thread, as served here): ms per image at its
    cheapest batch size of `args.batches`."""
    rates = worker.ask(f"sweep {args.batches} {args.model_seconds} 1")
    return 1000 / max(r[0] for r in rates.values())


def measure(name: str, image: bytes, args) -> dict[str, list]:
    """Every part, in rounds: each round loads each server in turn, then times decode and model, so
    drift of the shared host hits all parts alike."""
    body = json_body(image)
    servers = {**{label: bare_http(app, body) for label, app in HTTP_APPS.items()}, "iei": iei(body)}
    worker, samples = None, {label: [] for label in [*servers, "decode_ms", "model_ms"]}
    try:
        for server in servers.values():
            server.start(timeout_s=240)
            server.check()
            run_wrk(server, args.connections, args.warmup, 1, 30)
        worker = InProcess(["--model", str(vit_model("tiny")), "--backend-threads", "1"], start_timeout=240)
        decode = DecodeLoop(image, args.decode_iterations)
        for k in range(args.rounds):
            for label, server in servers.items():
                samples[label].append(http_run(server, args))
            samples["decode_ms"].append(decode.ms())
            samples["model_ms"].append(model_ms(worker, args))
            print(f"{name} round {k + 1}: " + ", ".join(f"{label} {samples[label][-1]['rps']:.0f} req/s" for label in servers)
                  + f", decode {samples['decode_ms'][-1]:.3f} ms, model {samples['model_ms'][-1]:.3f} ms", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        if worker is not None:
            worker.close()
    samples["commands"] = {label: server.command_line() for label, server in servers.items()}
    return samples


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def scenario(name: str, args) -> dict[str, Any]:
    image_name, bar, unit = SCENARIOS[name]
    image = generated_image(image_name)
    samples = measure(name, image, args)
    http = {label: median_run(samples[label]) for label in HTTP_APPS}
    measured = median_run(samples["iei"])
    parts = {
        "http (bare Litestar)": http["litestar"]["server_cpu_ms"],
        "decode + resize (IEI's, no IPC)": round(statistics.median(samples["decode_ms"]), 3),
        "model (tiny ViT in process, best batch)": round(statistics.median(samples["model_ms"]), 3),
        "client (wrk)": http["litestar"]["client_cpu_ms"],
    }
    floor = sum(parts.values())
    cores = os.cpu_count() or 1
    no_model = floor - parts["model (tiny ViT in process, best batch)"]
    row = {
        "image": "{}x{} JPEG q90, {} bytes".format(*GENERATED_IMAGES[image_name][:2], len(image)),
        "bar": bar, "unit": unit, "http": http, "iei": measured, "parts_cpu_ms": parts,
        "floor_cpu_ms": round(floor, 3),
        "ceiling": round(cores * 1000 / floor, 1),
        "ceiling_without_model": round(cores * 1000 / no_model, 1),
        "iei_share_of_ceiling": round(measured["rps"] * floor / (cores * 1000), 3),
        # what the bar leaves per request for everything the floor leaves out (negative: out of reach)
        "budget_at_bar_cpu_ms": round(cores * 1000 / bar - floor, 3),
        "iei_glue_cpu_ms": round(measured["server_cpu_ms"] - floor + parts["client (wrk)"], 3),
        "samples": samples,
    }
    print(f"{name}: floor {floor:.3f} CPU-ms -> ceiling {row['ceiling']:.0f} {unit} (bar {bar}); "
          f"IEI {measured['rps']:.0f} ({measured['server_cpu_ms']} CPU-ms)", flush=True)
    return row


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m = report["meta"]
    lines = ["# The ceiling of IEI's stack on this machine", "",
             "`benchmarks/floor_bench.py`: per request (one image), the least each unavoidable part costs here, "
             "each measured on its own; their sum bounds any server built on uvicorn, Litestar and "
             "Pillow on these cores, even one that spent nothing on queueing, batching, IPC or metrics. "
             f"wrk, {report['args']['connections']} connections, runs of {report['args']['duration']:g} s, the same JSON body "
             f"for every server; {report['args']['rounds']} rounds, each measuring every part in turn (medians).", "",
             f"commit `{m['git_commit']}`{' (dirty tree)' if m['git_dirty'] else ''} · {m['cpu_model']} · "
             f"{m['cpu_cores']} cores · {m['date']}", ""]
    for name, row in report["scenarios"].items():
        unit, cores = row["unit"], m["cpu_cores"]
        lines += [f"## {name}: {row['image']}", "", "| part | CPU-ms per request |", "|---|---:|"]
        lines += [f"| {part} | {ms} |" for part, ms in row["parts_cpu_ms"].items()]
        lines += [f"| **floor (sum)** | **{row['floor_cpu_ms']}** |", "",
                  "| | rate |", "|---|---:|",
                  f"| ceiling: {cores} cores / floor | **{row['ceiling']:,.0f} {unit}** |",
                  f"| ceiling with a free model | {row['ceiling_without_model']:,.0f} {unit} |",
                  f"| issue 2's bar | {row['bar']:,} {unit}: {cores * 1000 / row['bar']:.3f} CPU-ms per request, "
                  f"{row['budget_at_bar_cpu_ms']:+.3f} ms beside the floor |",
                  f"| IEI, measured in this run | {row['iei']['rps']:,.0f} {unit} "
                  f"({row['iei']['server_cpu_ms']} server CPU-ms per request, {row['iei_glue_cpu_ms']} of them beyond "
                  f"the floor's parts; {row['iei_share_of_ceiling']:.0%} of the ceiling) |", "",
                  "Bare HTTP servers under the same load (no decode, no model):", "",
                  "| app | req/s | server CPU-ms per request | wrk CPU-ms per request |", "|---|---:|---:|---:|"]
        lines += [f"| {label} | {h['rps']:,.0f} | {h['server_cpu_ms']} | {h['client_cpu_ms']} |"
                  for label, h in row["http"].items()]
        lines.append("")
    lines += [f"- {n}" for n in report.get("notes") or []]
    lines += ["", f"Reproduce: `{report['reproduce']}`", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    stop_servers_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=8, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--rounds", type=int, default=5, help="rounds of every part, one after another (medians)")
    p.add_argument("--decode-iterations", type=int, default=300)
    p.add_argument("--batches", default="8,32", help="model batch sizes; the cheapest per image counts")
    p.add_argument("--model-seconds", type=float, default=2)
    p.add_argument("--quick", action="store_true", help="smoke: 1 run of 1 s, short loops")
    p.add_argument("--out", type=Path, default=None, help="results basename (default benchmarks/results/floor)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds, args.decode_iterations, args.model_seconds = 1, 1, 1, 5, 0.2
    if shutil.which("wrk") is None:
        p.error("wrk not found (apt-get install wrk)")
    report: dict[str, Any] = {"meta": machine_facts(), "args": vars(args) | {"out": str(args.out)},
                              "reproduce": "python " + " ".join(["benchmarks/floor_bench.py", *(argv or sys.argv[1:])])}
    report["scenarios"] = {name: scenario(name, args) for name in args.scenarios.split(",")}
    save_report(report, args.out or (None if args.quick else RESULTS / "floor"), write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
