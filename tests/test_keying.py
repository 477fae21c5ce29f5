"""The key stage: the hit path's key (``Keying.now``) is the key every other path gives."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet import Endpoint
from limpet.cache.generations import Generations
from limpet.pipeline.credentials import ANONYMOUS_SCOPE, call_scope, credential_scope
from limpet.pipeline.keying import Keying, endpoints_scope
from limpet.pipeline.keys import canonical_request, request_key
from tests.test_keys import requests

URL = "https://gw.example/v1"

headers = st.none() | st.sampled_from(
    [{}, {"X-Request-Id": "r1"}, {"Authorization": "Bearer sk-2"}, {"x-api-key": "k"}]
)


@given(
    requests,
    headers,
    st.sampled_from(["", "tenant-a"]),
    st.sampled_from(["", "c0ffee"]),
    st.sampled_from([0.0, 0.5]),
)
def test_the_hit_paths_key_is_request_key_and_the_async_key(
    body: dict[str, Any],
    sent: dict[str, str] | None,
    namespace: str,
    credential: str,
    temperature: float,
) -> None:
    body = {**body, "temperature": temperature, "stream": False}  # normalised, dropped
    keying = Keying(Generations(), namespace, credential)
    key = keying.now(body, sent)
    # A call sending a key of its own adds that key's generations to the Client's.
    scope = keying.generations.scope_now(body["model"], keying.callers(sent))
    assert scope is not None
    expected = request_key(
        canonical_request(body),
        namespace=namespace,
        scope=scope,
        credential=call_scope(credential, sent),
    )
    assert key == expected == asyncio.run(keying.of(body, sent))


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://gw.example/v1/?api-version=2", "https://GW.example:443/v1?api-version=2"),
        ("http://[::1]:80/v1", "http://[::1]/v1/"),
        ("https://gw.example/v1?key=AIzaSy-tenant-a", "https://gw.example/v1?key=AIzaSy-tenant-b"),
        ("https://gw.example/v1?a=1&api-version=2", "https://gw.example/v1?api-version=2&a=1"),
        ("https://gw.example/v1?api-version=2", "https://gw.example/v1?api%2Dversion=2"),
    ],
)
def test_one_place_however_spelled_is_one_scope(one: str, other: str) -> None:
    # Regression: the spelling of a URL, and the key in its query, moved every key.
    assert endpoints_scope([Endpoint("a", one)]) == endpoints_scope([Endpoint("b", other)])


def test_attribution_headers_of_an_endpoint_share_its_scope() -> None:
    titled = [Endpoint("a", "https://gw.example/v1", headers={"X-Title": "svc-a"})]
    other = [Endpoint("a", "https://gw.example/v1", headers={"X-Title": "svc-b"})]
    assert endpoints_scope(titled) == endpoints_scope(other)


def test_a_key_in_the_query_is_a_credential() -> None:
    # A key sent in the URL (now that a query reaches the gateway) scopes entries as one
    # sent in a header does: two tenants of one gateway share nothing by default.
    a = credential_scope([Endpoint("a", "https://gw.example/v1?key=AIzaSy-tenant-a")])
    b = credential_scope([Endpoint("a", "https://gw.example/v1?key=AIzaSy-tenant-b")])
    plain = credential_scope([Endpoint("a", "https://gw.example/v1?api-version=2")])
    assert len({a, b, plain}) == 3 and plain == ANONYMOUS_SCOPE


def test_the_order_within_an_endpoints_schema_counts() -> None:
    def schema(*names: str) -> dict[str, Any]:
        properties = {name: {"type": "string"} for name in names}
        body = {"name": "x", "schema": {"type": "object", "properties": properties}}
        return {"response_format": {"type": "json_schema", "json_schema": body}}

    first = Endpoint("a", "https://gw.example/v1", extra_body=schema("reasoning", "answer"))
    then = Endpoint("a", "https://gw.example/v1", extra_body=schema("answer", "reasoning"))
    assert endpoints_scope([first]) != endpoints_scope([then])


# -- url_scope: what upstream is sent, however spelled -----------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # Regression: the query was decoded and joined again unencoded.
        ("https://gw.test/v1?deployment=a&region=eu", "https://gw.test/v1?deployment=a%26region%3Deu"),
        ("https://gw.test/v1?a=1%3D2", "https://gw.test/v1?a%3D1=2"),
        # Regression: repeated names were sorted by value, though sent in their order.
        (
            "https://gw.test/v1?api-version=2024-02-01&api-version=2025-01-01",
            "https://gw.test/v1?api-version=2025-01-01&api-version=2024-02-01",
        ),
    ],
)
def test_urls_sending_other_query_parameters_are_other_scopes(one: str, other: str) -> None:
    assert endpoints_scope([Endpoint("a", one)]) != endpoints_scope([Endpoint("a", other)])


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("https://gw.test/v1?b=1&a=2&a=3", "https://gw.test/v1?a=2&b=1&a=3"),
        ("https://gw.test/v1?q=a+b", "https://gw.test/v1?q=a%20b"),
        ("https://gw.test/v1?q=%7Ex", "https://gw.test/v1?q=~x"),
    ],
)
def test_queries_that_send_the_same_parameters_are_one_scope(one: str, other: str) -> None:
    assert endpoints_scope([Endpoint("a", one)]) == endpoints_scope([Endpoint("a", other)])
