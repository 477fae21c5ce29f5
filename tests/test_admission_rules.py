"""The pure admission decisions: the learned limit, token buckets, rate-limit headers,
token estimates."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet import AdmissionConfig, Client, Endpoint
from limpet.errors import ConfigurationError
from limpet.http.admission_rules import (
    RESET_SLACK,
    AimdLimit,
    TokenBucket,
    estimated_tokens,
    parse_duration,
    pause_from_headers,
    rate_limit_headers,
    remaining_requests,
    total_tokens,
)
from limpet.providers.usage import MAX_TOKENS

CONFIG = AdmissionConfig()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5)],
)
def test_parse_duration_reads_openai_reset_values(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s later", "-3", "inf"])
def test_parse_duration_refuses_what_it_cannot_read(text: str) -> None:
    assert parse_duration(text) is None


@given(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_adds_up_its_parts(h: int, m: int, s: int, ms: int) -> None:
    text = f"{h}h{m}m{s}s{ms}ms"
    assert parse_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


def test_a_429_pauses_for_its_retry_after_and_a_success_does_not() -> None:
    assert pause_from_headers(429, {"Retry-After": "2"}) == 2.0
    assert pause_from_headers(503, {"retry-after-ms": "250"}) == 0.25
    assert pause_from_headers(200, {"Retry-After": "2"}) is None
    assert pause_from_headers(429, {}) is None


def test_an_exhausted_quota_pauses_until_its_reset_even_on_a_success() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert pause_from_headers(200, headers) == 360.0 + RESET_SLACK
    left = {"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "1s"}
    assert pause_from_headers(200, left) is None


@pytest.mark.parametrize("stated", ["0.200s", "1s", "120ms", "6m0s"])
def test_a_window_is_never_taken_for_reset_before_its_rounded_reset_has_passed(
    stated: str,
) -> None:
    # Regression (a rare 429 in a windowed test): the fake gateway states its reset
    # rounded to the millisecond, and a request sent the instant it passed could beat
    # the gateway's own window by that rounding.
    seconds = parse_duration(stated)
    assert seconds is not None
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": stated}
    assert remaining_requests(exhausted) == (0, seconds + RESET_SLACK)
    paused = pause_from_headers(200, exhausted)
    assert paused is not None and paused >= seconds + 0.0005  # half a rounded millisecond


def test_the_learned_limit_doubles_each_round_until_the_first_refusal() -> None:
    limit = AimdLimit(CONFIG)
    assert limit.allowed == CONFIG.initial_limit
    for _ in range(CONFIG.initial_limit):
        limit.succeeded(in_flight=limit.allowed)
    assert limit.allowed == 2 * CONFIG.initial_limit


def test_a_refusal_cuts_to_a_share_of_the_concurrency_it_met_and_remembers_it() -> None:
    limit = AimdLimit(CONFIG, value=30.0)
    limit.refused(in_flight=21)
    assert limit.ceiling == 21
    assert limit.allowed == math.floor(21 * CONFIG.backoff)


def test_a_refusal_met_at_low_use_cuts_the_limit_by_a_share_and_teaches_no_ceiling() -> None:
    # One 503 met by a lone request: the limit had fallen to 1, bursts went one by one.
    limit = AimdLimit(CONFIG, value=16.0)
    limit.refused(in_flight=1)
    assert limit.ceiling is None
    assert limit.allowed == math.floor(16 * CONFIG.backoff)
    for _ in range(limit.allowed):  # a burst's round trip: growing as before any refusal
        limit.succeeded(in_flight=limit.allowed)
    assert limit.allowed >= 16


def test_refusals_at_low_use_still_back_off_to_the_minimum() -> None:
    limit = AimdLimit(CONFIG, value=64.0)
    for _ in range(200):  # an endpoint refusing everything, however little is sent
        limit.refused(in_flight=1)
    assert limit.allowed == CONFIG.min_limit


@given(st.floats(2.0, 500.0), st.integers(1, 1000))
def test_a_refusal_never_raises_the_limit(value: float, in_flight: int) -> None:
    limit = AimdLimit(CONFIG, value=value)
    limit.refused(in_flight)
    assert limit.value <= max(value, float(CONFIG.min_limit))


def test_at_the_ceiling_the_limit_grows_probe_rounds_times_slower() -> None:
    limit = AimdLimit(CONFIG, value=20.0, ceiling=21)
    for _ in range(20):  # one round trip's successes
        limit.succeeded(in_flight=20)
    assert limit.allowed == 20
    for _ in range(20 * CONFIG.probe_rounds):
        limit.succeeded(in_flight=20)
    assert limit.allowed == 21


def _full_rounds(limit: AimdLimit, rounds: int, refused_at: int | None = None) -> int:
    """Run ``rounds`` round trips with every allowed place in use; a request sent at
    ``refused_at`` or more in flight is refused (the endpoint's limit). Returns refusals."""
    refusals = 0
    for _ in range(rounds):
        in_flight = limit.allowed
        if refused_at is not None and in_flight >= refused_at:
            limit.refused(in_flight)  # one verdict per round, as ``Admission.epoch``
            refusals += 1
            continue
        for _ in range(in_flight):
            limit.succeeded(in_flight)
    return refusals


def test_a_ceiling_served_without_a_refusal_stops_holding_growth_back() -> None:
    # The endpoint's limit dropped to 1 for a moment and came back: the ceiling of 2
    # learned then had held growth at the probe rate for good (2 to 40: ~750 rounds).
    limit = AimdLimit(CONFIG, value=2.0)
    limit.refused(in_flight=2)
    assert (limit.allowed, limit.ceiling) == (1, 2)
    # Below the ceiling and one past it at the probe rate, then one per round trip.
    rounds = 3 * CONFIG.probe_rounds + 40
    _full_rounds(limit, rounds)
    assert limit.ceiling is None
    assert limit.allowed >= 38


def test_once_the_ceiling_is_outgrown_the_limit_grows_by_one_a_round_trip() -> None:
    limit = AimdLimit(CONFIG, value=20.0, ceiling=21)
    _full_rounds(limit, 2 * CONFIG.probe_rounds)  # probed up to the ceiling and past it
    start = limit.allowed
    assert 21 <= start <= 23
    _full_rounds(limit, 10)
    assert limit.allowed >= start + 9  # additive increase, not the probe rate
    _full_rounds(limit, 10)
    assert limit.allowed <= start + 20  # nor slow start: a refusal was learned


def test_the_ceiling_ages_only_at_its_own_concurrency() -> None:
    limit = AimdLimit(CONFIG, value=21.0, ceiling=21)
    for _ in range(100 * CONFIG.probe_rounds):  # over half in use, but never 21
        limit.succeeded(in_flight=20)
    assert (limit.value, limit.ceiling) == (21.0, 21)


def test_a_ceiling_confirmed_by_a_fresh_refusal_still_holds() -> None:
    # The endpoint takes 20 at once: the limit stays at or under 21 and is refused about
    # once every probe_rounds round trips, not every few.
    limit = AimdLimit(CONFIG, value=18.0, ceiling=21)
    rounds = 10 * CONFIG.probe_rounds
    refusals = _full_rounds(limit, rounds, refused_at=21)
    assert limit.ceiling == 21
    assert 1 <= refusals <= rounds // CONFIG.probe_rounds
    assert limit.allowed <= 21


def test_an_outgrown_ceiling_refused_again_is_probed_slowly_again() -> None:
    limit = AimdLimit(CONFIG, value=2.0)
    limit.refused(in_flight=2)
    _full_rounds(limit, 3 * CONFIG.probe_rounds + 40)  # the ceiling of 2 is forgotten
    assert limit.allowed >= 38
    _full_rounds(limit, 100, refused_at=40)  # the endpoint's limit is back: 39
    assert limit.ceiling == 40
    assert 36 <= limit.allowed <= 40


def test_a_low_use_refusal_after_a_forgotten_ceiling_does_not_restart_slow_start() -> None:
    limit = AimdLimit(CONFIG, value=20.0, ceiling=21)
    _full_rounds(limit, 2 * CONFIG.probe_rounds + 5)
    assert limit.ceiling is None
    limit.refused(in_flight=1)
    before = limit.allowed
    _full_rounds(limit, 1)
    assert limit.allowed <= before + 1


@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 200)), max_size=100),
    st.integers(2, 200),
    st.integers(0, 300),
)
def test_after_a_refusal_the_limit_grows_at_most_one_a_round_trip(
    events: list[tuple[bool, int]], refused_at: int, successes: int
) -> None:
    # Whatever came before, once a ceiling is learned no run of successes grows the
    # limit faster than additive increase, ceiling forgotten or not, nor below 1.
    limit = AimdLimit(CONFIG)
    for ok, in_flight in events:
        if ok:
            limit.succeeded(in_flight)
        else:
            limit.refused(in_flight)
    limit.refused(max(refused_at, limit.allowed))
    for _ in range(successes):
        before = limit.value
        limit.succeeded(limit.allowed)
        assert limit.value <= before + 1.0 / before + 1e-9
        assert limit.allowed >= CONFIG.min_limit


