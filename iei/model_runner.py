"""Where batches run: `ModelProcess` (the backend in its own process, the default) or `ThreadRunner`
(a backend object on one thread of this process, for embedding IEI as a library and for tests).

Both present one small interface to the batchers: `run(slots)` (images, by slab slot) and
`run_texts(input_ids, attention_mask)` (padded token ids, which travel in the frame) return an asyncio
future of a `BatchResult`. Owner: the event loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Callable, NamedTuple, Protocol

import msgspec
import numpy as np

from backends import Backend, BackendError, ModelInfo
from iei.config import Settings
from iei.errors import BATCH_FAILED, BackendFailed
from iei.ipc import connect, send_frame
from iei.messages import (
    AttachSlab, BatchDone, ModelLoadFailed, ModelReady, ModelToServer, RunImages, RunTexts,
)
from iei.model_host import host_main
from iei.preprocess.spec import PreprocessSpec
from iei.preprocess.text import TextSpec
from iei.slab import Slab

log = logging.getLogger("iei.model")

_LOAD_TIMEOUT_S = 1800.0  # a first download of a large model can be slow
_decode_from_model = msgspec.msgpack.Decoder(ModelToServer).decode


class BatchResult(NamedTuple):
    vectors: np.ndarray  # float32 (B, D), row i for slot i of the batch
    started_at: float  # time.monotonic() when the model started this batch
    inference_s: float


class ModelRunner(Protocol):
    info: ModelInfo

    @property
    def alive(self) -> bool: ...

    async def start(self, slab: Slab) -> None: ...

    def run(self, slots: list[int]) -> asyncio.Future: ...

    def run_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> asyncio.Future: ...

    async def close(self) -> None: ...


class ThreadRunner:
    """Run `backend` on one dedicated thread of this process."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.info = backend.info
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iei-model")
        self._slab: Slab | None = None

    @property
    def alive(self) -> bool:
        return True

    async def start(self, slab: Slab) -> None:
        self._slab = slab

    def run(self, slots: list[int]) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self._thread, self._run, slots)

    def run_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(
            self._thread, self._timed, self.backend.embed_texts, input_ids, attention_mask)

    def _run(self, slots: list[int]) -> BatchResult:
        return self._timed(self.backend.embed_images, *self._slab.gather(slots))  # type: ignore[union-attr]

    def _timed(self, embed, *arrays: np.ndarray) -> BatchResult:
        started = time.monotonic()
        try:
            vectors = embed(*arrays)
        except BackendError as e:  # the runtime's text goes to the log only
            log.error("a batch of %d failed: %s", len(arrays[0]), e)
            raise BackendFailed(BATCH_FAILED) from None
        return BatchResult(vectors, started, time.monotonic() - started)

    async def close(self) -> None:
        self._thread.shutdown(wait=True)
        await asyncio.to_thread(self.backend.close)


