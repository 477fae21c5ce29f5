"""An upstream's error reaches the proxy's caller as a direct call's would: the ``openai``
package reads the same status, ``type``, ``param``, ``code`` and ``request_id`` through
``limpet serve`` as from the upstream itself. With the proxy's own key, a refusal of it
keeps the proxy's message, and of the rest relays only what cannot hold the key."""

from __future__ import annotations

from typing import Any, Literal

import aiohttp
import openai
import pytest

from limpet.serve import ServeConfig, create_app
from tests.integration.chat import ask
from tests.integration.scripted import refusing_upstream
from tests.loopback import served

Route = Literal["chat", "stream", "embeddings"]

EMBEDDING_MODEL = "openai/text-embedding-3-small"
REQUEST_ID = "req_7f3a9c0e51b24d"
# The Client retries a 429 (and so does the SDK, by default): at once, here.
AT_ONCE = {"retry-after-ms": "1"}
QUOTA = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "param": None,
    "code": "insufficient_quota",
}
CONTEXT = {
    "message": "This model's maximum context length is 8192 tokens.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}
OWN_KEY = "sk-proxy-own-0123456789abcdef"
MASKED = "sk-pro***cdef"  # the proxy's key as OpenAI quotes a refused one: no scrubber knows it


def sdk(base_url: str, api_key: str = "sk-caller") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)


async def refusal(client: openai.AsyncOpenAI, route: Route) -> openai.APIStatusError:
    """The error ``client`` raises for a call on ``route``."""
    with pytest.raises(openai.APIStatusError) as raised:
        if route == "embeddings":
            await client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
        else:
            await client.chat.completions.create(**ask("hello"), stream=route == "stream")
    return raised.value


def as_read(error: openai.APIStatusError) -> dict[str, Any]:
    """What a caller reads of an error."""
    return {
        "class": type(error),
        "status": error.status_code,
        "type": error.type,
        "param": error.param,
        "code": error.code,
        "request_id": error.request_id,
        "body": error.body,
    }


@pytest.mark.parametrize("route", ["chat", "stream", "embeddings"])
@pytest.mark.parametrize(
    ("status", "error"), [(429, QUOTA), (400, CONTEXT)], ids=["insufficient-quota", "context"]
)
async def test_an_upstream_error_reads_through_the_proxy_as_it_reads_direct(
    route: Route, status: int, error: dict[str, Any]
) -> None:
    """The proxy answered every upstream error with the status as ``code``, a ``type`` by
    status, no ``param`` and no ``x-request-id``: a caller could not tell a spent quota
    (stop) from a rate limit (retry), nor which field was refused, nor quote the id."""
    headers = {"x-request-id": REQUEST_ID, **AT_ONCE}
    async with refusing_upstream(status, error, headers) as upstream:
        config = ServeConfig(upstreams=(upstream,))
        async with (
            served(create_app(config), access_log=None) as proxy,
            sdk(upstream) as direct,
            sdk(f"{proxy}/v1") as through,
        ):
            expected = as_read(await refusal(direct, route))
            got = as_read(await refusal(through, route))
    assert got == expected
    assert (got["code"], got["param"], got["request_id"]) == (
        error["code"],
        error["param"],
        REQUEST_ID,
    )


@pytest.mark.parametrize(
    ("status", "error", "request_id", "relayed"),
    [
        (
            401,
            {
                "message": f"Incorrect API key provided: {MASKED}.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            },
            REQUEST_ID,
            ("invalid_request_error", None, "invalid_api_key", REQUEST_ID),
        ),
        (
            429,
            {**QUOTA, "message": f"Quota of key {MASKED} exceeded (organization org-acme)."},
            REQUEST_ID,
            ("insufficient_quota", None, "insufficient_quota", REQUEST_ID),
        ),
        (  # nothing of it an identifier or a token: the status's own
            403,
            {
                "message": f"key {MASKED} is disabled",
                "type": f"disabled key {MASKED}",
                "param": MASKED,
                "code": f"disabled:{MASKED}",
            },
            f"{MASKED}.1",
            ("permission_error", None, "403", None),
        ),
    ],
    ids=["invalid-key", "quota", "text-everywhere"],
)
async def test_a_refusal_of_the_proxys_own_key_relays_only_what_cannot_hold_it(
    status: int,
    error: dict[str, Any],
    request_id: str,
    relayed: tuple[str, str | None, str, str | None],
) -> None:
    """With its own key upstream, the proxy answers a refusal of it with a message of its
    own (the upstream's quotes the key in forms no scrubber knows); its code and type say
    what a caller should do (``insufficient_quota``: stop) and are relayed when they are
    identifiers, its request id when it is a token; its param, never."""
    headers = {"x-request-id": request_id, **AT_ONCE}
    async with refusing_upstream(status, error, headers) as upstream:
        config = ServeConfig(upstreams=(upstream,), upstream_key=OWN_KEY)
        async with served(create_app(config), access_log=None) as proxy:
            async with sdk(f"{proxy}/v1") as client:
                got = await refusal(client, "chat")
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"{proxy}/v1/chat/completions", json=ask("hello")) as response,
            ):
                raw = b"\n".join(b": ".join(pair) for pair in response.raw_headers)
                raw += b"\n" + await response.read()
    message = f"the upstream refused the proxy's own credentials (status {status})"
    assert got.status_code == status and got.body == {
        "message": message,
        "type": relayed[0],
        "param": relayed[1],
        "code": relayed[2],
    }
    assert (got.type, got.param, got.code, got.request_id) == relayed
    for secret in (b"sk-pro", b"cdef", b"acme", OWN_KEY.encode()):
        assert secret not in raw
