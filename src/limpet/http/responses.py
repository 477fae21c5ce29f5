"""What an upstream answer says, pure: a chat completion, embeddings, or the error it
reports instead (a status, or, from OpenRouter, an error inside a 200).

The scrubbed excerpt of a body (``limpet.errors.excerpt``, a regex pass over it) is
made only for an error: a good answer never pays for it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from limpet.cache.base import chunk_shaped
from limpet.config import Endpoint
from limpet.errors import (
    APIGenerationError,
    APIResponseError,
    APIStatusError,
    excerpt,
    scrub,
    status_error,
)
from limpet.http.chunks import stream_error
from limpet.http.retry import parse_retry_after
from limpet.scrub import BODY_EXCERPT_CHARS

__all__ = [
    "LooseJSON",
    "malformed_answer",
    "parse_chat",
    "parse_embeddings",
    "parse_json",
    "request_headers",
    "status_error_of",
    "stream_chunk",
]

_REQUEST_ID_HEADERS = ("x-generation-id", "x-request-id", "request-id")


def request_headers(endpoint: Endpoint) -> dict[str, str]:
    """The headers of a request to ``endpoint``: JSON, its key, its own headers."""
    headers = {"Content-Type": "application/json"}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    headers.update(endpoint.headers or {})  # a call's own Authorization wins
    return headers


def parse_chat(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes
) -> dict[str, Any]:
    """The chat completion a response carries; raises the error it reports instead."""
    body = _answer(endpoint, status, headers, raw, "choices")
    if not _is_chat_completion(body):
        raise APIResponseError(
            "response is not a chat completion (no choices[0].message)",
            status_code=status,
            body=excerpt(raw, endpoint.secrets),
            endpoint=endpoint.name,
        )
    failed = _failed_generation(body, endpoint)
    if failed is not None:
        raise failed
    return body


def parse_embeddings(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes
) -> dict[str, Any]:
    """The embeddings a response carries; raises the error it reports instead."""
    body = _answer(endpoint, status, headers, raw, "data")
    if not isinstance(body.get("data"), list):
        raise APIResponseError(
            "response is not an embedding list (no data list)",
            status_code=status,
            body=excerpt(raw, endpoint.secrets),
            endpoint=endpoint.name,
        )
    return body


def malformed_answer(endpoint: Endpoint, message: str, body: str = "") -> APIResponseError:
    """The error for an answer of ``endpoint`` that came with a 200 but cannot be used
    (``message`` says why; ``body``, scrubbed, what of it to show): final, never
    retried on the same endpoint, never stored."""
    return APIResponseError(message, status_code=200, body=body, endpoint=endpoint.name)


def stream_chunk(endpoint: Endpoint, data: str) -> dict[str, Any]:
    """One SSE event's chunk; raises the failure it reports, or for one not a chunk
    object (its choices a list of objects with int indexes: what a stored stream must
    hold to replay, ``chunk_shaped``)."""
    chunk = parse_json(data)
    if not isinstance(chunk, dict):
        body = excerpt(data.encode(), endpoint.secrets)
        raise malformed_answer(endpoint, "a stream chunk is not a JSON object", body)
    error = stream_error(chunk, endpoint.name)
    if error is not None:
        raise error
    if not chunk_shaped(chunk):
        body = excerpt(data.encode(), endpoint.secrets)
        raise malformed_answer(
            endpoint, "a stream chunk's choices are not objects with int indexes", body
        )
    return chunk


def parse_json(raw: bytes | str) -> Any:
    """``raw`` as JSON, or None when it is not JSON. What orjson refuses and the OpenAI
    SDK reads (NaN, Infinity, a lone surrogate: a pair split across two stream chunks)
    is read by the standard library, an object as a ``LooseJSON``."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        if len(raw) > _LOOSE_MAX:  # the standard library's parse blocks the loop 4x longer
            return None
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return LooseJSON(value) if type(value) is dict else value


# The largest body read the standard library's way when orjson refuses it: one of this
# size (numbers: the slowest) blocks the loop ~13 ms so; a larger one fails as not JSON,
# as before.
_LOOSE_MAX = 256 * 1024


