"""The model runs in its own process: if it dies, the server stays up, answers 424/503 meanwhile,
starts a new one, and serves again."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from tests.server_process import loads_torch, running_server

pytestmark = pytest.mark.slow


def access_lines(log: str) -> list[dict]:
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [e for e in entries if e["logger"] == "iei.access"]


def test_only_the_model_process_loads_torch(vit_server):
    """The HTTP process never imports torch (nor transformers, which pulls it in): the model process reads
    the model's preprocessing and tokenizer and hands them over. That saves seconds at every start and stop."""
    assert not loads_torch(vit_server.process.pid)
    assert loads_torch(vit_server.model_pids()[-1])


def test_killed_model_process_is_replaced(tiny_model, seed_base64, server_logs):
    with running_server("--model", str(tiny_model("convnext")), "--preprocess-workers", "1", "--log-format", "json",
                        log_dir=server_logs) as server:
        body = {"inputs": seed_base64[:2]}
        assert httpx.post(server.url + "/embed", json=body, timeout=60).status_code == 200
        (pid,) = server.model_pids()
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
        assert len(server.model_pids()) == 2 and server.process.poll() is None
    first = access_lines(server.log())[0]  # one structured line per request, with its stage times
    assert first["status"] == 200 and first["images"] == 2 and first["request_id"]
    assert {"total_ms", "preprocess_ms", "queue_ms", "inference_ms"} <= set(first)
