"""Several HTTP front ends feeding one engine (`iei serve --http-workers N`, N > 1).

```
 clients ──> :port ──┬─> front end 0 (process: uvicorn + Litestar, EngineLink) ──┐ engine link (Unix socket,
                     ├─> front end 1 ...                                          ├─ iei.messages: EmbedCall,
                     └─> front end N-1 (each its own SO_REUSEPORT socket)        ─┘ EmbedDone, Observed, ...)
                                                                                   ▼
             engine process (this one): LinkServer ──> EmbeddingEngine: admission, pool, batcher, model process
                                        private HTTP server on a Unix socket: /batches (the job runner), /health
```

- The engine process is the process `iei serve` started. It loads the model and runs the one engine (one
  admission count, one preprocessing pool, one batcher per modality beside the model process, one metrics
  registry, the one job runner), serves the front ends over `LinkServer`, and serves its own app on a
  private Unix socket, to which the front ends forward `/batches` (so a job runs once, whoever received
  it). It never binds the public port.
- Each front end (`frontend_main`, a spawned process) binds the public port with its own socket
  (`SO_REUSEPORT`: the kernel spreads new connections over the sockets) and runs the usual routes with an
  `EngineLink` in place of the engine. It rebalances: after 50 requests on one
  keep-alive connection it answers with `connection: close`, so long-lived clients reconnect and are
  hashed afresh (plain SO_REUSEPORT spreads connections, not requests: with few long connections one front
  end can hold many more than another).
- `FrontendSupervisor` (engine process) starts the front ends, replaces one that dies (its requests fail;
  the engine and the other front ends go on; the engine drops its abandoned images), and adds one health
  check per front end: `/health` is 200 only while every front end is connected. On SIGTERM it stops the
  front ends first (each drains its requests in flight, the engine still running), then the engine stops.

Owner: the engine process's event loop (LinkServer, FrontendSupervisor); each front end's own loop.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Callable

import msgspec

from iei.config import Settings
from iei.engine import EmbeddingEngine, ImagePayload
from iei.errors import IEIError
from iei.ipc import FrameProtocol, FrameWriter
from iei.messages import (
    CancelCall, EmbedCall, EmbedDone, EmbedFailed, FrontendToEngine, Hello, HealthQuery, HealthReply, MetricsQuery,
    MetricsReply, Observed, Welcome,
)

log = logging.getLogger("iei.frontends")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(FrontendToEngine).decode
_START_TIMEOUT_S = 120.0
_CONTEXT = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the engine's process inherited


# -- engine side: the link server ---------------------------------------------------------------------------

class _FrontendConnection:
    """One front end's link, in the engine process. Owns the tasks of its calls."""

    def __init__(self, links: LinkServer) -> None:
        self._links = links
        self._engine = links.engine
        self.frontend = -1  # set by Hello
        self.writer: FrameWriter | None = None
        self._tasks: dict[int, asyncio.Task] = {}

    def protocol(self) -> FrameProtocol:
        return _LinkProtocol(self)

    def on_frame(self, frame: bytes) -> None:
        message = _decode(frame)
        if isinstance(message, EmbedCall):
            self._start(message.call_id, self._embed(message))
        elif isinstance(message, CancelCall):
            task = self._tasks.pop(message.call_id, None)
            if task is not None:
                task.cancel()  # its queued images are dropped before inference
        elif isinstance(message, Observed):
            self._engine.metrics.observe_request(message.route, message.outcome, message.total_s, message.stages,
                                                 frontend=self.frontend)
        elif isinstance(message, HealthQuery):
            self._start(message.call_id, self._health(message.call_id))
        elif isinstance(message, MetricsQuery):
            self._send(MetricsReply(message.call_id, self._engine.metrics.render()))
        elif isinstance(message, Hello):
            self.frontend = message.frontend
            engine = self._engine
            self._send(Welcome(engine.model.info, engine.spec, engine.text_spec))
            self._links.on_hello(self, message)

    def _start(self, call_id: int, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[call_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(call_id, None))

    async def _embed(self, call: EmbedCall) -> None:
        engine = self._engine
        try:
            if call.texts:
                result = await engine.embed_texts(call.payloads, normalize=call.normalize, dimensions=call.dimensions,
                                                  field=call.field, positions=call.positions, source=self.frontend)
            else:
                images = [ImagePayload(p, e) for p, e in zip(call.payloads, call.encodings)]  # type: ignore[arg-type]
                result = await engine.embed(images, normalize=call.normalize, dimensions=call.dimensions,
                                            field=call.field, positions=call.positions, source=self.frontend)
        except IEIError as e:
            self._send(EmbedFailed(call.call_id, type(e).__name__, e.message, getattr(e, "retry_after_s", 1)))
            return
        except Exception:  # the front end answers a generic 500; the detail stays in this log
            log.exception("embedding a call of front end %d failed unexpectedly", self.frontend)
            self._send(EmbedFailed(call.call_id, "IEIError", "internal error (see the server's log)"))
            return
        vectors = result.vectors.astype("float32", copy=False)
        self._send(EmbedDone(call.call_id, vectors.tobytes(), vectors.shape[0], vectors.shape[1], *result.timings))

    async def _health(self, call_id: int) -> None:
        self._send(HealthReply(call_id, await self._engine.health_problem_after_probe()))

    def _send(self, message: msgspec.Struct) -> None:
        if self.writer is not None:
            self.writer.send(_encode(message))

    def on_lost(self) -> None:
        self.writer = None
        for task in list(self._tasks.values()):
            task.cancel()  # the front end is gone: nobody will read these answers
        self._links.on_lost(self)


class _LinkProtocol(FrameProtocol):
    def __init__(self, connection: _FrontendConnection) -> None:
        super().__init__(connection.on_frame, connection.on_lost)
        self._connection = connection

    def connection_made(self, transport) -> None:
        self._connection.writer = FrameWriter(transport)


class LinkServer:
    """The engine's side of every front end's link: a Unix socket server in the engine process."""

    def __init__(self, engine: EmbeddingEngine, path: str) -> None:
        self.engine = engine
        self.path = path
        self.connected: dict[int, _FrontendConnection] = {}  # front end index -> its live link
        self.changed = asyncio.Event()  # set whenever a front end connects or goes
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _FrontendConnection(self).protocol(), self.path)

    def on_hello(self, connection: _FrontendConnection, hello: Hello) -> None:
        log.info("front end %d connected (pid %d)", hello.frontend, hello.pid)
        self.connected[hello.frontend] = connection
        self.changed.set()

    def on_lost(self, connection: _FrontendConnection) -> None:
        if self.connected.get(connection.frontend) is connection:
            del self.connected[connection.frontend]
            self.changed.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


