"""/batches on an HTTP front end (`--http-workers` above 1): every request is forwarded, as it came, to
the engine process's private HTTP server (a Unix socket), where the one job runner and its database live.
So a job is stored and run once, whichever front end received it, and every front end sees every job.

Bodies stream both ways (a job's JSONL in, its results out); only routing headers are dropped.
Owner: the front end's event loop."""

from __future__ import annotations

import httpx
from litestar import Request, Response, route
from litestar.background_tasks import BackgroundTask
from litestar.handlers import HTTPRouteHandler
from litestar.response import Stream

from iei.errors import Unhealthy

_HOP_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                "proxy-authorization", "proxy-authenticate", "content-length"}


class BatchProxy:
    def __init__(self, engine_http: str) -> None:
        self._client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=engine_http),
                                         base_url="http://engine", timeout=None)

    async def forward(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        outgoing = self._client.build_request(request.method, request.url.path, params=request.url.query or None,
                                              headers=headers, content=request.stream())
        try:
            answer = await self._client.send(outgoing, stream=True)
        except httpx.TransportError:
            raise Unhealthy("batch jobs are unavailable: the engine is not reachable") from None
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        return Stream(answer.aiter_raw(), status_code=answer.status_code, headers=kept,
                      background=BackgroundTask(answer.aclose))

    async def close(self) -> None:
        await self._client.aclose()


def build_batch_proxy_handlers(proxy: BatchProxy) -> list[HTTPRouteHandler]:
    @route(["/batches", "/batches/{rest:path}"], http_method=["GET", "POST", "DELETE"], include_in_schema=False)
    async def batches(request: Request) -> Response:
        return await proxy.forward(request)

    return [batches]
