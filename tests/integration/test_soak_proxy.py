"""A seeded soak of ``limpet serve``: tenants never get each other's answers or keys.

Two proxies (two "processes": two serve apps on loopback, each its own Client and memory
tier, sharing one Redis tier under the test's prefix) forward their callers' keys to one
FakeGateway that takes any key. Four tenants, each with its own API key, call both over
real HTTP with the ``openai`` SDK (``max_retries=0``): waves of chat completions, plain
and ``stream=True`` (read to the end, or closed part-way), over a few near-identical
prompts that every tenant asks, so identical requests from different tenants arrive at
both proxies at once. The chat soak's adversity (``soak_adversity``) runs under them:
callers cancelled after a number of event-loop turns (their connection drops
mid-request; one proxy runs its handler on, the other cancels it), every Redis
connection of both Clients killed at random turns, one Client's shared tier down for the
rest of a wave, and upstream faults in some waves, among them errors that echo the
caller's key back.

The oracle is the gateway: ``TenantSpy`` records every answer it produced, the request
it answered and the ``Authorization`` it was sent with. Every answer a tenant received
must have been produced for exactly its request under its own key, whole (a stream's
ids and text assemble to it; a stream closed part-way got a prefix of it); a miss must
be the caller's own fresh answer; each (tenant, request) has one cache key, and tenants
never share one. Afterwards a tenant's repeat is a hit wherever its entry is, while a
new tenant asking every request is never served another's entry; no byte any tenant read
holds an API key; and once the proxies have stopped no lease is left (but those whose
release the shared tier refused) and no limpet task runs. Nothing here sleeps: waves are
ordered by event-loop turns and by waiting on the calls and the proxies' handlers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import openai
import pytest

from tests.integration.soak import fingerprint
from tests.integration.soak_adversity import WAVE_DEADLINE, Shared
from tests.integration.soak_proxy import (
    LATENCY,
    REQUESTS,
    SEEDS,
    TENANTS,
    WAVES,
    Outcome,
    Plan,
    Run,
    TenantSpy,
    draw,
    serving,
)
from tests.integration.soak_tiers import tier_params
from tests.integration.test_lifecycle import limpet_tasks

SERVED = ("hit", "miss", "coalesced")
ECHO_STREAM = "gen-echo"  # the id of the FakeGateway's error stream that echoes a key


@pytest.fixture
async def spy(ticks: Iterator[int]) -> AsyncIterator[TenantSpy]:
    async with TenantSpy(ticks, endpoints=("a",), latency=LATENCY) as gw:  # any key, or none
        yield gw


def check_received(run: Run, outcome: Outcome, keys: dict[tuple[int, int], str]) -> str | None:
    """Everything ``outcome``'s tenant received was produced for its request under its own
    key, whole or (a stream it left, or one that failed) a prefix; returns how a whole
    answer was served (``X-Limpet-Cache``)."""
    plan, gateway = outcome.plan, run.gateway
    own, asked = run.authorization(plan.tenant), fingerprint(run.requests[plan.prompt])
    ids = [chunk.id for chunk in outcome.chunks]
    if ECHO_STREAM in ids:  # the opening of an upstream's error stream that quotes the key
        assert outcome.error is not None, f"{plan}: an error stream read as an answer"
        assert not any(c.choices and c.choices[0].delta.content for c in outcome.chunks), plan
        assert set(ids) == {ECHO_STREAM}, f"{plan}: an error stream and an answer: {set(ids)}"
        return None
    if outcome.completion is not None:
        ids.append(outcome.completion.id)
    for answer in set(ids):
        assert answer in gateway.asked, f"{plan}: served {answer!r}, which was never produced"
        sent_with = gateway.sent_with[answer]
        if sent_with != own:
            tenant = run.keys.index(sent_with.removeprefix("Bearer ")) if sent_with else None
            raise AssertionError(f"{plan}: served {answer!r}, produced for tenant {tenant}")
        assert gateway.asked[answer] == asked, f"{plan}: served {answer!r}, for another request"
    if outcome.completion is not None:
        content = outcome.completion.choices[0].message.content
        assert content == gateway.text[ids[0]], f"{plan}: not the whole answer"
    if outcome.chunks:
        assert len(set(ids)) == 1, f"{plan}: one stream, several answers: {set(ids)}"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in outcome.chunks if chunk.choices
        )
        whole = gateway.text[ids[0]]
        assert text == whole if outcome.whole else whole.startswith(text), f"{plan}: {text!r}"
    if not outcome.whole:
        return None
    assert ids, f"{plan}: a whole answer with nothing in it"
    served = run.received[plan.call].served()
    status = served.get("x-limpet-cache")
    assert status in SERVED, f"{plan}: served as {served}"
    if status == "miss":
        # Its own upstream request, sent after it started, or one a call of its request
        # through its proxy started and left to it (hung up; the flight's claim passes
        # on): not anything older.
        produced = gateway.produced_at[ids[0]]
        assert produced > outcome.started or any(
            left_to(other, outcome, produced) for other in run.outcomes
        ), f"{plan}: a miss not its own"
    key = served["x-limpet-key"]
    assert keys.setdefault((plan.tenant, plan.prompt), key) == key, f"{plan}: a second key"
    return status


def left_to(other: Outcome, outcome: Outcome, produced: int) -> bool:
    """Whether ``other`` is a call of ``outcome``'s tenant and request through the same
    proxy that started before the answer produced at ``produced`` and left without it."""
    plan, mine = other.plan, outcome.plan
    return (
        other is not outcome
        and (plan.tenant, plan.proxy, plan.prompt) == (mine.tenant, mine.proxy, mine.prompt)
        and other.started < produced
        and not other.whole
    )


def check_outcome(run: Run, outcome: Outcome, keys: dict[tuple[int, int], str]) -> str | None:
    """``outcome``'s tenant ended as its plan allows, and what it received is its own."""
    plan, error = outcome.plan, outcome.error
    status = check_received(run, outcome, keys)
    if outcome.cancel_sent:
        assert outcome.cancelled, f"{plan}: its cancellation was swallowed: {outcome}"
        return None
    assert not outcome.cancelled, f"{plan}: cancelled, but not by the test"
    if error is not None:
        assert outcome.faulty, f"{plan}: raised {error!r}"
        assert isinstance(error, openai.APIError), f"{plan}: raised {error!r}"
    else:
        assert outcome.whole or plan.stop == "abandon", f"{plan}: ended with nothing"
    return status


