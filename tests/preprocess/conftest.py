"""Fixtures of the preprocessing tests: the synthetic JPEGs and the seed images, built once."""

from __future__ import annotations

import pytest

from tests.preprocess.images import JPEGS, SEED_DIR, SEEDS


@pytest.fixture(scope="session")
def jpegs() -> dict[str, bytes]:
    return {name: make() for name, make in JPEGS.items()}


@pytest.fixture(scope="session")
def seeds() -> dict[str, bytes]:
    assert SEEDS, f"no seed images under {SEED_DIR}"
    return {path.stem: path.read_bytes() for path in SEEDS}
