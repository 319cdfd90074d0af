"""Every model family of the original server, end to end: the six seed images give the vectors that
transformers' own processor and model give (the original server's embedding definition)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.e2e.reference import cosine, reference_embeddings
from tests.model_factory import FAMILIES
from tests.server_process import running_server

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_transformers(family, tiny_model, seed_base64, seed_images, server_logs):
    model_dir = tiny_model(family)
    expected = reference_embeddings(model_dir, seed_images)
    with running_server("--model", str(model_dir), "--preprocess-workers", "1", "--backend-threads", "1",
                        log_dir=server_logs) as server:
        response = httpx.post(server.url + "/embed", json={"inputs": seed_base64, "normalize": False}, timeout=60)
        info = httpx.get(server.url + "/info").json()
    assert response.status_code == 200, response.text
    vectors = np.array(response.json())
    assert vectors.shape == expected.shape
    assert cosine(vectors, expected).min() >= 0.9999
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    assert info["embedding_dim"] == expected.shape[1]
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
