"""A seeded soak: what a cache exists for, under everything at once.

No caller is ever served an answer that was not produced for its own request, and
nothing is left behind. Two Clients (two "processes": each its own memory tier) share one
tier under a prefix of their own (each param of ``shared``, ``soak_tiers``: Redis; Redis
with an ``hmac_key``, so entries and flight notices are signed; a three-node Redis
Cluster, where kills reach every node; Memcached) and call one FakeGateway over
loopback. A workload drawn from ``random.Random(seed)`` (a few hundred ``complete()`` and
``stream()`` calls over a few dozen near-identical prompts, launched concurrently in
waves, so there are hits, misses and waiters coalesced in and across both Clients) runs
under seeded adversity: callers cancelled after a number of event-loop turns, callers
with a tiny ``timeout=``, every Redis connection of both Clients killed at random turns
(sometimes twice in a row), one Client's shared tier down for the rest of a wave (its
breaker opened, as three timeouts in a row would), and upstream faults in some waves
(5xx, dropped connections, errors mid-stream, and a final 400, a leader's error that its
followers are told).
Killed connections mostly go unnoticed (redis-py retries once on a fresh connection, and
pub/sub subscribes again): the outages are what make the Clients fall through.

The oracle is the gateway itself: ``SpyGateway`` records every answer it produced and the
request it answered. Every answer served must be one produced for exactly that call's
request, whole; a miss must be the caller's own fresh answer; every caller must end as
its plan allows (an answer; ``CancelledError`` once cancelled; ``APITimeoutError`` past
its timeout; ``APIError`` in a wave with upstream faults; nothing else). Then no lease is
left but those whose release the shared tier refused, each Client's ``Stats`` count
exactly what its callers saw, and a last pass of every prompt through both Clients is
served from the cache whenever an entry exists (and, on the signed tier, that entry is
signed with the Clients' key).

Everything is ordered by event-loop turns (``asyncio.sleep(0)``) and by waiting on the
calls themselves, never by sleeping: the gateway's latency and the tiny timeouts are the
adversity, not clocks anything waits on. Breakers run on fake clocks, moved once a wave.
To soak longer than CI does, name other seeds: ``LIMPET_SOAK_SEEDS=100-139`` (both soaks).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from limpet import CacheStatus
from limpet.errors import APIError, APITimeoutError
from tests.integration.soak import (
    LATENCY,
    SEEDS,
    WAVES,
    Outcome,
    Plan,
    Run,
    SpyGateway,
    draw,
    fingerprint,
)
from tests.integration.soak_adversity import (
    WAVE_DEADLINE,
    Shared,
    make_client,
)
from tests.integration.test_lifecycle import limpet_tasks


@pytest.fixture
async def spy(ticks: Iterator[int]) -> AsyncIterator[SpyGateway]:
    async with SpyGateway(ticks, endpoints=("a",), latency=LATENCY) as gw:
        yield gw


def check_served(run: Run, outcome: Outcome, keys: dict[bytes, str]) -> None:
    """What ``outcome``'s caller was served was produced for its request, whole."""
    completion, plan, gateway = outcome.completion, outcome.plan, run.gateway
    assert completion is not None, f"{plan}: ended with no answer and no error"
    asked = fingerprint(run.requests[plan.prompt])
    answer = completion.raw.get("id")
    assert answer in gateway.asked, f"{plan}: served {answer!r}, which was never produced"
    assert gateway.asked[answer] == asked, (
        f"{plan}: served {answer!r}, produced for {gateway.asked[answer]!r}"
    )
    assert completion.content == gateway.text[answer], f"{plan}: not the whole answer"
    assert completion.cache in (CacheStatus.HIT, CacheStatus.MISS, CacheStatus.COALESCED), plan
    assert completion.key is not None
    assert keys.setdefault(asked, completion.key) == completion.key, f"{plan}: a second key"
    if completion.cache is CacheStatus.MISS:
        # Its own upstream request, sent after it started, or one that a caller of the same
        # request on its Client started and left to it (the flight's claim passes on):
        # not anything older.
        produced = gateway.produced_at[answer]
        assert produced > outcome.started or any(
            left_to(other, outcome, produced) for other in run.outcomes
        ), f"{plan}: a MISS not its own"
    if plan.kind == "stream":
        assert {chunk.raw.get("id") for chunk in outcome.chunks} == {answer}, plan
        assert "".join(chunk.content or "" for chunk in outcome.chunks) == completion.content


def left_to(other: Outcome, outcome: Outcome, produced: int) -> bool:
    """Whether ``other`` is a call of ``outcome``'s request on its Client that started
    before the answer produced at ``produced`` and left without it (cancelled, or past its
    own deadline), so that its flight's answer may be ``outcome``'s claim."""
    plan, mine = other.plan, outcome.plan
    return (
        other is not outcome
        and (plan.client, plan.prompt) == (mine.client, mine.prompt)
        and other.started < produced
        and other.completion is None
    )


def check_outcome(run: Run, outcome: Outcome, keys: dict[bytes, str]) -> None:
    """``outcome``'s caller ended as its plan allows, and what it was served is right."""
    plan, error = outcome.plan, outcome.error
    if outcome.cancel_sent:
        # Once cancel() took, nothing may swallow the cancellation.
        assert outcome.cancelled, f"{plan}: its cancellation was swallowed: {outcome}"
        return
    assert not outcome.cancelled, f"{plan}: cancelled, but not by the test"
    if error is None:
        check_served(run, outcome, keys)
    elif outcome.faulty and isinstance(error, APIError):
        pass  # an upstream fault of its wave (or its timeout: an APIError too)
    elif plan.stop == "timeout":
        assert isinstance(error, APITimeoutError), f"{plan}: raised {error!r}"
    else:
        raise AssertionError(f"{plan}: raised {error!r}") from error


