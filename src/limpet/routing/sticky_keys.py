"""Sticky keys for the routers upstream of limpet: OpenRouter's ``session_id`` and OpenAI's
``prompt_cache_key``, both derived from the routing key. Transport only: neither ever
enters the response cache key (``limpet.pipeline.keys.TRANSPORT_ONLY_FIELDS``).

limpet's own router chooses among the endpoints it is given; behind one OpenRouter
endpoint, OpenRouter chooses among providers (Claude alone is served by Anthropic, Vertex
and Bedrock), each with its own prompt cache. OpenRouter keeps a conversation on one
provider only after a request that used caching, keyed by the first system message plus
the first non-system message, which a RAG question (document and question in one user
message) never repeats. A ``session_id`` in the body makes the choice sticky from the
first request (PROVIDERS.md, "OpenRouter specifics" and "Added 2026-12", after
OpenRouter's prompt-caching and provider-routing documentation). limpet sends the routing
key as the ``session_id``: requests sharing a ``cache_control`` prefix share it, a RAG
document under a shared system prompt gets its own, and every process derives the same.

OpenAI routes by a hash of the first ~256 prompt tokens combined with ``prompt_cache_key``;
past about 15 requests a minute for one prefix and key, requests overflow to other
machines, each a cold miss, so a hotter prefix is spread over several keys
(PROVIDERS.md, "OpenAI prompt_cache_key", after OpenAI's prompt-caching guide).
``PromptCacheKeys`` measures each key's rate and spreads only prefixes that are that hot.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from limpet.config import Endpoint, RoutingConfig
from limpet.routing.base import RoutingKey

__all__ = [
    "PromptCacheKeys",
    "sends_session_id",
    "session_id_for",
    "wants_prompt_cache_key",
    "wants_session_id",
    "with_sticky_keys",
]

_PREFIX = "limpet-"
_KEY_CHARS = 32
_WINDOW = 60.0  # the rate is per minute
_MAX_RATES = 10_000
# A key is spread once measured more than this far over the rate, so that a prefix sent at
# about the rate does not flap between one key and two (each flip a cold cache).
_TOLERANCE = 1.1


def session_id_for(routing_key: str) -> str:
    """The ``session_id`` of requests routed by ``routing_key``: stable across processes."""
    return f"{_PREFIX}{routing_key[:_KEY_CHARS]}"


def wants_session_id(endpoint: Endpoint, body: Mapping[str, Any], config: RoutingConfig) -> bool:
    """True when a request to ``endpoint`` should carry a derived ``session_id``: an
    OpenRouter endpoint that leaves the provider to OpenRouter, and a caller who sent
    none (in the body, the endpoint's ``extra_body`` or its ``x-session-id`` header) and
    pinned none."""
    if not config.session_id or endpoint.gateway != "openrouter" or endpoint.pinned:
        return False
    if "session_id" in body or "session_id" in (endpoint.extra_body or {}):
        return False
    if _pins_provider(body):
        return False
    return not sends_session_id(endpoint.headers)


def sends_session_id(headers: Mapping[str, str] | None) -> bool:
    """Whether ``headers`` carry a session id of their own (``x-session-id``, any case):
    one derived into the body would contradict it."""
    return bool(headers) and any(name.lower() == "x-session-id" for name in headers or ())


def wants_prompt_cache_key(body: Mapping[str, Any], config: RoutingConfig) -> bool:
    """True when a request should carry a derived ``prompt_cache_key``: switched on, a
    model named by ``prompt_cache_key_models``, and none from the caller."""
    model = body.get("model")
    return (
        config.prompt_cache_key
        and "prompt_cache_key" not in body
        and isinstance(model, str)
        and model.startswith(config.prompt_cache_key_models)
    )


def _pins_provider(body: Mapping[str, Any]) -> bool:
    routing = body.get("provider")
    return isinstance(routing, Mapping) and bool(routing.get("order") or routing.get("only"))


class _Rate:
    """Requests per minute of one key: this minute's count plus the last minute's,
    weighted by how much of it the sliding window still covers."""

    __slots__ = ("current", "previous", "turn", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.current = 0
        self.previous = 0
        self.turn = 0

    def hit(self, now: float) -> float:
        """Count one request at ``now``; the rate before it, per minute."""
        window = math.floor(now / _WINDOW)
        if window != self.window:
            self.previous = self.current if window == self.window + 1 else 0
            self.current = 0
            self.window = window
        elapsed = now / _WINDOW - window
        rate = self.previous * (1.0 - elapsed) + self.current
        self.current += 1
        return rate


class PromptCacheKeys:
    """Derives ``prompt_cache_key`` values, spreading measured hot prefixes.

    A routing key carrying about ``per_key_rate`` requests a minute or fewer (measured in
    this process, over a sliding minute) gets one ``prompt_cache_key``; one measured more
    than 10% hotter is spread in turn over ``ceil(rate / (1.1 * per_key_rate))`` keys,
    the first of them the cool key's, so that a prefix warming up keeps its cache.
    Remembers the rates of the ``size`` most recently used keys.

    Example:
        >>> keys = PromptCacheKeys(per_key_rate=15.0)
        >>> keys.key_for("ab" * 16, now=0.0)
        'limpet-abababababababababababababababab'
    """

    __slots__ = ("_rates", "per_key_rate", "size")

    def __init__(self, per_key_rate: float, size: int = _MAX_RATES) -> None:
        self.per_key_rate = per_key_rate
        self.size = size
        self._rates: OrderedDict[str, _Rate] = OrderedDict()

    def __repr__(self) -> str:
        return f"PromptCacheKeys(per_key_rate={self.per_key_rate!r}, keys={len(self._rates)})"

    def key_for(self, routing_key: str, now: float) -> str:
        """The ``prompt_cache_key`` of one request routed by ``routing_key`` at ``now``."""
        rate = self._rates.get(routing_key)
        if rate is None:
            rate = self._rates[routing_key] = _Rate(math.floor(now / _WINDOW))
            if len(self._rates) > self.size:
                self._rates.popitem(last=False)
        else:
            self._rates.move_to_end(routing_key)
        keys = max(1, math.ceil(rate.hit(now) / (self.per_key_rate * _TOLERANCE)))
        base = session_id_for(routing_key)
        if keys == 1:
            return base
        rate.turn = (rate.turn + 1) % keys
        return base if rate.turn == 0 else f"{base}-{rate.turn}"


def with_sticky_keys(
    body: Mapping[str, Any],
    key: RoutingKey,
    first: Endpoint,
    config: RoutingConfig,
    prompt_cache_keys: PromptCacheKeys,
    clock: Callable[[], float],
) -> Mapping[str, Any]:
    """``body`` with the ``session_id`` and ``prompt_cache_key`` that the gateway and
    provider behind ``first`` route by, where they help: the body of a route's first
    attempt. ``Route.body_for`` gives a failover's endpoint the ``session_id`` only if it
    routes by it too (a strict OpenAI-compatible server refuses a field it does not know);
    the ``prompt_cache_key``, asked for by model, goes to every endpoint."""
    if key.key is None:
        return body
    added: dict[str, str] = {}
    if wants_session_id(first, body, config):
        added["session_id"] = session_id_for(key.key)
    if wants_prompt_cache_key(body, config):
        added["prompt_cache_key"] = prompt_cache_keys.key_for(key.key, clock())
    return {**body, **added} if added else body
