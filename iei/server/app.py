"""The Litestar app factory: routes, error handlers and the engine's life cycle."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from iei import __version__
from iei.config import Settings
from iei.engine import EmbeddingEngine
from iei.server.batches import BatchJobs, build_batch_handlers, running_batch_jobs
from iei.server.compat.handlers import build_compat_handlers
from iei.server.errors import ERROR_TYPE_BY_STATUS, HTTPError
from iei.server.routes import AppState, build_route_handlers

log = logging.getLogger("iei.server")


def create_app(settings: Settings, engine: EmbeddingEngine | None = None) -> Litestar:
    """Build the app. With `engine` None, the lifespan loads the model (blocking a thread, not the loop)."""
    state = AppState(settings)
    jobs = BatchJobs()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        loaded = engine or await asyncio.to_thread(EmbeddingEngine.load, settings)
        await loaded.start()
        state.engine = loaded
        try:
            if settings.batch_jobs:
                async with running_batch_jobs(jobs, loaded, settings):
                    yield
            else:
                yield
        finally:
            state.engine = None
            await loaded.stop()

    batch_handlers = build_batch_handlers(state, jobs) if settings.batch_jobs else []
    return Litestar(
        route_handlers=build_route_handlers(state) + build_compat_handlers(state) + batch_handlers,
        lifespan=[lifespan],
        exception_handlers={HTTPException: _http_exception, Exception: _unexpected},
        request_max_body_size=settings.payload_limit,
        openapi_config=OpenAPIConfig(title="IEI: Image Embedding Inference", version=__version__, path="/docs"),
        logging_config=None,  # logging is configured once, by iei.logs
        debug=False,
    )


def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Routing errors (404, 405, ...) raised before a handler runs, in the contract's shape."""
    error = HTTPError(ERROR_TYPE_BY_STATUS.get(exc.status_code, "Validation"), str(exc.detail), dict(exc.headers or {}))
    error.status = exc.status_code
    return Response(content=error.tei_body(), status_code=exc.status_code, media_type="application/json",
                    headers=error.headers)


def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s", request.url.path, exc_info=exc)
    return Response(content=HTTPError("Internal", "internal error").tei_body(), status_code=500,
                    media_type="application/json")
