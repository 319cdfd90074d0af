"""A server killed (SIGKILL) mid-job resumes the job on restart from the same database: every input
ends with a result, and the results committed before the kill are kept as they were, not recomputed."""

from __future__ import annotations

import sqlite3

import httpx
import numpy as np
import pytest

from tests.e2e.batch_client import (
    JSONL,
    image_lines,
    jsonl,
    result_lines,
    small_images,
    wait_for_job,
)
from tests.server_process import running_server

pytestmark = pytest.mark.slow

INPUTS = 800


def stored_results(db) -> dict[int, tuple[bytes, float]]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT idx, vector, finished_at FROM results").fetchall()
    return {idx: (vector, finished_at) for idx, vector, finished_at in rows}


def job_status(db) -> str:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT status FROM jobs").fetchone()[0]


def test_a_killed_server_resumes_its_job_without_recomputing_finished_results(tiny_model, server_logs, tmp_path):
    db = tmp_path / "jobs.sqlite3"
    args = ("--model", str(tiny_model("vit")), "--preprocess-workers", "2", "--backend-threads", "1",
            "--max-batch-delay-ms", "5", "--batch-db", str(db))
    body = jsonl(image_lines(small_images(100, seed=21, size=(24, 24))) * (INPUTS // 100))
    with running_server(*args, log_dir=server_logs) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        job_id = client.post("/batches", content=body, headers=JSONL).json()["id"]
        first = wait_for_job(client, job_id, until=lambda job: job["progress"]["done"] >= 64)
        server.process.kill()
        server.process.wait()
    assert first["progress"]["done"] < INPUTS, "the job finished before the kill: make it bigger"
    before = stored_results(db)
    assert job_status(db) == "running" and 64 <= len(before) < INPUTS

    with running_server(*args, log_dir=server_logs) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        job = wait_for_job(client, job_id, timeout_s=120)
        assert job["status"] == "completed" and job["progress"] == {"total": INPUTS, "done": INPUTS, "errors": 0}
        lines = result_lines(client, job_id)
        assert "resuming 1 unfinished batch job" in server.log()
    assert [line["index"] for line in lines] == list(range(INPUTS))
    after = stored_results(db)
    assert {idx: after[idx] for idx in before} == before  # same bytes, same commit time: not recomputed
    for idx in list(before)[:50]:
        assert np.frombuffer(before[idx][0], "<f4").tolist() == lines[idx]["embedding"]
    # line i and line i + 100 are the same image: the resumed half agrees with the first
    np.testing.assert_allclose([lines[i]["embedding"] for i in range(100)],
                               [lines[i]["embedding"] for i in range(INPUTS - 100, INPUTS)], atol=1e-5)
