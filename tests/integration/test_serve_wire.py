"""``limpet serve`` in-process over loopback, its callers the ``openai`` package and raw
aiohttp: what a caller sends reaches the upstream, what it gets back is what the upstream
would have sent it (the usage chunk, an error's status and ``Retry-After``), bad input is
refused before anything is paid for, and one caller's refused key harms no other caller."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from limpet import Client
from limpet.serve import ServeConfig, create_app
from limpet.testing import FakeGateway
from tests.integration.chat import ask
from tests.integration.scripted import (
    ENVELOPE,
    chunk,
    raw_event,
    scripted_upstream,
    usage_chunk,
)
from tests.loopback import served
from tests.openai_shapes import assert_chunks

EMBEDDING_MODEL = "openai/text-embedding-3-small"
KEY = "sk-test-a"
AUTHORIZATION = {"Authorization": f"Bearer {KEY}"}
LONG = 30.0  # seconds: a failure, not a hang


@contextlib.asynccontextmanager
async def serving(gateway: FakeGateway, *names: str) -> AsyncIterator[str]:
    """The proxy, in this process, in front of ``gateway``'s endpoints ``names`` (``"a"``
    by default); yields its ``/v1`` URL."""
    upstreams = tuple(gateway.base_url(name) for name in names or ("a",))
    async with served(create_app(ServeConfig(upstreams=upstreams)), access_log=None) as url:
        yield url + "/v1"


@pytest.fixture
async def proxy(gateway: FakeGateway) -> AsyncIterator[str]:
    """The ``/v1`` URL of a proxy in front of the gateway's endpoint ``"a"``."""
    async with serving(gateway) as url:
        yield url


def sdk(base_url: str, *, api_key: str = KEY, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, **{"max_retries": 0, **options})


async def post(
    session: aiohttp.ClientSession, url: str, body: object, **headers: str
) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a POST with the test's key."""
    async with session.post(url, json=body, headers={**AUTHORIZATION, **headers}) as response:
        return response.status, await response.json()


class Reader:
    """One streamed answer read through the proxy: its chunks and its served comment."""

    def __init__(self) -> None:
        self.chunks: list[dict[str, Any]] = []
        self.served = ""
        self.started = asyncio.Event()

    async def read(self, session: aiohttp.ClientSession, url: str, body: object) -> Reader:
        async with session.post(url, json=body, headers=AUTHORIZATION) as response:
            assert response.status == 200
            async for line in response.content:
                if line.startswith(b"data: {"):
                    self.chunks.append(orjson.loads(line[len(b"data: ") :]))
                    self.started.set()
                elif line.startswith(b": "):
                    self.served = line.decode().split()[1]  # X-Limpet-Cache=...
        return self

    @property
    def usage_chunks(self) -> int:
        return sum(
            chunk["choices"] == [] and chunk.get("usage") is not None for chunk in self.chunks
        )


# --- the usage chunk --------------------------------------------------------------------------


