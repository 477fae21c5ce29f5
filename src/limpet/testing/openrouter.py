"""An OpenRouter-like endpoint: several providers behind one URL, each with its own cache.

A real OpenRouter endpoint routes every request among the providers that serve the model
(Claude: Anthropic, Google Vertex, Amazon Bedrock), and each provider keeps its own prompt
cache, so a prefix cached at one is a cold miss at the others. ``OpenRouterProviders`` is
a ``PromptCacheModel`` that simulates this for one ``FakeGateway`` endpoint, following
OpenRouter's documented provider sticky routing (openrouter.ai/docs, "Prompt caching"
and "Provider routing", as summarised in PROVIDERS.md, "OpenRouter specifics" and
"Added 2026-12"):

1. ``provider.order`` (or ``provider.only``) in the request pins the provider: the first
   one listed that is up (else a random draw, as with fallbacks). Sticky routing is off
   for such requests.
2. A ``session_id`` makes routing sticky from the first request: the provider chosen for
   it is kept per (model, session) until it has been idle for ``sticky_ttl`` (10 minutes).
3. Without one, a conversation (the model, the first system message and the first
   non-system message) becomes sticky only after a request of it used the prompt cache
   (read or wrote), with the same idle expiry.
4. Anything else goes to a provider drawn at random by weight (seeded).

A sticky provider that is down is passed over (OpenRouter falls back). The ``x-session-id``
header is not seen here (a ``PromptCacheModel`` sees the body only), nor the condition that
the provider's cache-read price be below its prompt price (true of every fake provider).
The provider that served is reported in the response's ``provider`` field.

Example:
    >>> gw = FakeGateway(endpoints=("openrouter",), prompt_cache=OpenRouterProviders)
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import orjson

from limpet.testing.provider_cache import PromptCacheModel, PromptCacheResult, ProviderPromptCache

#: Claude's providers on OpenRouter, equally weighted.
DEFAULT_PROVIDERS: Mapping[str, float] = {
    "anthropic": 1.0,
    "google-vertex": 1.0,
    "amazon-bedrock": 1.0,
}

#: Seconds a sticky provider choice survives without requests (OpenRouter: ~10 minutes).
DEFAULT_STICKY_TTL = 600.0

_SYSTEM_ROLES = ("system", "developer")


class OpenRouterProviders:
    """The providers behind one OpenRouter-like endpoint, and OpenRouter's routing among
    them; see the module docstring for the rules.

    Args:
        providers: provider names with their weights for random draws, or names alone.
        cache: makes each provider's prompt cache (``ProviderPromptCache`` by default).
        sticky_ttl: seconds a sticky choice lasts after its last use.
        seed: seeds the weighted draws.

    Attributes:
        caches: each provider's prompt cache, by name.
        served: requests each provider served.
        down: providers currently down (passed over); add or remove names freely.
    """

    __slots__ = ("_rng", "_seed", "_sticky", "caches", "down", "served", "sticky_ttl", "weights")

    def __init__(
        self,
        providers: Mapping[str, float] | Sequence[str] = DEFAULT_PROVIDERS,
        *,
        cache: Callable[[], PromptCacheModel] = ProviderPromptCache,
        sticky_ttl: float = DEFAULT_STICKY_TTL,
        seed: int = 0,
    ) -> None:
        weights = (
            dict(providers) if isinstance(providers, Mapping) else dict.fromkeys(providers, 1.0)
        )
        if not weights or any(w <= 0 for w in weights.values()):
            raise ValueError(f"expected providers with weights > 0, got {providers!r}")
        self.weights = weights
        self.caches = {name: cache() for name in weights}
        self.sticky_ttl = sticky_ttl
        self.served: Counter[str] = Counter()
        self.down: set[str] = set()
        self._seed = seed
        self._rng = random.Random(seed)
        # (model, "session" | "conversation", id) -> [provider, last used]
        self._sticky: dict[tuple[str, str, str], list[Any]] = {}

    def __repr__(self) -> str:
        return f"OpenRouterProviders({list(self.weights)}, served={dict(self.served)})"

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        pinned = _pinned(body)
        if pinned:
            provider = next((p for p in pinned if p in self.caches and p not in self.down), None)
            chosen = provider if provider is not None else self._draw()
            return self._serve(chosen, model, body, prompt_tokens, now)
        session = body.get("session_id")
        if isinstance(session, str) and session:
            sticky = (model, "session", session)
            provider = self._live(sticky, now) or self._draw()
            self._sticky[sticky] = [provider, now]  # sticky from the first request
            return self._serve(provider, model, body, prompt_tokens, now)
        sticky = (model, "conversation", conversation_hash(model, body))
        provider = self._live(sticky, now) or self._draw()
        result = self._serve(provider, model, body, prompt_tokens, now)
        if result.total or sticky in self._sticky:
            self._sticky[sticky] = [provider, now]  # sticky once it used the cache
        return result

    def reset(self) -> None:
        for cache in self.caches.values():
            cache.reset()
        self._sticky.clear()
        self.served.clear()
        self._rng = random.Random(self._seed)

    def _serve(
        self, provider: str, model: str, body: Mapping[str, Any], prompt_tokens: int, now: float
    ) -> PromptCacheResult:
        self.served[provider] += 1
        result = self.caches[provider].account(model, body, prompt_tokens, now=now)
        return replace(result, provider=provider)

    def _live(self, sticky: tuple[str, str, str], now: float) -> str | None:
        """The sticky provider for ``sticky``, unless expired or down."""
        entry = self._sticky.get(sticky)
        if entry is None:
            return None
        provider, last_used = entry
        if now - last_used > self.sticky_ttl:
            del self._sticky[sticky]
            return None
        return None if provider in self.down else str(provider)

    def _draw(self) -> str:
        up = [p for p in self.weights if p not in self.down] or list(self.weights)
        return self._rng.choices(up, weights=[self.weights[p] for p in up])[0]


def conversation_hash(model: str, body: Mapping[str, Any]) -> str:
    """OpenRouter's conversation: the model, the first system message's content and the
    first non-system message's content."""
    messages = body.get("messages")
    first_system: object = None
    first_other: object = None
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, Mapping):
            continue
        if message.get("role") in _SYSTEM_ROLES:
            if first_system is None:
                first_system = message.get("content")
        else:
            first_other = message.get("content")
            break
    data = orjson.dumps([model, first_system, first_other], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(data).hexdigest()


def _pinned(body: Mapping[str, Any]) -> list[str]:
    routing = body.get("provider")
    if not isinstance(routing, Mapping):
        return []
    listed = routing.get("order") or routing.get("only") or []
    return [p for p in listed if isinstance(p, str)] if isinstance(listed, list) else []
