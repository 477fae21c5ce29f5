"""What a call's ``/embeddings`` requests brought back, added up (``pipeline.account``),
and what the call spent and saved (``pipeline.embed_result``)."""

from __future__ import annotations

import pytest

from limpet.models import Usage
from limpet.observe.stats import Stats
from limpet.pipeline.account import add_spend, merge_sent
from limpet.pipeline.embed_result import Sent, embeddings_result
from limpet.pipeline.vectors import Vector, pack_floats


def test_merging_keeps_what_another_process_sent_apart_from_this_calls_misses() -> None:
    a, b, c = (Vector(pack_floats([n]), 0.1) for n in (1.0, 2.0, 3.0))
    into = Sent(vectors={"a": a}, from_others={"a"})
    add_spend(into, Usage(prompt_tokens=2), 0.5)
    more = Sent(vectors={"b": b, "c": c}, from_others={"c"})
    add_spend(more, Usage(prompt_tokens=3), None)
    merge_sent(into, more)
    assert into.vectors == {"a": a, "b": b, "c": c}
    assert into.from_others == {"a", "c"}  # "c" came from another process: no miss
    assert into.usage is not None and into.usage.prompt_tokens == 5
    assert into.cost is None  # one answer of unknown cost makes the whole unknown


def test_merging_requests_that_answered_nothing_adds_no_spend() -> None:
    into = Sent()
    add_spend(into, Usage(prompt_tokens=2), 0.5)
    merge_sent(into, Sent(failed={"x": ValueError("refused")}))
    assert into.usage is not None and into.usage.prompt_tokens == 2 and into.cost == 0.5
    assert set(into.failed) == {"x"}


def vector(cost: float | None) -> Vector:
    return Vector(pack_floats([1.0]), cost)


def test_a_call_saved_what_its_hits_and_repeats_cost_and_spent_what_it_sent() -> None:
    """ "h" a hit, "m" this call's miss (given twice: the repeat saved its cost), "o" sent
    by another process: what each vector cost is saved, but the miss's first time."""
    stats = Stats()
    sent = Sent(vectors={"m": vector(0.2), "o": vector(0.4)}, from_others={"o"}, cost=0.2)
    keys = ["h", "m", "m", "o"]
    result = embeddings_result(stats, "e", [""] * 4, keys, {"h": vector(0.1)}, sent, {}, 2)
    assert (result.hits, result.misses, result.coalesced) == (1, 1, 2)
    assert result.cost is not None and result.cost.usd == 0.2
    assert result.cost.saved_usd == pytest.approx(0.1 + 0.2 + 0.4)
    assert stats.saved_usd == pytest.approx(0.7) and stats.unpriced == 0


@pytest.mark.parametrize(("spent", "share"), [(None, 0.1), (0.2, None)])
def test_a_call_with_any_unknown_cost_is_unpriced_never_a_saving_of_zero(
    spent: float | None, share: float | None
) -> None:
    stats = Stats()
    sent = Sent(vectors={"m": vector(0.2)}, cost=spent)
    result = embeddings_result(stats, "e", ["", ""], ["h", "m"], {"h": vector(share)}, sent, {}, 1)
    assert result.cost is None
    assert stats.saved_usd == 0.0 and stats.unpriced == 1
