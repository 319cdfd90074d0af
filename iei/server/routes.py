"""Route handlers. Each handler is short: read inputs, call the engine, render; the shared
`_serve` does timing, errors, metrics and the access log once for every embedding route."""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import logging
import os
import time
from functools import partial
from typing import Any, Awaitable, Callable

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from iei import __version__
from iei.engine import EmbeddingEngine, EmbedResult
from iei.errors import DeadlineExceeded, Unauthorized, Unhealthy, ValidationFailed
from iei.server.errors import OPENAI_ERRORS, classify_error, error_response
from iei.server.openapi import (
    EMBED_RESPONSES, KEYED_INFO_RESPONSES, OPENAI_RESPONSES, UNHEALTHY_RESPONSES, EmbedOperation, OpenAIOperation,
)
from iei.server.inputs import INPUT_FORMATS, EmbedInputs, read_embed_inputs, read_openai_inputs
from iei.server.schemas import (
    HealthBody, ImageSize, Info, ModelType, OpenAIEmbedding, OpenAIEmbeddingResponse, OpenAIUsage, Pooling,
)

access_log = logging.getLogger("iei.access")
log = logging.getLogger("iei.server")

JSON = "application/json"
_HEALTH_OK = msgspec.json.encode(HealthBody())


class AppState:
    """What the handlers share. `engine` is set by the lifespan once the model is ready."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.engine: EmbeddingEngine | None = None
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.getpid():x}"

    def next_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def request_id(self, request: Request) -> str:
        """The client's `x-request-id`, else one made up for this request (the same on every call)."""
        scope = request.scope
        rid = scope.get("iei_request_id")  # type: ignore[typeddict-item]
        if rid is None:
            rid = request.headers.get("x-request-id") or self.next_request_id()
            scope["iei_request_id"] = rid  # type: ignore[typeddict-unknown-key]
        return rid

    def check_api_key(self, request: Request) -> None:
        expected = self.settings.api_key
        if expected is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthorized("missing or wrong API key: send `Authorization: Bearer <key>`")

    def require_engine(self) -> EmbeddingEngine:
        if self.engine is None:
            raise Unhealthy("the model is not loaded yet")
        return self.engine


