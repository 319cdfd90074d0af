"""DynamicBatcher: groups queued images into batches and runs them on one model thread.

Ownership: the batcher task alone takes from `_queue` (callers only append through `submit`).
Batches go to a model runner (`iei.model_runner`): the model process, or one dedicated thread.
A batch closes when it is full, when the model is
idle (a lone request never waits for the delay), or `max_batch_delay` after its first image was
queued. While one batch runs, the next is formed and handed over, so the model never waits for the
batcher ("prefetch one batch"); when the running batch will still take longer than the delay (a slow
model), the next one keeps filling until shortly before it is expected to end (`_HANDOVER_LEAD_S`), as
its images could not start sooner anyway. Images whose caller went away are dropped before inference.

Two lanes: online images, and background-job images (`submit(..., background=True)`). A batch is
online images only, or job images only while no request is in flight (`set_online_busy`); a job batch
goes only to an idle model (never prefetched), so an online image waits behind at most one running
job batch, started before the request arrived.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable, NamedTuple, Protocol

import numpy as np

from iei.errors import BATCH_FAILED, BackendFailed, Unhealthy

log = logging.getLogger("iei.batcher")

_MAX_BATCHES_HANDED_OVER = 2  # the running batch plus the one prefetched behind it
# A prefetched batch is handed over this long (or this share of the running batch's expected time,
# whichever is more) before the running batch should end: room for the pipe and a late estimate.
_HANDOVER_LEAD_S, _HANDOVER_LEAD_SHARE = 0.002, 0.1
_DURATION_EWMA_WEIGHT = 0.3  # of the newest batch in the seconds-per-image estimate


class Embedded(NamedTuple):
    """One image's result: its vector (float32 (D,), a row of the batch output) and stage times."""

    vector: np.ndarray
    queue_s: float
    inference_s: float


class BatchObserver(Protocol):
    def on_batch(self, size: int, inference_s: float, ok: bool) -> None: ...

    def on_batch_sources(self, sources: int) -> None:
        """How many sources (HTTP front ends) the images of a batch came from."""


class _Entry:
    __slots__ = ("slot", "future", "queued_at", "source")

    def __init__(self, slot: int, future: asyncio.Future, queued_at: float, source: int) -> None:
        self.slot = slot
        self.future = future
        self.queued_at = queued_at
        self.source = source


