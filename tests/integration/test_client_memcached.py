"""Client.complete over a Memcached tier: shared entries, invalidation, cross-process
single-flight, and a memcached that dies mid-run: no cache fault ever fails a call.

Real memcached processes and the real FakeGateway over loopback; counts, never times.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from limpet import (
    CacheStatus,
    Client,
    Endpoint,
    FlightConfig,
    MemcachedCache,
    MemoryCache,
    RetryConfig,
    TieredCache,
)
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.generations import Generations
from limpet.errors import BadRequestError
from limpet.testing import FakeGateway
from limpet.testing.storm import run_storm, start_workers
from tests.fakes import COOLDOWN, FakeClock
from tests.integration.chat import MODEL, ask
from tests.memcached_servers import MemcachedServer
from tests.redis_servers import eventually, free_port

pytestmark = pytest.mark.memcached

PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}
FAST = FlightConfig(lease=1.0, poll=0.05)


async def limpet(*args: str) -> tuple[int, str, str]:
    """Run ``python -m limpet ARGS`` without blocking the gateway's event loop."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "limpet",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def make_client(
    gateway: FakeGateway, mc: MemcachedCache, *, l1: int = 1000, hmac_key: bytes | None = None
) -> Client:
    return Client(
        endpoints=[Endpoint("a", gateway.base_url("a"))],
        cache=TieredCache(MemoryCache(max_entries=l1), mc, hmac_key=hmac_key),
        flight=FAST,
        retry=RetryConfig(max_attempts=1),
    )


