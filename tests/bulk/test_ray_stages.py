"""The Ray engine's decode stage as a plain function (no Ray): the server's pixels, errors per path."""

from __future__ import annotations

import msgspec
import numpy as np

from iei.bulk.ray_engine import decode_batch
from iei.preprocess.image import prepare_patches, prepare_pixels
from iei.preprocess.spec import load_spec
from tests.conftest import SEED_IMAGES


def test_decode_batch_writes_the_workers_pixels_and_names_each_bad_file(tmp_path, tiny_model):
    spec = load_spec(str(tiny_model("vit")))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    paths = np.array([str(SEED_IMAGES[0]), str(tmp_path / "gone.png"), str(broken), str(SEED_IMAGES[1])], dtype=object)

    out = decode_batch({"path": paths}, msgspec.msgpack.encode(spec))

    assert list(out["error"]) == ["", "no such file", "not a decodable image", ""]
    assert out["pixels"].shape == (4, 3, 224, 224) and out["pixels"].dtype == np.uint8
    np.testing.assert_array_equal(out["pixels"][0], prepare_pixels(SEED_IMAGES[0].read_bytes(), spec))
    np.testing.assert_array_equal(out["pixels"][3], prepare_pixels(SEED_IMAGES[1].read_bytes(), spec))
    assert list(out["path"]) == list(paths)


def test_decode_batch_cuts_naflex_images_into_patches_and_grids(tiny_model):
    spec = load_spec(str(tiny_model("siglip2")))
    paths = np.array([str(p) for p in SEED_IMAGES[:2]], dtype=object)

    out = decode_batch({"path": paths}, msgspec.msgpack.encode(spec))

    assert out["pixels"].shape == (2, *spec.item_shape) and list(out["error"]) == ["", ""]
    for i, path in enumerate(SEED_IMAGES[:2]):
        expected = np.zeros(spec.item_shape, dtype=np.uint8)
        assert tuple(out["grids"][i]) == prepare_patches(path.read_bytes(), spec, expected)
        np.testing.assert_array_equal(out["pixels"][i], expected)
