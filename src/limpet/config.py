"""Configuration value objects: frozen, keyword-only, with defaults named as constants.

Their values are checked by ``limpet._checks`` (one number check for all). ``Endpoint``
(where requests go) has its own module, ``limpet.endpoint``, and is importable from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from limpet._checks import check_choice, check_flag, check_number
from limpet.endpoint import DEFAULT_BASE_URL, Endpoint, Gateway, default_base_url
from limpet.errors import ConfigurationError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_EJECTION_COOLDOWN",
    "DEFAULT_HTTP_POOL_CONNECTIONS",
    "AdmissionConfig",
    "CachePolicy",
    "Endpoint",
    "FlightConfig",
    "Gateway",
    "RetryConfig",
    "RoutingConfig",
    "Timeouts",
    "check_number",
    "default_base_url",
]

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_INITIAL_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 8.0
DEFAULT_MAX_RETRY_AFTER = 60.0

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_TOTAL_TIMEOUT = 600.0
#: Connections the HTTP session keeps open to all endpoints together (``Timeouts``).
DEFAULT_HTTP_POOL_CONNECTIONS = 100


@dataclass(frozen=True, kw_only=True)
class RetryConfig:
    """How upstream calls are retried.

    Retried: connection errors, timeouts, 408, 409, 429 and 5xx. A ``Retry-After`` or
    ``retry-after-ms`` header is honoured up to ``max_retry_after``; otherwise the wait is
    jittered exponential backoff from ``initial_backoff`` up to ``max_backoff``.

    Args:
        max_attempts: total attempts including the first; 1 turns retries off.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    initial_backoff: float = DEFAULT_INITIAL_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        check_number("RetryConfig.max_attempts", self.max_attempts, integer=True)
        for name in ("initial_backoff", "max_backoff", "max_retry_after"):
            check_number(f"RetryConfig.{name}", getattr(self, name))


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """Timeouts for upstream calls, in seconds; ``total`` covers one attempt.

    LLM calls can take minutes, so ``total`` is generous; lower it for chat front ends.
    """

    connect: float = DEFAULT_CONNECT_TIMEOUT
    total: float = DEFAULT_TOTAL_TIMEOUT
    max_connections: int = DEFAULT_HTTP_POOL_CONNECTIONS

    def __post_init__(self) -> None:
        for name in ("connect", "total"):
            check_number(f"Timeouts.{name}", getattr(self, name), above=0)
        check_number("Timeouts.max_connections", self.max_connections, integer=True)


DEFAULT_MAX_CACHEABLE_TEMPERATURE = 0.0


@dataclass(frozen=True, kw_only=True)
class CachePolicy:
    """Which requests the response cache may serve and store.

    A request is cacheable when its ``temperature`` is present and at most
    ``max_temperature``: an absent temperature means the provider's default, which
    samples. A caller can still assert determinism per call with ``cache="force"``.

    Args:
        max_temperature: the highest temperature treated as deterministic.
    """

    max_temperature: float = DEFAULT_MAX_CACHEABLE_TEMPERATURE

    def __post_init__(self) -> None:
        check_number("CachePolicy.max_temperature", self.max_temperature)


DEFAULT_FLIGHT_LEASE = 10.0
DEFAULT_FLIGHT_POLL = 0.25
DEFAULT_FLIGHT_FOLLOW_TIMEOUT = 600.0


@dataclass(frozen=True, kw_only=True)
class FlightConfig:
    """Cross-process single-flight (on when the cache has a Redis tier).

    Args:
        lease: seconds a leader's lease lasts without renewal; it is renewed every third
            of that while the upstream call runs, and a dead leader's followers take over
            within about ``lease + poll`` (as they do from a lease nobody renews). A
            follower rides out a store that does not answer its looks for up to 3 seconds
            (a stall of a moment is no reason to pay again for the leader's answer),
            then calls upstream itself; a Redis that refuses the connection, at once
            (Memcached's client cannot tell a refusal: it is ridden out the same).
        poll: seconds between a follower's checks when no completion notice arrives.
        follow_timeout: seconds a follower waits for another process before calling
            upstream itself (correctness over savings).
    """

    lease: float = DEFAULT_FLIGHT_LEASE
    poll: float = DEFAULT_FLIGHT_POLL
    follow_timeout: float = DEFAULT_FLIGHT_FOLLOW_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("lease", "poll", "follow_timeout"):
            check_number(f"FlightConfig.{name}", getattr(self, name), above=0)


