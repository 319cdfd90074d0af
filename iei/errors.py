"""Typed errors of the embedding core. The HTTP layer maps them to status codes in one table
(`iei.server.errors`); nothing here knows about HTTP.

Every message is written for the client: it names the failing input by index and never carries
exception text from a library.
"""

from __future__ import annotations


class IEIError(Exception):
    """Base of all errors a client may see. `error_type` is the contract's PascalCase name."""

    error_type = "Internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyInput(IEIError):
    error_type = "Empty"


class ValidationFailed(IEIError):
    """Malformed request fields, bad base64, undecodable or oversized image, too many inputs."""

    error_type = "Validation"


class InputError(ValidationFailed):
    """One input could not be turned into pixels. Raised in preprocessing without the index;
    the engine re-raises it with `inputs[i]: ` in front."""

    def at(self, index: int, field: str = "inputs") -> "InputError":
        return InputError(f"{field}[{index}]: {self.message}")


class PayloadTooLarge(IEIError):
    error_type = "PayloadTooLarge"


class UnsupportedMediaType(IEIError):
    error_type = "UnsupportedMediaType"


class Unauthorized(IEIError):
    error_type = "Unauthorized"


class Overloaded(IEIError):
    error_type = "Overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(IEIError):
    """A batch job id the server does not know."""

    error_type = "NotFound"


class NotSupported(IEIError):
    """A feature this installation lacks (e.g. Parquet output without pyarrow); the message says what to install."""

    error_type = "NotImplemented"


# What a client is told when the model raised on its batch; the runtime's own text is logged instead
# (it can hold paths, shapes or driver details). The HTTP layer adds the request id.
BATCH_FAILED = "the model failed on the batch holding this request's inputs; the server log has the details"


class BackendFailed(IEIError):
    """The model failed on the batch this request was in."""

    error_type = "Backend"


class Unhealthy(IEIError):
    error_type = "Unhealthy"


class DeadlineExceeded(IEIError):
    """The request's deadline passed before its images were embedded; they were dropped."""

    error_type = "DeadlineExceeded"


class PreprocessWorkerDied(IEIError):
    """The worker process preprocessing this image died (crash or OOM kill); it is replaced."""

    error_type = "Backend"
