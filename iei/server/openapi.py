"""What the served OpenAPI schema says about the embedding routes, which read their bodies by hand
(JSON, multipart or raw bytes, so Litestar cannot infer them): the JSON request body, the success
body and every error status a route can answer, so that clients and schema-driven fuzzers
(schemathesis, in the tests) see the real contract."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from iei.server.schemas import (
    CohereEmbedResponse, ErrorBody, OpenAIEmbeddingResponse, OpenAIErrorBody, VectorizeResponse,
)

_STRING = Schema(type=OpenAPIType.STRING)
_INPUTS = Schema(one_of=[_STRING, Schema(type=OpenAPIType.ARRAY, items=_STRING)],
                 description="base64 images (a data: URI prefix is allowed), or http(s) URLs if the server allows them")
_DIMENSIONS = Schema(one_of=[Schema(type=OpenAPIType.INTEGER), Schema(type=OpenAPIType.NULL)])

EMBED_BODY = Schema(type=OpenAPIType.OBJECT, required=["inputs"], properties={
    "inputs": _INPUTS, "normalize": Schema(type=OpenAPIType.BOOLEAN), "dimensions": _DIMENSIONS})
_OPTIONAL_STRING = Schema(one_of=[_STRING, Schema(type=OpenAPIType.NULL)])
_STRINGS = Schema(type=OpenAPIType.ARRAY, items=_STRING)
_CONTENT_PARTS = Schema(type=OpenAPIType.ARRAY, items=Schema(
    type=OpenAPIType.OBJECT, required=["type"], properties={
        "type": Schema(type=OpenAPIType.STRING, enum=["image_url", "text"]), "text": _STRING,
        "image_url": Schema(type=OpenAPIType.OBJECT, required=["url"], properties={"url": _STRING})}),
    description="one `image_url` part (a data: URI or base64), or `text` parts")
_MESSAGES = Schema(type=OpenAPIType.ARRAY, description="vLLM-style chat embeddings: one vector for all the messages",
                   items=Schema(type=OpenAPIType.OBJECT, properties={
                       "role": _STRING, "content": Schema(one_of=[_STRING, _CONTENT_PARTS])}))

OPENAI_BODY = Schema(type=OpenAPIType.OBJECT, description="`input` or `messages`", properties={
    "input": _INPUTS, "messages": _MESSAGES, "model": _OPTIONAL_STRING,
    "encoding_format": Schema(type=OpenAPIType.STRING, enum=["float", "base64"]), "dimensions": _DIMENSIONS,
    "normalize": Schema(type=OpenAPIType.BOOLEAN), "user": _OPTIONAL_STRING,
    "modality": Schema(type=OpenAPIType.STRING, enum=["image", "text"])})
COHERE_BODY = Schema(type=OpenAPIType.OBJECT, description="one of `texts`, `images` or `inputs`", properties={
    "model": _OPTIONAL_STRING, "input_type": Schema(type=OpenAPIType.STRING, enum=[
        "search_document", "search_query", "classification", "clustering", "image"]),
    "texts": _STRINGS, "images": Schema(type=OpenAPIType.ARRAY, items=_STRING, description="data: URIs or base64"),
    "inputs": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT, required=["content"],
                                                           properties={"content": _CONTENT_PARTS})),
    "embedding_types": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.STRING, enum=[
        "float", "int8", "uint8", "binary", "ubinary", "base64"])),
    "output_dimension": _DIMENSIONS, "truncate": Schema(type=OpenAPIType.STRING, enum=["END"])})
VECTORIZE_BODY = Schema(type=OpenAPIType.OBJECT, properties={
    "texts": Schema(one_of=[_STRINGS, Schema(type=OpenAPIType.NULL)]),
    "images": Schema(one_of=[_STRINGS, Schema(type=OpenAPIType.NULL)], description="base64 images")})

_ERRORS = {
    400: "`inputs` empty", 401: "API key missing or wrong", 413: "body over the payload limit",
    415: "unsupported Content-Type", 422: "invalid request or image (the message names the input)",
    424: "the model or the worker decoding an image failed", 429: "at capacity; see Retry-After",
    500: "internal error (the message carries the request id)",
    503: "not ready, shutting down or the model is restarting", 504: "the request's deadline passed",
}


def _with_json_body(schema: Schema) -> type[Operation]:
    @dataclass
    class JsonBodyOperation(Operation):
        def __post_init__(self) -> None:
            self.request_body = RequestBody(content={"application/json": OpenAPIMediaType(schema=schema)},
                                            required=True)

    return JsonBodyOperation


EmbedOperation = _with_json_body(EMBED_BODY)
OpenAIOperation = _with_json_body(OPENAI_BODY)
CohereOperation = _with_json_body(COHERE_BODY)
VectorizeOperation = _with_json_body(VECTORIZE_BODY)


def error_responses(body: type = ErrorBody) -> dict[int, ResponseSpec]:
    return {status: ResponseSpec(data_container=body, description=text) for status, text in _ERRORS.items()}


EMBED_RESPONSES = {200: ResponseSpec(data_container=list[list[float]], description="one vector per image"),
                   **error_responses()}
OPENAI_RESPONSES = {200: ResponseSpec(data_container=OpenAIEmbeddingResponse, description="embeddings"),
                    **error_responses(OpenAIErrorBody)}
COHERE_RESPONSES = {200: ResponseSpec(data_container=CohereEmbedResponse, description="embeddings by type"),
                    **error_responses()}
VECTORIZE_RESPONSES = {200: ResponseSpec(data_container=VectorizeResponse, description="text and image vectors"),
                       **error_responses()}
UNHEALTHY_RESPONSES = {503: ResponseSpec(data_container=ErrorBody, description="not ready")}
_UNAUTHORIZED = "--api-key set and the bearer token missing or wrong"
KEYED_INFO_RESPONSES = {**UNHEALTHY_RESPONSES, 401: ResponseSpec(data_container=ErrorBody, description=_UNAUTHORIZED)}
MODEL_LIST_RESPONSES = {401: ResponseSpec(data_container=OpenAIErrorBody, description=_UNAUTHORIZED)}