class LooseJSON(dict[str, Any]):
    """A JSON object read as the OpenAI SDK reads it but orjson would not (NaN,
    Infinity, a lone surrogate): served to its caller as it came, never stored (no entry
    could hold it unchanged), and never taken for a fault of the endpoint."""


def _answer(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], raw: bytes, field: str
) -> dict[str, Any]:
    """A successful response's JSON object; raises the error a response reports instead,
    a status or (OpenRouter) an error inside a 200 without the answer's ``field``."""
    body = parse_json(raw)
    if 200 <= status < 300 and isinstance(body, dict) and "error" in body and field not in body:
        # OpenRouter can report a failure inside a 200; its error code is an HTTP status.
        code = _error_code(body["error"])
        status = code if code is not None and 400 <= code < 600 else 502
    if not 200 <= status < 300:
        raise status_error_of(endpoint, status, headers, body, excerpt(raw, endpoint.secrets))
    if not isinstance(body, dict):
        what = "not JSON" if body is None else "not a JSON object"
        raise APIResponseError(
            f"response is {what}",
            status_code=status,
            body=excerpt(raw, endpoint.secrets),
            endpoint=endpoint.name,
        )
    return body


def status_error_of(
    endpoint: Endpoint, status: int, headers: Mapping[str, str], body: object, text: str
) -> APIStatusError:
    """The error of a non-2xx answer; ``text`` is its scrubbed excerpt. A redirect (3xx,
    never followed) says so, and never where it pointed."""
    if 300 <= status < 400:
        message = (
            f"the upstream redirected (status {status}); limpet does not follow redirects: "
            "set the endpoint's base_url to the URL that answers"
        )
    else:
        message = _error_message(body, endpoint.secrets) or text or "(empty body)"
    error = body.get("error") if isinstance(body, dict) else None
    fields = error if isinstance(error, dict) else {}
    return status_error(status)(
        message,
        status_code=status,
        body=text,
        request_id=_request_id(headers, body),
        retry_after=parse_retry_after(headers),
        endpoint=endpoint.name,
        # As the OpenAI SDK reads them (a numeric code as text), scrubbed before cut.
        code=_error_field(fields.get("code"), endpoint.secrets, numeric=True),
        param=_error_field(fields.get("param"), endpoint.secrets),
        type=_error_field(fields.get("type"), endpoint.secrets),
    )


def _failed_generation(body: Mapping[str, Any], endpoint: Endpoint) -> APIGenerationError | None:
    """The failure a 200 reports with ``finish_reason: "error"`` on a choice, or None.

    OpenRouter puts the error on the choice (``choices[i].error``) or beside the choices;
    either way the answer is not whole, so none of it is returned or cached.
    """
    for choice in body["choices"]:
        if isinstance(choice, dict) and choice.get("finish_reason") == "error":
            error = choice.get("error") or body.get("error")
            usage = body.get("usage")
            return APIGenerationError(
                _error_message({"error": error}, endpoint.secrets) or "the generation failed",
                status_code=_error_code(error),
                endpoint=endpoint.name,
                # Paid for all the same: what the account stage needs to price it.
                billed={"model": body.get("model"), "usage": usage}
                if isinstance(usage, dict)
                else None,
            )
    return None


def _is_chat_completion(body: object) -> bool:
    if not isinstance(body, dict):
        return False
    choices = body.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("message"), dict)
    )


def _error_message(body: object, secrets: Iterable[str]) -> str | None:
    """The message of an OpenRouter error body (``{"error": {"message"}}`` or
    ``{"error": "..."}``), scrubbed before it is cut; None when it has none."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str) or not error:
        return None
    return scrub(error, secrets)[:BODY_EXCERPT_CHARS]


def _error_field(value: object, secrets: Iterable[str], *, numeric: bool = False) -> str | None:
    """A field of an error object (``code``, ``param``, ``type``) as text, scrubbed before
    it is cut; a number too where ``numeric`` (OpenRouter's codes are HTTP statuses)."""
    if numeric and type(value) is int:
        return str(value)
    if not isinstance(value, str) or not value:
        return None
    return scrub(value, secrets)[:BODY_EXCERPT_CHARS]


def _error_code(error: object) -> int | None:
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _request_id(headers: Mapping[str, str], body: object) -> str | None:
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    if isinstance(body, dict) and isinstance(body.get("id"), str):
        return str(body["id"])
    return None
