"""The backend alone, in a child process configured by the same `iei serve` flags as the server's model
process (`iei.model_plan.backend_config`): the "in process" side of every end-to-end vs in-process ratio.

A sibling module of the scripts (not a package): they put `benchmarks/` on sys.path and import it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from common import ROOT

# The in-process side: a long-lived child that obeys "sweep SIZES SECONDS PASSES" and "run BATCH SECONDS".
WORKER_CODE = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
from backends import load_backend
from iei.config import settings_from
from iei.model_plan import model_plan

settings = settings_from(__import__("iei.cli", fromlist=["x"]).build_parser().parse_args(["serve", *sys.argv[2:]]), {})
backend = load_backend(settings.backend, model_plan(settings).config)
backend.warmup()
h, w = backend.info.image_size
rng = np.random.default_rng(0)
pixels = {}

def rate(batch, seconds):
    x = pixels.setdefault(batch, rng.integers(0, 256, (batch, 3, h, w), dtype=np.uint8))
    backend.embed_images(x)  # this shape warm
    n, t0 = 0, time.perf_counter()
    while True:
        backend.embed_images(x)
        n += batch
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and n >= 2 * batch:
            return n / elapsed

print("READY " + json.dumps({"info": str(backend.info)}), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "sweep":
        sizes, seconds, passes = [int(s) for s in cmd[1].split(",")], float(cmd[2]), int(cmd[3])
        out = {b: [] for b in sizes}
        for _ in range(passes):  # interleaved passes, so drift hits every size alike
            for b in sizes:
                out[b].append(rate(b, seconds))
        print("RESULT " + json.dumps(out), flush=True)
    elif cmd[0] == "run":
        print("RESULT " + json.dumps(rate(int(cmd[1]), float(cmd[2]))), flush=True)
"""


class InProcess:
    """The backend alone, in a child process configured by the same flags as the server."""

    def __init__(self, serve_args: list[str], start_timeout: float) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE, str(ROOT), *serve_args], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self._read("READY", start_timeout)

    def _read(self, tag: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"in-process worker gave no {tag} (exit code {self.proc.poll()})")

    def ask(self, command: str, timeout: float = 600) -> Any:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read("RESULT", timeout)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
