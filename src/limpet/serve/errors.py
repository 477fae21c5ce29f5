"""OpenAI's error shape, ``{"error": {"message", "type", "param", "code"}}``, for every
failure the proxy answers, and its headers (the ``Retry-After`` and ``x-request-id`` of an
upstream's error, and whether the OpenAI SDK should retry it), without I/O."""

from __future__ import annotations

import math
import re
from typing import Any, Final

from limpet.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    EmbeddingBatchError,
    InvalidRequestError,
    LimpetError,
)
from limpet.http.retry import should_retry
from limpet.http.retrying import QueuedTooLong
from limpet.serve.body import BodyTimeoutError

__all__ = ["SHOULD_RETRY_HEADER", "error_headers", "error_of", "openai_error", "retry_headers"]

# OpenAI's error types by status; anything else of 5xx is a server error.
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}

# Upstream statuses that refuse a credential, or the account behind it (payment, rate).
_REFUSALS: Final = frozenset({401, 402, 403, 429})

# What of a refusal of the proxy's own key is relayed: a code or type that is an identifier
# (``insufficient_quota``, ``invalid_api_key``), a request id that is a token of letters,
# digits, ``_`` and ``-``. A masked key (``sk-...abcd``), a key's name or an organisation
# in a sentence is none of these; the key itself is scrubbed before (``***``).
_IDENTIFIER: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
_ID_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
# A request id relayed as a header: visible ASCII, no space (one taken from a body's
# ``id`` could hold a line break, which no header may).
_HEADER_TOKEN: Final = re.compile(r"[!-~]{1,256}")


