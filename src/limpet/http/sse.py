"""Server-sent events, decoded incrementally. Pure: bytes in, each event's data out.

Follows the WHATWG event-stream rules that matter to LLM gateways: lines end in CRLF, LF
or CR; ``:`` starts a comment (OpenRouter's ``: OPENROUTER PROCESSING`` keep-alives);
several ``data:`` lines form one event joined by newlines; a blank line ends an event;
``event:``, ``id:`` and ``retry:`` are ignored.
"""

from __future__ import annotations

__all__ = ["SSEDecoder"]


class SSEDecoder:
    """Feed it bytes as they arrive; it returns the data of every event they complete.

    Example:
        >>> decoder = SSEDecoder()
        >>> decoder.feed(b"data: {\\"a\\"")
        []
        >>> decoder.feed(b": 1}\\n\\ndata: [DONE]\\n\\n")
        ['{"a": 1}', '[DONE]']
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """The data of each event completed by ``chunk``."""
        self._buffer += chunk
        events: list[str] = []
        while True:
            line, found = self._next_line()
            if not found:
                return events
            self._line(line, events)

    def close(self) -> list[str]:
        """At the end of the stream: an event left without its blank line still counts."""
        events: list[str] = []
        if self._buffer:
            line, self._buffer = self._buffer.rstrip(b"\r"), b""
            self._line(line, events)
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
        return events

    def _next_line(self) -> tuple[bytes, bool]:
        buffer = self._buffer
        newline = buffer.find(b"\n")
        carriage = buffer.find(b"\r")
        if carriage == -1 or (newline != -1 and newline < carriage):
            if newline == -1:
                return b"", False
            self._buffer = buffer[newline + 1 :]
            return buffer[:newline], True
        if carriage == len(buffer) - 1:
            return b"", False  # a CR at the end may be the first half of a CRLF
        end = carriage + 2 if buffer[carriage + 1 : carriage + 2] == b"\n" else carriage + 1
        self._buffer = buffer[end:]
        return buffer[:carriage], True

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name == b"data":
            self._data.append(value.removeprefix(b" ").decode("utf-8", errors="replace"))
