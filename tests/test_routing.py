"""StickyRouter: routing keys, HRW, bounded load, passive health, affinity, feedback.

Pure: no event loop except where the shared affinity store is exercised, and the fake
provider cache stands in for endpoints, so "the turn lands where the previous turn's
prefix is cached" is checked as cache reads, not only as endpoint names.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import pytest

from limpet.config import Endpoint, RoutingConfig
from limpet.errors import (
    APIConnectionError,
    BadRequestError,
    CacheUnavailableError,
    ConfigurationError,
    InternalServerError,
    RateLimitError,
    status_error,
)
from limpet.http.retrying import QueuedTooLong
from limpet.models import Usage
from limpet.pipeline.keys import canonical_request, request_key
from limpet.routing.health import is_endpoint_fault
from limpet.routing.prefix import prefix_chain
from limpet.routing.sticky import Route, Router, StickyRouter, hrw_rank, routing_key
from limpet.testing.provider_cache import ProviderPromptCache
from limpet.testing.tokens import count_prompt_tokens
from tests.fakes import FakeClock

MODEL = "anthropic/claude-sonnet-4.6"
CC = {"type": "ephemeral"}
SYSTEM = "You answer from the document, briefly. " * 120  # ~1,200 tokens: cacheable alone


def endpoints(n: int = 4, weights: Sequence[float] | None = None) -> list[Endpoint]:
    weights = weights or [1.0] * n
    return [Endpoint(f"e{i}", "http://gateway.test", weight=weights[i]) for i in range(n)]


def router(n: int = 4, clock: FakeClock | None = None, **config: Any) -> StickyRouter:
    return StickyRouter(endpoints(n), config=RoutingConfig(**config), clock=clock or FakeClock())


def text(value: str, mark: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": value}
    if mark:
        block["cache_control"] = CC
    return block


def rag(doc: str, question: str, model: str = MODEL) -> dict[str, Any]:
    """A RAG request: a shared system prompt and a document, each marked; then a question."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": [text(SYSTEM, mark=True)]},
            {"role": "user", "content": [text(doc, mark=True), text(question)]},
        ],
        "temperature": 0,
    }


def document(name: str) -> str:
    return f"Document {name}. " + "It says many things about limpets. " * 300


def chat(
    history: list[dict[str, Any]], question: str, *, system_mark: bool = False
) -> dict[str, Any]:
    """A chat turn with a rolling breakpoint on the newest user turn; history as strings."""
    system = {"role": "system", "content": [text(SYSTEM, mark=system_mark)]}
    return {
        "model": MODEL,
        "messages": [system, *history, {"role": "user", "content": [text(question, mark=True)]}],
    }


def serve(r: StickyRouter, body: dict[str, Any], usage: Usage | None = None) -> str:
    route = r.select(body)
    with route.attempt(route.endpoints[0]) as attempt:
        attempt.served(usage)
    return route.endpoints[0].name


def fail(r: StickyRouter, body: dict[str, Any], exc: Exception | None = None) -> str:
    route = r.select(body)
    error = exc or InternalServerError("upstream down", status_code=503)
    with pytest.raises(type(error)), route.attempt(route.endpoints[0]):
        raise error
    return route.endpoints[0].name


def first(r: StickyRouter, body: dict[str, Any]) -> str:
    return r.select(body).endpoints[0].name


# --- HRW -----------------------------------------------------------------------------------


def test_hrw_respects_weights() -> None:
    eps = endpoints(4, weights=[2, 1, 1, 1])
    counts = Counter(hrw_rank(f"key {i}", eps)[0].name for i in range(5000))
    assert counts["e0"] / 5000 == pytest.approx(0.4, abs=0.03)


def test_a_thousand_random_prefixes_spread_evenly_over_four_endpoints() -> None:
    r = router()
    counts = Counter(first(r, rag(f"doc {i}", "q")) for i in range(1000))
    assert set(counts) == {"e0", "e1", "e2", "e3"}
    for count in counts.values():
        assert 200 <= count <= 300  # 25% +/- 5%


