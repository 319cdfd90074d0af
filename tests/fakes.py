"""A deterministic fake backend and an in-process real HTTP server, for HTTP-layer behaviour that a
real model cannot be made to show on demand (slowness, failures)."""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import uvicorn

from backends.base import BackendError, ModelInfo
from iei.config import Settings
from iei.engine import EmbeddingEngine
from iei.model_runner import ThreadRunner
from iei.preprocess.spec import make_spec
from iei.server import create_app
from tests.server_process import free_port

SPEC = make_spec(resize="fixed", resample=2, resize_height=32, resize_width=32)


class FakeBackend:
    """Embeds an image as its per-channel pixel means, repeated to `dim`. Can be slowed or failed."""

    def __init__(self, dim: int = 6, delay_s: float = 0.0) -> None:
        self.info = ModelInfo(model_id="fake", model_sha=None, model_type="fake", backend="torch", device="cpu",
                              dtype="float32", pooling="mean", embedding_dim=dim, image_size=(32, 32))
        self.delay_s = delay_s
        self.fail = False
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()

    def embed_images(self, pixels: np.ndarray, grids: np.ndarray | None = None) -> np.ndarray:
        self.batch_sizes.append(len(pixels))
        self.entered.set()
        time.sleep(self.delay_s)
        if self.fail:
            raise BackendError(f"fake failure on a batch of {len(pixels)}")
        means = pixels.mean(axis=(2, 3)) / 255.0  # uint8 pixels from the slab
        return np.tile(means, (1, self.info.embedding_dim // 3)).astype(np.float32) + 1.0

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def serve_engine(backend: FakeBackend, **settings_changes) -> Iterator[str]:
    """Run a real uvicorn server for `backend` on 127.0.0.1 in a thread; yields its base URL."""
    settings_changes.setdefault("batch_db", str(Path(tempfile.mkdtemp(prefix="iei-fake-")) / "batches.sqlite3"))
    settings = Settings(model="fake", preprocess_workers=1, **settings_changes)
    app = create_app(settings, EmbeddingEngine(settings, ThreadRunner(backend), SPEC))
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
