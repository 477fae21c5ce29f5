"""Invalidation generations: per model, per namespace, everything; shared through Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from limpet.cache.counter_starts import CounterStarts
from limpet.cache.generations import Generations, generation_name
from limpet.cache.local_generations import LocalGenerations, local_generations_of
from limpet.cache.redis.backend import RedisCache
from limpet.errors import CacheUnavailableError
from tests.fakes import FakeClock


async def test_local_bumps_change_exactly_what_they_cover() -> None:
    gens = Generations(namespace="tenant")
    a, b = gens.scope_now("a"), gens.scope_now("b")
    await gens.bump("a")
    assert gens.scope_now("a") != a
    assert gens.scope_now("b") == b
    before = (gens.scope_now("a"), gens.scope_now("b"))
    await gens.bump()
    assert gens.scope_now("a") != before[0] and gens.scope_now("b") != before[1]


async def test_clients_sharing_local_generations_see_each_others_bumps_at_once() -> None:
    shared = LocalGenerations()
    one, other = (Generations(local=shared, credential="c", max_tracked=1) for _ in "12")
    before = one.scope_now("m")
    assert other.scope_now("m") == before  # one cache, one scope
    await one.bump("m")
    assert other.scope_now("m") == one.scope_now("m") != before  # no refresh waited for
    for model in ("n", "o", "m"):  # ``other`` forgets m's generations, then uses m again
        other.scope_now(model)
    assert other.scope_now("m") == one.scope_now("m") != before  # the bump was not lost
    await other.bump()
    assert one.scope_now("m") == other.scope_now("m")
    assert Generations(credential="c").scope_now("m") == before  # not shared: its own


class Tier:
    """Any object a cache is made of: a tier holds its Clients' counters."""


async def test_counters_of_two_caches_read_together_become_one_keeping_every_bump() -> None:
    first, second = Tier(), Tier()  # two caches' tiers, each given to a Client of its own
    one = Generations(local=local_generations_of([first]), credential="c")
    other = Generations(local=local_generations_of([second]), credential="c")
    await other.bump("m")  # in second's counters alone
    bumped = other.scope_now("m")
    assert one.scope_now("m") != bumped
    both = Generations(local=local_generations_of([first, second]), credential="c")
    # One set now: each Client keys with the higher of each value, and bumps reach all.
    assert one.scope_now("m") == other.scope_now("m") == both.scope_now("m") == bumped
    await one.bump("m")
    assert other.scope_now("m") == both.scope_now("m") == one.scope_now("m") != bumped
    assert local_generations_of([second]) is local_generations_of([first])


