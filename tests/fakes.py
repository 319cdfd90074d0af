"""A deterministic fake backend and an in-process real HTTP server, for HTTP-layer behaviour that a
real model cannot be made to show on demand (slowness, failures)."""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import uvicorn

from backends.base import BackendError, ModelInfo
from iei.config import Settings
from iei.engine import EmbeddingEngine
from iei.model_runner import ThreadRunner
from iei.preprocess.spec import make_spec
from iei.server import create_app
from tests.server_process import free_port, require_slow_test

SPEC = make_spec(resize="fixed", resample=2, resize_height=32, resize_width=32)


class FakeBackend:
    """Embeds an image as its per-channel pixel means, repeated to `dim`. Can be slowed, failed or held.

    `gated=True`: each batch waits for `release` (a threading.Event the test sets), so a test can hold the
    model busy for exactly as long as it needs, with no timing. `entered` is set when a batch starts."""

    def __init__(self, dim: int = 6, delay_s: float = 0.0, gated: bool = False) -> None:
        self.info = ModelInfo(model_id="fake", model_sha=None, model_type="fake", backend="torch", device="cpu",
                              dtype="float32", pooling="mean", embedding_dim=dim, image_size=(32, 32))
        self.delay_s = delay_s
        self.fail = False
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()
        self.handed_over = 0  # batches the batcher has handed to the runner (counted by FakeRunner)
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def embed_images(self, pixels: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        self.batch_sizes.append(len(pixels))
        self.entered.set()
        if not self.release.wait(60):
            raise BackendError("the test never released the gated fake backend")
        time.sleep(self.delay_s)
        if self.fail:
            raise BackendError(f"fake failure on a batch of {len(pixels)}")
        means = pixels.mean(axis=(2, 3)) / 255.0  # uint8 pixels from the slab
        return np.tile(means, (1, self.info.embedding_dim // 3)).astype(np.float32) + 1.0

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


class FakeRunner(ThreadRunner):
    """ThreadRunner that counts the batches handed over (on the event loop), so a test can wait until the
    batcher's prefetch slot is taken instead of sleeping."""

    def run(self, slots: list[int]):
        self.backend.handed_over += 1
        return super().run(slots)


@contextmanager
def serve_engine(backend: FakeBackend, **settings_changes) -> Iterator[str]:
    """Run a real uvicorn server for `backend` on 127.0.0.1 in a thread; yields its base URL."""
    require_slow_test()
    settings_changes.setdefault("batch_db", str(Path(tempfile.mkdtemp(prefix="iei-fake-")) / "batches.sqlite3"))
    settings = Settings(model="fake", preprocess_workers=1, **settings_changes)
    app = create_app(settings, EmbeddingEngine(settings, FakeRunner(backend), SPEC))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_until(condition, what: str, timeout_s: float = 30.0) -> None:
    """Poll `condition()` until it is true: synchronises a test on state it can observe (a metric, a log
    line). The timeout only turns a hang into a failure; it bounds nothing the test asserts."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def metric(url: str, line_start: str) -> float:
    """The value of the first Prometheus sample of `url`/metrics whose line starts with `line_start` (0 if none)."""
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
