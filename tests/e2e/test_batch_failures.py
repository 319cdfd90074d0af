"""Batch jobs when the model fails, and a second server on the same database (fake backend, real HTTP)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.batch_client import (
    JSONL,
    image_lines,
    jsonl,
    result_lines,
    small_images,
    wait_for_job,
)
from tests.fakes import FakeBackend, serve_engine

pytestmark = pytest.mark.slow  # every test here starts a server


def test_a_failing_model_gives_per_input_errors_and_the_job_still_completes():
    backend = FakeBackend()
    with serve_engine(backend) as url, httpx.Client(base_url=url, timeout=30) as client:
        backend.fail = True
        job = client.post("/batches", content=jsonl(image_lines(small_images(3))), headers=JSONL).json()
        job = wait_for_job(client, job["id"])
        assert job["status"] == "completed" and job["progress"] == {"total": 3, "done": 3, "errors": 3}
        assert {line["error"]["error_type"] for line in result_lines(client, job["id"])} == {"Backend"}
        backend.fail = False
        job = client.post("/batches", content=jsonl(image_lines(small_images(3))), headers=JSONL).json()
        assert wait_for_job(client, job["id"])["progress"]["errors"] == 0


def test_a_second_server_on_the_same_database_refuses_jobs_but_serves(tmp_path):
    db = str(tmp_path / "jobs.sqlite3")
    with serve_engine(FakeBackend(), batch_db=db) as first, serve_engine(FakeBackend(), batch_db=db) as second:
        assert httpx.get(first + "/batches").status_code == 200
        refused = httpx.post(second + "/batches", content=b'{"image": "AAAA"}', headers=JSONL)
        assert refused.status_code == 503 and "could not open its job database" in refused.json()["error"]
        assert httpx.get(second + "/health").status_code == 200


def test_no_batch_jobs_removes_the_routes():
    with serve_engine(FakeBackend(), batch_jobs=False) as url:
        assert httpx.get(url + "/batches").status_code == 404
