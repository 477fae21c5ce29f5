"""``cache_control`` injection: mark the static prefix of a request for explicit providers. Pure.

*Explicit* providers (Anthropic, and Gemini through OpenRouter) cache only up to a
``cache_control`` breakpoint the request marks; without one they cache nothing.
``inject_cache_control`` marks the static part of a request (tools and the leading
system messages) when it is long enough to be cached, as the capability table
(``limpet.providers.prompt_cache.capabilities``) says for the model.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from limpet._checks import check_number
from limpet.errors import ConfigurationError
from limpet.providers.cache_minimums import LEARNED_MINIMUMS, LearnedMinimums
from limpet.providers.prompt_cache.capabilities import (
    DEFAULT_CAPABILITIES,
    CacheCapability,
    CapabilityTable,
)
from limpet.providers.prompt_cache.render_order import is_system, render_positions
from limpet.providers.prompt_cache.tokens import DEFAULT_CHARS_PER_TOKEN, estimate_tokens

__all__ = [
    "DEFAULT_BREAKPOINT_TTL",
    "DEFAULT_CACHE_CONTROL",
    "CacheControlConfig",
    "breakpoint_ttl",
    "count_breakpoints",
    "inject_cache_control",
    "ttl_between",
]

#: The TTL an injected ``cache_control`` breakpoint asks the provider for unless
#: configured otherwise (a provider-side prompt-cache TTL, not a limpet entry TTL), and
#: the TTL a caller's mark that names none stands for.
DEFAULT_BREAKPOINT_TTL = "5m"


def _offered_ttls(capabilities: CapabilityTable) -> tuple[str, ...]:
    """The default TTL and every TTL a family of ``capabilities`` offers, in that order."""
    offered = [DEFAULT_BREAKPOINT_TTL]
    offered.extend(ttl for _, capability in capabilities.rules for ttl in capability.ttls)
    return tuple(dict.fromkeys(offered))


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheControlConfig:
    """What ``inject_cache_control`` marks, and how.

    Args:
        ttl: the TTL breakpoints ask for (``"5m"`` or ``"1h"`` for Anthropic): one some
            family of ``capabilities`` offers, spelled as it does, or the default. For a
            model whose family does not offer it, it is left out, so the provider's default
            applies. A breakpoint after one of the caller's 5 min marks asks for 5 min all
            the same, since Anthropic refuses a 1 h breakpoint after a 5 min one.
        rolling: also mark the last user turn once the conversation up to it reaches the
            minimum, so a multi-turn chat reads its history from the cache next turn.
        chars_per_token: characters per token when estimating a prefix's length.
        capabilities: the capability table; ``DEFAULT_CAPABILITIES`` unless overridden.
        learned: minimums learned at run time, which raise the table's (this process's
            ``LEARNED_MINIMUMS`` by default; None: the table alone). A Client's router
            learns into this same table: a ``LearnedMinimums()`` of its own keeps what one
            Client learns from the others; None learns nothing.
    """

    ttl: str = DEFAULT_BREAKPOINT_TTL
    rolling: bool = False
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    capabilities: CapabilityTable = DEFAULT_CAPABILITIES
    learned: LearnedMinimums | None = LEARNED_MINIMUMS

    def __post_init__(self) -> None:
        if not isinstance(self.ttl, str) or not self.ttl:
            raise ConfigurationError(f"CacheControlConfig.ttl: expected a str, got {self.ttl!r}")
        check_number("CacheControlConfig.chars_per_token", self.chars_per_token, above=0)
        if not isinstance(self.capabilities, CapabilityTable):
            raise ConfigurationError("CacheControlConfig.capabilities: expected a CapabilityTable")
        # Refused rather than sent as the provider's default: "60m" means an hour, and
        # quietly caching for 5 min instead is a surprise found only on the bill.
        offered = _offered_ttls(self.capabilities)
        if self.ttl not in offered:
            raise ConfigurationError(
                f"CacheControlConfig.ttl: {self.ttl!r} is not a TTL the capability table "
                f"offers; expected one of {', '.join(map(repr, offered))}"
            )
        if self.learned is not None and not isinstance(self.learned, LearnedMinimums):
            raise ConfigurationError(
                "CacheControlConfig.learned: expected a LearnedMinimums or None"
            )


DEFAULT_CACHE_CONTROL = CacheControlConfig()


def inject_cache_control(
    body: dict[str, Any], config: CacheControlConfig = DEFAULT_CACHE_CONTROL
) -> dict[str, Any]:
    """``body`` with ``cache_control`` breakpoints added where they pay, or ``body`` itself.

    For a model whose family caches explicitly, marks the end of the static prefix (the
    last block of the leading system messages, which Anthropic's tools → system → messages
    order puts after the tools) when tools and system together reach the model's
    ``min_tokens``; with ``config.rolling``, also the last user turn. String content
    becomes one text block to carry the mark. Never exceeds the family's breakpoint limit
    counting the caller's own, never marks a block twice, and adds nothing when the caller
    asked for OpenRouter's automatic caching (a top-level ``cache_control``). Never puts a
    longer TTL after a shorter one, which Anthropic refuses: after a caller's 5 min mark
    (or one naming no TTL), a breakpoint asks for 5 min whatever ``config.ttl`` says
    (see ``ttl_between``).

    Nothing the caller passed is modified: changed messages are copies, and everything
    unchanged is shared with ``body``, so the result must be treated as read-only too.

    Returns:
        A new dict when something was marked, else ``body`` itself (check with ``is``).
    """
    capability = config.capabilities.lookup(body.get("model"))
    messages = body.get("messages")
    if (
        capability is None
        or capability.kind != "explicit"
        or "cache_control" in body
        or not isinstance(messages, list)
    ):
        return body
    existing = count_breakpoints(body)
    if capability.last_breakpoint_only:
        budget = 0 if existing else 1
    else:
        budget = capability.max_breakpoints - existing
    if budget <= 0:
        return body
    learned = config.learned.minimum(body["model"]) if config.learned is not None else 0
    if learned > capability.min_tokens:
        capability = replace(capability, min_tokens=learned)
    planned = _plan(body, messages, capability, config, budget)
    if not planned:
        return body
    # TTL order is the provider's render order, not the list's: a system message after
    # the last user turn is still rendered (and its mark processed) before every turn.
    positions = render_positions(messages)
    existing_ttls = _mark_ttls_by_position(body)
    # Ordered by the TTL the provider will apply, not the one asked for: a TTL the family
    # does not offer is sent as its default.
    wanted = _sent_ttl(capability.ttls, config.ttl)
    sent = list(messages)
    marked = False
    for index in planned:
        position = positions[index]
        ttl = ttl_between(
            [t for at, t in existing_ttls if at <= position],
            [t for at, t in existing_ttls if at > position],
            wanted,
        )
        # A TTL taken from a caller's mark the family does not offer cannot be matched.
        if ttl is not None and _sent_ttl(capability.ttls, ttl) == ttl:
            sent[index] = _marked(sent[index], _mark_for(capability.ttls, ttl))
            existing_ttls.append((position, ttl))
            marked = True
    return {**body, "messages": sent} if marked else body


def ttl_between(earlier: list[str], later: list[str], wanted: str) -> str | None:
    """The TTL a breakpoint can ask for after marks of TTLs ``earlier`` and before marks
    of TTLs ``later`` (in Anthropic's order: tools, system, messages): ``wanted``, kept
    between them. Anthropic refuses a request whose longer TTL follows a shorter one
    ("1-hour entries must appear before 5-minute entries"), so after a 5 min mark (or one
    naming no TTL) a 1 h breakpoint asks for 5 min, and before a 1 h mark a 5 min one asks
    for 1 h (which costs nothing more: those tokens were written at 1 h anyway). None when
    no TTL fits (the caller's own marks are out of order already).

    Example:
        >>> ttl_between(["5m"], [], "1h"), ttl_between([], ["1h"], "5m")
        ('5m', '1h')
        >>> ttl_between(["1h"], ["5m"], "1h"), ttl_between(["5m"], ["1h"], "1h")
        ('1h', None)
    """
    ceiling = min(earlier, key=_seconds, default=None)  # no longer than any before it
    floor = max(later, key=_seconds, default=None)  # no shorter than any after it
    if ceiling is not None and floor is not None and _seconds(floor) > _seconds(ceiling):
        return None
    if ceiling is not None and _seconds(wanted) > _seconds(ceiling):
        return ceiling
    if floor is not None and _seconds(wanted) < _seconds(floor):
        return floor
    return wanted


def count_breakpoints(body: Mapping[str, Any]) -> int:
    """``cache_control`` marks a request already carries: on content blocks, on messages
    and on tools."""
    return len(_marks(body)) - ("cache_control" in body)


def breakpoint_ttl(body: Mapping[str, Any]) -> str | None:
    """The TTL every ``cache_control`` mark of a request asks for (``"5m"`` when a mark
    names none), or None when it has no marks or they differ.

    OpenRouter reports one ``cache_write_tokens`` total whatever the TTL; when every mark
    asked for the same one, that is the TTL of every write (see
    ``limpet.providers.usage.with_write_ttl``).
    """
    ttls = breakpoint_ttls(body)
    return next(iter(ttls)) if len(ttls) == 1 else None


def breakpoint_ttls(body: Mapping[str, Any]) -> frozenset[str]:
    """The TTLs the ``cache_control`` marks of a request ask for (``"5m"`` for a mark
    that names none): more than one, and a total of writes holds some of each (see
    ``limpet.providers.pricing.split_writes``)."""
    return frozenset(_mark_ttl(mark) for mark in _marks(body))


def _plan(
    body: Mapping[str, Any],
    messages: list[Any],
    capability: CacheCapability,
    config: CacheControlConfig,
    budget: int,
) -> list[int]:
    """Indices of the messages to mark, at most ``budget`` of them."""
    cpt = config.chars_per_token
    tokens = estimate_tokens(body["tools"], cpt) if body.get("tools") else 0
    system_end = -1
    for index, message in enumerate(messages):
        if not is_system(message):
            break
        tokens += estimate_tokens(message, cpt)
        system_end = index
    marks: list[int] = []
    if system_end >= 0 and tokens >= capability.min_tokens and _markable(messages[system_end]):
        marks.append(system_end)
    if config.rolling and len(marks) < budget and not capability.last_breakpoint_only:
        last_user = next(
            (
                index
                for index in range(len(messages) - 1, system_end, -1)
                if isinstance(messages[index], Mapping) and messages[index].get("role") == "user"
            ),
            None,
        )
        if last_user is not None and _markable(messages[last_user]):
            tokens += sum(estimate_tokens(m, cpt) for m in messages[system_end + 1 : last_user + 1])
            if tokens >= capability.min_tokens:
                marks.append(last_user)
    return marks[:budget]


def _marks(body: Mapping[str, Any]) -> list[object]:
    marks: list[object] = [body["cache_control"]] if "cache_control" in body else []
    return marks + [mark for _, mark in _placed_marks(body)]


def _placed_marks(body: Mapping[str, Any]) -> list[tuple[int, object]]:
    """A request's breakpoints in the provider's order (tools, system, then the other
    messages), each with its message's position in that order (-1 for a tool's)."""
    placed: list[tuple[int, object]] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, Mapping) and "cache_control" in tool:
            placed.append((-1, tool["cache_control"]))
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    for index, position in sorted(enumerate(render_positions(messages)), key=lambda p: p[1]):
        message = messages[index]
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, Mapping) and "cache_control" in part:
                placed.append((position, part["cache_control"]))
        if "cache_control" in message:
            placed.append((position, message["cache_control"]))
    return placed


def _mark_ttls_by_position(body: Mapping[str, Any]) -> list[tuple[int, str]]:
    return [(position, _mark_ttl(mark)) for position, mark in _placed_marks(body)]


def _mark_ttl(mark: object) -> str:
    ttl = mark.get("ttl") if isinstance(mark, Mapping) else None
    return ttl if isinstance(ttl, str) else DEFAULT_BREAKPOINT_TTL


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def _seconds(ttl: str) -> int:
    """A TTL such as ``"5m"`` or ``"1h"`` in seconds; one limpet cannot read counts as the
    default (a provider reads it so, or refuses it whatever the order). A caller's mark is
    the caller's own: a TTL in it limpet cannot read is left for the provider to judge."""
    count, unit = ttl[:-1], ttl[-1:]
    # ASCII only: str.isdigit() is also true of "²" or "①", which int() refuses.
    if count.isascii() and count.isdigit() and unit in _UNIT_SECONDS:
        return int(count) * _UNIT_SECONDS[unit]
    return _seconds(DEFAULT_BREAKPOINT_TTL)


def _markable(message: Mapping[str, Any]) -> bool:
    """Whether a message's last block can take a mark it does not carry yet: non-empty text
    (Anthropic refuses a mark on empty text; other part types are left alone, since not
    every gateway accepts a mark on them)."""
    if "cache_control" in message:
        return False
    content = message.get("content")
    if isinstance(content, str):
        return bool(content)
    if isinstance(content, list) and content:
        last = content[-1]
        return (
            isinstance(last, Mapping)
            and last.get("type") == "text"
            and bool(last.get("text"))
            and "cache_control" not in last
        )
    return False


def _marked(message: Mapping[str, Any], mark: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    content = message["content"]
    if isinstance(content, str):
        blocks: list[Any] = [{"type": "text", "text": content, "cache_control": dict(mark)}]
    else:
        blocks = [*content[:-1], {**content[-1], "cache_control": dict(mark)}]
    return {**message, "content": blocks}


def _sent_ttl(ttls: tuple[str, ...], ttl: str) -> str:
    """The TTL a breakpoint asking for ``ttl`` gets from a family offering ``ttls``: ``ttl``
    when offered, else the provider's default (``_mark_for`` leaves it out)."""
    if ttl in ttls:
        return ttl
    return ttls[0] if ttls else DEFAULT_BREAKPOINT_TTL


@functools.lru_cache(maxsize=64)
def _mark_for(ttls: tuple[str, ...], ttl: str) -> tuple[tuple[str, str], ...]:
    """The ``cache_control`` value as pairs: a TTL only when the family offers it and it is
    not the default, so the request stays valid wherever the provider is hosted."""
    if ttl in ttls and ttl != ttls[0]:
        return (("type", "ephemeral"), ("ttl", ttl))
    return (("type", "ephemeral"),)
