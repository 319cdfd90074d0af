"""Serving overhead: the server's own CPU cost per image, by process role, and where it goes.

A tiny random ViT (model time ~0) on one thread, 224x224 JPEGs (or --image), one image per request, 64 wrk
connections (wrk: compiled, so the client takes little of the 2 cores). The regime a GPU puts the
server in: everything but the model is overhead. Measured:

  - CPU-ms per image for each process role, from /proc (utime+stime) over each measured run:
    http (the Litestar event loop process), preprocess (decode workers), model (the model process)
  - a py-spy profile of all the server's processes during a separate run: the functions with the
    most samples (self time, per role), recorded in the results markdown

    python benchmarks/overhead_bench.py                 # -> benchmarks/results/overhead.{json,md}
    python benchmarks/overhead_bench.py --quick --out /tmp/o   # seconds-long smoke (CI)

Never asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    CACHE,
    GENERATED_IMAGES,
    RESULTS,
    ROOT,
    Server,
    free_port,
    generated_image,
    iei_command,
    machine_facts,
    cpu_seconds_by_role,
    save_report,
    server_process_roles,
    stop_servers_on_sigterm,
    vit_model,
)
from wrk_load import run_wrk

ROLES = ("http", "preprocess", "model", "other")


def process_roles(server_pid: int) -> dict[int, str]:
    return server_process_roles(server_pid, server_role="http")


def cpu_seconds(pids: dict[int, str]) -> dict[str, float]:
    return cpu_seconds_by_role(pids, ROLES)


def measured_run(server: Server, roles: dict[int, str], args) -> dict[str, Any]:
    before = cpu_seconds(roles)
    r = run_wrk(server, args.connections, args.duration, args.wrk_threads, 30)
    after = cpu_seconds(roles)
    images = r["ok_rps"] * r["seconds"]
    r["cpu_ms_per_image"] = {role: round(1000 * (after[role] - before[role]) / images, 3) if images else None
                             for role in ROLES}
    r["cpu_ms_per_image"]["total"] = round(sum(v or 0 for v in r["cpu_ms_per_image"].values()), 3)
    return r


def profile(server: Server, roles: dict[int, str], args) -> dict[str, Any]:
    """py-spy samples of every server process while wrk loads it; top self-time functions per role."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    raw = CACHE / "profiles" / f"overhead-{server.port}.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    cmd = [spy, "record", "--pid", str(server.process.pid), "--subprocesses", "--format", "raw", "--rate",
           str(args.profile_rate), "--duration", str(int(args.profile_seconds)), "--nonblocking", "-o", str(raw)]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run_wrk(server, args.connections, args.profile_seconds + 1, args.wrk_threads, 30)
    _, err = spy_proc.communicate(timeout=60)
    if not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-400:]}"}
    return top_functions(raw.read_text(), roles, args.top)


# A command line may hold ';' (the fork server's `-c` code does), so it cannot be split off by ';'.
_PROCESS_FRAME = re.compile(r'process (\d+):"[^"]*";?')


