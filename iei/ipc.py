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
from typing import Callable, Iterator

HEADER = struct.Struct("!i")  # multiprocessing.Connection's frame header for frames under 2 GiB


def pop_frames(buf: bytearray) -> list[bytes]:
    """Remove and return the complete frames at the front of `buf` (a partial frame stays)."""
    frames = []
    start = 0
    while len(buf) - start >= 4:
        (size,) = HEADER.unpack_from(buf, start)
        if len(buf) - start < 4 + size:
            break
        frames.append(bytes(buf[start + 4 : start + 4 + size]))
        start += 4 + size
    del buf[:start]
    return frames


class FrameProtocol(asyncio.Protocol):
    """Calls `on_frame(bytes)` for every complete frame and `on_lost()` once the peer is gone."""

    def __init__(self, on_frame: Callable[[bytes], None], on_lost: Callable[[], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for frame in pop_frames(self._buffer):
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


def send_frames(transport: asyncio.Transport, frames: list[bytes]) -> None:
    """Several frames in one write (one system call)."""
    parts: list[bytes] = []
    for frame in frames:
        parts += (HEADER.pack(len(frame)), frame)
    transport.writelines(parts)


class FrameReader:
    """The child's side: blocking reads of frames, many per `recv` when the parent has queued several
    (multiprocessing's `recv_bytes` costs two system calls per frame)."""

    def __init__(self, conn: Connection, chunk: int = 1 << 20) -> None:
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._sock.setblocking(True)
        self._buffer = bytearray()
        self._chunk = chunk

    def __iter__(self) -> Iterator[bytes]:
        """Frames until the parent closes its end."""
        buf = self._buffer
        while True:
            yield from pop_frames(buf)
            try:
                data = self._sock.recv(self._chunk)
            except OSError:
                return
            if not data:
                return
            buf += data

    def close(self) -> None:
        self._sock.close()


class FrameWriter:
    """Frames for one transport, coalesced: the frames of one loop iteration go out in one write (one
    system call), as the pool does for its workers. Owner: the event loop."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._outbox: list[bytes] = []

    def send(self, frame: bytes) -> None:
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox.append(frame)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if not self._transport.is_closing():
            send_frames(self._transport, frames)

    def close(self) -> None:
        self._transport.close()
