"""``MemcachedConnector`` at its edges: a call that fails as it is made, an awaitable that
is no coroutine, a command that raises what is no ``Exception``, a client that finished
connecting after ``aclose()``. Each place on the client's connections is given back
exactly once, and no caller waits for a reply that cannot come. Real memcached servers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import emcache
import pytest

from limpet.cache.memcached.backend import MemcachedCache, parse_memcached_url
from limpet.cache.memcached.connection import MemcachedConnector
from limpet.errors import CacheUnavailableError

pytestmark = pytest.mark.memcached


def missing_key(client: emcache.Client) -> Awaitable[None]:
    raise KeyError("the key could not be made")


@pytest.mark.parametrize("first", [True, False], ids=["connecting", "connected"])
async def test_a_call_that_fails_as_it_is_made_fails_its_caller_and_frees_its_place(
    memcached_url: str, memcached_prefix: str, first: bool, caplog: pytest.LogCaptureFixture
) -> None:
    mc = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, max_connections=1)
    try:
        if not first:
            assert await mc.get("warm") is None  # the client is built: no connect first
        with pytest.raises(CacheUnavailableError, match="the key could not be made"):
            await mc.run("get", 5.0, missing_key)  # at once, not at the end of its budget
        assert mc._connector.slots.held == 0
        assert await mc.get("k") is None  # the one place is free
    finally:
        await mc.aclose()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_awaitable_that_is_no_coroutine_runs_and_ends(
    memcached_url: str, memcached_prefix: str
) -> None:
    host, port = parse_memcached_url(memcached_url)[0]
    lent = await emcache.create_client([emcache.MemcachedHostAddress(host, port)], timeout=None)
    try:
        for client, owned in ((lent, False), (None, True)):
            mc = (
                MemcachedCache(client=client, prefix=memcached_prefix)
                if client is not None
                else MemcachedCache.from_url(memcached_url, prefix=memcached_prefix)
            )
            assert mc._connector.owns is owned
            await mc.get("warm")
            got = await mc.run("get", 1.0, lambda c: asyncio.ensure_future(c.get(b"absent")))
            assert got is None
            assert mc._connector.running == []
            async with asyncio.timeout(10):  # a hang is a failure, not a wait
                await mc.aclose()
    finally:
        await lent.close()


async def exits_on_its_first_step(client: emcache.Client) -> None:
    raise SystemExit(3)


def exits_as_made(client: emcache.Client) -> Awaitable[None]:
    raise SystemExit(3)


@pytest.mark.parametrize("call", [exits_on_its_first_step, exits_as_made])
async def test_a_command_raising_what_is_no_exception_gives_its_place_back_once(
    memcached_url: str,
    memcached_prefix: str,
    call: Callable[[emcache.Client], Awaitable[None]],
) -> None:
    mc = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, max_connections=1)
    try:
        await mc.get("warm")
        with pytest.raises(SystemExit):
            await mc.run("get", 1.0, call)
        # 1: the place lost; -1: given back twice, two places for one.
        assert mc._connector.slots.held == 0
        assert await mc.get("k") is None
    finally:
        await mc.aclose()


async def test_a_client_that_finishes_connecting_after_aclose_is_closed(
    memcached_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    building = asyncio.Event()
    release = asyncio.Event()
    built: list[emcache.Client] = []
    build = MemcachedConnector._build

    async def slow_build(self: MemcachedConnector) -> emcache.Client:
        building.set()
        await release.wait()
        client = await build(self)
        built.append(client)
        return client

    monkeypatch.setattr(MemcachedConnector, "_build", slow_build)
    mc = MemcachedCache.from_url(memcached_url)
    reading = asyncio.create_task(mc.get("k"))
    await building.wait()
    await mc.aclose()
    release.set()
    with pytest.raises(CacheUnavailableError):
        await reading
    [client] = built
    assert client.closed
