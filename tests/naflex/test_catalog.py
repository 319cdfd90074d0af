"""The bundled google/siglip2-base-patch16-naflex entry: published settings, and what `--load-format dummy`
builds from it (on the meta device: shapes only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from backends.naflex import PositionEmbeddings
from backends.pooling import EmbeddingModel, TextEmbeddingModel, has_text, resolve_pooling
from iei.models import has_text_tower, resolve_model
from iei.preprocess.spec import load_spec

MODEL_ID = "google/siglip2-base-patch16-naflex"


def test_catalog_entry_has_the_published_settings():
    folder = resolve_model(MODEL_ID, None, "dummy").config_dir
    config = AutoConfig.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
    assert config.model_type == "siglip2" and has_text_tower(MODEL_ID)
    assert (config.vision_config.num_patches, config.vision_config.patch_size, config.vision_config.hidden_size) == (256, 16, 768)
    assert (config.text_config.vocab_size, config.text_config.max_position_embeddings) == (256000, 64)
    assert type(processor).__name__ == "Siglip2ImageProcessor"
    assert (processor.max_num_patches, processor.patch_size, processor.resample) == (256, 16, 2)
    spec = load_spec(folder)
    assert spec.item_shape == (256, 768) and (spec.output_height, spec.output_width) == (256, 256)


def test_dummy_builds_the_published_architecture():
    config = AutoConfig.from_pretrained(resolve_model(MODEL_ID, None, "dummy").config_dir)
    pooling = resolve_pooling(config.model_type, None)
    assert pooling == "pooler" and has_text(config.model_type, pooling)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
        patches = torch.zeros(2, 256, 768)
        mask = torch.ones(2, 256, dtype=torch.long)
        positions = torch.zeros(2, 256, 768)
        image = EmbeddingModel(model, pooling)(patches, mask, positions)
        text = TextEmbeddingModel(model)(torch.zeros(2, 7, dtype=torch.long), torch.ones(2, 7, dtype=torch.long))
    assert type(model).__name__ == "Siglip2Model"
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(375.2, rel=0.01)  # the hub's 375M
    assert tuple(image.shape) == tuple(text.shape) == (2, 768)
    assert PositionEmbeddings(np.zeros((16, 16, 4))).batch(np.array([[3, 5]]), 256).shape == (1, 256, 4)
