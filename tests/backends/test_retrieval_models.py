"""CLIP, SigLIP and DINOv2: each pooling against transformers' own definition, the text towers against
`get_text_features`, the torch backend's text path, and the bundled catalog's architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, Dinov2ForImageClassification

from backends.base import BackendConfig, BackendError
from backends.pooling import EmbeddingModel, PoolingError, TextEmbeddingModel, has_text, resolve_pooling
from backends.torch_backend import load_torch_backend
from iei.models import resolve_model
from tests.model_factory import RETRIEVAL_FAMILIES, make_tiny_model, model_card_tokens

TEXTS = ["a photo of a cat", "", "a much longer description of a leather bag with a brass buckle and two straps"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: make_tiny_model(family, root) for family in RETRIEVAL_FAMILIES}


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _model(tiny_dir, family):
    return AutoModel.from_pretrained(tiny_dir[family]).eval()


def _tokens(tiny_dir, family, texts=TEXTS):
    return model_card_tokens(tiny_dir[family], family, texts)


def test_defaults_and_refusals_per_family():
    assert [resolve_pooling(t, None) for t in ("clip", "siglip", "dinov2")] == ["projection", "pooler", "cls"]
    assert resolve_pooling("dinov2", "cls+mean") == "cls+mean"
    for model_type, pooling in (("siglip", "cls"), ("dinov2", "pooler"), ("clip", "cls+mean"), ("vit", "projection")):
        with pytest.raises(PoolingError, match="does not apply"):
            resolve_pooling(model_type, pooling)
    assert has_text("clip", "projection") and has_text("siglip", "pooler")
    assert not has_text("clip", "cls") and not has_text("dinov2", "cls") and not has_text("vit", "mean")


def test_clip_poolings(tiny_dir, pixels):
    model = _model(tiny_dir, "clip")
    with torch.inference_mode():
        vision = model.vision_model(pixel_values=pixels)
        expected = {"projection": model.get_image_features(pixel_values=pixels), "pooler": vision.pooler_output,
                    "cls": vision.last_hidden_state[:, 0], "mean": vision.last_hidden_state.mean(1)}
        for pooling, want in expected.items():
            torch.testing.assert_close(EmbeddingModel(model, pooling)(pixels), want, rtol=0, atol=0, msg=pooling)
    assert expected["projection"].shape == (3, 16)  # projection_dim, not the vision width


def test_siglip_poolings(tiny_dir, pixels):
    model = _model(tiny_dir, "siglip")
    with torch.inference_mode():
        torch.testing.assert_close(EmbeddingModel(model, "pooler")(pixels), model.get_image_features(pixel_values=pixels),
                                   rtol=0, atol=0)
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(EmbeddingModel(model, "mean")(pixels), hidden.mean(1), rtol=0, atol=0)


def test_dinov2_poolings_are_the_papers(tiny_dir, pixels):
    model = _model(tiny_dir, "dinov2")
    with torch.inference_mode():
        out = model(pixel_values=pixels)
        cls = EmbeddingModel(model, "cls")(pixels)
        torch.testing.assert_close(cls, out.pooler_output, rtol=0, atol=0)  # CLS after the final layernorm
        torch.testing.assert_close(EmbeddingModel(model, "mean")(pixels), out.last_hidden_state[:, 1:].mean(1), rtol=0, atol=0)
        both = EmbeddingModel(model, "cls+mean")(pixels)
        # transformers' linear-probe head reads exactly this concatenation
        head = Dinov2ForImageClassification.from_pretrained(tiny_dir["dinov2"], num_labels=2).eval()
        head.classifier = torch.nn.Identity()
        torch.testing.assert_close(both, head(pixel_values=pixels).logits, rtol=0, atol=1e-6)
    assert both.shape == (3, 64)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_text_tower_is_get_text_features(tiny_dir, family):
    model = _model(tiny_dir, family)
    tokens = _tokens(tiny_dir, family)
    with torch.inference_mode():
        want = (model.get_text_features(**tokens) if family == "clip"
                else model.get_text_features(input_ids=tokens["input_ids"]))  # SigLIP: trained without a mask
        got = TextEmbeddingModel(model)(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_image_only_model_has_no_text_tower(tiny_dir):
    with pytest.raises(PoolingError, match="no text tower"):
        TextEmbeddingModel(_model(tiny_dir, "dinov2"))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_torch_backend_embeds_texts_in_the_image_space(tiny_dir, family):
    backend = load_torch_backend(BackendConfig(model=str(tiny_dir[family]), device="cpu", max_batch_size=2))
    info = backend.info
    assert info.modalities == ("image", "text") and info.text_max_length == (77 if family == "clip" else 64)
    assert info.text_padding == ("longest" if family == "clip" else "max_length")
    tokens = _tokens(tiny_dir, family)
    model = _model(tiny_dir, family)
    with torch.inference_mode():
        want = TextEmbeddingModel(model)(tokens["input_ids"], tokens["attention_mask"]).numpy()
    got = backend.embed_texts(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.shape[1] == info.embedding_dim
    with pytest.raises(BackendError, match="input_ids"):
        backend.embed_texts(np.zeros((2,), np.int64), np.zeros((2,), np.int64))


def test_text_needs_the_pooling_that_shares_its_space(tiny_dir):
    backend = load_torch_backend(BackendConfig(model=str(tiny_dir["clip"]), device="cpu", pooling="cls", max_batch_size=1))
    assert backend.info.modalities == ("image",)
    with pytest.raises(BackendError, match="images only"):
        backend.embed_texts(np.zeros((1, 4), np.int64), np.ones((1, 4), np.int64))


def test_dinov2_runs_at_the_processors_size_not_the_configs(tiny_dir):
    """The config says 518 (pretraining); the processor crops 224, and the server says so."""
    backend = load_torch_backend(BackendConfig(model=str(tiny_dir["dinov2"]), device="cpu", image_size=(224, 224),
                                               max_batch_size=1))
    assert backend.info.image_size == (224, 224) and backend.info.pooling == "cls"
    assert backend.embed_images(np.zeros((1, 3, 224, 224), np.uint8)).shape == (1, 32)


# model id -> (class, parameters in millions as published, embedding width after projection)
RETRIEVAL_CATALOG = {
    "openai/clip-vit-base-patch32": ("CLIPModel", 151.3, 512),
    "openai/clip-vit-base-patch16": ("CLIPModel", 149.6, 512),
    "openai/clip-vit-large-patch14": ("CLIPModel", 427.6, 768),
    "google/siglip-base-patch16-224": ("SiglipModel", 203.2, 768),
    "facebook/dinov2-small": ("Dinov2Model", 22.1, 384),
    "facebook/dinov2-base": ("Dinov2Model", 86.6, 768),
}


@pytest.mark.parametrize("model_id", sorted(RETRIEVAL_CATALOG))
def test_retrieval_catalog_builds_the_right_architecture(model_id):
    """On the meta device (shapes only): what `--load-format dummy` builds, and the vectors' widths."""
    config = AutoConfig.from_pretrained(resolve_model(model_id, None, "dummy").config_dir)
    class_name, params_m, dim = RETRIEVAL_CATALOG[model_id]
    pooling = resolve_pooling(config.model_type, None)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
        image = EmbeddingModel(model, pooling)(torch.zeros(2, 3, 224, 224))
        if has_text(config.model_type, pooling):
            text = TextEmbeddingModel(model)(torch.zeros(2, 7, dtype=torch.long), torch.ones(2, 7, dtype=torch.long))
            assert tuple(text.shape) == (2, dim)
    assert type(model).__name__ == class_name
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(params_m, rel=0.01)
    assert tuple(image.shape) == (2, dim)
