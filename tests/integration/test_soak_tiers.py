"""The soaks' own view of their shared tiers (``soak_tiers``, ``Shared``) on every param:
the lease listing the soaks rely on to find leases left behind finds every lease (on every
node of a cluster), a kill reaches the Clients' connections and no other, and an entry
the inspector finds on a signed tier is signed with the Clients' key. Without these, a
soak's "nothing is left behind" could pass by looking in the wrong place."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio

from limpet.cache.base import ENTRY_FORMAT
from limpet.cache.sealing import Seal
from limpet.errors import CacheCorruptError
from limpet.flight.store import FlightNotice, FlightOutcome
from tests.integration.soak_adversity import Shared
from tests.integration.soak_tiers import tier_params

KEYS = {f"soak-tier-key-{n}" for n in range(24)}  # their slots span a cluster's nodes


async def own_ids(admins: tuple[redis.asyncio.Redis, ...]) -> list[int]:
    return [int(await admin.client_id()) for admin in admins]


async def test_the_lease_listing_finds_every_lease_and_then_none(shared: Shared) -> None:
    a, b = shared.caches
    async with a, b:
        store = a.flight_store
        assert all([await store.acquire(key, "soak-token", 60.0) for key in KEYS])
        assert await shared.leases(KEYS) == shared.lease_keys(KEYS)
        assert len(shared.lease_keys(KEYS)) == len(KEYS)
        for admin in shared.admins:  # every server (node) holds some: each is listed
            assert [key async for key in admin.scan_iter(match=a.lock_key("*"))]
        abandoned = FlightNotice(FlightOutcome.ABANDONED)
        for key in KEYS:
            await store.release(key, "soak-token", abandoned, None, 0.0)
        assert await shared.leases(KEYS) == set()


@pytest.mark.parametrize(
    "shared", tier_params("redis", "redis-signed", "redis-cluster"), indirect=True
)
async def test_a_kill_reaches_the_clients_connections_and_no_other(shared: Shared) -> None:
    a, b = shared.caches
    async with a, b:
        # Connections of both Clients (on every node of a cluster: the keys span them).
        for cache in (a, b):
            assert await asyncio.gather(*map(cache.get, KEYS)) == [None] * len(KEYS)
        admins = await own_ids(shared.admins)
        assert not await shared.inspector.get("soak-tier-probe")
        await shared.kill()
        # At least one per server each Client reached, and every one of them gone.
        assert shared.admins and shared.killed >= 2 * len(shared.admins)
        for admin in shared.admins:
            names = {found.get("name") for found in await admin.client_list()}
            assert not names & shared.names
        # The admins' own connections live on; the inspector and the Clients still work
        # (theirs reconnect).
        assert await own_ids(shared.admins) == admins
        assert await shared.inspector.get("soak-tier-probe") is None
        assert await a.get("soak-tier-probe") is None


@pytest.mark.parametrize("shared", tier_params("redis-signed"), indirect=True)
async def test_an_entry_the_signed_tier_holds_must_be_signed_with_the_clients_key(
    shared: Shared,
) -> None:
    assert shared.hmac_key is not None
    writer = shared.caches[0]
    async with writer:
        for name, key in (("ours", shared.hmac_key), ("unsigned", None), ("foreign", b"x")):
            await writer.set(name, Seal(b"LP", ENTRY_FORMAT, key, "entry").wrap(b"{}"), 60.0)
        await writer.flush()
        assert await shared.holds("ours")
        assert not await shared.holds("missing")
        with pytest.raises(CacheCorruptError, match="not signed"):
            await shared.holds("unsigned")
        with pytest.raises(CacheCorruptError, match="does not match"):
            await shared.holds("foreign")
