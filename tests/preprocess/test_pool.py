"""PreprocessPool with real worker processes: pixels land in shared memory, errors and dead workers
are contained, and slots are never lost or handed out twice."""

from __future__ import annotations

import asyncio
import io
import os
import signal

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
    for _ in range(200):
        if pool.free_slots == 4:
            break
        await asyncio.sleep(0.01)
    assert pool.free_slots == 4


async def test_acquire_waits_for_a_released_slot(pool):
    slots = [await pool.acquire_slot() for _ in range(4)]
    waiter = asyncio.ensure_future(pool.acquire_slot())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    pool.release_slot(slots[2])
    assert await asyncio.wait_for(waiter, 1) == slots[2]


async def test_a_killed_worker_fails_only_its_images_and_is_replaced(pool):
    big = png(size=(3000, 3000))
    victim = pool.worker_pids[0]
    slots = [await pool.acquire_slot() for _ in range(4)]
    tasks = [asyncio.ensure_future(pool.prepare(big, "raw", s)) for s in slots]
    await asyncio.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    died = [r for r in results if isinstance(r, PreprocessWorkerDied)]
    assert died, results
    assert all(r is None or isinstance(r, PreprocessWorkerDied) for r in results)
    for slot, result in zip(slots, results):
        if result is None:
            pool.release_slot(slot)
    assert pool.free_slots == 4
    for _ in range(500):
        if len(pool.worker_pids) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(pool.worker_pids) == 2 and victim not in pool.worker_pids
    slot = await pool.acquire_slot()
    await pool.prepare(png(), "raw", slot)
    pool.release_slot(slot)
