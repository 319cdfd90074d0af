"""The embedding definition per family (`backends.pooling`), checked against transformers directly."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, Dinov2Model, ResNetConfig, ResNetModel, ViTMSNConfig, ViTMSNModel

from backends.pooling import FAMILIES, EmbeddingModel, PoolingError, model_kwargs, resolve_pooling
from tests.model_factory import FAMILIES as TINY_FAMILIES
from tests.model_factory import make_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: make_tiny_model(family, root) for family in TINY_FAMILIES}


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def test_table_defaults_are_mean_for_the_original_families():
    for model_type in ("vit", "deit", "beit", "swin", "convnext"):
        assert resolve_pooling(model_type, None) == "mean"


@pytest.mark.parametrize("model_type", ["swin", "convnext"])
def test_cls_is_refused_where_there_is_no_cls_token(model_type):
    with pytest.raises(PoolingError, match="no CLS token"):
        resolve_pooling(model_type, "cls")


def test_unknown_pooling_is_refused():
    with pytest.raises(PoolingError, match="unknown pooling 'max'"):
        resolve_pooling("vit", "max")


def test_add_pooling_layer_only_where_the_family_takes_it():
    assert model_kwargs("vit", "mean") == {"add_pooling_layer": False}
    assert model_kwargs("vit", "pooler") == {"add_pooling_layer": True}
    assert model_kwargs("swin", "mean") == {"add_pooling_layer": False}
    assert model_kwargs("convnext", "mean") == {}
    assert model_kwargs("dinov2", "mean", Dinov2Model) == {}
    assert FAMILIES["convnext"].mean_source == "pooler"


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_mean_is_the_original_servers_embedding(family, tiny_dir, pixels):
    kwargs = {} if family == "convnext" else {"add_pooling_layer": False}
    model = AutoModel.from_pretrained(tiny_dir[family], **kwargs).eval()
    with torch.inference_mode():
        out = model(pixel_values=pixels)
        expected = out.pooler_output if family == "convnext" else out.last_hidden_state.mean(1)
        got = EmbeddingModel(model, "mean")(pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_convnext_mean_is_spatial_mean_then_final_layernorm(tiny_dir, pixels):
    model = AutoModel.from_pretrained(tiny_dir["convnext"]).eval()
    with torch.inference_mode():
        feature_map = model(pixel_values=pixels).last_hidden_state  # (B, C, H, W)
        expected = model.layernorm(feature_map.mean(dim=(2, 3)))
        got = EmbeddingModel(model, "mean")(pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["vit", "deit", "beit"])
def test_cls_is_token_zero(family, tiny_dir, pixels):
    model = AutoModel.from_pretrained(tiny_dir[family], add_pooling_layer=False).eval()
    with torch.inference_mode():
        expected = model(pixel_values=pixels).last_hidden_state[:, 0]
        got = EmbeddingModel(model, "cls")(pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pooler_is_pooler_output(family, tiny_dir, pixels):
    model = AutoModel.from_pretrained(tiny_dir[family]).eval()
    with torch.inference_mode():
        expected = model(pixel_values=pixels).pooler_output
        got = EmbeddingModel(model, "pooler")(pixels)
    assert got.shape == (3, expected.shape[-1])
    torch.testing.assert_close(got, expected.flatten(1), rtol=0, atol=0)


def test_pooler_without_pooling_layer_is_a_clear_error(tiny_dir, pixels):
    model = AutoModel.from_pretrained(tiny_dir["vit"], add_pooling_layer=False).eval()
    with pytest.raises(PoolingError, match="no pooler_output"), torch.inference_mode():
        EmbeddingModel(model, "pooler")(pixels)


def test_wrapper_refuses_a_pooling_the_family_lacks(tiny_dir):
    model = AutoModel.from_pretrained(tiny_dir["swin"], add_pooling_layer=False)
    with pytest.raises(PoolingError):
        EmbeddingModel(model, "cls")


def test_unknown_transformer_family_mean_pools_tokens_when_asked(pixels):
    model = ViTMSNModel(ViTMSNConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     image_size=224, patch_size=32)).eval()
    with pytest.raises(PoolingError, match="not in IEI's model family table"):  # no guessed default
        resolve_pooling("vit_msn", None, ViTMSNModel)
    with pytest.raises(PoolingError):
        resolve_pooling("vit_msn", "cls", ViTMSNModel)
    with torch.inference_mode():
        expected = model(pixel_values=pixels).last_hidden_state.mean(1)
        got = EmbeddingModel(model, "mean")(pixels)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_unknown_cnn_family_mean_pools_space(pixels):
    model = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")).eval()
    with torch.inference_mode():
        expected = model(pixel_values=pixels).last_hidden_state.mean(dim=(2, 3))
        got = EmbeddingModel(model, "mean")(pixels)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_wrapper_traces_for_export(tiny_dir, pixels):
    """The same module must be exportable (ONNX/TensorRT trace it); a jit trace is the cheap proxy."""
    model = AutoModel.from_pretrained(tiny_dir["vit"], add_pooling_layer=False).eval()
    wrapper = EmbeddingModel(model, "mean").eval()
    with torch.inference_mode():
        expected = wrapper(pixels)
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, pixels[:1], strict=False)
        torch.testing.assert_close(traced(pixels), expected, rtol=0, atol=1e-5)
