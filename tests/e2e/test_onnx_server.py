"""The real server with the ONNX Runtime backend: same vectors as transformers, /info says what runs,
and `iei export` output is served directly."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from iei.cli import main  # noqa: E402
from tests.e2e.reference import cosine, reference_embeddings  # noqa: E402
from tests.server_process import loads_torch, running_server  # noqa: E402

pytestmark = pytest.mark.slow


def _onnx_server(model_dir, cache_dir, server_logs, *extra: str):
    return running_server("--model", str(model_dir), "--backend", "onnx", "--onnx-cache-dir", str(cache_dir),
                          "--preprocess-workers", "1", "--backend-threads", "1", *extra, log_dir=server_logs)


@pytest.mark.parametrize("family", ["vit", "deit", "beit", "swin", "convnext"])
def test_onnx_server_matches_transformers(family, tiny_model, seed_base64, seed_images, server_logs, tmp_path):
    model_dir = tiny_model(family)
    expected = reference_embeddings(model_dir, seed_images)  # transformers' processor + torch model, fp32
    with _onnx_server(model_dir, tmp_path, server_logs) as server:
        response = httpx.post(server.url + "/embed", json={"inputs": seed_base64, "normalize": False}, timeout=60)
        info = httpx.get(server.url + "/info").json()
    assert response.status_code == 200, response.text
    vectors = np.array(response.json())
    assert np.abs(vectors - expected).max() <= 1e-4  # the parity bar, pooled vectors
    assert info["embedding_dim"] == expected.shape[1]
    assert info["backend"] == "onnx" and info["provider"] == "CPUExecutionProvider"
    assert info["model_precision"] == "fp32" and info["model_file"].endswith(".onnx")


def test_int8_server_serves_the_contract(tiny_model, seed_base64, seed_images, server_logs, tmp_path):
    """Dynamic int8 through every input route: JSON, multipart, raw body and /v1/embeddings agree with
    each other exactly and with fp32 transformers closely."""
    model_dir = tiny_model("vit")
    expected = reference_embeddings(model_dir, seed_images)
    with _onnx_server(model_dir, tmp_path, server_logs, "--quantize", "int8") as server:
        url = server.url
        as_json = httpx.post(url + "/embed", json={"inputs": seed_base64, "normalize": False}, timeout=60)
        files = [("inputs", (f"{i}.png", data, "image/png")) for i, data in enumerate(seed_images)]
        multipart = httpx.post(url + "/embed?normalize=false", files=files, timeout=60)
        raw = httpx.post(url + "/embed?normalize=false", content=seed_images[0],
                         headers={"content-type": "image/png"}, timeout=60)
        openai = httpx.post(url + "/v1/embeddings", json={"input": seed_base64[:2], "model": "m"}, timeout=60)
        info = httpx.get(url + "/info").json()
    for response in (as_json, multipart, raw, openai):
        assert response.status_code == 200, response.text
    vectors = np.array(as_json.json())
    assert cosine(vectors, expected).min() >= 0.99  # tiny random model; vit-base is measured in test_onnx_backend
    np.testing.assert_array_equal(np.array(multipart.json()), vectors)
    np.testing.assert_array_equal(np.array(raw.json())[0], vectors[0])
    normalised = vectors[:2] / np.linalg.norm(vectors[:2], axis=1, keepdims=True)
    np.testing.assert_allclose([d["embedding"] for d in openai.json()["data"]], normalised, atol=1e-6)
    assert info["model_precision"] == "int8" and info["backend"] == "onnx"


def test_exported_folder_is_served(tiny_model, seed_base64, seed_images, server_logs, tmp_path, capsys):
    model_dir = tiny_model("deit")
    out = tmp_path / "deit-onnx"
    assert main(["export", str(model_dir), "--output", str(out), "--optimize", "O1"]) == 0
    assert "serve it with" in capsys.readouterr().out
    assert main(["export", str(model_dir), "--output", str(out)]) == 2  # not empty: refused
    expected = reference_embeddings(model_dir, seed_images)
    with running_server("--model", str(out), "--backend", "onnx", "--onnx-cache-dir", str(tmp_path / "cache"),
                        "--preprocess-workers", "1", log_dir=server_logs) as server:
        response = httpx.post(server.url + "/embed", json={"inputs": seed_base64[:2], "normalize": False}, timeout=60)
        assert not loads_torch(server.model_pids()[-1])  # an export needs only ONNX Runtime: ~6 s and ~250 MB saved
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()), expected[:2], atol=1e-4)
    assert not (tmp_path / "cache").exists()


def test_cuda_without_gpu_provider_fails_at_start(tiny_model, server_logs, tmp_path):
    with running_server("--model", str(tiny_model("vit")), "--backend", "onnx", "--device", "cuda",
                        "--onnx-cache-dir", str(tmp_path), log_dir=server_logs, expect_ready=False) as server:
        assert server.process.wait(timeout=60) == 2
    assert "onnxruntime-gpu" in server.log() and "Traceback" not in server.log()
