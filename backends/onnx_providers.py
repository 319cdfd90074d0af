"""Which ONNX Runtime execution providers to use, with which options, at which precision.

Pure planning: `plan_providers` takes the request and the providers this onnxruntime build offers and
returns a `ProviderPlan` (or raises BackendError). It never creates a session, so the CUDA and
TensorRT branches are unit-tested on a CPU-only machine. `session_options` builds the SessionOptions.

Precision rules (the torch backend's, plus int8):
- dtype auto: float16 on CUDA/TensorRT, float32 on CPU. float16 on CPU and bfloat16 anywhere are refused.
- quantize int8 (dynamic, weights int8, activations quantised per batch) runs on the CPU provider only
  and with float32 (auto) dtype; GPU int8 would need TensorRT calibration, which IEI does not do.
- CUDA float16 runs a float16 copy of the graph (inputs/outputs stay float32); TensorRT float16
  builds an fp16 engine from the float32 graph (`trt_fp16_enable`).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import msgspec

from backends.base import BackendError
from backends.precision import cpu_flags

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_PACKAGE_HINT = "install onnxruntime-gpu (not onnxruntime) with a matching CUDA/cuDNN"


class ProviderPlan(msgspec.Struct, frozen=True, kw_only=True):
    """How to run the graph. `providers`/`provider_options` go straight to InferenceSession."""

    providers: tuple[str, ...]
    provider_options: tuple[dict[str, Any], ...]
    device: str  # "cpu" or "cuda:N", for ModelInfo
    precision: str  # "fp32" | "fp16" | "int8": what ModelInfo reports
    graph_precision: str  # the ONNX file to run: "fp32" | "fp16" | "int8" (TensorRT fp16 runs the fp32 file)
    io_binding: bool  # bind inputs/outputs explicitly (CUDA/TensorRT: avoids extra host copies)


def cpu_isa(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The best int8 instruction set of this CPU: avx512_vnni | avx512 | avx2 | arm64. Detected from the
    CPU flags (Linux) or the machine name, never assumed. VNNI (avx512_vnni, or 256-bit avx_vnni/AMX)
    multiplies u8 activations by s8 weights without saturation, so signed weights are exact and about
    twice as fast there; without it ORT's u8s8 kernel can saturate and Optimum picks u8 weights."""
    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = cpu_flags(cpuinfo_path)
    if flags & {"avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"}:
        return "avx512_vnni"
    if {"avx512f", "avx512bw"} <= flags:
        return "avx512"
    return "avx2"


def _cuda_index(device: str) -> int:
    if device in ("cuda", "auto"):
        return 0
    try:
        return int(device.split(":", 1)[1])
    except (IndexError, ValueError):
        raise BackendError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def _precision(dtype: str, on_gpu: bool) -> str:
    if dtype == "auto":
        return "fp16" if on_gpu else "fp32"
    if dtype == "float32":
        return "fp32"
    if dtype == "float16":
        if not on_gpu:
            raise BackendError("dtype float16 is not supported on CPU; use float32 (or --quantize int8)")
        return "fp16"
    if dtype == "bfloat16":
        raise BackendError("dtype bfloat16 is not supported by the ONNX backends; use float32 or float16")
    raise BackendError(f"unknown dtype {dtype!r}; use auto, float32 or float16")


def trt_profile_shapes(input_name: str, image_shape: tuple[int, int, int], max_batch_size: int) -> dict[str, str]:
    """TensorRT dynamic-batch profile: min 1, opt and max = the batcher's largest batch (under load the
    batcher sends full batches, which is when speed matters)."""
    c, h, w = image_shape

    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x{c}x{h}x{w}"

    return {"trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(max_batch_size),
            "trt_profile_max_shapes": shape(max_batch_size)}


