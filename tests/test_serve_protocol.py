"""The proxy's wire rules: control headers, forwarded headers, the usage chunk, answer
headers, its configuration."""

from __future__ import annotations

import base64
import inspect
import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet import Client
from limpet.cli.parser import build_parser
from limpet.errors import (
    ConfigurationError,
    InvalidRequestError,
)
from limpet.models import CacheStatus, Completion, Cost, Embeddings, Usage
from limpet.serve.config import DEFAULT_BODY_TIMEOUT, ServeConfig, endpoints_of
from limpet.serve.protocol import (
    BODY_RESERVED,
    BadHeaderError,
    answer_headers,
    as_served,
    call_options,
    client_key_allowed,
    client_tenant,
    embeddings_body,
    embeddings_headers,
    from_this_host,
    split_body,
    usage_wanted,
    vector_encoding,
)


def test_no_headers_ask_for_nothing() -> None:
    assert call_options({}) == {}


def test_the_callers_authorization_is_sent_upstream_as_is() -> None:
    options = call_options({"Authorization": "Bearer sk-a", "X-Limpet-Cache-Mode": "Force"})
    assert options == {"extra_headers": {"Authorization": "Bearer sk-a"}, "cache": "force"}


@pytest.mark.parametrize("mode", ["bypass", "refresh", "force", " BYPASS "])
def test_cache_modes(mode: str) -> None:
    assert call_options({"X-Limpet-Cache-Mode": mode})["cache"] == mode.strip().lower()


@pytest.mark.parametrize("mode", ["", "off", "read-only", "bypass,force"])
def test_other_cache_modes_are_refused_naming_the_header(mode: str) -> None:
    with pytest.raises(BadHeaderError, match="X-Limpet-Cache-Mode") as refused:
        call_options({"X-Limpet-Cache-Mode": mode})
    assert refused.value.field == "X-Limpet-Cache-Mode"


@given(st.floats(min_value=1e-6, max_value=3e8))  # up to nine and a half years
def test_any_positive_ttl_is_taken(seconds: float) -> None:
    assert call_options({"X-Limpet-TTL": repr(seconds)})["ttl"] == seconds


@pytest.mark.parametrize("ttl", ["0", "-1", "inf", "nan", "soon", "", "1e999", "1e308", "1e10"])
def test_other_ttls_are_refused(ttl: str) -> None:
    # 1e10 s (three centuries) and 1e308 s no tier can hold (Redis's PX overflows).
    with pytest.raises(BadHeaderError, match="X-Limpet-TTL") as refused:
        call_options({"X-Limpet-TTL": ttl})
    assert refused.value.field == "X-Limpet-TTL"


_ORGANIZATION = {"OpenAI-Organization": "org-1", "OpenAI-Project": "proj-1"}
_ATTRIBUTION = {"HTTP-Referer": "https://app.example", "X-Title": "My App"}


def test_attribution_and_organization_headers_go_upstream_with_the_callers_key() -> None:
    headers = {
        "Authorization": "Bearer sk-a",
        **_ORGANIZATION,
        **_ATTRIBUTION,
        "Cookie": "session=1",
        "Connection": "keep-alive",
        "X-Title-Extra": "no",
    }
    assert call_options(headers)["extra_headers"] == {
        "Authorization": "Bearer sk-a",
        **_ORGANIZATION,
        **_ATTRIBUTION,
    }


def test_with_the_proxys_own_key_only_attribution_goes_upstream() -> None:
    headers = {"Authorization": "Bearer sk-client", **_ORGANIZATION, **_ATTRIBUTION}
    options = call_options(headers, forward_authorization=False)
    assert options["extra_headers"] == _ATTRIBUTION
    assert call_options(_ORGANIZATION, forward_authorization=False) == {}


@given(
    st.dictionaries(
        st.sampled_from(["model", "cache", "ttl", "timeout", "n", "extra_body"]), st.integers()
    )
)
def test_a_body_never_sets_a_call_option(body: dict[str, int]) -> None:
    fields, reserved = split_body(body)
    assert {**fields, **(reserved or {})} == body
    assert not {"cache", "ttl", "timeout", "extra_body", "extra_headers"} & set(fields)


