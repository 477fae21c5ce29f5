"""The two wires of the upstream stage: a JSON answer, or a stream of chunks fanned out to
its readers as they arrive."""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from limpet.config import Endpoint
from limpet.flight.broadcast import Broadcast
from limpet.http.chunk_assembly import StreamAssembler
from limpet.http.chunks import choices_asked, choices_sent, with_stream_usage
from limpet.http.responses import malformed_answer
from limpet.http.transport import Transport
from limpet.pipeline.calls import Call

logger = logging.getLogger("limpet")


class JsonExchange:
    """One POST, one JSON answer; any failure may fail over. (Its answer says itself
    whether it is a ``LooseJSON``.)"""

    __slots__ = ("_transport",)

    committed = False
    chunking = None
    loose = False

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
    the answer; it may fail over only until the first chunk is out.

    A stream that ends (``[DONE]``) without any choice is a malformed answer
    (``APIResponseError``). One that ends before each choice asked for has its
    ``finish_reason`` is served to its readers as it came, but is not ``whole``: it must
    never be stored.
    """

    __slots__ = ("_assembler", "_broadcast", "_choices", "_transport", "loose", "received")

    def __init__(
        self,
        transport: Transport,
        broadcast: Broadcast[dict[str, Any], Any],
        assembler: StreamAssembler,
    ) -> None:
        self._transport = transport
        self._broadcast = broadcast
        self._assembler = assembler
        self._choices = 1
        #: Whether a chunk was a ``LooseJSON``: then the answer is served, never stored.
        self.loose = False
        #: Whether the upstream stream was read to its end: all of it is in, paid for.
        self.received = False

    @property
    def committed(self) -> bool:
        return self._assembler.chunks > 0

    @property
    def chunking(self) -> bytes | None:
        return None if self.loose else self._assembler.chunking()

    @property
    def whole(self) -> bool:
        """Whether every choice asked for (``n``) ended with a ``finish_reason``: only a
        whole stream may be stored."""
        return not self._assembler.unfinished(self._choices)

    def prepare(self, sent: dict[str, Any]) -> dict[str, Any]:
        self._choices = choices_asked(sent)
        # Usage is asked for in what is sent, never in the key: OpenAI-style servers send
        # none in a stream otherwise, and the call would be recorded as free.
        return with_stream_usage(sent)

    async def attempt(self, endpoint: Endpoint, body: dict[str, Any], call: Call) -> dict[str, Any]:
        assembler, broadcast = self._assembler, self._broadcast
        # As many choices as are sent for: the endpoint's ``extra_body`` may ask for more.
        self._choices = choices_sent(body, endpoint.extra_body)
        chunks = self._transport.stream(
            endpoint, body, headers=call.headers, deadline=call.deadline
        )
        try:
            async for chunk in chunks:
                if type(chunk) is not dict:  # a LooseJSON: a plain dict from here on,
                    self.loose = True  # copied for each reader as any chunk is
                    chunk = dict(chunk)
                assembler.add(chunk)
                broadcast.push(chunk)
            self.received = True
        finally:
            await chunks.aclose()
        if not assembler.choices:
            raise malformed_answer(
                endpoint,
                f"stream from endpoint {endpoint.name!r} ended ([DONE]) without any choice",
            )
        unfinished = assembler.unfinished(self._choices)
        if unfinished:
            logger.warning(
                "limpet: the stream from endpoint %r ended ([DONE]) before choices %s had a "
                "finish_reason; served as it came, never cached",
                endpoint.name,
                unfinished,
            )
        return assembler.completion()
