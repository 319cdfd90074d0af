"""What "the embedding" of an image (and of a text, for CLIP/SigLIP) is, per model family: one
definition for every backend.

`EmbeddingModel(model, pooling)` wraps a transformers vision model (or the vision side of a CLIP/SigLIP
dual encoder) so that `forward(pixel_values) -> (B, D)` returns the pooled vector;
`TextEmbeddingModel(model)` wraps the text side: `forward(input_ids, attention_mask) -> (B, D)`. Both are
`nn.Module`s so an ONNX or TensorRT export traces the very same definition the torch backend runs.

Poolings:
- `mean`: the original server's embedding, the default for its families. Transformers (ViT, DeiT,
  BEiT, Swin): the unweighted mean over ALL tokens of `last_hidden_state`, CLS included, with the
  model built without its pooling layer. CNNs (ConvNeXt): what the model's own pooler computes,
  the spatial mean of the final feature map followed by the final layernorm (`pooler_output`).
- `cls`: token 0 of `last_hidden_state` (families with a CLS token only).
- `pooler`: the model's `pooler_output` (ViT/DeiT: dense+tanh on CLS; BEiT: layernorm of the
  mean of the patch tokens; Swin: mean of the tokens; ConvNeXt: as `mean`; CLIP: the vision tower's
  post-layernorm CLS, before the projection; SigLIP: the attention-pooling head, which is SigLIP's
  image embedding, `get_image_features`).
- `projection` (CLIP, its default): `get_image_features`, the pooled CLS through `visual_projection`,
  the vector CLIP compares with text.
- DINOv2 (default `cls`: token 0 after the final layernorm, the authors' image embedding): `mean` is
  the mean of the patch tokens (CLS excluded) and `cls+mean` their concatenation (2 x hidden), as in
  the DINOv2 paper's linear probe and transformers' `Dinov2ForImageClassification`.
- DINOv3 ViT (default `pooler`: `pooler_output`, the CLS token after the final norm, as the model card
  embeds an image; `cls` is the same vector): `mean` averages the patch tokens only, skipping the CLS and the
  `num_register_tokens` register tokens that follow it (registers are not image patches); `cls+mean` as DINOv2.
- DINOv3 ConvNeXt (default `pooler`: `pooler_output`, the final norm of the spatially pooled feature map, the
  model's "CLS token"): `mean` averages its normed patch tokens (the rest of `last_hidden_state`).
- MetaCLIP 2 and AIMv2 LiT are CLIP-style dual encoders: `projection` (`get_image_features`) by default.
  AIMv2's vision-only checkpoints have no pooled vector of their own: `mean` of the final tokens.

Text embeddings exist only where the image embedding lives in the text's space: CLIP, MetaCLIP 2 and
AIMv2 LiT with `projection`, SigLIP with `pooler` (`text_pooling` in the table).

A model type missing from the table gets no default: `resolve_pooling` refuses it unless a pooling is
asked for explicitly, because a guessed pooling (say the mean of a dual encoder's vision tokens) is a
plausible-looking vector in the wrong space. docs/models.md is the table in prose.
"""

from __future__ import annotations

import inspect
from typing import Any

import msgspec
import torch
from torch import nn

POOLINGS = ("mean", "cls", "pooler", "projection", "cls+mean")


class FamilySpec(msgspec.Struct, frozen=True, kw_only=True):
    default: str
    allowed: tuple[str, ...]
    # True where the model class takes `add_pooling_layer`: then the pooler is built only when
    # `pooler` pooling asks for it (the original server loaded these without it).
    takes_add_pooling_layer: bool
    # Where `mean` reads from: "tokens" (mean of last_hidden_state) or "pooler" (pooler_output).
    mean_source: str = "tokens"
    # DINOv2/DINOv3: `mean` averages the patch tokens only (skipping the CLS token, and the register tokens
    # after it where the config has `num_register_tokens`)
    mean_skips_cls: bool = False
    # Dual encoders: the image pooling whose vectors share the text tower's space (None: image-only).
    text_pooling: str | None = None
    # SigLIP was trained on texts padded to max_length with no attention mask; CLIP masks its padding.
    text_attention_mask: bool = True
    text_pad_to_max_length: bool = False


