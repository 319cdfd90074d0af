"""Per-request deadlines over real HTTP with a fake backend: a request whose deadline passes while
its images are queued gets 504 and its images never reach the model. The model is held by a gate, so
"answered at its deadline, not when the model got to it" is a fact of ordering, not of timing."""

from __future__ import annotations

import threading

import httpx
import pytest

from tests.e2e.test_failures import b64_image
from tests.fakes import FakeBackend, serve_engine, wait_until

pytestmark = pytest.mark.slow


class Busy:
    """Two one-image requests in the background: one running on the model, one handed over behind it
    (the batcher prefetches one batch), so that the next request's images stay queued."""

    def __init__(self, url: str, backend: FakeBackend) -> None:
        self.responses: list[httpx.Response] = []
        self.threads = [threading.Thread(target=lambda: self.responses.append(
            httpx.post(url + "/embed", json={"inputs": [b64_image()]}, headers={"x-request-timeout-ms": "60000"},
                       timeout=30))) for _ in range(2)]
        self.threads[0].start()
        assert backend.entered.wait(10)
        self.threads[1].start()
        wait_until(lambda: backend.handed_over == 2, "the second request handed over behind the first")

    def join(self) -> list[int]:
        for thread in self.threads:
            thread.join()
        return [r.status_code for r in self.responses]


def test_request_past_its_deadline_while_queued_is_504_and_dropped_before_inference():
    backend = FakeBackend(gated=True)
    with serve_engine(backend) as url:
        busy = Busy(url, backend)
        late = httpx.post(url + "/embed", json={"inputs": [b64_image(), b64_image()]},
                          headers={"x-request-timeout-ms": "200"}, timeout=30)
        assert not busy.responses  # answered while the model still held the earlier requests
        backend.release.set()
        busy_statuses = busy.join()
        after = httpx.post(url + "/embed", json={"inputs": [b64_image()]}, timeout=30)
        metrics = httpx.get(url + "/metrics").text
    assert late.status_code == 504, late.text
    assert late.json()["error_type"] == "DeadlineExceeded" and "deadline" in late.json()["error"]
    assert busy_statuses == [200, 200] and after.status_code == 200
    assert backend.batch_sizes == [1, 1, 1], "the late request's images must never reach the model"
    assert 'iei_requests_total{outcome="DeadlineExceeded",route="/embed"} 1.0' in metrics
    assert 'iei_failures_total{error_type="DeadlineExceeded"} 1.0' in metrics


def test_server_default_deadline_applies_without_the_header():
    backend = FakeBackend(gated=True)
    with serve_engine(backend, request_timeout_ms=150) as url:
        busy = Busy(url, backend)
        late = httpx.post(url + "/v1/embeddings", json={"input": [b64_image()]}, timeout=30)
        backend.release.set()
        assert busy.join() == [200, 200]
        generous = httpx.post(url + "/embed", json={"inputs": [b64_image()]},
                              headers={"x-request-timeout-ms": "5000"}, timeout=30)
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout"
    assert generous.status_code == 200


def test_bad_deadline_header_is_422():
    with serve_engine(FakeBackend()) as url:
        for value in ("soon", "-5", "0", "nan", "inf"):
            response = httpx.post(url + "/embed", json={"inputs": [b64_image()]},
                                  headers={"x-request-timeout-ms": value})
            assert response.status_code == 422 and "x-request-timeout-ms" in response.json()["error"], value
