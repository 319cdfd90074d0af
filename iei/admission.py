"""Admission: the one limit on images in flight (`--max-concurrent-requests`).

A request is admitted whole or not at all, at once (try-acquire, never a queue): over the limit it gets
`Overloaded` (429 with `Retry-After`). The count lives here and only here, in the engine's process, so with
several HTTP front ends (`--http-workers`) the limit still holds across all of them: each front end forwards
its requests to the one engine, which admits them against this one count.

Owner: the engine's event loop (every method runs there).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from iei.errors import Overloaded


class Admission:
    """Counts admitted, unanswered images. `on_busy(True)` when the first request is admitted while none
    was in flight, `on_busy(False)` when the last one is answered: background jobs run only in between."""

    def __init__(self, limit: int, on_busy: Callable[[bool], None]) -> None:
        self.limit = limit
        self.inflight = 0  # admitted and not yet answered
        self.idle = asyncio.Event()  # set while no request is in flight (the job runner waits on it)
        self.idle.set()
        self._on_busy = on_busy

    def admit(self, count: int, refusal: Exception | None = None) -> None:
        """Admit `count` images, or raise: `Overloaded` over the limit, else `refusal` if one is given (the
        engine's reason to refuse everything: not ready, shutting down). The limit is checked first, so a
        client at capacity is told to back off rather than that the server is unwell."""
        if self.inflight + count > self.limit:
            raise Overloaded(f"the server is at capacity ({self.limit} images in flight); retry shortly")
        if refusal is not None:
            raise refusal
        if self.inflight == 0:
            self.idle.clear()
            self._on_busy(True)
        self.inflight += count

    def release(self, count: int) -> None:
        """The request of `count` admitted images has its answer (or failed)."""
        self.inflight -= count
        if self.inflight == 0:
            self.idle.set()
            self._on_busy(False)
