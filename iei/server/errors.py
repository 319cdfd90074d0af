"""The one place where errors become HTTP statuses and JSON bodies."""

from __future__ import annotations

import msgspec

from iei.errors import IEIError
from iei.server.schemas import ErrorBody, OpenAIErrorBody, OpenAIErrorDetail

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
