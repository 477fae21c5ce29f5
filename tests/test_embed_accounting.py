"""What a call's ``/embeddings`` requests brought back, added up (``pipeline.account``)."""

from __future__ import annotations

from limpet.models import Usage
from limpet.pipeline.account import add_spend, merge_sent
from limpet.pipeline.embed_result import Sent


def test_merging_keeps_what_another_process_sent_apart_from_this_calls_misses() -> None:
    into = Sent(vectors={"a": b"1"}, from_others={"a"})
    add_spend(into, Usage(prompt_tokens=2), 0.5)
    more = Sent(vectors={"b": b"2", "c": b"3"}, from_others={"c"})
    add_spend(more, Usage(prompt_tokens=3), None)
    merge_sent(into, more)
    assert into.vectors == {"a": b"1", "b": b"2", "c": b"3"}
    assert into.from_others == {"a", "c"}  # "c" came from another process: no miss
    assert into.usage is not None and into.usage.prompt_tokens == 5
    assert into.cost is None  # one answer of unknown cost makes the whole unknown


def test_merging_requests_that_answered_nothing_adds_no_spend() -> None:
    into = Sent()
    add_spend(into, Usage(prompt_tokens=2), 0.5)
    merge_sent(into, Sent(failed={"x": ValueError("refused")}))
    assert into.usage is not None and into.usage.prompt_tokens == 2 and into.cost == 0.5
    assert set(into.failed) == {"x"}
