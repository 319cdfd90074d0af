"""Admission (429), backend failure (424) and health flips (503), over real HTTP with a fake backend.
Tests synchronise on what they can observe (the gated backend's `entered`, metrics), never on time."""

from __future__ import annotations

import base64
import io
import threading

import httpx
import numpy as np
import pytest
from PIL import Image

from iei.errors import BATCH_FAILED
from tests.fakes import FakeBackend, metric, serve_engine, wait_until

pytestmark = pytest.mark.slow


def b64_image(color=(10, 200, 30), size=(40, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_over_admission_limit_gets_429_at_once_with_retry_after():
    backend = FakeBackend(gated=True)
    with serve_engine(backend, max_concurrent_requests=2) as url:
        slow: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: slow.append(
            httpx.post(url + "/embed", json={"inputs": [b64_image(), b64_image()]}, timeout=30)))
        worker.start()
        assert backend.entered.wait(10)
        # answered while the model is still held: rejected without waiting for it
        rejected = httpx.post(url + "/embed", json={"inputs": [b64_image()]}, timeout=30)
        backend.release.set()
        worker.join()
    assert rejected.status_code == 429 and rejected.json()["error_type"] == "Overloaded"
    assert int(rejected.headers["retry-after"]) >= 1
    assert sum(backend.batch_sizes) == 2  # the rejected image never reached the model
    assert slow[0].status_code == 200 and len(slow[0].json()) == 2


def test_backend_failure_is_424_and_flips_health_until_a_batch_succeeds():
    backend = FakeBackend()
    with serve_engine(backend) as url:
        assert httpx.get(url + "/health").status_code == 200
        backend.fail = True
        failed = httpx.post(url + "/embed", json={"inputs": [b64_image()]}, headers={"x-request-id": "r-42"})
        # a fixed message naming the request id: the backend's own text ("fake failure ...") is only logged
        assert failed.status_code == 424 and failed.json() == {
            "error": f"{BATCH_FAILED} (request id r-42)", "error_type": "Backend"}
        assert failed.headers["x-request-id"] == "r-42"
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["error_type"] == "Unhealthy"
        backend.fail = False
        assert httpx.post(url + "/embed", json={"inputs": [b64_image()]}).status_code == 200
        assert httpx.get(url + "/health").status_code == 200


def test_vectors_are_each_clients_own_under_concurrency():
    backend = FakeBackend(delay_s=0.02)
    colors = [(i * 8 % 256, 255 - i * 8 % 256, i * 3 % 256) for i in range(32)]
    with serve_engine(backend, max_batch_delay_ms=10) as url:
        results: dict[int, list] = {}

        def call(i: int) -> None:
            results[i] = httpx.post(url + "/embed", json={"inputs": [b64_image(colors[i])], "normalize": False},
                                    timeout=30).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(colors))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for i, color in enumerate(colors):
        expected = np.array(color) / 255 + 1.0
        np.testing.assert_allclose(results[i][0][:3], expected, atol=1e-5)
    assert max(backend.batch_sizes) > 1


def test_api_key_required_on_inference_routes_only():
    with serve_engine(FakeBackend(), api_key="s3cret") as url:
        missing = httpx.post(url + "/embed", json={"inputs": [b64_image()]})
        assert missing.status_code == 401 and missing.json()["error_type"] == "Unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.post(url + "/v1/embeddings", json={"input": [b64_image()]}, headers={"authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
        ok = httpx.post(url + "/embed", json={"inputs": [b64_image()]}, headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/metrics").status_code == 200
        info = httpx.get(url + "/info")  # /info describes the deployment: keyed like the API
        assert info.status_code == 401 and info.json()["error_type"] == "Unauthorized"
        assert httpx.get(url + "/info", headers={"authorization": "Bearer s3cret"}).status_code == 200
        models = httpx.get(url + "/v1/models")
        assert models.status_code == 401 and models.json()["error"]["type"] == "authentication_error"


def test_health_probes_the_model_after_a_failure_and_recovers_without_traffic():
    backend = FakeBackend()
    with serve_engine(backend) as url:
        backend.fail = True
        assert httpx.post(url + "/embed", json={"inputs": [b64_image()]}).status_code == 424
        assert httpx.get(url + "/health").status_code == 503  # the probe batch fails too
        backend.fail = False
        assert httpx.get(url + "/health").status_code == 200  # the probe batch succeeds


def test_images_of_a_client_that_disconnected_are_dropped_before_inference():
    import socket
    from urllib.parse import urlparse

    backend = FakeBackend(gated=True)
    with serve_engine(backend, max_batch_delay_ms=60_000) as url:
        first: list[httpx.Response] = []
        busy = threading.Thread(target=lambda: first.append(
            httpx.post(url + "/embed", json={"inputs": [b64_image()]}, timeout=30)))
        busy.start()
        assert backend.entered.wait(10)  # the model is held busy with the first request
        body = ('{"inputs": ["%s", "%s"]}' % (b64_image(), b64_image())).encode()
        target = urlparse(url)
        with socket.create_connection((target.hostname, target.port)) as sock:
            sock.sendall(b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n" % len(body) + body)
            wait_until(lambda: metric(url, "iei_inflight_images") == 3, "the two images queued behind the model")
        wait_until(lambda: metric(url, 'iei_requests_total{outcome="ClientGone"') == 1, "the disconnect noticed")
        backend.release.set()
        busy.join()
        after = httpx.post(url + "/embed", json={"inputs": [b64_image()]}, timeout=30)
    assert first[0].status_code == 200 and after.status_code == 200
    assert backend.batch_sizes == [1, 1], "the disconnected client's two images must never reach the model"
