"""The model process: loads the backend and runs batches, alone, on its main thread.

Running the model in its own process keeps it out of the event loop's GIL (a busy loop would
otherwise stall every torch op for up to a switch interval, and vice versa), lets a crashed or
hung model be killed and restarted without taking the HTTP server down, and keeps torch out of the
server process's hot path. Pixels arrive through the shared-memory slab; only slot numbers and
the (B, D) float32 vectors cross the pipe.

The model process also reads the model's preprocessing and tokenizer (`iei.model_plan`): that needs
transformers, which imports torch, and only this process should pay for those.

Messages (`iei.messages`, the model link): child -> parent first `ModelReady` or `ModelLoadFailed`; then
parent -> child `AttachSlab` once and `RunImages` (slab slots) or `RunTexts` (token ids: a few hundred bytes
per text, so they ride in the frame rather than a slab) per batch; child -> parent `BatchDone` or
`BatchFailed` per batch, in order.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from multiprocessing.connection import Connection

import msgspec
import numpy as np

from backends import BackendError, load_backend
from backends.onnx_manifest import is_export_folder
from iei.config import Settings
from iei.errors import BATCH_FAILED
from iei.ipc import FrameReader
from iei.messages import (
    AttachSlab, BatchDone, BatchFailed, ModelLoadFailed, ModelReady, RunImages, RunTexts, ServerToModel,
)
from iei.model_plan import model_plan
from iei.models import ModelNotFound, transformers_without_torch
from iei.preprocess.text import text_spec_for
from iei.slab import Slab

log = logging.getLogger("iei.model")


def _load(conn: Connection, settings: Settings):
    """Resolve and load the model, warm it, and tell the server its info, preprocessing and tokenizer spec
    (`ModelReady`), or why it could not (`ModelLoadFailed`)."""
    try:
        plan = model_plan(settings)
        backend = load_backend(settings.backend, plan.config)
        backend.warmup()
        text_spec = text_spec_for(plan.source, backend.info)
    except (ModelNotFound, ValueError, BackendError) as e:
        conn.send_bytes(msgspec.msgpack.encode(ModelLoadFailed(str(e))))
        return None
    except Exception as e:  # an unexpected loader failure still gets a one-line reason
        log.exception("loading the model failed")
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        conn.send_bytes(msgspec.msgpack.encode(
            ModelLoadFailed(f"could not load the model: {type(e).__name__}: {first_line}")))
        return None
    conn.send_bytes(msgspec.msgpack.encode(ModelReady(backend.info, plan.spec, text_spec)))
    return backend


def _run_texts(backend, message: RunTexts) -> BatchDone | BatchFailed:
    input_ids = np.frombuffer(message.input_ids, dtype=np.int32).reshape(message.rows, message.length)
    attention_mask = np.frombuffer(message.attention_mask, dtype=np.uint8).reshape(message.rows, message.length)
    return _run_batch(message.batch_id, message.rows, backend.embed_texts, input_ids, attention_mask)


def _run_batch(batch_id: int, rows: int, embed, *arrays: np.ndarray | None) -> BatchDone | BatchFailed:
    started = time.monotonic()
    try:
        vectors = np.ascontiguousarray(embed(*arrays), dtype=np.float32)
        return BatchDone(batch_id, vectors.tobytes(), vectors.shape[0], vectors.shape[1], started,
                         time.monotonic() - started)
    except BackendError as e:  # the runtime's text (torch, ONNX Runtime) goes to the log, never to a client
        log.error("batch %d of %d failed: %s", batch_id, rows, e)
    except Exception:  # keep serving; the client sees a generic message, the log has the detail
        log.exception("batch %d of %d: the model raised", batch_id, rows)
    return BatchFailed(batch_id, BATCH_FAILED, started, time.monotonic() - started)


def host_main(conn: Connection, settings: Settings) -> None:
    """Entry point of the model process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop: it finishes
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # in-flight batches first, then closes our pipe
    from iei.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if settings.backend != "torch" and is_export_folder(settings.model):
        transformers_without_torch()  # an export runs on ONNX Runtime; only exporting needs torch
    backend = _load(conn, settings)
    if backend is not None:
        _serve(conn, backend)
    # Skip the interpreter's teardown: unloading torch and its thread pools takes a second or two, and
    # the server waits for this process before it can exit (or report why the model did not load).
    # Nothing is left to flush but the logs. A crash above still exits the normal way, with its traceback.
    logging.shutdown()
    os._exit(0)


def _serve(conn: Connection, backend) -> None:
    """Run batches until the server closes the pipe."""
    encode, decode = msgspec.msgpack.Encoder().encode, msgspec.msgpack.Decoder(ServerToModel).decode
    slab: Slab | None = None
    frames = FrameReader(conn)
    try:
        for frame in frames:
            message = decode(frame)
            if isinstance(message, RunImages):
                pixels, grids = slab.gather(message.slots)  # type: ignore[union-attr]  (attach comes first)
                conn.send_bytes(encode(_run_batch(message.batch_id, len(message.slots), backend.embed_images,
                                                  pixels, grids)))
            elif isinstance(message, RunTexts):
                conn.send_bytes(encode(_run_texts(backend, message)))
            elif isinstance(message, AttachSlab):
                slab = Slab.attach(message.name, message.layout)
    finally:
        frames.close()
        backend.close()
        if slab is not None:
            slab.close()
