"""Closing an ``emcache`` client always ends: ``close_client`` cancels a close again until
it does. emcache's pool waits for its reconnect task, whose cancellation Python 3.11's
``wait_for`` can lose (when it meets a failed connect in the same turn): that task then
retries a down server for ever, and its close, hence ``aclose()``, would wait for ever.
A stand-in with that pool's shape makes the lost cancellation happen every time."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from limpet.cache.memcached import connection
from limpet.cache.memcached.connection import close_client


class PoolLosingACancellation:
    """A close shaped like emcache's pool's: cancel the reconnect task, wait for it, then
    close the connections. The reconnect loses its first cancellation and retries on."""

    def __init__(self) -> None:
        self.cancellations = 0
        self.closed_connections = False

    async def close(self) -> None:
        reconnect = asyncio.ensure_future(self._reconnect())
        await asyncio.sleep(0)  # it is retrying
        reconnect.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reconnect
        self.closed_connections = True

    async def _reconnect(self) -> None:
        while True:
            try:
                await asyncio.get_running_loop().create_future()  # a connect, a backoff
            except asyncio.CancelledError:
                self.cancellations += 1
                if self.cancellations > 1:
                    raise  # the first one was lost: retry on


async def test_a_close_whose_cancellation_is_lost_is_cancelled_again_until_it_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connection, "CLOSE_NUDGE", 0.01)
    pool = PoolLosingACancellation()
    closing = asyncio.create_task(close_client(pool))
    # A failure, not a hang, were it never to end; a guard that cancelled it would be a
    # second cancellation of its own, and end it as the nudge does.
    done, _ = await asyncio.wait((closing,), timeout=10)
    closing.cancel()
    assert done, "the close never ended"
    assert pool.cancellations == 2 and pool.closed_connections


async def test_a_close_that_ends_by_itself_is_not_cancelled() -> None:
    class Quick:
        closed = False

        async def close(self) -> None:
            await asyncio.sleep(0)
            self.closed = True

    quick = Quick()
    await close_client(quick)
    assert quick.closed
