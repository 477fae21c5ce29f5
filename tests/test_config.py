"""Every config value passes one number check: a bool is never a number, NaN and the
infinities are never finite, and the error names the field and what it expected. Text
values (names, URLs, choices, flags) have one check each, in ``limpet._checks``."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet import (
    AdmissionConfig,
    CacheControlConfig,
    CachePolicy,
    Client,
    Endpoint,
    FlightConfig,
    MemcachedCache,
    MemoryCache,
    PriceTable,
    RedisCache,
    RetryConfig,
    TieredCache,
    Timeouts,
)
from limpet.cache.breaker import CircuitBreaker
from limpet.config import RoutingConfig, check_number
from limpet.errors import ConfigurationError
from limpet.gemini import CachedContents, HTTPReply
from limpet.serve import ServeConfig

URL = "https://gw.test/v1"


async def _never_called(
    method: str,
    url: str,
    *,
    json: Mapping[str, Any] | None = None,
    params: Mapping[str, str] | None = None,
) -> HTTPReply:
    raise AssertionError("a refused config sends nothing")


BAD_NUMBERS = [True, False, math.nan, math.inf, -math.inf, -1, "1", None]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda v: RetryConfig(max_attempts=v), "RetryConfig.max_attempts"),
        (lambda v: RetryConfig(initial_backoff=v), "RetryConfig.initial_backoff"),
        (lambda v: Timeouts(total=v), "Timeouts.total"),
        (lambda v: Timeouts(max_connections=v), "Timeouts.max_connections"),
        (lambda v: CachePolicy(max_temperature=v), "CachePolicy.max_temperature"),
        (lambda v: FlightConfig(lease=v), "FlightConfig.lease"),
        (lambda v: RoutingConfig(cooldown=v), "RoutingConfig.cooldown"),
        (lambda v: RoutingConfig(load_floor=v), "RoutingConfig.load_floor"),
        (lambda v: AdmissionConfig(repin_pause=v), "AdmissionConfig.repin_pause"),
        (lambda v: Endpoint("a", "http://x", weight=v), "Endpoint.weight"),
        (
            lambda v: Endpoint("a", "http://x", embedding_batch_size=v),
            "Endpoint.embedding_batch_size",
        ),
        (lambda v: PriceTable(retry_after=v), "PriceTable.retry_after"),
        (
            lambda v: CacheControlConfig(chars_per_token=v),
            "CacheControlConfig.chars_per_token",
        ),
    ],
)
@pytest.mark.parametrize("value", BAD_NUMBERS, ids=repr)
def test_every_number_is_checked_the_same_way(
    build: Callable[[object], object], field: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=f"^{field}: expected "):
        build(value)


def test_the_bounds_and_what_passes() -> None:
    check_number("x", 0)  # >= 0 by default
    check_number("x", 0.5, above=0)
    check_number("x", 3, integer=True)
    check_number("x", None, integer=True, optional=True)
    with pytest.raises(ConfigurationError, match="expected a finite number > 0, got 0"):
        check_number("x", 0, above=0)
    with pytest.raises(ConfigurationError, match=r"expected an int >= 1, got 2\.0"):
        check_number("x", 2.0, integer=True)
    with pytest.raises(ConfigurationError, match="expected an int >= 1, got 0"):
        check_number("x", 0, integer=True)
    with pytest.raises(ConfigurationError, match=r"^Endpoint.rpm: expected an int >= 1 or None"):
        Endpoint("a", "http://x", rpm=0)
    budget = r"^Endpoint.embedding_batch_tokens: expected an int >= 1 or None, got 0\.5"
    with pytest.raises(ConfigurationError, match=budget):
        Endpoint("a", "http://x", embedding_batch_tokens=0.5)  # type: ignore[arg-type]
    assert Endpoint("a", "http://x", embedding_batch_tokens=None).embedding_batch_tokens is None


@pytest.mark.parametrize(
    ("build", "complaint"),
    [
        (lambda: Endpoint("", "http://x"), "Endpoint.name: expected a non-empty str, got ''"),
        # A lone surrogate: never cached (the name fails to encode), or Client() raised a
        # bare UnicodeEncodeError (the URL).
        (
            lambda: Endpoint("a\ud800", "http://x"),
            "Endpoint.name: expected a non-empty str of valid UTF-8 text (no lone surrogate),"
            " got 'a\\ud800'",
        ),
        (
            lambda: Endpoint("a", "http://x/v1/\udcff"),
            "Endpoint.base_url: expected valid UTF-8 text (no lone surrogate),"
            " got 'http://x/v1/\\udcff'",
        ),
        (
            lambda: Endpoint("a", "ftp://x"),
            "Endpoint.base_url: expected an http(s) URL, got a str of 7 characters",
        ),
        (
            lambda: Endpoint("a", "http://x", gateway="litellm"),  # type: ignore[arg-type]
            "Endpoint.gateway: expected 'openrouter' or None, got 'litellm'",
        ),
        (
            lambda: RoutingConfig(unmarked="sticky"),  # type: ignore[arg-type]
            "RoutingConfig.unmarked: expected 'conversation' or 'spread', got 'sticky'",
        ),
        (
            lambda: RoutingConfig(session_id=1),  # type: ignore[arg-type]
            "RoutingConfig.session_id: expected a bool, got 1",
        ),
        (
            lambda: CachedContents(_never_called, "gateway.example"),
            "CachedContents.base_url: expected an http(s) URL, got a str of 15 characters",
        ),
    ],
)
def test_text_values_are_checked_the_same_way(build: Callable[[], object], complaint: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        build()
    assert str(refused.value) == complaint


def test_an_endpoints_extra_body_is_its_own_copy() -> None:
    # Regression: a nested dict the caller changed after building the Endpoint was sent
    # changed, under the key the Client had taken from it as it was: another body's answer.
    provider = {"order": ["openai"]}
    endpoint = Endpoint("a", "https://gw.test/v1", extra_body={"provider": provider})
    provider["order"].append("anthropic")
    provider["allow_fallbacks"] = True  # type: ignore[assignment]
    assert endpoint.extra_body == {"provider": {"order": ["openai"]}}


@pytest.mark.parametrize(
    ("extra_body", "said"),
    [
        ("oops", "expected a dict of JSON fields, got str"),
        ({1: "x"}, "expected str field names, got int"),
        ({"x": math.nan}, "x: expected a finite number"),
        ({"x": {1, 2}}, "x: expected JSON"),
        ({"temperature": 9}, "temperature: expected a number from 0 to 2"),
        # A call streams by calling stream(): from here, every complete() paid for a
        # stream, then failed it as "not JSON".
        ({"stream": True}, "stream: expected no 'stream' field"),
        ({"stream": False}, "stream: expected no 'stream' field"),
        ({"stream_options": {"include_usage": True}}, "stream_options: expected no"),
    ],
)
def test_a_bad_extra_body_is_refused_naming_what_is_wrong(extra_body: object, said: str) -> None:
    with pytest.raises(ConfigurationError, match=f"Endpoint.extra_body: {said}"):
        Endpoint("a", "https://gw.test/v1", extra_body=extra_body)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["a str", b"", memoryview(b"bytes"), 1])
@pytest.mark.parametrize(
    ("owner", "make"),
    [
        ("TieredCache", lambda key: TieredCache(MemoryCache(), hmac_key=key)),
        ("RedisCache", lambda key: RedisCache.from_url("redis://127.0.0.1:6379", hmac_key=key)),
        ("ServeConfig", lambda key: ServeConfig(fake=True, hmac_key=key)),
    ],
)
def test_an_hmac_key_must_be_non_empty_bytes(
    owner: str, make: Callable[[object], object], key: object
) -> None:
    # Regression: TieredCache took any key; a str failed every call after its upstream
    # call was made, and b"" signed with an empty key.
    with pytest.raises(ConfigurationError, match=f"{owner}.hmac_key: expected non-empty bytes"):
        make(key)


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (
            lambda: Endpoint("a", "https://gw.test/v1", api_key="sk-from-a-file\n"),
            "Endpoint.api_key: the value of 'Authorization' holds a control character",
        ),
        (
            lambda: Endpoint("a", "https://gw.test/v1", api_key=123),  # type: ignore[arg-type]
            "Endpoint.api_key: expected a str, got int",
        ),
        (
            lambda: Endpoint("a", "https://gw.test/v1", headers={"X Api Key:": "k"}),
            "Endpoint.headers: a header name must be a token, got a str of 10 characters",
        ),
        (
            lambda: Endpoint("a", URL, headers={"Content-Length": "5"}),
            "Endpoint.headers: 'Content-Length' is written by the HTTP client itself",
        ),
        (  # a header pasted whole: its name holds the key, never quoted
            lambda: Endpoint("a", URL, headers={"Authorization: Bearer sk-from-a-file": ""}),
            "Endpoint.headers: a header name must be a token, got a str of 36 characters",
        ),
        (
            lambda: Client(base_url="https://gw.test/v1", app_title="line\r\nbreak"),
            "Client.app_url/app_title: the value of 'X-Title' holds a control character",
        ),
    ],
)
def test_a_header_that_cannot_be_sent_is_refused_when_configured(
    make: Callable[[], object], said: str
) -> None:
    # Regression: aiohttp refused them at the first call with a bare ValueError, or sent
    # a bad name; the value is never quoted (it is often a key).
    with pytest.raises(ConfigurationError) as raised:
        make()
    assert str(raised.value).startswith(said)
    assert "sk-from-a-file" not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"retry": {"max_attempts": 2}}, "Client.retry: expected a RetryConfig"),
        ({"timeouts": 30}, "Client.timeouts: expected a Timeouts"),
        ({"policy": {"max_temperature": 1}}, "Client.policy: expected a CachePolicy"),
        ({"flight": 5}, "Client.flight: expected a FlightConfig"),
        ({"on_event": 5}, "Client.on_event: expected a callable"),
        ({"on_event": [print, 5]}, "Client.on_event: expected a callable"),
        ({"coalesce": "no"}, "Client.coalesce: expected a bool"),
        ({"fleet_stats": None}, "Client.fleet_stats: expected a bool"),
        ({"app_url": 5}, "Client.app_url/app_title: the value of 'HTTP-Referer' is a int"),
    ],
)
def test_a_client_option_of_the_wrong_kind_is_refused_naming_it(
    options: dict[str, Any], said: str
) -> None:
    # Regression: an AttributeError or TypeError at the first call, or (coalesce="no")
    # accepted as meaning the opposite.
    with pytest.raises(ConfigurationError) as raised:
        Client(base_url=URL, **options)
    assert str(raised.value).startswith(said)


def test_other_options_of_the_wrong_kind_are_refused_naming_them() -> None:
    with pytest.raises(ConfigurationError, match=r"^RedisCache\.url: expected a str, got int"):
        RedisCache.from_url(6379)  # type: ignore[arg-type]
    said = r"^Endpoint\.openrouter\.allow_fallbacks: expected a bool"
    with pytest.raises(ConfigurationError, match=said):  # it was sent as the string
        Endpoint.openrouter("anthropic", allow_fallbacks="no")  # type: ignore[arg-type]


def test_a_host_header_is_sent_as_given() -> None:
    # An ingress reached by address with a virtual host: refused for a while, never wrong.
    assert Endpoint("a", URL, headers={"Host": "llm.internal.example"}).headers == {
        "Host": "llm.internal.example"
    }


def test_an_endpoint_made_from_anothers_extra_body_keeps_it() -> None:
    # Regression: the read-only copy an Endpoint keeps could not be given again (a bare
    # TypeError from dataclasses.replace, or Endpoint(extra_body=other.extra_body)).
    pinned = Endpoint.openrouter("anthropic", api_key="k")
    assert dataclasses.replace(pinned, weight=2.0).extra_body == pinned.extra_body
    assert Endpoint("b", URL, extra_body=pinned.extra_body).extra_body == pinned.extra_body


def test_an_extra_body_key_that_is_not_a_str_is_a_configuration_error() -> None:
    class Slug(enum.StrEnum):
        ORDER = "order"

    with pytest.raises(ConfigurationError, match=r"^Endpoint\.extra_body: not JSON"):
        Endpoint("a", URL, extra_body={"provider": {Slug.ORDER: ["x"]}})


def test_endpoints_that_would_store_vectors_of_two_lengths_under_one_key_are_refused() -> None:
    """An embedding's key holds no trace of the endpoint that answered: endpoints asking
    for different ``dimensions`` would have vectors of two lengths served alike."""
    eight = Endpoint("a", "http://x", extra_body={"dimensions": 8})
    with pytest.raises(ConfigurationError, match=r"the same 'dimensions'.*got 8, null"):
        Client(endpoints=[eight, Endpoint("b", "http://y")])
    with pytest.raises(ConfigurationError, match=r"got 8, \[8\]"):  # any JSON: no TypeError
        Client(endpoints=[eight, Endpoint("b", "http://y", extra_body={"dimensions": [8]})])
    Client(endpoints=[eight, Endpoint("b", "http://y", extra_body={"dimensions": 8})])


_not_text = st.builds(
    lambda head, lone, tail: head + lone + tail,
    st.text(max_size=5),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=5),
)


@given(_not_text)
def test_a_name_or_url_that_is_not_text_is_refused_naming_its_field(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^Endpoint\.name: "):
        Endpoint(text, URL)
    with pytest.raises(ConfigurationError, match=r"^Endpoint\.base_url: "):
        Endpoint("a", f"{URL}/{text}")
    with pytest.raises(ConfigurationError, match=r"^(Client|Endpoint)\.base_url: "):
        Client(base_url=f"{URL}?q={text}", api_key="k")


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda bad: MemoryCache(clock=bad), "MemoryCache.clock"),
        (lambda bad: TieredCache(MemoryCache(), clock=bad), "TieredCache.clock"),
        (lambda bad: CircuitBreaker(clock=bad), "CircuitBreaker.clock"),
        (
            lambda bad: RedisCache.from_url("redis://127.0.0.1:6379", breaker=bad),
            "RedisCache.breaker",
        ),
        (
            lambda bad: MemcachedCache.from_url("memcached://127.0.0.1:11211", breaker=bad),
            "MemcachedCache.breaker",
        ),
    ],
)
@pytest.mark.parametrize("bad", [5, "time.time", object()])
def test_a_clock_or_breaker_that_cannot_be_one_is_refused_when_given(
    build: Callable[[object], object], field: str, bad: object
) -> None:
    # Regression: each was taken, and failed the first call that asked it (a bare
    # TypeError or AttributeError out of complete()).
    with pytest.raises(ConfigurationError, match=rf"^{re.escape(field)}: expected "):
        build(bad)