def top_functions(collapsed: str, roles: dict[int, str], top: int) -> dict[str, Any]:
    """From py-spy's raw (collapsed) output: per role, the leaf frames with the most samples, as % of all samples."""
    leaves: dict[str, Counter] = {role: Counter() for role in ROLES}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        role = "other"
        while process := _PROCESS_FRAME.match(stack):  # --subprocesses: `process PID:"cmdline"`, parent first
            role = roles.get(int(process.group(1)), "other")
            stack = stack[process.end():]
        frames = stack.split(";")
        leaves[role][frames[-1] if frames else "?"] += int(count)
        total += int(count)
    result = {"samples": total, "top": {}}
    for role, counter in leaves.items():
        result["top"][role] = [{"function": f, "pct": round(100 * n / total, 1)} for f, n in counter.most_common(top)]
        result.setdefault("role_pct", {})[role] = round(100 * sum(counter.values()) / total, 1) if total else 0
    return result


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m, med = report["meta"], report["median"]
    lines = ["# Serving overhead: CPU cost per image, by process role", "",
             "`benchmarks/overhead_bench.py`: tiny random ViT (model time ≈ 0, `--backend-threads 1`), "
             f"{report['image']}, one image per request (JSON base64), **wrk** with {report['args']['connections']} "
             f"connections on 127.0.0.1; {report['args']['runs']} measured runs of {report['args']['duration']:g} s, "
             "medians. CPU from /proc (utime + stime of each server process) over each run.", "",
             f"commit `{m['git_commit']}`{' (dirty tree)' if m['git_dirty'] else ''} · {m['cpu_model']} · "
             f"{m['cpu_cores']} cores · {m['date']} · server: `{report['command']}`", "",
             f"**{med['ok_rps']:,.0f} req/s**, p50 {med['p50_ms']} ms, p99 {med['p99_ms']} ms; "
             f"other processes on the machine used up to {max(r['other_cores'] for r in report['runs']):.2f} cores "
             "during the runs.", "",
             "| role | CPU-ms per image |", "|---|---:|"]
    for role, v in med["cpu_ms_per_image"].items():
        lines.append(f"| {role} | {v} |")
    prof = report.get("profile", {})
    lines += ["", "## Profile (py-spy)", ""]
    if "skipped" in prof:
        lines.append(f"Skipped: {prof['skipped']}")
    else:
        lines += [f"`py-spy record --subprocesses --nonblocking --rate {report['args']['profile_rate']}` on the server "
                  f"for {report['args']['profile_seconds']:g} s under the same load: {prof['samples']} samples "
                  "(idle threads excluded). Share of samples per role: "
                  + ", ".join(f"{r} {p}%" for r, p in prof["role_pct"].items()) + ".", "",
                  "Top functions by self samples (% of all samples):", "",
                  "| role | function | % |", "|---|---|---:|"]
        for role, rows in prof["top"].items():
            lines += [f"| {role} | `{r['function']}` | {r['pct']} |" for r in rows]
    notes = report.get("notes") or []
    lines += [""] + [f"- {n}" for n in notes] + ["", f"Reproduce: `{report['reproduce']}`", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    stop_servers_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--profile-seconds", type=float, default=10)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=6, help="functions listed per role")
    p.add_argument("--iei-args", default="", help="extra `iei serve` flags")
    p.add_argument("--image", default="jpeg-224", choices=[n for n in GENERATED_IMAGES if n.startswith("jpeg")],
                   help="the JPEG every request sends (jpeg-1024x768: the decode-bound case)")
    p.add_argument("--quick", action="store_true", help="smoke: 1 run of 1 s, 1 s profile")
    p.add_argument("--out", type=Path, default=None, help="results basename (default benchmarks/results/overhead)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.runs, args.profile_seconds = 1, 1, 1, 1  # wrk takes whole seconds
    if shutil.which("wrk") is None:
        p.error("wrk not found (apt-get install wrk)")
    port, image = free_port(), generated_image(args.image)
    server = Server("overhead-iei", iei_command(vit_model("tiny"), port, ["--backend-threads", "1", *args.iei_args.split()]),
                    {"PYTHONPATH": str(ROOT)}, port, "/embed",
                    json.dumps({"inputs": [base64.b64encode(image).decode()]}).encode(), lambda r: r[0])
    report: dict[str, Any] = {"meta": machine_facts(), "args": vars(args) | {"out": str(args.out)},
                              "image": "{}x{} JPEG q90, {} bytes".format(*GENERATED_IMAGES[args.image][:2], len(image)),
                              "command": server.command_line(),
                              "reproduce": "python " + " ".join(["benchmarks/overhead_bench.py", *(argv or sys.argv[1:])])}
    try:
        server.start(timeout_s=240)
        server.check()
        roles = process_roles(server.process.pid)
        report["roles"] = Counter(roles.values())
        run_wrk(server, args.connections, args.warmup, args.wrk_threads, 30)
        report["runs"] = []
        for k in range(args.runs):
            r = measured_run(server, roles, args)
            report["runs"].append(r)
            print(f"run {k + 1}: {r['ok_rps']:.0f} req/s p99 {r['p99_ms']} ms, CPU-ms/image {r['cpu_ms_per_image']}"
                  f" (other processes {r['other_cores']} cores)", flush=True)
        report["profile"] = profile(server, roles, args)
    finally:
        server.stop()
    runs = report["runs"]
    report["median"] = {k: statistics.median(r[k] for r in runs) for k in ("ok_rps", "p50_ms", "p99_ms")}
    report["median"]["cpu_ms_per_image"] = {
        role: round(statistics.median(r["cpu_ms_per_image"][role] or 0 for r in runs), 3)
        for role in (*ROLES, "total")}
    save_report(report, args.out or (None if args.quick else RESULTS / "overhead"), write_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
