"""The real server with the ONNX Runtime backend: same vectors as transformers, /info says what runs,
and `iei export` output is served directly."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from iei.cli import main  # noqa: E402
from tests.e2e.reference import cosine, reference_embeddings  # noqa: E402
from tests.server_process import running_server  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_onnx_server_matches_transformers(family, tiny_model, seed_base64, seed_images, server_logs, tmp_path):
    model_dir = tiny_model(family)
    expected = reference_embeddings(model_dir, seed_images)
    with running_server("--model", str(model_dir), "--backend", "onnx", "--onnx-cache-dir", str(tmp_path),
                        "--preprocess-workers", "1", "--backend-threads", "1", log_dir=server_logs) as server:
        response = httpx.post(server.url + "/embed", json={"inputs": seed_base64, "normalize": False}, timeout=60)
        info = httpx.get(server.url + "/info").json()
    assert response.status_code == 200, response.text
    vectors = np.array(response.json())
    assert cosine(vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    assert info["embedding_dim"] == expected.shape[1]
    assert info["backend"] == "onnx" and info["provider"] == "CPUExecutionProvider"
    assert info["model_precision"] == "fp32" and info["model_file"].endswith(".onnx")


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
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()), expected[:2], atol=1e-4)
    assert not (tmp_path / "cache").exists()


def test_cuda_without_gpu_provider_fails_at_start(tiny_model, server_logs, tmp_path):
    with running_server("--model", str(tiny_model("vit")), "--backend", "onnx", "--device", "cuda",
                        "--onnx-cache-dir", str(tmp_path), log_dir=server_logs, expect_ready=False) as server:
        assert server.process.wait(timeout=60) == 2
    assert "onnxruntime-gpu" in server.log() and "Traceback" not in server.log()
