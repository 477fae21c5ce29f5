"""``limpet serve`` as a real subprocess over loopback, in front of a FakeGateway, driven
by the ``openai`` package and raw aiohttp."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from limpet import RedisCache
from limpet.serve import ServeConfig, create_app
from limpet.serve.upstream import ModelListings
from limpet.testing import FakeGateway
from tests.integration.chat import MODEL, ask
from tests.integration.test_serve_body import answer_to_a_slow_body
from tests.loopback import served
from tests.openai_shapes import assert_chat_completion, assert_chunks
from tests.redis_servers import eventually, free_port

_READY_DEADLINE = 30.0


class Proxy:
    """A ``limpet serve`` subprocess on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = None if env is None else {**os.environ, **env}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None
        self.terminated = False
        self.stderr = ""

    async def start(self) -> Proxy:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "limpet",
            "serve",
            "--port",
            str(self.port),
            *self.args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        await eventually(self._ready, deadline=_READY_DEADLINE, what="limpet serve answering")
        return self

    async def _ready(self) -> bool:
        assert self.process is not None
        if self.process.returncode is not None:
            _, err = await self.process.communicate()
            raise AssertionError(f"limpet serve exited: {err.decode()}")
        return await self.answers()

    async def answers(self) -> bool:
        """Whether a new connection gets ``/healthz`` answered."""
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{self.url}/healthz") as response,
            ):
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    def openai(self, api_key: str = "sk-test-a") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def terminate(self) -> None:
        """SIGTERM, once: a second one during the clean-up would kill the process."""
        assert self.process is not None
        if self.process.returncode is None and not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    async def stop(self) -> int:
        """SIGTERM (unless sent already); the exit status."""
        assert self.process is not None
        self.terminate()
        _, err = await self.process.communicate()
        self.stderr = err.decode()
        assert self.process.returncode is not None
        return self.process.returncode


