"""EmbeddingEngine: the embedding service as a library object (no HTTP).

Flow per image: admission (`iei.admission`) -> slot -> PreprocessPool (worker process) -> DynamicBatcher -> model
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

from iei.admission import Admission
from iei.background_lane import BackgroundLane, background_slots
from iei.batcher import DynamicBatcher, Embedded
from iei.config import Settings
from iei.errors import EmptyInput, IEIError, InputError, Unhealthy, ValidationFailed
from iei.health import Health
from iei.metrics import Metrics
from iei.models import has_text_tower
from iei.model_runner import ModelProcess, ModelRunner
from iei.preprocess.pool import PreprocessPool, start_worker_server
from iei.preprocess.spec import PreprocessSpec
from iei.preprocess.text import TextSpec, pad_tokens
from iei.url_inputs import UrlFetcher, resolve_payload

log = logging.getLogger("iei.engine")

Encoding = Literal["base64", "raw"]

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


def with_input_limits(spec: PreprocessSpec, settings: Settings) -> PreprocessSpec:
    """The model's preprocessing with the server's input limits (the workers enforce them)."""
    return msgspec.structs.replace(spec, max_image_pixels=settings.max_image_pixels,
                                   formats=settings.image_format_names,
                                   decode_timeout_s=settings.decode_timeout_ms / 1000,
                                   jpeg_decoder=settings.jpeg_decoder)


class EmbeddingEngine:
    """The pieces (pool, batchers, model runner) and the seams between them: admission (`iei.admission`),
    health (`iei.health`), URL inputs (`iei.url_inputs`) and the background lane (`iei.background_lane`)
    live in modules of their own; this class wires them and runs the per-image flow."""

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
        self.admission = Admission(settings.max_concurrent_requests, self.batcher.set_online_busy)
        self.background = BackgroundLane(self.pool, self.batcher, self._fetched, self._refusal)
        self.ready = False
        self.draining = False  # shutting down: admit nothing new, finish what is admitted
        self.health = Health(probe=self._run_probe, probe_when=_LAST_BATCH_FAILED)
        for check in (self._lifecycle_problem, self._pipeline_problem):
            self.health.add_check(check)
        self.metrics.watch(queue_size=lambda: self.batcher.queue_size, inflight=lambda: self.admission.inflight)

    @property
    def inflight_images(self) -> int:
        """Images admitted and not yet answered."""
        return self.admission.inflight

    @property
    def online_idle(self) -> asyncio.Event:
        """Set while no request is in flight: background jobs run then."""
        return self.admission.idle

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
        """`health_problem`, after one probe batch if the last batch failed (see `iei.health`)."""
        return await self.health.problem_after_probe()

    def health_problem(self) -> str | None:
        """None when healthy, else what is wrong (safe to show a client)."""
        return self.health.problem()

    async def _run_probe(self) -> None:
        slot = await self.pool.acquire_slot()
        self.pool.slab.clear(slot)
        try:
            await self.batcher.submit(slot)
            if self.text_batcher is not None and not self.text_batcher.backend_ok:
                await self.text_batcher.submit(np.zeros(2, dtype=np.int32))
        except IEIError:
            pass  # still failing: health stays 503

    def _lifecycle_problem(self) -> str | None:
        if self.draining:
            return "the server is shutting down"
        if not self.ready:
            return "the model is not loaded yet"
        return None

    def _pipeline_problem(self) -> str | None:
        if not all(b.alive for b in self._batchers):
            return "the batcher stopped"
        if not self.model.alive:
            return "the model process is restarting"
        if not all(b.backend_ok for b in self._batchers):
            return _LAST_BATCH_FAILED
        if not self.pool.worker_pids:
            return "no preprocessing worker is running"
        return None

    def _refusal(self) -> IEIError | None:
        """Why nothing may be admitted now (shutting down, not loaded), or None."""
        if self.draining:
            return Unhealthy("the server is shutting down; retry")
        if not self.ready:
            return Unhealthy("the model is not ready")
        return None

    # -- embedding ----------------------------------------------------------------------------

    def check_request(self, count: int, dimensions: int | None, field: str = "inputs") -> None:
        """Cheap validation before any work (raises EmptyInput / ValidationFailed)."""
        check_request(self.settings, self.model.info.embedding_dim, count, dimensions, field)

    async def render_metrics(self) -> bytes:
        """The Prometheus text of the one registry."""
        return self.metrics.render()

    async def embed(self, images: Sequence[ImagePayload], *, normalize: bool = True,
                    dimensions: int | None = None, field: str = "inputs",
                    positions: Sequence[int] | None = None, source: int = 0) -> EmbedResult:
        """Embed images in input order. Raises the errors of `iei.errors`; an error about one image
        names it `{field}[{positions[i]}]` (positions default to 0, 1, ...: a request that mixes
        images and texts in one list passes where each image sits in it). `source`: the HTTP front end
        the request came from (counted in the batch metrics)."""
        return await self._embed_all(images, self._embed_one, normalize, dimensions, field,
                                     self.metrics.images_embedded, positions, source)

    async def embed_texts(self, texts: Sequence[str], *, normalize: bool = True,
                          dimensions: int | None = None, field: str = "inputs",
                          positions: Sequence[int] | None = None, source: int = 0) -> EmbedResult:
        """Embed texts in input order, into the image embeddings' space (CLIP, SigLIP). Raises
        ValidationFailed for an image-only model, and the errors of `iei.errors` (naming inputs as `embed` does)."""
        if self.text_batcher is None:
            raise ValidationFailed(
                f"model {self.settings.model!r} embeds images only (pooling {self.model.info.pooling!r}): text needs a "
                "CLIP or SigLIP model with its default pooling")
        return await self._embed_all(texts, self._embed_text, normalize, dimensions, field,
                                     self.metrics.texts_embedded, positions, source)

    async def _embed_all(self, items: Sequence, embed_one, normalize: bool, dimensions: int | None,
                         field: str, counter, positions: Sequence[int] | None, source: int = 0) -> EmbedResult:
        self.check_request(len(items), dimensions, field)
        self.admission.admit(len(items), self._refusal())
        places = range(len(items)) if positions is None else positions
        try:
            start = time.perf_counter()
            if len(items) == 1:
                results = [await embed_one(items[0], places[0], field, start, source)]
            else:
                results = await all_or_nothing([embed_one(item, place, field, start, source)
                                                 for item, place in zip(items, places)])
        finally:
            self.admission.release(len(items))
        vectors = finish_vectors(np.stack([r[0].vector for r in results]), normalize, dimensions)
        timings = Timings(
            max(r[1] for r in results),
            max(r[0].queue_s for r in results),
            max(r[0].inference_s for r in results),
        )
        counter.inc(len(items))
        return EmbedResult(vectors, timings)

    async def _embed_one(self, image: ImagePayload, index: int, field: str, start: float,
                         source: int) -> tuple[Embedded, float]:
        try:
            data, encoding = await self._fetched(image)
            slot = await self.pool.acquire_slot()
            await self.pool.prepare(data, encoding, slot)
        except InputError as e:
            raise e.at(index, field) from None
        preprocess_s = time.perf_counter() - start
        future = self.batcher.submit(slot, source=source)
        return await future, preprocess_s

    async def _embed_text(self, text: str, index: int, field: str, start: float,
                          source: int) -> tuple[Embedded, float]:
        try:
            token_ids = await self.pool.tokenize(text)
        except InputError as e:
            raise e.at(index, field) from None
        preprocess_s = time.perf_counter() - start
        return await self.text_batcher.submit(token_ids, source=source), preprocess_s  # type: ignore[union-attr]


    async def embed_in_background(self, image: ImagePayload) -> np.ndarray:
        """One image of a background job, at low priority all the way (`iei.background_lane`)."""
        return await self.background.embed(image)

    async def _fetched(self, image: ImagePayload) -> tuple[bytes | str, Encoding]:
        """The image itself: a URL input is fetched (before a slot is taken: a slow server must not hold one)."""
        return await resolve_payload(image.data, image.encoding, self.fetcher)


def check_request(settings: Settings, embedding_dim: int, count: int, dimensions: int | None, field: str) -> None:
    """Cheap validation of a request's shape before any work (raises EmptyInput / ValidationFailed); the HTTP
    front ends run it too, before forwarding a request to the engine."""
    if count == 0:
        raise EmptyInput(f"`{field}` cannot be empty")
    limit = settings.max_client_batch_size
    if count > limit:
        raise ValidationFailed(f"`{field}` has {count} inputs; the limit is {limit} (max_client_batch_size)")
    if dimensions is not None and not 1 <= dimensions <= embedding_dim:
        raise ValidationFailed(f"`dimensions` must be between 1 and {embedding_dim}, got {dimensions}")


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
