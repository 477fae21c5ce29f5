"""Retry decisions, pure: what to retry and how long to wait."""

from __future__ import annotations

import email.utils
import random

import pytest

from limpet.config import RetryConfig
from limpet.errors import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    status_error,
)
from limpet.http.retry import backoff_delay, parse_retry_after, should_retry


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, False),
        (401, False),
        (402, False),
        (403, False),
        (404, False),
        (422, False),
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (599, True),
    ],
)
def test_which_statuses_are_retried(status: int, expected: bool) -> None:
    error = status_error(status)("x", status_code=status)
    assert should_retry(error) is expected


def test_connection_errors_and_timeouts_are_retried_malformed_bodies_are_not() -> None:
    assert should_retry(APIConnectionError("x"))
    assert should_retry(APITimeoutError("x"))
    assert not should_retry(APIResponseError("x", status_code=200, body=""))
    assert not should_retry(ValueError("x"))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "200", "Retry-After": "9"}, 0.2),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-4"}, 0.0),
        ({"retry-after-ms": "nan"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(30.0, abs=1)


def test_server_retry_after_wins_but_is_capped() -> None:
    config = RetryConfig(max_retry_after=10.0)
    assert backoff_delay(1, config, retry_after=2.5) == 2.5
    assert backoff_delay(1, config, retry_after=120.0) == 10.0


def test_backoff_is_exponential_jittered_and_capped() -> None:
    config = RetryConfig(initial_backoff=0.5, max_backoff=4.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (9, 4.0)]:
        delays = [backoff_delay(attempt, config, rng=rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
