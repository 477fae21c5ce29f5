"""Memcached down, dying, silent, full or refusing: a cache fault is never a failed call.

MemcachedCache alone raises ``CacheUnavailableError`` and nothing else; through
``TieredCache`` every fault is a counted miss, and an LRU eviction is a plain miss, not a
fault. Real memcached processes; breakers get a fake clock, so a cool-down passes when
the test says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import emcache
import pytest
from emcache.protocol import MemcacheAsciiProtocol

from limpet.cache.base import CacheEntry, EntryCodec
from limpet.cache.breaker import CircuitBreaker
from limpet.cache.budget import Bounded
from limpet.cache.memcached import commands
from limpet.cache.memcached.backend import MemcachedCache, parse_memcached_url
from limpet.cache.memcached.leases import _PollWatch
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache
from limpet.errors import CacheUnavailableError
from limpet.models import Usage
from tests.fakes import COOLDOWN, FakeClock
from tests.memcached_servers import MemcachedServer, SilentServer
from tests.redis_servers import free_port

pytestmark = pytest.mark.memcached

PATIENT: dict[str, Any] = {"read_timeout": 1.0, "write_timeout": 1.0}


def entry(i: int, *, size: int = 0, ttl: float = 600.0) -> CacheEntry:
    created = time.time()
    return CacheEntry(
        body={"id": f"gen-{i}", "choices": [{"message": {"content": "x" * size or f"a{i}"}}]},
        usage=Usage(prompt_tokens=10, completion_tokens=i),
        cost_usd=0.001,
        endpoint="a",
        created_at=created,
        expires_at=created + ttl,
    )


def state(cache: MemcachedCache) -> str:
    return cache.breaker_state


@pytest.fixture
async def raw(memcached_url: str) -> AsyncIterator[emcache.Client]:
    host, port = parse_memcached_url(memcached_url)[0]
    client = await emcache.create_client([emcache.MemcachedHostAddress(host, port)])
    yield client
    await client.close()


async def unavailable(operation: Callable[[], object]) -> CacheUnavailableError:
    try:
        result = operation()
        if asyncio.iscoroutine(result):
            await result
    except CacheUnavailableError as exc:
        return exc
    raise AssertionError("expected CacheUnavailableError")


# -- down from the start ----------------------------------------------------------------


async def test_a_follower_polling_an_unreachable_memcached_keeps_waiting(
    breaker: CircuitBreaker,
) -> None:
    # A failed poll is no news: the follower's own deadline ends the wait, and then it
    # asks whether the lease is held (which does raise, and sends it upstream).
    async with MemcachedCache.from_url(
        f"memcached://127.0.0.1:{free_port()}", breaker=breaker
    ) as mc:
        watch = _PollWatch(mc.flight_store, "k", b"leader")
        with pytest.raises(TimeoutError):
            # Room for three 100 ms polls to fail, and over before emcache's first
            # reconnect (1 s after its first failure): a close that meets a reconnect
            # loses its cancellation on Python 3.11 and ends only at ``close_client``'s
            # nudge, a second later (tests/cache/test_memcached_close.py).
            async with asyncio.timeout(0.7):
                await watch.next()
        assert state(mc) == "open"  # the polls failed, and none escaped
        await unavailable(lambda: mc.flight_store.holder("k"))


async def test_down_from_the_start_every_operation_is_unavailable(
    breaker: CircuitBreaker,
) -> None:
    async with MemcachedCache.from_url(
        f"memcached://127.0.0.1:{free_port()}", breaker=breaker
    ) as mc:
        await unavailable(lambda: mc.get("k"))
        await mc.set("k", b"v", 60)  # queued; its failure is counted, not raised
        await mc.flush()
        assert mc.failed_writes == 1
        await unavailable(lambda: mc.delete("k"))
        assert state(mc) == "open"
        for op in (
            lambda: mc.get("j"),  # "k" is owed a delete: a miss here, without Memcached
            lambda: mc.set("k", b"v", 60),
            lambda: mc.delete("k"),
            lambda: mc.clear(),
            lambda: mc.generations(["a"]),
            lambda: mc.bump_generation("a"),
            lambda: mc.flight_store.acquire("k", "t", 5.0),
        ):
            exc = await unavailable(op)
            assert "circuit breaker open" in str(exc)


async def test_down_from_the_start_through_tiers_every_get_is_a_miss(
    breaker: CircuitBreaker,
) -> None:
    mc = MemcachedCache.from_url(f"memcached://127.0.0.1:{free_port()}", breaker=breaker)
    tiered = TieredCache(MemoryCache(), mc)
    try:
        for i in range(100):
            assert await tiered.get(f"never-set-{i}") is None
            await tiered.set(f"k{i}", entry(i))
        assert tiered.stats.misses == 100
        assert tiered.stats.errors >= 100
        hit = await tiered.get("k7")  # L1 still serves what this process wrote
        assert hit is not None and hit[1] == 0
    finally:
        await tiered.aclose()


# -- killed mid-run, and restarted ----------------------------------------------------------


async def test_killed_mid_run_then_restarted(
    memcached_server: MemcachedServer, breaker: CircuitBreaker, clock: FakeClock
) -> None:
    mc = MemcachedCache.from_url(memcached_server.url, breaker=breaker, **PATIENT)
    tiered = TieredCache(MemoryCache(max_entries=4), mc)  # most reads reach Memcached
    try:
        hits_before_kill = 0
        for i in range(300):
            if i == 150:
                hits_before_kill = tiered.stats.hits[1]
                memcached_server.kill()
            await tiered.set(f"k{i}", entry(i))
            if i % 10 == 0:
                await mc.flush()
            await tiered.get(f"k{max(i - 20, 0)}")
        assert hits_before_kill > 50
        assert tiered.stats.hits[1] == hits_before_kill
        assert tiered.stats.errors > 100
        assert state(mc) == "open"
        assert breaker.opens == 1

        memcached_server.restart()  # same port, empty
        assert await tiered.get("k0") is None  # still open: nobody noticed yet
        assert state(mc) == "open"
        clock.advance(COOLDOWN)
        # The probe reconnects at once (a fresh client), not after emcache's backoff.
        assert await tiered.get("k0") is None
        assert state(mc) == "closed"

        for i in range(1000, 1020):
            await tiered.set(f"k{i}", entry(i))
        await mc.flush()
        hits = tiered.stats.hits[1]
        for i in range(1000, 1016):
            found = await tiered.get(f"k{i}")
            assert found is not None and found[1] == 1
        assert tiered.stats.hits[1] == hits + 16
    finally:
        await tiered.aclose()


# -- a port that accepts and never answers ---------------------------------------------------


async def test_a_silent_server_times_out_opens_the_breaker_and_calls_return(
    breaker: CircuitBreaker,
) -> None:
    async with SilentServer() as silent:
        mc = MemcachedCache.from_url(silent.url, breaker=breaker)
        tiered = TieredCache(MemoryCache(), mc)
        try:
            started = time.monotonic()
            for i in range(20):
                assert await tiered.get(f"k{i}") is None
                await tiered.set(f"k{i}", entry(i))
            elapsed = time.monotonic() - started
            assert silent.accepted >= 1
            assert state(mc) == "open"
            assert tiered.stats.misses == 20
            # Three 50 ms timeouts opened the breaker; the other calls returned at once.
            assert elapsed < 1.0, elapsed
        finally:
            await tiered.aclose()


async def test_writes_never_wait_for_a_silent_server(breaker: CircuitBreaker) -> None:
    async with SilentServer() as silent, MemcachedCache.from_url(silent.url, breaker=breaker) as mc:
        started = time.monotonic()
        for i in range(200):
            await mc.set(f"k{i}", b"v", 60)
        assert time.monotonic() - started < 0.2
        await mc.flush()
        assert mc.failed_writes > 0


async def test_a_caller_cancelling_is_not_a_memcached_failure(
    memcached_url: str, memcached_prefix: str, breaker: CircuitBreaker
) -> None:
    async with MemcachedCache.from_url(
        memcached_url, prefix=memcached_prefix, breaker=breaker, **PATIENT
    ) as mc:
        for _ in range(10):
            task = asyncio.ensure_future(mc.get("k"))
            await asyncio.sleep(0)  # let it start its call, then cancel it
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert state(mc) == "closed"
        await mc.set("k", b"v", 60)
        await mc.flush()
        assert await mc.get("k") == b"v"  # the connections are still in step


async def test_a_caller_cancelled_as_its_reply_comes_in_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The reply is in the socket when the caller is cancelled, and read in the same loop
    # turn. A command cancelled with it would have emcache's parser resolve a cancelled
    # future: asyncio's "Fatal error: protocol.data_received() call failed", logged as an
    # ERROR, and the connection dropped. The command reads its reply; then the caller goes.
    commands: asyncio.Queue[tuple[bytes, asyncio.StreamWriter]] = asyncio.Queue()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while line := await reader.readline():
            commands.put_nowait((line, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, MemcachedCache.from_url(f"memcached://127.0.0.1:{port}", **PATIENT) as mc:
        reading = asyncio.create_task(mc.get("k"))
        line, writer = await commands.get()
        assert line.startswith(b"get ")  # on the wire; the caller awaits its reply
        writer.write(b"END\r\n")  # a miss, in the caller's socket from now on
        await asyncio.sleep(0)  # resumed in the loop turn that reads it, before it does
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        again = asyncio.create_task(mc.get("k"))
        line, writer = await commands.get()
        writer.write(b"END\r\n")
        assert await again is None
        assert state(mc) == "closed"
    for writer in writers:
        writer.close()
        await writer.wait_closed()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- a budget that runs out as the reply comes in ---------------------------------------------


class HeldReplies:
    """A memcached stand-in on loopback that answers only when the test writes the reply:
    each command line it reads is queued with its connection's writer.

    Attributes:
        accepted: connections accepted so far.
        hung_up: connections the client has closed so far.
        hang_ups: one item per connection the client closed, as the server reads its end.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.hung_up = 0
        self.commands: asyncio.Queue[tuple[bytes, asyncio.StreamWriter]] = asyncio.Queue()
        self.hang_ups: asyncio.Queue[None] = asyncio.Queue()
        self._writers: list[asyncio.StreamWriter] = []
        self._serving: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> HeldReplies:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"memcached://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._serving)  # each reads its end now
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        serving = asyncio.current_task()
        assert serving is not None
        self._serving.append(serving)
        self.accepted += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):  # a reset is a hang-up too
            while line := await reader.readline():
                self.commands.put_nowait((line, writer))
        self.hung_up += 1
        self.hang_ups.put_nowait(None)

    async def hang_up_seen(self) -> None:
        """Returns once the server has read the end of one more connection the client
        closed."""
        async with asyncio.timeout(10):  # a hang is a failure, not a wait
            await self.hang_ups.get()


