"""What Memcached asks of names and times: server URLs, keys and expiry times.

Pure functions, so that the rules are tested on their own: Memcached keys are at most 250
bytes of printable ASCII without spaces, and an expiry above 30 days is a unix timestamp.
"""

from __future__ import annotations

import hashlib
import math

from limpet._urls import has_userinfo, redact_url
from limpet.errors import ConfigurationError

__all__ = [
    "RELATIVE_TTL_LIMIT",
    "check_prefix",
    "memcached_expiry",
    "parse_memcached_url",
    "safe_key",
]

#: Memcached reads an expiry above this many seconds (30 days) as a unix timestamp.
RELATIVE_TTL_LIMIT = 30 * 24 * 3600

_MAX_KEY = 250
_HASHED = "~"


def parse_memcached_url(url: str) -> list[tuple[str, int]]:
    """The servers of ``memcached://host[:port][,host2[:port]...]`` (port 11211 by
    default; ``[v6]:port`` for IPv6).

    Raises:
        ConfigurationError: another scheme, no server, or a bad port.
    """
    scheme, sep, rest = url.partition("://") if isinstance(url, str) else ("", "", "")
    if not sep or scheme.lower() != "memcached":
        raise ConfigurationError("MemcachedCache.url: expected memcached://host:11211[,host:port]")
    if has_userinfo(url):
        raise ConfigurationError(
            "MemcachedCache.url: credentials in the URL (user:password@) are not supported "
            f"(memcached's text protocol has none), got {redact_url(url)!r}"
        )
    servers = []
    for part in rest.rstrip("/").split(","):
        servers.append(_split_host_port(part.strip(), url))
    return servers


def _split_host_port(text: str, url: str) -> tuple[str, int]:
    """``text``'s host and port; an error quotes ``url`` redacted (``redact_url``), since
    a server's text may hold what followed it (``?password=...``)."""
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host or "@" in host or "/" in host:
        raise ConfigurationError(f"MemcachedCache.url: bad server in {redact_url(url)!r}")
    try:
        port = int(port_text) if port_text else 11211
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise ConfigurationError(f"MemcachedCache.url: bad port in {redact_url(url)!r}")
    return host, port


def memcached_expiry(ttl: float, now: float) -> int:
    """The ``exptime`` Memcached needs for ``ttl`` seconds from wall-clock ``now``.

    0 never expires (an infinite TTL); a TTL is rounded up to whole seconds (at least 1,
    since 0 would mean forever); above 30 days it becomes an absolute unix time. A TTL of
    0 or less is the caller's to handle (the key is deleted instead).
    """
    if ttl == math.inf:
        return 0
    seconds = max(math.ceil(ttl), 1)
    if seconds <= RELATIVE_TTL_LIMIT:
        return seconds
    return math.ceil(now) + seconds


def safe_key(prefix: str, kind: str, key: str) -> bytes:
    """The Memcached key for ``key`` of ``kind`` (entry, lease, generation)."""
    full = prefix + kind + key
    if (
        len(full) <= _MAX_KEY
        and not key.startswith(_HASHED)
        and full.isascii()
        and full.isprintable()
        and " " not in full
    ):
        return full.encode()
    return (prefix + kind + _HASHED + hashlib.sha256(key.encode()).hexdigest()).encode()


def check_prefix(prefix: object) -> None:
    if (
        not isinstance(prefix, str)
        or not prefix
        or len(prefix) > 100
        or not prefix.isascii()
        or not prefix.isprintable()
        or " " in prefix
    ):
        raise ConfigurationError(
            "MemcachedCache.prefix: expected 1-100 printable ASCII characters without spaces, "
            f"got {prefix!r}"
        )
