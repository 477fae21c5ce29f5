"""Simulating a provider's prompt cache behind a fake endpoint.

A real provider decides, per request, how many prompt tokens it read from its prefix
cache and how many it wrote; the gateway reports both in ``usage`` and prices them.
``PromptCacheModel`` is where that decision plugs in. The default, ``NoPromptCache``,
caches nothing, so every prompt token is billed at the full price. ``ProviderPromptCache``
follows the providers' rules (../shared/PROVIDERS.md), one instance per endpoint:

- explicit (``anthropic/*``): a prefix is cached only up to a ``cache_control``
  breakpoint, when it reaches the model's minimum; a read finds the longest cached
  prefix at a breakpoint or up to 20 blocks before one; entries live 5 minutes (or 1 h
  with ``"ttl": "1h"``) from their last use. A request the provider refuses raises
  ``PromptCacheRefusal`` (the gateway answers 400): more than 4 breakpoints, or a 1 h
  breakpoint after a 5 min one;
- automatic (``openai/*``, ``deepseek/*``): every prompt of at least 1,024 tokens is
  cached at each block boundary, and a read counts the shared prefix in 128-token steps;
  writes cost nothing extra and are not reported.

The prompt is rendered in provider order (tools, system, messages); a string is one text
block and ``cache_control`` markers are not content. Time comes from the gateway's
clock, passed in as ``now``.

Example:
    >>> gw = FakeGateway(endpoints=("a", "b"), prompt_cache=ProviderPromptCache)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson

from limpet.testing.tokens import MESSAGE_OVERHEAD_TOKENS, count_tokens

#: The share of an endpoint's latency a fully cached prompt saves (time to first token
#: falls by up to ~80% for long cached prefixes).
CACHED_LATENCY_SAVING = 0.8


class PromptCacheRefusal(ValueError):
    """The provider refuses the request's ``cache_control`` breakpoints (Anthropic answers
    400); the message is the provider's. A ``PromptCacheModel`` raises it from
    ``account``, and the gateway answers the request 400 with it."""


@dataclass(frozen=True, slots=True)
class PromptCacheResult:
    """How one request's prompt met the provider's cache.

    Attributes:
        cached_tokens: prompt tokens read from the cache.
        cache_write_tokens: prompt tokens written to the cache, whatever their TTL.
        cache_write_1h_tokens: the part of ``cache_write_tokens`` written with a 1 h TTL,
            priced at ``input_cache_write_1h`` instead of ``input_cache_write``.
        provider: the provider that served, when the endpoint routes among several
            (``limpet.testing.openrouter``); None: the endpoint is the provider.
    """

    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    provider: str | None = None

    def __post_init__(self) -> None:
        if min(self.cached_tokens, self.cache_write_tokens, self.cache_write_1h_tokens) < 0:
            raise ValueError(f"token counts must be >= 0: {self}")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError(f"1 h writes are part of cache_write_tokens: {self}")

    @property
    def total(self) -> int:
        """Prompt tokens the cache touched, read or written."""
        return self.cached_tokens + self.cache_write_tokens


class PromptCacheModel(Protocol):
    """Decides cache reads and writes for each request an endpoint answers.

    One instance serves one endpoint, since each endpoint stands for one provider
    instance with its own cache. ``account`` is called once per successful completion,
    streamed or not, before the reply is generated.
    """

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        """Record a request against the cache and say what it read and wrote.

        Args:
            model: the requested model.
            body: the request body as received.
            prompt_tokens: the request's prompt tokens; the result must not exceed it.
            now: the gateway clock's current time, for TTLs.

        Raises:
            PromptCacheRefusal: the provider would refuse the request's breakpoints.
        """
        ...

    def reset(self) -> None:
        """Forget everything cached."""
        ...


class NoPromptCache:
    """A provider without prompt caching: nothing is ever read or written."""

    __slots__ = ()

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        return PromptCacheResult()

    def reset(self) -> None:
        pass

    def __repr__(self) -> str:
        return "NoPromptCache()"


def cached_latency(latency: float, cache: PromptCacheResult, prompt_tokens: int) -> float:
    """``latency`` less ``CACHED_LATENCY_SAVING`` of it in proportion to the prompt read
    from the cache: a prompt read whole answers in a fifth of the time."""
    if prompt_tokens <= 0 or not cache.cached_tokens:
        return latency
    return latency * (1.0 - CACHED_LATENCY_SAVING * cache.cached_tokens / prompt_tokens)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRules:
    """How one provider's prompt cache behaves.

    Attributes:
        kind: ``"explicit"`` (only up to ``cache_control`` breakpoints) or
            ``"automatic"`` (every long enough prompt).
        min_tokens: the shortest prefix cached.
        step_tokens: automatic caches count a shared prefix in steps of this many tokens.
        ttl: seconds an entry lives after its last use (the default TTL).
        ttl_1h: seconds for a breakpoint marked ``"ttl": "1h"``.
        lookback_blocks: explicit caches look for a hit this many blocks before each
            breakpoint.
        max_breakpoints: explicit caches refuse a request with more breakpoints than
            this (counting each marked tool, block and message; OpenRouter's automatic
            one aside).
        long_retention: seconds for ``prompt_cache_retention: "24h"`` (automatic).
    """

    kind: Literal["explicit", "automatic"]
    min_tokens: int = 1024
    step_tokens: int = 1
    ttl: float = 300.0
    ttl_1h: float = 3600.0
    lookback_blocks: int = 20
    max_breakpoints: int = 4
    long_retention: float = 86_400.0


_ANTHROPIC = CacheRules(kind="explicit")
_OPENAI = CacheRules(kind="automatic", step_tokens=128)

#: (model-name prefix, rules), first match wins; models matching none cache nothing.
DEFAULT_CACHE_RULES: tuple[tuple[str, CacheRules], ...] = (
    ("anthropic/claude-opus-4.5", CacheRules(kind="explicit", min_tokens=4096)),
    ("anthropic/claude-opus-4.6", CacheRules(kind="explicit", min_tokens=4096)),
    ("anthropic/claude-opus-4.7", CacheRules(kind="explicit", min_tokens=4096)),
    ("anthropic/claude-opus-4.8", CacheRules(kind="explicit", min_tokens=4096)),
    ("anthropic/claude-haiku-4.5", CacheRules(kind="explicit", min_tokens=4096)),
    ("anthropic/claude-3-haiku", CacheRules(kind="explicit", min_tokens=2048)),
    ("anthropic/claude-3.5-haiku", CacheRules(kind="explicit", min_tokens=2048)),
    ("anthropic/", _ANTHROPIC),
    ("openai/", _OPENAI),
    ("deepseek/", CacheRules(kind="automatic", min_tokens=64, step_tokens=64, ttl=3600.0)),
)


@dataclass(frozen=True, slots=True)
class _Block:
    """One rendered block: the prefix hash through it, the prompt tokens through it, and
    the TTL name of a breakpoint on it, if any."""

    prefix: bytes
    tokens: int
    marker: str | None


class ProviderPromptCache:
    """One provider instance's prompt cache, with the rules of ``DEFAULT_CACHE_RULES``.

    Pass the class itself as a ``FakeGateway``'s ``prompt_cache`` factory, so that each
    endpoint gets its own cache.

    Args:
        rules: (model-name prefix, ``CacheRules``) pairs, first match wins.
    """

    __slots__ = ("_entries", "_sweep_at", "rules")

    def __init__(self, rules: Sequence[tuple[str, CacheRules]] = DEFAULT_CACHE_RULES) -> None:
        self.rules = tuple(rules)
        # prefix hash -> [expires_at, ttl]
        self._entries: dict[bytes, list[float]] = {}
        self._sweep_at = 1024

    def __repr__(self) -> str:
        return f"ProviderPromptCache({len(self._entries)} prefixes)"

    def rules_for(self, model: str) -> CacheRules | None:
        """The rules ``model`` follows, or None when it caches nothing."""
        return next((rules for prefix, rules in self.rules if model.startswith(prefix)), None)

    def cached_prefixes(self, now: float) -> int:
        """Prefixes cached and not expired at ``now``."""
        return sum(1 for expires_at, _ in self._entries.values() if expires_at > now)

    def account(
        self, model: str, body: Mapping[str, Any], prompt_tokens: int, *, now: float
    ) -> PromptCacheResult:
        rules = self.rules_for(model)
        if rules is None:
            return PromptCacheResult()
        blocks = _render(model, body)
        if not blocks or blocks[-1].tokens > prompt_tokens:
            raise ValueError(f"rendered {blocks[-1].tokens if blocks else 0} of {prompt_tokens}")
        if len(self._entries) >= self._sweep_at:
            self._sweep(now)
        if rules.kind == "explicit":
            return self._explicit(rules, body, blocks, now)
        return self._automatic(rules, body, blocks, prompt_tokens, now)

    def reset(self) -> None:
        self._entries.clear()

    def _live(self, prefix: bytes, now: float) -> list[float] | None:
        entry = self._entries.get(prefix)
        if entry is None or entry[0] <= now:
            return None
        return entry

    def _explicit(
        self, rules: CacheRules, body: Mapping[str, Any], blocks: list[_Block], now: float
    ) -> PromptCacheResult:
        refuse_breakpoints(rules, body)
        marks = [i for i, block in enumerate(blocks) if block.marker is not None]
        top = body.get("cache_control")
        if isinstance(top, Mapping) and blocks[-1].marker is None:
            # OpenRouter's automatic caching: a breakpoint on the last block.
            marks.append(len(blocks) - 1)
        marks = marks[: rules.max_breakpoints]
        if not marks:
            return PromptCacheResult()

        def marker(index: int) -> str | None:
            found = blocks[index].marker
            if found is None and isinstance(top, Mapping):
                ttl = top.get("ttl")
                return ttl if isinstance(ttl, str) else "5m"
            return found

        # The longest cached prefix at a breakpoint or within the lookback before one.
        read = -1
        for mark in marks:
            for index in range(mark, max(mark - rules.lookback_blocks, 0) - 1, -1):
                if index > read and self._live(blocks[index].prefix, now) is not None:
                    read = index
                    break
        for index in [read, *(m for m in marks if m < read)]:
            entry = self._live(blocks[index].prefix, now) if index >= 0 else None
            if entry is not None:
                entry[0] = now + entry[1]  # refreshed on use
        cached = blocks[read].tokens if read >= 0 else 0
        written = written_1h = 0
        start = cached
        for mark in marks:
            if mark <= read or blocks[mark].tokens < rules.min_tokens:
                continue
            ttl_name = marker(mark)
            ttl = rules.ttl_1h if ttl_name == "1h" else rules.ttl
            self._entries[blocks[mark].prefix] = [now + ttl, ttl]
            segment = blocks[mark].tokens - start
            written += segment
            if ttl_name == "1h":
                written_1h += segment
            start = blocks[mark].tokens
        return PromptCacheResult(
            cached_tokens=cached, cache_write_tokens=written, cache_write_1h_tokens=written_1h
        )

    def _automatic(
        self,
        rules: CacheRules,
        body: Mapping[str, Any],
        blocks: list[_Block],
        prompt_tokens: int,
        now: float,
    ) -> PromptCacheResult:
        if prompt_tokens < rules.min_tokens:
            return PromptCacheResult()
        long = body.get("prompt_cache_retention") == "24h"
        ttl = rules.long_retention if long else rules.ttl
        # Prefixes below the minimum are never stored, so look for the deepest live one.
        matched = next(
            (b.tokens for b in reversed(blocks) if self._live(b.prefix, now) is not None), 0
        )
        for block in blocks:
            entry = self._live(block.prefix, now) if block.tokens <= matched else None
            if entry is not None:
                entry[1] = max(entry[1], ttl)
                entry[0] = now + entry[1]  # refreshed on use
        cached = matched // rules.step_tokens * rules.step_tokens
        if cached < rules.min_tokens:
            cached = 0
        for block in blocks:
            if block.tokens >= rules.min_tokens and self._live(block.prefix, now) is None:
                self._entries[block.prefix] = [now + ttl, ttl]
        return PromptCacheResult(cached_tokens=cached)

    def _sweep(self, now: float) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        self._sweep_at = max(1024, 2 * len(self._entries))


def refuse_breakpoints(rules: CacheRules, body: Mapping[str, Any]) -> None:
    """Refuse, as Anthropic does, a request with more than ``rules.max_breakpoints``
    breakpoints, or with a 1 h breakpoint after a 5 min one (in the order tools, system,
    messages; a mark naming no TTL is 5 min).

    Raises:
        PromptCacheRefusal: with the provider's message.
    """
    ttls = _breakpoint_ttls(body)
    if len(ttls) > rules.max_breakpoints:
        raise PromptCacheRefusal(
            f"A maximum of {rules.max_breakpoints} blocks with cache_control may be "
            f"provided. Found {len(ttls)}."
        )
    shorter_before = False
    for ttl in ttls:
        if ttl == "1h" and shorter_before:
            raise PromptCacheRefusal(
                "cache_control: 1-hour entries must appear before 5-minute entries "
                "(blocks are processed in the order tools, system, messages)"
            )
        shorter_before = shorter_before or ttl != "1h"


def _breakpoint_ttls(body: Mapping[str, Any]) -> list[str]:
    """The TTL name of each breakpoint of a request, in provider order: each marked tool,
    then each message's marked blocks (and its own mark, which lands on its last block
    unless that block carries one), system messages first."""
    marks: list[object] = []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if _marked(tool):
            marks.append(tool["cache_control"])
    messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    for message in system + [m for m in messages if m not in system]:
        content = message.get("content")
        parts = content if isinstance(content, list) else []
        marks.extend(part["cache_control"] for part in parts if _marked(part))
        if _marked(message) and not (parts and _marked(parts[-1])):
            marks.append(message["cache_control"])
    return [_ttl_name(mark) for mark in marks]


def _ttl_name(mark: object) -> str:
    ttl = mark.get("ttl") if isinstance(mark, Mapping) else None
    return ttl if isinstance(ttl, str) else "5m"


def _render(model: str, body: Mapping[str, Any]) -> list[_Block]:
    """The prompt's blocks in provider order, each with its prefix hash and the prompt
    tokens through it (counted as ``count_prompt_tokens`` does, less reply priming)."""
    digest = hashlib.sha256(b"fake-provider-cache\x00" + model.encode())
    blocks: list[_Block] = []
    tokens = 0

    def add(element: object, count: int, marker: object) -> None:
        nonlocal tokens
        digest.update(_json(element) + b"\x1e")
        tokens += count
        ttl = marker.get("ttl") if isinstance(marker, Mapping) else None
        name = (ttl if isinstance(ttl, str) else "5m") if isinstance(marker, Mapping) else None
        blocks.append(_Block(digest.copy().digest(), tokens, name))

    tools = body.get("tools")
    if "tools" in body:
        marked = (
            [t["cache_control"] for t in tools if _marked(t)] if isinstance(tools, list) else []
        )
        add(["tools", _strip(tools)], count_tokens(_json(tools).decode()), (marked or [None])[-1])
    messages = [m for m in body.get("messages") or () if isinstance(m, Mapping)]
    system = [m for m in messages if m.get("role") in ("system", "developer")]
    for message in system + [m for m in messages if m not in system]:
        head = {k: v for k, v in message.items() if k not in ("content", "cache_control")}
        overhead = MESSAGE_OVERHEAD_TOKENS
        name = message.get("name")
        if isinstance(name, str):
            overhead += count_tokens(name)
        if "tool_calls" in message:
            overhead += count_tokens(_json(message["tool_calls"]).decode())
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not parts:
            add(["message", head], overhead, message.get("cache_control"))
            continue
        for index, part in enumerate(parts):
            text = part.get("text") if isinstance(part, Mapping) else None
            count = (
                count_tokens(text) if isinstance(text, str) else count_tokens(_json(part).decode())
            )
            marker = part.get("cache_control") if isinstance(part, Mapping) else None
            if index == len(parts) - 1 and marker is None:
                marker = message.get("cache_control")
            add(
                ["block", head if index == 0 else None, _strip(part)],
                count + (overhead if index == 0 else 0),
                marker,
            )
    return blocks


def _marked(part: object) -> bool:
    return isinstance(part, Mapping) and isinstance(part.get("cache_control"), Mapping)


def _strip(value: object) -> object:
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _json(value: object) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return repr(value).encode()
