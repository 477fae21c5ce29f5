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
    │   │   ├── CacheRejectedError   the command certainly did not take effect
    │   │   └── CacheTimeoutError    no answer within the command's budget: slow, or gone
    │   └── CacheCorruptError        an entry that does not decode or fails its signature
    └── APIError                     the upstream call failed
        ├── APIConnectionError       could not connect, or the connection dropped
        │   └── APITimeoutError      connect or total timeout
        ├── APIResponseError         a 2xx that is not a chat completion (bad JSON, wrong shape)
        ├── APIGenerationError       a 200 whose generation failed part-way (``finish_reason:
        │   │                        "error"``); ``status_code`` is the error's code; retried
        │   └── APIStreamError       the same reported by a stream's error chunk
        ├── EmbeddingBatchError      some inputs of an ``embed()`` call failed; the rest are cached
        └── APIStatusError           a non-2xx status; ``status_code``, ``body``, ``request_id``,
            │                        the error object's ``code``, ``param`` and ``type``
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

Messages never contain API keys. Every upstream call runs inside ``upstream_errors``,
the one boundary: it maps aiohttp's and the OS's failures to ``APIConnectionError`` and
``APITimeoutError``, and passes every ``APIError`` leaving it through ``scrub``, which
replaces the endpoint's secrets (in any case, and in the forms an upstream may echo them:
JSON-escaped, percent-encoded, base64) and any ``Bearer <token>`` in its message, its
``args`` and its text attributes (``body``, ``message``, ``request_id``...), whatever the
upstream echoed back. Excerpts are scrubbed before they are cut (``excerpt``), so a secret that
straddles the cut cannot leak in part. No error keeps the request's headers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any, ClassVar

import aiohttp

from limpet.models import Cost, Usage
from limpet.scrub import excerpt, scrub, scrub_error, secret_forms

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIGenerationError",
    "APIResponseError",
    "APIStatusError",
    "APIStreamError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "CacheCorruptError",
    "CacheError",
    "CacheRejectedError",
    "CacheTimeoutError",
    "CacheUnavailableError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "EmbeddingBatchError",
    "InternalServerError",
    "InvalidRequestError",
    "LimpetError",
    "NotFoundError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTimeoutError",
    "UnprocessableEntityError",
    "excerpt",
    "headers_shape",
    "scrub",
    "scrub_error",
    "secret_forms",
    "shown_cause",
    "status_error",
    "upstream_error",
    "upstream_errors",
]

# Header names an error lists at most.
_SHOWN_HEADERS = 10


class LimpetError(Exception):
    """Base of every exception limpet raises."""


class InvalidRequestError(LimpetError, ValueError):
    """A request failed validation; raised before any network call.

    Args:
        got: the offending value, shown by its repr (cut short).
        described: what the value is, told without its contents, shown instead of ``got``
            where the value may hold a secret (headers).

    Attributes:
        field: the offending field, dotted for nested ones (``messages[2].role``).
    """

    def __init__(
        self, field: str, expected: str, got: object = None, *, described: str | None = None
    ) -> None:
        self.field = field
        self.expected = expected
        if described is None and got is not None:
            described = _describe(got)
        shown = "" if described is None else f", got {described}"
        super().__init__(f"{field}: expected {expected}{shown}")


class ConfigurationError(LimpetError, ValueError):
    """The Client or one of its parts was configured with values that cannot work."""


class ClientClosedError(LimpetError, RuntimeError):
    """The Client was used after ``aclose()``."""


class CacheError(LimpetError):
    """A cache backend failed. Callers of ``complete()`` never see it."""


class CacheUnavailableError(CacheError):
    """The backend could not be reached or did not answer in time. The command may still
    have taken effect (its reply lost or late), unless it is a ``CacheRejectedError``."""


class CacheRejectedError(CacheUnavailableError):
    """The command certainly did not take effect: it was never sent (the circuit breaker
    is open, the cache is closed, no connection was free) or the server answered it with
    an error. A single-flight lease whose taking failed so is nobody's to release."""


class CacheTimeoutError(CacheUnavailableError):
    """The backend did not answer within the command's budget: a stall of a moment, or
    a server gone quiet (unlike a refused connection, which says it is down)."""


class CacheCorruptError(CacheError):
    """An entry did not decode, or failed its signature."""


class APIError(LimpetError):
    """The upstream call failed.

    Attributes:
        endpoint: name of the endpoint that was called, when known.
        attempts: how many upstream attempts the call made, over every endpoint it
            tried, its retries included; set where limpet's retries end (the retrier,
            failover). None: the error never went through them (one attempt, or none).
    """

    attempts: int | None = None

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


class APIGenerationError(APIError):
    """A generation that failed after it started, reported inside an HTTP 200: OpenRouter
    answers ``finish_reason: "error"`` (with an ``error`` object) when the provider fails
    mid-generation. Never cached. Retried like a status error with its code (a provider
    failure, usually a 5xx or none, may pass on another attempt or endpoint).

    Attributes:
        message: the upstream's own error message.
        status_code: the error's code (an HTTP status), when it gave one.
        billed: the failed answer's ``model`` and ``usage``, when it reported usage: it
            was paid for all the same (the Client counts it as spent); else None.
    """

    _what: ClassVar[str] = "generation failed"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        endpoint: str | None = None,
        billed: dict[str, Any] | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.billed = billed
        code = f" ({status_code})" if status_code is not None else ""
        super().__init__(f"{self._what}{code}: {message}", endpoint=endpoint)