class ModelProcess:
    """The backend in a child process (see `iei.model_host`). If the process dies, its in-flight
    batches fail with BackendFailed and a new process is started; `alive` is False meanwhile.
    A watchdog kills the process when one batch takes longer than `settings.batch_timeout_ms` (0: never):
    a hung model is then handled like a crashed one."""

    def __init__(self, settings: Settings, while_loading: Callable[[], None] | None = None) -> None:
        """Start the model process and wait until it is ready; `while_loading` runs meanwhile (start-up work
        that needs no model)."""
        self._settings = settings
        self._batch_timeout_s = settings.batch_timeout_ms / 1000
        self._watchdog: asyncio.Task | None = None
        self._head_since = 0.0  # when the model started the oldest batch in flight (time.monotonic())
        self._hung = False
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._transport: asyncio.Transport | None = None
        self._inflight: dict[int, asyncio.Future] = {}
        self._batch_ids = itertools.count()
        self._slab: Slab | None = None
        self._closing = False
        self._restart: asyncio.Task | None = None
        self.info, self.spec, self.text_spec = self._launch(while_loading)

    def _launch(self, while_loading: Callable[[], None] | None = None
                ) -> tuple[ModelInfo, PreprocessSpec, TextSpec | None]:
        """Blocking: start the process, run `while_loading`, and wait until the model is loaded and warm. Returns
        what the process read: the model's info, its preprocessing and its tokenizer spec. Raises BackendError."""
        ctx = multiprocessing.get_context("spawn")
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self._process = ctx.Process(target=host_main, args=(child_conn, self._settings), name="iei-model", daemon=True)
        self._process.start()
        child_conn.close()
        if while_loading is not None:
            while_loading()
        if not parent_conn.poll(_LOAD_TIMEOUT_S):
            self._process.kill()
            raise BackendError(f"the model did not load within {_LOAD_TIMEOUT_S:.0f} s")
        try:
            message = msgspec.msgpack.decode(parent_conn.recv_bytes(), type=ModelReady | ModelLoadFailed)
        except EOFError:
            self._process.join(5)
            raise BackendError(f"the model process exited while loading (exit code {self._process.exitcode})") from None
        if isinstance(message, ModelLoadFailed):
            self._process.join(5)
            raise BackendError(message.message)
        self._conn = parent_conn
        log.info("model process ready (pid %d)", self._process.pid)
        return message.info, message.spec, message.text_spec

    @property
    def alive(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, slab: Slab) -> None:
        self._slab = slab
        assert self._conn is not None, "launch() failed or start() called twice"
        conn, self._conn = self._conn, None
        self._transport = await connect(conn, self._on_frame, self._on_lost)
        send_frame(self._transport, msgspec.msgpack.encode(AttachSlab(slab.name, slab.layout)))
        if self._watchdog is None and self._batch_timeout_s > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_for_a_hung_model())

    def run(self, slots: list[int]) -> asyncio.Future:
        return self._send(lambda batch_id: RunImages(batch_id, slots))

    def run_texts(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> asyncio.Future:
        """int32 ids and uint8 mask, both (B, L)."""
        rows, length = input_ids.shape
        return self._send(lambda batch_id: RunTexts(batch_id, input_ids.astype(np.int32).tobytes(),
                                                    attention_mask.astype(np.uint8).tobytes(), rows, length))

    def _send(self, message) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if not self.alive:
            future.set_exception(BackendFailed("the model process is restarting; retry shortly"))
            return future
        batch_id = next(self._batch_ids)
        if not self._inflight:
            self._head_since = time.monotonic()
        self._inflight[batch_id] = future
        send_frame(self._transport, msgspec.msgpack.encode(message(batch_id)))  # type: ignore[arg-type]
        return future

    def _on_frame(self, frame: bytes) -> None:
        message = _decode_from_model(frame)
        future = self._inflight.pop(message.batch_id)
        self._head_since = time.monotonic()  # the model runs batches in order: the next one starts now
        if future.done():
            return
        if isinstance(message, BatchDone):
            vectors = np.frombuffer(message.vectors, dtype=np.float32).reshape(message.rows, message.dim)
            future.set_result(BatchResult(vectors, message.started_at, message.duration_s))
        else:
            future.set_exception(BackendFailed(message.message))

    def _on_lost(self) -> None:
        self._transport = None
        inflight, self._inflight = self._inflight, {}
        hung, self._hung = self._hung, False
        for position, future in enumerate(inflight.values()):
            if future.done():
                continue
            if hung and position == 0:
                future.set_exception(BackendFailed(
                    f"the model did not finish this batch within {self._batch_timeout_s * 1000:g} ms "
                    "(batch_timeout_ms); it is being restarted"))
            else:
                future.set_exception(BackendFailed("the model process died while running this batch"))
        if not self._closing:
            code = self._process.exitcode if self._process is not None else None
            log.error("the model process died (exit code %s); restarting it", code)
            self._restart = asyncio.get_running_loop().create_task(self._relaunch())

    async def _relaunch(self) -> None:
        while not self._closing:
            try:
                await asyncio.to_thread(self._reap)
                self.info, _, _ = await asyncio.to_thread(self._launch)
                await self.start(self._slab)  # type: ignore[arg-type]
                log.info("the model process is back")
                return
            except Exception:
                log.exception("restarting the model process failed; trying again in 5 s")
                await asyncio.sleep(5)

    async def _watch_for_a_hung_model(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self._batch_timeout_s / 4))
            overdue = time.monotonic() - self._head_since > self._batch_timeout_s
            if self.alive and self._inflight and overdue and not self._hung:
                log.error("the model has spent over %.1f s on one batch; killing and restarting it",
                          time.monotonic() - self._head_since)
                self._hung = True
                self._process.kill()  # type: ignore[union-attr]  # _on_lost fails the batches and restarts it

    def _reap(self) -> None:
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._restart is not None:
            self._restart.cancel()
        if self._transport is not None:
            self._transport.close()  # the child reads EOF and exits
        if self._conn is not None:
            self._conn.close()
        await asyncio.to_thread(self._reap)
