"""Drive a server with `wrk` (compiled, so the client takes little of the cores) posting one request
body over and over (`wrk/post_body.lua`), and read back its rate, latency percentiles, and the CPU the
server, the benchmark and everything else used meanwhile.

A sibling module of the scripts (not a package): they put `benchmarks/` on sys.path and import it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

from common import BENCH, CACHE, Server, _group_cpu_s, _self_cpu_s, _system_busy_s

WRK_LUA = BENCH / "wrk" / "post_body.lua"


def run_wrk(server: Server, connections: int, duration_s: float, threads: int, timeout_s: int) -> dict[str, Any]:
    body_path = CACHE / "bodies" / f"{server.name}-{server.port}.json"
    body_path.parent.mkdir(parents=True, exist_ok=True)
    body_path.write_bytes(server.body)
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s", f"--timeout={timeout_s}s", "--latency",
           "-s", str(WRK_LUA), server.url]
    load_before = os.getloadavg()[0]
    pgid = server.process.pid if server.process else 0
    b0, g0, s0 = _system_busy_s(), _group_cpu_s(pgid), _self_cpu_s()
    proc = subprocess.run(cmd, env={**os.environ, "WRK_BODY": str(body_path)}, capture_output=True, text=True,
                          timeout=duration_s + timeout_s + 60)
    m = re.search(r"^BENCH_JSON (\{.*\})$", proc.stdout, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-800:]} {proc.stderr[-800:]}")
    raw = json.loads(m.group(1))
    seconds = raw["duration_us"] / 1e6
    b1, g1, s1 = _system_busy_s(), _group_cpu_s(pgid), _self_cpu_s()
    wall = max(seconds, 1e-3)
    server_cores = (g1 - g0) / wall
    foreign_cores = max(0.0, (b1 - b0) - (g1 - g0) - (s1 - s0)) / wall
    errors = {k[len("errors_"):]: v for k, v in raw.items() if k.startswith("errors_") and v}
    ok = raw["requests"] - raw["errors_status"]
    return {
        "requests": raw["requests"], "seconds": round(seconds, 3),
        "rps": round(raw["requests"] / seconds, 2),
        "ok_rps": round(ok / seconds, 2),
        "p50_ms": raw["p50_us"] / 1e3, "p90_ms": raw["p90_us"] / 1e3, "p99_ms": raw["p99_us"] / 1e3,
        "mean_ms": round(raw["mean_us"] / 1e3, 3), "max_ms": raw["max_us"] / 1e3,
        "errors": errors, "loadavg_1m_before": round(load_before, 2),
        "server_cores": round(server_cores, 2), "wrk_and_bench_cores": round((s1 - s0) / wall, 2),
        "other_cores": round(foreign_cores, 2),
    }


def wrk_command(connections: int, duration_s: float, threads: int, timeout_s: int, url: str) -> str:
    return (f"WRK_BODY=<body.json> wrk -t{threads} -c{connections} -d{duration_s:g}s --timeout={timeout_s}s "
            f"--latency -s benchmarks/wrk/post_body.lua {url}")
