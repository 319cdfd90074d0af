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


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None  # OpenAI's field; no effect here


class ContentPart(msgspec.Struct):
    """A chat content part: `{"type": "image_url", "image_url": {"url": ...}}` or `{"type": "text", "text": ...}`.
    `type` is a plain string so an unknown type gets IEI's message (iei.server.compat.content), not msgspec's."""

    type: str
    text: str | None = None
    image_url: ImageUrl | str | None = None  # OpenAI sends {"url": ...}; a bare string is accepted too


class ChatMessage(msgspec.Struct):
    role: str = "user"
    content: str | list[ContentPart] = ""


class OpenAIEmbeddingRequest(msgspec.Struct):
    """POST /v1/embeddings: `input` (OpenAI), or `messages` (vLLM's chat-style multimodal embeddings: one vector
    for all the messages). Token-id inputs (lists of ints) are decoded only to be refused with a clear message."""

    input: str | list[str | int | list[int]] | None = None
    messages: list[ChatMessage] | None = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    normalize: bool = True  # vLLM's extra parameter
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
    # Why the model runs at model_dtype, e.g. "bfloat16: CPU has avx512_bf16; probe min cosine 0.999991" or
    # "float32: the CPU has no bf16 units ..." (torch backend; None for ONNX Runtime, see model_precision)
    model_dtype_reason: str | None = None


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


class ModelCard(msgspec.Struct):
    """GET /v1/models: the one served model (the OpenAI client's `models.list()`, as vLLM's examples call it)."""

    id: str
    created: int  # Unix time the server started
    object: str = "model"
    owned_by: str = "iei"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


# -- Cohere's POST /v2/embed ---------------------------------------------------------------------

class CohereEmbedInput(msgspec.Struct):
    content: list[ContentPart]


class CohereEmbedRequest(msgspec.Struct):
    """Cohere's v2 embed request: one of `texts`, `images` (data URIs) or `inputs` (content parts)."""

    model: str | None = None  # any name: the served model answers
    input_type: str | None = None  # checked, but no effect on CLIP/SigLIP vectors
    texts: list[str] | None = None
    images: list[str] | None = None
    inputs: list[CohereEmbedInput] | None = None
    embedding_types: list[str] | None = None  # default ["float"]
    output_dimension: int | None = None
    max_tokens: int | None = None  # refused: texts are cut at the model's own limit
    truncate: str | None = None  # "END" only (what the tokenizer does)
    priority: int | None = None  # no effect


class CohereEmbeddings(msgspec.Struct, omit_defaults=True):
    """One list per requested type, each one entry per input in request order."""

    float_: list[list[float]] | None = msgspec.field(default=None, name="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereApiVersion(msgspec.Struct):
    version: str = "2"


class CohereMeta(msgspec.Struct):
    api_version: CohereApiVersion = msgspec.field(default_factory=CohereApiVersion)


class CohereEmbedResponse(msgspec.Struct):
    id: str
    embeddings: CohereEmbeddings
    texts: list[str] | None  # the `texts` of a `texts` request, else null
    meta: CohereMeta = msgspec.field(default_factory=CohereMeta)
    response_type: str = "embeddings_by_type"


# -- Weaviate's multi2vec-clip inference API (POST /vectorize) --------------------------------------

class VectorizeRequest(msgspec.Struct):
    """Weaviate's module sends `null` for a list it has nothing in (a nil Go slice)."""

    texts: list[str] | None = None
    images: list[str] | None = None  # base64, no data: prefix needed


class VectorizeResponse(msgspec.Struct):
    textVectors: list[list[float]]  # noqa: N815  (the module's field names)
    imageVectors: list[list[float]]  # noqa: N815


class VectorizerMeta(msgspec.Struct):
    """GET /meta: what Weaviate shows as the module's model (the reference container shows the model's config)."""

    model_id: str
    served_model_name: str
    embedding_dim: int
    modalities: list[str]
    pooling: str
    version: str
