"""EmbeddingEngine: the embedding service as a library object (no HTTP).

Flow per image: admission -> slot -> PreprocessPool (worker process) -> DynamicBatcher -> model
runner (the backend in its model process) -> vector. Images of one request flow independently, so a large request
spans batches and keeps every stage busy. Owner: the event loop (all async methods run there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

from backends import BackendConfig
from iei.batcher import DynamicBatcher, Embedded
from iei.config import Settings
from iei.errors import (
    EmptyInput,
    IEIError,
    InputError,
    Overloaded,
    Unhealthy,
    ValidationFailed,
)
from iei.metrics import Metrics
from iei.model_runner import ModelProcess, ModelRunner
from iei.models import resolve_model
from iei.preprocess.image import pixel_affine
from iei.preprocess.pool import PreprocessPool
from iei.preprocess.spec import PreprocessSpec, load_spec

log = logging.getLogger("iei.engine")

Encoding = Literal["base64", "raw"]

_PROBE_TIMEOUT_S = 10.0
_LAST_BATCH_FAILED = "the model failed on its last batch"


class ImagePayload(NamedTuple):
    """One image as it arrived: base64 text (data-URI prefix allowed) or raw file bytes."""

    data: bytes | str
    encoding: Encoding


class Timings(NamedTuple):
    """Per-request stage times in seconds (the slowest image of the request for each stage)."""

    preprocess_s: float
    queue_s: float
    inference_s: float


class EmbedResult(NamedTuple):
    vectors: np.ndarray  # float32 (N, D')
    timings: Timings


def model_plan(settings: Settings) -> tuple[PreprocessSpec, BackendConfig]:
    """Resolve the model and read its preprocessing: what the workers and the backend are built from
    (also used by `iei embed`'s engines, so offline vectors equal served ones). Raises ModelNotFound
    or ValueError (unsupported processor)."""
    source = resolve_model(settings.model, settings.revision, settings.load_format)
    spec = load_spec(source.processor_source, source.revision, draft=settings.draft_decode,
                     max_image_pixels=settings.max_image_pixels)
    scale, offset = pixel_affine(spec)
    config = BackendConfig(
        model=settings.model, revision=settings.revision, load_format=settings.load_format,
        config_dir=source.config_dir, device=settings.device, dtype=settings.dtype, pooling=settings.pooling,
        num_threads=settings.backend_threads, max_batch_size=settings.max_batch_size,
        pixel_scale=scale, pixel_offset=offset, onnx_optimize=settings.onnx_optimize, quantize=settings.quantize,
        onnx_cache_dir=settings.onnx_cache_path, allow_cpu_fallback=settings.allow_cpu_fallback,
    )
    return spec, config


def slots_for(settings: Settings) -> int:
    """Enough slots for the running batch, the prefetched one, and work queued in every worker."""
    return 2 * settings.max_batch_size + 4 * settings.workers


class EmbeddingEngine:
    def __init__(self, settings: Settings, model: ModelRunner, spec: PreprocessSpec) -> None:
        self.settings = settings
        self.model = model
        self.spec = spec
        self.metrics = Metrics()
        self.pool = PreprocessPool(spec, workers=settings.workers, slots=slots_for(settings))
        self.batcher = DynamicBatcher(
            model.run,
            self.pool.release_slot,
            max_batch_size=settings.max_batch_size,
            max_batch_delay_s=settings.max_batch_delay_ms / 1000,
            observer=self.metrics,
        )
        self.inflight_images = 0  # admitted and not yet answered
        self.ready = False
        self._probe: asyncio.Future | None = None
        self.metrics.watch(queue_size=lambda: self.batcher.queue_size, inflight=lambda: self.inflight_images)

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: Settings) -> EmbeddingEngine:
        """Blocking: resolve the model, read its preprocessing, start the model process and wait until
        the model is loaded and warm. Raises ModelNotFound, ValueError (unsupported processor) or
        BackendError, each with a message fit for the console."""
        spec, config = model_plan(settings)
        model = ModelProcess(settings.backend, config, settings.log_format, settings.log_level)
        return cls(settings, model, spec)

    async def start(self) -> None:
        await self.pool.start()
        await self.model.start(self.pool)
        self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.batcher.close()
        await self.model.close()
        await self.pool.close()

    async def health_problem_after_probe(self) -> str | None:
        """Like `health_problem`, but after a failed batch run one tiny probe batch first, so health
        recovers on its own once the model answers again (with no traffic, nothing else would tell)."""
        problem = self.health_problem()
        if problem != _LAST_BATCH_FAILED:
            return problem
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._run_probe())
        await asyncio.wait({self._probe}, timeout=_PROBE_TIMEOUT_S)
        return self.health_problem()

    async def _run_probe(self) -> None:
        slot = await self.pool.acquire_slot()
        self.pool.pixels[slot] = 0.0
        try:
            await self.batcher.submit(slot)
        except IEIError:
            pass  # still failing: health stays 503

    def health_problem(self) -> str | None:
        """None when healthy, else what is wrong (safe to show a client)."""
        if not self.ready:
            return "the model is not loaded yet"
        if not self.batcher.alive:
            return "the batcher stopped"
        if not self.model.alive:
            return "the model process is restarting"
        if not self.batcher.backend_ok:
            return _LAST_BATCH_FAILED
        if not self.pool.worker_pids:
            return "no preprocessing worker is running"
        return None

    # -- embedding ----------------------------------------------------------------------------

    def check_request(self, count: int, dimensions: int | None, field: str = "inputs") -> None:
        """Cheap validation before any work (raises EmptyInput / ValidationFailed)."""
        if count == 0:
            raise EmptyInput(f"`{field}` cannot be empty")
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise ValidationFailed(f"`{field}` has {count} images; the limit is {limit} (max_client_batch_size)")
        dim = self.model.info.embedding_dim
        if dimensions is not None and not 1 <= dimensions <= dim:
            raise ValidationFailed(f"`dimensions` must be between 1 and {dim}, got {dimensions}")

    async def embed(self, images: Sequence[ImagePayload], *, normalize: bool = True,
                    dimensions: int | None = None, field: str = "inputs") -> EmbedResult:
        """Embed images in input order. Raises the errors of `iei.errors`."""
        self.check_request(len(images), dimensions, field)
        self._admit(len(images))
        try:
            start = time.perf_counter()
            if len(images) == 1:
                results = [await self._embed_one(images[0], 0, field, start)]
            else:
                results = await _all_or_nothing([self._embed_one(img, i, field, start) for i, img in enumerate(images)])
        finally:
            self.inflight_images -= len(images)
        vectors = finish_vectors(np.stack([r[0].vector for r in results]), normalize, dimensions)
        timings = Timings(
            max(r[1] for r in results),
            max(r[0].queue_s for r in results),
            max(r[0].inference_s for r in results),
        )
        self.metrics.images_embedded.inc(len(images))
        return EmbedResult(vectors, timings)

    def _admit(self, count: int) -> None:
        limit = self.settings.max_concurrent_requests
        if self.inflight_images + count > limit:
            raise Overloaded(f"the server is at capacity ({limit} images in flight); retry shortly")
        if not self.ready:
            raise Unhealthy("the model is not ready")
        self.inflight_images += count

    async def _embed_one(self, image: ImagePayload, index: int, field: str, start: float) -> tuple[Embedded, float]:
        slot = await self.pool.acquire_slot()
        try:
            await self.pool.prepare(image.data, image.encoding, slot)
        except InputError as e:
            raise e.at(index, field) from None
        preprocess_s = time.perf_counter() - start
        future = self.batcher.submit(slot)
        return await future, preprocess_s


def finish_vectors(vectors: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Truncate to `dimensions`, then L2-normalise if asked: what every client gets (float32 (N, D'))."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors


async def _all_or_nothing(coroutines: list) -> list:
    """Run all; on the first failure cancel the rest (their queued images are dropped) and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
