"""The upstream stage: route, attempt, fail over. One loop for JSON answers and streams.

What is sent is the caller's body marked with ``cache_control`` (when the Client injects
breakpoints) and routed by what the provider sees, in the call's key scope when the
router keeps scopes apart (``ScopedRouter``: a tenant's calls, or a caller's sending its
own credentials, are steered only by that scope's). Each endpoint the route ranks is tried
in turn while the failure is retryable; a stream fails over only before its first chunk
reached a reader. The answer's usage is parsed here, once, for the router's feedback and
the account stage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from limpet.cache.base import CacheEntry
from limpet.config import Endpoint
from limpet.errors import APIError
from limpet.http.chunks import choices_sent, every_choice_finished
from limpet.http.outgoing import body_sent
from limpet.http.retry import should_retry
from limpet.observe.stats import Stats
from limpet.pipeline.account import Accounting
from limpet.pipeline.calls import Call
from limpet.pipeline.keying import Keying
from limpet.pipeline.request import Request
from limpet.providers.prompt_cache import count_breakpoints
from limpet.providers.usage import parse_usage
from limpet.routing.base import Route, Router, ScopedRouter
from limpet.routing.sticky_keys import sends_session_id

logger = logging.getLogger("limpet")

T = TypeVar("T")


class Exchange(Protocol):
    """How one attempt talks to an endpoint: a JSON body, or a stream of chunks."""

    def prepare(self, sent: dict[str, Any]) -> dict[str, Any]:
        """What is sent, from the marked body (a stream asks for usage)."""
        ...

    def attempt(
        self, endpoint: Endpoint, body: dict[str, Any], call: Call
    ) -> Awaitable[dict[str, Any]]:
        """One endpoint's answer body (its transport retries included)."""
        ...

    @property
    def committed(self) -> bool:
        """True once a reader has something of this answer: no failing over then."""
        ...

    @property
    def loose(self) -> bool:
        """For a stream, whether a chunk was a ``LooseJSON`` (the answer is never stored);
        a JSON answer is one itself."""
        ...

    @property
    def chunking(self) -> bytes | None:
        """For a stream, how its answer was chunked (for replay), once it is whole."""
        ...


