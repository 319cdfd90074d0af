"""Turn an HTTP request into image payloads and options: JSON (base64), multipart files, or a raw
image body. Only cheap work here (the event loop runs it); decoding happens in the pool."""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import msgspec
from litestar import Request
from litestar.datastructures import UploadFile

from iei.engine import ImagePayload
from iei.errors import UnsupportedMediaType, ValidationFailed
from iei.server.compat.content import parse_messages
from iei.server.schemas import EmbedRequest, OpenAIEmbeddingRequest

T = TypeVar("T")

JSON_TYPES = ("application/json", "")
RAW_TYPES = ("application/octet-stream",)
INPUT_FORMATS = ["application/json (base64 strings)", "multipart/form-data (file parts)",
                 "image/* or application/octet-stream (one raw image)"]


class EmbedInputs(NamedTuple):
    images: list[ImagePayload]
    normalize: bool
    dimensions: int | None
    encoding_format: str = "float"  # /v1/embeddings: "float" or "base64"
    texts: list[str] | None = None  # `"modality": "text"`: the texts (and no images)
    field: str | None = None  # errors name input i `{field}[{positions[i]}]`; None: the route's field
    positions: tuple[int, ...] | None = None  # None: 0, 1, ...


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def decode_json(body: bytes, kind: type[T]) -> T:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise ValidationFailed(f"invalid request: {e}") from None
    except msgspec.DecodeError as e:
        raise ValidationFailed(f"invalid JSON: {e}") from None


async def read_json(request: Request, kind: type[T]) -> T:
    """A JSON-only route's body as `kind`. Raises UnsupportedMediaType or ValidationFailed."""
    media = media_type(request)
    if not is_json(media):
        raise UnsupportedMediaType(f"unsupported Content-Type {media!r}: send application/json")
    return decode_json(await request.body(), kind)


def as_list(inputs: str | list[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else inputs


async def read_embed_inputs(request: Request) -> EmbedInputs:
    media = media_type(request)
    if is_json(media):
        req = decode_json(await request.body(), EmbedRequest)
        if req.modality == "text":
            return EmbedInputs([], req.normalize, req.dimensions, texts=as_list(req.inputs))
        return EmbedInputs([ImagePayload(s, "base64") for s in as_list(req.inputs)], req.normalize, req.dimensions)
    if media == "multipart/form-data":
        return await _read_multipart(request)
    if media.startswith("image/") or media in RAW_TYPES:
        normalize, dimensions = read_options(request.query_params, {})
        return EmbedInputs([ImagePayload(await request.body(), "raw")], normalize, dimensions)
    raise UnsupportedMediaType(
        f"unsupported Content-Type {media!r}: send application/json, multipart/form-data, or a raw image body "
        "(image/* or application/octet-stream)"
    )


async def read_openai_inputs(request: Request) -> EmbedInputs:
    req = await read_json(request, OpenAIEmbeddingRequest)
    if req.messages is not None:
        if req.input is not None:
            raise ValidationFailed("send either `input` or `messages`, not both")
        return _from_messages(req)
    if req.input is None:
        raise ValidationFailed("`input` is required (or vLLM-style `messages`)")
    inputs = _strings(req.input)
    if req.modality == "text":
        return EmbedInputs([], req.normalize, req.dimensions, req.encoding_format, texts=inputs)
    images = [ImagePayload(s, "base64") for s in inputs]
    return EmbedInputs(images, req.normalize, req.dimensions, req.encoding_format)


def _strings(inputs: str | list) -> list[str]:
    """OpenAI's `input` as strings; token ids are refused: IEI tokenizes texts itself."""
    if isinstance(inputs, str):
        return [inputs]
    for i, item in enumerate(inputs):
        if not isinstance(item, str):
            raise ValidationFailed(
                f"input[{i}]: token ids are not accepted; send text strings with `\"modality\": \"text\"` "
                "(LangChain's OpenAIEmbeddings sends token ids unless check_embedding_ctx_length=False)")
    return inputs


def _from_messages(req: OpenAIEmbeddingRequest) -> EmbedInputs:
    """vLLM-style `messages`: one image or one text, named in errors by its place in the messages."""
    one = parse_messages(req.messages)  # type: ignore[arg-type]
    field, position = one.place
    texts = None if one.text is None else [one.text]
    images = [] if one.image is None else [one.image]
    return EmbedInputs(images, req.normalize, req.dimensions, req.encoding_format, texts=texts, field=field,
                       positions=(position,))


async def _read_multipart(request: Request) -> EmbedInputs:
    form = await request.form()
    images: list[ImagePayload] = []
    fields: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            images.append(ImagePayload(await value.read(), "raw"))
        else:
            fields[name] = value
    normalize, dimensions = read_options(request.query_params, fields)
    return EmbedInputs(images, normalize, dimensions)


def read_options(query, fields: dict[str, str]) -> tuple[bool, int | None]:
    """`normalize` and `dimensions` from form fields, else query parameters."""
    normalize_text = fields.get("normalize", query.get("normalize"))
    dimensions_text = fields.get("dimensions", query.get("dimensions"))
    normalize = True if normalize_text in (None, "") else _parse_bool("normalize", normalize_text)
    if dimensions_text in (None, "", "null"):
        return normalize, None
    try:
        return normalize, int(dimensions_text)
    except ValueError:
        raise ValidationFailed(f"`dimensions` must be an integer, got {dimensions_text!r}") from None


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValidationFailed(f"`{name}` must be true or false, got {text!r}")
