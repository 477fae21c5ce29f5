"""Provider prompt caching: one capability table, and ``cache_control`` injection. Pure.

Providers cache a prompt's prefix in one of two ways. *Automatic* providers (OpenAI,
DeepSeek, xAI, Groq) cache any long enough prefix by themselves; a client can only help
by keeping the prefix stable and routing it to the same place. *Explicit* providers
(Anthropic, and Gemini through OpenRouter) cache only up to a ``cache_control``
breakpoint the request marks; without one they cache nothing. ``inject_cache_control``
marks the static part of a request (tools and the leading system messages) for explicit
providers when it is long enough to be cached, so every later request that shares it
reads it at a tenth of the price instead of paying full price again.

- ``capabilities``: the ``CapabilityTable`` (kinds, minimums, TTLs, breakpoint limits,
  price multipliers) and its sources;
- ``tokens``: prompt length estimates;
- ``injection``: ``inject_cache_control`` and the reading of marks a request carries.

Example:
    >>> manual = "Step one: unplug it. " * 400            # about 2,100 tokens
    >>> body = {"model": "anthropic/claude-sonnet-4.6", "temperature": 0, "messages": [
    ...     {"role": "system", "content": manual},
    ...     {"role": "user", "content": "How do I reset it?"}]}
    >>> sent = inject_cache_control(body)
    >>> sent["messages"][0]["content"][0]["cache_control"]
    {'type': 'ephemeral'}
    >>> body["messages"][0]["content"] is manual          # the caller's request is untouched
    True
"""

from __future__ import annotations

from limpet.providers.prompt_cache.capabilities import (
    ANTHROPIC_MAX_BREAKPOINTS,
    DEFAULT_CAPABILITIES,
    FAMILIES,
    CacheCapability,
    CacheKind,
    CapabilityTable,
    model_slug,
)
from limpet.providers.prompt_cache.injection import (
    DEFAULT_BREAKPOINT_TTL,
    DEFAULT_CACHE_CONTROL,
    CacheControlConfig,
    breakpoint_ttl,
    breakpoint_ttls,
    count_breakpoints,
    inject_cache_control,
)
from limpet.providers.prompt_cache.tokens import (
    DEFAULT_CHARS_PER_TOKEN,
    estimate_tokens,
    marked_prefix_tokens,
)

__all__ = [
    "ANTHROPIC_MAX_BREAKPOINTS",
    "DEFAULT_BREAKPOINT_TTL",
    "DEFAULT_CACHE_CONTROL",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_CHARS_PER_TOKEN",
    "FAMILIES",
    "CacheCapability",
    "CacheControlConfig",
    "CacheKind",
    "CapabilityTable",
    "breakpoint_ttl",
    "breakpoint_ttls",
    "count_breakpoints",
    "estimate_tokens",
    "inject_cache_control",
    "marked_prefix_tokens",
    "model_slug",
]
