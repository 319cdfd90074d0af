"""Start a real `iei serve` process on 127.0.0.1 and wait until /health answers 200."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


# The test being set up or run, kept by tests/conftest.py (pytest_runtest_setup) so that the helpers that
# start a server can check it is marked slow: `make test-fast` (-m "not slow") must never start one.
CURRENT_TEST: dict[str, pytest.Item | None] = {"item": None}


def require_slow_test() -> None:
    """Fail the current test unless it is marked `slow` (a session fixture counts for its first user)."""
    item = CURRENT_TEST["item"]
    if item is not None and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} starts a server: mark it @pytest.mark.slow (or its module's pytestmark)",
                    pytrace=False)


def loads_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, process: subprocess.Popen, url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def model_pids(self) -> list[int]:
        """The model processes started so far, oldest first (from the log)."""
        return [int(pid) for pid in re.findall(r"model process ready \(pid (\d+)\)", self.log())]


@contextmanager
def running_server(*args: str, env: dict[str, str] | None = None, log_dir: Path, timeout_s: float = 120.0,
                   expect_ready: bool = True) -> Iterator[ServerProcess]:
    require_slow_test()
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    # IEI_DEVICE=cpu, IEI_DTYPE=float32: the references are CPU float32 vectors, and `auto` would serve float16
    # on a GPU host, bfloat16 on a CPU with bf16 units (a test's --device/--dtype flag still wins over the
    # environment). Each server its own batch-job database (unless the test names one): never the user's,
    # never shared.
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "IEI_DEVICE": "cpu", "IEI_DTYPE": "float32",
                "IEI_BATCH_DB": str(log_dir / f"batches-{port}.sqlite3"), **(env or {})}
    cmd = [sys.executable, "-m", "iei", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    try:
        if expect_ready:
            _wait_ready(server, timeout_s)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(server: ServerProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not ready after {timeout_s}s:\n{server.log()}")
