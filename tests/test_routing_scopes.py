"""StickyRouter: affinity pins are kept per key scope (a tenant's, a caller's own key's).

Where bounded load moved one scope's prefix steers only that scope's calls: another
scope's, and the Client's own, follow the prefix's hash as if nothing had been sent, so
where a call goes never tells its caller what another sent. The HRW ranking is every
scope's. Pure but for the shared store's coroutines, as in ``test_routing``.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from limpet.config import RoutingConfig
from limpet.routing.affinity import pin_prefix
from limpet.routing.base import ScopedRouter
from limpet.routing.prefix import prefix_chain
from limpet.routing.sticky import StickyRouter, routing_key
from tests.test_routing import (
    DictStore,
    document,
    endpoints,
    first,
    hold,
    rag,
    router,
    same_home,
)

A, B = "scope of tenant A", "scope of tenant B"
TIGHT: dict[str, Any] = {"load_floor": 4, "max_overload": 0.0}


def test_a_sticky_router_is_a_scoped_router_and_route_is_the_clients_own_scope() -> None:
    assert isinstance(router(), ScopedRouter)
    body = rag(document("x"), "q")
    r = router()
    assert r.select(body, scope=None).endpoints == r.select(body).endpoints


def test_pins_of_one_scope_are_not_seen_under_another() -> None:
    r = router(**TIGHT)
    hot = rag(document("hot"), "q")
    home = first(r, hot)
    body = same_home(r, hot)
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)  # home is full: the next call of body's prefix spills
        moved = r.select(body, scope=A)
        assert moved.reason == "spill" and moved.endpoints[0].name != home
        with moved.attempt(moved.endpoints[0]) as attempt:
            attempt.served()
    # A's calls follow where A's prefix now lives...
    again = r.select({**body, "max_tokens": 9}, scope=A)
    assert (again.reason, again.endpoints[0]) == ("affinity", moved.endpoints[0])
    # ...B's, and the Client's own, go where the prefix hashes, as if A had sent nothing.
    for route in (r.select(body, scope=B), r.select(body)):
        assert (route.reason, route.endpoints[0].name) == ("hash", home)
        # The ranking is every scope's: the same failover order behind the first choice.
        assert route.endpoints == r.select(body, scope=B).endpoints


def test_the_clients_own_scope_pins_as_before_and_no_tenant_sees_them() -> None:
    r = router(**TIGHT)
    hot = rag(document("hot"), "q")
    home = first(r, hot)
    body = same_home(r, hot)
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)
        moved = r.select(body)
        assert moved.reason == "spill" and moved.pin_prefix == ""
        with moved.attempt(moved.endpoints[0]) as attempt:
            attempt.served()
    assert r.select(body).reason == "affinity"
    assert r.select(body).endpoints[0] == moved.endpoints[0]
    tenant = r.select(body, scope=A)
    assert (tenant.reason, tenant.endpoints[0].name) == ("hash", home)


def test_a_scopes_refreshed_pin_stays_its_own() -> None:
    # A success of B's call at home must not move A's pin back (nor A's success B's).
    r = router(**TIGHT)
    hot = rag(document("hot"), "q")
    body = same_home(r, hot)
    with ExitStack() as stack:
        hold(r, [hot] * 4, stack)
        moved = r.select(body, scope=A)
        with moved.attempt(moved.endpoints[0]):
            pass
    at_home = r.select(body, scope=B)
    with at_home.attempt(at_home.endpoints[0]):
        pass
    assert r.select(body, scope=A).endpoints[0] == moved.endpoints[0]
    assert r.select(body, scope=B).endpoints[0] == at_home.endpoints[0] != moved.endpoints[0]


async def test_the_store_keeps_each_scopes_pins_apart_and_the_clients_own_as_before() -> None:
    store = DictStore()
    config = RoutingConfig(load_floor=4, max_overload=0.0)
    a = StickyRouter(endpoints(), config=config, store=store)
    hot = rag(document("hot"), "q")
    home = first(a, hot)
    body = same_home(a, hot)
    chain = prefix_chain(body)
    depth = routing_key(chain).depth
    assert depth is not None
    link = chain.links[depth].hash
    # Another prefix at the same home, routed in the Client's own scope.
    mine = next(
        rag(document(f"own {i}"), "q")
        for i in range(200)
        if first(a, rag(document(f"own {i}"), "q")) == home
    )
    with ExitStack() as stack:
        hold(a, [hot] * 4, stack)
        scoped = await a.route_scoped(body, A)
        with scoped.attempt(scoped.endpoints[0]):
            pass
        own = await a.route(mine)  # spills too, in the Client's own scope
        assert own.reason == "spill"
        with own.attempt(own.endpoints[0]):
            pass
    await a.aclose()
    own_chain = prefix_chain(mine)
    own_depth = routing_key(own_chain).depth
    assert own_depth is not None
    # The Client's own pins under the bare link, as every Client of its scope reads them;
    # a scope's under its own prefix.
    assert store.data[own_chain.links[own_depth].hash] == own.endpoints[0].name
    assert store.data[pin_prefix(A) + link] == scoped.endpoints[0].name
    assert link not in store.data and pin_prefix(B) + link not in store.data
    # Another process follows A's pin for A's calls only.
    b = StickyRouter(endpoints(), config=config, store=store)
    followed = await b.route_scoped({**body, "max_tokens": 9}, A)
    assert (followed.reason, followed.endpoints[0]) == ("affinity", scoped.endpoints[0])
    for route in (await b.route_scoped(body, B), await b.route(body)):
        assert (route.reason, route.endpoints[0].name) == ("hash", home)
