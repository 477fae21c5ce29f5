"""What the fake gateway says: plausible filler text, deterministic where a real model is.

At temperature 0 (or with a ``seed``) the reply is a pure function of the request's
output-affecting fields, so a response cache in front of the gateway can be checked for
serving exactly what the gateway would have said. Otherwise replies are sampled from an
RNG the gateway seeds, so runs are reproducible but calls differ.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from typing import Any

import orjson

from limpet.testing.tokens import CHARS_PER_TOKEN

MIN_REPLY_WORDS = 20
MAX_REPLY_WORDS = 80

_WORDS = """
    a about above across after again against all along also always an and another any
    are around as at away back be because been before being below between both but by
    cache call can change clear client close code common context cost could data day
    does each early easy end enough even every fast few first for from gateway general
    give good great group hand has have help here high hold how idea if important in
    into is it just keep key kind large last later least less light line little long
    look low make many may model more most much must near need never new next no not now
    number of often old on once one only open or order other our out over own part
    people place point prefix present problem prompt quick rather read real request
    right road same say second seem set should show side simple since small so some
    state still such system take than that the their then there these they thing think
    this those though through time to token too turn under until up use very want water
    way well what when where which while who why will with without word work world would
    write year yet you
"""
VOCABULARY: tuple[str, ...] = tuple(_WORDS.split())

#: Fields that change how or to whom a reply is delivered, or where it is cut off, but not
#: the words a model at temperature 0 would produce. ``max_tokens`` is here because a
#: lower limit truncates the same reply rather than writing another one.
_DELIVERY_FIELDS = frozenset(
    {
        "max_completion_tokens",
        "max_tokens",
        "prompt_cache_key",
        "session_id",
        "stream",
        "stream_options",
        "usage",
        "user",
    }
)

_PIECE = re.compile(r"\s*\S+")
_WORDS_PER_PIECE = (1, 2, 3)


def content_seed(body: Mapping[str, Any]) -> int | None:
    """The RNG seed that fixes a request's reply, or None when the request samples.

    A request is deterministic when its ``temperature`` is 0 or it carries a ``seed``, as
    with real models (best effort there, exact here). An absent temperature means the
    provider default, 1, so it samples.
    """
    temperature = body.get("temperature")
    greedy = _is_number(temperature) and temperature == 0
    if not greedy and "seed" not in body:
        return None
    kept = {name: _normalise(value) for name, value in body.items() if name not in _DELIVERY_FIELDS}
    digest = hashlib.blake2b(orjson.dumps(kept, option=orjson.OPT_SORT_KEYS), digest_size=16)
    return int.from_bytes(digest.digest(), "big")


def compose_reply(rng: random.Random) -> str:
    """A reply of ``MIN_REPLY_WORDS`` to ``MAX_REPLY_WORDS`` words in short sentences."""
    remaining = rng.randint(MIN_REPLY_WORDS, MAX_REPLY_WORDS)
    sentences: list[str] = []
    while remaining > 0:
        length = min(remaining, rng.randint(5, 14))
        words = [rng.choice(VOCABULARY) for _ in range(length)]
        sentences.append(" ".join(words).capitalize() + ".")
        remaining -= length
    return " ".join(sentences)


def truncate_to_tokens(text: str, max_tokens: int | None) -> tuple[str, bool]:
    """Cut a reply to ``max_tokens``; returns the text and whether it was cut.

    The cut can fall inside a word, as a real token limit does.
    """
    limit = None if max_tokens is None else max_tokens * CHARS_PER_TOKEN
    if limit is None or len(text) <= limit:
        return text, False
    return text[:limit], True


def stream_pieces(text: str) -> list[str]:
    """Split a reply into stream deltas of one to three words that concatenate back to it."""
    return ["".join(group) for group in token_groups(text)]


def token_groups(text: str) -> list[list[str]]:
    """A reply's tokens (a word with the whitespace before it), grouped one to three to a
    stream delta; every token, concatenated, is the reply."""
    words = _PIECE.findall(text)
    tail = text[sum(map(len, words)) :]
    groups: list[list[str]] = []
    index = 0
    while index < len(words):
        size = _WORDS_PER_PIECE[len(groups) % len(_WORDS_PER_PIECE)]
        groups.append(words[index : index + size])
        index += size
    if tail:
        # Trailing whitespace belongs to no word; keeping it keeps the concatenation exact.
        groups.append([tail])
    return groups


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _normalise(value: object) -> object:
    # temperature=0 and temperature=0.0 are one request to a model, so one reply.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
