"""The preprocessing worker process: a blocking loop that turns image payloads into pixel tensors
and texts into token ids.

It receives `Task` frames (`iei.messages`: task_id, slot, encoding, payload) on its end of a socket pair, writes the
uint8 pixels (and a variable-resolution image's patch grid) into `slot` of the shared-memory slab (`iei.slab`), and answers a `Reply` (task_id, status, message).
Only the small reply crosses the process boundary; the pixels stay in shared memory. A text task
(encoding "text", no slot) answers with its int32 token ids in the reply instead.
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import contextmanager
from typing import Any, Iterator
from multiprocessing.connection import Connection

import msgspec
import numpy as np

from iei.errors import InputError
from iei.ipc import FrameReader
from iei.messages import WORKER_READY, Reply, Task
from iei.models import transformers_without_torch
from iei.preprocess.image import decode_payload, prepare_patches, prepare_pixels
from iei.preprocess.spec import PreprocessSpec
from iei.preprocess.text import TextSpec, Tokenizer
from iei.slab import Slab, SlabLayout

ENCODINGS = ("base64", "raw", "text")
NO_SLOT = -1  # text tasks write nothing into the slab
STATUS_OK, STATUS_INPUT_ERROR, STATUS_INTERNAL_ERROR = 0, 1, 2

log = logging.getLogger("iei.preprocess.worker")


def _as_bytes(payload: Any) -> bytes:
    if isinstance(payload, str):
        try:
            return payload.encode("ascii")
        except UnicodeEncodeError:
            raise InputError("not valid base64") from None
    return payload


class DecodeTimedOut(BaseException):
    """Raised by the SIGALRM handler in the middle of a decode that ran over the time limit. A
    BaseException, so that the decoders' own `except Exception` blocks let it through."""


def decode_timeout_message(spec: PreprocessSpec) -> str:
    return f"decoding took longer than the limit of {spec.decode_timeout_s * 1000:g} ms (decode_timeout_ms)"


def _raise_timed_out(signum: int, frame: Any) -> None:
    raise DecodeTimedOut()


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` (0: never). Works while the decoder returns to Python
    between chunks (Pillow decodes in chunks); a decoder stuck inside one C call is caught by the
    pool's watchdog instead, which kills and replaces the worker."""
    if seconds <= 0:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run_task(task: Task, spec: PreprocessSpec, slab: Slab, tokenize: Tokenizer | None = None) -> Reply:
    try:
        if ENCODINGS[task.encoding] == "text":
            if tokenize is None:
                raise InputError("this model takes no text")
            return Reply(task.task_id, STATUS_OK, tokens=tokenize(task.payload).tobytes())
        with _time_limit(spec.decode_timeout_s):
            data = decode_payload(_as_bytes(task.payload), ENCODINGS[task.encoding])
            if slab.grids is None:
                prepare_pixels(data, spec, out=slab.pixels[task.slot])
            else:
                slab.grids[task.slot] = prepare_patches(data, spec, out=slab.pixels[task.slot])
        return Reply(task.task_id, STATUS_OK)
    except DecodeTimedOut:
        return Reply(task.task_id, STATUS_INPUT_ERROR, decode_timeout_message(spec))
    except InputError as e:
        return Reply(task.task_id, STATUS_INPUT_ERROR, e.message)
    except Exception:  # a decoder bug must not kill the worker or leak its text to a client
        log.exception("preprocessing failed unexpectedly")
        return Reply(task.task_id, STATUS_INTERNAL_ERROR, "the image could not be processed")


def worker_main(conn: Connection, slab_name: str, layout_bytes: bytes, spec_bytes: bytes,
                text_spec_bytes: bytes | None = None, niceness: int = 0) -> None:
    """Entry point of a worker process (forked from the pool's fork server, a fresh interpreter: no state
    of the server's process is inherited). `niceness` above 0 lowers its CPU priority (background-job
    workers)."""
    if niceness:
        os.nice(niceness)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when workers stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (a terminal's or systemd's signal reaches the whole group)
    signal.signal(signal.SIGALRM, _raise_timed_out)
    spec = msgspec.msgpack.decode(spec_bytes, type=PreprocessSpec)
    tokenize = Tokenizer(msgspec.msgpack.decode(text_spec_bytes, type=TextSpec)) if text_spec_bytes else None
    if tokenize is not None:
        transformers_without_torch()  # a tokenizer needs none
        tokenize.load()
    slab = Slab.attach(slab_name, msgspec.msgpack.decode(layout_bytes, type=SlabLayout))
    decode_task = msgspec.msgpack.Decoder(Task).decode
    encode = msgspec.msgpack.Encoder().encode
    conn.send_bytes(WORKER_READY)
    frames = FrameReader(conn)
    try:
        for frame in frames:  # ends when the server closes our pipe
            conn.send_bytes(encode(run_task(decode_task(frame), spec, slab, tokenize)))
    finally:
        frames.close()
        slab.close()
