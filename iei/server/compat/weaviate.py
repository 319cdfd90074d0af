"""The inference API of Weaviate's `multi2vec-clip` module (what `CLIP_INFERENCE_API` points at), as its
reference container weaviate/multi2vec-clip-inference defines it:

- `POST /vectorize` `{"texts": [...], "images": [base64, ...]}` -> `{"textVectors": [...], "imageVectors": [...]}`,
  unit vectors in input order; either list may be empty or null (its vectors are then `[]`), both empty is
  a 200 with two empty lists. Errors carry `{"error": "..."}`, which the module's Go client reports.
- `GET /.well-known/live` and `GET /.well-known/ready`: 204 with no body (ready: once the model answers;
  the module polls it at start-up and waits for a 2xx).
- `GET /meta`: a JSON object Weaviate shows as the module's meta (here: the served model).
"""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get, post

from iei import __version__
from iei.engine import EmbedResult, ImagePayload
from iei.errors import Unhealthy
from iei.server.compat.mixed import MixedInputs, embed_mixed
from iei.server.inputs import read_json
from iei.server.openapi import KEYED_INFO_RESPONSES, UNHEALTHY_RESPONSES, VECTORIZE_RESPONSES, VectorizeOperation
from iei.server.routes import AppState, serve_embedding
from iei.server.schemas import VectorizeRequest, VectorizeResponse, VectorizerMeta


async def read_vectorize_inputs(request: Request) -> MixedInputs:
    req = await read_json(request, VectorizeRequest)
    images = [ImagePayload(image, "base64") for image in req.images or []]
    return MixedInputs(req.texts or [], images, "texts and images", "texts", "images", allow_empty=True)


def render_vectorize(result: EmbedResult, inputs: MixedInputs) -> bytes:
    vectors = result.vectors.tolist()
    split = len(inputs.texts)
    return msgspec.json.encode(VectorizeResponse(vectors[:split], vectors[split:]))


def build_weaviate_handlers(state: AppState) -> list:
    @post("/vectorize", status_code=200, summary="Weaviate multi2vec-clip: embed texts and images",
          description="`{\"texts\": [...], \"images\": [base64, ...]}` -> `{\"textVectors\": [...], \"imageVectors\": "
                      "[...]}`, unit vectors in input order (the inference API of Weaviate's multi2vec-clip module).",
          operation_class=VectorizeOperation, responses=VECTORIZE_RESPONSES)
    async def vectorize(request: Request) -> Response:
        return await serve_embedding(state, request, "/vectorize", read_vectorize_inputs, render_vectorize, embed=embed_mixed)

    @get(["/.well-known/live"], status_code=204, summary="Weaviate module liveness: 204 while the server runs")
    async def live() -> None:
        return None

    @get(["/.well-known/ready"], status_code=204, summary="Weaviate module readiness: 204 once the model answers",
         responses=UNHEALTHY_RESPONSES)
    async def ready() -> None:
        engine = state.engine
        problem = "the model is not loaded yet" if engine is None else await engine.health_problem_after_probe()
        if problem is not None:
            raise Unhealthy(problem)

    @get("/meta", summary="Weaviate module meta: the served model (needs the API key when --api-key is set)",
         responses=KEYED_INFO_RESPONSES)
    async def meta(request: Request) -> VectorizerMeta:
        state.check_api_key(request)  # like /info, which it summarises
        engine = state.require_engine()
        model = engine.model.info
        return VectorizerMeta(model_id=state.settings.model, served_model_name=state.settings.model_name,
                              embedding_dim=model.embedding_dim, modalities=list(model.modalities),
                              pooling=model.pooling, version=__version__)

    return [vectorize, live, ready, meta]
