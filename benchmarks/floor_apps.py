"""The two bare apps `floor_bench.py` serves with uvicorn: the least an `/embed` server on IEI's stack can
cost per request. Both read the whole JSON body and answer one fixed 32-float vector (the tiny ViT's
width); neither decodes an image or runs a model.

  raw_app      a plain ASGI callable: uvicorn (uvloop, httptools) and nothing above it
  litestar_app Litestar with a msgspec request struct, as IEI's routes use it
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, get, post

VECTOR = [0.125] * 32
_RAW_VECTORS = msgspec.json.encode([VECTOR])
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def raw_app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:  # read the body, as any server must
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"status":"ok"}' if scope["path"] == "/health" else _RAW_VECTORS
    await send({"type": "http.response.start", "status": 200, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


class EmbedRequest(msgspec.Struct):
    inputs: list[str]


@post("/embed", status_code=200)
async def embed(data: EmbedRequest) -> list[list[float]]:
    return [VECTOR for _ in data.inputs]


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


litestar_app = Litestar([embed, health])
