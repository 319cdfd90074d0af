"""Shared pieces of the benchmark scripts: synthetic inputs, random-weight models, a server process
under test, CPU accounting from /proc, and the machine facts every result is stamped with.

A sibling module of the scripts (not a package): they put `benchmarks/` on sys.path and import it.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = BENCH / ".cache"  # gitignored: models, images, logs, bodies
RESULTS = BENCH / "results"


# ---------------------------------------------------------------------------------------------
# inputs: models and images


def synthetic_photo(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """A JPEG with photo-like statistics: smooth gradients, shapes, blur and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([255 * x / width, 255 * y / height, 128 + 100 * np.sin(6 * x / width + 3 * y / height)], -1)
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(2, max(3, min(width, height) // 4)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((cx - r, cy - r, cx + r, cy + r), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
    out = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def image_file(size: tuple[int, int]) -> Path:
    path = CACHE / "images" / f"photo-{size[0]}x{size[1]}-q90.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synthetic_photo(*size))
    return path


def _vit_processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=True, size={"height": 224, "width": 224}, resample=2, do_rescale=True,
                             do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def _vit_config(kind: str):
    from transformers import ViTConfig

    if kind == "tiny":
        return ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         image_size=224, patch_size=32)
    if kind == "small":  # ViT-S/16 width, half its depth: model time matters, yet a sweep fits in minutes
        return ViTConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                         image_size=224, patch_size=16)
    return ViTConfig()  # exactly google/vit-base-patch16-224's shape


def vit_model(kind: str) -> Path:
    """Random-weight ViT (`tiny`, `small` or `base`) saved with save_pretrained + its ViTImageProcessor."""
    folder = CACHE / "models" / f"vit-{kind}"
    if (folder / "config.json").exists() and (folder / "preprocessor_config.json").exists():
        return folder
    import torch
    from transformers import ViTModel

    torch.manual_seed(0)
    ViTModel(_vit_config(kind)).eval().save_pretrained(folder)
    _vit_processor().save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# servers under test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_json(url: str, body: bytes, timeout: float = 120) -> Any:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class Server:
    """One server under test: how to start it, where to POST, what body, how to find the vector."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, route: str, body: bytes,
                 vector_of) -> None:
        self.name, self.cmd, self.env, self.port, self.route = name, cmd, env, port, route
        self.body, self.vector_of = body, vector_of
        self.url = f"http://127.0.0.1:{port}{route}"
        self.health_url = f"http://127.0.0.1:{port}/health"
        self.process: subprocess.Popen | None = None
        self.log_path = CACHE / "logs" / f"{name}-{port}.log"

    def command_line(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        cmd = " ".join(shlex.quote(str(c)) for c in self.cmd)
        return (env + " " + cmd).strip().replace(str(ROOT) + "/", "")

    def start(self, timeout_s: float) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1", **self.env}
        with open(self.log_path, "wb") as log:
            # own process group, so the whole tree (uvicorn workers, pools) can be stopped
            self.process = subprocess.Popen([str(c) for c in self.cmd], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not healthy after {timeout_s:.0f} s: {self.log_tail()}")

    def check(self) -> int:
        """POST the benchmark body once; return the embedding's length (raises if not a vector)."""
        vector = self.vector_of(post_json(self.url, self.body))
        if not (isinstance(vector, list) and vector and all(isinstance(v, (int, float)) for v in vector)):
            raise RuntimeError(f"{self.name}: response is not a vector: {str(vector)[:200]}")
        return len(vector)

    def stop(self) -> None:
        p = self.process
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGINT)
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            pass
        # any stragglers left in the group (e.g. worker processes)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc (the machine may be shared)


_TICK = os.sysconf("SC_CLK_TCK")


