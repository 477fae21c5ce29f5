"""Assembling chunks into a completion, and replaying a stored answer as chunks."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat._completions import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from limpet.cache.base import stored_chunks
from limpet.config import Endpoint
from limpet.errors import APIResponseError, APIStreamError
from limpet.flight.broadcast import Broadcast
from limpet.http.chunk_assembly import StreamAssembler
from limpet.http.chunk_replay import REPLAY_PIECE_CHARS, replay_chunks
from limpet.http.chunks import (
    StreamChunk,
    choices_asked,
    finished_choices,
    stream_error,
    usage_declined,
    with_stream_usage,
    without_usage,
)
from limpet.http.responses import stream_chunk
from tests.openai_shapes import assert_chat_completion, assert_chunks

ENVELOPE = {
    "id": "gen-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "provider": "p",
}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {**ENVELOPE, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


USAGE = {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14, "cost": 0.001}
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


def test_a_never_streamed_answers_tool_calls_replay_numbered_by_their_place() -> None:
    # Some servers write "index": 0 on every call of a plain answer; kept, it merged the
    # calls into one for whatever assembled the replay (limpet, or the openai SDK).
    calls = [
        {
            "index": 0,
            "id": f"call_{name}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for name, arguments in (("f", '{"x":1}'), ("g", '{"y":2}'))
    ]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    body = {
        "id": "gen-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
    }
    replayed = list(replay_chunks(body, None))
    again = assembled(replayed).completion()["choices"][0]["message"]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in again] == [
        ("call_f", '{"x":1}'),
        ("call_g", '{"y":2}'),
    ]
    state = ChatCompletionStreamState()  # the openai SDK's own assembly of a stream
    for replayed_chunk in replayed:
        state.handle_chunk(ChatCompletionChunk.model_validate(replayed_chunk))
    sdk_calls = state.current_completion_snapshot.choices[0].message.tool_calls or []
    assert [c.id for c in sdk_calls] == ["call_f", "call_g"]


def test_chunk_accessors() -> None:
    assert StreamChunk(LIVE[3]).content == "Hel"
    assert StreamChunk(LIVE[0]).content is None  # the empty role chunk has no text
    assert StreamChunk(LIVE[1]).reasoning == "think "
    assert StreamChunk(LIVE[7]).finish_reason == "tool_calls"
    assert StreamChunk(LIVE[8]).delta == {}
    assert (StreamChunk(LIVE[3]).index, StreamChunk(LIVE[8]).index) == (0, None)
    assert StreamChunk(THREE_CHOICES[4]).index == 1


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


# --- every choice, every field -----------------------------------------------------------


def choice_chunk(index: int, delta: dict[str, Any], finish: str | None = None, **more: Any) -> Any:
    return {
        **ENVELOPE,
        "choices": [{"index": index, "delta": delta, "finish_reason": finish, **more}],
    }


def token(text: str) -> dict[str, Any]:
    return {"token": text, "logprob": -0.25, "bytes": list(text.encode()), "top_logprobs": []}


THREE_CHOICES = [
    *(choice_chunk(i, {"role": "assistant", "content": ""}) for i in range(3)),
    *(choice_chunk(i, {"content": f"answer {i}"}) for i in range(3)),
    *(choice_chunk(i, {}, "stop" if i else "length") for i in range(3)),
    {**ENVELOPE, "choices": [], "usage": USAGE},
]


def test_assembly_keeps_every_choice_by_index() -> None:
    body = assembled(THREE_CHOICES).completion()
    assert [c["message"]["content"] for c in body["choices"]] == [f"answer {i}" for i in range(3)]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [c["finish_reason"] for c in body["choices"]] == ["length", "stop", "stop"]
    assert body["usage"] == USAGE
    assert_chat_completion(body)


def test_a_never_streamed_answer_replays_every_choice_interleaved() -> None:
    body = assembled(THREE_CHOICES).completion()
    replayed = list(replay_chunks(body, None))
    assert_chunks(replayed)
    indexes = [c["choices"][0]["index"] for c in replayed if c["choices"]]
    assert indexes[:6] == [0, 1, 2, 0, 1, 2]
    assert replayed[-1]["choices"] == [] and replayed[-1]["usage"] == USAGE
    assert assembled(replayed).completion() == body


RICH = [
    choice_chunk(0, {"role": "assistant", "content": "", "refusal": None}, logprobs=None),
    choice_chunk(
        0,
        {
            "reasoning": "hmm",
            "reasoning_details": [
                {
                    "type": "reasoning.text",
                    "text": "hm",
                    "index": 0,
                    "format": "anthropic-claude-v1",
                }
            ],
        },
    ),
    choice_chunk(0, {"reasoning_details": [{"type": "reasoning.text", "text": "m", "index": 0}]}),
    choice_chunk(0, {"content": "Hi"}, logprobs={"content": [token("Hi")], "refusal": None}),
    choice_chunk(0, {"content": " there"}, logprobs={"content": [token(" there")]}),
    choice_chunk(
        0,
        {
            "annotations": [
                {
                    "type": "url_citation",
                    "url_citation": {
                        "url": "https://example.com",
                        "title": "Ex",
                        "start_index": 0,
                        "end_index": 2,
                    },
                }
            ]
        },
    ),
    choice_chunk(1, {"role": "assistant", "refusal": "I can"}),
    choice_chunk(1, {"refusal": "not."}, logprobs={"content": None, "refusal": [token("no")]}),
    choice_chunk(0, {}, "stop", native_finish_reason="end_turn"),
    choice_chunk(1, {}, "content_filter", native_finish_reason="refusal"),
    {**ENVELOPE, "choices": [], "usage": USAGE},
]


def test_logprobs_refusal_reasoning_details_annotations_and_finish_survive() -> None:
    body = assembled(RICH).completion()
    first, second = body["choices"]
    assert first["logprobs"] == {"content": [token("Hi"), token(" there")], "refusal": None}
    assert first["message"]["reasoning"] == "hmm"
    assert first["message"]["reasoning_details"] == [
        {"type": "reasoning.text", "text": "hmm", "index": 0, "format": "anthropic-claude-v1"}
    ]
    assert first["message"]["annotations"][0]["url_citation"]["url"] == "https://example.com"
    assert (first["finish_reason"], first["native_finish_reason"]) == ("stop", "end_turn")
    assert second["message"] == {"role": "assistant", "content": None, "refusal": "I cannot."}
    assert second["logprobs"] == {"content": None, "refusal": [token("no")]}
    assert second["finish_reason"] == "content_filter"
    assert_chat_completion(body)
    replayed = list(replay_chunks(body, None))
    assert_chunks(replayed)
    assert assembled(replayed).completion() == body


def test_a_synthesized_replay_carries_logprobs_with_their_pieces() -> None:
    text = "x" * (REPLAY_PIECE_CHARS * 3)
    tokens = [token(text[i : i + 8]) for i in range(0, len(text), 8)]
    body = {
        **ENVELOPE,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": {"content": tokens, "refusal": None},
            }
        ],
    }
    pieces = [c for c in replay_chunks(body, None) if c["choices"][0]["delta"].get("content")]
    assert len(pieces) == 3
    assert all(len(c["choices"][0]["logprobs"]["content"]) == 3 for c in pieces)
    assert assembled(list(replay_chunks(body, None))).completion()["choices"] == body["choices"]


def test_a_usage_only_chunk_is_not_a_choice() -> None:
    body = assembled([LIVE[0], LIVE[3], {**ENVELOPE, "choices": [], "usage": USAGE}]).completion()
    assert len(body["choices"]) == 1
    assert body["usage"] == USAGE


def test_usage_is_asked_for_in_what_is_sent_even_when_the_caller_declined() -> None:
    """The answer is stored for every later caller: a caller who declined usage must not
    take it from them (it gets none in its own chunks instead)."""
    body = {"model": "m", "messages": []}
    assert with_stream_usage(body)["stream_options"] == {"include_usage": True}
    assert "stream_options" not in body
    own = {**body, "stream_options": {"include_obfuscation": False}}
    assert with_stream_usage(own)["stream_options"] == {
        "include_obfuscation": False,
        "include_usage": True,
    }
    options = {"include_usage": False, "include_obfuscation": True}
    assert with_stream_usage({**body, "stream_options": options})["stream_options"] == {
        "include_obfuscation": True,
        "include_usage": True,
    }
    assert options["include_usage"] is False  # the caller's own is left as it was


def test_a_caller_who_declined_usage_gets_its_chunks_without_it() -> None:
    assert usage_declined({"stream_options": {"include_usage": False}})
    assert not usage_declined({"stream_options": {"include_usage": True}})
    assert not usage_declined({"stream_options": {}}) and not usage_declined({})
    with_nulls = [{**c, "usage": None} for c in LIVE[:-1]] + [LIVE[-1]]
    shown = [without_usage(c) for c in with_nulls]
    assert shown == [*LIVE[:-1], None]  # no usage field, and no usage-only chunk
    assert with_nulls[0]["usage"] is None  # the shared chunk is left as it was
    assert without_usage(LIVE[3]) is LIVE[3]


def test_an_assembler_that_keeps_no_chunking_still_assembles_the_whole_answer() -> None:
    kept, lean = StreamAssembler(), StreamAssembler(chunking=False)
    for c in LIVE:
        kept.add(c)
        lean.add(c)
    assert lean.chunking() is None and kept.chunking() is not None
    assert lean.completion() == kept.completion()


async def test_a_one_reader_broadcast_holds_only_what_is_unread() -> None:
    broadcast: Broadcast[int, None] = Broadcast(replay=False)
    reader = broadcast.items()
    for item in range(3):
        broadcast.push(item)
    assert await anext(reader) == 0
    assert broadcast.items_so_far == [1, 2]
    assert [await anext(reader), await anext(reader)] == [1, 2]
    assert broadcast.items_so_far == []
    broadcast.finish(None)
    assert [item async for item in reader] == []


# --- the identity, for any valid stream --------------------------------------------------

FINISHES = st.sampled_from(["stop", "length", "tool_calls", "content_filter"])
OPENINGS = [
    {"role": "assistant", "content": ""},
    {"role": "assistant", "content": None},  # OpenAI's, before tool calls
    {"role": "assistant", "content": "", "refusal": None},
]
CITATION = {
    "type": "url_citation",
    "url_citation": {"url": "https://e.com", "title": "E", "start_index": 0, "end_index": 1},
}
PIECE = st.text(max_size=6)


@st.composite
def choice_parts(draw: st.DrawFn, logprobs: bool) -> list[dict[str, Any]]:
    """One choice's parts of a live stream, in order: opening, deltas, finish."""
    opening = draw(st.sampled_from(OPENINGS))
    parts: list[dict[str, Any]] = [{"delta": opening}]
    if logprobs and draw(st.booleans()):  # OpenAI opens with empty logprobs
        parts[0]["logprobs"] = {"content": [], "refusal": None}
    for field, text in draw(
        st.lists(st.tuples(st.sampled_from(["content", "reasoning", "refusal"]), PIECE))
    ):
        part: dict[str, Any] = {"delta": {field: text}}
        if logprobs and field != "reasoning":
            part["logprobs"] = {field: [token(text)]}
        parts.append(part)
    for index, (call_id, name, arguments) in enumerate(
        draw(st.lists(st.tuples(st.text(min_size=1), st.text(), st.lists(PIECE)), max_size=3))
    ):
        first, *rest = arguments or [""]
        function = {"name": name, "arguments": first}
        call = {"index": index, "id": call_id, "type": "function", "function": function}
        parts.append({"delta": {"tool_calls": [call]}})
        parts.extend(
            {"delta": {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}}
            for piece in rest
        )
    for text in draw(st.lists(PIECE, max_size=2)):
        detail = {"type": "reasoning.text", "text": text, "index": 0}
        parts.append({"delta": {"reasoning_details": [detail]}})
    if draw(st.booleans()):
        parts.append({"delta": {"annotations": [CITATION]}})
    parts.append({"delta": {}, "finish_reason": draw(FINISHES), "native_finish_reason": "x"})
    return parts


