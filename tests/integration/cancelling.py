"""One call cancelled while the gateway holds its answer, then one answered: the scene the
tests of cancelled calls share (``test_cancelled_calls.py``, ``test_fleet_bounds.py``)."""

from __future__ import annotations

import asyncio

import pytest

from limpet import Client
from limpet.testing.endpoint import FakeEndpoint
from tests.integration.chat import ask
from tests.redis_servers import eventually


async def one_cancelled_one_answered(client: Client, upstream: FakeEndpoint) -> None:
    """A call cancelled while ``upstream`` holds its answer, then a call answered."""
    upstream.hold_answers()
    call = asyncio.ensure_future(client.complete(**ask("left early")))
    await upstream.wait_for_calls(1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    upstream.release_answers()
    await client.complete(**ask("answered"))


async def flight_waiters(client: Client, count: int) -> None:
    """Returns once ``count`` callers wait on the one ``complete()`` flight running."""
    flight = client._chat._flight
    assert flight is not None

    async def waiting() -> bool:
        return any(len(one.waiters) == count for one in flight._flights.values())

    await eventually(waiting, what=f"{count} callers waiting on the flight")
