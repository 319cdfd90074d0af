"""Provider planning for CPU, CUDA and TensorRT, at the options level (no session is created, so the GPU
branches run on a CPU-only machine), and the CPU instruction-set detection behind int8."""

from __future__ import annotations

import pytest

from backends.base import BackendError
from backends.onnx_providers import CPU, CUDA, TENSORRT, cpu_isa, intra_op_threads, plan_providers

ALL = (TENSORRT, CUDA, CPU)


def _plan(backend="onnx", available=ALL, **kwargs):
    args = {"device": "auto", "dtype": "auto", "quantize": "none", "allow_cpu_fallback": False, "max_batch_size": 32}
    return plan_providers(backend, available=available, **{**args, **kwargs})


def test_cpu_plan():
    plan = _plan(device="cpu")
    assert plan.providers == (CPU,) and plan.device == "cpu" and plan.precision == "fp32" and not plan.io_binding


def test_auto_without_gpu_is_cpu():
    assert _plan(available=(CPU,)).providers == (CPU,)


def test_cuda_plan_fp16_by_default_with_io_binding():
    plan = _plan(device="cuda:1")
    assert plan.providers == (CUDA, CPU) and plan.provider_options[0] == {"device_id": 1}
    assert (plan.device, plan.precision, plan.graph_precision, plan.io_binding) == ("cuda:1", "fp16", "fp16", True)
    assert _plan(device="cuda", dtype="float32").precision == "fp32"


def test_tensorrt_plan_options():
    plan = _plan("tensorrt", device="cuda", max_batch_size=16, image_shape=(3, 384, 384), trt_cache_dir="/c/trt")
    assert plan.providers == (TENSORRT, CUDA, CPU)
    trt = plan.provider_options[0]
    assert trt["trt_fp16_enable"] is True and trt["device_id"] == 0
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == "/c/trt"
    assert trt["trt_timing_cache_path"] == "/c/trt"
    assert trt["trt_profile_min_shapes"] == "pixel_values:1x3x384x384"
    assert trt["trt_profile_opt_shapes"] == trt["trt_profile_max_shapes"] == "pixel_values:16x3x384x384"
    assert plan.precision == "fp16" and plan.graph_precision == "fp32" and plan.io_binding  # TRT builds fp16 from fp32
    fp32 = _plan("tensorrt", device="cuda", dtype="float32").provider_options[0]
    assert fp32["trt_fp16_enable"] is False and fp32["trt_engine_cache_enable"] is False


@pytest.mark.parametrize("backend, device", [("onnx", "cuda"), ("onnx", "cuda:0"), ("tensorrt", "auto"), ("tensorrt", "cuda")])
def test_missing_gpu_provider_names_onnxruntime_gpu(backend, device):
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        _plan(backend, available=(CPU,), device=device)


def test_explicit_fallback_to_cpu():
    plan = _plan("tensorrt", available=(CPU,), device="cuda", allow_cpu_fallback=True)
    assert plan.providers == (CPU,) and plan.precision == "fp32"


@pytest.mark.parametrize("kwargs, message", [
    ({"device": "cuda", "quantize": "int8"}, "CPU provider only"),
    ({"device": "cpu", "quantize": "int8", "dtype": "float16"}, "float16 is not supported on CPU"),
    ({"device": "cpu", "dtype": "float16"}, "float16 is not supported on CPU"),
    ({"device": "cuda", "dtype": "bfloat16"}, "bfloat16"),
    ({"device": "tpu"}, "unknown device"),
    ({"quantize": "int4"}, "unknown quantize"),
])
def test_refused_combinations(kwargs, message):
    with pytest.raises(BackendError, match=message):
        _plan(**kwargs)


def test_tensorrt_on_cpu_is_refused():
    with pytest.raises(BackendError, match="runs on a GPU"):
        _plan("tensorrt", device="cpu")


def test_int8_on_cpu():
    plan = _plan(device="cpu", quantize="int8")
    assert plan.precision == plan.graph_precision == "int8"


@pytest.mark.parametrize("flags, isa", [
    ("fpu sse2 avx avx2 fma", "avx2"),
    ("avx2 avx512f avx512bw avx512dq", "avx512"),
    ("avx2 avx512f avx512bw avx512_vnni", "avx512_vnni"),
    ("avx2 avx_vnni", "avx512_vnni"),
])
def test_cpu_isa_from_flags(tmp_path, flags, isa):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_isa(str(cpuinfo)) == isa


def test_threads():
    assert intra_op_threads(3) == 3 and intra_op_threads(0) >= 1