def test_successes_while_the_limit_is_mostly_unused_teach_nothing() -> None:
    limit = AimdLimit(CONFIG)
    for _ in range(100):
        limit.succeeded(in_flight=1)
    assert limit.allowed == CONFIG.initial_limit


@given(st.lists(st.tuples(st.booleans(), st.integers(1, 2000)), max_size=200))
def test_the_learned_limit_stays_within_its_bounds(events: list[tuple[bool, int]]) -> None:
    config = AdmissionConfig(min_limit=2, max_limit=50)
    limit = AimdLimit(config)
    for ok, in_flight in events:
        if ok:
            limit.succeeded(in_flight)
        else:
            limit.refused(in_flight)
        assert config.min_limit <= limit.allowed <= config.max_limit


def test_a_token_bucket_refills_per_minute_and_lets_a_big_cost_through_when_full() -> None:
    bucket = TokenBucket(60.0, updated=0.0)
    assert bucket.wait(60, now=0.0) == 0.0
    bucket.take(60, now=0.0)
    assert bucket.wait(1, now=0.0) == pytest.approx(1.0)
    assert bucket.wait(1, now=1.0) == 0.0
    bucket.give_back(10, now=1.0)  # an over-estimate corrected
    assert bucket.wait(11, now=1.0) == 0.0
    big = TokenBucket(10.0, updated=0.0)
    assert big.wait(1000, now=0.0) == 0.0  # more than the budget: goes when full


