"""CLIP, SigLIP, DINOv2, SigLIP 2 FixRes, MetaCLIP 2 and AIMv2 through a real server, on the torch and ONNX
backends: image vectors are the authors' embedding, text vectors are `get_text_features` (same space), an
image-only model refuses text with a 422, and a retrieval sanity check on the six seed images."""

from __future__ import annotations

import base64
import io
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.reference import cosine, retrieval_reference, text_reference
from tests.model_factory import TEXT_MAX_LENGTH
from iei.cli import main as cli_main
from tests.server_process import loads_torch, running_server

pytestmark = pytest.mark.slow

TEXTS = ["a photo of a cat", "", "a leather bag", "a much longer description of a pair of boots " * 3, "naïve café 🐈"]
# "onnx": exported into the cache at start-up; "onnx-export": an `iei export` folder, served with no torch
# in the model process (its processor and tokenizer are read without it); "onnx-export-external": the same with the
# weights in external-data files, as a graph past 2 GB is stored (MetaCLIP 2's text tower; threshold lowered here).
CASES = [("clip", "torch"), ("siglip", "torch"), ("dinov2", "torch"), ("clip", "onnx"), ("siglip", "onnx-export"),
         ("dinov2", "onnx"),
         # the 2025 families (docs/models.md), one server each; tests/backends/test_dual_families.py covers both
         # backends of each in process
         ("siglip2_fixres", "onnx"), ("metaclip_2", "torch"), ("aimv2", "onnx-export"), ("aimv2_vision_model", "torch"),
         ("metaclip_2", "onnx-export-external")]
IMAGE_ONLY = ("dinov2", "aimv2_vision_model")
POOLING = {"clip": "projection", "siglip": "pooler", "dinov2": "cls", "siglip2_fixres": "pooler",
           "metaclip_2": "projection", "aimv2": "projection", "aimv2_vision_model": "mean"}
EMBEDDING_DIM = {"clip": 16, "siglip": 32, "dinov2": 32, "siglip2_fixres": 32, "metaclip_2": 16, "aimv2": 16,
                 "aimv2_vision_model": 32}


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{b}" for f, b in CASES])
def served(request, tiny_model, server_logs, tmp_path_factory):
    family, backend = request.param
    model = tiny_model(family)
    if backend.startswith("onnx"):
        pytest.importorskip("onnxruntime")
    if backend.startswith("onnx-export"):
        model = tmp_path_factory.mktemp("export") / family
        with pytest.MonkeyPatch.context() as patch:
            if backend == "onnx-export-external":
                from backends import onnx_export

                patch.setattr(onnx_export, "EXTERNAL_DATA_MIN_BYTES", 100_000)
            assert cli_main(["export", str(tiny_model(family)), "--output", str(model)]) == 0
        assert (model / "text_model.onnx_data").is_file() == (backend == "onnx-export-external")
    args = ["--model", str(model), "--backend", backend.split("-")[0], "--preprocess-workers", "2",
            "--backend-threads", "1", "--max-batch-delay-ms", "5"]
    if backend == "onnx":
        args += ["--onnx-cache-dir", str(tmp_path_factory.mktemp("onnx"))]
    # ONNX exports two graphs at start-up: allow for a loaded CI machine
    with running_server(*args, log_dir=server_logs, timeout_s=300 if backend == "onnx" else 120) as server:
        if backend.startswith("onnx-export"):
            assert not loads_torch(server.model_pids()[-1])
        yield family, backend, server


def _post(server, texts_or_images, modality="image", route="/embed", **options):
    if route == "/embed":
        body = {"inputs": texts_or_images, "modality": modality, "normalize": False, **options}
    else:
        body = {"input": texts_or_images, "modality": modality, **options}
    return httpx.post(server.url + route, json=body, timeout=60)


