"""`iei serve --dtype auto` on whatever CPU runs the tests: bfloat16 where it has bf16 units, float32
elsewhere, and either way the served vectors stay within the parity bound of float32."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from backends.precision import PARITY_MIN_COSINE, bf16_unit, cpu_flags, min_cosine
from tests.server_process import running_server

pytestmark = pytest.mark.slow

TEXTS = ["a photo of a red boot", "two shoes on a shelf", "a coat"]


def _vectors(server, seed_base64) -> tuple[np.ndarray, np.ndarray, dict]:
    images = httpx.post(server.url + "/embed", json={"inputs": seed_base64}, timeout=120).json()
    texts = httpx.post(server.url + "/embed", json={"inputs": TEXTS, "modality": "text"}, timeout=120).json()
    return np.array(images), np.array(texts), httpx.get(server.url + "/info").json()


def test_auto_serves_vectors_within_the_parity_bound_of_float32(tiny_model, seed_base64, server_logs):
    flags = ("--model", str(tiny_model("clip")), "--preprocess-workers", "1", "--backend-threads", "1")
    with running_server(*flags, "--dtype", "float32", log_dir=server_logs) as server:
        images32, texts32, info32 = _vectors(server, seed_base64)
    with running_server(*flags, "--dtype", "auto", log_dir=server_logs) as server:
        images, texts, info = _vectors(server, seed_base64)
        log = server.log()
    assert info32["model_dtype"] == "float32" and info32["model_dtype_reason"] == "float32: requested"
    unit = bf16_unit(cpu_flags())  # this host's real flags: the server process reads them
    if unit is not None:
        assert info["model_dtype"] in ("bfloat16", "float32")  # float32 only if the probe said no
        assert info["model_dtype_reason"].startswith(("bfloat16: CPU has " + unit, "float32: bfloat16"))
    else:
        assert info["model_dtype"] == "float32"
        assert info["model_dtype_reason"].startswith("float32: the CPU has no bf16 units")
    assert f"precision {info['model_dtype_reason']}" in log
    assert min_cosine(images32, images) >= PARITY_MIN_COSINE
    assert min_cosine(texts32, texts) >= PARITY_MIN_COSINE