@pytest.mark.parametrize("field", ["max_in_flight", "rpm", "tpm"])
@pytest.mark.parametrize("value", [0, -1, 2.5, True, "20"])
def test_endpoint_limits_must_be_positive_ints(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"Endpoint.{field}"):
        Endpoint("a", "http://localhost", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"backoff": 1.0}, "backoff"),
        ({"initial_limit": 0}, "initial_limit"),
        ({"min_limit": 10, "initial_limit": 5}, "min_limit <= initial_limit"),
        ({"repin_pause": -1}, "repin_pause"),
    ],
)
def test_admission_config_names_what_is_wrong(options: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        AdmissionConfig(**options)  # type: ignore[arg-type]


_JSON_VALUES = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)


@given(
    st.dictionaries(st.text(max_size=10), _JSON_VALUES, max_size=5),
    st.sampled_from(["max_completion_tokens", "max_tokens"]),
    st.integers(0, 100_000),
)
def test_a_request_is_estimated_at_a_quarter_of_its_bytes_plus_its_completion_cap(
    body: dict[str, object], name: str, cap: int
) -> None:
    body = {k: v for k, v in body.items() if k not in ("max_completion_tokens", "max_tokens")}
    uncapped = orjson.dumps(body)
    assert estimated_tokens(uncapped) == len(uncapped) / 4
    capped = orjson.dumps({**body, name: cap})
    assert estimated_tokens(capped) == len(capped) / 4 + cap


@given(st.binary(max_size=200))
def test_any_payload_is_estimated_without_raising(payload: bytes) -> None:
    assert estimated_tokens(payload) >= len(payload) / 4


def test_a_bool_is_no_completion_cap() -> None:
    payload = orjson.dumps({"max_tokens": True})
    assert estimated_tokens(payload) == len(payload) / 4


@given(_JSON_VALUES | st.floats(allow_nan=False) | st.sampled_from([-1, 2**53, 2**53 + 1, 10**309]))
def test_only_an_int_total_counts_as_tokens_used(total: object) -> None:
    # A count no call could have (negative, or past 2**53: wider than a float) is none.
    counted = total if type(total) is int and 0 <= total <= MAX_TOKENS else None
    assert total_tokens({"usage": {"total_tokens": total}}) == counted
    assert total_tokens({"usage": None}) is None
    assert total_tokens({}) is None


_HEADER_NAMES = st.sampled_from(
    [
        "Retry-After",
        "retry-after-ms",
        "X-RateLimit-Remaining-Requests",
        "x-ratelimit-reset-requests",
        "X-Ratelimit-Remaining-Tokens",
        "x-ratelimit-reset-tokens",
        "Content-Type",
        "X-Request-ID",
        "Date",
    ]
)
_HEADER_VALUES = st.sampled_from(["0", "1", "2.5", "20ms", "6m0s", "soon", "application/json"])


@given(st.dictionaries(_HEADER_NAMES, _HEADER_VALUES), st.sampled_from([200, 429, 503, 500]))
def test_the_rate_limit_headers_say_all_the_headers_say(
    headers: dict[str, str], status: int
) -> None:
    """What admission reads from an answer's headers is in their rate-limit subset, and
    an answer without one says nothing (admission's fast path)."""
    subset = rate_limit_headers(headers)
    assert pause_from_headers(status, subset) == pause_from_headers(status, headers)
    assert remaining_requests(subset) == remaining_requests(headers)
    if not subset:
        assert pause_from_headers(status, headers) is None
        assert remaining_requests(headers) is None


@pytest.mark.parametrize("limit", ["max_in_flight", "rpm", "tpm"])
@pytest.mark.parametrize("off", [False, None])
def test_an_endpoints_limit_with_admission_off_is_refused_naming_both(
    limit: str, off: bool | None
) -> None:
    """Off, no endpoint limit is kept: a Client that asked for one got none, silently."""
    endpoint = Endpoint("a", "http://127.0.0.1:1/v1", **{limit: 20})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=rf"Client\.admission: .*'a'.*{limit}"):
        Client(endpoints=[endpoint], cache=None, admission=off)
    # Without limits of its own, an endpoint may go unadmitted.
    Client(endpoints=[Endpoint("a", "http://127.0.0.1:1/v1")], cache=None, admission=off)