def test_image_vectors_are_the_authors_embedding(served, tiny_model, seed_images, seed_base64):
    family, _, server = served
    expected = retrieval_reference(tiny_model(family), seed_images)
    response = _post(server, seed_base64)
    assert response.status_code == 200, response.text
    vectors = np.array(response.json())
    np.testing.assert_allclose(vectors, expected, atol=1e-4, rtol=0)
    info = httpx.get(server.url + "/info").json()
    assert info["model_type"] == {"embedding": {"pooling": POOLING[family]}}
    assert info["embedding_dim"] == expected.shape[1] == EMBEDDING_DIM[family]
    assert info["image_size"] == {"height": 224, "width": 224}  # DINOv2's config says 518; its processor crops 224


def test_text_vectors_are_get_text_features(served, tiny_model):
    family, _, server = served
    if family in IMAGE_ONLY:
        for route in ("/embed", "/v1/embeddings"):
            response = _post(server, ["a cat"], "text", route)
            assert response.status_code == 422, response.text
            assert "embeds images only" in response.text
        assert httpx.get(server.url + "/info").json()["modalities"] == ["image"]
        return
    expected = text_reference(tiny_model(family), TEXTS)
    response = _post(server, TEXTS, "text")
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()), expected, atol=1e-4, rtol=0)
    single = _post(server, TEXTS[0], "text")  # a lone string, as TEI takes it
    np.testing.assert_allclose(np.array(single.json())[0], expected[0], atol=1e-4, rtol=0)
    openai = _post(server, TEXTS[:2], "text", "/v1/embeddings")
    assert openai.status_code == 200, openai.text
    got = np.array([d["embedding"] for d in openai.json()["data"]])
    np.testing.assert_allclose(got, expected[:2] / np.linalg.norm(expected[:2], axis=1, keepdims=True), atol=1e-5)
    info = httpx.get(server.url + "/info").json()
    assert info["modalities"] == ["image", "text"] and info["max_input_tokens"] == TEXT_MAX_LENGTH[family]


def test_text_and_image_requests_interleave_without_mixing(served, tiny_model, seed_images, seed_base64):
    """Concurrent text and image requests: each batch is one or the other, every vector is right."""
    family, backend, server = served
    if family in IMAGE_ONLY or backend != "torch":
        pytest.skip("image-only" if family in IMAGE_ONLY else "batching is the same on every backend; checked once")
    images = retrieval_reference(tiny_model(family), seed_images)
    texts = text_reference(tiny_model(family), TEXTS)

    def call(i):
        if i % 2:
            return "text", i % len(TEXTS), _post(server, [TEXTS[i % len(TEXTS)]], "text")
        return "image", i % 6, _post(server, [seed_base64[i % 6]])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(24)))
    for kind, index, response in results:
        assert response.status_code == 200, response.text
        want = (texts if kind == "text" else images)[index]
        np.testing.assert_allclose(np.array(response.json())[0], want, atol=1e-4, rtol=0)


def _variants(png: bytes) -> dict[str, str]:
    image = Image.open(io.BytesIO(png))
    resized, jpeg = io.BytesIO(), io.BytesIO()
    image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.BICUBIC).save(resized, "PNG")
    image.convert("RGB").save(jpeg, "JPEG", quality=85)
    return {"again": png, "resized": resized.getvalue(), "jpeg": jpeg.getvalue()}


def test_retrieval_sanity_each_variant_finds_its_original(served, seed_images, seed_base64):
    """The same image sent twice, resized, or re-encoded as JPEG ranks its original first among the six."""
    _, backend, server = served
    if backend != "torch":
        pytest.skip("the pipeline is the same on every backend; checked once")
    originals = np.array(_post(server, seed_base64).json())
    for kind in ("again", "resized", "jpeg"):
        queries = [base64.b64encode(_variants(png)[kind]).decode() for png in seed_images]
        vectors = np.array(_post(server, queries).json())
        similarity = cosine(vectors[:, None, :], originals[None, :, :])
        assert (similarity.argmax(axis=1) == np.arange(6)).all(), (kind, similarity.round(4))
        if kind == "again":
            np.testing.assert_allclose(vectors, originals, atol=1e-5, rtol=0)


