"""The 2025 CLIP-style families (SigLIP 2 FixRes, MetaCLIP 2, AIMv2 LiT and vision-only) against transformers'
own definitions, on torch and ONNX, and the wrong-vector rule: a dual encoder defaults to its projection, a
model type IEI has no family entry for starts only with an explicit pooling (docs/models.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, ViTMSNConfig, ViTMSNModel

from backends import load_backend
from backends.base import BackendConfig, BackendError
from backends.pooling import EmbeddingModel, PoolingError, TextEmbeddingModel, has_text, resolve_pooling
from backends.torch_backend import load_torch_backend
from iei.models import resolve_model
from iei.preprocess.random_tokenizer import random_tokenizer_kind
from tests.model_factory import DUAL_FAMILIES, make_tiny_model, model_card_tokens

TEXTS = ["a photo of a cat", "", "a much longer description of a leather bag with a brass buckle and two straps"]
TEXT_DUALS = ("siglip2_fixres", "metaclip_2", "aimv2")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-dual")
    return {family: make_tiny_model(family, root) for family in DUAL_FAMILIES}


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _model(tiny_dir, family):
    return AutoModel.from_pretrained(tiny_dir[family]).eval()


def _tokens(tiny_dir, family, texts=TEXTS):
    return model_card_tokens(tiny_dir[family], family, texts)


def test_dual_encoders_default_to_the_vector_in_the_texts_space():
    assert [resolve_pooling(t, None) for t in ("metaclip_2", "aimv2", "aimv2_vision_model")] == \
        ["projection", "projection", "mean"]
    assert has_text("metaclip_2", "projection") and has_text("aimv2", "projection")
    assert not has_text("aimv2", "pooler") and not has_text("aimv2_vision_model", "mean")
    with pytest.raises(PoolingError, match="does not apply"):
        resolve_pooling("aimv2", "cls")  # no CLS token: the head's query is its own parameter


def test_unknown_model_type_needs_an_explicit_pooling():
    refusal = r"model type 'vit_msn' is not in IEI's model family table.*--pooling mean.*--pooling pooler"
    with pytest.raises(PoolingError, match=refusal):
        resolve_pooling("vit_msn", None, ViTMSNModel)
    assert resolve_pooling("vit_msn", "mean", ViTMSNModel) == "mean"


def test_unknown_model_type_refuses_to_start_and_starts_when_asked(tmp_path):
    folder = tmp_path / "vit-msn"
    ViTMSNModel(ViTMSNConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=224, patch_size=32)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text('{"image_processor_type": "ViTImageProcessor"}')
    with pytest.raises(BackendError, match="'vit_msn' is not in IEI's model family table"):
        load_torch_backend(BackendConfig(model=str(folder), device="cpu", max_batch_size=1))
    backend = load_torch_backend(BackendConfig(model=str(folder), device="cpu", pooling="mean", max_batch_size=1))
    assert (backend.info.pooling, backend.info.modalities, backend.info.embedding_dim) == ("mean", ("image",), 32)


@pytest.mark.parametrize("family", DUAL_FAMILIES)
def test_default_image_embedding_is_the_authors(tiny_dir, pixels, family):
    model = _model(tiny_dir, family)
    pooling = resolve_pooling(model.config.model_type, None)
    with torch.inference_mode():
        got = EmbeddingModel(model, pooling)(pixels)
        if family == "aimv2_vision_model":  # the model card's patch features, averaged (no CLS, no head)
            want = model(pixel_values=pixels).last_hidden_state.mean(1)
        else:
            want = model.get_image_features(pixel_values=pixels)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["metaclip_2", "aimv2"])
def test_other_poolings(tiny_dir, pixels, family):
    model = _model(tiny_dir, family)
    with torch.inference_mode():
        vision = model.vision_model(pixel_values=pixels)
        for pooling, want in (("pooler", vision.pooler_output), ("mean", vision.last_hidden_state.mean(1))):
            torch.testing.assert_close(EmbeddingModel(model, pooling)(pixels), want, rtol=0, atol=0, msg=pooling)


def test_aimv2_vision_only_has_no_pooler(tiny_dir, pixels):
    """The vision-only checkpoints carry no attention-pooling head: `pooler` is a clear error, not zeros."""
    with pytest.raises(BackendError, match="no pooler_output"):
        load_torch_backend(BackendConfig(model=str(tiny_dir["aimv2_vision_model"]), device="cpu", pooling="pooler",
                                         max_batch_size=1))


@pytest.mark.parametrize("family", TEXT_DUALS)
def test_text_tower_is_get_text_features(tiny_dir, family):
    model = _model(tiny_dir, family)
    tokens = _tokens(tiny_dir, family)
    with torch.inference_mode():
        if family == "siglip2_fixres":  # trained without a mask, like SigLIP
            want = model.get_text_features(input_ids=tokens["input_ids"])
        else:
            want = model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        got = TextEmbeddingModel(model)(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", TEXT_DUALS)
def test_torch_and_onnx_match_the_reference(tiny_dir, tmp_path, family):
    config = BackendConfig(model=str(tiny_dir[family]), device="cpu", image_size=(224, 224), max_batch_size=3,
                           onnx_cache_dir=str(tmp_path))
    backends = {name: load_backend(name, config) for name in ("torch", "onnx")}
    model = _model(tiny_dir, family)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    scale, offset = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in (config.pixel_scale, config.pixel_offset))
    tokens = _tokens(tiny_dir, family)
    with torch.inference_mode():
        want_image = EmbeddingModel(model, backends["torch"].info.pooling)(torch.from_numpy(pixels * scale + offset)).numpy()
        want_text = TextEmbeddingModel(model)(tokens["input_ids"], tokens["attention_mask"]).numpy()
    for name, backend in backends.items():
        assert backend.info.modalities == ("image", "text"), name
        assert backend.info.text_padding == ("max_length" if family == "siglip2_fixres" else "longest"), name
        np.testing.assert_allclose(backend.embed_images(pixels), want_image, rtol=0, atol=1e-5, err_msg=name)
        got = backend.embed_texts(tokens["input_ids"].numpy(), tokens["attention_mask"].numpy())
        np.testing.assert_allclose(got, want_text, rtol=0, atol=1e-5, err_msg=name)


def test_aimv2_vision_only_onnx_matches_torch(tiny_dir, tmp_path):
    config = BackendConfig(model=str(tiny_dir["aimv2_vision_model"]), device="cpu", image_size=(224, 224),
                           max_batch_size=2, onnx_cache_dir=str(tmp_path))
    onnx, torch_backend = load_backend("onnx", config), load_backend("torch", config)
    assert onnx.info.modalities == ("image",) and onnx.info.pooling == "mean"
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)
    np.testing.assert_allclose(onnx.embed_images(pixels), torch_backend.embed_images(pixels), rtol=0, atol=1e-5)


# model id -> (class, embedding width, text length, random tokenizer kind)
DUAL_CATALOG = {
    "google/siglip2-base-patch16-224": ("SiglipModel", 768, 64, "gemma"),
    "facebook/metaclip-2-worldwide-l14": ("MetaClip2Model", 768, 77, "metaclip_2"),
    "apple/aimv2-large-patch14-224-lit": ("Aimv2Model", 768, 77, "aimv2"),
}


@pytest.mark.parametrize("model_id", sorted(DUAL_CATALOG))
def test_catalog_builds_the_right_architecture(model_id):
    """On the meta device (shapes only): what `--load-format dummy` builds, and both towers' widths."""
    source = resolve_model(model_id, None, "dummy")
    config = AutoConfig.from_pretrained(source.config_dir)
    class_name, dim, text_length, kind = DUAL_CATALOG[model_id]
    pooling = resolve_pooling(config.model_type, None)
    assert has_text(config.model_type, pooling)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
        image = EmbeddingModel(model, pooling)(torch.zeros(2, 3, 224, 224))
        text = TextEmbeddingModel(model)(torch.zeros(2, 7, dtype=torch.long), torch.ones(2, 7, dtype=torch.long))
    assert type(model).__name__ == class_name
    assert tuple(image.shape) == tuple(text.shape) == (2, dim)
    assert config.text_config.max_position_embeddings == text_length
    assert random_tokenizer_kind(config.model_type, source.config_dir) == kind


