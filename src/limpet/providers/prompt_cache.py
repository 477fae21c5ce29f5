"""Provider prompt caching: one capability table, and ``cache_control`` injection. Pure.

Providers cache a prompt's prefix in one of two ways. *Automatic* providers (OpenAI,
DeepSeek, xAI, Groq) cache any long enough prefix by themselves; a client can only help
by keeping the prefix stable and routing it to the same place. *Explicit* providers
(Anthropic, and Gemini through OpenRouter) cache only up to a ``cache_control``
breakpoint the request marks; without one they cache nothing. ``inject_cache_control``
marks the static part of a request (tools and the leading system messages) for explicit
providers when it is long enough to be cached, so every later request that shares it
reads it at a tenth of the price instead of paying full price again.

Every threshold, TTL, breakpoint limit and price multiplier lives in one
``CapabilityTable`` that users can extend or override, never in literals scattered
through the code: the providers change them every few months.

Sources (as ../shared/PROVIDERS.md gathers them, late 2026; each rule of
``DEFAULT_CAPABILITIES`` names its own in ``CacheCapability.source``): Anthropic's,
OpenAI's, Google's, DeepSeek's and xAI's prompt-caching documentation and OpenRouter's
prompt-caching page for kinds, TTLs and prices; for the Anthropic minimums, OpenRouter's
page (4,096 for Opus 4.5-4.8; 1,024 for Sonnet 4.6), orq.ai's gateway docs (4,096 for
Opus 4.5 and 4.6 and Haiku 4.5; 2,048 for Sonnet 4.6: the sources disagree) and
aihubmix ("raised from 1,024 to 4,096"), read 2026-12. A minimum that proves too low at
run time is raised by ``limpet.providers.cache_minimums.LEARNED_MINIMUMS``.

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

import fnmatch
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

from limpet.errors import ConfigurationError
from limpet.providers.cache_minimums import LEARNED_MINIMUMS, LearnedMinimums

__all__ = [
    "ANTHROPIC_MAX_BREAKPOINTS",
    "DEFAULT_CACHE_CONTROL",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_CHARS_PER_TOKEN",
    "DEFAULT_TTL",
    "FAMILIES",
    "CacheCapability",
    "CacheControlConfig",
    "CacheKind",
    "CapabilityTable",
    "breakpoint_ttl",
    "count_breakpoints",
    "estimate_tokens",
    "inject_cache_control",
    "marked_prefix_tokens",
    "model_slug",
]

CacheKind = Literal["explicit", "automatic", "none"]

#: Anthropic honours at most four ``cache_control`` breakpoints per request.
ANTHROPIC_MAX_BREAKPOINTS = 4

#: The TTL injected breakpoints ask for unless configured otherwise.
DEFAULT_TTL = "5m"

#: Characters per token for estimating prompt length: about four for English text. The
#: estimate only decides whether a prefix is worth marking; a wrong guess below the
#: provider's minimum costs nothing (the request then simply caches nothing).
DEFAULT_CHARS_PER_TOKEN = 4.0

_SYSTEM_ROLES = frozenset({"system", "developer"})
# Per-message tokens beyond the content (role, separators), as in OpenAI's chat format.
_MESSAGE_OVERHEAD_TOKENS = 4


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheCapability:
    """How one provider family (or model) caches prompts, and what that costs.

    Attributes:
        family: the provider family, e.g. ``"anthropic"``.
        kind: ``"explicit"`` (caches only up to ``cache_control`` breakpoints),
            ``"automatic"`` (caches any long enough prefix) or ``"none"``.
        min_tokens: the shortest prefix the provider caches; below it nothing is cached.
        step_tokens: granularity of cached prefixes (OpenAI: 128-token steps).
        ttls: TTLs a breakpoint may ask for, the provider's default first; empty when a
            breakpoint takes no TTL.
        max_breakpoints: most breakpoints a request may carry, the caller's own included.
        last_breakpoint_only: the gateway uses only the last breakpoint (Gemini through
            OpenRouter), so one is added only when the caller marked none.
        read_multiplier: price of a cache read, as a multiple of the prompt price.
        write_multiplier: price of a default-TTL cache write, as a multiple of the prompt
            price (1.0: writes cost nothing extra).
        write_1h_multiplier: price of a 1 h cache write, or None when there is none.
        storage_usd_per_mtok_hour: explicit-cache storage price, USD per million tokens per
            hour (Gemini ``cachedContents``), or None when storage is free.
        source: where ``min_tokens`` (and the rest) come from, and when they were read;
            where sources disagree, what each says. Not compared.
    """

    family: str
    kind: CacheKind
    min_tokens: int = 1024
    step_tokens: int = 1
    ttls: tuple[str, ...] = ()
    max_breakpoints: int = 0
    last_breakpoint_only: bool = False
    read_multiplier: float = 1.0
    write_multiplier: float = 1.0
    write_1h_multiplier: float | None = None
    storage_usd_per_mtok_hour: float | None = None
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("explicit", "automatic", "none"):
            raise ConfigurationError(f"CacheCapability.kind: unknown kind {self.kind!r}")
        for name in ("min_tokens", "step_tokens", "max_breakpoints"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"CacheCapability.{name}: expected an int >= 0")
        for name in ("read_multiplier", "write_multiplier", "write_1h_multiplier"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int | float) and value >= 0):
                raise ConfigurationError(f"CacheCapability.{name}: expected a number >= 0")


_ANTHROPIC = CacheCapability(
    family="anthropic",
    kind="explicit",
    min_tokens=1024,
    ttls=("5m", "1h"),
    max_breakpoints=ANTHROPIC_MAX_BREAKPOINTS,
    read_multiplier=0.1,
    write_multiplier=1.25,
    write_1h_multiplier=2.0,
)
_OPENAI = CacheCapability(
    family="openai", kind="automatic", min_tokens=1024, step_tokens=128, read_multiplier=0.5
)
_GEMINI = CacheCapability(
    family="google",
    kind="explicit",
    min_tokens=1024,
    max_breakpoints=1,
    last_breakpoint_only=True,
    read_multiplier=0.25,
    storage_usd_per_mtok_hour=1.0,
)

#: The provider families, for building rules of one's own (a Groq-hosted model name,
#: say, maps to ``FAMILIES["groq"]``).
FAMILIES: Mapping[str, CacheCapability] = {
    "anthropic": _ANTHROPIC,
    "openai": _OPENAI,
    "google": _GEMINI,
    "deepseek": CacheCapability(
        family="deepseek", kind="automatic", min_tokens=64, step_tokens=64, read_multiplier=0.1
    ),
    "x-ai": CacheCapability(family="x-ai", kind="automatic", min_tokens=0, read_multiplier=0.25),
    "groq": CacheCapability(family="groq", kind="automatic", min_tokens=0, read_multiplier=0.5),
}


@dataclass(frozen=True, slots=True)
class CapabilityTable:
    """Model-slug glob patterns → ``CacheCapability``; the first matching rule wins.

    Patterns are ``fnmatch`` globs over ``model_slug(model)``: lower case, the OpenRouter
    variant (``:floor``, ``:nitro``, ...) dropped and dots spelled as hyphens, so
    ``"anthropic/claude-haiku-4-5*"`` matches ``"anthropic/claude-haiku-4.5:nitro"``.

    Example:
        >>> table = DEFAULT_CAPABILITIES.with_overrides({
        ...     "anthropic/claude-opus-4-6*": replace(FAMILIES["anthropic"], min_tokens=4096),
        ...     "llama-*": FAMILIES["groq"],
        ... })
        >>> table.lookup("anthropic/claude-opus-4.6").min_tokens
        4096
    """

    rules: tuple[tuple[str, CacheCapability], ...]
    # Lookups run on every upstream call; a model's answer never changes, so remember it.
    _lookups: dict[str, CacheCapability | None] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        for rule in self.rules:
            if not (
                isinstance(rule, tuple)
                and len(rule) == 2
                and isinstance(rule[0], str)
                and isinstance(rule[1], CacheCapability)
            ):
                raise ConfigurationError(
                    f"CapabilityTable: expected (pattern, CacheCapability) rules, got {rule!r}"
                )

    @classmethod
    def of(
        cls, rules: Mapping[str, CacheCapability] | Iterable[tuple[str, CacheCapability]]
    ) -> CapabilityTable:
        """A table from a mapping or pairs, in the order given."""
        pairs = rules.items() if isinstance(rules, Mapping) else rules
        return cls(tuple((pattern.lower(), capability) for pattern, capability in pairs))

    def lookup(self, model: object) -> CacheCapability | None:
        """The capability of ``model``, or None when no rule matches."""
        if not isinstance(model, str):
            return None
        if model in self._lookups:
            return self._lookups[model]
        slug = model_slug(model)
        found = next(
            (cap for pattern, cap in self.rules if fnmatch.fnmatchcase(slug, pattern)), None
        )
        if len(self._lookups) < _MAX_MEMO:
            self._lookups[model] = found
        return found

    def with_overrides(
        self, overrides: Mapping[str, CacheCapability] | Iterable[tuple[str, CacheCapability]]
    ) -> CapabilityTable:
        """A new table whose ``overrides`` are tried before this table's rules."""
        first = CapabilityTable.of(overrides).rules
        return CapabilityTable(first + self.rules)


