"""The soak script's CI form: 60 s at saturation, mixed valid and invalid requests, against a real
server (tiny model). Fails on any 5xx, any wrong status, a non-zero exit on SIGTERM, or RSS still
growing (second half's peak > 64 MB above the first half's, across the server, its workers and the model process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.server_process import REPO

pytestmark = pytest.mark.slow


def test_soak_60_seconds(tiny_model, tmp_path):
    report_path = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/soak/soak.py", "--model", str(tiny_model("vit")), "--seconds", "60",
         "--concurrency", "16", "--warmup-s", "15", "--max-rss-growth-mb", "64", "--json", str(report_path),
         "--log", str(tmp_path / "server.log"), "--server-arg=--backend-threads=1"],
        cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "server.log").read_text()[-3000:]
    report = json.loads(report_path.read_text())
    assert report["statuses"].get("200", 0) > 100 and report["problems"] == {}
    assert not any(status.startswith("5") for status in report["statuses"])
