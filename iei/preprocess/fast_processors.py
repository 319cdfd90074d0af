"""Image processors that transformers ships only as torchvision-based "Fast" classes (DINOv3's
`DINOv3ViTImageProcessorFast`), reproduced from their `preprocessor_config.json`.

torchvision does not import beside the CPU torch this project runs on, so these classes cannot even be
instantiated; and IEI's workers run no torch anyway. What such a processor does, read from transformers 4.57's
`image_processing_dinov3_vit_fast.py` and `BaseImageProcessorFast`:

    uint8 RGB tensor -> x * rescale_factor (float32) -> torchvision resize = torch.nn.functional.interpolate(
    mode="bilinear", align_corners=False, antialias=True) -> optional centre crop -> (x - mean) / std

The spec reproduces it with `float_resize=True` (`iei.preprocess.image`): Pillow's 32-bit float resampler is
the same triangle filter on the same sample grid as torch's antialiased kernel (torch ported it from Pillow)
and computes without rounding, so the resized image equals torch's within 0.003 of an 8-bit level; it is then
rounded once into the uint8 slab (at most 0.5 level) and rescaled/normalised by the backend. Resizing is
linear, so rescaling before or after it is the same up to float rounding. Measured bound and the vector
effect: docs/models.md#dinov3.

This module imports transformers only inside its functions (workers import the package too).
"""

from __future__ import annotations

from typing import Any

from iei.preprocess.spec import DEFAULT_MAX_IMAGE_PIXELS, PreprocessSpec, _triple, make_spec

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BILINEAR = 2  # PIL.Image.Resampling.BILINEAR, torchvision's InterpolationMode.BILINEAR

# class name -> its class attributes (the defaults a preprocessor_config.json may leave out), as in
# transformers 4.57: DINOv3ViTImageProcessorFast over BaseImageProcessorFast.
FAST_ONLY_DEFAULTS: dict[str, dict[str, Any]] = {
    "DINOv3ViTImageProcessorFast": {
        "do_resize": True, "size": {"height": 224, "width": 224}, "resample": _BILINEAR,
        "do_center_crop": False, "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": _IMAGENET_MEAN, "image_std": _IMAGENET_STD, "default_to_square": True,
    },
}

# Settings of BaseImageProcessorFast (or its subclasses) that change the output in ways the spec cannot express.
_UNSUPPORTED_FLAGS = ("do_pad", "do_reduce_labels", "do_flip_channel_order", "crop_to_patches")


def read_processor_config(model: str, revision: str | None = None) -> dict[str, Any]:
    """The model's preprocessor_config.json as a dict (hub id through the HF cache, or a local folder).
    Raises whatever transformers raises when there is none (OSError, ValueError)."""
    from transformers.image_processing_base import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(model, revision=revision)
    return config


def is_fast_only(config: dict[str, Any]) -> bool:
    """True when the processor config names a class transformers ships only as a "Fast" one (no class of the
    name without "Fast"): reproduced here, or refused by `spec_from_fast_config` with a message that says so."""
    import transformers

    name = str(config.get("image_processor_type") or "")
    return name in FAST_ONLY_DEFAULTS or (name.endswith("Fast") and not hasattr(transformers, name.removesuffix("Fast")))


def spec_from_fast_config(config: dict[str, Any], *, draft: bool = True,
                          max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> PreprocessSpec:
    """The spec of a fast-only processor from its preprocessor_config.json (`config`). Raises ValueError naming
    the class and the setting for anything it cannot reproduce exactly: another resample than bilinear (bicubic
    overshoots [0, 1], which the uint8 slab would clip), a size other than height+width or shortest_edge, no
    resize, or a crop larger than the resized image (torchvision pads it differently from Pillow)."""
    name = str(config.get("image_processor_type"))
    if name not in FAST_ONLY_DEFAULTS:
        raise ValueError(f"unsupported image processor {name} (transformers has it only as a torchvision-based "
                         f"fast class); fast-only processors IEI reproduces: {', '.join(FAST_ONLY_DEFAULTS)}")
    merged = {**FAST_ONLY_DEFAULTS[name], **{k: v for k, v in config.items() if v is not None}}
    for flag in _UNSUPPORTED_FLAGS:
        if merged.get(flag):
            raise ValueError(f"{name} with {flag}=True is not supported")
    if int(merged["resample"]) != _BILINEAR:
        raise ValueError(f"{name} with resample={merged['resample']} is not supported (IEI reproduces its "
                         "antialiased bilinear resize, resample=2)")
    if not merged["do_resize"]:
        raise ValueError(f"{name} with do_resize=False gives a size that varies per image")
    size = _size_dict(merged["size"], bool(merged["default_to_square"]), name)
    if "height" in size:
        geometry: dict[str, Any] = {"resize": "fixed", "resize_height": int(size["height"]), "resize_width": int(size["width"])}
        smallest = (geometry["resize_height"], geometry["resize_width"])
    else:
        geometry = {"resize": "shortest_edge", "shortest_edge": int(size["shortest_edge"])}
        smallest = (geometry["shortest_edge"],) * 2
    if merged["do_center_crop"]:
        crop = _size_dict(merged["crop_size"], True, name)
        if "height" not in crop:
            raise ValueError(f"{name} crop_size needs height and width, got {merged['crop_size']}")
        if crop["height"] > smallest[0] or crop["width"] > smallest[1]:
            raise ValueError(f"{name} crop_size {crop} is larger than the resized image")
        geometry.update(crop_height=int(crop["height"]), crop_width=int(crop["width"]))
    try:
        return make_spec(
            resample=_BILINEAR, float_resize=True, **geometry,
            do_rescale=bool(merged["do_rescale"]), rescale_factor=float(merged["rescale_factor"]),
            do_normalize=bool(merged["do_normalize"]), image_mean=_triple(merged["image_mean"], name, "image_mean"),
            image_std=_triple(merged["image_std"], name, "image_std"), draft=draft, max_image_pixels=max_image_pixels,
        )
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def _size_dict(size: Any, default_to_square: bool, name: str) -> dict[str, int]:
    """transformers' `get_size_dict` for the forms a fixed-size output allows: an int (square, or the shortest
    edge when not `default_to_square`), {"height", "width"} or {"shortest_edge"}."""
    if isinstance(size, int):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    if isinstance(size, dict):
        if set(size) == {"height", "width"}:
            return {"height": int(size["height"]), "width": int(size["width"])}
        if set(size) == {"shortest_edge"}:
            return {"shortest_edge": int(size["shortest_edge"])}
    raise ValueError(f"{name} size {size} is not supported (need height+width or shortest_edge alone)")

