"""Reference embeddings computed the way the original server did, with transformers itself."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer
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


def retrieval_reference(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """The authors' image embedding, unnormalised: CLIP's, MetaCLIP 2's and AIMv2 LiT's projected
    `get_image_features`, SigLIP's pooled head (`get_image_features`), DINOv2's CLS token after the final layernorm
    (`pooler_output`), AIMv2 vision-only: the mean of its patch features (docs/models.md)."""
    processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
    model = AutoModel.from_pretrained(model_dir).eval()
    pils = [load_image(Image.open(io.BytesIO(b))) for b in images]
    pixels = processor(images=pils, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        if model.config.model_type in ("clip", "siglip", "metaclip_2", "aimv2"):
            return model.get_image_features(pixel_values=pixels).numpy()
        if model.config.model_type == "aimv2_vision_model":
            return model(pixel_values=pixels).last_hidden_state.mean(1).numpy()
        return model(pixel_values=pixels).pooler_output.numpy()


def text_reference(model_dir: Path, texts: list[str]) -> np.ndarray:
    """`get_text_features`, tokenised as the model cards say: CLIP, MetaCLIP 2 and AIMv2 pad to the longest text
    (with its mask), SigLIP and SigLIP 2 pad to max_length, 64 (and were trained without a mask)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        if model.config.model_type in ("siglip", "siglip2"):
            ids = tokenizer(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")["input_ids"]
            return model.get_text_features(input_ids=ids).numpy()
        return model.get_text_features(**tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).numpy()


def naflex_reference(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """SigLIP 2 NaFlex: each image through `Siglip2ImageProcessor` (its own patch grid) and `get_image_features`,
    one at a time, as the model card runs it."""
    processor = AutoImageProcessor.from_pretrained(model_dir, use_fast=False)
    model = AutoModel.from_pretrained(model_dir).eval()
    rows = []
    for data in images:
        inputs = processor(images=load_image(Image.open(io.BytesIO(data))), return_tensors="pt")
        with torch.inference_mode():
            rows.append(model.get_image_features(**inputs)[0].numpy())
    return np.stack(rows)