def test_clip_by_hub_id_from_an_offline_cache(tiny_model, server_logs, tmp_path, seed_images, seed_base64):
    """The real loading path by hub id: weights, image processor and tokenizer (in every worker) from the cache."""
    commit = "c" * 40
    repo = tmp_path / "hf" / "hub" / "models--openai--clip-vit-base-patch32"
    shutil.copytree(tiny_model("clip"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    with running_server("--model", "openai/clip-vit-base-patch32", "--preprocess-workers", "1", "--backend-threads", "1",
                        env={"HF_HOME": str(tmp_path / "hf")}, log_dir=server_logs) as server:
        texts = _post(server, TEXTS[:3], "text")
        images = _post(server, seed_base64[:2])
        info = httpx.get(server.url + "/info").json()
    assert texts.status_code == 200 and images.status_code == 200, texts.text + images.text
    np.testing.assert_allclose(np.array(texts.json()), text_reference(tiny_model("clip"), TEXTS[:3]), atol=1e-4)
    np.testing.assert_allclose(np.array(images.json()), retrieval_reference(tiny_model("clip"), seed_images[:2]), atol=1e-4)
    assert info["model_sha"] == commit and not info["random_weights"]


def test_dummy_weights_without_a_tokenizer_embed_text_offline(tiny_model, server_logs, seed_base64, tmp_path):
    """`--load-format dummy` from a config folder with no tokenizer (as the bundled catalog entries are): random
    weights and a random tokenizer built offline, both logged. (The catalog's full-size architectures are
    checked on the meta device in tests/backends/test_retrieval_models.py.)"""
    folder = tmp_path / "clip-config-only"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copyfile(tiny_model("clip") / name, folder / name)
    with running_server("--model", str(folder), "--load-format", "dummy", "--max-batch-size", "2",
                        "--preprocess-workers", "1", "--backend-threads", "1", log_dir=server_logs) as server:
        texts = _post(server, ["a photo of a cat", "a bag"], "text")
        images = _post(server, seed_base64[:1])
        info = httpx.get(server.url + "/info").json()
        log = server.log()
    assert texts.status_code == 200 and images.status_code == 200, texts.text + images.text
    assert np.array(texts.json()).shape == (2, 16) and np.array(images.json()).shape == (1, 16)
    assert info["random_weights"] and info["modalities"] == ["image", "text"] and info["max_input_tokens"] == 77
    assert "RANDOM WEIGHTS" in log and "RANDOM TOKENIZER" in log


def test_bad_text_requests_are_clear_errors(served):
    family, backend, server = served
    if (family, backend) != ("clip", "torch"):
        pytest.skip("checked once")
    cases = [({"inputs": [], "modality": "text"}, 400, "cannot be empty"),
             ({"inputs": ["a cat", 3], "modality": "text"}, 422, "Expected `str`"),
             ({"inputs": ["a cat"], "modality": "video"}, 422, "modality"),
             ({"inputs": ["a cat"], "modality": "text", "dimensions": 17}, 422, "between 1 and 16")]
    for body, status, message in cases:
        response = httpx.post(server.url + "/embed", json=body, timeout=30)
        assert response.status_code == status and message in response.json()["error"], response.text
    surrogate = httpx.post(server.url + "/embed", content=b'{"inputs": ["lone \\ud800"], "modality": "text"}',
                           headers={"content-type": "application/json"}, timeout=30)  # not encodable text
    assert surrogate.status_code == 422 and surrogate.json()["error_type"] == "Validation", surrogate.text
    healthy = _post(server, ["still fine"], "text")  # nothing above hurt the server
    assert healthy.status_code == 200 and httpx.get(server.url + "/health").status_code == 200
