"""Overload: more images than the admission limit while the model is held. The ones over the limit get
429 with Retry-After while the model still holds the admitted ones (so "at once" is shown by ordering,
not timed), the admitted ones are all served once it lets go, and the server serves normally after.
Latency under overload (p99 flat at 3x capacity, 429s in milliseconds) is a speed claim: it is measured
by benchmarks/overload_bench.py, not asserted here."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from tests.e2e.test_failures import b64_image
from tests.fakes import FakeBackend, metric, serve_engine, wait_until

pytestmark = pytest.mark.slow

LIMIT = 2


def test_requests_over_the_admission_limit_are_refused_while_the_admitted_wait():
    backend = FakeBackend(gated=True)
    body = {"inputs": [b64_image()]}
    with serve_engine(backend, max_concurrent_requests=LIMIT, max_batch_size=LIMIT) as url, \
            concurrent.futures.ThreadPoolExecutor(LIMIT) as pool:
        admitted = [pool.submit(httpx.post, url + "/embed", json=body, timeout=60) for _ in range(LIMIT)]
        wait_until(lambda: metric(url, "iei_inflight_images") == LIMIT, "the admitted images in flight")
        refused = [httpx.post(url + "/embed", json=body, timeout=60) for _ in range(3 * LIMIT)]
        assert not any(f.done() for f in admitted)  # the refusals came back while the model held the rest
        backend.release.set()
        statuses = [f.result().status_code for f in admitted]
        after = httpx.post(url + "/embed", json=body, timeout=60)
        rejected_total = metric(url, 'iei_requests_total{outcome="Overloaded"')
    assert statuses == [200] * LIMIT and after.status_code == 200
    assert {r.status_code for r in refused} == {429}
    assert all(r.json()["error_type"] == "Overloaded" and int(r.headers["retry-after"]) >= 1 for r in refused)
    assert rejected_total == 3 * LIMIT
    assert sum(backend.batch_sizes) == LIMIT + 1, "a refused image never reached the model"
