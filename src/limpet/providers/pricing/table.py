"""``PriceTable``: per-model prices from user overrides, the gateway's ``/models`` listing
(read once, lazily) and the ``genai-prices`` fallback, in that order."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from decimal import Decimal

from limpet._checks import check_number
from limpet.errors import ConfigurationError, NotFoundError
from limpet.providers.pricing.genai import (
    Quote,
    fallback_now,
    fallback_quote,
    fallback_snapshot,
)
from limpet.providers.pricing.prices import ModelPrices
from limpet.providers.prompt_cache import DEFAULT_CAPABILITIES, CapabilityTable

__all__ = ["DEFAULT_LOAD_WAIT", "DEFAULT_RETRY_AFTER", "ModelsFetch", "PriceTable"]

logger = logging.getLogger("limpet.pricing")

#: Seconds after a failed ``/models`` fetch before the next call tries again.
DEFAULT_RETRY_AFTER = 300.0
#: Seconds ``prices()`` waits at most for the listing being fetched: past them, an answer
#: is priced from what is known now (genai-prices) while the fetch goes on.
DEFAULT_LOAD_WAIT = 1.0

# Name tuples whose prices ``get`` keeps resolved (a process prices a few models).
_MAX_RESOLVED = 1024
# The variant suffix of OpenRouter's free models, and what they cost.
_FREE = ":free"
# What follows a model's name in its snapshots' names: a date, or a release number.
_SNAPSHOT = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}|\d{3,4}")
_FREE_PRICES = ModelPrices(prompt=Decimal(0), completion=Decimal(0), source="free")

#: Fetches the gateway's ``/models`` listing and returns its parsed JSON. Supplied by the
#: Client so the fetch shares its HTTP session; may raise anything (a failure only means
#: fallback prices for a while).
ModelsFetch = Callable[[], Awaitable[object]]


class PriceTable:
    """Per-model prices: user overrides, then the gateway's ``/models``, then genai-prices.

    The listing is fetched on the first ``load()`` (``prices()`` calls it), once, by a
    task of the table's own; ``prices()`` waits for it at most ``load_wait`` seconds (and
    at most its caller's ``wait``), then answers from what is known now (the fallback)
    while the fetch goes on for later calls: an answer in hand is never held up by a
    slow or hanging ``/models``, so the first calls' prices may be genai-prices' rather
    than the gateway's. A failed fetch is logged once and retried ``retry_after`` seconds
    later; until then the fallback answers. Never raises for a missing price: ``get``
    returns None.

    Args:
        fetch: returns the parsed JSON of the gateway's ``GET /models``; None: no gateway
            prices (overrides and fallback only).
        overrides: model id → prices that win over every other source.
        fallback: use the prices bundled with ``genai-prices`` (when installed) for models
            the gateway does not list.
        capabilities: derives unlisted cache prices from family multipliers.
        retry_after: seconds before a failed fetch is tried again.
        load_wait: seconds ``prices()`` waits at most for a fetch under way.
        clock: monotonic seconds, for ``retry_after``.

    Example:
        >>> async def fetch() -> object:       # the gateway's GET /models, parsed
        ...     return {"data": [{"id": "anthropic/claude-sonnet-4.6",
        ...              "pricing": {"prompt": "0.000003", "completion": "0.000015"}}]}
        >>> table = PriceTable(fetch, overrides={
        ...     "my/fine-tune": ModelPrices.per_million(prompt=1, completion=2)})
        >>> prices = asyncio.run(table.prices("anthropic/claude-sonnet-4.6"))  # or await it
        >>> prices.source, prices.prompt, prices.cache_read   # read: the family's 0.1 x prompt
        ('gateway', Decimal('0.000003'), Decimal('3E-7'))
        >>> table.get("my/fine-tune:nitro").completion       # get(): what is known now, no I/O
        Decimal('0.000002')
    """

    __slots__ = (
        "_capabilities",
        "_failed_at",
        "_fallback",
        "_fallback_memo",
        "_fetch",
        "_input_memo",
        "_listed",
        "_load_wait",
        "_loaded",
        "_loading",
        "_overrides",
        "_resolved",
        "_retry_after",
        "_told_slow",
        "clock",
    )

    def __init__(
        self,
        fetch: ModelsFetch | None = None,
        *,
        overrides: Mapping[str, ModelPrices] | None = None,
        fallback: bool = True,
        capabilities: CapabilityTable = DEFAULT_CAPABILITIES,
        retry_after: float = DEFAULT_RETRY_AFTER,
        load_wait: float = DEFAULT_LOAD_WAIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_number("PriceTable.retry_after", retry_after)
        check_number("PriceTable.load_wait", load_wait)
        self._fetch = fetch
        self._overrides: dict[str, ModelPrices] = {}
        # What ``get`` answered, by its names: every call of a model is priced alike until
        # an override or a listing changes what is known (they forget it all).
        self._resolved: dict[tuple[str, ...], ModelPrices | None] = {}
        for model, prices in (overrides or {}).items():
            self.override(model, prices)
        self._fallback = fallback
        self._capabilities = capabilities
        self._retry_after = retry_after
        self._load_wait = load_wait
        self.clock = clock
        self._listed: dict[str, ModelPrices] = {}
        # The fallback's prices by name, each until it changes them (``fallback_quote``).
        self._fallback_memo: dict[str, Quote] = {}
        self._input_memo: dict[str, Quote] = {}  # ``input_prices``' fallback
        self._loaded = fetch is None
        self._failed_at: float | None = None
        # The fetch under way (or the last one): waiters give up on it, it goes on.
        self._loading: asyncio.Task[None] | None = None
        self._told_slow = False  # that this fetch outlasted a wait: logged once

    def __repr__(self) -> str:
        state = "loaded" if self._loaded else "not loaded"
        return (
            f"PriceTable({state}, listed={len(self._listed)}, overrides={len(self._overrides)}, "
            f"fallback={self._fallback})"
        )

    @property
    def loaded(self) -> bool:
        """Whether the gateway's listing has been read (always True without a fetch)."""
        return self._loaded

    def override(self, model: str, prices: ModelPrices) -> None:
        """Price ``model`` at ``prices`` from now on, whatever the gateway lists."""
        if not isinstance(model, str) or not model or not isinstance(prices, ModelPrices):
            raise ConfigurationError("PriceTable.override: expected a model id and ModelPrices")
        self._overrides[model] = prices
        self._resolved.clear()

    def add_listing(self, listing: object) -> int:
        """Read an OpenRouter ``/models`` body (``{"data": [{"id", "pricing"}, ...]}``);
        returns how many models it priced. Unusable items are skipped."""
        data = listing.get("data") if isinstance(listing, Mapping) else None
        count = 0
        for item in data if isinstance(data, list) else ():
            if not isinstance(item, Mapping) or not isinstance(item.get("id"), str):
                continue
            prices = ModelPrices.from_openrouter(item.get("pricing"))
            if prices is not None:
                self._listed[item["id"]] = prices
                count += 1
        self._resolved.clear()
        return count

    async def load(self, wait: float | None = None) -> bool:
        """Fetch the gateway's listing if it has not been read yet (nor failed within
        ``retry_after``), and wait for the fetch at most ``wait`` seconds (None: until it
        ends). A waiter that gives up (its wait over, or cancelled) leaves the fetch
        running: the next call finds its prices. Never raises.

        Returns:
            Whether the listing has been read.
        """
        fetch = self._fetch
        if self._loaded or fetch is None:
            return self._loaded
        loading = self._loading
        loop = asyncio.get_running_loop()
        if loading is None or loading.done() or loading.get_loop() is not loop:
            if self._backing_off():
                return False
            loading = self._loading = loop.create_task(
                self._fetch_listing(fetch), name="limpet-prices"
            )
            self._told_slow = False
        if wait is not None and wait <= 0:
            return self._loaded  # started, for the calls to come
        await asyncio.wait((loading,), timeout=wait)
        if not loading.done() and not self._told_slow:  # once per fetch, not per answer
            self._told_slow = True
            logger.info(
                "limpet: the gateway's /models listing did not come in %gs; answers are "
                "priced from genai-prices until it does",
                wait,
            )
        return self._loaded

    async def aclose(self) -> None:
        """Stop a fetch under way, and wait until it has stopped (a later ``load()``
        starts another)."""
        loading, self._loading = self._loading, None
        if loading is not None and not loading.done():
            loading.cancel()
            await asyncio.wait((loading,))

    async def _fetch_listing(self, fetch: ModelsFetch) -> None:
        try:
            count = self.add_listing(await fetch())
        except NotFoundError:
            # Many gateways (and relays) have no /models: normal, not an outage.
            self._failed("the gateway has no /models listing", logging.INFO)
            return
        except Exception as exc:  # a price fetch must never fail a completion
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        if not count:
            self._failed("the listing priced no model", logging.INFO)
            return
        self._loaded = True
        self._failed_at = None
        logger.debug("limpet: %d model prices from the gateway", count)

    def _failed(self, why: str, level: int = logging.WARNING) -> None:
        if self._failed_at is None:  # once per outage, not once per retry
            logger.log(
                level, "limpet: no model prices from the gateway (%s); using genai-prices", why
            )
        self._failed_at = self.clock()

    async def prices(self, model: str, *also: str, wait: float | None = None) -> ModelPrices | None:
        """``get(model, *also)`` once the listing is read, or once ``wait`` seconds (None,
        or more than ``load_wait``: ``load_wait``) have passed fetching it: then from what
        is known now. The fallback's first use is prepared off the event loop (importing
        its data takes a fraction of a second, once)."""
        if not self._loaded:
            await self.load(self._load_wait if wait is None else min(wait, self._load_wait))
        names = _names(model, also)
        if names in self._resolved:
            return self._resolved[names]
        unknown = not names or self._known(names) is None
        if self._fallback and unknown and any(n not in self._fallback_memo for n in names):
            await asyncio.to_thread(fallback_snapshot)
        return self.get(model, *also)

    async def input_prices(
        self, model: str, *also: str, wait: float | None = None
    ) -> ModelPrices | None:
        """``prices(model, *also, wait=wait)``, for a model billed by its input alone (an
        embedding model): when none are known, genai-prices' entry pricing its input
        alone is taken, with no price for an output it has none of."""
        found = await self.prices(model, *also, wait=wait)
        if found is not None or not self._fallback:
            return found
        for name in _names(model, also):
            found, _ = _quoted(self._input_memo, name, input_only=True)
            if found is not None:
                return found
        return None

    def get(self, model: str, *also: str) -> ModelPrices | None:
        """Prices of ``model`` from what is known now (no I/O), or None.

        Each name is tried as given, then without its OpenRouter variant (``:nitro``...).
        ``also`` names the same model otherwise (the slug requested, when ``model`` is the
        one the response names): every name is looked for in the overrides and the
        listing before any in the fallback. A name that is not a non-empty string (an
        upstream's answer may name its model with anything) is ignored.
        """
        names = _names(model, also)
        if names in self._resolved:
            return self._resolved[names]
        prices, lasting = self._resolve(names)
        if lasting:  # else the fallback's, which change at a time of day or on a date
            if len(self._resolved) >= _MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[names] = prices
        return prices

    def _resolve(self, names: tuple[str, ...]) -> tuple[ModelPrices | None, bool]:
        """The prices of ``names``, and whether they hold for good."""
        if not names:
            return None, True
        if _free(names):
            # OpenRouter's free variant of a model answered: priced as such (unless its
            # own name is overridden: the paid model's override is not the free one's,
            # however the answer names it), whatever its listing lacks.
            free_names = (name for name in names if name.endswith(_FREE))
            found = next(filter(None, map(self._overrides.get, free_names)), None)
            return found or _FREE_PRICES, True
        found, until = self._known(names), None
        if found is None and self._fallback:
            for name in names:
                found, until = _quoted(self._fallback_memo, name)
                if found is not None:
                    break
        if found is None:
            return None, True
        # The answer may name the model as its provider does (``claude-sonnet-4-6``), which
        # no family rule knows: the requested name's family then prices the cache.
        capability = next(filter(None, map(self._capabilities.lookup, names)), None)
        return found.completed(capability), until is None

    def _known(self, names: tuple[str, ...]) -> ModelPrices | None:
        """The override or listing of the first of ``names`` that has one. An override
        wins over every other source for its model, which includes its dated snapshot
        answering (``openai/gpt-4o`` asked, ``gpt-4o-2024-08-06`` answered, listed at the
        gateway's price): the answered name's listing loses to the asked name's override
        then. Another model answering (a ``models`` fallback) is priced as itself."""
        answered, asked = names[0], names[1:]
        snapshot_of = [name for name in asked if _snapshot_of(answered, name)]
        for name, sources in (
            (answered, (self._overrides,)),
            *((name, (self._overrides,)) for name in snapshot_of),
            (answered, (self._listed,)),
            *((name, (self._overrides, self._listed)) for name in asked),
        ):
            base = name.partition(":")[0]
            for source in sources:
                found = source.get(name) or source.get(base)
                if found is not None:
                    return found
        return None

    def _backing_off(self) -> bool:
        failed = self._failed_at
        return failed is not None and self.clock() - failed < self._retry_after


