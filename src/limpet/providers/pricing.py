"""Prices and the cost ledger: what a call cost, and what provider prompt caching saved.

``PriceTable`` knows what each model costs per token. It reads the gateway's ``/models``
listing (OpenRouter's ``pricing``: USD per token as decimal strings) once, lazily, through a
fetch callable the Client supplies; falls back to the prices bundled with the
``genai-prices`` package when the gateway does not list a model (or cannot be reached);
and takes user overrides before either. A cache price neither source lists is derived from
the model family's multiplier in the capability table (``limpet.providers.prompt_cache``).

The arithmetic is pure and exact: prices are ``Decimal`` per token, and only the result
becomes a float.

Example:
    >>> prices = ModelPrices.per_million(prompt=3, completion=15, cache_read=0.3,
    ...                                  cache_write=3.75, cache_write_1h=6)
    >>> u = Usage(prompt_tokens=10_000, completion_tokens=500, cached_tokens=8_000)
    >>> cost_usd(u, prices)                 # 2,000 x $3/M + 8,000 x $0.30/M + 500 x $15/M
    0.0159
    >>> prompt_cache_savings(u, prices)     # 8,000 x ($3 - $0.30)/M
    0.0216
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from limpet.errors import ConfigurationError, NotFoundError
from limpet.models import Cost, Usage
from limpet.providers.prompt_cache import DEFAULT_CAPABILITIES, CacheCapability, CapabilityTable

__all__ = [
    "DEFAULT_RETRY_AFTER",
    "ModelPrices",
    "ModelsFetch",
    "PriceTable",
    "completion_cost",
    "cost_usd",
    "prompt_cache_savings",
    "storage_cost_usd",
]

logger = logging.getLogger("limpet.pricing")

#: Seconds after a failed ``/models`` fetch before the next call tries again.
DEFAULT_RETRY_AFTER = 300.0

#: Fetches the gateway's ``/models`` listing and returns its parsed JSON. Supplied by the
#: Client so the fetch shares its HTTP session; may raise anything (a failure only means
#: fallback prices for a while).
ModelsFetch = Callable[[], Awaitable[object]]

_ZERO = Decimal(0)
_MILLION = Decimal(1_000_000)
_THOUSAND = Decimal(1_000)
_HOUR = Decimal(3600)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrices:
    """What one model costs, in USD per token (``request``: USD per request).

    A cache price left as None is charged at the prompt price (a 1 h write: at the 5 min
    write price); ``PriceTable`` fills them from the capability table's multipliers first.

    Attributes:
        prompt: uncached input tokens.
        completion: output tokens, reasoning included.
        cache_read: input tokens read from the provider's prompt cache.
        cache_write: input tokens written to the prompt cache with the default (5 min) TTL.
        cache_write_1h: input tokens written with a 1 h TTL.
        request: a flat fee per request.
        source: where the prices came from: ``"gateway"``, ``"genai-prices"`` or
            ``"override"``.
    """

    prompt: Decimal
    completion: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    request: Decimal = _ZERO
    source: str = "override"

    def __post_init__(self) -> None:
        for name in ("prompt", "completion", "cache_read", "cache_write", "cache_write_1h"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, Decimal) and value.is_finite()):
                raise ConfigurationError(f"ModelPrices.{name}: expected a finite Decimal")
            if value is not None and value < 0:
                raise ConfigurationError(f"ModelPrices.{name}: expected a price >= 0")

    @classmethod
    def per_million(
        cls,
        *,
        prompt: float | str | Decimal,
        completion: float | str | Decimal,
        cache_read: float | str | Decimal | None = None,
        cache_write: float | str | Decimal | None = None,
        cache_write_1h: float | str | Decimal | None = None,
        request: float | str | Decimal = 0,
        source: str = "override",
    ) -> ModelPrices:
        """Prices as people quote them: USD per million tokens (``request``: per request).

        Example:
            >>> ModelPrices.per_million(prompt=3, completion=15).prompt
            Decimal('0.000003')
        """

        def per_token(mtok: float | str | Decimal | None) -> Decimal | None:
            return None if mtok is None else _decimal(mtok) / _MILLION

        return cls(
            prompt=_decimal(prompt) / _MILLION,
            completion=_decimal(completion) / _MILLION,
            cache_read=per_token(cache_read),
            cache_write=per_token(cache_write),
            cache_write_1h=per_token(cache_write_1h),
            request=_decimal(request),
            source=source,
        )

    @classmethod
    def from_openrouter(cls, pricing: object, *, source: str = "gateway") -> ModelPrices | None:
        """Prices from an OpenRouter ``/models`` ``pricing`` object, or None when it has no
        usable prompt and completion price (OpenRouter lists ``"-1"`` for variable ones)."""
        if not isinstance(pricing, Mapping):
            return None
        prompt = _listed(pricing.get("prompt"))
        completion = _listed(pricing.get("completion"))
        if prompt is None or completion is None:
            return None
        return cls(
            prompt=prompt,
            completion=completion,
            cache_read=_listed(pricing.get("input_cache_read")),
            cache_write=_listed(pricing.get("input_cache_write")),
            cache_write_1h=_listed(pricing.get("input_cache_write_1h")),
            request=_listed(pricing.get("request")) or _ZERO,
            source=source,
        )

    def completed(self, capability: CacheCapability | None) -> ModelPrices:
        """These prices with unlisted cache prices derived from ``capability``'s
        multipliers of the prompt price; unchanged without a capability."""
        if capability is None:
            return self
        prompt = self.prompt
        read = self.cache_read
        write = self.cache_write
        write_1h = self.cache_write_1h
        if read is None:
            read = prompt * _decimal(capability.read_multiplier)
        if write is None:
            write = prompt * _decimal(capability.write_multiplier)
        if write_1h is None and capability.write_1h_multiplier is not None:
            write_1h = prompt * _decimal(capability.write_1h_multiplier)
        return replace(self, cache_read=read, cache_write=write, cache_write_1h=write_1h)

    @property
    def read_price(self) -> Decimal:
        """USD per cache-read token as charged."""
        return self.prompt if self.cache_read is None else self.cache_read

    @property
    def write_price(self) -> Decimal:
        """USD per 5 min cache-write token as charged."""
        return self.prompt if self.cache_write is None else self.cache_write

    @property
    def write_1h_price(self) -> Decimal:
        """USD per 1 h cache-write token as charged."""
        return self.write_price if self.cache_write_1h is None else self.cache_write_1h


def cost_usd(usage: Usage, prices: ModelPrices) -> float:
    """What a call with ``usage`` costs at ``prices``, in USD.

    Every input token is billed once, in its own bucket: uncached at the prompt price,
    reads at the read price, writes at the write price of their TTL.
    """
    total = (
        usage.uncached_tokens * prices.prompt
        + usage.cached_tokens * prices.read_price
        + usage.cache_write_5m_tokens * prices.write_price
        + usage.cache_write_1h_tokens * prices.write_1h_price
        + usage.completion_tokens * prices.completion
        + prices.request
    )
    return float(total)


def prompt_cache_savings(usage: Usage, prices: ModelPrices) -> float:
    """What provider prompt caching saved on one call, in USD: reads x (prompt price - read
    price), less writes x (write price - prompt price). Negative when a call only wrote."""
    prompt = prices.prompt
    saved = (
        usage.cached_tokens * (prompt - prices.read_price)
        - usage.cache_write_5m_tokens * (prices.write_price - prompt)
        - usage.cache_write_1h_tokens * (prices.write_1h_price - prompt)
    )
    return float(saved)


def completion_cost(
    usage: Usage, prices: ModelPrices | None, reported: float | None = None
) -> Cost | None:
    """``Completion.cost`` of an upstream call.

    Args:
        usage: the call's normalised usage.
        prices: the model's prices, or None when unknown.
        reported: the gateway's own ``usage.cost`` (``limpet.providers.usage.reported_cost``); it
            wins over the computed cost, since it is what was charged.

    Returns:
        ``Cost(usd, saved_usd)``, or None when the cost is unknown: the response reported
        no usage (``usage.reported`` is False: pricing its zeros would claim $0), or
        neither a reported cost nor prices exist.
    """
    if not usage.reported:
        return None
    if prices is None:
        return None if reported is None else Cost(reported, 0.0)
    usd = cost_usd(usage, prices) if reported is None else reported
    return Cost(usd, prompt_cache_savings(usage, prices))


def storage_cost_usd(tokens: int, seconds: float, usd_per_mtok_hour: float) -> float:
    """Explicit-cache storage (Gemini ``cachedContents``): tokens x hours x hourly price per
    million tokens, prorated by the second."""
    if tokens <= 0 or seconds <= 0:
        return 0.0
    hours = _decimal(seconds) / _HOUR
    return float(tokens * hours * _decimal(usd_per_mtok_hour) / _MILLION)


class PriceTable:
    """Per-model prices: user overrides, then the gateway's ``/models``, then genai-prices.

    The listing is fetched on the first ``load()`` (``prices()`` calls it), once; callers
    that arrive during the fetch wait for it. A failed fetch is logged once and retried
    ``retry_after`` seconds later; until then the fallback answers. Never raises for a
    missing price: ``get`` returns None.

    Args:
        fetch: returns the parsed JSON of the gateway's ``GET /models``; None: no gateway
            prices (overrides and fallback only).
        overrides: model id → prices that win over every other source.
        fallback: use the prices bundled with ``genai-prices`` (when installed) for models
            the gateway does not list.
        capabilities: derives unlisted cache prices from family multipliers.
        retry_after: seconds before a failed fetch is tried again.
        clock: monotonic seconds, for ``retry_after``.

    Example:
        >>> import asyncio
        >>> async def fetch() -> object:  # the parsed JSON of the gateway's GET /models
        ...     return {"data": [{"id": "anthropic/claude-sonnet-4.6",
        ...                       "pricing": {"prompt": "0.000003", "completion": "0.000015"}}]}
        >>> table = PriceTable(fetch, fallback=False, overrides={
        ...     "my/fine-tune": ModelPrices.per_million(prompt=1, completion=2)})
        >>> prices = asyncio.run(table.prices("anthropic/claude-sonnet-4.6"))
        >>> prices.prompt, prices.completion
        (Decimal('0.000003'), Decimal('0.000015'))
        >>> table.get("my/fine-tune").completion
        Decimal('0.000002')
        >>> table.get("nobody/knows") is None
        True
    """

    __slots__ = (
        "_capabilities",
        "_failed_at",
        "_fallback",
        "_fallback_memo",
        "_fetch",
        "_listed",
        "_loaded",
        "_lock",
        "_overrides",
        "_retry_after",
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (isinstance(retry_after, int | float) and 0 <= retry_after < math.inf):
            raise ConfigurationError(
                f"PriceTable.retry_after: expected seconds >= 0, got {retry_after!r}"
            )
        self._fetch = fetch
        self._overrides: dict[str, ModelPrices] = {}
        for model, prices in (overrides or {}).items():
            self.override(model, prices)
        self._fallback = fallback
        self._capabilities = capabilities
        self._retry_after = retry_after
        self.clock = clock
        self._listed: dict[str, ModelPrices] = {}
        self._fallback_memo: dict[str, ModelPrices | None] = {}
        self._loaded = fetch is None
        self._failed_at: float | None = None
        self._lock: asyncio.Lock | None = None

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
        return count

    async def load(self) -> None:
        """Fetch the gateway's listing if it has not been read yet. Never raises."""
        if self._loaded or self._fetch is None or self._backing_off():
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._loaded or self._backing_off():
                return  # another caller fetched (or failed) while this one waited
            try:
                count = self.add_listing(await self._fetch())
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

    async def prices(self, model: str, *also: str) -> ModelPrices | None:
        """``get(model, *also)`` after ``load()``; the fallback's first use is prepared off
        the event loop (importing its data takes a fraction of a second)."""
        await self.load()
        names = (model, *also)
        unknown = not any(self._known(name) for name in names)
        if self._fallback and unknown and any(n not in self._fallback_memo for n in names):
            await asyncio.to_thread(_fallback_snapshot)
        return self.get(model, *also)

    def get(self, model: str, *also: str) -> ModelPrices | None:
        """Prices of ``model`` from what is known now (no I/O), or None.

        Each name is tried as given, then without its OpenRouter variant (``:nitro``...).
        ``also`` names the same model otherwise (the slug requested, when ``model`` is the
        one the response names): every name is looked for in the overrides and the
        listing before any in the fallback.
        """
        names = (model, *also)
        found = next(filter(None, map(self._known, names)), None)
        if found is None and self._fallback:
            for name in names:
                if name not in self._fallback_memo:
                    self._fallback_memo[name] = _fallback_prices(name)
                found = self._fallback_memo[name]
                if found is not None:
                    break
        if found is None:
            return None
        return found.completed(self._capabilities.lookup(model))

    def _known(self, model: str) -> ModelPrices | None:
        base = model.partition(":")[0]
        for source in (self._overrides, self._listed):
            found = source.get(model) or source.get(base)
            if found is not None:
                return found
        return None

    def _backing_off(self) -> bool:
        failed = self._failed_at
        return failed is not None and self.clock() - failed < self._retry_after