@pytest.fixture
async def proxy(gateway: FakeGateway) -> AsyncIterator[Proxy]:
    server = await Proxy("--upstream", gateway.base_url("a")).start()
    try:
        yield server
    finally:
        assert await server.stop() == 0


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event, ``[DONE]`` included."""
    async for line in response.content:
        if line.startswith(b"data: "):
            yield line[len(b"data: ") :].rstrip(b"\n")


async def test_json_and_stream_answers_parse_and_the_second_call_is_a_hit(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    async with proxy.openai() as client:
        first = await client.chat.completions.with_raw_response.create(**ask("hello"))
        again = await client.chat.completions.with_raw_response.create(**ask("hello"))
        stream = await client.chat.completions.create(**ask("hello"), stream=True)
        chunks = [chunk async for chunk in stream]
    assert first.headers["X-Limpet-Cache"] == "miss"
    assert again.headers["X-Limpet-Cache"] == "hit"
    assert first.headers["X-Limpet-Key"] == again.headers["X-Limpet-Key"]
    assert first.headers["X-Limpet-Endpoint"] == again.headers["X-Limpet-Endpoint"]
    assert float(first.headers["X-Limpet-Cost-USD"]) > 0
    completion = first.parse()
    assert isinstance(completion, ChatCompletion)
    assert again.parse().choices[0].message.content == completion.choices[0].message.content
    assert all(isinstance(chunk, ChatCompletionChunk) for chunk in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == completion.choices[0].message.content  # one entry for both
    assert gateway.endpoint("a").calls == 1


async def test_answers_are_what_a_direct_call_gives_field_for_field(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{proxy.url}/v1/chat/completions"
        async with session.post(url, json=ask("shapes")) as response:
            assert_chat_completion(await response.json())
        usage = {"include_usage": True}  # as a direct call, usage only when asked for
        streamed = ask("a stream", stream=True, stream_options=usage)
        async with session.post(url, json=streamed) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            events = [data async for data in read_events(response)]
    assert events[-1] == b"[DONE]"
    raws = [orjson.loads(data) for data in events[:-1]]
    assert_chunks(raws)
    assert any(raw.get("usage") for raw in raws)
    assert gateway.endpoint("a").calls == 2


async def test_fifty_concurrent_identical_calls_make_one_upstream_call(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    gateway.endpoint("a").latency = 0.2
    async with aiohttp.ClientSession() as session:

        async def call() -> str:
            url = f"{proxy.url}/v1/chat/completions"
            headers = {"Authorization": "Bearer sk-test-a"}
            async with session.post(url, json=ask("burst"), headers=headers) as response:
                assert response.status == 200
                assert_chat_completion(await response.json())
                return response.headers["X-Limpet-Cache"]

        statuses = await asyncio.gather(*(call() for _ in range(50)))
    assert gateway.endpoint("a").calls == 1
    assert statuses.count("miss") == 1
    assert set(statuses) <= {"miss", "coalesced", "hit"}


async def test_callers_with_other_keys_share_no_answer(proxy: Proxy, gateway: FakeGateway) -> None:
    async with proxy.openai("sk-test-a") as a, proxy.openai("sk-test-b") as b:
        answers = [
            await a.chat.completions.with_raw_response.create(**ask("tenants")),
            await b.chat.completions.with_raw_response.create(**ask("tenants")),
            await b.chat.completions.with_raw_response.create(**ask("tenants")),
        ]
    assert [answer.headers["X-Limpet-Cache"] for answer in answers] == ["miss", "miss", "hit"]
    assert answers[0].headers["X-Limpet-Key"] != answers[1].headers["X-Limpet-Key"]
    assert gateway.endpoint("a").calls == 2


async def test_the_callers_key_goes_upstream_and_the_upstreams_refusal_comes_back() -> None:
    async with FakeGateway(endpoints=("a",), api_key="sk-test-a") as gateway:
        proxy = await Proxy("--upstream", gateway.base_url("a")).start()
        try:
            async with proxy.openai("sk-test-a") as good, proxy.openai("sk-wrong") as bad:
                completion = await good.chat.completions.create(**ask("who"))
                with pytest.raises(openai.AuthenticationError) as refused:
                    await bad.chat.completions.create(**ask("who"))
        finally:
            assert await proxy.stop() == 0
    assert completion.choices[0].message.content
    assert refused.value.status_code == 401
    assert "sk-wrong" not in str(refused.value.body)


async def test_a_caller_hanging_up_mid_stream_leaves_the_others_of_its_flight_whole(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    endpoint = gateway.endpoint("a")
    endpoint.pause_stream(after_chunks=2)
    url = f"{proxy.url}/v1/chat/completions"
    started = [asyncio.Event(), asyncio.Event()]

    async def read(index: int, hang_up: asyncio.Event | None) -> list[bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=ask("shared stream", stream=True)) as response,
        ):
            events = []
            async for data in read_events(response):
                events.append(data)
                started[index].set()
                if hang_up is not None:
                    await hang_up.wait()
                    response.close()  # hangs up mid-stream
                    return events
            return events

    hang_up = asyncio.Event()
    leaver = asyncio.create_task(read(0, hang_up))
    stayer = asyncio.create_task(read(1, None))
    await started[0].wait()
    await started[1].wait()
    hang_up.set()
    await leaver
    endpoint.resume_stream()
    events = await stayer
    assert events[-1] == b"[DONE]"
    assert_chunks(orjson.loads(data) for data in events[:-1])
    assert endpoint.calls == 1
    async with (  # the stream ended cleanly: its answer is stored
        aiohttp.ClientSession() as session,
        session.post(url, json=ask("shared stream")) as again,
    ):
        assert again.headers["X-Limpet-Cache"] == "hit"
    assert endpoint.calls == 1


async def test_a_lone_caller_hanging_up_mid_stream_leaves_no_partial_answer_behind(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    # No other reader keeps the stream going: whatever the proxy does with the rest of it
    # (finish and store it, or drop it), the next identical request gets the whole answer.
    endpoint = gateway.endpoint("a")
    endpoint.pause_stream(after_chunks=2)
    url = f"{proxy.url}/v1/chat/completions"
    question = ask("a lone stream", max_tokens=64)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={**question, "stream": True}) as response,
    ):
        events = read_events(response)
        assert (await anext(events)) != b"[DONE]"
        response.close()  # hangs up mid-stream
    endpoint.resume_stream()

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gateway.base_url('a')}/chat/completions", json=question) as r:
            whole = orjson.loads(await r.read())["choices"][0]["message"]["content"]
        for _ in range(2):  # the first may go upstream or find what the stream stored
            async with session.post(url, json=question) as again:
                served = orjson.loads(await again.read())["choices"][0]["message"]["content"]
                assert (again.status, served) == (200, whole)
        assert again.headers["X-Limpet-Cache"] == "hit"


async def test_sigterm_lets_calls_in_flight_finish_then_exits_0(gateway: FakeGateway) -> None:
    proxy = await Proxy("--upstream", gateway.base_url("a")).start()
    endpoint = gateway.endpoint("a")
    endpoint.pause_stream(after_chunks=1)
    url = f"{proxy.url}/v1/chat/completions"
    started = [asyncio.Event() for _ in range(3)]

    async def read(index: int) -> list[bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json=ask(f"in flight {index}", stream=True)) as response,
        ):
            events = []
            async for data in read_events(response):
                events.append(data)
                started[index].set()
            return events

    readers = [asyncio.create_task(read(index)) for index in range(3)]
    for event in started:
        await event.wait()
    proxy.terminate()

    async def refuses() -> bool:
        return not await proxy.answers()

    await eventually(refuses, what="limpet serve to stop accepting")
    endpoint.resume_stream()
    outcomes = await asyncio.gather(*readers, return_exceptions=True)
    status = await proxy.stop()
    # Seen once in CI, not reproduced since: a stream cut mid-body; the proxy's own
    # account of it is what would say why.
    for outcome in outcomes:
        assert not isinstance(outcome, BaseException), f"{outcome!r}; {proxy.stderr}"
        assert outcome[-1] == b"[DONE]", proxy.stderr
    assert status == 0, proxy.stderr
    assert endpoint.calls == 3


async def test_control_headers_and_errors_in_openais_shape(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    endpoint = gateway.endpoint("a")
    url = f"{proxy.url}/v1/chat/completions"
    async with aiohttp.ClientSession() as session:

        async def post(body: object, **headers: str) -> tuple[int, dict[str, Any], str | None]:
            async with session.post(url, json=body, headers=headers) as response:
                return (
                    response.status,
                    await response.json(),
                    response.headers.get("X-Limpet-Cache"),
                )

        assert (await post(ask("modes")))[2] == "miss"
        assert (await post(ask("modes"), **{"X-Limpet-Cache-Mode": "bypass"}))[2] == "bypass"
        assert (await post(ask("modes"), **{"X-Limpet-Cache-Mode": "refresh"}))[2] == "miss"
        assert endpoint.calls == 3
        status, body, _ = await post(ask("modes"), **{"X-Limpet-Cache-Mode": "sometimes"})
        assert (status, body["error"]["param"]) == (400, "X-Limpet-Cache-Mode")
        status, body, _ = await post(ask("modes"), **{"X-Limpet-TTL": "-5"})
        assert (status, body["error"]["type"]) == (400, "invalid_request_error")
        status, body, _ = await post({"model": MODEL})
        assert (status, body["error"]["param"]) == (400, "messages")
        status, body, _ = await post([1, 2])
        assert status == 400
        assert endpoint.calls == 3  # bad input never goes upstream
        endpoint.fail(404, message="no such model")
        status, body, _ = await post(ask("missing"))
        assert status == 404
        assert body["error"]["message"] == "no such model"
        assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_an_unreachable_upstream_is_a_502() -> None:
    proxy = await Proxy("--upstream", f"http://127.0.0.1:{free_port()}/v1").start()
    try:
        async with proxy.openai() as client:
            with pytest.raises(openai.APIStatusError) as failed:
                await client.chat.completions.create(**ask("anyone?"))
    finally:
        assert await proxy.stop() == 0
    assert failed.value.status_code == 502


async def test_models_are_passed_through_and_kept_briefly(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    endpoint = gateway.endpoint("a")
    async with proxy.openai() as client:
        first = [model.id async for model in client.models.list()]
        listings = endpoint.model_listings
        again = [model.id async for model in client.models.list()]
    assert MODEL in first
    assert again == first
    assert endpoint.model_listings == listings


@pytest.mark.parametrize("status", [201, 204, 301, 308])
async def test_a_models_status_that_is_no_listing_nor_error_is_a_502(status: int) -> None:
    """A 2xx other than 200 relayed as is parsed as a page with no data (or failed to
    parse), a 3xx came without its Location: the upstream answered nothing usable."""

    async def models(request: web.Request) -> web.Response:
        moved = {"Location": "https://elsewhere.example/v1/models"} if status >= 300 else None
        return web.Response(status=status, headers=moved)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with (
        served(app) as upstream,
        served(create_app(ServeConfig(upstreams=(upstream + "/v1",)))) as proxy,
        openai.AsyncOpenAI(base_url=proxy + "/v1", api_key="sk-a", max_retries=0) as caller,
    ):
        with pytest.raises(openai.APIStatusError) as caught:
            await caller.models.list()
    assert caught.value.status_code == 502


async def test_listings_are_kept_for_a_bounded_number_of_credentials(
    gateway: FakeGateway,
) -> None:
    """The FakeGateway's ``/models``, like OpenRouter's, answers any key: made-up keys
    must not grow what the proxy keeps past its cap within one TTL."""
    endpoint = gateway.endpoint("a")
    url = gateway.base_url("a") + "/models"
    async with aiohttp.ClientSession() as session:
        listings = ModelListings(session, url, ttl=60.0, clock=lambda: 0.0, max_kept=2)
        for key in ("sk-made-up-1", "sk-made-up-2", "sk-made-up-3"):
            assert (await listings.get(f"Bearer {key}"))[0] == 200
        assert endpoint.model_listings == 3
        await listings.get("Bearer sk-made-up-3")  # among the two kept
        assert endpoint.model_listings == 3
        await listings.get("Bearer sk-made-up-1")  # the oldest, made way for the third
        assert endpoint.model_listings == 4


async def test_concurrent_listings_of_one_credential_are_one_fetch(gateway: FakeGateway) -> None:
    endpoint = gateway.endpoint("a")
    url = gateway.base_url("a") + "/models"
    async with aiohttp.ClientSession() as session:
        listings = ModelListings(session, url, ttl=60.0, clock=lambda: 0.0)
        answers = await asyncio.gather(*(listings.get("Bearer sk-one") for _ in range(20)))
        others = await asyncio.gather(*(listings.get("Bearer sk-two") for _ in range(5)))
    assert {status for status, _ in answers + others} == {200}
    assert len({body for _, body in answers}) == 1
    assert endpoint.model_listings == 2  # one fetch a credential


async def test_limpet_serve_fake_answers_with_no_key_and_no_network() -> None:
    proxy = await Proxy("--fake").start()
    try:
        async with proxy.openai("anything") as client:
            completion = await client.chat.completions.create(**ask("hi"))
            again = await client.chat.completions.with_raw_response.create(**ask("hi"))
    finally:
        assert await proxy.stop() == 0
    assert completion.choices[0].message.content
    assert again.headers["X-Limpet-Cache"] == "hit"


@pytest.mark.redis
async def test_two_proxies_share_the_redis_tier(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    await proxies_share_their_shared_tier(gateway, "--redis", redis_url, "--prefix", redis_prefix)


@pytest.mark.memcached
async def test_two_proxies_share_the_memcached_tier(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    await proxies_share_their_shared_tier(
        gateway, "--memcached", memcached_url, "--prefix", memcached_prefix
    )


@pytest.mark.redis
async def test_proxies_sign_their_shared_entries_with_the_key_hmac_key_env_names(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Regression: limpet serve had no way to sign entries; one forged in Redis was served.
    upstream = ("--upstream", gateway.base_url("a"), "--redis", redis_url)
    signed = (*upstream, "--prefix", redis_prefix, "--hmac-key-env", "LIMPET_TEST_HMAC")
    fleet, again, other = await asyncio.gather(
        Proxy(*signed, env={"LIMPET_TEST_HMAC": "fleet-key"}).start(),
        Proxy(*signed, env={"LIMPET_TEST_HMAC": "fleet-key"}).start(),
        Proxy(*signed, env={"LIMPET_TEST_HMAC": "another-key"}).start(),
    )
    try:
        served = []
        for proxy in (fleet, again, other):
            async with proxy.openai() as client:
                answer = await client.chat.completions.with_raw_response.create(**ask("signed"))
                served.append(answer.headers["X-Limpet-Cache"])
    finally:
        statuses = [await proxy.stop() for proxy in (fleet, again, other)]
    assert statuses == [0, 0, 0]
    # A key it was not signed with takes the entry for forged: a miss, never served.
    assert served == ["miss", "hit", "miss"]
    assert gateway.endpoint("a").calls == 2


async def proxies_share_their_shared_tier(gateway: FakeGateway, *tier: str) -> None:
    upstream = ("--upstream", gateway.base_url("a"))
    first, second = await asyncio.gather(
        Proxy(*upstream, *tier).start(), Proxy(*upstream, *tier).start()
    )
    try:
        async with first.openai() as a, second.openai() as b:
            miss = await a.chat.completions.with_raw_response.create(**ask("fleet"))
            hit = await b.chat.completions.with_raw_response.create(**ask("fleet"))
    finally:
        assert await first.stop() == 0
        assert await second.stop() == 0
    assert (miss.headers["X-Limpet-Cache"], hit.headers["X-Limpet-Cache"]) == ("miss", "hit")
    assert gateway.endpoint("a").calls == 1


@pytest.mark.parametrize("shared", [False, True], ids=["own entries", "shared"])
async def test_with_its_own_upstream_key_the_proxy_lets_in_only_its_client_keys(
    tmp_path: Path, shared: bool
) -> None:
    keys = tmp_path / "client-keys"
    keys.write_text("# the proxy's callers\nsk-client-1\n\nsk-client-2\n")
    env = {"LIMPET_TEST_UPSTREAM_KEY": "sk-upstream"}
    async with FakeGateway(endpoints=("a",), api_key="sk-upstream") as gateway:
        upstream = ("--upstream", gateway.base_url("a"))
        options = (
            "--upstream-key-env",
            "LIMPET_TEST_UPSTREAM_KEY",
            "--client-keys-file",
            str(keys),
            *(("--share-across-client-keys",) if shared else ()),
        )
        proxy = await Proxy(*upstream, *options, env=env).start()
        try:
            async with (
                proxy.openai("sk-client-1") as one,
                proxy.openai("sk-client-2") as two,
                proxy.openai("sk-upstream") as stranger,
            ):
                first = await one.chat.completions.with_raw_response.create(**ask("shared"))
                second = await two.chat.completions.with_raw_response.create(**ask("shared"))
                again = await one.chat.completions.with_raw_response.create(**ask("shared"))
                models = [model.id async for model in two.models.list()]
                with pytest.raises(openai.AuthenticationError) as refused:
                    await stranger.chat.completions.create(**ask("shared"))
                # As OpenAI's own refusal reads in the SDK.
                assert (refused.value.type, refused.value.code) == (
                    "invalid_request_error",
                    "invalid_api_key",
                )
                with pytest.raises(openai.AuthenticationError):
                    await stranger.models.list()
        finally:
            assert await proxy.stop() == 0
        assert gateway.endpoint("a").calls == (1 if shared else 2)
    # Each client key is a tenant of its own: another's identical prompt is no hit (nor
    # does it tell one tenant what another asked), unless the proxy shares on purpose.
    served = [r.headers["X-Limpet-Cache"] for r in (first, second, again)]
    assert served == (["miss", "hit", "hit"] if shared else ["miss", "miss", "hit"])
    assert MODEL in models


async def test_an_upstream_key_lent_to_every_caller_is_refused_off_loopback() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "limpet",
        "serve",
        "--upstream",
        "http://127.0.0.1:1/v1",
        "--upstream-key-env",
        "LIMPET_TEST_UPSTREAM_KEY",
        "--host",
        "0.0.0.0",
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LIMPET_TEST_UPSTREAM_KEY": "sk-upstream"},
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert "--client-keys-file" in err.decode()
    assert "sk-upstream" not in err.decode()


async def test_metrics_count_the_proxys_calls_and_unknown_routes_answer_in_openais_shape(
    gateway: FakeGateway,
) -> None:
    proxy = await Proxy("--upstream", gateway.base_url("a"), "--metrics").start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{proxy.url}/v1/chat/completions"
            for _ in range(3):
                async with session.post(url, json=ask("counted")) as response:
                    assert response.status == 200
            async with session.get(f"{proxy.url}/metrics") as response:
                metrics = await response.text()
            async with session.get(f"{proxy.url}/v1/nothing-here") as response:
                missing = (response.status, await response.json())
    finally:
        assert await proxy.stop() == 0
    hits = [line for line in metrics.splitlines() if line.startswith("limpet_calls_total{")]
    assert any('cache="hit"' in line and line.endswith(" 2.0") for line in hits), hits
    assert any('cache="miss"' in line and line.endswith(" 1.0") for line in hits), hits
    assert missing[0] == 404
    assert set(missing[1]["error"]) == {"message", "type", "param", "code"}


async def _stored(url: str, prefix: str, key: str) -> bool:
    async with RedisCache(url=url, prefix=prefix) as cache:
        return await cache.get(key) is not None


@pytest.mark.redis
async def test_workers_share_one_port_and_the_redis_tier(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    tier = ("--redis", redis_url, "--prefix", redis_prefix)
    proxy = await Proxy("--upstream", gateway.base_url("a"), *tier, "--workers", "2").start()
    statuses = []
    try:
        assert proxy.process is not None and proxy.process.stderr is not None
        announced: list[str] = []
        while not announced or "2 workers listening" not in announced[-1]:
            line = await asyncio.wait_for(proxy.process.stderr.readline(), _READY_DEADLINE)
            assert line, f"limpet serve ended: {announced}"
            announced.append(line.decode())
        for n in range(12):  # a connection each: the kernel spreads them over the workers
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.post(f"{proxy.url}/v1/chat/completions", json=ask("workers")) as response,
            ):
                assert_chat_completion(await response.json())
                statuses.append(response.headers["X-Limpet-Cache"])
                key = response.headers["X-Limpet-Key"]
            if n == 0:  # written behind the answer: the other worker reads it once it lands
                stored = partial(_stored, redis_url, redis_prefix, key)
                await eventually(stored, what="the first answer in Redis")
    finally:
        assert await proxy.stop() == 0
    assert statuses == ["miss"] + ["hit"] * 11
    assert gateway.endpoint("a").calls == 1
    workers = {line.split()[2] for line in announced[:-1] if "listening on" in line}
    assert len(workers) == 2


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((), "--upstream URL (or --fake) is required"),
        (("--fake", "--upstream", "http://127.0.0.1:1/v1"), "not both"),
        (("--upstream", "gateway.example/v1"), "ServeConfig.upstreams: expected an http"),
        (("--upstream", "http://me:S3cret-pw@gw.example/v1"), "credentials in the URL"),
        (("--fake", "--client-keys-file", "keys"), "needs --upstream-key-env"),
        (("--fake", "--share-across-client-keys"), "needs --client-keys-file"),
        (
            ("--upstream", "http://gw.example/v1?key=S3cret-k", "--host", "0.0.0.0"),
            "a key in an --upstream URL on 0.0.0.0 would lend the key to anyone",
        ),
    ],
)
async def test_limpet_serve_used_wrongly_says_why_and_exits_2(
    args: tuple[str, ...], complaint: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "limpet", "serve", *args, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    assert process.returncode == 2
    assert err.decode().startswith("limpet serve: ")
    assert complaint in err.decode()
    assert "S3cret" not in err.decode()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--port", "70000"), "argument --port: expected a port, 1 to 65535, got 70000"),
        (("--port", "0"), "argument --port: expected a port, 1 to 65535, got 0"),
        (("--host", "999.1.1.1"), "limpet serve: --host 999.1.1.1: not an address, nor a name"),
        (("--shutdown-grace", "nan"), "argument --shutdown-grace: expected a finite number >= 0"),
        (("--shutdown-grace", "-5"), "argument --shutdown-grace: expected a finite number >= 0"),
        (("--body-timeout", "0"), "argument --body-timeout: expected a finite number > 0"),
        (("--body-timeout", "inf"), "argument --body-timeout: expected a finite number > 0"),
        (
            ("--upstream-key-env", "LIMPET_TEST_UPSTREAM_KEY", "--client-keys-file", "KEYS"),
            "limpet serve: --client-keys-file KEYS: line 2 is not UTF-8 text",
        ),
    ],
)
async def test_limpet_serve_given_a_bad_value_names_the_option_and_exits_2(
    args: tuple[str, ...], complaint: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_bytes(b"# the proxy's callers\n\xff\xfesk-client\n")
    args = tuple(str(keys) if arg == "KEYS" else arg for arg in args)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "limpet", "serve", "--fake", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LIMPET_TEST_UPSTREAM_KEY": "sk-upstream"},
    )  # fmt: skip
    out, err = await process.communicate()
    assert (process.returncode, out) == (2, b"")
    assert complaint.replace("KEYS", str(keys)) in err.decode()
    assert "Traceback" not in err.decode() and "Error:" not in err.decode()


async def test_limpet_serve_answers_a_body_slower_than_its_body_timeout_408() -> None:
    proxy = await Proxy("--fake", "--body-timeout", "0.2").start()
    try:
        status, headers, body = await answer_to_a_slow_body(proxy.url, trickle=False)
    finally:
        assert await proxy.stop() == 0
    assert (status, headers["Connection"], body["error"]["code"]) == (
        408,
        "close",
        "request_timeout",
    )
    assert "within 0.2 seconds" in body["error"]["message"]


async def test_an_upstream_refusing_models_comes_back_without_its_body(
    gateway: FakeGateway,
) -> None:
    proxy = await Proxy("--upstream", f"{gateway.url}/no-such-endpoint/v1").start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{proxy.url}/v1/models") as response,
        ):
            refused = (response.status, await response.json())
    finally:
        assert await proxy.stop() == 0
    assert refused[0] == 404
    assert refused[1]["error"]["message"] == "the upstream's /models answered with status 404"


async def test_an_unreachable_upstream_for_models_is_a_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    proxy = await Proxy("--upstream", dead).start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{proxy.url}/v1/models") as response,
        ):
            refused = (response.status, await response.json())
    finally:
        assert await proxy.stop() == 0
    assert refused[0] == 502
    assert refused[1]["error"]["message"] == "the upstream's /models could not be reached"


async def test_embeddings_through_the_proxy_are_cached_per_input(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    from limpet.testing.embeddings import fake_vector

    model = "openai/text-embedding-3-small"
    async with proxy.openai("sk-test-a") as sdk:  # the SDK asks for base64 and decodes it
        first = await sdk.embeddings.with_raw_response.create(
            model=model, input=["limpet", "rock", "limpet"]
        )
        second = await sdk.embeddings.with_raw_response.create(model=model, input=["rock"])
    parsed = first.parse()
    assert [item.index for item in parsed.data] == [0, 1, 2]
    assert parsed.data[0].embedding == parsed.data[2].embedding
    assert first.headers["X-Limpet-Cache"] == "miss"
    assert first.headers["X-Limpet-Inputs"] == "hits=0 misses=2 coalesced=1"
    assert second.headers["X-Limpet-Cache"] == "hit"
    assert second.parse().data[0].embedding == parsed.data[1].embedding
    assert gateway.embeddings.inputs == 2  # each distinct input sent once
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/v1/embeddings",
            json={"model": model, "input": "rock", "encoding_format": "float"},
            headers={"Authorization": "Bearer sk-test-a"},
        ) as response,
    ):
        body = await response.json()
    assert response.headers["X-Limpet-Cache"] == "hit"
    assert body["object"] == "list" and body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    expected = fake_vector(model, "rock")
    assert body["data"][0]["embedding"] == pytest.approx(expected, rel=1e-6)
    assert gateway.embeddings.inputs == 2


async def test_token_arrays_reach_the_proxy_and_come_back_as_openai_gives_them(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    """LangChain's ``OpenAIEmbeddings`` sends token arrays by default: the proxy takes
    them as OpenAI does, and caches each array."""
    from limpet.testing.embeddings import fake_vector

    model = "openai/text-embedding-3-small"
    async with proxy.openai("sk-test-a") as sdk:
        many = await sdk.embeddings.create(model=model, input=[[9906, 1917], [15339]])
        one = await sdk.embeddings.with_raw_response.create(model=model, input=[15339])
    assert [item.embedding for item in many.data] == [
        fake_vector(model, [9906, 1917]),
        fake_vector(model, [15339]),
    ]
    assert one.headers["X-Limpet-Cache"] == "hit"
    assert one.parse().data[0].embedding == many.data[1].embedding
    assert gateway.embeddings.inputs == 2


async def test_an_embeddings_request_without_input_is_a_400_in_openais_shape(
    proxy: Proxy, gateway: FakeGateway
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{proxy.url}/v1/embeddings",
            json={"model": "openai/text-embedding-3-small", "input": []},
            headers={"Authorization": "Bearer sk-test-a"},
        ) as response,
    ):
        body = await response.json()
    assert response.status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert gateway.embeddings.inputs == 0