_MAX_MEMO = 4096


def model_slug(model: str) -> str:
    """``model`` as capability and price rules match it: lower case, no ``:variant``, dots
    as hyphens (``"Anthropic/Claude-Haiku-4.5:nitro"`` → ``"anthropic/claude-haiku-4-5"``).
    """
    return model.lower().partition(":")[0].replace(".", "-")


# Sources of the minimums, as PROVIDERS.md ("Caching rules per provider", "Added 2026-12")
# records them; read 2026-12. Re-check before relying on a number: they move.
_OPENROUTER_DOCS = "OpenRouter prompt-caching docs (2026-12)"
_GATEWAY_DOCS = "orq.ai gateway docs; aihubmix ('raised from 1,024 to 4,096') (2026-12)"
_ANTHROPIC_DOCS = "Anthropic prompt-caching docs via PROVIDERS.md (late 2026)"


def _anthropic(min_tokens: int, source: str) -> CacheCapability:
    return replace(_ANTHROPIC, min_tokens=min_tokens, source=source)


#: What limpet knows of each provider (late 2026; see PROVIDERS.md). Specific models first.
#: Each Anthropic minimum names its source; where published sources disagree, the rule
#: says so, and the learned correction (``LearnedMinimums``) raises a minimum that proves
#: too low at run time.
DEFAULT_CAPABILITIES = CapabilityTable.of(
    [
        ("anthropic/claude-opus-4-5*", _anthropic(4096, f"{_GATEWAY_DOCS}; {_OPENROUTER_DOCS}")),
        ("anthropic/claude-opus-4-6*", _anthropic(4096, f"{_GATEWAY_DOCS}; {_OPENROUTER_DOCS}")),
        ("anthropic/claude-opus-4-7*", _anthropic(4096, f"{_OPENROUTER_DOCS} (Opus 4.5-4.8)")),
        ("anthropic/claude-opus-4-8*", _anthropic(4096, f"{_OPENROUTER_DOCS} (Opus 4.5-4.8)")),
        ("anthropic/claude-haiku-4-5*", _anthropic(4096, _GATEWAY_DOCS)),
        (
            "anthropic/claude-sonnet-4-6*",
            _anthropic(
                1024,
                f"{_OPENROUTER_DOCS}: 1,024; sources disagree: orq.ai gateway docs (2026-12) "
                "give 2,048",
            ),
        ),
        ("anthropic/claude-3-haiku*", _anthropic(2048, _ANTHROPIC_DOCS)),
        ("anthropic/claude-3-5-haiku*", _anthropic(2048, _ANTHROPIC_DOCS)),
        # Sonnet 4.5, Opus 4.1, Opus 4, Sonnet 4, Sonnet 3.7, and models not listed above.
        ("anthropic/*", _anthropic(1024, f"{_ANTHROPIC_DOCS}; {_GATEWAY_DOCS}")),
        ("openai/gpt-4-1", replace(_OPENAI, read_multiplier=0.25)),
        ("openai/gpt-4-1-*", replace(_OPENAI, read_multiplier=0.25)),
        ("openai/gpt-5-[6-9]*", replace(_OPENAI, read_multiplier=0.1, write_multiplier=1.25)),
        ("openai/gpt-5*", replace(_OPENAI, read_multiplier=0.1)),
        ("openai/o3*", replace(_OPENAI, read_multiplier=0.25)),
        ("openai/o4*", replace(_OPENAI, read_multiplier=0.25)),
        ("openai/*", _OPENAI),
        ("google/gemini-*pro*", replace(_GEMINI, min_tokens=4096, storage_usd_per_mtok_hour=4.5)),
        ("google/gemini-*", _GEMINI),
        ("deepseek/*", FAMILIES["deepseek"]),
        ("x-ai/*", FAMILIES["x-ai"]),
    ]
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheControlConfig:
    """What ``inject_cache_control`` marks, and how.

    Args:
        ttl: the TTL breakpoints ask for (``"5m"`` or ``"1h"`` for Anthropic); a TTL the
            model's family does not offer is left out, so the provider's default applies.
        rolling: also mark the last user turn once the conversation up to it reaches the
            minimum, so a multi-turn chat reads its history from the cache next turn.
        chars_per_token: characters per token when estimating a prefix's length.
        capabilities: the capability table; ``DEFAULT_CAPABILITIES`` unless overridden.
        learned: minimums learned at run time, which raise the table's (this process's
            ``LEARNED_MINIMUMS`` by default; None: the table alone).
    """

    ttl: str = DEFAULT_TTL
    rolling: bool = False
    chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
    capabilities: CapabilityTable = DEFAULT_CAPABILITIES
    learned: LearnedMinimums | None = LEARNED_MINIMUMS

    def __post_init__(self) -> None:
        if not isinstance(self.ttl, str) or not self.ttl:
            raise ConfigurationError(f"CacheControlConfig.ttl: expected a str, got {self.ttl!r}")
        cpt = self.chars_per_token
        if isinstance(cpt, bool) or not isinstance(cpt, int | float) or not 0 < cpt < math.inf:
            raise ConfigurationError(
                f"CacheControlConfig.chars_per_token: expected a number > 0, got {cpt!r}"
            )
        if not isinstance(self.capabilities, CapabilityTable):
            raise ConfigurationError("CacheControlConfig.capabilities: expected a CapabilityTable")
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
    asked for OpenRouter's automatic caching (a top-level ``cache_control``).

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
    marks = _plan(body, messages, capability, config, budget)
    if not marks:
        return body
    mark = _mark_for(capability.ttls, config.ttl)
    sent = list(messages)
    for index in marks:
        sent[index] = _marked(sent[index], mark)
    return {**body, "messages": sent}


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
    ttls = {_mark_ttl(mark) for mark in _marks(body)}
    return ttls.pop() if len(ttls) == 1 else None


def estimate_tokens(value: object, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> int:
    """Approximate tokens of a message (or any JSON value such as ``tools``).

    A message counts its text parts' characters plus a small fixed overhead; anything else
    counts its JSON.
    """
    if isinstance(value, Mapping) and "role" in value:
        content = value.get("content")
        chars = 0
        if isinstance(content, str):
            chars = len(content)
        elif isinstance(content, list):
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                chars += len(text) if isinstance(text, str) else _json_chars(part)
        return _MESSAGE_OVERHEAD_TOKENS + math.ceil(chars / chars_per_token)
    return math.ceil(_json_chars(value) / chars_per_token)


def marked_prefix_tokens(
    body: Mapping[str, Any], chars_per_token: float = DEFAULT_CHARS_PER_TOKEN
) -> int | None:
    """Approximate tokens up to a request's deepest ``cache_control`` mark in a message
    (tools, then messages in order, the marked message counted up to its marked block),
    or None when no message carries one."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    tokens = estimate_tokens(body["tools"], chars_per_token) if body.get("tools") else 0
    deepest: int | None = None
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        parts = content if isinstance(content, list) else []
        marked = [i for i, p in enumerate(parts) if isinstance(p, Mapping) and "cache_control" in p]
        if "cache_control" in message or (marked and marked[-1] == len(parts) - 1):
            tokens += estimate_tokens(message, chars_per_token)
            deepest = tokens
        elif marked:
            deepest = tokens + estimate_tokens(
                {**message, "content": parts[: marked[-1] + 1]}, chars_per_token
            )
            tokens += estimate_tokens(message, chars_per_token)
        else:
            tokens += estimate_tokens(message, chars_per_token)
    return deepest


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
        if not (isinstance(message, Mapping) and message.get("role") in _SYSTEM_ROLES):
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
    marks: list[object] = []
    if "cache_control" in body:
        marks.append(body["cache_control"])
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, Mapping):
            continue
        if "cache_control" in message:
            marks.append(message["cache_control"])
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, Mapping) and "cache_control" in part:
                marks.append(part["cache_control"])
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, Mapping) and "cache_control" in tool:
            marks.append(tool["cache_control"])
    return marks


def _mark_ttl(mark: object) -> str:
    ttl = mark.get("ttl") if isinstance(mark, Mapping) else None
    return ttl if isinstance(ttl, str) else DEFAULT_TTL


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


@functools.lru_cache(maxsize=64)
def _mark_for(ttls: tuple[str, ...], ttl: str) -> tuple[tuple[str, str], ...]:
    """The ``cache_control`` value as pairs: a TTL only when the family offers it and it is
    not the default, so the request stays valid wherever the provider is hosted."""
    if ttl in ttls and ttl != ttls[0]:
        return (("type", "ephemeral"), ("ttl", ttl))
    return (("type", "ephemeral"),)


def _json_chars(value: object) -> int:
    try:
        return len(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
    except TypeError:
        return 0