def _system_busy_s() -> float:
    """CPU seconds spent busy by the whole machine since boot (all processes, kernel included)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / _TICK


def _group_cpu_s(pgid: int) -> float:
    """CPU seconds of the live processes in process group `pgid` (the server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid:  # field 5: pgrp
            total += int(rest[11]) + int(rest[12])  # utime + stime
    return total / _TICK


def server_process_roles(server_pid: int, server_role: str = "http",
                         spawned_role: str | None = None) -> dict[int, str]:
    """pid -> role for the server's process group: the server itself is `server_role`; a child that has loaded
    torch or onnxruntime is "model"; the resource tracker and the workers' fork server (the server's own child;
    the workers it forks share its command line) are "other"; with `spawned_role` given, the server's other
    spawned children (its HTTP front ends, --http-workers) are that role; the rest decode ("preprocess")."""
    roles = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            rest = text[text.rindex(")") + 2:].split()
            if int(rest[2]) != server_pid:
                continue
            pid = int(stat.parent.name)
            cmdline = (stat.parent / "cmdline").read_bytes()
            maps = (stat.parent / "maps").read_text() if pid != server_pid else ""
        except (OSError, ValueError):
            continue
        if pid == server_pid:
            roles[pid] = server_role
        elif b"resource_tracker" in cmdline or (b"forkserver" in cmdline and int(rest[1]) == server_pid):
            roles[pid] = "other"
        elif "libtorch_cpu" in maps or "onnxruntime" in maps:
            roles[pid] = "model"
        elif spawned_role and b"spawn_main" in cmdline and int(rest[1]) == server_pid:
            roles[pid] = spawned_role
        else:
            roles[pid] = "preprocess"
    return roles


def cpu_seconds_by_role(pids: dict[int, str], roles: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds (user + system) per role for the given live pids."""
    per_role = dict.fromkeys(roles, 0.0)
    for pid, role in pids.items():
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        per_role[role] += (int(rest[11]) + int(rest[12])) / _TICK
    return per_role


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system  # this script + finished wrk runs


def foreign_cpu(pgid: int | None, seconds: float = 1.0) -> float:
    """Cores used, over `seconds`, by everything except the server group and this script."""
    b0, g0, s0 = _system_busy_s(), _group_cpu_s(pgid) if pgid else 0.0, _self_cpu_s()
    time.sleep(seconds)
    b1, g1, s1 = _system_busy_s(), _group_cpu_s(pgid) if pgid else 0.0, _self_cpu_s()
    return max(0.0, (b1 - b0) - (g1 - g0) - (s1 - s0)) / seconds


def wait_quiet(limit_cores: float, max_wait_s: float, pgid: int | None = None) -> float:
    """Wait (up to max_wait_s) until other work on the machine uses under limit_cores; return the last reading."""
    deadline = time.monotonic() + max_wait_s
    while True:
        used = foreign_cpu(pgid, 1.0)
        if used < limit_cores or time.monotonic() >= deadline:
            return used
        print(f"    waiting: other processes use {used:.2f} cores", flush=True)
        time.sleep(4)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def stop_servers_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so the scripts' `finally` blocks stop the servers under test."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


# ---------------------------------------------------------------------------------------------
# results


def save_report(report: dict[str, Any], out: Path | None, write_markdown: Callable[[dict[str, Any], Path], None]) -> None:
    """Write `out`.json and `out`.md (the markdown by `write_markdown`); nothing when `out` is None (a smoke
    run without --out)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


# what every result is stamped with


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True) if shutil.which("wrk") else None
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "git_dirty": dirty, "cpu_model": cpu, "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "wrk": (wrk_version.stdout + wrk_version.stderr).strip().splitlines()[0] if wrk_version else None,
        "loadavg_at_start": os.getloadavg(),
    }


# ---------------------------------------------------------------------------------------------
# generated request images (load generator, sweeps)

GENERATED_IMAGES = {  # name -> (width, height, format)
    "jpeg-224": (224, 224, "JPEG"),
    "jpeg-1024x768": (1024, 768, "JPEG"),
    "jpeg-12mp": (4000, 3000, "JPEG"),
    "png-alpha": (640, 480, "PNG"),
}


def generated_image(name: str) -> bytes:
    """One of GENERATED_IMAGES, built once and cached: photo-like JPEG (q90), or RGBA PNG with a gradient alpha."""
    width, height, fmt = GENERATED_IMAGES[name]
    path = CACHE / "images" / f"{name}.{fmt.lower()}"
    if not path.exists():
        photo = synthetic_photo(width, height)
        if fmt == "PNG":
            rgba = Image.open(io.BytesIO(photo)).convert("RGBA")
            alpha = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
            rgba.putalpha(Image.fromarray(alpha))
            out = io.BytesIO()
            rgba.save(out, format="PNG")
            photo = out.getvalue()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo)
    return path.read_bytes()


def iei_command(model: Path, port: int, flags: list[str]) -> list[str]:
    """`iei serve` from this tree (python -m iei, cwd ROOT), quiet, on 127.0.0.1:port."""
    return [os.environ.get("IEI_BENCH_PYTHON", sys.executable), "-m", "iei", "serve", "--model", str(model),
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *flags]
