"""DynamicBatcher: batch closing rules, prefetch, dropping abandoned images, failure handling."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from backends.base import BackendError
from iei.batcher import DynamicBatcher
from iei.errors import BATCH_FAILED, BackendFailed, Unhealthy
from iei.model_runner import ThreadRunner


class Model:
    """A backend that embeds slot s as [s, s] (the slab holds each slot's number); it can be held
    inside a batch to make the batcher queue up."""

    info = None

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.seconds_per_batch = 0.0

    def embed_images(self, pixels: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        slots = [int(p[0]) for p in pixels]
        self.batches.append(slots)
        self.gate.wait(10)
        time.sleep(self.seconds_per_batch)
        if self.fail:
            raise BackendError("boom")
        return np.array([[s, s] for s in slots], dtype=np.float32)

    def close(self) -> None:
        pass


class Slab:
    name = "test"
    pixels = np.arange(16, dtype=np.float32)[:, None]

    def gather(self, slots: list[int]) -> tuple[np.ndarray, None]:
        return self.pixels[slots], None


async def make(model: Model, released: list[int], *, size: int = 4, delay_s: float = 10.0) -> DynamicBatcher:
    runner = ThreadRunner(model)
    await runner.start(Slab())
    batcher = DynamicBatcher(runner.run, released.append, max_batch_size=size, max_batch_delay_s=delay_s)
    batcher.start()
    return batcher


async def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def test_lone_image_on_idle_model_does_not_wait_for_the_delay():
    model, released = Model(), []
    batcher = await make(model, released, delay_s=5.0)
    start = time.perf_counter()
    result = await batcher.submit(7)
    assert time.perf_counter() - start < 1.0
    assert result.vector.tolist() == [7, 7] and released == [7]
    await batcher.close()


async def test_batches_close_when_full_while_the_model_is_busy():
    model, released = Model(), []
    batcher = await make(model, released, size=4, delay_s=10.0)
    model.gate.clear()
    futures = [batcher.submit(0)]
    await wait_for(lambda: len(model.batches) == 1)
    futures += [batcher.submit(s) for s in range(1, 10)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*futures)
    assert [len(b) for b in model.batches] == [1, 4, 4, 1]
    assert [r.vector[0] for r in results] == list(range(10))  # each caller gets its own row
    assert sorted(released) == list(range(10))
    await batcher.close()


async def test_delay_closes_a_partial_batch_while_the_model_is_busy():
    model, released = Model(), []
    batcher = await make(model, released, size=32, delay_s=0.05)
    model.gate.clear()
    first = batcher.submit(0)
    await wait_for(lambda: len(model.batches) == 1)
    second = [batcher.submit(1), batcher.submit(2)]
    # The second batch is handed over after the delay although the model is still busy (prefetch).
    await asyncio.sleep(0.3)
    assert batcher.queue_size == 0
    model.gate.set()
    await asyncio.gather(first, *second)
    assert model.batches == [[0], [1, 2]]
    await batcher.close()


async def test_with_a_slow_model_the_next_batch_fills_until_the_running_one_is_about_to_end():
    model, released = Model(), []
    batcher = await make(model, released, size=8, delay_s=0.01)
    model.seconds_per_batch = 0.4
    await batcher.submit(0)  # teaches the batcher that an image takes ~0.4 s
    first = batcher.submit(1)
    await wait_for(lambda: len(model.batches) == 2)
    late = [batcher.submit(2), batcher.submit(3)]
    await asyncio.sleep(0.15)  # far past the 10 ms delay, well before the running batch ends
    assert batcher.queue_size == 2
    late.append(batcher.submit(4))
    await asyncio.gather(first, *late)
    assert model.batches == [[0], [1], [2, 3, 4]]  # with the delay alone: [2, 3] then [4]
    await batcher.close()


async def test_abandoned_images_are_dropped_before_inference_and_slots_freed():
    model, released = Model(), []
    batcher = await make(model, released, size=8, delay_s=10.0)
    model.gate.clear()
    first = batcher.submit(0)
    await wait_for(lambda: len(model.batches) == 1)
    # Two batches are handed over (running + prefetched); queue more behind them.
    second = batcher.submit(1)
    await asyncio.sleep(0.02)
    queued = [batcher.submit(s) for s in (2, 3, 4)]
    queued[0].cancel()
    queued[2].cancel()
    model.gate.set()
    await asyncio.gather(first, second, queued[1])
    seen = [s for batch in model.batches for s in batch]
    assert 2 not in seen and 4 not in seen and 3 in seen
    await wait_for(lambda: sorted(released) == [0, 1, 2, 3, 4])
    await batcher.close()


async def test_model_failure_fails_only_that_batch_and_flips_backend_ok():
    model, released = Model(), []
    batcher = await make(model, released)
    model.fail = True
    with pytest.raises(BackendFailed) as failed:
        await batcher.submit(1)
    assert failed.value.message == BATCH_FAILED  # the runtime's text ("boom") is logged, never passed on
    assert batcher.backend_ok is False and batcher.alive
    model.fail = False
    assert (await batcher.submit(2)).vector.tolist() == [2, 2]
    assert batcher.backend_ok is True
    await batcher.close()


async def test_a_crash_in_the_batcher_fails_all_waiters_instead_of_hanging(monkeypatch):
    model, released = Model(), []
    batcher = await make(model, released, delay_s=0.01)
    model.gate.clear()
    first = batcher.submit(0)
    await wait_for(lambda: len(model.batches) == 1)

    def broken_take():
        raise RuntimeError("bug")

    monkeypatch.setattr(batcher, "_take_batch", broken_take)
    waiting = [batcher.submit(s) for s in (1, 2)]
    for future in waiting:
        with pytest.raises(Unhealthy):
            await asyncio.wait_for(future, 5)
    assert not batcher.alive and batcher.backend_ok is False
    with pytest.raises(Unhealthy):
        batcher.submit(3)
    model.gate.set()
    await first
    await batcher.close()


async def test_job_images_never_ride_with_online_ones_and_are_never_prefetched_alone():
    model, released = Model(), []
    batcher = await make(model, released, size=4, delay_s=0.01)
    model.gate.clear()
    first = batcher.submit(0, background=True)
    await wait_for(lambda: len(model.batches) == 1)  # an idle model takes a job image at once
    jobs = [batcher.submit(s, background=True) for s in (1, 2, 3, 4)]
    await asyncio.sleep(0.1)
    assert len(model.batches) == 1 and batcher.background_queue_size == 4  # not prefetched behind the running one
    online = [batcher.submit(s) for s in (10, 11)]
    await wait_for(lambda: batcher.queue_size == 0)  # online goes now (prefetched), alone
    assert batcher.background_queue_size == 4
    model.gate.set()
    results = await asyncio.gather(first, *jobs, *online)
    assert model.batches == [[0], [10, 11], [1, 2, 3, 4]]
    assert [r.vector[0] for r in results] == [0, 1, 2, 3, 4, 10, 11]
    await batcher.close()


async def test_online_images_overtake_a_queued_job_backlog():
    model, released = Model(), []
    batcher = await make(model, released, size=2, delay_s=0.01)
    model.gate.clear()
    running = batcher.submit(0, background=True)
    await wait_for(lambda: len(model.batches) == 1)
    backlog = [batcher.submit(s, background=True) for s in range(1, 7)]
    online = batcher.submit(9)
    model.gate.set()
    await asyncio.gather(running, online, *backlog)
    assert model.batches[1] == [9]  # the online image goes in the very next batch, without job images
    await batcher.close()


async def test_closing_fails_queued_job_images_too():
    model, released = Model(), []
    batcher = await make(model, released, size=2)
    model.gate.clear()
    running = batcher.submit(0, background=True)
    await wait_for(lambda: len(model.batches) == 1)
    queued = batcher.submit(1, background=True)
    await batcher.close()
    with pytest.raises(Unhealthy):
        await queued
    assert 1 in released
    model.gate.set()
    await asyncio.gather(running, return_exceptions=True)


async def test_job_images_wait_while_requests_are_in_flight():
    model, released = Model(), []
    batcher = await make(model, released, size=4, delay_s=0.01)
    batcher.set_online_busy(True)  # a request is decoding: the model must stay free for it
    job = batcher.submit(1, background=True)
    await asyncio.sleep(0.1)
    assert model.batches == [] and batcher.background_queue_size == 1
    batcher.set_online_busy(False)
    assert (await job).vector[0] == 1 and model.batches == [[1]]
    await batcher.close()
