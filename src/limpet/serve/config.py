"""What ``limpet serve`` is configured with: ``ServeConfig``, and the endpoints its
upstream URLs make."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from limpet._checks import check_hmac_key, check_http_url, check_number
from limpet._urls import host_and_port, redact_url
from limpet.config import Endpoint, RetryConfig
from limpet.errors import ConfigurationError

__all__ = ["DEFAULT_BODY_TIMEOUT", "DEFAULT_MODELS_TTL", "ServeConfig", "endpoints_of"]

#: Seconds ``/v1/models`` answers are kept, per credential.
DEFAULT_MODELS_TTL: Final = 60.0
#: Seconds a request's body may take to arrive whole, once its headers have: a caller that
#: stalls or trickles it is answered 408 then, rather than holding its connection (and the
#: memory of what it sent) for good. A megabyte of messages takes a second on a slow link.
DEFAULT_BODY_TIMEOUT: Final = 60.0

# How an upstream's credentials are given instead of in its URL.
_CREDENTIALS_INSTEAD = (
    "the proxy sends each caller's Authorization upstream, or its own key "
    "(upstream_key, --upstream-key-env)"
)


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """What ``limpet serve`` proxies to and where it caches.

    Args:
        upstreams: OpenAI-compatible API roots (``https://openrouter.ai/api/v1``); the
            Client routes among them. Empty only with ``fake``. Without credentials in
            them (``user:password@``): the proxy sends each caller's key, or its own.
        redis: a ``redis://`` URL for the shared tier (behind an in-process one), or None.
        memcached: a ``memcached://`` URL instead of Redis, or None.
        prefix: the shared tier's key prefix; its default (``limpet:``) when None.
        namespace: the Client's namespace.
        auto_cache_control: the Client's ``auto_cache_control``.
        fake: proxy to a ``FakeGateway`` started in-process (no key, no network).
        models_ttl: seconds a ``/v1/models`` answer is kept, per credential.
        upstream_key: the key the proxy sends upstream itself, instead of each caller's
            ``Authorization``.
        client_keys: with ``upstream_key``, the keys callers must present as
            ``Authorization: Bearer <key>`` (none: every caller is let in). Each key is a
            tenant of its own (``Client.complete(tenant=...)``): callers presenting
            different keys never share a cache entry or an upstream request, unless
            ``share_across_client_keys``. Without client keys, every caller of the
            ``upstream_key`` shares its entries.
        share_across_client_keys: let callers presenting different client keys share
            entries and flights (one tenant's identical prompt is then another's hit,
            and its ``X-Limpet-Cache: hit`` tells it so; any of them can refresh them).
        metrics: serve ``GET /metrics`` for Prometheus (the ``prometheus`` extra).
        hmac_key: signs the shared tier's entries and flight notices (``RedisCache``'s),
            as every process sharing it must; None: unsigned.
        body_timeout: seconds a request's body may take to arrive whole, after its
            headers; past it the request is answered 408 and its connection closed. A
            connection that sends no whole request line and headers for as long (idle,
            or sending them a byte at a time) is closed too.
        retry: how the Client retries upstream calls; its defaults when None. A failure
            it retried, or chose not to, is answered ``x-should-retry: false``
            (``limpet.serve.errors.retry_headers``): an OpenAI SDK in front does not
            multiply its attempts.
    """

    upstreams: tuple[str, ...] = ()
    redis: str | None = None
    memcached: str | None = None
    prefix: str | None = None
    namespace: str = ""
    auto_cache_control: bool = False
    fake: bool = False
    models_ttl: float = DEFAULT_MODELS_TTL
    upstream_key: str | None = field(default=None, repr=False)
    client_keys: frozenset[str] = field(default=frozenset(), repr=False)
    share_across_client_keys: bool = False
    metrics: bool = False
    hmac_key: bytes | None = field(default=None, repr=False)
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    retry: RetryConfig | None = None

    def __post_init__(self) -> None:
        check_hmac_key("ServeConfig.hmac_key", self.hmac_key)
        check_number("ServeConfig.body_timeout", self.body_timeout, above=0)
        check_number("ServeConfig.models_ttl", self.models_ttl)
        if self.client_keys and not self.upstream_key:
            raise ConfigurationError("ServeConfig.client_keys: only with an upstream_key")
        if self.share_across_client_keys and not self.client_keys:
            raise ConfigurationError("ServeConfig.share_across_client_keys: only with client_keys")
        if not self.upstreams and not self.fake:
            raise ConfigurationError("ServeConfig.upstreams: at least one upstream URL")
        if self.upstreams and self.fake:
            raise ConfigurationError("ServeConfig: upstreams or fake, not both")
        for url in self.upstreams:  # a bad URL fails now, not once serving
            check_http_url("ServeConfig.upstreams", url, instead=_CREDENTIALS_INSTEAD)
        if self.redis and self.memcached:
            raise ConfigurationError("ServeConfig: redis or memcached, not both")

    def __repr__(self) -> str:
        """Every field, the URLs redacted (``limpet._urls.redact_url``: a Redis URL holds
        its password), the keys left out."""
        shown = {
            "upstreams": tuple(redact_url(url) for url in self.upstreams),
            "redis": None if self.redis is None else redact_url(self.redis),
            "memcached": None if self.memcached is None else redact_url(self.memcached),
            "prefix": self.prefix,
            "namespace": self.namespace,
            "auto_cache_control": self.auto_cache_control,
            "fake": self.fake,
            "models_ttl": self.models_ttl,
            "share_across_client_keys": self.share_across_client_keys,
            "metrics": self.metrics,
            "body_timeout": self.body_timeout,
            "retry": self.retry,
        }
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"ServeConfig({fields})"


def endpoints_of(upstreams: Sequence[str], api_key: str | None = None) -> list[Endpoint]:
    """One ``Endpoint`` per upstream URL, named by its ``host[:port]`` (and its position,
    when two share one); keyless by default: the caller's own ``Authorization`` is sent.
    The name is shown to callers (``X-Limpet-Endpoint``) and in metrics: never more of
    the URL than that."""
    hosts = [host_and_port(url) or url for url in upstreams]
    return [
        Endpoint(host if hosts.count(host) == 1 else f"{host}#{index}", url, api_key=api_key)
        for index, (host, url) in enumerate(zip(hosts, upstreams, strict=True), start=1)
    ]
