"""aiohttp-level failures a loopback server cannot provoke (a reset socket, a server
that hangs up mid-response, a truncated body, DNS and TLS failures), injected with
``aioresponses`` under the real Client: each becomes the limpet error it maps to, is
retried as a connection failure, never leaks the key, and is never cached.

(aioresponses 0.7.8 cannot build successful responses under aiohttp 3.14, whose
``ClientResponse`` gained a required argument; injecting exceptions works, and that is
all it is used for here: every success path runs over loopback against the FakeGateway.)
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from limpet import Client, RetryConfig
from limpet.errors import APIConnectionError, APIError, APITimeoutError
from tests.integration.chat import ask

BASE_URL = "https://gateway.invalid/api/v1"
CHAT_URL = f"{BASE_URL}/chat/completions"
SECRET = "sk-or-v1-aiohttp-failure-secret"
ATTEMPTS = 3


def _connection_key() -> aiohttp.client_reqrep.ConnectionKey:
    return aiohttp.client_reqrep.ConnectionKey("gateway.invalid", 443, True, True, None, None, None)


FAILURES: list[tuple[str, BaseException, type[APIError]]] = [
    ("ClientOSError", aiohttp.ClientOSError(104, "Connection reset by peer"), APIConnectionError),
    ("ServerDisconnectedError", aiohttp.ServerDisconnectedError(), APIConnectionError),
    (
        "ClientPayloadError",
        aiohttp.ClientPayloadError("Response payload is not completed"),
        APIConnectionError,
    ),
    (
        "DNS failure",
        aiohttp.ClientConnectorDNSError(
            _connection_key(), OSError(-2, "Name or service not known")
        ),
        APIConnectionError,
    ),
    (
        "TLS certificate",
        aiohttp.ClientConnectorCertificateError(
            _connection_key(), ssl.SSLCertVerificationError("certificate verify failed")
        ),
        APIConnectionError,
    ),
    (
        "ServerTimeoutError",
        aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
        APITimeoutError,
    ),
]


@pytest.fixture
def upstream() -> Iterator[aioresponses]:
    with aioresponses() as mocked:
        yield mocked


def client() -> Client:
    return Client(
        base_url=BASE_URL,
        api_key=SECRET,
        retry=RetryConfig(max_attempts=ATTEMPTS, initial_backoff=0, max_backoff=0),
    )


def attempts(upstream: aioresponses) -> int:
    return len(upstream.requests.get(("POST", URL(CHAT_URL)), []))


@pytest.mark.parametrize(("name", "failure", "expected"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_each_failure_maps_to_its_error_after_every_attempt(
    upstream: aioresponses, name: str, failure: BaseException, expected: type[APIError]
) -> None:
    upstream.post(CHAT_URL, exception=failure, repeat=True)
    async with client() as limpet:
        with pytest.raises(expected) as raised:
            await limpet.complete(**ask())
        assert type(raised.value) is expected
        assert raised.value.endpoint == "default"
        assert isinstance(raised.value.__cause__, type(failure))
        assert SECRET not in str(raised.value) and SECRET not in repr(raised.value)
        assert attempts(upstream) == ATTEMPTS  # retried as a connection failure
        with pytest.raises(expected):  # nothing was cached: the next call goes upstream
            await limpet.complete(**ask())
        assert attempts(upstream) == 2 * ATTEMPTS
        assert limpet.stats.errors == 2


@pytest.mark.parametrize(("name", "failure", "expected"), FAILURES, ids=[f[0] for f in FAILURES])
async def test_each_failure_reaches_a_stream_reader_as_its_error(
    upstream: aioresponses, name: str, failure: BaseException, expected: type[APIError]
) -> None:
    upstream.post(CHAT_URL, exception=failure, repeat=True)
    async with client() as limpet:
        stream = limpet.stream(**ask())
        with pytest.raises(expected):
            async for _ in stream:
                pass
        assert stream.completion is None
