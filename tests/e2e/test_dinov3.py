"""DINOv3 through a real server, one case per architecture: the ViT on torch, the ConvNeXt as an `iei export`
folder on ONNX Runtime (no torch in the model process). Vectors are the authors' embedding (`pooler_output`)
on a reference that preprocesses with torch's antialiased interpolate, within the documented resize
tolerance (the pixels are rounded once into the 8-bit slab: docs/models.md#dinov3)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from iei.cli import main as cli_main
from tests.dinov3.reference import dinov3_reference
from tests.e2e.reference import cosine
from tests.server_process import loads_torch, running_server

pytestmark = pytest.mark.slow

CASES = [("dinov3_vit", "torch"), ("dinov3_convnext", "onnx-export")]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{b}" for f, b in CASES])
def served(request, tiny_model, server_logs, tmp_path_factory):
    family, backend = request.param
    model = tiny_model(family)
    if backend == "onnx-export":
        pytest.importorskip("onnxruntime")
        model = tmp_path_factory.mktemp("export") / family
        assert cli_main(["export", str(tiny_model(family)), "--output", str(model)]) == 0
    args = ["--model", str(model), "--backend", backend.removesuffix("-export"), "--preprocess-workers", "2",
            "--backend-threads", "1", "--max-batch-delay-ms", "5"]
    with running_server(*args, log_dir=server_logs, timeout_s=180) as server:
        if backend == "onnx-export":
            assert not loads_torch(server.model_pids()[-1])
        yield family, server


def test_image_vectors_are_pooler_output_within_the_resize_tolerance(served, tiny_model, seed_images, seed_base64):
    family, server = served
    expected = dinov3_reference(tiny_model(family), seed_images)
    response = httpx.post(server.url + "/embed", json={"inputs": seed_base64, "normalize": False}, timeout=60)
    assert response.status_code == 200, response.text
    vectors = np.array(response.json())
    assert cosine(vectors, expected).min() > 0.99999
    np.testing.assert_allclose(vectors, expected, atol=2e-3, rtol=0)
    info = httpx.get(server.url + "/info").json()
    assert (info["model_type"], info["embedding_dim"]) == ({"embedding": {"pooling": "pooler"}}, 32)
    assert info["image_size"] == {"height": 224, "width": 224} and info["modalities"] == ["image"]
    text = httpx.post(server.url + "/embed", json={"inputs": ["a cat"], "modality": "text"}, timeout=60)
    assert text.status_code == 422 and "embeds images only" in text.text
