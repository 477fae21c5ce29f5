"""Cache scopes: whose entries a Client may read. Pure.

Two Clients with different API keys sharing one cache must not read each other's
answers: an answer can hold what one tenant's prompt put in it. By default
(``cache_scope="credential"``) a digest of the Client's credentials enters every cache
key and flight key, as gateways scope their caches per key. The digest is keyed (HMAC),
so it is never the API key, nor a plain hash of it; the key itself is never kept.
``cache_scope="namespace"`` shares entries across credentials within a namespace, on
purpose.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Literal

import orjson

from limpet.config import Endpoint

__all__ = [
    "ANONYMOUS_SCOPE",
    "CACHE_SCOPES",
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_SCOPE_LABEL",
    "CacheScope",
    "call_scope",
    "credential_scope",
    "is_credential_header",
    "key_scope",
]

CacheScope = Literal["credential", "namespace"]

#: The values ``Client(cache_scope=...)`` takes.
CACHE_SCOPES: tuple[CacheScope, ...] = ("credential", "namespace")

#: The HMAC key a credential digest is derived under. Fixed and public: it separates the
#: digest from any other hash of the same key, so the digest matches nothing else.
CREDENTIAL_SCOPE_LABEL = b"limpet/cache-scope/credential/v1"

#: The scope of a Client that sends no credentials at all.
ANONYMOUS_SCOPE = "anonymous"

#: Headers that carry credentials or choose an account (lower case), besides those whose
#: name says so (``is_credential_header``).
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "openai-organization"}
)

# Parts of a header name that say it carries a credential or chooses an account: the
# gateways' own (``x-portkey-api-key``, ``cf-aig-authorization``, ``helicone-auth``,
# ``x-goog-api-key``, ``openai-project``...). A header wrongly taken for one costs hits (a
# scope of its own), one wrongly not taken would share answers across tenants.
_CREDENTIAL_MARKS = ("auth", "key", "token", "secret", "password", "cookie", "project")
# Names with a mark that are never credentials: one per request would give every call a
# scope of its own.
_NOT_CREDENTIALS = frozenset({"idempotency-key"})


def credential_scope(endpoints: Iterable[Endpoint]) -> str:
    """The credential scope of a Client with these endpoints: 32 hex digits of
    HMAC-SHA256 under ``CREDENTIAL_SCOPE_LABEL`` over its sorted, distinct credentials
    (each endpoint's ``api_key`` and credential headers), or ``ANONYMOUS_SCOPE``.

    The same credentials give the same scope in every process, whatever the endpoints'
    order or names.

    Example:
        >>> a = credential_scope([Endpoint("a", "https://x.test/v1", api_key="sk-1")])
        >>> b = credential_scope([Endpoint("b", "https://y.test/v1", api_key="sk-1")])
        >>> a == b, "sk-1" in a, len(a)
        (True, False, 32)
    """
    return _scope(_credentials(endpoints))


def key_scope(api_key: str | None) -> str:
    """The credential scope of a Client whose endpoints all send ``api_key`` (and nothing
    else that is a credential): what ``limpet flush --cache-scope credential`` bumps."""
    return _scope(["authorization:Bearer " + api_key] if api_key else [])


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
    own = [
        name.lower() + ":" + value
        for name, value in headers.items()
        if value and is_credential_header(name)
    ]
    return _scope(["client-scope:" + scope, *own]) if own else scope


@functools.lru_cache(maxsize=512)
def is_credential_header(name: str) -> bool:
    """Whether a header named ``name`` (any case) carries a credential or chooses an
    account, so that it enters the credential scope.

    Example:
        >>> [is_credential_header(n) for n in ("X-Portkey-Api-Key", "HTTP-Referer", "X-Title")]
        [True, False, False]
    """
    name = name.lower()
    if name in CREDENTIAL_HEADERS:
        return True
    return name not in _NOT_CREDENTIALS and any(mark in name for mark in _CREDENTIAL_MARKS)


def _scope(credentials: Iterable[str]) -> str:
    distinct = sorted(set(credentials))
    if not distinct:
        return ANONYMOUS_SCOPE
    digest = hmac.new(CREDENTIAL_SCOPE_LABEL, orjson.dumps(distinct), hashlib.sha256)
    return digest.hexdigest()[:32]


def _credentials(endpoints: Iterable[Endpoint]) -> Iterable[str]:
    for endpoint in endpoints:
        if endpoint.api_key:
            # As it is sent, so that an Authorization header with the same key agrees.
            yield "authorization:Bearer " + endpoint.api_key
        for name, value in (endpoint.headers or {}).items():
            if value and is_credential_header(name):
                yield name.lower() + ":" + value