@st.composite
def live_streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid chunk sequence: n >= 1 choices interleaved in any order, maybe usage."""
    logprobs = draw(st.booleans())
    per_choice = [draw(choice_parts(logprobs)) for _ in range(draw(st.integers(1, 3)))]
    turns = draw(st.permutations([i for i, parts in enumerate(per_choice) for _ in parts]))
    queues = [iter(parts) for parts in per_choice]
    # With include_usage, OpenAI's chunks carry `usage: null` until the last.
    envelope = {**ENVELOPE, "usage": None} if draw(st.booleans()) else ENVELOPE
    chunks = []
    for index in turns:
        part = next(queues[index])
        chunks.append({**envelope, "choices": [{"index": index, "finish_reason": None, **part}]})
    if draw(st.booleans()):
        chunks.append({**ENVELOPE, "choices": [], "usage": USAGE})
    return chunks


@settings(max_examples=100, deadline=None)
@given(live_streams())
def test_assemble_replay_assemble_is_the_identity(chunks: list[dict[str, Any]]) -> None:
    assert_chunks(chunks)
    assembler = assembled(chunks)
    body = assembler.completion()
    assert_chat_completion(body)
    assert list(replay_chunks(body, assembler.chunking())) == chunks
    replayed = list(replay_chunks(body, None))
    assert_chunks(replayed)
    assert assembled(replayed).completion() == body


def test_an_error_in_any_choice_of_a_chunk_is_the_stream_error() -> None:
    chunk = {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": {"content": "fine"}, "finish_reason": None},
            {
                "index": 1,
                "delta": {},
                "finish_reason": "error",
                "error": {"code": 502, "message": "provider went away"},
            },
        ],
    }
    error = stream_error(chunk, "a")
    assert error is not None
    assert (error.status_code, error.endpoint) == (502, "a")
    assert "provider went away" in str(error)
    assert stream_error({**chunk, "choices": chunk["choices"][:1]}) is None


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content"])
def test_a_never_streamed_answer_replays_its_reasoning_before_its_content(field: str) -> None:
    """OpenRouter's ``reasoning`` and DeepSeek's ``reasoning_content`` come first, as a
    reasoning model streams them."""
    body = {
        **ENVELOPE,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The answer is 4.", field: "x" * 60},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
    }
    replayed = list(replay_chunks(body, None))
    fields = [key for c in replayed for key, v in c["choices"][0]["delta"].items() if v]
    assert fields == ["role", field, field, field, "content"]
    assert assembled(replayed).completion()["choices"] == body["choices"]


def test_obfuscation_padding_stays_in_the_chunks_out_of_the_completion() -> None:
    padded = [{**c, "obfuscation": "x" * (i % 5)} for i, c in enumerate(LIVE)]
    assembler = assembled(padded)
    body = assembler.completion()
    assert "obfuscation" not in body
    assert body == assembled(LIVE).completion()
    assert list(replay_chunks(body, assembler.chunking())) == padded


# --- a replay is the live stream, chunk for chunk -----------------------------------------


@st.composite
def varied_envelopes(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid stream whose chunks differ in their envelope: any field absent from some
    chunks, ``system_fingerprint`` on some only (OpenAI's first), padding on any."""
    chunks = []
    for live in draw(live_streams()):
        varied = dict(live)
        for field in ("id", "object", "created", "model", "provider"):
            if draw(st.integers(0, 3)) == 0:
                del varied[field]
        if draw(st.booleans()):
            varied["system_fingerprint"] = draw(st.sampled_from(["fp_1", "fp_2"]))
        if draw(st.booleans()):
            varied["obfuscation"] = draw(st.text(max_size=4))
        chunks.append(varied)
    return chunks