async def test_a_hit_through_the_proxy_says_it_cost_nothing_in_its_usage_too(
    proxy: str,
) -> None:
    """OpenRouter's ``usage.cost`` is what clients add up: a hit (or a coalesced call)
    spent nothing, so its body says 0, as ``X-Limpet-Cost-USD`` does (the tokens stay).
    It repeated the first call's cost: three calls added up to three times the spend."""
    url = f"{proxy}/chat/completions"
    streamed = {**ask("streamed"), "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as session:
        answers = [(await post(session, url, ask("what it cost")))[1] for _ in range(3)]
        streams = [await Reader().read(session, url, streamed) for _ in range(2)]
    costs = [answer["usage"]["cost"] for answer in answers]
    assert costs[0] > 0 and costs[1:] == [0, 0]
    assert all(answer["usage"]["prompt_tokens"] > 0 for answer in answers)
    (miss,), (hit,) = ([c["usage"] for c in r.chunks if c.get("usage")] for r in streams)
    assert (streams[0].served, streams[1].served) == ("X-Limpet-Cache=miss", "X-Limpet-Cache=hit")
    assert miss["cost"] > 0 and hit["cost"] == 0 and hit["prompt_tokens"] == miss["prompt_tokens"]


@pytest.mark.parametrize("options", [None, {"include_usage": False}, {"include_usage": True}])
async def test_a_stream_ends_with_a_usage_chunk_only_when_the_caller_asked_as_upstream(
    proxy: str, gateway: FakeGateway, options: dict[str, bool] | None
) -> None:
    asked: dict[str, Any] = {} if options is None else {"stream_options": options}

    async def shapes(client: openai.AsyncOpenAI) -> list[tuple[int, bool]]:
        stream = await client.chat.completions.create(**ask("usage"), stream=True, **asked)
        return [(len(chunk.choices), chunk.usage is not None) async for chunk in stream]

    async with sdk(gateway.base_url("a")) as direct, sdk(proxy) as through:
        upstreams = await shapes(direct)
        miss = await shapes(through)
        hit = await shapes(through)
    wanted = options == {"include_usage": True}
    assert upstreams[-1] == ((0, True) if wanted else (1, False))
    for relayed in (miss, hit):
        assert relayed[-1] == upstreams[-1]
        assert {choices for choices, _ in relayed[:-1]} == {1}  # `chunk.choices[0]` holds
    assert gateway.endpoint("a").calls == 2  # the direct call and the miss


@pytest.mark.parametrize("leader_asks", [False, True])
async def test_a_coalesced_follower_gets_the_usage_chunk_only_when_it_asked(
    proxy: str, gateway: FakeGateway, leader_asks: bool
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.pause_stream(after_chunks=2)

    def question(asks: bool) -> dict[str, Any]:
        options: dict[str, Any] = {"stream_options": {"include_usage": True}} if asks else {}
        return ask("one flight", stream=True, **options)

    url = f"{proxy}/chat/completions"
    leader, follower = Reader(), Reader()
    async with aiohttp.ClientSession() as session:
        leading = asyncio.create_task(leader.read(session, url, question(leader_asks)))
        await leader.started.wait()  # its stream is upstream, held part-way
        following = asyncio.create_task(follower.read(session, url, question(not leader_asks)))
        await follower.started.wait()  # it joined the stream in flight
        endpoint.resume_stream()
        await asyncio.gather(leading, following)
        late = await Reader().read(session, url, question(leader_asks))
    assert (leader.served, follower.served) == ("X-Limpet-Cache=miss", "X-Limpet-Cache=coalesced")
    assert late.served == "X-Limpet-Cache=hit"
    assert (leader.usage_chunks, follower.usage_chunks) == (leader_asks, not leader_asks)
    assert late.usage_chunks == leader_asks
    for reader in (leader, follower, late):
        assert_chunks(reader.chunks)
    assert endpoint.calls == 1


async def test_the_callers_other_stream_options_go_upstream_and_a_bad_one_is_a_400(
    proxy: str, gateway: FakeGateway
) -> None:
    endpoint = gateway.endpoint("a")
    options = {"include_usage": False, "include_obfuscation": False}
    url = f"{proxy}/chat/completions"
    async with aiohttp.ClientSession() as session:
        reader = await Reader().read(
            session, url, ask("options", stream=True, stream_options=options)
        )
        assert endpoint.last_request is not None
        sent = endpoint.last_request["stream_options"]
        refused = await post(session, url, ask("options", stream=True, stream_options="usage"))
    assert reader.usage_chunks == 0
    assert sent == {"include_obfuscation": False, "include_usage": True}  # usage: the Client's
    assert (refused[0], refused[1]["error"]["param"]) == (400, "stream_options")
    assert endpoint.calls == 1


# --- errors: embeddings answered as chat, Retry-After ------------------------------------------


async def test_an_embeddings_refusal_comes_back_as_the_same_refusal_on_chat(
    proxy: str, gateway: FakeGateway
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.fail(400, times=2, message="model does not support dimensions")
    async with sdk(proxy, max_retries=2) as client:  # the SDK's default: retries a 5xx
        with pytest.raises(openai.BadRequestError) as on_embeddings:
            await client.embeddings.create(model=EMBEDDING_MODEL, input="hello", dimensions=7)
        with pytest.raises(openai.BadRequestError) as on_chat:
            await client.chat.completions.create(**ask("hello"))
    assert on_embeddings.value.body == on_chat.value.body
    assert on_embeddings.value.body == {
        "message": "model does not support dimensions",
        "type": "invalid_request_error",
        "param": None,
        "code": "400",
    }
    assert (gateway.embeddings.calls, endpoint.calls) == (1, 1)  # nobody retried a 400


@pytest.mark.gateway(api_key=KEY)
async def test_a_refused_key_on_embeddings_is_a_401_as_on_chat(
    proxy: str, gateway: FakeGateway
) -> None:
    async with sdk(proxy, api_key="sk-wrong", max_retries=2) as client:
        with pytest.raises(openai.AuthenticationError) as on_embeddings:
            await client.embeddings.create(model=EMBEDDING_MODEL, input="hello")
        with pytest.raises(openai.AuthenticationError) as on_chat:
            await client.chat.completions.create(**ask("hello"))
    assert on_embeddings.value.status_code == on_chat.value.status_code == 401
    assert on_embeddings.value.body["type"] == on_chat.value.body["type"]  # type: ignore[index]


async def test_an_embeddings_call_some_of_whose_inputs_failed_is_answered_as_that_failure(
    proxy: str, gateway: FakeGateway
) -> None:
    url = f"{proxy}/embeddings"
    async with aiohttp.ClientSession() as session:
        assert (await post(session, url, {"model": EMBEDDING_MODEL, "input": "kept"}))[0] == 200
        gateway.endpoint("a").fail(400, message="input too long")
        both = {"model": EMBEDDING_MODEL, "input": ["kept", "refused"]}
        status, body = await post(session, url, both)
        async with session.post(url, json=both, headers=AUTHORIZATION) as again:
            inputs = again.headers["X-Limpet-Inputs"]
    assert (status, body["error"]["type"]) == (400, "invalid_request_error")
    assert body["error"]["message"].startswith("1 of 2 inputs could not be embedded")
    assert body["error"]["message"].endswith("input too long")
    assert (again.status, inputs) == (200, "hits=1 misses=1 coalesced=0")  # sent only the one
    assert gateway.embeddings.inputs == 2


@pytest.mark.parametrize("route", ["chat", "stream", "embeddings"])
async def test_a_rate_limit_comes_back_with_the_upstreams_retry_after(
    proxy: str, gateway: FakeGateway, route: str
) -> None:
    gateway.endpoint("a").fail(429, retry_after_ms=40, times=10)  # after the Client's retries
    async with sdk(proxy) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            if route == "embeddings":
                await client.embeddings.create(model=EMBEDDING_MODEL, input="slow down")
            else:
                await client.chat.completions.create(**ask("slow down"), stream=route == "stream")
    headers = limited.value.response.headers
    assert (headers["retry-after-ms"], headers["Retry-After"]) == ("40", "1")  # whole seconds


# --- what a caller sends -----------------------------------------------------------------------


async def test_attribution_and_organization_headers_reach_the_upstream(
    proxy: str, gateway: FakeGateway
) -> None:
    attribution = {"HTTP-Referer": "https://app.example", "X-Title": "My App"}
    others = {"X-Unlisted": "not forwarded"}
    options: dict[str, Any] = {"organization": "org-1", "project": "proj-1"}
    async with sdk(proxy, default_headers={**attribution, **others}, **options) as client:
        await client.chat.completions.create(**ask("attributed"))
    received = gateway.endpoint("a").last_headers
    assert received is not None
    assert {name: received.get(name) for name in attribution} == attribution
    assert (received["OpenAI-Organization"], received["OpenAI-Project"]) == ("org-1", "proj-1")
    assert "X-Unlisted" not in received


def call_parameters() -> list[str]:
    """The parameters of ``Client.complete()``, ``stream()`` and ``embed()`` that are no
    field of the request body (``self`` included)."""
    body_fields = {"model", "messages", "input", "dimensions", "encoding_format"}
    names = {
        parameter.name
        for method in (Client.complete, Client.stream, Client.embed)
        for parameter in inspect.signature(method).parameters.values()
        if parameter.kind is not inspect.Parameter.VAR_KEYWORD
    }
    return sorted(names - body_fields)


@pytest.mark.parametrize("name", call_parameters())
async def test_a_body_field_named_as_a_call_parameter_goes_upstream_as_sent(
    proxy: str, gateway: FakeGateway, name: str
) -> None:
    value: Any = {"field": name}
    endpoint = gateway.endpoint("a")
    async with aiohttp.ClientSession() as session:
        chat = await post(session, f"{proxy}/chat/completions", ask(name, **{name: value}))
        assert endpoint.last_request is not None
        chat_sent = endpoint.last_request[name]
        streamed = ask(f"{name} streamed", stream=True, **{name: value})
        await Reader().read(session, f"{proxy}/chat/completions", streamed)
        stream_sent = endpoint.last_request[name]
        embedded = {"model": EMBEDDING_MODEL, "input": name, name: value}
        embeddings = await post(session, f"{proxy}/embeddings", embedded)
    assert (chat[0], embeddings[0]) == (200, 200)
    assert chat_sent == stream_sent == gateway.embeddings.requests[-1][name] == value


@pytest.mark.parametrize("ttl", ["1e308", "1e10"])
async def test_a_ttl_no_tier_can_hold_is_refused_naming_the_header_before_any_call(
    proxy: str, gateway: FakeGateway, ttl: str
) -> None:
    too_long = {"X-Limpet-TTL": ttl}
    async with aiohttp.ClientSession() as session:
        chat = await post(session, f"{proxy}/chat/completions", ask("forever"), **too_long)
        embedding = {"model": EMBEDDING_MODEL, "input": "forever"}
        embeddings = await post(session, f"{proxy}/embeddings", embedding, **too_long)
    for status, body in (chat, embeddings):
        assert (status, body["error"]["param"]) == (400, "X-Limpet-TTL")
    assert (gateway.endpoint("a").calls, gateway.embeddings.calls) == (0, 0)


async def test_an_unknown_encoding_format_is_refused_before_any_call(
    proxy: str, gateway: FakeGateway
) -> None:
    body = {"model": EMBEDDING_MODEL, "input": "packed", "encoding_format": "int8"}
    async with aiohttp.ClientSession() as session:
        status, refused = await post(session, f"{proxy}/embeddings", body)
    assert (status, refused["error"]["param"]) == (400, "encoding_format")
    assert gateway.embeddings.calls == 0


# --- one caller's refused key ------------------------------------------------------------------


@pytest.mark.gateway(endpoints=("a", "b"), api_key=KEY)
async def test_callers_with_refused_keys_never_eject_the_upstream_the_others_share(
    gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="limpet")
    question = ask("a shared upstream")
    async with serving(gateway, "a", "b") as url, aiohttp.ClientSession() as session:

        async def call(key: str, **headers: str) -> tuple[int, str | None]:
            sent = {"Authorization": f"Bearer {key}", **headers}
            async with session.post(f"{url}/chat/completions", json=question, headers=sent) as r:
                await r.read()
                return r.status, r.headers.get("X-Limpet-Endpoint")

        before = await call(KEY)
        refused = [await call(f"sk-wrong-{index}") for index in range(5)]
        after = await call(KEY, **{"X-Limpet-Cache-Mode": "bypass"})
    assert before[0] == after[0] == 200
    assert after[1] == before[1]  # still routed where the question hashes
    assert refused == [(401, None)] * 5
    calls = sorted(gateway.endpoint(name).calls for name in ("a", "b"))
    assert calls == [0, 7]  # every call went to that one upstream, none failed over
    assert [r.getMessage() for r in caplog.records if "ejected" in r.getMessage()] == []


SECRET = "sk-or-v1-SECRETKEY0123456789"
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\n"


@pytest.mark.parametrize(
    "authorization",
    [
        f"Bearer {SECRET}\r".encode(),  # a key read from a file with CRLF line ends
        f"Bearer {SECRET}\x00".encode(),
        f"Bearer {SECRET}".encode() + b"x" * 9000,  # a header over aiohttp's 8,190 bytes
    ],
    ids=["stray-cr", "nul", "too-long"],
)
async def test_a_request_the_server_cannot_parse_never_puts_its_key_in_the_log(
    proxy: str, caplog: pytest.LogCaptureFixture, authorization: bytes
) -> None:
    """aiohttp logs a request it cannot parse with the offending header line: the key in
    a malformed ``Authorization`` reached the server's log. It is refused, and logged
    without its lines."""
    host, port = proxy.removeprefix("http://").removesuffix("/v1").split(":")
    body = orjson.dumps(ask())
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: " + authorization + b"\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400"
    logged = [logging.Formatter().format(record) for record in caplog.records]
    assert any("refused a malformed HTTP request" in line for line in logged)
    assert not any(SECRET in line for line in logged)


@pytest.mark.parametrize(
    ("head", "wrong"),
    [
        (CHAT + b"Authorization: Bearer %s\r", "a header is malformed"),  # CRLF line ends
        (CHAT + b"Authorization: Bearer %s\x00", "a header is malformed"),
        (CHAT + b"Authorization: Bearer %s" + b"x" * 9000, "too long"),  # over 8,190 bytes
        (b"GET /v1/models?key=%s HTTP/1.1 junk", "request line is malformed"),
        (b"GET /v1/models?key=%s" + b"x" * 9000 + b" HTTP/1.1", "too long"),
    ],
    ids=["stray-cr", "nul", "long-header", "bad-request-line", "long-request-line"],
)
async def test_a_request_the_server_cannot_parse_is_answered_in_openais_shape_unquoted(
    proxy: str, gateway: FakeGateway, caplog: pytest.LogCaptureFixture, head: bytes, wrong: str
) -> None:
    """aiohttp answered a request it could not parse with a text/plain 400 quoting the
    offending line, the key in it: it is an OpenAI-shaped error that quotes nothing of
    the request, and neither does the log."""
    host, port = proxy.removeprefix("http://").removesuffix("/v1").split(":")
    caplog.set_level(logging.DEBUG)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head % SECRET.encode() + b"\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    await writer.drain()
    answer = await reader.read()  # to the end: the server closes the connection
    writer.close()
    assert SECRET.encode() not in answer
    head_lines, _, payload = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head_lines.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    error = orjson.loads(payload)["error"]
    assert status_line.split(" ", 2)[1] == "400"
    assert headers["Content-Type"].startswith("application/json")
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "malformed_request",
        None,
    )
    assert error["message"].startswith("the request is not valid HTTP: ")
    assert wrong in error["message"]
    logged = [logging.Formatter().format(record) for record in caplog.records]
    assert any("refused a malformed HTTP request" in line for line in logged)
    assert not any(SECRET in line for line in logged)
    assert gateway.total_calls == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (b"POST", b"/v1/chat/completions", orjson.dumps(ask())),
        (b"POST", b"/v1/embeddings", orjson.dumps({"model": EMBEDDING_MODEL, "input": "w"})),
        (b"GET", b"/v1/models", b""),
    ],
    ids=["chat", "embeddings", "models"],
)
@pytest.mark.parametrize("header", [b"Authorization", b"OpenAI-Organization", b"X-Title"])
async def test_a_header_that_is_not_utf8_is_a_400_naming_it_on_every_route(
    gateway: FakeGateway,
    proxy: str,
    caplog: pytest.LogCaptureFixture,
    method: bytes,
    path: bytes,
    body: bytes,
    header: bytes,
) -> None:
    """A byte that is not UTF-8 in a header the proxy forwards, hashes or compares was an
    internal error (500) with a traceback in the log; it is the caller's bad request."""
    host, port = proxy.removeprefix("http://").removesuffix("/v1").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        method
        + b" "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + header
        + b": Bearer sk-\xff-"
        + SECRET.encode()
        + b"\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
    )
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400"
    error = orjson.loads(payload)["error"]
    assert error["message"].startswith(header.decode()) and error["type"] == "invalid_request_error"
    assert SECRET.encode() not in answer
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)
    assert gateway.total_calls == 0