def test_removing_an_endpoint_moves_only_its_keys() -> None:
    four, three = router(4), StickyRouter(endpoints(4)[:3], clock=FakeClock())
    moved = 0
    for i in range(1000):
        body = rag(f"doc {i}", "q")
        before, after = first(four, body), first(three, body)
        if before == "e3":
            moved += 1
            assert after == four.select(body).endpoints[1].name  # its own next choice
        else:
            assert after == before
    assert 200 <= moved <= 300


# --- The three routing cases of the issue -----------------------------------------------------


@pytest.mark.parametrize("system_mark", [False, True], ids=["rolling", "system+rolling"])
def test_a_rolling_chat_stays_on_one_endpoint_and_reads_its_history(system_mark: bool) -> None:
    r = router()
    caches = {e.name: ProviderPromptCache() for e in r.endpoints}
    history: list[dict[str, Any]] = []
    seen, fresh = set(), set()
    for turn in range(8):
        question = f"Turn {turn}: tell me more about limpets. " + "Details please. " * 80
        body = chat(history, question, system_mark=system_mark)
        name = first(r, body)
        fresh.add(first(router(), body))  # a process with no state at all agrees
        seen.add(name)
        result = caches[name].account(MODEL, body, count_prompt_tokens(body), now=turn * 10.0)
        if turn:
            assert result.cached_tokens > 0, f"turn {turn} missed the previous turn's cache"
        serve(r, body)
        history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"Answer {turn}. " * 20},
        ]
    assert len(seen) == 1 and fresh == seen


def test_rolling_chats_spread_by_conversation_even_with_a_shared_system_breakpoint() -> None:
    r = router()
    counts = Counter(
        first(r, chat([], f"conversation {i} opens", system_mark=True)) for i in range(400)
    )
    assert min(counts.values()) >= 70


def test_a_chat_keeping_its_old_markers_stays_put() -> None:
    r = router()
    turn1 = chat([], "first question")
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [text("first question", mark=True)]},
        {"role": "assistant", "content": "first answer"},
    ]
    turn2 = chat(history, "second question")
    assert routing_key(prefix_chain(turn1)) == routing_key(prefix_chain(turn2))
    assert first(r, turn1) == first(r, turn2)


def test_rag_requests_spread_by_document_not_by_the_shared_system_prompt() -> None:
    r = router()
    caches = {e.name: ProviderPromptCache() for e in r.endpoints}
    homes: dict[int, set[str]] = {}
    for round_ in range(3):
        for doc in range(40):
            body = rag(document(str(doc)), f"question {round_}")
            name = first(r, body)
            homes.setdefault(doc, set()).add(name)
            result = caches[name].account(MODEL, body, count_prompt_tokens(body), now=1.0)
            if round_:
                assert result.cached_tokens >= count_prompt_tokens(body) - 20
            serve(r, body)
    assert all(len(names) == 1 for names in homes.values())
    per_endpoint = Counter(next(iter(names)) for names in homes.values())
    assert len(per_endpoint) == 4 and max(per_endpoint.values()) <= 20


def test_a_document_marked_inside_the_first_turn_of_a_chat_routes_by_the_document() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": [text(SYSTEM, mark=True)]},
            {"role": "user", "content": [text(document("x"), mark=True), text("q", mark=True)]},
        ],
    }
    key = routing_key(prefix_chain(body))
    assert key.kind == "breakpoint" and key.depth == 1


