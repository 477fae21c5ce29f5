"""Server-sent events, decoded incrementally. Pure: bytes in, each event's data out.

Follows the WHATWG event-stream rules that matter to LLM gateways: lines end in CRLF, LF
or CR; ``:`` starts a comment (OpenRouter's ``: OPENROUTER PROCESSING`` keep-alives);
several ``data:`` lines form one event joined by newlines; a blank line ends an event, and
an event the stream ends inside (before its blank line) is discarded; ``event:``, ``id:``
and ``retry:`` are ignored.

Work is linear in the bytes fed, however an event is split: the bytes not yet ending a
line are scanned once, and one event may hold at most ``max_event_bytes``.
"""

from __future__ import annotations

import re

__all__ = ["MAX_EVENT_BYTES", "EventTooLargeError", "SSEDecoder"]

#: The most bytes one event may take (its data so far and the line still arriving).
#: Far above any legitimate event: the largest are base64 images in one delta (a 4K
#: PNG is some 30 MB of base64); past it the stream fails rather than hold memory
#: without bound.
MAX_EVENT_BYTES = 64 * 1024 * 1024

# A line's end: CRLF, CR or LF, whichever comes first.
_LINE_END = re.compile(rb"\r\n?|\n")


class EventTooLargeError(ValueError):
    """One event of the stream is larger than the decoder's ``max_event_bytes``."""


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the data of every event they complete.

    Args:
        max_event_bytes: the most bytes one event may take; ``feed`` raises
            ``EventTooLargeError`` past it.

    Example:
        >>> decoder = SSEDecoder()
        >>> decoder.feed(b"data: {\\"a\\"")
        []
        >>> decoder.feed(b": 1}\\n\\ndata: [DONE]\\n\\n")
        ['{"a": 1}', '[DONE]']
    """

    __slots__ = ("_buffer", "_data", "_event_bytes", "_limit", "_scanned")

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buffer = bytearray()
        # How far into the buffer no line end was found (a CR at the very end excepted).
        self._scanned = 0
        self._data: list[str] = []
        self._event_bytes = 0  # the bytes of the event's data so far
        self._limit = max_event_bytes

    def feed(self, chunk: bytes) -> list[str]:
        """The data of each event completed by ``chunk``.

        Raises:
            EventTooLargeError: the event being read is past ``max_event_bytes``.
        """
        buffer = self._buffer
        buffer += chunk
        events: list[str] = []
        start = 0  # where the next line starts
        position = self._scanned
        while True:
            end = _LINE_END.search(buffer, position)
            if end is None:
                position = len(buffer)
                break
            if end.group() == b"\r" and end.end() == len(buffer):
                position = end.start()  # a CR at the end may be the first half of a CRLF
                break
            self._line(buffer[start : end.start()], events)
            start = position = end.end()
        del buffer[:start]
        self._scanned = position - start
        self._check(len(buffer))
        return events

    def close(self) -> tuple[list[str], str | None]:
        """At the end of the stream: what its last bytes complete, and what they leave.

        Returns:
            The data of each event the end completes (a CR at the very end ends its
            line), and the data of the event the stream ended inside, or None. That event
            is not dispatched: its blank line never came, so it may be cut anywhere, even
            mid-line, and WHATWG discards it. It is returned only so that a caller can
            still recognise a sentinel (``[DONE]``) that lost its blank line.
        """
        buffer = self._buffer
        events: list[str] = []
        # Never more than one line is left, and a CR could only be its last byte.
        if buffer.endswith(b"\r"):
            self._line(buffer[:-1], events)
        elif buffer:
            self._line(buffer, events)  # an unterminated line: it never ends the event
        unfinished = "\n".join(self._data) if self._data else None
        buffer.clear()
        self._scanned = 0
        self._data = []
        self._event_bytes = 0
        return events, unfinished

    def _line(self, line: bytes | bytearray, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            self._event_bytes = 0
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            data = value.removeprefix(b" ")
            # Each line costs its bytes and the newline joining it: empty lines count too.
            self._event_bytes += len(data) + 1
            self._check(0)
            self._data.append(data.decode("utf-8", errors="replace"))

    def _check(self, arriving: int) -> None:
        """Raise when the event's data so far and the ``arriving`` line are past the cap."""
        if self._event_bytes + arriving > self._limit:
            raise EventTooLargeError(
                f"an event of the stream is over {self._limit} bytes (max_event_bytes)"
            )
