"""The PyTorch runtime: a transformers vision model plus its pooling (`backends.pooling`), and for
CLIP/SigLIP dual encoders the text tower too.

Driven from the batcher's model thread only; never called concurrently.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from backends.base import (
    BackendConfig, BackendError, ModelInfo, blank_images, check_patches, check_pixels, check_tokens, warmup_batch_sizes,
)
from backends.pooling import (
    VARIABLE_GRID_TYPES, EmbeddingModel, PoolingError, TextEmbeddingModel, family_spec, has_text, model_kwargs,
    position_table, resolve_pooling, vision_config,
)
from backends.naflex import PositionEmbeddings, patch_mask
from backends import precision
from backends.precision import PrecisionChoice

logger = logging.getLogger("iei.backends")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DUMMY_SEED = 0  # dummy weights are the same in every process, so backends can be compared


def _short(e: BaseException, limit: int = 300) -> str:
    """One line of an exception's text, for messages a client or operator reads (no traceback)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise BackendError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendError(f"device {requested!r} requested but CUDA is not available on this machine (torch {torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BackendError(f"device {requested!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type != "cpu":
        raise BackendError(f"unsupported device {requested!r}; use auto, cpu, cuda or cuda:N")
    return device


def _resolve_dtype(requested: str, device: torch.device) -> PrecisionChoice:
    """What `requested` means on `device` (see `backends.precision.choose`): auto is float16 on CUDA; on
    the CPU bfloat16 where it has bf16 units (probed against float32 at load), else float32. float16 on
    CPU is refused (slow and lossy there); an explicit bfloat16 on CPU is allowed."""
    if requested != "auto" and requested not in _DTYPES:
        raise BackendError(f"unknown dtype {requested!r}; use auto, float32, float16 or bfloat16")
    if requested == "float16" and device.type == "cpu":
        raise BackendError("dtype float16 is not supported on CPU; use float32 (or bfloat16)")
    return precision.choose(requested, device.type, precision.host_flags() if device.type == "cpu" else frozenset())


def _image_size(config: Any, override: tuple[int, int] | None = None) -> tuple[int, int]:
    """The pixel size fed to the model: what the preprocessing produces, else the vision config's."""
    if override is not None:
        return (int(override[0]), int(override[1]))
    size = vision_config(config).image_size
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _check_vision_config(config: Any, model_id: str) -> None:
    vision = vision_config(config)
    sized = getattr(vision, "image_size", None) is not None or getattr(vision, "num_patches", None) is not None
    if not sized or getattr(vision, "num_channels", None) is None:
        raise BackendError(
            f"{model_id!r} is not a supported image model (model type {getattr(config, 'model_type', '?')!r} "
            "has no image_size/num_channels in its config)"
        )


