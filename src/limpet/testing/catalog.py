"""The fake gateway's model catalogue: prices, context lengths and the ``/models`` listing.

Prices are written per million tokens, as people quote them, and served per token as
decimal strings, as OpenRouter does. Cost arithmetic is done in ``Decimal`` so a test can
check ``usage.cost`` against the listed prices without a floating-point fudge beyond the
final conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """What a model costs, in USD per million tokens (``request``: USD per request).

    A cache price left as None is not listed in ``/models``; tokens reported in that bucket
    (which a prompt-cache simulation should not do) are priced at the prompt price.

    Attributes:
        prompt: uncached input tokens.
        completion: output tokens, reasoning included.
        cache_read: input tokens read from the provider's prompt cache.
        cache_write: input tokens written to the prompt cache with the default (5 min) TTL.
        cache_write_1h: input tokens written with a 1 h TTL.
        request: a flat fee per request.
    """

    prompt: float
    completion: float
    cache_read: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None
    request: float = 0.0

    def per_token(self) -> dict[str, str]:
        """The OpenRouter ``pricing`` object: USD per token as decimal strings."""
        pricing = {
            "prompt": _text(_per_token(self.prompt)),
            "completion": _text(_per_token(self.completion)),
            "request": _text(Decimal(repr(self.request))),
        }
        cache = {
            "input_cache_read": self.cache_read,
            "input_cache_write": self.cache_write,
            "input_cache_write_1h": self.cache_write_1h,
        }
        pricing.update(
            (name, _text(_per_token(mtok))) for name, mtok in cache.items() if mtok is not None
        )
        return pricing

    def cost(
        self,
        *,
        uncached: int,
        completion: int,
        cached: int = 0,
        written: int = 0,
        written_1h: int = 0,
    ) -> float:
        """USD for one call; ``written_1h`` is the part of ``written`` with a 1 h TTL."""
        prompt = self.prompt
        write_1h = self.cache_write_1h if self.cache_write_1h is not None else prompt
        total = (
            _per_token(prompt) * uncached
            + _per_token(self.completion) * completion
            + _per_token(self.cache_read if self.cache_read is not None else prompt) * cached
            + _per_token(self.cache_write if self.cache_write is not None else prompt)
            * (written - written_1h)
            + _per_token(write_1h) * written_1h
            + Decimal(repr(self.request))
        )
        return float(total)


@dataclass(frozen=True, slots=True)
class FakeModel:
    """One entry of the fake ``/models`` listing.

    Attributes:
        id: the model slug requests name, e.g. ``"anthropic/claude-sonnet-4.6"``.
        price: what it costs.
        name: a display name; defaults to the id.
        context_length: the context window in tokens.
    """

    id: str
    price: ModelPrice
    name: str = ""
    context_length: int = 128_000

    def listing(self) -> dict[str, object]:
        """This model as an OpenRouter ``/models`` ``data`` item."""
        return {
            "id": self.id,
            "name": self.name or self.id,
            "context_length": self.context_length,
            "pricing": self.price.per_token(),
        }


def _anthropic(prompt: float, completion: float) -> ModelPrice:
    # Anthropic: reads 0.1x, 5 min writes 1.25x, 1 h writes 2x the input price.
    # Rounded so 3.0 * 0.1 lists as 0.0000003, not 0.00000030000000000000004.
    return ModelPrice(
        prompt=prompt,
        completion=completion,
        cache_read=round(prompt * 0.1, 9),
        cache_write=round(prompt * 1.25, 9),
        cache_write_1h=round(prompt * 2, 9),
    )


#: The catalogue a ``FakeGateway`` serves unless given ``models=``. Numbers follow the
#: providers' list prices (late 2026) closely enough for demos and benchmarks.
DEFAULT_MODELS: tuple[FakeModel, ...] = (
    FakeModel(
        "anthropic/claude-sonnet-4.6",
        _anthropic(3.0, 15.0),
        "Anthropic: Claude Sonnet 4.6",
        200_000,
    ),
    FakeModel(
        "anthropic/claude-haiku-4.5",
        _anthropic(1.0, 5.0),
        "Anthropic: Claude Haiku 4.5",
        200_000,
    ),
    FakeModel(
        "openai/gpt-5-mini",
        ModelPrice(prompt=0.25, completion=2.0, cache_read=0.025),
        "OpenAI: GPT-5 Mini",
        400_000,
    ),
    FakeModel(
        "openai/gpt-4.1-mini",
        ModelPrice(prompt=0.4, completion=1.6, cache_read=0.1),
        "OpenAI: GPT-4.1 Mini",
        1_047_576,
    ),
    FakeModel(
        "google/gemini-2.5-flash",
        ModelPrice(prompt=0.3, completion=2.5, cache_read=0.075),
        "Google: Gemini 2.5 Flash",
        1_048_576,
    ),
    FakeModel(
        "deepseek/deepseek-chat",
        ModelPrice(prompt=0.28, completion=0.42, cache_read=0.028),
        "DeepSeek: DeepSeek V3",
        163_840,
    ),
    FakeModel(
        "openai/text-embedding-3-small",
        ModelPrice(prompt=0.02, completion=0.0),
        "OpenAI: Text Embedding 3 Small",
        8_192,
    ),
)

#: How a model missing from the catalogue is priced: $1 in, $2 out per million tokens, no
#: cache discount. The gateway still answers for it, like a gateway with a stale listing.
UNKNOWN_MODEL_PRICE = ModelPrice(prompt=1.0, completion=2.0)


def _per_token(mtok: float) -> Decimal:
    # repr() gives the shortest decimal that round-trips, so 0.3 stays 0.3, not 0.2999...
    return Decimal(repr(mtok)) / _MILLION


def _text(price: Decimal) -> str:
    return format(price.normalize(), "f")
