"""Choosing an endpoint: prefix-hash sticky routing with bounded load and passive health.

A provider's prompt cache lives on the instance that saw the prefix, so requests that
share a cached prefix must go to one endpoint, chosen the same way by every process with
no coordination. For each upstream call:

1. ``prefix_chain`` hashes the prompt as the provider renders it; ``routing_key`` picks
   what to route by (see there): a breakpoint's prefix, or the conversation.
2. The affinity map answers first, deepest link first, but never above that key: a
   prefix that bounded load moved stays where its cache now lives. A call with a key
   scope of its own (a tenant, or credentials it sends itself: ``route_scoped``) reads
   and writes only its scope's pins, so no caller's prompts steer another's calls, nor
   tell it by where they go what was sent (``limpet.routing.affinity.pin_prefix``).
3. Otherwise rendezvous (HRW) hashing ranks the healthy endpoints for the key, weights
   respected; removing an endpoint moves only its own keys. The ranking is every
   scope's: it depends on the prefix alone, which it reveals nothing of, and keeps
   callers sharing an upstream key on one provider cache.
4. Bounded load walks that ranking and takes the first endpoint whose in-flight count is
   under ``max(load_floor, ceil((1 + e) * mean))``.
5. The rest of the ranking is the failover order; ejected endpoints come last.
6. The body gets the sticky keys of the routers upstream, derived from the routing key:
   a ``session_id`` for each OpenRouter endpoint, which routes among providers itself
   (only those: ``Route.body_for``), and, when asked, OpenAI's ``prompt_cache_key`` (see
   ``limpet.routing.sticky_keys``).

With one endpoint there is no choice to make: the prefix chain is computed only when a
sticky key needs it. A request with no prompt (``embed()``'s) has no key either: it goes
to the endpoints in the order given, those ejected or paused by a rate limit last.

Every call reports back through ``Route.attempt()``: in-flight counts, health (see
``limpet.routing.health``), and the provider-cache reads and writes of each key.

Usage, as the Client does it::

    route = await router.route(body)        # enter the first attempt with no await between
    for endpoint in route.endpoints:
        with route.attempt(endpoint) as attempt:
            answer = await transport.chat(endpoint, route.body_for(endpoint))
            attempt.served(parse_usage(answer.get("usage")))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from limpet.config import Endpoint, RoutingConfig
from limpet.errors import ConfigurationError
from limpet.models import Usage
from limpet.providers.prompt_cache import CacheControlConfig
from limpet.routing.affinity import AffinityMap, AffinityMirror, AffinityStore, pin_prefix
from limpet.routing.base import (
    Attempt,
    AttemptObserver,
    Route,
    Router,
    RouteReason,
    RoutingKey,
    ScopedRouter,
)
from limpet.routing.feedback import learn_minimum
from limpet.routing.health import EndpointHealth, counts_against_endpoint, retry_after_of
from limpet.routing.prefix import PrefixChain, prefix_chain
from limpet.routing.ranking import (
    by_load,
    hrw_rank,
    long_paused,
    looked_up,
    open_first,
    recorded,
    routing_key,
    under_bound,
)
from limpet.routing.stats import EndpointStatus, RouterStats
from limpet.routing.sticky_keys import (
    PromptCacheKeys,
    session_id_for,
    wants_prompt_cache_key,
    wants_session_id,
    with_sticky_keys,
)

if TYPE_CHECKING:
    from limpet.http.admission import Admissions

__all__ = [
    "Attempt",
    "AttemptObserver",
    "Route",
    "RouteReason",
    "Router",
    "RoutingKey",
    "ScopedRouter",
    "StickyRouter",
    "hrw_rank",
    "routing_key",
]

logger = logging.getLogger("limpet.routing")

# Affinity lookups per request: the deepest links below the routing key, then the key.
_MAX_LOOKUPS = 16

_RECORDED: frozenset[RouteReason] = frozenset({"affinity", "hash", "spill"})

# What a router not lent to a Client learns by: the default tables.
_DEFAULT_MARKING = CacheControlConfig()


class StickyRouter:
    """Prefix-hash sticky routing over endpoints: HRW, bounded load, passive health.

    Its state (in-flight counts, health, affinity map) is this process's; every process
    still routes a cold prefix the same way. With a ``store`` (the Client wires one when
    its cache has a Redis tier) the affinity map is shared. Lend it to one Client, which
    closes it.

    Args:
        endpoints: where to route; names must be unique.
        config: tuning; ``RoutingConfig()`` by default.
        store: where to share the affinity map, if anywhere (lent: not closed here).
        clock: monotonic seconds, for cool-downs and affinity TTLs; inject one in tests.
        callers_credentials: True when every call sends its caller's own credentials
            (``limpet serve`` forwarding each caller's key to keyless endpoints): a refusal
            of them (401, 402, 403, 429) is that caller's, never counted against an
            endpoint (``limpet.routing.health.is_endpoint_fault``). A call that sends
            credentials of its own (its ``extra_headers``) is taken so either way.

    Example:
        >>> router = StickyRouter([Endpoint.openrouter("anthropic"),
        ...                        Endpoint.openrouter("amazon-bedrock")])
        >>> client = Client(router=router)
    """

    __slots__ = (
        "_admissions",
        "_affinity",
        "_always_direct",
        "_by_name",
        "_callers_credentials",
        "_clock",
        "_endpoints",
        "_health",
        "_in_flight",
        "_in_flight_unprompted",
        "_marking",
        "_mirror",
        "_prompt_cache_keys",
        "_spread_turn",
        "_stats",
        "config",
    )

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        config: RoutingConfig | None = None,
        store: AffinityStore | None = None,
        clock: Callable[[], float] = time.monotonic,
        callers_credentials: bool = False,
    ) -> None:
        resolved = tuple(endpoints)
        if not resolved or not all(isinstance(e, Endpoint) for e in resolved):
            raise ConfigurationError(
                "StickyRouter.endpoints: expected a non-empty list of Endpoint"
            )
        names = [e.name for e in resolved]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"StickyRouter.endpoints: names must be unique, got {names}")
        self.config = config if config is not None else RoutingConfig()
        if not isinstance(self.config, RoutingConfig):
            raise ConfigurationError("StickyRouter.config: expected a RoutingConfig")
        self._endpoints = resolved
        # One endpoint that never wants a derived session_id or prompt_cache_key: every
        # request goes straight to it, whatever its body.
        self._always_direct = len(resolved) == 1 and not (
            self.config.prompt_cache_key
            or (self.config.session_id and resolved[0].gateway == "openrouter")
        )
        self._by_name = {e.name: e for e in resolved}
        self._health = {
            e.name: EndpointHealth(
                failure_threshold=self.config.failure_threshold,
                cooldown=self.config.cooldown,
                max_cooldown=self.config.max_cooldown,
            )
            for e in resolved
        }
        # Calls in flight: with a prompt (the load that bounds prompts and spreads them),
        # and without (embed()'s: a burst of them on the first endpoint given must not push
        # the prefixes pinned there to endpoints where their provider cache is cold).
        self._in_flight = dict.fromkeys(names, 0)
        self._in_flight_unprompted = dict.fromkeys(names, 0)
        self._affinity = AffinityMap(self.config.affinity_size)
        self._mirror: AffinityMirror | None = None
        self._clock = clock
        self._callers_credentials = callers_credentials
        self._spread_turn = 0
        self._stats = RouterStats()
        self._prompt_cache_keys = PromptCacheKeys(self.config.prompt_cache_key_rate)
        self._admissions: Admissions | None = None
        self._marking: CacheControlConfig | None = _DEFAULT_MARKING
        if store is not None:
            self.use_store(store)

    def __repr__(self) -> str:
        names = ", ".join(e.name for e in self._endpoints)
        store = "" if self._mirror is None else f", store={self._mirror.store!r}"
        return f"StickyRouter([{names}], affinity={self._affinity!r}{store})"

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return self._endpoints

    @property
    def store(self) -> AffinityStore | None:
        """Where the affinity map is shared, or None."""
        return None if self._mirror is None else self._mirror.store

    def use_store(self, store: AffinityStore | None) -> None:
        """Share the affinity map through ``store`` (None: stop sharing)."""
        if store is not None and not isinstance(store, AffinityStore):
            raise ConfigurationError("StickyRouter.store: expected an AffinityStore")
        self._mirror = None if store is None else AffinityMirror(store)

    def use_admissions(self, admissions: Admissions | None) -> None:
        """Route around endpoints paused by a rate limit (the Client wires its own): new
        prefixes prefer an open endpoint; a sticky prefix leaves home only when the pause
        outlasts ``AdmissionConfig.repin_pause``; a 429 never ejects an endpoint."""
        self._admissions = admissions

    def use_marking(self, marking: CacheControlConfig | None) -> None:
        """Learn what served answers say of providers' cache minimums by ``marking``, the
        ``CacheControlConfig`` the answers were marked by (the Client wires its
        ``auto_cache_control``): into its ``learned`` table, from the minimums its
        ``capabilities`` state, so what a Client learns changes only its own marking;
        None, or a config that learns nothing: learn nothing. The defaults
        (``LEARNED_MINIMUMS``, ``DEFAULT_CAPABILITIES``) until told otherwise."""
        self._marking = marking

    @property
    def stats(self) -> RouterStats:
        """Routing decisions, health events and provider-cache feedback so far."""
        if self._mirror is not None:
            self._stats.store_errors = self._mirror.errors
        marking = self._marking
        learned = None if marking is None else marking.learned
        self._stats.learned_minimums = {} if learned is None else learned.snapshot()
        return self._stats

    def status(self) -> dict[str, EndpointStatus]:
        """Each endpoint's health and in-flight count now."""
        now = self._clock()
        return {
            name: EndpointStatus(
                name=name,
                state=health.state(now),
                in_flight=self._in_flight[name] + self._in_flight_unprompted[name],
                failures=health.failures,
                ejected_for=max(health.ejected_until - now, 0.0),
            )
            for name, health in self._health.items()
        }

    async def route(self, body: Mapping[str, Any]) -> Route:
        """Route one upstream call; reads the shared affinity map when this process's has
        nothing for the request. Enter the first attempt with no ``await`` in between, so
        the in-flight counts the next request sees include this one."""
        return await self.route_scoped(body, None)

    async def route_scoped(self, body: Mapping[str, Any], scope: str | None) -> Route:
        """``route(body)`` for a call of key scope ``scope`` (``ScopedRouter``): the
        affinity pins it reads and writes, here and in the shared store, are its scope's
        alone (``pin_prefix``), so where bounded load moved another scope's prefix neither
        steers it nor tells it what the other sent. None, a call of the Client's own
        scope: ``route(body)``, pins shared by every Client of that scope."""
        if self._direct(body):
            return self._unkeyed(body)
        chain = prefix_chain(body)
        key = routing_key(chain, self.config.unmarked)
        pins = "" if scope is None else pin_prefix(scope)
        mirror = self._mirror
        if mirror is not None and key.depth is not None:
            links = self._lookups(chain, key, pins)
            now = self._clock()
            if all(self._affinity.get(link, now) is None for link in links):
                found = await mirror.lookup(links)
                now, ttl = self._clock(), self._ttl(chain)
                for link, name in zip(reversed(links), reversed(found), strict=True):
                    if name is not None and name in self._by_name:
                        self._affinity.put(link, name, ttl, now, mirrored=True)
        return self._route(body, chain, key, pins)

    def select(self, body: Mapping[str, Any], *, scope: str | None = None) -> Route:
        """``route()`` (``route_scoped()`` with a ``scope``) from this process's state
        alone, without the shared store. Pure apart from that state: no I/O, no event
        loop."""
        if self._direct(body):
            return self._unkeyed(body)
        chain = prefix_chain(body)
        pins = "" if scope is None else pin_prefix(scope)
        return self._route(body, chain, routing_key(chain, self.config.unmarked), pins)

    async def flush(self) -> None:
        """Wait until queued writes to the shared store have been sent."""
        if self._mirror is not None:
            await self._mirror.flush()

    async def aclose(self) -> None:
        """Send queued writes to the shared store (the store itself is lent, not closed)."""
        await self.flush()

    def _direct(self, body: Mapping[str, Any]) -> bool:
        """True when a request needs no routing key: one with no prompt (an embeddings
        request: no provider cache to keep warm, nothing to keep together), or one
        endpoint, so no choice to make, and no sticky key to derive for the gateway
        behind it."""
        if self._always_direct or "messages" not in body:
            return True
        if len(self._endpoints) != 1:
            return False
        only = self._endpoints[0]
        return not (
            wants_session_id(only, body, self.config) or wants_prompt_cache_key(body, self.config)
        )

    def _unkeyed(self, body: Mapping[str, Any]) -> Route:
        """The route of a request that needs no key, with no prefix chain computed and no
        sticky key added: the endpoints in the order given, as health and rate limits
        allow (ejected ones last, as in a keyed route: a last resort beats none)."""
        everyone = self._endpoints
        if len(everyone) == 1:
            self._stats.counted("spread")
            return Route(body, everyone, self, reason="spread")
        now = self._clock()
        available = [e for e in everyone if self._health[e.name].available(now)] or list(everyone)
        ranked = open_first(available, self._admissions)
        reason: RouteReason = "spread" if ranked[0] is everyone[0] else "failover"
        self._stats.counted(reason)
        return Route(body, ranked + [e for e in everyone if e not in ranked], self, reason=reason)

    def _route(
        self, body: Mapping[str, Any], chain: PrefixChain, key: RoutingKey, pins: str
    ) -> Route:
        now = self._clock()
        everyone = self._endpoints
        available = [e for e in everyone if self._health[e.name].available(now)] or list(everyone)
        reason: RouteReason
        if key.key is None:
            self._spread_turn += 1
            ranked = open_first(
                by_load(available, self._in_flight, self._spread_turn), self._admissions
            )
            # Ejected endpoints come last, as in a keyed route: a last resort beats none.
            order = ranked + [e for e in everyone if e not in ranked]
            reason = "spread"
        else:
            preferred = hrw_rank(key.key, everyone)
            ranked = open_first([e for e in preferred if e in available], self._admissions)
            reason = "hash" if ranked[0] is preferred[0] else "failover"
            pinned = self._pinned(chain, key, now, available, pins)
            if pinned is not None and not long_paused(pinned, self._admissions):
                ranked.remove(pinned)
                ranked.insert(0, pinned)
                reason = "affinity"
            chosen = under_bound(ranked, available, self._in_flight, self.config)
            if chosen:
                ranked.insert(0, ranked.pop(chosen))
                reason = "spill"
                # Pinned now, not when the call returns: calls for the prefix that arrive
                # meanwhile follow it instead of finding its old endpoint still full.
                self._record(chain, key, ranked[0], pins, move=True)
            order = ranked + [e for e in preferred if e not in ranked]
        self._stats.counted(reason)
        # The session_id goes to the endpoints that route by it, whichever attempt reaches
        # them (Route.body_for): a failover to any other must not carry it.
        takers = (
            ()
            if key.key is None
            else [e.name for e in order if wants_session_id(e, body, self.config)]
        )
        return Route(
            with_sticky_keys(
                body, key, order[0], self.config, self._prompt_cache_keys, self._clock
            ),
            order,
            self,
            reason=reason,
            key=key,
            chain=chain,
            session_id=session_id_for(key.key) if takers and key.key is not None else None,
            session_takers=takers,
            pin_prefix=pins,
        )

    def _pinned(
        self,
        chain: PrefixChain,
        key: RoutingKey,
        now: float,
        available: list[Endpoint],
        pins: str,
    ) -> Endpoint | None:
        """The endpoint the affinity map holds for the deepest link it knows under
        ``pins`` (the call's scope's), if available."""
        if key.depth is None:
            return None
        for link in self._lookups(chain, key, pins):
            name = self._affinity.get(link, now)
            if name is not None:
                endpoint = self._by_name.get(name)
                return endpoint if endpoint in available else None
        return None

    def _lookups(self, chain: PrefixChain, key: RoutingKey, pins: str) -> list[str]:
        """Links to look up, deepest first: those recorded below the key, then the key's;
        each under ``pins``, the call's scope's prefix ("" for the Client's own)."""
        depth = key.depth
        assert depth is not None
        deeper = [
            pins + link.hash for link in reversed(chain.links[depth + 1 :]) if looked_up(link, key)
        ]
        return [*deeper[: _MAX_LOOKUPS - 1], pins + chain.links[depth].hash]

    def _record(
        self, chain: PrefixChain, key: RoutingKey, endpoint: Endpoint, pins: str, *, move: bool
    ) -> None:
        """Remember where the request's prefixes are cached now, for calls of its scope
        (``pins``: its pin prefix, "" for the Client's own)."""
        depth = key.depth
        if depth is None:
            return
        now, ttl, mirror = self._clock(), self._ttl(chain), self._mirror
        deeper = chain.links[depth + 1 :]
        links = [chain.links[depth], *(link for link in deeper if recorded(link, key))]
        hashed = key.key is not None and hrw_rank(key.key, self._endpoints)[0] is endpoint
        for link in links:
            pinned = pins + link.hash
            tell = self._affinity.put(pinned, endpoint.name, ttl, now, hashed=hashed, move=move)
            if tell and mirror is not None:
                mirror.remember(pinned, endpoint.name, ttl)

    def _ttl(self, chain: PrefixChain) -> float:
        if any(link.ttl == "1h" for link in chain.links):
            return self.config.affinity_ttl_1h
        return self.config.affinity_ttl

    # --- AttemptObserver ------------------------------------------------------------------

    def attempt_started(self, attempt: Attempt) -> None:
        name = attempt.endpoint.name
        self._load_of(attempt)[name] += 1
        health = self._health[name]
        attempt.probe = health.begin(self._clock())
        attempt.ejections = health.ejections
        if not attempt.first:
            self._stats.retried_elsewhere += 1

    def attempt_served(self, attempt: Attempt, usage: Usage | None) -> None:
        endpoint, route = attempt.endpoint, attempt.route
        if self._health[endpoint.name].succeeded(attempt.ejections):
            self._stats.recoveries += 1
            logger.info("limpet routing: endpoint %r is back", endpoint.name)
        key, chain = route.key, route.chain
        # A call that failed over is not remembered: failover follows each key's own
        # ranking, the same in every process, and keys return when their endpoint does.
        if key is not None and chain is not None and attempt.first and route.reason in _RECORDED:
            # A success refreshes the pin but never re-points it (a spill did that when it
            # was routed): a call routed before a move and finishing after it must not
            # move the prefix back.
            self._record(chain, key, endpoint, route.pin_prefix, move=False)
        if usage is not None:
            self._stats.feedback(None if key is None else key.key, endpoint.name, usage)
            marking = self._marking
            if route.learns and marking is not None and marking.learned is not None:
                learned, capabilities = marking.learned, marking.capabilities
                learn_minimum(learned, route.body, usage, attempt.model, capabilities)

    def _load_of(self, attempt: Attempt) -> dict[str, int]:
        """The in-flight counts ``attempt`` is one of: those of calls with a prompt, or
        of those without."""
        return self._in_flight if "messages" in attempt.route.body else self._in_flight_unprompted

    def attempt_ended(self, attempt: Attempt, error: BaseException | None) -> None:
        name = attempt.endpoint.name
        self._load_of(attempt)[name] -= 1
        if error is None:
            return
        health = self._health[name]
        if counts_against_endpoint(
            error,
            rate_limits_paused=self._admissions is not None,
            callers_credentials=self._callers_credentials or attempt.callers_credentials,
        ):
            self._stats.failures += 1
            if health.failed(self._clock(), retry_after_of(error), probe=attempt.probe):
                self._stats.ejections += 1
                logger.warning(
                    "limpet routing: endpoint %r ejected for %.0f s after %d failures in a row",
                    name,
                    max(health.ejected_until - self._clock(), 0.0),
                    health.failures,
                )
        else:
            health.released(probe=attempt.probe)
