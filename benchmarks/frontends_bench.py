"""HTTP front ends: CPU-ms per request of the front-end tier and throughput with `--http-workers 1` vs `2`, side
by side, and a stage-cost model projecting N = 1..8 front ends on a 16-core GPU host.

The overhead case: tiny random ViT (model time ~0, `--backend-threads 1`), one 224x224 JPEG per request
(JSON base64), wrk with 64 connections on 127.0.0.1. Both servers run at once (an idle one costs nothing);
the rounds alternate N = 1 and N = 2 and the medians of the rounds are reported. CPU from /proc (utime +
stime) of each server process over each run, by role:

  engine     the process `iei serve` started: with N = 1 the whole HTTP server, with N > 1 the engine
             (admission, pool, batcher, link to the front ends, metrics)
  frontends  the HTTP front-end processes (N > 1 only): uvicorn, Litestar, JSON, base64, the engine link
  preprocess the decode workers;  model  the model process;  other  resource tracker, fork server

The front-end tier is engine + frontends. On 2 cores no gain is expected from N = 2; the question is
what it costs per request. The projection (`project`) takes the per-request costs measured here (and, scaled,
the 16-core H100 host's measured N = 1 rate from benchmarks/results/gpu_check.md) and computes, for each N,
the least of: N front ends' capacity, the one engine loop's capacity, the cores left for decoding, and
the GPU's in-process rate.

    python benchmarks/frontends_bench.py                 # -> benchmarks/results/frontends.{json,md}
    python benchmarks/frontends_bench.py --quick --out /tmp/f   # seconds-long smoke (CI)

Never asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (a sibling module, not a package)
    GENERATED_IMAGES, RESULTS, ROOT, Server, cpu_seconds_by_role, free_port, generated_image, iei_command,
    machine_facts, save_report, server_process_roles, stop_servers_on_sigterm, vit_model,
)
from wrk_load import run_wrk  # noqa: E402

ROLES = ("engine", "frontends", "preprocess", "model", "other")
GPU_HOST = {"cores": 16, "n1_req_per_s": 1451.34, "gpu_img_per_s": 7795.1,  # benchmarks/results/gpu_check.md
            "preprocess_workers": 13}


def process_roles(server_pid: int) -> dict[int, str]:
    return server_process_roles(server_pid, server_role="engine", spawned_role="frontends")


def cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    return cpu_seconds_by_role(pids, ROLES)


def measured_run(server: Server, args) -> dict[str, Any]:
    roles = process_roles(server.process.pid)  # type: ignore[union-attr]  (again each run: a front end may be new)
    before = cpu_seconds(roles)
    r = run_wrk(server, args.connections, args.duration, args.wrk_threads, 30)
    after = cpu_seconds(roles)
    requests = r["ok_rps"] * r["seconds"]
    r["cpu_ms_per_request"] = {role: round(1000 * (after[role] - before[role]) / requests, 4) if requests else None
                               for role in ROLES}
    per = r["cpu_ms_per_request"]
    per["frontend_tier"] = round((per["engine"] or 0) + (per["frontends"] or 0), 4)
    per["total"] = round(sum(per[role] or 0 for role in ROLES), 4)
    return r


def project(n1: dict[str, float], n2: dict[str, float], cores: int, scale: float, gpu_img_per_s: float,
            workers: int, max_n: int = 8) -> list[dict[str, Any]]:
    """req/s for N = 1..max_n front ends on a host with `cores` cores and a GPU model, from CPU-ms per request
    (medians measured here, multiplied by `scale`, the host's speed relative to this one):
    - N = 1: one process does HTTP and engine work: at most 1000 / (engine cost at N = 1) req/s;
    - N > 1: each front end at most 1000 / frontends_ms * N, the one engine loop at most 1000 / engine_ms
      (both measured at N = 2: the engine's share no longer includes HTTP);
    - decoding: `workers` decode processes, each at most 1000 / preprocess_ms;
    - all CPU work together within `cores`; the GPU at most its in-process rate."""
    rows = []
    for n in range(1, max_n + 1):
        if n == 1:
            limits = {"http + engine loop (one process)": 1000 / (scale * n1["engine"])}
            cpu = n1["engine"] + n1["preprocess"] + n1["model"]
        else:
            limits = {f"{n} front ends": n * 1000 / (scale * n2["frontends"]),
                      "engine loop": 1000 / (scale * n2["engine"])}
            cpu = n2["engine"] + n2["frontends"] + n2["preprocess"] + n2["model"]
        limits["decoding"] = workers * 1000 / (scale * n1["preprocess"])
        limits["all CPU work"] = cores * 1000 / (scale * cpu)
        limits["GPU"] = gpu_img_per_s
        wall = min(limits, key=limits.get)
        rows.append({"n": n, "req_per_s": round(limits[wall]), "limited_by": wall,
                     "limits": {k: round(v) for k, v in limits.items()}})
    return rows


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m, med = report["meta"], report["median"]
    lines = ["# HTTP front ends: CPU per request and throughput, N = 1 vs N = 2", "",
             "`benchmarks/frontends_bench.py`: tiny random ViT (`--backend-threads 1`), "
             f"{report['image']}, one image per request (JSON base64), wrk with {report['args']['connections']} "
             f"connections on 127.0.0.1; {report['args']['rounds']} alternating rounds of {report['args']['duration']:g} s "
             "per server, medians. CPU from /proc (utime + stime per server process) over each run.", "",
             f"commit `{m['git_commit']}`{' (dirty tree)' if m['git_dirty'] else ''} · {m['cpu_model']} · "
             f"{m['cpu_cores']} cores · {m['date']}", "",
             "| | N = 1 | N = 2 |", "|---|---:|---:|"]
    for key, label in (("ok_rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")):
        lines.append(f"| {label} | {med['1'][key]:,} | {med['2'][key]:,} |")
    for role in (*ROLES, "frontend_tier", "total"):
        lines.append(f"| CPU-ms/request: {role} | {med['1']['cpu_ms_per_request'][role]} | "
                     f"{med['2']['cpu_ms_per_request'][role]} |")
    others = [r["other_cores"] for runs in report["runs"].values() for r in runs]
    one, two = med["1"]["cpu_ms_per_request"], med["2"]["cpu_ms_per_request"]
    change = 100 * (two["frontend_tier"] / one["frontend_tier"] - 1) if one["frontend_tier"] else 0.0
    lines += ["", f"Other processes on the machine used up to {max(others):.2f} cores during the runs.", "",
              f"The front-end tier costs {two['frontend_tier']} CPU-ms per request with N = 2 against "
              f"{one['frontend_tier']} with N = 1 ({change:+.0f} %): the engine link's price (each request crosses "
              "one more process boundary: an `EmbedCall` and an `EmbedDone` frame, a report for /metrics, and one "
              "more copy of the payload). Of it, the one engine loop keeps "
              f"{two['engine']} CPU-ms per request, the part that does not spread over front ends: with N > 1 "
              "it is the next wall (the projection below).", "",
              "## Projection: 16-core host with a GPU model", "",
              report["projection_note"], "",
              "| N | req/s (costs as measured here) | limited by | req/s (scaled to the H100 host) | limited by |",
              "|---:|---:|---|---:|---|"]
    for here, there in zip(report["projection"]["as_measured"], report["projection"]["scaled"]):
        lines.append(f"| {here['n']} | {here['req_per_s']:,} | {here['limited_by']} | {there['req_per_s']:,} | "
                     f"{there['limited_by']} |")
    lines += ["", f"Reproduce: `{report['reproduce']}`", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    stop_servers_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke: 1 round of 1 s")
    p.add_argument("--out", type=Path, default=None, help="results basename (default benchmarks/results/frontends)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 1, 1, 1  # wrk takes whole seconds
    if shutil.which("wrk") is None:
        p.error("wrk not found (apt-get install wrk)")
    image = generated_image("jpeg-224")
    body = json.dumps({"inputs": [base64.b64encode(image).decode()]}).encode()
    servers = {}
    for n in (1, 2):
        port = free_port()
        servers[str(n)] = Server(f"frontends-{n}", iei_command(vit_model("tiny"), port, [
            "--backend-threads", "1", "--http-workers", str(n)]), {"PYTHONPATH": str(ROOT)}, port, "/embed", body,
            lambda r: r[0])
    report: dict[str, Any] = {
        "meta": machine_facts(), "args": vars(args) | {"out": str(args.out)},
        "image": "{}x{} JPEG q90, {} bytes".format(*GENERATED_IMAGES["jpeg-224"][:2], len(image)),
        "commands": {n: s.command_line() for n, s in servers.items()},
        "reproduce": "python " + " ".join(["benchmarks/frontends_bench.py", *(argv or sys.argv[1:])]),
        "runs": {"1": [], "2": []}}
    try:
        for server in servers.values():
            server.start(timeout_s=240)
            server.check()
            report.setdefault("roles", {})[server.name] = Counter(process_roles(server.process.pid).values())
            run_wrk(server, args.connections, args.warmup, args.wrk_threads, 30)
        for k in range(args.rounds):
            for n, server in servers.items():
                r = measured_run(server, args)
                report["runs"][n].append(r)
                print(f"round {k + 1} N={n}: {r['ok_rps']:.0f} req/s p99 {r['p99_ms']} ms, CPU-ms/request "
                      f"{r['cpu_ms_per_request']} (other processes {r['other_cores']} cores)", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    report["median"] = {}
    for n, runs in report["runs"].items():
        med = {k: statistics.median(r[k] for r in runs) for k in ("ok_rps", "p50_ms", "p99_ms")}
        med["cpu_ms_per_request"] = {role: round(statistics.median(r["cpu_ms_per_request"][role] or 0 for r in runs), 4)
                                     for role in (*ROLES, "frontend_tier", "total")}
        report["median"][n] = med
    n1, n2 = report["median"]["1"]["cpu_ms_per_request"], report["median"]["2"]["cpu_ms_per_request"]
    scale = (1000 / GPU_HOST["n1_req_per_s"]) / n1["engine"] if n1["engine"] else 1.0
    gpu = GPU_HOST["gpu_img_per_s"]
    report["projection"] = {
        "as_measured": project(n1, n2, GPU_HOST["cores"], 1.0, gpu, GPU_HOST["preprocess_workers"]),
        "scaled": project(n1, n2, GPU_HOST["cores"], scale, gpu, GPU_HOST["preprocess_workers"]),
        "scale": round(scale, 3)}
    report["projection_note"] = (
        f"Stage costs measured here (medians above). 'Scaled': every cost multiplied by {scale:.3f}, so that N = 1 "
        f"gives the {GPU_HOST['n1_req_per_s']:,} req/s measured on the 16-core H100 host (gpu_check.md; its single "
        "HTTP process was the wall there). Limits: N front ends (front-end CPU-ms at N = 2), the one engine loop "
        f"(engine CPU-ms at N = 2), {GPU_HOST['preprocess_workers']} decode workers, all CPU work within "
        f"{GPU_HOST['cores']} cores, and the GPU's in-process fp16 rate ({gpu:,} img/s). The model process's CPU "
        "cost measured here (tiny model on the CPU) stands in for the GPU host's per-batch launch work.")
    save_report(report, args.out or (None if args.quick else RESULTS / "frontends"), write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
