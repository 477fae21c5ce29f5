"""Answers the FakeGateway never sends, from an upstream on loopback that answers every
chat request with the body a test sets: usage that mixes dialects or reports only a total,
a ``model`` that is not a string. Each is priced exactly, or has no cost (None), and none
fails the call."""

from __future__ import annotations

import asyncio
import decimal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from limpet import CacheStatus, Client
from limpet.providers.pricing import ModelPrices, PriceTable
from tests.integration.chat import ask
from tests.loopback import served

MODEL = "anthropic/claude-sonnet-4.6"
LISTING = {
    "data": [
        {
            "id": MODEL,
            "pricing": {"prompt": "0.000003", "completion": "0.000015"},
        }
    ]
}


@dataclass
class SetAnswer:
    """Answers every chat request with ``model`` and ``usage`` (no usage when None)."""

    model: object = MODEL
    usage: dict[str, Any] | None = None
    calls: int = 0
    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        self.bodies.append(await request.json())
        answer: dict[str, Any] = {
            "id": f"gen-{self.calls}",
            "object": "chat.completion",
            "created": 1,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A limpet."},
                    "finish_reason": "stop",
                }
            ],
        }
        if self.usage is not None:
            answer["usage"] = self.usage
        return web.json_response(answer)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(LISTING)


@pytest.fixture
async def upstream() -> AsyncIterator[SetAnswer]:
    answers = SetAnswer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", answers.chat)
    app.router.add_get("/v1/models", answers.models)
    async with served(app) as url:
        answers.url = url + "/v1"
        yield answers


@pytest.fixture
async def client(upstream: SetAnswer) -> AsyncIterator[Client]:
    async with Client(base_url=upstream.url, api_key="k", cache=None) as c:
        yield c


async def test_litellms_mixed_usage_is_priced_from_every_count(
    client: Client, upstream: SetAnswer
) -> None:
    # Regression: Anthropic's cache_creation_input_tokens beside prompt_tokens selected
    # Anthropic's reader: no prompt, no completion, a known $0.
    upstream.usage = {
        "prompt_tokens": 2006,
        "completion_tokens": 300,
        "total_tokens": 2306,
        "prompt_tokens_details": {"cached_tokens": 1920},
        "cache_creation_input_tokens": 0,
    }
    answer = await client.complete(**ask(model=MODEL))
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (2006, 300)
    assert answer.usage.cached_tokens == 1920
    assert answer.cost is not None
    # 86 uncached at $3/M, 1,920 read at the family's 0.1 x, 300 out at $15/M.
    assert answer.cost.usd == pytest.approx(0.005334)


@pytest.mark.parametrize(
    "usage",
    [{"total_tokens": 500}, {"prompt_tokens": "1500", "completion_tokens": 10}],
    ids=["total-only", "string-prompt"],
)
async def test_usage_without_a_usable_prompt_count_is_a_cost_unknown(
    client: Client, upstream: SetAnswer, usage: dict[str, Any]
) -> None:
    # Regression: any number made the usage reported, and its zeros were priced at $0.
    upstream.usage = usage
    answer = await client.complete(**ask(model=MODEL))
    assert not answer.usage.reported
    assert answer.cost is None
    assert client.stats.unpriced == 1


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 1e20, "completion_tokens": 5},
        {"prompt_tokens": 10, "completion_tokens": 2e19},
        {"input_tokens": 2**64 - 1, "cache_read_input_tokens": 5, "output_tokens": 1},
    ],
    ids=["float-prompt", "float-completion", "anthropic-u64"],
)
async def test_a_count_no_call_could_have_is_a_cost_unknown_and_the_answer_is_cached(
    upstream: SetAnswer, usage: dict[str, Any]
) -> None:
    # Regression: counts past 2**64 failed the paid call, with the cache on, as the entry
    # was encoded (struct.error), and every caller sharing it.
    upstream.usage = usage
    async with Client(base_url=upstream.url, api_key="k") as cached:
        answers = await asyncio.gather(*(cached.complete(**ask(model=MODEL)) for _ in range(3)))
        again = await cached.complete(**ask(model=MODEL))
        assert cached.stats.unpriced == 4  # each call served, the hit too
    assert [a.usage.reported for a in answers] == [False] * 3
    assert [a.cost for a in answers] == [None] * 3
    assert again.cache is CacheStatus.HIT and again.cost is None
    assert upstream.calls == 1


