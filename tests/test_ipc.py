"""FrameWriter: frames coalesced per loop iteration; a report (urgent=False) rides with the next urgent frame."""

from __future__ import annotations

import asyncio

from iei.ipc import FrameWriter, pop_frames


class Transport:
    """The asyncio transport's write side, recording each write (one system call each)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def writelines(self, parts) -> None:
        self.writes.append(b"".join(parts))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def frames(writes: list[bytes]) -> list[list[bytes]]:
    return [pop_frames(bytearray(w)) for w in writes]


async def test_urgent_frames_of_one_iteration_share_a_write():
    transport = Transport()
    writer = FrameWriter(transport)  # type: ignore[arg-type]
    writer.send(b"a")
    writer.send(b"b")
    await asyncio.sleep(0)
    assert frames(transport.writes) == [[b"a", b"b"]]


async def test_a_report_waits_for_the_next_urgent_frame_and_keeps_its_place():
    transport = Transport()
    writer = FrameWriter(transport, linger_s=3600)  # type: ignore[arg-type]
    writer.send(b"report", urgent=False)
    await asyncio.sleep(0)
    assert transport.writes == []  # lingering
    writer.send(b"call")
    await asyncio.sleep(0)
    assert frames(transport.writes) == [[b"report", b"call"]]


async def test_a_lingering_report_goes_out_alone_after_linger_s():
    transport = Transport()
    writer = FrameWriter(transport, linger_s=0)  # type: ignore[arg-type]
    writer.send(b"report", urgent=False)
    while not transport.writes:
        await asyncio.sleep(0)
    assert frames(transport.writes) == [[b"report"]]


async def test_close_writes_lingering_reports_first():
    transport = Transport()
    writer = FrameWriter(transport, linger_s=3600)  # type: ignore[arg-type]
    writer.send(b"report", urgent=False)
    writer.close()
    assert frames(transport.writes) == [[b"report"]] and transport.closed
