"""Configuration sweeps: IEI in several configurations, side by side, each swept over client counts.

Each suite compares configurations that differ in one setting (batching, preprocess pool size,
draft decode, backend, upload format) on one workload. All servers of a suite are started at once
(idle ones cost nothing) and loaded one at a time with `loadgen.py`, alternating: every round runs
each concurrency level on every configuration, in an order reversed on odd rounds, so drift on a
shared machine hits all configurations alike. Reported numbers are medians over rounds.

    python benchmarks/sweep.py                        # all suites -> benchmarks/results/sweep.{json,md} + sweep-*.png
    python benchmarks/sweep.py --suites pool,draft --rounds 5 --out /tmp/sweep
    python benchmarks/sweep.py --quick --out /tmp/q   # seconds-long smoke (CI)

Never asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS,
    Server,
    _group_cpu_s,
    _self_cpu_s,
    free_port,
    generated_image,
    iei_command,
    machine_facts,
    stop_servers_on_sigterm,
    vit_model,
)
from loadgen import build_payloads, run_level

MODEL_NAMES = {"vit-tiny": "hidden 32, 2 layers, patch 32", "vit-small": "ViT-S/16 width, 6 layers",
               "vit-base": "ViT-B/16"}
ONE_THREAD = ["--backend-threads", "1"]  # the model's threads would spin on the cores the decoders need
# suite -> workload and configurations {name: (iei flags, upload mode)}; the first is the reference
SUITES: dict[str, dict[str, Any]] = {
    "batching": dict(model="small", image="jpeg-224", title="Dynamic batching, 224x224 JPEG",
                     configs={"batch 32": ([], "json"), "batch 1": (["--max-batch-size", "1"], "json")}),
    "pool": dict(model="tiny", image="jpeg-1024x768", title="Preprocess pool, 1024x768 JPEG",
                 configs={"2 workers": (["--preprocess-workers", "2", *ONE_THREAD], "json"),
                          "1 worker": (["--preprocess-workers", "1", *ONE_THREAD], "json")}),
    "draft": dict(model="tiny", image="jpeg-1024x768", title="Draft JPEG decode, 1024x768 JPEG",
                  configs={"draft on": (["--draft-decode", *ONE_THREAD], "json"),
                           "draft off": (["--no-draft-decode", *ONE_THREAD], "json")}),
    "backend": dict(model="small", image="jpeg-224", title="Backend, 224x224 JPEG",
                    configs={"torch": (["--backend", "torch"], "json"), "onnx": (["--backend", "onnx"], "json"),
                             "onnx int8": (["--backend", "onnx", "--quantize", "int8"], "json")}),
    "upload": dict(model="tiny", image="jpeg-224", title="Upload format, 224x224 JPEG",
                   configs={"json base64": (ONE_THREAD, "json"), "multipart": (ONE_THREAD, "multipart")}),
}


class Config:
    """One server configuration of a suite, its server process and its measured levels."""

    def __init__(self, name: str, flags: list[str], mode: str, model: Path, image: bytes) -> None:
        port = free_port()
        self.name, self.flags, self.mode = name, flags, mode
        self.server = Server(f"sweep-{name.replace(' ', '-')}", iei_command(model, port, flags),
                             {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}, port, "/embed", b"", None)
        self.payloads = build_payloads([image], mode, 1)
        self.runs: dict[int, list[dict[str, Any]]] = {}

    def measure(self, concurrency: int, seconds: float) -> dict[str, Any]:
        pgid = self.server.process.pid
        g0, s0, t0 = _group_cpu_s(pgid), _self_cpu_s(), time.monotonic()
        r = run_level(self.server.url, self.payloads, concurrency=concurrency, duration_s=seconds)
        wall = time.monotonic() - t0
        r["server_cores"] = round((_group_cpu_s(pgid) - g0) / wall, 2)
        r["client_cores"] = round((_self_cpu_s() - s0) / wall, 2)
        self.runs.setdefault(concurrency, []).append(r)
        return r


def median_level(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("img_per_s", "req_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "server_cores", "client_cores")
    med = {k: round(statistics.median(r[k] for r in runs if r[k] is not None), 2)
           for k in keys if any(r[k] is not None for r in runs)}
    stages = {s for r in runs for s in r["stage_median_ms"]}
    med["stage_median_ms"] = {s: round(statistics.median(r["stage_median_ms"][s] for r in runs
                                                         if s in r["stage_median_ms"]), 3) for s in sorted(stages)}
    med["errors"] = sum(sum(r["errors"].values()) for r in runs)
    return med


def run_suite(name: str, args) -> dict[str, Any]:
    spec = SUITES[name]
    model, image = vit_model(args.model or spec["model"]), generated_image(spec["image"])
    configs = [Config(c, [*f, *args.iei_args], m, model, image) for c, (f, m) in spec["configs"].items()]
    title = f"{spec['title']}, random {model.name} ({MODEL_NAMES[model.name]})"
    print(f"== {name}: {title}", flush=True)
    try:
        for c in configs:  # one after another: concurrent start-ups would fight for the cores
            c.server.start(timeout_s=args.start_timeout)
            c.measure(4, args.warmup)  # warm-up, discarded below
            c.runs.clear()
        for rnd in range(args.rounds):
            order = configs if rnd % 2 == 0 else configs[::-1]
            for level in args.concurrency:
                for c in order:
                    r = c.measure(level, args.duration)
                    print(f"  round {rnd + 1} c={level:<4} {c.name:12} {r['img_per_s']:8.1f} img/s  p99 {r['p99_ms']} ms"
                          f"  errors {r['errors'] or 0}  server {r['server_cores']} cores", flush=True)
    finally:
        for c in configs:
            c.server.stop()
    result = {"title": title, "model": model.name, "image": spec["image"], "configs": {}}
    for c in configs:
        result["configs"][c.name] = {"flags": c.flags, "mode": c.mode, "command": c.server.command_line(),
                                     "levels": {str(k): median_level(v) for k, v in c.runs.items()},
                                     "runs": {str(k): v for k, v in c.runs.items()}}
    ref = configs[0].name
    top = str(max(args.concurrency))
    base = result["configs"][ref]["levels"][top]["img_per_s"]
    result["ratios_at_top_concurrency"] = {c: round(e["levels"][top]["img_per_s"] / base, 2) if base else None
                                           for c, e in result["configs"].items()}
    return result


# ---------------------------------------------------------------------------------------------
# reporting


def stamp(report: dict[str, Any]) -> str:
    m = report["meta"]
    return (f"commit {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''} · {m['cpu_model']} · {m['cpu_cores']} cores"
            f" · {m['date']} · {report['args']['duration']:g} s/level × {report['args']['rounds']} rounds, medians")


def plot_suite(report: dict[str, Any], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = report["suites"][name]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for cname, e in suite["configs"].items():
        levels = sorted(e["levels"], key=int)
        xs = [int(k) for k in levels]
        ys = [e["levels"][k]["img_per_s"] for k in levels]
        p99 = [e["levels"][k].get("p99_ms") for k in levels]
        ax1.plot(xs, ys, marker="o", label=cname)
        ax2.plot(ys, p99, marker="o", label=cname)
    ax1.set(xscale="log", xlabel="concurrent clients", ylabel="images/s", title="throughput vs concurrency")
    ax2.set(xlabel="images/s", ylabel="p99 latency (ms)", yscale="log", title="p99 latency vs throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(suite["title"])
    fig.text(0.01, 0.01, stamp(report), fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_markdown(report: dict[str, Any], path: Path, plots: dict[str, str]) -> None:
    lines = ["# Configuration sweeps", "",
             "`benchmarks/sweep.py`: each suite's IEI servers started on 127.0.0.1 and loaded one at a time by "
             "`benchmarks/loadgen.py` (closed loop, aiohttp, pre-encoded bodies), configurations alternated in "
             "every round (order reversed on odd rounds); medians over rounds. Stage times are the median of the "
             "server's x-preprocess-time / x-queue-time / x-inference-time headers. *server cores*: CPU used by "
             "the server's processes; *client cores*: by the load generator (same machine).", "",
             stamp(report), "", "## Ratios at the highest concurrency (images/s, against the first configuration)", "",
             "| suite | ratios |", "|---|---|"]
    for name, suite in report["suites"].items():
        ratios = ", ".join(f"{c} ×{r}" for c, r in suite["ratios_at_top_concurrency"].items())
        lines.append(f"| {name} | {ratios} |")
    for name, suite in report["suites"].items():
        lines += ["", f"## {name}: {suite['title']}", "", f"![{name}]({plots[name]})", "",
                  "| config | clients | img/s | req/s | p50 ms | p90 ms | p99 ms | preprocess / queue / inference ms "
                  "| errors | server cores | client cores |", "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for cname, e in suite["configs"].items():
            for level in sorted(e["levels"], key=int):
                m = e["levels"][level]
                st = " / ".join(f"{m['stage_median_ms'].get(s, '–')}" for s in ("preprocess", "queue", "inference"))
                lines.append(f"| {cname} | {level} | {m['img_per_s']} | {m['req_per_s']} | {m.get('p50_ms')} | "
                             f"{m.get('p90_ms')} | {m.get('p99_ms')} | {st} | {m['errors']} | {m['server_cores']} | "
                             f"{m['client_cores']} |")
        lines += [""] + [f"- {c}: `{e['command']}` ({e['mode']} upload)" for c, e in suite["configs"].items()]
    lines += ["", f"Reproduce: `{report['reproduce']}`", ""]
    path.write_text("\n".join(lines))


def write_report(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    plots = {}
    for name in report["suites"]:
        png = out.with_name(f"{out.name}-{name}.png")
        plot_suite(report, name, png)
        plots[name] = png.name
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"), plots)
    print(f"wrote {out}.json, {out}.md and {len(plots)} plots")


def main(argv: list[str] | None = None) -> int:
    stop_servers_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", default=",".join(SUITES), help=f"comma list of {','.join(SUITES)}")
    p.add_argument("--concurrency", default="1,4,16,64", help="closed-loop client counts")
    p.add_argument("--duration", type=float, default=3, help="seconds per level and configuration")
    p.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per server")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians reported)")
    p.add_argument("--iei-args", default="", help="extra `iei serve` flags for every configuration")
    p.add_argument("--start-timeout", type=float, default=240, help="seconds to wait for /health")
    p.add_argument("--model", choices=("tiny", "small", "base"), default=None,
                   help="one model for every suite instead of each suite's own (tiny: the overhead regime)")
    p.add_argument("--quick", action="store_true", help="smoke: tiny model, batching+upload, 1 round of 1 s")
    p.add_argument("--out", type=Path, default=None, help="results basename (default benchmarks/results/sweep)")
    args = p.parse_args(argv)
    if args.quick:
        if "--suites" not in (argv if argv is not None else sys.argv):
            args.suites = "batching,upload"
        args.concurrency, args.duration, args.warmup, args.rounds, args.model = "4", 1, 0.5, 1, "tiny"
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    for s in suites:
        if s not in SUITES:
            p.error(f"unknown suite {s!r}")
    raw_iei_args = args.iei_args
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.iei_args = shlex.split(args.iei_args)
    report: dict[str, Any] = {
        "meta": machine_facts(), "args": vars(args) | {"out": str(args.out) if args.out else None,
                                                       "iei_args": raw_iei_args},
        "reproduce": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/sweep.py", *(argv or sys.argv[1:])]),
        "suites": {},
    }
    for name in suites:
        report["suites"][name] = run_suite(name, args)
    out = args.out or (None if args.quick else RESULTS / "sweep")
    if out is not None:
        write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
