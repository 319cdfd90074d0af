"""Background batch jobs over real HTTP (tiny ViT server): submit JSONL or multipart, poll, results
equal to /embed's (JSONL and Parquet), per-line errors, path inputs confined to the input root,
options, cancellation, auth and the errors of the routes."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

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
from tests.server_process import REPO, running_server

pytestmark = pytest.mark.slow  # every test here shares a server

KEY = "batch-secret"
AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def input_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("batch-inputs")
    (root / "sub").mkdir()
    (tmp_path_factory.getbasetemp() / "outside.png").write_bytes(small_images(1, seed=3)[0])
    return root


@pytest.fixture(scope="module")
def client(tiny_model, server_logs, input_root, tmp_path_factory):
    db = tmp_path_factory.mktemp("batch-db") / "jobs.sqlite3"
    args = ("--model", str(tiny_model("vit")), "--preprocess-workers", "2", "--backend-threads", "1",
            "--max-batch-delay-ms", "5", "--api-key", KEY, "--batch-db", str(db), "--batch-input-root", str(input_root),
            "--batch-max-inputs", "5000")
    with running_server(*args, log_dir=server_logs) as server, \
            httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as http:
        yield http


def embed(client: httpx.Client, images: list[bytes], **options) -> np.ndarray:
    response = client.post("/embed", json={"inputs": [base64.b64encode(b).decode() for b in images], **options})
    assert response.status_code == 200, response.text
    return np.array(response.json())


def vectors(lines: list[dict]) -> np.ndarray:
    return np.array([line["embedding"] for line in lines])


def test_a_jsonl_job_gives_embed_vectors_and_a_per_line_error(client, seed_images):
    images = small_images(20) + seed_images[:2]
    lines = image_lines(images)
    lines.insert(5, {"image": base64.b64encode(b"not an image").decode()})
    response = client.post("/batches", content=jsonl(lines), headers=JSONL)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["progress"] == {"total": 23, "done": 0, "errors": 0}
    assert response.headers["location"] == f"/batches/{job['id']}"
    done = wait_for_job(client, job["id"])
    assert done["status"] == "completed" and done["progress"] == {"total": 23, "done": 23, "errors": 1}
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    assert done["images_per_s"] > 0 and done["eta_s"] is None
    results = result_lines(client, job["id"])
    assert [line["index"] for line in results] == list(range(23))
    assert results[5] == {"index": 5, "error": {"message": results[5]["error"]["message"], "error_type": "Validation"}}
    assert "decodable" in results[5]["error"]["message"] or "image" in results[5]["error"]["message"]
    good = results[:5] + results[6:]
    np.testing.assert_allclose(vectors(good), embed(client, images[:16]).tolist() + embed(client, images[16:]).tolist(),
                               atol=1e-5)


def test_a_multipart_job_with_options_and_its_parquet_download(client):
    pyarrow_parquet = pytest.importorskip("pyarrow.parquet")
    images = small_images(6, seed=11)
    files = {"file": ("job.jsonl", jsonl(image_lines(images)), "application/jsonl")}
    response = client.post("/batches", files=files, data={"normalize": "false", "dimensions": "8"})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert (job["status"], job["normalize"], job["dimensions"]) == ("completed", False, 8)
    expected = embed(client, images, normalize=False, dimensions=8)
    np.testing.assert_allclose(vectors(result_lines(client, job["id"])), expected, atol=1e-5)
    for request in ({"params": {"format": "parquet"}}, {"headers": {"accept": "application/vnd.apache.parquet"}}):
        download = client.get(f"/batches/{job['id']}/results", **request)
        assert download.status_code == 200 and download.headers["content-type"] == "application/vnd.apache.parquet"
        table = pyarrow_parquet.read_table(io.BytesIO(download.content))
        assert table.column_names == ["index", "embedding", "error_type", "error"]
        assert table.column("index").to_pylist() == list(range(6))
        np.testing.assert_allclose(np.array(table.column("embedding").to_pylist()), expected, atol=1e-5)
        assert table.column("error").to_pylist() == [None] * 6


def test_path_inputs_are_read_inside_the_input_root_only(client, input_root):
    images = small_images(2, seed=5)
    (input_root / "sub" / "a.png").write_bytes(images[0])
    (input_root / "b.png").write_bytes(images[1])
    lines = [{"path": "sub/a.png"}, {"path": str(input_root / "b.png")}, {"path": "../outside.png"},
             {"path": "sub/../../outside.png"}, {"path": "missing.png"}]
    job = client.post("/batches", content=jsonl(lines), headers={"content-type": "application/x-ndjson"}).json()
    job = wait_for_job(client, job["id"])
    assert job["progress"] == {"total": 5, "done": 5, "errors": 3}
    results = result_lines(client, job["id"])
    np.testing.assert_allclose(vectors(results[:2]), embed(client, images), atol=1e-5)
    for line in results[2:4]:
        assert "outside the batch input root" in line["error"]["message"]
    assert "cannot be read" in results[4]["error"]["message"]


def test_cancelling_keeps_finished_results_and_is_idempotent(client):
    images = small_images(50, seed=13)
    job = client.post("/batches", content=jsonl(image_lines(images) * 40), headers=JSONL).json()
    running = wait_for_job(client, job["id"], until=lambda j: j["progress"]["done"] > 0)
    assert running["status"] == "running" and running["images_per_s"] > 0 and running["eta_s"] > 0
    assert running["finished_at"] is None and running["started_at"] is not None
    cancelled = client.delete(f"/batches/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.delete(f"/batches/{job['id']}").json()
    assert again["status"] == "cancelled" and again["finished_at"] == cancelled.json()["finished_at"]
    settled = wait_for_job(client, job["id"], until=lambda j: j["progress"]["done"] == len(result_lines(client, j["id"])))
    assert settled["status"] == "cancelled" and 0 < settled["progress"]["done"] < 2000
    done = client.post("/batches", content=jsonl(image_lines(images[:1])), headers=JSONL).json()
    wait_for_job(client, done["id"])
    assert client.delete(f"/batches/{done['id']}").json()["status"] == "completed"  # a finished job stays as it was
    assert done["id"] in [j["id"] for j in client.get("/batches").json()["data"]]


@pytest.mark.parametrize(("method", "path"), [("GET", "/batches/nope"), ("GET", "/batches/nope/results"),
                                               ("DELETE", "/batches/nope")])
def test_unknown_jobs_are_404(client, method, path):
    response = client.request(method, path)
    assert response.status_code == 404
    assert response.json() == {"error": "no batch job 'nope'", "error_type": "NotFound"}


@pytest.mark.parametrize(("body", "content_type", "status", "message"), [
    (b'{"image": "AAAA"}\n{"image": "AAAA"\n', "application/jsonl", 422, "line 2: invalid JSON"),
    (b"\n\n", "application/jsonl", 422, "the job holds no input"),
    (b'{"image": "AAAA"}\n' * 5001, "application/jsonl", 422, "the limit is 5000"),
    (b'{"image": "AAAA"}', "text/plain", 415, "application/jsonl"),
])
def test_bad_submissions_are_refused_up_front(client, body, content_type, status, message):
    response = client.post("/batches", content=body, headers={"content-type": content_type})
    assert response.status_code == status and message in response.json()["error"], response.text


def test_bad_options_and_formats_are_422(client):
    body = jsonl(image_lines(small_images(1)))
    assert client.post("/batches?dimensions=0", content=body, headers=JSONL).status_code == 422
    assert client.post("/batches", files={"other": ("x", body)}).status_code == 422
    job = client.post("/batches", content=body, headers=JSONL).json()
    assert client.get(f"/batches/{job['id']}/results", params={"format": "csv"}).status_code == 422
    assert client.get("/batches", params={"limit": "0"}).status_code == 422


def test_batch_routes_need_the_api_key(client):
    for method, path in (("GET", "/batches"), ("POST", "/batches"), ("GET", "/batches/x"), ("DELETE", "/batches/x")):
        response = client.request(method, path, headers={"authorization": "Bearer wrong"})
        assert response.status_code == 401 and response.json()["error_type"] == "Unauthorized"


def test_the_priority_benchmark_runs_against_this_server_with_a_job_throughout(client, input_root, tmp_path):
    """benchmarks/batches_priority.py against this server: online load in alternating rounds without and
    with a job running the whole round. The p99 ratio (job / no job, 1.5x the goal) is a speed claim: it
    is measured and reported by the benchmark (results/batches_priority.md), not asserted here, where a
    busy shared host would make it flake. What must hold on any host: the job ran through every job round
    and the online requests were all served."""
    out = tmp_path / "priority.json"
    command = [sys.executable, str(REPO / "benchmarks" / "batches_priority.py"), "--url", str(client.base_url),
               "--input-root", str(input_root), "--api-key", KEY, "--rounds", "2", "--round-s", "2",
               "--job-lines", "5000", "--out", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    print(run.stdout)  # the figures, for -s
    result = json.loads(out.read_text())
    assert result["job_running_throughout"] and min(result["job_img_per_s"]) > 0
