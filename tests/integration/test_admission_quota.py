"""The requests an endpoint's ``x-ratelimit-remaining-requests`` allows, kept by admission:
once its window resets, the line goes on even while long requests are still in flight.
Counts requests at the upstream, which holds the long ones until the test ends; the
only clocks are the window's reset and the calls' timeouts, which a passing test meets
neither of."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from limpet import AdmissionConfig, Client, Endpoint
from limpet.http.admission import Admission
from tests.integration.chat import ask
from tests.loopback import served

#: One request left, in a window that resets a moment later.
LAST_ONE = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "0.05s"}
#: Bounds a wait that passes at the window's reset: a failing test ends, never hangs.
BOUND = 10.0

ANSWER = {
    "id": "gen-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "cost": 0.001},
}


async def until(condition: Any) -> None:
    """Yield to the loop until ``condition()`` holds (a state, not a time)."""
    while not condition():  # noqa: ASYNC110 (the state has no event to wait on)
        await asyncio.sleep(0)


async def test_a_reset_window_lets_the_line_go_beside_long_requests() -> None:
    # Two long generations in flight when an answer says one request is left: the quota
    # is 1 - 2 = -1 until the window resets. Then the next call goes, though neither
    # long one has been answered: they were counted in the window that reset.
    released = asyncio.Event()
    arrived: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response({"data": []})
        text = (await request.json())["messages"][-1]["content"]
        arrived.append(text)
        if text.startswith("long"):
            await released.wait()
        return web.json_response(ANSWER, headers=LAST_ONE if text == "quota" else None)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with served(app) as url, Client(endpoints=[Endpoint("a", url)], cache=None) as client:
        await client.complete(**ask("warm"))  # the price listing is fetched: out of the way
        long = [asyncio.create_task(client.complete(**ask(f"long {i}"))) for i in range(2)]
        try:
            await until(lambda: len(arrived) == 3)
            await client.complete(**ask("quota"))
            answer = await client.complete(**ask("next"), timeout=BOUND)
            assert answer.content == "ok"
            assert arrived.count("next") == 1
            assert not any(task.done() for task in long)
        finally:
            released.set()  # a failing test ends: the upstream's handlers return
            await asyncio.gather(*long)
        figures = client.stats.endpoints["a"]
        assert (figures.in_flight, figures.queued) == (0, 0)


async def test_a_reset_window_sends_one_request_until_an_answer_says_more() -> None:
    # What the reset promises is one place (a rolling window frees its oldest request's):
    # one request goes beside those in flight, and the others wait for an answer.
    admission = Admission(Endpoint("a", "http://localhost"), AdmissionConfig())
    long = [await admission.acquire() for _ in range(2)]
    quota = await admission.acquire()
    quota.succeeded(LAST_ONE)
    async with asyncio.timeout(BOUND):
        probe = await admission.acquire()
    follower = asyncio.create_task(admission.acquire())
    await until(lambda: admission.stats().queued == 1)
    assert admission.in_flight == 3
    probe.succeeded({})  # said nothing of the window: the line goes on as before
    (await follower).release()
    for slot in long:
        slot.release()
    assert (admission.in_flight, admission.stats().queued) == (0, 0)
