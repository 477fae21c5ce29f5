"""A Client whose only admission slot is taken by a call the gateway holds: its next
upstream request queues behind it, so a caller's deadline passes there with nothing
sent. What the deadline tests stand on (``test_deadlines.py``, ``test_embed.py``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from limpet import Client, Completion, Endpoint, RetryConfig
from limpet.testing import FakeGateway
from limpet.testing.endpoint import FakeEndpoint
from tests.integration.chat import ask

FAST_RETRY = RetryConfig(max_attempts=2, initial_backoff=0.001, max_backoff=0.005)


@dataclass
class HeldSlot:
    """The Client, the gateway's endpoint ``"a"`` and the call holding the slot."""

    client: Client
    upstream: FakeEndpoint
    blocker: asyncio.Future[Completion]

    async def release(self) -> None:
        """Let the gateway answer, and the holding call end."""
        self.upstream.release_answers()
        await self.blocker


@contextlib.asynccontextmanager
async def held_slot(gateway: FakeGateway) -> AsyncIterator[HeldSlot]:
    """A Client with one admission slot to ``gateway``'s endpoint ``"a"``, that slot
    taken by a call the gateway holds (answers are held until ``release()``)."""
    upstream = gateway.endpoint("a")
    endpoint = Endpoint("a", gateway.base_url("a"), max_in_flight=1)
    async with Client(endpoints=[endpoint], retry=FAST_RETRY) as client:
        upstream.hold_answers()
        blocker = asyncio.ensure_future(client.complete(**ask("Hold the only slot.")))
        await upstream.wait_for_calls(1)
        yield HeldSlot(client, upstream, blocker)
