"""A refusal whose retry cannot be admitted before the call's deadline: the caller gets
the 429 the endpoint answered, as with admission off, never a timeout saying nothing was
sent. A call that never left the line is the one that fails unsent. Counts requests at
the gateway, never times."""

from __future__ import annotations

import pytest

from limpet import Client, Endpoint, RetryConfig
from limpet.errors import APITimeoutError, InternalServerError, RateLimitError
from limpet.http.retrying import QueuedTooLong, Retrier, never_sent
from limpet.testing import FakeGateway
from tests.integration.chat import ask

#: Longer than the calls' timeout: the retry cannot go before the deadline.
RETRY_AFTER = 30.0
TIMEOUT = 10.0
FAST_RETRY = RetryConfig(max_attempts=3, initial_backoff=0.001, max_backoff=0.001)

pytestmark = pytest.mark.gateway(latency=0.0)


@pytest.mark.parametrize("admission", [True, False], ids=["admission", "no-admission"])
async def test_a_429_whose_retry_cannot_go_before_the_deadline_is_raised_as_met(
    gateway: FakeGateway, admission: bool
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.fail(429, retry_after=RETRY_AFTER)
    retry = RetryConfig(max_attempts=3, max_retry_after=60.0)
    client = Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=None,
        retry=retry,
        admission=admission,
    )
    async with client:
        with pytest.raises(RateLimitError) as raised:
            await client.complete(**ask("refused"), timeout=TIMEOUT)
    assert raised.value.retry_after == RETRY_AFTER
    assert not never_sent(raised.value)
    assert not isinstance(raised.value, APITimeoutError)
    assert endpoint.calls == 1


async def test_a_call_that_never_left_the_line_still_fails_unsent(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.fail(429, retry_after=RETRY_AFTER)
    retry = RetryConfig(max_attempts=3, max_retry_after=60.0)
    async with Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))], cache=None, retry=retry
    ) as client:
        with pytest.raises(RateLimitError):
            await client.complete(**ask("refused"), timeout=TIMEOUT)
        with pytest.raises(QueuedTooLong, match="nothing was sent") as raised:
            await client.complete(**ask("behind the pause"), timeout=TIMEOUT)
    assert never_sent(raised.value)
    assert endpoint.calls == 1


async def test_a_retry_left_in_the_line_raises_what_the_last_sent_attempt_met() -> None:
    # A 500, then a 502, then a retry whose deadline passed while it queued: the caller
    # gets the 502, the last answer an attempt met, with its own context.
    retrier = Retrier(FAST_RETRY, shared_pause=True)
    met = InternalServerError("bad gateway", status_code=502)
    answers: list[Exception] = [met, QueuedTooLong("queued", endpoint="a")]

    async def attempt(retry: bool) -> None:
        assert retry
        raise answers.pop(0)

    first = InternalServerError("oops", status_code=500)
    with pytest.raises(InternalServerError) as raised:
        await retrier.after(first, attempt, deadline=None)
    assert raised.value is met
    assert raised.value.__context__ is None
    assert answers == []