async def test_a_method_not_allowed_says_which_are(proxy: str) -> None:
    """RFC 9110: a 405 carries ``Allow``; the proxy's own error shape kept it out."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(proxy + "/chat/completions") as response,
    ):
        body = await response.json()
        allowed = response.headers.get("Allow")
    assert response.status == 405 and body["error"]["type"] == "invalid_request_error"
    assert allowed is not None and "POST" in allowed


@pytest.mark.parametrize(
    "encodings",
    [["gzip"], ["deflate"], ["br, gzip"], ["identity", "gzip"], ["", "gzip"], ["identity, gzip"]],
)
async def test_a_compressed_body_is_refused_unread(
    proxy: str, gateway: FakeGateway, encodings: list[str]
) -> None:
    # Regression: aiohttp unpacked it whole before any limit applied to what it unpacked
    # to: 61 KB of gzip was 63 MB of JSON, read, parsed and keyed, from a caller with no
    # key; four such requests took a worker from 43 MB to 1 GB. (aiohttp unpacks by the
    # last Content-Encoding header: every one is read.)
    body = gzip.compress(orjson.dumps(ask("packed")))
    headers = [
        *AUTHORIZATION.items(),
        ("Content-Type", "application/json"),
        *(("Content-Encoding", encoding) for encoding in encodings),
    ]
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy}/chat/completions", data=body, headers=headers) as response,
    ):
        status, error = response.status, (await response.json())["error"]
    assert status == 415 and "Content-Encoding" in error["message"]
    assert gateway.endpoint("a").calls == 0


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[1, 2]"])
async def test_a_body_that_is_no_json_object_is_a_400_saying_so(
    proxy: str, gateway: FakeGateway, body: bytes
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy}/chat/completions", data=body, headers=AUTHORIZATION) as response,
    ):
        status, error = response.status, (await response.json())["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert error["message"].startswith("body: expected a JSON object, got ")
    assert "'invalid JSON'" not in error["message"]
    assert gateway.endpoint("a").calls == 0


@pytest.mark.parametrize("encoding", ["identity", "IDENTITY", " identity ", ""])
async def test_a_body_sent_as_it_is_is_read(proxy: str, encoding: str) -> None:
    headers = {**AUTHORIZATION, "Content-Encoding": encoding}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy}/chat/completions", json=ask("plain"), headers=headers) as answer,
    ):
        assert answer.status == 200


async def test_content_is_never_held_back_when_every_chunk_carries_usage() -> None:
    """Some servers put usage on every chunk: only the usage-only chunk waits for the end
    of the stream (where what this caller spent is known); content goes as it comes. The
    last content chunk waited for the upstream's [DONE], every chunk for the next one."""
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    async with scripted_upstream() as upstream:
        upstream.script = [
            {**chunk({"role": "assistant", "content": "Hello"}), "usage": usage},
            {**chunk({"content": " world"}, "stop"), "usage": usage},
        ]
        done = upstream.before_done = asyncio.Event()  # [DONE] once both reached the caller
        config = ServeConfig(upstreams=(upstream.url,))
        streamed = {**ask(), "stream": True, "stream_options": {"include_usage": True}}
        seen: list[str] = []
        async with (
            served(create_app(config), access_log=None) as url,
            aiohttp.ClientSession() as session,
            session.post(
                url + "/v1/chat/completions", json=streamed, headers=AUTHORIZATION
            ) as response,
        ):
            try:
                async with asyncio.timeout(LONG):  # a failure, not a hang
                    async for line in response.content:
                        if line.startswith(b"data: {") and b'"content"' in line:
                            seen.append(orjson.loads(line[6:])["choices"][0]["delta"]["content"])
                            if len(seen) == 2:
                                done.set()
            finally:
                done.set()  # the upstream may end, whatever happened
    assert seen == ["Hello", " world"]


