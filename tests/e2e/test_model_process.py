"""The model runs in its own process: if it dies, the server stays up, answers 424/503 meanwhile,
starts a new one, and serves again."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.server_process import running_server

pytestmark = pytest.mark.slow


def model_pids(log: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"model process ready \(pid (\d+)\)", log)]


def access_lines(log: str) -> list[dict]:
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [e for e in entries if e["logger"] == "iei.access"]


def test_only_the_model_process_loads_torch(vit_server):
    """The HTTP process never imports torch (nor transformers, which pulls it in): the model process reads
    the model's preprocessing and tokenizer and hands them over. That saves seconds at every start and stop."""
    model_pid = model_pids(vit_server.log())[-1]
    assert "libtorch" not in Path(f"/proc/{vit_server.process.pid}/maps").read_text()
    assert "libtorch" in Path(f"/proc/{model_pid}/maps").read_text()


def test_killed_model_process_is_replaced(tiny_model, seed_base64, server_logs):
    with running_server("--model", str(tiny_model("convnext")), "--preprocess-workers", "1", "--log-format", "json",
                        log_dir=server_logs) as server:
        body = {"inputs": seed_base64[:2]}
        assert httpx.post(server.url + "/embed", json=body, timeout=60).status_code == 200
        (pid,) = model_pids(server.log())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while httpx.get(server.url + "/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        during = httpx.post(server.url + "/embed", json=body, timeout=60)
        assert during.status_code in (200, 424, 503)
        if during.status_code != 200:
            assert during.json()["error_type"] in ("Backend", "Unhealthy")
        deadline = time.monotonic() + 90
        while httpx.get(server.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert httpx.post(server.url + "/embed", json=body, timeout=60).status_code == 200
        assert len(model_pids(server.log())) == 2 and server.process.poll() is None
    first = access_lines(server.log())[0]  # one structured line per request, with its stage times
    assert first["status"] == 200 and first["images"] == 2 and first["request_id"]
    assert {"total_ms", "preprocess_ms", "queue_ms", "inference_ms"} <= set(first)
