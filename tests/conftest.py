from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.model_factory import make_tiny_model
from tests.server_process import CURRENT_TEST, ServerProcess, running_server

SEED_IMAGES = sorted((Path(__file__).resolve().parents[2] / "shared" / "testdata" / "seed-images").glob("*.png"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    CURRENT_TEST["item"] = item  # read by tests.server_process.require_slow_test, before fixtures start


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    CURRENT_TEST["item"] = None  # session fixtures closing after the last test are not a test's doing


@pytest.fixture(scope="session", autouse=True)
def host_without_bf16_units() -> Iterator[None]:
    """Tests compare vectors with float32 references within 1e-5, so they run as if the CPU had no bf16
    units: `--dtype auto` then means float32 on every host. In this process the flags are faked; servers
    and `iei embed` runs started by tests inherit IEI_DTYPE=float32 (`running_server` sets it too). Tests of
    `auto` fake the flags themselves or pass `--dtype auto`, which beats the environment."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("backends.precision.host_flags", frozenset)
        patch.setenv("IEI_DTYPE", os.environ.get("IEI_DTYPE", "float32"))
        yield


@pytest.fixture(scope="session")
def seed_images() -> list[bytes]:
    assert len(SEED_IMAGES) == 6, "expected the six seed images in ../shared/testdata/seed-images"
    return [p.read_bytes() for p in SEED_IMAGES]


@pytest.fixture(scope="session")
def seed_base64(seed_images) -> list[str]:
    return [base64.b64encode(b).decode() for b in seed_images]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Callable[[str], Path]:
    """family -> folder of a tiny random-weight model, built once per session."""
    root = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny_model(family, root)
        return built[family]

    return get


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def vit_server(tiny_model, server_logs) -> Iterator[ServerProcess]:
    """One tiny-ViT server shared by the contract tests (small limits so limit tests stay cheap)."""
    with running_server(
        "--model", str(tiny_model("vit")), "--preprocess-workers", "2", "--max-batch-delay-ms", "5",
        "--payload-limit", str(4 * 1024 * 1024), "--max-client-batch-size", "16", "--backend-threads", "1",
        log_dir=server_logs,
    ) as server:
        yield server


@pytest.fixture(scope="session")
def clip_server(tiny_model, server_logs) -> Iterator[ServerProcess]:
    """One tiny-CLIP server (images and texts) for the client-compatibility tests and the visual-search example."""
    with running_server(
        "--model", str(tiny_model("clip")), "--preprocess-workers", "1", "--max-batch-delay-ms", "5",
        "--backend-threads", "1", log_dir=server_logs,
    ) as server:
        yield server