@pytest.mark.parametrize(
    ("options", "wanted"),
    [
        (None, False),
        ({}, False),
        ({"include_usage": False}, False),
        ({"include_usage": True}, True),
    ],
)
def test_only_a_caller_asking_for_usage_gets_the_usage_chunk(
    options: dict[str, bool] | None, wanted: bool
) -> None:
    # The Client keeps usage from the chunks of a caller whose include_usage is false
    # (``limpet.http.chunks.without_usage``); the proxy says false unless asked.
    assert usage_wanted(options) is wanted


@pytest.mark.parametrize("options", ["yes", ["include_usage"], {"include_usage": "true"}])
def test_bad_stream_options_are_refused_naming_the_field(options: object) -> None:
    with pytest.raises(InvalidRequestError, match="stream_options"):
        usage_wanted(options)


def completion(cache: CacheStatus, key: str | None, cost: Cost | None) -> Completion:
    return Completion({}, "m", Usage(), cost, cache, "primary", key)


def test_answer_headers_say_how_it_was_served() -> None:
    headers = answer_headers(completion(CacheStatus.HIT, "k1", Cost(usd=0.00125)))
    assert headers == {
        "X-Limpet-Cache": "hit",
        "X-Limpet-Endpoint": "primary",
        "X-Limpet-Key": "k1",
        "X-Limpet-Cost-USD": "0.00125",
    }
    bare = answer_headers(completion(CacheStatus.BYPASS, None, None))
    assert bare == {"X-Limpet-Cache": "bypass", "X-Limpet-Endpoint": "primary"}


def test_endpoints_are_named_by_host_and_carry_no_key() -> None:
    endpoints = endpoints_of(
        ["https://openrouter.ai/api/v1", "http://relay:8080/a/v1", "http://relay:8080/b/v1"]
    )
    names = [endpoint.name for endpoint in endpoints]
    assert names == ["openrouter.ai", "relay:8080#2", "relay:8080#3"]
    assert all(endpoint.api_key is None for endpoint in endpoints)


def test_client_keys_are_presented_as_bearer_tokens() -> None:
    allowed = frozenset({"sk-one", "sk-two"})
    assert client_key_allowed("Bearer sk-two", allowed)
    assert client_key_allowed("bearer sk-one", allowed)
    for refused in (None, "", "Bearer", "Bearer ", "sk-one", "Basic sk-one", "Bearer sk-on"):
        assert not client_key_allowed(refused, allowed), refused
    assert not client_key_allowed("Bearer sk-one", frozenset())


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({}, "at least one upstream"),
        ({"upstreams": ("ftp://gateway/v1",)}, "ServeConfig.upstreams: expected an http"),
        ({"upstreams": ("http://me:pw@gateway/v1",)}, "ServeConfig.upstreams: credentials"),
        ({"upstreams": ("http://a/v1",), "fake": True}, "not both"),
        ({"fake": True, "redis": "redis://r", "memcached": "memcached://m"}, "not both"),
        ({"fake": True, "client_keys": frozenset({"sk-1"})}, "upstream_key"),
    ],
)
def test_a_config_that_cannot_serve_is_refused_at_once(
    options: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        ServeConfig(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0, -1.0, math.nan, math.inf, True])
def test_a_body_timeout_that_allows_no_time_or_forever_is_refused(seconds: float) -> None:
    expected = r"ServeConfig\.body_timeout: expected a finite number > 0"
    with pytest.raises(ConfigurationError, match=expected):
        ServeConfig(fake=True, body_timeout=seconds)


def test_limpet_serves_body_timeout_is_serveconfigs_by_default() -> None:
    # The parser keeps its own copy of the default: it does not import the server.
    args = build_parser().parse_args(["serve", "--fake"])
    assert args.body_timeout == DEFAULT_BODY_TIMEOUT == ServeConfig(fake=True).body_timeout


def test_a_configs_repr_shows_no_key() -> None:
    config = ServeConfig(
        upstreams=("http://a/v1",), upstream_key="sk-secret", client_keys=frozenset({"sk-c"})
    )
    assert "sk-secret" not in repr(config) and "sk-c" not in repr(config)