def plan_providers(backend: str, *, device: str, dtype: str, quantize: str, available: list[str] | tuple[str, ...],
                   allow_cpu_fallback: bool, max_batch_size: int, input_name: str = "pixel_values",
                   image_shape: tuple[int, int, int] = (3, 224, 224), trt_cache_dir: str | None = None) -> ProviderPlan:
    """Choose providers for `backend` ("onnx" | "tensorrt") on `device` (auto | cpu | cuda | cuda:N).

    A GPU that was asked for but whose provider is missing is an error naming onnxruntime-gpu, unless
    `allow_cpu_fallback` (then the CPU plan, and the caller logs the fallback). Raises BackendError."""
    if quantize not in ("none", "int8"):
        raise BackendError(f"unknown quantize {quantize!r}; use none or int8")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise BackendError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
    wanted = {"onnx": CUDA, "tensorrt": TENSORRT}.get(backend)
    if wanted is None:
        raise BackendError(f"unknown ONNX Runtime backend {backend!r}; use onnx or tensorrt")
    if backend == "tensorrt" and device == "cpu":
        raise BackendError("backend tensorrt runs on a GPU; use --backend onnx for the CPU")
    use_gpu = device != "cpu" and wanted in available
    if not use_gpu and device != "cpu" and (device != "auto" or backend == "tensorrt"):
        what = "TensorRT" if backend == "tensorrt" else "CUDA"
        message = (f"backend {backend!r} on device {device!r} needs ONNX Runtime's {wanted}, which this onnxruntime "
                   f"build lacks (it offers {', '.join(available) or 'nothing'}): {GPU_PACKAGE_HINT}"
                   + (" and TensorRT" if what == "TensorRT" else "")
                   + "; or pass --allow-cpu-fallback to run on the CPU provider")
        if not allow_cpu_fallback:
            raise BackendError(message)
    if not use_gpu:
        precision = _precision(dtype, on_gpu=False)
        if quantize == "int8":
            precision = "int8"
        return ProviderPlan(providers=(CPU,), provider_options=({},), device="cpu", precision=precision,
                            graph_precision=precision, io_binding=False)

    index = _cuda_index(device)
    precision = _precision(dtype, on_gpu=True)
    if quantize == "int8":
        raise BackendError(f"--quantize int8 (dynamic int8) runs on the CPU provider only, not with {wanted}; "
                           "use float16 on the GPU, or --device cpu for int8")
    cuda_options = {"device_id": index}
    if backend == "onnx":
        return ProviderPlan(providers=(CUDA, CPU), provider_options=(cuda_options, {}), device=f"cuda:{index}",
                            precision=precision, graph_precision=precision, io_binding=True)
    trt_options: dict[str, Any] = {
        "device_id": index,
        "trt_fp16_enable": precision == "fp16",
        "trt_engine_cache_enable": trt_cache_dir is not None,
        **trt_profile_shapes(input_name, image_shape, max_batch_size),
    }
    if trt_cache_dir is not None:
        trt_options.update(trt_engine_cache_path=trt_cache_dir, trt_timing_cache_enable=True,
                           trt_timing_cache_path=trt_cache_dir)
    return ProviderPlan(providers=(TENSORRT, CUDA, CPU), provider_options=(trt_options, cuda_options, {}),
                        device=f"cuda:{index}", precision=precision, graph_precision="fp32", io_binding=True)


def intra_op_threads(requested: int) -> int:
    """Intra-op threads: `requested` when > 0, else one per core. The model is the bottleneck of a
    compute-bound server, so it gets every core; it does not starve the preprocessing workers because
    `session_options` turns spinning off (idle pool threads sleep, like OMP_WAIT_POLICY=PASSIVE for
    torch), so a worker decoding an image takes the core back as soon as the model waits."""
    return requested if requested > 0 else (os.cpu_count() or 1)


def session_options(num_threads: int) -> Any:
    """SessionOptions: all graph optimisations, sequential execution, one inter-op thread, `intra_op_threads`
    intra-op threads that sleep instead of spinning when idle."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads(num_threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: ORT warns about every node it places on the CPU
    return options
