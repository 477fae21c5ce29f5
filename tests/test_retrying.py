"""The retry engine records on the error a request ends with how many attempts it took,
whether it ran out of them, met its deadline, or met a failure it never retries."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from limpet.config import RetryConfig
from limpet.errors import APIError, BadRequestError, InternalServerError, RateLimitError
from limpet.http.retrying import Retrier

QUICK = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)


async def _attempts_of(failure: Callable[[], APIError], deadline: float | None = None) -> int:
    """The ``attempts`` on the error of a request each of whose attempts fails with a
    new ``failure()``; checked to be the attempts made."""
    made = 0

    async def attempt(retry: bool) -> None:
        nonlocal made
        made += 1
        raise failure()

    with pytest.raises(APIError) as raised:
        await Retrier(QUICK, shared_pause=False).run(attempt, deadline)
    assert raised.value.attempts == made
    return made


async def test_a_request_that_ran_out_of_attempts_says_how_many_it_made() -> None:
    assert await _attempts_of(lambda: InternalServerError("down", status_code=503)) == 3


async def test_a_failure_never_retried_is_one_attempt() -> None:
    assert await _attempts_of(lambda: BadRequestError("bad", status_code=400)) == 1


async def test_a_retry_after_past_the_deadline_ends_it_after_one_attempt() -> None:
    deadline = asyncio.get_running_loop().time() + 0.5
    limited = RateLimitError("slow", status_code=429, retry_after=5.0)
    assert await _attempts_of(lambda: limited, deadline) == 1
