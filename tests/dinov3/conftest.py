from __future__ import annotations

import pytest

from tests.preprocess.images import SEED_DIR, SEEDS


@pytest.fixture(scope="session")
def seeds() -> dict[str, bytes]:
    assert SEEDS, f"no seed images under {SEED_DIR}"
    return {path.stem: path.read_bytes() for path in SEEDS}