@settings(max_examples=200, deadline=None)
@given(varied_envelopes())
def test_a_kept_chunking_replays_each_chunk_with_exactly_its_own_envelope(
    chunks: list[dict[str, Any]],
) -> None:
    assembler = assembled(chunks)
    body = assembler.completion()
    assert list(replay_chunks(body, assembler.chunking())) == chunks
    assert "obfuscation" not in body


def test_a_fingerprint_on_the_first_chunk_only_is_replayed_on_the_first_only() -> None:
    live = [{**LIVE[0], "system_fingerprint": "fp_1"}, *LIVE[1:]]
    assembler = assembled(live)
    replayed = list(replay_chunks(assembler.completion(), assembler.chunking()))
    assert replayed == live
    assert [("system_fingerprint" in c) for c in replayed] == [True] + [False] * (len(LIVE) - 1)


def test_a_chunking_stored_by_an_earlier_build_replays_as_it_did() -> None:
    """Before, the envelope was the first chunk's and each chunk kept what differed from
    it: such entries still decode, each chunk with the envelope's fields."""
    envelope = {**ENVELOPE, "system_fingerprint": "fp_1"}
    stored = [{"choices": c["choices"]} for c in LIVE[:-1]] + [{"choices": [], "usage": USAGE}]
    chunking = orjson.dumps({"envelope": envelope, "chunks": stored})
    replayed = list(replay_chunks(assembled(LIVE).completion(), chunking))
    assert replayed == [{**c, "system_fingerprint": "fp_1"} for c in LIVE]


