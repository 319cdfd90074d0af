"""Request and response bodies of the HTTP contract (msgspec structs)."""

from __future__ import annotations

from typing import Literal

import msgspec


Modality = Literal["image", "text"]


class EmbedRequest(msgspec.Struct):
    """POST /embed (also / and /invocations). Unknown fields are ignored, as TEI does."""

    inputs: str | list[str]
    normalize: bool = True
    dimensions: int | None = None
    modality: Modality = "image"  # "text": `inputs` are plain strings (CLIP, SigLIP)


class OpenAIEmbeddingRequest(msgspec.Struct):
    """POST /v1/embeddings."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: Modality = "image"


class OpenAIEmbedding(msgspec.Struct):
    embedding: list[float] | str
    index: int
    object: str = "embedding"


class OpenAIUsage(msgspec.Struct):
    prompt_tokens: int = 0
    total_tokens: int = 0


class OpenAIEmbeddingResponse(msgspec.Struct):
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage
    object: str = "list"


class ErrorBody(msgspec.Struct):
    error: str
    error_type: str


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    code: int


class OpenAIErrorBody(msgspec.Struct):
    error: OpenAIErrorDetail


class HealthBody(msgspec.Struct):
    message: str = "OK"


class ImageSize(msgspec.Struct):
    height: int
    width: int


class Pooling(msgspec.Struct):
    pooling: str


class ModelType(msgspec.Struct):
    embedding: Pooling


class Info(msgspec.Struct):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: ModelType
    served_model_name: str
    backend: str
    provider: str | None  # ONNX Runtime execution provider, None for torch
    model_precision: str | None  # fp32 | fp16 | int8 for ONNX Runtime backends
    model_file: str | None  # the ONNX file in use, None for torch
    device: str
    embedding_dim: int  # after projection and pooling: the length of every vector
    modalities: list[str]  # ["image"], or ["image", "text"] for CLIP/SigLIP
    max_input_tokens: int | None  # texts are truncated to this many tokens (None: no text)
    image_size: ImageSize
    max_concurrent_requests: int
    max_batch_size: int
    max_batch_delay_ms: float
    max_client_batch_size: int
    max_image_pixels: int
    payload_limit: int
    preprocess_workers: int
    draft_decode: bool
    random_weights: bool
    input_formats: list[str]
    version: str
    image_formats: list[str] = msgspec.field(default_factory=list)  # allowed image formats
    decode_timeout_ms: float = 0.0
    request_timeout_ms: float = 0.0  # default deadline; 0: none
    allow_url_inputs: bool = False
    # Variable-resolution models (SigLIP 2 NaFlex): each image keeps its aspect ratio and becomes at most
    # max_num_patches patches of patch_size pixels (image_size is then the square of as many). None otherwise.
    max_num_patches: int | None = None
    patch_size: int | None = None


# -- background batch jobs (/batches) ----------------------------------------------------------

BatchStatus = Literal["queued", "running", "completed", "failed", "cancelled"]


class BatchProgress(msgspec.Struct):
    total: int  # inputs in the job
    done: int  # inputs with a result (a vector or an error)
    errors: int  # of which errors


class BatchJob(msgspec.Struct):
    """A batch job's state (POST /batches, GET /batches/{id}, DELETE /batches/{id})."""

    id: str
    status: BatchStatus
    progress: BatchProgress
    images_per_s: float | None  # over the current run (or the whole run once finished)
    eta_s: float | None  # seconds left at that rate, while queued or running
    normalize: bool
    dimensions: int | None
    created_at: float  # Unix time, seconds
    started_at: float | None
    finished_at: float | None
    results_url: str


class BatchList(msgspec.Struct):
    data: list[BatchJob]  # newest first


class BatchResultError(msgspec.Struct):
    message: str
    error_type: str


class BatchResultLine(msgspec.Struct, omit_defaults=True):
    """One line of GET /batches/{id}/results: `embedding` or `error`."""

    index: int
    embedding: list[float] | None = None
    error: BatchResultError | None = None
