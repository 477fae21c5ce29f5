"""Cache scopes: whose entries a Client may read. Pure.

Two Clients with different API keys sharing one cache must not read each other's
answers: an answer can hold what one tenant's prompt put in it. By default
(``cache_scope="credential"``) a digest of the Client's credentials enters every cache
key and flight key, as gateways scope their caches per key. The digest is keyed (HMAC),
so it is never the API key, nor a plain hash of it; the key itself is never kept.
``cache_scope="namespace"`` shares entries across credentials within a namespace, on
purpose; not a failure that is one credential's own (a 401): flights in a process are
per credential (``Keying.flight_key``), and across processes such a failure is never
published to followers as final (``RedisFlight``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Literal

from limpet._credentials import (
    ANONYMOUS_SCOPE,
    CREDENTIAL_HEADERS,
    CREDENTIAL_SCOPE_LABEL,
    credential_digest,
    header_credentials,
    is_credential_header,
    key_credential,
    key_credentials,
    query_credentials,
)
from limpet.config import Endpoint

__all__ = [
    "ANONYMOUS_SCOPE",
    "CACHE_SCOPES",
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_SCOPE_LABEL",
    "CacheScope",
    "call_scope",
    "credential_scope",
    "generations_scope",
    "is_credential_header",
    "key_scope",
    "tenant_scope",
]

CacheScope = Literal["credential", "namespace"]

#: The values ``Client(cache_scope=...)`` takes.
CACHE_SCOPES: tuple[CacheScope, ...] = ("credential", "namespace")


def credential_scope(endpoints: Iterable[Endpoint]) -> str:
    """The credential scope of a Client with these endpoints: 32 hex digits of
    HMAC-SHA256 under ``CREDENTIAL_SCOPE_LABEL`` over its sorted, distinct credentials
    (each endpoint's ``api_key``, credential headers and its URL's query credentials), or
    ``ANONYMOUS_SCOPE``.

    The same credentials give the same scope in every process, whatever the endpoints'
    order or names.

    Example:
        >>> a = credential_scope([Endpoint("a", "https://x.test/v1", api_key="sk-1")])
        >>> b = credential_scope([Endpoint("b", "https://y.test/v1", api_key="sk-1")])
        >>> a == b, "sk-1" in a, len(a)
        (True, False, 32)
    """
    return credential_digest(_credentials(endpoints))


def generations_scope(endpoints: Iterable[Endpoint]) -> str:
    """The credential scope a Client's own generations are named by (its ``invalidate()``
    bumps them): that of the keys its endpoints send, each read as a call's are
    (``keys_scope``), so that ``limpet flush --cache-scope credential`` with a key reaches
    every Client sending it, whatever header or spelling carries it and whatever else it
    sends (an organisation). Its entries stay apart by ``credential_scope``, which counts
    every credential. ``credential_scope``'s when it sends no key.

    Example:
        >>> written = Endpoint("a", "https://x.test/v1", headers={"X-Api-Key": "sk-1"})
        >>> generations_scope([written]) == key_scope("sk-1") != credential_scope([written])
        True
    """
    endpoints = list(endpoints)
    keys = [key for e in endpoints for key in key_credentials(e.api_key, e.headers or {})]
    return credential_digest(keys) if keys else credential_scope(endpoints)


def key_scope(api_key: str | None) -> str:
    """The credential scope of a Client whose endpoints all send ``api_key`` (and nothing
    else that is a credential): what ``limpet flush --cache-scope credential`` bumps."""
    return credential_digest([key_credential(api_key)] if api_key else [])


def call_scope(scope: str, headers: Mapping[str, str] | None) -> str:
    """The credential scope of one call: the Client's ``scope``, unless the call sends
    credential headers of its own (the OpenAI SDK's ``extra_headers={"Authorization":
    ...}``), which give it a scope of their own: callers with different keys never share
    an entry or a flight. A namespace-scoped Client's ``""`` stays ``""``.

    Example:
        >>> call_scope("c0ffee", None), call_scope("", {"Authorization": "Bearer sk-2"})
        ('c0ffee', '')
        >>> call_scope("c0ffee", {"Authorization": "Bearer sk-2"}) != "c0ffee"
        True
    """
    if not scope or not headers:
        return scope
    own = header_credentials(headers)
    return credential_digest(["client-scope:" + scope, *own]) if own else scope


def _credentials(endpoints: Iterable[Endpoint]) -> Iterable[str]:
    for endpoint in endpoints:
        if endpoint.api_key:
            # As it is sent, so that an Authorization header with the same key agrees.
            yield key_credential(endpoint.api_key)
        yield from header_credentials(endpoint.headers or {})
        yield from query_credentials(endpoint.base_url)  # ?key=...


@functools.lru_cache(maxsize=4096)
def tenant_scope(scope: str, tenant: str) -> str:
    """The credential scope of one call of a ``tenant`` (``complete(tenant=...)``): its
    own, apart from every other tenant's and from calls of none, whatever the credentials
    (``scope``: the call's ``call_scope``), and under ``cache_scope="namespace"`` too: a
    tenant is asked for by the call, not read from what it sends.

    Example:
        >>> tenant_scope("c0ffee", "a") != tenant_scope("c0ffee", "b") != "c0ffee"
        True
        >>> tenant_scope("", "a") != tenant_scope("c0ffee", "a")
        True
    """
    return credential_digest(["tenant:" + tenant, "tenant-of:" + scope])
