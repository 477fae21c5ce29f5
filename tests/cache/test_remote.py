"""The settings every remote tier (Redis, Memcached) shares: one pure check for both."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from limpet.cache.memcached.backend import MemcachedCache
from limpet.cache.redis.backend import RedisCache
from limpet.cache.remote import RemoteSettings, check_source, remote_settings
from limpet.errors import ConfigurationError

GOOD = {
    "prefix": "p:",
    "read_timeout": 0.05,
    "write_timeout": 0.1,
    "close_timeout": 5.0,
    "max_pending_writes": 10,
    "max_connections": 4,
    "hmac_key": None,
}
SECONDS = ("read_timeout", "write_timeout", "close_timeout")
COUNTS = ("max_pending_writes", "max_connections")


@given(
    st.sampled_from(SECONDS),
    st.floats(min_value=1e-6, max_value=1e6) | st.integers(min_value=1, max_value=10**6),
)
def test_any_positive_finite_seconds_are_taken_as_floats(name: str, seconds: float) -> None:
    settings = remote_settings("RedisCache", **{**GOOD, name: seconds})  # type: ignore[arg-type]
    assert getattr(settings, name) == float(seconds)
    assert type(getattr(settings, name)) is float


@given(
    st.sampled_from(SECONDS),
    st.floats(max_value=0.0)
    | st.sampled_from([math.inf, math.nan, True, "1", None])
    | st.integers(max_value=0),
)
def test_other_seconds_are_refused_naming_the_option(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^MemcachedCache\.{name}: "):
        remote_settings("MemcachedCache", **{**GOOD, name: value})  # type: ignore[arg-type]


@given(
    st.sampled_from(COUNTS),
    st.integers(max_value=0) | st.sampled_from([True, 2.0, 2.5, "2", None]),
)
def test_counts_are_ints_of_at_least_one(name: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"^RedisCache\.{name}: "):
        remote_settings("RedisCache", **{**GOOD, name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [b"", "text", 1])
def test_an_hmac_key_is_non_empty_bytes(key: object) -> None:
    with pytest.raises(ConfigurationError, match=r"^RedisCache\.hmac_key"):
        remote_settings("RedisCache", **{**GOOD, "hmac_key": key})  # type: ignore[arg-type]


def test_good_settings_are_kept_as_given() -> None:
    assert remote_settings("RedisCache", **GOOD) == RemoteSettings(**GOOD)  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "client"), [(None, None), ("redis://x", object())])
def test_exactly_one_source(url: object, client: object) -> None:
    with pytest.raises(ConfigurationError, match="exactly one of url= or client="):
        check_source("RedisCache", url, client)


@pytest.mark.parametrize("backend", [RedisCache, MemcachedCache])
def test_both_backends_refuse_an_infinite_timeout(backend: type[object]) -> None:
    # One number check for every config value: a cache operation is always bounded.
    url = "redis://localhost" if backend is RedisCache else "memcached://localhost"
    with pytest.raises(ConfigurationError, match="read_timeout"):
        backend(url=url, read_timeout=math.inf)  # type: ignore[call-arg]