# Chosen by hit rate in benchmarks/sticky.py: the tightest bounds within one point of the
# unbounded hit rate (a floor of 4 or less spills ordinary bursts; e below ~0.8 spills a
# tenant taking 30% of traffic, and every spill is a cache write at 12.5x a read's price).
DEFAULT_MAX_OVERLOAD = 1.0
DEFAULT_LOAD_FLOOR = 8
DEFAULT_FAILURE_THRESHOLD = 3
#: Seconds an ejected endpoint waits before its half-open probe (``RoutingConfig.cooldown``),
#: and the most that doubling after failed probes makes of it.
DEFAULT_EJECTION_COOLDOWN = 30.0
DEFAULT_MAX_EJECTION_COOLDOWN = 300.0
DEFAULT_AFFINITY_TTL = 300.0
DEFAULT_AFFINITY_TTL_1H = 3600.0
DEFAULT_AFFINITY_SIZE = 100_000
DEFAULT_PROMPT_CACHE_KEY_MODELS = ("openai/",)
# OpenAI: past about 15 requests a minute for one prefix and key, requests spill to other
# machines, each a cold miss; a hotter prefix is spread over more keys (PROVIDERS.md).
DEFAULT_PROMPT_CACHE_KEY_RATE = 15.0

#: How requests without any ``cache_control`` breakpoint are routed.
UnmarkedRouting = Literal["conversation", "spread"]


@dataclass(frozen=True, kw_only=True)
class RoutingConfig:
    """How ``StickyRouter`` picks an endpoint for each upstream call.

    Args:
        max_overload: bounded load's slack ``e``: an endpoint takes a request while its
            in-flight count is under ``max(load_floor, ceil((1 + e) * mean))``, the mean
            being over healthy endpoints, weighted. Every spill is a prompt-cache miss, so
            the default lets an endpoint carry twice its share before one.
        load_floor: in-flight requests an endpoint always takes, so an ordinary burst
            never spills (a spill repeats every burst when arrival order varies).
        unmarked: requests with no breakpoint: ``"conversation"`` routes by the first
            system plus first non-system message (as OpenRouter does; right for providers
            that cache prefixes automatically); ``"spread"`` sends each to the least
            loaded endpoint.
        failure_threshold: consecutive failures (connection errors, timeouts, 429, 5xx)
            that eject an endpoint; a single error never moves a key.
        cooldown: seconds an ejected endpoint waits before one half-open probe; a failed
            probe doubles it, up to ``max_cooldown``. A longer ``Retry-After`` wins, up
            to ``max_cooldown`` too.
        affinity_ttl: seconds a prefix stays pinned to the endpoint that served it, after
            its last use: the provider's cache TTL (Anthropic's default is 5 minutes).
        affinity_ttl_1h: the same for prefixes marked ``"ttl": "1h"``.
        affinity_size: prefixes the in-process affinity map holds (least recently used
            go first).
        prompt_cache_key: derive OpenAI's ``prompt_cache_key`` from the routing key for
            models named by ``prompt_cache_key_models`` (never part of the cache key).
        prompt_cache_key_models: model name prefixes that take ``prompt_cache_key``.
        prompt_cache_key_rate: requests per minute one key may carry: a prefix measured
            hotter than that is spread over ``ceil(rate / prompt_cache_key_rate)`` keys,
            as OpenAI's guidance asks.
        session_id: send OpenRouter endpoints (``Endpoint.gateway``) that do not pin a
            provider a ``session_id`` derived from the routing key, so OpenRouter keeps each
            prefix on the provider that cached it from its first request on. A caller's
            own ``session_id`` is kept; it never enters the cache key.
    """

    max_overload: float = DEFAULT_MAX_OVERLOAD
    load_floor: int = DEFAULT_LOAD_FLOOR
    unmarked: UnmarkedRouting = "conversation"
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    cooldown: float = DEFAULT_EJECTION_COOLDOWN
    max_cooldown: float = DEFAULT_MAX_EJECTION_COOLDOWN
    affinity_ttl: float = DEFAULT_AFFINITY_TTL
    affinity_ttl_1h: float = DEFAULT_AFFINITY_TTL_1H
    affinity_size: int = DEFAULT_AFFINITY_SIZE
    prompt_cache_key: bool = False
    prompt_cache_key_models: tuple[str, ...] = DEFAULT_PROMPT_CACHE_KEY_MODELS
    prompt_cache_key_rate: float = DEFAULT_PROMPT_CACHE_KEY_RATE
    session_id: bool = True

    def __post_init__(self) -> None:
        for name in (
            "max_overload",
            "cooldown",
            "max_cooldown",
            "affinity_ttl",
            "affinity_ttl_1h",
            "prompt_cache_key_rate",
        ):
            above = None if name == "max_overload" else 0
            check_number(f"RoutingConfig.{name}", getattr(self, name), above=above)
        for name in ("load_floor", "failure_threshold", "affinity_size"):
            check_number(f"RoutingConfig.{name}", getattr(self, name), integer=True)
        check_choice("RoutingConfig.unmarked", self.unmarked, ("conversation", "spread"))
        if self.max_cooldown < self.cooldown:
            raise ConfigurationError(
                f"RoutingConfig.max_cooldown: expected >= cooldown ({self.cooldown!r}), "
                f"got {self.max_cooldown!r}"
            )
        check_flag("RoutingConfig.session_id", self.session_id)
        models = self.prompt_cache_key_models
        if not isinstance(models, tuple) or not all(isinstance(m, str) for m in models):
            raise ConfigurationError(
                f"RoutingConfig.prompt_cache_key_models: expected a tuple of str, got {models!r}"
            )