def _fallback_snapshot() -> Any:
    """genai-prices' bundled data, or None when the package is not installed."""
    try:
        from genai_prices import data_snapshot
    except ImportError:
        return None
    return data_snapshot.get_snapshot()


def _fallback_prices(model: str) -> ModelPrices | None:
    """``model``'s prices from genai-prices: the provider's own entry (``anthropic`` for
    ``anthropic/...``), else its OpenRouter entry. None when it knows neither."""
    snapshot = _fallback_snapshot()
    if snapshot is None or not isinstance(model, str):
        return None
    slug = model.lower().partition(":")[0]
    provider, _, name = slug.rpartition("/")
    attempts: list[tuple[str, str | None]] = [(name, provider or None), (slug, "openrouter")]
    now = datetime.now(tz=UTC)
    for ref, provider_id in attempts:
        try:
            _, info = snapshot.find_provider_model(ref, None, provider_id, None)
            found = _from_genai(info.get_prices(now))
        except Exception:  # third-party data: any failure there just means "unknown"
            continue
        if found is not None:
            return found
    return None


def _from_genai(price: Any) -> ModelPrices | None:
    def per_token(attr: str) -> Decimal | None:
        value = getattr(price, attr, None)
        # Context tiers (above 200k tokens, say) are not modelled: the base price applies.
        value = getattr(value, "base", value)
        return value / _MILLION if isinstance(value, Decimal) and value.is_finite() else None

    prompt, completion = per_token("input_mtok"), per_token("output_mtok")
    if prompt is None or completion is None:
        return None
    requests = getattr(price, "requests_kcount", None)
    return ModelPrices(
        prompt=prompt,
        completion=completion,
        cache_read=per_token("cache_read_mtok"),
        cache_write=per_token("cache_write_mtok"),
        cache_write_1h=per_token("cache_write_1h_mtok"),
        request=requests / _THOUSAND if isinstance(requests, Decimal) else _ZERO,
        source="genai-prices",
    )


def _listed(value: object) -> Decimal | None:
    """A listed price: a decimal string (or number) >= 0, else None."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        price = _decimal(value)
    except ConfigurationError:
        return None
    return price if price.is_finite() and price >= 0 else None


def _decimal(value: float | str | Decimal) -> Decimal:
    if isinstance(value, Decimal):
        return value
    try:
        # repr() is the shortest decimal that round-trips: 0.3 stays 0.3, not 0.2999...
        return Decimal(repr(value) if isinstance(value, float) else value)
    except (InvalidOperation, TypeError, ValueError):
        raise ConfigurationError(f"expected a price, got {value!r}") from None
