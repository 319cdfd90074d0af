"""The simplejpeg path of the JPEG draft decode (`--jpeg-decoder auto`): where it is taken, that its pixels stay
within the draft path's tolerance of the exact path, and that broken JPEGs get the very answer Pillow gives."""

from __future__ import annotations

import io

import msgspec
import numpy as np
import pytest
from PIL import Image

import iei.preprocess.image as image_module
from iei.errors import InputError
from iei.preprocess.image import prepare_image
from iei.preprocess.spec import spec_from_processor
from tests.preprocess.images import PROCESSORS, encode, synthetic_photo
from tests.preprocess.test_image_parity import DRAFT_MEAN_ABS_DIFF, DRAFT_MIN_COSINE


@pytest.fixture
def decoders(monkeypatch):
    """Records which decoder each prepare_image call used: "simplejpeg" or "pillow"."""
    used: list[str] = []
    original = image_module._simplejpeg_decode

    def spy(data, target):
        result = original(data, target)
        used.append("simplejpeg" if result is not None else "simplejpeg-refused")
        return result

    monkeypatch.setattr(image_module, "_simplejpeg_decode", spy)
    return used


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b))


def _seed_jpegs(seeds) -> dict[str, bytes]:
    """The seed photos (RGBA PNG, about 620x1060) as the RGB JPEGs people upload."""
    return {name: encode(Image.open(io.BytesIO(data)).convert("RGB"), "JPEG", quality=90)
            for name, data in seeds.items()}


@pytest.mark.parametrize("family", ["vit", "convnext", "clip", "deit", "dinov2"])
def test_simplejpeg_stays_within_draft_tolerance(family, seeds, decoders):
    """Every JPEG, whichever decoder the rule picks, within the draft tolerance; and where simplejpeg decodes,
    as close to the exact path as Pillow's draft is (the scale margin is what keeps it there: without it the
    seed photos fell to cosine 0.9978)."""
    exact_spec = spec_from_processor(PROCESSORS[family](), draft=False)
    images = {**_seed_jpegs(seeds),
              **{f"{w}x{h}": synthetic_photo(w, h, seed=w) for w, h in ((620, 1060), (700, 700), (800, 600),
                                                                         (1024, 768), (768, 1024), (1152, 864),
                                                                         (1280, 960), (1920, 1080))}}
    used = []
    for name, data in images.items():
        decoders.clear()
        exact = prepare_image(data, exact_spec)
        got = prepare_image(data, msgspec.structs.replace(exact_spec, draft=True))
        assert np.abs(exact - got).mean() < DRAFT_MEAN_ABS_DIFF, name
        assert _cosine(exact, got) >= DRAFT_MIN_COSINE, name
        if decoders == ["simplejpeg"]:
            used.append(name)
            pillow = prepare_image(data, msgspec.structs.replace(exact_spec, draft=True, jpeg_decoder="pillow"))
            assert _cosine(exact, got) >= _cosine(exact, pillow) - 0.0001, name
            assert np.abs(exact - got).mean() < np.abs(exact - pillow).mean() + 0.004, name
    assert used, "simplejpeg was expected to decode some of these"


def test_decodes_no_less_than_the_resize_size(monkeypatch):
    seen = []
    original = image_module._resize_and_crop
    monkeypatch.setattr(image_module, "_resize_and_crop",
                        lambda img, src, s: seen.append((img.size, src)) or original(img, src, s))
    spec = spec_from_processor(PROCESSORS["vit"]())
    prepare_image(synthetic_photo(1024, 768, seed=3), spec)
    assert seen == [((384, 288), (1024, 768))]  # 3/8, where Pillow's draft would decode 512x384


def _cmyk_jpeg() -> bytes:
    return encode(Image.open(io.BytesIO(synthetic_photo(1024, 768, seed=4))).convert("CMYK"), "JPEG", quality=90)


def _progressive_jpeg() -> bytes:
    return encode(Image.open(io.BytesIO(synthetic_photo(1024, 768, seed=5))), "JPEG", quality=90, progressive=True)


def _grey_jpeg() -> bytes:
    return encode(Image.open(io.BytesIO(synthetic_photo(1024, 768, seed=6))).convert("L"), "JPEG", quality=90)


@pytest.mark.parametrize("make, reason", [
    (lambda: synthetic_photo(1024, 768, seed=7, exif_orientation=6), "EXIF rotation"),
    (lambda: synthetic_photo(1024, 768, seed=7, exif_orientation=3), "EXIF rotation"),
    (_cmyk_jpeg, "CMYK"),
    (_progressive_jpeg, "progressive"),
    (_grey_jpeg, "greyscale"),
    (lambda: synthetic_photo(400, 300, seed=8), "under twice the resize size: exact path"),
    (lambda: synthetic_photo(4000, 3000, seed=9), "12 MP: both scale by 1/8, nothing to win"),
    (lambda: synthetic_photo(640, 480, seed=10), "both scale by 1/2"),
    (lambda: encode(Image.open(io.BytesIO(synthetic_photo(1024, 768, seed=4))), "PNG"), "not a JPEG"),
])
def test_pillow_keeps_what_simplejpeg_would_not_win_or_not_decode_alike(make, reason, decoders):
    spec = spec_from_processor(PROCESSORS["vit"]())
    prepare_image(make(), spec)
    assert decoders == [], reason


def test_pillow_setting_and_exact_path_never_use_simplejpeg(decoders):
    data = synthetic_photo(1024, 768, seed=11)
    spec = spec_from_processor(PROCESSORS["vit"]())
    prepare_image(data, msgspec.structs.replace(spec, jpeg_decoder="pillow"))
    prepare_image(data, msgspec.structs.replace(spec, draft=False))
    assert decoders == []


def test_broken_jpegs_get_the_answer_pillow_gives(decoders):
    """simplejpeg refuses even what libjpeg only warns about; Pillow then decides, as it always has."""
    data = synthetic_photo(1024, 768, seed=12)
    spec = spec_from_processor(PROCESSORS["vit"]())
    pillow_spec = msgspec.structs.replace(spec, jpeg_decoder="pillow")
    for cut in (len(data) // 2, len(data) - 2):  # truncated: both reject it
        with pytest.raises(InputError, match="truncated or corrupt") as auto_error:
            prepare_image(data[:cut], spec)
        with pytest.raises(InputError) as pillow_error:
            prepare_image(data[:cut], pillow_spec)
        assert str(auto_error.value) == str(pillow_error.value)
    # Garbage between the entropy-coded data and EOI: libjpeg warns ("extraneous bytes"), Pillow decodes it.
    eoi = data.rindex(b"\xff\xd9")
    padded = data[:eoi] + b"\x00\x01\x02\x03" + data[eoi:]
    decoders.clear()
    np.testing.assert_array_equal(prepare_image(padded, spec), prepare_image(padded, pillow_spec))
    assert decoders == ["simplejpeg-refused"]
