"""The SSE decoder: every way a gateway frames its events, split anywhere."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.http.sse import SSEDecoder

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
    decoder = SSEDecoder()
    events = [event for piece in pieces for event in decoder.feed(piece)]
    return events + decoder.close()


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


def test_an_event_without_its_blank_line_still_counts_at_the_end() -> None:
    assert decode([b'data: {"last": true}']) == ['{"last": true}']


def test_data_without_a_space_and_utf8_split_mid_character() -> None:
    text = 'data:{"t": "h\u00e9"}\n\n'.encode()
    cut = text.index(b"\xc3") + 1
    assert decode([text[:cut], text[cut:]]) == ['{"t": "h\u00e9"}']