class TorchBackend:
    """A loaded transformers vision model. Build with `load_torch_backend`.

    All methods run on the model thread and block. `torch.set_num_threads` is process-wide: it is
    called only when `config.num_threads > 0`; otherwise torch uses all cores.
    """

    def __init__(self, embedder: EmbeddingModel, info: ModelInfo, device: torch.device, dtype: torch.dtype,
                 num_channels: int, max_batch_size: int, pixel_affine: tuple[torch.Tensor, torch.Tensor],
                 text_embedder: TextEmbeddingModel | None = None) -> None:
        self._embedder = embedder  # owned by the model thread
        self._text_embedder = text_embedder  # shares the model's weights with `_embedder`
        self._device = device
        self._dtype = dtype
        self._scale, self._offset = pixel_affine  # float32 (1, C, 1, 1) on the device
        self._num_channels = num_channels
        self._max_batch_size = max_batch_size
        # NaFlex: the position table, resized per patch grid outside the model (see pooling.NaflexImageGraph)
        self._positions = PositionEmbeddings(position_table(embedder.model).float().cpu().numpy()) \
            if embedder.naflex is not None else None
        self.info = info

    def _forward(self, pixels: np.ndarray, grids: np.ndarray | None) -> np.ndarray:
        x = torch.from_numpy(pixels).to(device=self._device, non_blocking=True)  # no copy on CPU
        if x.dtype == torch.uint8:  # normalise on the device: 4x less to move than float32
            # cast, then scale and shift in place: twice as fast on the CPU as the mixed-dtype `x * scale`
            if grids is None:
                x = x.to(torch.float32).mul_(self._scale).add_(self._offset)
            else:  # patches: channels last within each patch
                shape = x.shape
                x = x.to(torch.float32).view(*shape[:2], -1, self._num_channels)
                x = x.mul_(self._scale.view(-1)).add_(self._offset.view(-1)).view(shape)
        if grids is None:
            with torch.inference_mode():
                y = self._embedder(x.to(dtype=self._dtype))
            return y.to(device="cpu", dtype=torch.float32).numpy()
        mask = torch.from_numpy(patch_mask(grids, x.shape[1])).to(self._device)
        x = x * mask[..., None]  # padding patches are zeros after normalisation, as the processor pads them
        positions = torch.from_numpy(self._positions.batch(grids, x.shape[1])).to(self._device)  # type: ignore[union-attr]
        with torch.inference_mode():
            y = self._embedder(x.to(dtype=self._dtype), mask.to(torch.int64), positions.to(dtype=self._dtype))
        return y.to(device="cpu", dtype=torch.float32).numpy()

    def embed_images(self, pixels: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        """uint8 (B, C, H, W) raw pixels or float32 normalised ones -> float32 (B, D), pooled, not
        L2-normalised; for variable-resolution models, patches and their grids (see `Backend.embed_images`).
        Raises BackendError."""
        if self.info.max_num_patches is not None:
            check_patches(pixels, grids, self.info.max_num_patches, self._num_channels * self.info.patch_size ** 2)
        else:
            check_pixels(pixels, self._num_channels, self.info.image_size)
            grids = None
        n = pixels.shape[0]
        if self._embedder is None:
            raise BackendError("the model has been closed")
        try:
            return self._forward(pixels, grids)
        except torch.cuda.OutOfMemoryError as e:
            raise BackendError(f"model failed on a batch of {n} images: out of GPU memory") from e
        except Exception as e:
            raise BackendError(f"model failed on a batch of {n} images: {type(e).__name__}: {_short(e, 200)}") from e

    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """int (B, L) token ids and mask -> float32 (B, D) in the image embedding's space, not
        L2-normalised. Raises BackendError."""
        check_tokens(input_ids, attention_mask, self.info.modalities)
        if self._text_embedder is None or self._embedder is None:
            raise BackendError("the model has been closed")
        ids = torch.from_numpy(np.asarray(input_ids, dtype=np.int64)).to(self._device)
        mask = torch.from_numpy(np.asarray(attention_mask, dtype=np.int64)).to(self._device)
        try:
            with torch.inference_mode():
                y = self._text_embedder(ids, mask)
            return y.to(device="cpu", dtype=torch.float32).numpy()
        except Exception as e:
            raise BackendError(f"model failed on a batch of {len(ids)} texts: {type(e).__name__}: {_short(e, 200)}") from e

    def warmup(self) -> None:
        """Run zeros at batch 1, and on a GPU at the largest batch too; texts too where there are any.
        See `backends.base.warmup_batch_sizes`."""
        for batch in warmup_batch_sizes(self._max_batch_size, on_gpu=self._device.type == "cuda"):
            self.embed_images(*blank_images(self.info, self._num_channels, batch))
            if "text" in self.info.modalities:
                self.embed_texts(np.zeros((batch, 8), dtype=np.int64), np.ones((batch, 8), dtype=np.int64))
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def close(self) -> None:
        self._embedder = None  # type: ignore[assignment]
        self._text_embedder = None
        if self._device.type == "cuda":
            torch.cuda.empty_cache()


def fast_only_processor_config(source: str, revision: str | None = None) -> dict[str, Any] | None:
    """The preprocessor_config.json of a processor transformers ships only as a torchvision-based "Fast" class
    (DINOv3's `DINOv3ViTImageProcessorFast`: there is no slow class of that name without "Fast"), else None.
    Such a processor cannot be instantiated beside the CPU torch (no torchvision); IEI's preprocessing reads its
    config instead (`iei.preprocess.fast_processors`, which refuses settings it cannot reproduce)."""
    import transformers
    from transformers.image_processing_base import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(source, revision=revision)
    name = str(config.get("image_processor_type") or "")
    if name.endswith("Fast") and not hasattr(transformers, name.removesuffix("Fast")):
        return config
    return None


def check_image_processor(source: str, revision: str | None = None) -> None:
    """Raise unless the model's image processor loads: its slow class, or the config of a fast-only one."""
    from transformers import AutoImageProcessor

    if fast_only_processor_config(source, revision) is None:
        AutoImageProcessor.from_pretrained(source, revision=revision, use_fast=False)


def _load_auto(config: BackendConfig, pooling_request: str | None) -> tuple[Any, str, str | None]:
    """from_pretrained (hub id through the HF cache, or a local folder). Returns (model, pooling, sha)."""
    from transformers import AutoConfig, AutoModel

    name = config.model
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise BackendError(f"could not load model {name!r}: the folder does not exist")
    try:
        hf_config = AutoConfig.from_pretrained(name, revision=config.revision)
    except Exception as e:
        at = f" at revision {config.revision!r}" if config.revision else ""
        raise BackendError(f"could not load model {name!r}{at}: {_short(e)}") from e
    _check_vision_config(hf_config, name)
    pooling = _pick_pooling(hf_config, pooling_request)
    try:
        check_image_processor(name, config.revision)
    except Exception as e:
        raise BackendError(f"model {name!r} has no usable image processor (preprocessor_config.json): {_short(e)}") from e
    try:
        model, loading = AutoModel.from_pretrained(
            name, config=hf_config, revision=config.revision, output_loading_info=True,
            **model_kwargs(hf_config.model_type, pooling, _model_class(hf_config)),
        )
    except Exception as e:
        raise BackendError(f"could not load weights of model {name!r}: {_short(e)}") from e
    missing = list(loading.get("missing_keys", []))
    if missing:
        hint = "; pooler weights are not in this checkpoint, use pooling 'mean' or 'cls'" if all("pooler" in k for k in missing) else ""
        raise BackendError(f"model {name!r}: {len(missing)} weights missing from the checkpoint (e.g. {missing[0]}){hint}")
    return model, pooling, getattr(hf_config, "_commit_hash", None)


def _load_dummy(config: BackendConfig, pooling_request: str | None) -> tuple[Any, str, None]:
    """from_config with random weights (seeded, so every process builds the same model)."""
    from transformers import AutoConfig, AutoModel

    if not config.config_dir:
        raise BackendError(f"load_format 'dummy' for {config.model!r} needs a config_dir holding config.json")
    try:
        hf_config = AutoConfig.from_pretrained(config.config_dir)
    except Exception as e:
        raise BackendError(f"could not read the config of {config.model!r} from {config.config_dir}: {_short(e)}") from e
    _check_vision_config(hf_config, config.model)
    pooling = _pick_pooling(hf_config, pooling_request)
    try:
        check_image_processor(config.config_dir)
    except Exception as e:
        raise BackendError(f"{config.config_dir} has no usable image processor (preprocessor_config.json): {_short(e)}") from e
    logger.warning(
        "!!! RANDOM WEIGHTS: load_format=dummy builds %r from its config only; embeddings are meaningless "
        "(for tests and benchmarks, never for real use) !!!", config.model,
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_DUMMY_SEED)
            model = AutoModel.from_config(hf_config, **model_kwargs(hf_config.model_type, pooling, _model_class(hf_config)))
    except Exception as e:
        raise BackendError(f"could not build model {config.model!r} from its config: {_short(e)}") from e
    return model, pooling, None


def image_size_of(hf_config: Any, override: tuple[int, int] | None) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of the pixels the model takes."""
    return _image_size(hf_config, override), int(vision_config(hf_config).num_channels)


def text_fields(hf_config: Any, text: bool) -> dict[str, Any]:
    """ModelInfo's modalities and text fields (shared with the ONNX exporter)."""
    if not text:
        return {"modalities": ("image",)}
    padding = "max_length" if family_spec(hf_config.model_type).text_pad_to_max_length else "longest"
    return {"modalities": ("image", "text"), "text_max_length": int(hf_config.text_config.max_position_embeddings),
            "text_padding": padding}


def patch_fields(hf_config: Any, max_num_patches: int | None, model_id: str) -> dict[str, Any]:
    """ModelInfo's variable-resolution fields (shared with the ONNX exporter): for a model whose vision tower
    takes patch grids (SigLIP 2 NaFlex), the processor's `max_num_patches` and the model's patch size. Raises
    BackendError when the model and its processor disagree on that."""
    variable = hf_config.model_type in VARIABLE_GRID_TYPES
    if not variable and max_num_patches is None:
        return {}
    if not variable:
        raise BackendError(f"model {model_id!r} (model type {hf_config.model_type!r}) takes fixed-size images, "
                           "but its image processor cuts images into variable patch grids")
    if max_num_patches is None:
        raise BackendError(f"model {model_id!r} takes variable patch grids, but its image processor gives "
                           "fixed-size images (expected a Siglip2ImageProcessor)")
    return {"max_num_patches": int(max_num_patches), "patch_size": int(vision_config(hf_config).patch_size)}


def _model_class(hf_config: Any) -> type | None:
    from transformers import AutoModel

    try:
        return AutoModel._model_mapping[type(hf_config)]
    except (KeyError, AttributeError):  # unknown to AutoModel (or a transformers without this private map)
        return None


def _pick_pooling(hf_config: Any, requested: str | None) -> str:
    try:
        return resolve_pooling(hf_config.model_type, requested, _model_class(hf_config))
    except PoolingError as e:
        raise BackendError(str(e)) from None


def _own_weight_memory(model: torch.nn.Module) -> None:
    """Copy the weights out of the checkpoint's memory map into the process's own memory.

    transformers maps a safetensors file and keeps its pages as the CPU weights. The kernel may drop
    such pages while the server idles (memory pressure, or a reclaim daemon: this host runs DAMON's
    pageout), and the next batch then reads the model back from disk. Anonymous memory stays
    resident without swap. Costs one copy at start; the map is released once nothing refers to it."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            tensor.data = tensor.data.clone()


def load_torch_backend(config: BackendConfig) -> TorchBackend:
    """Load, place and dry-run the model described by `config` (blocking; seconds to minutes).
    Raises BackendError with a message naming the model and what went wrong."""
    device = _resolve_device(config.device)
    choice = _resolve_dtype(config.dtype, device)
    dtype = torch.float32 if choice.probe else _DTYPES[choice.dtype]  # a probed candidate is cast after the probe
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    if config.load_format == "dummy":
        model, pooling, sha = _load_dummy(config, config.pooling)
    elif config.load_format == "auto":
        model, pooling, sha = _load_auto(config, config.pooling)
    else:
        raise BackendError(f"unknown load_format {config.load_format!r}; use auto or dummy")
    hf_config = model.config
    try:
        model = model.to(device=device, dtype=dtype).eval()
        if device.type == "cpu":
            _own_weight_memory(model)
        embedder = EmbeddingModel(model, pooling).eval()
        text_embedder = TextEmbeddingModel(model).eval() if has_text(hf_config.model_type, pooling) else None
    except (PoolingError, RuntimeError) as e:
        raise BackendError(f"could not prepare model {config.model!r} on {device}: {_short(e)}") from e

    image_size = _image_size(hf_config, config.image_size)
    num_channels = int(vision_config(hf_config).num_channels)
    device_name = str(device) if device.type == "cpu" or device.index is not None else f"cuda:{torch.cuda.current_device()}"
    info = ModelInfo(
        model_id=config.model,
        model_sha=sha,
        model_type=hf_config.model_type,
        backend="torch",
        device=device_name,
        dtype=str(dtype).removeprefix("torch."),
        dtype_reason=choice.reason,
        pooling=pooling,
        embedding_dim=0,  # known after the dry run below
        image_size=image_size,
        **text_fields(hf_config, text_embedder is not None),
        **patch_fields(hf_config, config.max_num_patches, config.model),
        random_weights=config.load_format == "dummy",
    )
    affine = tuple(torch.tensor(v, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
                   for v in (config.pixel_scale, config.pixel_offset))
    backend = TorchBackend(embedder, info, device, dtype, num_channels, config.max_batch_size, affine, text_embedder)
    # The embedding width is whatever the pooled output has: one dry run, no per-family arithmetic.
    try:
        embedding_dim = int(backend._forward(*blank_images(info, num_channels, 1)).shape[-1])
    except Exception as e:
        raise BackendError(f"model {config.model!r} failed its first forward pass: {type(e).__name__}: {_short(e, 200)}") from e
    backend.info = msgspec.structs.replace(info, embedding_dim=embedding_dim)
    if choice.probe:
        _settle_precision(backend, model, choice)
    info = backend.info
    logger.info("loaded %s (%s, %s, %s, pooling=%s, dim=%d, %s)", config.model, info.model_type, info.device, info.dtype,
                pooling, embedding_dim, "+".join(info.modalities))
    logger.info("precision %s", info.dtype_reason)
    return backend


def _probe_inputs(backend: TorchBackend, hf_config: Any) -> tuple[tuple, tuple | None]:
    """The fixed probe batches (`backends.precision`): (pixels, grids) and, for a dual encoder, (ids, mask):
    its text tower gets its own probe."""
    info = backend.info
    blank, grids = blank_images(info, backend._num_channels, precision.PROBE_IMAGES)
    texts = None
    if backend._text_embedder is not None:
        text = getattr(hf_config, "text_config", hf_config)
        texts = precision.probe_texts(int(text.vocab_size), int(info.text_max_length or 16),
                                      getattr(text, "eos_token_id", None))
    return (precision.probe_images(blank.shape), grids), texts


def _probe(backend: TorchBackend, inputs: tuple[tuple, tuple | None]) -> list[np.ndarray]:
    images, texts = inputs
    return [backend._forward(*images)] + ([backend.embed_texts(*texts)] if texts is not None else [])


_clock = time.perf_counter  # the probe's timer (tests replace it: a tiny model's timings are a coin toss)


def _settle_precision(backend: TorchBackend, model: Any, choice: PrecisionChoice) -> None:
    """Cast `model` (loaded at float32) to `choice.dtype` if every probe vector stays within
    `precision.PARITY_MIN_COSINE` of float32 and the warm probe pass is faster; otherwise put the float32
    weights back. Updates `backend.info` (dtype, dtype_reason). Costs one float32 and two candidate probe
    passes (the first candidate pass pays one-time kernel set-up, so the second is timed), and briefly the
    memory of both copies of the weights (the float32 tensors are kept until the verdict)."""
    inputs = _probe_inputs(backend, model.config)
    start = _clock()
    reference = _probe(backend, inputs)  # the dry run already paid float32's one-time costs
    seconds_reference = _clock() - start
    originals = _float_tensors(model)
    candidate = _DTYPES[choice.dtype]
    model.to(dtype=candidate)
    backend._dtype = candidate
    failure, cosine, seconds = None, -1.0, None
    try:
        cosine = min(precision.min_cosine(a, b) for a, b in zip(reference, _probe(backend, inputs)))
        if cosine >= precision.PARITY_MIN_COSINE:
            start = _clock()
            _probe(backend, inputs)
            seconds = (seconds_reference, _clock() - start)
    except Exception as e:  # a kernel missing at this precision is a reason to fall back, not to fail
        failure = f"{type(e).__name__}: {_short(e, 200)}"
    keep, reason = precision.probe_verdict(choice, cosine, failure, seconds)
    if keep:
        backend.info = msgspec.structs.replace(backend.info, dtype=choice.dtype, dtype_reason=reason)
        return
    _restore_tensors(model, originals)
    backend._dtype = torch.float32
    backend.info = msgspec.structs.replace(backend.info, dtype="float32", dtype_reason=reason)
    logger.warning("precision: %s", reason)


def _float_tensors(model: Any) -> list[tuple[Any, str, bool, torch.Tensor]]:
    """(module, name, is_parameter, tensor) for every floating-point parameter and buffer, so the exact
    float32 values can be put back after a cast (a bf16 -> float32 cast would not restore them)."""
    held = []
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None and param.is_floating_point():
                held.append((module, name, True, param.data))
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point():
                held.append((module, name, False, buffer))
    return held


def _restore_tensors(model: Any, held: list[tuple[Any, str, bool, torch.Tensor]]) -> None:
    with torch.no_grad():
        for module, name, is_parameter, tensor in held:
            if is_parameter:
                module._parameters[name].data = tensor
            else:
                module._buffers[name] = tensor



# -- for exporters (backends.onnx_export): the same model and pooling, on the CPU in float32 --------


def read_model_config(config: BackendConfig) -> tuple[Any, str, str | None]:
    """The model's transformers config, its pooling and its commit sha (None for local folders and dummy
    weights), without loading any weights. Raises BackendError."""
    from transformers import AutoConfig

    source = config.config_dir if config.load_format == "dummy" else config.model
    if config.load_format == "dummy" and not source:
        raise BackendError(f"load_format 'dummy' for {config.model!r} needs a config_dir holding config.json")
    if config.load_format == "auto" and source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().is_dir():
        raise BackendError(f"could not load model {source!r}: the folder does not exist")
    try:
        hf_config = AutoConfig.from_pretrained(source, revision=None if config.load_format == "dummy" else config.revision)
    except Exception as e:
        raise BackendError(f"could not read the config of model {config.model!r}: {_short(e)}") from e
    _check_vision_config(hf_config, config.model)
    sha = None if config.load_format == "dummy" else getattr(hf_config, "_commit_hash", None)
    return hf_config, _pick_pooling(hf_config, config.pooling), sha


def load_cpu_embedder(config: BackendConfig) -> tuple[EmbeddingModel, TextEmbeddingModel | None, Any, str]:
    """The torch backend's `EmbeddingModel` (model + pooling) and, for dual encoders whose pooling shares the
    text space, its `TextEmbeddingModel`, on the CPU in float32, in eval mode, for tracing. Returns
    (embedder, text embedder or None, transformers config, pooling). Raises BackendError."""
    loader = _load_dummy if config.load_format == "dummy" else _load_auto
    model, pooling, _ = loader(config, config.pooling)
    try:
        model = model.to(dtype=torch.float32).eval()
        embedder = EmbeddingModel(model, pooling).eval()
        text_embedder = TextEmbeddingModel(model).eval() if has_text(model.config.model_type, pooling) else None
    except PoolingError as e:
        raise BackendError(str(e)) from None
    return embedder, text_embedder, model.config, pooling
