"""`iei embed --engine ray` on a local Ray instance (2 CPUs): the same vectors as the in-process
engine, bad files reported and skipped. (Resuming is the writer's job, shared by both engines and
tested with the in-process one: a Ray start costs tens of seconds here.)"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.bulk.test_embed_command import model_flags, run_embed, summary
from tests.conftest import SEED_IMAGES

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def ray_installed():
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("Ray is missing: pip install 'iei[ray]' (scripts/install.sh installs it)")


def vectors_by_path(out) -> dict[str, np.ndarray]:
    table = pq.read_table(out)
    return dict(zip(table.column("path").to_pylist(), np.array(table.column("vector").to_pylist(), dtype=np.float32)))


def test_ray_engine_gives_the_in_process_engines_vectors(tmp_path, tiny_model):
    images = tmp_path / "photos"
    images.mkdir()
    for source in SEED_IMAGES[:5]:
        shutil.copy(source, images / source.name)
    (images / "broken.png").write_bytes(b"\x89PNG but not really")
    flags = model_flags(tiny_model("convnext"))

    local = run_embed(str(images), "--output", str(tmp_path / "local"), *flags)
    assert local.returncode == 0, local.stderr
    ray = run_embed(str(images), "--output", str(tmp_path / "ray"), "--engine", "ray", "--ray-num-cpus", "2",
                    "--ray-decode-concurrency", "1", "--ray-decode-batch-size", "2", *flags, timeout=300)
    assert ray.returncode == 0, ray.stderr
    assert summary(ray) == summary(local) == (5, 1, 0)
    assert f"skipped {images / 'broken.png'}: not a decodable image" in ray.stderr

    from_ray, from_local = vectors_by_path(tmp_path / "ray"), vectors_by_path(tmp_path / "local")
    assert sorted(from_ray) == sorted(from_local) and len(from_ray) == 5
    for path, vector in from_local.items():
        np.testing.assert_allclose(from_ray[path], vector, rtol=0, atol=1e-6)
        assert abs(np.linalg.norm(vector) - 1) < 1e-5
