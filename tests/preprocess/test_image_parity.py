"""prepare_image against transformers' slow processors (max abs difference 1e-4 on the pixel
tensor), and the JPEG draft path against the exact one."""

from __future__ import annotations

import io

import msgspec
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from transformers import AutoImageProcessor

import iei.preprocess.image as image_module
from iei.models import catalog_dir
from iei.preprocess.image import prepare_image
from iei.preprocess.spec import make_spec, spec_from_processor
from tests.preprocess.images import PROCESSORS, encode, reference, synthetic_photo


# Draft tolerance, on the normalised tensor, measured on synthetic photos (gradients, shapes,
# blur, noise; JPEG q90) at 1024x768 and 4000x3000 for ViT, ConvNeXt and CLIP specs: mean abs
# diff 0.003-0.011, cosine >= 0.9998. Bounds have ~2x headroom; 0.02 is about 1-2.5 grey levels
# on average (std 0.229-0.5) — well below what changes an embedding.
DRAFT_MEAN_ABS_DIFF = 0.02
DRAFT_MIN_COSINE = 0.999


@pytest.mark.parametrize("family", PROCESSORS)
def test_matches_transformers_on_seed_images(family, seeds):
    processor = PROCESSORS[family]()
    spec = spec_from_processor(processor, draft=False)
    for name, data in seeds.items():
        got = prepare_image(data, spec)
        assert got.dtype == np.float32 and got.shape == (3, spec.output_height, spec.output_width)
        np.testing.assert_allclose(got, reference(processor, data), atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("family", PROCESSORS)
def test_matches_transformers_on_jpegs(family, jpegs):
    processor = PROCESSORS[family]()
    spec = spec_from_processor(processor, draft=False)
    for name, data in jpegs.items():
        np.testing.assert_allclose(prepare_image(data, spec), reference(processor, data), atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("family", PROCESSORS)
def test_matches_processor_saved_and_reloaded(family, seeds, jpegs, tmp_path):
    PROCESSORS[family]().save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path, use_fast=False)
    spec = spec_from_processor(processor, draft=False)
    for data in (seeds["bag"], jpegs["exif6-800x600"]):
        np.testing.assert_allclose(prepare_image(data, spec), reference(processor, data), atol=1e-4, rtol=0)


@pytest.mark.parametrize("model_id", ["openai/clip-vit-base-patch32", "google/siglip-base-patch16-224",
                                      "facebook/dinov2-small"])
def test_retrieval_catalog_processors_match_transformers(model_id, seeds, jpegs):
    """What we serve for CLIP (shortest edge 224 bicubic + crop + CLIP mean/std), SigLIP (fixed 224) and DINOv2
    (shortest edge 256 + crop 224), read from the bundled hub files."""
    processor = AutoImageProcessor.from_pretrained(catalog_dir(model_id), use_fast=False)
    spec = spec_from_processor(processor, draft=False)
    for name, data in {**seeds, **jpegs}.items():
        np.testing.assert_allclose(prepare_image(data, spec), reference(processor, data), atol=1e-4, rtol=0, err_msg=name)


def test_exif_orientation_6_is_applied(jpegs):
    spec = make_spec(resize="fixed", resample=2, resize_height=60, resize_width=80, draft=False)
    data = jpegs["exif6-800x600"]  # stored 800 wide, shown 600 wide
    with_exif = prepare_image(data, spec)
    stored = Image.open(io.BytesIO(data))
    rotated = encode(stored.transpose(Image.ROTATE_270), "PNG")
    np.testing.assert_allclose(with_exif, prepare_image(rotated, spec), atol=1e-6)


def test_extreme_aspect_ratio_resizes_only_the_cropped_part():
    # 4 x 300 with a 256 shortest edge is 256 x 19200 before the crop: over the full-resize cap,
    # so only the kept region is resized. Close to transformers, not bit-exact (Pillow rounding).
    processor = PROCESSORS["dinov2"]()
    column = np.linspace(0, 255, 300)[:, None, None] + np.array([0, 40, 80])[None, None, :]
    pixels = np.broadcast_to(column, (300, 4, 3)) + np.random.default_rng(0).normal(0, 3, (300, 4, 3))
    data = encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), "PNG")
    got = prepare_image(data, spec_from_processor(processor))
    assert np.abs(got - reference(processor, data)).max() < 0.05  # about 2 grey levels


