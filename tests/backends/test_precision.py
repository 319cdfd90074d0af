"""`--dtype auto` on the CPU: bfloat16 where the CPU has bf16 units, float32 elsewhere, and the parity probe
that falls back to float32 when the cheaper precision changes the embedding."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from backends import precision, torch_backend
from backends.base import BackendConfig
from backends.precision import PARITY_MIN_COSINE, bf16_unit, choose, cpu_flags, min_cosine, probe_texts
from backends.torch_backend import load_torch_backend
from tests.fakes import serve_engine

AVX512_BF16 = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})
AMX = frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_int8"})
NO_BF16 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni"})


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: other\n")
    return str(path)


def test_flags_are_read_from_cpuinfo(tmp_path):
    assert cpu_flags(_cpuinfo(tmp_path, "fpu avx2 avx512_bf16")) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize(("flags", "unit"), [(AMX, "amx_bf16"), (AVX512_BF16, "avx512_bf16"), (NO_BF16, None)])
def test_bf16_unit(flags, unit):
    assert bf16_unit(flags) == unit


def test_auto_on_the_cpu_follows_the_bf16_units():
    with_units = choose("auto", "cpu", AMX)
    assert (with_units.dtype, with_units.probe, with_units.reason) == ("bfloat16", True, "bfloat16: CPU has amx_bf16")
    without = choose("auto", "cpu", NO_BF16)
    assert (without.dtype, without.probe) == ("float32", False)
    assert without.reason.startswith("float32: the CPU has no bf16 units")


def test_explicit_dtypes_and_cuda_are_not_probed():
    assert choose("float32", "cpu", AMX) == precision.PrecisionChoice("float32", "requested")
    assert choose("bfloat16", "cpu", NO_BF16) == precision.PrecisionChoice("bfloat16", "requested")
    assert choose("auto", "cuda", AMX).dtype == "float16" and not choose("auto", "cuda", AMX).probe


def test_a_candidate_about_as_fast_as_float32_is_not_taken():
    choice = choose("auto", "cpu", AMX)
    assert precision.probe_verdict(choice, 0.99999, seconds=(1.0, 0.95)) == (False, (
        "float32: bfloat16 (CPU has amx_bf16) kept parity (min cosine 0.999990) but was not x1.1 faster on the "
        "probe batch (950.0 ms vs 1000.0 ms)"))
    assert precision.probe_verdict(choice, 0.99999, seconds=(1.0, 0.5)) == (
        True, "bfloat16: CPU has amx_bf16; probe min cosine 0.999990, x2.0 faster than float32 on the probe batch")
    assert precision.probe_verdict(choice, 0.99999) == (True, "bfloat16: CPU has amx_bf16; probe min cosine 0.999990")


def test_min_cosine():
    a = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert min_cosine(a, a * 3) == pytest.approx(1.0)
    assert min_cosine(a, np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(0.0)
    assert min_cosine(a, np.array([[1.0, 0.0], [np.nan, 0.0]])) == -1.0
    assert min_cosine(a, np.zeros((2, 2))) == -1.0


def test_probe_texts_end_in_the_end_of_text_token():
    ids, mask = probe_texts(vocab_size=100, max_length=77, eos_token_id=99)
    assert ids.shape == mask.shape == (4, 16)
    lengths = mask.sum(axis=1)
    assert list(ids[np.arange(4), lengths - 1]) == [99] * 4
    assert (ids[mask == 0] == 0).all()


def _fake_cpu(monkeypatch, flags: frozenset[str], candidate_faster: bool = True) -> None:
    """Fake the CPU flags, and the probe's clock: the float32 pass is read first and takes 1 s, the
    candidate's timed pass 0.25 s (or 2 s). A tiny model's real timings would be a coin toss."""
    monkeypatch.setattr(precision, "host_flags", lambda: flags)
    ticks = iter([0.0, 1.0, 10.0, 10.25 if candidate_faster else 12.0])
    monkeypatch.setattr(torch_backend, "_clock", lambda: next(ticks))


def _load(path, dtype: str = "auto"):
    return load_torch_backend(BackendConfig(model=str(path), device="cpu", dtype=dtype, num_threads=1))


def _pixels(batch: int = 3) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (batch, 3, 224, 224), dtype=np.uint8)


def test_auto_with_bf16_units_serves_bfloat16_within_the_parity_bound(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, AVX512_BF16)
    backend = _load(tiny_model("vit"))
    assert backend.info.dtype == "bfloat16"
    assert backend.info.dtype_reason.startswith("bfloat16: CPU has avx512_bf16; probe min cosine 0.99")
    assert backend.info.dtype_reason.endswith(", x4.0 faster than float32 on the probe batch")
    reference = _load(tiny_model("vit"), "float32")
    assert reference.info.dtype == "float32" and reference.info.dtype_reason == "float32: requested"
    assert min_cosine(reference.embed_images(_pixels()), backend.embed_images(_pixels())) >= PARITY_MIN_COSINE


def test_bfloat16_that_is_not_faster_falls_back(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, AMX, candidate_faster=False)
    backend = _load(tiny_model("vit"))
    assert backend.info.dtype == "float32"
    assert backend.info.dtype_reason.startswith("float32: bfloat16 (CPU has amx_bf16) kept parity (min cosine 0.99")
    assert backend.info.dtype_reason.endswith("but was not x1.1 faster on the probe batch (2000.0 ms vs 1000.0 ms)")
    assert all(p.dtype == torch.float32 for p in backend._embedder.parameters())


def test_auto_without_bf16_units_is_float32(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, NO_BF16)
    backend = _load(tiny_model("vit"))
    assert backend.info.dtype == "float32"
    assert backend.info.dtype_reason.startswith("float32: the CPU has no bf16 units")


def _drift_in_bfloat16(monkeypatch, pick_module) -> None:
    """Every model loaded from now on changes its output noticeably whenever `pick_module(model)` runs in
    bfloat16: a model whose bf16 arithmetic is not good enough."""
    load = torch_backend._load_auto

    def drifting(config, pooling):
        model, pooling, sha = load(config, pooling)

        def hook(module, args, output):
            if output.dtype == torch.bfloat16:
                return output + torch.linspace(-1, 1, output.shape[-1], dtype=output.dtype)
            return output

        pick_module(model).register_forward_hook(hook)
        return model, pooling, sha

    monkeypatch.setattr(torch_backend, "_load_auto", drifting)


def test_image_drift_falls_back_to_exact_float32(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, AMX)
    _drift_in_bfloat16(monkeypatch, lambda model: model.layernorm)
    backend = _load(tiny_model("vit"))
    assert backend.info.dtype == "float32"
    assert backend.info.dtype_reason.startswith("float32: bfloat16 (CPU has amx_bf16) failed the parity probe: "
                                                "min cosine to float32 0.")
    assert all(p.dtype == torch.float32 for p in backend._embedder.parameters())
    reference = _load(tiny_model("vit"), "float32")  # the weights put back are the float32 ones, bit for bit
    np.testing.assert_array_equal(backend.embed_images(_pixels()), reference.embed_images(_pixels()))


def test_the_text_tower_has_its_own_probe(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, AVX512_BF16)
    _drift_in_bfloat16(monkeypatch, lambda model: model.text_model.final_layer_norm)  # images stay exact
    backend = _load(tiny_model("clip"))
    assert backend.info.dtype == "float32" and "failed the parity probe" in backend.info.dtype_reason
    ids, mask = probe_texts(100, 77, None)
    reference = _load(tiny_model("clip"), "float32")
    np.testing.assert_array_equal(backend.embed_texts(ids, mask), reference.embed_texts(ids, mask))


def test_a_precision_that_cannot_run_falls_back(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, AVX512_BF16)

    def broken(model):
        def hook(module, args, output):
            if output.dtype == torch.bfloat16:
                raise RuntimeError("no bf16 kernel for this op")
        model.layernorm.register_forward_hook(hook)
        return model.layernorm

    _drift_in_bfloat16(monkeypatch, broken)
    backend = _load(tiny_model("vit"))
    assert backend.info.dtype == "float32"
    assert backend.info.dtype_reason.endswith("failed the parity probe: RuntimeError: no bf16 kernel for this op")


@pytest.mark.slow  # it starts the app (the model process included)
def test_info_reports_the_precision_and_why(monkeypatch, tiny_model):
    _fake_cpu(monkeypatch, AMX)
    _drift_in_bfloat16(monkeypatch, lambda model: model.layernorm)
    backend = _load(tiny_model("vit"))
    with serve_engine(backend) as url:  # type: ignore[arg-type]
        info = httpx.get(url + "/info").json()
    assert info["model_dtype"] == "float32"
    assert info["model_dtype_reason"] == backend.info.dtype_reason
    assert "failed the parity probe" in info["model_dtype_reason"]