# --- a stream is whole only when every choice asked for finished ---------------------------


def test_a_stream_is_whole_when_every_choice_asked_for_has_its_finish() -> None:
    assert assembled(LIVE).unfinished() == []
    assert assembled(THREE_CHOICES).unfinished(3) == []
    assert assembled(RICH).unfinished(2) == []


def test_a_stream_cut_before_a_finish_is_not_whole() -> None:
    no_finish = [c for c in LIVE if StreamChunk(c).finish_reason is None]
    assert assembled(no_finish).unfinished() == [0]
    cut_call = LIVE[:6]  # the tool call's arguments cut off, no finish
    assert assembled(cut_call).unfinished() == [0]
    second_unfinished = [c for c in THREE_CHOICES if c != choice_chunk(1, {}, "stop")]
    assert assembled(second_unfinished).unfinished(3) == [1]


def test_a_choice_asked_for_and_never_streamed_is_unfinished() -> None:
    only_first = [c for c in THREE_CHOICES if StreamChunk(c).index in (0, None)]
    assembler = assembled(only_first)
    assert assembler.unfinished(1) == []
    assert assembler.unfinished(3) == [1, 2]
    assert len(assembler.completion()["choices"]) == 1  # none made up


def test_an_empty_finish_reason_is_no_finish() -> None:
    """Ollama's OpenAI API sends ``finish_reason: ""`` on every chunk before the last."""
    ollama = [
        choice_chunk(0, {"role": "assistant", "content": "Hi"}, ""),
        choice_chunk(0, {"content": " there"}, ""),
    ]
    assert assembled(ollama).unfinished() == [0]
    assert assembled([*ollama, choice_chunk(0, {}, "stop")]).unfinished() == []