class CountersInMemory:
    """A generation store in a dict (what ``RedisCache`` keeps in Redis), that can be
    ``down``."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}
        self.down = False

    async def generations(self, names: Sequence[str]) -> list[int]:
        self._answer()
        return [self.values.setdefault(name, 1000) for name in names]

    async def bump_generation(self, name: str) -> int:
        self._answer()
        self.values[name] = self.values.get(name, 1000) + 1
        return self.values[name]

    def _answer(self) -> None:
        if self.down:
            raise CacheUnavailableError("the store is down")


async def test_forgetting_a_key_s_calls_to_a_model_keeps_what_the_model_s_others_use() -> None:
    # (m, key A) shares m's generations with m's own calls: forgetting it (past
    # max_tracked) forgot their values too, which no refresh read again, so this process
    # missed every later invalidation of m for good.
    store, now = CountersInMemory(), [0.0]
    gens = Generations(store, credential="client", max_tracked=2, clock=lambda: now[0])
    await gens.scope("m")
    await gens.scope("m", "key-a")
    await gens.scope("m")
    await gens.scope("m2")  # (m, key A) is forgotten
    before = await gens.scope("m")
    await store.bump_generation(generation_name("", "m", credential="client"))
    now[0] += 5
    await gens.refresh()
    assert await gens.scope("m") != before


# One step of a process's life: a call to a model (with a key of its own, or none), or
# another process bumping a generation of a model or of a key.
_Step = tuple[str, str, str]
_STEPS = st.lists(
    st.tuples(
        st.sampled_from(["call", "bump model", "bump key"]),
        st.sampled_from(["m1", "m2", "m3"]),
        st.sampled_from(["", "key-a", "key-b"]),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_STEPS, st.integers(1, 4))
def test_every_tracked_scope_reads_as_a_fresh_process_would_after_a_refresh(
    steps: list[_Step], max_tracked: int
) -> None:
    # Whatever was tracked and forgotten (max_tracked small), once refreshed a process's
    # scope of any model and key is the one a process that never saw any of it reads:
    # no invalidation is ever missed, whatever pairs share generations.
    async def run() -> None:
        store, now = CountersInMemory(), [0.0]
        gens = Generations(
            store, credential="client", max_tracked=max_tracked, clock=lambda: now[0]
        )
        for action, model, key in steps:
            if action == "call":
                await gens.scope(model, key)
            elif action == "bump model":
                await store.bump_generation(generation_name("", model, credential="client"))
            elif key:
                await store.bump_generation(generation_name("", None, credential=key))
            now[0] += 5
            await gens.refresh()
            fresh = Generations(store, credential="client", clock=lambda: now[0])
            assert await gens.scope(model, key) == await fresh.scope(model, key)

    asyncio.run(run())


async def test_an_unread_scope_is_one_outages_and_no_invalidation_survives_it() -> None:
    # Regression: the scope of a model whose generations could not be read was the same
    # in every outage, so an answer stored under it in one was served in the next, after
    # a flush this process had read in between (and after its own invalidations too).
    store, now = CountersInMemory(), [0.0]
    gens = Generations(store, clock=lambda: now[0])
    store.down = True
    first = await gens.scope("m")
    assert await gens.scope("m") == first  # one outage: its hits and its flights hold
    await gens.bump("m")
    after_bump = await gens.scope("m")
    assert after_bump != first
    store.down = False
    await Generations(store).bump("m")  # another process flushes the model
    await gens.refresh()  # read here: the outage is over
    store.down = True
    second = await gens.scope("other-model")
    assert second.partition("?")[2] != after_bump.partition("?")[2]
    assert await gens.scope("m") not in {first, after_bump}


async def test_an_invalidation_made_while_the_store_was_down_reaches_it_once_back() -> None:
    # Made here while the store was down (from 0: this process had never read the
    # model), it was undone when the store came back with its older value, and never
    # reached the other processes (whose next bump landed on the value this process
    # wrote under meanwhile). Now the next refresh that finds the store sends it.
    store, now = CountersInMemory(), [0.0]
    other = Generations(store)
    before = await other.scope("m")
    gens = Generations(store, clock=lambda: now[0])
    store.down = True
    await gens.bump("m")
    during = gens.scope_now("m")
    store.down = False
    now[0] += 5
    await gens.refresh()
    after = await gens.scope("m")
    assert len({before, during, after}) == 3
    await other.refresh()
    assert await other.scope("m") == after  # the fleet has it too
    await other.bump("m")  # a later invalidation elsewhere reaches here
    now[0] += 5
    await gens.refresh()
    assert await gens.scope("m") == await other.scope("m") != after


async def test_an_invalidation_the_store_missed_is_sent_when_the_process_closes() -> None:
    # Regression: closed before its next refresh, a process took the invalidation it had
    # made while the store was down with it; the others kept serving what it invalidated.
    store = CountersInMemory()
    other = Generations(store)
    before = await other.scope("m")
    gens = Generations(store)
    store.down = True
    await gens.bump("m")
    await gens.bump(None)
    store.down = False
    await gens.aclose()
    await other.refresh()
    assert before != await other.scope("m")
    assert (store.values[gens._names_of("m")[-1]], store.values[gens._own]) == (1001, 1001)


async def test_invalidating_models_never_used_here_holds_no_value_of_theirs() -> None:
    # Regression: each such bump kept its value, never tracked so never forgotten, and
    # every refresh read them all.
    store = CountersInMemory()
    gens = Generations(store, max_tracked=10)
    used = await gens.scope("used")
    for i in range(300):
        await gens.bump(f"never-used-{i}")
    assert len(gens._values) <= 3 + 2  # everything's, the namespace's, its own; "used"'s
    assert store.values[generation_name("", "never-used-7")] == 1001  # bumped in the store
    await gens.bump("used")
    assert await gens.scope("used") != used  # a tracked model's bump is seen at once
    # Used at last, it is read: its bump is in its key.
    assert "1001" in (await gens.scope("never-used-7")).split(".")


async def test_a_bump_made_while_the_models_first_read_is_out_is_kept() -> None:
    # Regression: the read, sent before the bump, came back with the older value, and
    # the bump (not kept: the model was not tracked yet) was lost until a refresh.
    store, out, answers = CountersInMemory(), asyncio.Event(), asyncio.Event()
    read = store.generations

    async def held(names: Sequence[str]) -> list[int]:
        values = await read(names)  # as the store had them when the read reached it
        out.set()
        await answers.wait()
        return values

    store.generations = held  # type: ignore[method-assign]
    gens = Generations(store)
    first = asyncio.ensure_future(gens.scope("m"))
    await out.wait()
    await gens.bump("m")  # invalidate() returns
    answers.set()
    store.generations = read  # type: ignore[method-assign]
    for scope in (await first, await gens.scope("m")):
        assert "1001" in scope.split(".")  # the bump's value, never the read's older one


async def test_a_bump_only_this_process_holds_keeps_other_models_within_max_tracked() -> None:
    gens = Generations(None, credential="client", max_tracked=10)
    await gens.bump()  # the client's own generation: in every key, never forgotten anyway
    for i in range(100):
        assert gens.scope_now(f"m{i}", f"key-{i % 7}") is not None
    assert len(gens._models) == 10


async def test_a_model_just_read_is_kept_while_the_others_hold_unsent_bumps() -> None:
    store, now = CountersInMemory(), [0.0]
    gens = Generations(store, max_tracked=2, clock=lambda: now[0])
    await gens.scope("a")
    await gens.scope("b")
    store.down = True
    await gens.bump("a")
    await gens.bump("b")
    store.down = False
    for _ in range(3):  # read once, then served from memory: never the unread scope
        assert "?" not in await gens.scope("c")
        assert gens.scope_now("c") is not None


def test_a_lost_counter_starts_above_what_was_seen_and_what_is_seen_is_bounded() -> None:
    starts = CounterStarts(max_names=2)
    ahead = time.time_ns() // 1000 + 10**12  # a counter far past the clock
    assert starts.saw("a", ahead) == ahead
    assert starts.start("a") == ahead + 1
    assert time.time_ns() // 1000 <= starts.start("b") < ahead  # from the clock
    starts.saw("b", 1)
    starts.saw("c", 1)  # "a" is the least recently seen of three: forgotten
    assert starts.start("a") < ahead


class CountingStore:
    """A real RedisCache whose generation reads are counted."""

    def __init__(self, cache: RedisCache) -> None:
        self.cache = cache
        self.reads = 0

    async def generations(self, names: Sequence[str]) -> list[int]:
        self.reads += 1
        return await self.cache.generations(names)

    async def bump_generation(self, name: str) -> int:
        return await self.cache.bump_generation(name)


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[CountingStore]:
    async with RedisCache.from_url(redis_url, prefix=redis_prefix) as cache:
        yield CountingStore(cache)


@pytest.mark.redis
async def test_a_calls_own_key_adds_its_generations_to_the_clients(
    store: CountingStore,
) -> None:
    # What ``limpet flush --cache-scope credential`` bumps for a key reaches the calls
    # that send it; the Client's own invalidation still reaches them; another key's
    # flush does not.
    gens = Generations(store, namespace="n", credential="client")
    plain, a, b = [await gens.scope("m", key) for key in ("", "key-a", "key-b")]
    assert len({plain, a, b}) == 3
    await store.bump_generation(generation_name("n", None, credential="key-a"))
    await gens.refresh()
    assert (await gens.scope("m"), await gens.scope("m", "key-b")) == (plain, b)
    assert await gens.scope("m", "key-a") != a
    before = [await gens.scope("m", key) for key in ("", "key-a", "key-b")]
    await gens.bump("m")
    after = [await gens.scope("m", key) for key in ("", "key-a", "key-b")]
    assert all(x != y for x, y in zip(before, after, strict=True))


@pytest.mark.redis
async def test_an_invalidation_reaches_another_process_within_the_refresh_interval(
    store: CountingStore,
) -> None:
    clock = FakeClock()
    here = Generations(store, refresh_interval=1.0, clock=clock)
    there = Generations(store, refresh_interval=1.0, clock=clock)
    before = await there.scope("m")
    await here.bump("m")
    assert there.scope_now("m") == before  # not due yet: no read, old scope
    clock.advance(1.0)
    assert there.scope_now("m") == before  # due: a refresh starts in the background
    await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()})
    assert there.scope_now("m") == await here.scope("m") != before
    await there.aclose()


@pytest.mark.redis
async def test_an_idle_process_reads_the_store_before_using_generations_past_their_bound(
    store: CountingStore,
) -> None:
    # Stale-while-refreshing is bounded: a process idle for an hour must not serve its
    # first request from an hour-old generation, whatever it had cached.
    clock = FakeClock()
    here = Generations(store, refresh_interval=1.0, clock=clock)
    there = Generations(store, refresh_interval=1.0, clock=clock)
    before = await there.scope("m")
    await here.bump("m")
    after = await here.scope("m")
    clock.advance(2.0)  # twice the interval, with no request to start a refresh
    reads = store.reads
    assert there.scope_now("m") is None  # no answer from memory: read first
    scopes = await asyncio.gather(*(there.scope("m") for _ in range(20)))
    assert set(scopes) == {after} != {before}
    assert store.reads == reads + 1  # one read for every waiting caller
    assert there.scope_now("m") == scopes[0]  # fresh again: the hit path reads nothing
    await there.aclose()


@pytest.mark.redis
async def test_a_first_request_reads_the_shared_generation_before_using_it(
    store: CountingStore,
) -> None:
    await Generations(store).bump("m")
    fresh = Generations(store)
    assert fresh.scope_now("m") is None
    scopes = await asyncio.gather(*(fresh.scope("m") for _ in range(50)))
    assert len(set(scopes)) == 1
    assert scopes[0] == await Generations(store).scope("m")
    assert store.reads == 2  # one shared read for the 50 callers, one for the other instance


@pytest.mark.redis
async def test_namespaces_invalidate_alone_and_everything_covers_all(
    store: CountingStore,
) -> None:
    x, y = Generations(store, namespace="x"), Generations(store, namespace="y")
    x0, y0 = await x.scope("m"), await y.scope("m")
    await x.bump()
    await y.refresh()
    await x.refresh()
    assert (await x.scope("m")) != x0
    assert (await y.scope("m")) == y0
    await store.bump_generation(generation_name(None, None))  # what `limpet flush` does
    await y.refresh()
    assert (await y.scope("m")) != y0


@pytest.mark.redis
async def test_a_credential_invalidates_alone_and_its_namespace_covers_every_credential(
    store: CountingStore,
) -> None:
    a = Generations(store, namespace="x", credential="a")
    b = Generations(store, namespace="x", credential="b")
    shared = Generations(store, namespace="x")
    elsewhere = Generations(store, namespace="y", credential="a")
    everyone = (a, b, shared, elsewhere)

    async def scopes() -> list[str]:
        for gens in everyone:
            await gens.refresh()
        return [await gens.scope("m") for gens in everyone]

    start = await scopes()
    # Two more generations in a credential's keys.
    assert [s.count(".") for s in start] == [4, 4, 2, 4]

    await a.bump()
    after_a = await scopes()
    assert [x != y for x, y in zip(start, after_a, strict=True)] == [True, False, False, False]

    await b.bump("m")
    after_b = await scopes()
    assert [x != y for x, y in zip(after_a, after_b, strict=True)] == [False, True, False, False]

    await shared.bump("m")  # the namespace's model generation: every credential in it
    after_ns = await scopes()
    assert [x != y for x, y in zip(after_b, after_ns, strict=True)] == [True, True, True, False]

    await store.bump_generation(generation_name("x", None))  # `limpet flush --namespace x`
    after_flush = await scopes()
    changed = [x != y for x, y in zip(after_ns, after_flush, strict=True)]
    assert changed == [True, True, True, False]
    for gens in everyone:
        await gens.aclose()


def test_a_credential_generation_name_is_apart_from_every_namespace_one() -> None:
    names = {
        generation_name(None, None),
        generation_name("", None),
        generation_name("", "m"),
        generation_name("", None, credential="a"),
        generation_name("", "m", credential="a"),
        generation_name(None, None, credential="a"),
    }
    assert len(names) == 5  # ("", None, "a") and (None, None, "a") are one scope


async def test_tracking_is_bounded_and_a_forgotten_model_is_read_again_before_use(
    store: CountingStore,
) -> None:
    here = Generations(store, max_tracked=3)
    elsewhere = Generations(store)
    first = await here.scope("m0")
    for i in range(1, 50):
        await here.scope(f"m{i}")
    assert len(here._values) == 3 + 2  # three models, and the two scope-wide generations
    await elsewhere.bump("m0")
    assert here.scope_now("m0") is None  # forgotten: no guess from memory
    reads = store.reads
    again = await here.scope("m0")
    assert store.reads == reads + 1
    assert again != first and again == await elsewhere.scope("m0")


class FlakyStore(CountingStore):
    """The real store, which the test can make unreachable."""

    down = False

    async def generations(self, names: Sequence[str]) -> list[int]:
        if self.down:
            self.reads += 1
            raise CacheUnavailableError("down for the test")
        return await super().generations(names)

    async def bump_generation(self, name: str) -> int:
        if self.down:
            raise CacheUnavailableError("down for the test")
        return await super().bump_generation(name)


@pytest.mark.redis
async def test_a_local_only_bump_is_never_forgotten_and_a_failed_read_matches_nothing(
    store: CountingStore,
) -> None:
    flaky = FlakyStore(store.cache)
    gens = Generations(flaky, max_tracked=2)
    before = await gens.scope("pinned")
    flaky.down = True
    await gens.bump("pinned")  # reaches only this process
    bumped = gens.scope_now("pinned")
    assert bumped is not None and bumped != before
    assert ".?" in await gens.scope("unread")  # a failed read is no guess
    flaky.down = False
    for i in range(10):
        await gens.scope(f"m{i}")
    assert gens.scope_now("pinned") == bumped  # kept: the store could not give it back
    assert len(gens._values) <= 2 + 2 + 1


@pytest.mark.redis
@pytest.mark.parametrize("credential", ["", "c0ffee"])
async def test_invalidating_everything_while_the_store_is_down_changes_unread_scopes(
    store: CountingStore, credential: str
) -> None:
    flaky = FlakyStore(store.cache)
    flaky.down = True
    gens = Generations(flaky, namespace="ns", credential=credential)
    before = await gens.scope("never-read")
    assert ".?" in before
    await gens.bump()  # invalidate(): reaches only this process, but must reach it
    after = await gens.scope("never-read")
    assert ".?" in after and after != before
    await gens.bump()
    assert await gens.scope("never-read") not in (before, after)


@pytest.mark.redis
async def test_past_the_bound_an_unreachable_store_costs_one_read_per_interval(
    store: CountingStore,
) -> None:
    flaky = FlakyStore(store.cache)
    clock = FakeClock()
    gens = Generations(flaky, refresh_interval=1.0, clock=clock)
    before = await gens.scope("m")
    flaky.down = True
    clock.advance(5.0)
    reads = flaky.reads
    assert await gens.scope("m") == before  # nothing newer to be had: what it knows
    for _ in range(10):
        assert (gens.scope_now("m") or await gens.scope("m")) == before
    assert flaky.reads == reads + 1  # the failed read is not retried before it is due
    clock.advance(1.0)
    flaky.down = False
    await Generations(flaky).bump("m")
    assert gens.scope_now("m") is None
    assert await gens.scope("m") != before
    await gens.aclose()
