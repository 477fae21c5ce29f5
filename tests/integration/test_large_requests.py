"""Large requests are keyed piece by piece, off the hit path, with the same key: the event
loop keeps running while a 2 MB request is hashed, and the answer is cached as usual."""

from __future__ import annotations

import asyncio

from limpet import CacheStatus, Client, Endpoint
from limpet.pipeline.keys import LARGE_MESSAGE_COUNT, canonical_request, looks_large, request_key
from limpet.testing import FakeGateway
from tests.integration.chat import ask

BIG = "tide pools and the limpets in them " * 60_000  # about 2 MB of text


def many_messages(count: int) -> dict[str, object]:
    request = ask("last")
    request["messages"] = [{"role": "user", "content": f"line {n}"} for n in range(count)]
    return request


async def test_a_large_request_is_keyed_as_a_small_one_would_be(gateway: FakeGateway) -> None:
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        first = await client.complete(**ask(BIG))
        again = await client.complete(**ask(BIG))
        expected = request_key(
            canonical_request(ask(BIG)),
            scope=client._keying.generations.scope_now(ask()["model"]) or "",
            credential=client._keying.scope(None),
        )
    assert (first.cache, again.cache) == (CacheStatus.MISS, CacheStatus.HIT)
    assert first.key == again.key == expected
    assert gateway.endpoint("a").calls == 1


async def test_other_tasks_run_while_a_large_hit_is_keyed(gateway: FakeGateway) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        await client.complete(**ask(BIG))
        running = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        hit = await client.complete(**ask(BIG))
        during = ticks - before
        stop.set()
        await running
    assert hit.cache is CacheStatus.HIT
    assert during >= 10  # the key was hashed in pieces, yielding between them


def test_what_looks_large() -> None:
    assert looks_large(ask(BIG))
    assert not looks_large(ask("small"))
    assert looks_large(many_messages(LARGE_MESSAGE_COUNT + 1))
    assert not looks_large(many_messages(3))
    parts = ask("x")
    parts["messages"] = [{"role": "user", "content": [{"type": "text", "text": BIG}]}]
    assert looks_large(parts)  # content parts take the fuller estimate
