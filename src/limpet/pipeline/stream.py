"""``CompletionStream``: what ``Client.stream()`` returns."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any

from limpet.errors import APIError, ClientClosedError
from limpet.http.chunks import StreamChunk
from limpet.models import CacheStatus, Completion
from limpet.observe.recorder import Recorder
from limpet.pipeline.calls import RunningCalls
from limpet.pipeline.keying import Keying
from limpet.pipeline.keys import looks_large
from limpet.pipeline.owned import owned_body, owned_large_body
from limpet.pipeline.request import Request
from limpet.pipeline.stream_flights import StreamFlights

__all__ = ["CompletionStream"]

logger = logging.getLogger("limpet")


class CompletionStream:
    """The chunks of one streamed completion; ``async for`` it, or ``async with`` it to
    stop early. Nothing is sent until the first chunk is asked for.

    After the last chunk, ``completion`` holds the assembled ``Completion`` with usage,
    cost and cache status, every choice whole. A stream the upstream ended (``[DONE]``)
    before each choice asked for had its ``finish_reason`` is served as it came (those
    choices' ``finish_reason`` is None) and never cached; one that carried no choice at
    all raises ``APIResponseError``. Only what that needs is held while
    streaming: a stream that is neither stored nor shared (``cache="bypass"``, or a
    sampled request) keeps neither its raw chunks nor a replay buffer, only the
    assembled answer.

    Stopping early (``aclose()``, leaving ``async with``, or ``break`` followed by
    ``aclose()``) releases the stream; other callers sharing the same upstream stream are
    not affected. A stream left open between chunks by a reader that has gone (its task
    ended, say after a bare ``break`` or cancelled; or the one now closing the Client) is
    closed by ``Client.aclose()`` at once, counted cancelled, and a reader sharing its
    upstream stream gets the answer as its own. Stopping right after the usage chunk
    (all but ``[DONE]`` read) lets the upstream stream end (for up to a second):
    ``completion`` is then set, and the answer stored.

    Example:
        >>> async with client.stream(model=m, messages=msgs, temperature=0) as stream:
        ...     async for chunk in stream:
        ...         print(chunk.content or "", end="")
        >>> stream.completion.usage
    """

    __slots__ = (
        "__weakref__",
        "_chunks",
        "_closing",
        "_entered",
        "_left",
        "_open",
        "_reader",
        "_shut",
        "_task",
        "cache",
        "coalesced",
        "completion",
    )

    def __init__(
        self,
        open_chunks: Callable[[CompletionStream], AsyncGenerator[dict[str, Any], None]],
    ) -> None:
        self._open = open_chunks
        self._chunks: AsyncGenerator[dict[str, Any], None] | None = None
        self.completion: Completion | None = None
        #: How the stream is served, when that is known from its first chunk: a replay
        #: of a cached or shared answer (``hit``, ``coalesced``...); None for a live
        #: upstream stream, whose status ``completion`` tells at its end.
        self.cache: CacheStatus | None = None
        #: Whether, as the stream stands at its last chunk, this reader is served a live
        #: upstream stream another caller pays for (one another reader started and still
        #: reads, or has claimed; another process's): its answer is ``coalesced`` unless
        #: the reader who started it leaves before the end. ``completion`` says how it
        #: was served in the end.
        self.coalesced = False
        # The task waiting for the next chunk, if any; the last one that asked for one.
        self._reader: asyncio.Task[Any] | None = None
        self._task: asyncio.Task[Any] | None = None
        # Set once the Client closed it: a later read raises ClientClosedError.
        self._shut = False
        # How many cancellations the reader's task had pending as it asked for the chunk.
        self._entered = 0
        # Set by the first aclose(), done once it has closed: from then on the stream ends.
        self._closing: asyncio.Future[None] | None = None
        # Done once the reader that aclose() stopped from another task has let go.
        self._left: asyncio.Future[None] | None = None

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> StreamChunk:
        closing = self._closing
        if closing is not None:  # closed, or being closed by another task: the end
            await asyncio.shield(closing)
            if self._shut:
                raise ClientClosedError("Client closed while streaming")
            raise StopAsyncIteration
        if self._chunks is None:
            self._chunks = self._open(self)
        reader = self._reader = self._task = asyncio.current_task()
        entered = self._entered = 0 if reader is None else reader.cancelling()
        try:
            return StreamChunk(await self._chunks.__anext__())
        except asyncio.CancelledError:
            if self._closing is None or reader is None or reader.uncancel() > entered:
                raise  # cancelled by someone else (too): the reader's own to handle
            raise StopAsyncIteration from None  # stopped by aclose() in another task
        finally:
            self._reader = None
            left = self._left
            if left is not None and not left.done():
                left.set_result(None)

    def _stopping(self) -> bool:
        """Whether the task reading now is being cancelled by ``aclose()`` from another
        task, and by nothing else: its reader stopped, as by ``aclose()`` in its own task,
        not a caller cancelled (for the stream's end, which treats the two apart)."""
        reader = self._reader
        return (
            self._left is not None
            and reader is not None
            and reader is asyncio.current_task()
            and reader.cancelling() == self._entered + 1
        )

    def _gone(self, closer: asyncio.Task[Any] | None = None) -> bool:
        """Whether the reader has gone without closing the stream: it is open between
        chunks, and the task that last asked for one has ended (a bare ``break``, or
        cancelled between chunks), or is ``closer`` (the one closing the Client, so
        reading no more). A task made to await one chunk alone (``asyncio.wait_for`` on
        Python 3.11) says nothing of its reader: never gone."""
        task = self._task
        if task is None or self._reader is not None or self._closing is not None:
            return False
        if task is closer:
            return True
        return task.done() and getattr(task.get_coro(), "cr_code", None) is not _ONE_CHUNK

    async def _shut_down(self) -> None:
        """Close the stream for the Client closing: as ``aclose()``, but a later read
        raises ``ClientClosedError``, as one of a stream cut by the Client does."""
        self._shut = True
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading; idempotent. From another task (a stop button): a reader waiting
        for a chunk ends its ``async for`` there, one between chunks at its next, one not
        started yet before anything is sent; this returns once the stream has let go. A
        reader that had all but ``[DONE]`` lets the upstream stream end first, whichever
        task stops it: ``completion`` is set, and the answer stored and counted."""
        closing = self._closing
        if closing is not None:
            await asyncio.shield(closing)
            return
        loop = asyncio.get_running_loop()
        closing = self._closing = loop.create_future()
        try:
            reader = self._reader
            if reader is not None and reader is not asyncio.current_task():
                left = self._left = loop.create_future()
                reader.cancel()  # its wait for the chunk, turned into the end above
                await asyncio.shield(left)
            if self._chunks is not None:
                await self._chunks.aclose()
        finally:
            closing.set_result(None)

    async def __aenter__(self) -> CompletionStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


# The code of a task that awaits one chunk and nothing else.
_ONE_CHUNK = CompletionStream.__anext__.__code__


class StreamCalls:
    """``stream()``'s pipeline past the request stage: each reader's deadline, the key
    stage, the stream flights, and the record of how it ended; and the streams open now,
    for the Client's ``aclose()`` to close those nobody reads any more (``close_gone``,
    ``close_rest``)."""

    __slots__ = (
        "_calls",
        "_closed",
        "_flights",
        "_keying",
        "_open",
        "_recorder",
        "_shutting",
        "_watched",
    )

    def __init__(
        self,
        *,
        flights: StreamFlights,
        calls: RunningCalls,
        keying: Keying,
        recorder: Recorder,
        closed: Callable[[], bool],
    ) -> None:
        self._flights = flights
        self._calls = calls
        self._keying = keying
        self._recorder = recorder
        self._closed = closed
        # Weakly: a stream its reader dropped is the garbage collector's to close.
        self._open: weakref.WeakSet[CompletionStream] = weakref.WeakSet()
        # While the Client closes: readers' tasks watched for their end, and the streams
        # being closed as they ended.
        self._watched: list[tuple[asyncio.Task[Any], Callable[[asyncio.Task[Any]], None]]] = []
        self._shutting: set[asyncio.Task[None]] = set()

    async def close_gone(self, closer: asyncio.Task[Any] | None) -> None:
        """Close, as cancelled, the open streams whose readers have gone without closing
        them (``CompletionStream._gone``; ``closer`` is the task closing the Client): no
        grace is waited for them, their shared upstream streams' answers pass to the other
        readers. Those whose reader's task is alive are closed when it ends, until
        ``close_rest()``."""
        await _shut_all(s for s in list(self._open) if s._gone(closer))
        loop = asyncio.get_running_loop()
        for stream in list(self._open):
            task = stream._task
            if task is None or task.done():
                continue

            def ended(_: asyncio.Task[Any], stream: CompletionStream = stream) -> None:
                if stream in self._open and stream._gone():
                    shutting = loop.create_task(stream._shut_down())
                    self._shutting.add(shutting)
                    shutting.add_done_callback(self._shutting.discard)

            task.add_done_callback(ended)
            self._watched.append((task, ended))

    async def close_rest(self) -> None:
        """Close every stream still open between chunks (the Client's grace is over): a
        later read raises ``ClientClosedError``. Those waiting for a chunk are the
        running calls' to stop."""
        for task, ended in self._watched:
            task.remove_done_callback(ended)
        self._watched.clear()
        if self._shutting:
            await asyncio.wait(list(self._shutting))
        rest = [s for s in list(self._open) if s._reader is None and s._closing is None]
        await _shut_all(rest)

    def open(self, request: Request) -> CompletionStream:
        """The stream of ``request``: nothing is sent until its first chunk is asked for."""
        return CompletionStream(partial(self._chunks, request))

    async def _chunks(
        self, request: Request, sink: CompletionStream
    ) -> AsyncGenerator[dict[str, Any], None]:
        if self._closed():
            raise ClientClosedError("Client is closed")
        started = time.perf_counter()
        call = request.start()
        calls = self._calls
        self._open.add(sink)
        try:
            with calls.counted():
                try:
                    # The request as it is now, a copy of limpet's own: what is keyed is sent.
                    if looks_large(request.body, request.text_chars):
                        body = owned_large_body(request.body)
                        request.body = await calls.guarded(call, body)
                    else:
                        request.body = owned_body(request.body)
                    if self._flights.keyed(request):
                        key = self._keying.of(request.body, request.headers, request.tenant)
                        request.key = await calls.guarded(call, key)
                        request.flight_key = self._keying.flight_key(request.key, request.headers)
                    call.waiting_for = "the next chunk"
                    streamed = self._flights.chunks(request, sink, call)
                    try:
                        # Each wait for a chunk under the deadline, never the caller's own
                        # work between chunks.
                        while True:
                            try:
                                chunk = await calls.guarded(call, anext(streamed))
                            except StopAsyncIteration:
                                break
                            yield chunk
                    finally:
                        await streamed.aclose()
                except APIError as exc:
                    self._recorder.failed(request.model, exc, started, stream=True)
                    raise
                except (asyncio.CancelledError, GeneratorExit, ClientClosedError) as exc:
                    # Cancelled, or closed by its reader: before its end, or once it was whole.
                    if sink.completion is None:
                        self._recorder.cancelled(request.model, exc, started, stream=True)
                    else:
                        self._recorder.finished(
                            request.model, sink.completion, started, stream=True
                        )
                    raise
            if sink.completion is not None:
                self._recorder.finished(request.model, sink.completion, started, stream=True)
        finally:
            self._open.discard(sink)


async def _shut_all(streams: Iterable[CompletionStream]) -> None:
    """Close ``streams`` for the Client closing; one that fails to close is logged, and
    never stops the Client from closing the rest of what it owns."""
    results = await asyncio.gather(*(s._shut_down() for s in streams), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            logger.warning("limpet: a stream failed to close", exc_info=result)
