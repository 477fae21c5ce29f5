"""``embed()``'s pipeline past the request stage, per input: keys, the in-process tiers
(the hit path), then the embedder (shared tiers, flights, batched requests, store), and
the record of how the call ended."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from limpet.errors import APIError, ClientClosedError
from limpet.models import Embeddings
from limpet.observe.recorder import Recorder
from limpet.pipeline.calls import Call, RunningCalls
from limpet.pipeline.embeddings import Embedder
from limpet.pipeline.keying import Keying
from limpet.pipeline.request import EmbedRequest


class EmbedCalls:
    """Runs ``embed()`` calls for one Client."""

    __slots__ = ("_calls", "_closed", "_keying", "_recorder", "embedder")

    def __init__(
        self,
        *,
        embedder: Embedder,
        keying: Keying,
        calls: RunningCalls,
        recorder: Recorder,
        closed: Callable[[], bool],
    ) -> None:
        self.embedder = embedder
        self._keying = keying
        self._calls = calls
        self._recorder = recorder
        self._closed = closed

    async def run(self, request: EmbedRequest) -> Embeddings:
        """The vectors of ``request``'s inputs, each from the cache when it may be."""
        if self._closed():
            raise ClientClosedError("Client is closed")
        started = time.perf_counter()
        model, texts, embedder = request.model, request.texts, self.embedder
        callers = self._keying.callers(request.headers)
        scope = self._keying.generations.scope_now(model, callers)
        found = None
        keys: list[str] = []
        if scope is not None:
            # The hit path: in-process tiers only, nothing awaited that could yield.
            keys = self._keys(request, scope)
            found = await embedder.lookup_local(keys, request.decision)
            if len(found) == len(set(keys)):
                result = embedder.hits(model, texts, keys, found)
                return self._recorder.embedded(model, result, started)
        call = Call(request.timeout, request.headers)
        try:
            with self._calls.counted():
                if scope is None:
                    generations = self._keying.generations
                    scope = await self._calls.guarded(call, generations.scope(model, callers))
                    keys = self._keys(request, scope)
                work = embedder.embed(request, keys, call, found)
                result = await self._calls.guarded(call, work)
        except APIError as exc:
            self._recorder.embed_failed(model, exc, started)
            raise
        except (asyncio.CancelledError, ClientClosedError) as exc:
            self._recorder.cancelled(model, exc, started)
            raise
        return self._recorder.embedded(model, result, started)

    def _keys(self, request: EmbedRequest, scope: str) -> list[str]:
        keying = self._keying
        request.flight_scope = keying.flight_scope(request.headers)
        return self.embedder.keys(
            request.model,
            request.texts,
            request.keyed,
            namespace=keying.namespace,
            scope=scope,
            credential=keying.scope(request.headers, request.tenant),
        )
