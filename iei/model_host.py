"""The model process: loads the backend and runs batches, alone, on its main thread.

Running the model in its own process keeps it out of the event loop's GIL (a busy loop would
otherwise stall every torch op for up to a switch interval, and vice versa), lets a crashed or
hung model be killed and restarted without taking the HTTP server down, and keeps torch out of the
server process's hot path. Pixels arrive through the shared-memory slab; only slot numbers and
the (B, D) float32 vectors cross the pipe.

The model process also reads the model's preprocessing and tokenizer (`iei.model_plan`): that needs
transformers, which imports torch, and only this process should pay for those.

Frames (msgpack arrays), child -> parent first: ["ready", ModelInfo, PreprocessSpec, TextSpec | None]
or ["error", message].
Then parent -> child: ["attach", slab_name, SlabLayout], [batch_id, slots] (images), or
["text", batch_id, input_ids int32 bytes, attention_mask uint8 bytes, rows, length] (texts: token ids
are a few hundred bytes per text, so they ride in the frame rather than a slab);
child -> parent: [batch_id, True, vectors_bytes, rows, dim, started_at, duration_s]
or [batch_id, False, message, 0, 0, started_at, duration_s].
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
from iei.model_plan import model_plan
from iei.models import ModelNotFound, transformers_without_torch
from iei.preprocess.text import text_spec_for
from iei.slab import Slab, SlabLayout

log = logging.getLogger("iei.model")


def _load(conn: Connection, settings: Settings):
    """Resolve and load the model, warm it, and tell the server its info, preprocessing and tokenizer spec
    (["ready", ModelInfo, PreprocessSpec, TextSpec | None]), or why it could not (["error", message])."""
    try:
        plan = model_plan(settings)
        backend = load_backend(settings.backend, plan.config)
        backend.warmup()
        text_spec = text_spec_for(plan.source, backend.info)
    except (ModelNotFound, ValueError, BackendError) as e:
        conn.send_bytes(msgspec.msgpack.encode(["error", str(e)]))
        return None
    except Exception as e:  # an unexpected loader failure still gets a one-line reason
        log.exception("loading the model failed")
        first_line = (str(e).strip().splitlines() or [""])[0][:300]
        conn.send_bytes(msgspec.msgpack.encode(["error", f"could not load the model: {type(e).__name__}: {first_line}"]))
        return None
    conn.send_bytes(msgspec.msgpack.encode(["ready", backend.info, plan.spec, text_spec]))
    return backend


def _run_texts(backend, message: list) -> list:
    _, batch_id, ids, mask, rows, length = message
    input_ids = np.frombuffer(ids, dtype=np.int32).reshape(rows, length)
    attention_mask = np.frombuffer(mask, dtype=np.uint8).reshape(rows, length)
    return _run_batch(batch_id, rows, backend.embed_texts, input_ids, attention_mask)


def _run_batch(batch_id: int, rows: int, embed, *arrays: np.ndarray) -> list:
    started = time.monotonic()
    try:
        vectors = np.ascontiguousarray(embed(*arrays), dtype=np.float32)
        return [batch_id, True, vectors.tobytes(), vectors.shape[0], vectors.shape[1], started,
                time.monotonic() - started]
    except BackendError as e:  # the runtime's text (torch, ONNX Runtime) goes to the log, never to a client
        log.error("batch %d of %d failed: %s", batch_id, rows, e)
    except Exception:  # keep serving; the client sees a generic message, the log has the detail
        log.exception("batch %d of %d: the model raised", batch_id, rows)
    return [batch_id, False, BATCH_FAILED, 0, 0, started, time.monotonic() - started]


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
    encode, decode = msgspec.msgpack.encode, msgspec.msgpack.decode
    slab: Slab | None = None
    frames = FrameReader(conn)
    try:
        for frame in frames:
            message = decode(frame)
            if message[0] == "attach":
                slab = Slab.attach(message[1], msgspec.convert(message[2], SlabLayout))
                continue
            if message[0] == "text":
                conn.send_bytes(encode(_run_texts(backend, message)))
                continue
            batch_id, slots = message
            pixels, grids = slab.gather(slots)  # type: ignore[union-attr]  (attach comes first)
            conn.send_bytes(encode(_run_batch(batch_id, len(slots), backend.embed_images, pixels, grids)))
    finally:
        frames.close()
        backend.close()
        if slab is not None:
            slab.close()
