"""One upstream call's routing: the endpoints to try and a report of every attempt.

A ``Router`` turns a request into a ``Route``; the caller tries ``route.endpoints`` in
order, each inside ``route.attempt(endpoint)``, which tells the router what happened
(``AttemptObserver``). ``limpet.routing.sticky.StickyRouter`` is the router limpet ships.

A router that keeps what one caller's calls taught it (an affinity map) apart from
another's also offers ``ScopedRouter.route_scoped``; the Client's upstream stage calls it,
with the call's key scope, when the router has it (decided once, when the Client is
wired). A ``Router`` that offers only ``route(body)`` is called as it always was.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from limpet.config import Endpoint
from limpet.models import Usage

if TYPE_CHECKING:
    from limpet.routing.prefix import PrefixChain

__all__ = [
    "Attempt",
    "AttemptObserver",
    "Route",
    "RouteReason",
    "Router",
    "RoutingKey",
    "ScopedRouter",
]

#: Why a route's first endpoint was chosen: the affinity map; the key's HRW ranking;
#: bounded load moved it down the ranking; its first choice is ejected; no key at all.
RouteReason = Literal["affinity", "hash", "spill", "failover", "spread"]


@dataclass(frozen=True, slots=True)
class RoutingKey:
    """What a request is routed by.

    Attributes:
        kind: ``"breakpoint"`` (a breakpoint's prefix), ``"conversation"`` (the first
            system plus first non-system message) or ``"spread"`` (nothing: least loaded).
        key: the HRW key; None when spread.
        depth: the chain depth of the link that stands for the key: the affinity map is
            read and written from there down, never above. None when there is none.
    """

    kind: Literal["breakpoint", "conversation", "spread"]
    key: str | None
    depth: int | None


class AttemptObserver(Protocol):
    """What a router learns from the calls it routed."""

    def attempt_started(self, attempt: Attempt) -> None: ...

    def attempt_served(self, attempt: Attempt, usage: Usage | None) -> None: ...

    def attempt_ended(self, attempt: Attempt, error: BaseException | None) -> None: ...


class Route:
    """One request's routing: the body to send and the endpoints to try, in order.

    Attributes:
        body: the request body to send to the first endpoint (a ``session_id`` or
            ``prompt_cache_key`` may have been added; see ``limpet.routing.sticky_keys``);
            ``body_for`` says what each endpoint is sent.
        endpoints: the first choice, then the failover order.
        reason: why the first endpoint was chosen.
        key: what the request was routed by, or None for routers that do not say (and
            for a request to one endpoint that needed no key).
        chain: the request's prefix chain, or None.
        learns: whether a served answer may teach the provider's cache minimum
            (``limpet.routing.feedback``): only when every mark the body carries is
            limpet's own (set by the upstream stage).
        session_id: the ``session_id`` the router derived, sent only to the endpoints
            that route by it (``body_for``); None when there is none (set it to None to
            send it nowhere).
        pin_prefix: what the call's affinity pins are prefixed with
            (``limpet.routing.affinity.pin_prefix``); "" for a call of the Client's own
            scope, and for routers that keep no pins.
    """

    __slots__ = (
        "_observer",
        "_session_takers",
        "body",
        "chain",
        "endpoints",
        "key",
        "learns",
        "pin_prefix",
        "reason",
        "session_id",
    )

    def __init__(
        self,
        body: Mapping[str, Any],
        endpoints: Sequence[Endpoint],
        observer: AttemptObserver,
        *,
        reason: RouteReason = "hash",
        key: RoutingKey | None = None,
        chain: PrefixChain | None = None,
        session_id: str | None = None,
        session_takers: Collection[str] = (),
        pin_prefix: str = "",
    ) -> None:
        self.body: dict[str, Any] = body if isinstance(body, dict) else dict(body)
        self.endpoints = tuple(endpoints)
        self.reason: RouteReason = reason
        self.key = key
        self.chain = chain
        self.learns = False
        self.session_id = session_id
        self.pin_prefix = pin_prefix
        self._session_takers = session_takers
        self._observer = observer

    def __repr__(self) -> str:
        names = [e.name for e in self.endpoints]
        return f"Route({names}, reason={self.reason!r}, key={self.key!r})"

    def body_for(self, endpoint: Endpoint) -> dict[str, Any]:
        """The body to send to ``endpoint``: ``body``, carrying the derived ``session_id``
        only if ``endpoint`` routes by it. A failover goes to endpoints of other kinds (an
        OpenRouter one, then a plain OpenAI-compatible one), and a strict server refuses
        a field it does not know (OpenAI answers 400)."""
        derived = self.session_id
        sends = "session_id" in self.body
        if derived is None:
            # None derived, or dropped since: a caller's own is sent everywhere, as given.
            return self.body
        if (endpoint.name in self._session_takers) == sends:
            return self.body
        if sends:
            return {k: v for k, v in self.body.items() if k != "session_id"}
        return {**self.body, "session_id": derived}

    def attempt(self, endpoint: Endpoint, *, callers_credentials: bool = False) -> Attempt:
        """A context manager around one call to ``endpoint``: counts it in flight, and
        reports its outcome (an exception leaving the block is a failure).
        ``callers_credentials``: the call sends credentials of its own, not the
        endpoint's (a refusal of them says nothing of the endpoint)."""
        return Attempt(self, endpoint, self._observer, callers_credentials)


