"""`iei embed` end to end: a real run of the command on real (tiny, random-weight) models, its
vectors compared with what a running server returns for the same images."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import SEED_IMAGES
from tests.server_process import REPO


def run_embed(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "iei", "embed", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout, check=False)


def summary(result: subprocess.CompletedProcess) -> tuple[int, int, int]:
    """(embedded, failed, already in OUT) from the last line the command printed."""
    match = re.search(r"(\d+) embedded, (\d+) failed, (\d+) already in", result.stdout)
    assert match, f"no summary line:\n{result.stdout}\n{result.stderr}"
    return tuple(int(n) for n in match.groups())


def served_vectors(server, paths: list[Path], **fields) -> np.ndarray:
    inputs = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    response = httpx.post(server.url + "/embed", json={"inputs": inputs, **fields}, timeout=60)
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


def model_flags(model_dir: Path) -> list[str]:
    return ["--model", str(model_dir), "--preprocess-workers", "2", "--backend-threads", "1", "--no-progress"]


@pytest.mark.slow
def test_folder_to_parquet_equals_the_server_skips_bad_files_and_resumes(tmp_path, tiny_model, vit_server):
    images = tmp_path / "photos"
    (images / "nested").mkdir(parents=True)
    for source in SEED_IMAGES[:3]:
        shutil.copy(source, images / source.name)
    shutil.copy(SEED_IMAGES[3], images / "nested" / SEED_IMAGES[3].name)
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    out, errors = tmp_path / "vectors", tmp_path / "errors.jsonl"

    first = run_embed(str(images), "--output", str(out), "--errors", str(errors), *model_flags(tiny_model("vit")))
    assert first.returncode == 0, first.stderr
    assert summary(first) == (4, 1, 0)
    assert f"skipped {images / 'broken.jpg'}: not a decodable image" in first.stderr
    assert [json.loads(line)["path"] for line in errors.read_text().splitlines()] == [str(images / "broken.jpg")]

    table = pq.read_table(out).sort_by("path")
    paths = [Path(p) for p in table.column("path").to_pylist()]
    assert sorted(p.name for p in paths) == sorted(s.name for s in SEED_IMAGES[:4])
    assert set(table.column("model").to_pylist()) == {str(tiny_model("vit"))}
    assert set(table.column("dims").to_pylist()) == {32}
    offline = np.array(table.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(offline, served_vectors(vit_server, paths), rtol=0, atol=1e-6)

    for source in SEED_IMAGES[4:]:  # the library grew: a rerun embeds only the new files
        shutil.copy(source, images / source.name)
    second = run_embed(str(images), "--output", str(out), *model_flags(tiny_model("vit")))
    assert second.returncode == 0, second.stderr
    assert summary(second) == (2, 1, 4)
    assert sorted(Path(p).name for p in pq.read_table(out).column("path").to_pylist()) == sorted(s.name for s in SEED_IMAGES)


@pytest.mark.slow
def test_csv_column_to_npy_with_dimensions_and_no_normalize(tmp_path, tiny_model, vit_server):
    listing = tmp_path / "photos.csv"
    with listing.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "file"])
        writer.writerows([(i, str(p)) for i, p in enumerate(SEED_IMAGES[:3])])
        writer.writerow([9, str(tmp_path / "missing.png")])
    out = tmp_path / "vectors.npy"
    result = run_embed(str(listing), "--column", "file", "--output", str(out), "--dimensions", "16", "--no-normalize",
                       *model_flags(tiny_model("vit")))
    assert result.returncode == 0, result.stderr
    assert summary(result) == (3, 1, 0)
    assert "missing.png: no such file" in result.stderr
    index = [json.loads(line) for line in (tmp_path / "vectors.index.jsonl").read_text().splitlines()]
    rows = np.load(out)
    assert rows.shape == (3, 16) and [e["row"] for e in index] == [0, 1, 2]
    expected = served_vectors(vit_server, [Path(e["path"]) for e in index], dimensions=16, normalize=False)
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-5)


def test_a_run_that_cannot_start_says_why(tmp_path):
    result = run_embed(str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "cannot embed" in result.stderr and "neither a folder nor a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_resuming_into_another_models_output_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    shutil.copy(SEED_IMAGES[0], tmp_path / "photos")
    out = tmp_path / "vectors.npy"
    out.write_bytes(b"\x93NUMPY\x01\x00" + (118).to_bytes(2, "little")
                    + repr({"descr": "<f4", "fortran_order": False, "shape": (0, 8)}).ljust(117).encode() + b"\n")
    (tmp_path / "vectors.index.jsonl").write_text("")
    np.load(out)  # a valid, empty array
    (tmp_path / "vectors.index.jsonl").write_text('{"row": 0, "path": "x", "model": "someone/else"}\n')
    with out.open("ab") as f:
        f.write(np.zeros(8, dtype=np.float32).tobytes())
    result = run_embed(str(tmp_path / "photos"), "--output", str(out), "--model", "google/vit-base-patch16-224",
                       "--load-format", "dummy")
    assert result.returncode == 2
    assert "holds vectors of someone/else" in result.stderr and "Traceback" not in result.stderr
