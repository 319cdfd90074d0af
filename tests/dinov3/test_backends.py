"""DINOv3 ViT and ConvNeXt in process: the poolings against transformers (register tokens are not patch tokens),
the torch and ONNX backends against `pooler_output`, and the export folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from backends import BackendConfig, load_backend
from backends.pooling import EmbeddingModel, PoolingError, resolve_pooling
from iei.preprocess.image import pixel_affine, prepare_pixels
from iei.preprocess.spec import load_spec
from tests.dinov3.reference import dinov3_reference, normalised, processor_config, resized_levels
from tests.model_factory import DINOV3_FAMILIES, make_tiny_model

REGISTERS = 4  # the tiny ViT has the published number


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-dinov3")
    return {family: make_tiny_model(family, root) for family in DINOV3_FAMILIES}


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _config(folder, **kwargs) -> BackendConfig:
    spec = load_spec(str(folder), draft=False)
    scale, offset = pixel_affine(spec)
    return BackendConfig(model=str(folder), device="cpu", image_size=(224, 224), max_batch_size=2,
                         pixel_scale=scale, pixel_offset=offset, **kwargs)


def test_the_table():
    assert resolve_pooling("dinov3_vit", None) == "pooler" and resolve_pooling("dinov3_convnext", None) == "pooler"
    with pytest.raises(PoolingError, match="no CLS token"):
        resolve_pooling("dinov3_convnext", "cls")
    with pytest.raises(PoolingError, match="does not apply"):
        resolve_pooling("dinov3_vit", "projection")


def test_vit_poolings_skip_the_register_tokens(tiny_dir, pixels):
    model = AutoModel.from_pretrained(tiny_dir["dinov3_vit"]).eval()
    assert model.config.num_register_tokens == REGISTERS
    with torch.inference_mode():
        out = model(pixel_values=pixels)
        hidden = out.last_hidden_state
        assert hidden.shape[1] == 1 + REGISTERS + (224 // 16) ** 2
        patches = hidden[:, 1 + REGISTERS:].mean(1)
        torch.testing.assert_close(EmbeddingModel(model, "pooler")(pixels), out.pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(EmbeddingModel(model, "cls")(pixels), out.pooler_output, rtol=0, atol=0)
        mean = EmbeddingModel(model, "mean")(pixels)
        torch.testing.assert_close(mean, patches, rtol=0, atol=1e-6)
        assert (mean - hidden[:, 1:].mean(1)).abs().max() > 1e-3  # registers included would differ
        both = EmbeddingModel(model, "cls+mean")(pixels)
        torch.testing.assert_close(both, torch.cat([out.pooler_output, patches], -1), rtol=0, atol=1e-6)


def test_convnext_poolings(tiny_dir, pixels):
    model = AutoModel.from_pretrained(tiny_dir["dinov3_convnext"]).eval()
    with torch.inference_mode():
        out = model(pixel_values=pixels)
        torch.testing.assert_close(EmbeddingModel(model, "pooler")(pixels), out.pooler_output, rtol=0, atol=0)
        torch.testing.assert_close(EmbeddingModel(model, "mean")(pixels), out.last_hidden_state[:, 1:].mean(1),
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", DINOV3_FAMILIES)
def test_torch_backend_is_pooler_output_on_the_processors_pixels(family, tiny_dir, seeds):
    """Fed the reference's own pixels rounded to 8 bits, the backend is `pooler_output` within float rounding;
    fed IEI's preprocessing, it differs only by that rounding (the documented tolerance)."""
    folder = tiny_dir[family]
    backend = load_backend("torch", _config(folder))
    config = processor_config(folder)
    images = list(seeds.values())
    levels = np.stack([np.clip(np.rint(resized_levels(config, data)), 0, 255) for data in images]).astype(np.uint8)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        rounded = model(pixel_values=normalised(config, levels)).pooler_output.numpy()
    np.testing.assert_allclose(backend.embed_images(levels), rounded, rtol=0, atol=1e-5)
    spec = load_spec(str(folder), draft=False)
    served = backend.embed_images(np.stack([prepare_pixels(data, spec) for data in images]))
    expected = dinov3_reference(folder, images)
    cosine = (served * expected).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() > 0.99999
    np.testing.assert_allclose(served, expected, rtol=0, atol=2e-3)


@pytest.mark.parametrize("family", DINOV3_FAMILIES)
def test_onnx_matches_torch_and_the_export_folder_serves(family, tiny_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from backends.onnx_export import export_model
    from backends.onnx_manifest import ExportOptions

    config = _config(tiny_dir[family], onnx_cache_dir=str(tmp_path / "cache"))
    onnx, torch_backend = load_backend("onnx", config), load_backend("torch", config)
    assert (onnx.info.model_type, onnx.info.pooling, onnx.info.embedding_dim) == (family, "pooler", 32)
    batch = np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    want = torch_backend.embed_images(batch)
    np.testing.assert_allclose(onnx.embed_images(batch), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(onnx.embed_images(batch[:1]), want[:1], rtol=0, atol=1e-4)  # the batch axis is dynamic
    manifest = export_model(config, ExportOptions(), tmp_path / "export")
    assert manifest.check_max_abs_diff <= 1e-4 and manifest.model_type == family
    saved = json.loads((tmp_path / "export" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "DINOv3ViTImageProcessorFast"  # no class to save it with: copied
    assert load_spec(str(tmp_path / "export")) == load_spec(str(tiny_dir[family]))
    exported = load_backend("onnx", _config(tmp_path / "export"))
    np.testing.assert_allclose(exported.embed_images(batch), want, rtol=0, atol=1e-4)


def test_onnx_mean_pooling_exports_too(tiny_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    config = _config(tiny_dir["dinov3_vit"], onnx_cache_dir=str(tmp_path), pooling="mean")
    onnx, torch_backend = load_backend("onnx", config), load_backend("torch", config)
    batch = np.random.default_rng(1).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    np.testing.assert_allclose(onnx.embed_images(batch), torch_backend.embed_images(batch), rtol=0, atol=1e-4)
