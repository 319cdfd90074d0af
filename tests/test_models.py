"""Model resolution (`iei.models`): catalog, local folders, the HF cache, and clear failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from transformers import AutoConfig, AutoImageProcessor

from iei.models import CATALOG_DIR, ModelNotFound, ModelSource, catalog_ids, has_text_tower, resolve_model

ORIGINAL_MODELS = [
    "google/vit-base-patch16-224",
    "facebook/deit-base-patch16-224",
    "microsoft/beit-base-patch16-224",
    "facebook/convnext-tiny-224",
    "facebook/convnext-base-224",
    "microsoft/swin-tiny-patch4-window7-224",
    "microsoft/swin-base-patch4-window7-224",
    "nateraw/vit-base-beans",
]
RETRIEVAL_MODELS = [
    "openai/clip-vit-base-patch32",
    "openai/clip-vit-base-patch16",
    "openai/clip-vit-large-patch14",
    "google/siglip-base-patch16-224",
    "facebook/dinov2-small",
    "facebook/dinov2-base",
    "google/siglip2-base-patch16-naflex",  # hub facts checked in tests/naflex/test_catalog.py
    "facebook/dinov3-vits16-pretrain-lvd1689m",  # hub facts checked in tests/dinov3/test_catalog.py
    "facebook/dinov3-vitb16-pretrain-lvd1689m",
    "facebook/dinov3-convnext-tiny-pretrain-lvd1689m",
    "google/siglip2-base-patch16-224",
    "facebook/metaclip-2-worldwide-l14",
    "apple/aimv2-large-patch14-224-lit",
]


def _write_model_files(folder: Path, model_id: str = "google/vit-base-patch16-224") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((CATALOG_DIR / model_id.replace("/", "--") / name).read_bytes())
    return folder


def test_catalog_holds_the_original_servers_models_and_the_retrieval_models():
    assert catalog_ids() == sorted(ORIGINAL_MODELS + RETRIEVAL_MODELS)


def test_dummy_resolves_a_catalog_id():
    source = resolve_model("facebook/convnext-tiny-224", None, "dummy")
    assert source == ModelSource(model_id="facebook/convnext-tiny-224", load_format="dummy",
                                 config_dir=str(CATALOG_DIR / "facebook--convnext-tiny-224"))
    assert source.processor_source == source.config_dir
    assert (Path(source.config_dir) / "preprocessor_config.json").is_file()


def test_auto_passes_a_hub_id_through():
    source = resolve_model("google/vit-base-patch16-224", "main", "auto")
    assert source.config_dir is None
    assert source.revision == "main"
    assert source.processor_source == "google/vit-base-patch16-224"


@pytest.mark.parametrize("load_format", ["auto", "dummy"])
def test_local_folder(tmp_path, load_format):
    folder = _write_model_files(tmp_path / "my-model")
    source = resolve_model(str(folder), None, load_format)
    assert source.model_id == str(folder)
    assert source.load_format == load_format
    if load_format == "dummy":
        assert source.config_dir == str(folder.resolve())
        assert source.processor_source == str(folder.resolve())
    else:
        assert source.config_dir is None
        assert source.processor_source == str(folder)


def test_dummy_local_folder_without_processor_config(tmp_path):
    folder = _write_model_files(tmp_path / "m")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelNotFound, match="lacks preprocessor_config.json"):
        resolve_model(str(folder), None, "dummy")


@pytest.mark.parametrize("load_format", ["auto", "dummy"])
def test_missing_local_folder(tmp_path, load_format):
    with pytest.raises(ModelNotFound, match="does not exist"):
        resolve_model(str(tmp_path / "nope"), None, load_format)


def _fake_hf_cache(hub_dir: Path, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    repo = hub_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = _write_model_files(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_dummy_finds_config_in_the_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = _fake_hf_cache(tmp_path / "hub", "someorg/vit-finetune")
    source = resolve_model("someorg/vit-finetune", None, "dummy")
    assert source.config_dir == str(snapshot)
    assert source.processor_source == str(snapshot)


def test_dummy_unknown_id_lists_the_catalog(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound) as info:
        resolve_model("nobody/no-such-model", None, "dummy")
    message = str(info.value)
    assert "nobody/no-such-model" in message
    assert all(model_id in message for model_id in ORIGINAL_MODELS)


def test_has_text_tower_reads_the_config_where_it_is(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert has_text_tower("openai/clip-vit-base-patch32") and has_text_tower("google/siglip-base-patch16-224")  # catalog
    assert not has_text_tower("google/vit-base-patch16-224") and not has_text_tower("facebook/dinov2-small")
    clip_folder = _write_model_files(tmp_path / "clip", "openai/clip-vit-base-patch32")
    assert has_text_tower(str(clip_folder)) and not has_text_tower(str(_write_model_files(tmp_path / "vit")))
    snapshot = _fake_hf_cache(tmp_path / "hub", "someorg/clip-finetune")
    (snapshot / "config.json").write_text(json.dumps({"model_type": "clip", "text_config": {}}))
    assert has_text_tower("someorg/clip-finetune")  # the HF cache, before the catalog
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert not has_text_tower(str(broken)) and not has_text_tower(str(tmp_path / "missing"))
    assert not has_text_tower("nobody/no-such-model")


def test_unknown_load_format():
    with pytest.raises(ValueError, match="load_format"):
        resolve_model("google/vit-base-patch16-224", None, "pt")


def test_models_module_does_not_import_torch():
    code = "import sys, iei.models; iei.models.resolve_model('google/vit-base-patch16-224', None, 'dummy'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"


# Hub facts the catalog must reproduce: (config fields, processor fields).
CATALOG_FACTS = {
    "google/vit-base-patch16-224": ({"model_type": "vit", "hidden_size": 768, "patch_size": 16},
                                    {"resample": 2, "image_mean": [0.5] * 3, "size": {"height": 224, "width": 224}}),
    "facebook/deit-base-patch16-224": ({"model_type": "vit", "hidden_size": 768},
                                       {"resample": 3, "do_center_crop": True, "size": {"height": 256, "width": 256},
                                        "crop_size": {"height": 224, "width": 224}, "image_mean": [0.485, 0.456, 0.406]}),
    "microsoft/beit-base-patch16-224": ({"model_type": "beit", "use_mean_pooling": True, "use_relative_position_bias": True,
                                         "layer_scale_init_value": 0.1, "vocab_size": 8192},
                                        {"resample": 2, "do_center_crop": False, "image_std": [0.5] * 3}),
    "facebook/convnext-tiny-224": ({"model_type": "convnext", "depths": [3, 3, 9, 3], "hidden_sizes": [96, 192, 384, 768]},
                                   {"resample": 3, "crop_pct": 0.875, "size": {"shortest_edge": 224}}),
    "facebook/convnext-base-224": ({"model_type": "convnext", "depths": [3, 3, 27, 3], "hidden_sizes": [128, 256, 512, 1024]},
                                   {"resample": 3, "crop_pct": 0.875, "size": {"shortest_edge": 224}}),
    "microsoft/swin-tiny-patch4-window7-224": ({"model_type": "swin", "embed_dim": 96, "depths": [2, 2, 6, 2],
                                                "num_heads": [3, 6, 12, 24], "window_size": 7},
                                               {"resample": 3, "image_mean": [0.485, 0.456, 0.406]}),
    "microsoft/swin-base-patch4-window7-224": ({"model_type": "swin", "embed_dim": 128, "depths": [2, 2, 18, 2],
                                                "num_heads": [4, 8, 16, 32], "window_size": 7},
                                               {"resample": 3, "image_mean": [0.485, 0.456, 0.406]}),
    "nateraw/vit-base-beans": ({"model_type": "vit", "num_labels": 3}, {"resample": 2, "image_mean": [0.5] * 3}),
}


@pytest.mark.parametrize("model_id", ORIGINAL_MODELS)
def test_catalog_entry_loads_offline_with_hub_settings(model_id):
    folder = CATALOG_DIR / model_id.replace("/", "--")
    config = AutoConfig.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
    config_facts, processor_facts = CATALOG_FACTS[model_id]
    for key, value in config_facts.items():
        assert getattr(config, key) == value, key
    for key, value in processor_facts.items():
        assert getattr(processor, key) == value, key
    assert json.loads((folder / "config.json").read_text())["image_size"] == 224


_CLIP_PROCESSOR = {"resample": 3, "size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224},
                   "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}
_DINOV2_PROCESSOR = {"resample": 3, "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
                     "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# Hub facts of the retrieval models: (config fields, vision config fields, processor fields).
RETRIEVAL_FACTS = {
    "openai/clip-vit-base-patch32": ({"model_type": "clip", "projection_dim": 512}, {"patch_size": 32, "hidden_size": 768},
                                     _CLIP_PROCESSOR),
    "openai/clip-vit-base-patch16": ({"model_type": "clip", "projection_dim": 512}, {"patch_size": 16, "hidden_size": 768},
                                     _CLIP_PROCESSOR),
    "openai/clip-vit-large-patch14": ({"model_type": "clip", "projection_dim": 768},
                                      {"patch_size": 14, "hidden_size": 1024, "num_hidden_layers": 24}, _CLIP_PROCESSOR),
    "google/siglip-base-patch16-224": ({"model_type": "siglip"}, {"patch_size": 16, "hidden_size": 768, "image_size": 224},
                                       {"resample": 3, "size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3}),
    "facebook/dinov2-small": ({"model_type": "dinov2", "hidden_size": 384, "num_attention_heads": 6, "image_size": 518},
                              {"patch_size": 14}, _DINOV2_PROCESSOR),
    "facebook/dinov2-base": ({"model_type": "dinov2", "hidden_size": 768, "image_size": 518}, {"patch_size": 14},
                             _DINOV2_PROCESSOR),
    # SigLIP 2 at a fixed resolution: SigLIP's architecture and model type, Gemma's 256k vocabulary, bilinear resize
    # (transformers' convert_siglip2_to_hf: vocab_size 256_000; the published processor: resample 2).
    "google/siglip2-base-patch16-224": ({"model_type": "siglip"}, {"patch_size": 16, "hidden_size": 768, "image_size": 224},
                                        {"resample": 2, "size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3}),
    # MetaCLIP 2: ViT-L/14 with XLM-V's 901,629-token vocabulary (convert_metaclip_2_to_hf: eos from XLM-V's
    # tokenizer, 2; the processor resizes to a square, size {height, width}, then crops).
    "facebook/metaclip-2-worldwide-l14": ({"model_type": "metaclip_2", "projection_dim": 768},
                                          {"patch_size": 14, "hidden_size": 1024, "num_hidden_layers": 24},
                                          {**_CLIP_PROCESSOR, "size": {"height": 224, "width": 224}}),
    # AIMv2-L LiT: the attention-pooling head (use_head, set by convert_aimv2_original_pytorch_to_hf), RMSNorm, SwiGLU.
    "apple/aimv2-large-patch14-224-lit": ({"model_type": "aimv2", "projection_dim": 768},
                                          {"patch_size": 14, "hidden_size": 1024, "num_hidden_layers": 24,
                                           "num_attention_heads": 8, "intermediate_size": 2816, "use_head": True},
                                          _CLIP_PROCESSOR),
}


@pytest.mark.parametrize("model_id", sorted(RETRIEVAL_FACTS))
def test_retrieval_catalog_entry_loads_offline_with_hub_settings(model_id):
    folder = CATALOG_DIR / model_id.replace("/", "--")
    config = AutoConfig.from_pretrained(folder)
    processor = AutoImageProcessor.from_pretrained(folder, use_fast=False)
    config_facts, vision_facts, processor_facts = RETRIEVAL_FACTS[model_id]
    vision = getattr(config, "vision_config", config)
    for key, value in config_facts.items():
        assert getattr(config, key) == value, key
    for key, value in vision_facts.items():
        assert getattr(vision, key) == value, key
    for key, value in processor_facts.items():
        assert getattr(processor, key) == value, key
    if config.model_type == "clip":  # openai's legacy ids: the end of a text is found by argmax
        assert (config.text_config.eos_token_id, config.text_config.max_position_embeddings) == (2, 77)
    if config.model_type == "siglip" and "siglip2" in model_id:
        assert (config.text_config.vocab_size, config.text_config.max_position_embeddings) == (256000, 64)
    if config.model_type == "metaclip_2":
        assert (config.text_config.vocab_size, config.text_config.eos_token_id, config.text_config.pad_token_id) == (901629, 2, 1)
    if config.model_type == "aimv2":
        assert (config.text_config.vocab_size, config.text_config.eos_token_id, config.text_config.hidden_size) == (49408, 49407, 768)