ROUTED_BODIES = [
    rag(document("alpha"), "what?"),
    chat([], "hello", system_mark=True),
    {"model": MODEL, "messages": [{"role": "user", "content": "no breakpoint at all"}]},
    {"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "automatic"}]},
]


def test_fresh_routers_and_fresh_processes_route_a_cold_prefix_identically() -> None:
    ours = [[e.name for e in router().select(b).endpoints] for b in ROUTED_BODIES]
    assert ours == [[e.name for e in router().select(b).endpoints] for b in ROUTED_BODIES]
    script = (
        "import json, sys\n"
        "from limpet.config import Endpoint\n"
        "from limpet.routing.sticky import StickyRouter\n"
        "eps = [Endpoint(f'e{i}', 'http://gateway.test') for i in range(4)]\n"
        "bodies = json.load(sys.stdin)\n"
        "print(json.dumps([[e.name for e in StickyRouter(eps).select(b).endpoints]"
        " for b in bodies]))\n"
    )
    theirs = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(ROUTED_BODIES),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(theirs.stdout) == ours


def test_unmarked_requests_follow_the_conversation_or_spread() -> None:
    by_conversation = router()
    opening = [{"role": "system", "content": "sys"}, {"role": "user", "content": "first"}]
    later = [*opening, {"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    assert first(by_conversation, {"model": MODEL, "messages": opening}) == first(
        by_conversation, {"model": MODEL, "messages": later}
    )
    spread = router(unmarked="spread")
    route = spread.select({"model": MODEL, "messages": opening})
    assert route.reason == "spread" and route.key is not None and route.key.key is None
    names = [first(spread, {"model": MODEL, "messages": opening}) for _ in range(8)]
    assert Counter(names) == {"e0": 2, "e1": 2, "e2": 2, "e3": 2}


def test_spread_prefers_the_least_loaded_endpoint() -> None:
    r = router(unmarked="spread")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    with ExitStack() as stack:
        for _ in range(6):
            route = r.select(body)
            stack.enter_context(route.attempt(route.endpoints[0]))
        assert sorted(s.in_flight for s in r.status().values()) == [1, 1, 2, 2]


# --- Bounded load ------------------------------------------------------------------------------


def same_home(r: StickyRouter, body: dict[str, Any], ttl: str | None = None) -> Any:
    """Another document whose cold route starts where ``body``'s does."""
    home = first(r, body)
    for i in range(200):
        other = rag(document(f"neighbour {i}"), "q")
        if ttl:
            other["messages"][1]["content"][0]["cache_control"] = {**CC, "ttl": ttl}
        if first(r, other) == home:
            return other
    raise AssertionError("no neighbour found")


def hold(r: StickyRouter, bodies: Sequence[dict[str, Any]], stack: ExitStack) -> list[Route]:
    """Start a call for each body and keep it in flight until ``stack`` closes."""
    routes = []
    for body in bodies:
        route = r.select(body)
        stack.enter_context(route.attempt(route.endpoints[0]))
        routes.append(route)
    return routes


def test_a_hot_prefix_keeps_max_over_mean_in_flight_within_1_plus_e() -> None:
    e = 0.25
    r = router(max_overload=e, load_floor=1)
    hot = rag(document("hot"), "q")
    with ExitStack() as stack:
        routes = hold(r, [hot] * 400, stack)
        loads = [s.in_flight for s in r.status().values()]
        assert sum(loads) == 400
        assert max(loads) / (400 / 4) <= 1 + e
        assert {route.reason for route in routes} == {"hash", "spill", "affinity"}
        assert r.stats.spilled > 0
    assert all(s.in_flight == 0 for s in r.status().values())


def test_bounded_load_never_exceeds_its_cap_as_load_builds() -> None:
    e, floor = 0.5, 2
    r = router(max_overload=e, load_floor=floor)
    bodies = [rag(document("hot"), f"q{i}") if i % 3 else rag(f"doc {i}", "q") for i in range(300)]
    with ExitStack() as stack:
        for count, body in enumerate(bodies, start=1):
            hold(r, [body], stack)
            loads = [s.in_flight for s in r.status().values()]
            assert max(loads) <= max(floor, math.ceil((1 + e) * count / 4))


def test_a_burst_under_the_floor_never_spills() -> None:
    r = router(load_floor=8)
    hot = rag(document("hot"), "q")
    with ExitStack() as stack:
        routes = hold(r, [hot] * 8, stack)
    assert {route.endpoints[0].name for route in routes} == {first(r, hot)}
    assert r.stats.spilled == 0


def test_a_spilled_prefix_stays_where_its_cache_now_lives() -> None:
    clock = FakeClock()
    r = router(clock=clock, load_floor=4, max_overload=0.0)
    hot = rag(document("hot"), "q")
    home = first(r, hot)
    other = same_home(r, hot)
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)  # the floor: all four stay home
        moved = r.select(other)
        assert moved.reason == "spill" and moved.endpoints[0].name != home
        with moved.attempt(moved.endpoints[0]) as attempt:
            attempt.served()
    again = r.select(other)
    assert again.reason == "affinity"
    assert again.endpoints[0] == moved.endpoints[0]
    # The pin lasts the provider's cache TTL after its last use, then the key goes home.
    clock.now += 200
    assert serve(r, other) == moved.endpoints[0].name
    clock.now += 299
    assert first(r, other) == moved.endpoints[0].name
    clock.now += 301
    assert r.select(other).reason == "hash" and first(r, other) == home


def test_affinity_is_never_read_above_the_routing_key() -> None:
    r = router(load_floor=4, max_overload=0.0)
    docs = [rag(document(f"d{i}"), "q") for i in range(200)]
    home = first(r, docs[0])
    with ExitStack() as stack:
        hold(r, [docs[0]] * 4, stack)
        spilled = r.select(docs[0])
        with spilled.attempt(spilled.endpoints[0]) as attempt:
            attempt.served()
    assert spilled.endpoints[0].name != home
    # Other documents share the system prompt's link with docs[0], but not its pin.
    for body in docs[1:]:
        route = r.select(body)
        assert route.reason == "hash"


def test_a_1h_breakpoint_pins_for_an_hour() -> None:
    clock = FakeClock()
    r = router(clock=clock, load_floor=4, max_overload=0.0)
    hot = rag(document("hot"), "q")
    body = same_home(r, hot, ttl="1h")
    home = first(r, body)
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)
        moved = r.select(body)
        with moved.attempt(moved.endpoints[0]) as attempt:
            attempt.served()
    clock.now += 3000
    assert first(r, body) == moved.endpoints[0].name != home