class Attempt:
    """One call of a route to one endpoint; see ``Route.attempt``.

    Call ``served(usage)`` inside the block when the call succeeded; leaving the block
    without an exception counts as success too, without usage.

    Attributes:
        route: the route this call belongs to.
        endpoint: where it goes.
        probe: True when this call is an ejected endpoint's half-open probe.
        ejections: how many times the endpoint had been ejected when this call started
            (the router's; ``limpet.routing.health.EndpointHealth.ejections``): a success
            of a call begun before an ejection never ends it.
        callers_credentials: True when the call sends credentials of its own rather than
            the endpoint's (``Route.attempt``).
        model: the model that answered, as the answer named it (``served``); None until
            then, or when it named none.
    """

    __slots__ = (
        "_observer",
        "_served",
        "callers_credentials",
        "ejections",
        "endpoint",
        "model",
        "probe",
        "route",
    )

    def __init__(
        self,
        route: Route,
        endpoint: Endpoint,
        observer: AttemptObserver,
        callers_credentials: bool = False,
    ) -> None:
        self.route = route
        self.endpoint = endpoint
        self.callers_credentials = callers_credentials
        self.probe = False
        self.ejections = 0
        self.model: str | None = None
        self._observer = observer
        self._served = False

    @property
    def first(self) -> bool:
        """True when this call goes to the route's first choice."""
        return self.endpoint is self.route.endpoints[0]

    def __enter__(self) -> Attempt:
        self._observer.attempt_started(self)
        return self

    def served(self, usage: Usage | None = None, model: object = None) -> None:
        """The call succeeded; ``usage`` tells how it met the provider's prompt cache, and
        ``model`` (the answer's ``model``) which model answered: an OpenRouter ``models``
        fallback may be another than the one asked for."""
        if not self._served:
            self._served = True
            self.model = model if isinstance(model, str) else None
            self._observer.attempt_served(self, usage)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.served()
        self._observer.attempt_ended(self, exc)


@runtime_checkable
class Router(Protocol):
    """Chooses the endpoints of each upstream call; the Client's seam for routing.

    ``embed()``'s requests are routed too: their body has an ``input`` and no
    ``messages``."""

    @property
    def endpoints(self) -> tuple[Endpoint, ...]: ...

    async def route(self, body: Mapping[str, Any]) -> Route: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ScopedRouter(Router, Protocol):
    """A ``Router`` that keeps each key scope's lessons apart: what routing learns from
    one caller's calls (where bounded load moved a prefix) never steers, nor tells by
    where it sends them, the calls of a caller of another scope (a tenant, or a caller
    sending credentials of its own). ``StickyRouter`` is one."""

    async def route_scoped(self, body: Mapping[str, Any], scope: str | None) -> Route:
        """``route(body)`` for a call of key scope ``scope`` (``Keying.own_scope``: the
        credential part of its cache key); None for a call of the Client's own scope,
        routed exactly as ``route(body)`` routes it."""
        ...