def _external_data_export(tiny_dir, tmp_path, monkeypatch, options):
    """MetaCLIP 2's text tower (a 901,629-token vocabulary: 2.8 GB of float32) is past protobuf's 2 GB limit for one
    ONNX file, so its weights go to an external-data file. Simulated here with a lower threshold: both tiny graphs
    (each over 100 KB of weights) take that path."""
    from backends import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_MIN_BYTES", 100_000)
    config = BackendConfig(model=str(tiny_dir["metaclip_2"]), device="cpu", image_size=(224, 224), max_batch_size=3)
    out = tmp_path / "export"
    return out, onnx_export.export_model(config, options, out)


def test_a_graph_past_two_gigabytes_is_exported_with_external_data_and_served(tiny_dir, tmp_path, monkeypatch):
    from backends.onnx_manifest import CorruptExport, ExportOptions, read_export

    out, manifest = _external_data_export(tiny_dir, tmp_path, monkeypatch, ExportOptions(optimize="O2"))
    graphs = ("model.onnx", "text_model.onnx")
    assert sorted(manifest.files) == sorted((*graphs, *(g + "_data" for g in graphs)))
    assert sorted(p.name for p in out.iterdir() if "onnx" in p.name) == sorted(manifest.files)  # no trace leftovers
    for graph in graphs:  # the graph file holds no weights; the data file is as readable as the graph
        assert (out / graph).stat().st_size < 100_000 < (out / (graph + "_data")).stat().st_size
        assert (out / (graph + "_data")).stat().st_mode == (out / graph).stat().st_mode
    # ORT's offline optimiser is skipped for graphs with external data (memory), and the manifest says so
    assert manifest.optimize == "O2" and manifest.unoptimized == graphs
    assert manifest.check_max_abs_diff <= 1e-4

    config = BackendConfig(model=str(tiny_dir["metaclip_2"]), device="cpu", image_size=(224, 224), max_batch_size=3)
    torch_backend = load_backend("torch", config)
    onnx = load_backend("onnx", BackendConfig(model=str(out), device="cpu", max_batch_size=3))  # the folder as the model
    assert onnx.info.modalities == ("image", "text")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    np.testing.assert_allclose(onnx.embed_images(pixels), torch_backend.embed_images(pixels), rtol=0, atol=1e-4)
    tokens = _tokens(tiny_dir, "metaclip_2")
    ids, mask = tokens["input_ids"].numpy(), tokens["attention_mask"].numpy()
    np.testing.assert_allclose(onnx.embed_texts(ids, mask), torch_backend.embed_texts(ids, mask), rtol=0, atol=1e-4)

    # `--backend onnx` on the model itself: exported into the cache (staged, then renamed) and served the same way
    cached = load_backend("onnx", BackendConfig(model=str(tiny_dir["metaclip_2"]), device="cpu", image_size=(224, 224),
                                                max_batch_size=3, onnx_cache_dir=str(tmp_path / "cache")))
    np.testing.assert_allclose(cached.embed_texts(ids, mask), torch_backend.embed_texts(ids, mask), rtol=0, atol=1e-4)
    assert len(list((tmp_path / "cache").rglob("text_model.onnx_data"))) == 1

    # the data files are checksummed like the graphs: a truncated copy is caught
    data = out / "text_model.onnx_data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(CorruptExport, match="text_model.onnx_data does not match its checksum"):
        read_export(out)


def test_int8_of_a_graph_with_external_data(tiny_dir, tmp_path, monkeypatch):
    from backends.onnx_manifest import ExportOptions

    out, manifest = _external_data_export(tiny_dir, tmp_path, monkeypatch, ExportOptions(precision="int8"))
    assert manifest.precision == "int8" and manifest.unoptimized == ()
    # int8 weights are a quarter of float32: each graph (111 KB and 177 KB of float32 here) fits one file again,
    # and the float32 data file is gone
    assert sorted(p.name for p in out.iterdir() if "onnx" in p.name) == sorted(manifest.files)
    assert "text_model.onnx" in manifest.files and "text_model.onnx_data" not in manifest.files
    assert manifest.check_max_abs_diff < 0.1