def test_the_affinity_map_is_bounded() -> None:
    r = router(affinity_size=10)
    for i in range(50):
        serve(r, rag(f"doc {i}", "q"))
    assert len(r._affinity) <= 10


# --- Passive health ----------------------------------------------------------------------------


def keys_by_endpoint(r: StickyRouter, count: int = 400) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for i in range(count):
        body = rag(f"doc {i}", "q")
        found.setdefault(first(r, body), []).append(body)
    return found


def test_a_failing_endpoint_is_ejected_and_its_keys_move_each_to_one_other_endpoint() -> None:
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=3, cooldown=30.0)
    keys = keys_by_endpoint(r)
    doomed = keys["e0"]
    next_choices = [r.select(body).endpoints[1].name for body in doomed]
    for _ in range(3):
        assert fail(r, doomed[0]) == "e0"
    assert r.status()["e0"].state == "ejected"
    assert r.stats.ejections == 1
    moved = [r.select(body) for body in doomed]
    assert [route.endpoints[0].name for route in moved] == next_choices
    assert {route.reason for route in moved} == {"failover"}
    assert len(set(next_choices)) == 3  # spread over the others, not piled on one
    for name in ("e1", "e2", "e3"):
        assert all(first(r, body) == name for body in keys[name])
    # Another process that saw the same failures moves the same keys the same way.
    other = router(clock=clock, failure_threshold=3)
    for _ in range(3):
        fail(other, doomed[0])
    assert [first(other, body) for body in doomed] == next_choices
    # The ejected endpoint is still the last resort.
    assert moved[0].endpoints[-1].name == "e0"


def test_keys_return_after_the_cooldown_through_one_probe() -> None:
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=2, cooldown=30.0)
    doomed = keys_by_endpoint(r)["e0"]
    fail(r, doomed[0])
    fail(r, doomed[0])
    # Served elsewhere meanwhile: a failover is not pinned.
    served_elsewhere = serve(r, doomed[1])
    assert served_elsewhere != "e0"
    clock.now += 30
    assert r.status()["e0"].state == "half_open"
    probe = r.select(doomed[1])
    assert probe.endpoints[0].name == "e0"
    with probe.attempt(probe.endpoints[0]) as attempt:
        assert attempt.probe
        # While the probe is out, the endpoint's other keys stay away.
        assert first(r, doomed[2]) != "e0"
        attempt.served()
    assert r.status()["e0"].state == "healthy"
    assert r.stats.recoveries == 1
    assert all(first(r, body) == "e0" for body in doomed)


def test_a_failed_probe_ejects_again_for_twice_as_long() -> None:
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=1, cooldown=10.0, max_cooldown=15.0)
    body = keys_by_endpoint(r)["e0"][0]
    fail(r, body)
    clock.now += 10
    assert fail(r, body) == "e0"  # the probe
    assert r.status()["e0"].ejected_for == pytest.approx(15.0)  # doubled, capped
    clock.now += 15
    assert first(r, body) == "e0"


