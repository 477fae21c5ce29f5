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


# -- a call's own headers, and an endpoint's: one rule for which enter a key ------------

#: Headers that can change an answer, and those that cannot (credentials aside).
KEYED = {"anthropic-beta": "context-1m-2025-08-07", "X-Provider-Override": "other"}
UNKEYED = {
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "tracestate": "vendor=1",
    "baggage": "user=42",
    "X-Request-Id": "req-42",
    "X-Correlation-Id": "corr-42",
    "Idempotency-Key": "idem-42",
    "User-Agent": "app/1.0",
    "X-Session-Id": "user-42",
    "HTTP-Referer": "https://example.test",
    "X-Title": "Example",
}


@pytest.mark.parametrize("credential", ["", "c0ffee"])
@pytest.mark.parametrize(("name", "value"), list(KEYED.items()))
def test_a_calls_header_that_can_change_the_answer_enters_its_key(
    credential: str, name: str, value: str
) -> None:
    # Regression: only a call's credential headers entered its key, so a call sending
    # anthropic-beta was served (and shared a flight with) the answer of one without.
    keying = Keying(Generations(), "", credential, endpoints_scope([Endpoint("a", URL)]))
    sent = {name: value}
    assert keying.scope(sent) != keying.scope(None)
    assert keying.scope(sent) != keying.scope({name: value + "-other"})
    assert keying.own_scope(sent, None) == keying.scope(sent)
    body = {"model": "m", "messages": [], "temperature": 0}
    assert keying.now(body, sent) != keying.now(body, None)
    assert keying.now(body, sent) == asyncio.run(keying.of(body, sent))


@pytest.mark.parametrize("credential", ["", "c0ffee"])
def test_a_calls_transport_and_attribution_headers_stay_out_of_its_key(credential: str) -> None:
    keying = Keying(Generations(), "", credential, endpoints_scope([Endpoint("a", URL)]))
    for name, value in UNKEYED.items():
        assert keying.scope({name: value}) == keying.scope(None), name
    assert keying.scope(UNKEYED) == keying.scope(None)
    assert keying.own_scope(UNKEYED, None) is None
    assert keying.callers(KEYED) == keying.callers(None) == ""  # generations: credentials only


@pytest.mark.parametrize("name", [*KEYED, *UNKEYED, "Authorization", "X-Api-Key"])
def test_a_header_enters_a_calls_key_when_it_enters_an_endpoints(name: str) -> None:
    # One rule: a header that moves an Endpoint's scope moves a call's, and no other.
    def endpoint_moves(value: str) -> bool:
        sent = [Endpoint("a", URL, headers={name: value})]
        return endpoints_scope(sent) != endpoints_scope([Endpoint("a", URL)])

    def call_moves(value: str) -> bool:
        keying = Keying(Generations(), "", "", endpoints_scope([Endpoint("a", URL)]))
        return keying.scope({name: value}) != keying.scope(None)

    assert endpoint_moves("v1") == call_moves("v1") == (name in KEYED)


header_names = st.sampled_from([*KEYED, *UNKEYED, "Authorization", "X-Custom"])
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8)
sent_headers = st.dictionaries(header_names, header_values, max_size=6)


@given(sent_headers, st.randoms(use_true_random=False), st.sampled_from(["", "c0ffee"]))
def test_the_case_and_order_of_header_names_never_change_a_key(
    sent: dict[str, str], rng: Any, credential: str
) -> None:
    keying = Keying(Generations(), "", credential, endpoints_scope([Endpoint("a", URL)]))
    items = list(sent.items())
    rng.shuffle(items)
    respelled = {
        "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in name): value
        for name, value in items
    }
    assert keying.scope(respelled) == keying.scope(sent)
    assert keying.scope(respelled, "t") == keying.scope(sent, "t")


@given(sent_headers, st.sampled_from(list(KEYED)), header_values, header_values)
def test_another_value_of_a_keyed_header_always_changes_a_key(
    sent: dict[str, str], name: str, one: str, other: str
) -> None:
    keying = Keying(Generations(), "", "c0ffee", endpoints_scope([Endpoint("a", URL)]))
    sent = {key: value for key, value in sent.items() if key.lower() != name.lower()}
    if one != other:
        assert keying.scope({**sent, name: one}) != keying.scope({**sent, name: other})
        assert keying.scope({**sent, name: one}, "t") != keying.scope({**sent, name: other}, "t")


# -- url_scope: what upstream is sent, however spelled -----------------------------------


@pytest.mark.parametrize(
    ("one", "other"),
    [
        # Regression: the query was decoded and joined again unencoded.
        (
            "https://gw.test/v1?deployment=a&region=eu",
            "https://gw.test/v1?deployment=a%26region%3Deu",
        ),
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


def test_flight_keys_hold_the_credential_only_where_cache_keys_do_not() -> None:
    # Namespace scope: one cache key for every credential, one flight key per credential,
    # a call's own Authorization giving it its own; no key in either.
    scope = credential_scope([Endpoint("a", URL, api_key="sk-1")])
    shared = Keying(Generations(), "", "", flights=scope)
    mine = shared.flight_key("k", None)
    theirs = shared.flight_key("k", {"Authorization": "Bearer sk-2"})
    assert mine == shared.flight_key("k", {"traceparent": "00-ab-01"}) == "k@" + scope
    assert theirs.startswith("k@") and theirs != mine and "sk-2" not in theirs
    # Credential scope: the key holds the call's credential scope already; the flight
    # key is the key itself, whatever the call sends.
    own = Keying(Generations(), "", scope, flights=scope)
    assert own.flight_key("k", None) == own.flight_key("k", {"Authorization": "Bearer sk-2"})
    assert own.flight_key("k", None) == "k" and own.flight_scope(None) == ""
