"""The ONNX Runtime runtime ("onnx": CPU or CUDA provider; "tensorrt": the TensorRT provider).

The graph is the torch backend's `EmbeddingModel` exported by Optimum (`backends.onnx_export`), so it
returns the pooled embedding itself: both backends share one definition of the embedding. CLIP and SigLIP
exports hold a second graph, the text tower (`text_model.onnx`), run by a second session. The model
comes from a folder written by `iei export` (passed as the model), or from the export cache, exported on
first start. Providers and precision are planned by `backends.onnx_providers`.

Driven from the model process's main thread only; never called concurrently.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import (
    BackendConfig, BackendError, ModelInfo, blank_images, check_patches, check_pixels, check_tokens, warmup_batch_sizes,
)
from backends.naflex import PositionEmbeddings, patch_mask
from backends.onnx_export import cached_export
from backends.onnx_manifest import (
    MODEL_FILE, POSITION_TABLE_FILE, TEXT_MODEL_FILE, ExportOptions, Manifest, is_export_folder, read_export,
)
from backends.onnx_providers import CPU, ProviderPlan, plan_providers, session_options

logger = logging.getLogger("iei.backends.onnx")

_TENSORRT = "TensorrtExecutionProvider"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "iei" / "onnx"


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class OnnxBackend:
    """A loaded ONNX Runtime session computing float32 (B, D) pooled embeddings. Build with
    `load_onnx_backend` / `load_tensorrt_backend`. All methods run on the model thread and block."""

    def __init__(self, session: Any, manifest: Manifest, plan: ProviderPlan, info: ModelInfo, max_batch_size: int,
                 pixel_affine: tuple[np.ndarray, np.ndarray], text_session: Any = None,
                 positions: PositionEmbeddings | None = None) -> None:
        self._session = session  # owned by the model thread
        self._text_session = text_session
        # The trace drops an input the graph never reads (SigLIP ignores the attention mask).
        self._text_inputs = {i.name for i in text_session.get_inputs()} if text_session is not None else set()
        self._input, self._output = manifest.input_name, manifest.output_name
        self._num_channels = manifest.num_channels
        self._io_binding = plan.io_binding
        self._on_gpu = plan.device != "cpu"
        self._scale, self._offset = pixel_affine  # float32 (1, C, 1, 1)
        self._max_batch_size = max_batch_size
        self._positions = positions  # NaFlex: the position table, resized per patch grid (cached)
        self.info = info

    def _normalise(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype == np.float32:
            return np.ascontiguousarray(pixels)
        x = pixels.astype(np.float32)
        x *= self._scale
        x += self._offset
        return x

    def _patch_feeds(self, pixels: np.ndarray, grids: np.ndarray) -> dict[str, np.ndarray]:
        """NaFlex's graph inputs: normalised patches (channels last within a patch) with the padding zeroed, as
        the processor pads, its mask, and the position embeddings resized to each grid."""
        count = pixels.shape[1]
        mask = patch_mask(grids, count)
        x = pixels.astype(np.float32).reshape(*pixels.shape[:2], -1, self._num_channels)
        if pixels.dtype == np.uint8:
            x *= self._scale.reshape(-1)
            x += self._offset.reshape(-1)
        x = x.reshape(pixels.shape) * mask[..., None]
        return {self._input: x, "pixel_attention_mask": mask.astype(np.int64),
                "position_embeddings": self._positions.batch(grids, count)}  # type: ignore[union-attr]

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not self._io_binding:
            return self._session.run([self._output], feeds)[0]
        binding = self._session.io_binding()
        for name, x in feeds.items():
            binding.bind_cpu_input(name, x)
        binding.bind_output(self._output)  # on the provider's device; copied back once below
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def embed_images(self, pixels: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, C, H, W) raw pixels or float32 normalised ones -> float32 (B, D), pooled, not
        L2-normalised; for variable-resolution models, patches and their grids (see `Backend.embed_images`).
        Raises BackendError."""
        if self._positions is not None:
            check_patches(pixels, grids, self.info.max_num_patches, self._num_channels * self.info.patch_size ** 2)  # type: ignore[arg-type, operator]
        else:
            check_pixels(pixels, self._num_channels, self.info.image_size)
        if self._session is None:
            raise BackendError("the model has been closed")
        try:
            feeds = self._patch_feeds(pixels, grids) if self._positions is not None else \
                {self._input: self._normalise(pixels)}  # type: ignore[arg-type]
            return np.asarray(self._run(feeds), dtype=np.float32)
        except Exception as e:
            raise BackendError(f"model failed on a batch of {pixels.shape[0]} images: {type(e).__name__}: {_short(e, 200)}") from e

    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int (B, L) token ids and mask -> float32 (B, D), not L2-normalised. Raises BackendError."""
        check_tokens(input_ids, attention_mask, self.info.modalities)
        if self._text_session is None:
            raise BackendError("the model has been closed")
        feeds = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
        try:
            out = self._text_session.run(["embedding"], {k: v for k, v in feeds.items() if k in self._text_inputs})
            return np.asarray(out[0], dtype=np.float32)
        except Exception as e:
            raise BackendError(f"model failed on a batch of {len(input_ids)} texts: {type(e).__name__}: {_short(e, 200)}") from e

    def warmup(self) -> None:
        """Zeros at batch 1, and on a GPU at the largest batch too (on TensorRT this builds the engine).
        See `backends.base.warmup_batch_sizes`."""
        for batch in warmup_batch_sizes(self._max_batch_size, on_gpu=self._on_gpu):
            self.embed_images(*blank_images(self.info, self._num_channels, batch))
            if self._text_session is not None:
                self.embed_texts(np.zeros((batch, 8), dtype=np.int64), np.ones((batch, 8), dtype=np.int64))

    def close(self) -> None:
        self._session = None
        self._text_session = None


def _plan(backend: str, config: BackendConfig, image_shape: tuple[int, int, int], trt_cache: str | None) -> ProviderPlan:
    import onnxruntime as ort

    plan = plan_providers(backend, device=config.device, dtype=config.dtype, quantize=config.quantize,
                          available=ort.get_available_providers(), allow_cpu_fallback=config.allow_cpu_fallback,
                          max_batch_size=config.max_batch_size, image_shape=image_shape, trt_cache_dir=trt_cache)
    return plan


def _pre_exported(config: BackendConfig, plan: ProviderPlan) -> tuple[Path, Manifest]:
    folder = Path(config.model).expanduser()
    manifest = read_export(folder)
    if config.quantize == "int8" and manifest.precision != "int8":
        raise BackendError(f"--quantize int8 asked for, but {folder} was exported as {manifest.precision}; "
                           "export it with `iei export --quantize int8`")
    if manifest.precision != plan.graph_precision:
        if manifest.precision == "int8" and plan.device != "cpu":
            raise BackendError(f"{folder} holds an int8 model, which runs on the CPU provider only (--device cpu)")
        if manifest.precision == "fp16" and plan.device == "cpu":
            raise BackendError(f"{folder} holds a float16 model, which needs the CUDA provider")
        logger.warning("%s holds a %s graph; running it as exported (requested %s)", folder, manifest.precision,
                       plan.graph_precision)
    return folder, manifest


def _load(backend: str, config: BackendConfig) -> OnnxBackend:
    cache_dir = Path(config.onnx_cache_dir).expanduser() if config.onnx_cache_dir else default_cache_dir()
    plan = _plan(backend, config, (3, 224, 224), None)  # decides precision; re-planned below with real shapes
    if plan.device == "cpu" and config.device not in ("cpu", "auto"):
        logger.warning("falling back to the CPU provider (--allow-cpu-fallback): the GPU provider is not available")
    if is_export_folder(config.model):
        folder, manifest = _pre_exported(config, plan)
    else:
        options = ExportOptions(opset=config.onnx_opset, optimize=config.onnx_optimize, precision=plan.graph_precision)
        folder, manifest = cached_export(config, options, cache_dir)
    if backend == "tensorrt" and manifest.max_num_patches is not None:
        raise BackendError(f"{config.model!r} takes variable patch grids (SigLIP 2 NaFlex), which the TensorRT "
                           "backend's engine profiles (fixed image shapes) do not describe; use --backend onnx "
                           "(the CUDA provider on a GPU) or --backend torch")
    model_file = folder / MODEL_FILE
    trt_cache = None
    if backend == "tensorrt":
        trt_cache = str(cache_dir / "tensorrt" / hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16])
        Path(trt_cache).mkdir(parents=True, exist_ok=True)
    plan = _plan(backend, config, (manifest.num_channels, *manifest.image_size), trt_cache)
    session = _session(model_file, config, plan.providers, plan.provider_options)
    text_session = None
    if TEXT_MODEL_FILE in manifest.files:  # TensorRT's profiles are shaped for pixels: the text tower skips it
        kept = [(p, o) for p, o in zip(plan.providers, plan.provider_options) if p != _TENSORRT]
        text_session = _session(folder / TEXT_MODEL_FILE, config, [p for p, _ in kept], [o for _, o in kept])
    active = session.get_providers()
    if active[0] != plan.providers[0]:  # ORT drops a provider that fails to initialise (missing CUDA libs)
        raise BackendError(f"ONNX Runtime could not start {plan.providers[0]} (running providers: {', '.join(active)}); "
                           "check the CUDA/cuDNN/TensorRT libraries onnxruntime-gpu needs")
    info = ModelInfo(
        model_id=config.model, model_sha=manifest.commit, model_type=manifest.model_type, backend=backend,
        device=plan.device, dtype="float16" if plan.precision == "fp16" else "float32", pooling=manifest.pooling,
        embedding_dim=manifest.embedding_dim, image_size=manifest.image_size, random_weights=manifest.random_weights,
        modalities=manifest.modalities, text_max_length=manifest.text_max_length, text_padding=manifest.text_padding,
        provider=active[0], precision=plan.precision, model_file=str(model_file),
        max_num_patches=manifest.max_num_patches, patch_size=manifest.patch_size,
    )
    positions = None
    if manifest.max_num_patches is not None:
        if config.max_num_patches != manifest.max_num_patches:
            raise BackendError(f"{folder} was exported for at most {manifest.max_num_patches} patches an image, "
                               f"but the image processor gives up to {config.max_num_patches}")
        positions = PositionEmbeddings(np.load(folder / POSITION_TABLE_FILE))
    logger.info("loaded %s with ONNX Runtime (%s, %s, %s, optimise %s, pooling=%s, dim=%d)", config.model, active[0],
                plan.device, plan.precision, manifest.optimize, manifest.pooling, manifest.embedding_dim)
    affine = tuple(np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in (config.pixel_scale, config.pixel_offset))
    return OnnxBackend(session, manifest, plan, info, config.max_batch_size, affine, text_session, positions)


def _session(path: Path, config: BackendConfig, providers: Any, provider_options: Any) -> Any:
    try:
        import onnxruntime as ort

        return ort.InferenceSession(str(path), sess_options=session_options(config.num_threads),
                                    providers=list(providers), provider_options=list(provider_options))
    except Exception as e:
        raise BackendError(f"ONNX Runtime could not load {path}: {_short(e)}") from e


def load_onnx_backend(config: BackendConfig) -> OnnxBackend:
    """ONNX Runtime with the CUDA provider (device cuda/auto with onnxruntime-gpu) or the CPU provider.
    Exports the model on first start (blocking; seconds to minutes). Raises BackendError."""
    return _load("onnx", config)


def load_tensorrt_backend(config: BackendConfig) -> OnnxBackend:
    """ONNX Runtime with the TensorRT provider (fp16 by default, engine cache under the export cache,
    dynamic batch profile 1..max_batch_size). Raises BackendError."""
    return _load("tensorrt", config)


__all__ = ["OnnxBackend", "load_onnx_backend", "load_tensorrt_backend", "default_cache_dir", "CPU"]
