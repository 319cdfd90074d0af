"""The one place where errors become HTTP statuses and JSON bodies.

Every route answers errors through `error_response`: the embedding routes' shared `_serve` calls it
(it records the outcome first), and the app factory registers `build_exception_handlers` for everything
else a handler raises (/info, /metrics, /batches, /v1/models, /.well-known/ready, ...) and for Litestar's
own routing errors. A route picks its body shape with `opt={"error_body": ...}` (`ERROR_BODY_OPT`):
"tei" (the default: `{"error", "error_type"}`, which Cohere's and Weaviate's clients read too) or
"openai" (`{"error": {"message", "type", "code"}}`). Each error response carries `x-request-id`.
"""

from __future__ import annotations

import logging
from typing import Callable

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from iei.errors import IEIError
from iei.server.schemas import ErrorBody, OpenAIErrorBody, OpenAIErrorDetail

log = logging.getLogger("iei.server")

STATUS_BY_ERROR_TYPE: dict[str, int] = {
    "Empty": 400,
    "Unauthorized": 401,
    "NotFound": 404,
    "MethodNotAllowed": 405,
    "PayloadTooLarge": 413,
    "UnsupportedMediaType": 415,
    "Validation": 422,
    "Backend": 424,
    "Overloaded": 429,
    "Internal": 500,
    "NotImplemented": 501,
    "Unhealthy": 503,
    "DeadlineExceeded": 504,
}

# Errors Litestar raises itself (routing, body size), by status.
ERROR_TYPE_BY_STATUS: dict[int, str] = {status: name for name, status in STATUS_BY_ERROR_TYPE.items()}
ERROR_TYPE_BY_STATUS[400] = "Validation"

_OPENAI_TYPES = {"Overloaded": "rate_limit_error", "Internal": "server_error", "Unhealthy": "server_error",
                 "Backend": "server_error", "Unauthorized": "authentication_error", "DeadlineExceeded": "timeout"}

ERROR_BODY_OPT = "error_body"  # key of a route handler's `opt`: "tei" (default) or "openai"
OPENAI_ERRORS = {ERROR_BODY_OPT: "openai"}

JSON = "application/json"


class HTTPError:
    """An error ready to send: status, body, extra headers."""

    __slots__ = ("status", "error_type", "message", "headers")

    def __init__(self, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        self.error_type = error_type
        self.status = STATUS_BY_ERROR_TYPE.get(error_type, 500)
        self.message = message
        self.headers = headers or {}

    @classmethod
    def from_error(cls, error: IEIError) -> "HTTPError":
        retry_after = getattr(error, "retry_after_s", None)
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        if error.error_type == "Unauthorized":
            headers["www-authenticate"] = "Bearer"
        return cls(error.error_type, error.message, headers)

    def tei_body(self) -> bytes:
        return msgspec.json.encode(ErrorBody(self.message, self.error_type))

    def openai_body(self) -> bytes:
        kind = _OPENAI_TYPES.get(self.error_type, "invalid_request_error")
        return msgspec.json.encode(OpenAIErrorBody(OpenAIErrorDetail(self.message, kind, self.status)))

    def body(self, shape: str) -> bytes:
        return self.openai_body() if shape == "openai" else self.tei_body()


def classify_error(error: Exception, request_id: str, payload_limit: int) -> HTTPError:
    """The error→status table in action. Unexpected errors are logged with the request id and become a 500
    that names it; a backend failure (424) names it too, so a client's report finds the log line."""
    if isinstance(error, IEIError):
        http_error = HTTPError.from_error(error)
        if http_error.status == 424:
            http_error.message = f"{error.message} (request id {request_id})"
        return http_error
    if isinstance(error, HTTPException):  # raised by Litestar: routing, or reading the body (its 400s are 422
        # Validation, as the table says: one status per error type)
        error_type = ERROR_TYPE_BY_STATUS.get(error.status_code, "Validation")
        if error.status_code >= 500:
            log.error("internal error in request %s: %s", request_id, error.detail)
            return HTTPError("Internal", f"internal error (request id {request_id})")
        return HTTPError(error_type, _litestar_message(error, payload_limit), dict(error.headers or {}))
    log.error("unexpected error in request %s", request_id, exc_info=error)
    return HTTPError("Internal", f"internal error (request id {request_id})")


def _litestar_message(error: HTTPException, payload_limit: int) -> str:
    if error.status_code == 413:
        return f"request body is larger than the payload limit of {payload_limit} bytes (payload_limit)"
    return str(error.detail)


def body_shape(request: Request) -> str:
    """The error body shape of the route serving `request` ("tei" before routing has found one)."""
    handler = request.scope.get("route_handler")
    opt = getattr(handler, "opt", None) or {}
    return opt.get(ERROR_BODY_OPT, "tei")


def error_response(request: Request, error: HTTPError, request_id: str,
                   headers: dict[str, str] | None = None) -> Response:
    """`error` as the route's JSON body, with its headers, `headers` and the request id."""
    all_headers = {**error.headers, **(headers or {}), "x-request-id": request_id}
    return Response(content=error.body(body_shape(request)), status_code=error.status, media_type=JSON,
                    headers=all_headers)


def build_exception_handlers(request_id: Callable[[Request], str],
                             payload_limit: int) -> dict[type[Exception], Callable[[Request, Exception], Response]]:
    """The app's exception handlers: whatever a route handler (or Litestar's router) raises."""

    def handle(request: Request, exc: Exception) -> Response:
        rid = request_id(request)
        return error_response(request, classify_error(exc, rid, payload_limit), rid)

    return {Exception: handle}
