"""An answer in hand is never held up, nor failed, by the first fetch of the price
listing (``GET /models``): queued behind other calls, held by a rate-limit pause, or
never answered, it holds up pricing no longer than the call's time and the table's
``load_wait`` allow, and not at all when the gateway reported the cost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from limpet import Client, Endpoint
from tests.integration.chat import ask
from tests.loopback import served

MODEL = "test/listed"
LISTING = {"data": [{"id": MODEL, "pricing": {"prompt": "0.000001", "completion": "0.000002"}}]}
#: Generous: a bound against a hang, never a time the test expects.
HANG = 30.0

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def answer(text: str, cost: float | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    if cost is not None:
        usage["cost"] = cost
    return {
        "id": f"gen-{text}",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": usage,
    }


class Upstream:
    """A scripted gateway: ``/models`` is held until ``listing`` is set; each chat
    request is answered by ``reply(text)`` (its body and headers), after ``held`` is set
    for every text but ``prompt``'s."""

    def __init__(
        self, reply: Callable[[str], tuple[dict[str, Any], dict[str, str]]], prompt: str
    ) -> None:
        self.reply = reply
        self.prompt = prompt
        self.listing = asyncio.Event()
        self.held = asyncio.Event()
        self.models_seen = asyncio.Event()
        self.models_asked = 0
        self.chats: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.method == "GET":
            self.models_asked += 1
            self.models_seen.set()
            await self.listing.wait()
            return web.json_response(LISTING)
        text = (await request.json())["messages"][0]["content"]
        self.chats.append(text)
        if text != self.prompt:
            await self.held.wait()
        body, headers = self.reply(text)
        return web.json_response(body, headers=headers)

    def release(self) -> None:
        self.listing.set()
        self.held.set()


async def serve(upstream: Upstream) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream.handle)
    async with served(app) as url:
        try:
            yield url + "/v1"
        finally:
            upstream.release()  # the handlers end before the server does


def plain(text: str) -> tuple[dict[str, Any], dict[str, str]]:
    return answer(text), {}


async def test_the_first_answer_returns_while_the_queue_still_waits() -> None:
    # Regression: the first answer's price waited for GET /models, queued FIFO behind
    # every caller in admission, so it returned only once the queue had drained.
    upstream = Upstream(plain, prompt="first")
    async for url in serve(upstream):
        endpoint = Endpoint("a", url, max_in_flight=1)
        async with Client(endpoints=[endpoint], cache=None) as client:
            first = asyncio.create_task(client.complete(**ask("first", model=MODEL)))
            await asyncio.sleep(0)  # the first is admitted before the others queue
            others = [
                asyncio.create_task(client.complete(**ask(f"other {i}", model=MODEL)))
                for i in range(5)
            ]
            async with asyncio.timeout(HANG):
                done = await first
            assert done.content == "first"
            assert not any(task.done() for task in others)
            # One on the wire, held; four behind it, and the listing's fetch.
            assert client.stats.endpoints["a"].queued == 5
            assert upstream.models_asked == 0  # the listing waits its turn, not the answer
            upstream.release()
            async with asyncio.timeout(HANG):
                await asyncio.gather(*others)
            assert client.stats.errors == 0
        assert upstream.models_asked == 1


async def test_a_first_answer_exhausting_the_rate_limit_completes_and_is_stored() -> None:
    # Regression: its own x-ratelimit headers paused the endpoint for 20 s, the listing
    # fetch waited out the pause, and the answer, paid for, failed at its deadline.
    def exhausted(text: str) -> tuple[dict[str, Any], dict[str, str]]:
        headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
        return answer(text), headers

    upstream = Upstream(exhausted, prompt="first")
    async for url in serve(upstream):
        async with Client(endpoints=[Endpoint("a", url)]) as client:
            async with asyncio.timeout(HANG):
                done = await client.complete(**ask("first", model=MODEL), timeout=5.0)
                again = await client.complete(**ask("first", model=MODEL), timeout=5.0)
            assert done.content == "first"
            assert again.content == "first"
            assert (client.stats.hits, client.stats.upstream_calls) == (1, 1)
            assert client.stats.errors == 0
            assert upstream.models_asked == 0  # held by the pause, as every request is


async def test_a_listing_that_never_comes_holds_no_call_past_its_timeout() -> None:
    # Regression: every answer waited for GET /models, which never answered: each call
    # failed at its deadline, answer in hand.
    upstream = Upstream(plain, prompt="")
    upstream.held.set()
    async for url in serve(upstream):
        async with Client(endpoints=[Endpoint("a", url)], cache=None) as client:
            async with asyncio.timeout(HANG):
                done = await asyncio.gather(
                    *(
                        client.complete(**ask(f"question {i}", model=MODEL), timeout=3.0)
                        for i in range(3)
                    )
                )
            assert [d.content for d in done] == [f"question {i}" for i in range(3)]
            assert client.stats.errors == 0
            assert upstream.models_asked == 1
            assert not client.prices.loaded  # still fetching: closing the Client stops it


async def test_a_reported_cost_is_told_without_waiting_for_the_listing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def paid(text: str) -> tuple[dict[str, Any], dict[str, str]]:
        return answer(text, cost=0.25), {}

    upstream = Upstream(paid, prompt="")
    upstream.held.set()
    caplog.set_level(logging.INFO, logger="limpet.pricing")
    async for url in serve(upstream):
        async with Client(endpoints=[Endpoint("a", url)], cache=None) as client:
            async with asyncio.timeout(HANG):
                done = await client.complete(**ask("question", model=MODEL))
            assert done.cost is not None
            assert done.cost.usd == 0.25
            assert client.stats.cost_usd == 0.25
            # Fetched for the calls to come, but waited for by none.
            assert not client.prices.loaded
            async with asyncio.timeout(HANG):
                await upstream.models_seen.wait()
            assert "did not come" not in caplog.text
