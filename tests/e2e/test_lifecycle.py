"""Faults and shutdown of a real `iei serve` process (tiny real model): a killed preprocessing worker
under load, a hung model caught by the watchdog, and SIGTERM's graceful drain."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time

import httpx
import pytest

from tests.fakes import wait_until
from tests.server_process import running_server

pytestmark = pytest.mark.slow


def worker_pids(log: str) -> list[int]:
    match = re.search(r"preprocessing pool ready: \d+ workers \(pids ([\d ]+)\)", log)
    assert match, log
    return [int(pid) for pid in match.group(1).split()]


def wait_healthy(url: str, timeout_s: float = 90) -> None:
    wait_until(lambda: httpx.get(url + "/health").status_code == 200, "the server to become healthy again", timeout_s)


def test_killed_preprocessing_worker_under_load_fails_at_most_its_one_request(tiny_model, seed_base64, server_logs):
    with running_server("--model", str(tiny_model("vit")), "--preprocess-workers", "2", "--backend-threads", "1",
                        log_dir=server_logs) as server:
        victim = worker_pids(server.log())[0]
        body = {"inputs": seed_base64[:2]}

        def client(_: int) -> list[httpx.Response]:
            return [httpx.post(server.url + "/embed", json=body, timeout=60) for _ in range(4)]

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            running = pool.map(client, range(6))
            # the load is on the workers before one is killed
            wait_until(lambda: inflight_images(server.url) > 0, "a request to reach the server", timeout_s=60)
            os.kill(victim, signal.SIGKILL)
            responses = [r for batch in running for r in batch]
        failed = [r for r in responses if r.status_code != 200]
        assert len(failed) <= 1, [r.text for r in failed]  # only the image the worker was on fails
        for response in failed:
            assert response.status_code == 424 and "preprocessing worker" in response.json()["error"]
        deadline = time.monotonic() + 30
        while "preprocessing worker 0 is back" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert httpx.post(server.url + "/embed", json=body, timeout=60).status_code == 200
        assert httpx.get(server.url + "/health").status_code == 200


def test_hung_model_is_killed_by_the_watchdog_and_restarted(tiny_model, seed_base64, server_logs):
    with running_server("--model", str(tiny_model("vit")), "--preprocess-workers", "1", "--backend-threads", "1",
                        "--batch-timeout-ms", "1000", log_dir=server_logs) as server:
        body = {"inputs": seed_base64[:1]}
        assert httpx.post(server.url + "/embed", json=body, timeout=60).status_code == 200
        (pid,) = server.model_pids()
        os.kill(pid, signal.SIGSTOP)  # hangs like a deadlocked kernel would: alive, never answers
        hung = httpx.post(server.url + "/embed", json=body, timeout=60)
        assert hung.status_code == 424, hung.text
        assert "batch_timeout_ms" in hung.json()["error"]  # only the watchdog answers for a stopped model
        wait_healthy(server.url)
        assert httpx.post(server.url + "/embed", json=body, timeout=60).status_code == 200
        assert len(server.model_pids()) == 2 and server.process.poll() is None


def inflight_images(url: str) -> int:
    match = re.search(r"^iei_inflight_images (\S+)$", httpx.get(url + "/metrics").text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


def test_sigterm_finishes_in_flight_requests_then_exits_0(tiny_model, seed_base64, server_logs):
    with running_server("--model", str(tiny_model("vit")), "--preprocess-workers", "1", "--backend-threads", "1",
                        "--shutdown-timeout-s", "20", log_dir=server_logs) as server:
        body = {"inputs": seed_base64 * 2}  # 12 large PNGs: seconds of decoding on one worker for 6 clients

        def client(_: int) -> httpx.Response | Exception:
            try:
                return httpx.post(server.url + "/embed", json=body, timeout=60)
            except httpx.TransportError as e:  # not yet accepted when the listener closed: refused
                return e

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            running = [pool.submit(client, i) for i in range(6)]
            wait_until(lambda: inflight_images(server.url) >= 24, "two requests admitted", timeout_s=60)
            admitted = inflight_images(server.url) // 12
            server.process.send_signal(signal.SIGTERM)
            refused = None
            while refused is None and server.process.poll() is None:
                try:  # new work is refused while the admitted requests finish
                    status = httpx.get(server.url + "/health", timeout=5).status_code
                    refused = status == 503 or None
                except httpx.TransportError:
                    refused = True
                time.sleep(0.05)
            results = [future.result() for future in running]
        answered = [r for r in results if isinstance(r, httpx.Response)]
        # A request that reached the server but was not admitted before SIGTERM is refused with a 503 that says
        # why (or, once the listener is closed, at connect time); every admitted one is finished.
        finished = [r for r in answered if r.status_code == 200]
        turned_away = [r for r in answered if r.status_code == 503 and r.json()["error_type"] == "Unhealthy"]
        assert len(finished) + len(turned_away) == len(answered), [r.text for r in answered]
        assert all(len(r.json()) == 12 for r in finished)
        assert len(finished) >= admitted >= 2  # every request in flight at SIGTERM was finished
        assert refused, "the server kept accepting work after SIGTERM"
        assert server.process.wait(timeout=60) == 0, server.log()
