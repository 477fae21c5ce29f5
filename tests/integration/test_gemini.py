"""Gemini cachedContents against the FakeGateway over loopback: lifecycle and storage cost."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from limpet import Client, Endpoint
from limpet.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    NotFoundError,
)
from limpet.providers.gemini import (
    AiohttpCall,
    CachedContents,
    HTTPReply,
    StorageLedger,
    native_model,
    with_cached_content,
)
from limpet.providers.usage import response_usage
from limpet.testing import FakeGateway
from tests.fakes import FakeClock
from tests.loopback import served

KEY = "sk-or-v1-gemini-test-key"
FLASH = "google/gemini-2.5-flash"
T0 = 1_800_000_000.0
MANUAL = "Chapter one: how limpets hold on to rocks. " * 120  # 5,160 chars: 1,290 tokens
MANUAL_TOKENS = 1290


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def clocked_gateway(clock: FakeClock) -> AsyncIterator[FakeGateway]:
    """The gateway on this test's ``clock``, by which its cachedContents expire."""
    async with FakeGateway(endpoints=("a",), api_key=KEY, clock=clock) as gw:
        yield gw


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def caches(
    clocked_gateway: FakeGateway, session: aiohttp.ClientSession, clock: FakeClock
) -> CachedContents:
    http = AiohttpCall(session, headers={"Authorization": f"Bearer {KEY}"})
    return CachedContents(http, clocked_gateway.url + "/a", clock=clock)


async def test_lifecycle_create_get_list_update_delete(
    caches: CachedContents, clock: FakeClock
) -> None:
    created = await caches.create(
        model=FLASH, system_instruction=MANUAL, ttl=600, display_name="manual"
    )
    assert created.name.startswith("cachedContents/")
    assert created.model == "models/gemini-2.5-flash"
    assert created.total_tokens == MANUAL_TOKENS
    assert created.display_name == "manual"
    assert created.create_time == T0 and created.expire_time == T0 + 600

    got = await caches.get(created.name)
    assert (got.name, got.total_tokens, got.expire_time) == (created.name, MANUAL_TOKENS, T0 + 600)
    assert [c.name for c in await caches.list()] == [created.name]

    clock.now = T0 + 300
    updated = await caches.update(created.name.removeprefix("cachedContents/"), ttl=3600)
    assert updated.expire_time == T0 + 300 + 3600
    assert updated.update_time == T0 + 300

    await caches.delete(created.name)
    with pytest.raises(NotFoundError) as info:
        await caches.get(created.name)
    assert info.value.status_code == 404
    assert await caches.list() == []


async def test_a_cache_expires_by_its_ttl(caches: CachedContents, clock: FakeClock) -> None:
    created = await caches.create(model=FLASH, contents=[_user(MANUAL)], ttl=60)
    clock.now = T0 + 59.5
    await caches.get(created.name)
    clock.now = T0 + 60
    with pytest.raises(NotFoundError):
        await caches.get(created.name)
    assert await caches.list() == []


async def test_list_follows_pages(caches: CachedContents) -> None:
    names = {(await caches.create(model=FLASH, system_instruction=MANUAL)).name for _ in range(5)}
    listed = await caches.list(page_size=2)
    assert {c.name for c in listed} == names and len(listed) == 5


