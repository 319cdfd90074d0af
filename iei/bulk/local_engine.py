"""The in-process engine of `iei embed`: the server's EmbeddingEngine without HTTP.

Each file is read on a thread and handed to the engine as raw bytes, so it goes through exactly
what a request does (preprocessing pool writing uint8 pixels into the shared-memory slab, dynamic
batcher, model process running the backend, the same normalisation): offline vectors equal served
ones. As many images are in flight as the slab has slots, which keeps every worker and the model busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from iei.bulk.inputs import read_image_file
from iei.config import Settings
from iei.engine import EmbeddingEngine, ImagePayload, slots_for
from iei.errors import IEIError, InputError


class ResultSink(Protocol):
    """Takes an engine's results (called on the thread that runs the engine)."""

    def ready(self) -> None:
        """The model is loaded; embedding starts."""

    def embedded(self, paths: list[str], vectors: np.ndarray) -> None: ...

    def failed(self, path: str, message: str) -> None: ...


def check_dimensions(dimensions: int | None, embedding_dim: int) -> None:
    if dimensions is not None and not 1 <= dimensions <= embedding_dim:
        raise ValueError(f"--dimensions must be between 1 and {embedding_dim} for this model, got {dimensions}")


def embed_locally(paths: Sequence[str], settings: Settings, sink: ResultSink, *, normalize: bool,
                  dimensions: int | None) -> None:
    """Blocking: load the model, embed every path, stop. Bad files go to `sink.failed`. Raises
    BackendError (a model that is not found included) if the model cannot be loaded."""
    settings = settings.replace(batch_jobs=False)  # no server, no background jobs (nor their worker)
    window = slots_for(settings)
    engine = EmbeddingEngine.load(settings.replace(max_concurrent_requests=max(window, settings.max_concurrent_requests)))
    check_dimensions(dimensions, engine.model.info.embedding_dim)
    asyncio.run(_run(engine, paths, sink, window, normalize, dimensions))


async def _run(engine: EmbeddingEngine, paths: Sequence[str], sink: ResultSink, window: int, normalize: bool,
               dimensions: int | None) -> None:
    await engine.start()
    sink.ready()
    try:
        pending: set[asyncio.Task] = set()
        for path in paths:
            if len(pending) >= window:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                _deliver(done, sink)
            pending.add(asyncio.ensure_future(_embed_file(engine, path, normalize, dimensions)))
        if pending:
            _deliver((await asyncio.wait(pending))[0], sink)
    finally:
        await engine.stop()


async def _embed_file(engine: EmbeddingEngine, path: str, normalize: bool,
                      dimensions: int | None) -> tuple[str, np.ndarray | None, str]:
    try:
        data = await asyncio.to_thread(read_image_file, path)
        result = await engine.embed([ImagePayload(data, "raw")], normalize=normalize, dimensions=dimensions)
    except InputError as e:
        return path, None, e.message.removeprefix("inputs[0]: ")
    except IEIError as e:  # the model failed on the batch, or a worker died: this file can be retried
        return path, None, e.message
    return path, result.vectors, ""


def _deliver(done: set[asyncio.Task], sink: ResultSink) -> None:
    for task in done:
        path, vectors, error = task.result()
        if vectors is None:
            sink.failed(path, error)
        else:
            sink.embedded([path], vectors)
