"""URL redaction, its one home (``limpet._urls``), and every message and repr that quotes
a URL: an Endpoint's, ServeConfig's, the Redis and Memcached URL errors. Pure."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from limpet import Endpoint, RedisCache
from limpet._urls import host_and_port, join_url, redact_url, url_secrets
from limpet.cache.memcached.keys import parse_memcached_url
from limpet.errors import ConfigurationError
from limpet.serve import ServeConfig
from limpet.serve.config import endpoints_of

PASSWORD = "S3cretUpstreamPassw0rd"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://gw.example/v1", "https://gw.example/v1"),
        (f"https://user:{PASSWORD}@gw.example:8443/v1", "https://***@gw.example:8443/v1"),
        (f"redis://:{PASSWORD}@cache:6379/0", "redis://***@cache:6379/0"),
        (f"memcached://{PASSWORD}@a:1,b:2", "memcached://***@a:1,b:2"),
        (
            f"https://g.example/v1?key={PASSWORD}&alt=sse#f",
            "https://g.example/v1?key=***&alt=***#f",
        ),
        (f"http://u:{PASSWORD}@[::1/v1", "http://***@[::1/v1"),  # urllib raises on it
        (f"u:{PASSWORD}@host", "***@host"),
    ],
)
def test_redact_url_hides_userinfo_and_query_values(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert PASSWORD not in redact_url(url)


def test_url_secrets_are_the_password_as_written_and_decoded_and_long_query_values() -> None:
    assert url_secrets("redis://default:p%40ss@cache/0") == ("p%40ss", "p@ss")
    assert url_secrets(f"redis://{PASSWORD}@cache/0") == (PASSWORD,)
    assert url_secrets("https://g.example/v1?key=AIzaSy-0123&v=1") == ("AIzaSy-0123",)
    assert url_secrets("https://g.example/v1") == ()


def test_host_and_port_leave_the_userinfo_out() -> None:
    assert host_and_port(f"http://user:{PASSWORD}@127.0.0.1:8080/v1") == "127.0.0.1:8080"


@pytest.mark.parametrize(
    "make",
    [
        lambda url: Endpoint("a", url),
        lambda url: ServeConfig(upstreams=(url,)),
    ],
    ids=["Endpoint", "ServeConfig"],
)
@pytest.mark.parametrize(
    "url",
    [f"http://user:{PASSWORD}@127.0.0.1:8080/v1", f"http://user:{PASSWORD}@[::1/v1"],
    ids=["userinfo", "userinfo and an unclosed bracket"],
)
def test_credentials_in_a_base_url_are_refused_without_being_shown(
    make: Callable[[str], object], url: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make(url)
    message = str(raised.value)
    assert PASSWORD not in message and raised.value.__cause__ is None
    assert "credentials in the URL" in message
    assert "ServeConfig.upstreams" in message or "base_url" in message


def test_other_bad_base_urls_are_a_configuration_error_quoting_them_redacted() -> None:
    with pytest.raises(ConfigurationError, match="Port out of range"):
        Endpoint("a", f"http://h:99999/v1?key={PASSWORD}")
    for url, problem in [
        (f"http:///v1?key={PASSWORD}", "expected a host name, got 'http:///v1[?]key=\\*\\*\\*'"),
        ("http://:8080/v1", "expected a host name"),
        ("http://a..b/v1", "expected a host name"),
        ("https://gw.example/v1#top", "a fragment is never sent"),
    ]:
        with pytest.raises(ConfigurationError, match=f"Endpoint.base_url: {problem}"):
            Endpoint("a", url)


@pytest.mark.parametrize("value", [f"sk-or-v1-{PASSWORD}", f"ftp://u:{PASSWORD}@h"])
def test_what_is_no_http_url_is_never_quoted(value: str) -> None:
    # Regression: a key passed where the URL goes (Endpoint("or", KEY)) was quoted whole.
    with pytest.raises(ConfigurationError) as raised:
        Endpoint("a", value)
    assert str(raised.value) == (
        f"Endpoint.base_url: expected an http(s) URL, got a str of {len(value)} characters"
    )


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://gw.example/v1", "https://gw.example/v1/chat/completions"),
        ("https://gw.example/v1/", "https://gw.example/v1/chat/completions"),
        (
            "https://az.example/openai?api-version=1",
            "https://az.example/openai/chat/completions?api-version=1",
        ),
        ("https://gw.example/v1/?key=k&b=2", "https://gw.example/v1/chat/completions?key=k&b=2"),
    ],
)
def test_an_api_path_goes_before_the_base_urls_query(base: str, url: str) -> None:
    # Regression: appended to the whole URL, the path went into the query.
    assert join_url(base, "/chat/completions") == url


def test_proxy_endpoints_are_named_by_host_and_port_only() -> None:
    endpoints = endpoints_of([f"http://127.0.0.1:8080/v1?key={PASSWORD}", "https://gw.example/v1"])
    assert [e.name for e in endpoints] == ["127.0.0.1:8080", "gw.example"]
    assert PASSWORD not in repr(endpoints) and PASSWORD in endpoints[0].secrets


def test_serve_config_repr_redacts_every_url_and_leaves_the_keys_out() -> None:
    config = ServeConfig(
        upstreams=(f"https://gw.example/v1?key={PASSWORD}",),
        redis=f"redis://default:{PASSWORD}@cache:6379/0",
        upstream_key="sk-upstream-0123456789",
        client_keys=frozenset({"sk-client-0123456789"}),
    )
    shown = repr(config)
    assert PASSWORD not in shown and "0123456789" not in shown
    assert "redis://***@cache:6379/0" in shown and "?key=***" in shown
    memcached = ServeConfig(fake=True, memcached=f"memcached://u:{PASSWORD}@mc:11211")
    assert PASSWORD not in repr(memcached)


@pytest.mark.parametrize(
    "url",
    [
        f"memcached://user:{PASSWORD}@mc:11211",
        f"memcached://mc:11211?password={PASSWORD}",
    ],
)
def test_a_memcached_url_error_never_quotes_its_credentials(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_memcached_url(url)
    assert PASSWORD not in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        # urllib refuses a netloc that changes under NFKC, quoting it whole.
        f"redis://user:{PASSWORD}\uff03@cache:6379/0",
        f"rediss+cluster://:{PASSWORD}\u2100@cache:7000/0",
    ],
)
def test_a_redis_url_error_never_quotes_its_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        RedisCache.from_url(url)
    assert "RedisCache.url" in str(raised.value)
    assert PASSWORD not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
