"""The two wires of the upstream stage: a JSON answer, or a stream of chunks fanned out to
its readers as they arrive."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from limpet.config import Endpoint
from limpet.flight.broadcast import Broadcast
from limpet.http.chunk_assembly import StreamAssembler
from limpet.http.chunks import with_stream_usage
from limpet.http.transport import Transport
from limpet.pipeline.calls import Call


class JsonExchange:
    """One POST, one JSON answer; any failure may fail over."""

    __slots__ = ("_transport",)

    committed = False
    chunking = None

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def prepare(self, sent: dict[str, Any]) -> dict[str, Any]:
        return sent

    def attempt(
        self, endpoint: Endpoint, body: dict[str, Any], call: Call
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        # The transport's own coroutine, not one around it: the upstream stage awaits it
        # directly.
        return self._transport.chat(
            endpoint, body, headers=call.headers, deadline=call.deadline, waiting=call
        )


class StreamExchange:
    """A stream whose chunks are pushed to ``broadcast`` as they come and assembled into
    the answer; it may fail over only until the first chunk is out."""

    __slots__ = ("_assembler", "_broadcast", "_transport")

    def __init__(
        self,
        transport: Transport,
        broadcast: Broadcast[dict[str, Any], Any],
        assembler: StreamAssembler,
    ) -> None:
        self._transport = transport
        self._broadcast = broadcast
        self._assembler = assembler

    @property
    def committed(self) -> bool:
        return self._assembler.chunks > 0

    @property
    def chunking(self) -> bytes | None:
        return self._assembler.chunking()

    def prepare(self, sent: dict[str, Any]) -> dict[str, Any]:
        # Usage is asked for in what is sent, never in the key: OpenAI-style servers send
        # none in a stream otherwise, and the call would be recorded as free.
        return with_stream_usage(sent)

    async def attempt(self, endpoint: Endpoint, body: dict[str, Any], call: Call) -> dict[str, Any]:
        assembler, broadcast = self._assembler, self._broadcast
        chunks = self._transport.stream(
            endpoint, body, headers=call.headers, deadline=call.deadline
        )
        try:
            async for chunk in chunks:
                assembler.add(chunk)
                broadcast.push(chunk)
        finally:
            await chunks.aclose()
        return assembler.completion()
