"""The README's server command: the default model (vit-base shape) with random weights, offline."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.server_process import running_server

pytestmark = pytest.mark.slow


def test_default_model_dummy_serves_the_original_request(seed_base64, server_logs):
    with running_server("--load-format", "dummy", "--preprocess-workers", "1", "--max-batch-size", "4",
                        log_dir=server_logs, env={"IMAGE_EMBEDDING_MODEL": ""}) as server:
        vectors = httpx.post(server.url + "/embed", json={"inputs": seed_base64[:2]}, timeout=120).json()
        info = httpx.get(server.url + "/info").json()
        log = server.log()
    assert np.array(vectors).shape == (2, 768)
    assert info["model_id"] == "google/vit-base-patch16-224" and info["random_weights"] is True
    assert "RANDOM WEIGHTS" in log