class DynamicBatcher:
    """`run_batch(slots)` starts a batch and returns a future of a `BatchResult`-like
    (vectors (B, D), started_at, inference_s); `release_slot` hands slots back to the pool."""

    def __init__(
        self,
        run_batch: Callable[[list[int]], asyncio.Future],
        release_slot: Callable[[int], None],
        *,
        max_batch_size: int,
        max_batch_delay_s: float,
        observer: BatchObserver | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._release_slot = release_slot
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_batch_delay_s
        self._observer = observer
        self._queue: deque[_Entry] = deque()  # online images
        self._background: deque[_Entry] = deque()  # background-job images: the low-priority lane
        self._wakeup = asyncio.Event()  # set on every submit and every finished batch
        self._handed_over: deque[int] = deque()  # sizes of batches given to the model, unfinished, running first
        self._running_since = 0.0  # when the running batch started (as the event loop sees it)
        self._seconds_per_image: float | None = None  # EWMA over finished batches
        self._online_busy = False  # requests in flight (maybe still decoding): job batches wait
        self._task: asyncio.Task | None = None
        self._failure: BaseException | None = None
        #: False after a batch failed, True again after one succeeds.
        self.backend_ok = True

    # -- callers (event loop) ---------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="iei-batcher")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue_size(self) -> int:
        """Online images queued (background-job images are counted apart)."""
        return len(self._queue)

    @property
    def background_queue_size(self) -> int:
        return len(self._background)

    def set_online_busy(self, busy: bool) -> None:
        """The engine says whether requests are in flight; job batches go only while none are (an
        online image still decoding would otherwise find the model busy with a job batch)."""
        self._online_busy = busy
        self._wakeup.set()

    def submit(self, slot: int, *, background: bool = False, source: int = 0) -> asyncio.Future:
        """Queue a filled slot; the slot is now the batcher's. The future resolves to `Embedded`.
        Cancel the future to drop the image if it has not reached the model yet. `background`: the
        low-priority lane of background jobs. `source`: where the image came from (the HTTP front end's
        index), only counted: one batcher serves every front end."""
        if not self.alive:
            self._release_slot(slot)
            raise Unhealthy("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        (self._background if background else self._queue).append(_Entry(slot, future, time.monotonic(), source))
        self._wakeup.set()
        return future

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail_queued(Unhealthy("the server is shutting down"))

    # -- the batcher task -------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._wait_until(self._may_hand_over)
                await self._fill_batch()
                batch = self._take_batch()
                if batch:
                    self._hand_over(batch)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # never die silently: fail every waiter and turn unhealthy
            log.exception("the batcher crashed")
            self._failure = e
            self.backend_ok = False
            self._fail_queued(Unhealthy("the batcher stopped unexpectedly"))
            raise

    def _may_hand_over(self) -> bool:
        if len(self._handed_over) >= _MAX_BATCHES_HANDED_OVER:
            return False
        # Job images alone wait for an idle model: a prefetched job batch would delay online images.
        return bool(self._queue) or (bool(self._background) and not self._handed_over and not self._online_busy)

    async def _wait_until(self, condition: Callable[[], object], timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not condition():
            self._wakeup.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _fill_batch(self) -> None:
        """While the model is busy, let the batch fill up until its delay runs out, or until just
        before the running batch should end if that is later (only online images get here with a
        busy model). It goes at once when it is full or the model turns idle."""
        if not self._handed_over:
            return  # idle model: go now
        close_at = max(self._queue[0].queued_at + self._max_delay_s, self._handover_due())
        wait_s = close_at - time.monotonic()
        if wait_s > 0:
            await self._wait_until(lambda: len(self._queue) >= self._max_batch_size or not self._handed_over, wait_s)

    def _handover_due(self) -> float:
        """When the next batch should be handed over: a lead before the running batch's expected end."""
        if self._seconds_per_image is None or not self._handed_over:
            return 0.0
        expected_s = self._seconds_per_image * self._handed_over[0]
        return self._running_since + expected_s - max(_HANDOVER_LEAD_S, _HANDOVER_LEAD_SHARE * expected_s)

    def _take_batch(self) -> list[_Entry]:
        """Online images; job images only when none are queued (riding along, they would make the
        online batch slower)."""
        return self._take_from(self._queue) or ([] if self._online_busy else self._take_from(self._background))

    def _take_from(self, lane: deque[_Entry]) -> list[_Entry]:
        batch: list[_Entry] = []
        while lane and len(batch) < self._max_batch_size:
            entry = lane.popleft()
            if entry.future.done():  # the caller went away: drop before inference
                self._release_slot(entry.slot)
            else:
                batch.append(entry)
        return batch

    def _hand_over(self, batch: list[_Entry]) -> None:
        if not self._handed_over:
            self._running_since = time.monotonic()
        self._handed_over.append(len(batch))
        if self._observer is not None and hasattr(self._observer, "on_batch_sources"):
            self._observer.on_batch_sources(len({entry.source for entry in batch}))
        running = self._run_batch([entry.slot for entry in batch])
        running.add_done_callback(lambda done: self._scatter(batch, done))

    def _scatter(self, batch: list[_Entry], done: asyncio.Future) -> None:
        """Deliver each row to its caller, in order, and free the slots (the model is done with them)."""
        self._handed_over.popleft()  # batches finish in the order they were handed over
        self._wakeup.set()
        for entry in batch:
            self._release_slot(entry.slot)
        error = None if done.cancelled() else done.exception()
        self._time_finished_batch(len(batch), ok=not done.cancelled() and error is None)
        if done.cancelled() or error is not None:
            self._fail_batch(batch, error)
            return
        vectors, started_at, inference_s = done.result()
        self.backend_ok = True
        for row, entry in enumerate(batch):
            if not entry.future.done():
                entry.future.set_result(Embedded(vectors[row], started_at - entry.queued_at, inference_s))
        if self._observer is not None:
            self._observer.on_batch(len(batch), inference_s, True)

    def _time_finished_batch(self, size: int, ok: bool) -> None:
        """Update the seconds-per-image estimate (from batches that worked: a hung one that timed out
        says nothing about the model's speed); the batch handed over behind it starts now."""
        now = time.monotonic()
        if ok:
            sample = (now - self._running_since) / max(size, 1)
            previous = self._seconds_per_image
            self._seconds_per_image = sample if previous is None else \
                previous + _DURATION_EWMA_WEIGHT * (sample - previous)
        self._running_since = now

    def _fail_batch(self, batch: list[_Entry], error: BaseException | None) -> None:
        self.backend_ok = False
        if not isinstance(error, BackendFailed):
            log.error("running a batch failed unexpectedly", exc_info=error)
            error = BackendFailed(BATCH_FAILED)
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(BackendFailed(error.message))
        if self._observer is not None:
            self._observer.on_batch(len(batch), 0.0, False)

    def _fail_queued(self, error: Exception) -> None:
        for lane in (self._queue, self._background):
            while lane:
                entry = lane.popleft()
                self._release_slot(entry.slot)
                if not entry.future.done():
                    entry.future.set_exception(error)
