"""Whether a request may be served from, stored in, or coalesced through the cache. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from limpet.config import CachePolicy
from limpet.errors import InvalidRequestError

__all__ = ["CacheDecision", "CacheMode", "decide", "is_cacheable"]

#: Per-call cache control.
#: ``bypass``: neither read nor write. ``refresh``: skip the read, store the fresh answer.
#: ``force``: treat the request as deterministic whatever its temperature (e.g. replaying
#: an evaluation).
CacheMode = Literal["bypass", "refresh", "force"]
_MODES = frozenset(get_args(CacheMode))


@dataclass(frozen=True, slots=True)
class CacheDecision:
    """What the pipeline may do with one request (``uses_cache``: read or write)."""

    read: bool
    write: bool
    coalesce: bool
    # A field, not a property: the hit path asks on every call.
    uses_cache: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses_cache", self.read or self.write)


_DEFAULT_ON = CacheDecision(read=True, write=True, coalesce=True)
_BYPASS = CacheDecision(read=False, write=False, coalesce=False)
_REFRESH = CacheDecision(read=False, write=True, coalesce=False)


def is_cacheable(body: Mapping[str, Any], policy: CachePolicy) -> bool:
    """True when the request is deterministic by policy: temperature present and low enough.

    An absent temperature means the provider's default, which samples.
    """
    temperature: Any = body.get("temperature")
    kind = type(temperature)
    if kind is int or kind is float:  # the common case, without isinstance's walk
        low: bool = temperature <= policy.max_temperature
        return low
    return (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and temperature <= policy.max_temperature
    )


def decide(body: Mapping[str, Any], mode: str | None, policy: CachePolicy) -> CacheDecision:
    """The cache decision for one request and the caller's per-call ``cache=`` mode.

    ============  ==============  ==============
    mode          cacheable       not cacheable
    ============  ==============  ==============
    None          read+write+co   bypass
    "bypass"      bypass          bypass
    "refresh"     write           bypass
    "force"       read+write+co   read+write+co
    ============  ==============  ==============

    Raises:
        InvalidRequestError: ``mode`` is not None or one of the modes above.
    """
    if mode is None:
        return _DEFAULT_ON if is_cacheable(body, policy) else _BYPASS
    if not isinstance(mode, str) or mode not in _MODES:  # a list is no mode, nor hashable
        raise InvalidRequestError("cache", f"None or one of {sorted(_MODES)}", mode)
    if mode == "force":
        return _DEFAULT_ON
    if mode == "refresh" and is_cacheable(body, policy):
        return _REFRESH
    return _BYPASS
