"""Length-prefixed frames between the event loop and a child process.

The child uses a plain blocking `multiprocessing.Connection` (`recv_bytes`/`send_bytes`); the
parent reads and writes the same framing through an asyncio transport, so the event loop never
blocks and no helper thread is needed."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from multiprocessing.connection import Connection
from typing import Callable

HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header for frames under 2 GiB


class FrameProtocol(asyncio.Protocol):
    """Calls `on_frame(bytes)` for every complete frame and `on_lost()` once the peer is gone."""

    def __init__(self, on_frame: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self._buffer
        buf += data
        while len(buf) >= 4:
            (size,) = HEADER.unpack_from(buf)
            if len(buf) < 4 + size:
                return
            frame = bytes(buf[4 : 4 + size])
            del buf[: 4 + size]
            self._on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost()


async def connect(conn: Connection, on_frame: Callable[[bytes], None], on_lost: Callable[[], None]) -> asyncio.Transport:
    """Hand our end of a Pipe to the event loop (the Connection object is closed)."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_unix_connection(lambda: FrameProtocol(on_frame, on_lost), sock=sock)
    return transport


def send_frame(transport: asyncio.Transport, frame: bytes) -> None:
    transport.writelines((HEADER.pack(len(frame)), frame))
