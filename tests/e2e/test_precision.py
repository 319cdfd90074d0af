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


def _vectors(server, seed_base64, text: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    images = httpx.post(server.url + "/embed", json={"inputs": seed_base64}, timeout=120).json()
    texts = httpx.post(server.url + "/embed", json={"inputs": TEXTS, "modality": "text"}, timeout=120).json() \
        if text else []
    return np.array(images), np.array(texts), httpx.get(server.url + "/info").json()


# The README's default model (vit-base shape, random weights), where bfloat16 pays off on a CPU with bf16
# units; and a tiny CLIP for the text tower (a tiny model may run float32: bf16 is rarely faster there).
@pytest.mark.parametrize("model", ["vit-base", "tiny-clip"])
def test_auto_serves_vectors_within_the_parity_bound_of_float32(model, tiny_model, seed_base64, server_logs):
    if model == "vit-base":
        flags: tuple[str, ...] = ("--load-format", "dummy", "--preprocess-workers", "1", "--max-batch-size", "8")
        env = {"IMAGE_EMBEDDING_MODEL": ""}
    else:
        flags, env = ("--model", str(tiny_model("clip")), "--preprocess-workers", "1", "--backend-threads", "1"), {}
    text = model == "tiny-clip"
    with running_server(*flags, "--dtype", "float32", log_dir=server_logs, env=env) as server:
        images32, texts32, info32 = _vectors(server, seed_base64, text)
    with running_server(*flags, "--dtype", "auto", log_dir=server_logs, env=env) as server:
        images, texts, info = _vectors(server, seed_base64, text)
        log = server.log()
    assert info32["model_dtype"] == "float32" and info32["model_dtype_reason"] == "float32: requested"
    unit = bf16_unit(cpu_flags())  # this host's real flags: the server process reads them
    if unit is not None:
        assert info["model_dtype"] in ("bfloat16", "float32")  # float32 if the probe found it inexact or slower
        assert info["model_dtype_reason"].startswith(("bfloat16: CPU has " + unit, "float32: bfloat16"))
    else:
        assert info["model_dtype"] == "float32"
        assert info["model_dtype_reason"].startswith("float32: the CPU has no bf16 units")
    assert f"precision {info['model_dtype_reason']}" in log
    assert min_cosine(images32, images) >= PARITY_MIN_COSINE
    if text:
        assert min_cosine(texts32, texts) >= PARITY_MIN_COSINE