class ClientGone(Exception):
    """The client disconnected while its images were queued or running."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[EmbedResult]) -> EmbedResult:
    """Await `work`; if the client disconnects meanwhile, cancel it (so its queued images are dropped
    before inference) and raise ClientGone. The work runs in this task: only the watcher is extra."""
    task = asyncio.current_task()
    state = {"done": False, "gone": False}

    def on_disconnect(watcher: asyncio.Task) -> None:
        if not watcher.cancelled() and not state["done"]:
            state["gone"] = True
            task.cancel()  # type: ignore[union-attr]

    watcher = asyncio.get_running_loop().create_task(_disconnected(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if state["gone"]:
            task.uncancel()  # type: ignore[union-attr]  # our own cancellation: answer normally
            raise ClientGone() from None
        raise
    finally:
        state["done"] = True
        watcher.cancel()


def _timing_headers(total_s: float, result: EmbedResult | None) -> dict[str, str]:
    total = f"{total_s * 1000:.3f}"
    if result is None:
        return {"x-total-time": total}
    pre, queue, infer = (f"{t * 1000:.3f}" for t in result.timings)
    return {
        "x-total-time": total, "x-preprocess-time": pre, "x-queue-time": queue, "x-inference-time": infer,
        "server-timing": f"preprocess;dur={pre}, queue;dur={queue}, inference;dur={infer}, total;dur={total}",
    }


def _deadline_s(request: Request, default_ms: float) -> float | None:
    """Seconds this request may take, from `x-request-timeout-ms` or the server default; None: no deadline."""
    text = request.headers.get("x-request-timeout-ms")
    if text is None:
        return default_ms / 1000 if default_ms > 0 else None
    try:
        timeout_ms = float(text)
    except ValueError:
        timeout_ms = -1.0
    if not 0 < timeout_ms < float("inf"):
        raise ValidationFailed(f"`x-request-timeout-ms` must be a positive number of milliseconds, got {text!r}")
    return timeout_ms / 1000


async def _before(deadline: float | None, work: Awaitable[EmbedResult]) -> EmbedResult:
    """Await `work` until the loop time `deadline`; past it, cancel the work (its queued images are
    dropped before inference) and raise DeadlineExceeded."""
    if deadline is None:
        return await work
    timeout = asyncio.timeout_at(deadline)
    try:
        async with timeout:
            return await work
    except TimeoutError:
        if not timeout.expired():
            raise
        raise DeadlineExceeded("the request's deadline passed before its images were embedded "
                               "(x-request-timeout-ms or request_timeout_ms)") from None


Reader = Callable[[Request], Awaitable[Any]]  # -> what the route's Embedder takes (EmbedInputs by default)
Renderer = Callable[[EmbedResult, Any], bytes]
Embedder = Callable[[EmbeddingEngine, Any, str], Awaitable[EmbedResult]]


async def _serve(state: AppState, request: Request, route: str, read: Reader, render: Renderer,
                 field: str = "inputs", embed: Embedder | None = None) -> Response:
    """Serve one embedding request: `read` the body, `embed` it (default: EmbedInputs, images or texts),
    `render` the result. Errors are recorded (metrics, access log) and answered by
    `iei.server.errors.error_response`, as the app's exception handlers answer every other route, in the
    body shape of the route's `opt`. Other route modules (`iei.server.compat`) call this too, so every
    embedding route shares one path."""
    start = time.perf_counter()
    request_id = state.request_id(request)
    result = None
    try:
        state.check_api_key(request)
        engine = state.require_engine()
        timeout_s = _deadline_s(request, state.settings.request_timeout_ms)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        inputs = await read(request)
        result = await _before(deadline, _unless_disconnected(request, (embed or _embed)(engine, inputs, field)))
        status, body, outcome = 200, render(result, inputs), "success"
    except ClientGone:
        status, body, outcome = 499, b"", "ClientGone"
    except Exception as e:  # every error leaves as JSON; text of unexpected ones stays in the log
        error = classify_error(e, request_id, state.settings.payload_limit)
        total_s = time.perf_counter() - start
        _record(state, route, request_id, error.error_type, error.status, total_s, None)
        return error_response(request, error, request_id, _timing_headers(total_s, None))
    total_s = time.perf_counter() - start
    headers = _timing_headers(total_s, result)
    headers["x-request-id"] = request_id
    _record(state, route, request_id, outcome, status, total_s, result)
    return Response(content=body, status_code=status, media_type=JSON, headers=headers)


serve_embedding = _serve  # the one embedding path, for the route modules beside this one (iei.server.compat)


def _embed(engine: EmbeddingEngine, inputs: EmbedInputs, field: str) -> Awaitable[EmbedResult]:
    """A request holds images or texts, never both."""
    field, positions = inputs.field or field, inputs.positions
    if inputs.texts is not None:
        return engine.embed_texts(inputs.texts, normalize=inputs.normalize, dimensions=inputs.dimensions, field=field,
                                  positions=positions)
    return engine.embed(inputs.images, normalize=inputs.normalize, dimensions=inputs.dimensions, field=field,
                        positions=positions)


def _record(state: AppState, route: str, request_id: str, outcome: str, status: int, total_s: float,
            result: EmbedResult | None) -> None:
    stages = tuple(result.timings) if result is not None else None
    if state.engine is not None:
        state.engine.metrics.observe_request(route, outcome, total_s, stages)
    if access_log.isEnabledFor(logging.INFO):
        images = len(result.vectors) if result is not None else 0
        fields = {"request_id": request_id, "route": route, "status": status, "outcome": outcome, "images": images,
                  "total_ms": round(total_s * 1000, 3)}
        if stages is not None:
            fields.update(zip(("preprocess_ms", "queue_ms", "inference_ms"), (round(s * 1000, 3) for s in stages)))
        access_log.info(" ".join(f"{k}={v}" for k, v in fields.items()), extra=fields)


# -- renderers ------------------------------------------------------------------------------

def _render_tei(result: EmbedResult, inputs: EmbedInputs) -> bytes:
    return msgspec.json.encode(result.vectors.tolist())


def _render_openai(model_name: str, result: EmbedResult, inputs: EmbedInputs) -> bytes:
    if inputs.encoding_format == "base64":
        data = [OpenAIEmbedding(base64.b64encode(v.astype("<f4").tobytes()).decode("ascii"), i)
                for i, v in enumerate(result.vectors)]
    else:
        data = [OpenAIEmbedding(v, i) for i, v in enumerate(result.vectors.tolist())]
    return msgspec.json.encode(OpenAIEmbeddingResponse(data, model_name, OpenAIUsage()))


# -- handlers -------------------------------------------------------------------------------

def build_route_handlers(state: AppState) -> list[HTTPRouteHandler]:
    settings = state.settings

    @post(["/embed", "/", "/invocations"], status_code=200, summary="Embed images",
          description="Body: JSON `{\"inputs\": [base64, ...], \"normalize\": true, \"dimensions\": null}` "
                      "(`\"modality\": \"text\"` with plain strings for CLIP/SigLIP text embeddings), "
                      "multipart/form-data file parts, or one raw image (image/*, application/octet-stream). "
                      "Returns `[[float, ...], ...]`, one vector per image in input order.",
          operation_class=EmbedOperation, responses=EMBED_RESPONSES)
    async def embed(request: Request) -> Response:
        return await _serve(state, request, "/embed", read_embed_inputs, _render_tei)

    @post("/v1/embeddings", status_code=200, summary="OpenAI-compatible embeddings",
          description="`{\"input\": base64 | [base64], \"encoding_format\": \"float\" | \"base64\", \"dimensions\": n}`",
          operation_class=OpenAIOperation, responses=OPENAI_RESPONSES, opt=OPENAI_ERRORS)
    async def openai_embeddings(request: Request) -> Response:
        return await _serve(state, request, "/v1/embeddings", read_openai_inputs,
                            partial(_render_openai, settings.model_name), field="input")

    @get("/health", summary="Readiness: 200 once the model answers, else 503", responses=UNHEALTHY_RESPONSES)
    async def health() -> Response:
        engine = state.engine
        problem = "the model is not loaded yet" if engine is None else await engine.health_problem_after_probe()
        if problem is not None:
            raise Unhealthy(problem)
        return Response(content=_HEALTH_OK, status_code=200, media_type=JSON)

    @get("/info", summary="Model and server settings (needs the API key when --api-key is set)",
         responses=KEYED_INFO_RESPONSES)
    async def info(request: Request) -> Info:
        state.check_api_key(request)
        engine = state.require_engine()
        model = engine.model.info
        return Info(
            model_id=settings.model, model_sha=model.model_sha, model_dtype=model.dtype,
            model_type=ModelType(Pooling(model.pooling)), served_model_name=settings.model_name,
            backend=model.backend, provider=model.provider, model_precision=model.precision,
            model_file=model.model_file, device=model.device, embedding_dim=model.embedding_dim,
            modalities=list(model.modalities),
            max_input_tokens=engine.text_spec.max_length if engine.text_spec is not None else None,
            image_size=ImageSize(engine.spec.output_height, engine.spec.output_width),
            max_concurrent_requests=settings.max_concurrent_requests, max_batch_size=settings.max_batch_size,
            max_batch_delay_ms=settings.max_batch_delay_ms, max_client_batch_size=settings.max_client_batch_size,
            max_image_pixels=settings.max_image_pixels, payload_limit=settings.payload_limit,
            preprocess_workers=settings.workers, draft_decode=settings.draft_decode,
            random_weights=model.random_weights, input_formats=INPUT_FORMATS, version=__version__,
            image_formats=list(settings.image_format_names), decode_timeout_ms=settings.decode_timeout_ms,
            request_timeout_ms=settings.request_timeout_ms, allow_url_inputs=settings.allow_url_inputs,
            max_num_patches=model.max_num_patches, patch_size=model.patch_size,
            model_dtype_reason=model.dtype_reason,
        )

    @get("/metrics", summary="Prometheus metrics", media_type="text/plain", responses=UNHEALTHY_RESPONSES)
    async def metrics() -> Response:
        engine = state.require_engine()
        return Response(content=await engine.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return [embed, openai_embeddings, health, info, metrics]
