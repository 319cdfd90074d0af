"""The PyTorch backend: loading (folder, hub cache, dummy), the embedding it returns, and its errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, ViTConfig, ViTForImageClassification

from backends import load_backend
from backends.base import BackendConfig, BackendError, warmup_batch_sizes
from backends.pooling import EmbeddingModel, model_kwargs
from backends.torch_backend import TorchBackend, load_torch_backend
from iei.models import resolve_model
from tests.model_factory import FAMILIES, TINY_EMBEDDING_DIM, make_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: make_tiny_model(family, root) for family in FAMILIES}


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224), dtype=np.float32)


def _load(path: Path | str, **kwargs) -> TorchBackend:
    return load_torch_backend(BackendConfig(model=str(path), device="cpu", **kwargs))


def _reference(path: Path, family: str, pixels: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """The original server's embedding, written out with transformers alone."""
    x = torch.from_numpy(pixels)
    with torch.inference_mode():
        if pooling == "pooler" or family == "convnext":
            return AutoModel.from_pretrained(path).eval()(pixel_values=x).pooler_output.flatten(1).numpy()
        hidden = AutoModel.from_pretrained(path, add_pooling_layer=False).eval()(pixel_values=x).last_hidden_state
        return (hidden[:, 0] if pooling == "cls" else hidden.mean(1)).numpy()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("family", FAMILIES)
def test_default_embedding_matches_transformers(tiny_dir, family, batch):
    backend = _load(tiny_dir[family])
    pixels = _pixels(batch)
    got = backend.embed_images(pixels)
    assert got.dtype == np.float32 and got.shape == (batch, TINY_EMBEDDING_DIM[family])
    np.testing.assert_allclose(got, _reference(tiny_dir[family], family, pixels), rtol=0, atol=1e-5)
    info = backend.info
    assert (info.pooling, info.embedding_dim, info.image_size) == ("mean", TINY_EMBEDDING_DIM[family], (224, 224))
    assert (info.backend, info.device, info.dtype, info.random_weights) == ("torch", "cpu", "float32", False)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_cpu_weights_live_in_process_memory_not_in_the_checkpoint_map(tiny_dir):
    """transformers maps the safetensors file and would keep its pages as the weights; pages the kernel
    may drop while the server idles. The backend copies them out, so the map is gone after loading."""
    checkpoint = str(tiny_dir["vit"] / "model.safetensors")
    model = AutoModel.from_pretrained(tiny_dir["vit"])
    assert checkpoint in Path("/proc/self/maps").read_text()  # what transformers leaves: a mapped file
    del model
    backend = _load(tiny_dir["vit"])
    assert checkpoint not in Path("/proc/self/maps").read_text()
    assert backend.embed_images(_pixels(1)).shape == (1, TINY_EMBEDDING_DIM["vit"])


@pytest.mark.parametrize("family", ["vit", "deit", "beit"])
def test_cls_pooling(tiny_dir, family):
    backend = _load(tiny_dir[family], pooling="cls")
    pixels = _pixels(2)
    np.testing.assert_allclose(backend.embed_images(pixels), _reference(tiny_dir[family], family, pixels, "cls"), rtol=0, atol=1e-5)
    assert backend.info.pooling == "cls"


@pytest.mark.parametrize("family", FAMILIES)
def test_pooler_pooling(tiny_dir, family):
    backend = _load(tiny_dir[family], pooling="pooler")
    pixels = _pixels(2)
    np.testing.assert_allclose(backend.embed_images(pixels), _reference(tiny_dir[family], family, pixels, "pooler"), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("family", "pooling"), [("swin", "cls"), ("convnext", "cls"), ("vit", "max")])
def test_invalid_pooling_is_a_backend_error(tiny_dir, family, pooling):
    with pytest.raises(BackendError, match=repr(pooling)):
        _load(tiny_dir[family], pooling=pooling)


def test_pooler_without_trained_pooler_weights_is_refused(tmp_path):
    """google/vit-base-patch16-224 is a ViTForImageClassification checkpoint: no pooler weights.
    `pooler` would silently be random, so it is refused; the default loads fine."""
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=64, patch_size=32, num_labels=3))
    model.save_pretrained(tmp_path)
    shutil.copyfile(resolve_model("google/vit-base-patch16-224", None, "dummy").config_dir + "/preprocessor_config.json",
                    tmp_path / "preprocessor_config.json")
    with pytest.raises(BackendError, match="pooler"):
        _load(tmp_path, pooling="pooler")
    backend = _load(tmp_path)
    x = torch.from_numpy(_pixels(1))
    with torch.inference_mode():
        expected = model.eval().vit(pixel_values=x).last_hidden_state.mean(1).numpy()
    np.testing.assert_allclose(backend.embed_images(_pixels(1)), expected, rtol=0, atol=1e-5)


def test_load_backend_registry_finds_torch(tiny_dir):
    backend = load_backend("torch", BackendConfig(model=str(tiny_dir["vit"]), device="cpu"))
    assert isinstance(backend, TorchBackend)


def test_dummy_load_from_a_folder_is_random_loud_and_reproducible(tiny_dir, caplog):
    config = BackendConfig(model="tiny-vit", load_format="dummy", config_dir=str(tiny_dir["vit"]), device="cpu")
    with caplog.at_level(logging.WARNING, logger="iei.backends"):
        first = load_torch_backend(config)
    assert any("RANDOM WEIGHTS" in r.getMessage() for r in caplog.records if r.name == "iei.backends")
    assert first.info.random_weights and first.info.model_id == "tiny-vit" and first.info.model_sha is None
    second = load_torch_backend(config)
    pixels = _pixels(2)
    np.testing.assert_array_equal(first.embed_images(pixels), second.embed_images(pixels))
    # random, not the saved weights
    assert not np.allclose(first.embed_images(pixels), _reference(tiny_dir["vit"], "vit", pixels), atol=1e-3)


# Published sizes (with classifier heads); the backbone alone is within a few percent.
CATALOG_PARAMS_M = {
    "google/vit-base-patch16-224": 86, "facebook/deit-base-patch16-224": 86, "microsoft/beit-base-patch16-224": 86,
    "facebook/convnext-tiny-224": 28, "facebook/convnext-base-224": 88, "microsoft/swin-tiny-patch4-window7-224": 28,
    "microsoft/swin-base-patch4-window7-224": 88, "nateraw/vit-base-beans": 86,
}
CATALOG_DIM = {
    "google/vit-base-patch16-224": 768, "facebook/deit-base-patch16-224": 768, "microsoft/beit-base-patch16-224": 768,
    "facebook/convnext-tiny-224": 768, "facebook/convnext-base-224": 1024, "microsoft/swin-tiny-patch4-window7-224": 768,
    "microsoft/swin-base-patch4-window7-224": 1024, "nateraw/vit-base-beans": 768,
}
CATALOG_TYPE = {"facebook/convnext-tiny-224": "convnext", "facebook/convnext-base-224": "convnext",
                "microsoft/beit-base-patch16-224": "beit", "microsoft/swin-tiny-patch4-window7-224": "swin",
                "microsoft/swin-base-patch4-window7-224": "swin"}


CATALOG_CLASS = {"vit": "ViTModel", "beit": "BeitModel", "swin": "SwinModel", "convnext": "ConvNextModel"}


@pytest.mark.parametrize("model_id", sorted(CATALOG_PARAMS_M))
def test_catalog_entry_builds_the_right_architecture(model_id):
    """Fast: on the meta device (shapes only, no weights), the way the backend builds it."""
    config = AutoConfig.from_pretrained(resolve_model(model_id, None, "dummy").config_dir)
    with torch.device("meta"):
        model = AutoModel.from_config(config, **model_kwargs(config.model_type, "mean"))
        pooled = EmbeddingModel(model, "mean")(torch.zeros(2, 3, 224, 224))
    model_type = CATALOG_TYPE.get(model_id, "vit")
    assert config.model_type == model_type and type(model).__name__ == CATALOG_CLASS[model_type]
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(CATALOG_PARAMS_M[model_id], rel=0.03)
    assert tuple(pooled.shape) == (2, CATALOG_DIM[model_id])


