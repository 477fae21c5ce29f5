"""Bad input fails with ``InvalidRequestError`` naming the field, before any network call,
on every path: ``complete``, ``stream`` (at call time), ``warm``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel, Field

from limpet import CacheStatus, Client, Endpoint, RedisCache
from limpet.errors import ConfigurationError, InvalidRequestError
from limpet.testing import FakeGateway
from tests.integration.chat import ask


class NotAModel:
    pass


class Limpet(BaseModel):
    name: str
    shell_mm: float


class Rock(BaseModel):
    """Described nested models ($refs with siblings), a recursive one, a map."""

    limpet: Limpet = Field(description="the one on it")
    neighbours: list[Rock] = []
    tide: dict[str, int] = {}


BAD: list[tuple[dict[str, Any], str]] = [
    ({"response_format": NotAModel}, "response_format"),
    ({"response_format": Limpet(name="x", shell_mm=1.0)}, "response_format"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": float("inf")}, "top_p"),
    ({"logit_bias": {"1": float("nan")}}, "logit_bias.1"),
    ({"provider": {"max_price": {"prompt": float("nan")}}}, "provider.max_price.prompt"),
    ({"tools": "oops"}, "tools"),
    ({"tool_choice": 1}, "tool_choice"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": object()}]}]},
        "messages[0].content[0].text",
    ),
    ({"model": None}, "model"),
    ({"model": "lone \udcff"}, "model"),
    ({"messages": None}, "messages"),
    ({"timeout": "5"}, "timeout"),
    ({"timeout": -1}, "timeout"),
    ({"timeout": 1e18}, "timeout"),
    ({"ttl": 1e308}, "ttl"),
    ({"extra_headers": {"X-A": 1}}, "extra_headers"),
    ({"extra_headers": "X-A: 1"}, "extra_headers"),
    ({"extra_headers": {"X-A": "v\r\nX-Injected: 1"}}, "extra_headers"),
    ({"extra_headers": {"X A:": "v"}}, "extra_headers"),
    ({"extra_headers": {"Content-Length": "5"}}, "extra_headers"),
    ({"extra_headers": {"Authorization": "Bearer \udcff"}}, "extra_headers"),
    ({"extra_body": "x"}, "extra_body"),
    ({"extra_body": {"temperature": float("nan")}}, "temperature"),
    ({"extra_query": {"api-version": "2024-10-21"}}, "extra_query"),
]


# What only writing the request finds (the checks on every call leave it to the writer),
# on every path: keyed (temperature 0), sampled (temperature 1) and uncached.
UNWRITABLE: list[tuple[dict[str, Any], str]] = [
    ({"seed": 2**64}, "seed"),
    ({"foo": -(2**70)}, "foo"),
    ({"provider": {"order": [2**64]}}, "provider.order[0]"),
    ({"messages": [{"role": "user", "content": "lone \ud800"}]}, "messages[0].content"),
    ({"user": "\udfff"}, "user"),
    # A dict's key is written as a str is: a lone surrogate in one is named where it is.
    ({"metadata": {"\ud800": "x"}}, "metadata"),
    ({"provider": {"order": [{"\udc00": 1}]}}, "provider.order[0]"),
    ({"messages": [{"role": "user", "content": "hi", "x": {"\udc00": 1}}]}, "messages[0].x"),
    ({"extra_body": {"\ud800": 1}}, "request body"),
]


def request(**override: Any) -> dict[str, Any]:
    """A good request with ``override``; a None override leaves that field out."""
    return {name: value for name, value in ask(**override).items() if value is not None}


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[Client]:
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as c:
        yield c


@pytest.mark.parametrize(("override", "field"), BAD)
async def test_complete_rejects_it_before_any_request(
    client: Client, gateway: FakeGateway, override: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await client.complete(**request(**override))
    assert info.value.field == field
    assert gateway.total_calls == 0


@pytest.mark.parametrize(("override", "field"), BAD)
async def test_stream_rejects_it_when_called_not_when_read(
    client: Client, gateway: FakeGateway, override: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client.stream(**request(**override))
    assert info.value.field == field
    assert gateway.total_calls == 0


@pytest.mark.parametrize("path", [{}, {"temperature": 1}, {"cache": "bypass"}])
@pytest.mark.parametrize(("override", "field"), UNWRITABLE)
async def test_what_json_cannot_carry_is_refused_naming_it_on_every_path(
    client: Client,
    gateway: FakeGateway,
    override: dict[str, Any],
    field: str,
    path: dict[str, Any],
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await client.complete(**request(**override, **path))
    assert info.value.field == field
    assert gateway.total_calls == 0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"user": object()}, "user"),
        ({"user": "lone \ud800"}, "user"),
        ({"input_type": 2**70}, "input_type"),
        ({"extra_query": {"a": "b"}}, "extra_query"),
        ({"extra_body": {"user": 7}}, "user"),
        ({"dimensions": 2**80}, "dimensions"),
        ({"dimensions": 2**32}, "dimensions"),
        ({"extra_body": {"dimensions": 2**40}}, "dimensions"),
        ({"extra_body": {"metadata": {"\ud800": 1}}}, "metadata"),
        ({"extra_body": {"a": [{"b": {"\udfff": 1}}]}}, "a[0].b"),
        ({"extra_body": {"\ud800": 1}}, "request body"),
        # The OpenAI SDK would send these; limpet keys and sends its arguments' own.
        ({"extra_body": {"model": "openai/text-embedding-3-large"}}, "model"),
        ({"extra_body": {"input": ["b"]}}, "input"),
        ({"extra_body": {"encoding_format": "float"}}, "encoding_format"),
        ({"extra_body": {"encoding_format": None}}, "encoding_format"),
    ],
)
async def test_embed_refuses_bad_fields_naming_them_before_any_request(
    client: Client, gateway: FakeGateway, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await client.embed(model="openai/text-embedding-3-small", input=["a"], **fields)
    assert info.value.field == field
    assert gateway.embeddings.calls == 0


async def test_an_embed_calls_arguments_refused_in_extra_body_say_to_pass_them(
    client: Client, gateway: FakeGateway
) -> None:
    with pytest.raises(InvalidRequestError, match=r"pass it as embed\(\)'s model= argument"):
        await client.embed(model="m", input=["a"], extra_body={"model": "other"})
    # What may pass through extra_body still does.
    e = await client.embed(
        model="openai/text-embedding-3-small", input=["a"], extra_body={"input_type": "query"}
    )
    assert len(e.vectors) == 1 and gateway.embeddings.calls == 1
    assert gateway.embeddings.requests[0]["input_type"] == "query"


@pytest.mark.parametrize("model", [" ", "lone \udcff", 7])
async def test_embed_refuses_a_model_that_names_none(
    client: Client, gateway: FakeGateway, model: object
) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await client.embed(model=model, input=["a"])  # type: ignore[arg-type]
    assert info.value.field == "model"
    assert gateway.embeddings.calls == 0


@pytest.mark.redis
async def test_invalidating_a_model_that_names_none_is_refused_before_the_store(
    gateway: FakeGateway, redis_url: str, redis_prefix: str
) -> None:
    # Regression: the name failed to encode in the store's client, which took it for a
    # fault of Redis's: three such calls opened a healthy Redis's breaker.
    cache = RedisCache.from_url(redis_url, prefix=redis_prefix)
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))], cache=cache) as client:
        for model in ["lone \udcff"] * 5 + [" "]:
            with pytest.raises(InvalidRequestError) as info:
                await client.invalidate(model)
            assert info.value.field == "model"
        assert cache.breaker_state == "closed" and client.stats.errors == 0


def test_a_namespace_that_is_not_text_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"Client\.namespace: expected a str of text"):
        Client(base_url="https://gw.example/v1", namespace="tenant \udcff")


@pytest.mark.parametrize("cached", [True, False])
async def test_embed_refuses_an_input_json_cannot_carry_naming_its_index(
    client: Client, gateway: FakeGateway, cached: bool
) -> None:
    model = "openai/text-embedding-3-small"
    if cached:  # the model's generations known: keyed on the hit path
        await client.embed(model=model, input=["warm"])
    with pytest.raises(InvalidRequestError) as info:
        await client.embed(model=model, input=["fine", "lone \ud800 surrogate"])
    assert info.value.field == "input[1]"
    assert gateway.embeddings.calls == (1 if cached else 0)


async def test_warm_counts_each_bad_request_as_failed_naming_the_field(
    client: Client, gateway: FakeGateway
) -> None:
    report = await client.warm([request(**override) for override, _ in BAD])
    assert report.failed == len(BAD)
    for error, (_, field) in zip(report.errors, BAD, strict=True):
        assert error.startswith(f"InvalidRequestError: {field}: expected")
    assert gateway.total_calls == 0


@pytest.mark.parametrize("model", [Limpet, Rock], ids=lambda m: m.__name__)
async def test_a_pydantic_model_class_is_sent_as_a_json_schema_format(
    client: Client, gateway: FakeGateway, model: type[BaseModel]
) -> None:
    from openai.lib._parsing._completions import type_to_response_format_param

    first = await client.complete(**request(response_format=model))
    sent = gateway.endpoint("a").last_request
    assert sent is not None
    assert sent["response_format"] == type_to_response_format_param(model)
    again = await client.complete(**request(response_format=model))
    assert (first.cache, again.cache) == (CacheStatus.MISS, CacheStatus.HIT)
    # The same format spelt out is the same request.
    spelt = await client.complete(**request(response_format=sent["response_format"]))
    assert spelt.cache is CacheStatus.HIT
    assert gateway.total_calls == 1


@pytest.mark.parametrize("field", ["stream", "stream_options"])
async def test_an_endpoint_that_would_stream_every_call_is_refused_when_made(
    gateway: FakeGateway, field: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^Endpoint\.extra_body: {field}: "):
        Endpoint("a", gateway.base_url("a"), extra_body={field: True})
    # Each call says whether it streams: both kinds over one endpoint are answered.
    async with Client(endpoints=[Endpoint("a", gateway.base_url("a"))]) as client:
        done = await client.complete(**request())
        chunks = [chunk async for chunk in client.stream(**request(temperature=1))]
    assert done.content and chunks
    assert gateway.total_calls == 2
