"""Compute-bound efficiency: IEI end to end against the same backend in process, interleaved.

The question (issue 2, and issue 3 per backend): when the model is the bottleneck, how much of the
backend's own throughput does the server deliver? On a shared machine whose speed drifts by ±15%
within minutes, two numbers measured minutes apart cannot answer that to 5%. So both sides stay
loaded side by side and take turns, in short alternating windows (ABBA order), and each round gives
one ratio; the report is the median ratio.

  in process  a child process holding the backend (`backends.load_backend`, configured exactly as the
              server's model process by `iei.model_plan.backend_config`) runs batches of the best batch
              size on uint8 pixels for S seconds, while the idle server uses no CPU;
  end to end  wrk keeps C connections posting one 1024x768 JPEG each to `iei serve` (started with
              --max-batch-size = that batch size, at most C/2 so that a batch can fill behind the
              running one); the rate is read from the server's `iei_images_embedded_total` from its
              first whole batch to its last change in an S-second window, after the pipeline has
              filled. Every embedded image is answered, so this is the steady-state e2e rate.

Between windows wrk is stopped and the server is let drain (`iei_inflight_images` = 0), so the two
sides never overlap.

    .venv/bin/python benchmarks/compute_efficiency.py                          # torch, onnx, onnx-int8
    .venv/bin/python benchmarks/compute_efficiency.py --configs torch --rounds 3 --seconds 15
    .venv/bin/python benchmarks/compute_efficiency.py --quick                  # seconds-long smoke (CI)

Writes benchmarks/results/compute_efficiency.{json,md} (not with --quick unless --out is given).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (a sibling module, not a package)
    CACHE, RESULTS, Server, _group_cpu_s, _system_busy_s, free_port, image_file, machine_facts, save_report, vit_model,
    wait_quiet,
)
from inprocess import InProcess  # noqa: E402
from wrk_load import WRK_LUA  # noqa: E402

CONFIGS: dict[str, list[str]] = {
    "torch": ["--backend", "torch"],
    "onnx": ["--backend", "onnx"],
    "onnx-int8": ["--backend", "onnx", "--quantize", "int8"],
}
BATCH_SIZES = (1, 2, 4, 8, 16)


_SCRAPED = ("iei_images_embedded_total", "iei_inflight_images", "iei_batch_size_sum", "iei_batch_size_count",
            "iei_inference_duration_seconds_sum", "iei_inference_duration_seconds_count")


def metric_values(text: str, names: tuple[str, ...] = _SCRAPED) -> dict[str, float]:
    """The unlabelled samples named `names` in a Prometheus text exposition."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+) ([0-9.eE+-]+)$", text, re.M)
            if m.group(1) in names}


def scrape(server: Server) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
        return metric_values(resp.read().decode())


