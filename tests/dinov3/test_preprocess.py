"""DINOv3's fast-only image processor reproduced without torchvision: IEI's uint8 pixels against a torch reference
built from the processor's config (rescale, antialiased bilinear `interpolate`, crop), on the seed images and on
synthetic images of several sizes; and the settings IEI refuses rather than approximates."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoImageProcessor

from iei.models import catalog_dir
from iei.preprocess.fast_processors import FAST_ONLY_DEFAULTS, spec_from_fast_config
from iei.preprocess.image import prepare_image, prepare_pixels
from iei.preprocess.spec import load_spec
from tests.dinov3.reference import pixel_values, processor_config, resized_levels

# Max |IEI - torch| in 8-bit levels: IEI rounds the float resize once into the uint8 slab (<= 0.5) and Pillow's
# float resampler differs from torch's by <= 0.003 (measured: docs/models.md#dinov3).
PIXEL_TOLERANCE = 0.51
# (width, height): downscales of both kinds, the model's own size, upscales, extreme aspect ratios, tiny
SIZES = [(1024, 768), (640, 480), (300, 200), (224, 224), (100, 150), (37, 501), (2000, 1500), (64, 64), (1, 300), (3, 3),
         (5, 400)]
MODEL_ID = "facebook/dinov3-vitb16-pretrain-lvd1689m"


def _png(width: int, height: int, seed: int) -> bytes:
    """Noise over a gradient: every pixel matters to the resize, so a wrong filter, grid or rounding shows."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 200, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    pixels = np.clip(gradient + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def synthetic() -> dict[str, bytes]:
    return {f"{w}x{h}": _png(w, h, seed=i) for i, (w, h) in enumerate(SIZES)}


@pytest.fixture(scope="module")
def catalog_config() -> dict:
    return processor_config(catalog_dir(MODEL_ID))


def test_the_processor_exists_only_as_a_fast_class_and_the_spec_reads_its_config():
    folder = catalog_dir(MODEL_ID)
    with pytest.raises(ValueError, match="does not have a slow version"):
        AutoImageProcessor.from_pretrained(folder, use_fast=False)
    spec = load_spec(str(folder), draft=False)
    assert (spec.resize, spec.resize_height, spec.resize_width, spec.crop_height) == ("fixed", 224, 224, None)
    assert (spec.resample, spec.float_resize, spec.item_shape) == (2, True, (3, 224, 224))
    assert spec.image_mean == (0.485, 0.456, 0.406) and spec.image_std == (0.229, 0.224, 0.225)


def test_pixels_match_torch_on_the_seed_images(seeds, catalog_config):
    spec = load_spec(str(catalog_dir(MODEL_ID)), draft=False)
    for name, data in seeds.items():
        diff = np.abs(prepare_pixels(data, spec).astype(np.float32) - resized_levels(catalog_config, data))
        assert diff.max() <= PIXEL_TOLERANCE, name
        assert diff.mean() < 0.3, name  # rounding, not a shifted grid: uniform error averages 0.25


def test_pixels_match_torch_on_synthetic_sizes(synthetic, catalog_config):
    spec = load_spec(str(catalog_dir(MODEL_ID)), draft=False)
    for name, data in synthetic.items():
        diff = np.abs(prepare_pixels(data, spec).astype(np.float32) - resized_levels(catalog_config, data))
        assert diff.max() <= PIXEL_TOLERANCE, name


def test_normalised_tensor_is_the_processors_within_the_rounding(seeds, catalog_config):
    spec = load_spec(str(catalog_dir(MODEL_ID)), draft=False)
    data = seeds["bag"]
    want = pixel_values(catalog_config, [data])[0].numpy()
    bound = PIXEL_TOLERANCE / 255 / min(spec.image_std)
    np.testing.assert_allclose(prepare_image(data, spec), want, atol=bound, rtol=0)


def test_pillows_8_bit_resize_would_be_up_to_a_level_off(seeds, catalog_config):
    """Why `float_resize`: Pillow's uint8 resampler rounds between its two passes."""
    spec = load_spec(str(catalog_dir(MODEL_ID)), draft=False)
    eight_bit = spec.__class__(**{**{f: getattr(spec, f) for f in spec.__struct_fields__}, "float_resize": False})
    diff = np.abs(prepare_pixels(seeds["bag"], eight_bit).astype(np.float32) - resized_levels(catalog_config, seeds["bag"]))
    assert diff.max() > 0.75


@pytest.mark.parametrize("settings", [
    # 5x400 resizes to 256 x 20480, over 4 MP: only the region the crop keeps is resized (`_resize_and_crop`)
    {"size": {"shortest_edge": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
    {"size": {"height": 256, "width": 320}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224}},
    {"size": 160, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
])
def test_other_sizes_and_crops_match_torch(settings, synthetic, seeds, tmp_path):
    config = {"image_processor_type": "DINOv3ViTImageProcessorFast", **settings}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    spec = load_spec(str(tmp_path), draft=False)
    reference = processor_config(tmp_path)
    if isinstance(reference["size"], int):  # get_size_dict with default_to_square
        reference["size"] = {"height": reference["size"], "width": reference["size"]}
    for name, data in [*synthetic.items(), ("bag", seeds["bag"])]:
        if name == "1x300" and "shortest_edge" in reference["size"]:
            continue  # 256 x 76800: a valid but pointless reference to compute (5x400 takes the same path)
        got = prepare_pixels(data, spec).astype(np.float32)
        want = resized_levels(reference, data)
        assert got.shape == want.shape, name
        assert np.abs(got - want).max() <= PIXEL_TOLERANCE, name


@pytest.mark.parametrize("settings, message", [
    ({"resample": 3}, "resample=3 is not supported"),
    ({"size": {"shortest_edge": 224, "longest_edge": 512}}, "size .* is not supported"),
    ({"size": {"shortest_edge": 224}}, "varies per image"),
    ({"do_resize": False}, "do_resize=False"),
    ({"do_center_crop": True, "crop_size": {"height": 256, "width": 256}}, "larger than the resized image"),
    ({"do_pad": True}, "do_pad=True"),
])
def test_settings_it_cannot_reproduce_are_refused(settings, message):
    config = {"image_processor_type": "DINOv3ViTImageProcessorFast", **settings}
    with pytest.raises(ValueError, match=f"DINOv3ViTImageProcessorFast.*{message}"):
        spec_from_fast_config(config)


def test_defaults_are_the_classes(tmp_path):
    """A config that names only the class gets transformers' class attributes (224 x 224 bilinear, ImageNet)."""
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "DINOv3ViTImageProcessorFast"}))
    spec = load_spec(str(tmp_path))
    defaults = FAST_ONLY_DEFAULTS["DINOv3ViTImageProcessorFast"]
    assert (spec.resize_height, spec.resize_width) == (224, 224) and spec.image_mean == defaults["image_mean"]


def test_another_fast_only_processor_is_refused_by_name(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Sam2ImageProcessorFast"}))
    with pytest.raises(ValueError, match="unsupported image processor Sam2ImageProcessorFast .*only as a torchvision"):
        load_spec(str(tmp_path))
