"""PreprocessSpec from transformers' slow image processors: geometry per family, errors, and
loading from a saved folder."""

from __future__ import annotations

import msgspec
import pytest
from transformers import (
    BeitImageProcessor,
    BitImageProcessor,
    CLIPImageProcessor,
    ConvNextImageProcessor,
    DeiTImageProcessor,
    SiglipImageProcessor,
    ViTImageProcessor,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from iei.preprocess.spec import PreprocessSpec, load_spec, make_spec, spec_from_processor


def test_vit_fixed_resize_without_crop():
    p = ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    spec = spec_from_processor(p)
    assert (spec.resize, spec.resize_height, spec.resize_width, spec.resample) == ("fixed", 224, 224, 2)
    assert (spec.crop_height, spec.crop_width) == (None, None)
    assert (spec.output_height, spec.output_width) == (224, 224)
    assert spec.image_mean == (0.5, 0.5, 0.5) and spec.rescale_factor == pytest.approx(1 / 255)


def test_deit_resize_256_then_crop_224():
    p = DeiTImageProcessor(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    spec = spec_from_processor(p)
    assert (spec.resize, spec.resize_height, spec.resize_width) == ("fixed", 256, 256)
    assert (spec.crop_height, spec.crop_width, spec.output_height) == (224, 224, 224)
    assert spec.resample == 3
    assert spec.image_mean == pytest.approx(IMAGENET_DEFAULT_MEAN)
    assert spec.image_std == pytest.approx(IMAGENET_DEFAULT_STD)


def test_beit_without_center_crop_is_fixed():
    p = BeitImageProcessor(size={"height": 224, "width": 224}, do_center_crop=False, resample=2)
    spec = spec_from_processor(p)
    assert (spec.resize, spec.crop_height, spec.output_width) == ("fixed", None, 224)


@pytest.mark.parametrize(
    ("edge", "crop_pct", "resized"),
    [(224, 0.875, 256), (224, 0.9, 248), (288, 1.0, 288), (160, 0.95, 168)],
)
def test_convnext_below_384_resizes_shortest_edge_then_crops(edge, crop_pct, resized):
    p = ConvNextImageProcessor(size={"shortest_edge": edge}, crop_pct=crop_pct, resample=3)
    spec = spec_from_processor(p)
    assert (spec.resize, spec.shortest_edge) == ("shortest_edge", resized)  # int(edge / crop_pct)
    assert (spec.crop_height, spec.crop_width, spec.output_height) == (edge, edge, edge)


def test_convnext_384_warps_to_square():
    spec = spec_from_processor(ConvNextImageProcessor(size={"shortest_edge": 384}))
    assert (spec.resize, spec.resize_height, spec.resize_width, spec.crop_height) == ("fixed", 384, 384, None)


def test_clip_and_dinov2_shortest_edge_then_crop():
    clip = spec_from_processor(CLIPImageProcessor())
    assert (clip.resize, clip.shortest_edge, clip.crop_height, clip.resample) == ("shortest_edge", 224, 224, 3)
    dino = spec_from_processor(
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                          image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    )
    assert (dino.shortest_edge, dino.crop_height, dino.output_width) == (256, 224, 224)


def test_siglip_fixed():
    spec = spec_from_processor(SiglipImageProcessor(size={"height": 384, "width": 384}))
    assert (spec.resize, spec.output_height, spec.output_width) == ("fixed", 384, 384)


def test_options_are_carried():
    spec = spec_from_processor(ViTImageProcessor(), draft=False, max_image_pixels=1234)
    assert spec.draft is False and spec.max_image_pixels == 1234


def test_spec_round_trips_through_msgpack():
    spec = spec_from_processor(ConvNextImageProcessor(size={"shortest_edge": 224}))
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=PreprocessSpec) == spec


def test_unsupported_processor_class_is_named():
    class FancyImageProcessor:
        pass

    with pytest.raises(ValueError, match="FancyImageProcessor"):
        spec_from_processor(FancyImageProcessor())


def test_unsupported_setting_is_named():
    p = ViTImageProcessor()
    p.do_pad = True
    with pytest.raises(ValueError, match="ViTImageProcessor.*do_pad"):
        spec_from_processor(p)


def test_shortest_edge_without_crop_has_no_fixed_output():
    with pytest.raises(ValueError, match="CLIPImageProcessor"):
        spec_from_processor(CLIPImageProcessor(do_center_crop=False))


def test_make_spec_rejects_half_a_crop():
    with pytest.raises(ValueError):
        make_spec(resize="fixed", resample=2, resize_height=8, resize_width=8, crop_height=4)


@pytest.mark.parametrize(
    "processor",
    [DeiTImageProcessor(), ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875), CLIPImageProcessor()],
    ids=["deit", "convnext", "clip"],
)
def test_load_spec_from_saved_folder(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    assert load_spec(str(tmp_path)) == spec_from_processor(processor)
