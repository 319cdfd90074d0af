"""SigLIP 2 NaFlex preprocessing against transformers' `Siglip2ImageProcessor`: the grid each image gets, its
patches (exactly, after IEI's per-channel affine), and the slab that carries patches and grids."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from transformers import Siglip2ImageProcessor
from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches

from iei.preprocess.image import max_patches_size, pixel_affine, prepare_patches
from iei.preprocess.spec import spec_from_processor
from iei.slab import Slab, SlabLayout


@pytest.fixture(scope="module", params=[256, 64])
def processor(request):
    return Siglip2ImageProcessor(max_num_patches=request.param)


def test_spec_describes_the_processor(processor):
    spec = spec_from_processor(processor)
    assert spec.variable_grid and spec.item_shape == (processor.max_num_patches, 16 * 16 * 3)
    assert (spec.patch_size, spec.max_num_patches, spec.resample) == (16, processor.max_num_patches, 2)


@pytest.mark.parametrize("max_patches", [256, 64, 1024])
def test_grid_rule_is_transformers(max_patches):
    for height in (1, 7, 16, 100, 333, 768, 1000, 4000):
        for width in (1, 9, 16, 250, 480, 1024, 3000):
            assert max_patches_size(height, width, 16, max_patches) == \
                get_image_size_for_max_num_patches(height, width, 16, max_patches), (height, width)


def test_patches_equal_the_processors(processor, naflex_images):
    spec = spec_from_processor(processor, draft=False)
    scale, offset = (np.float32(v) for v in pixel_affine(spec))
    for data in naflex_images:
        expected = processor(images=Image.open(io.BytesIO(data)), return_tensors="np")
        out = np.full(spec.item_shape, 7, dtype=np.uint8)  # stale bytes from an earlier image must not survive
        rows, cols = prepare_patches(data, spec, out)
        assert (rows, cols) == tuple(expected["spatial_shapes"][0])
        count = rows * cols
        assert int(expected["pixel_attention_mask"][0].sum()) == count
        assert not out[count:].any()
        got = (out[:count].reshape(count, -1, 3).astype(np.float32) * scale + offset).reshape(count, -1)
        np.testing.assert_allclose(got, expected["pixel_values"][0][:count], rtol=0, atol=1e-6)


def test_slab_carries_patches_and_grids():
    layout = SlabLayout(slots=3, item_shape=(4, 12), grids=True)
    owner = Slab.create(layout)
    try:
        reader = Slab.attach(owner.name, layout)
        owner.pixels[1] = 5
        owner.grids[1] = (2, 2)  # type: ignore[index]
        owner.clear(2)
        pixels, grids = reader.gather([1, 2])
        assert pixels.shape == (2, 4, 12) and (pixels[0] == 5).all() and not pixels[1].any()
        assert grids.tolist() == [[2, 2], [1, 1]]  # a cleared slot holds a valid one-patch image
        reader.close()
    finally:
        owner.close()
    fixed = Slab.create(SlabLayout(slots=2, item_shape=(3, 8, 8)))
    try:
        assert fixed.grids is None and fixed.gather([0])[1] is None
    finally:
        fixed.close()
