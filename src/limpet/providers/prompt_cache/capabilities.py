"""Provider prompt-caching capabilities: one table of who caches how, and at what price. Pure.

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
run time is raised by the learned minimums ``CacheControlConfig.learned`` names
(``limpet.providers.cache_minimums.LEARNED_MINIMUMS`` by default).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from limpet.errors import ConfigurationError

__all__ = [
    "ANTHROPIC_MAX_BREAKPOINTS",
    "DEFAULT_CAPABILITIES",
    "FAMILIES",
    "CacheCapability",
    "CacheKind",
    "CapabilityTable",
    "model_slug",
]

CacheKind = Literal["explicit", "automatic", "none"]

#: Anthropic honours at most four ``cache_control`` breakpoints per request.
ANTHROPIC_MAX_BREAKPOINTS = 4


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
