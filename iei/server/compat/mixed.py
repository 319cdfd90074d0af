"""Requests that carry images and texts together (Weaviate's `texts` + `images`, Cohere's `inputs`): the
engine embeds each modality apart (a model call never mixes them), so one request becomes two engine calls
run at once, and one result whose rows are the texts, then the images."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from iei.engine import EmbeddingEngine, EmbedResult, ImagePayload, Timings, all_or_nothing


class MixedInputs(NamedTuple):
    texts: list[str]
    images: list[ImagePayload]
    field: str  # names the whole request in the count checks (`texts` cannot be empty, has too many inputs)
    text_field: str  # errors name text i `{text_field}[{text_positions[i]}]`
    image_field: str
    text_positions: tuple[int, ...] | None = None  # None: 0, 1, ...
    image_positions: tuple[int, ...] | None = None
    dimensions: int | None = None
    allow_empty: bool = False  # True: no input at all is an empty answer (Weaviate), not a 400
    order: tuple[int, ...] | None = None  # the renderer's: result row of each input in request order


async def embed_mixed(engine: EmbeddingEngine, inputs: MixedInputs, field: str = "") -> EmbedResult:
    """Embed `inputs`: unit vectors, truncated to `dimensions` first. (`field`, the route's, is unused: `inputs`
    names its own fields.) Raises the errors of `iei.errors`; on the first failure the other modality's work
    is cancelled."""
    count = len(inputs.texts) + len(inputs.images)
    if count == 0 and inputs.allow_empty:
        return EmbedResult(np.zeros((0, 0), dtype=np.float32), Timings(0.0, 0.0, 0.0))
    engine.check_request(count, inputs.dimensions, inputs.field)
    calls = []
    if inputs.texts:
        calls.append(engine.embed_texts(inputs.texts, dimensions=inputs.dimensions, field=inputs.text_field,
                                        positions=inputs.text_positions))
    if inputs.images:
        calls.append(engine.embed(inputs.images, dimensions=inputs.dimensions, field=inputs.image_field,
                                  positions=inputs.image_positions))
    results = await all_or_nothing(calls)
    vectors = np.concatenate([r.vectors for r in results])
    timings = Timings(*(max(stage) for stage in zip(*(r.timings for r in results))))
    return EmbedResult(vectors, timings)

