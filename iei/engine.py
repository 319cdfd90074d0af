"""EmbeddingEngine: the embedding service as a library object (no HTTP).

Flow per image: admission -> slot -> PreprocessPool (worker process) -> DynamicBatcher -> model
runner (the backend in its model process) -> vector. Images of one request flow independently, so a large request
spans batches and keeps every stage busy. Texts (CLIP, SigLIP) take the same path with token ids instead of a
slot, through a second DynamicBatcher, so a model call never mixes texts and images.
Owner: the event loop (all async methods run there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Literal, NamedTuple

import msgspec
import numpy as np

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
from iei.models import has_text_tower
from iei.model_runner import ModelProcess, ModelRunner
from iei.preprocess.pool import PreprocessPool, start_worker_server
from iei.preprocess.spec import PreprocessSpec
from iei.preprocess.text import TextSpec, pad_tokens
from iei.url_inputs import UrlFetcher, looks_like_url

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


def slots_for(settings: Settings) -> int:
    """Enough slots for the running batch, the prefetched one, work queued in every worker, and the
    background jobs' images."""
    return 2 * settings.max_batch_size + 4 * settings.workers + background_slots(settings)


def background_slots(settings: Settings) -> int:
    """Background-job images in flight at once: enough to keep the background workers busy, few
    enough that job batches stay small (an online image may wait for one). 0 without jobs."""
    return min(settings.max_batch_size, 2 * settings.batch_job_workers) if settings.batch_jobs else 0


def with_input_limits(spec: PreprocessSpec, settings: Settings) -> PreprocessSpec:
    """The model's preprocessing with the server's input limits (the workers enforce them)."""
    return msgspec.structs.replace(spec, max_image_pixels=settings.max_image_pixels,
                                   formats=settings.image_format_names,
                                   decode_timeout_s=settings.decode_timeout_ms / 1000)


