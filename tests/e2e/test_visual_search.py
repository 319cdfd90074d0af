"""examples/visual_search.py, run as a user runs it, against a real tiny-CLIP server: index the seed images
into a local Qdrant database, then search it. Each image finds itself first; a text query returns results
(random weights: its order means nothing); indexing again updates the points instead of adding more."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import SEED_IMAGES
from tests.server_process import REPO

pytest.importorskip("qdrant_client")

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "visual_search.py"


def run_example(server, db, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLE), "--url", server.url, "--db", str(db), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_each_image_finds_itself_and_text_finds_images(clip_server, tmp_path):
    db = tmp_path / "qdrant"
    for _ in range(2):  # the second run must update the same points
        assert f"indexed {len(SEED_IMAGES)} images" in run_example(clip_server, db, "index", str(SEED_IMAGES[0].parent))

    queries = [arg for path in SEED_IMAGES for arg in ("--image", str(path))] + ["--text", "a leather handbag"]
    lines = run_example(clip_server, db, "search", "--json", "--limit", "10", *queries).splitlines()
    answers = [json.loads(line) for line in lines]
    assert [a["kind"] for a in answers] == ["image"] * len(SEED_IMAGES) + ["text"]
    for path, answer in zip(SEED_IMAGES, answers):
        assert answer["results"][0]["path"] == str(path.resolve()), answer
        assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert len(answer["results"]) == len(SEED_IMAGES)  # six points, not twelve
    assert {r["path"] for r in answers[-1]["results"]} == {str(p.resolve()) for p in SEED_IMAGES}


def test_a_server_error_is_one_line_not_a_traceback(clip_server, tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--url", clip_server.url, "--db", str(tmp_path / "q"),
                             "search", "--image", str(EXAMPLE)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.startswith("error: /embed: 422") and "Traceback" not in result.stderr