_WIDE = 10**309  # valid JSON; past float's range, so read by the stdlib's parser


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cost": _WIDE},
        {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": _WIDE},
        {"promptTokenCount": _WIDE, "candidatesTokenCount": 1},
        {"input_tokens": _WIDE, "output_tokens": 1, "cache_read_input_tokens": 0},
    ],
    ids=["cost", "total", "gemini-prompt", "anthropic-input"],
)
async def test_an_int_wider_than_a_float_in_usage_never_fails_the_paid_call(
    upstream: SetAnswer, usage: dict[str, Any]
) -> None:
    # Regression: float() of it raised OverflowError as the answer was priced (or its
    # tokens given back to admission), failing the paid call, counted nowhere. (An answer
    # orjson cannot read, the stdlib's parser reads: served, never stored.)
    upstream.usage = usage
    async with Client(base_url=upstream.url, api_key="k") as cached:
        answers = [await cached.complete(**ask(model=MODEL)) for _ in range(2)]
        assert (cached.stats.errors, cached.stats.misses) == (0, 2)
    assert [a.content for a in answers] == ["A limpet."] * 2


async def test_prices_no_arithmetic_can_use_make_the_cost_unknown_not_the_call_fail(
    upstream: SetAnswer, caplog: pytest.LogCaptureFixture
) -> None:
    class Overflowing(PriceTable):
        async def prices(
            self, model: str, *also: str, wait: float | None = None
        ) -> ModelPrices | None:
            raise decimal.Overflow("a price past any bound")

    upstream.usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    async with Client(base_url=upstream.url, api_key="k", prices=Overflowing(None)) as client:
        answer = await client.complete(**ask(model=MODEL))
        assert client.stats.unpriced == 1
    assert answer.content and answer.cost is None
    assert "could not be priced" in caplog.text


async def test_an_answer_being_priced_when_its_caller_leaves_is_priced_once_it_can_be(
    upstream: SetAnswer,
) -> None:
    # Regression: with no cost reported, a caller cancelled while the first price lookup
    # fetched the listing left its paid answer out of cost_usd, and out of unpriced.
    upstream.usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    comes, asked = asyncio.Event(), asyncio.Event()

    async def listing() -> object:
        asked.set()
        await comes.wait()
        return LISTING

    prices = PriceTable(listing)
    async with Client(base_url=upstream.url, api_key="k", prices=prices) as client:
        call = asyncio.ensure_future(client.complete(**ask(model=MODEL)))
        async with asyncio.timeout(10):  # a hang is a failure, not a wait
            await asked.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (client.stats.cancelled, client.stats.prompt_tokens) == (1, 0)
        comes.set()
        again = await client.complete(**ask(model=MODEL))  # priced once the listing came
        assert again.cost is not None
        assert client.stats.cost_usd == pytest.approx(2 * again.cost.usd)
        assert client.stats.unpriced == 0


@pytest.mark.parametrize("model", [5, ["m"], {"id": "m"}, ""], ids=["int", "list", "dict", "empty"])
async def test_an_answer_whose_model_is_not_a_name_is_priced_by_the_requested_one(
    client: Client, upstream: SetAnswer, model: object
) -> None:
    # Regression: the answer's model went to the price table as it was: an int raised
    # AttributeError, a list or a dict TypeError, out of complete().
    upstream.model = model
    upstream.usage = {"prompt_tokens": 1000, "completion_tokens": 100}
    answer = await client.complete(**ask(model=MODEL))
    assert answer.cost is not None
    assert answer.cost.usd == pytest.approx((1000 * 3 + 100 * 15) / 1e6)
    assert upstream.calls == 1


async def test_an_answer_in_the_providers_own_name_has_its_cache_reads_priced_as_reads(
    client: Client, upstream: SetAnswer
) -> None:
    # Regression: the family whose multipliers price unlisted cache reads was looked up by
    # the answer's name alone; "claude-sonnet-4-6" matches none, so 9,000 cached tokens
    # were billed at the full prompt price.
    upstream.model = "claude-sonnet-4-6"
    upstream.usage = {
        "prompt_tokens": 10000,
        "completion_tokens": 100,
        "prompt_tokens_details": {"cached_tokens": 9000},
    }
    answer = await client.complete(**ask(model=MODEL))
    assert answer.cost is not None
    assert answer.cost.usd == pytest.approx((1000 * 3 + 9000 * 0.3 + 100 * 15) / 1e6)
