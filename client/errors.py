"""The client's exceptions: one per HTTP status of the server's error shape, built from its `{"error": {...}}`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddgan.client.models import Job


class ClientError(Exception):
    """Base of every error the client raises."""


class ConnectionFailedError(ClientError):
    """The server could not be reached or the connection broke (DNS, refused, reset, timeout)."""


class APIError(ClientError):
    """An error answer: `{"error": {"type", "message", "status", "request_id", "details"}}` from the server."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        request_id: str | None = None,
        details: list[dict[str, Any]] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{status} {type}: {message}")
        self.status = status
        self.type = type
        self.message = message
        self.request_id = request_id
        self.details = details or []
        self.retry_after_s = retry_after_s


class BadRequestError(APIError):
    """400: the body is not JSON."""


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404: unknown model, model not installed (the message has the install command), unknown or expired job."""


class NotAcceptableError(APIError):
    """406: no answer in the media type asked for."""


class ConflictError(APIError):
    """409: e.g. the result of a job that has not succeeded."""


class PayloadTooLargeError(APIError):
    """413: the request body is over the server's limit."""


class UnsupportedMediaTypeError(APIError):
    """415: the body was not sent as JSON."""


class InvalidRequestError(APIError):
    """422: a field is wrong; `details` names each (`field`, `message`, `type`)."""


class ServerError(APIError):
    """500: the batch holding the request failed, or a server bug."""


class UnavailableError(APIError):
    """503: overloaded, model not ready, shutting down (retried by the client while `Retry-After` allows)."""


class OverloadedError(UnavailableError):
    """503 `overloaded`: the model's queue is full; `retry_after_s` says when to come back."""


class DeadlineExceededError(APIError):
    """504: no result within the request's deadline."""


class JobFailedError(ClientError):
    """A job ended `failed` or `cancelled` while waiting for it; `job` is its last state."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        reason = f"{error.get('type', job.state)}: {error.get('message', 'no reason given')}"
        super().__init__(f"job {job.id} {job.state} ({reason})")
        self.job = job


class WaitTimeoutError(ClientError):
    """`jobs.wait` gave up before the job finished (the job keeps running on the server)."""


BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    406: NotAcceptableError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidRequestError,
    500: ServerError,
    503: UnavailableError,
    504: DeadlineExceededError,
}


def error_class(status: int, type: str) -> type[APIError]:
    if status == 503 and type == "overloaded":
        return OverloadedError
    if status in BY_STATUS:
        return BY_STATUS[status]
    return ServerError if status >= 500 else APIError
