"""``limpet serve`` retries upstream failures itself; the ``openai`` package in front of
it, with its default ``max_retries=2``, must not retry them again: one request would make
three times the Client's attempts against an upstream that is rate-limiting it. The proxy
answers a failure limpet retried (or chose not to) ``x-should-retry: false``, and leaves
the SDK's default alone where limpet made its single attempt."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Literal

import openai
import pytest

from limpet.config import DEFAULT_MAX_ATTEMPTS, RetryConfig
from limpet.serve import ServeConfig, create_app
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.loopback import served

Route = Literal["chat", "stream", "embeddings"]

EMBEDDING_MODEL = "openai/text-embedding-3-small"
SDK_ATTEMPTS = 3  # the SDK's default max_retries=2, and its first try
# Every failure asks for a wait of a millisecond: limpet and the SDK both honour it, so
# neither backs off for long.
AT_ONCE_MS = 1.0
# No backoff to speak of, for a failure that asks for no wait.
QUICK = {"initial_backoff": 0.001, "max_backoff": 0.001}


@contextlib.asynccontextmanager
async def caller(
    gateway: FakeGateway, *names: str, retry: RetryConfig | None = None
) -> AsyncIterator[openai.AsyncOpenAI]:
    """The ``openai`` package, retrying as it does by default, through a proxy in front
    of ``gateway``'s endpoints ``names`` (``"a"`` by default)."""
    upstreams = tuple(gateway.base_url(name) for name in names or ("a",))
    config = ServeConfig(upstreams=upstreams, retry=retry)
    async with (
        served(create_app(config), access_log=None) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-caller", max_retries=2) as client,
    ):
        yield client


async def refusal(client: openai.AsyncOpenAI, route: Route) -> openai.APIStatusError:
    """The error ``client`` raises for a call on ``route``."""
    with pytest.raises(openai.APIStatusError) as raised:
        if route == "embeddings":
            await client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
        else:
            await client.chat.completions.create(**ask("hello"), stream=route == "stream")
    return raised.value


def upstream_calls(gateway: FakeGateway, route: Route) -> int:
    if route == "embeddings":
        return gateway.embeddings.calls
    return gateway.endpoint("a").calls


ROUTES = pytest.mark.parametrize("route", ["chat", "stream", "embeddings"])
RETRIED = pytest.mark.parametrize("status", [429, 503])


@ROUTES
@RETRIED
async def test_a_failure_the_proxy_retried_is_not_retried_again_by_the_sdk(
    gateway: FakeGateway, route: Route, status: int
) -> None:
    """The SDK retried the proxy's final 429 or 503 twice, each of its tries another
    three upstream attempts: nine for one request."""
    gateway.endpoint("a").fail(status, times=100, retry_after_ms=AT_ONCE_MS)
    async with caller(gateway) as client:
        error = await refusal(client, route)
    assert error.status_code == status
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.headers["retry-after-ms"] == "1"  # the upstream's, relayed still
    assert upstream_calls(gateway, route) == DEFAULT_MAX_ATTEMPTS


@ROUTES
@RETRIED
async def test_with_one_attempt_allowed_the_sdk_does_the_retrying(
    gateway: FakeGateway, route: Route, status: int
) -> None:
    gateway.endpoint("a").fail(status, times=100, retry_after_ms=AT_ONCE_MS)
    async with caller(gateway, retry=RetryConfig(max_attempts=1, **QUICK)) as client:
        error = await refusal(client, route)
    assert error.status_code == status
    assert "x-should-retry" not in error.response.headers
    assert upstream_calls(gateway, route) == SDK_ATTEMPTS


@pytest.mark.gateway(endpoints=("a", "b"))
async def test_a_failover_is_limpets_retry_even_with_one_attempt_per_endpoint(
    gateway: FakeGateway,
) -> None:
    for name in ("a", "b"):
        gateway.endpoint(name).fail(503, times=100, retry_after_ms=AT_ONCE_MS)
    async with caller(gateway, "a", "b", retry=RetryConfig(max_attempts=1, **QUICK)) as client:
        error = await refusal(client, "chat")
    assert error.response.headers["x-should-retry"] == "false"
    assert gateway.endpoint("a").calls + gateway.endpoint("b").calls == 2


@ROUTES
@pytest.mark.parametrize("max_attempts", [1, DEFAULT_MAX_ATTEMPTS])
async def test_a_failure_limpet_never_retries_leaves_the_sdk_its_default(
    gateway: FakeGateway, route: Route, max_attempts: int
) -> None:
    """A 400 is no business of the header: the SDK would not retry it either."""
    gateway.endpoint("a").fail(400, times=100)
    async with caller(gateway, retry=RetryConfig(max_attempts=max_attempts, **QUICK)) as client:
        error = await refusal(client, route)
    assert error.status_code == 400
    assert "x-should-retry" not in error.response.headers
    assert upstream_calls(gateway, route) == 1
