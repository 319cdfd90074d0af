"""Every message that crosses a process boundary, as msgspec structs, in one place.

Three links, each a stream of length-prefixed msgpack frames (`iei.ipc`):

- **model link** (server <-> model process, `iei.model_host`): the child says `ModelReady` or `ModelLoadFailed`
  once; then the server sends `AttachSlab` once and `RunImages` / `RunTexts` per batch, and the child answers
  each batch, in order, with `BatchDone` or `BatchFailed`.
- **worker link** (pool <-> preprocessing worker, `iei.preprocess.worker`): `Task` in, `Reply` out. One
  message type each way and one per image on the hot path, so these two are untagged arrays (the smallest
  encoding; a worker answers `WORKER_READY` once before the first).
- **engine link** (HTTP front end <-> engine, `iei.engine_link` / `iei.server.frontends`, only with
  `--http-workers` above 1): a front end says `Hello`; the engine answers `Welcome` (what the front end
  must know to validate and describe requests); then `EmbedCall` / `CancelCall` / `Observed` /
  `HealthQuery` / `MetricsQuery` go one way, `EmbedDone` / `EmbedFailed` / `HealthReply` / `MetricsReply`
  the other.

Tagged structs are arrays whose first element names the type (`array_like=True`, `tag=True`), so a
decoder typed with a union of them (`ModelToServer`, ...) returns the right struct or raises on garbage.
Arrays (int32 token ids, float32 vectors) travel as raw bytes with their shape beside them: no per-number
encoding. Nothing here imports torch, PIL or the web stack: every process imports this module.
"""

from __future__ import annotations

from typing import Any, Union

import msgspec

from backends.base import ModelInfo
from iei.preprocess.spec import PreprocessSpec
from iei.preprocess.text import TextSpec
from iei.slab import SlabLayout


class _Tagged(msgspec.Struct, array_like=True, tag=True, frozen=True):
    pass


# -- model link -------------------------------------------------------------------------------------------

class ModelReady(_Tagged):
    """Model process -> server, once: loaded and warm; what it read about the model."""

    info: ModelInfo
    spec: PreprocessSpec
    text_spec: TextSpec | None


class ModelLoadFailed(_Tagged):
    """Model process -> server, once: why the model could not load (written for the console)."""

    message: str


class AttachSlab(_Tagged):
    """Server -> model process, once after `ModelReady`: the slab the batches' pixels are in."""

    name: str
    layout: SlabLayout


class RunImages(_Tagged):
    """Server -> model process: embed the images in these slab slots."""

    batch_id: int
    slots: list[int]


class RunTexts(_Tagged):
    """Server -> model process: embed padded token ids, int32 (rows, length), mask uint8 (rows, length)."""

    batch_id: int
    input_ids: bytes
    attention_mask: bytes
    rows: int
    length: int


class BatchDone(_Tagged):
    """Model process -> server: the batch's float32 (rows, dim) vectors; `started_at` is the child's
    time.monotonic() (the same clock as the server's on one host)."""

    batch_id: int
    vectors: bytes
    rows: int
    dim: int
    started_at: float
    duration_s: float


class BatchFailed(_Tagged):
    """Model process -> server: the model raised on the batch; `message` is fit for a client."""

    batch_id: int
    message: str
    started_at: float
    duration_s: float


ModelToServer = Union[ModelReady, ModelLoadFailed, BatchDone, BatchFailed]
ServerToModel = Union[AttachSlab, RunImages, RunTexts]


# -- worker link ------------------------------------------------------------------------------------------

WORKER_READY = b"ready"  # a worker's first frame: it has attached the slab (and loaded a tokenizer)


class Task(msgspec.Struct, array_like=True):
    """Pool -> worker: preprocess `payload` into `slot` (or tokenise it: encoding "text", slot -1)."""

    task_id: int
    slot: int
    encoding: int  # index into iei.preprocess.worker.ENCODINGS
    payload: Any  # bytes, or the str from a JSON body (sent as is: no copy to bytes on the loop)


class Reply(msgspec.Struct, array_like=True):
    """Worker -> pool: how task `task_id` went (status: iei.preprocess.worker.STATUS_*)."""

    task_id: int
    status: int
    message: str = ""
    tokens: bytes = b""  # text tasks: int32 token ids


# -- engine link ------------------------------------------------------------------------------------------

class Hello(_Tagged):
    """Front end -> engine, first: which front end this is (its index under the supervisor) and its pid."""

    frontend: int
    pid: int


class Welcome(_Tagged):
    """Engine -> front end, once: the model and its preprocessing (for /info and cheap validation)."""

    info: ModelInfo
    spec: PreprocessSpec
    text_spec: TextSpec | None


class EmbedCall(_Tagged):
    """Front end -> engine: one request's images (`texts` False: payloads are base64 str or raw bytes, with
    `encodings` "base64"/"raw" per item) or texts (`texts` True: payloads are str). Answered by `EmbedDone`
    or `EmbedFailed` with the same `call_id` (unique per link)."""

    call_id: int
    texts: bool
    payloads: list[Any]
    encodings: list[str]
    normalize: bool
    dimensions: int | None
    field: str
    positions: list[int] | None


class CancelCall(_Tagged):
    """Front end -> engine: the client went away or its deadline passed; drop the call's queued images."""

    call_id: int


class EmbedDone(_Tagged):
    """Engine -> front end: float32 (rows, dim) finished vectors and the stage times (seconds)."""

    call_id: int
    vectors: bytes
    rows: int
    dim: int
    preprocess_s: float
    queue_s: float
    inference_s: float


class EmbedFailed(_Tagged):
    """Engine -> front end: the call raised `error` (an `iei.errors.IEIError` subclass's name) with a
    message fit for the client."""

    call_id: int
    error: str
    message: str
    retry_after_s: int = 1


class Observed(_Tagged):
    """Front end -> engine: one finished request, for the one metrics registry (no answer)."""

    route: str
    outcome: str
    total_s: float
    stages: tuple[float, float, float] | None


class HealthQuery(_Tagged):
    call_id: int


class HealthReply(_Tagged):
    """`problem` None: healthy."""

    call_id: int
    problem: str | None


class MetricsQuery(_Tagged):
    call_id: int


class MetricsReply(_Tagged):
    """The engine's registry in the Prometheus text format."""

    call_id: int
    text: bytes


FrontendToEngine = Union[Hello, EmbedCall, CancelCall, Observed, HealthQuery, MetricsQuery]
EngineToFrontend = Union[Welcome, EmbedDone, EmbedFailed, HealthReply, MetricsReply]
