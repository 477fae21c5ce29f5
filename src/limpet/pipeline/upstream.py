"""The upstream stage: route, attempt, fail over. One loop for JSON answers and streams.

What is sent is the caller's body marked with ``cache_control`` (when the Client injects
breakpoints) and routed by what the provider sees. Each endpoint the route ranks is tried
in turn while the failure is retryable; a stream fails over only before its first chunk
reached a reader. The answer's usage is parsed here, once, for the router's feedback and
the account stage.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

from limpet.cache.base import CacheEntry
from limpet.config import Endpoint
from limpet.errors import APIError
from limpet.http.retry import should_retry
from limpet.models import Usage
from limpet.observe.stats import Stats
from limpet.pipeline.account import Accounting
from limpet.pipeline.calls import Call
from limpet.pipeline.request import Request
from limpet.routing.base import Route, Router

logger = logging.getLogger("limpet")

T = TypeVar("T")


class Answer:
    """What one attempt got: the answer's body, its parsed usage, and for a stream, how it
    was chunked (for replay)."""

    __slots__ = ("body", "stream", "usage")

    def __init__(self, body: dict[str, Any], usage: Usage, stream: bytes | None = None) -> None:
        self.body = body
        self.usage = usage
        self.stream = stream


class Exchange(Protocol):
    """How one attempt talks to an endpoint: a JSON body, or a stream of chunks."""

    def prepare(self, sent: dict[str, Any]) -> dict[str, Any]:
        """What is sent, from the marked body (a stream asks for usage)."""
        ...

    async def attempt(self, endpoint: Endpoint, body: dict[str, Any], call: Call) -> Answer:
        """One endpoint's answer (its transport retries included)."""
        ...

    @property
    def committed(self) -> bool:
        """True once a reader has something of this answer: no failing over then."""
        ...


class Upstream:
    """Sends requests upstream through a router, accounting every answer."""

    __slots__ = ("_account", "_mark", "_router", "_stats")

    def __init__(
        self,
        router: Router,
        account: Accounting,
        stats: Stats,
        mark: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self._router = router
        self._account = account
        self._stats = stats
        self._mark = mark

    async def call(self, request: Request, exchange: Exchange, call: Call) -> CacheEntry:
        """The accounted answer of the first endpoint that gives one, sent with ``call``'s
        headers; no retry is started that could not end before ``call``'s deadline."""
        body = request.body
        sent = exchange.prepare(body if self._mark is None else self._mark(body))
        # Routed by what the provider sees (injected breakpoints too). No await between
        # route() and the first attempt: the router counts the call in flight from there.
        route = await self._router.route(sent)
        ranked = route.endpoints
        if len(ranked) == 1:  # nowhere to fail over to: one coroutine less per resumption
            endpoint = ranked[0]
            answer = await self._attempt(endpoint, route, exchange, call)
        else:
            attempt = partial(self._attempt, route=route, exchange=exchange, call=call)
            endpoint, answer = await first_answer(ranked, attempt, exchange)
        return await self._account.entry(
            request, answer.body, answer.usage, endpoint.name, route.body, answer.stream
        )

    async def _attempt(
        self, endpoint: Endpoint, route: Route, exchange: Exchange, call: Call
    ) -> Answer:
        """One endpoint's answer, counted, and fed back to the router."""
        self._stats.upstream_calls += 1
        with route.attempt(endpoint) as attempt:
            call.waiting_for = f"an answer from endpoint {endpoint.name!r}"
            answer = await exchange.attempt(endpoint, route.body, call)
            attempt.served(answer.usage)
        return answer


class _Committed(Protocol):
    @property
    def committed(self) -> bool: ...


async def first_answer(
    ranked: Sequence[Endpoint],
    attempt: Callable[[Endpoint], Awaitable[T]],
    exchange: _Committed | None = None,
) -> tuple[Endpoint, T]:
    """The endpoint that answered first and its answer: each of ``ranked`` is tried in
    turn while the failure is retryable and nothing of the answer reached a reader yet
    (``exchange.committed``). The one failover loop of every upstream request."""
    for index, endpoint in enumerate(ranked):
        try:
            return endpoint, await attempt(endpoint)
        except APIError as exc:
            last = index + 1 == len(ranked)
            if last or (exchange is not None and exchange.committed) or not should_retry(exc):
                raise
            logger.warning(
                "limpet: endpoint %r failed (%s); trying %r",
                endpoint.name,
                exc,
                ranked[index + 1].name,
            )
    raise AssertionError("unreachable: the last endpoint's failure is raised")
