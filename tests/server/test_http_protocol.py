"""The coalescing transport behind `iei serve`: one write per loop tick, nothing lost on close."""

from __future__ import annotations

import asyncio

from iei.server.http_protocol import _CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default


async def test_head_and_body_of_one_tick_leave_in_one_write():
    real = RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(b"[[1.0]]")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\n[[1.0]]"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[-1] == b"next"


async def test_close_flushes_first_and_other_calls_pass_through():
    real = RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()
    assert real.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"] and real.closed
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)
    await asyncio.sleep(0)
    assert len(real.writes) == 1