def test_another_calls_failure_during_the_probe_neither_doubles_nor_ends_it() -> None:
    # A last-resort call to the ejected endpoint, begun before the probe, fails while the
    # probe is out: it was taken for the probe's failure (the cool-down doubled, and a
    # second probe let through).
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=1, cooldown=10.0, max_cooldown=100.0)
    body = keys_by_endpoint(r)["e0"][0]
    fail(r, body)
    last_resort = r.select(body)
    assert last_resort.endpoints[-1].name == "e0"
    clock.now += 10
    probe = r.select(body)
    with probe.attempt(probe.endpoints[0]) as attempt:
        assert attempt.probe
        with (
            pytest.raises(InternalServerError),
            last_resort.attempt(last_resort.endpoints[-1]) as other,
        ):
            assert not other.probe
            raise InternalServerError("still down for this one", status_code=502)
        assert r.status()["e0"].state == "half_open"
        assert first(r, body) != "e0"  # the probe is still out: no second one
        attempt.served()
    assert r.status()["e0"].state == "healthy"


def test_another_call_released_during_the_probe_lets_no_second_probe_through() -> None:
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=1, cooldown=10.0)
    body = keys_by_endpoint(r)["e0"][0]
    fail(r, body)
    last_resort = r.select(body)
    clock.now += 10
    probe = r.select(body)
    with probe.attempt(probe.endpoints[0]) as attempt:
        assert attempt.probe
        with pytest.raises(asyncio.CancelledError), last_resort.attempt(last_resort.endpoints[-1]):
            raise asyncio.CancelledError
        assert first(r, body) != "e0"  # still the one probe
        attempt.served()
    assert r.status()["e0"].state == "healthy"


def test_retry_after_longer_than_the_cooldown_is_honoured() -> None:
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=1, cooldown=10.0)
    body = keys_by_endpoint(r)["e0"][0]
    fail(r, body, RateLimitError("slow down", status_code=429, retry_after=120.0))
    clock.now += 60
    assert first(r, body) != "e0"
    clock.now += 60
    assert first(r, body) == "e0"


def test_a_single_error_never_repins() -> None:
    r = router(failure_threshold=3)
    body = keys_by_endpoint(r)["e0"][0]
    route = r.select(body)
    # The first choice fails once; the call fails over and succeeds on the next endpoint.
    with pytest.raises(InternalServerError), route.attempt(route.endpoints[0]):
        raise InternalServerError("blip", status_code=502)
    with route.attempt(route.endpoints[1]) as attempt:
        attempt.served()
    assert r.stats.retried_elsewhere == 1
    assert first(r, body) == "e0"
    assert r.select(body).reason == "hash"  # nothing was pinned by the failover
    fail(r, body)
    assert first(r, body) == "e0"  # two failures in a row: still below the threshold
    serve(r, body)
    fail(r, body)
    fail(r, body)
    assert first(r, body) == "e0"  # a success in between reset the count


def test_request_errors_and_cancellation_say_nothing_about_the_endpoint() -> None:
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=1, cooldown=10.0)
    body = keys_by_endpoint(r)["e0"][0]
    fail(r, body, BadRequestError("bad tool schema", status_code=400))
    assert r.status()["e0"].state == "healthy"
    fail(r, body)
    clock.now += 10
    probe = r.select(body)
    with pytest.raises(asyncio.CancelledError), probe.attempt(probe.endpoints[0]):
        raise asyncio.CancelledError
    assert r.status()["e0"].state == "half_open"
    assert first(r, body) == "e0"  # the probe slot is free again


def refusal(status: int) -> Exception:
    return status_error(status)("refused", status_code=status)


