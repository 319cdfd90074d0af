"""Cohere's `POST /v2/embed`, so `cohere.ClientV2(base_url=...)` embeds images and texts here.

Request: one of `texts`, `images` (data URIs or base64) or `inputs` (content parts, one image or text per
input); `input_type` (checked, no effect: CLIP and SigLIP have no query/document prompts); `embedding_types`
(iei.server.compat.embedding_types); `output_dimension` (keep the first N dimensions, then renormalise, as
`dimensions` does elsewhere). Vectors are always unit length. Errors use the contract's body.
"""

from __future__ import annotations

import uuid
from typing import NamedTuple

import msgspec
from litestar import Request, Response, post

from iei.engine import EmbeddingEngine, EmbedResult, ImagePayload
from iei.errors import ValidationFailed
from iei.server.compat.content import parse_parts
from iei.server.compat.embedding_types import check_embedding_types, encode_embeddings
from iei.server.compat.mixed import MixedInputs, embed_mixed
from iei.server.inputs import read_json
from iei.server.openapi import COHERE_RESPONSES, CohereOperation
from iei.server.routes import AppState, serve_embedding
from iei.server.schemas import CohereEmbedRequest, CohereEmbedResponse

INPUT_TYPES = ("search_document", "search_query", "classification", "clustering", "image")


class CohereInputs(NamedTuple):
    """What the renderer needs beside the vectors."""

    mixed: MixedInputs
    types: tuple[str, ...]
    texts: list[str] | None  # echoed as the response's `texts`


async def read_cohere_inputs(request: Request) -> CohereInputs:
    """Parse and check a /v2/embed body (cheap checks only). Raises UnsupportedMediaType, ValidationFailed."""
    req = await read_json(request, CohereEmbedRequest)
    given = [name for name in ("texts", "images", "inputs") if getattr(req, name) is not None]
    if len(given) != 1:
        raise ValidationFailed("send exactly one of `texts`, `images` or `inputs`"
                               + (f" (got {', '.join(given)})" if given else ""))
    _check_options(req)
    types = check_embedding_types(req.embedding_types)
    if req.texts is not None:
        mixed = MixedInputs(req.texts, [], "texts", "texts", "images", dimensions=req.output_dimension)
        return CohereInputs(mixed, types, req.texts)
    if req.images is not None:
        images = [ImagePayload(image, "base64") for image in req.images]
        mixed = MixedInputs([], images, "images", "texts", "images", dimensions=req.output_dimension)
        return CohereInputs(mixed, types, None)
    return CohereInputs(_from_inputs(req), types, None)


def _check_options(req: CohereEmbedRequest) -> None:
    if req.input_type is not None and req.input_type not in INPUT_TYPES:
        raise ValidationFailed(f"`input_type` must be one of {', '.join(INPUT_TYPES)}, got {req.input_type!r}")
    if req.truncate is not None and req.truncate != "END":
        raise ValidationFailed(f"`truncate` {req.truncate!r} is not supported: texts longer than the model's limit "
                               "are cut at the end (`END`)")
    if req.max_tokens is not None:
        raise ValidationFailed("`max_tokens` is not supported: texts are cut at the model's own limit "
                               "(`max_input_tokens` in /info)")
    if req.output_dimension is not None and req.output_dimension < 1:
        raise ValidationFailed(f"`output_dimension` must be a positive number of dimensions, "
                               f"got {req.output_dimension}")


def _from_inputs(req: CohereEmbedRequest) -> MixedInputs:
    """Cohere's `inputs`: each one image or one text (its text parts joined). The result's rows are texts then
    images; `order` puts them back in request order."""
    texts, text_at, images, image_at = [], [], [], []
    for i, one_input in enumerate(req.inputs):
        places = [(f"inputs[{i}].content", p) for p in range(len(one_input.content))]
        one = parse_parts(one_input.content, places, f"inputs[{i}]")
        if one.image is not None:
            images.append(one.image)
            image_at.append(i)
        else:
            texts.append(one.text)
            text_at.append(i)
    row = {position: r for r, position in enumerate(text_at + image_at)}
    return MixedInputs(texts, images, "inputs", "inputs", "inputs", tuple(text_at), tuple(image_at),
                       req.output_dimension, order=tuple(row[i] for i in range(len(req.inputs))))


async def embed_cohere(engine: EmbeddingEngine, inputs: CohereInputs, field: str) -> EmbedResult:
    dimensions = inputs.mixed.dimensions
    dim = engine.model.info.embedding_dim
    if dimensions is not None and dimensions > dim:
        raise ValidationFailed(f"`output_dimension` {dimensions} is more than this model's {dim} dimensions; "
                               f"ask for at most {dim}")
    return await embed_mixed(engine, inputs.mixed, field)


def render_cohere(result: EmbedResult, inputs: CohereInputs) -> bytes:
    vectors = result.vectors if inputs.mixed.order is None else result.vectors[list(inputs.mixed.order)]
    body = CohereEmbedResponse(uuid.uuid4().hex, encode_embeddings(vectors, inputs.types), inputs.texts)
    return msgspec.json.encode(body)


def build_cohere_handlers(state: AppState) -> list:
    @post("/v2/embed", status_code=200, summary="Cohere-compatible embeddings (images and texts)",
          description="Cohere's v2 embed request: one of `texts`, `images` (data URIs) or `inputs` (content parts), "
                      "`input_type`, `embedding_types` (float, int8, uint8, binary, ubinary, base64), "
                      "`output_dimension`. Vectors are unit length.",
          operation_class=CohereOperation, responses=COHERE_RESPONSES)
    async def cohere_embed(request: Request) -> Response:
        return await serve_embedding(state, request, "/v2/embed", read_cohere_inputs, render_cohere, embed=embed_cohere)

    return [cohere_embed]
