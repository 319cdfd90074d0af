"""PreprocessPool with real worker processes: pixels land in shared memory, errors and dead workers
are contained, and slots are never lost or handed out twice. Tests wait for state they can observe (a
worker's queue, the live pids), never for a fixed time."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time
from typing import Callable

import msgspec
import numpy as np
import pytest
from PIL import Image

from iei.errors import InputError, PreprocessWorkerDied
from iei.preprocess.image import prepare_pixels
from iei.preprocess.pool import PreprocessPool
from iei.preprocess.spec import make_spec

SPEC = make_spec(resize="fixed", resample=2, resize_height=24, resize_width=24)


def png(color=(10, 120, 250), size=(50, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll `condition` on the loop until it holds (the timeout turns a hang into a failure; it bounds nothing)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def pool():
    p = PreprocessPool(SPEC, workers=2, slots=4)
    await p.start()
    yield p
    await p.close()


async def test_prepared_slot_equals_prepare_pixels(pool):
    data = png()
    slot = await pool.acquire_slot()
    await pool.prepare(data, "raw", slot)
    np.testing.assert_array_equal(pool.pixels[slot], prepare_pixels(data, SPEC))
    pool.release_slot(slot)


async def test_base64_str_payload(pool):
    import base64

    slot = await pool.acquire_slot()
    await pool.prepare("data:image/png;base64," + base64.b64encode(png()).decode(), "base64", slot)
    np.testing.assert_array_equal(pool.pixels[slot], prepare_pixels(png(), SPEC))
    pool.release_slot(slot)


async def test_bad_image_raises_input_error_and_frees_the_slot(pool):
    slot = await pool.acquire_slot()
    with pytest.raises(InputError, match="not a decodable image"):
        await pool.prepare(b"definitely not an image", "raw", slot)
    assert pool.free_slots == 4


async def test_cancelled_prepare_frees_the_slot_once_the_worker_replies(pool):
    slot = await pool.acquire_slot()
    task = asyncio.ensure_future(pool.prepare(png(size=(2000, 1500)), "raw", slot))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: pool.free_slots == 4, "the slot freed once the worker replied")


async def test_acquire_waits_for_a_released_slot(pool):
    slots = [await pool.acquire_slot() for _ in range(4)]
    waiter = asyncio.ensure_future(pool.acquire_slot())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    pool.release_slot(slots[2])
    assert await asyncio.wait_for(waiter, 1) == slots[2]


async def wait_for_workers(pool, count: int, gone: int | None = None) -> None:
    """Until `count` workers are alive and (if given) the worker `gone` is not one of them."""
    await wait_for(lambda: len(pool.worker_pids) == count and gone not in pool.worker_pids,
                   f"{count} live workers without {gone}")


async def prepare_on_a_frozen_worker(pool, payloads: list[bytes]) -> tuple[int, list]:
    """Stop one worker (SIGSTOP), then send `payloads`; the frozen worker gets half of them,
    queued behind one another. Returns its pid and the still-running tasks with their slots."""
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGSTOP)
    slots = [await pool.acquire_slot() for _ in payloads]
    tasks = [asyncio.ensure_future(pool.prepare(data, "raw", slot)) for data, slot in zip(payloads, slots)]
    (frozen,) = [w for w in pool._workers if w.process is not None and w.process.pid == victim]
    await wait_for(lambda: len(frozen.inflight) == len(payloads) // 2, "half the payloads sent to the frozen worker")
    return victim, list(zip(tasks, slots))


async def test_a_killed_worker_fails_only_the_image_it_was_on_and_is_replaced(pool):
    victim, running = await prepare_on_a_frozen_worker(pool, [png()] * 4)
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*(task for task, _ in running), return_exceptions=True)
    died = [r for r in results if isinstance(r, PreprocessWorkerDied)]
    assert len(died) == 1 and results.count(None) == 3, results  # the queued ones went to the other worker
    for (_, slot), result in zip(running, results):
        if result is None:
            np.testing.assert_array_equal(pool.pixels[slot], prepare_pixels(png(), SPEC))
            pool.release_slot(slot)
    assert pool.free_slots == 4
    await wait_for_workers(pool, 2)
    assert victim not in pool.worker_pids
    slot = await pool.acquire_slot()
    await pool.prepare(png(), "raw", slot)
    pool.release_slot(slot)


async def test_a_dead_worker_is_replaced_even_when_the_fork_server_died(pool):
    # Workers are forked from a fork server; if that server is gone (OOM-killed, say), the pool starts
    # a new one for the replacement, and the surviving worker goes on serving meanwhile.
    from multiprocessing import forkserver

    os.kill(forkserver._forkserver._forkserver_pid, signal.SIGKILL)
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    await wait_for_workers(pool, 2, gone=victim)
    slots = [await pool.acquire_slot() for _ in range(4)]
    await asyncio.gather(*(pool.prepare(png(), "raw", slot) for slot in slots))  # on both workers
    for slot in slots:
        np.testing.assert_array_equal(pool.pixels[slot], prepare_pixels(png(), SPEC))
        pool.release_slot(slot)


def noisy_png(size: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


async def test_decode_over_the_time_limit_is_an_input_error_and_the_worker_survives():
    pool = PreprocessPool(msgspec.structs.replace(SPEC, decode_timeout_s=0.005), workers=1, slots=2)
    await pool.start()
    try:
        (pid,) = pool.worker_pids
        slot = await pool.acquire_slot()
        with pytest.raises(InputError, match=r"decoding took longer than the limit of 5 ms \(decode_timeout_ms\)"):
            await pool.prepare(noisy_png(2500), "raw", slot)
        assert pool.free_slots == 2 and pool.worker_pids == [pid]
    finally:
        await pool.close()


async def test_a_stuck_worker_is_killed_by_the_watchdog_and_only_its_image_fails():
    pool = PreprocessPool(msgspec.structs.replace(SPEC, decode_timeout_s=0.2), workers=2, slots=4)
    await pool.start()
    try:
        victim, running = await prepare_on_a_frozen_worker(pool, [png()] * 4)
        # nothing but the watchdog (2 x 0.2 s + 1 s) ends the frozen worker's image: gather returning shows it fired
        results = await asyncio.gather(*(task for task, _ in running), return_exceptions=True)
        timed_out = [r for r in results if isinstance(r, InputError)]
        assert len(timed_out) == 1 and "decoding took longer" in timed_out[0].message, results
        assert results.count(None) == 3
        for (_, slot), result in zip(running, results):
            if result is None:
                pool.release_slot(slot)
        await wait_for_workers(pool, 2)
        assert victim not in pool.worker_pids and pool.free_slots == 4
    finally:
        await pool.close()


async def test_background_work_goes_to_the_low_priority_worker_only():
    pool = PreprocessPool(SPEC, workers=1, slots=4, background_workers=1)
    await pool.start()
    try:
        online, background = pool._workers
        assert os.getpriority(os.PRIO_PROCESS, background.process.pid) == 19
        assert os.getpriority(os.PRIO_PROCESS, online.process.pid) == os.getpriority(os.PRIO_PROCESS, 0)
        slots = [await pool.acquire_slot() for _ in range(4)]
        work = [asyncio.ensure_future(pool.prepare(png(), "raw", s, background=i % 2 == 0)) for i, s in enumerate(slots)]
        await asyncio.sleep(0)  # every task is dispatched
        assert (len(online.inflight), len(background.inflight)) == (2, 2)
        await asyncio.gather(*work)
        for slot in slots:
            np.testing.assert_array_equal(pool.pixels[slot], prepare_pixels(png(), SPEC))
            pool.release_slot(slot)
        killed = background.process.pid
        os.kill(killed, signal.SIGKILL)  # while it is being replaced, background work still runs
        await wait_for(lambda: not background.alive, "the pool noticing the background worker died")
        slot = await pool.acquire_slot()
        await pool.prepare(png(), "raw", slot, background=True)
        pool.release_slot(slot)
    finally:
        await pool.close()