async def test_storage_cost_enters_the_ledger(
    clocked_gateway: FakeGateway, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    ledger = StorageLedger()
    http = AiohttpCall(session, headers={"Authorization": f"Bearer {KEY}"})
    caches = CachedContents(http, clocked_gateway.url + "/a", ledger=ledger, clock=clock)
    created = await caches.create(model=FLASH, system_instruction=MANUAL, ttl=3600)
    assert caches.storage_price(created.model) == 1.0  # $1 per million tokens per hour
    per_hour = MANUAL_TOKENS * 1.0 / 1e6
    clock.now = T0 + 1800
    assert ledger.cost_usd(clock.now) == pytest.approx(per_hour / 2, abs=1e-12)
    await caches.update(created.name, ttl=7200)  # now lives until T0 + 9000
    clock.now = T0 + 5400
    assert ledger.cost_usd(clock.now) == pytest.approx(per_hour * 1.5, abs=1e-12)
    await caches.delete(created.name)
    clock.now = T0 + 100_000
    assert ledger.cost_usd(clock.now) == pytest.approx(per_hour * 1.5, abs=1e-12)
    # An untouched cache stops costing at its expiry.
    clock.now = T0
    second = await caches.create(model=FLASH, system_instruction=MANUAL, ttl=600)
    assert ledger.entries[second.name].end == T0 + 600
    assert ledger.cost_usd(T0 + 100_000) == pytest.approx(per_hour * (1.5 + 1 / 6), abs=1e-12)


def instances(
    gateway: FakeGateway, session: aiohttp.ClientSession, clock: FakeClock
) -> tuple[CachedContents, CachedContents]:
    """Two ``CachedContents`` of one account, each with its ledger (two processes)."""
    http, url = AiohttpCall(session, headers={"Authorization": f"Bearer {KEY}"}), gateway.url + "/a"
    return CachedContents(http, url, clock=clock), CachedContents(http, url, clock=clock)


async def test_caches_another_created_stay_out_of_this_ledger_when_listed_or_read(
    clocked_gateway: FakeGateway, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    # Regression: a second CachedContents (a cleanup job, a dashboard) that only listed
    # counted the owner's cache in its own ledger, and for ever after the owner deleted it.
    owner, reader = instances(clocked_gateway, session, clock)
    created = await owner.create(model=FLASH, system_instruction=MANUAL, ttl=600)
    assert [c.name for c in await reader.list()] == [created.name]
    await reader.get(created.name)
    assert reader.ledger.entries == {}
    clock.now = T0 + 300
    await owner.delete(created.name)
    clock.now = T0 + 100_000
    assert reader.ledger.cost_usd(clock.now) == 0
    assert owner.ledger.cost_usd(clock.now) == pytest.approx(MANUAL_TOKENS / 1e6 / 12)


async def test_an_update_of_anothers_cache_counts_the_storage_it_bought_and_no_more(
    clocked_gateway: FakeGateway, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    # A keep-alive job extends a cache another instance created: the storage it bought
    # (from the old expiry to the new) is its to count; the owner's ends at the old one.
    owner, keeper = instances(clocked_gateway, session, clock)
    created = await owner.create(model=FLASH, system_instruction=MANUAL, ttl=600)
    await keeper.update(created.name, ttl=36_000)
    await owner.get(created.name)  # reading the time another bought is no buying it
    assert [c.name for c in await owner.list()] == [created.name]
    per_hour = MANUAL_TOKENS * 1.0 / 1e6
    later = T0 + 100_000
    assert owner.ledger.cost_usd(later) == pytest.approx(per_hour / 6)
    assert keeper.ledger.cost_usd(later) == pytest.approx(per_hour * (10 - 1 / 6))
    # Another keeper's two updates at once: both read the cache as another's, and the
    # later one bought more.
    _, other = instances(clocked_gateway, session, clock)
    await asyncio.gather(
        other.update(created.name, ttl=50_000), other.update(created.name, ttl=90_000)
    )
    upstream = await owner.get(created.name)  # the expiry the last of them set
    assert other.ledger.entries[created.name].end == upstream.expire_time


@pytest.mark.parametrize("op", ["get", "update", "delete"])
async def test_a_cache_gone_upstream_stops_costing_when_a_call_finds_it_gone(
    op: str, clocked_gateway: FakeGateway, session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    http = AiohttpCall(session, headers={"Authorization": f"Bearer {KEY}"})
    mine = CachedContents(http, clocked_gateway.url + "/a", clock=clock)
    other = CachedContents(http, clocked_gateway.url + "/a", clock=clock)  # another process
    created = await mine.create(model=FLASH, system_instruction=MANUAL, ttl=36_000)
    per_hour = MANUAL_TOKENS * 1.0 / 1e6
    clock.now = T0 + 3600
    await other.delete(created.name)  # deleted elsewhere after an hour
    clock.now = T0 + 7200
    with pytest.raises(NotFoundError):
        if op == "update":
            await mine.update(created.name, ttl=60)
        else:
            await getattr(mine, op)(created.name)
    assert mine.ledger.entries[created.name].end == T0 + 7200  # when this process learnt it
    assert mine.ledger.cost_usd(T0 + 36_000) == pytest.approx(per_hour * 2, abs=1e-12)


async def test_an_expired_cache_found_gone_costs_until_its_expiry(
    caches: CachedContents, clock: FakeClock
) -> None:
    created = await caches.create(model=FLASH, system_instruction=MANUAL, ttl=600)
    clock.now = T0 + 3600
    with pytest.raises(NotFoundError):
        await caches.get(created.name)
    assert caches.ledger.entries[created.name].end == T0 + 600


async def test_a_reply_without_an_expiry_keeps_the_known_one() -> None:
    body: dict[str, Any] = {
        "name": "cachedContents/z",
        "model": "models/gemini-2.5-flash",
        "createTime": "2027-01-15T08:00:00Z",
        "expireTime": "2027-01-15T09:00:00Z",
        "usageMetadata": {"totalTokenCount": 1_000_000},
    }
    unknown_expiry = {field: value for field, value in body.items() if field != "expireTime"}
    replies = [HTTPReply(200, body), HTTPReply(200, unknown_expiry)]

    async def http(
        method: str,
        url: str,
        *,
        json: Any = None,
        params: Any = None,
    ) -> HTTPReply:
        return replies.pop(0)

    ledger = StorageLedger()
    caches = CachedContents(http, "https://gemini.example", ledger=ledger)
    await caches.create(model=FLASH)
    end = ledger.entries["cachedContents/z"].end
    assert end - ledger.entries["cachedContents/z"].start == 3600
    await caches.get("z")
    assert ledger.entries["cachedContents/z"].end == end


async def test_a_request_that_references_the_cache_reads_it(
    caches: CachedContents, clocked_gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    created = await caches.create(model=FLASH, system_instruction=MANUAL)
    body = with_cached_content(
        {"contents": [_user("Why do limpets hold on?")]}, created.name, native=True
    )
    url = clocked_gateway.url + "/a/google/v1beta/models/gemini-2.5-flash:generateContent"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(url, json=body, headers=headers) as response:
        assert response.status == 200
        reply = await response.json()
    usage = response_usage(reply)
    # promptTokenCount includes the cached tokens: read once, not twice.
    assert usage.cached_tokens == MANUAL_TOKENS
    assert usage.prompt_tokens == reply["usageMetadata"]["promptTokenCount"]
    assert 0 < usage.uncached_tokens < 20
    async with session.post(
        url, json=with_cached_content(body, "cachedContents/gone", native=True), headers=headers
    ) as response:
        assert response.status == 404


async def test_too_small_a_cache_is_refused(caches: CachedContents) -> None:
    with pytest.raises(BadRequestError, match="too small"):
        await caches.create(model=FLASH, system_instruction="short")


async def test_a_wrong_key_is_refused(
    clocked_gateway: FakeGateway, session: aiohttp.ClientSession
) -> None:
    http = AiohttpCall(session, headers={"Authorization": "Bearer wrong"})
    with pytest.raises(AuthenticationError):
        await CachedContents(http, clocked_gateway.url + "/a").list()


async def test_no_answer_is_a_connection_error(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    caches = CachedContents(AiohttpCall(session), f"http://127.0.0.1:{port}")
    with pytest.raises(APIConnectionError):
        await caches.list()


async def test_names_are_checked_before_any_request(caches: CachedContents) -> None:
    for bad in ("", "cachedContents/", "../models", "cachedContents/a/b"):
        with pytest.raises(InvalidRequestError):
            await caches.get(bad)
    with pytest.raises(InvalidRequestError):
        await caches.create(model=FLASH, system_instruction=MANUAL, ttl=0)


async def test_a_client_sends_the_reference_where_geminis_openai_api_reads_it(
    clocked_gateway: FakeGateway,
) -> None:
    # Splatted into complete(), the body's ``extra_body`` field is taken for the call's
    # option and sent one level up: the recipe gives the reference as that option.
    endpoint = Endpoint("a", clocked_gateway.base_url("a"), api_key=KEY)
    messages = [{"role": "user", "content": "hi"}]
    async with Client(endpoints=[endpoint]) as client:
        await client.complete(
            model=FLASH, messages=messages, extra_body=with_cached_content({}, "abc")
        )
    sent = clocked_gateway.endpoint("a").requests[-1]
    assert sent["extra_body"] == {"google": {"cached_content": "cachedContents/abc"}}


def test_references_and_model_names() -> None:
    body: dict[str, Any] = {
        "model": "gemini-2.5-flash",
        "extra_body": {"google": {"thinking_config": {}}},
    }
    ref = with_cached_content(body, "abc")
    assert ref["extra_body"] == {
        "google": {"thinking_config": {}, "cached_content": "cachedContents/abc"}
    }
    assert "cached_content" not in body["extra_body"]["google"]
    assert with_cached_content({}, "cachedContents/abc", native=True) == {
        "cachedContent": "cachedContents/abc"
    }
    assert native_model(FLASH) == native_model("gemini-2.5-flash") == "models/gemini-2.5-flash"
    assert native_model("models/gemini-2.5-pro") == "models/gemini-2.5-pro"


def _user(text: str) -> dict[str, object]:
    return {"role": "user", "parts": [{"text": text}]}


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A server that echoes the request's credentials back, in the shape its path names."""

    async def echo(request: web.Request) -> web.Response:
        sent = request.headers.get("Authorization") or request.headers.get("x-goog-api-key") or ""
        key = sent.partition(" ")[2] or sent
        message = f"API key {key} not valid (sent {sent!r})"
        shape = request.match_info["shape"]
        if shape == "text":
            return web.Response(status=500, text=message)
        if shape == "header":
            return web.json_response(
                {"error": {"code": 404, "message": "gone"}},
                status=404,
                headers={"x-request-id": key},
            )
        if shape == "shape":
            return web.json_response({"unexpected": message})
        return web.json_response({"error": {"code": 403, "message": message}}, status=403)

    app = web.Application()
    app.router.add_route("*", "/{shape}/{id}", echo)
    async with served(app) as url:
        yield url


@pytest.mark.parametrize("shape", ["json", "text", "header", "shape"])
@pytest.mark.parametrize(
    "headers",
    [{"Authorization": f"Bearer {KEY}"}, {"x-goog-api-key": KEY}],
    ids=["bearer", "goog"],
)
async def test_a_key_the_server_echoes_appears_in_no_error(
    session: aiohttp.ClientSession, echo_url: str, shape: str, headers: dict[str, str]
) -> None:
    caches = CachedContents(AiohttpCall(session, headers=headers), f"{echo_url}/{shape}", path="")
    with pytest.raises(APIError) as info:
        await caches.get("cachedContents/abc")
    error = info.value
    texts = [str(error), repr(error), *map(str, error.args), *map(str, vars(error).values())]
    assert all(KEY not in text for text in texts)
    shown = (
        error.request_id if isinstance(error, APIStatusError) and shape == "header" else str(error)
    )
    assert "***" in (shown or "")
