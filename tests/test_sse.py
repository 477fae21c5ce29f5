"""The SSE decoder: every way a gateway frames its events, split anywhere."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.http import sse
from limpet.http.sse import MAX_EVENT_BYTES, EventTooLargeError, SSEDecoder

STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    b'data: {"a": 1}\n\n'
    b": keep-alive\n"
    b"event: message\nid: 7\nretry: 100\n"
    b'data: {"b":\ndata: 2}\n\n'
    b"data: [DONE]\n\n"
)
EVENTS = ['{"a": 1}', '{"b":\n2}', "[DONE]"]


def decode(pieces: list[bytes]) -> list[str]:
    """The events dispatched, the stream's end included; an event it ends inside is not."""
    return decode_to_the_end(pieces)[0]


def decode_to_the_end(pieces: list[bytes]) -> tuple[list[str], str | None]:
    """The events dispatched, and the data of the event the stream ended inside."""
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    last, unfinished = decoder.close()
    return events + last, unfinished


def whatwg_events(data: bytes) -> list[str]:
    """WHATWG's event-stream parsing written plainly, for ``data`` lines: whole lines only
    (a CR at the very end ends its line), a blank line dispatches, and an event the bytes
    end inside is discarded."""
    events: list[str] = []
    lines: list[str] = []
    for line in data.splitlines(keepends=True):
        if not line.endswith((b"\n", b"\r")):
            break  # the last line, never ended
        text = line.rstrip(b"\r\n")
        if not text:
            if lines:
                events.append("\n".join(lines))
            lines = []
        elif text.startswith(b"data:"):
            lines.append(text[5:].removeprefix(b" ").decode())
    return events


def test_comments_fields_multiline_data_and_done() -> None:
    assert decode([STREAM]) == EVENTS


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_endings(newline: bytes) -> None:
    assert decode([STREAM.replace(b"\n", newline)]) == EVENTS


@given(st.lists(st.integers(0, len(STREAM)), max_size=12), st.sampled_from([b"\n", b"\r\n"]))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int], newline: bytes) -> None:
    data = STREAM.replace(b"\n", newline)
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode(pieces) == EVENTS


@pytest.mark.parametrize(
    "tail",
    [b'data: {"last": tr', b'data: {"last": true}', b'data: {"last": true}\n', b"data: [DONE]\r"],
)
def test_an_event_the_stream_ends_inside_is_discarded(tail: bytes) -> None:
    # Regression: it was dispatched, so a body cut mid-event failed as a chunk that is not
    # JSON (not retried) where the same cut at an event boundary was a connection error.
    events, unfinished = decode_to_the_end([b'data: {"a": 1}\n\n' + tail])
    assert events == ['{"a": 1}']
    assert unfinished == tail.removeprefix(b"data: ").rstrip(b"\r\n").decode()


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_an_event_whose_blank_line_is_the_last_byte_counts(newline: bytes) -> None:
    # A CR at the very end cannot wait for an LF any longer: it ends its line.
    data = b"data: [DONE]" + newline + newline[:1]
    assert decode_to_the_end([data]) == (["[DONE]"], None)


def test_a_stream_ending_at_an_event_boundary_leaves_nothing_unfinished() -> None:
    assert decode_to_the_end([STREAM]) == (EVENTS, None)
    assert decode_to_the_end([b": keep-alive\n", b"event: x\n"]) == ([], None)


@given(
    st.integers(0, len(STREAM)),
    st.lists(st.integers(0, len(STREAM)), max_size=8),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
)
def test_a_stream_cut_at_any_byte_dispatches_only_its_whole_events(
    end: int, cuts: list[int], newline: bytes
) -> None:
    data = STREAM.replace(b"\n", newline)
    data = data[: min(end, len(data))]
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    events = decode(pieces)
    assert events == whatwg_events(data)
    assert events == EVENTS[: len(events)]


def test_data_without_a_space_and_utf8_split_mid_character() -> None:
    text = 'data:{"t": "h\u00e9"}\n\n'.encode()
    cut = text.index(b"\xc3") + 1
    assert decode([text[:cut], text[cut:]]) == ['{"t": "h\u00e9"}']


# --- one huge event: linear work, bounded memory -----------------------------------------


class CountingSearch:
    """The decoder's line-end search, counting the bytes each search looks at."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def search(self, buffer: bytearray, position: int) -> re.Match[bytes] | None:
        found = self.pattern.search(buffer, position)
        self.scanned += (found.end() if found else len(buffer)) - position
        return found


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_an_event_split_into_many_pieces_is_scanned_once(
    monkeypatch: pytest.MonkeyPatch, newline: bytes
) -> None:
    counting = CountingSearch(sse._LINE_END)
    monkeypatch.setattr(sse, "_LINE_END", counting)
    payload = b"A" * (1024 * 1024)
    event = b"data: " + payload + newline + newline
    assert decode([event[i : i + 1024] for i in range(0, len(event), 1024)]) == [payload.decode()]
    # Scanning the held bytes again at every piece would look at ~512 MB here.
    assert counting.scanned <= 2 * len(event)


def test_an_event_over_the_cap_is_an_error_not_a_growing_buffer() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    assert decoder.feed(b"data: " + b"a" * 990 + b"\n\n") == ["a" * 990]  # under it: fine
    decoder.feed(b"data: " + b"a" * 900)
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"a" * 200)  # one line still arriving, past the cap


def test_the_cap_counts_every_data_line_of_one_event() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    for _ in range(4):
        assert decoder.feed(b"data: " + b"a" * 200 + b"\n") == []
    with pytest.raises(EventTooLargeError):
        decoder.feed(b"data: " + b"a" * 300 + b"\n")
    fresh = SSEDecoder(max_event_bytes=1000)
    events = [fresh.feed(b"data: " + b"a" * 600 + b"\n\n") for _ in range(5)]
    assert events == [["a" * 600]] * 5  # each event has a cap of its own


@pytest.mark.parametrize("line", [b"data:\n", b"data: a\n", b"data:\r\n"])
def test_empty_and_tiny_data_lines_count_against_the_cap(line: bytes) -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(EventTooLargeError):
        decoder.feed(line * 2000)  # each line holds an entry, and joins with a newline


def test_the_default_cap_holds_a_large_image_delta() -> None:
    image = b"data: " + b"A" * (40 * 1024 * 1024) + b"\n\n"  # a 4K PNG's base64, about
    decoder = SSEDecoder()
    events = [
        e for i in range(0, len(image), 1 << 20) for e in decoder.feed(image[i : i + (1 << 20)])
    ]
    assert len(events) == 1 and len(events[0]) == 40 * 1024 * 1024
    assert MAX_EVENT_BYTES > 40 * 1024 * 1024
