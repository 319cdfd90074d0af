"""The torch reference for DINOv3's fast-only image processor (`DINOv3ViTImageProcessorFast`, which needs
torchvision and so cannot run here), built from its preprocessor_config.json with the very operations its
source (transformers 4.57) performs: uint8 RGB -> * rescale_factor -> `F.interpolate(bilinear,
align_corners=False, antialias=True)` (what torchvision's resize runs on float tensors) -> centre crop ->
(x - mean) / std. And the model's own embedding on those pixels.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoModel
from transformers.image_utils import load_image

from iei.preprocess.fast_processors import FAST_ONLY_DEFAULTS


def processor_config(model_dir: Path) -> dict:
    config = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
    defaults = FAST_ONLY_DEFAULTS[config["image_processor_type"]]
    return {**defaults, **{k: v for k, v in config.items() if v is not None}}


def resized_levels(config: dict, data: bytes) -> np.ndarray:
    """The processor's resized (and cropped) image before normalisation, in 8-bit levels: float32 (3, H, W)."""
    pil = load_image(Image.open(io.BytesIO(data)))  # EXIF transpose, RGB
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() * config["rescale_factor"]
    size = config["size"]
    if "height" in size:
        out = (size["height"], size["width"])
    else:  # shortest edge, as transformers' get_resize_output_image_size(default_to_square=False)
        h, w = x.shape[-2:]
        edge = size["shortest_edge"]
        out = (edge, int(edge * w / h)) if h <= w else (int(edge * h / w), edge)
    x = F.interpolate(x, size=out, mode="bilinear", align_corners=False, antialias=True)
    if config.get("do_center_crop"):
        ch, cw = config["crop_size"]["height"], config["crop_size"]["width"]
        top, left = int((x.shape[-2] - ch) / 2.0), int((x.shape[-1] - cw) / 2.0)
        x = x[..., top:top + ch, left:left + cw]
    return (x[0] / config["rescale_factor"]).numpy()


def normalised(config: dict, levels: np.ndarray) -> torch.Tensor:
    """Resized images in 8-bit levels (B, 3, H, W) -> the model's input: x * rescale_factor, then (x - mean) / std."""
    mean = torch.tensor(config["image_mean"], dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(config["image_std"], dtype=torch.float32).reshape(1, 3, 1, 1)
    return (torch.from_numpy(np.asarray(levels, dtype=np.float32)) * config["rescale_factor"] - mean) / std


def pixel_values(config: dict, images: list[bytes]) -> torch.Tensor:
    """What `DINOv3ViTImageProcessorFast(images, return_tensors="pt")["pixel_values"]` gives: float32 (B, 3, H, W)."""
    return normalised(config, np.stack([resized_levels(config, data) for data in images]))


def dinov3_reference(model_dir: Path, images: list[bytes]) -> np.ndarray:
    """The authors' embedding, unnormalised: `pooler_output` (ViT: the CLS token after the final norm; ConvNeXt:
    the final norm of the pooled feature map) on the torch-preprocessed pixels."""
    model = AutoModel.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        return model(pixel_values=pixel_values(processor_config(model_dir), images)).pooler_output.numpy()
