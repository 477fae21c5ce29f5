"""What one model costs: ``ModelPrices``, exact ``Decimal`` USD per token. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

from limpet.errors import ConfigurationError
from limpet.providers.prompt_cache import CacheCapability

__all__ = ["MAX_PRICE", "MILLION", "ModelPrices", "to_decimal"]

#: Tokens in the million that prices are quoted per.
MILLION = Decimal(1_000_000)
#: The highest price of one unit (a token, a request), in USD: far above the dearest
#: model's, and low enough that no count of tokens priced with it overflows.
MAX_PRICE = Decimal(1000)

_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrices:
    """What one model costs, in USD per token (``request``: USD per request).

    A cache price left as None is charged at the prompt price (a 1 h write: at the 5 min
    write price); ``PriceTable`` fills them from the capability table's multipliers first.
    An audio price left as None is charged as text: audio input at the prompt price,
    cached audio at the cache-read price, audio output at the completion price.

    Attributes:
        prompt: uncached input tokens.
        completion: output tokens, reasoning included.
        cache_read: input tokens read from the provider's prompt cache.
        cache_write: input tokens written to the prompt cache with the default (5 min) TTL.
        cache_write_1h: input tokens written with a 1 h TTL.
        request: a flat fee per request.
        prompt_audio: uncached audio input tokens (Gemini 2.5 Flash: $1/M beside $0.30/M
            for text).
        completion_audio: audio output tokens.
        cache_read_audio: audio input tokens read from the provider's prompt cache.
        source: where the prices came from: ``"gateway"``, ``"genai-prices"``,
            ``"override"``, or ``"free"`` (an OpenRouter ``:free`` variant).
        long_context: ``(tokens, prices)``: a request whose prompt is over ``tokens``
            (cached tokens included) is priced wholly at ``prices`` (Gemini 2.5 Pro's and
            Claude's long-context rates above 200,000), which may have a long context of
            their own, for the next tier up; None: one rate at every length.
    """

    prompt: Decimal
    completion: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    request: Decimal = _ZERO
    source: str = "override"
    long_context: tuple[int, ModelPrices] | None = None
    prompt_audio: Decimal | None = None
    completion_audio: Decimal | None = None
    cache_read_audio: Decimal | None = None

    def __post_init__(self) -> None:
        long = self.long_context
        if long is not None and not (
            isinstance(long, tuple)
            and len(long) == 2
            and type(long[0]) is int
            and long[0] > 0
            and isinstance(long[1], ModelPrices)
        ):
            raise ConfigurationError(
                "ModelPrices.long_context: expected (tokens > 0, ModelPrices) or None"
            )
        for name in (
            "prompt",
            "completion",
            "cache_read",
            "cache_write",
            "cache_write_1h",
            "request",
            "prompt_audio",
            "completion_audio",
            "cache_read_audio",
        ):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, Decimal) and value.is_finite()):
                raise ConfigurationError(f"ModelPrices.{name}: expected a finite Decimal")
            if value is not None and not 0 <= value <= MAX_PRICE:
                raise ConfigurationError(
                    f"ModelPrices.{name}: expected a price from 0 to {MAX_PRICE} USD a unit, "
                    f"got {value}"
                )

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
        prompt_audio: float | str | Decimal | None = None,
        completion_audio: float | str | Decimal | None = None,
        cache_read_audio: float | str | Decimal | None = None,
    ) -> ModelPrices:
        """Prices as people quote them: USD per million tokens (``request``: per request).

        Example:
            >>> ModelPrices.per_million(prompt=3, completion=15).prompt
            Decimal('0.000003')
        """

        def per_token(mtok: float | str | Decimal | None) -> Decimal | None:
            return None if mtok is None else to_decimal(mtok) / MILLION

        return cls(
            prompt=to_decimal(prompt) / MILLION,
            completion=to_decimal(completion) / MILLION,
            cache_read=per_token(cache_read),
            cache_write=per_token(cache_write),
            cache_write_1h=per_token(cache_write_1h),
            request=to_decimal(request),
            source=source,
            prompt_audio=per_token(prompt_audio),
            completion_audio=per_token(completion_audio),
            cache_read_audio=per_token(cache_read_audio),
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

    def at(self, prompt_tokens: int) -> ModelPrices:
        """The prices of a request with a prompt of ``prompt_tokens`` (cached included):
        those of the highest long-context tier past whose threshold it is, else these."""
        prices = self
        long = prices.long_context
        while long is not None and prompt_tokens > long[0]:
            prices = long[1]
            long = prices.long_context
        return prices

    def completed(self, capability: CacheCapability | None) -> ModelPrices:
        """These prices with unlisted cache prices derived from ``capability``'s
        multipliers of the prompt price; unchanged without a capability."""
        if capability is None:
            return self
        prompt = self.prompt

        def derived(multiplier: float) -> Decimal:
            # Within the bound every price keeps: a prompt price near it, multiplied,
            # would otherwise fail the paid call being priced.
            return min(prompt * to_decimal(multiplier), MAX_PRICE)

        read = self.cache_read
        write = self.cache_write
        write_1h = self.cache_write_1h
        read_audio = self.cache_read_audio
        if read is None:
            read = derived(capability.read_multiplier)
        if read_audio is None and self.prompt_audio is not None:
            # The provider's read discount applies to audio as to text (Gemini: 0.25x).
            read_audio = min(self.prompt_audio * to_decimal(capability.read_multiplier), MAX_PRICE)
        if write is None:
            write = derived(capability.write_multiplier)
        if write_1h is None and capability.write_1h_multiplier is not None:
            write_1h = derived(capability.write_1h_multiplier)
        long = self.long_context
        if long is not None:
            long = (long[0], long[1].completed(capability))
        return replace(
            self,
            cache_read=read,
            cache_write=write,
            cache_write_1h=write_1h,
            cache_read_audio=read_audio,
            long_context=long,
        )

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

    @property
    def audio_price(self) -> Decimal:
        """USD per uncached audio input token as charged."""
        return self.prompt if self.prompt_audio is None else self.prompt_audio

    @property
    def audio_read_price(self) -> Decimal:
        """USD per cache-read audio input token as charged."""
        return self.read_price if self.cache_read_audio is None else self.cache_read_audio

    @property
    def completion_audio_price(self) -> Decimal:
        """USD per audio output token as charged."""
        return self.completion if self.completion_audio is None else self.completion_audio


def _listed(value: object) -> Decimal | None:
    """A listed price: a decimal string (or number) from 0 to ``MAX_PRICE``, else
    None (a gateway's listing is outside data: ``"1e999999"`` overflowed as a paid call
    was priced, and failed it)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    try:
        price = to_decimal(value)
    except ConfigurationError:
        return None
    return price if price.is_finite() and 0 <= price <= MAX_PRICE else None


def to_decimal(value: float | str | Decimal) -> Decimal:
    if isinstance(value, Decimal):
        return value
    try:
        # repr() is the shortest decimal that round-trips: 0.3 stays 0.3, not 0.2999...
        return Decimal(repr(value) if isinstance(value, float) else value)
    except (InvalidOperation, TypeError, ValueError):
        raise ConfigurationError(f"expected a price, got {value!r}") from None