def openai_error(
    message: str, error_type: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_of(exc: Exception, *, own_key: bool = False) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI-shaped body of a failed call; limpet's messages never
    hold a secret (``limpet.errors.scrub``).

    An upstream's error is answered with its status and its error object's ``type``,
    ``param`` and ``code``, as a direct call would have been (a ``type`` by status, and
    the status as ``code``, when it gave none).

    With ``own_key`` (the proxy sends its own key upstream), an upstream 401, 402, 403 or
    429 is answered with a message of the proxy's own, never the upstream's text: a
    refusal may echo the key it refused in a form no scrubber knows (a masked key, its
    name, the account's organisation), and the key is not the caller's. Its status (and a
    429's ``Retry-After``) is the upstream's, and so are its ``code`` and ``type`` when
    each is an identifier (``insufficient_quota``, which tells a caller to stop rather
    than retry): else the status's. Its ``param`` is never relayed: it is no field of the
    caller's request that the proxy's key was refused for, and it is the upstream's text.

    An embeddings call whose inputs failed (``EmbeddingBatchError``) is answered as the
    upstream failure behind it would be on chat (its status, type and code), since OpenAI
    answers an embeddings request whole or not at all: when only some inputs failed, the
    message says how many, and that the others are cached, so a retry sends only those.
    """
    behind = _failure_behind(exc)
    status, body = _error_of(behind)
    if own_key and status in _REFUSALS:
        error = body["error"]
        error["message"] = f"the upstream refused the proxy's own credentials (status {status})"
        error["param"] = None
        if not _matches(_IDENTIFIER, error["code"]):
            error["code"] = str(status)
        if not _matches(_IDENTIFIER, error["type"]):
            error["type"] = _type_of(status)
    if isinstance(exc, EmbeddingBatchError) and behind is not exc:
        failed, inputs = len(exc.failed), len(exc.vectors)
        if failed < inputs:
            error = body["error"]
            error["message"] = (
                f"{failed} of {inputs} inputs could not be embedded (the others are cached: "
                f"a retry sends only these): {error['message']}"
            )
    return status, body


def error_headers(exc: Exception, *, own_key: bool = False) -> dict[str, str]:
    """The headers a failed call is answered with: the upstream's ``Retry-After`` (whole
    seconds, rounded up) and ``retry-after-ms``, when it asked for a wait (the OpenAI SDK
    honours either when it retries), and its request id as ``x-request-id`` (the SDK's
    ``request_id``), when it sent one; with ``own_key``, a refusal's only when it is a
    token (``error_of`` says why).
    """
    behind = _failure_behind(exc)
    if not isinstance(behind, APIStatusError):
        return {}
    headers: dict[str, str] = {}
    wait = behind.retry_after
    if wait is not None and 0 <= wait < math.inf:
        headers["Retry-After"] = str(math.ceil(wait))
        headers["retry-after-ms"] = str(round(wait * 1000))
    refused = own_key and behind.status_code in _REFUSALS
    shape = _ID_TOKEN if refused else _HEADER_TOKEN
    if _matches(shape, behind.request_id):
        headers["x-request-id"] = str(behind.request_id)
    return headers


#: The OpenAI SDKs' own header: ``false`` and they never retry the answer, whatever its
#: status (openai-python's ``_should_retry``).
SHOULD_RETRY_HEADER: Final = "x-should-retry"


def retry_headers(exc: Exception, *, max_attempts: int) -> dict[str, str]:
    """``x-should-retry: false`` when limpet's own retry policy already had its say on the
    failure a call is answered with, so an OpenAI SDK in front of the proxy does not retry
    it again: each of its retries would make up to ``max_attempts`` upstream attempts
    more (three SDK tries of three attempts each: nine, for one request, against an
    upstream that is rate-limiting it). Else no header, and the SDK's default stands.

    The rule, for ``max_attempts`` the proxy's ``RetryConfig.max_attempts``:

    - the call was never admitted (``QueuedTooLong``: its endpoint paused by a rate limit
      past its deadline, or the deadline passed while it queued): ``false``. limpet
      decided; the SDK asking again meets the same pause.
    - a failure limpet never retries (4xx other than 408, 409 and 429; a malformed
      answer; a proxy fault; the proxy shutting down): no header. limpet made one
      attempt, so the SDK's retries, where it makes them, cost one attempt each.
    - a failure limpet retries (connection errors, timeouts, 408, 409, 429, 5xx, a failed
      generation): ``false`` when limpet could make more than one attempt (``max_attempts
      > 1``: it retried until its attempts ran out, or stopped because a retry, or the
      ``Retry-After`` asked for, would end past the call's deadline) or did (failing over
      to another endpoint, ``APIError.attempts``); no header when it made one attempt
      because its ``RetryConfig`` allows only one: the SDK then does the retrying.

    Only an answer's headers can say it: a stream that fails after its first byte ends
    with an error event, which no SDK retries.

    Example:
        >>> from limpet.errors import BadRequestError, RateLimitError
        >>> retry_headers(RateLimitError("slow down", status_code=429), max_attempts=3)
        {'x-should-retry': 'false'}
        >>> retry_headers(RateLimitError("slow down", status_code=429), max_attempts=1)
        {}
        >>> retry_headers(BadRequestError("no", status_code=400), max_attempts=3)
        {}
    """
    behind = _failure_behind(exc)
    if isinstance(behind, QueuedTooLong):
        return {SHOULD_RETRY_HEADER: "false"}
    if not isinstance(behind, APIError) or not should_retry(behind):
        return {}
    if max_attempts > 1 or (behind.attempts or 1) > 1:
        return {SHOULD_RETRY_HEADER: "false"}
    return {}


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _type_of(status: int) -> str:
    """OpenAI's error type for an upstream status."""
    return _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")


def _failure_behind(exc: Exception) -> Exception:
    """The failure a call is answered as: an embeddings call's upstream failure (its
    ``__cause__``) rather than the batch error that reports it."""
    cause = exc.__cause__
    if isinstance(exc, EmbeddingBatchError) and isinstance(cause, LimpetError):
        return cause
    return exc


def _error_of(exc: Exception) -> tuple[int, dict[str, Any]]:
    if isinstance(exc, InvalidRequestError):
        return 400, openai_error(str(exc), "invalid_request_error", param=exc.field)
    if isinstance(exc, ClientClosedError):
        return 503, openai_error("the proxy is shutting down", "server_error")
    if isinstance(exc, BodyTimeoutError):
        return 408, openai_error(str(exc), "invalid_request_error", code="request_timeout")
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        if status < 400:  # a redirect (never followed): no answer a caller could use
            message = f"the upstream answered with status {status}, not an answer"
            return 502, openai_error(message, "server_error", code="bad_upstream_response")
        kind = exc.type or _type_of(status)
        return status, openai_error(
            exc.message, kind, code=exc.code or str(status), param=exc.param
        )
    if isinstance(exc, APITimeoutError):
        return 504, openai_error(str(exc), "timeout", code="upstream_timeout")
    if isinstance(exc, APIConnectionError):
        return 502, openai_error(str(exc), "server_error", code="upstream_unreachable")
    if isinstance(exc, APIError):
        return 502, openai_error(str(exc), "server_error", code="bad_upstream_response")
    return 500, openai_error("internal error of the proxy", "server_error")
