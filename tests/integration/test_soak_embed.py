"""A seeded soak of ``embed()``: every vector is its own input's, and nothing is left behind.

The chat soak's adversary (``test_soak.py``, ``soak_adversity``), for a cache kept per
input. Two Clients (two "processes") share one tier (Redis, Redis with an ``hmac_key``, a
Redis Cluster or Memcached: the params of ``shared``, ``soak_tiers``) and call one
FakeGateway at one URL, as a fleet does, client 0 answered as its endpoint "a" and
client 1 as "b" (each names itself in its ``X-Title``), so the gateway knows who sent
what. A workload drawn from ``random.Random(seed)``: waves of concurrent
``embed()`` calls from both Clients, each a batch of one to six texts from a pool of
near-identical ones, with repeats inside a batch and overlap across calls and Clients,
some at another ``dimensions`` (another key): hits, misses, inputs coalesced in one
process and followed across processes. Adversity as in the chat soak: cancellations after
random event-loop turns, tiny ``timeout=``s, the Clients' Redis connections killed, one
Client's breaker opened mid-wave, upstream faults in some waves (5xx, dropped connections,
a final 400).

The oracle: the fake's vectors are a pure function of (model, text, dimensions)
(``fake_vector``), so every vector served, whole or in an ``EmbeddingBatchError``, must
equal its own input's, in input order. The upstream answers a call reports
(``raw_responses``) must be ones the gateway produced, for this call's Client, model and
size, after it started, for distinct inputs of its own, claimed by no other call, and as
many inputs as its ``misses``, whose tokens are its ``usage``. Then no lease is left but
those whose release the shared tier refused, each Client's ``Stats`` count what its
callers saw, and a last pass of every text at each size is served from the cache by both
Clients whenever an entry exists (signed with their key, on the signed tier). Before it,
one scene the waves reach only when the timing allows: client 1 follows client 0's
flight across processes (client 0's request held upstream until it does) and is given
client 0's vectors. Ordered by turns and by waiting on the calls, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from limpet import EmbeddingBatchError
from limpet.errors import APIError, APITimeoutError
from limpet.testing import FakeGateway
from limpet.testing.embeddings import fake_vector
from limpet.testing.tokens import count_tokens
from tests.integration.soak_adversity import (
    WAVE_DEADLINE,
    Shared,
    make_client,
)
from tests.integration.soak_embed import (
    DIMENSIONS,
    ENDPOINTS,
    LATENCY,
    MODEL,
    SEEDS,
    WAVES,
    Keys,
    Outcome,
    Plan,
    Run,
    SpyEmbeddings,
    draw,
    passages,
    size,
    spy_on_following,
    spy_on_follows,
    spy_on_keys,
)
from tests.integration.test_lifecycle import limpet_tasks

# (client, text, dimensions, key) given a vector: the key its Client gave that input.
Served = set[tuple[int, str, int | None, str]]


@pytest.fixture
async def spy(ticks: Iterator[int]) -> AsyncIterator[tuple[FakeGateway, SpyEmbeddings]]:
    gateway = FakeGateway(endpoints=ENDPOINTS)
    gateway.embeddings = SpyEmbeddings(gateway, ticks)  # before start(): its routes' handler
    gateway.embeddings.latency = LATENCY
    async with gateway:
        yield gateway, gateway.embeddings


def check_vectors(plan: Plan, vectors: list[list[float]] | list[list[float] | None]) -> None:
    """Each vector is its own input's, in input order (None: a failed input)."""
    assert len(vectors) == len(plan.texts), f"{plan}: {len(vectors)} vectors"
    for text, vector in zip(plan.texts, vectors, strict=True):
        if vector is not None:
            expected = fake_vector(MODEL, text, size(plan.dimensions))
            assert vector == expected, f"{plan}: not the vector of {text!r}"


