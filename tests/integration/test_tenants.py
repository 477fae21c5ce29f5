"""Tenants (``complete(tenant=...)``, ``stream()``, ``embed()``, ``forget()``): calls of
different tenants never share a cache entry or an upstream request, through one key, in
one process or across processes sharing Redis; calls of one tenant share as any do.
The FakeGateway over loopback, real Redis; counts of upstream calls, never times."""

from __future__ import annotations

import asyncio

import pytest

from limpet import CacheStatus, Client, Endpoint, RedisCache
from limpet.errors import InvalidRequestError
from limpet.pipeline.credentials import tenant_scope
from limpet.testing import FakeGateway
from tests.integration.chat import ask


def client_of(gateway: FakeGateway, **options: object) -> Client:
    return Client(endpoints=[Endpoint("a", gateway.base_url("a"), api_key="sk-app")], **options)  # type: ignore[arg-type]


async def test_tenants_never_share_an_entry_and_one_tenant_shares_its_own(
    gateway: FakeGateway,
) -> None:
    async with client_of(gateway) as client:
        a = await client.complete(**ask("same question"), tenant="alice")
        b = await client.complete(**ask("same question"), tenant="bob")
        none = await client.complete(**ask("same question"))
        again = await client.complete(**ask("same question"), tenant="alice")
    assert (a.cache, b.cache, none.cache) == (CacheStatus.MISS,) * 3
    assert again.cache is CacheStatus.HIT and again.key == a.key
    assert len({a.key, b.key, none.key}) == 3
    assert gateway.total_calls == 3


@pytest.mark.parametrize("cache_scope", ["credential", "namespace"])
async def test_a_tenant_is_apart_under_either_cache_scope(
    gateway: FakeGateway, cache_scope: str
) -> None:
    async with client_of(gateway, cache_scope=cache_scope) as client:
        a = await client.complete(**ask("q"), tenant="alice")
        b = await client.complete(**ask("q"), tenant="bob")
        none = await client.complete(**ask("q"))
        # A caller's own key beside the tenant: apart where credentials scope entries,
        # shared where the Client shares across them.
        own = await client.complete(
            **ask("q"), tenant="alice", extra_headers={"Authorization": "Bearer sk-own"}
        )
    assert len({a.key, b.key, none.key}) == 3
    assert (own.key == a.key) is (cache_scope == "namespace")


async def test_identical_calls_of_two_tenants_in_one_tick_make_two_upstream_calls(
    gateway: FakeGateway,
) -> None:
    gateway.endpoint("a").latency = 0.05  # the calls overlap: a flight to share, or not
    async with client_of(gateway) as client:
        answers = await asyncio.gather(
            *(client.complete(**ask("storm"), tenant=("alice", "bob")[i % 2]) for i in range(200))
        )
    statuses = [answer.cache for answer in answers]
    assert statuses.count(CacheStatus.MISS) == 2  # one leader per tenant
    assert statuses.count(CacheStatus.COALESCED) == 198
    assert gateway.total_calls == 2
    by_tenant = {answers[0].key, answers[1].key}
    assert len(by_tenant) == 2


async def test_streams_and_embeddings_are_kept_apart_too(gateway: FakeGateway) -> None:
    async with client_of(gateway) as client:
        streams = []
        for name in ("alice", "bob", "alice"):
            async with client.stream(**ask("streamed"), tenant=name) as stream:
                async for _ in stream:
                    pass
            assert stream.completion is not None
            streams.append(stream.completion)
        vectors_a = await client.embed(model="e", input=["x", "y"], tenant="alice")
        vectors_b = await client.embed(model="e", input=["x", "y"], tenant="bob")
        vectors_a2 = await client.embed(model="e", input=["x", "y"], tenant="alice")
    assert [s.cache for s in streams] == [CacheStatus.MISS, CacheStatus.MISS, CacheStatus.HIT]
    assert (vectors_a.misses, vectors_b.misses, vectors_a2.hits) == (2, 2, 2)


async def test_forget_of_one_tenant_leaves_the_others(gateway: FakeGateway) -> None:
    async with client_of(gateway) as client:
        await client.complete(**ask("q"), tenant="alice")
        await client.complete(**ask("q"), tenant="bob")
        key = await client.forget(**ask("q"), tenant="alice")
        alice = await client.complete(**ask("q"), tenant="alice")
        bob = await client.complete(**ask("q"), tenant="bob")
    assert alice.cache is CacheStatus.MISS and alice.key == key
    assert bob.cache is CacheStatus.HIT


@pytest.mark.redis
async def test_tenants_stay_apart_across_processes_sharing_redis(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    def process() -> Client:
        return client_of(gateway, cache=RedisCache.from_url(redis_url, prefix=redis_prefix))

    async with process() as first, process() as second:
        await first.complete(**ask("shared"), tenant="alice")
        await first.cache.flush()  # type: ignore[union-attr]
        alice = await second.complete(**ask("shared"), tenant="alice")
        bob = await second.complete(**ask("shared"), tenant="bob")
    assert alice.cache is CacheStatus.HIT
    assert bob.cache is CacheStatus.MISS
    assert gateway.total_calls == 2


@pytest.mark.parametrize("tenant", ["", 3, b"alice", "\ud800", ["a"]])
async def test_a_bad_tenant_is_refused_before_any_network_call(
    gateway: FakeGateway, tenant: object
) -> None:
    async with client_of(gateway) as client:
        with pytest.raises(InvalidRequestError, match="tenant"):
            await client.complete(**ask("q"), tenant=tenant)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="tenant"):
            client.stream(**ask("q"), tenant=tenant)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="tenant"):
            await client.embed(model="e", input="x", tenant=tenant)  # type: ignore[arg-type]
    assert gateway.total_calls == 0


def test_a_tenant_scope_is_apart_from_every_other_scope() -> None:
    assert tenant_scope("s", "a") != tenant_scope("s", "b")
    assert tenant_scope("s", "a") != tenant_scope("t", "a")
    assert "alice-secret" not in tenant_scope("s", "alice-secret")  # a digest, never the name
