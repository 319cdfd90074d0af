from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

# (width, height): landscape, portrait, extreme portrait (a one-column grid), square, panorama, tiny
SIZES = [(640, 480), (100, 1000), (16, 2048), (224, 224), (1200, 500), (17, 23)]


def png(width: int, height: int, seed: int = 0) -> bytes:
    """A noise image: every pixel matters to the resize, so a wrong filter or grid shows."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def naflex_images() -> list[bytes]:
    return [png(w, h, seed=i) for i, (w, h) in enumerate(SIZES)]