def memcached_tasks() -> list[asyncio.Task[Any]]:
    """Running tasks whose coroutine is limpet's Memcached tier's."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "limpet/cache/memcached/" in code.co_filename and not task.done():
            found.append(task)
    return found


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_reply_that_comes_as_the_budget_runs_out_is_read_on_the_same_connection(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    breaker: CircuitBreaker,
    clock: FakeClock,
) -> None:
    # The server writes the reply in the very callback where the watchdog finds the
    # budget spent: the client reads it at its next look at the socket, after the
    # caller's budget has run out. Cancelled, emcache's command would close its
    # connection (and, read in the turn of the cancellation, log asyncio's "Fatal error:
    # protocol.data_received() call failed"); it is not: it reads its reply.
    held: list[asyncio.StreamWriter] = []
    count = Bounded.count

    def count_then_reply(self: Bounded, now: float, on_time: bool, idle: float) -> float | None:
        left = count(self, now, on_time, idle)
        if left is None and held:
            held.pop().write(b"END\r\n")  # a miss, in the socket as the budget runs out
        return left

    monkeypatch.setattr(Bounded, "count", count_then_reply)
    async with (
        HeldReplies() as server,
        MemcachedCache.from_url(server.url, read_timeout=0.05, breaker=breaker) as mc,
    ):
        for _ in range(3):  # the breaker's failure threshold
            reading = asyncio.create_task(mc.get("k"))
            line, writer = await server.commands.get()
            assert line.startswith(b"get ")
            held.append(writer)
            with pytest.raises(CacheUnavailableError, match="get timed out after 50 ms"):
                await reading
            assert not held, "the reply was written as the budget ran out"
            # The command goes on after its caller left, and ends with its reply read.
            running = mc._connector.running
            assert len(running) == 1
            await asyncio.wait(running)
            assert mc._connector.running == []
            assert server.accepted == 1 and server.hung_up == 0  # one connection, in step
        assert state(mc) == "open"  # each caller's timeout counted as a failure
        await unavailable(lambda: mc.get("k"))  # refused at once, not sent
        assert server.commands.empty()

        clock.advance(COOLDOWN)
        probing = asyncio.create_task(mc.get("k"))  # on a fresh client (see connection.py)
        line, writer = await server.commands.get()
        writer.write(b"END\r\n")
        assert await probing is None
        assert state(mc) == "closed"
        assert server.accepted == 2
    assert memcached_tasks() == []
    assert loud(caplog) == []


async def test_a_silent_server_leaves_its_command_running_until_the_probe_replaces_the_client(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    # The caller leaves within its budget; the command waits on in the background. The
    # probe's fresh client retires the old one: its connection is closed first (so no
    # reply could be read any more), and only then is the command cancelled.
    monkeypatch.setattr(commands, "STUCK_AFTER", 1_000)  # the probe comes first here
    events: list[str] = []
    close = MemcacheAsciiProtocol.close

    def closing(self: MemcacheAsciiProtocol) -> None:
        if not self.closed():
            events.append("connection closed")
        close(self)

    monkeypatch.setattr(MemcacheAsciiProtocol, "close", closing)

    async def get(client: emcache.Client) -> emcache.Item | None:
        try:
            return await client.get(b"k")
        except asyncio.CancelledError:
            events.append("command cancelled")
            raise

    breaker = CircuitBreaker(failure_threshold=1, cooldown=COOLDOWN, clock=clock)
    async with HeldReplies() as server:
        mc = MemcachedCache.from_url(
            server.url, read_timeout=0.05, close_timeout=0.2, breaker=breaker
        )
        try:
            started = time.monotonic()
            await unavailable(lambda: mc.run("get", mc.read_timeout, get))
            # Within its budget, or the watchdog's bound for a busy loop (20 budgets).
            assert time.monotonic() - started < 1.0
            [silent] = mc._connector.running
            assert not silent.done()
            assert state(mc) == "open"

            clock.advance(COOLDOWN)
            probe = asyncio.create_task(mc.run("get", mc.read_timeout, get))
            await server.commands.get()  # the silent one's
            await server.commands.get()  # the probe's, on a new connection
            async with asyncio.timeout(10):  # a hang is a failure, not a wait
                await asyncio.wait([silent])
            assert silent.cancelled()
            assert events == ["connection closed", "command cancelled"]
            await server.hang_up_seen()
            assert server.accepted == 2 and server.hung_up == 1
            with pytest.raises(CacheUnavailableError, match="timed out"):
                await probe  # the server is silent to the fresh client too
            assert mc._connector.running != [silent]
        finally:
            await mc.aclose()
        assert memcached_tasks() == []
        assert mc._connector.running == []
    assert loud(caplog) == []


async def test_a_command_whose_connection_was_lost_under_it_ends_and_frees_its_place(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The server hangs up on a get without a reply: emcache never ends that command (its
    # reply's future stays pending), and it holds the pool's one connection place. Its
    # caller leaves within its budget; a command still running STUCK_AFTER budgets after
    # it started is cancelled, its place freed: the next command gets a connection.
    monkeypatch.setattr(commands, "STUCK_AFTER", 4)
    async with HeldReplies() as server:
        mc = MemcachedCache.from_url(server.url, read_timeout=0.05, max_connections=1)
        try:
            reading = asyncio.create_task(mc.get("k"))
            line, writer = await server.commands.get()
            assert line.startswith(b"get ")
            writer.close()  # no reply, ever
            await server.hang_up_seen()
            with pytest.raises(CacheUnavailableError, match="timed out"):
                await reading
            [lost] = mc._connector.running
            async with asyncio.timeout(10):  # a hang is a failure, not a wait
                await asyncio.wait([lost])
            assert mc._connector.running == []
            assert state(mc) == "closed"
            again = asyncio.create_task(mc.get("k"))
            line, writer = await server.commands.get()  # on a connection of its own
            writer.write(b"END\r\n")
            assert await again is None
            assert server.accepted == 2
        finally:
            await mc.aclose()
        assert memcached_tasks() == []
    # emcache's own warnings of the connection the server dropped (lost, then removed
    # from its pool as the stuck command ends), and nothing else.
    assert [line for line in loud(caplog) if not line.startswith("emcache.")] == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_aclose_ends_a_command_waiting_on_a_silent_server_within_close_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with HeldReplies() as server:
        mc = MemcachedCache.from_url(server.url, read_timeout=0.05, close_timeout=0.2)
        await unavailable(lambda: mc.get("k"))
        [silent] = mc._connector.running
        started = time.monotonic()
        await mc.aclose()
        elapsed = time.monotonic() - started
        # It had a write budget to read a reply, then its connection closed, then it ended.
        assert mc.write_timeout <= elapsed < mc.close_timeout + 1.0, elapsed
        assert silent.cancelled()
        await server.hang_up_seen()
        assert server.hung_up == server.accepted == 1
        assert memcached_tasks() == []
    assert loud(caplog) == []


async def test_aclose_cancels_a_lent_clients_command_left_after_a_write_budget() -> None:
    # A lent client is its owner's: limpet neither closes it nor its connections (emcache
    # never ends a command whose connection closed, so its owner's would hang). Its
    # command left after a write budget is cancelled; the client goes on serving.
    async with HeldReplies() as server:
        host, port = parse_memcached_url(server.url)[0]
        lent = await emcache.create_client([emcache.MemcachedHostAddress(host, port)], timeout=None)
        try:
            mc = MemcachedCache(client=lent, read_timeout=0.05, close_timeout=0.2)
            await unavailable(lambda: mc.get("k"))
            [silent] = mc._connector.running
            started = time.monotonic()
            await mc.aclose()
            assert mc.write_timeout <= time.monotonic() - started < mc.close_timeout + 1.0
            assert silent.cancelled()
            assert memcached_tasks() == []
            assert not lent.closed
            reading = asyncio.create_task(lent.get(b"k"))
            await server.commands.get()  # the silent one's
            _, writer = await server.commands.get()
            writer.write(b"END\r\n")
            assert await reading is None
        finally:
            await lent.close()


async def test_a_lent_clients_own_timeout_ends_its_command_and_never_reaches_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # emcache times a command out by cancelling the task it started in. A command of an
    # owned client (no timeout of its own) starts in its caller's task; one of a lent
    # client must start in a task of its own, or that cancellation would come, long after
    # the caller left, to whatever the caller's task was doing by then.
    async with HeldReplies() as server:
        host, port = parse_memcached_url(server.url)[0]
        lent = await emcache.create_client([emcache.MemcachedHostAddress(host, port)], timeout=0.2)
        try:
            mc = MemcachedCache(client=lent, read_timeout=0.05)
            after = asyncio.Event()

            async def caller() -> str:
                await unavailable(lambda: mc.get("k"))  # its budget ran out
                await after.wait()  # what the caller does next
                return "undisturbed"

            calling = asyncio.create_task(caller())
            await server.commands.get()  # sent, and never answered
            [command] = mc._connector.running
            async with asyncio.timeout(10):  # a hang is a failure, not a wait
                await asyncio.wait([command])  # emcache's own timeout ended it
            assert not command.cancelled()
            after.set()
            assert await calling == "undisturbed"
            await mc.aclose()
        finally:
            await lent.close()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# -- a full cache evicts: a miss, not a fault -----------------------------------------------


async def test_a_full_memcached_evicts_and_an_evicted_entry_is_a_plain_miss(
    memcached_server_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_server_factory("-m", "4")  # 4 MiB of items
    mc = MemcachedCache.from_url(server.url, **PATIENT)
    tiered = TieredCache(mc)
    try:
        for i in range(800):  # about 10 MiB of 12 KiB entries
            await tiered.set(f"k{i}", entry(i, size=12_000))
            if i % 50 == 0:
                await mc.flush()
        await mc.flush()
        assert mc.failed_writes == 0  # every write landed; older ones made room
        found = [i for i in range(800) if await tiered.get(f"k{i}") is not None]
        assert 0 < len(found) < 800
        assert 799 in found  # the newest survive
        assert tiered.stats.errors == 0
        assert tiered.stats.misses == 800 - len(found)
        assert state(mc) == "closed"
    finally:
        await tiered.aclose()


async def test_an_evicted_generation_never_brings_old_entries_back(
    memcached_url: str, memcached_prefix: str, raw: emcache.Client
) -> None:
    async with MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as mc:
        [old] = await mc.generations(["m"])
        await mc.set(f"entry@{old}", b"stale", 600)  # keys carry the generation
        await mc.flush()
        await mc.bump_generation("m")
        await raw.delete(mc.generation_key("m"))  # evicted by the LRU
        # Another process, which never saw it, re-creates it: never back to ``old``.
        async with MemcachedCache.from_url(
            memcached_url, prefix=memcached_prefix, **PATIENT
        ) as other:
            [now] = await other.generations(["m"])
            assert now > old
            assert await other.get(f"entry@{now}") is None


# -- values over the item size limit ----------------------------------------------------------


async def test_a_value_over_the_size_limit_is_served_not_stored_and_counted(
    memcached_url: str, memcached_prefix: str
) -> None:
    mc = MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT)
    tiered = TieredCache(MemoryCache(), mc)
    try:
        big = entry(1, size=1024 * 1024 + 10)
        await tiered.set("big", big)
        await mc.flush()
        assert mc.oversized_writes == 1
        assert mc.failed_writes == 0  # never sent
        assert await mc.get("big") is None
        hit = await tiered.get("big")
        assert hit is not None and hit[1] == 0  # L1 serves it
        assert state(mc) == "closed"
    finally:
        await tiered.aclose()


async def test_a_server_refusing_a_large_value_is_counted_and_stays_up(
    memcached_server_factory: Callable[..., MemcachedServer],
) -> None:
    server = memcached_server_factory("-I", "1m", "-m", "64")
    async with MemcachedCache.from_url(server.url, max_value_size=4 * 1024 * 1024, **PATIENT) as mc:
        await mc.set("big", b"x" * (2 * 1024 * 1024), 60)
        await mc.set("small", b"y", 60)
        await mc.flush()
        assert mc.failed_writes == 1
        assert state(mc) == "closed"  # Memcached answered: it is up
        assert await mc.get("big") is None
        assert await mc.get("small") == b"y"


# -- garbage -------------------------------------------------------------------------------------


async def test_garbage_under_a_key_is_a_corrupt_miss_and_is_deleted(
    memcached_url: str, memcached_prefix: str, raw: emcache.Client
) -> None:
    async with MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as mc:
        await raw.set(mc.entry_key("k"), b"not a limpet entry")
        tiered = TieredCache(mc)
        assert await tiered.get("k") is None
        assert tiered.stats.corrupt == 1
        assert await raw.get(mc.entry_key("k")) is None


async def test_an_entry_signed_with_another_key_is_a_corrupt_miss(
    memcached_url: str, memcached_prefix: str, raw: emcache.Client
) -> None:
    async with MemcachedCache.from_url(memcached_url, prefix=memcached_prefix, **PATIENT) as mc:
        await raw.set(mc.entry_key("k"), EntryCodec(b"another key").encode("k", entry(1)))
        tiered = TieredCache(mc, hmac_key=b"our key")
        assert await tiered.get("k") is None
        assert tiered.stats.corrupt == 1


async def test_the_breakers_probe_never_waits_for_a_place_the_silent_commands_hold(
    breaker: CircuitBreaker, clock: FakeClock, memcached_url: str
) -> None:
    # Every place held (by commands a silent server never answered, reaped only
    # STUCK_AFTER budgets later): the probe runs on a fresh client, so it must not wait
    # for one of their places. It waited, and gave up: "no free connection".
    async def get(client: emcache.Client) -> emcache.Item | None:
        return await client.get(b"k")

    mc = MemcachedCache.from_url(memcached_url, read_timeout=0.05, breaker=breaker)
    try:
        slots = mc._connector.slots
        for _ in range(slots.count):
            await slots.take()
        for _ in range(3):  # the breaker's failure threshold
            breaker.record_failure()
        clock.advance(COOLDOWN)
        assert state(mc) == "half_open"
        assert await mc.run("get", mc.read_timeout, get) is None
        assert state(mc) == "closed"
        for _ in range(slots.count):
            slots.give_back()
    finally:
        await mc.aclose()
