"""Every exception limpet raises.

Dependencies' exceptions (aiohttp, redis, tenacity, orjson) never escape: they are
mapped here at the boundary, with the original kept as ``__cause__``.

::

    LimpetError
    ├── InvalidRequestError          bad input, raised before any network call (also ValueError)
    ├── ConfigurationError           bad Client / Endpoint configuration (also ValueError)
    ├── ClientClosedError            a call on a Client after aclose() (also RuntimeError)
    ├── CacheError                   a cache backend could not serve; never reaches a caller of
    │   ├── CacheUnavailableError    complete(): the cache tier counts it and falls through
    │   └── CacheCorruptError        an entry that does not decode or fails its signature
    └── APIError                     the upstream call failed
        ├── APIConnectionError       could not connect, or the connection dropped
        │   └── APITimeoutError      connect or total timeout
        ├── APIResponseError         a 2xx that is not a chat completion (bad JSON, wrong shape)
        ├── APIStreamError           a stream that failed part-way (OpenRouter's error chunk)
        └── APIStatusError           a non-2xx status; ``status_code``, ``body``, ``request_id``
            ├── BadRequestError            400
            ├── AuthenticationError        401
            ├── PaymentRequiredError       402
            ├── PermissionDeniedError      403
            ├── NotFoundError              404
            ├── RequestTimeoutError        408
            ├── ConflictError              409
            ├── UnprocessableEntityError   422
            ├── RateLimitError             429
            └── InternalServerError        5xx

Messages never contain API keys: transport scrubs them from body excerpts before an
error is built, and no error keeps the request's headers.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CacheCorruptError",
    "CacheError",
    "CacheUnavailableError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "LimpetError",
    "NotFoundError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "UnprocessableEntityError",
    "status_error",
]


class LimpetError(Exception):
    """Base of every exception limpet raises."""


class InvalidRequestError(LimpetError, ValueError):
    """A request failed validation; raised before any network call.

    Attributes:
        field: the offending field, dotted for nested ones (``messages[2].role``).
    """

    def __init__(self, field: str, expected: str, got: object = None) -> None:
        self.field = field
        self.expected = expected
        shown = "" if got is None else f", got {_describe(got)}"
        super().__init__(f"{field}: expected {expected}{shown}")


class ConfigurationError(LimpetError, ValueError):
    """The Client or one of its parts was configured with values that cannot work."""


class ClientClosedError(LimpetError, RuntimeError):
    """The Client was used after ``aclose()``."""


class CacheError(LimpetError):
    """A cache backend failed. Callers of ``complete()`` never see it."""


class CacheUnavailableError(CacheError):
    """The backend could not be reached or did not answer in time."""


class CacheCorruptError(CacheError):
    """An entry did not decode, or failed its signature."""


class APIError(LimpetError):
    """The upstream call failed.

    Attributes:
        endpoint: name of the endpoint that was called, when known.
    """

    def __init__(self, message: str, *, endpoint: str | None = None) -> None:
        self.endpoint = endpoint
        super().__init__(message)


class APIConnectionError(APIError):
    """The connection could not be made, or broke before a full response arrived."""


class APITimeoutError(APIConnectionError):
    """The upstream did not answer within the configured timeout."""


class APIResponseError(APIError):
    """A 2xx response whose body is not a chat completion (not JSON, or the wrong shape).

    Attributes:
        status_code: the HTTP status of the response.
        body: a short excerpt of the body as received.
    """

    def __init__(
        self, message: str, *, status_code: int, body: str, endpoint: str | None = None
    ) -> None:
        self.status_code = status_code
        self.body = body
        super().__init__(f"{message} (status {status_code}, body {body!r})", endpoint=endpoint)


class APIStreamError(APIError):
    """A stream that failed after it started: OpenRouter reports it in an HTTP 200 stream
    as a chunk with ``error`` and ``finish_reason: "error"``.

    Attributes:
        status_code: the error's code (an HTTP status), when the chunk gave one.
    """

    def __init__(
        self, message: str, *, status_code: int | None = None, endpoint: str | None = None
    ) -> None:
        self.status_code = status_code
        code = f" ({status_code})" if status_code is not None else ""
        super().__init__(f"stream failed{code}: {message}", endpoint=endpoint)


class APIStatusError(APIError):
    """The upstream answered with a non-2xx status.

    Attributes:
        message: the upstream's own error message.
        status_code: the HTTP status.
        body: a short excerpt of the response body (secrets scrubbed).
        request_id: the gateway's request or generation id, when it sent one.
        retry_after: seconds the upstream asked us to wait, when it said.
    """

    status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: str = "",
        request_id: str | None = None,
        retry_after: float | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after
        where = f" from endpoint {endpoint!r}" if endpoint else ""
        rid = f" [request {request_id}]" if request_id else ""
        super().__init__(f"HTTP {status_code}{where}: {message}{rid}", endpoint=endpoint)


class BadRequestError(APIStatusError):
    status = 400


class AuthenticationError(APIStatusError):
    status = 401


class PaymentRequiredError(APIStatusError):
    status = 402


class PermissionDeniedError(APIStatusError):
    status = 403


class NotFoundError(APIStatusError):
    status = 404


class RequestTimeoutError(APIStatusError):
    status = 408


class ConflictError(APIStatusError):
    status = 409


class UnprocessableEntityError(APIStatusError):
    status = 422


class RateLimitError(APIStatusError):
    status = 429


class InternalServerError(APIStatusError):
    """Any 5xx."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PaymentRequiredError,
        PermissionDeniedError,
        NotFoundError,
        RequestTimeoutError,
        ConflictError,
        UnprocessableEntityError,
        RateLimitError,
    )
    if cls.status is not None
}


def status_error(status_code: int) -> type[APIStatusError]:
    """The most specific ``APIStatusError`` subclass for an HTTP status."""
    if status_code >= 500:
        return InternalServerError
    return _BY_STATUS.get(status_code, APIStatusError)


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"