# model_type -> family. DeiT checkpoints such as facebook/deit-base-patch16-224 say "vit".
FAMILIES: dict[str, FamilySpec] = {
    "vit": FamilySpec(default="mean", allowed=("mean", "cls", "pooler"), takes_add_pooling_layer=True),
    "deit": FamilySpec(default="mean", allowed=("mean", "cls", "pooler"), takes_add_pooling_layer=True),
    "beit": FamilySpec(default="mean", allowed=("mean", "cls", "pooler"), takes_add_pooling_layer=True),
    "swin": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=True),
    "swinv2": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=True),
    "convnext": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=False, mean_source="pooler"),
    "convnextv2": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=False, mean_source="pooler"),
    "clip": FamilySpec(default="projection", allowed=("projection", "pooler", "cls", "mean"), takes_add_pooling_layer=False,
                       text_pooling="projection"),
    "siglip": FamilySpec(default="pooler", allowed=("pooler", "mean"), takes_add_pooling_layer=False,
                         text_pooling="pooler", text_attention_mask=False, text_pad_to_max_length=True),
    # SigLIP 2 NaFlex: variable patch grids (see NaflexImageGraph); the embedding is SigLIP's, the
    # attention-pooling head (`get_image_features`).
    "siglip2": FamilySpec(default="pooler", allowed=("pooler",), takes_add_pooling_layer=False,
                          text_pooling="pooler", text_attention_mask=False, text_pad_to_max_length=True),
    "dinov2": FamilySpec(default="cls", allowed=("cls", "mean", "cls+mean"), takes_add_pooling_layer=False,
                         mean_skips_cls=True),
    "dinov3_vit": FamilySpec(default="pooler", allowed=("pooler", "cls", "mean", "cls+mean"),
                             takes_add_pooling_layer=False, mean_skips_cls=True),
    "dinov3_convnext": FamilySpec(default="pooler", allowed=("pooler", "mean"), takes_add_pooling_layer=False,
                                  mean_skips_cls=True),
    # MetaCLIP 2: CLIP's architecture (its own multilingual XLM-V tokenizer), CLIP's embedding.
    "metaclip_2": FamilySpec(default="projection", allowed=("projection", "pooler", "cls", "mean"),
                             takes_add_pooling_layer=False, text_pooling="projection"),
    # AIMv2 LiT (apple/aimv2-large-patch14-224-lit): the vision tower's attention-pooling head through
    # `visual_projection`, in the space of its causal text tower. No CLS token (the head's query is its own).
    "aimv2": FamilySpec(default="projection", allowed=("projection", "pooler", "mean"), takes_add_pooling_layer=False,
                        text_pooling="projection"),
    # AIMv2 vision-only checkpoints: their model cards document the patch features (`last_hidden_state`, after
    # the final RMSNorm) and no pooled vector (the paper probes them with a head trained per task, and the
    # checkpoints carry none: `use_head` is off), so the default is the mean of those features.
    "aimv2_vision_model": FamilySpec(default="mean", allowed=("mean", "pooler"), takes_add_pooling_layer=False),
}

# Model types whose vision tower takes variable patch grids (patches, their mask and per-grid position
# embeddings: NaflexImageGraph) instead of fixed-size images.
VARIABLE_GRID_TYPES = ("siglip2",)

