"""A/B serving benchmark: the same `iei serve` scenario with two sets of flags, interleaved A, B, A, B, ...

The host is shared (other work comes and goes), so the two variants are measured in alternating rounds,
each round a fresh server per variant (start, check a vector, warm-up wrk run, one measured wrk run, stop),
and the medians over rounds are compared. Scenarios are `serving_bench.py`'s:

  compute   vit-base-shaped random ViT, 1024x768 JPEG q90, 16 connections -> images/s
  decode    tiny random ViT, 1024x768 JPEG q90, 64 connections, --backend-threads 1 -> images/s

    python benchmarks/ab_bench.py --scenario compute --a "--dtype float32" --b "--dtype auto" --out benchmarks/results/precision
    python benchmarks/ab_bench.py --quick          # seconds: tiny model, one short round; writes only with --out

Each variant's /info `model_dtype` and `model_dtype_reason` are recorded. Never asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (a sibling module, not a package)
    RESULTS, Server, free_port, iei_command, image_file, machine_facts, save_report, stop_servers_on_sigterm, vit_model,
)
from serving_bench import SCENARIOS  # noqa: E402
from wrk_load import run_wrk  # noqa: E402


def make_iei(kind: str, image: Path, flags: list[str]) -> Server:
    port = free_port()
    body = json.dumps({"inputs": [base64.b64encode(image.read_bytes()).decode()]}).encode()
    return Server("iei", iei_command(vit_model(kind), port, flags), {}, port, "/embed", body, lambda r: r[0])


def info_of(server: Server) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/info", timeout=10) as resp:
        info = json.loads(resp.read())
    return {k: info.get(k) for k in ("model_dtype", "model_dtype_reason", "backend", "model_precision")}


def one_run(kind: str, image: Path, flags: list[str], connections: int, args) -> dict[str, Any]:
    server = make_iei(kind, image, flags)
    try:
        t0 = time.monotonic()
        server.start(timeout_s=args.start_timeout)
        startup = round(time.monotonic() - t0, 2)
        server.check()
        info = info_of(server)
        if args.warmup > 0:
            run_wrk(server, connections, args.warmup, 1, 60)
        result = run_wrk(server, connections, args.duration, 1, 60)
        return {**result, "startup_s": startup, "info": info, "command": server.command_line()}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="compute", choices=("compute", "decode"))
    p.add_argument("--a", default="--dtype float32", help="`iei serve` flags of variant A")
    p.add_argument("--b", default="--dtype auto", help="`iei serve` flags of variant B")
    p.add_argument("--rounds", type=int, default=3, help="A,B rounds (medians reported)")
    p.add_argument("--duration", type=float, default=30, help="seconds per measured wrk run")
    p.add_argument("--warmup", type=float, default=8, help="seconds of warm-up wrk run per server")
    p.add_argument("--start-timeout", type=float, default=240)
    p.add_argument("--quick", action="store_true", help="tiny model, 1 round of 2 s runs (CI smoke)")
    p.add_argument("--out", type=Path, default=None, help="results basename (default benchmarks/results/ab-<scenario>)")
    args = p.parse_args(argv)
    stop_servers_on_sigterm()
    spec = dict(SCENARIOS[args.scenario])
    kind = spec["model"]
    if args.quick:
        kind, args.rounds, args.duration, args.warmup = "tiny", 1, 2, 0
    elif args.out is None:
        args.out = RESULTS / f"ab-{args.scenario}"
    image = image_file(spec["image"])
    variants = {"A": [*spec.get("iei_args", []), *shlex.split(args.a)], "B": [*spec.get("iei_args", []), *shlex.split(args.b)]}
    title = (f"{args.scenario}: {'vit-base-shaped' if kind == 'base' else 'tiny'} random ViT, "
             f"{spec['image'][0]}x{spec['image'][1]} JPEG, {spec['connections']} connections")
    report: dict[str, Any] = {"meta": machine_facts(), "scenario": args.scenario, "title": title,
                              "model": kind, "connections": spec["connections"], "image": image.name,
                              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "variants": {k: {"flags": v, "runs": []} for k, v in variants.items()}}
    for round_no in range(args.rounds):
        for name, flags in variants.items():
            r = one_run(kind, image, flags, spec["connections"], args)
            report["variants"][name]["runs"].append(r)
            print(f"round {round_no + 1} {name} ({' '.join(flags)}): {r['ok_rps']:.2f} img/s, p50 {r['p50_ms']:.0f} ms, "
                  f"server {r['server_cores']} cores, other {r['other_cores']} cores; {r['info']['model_dtype_reason']}",
                  flush=True)
    for v in report["variants"].values():
        v["median_img_per_s"] = round(statistics.median(r["ok_rps"] for r in v["runs"]), 2)
        v["median_p50_ms"] = round(statistics.median(r["p50_ms"] for r in v["runs"]), 1)
    a, b = (report["variants"][k]["median_img_per_s"] for k in "AB")
    report["ratio_b_over_a"] = round(b / a, 2) if a else None
    print(f"median A {a} img/s, B {b} img/s, B/A x{report['ratio_b_over_a']}")
    save_report(report, args.out, write_markdown)
    return 0


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m = report["meta"]
    lines = [f"# A/B: {report['title']}", "",
             "`benchmarks/ab_bench.py`: one `iei serve` per variant per round, rounds interleaved A, B, A, B; each a "
             f"warm-up wrk run then one measured {report['args']['duration']:g} s run ({report['connections']} "
             "connections, one image per request). Medians over rounds. The host was shared with other work: "
             "*other cores* is the CPU everything else used during the run.", "",
             f"commit `{m['git_commit']}`{' (dirty tree)' if m['git_dirty'] else ''} · {m['cpu_model']} · "
             f"{m['cpu_cores']} cores · Python {m['python']} · {m['date']}", "",
             "| variant | flags | img/s per round | median img/s | median p50 ms | other cores per round | precision (/info) |",
             "|---|---|---|---:|---:|---|---|"]
    for name, v in report["variants"].items():
        runs = v["runs"]
        per_round = ", ".join(f"{r['ok_rps']:.2f}" for r in runs)
        other = ", ".join(f"{r['other_cores']:.2f}" for r in runs)
        lines.append(f"| {name} | `{' '.join(v['flags'])}` | {per_round} | {v['median_img_per_s']:.2f} | "
                     f"{v['median_p50_ms']:.0f} | {other} | {runs[0]['info']['model_dtype_reason']} |")
    lines += ["", f"B / A: ×{report['ratio_b_over_a']}", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