def check_stats(run: Run) -> None:
    """Each Client's Stats count exactly what its callers saw (a caller cancelled is not
    counted: it neither returned nor raised an upstream error)."""
    for index, client in enumerate(run.clients):
        mine = [o for o in run.outcomes if o.plan.client == index and not o.cancel_sent]
        served = Counter(o.completion.cache for o in mine if o.completion is not None)
        failed = sum(isinstance(o.error, APIError) for o in mine)
        stats = client.stats
        counted = (stats.hits, stats.misses, stats.coalesced, stats.bypassed, stats.errors)
        expected = (
            served[CacheStatus.HIT],
            served[CacheStatus.MISS],
            served[CacheStatus.COALESCED],
            served[CacheStatus.BYPASS],
            failed,
        )
        assert counted == expected, f"client {index}: {stats}"
        assert stats.requests == sum(served.values())
        # Every answer a caller claimed was paid for, counted as it came, whoever waited;
        # no more than the gateway answered (a stream cut short reports no usage).
        claimed = sum(
            o.completion.usage.prompt_tokens
            for o in mine
            if o.completion is not None and o.completion.cache is CacheStatus.MISS
        )
        assert claimed <= stats.prompt_tokens, f"client {index}: {stats}"
        assert stats.corrupt == 0, f"client {index} read an entry not bound to its key"
    answered = sum(run.gateway.prompt_tokens.values())
    assert sum(client.stats.prompt_tokens for client in run.clients) <= answered


async def check_leases(run: Run, keys: set[str]) -> None:
    """No lease is left but those whose release the shared tier refused."""
    assert await run.shared.stray_leases(keys) == set()


# -- the soak ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_every_caller_gets_its_own_answer_and_nothing_is_left_behind(
    seed: int,
    spy: SpyGateway,
    shared: Shared,
    ticks: Iterator[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    waves = draw(seed)
    a, b = (make_client(spy, shared.tiered(n)) for n in (0, 1))
    run = Run(spy, (a, b), shared, ticks)
    async with a, b:
        # Each Client reads the model's generations once, before any adversity: a first
        # read that fails gives a scope that matches nothing, by design, and so a second
        # key for a request (two kills back to back could do it), which check_served
        # would take for a mix-up. (``forget()`` keys its request: it reads them.)
        for each in run.clients:
            await each.forget(**run.requests[0])
        for wave in waves:
            await run.wave(wave)

        keys: dict[bytes, str] = {}
        for outcome in run.outcomes:
            check_outcome(run, outcome, keys)
        assert len(set(keys.values())) == len(keys), "two requests share a key"
        served = [(o.plan, o.completion) for o in run.outcomes if o.completion is not None]
        await check_leases(run, set(keys.values()))
        check_stats(run)

        # What the run covered: every kind of answer and of adversity.
        statuses = Counter(completion.cache for _, completion in served)
        assert statuses.keys() >= {CacheStatus.HIT, CacheStatus.MISS, CacheStatus.COALESCED}
        assert any(o.cancel_sent for o in run.outcomes)
        assert any(isinstance(o.error, APITimeoutError) for o in run.outcomes)
        assert shared.killed > 0 or not shared.admins or not any(w.kills for w in waves)
        # Which Client's caller went upstream for each answer: one caller at most.
        led: dict[str, int] = {}
        for plan, completion in served:
            if completion.cache is CacheStatus.MISS:
                answer = completion.raw["id"]
                assert answer not in led, f"{plan}: {answer} was already another's MISS"
                led[answer] = plan.client
        crossed = [plan for plan, c in served if led.get(c.raw["id"], plan.client) != plan.client]
        assert crossed, "no answer went from one Client to the other"

        # A last pass of every prompt through both Clients, once every write behind has
        # landed: from the cache whenever an entry exists (a Client's own answers are in
        # its memory tier). The Clients may hold different answers to one request (each
        # went upstream while the shared tier was out), but never different texts.
        async with asyncio.timeout(WAVE_DEADLINE):
            await shared.recovered()
        assert [client.stats.breaker_state for client in run.clients] == ["closed", "closed"]
        answered = {(plan.client, plan.prompt) for plan, _ in served}
        for prompt, request in enumerate(run.requests):
            key = keys.get(fingerprint(request))
            stored = key is not None and await shared.holds(key)
            texts = set()
            for client in (0, 1):
                outcome = Outcome(Plan(WAVES, client, prompt), faulty=False)
                run.outcomes.append(outcome)
                await run.call(outcome)
                check_outcome(run, outcome, keys)
                assert outcome.completion is not None
                if stored or (client, prompt) in answered:
                    assert outcome.completion.cache is CacheStatus.HIT, (outcome.plan, stored)
                texts.add(outcome.completion.content)
            assert len(texts) == 1, f"prompt {prompt}: the Clients disagree"
        check_stats(run)
        await check_leases(run, set(keys.values()))

    await check_leases(run, set(keys.values()))
    assert limpet_tasks() == []
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == []
