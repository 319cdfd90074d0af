"""The ONNX Runtime backend on the CPU: parity with torch for every family, the export cache, pre-exported
folders, int8, and the errors for what cannot run here (GPU providers, unsupported model types)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from transformers import IJepaConfig, IJepaModel  # noqa: E402

from backends import load_backend  # noqa: E402
from backends.base import BackendConfig, BackendError  # noqa: E402
from backends.onnx_backend import OnnxBackend  # noqa: E402
from backends.onnx_export import ExportError, export_model  # noqa: E402
from backends.onnx_manifest import MANIFEST, MODEL_FILE, ExportOptions, read_export  # noqa: E402
from backends.onnx_providers import ProviderPlan  # noqa: E402
from iei.models import catalog_dir  # noqa: E402
from tests.model_factory import FAMILIES, make_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-onnx")
    return {family: make_tiny_model(family, root) for family in FAMILIES}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224), dtype=np.float32)


def _onnx(model: Path | str, cache: Path, **kwargs):
    return load_backend("onnx", BackendConfig(model=str(model), device="cpu", onnx_cache_dir=str(cache), **kwargs))


def _torch(model: Path | str, **kwargs):
    return load_backend("torch", BackendConfig(model=str(model), device="cpu", **kwargs))


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_matches_torch(tiny_dir, cache, family):
    affine = {"pixel_scale": (0.01, 0.02, 0.03), "pixel_offset": (-1.0, -0.5, 0.25)}
    onnx, torch_backend = _onnx(tiny_dir[family], cache, **affine), _torch(tiny_dir[family], **affine)
    floats = _pixels(3)
    np.testing.assert_allclose(onnx.embed_images(floats), torch_backend.embed_images(floats), rtol=0, atol=1e-4)
    raw = np.random.default_rng(1).integers(0, 256, (2, 3, 224, 224), dtype=np.uint8)  # uint8 + affine path
    np.testing.assert_allclose(onnx.embed_images(raw), torch_backend.embed_images(raw), rtol=0, atol=1e-4)
    info = onnx.info
    assert (info.backend, info.device, info.dtype, info.precision, info.provider) == (
        "onnx", "cpu", "float32", "fp32", "CPUExecutionProvider")
    assert (info.pooling, info.embedding_dim, info.image_size) == (torch_backend.info.pooling, torch_backend.info.embedding_dim, (224, 224))
    assert info.model_file.endswith(MODEL_FILE) and Path(info.model_file).is_file()
    assert read_export(Path(info.model_file).parent).check_max_abs_diff <= 1e-5


def test_cls_pooling_is_exported(tiny_dir, cache):
    onnx, torch_backend = _onnx(tiny_dir["vit"], cache, pooling="cls"), _torch(tiny_dir["vit"], pooling="cls")
    np.testing.assert_allclose(onnx.embed_images(_pixels(2)), torch_backend.embed_images(_pixels(2)), rtol=0, atol=1e-4)
    assert onnx.info.pooling == "cls"


def test_o3_is_close_but_separately_cached(tiny_dir, cache):
    o2, o3 = _onnx(tiny_dir["vit"], cache), _onnx(tiny_dir["vit"], cache, onnx_optimize="O3")
    assert o2.info.model_file != o3.info.model_file
    np.testing.assert_allclose(o3.embed_images(_pixels(2)), o2.embed_images(_pixels(2)), rtol=0, atol=1e-3)


def test_batch_and_dtype_errors(tiny_dir, cache):
    backend = _onnx(tiny_dir["vit"], cache)
    with pytest.raises(BackendError, match="expected pixels of shape"):
        backend.embed_images(np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(BackendError, match="uint8 or float32"):
        backend.embed_images(np.zeros((1, 3, 224, 224), dtype=np.float64))
    backend.warmup()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.embed_images(_pixels(1))


def test_io_binding_path_gives_the_same_vectors(tiny_dir, cache):
    """The CUDA/TensorRT run path (IO binding) exercised with the CPU provider."""
    plain = _onnx(tiny_dir["vit"], cache)
    bound = OnnxBackend(plain._session, read_export(Path(plain.info.model_file).parent),
                        ProviderPlan(providers=("CPUExecutionProvider",), provider_options=({},), device="cpu",
                                     precision="fp32", graph_precision="fp32", io_binding=True),
                        plain.info, 8, (plain._scale, plain._offset))
    np.testing.assert_array_equal(bound.embed_images(_pixels(3)), plain.embed_images(_pixels(3)))


# -- the export cache ------------------------------------------------------------------------------


def test_second_load_reuses_the_export(tiny_dir, tmp_path):
    first = _onnx(tiny_dir["deit"], tmp_path)
    model_file = Path(first.info.model_file)
    stamp = model_file.stat().st_mtime_ns
    second = _onnx(tiny_dir["deit"], tmp_path)
    assert second.info.model_file == str(model_file) and model_file.stat().st_mtime_ns == stamp
    assert len([p for p in model_file.parent.parent.iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.parametrize("damage", ["truncate", "delete_manifest", "garble_manifest"])
def test_corrupt_cache_entry_is_rebuilt(tiny_dir, tmp_path, damage):
    first = _onnx(tiny_dir["vit"], tmp_path)
    model_file = Path(first.info.model_file)
    expected = first.embed_images(_pixels(2))
    first.close()
    if damage == "truncate":
        data = model_file.read_bytes()
        model_file.write_bytes(data[: len(data) // 2])
    elif damage == "delete_manifest":
        (model_file.parent / MANIFEST).unlink()
    else:
        (model_file.parent / MANIFEST).write_text("{not json")
    os.utime(model_file, ns=(0, 0))
    rebuilt = _onnx(tiny_dir["vit"], tmp_path)
    assert rebuilt.info.model_file == str(model_file) and model_file.stat().st_mtime_ns != 0
    np.testing.assert_allclose(rebuilt.embed_images(_pixels(2)), expected, rtol=0, atol=1e-6)
    assert not [p for p in model_file.parent.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_changed_local_weights_get_a_new_entry(tmp_path):
    folder = make_tiny_model("vit", tmp_path / "models")
    first = _onnx(folder, tmp_path / "cache").info.model_file
    (folder / "config.json").touch()
    os.utime(folder / "config.json", ns=(1, 1))
    assert _onnx(folder, tmp_path / "cache").info.model_file != first


# -- pre-exported folders --------------------------------------------------------------------------


def test_pre_exported_folder_serves_directly(tiny_dir, tmp_path):
    out = tmp_path / "exported"
    manifest = export_model(BackendConfig(model=str(tiny_dir["swin"])), ExportOptions(), out)
    assert {p.name for p in out.iterdir()} >= {MODEL_FILE, MANIFEST, "config.json", "preprocessor_config.json"}
    backend = _onnx(out, tmp_path / "unused-cache")
    assert backend.info.model_file == str(out / MODEL_FILE) and not (tmp_path / "unused-cache").exists()
    assert backend.info.embedding_dim == manifest.embedding_dim and backend.info.model_type == "swin"
    np.testing.assert_allclose(backend.embed_images(_pixels(2)), _torch(tiny_dir["swin"]).embed_images(_pixels(2)), atol=1e-4)
    with pytest.raises(BackendError, match="export it with `iei export --quantize int8`"):
        _onnx(out, tmp_path, quantize="int8")


def test_plain_onnx_folder_without_manifest_is_refused(tiny_dir, tmp_path):
    out = tmp_path / "exported"
    export_model(BackendConfig(model=str(tiny_dir["vit"])), ExportOptions(), out)
    (out / MANIFEST).unlink()
    with pytest.raises(BackendError, match="no iei-export.json.*pooling is part of the exported graph"):
        _onnx(out, tmp_path)


def test_fp16_export_keeps_float32_io(tiny_dir, tmp_path):
    import onnxruntime as ort

    manifest = export_model(BackendConfig(model=str(tiny_dir["vit"])), ExportOptions(precision="fp16"), tmp_path / "fp16")
    assert manifest.precision == "fp16" and manifest.check_max_abs_diff < 1e-2
    session = ort.InferenceSession(str(tmp_path / "fp16" / MODEL_FILE), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)" and session.get_outputs()[0].type == "tensor(float)"
    with pytest.raises(BackendError, match="float16 model, which needs the CUDA provider"):
        _onnx(tmp_path / "fp16", tmp_path)


# -- int8 ------------------------------------------------------------------------------------------


def test_int8_tiny(tiny_dir, cache):
    int8, fp32 = _onnx(tiny_dir["vit"], cache, quantize="int8"), _onnx(tiny_dir["vit"], cache)
    assert (int8.info.precision, int8.info.dtype) == ("int8", "float32")
    assert read_export(Path(int8.info.model_file).parent).int8_isa in ("avx512_vnni", "avx512", "avx2", "arm64")
    assert _cosine(int8.embed_images(_pixels(4)), fp32.embed_images(_pixels(4))).min() >= 0.99


@pytest.mark.slow
def test_int8_vit_base_cosine_on_seed_images(tmp_path, seed_images):
    """vit-base-sized random weights (the catalog's google/vit-base-patch16-224 config): int8 vs fp32
    on the six seed images. Measured 0.99973 on AVX2 (u8 weights)."""
    from iei.preprocess.image import pixel_affine, prepare_pixels
    from iei.preprocess.spec import load_spec

    config_dir = str(catalog_dir("google/vit-base-patch16-224"))
    spec = load_spec(config_dir, None)
    scale, offset = pixel_affine(spec)
    pixels = np.stack([prepare_pixels(image, spec) for image in seed_images])
    common = {"model": "google/vit-base-patch16-224", "load_format": "dummy", "config_dir": config_dir, "device": "cpu",
              "onnx_cache_dir": str(tmp_path), "pixel_scale": scale, "pixel_offset": offset}
    fp32 = load_backend("onnx", BackendConfig(**common)).embed_images(pixels)
    int8 = load_backend("onnx", BackendConfig(**common, quantize="int8")).embed_images(pixels)
    cosines = _cosine(int8, fp32)
    print(f"int8 vs fp32 cosine on the seed images: min {cosines.min():.5f}, mean {cosines.mean():.5f}")
    assert cosines.min() >= 0.999


# -- what cannot run here --------------------------------------------------------------------------


@pytest.mark.parametrize("backend, device", [("onnx", "cuda"), ("onnx", "cuda:1"), ("tensorrt", "auto"), ("tensorrt", "cuda")])
def test_gpu_provider_missing_is_a_clear_start_error(tiny_dir, tmp_path, backend, device):
    config = BackendConfig(model=str(tiny_dir["vit"]), device=device, onnx_cache_dir=str(tmp_path))
    with pytest.raises(BackendError, match="onnxruntime-gpu") as raised:
        load_backend(backend, config)
    assert "--allow-cpu-fallback" in str(raised.value)
    assert not any(tmp_path.iterdir())  # refused before exporting


def test_cpu_fallback_only_when_allowed(tiny_dir, tmp_path):
    backend = load_backend("onnx", BackendConfig(model=str(tiny_dir["vit"]), device="cuda", allow_cpu_fallback=True,
                                                 onnx_cache_dir=str(tmp_path)))
    assert (backend.info.device, backend.info.provider, backend.info.precision) == ("cpu", "CPUExecutionProvider", "fp32")


def test_unsupported_model_type_names_it(tmp_path):
    folder = tmp_path / "ijepa"
    IJepaModel(IJepaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=224, patch_size=32)).save_pretrained(folder)
    shutil.copyfile(catalog_dir("google/vit-base-patch16-224") / "preprocessor_config.json", folder / "preprocessor_config.json")
    # an explicit pooling: a type outside IEI's family table starts only with one (docs/models.md)
    with pytest.raises(ExportError, match="model type 'ijepa'") as raised:
        _onnx(folder, tmp_path / "cache", pooling="mean")
    assert "--backend torch" in str(raised.value) and "Traceback" not in str(raised.value)
    with pytest.raises(BackendError, match="'ijepa' is not in IEI's model family table"):
        _onnx(folder, tmp_path / "cache")


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int8", "dtype": "float16"}, "float16 is not supported on CPU"),
    ({"dtype": "bfloat16"}, "bfloat16 is not supported by the ONNX backends"),
    ({"onnx_optimize": "O9"}, "unknown optimisation level"),
])
def test_bad_combinations(tiny_dir, tmp_path, kwargs, message):
    with pytest.raises(BackendError, match=message):
        _onnx(tiny_dir["vit"], tmp_path, **kwargs)