@pytest.mark.parametrize(
    ("status", "by_endpoint", "by_caller"),
    [
        (400, False, False),
        (401, True, False),
        (402, True, False),
        (403, True, False),
        (404, False, False),
        (408, True, True),
        (409, True, True),
        (422, False, False),
        (429, True, False),
        (500, True, True),
        (503, True, True),
    ],
)
def test_a_refusal_of_the_callers_own_credentials_is_no_fault_of_the_endpoint(
    status: int, by_endpoint: bool, by_caller: bool
) -> None:
    error = refusal(status)
    assert is_endpoint_fault(error) is by_endpoint
    assert is_endpoint_fault(error, callers_credentials=True) is by_caller
    dropped = APIConnectionError("reset")
    assert is_endpoint_fault(dropped) and is_endpoint_fault(dropped, callers_credentials=True)


def test_calls_with_their_callers_credentials_eject_only_on_the_endpoints_own_faults() -> None:
    clock = FakeClock()
    r = StickyRouter(
        endpoints(),
        config=RoutingConfig(failure_threshold=2),
        clock=clock,
        callers_credentials=True,
    )
    body = keys_by_endpoint(r)["e0"][0]
    for status in (401, 402, 403, 429, 401, 429):  # one caller's key after another's
        fail(r, body, refusal(status))
    assert r.status()["e0"].state == "healthy"
    assert (r.stats.failures, r.stats.ejections) == (0, 0)
    fail(r, body)
    fail(r, body)  # two 503s: the endpoint's own
    assert r.status()["e0"].state == "ejected"


def test_calls_that_time_out_queued_never_count_against_the_endpoint() -> None:
    # Regression: QueuedTooLong is an APIConnectionError, so calls whose deadline passed
    # while they waited out the endpoint's 429 pause, never sent, ejected it.
    clock = FakeClock()
    r = router(clock=clock, failure_threshold=2, cooldown=10.0)
    body = keys_by_endpoint(r)["e0"][0]
    for _ in range(5):
        assert fail(r, body, QueuedTooLong("paused past the call's deadline")) == "e0"
    assert r.status()["e0"].state == "healthy"
    assert (r.stats.failures, r.stats.ejections) == (0, 0)
    fail(r, body)
    fail(r, body)  # two 503s: the endpoint's own
    clock.now += 10
    # An unsent probe frees its slot: the next call probes the endpoint.
    assert fail(r, body, QueuedTooLong("paused")) == "e0"
    assert r.status()["e0"].state == "half_open"
    probe = r.select(body)
    with probe.attempt(probe.endpoints[0]) as attempt:
        assert attempt.probe
        attempt.served()
    assert r.status()["e0"].state == "healthy"


def test_a_request_with_no_prompt_goes_in_the_order_given_ejected_endpoints_last() -> None:
    # embed()'s requests: nothing to keep together, no provider cache to keep warm, so no
    # key and no sticky key; but the same health as every other call.
    body = {"model": "openai/text-embedding-3-small", "input": ["a limpet"]}
    gateways = [Endpoint("or", "https://openrouter.ai/api/v1"), *endpoints(2)]
    config = RoutingConfig(failure_threshold=1, prompt_cache_key=True)
    r = StickyRouter(gateways, config=config, clock=FakeClock())
    route = r.select(body)
    assert [e.name for e in route.endpoints] == ["or", "e0", "e1"]
    assert (route.reason, route.key) == ("spread", None)
    assert all(route.body_for(e) == body for e in gateways)  # no session_id, no prompt_cache_key
    fail(r, body)
    moved = r.select(body)
    assert [e.name for e in moved.endpoints] == ["e0", "e1", "or"]
    assert moved.reason == "failover"
    assert (r.stats.spread, r.stats.failed_over, r.stats.ejections) == (2, 1, 1)


def test_requests_with_no_prompt_in_flight_never_push_a_prefix_off_its_endpoint() -> None:
    # A RAG pipeline embeds and asks through one Client: a burst of embed() requests (to
    # the first endpoint given) counted in the load that bounds prompts pushed the prefixes
    # pinned there elsewhere, where their provider cache is cold.
    r = router(max_overload=0.25, load_floor=1)
    embedding = {"model": "openai/text-embedding-3-small", "input": ["a limpet"]}
    hot = next(
        body
        for body in (rag(document(f"doc {i}"), "q") for i in range(200))
        if first(r, body) == "e0"
    )
    with ExitStack() as stack:
        hold(r, [embedding] * 50, stack)
        assert r.status()["e0"].in_flight == 50  # in flight, but not in the bounding load
        route = r.select(hot)
        assert (route.endpoints[0].name, route.reason) == ("e0", "hash")
    assert r.stats.spilled == 0


