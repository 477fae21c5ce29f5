"""The key stage: a request's cache and flight key, in its generation and cache scope.

The key hashes the canonical request with the Client's namespace, the model's current
generation (``invalidate()`` bumps it; a call sending its own key adds that key's, which
``limpet flush --cache-scope credential`` bumps), the credential scope (the call's own
``Authorization`` header, if it sends one) and what the Client's endpoints add to every
body they are sent (``Endpoint.extra_body``: it is sent, so it can change the answer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from limpet._credentials import ANONYMOUS_SCOPE, keys_scope
from limpet.cache.generations import Generations
from limpet.config import Endpoint
from limpet.pipeline.credentials import call_scope
from limpet.pipeline.key_memo import KeyMemo
from limpet.pipeline.keys import (
    canonical_request,
    key_header,
    looks_large,
    request_key_async,
)


def endpoint_bodies(endpoints: Iterable[Endpoint]) -> str:
    """What the endpoints add to every body sent (their ``extra_body``), as a digest that
    enters every key (32 hex digits, with a tag of its own), or "" when none adds anything
    (keys are then as they were before endpoints' bodies were keyed).

    Endpoints of one Client that add different fields are taken as interchangeable, as
    their routing does: an answer from either is stored under one key.

    Example:
        >>> plain = endpoint_bodies([Endpoint("a", "https://x.test/v1")])
        >>> pinned = Endpoint("a", "https://x.test/v1", extra_body={"provider": {"order": ["x"]}})
        >>> plain, endpoint_bodies([pinned]).startswith("+body:")
        ('', True)
    """
    bodies = sorted(
        {
            orjson.dumps(dict(e.extra_body), option=orjson.OPT_SORT_KEYS)
            for e in endpoints
            if e.extra_body
        }
    )
    if not bodies:
        return ""
    return "+body:" + hashlib.sha256(b"\x00".join(bodies)).hexdigest()[:32]


class Keying:
    """Derives keys for one Client: its namespace, credential scope, endpoints' bodies and
    generations."""

    __slots__ = ("_bodies", "_own", "credential", "generations", "memo", "namespace")

    def __init__(
        self, generations: Generations, namespace: str, credential: str, bodies: str = ""
    ) -> None:
        self.generations = generations
        self.namespace = namespace
        self.credential = credential
        self.memo = KeyMemo()
        self._bodies = bodies  # ``endpoint_bodies``'s
        self._own = credential + bodies  # the key scope of a call without headers of its own

    def now(
        self, body: Mapping[str, Any], headers: Mapping[str, str] | None, text_chars: int = -1
    ) -> str | None:
        """The key when it can be had without I/O or a long block of the event loop: the
        model's generation is known and the request is not large (``text_chars``: the
        messages' text length, when known; see ``looks_large``). Else None.

        ``request_key``'s, found in the memo when the same bytes were keyed lately."""
        scope = self.generations.scope_now(body["model"], self.callers(headers))
        if scope is None or looks_large(body, text_chars):
            return None
        credential = self._own if headers is None else self.scope(headers)
        # ``key_header`` is cached per (namespace, scope, credential) where it is defined.
        data = key_header(self.namespace, scope, credential) + canonical_request(body)
        memo = self.memo
        return memo.get(data) or memo.add(data)

    async def of(self, body: Mapping[str, Any], headers: Mapping[str, str] | None) -> str:
        """The key, reading the model's generation from the shared tier when needed; a
        large request is hashed piece by piece, yielding to the event loop."""
        model, callers, generations = body["model"], self.callers(headers), self.generations
        scope = generations.scope_now(model, callers) or await generations.scope(model, callers)
        credential = self.scope(headers)
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

    def scope(self, headers: Mapping[str, str] | None) -> str:
        """The credential part of the keys of a call sending ``headers``: its credential
        scope, then the endpoints' bodies' digest (a credential scope never holds a "+")."""
        if headers is None:
            return self._own
        return call_scope(self.credential, headers) + self._bodies
