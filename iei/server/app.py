"""The Litestar app factory: routes, the exception handlers (`iei.server.errors`) and the engine's life cycle."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from iei import __version__
from iei.config import Settings
from iei.engine import EmbeddingEngine
from iei.server.batches import BatchJobs, build_batch_handlers, running_batch_jobs
from iei.server.compat.handlers import build_compat_handlers
from iei.server.errors import build_exception_handlers
from iei.server.routes import AppState, build_route_handlers


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
        exception_handlers=build_exception_handlers(state.request_id, settings.payload_limit),  # type: ignore[arg-type]
        request_max_body_size=settings.payload_limit,
        openapi_config=OpenAPIConfig(title="IEI: Image Embedding Inference", version=__version__, path="/docs"),
        logging_config=None,  # logging is configured once, by iei.logs
        debug=False,
    )

