"""How the Client's arguments become the pipeline's parts: each argument checked (a bad
one is a ``ConfigurationError`` naming it) and resolved to what the stages use."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson

from limpet._checks import check_headers, is_text
from limpet.cache.base import CacheBackend
from limpet.cache.generations import GenerationStore
from limpet.cache.local_generations import LocalGenerations
from limpet.cache.memory import MemoryCache
from limpet.cache.tiered import TieredCache
from limpet.config import AdmissionConfig, Endpoint, default_base_url
from limpet.errors import ConfigurationError, InvalidRequestError
from limpet.flight.store import FlightStore
from limpet.observe.events import EventHook
from limpet.pipeline.credentials import CACHE_SCOPES
from limpet.pipeline.validation import validate_ttl
from limpet.providers.prompt_cache import (
    DEFAULT_CACHE_CONTROL,
    CacheControlConfig,
    inject_cache_control,
)
from limpet.routing.base import Router
from limpet.routing.sticky import StickyRouter

if TYPE_CHECKING:
    from limpet.cache.redis import RedisCache

logger = logging.getLogger("limpet")

API_KEY_ENV = "OPENROUTER_API_KEY"


class DefaultCache:
    """The default of ``Client(cache=...)``: a ``MemoryCache`` of the Client's own."""

    def __repr__(self) -> str:
        return "MemoryCache()"


DEFAULT_CACHE: Final = DefaultCache()


T = TypeVar("T")


def resolve_cache(cache: object) -> TieredCache | None:
    if cache is None:
        return None
    if isinstance(cache, DefaultCache):
        return TieredCache(MemoryCache())
    if isinstance(cache, TieredCache):
        return cache
    if isinstance(cache, CacheBackend):
        return TieredCache(cache)
    raise ConfigurationError(
        f"Client.cache: expected a CacheBackend, a TieredCache or None, got {type(cache).__name__}"
    )


def generation_store_of(cache: TieredCache | None) -> GenerationStore | None:
    """The lowest tier that keeps generations (the one processes share), if any."""
    return None if cache is None else cache.generation_store


def local_generations_of(cache: TieredCache | None) -> LocalGenerations | None:
    """The generations of the Clients sharing ``cache`` when no tier keeps them, if any."""
    return None if cache is None else cache.local_generations


def redis_tier_of(cache: TieredCache | None) -> RedisCache | None:
    """The lowest Redis tier, if any."""
    return None if cache is None else cache.redis_tier


def flight_store_of(cache: TieredCache | None) -> FlightStore | None:
    """Leases and notices of the lowest tier that offers them, if any."""
    return None if cache is None else cache.flight_store


def resolve_ttl(ttl: object, default: float) -> float:
    try:
        return validate_ttl(ttl) or default
    except InvalidRequestError as exc:
        raise ConfigurationError(f"Client.{exc}") from None


def resolve_close_grace(close_grace: object) -> float:
    if isinstance(close_grace, bool) or not isinstance(close_grace, int | float):
        raise ConfigurationError(f"Client.close_grace: expected seconds, got {close_grace!r}")
    if not 0 <= close_grace < math.inf:
        raise ConfigurationError(
            f"Client.close_grace: expected a finite number >= 0, got {close_grace!r}"
        )
    return float(close_grace)


def check_scope(namespace: object, cache_scope: object) -> None:
    if not isinstance(namespace, str) or not is_text(namespace):
        raise ConfigurationError(f"Client.namespace: expected a str of text, got {namespace!r}")
    if cache_scope not in CACHE_SCOPES:
        raise ConfigurationError(
            f"Client.cache_scope: expected 'credential' or 'namespace', got {cache_scope!r}"
        )