def test_when_every_endpoint_is_ejected_all_are_tried_anyway() -> None:
    r = router(failure_threshold=1)
    for name in ("e0", "e1", "e2", "e3"):
        body = keys_by_endpoint(r)[name][0]
        fail(r, body)
    route = r.select(rag("anything", "q"))
    assert len(route.endpoints) == 4


# --- prompt_cache_key, feedback, configuration -------------------------------------------------


def test_prompt_cache_key_is_derived_for_openai_models_when_asked() -> None:
    body = {"model": "openai/gpt-5-mini", "messages": [{"role": "user", "content": "hi"}]}
    off = router().select(body)
    assert "prompt_cache_key" not in off.body
    on = router(prompt_cache_key=True).select(body)
    assert isinstance(on.body["prompt_cache_key"], str)
    assert (
        on.body["prompt_cache_key"]
        == router(prompt_cache_key=True).select(body).body["prompt_cache_key"]
    )
    assert "prompt_cache_key" not in body  # the caller's dict is untouched
    assert request_key(canonical_request(on.body)) == request_key(canonical_request(body))
    mine = router(prompt_cache_key=True).select({**body, "prompt_cache_key": "mine"})
    assert mine.body["prompt_cache_key"] == "mine"
    anthropic = router(prompt_cache_key=True).select(rag("d", "q"))
    assert "prompt_cache_key" not in anthropic.body


def test_a_key_that_keeps_writing_and_never_reading_shows_in_stats() -> None:
    r = router()
    thrash = rag(document("thrash"), "q")
    healthy = rag(document("fine"), "q")
    for _ in range(3):
        serve(r, thrash, Usage(prompt_tokens=5000, cache_write_tokens=4000))
    serve(r, healthy, Usage(prompt_tokens=5000, cache_write_tokens=4000))
    for _ in range(3):
        serve(r, healthy, Usage(prompt_tokens=5000, cached_tokens=4000))
    thrash_key = routing_key(prefix_chain(thrash)).key
    assert [(f.key, f.writes, f.reads) for f in r.stats.write_only()] == [(thrash_key, 3, 0)]
    assert r.stats.cached_tokens == 12_000
    assert r.stats.cache_write_tokens == 16_000
    assert r.stats.as_dict()["write_only_keys"] == 1
    spread = router(unmarked="spread")
    unmarked = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    for _ in range(4):
        serve(spread, unmarked, Usage(prompt_tokens=5000, cache_write_tokens=4000))
    assert spread.stats.key_feedback() == []  # no key to blame
    assert spread.stats.cache_write_tokens == 16_000


def test_configuration_is_validated() -> None:
    for bad in (
        {"max_overload": -0.1},
        {"load_floor": 0},
        {"unmarked": "random"},
        {"failure_threshold": 0},
        {"cooldown": 0},
        {"cooldown": 60.0, "max_cooldown": 30.0},
        {"affinity_ttl": math.inf},
        {"prompt_cache_key_models": ["openai/"]},
    ):
        with pytest.raises(ConfigurationError):
            RoutingConfig(**bad)
    with pytest.raises(ConfigurationError):
        StickyRouter([])
    with pytest.raises(ConfigurationError):
        StickyRouter([Endpoint("a", "http://x"), Endpoint("a", "http://y")])


def test_endpoint_openrouter_pins_a_provider() -> None:
    endpoint = Endpoint.openrouter("anthropic", api_key="sk-or-secret")
    assert endpoint.name == "anthropic"
    assert endpoint.base_url == "https://openrouter.ai/api/v1"
    assert endpoint.extra_body == {"provider": {"order": ["anthropic"], "allow_fallbacks": False}}
    assert "sk-or-secret" not in repr(endpoint)
    both = Endpoint.openrouter(
        ["anthropic", "amazon-bedrock"],
        name="claude",
        allow_fallbacks=True,
        extra_body={"provider": {"data_collection": "deny"}, "transforms": []},
        weight=2,
    )
    assert both.extra_body == {
        "provider": {
            "data_collection": "deny",
            "order": ["anthropic", "amazon-bedrock"],
            "allow_fallbacks": True,
        },
        "transforms": [],
    }
    assert (both.name, both.weight) == ("claude", 2)
    with pytest.raises(ConfigurationError):
        Endpoint.openrouter([])


