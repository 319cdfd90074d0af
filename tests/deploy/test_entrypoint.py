"""docker/entrypoint.sh run outside Docker: it starts a real `iei serve`, its healthcheck tells a
healthy server from none, and it picks up a model exported into the image at build time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.server_process import REPO, free_port

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"


def entrypoint_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IEI_", "IMAGE_EMBEDDING_MODEL", "MODEL_ID"))}
    return {**env, "IEI_PYTHON": sys.executable, "IEI_PORT": str(port), "IEI_HOST": "127.0.0.1",
            "HF_HUB_OFFLINE": "1", **extra}


def healthcheck(port: int) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ENTRYPOINT), "healthcheck"], env=entrypoint_env(port), capture_output=True,
                          text=True, timeout=30, check=False)


def test_healthcheck_fails_when_nothing_listens():
    result = healthcheck(free_port())
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_other_commands_pass_through():
    result = subprocess.run(["sh", str(ENTRYPOINT), "echo", "hello"], capture_output=True, text=True, timeout=30, check=False)
    assert result.stdout == "hello\n"


@pytest.mark.slow
def test_default_command_serves_and_the_healthcheck_passes(tiny_model, tmp_path):
    port = free_port()
    baked = tmp_path / "baked"  # no export here: the IEI_MODEL given is served
    log = (tmp_path / "server.log").open("wb")
    env = entrypoint_env(port, IEI_MODEL=str(tiny_model("vit")), IEI_BAKED_MODEL=str(baked),
                         IEI_PREPROCESS_WORKERS="1", IEI_BACKEND_THREADS="1")
    server = subprocess.Popen(["sh", str(ENTRYPOINT)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while healthcheck(port).returncode != 0:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "not healthy after 120 s"
            time.sleep(0.5)
        info = httpx.get(f"http://127.0.0.1:{port}/info").json()
        assert info["model_id"] == str(tiny_model("vit")) and info["backend"] == "torch"
    finally:
        server.send_signal(signal.SIGINT)  # exec'd: the signal reaches iei itself
        assert server.wait(timeout=30) == 0


def test_a_baked_export_is_served_unless_a_model_is_named(tmp_path):
    baked = tmp_path / "baked"
    baked.mkdir()
    (baked / "iei-export.json").write_text("{}")
    # A stand-in interpreter that prints what `iei serve` would be started with.
    show = tmp_path / "show-env"
    show.write_text('#!/bin/sh\necho "model=$IEI_MODEL backend=${IEI_BACKEND:-default}" "$@"\n')
    show.chmod(0o755)
    env = entrypoint_env(0, IEI_BAKED_MODEL=str(baked), IEI_PYTHON=str(show))

    def started_with(*args: str, **extra: str) -> str:
        return subprocess.run(["sh", str(ENTRYPOINT), *args], env={**env, **extra}, capture_output=True, text=True,
                              timeout=30, check=False).stdout.strip()

    assert started_with() == f"model={baked} backend=onnx -m iei serve"
    assert started_with("--port", "9000") == f"model={baked} backend=onnx -m iei serve --port 9000"
    assert started_with("embed", "in", "-o", "out") == f"model={baked} backend=onnx -m iei embed in -o out"
    assert started_with(IEI_MODEL="org/other") == "model=org/other backend=default -m iei serve"
    assert started_with(IMAGE_EMBEDDING_MODEL="org/other") == "model= backend=default -m iei serve"
    assert started_with("export", "m", "--output", "x") == "model= backend=default -m iei export m --output x"