def check_served(run: Run, outcome: Outcome, claimed: dict[str, int]) -> None:
    """What ``outcome``'s caller was given is its inputs' vectors, and what it says it
    sent upstream is what the gateway answered it."""
    result, plan = outcome.result, outcome.plan
    assert result is not None, f"{plan}: ended with no vectors and no error"
    assert len(outcome.keys) == len(plan.texts), f"{plan}: keyed {outcome.keys}"
    check_vectors(plan, result.vectors)
    assert result.model == MODEL
    assert result.hits + result.misses + result.coalesced == len(plan.texts), (plan, result)
    sent: list[str] = []
    for body in result.raw_responses:
        answer = str(body.get("id"))
        produced = run.spy.produced.get(answer)
        assert produced is not None, f"{plan}: reports {answer!r}, never produced"
        assert claimed.setdefault(answer, id(outcome)) == id(outcome), f"{plan}: {answer} twice"
        assert produced.endpoint == ENDPOINTS[plan.client], f"{plan}: the other Client's"
        assert (produced.model, produced.dimensions) == (MODEL, size(plan.dimensions)), plan
        assert produced.tick > outcome.started, f"{plan}: {answer} is older than the call"
        sent += produced.texts
    assert len(sent) == len(set(sent)) == result.misses, f"{plan}: sent {sent}, {result}"
    assert set(sent) <= set(plan.texts), f"{plan}: sent {sent}"
    assert result.usage.prompt_tokens == sum(map(count_tokens, sent)), plan


def check_outcome(run: Run, outcome: Outcome, claimed: dict[str, int], served: Served) -> None:
    """``outcome``'s caller ended as its plan allows; what it was given is right, and
    noted in ``served``."""
    plan, error = outcome.plan, outcome.error
    if outcome.cancel_sent:
        assert outcome.cancelled, f"{plan}: its cancellation was swallowed: {outcome}"
        return
    assert not outcome.cancelled, f"{plan}: cancelled, but not by the test"
    given: list[list[float] | None] = []
    if error is None:
        check_served(run, outcome, claimed)
        assert outcome.result is not None
        given += outcome.result.vectors
    elif outcome.faulty and isinstance(error, EmbeddingBatchError):
        # The inputs that were embedded are given, and right.
        given = error.vectors
        assert error.failed == tuple(i for i, v in enumerate(given) if v is None), plan
        assert error.failed, f"{plan}: a batch error that failed nothing"
        check_vectors(plan, given)
    elif outcome.faulty and isinstance(error, APIError):
        pass  # its timeout, in a wave with upstream faults (its retries cut short)
    elif plan.stop == "timeout":
        assert isinstance(error, APITimeoutError), f"{plan}: raised {error!r}"
    else:
        raise AssertionError(f"{plan}: raised {error!r}") from error
    for text, key, vector in zip(plan.texts, outcome.keys, given, strict=False):
        if vector is not None:
            served.add((plan.client, text, plan.dimensions, key))


def check_stats(run: Run) -> None:
    """Each Client's Stats count its callers' inputs as its callers saw them (a caller
    cancelled counts none; one whose batch failed counts every input, unseen)."""
    for index, client in enumerate(run.clients):
        mine = [o for o in run.outcomes if o.plan.client == index and not o.cancel_sent]
        results = [o.result for o in mine if o.result is not None]
        failed = [o for o in mine if isinstance(o.error, EmbeddingBatchError)]
        stats = client.stats
        counted = (stats.embedding_hits, stats.embedding_misses, stats.embedding_coalesced)
        seen = (
            sum(r.hits for r in results),
            sum(r.misses for r in results),
            sum(r.coalesced for r in results),
        )
        unseen = sum(len(o.plan.texts) for o in failed)
        assert sum(counted) == sum(seen) + unseen, f"client {index}: {stats}"
        assert all(c >= s for c, s in zip(counted, seen, strict=True)), f"client {index}"
        assert stats.errors == sum(isinstance(o.error, APIError) for o in mine), stats
        ended_cancelled = [o for o in run.outcomes if o.plan.client == index and o.cancelled]
        assert stats.cancelled <= len(ended_cancelled), stats  # some never started
        # A failed batch's answered requests were paid for too: its error carries them.
        paid = [r.usage for r in results]
        paid += [o.error.usage for o in mine if isinstance(o.error, EmbeddingBatchError)]
        # And so were those of callers that left: counted as they ended, never more than
        # its endpoint answered (a request cut at its deadline was answered, not read).
        answered = [p for p in run.spy.produced.values() if p.endpoint == ENDPOINTS[index]]
        seen_tokens = sum(u.prompt_tokens for u in paid)
        answered_tokens = sum(p.tokens for p in answered)
        assert seen_tokens <= stats.prompt_tokens <= answered_tokens, stats
        assert stats.requests == 0, "embed() calls counted as completions"
        assert stats.corrupt == 0, f"client {index} read an entry not bound to its key"
        # Every answer its endpoint gave was a request it counted.
        assert stats.embedding_requests >= len(answered), f"client {index}: {stats}"