def test_no_chunk_is_no_choice_and_none_is_made_up() -> None:
    empty = StreamAssembler()
    assert (empty.chunks, empty.choices, empty.unfinished()) == (0, 0, [0])
    assert empty.completion()["choices"] == []
    usage_only = assembled([{**ENVELOPE, "choices": [], "usage": USAGE}])
    assert (usage_only.choices, usage_only.completion()["choices"]) == (0, [])


def test_the_choices_a_request_asks_for() -> None:
    assert choices_asked({}) == 1
    assert choices_asked({"n": 3}) == 3
    assert choices_asked({"n": None}) == choices_asked({"n": True}) == 1


@pytest.mark.parametrize(
    "data",
    [
        '{"choices": [null]}',
        '{"choices": 5}',
        '{"choices": {"index": 0}}',
        '{"choices": [{"index": "1", "delta": {}}]}',
        '{"choices": [{"index": true, "delta": {}}]}',
        '{"choices": [{"index": 0, "delta": {}}, 3]}',
    ],
)
def test_a_chunk_whose_choices_are_not_objects_with_int_indexes_is_a_malformed_answer(
    data: str,
) -> None:
    """Taken live, such a chunk failed the reader with a raw TypeError, or was stored in a
    chunking that never replays (every later stream of the request a corrupt miss, paid
    upstream again): it is refused where it arrives, as a chunk not an object is."""
    endpoint = Endpoint("a", "http://127.0.0.1:9/v1", api_key="sk-test")
    with pytest.raises(APIResponseError, match="stream chunk"):
        stream_chunk(endpoint, data)


@pytest.mark.parametrize(
    "data",
    [
        '{"choices": []}',
        '{"usage": {"prompt_tokens": 1}}',
        '{"choices": null}',
        '{"choices": [{"delta": {"content": "no index: the first"}}]}',
        '{"choices": [{"index": 1, "delta": {}}, {"index": 0, "delta": {}}]}',
    ],
)
def test_chunks_of_every_live_shape_are_taken_and_replay(data: str) -> None:
    endpoint = Endpoint("a", "http://127.0.0.1:9/v1", api_key="sk-test")
    taken = stream_chunk(endpoint, data)
    assembler = StreamAssembler()
    assembler.add(taken)
    chunking = assembler.chunking()
    assert chunking is not None
    assert stored_chunks(chunking) == [taken]


def test_the_choices_a_chunk_finishes_are_its_asked_ones_with_a_finish_reason() -> None:
    """Replayed chunks are made from stored bodies, whose choice indexes no live check
    saw: an index that is not an int is no finished choice (never a ``TypeError``)."""
    finish = {"delta": {}, "finish_reason": "stop"}
    choices = [{"index": i, **finish} for i in (0, 1, 2, -1, None, "1", True)]
    assert finished_choices({"choices": choices}, 2) == {0, 1}
    ollama = {"index": 0, "delta": {}, "finish_reason": ""}  # no finish
    assert finished_choices({"choices": [ollama]}, 1) == set()
    assert finished_choices({"choices": [{"delta": {}, "finish_reason": "length"}]}, 1) == {0}
    assert finished_choices({"usage": {"prompt_tokens": 1}}, 1) == set()