async def test_a_streamed_hit_says_it_spent_nothing_wherever_its_usage_comes() -> None:
    """Usage (and its dollars) on the last content chunk, not a usage-only one: a replayed
    hit says 0 there too (it is rewritten at once: a replay is known from its first
    chunk), where it repeated the paid call's cost."""
    money = {"cost": 0.5, "cost_details": {"upstream_inference_cost": 0.4}, "is_byok": True}
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6, **money}
    async with scripted_upstream() as upstream:
        upstream.script = [
            chunk({"role": "assistant", "content": "Hello"}),
            {**chunk({}, "stop"), "usage": usage},
        ]
        config = ServeConfig(upstreams=(upstream.url,))
        streamed = {**ask(), "stream": True, "stream_options": {"include_usage": True}}
        async with (
            served(create_app(config), access_log=None) as url,
            aiohttp.ClientSession() as session,
        ):
            miss, hit = [
                await Reader().read(session, url + "/v1/chat/completions", streamed)
                for _ in range(2)
            ]
    (paid,), (shown,) = ([c["usage"] for c in r.chunks if c.get("usage")] for r in (miss, hit))
    assert (miss.served, hit.served) == ("X-Limpet-Cache=miss", "X-Limpet-Cache=hit")
    assert paid["cost"] == 0.5 and paid["cost_details"]["upstream_inference_cost"] == 0.4
    assert shown["cost"] == 0 and shown["cost_details"]["upstream_inference_cost"] == 0
    assert shown["is_byok"] is True and shown["prompt_tokens"] == 5
    assert [c["choices"] for c in hit.chunks] == [c["choices"] for c in miss.chunks]


