"""What "the embedding" of an image is, per model family: one definition for every backend.

`EmbeddingModel(model, pooling)` wraps a transformers vision model so that
`forward(pixel_values) -> (B, D)` returns the pooled vector. It is an `nn.Module` so an ONNX or
TensorRT export traces the very same definition the torch backend runs.

Poolings:
- `mean`: the original server's embedding, the default for its families. Transformers (ViT, DeiT,
  BEiT, Swin): the unweighted mean over ALL tokens of `last_hidden_state`, CLS included, with the
  model built without its pooling layer. CNNs (ConvNeXt): what the model's own pooler computes,
  the spatial mean of the final feature map followed by the final layernorm (`pooler_output`).
- `cls`: token 0 of `last_hidden_state` (families with a CLS token only).
- `pooler`: the model's `pooler_output` (ViT/DeiT: dense+tanh on CLS; BEiT: layernorm of the
  mean of the patch tokens; Swin: mean of the tokens; ConvNeXt: as `mean`).
"""

from __future__ import annotations

import inspect

import msgspec
import torch
from torch import nn

POOLINGS = ("mean", "cls", "pooler")


class FamilySpec(msgspec.Struct, frozen=True, kw_only=True):
    default: str
    allowed: tuple[str, ...]
    # True where the model class takes `add_pooling_layer`: then the pooler is built only when
    # `pooler` pooling asks for it (the original server loaded these without it).
    takes_add_pooling_layer: bool
    # Where `mean` reads from: "tokens" (mean of last_hidden_state) or "pooler" (pooler_output).
    mean_source: str = "tokens"


# model_type -> family. DeiT checkpoints such as facebook/deit-base-patch16-224 say "vit".
FAMILIES: dict[str, FamilySpec] = {
    "vit": FamilySpec(default="mean", allowed=("mean", "cls", "pooler"), takes_add_pooling_layer=True),
    "deit": FamilySpec(default="mean", allowed=("mean", "cls", "pooler"), takes_add_pooling_layer=True),
    "beit": FamilySpec(default="mean", allowed=("mean", "cls", "pooler"), takes_add_pooling_layer=True),
    "swin": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=True),
    "swinv2": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=True),
    "convnext": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=False, mean_source="pooler"),
    "convnextv2": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=False, mean_source="pooler"),
}

# Families not in the table: `mean` over tokens (3-D output) or space (4-D output); `pooler` where
# the output has one (checked on the first forward). No `cls`: we cannot know there is a CLS token.
UNKNOWN_FAMILY = FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=False)


class PoolingError(ValueError):
    """The pooling is unknown or does not apply to this model family."""


def family_spec(model_type: str, model_class: type | None = None) -> FamilySpec:
    """The family's row of the table; for unknown families, whether `model_class` takes
    `add_pooling_layer` is read from its signature."""
    spec = FAMILIES.get(model_type)
    if spec is not None:
        return spec
    takes = model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return msgspec.structs.replace(UNKNOWN_FAMILY, takes_add_pooling_layer=takes)


def resolve_pooling(model_type: str, requested: str | None, model_class: type | None = None) -> str:
    """The pooling to use: `requested`, or the family's default when None. Raises PoolingError."""
    spec = family_spec(model_type, model_class)
    if requested is None:
        return spec.default
    if requested not in POOLINGS:
        raise PoolingError(f"unknown pooling {requested!r}; choose one of {list(POOLINGS)}")
    if requested not in spec.allowed:
        why = " (it has no CLS token)" if requested == "cls" and model_type in FAMILIES else ""
        raise PoolingError(f"pooling {requested!r} does not apply to model type {model_type!r}{why}; choose one of {list(spec.allowed)}")
    return requested


def model_kwargs(model_type: str, pooling: str, model_class: type | None = None) -> dict[str, bool]:
    """Extra keyword arguments for `AutoModel.from_pretrained/from_config`: build the pooling layer
    only when `pooler` pooling needs it, where the family lets us choose."""
    if family_spec(model_type, model_class).takes_add_pooling_layer:
        return {"add_pooling_layer": pooling == "pooler"}
    return {}


class EmbeddingModel(nn.Module):
    """`model` (a transformers vision model, e.g. `AutoModel` output) plus its pooling.

    forward: pixel_values float (B, C, H, W), normalised as the model expects -> (B, D) in the
    model's dtype, pooled, not L2-normalised. Raises PoolingError if the output lacks what the
    pooling reads (e.g. `pooler` on a model built without its pooling layer).
    """

    def __init__(self, model: nn.Module, pooling: str) -> None:
        super().__init__()
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        resolve_pooling(model_type, pooling, type(model))
        self.model = model
        self.pooling = pooling
        self.mean_source = family_spec(model_type, type(model)).mean_source

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values, return_dict=True)
        if self.pooling == "pooler" or (self.pooling == "mean" and self.mean_source == "pooler"):
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise PoolingError("the model returned no pooler_output (built without its pooling layer?)")
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if hidden.dim() == 3:  # (B, tokens, D)
            return hidden.mean(dim=1)
        if hidden.dim() == 4:  # (B, C, H, W) feature map
            return hidden.mean(dim=(2, 3))
        raise PoolingError(f"cannot mean-pool a last_hidden_state of shape {tuple(hidden.shape)}")