class APIStreamError(APIGenerationError):
    """A stream that failed after it started: OpenRouter reports it in an HTTP 200 stream
    as a chunk with ``error`` and ``finish_reason: "error"``.

    Attributes:
        status_code: the error's code (an HTTP status), when the chunk gave one.
    """

    _what: ClassVar[str] = "stream failed"


class APIStatusError(APIError):
    """The upstream answered with a non-2xx status.

    Attributes:
        message: the upstream's own error message.
        status_code: the HTTP status.
        body: a short excerpt of the response body (secrets scrubbed).
        request_id: the gateway's request or generation id, when it sent one.
        retry_after: seconds the upstream asked us to wait, when it said.
        code: the ``code`` of the upstream's error object (``{"error": {"message",
            "type", "param", "code"}}``) as text (``"insufficient_quota"``; OpenRouter's
            numeric codes as ``"429"``), when it gave one; as the OpenAI SDK reads it.
        param: the request field the upstream's error object names, when it named one.
        type: the ``type`` of the upstream's error object, when it gave one.
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
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.retry_after = retry_after
        self.code = code
        self.param = param
        self.type = type
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


@contextlib.contextmanager
def upstream_errors(
    endpoint: str, secrets: Iterable[str] = (), *, stream: bool = False
) -> Iterator[None]:
    """The one boundary between the network and a caller: ``with upstream_errors(...):``.

    aiohttp's and the OS's failures leave it as ``APITimeoutError`` or
    ``APIConnectionError`` (the original as ``__cause__``); every ``APIError`` leaves it
    scrubbed of ``secrets`` (``scrub_error``). Run every upstream call, and the parsing of
    what it answered, inside it, before anything logs or retries the error (or map with
    ``upstream_error`` in an ``except`` of your own, as the transport's hot path does).

    Args:
        endpoint: names the endpoint in messages and on the error.
        secrets: what must never be shown (``Endpoint.secrets``,
            ``limpet.endpoint.header_secrets``).
        stream: the failure broke a stream that had started (worded so).
    """
    try:
        yield
    except BaseException as exc:
        mapped = upstream_error(exc, endpoint, secrets, stream=stream)
        if mapped is exc:
            raise
        raise mapped from shown_cause(exc, secrets)


def upstream_error(
    exc: BaseException, endpoint: str, secrets: Iterable[str] = (), *, stream: bool = False
) -> BaseException:
    """What ``upstream_errors`` lets out for ``exc``: an ``APIError`` scrubbed of
    ``secrets`` (``exc`` itself), aiohttp's and the OS's failures as ``APITimeoutError``
    or ``APIConnectionError`` (to be raised ``from exc``), anything else as it is. For a
    hot path that maps in its own ``except`` rather than entering a context manager."""
    if isinstance(exc, APIError):
        return scrub_error(exc, secrets)
    if isinstance(exc, TimeoutError):
        what = "stalled past the timeout" if stream else "gave no answer within the timeout"
        return APITimeoutError(_where(endpoint, stream) + what, endpoint=endpoint)
    if isinstance(exc, aiohttp.ClientError | OSError):
        what = "broke" if stream else "failed"
        return APIConnectionError(
            f"{_where(endpoint, stream)}{what}: {type(exc).__name__}", endpoint=endpoint
        )
    return exc


def shown_cause(exc: BaseException, secrets: Iterable[str]) -> BaseException | None:
    """``exc``, to chain as the ``__cause__`` of the error it was mapped to, or None when
    its text would show a secret: aiohttp quotes the URL, and a base URL's query may hold
    a key (``?key=...``), which every traceback of the error would print."""
    secrets = tuple(secrets)
    if secrets and any(scrub(text, secrets) != text for text in (str(exc), repr(exc))):
        return None
    return exc


def _where(endpoint: str, stream: bool) -> str:
    return f"{'stream from' if stream else 'connection to'} endpoint {endpoint!r} "


def headers_shape(headers: object) -> str:
    """What ``headers`` are, without a value: a mapping's names with the type of each
    value (``dict with Authorization: bytes``), else the type and length alone.

    Example:
        >>> headers_shape({"Authorization": b"Bearer sk-...", "X-Attempt": 1})
        'dict with Authorization: bytes, X-Attempt: int'
        >>> headers_shape([("Authorization", "Bearer sk-...")])
        'list of 1 item'
    """
    if isinstance(headers, Mapping):
        shown = [
            f"{name if type(name) is str else type(name).__name__}: {type(value).__name__}"
            for name, value in list(headers.items())[:_SHOWN_HEADERS]
        ]
        more = len(headers) - len(shown)
        tail = f", and {more} more" if more > 0 else ""
        return f"{type(headers).__name__} with {', '.join(shown) or 'nothing'}{tail}"
    size = len(headers) if isinstance(headers, Sized) else None
    count = "" if size is None else f" of {size} item{'' if size == 1 else 's'}"
    return f"{type(headers).__name__}{count}"


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class EmbeddingBatchError(APIError):
    """Some inputs of an ``embed()`` call could not be embedded: an upstream sub-batch
    failed (its error is ``__cause__``). The vectors that were embedded are correct, cached,
    and given here, with what the requests that answered cost (``Client.stats`` counts it).

    Attributes:
        failed: the input positions without a vector, ascending.
        vectors: one entry per input, in input order: its vector, or None when it failed.
        usage: tokens of this call's upstream requests that answered, as
            ``Embeddings.usage`` (zeros when none did).
        cost: dollars those requests cost, as ``Embeddings.cost`` (None when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        failed: tuple[int, ...],
        vectors: list[list[float] | None],
        endpoint: str | None = None,
        usage: Usage | None = None,
        cost: Cost | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.failed = failed
        self.vectors = vectors
        self.usage = Usage() if usage is None else usage
        self.cost = cost
