"""PreprocessPool: worker processes that decode images into a shared-memory slab of pixel tensors.

Owner: the event loop. Every method runs on the loop thread; nothing here blocks it. Image bytes
go to a worker over its socket pair; the worker writes the uint8 pixels into a slot of the slab
and replies with a few bytes. The loop only moves payloads and slot numbers.

Texts (dual encoders) take no slot: `tokenize(text)` returns the worker's token ids.

Background work (batch jobs) goes to its own workers (`background_workers`), which run at the lowest
CPU priority (nice 19): a request never waits behind a job's image in a worker, and the operating
system gives the cores to request work first.

Slot lifecycle: `acquire_slot()` -> `prepare(payload, slot)`; on success the caller owns the
filled slot (and hands it to the batcher, which releases it after inference); on any failure,
cancellation included, the pool releases the slot as soon as no worker can still write to it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import multiprocessing.forkserver
import time
from collections import deque

import msgspec
import numpy as np

from iei.errors import InputError, PreprocessWorkerDied
from iei.ipc import connect, send_frames
from iei.messages import WORKER_READY, Reply, Task
from iei.preprocess.spec import PreprocessSpec
from iei.preprocess.text import TextSpec
from iei.slab import Slab, SlabLayout
from iei.preprocess.worker import (
    ENCODINGS, NO_SLOT, STATUS_OK, decode_timeout_message, worker_main,
)

log = logging.getLogger("iei.preprocess")

# Workers are forked from a fork server that has already imported the worker's modules: a worker then
# starts in milliseconds instead of spending ~0.4 s importing in a fresh interpreter, and a replacement
# for a dead worker is up as fast. The server itself is one clean interpreter, so nothing of the HTTP
# process (threads, sockets, the event loop) is forked.
_WORKER_CONTEXT = multiprocessing.get_context("forkserver")
_START_TIMEOUT_S = 60.0
_BACKGROUND_NICENESS = 19


def start_worker_server(*, tokenizers: bool = False) -> None:
    """Start the fork server that preprocessing workers are forked from, if it is not running. Call it
    early (the engine does, while the model loads) so that its imports overlap other start-up work.
    `tokenizers`: also preload transformers' tokenizer classes (without torch), for a model with texts.
    The preload list is kept for a fork server started later, after this one died."""
    preload = ["iei.preprocess.worker", *(["iei.preprocess.tokenizer_stack"] if tokenizers else [])]
    _WORKER_CONTEXT.set_forkserver_preload(preload)  # only read when the server starts
    multiprocessing.forkserver.ensure_running()


class _Worker:
    """One worker process and the tasks it holds. Owned by the pool (event loop)."""

    def __init__(self, pool: "PreprocessPool", index: int, background: bool = False) -> None:
        self.pool = pool
        self.index = index
        self.background = background  # a batch-job worker, at the lowest CPU priority
        self.process: multiprocessing.process.BaseProcess | None = None
        self.transport: asyncio.Transport | None = None
        # Tasks sent and not answered, in send order: the worker runs them one by one, so the first
        # is the one it is working on (started at `head_since`, time.monotonic()).
        self.inflight: dict[int, tuple[asyncio.Future, Task]] = {}
        self.head_since = 0.0
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.alive = False
        self.stuck = False  # killed by the watchdog
        self.outbox: list[bytes] = []  # frames to send at the end of this loop iteration

    async def spawn(self) -> None:
        parent_conn, child_conn = _WORKER_CONTEXT.Pipe(duplex=True)
        self.process = _WORKER_CONTEXT.Process(
            target=worker_main,
            args=(child_conn, self.pool.slab.name, self.pool.layout_bytes, self.pool.spec_bytes, self.pool.text_spec_bytes,
                  _BACKGROUND_NICENESS if self.background else 0),
            name=f"iei-preprocess-{self.index}",
            daemon=True,
        )
        await asyncio.to_thread(self.process.start)
        child_conn.close()
        self.transport = await connect(parent_conn, self.on_frame, self.on_lost)
        await asyncio.wait_for(asyncio.shield(self.ready), _START_TIMEOUT_S)
        self.alive = True

    def send(self, task: Task, future: asyncio.Future) -> None:
        if not self.inflight:
            self.head_since = time.monotonic()
        self.inflight[task.task_id] = (future, task)
        if not self.outbox:  # coalesce this loop iteration's tasks into one write
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(self.pool.encode(task))

    def flush(self) -> None:
        frames, self.outbox = self.outbox, []
        if self.transport is not None and not self.transport.is_closing():
            send_frames(self.transport, frames)

    def on_frame(self, frame: bytes) -> None:
        if not self.ready.done():
            self.ready.set_result(frame == WORKER_READY)
            return
        reply = self.pool.decode_reply(frame)
        future, task = self.inflight.pop(reply.task_id)
        self.head_since = time.monotonic()
        if reply.status == STATUS_OK and not future.done():
            future.set_result(reply.tokens)
            return
        self.pool.release_slot(task.slot)  # failed or abandoned: the worker is done with the slot
        if future.done():
            return
        future.set_exception(InputError(reply.message))  # the worker words internal failures generically

    def on_lost(self) -> None:
        """The process is gone (crash, OOM kill, or the watchdog). Only the image it was working on
        fails; the images queued behind it never started and go to another worker."""
        was_serving, self.alive = self.alive or self.stuck, False
        if not self.ready.done():
            self.ready.set_exception(PreprocessWorkerDied("preprocessing worker failed to start"))
        inflight, self.inflight = self.inflight, {}
        for position, (future, task) in enumerate(inflight.values()):
            if future.done():  # abandoned by its caller: nobody writes to the slot any more
                self.pool.release_slot(task.slot)
            elif position > 0:
                self.pool.dispatch(task, future, background=self.background)
            else:
                self.pool.release_slot(task.slot)
                future.set_exception(InputError(decode_timeout_message(self.pool.spec)) if self.stuck else
                                     PreprocessWorkerDied("the preprocessing worker handling this image died; retry"))
        if was_serving:  # a worker that never started is the start-up's failure, not one to replace
            self.pool.on_worker_lost(self)

    def kill_stuck(self) -> None:
        log.error("preprocessing worker %d (pid %s) spent over %.1f s on one image; killing it", self.index,
                  self.process.pid if self.process else "?", time.monotonic() - self.head_since)
        self.alive, self.stuck = False, True  # no new tasks; on_lost fails the image and replaces us
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.transport is not None:
            self.transport.close()  # the worker reads EOF and exits


class PreprocessPool:
    """Decode and resize images in `workers` processes into `slots` shared-memory tensors."""

    def __init__(self, spec: PreprocessSpec, *, workers: int, slots: int, text_spec: TextSpec | None = None,
                 background_workers: int = 0) -> None:
        self.spec = spec
        self.spec_bytes = msgspec.msgpack.encode(spec)
        self.text_spec_bytes = msgspec.msgpack.encode(text_spec) if text_spec is not None else None
        self.encode = msgspec.msgpack.Encoder().encode
        self.decode_reply = msgspec.msgpack.Decoder(Reply).decode
        #: The slab: slot i holds one preprocessed image (see `iei.slab`). Read by the model process.
        self.slab = Slab.create(SlabLayout(slots=slots, item_shape=spec.item_shape, grids=spec.variable_grid))
        self.layout_bytes = msgspec.msgpack.encode(self.slab.layout)
        self._free_slots: list[int] = list(range(slots))
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._workers: list[_Worker] = []
        self._worker_count = workers
        self._background_count = background_workers
        self._task_ids = itertools.count()
        self._closing = False
        self._respawns: set[asyncio.Task] = set()
        self._watchdog: asyncio.Task | None = None

    async def start(self) -> None:
        await asyncio.to_thread(start_worker_server, tokenizers=self.text_spec_bytes is not None)
        self._workers = [_Worker(self, i, background=i >= self._worker_count)
                         for i in range(self._worker_count + self._background_count)]
        try:
            await asyncio.gather(*(w.spawn() for w in self._workers))
        except BaseException:
            await self.close()
            raise
        if self.spec.decode_timeout_s > 0:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_for_stuck_workers())
        online = " ".join(str(w.process.pid) for w in self._workers if not w.background)  # type: ignore[union-attr]
        background = " ".join(str(w.process.pid) for w in self._workers if w.background)  # type: ignore[union-attr]
        extra = f" and {self._background_count} background (nice {_BACKGROUND_NICENESS}; pids {background})" \
            if background else ""
        log.info("preprocessing pool ready: %d workers (pids %s)%s, %d slots of %s", self._worker_count, online, extra,
                 self.slab.layout.slots, "x".join(map(str, self.slab.layout.item_shape)))

    @property
    def pixels(self) -> np.ndarray:
        """The slab's pixels, uint8 (slots, *item_shape)."""
        return self.slab.pixels

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.alive and w.process is not None]

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    async def acquire_slot(self) -> int:
        if self._free_slots:
            return self._free_slots.pop()
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release_slot(waiter.result())  # handed a slot just as we were cancelled
            raise

    def release_slot(self, slot: int) -> None:
        if slot == NO_SLOT:  # a text task
            return
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free_slots.append(slot)

    async def prepare(self, payload: bytes | str, encoding: str, slot: int, *, background: bool = False) -> None:
        """Fill `slot` with the preprocessed image (`background`: on a background worker if one is
        alive). Raises InputError or PreprocessWorkerDied (after which the slot is no longer the caller's)."""
        future = asyncio.get_running_loop().create_future()
        self.dispatch(Task(next(self._task_ids), slot, ENCODINGS.index(encoding), payload), future, background=background)
        await future

    def dispatch(self, task: Task, future: asyncio.Future, *, background: bool = False) -> None:
        """Send `task` to the least busy live worker of its kind, or fail `future` and free the slot if none is."""
        worker = (background and self._pick_worker(background=True)) or self._pick_worker()
        if worker is None:
            self.release_slot(task.slot)
            future.set_exception(PreprocessWorkerDied("no preprocessing worker is available; retry"))
            return
        worker.send(task, future)

    async def tokenize(self, text: str) -> np.ndarray:
        """The text's int32 (L,) token ids (the pool must have a text spec). Raises InputError or
        PreprocessWorkerDied."""
        future = asyncio.get_running_loop().create_future()
        self.dispatch(Task(next(self._task_ids), NO_SLOT, ENCODINGS.index("text"), text), future)
        return np.frombuffer(await future, dtype=np.int32)

    def _pick_worker(self, *, background: bool = False) -> _Worker | None:
        best = None
        for worker in self._workers:
            if worker.alive and worker.background == background and (best is None or len(worker.inflight) < len(best.inflight)):
                best = worker
        return best

    def on_worker_lost(self, worker: _Worker) -> None:
        if self._closing:
            return
        log.error("preprocessing worker %d (pid %s) died; starting a new one", worker.index,
                  worker.process.pid if worker.process else "?")
        task = asyncio.get_running_loop().create_task(self._respawn(worker.index))
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    async def _respawn(self, index: int) -> None:
        await asyncio.sleep(0.1)  # do not spin if workers die at start
        replacement = _Worker(self, index, background=index >= self._worker_count)
        self._workers[index] = replacement
        try:
            await replacement.spawn()
            log.info("preprocessing worker %d is back (pid %s)", index, replacement.process.pid)  # type: ignore[union-attr]
        except Exception:
            log.exception("could not restart preprocessing worker %d", index)

    async def _watch_for_stuck_workers(self) -> None:
        """Kill a worker stuck on one image well past the decode time limit (the worker's own timer
        cannot interrupt a decoder inside one long C call). Runs until the pool closes."""
        limit_s = 2 * self.spec.decode_timeout_s + 1.0
        while True:
            await asyncio.sleep(min(1.0, limit_s / 4))
            now = time.monotonic()
            for worker in self._workers:
                if worker.alive and worker.inflight and now - worker.head_since > limit_s:
                    worker.kill_stuck()

    async def close(self) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for task in self._respawns:
            task.cancel()
        for worker in self._workers:
            worker.stop()
        await asyncio.to_thread(self._join_workers)
        self.slab.close()

    def _join_workers(self) -> None:
        for worker in self._workers:
            if worker.process is None:
                continue
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
