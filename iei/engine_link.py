"""EngineLink: the engine as an HTTP front end sees it, when the engine runs in another process
(`iei serve --http-workers N`, N > 1; see `iei.server.frontends`).

It answers the same calls the routes make of an `EmbeddingEngine` (`embed`, `embed_texts`, `check_request`,
`health_problem_after_probe`, `render_metrics`, `metrics.observe_request`, `model.info`, `spec`, ...), by
sending typed messages (`iei.messages`, the engine link) over one Unix socket to the engine's process,
where the one admission count, preprocessing pool, batcher and model live. Payloads travel untouched (base64
text or raw bytes); vectors come back as float32 bytes, already normalised and truncated.

Cancellation crosses the link: a request whose client disconnects or whose deadline passes is cancelled
here as in one process, and `CancelCall` makes the engine drop its queued images.

Owner: the front end's event loop. If the link drops (the engine is gone), every waiting call fails with
`Unhealthy`, `/health` answers 503, and `on_lost` runs (the front end shuts down: it is no use alone).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any, Callable

import msgspec
import numpy as np

from backends.base import ModelInfo
from iei import errors
from iei.config import Settings
from iei.engine import EmbedResult, ImagePayload, Timings, check_request
from iei.ipc import FrameProtocol, FrameWriter
from iei.messages import (
    CancelCall, EmbedCall, EmbedDone, EmbedFailed, EngineToFrontend, Hello, HealthQuery, HealthReply, MetricsQuery,
    MetricsReply, Observed, Welcome,
)

log = logging.getLogger("iei.frontend")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(EngineToFrontend).decode


def error_from(message: EmbedFailed) -> errors.IEIError:
    """The engine's error, rebuilt as the same `iei.errors` class (the HTTP table maps it once, here)."""
    kind = getattr(errors, message.error, None)
    if not (isinstance(kind, type) and issubclass(kind, errors.IEIError)):
        return errors.IEIError(message.message)
    if kind is errors.Overloaded:
        return errors.Overloaded(message.message, message.retry_after_s)
    return kind(message.message)


class _RemoteModel:
    """`engine.model` as the routes read it: the model's info, from the engine's `Welcome`."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info


class _RemoteMetrics:
    """`engine.metrics` as the routes use it: each finished request is reported to the engine's registry."""

    def __init__(self, link: EngineLink) -> None:
        self._link = link

    def observe_request(self, route: str, outcome: str, total_s: float,
                        stages: tuple[float, float, float] | None) -> None:
        self._link.send(Observed(route, outcome, total_s, stages))


class EngineLink:
    def __init__(self, settings: Settings, frontend: int, on_lost: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.frontend = frontend
        self.metrics = _RemoteMetrics(self)
        self.draining = False  # this front end is shutting down: it admits nothing new
        self._on_lost_callback = on_lost
        self._writer: FrameWriter | None = None
        self._welcome: asyncio.Future | None = None
        self._calls: dict[int, asyncio.Future] = {}
        self._ids = itertools.count()
        self.model: _RemoteModel | None = None
        self.spec = self.text_spec = None

    # -- life cycle ---------------------------------------------------------------------------

    async def connect(self, path: str) -> None:
        """Connect to the engine's socket, introduce this front end and wait for the model's description."""
        loop = asyncio.get_running_loop()
        self._welcome = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: FrameProtocol(self._on_frame, self._on_lost), path)
        self._writer = FrameWriter(transport)  # type: ignore[arg-type]
        self.send(Hello(self.frontend, os.getpid()))
        welcome: Welcome = await self._welcome
        self.model, self.spec, self.text_spec = _RemoteModel(welcome.info), welcome.spec, welcome.text_spec

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def begin_shutdown(self) -> None:
        """Refuse new requests (503); the ones already sent still finish. Safe in a signal handler."""
        self.draining = True

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()

    # -- the engine's calls -------------------------------------------------------------------

    def check_request(self, count: int, dimensions: int | None, field: str = "inputs") -> None:
        check_request(self.settings, self.model.info.embedding_dim, count, dimensions, field)  # type: ignore[union-attr]

    async def embed(self, images: Sequence[ImagePayload], *, normalize: bool = True, dimensions: int | None = None,
                    field: str = "inputs", positions: Sequence[int] | None = None) -> EmbedResult:
        """As `EmbeddingEngine.embed`, in the engine's process."""
        self.check_request(len(images), dimensions, field)
        return await self._embed(False, [i.data for i in images], [i.encoding for i in images], normalize,
                                 dimensions, field, positions)

    async def embed_texts(self, texts: Sequence[str], *, normalize: bool = True, dimensions: int | None = None,
                          field: str = "inputs", positions: Sequence[int] | None = None) -> EmbedResult:
        """As `EmbeddingEngine.embed_texts`, in the engine's process."""
        return await self._embed(True, list(texts), [], normalize, dimensions, field, positions)

    async def _embed(self, texts: bool, payloads: list[Any], encodings: list[str], normalize: bool,
                     dimensions: int | None, field: str, positions: Sequence[int] | None) -> EmbedResult:
        if self.draining:
            raise errors.Unhealthy("the server is shutting down; retry")
        call_id = next(self._ids)
        done = self._call(call_id, EmbedCall(call_id, texts, payloads, encodings, normalize, dimensions, field,
                                             list(positions) if positions is not None else None))
        try:
            reply: EmbedDone = await done
        except asyncio.CancelledError:
            self._calls.pop(call_id, None)
            self.send(CancelCall(call_id))  # the engine drops the call's queued images
            raise
        vectors = np.frombuffer(reply.vectors, dtype=np.float32).reshape(reply.rows, reply.dim)
        return EmbedResult(vectors, Timings(reply.preprocess_s, reply.queue_s, reply.inference_s))

    async def health_problem_after_probe(self) -> str | None:
        """The engine's answer, which covers every front end (`/health` is one answer for the server)."""
        if self.draining:
            return "the server is shutting down"
        call_id = next(self._ids)
        try:
            reply: HealthReply = await self._call(call_id, HealthQuery(call_id))
        except errors.IEIError as e:
            return e.message
        return reply.problem

    async def render_metrics(self) -> bytes:
        """The engine's one registry (every front end's requests are in it)."""
        call_id = next(self._ids)
        reply: MetricsReply = await self._call(call_id, MetricsQuery(call_id))
        return reply.text

    # -- the link -----------------------------------------------------------------------------

    def send(self, message: msgspec.Struct) -> None:
        if self._writer is not None:
            self._writer.send(_encode(message))

    def _call(self, call_id: int, message: msgspec.Struct) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if self._writer is None:
            future.set_exception(errors.Unhealthy("the engine is not reachable"))
            return future
        self._calls[call_id] = future
        self.send(message)
        return future

    def _on_frame(self, frame: bytes) -> None:
        message = _decode(frame)
        if isinstance(message, Welcome):
            if self._welcome is not None and not self._welcome.done():
                self._welcome.set_result(message)
            return
        future = self._calls.pop(message.call_id, None)
        if future is None or future.done():
            return  # cancelled meanwhile
        if isinstance(message, EmbedFailed):
            future.set_exception(error_from(message))
        else:
            future.set_result(message)

    def _on_lost(self) -> None:
        self._writer = None
        if self._welcome is not None and not self._welcome.done():
            self._welcome.set_exception(errors.Unhealthy("the engine closed the link before welcoming us"))
        calls, self._calls = self._calls, {}
        for future in calls.values():
            if not future.done():
                future.set_exception(errors.Unhealthy("the engine is not reachable; retry"))
        if self._on_lost_callback is not None:
            self._on_lost_callback()