def check_no_keys(run: Run) -> None:
    """No byte any tenant read (headers or body) holds an API key, even its own."""
    for call, received in run.received.items():
        seen = received.raw_headers + bytes(received.body)
        for tenant, key in enumerate(run.keys):
            assert key.encode() not in seen, f"call {call}: tenant {tenant}'s key: {seen!r}"


@pytest.mark.parametrize("shared", tier_params("redis"), indirect=True)
@pytest.mark.parametrize("seed", SEEDS)
async def test_soak_proxy_tenants_get_only_their_own_answers_and_nothing_is_left_behind(
    seed: int,
    spy: TenantSpy,
    shared: Shared,
    ticks: Iterator[int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    waves = draw(seed)
    late = TENANTS  # a tenant that asks only at the end, when every other's entries exist
    keys = [f"sk-soak-{tenant}-{uuid.uuid4().hex}" for tenant in range(TENANTS + 1)]
    served: dict[tuple[int, int], str] = {}  # (tenant, prompt) -> cache key
    async with serving(spy, shared, monkeypatch) as fleet:
        run = Run(spy, shared, fleet, ticks, keys)
        async with run.tenants():
            # Each Client reads each tenant's generations once, before any adversity (a
            # first read that fails would give a request a second key, as in the chat
            # soak). ``forget()`` keys its request: it reads them.
            for client in fleet.clients:
                for tenant in range(len(keys)):
                    auth = {"Authorization": run.authorization(tenant)}
                    await client.forget(**run.requests[0], extra_headers=auth)
            for wave in waves:
                await run.wave(wave)

            statuses = Counter(check_outcome(run, o, served) for o in run.outcomes)
            assert len(set(served.values())) == len(served), "two tenants or requests share a key"
            # What the run covered.
            assert statuses.keys() >= {*SERVED}, statuses
            assert any(o.cancel_sent for o in run.outcomes)
            assert any(o.plan.stop == "abandon" and not o.whole for o in run.outcomes)
            assert shared.killed > 0 or not any(w.kills for w in waves)
            led = {}  # answer -> the proxy whose caller went upstream for it
            for o in run.outcomes:
                if o.whole and run.received[o.plan.call].served()["x-limpet-cache"] == "miss":
                    answer = o.completion.id if o.completion else o.chunks[0].id
                    assert answer not in led, f"{o.plan}: {answer} was already another's miss"
                    led[answer] = o.plan.proxy
            crossed = [
                o
                for o in run.outcomes
                if o.whole
                and led.get((o.completion or o.chunks[0]).id, o.plan.proxy) != o.plan.proxy
            ]
            assert crossed, "no answer went from one proxy to the other"

            # Once every write behind has landed: a tenant's repeat is a hit wherever its
            # entry is (a proxy's own answers are in its memory tier), and a new tenant
            # asking what every other tenant has an entry for is never served one of them.
            async with asyncio.timeout(WAVE_DEADLINE):
                await shared.recovered()
            answered = {
                (o.plan.proxy, o.plan.tenant, o.plan.prompt)
                for o in run.outcomes
                if o.whole and o.error is None
            }
            calls = itertools.count(max(run.received) + 1)
            for tenant, prompt in itertools.product(range(TENANTS), range(REQUESTS)):
                key = served.get((tenant, prompt))
                stored = key is not None and await shared.holds(key)
                for proxy in (0, 1):
                    outcome = Outcome(Plan(next(calls), WAVES, tenant, proxy, prompt), False)
                    run.outcomes.append(outcome)
                    await run.call(outcome)
                    status = check_outcome(run, outcome, served)
                    if stored or (proxy, tenant, prompt) in answered:
                        assert status == "hit", (outcome.plan, stored)
            for prompt in range(REQUESTS):
                others = [served[t, prompt] for t in range(TENANTS) if (t, prompt) in served]
                assert others, f"prompt {prompt}: no tenant has an entry"
                outcome = Outcome(Plan(next(calls), WAVES, late, prompt % 2, prompt), False)
                run.outcomes.append(outcome)
                await run.call(outcome)
                assert check_outcome(run, outcome, served) == "miss", outcome.plan
            assert len(set(served.values())) == len(served), "two tenants or requests share a key"

    check_no_keys(run)
    assert await shared.stray_leases(set(served.values())) == set()
    assert limpet_tasks() == []
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert unretrieved == []
    # A caller hanging up, an upstream fault: none is a fault of the proxy's own.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
