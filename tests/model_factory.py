"""Tiny random-weight models of each family the original server listed, and of the retrieval families
(CLIP, SigLIP, DINOv2; SigLIP 2 NaFlex and DINOv3 apart), saved as a real `from_pretrained` folder (config.json, model.safetensors,
preprocessor_config.json; CLIP and SigLIP also a tokenizer, built offline).

The preprocessing settings are copied from the bundled catalog entry of the family's reference
model, so a tiny model is preprocessed exactly like the full-size one. Weights are seeded: the same
family always gives the same model. Each build takes a few tens of milliseconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import (
    Aimv2Config, Aimv2Model, Aimv2VisionConfig, Aimv2VisionModel, BeitConfig, BeitModel, CLIPConfig, CLIPModel,
    ConvNextConfig, ConvNextModel, Dinov2Config, Dinov2Model, MetaClip2Config, MetaClip2Model, SiglipConfig,
    Siglip2Config, Siglip2Model, SiglipModel, SwinConfig, SwinModel, ViTConfig, ViTModel,
)
from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel, DINOv3ViTConfig, DINOv3ViTModel

from iei.models import catalog_dir
from iei.preprocess.random_tokenizer import save_random_tokenizer

# family -> the catalog model whose preprocessing (and architecture) it mimics
REFERENCE_MODEL = {
    "vit": "google/vit-base-patch16-224",
    "deit": "facebook/deit-base-patch16-224",  # a ViT config with DeiT preprocessing, as on the hub
    "beit": "microsoft/beit-base-patch16-224",
    "swin": "microsoft/swin-tiny-patch4-window7-224",
    "convnext": "facebook/convnext-tiny-224",
}
FAMILIES = tuple(REFERENCE_MODEL)
RETRIEVAL_REFERENCE_MODEL = {
    "clip": "openai/clip-vit-base-patch32",
    "siglip": "google/siglip-base-patch16-224",
    "dinov2": "facebook/dinov2-small",
}
RETRIEVAL_FAMILIES = tuple(RETRIEVAL_REFERENCE_MODEL)
# Variable-resolution families (patch grids), built like the others but not part of RETRIEVAL_FAMILIES: their
# pixels are patches, so the fixed-size tests do not apply.
NAFLEX_REFERENCE_MODEL = {"siglip2": "google/siglip2-base-patch16-naflex"}
# DINOv3: processors that exist only as torchvision-based "Fast" classes (iei.preprocess.fast_processors)
DINOV3_REFERENCE_MODEL = {"dinov3_vit": "facebook/dinov3-vits16-pretrain-lvd1689m",
                          "dinov3_convnext": "facebook/dinov3-convnext-tiny-pretrain-lvd1689m"}
DINOV3_FAMILIES = tuple(DINOV3_REFERENCE_MODEL)
# The 2025 CLIP-style families (docs/models.md). "siglip2_fixres" is SigLIP 2 at a fixed resolution: model type
# "siglip" with Gemma's tokenizer. aimv2_vision_model is preprocessed like the LiT checkpoint (the same processor).
DUAL_REFERENCE_MODEL = {
    "siglip2_fixres": "google/siglip2-base-patch16-224",
    "metaclip_2": "facebook/metaclip-2-worldwide-l14",
    "aimv2": "apple/aimv2-large-patch14-224-lit",
    "aimv2_vision_model": "apple/aimv2-large-patch14-224-lit",
}
DUAL_FAMILIES = tuple(DUAL_REFERENCE_MODEL)
TEXT_FAMILIES = ("clip", "siglip", "siglip2", "siglip2_fixres", "metaclip_2", "aimv2")
TEXT_MAX_LENGTH = {"clip": 77, "siglip": 64, "siglip2": 64, "siglip2_fixres": 64, "metaclip_2": 77, "aimv2": 77}
# the random tokenizer each text family gets (iei.preprocess.random_tokenizer)
TOKENIZER_KIND = {"siglip2_fixres": "gemma"}

# embedding width of each tiny family (mean pooling)
TINY_EMBEDDING_DIM = {"vit": 32, "deit": 32, "beit": 32, "swin": 32, "convnext": 32}

_TRANSFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 224, "patch_size": 32}
_TEXT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _build(family: str) -> torch.nn.Module:
    # Saved WITH the pooling layer so `pooler` pooling has trained-looking weights to load;
    # loading with add_pooling_layer=False simply ignores them.
    if family in ("vit", "deit"):
        return ViTModel(ViTConfig(**_TRANSFORMER))
    if family == "beit":
        config = BeitConfig(**_TRANSFORMER, use_mean_pooling=True, use_relative_position_bias=True,
                            use_absolute_position_embeddings=False, layer_scale_init_value=0.1, vocab_size=64)
        return BeitModel(config)
    if family == "swin":
        config = SwinConfig(image_size=224, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=7)
        return SwinModel(config)
    if family == "convnext":
        config = ConvNextConfig(image_size=224, patch_size=4, num_stages=2, hidden_sizes=[16, 32], depths=[1, 1])
        return ConvNextModel(config)
    if family == "clip":  # openai's legacy text ids (eos 2: the end of a text is found by argmax)
        text = {**_TEXT, "vocab_size": 520, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
        return CLIPModel(CLIPConfig(text_config=text, vision_config=_TRANSFORMER, projection_dim=16))
    if family == "siglip":
        text = {**_TEXT, "vocab_size": 256, "max_position_embeddings": 64}
        return SiglipModel(SiglipConfig(text_config=text, vision_config=_TRANSFORMER))
    if family == "siglip2":  # NaFlex: the published patch size and position grid (16 x 16), a tiny width
        text = {**_TEXT, "vocab_size": 256, "max_position_embeddings": 64}
        return Siglip2Model(Siglip2Config(text_config=text, vision_config={**_TEXT, "num_patches": 256, "patch_size": 16}))
    if family == "siglip2_fixres":  # the random Gemma tokenizer's ids stay below 256
        text = {**_TEXT, "vocab_size": 256, "max_position_embeddings": 64}
        return SiglipModel(SiglipConfig(text_config=text, vision_config={**_TRANSFORMER, "patch_size": 16}))
    if family == "metaclip_2":  # XLM-V's special ids, as the random XLM-R tokenizer has them (eos 2, pad 1)
        text = {**_TEXT, "vocab_size": 256, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
        return MetaClip2Model(MetaClip2Config(text_config=text, vision_config={**_TRANSFORMER, "patch_size": 14},
                                              projection_dim=16))
    if family == "aimv2":  # the random CLIP tokenizer's end of text is 513
        text = {**_TEXT, "vocab_size": 520, "max_position_embeddings": 77, "eos_token_id": 513}
        return Aimv2Model(Aimv2Config(text_config=text, vision_config={**_TRANSFORMER, "patch_size": 14, "use_head": True},
                                      projection_dim=16))
    if family == "aimv2_vision_model":  # as the vision-only checkpoints: no attention-pooling head
        return Aimv2VisionModel(Aimv2VisionConfig(**{**_TRANSFORMER, "patch_size": 14}, use_head=False))
    if family == "dinov2":  # the pretraining size, 518, as on the hub; the processor crops 224
        return Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                                        image_size=518, patch_size=14, layerscale_value=0.5))
    if family == "dinov3_vit":  # the published patch size and 4 register tokens, a tiny width
        return DINOv3ViTModel(DINOv3ViTConfig(**{**_TEXT, "patch_size": 16, "image_size": 224},
                                              num_register_tokens=4, layerscale_value=0.5))
    if family == "dinov3_convnext":
        return DINOv3ConvNextModel(DINOv3ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], image_size=224))
    raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES + RETRIEVAL_FAMILIES + DINOV3_FAMILIES + DUAL_FAMILIES}")


# Families whose model cards pad texts to max_length (SigLIP's towers were trained so); the others pad to the longest.
PADDED_TO_MAX_LENGTH = ("siglip", "siglip2", "siglip2_fixres")


def model_card_tokens(folder: Path, family: str, texts: list[str]):
    """`texts` tokenised as the family's model card does it: the reference side of text parity tests."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    padding = "max_length" if family in PADDED_TO_MAX_LENGTH else True
    return tokenizer(texts, padding=padding, max_length=TEXT_MAX_LENGTH[family], truncation=True, return_tensors="pt")


def make_tiny_model(family: str, root: Path) -> Path:
    """Build the tiny `family` model (FAMILIES or RETRIEVAL_FAMILIES) into
    `root/<family>` and return that folder (ready for `from_pretrained` and AutoImageProcessor)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model = _build(family).eval()
    folder = Path(root) / family
    model.save_pretrained(folder)
    reference = {**REFERENCE_MODEL, **RETRIEVAL_REFERENCE_MODEL, **NAFLEX_REFERENCE_MODEL, **DINOV3_REFERENCE_MODEL, **DUAL_REFERENCE_MODEL}[family]
    shutil.copyfile(catalog_dir(reference) / "preprocessor_config.json", folder / "preprocessor_config.json")
    if family in TEXT_FAMILIES:
        save_random_tokenizer(TOKENIZER_KIND.get(family, family), TEXT_MAX_LENGTH[family], folder)
    return folder
