"""The Litestar app factory: routes, the exception handlers (`iei.server.errors`) and the engine's life cycle."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import AsyncIterator, Callable

from litestar import Litestar
from litestar.openapi import OpenAPIConfig

from iei import __version__
from iei.config import Settings
from iei.engine import EmbeddingEngine
from iei.engine_link import EngineLink
from iei.server.batch_proxy import BatchProxy, build_batch_proxy_handlers
from iei.server.batches import BatchJobs, build_batch_handlers, running_batch_jobs
from iei.server.compat.handlers import build_compat_handlers
from iei.server.errors import build_exception_handlers
from iei.server.routes import AppState, build_route_handlers


def create_app(settings: Settings, engine: EmbeddingEngine | None = None,
               frontends: Callable[[], AbstractAsyncContextManager] | None = None) -> Litestar:
    """Build the app. With `engine` None, the lifespan loads the model (blocking a thread, not the loop).
    `frontends`: the HTTP front ends to run while the engine runs (`iei.server.frontends`); this app is then
    the engine process's private one."""
    state = AppState(settings)
    jobs = BatchJobs()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        loaded = engine or await asyncio.to_thread(EmbeddingEngine.load, settings)
        await loaded.start()
        state.engine = loaded
        try:
            async with AsyncExitStack() as stack:
                if settings.batch_jobs:
                    await stack.enter_async_context(running_batch_jobs(jobs, loaded, settings))
                if frontends is not None:  # last in, first out: they drain before the jobs and the engine stop
                    await stack.enter_async_context(frontends())
                yield
        finally:
            state.engine = None
            await loaded.stop()

    batch_handlers = build_batch_handlers(state, jobs) if settings.batch_jobs else []
    return _litestar(settings, state, build_route_handlers(state) + build_compat_handlers(state) + batch_handlers,
                     lifespan)


def create_frontend_app(settings: Settings, link: EngineLink, link_path: str, engine_http: str) -> Litestar:
    """The app of one HTTP front end (`--http-workers` above 1): the same routes, served through `link` to
    the engine's process; /batches forwarded to the engine's own server. Wrapped in `Rebalancer`."""
    state = AppState(settings)
    proxy = BatchProxy(engine_http) if settings.batch_jobs else None

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await link.connect(link_path)
        state.engine = link  # type: ignore[assignment]  # the same calls as an EmbeddingEngine
        try:
            yield
        finally:
            state.engine = None
            await link.stop()
            if proxy is not None:
                await proxy.close()

    handlers = build_route_handlers(state) + build_compat_handlers(state)
    if proxy is not None:
        handlers += build_batch_proxy_handlers(proxy)
    return Rebalancer(_litestar(settings, state, handlers, lifespan))  # type: ignore[return-value]


def _litestar(settings: Settings, state: AppState, handlers: list, lifespan) -> Litestar:
    return Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        exception_handlers=build_exception_handlers(state.request_id, settings.payload_limit),  # type: ignore[arg-type]
        request_max_body_size=settings.payload_limit,
        openapi_config=OpenAPIConfig(title="IEI: Image Embedding Inference", version=__version__, path="/docs"),
        logging_config=None,  # logging is configured once, by iei.logs
        debug=False,
    )


class Rebalancer:
    """ASGI wrapper of a front end's app: after `every` requests on one keep-alive connection, the response
    says `connection: close`, so the client reconnects and the kernel hashes the new connection to a front
    end afresh. SO_REUSEPORT balances connections, not requests: with a few long-lived connections the
    front ends' shares of the requests stay as uneven as the first hashing left them (64 connections hashed
    at random leave some front end over 25 % off its share 3 % of the time over 2 front ends, 32 % over 3).
    Reconnecting every 50 requests averages that out at the cost of one TCP handshake per
    `every` requests. Connections are told apart by the client's address and port (unique while open)."""

    def __init__(self, app, every: int = 50) -> None:
        self.app = app
        self._every = every
        self._served: dict = {}  # (client host, port) -> requests on that connection

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("client") is None:
            await self.app(scope, receive, send)
            return
        client = tuple(scope["client"])
        served = self._served.get(client, 0) + 1
        if served < self._every:
            if len(self._served) > 100_000:  # closed connections are never reported: forget them all at times
                self._served.clear()
            self._served[client] = served
            await self.app(scope, receive, send)
            return
        self._served.pop(client, None)

        async def closing(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)

