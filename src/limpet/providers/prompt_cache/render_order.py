"""The order a provider renders a chat's messages in: every system (and developer)
message first, as its ``system`` section, then the others, each in its order. Pure.

Where a breakpoint falls in that order is what a provider caches up to, and what it
checks TTLs against (Anthropic refuses a 1 h breakpoint after a 5 min one): the prefix
chain the sticky router hashes and the TTLs ``auto_cache_control`` orders both read it
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["SYSTEM_ROLES", "is_system", "render_positions", "rendered"]

#: The roles a provider renders in its ``system`` section.
SYSTEM_ROLES = frozenset({"system", "developer"})


def is_system(message: object) -> bool:
    """Whether ``message`` is rendered in the provider's ``system`` section."""
    return isinstance(message, Mapping) and message.get("role") in SYSTEM_ROLES


def rendered(messages: list[Any]) -> list[Any]:
    """``messages`` in the order the provider renders them (``messages`` itself when
    that is its own order).

    Example:
        >>> [m["role"] for m in rendered([{"role": "user"}, {"role": "system"}])]
        ['system', 'user']
    """
    system = [m for m in messages if is_system(m)]
    if not system:
        return messages
    return system + [m for m in messages if not is_system(m)]


def render_positions(messages: list[Any]) -> list[int]:
    """Each message's position in the order the provider renders them.

    Example:
        >>> render_positions([{"role": "user"}, {"role": "assistant"}, {"role": "system"}])
        [1, 2, 0]
    """
    order = [i for i, m in enumerate(messages) if is_system(m)]
    order += [i for i, m in enumerate(messages) if not is_system(m)]
    positions = [0] * len(messages)
    for position, index in enumerate(order):
        positions[index] = position
    return positions