class Upstream:
    """Sends requests upstream through a router, accounting every answer.

    Args:
        keying: the Client's, whose ``own_scope`` gives each call's key scope to a
            ``ScopedRouter``; None, or a router that offers no ``route_scoped``: every
            call is routed by ``route(body)``.
    """

    __slots__ = ("_account", "_keying", "_mark", "_route_scoped", "_router", "_stats")

    def __init__(
        self,
        router: Router,
        account: Accounting,
        stats: Stats,
        mark: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        keying: Keying | None = None,
    ) -> None:
        self._router = router
        self._account = account
        self._stats = stats
        self._mark = mark
        self._keying = keying
        # Decided once: a custom router keeps the one-argument route(body) it implements.
        self._route_scoped = (
            router.route_scoped if keying is not None and isinstance(router, ScopedRouter) else None
        )

    async def call(self, request: Request, exchange: Exchange, call: Call) -> CacheEntry:
        """The accounted answer of the first endpoint that gives one, sent with ``call``'s
        headers; no retry is started that could not end before ``call``'s deadline.

        Each ranked endpoint is tried in turn while ``fails_over`` says so. The attempt is
        made here rather than in a coroutine of its own: every resumption of the request
        passes through each coroutine between it and the event loop."""
        body = request.body
        marked = body if self._mark is None else self._mark(body)
        sent = exchange.prepare(marked)
        # Routed by what the provider sees (injected breakpoints too). No await between
        # route() and the first attempt: the router counts the call in flight from there.
        headers = request.headers
        scoped, keying = self._route_scoped, self._keying
        if scoped is None or keying is None:
            route = await self._router.route(sent)
        else:  # a call of the Client's own scope is routed as route(sent) would route it
            route = await scoped(sent, keying.own_scope(headers, request.tenant))
        # A silent answer says a model's cache minimum is higher only of limpet's own
        # marks: a caller's, placed as it likes (after a long message, say, which the
        # provider renders after the system ones), would teach it so for every caller.
        route.learns = marked is not body and not count_breakpoints(body)
        ranked = route.endpoints
        derived = route.session_id is not None or (
            "session_id" in route.body and "session_id" not in body
        )
        if derived and sends_session_id(headers):
            # Derived by the router, which sees no call's own headers: the caller's own
            # x-session-id stands alone (two would contradict each other).
            route.body = {k: v for k, v in route.body.items() if k != "session_id"}
            route.session_id = None
        tried = 0  # upstream attempts of the endpoints failed over from
        for index in range(len(ranked)):  # a range iterator: no object for the GC to trace
            endpoint = ranked[index]
            self._stats.upstream_calls += 1
            # A call sending its caller's own key: a refusal of it is the caller's.
            own = headers is not None and endpoint.callers_key(headers) is not None
            try:
                with route.attempt(endpoint, callers_credentials=own) as attempt:
                    call.waiting_for = f"an answer from endpoint {endpoint.name!r}"
                    to_send = route.body_for(endpoint)  # its own sticky keys
                    answer = await exchange.attempt(endpoint, to_send, call)
                    loose = exchange.loose or type(answer) is not dict
                    if loose:  # a LooseJSON: as the rest of the pipeline reads an answer
                        answer = dict(answer)
                    usage = parse_usage(answer.get("usage"))
                    attempt.served(usage, answer.get("model"))
                break
            except APIError as exc:
                tried = summed_attempts(exc, tried)
                if not fails_over(exc, ranked, index, exchange):
                    raise
            finally:
                if call.unsent:  # ended queued for admission (deadline, cancelled): not sent
                    call.unsent = False
                    self._stats.upstream_calls -= 1
        # Priced from what was sent: an endpoint's extra_body (a top-level cache_control
        # asking for 1 h writes, say) is merged in only by the transport.
        entry = await self._account.entry(
            request,
            answer,
            usage,
            endpoint.name,
            body_sent(endpoint, to_send),
            exchange.chunking,
            deadline=call.deadline,
        )
        entry.partial = loose or not every_choice_finished(
            answer, choices_sent(to_send, endpoint.extra_body)
        )
        return entry


class _Committed(Protocol):
    @property
    def committed(self) -> bool: ...


def fails_over(
    exc: APIError, ranked: Sequence[Endpoint], index: int, exchange: _Committed | None = None
) -> bool:
    """Whether the failure ``exc`` of ``ranked[index]`` moves on to the next endpoint:
    there is one, the failure is retryable, and nothing of the answer reached a reader
    yet (``exchange.committed``). Says so in the log when it does. The one failover
    decision of every upstream request."""
    if index + 1 == len(ranked) or (exchange is not None and exchange.committed):
        return False
    if not should_retry(exc):
        return False
    logger.warning(
        "limpet: endpoint %r failed (%s); trying %r",
        ranked[index].name,
        exc,
        ranked[index + 1].name,
    )
    return True


def summed_attempts(exc: APIError, tried: int) -> int:
    """The upstream attempts of a call so far: ``tried`` on the endpoints it failed over
    from, and those that ended with ``exc`` on this one; recorded on ``exc``
    (``APIError.attempts``), which is the call's error when it does not fail over."""
    exc.attempts = tried + (exc.attempts or 1)
    return exc.attempts


async def first_answer(
    route: Route,
    attempt: Callable[[Endpoint], Awaitable[T]],
    headers: Mapping[str, str] | None = None,
    exchange: _Committed | None = None,
) -> tuple[Endpoint, T]:
    """The endpoint that answered first and its answer: each of ``route.endpoints`` is
    tried in turn while ``fails_over`` says so, inside ``route.attempt``, so the router
    learns each outcome as it does ``Upstream.call``'s. ``headers``: the call's own; a key
    among them is the caller's, and a refusal of it is no fault of the endpoint."""
    ranked = route.endpoints
    tried = 0
    for index, endpoint in enumerate(ranked):
        own = headers is not None and endpoint.callers_key(headers) is not None
        try:
            with route.attempt(endpoint, callers_credentials=own):
                return endpoint, await attempt(endpoint)
        except APIError as exc:
            tried = summed_attempts(exc, tried)
            if not fails_over(exc, ranked, index, exchange):
                raise
    raise AssertionError("unreachable: the last endpoint's failure is raised")