def test_a_sticky_router_is_a_router() -> None:
    assert isinstance(router(), Router)
    assert "e0" in repr(router())


# --- The shared affinity store -----------------------------------------------------------------


class DictStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.down = False
        self.lookups = 0

    async def lookup(self, links: Sequence[str]) -> list[str | None]:
        self.lookups += 1
        if self.down:
            raise CacheUnavailableError("down")
        return [self.data.get(link) for link in links]

    async def remember(self, entries: Sequence[tuple[str, str, float]]) -> None:
        if self.down:
            raise CacheUnavailableError("down")
        for link, endpoint, _ in entries:
            self.data[link] = endpoint


@pytest.fixture
def store() -> Iterator[DictStore]:
    yield DictStore()


async def test_another_process_follows_a_spilled_prefix_through_the_store(
    store: DictStore,
) -> None:
    config = RoutingConfig(load_floor=4, max_overload=0.0)
    a = StickyRouter(endpoints(), config=config, store=store)
    b = StickyRouter(endpoints(), config=config, store=store)
    hot = rag(document("hot"), "q")
    body = same_home(a, hot)
    home = (await a.route(body)).endpoints[0].name
    with ExitStack() as stack:
        hold(a, [hot] * 4, stack)
        moved = await a.route(body)
        with moved.attempt(moved.endpoints[0]) as attempt:
            attempt.served()
    await a.aclose()
    assert moved.endpoints[0].name != home
    followed = await b.route({**body, "max_tokens": 99})
    assert followed.reason == "affinity"
    assert followed.endpoints[0] == moved.endpoints[0]
    # Once known locally, the store is not asked again.
    lookups = store.lookups
    await b.route(body)
    assert store.lookups == lookups


async def test_only_exceptions_to_the_hash_are_written_to_the_store(store: DictStore) -> None:
    r = StickyRouter(endpoints(), config=RoutingConfig(load_floor=4, max_overload=0.0), store=store)
    hot = rag(document("hot"), "q")
    body = same_home(r, hot)
    served = await r.route(body)
    with served.attempt(served.endpoints[0]):
        pass
    await r.flush()
    assert store.data == {}  # every process finds this one by hashing
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)
        moved = await r.route(body)
        with moved.attempt(moved.endpoints[0]):
            pass
    await r.flush()
    assert set(store.data.values()) == {moved.endpoints[0].name}
    # Moving back home is news too, or the store would go on pointing away.
    spilled_to, home = moved.endpoints[0].name, served.endpoints[0].name
    busy = next(
        rag(document(f"busy {i}"), "q")
        for i in range(200)
        if first(router(), rag(document(f"busy {i}"), "q")) == spilled_to
    )
    with ExitStack() as stack:
        hold(r, [busy] * 4, stack)
        back = await r.route(body)
        assert (back.reason, back.endpoints[0].name) == ("spill", home)
        with back.attempt(back.endpoints[0]):
            pass
    await r.flush()
    assert set(store.data.values()) == {home}


async def test_a_store_fault_routes_locally_and_is_counted(store: DictStore) -> None:
    r = StickyRouter(endpoints(), store=store)
    store.down = True
    body = rag(document("x"), "q")
    route = await r.route(body)
    assert route.reason == "hash"
    with route.attempt(route.endpoints[0]) as attempt:
        attempt.served()
    await r.flush()
    assert r.stats.store_errors == 1  # the lookup; a hashed choice is never written
    assert r.store is store
    r.use_store(None)
    assert r.store is None


def test_a_spill_routed_outside_an_event_loop_is_written_at_the_next_flush(
    store: DictStore,
) -> None:
    r = StickyRouter(endpoints(), config=RoutingConfig(load_floor=4, max_overload=0.0), store=store)
    hot = rag(document("hot"), "q")
    body = same_home(r, hot)
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)
        moved = r.select(body)  # no event loop here
    assert moved.reason == "spill" and store.data == {}
    asyncio.run(r.aclose())
    assert set(store.data.values()) == {moved.endpoints[0].name}