def wait_drained(server: Server, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while scrape(server)["iei_inflight_images"] > 0:
        if time.monotonic() > deadline:
            raise TimeoutError("the server did not drain")
        time.sleep(0.2)


def _pid_cpu_s(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = text[text.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class ForeignCpu:
    """Cores used during a window by everything except the server, the in-process worker, wrk and
    this script: the machine is shared, and a window that others disturbed is redone."""

    def __init__(self, worker_pid: int, server: Server | None = None) -> None:
        self.server_pgid, self.worker_pid = (server.process.pid if server else None), worker_pid
        self.extra_pids: list[int] = []

    def _ours(self) -> float:
        server = _group_cpu_s(self.server_pgid) if self.server_pgid else 0.0
        return (server + _pid_cpu_s(self.worker_pid) + _pid_cpu_s(os.getpid())
                + sum(_pid_cpu_s(p) for p in self.extra_pids))

    def start(self) -> None:
        self.extra_pids = []
        self.t0, self.busy0, self.ours0 = time.monotonic(), _system_busy_s(), self._ours()

    def stop(self) -> float:
        wall = time.monotonic() - self.t0
        return max(0.0, (_system_busy_s() - self.busy0) - (self._ours() - self.ours0)) / wall


class CounterPoller:
    """Reads `iei_images_embedded_total` over one kept-alive connection. Each scrape costs the server
    about 1.5 CPU-ms (3 with a new connection), so the window polls densely only at its two edges."""

    def __init__(self, server: Server) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

    def count(self) -> float:
        try:
            text = self._get()
        except (http.client.RemoteDisconnected, ConnectionError):  # the server closes idle keep-alives
            self.conn.close()
            text = self._get()
        return metric_values(text, ("iei_images_embedded_total",))["iei_images_embedded_total"]

    def _get(self) -> str:
        self.conn.request("GET", "/metrics")
        return self.conn.getresponse().read().decode()

    def changes(self, until: float, stop_after: int = 0, interval: float = 0.05) -> list[tuple[float, float]]:
        """(time, count) at each change seen until `until` (or after `stop_after` changes)."""
        points, last = [], self.count()
        while time.monotonic() < until and not (stop_after and len(points) >= stop_after):
            time.sleep(interval)
            count = self.count()
            if count != last:
                points.append((time.monotonic(), count))
                last = count
        return points

    def close(self) -> None:
        self.conn.close()


def _embedded_timeline(server: Server, fill_s: float, seconds: float) -> list[tuple[float, float]]:
    """Counter changes at the two edges of a `seconds` window that starts `fill_s` after the call:
    the first two changes (the second is the first whole batch), then every change in the last
    2.5 batch intervals (at least a quarter of the window). A rate between two changes is exact to a
    batch boundary."""
    time.sleep(fill_s)
    poller = CounterPoller(server)
    try:
        end = time.monotonic() + seconds
        head = poller.changes(end, stop_after=2)
        if len(head) < 2:
            return head
        tail_s = max(2.5 * (head[1][0] - head[0][0]), seconds / 4)  # the first interval may be a short batch
        time.sleep(max(0.0, end - tail_s - time.monotonic()))
        return head + poller.changes(end)
    finally:
        poller.close()


def end_to_end_window(server: Server, body_path: Path, connections: int, fill_s: float, seconds: float,
                      foreign: ForeignCpu | None = None) -> dict:
    """Load the server with wrk; after `fill_s`, time the embedded-image counter's changes over
    `seconds`; stop wrk and let the server drain."""
    wrk = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{int(fill_s + seconds + 60)}s", "--timeout=120s",
                            "-s", str(WRK_LUA), server.url], env={**os.environ, "WRK_BODY": str(body_path)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if foreign:
        foreign.extra_pids.append(wrk.pid)
    try:
        m0 = scrape(server)
        points = _embedded_timeline(server, fill_s, seconds)
        m1 = scrape(server)
    finally:
        wrk.send_signal(signal.SIGINT)
        wrk.wait()
        wait_drained(server)
    if len(points) < 3:
        raise RuntimeError(f"only {len(points)} counter changes in {seconds:g} s: make --seconds longer")
    (t_first, c_first), (t_last, c_last) = points[1], points[-1]  # points[0] may be mid-batch
    d = {k: m1[k] - m0[k] for k in m0}
    batches = max(d["iei_batch_size_count"], 1)
    return {"img_per_s": (c_last - c_first) / (t_last - t_first), "timed_s": round(t_last - t_first, 2),
            "mean_batch": d["iei_batch_size_sum"] / batches,
            "model_time_per_batch_s": d["iei_inference_duration_seconds_sum"]
            / max(d["iei_inference_duration_seconds_count"], 1)}


def quiet_sweep(inproc: InProcess, args) -> dict[int, list[float]]:
    """img/s per batch size (interleaved passes), redone while other processes disturb it."""
    foreign = ForeignCpu(inproc.proc.pid)
    for attempt in range(args.max_retries + 1):
        wait_quiet(args.max_other_cores, args.quiet_wait)
        foreign.start()
        sweep = inproc.ask(f"sweep {','.join(map(str, args.batch_sizes))} {args.sweep_seconds} {args.sweep_passes}")
        other = foreign.stop()
        if other <= args.max_other_cores or attempt == args.max_retries:
            return {int(b): v for b, v in sweep.items()}
        print(f"  sweep disturbed (other processes {other:.2f} cores): redoing", flush=True)
    raise AssertionError("unreachable")


def run_config(name: str, args) -> dict[str, Any]:
    model = vit_model(args.model)
    serve_args = ["--model", str(model), *CONFIGS[name], *args.iei_args]
    print(f"== {name}: in-process sweep over batch sizes {args.batch_sizes}", flush=True)
    inproc = InProcess(serve_args, args.start_timeout)
    server = None
    try:
        sweep = quiet_sweep(inproc, args)
        sweep_median = {b: statistics.median(v) for b, v in sweep.items()}
        best = max(sweep_median, key=sweep_median.get)
        # The server's batch leaves room for a second one to fill behind it (prefetch): with C clients
        # and a batch of C, every batch would wait for the last one's answers to come back as new requests.
        server_batch = max(1, min(best, args.connections // 2))
        print("  " + ", ".join(f"b{b}={v:.2f}" for b, v in sweep_median.items())
              + f" -> best batch {best}; server --max-batch-size {server_batch}", flush=True)
        port = free_port()
        cmd = [sys.executable, "-m", "iei", "serve", *serve_args, "--max-batch-size", str(server_batch),
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        body = json.dumps({"inputs": [base64.b64encode(image_file(args.image).read_bytes()).decode()]}).encode()
        server = Server(f"iei-{name}", cmd, {}, port, "/embed", body, lambda r: r[0])
        server.start(args.start_timeout)
        server.check()
        body_path = CACHE / "bodies" / f"efficiency-{port}.json"
        body_path.parent.mkdir(parents=True, exist_ok=True)
        body_path.write_bytes(body)
        fill = args.fill_seconds
        end_to_end_window(server, body_path, args.connections, fill, args.seconds)  # warm-up
        foreign = ForeignCpu(inproc.proc.pid, server)
        rounds, redone = [], 0
        while len(rounds) < args.rounds:
            order = ("in", "e2e") if len(rounds) % 2 == 0 else ("e2e", "in")  # ABBA: drift cancels in the median
            r: dict[str, Any] = {"order": "/".join(order)}
            for side in order:
                wait_quiet(args.max_other_cores, args.quiet_wait, server.process.pid)
                foreign.start()
                if side == "in":
                    r["in_process"] = inproc.ask(f"run {best} {args.seconds}")
                else:
                    r.update({"e2e_" + k: v for k, v in end_to_end_window(
                        server, body_path, args.connections, fill, args.seconds, foreign).items()})
                r[f"other_cores_{side}"] = round(foreign.stop(), 2)
            r["ratio"] = r["e2e_img_per_s"] / r["in_process"]
            noisy = max(r["other_cores_in"], r["other_cores_e2e"]) > args.max_other_cores
            print(f"  round {len(rounds) + 1} ({r['order']}): in-process {r['in_process']:.3f} img/s, end to end "
                  f"{r['e2e_img_per_s']:.3f} img/s (batch {r['e2e_mean_batch']:.2f}, model "
                  f"{r['e2e_model_time_per_batch_s']:.2f} s/batch) -> {r['ratio']:.1%}; other processes "
                  f"{r['other_cores_in']}/{r['other_cores_e2e']} cores"
                  + ("; DISCARDED, redoing" if noisy and redone < args.max_retries else ""), flush=True)
            if noisy and redone < args.max_retries:
                redone += 1
                continue
            rounds.append(r)
        return {"serve_args": [str(a) for a in serve_args], "server_command": server.command_line(),
                "sweep": {str(b): [round(x, 3) for x in v] for b, v in sweep.items()},
                "sweep_median": {str(b): round(v, 3) for b, v in sweep_median.items()},
                "best_batch_size": best, "server_batch_size": server_batch,
                "rounds": rounds, "redone_noisy_rounds": redone,
                "median_in_process": round(statistics.median(r["in_process"] for r in rounds), 3),
                "median_end_to_end": round(statistics.median(r["e2e_img_per_s"] for r in rounds), 3),
                "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 4),
                "ratios": [round(r["ratio"], 4) for r in rounds]}
    finally:
        inproc.close()
        if server:
            server.stop()


def write_markdown(report: dict[str, Any], path: Path) -> None:
    m, a = report["meta"], report["args"]
    lines = [
        "# Compute-bound efficiency: end to end vs in process (interleaved)", "",
        "`benchmarks/compute_efficiency.py`: vit-base-shaped random-weight ViT, "
        f"{a['image'][0]}x{a['image'][1]} JPEG (one per request), "
        f"{a['connections']} wrk connections. Per configuration: an in-process sweep picks the backend's best batch "
        "size (median of interleaved passes); the server runs with `--max-batch-size` = that size, at most half the "
        "connections (so that a batch can fill behind the running one); then "
        f"{a['rounds']} rounds, each one {a['seconds']:g} s in-process window and one {a['seconds']:g} s "
        "end-to-end window in alternating order (ABBA), the two sides never running at once. End-to-end rate = "
        "growth of `iei_images_embedded_total` between its first whole batch and its last change in the window "
        "(after the pipeline has filled; polled every 50 ms over one kept-alive connection, only at the window's "
        "two edges, since a scrape costs the server ~1.5 CPU-ms), so it is exact to a batch boundary. "
        "*ratio* is the median of the per-round ratios; a round during which other processes used more than "
        f"{a['max_other_cores']} cores was redone.", "",
        f"commit `{m['git_commit']}`{' (dirty tree)' if m['git_dirty'] else ''} · {m['cpu_model']} · "
        f"{m['cpu_cores']} cores · Python {m['python']} · {m['date']}", "",
        "| config | best batch (in process / server) | in process img/s | end to end img/s | ratio (median) "
        "| per-round ratios |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, r in report["configs"].items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:150]} | | | | |")
            continue
        lines.append(f"| {name} | {r['best_batch_size']} / {r['server_batch_size']} "
                     f"| {r['median_in_process']:.2f} | {r['median_end_to_end']:.2f} "
                     f"| **{r['median_ratio']:.1%}** | {', '.join(f'{x:.0%}' for x in r['ratios'])} |")
    lines += ["", "In-process sweep (median img/s per batch size):", ""]
    for name, r in report["configs"].items():
        if "sweep_median" in r:
            lines.append(f"- {name}: " + ", ".join(f"b{b} {v:.2f}" for b, v in r["sweep_median"].items()))
    lines += ["", "Server commands:", ""]
    lines += [f"- {name}: `{r['server_command']}`" for name, r in report["configs"].items() if "server_command" in r]
    lines += ["", f"Reproduce: `{report['reproduce']}`"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="torch,onnx,onnx-int8", help=f"comma list of {','.join(CONFIGS)}")
    p.add_argument("--model", default="base", choices=["base", "tiny"], help="ViT shape (random weights)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=20, help="length of each measured window")
    p.add_argument("--fill-seconds", type=float, default=6, help="load before the first scrape of a window")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--image", default="1024x768", help="JPEG size WxH posted end to end")
    p.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    p.add_argument("--sweep-seconds", type=float, default=4)
    p.add_argument("--sweep-passes", type=int, default=2)
    p.add_argument("--iei-args", default="", help="extra flags for both sides, e.g. \"--backend-threads 2\"")
    p.add_argument("--max-other-cores", type=float, default=0.15,
                   help="a round during which other processes used more cores than this is redone")
    p.add_argument("--max-retries", type=int, default=8, help="most redone rounds per configuration")
    p.add_argument("--quiet-wait", type=float, default=120, help="seconds to wait for a quiet machine per window")
    p.add_argument("--start-timeout", type=float, default=600, help="seconds for a model load (an ONNX export included)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, torch, 1 short round")
    p.add_argument("--out", type=Path, default=None, help="results basename (default benchmarks/results/compute_efficiency)")
    args = p.parse_args(argv)
    if args.quick:
        args.configs, args.model, args.rounds, args.seconds, args.fill_seconds = "torch", "tiny", 1, 1.5, 1
        args.batch_sizes, args.sweep_seconds, args.sweep_passes = "1,4", 0.3, 1
        args.quiet_wait, args.max_retries = 0, 0
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.image = tuple(int(v) for v in args.image.lower().split("x"))
    args.iei_args = args.iei_args.split()
    configs = [c for c in args.configs.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            p.error(f"unknown config {c!r}")
    report: dict[str, Any] = {"meta": machine_facts(), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                                for k, v in vars(args).items()},
                              "reproduce": " ".join([".venv/bin/python", "benchmarks/compute_efficiency.py",
                                                     *(argv if argv is not None else sys.argv[1:])]),
                              "configs": {}}
    for name in configs:
        try:
            report["configs"][name] = run_config(name, args)
        except Exception as e:  # noqa: BLE001 - record and go on
            report["configs"][name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"  {name}: FAILED {report['configs'][name]['error'][:500]}", flush=True)
    save_report(report, args.out or (None if args.quick else RESULTS / "compute_efficiency"), write_markdown)
    return 1 if any("error" in r for r in report["configs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
