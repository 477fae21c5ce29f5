"""Which errors count against an endpoint's health. Pure."""

from __future__ import annotations

import asyncio

import pytest

from limpet.errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    RateLimitError,
)
from limpet.http.retrying import QueuedTooLong
from limpet.routing.health import counts_against_endpoint

QUEUED = QueuedTooLong("endpoint 'a' is paused by its rate limit past the call's deadline")
LIMITED = RateLimitError("slow down", status_code=429, body="")


@pytest.mark.parametrize(
    ("error", "unpaused", "paused"),
    [
        (QUEUED, False, False),  # never sent: the endpoint never saw it
        (LIMITED, True, False),  # the admission pause answers a 429
        (InternalServerError("down", status_code=503, body=""), True, True),
        (APIConnectionError("reset"), True, True),
        (APITimeoutError("read timed out"), True, True),
        (BadRequestError("bad schema", status_code=400, body=""), False, False),
        (asyncio.CancelledError(), False, False),
        (ValueError("not an API error"), False, False),
    ],
    ids=["queued", "429", "503", "reset", "timeout", "400", "cancelled", "other"],
)
def test_what_counts_against_an_endpoint(
    error: BaseException, unpaused: bool, paused: bool
) -> None:
    assert counts_against_endpoint(error, rate_limits_paused=False) is unpaused
    assert counts_against_endpoint(error, rate_limits_paused=True) is paused


def test_a_refusal_of_the_callers_own_key_never_counts_even_unpaused() -> None:
    refused = AuthenticationError("User not found.", status_code=401, body="")
    assert counts_against_endpoint(refused, rate_limits_paused=False)
    assert not counts_against_endpoint(refused, rate_limits_paused=False, callers_credentials=True)