def check_max_embed_inputs(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError("Client.max_embed_inputs: expected an int >= 1")


def attribution_headers(app_url: str | None, app_title: str | None) -> dict[str, str]:
    """OpenRouter's attribution headers (never part of the key).

    Raises:
        ConfigurationError: one cannot be sent as a header, naming it.
    """
    headers = {}
    if app_url:
        headers["HTTP-Referer"] = app_url
    if app_title:
        headers["X-Title"] = app_title
    check_headers("Client.app_url/app_title", headers)
    return headers


def event_hooks(on_event: EventHook | Sequence[EventHook] | None) -> tuple[EventHook, ...]:
    """``Client(on_event=...)``: one hook, a list of them, or None.

    Raises:
        ConfigurationError: anything else, or a hook that cannot be called.
    """
    if on_event is None:
        return ()
    if callable(on_event):
        return (on_event,)
    hooks = tuple(on_event) if isinstance(on_event, list | tuple) else None
    if hooks is None or not all(callable(hook) for hook in hooks):
        raise ConfigurationError(
            "Client.on_event: expected a callable, a list of them, or None, got "
            f"{type(on_event).__name__}"
        )
    return hooks


def config_or_default(field: str, value: object, kind: type[T]) -> T:
    """``value`` if it is a ``kind`` (``RetryConfig``...), or a default one for None.

    Raises:
        ConfigurationError: anything else (a dict of its fields, say), naming the field.
    """
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise ConfigurationError(
            f"Client.{field}: expected a {kind.__name__} or None, got {type(value).__name__}"
        )
    return value


def resolve_admission(value: object, endpoints: Sequence[Endpoint] = ()) -> AdmissionConfig | None:
    """``Client(admission=)`` as a config, or None (off). Off, no endpoint's own limits
    (``max_in_flight``, ``rpm``, ``tpm``) could be kept: one that sets any is refused,
    rather than its limit left unenforced."""
    if value is True:
        return AdmissionConfig()
    if value is False or value is None:
        for endpoint in endpoints:
            for limit in ("max_in_flight", "rpm", "tpm"):
                if getattr(endpoint, limit) is not None:
                    raise ConfigurationError(
                        f"Client.admission: {value!r} turns admission off, so endpoint "
                        f"{endpoint.name!r}'s {limit} would not be kept: leave admission "
                        f"on, or the endpoint's {limit} out"
                    )
        return None
    if isinstance(value, AdmissionConfig):
        return value
    raise ConfigurationError(
        f"Client.admission: expected an AdmissionConfig, True, False or None, got {value!r}"
    )


def resolve_cache_control(value: object) -> CacheControlConfig | None:
    if value is True:
        return DEFAULT_CACHE_CONTROL
    if value is False or value is None:
        return None
    if isinstance(value, CacheControlConfig):
        return value
    raise ConfigurationError(
        f"Client.auto_cache_control: expected a bool or a CacheControlConfig, got {value!r}"
    )


def cache_control_mark(
    control: CacheControlConfig | None, endpoints: Sequence[Endpoint]
) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """What ``auto_cache_control`` does to each body sent: nothing when an endpoint asks
    for automatic caching (a top-level ``cache_control`` in its ``extra_body``, merged in
    as it is sent): its breakpoint and the injected ones together could exceed the
    provider's four, and the request be refused."""
    if control is None:
        return None
    automatic = [e.name for e in endpoints if "cache_control" in (e.extra_body or {})]
    if automatic:
        logger.info(
            "limpet: auto_cache_control marks nothing: endpoint %r asks for automatic caching",
            automatic[0],
        )
        return None
    return partial(inject_cache_control, config=control)


def resolve_router(
    router: Router | None,
    endpoints: Sequence[Endpoint] | None,
    base_url: str | None,
    api_key: str | None,
) -> Router:
    if router is None:
        return StickyRouter(resolve_endpoints(endpoints, base_url, api_key))
    if not isinstance(router, Router):
        raise ConfigurationError(
            f"Client.router: expected a Router such as StickyRouter, got {type(router).__name__}"
        )
    if endpoints is not None or base_url is not None or api_key is not None:
        raise ConfigurationError(
            "Client: the router holds the endpoints; give router= without endpoints=, "
            "base_url= or api_key="
        )
    return router


def resolve_endpoints(
    endpoints: Sequence[Endpoint] | None, base_url: str | None, api_key: str | None
) -> tuple[Endpoint, ...]:
    if endpoints is not None:
        if base_url is not None or api_key is not None:
            raise ConfigurationError(
                "Client: give either endpoints= or the base_url=/api_key= shortcut, not both"
            )
        resolved = tuple(endpoints)
        if not resolved or not all(isinstance(e, Endpoint) for e in resolved):
            raise ConfigurationError("Client.endpoints: expected a non-empty list of Endpoint")
        names = [e.name for e in resolved]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"Client.endpoints: names must be unique, got {names}")
        # One key holds a vector whichever endpoint answered: vectors of two lengths under
        # one key would be served alike (a call would get vectors of both).
        # (As JSON: any value an extra_body may hold, compared as it is sent.)
        sizes = {orjson.dumps((e.extra_body or {}).get("dimensions")) for e in resolved}
        if len(sizes) > 1:
            shown = ", ".join(sorted(size.decode() for size in sizes))
            raise ConfigurationError(
                "Client.endpoints: every endpoint's extra_body must ask for the same "
                f"'dimensions' (or none), got {shown}"
            )
        return resolved
    return (
        Endpoint(
            "default",
            base_url or default_base_url(),
            api_key=api_key or os.environ.get(API_KEY_ENV) or None,
        ),
    )