@given(
    vectors=st.lists(
        st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1),
        min_size=1,
        max_size=4,
    )
)
def test_embeddings_body_in_base64_decodes_to_the_same_float32_vectors(
    vectors: list[list[float]],
) -> None:
    result = Embeddings(vectors, "m", Usage(5), None, 0, len(vectors), 0, [])
    as_floats = embeddings_body(result)
    as_base64 = embeddings_body(result, vector_encoding("base64"))
    assert [d["index"] for d in as_base64["data"]] == list(range(len(vectors)))
    for plain, packed in zip(as_floats["data"], as_base64["data"], strict=True):
        raw = base64.b64decode(packed["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == plain["embedding"]
    assert as_floats["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


@pytest.mark.parametrize(
    ("asked", "encoding"), [(None, "float"), ("float", "float"), ("base64", "base64")]
)
def test_the_encoding_format_asked_for_is_taken(asked: str | None, encoding: str) -> None:
    assert vector_encoding(asked) == encoding


@pytest.mark.parametrize("asked", ["int8", "FLOAT", "", 1, ["base64"]])
def test_another_encoding_format_is_refused_naming_it(asked: object) -> None:
    with pytest.raises(InvalidRequestError, match="encoding_format"):
        vector_encoding(asked)


def test_embeddings_headers_say_how_the_inputs_were_served() -> None:
    result = Embeddings([[0.5]], "m", Usage(), None, 1, 0, 0, [])
    headers = embeddings_headers(result)
    assert headers == {"X-Limpet-Cache": "hit", "X-Limpet-Inputs": "hits=1 misses=0 coalesced=0"}


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("192.0.2.2", False),
        ("10.0.0.7", False),
        ("fd00::2", False),
        ("::ffff:203.0.113.5", False),
        ("", False),
        (None, False),
        ("not an address", False),
    ],
)
def test_metrics_without_client_keys_are_for_this_host_alone(
    remote: str | None, local: bool
) -> None:
    # Regression: with callers bringing their own keys, /metrics (every tenant's models,
    # calls and dollars) was served to anyone who asked.
    assert from_this_host(remote) is local


def test_a_hit_says_it_spent_nothing_in_every_dollar_field_of_its_usage() -> None:
    """OpenRouter's ``usage.cost`` and, for a BYOK key, ``cost_details`` (the provider's
    own bill, which clients add to it) are 0 for a hit; tokens stay; a miss is as sent."""
    usage: dict[str, Any] = {
        "prompt_tokens": 5,
        "cost": 0.001,
        "is_byok": True,
        "cost_details": {"upstream_inference_cost": 0.002, "note": "kept"},
    }
    body: dict[str, Any] = {"id": "x", "usage": usage}
    shown = as_served(body, CacheStatus.HIT)
    assert shown["usage"] == {
        "prompt_tokens": 5,
        "cost": 0,
        "is_byok": True,
        "cost_details": {"upstream_inference_cost": 0, "note": "kept"},
    }
    assert usage["cost"] == 0.001  # a copy: the entry's body is never changed
    assert as_served(body, CacheStatus.MISS) is body
    assert as_served({"usage": {"prompt_tokens": 5}}, CacheStatus.HIT)["usage"] == {
        "prompt_tokens": 5
    }


def test_every_client_option_that_is_no_body_field_is_reserved() -> None:
    """A body field named like a ``Client`` option (``tenant``, ``cache``...) goes
    upstream as a field: no caller can set a call's option through its body."""
    body_fields = {"model", "messages", "input", "dimensions", "encoding_format", "params"}
    for method in (Client.complete, Client.stream, Client.embed):
        named = set(inspect.signature(method).parameters) - body_fields
        assert named <= BODY_RESERVED, (method.__name__, named - BODY_RESERVED)


def test_a_client_keys_tenant_is_a_digest_of_the_key_alone() -> None:
    tenant = client_tenant("Bearer ck-secret-1")
    assert "ck-secret-1" not in tenant
    assert tenant == client_tenant("bearer   ck-secret-1")
    assert tenant != client_tenant("Bearer ck-secret-2")


@pytest.mark.parametrize("ttl", [-1.0, math.nan, math.inf, True, "60"])
def test_a_models_ttl_that_is_no_finite_number_of_seconds_is_refused(ttl: object) -> None:
    with pytest.raises(ConfigurationError, match=r"ServeConfig\.models_ttl"):
        ServeConfig(fake=True, models_ttl=ttl)  # type: ignore[arg-type]