def _snapshot_of(answered: str, asked: str) -> bool:
    """Whether ``answered`` names a dated snapshot of ``asked`` (``gpt-4o-2024-08-06`` of
    ``openai/gpt-4o``, ``claude-3-5-sonnet-20241022`` of ``anthropic/claude-3-5-sonnet``),
    its provider's prefix and OpenRouter's variant left out, dots read as dashes
    (OpenRouter's ``claude-3.5-sonnet``, Anthropic's ``claude-3-5-sonnet-20241022``)."""
    mine = answered.partition(":")[0].rpartition("/")[2].replace(".", "-")
    theirs = asked.partition(":")[0].rpartition("/")[2].replace(".", "-")
    return (
        mine.startswith(theirs + "-") and _SNAPSHOT.fullmatch(mine[len(theirs) + 1 :]) is not None
    )


def _free(names: tuple[str, ...]) -> bool:
    """Whether the model that answered (the first name) is a free variant: named so, or
    named as the free variant asked for (``also``), its suffix left out. (Another model
    answering a free request, one of its ``models`` fallbacks, is paid for.)"""
    answered = names[0]
    return answered.endswith(_FREE) or any(
        name.endswith(_FREE) and name[: -len(_FREE)] == answered for name in names[1:]
    )


def _quoted(memo: dict[str, Quote], name: str, *, input_only: bool = False) -> Quote:
    """The fallback's prices of ``name`` from ``memo``, asked again once they may have
    changed (``fallback_quote``'s until); ``memo`` forgets all it holds when full."""
    quote = memo.get(name)
    if quote is None or (quote[1] is not None and fallback_now() >= quote[1]):
        if len(memo) >= _MAX_RESOLVED:
            memo.clear()
        quote = memo[name] = fallback_quote(name, input_only=input_only)
    return quote


def _names(model: object, also: tuple[object, ...]) -> tuple[str, ...]:
    """The names to price a model by: those that are non-empty strings, in order."""
    return tuple(name for name in (model, *also) if isinstance(name, str) and name)
