"""The bundled DINOv3 entries (`--load-format dummy`): the published settings (transformers' conversion scripts
and the hub's config files), and what dummy loading builds from them (on the meta device: shapes only)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

from backends.pooling import EmbeddingModel, has_text, resolve_pooling
from iei.models import has_text_tower, resolve_model
from iei.preprocess.spec import load_spec

_VIT = {"model_type": "dinov3_vit", "patch_size": 16, "num_hidden_layers": 12, "num_register_tokens": 4,
        "layer_norm_eps": 1e-5, "rope_theta": 100.0, "key_bias": False, "use_gated_mlp": False, "image_size": 224}
# id -> (config facts, parameters in millions (the model cards: 21M, 86M, 29M with a classifier), width)
PUBLISHED = {
    "facebook/dinov3-vits16-pretrain-lvd1689m": ({**_VIT, "hidden_size": 384, "num_attention_heads": 6,
                                                  "intermediate_size": 1536}, 21.6, 384),
    "facebook/dinov3-vitb16-pretrain-lvd1689m": ({**_VIT, "hidden_size": 768, "num_attention_heads": 12,
                                                  "intermediate_size": 3072}, 85.7, 768),
    "facebook/dinov3-convnext-tiny-pretrain-lvd1689m": ({"model_type": "dinov3_convnext", "depths": [3, 3, 9, 3],
                                                         "hidden_sizes": [96, 192, 384, 768], "layer_norm_eps": 1e-6},
                                                        27.8, 768),
}


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_catalog_entry_has_the_published_settings(model_id):
    folder = resolve_model(model_id, None, "dummy").config_dir
    config = AutoConfig.from_pretrained(folder)
    facts, _, _ = PUBLISHED[model_id]
    for key, value in facts.items():
        assert getattr(config, key) == value, key
    assert not has_text_tower(model_id)
    spec = load_spec(folder)  # DINOv3ViTImageProcessorFast, read from its config (both architectures use it)
    assert (spec.resize, spec.resize_height, spec.resize_width, spec.resample, spec.float_resize) == ("fixed", 224, 224, 2, True)
    assert (spec.image_mean, spec.image_std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.mark.parametrize("model_id", sorted(PUBLISHED))
def test_dummy_builds_the_published_architecture(model_id):
    config = AutoConfig.from_pretrained(resolve_model(model_id, None, "dummy").config_dir)
    _, millions, width = PUBLISHED[model_id]
    pooling = resolve_pooling(config.model_type, None)
    assert pooling == "pooler" and not has_text(config.model_type, pooling)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
        if config.model_type == "dinov3_vit":  # its RoPE runs under torch.autocast, which has no meta device
            assert config.hidden_size == width
        else:
            assert tuple(EmbeddingModel(model, pooling)(torch.zeros(2, 3, 224, 224)).shape) == (2, width)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)