# -- engine side: the supervisor ----------------------------------------------------------------------------

class FrontendSupervisor:
    """Starts `count` front-end processes and keeps them running. Owner: the engine process's event loop."""

    def __init__(self, settings: Settings, links: LinkServer, engine_http: str,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        """`stopping()`: the server is shutting down (a signal to the whole process group reaches the front
        ends too, and they exit on their own before `close`): a front end that exits then is not replaced."""
        self._stopping = stopping
        self._settings = settings
        self._links = links
        self._engine_http = engine_http
        self._count = settings.frontends
        self._processes: dict[int, multiprocessing.process.BaseProcess] = {}
        self._closing = False
        self._replacing: set[asyncio.Task] = set()

    @property
    def pids(self) -> dict[int, int | None]:
        return {index: process.pid for index, process in self._processes.items()}

    def health_problem(self) -> str | None:
        """The health check the engine runs for the front ends."""
        missing = [i for i in range(self._count) if i not in self._links.connected]
        return f"HTTP front end {missing[0]} is restarting" if missing else None

    async def start(self) -> None:
        """Start every front end and wait until each has connected; raises RuntimeError if one exits first
        (the port is taken, say: it has logged why)."""
        for index in range(self._count):
            self._spawn(index)
        async with asyncio.timeout(_START_TIMEOUT_S):
            while len(self._links.connected) < self._count:
                self._links.changed.clear()
                dead = [i for i, p in self._processes.items() if p.exitcode is not None]
                if dead:
                    raise RuntimeError(f"HTTP front end {dead[0]} exited while starting (exit code "
                                       f"{self._processes[dead[0]].exitcode})")
                await self._links.changed.wait()
        log.info("%d HTTP front ends serving %s:%d (pids %s)", self._count, self._settings.host, self._settings.port,
                 " ".join(str(p) for p in self.pids.values()))

    def _spawn(self, index: int) -> None:
        process = _CONTEXT.Process(target=frontend_main, args=(index, self._settings, self._links.path,
                                                                self._engine_http),
                                   name=f"iei-http-{index}", daemon=True)
        process.start()
        self._processes[index] = process
        asyncio.get_running_loop().add_reader(process.sentinel, self._on_exit, index, process)

    def _on_exit(self, index: int, process: multiprocessing.process.BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        self._links.changed.set()
        if self._closing or self._stopping() or self._processes.get(index) is not process:
            return
        task = asyncio.get_running_loop().create_task(self._replace(index, process))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    async def _replace(self, index: int, process: multiprocessing.process.BaseProcess) -> None:
        await asyncio.to_thread(process.join, 5)  # reaped off the loop: the engine never waits on a front end
        if self._closing or self._stopping():
            return
        log.error("HTTP front end %d (pid %s) exited (exit code %s); starting a new one", index, process.pid,
                  process.exitcode)
        self._spawn(index)

    async def close(self) -> None:
        """SIGTERM every front end (each stops accepting and drains its requests in flight, which the engine,
        still running, finishes), then wait for them."""
        self._closing = True
        for process in self._processes.values():
            if process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        await asyncio.to_thread(self._join, self._settings.shutdown_timeout_s + 5)

    def _join(self, timeout_s: float) -> None:
        for process in self._processes.values():
            process.join(timeout_s)
            if process.exitcode is None:
                process.kill()
                process.join(5)


@asynccontextmanager
async def serving_frontends(settings: Settings, engine: EmbeddingEngine, engine_http: str) -> AsyncIterator[None]:
    """The engine process's part: the link server and the front ends, for the app's lifespan."""
    links = LinkServer(engine, str(Path(engine_http).with_name("engine-link.sock")))
    await links.start()
    supervisor = FrontendSupervisor(settings, links, engine_http, stopping=lambda: engine.draining)
    engine.health.add_check(supervisor.health_problem)
    try:
        await supervisor.start()
        yield
    finally:
        await supervisor.close()
        await links.close()


def serve_with_frontends(settings: Settings, engine: EmbeddingEngine) -> int:
    """Blocking (the `iei serve` process): run the engine, its private HTTP server and the front ends until a
    signal, then drain. Returns the process's exit code."""
    from iei.server import create_app
    from iei.server.runner import run_server

    with tempfile.TemporaryDirectory(prefix="iei-") as folder:
        engine_http = os.path.join(folder, "engine-http.sock")
        app = create_app(settings, engine, frontends=lambda: serving_frontends(settings, engine, engine_http))
        return 0 if run_server(app, engine, settings, uds=engine_http) else 3


# -- front-end side ----------------------------------------------------------------------------------------

def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket of this process's own, sharing `port` with the other front ends (SO_REUSEPORT:
    the kernel hashes each new connection to one of the sockets)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def frontend_main(index: int, settings: Settings, link_path: str, engine_http: str) -> None:
    """Entry point of front end `index` (spawned). Exits 0 after a drain, 3 if it could not start."""
    import sys

    import uvicorn

    from iei.engine_link import EngineLink
    from iei.logs import configure_logging
    from iei.server.app import create_frontend_app
    from iei.server.runner import DrainingServer

    configure_logging(settings.log_format, settings.log_level)
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as e:
        log.error("front end %d cannot listen on %s:%d: %s", index, settings.host, settings.port, e)
        sys.exit(3)
    server: DrainingServer | None = None

    def engine_gone() -> None:
        if server is not None and not server.should_exit:
            log.error("front end %d lost the engine; exiting", index)
            server.should_exit = True

    link = EngineLink(settings, index, on_lost=engine_gone)
    app = create_frontend_app(settings, link, link_path, engine_http)
    config = uvicorn.Config(app, log_config=None, access_log=False, loop="auto", http="auto", proxy_headers=False,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s)
    server = DrainingServer(config, link)
    server.run(sockets=[sock])
    sys.exit(0 if server.started else 3)
