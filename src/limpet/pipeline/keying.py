"""The key stage: a request's cache and flight key, in its generation and cache scope.

The key hashes the canonical request with the Client's namespace, the model's current
generation (``invalidate()`` bumps it) and the credential scope (the call's own
``Authorization`` header, if it sends one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from limpet.cache.generations import Generations
from limpet.pipeline.credentials import call_scope
from limpet.pipeline.key_memo import KeyMemo
from limpet.pipeline.keys import (
    canonical_request,
    key_header,
    looks_large,
    request_key_async,
)


class Keying:
    """Derives keys for one Client: its namespace, credential scope and generations."""

    __slots__ = ("credential", "generations", "memo", "namespace")

    def __init__(self, generations: Generations, namespace: str, credential: str) -> None:
        self.generations = generations
        self.namespace = namespace
        self.credential = credential
        self.memo = KeyMemo()

    def now(
        self, body: Mapping[str, Any], headers: Mapping[str, str] | None, text_chars: int = -1
    ) -> str | None:
        """The key when it can be had without I/O or a long block of the event loop: the
        model's generation is known and the request is not large (``text_chars``: the
        messages' text length, when known; see ``looks_large``). Else None.

        ``request_key``'s, found in the memo when the same bytes were keyed lately."""
        scope = self.generations.scope_now(body["model"])
        if scope is None or looks_large(body, text_chars):
            return None
        credential = self.credential if headers is None else call_scope(self.credential, headers)
        # ``key_header`` is cached per (namespace, scope, credential) where it is defined.
        data = key_header(self.namespace, scope, credential) + canonical_request(body)
        memo = self.memo
        return memo.get(data) or memo.add(data)

    async def of(self, body: Mapping[str, Any], headers: Mapping[str, str] | None) -> str:
        """The key, reading the model's generation from the shared tier when needed; a
        large request is hashed piece by piece, yielding to the event loop."""
        model = body["model"]
        scope = self.generations.scope_now(model) or await self.generations.scope(model)
        credential = self.scope(headers)
        return await request_key_async(
            body, namespace=self.namespace, scope=scope, credential=credential
        )

    def scope(self, headers: Mapping[str, str] | None) -> str:
        """The credential scope of a call sending ``headers``."""
        return self.credential if headers is None else call_scope(self.credential, headers)