async def test_a_coalesced_stream_says_it_spent_nothing_on_each_chunk_that_says_dollars() -> None:
    """Usage with dollars on several chunks of a live stream: a caller who joined another
    caller's stream spent nothing, and is told 0 on each of them, as a hit is; it was told
    the upstream's cost on all but the last. Its tokens are the chunks' own, as the
    ``CompletionStream`` of a coalesced caller gives them; the leader's dollars are left."""

    def paid(tokens: int) -> dict[str, Any]:
        cost = {"cost": 0.01 * tokens, "cost_details": {"upstream_inference_cost": 0.01}}
        return {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens, **cost}

    async with scripted_upstream() as upstream:
        upstream.script = [
            {**chunk({"role": "assistant", "content": "Hello"}), "usage": paid(1)},
            {**chunk({"content": " world"}), "usage": paid(2)},
            {**chunk({}, "stop"), "usage": paid(2)},
            {**ENVELOPE, "choices": [], "usage": paid(2)},
        ]
        done = upstream.before_done = asyncio.Event()  # the stream runs until it is set
        config = ServeConfig(upstreams=(upstream.url,))
        streamed = {**ask(), "stream": True, "stream_options": {"include_usage": True}}
        async with served(create_app(config), access_log=None) as url, sdk(url + "/v1") as client:

            async def read(started: asyncio.Event) -> list[dict[str, Any]]:
                chunks = []
                async for got in await client.chat.completions.create(**streamed):
                    chunks.append(got.model_dump(mode="json", exclude_unset=True))
                    started.set()
                return chunks

            try:
                async with asyncio.timeout(LONG):  # a failure, not a hang
                    leading, following = asyncio.Event(), asyncio.Event()
                    leader = asyncio.create_task(read(leading))
                    await leading.wait()  # its stream is upstream, held before [DONE]
                    follower = asyncio.create_task(read(following))
                    await following.wait()  # it joined the stream in flight
                    done.set()
                    paying, sharing = await asyncio.gather(leader, follower)
                    hit = await read(asyncio.Event())
            finally:
                done.set()  # the upstream may end, whatever happened
    assert upstream.calls == 1  # one paid call: the follower's was coalesced, the last a hit
    miss, coalesced, replayed = (
        [c["usage"] for c in chunks if c.get("usage")] for chunks in (paying, sharing, hit)
    )
    assert [usage["cost"] for usage in miss] == [0.01, 0.02, 0.02, 0.02]
    assert [usage["cost"] for usage in coalesced] == [0, 0, 0, 0] == [u["cost"] for u in replayed]
    assert {usage["cost_details"]["upstream_inference_cost"] for usage in coalesced} == {0}
    assert coalesced == replayed
    tokens = [{**usage, "cost": 0, "cost_details": {}} for usage in miss]
    assert [{**usage, "cost_details": {}} for usage in coalesced] == tokens
    assert [c["choices"] for c in sharing] == [c["choices"] for c in paying]


async def test_a_split_surrogate_pair_reaches_the_openai_sdk_through_the_proxy() -> None:
    # A chunk holding a lone surrogate (a pair split across two chunks) is relayed as the
    # upstream wrote it: orjson cannot write it back, and the relay failed mid-stream.
    async with scripted_upstream() as upstream:
        upstream.script = [
            raw_event(b'{"role":"assistant","content":"\\ud83d"}'),
            raw_event(b'{"content":"\\ude00"}', "stop"),
            usage_chunk(),
        ]
        config = ServeConfig(upstreams=(upstream.url,))
        async with (
            served(create_app(config), access_log=None) as url,
            sdk(url + "/v1") as client,
        ):
            stream = await client.chat.completions.create(**ask(), stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "\ud83d\ude00"