async def test_two_clients_share_entries(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    mc_a = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    mc_b = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    async with make_client(gateway, mc_a) as a, make_client(gateway, mc_b) as b:
        first = await a.complete(**ask())
        assert first.cache is CacheStatus.MISS
        await mc_a.flush()
        second = await b.complete(**ask())
        assert second.cache is CacheStatus.HIT
        assert second.content == first.content
        assert b.stats.l2_hits == 1
    assert gateway.endpoint("a").calls == 1


async def test_invalidation_reaches_another_client(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    clock = FakeClock()
    mc_a = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    mc_b = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    async with make_client(gateway, mc_a) as a, make_client(gateway, mc_b) as b:
        b._keying.generations = Generations(
            mc_b, refresh_interval=1.0, clock=clock, credential=b._keying.credential
        )
        old = await a.complete(**ask())
        await mc_a.flush()
        assert (await b.complete(**ask())).cache is CacheStatus.HIT
        await a.invalidate(model=MODEL)
        clock.advance(1.0)

        async def b_misses() -> bool:
            return (await b.complete(**ask())).cache is CacheStatus.MISS

        await eventually(b_misses, what="b seeing the invalidation")
        assert (await a.complete(**ask())).key != old.key
    assert gateway.endpoint("a").calls == 2


async def test_two_clients_in_one_flight_make_one_call(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    gateway.endpoint("a").latency = 0.3
    mc_a = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    mc_b = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    async with make_client(gateway, mc_a) as a, make_client(gateway, mc_b) as b:
        results = await asyncio.gather(
            *(client.complete(**ask()) for client in (a, b) for _ in range(20))
        )
    assert gateway.endpoint("a").calls == 1
    statuses = [r.cache for r in results]
    assert statuses.count(CacheStatus.MISS) == 1
    assert statuses.count(CacheStatus.COALESCED) == 39


async def test_a_final_error_is_never_cached_nor_believed_from_an_unsigned_notice(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    # Memcached notices are not signed, so anyone who can write to the servers could
    # forge one: a follower never raises an error it only read there. It asks upstream
    # itself instead, once, after the leader (the lease serialises them).
    gateway.endpoint("a").latency = 0.3
    gateway.endpoint("a").fail(400, message="schema rejected")  # the first call only
    mc_a = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    mc_b = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    async with make_client(gateway, mc_a) as a, make_client(gateway, mc_b) as b:
        results = await asyncio.gather(
            a.complete(**ask()), b.complete(**ask()), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1 and isinstance(errors[0], BadRequestError), results
        assert gateway.endpoint("a").calls == 2
        assert (await b.complete(**ask())).cache is CacheStatus.HIT  # the answer, not the error
    assert gateway.endpoint("a").calls == 2


async def test_a_signed_final_error_reaches_the_other_client_and_is_not_cached(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    # The failure takes 0.3 s, so the other client is following when it comes.
    gateway.endpoint("a").fail(400, message="schema rejected", after=0.3)
    mc_a = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    mc_b = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    async with (
        make_client(gateway, mc_a, hmac_key=b"fleet") as a,
        make_client(gateway, mc_b, hmac_key=b"fleet") as b,
    ):
        assert mc_a.hmac_key == b"fleet"  # the TieredCache's key signs notices too
        results = await asyncio.gather(
            a.complete(**ask()), b.complete(**ask()), return_exceptions=True
        )
        assert all(isinstance(r, BadRequestError) for r in results), results
        assert gateway.endpoint("a").calls == 1
        assert (await b.complete(**ask())).cache is CacheStatus.MISS  # never cached
    assert gateway.endpoint("a").calls == 2


async def test_four_processes_of_a_hundred_callers_make_one_call(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    gateway.endpoint("a").latency = 0.3
    reports = await run_storm(
        4,
        base_url=gateway.base_url("a"),
        redis_url=memcached_url,
        callers=100,
        prefix=memcached_prefix,
        lease=FAST.lease,
        poll=FAST.poll,
    )
    assert [r.errors for r in reports] == [[], [], [], []]
    assert sum(sum(r.statuses.values()) for r in reports) == 400
    # One leader for all 400; the lease is renewed every third of a second, so it does
    # not expire under a 0.3 s upstream call.
    assert gateway.endpoint("a").calls == 1
    assert sum(r.statuses.get("miss", 0) for r in reports) == 1


async def test_a_sigkilled_leader_process_is_replaced_by_a_follower(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    ep = gateway.endpoint("a")
    ep.delay(60.0)  # the first call hangs until its process dies
    workers = await start_workers(
        3,
        base_url=gateway.base_url("a"),
        redis_url=memcached_url,
        callers=20,
        prefix=memcached_prefix,
        lease=1.0,
        poll=0.05,
    )
    for worker in workers:
        worker.release()
    await ep.wait_for_calls(1)
    assert ep.last_headers is not None
    leader = next(w for w in workers if w.name == ep.last_headers["X-Title"])
    leader.process.send_signal(signal.SIGKILL)
    await leader.process.wait()
    survivors = [w for w in workers if w is not leader]
    reports = await asyncio.gather(*(w.report() for w in survivors))
    assert [r.errors for r in reports] == [[], []]
    assert [sum(r.statuses.values()) for r in reports] == [20, 20]
    assert ep.calls == 2  # the dead leader's, and one follower's takeover


async def test_memcached_down_from_the_start_every_call_succeeds(gateway: FakeGateway) -> None:
    mc = MemcachedCache.from_url(f"memcached://127.0.0.1:{free_port()}")
    async with make_client(gateway, mc) as client:
        results = await asyncio.gather(*(client.complete(**ask(f"q{i % 20}")) for i in range(100)))
        await client.invalidate(model=MODEL)
        assert all(r.content for r in results)
        assert client.stats.errors == 0
        assert client.stats.cache_errors > 0
        assert client.stats.l2_hits == 0


async def test_memcached_killed_among_500_concurrent_calls_fails_none_then_hits_resume(
    gateway: FakeGateway, memcached_server: MemcachedServer
) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=COOLDOWN, clock=clock)
    mc = MemcachedCache.from_url(memcached_server.url, breaker=breaker, **PATIENT)
    async with make_client(gateway, mc, l1=4) as client:
        done = 0
        halfway = asyncio.Event()
        in_flight = asyncio.Semaphore(25)

        async def call(i: int) -> str | None:
            nonlocal done
            async with in_flight:
                completion = await client.complete(**ask(f"q{(i * 7) % 90}"))
            done += 1
            if done == 250:
                halfway.set()
            return completion.content

        async def kill_halfway() -> None:
            await halfway.wait()
            memcached_server.kill()  # while about 25 calls are in flight

        results, _ = await asyncio.gather(
            asyncio.gather(*(call(i) for i in range(500))), kill_halfway()
        )
        assert all(results)
        assert client.stats.errors == 0
        assert client.stats.requests == 500
        hits_before = client.stats.l2_hits
        assert hits_before > 0
        assert client.stats.breaker_state == "open"

        memcached_server.restart()  # same port, empty
        clock.advance(COOLDOWN)
        # The generation counters went with everything else: read back, they are
        # re-created above their old values (an invalidation of what the restart already
        # removed), so nothing old can ever match again.
        scope = client._keying.generations.scope_now(MODEL)
        await client._keying.generations.refresh()
        assert client.stats.breaker_state == "closed"
        assert client._keying.generations.scope_now(MODEL) != scope
        fresh = [f"after-restart {i}" for i in range(12)]
        for text in fresh:
            assert (await client.complete(**ask(text))).cache is CacheStatus.MISS
        await mc.flush()
        for text in fresh[:8]:  # long gone from the 4-entry L1: from Memcached
            assert (await client.complete(**ask(text))).cache is CacheStatus.HIT
        assert client.stats.l2_hits == hits_before + 8


async def test_limpet_warm_flush_and_stats_on_memcached(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str, tmp_path: Path
) -> None:
    file = tmp_path / "requests.jsonl"
    file.write_bytes(b"\n".join(orjson.dumps(ask(f"faq {i}")) for i in range(3)) + b"\n")
    common = ["--memcached", memcached_url, "--prefix", memcached_prefix]
    base = ["--base-url", gateway.base_url("a")]

    code, out, _ = await limpet("warm", str(file), *common, *base, "--json")
    assert code == 0
    assert orjson.loads(out)["warmed"] == 3

    def fresh_client() -> Client:
        mc = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
        return make_client(gateway, mc)

    async with fresh_client() as client:
        assert (await client.complete(**ask("faq 1"))).cache is CacheStatus.HIT

    code, out, _ = await limpet("flush", *common, "--model", MODEL, "--namespace", "")
    assert code == 0, out
    assert f"flushed model '{MODEL}'" in out
    async with fresh_client() as client:
        assert (await client.complete(**ask("faq 1"))).cache is CacheStatus.MISS

    code, out, _ = await limpet("stats", *common, "--json")
    assert code == 0
    [server] = orjson.loads(out).values()
    assert server["items"] >= 3
    assert server["hits"] >= 1
    code, out, _ = await limpet("stats", *common)
    assert code == 0
    assert "evictions" in out


async def test_limpet_flush_fails_loudly_when_memcached_is_down() -> None:
    code, _, err = await limpet("flush", "--memcached", f"memcached://127.0.0.1:{free_port()}")
    assert code == 1
    assert "limpet flush:" in err


async def test_a_storm_of_identical_misses_reads_the_shared_tier_a_few_times_not_once_each(
    gateway: FakeGateway, memcached_url: str, memcached_prefix: str
) -> None:
    """One read of a key past tier 0 at a time per process: in a storm the others go
    straight to the flight. (Each caller reading Memcached first queued 100 GETs ahead of
    the leader's lease, which then timed out and let other processes lead too.)"""
    mc = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    async with make_client(gateway, mc) as client:
        before = sum(server["misses"] for server in (await mc.server_stats()).values())
        answers = await asyncio.gather(*(client.complete(**ask()) for _ in range(100)))
        after = sum(server["misses"] for server in (await mc.server_stats()).values())
    assert gateway.endpoint("a").calls == 1
    assert sorted({a.cache.value for a in answers}) == ["coalesced", "miss"]
    assert after - before <= 10  # the pre-read, the flight's read, the lease's looks