def one_key(keys: Keys) -> dict[tuple[str, int | None], str]:
    """Each input's key: one per (text, dimensions), never another's, nor a guessed one."""
    assert all(len(found) == 1 for found in keys.known.values()), keys.known
    single = {input: next(iter(found)) for input, found in keys.known.items()}
    assert len(set(single.values())) == len(single), "two inputs share a key"
    assert not keys.guessed & set(single.values()), "a guessed scope gave a known key"
    return single


# -- the soak ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_every_vector_is_its_inputs_and_nothing_is_left_behind(
    seed: int,
    spy: tuple[FakeGateway, SpyEmbeddings],
    shared: Shared,
    ticks: Iterator[int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway, embeddings = spy
    keys, followed = spy_on_keys(monkeypatch), spy_on_follows(monkeypatch)
    following = spy_on_following(monkeypatch)
    waves = draw(seed)
    a, b = (make_client(gateway, shared.tiered(n), ENDPOINTS[n]) for n in (0, 1))
    run = Run(gateway, embeddings, (a, b), shared, ticks)
    claimed: dict[str, int] = {}
    served: Served = set()
    async with a, b:
        for wave in waves:
            await run.wave(wave)

        for outcome in run.outcomes:
            check_outcome(run, outcome, claimed, served)
        one_key(keys)
        await check_leases(shared, keys)
        check_stats(run)

        # What the run covered: every kind of answer and of adversity.
        results = [o.result for o in run.outcomes if o.result is not None]
        totals = Counter[str]()
        for result in results:
            totals.update(hits=result.hits, misses=result.misses, coalesced=result.coalesced)
        assert min(totals["hits"], totals["misses"], totals["coalesced"]) > 0, totals
        assert any(o.cancel_sent for o in run.outcomes)
        assert any(isinstance(o.error, APITimeoutError) for o in run.outcomes)
        assert shared.killed > 0 or not shared.admins or not any(w.kills for w in waves)

        async with asyncio.timeout(WAVE_DEADLINE):
            await shared.recovered()
        assert [client.stats.breaker_state for client in run.clients] == ["closed", "closed"]

        # One input followed across processes for certain: client 1 is given what client
        # 0 sent, and sends nothing.
        scene = tuple(f"soak {seed}, followed across: {n}" for n in range(2))
        leading, trailing = await run.followed_across(following, scene)
        for outcome in (leading, trailing):
            check_outcome(run, outcome, claimed, served)
        assert leading.result is not None and leading.result.misses == len(scene)
        assert trailing.result is not None and trailing.result.coalesced == len(scene)
        assert set(trailing.keys) <= set(followed), "client 1 did not follow client 0"
        # Vectors a Client served though its endpoint never answered them: the other's.
        asked = {
            (ENDPOINTS.index(p.endpoint), text, p.dimensions)
            for p in embeddings.produced.values()
            for text in p.texts
        }
        crossed = {(c, t, d) for c, t, d, _ in served if (c, t, size(d)) not in asked}
        assert {(1, text, None) for text in scene} <= crossed

        # A last pass of every input through both Clients, once every write behind has
        # landed: from the cache whenever an entry exists (a Client's own vectors are in
        # its memory tier), and the same vector from both.
        for text in passages():
            for dimensions in DIMENSIONS:
                key = one_key(keys).get((text, dimensions))
                stored = key is not None and await shared.holds(key)
                vectors = []
                for client in (0, 1):
                    outcome = Outcome(Plan(WAVES, client, (text,), dimensions), faulty=False)
                    run.outcomes.append(outcome)
                    await run.call(outcome)
                    check_outcome(run, outcome, claimed, set())
                    assert outcome.result is not None
                    assert key is None or outcome.keys == [key], outcome.plan
                    # Given under a guessed scope, it is in no tier under ``key``.
                    if stored or (client, text, dimensions, key) in served:
                        assert outcome.result.hits == 1, (outcome.plan, stored)
                    vectors += outcome.result.vectors
                assert vectors[0] == vectors[1], f"{text!r}: the Clients disagree"
        check_stats(run)
        await check_leases(shared, keys)

    await check_leases(shared, keys)
    assert limpet_tasks() == []
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == []


async def check_leases(shared: Shared, keys: Keys) -> None:
    """No lease is left but those whose release the shared tier refused."""
    assert await shared.stray_leases(keys.all()) == set()
