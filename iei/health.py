"""Health: one answer to "can this server embed now?", made of ordered checks.

The engine registers its checks (shutting down, model loaded, batchers running, model process alive, last
batch succeeded, preprocessing workers running); with several HTTP front ends the supervisor adds one per
front end (`iei.server.frontends`), so `/health` is 200 only when the engine and every front end are. The
first failing check's message is the answer (written for a client).

A failed batch is the one problem that traffic alone would clear, and a server without traffic would
stay unhealthy forever; so `problem_after_probe` runs one tiny probe batch first when that is the problem.

Owner: the engine's event loop.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Check = Callable[[], "str | None"]  # None: fine; else what is wrong

_PROBE_TIMEOUT_S = 10.0


class Health:
    def __init__(self, probe: Callable[[], Awaitable[None]], probe_when: str) -> None:
        """`probe` runs a tiny batch; it is run when the first failing check says `probe_when`."""
        self._checks: list[Check] = []
        self._probe_batch = probe
        self._probe_when = probe_when
        self._probe: asyncio.Future | None = None

    def add_check(self, check: Check) -> None:
        """Checks run in the order they were added."""
        self._checks.append(check)

    def problem(self) -> str | None:
        """None when healthy, else what is wrong (safe to show a client)."""
        for check in self._checks:
            problem = check()
            if problem is not None:
                return problem
        return None

    async def problem_after_probe(self) -> str | None:
        """Like `problem`, but after a failed batch run one probe batch first (at most one at a time), so
        health recovers on its own once the model answers again."""
        problem = self.problem()
        if problem != self._probe_when:
            return problem
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_batch())
        await asyncio.wait({self._probe}, timeout=_PROBE_TIMEOUT_S)
        return self.problem()
