"""Which request headers carry credentials, and digests of credentials. Pure.

One home for both: the cache's credential scopes (``limpet.pipeline.credentials``) and an
endpoint's view of a call that brings credentials of its own (``Endpoint.with_headers``,
whose admission and routing health are then the caller's, not the endpoint's) ask the
same question of a header, and must answer it alike.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

__all__ = [
    "ANONYMOUS_SCOPE",
    "CREDENTIAL_HEADERS",
    "CREDENTIAL_SCOPE_LABEL",
    "KEY_HEADERS",
    "credential_digest",
    "header_credentials",
    "is_credential_header",
    "key_credential",
    "key_credentials",
    "keys_scope",
    "query_credentials",
    "sent_keys",
    "url_scope",
]

#: Headers that carry credentials or choose an account (lower case), besides those whose
#: name says so (``is_credential_header``).
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "openai-organization"}
)

#: Headers that carry the key a provider admits and bills a request by (lower case; see
#: ``Endpoint.callers_key``). Narrower than ``is_credential_header`` on purpose: a header
#: that merely chooses a project beside the endpoint's key, a per-request gateway header
#: whose name has "key" in it, or a proxy's own ``Proxy-Authorization``, is no key the
#: provider bills.
KEY_HEADERS = frozenset({"authorization", "x-api-key", "api-key"})

#: The HMAC key a credential digest is derived under. Fixed and public: it separates the
#: digest from any other hash of the same key, so the digest matches nothing else.
CREDENTIAL_SCOPE_LABEL = b"limpet/cache-scope/credential/v1"

#: The digest of no credentials at all.
ANONYMOUS_SCOPE = "anonymous"

# Parts of a header name that say it carries a credential or chooses an account: the
# gateways' own (``x-portkey-api-key``, ``cf-aig-authorization``, ``helicone-auth``,
# ``x-goog-api-key``, ``openai-project``...). A header wrongly taken for one costs hits (a
# scope of its own), one wrongly not taken would share answers across tenants.
_CREDENTIAL_MARKS = ("auth", "key", "token", "secret", "password", "cookie", "project")
# Names with a mark that are never credentials: one per request would give every call a
# scope of its own.
_NOT_CREDENTIALS = frozenset({"idempotency-key"})


@functools.lru_cache(maxsize=512)
def is_credential_header(name: str) -> bool:
    """Whether a header named ``name`` (any case) carries a credential or chooses an
    account.

    Example:
        >>> [is_credential_header(n) for n in ("X-Portkey-Api-Key", "HTTP-Referer", "X-Title")]
        [True, False, False]
    """
    name = name.lower()
    if name in CREDENTIAL_HEADERS:
        return True
    return name not in _NOT_CREDENTIALS and any(mark in name for mark in _CREDENTIAL_MARKS)


def header_credentials(headers: Mapping[str, str]) -> list[str]:
    """The credentials among ``headers``, each as ``"name:value"`` (the name in lower
    case); empty values are none.

    Example:
        >>> header_credentials({"Authorization": "Bearer sk-1", "X-Title": "demo"})
        ['authorization:Bearer sk-1']
    """
    return [
        name.lower() + ":" + value
        for name, value in headers.items()
        if value and is_credential_header(name)
    ]


def sent_keys(
    api_key: str | None, headers: Mapping[str, str], names: frozenset[str]
) -> dict[str, str]:
    """The keys a request sends, by lower-case header name: ``Authorization: Bearer`` with
    ``api_key``, then each of ``headers`` named in ``names`` (they win, as on the wire).
    An authorization's scheme is compared in lower case, its blanks collapsed (RFC 9110).

    Example:
        >>> sent_keys("sk-1", {"Authorization": "bearer  sk-1", "X-Title": "t"}, KEY_HEADERS)
        {'authorization': 'bearer sk-1'}
    """
    found = {"authorization": "bearer " + api_key} if api_key else {}
    for name, value in headers.items():
        lower = name.lower()
        if lower not in names:
            continue
        if not value:
            found.pop(lower, None)
        elif lower == "authorization":
            scheme, _, credentials = value.strip().partition(" ")
            found[lower] = scheme.lower() + " " + " ".join(credentials.split())
        else:
            found[lower] = value
    return found


def key_credential(key: str) -> str:
    """An API key as a credential (``"authorization:Bearer " + key``), as the Client that
    sends it as its ``api_key`` holds it, whatever header a call sends it in."""
    return "authorization:Bearer " + key


def keys_scope(headers: Mapping[str, str]) -> str:
    """The credential scope of the keys ``headers`` send (``KEY_HEADERS``), each as
    ``key_credential`` has it, a bearer scheme in any case and blanks collapsed; other
    credential headers (an organisation, a project) are no key. What a Client sending
    those keys as its own would have: so ``limpet flush --cache-scope credential`` with a
    key reaches the calls that send it, however they write it. ``ANONYMOUS_SCOPE`` when
    they send none.

    Example:
        >>> keys_scope({"Authorization": "bearer  sk-1", "OpenAI-Project": "p"}) == (
        ...     credential_digest([key_credential("sk-1")]))
        True
    """
    return credential_digest(key_credentials(None, headers))


def key_credentials(api_key: str | None, headers: Mapping[str, str]) -> list[str]:
    """The keys a request with ``api_key`` and ``headers`` sends (``sent_keys``), each as
    ``key_credential`` has it: what ``keys_scope`` digests."""
    keys = []
    for name, value in sent_keys(api_key, headers, KEY_HEADERS).items():
        if name != "authorization":
            keys.append(key_credential(value))
            continue
        scheme, _, key = value.partition(" ")
        keys.append(key_credential(key) if scheme == "bearer" else "authorization:" + value)
    return keys


def credential_digest(credentials: Iterable[str]) -> str:
    """32 hex digits of HMAC-SHA256 under ``CREDENTIAL_SCOPE_LABEL`` over the sorted,
    distinct ``credentials``, or ``ANONYMOUS_SCOPE`` for none: never a credential, nor a
    plain hash of one, whatever their order.

    Example:
        >>> a = credential_digest(["authorization:Bearer sk-1", "x-api-key:k"])
        >>> a == credential_digest(["x-api-key:k", "authorization:Bearer sk-1"]), len(a)
        (True, 32)
        >>> credential_digest([])
        'anonymous'
    """
    distinct = sorted(set(credentials))
    if not distinct:
        return ANONYMOUS_SCOPE
    digest = hmac.new(CREDENTIAL_SCOPE_LABEL, orjson.dumps(distinct), hashlib.sha256)
    return digest.hexdigest()[:32]


def query_credentials(url: str) -> list[str]:
    """The credentials in ``url``'s query (``?key=...``), each as ``"query:name=value"``,
    by the names ``is_credential_header`` takes for credentials.

    Example:
        >>> query_credentials("https://gw.example/v1?api-version=2&key=AIza-1")
        ['query:key=AIza-1']
    """
    return [
        f"query:{name}={value}"
        for name, value in _query_pairs(url)
        if value and is_credential_header(name)
    ]


# The ports a URL without one is sent to: one written out is the same place.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_scope(url: str) -> str:
    """Where ``url`` sends a request, as every spelling of it has it: scheme and host in
    lower case, a default port dropped, the path without trailing slashes, the query's
    parameters by name and encoded alike (what upstream reads of them, however written),
    its credentials out (the credential scope has them, or shares across them).

    Example:
        >>> url_scope("HTTPS://GW.example:443/v1/?api-version=2&key=AIza-1")
        'https://gw.example/v1?api-version=2&key=***'
        >>> url_scope("https://gw.example/v1?deployment=a%26region%3Deu")
        'https://gw.example/v1?deployment=a%26region%3Deu'
    """
    parts = urlsplit(url)
    scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if port is not None and _DEFAULT_PORTS.get(scheme) != port:
        host += f":{port}"
    # Encoded again, so that a "&" or "=" within a name or value stays within it.
    query = urlencode(
        [
            (name, "***" if is_credential_header(name) else value)
            for name, value in _query_pairs(url)
        ],
        safe="*",
    )
    return f"{scheme}://{host}{parts.path.rstrip('/')}" + (f"?{query}" if query else "")


def _query_pairs(url: str) -> list[tuple[str, str]]:
    """The query's pairs, decoded, by name (so an order of names or an encoding of them
    is one query); a name's values keep the order they are sent in, which can count
    (the last ``api-version`` wins, say).

    Example:
        >>> _query_pairs("https://gw.example/v1?b=1&a=3&a=2")
        [('a', '3'), ('a', '2'), ('b', '1')]
    """
    pairs = parse_qsl(url.partition("?")[2].partition("#")[0], keep_blank_values=True)
    return sorted(pairs, key=lambda pair: pair[0])  # stable: a name's values keep their order
