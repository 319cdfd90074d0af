"""Pure preprocessing functions: image bytes in, uint8 CHW pixels out (`prepare_pixels`), plus the
per-channel affine map to the model's float32 input (`pixel_affine`, `normalize`).

Resizing and cropping happen on 8-bit pixels (as transformers does them, through PIL), so the uint8
tensor is lossless; the rescale and normalise steps are one multiply-add per channel that the model
runtime applies (on the GPU, for free), which keeps shared memory, copies and transfers 4x smaller.

They run inside preprocessing worker processes: top-level functions, no module state, numpy out
(no PIL object crosses a process boundary). With `spec.draft=False` the result equals the
transformers slow image processor applied to `transformers.image_utils.load_image(image)`
(EXIF transpose, convert to RGB), except that 16/32-bit greyscale and float images are scaled to
8 bits instead of clipped.

Every failure caused by the input raises `InputError` with a message for the client (no index,
no library text); anything else is a bug.
"""

from __future__ import annotations

import binascii
import functools
import io
import math
import re
import warnings
from typing import Literal

import numpy as np
import pybase64
from PIL import Image, ImageOps

try:  # a base dependency; guarded so that a platform without its wheel still decodes, with Pillow
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover
    _simplejpeg = None

from iei.errors import InputError
from iei.preprocess.spec import DECODABLE_FORMATS, PreprocessSpec

_DATA_URI = re.compile(rb"^\s*data:[^,]*?;base64,", re.IGNORECASE)
_JPEG_FORMATS = ("JPEG", "MPO")
# Pillow plugins that open a format under a second name: multi-picture JPEGs (MPO) open through the
# JPEG plugin, headerless bitmaps (DIB) through BMP's.
_ALIASES = {"JPEG": ("MPO",), "BMP": ("DIB",)}
# Formats people send that are not raster images, named so the client learns what went wrong.
_NON_RASTER = ((b"%PDF", "PDF"), (b"%!PS", "PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS"))
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees
_EXIF_ORIENTATION = 0x0112
# Above this many pixels, resize only the part the centre crop keeps: guards against extreme
# aspect ratios (a 1 x 10000 image with a 256 shortest edge would be resized to 256 x 2.56M).
# Below it we resize the whole image, bit-exact with transformers; the region resize is not
# bit-exact when it upscales both axes (Pillow's rounding differs), so keep it for the rare case.
_MAX_FULL_RESIZE_PIXELS = 4_000_000
# simplejpeg's M/8 decode must leave at least this much over the resize size on both sides. A 3/8 or 5/8
# scaled IDCT that lands just above it (a 620x1060 photo at 3/8 = 233x398 for a 224x224 model) leaves
# the final resize nothing to smooth its ringing with: cosine to the exact path fell to 0.9978 on the
# seed photos, against >= 0.9999 for Pillow's draft. At 1.25x the worst case measured was 0.99990, and
# the common case still wins (1024x768 at 3/8 = 384x288, 1.29x of 224).
_M8_MARGIN = 1.25


def decode_payload(payload: bytes | str, encoding: Literal["base64", "raw"]) -> bytes:
    """Return the image bytes of one input. For base64, strip any `data:...;base64,` prefix and
    decode strictly (line breaks and spaces are allowed, other stray characters are not).
    Raises InputError("empty image") or InputError("not valid base64")."""
    if isinstance(payload, str):
        try:
            payload = payload.encode("ascii")
        except UnicodeEncodeError as e:
            raise InputError("not valid base64") from e
    if encoding == "base64":
        match = _DATA_URI.match(payload)
        payload = _b64decode(payload[match.end() :] if match else payload)
    if not payload:
        raise InputError("empty image")
    return bytes(payload)