# Families not in the table: no default (see resolve_pooling); asked for explicitly, `mean` over tokens (3-D
# output) or space (4-D output), `pooler` where the output has one (checked on the first forward). No `cls`: we
# cannot know there is a CLS token. `default` is never used for them.
UNKNOWN_FAMILY = FamilySpec(default="", allowed=("mean", "pooler"), takes_add_pooling_layer=False)


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
    """The pooling to use: `requested`, or the family's default when None. Raises PoolingError, also when
    `requested` is None for a model type the table lacks (no guessed embedding: docs/models.md)."""
    spec = family_spec(model_type, model_class)
    if requested is None:
        if model_type not in FAMILIES:
            raise PoolingError(
                f"model type {model_type!r} is not in IEI's model family table (docs/models.md), so IEI does not know "
                "its authors' embedding and will not guess one; start it with an explicit pooling: --pooling mean "
                "(the mean of the last hidden state over tokens, or over space for a CNN) or --pooling pooler "
                "(the model's own pooler_output)")
        return spec.default
    if requested not in POOLINGS:
        raise PoolingError(f"unknown pooling {requested!r}; choose one of {list(POOLINGS)}")
    if requested not in spec.allowed:
        why = " (it has no CLS token)" if requested == "cls" and model_type in FAMILIES else ""
        raise PoolingError(f"pooling {requested!r} does not apply to model type {model_type!r}{why}; choose one of {list(spec.allowed)}")
    return requested


def has_text(model_type: str, pooling: str) -> bool:
    """True when texts can be embedded into the space of this image pooling."""
    text_pooling = FAMILIES[model_type].text_pooling if model_type in FAMILIES else None
    return text_pooling is not None and pooling == text_pooling


def vision_config(config: Any) -> Any:
    """The config that describes the image tower (a dual encoder's `vision_config`, else `config`)."""
    return getattr(config, "vision_config", None) or config


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
        spec = family_spec(model_type, type(model))
        self.mean_source = spec.mean_source
        # tokens before the first patch token that `mean` leaves out: CLS, then any register tokens
        registers = int(getattr(vision_config(model.config), "num_register_tokens", 0) or 0) \
            if hasattr(model, "config") else 0
        self.mean_skip = 1 + registers if spec.mean_skips_cls else 0
        # A dual encoder (CLIP, SigLIP) runs its vision tower only; `projection` needs the whole model.
        self.vision = getattr(model, "vision_model", model)
        self.naflex = NaflexImageGraph(model) if model_type in VARIABLE_GRID_TYPES else None

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None,
                position_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Variable-resolution models (SigLIP 2 NaFlex) take patches (B, N, patch * patch * 3) with their
        `pixel_attention_mask` (B, N) and `position_embeddings` (B, N, D): see `NaflexImageGraph`."""
        if self.naflex is not None:
            return self.naflex(pixel_values, pixel_attention_mask, position_embeddings)
        if self.pooling == "projection":
            return self.model.get_image_features(pixel_values=pixel_values)
        # A dual encoder's vision tower always returns an output object (and takes no `return_dict`).
        out = self.vision(pixel_values=pixel_values) if self.vision is not self.model else \
            self.model(pixel_values=pixel_values, return_dict=True)
        if self.pooling == "pooler" or (self.pooling == "mean" and self.mean_source == "pooler"):
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise PoolingError("the model returned no pooler_output (built without its pooling layer?)")
            return pooled.flatten(1)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "cls+mean":
            return torch.cat([hidden[:, 0], hidden[:, self.mean_skip:].mean(dim=1)], dim=-1)
        if hidden.dim() == 3:  # (B, tokens, D)
            return hidden[:, self.mean_skip:].mean(dim=1)
        if hidden.dim() == 4:  # (B, C, H, W) feature map
            return hidden.mean(dim=(2, 3))
        raise PoolingError(f"cannot mean-pool a last_hidden_state of shape {tuple(hidden.shape)}")


class NaflexImageGraph(nn.Module):
    """SigLIP 2 NaFlex's image embedding (`get_image_features`: the vision tower and its attention-pooling
    head) with the position embeddings as an input. The per-image resize of the position table loops over
    the batch with sizes read from the data, which a traced ONNX graph cannot hold, so every backend computes
    it outside the graph (`backends.naflex`, numpy); every other step is the vision tower's own modules, in its
    order. One definition for torch and ONNX, equal to `get_image_features` within 3e-6 for every grid but
    one-column ones, where torch's CPU kernel (antialiased bilinear to width 1, torch 2.13) repeats the first
    row; there IEI gives the correct resize, as torch gives resizing one axis at a time (docs/architecture.md).

    forward: pixel_values float (B, N, patch * patch * 3) normalised patches, pixel_attention_mask int64
    (B, N), position_embeddings float (B, N, D) -> (B, D), not L2-normalised.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.vision = getattr(model, "vision_model", model)

    def forward(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor,
                position_embeddings: torch.Tensor) -> torch.Tensor:
        from transformers.modeling_attn_mask_utils import _prepare_4d_attention_mask

        vision = self.vision
        patches = vision.embeddings.patch_embedding(pixel_values.to(vision.embeddings.patch_embedding.weight.dtype))
        hidden = patches + position_embeddings.to(patches.dtype)
        mask = _prepare_4d_attention_mask(pixel_attention_mask, hidden.dtype)
        hidden = vision.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        return vision.head(vision.post_layernorm(hidden), pixel_attention_mask)