DEFAULT_INITIAL_LIMIT = 8
DEFAULT_MAX_LIMIT = 1000
DEFAULT_LIMIT_BACKOFF = 0.9
DEFAULT_PROBE_ROUNDS = 20
DEFAULT_REPIN_PAUSE = 30.0


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """How limpet admits requests to each endpoint: ``Client(admission=...)``.

    Every upstream attempt takes a slot of its endpoint while it is on the wire; callers
    beyond the limit wait, first come first served, with their deadline running. The limit
    is ``Endpoint.max_in_flight`` where set, and under it one learned from the endpoint
    (``limpet.http.admission_rules.AimdLimit``). A 429 or 503 with ``Retry-After`` pauses the
    endpoint for every caller at once: the retry waits for the pause, not for its own
    backoff. Cache hits and coalesced callers never take a slot.

    Args:
        initial_limit: the learned limit before the endpoint has refused anything.
        min_limit: the learned limit never drops below this.
        max_limit: nor grows above this.
        backoff: a refusal cuts the limit to this share of the concurrency it met.
        probe_rounds: at the last refusal's concurrency, the limit grows this many times
            slower, so the endpoint's limit is probed rarely.
        repin_pause: a sticky prefix leaves its paused endpoint only when the pause
            lasts longer than this many seconds; new prefixes avoid a paused endpoint.
    """

    initial_limit: int = DEFAULT_INITIAL_LIMIT
    min_limit: int = 1
    max_limit: int = DEFAULT_MAX_LIMIT
    backoff: float = DEFAULT_LIMIT_BACKOFF
    probe_rounds: int = DEFAULT_PROBE_ROUNDS
    repin_pause: float = DEFAULT_REPIN_PAUSE

    def __post_init__(self) -> None:
        for name in ("initial_limit", "min_limit", "max_limit", "probe_rounds"):
            check_number(f"AdmissionConfig.{name}", getattr(self, name), integer=True)
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ConfigurationError(
                "AdmissionConfig: expected min_limit <= initial_limit <= max_limit, got "
                f"{self.min_limit}, {self.initial_limit}, {self.max_limit}"
            )
        if not isinstance(self.backoff, int | float) or not 0 < self.backoff < 1:
            raise ConfigurationError(
                f"AdmissionConfig.backoff: expected a number in (0, 1), got {self.backoff!r}"
            )
        check_number("AdmissionConfig.repin_pause", self.repin_pause)
