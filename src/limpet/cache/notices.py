"""How a flight's final error travels in a completion notice, for every shared tier's
flight store (Redis, Memcached): the same fields, written and read in one place, so a
follower rebuilds the error its leader saw (status class, message, body, request id,
endpoint)."""

from __future__ import annotations

from typing import Any

from limpet.errors import APIStatusError, status_error

__all__ = ["error_fields", "error_from_fields"]


def error_fields(error: APIStatusError) -> dict[str, Any]:
    """The JSON fields that carry ``error`` in a notice."""
    return {
        "status": error.status_code,
        "message": error.message,
        "body": error.body,
        "request_id": error.request_id,
        "endpoint": error.endpoint,
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
    )
