"""Reference embeddings computed the way the original server did, with transformers itself."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.image_utils import load_image


def reference_embeddings(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """Unnormalised vectors: transformers' processor, then the mean of last_hidden_state
    (pooler_output for ConvNeXt, whose pooler is the spatial mean after the final norm)."""
    processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
    config_type = AutoConfig.from_pretrained(model_dir).model_type
    kwargs = {} if config_type == "convnext" else {"add_pooling_layer": False}  # as the original loaded them
    model = AutoModel.from_pretrained(model_dir, **kwargs).eval()
    pils = [load_image(Image.open(io.BytesIO(b))) for b in images]
    pixels = processor(images=pils, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model(pixel_values=pixels)
    if config_type == "convnext":
        return out.pooler_output.numpy()
    return out.last_hidden_state.mean(dim=1).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
