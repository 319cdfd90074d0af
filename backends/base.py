"""The whole backend contract: what a model runtime receives, returns and raises.

Backends know nothing of HTTP, queues or the event loop. They are driven from one
dedicated thread (the batcher's model thread) and are never called concurrently.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec
import numpy as np

LoadFormat = Literal["auto", "dummy"]


class BackendConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a backend needs to load a model. Plain data, safe to log."""

    model: str  # hub id or local folder, passed to `from_pretrained`
    revision: str | None = None
    load_format: LoadFormat = "auto"
    # For `load_format="dummy"`: a local folder holding config.json (random weights are built from it).
    config_dir: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 (auto: backends.precision.choose)
    pooling: str | None = None  # None: the family's default
    num_threads: int = 0  # intra-op CPU threads; 0: the backend decides
    max_batch_size: int = 32  # largest batch the batcher will send (for warm-up and engine profiles)
    # uint8 pixels become model inputs as pixel * scale + offset, per RGB channel (the image
    # processor's rescale and normalise folded together; see iei.preprocess.image.pixel_affine).
    pixel_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pixel_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # (height, width) of the pixels the preprocessing produces; None: the model config's image_size.
    # DINOv2 configs say 518 (the pretraining size) while its processor crops 224.
    image_size: tuple[int, int] | None = None
    # Variable-resolution models (SigLIP 2 NaFlex): the most patches an image is cut into (the processor's
    # max_num_patches); None for fixed-size models.
    max_num_patches: int | None = None
    # ONNX Runtime backends (onnx, tensorrt); the torch backend ignores these.
    onnx_optimize: str = "O2"  # none | O1 | O2 | O3 (graph optimisation of the exported model)
    onnx_opset: int = 0  # 0: the exporter's default for the model type
    quantize: str = "none"  # none | int8 (dynamic int8, CPU provider)
    onnx_cache_dir: str | None = None  # exported models (None: ~/.cache/iei/onnx)
    allow_cpu_fallback: bool = False  # run on the CPU provider when the requested GPU provider is missing


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the rest of the server may know about the loaded model."""

    model_id: str
    model_sha: str | None
    model_type: str  # transformers `config.model_type`, e.g. "vit"
    backend: str  # torch | onnx | tensorrt
    device: str  # e.g. "cpu", "cuda:0"
    dtype: str  # e.g. "float32"
    # Why this dtype, for the start log and /info, e.g. "bfloat16: CPU has amx_bf16; probe min cosine 0.999991"
    dtype_reason: str | None = None
    pooling: str  # e.g. "mean"
    embedding_dim: int
    image_size: tuple[int, int]  # (height, width) of the pixel tensor the model takes
    modalities: tuple[str, ...] = ("image",)  # ("image", "text") for a dual encoder whose pooling shares the text space
    # Text towers: the most tokens a text may have, and "longest" (pad a batch to its longest text) or
    # "max_length" (pad every text to text_max_length, as SigLIP was trained).
    text_max_length: int | None = None
    text_padding: str | None = None
    random_weights: bool = False
    provider: str | None = None  # e.g. "CPUExecutionProvider" (ONNX Runtime backends)
    precision: str | None = None  # fp32 | fp16 | int8 (ONNX Runtime backends)
    model_file: str | None = None  # the ONNX file in use
    # Variable-resolution models (SigLIP 2 NaFlex): each image keeps its aspect ratio and is cut into at most
    # this many patches of `patch_size` pixels; `image_size` is then the square of as many patches.
    max_num_patches: int | None = None
    patch_size: int | None = None


class BackendError(Exception):
    """The model failed on a batch (or at start-up). The message is safe to show a client."""


def check_tokens(input_ids: object, attention_mask: object, modalities: tuple[str, ...]) -> None:
    """Raise BackendError unless the model embeds text and both arrays are integer (B, L) of one shape."""
    if "text" not in modalities:
        raise BackendError("this model embeds images only")
    for name, array in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if not isinstance(array, np.ndarray) or array.ndim != 2 or array.dtype.kind not in "iu":
            got = getattr(array, "shape", type(array).__name__)
            raise BackendError(f"expected {name} as an integer array of shape (B, L), got {got}")
    if input_ids.shape != attention_mask.shape:  # type: ignore[union-attr]
        raise BackendError(f"input_ids {input_ids.shape} and attention_mask {attention_mask.shape} differ")  # type: ignore[union-attr]


def check_patches(pixels: object, grids: object, max_num_patches: int, patch_values: int) -> None:
    """Raise BackendError unless `pixels` is uint8 or float32 (B, max_num_patches, patch_values) and `grids`
    an integer (B, 2) array of grids with 1 to max_num_patches patches."""
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[1:] != (max_num_patches, patch_values):
        got = getattr(pixels, "shape", type(pixels).__name__)
        raise BackendError(f"expected patches of shape (B, {max_num_patches}, {patch_values}), got {got}")
    if pixels.dtype not in (np.uint8, np.float32):
        raise BackendError(f"expected uint8 or float32 patches, got {pixels.dtype}")
    if not isinstance(grids, np.ndarray) or grids.shape != (pixels.shape[0], 2) or grids.dtype.kind not in "iu":
        raise BackendError(f"expected grids as an integer array of shape ({pixels.shape[0]}, 2)")
    counts = grids[:, 0].astype(np.int64) * grids[:, 1]
    if len(counts) and (grids.min() < 1 or counts.max() > max_num_patches):
        raise BackendError(f"a patch grid must hold 1 to {max_num_patches} patches")


def check_pixels(pixels: object, num_channels: int, image_size: tuple[int, int]) -> None:
    """Raise BackendError unless `pixels` is a uint8 or float32 (B, C, H, W) array the model takes."""
    h, w = image_size
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 4 or pixels.shape[1:] != (num_channels, h, w):
        got = getattr(pixels, "shape", type(pixels).__name__)
        raise BackendError(f"expected pixels of shape (B, {num_channels}, {h}, {w}), got {got}")
    if pixels.dtype not in (np.uint8, np.float32):
        raise BackendError(f"expected uint8 or float32 pixels, got {pixels.dtype}")


def warmup_batch_sizes(max_batch_size: int, *, on_gpu: bool) -> list[int]:
    """The batch sizes a warm-up runs. Batch 1 pays the one-time costs (lazy initialisation, kernels,
    thread pools). A GPU also gets the largest batch: memory, kernel choice per shape and TensorRT's
    engine depend on it. On the CPU the largest batch bought nothing: after a batch-1 warm-up, the first
    batch of 8 through vit-base (torch and ONNX Runtime) was as fast as the ones after it, and warming
    it cost ~3 s of start-up."""
    return sorted({1, max(1, max_batch_size)}) if on_gpu else [1]


def blank_images(info: ModelInfo, num_channels: int, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(pixels, grids) of `batch` black images the model takes: for warm-ups and dry runs. A variable-
    resolution model gets the squarest full grid, the most work an image can bring."""
    if info.max_num_patches is None:
        return np.zeros((batch, num_channels, *info.image_size), dtype=np.uint8), None
    side = max(1, int(info.max_num_patches ** 0.5))
    grids = np.tile(np.array([[side, info.max_num_patches // side]], dtype=np.int32), (batch, 1))
    return np.zeros((batch, info.max_num_patches, num_channels * info.patch_size ** 2), dtype=np.uint8), grids  # type: ignore[operator]


class Backend(Protocol):
    """A loaded model. All methods run on the model thread and may block."""

    info: ModelInfo

    def embed_images(self, pixels: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        """Embed a batch -> float32 (B, D), pooled, not L2-normalised. `pixels` is uint8 (B, 3, H, W),
        resized and cropped, which the backend normalises with `pixel_scale`/`pixel_offset`; or float32
        already normalised. Variable-resolution models (`ModelInfo.max_num_patches` set: SigLIP 2 NaFlex)
        take uint8 patches (B, max_num_patches, patch * patch * 3), channels last within a patch, and
        `grids` int32 (B, 2): each image's patch grid (rows, cols); its patches past rows * cols are padding.
        Raises BackendError."""
        ...

    def embed_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Embed tokenised texts -> float32 (B, D) in the image embedding's space, not L2-normalised.
        `input_ids` and `attention_mask` are int (B, L), padded on the right. Raises BackendError (also
        when the model has no "text" modality)."""
        ...

    def warmup(self) -> None:
        """Run representative batches so the first client does not pay for lazy initialisation."""
        ...

    def close(self) -> None:
        """Release the model and any device memory."""
        ...