@pytest.mark.slow
@pytest.mark.parametrize("model_id", sorted(CATALOG_PARAMS_M))
def test_dummy_catalog_build(model_id):
    """The real thing: random full-size weights through the backend (several seconds each here)."""
    source = resolve_model(model_id, None, "dummy")
    backend = load_torch_backend(BackendConfig(model=model_id, load_format="dummy", config_dir=source.config_dir,
                                               device="cpu", max_batch_size=2))
    params = sum(p.numel() for p in backend._embedder.parameters()) / 1e6
    assert params == pytest.approx(CATALOG_PARAMS_M[model_id], rel=0.03)
    info = backend.info
    assert (info.embedding_dim, info.image_size, info.pooling) == (CATALOG_DIM[model_id], (224, 224), "mean")
    assert info.model_type == CATALOG_TYPE.get(model_id, "vit") and info.random_weights and info.model_id == model_id
    out = backend.embed_images(np.zeros((1, 3, 224, 224), np.float32))
    assert out.shape == (1, CATALOG_DIM[model_id]) and np.isfinite(out).all()


def test_hub_id_from_an_offline_hf_cache(tiny_dir, tmp_path):
    """By hub id, as the original server loaded, from a cache laid out as huggingface_hub does.
    In a subprocess: HF_HOME and HF_HUB_OFFLINE are read when transformers is imported."""
    commit = "a" * 40
    repo = tmp_path / "hf" / "hub" / "models--google--vit-base-patch16-224"
    shutil.copytree(tiny_dir["vit"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = textwrap.dedent("""
        import json, numpy as np
        from backends.base import BackendConfig, BackendError
        from backends.torch_backend import load_torch_backend
        # float32: compared with a float32 reference (the parent's fake CPU flags do not reach this process)
        b = load_torch_backend(BackendConfig(model="google/vit-base-patch16-224", device="cpu", dtype="float32"))
        out = {"sha": b.info.model_sha, "dim": b.info.embedding_dim,
               "emb": b.embed_images(np.ones((1, 3, 224, 224), np.float32)).tolist()}
        for name in ("nobody/no-such-model", "google/vit-base-patch16-224@nope"):
            try:
                load_torch_backend(BackendConfig(model=name, device="cpu"))
            except BackendError as e:
                out.setdefault("errors", []).append(str(e))
        try:
            load_torch_backend(BackendConfig(model="google/vit-base-patch16-224", revision="v9", device="cpu"))
        except BackendError as e:
            out["errors"].append(str(e))
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["sha"] == commit and out["dim"] == 32
    pixels = np.ones((1, 3, 224, 224), np.float32)
    np.testing.assert_allclose(out["emb"], _reference(tiny_dir["vit"], "vit", pixels), rtol=0, atol=1e-5)
    assert len(out["errors"]) == 3
    for message, name in zip(out["errors"], ["nobody/no-such-model", "google/vit-base-patch16-224@nope", "google/vit-base-patch16-224"]):
        assert message.startswith(f"could not load model {name!r}")
        assert "Traceback" not in message and "\n" not in message
    assert "at revision 'v9'" in out["errors"][2]


def test_missing_local_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackendError, match="folder does not exist") as info:
        _load(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(info.value)


def test_folder_without_image_processor_is_refused(tiny_dir, tmp_path):
    folder = shutil.copytree(tiny_dir["vit"], tmp_path / "no-processor")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(BackendError, match="image processor"):
        _load(folder)


@pytest.mark.parametrize("load_format", ["auto", "dummy"])
def test_text_model_is_refused(tmp_path, load_format):
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(BackendError, match="not a supported image model"):
        _load(tmp_path, load_format=load_format, config_dir=str(tmp_path) if load_format == "dummy" else None)


def test_dummy_without_config_dir():
    with pytest.raises(BackendError, match="config_dir"):
        _load("google/vit-base-patch16-224", load_format="dummy")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda(tiny_dir, device):
    with pytest.raises(BackendError, match="CUDA is not available"):
        load_torch_backend(BackendConfig(model=str(tiny_dir["vit"]), device=device))


def test_unknown_device_and_dtype(tiny_dir):
    with pytest.raises(BackendError, match="device"):
        load_torch_backend(BackendConfig(model=str(tiny_dir["vit"]), device="tpu"))
    with pytest.raises(BackendError, match="dtype"):
        _load(tiny_dir["vit"], dtype="int8")


def test_float16_on_cpu_is_refused(tiny_dir):
    with pytest.raises(BackendError, match="float16 is not supported on CPU"):
        _load(tiny_dir["vit"], dtype="float16")


def test_bfloat16_on_cpu(tiny_dir):
    backend = _load(tiny_dir["vit"], dtype="bfloat16")
    pixels = _pixels(2)
    got = backend.embed_images(pixels)
    assert got.dtype == np.float32 and backend.info.dtype == "bfloat16"
    np.testing.assert_allclose(got, _reference(tiny_dir["vit"], "vit", pixels), rtol=0, atol=0.1)


def test_auto_device_on_cpu(tiny_dir):
    backend = load_torch_backend(BackendConfig(model=str(tiny_dir["vit"])))
    expected = ("cuda:0", "float16") if torch.cuda.is_available() else ("cpu", "float32")
    assert (backend.info.device, backend.info.dtype) == expected


def test_bad_input_shape_or_dtype(tiny_dir):
    backend = _load(tiny_dir["vit"])
    with pytest.raises(BackendError, match=r"expected pixels of shape \(B, 3, 224, 224\)"):
        backend.embed_images(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(BackendError, match="uint8 or float32"):
        backend.embed_images(np.zeros((1, 3, 224, 224), np.float64))


def test_failure_in_forward_is_a_backend_error(tiny_dir, monkeypatch):
    backend = _load(tiny_dir["vit"])

    def explode(x):
        raise RuntimeError("CUDA error: device-side assert triggered\nmore detail\nTraceback (most recent call last)")

    monkeypatch.setattr(backend, "_embedder", explode)
    with pytest.raises(BackendError) as info:
        backend.embed_images(_pixels(4))
    assert str(info.value) == "model failed on a batch of 4 images: RuntimeError: CUDA error: device-side assert triggered"


def test_warmup_threads_and_close(tiny_dir):
    threads = torch.get_num_threads()
    backend = _load(tiny_dir["swin"], max_batch_size=64, num_threads=threads)
    embed, batches = backend.embed_images, []
    backend.embed_images = lambda pixels, grids=None: batches.append(len(pixels)) or embed(pixels, grids)
    backend.warmup()
    assert batches == [1]  # on the CPU; a GPU also warms the largest batch
    assert warmup_batch_sizes(64, on_gpu=True) == [1, 64] and warmup_batch_sizes(1, on_gpu=True) == [1]
    assert torch.get_num_threads() == threads
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.embed_images(_pixels(1))


def test_uint8_pixels_are_normalised_with_the_configured_affine(tiny_dir):
    scale, offset = (1 / 127.5, 1 / 100.0, 1 / 50.0), (-1.0, -0.5, 0.25)
    backend = _load(tiny_dir["vit"], pixel_scale=scale, pixel_offset=offset)
    raw = np.random.default_rng(3).integers(0, 256, size=(2, 3, 224, 224), dtype=np.uint8)
    normalised = (raw.astype(np.float32) * np.float32(scale).reshape(1, 3, 1, 1)
                  + np.float32(offset).reshape(1, 3, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(backend.embed_images(raw), backend.embed_images(normalised), rtol=0, atol=1e-5)
    np.testing.assert_allclose(backend.embed_images(raw), _reference(tiny_dir["vit"], "vit", normalised), atol=1e-5)
