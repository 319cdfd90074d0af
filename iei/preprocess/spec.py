"""`PreprocessSpec`: everything a preprocessing worker needs to turn image bytes into the model's
pixel tensor, as plain msgspec data (it is msgpack-encoded and sent to worker processes).

It is read once, at startup, from the model's Hugging Face *slow* image processor
(`spec_from_processor`, `load_spec`), reproducing exactly what that processor does:

    resize ("fixed" to H×W, or "shortest_edge" keeping the aspect ratio) → optional centre crop
    → optional rescale (×rescale_factor) → optional normalise ((x - mean) / std) → float32 CHW

This module imports neither PIL nor transformers at import time: workers import it too.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# 50 megapixels: above the 48-50 MP sensors of current phones, below what makes one decode a
# memory hazard (50 MP RGB is 150 MB). Pillow's own bomb check rejects > 2 x 89.5 MP regardless.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

# Raster formats a server may allow (Pillow plugin names). Pillow opens many more, some through
# external programs (EPS runs Ghostscript) or rarely exercised parsers; an image server has no use
# for them. The default allows the formats clients actually send; the rest are opt-in.
DECODABLE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "ICO", "PPM", "TGA", "QOI")
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

# Processor classes whose preprocess is fully described by the spec, by family. Matched on the
# class and its bases by name, so deprecated `*FeatureExtractor` subclasses work too.
_FIXED_ONLY = ("ViTImageProcessor", "SiglipImageProcessor")
_FIXED_THEN_CROP = ("DeiTImageProcessor", "BeitImageProcessor")
_RESIZE_THEN_CROP = ("CLIPImageProcessor", "BitImageProcessor")
_CONVNEXT = ("ConvNextImageProcessor",)
_MAX_PATCHES = ("Siglip2ImageProcessor",)
_SUPPORTED = _FIXED_ONLY + _FIXED_THEN_CROP + _RESIZE_THEN_CROP + _CONVNEXT + _MAX_PATCHES

# Settings that change the output in ways the spec cannot express; truthy means unsupported.
_UNSUPPORTED_FLAGS = ("do_pad", "do_color_quantize", "do_flip_channel_order", "do_thumbnail")


class PreprocessSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How to turn one image into a float32 tensor of shape (3, output_height, output_width).

    resize: "fixed" warps to (resize_height, resize_width); "shortest_edge" scales the shorter
        side to `shortest_edge` and the longer to int(shortest_edge * long / short), as
        transformers' `get_resize_output_image_size(default_to_square=False)`; "none" keeps size.
    resample: a PIL filter number (0 nearest, 2 bilinear, 3 bicubic, 1 lanczos, ...).
    crop_height / crop_width: centre crop after the resize (zero-padded if the image is smaller),
        or None for no crop.
    draft: allow the JPEG decoder to downscale in the DCT domain (faster; not bit-exact).
    jpeg_decoder: "auto" lets simplejpeg decode a draft-scaled baseline JPEG where libjpeg-turbo's M/8
        scales give fewer pixels than Pillow's 1/2, 1/4, 1/8; "pillow" always decodes with Pillow.
    max_image_pixels: images whose header declares more pixels are rejected before decoding.
    formats: the allowed formats (names from DECODABLE_FORMATS); anything else is rejected.
    decode_timeout_s: longest time one image may take to decode and resize (0: no limit).
    """

    resize: Literal["fixed", "shortest_edge", "none", "max_patches"]
    resample: int
    output_height: int
    output_width: int
    resize_height: int | None = None
    resize_width: int | None = None
    shortest_edge: int | None = None
    crop_height: int | None = None
    crop_width: int | None = None
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    draft: bool = True
    jpeg_decoder: Literal["auto", "pillow"] = "auto"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    decode_timeout_s: float = 0.0
    # resize "max_patches" (SigLIP 2 NaFlex): the image keeps its aspect ratio and is resized to the largest
    # multiple of `patch_size` on each side that gives at most `max_num_patches` patches; output_height and
    # output_width are then the nominal square of that many patches (what /info reports).
    patch_size: int | None = None
    max_num_patches: int | None = None
    # Resize on floats and round once, as the torch-based "Fast" processors do (DINOv3's: rescale, then an
    # antialiased bilinear `interpolate` on float tensors; `iei.preprocess.fast_processors`). Pillow's 8-bit
    # resampler rounds between its horizontal and vertical passes (up to 1 level off torch); its float mode
    # is within 0.003 of a level.
    float_resize: bool = False

    @property
    def variable_grid(self) -> bool:
        """True when each image has its own patch grid (the slab then records it beside the pixels)."""
        return self.resize == "max_patches"

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The uint8 array one image becomes: (3, H, W), or for variable grids its patches padded to the
        most the model takes, (max_num_patches, patch_size * patch_size * 3)."""
        if self.variable_grid:
            return (int(self.max_num_patches), int(self.patch_size) ** 2 * 3)  # type: ignore[arg-type]
        return (3, self.output_height, self.output_width)


def make_spec(
    *,
    resize: Literal["fixed", "shortest_edge", "none"],
    resample: int,
    resize_height: int | None = None,
    resize_width: int | None = None,
    shortest_edge: int | None = None,
    crop_height: int | None = None,
    crop_width: int | None = None,
    **rest: Any,
) -> PreprocessSpec:
    """Build a spec, deriving and checking the output size. Raises ValueError when the output
    size would depend on the image (a shortest-edge or no resize without a crop)."""
    if resize == "fixed" and not (resize_height and resize_width):
        raise ValueError("a fixed resize needs resize_height and resize_width")
    if resize == "shortest_edge" and not shortest_edge:
        raise ValueError("a shortest-edge resize needs shortest_edge")
    if (crop_height is None) != (crop_width is None):
        raise ValueError("crop_height and crop_width go together")
    if crop_height is not None and crop_width is not None:
        out_h, out_w = crop_height, crop_width
    elif resize == "fixed":
        out_h, out_w = resize_height, resize_width
    else:
        # Batching needs one tensor shape for every image.
        raise ValueError(f"resize={resize!r} without a centre crop gives a size that varies per image")
    return PreprocessSpec(
        resize=resize,
        resample=int(resample),
        resize_height=resize_height,
        resize_width=resize_width,
        shortest_edge=shortest_edge,
        crop_height=crop_height,
        crop_width=crop_width,
        output_height=int(out_h),
        output_width=int(out_w),
        **rest,
    )


def spec_from_processor(
    processor: Any, *, draft: bool = True, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> PreprocessSpec:
    """Read a transformers *slow* image processor's resolved attributes into a spec.

    Supports ViT (also Swin), DeiT, BEiT, ConvNeXt, CLIP, SigLIP and Bit (also DINOv2) image
    processors. Raises ValueError naming the processor class for any other class or setting.
    """
    name = type(processor).__name__
    family = next(
        (base.__name__ for base in type(processor).__mro__ if base.__name__ in _SUPPORTED), None
    )
    if family is None:
        raise ValueError(
            f"unsupported image processor {name}; supported: {', '.join(_SUPPORTED)}"
        )
    for flag in _UNSUPPORTED_FLAGS:
        if getattr(processor, flag, False):
            raise ValueError(f"{name} with {flag}=True is not supported")
    common = dict(
        do_rescale=bool(processor.do_rescale),
        rescale_factor=float(processor.rescale_factor),
        do_normalize=bool(processor.do_normalize),
        image_mean=_triple(processor.image_mean, name, "image_mean"),
        image_std=_triple(processor.image_std, name, "image_std"),
        draft=draft,
        max_image_pixels=max_image_pixels,
    )
    resample = int(processor.resample)
    if family in _MAX_PATCHES:
        return max_patches_spec(patch_size=int(processor.patch_size), max_num_patches=int(processor.max_num_patches),
                                resample=resample, do_resize=bool(processor.do_resize), name=name, **common)
    if family in _CONVNEXT:
        return _convnext_spec(processor, name, resample, common)
    geometry = _resize_geometry(processor, name) if processor.do_resize else {"resize": "none"}
    if family in _FIXED_ONLY:
        if geometry["resize"] != "fixed":
            raise ValueError(f"{name} needs size with height and width, got {processor.size}")
    elif processor.do_center_crop:
        crop = processor.crop_size
        if "height" not in crop or "width" not in crop:
            raise ValueError(f"{name} crop_size needs height and width, got {crop}")
        geometry.update(crop_height=int(crop["height"]), crop_width=int(crop["width"]))
    try:
        return make_spec(resample=resample, **geometry, **common)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def load_spec(
    model: str,
    revision: str | None = None,
    *,
    draft: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> PreprocessSpec:
    """Load the slow image processor of `model` (hub id, using the local cache when offline,
    or a local folder) and return its spec; for processors transformers ships only as "Fast" classes,
    read their config (`iei.preprocess.fast_processors`). Raises ValueError for unsupported processors."""
    from transformers import AutoImageProcessor  # heavy; only the loading process needs it

    from iei.preprocess.fast_processors import is_fast_only, read_processor_config, spec_from_fast_config

    # Processors that exist only as torchvision-based "Fast" classes (DINOv3's) cannot be instantiated here:
    # their config is read and reproduced instead.
    config = read_processor_config(model, revision)
    if is_fast_only(config):
        return spec_from_fast_config(config, draft=draft, max_image_pixels=max_image_pixels)
    processor = AutoImageProcessor.from_pretrained(model, revision=revision, use_fast=False)
    return spec_from_processor(processor, draft=draft, max_image_pixels=max_image_pixels)


def _resize_geometry(processor: Any, name: str) -> dict[str, Any]:
    size = processor.size
    if "height" in size and "width" in size:
        return {"resize": "fixed", "resize_height": int(size["height"]), "resize_width": int(size["width"])}
    if "shortest_edge" in size and len(size) == 1:
        return {"resize": "shortest_edge", "shortest_edge": int(size["shortest_edge"])}
    raise ValueError(f"{name} size {size} is not supported (need height+width or shortest_edge alone)")


def _convnext_spec(processor: Any, name: str, resample: int, common: dict) -> PreprocessSpec:
    """ConvNeXt: below 384, resize the shortest edge to int(edge / crop_pct) and centre-crop
    edge x edge; from 384 up, warp to edge x edge (no crop)."""
    size = processor.size
    if "shortest_edge" not in size:
        raise ValueError(f"{name} size needs shortest_edge, got {size}")
    edge = int(size["shortest_edge"])
    if not processor.do_resize:
        raise ValueError(f"{name} with do_resize=False gives a size that varies per image")
    if edge < 384:
        return make_spec(
            resize="shortest_edge",
            shortest_edge=int(edge / processor.crop_pct),
            crop_height=edge,
            crop_width=edge,
            resample=resample,
            **common,
        )
    return make_spec(resize="fixed", resize_height=edge, resize_width=edge, resample=resample, **common)


def max_patches_spec(*, patch_size: int, max_num_patches: int, resample: int, do_resize: bool, name: str,
                     **common: Any) -> PreprocessSpec:
    """SigLIP 2 NaFlex (`Siglip2ImageProcessor`): resize keeping the aspect ratio to at most `max_num_patches`
    patches (its `get_image_size_for_max_num_patches`), then cut into patches. Raises ValueError for settings
    that would give patches the model cannot take."""
    if not do_resize:
        raise ValueError(f"{name} with do_resize=False gives images that need not divide into patches")
    if patch_size < 1 or max_num_patches < 1:
        raise ValueError(f"{name} needs a positive patch_size and max_num_patches")
    side = patch_size * max(1, int(max_num_patches ** 0.5))
    return PreprocessSpec(resize="max_patches", resample=int(resample), output_height=side, output_width=side,
                          patch_size=patch_size, max_num_patches=max_num_patches, **common)


def _triple(value: Any, name: str, field: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} {field} must have 3 values (RGB), got {len(values)}")
    return values  # type: ignore[return-value]