def _b64decode(text: bytes) -> bytes:
    # pybase64 (SIMD) validates and decodes ~30x faster than binascii's strict mode.
    try:
        return pybase64.b64decode(text, validate=True)
    except binascii.Error:
        pass
    # Validation rejects whitespace too; retry without the line breaks and spaces that
    # base64.encodebytes and many clients insert (rare, so the common case pays nothing).
    try:
        return pybase64.b64decode(b"".join(text.split()), validate=True)
    except binascii.Error as e:
        raise InputError("not valid base64") from e


def prepare_pixels(data: bytes, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """Decode, orient, convert, resize and crop `data` into `out` (uint8, shape
    (3, spec.output_height, spec.output_width), may be a view into shared memory); allocate it when
    None. Returns `out`. Raises InputError for empty, undecodable, truncated or oversized images;
    ValueError if `out` has the wrong shape or dtype."""
    out = _output_buffer(out, spec, data)
    image, source_size = _decode(data, spec)
    out[...] = _resize_and_crop(image, source_size, spec).transpose(2, 0, 1)  # HWC -> CHW
    return out


def prepare_patches(data: bytes, spec: PreprocessSpec, out: np.ndarray | None = None) -> tuple[int, int]:
    """SigLIP 2 NaFlex (`spec.resize == "max_patches"`): decode, orient and convert like `prepare_pixels`,
    resize keeping the aspect ratio to the patch grid `max_patches_size` gives, and cut into patches as
    transformers' `Siglip2ImageProcessor` does (row-major over the grid; within a patch row, column, channel).
    Writes uint8 (max_num_patches, patch * patch * 3) into `out`, zeros past the image's patches, and returns
    the grid (rows, cols). Raises InputError as `prepare_pixels` does; ValueError for a wrong `out`."""
    patch = int(spec.patch_size)  # type: ignore[arg-type]
    out = _output_buffer(out, spec, data)
    image, (src_w, src_h) = _decode(data, spec)
    height, width = max_patches_size(src_h, src_w, patch, int(spec.max_num_patches))  # type: ignore[arg-type]
    pixels = np.asarray(_resize(image, (width, height), spec.resample))  # (H, W, 3)
    rows, cols = height // patch, width // patch
    patches = pixels.reshape(rows, patch, cols, patch, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, -1)
    out[: rows * cols] = patches
    out[rows * cols:] = 0
    return rows, cols


def _output_buffer(out: np.ndarray | None, spec: PreprocessSpec, data: bytes) -> np.ndarray:
    """`out`, checked to be uint8 of `spec.item_shape` (allocated when None); InputError for empty `data`."""
    shape = spec.item_shape
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
    if not data:
        raise InputError("empty image")
    return out


@functools.lru_cache(maxsize=1024)
def max_patches_size(image_height: int, image_width: int, patch_size: int, max_num_patches: int,
                     eps: float = 1e-5) -> tuple[int, int]:
    """(height, width) for NaFlex: each a multiple of `patch_size` (at least one patch), the largest scale of
    the image (found by bisection) whose grid holds at most `max_num_patches`. The very arithmetic of
    transformers' `get_image_size_for_max_num_patches`, so every image gets the grid the model's processor
    would give it."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    low, high = eps / 10, 100.0
    while (high - low) >= eps:
        scale = (low + high) / 2
        if (scaled(scale, image_height) / patch_size) * (scaled(scale, image_width) / patch_size) <= max_num_patches:
            low = scale
        else:
            high = scale
    return scaled(low, image_height), scaled(low, image_width)


def prepare_image(data: bytes, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """`prepare_pixels` then `normalize`: the float32 (3, H, W) tensor transformers' processor gives
    (written into `out` when given)."""
    return normalize(prepare_pixels(data, spec), spec, out)


def pixel_affine(spec: PreprocessSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (scale, offset) such that the model input is uint8_pixel * scale + offset:
    transformers' rescale-then-normalise ((x * r) - mean) / std folded into one multiply-add (equal
    to it within a few float32 ulps, ~1e-7)."""
    rescale = spec.rescale_factor if spec.do_rescale else 1.0
    mean = spec.image_mean if spec.do_normalize else (0.0, 0.0, 0.0)
    std = spec.image_std if spec.do_normalize else (1.0, 1.0, 1.0)
    return tuple(rescale / s for s in std), tuple(-m / s for m, s in zip(mean, std))


def normalize(pixels: np.ndarray, spec: PreprocessSpec, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (..., 3, H, W) -> float32 model input, per `pixel_affine` (computed in float32)."""
    scale, offset = (np.asarray(v, dtype=np.float32).reshape(3, 1, 1) for v in pixel_affine(spec))
    if out is None:
        out = np.empty(pixels.shape, dtype=np.float32)
    np.copyto(out, pixels, casting="unsafe")
    out *= scale
    out += offset
    return out


def _decode(data: bytes, spec: PreprocessSpec) -> tuple[Image.Image, tuple[int, int]]:
    """Open, check the size, decode (DCT-downscaled when allowed), orient and convert to RGB.
    Returns the RGB image and the oriented size of the source before any downscale, from which
    transformers would compute the resize."""
    with warnings.catch_warnings():
        # Pillow warns on big images and odd palettes; our own limit is the one that counts.
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data), formats=_available_formats(spec.formats))
        except Image.DecompressionBombError as e:
            raise InputError(f"image is over the limit of {spec.max_image_pixels} pixels") from e
        except Exception as e:  # Pillow raises many types for bytes it cannot identify
            raise _unidentified(data, spec.formats) from e
        width, height = image.size
        if width * height > spec.max_image_pixels:
            raise InputError(
                f"image is {width}x{height} = {width * height} pixels, "
                f"over the limit of {spec.max_image_pixels}"
            )
        try:
            orientation = _orientation(image)
            swapped = orientation in _SWAPS_AXES
            target = _draft_target(image, spec, swapped)
            if target is not None:
                if _use_simplejpeg(image, spec, orientation, target):
                    scaled = _simplejpeg_decode(data, target)
                    if scaled is not None:
                        return scaled, (width, height)  # orientation 1: nothing to rotate
                image.draft("RGB", target)
            image.load()
            image = _orient(image)
            return _to_rgb(image), ((height, width) if swapped else (width, height))
        except Exception as e:
            raise InputError("image data is truncated or corrupt") from e


def _available_formats(allowed: tuple[str, ...]) -> list[str]:
    # Older Pillow lacks some plugins (AVIF before 11.2), and open() fails on unknown names.
    Image.init()  # a no-op after the first call
    names = [alias for name in allowed for alias in (name, *_ALIASES.get(name, ()))]
    return [name for name in names if name in Image.OPEN]


def _unidentified(data: bytes, allowed: tuple[str, ...]) -> InputError:
    """The error for bytes no allowed decoder opens: name the format when we can tell what it is."""
    head = data[:1024].lstrip()
    kind = next((name for magic, name in _NON_RASTER if head.startswith(magic)), None)
    if kind is None and (head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head)):
        kind = "SVG"
    if kind is None:
        other = tuple(name for name in DECODABLE_FORMATS if name not in allowed)
        try:  # only reads the header; nothing is decoded
            kind = Image.open(io.BytesIO(data), formats=_available_formats(other)).format if other else None
        except Exception:
            kind = None
    if kind is None:
        return InputError("not a decodable image")
    return InputError(f"unsupported image format {kind} (allowed: {', '.join(allowed)})")


def _draft_target(image: Image.Image, spec: PreprocessSpec, swapped: bool) -> tuple[int, int] | None:
    """The (width, height) a DCT-domain downscale of this JPEG must not go below, in the decoder's
    orientation (`swapped`: EXIF will rotate it by 90); None where no downscale is allowed: draft off,
    not a JPEG, or an image less than twice the target (those stay exact; a downscale would save little)."""
    if not spec.draft or image.format not in _JPEG_FORMATS or spec.resize == "none":
        return None
    if spec.resize == "fixed":
        need_w, need_h = spec.resize_width, spec.resize_height
    elif spec.resize == "max_patches":  # the grid is computed on the oriented image
        w, h = (image.height, image.width) if swapped else image.size
        need_h, need_w = max_patches_size(h, w, int(spec.patch_size), int(spec.max_num_patches))  # type: ignore[arg-type]
        if swapped:
            need_w, need_h = need_h, need_w
        swapped = False  # already in the decoder's orientation
    else:  # the short side becomes shortest_edge and the long side at least that
        need_w = need_h = spec.shortest_edge
    if swapped:
        need_w, need_h = need_h, need_w  # the decoder sees the image before rotation
    if image.width < 2 * need_w or image.height < 2 * need_h:  # type: ignore[operator]
        return None
    return int(need_w), int(need_h)  # type: ignore[arg-type]


def _use_simplejpeg(image: Image.Image, spec: PreprocessSpec, orientation: int, target: tuple[int, int]) -> bool:
    """Whether simplejpeg should decode this JPEG instead of Pillow (`target`: `_draft_target`).

    Both wrap the same libjpeg-turbo, but Pillow's `draft` only scales by 1/2, 1/4 or 1/8, while
    libjpeg-turbo also scales by M/8 (3/8, 5/8, 6/8, 7/8):
    a 1024x768 photo for a 224 model decodes at 384x288 instead of 512x384, about x1.2 faster per
    core (docs/performance.md). That is the whole gain, so simplejpeg is used only where its scale
    gives fewer pixels, and only for what it decodes exactly as Pillow would: a plain baseline
    YCbCr/RGB JPEG (Pillow mode RGB; not greyscale, CMYK/YCCK or a multi-picture MPO) that needs no
    EXIF rotation. Progressive JPEGs stay on Pillow too (not measured)."""
    if (spec.jpeg_decoder != "auto" or _simplejpeg is None or image.format != "JPEG" or image.mode != "RGB"
            or orientation != 1 or image.info.get("progressive") or image.info.get("progression")):
        return False
    width, height = image.size
    return _m8_scaled_pixels(width, height, _m8_target(target)) < _draft_scaled_pixels(width, height, target)


def _m8_target(target: tuple[int, int]) -> tuple[int, int]:
    """The least size simplejpeg may decode to: `target` plus `_M8_MARGIN`."""
    return math.ceil(target[0] * _M8_MARGIN), math.ceil(target[1] * _M8_MARGIN)


def _draft_scaled_pixels(width: int, height: int, target: tuple[int, int]) -> int:
    """Pixels Pillow decodes after `Image.draft(mode, target)`: its largest 1/8, 1/4, 1/2 scale keeping `target`."""
    fits = min(width // target[0], height // target[1])
    scale = next(s for s in (8, 4, 2, 1) if s <= fits)
    return -(-width // scale) * -(-height // scale)


def _m8_scaled_pixels(width: int, height: int, target: tuple[int, int]) -> int:
    """Pixels libjpeg-turbo decodes at the smallest M/8 scale (M = 1..8) keeping `target`, as
    simplejpeg's `min_width`/`min_height` pick it (output sides round up)."""
    for m in range(1, 9):
        w, h = -(-width * m // 8), -(-height * m // 8)
        if w >= target[0] and h >= target[1]:
            return w * h
    return width * height


def _simplejpeg_decode(data: bytes, target: tuple[int, int]) -> Image.Image | None:
    """RGB image decoded by simplejpeg at the smallest M/8 scale keeping `_m8_target(target)`; None where
    simplejpeg refuses the data (even a recoverable libjpeg warning, strict mode), so the caller
    decodes with Pillow, which accepts or rejects it as it always has: the client's answer for a
    broken JPEG never depends on which decoder tried first."""
    try:
        # fastdct/fastupsample: ~5% faster, and measured to change no pixel statistic at these scales
        # (mean abs diff and cosine to the exact path equal to 4 and 6 digits on seeds and synthetic photos).
        min_width, min_height = _m8_target(target)
        pixels = _simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True,
                                         min_width=min_width, min_height=min_height, strict=True)
    except Exception:
        return None
    return Image.fromarray(pixels)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # broken EXIF: decode the pixels as stored, like a browser would
        return 1


def _orient(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation as transformers' `load_image` does (exif_transpose)."""
    if _orientation(image) == 1:
        return image  # exif_transpose would copy the whole image for nothing
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert to 8-bit RGB like `load_image` (`convert("RGB")`, alpha dropped), except that
    high-bit-depth greyscale is scaled to 8 bits, where Pillow would clip it to white."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit range: v8 = round(v16 / 257) inverts the usual v8 * 257 expansion. 32-bit "I"
        # images are taken to hold 16-bit values, as 16-bit PNG/TIFF decode to in older Pillow.
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((wide + 128) // 257).astype(np.uint8))
    elif image.mode == "F":
        # Floats are taken as [0, 1] when they fit, else as [0, 255]; NaN becomes black.
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if values.size and values.min() >= 0 and values.max() <= 1 else 1.0
        image = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _resize_and_crop(image: Image.Image, source_size: tuple[int, int], spec: PreprocessSpec) -> np.ndarray:
    """Resize with spec.resample, then centre-crop with transformers' offsets (zero padding where
    the image is smaller). The resize size comes from `source_size`, as transformers computes it
    on the image before any DCT downscale. Returns uint8 HWC."""
    res_w, res_h = _resize_size(*source_size, image.size, spec)
    if spec.crop_height is None or spec.crop_width is None:
        return _resized_pixels(image, (res_w, res_h), spec)
    crop_w, crop_h = spec.crop_width, spec.crop_height
    left, top = (res_w - crop_w) // 2, (res_h - crop_h) // 2
    if res_w * res_h > _MAX_FULL_RESIZE_PIXELS and left >= 0 and top >= 0:
        # Resize only the source region that the crop keeps: same filter centres and support,
        # without materialising a huge intermediate image.
        sx, sy = image.width / res_w, image.height / res_h
        box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
        return _resized_pixels(image, (crop_w, crop_h), spec, box=box)
    if spec.float_resize:  # fast-processor specs never crop beyond the image (checked when built)
        return _resized_pixels(image, (res_w, res_h), spec)[top:top + crop_h, left:left + crop_w]
    resized = _resize(image, (res_w, res_h), spec.resample)
    return np.asarray(resized.crop((left, top, left + crop_w, top + crop_h)))


def _resized_pixels(image: Image.Image, size: tuple[int, int], spec: PreprocessSpec,
                    box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """`image` (or its `box`) resized to `size` (width, height) as uint8 HWC. With `spec.float_resize`, each
    channel is resampled in Pillow's 32-bit float mode (no rounding between the horizontal and vertical passes,
    as torch's antialiased interpolate on float tensors) and rounded to 8 bits once."""
    if not spec.float_resize:
        if box is not None:
            return np.asarray(image.resize(size, spec.resample, box=box))
        return np.asarray(_resize(image, size, spec.resample))
    if image.size == size and box is None:
        return np.asarray(image)
    bands = [band.convert("F").resize(size, spec.resample, box=box) for band in image.split()]
    pixels = np.stack([np.asarray(band) for band in bands], axis=-1)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _resize_size(src_w: int, src_h: int, current: tuple[int, int], spec: PreprocessSpec) -> tuple[int, int]:
    """(width, height) after the resize step; `current` is the decoded size ("none" keeps it)."""
    if spec.resize == "fixed":
        return spec.resize_width, spec.resize_height
    if spec.resize == "none":
        return current
    # transformers' get_resize_output_image_size(default_to_square=False), without max_size.
    edge = spec.shortest_edge
    if src_w <= src_h:
        return edge, int(edge * src_h / src_w)
    return int(edge * src_w / src_h), edge


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)
