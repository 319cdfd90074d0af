"""The background lane: how one image of a background job (`iei.jobs`) goes through the engine at low
priority all the way, apart from the online path (admission does not count it; the job runner bounds its
own images with `background_slots`).

- decoded by the pool's background workers (nice 19; a request never waits behind a job image),
- batched in the batcher's low-priority lane (job batches only while no request is in flight, only to an
  idle model).

Owner: the engine's event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

import numpy as np

from iei.config import Settings
from iei.errors import IEIError

if TYPE_CHECKING:
    from iei.batcher import DynamicBatcher
    from iei.preprocess.pool import PreprocessPool


def background_slots(settings: Settings) -> int:
    """Background-job images in flight at once: enough to keep the background workers busy, few
    enough that job batches stay small (an online image may wait for one). 0 without jobs."""
    return min(settings.max_batch_size, 2 * settings.batch_job_workers) if settings.batch_jobs else 0


class BackgroundLane:
    def __init__(self, pool: PreprocessPool, batcher: DynamicBatcher, fetch: Callable[..., Awaitable],
                 refusal: Callable[[], IEIError | None]) -> None:
        """`fetch(image)` resolves URL inputs; `refusal()` says why nothing may start now (or None)."""
        self._pool = pool
        self._batcher = batcher
        self._fetch = fetch
        self._refusal = refusal

    async def embed(self, image) -> np.ndarray:
        """Embed one `ImagePayload`; returns the raw float32 (D,) vector. Raises InputError (without an index),
        BackendFailed, PreprocessWorkerDied or Unhealthy."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        data, encoding = await self._fetch(image)
        slot = await self._pool.acquire_slot()
        await self._pool.prepare(data, encoding, slot, background=True)
        return (await self._batcher.submit(slot, background=True)).vector
