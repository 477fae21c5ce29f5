"""The endpoint's places on the wire, held by its own admission and by those of callers'
keys together (``limpet.http.admission.Wire``), under random sequences of calls asking,
answering and giving up: never more on the wire than the endpoint's cap, no caller left
waiting while a place is free, each key's callers served in the order they asked."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from limpet import AdmissionConfig, Endpoint
from limpet.http.admission import Admissions
from limpet.http.admission_slots import Slot

CAP = 3
KEYS = 4  # key 0: the endpoint's own, the others callers' own

# ("ask", key) | ("answer", which of the slots held) | ("give up", which of the waiting)
Step = tuple[str, int]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("ask"), st.integers(0, KEYS - 1)),
        st.tuples(st.just("answer"), st.integers(0, 20)),
        st.tuples(st.just("give up"), st.integers(0, 20)),
    ),
    max_size=60,
)


async def settle() -> None:
    """Let every callback the last step scheduled run (the loop's own turns, no time)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def run(plan: list[Step]) -> None:
    admissions = Admissions(AdmissionConfig(initial_limit=10 * CAP), pool=0)
    base = Endpoint("a", "https://gateway.test/v1", api_key="sk-own", max_in_flight=CAP)
    endpoints = [base] + [
        base.with_headers({"Authorization": f"Bearer sk-{key}"}) for key in range(1, KEYS)
    ]
    admissions.of(base)  # the endpoint's own figures, from the start
    held: list[Slot] = []
    waiting: list[tuple[int, int, asyncio.Task[Slot]]] = []  # (key, order asked, task)
    served: dict[int, list[int]] = {key: [] for key in range(KEYS)}
    asked = 0
    for action, which in plan:
        if action == "ask":
            task = asyncio.ensure_future(admissions.of(endpoints[which]).acquire())
            waiting.append((which, asked, task))
            asked += 1
        elif action == "answer" and held:
            held.pop(which % len(held)).release()
        elif action == "give up" and waiting:
            waiting[which % len(waiting)][2].cancel()
        await settle()
        still: list[tuple[int, int, asyncio.Task[Slot]]] = []
        for key, order, task in waiting:
            if not task.done():
                still.append((key, order, task))
            elif not task.cancelled():
                held.append(task.result())
                served[key].append(order)
        waiting = still
        in_flight = admissions.stats()["a"].in_flight
        assert in_flight == len(held) <= CAP
        assert not (waiting and len(held) < CAP), "a caller waits while a place is free"
    for key, orders in served.items():
        assert orders == sorted(orders), f"key {key} served out of order: {orders}"
    for _, _, task in waiting:
        task.cancel()
    await settle()


@settings(max_examples=150, deadline=None)
@given(steps)
def test_every_key_shares_the_endpoints_places_and_none_is_left_waiting(plan: list[Step]) -> None:
    asyncio.run(run(plan))
