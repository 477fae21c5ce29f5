"""How a flight's final error travels in a completion notice, for every shared tier's
flight store (Redis, Memcached): the same fields, written and read in one place, so a
follower rebuilds the error its leader saw (status class, message, body, request id,
endpoint, and its error object's code, param and type)."""

from __future__ import annotations

import math
import time
from typing import Any

from limpet.errors import APIStatusError, status_error

__all__ = ["error_fields", "error_from_fields", "sent_at_of", "sent_now"]


def error_fields(error: APIStatusError) -> dict[str, Any]:
    """The JSON fields that carry ``error`` in a notice."""
    return {
        "status": error.status_code,
        "message": error.message,
        "body": error.body,
        "request_id": error.request_id,
        "endpoint": error.endpoint,
        "code": error.code,
        "param": error.param,
        "type": error.type,
    }


def error_from_fields(fields: dict[str, Any]) -> APIStatusError:
    """The error ``error_fields`` wrote, as the exception class of its status.

    Raises:
        KeyError, TypeError, ValueError: the fields are not ``error_fields``'s; the flight
            store reads such a notice as no notice.

    Example:
        >>> error = error_from_fields({"status": 429, "message": "slow down"})
        >>> type(error).__name__, error.status_code
        ('RateLimitError', 429)
    """
    status = int(fields["status"])
    return status_error(status)(
        str(fields["message"]),
        status_code=status,
        body=str(fields.get("body") or ""),
        request_id=fields.get("request_id"),
        endpoint=fields.get("endpoint"),
        code=_text(fields.get("code")),  # absent from a notice of an earlier build
        param=_text(fields.get("param")),
        type=_text(fields.get("type")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def sent_now() -> dict[str, float]:
    """The field that dates an error notice (this process's wall clock), signed with it,
    so a follower can tell it from a replay of an earlier flight's."""
    return {"sent_at": time.time()}


def sent_at_of(fields: dict[str, Any]) -> float | None:
    """When a notice says it was sent, or None (none said, or not a finite number: a
    notice of an earlier build, whose error no follower raises)."""
    sent = fields.get("sent_at")
    if type(sent) is float or type(sent) is int:
        return float(sent) if math.isfinite(sent) else None
    return None
