"""The key stage: a request's cache and flight key, in its generation and cache scope.

The key hashes the canonical request with the Client's namespace, the model's current
generation (``invalidate()`` bumps it; a call sending its own key adds that key's, which
``limpet flush --cache-scope credential`` bumps), the credential scope (the call's own
``Authorization`` header, if it sends one), where and how the Client's endpoints send
it (``endpoints_scope``: their URLs, headers and body fields, which can change the answer)
and the call's own headers that can (``headers_scope``). Which headers enter a key, an
endpoint's or a call's, ``is_keyed_header`` says.

A flight key is the cache key, and under ``cache_scope="namespace"`` the call's credential
scope besides (``Keying.flight_key``): entries are shared across credentials, this
process's flights are not, so that no caller is handed another credential's failure (its
401, 402 or 403). Across processes a lease is per entry, and such a failure is never
published as final (``RedisFlight``'s ``shared_credentials``).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from limpet._credentials import ANONYMOUS_SCOPE, is_credential_header, keys_scope, url_scope
from limpet.cache.generations import Generations
from limpet.config import Endpoint
from limpet.pipeline.credentials import call_scope, tenant_scope
from limpet.pipeline.key_memo import KeyMemo
from limpet.pipeline.keys import (
    canonical_request,
    key_header,
    looks_large,
    request_key_async,
)


def endpoints_scope(endpoints: Iterable[Endpoint]) -> str:
    """Where and how the Client's endpoints send a request, as a digest that enters every
    key ("+ep:" and 32 hex digits): each endpoint's base URL (``url_scope``: however it
    is spelled), its headers that enter a key (``is_keyed_header``: not credentials,
    which the credential scope has or shares across, attribution nor tracing), and the
    fields it adds to every body (``extra_body``: sent, so they can change the answer;
    keyed as a request's are). Two Clients on different gateways, or on one with a header
    that changes the output (``anthropic-beta``), never share an answer; a fleet
    configured alike shares them all.

    Endpoints of one Client are taken as interchangeable, as their routing does: an answer
    from either is stored under one key.

    Example:
        >>> a = endpoints_scope([Endpoint("a", "https://x.test/v1")])
        >>> b = endpoints_scope([Endpoint("b", "https://y.test/v1")])
        >>> a.startswith("+ep:"), a == b, a == endpoints_scope([Endpoint("c", "https://x.test/v1/")])
        (True, False, True)
    """
    described = sorted(
        {
            b"%s\x00%s\x00%s"
            % (
                url_scope(e.base_url).encode(),
                orjson.dumps(_by_name((e.headers or {}).items())),
                canonical_request(dict(e.extra_body or {})),
            )
            for e in endpoints
        }
    )
    return "+ep:" + hashlib.sha256(b"\x01".join(described)).hexdigest()[:32]


# OpenRouter's app attribution (``Client(app_url=, app_title=)`` sends them too): who
# asks, never what is answered.
_ATTRIBUTION = frozenset({"http-referer", "x-title"})

#: Headers (lower case) sent with a request that never change its answer and differ from
#: one request to the next: keyed, they would make every call a miss and split every
#: flight. W3C trace context, request correlation, an idempotency key (one per request
#: by definition), the sending library, and OpenRouter's session (the header form of the
#: body's ``session_id``, itself transport-only).
TRANSPORT_ONLY_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "baggage",
        "x-request-id",
        "x-correlation-id",
        "idempotency-key",
        "user-agent",
        "x-session-id",
    }
)

_UNKEYED = _ATTRIBUTION | TRANSPORT_ONLY_HEADERS


def is_keyed_header(name: str) -> bool:
    """Whether a header named ``name`` (any case), sent by an endpoint or by a call
    (``extra_headers``), enters the key as it is sent: every header but credentials (the
    credential scope has them, or shares across them), attribution (``HTTP-Referer``,
    ``X-Title``) and ``TRANSPORT_ONLY_HEADERS``. A header that can change an answer
    (``anthropic-beta``) must, and one not known never to is taken to.

    Example:
        >>> [is_keyed_header(n) for n in ("anthropic-beta", "Authorization", "traceparent")]
        [True, False, False]
    """
    return name.lower() not in _UNKEYED and not is_credential_header(name)


def headers_scope(headers: Mapping[str, str] | None) -> str:
    """A call's own headers that enter its key (``is_keyed_header``), as a digest that
    enters it ("+hd:" and 32 hex digits), whatever the case and order of their names;
    "" when none do, so that a call sending only credentials, attribution or tracing
    headers keys as one sending none.

    Example:
        >>> headers_scope({"traceparent": "00-ab-01", "X-Title": "demo"})
        ''
        >>> beta_flag = "context-1m-2025-08-07"
        >>> beta = headers_scope({"anthropic-beta": beta_flag})
        >>> beta.startswith("+hd:"), beta == headers_scope({"ANTHROPIC-BETA": beta_flag})
        (True, True)
    """
    if not headers:
        return ""
    keyed = tuple((name, value) for name, value in headers.items() if is_keyed_header(name))
    return _headers_digest(keyed) if keyed else ""


@functools.lru_cache(maxsize=1024)
def _headers_digest(keyed: tuple[tuple[str, str], ...]) -> str:
    # Cached, so a call repeating its headers (a hot path's: a beta flag on every call)
    # is not hashed again; filtered first, so no credential is kept here.
    return "+hd:" + hashlib.sha256(orjson.dumps(_by_name(keyed))).hexdigest()[:32]


def _by_name(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``headers`` that enter a key, as (name in lower case, value as sent), sorted."""
    return sorted((name.lower(), value) for name, value in headers if is_keyed_header(name))


class Keying:
    """Derives keys for one Client: its namespace, credential scope, endpoints' scope and
    generations, and each call's own headers' scope.

    Args:
        credential: the credential scope that enters its cache keys ("" under
            ``cache_scope="namespace"``).
        endpoints: ``endpoints_scope``'s.
        flights: the Client's credential scope whatever its cache scope, which enters the
            flight keys of a namespace-scoped Client (``flight_key``); "": none does.
    """

    __slots__ = (
        "_endpoints",
        "_flights",
        "_own",
        "_own_flight",
        "credential",
        "generations",
        "memo",
        "namespace",
    )

    def __init__(
        self,
        generations: Generations,
        namespace: str,
        credential: str,
        endpoints: str = "",
        flights: str = "",
    ) -> None:
        self.generations = generations
        self.namespace = namespace
        self.credential = credential
        self.memo = KeyMemo()
        self._endpoints = endpoints  # ``endpoints_scope``'s
        self._own = credential + endpoints  # the key scope of a call without headers of its own
        # Flight keys hold a credential scope only where cache keys hold none.
        self._flights = "" if credential else flights
        self._own_flight = "@" + flights if self._flights else ""

    def flight_key(self, key: str, headers: Mapping[str, str] | None) -> str:
        """The flight key of a call keyed ``key`` that sends ``headers``: callers of one
        flight share its upstream call, and so its failure as well as its answer.

        A credential-scoped Client's is ``key`` itself: the credential scope is in it
        already (the call's own, ``call_scope``), so every caller of a flight sends the
        same credentials, and its 401 is theirs too. A namespace-scoped Client shares
        entries across credentials, but not this process's flights (``SingleFlight``,
        a stream's, an ``embed()`` input's): ``key`` with the call's credential scope
        (``"@"`` and ``call_scope``'s, never a credential itself). A failure that depends
        on the credential that was sent (401, a key revoked; 402, an account out of
        credits, which names its account; 403) is then never handed to a caller that
        sent another, who alone would have succeeded. The cost: concurrent misses of one
        request under different credentials make one upstream call per credential in a
        process (the first answer stored serves everyone after). Across processes the
        lease stays the entry's: its followers read the answer whoever led, and a
        leader's 401 is not published as final (``RedisFlight``'s
        ``shared_credentials``), so one of them calls with its own.

        Example:
            >>> from limpet.cache.generations import Generations
            >>> shared = Keying(Generations(None), "ns", "", flights="c0ffee")
            >>> shared.flight_key("k", None)
            'k@c0ffee'
            >>> own = shared.flight_key("k", {"Authorization": "Bearer sk-2"})
            >>> own.startswith("k@") and own != "k@c0ffee" and "sk-2" not in own
            True
            >>> Keying(Generations(None), "ns", "c0ffee", flights="c0ffee").flight_key("k", None)
            'k'
        """
        return key + self.flight_scope(headers)

    def flight_scope(self, headers: Mapping[str, str] | None) -> str:
        """What ``flight_key`` adds to the cache key of a call sending ``headers`` ("" for
        a credential-scoped Client): ``embed()`` adds it to each input's key."""
        if not self._flights:
            return ""
        if headers is None:
            return self._own_flight
        return "@" + call_scope(self._flights, headers)

    def now(
        self,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None,
        text_chars: int = -1,
        tenant: str | None = None,
    ) -> str | None:
        """The key when it can be had without I/O or a long block of the event loop: the
        model's generation is known and the request is not large (``text_chars``: the
        messages' text length, when known; see ``looks_large``). Else None.

        ``request_key``'s, found in the memo when the same bytes were keyed lately."""
        scope = self.generations.scope_now(body["model"], self.callers(headers))
        if scope is None or looks_large(body, text_chars):
            return None
        credential = (
            self._own if headers is None and tenant is None else self.scope(headers, tenant)
        )
        # ``key_header`` is cached per (namespace, scope, credential) where it is defined.
        data = key_header(self.namespace, scope, credential) + canonical_request(body)
        memo = self.memo
        return memo.get(data) or memo.add(data)

    async def of(
        self,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None,
        tenant: str | None = None,
    ) -> str:
        """The key, reading the model's generation from the shared tier when needed; a
        large request is hashed piece by piece, yielding to the event loop."""
        model, callers, generations = body["model"], self.callers(headers), self.generations
        scope = generations.scope_now(model, callers) or await generations.scope(model, callers)
        credential = self.scope(headers, tenant)
        return await request_key_async(
            body, namespace=self.namespace, scope=scope, credential=credential
        )

    def callers(self, headers: Mapping[str, str] | None) -> str:
        """The credential scope of the keys a call sends of its own, as ``key_scope``
        names a Client's that sends them (``keys_scope``: its generations enter the
        call's keys, so a flush of that key reaches them, however the call writes it);
        "" when it sends none, or the Client shares entries across credentials
        (``cache_scope="namespace"``)."""
        if headers is None or not self.credential:
            return ""
        scope = keys_scope(headers)
        return "" if scope == ANONYMOUS_SCOPE else scope

    def scope(self, headers: Mapping[str, str] | None, tenant: str | None = None) -> str:
        """The credential part of the keys of a call sending ``headers`` (for ``tenant``,
        when it names one): its credential scope, then the endpoints' scope, then that of
        the headers it sends that can change the answer (``headers_scope``; a credential
        scope never holds a "+"). The same headers key alike, whatever the case and order
        of their names; a call sending none of those keys as one sending none."""
        if headers is None and tenant is None:
            return self._own
        credential = call_scope(self.credential, headers)
        if tenant is not None:
            credential = tenant_scope(credential, tenant)
        return credential + self._endpoints + headers_scope(headers)

    def own_scope(self, headers: Mapping[str, str] | None, tenant: str | None) -> str | None:
        """The key scope of a call that has one of its own (``scope()``'s: a tenant,
        credentials it sends itself or headers that enter its key), or None when it is
        the Client's: what a ``ScopedRouter`` keeps its affinity pins apart by. No digest
        is made for a call with neither headers nor a tenant."""
        if headers is None and tenant is None:
            return None
        scope = self.scope(headers, tenant)
        return None if scope == self._own else scope
