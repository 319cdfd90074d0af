"""SigLIP 2 NaFlex through a real server, on the torch and ONNX backends: images of different aspect ratios,
sent together so they share batches, each get `get_image_features` of its own patch grid; texts get
`get_text_features`; /info says how images are cut."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.reference import naflex_reference, text_reference
from iei.cli import main as cli_main
from tests.server_process import loads_torch, running_server

pytestmark = pytest.mark.slow

TEXTS = ["a photo of a cat", "", "a leather bag"]


def _jpeg(width: int, height: int, seed: int) -> bytes:
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    noise = np.random.default_rng(seed).normal(0, 20, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["torch", "onnx-export"])
def served(request, tiny_model, server_logs, tmp_path_factory):
    """torch, and an `iei export` folder on ONNX Runtime (the position table travels in the folder, and the
    model process serves it with no torch loaded)."""
    model = tiny_model("siglip2")
    if request.param == "onnx-export":
        pytest.importorskip("onnxruntime")
        model = tmp_path_factory.mktemp("export") / "siglip2"
        assert cli_main(["export", str(tiny_model("siglip2")), "--output", str(model)]) == 0
        assert (model / "position_embedding.npy").is_file()
    args = ["--model", str(model), "--backend", request.param.removesuffix("-export"), "--preprocess-workers", "2",
            "--backend-threads", "1", "--max-batch-delay-ms", "20"]
    with running_server(*args, log_dir=server_logs, timeout_s=300) as server:
        if request.param == "onnx-export":
            assert not loads_torch(server.model_pids()[-1])
        yield server


def test_mixed_grids_in_one_batch_are_each_images_own_vector(served, tiny_model, seed_images):
    # the seed PNGs (portrait, RGBA) and JPEG photos of other shapes; --draft-decode is on, so these JPEGs
    # are small enough to be decoded at full size (the exact path)
    images = seed_images[:3] + [_jpeg(400, 300, 1), _jpeg(120, 900, 2), _jpeg(64, 64, 3)]
    expected = naflex_reference(tiny_model("siglip2"), images)
    encoded = [base64.b64encode(data).decode() for data in images]
    together = httpx.post(served.url + "/embed", json={"inputs": encoded, "normalize": False}, timeout=120)
    assert together.status_code == 200, together.text
    np.testing.assert_allclose(np.array(together.json()), expected, atol=1e-4, rtol=0)
    for data, want in zip(encoded[3:], expected[3:]):
        alone = httpx.post(served.url + "/embed", json={"inputs": [data], "normalize": False}, timeout=60)
        np.testing.assert_allclose(np.array(alone.json())[0], want, atol=1e-4, rtol=0)
    info = httpx.get(served.url + "/info").json()
    assert (info["max_num_patches"], info["patch_size"], info["embedding_dim"]) == (256, 16, 32)
    assert info["model_type"] == {"embedding": {"pooling": "pooler"}} and info["modalities"] == ["image", "text"]


def test_texts_are_get_text_features(served, tiny_model):
    response = httpx.post(served.url + "/embed", json={"inputs": TEXTS, "modality": "text", "normalize": False},
                          timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()), text_reference(tiny_model("siglip2"), TEXTS), atol=1e-4)

