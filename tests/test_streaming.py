"""Assembling chunks into a completion, and replaying a stored answer as chunks."""

from __future__ import annotations

from typing import Any

from limpet.errors import APIStreamError
from limpet.streaming import StreamAssembler, StreamChunk, replay_chunks, stream_error

ENVELOPE = {
    "id": "gen-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "provider": "p",
}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**ENVELOPE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "cost": 0.001}
LIVE = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"reasoning": "think "}),
    chunk({"reasoning": "hard"}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get", "arguments": '{"a"'},
                }
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
    chunk({}, "tool_calls"),
    {**ENVELOPE, "choices": [], "usage": USAGE},
]


def assembled(chunks: list[dict[str, Any]]) -> StreamAssembler:
    assembler = StreamAssembler()
    for c in chunks:
        assembler.add(c)
    return assembler


def test_assembly_joins_content_reasoning_and_tool_call_fragments() -> None:
    body = assembled(LIVE).completion()
    assert body["object"] == "chat.completion"
    assert (body["id"], body["model"], body["provider"]) == ("gen-1", "m", "p")
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello"
    assert message["reasoning"] == "think hard"
    assert message["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}
    ]
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == USAGE


def test_replay_of_a_kept_chunking_is_the_live_stream() -> None:
    assembler = assembled(LIVE)
    assert list(replay_chunks(assembler.completion(), assembler.chunking())) == LIVE


def test_a_never_streamed_answer_replays_as_chunks_that_assemble_back_to_it() -> None:
    body = assembled(LIVE).completion()
    replayed = list(replay_chunks(body, None))
    assert replayed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in replayed)
    again = assembled(replayed).completion()
    assert again["choices"] == body["choices"]
    assert again["usage"] == body["usage"]
    text = "".join(StreamChunk(c).content or "" for c in replayed)
    assert text == "Hello"


def test_chunk_accessors() -> None:
    assert StreamChunk(LIVE[3]).content == "Hel"
    assert StreamChunk(LIVE[0]).content is None  # the empty role chunk has no text
    assert StreamChunk(LIVE[1]).reasoning == "think "
    assert StreamChunk(LIVE[7]).finish_reason == "tool_calls"
    assert StreamChunk(LIVE[8]).delta == {}


def test_openrouter_mid_stream_error_chunk() -> None:
    error_chunk = {
        **ENVELOPE,
        "error": {"code": 502, "message": "provider went away"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    error = stream_error(error_chunk, "a")
    assert isinstance(error, APIStreamError)
    assert error.status_code == 502
    assert "provider went away" in str(error)
    assert stream_error(LIVE[3]) is None
    finished_in_error = chunk({}, "error")
    assert isinstance(stream_error(finished_in_error), APIStreamError)
