"""What the served OpenAPI schema says about the embedding routes, which read their bodies by hand
(JSON, multipart or raw bytes, so Litestar cannot infer them): the JSON request body, the success
body and every error status a route can answer, so that clients and schema-driven fuzzers
(schemathesis, in the tests) see the real contract."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

from iei.server.schemas import ErrorBody, OpenAIEmbeddingResponse, OpenAIErrorBody

_STRING = Schema(type=OpenAPIType.STRING)
_INPUTS = Schema(one_of=[_STRING, Schema(type=OpenAPIType.ARRAY, items=_STRING)],
                 description="base64 images (a data: URI prefix is allowed), or http(s) URLs if the server allows them")
_DIMENSIONS = Schema(one_of=[Schema(type=OpenAPIType.INTEGER), Schema(type=OpenAPIType.NULL)])

EMBED_BODY = Schema(type=OpenAPIType.OBJECT, required=["inputs"], properties={
    "inputs": _INPUTS, "normalize": Schema(type=OpenAPIType.BOOLEAN), "dimensions": _DIMENSIONS})
OPENAI_BODY = Schema(type=OpenAPIType.OBJECT, required=["input"], properties={
    "input": _INPUTS, "model": Schema(one_of=[_STRING, Schema(type=OpenAPIType.NULL)]),
    "encoding_format": Schema(type=OpenAPIType.STRING, enum=["float", "base64"]), "dimensions": _DIMENSIONS,
    "user": Schema(one_of=[_STRING, Schema(type=OpenAPIType.NULL)])})

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


def error_responses(body: type = ErrorBody) -> dict[int, ResponseSpec]:
    return {status: ResponseSpec(data_container=body, description=text) for status, text in _ERRORS.items()}


EMBED_RESPONSES = {200: ResponseSpec(data_container=list[list[float]], description="one vector per image"),
                   **error_responses()}
OPENAI_RESPONSES = {200: ResponseSpec(data_container=OpenAIEmbeddingResponse, description="embeddings"),
                    **error_responses(OpenAIErrorBody)}
UNHEALTHY_RESPONSES = {503: ResponseSpec(data_container=ErrorBody, description="not ready")}