def test_writes_into_given_buffer(seeds):
    spec = spec_from_processor(PROCESSORS["vit"]())
    batch = np.zeros((2, 3, 224, 224), dtype=np.float32)
    result = prepare_image(seeds["coat"], spec, out=batch[1])
    assert np.shares_memory(result, batch) and np.array_equal(batch[1], prepare_image(seeds["coat"], spec))
    assert not batch[0].any()
    with pytest.raises(ValueError):
        prepare_image(seeds["coat"], spec, out=np.zeros((3, 224, 223), dtype=np.float32))


# --- JPEG draft (DCT downscale) -------------------------------------------------------------


@pytest.fixture(scope="module")
def large_jpegs() -> dict[str, bytes]:
    return {"1024x768": synthetic_photo(1024, 768, seed=11), "4000x3000": synthetic_photo(4000, 3000, seed=12)}


@pytest.mark.parametrize("family", ["vit", "convnext", "clip", "deit"])
@pytest.mark.parametrize("size", ["1024x768", "4000x3000"])
def test_draft_stays_within_tolerance(family, size, large_jpegs):
    exact_spec = spec_from_processor(PROCESSORS[family](), draft=False)
    exact = prepare_image(large_jpegs[size], exact_spec)
    drafted = prepare_image(large_jpegs[size], msgspec.structs.replace(exact_spec, draft=True))
    assert not np.array_equal(exact, drafted), "draft was expected to be used"
    assert np.abs(exact - drafted).mean() < DRAFT_MEAN_ABS_DIFF
    cosine = float(exact.ravel() @ drafted.ravel() / np.linalg.norm(exact) / np.linalg.norm(drafted))
    assert cosine >= DRAFT_MIN_COSINE


@pytest.mark.parametrize("size", [(400, 300), (447, 600), (224, 224)])
def test_draft_skipped_when_source_is_not_much_larger(size, monkeypatch):
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", lambda self, *a: calls.append(a) or original(self, *a))
    data = synthetic_photo(*size, seed=13)
    spec = spec_from_processor(PROCESSORS["vit"]())
    assert np.array_equal(prepare_image(data, spec), prepare_image(data, msgspec.structs.replace(spec, draft=False)))
    assert calls == []


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize(
    "spec",
    [
        make_spec(resize="fixed", resample=2, resize_height=100, resize_width=400),
        make_spec(resize="fixed", resample=2, resize_height=400, resize_width=100),
        make_spec(resize="shortest_edge", resample=3, shortest_edge=150, crop_height=150, crop_width=150),
    ],
    ids=["wide", "tall", "shortest-edge"],
)
def test_draft_never_decodes_below_the_resize_size(spec, orientation, monkeypatch):
    seen = []
    original = image_module._resize_and_crop
    monkeypatch.setattr(
        image_module, "_resize_and_crop", lambda img, src, s: seen.append((img.size, src)) or original(img, src, s)
    )
    prepare_image(synthetic_photo(4000, 1000, seed=14, exif_orientation=orientation), spec)
    (decoded_w, decoded_h), (src_w, src_h) = seen[0]
    assert (src_w, src_h) == ((1000, 4000) if orientation in (6, 8) else (4000, 1000))
    assert decoded_w < src_w, "draft was expected to be used"
    res_w, res_h = image_module._resize_size(src_w, src_h, (decoded_w, decoded_h), spec)
    assert decoded_w >= res_w and decoded_h >= res_h


