"""The account stage: an upstream answer's usage and cost, parsed and priced once.

The cache entry keeps what the call cost, and what the provider's prompt cache saved on
it for the caller whose call it was (not stored); and what was spent is told
as the answer comes (``Spent``), whoever is still waiting for it: a call whose caller
left (cancelled, past its deadline, a stream closed) while others wait on its flight, or
that goes on to be stored with nobody waiting, was paid for all the same.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import orjson

from limpet.cache.base import CacheEntry
from limpet.errors import ConfigurationError
from limpet.models import Cost, Usage
from limpet.pipeline.embed_result import Sent, known_sum
from limpet.pipeline.request import Request
from limpet.pipeline.vectors import Vector
from limpet.providers.pricing import (
    ModelPrices,
    PriceTable,
    completion_cost,
    prompt_cache_savings,
    split_writes,
)
from limpet.providers.prompt_cache import breakpoint_ttls
from limpet.providers.usage import parse_usage, reported_cost, with_write_ttl

logger = logging.getLogger("limpet")

#: Told what an upstream answer cost as it comes: the model asked for, its usage, its
#: dollars (None: unpriced).
Spent = Callable[[str, Usage, Cost | None], None]
#: Finds a model's prices by its names (``PriceTable.prices`` or ``input_prices``), waiting
#: for the gateway's listing at most ``wait`` seconds.
Lookup = Callable[..., Awaitable[ModelPrices | None]]

#: Seconds of a call's time left to what follows its pricing (storing the answer,
#: returning it): a wait for the price listing ends this long before the deadline.
AFTER_PRICING = 0.1


class Accounting:
    """Prices upstream answers from one ``PriceTable``, and tells ``spent`` (if given)
    what each cost.

    An answer in hand is never held up by pricing past ``price_wait``: the first lookup
    starts the gateway's listing fetch, and waits for it no longer than the call's time
    allows (nor than the table's ``load_wait``), and not at all when the gateway reported
    the cost. An answer whose caller left while its price was looked up was paid all the
    same: a task of its own prices it once the lookup can be made, until ``aclose()``.
    """

    __slots__ = ("_late", "prices", "spent")

    def __init__(self, prices: PriceTable, spent: Spent | None = None) -> None:
        self.prices = prices
        self.spent = spent
        self._late: set[asyncio.Task[None]] = set()

    async def entry(
        self,
        request: Request,
        answer: dict[str, Any],
        usage: Usage,
        endpoint: str,
        sent: Mapping[str, Any],
        stream: bytes | None = None,
        *,
        deadline: float | None = None,
    ) -> CacheEntry:
        """The cache entry of ``answer`` (whose ``usage`` the upstream stage parsed from
        its ``usage`` object), with what it cost and what the provider's prompt cache
        saved on it, priced in time for the call's ``deadline`` (event-loop time)."""
        mixed = False
        if usage.cache_write_tokens and not usage.cache_write_1h_tokens:
            # OpenRouter reports one total of cache writes; their TTL is the marks'. Of
            # marks asking for both, the gateway's charge tells the split (``_priced``).
            ttls = breakpoint_ttls(sent)
            mixed = len(ttls) > 1
            if len(ttls) == 1:
                usage = with_write_ttl(usage, next(iter(ttls)))
        prices, cost, usage = await self._priced(
            request.model, answer, usage, deadline=deadline, mixed=mixed
        )
        now = time.time()
        usd = None if cost is None else cost.usd
        entry = CacheEntry(
            answer, usage, usd, endpoint, now, now + request.ttl, stream, body_usage=usage.reported
        )
        if prices is not None:  # a priced call's cost carries its savings already
            entry.saved_usd = (
                cost.saved_usd if cost is not None else prompt_cache_savings(usage, prices)
            )
        return entry

    async def embedding(
        self, model: str, answer: dict[str, Any], usage: Usage, deadline: float | None = None
    ) -> float | None:
        """The dollars of one ``/embeddings`` answer of ``usage`` (None: unknown): the
        gateway's reported cost, else its input tokens priced in time for ``deadline``."""
        _, cost, _ = await self._priced(
            model, answer, usage, self.prices.input_prices, deadline=deadline
        )
        return None if cost is None else cost.usd

    async def aclose(self) -> None:
        """Stop pricing the answers whose callers left (their tokens are told, and what
        they reported), and wait until it has stopped."""
        for task in list(self._late):
            task.cancel()
        if self._late:
            await asyncio.wait(list(self._late))

    async def _priced(
        self,
        model: str,
        answer: dict[str, Any],
        usage: Usage,
        lookup: Lookup | None = None,
        *,
        deadline: float | None = None,
        mixed: bool = False,
    ) -> tuple[ModelPrices | None, Cost | None, Usage]:
        """The prices of ``answer`` (to ``model``), found by ``lookup`` (the table's
        ``prices`` by default) within ``price_wait``, its cost, told as it comes, and its
        usage: with ``mixed`` (one total of cache writes of both TTLs), its writes split
        as the gateway's charge says, when it reports one (``split_writes``)."""
        lookup = lookup or self.prices.prices
        reported = reported_cost(answer.get("usage"))
        names = (answered_model(answer, model), model)
        wait = price_wait(reported, deadline, asyncio.get_running_loop().time())
        try:  # the first price lookup starts fetching the gateway's listing
            prices = await lookup(*names, wait=wait)
        except asyncio.CancelledError:
            self._price_later(model, usage, partial(lookup, *names), reported)
            raise
        except (ArithmeticError, ConfigurationError) as exc:
            # Prices no arithmetic can use: the call was paid, its cost is unknown.
            logger.warning("limpet: %r could not be priced: %s", model, exc)
            prices = None
        if mixed and prices is not None and reported is not None:
            usage = split_writes(usage, prices, reported)
        cost = completion_cost(usage, prices, reported)
        self._tell(model, usage, cost)
        return prices, cost, usage

    def billed(self, payload: bytes, answer: dict[str, Any]) -> None:
        """Tell what an answer refused after it was paid for cost (a failed generation
        in a 200 that reported its usage; ``Transport.billed``): ``answer`` holds its
        ``model`` and ``usage``, ``payload`` the request sent (its model asked for)."""
        try:
            requested = orjson.loads(payload).get("model")
        except (orjson.JSONDecodeError, AttributeError):
            requested = None
        model = requested if isinstance(requested, str) and requested else "unknown"
        names = (answered_model(answer, model), model)
        usage = answer.get("usage")
        self._price_later(
            model, parse_usage(usage), partial(self.prices.prices, *names), reported_cost(usage)
        )

    def _price_later(
        self,
        model: str,
        usage: Usage,
        lookup: Callable[[], Awaitable[ModelPrices | None]],
        reported: float | None,
    ) -> None:
        """Tell what an answer whose caller left cost: what the gateway reported at once,
        else once its prices are found, by a task of its own (the caller's is ending),
        with none if they cannot be (the Client closed: its tokens at least)."""
        if reported is not None or not usage.reported:
            self._tell(model, usage, completion_cost(usage, None, reported))
            return

        async def price() -> None:
            prices = None
            try:
                prices = await lookup()
            except (ArithmeticError, ConfigurationError) as exc:
                logger.warning("limpet: %r could not be priced: %s", model, exc)
            finally:
                self._tell(model, usage, completion_cost(usage, prices, reported))

        task = asyncio.get_running_loop().create_task(price(), name="limpet-late-price")
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    def _tell(self, model: str, usage: Usage, cost: Cost | None) -> None:
        if self.spent is not None:
            self.spent(model, usage, cost)


def price_wait(reported: float | None, deadline: float | None, now: float) -> float:
    """Seconds an answer's pricing may wait for the gateway's price listing (the table
    bounds it by its ``load_wait`` too): none when the gateway ``reported`` the cost (its
    dollars need no price; what the provider's cache saved, and a split of cache writes
    by TTL, are priced from what is known now), else until ``AFTER_PRICING`` before the
    call's ``deadline`` (None: no deadline)."""
    if reported is not None:
        return 0.0
    if deadline is None:
        return math.inf
    return max(0.0, deadline - now - AFTER_PRICING)


def answered_model(answer: dict[str, Any], requested: str) -> str:
    """The model ``answer`` says served it, when it names one (a non-empty string); else
    the one ``requested``. An upstream's ``model`` is whatever it sent: a number or a list
    there must not fail the call."""
    model = answer.get("model")
    return model if type(model) is str and model else requested


def add_batch(
    sent: Sent,
    keys: list[str],
    vectors: list[Vector],
    body: dict[str, Any],
    name: str,
    usage: Usage,
    cost: float | None,
) -> None:
    """Add one embeddings response, its usage and dollars (``Accounting.embedding``'s), to what
    a call's requests brought back."""
    sent.vectors.update(zip(keys, vectors, strict=True))
    sent.raw.append(body)
    add_spend(sent, usage, cost)
    if isinstance(body.get("model"), str):
        sent.model = body["model"]
    sent.endpoint = name


def merge_sent(into: Sent, more: Sent) -> None:
    """Add what more requests of the same call brought back to ``into``, with what of
    it another process sent (not this call's misses)."""
    into.vectors.update(more.vectors)
    into.failed.update(more.failed)
    into.raw.extend(more.raw)
    into.from_others |= more.from_others
    if more.usage is not None:
        add_spend(into, more.usage, more.cost)
    into.model = more.model or into.model
    into.endpoint = more.endpoint or into.endpoint


def add_spend(sent: Sent, usage: Usage, cost: float | None) -> None:
    """Add what one embeddings response cost to what a call's requests cost: every
    answer's, its vectors used or not (an answer refused as malformed was paid too)."""
    sent.usage = usage if sent.usage is None else sent.usage + usage
    sent.cost = known_sum(sent.cost, cost)
