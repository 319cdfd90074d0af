"""The ONNX Runtime backend for the retrieval families: the image graph and the text graph match torch, the
export records what it holds, and int8 quantises both graphs."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

import onnxruntime as ort  # noqa: E402

from backends import load_backend  # noqa: E402
from backends.base import BackendConfig  # noqa: E402
from backends.onnx_export import export_model  # noqa: E402
from backends.onnx_manifest import TEXT_MODEL_FILE, ExportOptions  # noqa: E402
from tests.model_factory import make_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-onnx-retrieval")
    return {family: make_tiny_model(family, root) for family in ("clip", "siglip", "dinov2")}


def _config(folder, **kwargs) -> BackendConfig:
    return BackendConfig(model=str(folder), device="cpu", image_size=(224, 224), max_batch_size=2, **kwargs)


def _texts(vocab_end: int) -> tuple[np.ndarray, np.ndarray]:
    """Three texts of different lengths in one right-padded batch, each ending with the end token."""
    ids = np.random.default_rng(1).integers(1, 250, (3, 11))  # within both tiny vocabularies
    mask = np.ones_like(ids)
    for row, length in enumerate((11, 5, 2)):
        ids[row, length - 1], ids[row, length:], mask[row, length:] = vocab_end, vocab_end, 0
    return ids, mask


@pytest.mark.parametrize("family", ["clip", "siglip", "dinov2"])
def test_onnx_matches_torch_for_images_and_texts(tiny_dir, tmp_path, family):
    config = _config(tiny_dir[family], onnx_cache_dir=str(tmp_path))
    onnx, torch_backend = load_backend("onnx", config), load_backend("torch", config)
    assert onnx.info.modalities == torch_backend.info.modalities
    assert (onnx.info.embedding_dim, onnx.info.image_size) == (torch_backend.info.embedding_dim, (224, 224))
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    np.testing.assert_allclose(onnx.embed_images(pixels), torch_backend.embed_images(pixels), rtol=0, atol=1e-5)
    if family == "dinov2":
        assert onnx.info.modalities == ("image",)
        return
    assert (onnx.info.text_max_length, onnx.info.text_padding) == (torch_backend.info.text_max_length,
                                                                    torch_backend.info.text_padding)
    ids, mask = _texts(513 if family == "clip" else 1)
    for rows in (slice(0, 1), slice(0, 3)):  # batch and length both vary
        np.testing.assert_allclose(onnx.embed_texts(ids[rows], mask[rows]), torch_backend.embed_texts(ids[rows], mask[rows]),
                                   rtol=0, atol=1e-5)


def test_export_holds_both_graphs_and_int8_quantises_both(tiny_dir, tmp_path):
    manifest = export_model(_config(tiny_dir["clip"]), ExportOptions(precision="int8"), tmp_path / "clip-int8")
    assert TEXT_MODEL_FILE in manifest.files and manifest.modalities == ("image", "text")
    assert manifest.text_max_length == 77 and manifest.text_padding == "longest"
    assert (tmp_path / "clip-int8" / "tokenizer.json").is_file()  # served folders tokenise with the model's own
    text_graph = ort.InferenceSession(str(tmp_path / "clip-int8" / TEXT_MODEL_FILE))
    assert {i.name for i in text_graph.get_inputs()} == {"input_ids", "attention_mask"}
    int8 = load_backend("onnx", _config(tmp_path / "clip-int8", quantize="int8"))
    fp32 = load_backend("torch", _config(tiny_dir["clip"]))
    ids, mask = _texts(513)
    a, b = int8.embed_texts(ids, mask), fp32.embed_texts(ids, mask)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.99


def test_siglip_text_graph_takes_no_mask(tiny_dir, tmp_path):
    """SigLIP never reads the mask, so the trace drops it; the backend feeds only what the graph declares."""
    export_model(_config(tiny_dir["siglip"]), ExportOptions(optimize="O1"), tmp_path / "siglip")
    text_graph = ort.InferenceSession(str(tmp_path / "siglip" / TEXT_MODEL_FILE))
    assert [i.name for i in text_graph.get_inputs()] == ["input_ids"]