def position_table(model: nn.Module) -> torch.Tensor:
    """SigLIP 2 NaFlex's learned position embeddings as the (S, S, D) grid its resize starts from."""
    embeddings = getattr(model, "vision_model", model).embeddings
    side = embeddings.position_embedding_size
    return embeddings.position_embedding.weight.detach().reshape(side, side, -1)


class TextEmbeddingModel(nn.Module):
    """The text tower of a dual encoder (CLIP, SigLIP, MetaCLIP 2, AIMv2 LiT): `get_text_features`, the vector
    in the space of the family's `text_pooling` image embedding.

    forward: input_ids int64 (B, L), attention_mask int64 (B, L) (1 = token, 0 = padding) -> (B, D) in
    the model's dtype, not L2-normalised. The mask is ignored where the family was trained without one
    (SigLIP: texts padded to max_length, padding attended to).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        spec = FAMILIES.get(model_type)
        if spec is None or spec.text_pooling is None:
            raise PoolingError(f"model type {model_type!r} has no text tower")
        self.model = model
        self.use_attention_mask = spec.text_attention_mask
        self.aimv2 = Aimv2TextGraph(model) if model_type == "aimv2" else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.aimv2 is not None:
            return self.aimv2(input_ids, attention_mask)
        mask = attention_mask if self.use_attention_mask else None
        return self.model.get_text_features(input_ids=input_ids, attention_mask=mask)


class Aimv2TextGraph(nn.Module):
    """AIMv2 LiT's `get_text_features` with its attention mask built here. transformers builds the text tower's
    causal-and-padding mask with `torch.vmap` (`masking_utils.create_causal_mask`), which the ONNX tracer cannot
    record; every other step is the text tower's own modules in its order (embeddings, encoder, final RMSNorm,
    the hidden state at the first end-of-text token, `text_projection`). Torch and ONNX both run this module;
    it equals `get_text_features(input_ids, attention_mask)` (tests/backends/test_dual_families.py).

    Note transformers' tower attends causally only when given a mask (without one it attends both ways), so
    the mask is always passed, as the tokenizer's output passes it.

    forward: input_ids int64 (B, L), attention_mask int64 (B, L) -> (B, D).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        text = self.model.text_model
        hidden = text.embeddings(input_ids)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]  # (query, key): a token sees itself and the ones before
        allowed = causal[None, None] & attention_mask[:, None, None, :].bool()  # (B, 1, L, L)
        mask = torch.zeros(allowed.shape, dtype=hidden.dtype, device=hidden.device)
        mask = mask.masked_fill(~allowed, torch.finfo(hidden.dtype).min)
        hidden = text.rms_norm(text.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state)
        end = (input_ids.to(torch.int) == text.eos_token_id).int().argmax(dim=-1)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), end]
        return self.model.text_projection(pooled)