class EmbeddingEngine:
    def __init__(self, settings: Settings, model: ModelRunner, spec: PreprocessSpec,
                 text_spec: TextSpec | None = None) -> None:
        self.settings = settings
        self.model = model
        self.spec = spec = with_input_limits(spec, settings)
        self.text_spec = text_spec
        self.metrics = Metrics()
        self.pool = PreprocessPool(spec, workers=settings.workers, slots=slots_for(settings), text_spec=text_spec,
                                   background_workers=settings.batch_job_workers if settings.batch_jobs else 0)
        self.batcher = self._new_batcher(model.run, self.pool.release_slot)
        # Texts queue apart from images (a model call is one or the other); token ids hold no slot.
        self.text_batcher = self._new_batcher(self._run_texts, _no_slot) if text_spec is not None else None
        self.fetcher = UrlFetcher(allowlist=settings.url_allowlist_networks, max_bytes=settings.url_max_bytes,
                                  timeout_s=settings.url_timeout_ms / 1000) if settings.allow_url_inputs else None
        self.inflight_images = 0  # admitted and not yet answered
        self.online_idle = asyncio.Event()  # set while no request is in flight: background jobs run then
        self.online_idle.set()
        self.ready = False
        self.draining = False  # shutting down: admit nothing new, finish what is admitted
        self._probe: asyncio.Future | None = None
        self.metrics.watch(queue_size=lambda: self.batcher.queue_size, inflight=lambda: self.inflight_images)

    def _new_batcher(self, run_batch, release_slot) -> DynamicBatcher:
        return DynamicBatcher(run_batch, release_slot, max_batch_size=self.settings.max_batch_size,
                              max_batch_delay_s=self.settings.max_batch_delay_ms / 1000, observer=self.metrics)

    def _run_texts(self, token_ids: list[np.ndarray]) -> asyncio.Future:
        return self.model.run_texts(*pad_tokens(token_ids, self.text_spec.pad_id))  # type: ignore[union-attr]

    @property
    def _batchers(self) -> list[DynamicBatcher]:
        return [self.batcher] if self.text_batcher is None else [self.batcher, self.text_batcher]

    # -- life cycle ---------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: Settings) -> EmbeddingEngine:
        """Blocking: start the model process and wait until it has resolved the model, read its
        preprocessing and tokenizer, and loaded and warmed the model. Raises BackendError with a message
        fit for the console (a model that is not found or an unsupported processor included)."""
        # While the model loads, the workers' fork server starts and imports the decoders (and a text
        # model's tokenizer classes), so the workers fork ready to go.
        model = ModelProcess(settings, while_loading=lambda: start_worker_server(
            tokenizers=has_text_tower(settings.model, settings.revision)))
        return cls(settings, model, model.spec, model.text_spec)

    async def start(self) -> None:
        await self.pool.start()
        await self.model.start(self.pool.slab)
        for batcher in self._batchers:
            batcher.start()
        self.ready = True

    def begin_shutdown(self) -> None:
        """Refuse new requests (503) and report unhealthy; admitted ones still finish. Safe to call
        from a signal handler (it only sets a flag)."""
        self.draining = True

    async def stop(self) -> None:
        self.ready = False
        for batcher in self._batchers:
            await batcher.close()
        await self.model.close()
        await self.pool.close()
        if self.fetcher is not None:
            await self.fetcher.close()

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
        self.pool.slab.clear(slot)
        try:
            await self.batcher.submit(slot)
            if self.text_batcher is not None and not self.text_batcher.backend_ok:
                await self.text_batcher.submit(np.zeros(2, dtype=np.int32))
        except IEIError:
            pass  # still failing: health stays 503

    def health_problem(self) -> str | None:
        """None when healthy, else what is wrong (safe to show a client)."""
        if self.draining:
            return "the server is shutting down"
        if not self.ready:
            return "the model is not loaded yet"
        if not all(b.alive for b in self._batchers):
            return "the batcher stopped"
        if not self.model.alive:
            return "the model process is restarting"
        if not all(b.backend_ok for b in self._batchers):
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
            raise ValidationFailed(f"`{field}` has {count} inputs; the limit is {limit} (max_client_batch_size)")
        dim = self.model.info.embedding_dim
        if dimensions is not None and not 1 <= dimensions <= dim:
            raise ValidationFailed(f"`dimensions` must be between 1 and {dim}, got {dimensions}")

    async def embed(self, images: Sequence[ImagePayload], *, normalize: bool = True,
                    dimensions: int | None = None, field: str = "inputs",
                    positions: Sequence[int] | None = None) -> EmbedResult:
        """Embed images in input order. Raises the errors of `iei.errors`; an error about one image
        names it `{field}[{positions[i]}]` (positions default to 0, 1, ...: a request that mixes
        images and texts in one list passes where each image sits in it)."""
        return await self._embed_all(images, self._embed_one, normalize, dimensions, field,
                                     self.metrics.images_embedded, positions)

    async def embed_texts(self, texts: Sequence[str], *, normalize: bool = True,
                          dimensions: int | None = None, field: str = "inputs",
                          positions: Sequence[int] | None = None) -> EmbedResult:
        """Embed texts in input order, into the image embeddings' space (CLIP, SigLIP). Raises
        ValidationFailed for an image-only model, and the errors of `iei.errors` (naming inputs as `embed` does)."""
        if self.text_batcher is None:
            raise ValidationFailed(
                f"model {self.settings.model!r} embeds images only (pooling {self.model.info.pooling!r}): text needs a "
                "CLIP or SigLIP model with its default pooling")
        return await self._embed_all(texts, self._embed_text, normalize, dimensions, field,
                                     self.metrics.texts_embedded, positions)

    async def _embed_all(self, items: Sequence, embed_one, normalize: bool, dimensions: int | None,
                         field: str, counter, positions: Sequence[int] | None) -> EmbedResult:
        self.check_request(len(items), dimensions, field)
        self._admit(len(items))
        places = range(len(items)) if positions is None else positions
        try:
            start = time.perf_counter()
            if len(items) == 1:
                results = [await embed_one(items[0], places[0], field, start)]
            else:
                results = await all_or_nothing([embed_one(item, place, field, start)
                                                 for item, place in zip(items, places)])
        finally:
            self.inflight_images -= len(items)
            if self.inflight_images == 0:
                self._set_online_busy(False)
        vectors = finish_vectors(np.stack([r[0].vector for r in results]), normalize, dimensions)
        timings = Timings(
            max(r[1] for r in results),
            max(r[0].queue_s for r in results),
            max(r[0].inference_s for r in results),
        )
        counter.inc(len(items))
        return EmbedResult(vectors, timings)

    def _admit(self, count: int) -> None:
        limit = self.settings.max_concurrent_requests
        if self.inflight_images + count > limit:
            raise Overloaded(f"the server is at capacity ({limit} images in flight); retry shortly")
        if self.draining:
            raise Unhealthy("the server is shutting down; retry")
        if not self.ready:
            raise Unhealthy("the model is not ready")
        if self.inflight_images == 0:
            self._set_online_busy(True)
        self.inflight_images += count

    def _set_online_busy(self, busy: bool) -> None:
        """Requests in flight or not: background jobs start images (runner) and batches (batcher) only when not."""
        if busy:
            self.online_idle.clear()
        else:
            self.online_idle.set()
        self.batcher.set_online_busy(busy)

    async def _embed_one(self, image: ImagePayload, index: int, field: str, start: float) -> tuple[Embedded, float]:
        try:
            data, encoding = await self._fetched(image)
            slot = await self.pool.acquire_slot()
            await self.pool.prepare(data, encoding, slot)
        except InputError as e:
            raise e.at(index, field) from None
        preprocess_s = time.perf_counter() - start
        future = self.batcher.submit(slot)
        return await future, preprocess_s

    async def _embed_text(self, text: str, index: int, field: str, start: float) -> tuple[Embedded, float]:
        try:
            token_ids = await self.pool.tokenize(text)
        except InputError as e:
            raise e.at(index, field) from None
        preprocess_s = time.perf_counter() - start
        return await self.text_batcher.submit(token_ids), preprocess_s  # type: ignore[union-attr]


    async def embed_in_background(self, image: ImagePayload) -> np.ndarray:
        """One image of a background job (`iei.jobs`), at low priority all the way: decoded by the
        pool's background worker (nice 19; a request never waits behind it) and batched in the
        batcher's low-priority lane. Not counted against `max_concurrent_requests`: the job runner
        bounds its own images. Returns the raw float32 (D,) vector. Raises InputError (without an
        index), BackendFailed, PreprocessWorkerDied or Unhealthy."""
        if self.draining or not self.ready:
            raise Unhealthy("the server is shutting down")
        data, encoding = await self._fetched(image)
        slot = await self.pool.acquire_slot()
        await self.pool.prepare(data, encoding, slot, background=True)
        return (await self.batcher.submit(slot, background=True)).vector

    async def _fetched(self, image: ImagePayload) -> tuple[bytes | str, Encoding]:
        """The image itself: a URL input is fetched (before a slot is taken: a slow server must not hold one)."""
        if image.encoding != "base64" or not isinstance(image.data, str) or not looks_like_url(image.data):
            return image.data, image.encoding
        if self.fetcher is None:
            raise InputError("URL inputs are disabled on this server (it must be started with --allow-url-inputs)")
        return await self.fetcher.fetch(image.data), "raw"


def finish_vectors(vectors: np.ndarray, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Truncate to `dimensions`, then L2-normalise if asked: what every client gets (float32 (N, D'))."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors


def _no_slot(token_ids: np.ndarray) -> None:
    """Texts hold no slab slot: nothing to release."""


async def all_or_nothing(coroutines: list) -> list:
    """Run all; on the first failure cancel the rest (their queued images are dropped) and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
