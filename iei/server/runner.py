"""Run the app under uvicorn with a graceful shutdown: on SIGTERM or SIGINT the engine stops
admitting (503, `/health` 503), uvicorn stops accepting connections and waits up to
`shutdown_timeout_s` for the requests in flight, then the engine closes and the process exits 0."""

from __future__ import annotations

import contextlib
from typing import Iterator

import uvicorn
from litestar import Litestar

from iei.config import Settings
from iei.engine import EmbeddingEngine


class DrainingServer(uvicorn.Server):
    """`engine`: anything with `begin_shutdown()` (the engine, or a front end's `EngineLink`)."""

    def __init__(self, config: uvicorn.Config, engine: EmbeddingEngine) -> None:
        super().__init__(config)
        self._engine = engine

    def handle_exit(self, sig, frame) -> None:  # a signal handler, on the loop's thread
        self._engine.begin_shutdown()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the signal after its shutdown, which would end the process with
            # 128+signal; the shutdown was orderly, so exit normally instead.
            self._captured_signals.clear()


def run_server(app: Litestar, engine: EmbeddingEngine, settings: Settings, *, uds: str | None = None) -> bool:
    """Blocking: serve until a signal, then drain. Returns False if the server never started
    (the port was taken, or the app's start-up failed; uvicorn has logged why). `uds`: listen on this Unix
    socket instead of host:port (the engine's private server when HTTP front ends face the clients)."""
    # Proxy headers are not parsed: no route needs the client address.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, uds=uds, log_config=None, access_log=False,
                            loop="auto", http="auto", proxy_headers=False,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    server = DrainingServer(config, engine)
    server.run()
    return server.started
